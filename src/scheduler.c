/*
 * The queue in memory (see scheduler.h).
 *
 * Every queued message has its envelope, a busy flag per recipient (a
 * delivery or a record of it is in flight) and one timer for its next
 * deferred recipient. An attempt ends in an outcome per recipient; the
 * outcomes of one run of the message (the attempts one queued_run
 * started) that call for a DSN are "settled" together, so that a run
 * sends at most one notice of each kind: the DSN is queued first (so that
 * a crash can repeat a notice but never lose one), then each outcome is
 * appended to the spool. A DSN the spool cannot take stays owed, its
 * recipients unrecorded, and is tried again. Only when every recipient is
 * done and recorded are the message's files removed.
 *
 * Local recipients are delivered at most MAX_LOCAL_DELIVERIES at a time.
 * Remote recipients are grouped by destination (a route, or the domain's
 * own MX hosts): one attempt carries all the recipients of a message for
 * one destination, and each destination has at most
 * max_connections_per_destination attempts in flight; the others wait
 * in that destination's FIFO.
 *
 * A connection whose transaction ended cleanly is kept: the next attempt
 * for its destination goes over it (no DNS, no greeting, no EHLO), up to
 * RELAY_MAX_TRANSACTIONS messages. With no attempt waiting it sits idle
 * for RELAY_IDLE_SECONDS at most, counted within the destination's
 * connection limit, then says QUIT.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>

#include "facteur/bounce.h"
#include "facteur/config.h"
#include "facteur/deliver.h"
#include "facteur/dns.h"
#include "facteur/localaddr.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/policy.h"
#include "facteur/route.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/smtp_client.h"
#include "facteur/spool.h"

#define MAX_LOCAL_DELIVERIES 64
#define MAX_ADDRESSES_PER_ATTEMPT 10
#define DESTINATION_BUCKETS 256
#define RELAY_MAX_TRANSACTIONS 100 /* messages over one connection */
#define RELAY_IDLE_SECONDS 5	/* an unused open connection, at most */

struct queued {
	struct queued *prev, *next; /* every message */
	struct queued *ready_next;  /* waiting for a local delivery slot */
	bool ready;
	struct scheduler *sched;
	struct spool_envelope *env;
	bool *busy;          /* per recipient: attempt or record in flight */
	char **last_relay;   /* per recipient: the relay last tried, for the
	                        expiry log line (memory only) */
	unsigned in_flight;  /* attempts, DSNs and records of this message */
	bool recovered;      /* found at start-up: deliveries check first */
	bool deleted;        /* facteurctl delete: removed once idle */
	struct event *timer; /* the next deferred recipient is due */
	struct notice *owed; /* DSNs not queued yet: tried again */
};

/* Where remote recipients go: the key is "route <target>" or "mx
 * <domain>", so that recipients and messages sharing a next hop share its
 * connection limit. */
struct destination {
	struct destination *next;
	char *key;
	unsigned active;
	struct relay_job *wait_head, **wait_tail;
	struct idle_conn *idle; /* most recently used first */
	unsigned idle_count;
	bool draining; /* in destination_drain: no nested run */
};

/* An open connection between attempts, with what it was opened with: a
 * reload may change a destination's TLS or AUTH settings under the same
 * key. Once closing (QUIT), it is on the scheduler's closing list. */
struct idle_conn {
	struct idle_conn *next;
	struct scheduler *sched;
	struct destination *dest; /* NULL once closing */
	struct smtp_client *client;
	struct event *timer;
	enum tls_policy tls;
	char *auth_file;
};

struct scheduler {
	struct server *srv;
	struct queued *messages;
	size_t count;
	struct queued *ready_head, **ready_tail;
	unsigned deliveries; /* local deliveries in flight */
	unsigned relays;     /* relay attempts in flight (DNS or SMTP) */
	unsigned records;    /* spool records and DSN commits in flight */
	struct destination *destinations[DESTINATION_BUCKETS];
	struct relay_job *jobs; /* every relay job, for shutdown */
	struct event *compact_timer;
	struct idle_conn *closing; /* connections saying QUIT */
	unsigned closing_count;
	struct localaddr_interfaces *interfaces; /* for the loop check */
	bool stopping;
};

/*
 * One DSN about some recipients of q. It is queued with the settlement of
 * their outcomes. When its commit fails (a full disk), it stays owed: its
 * recipients keep their outcome in memory only (busy, not recorded) and
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

/* One local recipient's delivery. */
struct local_job {
	struct queued *q;
	struct run *run;
	size_t index;
	char *mailbox;
};

/* One attempt at some recipients of a message for one destination. The
 * route's fields are copied: a reload may free the table meanwhile. */
struct relay_job {
	struct relay_job *next;         /* in its destination's FIFO */
	struct relay_job *prev_job, *next_job; /* every job */
	struct scheduler *sched;
	struct queued *q;
	struct run *run;
	struct destination *dest;
	size_t *rcpts;
	size_t rcpt_count;
	char *domain;       /* the recipients' domain */
	bool routed;
	char *host;         /* route target, or the domain */
	bool mx_lookup;
	bool host_is_ip;
	uint16_t port;
	enum tls_policy tls;
	char *auth_file;
	struct dns_query *dns;
	struct smtp_client *client;
	bool started;
};

struct run;

static void queued_run(struct queued *q);
static void relay_start(struct relay_job *job);
static void notice_free(struct notice *n);
static void notice_drop(struct notice *n);
static void run_release(struct run *run);

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
	while (q->owed != NULL) {
		struct notice *n = q->owed;
		q->owed = n->next;
		notice_free(n);
	}
	for (size_t i = 0; i < q->env->rcpt_count; i++)
		free(q->last_relay[i]);
	free(q->last_relay);
	free(q->busy);
	spool_envelope_free(q->env);
	free(q);
}

/* Forget a message once all its recipients are done and recorded (or
 * it was deleted) and nothing of it is in flight. */
static bool queued_finish_if_done(struct queued *q)
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

/* After anything of q finished: remove it or start what is due. */
static void queued_settled(struct queued *q)
{
	struct scheduler *sched = q->sched;
	if (!queued_finish_if_done(q))
		queued_run(q);
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
	if (rec->index != RECORD_FLAGS)
		q->busy[rec->index] = false;
	q->in_flight--;
	q->sched->records--;
	free(rec);
	queued_settled(q);
}

/* Write recipient `index`'s state to the spool; it stays busy until the
 * record is durable. The caller has marked it busy. */
static void record_state(struct queued *q, size_t index)
{
	struct record *rec = malloc(sizeof *rec);
	if (rec == NULL)
		fatal("scheduler: out of memory for a spool record");
	rec->q = q;
	rec->index = index;
	q->in_flight++;
	q->sched->records++;
	spool_record_rcpt(q->sched->srv->spool, q->env, index, on_recorded,
	                  rec);
}

static void set_outcome(const struct config *cfg, struct queued *q,
                        struct spool_rcpt *r, enum rcpt_state state,
                        const char *dsn, const char *reason)
{
	time_t now = time(NULL);
	r->attempts++;
	r->state = state;
	r->updated = now;
	snprintf(r->dsn, sizeof r->dsn, "%s", dsn ? dsn : "");
	free(r->reason);
	r->reason = reason && *reason ? strdup(reason) : NULL;
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

static void count_outcome(const struct queued *q, enum rcpt_state state)
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
 * `dsn` the status to log. */
static void log_outcome_as(const char *event, const struct queued *q,
			   const struct spool_rcpt *r, const char *dsn,
			   const char *where, const char *place)
{
	enum log_level level = r->state == RCPT_DELIVERED ? LOG_LEVEL_INFO
	                                                  : LOG_LEVEL_WARN;
	if (r->reason != NULL)
		log_event(level, event, LOG_S("queue_id", q->env->id),
			  LOG_S("rcpt", r->address), LOG_S(where, place),
			  LOG_S("dsn", dsn),
			  LOG_I("delay", time(NULL) - q->env->arrival),
			  LOG_I("attempts", r->attempts),
			  LOG_S("reason", r->reason));
	else
		log_event(level, event, LOG_S("queue_id", q->env->id),
			  LOG_S("rcpt", r->address), LOG_S(where, place),
			  LOG_S("dsn", dsn),
			  LOG_I("delay", time(NULL) - q->env->arrival),
			  LOG_I("attempts", r->attempts));
}

static void log_outcome(const char *event, const struct queued *q,
			const struct spool_rcpt *r, const char *where,
			const char *place)
{
	log_outcome_as(event, q, r, r->dsn, where, place);
}

/* ---- DSNs ---- */

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

static void settle(struct queued *q, const size_t *rcpts, size_t count,
		   bool flags_changed, const size_t *delayed,
		   size_t delayed_count);

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
		fatal("scheduler: out of memory");
	if (count > 0)
		memcpy(copy, rcpts, count * sizeof *copy);
	return copy;
}

static struct notice *notice_new(struct queued *q, enum bounce_kind kind,
				 const size_t *rcpts, size_t count)
{
	struct notice *n = calloc(1, sizeof *n);
	if (n == NULL)
		fatal("scheduler: out of memory for a DSN");
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
 * (and its recipients, busy and unrecorded) until it is. */
static void notice_owe(struct notice *n)
{
	struct queued *q = n->q;
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	n->failures++;
	n->st = NULL;
	if (n->timer == NULL &&
	    (n->timer = evtimer_new(sched->srv->base, on_notice_due, n)) ==
		NULL)
		fatal("scheduler: out of memory for a timer");
	struct timeval tv = {
	    scheduler_backoff(cfg->retry_min, cfg->retry_max, n->failures), 0};
	n->next = q->owed;
	q->owed = n;
	q->in_flight++;
	log_event(LOG_LEVEL_WARN, "dsn_owed", LOG_S("queue_id", q->env->id),
		  LOG_S("kind", kind_name(n->kind)),
		  LOG_S("to", q->env->sender), LOG_I("nrcpt", n->count),
		  LOG_I("failures", n->failures),
		  LOG_I("retry_in", (long long)tv.tv_sec));
	if (evtimer_add(n->timer, &tv) == -1)
		fatal("scheduler: cannot add a timer");
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
		n->q->busy[n->rcpts[i]] = false;
	notice_free(n);
}

static void settlement_finish(struct settlement *st)
{
	struct queued *q = st->q;
	/* recipients not to record here: owed, or recorded with their notice */
	bool *skip =
	    calloc(q->env->rcpt_count ? q->env->rcpt_count : 1, sizeof *skip);
	if (skip == NULL)
		fatal("scheduler: out of memory");
	q->in_flight--; /* the settlement's own hold */
	for (size_t k = 0; k < st->notice_count; k++) {
		struct notice *n = st->notices[k];
		if (!n->failed) {
			/* Recorded with the notice: done. */
			if (n->with_records && !n->record_failed)
				for (size_t i = 0; i < n->count; i++) {
					skip[n->rcpts[i]] = true;
					q->busy[n->rcpts[i]] = false;
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
			record_state(q, st->rcpts[i]);
	free(skip);
	if (st->flags_changed) {
		q->in_flight++;
		q->sched->records++;
		struct record *rec = malloc(sizeof *rec);
		if (rec == NULL)
			fatal("scheduler: out of memory");
		rec->q = q;
		rec->index = RECORD_FLAGS;
		spool_record_flags(q->sched->srv->spool, q->env, on_recorded,
		                   rec);
	}
	free(st->rcpts);
	free(st);
	if (q->in_flight == 0)
		queued_settled(q);
}

struct dsn_commit {
	struct scheduler *sched;
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
	q->sched->records--;
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
	struct scheduler *sched = dc->sched;
	struct notice *n = dc->notice;
	sched->records--;
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
		          LOG_S("queue_id", dc->env->id),
		          LOG_S("reason", strerror(error)));
		spool_envelope_free(dc->env);
		dc->notice->failed = true;
	} else {
		metrics.messages_accepted_total++;
		log_event(LOG_LEVEL_INFO, "accepted",
			  LOG_S("queue_id", dc->env->id), LOG_S("from", ""),
			  LOG_I("size", dc->env->size),
			  LOG_I("nrcpt", dc->env->rcpt_count),
			  LOG_S("client", "local"), LOG_S("protocol", "DSN"));
		scheduler_add(sched, dc->env, false);
	}
	free(dc);
	notice_wait_done(n);
}

/* Read the start of the original for the DSN: headers, and the body up
 * to the size a DSN returns. */
static char *read_original(struct scheduler *sched,
                           const struct spool_envelope *env, size_t *len)
{
	struct spool_body body;
	if (spool_body_open(sched->srv->spool, env, &body) == -1)
		return NULL;
	size_t want = body.length < BOUNCE_ORIGINAL_MAX
	                  ? (size_t)body.length
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
		fatal("scheduler: out of memory for a DSN");
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
			fatal("scheduler: out of memory for a DSN");
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
		fatal("scheduler: out of memory for a DSN");
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
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	time_t now = time(NULL);
	struct spool_rcpt *to = NULL;
	size_t to_count = 0;
	const char *why = NULL;
	if (dsn_recipients(sched->srv, q->env->sender, now, &to, &to_count,
			   &why) == -1) {
		log_event(LOG_LEVEL_WARN, "dsn_dropped",
			  LOG_S("queue_id", q->env->id),
			  LOG_S("kind", kind_name(n->kind)),
			  LOG_S("to", q->env->sender), LOG_I("nrcpt", n->count),
			  LOG_S("reason", why));
		return NOTICE_DROPPED;
	}
	struct spool_incoming *inc = spool_incoming_new(sched->srv->spool);
	if (inc == NULL) {
		log_event(LOG_LEVEL_ERROR, "spool_error",
		          LOG_S("queue_id", q->env->id),
		          LOG_S("reason", strerror(errno)));
		rcpts_free(to, to_count);
		return NOTICE_FAILED;
	}
	size_t original_len = 0;
	char *original = read_original(sched, q->env, &original_len);
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
		spool_incoming_abort(sched->srv->spool, inc);
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
	env->rcpts = to;
	env->rcpt_count = to_count;
	if (!env->sender || !env->client_addr || !env->helo || !env->protocol) {
		spool_envelope_free(env);
		spool_incoming_abort(sched->srv->spool, inc);
		return NOTICE_FAILED;
	}
	struct dsn_commit *dc = malloc(sizeof *dc);
	if (dc == NULL)
		fatal("scheduler: out of memory");
	dc->sched = sched;
	dc->notice = n;
	dc->env = env;
	sched->records++;
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
	spool_incoming_commit(sched->srv->spool, inc, env, on_dsn_committed,
	                      dc);
	for (size_t i = 0; n->with_records && i < n->count; i++) {
		n->waiting++;
		q->in_flight++;
		sched->records++;
		spool_record_rcpt(sched->srv->spool, q->env, n->rcpts[i],
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
		fatal("scheduler: out of memory");
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
	if (q->sched->stopping)
		return; /* unrecorded: the next start tries them again */
	if (q->deleted) {
		notice_drop(n);
		queued_settled(q);
		return;
	}
	notice_unlink(n);
	struct settlement *st = settlement_new(q, n->rcpts, n->count, false);
	settlement_notify(st, n);
	if (st->dsns_pending == 0)
		settlement_finish(st);
}

/*
 * The recipients `rcpts` of q have new outcomes (they are busy). Queue
 * the DSNs they call for (one of each kind, about all of them), then
 * record them. The recipients of a DSN that cannot be queued stay
 * unrecorded until it is (struct notice); a DSN with nobody to go to
 * (dsn_recipients) is dropped and its recipients recorded.
 */
static void settle(struct queued *q, const size_t *rcpts, size_t count,
		   bool flags_changed, const size_t *delayed,
		   size_t delayed_count)
{
	struct settlement *st = settlement_new(q, rcpts, count, flags_changed);
	size_t *failed = malloc((count ? count : 1) * sizeof *failed);
	size_t *succeeded = malloc((count ? count : 1) * sizeof *succeeded);
	if (failed == NULL || succeeded == NULL)
		fatal("scheduler: out of memory");

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
	size_t *held;  /* outcomes waiting for the run's end (busy) */
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
 * attempt of a run at most, so `held` has room). */
static void run_settle(struct run *run, const size_t *rcpts, size_t count)
{
	struct queued *q = run->q;
	size_t *now = malloc((count ? count : 1) * sizeof *now);
	size_t n = 0;
	if (now == NULL)
		fatal("scheduler: out of memory");
	for (size_t i = 0; i < count; i++) {
		enum bounce_kind kind;
		if (bounce_outcome_notice(q->env->sender,
					  &q->env->rcpts[rcpts[i]], &kind))
			run->held[run->held_count++] = rcpts[i];
		else
			now[n++] = rcpts[i];
	}
	if (n > 0)
		settle(q, now, n, false, NULL, 0);
	free(now);
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
		settle(run->q, run->held, run->held_count, false, NULL, 0);
	free(run->held);
	free(run);
}

/* ---- local delivery ---- */

static void on_delivered(enum deliver_result result, const char *dsn,
                         const char *reason, void *arg)
{
	struct local_job *job = arg;
	struct queued *q = job->q;
	struct scheduler *sched = q->sched;
	struct spool_rcpt *r = &q->env->rcpts[job->index];
	enum rcpt_state state = result == DELIVER_OK         ? RCPT_DELIVERED
	                        : result == DELIVER_PERMFAIL ? RCPT_BOUNCED
	                                                     : RCPT_DEFERRED;
	sched->deliveries--;
	q->in_flight--;
	set_outcome(sched->srv->cfg, q, r, state, dsn,
	            state == RCPT_DELIVERED ? NULL : reason);
	count_outcome(q, state);
	log_outcome(outcome_event(state), q, r, "mailbox", job->mailbox);
	size_t index = job->index;
	struct run *run = job->run;
	free(job->mailbox);
	free(job);
	run_settle(run, &index, 1);
	run_release(run);
}

static void start_local(struct queued *q, size_t index, struct run *run)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	struct spool_rcpt *r = &q->env->rcpts[index];
	char unique[SPOOL_ID_LEN + 32];
	struct spool_body body;

	q->busy[index] = true;
	size_t root_len = 0;
	char *mailbox = policy_mailbox_path(cfg, r->address, &root_len);
	if (mailbox == NULL && errno == EINVAL) {
		/* Only a spool from before every address was checked holds
		 * such a recipient: it can never be delivered. */
		set_outcome(cfg, q, r, RCPT_BOUNCED, "5.1.1",
			    "the address cannot name a mailbox");
		count_outcome(q, RCPT_BOUNCED);
		log_outcome("bounced", q, r, "mailbox", "");
		run_settle(run, &index, 1);
		return;
	}
	struct local_job *job = calloc(1, sizeof *job);
	if (job == NULL || mailbox == NULL ||
	    spool_body_open(sched->srv->spool, q->env, &body) == -1) {
		bool named = job != NULL && mailbox != NULL;
		free(job);
		free(mailbox);
		set_outcome(cfg, q, r, RCPT_DEFERRED, "4.3.0",
		            named ? "cannot read the queued message"
		                  : "cannot name the mailbox");
		count_outcome(q, RCPT_DEFERRED);
		log_outcome("deferred", q, r, "mailbox", "");
		run_settle(run, &index, 1);
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
	int started = deliver_start(sched->srv->deliver, &req,
	                            on_delivered, job);
	(void)close(body.fd); /* read-only; the delivery has its own */
	if (started == -1) {
		free(job->mailbox);
		free(job);
		q->busy[index] = false;
		ready_push(sched, q); /* out of memory: try again later */
		return;
	}
	q->in_flight++;
	sched->deliveries++;
	run->open++;
}

/* ---- relaying ---- */

static unsigned hash_key(const char *key)
{
	uint32_t h = 2166136261u;
	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 16777619u;
	return h % DESTINATION_BUCKETS;
}

static struct destination *destination_get(struct scheduler *sched,
                                           const char *key)
{
	struct destination **at = &sched->destinations[hash_key(key)];
	for (; *at != NULL; at = &(*at)->next)
		if (strcmp((*at)->key, key) == 0)
			return *at;
	struct destination *d = calloc(1, sizeof *d);
	if (d == NULL || (d->key = strdup(key)) == NULL)
		fatal("scheduler: out of memory");
	d->wait_tail = &d->wait_head;
	*at = d;
	return d;
}

/* A destination with nothing active, waiting or idle is forgotten. */
static void destination_release(struct scheduler *sched, struct destination *d)
{
	if (d->active > 0 || d->wait_head != NULL || d->idle != NULL ||
	    d->draining)
		return;
	struct destination **at = &sched->destinations[hash_key(d->key)];
	while (*at != d)
		at = &(*at)->next;
	*at = d->next;
	free(d->key);
	free(d);
}

static void relay_job_free(struct relay_job *job)
{
	struct scheduler *sched = job->sched;
	if (job->prev_job != NULL)
		job->prev_job->next_job = job->next_job;
	else
		sched->jobs = job->next_job;
	if (job->next_job != NULL)
		job->next_job->prev_job = job->prev_job;
	free(job->rcpts);
	free(job->domain);
	free(job->host);
	free(job->auth_file);
	free(job);
}

/* ---- open connections between attempts ---- */

static void destination_drain(struct scheduler *sched, struct destination *d);

static bool same_text(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static void idle_conn_free(struct idle_conn *ic)
{
	if (ic->timer != NULL)
		event_free(ic->timer);
	free(ic->auth_file);
	free(ic);
}

/* Onto its destination's idle list, for RELAY_IDLE_SECONDS at most. */
static void idle_link(struct destination *d, struct idle_conn *ic)
{
	struct timeval tv = {RELAY_IDLE_SECONDS, 0};
	ic->dest = d;
	ic->next = d->idle;
	d->idle = ic;
	d->idle_count++;
	if (evtimer_add(ic->timer, &tv) < 0)
		fatal("scheduler: cannot add a timer");
}

static void idle_unlink(struct idle_conn *ic)
{
	struct destination *d = ic->dest;
	struct idle_conn **at = &d->idle;
	while (*at != ic)
		at = &(*at)->next;
	*at = ic->next;
	d->idle_count--;
	ic->dest = NULL;
	ic->next = NULL;
	evtimer_del(ic->timer);
}

static void on_conn_closed(void *arg)
{
	struct idle_conn *ic = arg;
	struct scheduler *sched = ic->sched;
	struct idle_conn **at = &sched->closing;
	while (*at != ic)
		at = &(*at)->next;
	*at = ic->next;
	sched->closing_count--;
	idle_conn_free(ic);
}

/* QUIT: off the destination's books, on the closing list until the
 * client is gone (a drain waits for it; QUIT takes 2 s at most). */
static void idle_close(struct idle_conn *ic)
{
	struct scheduler *sched = ic->sched;
	if (ic->dest != NULL)
		idle_unlink(ic);
	ic->next = sched->closing;
	sched->closing = ic;
	sched->closing_count++;
	smtp_client_release(ic->client, on_conn_closed, ic);
}

static void on_idle_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct idle_conn *ic = arg;
	struct scheduler *sched = ic->sched;
	struct destination *d = ic->dest;
	(void)fd;
	(void)what;
	idle_close(ic);
	destination_drain(sched, d);
}

/* A client whose transaction ended cleanly waits for the next attempt to
 * its destination (before the attempt's end lets one start). */
static void idle_park(struct relay_job *job, struct smtp_client *client)
{
	struct scheduler *sched = job->sched;
	struct idle_conn *ic = calloc(1, sizeof *ic);
	if (ic == NULL ||
	    (job->auth_file != NULL &&
	     (ic->auth_file = strdup(job->auth_file)) == NULL) ||
	    (ic->timer = evtimer_new(sched->srv->base, on_idle_timeout,
	                             ic)) == NULL)
		fatal("scheduler: out of memory");
	ic->sched = sched;
	ic->client = client;
	ic->tls = job->tls;
	if (sched->stopping) {
		idle_close(ic);
		return;
	}
	idle_link(job->dest, ic);
}

/* An idle connection opened with this job's settings, taken off the
 * list; NULL if none. */
static struct idle_conn *idle_take(struct destination *d,
                                   const struct relay_job *job)
{
	for (struct idle_conn *ic = d->idle; ic != NULL; ic = ic->next) {
		if (ic->tls == job->tls &&
		    same_text(ic->auth_file, job->auth_file)) {
			idle_unlink(ic);
			return ic;
		}
	}
	return NULL;
}

static void relay_reuse(struct relay_job *job, struct idle_conn *ic);

/* Start the next attempts waiting for this destination: over an idle
 * connection when one suits, else on a new one within the limit, which
 * idle connections count towards. */
static void destination_drain(struct scheduler *sched, struct destination *d)
{
	unsigned limit = sched->srv->cfg->max_connections_per_destination;
	/* an attempt that ends at once calls us again: the loop below
	 * carries on instead, and d stays allocated under it */
	if (d->draining)
		return;
	d->draining = true;
	while (d->wait_head != NULL && !sched->stopping) {
		struct relay_job *job = d->wait_head;
		struct idle_conn *ic = idle_take(d, job);
		if (ic == NULL && d->active + d->idle_count >= limit) {
			if (d->idle == NULL || d->active >= limit)
				break;
			/* idle connections of other settings (a reload
			 * changed them): the oldest makes room */
			struct idle_conn *old = d->idle;
			while (old->next != NULL)
				old = old->next;
			idle_close(old);
		}
		d->wait_head = job->next;
		if (d->wait_head == NULL)
			d->wait_tail = &d->wait_head;
		d->active++;
		if (ic != NULL)
			relay_reuse(job, ic);
		else
			relay_start(job);
	}
	d->draining = false;
	destination_release(sched, d);
}

/* Every recipient of the attempt gets the same outcome (DNS failures,
 * configuration trouble). */
static void relay_finish_all(struct relay_job *job, enum rcpt_state state,
                             const char *dsn, const char *reason,
                             const char *relay)
{
	struct queued *q = job->q;
	const struct config *cfg = job->sched->srv->cfg;
	for (size_t i = 0; i < job->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[job->rcpts[i]];
		set_outcome(cfg, q, r, state, dsn, reason);
		count_outcome(q, state);
		log_outcome(outcome_event(state), q, r, "relay", relay);
	}
}

/* The attempt is over: its recipients' outcomes are set. */
static void relay_done(struct relay_job *job)
{
	struct scheduler *sched = job->sched;
	struct queued *q = job->q;
	struct destination *d = job->dest;
	sched->relays--;
	q->in_flight--;
	d->active--;
	run_settle(job->run, job->rcpts, job->rcpt_count);
	run_release(job->run);
	relay_job_free(job);
	destination_drain(sched, d);
}

static void on_client_done(const struct smtp_client_result *res, void *arg)
{
	struct relay_job *job = arg;
	struct queued *q = job->q;
	const struct config *cfg = job->sched->srv->cfg;
	struct smtp_client *client = job->client;
	job->client = NULL;
	for (size_t i = 0; i < job->rcpt_count && i < res->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[job->rcpts[i]];
		const struct smtp_client_rcpt *out = &res->rcpts[i];
		set_outcome(cfg, q, r, out->state, out->dsn,
		            out->state == RCPT_DELIVERED && !out->reason[0]
		                    ? NULL
		                    : out->reason);
		count_outcome(q, out->state);
		const char *relay = res->relay[0] ? res->relay : job->host;
		log_outcome(outcome_event(out->state), q, r, "relay", relay);
		free(q->last_relay[job->rcpts[i]]);
		q->last_relay[job->rcpts[i]] = strdup(relay);
	}
	if (res->reusable)
		idle_park(job, client);
	relay_done(job);
}

/* Read "user:password" from a route's auth= file. */
static int read_auth_file(const char *path, char **user, char **password)
{
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	char line[1024];
	int ok = fgets(line, sizeof line, f) != NULL;
	fclose(f);
	if (!ok)
		return -1;
	line[strcspn(line, "\r\n")] = '\0';
	char *colon = strchr(line, ':');
	if (colon == NULL || colon == line)
		return -1;
	*colon = '\0';
	*user = strdup(line);
	*password = strdup(colon + 1);
	explicit_bzero(line, sizeof line);
	if (*user == NULL || *password == NULL) {
		free(*user);
		free(*password);
		return -1;
	}
	return 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static socklen_t address_length(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
	                                 : sizeof(struct sockaddr_in);
}

/* Is one of the hosts this daemon itself, on the port the attempt would
 * use? Then hosts from *cutoff's preference on are not to be tried. */
static bool relay_self_cutoff(struct scheduler *sched,
			      const struct dns_host *hosts, size_t host_count,
			      uint16_t port, unsigned *cutoff)
{
	const struct config *cfg = sched->srv->cfg;
	struct localaddr_self self = {
	    .listen = cfg->listen,
	    .listen_count = cfg->listen_count,
	};
	if (localaddr_needs_interfaces(cfg->listen, cfg->listen_count, port))
		localaddr_interfaces_get(sched->interfaces, &self.interfaces,
					 &self.interface_count);
	return localaddr_self_cutoff(&self, hosts, host_count, port, cutoff);
}

/* Every host left would be this daemon: connecting would only hand the
 * message back to ourselves, hop after hop. For the recipient's own
 * domain that is final (5.4.6, as Postfix says it); a route's target is
 * our configuration, so its recipients wait for it to be fixed. */
static void relay_loops_back(struct relay_job *job)
{
	char reason[600];
	if (job->routed) {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself (route target %s)",
			 job->domain, job->host);
		relay_finish_all(job, RCPT_DEFERRED, "4.4.6", reason,
				 job->host);
	} else {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself", job->domain);
		relay_finish_all(job, RCPT_BOUNCED, "5.4.6", reason, job->host);
	}
	relay_done(job);
}

static void relay_connect(struct relay_job *job, const struct dns_host *hosts,
                          size_t host_count)
{
	struct scheduler *sched = job->sched;
	const struct config *cfg = sched->srv->cfg;
	struct smtp_client_address addrs[MAX_ADDRESSES_PER_ATTEMPT];
	size_t n = 0;
	uint16_t port = job->port ? job->port : cfg->mx_port;
	/* A "[host]" or "[ip]" route names its target on purpose: it is
	 * taken as written, even when that is this daemon. */
	unsigned cutoff = 0;
	bool self_found =
	    (!job->routed || job->mx_lookup) &&
	    relay_self_cutoff(sched, hosts, host_count, port, &cutoff);
	size_t hosts_kept = 0;
	for (size_t h = 0; h < host_count; h++) {
		if (self_found && hosts[h].preference >= cutoff)
			continue;
		hosts_kept++;
		for (size_t a = 0; a < hosts[h].addr_count &&
		                   n < MAX_ADDRESSES_PER_ATTEMPT;
		     a++) {
			addrs[n].host = hosts[h].name;
			addrs[n].addr = hosts[h].addrs[a];
			set_port(&addrs[n].addr, port);
			addrs[n].addrlen = address_length(&addrs[n].addr);
			n++;
		}
	}
	if (self_found) {
		log_event(LOG_LEVEL_DEBUG, "relay_self_skipped",
			  LOG_S("queue_id", job->q->env->id),
			  LOG_S("domain", job->domain),
			  LOG_I("preference", cutoff),
			  LOG_I("hosts_left", hosts_kept));
		if (hosts_kept == 0) {
			relay_loops_back(job);
			return;
		}
	}
	if (n == 0) {
		relay_finish_all(job, RCPT_DEFERRED, "4.4.3",
		                 "no address to connect to", job->host);
		relay_done(job);
		return;
	}
	char *user = NULL, *password = NULL;
	if (job->auth_file != NULL &&
	    read_auth_file(job->auth_file, &user, &password) == -1) {
		char reason[512];
		snprintf(reason, sizeof reason, "cannot read auth file %s",
		         job->auth_file);
		relay_finish_all(job, RCPT_DEFERRED, "4.3.5", reason, job->host);
		relay_done(job);
		return;
	}
	struct spool_body body;
	if (spool_body_open(sched->srv->spool, job->q->env, &body) == -1) {
		char reason[512];
		snprintf(reason, sizeof reason,
		         "cannot read the queued message: %s", strerror(errno));
		if (password != NULL)
			explicit_bzero(password, strlen(password));
		free(user);
		free(password);
		relay_finish_all(job, RCPT_DEFERRED, "4.3.0", reason, job->host);
		relay_done(job);
		return;
	}
	struct smtp_client_request req = {
		.env = job->q->env,
		.rcpts = job->rcpts,
		.rcpt_count = job->rcpt_count,
		.body = body,
		.helo = cfg->hostname,
		.addrs = addrs,
		.addr_count = n,
		.tls = job->tls,
		.verify_name = job->routed && !job->mx_lookup ? job->host : NULL,
		.tls_ctx = sched->srv->tls_client,
		.auth_user = user,
		.auth_password = password,
		.timeout = cfg->smtp_timeout,
		.max_transactions = RELAY_MAX_TRANSACTIONS,
	};
	job->client = smtp_client_start(sched->srv->base, &req, on_client_done,
	                                job);
	(void)close(body.fd); /* read-only; the client has its own */
	if (password != NULL)
		explicit_bzero(password, strlen(password));
	free(user);
	free(password);
	if (job->client == NULL) {
		relay_finish_all(job, RCPT_DEFERRED, "4.3.0", "out of memory",
		                 job->host);
		relay_done(job);
	}
}

/* The attempt goes over an idle connection of its destination: no DNS,
 * and the client's own addresses should it have to reconnect. */
static void relay_reuse(struct relay_job *job, struct idle_conn *ic)
{
	struct scheduler *sched = job->sched;
	struct spool_body body;
	job->started = true;
	if (spool_body_open(sched->srv->spool, job->q->env, &body) == -1) {
		char reason[512];
		snprintf(reason, sizeof reason,
		         "cannot read the queued message: %s", strerror(errno));
		idle_link(job->dest, ic); /* the connection is still good */
		relay_finish_all(job, RCPT_DEFERRED, "4.3.0", reason, job->host);
		relay_done(job);
		return;
	}
	struct smtp_client *client = ic->client;
	idle_conn_free(ic);
	struct smtp_client_request req = {
		.env = job->q->env,
		.rcpts = job->rcpts,
		.rcpt_count = job->rcpt_count,
		.body = body,
	};
	int rc = smtp_client_next(client, &req, on_client_done, job);
	(void)close(body.fd); /* read-only; the client has its own */
	if (rc == -1) {
		/* the client has released itself */
		relay_finish_all(job, RCPT_DEFERRED, "4.3.0", "out of memory",
		                 job->host);
		relay_done(job);
		return;
	}
	job->client = client;
}

static void on_resolved(const struct dns_result *res, void *arg)
{
	struct relay_job *job = arg;
	job->dns = NULL;
	switch (res->status) {
	case DNS_OK:
		relay_connect(job, res->hosts, res->host_count);
		return;
	case DNS_NXDOMAIN:
	case DNS_NO_HOST:
		/* The recipients' own domain does not exist: that is final.
		 * A route's target that does not resolve is our trouble. */
		if (!job->routed)
			relay_finish_all(job, RCPT_BOUNCED, "5.1.2", res->error,
			                 job->host);
		else
			relay_finish_all(job, RCPT_DEFERRED, "4.4.4", res->error,
			                 job->host);
		break;
	case DNS_NULL_MX:
		relay_finish_all(job, job->routed ? RCPT_DEFERRED : RCPT_BOUNCED,
		                 job->routed ? "4.4.4" : "5.1.10",
		                 "the domain accepts no mail (null MX)",
		                 job->host);
		break;
	case DNS_TEMPFAIL:
	default:
		relay_finish_all(job, RCPT_DEFERRED, "4.4.3", res->error,
		                 job->host);
		break;
	}
	relay_done(job);
}

/* A literal "[1.2.3.4]" or "[::1]" target needs no look-up. */
static bool literal_host(const char *host, struct dns_host *out,
                         struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	const char *text = host;
	if (strncasecmp(text, "IPv6:", 5) == 0)
		text += 5;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1)
		ss->ss_family = AF_INET;
	else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1)
		ss->ss_family = AF_INET6;
	else
		return false;
	out->name = (char *)host;
	out->preference = 0;
	out->addrs = ss;
	out->addr_count = 1;
	return true;
}

static void relay_start(struct relay_job *job)
{
	struct scheduler *sched = job->sched;
	job->started = true;
	if (job->host_is_ip) {
		struct dns_host host;
		struct sockaddr_storage ss;
		if (literal_host(job->host, &host, &ss)) {
			relay_connect(job, &host, 1);
			return;
		}
	}
	if (sched->srv->dns == NULL) {
		relay_finish_all(job, RCPT_DEFERRED, "4.4.3",
		                 "no DNS resolver available", job->host);
		relay_done(job);
		return;
	}
	job->dns = job->mx_lookup
	                   ? dns_resolve_mx(sched->srv->dns, job->host,
	                                    on_resolved, job)
	                   : dns_resolve_host(sched->srv->dns, job->host,
	                                      on_resolved, job);
	if (job->dns == NULL) {
		relay_finish_all(job, RCPT_DEFERRED, "4.4.3",
		                 "DNS query could not be started", job->host);
		relay_done(job);
	}
}

static enum tls_policy route_tls_policy(enum route_tls tls,
                                        enum tls_policy fallback)
{
	switch (tls) {
	case ROUTE_TLS_NONE:
		return TLS_POLICY_NONE;
	case ROUTE_TLS_MAY:
		return TLS_POLICY_MAY;
	case ROUTE_TLS_ENCRYPT:
		return TLS_POLICY_ENCRYPT;
	case ROUTE_TLS_VERIFY:
		return TLS_POLICY_VERIFY;
	case ROUTE_TLS_DEFAULT:
	default:
		return fallback;
	}
}

static const char *domain_of(const char *address)
{
	const char *at = strrchr(address, '@');
	return at ? at + 1 : "";
}

/* Group the due remote recipients of q by destination and start (or
 * queue) one attempt per destination. */
static void start_remote(struct queued *q, const size_t *due, size_t count,
			 struct run *run)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	bool *taken = calloc(count ? count : 1, sizeof *taken);
	if (taken == NULL)
		fatal("scheduler: out of memory");
	for (size_t i = 0; i < count; i++) {
		if (taken[i])
			continue;
		const char *domain = domain_of(q->env->rcpts[due[i]].address);
		const struct route *route = route_lookup(cfg->routes, domain);
		struct relay_job *job = calloc(1, sizeof *job);
		job->rcpts = malloc(count * sizeof *job->rcpts);
		if (job == NULL || job->rcpts == NULL)
			fatal("scheduler: out of memory");
		job->sched = sched;
		job->q = q;
		job->run = run;
		run->open++;
		job->domain = strdup(domain);
		job->routed = route != NULL;
		job->host = strdup(route ? route->host : domain);
		job->mx_lookup = route ? route->mx_lookup : true;
		job->host_is_ip = route ? route->host_is_ip : false;
		job->port = route ? route->port : 0;
		job->tls = route_tls_policy(route ? route->tls : ROUTE_TLS_DEFAULT,
		                            cfg->tls_outbound);
		job->auth_file = route && route->auth_file
		                         ? strdup(route->auth_file)
		                         : NULL;
		if (!job->domain || !job->host ||
		    (route && route->auth_file && !job->auth_file))
			fatal("scheduler: out of memory");
		/* Every due recipient with the same next hop joins. */
		for (size_t j = i; j < count; j++) {
			if (taken[j])
				continue;
			const char *other =
				domain_of(q->env->rcpts[due[j]].address);
			bool same = strcasecmp(other, domain) == 0;
			if (!same && route != NULL)
				same = route_lookup(cfg->routes, other) == route;
			if (same) {
				taken[j] = true;
				job->rcpts[job->rcpt_count++] = due[j];
				q->busy[due[j]] = true;
			}
		}
		char key[600];
		if (route != NULL)
			snprintf(key, sizeof key, "route %s", route->text);
		else
			snprintf(key, sizeof key, "mx %s", domain);
		job->dest = destination_get(sched, key);
		job->next_job = sched->jobs;
		if (sched->jobs != NULL)
			sched->jobs->prev_job = job;
		sched->jobs = job;
		q->in_flight++;
		sched->relays++;
		*job->dest->wait_tail = job;
		job->dest->wait_tail = &job->next;
		destination_drain(sched, job->dest);
	}
	free(taken);
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
	snprintf(dsn, sizeof dsn, "%s", r->dsn[0] == '4' ? r->dsn : "4.4.7");
	char reason[600];
	snprintf(reason, sizeof reason, "delivery time expired%s%s",
	         r->reason ? ": " : "", r->reason ? r->reason : "");
	q->busy[index] = true;
	set_outcome(cfg, q, r, RCPT_BOUNCED, dsn, reason);
	r->attempts--; /* expiry is not an attempt */
	count_outcome(q, RCPT_BOUNCED);
	dsn[0] = '5';
	const char *place = q->last_relay[index] ? q->last_relay[index] : "";
	if (r->local) {
		char mailbox_path[4096] = "";
		char *mailbox = policy_mailbox_path(cfg, r->address, NULL);
		if (mailbox != NULL)
			snprintf(mailbox_path, sizeof mailbox_path, "%s", mailbox);
		free(mailbox);
		log_outcome_as("expired", q, r, dsn, "mailbox", mailbox_path);
	} else {
		log_outcome_as("expired", q, r, dsn, "relay", place);
	}
	run_settle(run, &index, 1);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	queued_run(arg);
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
		if (r->state == RCPT_DEFERRED && !q->busy[i] &&
		    bounce_wanted(q->env->sender, r, BOUNCE_DELAY))
			delayed[n++] = i;
	}
	if (n > 0) {
		q->env->flags |= SPOOL_FLAG_DELAY_NOTIFIED;
		settle(q, NULL, 0, true, delayed, n);
	}
	free(delayed);
}

/*
 * Start what is due in one message: pending recipients, and deferred ones
 * whose time has come; expire those past queue_lifetime. Then arm the
 * timer for the next deferred one.
 */
static void queued_run(struct queued *q)
{
	struct scheduler *sched = q->sched;
	const struct config *cfg = sched->srv->cfg;
	time_t now = time(NULL);
	time_t next = 0;

	if (sched->stopping || q->deleted)
		return;
	size_t *remote = malloc(q->env->rcpt_count * sizeof *remote);
	if (remote == NULL)
		fatal("scheduler: out of memory");
	struct run *run = run_new(q);
	size_t nremote = 0;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[i];
		if (q->busy[i])
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
			expire(q, i, run);
			continue;
		}
		if (!r->local) {
			remote[nremote++] = i;
			continue;
		}
		if (sched->deliveries >= MAX_LOCAL_DELIVERIES) {
			ready_push(sched, q);
			continue;
		}
		start_local(q, i, run);
	}
	if (nremote > 0)
		start_remote(q, remote, nremote, run);
	free(remote);
	run_release(run);
	maybe_notify_delay(q, now);
	if (next != 0) {
		struct timeval tv = {next > now ? next - now : 0, 0};
		evtimer_add(q->timer, &tv);
	}
}

/* facteur_queue_oldest_seconds, asked at each scrape: one pass over the
 * queue, as a scrape is rare next to the mail it watches. */
static double oldest_age(void *arg)
{
	const struct scheduler *sched = arg;
	time_t oldest = 0;
	for (const struct queued *q = sched->messages; q != NULL; q = q->next)
		if (oldest == 0 || q->env->arrival < oldest)
			oldest = q->env->arrival;
	return oldest == 0 ? 0.0 : (double)(time(NULL) - oldest);
}

/* How often the spool is asked whether its oldest segment needs its live
 * messages moved, and how many may move in one go. */
#define COMPACT_INTERVAL 10
#define COMPACT_BATCH 20000

/* Offer the spool the messages it may move: only idle ones, whose state
 * in memory is exactly what their records say. */
static void on_compact(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *sched = arg;
	struct spool *spool = sched->srv->spool;
	size_t moved = 0;
	(void)fd;
	(void)what;
	for (struct queued *q = sched->messages;
	     q != NULL && moved < COMPACT_BATCH && !sched->stopping &&
	     spool_wants_compaction(spool);
	     q = q->next)
		if (q->in_flight == 0 && !q->deleted &&
		    spool_compact(spool, q->env) == 1)
			moved++;
}

struct scheduler *scheduler_new(struct server *srv)
{
	static const struct timeval every = {COMPACT_INTERVAL, 0};
	struct scheduler *sched = calloc(1, sizeof *sched);
	if (sched == NULL)
		return NULL;
	sched->compact_timer =
	    event_new(srv->base, -1, EV_PERSIST, on_compact, sched);
	if (sched->compact_timer == NULL ||
	    event_add(sched->compact_timer, &every) == -1) {
		if (sched->compact_timer != NULL)
			event_free(sched->compact_timer);
		free(sched);
		return NULL;
	}
	sched->srv = srv;
	sched->ready_tail = &sched->ready_head;
	sched->interfaces = localaddr_interfaces_new();
	if (sched->interfaces == NULL) {
		event_free(sched->compact_timer);
		free(sched);
		return NULL;
	}
	metrics_set_queue_age_source(oldest_age, sched);
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	return sched;
}

void scheduler_free(struct scheduler *sched)
{
	if (sched == NULL)
		return;
	metrics_set_queue_age_source(NULL, NULL);
	event_free(sched->compact_timer);
	localaddr_interfaces_free(sched->interfaces);
	while (sched->jobs != NULL) {
		struct relay_job *job = sched->jobs;
		if (job->dns != NULL)
			dns_cancel(job->dns);
		if (job->client != NULL)
			smtp_client_cancel(job->client);
		run_forget(job->run);
		relay_job_free(job);
	}
	while (sched->closing != NULL) {
		struct idle_conn *ic = sched->closing;
		sched->closing = ic->next;
		smtp_client_cancel(ic->client);
		idle_conn_free(ic);
	}
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++) {
		while (sched->destinations[i] != NULL) {
			struct destination *d = sched->destinations[i];
			sched->destinations[i] = d->next;
			while (d->idle != NULL) {
				struct idle_conn *ic = d->idle;
				d->idle = ic->next;
				smtp_client_cancel(ic->client);
				idle_conn_free(ic);
			}
			free(d->key);
			free(d);
		}
	}
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
	char **last_relay = calloc(env->rcpt_count ? env->rcpt_count : 1,
	                           sizeof *last_relay);
	struct event *timer = q ? evtimer_new(sched->srv->base, on_timer, q)
	                        : NULL;
	if (q == NULL || busy == NULL || last_relay == NULL || timer == NULL)
		fatal("scheduler: out of memory for message %s", env->id);
	q->last_relay = last_relay;
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

/* An attempt that has not connected yet is dropped: its recipients stay
 * as recorded and are tried again after the restart. */
static void relay_drop(struct relay_job *job)
{
	job->q->in_flight--;
	job->sched->relays--;
	for (size_t k = 0; k < job->rcpt_count; k++)
		job->q->busy[job->rcpts[k]] = false;
	run_release(job->run);
	relay_job_free(job);
}

/* SIGTERM: nothing new starts; attempts waiting for a connection slot or
 * for DNS are dropped; those talking SMTP may finish; idle connections
 * say QUIT. */
void scheduler_stop(struct scheduler *sched)
{
	sched->stopping = true;
	for (struct relay_job *job = sched->jobs; job != NULL;) {
		struct relay_job *next = job->next_job;
		if (job->dns != NULL) {
			dns_cancel(job->dns);
			job->dest->active--;
			relay_drop(job);
		}
		job = next;
	}
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++) {
		for (struct destination *d = sched->destinations[i]; d != NULL;
		     d = d->next) {
			while (d->wait_head != NULL) {
				struct relay_job *job = d->wait_head;
				d->wait_head = job->next;
				relay_drop(job);
			}
			d->wait_tail = &d->wait_head;
			while (d->idle != NULL)
				idle_close(d->idle);
		}
	}
}

bool scheduler_idle(const struct scheduler *sched)
{
	return sched->deliveries == 0 && sched->records == 0 &&
	       sched->relays == 0 && sched->closing_count == 0;
}

size_t scheduler_queue_size(const struct scheduler *sched)
{
	return sched->count;
}

/* ---- for the control socket ---- */

static int compare_age(const void *a, const void *b)
{
	const struct queued *x = *(const struct queued *const *)a;
	const struct queued *y = *(const struct queued *const *)b;
	if (x->env->arrival != y->env->arrival)
		return x->env->arrival < y->env->arrival ? -1 : 1;
	return strcmp(x->env->id, y->env->id);
}

void scheduler_foreach(const struct scheduler *sched, scheduler_visit_cb visit,
                       void *arg)
{
	if (sched->count == 0)
		return;
	const struct queued **all = malloc(sched->count * sizeof *all);
	if (all == NULL)
		return;
	size_t n = 0;
	for (const struct queued *q = sched->messages; q != NULL; q = q->next)
		if (!q->deleted)
			all[n++] = q;
	qsort(all, n, sizeof *all, compare_age);
	for (size_t i = 0; i < n; i++)
		visit(all[i]->env, arg);
	free(all);
}

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
	while (q->owed != NULL)
		notice_drop(q->owed);
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

int scheduler_bounce(struct scheduler *sched, const char *id)
{
	struct queued *q = find(sched, id);
	if (q == NULL)
		return -1;
	const struct config *cfg = sched->srv->cfg;
	size_t *now_bounced = malloc((q->env->rcpt_count + 1) * sizeof(size_t));
	if (now_bounced == NULL)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < q->env->rcpt_count; i++) {
		struct spool_rcpt *r = &q->env->rcpts[i];
		if (q->busy[i] || r->state == RCPT_DELIVERED ||
		    r->state == RCPT_BOUNCED)
			continue;
		q->busy[i] = true;
		set_outcome(cfg, q, r, RCPT_BOUNCED, "5.0.0",
		            "bounced by the administrator");
		r->attempts--; /* not a delivery attempt */
		count_outcome(q, RCPT_BOUNCED);
		log_outcome("bounced", q, r, r->local ? "mailbox" : "relay", "");
		now_bounced[n++] = i;
	}
	if (n > 0)
		settle(q, now_bounced, n, false, NULL, 0);
	free(now_bounced);
	return 0;
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
	log_event(LOG_LEVEL_INFO, "accepted", LOG_S("queue_id", env->id),
	          LOG_S("from", env->sender), LOG_I("size", env->size),
	          LOG_I("nrcpt", env->rcpt_count),
	          LOG_S("client", env->client_addr),
	          LOG_S("protocol", env->protocol));
	metrics.messages_accepted_total++;
	scheduler_add(sched, env, false);
	return 0;
}
