/*
 * MX, host and TLSA queries (RFC 5321 §5.1, RFC 7505, RFC 6698). A
 * dns_query moves MX → addresses → done. Each (name, type) it needs is a
 * slot, which dns.c answers from the cache or the wire. The user's
 * callback only ever runs from the query's own zero timer: never inside
 * c-ares, never inside dns_resolve_*.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/dns_internal.h"
#include "facteur/log.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))
#define DNS_MX_HOSTS_MAX 16

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

/* Slots: one (name, type) of a query, answered once. */

static void slot_init(struct slot *s, struct dns_query *q, struct target *t,
		      uint16_t type)
{
	memset(s, 0, sizeof(*s));
	s->query = q;
	s->target = t;
	s->type = type;
}

static void query_on_mx(struct dns_query *q, const struct outcome *o);
static void query_on_tlsa(struct dns_query *q, const struct outcome *o);
static void query_finish(struct dns_query *q);

static void target_add_addresses(struct target *t, uint16_t type,
				 const struct outcome *o)
{
	struct sockaddr_storage *addrs = dns_xcalloc(o->count, sizeof(*addrs));

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

void dns_slot_answer(struct slot *s, const struct outcome *o)
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

	t->name = dns_xstrdup(name);
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
	struct mx_candidate *c = dns_xcalloc(o->count, sizeof(*c));
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
	q->targets = dns_xcalloc(n, sizeof(*q->targets));
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

		dns_slot_wait(q->dns, &t->aaaa, t->name);
		dns_slot_wait(q->dns, &t->a, t->name);
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
		q->targets = dns_xcalloc(1, sizeof(*q->targets));
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
		q->result.records = dns_records_copy(o->records, o->count);
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

	order = dns_xcalloc(q->target_count, sizeof(*order));
	for (size_t i = 0; i < q->target_count; i++)
		if (q->targets[i].v6_count + q->targets[i].v4_count > 0)
			order[n++] = &q->targets[i];
	if (n == 0) {
		free(order);
		query_explain_no_address(q);
		return;
	}
	qsort(order, n, sizeof(*order), target_order_cmp);
	q->result.hosts = dns_xcalloc(n, sizeof(*q->result.hosts));
	q->result.host_count = n;
	for (size_t i = 0; i < n; i++) {
		struct dns_host *h = &q->result.hosts[i];
		const struct target *t = order[i];

		h->name = t->name;
		h->preference = t->preference;
		h->secure = target_secure(t);
		h->addr_count = t->v6_count + t->v4_count;
		h->addrs = dns_xcalloc(h->addr_count, sizeof(*h->addrs));
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
	dns_slot_unlink(&q->mx);
	for (size_t i = 0; i < q->target_count; i++) {
		struct target *t = &q->targets[i];

		dns_slot_unlink(&t->aaaa);
		dns_slot_unlink(&t->a);
		free(t->name);
		free(t->v6);
		free(t->v4);
	}
	free(q->targets);
	for (size_t i = 0; i < q->result.host_count; i++)
		free(q->result.hosts[i].addrs);
	free(q->result.hosts);
	dns_records_free((struct dns_record *)q->result.records,
			 q->result.record_count);
	if (q->done != NULL)
		event_free(q->done);
	free(q->name);
	free(q);
}

void dns_queries_drop(struct dns *dns)
{
	struct dns_query *q;

	while ((q = dns->queries) != NULL) {
		query_unlink(q);
		query_free(q);
	}
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
	struct dns_query *q = dns_xcalloc(1, sizeof(*q));

	q->dns = dns;
	q->cb = cb;
	q->arg = arg;
	q->name = dns_xstrdup(name);
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
	q->targets = dns_xcalloc(1, sizeof(*q->targets));
	t = query_add_target(q, text, 0);
	if (ss->ss_family == AF_INET6) {
		t->v6 = dns_xcalloc(1, sizeof(*t->v6));
		*t->v6 = *ss;
		t->v6_count = 1;
	} else {
		t->v4 = dns_xcalloc(1, sizeof(*t->v4));
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
	if (dns_name_normalize(domain, name) < 0)
		return query_of_bad_name(dns, domain, cb, arg);
	q = query_new(dns, name, cb, arg);
	q->state = QUERY_MX;
	q->source = FROM_MX;
	dns_slot_wait(dns, &q->mx, q->name);
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
		if (dns_name_normalize(inner, name) < 0)
			return query_of_bad_name(dns, host, cb, arg);
	} else if (dns_name_normalize(host, name) < 0) {
		return query_of_bad_name(dns, host, cb, arg);
	}
	q = query_new(dns, name, cb, arg);
	q->source = FROM_HOST;
	q->targets = dns_xcalloc(1, sizeof(*q->targets));
	query_add_target(q, name, 0);
	query_resolve_targets(q);
	return q;
}

struct dns_query *dns_resolve_tlsa(struct dns *dns, const char *name, dns_cb cb,
				   void *arg)
{
	char normal[DNS_NAME_BUF];
	struct dns_query *q;

	if (dns_name_normalize(name, normal) < 0)
		return query_of_bad_name(dns, name, cb, arg);
	q = query_new(dns, normal, cb, arg);
	q->state = QUERY_TLSA;
	q->source = FROM_TLSA;
	slot_init(&q->mx, q, NULL, DNS_TYPE_TLSA);
	dns_slot_wait(dns, &q->mx, q->name);
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
