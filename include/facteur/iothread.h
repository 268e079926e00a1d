/*
 * The one place where facteur waits for the disk. A helper thread that
 * flushes descriptors handed to it (and does the file work a request
 * carries before and between its flushes) and posts completions back to
 * the event loop, so the loop itself never blocks on a flush. Requests
 * queued while the thread is busy are flushed together in its next round
 * (group commit), and a descriptor named by several requests of one
 * round (a spool or Maildir directory) is flushed once. A request may
 * carry a prepare run before its flush (create and write a file) and a
 * step run between two flushes (fsync the file, move it into a
 * directory, fsync the directory) so that it needs one round only.
 */
#ifndef FACTEUR_IOTHREAD_H
#define FACTEUR_IOTHREAD_H

#include <stdbool.h>
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

/* Work done on the I/O thread between the two flushes of a request:
 * returns 0 or an errno. It must not touch what the loop may use
 * meanwhile. */
typedef int (*iothread_step)(void *arg);

/* Like iothread_fsync, in one trip: flush `fds`; if that worked, run
 * `step(arg)` on the I/O thread (when not NULL); if that worked too,
 * flush `after`. The `after` descriptors of one round are flushed once
 * each after every step of the round, so deliveries into one directory
 * that complete in the same round share its flush (group commit). error
 * is that of the first stage that failed; later stages do not run.
 * Requests without step and `after` (iothread_fsync) complete as soon as
 * their round's first flushes are done, before the steps: the callbacks
 * keep the order of the requests among each kind, not across kinds. */
int iothread_fsync_step(struct iothread *io, const int *fds, size_t nfds,
                        iothread_step step, const int *after, size_t nafter,
                        iothread_cb cb, void *arg);

/* Work done on the I/O thread before the first flush of a request. It
 * gets the request's own copy of its first descriptors and may set them
 * (to the file it opened and wrote, say): those are what is flushed.
 * Returns 0 or an errno. */
typedef int (*iothread_prepare)(void *arg, int *fds, size_t nfds);

/* Like iothread_fsync_step, with one more stage first: `prepare(arg)`
 * runs on the I/O thread before the first flush (opening and writing
 * the file to be flushed, say), so that the loop does not spend its time
 * on it. The prepares of a round run one after another, before any of
 * its flushes. */
int iothread_prepare_fsync_step(struct iothread *io, iothread_prepare prepare,
                                const int *fds, size_t nfds,
                                iothread_step step, const int *after,
                                size_t nafter, iothread_cb cb, void *arg);

/* Whether a round's descriptors that share a file system are made
 * durable by one syncfs(2) of it instead of an fsync(2) each (off at
 * first): one disk flush for many files, for file systems that hold the
 * spool and mailboxes only, since it also writes what others left dirty
 * there. A descriptor alone on its file system still gets its fsync. */
void iothread_flush_by_filesystem(struct iothread *io, bool on);

/* Requests handed over and not yet completed. */
size_t iothread_pending(const struct iothread *io);

#endif
