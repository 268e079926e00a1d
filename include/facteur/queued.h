/*
 * A queued message as the scheduler and its notices share it: the
 * envelope, each recipient's phase, and what of it is in flight. Only
 * scheduler.c and notice.c include this; everyone else goes through
 * scheduler.h.
 */
#ifndef FACTEUR_QUEUED_H
#define FACTEUR_QUEUED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "facteur/due_heap.h"

struct event;
struct notice;
struct scheduler;
struct server;
struct spool_envelope;

/* Where a recipient is between its record in the spool and the next. */
enum rcpt_phase {
	RCPT_PHASE_IDLE,       /* as recorded: due, deferred, or final */
	RCPT_PHASE_DELIVERING, /* a delivery or relay attempt is under way */
	RCPT_PHASE_SETTLING,   /* has an outcome; its DSN and record follow */
	RCPT_PHASE_OWED,       /* has an outcome; its DSN could not be
				  queued yet, so it is not recorded */
};

/* What the scheduler keeps of a recipient beside its envelope. */
struct queued_rcpt {
	const char *last_relay; /* the relay last tried, for the expiry log
				   line (memory only; interned) */
	enum rcpt_phase phase;
};

/* One allocation a message, with its recipients' part at its end; the
 * envelope is packed (spool_envelope_pack), so that a queued message
 * costs a few hundred octets at a million of them. */
struct queued {
	struct queued *prev, *next; /* every message */
	struct queued *ready_next;  /* waiting for a local delivery slot */
	struct scheduler *sched;
	struct spool_envelope *env;
	struct due_entry due;	  /* when the next deferred recipient is */
	struct due_entry arrival; /* its arrival: the queue's oldest first */
	struct notice *owed;	  /* DSNs not queued yet: tried again */
	unsigned in_flight; /* attempts, DSNs and records of this message */
	bool ready;
	bool recovered; /* found at start-up: deliveries check first */
	bool deleted;	/* facteurctl delete: removed once idle */
	/* the state facteur_queue_messages{state} counts it under, plus
	 * one (0: not counted) */
	uint8_t counted;
	struct queued_rcpt rcpt[]; /* env->rcpt_count of them */
};

/* The daemon's shared state, the scheduler's. */
struct server *queued_server(const struct queued *q);

/* Recipient `index` moves to `phase` (logged at debug level). */
void queued_enter_phase(struct queued *q, size_t index, enum rcpt_phase phase);

/* Write recipient `index`'s state to the spool; it goes back to
 * RCPT_PHASE_IDLE once the record is durable. */
void queued_record_rcpt(struct queued *q, size_t index);

/* Write the message's flags to the spool. */
void queued_record_flags(struct queued *q);

/* A spool write of the scheduler's (a record, a DSN's commit) starts or
 * ends: the daemon does not exit with one in flight. */
void queued_write_started(struct queued *q);
void queued_write_done(struct queued *q);

/* After anything of q finished: remove it, or start what is due. */
void queued_settled(struct queued *q);

/* SIGTERM was seen: nothing new starts. */
bool queued_stopping(const struct queued *q);

#endif
