/*
 * This host's own SMTP endpoints, so that the relay never hands a message
 * back to facteurd itself ("mail for X loops back to myself").
 *
 * A next hop is "myself" when its address and port are those of one of
 * the daemon's SMTP listen entries. The port matters: several facteurd
 * on one host (or an MX on another port) are other servers. A wildcard
 * entry (0.0.0.0:P, [::]:P) stands for every local address of its family
 * on port P: the loopback network and the interfaces' addresses. IPv6
 * entries are IPv6 only (listener.h), so [::]:P does not cover IPv4.
 *
 * The matching is pure; only localaddr_interfaces reads the system.
 */
#ifndef FACTEUR_LOCALADDR_H
#define FACTEUR_LOCALADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "facteur/config.h"
#include "facteur/dns.h"

/* What "myself" is made of at one moment. */
struct localaddr_self {
	const struct listen_addr *listen; /* the SMTP listen entries */
	size_t listen_count;
	const struct sockaddr_storage *interfaces; /* for wildcard entries */
	size_t interface_count;
};

/*
 * Would a connection to addr (its own port ignored) on `port` reach one of
 * our SMTP listeners? IPv4-mapped IPv6 addresses count as IPv4, and the
 * unspecified address as loopback (where Linux sends such a connect).
 */
bool localaddr_is_self(const struct localaddr_self *self,
		       const struct sockaddr_storage *addr, uint16_t port);

/* Is there a wildcard entry on `port` (the only case where the
 * interfaces' addresses matter, so that they are read only then)? */
bool localaddr_needs_interfaces(const struct listen_addr *listen, size_t count,
				uint16_t port);

/*
 * RFC 5321 §5.1: when one of the mail exchangers is ourselves, it and
 * every host of equal or larger preference are dropped (a backup MX
 * delivers only to better ones). True when one is ourselves, with the
 * preference from which hosts are dropped in *cutoff; false otherwise.
 */
bool localaddr_self_cutoff(const struct localaddr_self *self,
			   const struct dns_host *hosts, size_t count,
			   uint16_t port, unsigned *cutoff);

/* The interfaces' addresses (getifaddrs), kept for a while: addresses
 * change seldom, and reading them is a netlink round trip. */
struct localaddr_interfaces;

struct localaddr_interfaces *localaddr_interfaces_new(void);
void localaddr_interfaces_free(struct localaddr_interfaces *ifs);

/* The current list, read again when older than
 * LOCALADDR_REFRESH_SECONDS. On a read error the previous list stays
 * (empty at first) and the error is logged. The list lives until the
 * next call. */
#define LOCALADDR_REFRESH_SECONDS 30
void localaddr_interfaces_get(struct localaddr_interfaces *ifs,
			      const struct sockaddr_storage **addrs,
			      size_t *count);

#endif
