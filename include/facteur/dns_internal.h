/*
 * What the dns module's files share, and nothing outside them may use.
 * Which file does what:
 *
 *   dns.c         c-ares in the loop (sockets, timer), the questions on
 *                 the wire and what their answers mean, TXT look-ups,
 *                 the servers, dns_new and dns_free
 *   dns_query.c   MX, host and TLSA queries: slots, targets, the result
 *   dns_cache.c   the TTL cache of answers, per (name, type)
 *   dns_answer.c  the answer parsers and name rules, the copies of
 *                 records and results (pure: no c-ares, no libevent, what
 *                 the fuzzers and parser tests link)
 */
#ifndef FACTEUR_DNS_INTERNAL_H
#define FACTEUR_DNS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "facteur/dns.h"

struct ares_channeldata; /* ares_channel of every c-ares version */
struct event;
struct event_base;
struct sock_watch;
struct pending;
struct target;
struct dns_txt_query;

#define DNS_CLASS_IN 1
#define DNS_RCODE_NOERROR 0
#define DNS_RCODE_FORMERR 1
#define DNS_RCODE_SERVFAIL 2
#define DNS_RCODE_NXDOMAIN 3
#define DNS_RCODE_NOTIMP 4
#define DNS_RCODE_REFUSED 5
#define DNS_HEADER_LEN 12
#define DNS_NAME_BUF 256 /* a name is at most 253 characters (RFC 1035) */

#define DNS_CACHE_MAX 4096
#define DNS_CACHE_BUCKETS 4096

enum lookup_status {
	LOOKUP_WAITING,
	LOOKUP_RECORDS,
	LOOKUP_NODATA,
	LOOKUP_NXDOMAIN,
	LOOKUP_TEMPFAIL,
};

/* What one look-up of (name, type) found. */
struct outcome {
	enum lookup_status status;
	const struct dns_record *records;
	size_t count;
	const char *why;    /* LOOKUP_TEMPFAIL: a static description */
	bool authenticated; /* the answer had the AD bit */
};

struct cache_entry {
	struct cache_entry *chain;	   /* same bucket */
	struct cache_entry *older, *newer; /* insertion order, for eviction */
	uint64_t expires;		   /* monotonic milliseconds */
	uint16_t type;
	enum lookup_status status; /* RECORDS, NODATA or NXDOMAIN */
	bool authenticated;
	struct dns_record *records;
	size_t count;
	char name[];
};

struct cache {
	struct cache_entry *buckets[DNS_CACHE_BUCKETS];
	struct cache_entry *oldest, *newest;
	size_t count;
};

/* One (name, type) a query needs. */
struct slot {
	struct dns_query *query;
	struct target *target; /* NULL: the query's MX slot */
	uint16_t type;
	struct pending *pending; /* while waiting on the wire */
	struct slot *next, **pprev;
	enum lookup_status status;
	const char *why;
	bool authenticated;
};

struct dns {
	struct event_base *base;
	struct ares_channeldata *channel;
	bool channel_ready;
	struct event *timer;
	struct sock_watch *socks;
	struct pending *pending;
	struct dns_query *queries;
	struct dns_txt_query *txt_queries;
	struct cache cache;
};

/* dns_answer.c: allocation that stops the process when memory is out. */
void *dns_xcalloc(size_t n, size_t size);
char *dns_xstrdup(const char *s);

/* dns_answer.c: records as dns_answer_parse makes them. A deep copy, for
 * the cache and for a TLSA query's result; and its release. */
struct dns_record *dns_records_copy(const struct dns_record *records,
				    size_t count);
void dns_records_free(struct dns_record *records, size_t count);

/* dns_answer.c: lower-case `in` into out (DNS_NAME_BUF octets) without
 * its final dot; -1 when it cannot be a host name (RFC 1035 §2.3.4
 * lengths). */
int dns_name_normalize(const char *in, char *out);

/* dns_cache.c: per (name, type), positive and negative answers; `now`
 * in monotonic milliseconds. An expired entry is never found. */
struct cache_entry *dns_cache_find(struct cache *c, const char *name,
				   uint16_t type, uint64_t now);
/* Nothing is stored for a TTL of 0. */
void dns_cache_store(struct cache *c, const char *name, uint16_t type,
		     const struct outcome *o, uint32_t ttl, uint64_t now);
void dns_cache_clear(struct cache *c);

/* dns.c: answer s from the cache, or join (or start) the question on the
 * wire; s may be answered before the call returns. */
void dns_slot_wait(struct dns *dns, struct slot *s, const char *name);
/* dns.c: s no longer waits on the wire. */
void dns_slot_unlink(struct slot *s);

/* dns_query.c: what s waited for has come. */
void dns_slot_answer(struct slot *s, const struct outcome *o);
/* dns_query.c: for dns_free: every query still running goes, without
 * its callback. */
void dns_queries_drop(struct dns *dns);

#endif
