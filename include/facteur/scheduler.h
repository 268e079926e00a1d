/*
 * The in-memory view of the queue: which recipients are ready, in
 * flight, or deferred until a time; retries with exponential backoff
 * between retry_min and retry_max; expiry after queue_lifetime. Every
 * outcome is written to the spool before it is forgotten.
 */
#ifndef FACTEUR_SCHEDULER_H
#define FACTEUR_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>

struct server;
struct scheduler;
struct spool_envelope;

struct scheduler *scheduler_new(struct server *srv);
void scheduler_free(struct scheduler *sched);

/* A committed message (new, or found by recovery) enters the queue; the
 * scheduler owns the envelope from now on. */
void scheduler_add(struct scheduler *sched, struct spool_envelope *env,
                   bool recovered);

/* Retry every deferred recipient now. */
void scheduler_flush(struct scheduler *sched);

/* Stop starting deliveries (SIGTERM); true once none is in flight. */
void scheduler_stop(struct scheduler *sched);
bool scheduler_idle(const struct scheduler *sched);

size_t scheduler_queue_size(const struct scheduler *sched);

/* The backoff before attempt number `attempts` + 1, without jitter:
 * retry_min * 2^(attempts - 1), at most retry_max. */
unsigned scheduler_backoff(unsigned retry_min, unsigned retry_max,
                           unsigned attempts);

#endif
