/*
 * MTA-STS policies for the relay (see mta_sts.h).
 *
 * One record per recipient domain asked about, in a hash table bounded
 * at STS_DOMAINS_MAX (an idle one, used longest ago, makes room). A
 * domain moves idle → TXT → fetch (the address of mta-sts.DOMAIN, then
 * the policy) → idle; the look-ups that arrive meanwhile wait on it, each
 * answered through its own event. The fetch is https_client's (the
 * address of mta-sts.DOMAIN through c-ares, then port 443 with SNI and
 * verification for that name); it ends on a loop turn of its own.
 *
 * The cache file of a domain holds "id=ID fetched=UNIXTIME" on its first
 * line, then the policy text as served; it is read the first time the
 * domain is asked about, and replaced (new file, flush, rename) at each
 * successful fetch: rare, so on the loop.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/event.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/dns.h"
#include "facteur/hostname.h"
#include "facteur/https_client.h"
#include "facteur/log.h"
#include "facteur/mta_sts.h"
#include "facteur/server.h"
#include "facteur/tlsrpt.h"
#include "facteur/wholefile.h"

#define STS_BUCKETS 1024
#define STS_DOMAINS_MAX 10000
/* seconds between two TXT look-ups of one domain: a burst of mail to a
 * domain asks once */
#define STS_TXT_RECHECK 60
#define STS_FETCH_DEADLINE 10 /* seconds for the whole fetch */
#define STS_HTTPS_PORT 443
#define STS_PATH "/.well-known/mta-sts.txt"
/* the cache file's first line, before the policy */
#define STS_CACHE_HEADER_MAX 128

enum sts_state {
	STS_IDLE,
	STS_TXT,   /* the _mta-sts TXT record asked */
	STS_FETCH, /* the policy asked of mta-sts.DOMAIN */
};

struct mta_sts_wait {
	struct mta_sts_wait *next, **pprev; /* the domain's waiters */
	struct sts_domain *domain;
	mta_sts_cb cb;
	void *arg;
	struct event *ready;
};

struct sts_domain {
	struct sts_domain *next; /* same bucket */
	struct mta_sts *sts;
	char *name; /* lower case */
	enum sts_state state;
	bool has_policy;
	struct mta_sts_policy policy;
	char id[MTA_STS_ID_MAX + 1];
	time_t fetched;
	time_t checked; /* the last TXT answer; 0: never */
	time_t used;
	char new_id[MTA_STS_ID_MAX + 1]; /* the id being fetched */
	struct mta_sts_wait *waiters;
	struct dns_txt_query *txt;
	struct https_exchange *fetch;
};

struct mta_sts {
	struct server *srv;
	char *dir; /* NULL: no cache folder, memory only */
	struct sts_domain *buckets[STS_BUCKETS];
	size_t count;
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (p == NULL)
		fatal("mta_sts: out of memory");
	return p;
}

static unsigned bucket_of(const char *name)
{
	uint32_t h = 2166136261u;
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return h % STS_BUCKETS;
}

/* Valid until fetched + max_age; a policy of max_age 0 still serves the
 * look-ups that waited for its fetch, in the same second. */
static const struct mta_sts_policy *current_policy(const struct sts_domain *d,
						   time_t now)
{
	if (!d->has_policy || now > d->fetched + (time_t)d->policy.max_age)
		return NULL;
	return &d->policy;
}

/* ---- waiters ---- */

static void wait_unlink(struct mta_sts_wait *w)
{
	*w->pprev = w->next;
	if (w->next != NULL)
		w->next->pprev = w->pprev;
}

static void wait_free(struct mta_sts_wait *w)
{
	wait_unlink(w);
	event_free(w->ready);
	free(w);
}

static void on_wait_ready(evutil_socket_t fd, short what, void *arg)
{
	struct mta_sts_wait *w = arg;
	(void)fd;
	(void)what;
	const struct mta_sts_policy *policy =
	    current_policy(w->domain, time(NULL));
	mta_sts_cb cb = w->cb;
	void *cb_arg = w->arg;
	/* freed first: the callback may look the domain up again */
	struct mta_sts_policy copy;
	bool has = policy != NULL && mta_sts_policy_copy(&copy, policy) == 0;
	wait_free(w);
	cb(has ? &copy : NULL, cb_arg);
	if (has)
		mta_sts_policy_clear(&copy);
}

/* The domain's state is settled: every waiter is answered. */
static void domain_settled(struct sts_domain *d)
{
	d->state = STS_IDLE;
	for (struct mta_sts_wait *w = d->waiters; w != NULL; w = w->next)
		event_active(w->ready, EV_TIMEOUT, 1);
}

/* ---- the cache file ---- */

static char *cache_path(const struct sts_domain *d)
{
	struct mta_sts *sts = d->sts;
	if (sts->dir == NULL)
		return NULL;
	size_t len = strlen(sts->dir) + strlen(d->name) + 2;
	char *path = xcalloc(1, len);
	snprintf(path, len, "%s/%s", sts->dir, d->name);
	return path;
}

static void cache_error(const struct sts_domain *d, const char *what, int error)
{
	char reason[256];
	snprintf(reason, sizeof reason, "cache file: %s: %s", what,
		 strerror(error));
	log_event(LOG_LEVEL_WARN, "mta_sts_error", LOG_S("domain", d->name),
		  LOG_S("reason", reason));
}

/* A policy kept by an earlier run, if its file holds one still valid. */
static void cache_load(struct sts_domain *d)
{
	char *path = cache_path(d);
	char *text = NULL;
	size_t len = 0;
	if (path == NULL)
		return;
	enum wholefile_status st =
	    wholefile_read(path, MTA_STS_POLICY_SIZE_MAX + STS_CACHE_HEADER_MAX,
			   WHOLEFILE_REGULAR, &text, &len);
	free(path);
	if (st != WHOLEFILE_OK) {
		if (!(st == WHOLEFILE_OPEN && errno == ENOENT))
			cache_error(d, "cannot read", errno);
		return;
	}
	char id[MTA_STS_ID_MAX + 1];
	long long fetched;
	int used = 0;
	char err[160];
	struct mta_sts_policy policy;
	if (sscanf(text, "id=%32[A-Za-z0-9] fetched=%lld\n%n", id, &fetched,
		   &used) != 2 ||
	    used == 0 ||
	    mta_sts_policy_parse(text + used, len - (size_t)used, &policy, err,
				 sizeof err) < 0) {
		cache_error(d, "not a policy", EINVAL);
		free(text);
		return;
	}
	free(text);
	d->has_policy = true;
	d->policy = policy;
	d->fetched = (time_t)fetched;
	memcpy(d->id, id, sizeof id);
	if (current_policy(d, time(NULL)) != NULL)
		log_event(LOG_LEVEL_DEBUG, "mta_sts_cached",
			  LOG_S("domain", d->name),
			  LOG_S("mode", mta_sts_mode_name(policy.mode)),
			  LOG_S("id", d->id));
}

static void cache_save(const struct sts_domain *d, const char *body, size_t len)
{
	char *path = cache_path(d);
	if (path == NULL)
		return;
	char header[STS_CACHE_HEADER_MAX];
	int n = snprintf(header, sizeof header, "id=%s fetched=%lld\n", d->id,
			 (long long)d->fetched);
	char *text = malloc((size_t)n + len);
	if (text == NULL)
		fatal("mta_sts: out of memory");
	memcpy(text, header, (size_t)n);
	memcpy(text + n, body, len);
	if (wholefile_replace(path, text, (size_t)n + len) < 0)
		cache_error(d, "cannot write", errno);
	free(text);
	free(path);
}

/* ---- the fetch ---- */

/* Counted for the TLS reports as a session that found no usable policy
 * (or, cached, the one it kept). */
static void policy_failed(struct sts_domain *d, enum tlsrpt_result type,
			  const char *reason)
{
	const struct mta_sts_policy *kept = current_policy(d, time(NULL));
	log_event(LOG_LEVEL_WARN, "mta_sts_error", LOG_S("domain", d->name),
		  LOG_S("type", tlsrpt_result_name(type)),
		  LOG_S("reason", reason),
		  LOG_S("cached", kept != NULL ? "yes" : "no"));
	tlsrpt_count(d->sts->srv->tlsrpt, d->name, kept, type);
	domain_settled(d);
}

/* Why a fetch brought no policy to parse (RFC 8461 §3.3: a 200 of type
 * text/plain, nothing else; no redirect is followed); NULL when it did. */
static const char *fetch_failure(const struct sts_domain *d,
				 const struct https_response *res,
				 enum tlsrpt_result *type, char *why,
				 size_t whylen)
{
	const char *ctype = res->content_type;
	*type = TLSRPT_STS_POLICY_FETCH_ERROR;
	switch (res->failure) {
	case HTTPS_ANSWERED:
		break;
	case HTTPS_CERTIFICATE:
		*type = TLSRPT_STS_WEBPKI_INVALID;
		return res->reason;
	case HTTPS_TOO_LARGE:
		snprintf(why, whylen, "policy larger than %u octets",
			 MTA_STS_POLICY_SIZE_MAX);
		return why;
	case HTTPS_TIMEOUT:
		snprintf(why, whylen, "no policy within %d s",
			 STS_FETCH_DEADLINE);
		return why;
	case HTTPS_NO_ANSWER:
		snprintf(why, whylen, "no HTTPS answer from mta-sts.%s",
			 d->name);
		return why;
	case HTTPS_NO_ADDRESS:
	default:
		return res->reason;
	}
	if (res->code >= 300 && res->code < 400)
		snprintf(why, whylen, "HTTP %d: a redirect, not followed",
			 res->code);
	else if (res->code != 200)
		snprintf(why, whylen, "HTTP %d", res->code);
	else if (ctype == NULL || strncasecmp(ctype, "text/plain", 10) != 0 ||
		 (ctype[10] != '\0' && ctype[10] != ';' && ctype[10] != ' '))
		snprintf(why, whylen, "Content-Type is %s, not text/plain",
			 ctype != NULL ? ctype : "missing");
	else
		return NULL;
	return why;
}

/* What the fetch brought, parsed; a failure keeps the policy cached. */
static void on_fetched(const struct https_response *res, void *arg)
{
	struct sts_domain *d = arg;
	enum tlsrpt_result type;
	char why[320];
	d->fetch = NULL;
	const char *failure = fetch_failure(d, res, &type, why, sizeof why);
	if (failure != NULL) {
		policy_failed(d, type, failure);
		return;
	}
	struct mta_sts_policy policy;
	char err[160];
	if (mta_sts_policy_parse(res->body, res->len, &policy, err,
				 sizeof err) < 0) {
		policy_failed(d, TLSRPT_STS_POLICY_INVALID, err);
		return;
	}
	mta_sts_policy_clear(&d->policy);
	d->policy = policy;
	d->has_policy = true;
	d->fetched = time(NULL);
	memcpy(d->id, d->new_id, sizeof d->id);
	cache_save(d, res->body, res->len);
	log_event(LOG_LEVEL_INFO, "mta_sts_policy", LOG_S("domain", d->name),
		  LOG_S("mode", mta_sts_mode_name(policy.mode)),
		  LOG_S("id", d->id), LOG_I("max_age", policy.max_age),
		  LOG_I("mx", policy.mx_count));
	domain_settled(d);
}

/* ---- the TXT record ---- */

/* §3.1: records not starting with "v=STSv1" are ignored; anything but
 * exactly one valid record means no record. 1 with its id, 0 for none,
 * -1 for a malformed one or several. */
static int sts_record_id(const struct dns_txt_result *res, char *id)
{
	int found = 0;
	for (size_t i = 0; i < res->count; i++) {
		char this_id[MTA_STS_ID_MAX + 1];
		int rc = mta_sts_txt_parse(res->texts[i], strlen(res->texts[i]),
					   this_id);
		if (rc == -1 || (rc == 1 && found))
			return -1;
		if (rc == 1) {
			memcpy(id, this_id, sizeof this_id);
			found = 1;
		}
	}
	return found;
}

static void on_txt(const struct dns_txt_result *res, void *arg)
{
	struct sts_domain *d = arg;
	struct server *srv = d->sts->srv;
	time_t now = time(NULL);
	char id[MTA_STS_ID_MAX + 1];
	d->txt = NULL;
	d->checked = now;
	int found = res->status == DNS_OK ? sts_record_id(res, id) : 0;
	if (found == -1) {
		policy_failed(d, TLSRPT_STS_POLICY_INVALID,
			      "malformed or several _mta-sts TXT records");
		return;
	}
	/* no record, or DNS trouble: a cached policy still applies (§5.1) */
	if (found == 0 ||
	    (current_policy(d, now) != NULL && strcmp(id, d->id) == 0)) {
		domain_settled(d);
		return;
	}
	memcpy(d->new_id, id, sizeof id);
	char host[HOSTNAME_MAX + 16];
	snprintf(host, sizeof host, "mta-sts.%s", d->name);
	struct https_request req = {
	    .host = host,
	    .port = STS_HTTPS_PORT,
	    .path = STS_PATH,
	    .max_answer = MTA_STS_POLICY_SIZE_MAX,
	    .deadline = STS_FETCH_DEADLINE,
	};
	char why[320];
	d->state = STS_FETCH;
	d->fetch = https_start(srv, &req, on_fetched, d, why, sizeof why);
	if (d->fetch == NULL)
		policy_failed(d, TLSRPT_STS_POLICY_FETCH_ERROR, why);
}

/* ---- domains ---- */

static void domain_free(struct sts_domain *d)
{
	while (d->waiters != NULL)
		wait_free(d->waiters);
	dns_txt_cancel(d->txt);
	https_cancel(d->fetch);
	mta_sts_policy_clear(&d->policy);
	free(d->name);
	free(d);
}

/* Room for one more: the idle domain used longest ago goes (its file
 * stays). O(domains), only when the table is full. */
static void make_room(struct mta_sts *sts)
{
	struct sts_domain **oldest = NULL;
	for (size_t b = 0; b < STS_BUCKETS; b++)
		for (struct sts_domain **at = &sts->buckets[b]; *at != NULL;
		     at = &(*at)->next)
			if ((*at)->state == STS_IDLE &&
			    (*at)->waiters == NULL &&
			    (oldest == NULL || (*at)->used < (*oldest)->used))
				oldest = at;
	if (oldest == NULL)
		return;
	struct sts_domain *d = *oldest;
	*oldest = d->next;
	domain_free(d);
	sts->count--;
}

static struct sts_domain *domain_get(struct mta_sts *sts, const char *name)
{
	unsigned b = bucket_of(name);
	for (struct sts_domain *d = sts->buckets[b]; d != NULL; d = d->next)
		if (strcmp(d->name, name) == 0)
			return d;
	if (sts->count >= STS_DOMAINS_MAX)
		make_room(sts);
	struct sts_domain *d = xcalloc(1, sizeof *d);
	d->sts = sts;
	d->name = strdup(name);
	if (d->name == NULL)
		fatal("mta_sts: out of memory");
	d->next = sts->buckets[b];
	sts->buckets[b] = d;
	sts->count++;
	cache_load(d);
	return d;
}

struct mta_sts_wait *mta_sts_lookup(struct mta_sts *sts, const char *domain,
				    mta_sts_cb cb, void *arg)
{
	struct server *srv = sts->srv;
	size_t len = strlen(domain);
	if (len > 0 && domain[len - 1] == '.')
		len--;
	char name[HOSTNAME_MAX + 1];
	bool valid = hostname_valid(domain, len);
	if (valid) {
		memcpy(name, domain, len);
		name[len] = '\0';
		ascii_lower_in_place(name, len);
	} else {
		/* an address literal or a broken name: never a policy */
		snprintf(name, sizeof name, "invalid.");
	}
	struct sts_domain *d = domain_get(sts, name);
	time_t now = time(NULL);
	d->used = now;
	struct mta_sts_wait *w = xcalloc(1, sizeof *w);
	w->domain = d;
	w->cb = cb;
	w->arg = arg;
	w->ready = evtimer_new(srv->base, on_wait_ready, w);
	if (w->ready == NULL)
		fatal("mta_sts: out of memory");
	w->next = d->waiters;
	if (w->next != NULL)
		w->next->pprev = &w->next;
	w->pprev = &d->waiters;
	d->waiters = w;
	if (d->state != STS_IDLE)
		return w;
	if (!valid || srv->dns == NULL ||
	    (d->checked != 0 && now - d->checked < STS_TXT_RECHECK &&
	     now >= d->checked)) {
		event_active(w->ready, EV_TIMEOUT, 1);
		return w;
	}
	char txt[HOSTNAME_MAX + 16];
	snprintf(txt, sizeof txt, "_mta-sts.%s", d->name);
	d->state = STS_TXT;
	d->txt = dns_resolve_txt(srv->dns, txt, on_txt, d);
	return w;
}

enum mta_sts_mode mta_sts_known_mode(const struct mta_sts *sts,
				     const char *domain)
{
	char name[HOSTNAME_MAX + 1];
	size_t len = strlen(domain);
	if (len > 0 && domain[len - 1] == '.')
		len--;
	if (len > HOSTNAME_MAX)
		return MTA_STS_MODE_NONE;
	memcpy(name, domain, len);
	name[len] = '\0';
	ascii_lower_in_place(name, len);
	for (const struct sts_domain *d = sts->buckets[bucket_of(name)];
	     d != NULL; d = d->next) {
		if (strcmp(d->name, name) != 0)
			continue;
		const struct mta_sts_policy *p = current_policy(d, time(NULL));
		return p != NULL ? p->mode : MTA_STS_MODE_NONE;
	}
	return MTA_STS_MODE_NONE;
}

void mta_sts_cancel(struct mta_sts_wait *wait)
{
	if (wait != NULL)
		wait_free(wait);
}

struct mta_sts *mta_sts_new(struct server *srv)
{
	struct mta_sts *sts = calloc(1, sizeof *sts);
	if (sts == NULL)
		return NULL;
	sts->srv = srv;
	const char *spool = srv->cfg->spool_dir;
	size_t len = strlen(spool) + sizeof "/mta-sts";
	sts->dir = malloc(len);
	if (sts->dir == NULL) {
		free(sts);
		return NULL;
	}
	snprintf(sts->dir, len, "%s/mta-sts", spool);
	if (mkdir(sts->dir, 0700) < 0 && errno != EEXIST) {
		log_event(LOG_LEVEL_WARN, "mta_sts_error",
			  LOG_S("reason", "cannot make the cache folder"),
			  LOG_S("path", sts->dir),
			  LOG_S("error", strerror(errno)));
		free(sts->dir);
		sts->dir = NULL;
	}
	return sts;
}

void mta_sts_free(struct mta_sts *sts)
{
	if (sts == NULL)
		return;
	for (size_t b = 0; b < STS_BUCKETS; b++)
		while (sts->buckets[b] != NULL) {
			struct sts_domain *d = sts->buckets[b];
			sts->buckets[b] = d->next;
			domain_free(d);
		}
	free(sts->dir);
	free(sts);
}
