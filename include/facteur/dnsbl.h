/*
 * DNS blocklists (dnsbl = ZONE [match=...]): a client is listed in a
 * zone when its reversed address under the zone has an A record (one
 * of the match= addresses, when given). Every zone is asked in parallel
 * on the loop through dns.h when the connection opens; the session
 * applies the verdict at the client's first command. A zone that does
 * not answer lists nobody: a blocklist outage must not stop mail.
 */
#ifndef FACTEUR_DNSBL_H
#define FACTEUR_DNSBL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "facteur/config.h"

struct dns;
struct dnsbl_check;

/*
 * The name to ask for: d.c.b.a.ZONE for IPv4 (and IPv4-mapped IPv6),
 * the 32 nibbles in reverse order then ZONE for IPv6. Returns 0, or -1
 * when the address family is not IP or the name does not fit.
 */
int dnsbl_query_name(const struct sockaddr *addr, const char *zone, char *out,
		     size_t len);

/* Does this A record answer (network order) list the client? */
bool dnsbl_answer_lists(const struct config_dnsbl *entry,
			const unsigned char addr[4]);

/* The verdict: the first zone that lists the client, or NULL when none
 * does (or none answered). The zone text lives until the check is
 * freed. */
typedef void (*dnsbl_cb)(const char *zone, void *arg);

/*
 * Ask every zone of cfg->dnsbl about addr. The callback runs once,
 * later, on the loop; the check may be freed from inside it. The
 * check copies what it needs from cfg (a reload may replace it).
 * NULL when out of memory or addr is not an IP address.
 */
struct dnsbl_check *dnsbl_check_start(struct dns *dns, const struct config *cfg,
				      const struct sockaddr *addr, dnsbl_cb cb,
				      void *arg);

/* Stop the look-ups still in flight (their verdict is dropped). */
void dnsbl_check_free(struct dnsbl_check *check);

#endif
