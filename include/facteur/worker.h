/*
 * Helper threads for work that is neither a flush nor mail logic but
 * would stall the loop: checking a password with crypt(3) (milliseconds
 * of CPU by design) and sizing the messages of a mailbox at POP3 login
 * (reading every file). Kept apart from the iothread so that such work
 * never delays a spool commit's flush, and a flush never delays a login.
 */
#ifndef FACTEUR_WORKER_H
#define FACTEUR_WORKER_H

#include <stddef.h>

struct event_base;
struct worker;

/* Runs on a helper thread: it may touch only what `arg` owns, never
 * what the loop may use meanwhile. */
typedef void (*worker_fn)(void *arg);
/* Runs on the loop thread once `run` is done. */
typedef void (*worker_done)(void *arg);

/* NULL when a thread or the notification pipe cannot be made. */
struct worker *worker_new(struct event_base *base);
/* Finishes every job handed over (their done callbacks run), then joins. */
void worker_free(struct worker *w);

/* Run `run(arg)` on a helper thread, then `done(arg)` on the loop. The
 * done callback always runs later, never inside this call, and always
 * runs: a caller that went away meanwhile marks that in `arg` and lets
 * `done` free it. Returns 0, or -1 when out of memory. */
int worker_run(struct worker *w, worker_fn run, worker_done done, void *arg);

/* Jobs handed over whose done callback has not run yet. */
size_t worker_pending(const struct worker *w);

#endif
