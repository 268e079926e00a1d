/*
 * A message being received, and its commit. In the daemon's spool a body
 * stays in memory up to INLINE_MAX and is logged whole in an M record;
 * a larger one moves to queue/<id>.msg as it grows and is logged as an F
 * record, its file flushed with the batch. A drop spool's message always
 * goes to its file (spool_drop.c commits it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/spool.h"
#include "facteur/spool_internal.h"
#include "facteur/spool_log.h"
#include "facteur/text.h"

/* Draws of a fresh id before giving up on O_EXCL collisions. */
#define ID_TRIES 100
/* Messages up to this size are logged inline; larger ones are written
 * to a file of their own as they arrive (memory stays bounded). */
#define INLINE_MAX ((size_t)64 << 10)

/* Create <id>.msg for inc (O_EXCL); the descriptor, or -1. */
static int create_msg_file(struct spool *spool, const char *id)
{
	char name[SPOOL_ID_LEN + 5];

	spool_file_name(name, id, ".msg");
	return openat(spool->queue_fd, name,
		      O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
}

struct spool_incoming *spool_incoming_new(struct spool *spool)
{
	struct incoming *in = calloc(1, sizeof *in);

	if (in == NULL)
		return NULL;
	in->pub.fd = -1;
	if (spool->logged) {
		/* Kept in memory until it outgrows INLINE_MAX; ids are
		 * unique within the process and above every logged one. */
		spool_new_id(spool, in->pub.id);
		in->logged = spool;
		return &in->pub;
	}
	for (int tries = 0; tries < ID_TRIES; tries++) {
		spool_new_id(spool, in->pub.id);
		in->pub.fd = create_msg_file(spool, in->pub.id);
		if (in->pub.fd >= 0)
			return &in->pub;
		if (errno != EEXIST)
			break;
	}
	int saved = errno;
	free(in);
	errno = saved;
	return NULL;
}

/* Move an inline body into <id>.msg. */
static int spill(struct spool_incoming *inc, struct spool *spool)
{
	struct incoming *in = (struct incoming *)inc;

	inc->fd = create_msg_file(spool, inc->id);
	if (inc->fd == -1)
		return -1;
	if (spool_write_full(inc->fd, in->inline_body, inc->written) == -1)
		return -1;
	free(in->inline_body);
	in->inline_body = NULL;
	in->inline_cap = 0;
	return 0;
}

void spool_incoming_write(struct spool_incoming *inc, const void *buf,
			  size_t len)
{
	struct incoming *in = (struct incoming *)inc;

	if (inc->error != 0)
		return;
	if (inc->fd == -1 && in->logged != NULL) {
		if (inc->written + len <= INLINE_MAX) {
			if (buffer_grow(&in->inline_body, &in->inline_cap,
					(size_t)inc->written + len, 8192,
					INLINE_MAX) == -1) {
				inc->error = ENOMEM;
				return;
			}
			memcpy(in->inline_body + inc->written, buf, len);
			inc->written += len;
			return;
		}
		if (spill(inc, in->logged) == -1) {
			inc->error = errno != 0 ? errno : EIO;
			return;
		}
	}
	if (spool_write_full(inc->fd, buf, len) == -1) {
		inc->error = errno != 0 ? errno : EIO;
		return;
	}
	inc->written += len;
}

ssize_t spool_incoming_read(struct spool *spool,
			    const struct spool_incoming *inc, uint64_t offset,
			    void *buf, size_t len)
{
	const struct incoming *in = (const struct incoming *)inc;
	if (offset >= inc->written)
		return 0;
	if (len > inc->written - offset)
		len = (size_t)(inc->written - offset);
	if (inc->fd == -1) {
		memcpy(buf, in->inline_body + offset, len);
		return (ssize_t)len;
	}
	/* the writer's descriptor is write-only */
	char name[SPOOL_ID_LEN + 5];
	spool_file_name(name, inc->id, ".msg");
	int fd = openat(spool->queue_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	ssize_t n = pread(fd, buf, len, (off_t)offset);
	int saved = errno;
	if (close(fd) == -1 && n >= 0)
		return -1;
	errno = saved;
	return n;
}

/* Write prefix then the first `len` octets of <id>.msg (or of body
 * when not NULL) into <id>.pre, and move it over <id>.msg; its
 * descriptor, or -1. */
static int file_with_prefix(struct spool *spool, const char *id,
			    const void *prefix, size_t prefix_len,
			    const char *body, uint64_t len)
{
	char name[SPOOL_ID_LEN + 5], msg[SPOOL_ID_LEN + 5];
	int fd, from = -1;

	spool_file_name(name, id, ".pre");
	spool_file_name(msg, id, ".msg");
	fd = openat(spool->queue_fd, name,
		    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1)
		return -1;
	if (spool_write_full(fd, prefix, prefix_len) == -1)
		goto fail;
	if (body != NULL) {
		if (spool_write_full(fd, body, (size_t)len) == -1)
			goto fail;
	} else {
		/* in the kernel, without a trip through user space; the
		 * writer's descriptor is write-only */
		loff_t in_off = 0;
		from = openat(spool->queue_fd, msg, O_RDONLY | O_CLOEXEC);
		if (from == -1)
			goto fail;
		while (len > 0) {
			ssize_t n = copy_file_range(from, &in_off, fd, NULL,
						    (size_t)len, 0);
			if (n <= 0) {
				if (n == 0)
					errno = EIO;
				goto fail;
			}
			len -= (uint64_t)n;
		}
	}
	if (renameat(spool->queue_fd, name, spool->queue_fd, msg) == -1)
		goto fail;
	if (from != -1)
		spool_close_fd(from);
	return fd;
fail:;
	int saved = errno;
	if (from != -1)
		spool_close_fd(from);
	spool_close_fd(fd);
	if (unlinkat(spool->queue_fd, name, 0) == -1 && errno != ENOENT)
		saved = errno;
	errno = saved;
	return -1;
}

int spool_incoming_prepend(struct spool *spool, struct spool_incoming *inc,
			   const void *buf, size_t len)
{
	struct incoming *in = (struct incoming *)inc;
	int fd;

	if (inc->error != 0) {
		errno = inc->error;
		return -1;
	}
	if (inc->fd == -1 && in->logged != NULL &&
	    inc->written + len <= INLINE_MAX) {
		if (buffer_grow(&in->inline_body, &in->inline_cap,
				(size_t)inc->written + len, 8192,
				INLINE_MAX) == -1) {
			inc->error = ENOMEM;
			return -1;
		}
		memmove(in->inline_body + len, in->inline_body, inc->written);
		memcpy(in->inline_body, buf, len);
		inc->written += len;
		return 0;
	}
	fd = file_with_prefix(spool, inc->id, buf, len,
			      inc->fd == -1 ? in->inline_body : NULL,
			      inc->written);
	if (fd == -1) {
		inc->error = errno != 0 ? errno : EIO;
		return -1;
	}
	if (inc->fd != -1)
		spool_close_fd(inc->fd);
	free(in->inline_body);
	in->inline_body = NULL;
	in->inline_cap = 0;
	inc->fd = fd;
	inc->written += len;
	return 0;
}

void spool_incoming_abort(struct spool *spool, struct spool_incoming *inc)
{
	struct incoming *in = (struct incoming *)inc;

	if (inc->fd != -1) {
		spool_close_fd(inc->fd);
		spool_unlink_file(spool, inc->id, ".msg");
	}
	free(in->inline_body);
	free(in);
}

/* The message file must hold what we wrote to it, or recovery would
 * take a short file for a flushed one. */
int spool_check_msg_file(const struct spool_incoming *inc)
{
	struct stat st;

	if (fstat(inc->fd, &st) == -1)
		return -1;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != inc->written) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/* The commit of the daemon's spool: one log record, with the body
 * inline or in <id>.msg. */
static void commit_log(struct spool *spool, struct incoming *in,
		       const struct spool_envelope *env,
		       struct spool_request *req)
{
	struct spool_incoming *inc = &in->pub;
	struct spool_segment *seg;
	uint64_t body_off = 0;
	size_t len = 0;
	char *text = NULL;

	req->kind = SPOOL_REQ_LOG_COMMIT;
	req->file = inc->fd != -1;
	if (inc->error != 0) {
		req->error = inc->error;
	} else if ((req->file && spool_check_msg_file(inc) == -1) ||
		   (text = spool_envelope_text(env, inc->id, inc->written,
					       &len)) == NULL ||
		   spool_batch_append(spool,
				      req->file ? SPOOL_LOG_FILE_MESSAGE
						: SPOOL_LOG_MESSAGE,
				      inc->id, text, len, in->inline_body,
				      req->file ? 0 : (size_t)inc->written, -1,
				      0, &seg, &body_off) == -1) {
		req->error = errno != 0 ? errno : EIO;
	} else {
		req->seg = seg;
		req->body_off = req->file ? 0 : body_off;
		req->body_len = inc->written;
		req->log_bytes = spool->last_record;
		seg->live++;
	}
	free(text);
	free(in->inline_body);
	in->inline_body = NULL;
	if (req->file && req->error == 0) {
		req->fds[0] = inc->fd; /* flushed with the batch */
		req->nfds = 1;
	} else if (req->file) {
		spool_close_fd(inc->fd);
		spool_unlink_file(spool, inc->id, ".msg");
	}
}

void spool_incoming_commit(struct spool *spool, struct spool_incoming *inc,
			   const struct spool_envelope *env, spool_commit_cb cb,
			   void *arg)
{
	struct incoming *in = (struct incoming *)inc;
	struct spool_request *req = &in->req;

	memset(req, 0, sizeof *req);
	req->spool = spool;
	memcpy(req->id, inc->id, sizeof req->id);
	req->cb = cb;
	req->arg = arg;
	if (spool->logged)
		commit_log(spool, in, env, req);
	else
		spool_drop_commit_files(spool, inc, env, req);
	spool_batch_add(spool, req);
}
