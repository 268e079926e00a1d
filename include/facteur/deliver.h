/*
 * Local delivery into mailboxes: Maildir (tmp/ -> fsync -> new/) and
 * mbox. The message is read from the spool in wire form (spool_body_open:
 * a range of a log segment, or its own queue file) and written in
 * mailbox form (dot-stuffing undone, LF line ends) after a Return-Path
 * and a Delivered-To header. A Maildir file is created and written on
 * the I/O thread, an mbox is appended to on the loop (page cache);
 * every fsync goes through the iothread.
 *
 * The work is split by role: deliver.c drives a delivery (timer, trips
 * to the iothread, message copy, callback), maildir.c and mbox.c hold
 * the two formats (maildir.h, mbox.h), mailfolder.c the walk below the
 * mail root (mailfolder.h), and delivery.h what those three share. The
 * mailbox's path comes from policy_mailbox_path (policy.h).
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

struct deliver;
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

/* What the deliveries of one daemon share (the mbox queues and the
 * remembered Maildir folders); created once, used on the loop thread of
 * `base`, whose fsyncs go through `io`. NULL when out of memory. */
struct deliver *deliver_new(struct event_base *base, struct iothread *io);
/* Once no delivery is in flight any more (the loop has stopped). */
void deliver_free(struct deliver *dl);

/* Start a delivery; the callback runs later, on the loop, exactly once.
 * The request's strings are copied. Returns 0, or -1 when out of memory
 * (no callback then). Deliveries to one mbox file are serialised here;
 * a lock held by another program is retried on a timer for a bounded
 * time, then the delivery is deferred. */
int deliver_start(struct deliver *dl, const struct deliver_request *req,
                  deliver_cb cb, void *arg);

#endif
