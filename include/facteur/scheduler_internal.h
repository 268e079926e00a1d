/*
 * What the scheduler's two files share, and nothing outside them may
 * use: the scheduler, its cursors, and the calls one file makes into the
 * other (queued.h is the message's side, shared with notice.c too).
 * Which file does what:
 *
 *   scheduler.c          the queue: messages joining and leaving, runs,
 *                        local deliveries and relay attempts, outcomes,
 *                        expiry, the due timer, the gauges, compaction
 *   scheduler_control.c  the operator's hand: finding a message, flush,
 *                        delete, bounce, hold and release, suspend and
 *                        resume, sweeps over the queue, cursors, pickup
 */
#ifndef FACTEUR_SCHEDULER_INTERNAL_H
#define FACTEUR_SCHEDULER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/due_heap.h"
#include "facteur/metrics.h"
#include "facteur/queued.h"
#include "facteur/spool.h"

struct config;
struct domain_suspend;
struct event;
struct relay;
struct server;
struct spool_strings;
struct sweep;

struct scheduler {
	struct server *srv;
	struct queued *messages; /* newest first */
	struct queued *oldest;	 /* the list's tail */
	size_t count;
	struct scheduler_cursor *cursors; /* listings under way */
	struct sweep *sweeps;		  /* flushes and resumes under way */
	struct domain_suspend *suspended;
	struct queued *ready_head, **ready_tail;
	unsigned deliveries; /* local deliveries in flight */
	unsigned records;    /* spool records and DSN commits in flight */
	struct relay *relay;
	struct event *compact_timer;
	/* a compaction pass under way: its walk, its next slice, and how
	 * many messages it moved */
	struct scheduler_cursor *compacting;
	struct event *compact_slice;
	size_t compact_moved;
	struct due_heap due;	  /* messages with a deferred recipient */
	struct due_heap arrivals; /* every message, by arrival */
	/* facteur_queue_messages{state}, kept as messages change */
	uint64_t state_counts[METRICS_QUEUE_STATE_COUNT];
	struct spool_strings *strings; /* the spool's: shared texts */
	struct event *due_timer;       /* armed for the heap's first */
	bool stopping;
};

/* A listing's place in the list: the next message it visits. */
struct scheduler_cursor {
	struct scheduler *sched;
	struct queued *at;   /* the next to visit */
	struct queued *last; /* the one last visited, while it lives */
	struct scheduler_cursor *prev, *next;
};

/* scheduler.c: start what is due of q (held, deleted or stopping: none). */
void queued_run(struct queued *q);
/* Forget q once all its recipients are done and recorded (or it was
 * deleted) and nothing of it is in flight; true when it is gone. */
bool queued_finish_if_done(struct queued *q);
/* q counted again for facteur_queue_messages{state}, after its
 * recipients' states or its flags changed. */
void queued_count(struct queued *q);
/* Recipient r of q gets an outcome (state, enhanced code, reason), and
 * its next attempt when deferred. */
void queued_set_outcome(const struct config *cfg, struct queued *q,
			struct spool_rcpt *r, enum rcpt_state state,
			const char *dsn, const char *reason);
/* facteur_deliveries_total for an outcome of q. */
void queued_count_outcome(const struct queued *q, enum rcpt_state state);
/* The outcome line (`event`) of recipient r of q, with `where` (the
 * field's name: "mailbox" or "relay") set to `place`. */
void queued_log_outcome(const char *event, const struct queued *q,
			const struct spool_rcpt *r, const char *where,
			const char *place);

/* Time slices: a walk over the queue does at most about a millisecond of
 * work a loop turn. scheduler_slice_spent says whether one that started
 * at `start` (scheduler_monotonic_usec) and did `done` things has spent
 * its time, reading the clock every few things only. */
long long scheduler_monotonic_usec(void);
bool scheduler_slice_spent(long long start, size_t done);

/* scheduler_control.c: the sweeps under way, freed (scheduler_free). */
void scheduler_sweeps_free(struct scheduler *sched);

#endif
