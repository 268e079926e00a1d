/*
 * What the spool's files share, and nothing outside them may use: the
 * spool itself, its log segments, the slot of each live logged message,
 * the requests a batch carries to the iothread, and the helpers more than
 * one of those files calls. Which file does what:
 *
 *   spool.c           opening and closing, ids, the slot table, reading a
 *                     body, removal: the spool's own books
 *   spool_envelope.c  the envelope text and its state records (pure)
 *   spool_incoming.c  a message being received, and its commit into a log
 *                     record
 *   spool_batch.c     the log segments and the group commit: one write
 *                     and one iothread round per loop turn; compaction
 *   spool_recover.c   recovery at start-up, and imports of the file form
 *   spool_drop.c      the file form other processes write (facteur-sendmail)
 *   spool_strings.c   the texts queued envelopes share, interned
 *                     (spool_strings.h; packing is in spool_envelope.c)
 */
#ifndef FACTEUR_SPOOL_INTERNAL_H
#define FACTEUR_SPOOL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "facteur/spool.h"
#include "facteur/spool_log.h"

struct event;

/*
 * A log segment: <spool_dir>/log/<seq>.seg. Segments are deleted oldest
 * first, one at a time, each deletion flushed before the next: then a
 * message whose record survives a crash always has every later record
 * of it too (they are in the same or newer segments).
 */
struct spool_segment {
	struct spool_segment *newer;
	uint64_t seq;
	int fd;
	uint64_t size;	   /* octets written, or queued to be written */
	size_t live;	   /* messages whose current record is here */
	unsigned flushing; /* batches written here and not yet flushed */
	bool broken;	   /* a write or flush failed: nothing more here */
	bool unsynced;	   /* new: the log directory still needs a flush */
};

/* Where a live logged message is. */
struct spool_slot {
	struct spool_slot *chain;
	char id[SPOOL_ID_LEN + 1];
	struct spool_segment *seg;  /* holds its current M or F record */
	uint64_t body_off;	    /* M: the wire form's offset in seg */
	uint64_t body_len;	    /* the wire form's length */
	uint64_t log_bytes;	    /* the size of that record */
	bool file;		    /* F: the wire form is queue/<id>.msg */
	bool moving;		    /* a newer record of it is being flushed */
	struct spool_envelope *env; /* during recovery only */
};

enum spool_request_kind {
	SPOOL_REQ_FILE_COMMIT, /* <id>.msg + <id>.env (facteur-sendmail) */
	SPOOL_REQ_LOG_COMMIT,  /* an M or F record */
	SPOOL_REQ_RECORD,      /* an R record */
	SPOOL_REQ_MOVE,	       /* a live message copied to the newest segment */
	SPOOL_REQ_IMPORT, /* an F record for <id>.env, removed once flushed */
};

struct spool_request {
	struct spool_request *next;
	struct spool *spool;
	enum spool_request_kind kind;
	char id[SPOOL_ID_LEN + 1];
	int fds[2];
	size_t nfds;
	int error; /* failed before the flush: reported as is */
	spool_commit_cb cb;
	void *arg;
	/* where its log record went (log requests) */
	struct spool_segment *seg;
	uint64_t body_off;
	uint64_t body_len;
	uint64_t log_bytes;
	bool file;
	struct spool_segment
	    *batch_seg; /* the head of a batch: where it wrote */
};

/* An incoming message carries the request its commit will use, so that
 * a commit never needs memory to report its outcome. */
struct incoming {
	struct spool_incoming pub;
	struct spool_request req;
	struct spool *logged; /* the spool, when it may keep the body inline */
	char *inline_body;    /* while small and not yet in a file */
	size_t inline_cap;
};

static inline struct incoming *incoming_of(struct spool_request *req)
{
	return (struct incoming *)((char *)req -
				   offsetof(struct incoming, req));
}

struct spool {
	struct event_base *base;
	struct iothread *io;
	char *dir;
	int queue_fd;
	bool logged; /* the daemon's spool; false: files only (a drop) */
	int log_fd;  /* <spool_dir>/log */
	struct spool_segment *oldest, *newest, *active;
	uint64_t next_seq;
	/* Records appended during this loop turn, written at the flush; the
	 * first pending_written bytes were written ahead of it already. */
	char *pending;
	size_t pending_len, pending_cap, pending_written;
	struct spool_segment *pending_seg;
	uint64_t
	    last_record;    /* the size of the record spool_batch_append made */
	uint64_t log_bytes; /* every segment's size */
	uint64_t live_bytes; /* the current records of live messages */
	/* live logged messages by id */
	struct spool_slot **slots;
	size_t slot_mask; /* buckets - 1 */
	size_t slot_count;
	bool reaping;	  /* a segment deletion is being flushed */
	bool reap_failed; /* then no more: the order must hold */
	struct event *flush_event;
	/* The batch being collected during this loop turn. */
	struct spool_request *batch_head;
	struct spool_request **batch_tail;
	size_t batch_fds;
	/* Batches handed to the iothread, plus spool_close's own hold: the
	 * spool is freed when a closed spool has none left. */
	size_t holds;
	bool closing;
	uint64_t last_id;
	unsigned counter;
	struct spool_recovery recovery;
	/* The texts queued envelopes share (logged spool only): recovery
	 * packs each envelope as it reads it, and the scheduler packs into
	 * the same table afterwards. */
	struct spool_strings *strings;
};

/* Errors of the envelope parser: bad data, or no memory to hold it. */
enum spool_parse_status {
	SPOOL_PARSE_OK,
	SPOOL_PARSE_BAD,
	SPOOL_PARSE_NOMEM,
};

/* spool_envelope.c */
bool spool_id_valid(const char *id, size_t len);
/* The value of 16 hex digits (an id, or a segment's sequence number). */
uint64_t spool_id_value(const char *hex);
/* The envelope text of `id` with its wire size and a state record for
 * every recipient that has one: what a commit, a move or an import
 * writes. */
char *spool_envelope_text(const struct spool_envelope *env, const char *id,
			  uint64_t wire, size_t *len);
char *spool_flags_record_format(const struct spool_envelope *env, size_t *len);
/* spool_envelope_parse, with the wire size when the text gives one. */
enum spool_parse_status spool_envelope_parse_wire(const char *text, size_t len,
						  struct spool_envelope *env,
						  size_t *valid_len,
						  uint64_t *wire_size,
						  bool *has_wire);
/* Apply the state records of a log R record. */
enum spool_parse_status spool_records_apply(struct spool_envelope *env,
					    const char *text, size_t len);

/* spool.c */
int spool_write_out(int fd, const char *buf, size_t len, off_t off);
int spool_write_full(int fd, const void *buf, size_t len);
void spool_close_fd(int fd);
/* "<id><ext>" into buf (SPOOL_ID_LEN + 5 octets); ext is 4 octets. */
void spool_file_name(char *buf, const char *id, const char *ext);
void spool_unlink_file(const struct spool *spool, const char *id,
		       const char *ext);
/* Drop one hold; a closed spool with none left is freed. */
void spool_release(struct spool *spool);
struct spool_slot **spool_slot_find(struct spool *spool, const char *id);
struct spool_slot *spool_slot_of(struct spool *spool, const char *id);
struct spool_slot *spool_slot_add(struct spool *spool, const char *id);
void spool_slot_remove(struct spool *spool, struct spool_slot **p);

/* spool_incoming.c */
int spool_check_msg_file(const struct spool_incoming *inc);

/* spool_batch.c */
void spool_segment_name(char *buf, size_t len, uint64_t seq);
int spool_segment_drop_oldest(struct spool *spool);
void spool_reap(struct spool *spool);
int spool_batch_append(struct spool *spool, enum spool_log_kind kind,
		       const char *id, const char *text, size_t text_len,
		       const void *body, size_t body_len, int body_fd,
		       uint64_t body_at, struct spool_segment **seg,
		       uint64_t *body_off);
void spool_batch_add(struct spool *spool, struct spool_request *req);
/* Log state records of a live message (takes `record`) and queue their
 * flush; cb gets ENOENT when the message is gone. */
void spool_batch_record(struct spool *spool, const char *id, char *record,
			size_t len, spool_commit_cb cb, void *arg);
void spool_batch_flush(struct spool *spool);
int spool_batch_relog(struct spool *spool, const struct spool_envelope *env,
		      struct spool_slot *sl, enum spool_request_kind kind,
		      spool_commit_cb cb, void *arg);

/* spool_drop.c */
void spool_drop_commit_files(struct spool *spool, struct spool_incoming *inc,
			     const struct spool_envelope *env,
			     struct spool_request *req);

#endif
