/*
 * The persistent queue: what makes "250 means never lost" true.
 *
 * The daemon's spool is an append-only log: <spool_dir>/log/<seq>.seg
 * segments of checksummed records (spool_log.h), written only at their
 * end. A message is one record, its envelope and state with its wire
 * form inline (M) or, when larger than 64 KiB, in queue/<id>.msg (F);
 * each later change of a recipient's state or of the flags is a small R
 * record. The records of one loop turn are written with one pwrite and
 * flushed by one iothread request (group commit); a commit's callback,
 * and so a 250, comes only after that flush. Segments without a live
 * message are deleted oldest first; compaction logs the oldest segment's
 * live messages anew so that it can go. At start-up recovery replays
 * the segments oldest first, cuts a torn tail, imports messages of the
 * file form, and hands every live message over in arrival order.
 *
 * The file form (queue/<id>.msg and <id>.env) is what another process
 * writes, through a drop spool: facteur-sendmail commits it with
 * spool_drop_commit, and the daemon imports it into the log at pickup
 * or start. docs/spool.md describes both formats.
 */
#ifndef FACTEUR_SPOOL_H
#define FACTEUR_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "facteur/smtp_proto.h"

struct event_base;
struct iothread;
struct spool;
struct spool_strings;

#define SPOOL_ID_LEN 16

enum rcpt_state {
	RCPT_PENDING,   /* not tried yet */
	RCPT_DEFERRED,  /* tried, failed temporarily */
	RCPT_DELIVERED,
	RCPT_BOUNCED,
};

struct spool_rcpt {
	char *address;  /* final recipient, canonical */
	char *original; /* the RCPT TO address before alias expansion */
	char *orcpt;    /* the ORCPT parameter as sent, or NULL */
	char *sender;   /* MAIL FROM for this recipient when not the
	                   envelope's (an SRS address), or NULL */
	char *reason;   /* last diagnostic, or NULL; set it with
	                   spool_envelope_set_reason */
	time_t next_attempt; /* for RCPT_DEFERRED */
	time_t updated;      /* when the state last changed */
	unsigned notify;
	enum rcpt_state state;
	unsigned attempts;
	bool local;
	char dsn[12]; /* last enhanced status code, "" if none */
};

struct spool_envelope {
	char id[SPOOL_ID_LEN + 1];
	time_t arrival;
	char *sender; /* "" for the null sender */
	char *client_addr;
	char *helo;
	char *protocol; /* ESMTP, ESMTPS, ... as in Received */
	char *auth_user; /* NULL if not authenticated */
	uint64_t size;   /* as received: unstuffed, CRLF */
	enum smtp_body body;
	bool smtputf8;
	enum smtp_ret ret;
	char *envid; /* NULL when not given */
	unsigned flags; /* SPOOL_FLAG_* */
	/* The DKIM outcome for the accepted line (dkim_intake.h), or NULL;
	 * never stored. */
	char *dkim;
	struct spool_rcpt *rcpts;
	size_t rcpt_count;
	/* Packed (spool_envelope_pack): the table its shared strings are
	 * interned in; NULL for an envelope of separate allocations. */
	struct spool_strings *interned;
};

#define SPOOL_FLAG_DELAY_NOTIFIED 0x1 /* a delay DSN was sent */
#define SPOOL_FLAG_DELETED 0x2 /* deleted by the operator: done */
#define SPOOL_FLAG_HELD 0x4    /* held by the operator: not tried */
/* MAIL FROM:<...> REQUIRETLS (RFC 8689): relayed only over verified TLS
 * to a next hop that offers REQUIRETLS, else bounced with 5.7.10 */
#define SPOOL_FLAG_REQUIRETLS 0x8
/* "TLS-Required: No" (RFC 8689 §5): the recipient domains' TLS policies
 * (DANE) are not applied to this message */
#define SPOOL_FLAG_TLS_NOT_REQUIRED 0x10

/* The daemon's spool: committed messages go to the log (log/<seq>.seg),
 * and spool_recover reads it back. */
struct spool *spool_open(struct event_base *base, struct iothread *io,
                         const char *dir, char *err, size_t errlen);
/* A drop spool, for facteur-sendmail: commits write <id>.msg and
 * <id>.env in queue/, which the daemon takes into its log at pickup or
 * start. No log, no records, no recovery. base and io may be NULL when
 * the spool's commits are all spool_drop_commit. */
struct spool *spool_open_drop(struct event_base *base, struct iothread *io,
                              const char *dir, char *err, size_t errlen);
void spool_close(struct spool *spool);
const char *spool_dir(const struct spool *spool);
/* The table the daemon's spool interns the envelopes it recovers in
 * (spool_envelope_pack); packing a queued envelope into it too keeps one
 * copy of each shared text. Freed with the spool, so that its envelopes
 * go first. NULL for a drop spool. */
struct spool_strings *spool_strings_table(struct spool *spool);

/* "<spool_dir>/queue/<id>.msg" into buf; returns buf. */
char *spool_msg_path(const struct spool *spool, const char *id, char *buf,
                     size_t len);

/* Where a queued message's wire form can be read: `length` octets of
 * `fd` from `offset` on. Readers use pread and never move the file
 * offset, so one descriptor may serve several readers. */
struct spool_body {
	int fd;
	uint64_t offset;
	uint64_t length;
};

/* Open the wire form of a live message; the caller closes body->fd.
 * The body stays readable through that descriptor whatever the spool
 * does with the message afterwards. -1 with errno when it cannot. */
int spool_body_open(struct spool *spool, const struct spool_envelope *env,
                    struct spool_body *body);

/* A message being received. */
struct spool_incoming {
	char id[SPOOL_ID_LEN + 1];
	int fd;           /* the .msg file, or -1 while the body is small
	                   * enough to be kept in memory */
	uint64_t written; /* octets written */
	int error;        /* errno of a failed write: commit is then refused */
};

/* A new message with a fresh id. The daemon's spool keeps a small body
 * in memory and logs it whole at commit; a larger one, and every message
 * of a drop spool, goes to <id>.msg as it arrives. NULL with errno set
 * when that cannot be done (the session answers 451 4.3.0). */
struct spool_incoming *spool_incoming_new(struct spool *spool);
/* Append octets; a write error is remembered in inc->error. */
void spool_incoming_write(struct spool_incoming *inc, const void *buf,
                          size_t len);
/* Put octets before what was written (a DKIM-Signature field, known
 * only at the end). A message in a file is copied once into a new one
 * behind it: this touches only inc and the queue directory, so it may
 * run on a helper thread while the loop leaves inc alone. 0, or -1 with
 * errno (inc->error is set too). */
int spool_incoming_prepend(struct spool *spool, struct spool_incoming *inc,
			   const void *buf, size_t len);
/* Read back up to len octets of what was written, from offset (a
 * milter is shown the message at its end); the count, 0 at the end, -1
 * with errno. */
ssize_t spool_incoming_read(struct spool *spool,
                            const struct spool_incoming *inc, uint64_t offset,
                            void *buf, size_t len);
/* Drop a message that will not be committed (RSET, 552, disconnect). */
void spool_incoming_abort(struct spool *spool, struct spool_incoming *inc);

/* Called on the loop once the message is durable (error 0) or not; the
 * incoming is freed by then. On error the files are removed. */
typedef void (*spool_commit_cb)(int error, void *arg);

/* Log the message with its envelope (its id is taken from inc) in this
 * loop turn's batch, or, in a drop spool, write <id>.env beside
 * <id>.msg; cb once the batch is flushed. The callback always runs
 * later. */
void spool_incoming_commit(struct spool *spool, struct spool_incoming *inc,
                           const struct spool_envelope *env,
                           spool_commit_cb cb, void *arg);

/*
 * The drop path's commit, synchronous, for a process without a loop
 * (facteur-sendmail): flush <id>.msg, write <id>.env and flush it, then
 * the queue directory. 0 once the message is durable; -1 with errno when
 * not, and then both files are removed. The incoming is freed either way.
 */
int spool_drop_commit(struct spool *spool, struct spool_incoming *inc,
                      const struct spool_envelope *env);

/* Log the current state of recipient `index` (an R record, in this loop
 * turn's batch); cb(0) once flushed. A failed write is reported with its
 * errno; the caller keeps the change in memory and retries later. */
void spool_record_rcpt(struct spool *spool, const struct spool_envelope *env,
                       size_t index, spool_commit_cb cb, void *arg);
/* Likewise for env->flags. */
void spool_record_flags(struct spool *spool, const struct spool_envelope *env,
                        spool_commit_cb cb, void *arg);

/* Write the records appended so far in this loop turn to the log now,
 * without flushing them: from then on a kill -9 keeps them (the page
 * cache outlives the process), where otherwise they wait for the flush
 * at the end of the turn. For a log line that must never claim a state
 * the spool could forget. The flush still makes them durable and
 * reports any failure to their callbacks. */
void spool_write_ahead(struct spool *spool);

/*
 * Compaction: the oldest log segment can only be deleted once none of its
 * messages is live. When it is old (a minute) and still holds some, the
 * scheduler offers its idle messages (no delivery or record in flight)
 * to spool_compact, which logs each anew, with its current state, in the
 * newest segment: 1 when it did, 0 when the message needs no move, -1
 * on failure (the message stays where it is).
 */
bool spool_wants_compaction(const struct spool *spool);
int spool_compact(struct spool *spool, const struct spool_envelope *env);

/* Remove a message whose recipients are all done. */
void spool_remove(struct spool *spool, const char *id);
/* Remove a message the operator deleted, done or not: the log gets a
 * record saying so (flushed with the next batch), so that it does not
 * come back at the next start. */
void spool_delete(struct spool *spool, const char *id);

/*
 * Scan the queue at start-up: remove what was never committed, truncate a
 * torn last record, and hand every live message to `found` (which takes
 * ownership of the envelope). Returns the number of live messages, or -1
 * if the directory cannot be read.
 */
typedef void (*spool_found_cb)(struct spool_envelope *env, void *arg);
long spool_recover(struct spool *spool, spool_found_cb found, void *arg);

/* What the last spool_recover did, for the caller to log (the spool
 * itself does not log). */
struct spool_recovery {
	size_t live;            /* handed to `found` */
	size_t uncommitted;     /* removed: never acknowledged (no envelope,
	                           a cut one, or a short message file) */
	size_t orphaned;        /* removed: an envelope whose message file
	                           was missing (worth a warning) */
	size_t done;            /* removed: every recipient done */
	size_t truncated;       /* torn last record cut off */
	size_t truncate_failed; /* torn record left (found all the same) */
	size_t other;           /* removed: files of any other name */
	size_t unreadable;      /* left in place, tried again next start */
};
const struct spool_recovery *spool_last_recovery(const struct spool *spool);

/* Read one committed message's envelope (and its records) from disk, as
 * recovery would: for a message another process (facteur-sendmail)
 * committed. NULL with errno: ENOENT (no such message, or its message
 * file does not match), EINVAL (envelope malformed or incomplete). */
struct spool_envelope *spool_load(struct spool *spool, const char *id);

/* A new unique queue id into buf (SPOOL_ID_LEN + 1 octets). */
void spool_new_id(struct spool *spool, char *buf);

/* Envelope text, pure and public for tests and fuzzing. format returns a
 * malloc'd text ending in the "end" line (without state records). parse
 * reads an envelope and its records, applying each record in turn; it
 * returns 0 and sets *valid_len to the octets of the text that parsed
 * (a torn record after that is to be truncated), or -1 when the envelope
 * itself is incomplete or malformed. */
char *spool_envelope_format(const struct spool_envelope *env, size_t *len);
int spool_envelope_parse(const char *text, size_t len,
                         struct spool_envelope *env, size_t *valid_len);
/* One state record for recipient `index`, malloc'd, newline-terminated. */
char *spool_record_format(const struct spool_envelope *env, size_t index,
                          size_t *len);
void spool_envelope_clear(struct spool_envelope *env);
void spool_envelope_free(struct spool_envelope *env);

/*
 * An envelope for a long stay in the queue: one allocation holds the
 * envelope, its recipients and their own strings (sender, envid,
 * addresses), and the texts many messages share (protocol, client
 * address, HELO, login, each recipient's last reason) are interned in
 * `strings` (spool_strings.h). The DKIM outcome, which only the accepted
 * line uses, is dropped. Returns the packed envelope and frees env (env
 * itself when packed already, in the same table); NULL when out of
 * memory or strings is NULL, env then unchanged and still usable. Every
 * function here takes both forms alike; spool_envelope_free releases
 * what a packed one holds.
 */
struct spool_envelope *spool_envelope_pack(struct spool_envelope *env,
                                           struct spool_strings *strings);
/* Recipient `index`'s last diagnostic becomes a copy of reason (NULL or
 * "" for none), interned in a packed envelope. -1 when out of memory,
 * the reason then NULL. */
int spool_envelope_set_reason(struct spool_envelope *env, size_t index,
                              const char *reason);

bool spool_envelope_done(const struct spool_envelope *env);

const char *rcpt_state_name(enum rcpt_state state);
/* The envelope's words for BODY= and RET= ("7bit", "full"...); NULL for
 * a parameter that was not given. */
const char *spool_body_name(enum smtp_body body);
const char *spool_ret_name(enum smtp_ret ret);

#endif
