/*
 * The queue in memory (see scheduler.h).
 *
 * Every queued message has its envelope, a flag per recipient telling
 * whether a delivery of it is in flight, and one timer for its next
 * deferred recipient. A recipient's outcome goes to the spool (durably)
 * before the message can be forgotten: only when every recipient is done
 * and every record is on disk are its files removed.
 *
 * Local deliveries run at most MAX_LOCAL_DELIVERIES at a time; messages
 * that find no free slot wait in a FIFO and are resumed as slots free up,
 * so a large queue never means a burst of open files.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/config.h"
#include "facteur/deliver.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"

#define MAX_LOCAL_DELIVERIES 64

struct queued {
	struct queued *prev, *next; /* every message */
	struct queued *ready_next;  /* waiting for a delivery slot */
	bool ready;
	struct scheduler *sched;
	struct spool_envelope *env;
	bool *busy;          /* per recipient: delivery or record in flight */
	unsigned in_flight;  /* deliveries and records of this message */
	bool recovered;      /* found at start-up: deliveries check first */
	struct event *timer; /* the next deferred recipient is due */
};

struct scheduler {
	struct server *srv;
	struct queued *messages;
	size_t count;
	struct queued *ready_head, **ready_tail;
	unsigned deliveries; /* local deliveries in flight */
	unsigned records;    /* spool records in flight */
	bool stopping;
};

/* One recipient's delivery, from deliver_start to its spool record. */
struct job {
	struct queued *q;
	size_t index;
	char *mailbox;
};

static void queued_run(struct queued *q);

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
	unsigned delay = scheduler_backoff(cfg->retry_min, cfg->retry_max,
	                                   attempts);
	unsigned spread = delay / 10;
	if (spread > 0)
		delay += (unsigned)(random() % (spread + 1));
	return delay;
}

static void ready_push(struct scheduler *sched, struct queued *q)
{
	if (q->ready)
		return;
	q->ready = true;
	q->ready_next = NULL;
	*sched->ready_tail = q;
	sched->ready_tail = &q->ready_next;
}

/* Resume waiting messages while delivery slots are free. */
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
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		sched->messages = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	sched->count--;
	metrics.queue_messages = sched->count;
	event_free(q->timer);
	free(q->busy);
	spool_envelope_free(q->env);
	free(q);
}

/* Forget a message once all its recipients are done and recorded. */
static bool queued_finish_if_done(struct queued *q)
{
	if (q->in_flight > 0 || !spool_envelope_done(q->env))
		return false;
	log_event(LOG_LEVEL_DEBUG, "removed", LOG_S("queue_id", q->env->id));
	spool_remove(q->sched->srv->spool, q->env->id);
	queued_free(q);
	return true;
}

struct record {
	struct queued *q;
	size_t index;
};

static void on_recorded(int error, void *arg)
{
	struct record *rec = arg;
	struct queued *q = rec->q;
	struct scheduler *sched = q->sched;
	if (error != 0)
		log_event(LOG_LEVEL_ERROR, "spool_error",
		          LOG_S("queue_id", q->env->id),
		          LOG_S("reason", strerror(error)));
	q->busy[rec->index] = false;
	q->in_flight--;
	sched->records--;
	free(rec);
	if (!queued_finish_if_done(q))
		queued_run(q);
	ready_drain(sched);
}

/* Write recipient `index`'s new state to the spool; the recipient stays
 * busy until the record is durable. */
static void record_state(struct queued *q, size_t index)
{
	struct record *rec = malloc(sizeof *rec);
	if (rec == NULL)
		fatal("scheduler: out of memory for a spool record");
	rec->q = q;
	rec->index = index;
	q->busy[index] = true;
	q->in_flight++;
	q->sched->records++;
	spool_record_rcpt(q->sched->srv->spool, q->env, index, on_recorded,
	                  rec);
}

static void set_outcome(struct spool_rcpt *r, enum rcpt_state state,
                        const char *dsn, const char *reason)
{
	r->state = state;
	r->updated = time(NULL);
	snprintf(r->dsn, sizeof r->dsn, "%s", dsn);
	free(r->reason);
	r->reason = reason ? strdup(reason) : NULL;
}

static void log_outcome(const char *event, const struct queued *q,
                        const struct spool_rcpt *r, const char *mailbox)
{
	enum log_level level = r->state == RCPT_DELIVERED ? LOG_LEVEL_INFO
	                                                  : LOG_LEVEL_WARN;
	log_event(level, event, LOG_S("queue_id", q->env->id),
	          LOG_S("rcpt", r->address), LOG_S("mailbox", mailbox),
	          LOG_S("dsn", r->dsn),
	          LOG_I("delay", time(NULL) - q->env->arrival),
	          LOG_I("attempts", r->attempts),
	          LOG_S("reason", r->reason ? r->reason : ""));
}

static void on_delivered(enum deliver_result result, const char *dsn,
                         const char *reason, void *arg)
{
	struct job *job = arg;
	struct queued *q = job->q;
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	struct spool_rcpt *r = &q->env->rcpts[job->index];

	sched->deliveries--;
	q->in_flight--;
	r->attempts++;
	switch (result) {
	case DELIVER_OK:
		set_outcome(r, RCPT_DELIVERED, dsn, NULL);
		metrics.deliveries_delivered++;
		log_outcome("delivered", q, r, job->mailbox);
		break;
	case DELIVER_PERMFAIL:
		set_outcome(r, RCPT_BOUNCED, dsn, reason);
		metrics.deliveries_bounced++;
		log_outcome("bounced", q, r, job->mailbox);
		break;
	case DELIVER_TEMPFAIL:
	default:
		set_outcome(r, RCPT_DEFERRED, dsn, reason);
		r->next_attempt = time(NULL) + backoff_with_jitter(cfg, r->attempts);
		/* Never wait past the end of the queue lifetime. */
		if (r->next_attempt > q->env->arrival + (time_t)cfg->queue_lifetime)
			r->next_attempt =
				q->env->arrival + (time_t)cfg->queue_lifetime;
		metrics.deliveries_deferred++;
		log_outcome("deferred", q, r, job->mailbox);
		break;
	}
	size_t index = job->index;
	free(job->mailbox);
	free(job);
	record_state(q, index);
}

/* The mailbox of a local recipient, from mailbox_path. */
static char *mailbox_of(const struct config *cfg, const char *address)
{
	const char *at = strrchr(address, '@');
	if (at == NULL)
		return NULL;
	return deliver_expand_path(cfg->mailbox_path, address,
	                           (size_t)(at - address), at + 1);
}

static void start_local(struct queued *q, size_t index)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	struct spool_rcpt *r = &q->env->rcpts[index];
	char unique[SPOOL_ID_LEN + 32];
	char spool_file[4096];

	struct job *job = calloc(1, sizeof *job);
	char *mailbox = mailbox_of(cfg, r->address);
	if (job == NULL || mailbox == NULL) {
		free(job);
		free(mailbox);
		set_outcome(r, RCPT_DEFERRED, "4.3.0",
		            "cannot name the mailbox");
		r->attempts++;
		r->next_attempt = time(NULL) + backoff_with_jitter(cfg, r->attempts);
		log_outcome("deferred", q, r, "");
		record_state(q, index);
		return;
	}
	job->q = q;
	job->index = index;
	job->mailbox = mailbox;
	snprintf(unique, sizeof unique, "F%sR%zu", q->env->id, index);
	struct deliver_request req = {
		.format = cfg->mailbox_format,
		.mailbox = mailbox,
		.spool_file = spool_msg_path(sched->srv->spool, q->env->id,
		                             spool_file, sizeof spool_file),
		.sender = q->env->sender,
		.recipient = r->address,
		.unique = unique,
		.arrival = q->env->arrival,
		.hostname = cfg->hostname,
		/* A crash may have come after the file was linked into the
		 * mailbox and before the outcome was recorded. */
		.check_existing = q->recovered || r->attempts > 0,
	};
	if (deliver_start(sched->srv->base, sched->srv->io, &req, on_delivered,
	                  job) == -1) {
		free(job->mailbox);
		free(job);
		ready_push(sched, q); /* out of memory: try again later */
		return;
	}
	q->busy[index] = true;
	q->in_flight++;
	sched->deliveries++;
}

/* The delivery time limit is over: the recipient is bounced with the
 * last temporary status it got. */
static void expire(struct queued *q, size_t index)
{
	struct spool_rcpt *r = &q->env->rcpts[index];
	char dsn[sizeof r->dsn];
	snprintf(dsn, sizeof dsn, "%s", r->dsn[0] == '4' ? r->dsn : "4.4.7");
	char reason[512];
	snprintf(reason, sizeof reason, "delivery time expired%s%s",
	         r->reason ? ": " : "", r->reason ? r->reason : "");
	dsn[0] = '5';
	set_outcome(r, RCPT_BOUNCED, dsn, reason);
	metrics.deliveries_bounced++;
	log_outcome("expired", q, r, "");
	record_state(q, index);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	queued_run(arg);
}

/*
 * Start what is due in one message: pending recipients, and deferred ones
 * whose time has come. Remote recipients wait for the relay path. Then
 * arm the timer for the next deferred one.
 */
static void queued_run(struct queued *q)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	time_t now = time(NULL);
	time_t next = 0;

	if (sched->stopping)
		return;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[i];
		if (q->busy[i] || !r->local)
			continue;
		if (r->state == RCPT_DELIVERED || r->state == RCPT_BOUNCED)
			continue;
		if (r->state == RCPT_DEFERRED && r->next_attempt > now) {
			if (next == 0 || r->next_attempt < next)
				next = r->next_attempt;
			continue;
		}
		if (r->state == RCPT_DEFERRED &&
		    now >= q->env->arrival + (time_t)cfg->queue_lifetime) {
			expire(q, i);
			continue;
		}
		if (sched->deliveries >= MAX_LOCAL_DELIVERIES) {
			ready_push(sched, q);
			break;
		}
		start_local(q, i);
	}
	if (next != 0) {
		struct timeval tv = {next > now ? next - now : 0, 0};
		evtimer_add(q->timer, &tv);
	}
}

struct scheduler *scheduler_new(struct server *srv)
{
	struct scheduler *sched = calloc(1, sizeof *sched);
	if (sched == NULL)
		return NULL;
	sched->srv = srv;
	sched->ready_tail = &sched->ready_head;
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	return sched;
}

void scheduler_free(struct scheduler *sched)
{
	if (sched == NULL)
		return;
	while (sched->messages != NULL)
		queued_free(sched->messages);
	free(sched);
}

void scheduler_add(struct scheduler *sched, struct spool_envelope *env,
                   bool recovered)
{
	struct queued *q = calloc(1, sizeof *q);
	bool *busy = calloc(env->rcpt_count ? env->rcpt_count : 1,
	                    sizeof *busy);
	struct event *timer = q ? evtimer_new(sched->srv->base, on_timer, q)
	                        : NULL;
	if (q == NULL || busy == NULL || timer == NULL)
		fatal("scheduler: out of memory for message %s", env->id);
	q->sched = sched;
	q->env = env;
	q->busy = busy;
	q->timer = timer;
	q->recovered = recovered;
	q->next = sched->messages;
	if (sched->messages != NULL)
		sched->messages->prev = q;
	sched->messages = q;
	sched->count++;
	metrics.queue_messages = sched->count;
	if (!queued_finish_if_done(q))
		queued_run(q);
}

void scheduler_flush(struct scheduler *sched)
{
	time_t now = time(NULL);
	for (struct queued *q = sched->messages; q != NULL; q = q->next) {
		for (size_t i = 0; i < q->env->rcpt_count; i++)
			if (q->env->rcpts[i].state == RCPT_DEFERRED)
				q->env->rcpts[i].next_attempt = now;
	}
	for (struct queued *q = sched->messages; q != NULL;) {
		struct queued *next = q->next;
		queued_run(q);
		q = next;
	}
}

void scheduler_stop(struct scheduler *sched)
{
	sched->stopping = true;
}

bool scheduler_idle(const struct scheduler *sched)
{
	return sched->deliveries == 0 && sched->records == 0;
}

size_t scheduler_queue_size(const struct scheduler *sched)
{
	return sched->count;
}
