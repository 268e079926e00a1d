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
 * A domain's counts are per policy: its MTA-STS policy (or none found),
 * and the TLSA records of each MX host DANE governed, at most
 * TLSRPT_POLICIES_MAX; each with at most TLSRPT_FAILURES_MAX failure
 * details (result type and addresses), the failures beyond counted
 * without addresses.
 *
 * The counts file holds "start UNIXTIME", then for each policy a line
 * "policy DOMAIN sts MODE MAX_AGE MX,MX" (MODE "-" when no policy was
 * found, MX "-" for none) or "policy DOMAIN tlsa MXHOST U:S:M:HEX,..."
 * followed by its "count RESULT N" and "failure RESULT N SENDING_IP
 * RECEIVING_IP RECEIVING_MX" lines ("-" for what is not known). A line
 * "DOMAIN C0 ... C5 MODE MAX_AGE MX" of the earlier form (six counts of
 * an MTA-STS policy) is read too.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/dns.h"
#include "facteur/hostname.h"
#include "facteur/https_client.h"
#include "facteur/log.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"
#include "facteur/text.h"
#include "facteur/tlsrpt.h"
#include "facteur/wholefile.h"

#define TLSRPT_DOMAINS_MAX 4096
#define TLSRPT_POLICIES_MAX 16 /* per domain: STS, and TLSA per MX host */
#define TLSRPT_FAILURES_MAX 32 /* failure details per policy */
#define TLSRPT_SAVE_EVERY 60   /* seconds: what a crash may lose */
#define TLSRPT_FILE_MAX (4u << 20)
/* a POST's answer is read up to this, then dropped; the whole exchange
 * within this many seconds */
#define TLSRPT_POST_ANSWER_MAX 4096
#define TLSRPT_POST_DEADLINE 30

/* ---- the counts ---- */

struct tlsrpt_entry {
	struct tlsrpt_entry *next;
	struct tlsrpt *rpt;
	char *domain;
	struct tlsrpt_policy_counts *policies;
	size_t policy_count;
	time_t start, end;	   /* while sending */
	struct dns_txt_query *txt; /* while sending */
};

struct tlsrpt {
	struct server *srv;
	char *path; /* NULL: no file */
	struct tlsrpt_entry *entries, *sending;
	struct report_post *posting; /* reports on their way to https: */
	size_t count;
	time_t start; /* of the counts in `entries` */
	bool dirty;
	struct event *save_timer, *day_timer;
};

static void tlsa_clear(struct tlsrpt_policy_counts *pc)
{
	for (size_t i = 0; i < pc->tlsa_count; i++)
		free(pc->tlsa[i]);
	free(pc->tlsa);
	pc->tlsa = NULL;
	pc->tlsa_count = 0;
}

static void entry_free(struct tlsrpt_entry *e)
{
	dns_txt_cancel(e->txt);
	for (size_t i = 0; i < e->policy_count; i++) {
		mta_sts_policy_clear(&e->policies[i].sts);
		tlsa_clear(&e->policies[i]);
		free(e->policies[i].failures);
	}
	free(e->policies);
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

/* A new policy of e, empty; NULL when e has as many as it may. */
static struct tlsrpt_policy_counts *policy_add(struct tlsrpt_entry *e,
					       enum tlsrpt_policy_type type)
{
	if (e->policy_count >= TLSRPT_POLICIES_MAX)
		return NULL;
	struct tlsrpt_policy_counts *grown =
	    realloc(e->policies, (e->policy_count + 1) * sizeof *grown);
	if (grown == NULL)
		fatal("tlsrpt: out of memory");
	e->policies = grown;
	struct tlsrpt_policy_counts *pc = &grown[e->policy_count++];
	memset(pc, 0, sizeof *pc);
	pc->type = type;
	return pc;
}

/* The policy of e a session counts under: its MTA-STS one (the newest
 * policy text kept), or the TLSA records of its MX host (the newest
 * records kept). NULL when there is no room for another. */
static struct tlsrpt_policy_counts *policy_get(struct tlsrpt_entry *e,
					       const struct tlsrpt_session *s)
{
	struct tlsrpt_policy_counts *pc = NULL;
	for (size_t i = 0; i < e->policy_count && pc == NULL; i++)
		if (e->policies[i].type == s->type &&
		    (s->type == TLSRPT_POLICY_STS ||
		     strcasecmp(e->policies[i].mx_host, s->mx_host) == 0))
			pc = &e->policies[i];
	if (pc == NULL && (pc = policy_add(e, s->type)) == NULL)
		return NULL;
	if (s->type == TLSRPT_POLICY_STS) {
		if (s->sts != NULL) {
			mta_sts_policy_clear(&pc->sts);
			if (mta_sts_policy_copy(&pc->sts, s->sts) < 0)
				fatal("tlsrpt: out of memory");
		}
		return pc;
	}
	snprintf(pc->mx_host, sizeof pc->mx_host, "%s", s->mx_host);
	tlsa_clear(pc);
	if (s->tlsa_count > 0 &&
	    (pc->tlsa = calloc(s->tlsa_count, sizeof *pc->tlsa)) == NULL)
		fatal("tlsrpt: out of memory");
	for (size_t i = 0; i < s->tlsa_count; i++)
		if ((pc->tlsa[pc->tlsa_count++] =
			 tlsrpt_tlsa_string(&s->tlsa[i])) == NULL)
			fatal("tlsrpt: out of memory");
	return pc;
}

static const char *or_empty(const char *s)
{
	return s != NULL ? s : "";
}

/* The failure detail of these addresses, n sessions more; beyond
 * TLSRPT_FAILURES_MAX details the count alone says them. */
static void failure_add(struct tlsrpt_policy_counts *pc,
			enum tlsrpt_result result, const char *sending_ip,
			const char *receiving_ip, const char *receiving_mx,
			uint64_t n)
{
	sending_ip = or_empty(sending_ip);
	receiving_ip = or_empty(receiving_ip);
	receiving_mx = or_empty(receiving_mx);
	if (!*sending_ip && !*receiving_ip && !*receiving_mx)
		return;
	for (size_t i = 0; i < pc->failure_count; i++) {
		struct tlsrpt_failure *f = &pc->failures[i];
		if (f->result == result &&
		    strcmp(f->sending_ip, sending_ip) == 0 &&
		    strcmp(f->receiving_ip, receiving_ip) == 0 &&
		    strcasecmp(f->receiving_mx, receiving_mx) == 0) {
			f->count += n;
			return;
		}
	}
	if (pc->failure_count >= TLSRPT_FAILURES_MAX)
		return;
	struct tlsrpt_failure *grown = realloc(
	    pc->failures, (pc->failure_count + 1) * sizeof *pc->failures);
	if (grown == NULL)
		fatal("tlsrpt: out of memory");
	pc->failures = grown;
	struct tlsrpt_failure *f = &grown[pc->failure_count++];
	memset(f, 0, sizeof *f);
	f->result = result;
	snprintf(f->sending_ip, sizeof f->sending_ip, "%s", sending_ip);
	snprintf(f->receiving_ip, sizeof f->receiving_ip, "%s", receiving_ip);
	snprintf(f->receiving_mx, sizeof f->receiving_mx, "%s", receiving_mx);
	f->count = n;
}

/* "-" for what is empty, in the counts file. */
static const char *or_dash(const char *s)
{
	return *s ? s : "-";
}

static void save_policy(struct text *t, const char *domain,
			const struct tlsrpt_policy_counts *pc)
{
	if (pc->type == TLSRPT_POLICY_TLSA) {
		text_fmt(t, "policy %s tlsa %s ", domain, pc->mx_host);
		/* "3 1 1 HEX" as "3:1:1:HEX": one field */
		for (size_t i = 0; i < pc->tlsa_count; i++) {
			text_str(t, i ? "," : "");
			for (const char *c = pc->tlsa[i]; *c; c++)
				text_add(t, *c == ' ' ? ":" : c, 1);
		}
		text_str(t, pc->tlsa_count ? "\n" : "-\n");
	} else {
		const struct mta_sts_policy *p = &pc->sts;
		bool found = p->mode != MTA_STS_MODE_NONE;
		text_fmt(t, "policy %s sts %s %" PRIu32 " ", domain,
			 found ? mta_sts_mode_name(p->mode) : "-", p->max_age);
		for (size_t i = 0; i < p->mx_count; i++)
			text_fmt(t, "%s%s", i ? "," : "", p->mx[i]);
		text_str(t, p->mx_count ? "\n" : "-\n");
	}
	for (int r = 0; r < TLSRPT_RESULT_COUNT; r++)
		if (pc->count[r] > 0)
			text_fmt(t, "count %s %" PRIu64 "\n",
				 tlsrpt_result_name(r), pc->count[r]);
	for (size_t i = 0; i < pc->failure_count; i++) {
		const struct tlsrpt_failure *f = &pc->failures[i];
		text_fmt(t, "failure %s %" PRIu64 " %s %s %s\n",
			 tlsrpt_result_name(f->result), f->count,
			 or_dash(f->sending_ip), or_dash(f->receiving_ip),
			 or_dash(f->receiving_mx));
	}
}

static void save(struct tlsrpt *rpt)
{
	if (rpt->path == NULL || !rpt->dirty)
		return;
	struct text t = {0};
	text_fmt(&t, "start %lld\n", (long long)rpt->start);
	for (struct tlsrpt_entry *e = rpt->entries; e != NULL; e = e->next)
		for (size_t i = 0; i < e->policy_count; i++)
			save_policy(&t, e->domain, &e->policies[i]);
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

/* An MTA-STS policy from the counts file, rebuilt as the parser would
 * read it; mode none when there is none or it does not parse. */
static void load_sts(struct mta_sts_policy *policy, const char *mode,
		     unsigned max_age, char *mx)
{
	if (strcmp(mode, "-") == 0)
		return;
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
	    mta_sts_policy_parse(text, len, policy, err, sizeof err) < 0)
		mta_sts_policy_clear(policy);
	free(text);
}

/* A line of the earlier form: "DOMAIN C0 ... C5 MODE MAX_AGE MX", the
 * counts in the order results had then. */
static bool load_old_line(struct tlsrpt *rpt, char *line)
{
	static const enum tlsrpt_result old_order[6] = {
	    TLSRPT_SUCCESS,
	    TLSRPT_STARTTLS_NOT_SUPPORTED,
	    TLSRPT_VALIDATION_FAILURE,
	    TLSRPT_STS_POLICY_FETCH_ERROR,
	    TLSRPT_STS_POLICY_INVALID,
	    TLSRPT_STS_WEBPKI_INVALID,
	};
	char domain[HOSTNAME_MAX + 1], mode[16], mx[4096];
	uint64_t c[6];
	unsigned max_age;
	if (sscanf(line,
		   "%253s %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
		   " %" SCNu64 " %" SCNu64 " %15s %u %4095s",
		   domain, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], mode,
		   &max_age, mx) != 10 ||
	    !hostname_valid(domain, strlen(domain)))
		return false;
	struct tlsrpt_entry *e = entry_get(rpt, domain);
	struct tlsrpt_policy_counts *pc =
	    e != NULL ? policy_add(e, TLSRPT_POLICY_STS) : NULL;
	if (pc == NULL)
		return true;
	for (int i = 0; i < 6; i++)
		pc->count[old_order[i]] = c[i];
	load_sts(&pc->sts, mode, max_age, mx);
	return true;
}

/* A "policy" line: the policy its "count" and "failure" lines (*pc)
 * belong to. */
static bool load_policy(struct tlsrpt *rpt, const char *line,
			struct tlsrpt_policy_counts **pc)
{
	char domain[HOSTNAME_MAX + 1], type[8], a[HOSTNAME_MAX + 1];
	unsigned max_age;
	int n = 0;
	*pc = NULL;
	if (sscanf(line, "policy %253s %7s %253s %n", domain, type, a, &n) !=
		3 ||
	    n == 0 || !hostname_valid(domain, strlen(domain)))
		return false;
	size_t rest_len = strlen(line + n);
	char *rest = strdup(line + n);
	if (rest == NULL)
		fatal("tlsrpt: out of memory");
	bool ok = true;
	struct tlsrpt_entry *e = entry_get(rpt, domain);
	if (strcmp(type, "sts") == 0) {
		char mx[4096];
		ok = sscanf(rest, "%u %4095s", &max_age, mx) == 2;
		if (ok && e != NULL &&
		    (*pc = policy_add(e, TLSRPT_POLICY_STS)) != NULL)
			load_sts(&(*pc)->sts, a, max_age, mx);
	} else if (strcmp(type, "tlsa") == 0 && rest_len > 0) {
		ok = hostname_valid(a, strlen(a));
		if (ok && e != NULL &&
		    (*pc = policy_add(e, TLSRPT_POLICY_TLSA)) != NULL) {
			snprintf((*pc)->mx_host, sizeof(*pc)->mx_host, "%s", a);
			size_t records = 1;
			for (const char *c = rest; *c; c++)
				records += *c == ',';
			(*pc)->tlsa = calloc(records, sizeof *(*pc)->tlsa);
			if ((*pc)->tlsa == NULL)
				fatal("tlsrpt: out of memory");
			for (char *save_ptr = NULL,
				  *r = strtok_r(rest, ",", &save_ptr);
			     r != NULL && strcmp(r, "-") != 0;
			     r = strtok_r(NULL, ",", &save_ptr)) {
				for (char *c = r; *c; c++)
					if (*c == ':')
						*c = ' ';
				char *copy = strdup(r);
				if (copy == NULL)
					fatal("tlsrpt: out of memory");
				(*pc)->tlsa[(*pc)->tlsa_count++] = copy;
			}
		}
	} else {
		ok = false;
	}
	free(rest);
	return ok;
}

/* A "count" or "failure" line of policy pc (NULL: one not kept). */
static bool load_count(struct tlsrpt_policy_counts *pc, const char *line)
{
	char name[32], sending[TLSRPT_IP_MAX], receiving[TLSRPT_IP_MAX];
	char mx[HOSTNAME_MAX + 1];
	uint64_t n;
	if (sscanf(line, "count %31s %" SCNu64, name, &n) == 2) {
		enum tlsrpt_result r = tlsrpt_result_from_name(name);
		if (r == TLSRPT_RESULT_COUNT)
			return false;
		if (pc != NULL)
			pc->count[r] = n;
		return true;
	}
	if (sscanf(line, "failure %31s %" SCNu64 " %45s %45s %253s", name, &n,
		   sending, receiving, mx) == 5) {
		enum tlsrpt_result r = tlsrpt_result_from_name(name);
		if (r == TLSRPT_RESULT_COUNT)
			return false;
		if (pc != NULL)
			failure_add(pc, r, strcmp(sending, "-") ? sending : "",
				    strcmp(receiving, "-") ? receiving : "",
				    strcmp(mx, "-") ? mx : "", n);
		return true;
	}
	return false;
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
	struct tlsrpt_policy_counts *pc = NULL;
	for (char *line = strtok_r(text, "\n", &save_ptr); line != NULL;
	     line = strtok_r(NULL, "\n", &save_ptr)) {
		bool ok;
		if (sscanf(line, "start %lld", &start) == 1) {
			rpt->start = (time_t)start;
			ok = true;
		} else if (strncmp(line, "policy ", 7) == 0) {
			ok = load_policy(rpt, line, &pc);
		} else if (strncmp(line, "count ", 6) == 0 ||
			   strncmp(line, "failure ", 8) == 0) {
			ok = load_count(pc, line);
		} else {
			ok = load_old_line(rpt, line);
		}
		if (!ok)
			log_event(LOG_LEVEL_WARN, "tlsrpt_error",
				  LOG_S("reason", "bad line in the counts"),
				  LOG_S("path", rpt->path));
	}
	free(text);
}

void tlsrpt_count_session(struct tlsrpt *rpt, const char *domain,
			  const struct tlsrpt_session *s)
{
	char name[HOSTNAME_MAX + 1];
	size_t len = strlen(domain);
	if (rpt == NULL || s->result >= TLSRPT_RESULT_COUNT ||
	    !hostname_valid(domain, len) ||
	    (s->type == TLSRPT_POLICY_TLSA &&
	     (s->mx_host == NULL || strlen(s->mx_host) > HOSTNAME_MAX)))
		return;
	/* one entry per domain, however its recipients wrote it */
	memcpy(name, domain, len + 1);
	ascii_lower_in_place(name, len);
	struct tlsrpt_entry *e = entry_get(rpt, name);
	struct tlsrpt_policy_counts *pc = e != NULL ? policy_get(e, s) : NULL;
	if (pc == NULL)
		return;
	pc->count[s->result]++;
	if (s->result != TLSRPT_SUCCESS)
		failure_add(pc, s->result, s->sending_ip, s->receiving_ip,
			    s->receiving_mx, 1);
	rpt->dirty = true;
}

void tlsrpt_count(struct tlsrpt *rpt, const char *domain,
		  const struct mta_sts_policy *policy,
		  enum tlsrpt_result result)
{
	struct tlsrpt_session s = {
	    .type = TLSRPT_POLICY_STS, .sts = policy, .result = result};
	tlsrpt_count_session(rpt, domain, &s);
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

/* One domain's report, built once for every rua it goes to. */
struct report {
	char id[HOSTNAME_MAX * 2 + 64];
	uint64_t succeeded, failed;
	unsigned char *gz;
	size_t gz_len;
};

/* e's report, gzip'd; false when out of memory. */
static bool report_build(const struct tlsrpt_entry *e, struct report *r)
{
	const struct config *cfg = e->rpt->srv->cfg;
	char stamp[32];
	tlsrpt_format_stamp(e->start, stamp, sizeof stamp);
	snprintf(r->id, sizeof r->id, "%s.%s@%s", stamp, e->domain,
		 cfg->hostname);
	struct tlsrpt_counts c = {.domain = e->domain,
				  .policies = e->policies,
				  .policy_count = e->policy_count};
	r->succeeded = r->failed = 0;
	for (size_t i = 0; i < e->policy_count; i++) {
		r->succeeded += e->policies[i].count[TLSRPT_SUCCESS];
		for (int k = TLSRPT_SUCCESS + 1; k < TLSRPT_RESULT_COUNT; k++)
			r->failed += e->policies[i].count[k];
	}
	size_t json_len = 0;
	char *json = tlsrpt_report_json(&c, cfg->hostname, cfg->tlsrpt_from,
					r->id, e->start, e->end, &json_len);
	r->gz = json ? tlsrpt_gzip(json, json_len, &r->gz_len) : NULL;
	free(json);
	return r->gz != NULL;
}

/* The report of e, queued to `to` like a DSN (RFC 8460 §5.3). */
static void report_mail(const struct tlsrpt_entry *e, const struct report *r,
			const char *to)
{
	struct server *srv = e->rpt->srv;
	const struct config *cfg = srv->cfg;
	size_t len = 0;
	struct tlsrpt_mail m = {
	    .from = cfg->tlsrpt_from,
	    .to = to,
	    .domain = e->domain,
	    .submitter = cfg->hostname,
	    .report_id = r->id,
	    .start = e->start,
	    .end = e->end,
	    .now = time(NULL),
	    .gz = r->gz,
	    .gz_len = r->gz_len,
	};
	char *text = tlsrpt_mail_build(&m, &len);
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
		  LOG_S("to", to), LOG_S("report_id", r->id),
		  LOG_S("queue_id", env->id), LOG_I("success", r->succeeded),
		  LOG_I("failure", r->failed));
	spool_incoming_commit(srv->spool, inc, env, on_report_committed, rc);
}

/* A report on its way to an https: rua. */
struct report_post {
	struct report_post *next;
	struct tlsrpt *rpt;
	struct https_exchange *x;
	char *domain;
	char uri[TLSRPT_PATH_MAX + HOSTNAME_MAX + 16];
	char id[HOSTNAME_MAX * 2 + 64];
	uint64_t succeeded, failed;
};

static void post_free(struct report_post *p)
{
	struct report_post **at = &p->rpt->posting;
	while (*at != p)
		at = &(*at)->next;
	*at = p->next;
	https_cancel(p->x);
	free(p->domain);
	free(p);
}

/* RFC 8460 §5.4: any 2xx is a delivered report; nothing is retried. */
static void on_posted(const struct https_response *res, void *arg)
{
	struct report_post *p = arg;
	p->x = NULL;
	if (res->failure == HTTPS_ANSWERED && res->code >= 200 &&
	    res->code < 300) {
		log_event(LOG_LEVEL_INFO, "tlsrpt_sent",
			  LOG_S("domain", p->domain), LOG_S("to", p->uri),
			  LOG_S("report_id", p->id), LOG_I("status", res->code),
			  LOG_I("success", p->succeeded),
			  LOG_I("failure", p->failed));
	} else {
		char why[400];
		if (res->failure == HTTPS_ANSWERED)
			snprintf(why, sizeof why, "HTTP %d", res->code);
		else
			snprintf(why, sizeof why, "%s", res->reason);
		log_event(LOG_LEVEL_WARN, "tlsrpt_error",
			  LOG_S("domain", p->domain), LOG_S("to", p->uri),
			  LOG_S("reason", why));
	}
	post_free(p);
}

/* The report of e, POSTed gzip'd to the rua's https: URI (§5.4). */
static void report_post(const struct tlsrpt_entry *e, const struct report *r,
			const struct tlsrpt_rua *rua)
{
	struct tlsrpt *rpt = e->rpt;
	struct report_post *p = calloc(1, sizeof *p);
	if (p == NULL || (p->domain = strdup(e->domain)) == NULL)
		fatal("tlsrpt: out of memory");
	p->rpt = rpt;
	if (rua->https_port == 443)
		snprintf(p->uri, sizeof p->uri, "https://%s%s", rua->https_host,
			 rua->https_path);
	else
		snprintf(p->uri, sizeof p->uri, "https://%s:%u%s",
			 rua->https_host, (unsigned)rua->https_port,
			 rua->https_path);
	memcpy(p->id, r->id, sizeof p->id);
	p->succeeded = r->succeeded;
	p->failed = r->failed;
	struct https_request req = {
	    .host = rua->https_host,
	    .port = rua->https_port,
	    .path = rua->https_path,
	    .content_type = "application/tlsrpt+gzip",
	    .body = r->gz,
	    .body_len = r->gz_len,
	    .max_answer = TLSRPT_POST_ANSWER_MAX,
	    .deadline = TLSRPT_POST_DEADLINE,
	};
	char why[320];
	p->next = rpt->posting;
	rpt->posting = p;
	p->x = https_start(rpt->srv, &req, on_posted, p, why, sizeof why);
	if (p->x == NULL) {
		log_event(LOG_LEVEL_WARN, "tlsrpt_error",
			  LOG_S("domain", e->domain), LOG_S("to", p->uri),
			  LOG_S("reason", why));
		post_free(p);
	}
}

static void on_rua(const struct dns_txt_result *res, void *arg)
{
	struct tlsrpt_entry *e = arg;
	struct tlsrpt_rua rua;
	int found = 0;
	e->txt = NULL;
	for (size_t i = 0; res->status == DNS_OK && i < res->count; i++) {
		found = tlsrpt_record_parse(res->texts[i], &rua);
		if (found != 0)
			break;
	}
	struct report r;
	if (found != 1) {
		log_event(LOG_LEVEL_INFO, "tlsrpt_error",
			  LOG_S("domain", e->domain),
			  LOG_S("reason", found == -1
					      ? "no usable rua in the TLSRPT "
						"record"
					      : "no _smtp._tls TLSRPT record"));
	} else if (!report_build(e, &r)) {
		log_event(LOG_LEVEL_ERROR, "tlsrpt_error",
			  LOG_S("domain", e->domain),
			  LOG_S("reason", "cannot build the report"));
	} else {
		/* every rua the record names that facteur can use */
		if (rua.mailto[0] != '\0')
			report_mail(e, &r, rua.mailto);
		if (rua.https_host[0] != '\0')
			report_post(e, &r, &rua);
		free(r.gz);
	}
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
	while (rpt->posting != NULL)
		post_free(rpt->posting);
	if (rpt->save_timer != NULL)
		event_free(rpt->save_timer);
	if (rpt->day_timer != NULL)
		event_free(rpt->day_timer);
	free(rpt->path);
	free(rpt);
}
