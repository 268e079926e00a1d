/*
 * SMTP TLS reporting (RFC 8460): per policy domain, the sessions that a
 * published policy (MTA-STS) governed, counted by result over a day; at
 * the UTC day's end (or at `facteurctl tlsrpt send`) one JSON report per
 * domain, gzip'd, mailed to the `rua=mailto:` of its `_smtp._tls` TXT
 * record from tlsrpt_from, queued through the spool like a DSN. The
 * counts are kept in <spool_dir>/tlsrpt, written at most once a minute.
 *
 * The report's parts (the TXT record, the JSON, the gzip, the mail) are
 * tlsrpt_report's, pure; this is the part that runs on the loop.
 */
#ifndef FACTEUR_TLSRPT_H
#define FACTEUR_TLSRPT_H

#include "facteur/mta_sts_policy.h"
#include "facteur/tlsrpt_report.h"

struct tlsrpt;
struct server;

/* The counts kept by an earlier run are read back; the daily timer is
 * armed. NULL when out of memory. */
struct tlsrpt *tlsrpt_new(struct server *srv);
/* The counts are written one last time. */
void tlsrpt_free(struct tlsrpt *rpt);

/* One session (or policy look-up) for `domain` under `policy` (NULL:
 * none found) ended with `result`. rpt may be NULL. */
void tlsrpt_count(struct tlsrpt *rpt, const char *domain,
		  const struct mta_sts_policy *policy,
		  enum tlsrpt_result result);

/* The reports of the counts so far, now; the count starts again. Nothing
 * when tlsrpt_from is empty. */
void tlsrpt_send_now(struct tlsrpt *rpt);

#endif
