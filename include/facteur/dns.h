/*
 * Asynchronous DNS for relaying, with c-ares inside the libevent loop:
 * c-ares's socket state callback becomes events, ares_timeout a timer.
 * Nothing here blocks. Answers are cached for their TTL.
 */
#ifndef FACTEUR_DNS_H
#define FACTEUR_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "facteur/config.h"

struct event_base;
struct dns;
struct dns_query;

enum dns_status {
	DNS_OK,
	DNS_NXDOMAIN, /* the domain does not exist: bounce, 5.1.2 */
	DNS_NULL_MX,  /* RFC 7505 "MX 0 .": accepts no mail, 5.1.10 */
	DNS_NO_HOST,  /* it exists but has no MX and no A/AAAA: 5.1.2 */
	DNS_TEMPFAIL, /* SERVFAIL, REFUSED, timeout, no server: 4.4.3 */
};

/* One mail exchanger and its addresses (IPv6 and IPv4, port unset). */
struct dns_host {
	char *name;
	unsigned preference;
	/* every address answer of this host carried the AD bit of a
	 * validating resolver (DNSSEC "secure"), for DANE */
	bool secure;
	struct sockaddr_storage *addrs;
	size_t addr_count;
};

struct dns_result {
	enum dns_status status;
	struct dns_host *hosts; /* best first; equal preferences shuffled */
	size_t host_count;
	char error[160]; /* for logs and DSNs when status != DNS_OK */
	/* The MX answer (or, with no MX, its NODATA) had the AD bit; for
	 * dns_resolve_tlsa, the TLSA answer had it. */
	bool authenticated;
	/* dns_resolve_tlsa: the TLSA records, usable or not */
	const struct dns_record *records;
	size_t record_count;
};

/* The result lives until the callback returns; to keep it longer, take
 * a dns_result_copy. */
typedef void (*dns_cb)(const struct dns_result *result, void *arg);

/* A deep copy of a result (its hosts with their names and addresses, its
 * records), owned by the caller until dns_result_free. Never NULL: out
 * of memory stops the process. */
struct dns_result *dns_result_copy(const struct dns_result *result);
void dns_result_free(struct dns_result *result);

/* Servers from cfg->dns_servers, or the system's resolv.conf when
 * cfg->dns_from_resolv_conf. NULL with err filled on failure. */
struct dns *dns_new(struct event_base *base, const struct config *cfg,
                    char *err, size_t errlen);
void dns_free(struct dns *dns);

/*
 * The mail exchangers of `domain` (RFC 5321 §5.1): its MX records by
 * preference, each with its A/AAAA addresses; no MX record → the
 * domain's own A/AAAA as one host of preference 0; a null MX →
 * DNS_NULL_MX. MX hosts that have no address are left out; if none is
 * left, DNS_TEMPFAIL if any of their look-ups failed temporarily, else
 * DNS_NO_HOST. The callback always runs later, on the loop.
 */
struct dns_query *dns_resolve_mx(struct dns *dns, const char *domain,
                                 dns_cb cb, void *arg);

/* The A/AAAA addresses of one host (a "[host]" route target), as a
 * result with one host of preference 0. */
struct dns_query *dns_resolve_host(struct dns *dns, const char *host,
                                   dns_cb cb, void *arg);

/*
 * The TLSA records of `name` ("_25._tcp.mx.example.com", RFC 6698):
 * DNS_OK with records (and `authenticated` when the answer had the AD
 * bit), DNS_NO_HOST for NODATA, DNS_NXDOMAIN, DNS_TEMPFAIL (SERVFAIL is
 * what a validating resolver answers for bogus data). The callback
 * always runs later, on the loop.
 */
struct dns_query *dns_resolve_tlsa(struct dns *dns, const char *name,
				   dns_cb cb, void *arg);

/* The callback of this query will not run. */
void dns_cancel(struct dns_query *query);

/* TXT records (MTA-STS, TLS reporting), not cached here. */
struct dns_txt_query;
struct dns_txt_result {
	/* DNS_OK: at least one record; DNS_NO_HOST: the name has no TXT
	 * record; DNS_NXDOMAIN; DNS_TEMPFAIL */
	enum dns_status status;
	char **texts; /* each record's strings joined, in answer order */
	size_t count;
	char error[160];
};
typedef void (*dns_txt_cb)(const struct dns_txt_result *result, void *arg);
/* The callback always runs later, on the loop. Cancel every query still
 * running before dns_free. */
struct dns_txt_query *dns_resolve_txt(struct dns *dns, const char *name,
				      dns_txt_cb cb, void *arg);
void dns_txt_cancel(struct dns_txt_query *query);

/*
 * For tests and fuzzing only: the pure parser of DNS answers that the
 * module uses. Not part of the interface other modules code against.
 */

#define DNS_TYPE_A 1
#define DNS_TYPE_SOA 6
#define DNS_TYPE_MX 15
#define DNS_TYPE_TXT 16
#define DNS_TYPE_AAAA 28
#define DNS_TYPE_TLSA 52

/* The matching types of TLSA records (RFC 6698 §2.1.3). */
#define DNS_TLSA_MATCH_FULL 0
#define DNS_TLSA_MATCH_SHA256 1
#define DNS_TLSA_MATCH_SHA512 2

/* One TLSA record's RDATA (RFC 6698 §2.1). */
struct dns_tlsa {
	uint8_t usage, selector, matching;
	const unsigned char *data; /* into the parsed buffer, or owned */
	size_t data_len;
};

enum dns_tlsa_check {
	DNS_TLSA_WELL_FORMED,
	DNS_TLSA_TOO_SHORT,	  /* fewer than 4 octets: no data at all */
	DNS_TLSA_BAD_DIGEST_SIZE, /* SHA-256 not 32 octets, SHA-512 not 64 */
};

/* Read a TLSA RDATA of `len` octets: out's data points into rdata. A
 * record that is not well formed is unusable, never an error of the
 * whole answer. Pure. */
enum dns_tlsa_check dns_tlsa_parse(const unsigned char *rdata, size_t len,
				   struct dns_tlsa *out);

/* One record of the asked type from the answer section. */
struct dns_record {
	uint16_t type;
	uint32_t ttl;
	/* MX: the preference and the exchange, lower case, no final dot,
	 * "" for the root; octets outside [a-z0-9_-] read as '?'. */
	uint16_t preference;
	char *exchange;
	/* A: the first 4 octets; AAAA: all 16. */
	uint8_t addr[16];
	/* TLSA: the fields, data owned by the record; `tlsa_check` says
	 * whether it is well formed */
	struct dns_tlsa tlsa;
	enum dns_tlsa_check tlsa_check;
};

struct dns_answer {
	int rcode; /* the header's RCODE */
	bool authenticated; /* the header's AD bit (RFC 4035 §3.2.3) */
	/* Records of the asked type, in answer order, at most
	 * DNS_ANSWER_MAX; ttl is the smallest of their TTLs. */
	struct dns_record *records;
	size_t count;
	uint32_t ttl;
	/* An SOA in the authority section: min(its TTL, its MINIMUM), the
	 * life of a negative answer (RFC 2308). */
	bool has_negative_ttl;
	uint32_t negative_ttl;
};

#define DNS_ANSWER_MAX 32

/* Parse a response to a question of type qtype (CLASS IN). Returns 0, or
 * -1 when the message is malformed (out is then empty). Clear out with
 * dns_answer_clear either way. */
int dns_answer_parse(const unsigned char *buf, size_t len, uint16_t qtype,
		     struct dns_answer *out);
void dns_answer_clear(struct dns_answer *answer);

/* The TXT records of a response (answer section, CLASS IN), at most
 * DNS_ANSWER_MAX, and its RCODE. Returns 0, or -1 when malformed
 * (*texts NULL then). Free the texts with dns_txt_texts_free. */
int dns_txt_answer_parse(const unsigned char *buf, size_t len, int *rcode,
			 char ***texts, size_t *count);
void dns_txt_texts_free(char **texts, size_t count);

#endif
