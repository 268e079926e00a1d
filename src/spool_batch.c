/*
 * The log and its group commit. Committed messages and their state
 * records are appended to the newest segment, <spool_dir>/log/<seq>.seg,
 * framed by spool_log.c. What one loop turn appends is collected in
 * memory and written with one pwrite at the end of the turn (part of it
 * earlier when a caller must not log a state before its record is
 * written: spool_write_ahead); then one iothread request flushes the segment,
 * the message files of the turn and the directories concerned, and every
 * request of the batch gets its callback (group commit: one flush, many
 * commits). Requests made while a batch is flushing form the next one.
 *
 * A segment that holds no live message is deleted, oldest first, each
 * deletion flushed before the next, so that a surviving record always
 * has its later records too. Compaction logs a live message of the oldest
 * segment anew in the newest, so that one long-lived message does not
 * pin every segment after it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/iothread.h"
#include "facteur/spool.h"
#include "facteur/spool_internal.h"
#include "facteur/spool_log.h"
#include "facteur/text.h"

/* A segment takes new records until it is this large. */
#define SEGMENT_MAX ((uint64_t)64 << 20)
/* The oldest segment's live messages are moved to the newest, so that
 * it and the dead ones behind it can go, once the log is more than twice
 * the size of what is live in it, plus a segment. A queue that is all
 * live is never rewritten; one stuck message cannot pin a disk's worth of
 * dead segments. */
#define COMPACT_SLACK SEGMENT_MAX

void spool_segment_name(char *buf, size_t len, uint64_t seq)
{
	snprintf(buf, len, "%016" PRIX64 ".seg", seq);
}

static struct spool_segment *segment_create(struct spool *spool)
{
	char name[32];
	struct spool_segment *seg = calloc(1, sizeof *seg);
	if (seg == NULL)
		return NULL;
	seg->seq = spool->next_seq++;
	spool_segment_name(name, sizeof name, seg->seq);
	seg->fd = openat(spool->log_fd, name,
			 O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (seg->fd == -1) {
		int saved = errno;
		free(seg);
		errno = saved;
		return NULL;
	}
	seg->unsynced = true;
	/* The magic line goes out with the first batch. */
	seg->size = 0;
	if (spool->newest != NULL)
		spool->newest->newer = seg;
	else
		spool->oldest = seg;
	spool->newest = seg;
	spool->active = seg;
	return seg;
}

static int pending_reserve(struct spool *spool, size_t n)
{
	if (n > SIZE_MAX - spool->pending_len) {
		errno = ENOMEM;
		return -1;
	}
	return buffer_grow(&spool->pending, &spool->pending_cap,
			   spool->pending_len + n, 64 * 1024, SIZE_MAX);
}

/*
 * Append one record to this turn's log batch; *seg and *body_off say
 * where it will be. The body is either `body` or, when `body_fd` is not
 * -1, `body_len` octets of that descriptor from `body_at`.
 */
int spool_batch_append(struct spool *spool, enum spool_log_kind kind,
		       const char *id, const char *text, size_t text_len,
		       const void *body, size_t body_len, int body_fd,
		       uint64_t body_at, struct spool_segment **seg,
		       uint64_t *body_off)
{
	char header[SPOOL_LOG_HEADER_MAX];

	if (spool->pending_len == 0) {
		/* A batch boundary: the place to start a new segment. */
		struct spool_segment *a = spool->active;
		if ((a == NULL || a->broken || a->size >= SEGMENT_MAX) &&
		    segment_create(spool) == NULL)
			return -1;
		spool->pending_seg = spool->active;
	}
	struct spool_segment *s = spool->pending_seg;
	if (s->broken) {
		errno = EIO;
		return -1;
	}
	size_t magic =
	    s->size == 0 && spool->pending_len == 0 ? SPOOL_LOG_MAGIC_LEN : 0;
	size_t need = magic + SPOOL_LOG_HEADER_MAX + text_len + body_len + 1;
	if (pending_reserve(spool, need) == -1)
		return -1;
	char *p = spool->pending + spool->pending_len;
	size_t at = magic;
	memcpy(p, SPOOL_LOG_MAGIC, magic);
	char *body_dst = NULL;
	/* the body goes in first, after room for the header: the header
	 * carries its checksum */
	size_t room = SPOOL_LOG_HEADER_MAX;
	memcpy(p + at + room, text, text_len);
	body_dst = p + at + room + text_len;
	if (body_fd != -1) {
		size_t got = 0;
		while (got < body_len) {
			ssize_t n =
			    pread(body_fd, body_dst + got, body_len - got,
				  (off_t)(body_at + got));
			if (n == -1 && errno == EINTR)
				continue;
			if (n <= 0) {
				if (n == 0)
					errno = EIO;
				return -1;
			}
			got += (size_t)n;
		}
	} else if (body_len > 0) {
		memcpy(body_dst, body, body_len);
	}
	uint32_t crc = spool_crc32c(0, text, text_len);
	crc = spool_crc32c(crc, body_dst, body_len);
	size_t hlen =
	    spool_log_header(header, kind, id, text_len, body_len, crc);
	if (hlen == 0) {
		errno = EINVAL;
		return -1;
	}
	/* close the gap between the header and the text */
	memcpy(p + at, header, hlen);
	memmove(p + at + hlen, p + at + room, text_len + body_len);
	size_t rec_len = hlen + text_len + body_len;
	p[at + rec_len] = '\n';
	uint64_t start = s->size + magic;
	*seg = s;
	*body_off = start + hlen + text_len;
	spool->pending_len += magic + rec_len + 1;
	s->size += magic + rec_len + 1;
	spool->log_bytes += magic + rec_len + 1;
	spool->last_record = rec_len + 1;
	return 0;
}

/* pwrite all of buf at off. */
static int pwrite_full(int fd, const char *buf, size_t len, uint64_t off)
{
	return spool_write_out(fd, buf, len, (off_t)off);
}

static void on_reaped(int error, void *arg)
{
	struct spool *spool = arg;
	spool->reaping = false;
	if (error != 0)
		spool->reap_failed = true;
	/* as after a batch: the next deletion, then our hold goes */
	spool_reap(spool);
	spool_release(spool);
}

/* Delete the oldest segment once nothing refers to it any more. */
/* Unlink the oldest segment's file and forget it; the caller flushes the
 * log directory before the next one goes. -1 when the unlink failed. */
int spool_segment_drop_oldest(struct spool *spool)
{
	struct spool_segment *seg = spool->oldest;
	char name[32];

	spool_segment_name(name, sizeof name, seg->seq);
	if (unlinkat(spool->log_fd, name, 0) == -1 && errno != ENOENT)
		return -1;
	spool->oldest = seg->newer;
	if (spool->newest == seg)
		spool->newest = NULL;
	spool->log_bytes -= seg->size;
	spool_close_fd(seg->fd);
	free(seg);
	return 0;
}

void spool_reap(struct spool *spool)
{
	struct spool_segment *seg = spool->oldest;

	if (spool->reaping || spool->reap_failed || seg == NULL ||
	    seg == spool->active || seg->live > 0 || seg->flushing > 0 ||
	    seg == spool->pending_seg)
		return;
	if (spool_segment_drop_oldest(spool) == -1) {
		spool->reap_failed = true;
		return;
	}
	spool->reaping = true;
	spool->holds++;
	if (iothread_fsync(spool->io, &spool->log_fd, 1, on_reaped, spool) ==
	    -1)
		on_reaped(ENOMEM, spool);
}

/* One request's outcome in the spool's own books; returns the result
 * to report (a commit that cannot be remembered has failed). */
static int request_settle(struct spool *spool, struct spool_request *req,
			  int result)
{
	struct spool_slot *sl;

	switch (req->kind) {
	case SPOOL_REQ_FILE_COMMIT:
		if (req->error == 0 && result != 0) {
			/* Never acknowledged: leave nothing to recover. */
			spool_unlink_file(spool, req->id, ".env");
			spool_unlink_file(spool, req->id, ".msg");
		}
		break;
	case SPOOL_REQ_LOG_COMMIT:
		if (req->seg == NULL) /* failed before its record was made */
			break;
		if (result != 0 ||
		    (sl = spool_slot_add(spool, req->id)) == NULL) {
			/* no memory for the slot: the commit failed */
			req->seg->live--;
			if (req->file)
				spool_unlink_file(spool, req->id, ".msg");
			return result != 0 ? result : ENOMEM;
		}
		sl->seg = req->seg;
		sl->body_off = req->body_off;
		sl->body_len = req->body_len;
		sl->file = req->file;
		sl->log_bytes = req->log_bytes;
		spool->live_bytes += sl->log_bytes;
		break;
	case SPOOL_REQ_MOVE:
	case SPOOL_REQ_IMPORT:
		sl = spool_slot_of(spool, req->id);
		if (sl != NULL)
			sl->moving = false;
		if (req->seg == NULL)
			break;
		if (result != 0 || sl == NULL) {
			req->seg->live--;
			break;
		}
		if (sl->seg != NULL)
			sl->seg->live--;
		sl->seg = req->seg;
		sl->body_off = req->body_off;
		spool->live_bytes += req->log_bytes - sl->log_bytes;
		sl->log_bytes = req->log_bytes;
		if (req->kind == SPOOL_REQ_IMPORT)
			spool_unlink_file(spool, req->id, ".env");
		break;
	case SPOOL_REQ_RECORD:
		break;
	}
	return result;
}

/* The iothread finished a batch (or it could not be handed over). */
static void batch_done(int error, void *arg)
{
	struct spool_request *req = arg;
	struct spool *spool = req->spool;
	struct spool_segment *seg = req->batch_seg;

	if (seg != NULL) {
		seg->flushing--;
		/* An earlier batch's failure may have lost data before ours:
		 * nothing written after it is acknowledged. */
		if (error != 0)
			seg->broken = true;
		else if (seg->broken)
			error = EIO;
		else
			seg->unsynced = false;
	}
	while (req != NULL) {
		struct spool_request *next = req->next;
		int result = req->error != 0 ? req->error : error;
		spool_commit_cb cb = req->cb;
		void *cb_arg = req->arg;

		for (size_t i = 0; i < req->nfds; i++)
			spool_close_fd(req->fds[i]);
		result = request_settle(spool, req, result);
		if (req->kind == SPOOL_REQ_FILE_COMMIT ||
		    req->kind == SPOOL_REQ_LOG_COMMIT)
			free(incoming_of(req));
		else
			free(req);
		if (cb != NULL)
			cb(result, cb_arg);
		req = next;
	}
	spool_reap(spool);
	spool_release(spool);
}

/* Hand the collected batch to the iothread: its log records written in
 * one go, then one flush of the segment, every file of the batch and the
 * directories concerned. */
void spool_batch_flush(struct spool *spool)
{
	struct spool_request *batch = spool->batch_head;
	struct spool_segment *seg = spool->pending_seg;
	size_t nfds = spool->batch_fds + 3;
	int write_error = 0;

	if (batch == NULL)
		return;
	spool->batch_head = NULL;
	spool->batch_tail = &spool->batch_head;
	spool->batch_fds = 0;
	spool->holds++;
	if (seg != NULL) {
		uint64_t start = seg->size - spool->pending_len;
		bool written = spool->pending_written > 0;
		if (seg->broken) {
			write_error = EIO;
		} else if (pwrite_full(
			       seg->fd, spool->pending + spool->pending_written,
			       spool->pending_len - spool->pending_written,
			       start + spool->pending_written) == -1) {
			write_error = errno != 0 ? errno : EIO;
			written = true;
		}
		/* Cut what was written, now or ahead of the flush: its
		 * callbacks hear of the failure, and no record after it
		 * would ever be read; if that fails, no more here. */
		if (write_error != 0 && written &&
		    ftruncate(seg->fd, (off_t)start) == -1)
			seg->broken = true;
		if (write_error != 0) {
			/* counted as written by spool_batch_append */
			spool->log_bytes -= spool->pending_len;
			seg->size = start;
			seg->broken = true;
		}
		seg->flushing++;
		batch->batch_seg = seg;
		spool->pending_len = 0;
		spool->pending_written = 0;
		spool->pending_seg = NULL;
	}
	if (write_error != 0) {
		for (struct spool_request *r = batch; r != NULL; r = r->next)
			if (r->error == 0 && r->seg != NULL)
				r->error = write_error;
		batch_done(0, batch);
		return;
	}

	int *fds = malloc(nfds * sizeof *fds);
	if (fds == NULL) {
		batch_done(ENOMEM, batch);
		return;
	}
	size_t n = 0;
	bool files = false;
	for (struct spool_request *r = batch; r != NULL; r = r->next)
		for (size_t i = 0; i < r->nfds; i++) {
			fds[n++] = r->fds[i];
			files = true;
		}
	if (seg != NULL) {
		fds[n++] = seg->fd;
		if (seg->unsynced)
			fds[n++] = spool->log_fd;
	}
	if (files || !spool->logged)
		fds[n++] = spool->queue_fd;
	int rc = iothread_fsync(spool->io, fds, n, batch_done, batch);
	free(fds);
	if (rc == -1)
		batch_done(ENOMEM, batch);
}

void spool_write_ahead(struct spool *spool)
{
	struct spool_segment *seg = spool->pending_seg;

	if (seg == NULL || seg->broken ||
	    spool->pending_written == spool->pending_len)
		return;
	/* A failure here is the flush's to report: it writes this part
	 * again, and cuts the segment back if that fails too. */
	uint64_t start = seg->size - spool->pending_len;
	if (pwrite_full(seg->fd, spool->pending + spool->pending_written,
			spool->pending_len - spool->pending_written,
			start + spool->pending_written) == 0)
		spool->pending_written = spool->pending_len;
}

void spool_batch_add(struct spool *spool, struct spool_request *req)
{
	bool first = spool->batch_head == NULL;

	req->next = NULL;
	*spool->batch_tail = req;
	spool->batch_tail = &req->next;
	spool->batch_fds += req->nfds;
	if (spool->closing)
		spool_batch_flush(
		    spool); /* no loop turn to wait for any more */
	else if (first)
		event_active(spool->flush_event, EV_TIMEOUT, 1);
}

static struct spool_request *request_new(struct spool *spool,
					 enum spool_request_kind kind,
					 const char *id, spool_commit_cb cb,
					 void *arg)
{
	struct spool_request *req = calloc(1, sizeof *req);

	/* Without 100 octets the promised callback cannot be kept; the
	 * queue on disk is consistent, so a restart loses nothing. */
	if (req == NULL)
		abort();
	req->spool = spool;
	req->kind = kind;
	snprintf(req->id, sizeof req->id, "%s", id);
	req->cb = cb;
	req->arg = arg;
	return req;
}

/* Log state records of a live message and queue their flush. */
void spool_batch_record(struct spool *spool, const char *id, char *record,
			size_t len, spool_commit_cb cb, void *arg)
{
	struct spool_request *req =
	    request_new(spool, SPOOL_REQ_RECORD, id, cb, arg);
	uint64_t off;

	if (record == NULL)
		req->error = errno != 0 ? errno : ENOMEM;
	else if (!spool->logged || spool_slot_of(spool, id) == NULL)
		req->error = ENOENT; /* removed: it stays removed */
	else if (spool_batch_append(spool, SPOOL_LOG_RECORDS, id, record, len,
				    NULL, 0, -1, 0, &req->seg, &off) == -1)
		req->error = errno != 0 ? errno : EIO;
	free(record);
	spool_batch_add(spool, req);
}

void spool_record_rcpt(struct spool *spool, const struct spool_envelope *env,
		       size_t index, spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *record = spool_record_format(env, index, &len);
	spool_batch_record(spool, env->id, record, len, cb, arg);
}

void spool_record_flags(struct spool *spool, const struct spool_envelope *env,
			spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *record = spool_flags_record_format(env, &len);
	spool_batch_record(spool, env->id, record, len, cb, arg);
}

bool spool_wants_compaction(const struct spool *spool)
{
	const struct spool_segment *seg = spool->oldest;
	return spool->logged && seg != NULL && seg != spool->active &&
	       seg->live > 0 &&
	       spool->log_bytes > 2 * spool->live_bytes + COMPACT_SLACK;
}

/* A new current record for a live message, with its state now. */
int spool_batch_relog(struct spool *spool, const struct spool_envelope *env,
		      struct spool_slot *sl, enum spool_request_kind kind,
		      spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *text = spool_envelope_text(env, sl->id, sl->body_len, &len);
	if (text == NULL)
		return -1;
	struct spool_request *req = request_new(spool, kind, sl->id, cb, arg);
	uint64_t off;
	int rc = spool_batch_append(
	    spool, sl->file ? SPOOL_LOG_FILE_MESSAGE : SPOOL_LOG_MESSAGE,
	    sl->id, text, len, NULL, sl->file ? 0 : (size_t)sl->body_len,
	    sl->file ? -1 : sl->seg->fd, sl->body_off, &req->seg, &off);
	free(text);
	if (rc == -1) {
		req->seg = NULL;
		req->error = errno != 0 ? errno : EIO;
	} else {
		req->seg->live++;
		req->body_off = sl->file ? 0 : off;
		req->log_bytes = spool->last_record;
		sl->moving = true;
	}
	spool_batch_add(spool, req);
	return rc;
}

int spool_compact(struct spool *spool, const struct spool_envelope *env)
{
	struct spool_slot *sl =
	    spool->logged ? spool_slot_of(spool, env->id) : NULL;

	if (sl == NULL || sl->moving || sl->seg != spool->oldest ||
	    !spool_wants_compaction(spool))
		return 0;
	return spool_batch_relog(spool, env, sl, SPOOL_REQ_MOVE, NULL, NULL) ==
		       0
		   ? 1
		   : -1;
}
