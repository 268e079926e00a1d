/*
 * mbox delivery (see mbox.h), one step of the delivery state machine
 * that deliver.c drives: the folders made once, the dot lock and then
 * the fcntl lock taken (both retried on the timer while someone else
 * holds them), the From_ line, the headers and the quoted message
 * appended, and the file handed to the iothread to be flushed with the
 * directories that a new mbox changed.
 *
 * Deliveries to one path are queued here and run one at a time, so
 * that they never wait for a lock that this very process holds. The
 * queues live in the daemon's struct deliver, not in this file.
 *
 * The mbox is opened without following a link below the mail root and
 * refused unless it is a regular file with one link, owned by us.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/delivery.h"
#include "facteur/iothread.h"
#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"
#include "facteur/mbox.h"

/* Lock held by someone else: try again this often, this many times. */
#define LOCK_RETRY_USEC 100000
#define LOCK_ATTEMPTS_MAX 100
/* A dot lock older than this was left by a crash (procmail and mutt use
 * a few minutes too); a live writer touches it within a second or two. */
#define DOT_LOCK_STALE_SECONDS 300

struct mbox_queue {
	struct mbox_queue *next;
	char *path;
	struct delivery *head;
	struct delivery *tail;
};

enum mbox_dot_lock mbox_dot_lock_try(int dirfd, const char *name,
				     time_t stale_seconds,
				     struct mbox_lock_file *file)
{
	file->fd = -1;
	for (int tries = 0; tries < 2; tries++) {
		struct stat st;
		int fd = openat(
		    dirfd, name,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd != -1) {
			int rc = fstat(fd, &st);
			int err = errno;
			if (close(fd) == -1 || rc == -1) {
				(void)unlinkat(dirfd, name, 0);
				errno = rc == -1 ? err : errno;
				return DOT_LOCK_ERROR;
			}
			file->dev = st.st_dev;
			file->ino = st.st_ino;
			return DOT_LOCK_TAKEN;
		}
		if (errno != EEXIST)
			return DOT_LOCK_ERROR;
		/* A descriptor on the lock found, to break that very file
		 * later; a lock we may not read is judged by its name. */
		fd = openat(dirfd, name,
			    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd == -1 && errno == ENOENT)
			continue; /* just removed: try again */
		if (fd == -1 && errno != EACCES && errno != ELOOP)
			return DOT_LOCK_ERROR;
		int rc = fd != -1
			     ? fstat(fd, &st)
			     : fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW);
		if (rc == -1) {
			int err = errno;
			if (fd != -1)
				(void)close(fd); /* read-only */
			if (err == ENOENT)
				continue;
			errno = err;
			return DOT_LOCK_ERROR;
		}
		/* Only a file (or a link) is a lock that a crash can leave;
		 * anything else there is not ours to remove. */
		bool lockish = S_ISREG(st.st_mode) || S_ISLNK(st.st_mode);
		if (!lockish || time(NULL) - st.st_mtime < stale_seconds) {
			if (fd != -1)
				(void)close(fd); /* read-only */
			return DOT_LOCK_BUSY;
		}
		file->fd = fd;
		file->dev = st.st_dev;
		file->ino = st.st_ino;
		return DOT_LOCK_STALE;
	}
	return DOT_LOCK_BUSY;
}

/*
 * Two lockers that both find a lock stale must not both remove "it":
 * the second would remove the fresh lock the first has just made, and
 * both would write. So a breaker removes only the file it judged:
 * - it holds flock on that file while it breaks it, so facteur lockers
 *   break a given stale file one at a time; a later one finds the name
 *   on another file (the fresh lock) and leaves it;
 * - it does not unlink the name, it renames it aside and then looks at
 *   what it moved: the judged file is unlinked, anything else (a fresh
 *   lock made by a program that does not take the flock, between our
 *   look and the rename) is renamed back without replacing anything.
 * That last window, with a third locker creating the lock while the
 * fresh one is aside, is the only one left, and only for other programs.
 */
enum mbox_dot_lock mbox_dot_lock_break(int dirfd, const char *name,
				       struct mbox_lock_file *file)
{
	enum mbox_dot_lock result = DOT_LOCK_ERROR;
	char *aside = NULL;
	int err;
	if (file->fd != -1 && flock(file->fd, LOCK_EX | LOCK_NB) == -1) {
		if (errno == EWOULDBLOCK) {
			result = DOT_LOCK_BUSY; /* another breaker */
			goto out;
		}
		/* No flock here (some network file systems): the rename
		 * below still checks what it moved. */
	}
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1) {
		result = errno == ENOENT ? DOT_LOCK_STALE : DOT_LOCK_ERROR;
		goto out;
	}
	if (st.st_dev != file->dev || st.st_ino != file->ino) {
		result = DOT_LOCK_BUSY; /* broken already, and taken again */
		goto out;
	}
	char hex[TMP_RANDOM_HEX + 1] = {0};
	mailfolder_random_hex(hex, TMP_RANDOM_HEX);
	if (asprintf(&aside, "%s.broken.%s", name, hex) == -1) {
		aside = NULL;
		errno = ENOMEM;
		goto out;
	}
	if (renameat(dirfd, name, dirfd, aside) == -1) {
		result = errno == ENOENT ? DOT_LOCK_STALE : DOT_LOCK_ERROR;
		goto out;
	}
	if (fstatat(dirfd, aside, &st, AT_SYMLINK_NOFOLLOW) == -1)
		goto out;
	if (st.st_dev == file->dev && st.st_ino == file->ino) {
		result = unlinkat(dirfd, aside, 0) == 0 ? DOT_LOCK_STALE
							: DOT_LOCK_ERROR;
		goto out;
	}
	/* Someone's fresh lock: give it back, never over a newer one. */
	if (renameat2(dirfd, aside, dirfd, name, RENAME_NOREPLACE) == -1 &&
	    errno == EINVAL)
		(void)linkat(dirfd, aside, dirfd, name, 0); /* never replaces */
	/* Gone if it went back; else the name is taken again, by a lock
	 * that was made later, and this one is only litter. */
	(void)unlinkat(dirfd, aside, 0);
	result = DOT_LOCK_BUSY;
out:
	err = errno;
	free(aside);
	if (file->fd != -1)
		(void)close(file->fd); /* read-only; drops the flock */
	file->fd = -1;
	errno = err;
	return result;
}

size_t mbox_quote(struct mbox_quote_state *q, const char *in, size_t inlen,
		  char *out)
{
	static const char from[] = "From ";
	size_t n = 0;
	for (size_t i = 0; i < inlen; i++) {
		char c = in[i];
		if (q->matched > 0) {
			if (c == from[q->matched]) {
				if (++q->matched == 5) {
					out[n++] = '>';
					memcpy(out + n, from, 5);
					n += 5;
					q->matched = 0;
					q->mid_line = true;
				}
				continue;
			}
			/* Not "From ": give back what was held. */
			memcpy(out + n, from, q->matched);
			n += q->matched;
			q->matched = 0;
			q->mid_line = true;
		}
		if (!q->mid_line) {
			if (c == 'F') {
				q->matched = 1;
				continue;
			}
			if (c != '>' && c != '\n')
				q->mid_line = true;
		}
		out[n++] = c;
		if (c == '\n')
			q->mid_line = false;
	}
	return n;
}

size_t mbox_quote_finish(struct mbox_quote_state *q, char *out)
{
	size_t n = q->matched;
	memcpy(out, "From ", n);
	q->matched = 0;
	q->mid_line = n > 0 || q->mid_line;
	return n;
}

static void drop_dot_lock(struct delivery *d);

/* Let the next mbox delivery of this path go. */
static void mbox_queue_release(struct delivery *d)
{
	struct mbox_queue *q = d->queue;
	if (q == NULL)
		return;
	d->queue = NULL;
	q->head = d->queue_next;
	if (q->head == NULL) {
		for (struct mbox_queue **pp = &d->owner->mbox_queues;
		     *pp != NULL; pp = &(*pp)->next) {
			if (*pp == q) {
				*pp = q->next;
				break;
			}
		}
		free(q->path);
		free(q);
		return;
	}
	struct delivery *next = q->head;
	if (delivery_schedule(next, STATE_START, 0) == -1)
		mbox_attempt(next); /* we are on the loop already */
}

/* Give back the mbox locks and the descriptor. */
static void mbox_unlock(struct delivery *d)
{
	if (d->fd != -1) {
		struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
		(void)fcntl(d->fd, F_SETLK, &fl); /* close releases it too */
	}
	drop_dot_lock(d);
}

/* A write or fsync failed: cut the file back to its size before this
 * message, so that it never holds half of one. */
static void mbox_fail(struct delivery *d, int err, bool reading,
		      const char *what, const char *path)
{
	if (d->fd != -1 && ftruncate(d->fd, d->start_size) == 0)
		(void)fsync(
		    d->fd); /* best effort; the loop is failing anyway */
	mbox_unlock(d);
	delivery_fail_errno(d, err, !reading, what, path);
}

static void mbox_on_synced_as_owner(int error, void *arg)
{
	struct delivery *d = arg;
	delivery_close_sync_fds(d);
	if (error != 0) {
		mbox_fail(d, error, false, "fsync", d->mailbox);
		return;
	}
	mbox_unlock(d);
	int fd = d->fd;
	d->fd = -1;
	if (close(fd) == -1) {
		/* The data was flushed; a late close error cannot unwrite
		 * it, and reporting it would deliver the message twice. */
	}
	delivery_finish_ok(d, "delivered");
}

/* The lock is removed in the mailbox's folder: as its owner. */
static void mbox_on_synced(int error, void *arg)
{
	mailowner_enter();
	mbox_on_synced_as_owner(error, arg);
	mailowner_leave();
}

static void mbox_busy(struct delivery *d)
{
	if (++d->lock_attempts >= LOCK_ATTEMPTS_MAX) {
		delivery_fail_text(d, STATUS_MAILBOX_BUSY, "mailbox busy");
		return;
	}
	if (delivery_schedule(d, STATE_LOCK_WAIT, LOCK_RETRY_USEC) == -1)
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "cannot arm a timer");
}

/* The dot lock: 1 taken, 0 busy, -1 error (errno). */
static int take_dot_lock(struct delivery *d)
{
	for (int tries = 0; tries < NAME_ATTEMPTS; tries++) {
		switch (mbox_dot_lock_try(d->dir_fd, d->lock_name,
					  DOT_LOCK_STALE_SECONDS, &d->lock)) {
		case DOT_LOCK_TAKEN:
			d->dot_locked = true;
			return 1;
		case DOT_LOCK_BUSY:
			return 0;
		case DOT_LOCK_ERROR:
			return -1;
		case DOT_LOCK_STALE:
			break;
		}
		switch (
		    mbox_dot_lock_break(d->dir_fd, d->lock_name, &d->lock)) {
		case DOT_LOCK_STALE:
			break; /* removed: take it now */
		case DOT_LOCK_ERROR:
			return -1;
		case DOT_LOCK_TAKEN:
		case DOT_LOCK_BUSY:
			return 0;
		}
	}
	return 0;
}

/* Remove our dot lock, unless it is no longer ours: a delivery slower
 * than DOT_LOCK_STALE_SECONDS may have seen it broken and taken again. */
static void drop_dot_lock(struct delivery *d)
{
	if (!d->dot_locked)
		return;
	d->dot_locked = false;
	struct stat st;
	if (fstatat(d->dir_fd, d->lock_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_dev == d->lock.dev && st.st_ino == d->lock.ino)
		(void)unlinkat(d->dir_fd, d->lock_name, 0);
}

static const char *const weekdays[] = {"Sun", "Mon", "Tue", "Wed",
				       "Thu", "Fri", "Sat"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
				     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* "From sender Thu Nov 26 14:00:00 2026\n" (asctime's date, local time,
 * without depending on the locale). */
static int write_from_line(struct delivery *d, int fd)
{
	time_t now = time(NULL);
	struct tm tm;
	if (localtime_r(&now, &tm) == NULL)
		memset(&tm, 0, sizeof tm);
	const char *sender = d->sender[0] != '\0' ? d->sender : "MAILER-DAEMON";
	char *line = NULL;
	int len = asprintf(&line, "From %s %s %s %2d %02d:%02d:%02d %d\n",
			   sender, weekdays[(unsigned)tm.tm_wday % 7],
			   months[(unsigned)tm.tm_mon % 12], tm.tm_mday,
			   tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
	if (len == -1) {
		errno = ENOMEM;
		return -1;
	}
	/* Readers split the From_ line at blanks: a quoted local part must
	 * not add fields. */
	for (int i = 5; i < 5 + (int)strlen(sender); i++)
		if (ascii_is_wsp(line[i]))
			line[i] = '_';
	int rc = delivery_write_all(fd, line, (size_t)len);
	int saved = errno;
	free(line);
	errno = saved;
	return rc;
}

/* The mbox's folders (made where missing, once) and its directory
 * opened without following links below the mail root. 0, or -1 with
 * the delivery failed. */
static int mbox_open_directory(struct delivery *d)
{
	const char *slash = strrchr(d->mailbox, '/');
	char *dir = slash == NULL ? strdup(".")
		    : slash == d->mailbox
			? strdup("/")
			: strndup(d->mailbox, (size_t)(slash - d->mailbox));
	d->base_name = strdup(slash != NULL ? slash + 1 : d->mailbox);
	if (dir == NULL || d->base_name == NULL ||
	    asprintf(&d->lock_path, "%s.lock", d->mailbox) == -1 ||
	    asprintf(&d->lock_name, "%s.lock", d->base_name) == -1) {
		free(dir);
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return -1;
	}
	if (d->base_name[0] == '\0' || strcmp(d->base_name, ".") == 0 ||
	    strcmp(d->base_name, "..") == 0) {
		free(dir);
		delivery_fail_errno(d, EISDIR, true, "open", d->mailbox);
		return -1;
	}
	size_t first_created, failed_len;
	const char *what;
	d->dir_fd = mailfolder_walk(dir, d->root_len, true, &first_created,
				    &failed_len, &what);
	if (d->dir_fd == -1) {
		int err = errno;
		dir[failed_len] = '\0';
		delivery_fail_errno(d, err, true, what, dir);
		free(dir);
		return -1;
	}
	if (delivery_add_created_chain(d, dir, first_created) == -1) {
		free(dir);
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return -1;
	}
	free(dir);
	return 0;
}

/* Refuse a mailbox file that a link or another owner could have put
 * there: nothing was written to it. */
static bool mbox_refused(struct delivery *d, const struct stat *st)
{
	char *reason = NULL;
	int rc;
	if (!S_ISREG(st->st_mode))
		rc = asprintf(&reason, "%s is not a regular file", d->mailbox);
	else if (st->st_nlink != 1)
		rc = asprintf(&reason, "%s has %ju links, not 1", d->mailbox,
			      (uintmax_t)st->st_nlink);
	else if (st->st_uid != mailowner_uid())
		rc = asprintf(&reason, "%s is owned by uid %ju, not %ju",
			      d->mailbox, (uintmax_t)st->st_uid,
			      (uintmax_t)mailowner_uid());
	else
		return false;
	if (rc == -1)
		reason = NULL;
	(void)close(d->fd); /* nothing written */
	d->fd = -1;
	mbox_unlock(d);
	delivery_finish(d, DELIVER_TEMPFAIL, STATUS_MAILBOX_UNAVAILABLE, reason,
			"mailbox refused");
	return true;
}

void mbox_attempt(struct delivery *d)
{
	/* First attempt: the folders, once. */
	if (d->dir_fd == -1 && mbox_open_directory(d) == -1)
		return;

	int locked = take_dot_lock(d);
	if (locked == -1) {
		delivery_fail_errno(d, errno, true, "lock", d->lock_path);
		return;
	}
	if (locked == 0) {
		mbox_busy(d);
		return;
	}

	/* Never through a link, never blocking on a FIFO put in its place
	 * (O_NONBLOCK does nothing to a regular file). */
	bool created = true;
	d->fd = openat(d->dir_fd, d->base_name,
		       O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW |
			   O_CLOEXEC,
		       mailowner_file_mode());
	if (d->fd != -1 && mailowner_fix_file_mode(d->fd) == -1) {
		int err = errno;
		(void)close(d->fd); /* nothing written */
		d->fd = -1;
		(void)unlinkat(d->dir_fd, d->base_name, 0);
		errno = err;
	}
	if (d->fd == -1 && errno == EEXIST) {
		created = false;
		d->fd = openat(d->dir_fd, d->base_name,
			       O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK |
				   O_NOCTTY | O_CLOEXEC);
	}
	if (d->fd == -1) {
		int err = errno;
		mbox_unlock(d);
		delivery_fail_errno(d, err, true, "open", d->mailbox);
		return;
	}
	struct stat st;
	if (fstat(d->fd, &st) == -1) {
		int err = errno;
		mbox_unlock(d);
		delivery_fail_errno(d, err, true, "stat", d->mailbox);
		return;
	}
	if (mbox_refused(d, &st))
		return;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
	if (fcntl(d->fd, F_SETLK, &fl) == -1) {
		if (errno != EACCES && errno != EAGAIN) {
			/* Nothing written: nothing to cut back. */
			int err = errno;
			mbox_unlock(d);
			delivery_fail_errno(d, err, true, "lock", d->mailbox);
			return;
		}
		mbox_unlock(d);
		(void)close(d->fd); /* nothing written */
		d->fd = -1;
		mbox_busy(d);
		return;
	}
	/* The size to cut back to is the one under the lock. */
	if (fstat(d->fd, &st) == -1) {
		int err = errno;
		mbox_unlock(d);
		delivery_fail_errno(d, err, true, "stat", d->mailbox);
		return;
	}
	d->start_size = st.st_size;
	if (created) {
		char *dir = strdup(d->mailbox);
		if (dir == NULL) {
			mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
			return;
		}
		char *slash = strrchr(dir, '/');
		int rc =
		    slash == NULL ? delivery_add_sync_path(d, ".", 1)
		    : slash == dir
			? delivery_add_sync_path(d, "/", 1)
			: delivery_add_sync_path(d, dir, (size_t)(slash - dir));
		free(dir);
		if (rc == -1) {
			mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
			return;
		}
	}

	char last = '\n';
	struct delivery_copy_error ce = {0};
	if (write_from_line(d, d->fd) == -1 ||
	    delivery_write_headers(d, d->fd) == -1) {
		ce.err = errno;
	} else if (delivery_copy_message(d, d->fd, true, &last, &ce) == 0) {
		/* A message that does not end its last line gets one, then
		 * the blank line that separates messages. */
		const char *tail = last == '\n' ? "\n" : "\n\n";
		if (delivery_write_all(d->fd, tail, strlen(tail)) == -1)
			ce.err = errno;
	}
	if (ce.err != 0) {
		mbox_fail(d, ce.err, ce.reading, ce.reading ? "read" : "write",
			  ce.reading ? "the queued message" : d->mailbox);
		return;
	}

	const char *failed = NULL;
	if (delivery_open_sync_fds(d, &failed) == -1) {
		if (failed != NULL)
			mbox_fail(d, errno, false, "open", failed);
		else
			mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	/* The file first, then the directories whose entries changed. */
	int *fds = delivery_flush_list(d, d->fd);
	if (fds == NULL) {
		mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	int rc =
	    iothread_fsync(d->io, fds, d->sync_open + 1, mbox_on_synced, d);
	free(fds);
	if (rc == -1) {
		mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	d->state = STATE_MBOX_SYNC;
}

void mbox_release(struct delivery *d)
{
	drop_dot_lock(d); /* ours; a stale one is aged out */
	mbox_queue_release(d);
}

int mbox_enqueue(struct delivery *d)
{
	struct deliver *dl = d->owner;
	struct mbox_queue *q = dl->mbox_queues;
	while (q != NULL && strcmp(q->path, d->mailbox) != 0)
		q = q->next;
	if (q != NULL) {
		d->state = STATE_QUEUED;
		d->queue = q;
		q->tail->queue_next = d;
		q->tail = d;
		return 0;
	}
	q = calloc(1, sizeof *q);
	if (q == NULL || (q->path = strdup(d->mailbox)) == NULL ||
	    delivery_schedule(d, STATE_START, 0) == -1) {
		if (q != NULL)
			free(q->path);
		free(q);
		return -1;
	}
	q->head = q->tail = d;
	q->next = dl->mbox_queues;
	dl->mbox_queues = q;
	d->queue = q;
	return 0;
}
