/*
 * MTA-STS (RFC 8461) for the relay: the policy of a recipient domain,
 * found through its `_mta-sts` TXT record, fetched over HTTPS in the loop
 * (libevent's HTTP client on an OpenSSL bufferevent; no redirects, 64 KiB
 * at most, 10 s in all, the certificate verified for mta-sts.DOMAIN),
 * parsed by mta_sts_policy, and kept in memory and in
 * <spool_dir>/mta-sts/DOMAIN for its max_age. The TXT record is asked
 * again at most once a minute per domain; a new id fetches the policy
 * again; a fetch that fails never replaces a policy still valid.
 */
#ifndef FACTEUR_MTA_STS_H
#define FACTEUR_MTA_STS_H

#include "facteur/mta_sts_policy.h"

struct mta_sts;
struct mta_sts_wait;
struct server;

/* The policy that applies to the domain now; NULL when it has none
 * (no record, no valid policy fetched, nothing cached). It lives until
 * the callback returns. */
typedef void (*mta_sts_cb)(const struct mta_sts_policy *policy, void *arg);

/* The cache folder is made if missing; NULL when out of memory. The
 * server's dns, tls_client and cfg are read at each use. */
struct mta_sts *mta_sts_new(struct server *srv);
/* Every look-up in flight ends without its callback. */
void mta_sts_free(struct mta_sts *sts);

/* The callback always runs later, on the loop, never inside the call.
 * Many look-ups of one domain share one TXT query and one fetch. */
struct mta_sts_wait *mta_sts_lookup(struct mta_sts *sts, const char *domain,
				    mta_sts_cb cb, void *arg);
/* The callback of this look-up will not run. */
void mta_sts_cancel(struct mta_sts_wait *wait);

/* The mode of the policy known now for `domain`, without any look-up:
 * MTA_STS_MODE_NONE when none is known or valid. */
enum mta_sts_mode mta_sts_known_mode(const struct mta_sts *sts,
				     const char *domain);

#endif
