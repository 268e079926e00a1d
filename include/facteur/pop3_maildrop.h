/*
 * A POP3 maildrop: what a login reads of its Maildir, on a worker thread
 * so that a large mailbox never stalls the loop. The folder is opened
 * below the mail root without following a link (mailfolder.h), new/ and
 * cur/ with O_NOFOLLOW relative to it; new mail moves into cur/ with the
 * info ":2,", and cur/ is listed oldest first with each message's size
 * (from its name's ",W=", else by reading it) and UID. A link, FIFO or
 * folder where a message belongs is left alone and counted, never
 * listed, moved or opened.
 */
#ifndef FACTEUR_POP3_MAILDROP_H
#define FACTEUR_POP3_MAILDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/pop3_proto.h"

struct pop3_message {
	char *name; /* in cur/ */
	char uid[POP3_UID_MAX + 1];
	uint64_t size;
	struct timespec mtime;
	bool deleted;
};

struct pop3_maildrop {
	/* given */
	char *mailbox;	 /* the Maildir's path (owned) */
	size_t root_len; /* mailbox[0..root_len) may hold links */
	/* found */
	int cur_fd; /* cur/, for every message's *at call; -1: none */
	struct pop3_message *messages;
	size_t count, cap;
	char *failed_path;    /* the part of the mailbox that failed */
	char *skipped;	      /* the first entry left alone, "new/NAME" */
	size_t skipped_count; /* entries that are not regular files */
};

void pop3_maildrop_init(struct pop3_maildrop *md);
/* Everything it holds freed and closed; empty again. */
void pop3_maildrop_clear(struct pop3_maildrop *md);
void pop3_messages_free(struct pop3_message *messages, size_t count);

/* Open md->mailbox, move new/ into cur/ and list cur/ into md->messages.
 * A mailbox never delivered to is an empty maildrop. 0, or -1 with errno
 * (md->failed_path then names the part that failed, when one did). Runs
 * on a worker, as the mailbox owner (mailowner_enter). */
int pop3_maildrop_scan(struct pop3_maildrop *md);

/* A message opened for reading relative to its folder: never through a
 * link (ELOOP), only a regular file (EINVAL otherwise), and O_NONBLOCK so
 * that a FIFO put in its place cannot stall the open. -1 with errno. */
int pop3_maildrop_open_message(int dirfd, const char *name);
/* The reason a log line gives for pop3_maildrop_open_message's errno. */
const char *pop3_maildrop_error(int err);

#endif
