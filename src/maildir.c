/*
 * Maildir delivery (see maildir.h), one step of the delivery state
 * machine that deliver.c drives.
 *
 * Maildir folders that exist are remembered with their tmp/ and new/
 * open, so that a delivery makes no mkdir and no stat: it hands one
 * request to the iothread, which creates and writes its file in tmp/
 * (maildir_write), flushes it, links it into new/ (maildir_link),
 * removes the tmp/ name and flushes new/, that last flush shared by
 * every delivery into the folder in the same round. The links go
 * through the descriptors that are flushed, so what is flushed is
 * always the directory that holds the new entry. The remembered folders
 * live in the daemon's struct deliver, not in this file.
 *
 * The tmp/ name has a random part drawn again for each attempt and is
 * created with O_EXCL|O_NOFOLLOW, and the move into new/ never replaces
 * a file, so a link planted by a mailbox's owner never makes facteur
 * write or create a file elsewhere.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "facteur/delivery.h"
#include "facteur/iothread.h"
#include "facteur/maildir.h"
#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"

/* A remembered folder is checked against its path again (one stat of
 * new/) when it was last checked this many seconds ago or more, so that
 * a folder renamed or replaced behind our back stops getting mail. */
#define FOLDER_CHECK_SECONDS 1

/* A Maildir folder with its tmp/ and new/ open. */
struct maildir_folder {
	char *path; /* as the request named it */
	int tmp_fd; /* O_DIRECTORY, read-only */
	int new_fd;
	dev_t dev; /* of new/ when opened */
	ino_t ino;
	unsigned refs;	/* the cache's, and one per delivery using it */
	bool cached;	/* in the struct deliver's `folders` */
	time_t checked; /* monotonic seconds */
	uint64_t used;	/* for eviction */
};

/* Append `s` with '/' and ':' written as \057 and \072 (a file name
 * cannot hold '/', and ':' starts the Maildir info). */
static bool append_escaped(char *buf, size_t len, size_t *n, const char *s)
{
	for (; *s != '\0'; s++) {
		const char *piece = *s == '/'	? "\\057"
				    : *s == ':' ? "\\072"
						: NULL;
		size_t plen = piece != NULL ? 4 : 1;
		if (len - *n <= plen)
			return false;
		if (piece != NULL)
			memcpy(buf + *n, piece, 4);
		else
			buf[*n] = *s;
		*n += plen;
	}
	return true;
}

int maildir_name(char *buf, size_t len, time_t arrival, const char *unique,
		 const char *hostname)
{
	if (buf == NULL || len == 0)
		return -1;
	int w = snprintf(buf, len, "%lld.", (long long)arrival);
	if (w < 0 || (size_t)w >= len)
		return -1;
	size_t n = (size_t)w;
	/* The unique part is escaped too, although the spool never puts a
	 * '/' in it: a file name must never become a path. */
	if (!append_escaped(buf, len, &n, unique != NULL ? unique : ""))
		return -1;
	if (len - n <= 1)
		return -1;
	buf[n++] = '.';
	if (!append_escaped(buf, len, &n, hostname != NULL ? hostname : ""))
		return -1;
	buf[n] = '\0';
	if (n > INT_MAX)
		return -1;
	return (int)n;
}

static time_t monotonic_seconds(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0; /* cannot fail with this clock; 0 only checks more */
	return ts.tv_sec;
}

void maildir_folder_put(struct maildir_folder *f)
{
	if (f == NULL || --f->refs > 0)
		return;
	(void)close(f->tmp_fd); /* read-only directories */
	(void)close(f->new_fd);
	free(f->path);
	free(f);
}

/* Stop remembering a folder; deliveries holding it keep it open. */
static void folder_forget(struct deliver *dl, struct maildir_folder *f)
{
	if (!f->cached)
		return;
	for (size_t i = 0; i < dl->folder_count; i++) {
		if (dl->folders[i] == f) {
			dl->folders[i] = dl->folders[--dl->folder_count];
			break;
		}
	}
	f->cached = false;
	maildir_folder_put(f);
}

/* A remembered folder for `path`, with a reference for the caller, or
 * NULL. It is checked against the path once in a while. */
static struct maildir_folder *folder_lookup(struct deliver *dl,
					    const char *path)
{
	struct maildir_folder *f = NULL;
	for (size_t i = 0; i < dl->folder_count && f == NULL; i++)
		if (strcmp(dl->folders[i]->path, path) == 0)
			f = dl->folders[i];
	if (f == NULL)
		return NULL;
	time_t now = monotonic_seconds();
	if (now - f->checked >= FOLDER_CHECK_SECONDS) {
		char *newdir = NULL;
		struct stat st;
		if (asprintf(&newdir, "%s/new", path) == -1)
			return NULL;
		int rc = stat(newdir, &st);
		free(newdir);
		if (rc == -1 || st.st_dev != f->dev || st.st_ino != f->ino) {
			folder_forget(dl, f);
			return NULL;
		}
		f->checked = now;
	}
	f->used = ++dl->folder_clock;
	f->refs++;
	return f;
}

/* Remember a folder just opened (refs 1, the caller's), making room if
 * every slot is taken; if all are in use it is simply not remembered. */
static void folder_remember(struct deliver *dl, struct maildir_folder *f)
{
	if (dl->folder_count == FOLDER_CACHE_MAX) {
		struct maildir_folder *victim = NULL;
		for (size_t i = 0; i < dl->folder_count; i++)
			if (dl->folders[i]->refs == 1 &&
			    (victim == NULL ||
			     dl->folders[i]->used < victim->used))
				victim = dl->folders[i];
		if (victim == NULL)
			return;
		folder_forget(dl, victim);
	}
	dl->folders[dl->folder_count++] = f;
	f->cached = true;
	f->refs++;
}

/* `name` with nothing after it, or after it `sep` and anything. */
static bool entry_is(const char *entry, const char *name, size_t len, char sep)
{
	return strncmp(entry, name, len) == 0 &&
	       (entry[len] == '\0' || entry[len] == sep);
}

/* Is `name` already in cur/ (`curfd`, closed here), with or without
 * Maildir info? 1 as a regular file, 0 not there, -1 error (errno);
 * *link is set when the name is something else (a link, say). */
static int maildir_in_cur(int curfd, const char *name, bool *link)
{
	*link = false;
	DIR *dir = fdopendir(curfd);
	if (dir == NULL) {
		int err = errno;
		(void)close(curfd); /* read-only directory */
		errno = err;
		return -1;
	}
	size_t len = strlen(name);
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(dir);
		if (e == NULL) {
			int err = errno;
			(void)closedir(dir);
			errno = err;
			return err == 0 ? 0 : -1;
		}
		if (!entry_is(e->d_name, name, len, ':'))
			continue;
		struct stat st;
		int rc =
		    fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW);
		if (rc == -1 && errno == ENOENT)
			continue; /* moved on by a reader: look further */
		*link = rc == -1 || !S_ISREG(st.st_mode);
		(void)closedir(dir);
		return 1;
	}
}

/*
 * On a retry: remove what an earlier attempt of this very delivery left
 * in tmp/ (a crash between the creation and the move). Only our own
 * names go (other tmp/ files are the readers' to age out, after 36 hours
 * as Maildir readers do), and only regular files; a failure leaves
 * litter that readers ignore, never a lost message.
 */
static void maildir_remove_stale_tmp(const struct delivery *d)
{
	int fd =
	    openat(d->folder->tmp_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return;
	DIR *dir = fdopendir(fd);
	if (dir == NULL) {
		(void)close(fd); /* read-only directory */
		return;
	}
	size_t len = strlen(d->name);
	struct dirent *e;
	while ((e = readdir(dir)) != NULL) {
		struct stat st;
		if (entry_is(e->d_name, d->name, len, '.') &&
		    fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) ==
			0 &&
		    S_ISREG(st.st_mode))
			(void)unlinkat(dirfd(dir), e->d_name, 0); /* litter */
	}
	(void)closedir(dir); /* read-only directory */
}

/* A failure that says the folder is gone or replaced: stop trusting
 * the remembered one, so that the next delivery makes it again. */
static void maildir_fail(struct delivery *d, int err, const char *what,
			 const char *path)
{
	if (d->folder != NULL &&
	    (err == ENOENT || err == ENOTDIR || err == ESTALE))
		folder_forget(d->owner, d->folder);
	delivery_fail_errno(d, err, true, what, path);
}

/* Make `name` in `dirfd` if missing (*created then), and open it with
 * `mode`, never through a link: the descriptor, or -1 with *what the
 * call that failed. */
static int make_subfolder(int dirfd, const char *name, int mode, bool *created,
			  const char **what)
{
	*what = "mkdir";
	if (mkdirat(dirfd, name, mailowner_dir_mode()) == 0) {
		*created = true;
		(void)mailowner_fix_dir_mode_at(dirfd,
						name); /* as mailfolder */
	} else if (errno != EEXIST) {
		return -1;
	}
	*what = "open";
	return mailfolder_open_directory_at(dirfd, name, mode);
}

/*
 * The folder and its tmp/ new/ cur/, made where missing, with tmp/ and
 * new/ opened; the directories whose entries this created are added to
 * the ones to flush. 0, or -1 with the delivery failed.
 */
static int maildir_make_folder(struct delivery *d)
{
	size_t first_created, failed_len;
	const char *what;
	int dirfd = mailfolder_walk(d->mailbox, d->root_len, true,
				    &first_created, &failed_len, &what);
	if (dirfd == -1) {
		int err = errno;
		char *failed = strndup(d->mailbox, failed_len);
		delivery_fail_errno(d, err, true, what,
				    failed != NULL ? failed : d->mailbox);
		free(failed);
		return -1;
	}
	/* tmp/ new/ cur/, made where missing and opened without
	 * following links: tmp/ and new/ are kept, cur/ only checked
	 * (new/ is flushed, so it is opened for reading; cur/ we may not
	 * be allowed to read). */
	bool created_sub = false;
	int subfds[3] = {-1, -1, -1};
	static const char *const subs[] = {"tmp", "new", "cur"};
	for (size_t i = 0; i < 3; i++) {
		subfds[i] =
		    make_subfolder(dirfd, subs[i], i == 2 ? O_PATH : O_RDONLY,
				   &created_sub, &what);
		if (subfds[i] == -1) {
			int err = errno;
			char *sub =
			    delivery_path_join(d->mailbox, subs[i], NULL);
			delivery_fail_errno(d, err, true, what,
					    sub != NULL ? sub : d->mailbox);
			free(sub);
			for (size_t k = 0; k < i; k++)
				(void)close(subfds[k]); /* read-only */
			(void)close(dirfd);
			return -1;
		}
	}
	(void)close(dirfd); /* read-only directories */
	(void)close(subfds[2]);
	struct maildir_folder *f = calloc(1, sizeof *f);
	if (f == NULL || (f->path = strdup(d->mailbox)) == NULL ||
	    delivery_add_created_chain(d, d->mailbox, first_created) == -1 ||
	    (created_sub &&
	     delivery_add_sync_path(d, d->mailbox, strlen(d->mailbox)) == -1)) {
		if (f != NULL)
			free(f->path);
		free(f);
		(void)close(subfds[0]);
		(void)close(subfds[1]);
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return -1;
	}
	f->refs = 1;
	f->tmp_fd = subfds[0];
	f->new_fd = subfds[1];
	d->folder = f; /* freed with the delivery from here on */
	struct stat st;
	if (fstat(f->new_fd, &st) == -1) {
		delivery_fail_errno(d, errno, true, "stat", d->mailbox);
		return -1;
	}
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->checked = monotonic_seconds();
	f->used = ++d->owner->folder_clock;
	folder_remember(d->owner, f);
	return 0;
}

/* Maildir, on the I/O thread before the flushes: the tmp/ file, made
 * and written; `fds` gets it, to be flushed. Only this delivery's own
 * fields and its folder's descriptors are used (the loop does not touch
 * them until the callback). Creating a file is the costliest step of a
 * delivery for the file system (allocating an inode), which is why it
 * is not done on the loop. */
static int maildir_write_as_owner(struct delivery *d, int *fds)
{
	struct delivery_copy_error ce = {0};
	char last = '\n';

	d->stage = STAGE_OPEN;
	char *random_part = d->tmp_name + strlen(d->name) + 1;
	for (int tries = 1;; tries++) {
		mailfolder_random_hex(random_part, TMP_RANDOM_HEX);
		d->fd =
		    openat(d->folder->tmp_fd, d->tmp_name,
			   O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC,
			   mailowner_file_mode());
		if (d->fd != -1)
			break;
		if (errno != EEXIST || tries == NAME_ATTEMPTS)
			return errno;
	}
	fds[0] = d->fd;
	if (mailowner_fix_file_mode(d->fd) == -1)
		return errno;
	d->stage = STAGE_WRITE;
	if (delivery_write_headers(d, d->fd) == -1)
		ce.err = errno != 0 ? errno : EIO;
	else
		(void)delivery_copy_message(d, d->fd, false, &last,
					    &ce); /* fills ce */
	if (ce.err != 0) {
		d->write_reading = ce.reading;
		return ce.err;
	}
	d->stage = STAGE_FILE_SYNC;
	return 0;
}

/* The I/O thread acts as the mailbox owner for these calls only: it
 * also flushes spool files, which stay the daemon's. */
static int maildir_write(void *arg, int *fds, size_t nfds)
{
	(void)nfds;
	mailowner_enter();
	int rc = maildir_write_as_owner(arg, fds);
	mailowner_leave();
	return rc;
}

/* Maildir, on the I/O thread once the tmp/ file is flushed: into new/
 * under the message's name. An earlier copy already there (a retry after
 * a crash) counts as delivered; anything else there (a link) is left
 * alone and the delivery fails. */
static int maildir_link_as_owner(struct delivery *d)
{
	const struct maildir_folder *f = d->folder;
	d->stage = STAGE_LINK;
	/* A rename that never replaces is one directory operation where a
	 * link and an unlink are two; file systems without it get those. */
	if (renameat2(f->tmp_fd, d->tmp_name, f->new_fd, d->name,
		      RENAME_NOREPLACE) == 0) {
		d->stage = STAGE_DIR_SYNC;
		return 0;
	}
	int err = errno;
	if (err == EINVAL || err == ENOSYS)
		err = linkat(f->tmp_fd, d->tmp_name, f->new_fd, d->name, 0) == 0
			  ? 0
			  : errno;
	if (err == EEXIST) {
		struct stat st;
		if (fstatat(f->new_fd, d->name, &st, AT_SYMLINK_NOFOLLOW) ==
			0 &&
		    S_ISREG(st.st_mode))
			err = 0;
	}
	/* The message is safe in new/ once new/ is flushed; a tmp/ file
	 * left by a failed unlink is only litter that readers ignore. */
	(void)unlinkat(f->tmp_fd, d->tmp_name, 0);
	if (err != 0)
		return err;
	d->stage = STAGE_DIR_SYNC;
	return 0;
}

static int maildir_link(void *arg)
{
	mailowner_enter();
	int rc = maildir_link_as_owner(arg);
	mailowner_leave();
	return rc;
}

static void maildir_attempt(struct delivery *d);

/* Maildir: the file is flushed, linked and new/ flushed, or `stage`
 * says which of these failed. */
static void maildir_on_synced_as_owner(int error, void *arg)
{
	struct delivery *d = arg;
	int fd = d->fd;
	d->fd = -1;
	/* After a flush a close error cannot unwrite anything; before it
	 * the flush's own error is the one to report. */
	if (fd != -1)
		(void)close(fd);
	delivery_close_sync_fds(d);
	if (error == 0) {
		delivery_finish_ok(d, "delivered");
		return;
	}
	switch (d->stage) {
	case STAGE_OPEN:
		/* A remembered folder may have gone since: then once more,
		 * making it again. */
		if (d->folder_was_cached &&
		    (error == ENOENT || error == ENOTDIR || error == ESTALE)) {
			folder_forget(d->owner, d->folder);
			maildir_folder_put(d->folder);
			d->folder = NULL;
			d->folder_was_cached = false;
			maildir_attempt(d);
			return;
		}
		maildir_fail(d, error, "open", d->tmp_path);
		break;
	case STAGE_WRITE:
		(void)unlinkat(d->folder->tmp_fd, d->tmp_name, 0);
		if (d->write_reading)
			delivery_fail_errno(d, error, false, "read",
					    "the queued message");
		else
			maildir_fail(d, error, "write", d->tmp_path);
		break;
	case STAGE_FILE_SYNC:
		(void)unlinkat(d->folder->tmp_fd, d->tmp_name, 0);
		maildir_fail(d, error, "fsync", d->tmp_path);
		break;
	case STAGE_LINK:
		maildir_fail(d, error, "link", d->new_path);
		break;
	case STAGE_DIR_SYNC: {
		/* The file is in new/: a retry finds it there (link says
		 * EEXIST) and does not deliver it twice. */
		char *newdir = delivery_path_join(d->mailbox, "new", NULL);
		maildir_fail(d, error, "fsync",
			     newdir != NULL ? newdir : "new");
		free(newdir);
		break;
	}
	}
}

/* The name is taken in new/ or cur/ by something that is not a message
 * file (a link planted there): the delivery waits, nothing is written. */
static void maildir_refuse_taken(struct delivery *d, const char *sub)
{
	char *reason = NULL;
	if (asprintf(&reason, "%s/%s/%s is not a regular file", d->mailbox, sub,
		     d->name) == -1)
		reason = NULL;
	delivery_finish(d, DELIVER_TEMPFAIL, STATUS_MAILBOX_UNAVAILABLE, reason,
			"the message's name is taken");
}

/* Already in new/ or cur/? 1 yes, 0 no, -1 with the delivery failed. */
static int maildir_delivered_before(struct delivery *d)
{
	struct stat st;
	if (fstatat(d->folder->new_fd, d->name, &st, AT_SYMLINK_NOFOLLOW) ==
	    0) {
		if (S_ISREG(st.st_mode))
			return 1;
		maildir_refuse_taken(d, "new");
		return -1;
	}
	if (errno != ENOENT) {
		maildir_fail(d, errno, "stat", d->new_path);
		return -1;
	}
	char *cur = delivery_path_join(d->mailbox, "cur", NULL);
	if (cur == NULL) {
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return -1;
	}
	/* cur/ beside the new/ we hold, never through a link. */
	int curfd = openat(d->folder->new_fd, "../cur",
			   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = 0;
	bool link = false;
	if (curfd != -1)
		rc = maildir_in_cur(curfd, d->name, &link);
	else if (errno != ENOENT)
		rc = -1;
	if (rc == -1)
		maildir_fail(d, errno, "read", cur);
	else if (rc == 1 && link)
		maildir_refuse_taken(d, "cur");
	free(cur);
	if (rc == 0)
		maildir_remove_stale_tmp(d);
	return rc == 1 && link ? -1 : rc;
}

static void maildir_on_synced(int error, void *arg)
{
	mailowner_enter();
	maildir_on_synced_as_owner(error, arg);
	mailowner_leave();
}

void maildir_begin(struct delivery *d)
{
	size_t cap = 24 + 4 * strlen(d->unique) + 4 * strlen(d->hostname) + 2;
	d->name = malloc(cap);
	if (d->name == NULL) {
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return;
	}
	if (maildir_name(d->name, cap, d->arrival, d->unique, d->hostname) ==
	    -1) {
		delivery_finish(d, DELIVER_PERMFAIL, STATUS_SYSTEM_PERMANENT,
				NULL, "cannot make a Maildir file name");
		return;
	}
	/* tmp/ gets the name, a dot and a random part, drawn again for
	 * each attempt (maildir_write): never a name that an earlier
	 * attempt, or someone who guessed it, could have left there. */
	size_t len = strlen(d->name);
	d->tmp_name = malloc(len + 1 + TMP_RANDOM_HEX + 1);
	if (d->tmp_name != NULL) {
		memcpy(d->tmp_name, d->name, len);
		d->tmp_name[len] = '.';
		memset(d->tmp_name + len + 1, '0', TMP_RANDOM_HEX);
		d->tmp_name[len + 1 + TMP_RANDOM_HEX] = '\0';
	}
	d->tmp_path = delivery_path_join(d->mailbox, "tmp", d->name);
	d->new_path = delivery_path_join(d->mailbox, "new", d->name);
	if (d->tmp_name == NULL || d->tmp_path == NULL || d->new_path == NULL) {
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return;
	}
	maildir_attempt(d);
}

/* The folder (remembered, or made now), then one trip to the I/O
 * thread: the tmp/ file made and written (maildir_write), flushed,
 * moved into new/, and new/ flushed. */
static void maildir_attempt(struct delivery *d)
{
	d->folder = folder_lookup(d->owner, d->mailbox);
	d->folder_was_cached = d->folder != NULL;
	if (d->folder == NULL && maildir_make_folder(d) == -1)
		return;
	if (d->check_existing) {
		int before = maildir_delivered_before(d);
		if (before == -1)
			return;
		if (before == 1) {
			delivery_finish_ok(d, "already delivered");
			return;
		}
	}

	/* The directories to flush: new/ first, then any made for this
	 * delivery. */
	const char *failed = NULL;
	if (delivery_open_sync_fds(d, &failed) == -1) {
		if (failed != NULL)
			delivery_fail_errno(d, errno, true, "open", failed);
		else
			delivery_fail_text(d, STATUS_LOCAL_ERROR,
					   "out of memory");
		return;
	}
	int *after = delivery_flush_list(d, d->folder->new_fd);
	int rc = -1;
	if (after != NULL) {
		int unopened = -1; /* maildir_write gives the file */
		d->stage = STAGE_OPEN;
		rc = iothread_prepare_fsync_step(
		    d->io, maildir_write, &unopened, 1, maildir_link, after,
		    1 + d->sync_open, maildir_on_synced, d);
		free(after);
	}
	if (rc == -1) {
		delivery_fail_text(d, STATUS_LOCAL_ERROR, "out of memory");
		return;
	}
	d->state = STATE_MAILDIR_SYNC;
}

void maildir_forget_all(struct deliver *dl)
{
	while (dl->folder_count > 0)
		folder_forget(dl, dl->folders[dl->folder_count - 1]);
}
