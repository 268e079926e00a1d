/*
 * Asynchronous DNS for relaying (SPEC.md §5 "Relay", RFC 5321 §5.1,
 * RFC 7505). c-ares sends the queries; its sockets and its timeout live
 * in the libevent loop. Answers are read by a small parser of our own
 * rather than c-ares's, because we need what those hide: the RCODE
 * (NXDOMAIN and NODATA are different answers) and the TTLs (the cache).
 *
 * A dns_query moves MX → addresses → done. Each (name, type) it needs is
 * a slot; a slot is answered from the cache or waits on a pending c-ares
 * query, shared by every slot that asks the same thing at the same time.
 * The user's callback only ever runs from the query's own zero timer:
 * never inside c-ares, never inside dns_resolve_*.
 *
 * c-ares 1.28 replaced ares_query by ares_query_dnsrec (and deprecated
 * the former): with it, the answer comes back as a record that we write
 * out again in wire form for our parser; older versions (Debian 12 has
 * 1.18) keep ares_query.
 */
#include <ares.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "facteur/dns.h"
#include "facteur/log.h"
#include "facteur/metrics.h"

#define DNS_CLASS_IN 1
#define DNS_RCODE_NOERROR 0
#define DNS_RCODE_FORMERR 1
#define DNS_RCODE_SERVFAIL 2
#define DNS_RCODE_NXDOMAIN 3
#define DNS_RCODE_NOTIMP 4
#define DNS_RCODE_REFUSED 5
#define DNS_HEADER_LEN 12
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))
#define DNS_NAME_BUF 256 /* a name is at most 253 characters (RFC 1035) */
#define DNS_POINTER_HOPS_MAX 64

/* A dead server is noticed within seconds (c-ares doubles the timeout on
 * the second try: 2 s + 4 s). */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2

#define DNS_TTL_MAX 3600
#define DNS_NEGATIVE_TTL_DEFAULT 60 /* no SOA in a negative answer */
#define DNS_NEGATIVE_TTL_MAX 900
#define DNS_CACHE_MAX 4096
#define DNS_CACHE_BUCKETS 4096
#define DNS_MX_HOSTS_MAX 16

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

/* One socket c-ares opened, and the event that watches it. */
struct sock_watch {
	struct sock_watch *next;
	struct dns *dns;
	ares_socket_t fd;
	struct event *ev;
};

/* One c-ares query in flight, and the slots waiting for its answer. */
struct pending {
	struct pending *next, **pprev;
	struct dns *dns;
	struct slot *slots;
	uint16_t type;
	char name[];
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

/* A host whose addresses a query looks up. */
struct target {
	char *name;
	unsigned preference;
	uint32_t tiebreak; /* random: shuffles equal preferences */
	struct slot aaaa, a;
	struct sockaddr_storage *v6, *v4;
	size_t v6_count, v4_count;
};

enum query_state {
	QUERY_MX,
	QUERY_ADDRESSES,
	QUERY_TLSA, /* dns_resolve_tlsa: one TLSA look-up, no addresses */
	QUERY_DONE,
};

/* Where a query's targets came from, for the words of its errors. */
enum target_source {
	FROM_MX,     /* the domain's MX records */
	FROM_DOMAIN, /* no MX: the domain itself (RFC 5321 §5.1) */
	FROM_HOST,   /* dns_resolve_host */
	FROM_TLSA,   /* dns_resolve_tlsa */
};

struct dns_query {
	struct dns_query *next, **pprev;
	struct dns *dns;
	dns_cb cb;
	void *arg;
	enum query_state state;
	enum target_source source;
	bool in_callback;
	char *name;
	struct slot mx; /* or the TLSA slot of dns_resolve_tlsa */
	struct target *targets;
	size_t target_count;
	size_t waiting; /* address slots not answered yet */
	struct event *done;
	struct dns_result result;
};

struct dns {
	struct event_base *base;
	ares_channel channel;
	bool channel_ready;
	struct event *timer;
	struct sock_watch *socks;
	struct pending *pending;
	struct dns_query *queries;
	struct dns_txt_query *txt_queries;
	struct cache cache;
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);

	if (p == NULL)
		fatal("dns: out of memory");
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		fatal("dns: out of memory");
	return p;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		fatal("dns: clock_gettime failed");
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The answer parser: pure, bounds-checked, no I/O. */

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* RFC 2181 §8: a TTL with the top bit set is read as zero. */
static uint32_t ttl_of(uint32_t raw)
{
	return (raw & 0x80000000u) ? 0 : raw;
}

/* Host names are letters, digits, hyphens (and underscores in practice);
 * anything else becomes '?' so that a name stays printable and is never
 * mistaken for a usable host. */
static char name_char(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return (char)(c - 'A' + 'a');
	if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
	    c == '_')
		return (char)c;
	return '?';
}

/*
 * Read the (maybe compressed) name at *off and move *off past it. With
 * out (DNS_NAME_BUF octets), write it as text: lower case, no final dot,
 * "" for the root. Pointers may point anywhere, but their number is
 * bounded so that loops end, and so is the name (255 octets on the wire).
 */
static int read_name(const unsigned char *buf, size_t len, size_t *off,
		     char *out)
{
	size_t pos = *off, wire = 1, n = 0, hops = 0;
	bool jumped = false;

	for (;;) {
		unsigned char c;

		if (pos >= len)
			return -1;
		c = buf[pos];
		if ((c & 0xc0) == 0xc0) {
			if (len - pos < 2 || ++hops > DNS_POINTER_HOPS_MAX)
				return -1;
			if (!jumped)
				*off = pos + 2;
			jumped = true;
			pos = (size_t)(c & 0x3f) << 8 | buf[pos + 1];
			continue;
		}
		if (c & 0xc0)
			return -1; /* extended label types (RFC 6891): none */
		if (c == 0)
			break;
		if (c > len - pos - 1)
			return -1;
		wire += (size_t)c + 1;
		if (wire > 255)
			return -1;
		if (out != NULL) {
			if (n + c + 2 > DNS_NAME_BUF)
				return -1;
			if (n > 0)
				out[n++] = '.';
			for (size_t i = 0; i < c; i++)
				out[n++] = name_char(buf[pos + 1 + i]);
		}
		pos += (size_t)c + 1;
	}
	if (!jumped)
		*off = pos + 1;
	if (out != NULL)
		out[n] = '\0';
	return 0;
}

enum dns_tlsa_check dns_tlsa_parse(const unsigned char *rdata, size_t len,
				   struct dns_tlsa *out)
{
	memset(out, 0, sizeof(*out));
	if (rdata == NULL || len < 4)
		return DNS_TLSA_TOO_SHORT;
	out->usage = rdata[0];
	out->selector = rdata[1];
	out->matching = rdata[2];
	out->data = rdata + 3;
	out->data_len = len - 3;
	/* RFC 6698 §2.1.3: a digest has its function's size; a full
	 * certificate or key (matching type 0) any size */
	if ((out->matching == DNS_TLSA_MATCH_SHA256 && out->data_len != 32) ||
	    (out->matching == DNS_TLSA_MATCH_SHA512 && out->data_len != 64))
		return DNS_TLSA_BAD_DIGEST_SIZE;
	return DNS_TLSA_WELL_FORMED;
}

static unsigned char *copy_octets(const unsigned char *data, size_t len)
{
	unsigned char *p = malloc(len == 0 ? 1 : len);

	if (p == NULL)
		fatal("dns: out of memory");
	if (len > 0)
		memcpy(p, data, len);
	return p;
}

static int add_record(struct dns_answer *a, const unsigned char *buf,
		      size_t len, size_t off, size_t rdlen, uint16_t type,
		      uint32_t ttl)
{
	struct dns_record r = {.type = type, .ttl = ttl};
	char name[DNS_NAME_BUF];
	size_t pos;

	switch (type) {
	case DNS_TYPE_A:
		if (rdlen != 4)
			return -1;
		memcpy(r.addr, buf + off, 4);
		break;
	case DNS_TYPE_AAAA:
		if (rdlen != 16)
			return -1;
		memcpy(r.addr, buf + off, 16);
		break;
	case DNS_TYPE_MX:
		if (rdlen < 3)
			return -1;
		r.preference = get16(buf + off);
		pos = off + 2;
		if (read_name(buf, len, &pos, name) < 0 || pos != off + rdlen)
			return -1;
		break;
	case DNS_TYPE_TLSA:
		r.tlsa_check = dns_tlsa_parse(buf + off, rdlen, &r.tlsa);
		break;
	default:
		return 0; /* a type we never ask for */
	}
	if (a->count >= DNS_ANSWER_MAX)
		return 0;
	if (type == DNS_TYPE_MX)
		r.exchange = xstrdup(name);
	if (type == DNS_TYPE_TLSA)
		r.tlsa.data = copy_octets(r.tlsa.data, r.tlsa.data_len);
	if (a->records == NULL)
		a->records = xcalloc(DNS_ANSWER_MAX, sizeof(*a->records));
	if (a->count == 0 || ttl < a->ttl)
		a->ttl = ttl;
	a->records[a->count++] = r;
	return 0;
}

/* RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM). */
static int read_soa(struct dns_answer *a, const unsigned char *buf, size_t len,
		    size_t off, size_t rdlen, uint32_t ttl)
{
	size_t pos = off, end = off + rdlen;
	uint32_t minimum, negative;

	if (read_name(buf, len, &pos, NULL) < 0 ||
	    read_name(buf, len, &pos, NULL) < 0)
		return -1;
	if (pos > end || end - pos != 20)
		return -1;
	minimum = ttl_of(get32(buf + pos + 16));
	negative = ttl < minimum ? ttl : minimum;
	if (!a->has_negative_ttl || negative < a->negative_ttl)
		a->negative_ttl = negative;
	a->has_negative_ttl = true;
	return 0;
}

int dns_answer_parse(const unsigned char *buf, size_t len, uint16_t qtype,
		     struct dns_answer *out)
{
	size_t off = DNS_HEADER_LEN;
	unsigned counts[2];
	unsigned qdcount;

	memset(out, 0, sizeof(*out));
	if (buf == NULL || len < DNS_HEADER_LEN)
		return -1;
	out->rcode = buf[3] & 0x0f;
	out->authenticated = (buf[3] & 0x20) != 0;
	qdcount = get16(buf + 4);
	counts[0] = get16(buf + 6); /* answer */
	counts[1] = get16(buf + 8); /* authority; additional is not read */

	for (unsigned i = 0; i < qdcount; i++) {
		if (read_name(buf, len, &off, NULL) < 0 || len - off < 4)
			goto malformed;
		off += 4;
	}
	for (int section = 0; section < 2; section++) {
		for (unsigned i = 0; i < counts[section]; i++) {
			uint16_t type, class, rdlen;
			uint32_t ttl;
			int rc = 0;

			if (read_name(buf, len, &off, NULL) < 0 ||
			    len - off < 10)
				goto malformed;
			type = get16(buf + off);
			class = get16(buf + off + 2);
			ttl = ttl_of(get32(buf + off + 4));
			rdlen = get16(buf + off + 8);
			off += 10;
			if (rdlen > len - off)
				goto malformed;
			if (class == DNS_CLASS_IN && section == 0 &&
			    type == qtype)
				rc = add_record(out, buf, len, off, rdlen, type,
						ttl);
			else if (class == DNS_CLASS_IN && section == 1 &&
				 type == DNS_TYPE_SOA)
				rc = read_soa(out, buf, len, off, rdlen, ttl);
			if (rc < 0)
				goto malformed;
			off += rdlen;
		}
	}
	return 0;

malformed:
	dns_answer_clear(out);
	return -1;
}

static void records_free(struct dns_record *records, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(records[i].exchange);
		free((void *)records[i].tlsa.data);
	}
	free(records);
}

void dns_answer_clear(struct dns_answer *answer)
{
	records_free(answer->records, answer->count);
	memset(answer, 0, sizeof(*answer));
}

/* A deep copy, for the cache and for a TLSA query's result. */
static struct dns_record *records_copy(const struct dns_record *records,
				       size_t count)
{
	struct dns_record *copy = xcalloc(count, sizeof(*copy));

	for (size_t i = 0; i < count; i++) {
		copy[i] = records[i];
		if (records[i].exchange != NULL)
			copy[i].exchange = xstrdup(records[i].exchange);
		if (records[i].tlsa.data != NULL)
			copy[i].tlsa.data = copy_octets(
			    records[i].tlsa.data, records[i].tlsa.data_len);
	}
	return copy;
}

/* The cache: per (name, type), positive and negative answers. */

static size_t cache_bucket(const char *name, uint16_t type)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const char *p = name; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	h = (h ^ (type & 0xff)) * 16777619u;
	h = (h ^ (type >> 8)) * 16777619u;
	return h % DNS_CACHE_BUCKETS;
}

static void cache_remove(struct cache *c, struct cache_entry *e)
{
	struct cache_entry **pp = &c->buckets[cache_bucket(e->name, e->type)];

	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	if (e->older != NULL)
		e->older->newer = e->newer;
	else
		c->oldest = e->newer;
	if (e->newer != NULL)
		e->newer->older = e->older;
	else
		c->newest = e->older;
	c->count--;
	records_free(e->records, e->count);
	free(e);
}

static struct cache_entry *cache_find(struct cache *c, const char *name,
				      uint16_t type, uint64_t now)
{
	struct cache_entry *e = c->buckets[cache_bucket(name, type)];

	for (; e != NULL; e = e->chain) {
		if (e->type != type || strcmp(e->name, name) != 0)
			continue;
		if (e->expires <= now) {
			cache_remove(c, e);
			return NULL;
		}
		return e;
	}
	return NULL;
}

static void cache_store(struct cache *c, const char *name, uint16_t type,
			const struct outcome *o, uint32_t ttl, uint64_t now)
{
	size_t len = strlen(name);
	struct cache_entry *e, *old;
	size_t bucket = cache_bucket(name, type);

	if (ttl == 0)
		return;
	old = cache_find(c, name, type, now);
	if (old != NULL)
		cache_remove(c, old);
	/* Full: the oldest entry goes, whatever its TTL. */
	if (c->count >= DNS_CACHE_MAX && c->oldest != NULL)
		cache_remove(c, c->oldest);

	e = xcalloc(1, sizeof(*e) + len + 1);
	memcpy(e->name, name, len + 1);
	e->type = type;
	e->status = o->status;
	e->expires = now + (uint64_t)ttl * 1000;
	e->authenticated = o->authenticated;
	if (o->count > 0) {
		e->records = records_copy(o->records, o->count);
		e->count = o->count;
	}
	e->chain = c->buckets[bucket];
	c->buckets[bucket] = e;
	e->older = c->newest;
	if (c->newest != NULL)
		c->newest->newer = e;
	else
		c->oldest = e;
	c->newest = e;
	c->count++;
}

static void cache_clear(struct cache *c)
{
	while (c->oldest != NULL)
		cache_remove(c, c->oldest);
}

/* c-ares in the loop. */

/* After every call into c-ares: its next deadline becomes our timer. */
static void dns_rearm(struct dns *dns)
{
	struct timeval tv, *tvp;

	tvp = ares_timeout(dns->channel, NULL, &tv);
	if (tvp == NULL) {
		if (event_del(dns->timer) < 0)
			fatal("dns: cannot stop the timer");
		return;
	}
	if (evtimer_add(dns->timer, tvp) < 0)
		fatal("dns: cannot arm the timer");
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct dns *dns = arg;

	(void)fd;
	(void)what;
	ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_rearm(dns);
}

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
	/* The watch may be freed inside ares_process_fd: read it first. */
	struct sock_watch *w = arg;
	struct dns *dns = w->dns;

	ares_process_fd(dns->channel, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
			(what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dns_rearm(dns);
}

static void on_sock_state(void *data, ares_socket_t fd, int readable,
			  int writable)
{
	struct dns *dns = data;
	struct sock_watch **pp, *w;
	short what;

	for (pp = &dns->socks; (w = *pp) != NULL; pp = &w->next)
		if (w->fd == fd)
			break;
	if (!readable && !writable) {
		if (w != NULL) {
			*pp = w->next;
			event_free(w->ev);
			free(w);
		}
		return;
	}
	if (w == NULL) {
		w = xcalloc(1, sizeof(*w));
		w->dns = dns;
		w->fd = fd;
		w->next = dns->socks;
		dns->socks = w;
	} else {
		event_free(w->ev);
	}
	what =
	    EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);
	w->ev = event_new(dns->base, fd, what, on_sock_event, w);
	if (w->ev == NULL || event_add(w->ev, NULL) < 0)
		fatal("dns: cannot watch a c-ares socket");
}

/* Slots: one (name, type) of a query, answered once. */

static void slot_init(struct slot *s, struct dns_query *q, struct target *t,
		      uint16_t type)
{
	memset(s, 0, sizeof(*s));
	s->query = q;
	s->target = t;
	s->type = type;
}

static void slot_link(struct slot *s, struct pending *p)
{
	s->pending = p;
	s->next = p->slots;
	if (s->next != NULL)
		s->next->pprev = &s->next;
	s->pprev = &p->slots;
	p->slots = s;
}

static void slot_unlink(struct slot *s)
{
	if (s->pending == NULL)
		return;
	*s->pprev = s->next;
	if (s->next != NULL)
		s->next->pprev = s->pprev;
	s->pending = NULL;
	s->next = NULL;
	s->pprev = NULL;
}

static void query_on_mx(struct dns_query *q, const struct outcome *o);
static void query_on_tlsa(struct dns_query *q, const struct outcome *o);
static void query_finish(struct dns_query *q);

static void target_add_addresses(struct target *t, uint16_t type,
				 const struct outcome *o)
{
	struct sockaddr_storage *addrs = xcalloc(o->count, sizeof(*addrs));

	for (size_t i = 0; i < o->count; i++) {
		if (type == DNS_TYPE_AAAA) {
			struct sockaddr_in6 *sin6 = (void *)&addrs[i];

			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, o->records[i].addr, 16);
		} else {
			struct sockaddr_in *sin = (void *)&addrs[i];

			sin->sin_family = AF_INET;
			memcpy(&sin->sin_addr, o->records[i].addr, 4);
		}
	}
	if (type == DNS_TYPE_AAAA) {
		free(t->v6);
		t->v6 = addrs;
		t->v6_count = o->count;
	} else {
		free(t->v4);
		t->v4 = addrs;
		t->v4_count = o->count;
	}
}

static void slot_answer(struct slot *s, const struct outcome *o)
{
	struct dns_query *q = s->query;

	s->status = o->status;
	s->why = o->why;
	s->authenticated = o->authenticated;
	if (s->target == NULL) {
		if (q->state == QUERY_TLSA)
			query_on_tlsa(q, o);
		else
			query_on_mx(q, o);
		return;
	}
	if (o->status == LOOKUP_RECORDS)
		target_add_addresses(s->target, s->type, o);
	if (--q->waiting == 0)
		query_finish(q);
}

static const char *type_name(uint16_t type)
{
	switch (type) {
	case DNS_TYPE_A:
		return "A";
	case DNS_TYPE_AAAA:
		return "AAAA";
	case DNS_TYPE_MX:
		return "MX";
	case DNS_TYPE_TLSA:
		return "TLSA";
	}
	return "?";
}

/* A code (an answer's RCODE or c-ares's status) and what it means: a
 * final status, or a temporary failure and why. */
struct code_meaning {
	int code;
	enum lookup_status status;
	const char *why; /* for LOOKUP_TEMPFAIL */
};

static const struct code_meaning rcode_meanings[] = {
    {DNS_RCODE_NXDOMAIN, LOOKUP_NXDOMAIN, NULL},
    {DNS_RCODE_SERVFAIL, LOOKUP_TEMPFAIL, "SERVFAIL"},
    {DNS_RCODE_REFUSED, LOOKUP_TEMPFAIL, "REFUSED"},
    {DNS_RCODE_FORMERR, LOOKUP_TEMPFAIL, "FORMERR"},
    {DNS_RCODE_NOTIMP, LOOKUP_TEMPFAIL, "NOTIMP"},
};

/* Used only when no answer came back to read. */
static const struct code_meaning ares_meanings[] = {
    {ARES_ENODATA, LOOKUP_NODATA, NULL},
    {ARES_ENOTFOUND, LOOKUP_NXDOMAIN, NULL},
    {ARES_EBADNAME, LOOKUP_NXDOMAIN, NULL},
    {ARES_ESERVFAIL, LOOKUP_TEMPFAIL, "SERVFAIL"},
    {ARES_EREFUSED, LOOKUP_TEMPFAIL, "REFUSED"},
    {ARES_ETIMEOUT, LOOKUP_TEMPFAIL, "timeout"},
    {ARES_ECONNREFUSED, LOOKUP_TEMPFAIL, "refused"},
};

/* Set o from the row of `table` for `code`; false when there is none. */
static bool apply_meaning(const struct code_meaning *table, size_t n, int code,
			  struct outcome *o)
{
	for (size_t i = 0; i < n; i++) {
		if (table[i].code == code) {
			o->status = table[i].status;
			o->why = table[i].why;
			return true;
		}
	}
	return false;
}

/* Turn what c-ares handed us into an outcome. We read the RCODE
 * ourselves: c-ares's ENOTFOUND may mean NXDOMAIN or NODATA. */
static void classify(int status, const unsigned char *abuf, int alen,
		     uint16_t type, struct dns_answer *answer,
		     struct outcome *o)
{
	memset(answer, 0, sizeof(*answer));
	memset(o, 0, sizeof(*o));
	o->status = LOOKUP_TEMPFAIL;
	if (abuf != NULL && alen >= DNS_HEADER_LEN) {
		if (dns_answer_parse(abuf, (size_t)alen, type, answer) < 0) {
			o->why = "malformed answer";
			return;
		}
		o->authenticated = answer->authenticated;
		if (answer->rcode == DNS_RCODE_NOERROR) {
			o->status =
			    answer->count > 0 ? LOOKUP_RECORDS : LOOKUP_NODATA;
			o->records = answer->records;
			o->count = answer->count;
		} else if (!apply_meaning(rcode_meanings,
					  COUNT_OF(rcode_meanings),
					  answer->rcode, o)) {
			o->why = "unexpected RCODE";
		}
		return;
	}
	if (!apply_meaning(ares_meanings, COUNT_OF(ares_meanings), status, o))
		o->why = ares_strerror(status);
}

static const char *lookup_status_name(enum lookup_status status)
{
	switch (status) {
	case LOOKUP_WAITING:
		return "waiting";
	case LOOKUP_RECORDS:
		return "records";
	case LOOKUP_NODATA:
		return "nodata";
	case LOOKUP_NXDOMAIN:
		return "nxdomain";
	case LOOKUP_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

static void pending_unlink(struct pending *p)
{
	*p->pprev = p->next;
	if (p->next != NULL)
		p->next->pprev = p->pprev;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
		      int alen)
{
	struct pending *p = arg;
	struct dns *dns = p->dns;
	struct dns_answer answer;
	struct outcome o;
	struct slot *s;
	uint32_t ttl;

	(void)timeouts;
	pending_unlink(p);
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
		/* dns_free: every query has already let go of its slots. */
		while ((s = p->slots) != NULL)
			slot_unlink(s);
		free(p);
		return;
	}
	classify(status, abuf, alen, p->type, &answer, &o);
	log_event(LOG_LEVEL_DEBUG, "dns_answer", LOG_S("name", p->name),
		  LOG_S("type", type_name(p->type)),
		  LOG_S("result", lookup_status_name(o.status)),
		  LOG_S("reason", o.why));
	if (o.status == LOOKUP_TEMPFAIL) {
		metrics_dns_failure(type_name(p->type), o.why);
	} else {
		if (o.status == LOOKUP_RECORDS)
			ttl =
			    answer.ttl < DNS_TTL_MAX ? answer.ttl : DNS_TTL_MAX;
		else if (!answer.has_negative_ttl)
			ttl = DNS_NEGATIVE_TTL_DEFAULT;
		else
			ttl = answer.negative_ttl < DNS_NEGATIVE_TTL_MAX
				  ? answer.negative_ttl
				  : DNS_NEGATIVE_TTL_MAX;
		cache_store(&dns->cache, p->name, p->type, &o, ttl, now_ms());
	}
	while ((s = p->slots) != NULL) {
		slot_unlink(s);
		slot_answer(s, &o);
	}
	dns_answer_clear(&answer);
	free(p);
}

#if ARES_VERSION >= 0x011c00
/* The answer as a record: back to wire form, as ares_query would give it,
 * for `answer`. A record that cannot be written out is a temporary
 * failure. */
static void answer_as_wire(ares_callback answer, void *arg,
			   ares_status_t status, size_t timeouts,
			   const ares_dns_record_t *record)
{
	unsigned char *wire = NULL;
	size_t len = 0;

	if (record != NULL) {
		ares_status_t written = ares_dns_write(record, &wire, &len);

		if (written != ARES_SUCCESS) {
			status = written;
			wire = NULL;
			len = 0;
		}
	}
	answer(arg, (int)status, (int)timeouts, wire, (int)len);
	if (wire != NULL)
		ares_free_string(wire);
}

static void on_answer_record(void *arg, ares_status_t status, size_t timeouts,
			     const ares_dns_record_t *record)
{
	answer_as_wire(on_answer, arg, status, timeouts, record);
}
#endif

/*
 * Send p's question with the AD bit set: RFC 6840 §5.7, the way a stub
 * asks a validating resolver to say whether the answer is secure (DANE
 * needs to know) without the RRSIGs that the DO bit would bring.
 */
static void pending_send(struct dns *dns, struct pending *p)
{
#if ARES_VERSION >= 0x011c00
	ares_dns_record_t *question = NULL;

	if (ares_dns_record_create(&question, 0, ARES_FLAG_RD | ARES_FLAG_AD,
				   ARES_OPCODE_QUERY,
				   ARES_RCODE_NOERROR) != ARES_SUCCESS ||
	    ares_dns_record_query_add(question, p->name,
				      (ares_dns_rec_type_t)p->type,
				      ARES_CLASS_IN) != ARES_SUCCESS) {
		ares_dns_record_destroy(question);
		on_answer(p, ARES_ENOMEM, 0, NULL, 0);
		return;
	}
	(void)ares_send_dnsrec(dns->channel, question, on_answer_record, p,
			       NULL);
	ares_dns_record_destroy(question);
#else
	unsigned char *question = NULL;
	int len = 0, rc;

	rc = ares_create_query(p->name, DNS_CLASS_IN, p->type, 0, 1, &question,
			       &len, 0);
	if (rc != ARES_SUCCESS || len < DNS_HEADER_LEN) {
		if (question != NULL)
			ares_free_string(question);
		on_answer(p, rc != ARES_SUCCESS ? rc : ARES_EBADQUERY, 0, NULL,
			  0);
		return;
	}
	question[3] |= 0x20; /* AD */
	ares_send(dns->channel, question, len, on_answer, p);
	ares_free_string(question);
#endif
}

/* Answer s from the cache, or join (or start) the query on the wire. */
static void slot_wait(struct slot *s, const char *name)
{
	struct dns *dns = s->query->dns;
	struct cache_entry *e;
	struct pending *p;
	size_t len;

	e = cache_find(&dns->cache, name, s->type, now_ms());
	if (e != NULL) {
		struct outcome o = {
		    .status = e->status,
		    .records = e->records,
		    .count = e->count,
		    .authenticated = e->authenticated,
		};
		slot_answer(s, &o);
		return;
	}
	/* Linear in the queries in flight, which are few. */
	for (p = dns->pending; p != NULL; p = p->next)
		if (p->type == s->type && strcmp(p->name, name) == 0)
			break;
	if (p != NULL) {
		slot_link(s, p);
		return;
	}
	len = strlen(name);
	p = xcalloc(1, sizeof(*p) + len + 1);
	memcpy(p->name, name, len + 1);
	p->dns = dns;
	p->type = s->type;
	p->next = dns->pending;
	if (p->next != NULL)
		p->next->pprev = &p->next;
	p->pprev = &dns->pending;
	dns->pending = p;
	slot_link(s, p);
	metrics.dns_queries_total++;
	/* on_answer may run (and free p) before the call returns; a query
	 * that cannot be sent is reported to it as well. */
	pending_send(dns, p);
	dns_rearm(dns);
}

/* Queries. */

static void query_fail(struct dns_query *q, enum dns_status status,
		       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void query_fail(struct dns_query *q, enum dns_status status,
		       const char *fmt, ...)
{
	va_list ap;

	q->result.status = status;
	va_start(ap, fmt);
	vsnprintf(q->result.error, sizeof(q->result.error), fmt, ap);
	va_end(ap);
	query_finish(q);
}

static void query_finish(struct dns_query *q)
{
	q->state = QUERY_DONE;
	event_active(q->done, EV_TIMEOUT, 1);
}

static struct target *query_add_target(struct dns_query *q, const char *name,
				       unsigned preference)
{
	struct target *t = &q->targets[q->target_count++];

	t->name = xstrdup(name);
	t->preference = preference;
	t->tiebreak = arc4random();
	slot_init(&t->aaaa, q, t, DNS_TYPE_AAAA);
	slot_init(&t->a, q, t, DNS_TYPE_A);
	return t;
}

/* A name we can send as a query: letters, digits, '-', '_' labels. */
static bool host_name_usable(const char *name)
{
	return name[0] != '\0' && strchr(name, '?') == NULL;
}

struct mx_candidate {
	const char *name;
	unsigned preference;
	size_t index;
};

static int mx_candidate_cmp(const void *a, const void *b)
{
	const struct mx_candidate *x = a, *y = b;

	if (x->preference != y->preference)
		return x->preference < y->preference ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Distinct usable MX hosts, each at its best preference; the best
 * DNS_MX_HOSTS_MAX of them are kept. */
static void query_targets_from_mx(struct dns_query *q, const struct outcome *o)
{
	struct mx_candidate *c = xcalloc(o->count, sizeof(*c));
	size_t n = 0;

	for (size_t i = 0; i < o->count; i++) {
		const struct dns_record *r = &o->records[i];
		size_t j;

		if (r->exchange == NULL || !host_name_usable(r->exchange))
			continue;
		for (j = 0; j < n; j++)
			if (strcmp(c[j].name, r->exchange) == 0)
				break;
		if (j < n) {
			if (r->preference < c[j].preference)
				c[j].preference = r->preference;
			continue;
		}
		c[n].name = r->exchange;
		c[n].preference = r->preference;
		c[n].index = i;
		n++;
	}
	qsort(c, n, sizeof(*c), mx_candidate_cmp);
	if (n > DNS_MX_HOSTS_MAX)
		n = DNS_MX_HOSTS_MAX;
	q->targets = xcalloc(n, sizeof(*q->targets));
	for (size_t i = 0; i < n; i++)
		query_add_target(q, c[i].name, c[i].preference);
	free(c);
}

static void query_resolve_targets(struct dns_query *q)
{
	q->state = QUERY_ADDRESSES;
	/* Counted up front: cached answers come back synchronously, and
	 * the query must not finish before every slot has started. */
	q->waiting = 2 * q->target_count;
	for (size_t i = 0; i < q->target_count; i++) {
		struct target *t = &q->targets[i];

		slot_wait(&t->aaaa, t->name);
		slot_wait(&t->a, t->name);
	}
}

/* RFC 7505: "MX 0 ." says the domain takes no mail. Records that all
 * point at the root mean the same, whatever their preference. */
static bool is_null_mx(const struct outcome *o)
{
	for (size_t i = 0; i < o->count; i++)
		if (o->records[i].exchange == NULL ||
		    o->records[i].exchange[0] != '\0')
			return false;
	return o->count > 0;
}

static void query_on_mx(struct dns_query *q, const struct outcome *o)
{
	switch (o->status) {
	case LOOKUP_TEMPFAIL:
		query_fail(q, DNS_TEMPFAIL, "%s: MX look-up failed: %s",
			   q->name, o->why);
		return;
	case LOOKUP_NXDOMAIN:
		query_fail(q, DNS_NXDOMAIN, "%s: domain not found (NXDOMAIN)",
			   q->name);
		return;
	case LOOKUP_NODATA:
		q->result.authenticated = o->authenticated;
		q->source = FROM_DOMAIN;
		q->targets = xcalloc(1, sizeof(*q->targets));
		query_add_target(q, q->name, 0);
		break;
	case LOOKUP_RECORDS:
		if (is_null_mx(o)) {
			query_fail(q, DNS_NULL_MX,
				   "%s: null MX, the domain accepts no mail "
				   "(RFC 7505)",
				   q->name);
			return;
		}
		q->result.authenticated = o->authenticated;
		query_targets_from_mx(q, o);
		if (q->target_count == 0) {
			query_fail(q, DNS_NO_HOST, "%s: no usable MX host name",
				   q->name);
			return;
		}
		break;
	case LOOKUP_WAITING:
		fatal("dns: an MX answer without a result");
	}
	query_resolve_targets(q);
}

static void query_on_tlsa(struct dns_query *q, const struct outcome *o)
{
	q->result.authenticated = o->authenticated;
	switch (o->status) {
	case LOOKUP_RECORDS:
		q->result.records = records_copy(o->records, o->count);
		q->result.record_count = o->count;
		query_finish(q);
		return;
	case LOOKUP_NODATA:
		query_fail(q, DNS_NO_HOST, "%s: no TLSA record", q->name);
		return;
	case LOOKUP_NXDOMAIN:
		query_fail(q, DNS_NXDOMAIN, "%s: no TLSA record (NXDOMAIN)",
			   q->name);
		return;
	case LOOKUP_TEMPFAIL:
		query_fail(q, DNS_TEMPFAIL, "%s: TLSA look-up failed: %s",
			   q->name, o->why);
		return;
	case LOOKUP_WAITING:
		break;
	}
	fatal("dns: a TLSA answer without a result");
}

/* RFC 7672 §2.2.2: a host's addresses are secure when each of its
 * answers, records or denial, was validated. */
static bool target_secure(const struct target *t)
{
	const struct slot *slots[] = {&t->aaaa, &t->a};

	for (size_t i = 0; i < COUNT_OF(slots); i++)
		if (slots[i]->status == LOOKUP_TEMPFAIL ||
		    !slots[i]->authenticated)
			return false;
	return true;
}

static int target_order_cmp(const void *a, const void *b)
{
	const struct target *x = *(const struct target *const *)a;
	const struct target *y = *(const struct target *const *)b;

	if (x->preference != y->preference)
		return x->preference < y->preference ? -1 : 1;
	if (x->tiebreak != y->tiebreak)
		return x->tiebreak < y->tiebreak ? -1 : 1;
	return 0;
}

/* No target has an address: say why, in the words of the request. */
static void query_explain_no_address(struct dns_query *q)
{
	struct dns_result *r = &q->result;
	const struct target *failed = NULL;
	const char *why = NULL;
	bool all_nxdomain = q->target_count > 0;

	for (size_t i = 0; i < q->target_count; i++) {
		const struct target *t = &q->targets[i];

		if (failed == NULL && (t->aaaa.status == LOOKUP_TEMPFAIL ||
				       t->a.status == LOOKUP_TEMPFAIL)) {
			failed = t;
			why = t->aaaa.status == LOOKUP_TEMPFAIL ? t->aaaa.why
								: t->a.why;
		}
		if (t->aaaa.status != LOOKUP_NXDOMAIN ||
		    t->a.status != LOOKUP_NXDOMAIN)
			all_nxdomain = false;
	}
	if (failed != NULL) {
		r->status = DNS_TEMPFAIL;
		snprintf(r->error, sizeof(r->error),
			 "%s: address look-up of %s failed: %s", q->name,
			 failed->name, why != NULL ? why : "error");
		return;
	}
	switch (q->source) {
	case FROM_MX:
		r->status = DNS_NO_HOST;
		snprintf(r->error, sizeof(r->error),
			 "%s: no MX host has an address", q->name);
		break;
	case FROM_DOMAIN:
		r->status = DNS_NO_HOST;
		snprintf(r->error, sizeof(r->error),
			 "%s: no MX and no A/AAAA record", q->name);
		break;
	case FROM_HOST:
	case FROM_TLSA:
		r->status = all_nxdomain ? DNS_NXDOMAIN : DNS_NO_HOST;
		snprintf(r->error, sizeof(r->error), "%s: %s", q->name,
			 all_nxdomain ? "host not found (NXDOMAIN)"
				      : "no A/AAAA record");
		break;
	}
}

/* Hosts with at least one address, by preference with equal ones in
 * random order; within a host, IPv6 then IPv4, each in answer order. */
static void query_build_hosts(struct dns_query *q)
{
	struct target **order;
	size_t n = 0;

	order = xcalloc(q->target_count, sizeof(*order));
	for (size_t i = 0; i < q->target_count; i++)
		if (q->targets[i].v6_count + q->targets[i].v4_count > 0)
			order[n++] = &q->targets[i];
	if (n == 0) {
		free(order);
		query_explain_no_address(q);
		return;
	}
	qsort(order, n, sizeof(*order), target_order_cmp);
	q->result.hosts = xcalloc(n, sizeof(*q->result.hosts));
	q->result.host_count = n;
	for (size_t i = 0; i < n; i++) {
		struct dns_host *h = &q->result.hosts[i];
		const struct target *t = order[i];

		h->name = t->name;
		h->preference = t->preference;
		h->secure = target_secure(t);
		h->addr_count = t->v6_count + t->v4_count;
		h->addrs = xcalloc(h->addr_count, sizeof(*h->addrs));
		if (t->v6_count > 0)
			memcpy(h->addrs, t->v6, t->v6_count * sizeof(*t->v6));
		if (t->v4_count > 0)
			memcpy(h->addrs + t->v6_count, t->v4,
			       t->v4_count * sizeof(*t->v4));
	}
	free(order);
}

static void query_unlink(struct dns_query *q)
{
	if (q->pprev == NULL)
		return;
	*q->pprev = q->next;
	if (q->next != NULL)
		q->next->pprev = q->pprev;
	q->pprev = NULL;
	q->next = NULL;
}

/* Frees the query alone: it never touches q->dns, which may be gone
 * when a callback called dns_free. */
static void query_free(struct dns_query *q)
{
	slot_unlink(&q->mx);
	for (size_t i = 0; i < q->target_count; i++) {
		struct target *t = &q->targets[i];

		slot_unlink(&t->aaaa);
		slot_unlink(&t->a);
		free(t->name);
		free(t->v6);
		free(t->v4);
	}
	free(q->targets);
	for (size_t i = 0; i < q->result.host_count; i++)
		free(q->result.hosts[i].addrs);
	free(q->result.hosts);
	records_free((struct dns_record *)q->result.records,
		     q->result.record_count);
	if (q->done != NULL)
		event_free(q->done);
	free(q->name);
	free(q);
}

static void on_query_done(evutil_socket_t fd, short what, void *arg)
{
	struct dns_query *q = arg;

	(void)fd;
	(void)what;
	query_unlink(q);
	event_free(q->done);
	q->done = NULL;
	if (q->result.status == DNS_OK && q->source != FROM_TLSA)
		query_build_hosts(q);
	q->in_callback = true;
	q->cb(&q->result, q->arg);
	query_free(q);
}

static struct dns_query *query_new(struct dns *dns, const char *name, dns_cb cb,
				   void *arg)
{
	struct dns_query *q = xcalloc(1, sizeof(*q));

	q->dns = dns;
	q->cb = cb;
	q->arg = arg;
	q->name = xstrdup(name);
	q->result.status = DNS_OK;
	slot_init(&q->mx, q, NULL, DNS_TYPE_MX);
	q->done = evtimer_new(dns->base, on_query_done, q);
	if (q->done == NULL)
		fatal("dns: cannot make a query's event");
	q->next = dns->queries;
	if (q->next != NULL)
		q->next->pprev = &q->next;
	q->pprev = &dns->queries;
	dns->queries = q;
	return q;
}

/* Lower-case `in` into out (DNS_NAME_BUF octets) without its final dot;
 * -1 when it cannot be a host name (RFC 1035 §2.3.4 lengths). */
static int normalize_name(const char *in, char *out)
{
	size_t len = strnlen(in, DNS_NAME_BUF), label = 0;

	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return -1;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '.') {
			if (label == 0)
				return -1;
			label = 0;
			out[i] = '.';
			continue;
		}
		out[i] = name_char((unsigned char)c);
		if (out[i] == '?' || ++label > 63)
			return -1;
	}
	if (label == 0)
		return -1;
	out[len] = '\0';
	return 0;
}

/* An address literal: "[192.0.2.1]", "[IPv6:2001:db8::1]" (RFC 5321
 * §4.1.3) or, when brackets are optional, the bare address. */
static bool parse_literal(const char *text, bool brackets_required,
			  struct sockaddr_storage *ss, char *out, size_t outlen)
{
	char buf[INET6_ADDRSTRLEN + 8];
	size_t len = strnlen(text, sizeof(buf));
	const char *p = text;
	struct sockaddr_in *sin = (void *)ss;
	struct sockaddr_in6 *sin6 = (void *)ss;

	if (len >= sizeof(buf))
		return false;
	if (len >= 2 && p[0] == '[' && p[len - 1] == ']') {
		p++;
		len -= 2;
	} else if (brackets_required) {
		return false;
	}
	if (len > 5 && strncasecmp(p, "IPv6:", 5) == 0) {
		p += 5;
		len -= 5;
	}
	memcpy(buf, p, len);
	buf[len] = '\0';
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		return inet_ntop(AF_INET6, &sin6->sin6_addr, out,
				 (socklen_t)outlen) != NULL;
	}
	if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		return inet_ntop(AF_INET, &sin->sin_addr, out,
				 (socklen_t)outlen) != NULL;
	}
	return false;
}

/* A literal needs no DNS: one host, its one address. */
static struct dns_query *query_of_literal(struct dns *dns, const char *text,
					  const struct sockaddr_storage *ss,
					  dns_cb cb, void *arg)
{
	struct dns_query *q = query_new(dns, text, cb, arg);
	struct target *t;

	q->source = FROM_HOST;
	q->targets = xcalloc(1, sizeof(*q->targets));
	t = query_add_target(q, text, 0);
	if (ss->ss_family == AF_INET6) {
		t->v6 = xcalloc(1, sizeof(*t->v6));
		*t->v6 = *ss;
		t->v6_count = 1;
	} else {
		t->v4 = xcalloc(1, sizeof(*t->v4));
		*t->v4 = *ss;
		t->v4_count = 1;
	}
	query_finish(q);
	return q;
}

static struct dns_query *query_of_bad_name(struct dns *dns, const char *text,
					   dns_cb cb, void *arg)
{
	char shown[DNS_NAME_BUF];
	struct dns_query *q;

	snprintf(shown, sizeof(shown), "%s", text);
	for (char *p = shown; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	q = query_new(dns, shown, cb, arg);
	query_fail(q, DNS_NXDOMAIN, "%s: invalid domain name", shown);
	return q;
}

struct dns_query *dns_resolve_mx(struct dns *dns, const char *domain, dns_cb cb,
				 void *arg)
{
	char name[DNS_NAME_BUF], text[INET6_ADDRSTRLEN];
	struct sockaddr_storage ss;
	struct dns_query *q;

	if (parse_literal(domain, true, &ss, text, sizeof(text)))
		return query_of_literal(dns, text, &ss, cb, arg);
	if (normalize_name(domain, name) < 0)
		return query_of_bad_name(dns, domain, cb, arg);
	q = query_new(dns, name, cb, arg);
	q->state = QUERY_MX;
	q->source = FROM_MX;
	slot_wait(&q->mx, q->name);
	return q;
}

struct dns_query *dns_resolve_host(struct dns *dns, const char *host, dns_cb cb,
				   void *arg)
{
	char name[DNS_NAME_BUF], text[INET6_ADDRSTRLEN];
	struct sockaddr_storage ss;
	struct dns_query *q;
	size_t len = strnlen(host, DNS_NAME_BUF + 2);

	if (parse_literal(host, false, &ss, text, sizeof(text)))
		return query_of_literal(dns, text, &ss, cb, arg);
	/* "[host]" is how routes write "no MX look-up". */
	if (len >= 2 && len < DNS_NAME_BUF + 2 && host[0] == '[' &&
	    host[len - 1] == ']') {
		char inner[DNS_NAME_BUF + 2];

		memcpy(inner, host + 1, len - 2);
		inner[len - 2] = '\0';
		if (normalize_name(inner, name) < 0)
			return query_of_bad_name(dns, host, cb, arg);
	} else if (normalize_name(host, name) < 0) {
		return query_of_bad_name(dns, host, cb, arg);
	}
	q = query_new(dns, name, cb, arg);
	q->source = FROM_HOST;
	q->targets = xcalloc(1, sizeof(*q->targets));
	query_add_target(q, name, 0);
	query_resolve_targets(q);
	return q;
}

struct dns_query *dns_resolve_tlsa(struct dns *dns, const char *name, dns_cb cb,
				   void *arg)
{
	char normal[DNS_NAME_BUF];
	struct dns_query *q;

	if (normalize_name(name, normal) < 0)
		return query_of_bad_name(dns, name, cb, arg);
	q = query_new(dns, normal, cb, arg);
	q->state = QUERY_TLSA;
	q->source = FROM_TLSA;
	slot_init(&q->mx, q, NULL, DNS_TYPE_TLSA);
	slot_wait(&q->mx, q->name);
	return q;
}

void dns_cancel(struct dns_query *query)
{
	/* From inside its own callback it is already on its way out. */
	if (query == NULL || query->in_callback)
		return;
	query_unlink(query);
	query_free(query);
}

/* TXT look-ups, apart from the MX machinery above: no slots and no
 * cache (their users, MTA-STS and TLS reporting, keep what they learn),
 * one c-ares query each. */

/* One TXT record: its character-strings joined, a NUL octet read as '?'
 * so that the text stays one C string. */
static int add_txt(char ***texts, size_t *count, const unsigned char *rdata,
		   size_t rdlen)
{
	char *text;
	size_t n = 0;

	if (*count >= DNS_ANSWER_MAX)
		return 0;
	text = malloc(rdlen + 1);
	if (text == NULL)
		fatal("dns: out of memory");
	for (size_t pos = 0; pos < rdlen;) {
		size_t part = rdata[pos++];

		if (part > rdlen - pos) {
			free(text);
			return -1;
		}
		for (size_t i = 0; i < part; i++)
			text[n++] = rdata[pos + i] ? (char)rdata[pos + i] : '?';
		pos += part;
	}
	text[n] = '\0';
	if (*texts == NULL)
		*texts = xcalloc(DNS_ANSWER_MAX, sizeof(**texts));
	(*texts)[(*count)++] = text;
	return 0;
}

int dns_txt_answer_parse(const unsigned char *buf, size_t len, int *rcode,
			 char ***texts, size_t *count)
{
	size_t off = DNS_HEADER_LEN;
	unsigned qdcount, ancount;

	*texts = NULL;
	*count = 0;
	if (buf == NULL || len < DNS_HEADER_LEN)
		return -1;
	*rcode = buf[3] & 0x0f;
	qdcount = get16(buf + 4);
	ancount = get16(buf + 6);
	for (unsigned i = 0; i < qdcount; i++) {
		if (read_name(buf, len, &off, NULL) < 0 || len - off < 4)
			goto malformed;
		off += 4;
	}
	for (unsigned i = 0; i < ancount; i++) {
		uint16_t type, class, rdlen;

		if (read_name(buf, len, &off, NULL) < 0 || len - off < 10)
			goto malformed;
		type = get16(buf + off);
		class = get16(buf + off + 2);
		rdlen = get16(buf + off + 8);
		off += 10;
		if (rdlen > len - off)
			goto malformed;
		if (class == DNS_CLASS_IN && type == DNS_TYPE_TXT &&
		    add_txt(texts, count, buf + off, rdlen) < 0)
			goto malformed;
		off += rdlen;
	}
	return 0;

malformed:
	dns_txt_texts_free(*texts, *count);
	*texts = NULL;
	*count = 0;
	return -1;
}

void dns_txt_texts_free(char **texts, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(texts[i]);
	free(texts);
}

struct dns_txt_query {
	struct dns_txt_query *next, **pprev; /* dns->txt_queries */
	struct dns *dns;
	dns_txt_cb cb;
	void *arg;
	bool on_wire;	/* c-ares still holds it: freed by on_txt_answer */
	bool cancelled; /* off the list; no callback */
	bool in_callback;
	struct event *done;
	struct dns_txt_result result;
	char name[];
};

static void txt_query_free(struct dns_txt_query *q)
{
	if (q->done != NULL)
		event_free(q->done);
	dns_txt_texts_free(q->result.texts, q->result.count);
	free(q);
}

static void txt_query_unlink(struct dns_txt_query *q)
{
	*q->pprev = q->next;
	if (q->next != NULL)
		q->next->pprev = q->pprev;
}

/* Off the list; freed now, or by on_txt_answer when c-ares holds it. */
static void txt_query_drop(struct dns_txt_query *q)
{
	txt_query_unlink(q);
	q->cancelled = true;
	if (!q->on_wire)
		txt_query_free(q);
}

static void txt_fail(struct dns_txt_query *q, enum dns_status status,
		     const char *why)
{
	q->result.status = status;
	snprintf(q->result.error, sizeof(q->result.error), "%s TXT: %s",
		 q->name, why);
}

static void on_txt_answer(void *arg, int status, int timeouts,
			  unsigned char *abuf, int alen)
{
	struct dns_txt_query *q = arg;
	int rcode = DNS_RCODE_NOERROR;

	(void)timeouts;
	q->on_wire = false;
	if (q->cancelled) {
		txt_query_free(q);
		return;
	}
	if (abuf != NULL && alen >= DNS_HEADER_LEN) {
		if (dns_txt_answer_parse(abuf, (size_t)alen, &rcode,
					 &q->result.texts,
					 &q->result.count) < 0)
			txt_fail(q, DNS_TEMPFAIL, "malformed answer");
		else if (rcode == DNS_RCODE_NXDOMAIN)
			txt_fail(q, DNS_NXDOMAIN, "no such domain");
		else if (rcode != DNS_RCODE_NOERROR)
			txt_fail(q, DNS_TEMPFAIL, "the server failed");
		else if (q->result.count == 0)
			txt_fail(q, DNS_NO_HOST, "no record");
	} else if (status == ARES_ENODATA) {
		txt_fail(q, DNS_NO_HOST, "no record");
	} else if (status == ARES_ENOTFOUND) {
		txt_fail(q, DNS_NXDOMAIN, "no such domain");
	} else {
		txt_fail(q, DNS_TEMPFAIL, ares_strerror(status));
	}
	if (q->result.status == DNS_TEMPFAIL)
		metrics_dns_failure("TXT", "failed");
	event_active(q->done, EV_TIMEOUT, 1);
}

#if ARES_VERSION >= 0x011c00
static void on_txt_answer_record(void *arg, ares_status_t status,
				 size_t timeouts,
				 const ares_dns_record_t *record)
{
	answer_as_wire(on_txt_answer, arg, status, timeouts, record);
}
#endif

static void on_txt_done(evutil_socket_t fd, short what, void *arg)
{
	struct dns_txt_query *q = arg;

	(void)fd;
	(void)what;
	txt_query_unlink(q);
	q->in_callback = true;
	q->cb(&q->result, q->arg);
	txt_query_free(q);
}

struct dns_txt_query *dns_resolve_txt(struct dns *dns, const char *name,
				      dns_txt_cb cb, void *arg)
{
	char normal[DNS_NAME_BUF];
	size_t len = strnlen(name, DNS_NAME_BUF);
	struct dns_txt_query *q = xcalloc(1, sizeof(*q) + len + 1);

	memcpy(q->name, name, len);
	q->dns = dns;
	q->cb = cb;
	q->arg = arg;
	q->done = evtimer_new(dns->base, on_txt_done, q);
	if (q->done == NULL)
		fatal("dns: cannot make a query's event");
	q->next = dns->txt_queries;
	if (q->next != NULL)
		q->next->pprev = &q->next;
	q->pprev = &dns->txt_queries;
	dns->txt_queries = q;
	if (normalize_name(name, normal) < 0) {
		txt_fail(q, DNS_NXDOMAIN, "not a domain name");
		event_active(q->done, EV_TIMEOUT, 1);
		return q;
	}
	metrics.dns_queries_total++;
	/* on_txt_answer may run before the call returns; the callback
	 * still waits for q->done */
	q->on_wire = true;
#if ARES_VERSION >= 0x011c00
	(void)ares_query_dnsrec(dns->channel, normal, ARES_CLASS_IN,
				(ares_dns_rec_type_t)DNS_TYPE_TXT,
				on_txt_answer_record, q, NULL);
#else
	ares_query(dns->channel, normal, DNS_CLASS_IN, DNS_TYPE_TXT,
		   on_txt_answer, q);
#endif
	dns_rearm(dns);
	return q;
}

void dns_txt_cancel(struct dns_txt_query *query)
{
	if (query == NULL || query->in_callback)
		return;
	txt_query_drop(query);
}

/* The resolver. */

/* The servers as c-ares's "IP[:PORT],[IPv6]:PORT" text: the one way to
 * set ports that every c-ares from 1.11 on takes without deprecation. */
static int dns_set_servers(struct dns *dns, const struct config *cfg, char *err,
			   size_t errlen)
{
	/* "[" address "]:" port "," per server */
	const size_t per_server = INET6_ADDRSTRLEN + 10;
	size_t size = cfg->dns_server_count * per_server + 1;
	size_t used = 0;
	char *csv;
	int rc;

	csv = malloc(size);
	if (csv == NULL) {
		snprintf(err, errlen, "dns: out of memory");
		return -1;
	}
	csv[0] = '\0';
	for (size_t i = 0; i < cfg->dns_server_count; i++) {
		const struct sockaddr_storage *ss = &cfg->dns_servers[i].addr;
		char ip[INET6_ADDRSTRLEN];
		const char *ok = NULL;
		unsigned port = 0;
		int n;

		if (ss->ss_family == AF_INET) {
			const struct sockaddr_in *sin = (const void *)ss;

			ok = inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
			port = ntohs(sin->sin_port);
		} else if (ss->ss_family == AF_INET6) {
			const struct sockaddr_in6 *sin6 = (const void *)ss;

			ok = inet_ntop(AF_INET6, &sin6->sin6_addr, ip,
				       sizeof(ip));
			port = ntohs(sin6->sin6_port);
		}
		if (ok == NULL) {
			snprintf(
			    err, errlen, "dns_servers: %s: not an IP address",
			    cfg->dns_servers[i].text ? cfg->dns_servers[i].text
						     : "?");
			free(csv);
			return -1;
		}
		/* Always a port, so that an IPv6 address is always in
		 * brackets: without them, its last group could read as one. */
		if (port == 0)
			port = 53;
		if (ss->ss_family == AF_INET6)
			n = snprintf(csv + used, size - used, "%s[%s]:%u",
				     i > 0 ? "," : "", ip, port);
		else
			n = snprintf(csv + used, size - used, "%s%s:%u",
				     i > 0 ? "," : "", ip, port);
		if (n < 0 || (size_t)n >= size - used) {
			snprintf(err, errlen, "dns_servers: list too long");
			free(csv);
			return -1;
		}
		used += (size_t)n;
	}
	rc = ares_set_servers_ports_csv(dns->channel, csv);
	free(csv);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns_servers: %s", ares_strerror(rc));
		return -1;
	}
	return 0;
}

struct dns *dns_new(struct event_base *base, const struct config *cfg,
		    char *err, size_t errlen)
{
	struct ares_options opts;
	struct dns *dns;
	int rc;

	rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		return NULL;
	}
	dns = calloc(1, sizeof(*dns));
	if (dns == NULL) {
		snprintf(err, errlen, "dns: out of memory");
		ares_library_cleanup();
		return NULL;
	}
	dns->base = base;
	dns->timer = evtimer_new(base, on_timer, dns);
	if (dns->timer == NULL) {
		snprintf(err, errlen, "dns: cannot make the timer event");
		goto fail;
	}
	memset(&opts, 0, sizeof(opts));
	opts.sock_state_cb = on_sock_state;
	opts.sock_state_cb_data = dns;
	opts.timeout = DNS_TIMEOUT_MS;
	opts.tries = DNS_TRIES;
	rc = ares_init_options(&dns->channel, &opts,
			       ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS |
				   ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		goto fail;
	}
	dns->channel_ready = true;
	if (!cfg->dns_from_resolv_conf && cfg->dns_server_count > 0 &&
	    dns_set_servers(dns, cfg, err, errlen) < 0)
		goto fail;
	return dns;

fail:
	dns_free(dns);
	return NULL;
}

void dns_free(struct dns *dns)
{
	struct dns_query *q;

	if (dns == NULL)
		return;
	while ((q = dns->queries) != NULL) {
		query_unlink(q);
		query_free(q);
	}
	while (dns->txt_queries != NULL)
		txt_query_drop(dns->txt_queries);
	/* Calls on_answer with ARES_EDESTRUCTION for what is in flight,
	 * and closes its sockets through on_sock_state. */
	if (dns->channel_ready)
		ares_destroy(dns->channel);
	while (dns->socks != NULL) {
		struct sock_watch *w = dns->socks;

		dns->socks = w->next;
		event_free(w->ev);
		free(w);
	}
	if (dns->timer != NULL)
		event_free(dns->timer);
	cache_clear(&dns->cache);
	free(dns);
	ares_library_cleanup();
}
