/*
 * Local delivery (see deliver.h): the part of a delivery that does not
 * depend on the mailbox format. Each delivery is a small state machine
 * (delivery.h) driven by one timer event and the iothread's completions:
 * the work starts on the timer (never inside deliver_start), the format's
 * code (maildir.c, mbox.c) writes the file on the loop or on the I/O
 * thread and hands every fsync to the iothread, and the callback runs
 * from the timer too, after all descriptors are closed.
 *
 * The message is copied here for both formats: read from the spool in
 * wire form, unstuffed to LF line ends, mboxrd-quoted for mbox, 64 KiB
 * at a time. What deliveries share (mbox queues, remembered Maildir
 * folders) lives in struct deliver, one per daemon, made by deliver_new.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/deliver.h"
#include "facteur/delivery.h"
#include "facteur/mailowner.h"
#include "facteur/mbox.h"
#include "facteur/smtp_proto.h"
#include "facteur/status_code.h"

#define COPY_CHUNK (64 * 1024)

static char *dup_or_empty(const char *s)
{
	return strdup(s != NULL ? s : "");
}

/* For headers and the From_ line: no CR or LF from an envelope may
 * start a header of its own. */
static char *dup_header_value(const char *s)
{
	char *out = dup_or_empty(s);
	if (out != NULL)
		for (char *p = out; *p != '\0'; p++)
			if (*p == '\r' || *p == '\n')
				*p = ' ';
	return out;
}

void delivery_close_sync_fds(struct delivery *d)
{
	for (size_t i = 0; i < d->sync_open; i++)
		(void)close(d->sync_fds[i]); /* read-only directories */
	d->sync_open = 0;
}

static void delivery_free(struct delivery *d)
{
	if (d->fd != -1)
		(void)close(d->fd);
	delivery_close_sync_fds(d);
	maildir_folder_put(d->folder);
	if (d->dir_fd != -1)
		(void)close(d->dir_fd); /* read-only directory */
	if (d->lock.fd != -1)
		(void)close(d->lock.fd); /* read-only */
	free(d->name);
	free(d->tmp_name);
	free(d->base_name);
	free(d->lock_name);
	if (d->timer != NULL)
		event_free(d->timer);
	free(d->mailbox);
	if (d->body_fd != -1)
		(void)close(d->body_fd); /* read-only */
	free(d->sender);
	free(d->recipient);
	free(d->unique);
	free(d->hostname);
	free(d->tmp_path);
	free(d->new_path);
	for (size_t i = 0; i < d->sync_count; i++)
		free(d->sync_paths[i]);
	free(d->sync_paths);
	free(d->sync_fds);
	free(d->lock_path);
	free(d->reason);
	free(d);
}

int delivery_schedule(struct delivery *d, enum delivery_state state, long usec)
{
	struct timeval tv = {.tv_sec = usec / 1000000,
			     .tv_usec = usec % 1000000};
	d->state = state;
	return evtimer_add(d->timer, &tv);
}

static void delivery_run_callback(struct delivery *d)
{
	d->cb(d->result, d->dsn, d->reason != NULL ? d->reason : d->reason_text,
	      d->arg);
	delivery_free(d);
}

/* The result is known: release what is held, then call back from the
 * timer. */
void delivery_finish(struct delivery *d, enum deliver_result result,
		     enum status_code status, char *reason,
		     const char *reason_text)
{
	d->result = result;
	d->dsn = status_code_str(status);
	free(d->reason);
	d->reason = reason;
	d->reason_text = reason != NULL ? NULL : reason_text;
	if (d->fd != -1) {
		(void)close(d->fd); /* only on failure paths: nothing to lose */
		d->fd = -1;
	}
	delivery_close_sync_fds(d);
	mbox_release(d); /* nothing for a Maildir delivery */
	if (delivery_schedule(d, STATE_DONE, 0) == -1)
		delivery_run_callback(
		    d); /* never inside deliver_start: see there */
}

void delivery_finish_ok(struct delivery *d, const char *reason)
{
	delivery_finish(d, DELIVER_OK, STATUS_OK, NULL, reason);
}

static enum status_code status_for_errno(int err, bool mailbox)
{
	if (err == ENOSPC || err == EDQUOT)
		return STATUS_SYSTEM_STORAGE;
	if (!mailbox)
		return STATUS_LOCAL_ERROR;
	switch (err) {
	case EACCES:
	case EPERM:
	case ENOTDIR:
	case EISDIR:
	case ELOOP:
	case ENAMETOOLONG:
	case EROFS:
	case ENOENT:
	case EEXIST:
	case EMLINK:
	case EFBIG:
		return STATUS_MAILBOX_UNAVAILABLE;
	default:
		return STATUS_LOCAL_ERROR;
	}
}

/* "open /var/mail/x/tmp/...: Permission denied" */
void delivery_fail_errno(struct delivery *d, int err, bool mailbox,
			 const char *what, const char *path)
{
	/* ELOOP here comes from O_NOFOLLOW: a link planted in a mailbox. */
	const char *text =
	    err == ELOOP ? "symbolic link not followed" : strerror(err);
	char *reason = NULL;
	if (asprintf(&reason, "%s %s: %s", what, path, text) == -1)
		reason = NULL;
	delivery_finish(d, DELIVER_TEMPFAIL, status_for_errno(err, mailbox),
			reason, strerror(err));
}

void delivery_fail_text(struct delivery *d, enum status_code status,
			const char *text)
{
	delivery_finish(d, DELIVER_TEMPFAIL, status, NULL, text);
}

char *delivery_path_join(const char *dir, const char *sub, const char *name)
{
	char *out = NULL;
	int rc = name != NULL ? asprintf(&out, "%s/%s/%s", dir, sub, name)
			      : asprintf(&out, "%s/%s", dir, sub);
	return rc == -1 ? NULL : out;
}

int delivery_add_sync_path(struct delivery *d, const char *path, size_t len)
{
	for (size_t i = 0; i < d->sync_count; i++)
		if (strlen(d->sync_paths[i]) == len &&
		    memcmp(d->sync_paths[i], path, len) == 0)
			return 0;
	char **n = reallocarray(d->sync_paths, d->sync_count + 1, sizeof *n);
	if (n == NULL)
		return -1;
	d->sync_paths = n;
	char *copy = strndup(path, len);
	if (copy == NULL)
		return -1;
	d->sync_paths[d->sync_count++] = copy;
	return 0;
}

/* After mailfolder_walk(dir) created directories from the prefix of
 * length `first_created` on: flush the parent of that prefix and every
 * created directory, so that the new entries survive a crash. */
int delivery_add_created_chain(struct delivery *d, const char *dir,
			       size_t first_created)
{
	if (first_created == 0)
		return 0;
	size_t len = strlen(dir);
	while (len > 1 && dir[len - 1] == '/')
		len--;
	size_t parent = first_created;
	while (parent > 0 && dir[parent - 1] != '/')
		parent--;
	/* dir[0..parent) is the parent with its slash, or empty. */
	if (parent == 0) {
		if (delivery_add_sync_path(d, ".", 1) == -1)
			return -1;
	} else if (delivery_add_sync_path(d, dir,
					  parent > 1 ? parent - 1 : 1) == -1) {
		return -1;
	}
	for (size_t i = first_created; i <= len; i++) {
		if (i < len && dir[i] != '/')
			continue;
		if (dir[i - 1] == '/')
			continue;
		if (delivery_add_sync_path(d, dir, i) == -1)
			return -1;
	}
	return 0;
}

int delivery_open_sync_fds(struct delivery *d, const char **failed)
{
	if (d->sync_count == 0)
		return 0;
	/* Sized again each time: a retry may have made more directories. */
	int *fds = reallocarray(d->sync_fds, d->sync_count, sizeof *fds);
	if (fds == NULL) {
		*failed = NULL;
		return -1;
	}
	d->sync_fds = fds;
	d->sync_open = 0;
	for (size_t i = 0; i < d->sync_count; i++) {
		int fd =
		    open(d->sync_paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd == -1) {
			*failed = d->sync_paths[i];
			return -1;
		}
		d->sync_fds[d->sync_open++] = fd;
	}
	return 0;
}

int *delivery_flush_list(const struct delivery *d, int first)
{
	int *fds = malloc((1 + d->sync_open) * sizeof *fds);
	if (fds == NULL)
		return NULL;
	fds[0] = first;
	for (size_t i = 0; i < d->sync_open; i++)
		fds[1 + i] = d->sync_fds[i];
	return fds;
}

int delivery_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);
		if (w == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

/*
 * The queued message in mailbox form into `out`: unstuffed, LF line
 * ends, and mboxrd-quoted for mbox. 64 KiB at a time: memory does not
 * grow with the message. *last is the last octet written ('\n' if none).
 */
int delivery_copy_message(const struct delivery *d, int out, bool mboxrd,
			  char *last, struct delivery_copy_error *ce)
{
	uint64_t done = 0;
	char *raw = malloc(COPY_CHUNK);
	char *plain = malloc(COPY_CHUNK);
	char *quoted = mboxrd ? malloc(MBOX_QUOTE_OUT_MAX(COPY_CHUNK)) : NULL;
	int rc = -1;
	if (raw == NULL || plain == NULL || (mboxrd && quoted == NULL)) {
		ce->err = ENOMEM;
		ce->reading = true;
		goto out;
	}
	struct smtp_unstuff unstuff = {0};
	struct mbox_quote_state quote = {0};
	for (;;) {
		uint64_t left = d->body_length - done;
		ssize_t r = 0;
		if (left > 0)
			r = pread(d->body_fd, raw,
				  left < COPY_CHUNK ? (size_t)left : COPY_CHUNK,
				  (off_t)(d->body_offset + done));
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1 || (r == 0 && left > 0)) {
			/* shorter than the spool recorded: never deliver a
			 * cut message */
			ce->err = r == -1 ? errno : EIO;
			ce->reading = true;
			goto out;
		}
		done += (uint64_t)r;
		const char *data;
		size_t n;
		if (r == 0) {
			if (!mboxrd)
				break;
			n = mbox_quote_finish(&quote, quoted);
			data = quoted;
		} else {
			n = smtp_unstuff_to_lf(&unstuff, raw, (size_t)r, plain);
			data = plain;
			if (mboxrd) {
				n = mbox_quote(&quote, plain, n, quoted);
				data = quoted;
			}
		}
		if (n > 0) {
			if (delivery_write_all(out, data, n) == -1) {
				ce->err = errno;
				ce->reading = false;
				goto out;
			}
			*last = data[n - 1];
		}
		if (r == 0)
			break;
	}
	rc = 0;
out:
	free(raw);
	free(plain);
	free(quoted);
	return rc;
}

int delivery_write_headers(struct delivery *d, int fd)
{
	char *headers = NULL;
	int len = asprintf(&headers, "Return-Path: <%s>\nDelivered-To: %s\n",
			   d->sender, d->recipient);
	if (len == -1) {
		errno = ENOMEM;
		return -1;
	}
	int rc = delivery_write_all(fd, headers, (size_t)len);
	int saved = errno;
	free(headers);
	errno = saved;
	return rc;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct delivery *d = arg;
	/* The mailbox is touched as its owner; the callback, which writes
	 * the spool, runs as the daemon. */
	switch (d->state) {
	case STATE_START:
		mailowner_enter();
		if (d->format == MAILBOX_MBOX)
			mbox_attempt(d);
		else
			maildir_begin(d);
		mailowner_leave();
		break;
	case STATE_LOCK_WAIT:
		mailowner_enter();
		mbox_attempt(d);
		mailowner_leave();
		break;
	case STATE_DONE:
		delivery_run_callback(d);
		break;
	case STATE_QUEUED:
	case STATE_MAILDIR_SYNC:
	case STATE_MBOX_SYNC:
		break; /* not armed in these states */
	}
}

struct deliver *deliver_new(struct event_base *base, struct iothread *io)
{
	struct deliver *dl = calloc(1, sizeof *dl);
	if (dl == NULL)
		return NULL;
	dl->base = base;
	dl->io = io;
	return dl;
}

void deliver_free(struct deliver *dl)
{
	if (dl == NULL)
		return;
	maildir_forget_all(dl);
	free(dl);
}

int deliver_start(struct deliver *dl, const struct deliver_request *req,
		  deliver_cb cb, void *arg)
{
	struct delivery *d = calloc(1, sizeof *d);
	if (d == NULL)
		return -1;
	d->owner = dl;
	d->base = dl->base;
	d->io = dl->io;
	d->cb = cb;
	d->arg = arg;
	d->fd = -1;
	d->dir_fd = -1;
	d->lock.fd = -1;
	d->root_len = req->root_len;
	d->body_fd = fcntl(req->body.fd, F_DUPFD_CLOEXEC, 0);
	d->body_offset = req->body.offset;
	d->body_length = req->body.length;
	d->format = req->format;
	d->arrival = req->arrival;
	d->check_existing = req->check_existing;
	d->mailbox = dup_or_empty(req->mailbox);
	d->sender = dup_header_value(req->sender);
	d->recipient = dup_header_value(req->recipient);
	d->unique = dup_or_empty(req->unique);
	d->hostname = dup_or_empty(req->hostname);
	d->timer = evtimer_new(dl->base, on_timer, d);
	if (d->mailbox == NULL || d->body_fd == -1 || d->sender == NULL ||
	    d->recipient == NULL || d->unique == NULL || d->hostname == NULL ||
	    d->timer == NULL) {
		delivery_free(d);
		return -1;
	}

	if (d->format != MAILBOX_MBOX) {
		if (delivery_schedule(d, STATE_START, 0) == -1) {
			delivery_free(d);
			return -1;
		}
		return 0;
	}

	if (mbox_enqueue(d) == -1) {
		delivery_free(d);
		return -1;
	}
	return 0;
}
