/*
 * mbox delivery (mbox.c, driven by deliver.c): the message is appended
 * under a dot lock and an fcntl lock, after a From_ line, quoted the
 * mboxrd way, and the file cut back to its old size when a write or a
 * flush fails. Deliveries to one file are queued and run one at a time.
 * This header holds the parts the tests use on their own: the quoting
 * and the dot lock.
 */
#ifndef FACTEUR_MBOX_H
#define FACTEUR_MBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

/*
 * mboxrd quoting, streaming: a line matching ^>*From  gets one more '>'.
 * Zero-initialise the state (the input starts at a line start). `out`
 * must hold MBOX_QUOTE_OUT_MAX(inlen) octets; returns the octets
 * written. The first octets of a line that may become "From " are held
 * back until the line decides; mbox_quote_finish writes them at the
 * end of the input (at most 4 octets).
 */
struct mbox_quote_state {
	bool mid_line;    /* private */
	unsigned matched; /* private: octets of "From " held back */
};
#define MBOX_QUOTE_OUT_MAX(inlen) (2 * (inlen) + 8)
size_t mbox_quote(struct mbox_quote_state *q, const char *in, size_t inlen,
                  char *out);
size_t mbox_quote_finish(struct mbox_quote_state *q, char *out);

/*
 * The mbox dot lock "<mbox>.lock", in two steps so that breaking a stale
 * one is safe when several lockers find it stale at once (see mbox.c).
 * mbox_dot_lock_try creates the lock `name` in `dirfd`: DOT_LOCK_TAKEN
 * with `file` naming it (fd -1). When the lock there is older than
 * `stale_seconds` it returns DOT_LOCK_STALE with `file` holding a
 * descriptor on that lock (or -1 if it cannot be read); then
 * mbox_dot_lock_break removes that very file and nothing else, and
 * closes the descriptor.
 */
enum mbox_dot_lock {
	DOT_LOCK_TAKEN,
	DOT_LOCK_BUSY,  /* a live lock, or another locker is breaking it */
	DOT_LOCK_STALE, /* try: `file` is set, break it; break: removed */
	DOT_LOCK_ERROR, /* errno */
};
struct mbox_lock_file {
	int fd;
	dev_t dev;
	ino_t ino;
};
enum mbox_dot_lock mbox_dot_lock_try(int dirfd, const char *name,
                                     time_t stale_seconds,
                                     struct mbox_lock_file *file);
/* DOT_LOCK_STALE when the stale file was removed or had gone (try
 * again), DOT_LOCK_BUSY when another locker is breaking it or a fresh
 * lock has replaced it, DOT_LOCK_ERROR (errno) otherwise. */
enum mbox_dot_lock mbox_dot_lock_break(int dirfd, const char *name,
                                       struct mbox_lock_file *file);

#endif
