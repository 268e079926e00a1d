/*
 * SMTP TLS reporting (RFC 8460), the pure part: the `_smtp._tls` TXT
 * record, the JSON report (§4.4), its gzip, and the mail that carries it
 * (§5.3). Data in, text out, no I/O: unit-tested apart from the loop
 * (tlsrpt.h).
 */
#ifndef FACTEUR_TLSRPT_REPORT_H
#define FACTEUR_TLSRPT_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/mta_sts_policy.h"

/* RFC 8460 §4.3 result types facteur can tell, and success. */
enum tlsrpt_result {
	TLSRPT_SUCCESS,
	TLSRPT_STARTTLS_NOT_SUPPORTED,
	TLSRPT_VALIDATION_FAILURE, /* a certificate that did not verify, or
				    * an MX host the policy does not name */
	TLSRPT_STS_POLICY_FETCH_ERROR,
	TLSRPT_STS_POLICY_INVALID,
	TLSRPT_STS_WEBPKI_INVALID,
	TLSRPT_RESULT_COUNT
};

const char *tlsrpt_result_name(enum tlsrpt_result result);

/* What one policy domain's report says. */
struct tlsrpt_counts {
	const char *domain;
	/* the policy the sessions ran under; mode none: no policy found */
	const struct mta_sts_policy *policy;
	uint64_t count[TLSRPT_RESULT_COUNT];
};

/* One TXT record of `_smtp._tls.DOMAIN`: 1 when it is a TLSRPTv1 record
 * with a mailto: rua, whose address is copied into `to` (tolen octets);
 * 0 when it is another record; -1 when a TLSRPTv1 record has no usable
 * mailto: (an https: rua alone is not sent). */
int tlsrpt_record_parse(const char *text, char *to, size_t tolen);

/* The RFC 8460 §4.4 JSON report, malloc'd (*len set); NULL when out of
 * memory. */
char *tlsrpt_report_json(const struct tlsrpt_counts *c, const char *org,
			 const char *contact, const char *report_id,
			 time_t start, time_t end, size_t *len);

/* `in` gzip'd (RFC 1952), malloc'd; NULL on failure. */
unsigned char *tlsrpt_gzip(const char *in, size_t len, size_t *outlen);

struct tlsrpt_mail {
	const char *from; /* tlsrpt_from */
	const char *to;	  /* the rua address */
	const char *domain;
	const char *submitter; /* our host name */
	const char *report_id;
	time_t start, end, now;
	const unsigned char *gz; /* the gzip'd report */
	size_t gz_len;
};

/* The report's mail (RFC 8460 §5.3) in the spool's wire form (CRLF, no
 * line starting with a dot), malloc'd (*len set); NULL when out of
 * memory. */
char *tlsrpt_mail_build(const struct tlsrpt_mail *m, size_t *len);

/* A UTC time as "20261207T000000Z", for report ids and file names. */
void tlsrpt_format_stamp(time_t when, char *buf, size_t len);

#endif
