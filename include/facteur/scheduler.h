/*
 * The in-memory view of the queue: which recipients are ready, in
 * flight, or deferred until a time; retries with exponential backoff
 * between retry_min and retry_max; expiry after queue_lifetime. Every
 * outcome is written to the spool before it is forgotten. The operator
 * may hold messages and suspend destination domains. Local
 * deliveries start here; relay attempts go through relay.h, DSNs
 * through notice.h.
 */
#ifndef FACTEUR_SCHEDULER_H
#define FACTEUR_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct domain_suspend;
struct server;
struct scheduler;
struct spool_envelope;

struct scheduler *scheduler_new(struct server *srv);
void scheduler_free(struct scheduler *sched);

enum scheduler_origin {
	/* just committed (SMTP, a DSN, facteur-sendmail's pickup): logged
	 * as "accepted" and counted */
	SCHEDULER_NEW,
	/* found by recovery at start: a delivery checks first whether a
	 * crash came between its link and its record */
	SCHEDULER_RECOVERED,
};

/* A committed message joins the queue; the scheduler owns the envelope
 * from now on. */
void scheduler_enqueue(struct scheduler *sched, struct spool_envelope *env,
		       enum scheduler_origin origin);

/* The same for a message just received over SMTP, whose `accepted`
 * line also names its session and its Message-ID (each NULL: none). */
struct scheduler_arrival {
	const char *session;
	const char *message_id;
	/* a local submission's caller (submit.h); -1 and NULL otherwise */
	long local_uid;
	const char *local_user;
	const char *milter, *milter_action; /* the last milter's say, or NULL */
};
void scheduler_enqueue_arrival(struct scheduler *sched,
			       struct spool_envelope *env,
			       const struct scheduler_arrival *arrival);

/* Retry every deferred recipient now: the destinations' pauses end, and
 * the messages run from the next loop turn on, a slice of the queue a
 * turn (as for the messages of a domain resumed). */
void scheduler_flush(struct scheduler *sched);

/* Stop starting deliveries (SIGTERM); true once none is in flight. */
void scheduler_stop(struct scheduler *sched);
bool scheduler_idle(const struct scheduler *sched);

size_t scheduler_queue_size(const struct scheduler *sched);

/* ---- for the control socket (facteurctl) ---- */

/*
 * A walk over the queue that spans loop turns (a listing streamed to a
 * control client): oldest first, in the order messages joined the
 * queue. A message removed meanwhile is skipped, one that joins
 * meanwhile is not visited.
 */
struct scheduler_cursor;
struct scheduler_cursor *scheduler_cursor_new(struct scheduler *sched);
/* The next live message, or NULL at the end. Valid until the loop runs
 * again. */
const struct spool_envelope *
scheduler_cursor_next(struct scheduler_cursor *cursor);
void scheduler_cursor_free(struct scheduler_cursor *cursor);

/* What the operator does to the messages a selector picks. */
enum scheduler_action {
	SCHEDULER_DELETE,  /* as scheduler_delete */
	SCHEDULER_BOUNCE,  /* as scheduler_bounce */
	SCHEDULER_HOLD,	   /* neither tried nor expired until released */
	SCHEDULER_RELEASE, /* held no more, and due at once */
};
/* Apply `action` to one message: -1 when no such id. */
int scheduler_act(struct scheduler *sched, const char *id,
		  enum scheduler_action action);
/* To the message scheduler_cursor_next returned last (nothing when it
 * left the queue since). A hold or release of a message already so
 * changes nothing. */
void scheduler_cursor_act(struct scheduler_cursor *cursor,
			  enum scheduler_action action);

/* Suspended destination domains (domain_suspend.h): until 0 means until
 * resumed. 0, or -1 with errno (the suspension file cannot be written).
 * scheduler_resume returns 1 when the domain was not suspended. */
int scheduler_suspend(struct scheduler *sched, const char *domain,
		      time_t until);
int scheduler_resume(struct scheduler *sched, const char *domain);
const struct domain_suspend *
scheduler_suspensions(const struct scheduler *sched);
/* Whether the relay keeps away from the domain's destination after a
 * throttling reply, and until when (relay_domain_paused). */
bool scheduler_domain_paused(const struct scheduler *sched, const char *domain,
			     time_t *until);

/* The envelope of a queued message, or NULL. Valid until the loop runs
 * again. */
const struct spool_envelope *scheduler_find(const struct scheduler *sched,
					    const char *id);

/* Retry the deferred recipients of one message now. -1: no such id. */
int scheduler_flush_one(struct scheduler *sched, const char *id);

/* Remove a message from the queue and the spool without a DSN; its
 * recipients in flight finish first. -1: no such id. */
int scheduler_delete(struct scheduler *sched, const char *id);
/* Every message; returns how many. */
size_t scheduler_delete_all(struct scheduler *sched);

/* Give up now: every recipient not done is bounced ("5.0.0", "bounced by
 * the administrator") and the sender gets a DSN. -1: no such id. */
int scheduler_bounce(struct scheduler *sched, const char *id);

/* A message written into the spool by another process (facteur-sendmail)
 * joins the queue: its envelope is read from disk. 0, or -1 with errno
 * (ENOENT: no such message; EEXIST: already queued). */
int scheduler_pickup(struct scheduler *sched, const char *id);

/* The backoff before attempt number `attempts` + 1, without jitter:
 * retry_min * 2^(attempts - 1), at most retry_max. */
unsigned scheduler_backoff(unsigned retry_min, unsigned retry_max,
			   unsigned attempts);

#endif
