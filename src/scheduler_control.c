/*
 * The operator's hand on the queue (see scheduler.h and
 * scheduler_internal.h): a message found by id, flushed, deleted,
 * bounced, held or released; suspensions; sweeps over the whole queue
 * (flush, resume, a timed suspension), a slice a loop turn; the cursors
 * of listings and sweeps; the pickup of a message written by
 * facteur-sendmail.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "facteur/domain_suspend.h"
#include "facteur/log.h"
#include "facteur/notice.h"
#include "facteur/queued.h"
#include "facteur/relay.h"
#include "facteur/scheduler.h"
#include "facteur/scheduler_internal.h"
#include "facteur/server.h"
#include "facteur/spool.h"
#include "facteur/status_code.h"

/* A run over the whole queue that the operator asked for (a flush, or
 * the messages of a domain resumed): a slice of it a loop turn, so that
 * a million queued messages never hold the sessions up. */
struct sweep {
	struct scheduler *sched;
	struct scheduler_cursor *cursor;
	char *domain; /* NULL: every message, its deferred recipients due */
	time_t since; /* a flush's deferred recipients are due from then */
	struct event *slice;
	struct sweep *prev, *next;
};

/* ---- sweeps ---- */

static void sweep_free(struct sweep *sw)
{
	struct scheduler *sched = sw->sched;
	if (sw->prev != NULL)
		sw->prev->next = sw->next;
	else
		sched->sweeps = sw->next;
	if (sw->next != NULL)
		sw->next->prev = sw->prev;
	scheduler_cursor_free(sw->cursor);
	event_free(sw->slice);
	free(sw->domain);
	free(sw);
}

void scheduler_sweeps_free(struct scheduler *sched)
{
	while (sched->sweeps != NULL)
		sweep_free(sched->sweeps);
}

static bool has_rcpt_in(const struct spool_envelope *env, const char *domain)
{
	for (size_t i = 0; i < env->rcpt_count; i++) {
		const char *at = strrchr(env->rcpts[i].address, '@');
		if (at != NULL && strcasecmp(at + 1, domain) == 0)
			return true;
	}
	return false;
}

/* One message of the sweep. It may be freed inside queued_run: the
 * cursor is already past it. */
static void sweep_visit(struct sweep *sw, struct queued *q)
{
	struct spool_envelope *env = q->env;
	if (sw->domain != NULL) {
		if (has_rcpt_in(env, sw->domain))
			queued_run(q);
		return;
	}
	for (size_t i = 0; i < env->rcpt_count; i++)
		if (env->rcpts[i].state == RCPT_DEFERRED &&
		    env->rcpts[i].next_attempt > sw->since)
			env->rcpts[i].next_attempt = sw->since;
	queued_run(q);
}

static void on_sweep_slice(evutil_socket_t fd, short what, void *arg)
{
	static const struct timeval zero = {0, 0};
	struct sweep *sw = arg;
	struct scheduler *sched = sw->sched;
	long long start = scheduler_monotonic_usec();
	size_t visited = 0;
	(void)fd;
	(void)what;
	while (!sched->stopping && scheduler_cursor_next(sw->cursor) != NULL) {
		sweep_visit(sw, sw->cursor->last);
		if (scheduler_slice_spent(start, ++visited)) {
			if (evtimer_add(sw->slice, &zero) == -1)
				fatal("scheduler: cannot add a timer");
			return;
		}
	}
	sweep_free(sw);
}

/* A sweep over the queue from its oldest message; its first slice runs
 * from the loop, never inside the caller. -1 when out of memory. */
static int sweep_start(struct scheduler *sched, const char *domain)
{
	static const struct timeval zero = {0, 0};
	struct sweep *sw = calloc(1, sizeof *sw);
	if (sw == NULL)
		return -1;
	sw->sched = sched;
	sw->since = time(NULL);
	sw->cursor = scheduler_cursor_new(sched);
	sw->domain = domain != NULL ? strdup(domain) : NULL;
	sw->slice = evtimer_new(sched->srv->base, on_sweep_slice, sw);
	if (sw->cursor == NULL || (domain != NULL && sw->domain == NULL) ||
	    sw->slice == NULL || evtimer_add(sw->slice, &zero) == -1) {
		scheduler_cursor_free(sw->cursor);
		if (sw->slice != NULL)
			event_free(sw->slice);
		free(sw->domain);
		free(sw);
		return -1;
	}
	sw->next = sched->sweeps;
	if (sched->sweeps != NULL)
		sched->sweeps->prev = sw;
	sched->sweeps = sw;
	return 0;
}

/* Every deferred recipient due now: the destinations' pauses end at
 * once, the messages run a slice a loop turn. */
void scheduler_flush(struct scheduler *sched)
{
	relay_end_pauses(sched->relay);
	if (sweep_start(sched, NULL) == -1)
		log_event(LOG_LEVEL_ERROR, "flush_error",
			  LOG_S("reason", "out of memory"));
}

/* ---- for the control socket ---- */

static struct queued *find(const struct scheduler *sched, const char *id)
{
	for (struct queued *q = sched->messages; q != NULL; q = q->next)
		if (!q->deleted && strcmp(q->env->id, id) == 0)
			return q;
	return NULL;
}

const struct spool_envelope *scheduler_find(const struct scheduler *sched,
					    const char *id)
{
	struct queued *q = find(sched, id);
	return q ? q->env : NULL;
}

int scheduler_flush_one(struct scheduler *sched, const char *id)
{
	struct queued *q = find(sched, id);
	if (q == NULL)
		return -1;
	time_t now = time(NULL);
	for (size_t i = 0; i < q->env->rcpt_count; i++)
		if (q->env->rcpts[i].state == RCPT_DEFERRED)
			q->env->rcpts[i].next_attempt = now;
	queued_run(q);
	return 0;
}

static void delete_one(struct queued *q)
{
	q->deleted = true;
	notice_drop_owed(q);
	log_event(LOG_LEVEL_INFO, "deleted", LOG_S("queue_id", q->env->id),
		  LOG_S("from", q->env->sender));
	queued_finish_if_done(q);
}

int scheduler_delete(struct scheduler *sched, const char *id)
{
	struct queued *q = find(sched, id);
	if (q == NULL)
		return -1;
	delete_one(q);
	return 0;
}

size_t scheduler_delete_all(struct scheduler *sched)
{
	size_t n = 0;
	for (struct queued *q = sched->messages; q != NULL;) {
		struct queued *next = q->next;
		if (!q->deleted) {
			delete_one(q);
			n++;
		}
		q = next;
	}
	return n;
}

static int bounce_one(struct queued *q)
{
	const struct config *cfg = q->sched->srv->cfg;
	size_t *now_bounced = malloc((q->env->rcpt_count + 1) * sizeof(size_t));
	if (now_bounced == NULL)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[i];
		if (q->rcpt[i].phase != RCPT_PHASE_IDLE ||
		    r->state == RCPT_DELIVERED || r->state == RCPT_BOUNCED)
			continue;
		queued_enter_phase(q, i, RCPT_PHASE_SETTLING);
		queued_set_outcome(cfg, q, r, RCPT_BOUNCED,
				   status_code_str(STATUS_PERMANENT_ERROR),
				   "bounced by the administrator");
		r->attempts--; /* not a delivery attempt */
		queued_count_outcome(q, RCPT_BOUNCED);
		now_bounced[n++] = i;
	}
	if (n == 0) {
		free(now_bounced);
		return 0;
	}
	/* Logged once their records are written, as attempts' outcomes;
	 * q stays while they are in flight. */
	notice_settle(q, now_bounced, n, false, NULL, 0);
	spool_write_ahead(q->sched->srv->spool);
	for (size_t k = 0; k < n; k++) {
		const struct spool_rcpt *r = &q->env->rcpts[now_bounced[k]];
		queued_log_outcome("bounced", q, r,
				   r->local ? "mailbox" : "relay", "");
	}
	free(now_bounced);
	return 0;
}

int scheduler_bounce(struct scheduler *sched, const char *id)
{
	struct queued *q = find(sched, id);
	return q == NULL ? -1 : bounce_one(q);
}

/* Hold or release: the flag is recorded before anything moves on, and a
 * delivery in flight ends as it would have (its outcome recorded, no
 * second attempt); the record's end runs the message when released. */
static void set_held(struct queued *q, bool held)
{
	if (held == ((q->env->flags & SPOOL_FLAG_HELD) != 0))
		return;
	if (held) {
		q->env->flags |= SPOOL_FLAG_HELD;
	} else {
		time_t now = time(NULL);
		q->env->flags &= ~(unsigned)SPOOL_FLAG_HELD;
		for (size_t i = 0; i < q->env->rcpt_count; i++)
			if (q->env->rcpts[i].state == RCPT_DEFERRED)
				q->env->rcpts[i].next_attempt = now;
	}
	queued_count(q);
	log_event(LOG_LEVEL_INFO, held ? "held" : "released",
		  LOG_S("queue_id", q->env->id));
	queued_record_flags(q);
}

static void act(struct queued *q, enum scheduler_action action)
{
	switch (action) {
	case SCHEDULER_DELETE:
		delete_one(q);
		break;
	case SCHEDULER_BOUNCE:
		(void)bounce_one(q); /* out of memory: nothing bounced */
		break;
	case SCHEDULER_HOLD:
	case SCHEDULER_RELEASE:
		set_held(q, action == SCHEDULER_HOLD);
		break;
	}
}

int scheduler_act(struct scheduler *sched, const char *id,
		  enum scheduler_action action)
{
	struct queued *q = find(sched, id);
	if (q == NULL)
		return -1;
	act(q, action);
	return 0;
}

int scheduler_suspend(struct scheduler *sched, const char *domain, time_t until)
{
	if (domain_suspend_set(sched->suspended, domain, until) == -1)
		return -1;
	log_event(LOG_LEVEL_INFO, "suspended", LOG_S("domain", domain),
		  LOG_I("until", (long long)until));
	/* A timed suspension ends by itself: the messages waiting for it
	 * have their timer set to its end when they next run. */
	if (until != 0 && sweep_start(sched, domain) == -1)
		return -1;
	return 0;
}

int scheduler_resume(struct scheduler *sched, const char *domain)
{
	int rc = domain_suspend_resume(sched->suspended, domain);
	if (rc != 0)
		return rc;
	log_event(LOG_LEVEL_INFO, "resumed", LOG_S("domain", domain));
	return sweep_start(sched, domain);
}

const struct domain_suspend *
scheduler_suspensions(const struct scheduler *sched)
{
	return sched->suspended;
}

bool scheduler_domain_paused(const struct scheduler *sched, const char *domain,
			     time_t *until)
{
	return relay_domain_paused(sched->relay, domain, until);
}

struct scheduler_cursor *scheduler_cursor_new(struct scheduler *sched)
{
	struct scheduler_cursor *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->sched = sched;
	c->at = sched->oldest;
	c->next = sched->cursors;
	if (sched->cursors != NULL)
		sched->cursors->prev = c;
	sched->cursors = c;
	return c;
}

const struct spool_envelope *
scheduler_cursor_next(struct scheduler_cursor *cursor)
{
	while (cursor->at != NULL) {
		struct queued *q = cursor->at;
		cursor->at = q->prev;
		if (!q->deleted) {
			cursor->last = q;
			return q->env;
		}
	}
	return NULL;
}

void scheduler_cursor_act(struct scheduler_cursor *cursor,
			  enum scheduler_action action)
{
	if (cursor->last != NULL && !cursor->last->deleted)
		act(cursor->last, action);
}

void scheduler_cursor_free(struct scheduler_cursor *cursor)
{
	if (cursor == NULL)
		return;
	struct scheduler *sched = cursor->sched;
	if (cursor->prev != NULL)
		cursor->prev->next = cursor->next;
	else
		sched->cursors = cursor->next;
	if (cursor->next != NULL)
		cursor->next->prev = cursor->prev;
	free(cursor);
}

int scheduler_pickup(struct scheduler *sched, const char *id)
{
	for (struct queued *q = sched->messages; q != NULL; q = q->next)
		if (strcmp(q->env->id, id) == 0) {
			errno = EEXIST;
			return -1;
		}
	struct spool_envelope *env = spool_load(sched->srv->spool, id);
	if (env == NULL)
		return -1;
	scheduler_enqueue(sched, env, SCHEDULER_NEW);
	return 0;
}
