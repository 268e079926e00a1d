/*
 * The DSNs of queued messages (see notice.h).
 *
 * The outcomes of one run of a message that call for a DSN are settled
 * together, so that a run sends at most one notice of each kind: the
 * DSN's commit and its recipients' records go into the spool in one
 * batch, the DSN first. A DSN the spool cannot take stays owed, its
 * recipients unrecorded (RCPT_PHASE_OWED), and is tried again; a delay
 * notice that fails is not owed: its flag is cleared, so the next run of
 * the message sends it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/bounce.h"
#include "facteur/config.h"
#include "facteur/log.h"
#include "facteur/notice.h"
#include "facteur/policy.h"
#include "facteur/queued.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"

/*
 * One DSN about some recipients of q. It is queued with the settlement of
 * their outcomes. When its commit fails (a full disk), it stays owed: its
 * recipients keep their outcome in memory only (RCPT_PHASE_OWED) and
 * the notice is tried again with backoff. A crash meanwhile loses
 * nothing: the spool still has those recipients as they were, so they are
 * tried again and their notice comes with the new outcome.
 */
struct notice {
	struct notice *next; /* on q->owed */
	struct queued *q;
	struct settlement *st; /* while its commit is under way */
	enum bounce_kind kind;
	size_t *rcpts;
	size_t count;
	unsigned failures;   /* commits that failed so far */
	bool failed;	     /* the last try did */
	struct event *timer; /* the next try, while owed */
	unsigned waiting;    /* its commit and its records in flight */
	bool with_records;   /* its recipients' records share its batch */
	bool record_failed;
};

enum notice_result {
	NOTICE_QUEUED,	/* its commit is under way */
	NOTICE_DROPPED, /* nobody to send it to: logged, nothing owed */
	NOTICE_FAILED,	/* not queued: owed */
};

/* Recipients whose outcomes wait for their notices to be queued before
 * they are recorded: at most one notice of each kind. */
struct settlement {
	struct queued *q;
	size_t *rcpts;
	size_t count;
	struct notice *notices[3];
	size_t notice_count;
	unsigned dsns_pending;
	bool flags_changed;
};

static const char *kind_name(enum bounce_kind kind)
{
	return kind == BOUNCE_FAILURE ? "failure"
	       : kind == BOUNCE_DELAY ? "delay"
				      : "success";
}

/* A copy of a list of recipient indexes (never NULL). */
static size_t *indexes_copy(const size_t *rcpts, size_t count)
{
	size_t *copy = malloc((count ? count : 1) * sizeof *copy);
	if (copy == NULL)
		fatal("notice: out of memory");
	if (count > 0)
		memcpy(copy, rcpts, count * sizeof *copy);
	return copy;
}

static struct notice *notice_new(struct queued *q, enum bounce_kind kind,
				 const size_t *rcpts, size_t count)
{
	struct notice *n = calloc(1, sizeof *n);
	if (n == NULL)
		fatal("notice: out of memory for a DSN");
	n->q = q;
	n->kind = kind;
	n->rcpts = indexes_copy(rcpts, count);
	n->count = count;
	return n;
}

static void notice_free(struct notice *n)
{
	if (n->timer != NULL)
		event_free(n->timer);
	free(n->rcpts);
	free(n);
}

static void on_notice_due(evutil_socket_t fd, short what, void *arg);

/* The notice could not be queued: it stays owed, and holds its message
 * (and its recipients, unrecorded) until it is. */
static void notice_owe(struct notice *n)
{
	struct queued *q = n->q;
	const struct config *cfg = queued_server(q)->cfg;
	n->failures++;
	n->st = NULL;
	if (n->timer == NULL &&
	    (n->timer =
		 evtimer_new(queued_server(q)->base, on_notice_due, n)) == NULL)
		fatal("notice: out of memory for a timer");
	struct timeval tv = {
	    scheduler_backoff(cfg->retry_min, cfg->retry_max, n->failures), 0};
	n->next = q->owed;
	q->owed = n;
	q->in_flight++;
	for (size_t i = 0; i < n->count; i++)
		queued_enter_phase(q, n->rcpts[i], RCPT_PHASE_OWED);
	log_event(LOG_LEVEL_WARN, "dsn_owed", LOG_S("queue_id", q->env->id),
		  LOG_S("kind", kind_name(n->kind)),
		  LOG_S("to", q->env->sender), LOG_I("nrcpt", n->count),
		  LOG_I("failures", n->failures),
		  LOG_I("retry_in", (long long)tv.tv_sec));
	if (evtimer_add(n->timer, &tv) == -1)
		fatal("notice: cannot add a timer");
}

static void notice_unlink(struct notice *n)
{
	struct queued *q = n->q;
	struct notice **at = &q->owed;
	while (*at != n)
		at = &(*at)->next;
	*at = n->next;
	n->next = NULL;
	q->in_flight--;
	evtimer_del(n->timer);
}

/* The message was deleted: its owed notice goes, and its recipients
 * with it, unrecorded (the message is removed from the spool anyway). */
static void notice_drop(struct notice *n)
{
	notice_unlink(n);
	for (size_t i = 0; i < n->count; i++)
		queued_enter_phase(n->q, n->rcpts[i], RCPT_PHASE_IDLE);
	notice_free(n);
}

static void settlement_finish(struct settlement *st)
{
	struct queued *q = st->q;
	/* recipients not to record here: owed, or recorded with their notice */
	bool *skip =
	    calloc(q->env->rcpt_count ? q->env->rcpt_count : 1, sizeof *skip);
	if (skip == NULL)
		fatal("notice: out of memory");
	q->in_flight--; /* the settlement's own hold */
	for (size_t k = 0; k < st->notice_count; k++) {
		struct notice *n = st->notices[k];
		if (!n->failed) {
			/* Recorded with the notice: done. */
			if (n->with_records && !n->record_failed)
				for (size_t i = 0; i < n->count; i++) {
					skip[n->rcpts[i]] = true;
					queued_enter_phase(q, n->rcpts[i],
							   RCPT_PHASE_IDLE);
				}
			notice_free(n);
		} else if (n->kind == BOUNCE_DELAY) {
			/* Its recipients are still deferred: without the
			 * flag, the next run of the message sends it. */
			q->env->flags &= ~(unsigned)SPOOL_FLAG_DELAY_NOTIFIED;
			st->flags_changed = false;
			notice_free(n);
		} else {
			for (size_t i = 0; i < n->count; i++)
				skip[n->rcpts[i]] = true;
			notice_owe(n);
		}
	}
	for (size_t i = 0; i < st->count; i++)
		if (!skip[st->rcpts[i]])
			queued_record_rcpt(q, st->rcpts[i]);
	free(skip);
	if (st->flags_changed)
		queued_record_flags(q);
	free(st->rcpts);
	free(st);
	if (q->in_flight == 0)
		queued_settled(q);
}

struct dsn_commit {
	struct notice *notice;
	struct spool_envelope *env; /* the DSN's own envelope */
};

/* The notice's commit and records are all back. */
static void notice_wait_done(struct notice *n)
{
	if (--n->waiting > 0)
		return;
	struct settlement *st = n->st;
	if (--st->dsns_pending == 0)
		settlement_finish(st);
}

static void on_notice_recorded(int error, void *arg)
{
	struct notice *n = arg;
	struct queued *q = n->q;
	queued_write_done(q);
	q->in_flight--;
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
			  LOG_S("queue_id", q->env->id),
			  LOG_S("reason", strerror(error)));
		n->record_failed = true;
	}
	notice_wait_done(n);
}

static void on_dsn_committed(int error, void *arg)
{
	struct dsn_commit *dc = arg;
	struct notice *n = dc->notice;
	queued_write_done(n->q);
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
			  LOG_S("queue_id", dc->env->id),
			  LOG_S("reason", strerror(error)));
		spool_envelope_free(dc->env);
		dc->notice->failed = true;
	} else {
		scheduler_enqueue(n->q->sched, dc->env, SCHEDULER_NEW);
	}
	free(dc);
	notice_wait_done(n);
}

/* Read the start of the original for the DSN: headers, and the body up
 * to the size a DSN returns. */
static char *read_original(struct spool *spool,
			   const struct spool_envelope *env, size_t *len)
{
	struct spool_body body;
	if (spool_body_open(spool, env, &body) == -1)
		return NULL;
	size_t want = body.length < BOUNCE_ORIGINAL_MAX ? (size_t)body.length
							: BOUNCE_ORIGINAL_MAX;
	char *buf = malloc(BOUNCE_ORIGINAL_MAX);
	size_t have = 0;
	while (buf != NULL && have < want) {
		ssize_t n = pread(body.fd, buf + have, want - have,
				  (off_t)(body.offset + have));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	(void)close(body.fd); /* read-only */
	*len = have;
	return buf;
}

static void dsn_rcpt_set(struct spool_rcpt *r, const char *address,
			 const char *sender, bool local, time_t now)
{
	r->address = strdup(address);
	r->original = strdup(sender);
	if (r->address == NULL || r->original == NULL)
		fatal("notice: out of memory for a DSN");
	r->local = local;
	r->state = RCPT_PENDING;
	r->updated = now;
}

/*
 * The DSN's recipients, for the original sender. A sender in a local
 * domain goes through the policy like a local RCPT TO (aliases, the
 * users_file, a local part fit for a path), so that a sender address
 * can never name a mailbox that no recipient could. 0 with *out set, or
 * -1 with *why set: nobody here to send the notice to.
 */
static int dsn_recipients(const struct server *srv, const char *sender,
			  time_t now, struct spool_rcpt **out, size_t *count,
			  const char **why)
{
	const char *at = strrchr(sender, '@');
	if (at == NULL || !config_is_local_domain(srv->cfg, at + 1)) {
		*out = calloc(1, sizeof **out);
		if (*out == NULL)
			fatal("notice: out of memory for a DSN");
		dsn_rcpt_set(*out, sender, sender, false, now);
		*count = 1;
		return 0;
	}
	/* Trusted like local submission: an alias may lead off-site. */
	struct policy_client client = {.addr = NULL, .authenticated = true};
	struct policy_expansion exp = {0};
	switch (policy_check_recipient(srv->policy, &client, sender, &exp)) {
	case POLICY_ACCEPT:
		break;
	case POLICY_BAD_MAILBOX:
		*why = "the sender's local part cannot name a mailbox";
		return -1;
	case POLICY_ALIAS_LOOP:
		*why = "the sender's aliases expand without end";
		return -1;
	case POLICY_UNKNOWN_USER:
	case POLICY_RELAY_DENIED:
	default:
		*why = "no such local user";
		return -1;
	}
	*out = calloc(exp.count ? exp.count : 1, sizeof **out);
	if (*out == NULL)
		fatal("notice: out of memory for a DSN");
	for (size_t i = 0; i < exp.count; i++)
		dsn_rcpt_set(&(*out)[i], exp.targets[i].address, sender,
			     exp.targets[i].local, now);
	*count = exp.count;
	policy_expansion_clear(&exp);
	return 0;
}

static void rcpts_free(struct spool_rcpt *rcpts, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(rcpts[i].address);
		free(rcpts[i].original);
	}
	free(rcpts);
}

/* Build notice n and commit it into the spool as a message from the
 * null sender. */
static enum notice_result dsn_queue(struct notice *n)
{
	struct queued *q = n->q;
	struct server *srv = queued_server(q);
	const struct config *cfg = srv->cfg;
	time_t now = time(NULL);
	struct spool_rcpt *to = NULL;
	size_t to_count = 0;
	const char *why = NULL;
	if (dsn_recipients(srv, q->env->sender, now, &to, &to_count, &why) ==
	    -1) {
		log_event(LOG_LEVEL_WARN, "dsn_dropped",
			  LOG_S("queue_id", q->env->id),
			  LOG_S("kind", kind_name(n->kind)),
			  LOG_S("to", q->env->sender), LOG_I("nrcpt", n->count),
			  LOG_S("reason", why));
		return NOTICE_DROPPED;
	}
	struct spool_incoming *inc = spool_incoming_new(srv->spool);
	if (inc == NULL) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
			  LOG_S("queue_id", q->env->id),
			  LOG_S("reason", strerror(errno)));
		rcpts_free(to, to_count);
		return NOTICE_FAILED;
	}
	size_t original_len = 0;
	char *original = read_original(srv->spool, q->env, &original_len);
	struct bounce_input in = {
	    .kind = n->kind,
	    .env = q->env,
	    .rcpts = n->rcpts,
	    .rcpt_count = n->count,
	    .hostname = cfg->hostname,
	    .id = inc->id,
	    .now = now,
	    .original = original ? original : "",
	    .original_len = original ? original_len : 0,
	    .retry_until = q->env->arrival + (time_t)cfg->queue_lifetime,
	};
	size_t len = 0;
	char *text = bounce_build(&in, &len);
	free(original);
	struct spool_envelope *env = calloc(1, sizeof *env);
	if (text == NULL || env == NULL) {
		free(text);
		free(env);
		rcpts_free(to, to_count);
		spool_incoming_abort(srv->spool, inc);
		return NOTICE_FAILED;
	}
	spool_incoming_write(inc, text, len);
	free(text);
	memcpy(env->id, inc->id, sizeof env->id);
	env->arrival = now;
	env->sender = strdup("");
	env->client_addr = strdup("local");
	env->helo = strdup(cfg->hostname);
	env->protocol = strdup("DSN");
	env->size = len;
	env->body = SMTP_BODY_8BITMIME;
	env->smtputf8 = q->env->smtputf8;
	/* RFC 8689 §4.3: a notice about a REQUIRETLS message, which quotes
	 * its headers, goes under REQUIRETLS itself */
	env->flags = q->env->flags & SPOOL_FLAG_REQUIRETLS;
	env->rcpts = to;
	env->rcpt_count = to_count;
	if (!env->sender || !env->client_addr || !env->helo || !env->protocol) {
		spool_envelope_free(env);
		spool_incoming_abort(srv->spool, inc);
		return NOTICE_FAILED;
	}
	struct dsn_commit *dc = malloc(sizeof *dc);
	if (dc == NULL)
		fatal("notice: out of memory");
	dc->notice = n;
	dc->env = env;
	queued_write_started(q);
	log_event(LOG_LEVEL_INFO, "dsn", LOG_S("queue_id", q->env->id),
		  LOG_S("dsn_id", env->id), LOG_S("kind", kind_name(n->kind)),
		  LOG_S("to", q->env->sender), LOG_I("nrcpt", n->count));
	/* The outcomes it reports go into the same batch, after it: the log
	 * is replayed up to its first bad record, so they are never durable
	 * without it, and once it is committed they are too (no crash can
	 * make it twice). A body write that already failed refuses the
	 * commit alone: then they wait. A delay notice reports no outcome. */
	n->waiting = 1;
	n->with_records = inc->error == 0 && n->kind != BOUNCE_DELAY;
	spool_incoming_commit(srv->spool, inc, env, on_dsn_committed, dc);
	for (size_t i = 0; n->with_records && i < n->count; i++) {
		n->waiting++;
		q->in_flight++;
		queued_write_started(q);
		spool_record_rcpt(srv->spool, q->env, n->rcpts[i],
				  on_notice_recorded, n);
	}
	return NOTICE_QUEUED;
}

/* Hand notice n to settlement st and start its commit. */
static void settlement_notify(struct settlement *st, struct notice *n)
{
	st->notices[st->notice_count++] = n;
	n->st = st;
	n->failed = false;
	n->with_records = false;
	n->record_failed = false;
	switch (dsn_queue(n)) {
	case NOTICE_QUEUED:
		st->dsns_pending++;
		break;
	case NOTICE_FAILED:
		n->failed = true;
		break;
	case NOTICE_DROPPED:
	default:
		break;
	}
}

static struct settlement *settlement_new(struct queued *q, const size_t *rcpts,
					 size_t count, bool flags_changed)
{
	struct settlement *st = calloc(1, sizeof *st);
	if (st == NULL)
		fatal("notice: out of memory");
	st->q = q;
	st->rcpts = indexes_copy(rcpts, count);
	st->count = count;
	st->flags_changed = flags_changed;
	q->in_flight++; /* held until settlement_finish */
	return st;
}

/* An owed notice's time has come: try to queue it again. */
static void on_notice_due(evutil_socket_t fd, short what, void *arg)
{
	struct notice *n = arg;
	struct queued *q = n->q;
	(void)fd;
	(void)what;
	if (queued_stopping(q))
		return; /* unrecorded: the next start tries them again */
	if (q->deleted) {
		notice_drop(n);
		queued_settled(q);
		return;
	}
	for (size_t i = 0; i < n->count; i++)
		queued_enter_phase(q, n->rcpts[i], RCPT_PHASE_SETTLING);
	notice_unlink(n);
	struct settlement *st = settlement_new(q, n->rcpts, n->count, false);
	settlement_notify(st, n);
	if (st->dsns_pending == 0)
		settlement_finish(st);
}

/* The recipients of a DSN that cannot be queued stay unrecorded until it
 * is (struct notice). */
void notice_settle(struct queued *q, const size_t *rcpts, size_t count,
		   bool flags_changed, const size_t *delayed,
		   size_t delayed_count)
{
	struct settlement *st = settlement_new(q, rcpts, count, flags_changed);
	size_t *failed = malloc((count ? count : 1) * sizeof *failed);
	size_t *succeeded = malloc((count ? count : 1) * sizeof *succeeded);
	if (failed == NULL || succeeded == NULL)
		fatal("notice: out of memory");

	size_t nfailed = 0, nsucceeded = 0;
	for (size_t i = 0; i < count; i++) {
		enum bounce_kind kind;
		if (!bounce_outcome_notice(q->env->sender,
					   &q->env->rcpts[rcpts[i]], &kind))
			continue;
		if (kind == BOUNCE_FAILURE)
			failed[nfailed++] = rcpts[i];
		else
			succeeded[nsucceeded++] = rcpts[i];
	}
	if (nfailed > 0)
		settlement_notify(
		    st, notice_new(q, BOUNCE_FAILURE, failed, nfailed));
	if (nsucceeded > 0)
		settlement_notify(
		    st, notice_new(q, BOUNCE_SUCCESS, succeeded, nsucceeded));
	if (delayed_count > 0)
		settlement_notify(
		    st, notice_new(q, BOUNCE_DELAY, delayed, delayed_count));
	free(failed);
	free(succeeded);
	if (st->dsns_pending == 0)
		settlement_finish(st);
}

void notice_drop_owed(struct queued *q)
{
	while (q->owed != NULL)
		notice_drop(q->owed);
}

void notice_free_owed(struct queued *q)
{
	while (q->owed != NULL) {
		struct notice *n = q->owed;
		q->owed = n->next;
		notice_free(n);
	}
}
