/*
 * DANE for SMTP (RFC 7672): which TLSA records of an MX host count, and
 * the TLSA look-ups of one attempt's MX hosts. A host's TLSA records are
 * asked only when the MX answer and the host's address answers were
 * validated (the AD bit of the resolver in dns_servers); what they say
 * becomes the host's DANE state, which smtp_client enforces with
 * OpenSSL's DANE verifier.
 */
#ifndef FACTEUR_DANE_H
#define FACTEUR_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "facteur/dns.h"

enum dane_state {
	/* no DANE: an insecure answer, or no TLSA record: the attempt's
	 * own TLS policy applies */
	DANE_NONE,
	/* TLSA records, none usable: TLS, without authentication
	 * (RFC 7672 §2.2) */
	DANE_ENCRYPT,
	/* usable records: TLS, and the peer matched against them */
	DANE_VERIFY,
	/* the TLSA look-up failed (a validating resolver's SERVFAIL for
	 * bogus data, a timeout): the host is not tried (§2.1.1) */
	DANE_FAILED,
};

/* One MX host's DANE state and its usable records. */
struct dane_host {
	enum dane_state state;
	struct dns_tlsa *tlsa; /* DANE_VERIFY: the usable records */
	size_t tlsa_count;
	size_t unusable;  /* records left out */
	char reason[200]; /* DANE_FAILED: why */
};

/*
 * Does a TLSA record count for SMTP? Usages DANE-TA(2) and DANE-EE(3)
 * only (§3.1.3: PKIX-TA and PKIX-EE are unusable), selectors 0 and 1,
 * matching types 0, 1, 2, and a well-formed RDATA. Pure.
 */
bool dane_record_usable(const struct dns_record *record);

/* The host's state from its TLSA answer (status, AD bit, records); the
 * usable records are copied into host. Pure. */
void dane_host_from_answer(const struct dns_result *answer,
			   struct dane_host *host);

/* Is DANE worth asking for this MX answer: it was validated and at least
 * one host's addresses were. */
bool dane_applies(const struct dns_result *mx);

struct dane_lookup;

/* hosts[i] (a copy of the MX answer's hosts) and dane[i] go together;
 * both live until dane_lookup_free. */
typedef void (*dane_cb)(const struct dns_host *hosts,
			const struct dane_host *dane, size_t count, void *arg);

/*
 * Ask the TLSA records "_PORT._tcp.HOST" of every secure host of `mx`
 * (which dane_applies said yes to: at least one look-up starts, so the
 * callback always runs later, on the loop, once).
 */
struct dane_lookup *dane_lookup_start(struct dns *dns,
				      const struct dns_result *mx,
				      uint16_t port, dane_cb cb, void *arg);

/* Cancels the look-ups still running and frees what the callback saw. */
void dane_lookup_free(struct dane_lookup *lookup);

/* The name of a state for log lines: "none", "encrypt", "verify",
 * "failed". */
const char *dane_state_name(enum dane_state state);

#endif
