/*
 * Asynchronous DNS for relaying (RFC 5321 §5.1): the c-ares side of the
 * module. c-ares sends the questions; its sockets and its timeout live in
 * the libevent loop. A question on the wire is a pending, shared by every
 * slot (dns_query.c) that asks the same (name, type) at the same time;
 * its answer is read by our own parser (dns_answer.c), turned into an
 * outcome, cached (dns_cache.c) and handed to those slots. TXT look-ups
 * stand apart: one c-ares query each, no slots, no cache.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/dns_internal.h"
#include "facteur/log.h"
#include "facteur/metrics.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* A dead server is noticed within seconds (c-ares doubles the timeout on
 * the second try: 2 s + 4 s). */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2

#define DNS_TTL_MAX 3600
#define DNS_NEGATIVE_TTL_DEFAULT 60 /* no SOA in a negative answer */
#define DNS_NEGATIVE_TTL_MAX 900

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

static uint64_t now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		fatal("dns: clock_gettime failed");
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
		w = dns_xcalloc(1, sizeof(*w));
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

static void slot_link(struct slot *s, struct pending *p)
{
	s->pending = p;
	s->next = p->slots;
	if (s->next != NULL)
		s->next->pprev = &s->next;
	s->pprev = &p->slots;
	p->slots = s;
}

void dns_slot_unlink(struct slot *s)
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
			dns_slot_unlink(s);
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
		dns_cache_store(&dns->cache, p->name, p->type, &o, ttl,
				now_ms());
	}
	while ((s = p->slots) != NULL) {
		dns_slot_unlink(s);
		dns_slot_answer(s, &o);
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

void dns_slot_wait(struct dns *dns, struct slot *s, const char *name)
{
	struct cache_entry *e;
	struct pending *p;
	size_t len;

	e = dns_cache_find(&dns->cache, name, s->type, now_ms());
	if (e != NULL) {
		struct outcome o = {
		    .status = e->status,
		    .records = e->records,
		    .count = e->count,
		    .authenticated = e->authenticated,
		};
		dns_slot_answer(s, &o);
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
	p = dns_xcalloc(1, sizeof(*p) + len + 1);
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

/* TXT look-ups, apart from the MX machinery of dns_query.c: no slots and no
 * cache (their users, MTA-STS and TLS reporting, keep what they learn),
 * one c-ares query each. */

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
	struct dns_txt_query *q = dns_xcalloc(1, sizeof(*q) + len + 1);

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
	if (dns_name_normalize(name, normal) < 0) {
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
	int optmask, rc;

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
	optmask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
#ifdef ARES_OPT_QUERY_CACHE
	/* c-ares 1.31 and later cache answers by default. Ours is the one
	 * cache, with its own bounds, and TXT answers are not cached at all:
	 * a second one would keep a changed MTA-STS id from being seen. */
	opts.qcache_max_ttl = 0;
	optmask |= ARES_OPT_QUERY_CACHE;
#endif
	rc = ares_init_options(&dns->channel, &opts, optmask);
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
	if (dns == NULL)
		return;
	dns_queries_drop(dns);
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
	dns_cache_clear(&dns->cache);
	free(dns);
	ares_library_cleanup();
}
