/*
 * One local delivery in progress, shared by the three files that carry
 * it out and by no other module: deliver.c (the request, its timer, the
 * trips to the iothread, the message copy and the callback), maildir.c
 * and mbox.c (the two mailbox formats). Public callers use deliver.h.
 *
 * A delivery is a small state machine driven by one timer event and the
 * iothread's completions; the format's code decides what to write and
 * which descriptors to flush, and hands the result to delivery_finish,
 * which always calls back later, from the timer.
 */
#ifndef FACTEUR_DELIVERY_H
#define FACTEUR_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "facteur/config.h"
#include "facteur/deliver.h"
#include "facteur/mbox.h"
#include "facteur/status_code.h"

struct event;
struct event_base;
struct iothread;
struct maildir_folder;
struct mbox_queue;

/* Maildir folders remembered at most; the least recently used one that
 * no delivery holds makes room. Two descriptors each. */
#define FOLDER_CACHE_MAX 64
/* The random part of a tmp/ name: 16 hex digits, fresh per attempt. */
#define TMP_RANDOM_HEX 16
/* Tries at a tmp/ name (or a dot lock's aside name) that is free. */
#define NAME_ATTEMPTS 4

/* What the deliveries of one daemon share: made by deliver_new, held by
 * the server, used on the loop only. */
struct deliver {
	struct event_base *base;
	struct iothread *io;
	/* Every mbox path with a delivery in progress (mbox.c). */
	struct mbox_queue *mbox_queues;
	/* Remembered Maildir folders (maildir.c). */
	struct maildir_folder *folders[FOLDER_CACHE_MAX];
	size_t folder_count;
	uint64_t folder_clock;
};

enum delivery_state {
	STATE_QUEUED,	    /* mbox: waiting behind another delivery */
	STATE_START,	    /* the timer begins the work */
	STATE_LOCK_WAIT,    /* mbox: the timer retries the locks */
	STATE_MAILDIR_SYNC, /* maildir: with the iothread (see stage) */
	STATE_MBOX_SYNC,    /* mbox: the file (and new folders) being flushed */
	STATE_DONE,	    /* the timer runs the callback */
};

/* Where the Maildir request that is with the iothread stands; written
 * by its step on the I/O thread, read by the completion on the loop. */
enum maildir_stage {
	STAGE_OPEN,	 /* creating the tmp/ file, on the I/O thread */
	STAGE_WRITE,	 /* writing it */
	STAGE_FILE_SYNC, /* the tmp/ file's flush (failed, if an error) */
	STAGE_LINK,	 /* the link into new/ */
	STAGE_DIR_SYNC,	 /* the flush of new/ and of created folders */
};

struct delivery {
	struct deliver *owner;
	struct event_base *base;
	struct iothread *io;
	struct event *timer;
	enum delivery_state state;
	deliver_cb cb;
	void *arg;

	enum mailbox_format format;
	char *mailbox;
	size_t root_len; /* mailbox[0..root_len) may hold links */
	int body_fd;	 /* the queued message: a duplicate of the caller's */
	uint64_t body_offset;
	uint64_t body_length;
	char *sender;
	char *recipient;
	char *unique;
	char *hostname;
	time_t arrival;
	bool check_existing;

	int fd; /* the tmp/ file or the mbox, -1 when closed */
	struct maildir_folder *folder; /* maildir: held until freed */
	char *name;		       /* maildir: the file's name in new/ */
	char *tmp_name;		       /* maildir: name "." random, in tmp/ */
	enum maildir_stage stage;
	bool folder_was_cached; /* a failed open may mean it has gone */
	bool write_reading;	/* a STAGE_WRITE error came from the spool */
	char *tmp_path;
	char *new_path;
	/* Directories to flush with the message (besides new/, which the
	 * folder holds open): every directory whose entries changed because
	 * folders or the mbox were created. */
	char **sync_paths;
	size_t sync_count;
	int *sync_fds;
	size_t sync_open;

	/* mbox */
	struct mbox_queue *queue;
	struct delivery *queue_next;
	int dir_fd;	 /* the mbox's directory */
	char *base_name; /* the mbox's name in it */
	char *lock_path;
	char *lock_name; /* in dir_fd */
	struct mbox_lock_file lock;
	bool dot_locked;
	unsigned lock_attempts;
	off_t start_size;

	enum deliver_result result;
	const char *dsn;
	char *reason; /* malloc'd, or NULL: then reason_text */
	const char *reason_text;
};

struct delivery_copy_error {
	int err;
	bool reading; /* the spool file, else the mailbox */
};

/* Arm the timer to run `state` in `usec` microseconds. 0, or -1. */
int delivery_schedule(struct delivery *d, enum delivery_state state, long usec);
/* The result is known: release what is held, then call back from the
 * timer. `reason` (malloc'd, taken) or else `reason_text` explains it. */
void delivery_finish(struct delivery *d, enum deliver_result result,
		     enum status_code status, char *reason,
		     const char *reason_text);
void delivery_finish_ok(struct delivery *d, const char *reason);
/* Deferred with "<what> <path>: <error>"; `mailbox` says whether the
 * error came from the mailbox (a 4.2.x) or from our side (4.3.x). */
void delivery_fail_errno(struct delivery *d, int err, bool mailbox,
			 const char *what, const char *path);
void delivery_fail_text(struct delivery *d, enum status_code status,
			const char *text);

/* "dir/sub/name", or "dir/sub" when `name` is NULL; malloc'd or NULL. */
char *delivery_path_join(const char *dir, const char *sub, const char *name);
/* The directories to flush with the message, listed by path and opened
 * (delivery_open_sync_fds) just before the trip to the iothread. */
int delivery_add_sync_path(struct delivery *d, const char *path, size_t len);
int delivery_add_created_chain(struct delivery *d, const char *dir,
			       size_t first_created);
int delivery_open_sync_fds(struct delivery *d, const char **failed);
void delivery_close_sync_fds(struct delivery *d);
/* `first` followed by the opened sync descriptors: what one trip to the
 * iothread flushes, malloc'd (1 + d->sync_open entries), or NULL. */
int *delivery_flush_list(const struct delivery *d, int first);

int delivery_write_all(int fd, const char *buf, size_t len);
/* Return-Path and Delivered-To. */
int delivery_write_headers(struct delivery *d, int fd);
int delivery_copy_message(const struct delivery *d, int out, bool mboxrd,
			  char *last, struct delivery_copy_error *ce);

/* maildir.c: the first attempt of a Maildir delivery (on the timer), and
 * the release of a folder the delivery held. */
void maildir_begin(struct delivery *d);
void maildir_folder_put(struct maildir_folder *f);
/* Forget every remembered folder (deliver_free). */
void maildir_forget_all(struct deliver *dl);

/* mbox.c: queue a delivery behind the others to its path, or start it
 * (0, or -1 when out of memory); an attempt (on the timer); and the
 * release of its dot lock and of its place in the queue. */
int mbox_enqueue(struct delivery *d);
void mbox_attempt(struct delivery *d);
void mbox_release(struct delivery *d);

#endif
