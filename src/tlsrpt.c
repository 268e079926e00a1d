/*
 * SMTP TLS reporting (see tlsrpt.h).
 *
 * The counts live in a list of policy domains, at most TLSRPT_DOMAINS_MAX
 * (the sessions of further domains are not counted until the next
 * report): a list, because a count is a few comparisons per domain and
 * the domains that publish policies are few. At a report, the list is
 * taken whole and a new one starts; each domain of the old one asks its
 * `_smtp._tls` TXT record, and its report is queued when the answer
 * comes.
 *
 * The counts file holds "start UNIXTIME", then one line per domain:
 * "DOMAIN C0 C1 ... MODE MAX_AGE MX,MX" (the counts in enum order; MODE
 * "-" when no policy was found, MX "-" for none).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/dns.h"
#include "facteur/hostname.h"
#include "facteur/log.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"
#include "facteur/text.h"
#include "facteur/tlsrpt.h"
#include "facteur/wholefile.h"

#define TLSRPT_DOMAINS_MAX 4096
#define TLSRPT_SAVE_EVERY 60 /* seconds: what a crash may lose */
#define TLSRPT_FILE_MAX (4u << 20)
#define TLSRPT_ADDRESS_MAX 320

/* ---- the counts ---- */

struct tlsrpt_entry {
	struct tlsrpt_entry *next;
	struct tlsrpt *rpt;
	char *domain;
	struct mta_sts_policy policy; /* mode none: no policy found */
	uint64_t count[TLSRPT_RESULT_COUNT];
	time_t start, end;	   /* while sending */
	struct dns_txt_query *txt; /* while sending */
};

struct tlsrpt {
	struct server *srv;
	char *path; /* NULL: no file */
	struct tlsrpt_entry *entries, *sending;
	size_t count;
	time_t start; /* of the counts in `entries` */
	bool dirty;
	struct event *save_timer, *day_timer;
};

static void entry_free(struct tlsrpt_entry *e)
{
	dns_txt_cancel(e->txt);
	mta_sts_policy_clear(&e->policy);
	free(e->domain);
	free(e);
}

static void entries_free(struct tlsrpt_entry *e)
{
	while (e != NULL) {
		struct tlsrpt_entry *next = e->next;
		entry_free(e);
		e = next;
	}
}

static struct tlsrpt_entry *entry_get(struct tlsrpt *rpt, const char *domain)
{
	for (struct tlsrpt_entry *e = rpt->entries; e != NULL; e = e->next)
		if (strcmp(e->domain, domain) == 0)
			return e;
	if (rpt->count >= TLSRPT_DOMAINS_MAX)
		return NULL;
	struct tlsrpt_entry *e = calloc(1, sizeof *e);
	if (e == NULL || (e->domain = strdup(domain)) == NULL)
		fatal("tlsrpt: out of memory");
	e->rpt = rpt;
	e->next = rpt->entries;
	rpt->entries = e;
	rpt->count++;
	return e;
}

static void entry_set_policy(struct tlsrpt_entry *e,
			     const struct mta_sts_policy *policy)
{
	if (policy == NULL)
		return;
	mta_sts_policy_clear(&e->policy);
	if (mta_sts_policy_copy(&e->policy, policy) < 0)
		fatal("tlsrpt: out of memory");
}

static void save(struct tlsrpt *rpt)
{
	if (rpt->path == NULL || !rpt->dirty)
		return;
	struct text t = {0};
	text_fmt(&t, "start %lld\n", (long long)rpt->start);
	for (struct tlsrpt_entry *e = rpt->entries; e != NULL; e = e->next) {
		text_str(&t, e->domain);
		for (int r = 0; r < TLSRPT_RESULT_COUNT; r++)
			text_fmt(&t, " %" PRIu64, e->count[r]);
		bool found = e->policy.mode != MTA_STS_MODE_NONE;
		text_fmt(&t, " %s %" PRIu32 " ",
			 found ? mta_sts_mode_name(e->policy.mode) : "-",
			 e->policy.max_age);
		for (size_t i = 0; i < e->policy.mx_count; i++)
			text_fmt(&t, "%s%s", i ? "," : "", e->policy.mx[i]);
		text_str(&t, e->policy.mx_count ? "\n" : "-\n");
	}
	size_t len = 0;
	char *text = text_finish(&t, &len);
	if (text == NULL)
		fatal("tlsrpt: out of memory");
	if (wholefile_replace(rpt->path, text, len) < 0)
		log_event(LOG_LEVEL_WARN, "tlsrpt_error",
			  LOG_S("reason", "cannot write the counts"),
			  LOG_S("path", rpt->path),
			  LOG_S("error", strerror(errno)));
	else
		rpt->dirty = false;
	free(text);
}

/* One line of the counts file back into an entry; false when it is not
 * one. The policy is rebuilt as the parser would read it. */
static bool load_line(struct tlsrpt *rpt, char *line)
{
	char domain[HOSTNAME_MAX + 1], mode[16], mx[4096];
	uint64_t c[TLSRPT_RESULT_COUNT];
	unsigned max_age;
	if (sscanf(line,
		   "%253s %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
		   " %" SCNu64 " %" SCNu64 " %15s %u %4095s",
		   domain, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], mode,
		   &max_age, mx) != 10 ||
	    !hostname_valid(domain, strlen(domain)))
		return false;
	struct tlsrpt_entry *e = entry_get(rpt, domain);
	if (e == NULL)
		return true;
	memcpy(e->count, c, sizeof c);
	if (strcmp(mode, "-") == 0)
		return true;
	struct text t = {0};
	text_fmt(&t, "version: STSv1\nmode: %s\nmax_age: %u\n", mode, max_age);
	for (char *save_ptr = NULL, *p = strtok_r(mx, ",", &save_ptr);
	     p != NULL && strcmp(p, "-") != 0;
	     p = strtok_r(NULL, ",", &save_ptr))
		text_fmt(&t, "mx: %s\n", p);
	size_t len = 0;
	char *text = text_finish(&t, &len);
	char err[160];
	if (text != NULL &&
	    mta_sts_policy_parse(text, len, &e->policy, err, sizeof err) < 0)
		mta_sts_policy_clear(&e->policy);
	free(text);
	return true;
}

static void load(struct tlsrpt *rpt)
{
	char *text = NULL;
	size_t len = 0;
	if (rpt->path == NULL)
		return;
	if (wholefile_read(rpt->path, TLSRPT_FILE_MAX, WHOLEFILE_REGULAR, &text,
			   &len) != WHOLEFILE_OK) {
		if (errno != ENOENT)
			log_event(LOG_LEVEL_WARN, "tlsrpt_error",
				  LOG_S("reason", "cannot read the counts"),
				  LOG_S("path", rpt->path),
				  LOG_S("error", strerror(errno)));
		return;
	}
	long long start = 0;
	char *save_ptr = NULL;
	for (char *line = strtok_r(text, "\n", &save_ptr); line != NULL;
	     line = strtok_r(NULL, "\n", &save_ptr)) {
		if (sscanf(line, "start %lld", &start) == 1)
			rpt->start = (time_t)start;
		else if (!load_line(rpt, line))
			log_event(LOG_LEVEL_WARN, "tlsrpt_error",
				  LOG_S("reason", "bad line in the counts"),
				  LOG_S("path", rpt->path));
	}
	free(text);
}

void tlsrpt_count(struct tlsrpt *rpt, const char *domain,
		  const struct mta_sts_policy *policy,
		  enum tlsrpt_result result)
{
	char name[HOSTNAME_MAX + 1];
	size_t len = strlen(domain);
	if (rpt == NULL || result >= TLSRPT_RESULT_COUNT ||
	    !hostname_valid(domain, len))
		return;
	/* one entry per domain, however its recipients wrote it */
	memcpy(name, domain, len + 1);
	ascii_lower_in_place(name, len);
	struct tlsrpt_entry *e = entry_get(rpt, name);
	if (e == NULL)
		return;
	entry_set_policy(e, policy);
	e->count[result]++;
	rpt->dirty = true;
}

/* ---- sending ---- */

static void sending_unlink(struct tlsrpt_entry *e)
{
	struct tlsrpt_entry **at = &e->rpt->sending;
	while (*at != e)
		at = &(*at)->next;
	*at = e->next;
}

struct report_commit {
	struct server *srv;
	struct spool_envelope *env;
};

static void on_report_committed(int error, void *arg)
{
	struct report_commit *rc = arg;
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
			  LOG_S("queue_id", rc->env->id),
			  LOG_S("reason", strerror(error)));
		spool_envelope_free(rc->env);
	} else {
		scheduler_enqueue(rc->srv->scheduler, rc->env, SCHEDULER_NEW);
	}
	free(rc);
}

/* The report of e, queued to `to` like a DSN. */
static void report_queue(struct tlsrpt_entry *e, const char *to)
{
	struct server *srv = e->rpt->srv;
	const struct config *cfg = srv->cfg;
	char stamp[32], report_id[HOSTNAME_MAX * 2 + 64];
	tlsrpt_format_stamp(e->start, stamp, sizeof stamp);
	snprintf(report_id, sizeof report_id, "%s.%s@%s", stamp, e->domain,
		 cfg->hostname);
	struct tlsrpt_counts c = {.domain = e->domain, .policy = &e->policy};
	memcpy(c.count, e->count, sizeof c.count);
	uint64_t failed = 0;
	for (int r = TLSRPT_SUCCESS + 1; r < TLSRPT_RESULT_COUNT; r++)
		failed += e->count[r];
	size_t json_len = 0, gz_len = 0, len = 0;
	char *json = tlsrpt_report_json(&c, cfg->hostname, cfg->tlsrpt_from,
					report_id, e->start, e->end, &json_len);
	unsigned char *gz = json ? tlsrpt_gzip(json, json_len, &gz_len) : NULL;
	struct tlsrpt_mail m = {
	    .from = cfg->tlsrpt_from,
	    .to = to,
	    .domain = e->domain,
	    .submitter = cfg->hostname,
	    .report_id = report_id,
	    .start = e->start,
	    .end = e->end,
	    .now = time(NULL),
	    .gz = gz,
	    .gz_len = gz_len,
	};
	char *text = gz ? tlsrpt_mail_build(&m, &len) : NULL;
	free(json);
	free(gz);
	struct spool_incoming *inc =
	    text ? spool_incoming_new(srv->spool) : NULL;
	struct spool_envelope *env = calloc(1, sizeof *env);
	struct spool_rcpt *rcpt = calloc(1, sizeof *rcpt);
	if (inc == NULL || env == NULL || rcpt == NULL) {
		log_event(LOG_LEVEL_ERROR, "tlsrpt_error",
			  LOG_S("domain", e->domain),
			  LOG_S("reason", "cannot queue the report"));
		free(text);
		free(env);
		free(rcpt);
		if (inc != NULL)
			spool_incoming_abort(srv->spool, inc);
		return;
	}
	spool_incoming_write(inc, text, len);
	free(text);
	memcpy(env->id, inc->id, sizeof env->id);
	env->arrival = m.now;
	env->sender = strdup(cfg->tlsrpt_from);
	env->client_addr = strdup("local");
	env->helo = strdup(cfg->hostname);
	env->protocol = strdup("TLSRPT");
	env->size = len;
	env->body = SMTP_BODY_7BIT;
	rcpt->address = strdup(to);
	rcpt->original = strdup(to);
	const char *at = strrchr(to, '@');
	rcpt->local = at != NULL && config_is_local_domain(cfg, at + 1);
	rcpt->state = RCPT_PENDING;
	rcpt->updated = m.now;
	env->rcpts = rcpt;
	env->rcpt_count = 1;
	if (!env->sender || !env->client_addr || !env->helo || !env->protocol ||
	    !rcpt->address || !rcpt->original)
		fatal("tlsrpt: out of memory");
	struct report_commit *rc = malloc(sizeof *rc);
	if (rc == NULL)
		fatal("tlsrpt: out of memory");
	rc->srv = srv;
	rc->env = env;
	log_event(LOG_LEVEL_INFO, "tlsrpt_sent", LOG_S("domain", e->domain),
		  LOG_S("to", to), LOG_S("report_id", report_id),
		  LOG_S("queue_id", env->id),
		  LOG_I("success", e->count[TLSRPT_SUCCESS]),
		  LOG_I("failure", failed));
	spool_incoming_commit(srv->spool, inc, env, on_report_committed, rc);
}

static void on_rua(const struct dns_txt_result *res, void *arg)
{
	struct tlsrpt_entry *e = arg;
	char to[TLSRPT_ADDRESS_MAX];
	int found = 0;
	e->txt = NULL;
	for (size_t i = 0; res->status == DNS_OK && i < res->count; i++) {
		found = tlsrpt_record_parse(res->texts[i], to, sizeof to);
		if (found != 0)
			break;
	}
	if (found == 1)
		report_queue(e, to);
	else
		log_event(LOG_LEVEL_INFO, "tlsrpt_error",
			  LOG_S("domain", e->domain),
			  LOG_S("reason", found == -1
					      ? "no mailto: rua in the TLSRPT "
						"record"
					      : "no _smtp._tls TLSRPT record"));
	sending_unlink(e);
	entry_free(e);
}

void tlsrpt_send_now(struct tlsrpt *rpt)
{
	struct server *srv = rpt->srv;
	const struct config *cfg = srv->cfg;
	time_t now = time(NULL);
	if (cfg->tlsrpt_from == NULL || srv->dns == NULL)
		return;
	struct tlsrpt_entry *batch = rpt->entries;
	rpt->entries = NULL;
	rpt->count = 0;
	time_t start = rpt->start;
	rpt->start = now;
	rpt->dirty = true;
	save(rpt);
	while (batch != NULL) {
		struct tlsrpt_entry *e = batch;
		batch = e->next;
		e->start = start;
		e->end = now;
		e->next = rpt->sending;
		rpt->sending = e;
		char name[HOSTNAME_MAX + 16];
		snprintf(name, sizeof name, "_smtp._tls.%s", e->domain);
		e->txt = dns_resolve_txt(srv->dns, name, on_rua, e);
	}
}

static void on_save_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	save(arg);
}

/* Seconds to the next UTC midnight, one at least. */
static long until_midnight(time_t now)
{
	long left = 86400 - (long)(now % 86400);
	return left > 0 ? left : 1;
}

static void on_day_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tlsrpt *rpt = arg;
	(void)fd;
	(void)what;
	tlsrpt_send_now(rpt);
	struct timeval tv = {.tv_sec = until_midnight(time(NULL))};
	if (evtimer_add(rpt->day_timer, &tv) < 0)
		fatal("tlsrpt: cannot add a timer");
}

struct tlsrpt *tlsrpt_new(struct server *srv)
{
	struct tlsrpt *rpt = calloc(1, sizeof *rpt);
	if (rpt == NULL)
		return NULL;
	rpt->srv = srv;
	rpt->start = time(NULL);
	size_t len = strlen(srv->cfg->spool_dir) + sizeof "/tlsrpt";
	rpt->path = malloc(len);
	rpt->save_timer =
	    event_new(srv->base, -1, EV_PERSIST, on_save_timer, rpt);
	rpt->day_timer = evtimer_new(srv->base, on_day_timer, rpt);
	if (rpt->path == NULL || rpt->save_timer == NULL ||
	    rpt->day_timer == NULL) {
		tlsrpt_free(rpt);
		return NULL;
	}
	snprintf(rpt->path, len, "%s/tlsrpt", srv->cfg->spool_dir);
	load(rpt);
	struct timeval every = {.tv_sec = TLSRPT_SAVE_EVERY};
	struct timeval day = {.tv_sec = until_midnight(time(NULL))};
	if (evtimer_add(rpt->save_timer, &every) < 0 ||
	    evtimer_add(rpt->day_timer, &day) < 0)
		fatal("tlsrpt: cannot add a timer");
	return rpt;
}

void tlsrpt_free(struct tlsrpt *rpt)
{
	if (rpt == NULL)
		return;
	if (rpt->path != NULL && rpt->save_timer != NULL)
		save(rpt);
	entries_free(rpt->entries);
	entries_free(rpt->sending);
	if (rpt->save_timer != NULL)
		event_free(rpt->save_timer);
	if (rpt->day_timer != NULL)
		event_free(rpt->day_timer);
	free(rpt->path);
	free(rpt);
}
