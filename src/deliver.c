/*
 * Local delivery (see deliver.h). Each delivery is a small state machine
 * driven by one timer event and the iothread's completions: the work
 * starts on the timer (never inside deliver_start), the file is written
 * on the loop (page cache), and every fsync goes to the iothread. The
 * callback also runs from the timer, after all descriptors are closed.
 *
 * Maildir folders that exist are remembered with their tmp/ and new/
 * open, so that a delivery makes no mkdir and no stat: it creates its
 * file in tmp/ and hands one request to the iothread, which flushes the
 * file, links it into new/, removes the tmp/ name and flushes new/, that
 * last flush shared by every delivery into the folder in the same round.
 * The links go through the descriptors that are flushed, so what is
 * flushed is always the directory that holds the new entry.
 *
 * mbox deliveries to one path are queued here and run one at a time, so
 * that they never wait for a lock that this very process holds.
 *
 * Below the mail root (the fixed start of mailbox_path, which may be a
 * symbolic link of the operator's) no path is followed through a link:
 * folders are opened one component at a time with O_NOFOLLOW, files are
 * created with O_EXCL|O_NOFOLLOW, and the tmp/ name has a random part,
 * so a link planted by a mailbox's owner never makes facteur write or
 * create a file elsewhere.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/deliver.h"
#include "facteur/iothread.h"
#include "facteur/smtp_proto.h"

#define COPY_CHUNK (64 * 1024)
/* Lock held by someone else: try again this often, this many times. */
#define LOCK_RETRY_USEC 100000
#define LOCK_ATTEMPTS_MAX 100
/* A dot lock older than this was left by a crash (procmail and mutt use
 * a few minutes too); a live writer touches it within a second or two. */
#define DOT_LOCK_STALE_SECONDS 300
/* Maildir folders remembered at most; the least recently used one that
 * no delivery holds makes room. Two descriptors each. */
#define FOLDER_CACHE_MAX 64
/* A remembered folder is checked against its path again (one stat of
 * new/) when it was last checked this many seconds ago or more, so that
 * a folder renamed or replaced behind our back stops getting mail. */
#define FOLDER_CHECK_SECONDS 1
/* The random part of a tmp/ name: 16 hex digits, fresh per attempt. */
#define TMP_RANDOM_HEX 16
/* Tries at a tmp/ name (or a dot lock's aside name) that is free. */
#define NAME_ATTEMPTS 4

enum delivery_state {
	STATE_QUEUED,	    /* mbox: waiting behind another delivery */
	STATE_START,	    /* the timer begins the work */
	STATE_LOCK_WAIT,    /* mbox: the timer retries the locks */
	STATE_MAILDIR_SYNC, /* maildir: with the iothread (see stage) */
	STATE_MBOX_SYNC,    /* mbox: the file (and new folders) being flushed */
	STATE_DONE,	    /* the timer runs the callback */
};

struct mbox_queue;

/* A Maildir folder with its tmp/ and new/ open. */
struct folder {
	char *path; /* as the request named it */
	int tmp_fd; /* O_DIRECTORY, read-only */
	int new_fd;
	dev_t dev; /* of new/ when opened */
	ino_t ino;
	unsigned refs;	/* the cache's, and one per delivery using it */
	bool cached;	/* in `folders` */
	time_t checked; /* monotonic seconds */
	uint64_t used;	/* for eviction */
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

	int fd;		       /* the tmp/ file or the mbox, -1 when closed */
	struct folder *folder; /* maildir: held until freed */
	char *name;	       /* maildir: the file's name in new/ */
	char *tmp_name;	       /* maildir: name "." random, in tmp/ */
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
	struct deliver_lock_file lock;
	bool dot_locked;
	unsigned lock_attempts;
	off_t start_size;

	enum deliver_result result;
	const char *dsn;
	char *reason; /* malloc'd, or NULL: then reason_text */
	const char *reason_text;
};

struct mbox_queue {
	struct mbox_queue *next;
	char *path;
	struct delivery *head;
	struct delivery *tail;
};

/* All mbox paths with a delivery in progress; the loop is single-threaded. */
static struct mbox_queue *mbox_queues;

/* Remembered Maildir folders (loop only). */
static struct folder *folders[FOLDER_CACHE_MAX];
static size_t folder_count;
static uint64_t folder_clock;

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

int deliver_maildir_name(char *buf, size_t len, time_t arrival,
			 const char *unique, const char *hostname)
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

static int ensure_directory(const char *path)
{
	struct stat st;
	if (stat(path, &st) == -1)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

/*
 * mkdir -p. *first_created is set to the length of the path of the
 * outermost directory this call created, or 0 when it created none, so
 * that the caller can flush the directories whose entries changed.
 */
static int mkdirs_tracked(const char *path, size_t *first_created)
{
	*first_created = 0;
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	if (len == 0) {
		errno = ENOENT;
		return -1;
	}
	char *copy = strndup(path, len);
	if (copy == NULL)
		return -1;
	int rc = -1;
	/* Usually the parent exists: one call. */
	if (mkdir(copy, 0700) == 0) {
		*first_created = len;
		rc = 0;
		goto out;
	}
	if (errno == EEXIST) {
		rc = ensure_directory(copy);
		goto out;
	}
	if (errno != ENOENT)
		goto out;
	for (size_t i = 1; i <= len; i++) {
		if (i < len && copy[i] != '/')
			continue;
		if (copy[i - 1] == '/')
			continue; /* "a//b" */
		char saved = copy[i];
		copy[i] = '\0';
		if (mkdir(copy, 0700) == 0) {
			if (*first_created == 0)
				*first_created = i;
		} else if (errno != EEXIST) {
			goto out;
		} else if (i == len && ensure_directory(copy) == -1) {
			goto out;
		}
		copy[i] = saved;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

int deliver_mkdirs(const char *path)
{
	size_t first_created;
	return mkdirs_tracked(path, &first_created);
}

/* openat for a directory that must not be a link: ELOOP if it is one
 * (O_PATH with O_NOFOLLOW opens the link itself, and says ENOTDIR). */
int deliver_open_directory_at(int dirfd, const char *name, int mode)
{
	int fd =
	    openat(dirfd, name, mode | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd == -1 && errno == ENOTDIR &&
	    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISLNK(st.st_mode))
		errno = ELOOP;
	return fd;
}

/*
 * Open the directory `path` (made where missing when `create`, mode
 * 0700). Its first `root_len` octets, the mail root, are opened as they
 * are: operators point /var/mail elsewhere with a link. Every component
 * after them is opened with O_NOFOLLOW (ELOOP for a link), so that a
 * link planted inside the root by the owner of a mailbox never takes a
 * delivery elsewhere; "." and ".." are refused (EINVAL) for the same
 * reason. *first_created as for mkdirs_tracked; on failure *failed_len
 * is the length of the path that failed and *what the call.
 */
static int walk_directory(const char *path, size_t root_len, bool create,
			  size_t *first_created, size_t *failed_len,
			  const char **what)
{
	*first_created = 0;
	*what = "open";
	int err;
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	*failed_len = len;
	if (len == 0) {
		errno = ENOENT;
		return -1;
	}
	if (root_len > len)
		root_len = len;
	char *copy = strndup(path, len);
	if (copy == NULL)
		return -1;
	const char *root = copy[0] == '/' ? "/" : ".";
	if (root_len > 0) {
		copy[root_len] = '\0';
		root = copy;
	}
	int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1 && errno == ENOENT && create && root == copy) {
		*what = "mkdir";
		if (mkdirs_tracked(copy, first_created) == 0)
			fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	}
	if (fd == -1) {
		*failed_len = root == copy ? root_len : 1;
		goto fail;
	}
	if (root == copy)
		copy[root_len] = path[root_len];
	for (size_t i = root_len; i < len;) {
		while (i < len && copy[i] == '/')
			i++;
		size_t end = i;
		while (end < len && copy[end] != '/')
			end++;
		if (end == i)
			break;
		char saved = copy[end];
		copy[end] = '\0';
		*failed_len = end;
		*what = "open";
		const char *name = copy + i;
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
			(void)close(fd); /* read-only directory */
			errno = EINVAL;
			goto fail;
		}
		int next = deliver_open_directory_at(fd, name, O_PATH);
		if (next == -1 && errno == ENOENT && create) {
			*what = "mkdir";
			if (mkdirat(fd, name, 0700) == 0) {
				if (*first_created == 0)
					*first_created = end;
				next =
				    deliver_open_directory_at(fd, name, O_PATH);
			} else if (errno == EEXIST) {
				/* made meanwhile */
				next =
				    deliver_open_directory_at(fd, name, O_PATH);
			}
		}
		if (next == -1) {
			err = errno;
			(void)close(fd); /* read-only directory */
			errno = err;
			goto fail;
		}
		(void)close(fd); /* read-only directory */
		fd = next;
		copy[end] = saved;
		i = end;
	}
	free(copy);
	return fd;
fail:
	err = errno;
	free(copy);
	errno = err;
	return -1;
}

int deliver_open_folder(const char *path, size_t root_len, bool create,
			size_t *failed_len)
{
	size_t first_created, failed;
	const char *what;
	int fd = walk_directory(path, root_len, create, &first_created, &failed,
				&what);
	if (failed_len != NULL)
		*failed_len = failed;
	return fd;
}

/* `n` random hex digits into `out` (no terminator). getrandom may be
 * missing or not ready; the clock and a counter still make the name
 * unlikely to be taken, and O_EXCL makes a taken one harmless. */
static void random_hex(char *out, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	static _Atomic unsigned long counter;
	unsigned char bytes[32];
	size_t want = (n + 1) / 2;
	if (want > sizeof bytes)
		want = sizeof bytes;
	if (getrandom(bytes, want, GRND_NONBLOCK) != (ssize_t)want) {
		struct timespec ts;
		(void)clock_gettime(CLOCK_REALTIME, &ts); /* cannot fail */
		unsigned long long x = (unsigned long long)ts.tv_nsec ^
				       ((unsigned long long)ts.tv_sec << 30) ^
				       ((unsigned long long)getpid() << 12) ^
				       (unsigned long long)++counter;
		for (size_t i = 0; i < want; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			bytes[i] = (unsigned char)(x >> 56);
		}
	}
	for (size_t i = 0; i < n && i / 2 < want; i++)
		out[i] = digits[(bytes[i / 2] >> (i % 2 ? 0 : 4)) & 0xf];
}

enum deliver_dot_lock deliver_dot_lock_try(int dirfd, const char *name,
					   time_t stale_seconds,
					   struct deliver_lock_file *file)
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
enum deliver_dot_lock deliver_dot_lock_break(int dirfd, const char *name,
					     struct deliver_lock_file *file)
{
	enum deliver_dot_lock result = DOT_LOCK_ERROR;
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
	random_hex(hex, TMP_RANDOM_HEX);
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

static time_t monotonic_seconds(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0; /* cannot fail with this clock; 0 only checks more */
	return ts.tv_sec;
}

static void folder_put(struct folder *f)
{
	if (f == NULL || --f->refs > 0)
		return;
	(void)close(f->tmp_fd); /* read-only directories */
	(void)close(f->new_fd);
	free(f->path);
	free(f);
}

/* Stop remembering a folder; deliveries holding it keep it open. */
static void folder_forget(struct folder *f)
{
	if (!f->cached)
		return;
	for (size_t i = 0; i < folder_count; i++) {
		if (folders[i] == f) {
			folders[i] = folders[--folder_count];
			break;
		}
	}
	f->cached = false;
	folder_put(f);
}

/* A remembered folder for `path`, with a reference for the caller, or
 * NULL. It is checked against the path once in a while. */
static struct folder *folder_lookup(const char *path)
{
	struct folder *f = NULL;
	for (size_t i = 0; i < folder_count && f == NULL; i++)
		if (strcmp(folders[i]->path, path) == 0)
			f = folders[i];
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
			folder_forget(f);
			return NULL;
		}
		f->checked = now;
	}
	f->used = ++folder_clock;
	f->refs++;
	return f;
}

/* Remember a folder just opened (refs 1, the caller's), making room if
 * every slot is taken; if all are in use it is simply not remembered. */
static void folder_remember(struct folder *f)
{
	if (folder_count == FOLDER_CACHE_MAX) {
		struct folder *victim = NULL;
		for (size_t i = 0; i < folder_count; i++)
			if (folders[i]->refs == 1 &&
			    (victim == NULL || folders[i]->used < victim->used))
				victim = folders[i];
		if (victim == NULL)
			return;
		folder_forget(victim);
	}
	folders[folder_count++] = f;
	f->cached = true;
	f->refs++;
}

size_t deliver_mboxrd_quote(struct deliver_mboxrd *q, const char *in,
			    size_t inlen, char *out)
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

size_t deliver_mboxrd_finish(struct deliver_mboxrd *q, char *out)
{
	size_t n = q->matched;
	memcpy(out, "From ", n);
	q->matched = 0;
	q->mid_line = n > 0 || q->mid_line;
	return n;
}

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

static void close_sync_fds(struct delivery *d)
{
	for (size_t i = 0; i < d->sync_open; i++)
		(void)close(d->sync_fds[i]); /* read-only directories */
	d->sync_open = 0;
}

static void delivery_free(struct delivery *d)
{
	if (d->fd != -1)
		(void)close(d->fd);
	close_sync_fds(d);
	folder_put(d->folder);
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

static int schedule(struct delivery *d, enum delivery_state state, long usec)
{
	struct timeval tv = {.tv_sec = usec / 1000000,
			     .tv_usec = usec % 1000000};
	d->state = state;
	return evtimer_add(d->timer, &tv);
}

static void mbox_attempt(struct delivery *d);
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
		for (struct mbox_queue **pp = &mbox_queues; *pp != NULL;
		     pp = &(*pp)->next) {
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
	if (schedule(next, STATE_START, 0) == -1)
		mbox_attempt(next); /* we are on the loop already */
}

static void run_callback(struct delivery *d)
{
	d->cb(d->result, d->dsn, d->reason != NULL ? d->reason : d->reason_text,
	      d->arg);
	delivery_free(d);
}

/* The result is known: release what is held, then call back from the
 * timer. */
static void finish(struct delivery *d, enum deliver_result result,
		   const char *dsn, char *reason, const char *reason_text)
{
	d->result = result;
	d->dsn = dsn;
	free(d->reason);
	d->reason = reason;
	d->reason_text = reason != NULL ? NULL : reason_text;
	if (d->fd != -1) {
		(void)close(d->fd); /* only on failure paths: nothing to lose */
		d->fd = -1;
	}
	close_sync_fds(d);
	drop_dot_lock(d); /* ours; a stale one is aged out */
	mbox_queue_release(d);
	if (schedule(d, STATE_DONE, 0) == -1)
		run_callback(d); /* never inside deliver_start: see there */
}

static void finish_ok(struct delivery *d, const char *reason)
{
	finish(d, DELIVER_OK, "2.0.0", NULL, reason);
}

static const char *dsn_for_errno(int err, bool mailbox)
{
	if (err == ENOSPC || err == EDQUOT)
		return "4.3.1";
	if (!mailbox)
		return "4.3.0";
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
		return "4.2.0";
	default:
		return "4.3.0";
	}
}

/* "open /var/mail/x/tmp/...: Permission denied" */
static void fail_errno(struct delivery *d, int err, bool mailbox,
		       const char *what, const char *path)
{
	/* ELOOP here comes from O_NOFOLLOW: a link planted in a mailbox. */
	const char *text =
	    err == ELOOP ? "symbolic link not followed" : strerror(err);
	char *reason = NULL;
	if (asprintf(&reason, "%s %s: %s", what, path, text) == -1)
		reason = NULL;
	finish(d, DELIVER_TEMPFAIL, dsn_for_errno(err, mailbox), reason,
	       strerror(err));
}

static void fail_text(struct delivery *d, const char *dsn, const char *text)
{
	finish(d, DELIVER_TEMPFAIL, dsn, NULL, text);
}

static char *path_join(const char *dir, const char *sub, const char *name)
{
	char *out = NULL;
	int rc = name != NULL ? asprintf(&out, "%s/%s/%s", dir, sub, name)
			      : asprintf(&out, "%s/%s", dir, sub);
	return rc == -1 ? NULL : out;
}

static int add_sync_path(struct delivery *d, const char *path, size_t len)
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

/* After mkdirs_tracked(dir) created directories from the prefix of
 * length `first_created` on: flush the parent of that prefix and every
 * created directory, so that the new entries survive a crash. */
static int add_created_chain(struct delivery *d, const char *dir,
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
		if (add_sync_path(d, ".", 1) == -1)
			return -1;
	} else if (add_sync_path(d, dir, parent > 1 ? parent - 1 : 1) == -1) {
		return -1;
	}
	for (size_t i = first_created; i <= len; i++) {
		if (i < len && dir[i] != '/')
			continue;
		if (dir[i - 1] == '/')
			continue;
		if (add_sync_path(d, dir, i) == -1)
			return -1;
	}
	return 0;
}

static int open_sync_fds(struct delivery *d, const char **failed)
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

static int write_all(int fd, const char *buf, size_t len)
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

struct copy_error {
	int err;
	bool reading; /* the spool file, else the mailbox */
};

/*
 * The queued message in mailbox form into `out`: unstuffed, LF line
 * ends, and mboxrd-quoted for mbox. 64 KiB at a time: memory does not
 * grow with the message. *last is the last octet written ('\n' if none).
 */
static int copy_message(const struct delivery *d, int out, bool mboxrd,
			char *last, struct copy_error *ce)
{
	uint64_t done = 0;
	char *raw = malloc(COPY_CHUNK);
	char *plain = malloc(COPY_CHUNK);
	char *quoted =
	    mboxrd ? malloc(DELIVER_MBOXRD_OUT_MAX(COPY_CHUNK)) : NULL;
	int rc = -1;
	if (raw == NULL || plain == NULL || (mboxrd && quoted == NULL)) {
		ce->err = ENOMEM;
		ce->reading = true;
		goto out;
	}
	struct smtp_unstuff unstuff = {0};
	struct deliver_mboxrd quote = {0};
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
			n = deliver_mboxrd_finish(&quote, quoted);
			data = quoted;
		} else {
			n = smtp_unstuff_to_lf(&unstuff, raw, (size_t)r, plain);
			data = plain;
			if (mboxrd) {
				n = deliver_mboxrd_quote(&quote, plain, n,
							 quoted);
				data = quoted;
			}
		}
		if (n > 0) {
			if (write_all(out, data, n) == -1) {
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

static int write_headers(struct delivery *d, int fd)
{
	char *headers = NULL;
	int len = asprintf(&headers, "Return-Path: <%s>\nDelivered-To: %s\n",
			   d->sender, d->recipient);
	if (len == -1) {
		errno = ENOMEM;
		return -1;
	}
	int rc = write_all(fd, headers, (size_t)len);
	int saved = errno;
	free(headers);
	errno = saved;
	return rc;
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
		folder_forget(d->folder);
	fail_errno(d, err, true, what, path);
}

/* Make `name` in `dirfd` if missing (*created then), and open it with
 * `mode`, never through a link: the descriptor, or -1 with *what the
 * call that failed. */
static int make_subfolder(int dirfd, const char *name, int mode, bool *created,
			  const char **what)
{
	*what = "mkdir";
	if (mkdirat(dirfd, name, 0700) == 0)
		*created = true;
	else if (errno != EEXIST)
		return -1;
	*what = "open";
	return deliver_open_directory_at(dirfd, name, mode);
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
	int dirfd = walk_directory(d->mailbox, d->root_len, true,
				   &first_created, &failed_len, &what);
	if (dirfd == -1) {
		int err = errno;
		char *failed = strndup(d->mailbox, failed_len);
		fail_errno(d, err, true, what,
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
			char *sub = path_join(d->mailbox, subs[i], NULL);
			fail_errno(d, err, true, what,
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
	struct folder *f = calloc(1, sizeof *f);
	if (f == NULL || (f->path = strdup(d->mailbox)) == NULL ||
	    add_created_chain(d, d->mailbox, first_created) == -1 ||
	    (created_sub &&
	     add_sync_path(d, d->mailbox, strlen(d->mailbox)) == -1)) {
		if (f != NULL)
			free(f->path);
		free(f);
		(void)close(subfds[0]);
		(void)close(subfds[1]);
		fail_text(d, "4.3.0", "out of memory");
		return -1;
	}
	f->refs = 1;
	f->tmp_fd = subfds[0];
	f->new_fd = subfds[1];
	d->folder = f; /* freed with the delivery from here on */
	struct stat st;
	if (fstat(f->new_fd, &st) == -1) {
		fail_errno(d, errno, true, "stat", d->mailbox);
		return -1;
	}
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->checked = monotonic_seconds();
	f->used = ++folder_clock;
	folder_remember(f);
	return 0;
}

/* Maildir, on the I/O thread before the flushes: the tmp/ file, made
 * and written; `fds` gets it, to be flushed. Only this delivery's own
 * fields and its folder's descriptors are used (the loop does not touch
 * them until the callback). Creating a file is the costliest step of a
 * delivery for the file system (allocating an inode), which is why it
 * is not done on the loop. */
static int maildir_write(void *arg, int *fds, size_t nfds)
{
	struct delivery *d = arg;
	struct copy_error ce = {0};
	char last = '\n';

	(void)nfds;
	d->stage = STAGE_OPEN;
	char *random_part = d->tmp_name + strlen(d->name) + 1;
	for (int tries = 1;; tries++) {
		random_hex(random_part, TMP_RANDOM_HEX);
		d->fd = openat(
		    d->folder->tmp_fd, d->tmp_name,
		    O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (d->fd != -1)
			break;
		if (errno != EEXIST || tries == NAME_ATTEMPTS)
			return errno;
	}
	fds[0] = d->fd;
	d->stage = STAGE_WRITE;
	if (write_headers(d, d->fd) == -1)
		ce.err = errno != 0 ? errno : EIO;
	else
		(void)copy_message(d, d->fd, false, &last, &ce); /* fills ce */
	if (ce.err != 0) {
		d->write_reading = ce.reading;
		return ce.err;
	}
	d->stage = STAGE_FILE_SYNC;
	return 0;
}

/* Maildir, on the I/O thread once the tmp/ file is flushed: into new/
 * under the message's name. An earlier copy already there (a retry after
 * a crash) counts as delivered; anything else there (a link) is left
 * alone and the delivery fails. */
static int maildir_link(void *arg)
{
	struct delivery *d = arg;
	const struct folder *f = d->folder;
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

static void maildir_attempt(struct delivery *d);

/* Maildir: the file is flushed, linked and new/ flushed, or `stage`
 * says which of these failed. */
static void maildir_on_synced(int error, void *arg)
{
	struct delivery *d = arg;
	int fd = d->fd;
	d->fd = -1;
	/* After a flush a close error cannot unwrite anything; before it
	 * the flush's own error is the one to report. */
	if (fd != -1)
		(void)close(fd);
	close_sync_fds(d);
	if (error == 0) {
		finish_ok(d, "delivered");
		return;
	}
	switch (d->stage) {
	case STAGE_OPEN:
		/* A remembered folder may have gone since: then once more,
		 * making it again. */
		if (d->folder_was_cached &&
		    (error == ENOENT || error == ENOTDIR || error == ESTALE)) {
			folder_forget(d->folder);
			folder_put(d->folder);
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
			fail_errno(d, error, false, "read",
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
		char *newdir = path_join(d->mailbox, "new", NULL);
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
	finish(d, DELIVER_TEMPFAIL, "4.2.0", reason,
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
	char *cur = path_join(d->mailbox, "cur", NULL);
	if (cur == NULL) {
		fail_text(d, "4.3.0", "out of memory");
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

static void maildir_begin(struct delivery *d)
{
	size_t cap = 24 + 4 * strlen(d->unique) + 4 * strlen(d->hostname) + 2;
	d->name = malloc(cap);
	if (d->name == NULL) {
		fail_text(d, "4.3.0", "out of memory");
		return;
	}
	if (deliver_maildir_name(d->name, cap, d->arrival, d->unique,
				 d->hostname) == -1) {
		finish(d, DELIVER_PERMFAIL, "5.3.0", NULL,
		       "cannot make a Maildir file name");
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
	d->tmp_path = path_join(d->mailbox, "tmp", d->name);
	d->new_path = path_join(d->mailbox, "new", d->name);
	if (d->tmp_name == NULL || d->tmp_path == NULL || d->new_path == NULL) {
		fail_text(d, "4.3.0", "out of memory");
		return;
	}
	maildir_attempt(d);
}

/* The folder (remembered, or made now), then one trip to the I/O
 * thread: the tmp/ file made and written (maildir_write), flushed,
 * moved into new/, and new/ flushed. */
static void maildir_attempt(struct delivery *d)
{
	d->folder = folder_lookup(d->mailbox);
	d->folder_was_cached = d->folder != NULL;
	if (d->folder == NULL && maildir_make_folder(d) == -1)
		return;
	if (d->check_existing) {
		int before = maildir_delivered_before(d);
		if (before == -1)
			return;
		if (before == 1) {
			finish_ok(d, "already delivered");
			return;
		}
	}

	/* The directories to flush: new/ first, then any made for this
	 * delivery. */
	const char *failed = NULL;
	if (open_sync_fds(d, &failed) == -1) {
		if (failed != NULL)
			fail_errno(d, errno, true, "open", failed);
		else
			fail_text(d, "4.3.0", "out of memory");
		return;
	}
	int *after = malloc((1 + d->sync_open) * sizeof *after);
	int rc = -1;
	if (after != NULL) {
		after[0] = d->folder->new_fd;
		for (size_t i = 0; i < d->sync_open; i++)
			after[1 + i] = d->sync_fds[i];
		int unopened = -1; /* maildir_write gives the file */
		d->stage = STAGE_OPEN;
		rc = iothread_prepare_fsync_step(
		    d->io, maildir_write, &unopened, 1, maildir_link, after,
		    1 + d->sync_open, maildir_on_synced, d);
		free(after);
	}
	if (rc == -1) {
		fail_text(d, "4.3.0", "out of memory");
		return;
	}
	d->state = STATE_MAILDIR_SYNC;
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
	fail_errno(d, err, !reading, what, path);
}

static void mbox_on_synced(int error, void *arg)
{
	struct delivery *d = arg;
	close_sync_fds(d);
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
	finish_ok(d, "delivered");
}

static void mbox_busy(struct delivery *d)
{
	if (++d->lock_attempts >= LOCK_ATTEMPTS_MAX) {
		fail_text(d, "4.2.1", "mailbox busy");
		return;
	}
	if (schedule(d, STATE_LOCK_WAIT, LOCK_RETRY_USEC) == -1)
		fail_text(d, "4.3.0", "cannot arm a timer");
}

/* The dot lock: 1 taken, 0 busy, -1 error (errno). */
static int take_dot_lock(struct delivery *d)
{
	for (int tries = 0; tries < NAME_ATTEMPTS; tries++) {
		switch (deliver_dot_lock_try(d->dir_fd, d->lock_name,
					     DOT_LOCK_STALE_SECONDS,
					     &d->lock)) {
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
		    deliver_dot_lock_break(d->dir_fd, d->lock_name, &d->lock)) {
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
		if (line[i] == ' ' || line[i] == '\t')
			line[i] = '_';
	int rc = write_all(fd, line, (size_t)len);
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
		fail_text(d, "4.3.0", "out of memory");
		return -1;
	}
	if (d->base_name[0] == '\0' || strcmp(d->base_name, ".") == 0 ||
	    strcmp(d->base_name, "..") == 0) {
		free(dir);
		fail_errno(d, EISDIR, true, "open", d->mailbox);
		return -1;
	}
	size_t first_created, failed_len;
	const char *what;
	d->dir_fd = walk_directory(dir, d->root_len, true, &first_created,
				   &failed_len, &what);
	if (d->dir_fd == -1) {
		int err = errno;
		dir[failed_len] = '\0';
		fail_errno(d, err, true, what, dir);
		free(dir);
		return -1;
	}
	if (add_created_chain(d, dir, first_created) == -1) {
		free(dir);
		fail_text(d, "4.3.0", "out of memory");
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
	else if (st->st_uid != geteuid())
		rc = asprintf(&reason, "%s is owned by uid %ju, not %ju",
			      d->mailbox, (uintmax_t)st->st_uid,
			      (uintmax_t)geteuid());
	else
		return false;
	if (rc == -1)
		reason = NULL;
	(void)close(d->fd); /* nothing written */
	d->fd = -1;
	mbox_unlock(d);
	finish(d, DELIVER_TEMPFAIL, "4.2.0", reason, "mailbox refused");
	return true;
}

static void mbox_attempt(struct delivery *d)
{
	/* First attempt: the folders, once. */
	if (d->dir_fd == -1 && mbox_open_directory(d) == -1)
		return;

	int locked = take_dot_lock(d);
	if (locked == -1) {
		fail_errno(d, errno, true, "lock", d->lock_path);
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
		       0600);
	if (d->fd == -1 && errno == EEXIST) {
		created = false;
		d->fd = openat(d->dir_fd, d->base_name,
			       O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK |
				   O_NOCTTY | O_CLOEXEC);
	}
	if (d->fd == -1) {
		int err = errno;
		mbox_unlock(d);
		fail_errno(d, err, true, "open", d->mailbox);
		return;
	}
	struct stat st;
	if (fstat(d->fd, &st) == -1) {
		int err = errno;
		mbox_unlock(d);
		fail_errno(d, err, true, "stat", d->mailbox);
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
			fail_errno(d, err, true, "lock", d->mailbox);
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
		fail_errno(d, err, true, "stat", d->mailbox);
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
		int rc = slash == NULL ? add_sync_path(d, ".", 1)
			 : slash == dir
			     ? add_sync_path(d, "/", 1)
			     : add_sync_path(d, dir, (size_t)(slash - dir));
		free(dir);
		if (rc == -1) {
			mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
			return;
		}
	}

	char last = '\n';
	struct copy_error ce = {0};
	if (write_from_line(d, d->fd) == -1 || write_headers(d, d->fd) == -1) {
		ce.err = errno;
	} else if (copy_message(d, d->fd, true, &last, &ce) == 0) {
		/* A message that does not end its last line gets one, then
		 * the blank line that separates messages. */
		const char *tail = last == '\n' ? "\n" : "\n\n";
		if (write_all(d->fd, tail, strlen(tail)) == -1)
			ce.err = errno;
	}
	if (ce.err != 0) {
		mbox_fail(d, ce.err, ce.reading, ce.reading ? "read" : "write",
			  ce.reading ? "the queued message" : d->mailbox);
		return;
	}

	const char *failed = NULL;
	if (open_sync_fds(d, &failed) == -1) {
		if (failed != NULL)
			mbox_fail(d, errno, false, "open", failed);
		else
			mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	/* The file first, then the directories whose entries changed. */
	int *fds = malloc((d->sync_open + 1) * sizeof *fds);
	if (fds == NULL) {
		mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	fds[0] = d->fd;
	if (d->sync_open > 0)
		memcpy(fds + 1, d->sync_fds, d->sync_open * sizeof *fds);
	int rc =
	    iothread_fsync(d->io, fds, d->sync_open + 1, mbox_on_synced, d);
	free(fds);
	if (rc == -1) {
		mbox_fail(d, ENOMEM, true, "copy", d->mailbox);
		return;
	}
	d->state = STATE_MBOX_SYNC;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct delivery *d = arg;
	switch (d->state) {
	case STATE_START:
		if (d->format == MAILBOX_MBOX)
			mbox_attempt(d);
		else
			maildir_begin(d);
		break;
	case STATE_LOCK_WAIT:
		mbox_attempt(d);
		break;
	case STATE_DONE:
		run_callback(d);
		break;
	case STATE_QUEUED:
	case STATE_MAILDIR_SYNC:
	case STATE_MBOX_SYNC:
		break; /* not armed in these states */
	}
}

int deliver_start(struct event_base *base, struct iothread *io,
		  const struct deliver_request *req, deliver_cb cb, void *arg)
{
	struct delivery *d = calloc(1, sizeof *d);
	if (d == NULL)
		return -1;
	d->base = base;
	d->io = io;
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
	d->timer = evtimer_new(base, on_timer, d);
	if (d->mailbox == NULL || d->body_fd == -1 || d->sender == NULL ||
	    d->recipient == NULL || d->unique == NULL || d->hostname == NULL ||
	    d->timer == NULL) {
		delivery_free(d);
		return -1;
	}

	if (d->format != MAILBOX_MBOX) {
		if (schedule(d, STATE_START, 0) == -1) {
			delivery_free(d);
			return -1;
		}
		return 0;
	}

	struct mbox_queue *q = mbox_queues;
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
	    schedule(d, STATE_START, 0) == -1) {
		if (q != NULL)
			free(q->path);
		free(q);
		delivery_free(d);
		return -1;
	}
	q->head = q->tail = d;
	q->next = mbox_queues;
	mbox_queues = q;
	d->queue = q;
	return 0;
}
