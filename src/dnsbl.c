/*
 * DNS blocklists (see dnsbl.h): the entry parser, the reversed query
 * name, and one check per connection that asks every zone at once and
 * reports the first listing, or "not listed" once every zone has
 * answered. Look-ups that fail count as "not listed".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dns.h"
#include "facteur/dnsbl.h"

int dnsbl_query_name(const struct sockaddr *addr, const char *zone, char *out,
		     size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const uint8_t *a;
	int n;

	if (addr->sa_family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)addr)
			->sin_addr;
	} else if (addr->sa_family == AF_INET6) {
		const struct in6_addr *in6 =
		    &((const struct sockaddr_in6 *)addr)->sin6_addr;
		if (!IN6_IS_ADDR_V4MAPPED(in6)) {
			char nibbles[64];
			for (int i = 0; i < 16; i++) {
				nibbles[4 * i] = hex[in6->s6_addr[15 - i] & 15];
				nibbles[4 * i + 1] = '.';
				nibbles[4 * i + 2] =
				    hex[in6->s6_addr[15 - i] >> 4];
				nibbles[4 * i + 3] = '.';
			}
			n = snprintf(out, len, "%.64s%s", nibbles, zone);
			return n < 0 || (size_t)n >= len ? -1 : 0;
		}
		a = in6->s6_addr + 12;
	} else {
		return -1;
	}
	n = snprintf(out, len, "%u.%u.%u.%u.%s", a[3], a[2], a[1], a[0], zone);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

bool dnsbl_answer_lists(const struct config_dnsbl *entry,
			const unsigned char addr[4])
{
	if (entry->match_count == 0)
		return true;
	for (size_t i = 0; i < entry->match_count; i++)
		if (memcmp(entry->match[i], addr, 4) == 0)
			return true;
	return false;
}

/* One zone's look-up; its entry is a copy, a reload may free cfg's. */
struct lookup {
	struct dnsbl_check *check;
	struct dns_query *query; /* NULL once answered */
	struct config_dnsbl entry;
};

struct dnsbl_check {
	struct lookup *lookups;
	size_t count, waiting;
	bool decided; /* the callback has run */
	dnsbl_cb cb;
	void *arg;
};

static bool result_lists(const struct config_dnsbl *entry,
			 const struct dns_result *r)
{
	if (r->status != DNS_OK)
		return false;
	for (size_t h = 0; h < r->host_count; h++) {
		for (size_t i = 0; i < r->hosts[h].addr_count; i++) {
			const struct sockaddr_in *sin =
			    (const struct sockaddr_in *)&r->hosts[h].addrs[i];
			if (sin->sin_family == AF_INET &&
			    dnsbl_answer_lists(
				entry, (const unsigned char *)&sin->sin_addr))
				return true;
		}
	}
	return false;
}

static void on_answer(const struct dns_result *result, void *arg)
{
	struct lookup *l = arg;
	struct dnsbl_check *check = l->check;

	l->query = NULL;
	check->waiting--;
	if (check->decided)
		return;
	if (result_lists(&l->entry, result)) {
		check->decided = true;
		check->cb(l->entry.zone, check->arg); /* may free check */
	} else if (check->waiting == 0) {
		check->decided = true;
		check->cb(NULL, check->arg);
	}
}

static bool entry_copy(const struct config_dnsbl *from, struct config_dnsbl *to)
{
	to->zone = strdup(from->zone);
	to->match_count = from->match_count;
	if (from->match_count > 0) {
		to->match = malloc(from->match_count * sizeof *to->match);
		if (to->match != NULL)
			memcpy(to->match, from->match,
			       from->match_count * sizeof *to->match);
	}
	return to->zone != NULL &&
	       (from->match_count == 0 || to->match != NULL);
}

struct dnsbl_check *dnsbl_check_start(struct dns *dns, const struct config *cfg,
				      const struct sockaddr *addr, dnsbl_cb cb,
				      void *arg)
{
	struct dnsbl_check *check = calloc(1, sizeof *check);
	if (check == NULL)
		return NULL;
	check->lookups = calloc(cfg->dnsbl_count, sizeof *check->lookups);
	if (check->lookups == NULL) {
		free(check);
		return NULL;
	}
	check->cb = cb;
	check->arg = arg;
	check->count = cfg->dnsbl_count;
	for (size_t i = 0; i < cfg->dnsbl_count; i++) {
		struct lookup *l = &check->lookups[i];
		char name[256];
		l->check = check;
		if (!entry_copy(&cfg->dnsbl[i], &l->entry) ||
		    dnsbl_query_name(addr, cfg->dnsbl[i].zone, name,
				     sizeof name) < 0) {
			dnsbl_check_free(check);
			return NULL;
		}
	}
	/* Started only once all copies are made: no callback can see a
	 * check that is about to be freed. */
	for (size_t i = 0; i < check->count; i++) {
		struct lookup *l = &check->lookups[i];
		char name[256];
		dnsbl_query_name(addr, l->entry.zone, name, sizeof name);
		check->waiting++;
		l->query = dns_resolve_host(dns, name, on_answer, l);
	}
	return check;
}

void dnsbl_check_free(struct dnsbl_check *check)
{
	if (check == NULL)
		return;
	for (size_t i = 0; i < check->count; i++) {
		dns_cancel(check->lookups[i].query);
		free(check->lookups[i].entry.zone);
		free(check->lookups[i].entry.match);
	}
	free(check->lookups);
	free(check);
}
