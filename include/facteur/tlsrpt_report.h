/*
 * SMTP TLS reporting (RFC 8460), the pure part: the `_smtp._tls` TXT
 * record, the JSON report (§4.4) of MTA-STS and DANE (TLSA) policies,
 * its gzip, and the mail that carries it (§5.3). Data in, text out, no I/O:
 * unit-tested apart from the loop (tlsrpt.h).
 */
#ifndef FACTEUR_TLSRPT_REPORT_H
#define FACTEUR_TLSRPT_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/dns.h"
#include "facteur/hostname.h"
#include "facteur/mta_sts_policy.h"

/* RFC 8460 §4.3 result types facteur can tell, and success. The
 * counts file names them, so the order may change. */
enum tlsrpt_result {
	TLSRPT_SUCCESS,
	TLSRPT_STARTTLS_NOT_SUPPORTED,
	TLSRPT_CERTIFICATE_HOST_MISMATCH,
	TLSRPT_CERTIFICATE_EXPIRED,
	TLSRPT_CERTIFICATE_NOT_TRUSTED,
	/* any other certificate trouble, or an MX host the policy does
	 * not name */
	TLSRPT_VALIDATION_FAILURE,
	TLSRPT_TLSA_INVALID,   /* no TLSA record matched the peer */
	TLSRPT_DNSSEC_INVALID, /* the TLSA look-up failed (bogus, SERVFAIL) */
	TLSRPT_DANE_REQUIRED,
	TLSRPT_STS_POLICY_FETCH_ERROR,
	TLSRPT_STS_POLICY_INVALID,
	TLSRPT_STS_WEBPKI_INVALID,
	TLSRPT_RESULT_COUNT
};

const char *tlsrpt_result_name(enum tlsrpt_result result);
/* The result named `name`, or TLSRPT_RESULT_COUNT for none. */
enum tlsrpt_result tlsrpt_result_from_name(const char *name);

/* The failure an OpenSSL verify result (X509_V_ERR_*, not X509_V_OK)
 * stands for: a name mismatch, an expired certificate, one that does
 * not chain to a trusted root, no TLSA match, or validation-failure. */
enum tlsrpt_result tlsrpt_result_of_verify(long verify_result);

/* One TLSA record in presentation form, "3 1 1 0A1B...", malloc'd; NULL
 * when out of memory. */
char *tlsrpt_tlsa_string(const struct dns_tlsa *tlsa);

#define TLSRPT_IP_MAX 46 /* INET6_ADDRSTRLEN */

/* One line of failure-details (§4.4): failed sessions of one result
 * type between the same addresses. An empty string is not known. */
struct tlsrpt_failure {
	enum tlsrpt_result result;
	char sending_ip[TLSRPT_IP_MAX];
	char receiving_ip[TLSRPT_IP_MAX];
	char receiving_mx[HOSTNAME_MAX + 1];
	uint64_t count;
};

enum tlsrpt_policy_type {
	TLSRPT_POLICY_STS, /* MTA-STS; mode none: no-policy-found */
	TLSRPT_POLICY_TLSA /* DANE: the TLSA records of one MX host */
};

/* One element of the report's "policies": the policy and its counts. */
struct tlsrpt_policy_counts {
	enum tlsrpt_policy_type type;
	struct mta_sts_policy sts;	/* TLSRPT_POLICY_STS */
	char mx_host[HOSTNAME_MAX + 1]; /* TLSRPT_POLICY_TLSA */
	char **tlsa; /* TLSRPT_POLICY_TLSA: presentation form */
	size_t tlsa_count;
	uint64_t count[TLSRPT_RESULT_COUNT];
	struct tlsrpt_failure *failures;
	size_t failure_count;
};

/* What one policy domain's report says. */
struct tlsrpt_counts {
	const char *domain;
	const struct tlsrpt_policy_counts *policies;
	size_t policy_count;
};

#define TLSRPT_ADDRESS_MAX 320
#define TLSRPT_PATH_MAX 512

/* Where a domain's report goes (RFC 8460 §3, rua): the first mailto:
 * URI and the first https: URI of its record that are usable; "" for
 * none of a kind. */
struct tlsrpt_rua {
	char mailto[TLSRPT_ADDRESS_MAX]; /* the address */
	char https_host[HOSTNAME_MAX + 1];
	uint16_t https_port;		  /* 443 unless the URI names one */
	char https_path[TLSRPT_PATH_MAX]; /* from its "/", "/" at least */
};

/* One TXT record of `_smtp._tls.DOMAIN`: 1 when it is a TLSRPTv1 record
 * with at least one usable rua (written into *out); 0 when it is another
 * record; -1 when a TLSRPTv1 record has none. A URI of another scheme,
 * or a malformed one (a mailto: without a valid domain, an https: with
 * user information, an IP address, a bad port, a fragment or a space),
 * is passed over. */
int tlsrpt_record_parse(const char *text, struct tlsrpt_rua *out);

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
