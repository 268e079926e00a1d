/*
 * The one place where facteur waits for the disk. A helper thread that
 * only calls fsync(2) on descriptors handed to it and posts completions
 * back to the event loop, so the loop itself never blocks on a flush.
 * Requests queued while the thread is busy are flushed together in its
 * next round (group commit), and a descriptor named by several requests
 * of one round (a spool or Maildir directory) is flushed once.
 */
#ifndef FACTEUR_IOTHREAD_H
#define FACTEUR_IOTHREAD_H

#include <stddef.h>

struct event_base;
struct iothread;

/* Called on the loop thread; error is 0 or the errno of the first fsync
 * of this request that failed. */
typedef void (*iothread_cb)(int error, void *arg);

struct iothread *iothread_new(struct event_base *base);
/* Finishes every queued request (their callbacks run), then joins. */
void iothread_free(struct iothread *io);

/* Flush these descriptors (copied; the caller keeps them open until the
 * callback). The callback always runs later on the loop, never inside
 * this call. Returns 0, or -1 when out of memory. */
int iothread_fsync(struct iothread *io, const int *fds, size_t nfds,
                   iothread_cb cb, void *arg);

/* Requests handed over and not yet completed. */
size_t iothread_pending(const struct iothread *io);

#endif
