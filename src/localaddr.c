/*
 * This host's own SMTP endpoints (see localaddr.h). Addresses are
 * compared as a family and its bytes: IPv4 in 4, IPv6 in 16, an
 * IPv4-mapped IPv6 address as the IPv4 address it carries.
 */
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/localaddr.h"
#include "facteur/log.h"

struct ip {
	int family; /* AF_INET, AF_INET6, or 0 for anything else */
	uint8_t bytes[16];
};

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0,    0,
					     0, 0, 0, 0, 0xff, 0xff};

static struct ip ip_of(const struct sockaddr_storage *ss)
{
	struct ip ip;
	memset(&ip, 0, sizeof ip);
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		ip.family = AF_INET;
		memcpy(ip.bytes, &sin->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)ss;
		const uint8_t *b = sin6->sin6_addr.s6_addr;
		if (memcmp(b, v4_mapped_prefix, 12) == 0) {
			ip.family = AF_INET;
			memcpy(ip.bytes, b + 12, 4);
		} else {
			ip.family = AF_INET6;
			memcpy(ip.bytes, b, 16);
		}
	}
	return ip;
}

static size_t ip_length(const struct ip *ip)
{
	return ip->family == AF_INET ? 4 : 16;
}

static bool ip_equal(const struct ip *a, const struct ip *b)
{
	return a->family != 0 && a->family == b->family &&
	       memcmp(a->bytes, b->bytes, ip_length(a)) == 0;
}

static bool ip_unspecified(const struct ip *ip)
{
	static const uint8_t zero[16];
	return ip->family != 0 && memcmp(ip->bytes, zero, ip_length(ip)) == 0;
}

/* 127.0.0.0/8 or ::1: every such address reaches this host. */
static bool ip_loopback(const struct ip *ip)
{
	static const uint8_t v6_loopback[16] = {[15] = 1};
	if (ip->family == AF_INET)
		return ip->bytes[0] == 127;
	return ip->family == AF_INET6 &&
	       memcmp(ip->bytes, v6_loopback, 16) == 0;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return 0;
}

/* Where a connect to this address goes: Linux sends one to 0.0.0.0 or ::
 * to the loopback address, so an MX record "0.0.0.0" is ourselves. */
static struct ip connect_target(const struct sockaddr_storage *ss)
{
	struct ip ip = ip_of(ss);
	if (ip_unspecified(&ip)) {
		if (ip.family == AF_INET) {
			ip.bytes[0] = 127;
			ip.bytes[3] = 1;
		} else {
			ip.bytes[15] = 1;
		}
	}
	return ip;
}

static bool is_interface(const struct localaddr_self *self,
			 const struct ip *target)
{
	for (size_t i = 0; i < self->interface_count; i++) {
		struct ip ifa = ip_of(&self->interfaces[i]);
		if (ip_equal(&ifa, target))
			return true;
	}
	return false;
}

bool localaddr_is_self(const struct localaddr_self *self,
		       const struct sockaddr_storage *addr, uint16_t port)
{
	struct ip target = connect_target(addr);
	if (target.family == 0)
		return false;
	for (size_t i = 0; i < self->listen_count; i++) {
		const struct listen_addr *la = &self->listen[i];
		if (port_of(&la->addr) != port)
			continue;
		struct ip bound = ip_of(&la->addr);
		if (!ip_unspecified(&bound)) {
			if (ip_equal(&bound, &target))
				return true;
			continue;
		}
		if (bound.family != target.family)
			continue;
		if (ip_loopback(&target) || is_interface(self, &target))
			return true;
	}
	return false;
}

bool localaddr_needs_interfaces(const struct listen_addr *listen, size_t count,
				uint16_t port)
{
	for (size_t i = 0; i < count; i++) {
		struct ip bound = ip_of(&listen[i].addr);
		if (port_of(&listen[i].addr) == port && ip_unspecified(&bound))
			return true;
	}
	return false;
}

bool localaddr_self_cutoff(const struct localaddr_self *self,
			   const struct dns_host *hosts, size_t count,
			   uint16_t port, unsigned *cutoff)
{
	bool found = false;
	for (size_t h = 0; h < count; h++) {
		if (found && hosts[h].preference >= *cutoff)
			continue;
		for (size_t a = 0; a < hosts[h].addr_count; a++) {
			if (localaddr_is_self(self, &hosts[h].addrs[a], port)) {
				*cutoff = hosts[h].preference;
				found = true;
				break;
			}
		}
	}
	return found;
}

struct localaddr_interfaces {
	struct sockaddr_storage *addrs;
	size_t count;
	bool loaded;
	struct timespec loaded_at; /* CLOCK_MONOTONIC */
};

struct localaddr_interfaces *localaddr_interfaces_new(void)
{
	return calloc(1, sizeof(struct localaddr_interfaces));
}

void localaddr_interfaces_free(struct localaddr_interfaces *ifs)
{
	if (ifs == NULL)
		return;
	free(ifs->addrs);
	free(ifs);
}

/* Read the list anew; -1 (errno set) leaves the old one in place. */
static int interfaces_read(struct localaddr_interfaces *ifs)
{
	struct ifaddrs *list;
	if (getifaddrs(&list) == -1)
		return -1;
	size_t n = 0;
	for (struct ifaddrs *i = list; i != NULL; i = i->ifa_next)
		if (i->ifa_addr != NULL && (i->ifa_addr->sa_family == AF_INET ||
					    i->ifa_addr->sa_family == AF_INET6))
			n++;
	struct sockaddr_storage *addrs = calloc(n ? n : 1, sizeof *addrs);
	if (addrs == NULL) {
		freeifaddrs(list);
		errno = ENOMEM;
		return -1;
	}
	size_t k = 0;
	for (struct ifaddrs *i = list; i != NULL && k < n; i = i->ifa_next) {
		if (i->ifa_addr == NULL)
			continue;
		if (i->ifa_addr->sa_family == AF_INET)
			memcpy(&addrs[k++], i->ifa_addr,
			       sizeof(struct sockaddr_in));
		else if (i->ifa_addr->sa_family == AF_INET6)
			memcpy(&addrs[k++], i->ifa_addr,
			       sizeof(struct sockaddr_in6));
	}
	freeifaddrs(list);
	free(ifs->addrs);
	ifs->addrs = addrs;
	ifs->count = k;
	return 0;
}

void localaddr_interfaces_get(struct localaddr_interfaces *ifs,
			      const struct sockaddr_storage **addrs,
			      size_t *count)
{
	struct timespec now;
	if (clock_gettime(CLOCK_MONOTONIC, &now) == -1)
		now = ifs->loaded_at; /* cannot happen with this clock */
	if (!ifs->loaded ||
	    now.tv_sec - ifs->loaded_at.tv_sec >= LOCALADDR_REFRESH_SECONDS) {
		/* Tried once per period even when it fails: an error is
		 * logged once a period, not once per relay attempt. */
		ifs->loaded = true;
		ifs->loaded_at = now;
		if (interfaces_read(ifs) == -1)
			log_event(LOG_LEVEL_WARN, "localaddr_error",
				  LOG_S("reason", strerror(errno)));
	}
	*addrs = ifs->addrs;
	*count = ifs->count;
}
