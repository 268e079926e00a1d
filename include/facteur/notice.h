/*
 * The DSNs a queued message owes its sender (RFC 3464 notices, built by
 * bounce.c): which recipients' outcomes call for one, committing it into
 * the spool as a message from the null sender, and what waits for that
 * commit. A recipient's outcome is recorded only once the notice that
 * reports it is committed (both go in one batch), so that a crash can
 * repeat a notice but never lose one; a notice whose commit fails stays
 * owed, its recipients unrecorded, and is tried again with backoff.
 */
#ifndef FACTEUR_NOTICE_H
#define FACTEUR_NOTICE_H

#include <stdbool.h>
#include <stddef.h>

struct queued;

/*
 * The recipients `rcpts` of q have new outcomes (RCPT_PHASE_SETTLING).
 * Queue the DSNs they call for (one of each kind, about all of them),
 * plus a delay notice about `delayed` if any, then record them.
 * `flags_changed`: the message's flags are recorded too. A DSN with
 * nobody to go to is logged (dsn_dropped) and its recipients recorded.
 */
void notice_settle(struct queued *q, const size_t *rcpts, size_t count,
		   bool flags_changed, const size_t *delayed,
		   size_t delayed_count);

/* The message was deleted: its owed notices go, and their recipients
 * with them, unrecorded (the message leaves the spool anyway). */
void notice_drop_owed(struct queued *q);

/* The message is being freed: its owed notices are forgotten. */
void notice_free_owed(struct queued *q);

#endif
