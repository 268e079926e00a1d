/*
 * The queue in memory (see scheduler.h).
 *
 * Every queued message has its envelope, packed (spool_envelope_pack:
 * one allocation, shared texts interned in the spool's table), a phase
 * per recipient (queued.h: idle as recorded, delivering, settling, or
 * its DSN owed)
 * and its place in the due heap (due_heap.h) for its next deferred
 * recipient: one timer serves the whole queue, armed for the earliest. An
 * attempt ends in an outcome per recipient; the outcomes of one run of the
 * message (the attempts one queued_run started) that call for a DSN are settled
 * together by notice.c, which queues the DSN before the outcomes are
 * recorded. Only when every recipient is done and recorded are the
 * message's files removed.
 *
 * Local recipients are delivered here, at most MAX_LOCAL_DELIVERIES at a
 * time; remote ones go to relay.c, which groups them by destination, and
 * so do local ones when local_transport names an LMTP server.
 *
 * The operator's hand (scheduler_control.c): a held message
 * (SPOOL_FLAG_HELD, recorded like any flag) is not run at all, so neither
 * tried nor expired; a recipient whose domain is suspended
 * (domain_suspend.h) is skipped the same way, its message due again at
 * the suspension's end when it has one. Control listings, sweeps and the
 * compaction pass walk the list with cursors, which queued_free moves
 * past the message it frees.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/bounce.h"
#include "facteur/config.h"
#include "facteur/control_proto.h"
#include "facteur/deliver.h"
#include "facteur/domain_suspend.h"
#include "facteur/due_heap.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/notice.h"
#include "facteur/policy.h"
#include "facteur/queued.h"
#include "facteur/relay.h"
#include "facteur/scheduler.h"
#include "facteur/scheduler_internal.h"
#include "facteur/server.h"
#include "facteur/spool.h"
#include "facteur/spool_strings.h"
#include "facteur/status_code.h"

#define MAX_LOCAL_DELIVERIES 64

/* One local recipient's delivery. */
struct local_job {
	struct queued *q;
	struct run *run;
	size_t index;
	char *mailbox;
};

struct run;

void queued_run(struct queued *q);
static void run_release(struct run *run);
static void queued_add(struct scheduler *sched, struct spool_envelope *env,
		       enum scheduler_origin origin);

unsigned scheduler_backoff(unsigned retry_min, unsigned retry_max,
			   unsigned attempts)
{
	unsigned long long delay = retry_min ? retry_min : 1;
	for (unsigned i = 1; i < attempts && delay < retry_max; i++)
		delay *= 2;
	if (delay > retry_max)
		delay = retry_max;
	return (unsigned)delay;
}

/* The backoff with up to 10% of random jitter, so that messages deferred
 * together do not all come back in the same second. */
static unsigned backoff_with_jitter(const struct config *cfg, unsigned attempts)
{
	unsigned delay =
	    scheduler_backoff(cfg->retry_min, cfg->retry_max, attempts);
	unsigned spread = delay / 10;
	if (spread > 0)
		delay += (unsigned)(random() % (spread + 1));
	return delay;
}

/* ---- messages ---- */

static void ready_push(struct scheduler *sched, struct queued *q)
{
	if (q->ready)
		return;
	q->ready = true;
	q->ready_next = NULL;
	*sched->ready_tail = q;
	sched->ready_tail = &q->ready_next;
}

/* Resume waiting messages while local delivery slots are free. */
static void ready_drain(struct scheduler *sched)
{
	while (sched->ready_head != NULL && !sched->stopping &&
	       sched->deliveries < MAX_LOCAL_DELIVERIES) {
		struct queued *q = sched->ready_head;
		sched->ready_head = q->ready_next;
		if (sched->ready_head == NULL)
			sched->ready_tail = &sched->ready_head;
		q->ready = false;
		queued_run(q);
	}
}

/* At most this much of the loop's time a turn for a sweep or for the
 * messages that fall due together, checked every few messages. */
#define SLICE_USEC 1000
#define SLICE_CHECK_EVERY 16

long long scheduler_monotonic_usec(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0;
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Has a slice that started at `start` and did `done` things spent its
 * time? Checked every SLICE_CHECK_EVERY things only. */
bool scheduler_slice_spent(long long start, size_t done)
{
	if (done % SLICE_CHECK_EVERY != 0)
		return false;
	long long now = scheduler_monotonic_usec();
	return now == 0 || now - start >= SLICE_USEC;
}

struct server *queued_server(const struct queued *q)
{
	return q->sched->srv;
}

/* The state facteur_queue_messages{state} counts q under: the listing's
 * classification, so that the gauge and `facteurctl queue --state`
 * agree; a held message is held whatever its recipients. */
static enum metrics_queue_state gauge_state(const struct queued *q)
{
	static const enum metrics_queue_state by_state[] = {
	    [CONTROL_STATE_PENDING] = METRICS_QUEUE_PENDING,
	    [CONTROL_STATE_DEFERRED] = METRICS_QUEUE_DEFERRED,
	    [CONTROL_STATE_HELD] = METRICS_QUEUE_HELD,
	};
	bool held = (q->env->flags & SPOOL_FLAG_HELD) != 0;
	return by_state[control_proto_state(q->env, held)];
}

/* q is counted again after its recipients' states or its flags changed
 * (or first, as it joins the queue), so that a scrape reads the counts
 * instead of walking the queue. */
void queued_count(struct queued *q)
{
	struct scheduler *sched = q->sched;
	enum metrics_queue_state state = gauge_state(q);
	if (q->counted != 0)
		sched->state_counts[q->counted - 1]--;
	sched->state_counts[state]++;
	q->counted = (uint8_t)(state + 1);
}

static void queued_free(struct queued *q)
{
	struct scheduler *sched = q->sched;
	if (q->ready) {
		struct queued **at = &sched->ready_head;
		while (*at != q)
			at = &(*at)->ready_next;
		*at = q->ready_next;
		if (*at == NULL)
			sched->ready_tail = at;
	}
	for (struct scheduler_cursor *c = sched->cursors; c != NULL;
	     c = c->next)
		if (c->at == q)
			c->at = q->prev; /* the next newer one */
		else if (c->last == q)
			c->last = NULL;
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		sched->messages = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	else
		sched->oldest = q->prev;
	sched->count--;
	metrics.queue_messages = sched->count;
	if (q->counted != 0)
		sched->state_counts[q->counted - 1]--;
	due_heap_remove(&sched->due, &q->due);
	due_heap_remove(&sched->arrivals, &q->arrival);
	notice_free_owed(q);
	for (size_t i = 0; i < q->env->rcpt_count; i++)
		spool_strings_put(sched->strings, q->rcpt[i].last_relay);
	spool_envelope_free(q->env);
	free(q);
}

/* Forget a message once all its recipients are done and recorded (or
 * it was deleted) and nothing of it is in flight. */
bool queued_finish_if_done(struct queued *q)
{
	if (q->in_flight > 0 || (!q->deleted && !spool_envelope_done(q->env)))
		return false;
	log_event(LOG_LEVEL_DEBUG, "removed", LOG_S("queue_id", q->env->id));
	if (q->deleted)
		spool_delete(q->sched->srv->spool, q->env->id);
	else
		spool_remove(q->sched->srv->spool, q->env->id);
	queued_free(q);
	return true;
}

void queued_settled(struct queued *q)
{
	struct scheduler *sched = q->sched;
	if (!queued_finish_if_done(q))
		queued_run(q);
	ready_drain(sched);
}

static void queued_due_at(struct queued *q, time_t when, time_t now);

/* As queued_settled, but q runs from the due timer, in its slice: a
 * flags record ends by the thousand when the operator releases a
 * domain's million messages. */
static void queued_settled_soon(struct queued *q)
{
	struct scheduler *sched = q->sched;
	time_t now = time(NULL);
	/* a held message would not run: nothing to make due */
	if (!queued_finish_if_done(q) && !(q->env->flags & SPOOL_FLAG_HELD))
		queued_due_at(q, now, now);
	ready_drain(sched);
}

/* ---- outcomes ---- */

struct record {
	struct queued *q;
	size_t index; /* a recipient, or RECORD_FLAGS */
};

#define RECORD_FLAGS SIZE_MAX

static void on_recorded(int error, void *arg)
{
	struct record *rec = arg;
	struct queued *q = rec->q;
	if (error != 0)
		log_event(LOG_LEVEL_ERROR, "spool_error",
			  LOG_S("queue_id", q->env->id),
			  LOG_S("reason", strerror(error)));
	bool flags = rec->index == RECORD_FLAGS;
	if (!flags)
		queued_enter_phase(q, rec->index, RCPT_PHASE_IDLE);
	q->in_flight--;
	q->sched->records--;
	free(rec);
	if (flags)
		queued_settled_soon(q);
	else
		queued_settled(q);
}

static void record_start(struct queued *q, size_t index)
{
	struct record *rec = malloc(sizeof *rec);
	if (rec == NULL)
		fatal("scheduler: out of memory for a spool record");
	rec->q = q;
	rec->index = index;
	q->in_flight++;
	q->sched->records++;
	if (index == RECORD_FLAGS)
		spool_record_flags(q->sched->srv->spool, q->env, on_recorded,
				   rec);
	else
		spool_record_rcpt(q->sched->srv->spool, q->env, index,
				  on_recorded, rec);
}

void queued_record_rcpt(struct queued *q, size_t index)
{
	record_start(q, index);
}

void queued_record_flags(struct queued *q)
{
	record_start(q, RECORD_FLAGS);
}

void queued_write_started(struct queued *q)
{
	q->sched->records++;
}

void queued_write_done(struct queued *q)
{
	q->sched->records--;
}

bool queued_stopping(const struct queued *q)
{
	return q->sched->stopping;
}

static const char *phase_name(enum rcpt_phase phase)
{
	switch (phase) {
	case RCPT_PHASE_IDLE:
		return "idle";
	case RCPT_PHASE_DELIVERING:
		return "delivering";
	case RCPT_PHASE_SETTLING:
		return "settling";
	case RCPT_PHASE_OWED:
		return "owed";
	default:
		return "?";
	}
}

void queued_enter_phase(struct queued *q, size_t index, enum rcpt_phase phase)
{
	if (q->rcpt[index].phase == phase)
		return;
	log_event(LOG_LEVEL_DEBUG, "rcpt_phase", LOG_S("queue_id", q->env->id),
		  LOG_I("rcpt", (long long)index),
		  LOG_S("from", phase_name(q->rcpt[index].phase)),
		  LOG_S("to", phase_name(phase)));
	q->rcpt[index].phase = phase;
}

void queued_set_outcome(const struct config *cfg, struct queued *q,
			struct spool_rcpt *r, enum rcpt_state state,
			const char *dsn, const char *reason)
{
	time_t now = time(NULL);
	r->attempts++;
	r->state = state;
	r->updated = now;
	queued_count(q);
	snprintf(r->dsn, sizeof r->dsn, "%s", dsn ? dsn : "");
	/* out of memory: the outcome stands without its diagnostic */
	(void)spool_envelope_set_reason(q->env, (size_t)(r - q->env->rcpts),
					reason);
	if (state == RCPT_DEFERRED) {
		time_t end = q->env->arrival + (time_t)cfg->queue_lifetime;
		r->next_attempt = now + backoff_with_jitter(cfg, r->attempts);
		/* Never wait past the end of the queue lifetime. */
		if (r->next_attempt > end)
			r->next_attempt = end;
	}
}

static const char *outcome_event(enum rcpt_state state)
{
	switch (state) {
	case RCPT_DELIVERED:
		return "delivered";
	case RCPT_BOUNCED:
		return "bounced";
	default:
		return "deferred";
	}
}

/* facteur_transport_deliveries_total: what a transport's attempt gave. */
static void count_transport(enum metrics_transport transport,
			    enum rcpt_state state)
{
	enum metrics_result result = state == RCPT_DELIVERED ? METRICS_DELIVERED
				     : state == RCPT_BOUNCED ? METRICS_BOUNCED
							     : METRICS_DEFERRED;
	metrics.transport_deliveries[transport][result]++;
}

void queued_count_outcome(const struct queued *q, enum rcpt_state state)
{
	if (state == RCPT_DELIVERED) {
		metrics.deliveries_delivered++;
		metrics_observe_delivery_delay(
		    (double)(time(NULL) - q->env->arrival));
	} else if (state == RCPT_BOUNCED)
		metrics.deliveries_bounced++;
	else
		metrics.deliveries_deferred++;
}

/* `where` is "mailbox" for local deliveries, "relay" for remote ones;
 * `dsn` the status to log; `tls` the connection's TLS ("none" too) when
 * a server answered, else NULL; for relay outcomes `ro` (else NULL)
 * adds the TLS policy and whether the certificate was verified. */
static void log_outcome_tls(const char *event, const struct queued *q,
			    const struct spool_rcpt *r, const char *dsn,
			    const char *where, const char *place,
			    const char *tls, const struct relay_outcome *ro)
{
	enum log_level level =
	    r->state == RCPT_DELIVERED ? LOG_LEVEL_INFO : LOG_LEVEL_WARN;
	struct log_field f[10] = {
	    LOG_S("queue_id", q->env->id),
	    LOG_S("rcpt", r->address),
	    LOG_S(where, place),
	    LOG_S("dsn", dsn),
	    LOG_I("delay", time(NULL) - q->env->arrival),
	    LOG_I("attempts", r->attempts),
	};
	size_t n = 6;
	if (tls != NULL)
		f[n++] = (struct log_field)LOG_S("tls", tls);
	if (ro != NULL && ro->tls_policy != NULL)
		f[n++] = (struct log_field)LOG_S("tls_policy", ro->tls_policy);
	if (ro != NULL && tls != NULL)
		f[n++] = (struct log_field)LOG_S("verified",
						 ro->verified ? "yes" : "no");
	if (r->reason != NULL)
		f[n++] = (struct log_field)LOG_S("reason", r->reason);
	log_fields(level, event, f, n);
}

static void log_outcome_as(const char *event, const struct queued *q,
			   const struct spool_rcpt *r, const char *dsn,
			   const char *where, const char *place)
{
	log_outcome_tls(event, q, r, dsn, where, place, NULL, NULL);
}

void queued_log_outcome(const char *event, const struct queued *q,
			const struct spool_rcpt *r, const char *where,
			const char *place)
{
	log_outcome_as(event, q, r, r->dsn, where, place);
}

/* ---- runs ---- */

/*
 * The attempts that one queued_run started for a message, and the
 * recipients it expired. Outcomes that call for a DSN wait in the run
 * until its last attempt ends and are settled together, so that one run
 * sends the sender at most one notice of each kind, listing every
 * recipient it reports; other outcomes are settled at once.
 */
struct run {
	struct queued *q;
	unsigned open; /* attempts not ended, and queued_run's own hold */
	size_t *held;  /* outcomes waiting for the run's end (settling) */
	size_t held_count;
};

static struct run *run_new(struct queued *q)
{
	struct run *run = calloc(1, sizeof *run);
	size_t n = q->env->rcpt_count ? q->env->rcpt_count : 1;
	if (run == NULL || (run->held = malloc(n * sizeof *run->held)) == NULL)
		fatal("scheduler: out of memory");
	run->q = q;
	run->open = 1;
	return run;
}

/* Outcomes from one of the run's attempts (a recipient appears in one
 * attempt of a run at most, so `held` has room). Returns how many were
 * settled at once (not held). */
static size_t run_settle(struct run *run, const size_t *rcpts, size_t count)
{
	struct queued *q = run->q;
	size_t *now = malloc((count ? count : 1) * sizeof *now);
	size_t n = 0;
	if (now == NULL)
		fatal("scheduler: out of memory");
	for (size_t i = 0; i < count; i++) {
		enum bounce_kind kind;
		queued_enter_phase(q, rcpts[i], RCPT_PHASE_SETTLING);
		if (bounce_outcome_notice(q->env->sender,
					  &q->env->rcpts[rcpts[i]], &kind))
			run->held[run->held_count++] = rcpts[i];
		else
			now[n++] = rcpts[i];
	}
	if (n > 0)
		notice_settle(q, now, n, false, NULL, 0);
	free(now);
	return n;
}

/* At exit: an attempt abandoned; its run's held outcomes stay unrecorded
 * (tried again at the next start). */
static void run_forget(struct run *run)
{
	if (--run->open > 0)
		return;
	free(run->held);
	free(run);
}

/* One of the run's attempts is over (after run_settle of its outcomes,
 * if it had any): the last one settles what the run held. */
static void run_release(struct run *run)
{
	if (--run->open > 0)
		return;
	if (run->held_count > 0)
		notice_settle(run->q, run->held, run->held_count, false, NULL,
			      0);
	free(run->held);
	free(run);
}

/* An attempt's hold on q ends once its outcomes are logged. The
 * settlement of those outcomes found q held and left moving it on to
 * this release. */
static void queued_release(struct queued *q, size_t settled)
{
	q->in_flight--;
	if (settled > 0 && q->in_flight == 0)
		queued_settled(q);
}

/* ---- local delivery ---- */

static void on_delivered(enum deliver_result result, const char *dsn,
			 const char *reason, void *arg)
{
	struct local_job *job = arg;
	struct queued *q = job->q;
	struct scheduler *sched = q->sched;
	struct spool_rcpt *r = &q->env->rcpts[job->index];
	enum rcpt_state state = result == DELIVER_OK	     ? RCPT_DELIVERED
				: result == DELIVER_PERMFAIL ? RCPT_BOUNCED
							     : RCPT_DEFERRED;
	sched->deliveries--;
	queued_set_outcome(sched->srv->cfg, q, r, state, dsn,
			   state == RCPT_DELIVERED ? NULL : reason);
	queued_count_outcome(q, state);
	count_transport(METRICS_TRANSPORT_LOCAL, state);
	size_t index = job->index;
	struct run *run = job->run;
	/* The job's hold on q lasts until the outcome is logged, after its
	 * record is written: a line saying delivered is never followed by
	 * a second delivery after a kill -9. */
	size_t settled = run_settle(run, &index, 1);
	spool_write_ahead(sched->srv->spool);
	queued_log_outcome(outcome_event(state), q, r, "mailbox", job->mailbox);
	free(job->mailbox);
	free(job);
	queued_release(q, settled);
	run_release(run);
}

/* An outcome start_local reached without a delivery: settled, its
 * record written ahead, then logged, as a delivery's outcome is. The
 * run's hold keeps q. */
static void settle_then_log(struct run *run, size_t index, const char *event,
			    const char *where, const char *place)
{
	struct queued *q = run->q;
	run_settle(run, &index, 1);
	spool_write_ahead(q->sched->srv->spool);
	queued_log_outcome(event, q, &q->env->rcpts[index], where, place);
}

static void start_local(struct queued *q, size_t index, struct run *run)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	struct spool_rcpt *r = &q->env->rcpts[index];
	char unique[SPOOL_ID_LEN + 32];
	struct spool_body body;

	queued_enter_phase(q, index, RCPT_PHASE_DELIVERING);
	size_t root_len = 0;
	char *mailbox = policy_mailbox_path(cfg, r->address, &root_len);
	if (mailbox == NULL && errno == EINVAL) {
		/* Only a spool from before every address was checked holds
		 * such a recipient: it can never be delivered. */
		queued_set_outcome(cfg, q, r, RCPT_BOUNCED,
				   status_code_str(STATUS_BAD_MAILBOX),
				   "the address cannot name a mailbox");
		queued_count_outcome(q, RCPT_BOUNCED);
		count_transport(METRICS_TRANSPORT_LOCAL, RCPT_BOUNCED);
		settle_then_log(run, index, "bounced", "mailbox", "");
		return;
	}
	struct local_job *job = calloc(1, sizeof *job);
	if (job == NULL || mailbox == NULL ||
	    spool_body_open(sched->srv->spool, q->env, &body) == -1) {
		bool named = job != NULL && mailbox != NULL;
		free(job);
		free(mailbox);
		queued_set_outcome(cfg, q, r, RCPT_DEFERRED,
				   status_code_str(STATUS_LOCAL_ERROR),
				   named ? "cannot read the queued message"
					 : "cannot name the mailbox");
		queued_count_outcome(q, RCPT_DEFERRED);
		count_transport(METRICS_TRANSPORT_LOCAL, RCPT_DEFERRED);
		settle_then_log(run, index, "deferred", "mailbox", "");
		return;
	}
	job->q = q;
	job->run = run;
	job->index = index;
	job->mailbox = mailbox;
	snprintf(unique, sizeof unique, "F%sR%zu", q->env->id, index);
	struct deliver_request req = {
	    .format = cfg->mailbox_format,
	    .mailbox = mailbox,
	    .root_len = root_len,
	    .body = body,
	    .sender = q->env->sender,
	    .recipient = r->address,
	    .unique = unique,
	    .arrival = q->env->arrival,
	    .hostname = cfg->hostname,
	    /* A crash may have come after the file was linked into the
	     * mailbox and before the outcome was recorded. */
	    .check_existing = q->recovered || r->attempts > 0,
	};
	int started =
	    deliver_start(sched->srv->deliver, &req, on_delivered, job);
	(void)close(body.fd); /* read-only; the delivery has its own */
	if (started == -1) {
		free(job->mailbox);
		free(job);
		queued_enter_phase(q, index, RCPT_PHASE_IDLE);
		ready_push(sched, q); /* out of memory: try again later */
		return;
	}
	q->in_flight++;
	sched->deliveries++;
	run->open++;
}

/* ---- relaying ---- */

static void run_forget(struct run *run);

/* One relay attempt of the run is over. */
static void on_relayed(enum relay_end end, const struct relay_outcome *out,
		       size_t count, void *arg)
{
	struct run *run = arg;
	struct queued *q = run->q;
	if (end == RELAY_END_FREED) {
		q->in_flight--;
		run_forget(run);
		return;
	}
	const struct config *cfg = q->sched->srv->cfg;
	size_t *rcpts = malloc((count ? count : 1) * sizeof *rcpts);
	if (rcpts == NULL)
		fatal("scheduler: out of memory");
	for (size_t i = 0; i < count; i++) {
		size_t index = out[i].rcpt;
		rcpts[i] = index;
		if (end == RELAY_END_DROPPED) {
			/* never started: tried again after the restart */
			queued_enter_phase(q, index, RCPT_PHASE_IDLE);
			continue;
		}
		struct spool_rcpt *r = &q->env->rcpts[index];
		queued_set_outcome(cfg, q, r, out[i].state, out[i].dsn,
				   out[i].reason);
		/* a paused destination: due when the pause ends */
		if (r->state == RCPT_DEFERRED && out[i].retry_at != 0 &&
		    out[i].retry_at < r->next_attempt)
			r->next_attempt = out[i].retry_at;
		queued_count_outcome(q, out[i].state);
		count_transport(r->local ? METRICS_TRANSPORT_LMTP
					 : METRICS_TRANSPORT_RELAY,
				out[i].state);
		if (out[i].answered) {
			struct spool_strings *strings = q->sched->strings;
			spool_strings_put(strings, q->rcpt[index].last_relay);
			q->rcpt[index].last_relay =
			    spool_strings_get(strings, out[i].relay);
		}
	}
	if (end == RELAY_END_DONE) {
		/* Logged once their records are written, the attempt's hold
		 * on q kept until then, as for a local delivery. */
		size_t settled = run_settle(run, rcpts, count);
		spool_write_ahead(q->sched->srv->spool);
		for (size_t i = 0; i < count; i++) {
			const struct spool_rcpt *r = &q->env->rcpts[rcpts[i]];
			log_outcome_tls(outcome_event(out[i].state), q, r,
					r->dsn, "relay", out[i].relay,
					out[i].answered ? out[i].tls : NULL,
					&out[i]);
		}
		queued_release(q, settled);
	} else {
		q->in_flight--;
	}
	free(rcpts);
	run_release(run);
}

/* Hand due recipients of q to the relay: remote ones (relay_send, one
 * attempt per destination) or, when local_transport names an LMTP
 * server, local ones (relay_send_lmtp); the outcomes come back to
 * on_relayed either way. */
static void start_relayed(struct queued *q, const size_t *due, size_t count,
			  struct run *run, bool lmtp)
{
	for (size_t i = 0; i < count; i++)
		queued_enter_phase(q, due[i], RCPT_PHASE_DELIVERING);
	size_t attempts = (lmtp ? relay_send_lmtp : relay_send)(
	    q->sched->relay, q->env, due, count, on_relayed, run);
	q->in_flight += attempts;
	run->open += attempts;
}

/* ---- the queue ---- */

/*
 * The delivery time limit is over: the recipient is bounced. It keeps its
 * last temporary status as it was (4.4.7 when it had none), which its DSN
 * reports with Action: failed (RFC 3463 §2: a persistent transient
 * failure that caused abandonment); the log line says it made permanent.
 */
static void expire(struct queued *q, size_t index, struct run *run)
{
	const struct config *cfg = q->sched->srv->cfg;
	struct spool_rcpt *r = &q->env->rcpts[index];
	char dsn[sizeof r->dsn];
	snprintf(dsn, sizeof dsn, "%s",
		 r->dsn[0] == '4' ? r->dsn : status_code_str(STATUS_EXPIRED));
	char reason[600];
	snprintf(reason, sizeof reason, "delivery time expired%s%s",
		 r->reason ? ": " : "", r->reason ? r->reason : "");
	queued_set_outcome(cfg, q, r, RCPT_BOUNCED, dsn, reason);
	r->attempts--; /* expiry is not an attempt */
	queued_count_outcome(q, RCPT_BOUNCED);
	dsn[0] = '5';
	const char *place =
	    q->rcpt[index].last_relay ? q->rcpt[index].last_relay : "";
	/* Logged once its record is written, as an attempt's outcome. */
	run_settle(run, &index, 1);
	spool_write_ahead(q->sched->srv->spool);
	if (r->local && cfg->local_transport.kind == LMTP_NONE) {
		char mailbox_path[4096] = "";
		char *mailbox = policy_mailbox_path(cfg, r->address, NULL);
		if (mailbox != NULL)
			snprintf(mailbox_path, sizeof mailbox_path, "%s",
				 mailbox);
		free(mailbox);
		log_outcome_as("expired", q, r, dsn, "mailbox", mailbox_path);
	} else {
		log_outcome_as("expired", q, r, dsn, "relay", place);
	}
}

static void due_timer_arm(struct scheduler *sched, time_t now)
{
	const struct due_entry *first = due_heap_first(&sched->due);
	if (first == NULL)
		return;
	struct timeval tv = {first->due > now ? first->due - now : 0, 0};
	if (evtimer_add(sched->due_timer, &tv) == -1)
		fatal("scheduler: cannot add a timer");
}

/* q runs again at `when`; the timer moves if q is now the first due. */
static void queued_due_at(struct queued *q, time_t when, time_t now)
{
	struct scheduler *sched = q->sched;
	if (due_heap_set(&sched->due, &q->due, when) == -1)
		fatal("scheduler: out of memory for message %s", q->env->id);
	if (due_heap_first(&sched->due) == &q->due)
		due_timer_arm(sched, now);
}

#define QUEUED_OF_DUE(e)                                                       \
	((struct queued *)((char *)(e)-offsetof(struct queued, due)))

/* Every message due by now runs, a slice of them a loop turn (the rest
 * on the next, after the sessions' I/O); those it sets due again wait
 * for the next turn, counted out so that one due at once cannot spin
 * here. */
static void on_due_timer(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *sched = arg;
	time_t now = time(NULL);
	long long start = scheduler_monotonic_usec();
	size_t ran = 0;
	struct due_entry *e;
	(void)fd;
	(void)what;
	for (size_t n = sched->due.count;
	     n > 0 && (e = due_heap_take_due(&sched->due, now)) != NULL; n--) {
		queued_run(QUEUED_OF_DUE(e));
		if (scheduler_slice_spent(start, ++ran))
			break;
	}
	due_timer_arm(sched, now);
}

/* A delay notice, once per message, to the recipients that asked for
 * one (NOTIFY=DELAY) and are still deferred after delay_notice. */
static void maybe_notify_delay(struct queued *q, time_t now)
{
	const struct config *cfg = q->sched->srv->cfg;
	if (cfg->delay_notice == 0 ||
	    (q->env->flags & SPOOL_FLAG_DELAY_NOTIFIED) ||
	    now < q->env->arrival + (time_t)cfg->delay_notice)
		return;
	size_t *delayed = malloc(q->env->rcpt_count * sizeof *delayed);
	if (delayed == NULL)
		return;
	size_t n = 0;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		const struct spool_rcpt *r = &q->env->rcpts[i];
		if (r->state == RCPT_DEFERRED &&
		    q->rcpt[i].phase == RCPT_PHASE_IDLE &&
		    bounce_wanted(q->env->sender, r, BOUNCE_DELAY))
			delayed[n++] = i;
	}
	if (n > 0) {
		q->env->flags |= SPOOL_FLAG_DELAY_NOTIFIED;
		notice_settle(q, NULL, 0, true, delayed, n);
	}
	free(delayed);
}

/*
 * Start what is due in one message: pending recipients, and deferred ones
 * whose time has come; expire those past queue_lifetime. Then arm the
 * timer for the next deferred one.
 */
void queued_run(struct queued *q)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	time_t now = time(NULL);
	time_t next = 0;

	if (sched->stopping || q->deleted || (q->env->flags & SPOOL_FLAG_HELD))
		return;
	size_t *remote = malloc(q->env->rcpt_count * sizeof *remote);
	size_t *lmtp = malloc(q->env->rcpt_count * sizeof *lmtp);
	if (remote == NULL || lmtp == NULL)
		fatal("scheduler: out of memory");
	struct run *run = run_new(q);
	size_t nremote = 0, nlmtp = 0;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[i];
		if (q->rcpt[i].phase != RCPT_PHASE_IDLE)
			continue;
		if (r->state == RCPT_DELIVERED || r->state == RCPT_BOUNCED)
			continue;
		time_t until = 0;
		if (r->state == RCPT_DEFERRED && r->next_attempt > now)
			until = r->next_attempt;
		else if (domain_suspend_active(sched->suspended, r->address,
					       now, &until) &&
			 until == 0)
			continue; /* until resumed */
		if (until != 0) {
			if (next == 0 || until < next)
				next = until;
			continue;
		}
		if (r->state == RCPT_DEFERRED &&
		    now >= q->env->arrival + (time_t)cfg->queue_lifetime) {
			expire(q, i, run);
			continue;
		}
		if (!r->local) {
			remote[nremote++] = i;
			continue;
		}
		if (cfg->local_transport.kind != LMTP_NONE) {
			lmtp[nlmtp++] = i;
			continue;
		}
		if (sched->deliveries >= MAX_LOCAL_DELIVERIES) {
			ready_push(sched, q);
			continue;
		}
		start_local(q, i, run);
	}
	if (nremote > 0)
		start_relayed(q, remote, nremote, run, false);
	if (nlmtp > 0)
		start_relayed(q, lmtp, nlmtp, run, true);
	free(remote);
	free(lmtp);
	run_release(run);
	maybe_notify_delay(q, now);
	if (next != 0)
		queued_due_at(q, next, now);
}

/* facteur_queue_oldest_seconds, asked at each scrape: the first of the
 * arrival heap. */
static double oldest_age(void *arg)
{
	const struct scheduler *sched = arg;
	const struct due_entry *first = due_heap_first(&sched->arrivals);
	return first == NULL ? 0.0 : (double)(time(NULL) - first->due);
}

/* facteur_queue_messages{state}, asked at each scrape: the counts kept
 * as messages change. A build with assertions checks them against a
 * walk of the queue, so that a change of state the counts missed fails
 * the tests that scrape. */
static void queue_states(void *arg, uint64_t *counts)
{
	const struct scheduler *sched = arg;
	for (size_t i = 0; i < METRICS_QUEUE_STATE_COUNT; i++)
		counts[i] = sched->state_counts[i];
#ifndef NDEBUG
	uint64_t walked[METRICS_QUEUE_STATE_COUNT] = {0};
	for (const struct queued *q = sched->messages; q != NULL; q = q->next)
		walked[gauge_state(q)]++;
	for (size_t i = 0; i < METRICS_QUEUE_STATE_COUNT; i++)
		if (walked[i] != counts[i])
			fatal("scheduler: queue state %zu counted %llu, "
			      "walked %llu",
			      i, (unsigned long long)counts[i],
			      (unsigned long long)walked[i]);
#endif
}

/* How often the spool is asked whether its oldest segment needs its live
 * messages moved, and how many one pass may move. */
#define COMPACT_INTERVAL 10
#define COMPACT_BATCH 20000

static void compact_end(struct scheduler *sched)
{
	scheduler_cursor_free(sched->compacting);
	sched->compacting = NULL;
}

/* Offer the spool the messages it may move: only idle ones, whose state
 * in memory is exactly what their records say; oldest first, as the
 * oldest segment holds the oldest messages; a slice a loop turn. */
static void on_compact_slice(evutil_socket_t fd, short what, void *arg)
{
	static const struct timeval zero = {0, 0};
	struct scheduler *sched = arg;
	struct spool *spool = sched->srv->spool;
	long long start = scheduler_monotonic_usec();
	size_t visited = 0;
	(void)fd;
	(void)what;
	while (!sched->stopping && sched->compact_moved < COMPACT_BATCH &&
	       spool_wants_compaction(spool) &&
	       scheduler_cursor_next(sched->compacting) != NULL) {
		struct queued *q = sched->compacting->last;
		if (q->in_flight == 0 && spool_compact(spool, q->env) == 1)
			sched->compact_moved++;
		if (scheduler_slice_spent(start, ++visited)) {
			if (evtimer_add(sched->compact_slice, &zero) == -1)
				fatal("scheduler: cannot add a timer");
			return;
		}
	}
	compact_end(sched);
}

/* Every COMPACT_INTERVAL seconds: a pass, when the spool wants one and
 * none is under way. */
static void on_compact(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *sched = arg;
	(void)fd;
	(void)what;
	if (sched->compacting != NULL || sched->stopping ||
	    !spool_wants_compaction(sched->srv->spool))
		return;
	sched->compacting = scheduler_cursor_new(sched);
	if (sched->compacting == NULL)
		return; /* out of memory: the next tick tries again */
	sched->compact_moved = 0;
	on_compact_slice(-1, 0, sched);
}

/* The suspensions of the last run. A file that cannot be read is
 * logged and nothing is suspended: mail keeps flowing. NULL only when
 * memory runs out. */
static struct domain_suspend *open_suspensions(const char *spool_dir)
{
	char err[512];
	size_t skipped = 0;
	struct domain_suspend *ds =
	    domain_suspend_open(spool_dir, &skipped, err, sizeof err);
	if (ds == NULL) {
		log_event(LOG_LEVEL_ERROR, "suspend_error",
			  LOG_S("reason", err));
		return domain_suspend_new();
	}
	if (skipped > 0)
		log_event(LOG_LEVEL_WARN, "suspend_error",
			  LOG_S("reason", "malformed lines skipped"),
			  LOG_I("lines", skipped));
	return ds;
}

struct scheduler *scheduler_new(struct server *srv)
{
	static const struct timeval every = {COMPACT_INTERVAL, 0};
	struct scheduler *sched = calloc(1, sizeof *sched);
	if (sched == NULL)
		return NULL;
	sched->compact_timer =
	    event_new(srv->base, -1, EV_PERSIST, on_compact, sched);
	sched->due_timer = evtimer_new(srv->base, on_due_timer, sched);
	sched->compact_slice = evtimer_new(srv->base, on_compact_slice, sched);
	if (sched->compact_timer == NULL || sched->due_timer == NULL ||
	    sched->compact_slice == NULL ||
	    event_add(sched->compact_timer, &every) == -1) {
		if (sched->compact_timer != NULL)
			event_free(sched->compact_timer);
		if (sched->due_timer != NULL)
			event_free(sched->due_timer);
		if (sched->compact_slice != NULL)
			event_free(sched->compact_slice);
		free(sched);
		return NULL;
	}
	sched->srv = srv;
	sched->ready_tail = &sched->ready_head;
	sched->strings = spool_strings_table(srv->spool);
	sched->suspended = open_suspensions(srv->cfg->spool_dir);
	sched->relay = sched->suspended ? relay_new(srv) : NULL;
	if (sched->relay == NULL) {
		domain_suspend_free(sched->suspended);
		event_free(sched->compact_timer);
		event_free(sched->due_timer);
		event_free(sched->compact_slice);
		free(sched);
		return NULL;
	}
	metrics_set_queue_age_source(oldest_age, sched);
	metrics_set_queue_state_source(queue_states, sched);
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	return sched;
}

void scheduler_free(struct scheduler *sched)
{
	if (sched == NULL)
		return;
	metrics_set_queue_age_source(NULL, NULL);
	metrics_set_queue_state_source(NULL, NULL);
	scheduler_sweeps_free(sched);
	compact_end(sched);
	event_free(sched->compact_slice);
	event_free(sched->compact_timer);
	event_free(sched->due_timer);
	relay_free(sched->relay);
	while (sched->messages != NULL)
		queued_free(sched->messages);
	due_heap_free(&sched->due);
	due_heap_free(&sched->arrivals);
	domain_suspend_free(sched->suspended);
	free(sched);
}

/* The accepted line: the envelope's fields, then the login, session
 * and Message-ID where there are. */
static void log_accepted(const struct spool_envelope *env,
			 const struct scheduler_arrival *arrival)
{
	struct log_field f[16] = {
	    LOG_S("queue_id", env->id),
	    LOG_S("from", env->sender),
	    LOG_I("size", env->size),
	    LOG_I("nrcpt", env->rcpt_count),
	    LOG_S("client", env->client_addr),
	    LOG_S("protocol", env->protocol),
	    LOG_S("dkim", env->dkim != NULL ? env->dkim : "none"),
	};
	size_t n = 7;
	if (env->auth_user != NULL)
		f[n++] = (struct log_field)LOG_S("auth_user", env->auth_user);
	if (arrival != NULL && arrival->local_user != NULL) {
		f[n++] = (struct log_field)LOG_I("uid", arrival->local_uid);
		f[n++] = (struct log_field)LOG_S("user", arrival->local_user);
	}
	if (arrival != NULL && arrival->session != NULL)
		f[n++] = (struct log_field)LOG_S("session", arrival->session);
	if (arrival != NULL && arrival->message_id != NULL)
		f[n++] =
		    (struct log_field)LOG_S("message_id", arrival->message_id);
	if (env->flags & SPOOL_FLAG_REQUIRETLS)
		f[n++] = (struct log_field)LOG_S("requiretls", "yes");
	if (env->flags & SPOOL_FLAG_TLS_NOT_REQUIRED)
		f[n++] = (struct log_field)LOG_S("tls_required", "no");
	if (arrival != NULL && arrival->milter != NULL) {
		f[n++] = (struct log_field)LOG_S("milter", arrival->milter);
		f[n++] =
		    (struct log_field)LOG_S("action", arrival->milter_action);
	}
	log_fields(LOG_LEVEL_INFO, "accepted", f, n);
}

void scheduler_enqueue(struct scheduler *sched, struct spool_envelope *env,
		       enum scheduler_origin origin)
{
	if (origin == SCHEDULER_NEW) {
		metrics.messages_accepted_total++;
		log_accepted(env, NULL);
	}
	queued_add(sched, env, origin);
}

void scheduler_enqueue_arrival(struct scheduler *sched,
			       struct spool_envelope *env,
			       const struct scheduler_arrival *arrival)
{
	metrics.messages_accepted_total++;
	log_accepted(env, arrival);
	queued_add(sched, env, SCHEDULER_NEW);
}

static void queued_add(struct scheduler *sched, struct spool_envelope *env,
		       enum scheduler_origin origin)
{
	struct queued *q =
	    calloc(1, sizeof *q + env->rcpt_count * sizeof *q->rcpt);
	if (q == NULL)
		fatal("scheduler: out of memory for message %s", env->id);
	/* Out of memory for the packed form: the envelope as it is serves
	 * as well, only larger. */
	struct spool_envelope *packed =
	    spool_envelope_pack(env, sched->strings);
	q->sched = sched;
	q->env = packed != NULL ? packed : env;
	/* calloc: every recipient RCPT_PHASE_IDLE, no relay tried */
	q->recovered = origin == SCHEDULER_RECOVERED;
	q->next = sched->messages;
	if (sched->messages != NULL)
		sched->messages->prev = q;
	else
		sched->oldest = q;
	sched->messages = q;
	sched->count++;
	metrics.queue_messages = sched->count;
	if (due_heap_set(&sched->arrivals, &q->arrival, q->env->arrival) == -1)
		fatal("scheduler: out of memory for message %s", q->env->id);
	queued_count(q);
	if (!queued_finish_if_done(q))
		queued_run(q);
}

/* SIGTERM: nothing new starts; see relay_stop for relay attempts. */
void scheduler_stop(struct scheduler *sched)
{
	sched->stopping = true;
	relay_stop(sched->relay);
}

bool scheduler_idle(const struct scheduler *sched)
{
	return sched->deliveries == 0 && sched->records == 0 &&
	       relay_idle(sched->relay);
}

size_t scheduler_queue_size(const struct scheduler *sched)
{
	return sched->count;
}
