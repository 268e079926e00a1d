/*
 * Local delivery into mailboxes: Maildir (tmp/ -> fsync -> new/) and
 * mbox. The message is read from its spool file in wire form and written
 * in mailbox form (dot-stuffing undone, LF line ends) after a
 * Return-Path and a Delivered-To header. Writes go to the page cache on
 * the loop; every fsync goes through the iothread.
 *
 * A delivery is idempotent: the Maildir file name in new/ is made from
 * the request's `unique` string, so a retry after a crash finds the file
 * it already delivered and does not deliver it twice. Its tmp/ name adds
 * a fresh random part per attempt, and is created exclusively.
 *
 * Nothing below the mailbox root is reached through a symbolic link:
 * folders are walked and made one component at a time with O_NOFOLLOW,
 * files are created with O_EXCL|O_NOFOLLOW, and an mbox must be a
 * regular file with one link, owned by the daemon's user.
 */
#ifndef FACTEUR_DELIVER_H
#define FACTEUR_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "facteur/config.h"
#include "facteur/spool.h"

struct event_base;
struct iothread;

enum deliver_result {
	DELIVER_OK,
	DELIVER_TEMPFAIL, /* retry later: permission, disk full, lock busy */
	DELIVER_PERMFAIL, /* will never work: bounce */
};

struct deliver_request {
	enum mailbox_format format;
	const char *mailbox;    /* the Maildir folder or mbox file */
	size_t root_len;        /* mailbox[0..root_len) may hold symbolic
	                         * links (policy_mailbox_root_length) */
	struct spool_body body; /* the message in wire form; its descriptor
	                         * is duplicated, the caller keeps its own */
	const char *sender;     /* "" for the null sender */
	const char *recipient;  /* for Delivered-To */
	const char *unique;     /* unique per message and recipient */
	time_t arrival;         /* first part of the Maildir name */
	const char *hostname;   /* last part of the Maildir name */
	bool check_existing;    /* after a restart: look in cur/ too */
};

/* `dsn` is an enhanced status code ("2.0.0", "4.3.0", "5.2.0") and
 * `reason` a short text for logs and bounces; both live until the
 * callback returns. */
typedef void (*deliver_cb)(enum deliver_result result, const char *dsn,
                           const char *reason, void *arg);

/* Start a delivery; the callback runs later, on the loop, exactly once.
 * The request's strings are copied. Returns 0, or -1 when out of memory
 * (no callback then). Deliveries to one mbox file are serialised here;
 * a lock held by another program is retried on a timer for a bounded
 * time, then the delivery is deferred. */
int deliver_start(struct event_base *base, struct iothread *io,
                  const struct deliver_request *req, deliver_cb cb,
                  void *arg);

/* The Maildir file name "<arrival>.<unique>.<hostname>", with '/' and ':'
 * in the host name written as \057 and \072. Returns the length, or -1 if
 * it does not fit. */
int deliver_maildir_name(char *buf, size_t len, time_t arrival,
                         const char *unique, const char *hostname);

/*
 * Open the folder `path` the way deliveries do, so that a mail reader
 * (POP3) reaches no more than they write: its first `root_len` octets
 * (policy_mailbox_root_length) are opened as they are, every component after
 * them without following a link (ELOOP for one), and "." or ".." there
 * is refused (EINVAL). Missing folders are made (mode 0700) when
 * `create`. Returns an O_PATH directory descriptor, for the *at calls,
 * or -1 (errno) with *failed_len, when not NULL, the length of the
 * part of `path` that failed. Safe on any thread: it keeps no state.
 */
int deliver_open_folder(const char *path, size_t root_len, bool create,
                        size_t *failed_len);

/* openat(dirfd, name) of a directory with O_DIRECTORY|O_NOFOLLOW|
 * O_CLOEXEC added to `mode` (O_RDONLY, O_PATH): ELOOP, never ENOTDIR,
 * when `name` is a symbolic link. */
int deliver_open_directory_at(int dirfd, const char *name, int mode);

/* mkdir -p with mode 0700 for the parts it creates. 0 or -1 (errno). */
int deliver_mkdirs(const char *path);

/*
 * mboxrd quoting, streaming: a line matching ^>*From  gets one more '>'.
 * Zero-initialise the state (the input starts at a line start). `out`
 * must hold DELIVER_MBOXRD_OUT_MAX(inlen) octets; returns the octets
 * written. The first octets of a line that may become "From " are held
 * back until the line decides; deliver_mboxrd_finish writes them at the
 * end of the input (at most 4 octets).
 */
struct deliver_mboxrd {
	bool mid_line;    /* private */
	unsigned matched; /* private: octets of "From " held back */
};
#define DELIVER_MBOXRD_OUT_MAX(inlen) (2 * (inlen) + 8)
size_t deliver_mboxrd_quote(struct deliver_mboxrd *q, const char *in,
                            size_t inlen, char *out);
size_t deliver_mboxrd_finish(struct deliver_mboxrd *q, char *out);

/*
 * The mbox dot lock "<mbox>.lock", in two steps so that breaking a stale
 * one is safe when several lockers find it stale at once (see deliver.c).
 * deliver_dot_lock_try creates the lock `name` in `dirfd`: DOT_LOCK_TAKEN
 * with `file` naming it (fd -1). When the lock there is older than
 * `stale_seconds` it returns DOT_LOCK_STALE with `file` holding a
 * descriptor on that lock (or -1 if it cannot be read); then
 * deliver_dot_lock_break removes that very file and nothing else, and
 * closes the descriptor.
 */
enum deliver_dot_lock {
	DOT_LOCK_TAKEN,
	DOT_LOCK_BUSY,  /* a live lock, or another locker is breaking it */
	DOT_LOCK_STALE, /* try: `file` is set, break it; break: removed */
	DOT_LOCK_ERROR, /* errno */
};
struct deliver_lock_file {
	int fd;
	dev_t dev;
	ino_t ino;
};
enum deliver_dot_lock deliver_dot_lock_try(int dirfd, const char *name,
                                           time_t stale_seconds,
                                           struct deliver_lock_file *file);
/* DOT_LOCK_STALE when the stale file was removed or had gone (try
 * again), DOT_LOCK_BUSY when another locker is breaking it or a fresh
 * lock has replaced it, DOT_LOCK_ERROR (errno) otherwise. */
enum deliver_dot_lock deliver_dot_lock_break(int dirfd, const char *name,
                                             struct deliver_lock_file *file);

#endif
