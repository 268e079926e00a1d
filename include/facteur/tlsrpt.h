/*
 * SMTP TLS reporting (RFC 8460): per policy domain, the sessions that a
 * published policy governed (MTA-STS, or DANE: the TLSA records of an MX
 * host), counted by result over a day, failures with their addresses; at
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

#include "facteur/dns.h"
#include "facteur/mta_sts_policy.h"
#include "facteur/tlsrpt_report.h"

struct tlsrpt;
struct server;

/* The counts kept by an earlier run are read back; the daily timer is
 * armed. NULL when out of memory. */
struct tlsrpt *tlsrpt_new(struct server *srv);
/* The counts are written one last time. */
void tlsrpt_free(struct tlsrpt *rpt);

/* One session, or policy look-up, and what it ended with. */
struct tlsrpt_session {
	enum tlsrpt_policy_type type;
	/* TLSRPT_POLICY_STS: the policy; NULL: none found (or keep the one
	 * counted already) */
	const struct mta_sts_policy *sts;
	/* TLSRPT_POLICY_TLSA: the MX host and its TLSA records (copied) */
	const char *mx_host;
	const struct dns_tlsa *tlsa;
	size_t tlsa_count;
	enum tlsrpt_result result;
	/* a failure's details (§4.3.2); NULL where not known */
	const char *sending_ip;
	const char *receiving_ip;
	const char *receiving_mx;
};

/* Count a session for `domain`. rpt may be NULL. */
void tlsrpt_count_session(struct tlsrpt *rpt, const char *domain,
			  const struct tlsrpt_session *session);

/* One MTA-STS session (or policy look-up) for `domain` under `policy`
 * (NULL: none found) ended with `result`; no details. rpt may be NULL. */
void tlsrpt_count(struct tlsrpt *rpt, const char *domain,
		  const struct mta_sts_policy *policy,
		  enum tlsrpt_result result);

/* The reports of the counts so far, now; the count starts again. Nothing
 * when tlsrpt_from is empty. */
void tlsrpt_send_now(struct tlsrpt *rpt);

#endif
