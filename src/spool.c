/*
 * The durable queue (see spool.h and docs/spool.md): opening and closing
 * it, queue ids, the table of live logged messages (slots), reading a
 * message's body back, and removing a message. The rest is in files by
 * role, listed in spool_internal.h. Files are written on the loop, into
 * the page cache; every flush of the daemon's spool goes through the
 * iothread (spool_batch.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/spool.h"
#include "facteur/spool_internal.h"
#include "facteur/spool_strings.h"

/* Write all of buf, at `off` (pwrite), or at the file offset when off
 * is -1; EIO for a write that makes no progress. */
int spool_write_out(int fd, const char *buf, size_t len, off_t off)
{
	while (len > 0) {
		ssize_t n =
		    off < 0 ? write(fd, buf, len) : pwrite(fd, buf, len, off);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
		if (off >= 0)
			off += n;
	}
	return 0;
}

int spool_write_full(int fd, const void *buf, size_t len)
{
	return spool_write_out(fd, buf, len, -1);
}

/* close(2) on a descriptor whose data is already flushed or discarded:
 * its error changes nothing, and Linux must not retry it on EINTR. */
void spool_close_fd(int fd)
{
	if (fd >= 0 && close(fd) == -1)
		errno = 0;
}

void spool_file_name(char *buf, const char *id, const char *ext)
{
	/* Callers hold ids checked by spool_id_valid: always 16 + 4 octets. */
	memcpy(buf, id, SPOOL_ID_LEN);
	memcpy(buf + SPOOL_ID_LEN, ext, 5);
}

void spool_unlink_file(const struct spool *spool, const char *id,
		       const char *ext)
{
	char name[SPOOL_ID_LEN + 5];

	spool_file_name(name, id, ext);
	/* A file that is already gone is what we wanted. */
	if (unlinkat(spool->queue_fd, name, 0) == -1)
		errno = 0;
}

static void spool_destroy(struct spool *spool)
{
	if (spool->flush_event != NULL)
		event_free(spool->flush_event);
	spool_close_fd(spool->queue_fd);
	spool_close_fd(spool->log_fd);
	while (spool->oldest != NULL) {
		struct spool_segment *seg = spool->oldest;
		spool->oldest = seg->newer;
		spool_close_fd(seg->fd);
		free(seg);
	}
	if (spool->slots != NULL) {
		for (size_t i = 0; i <= spool->slot_mask; i++)
			while (spool->slots[i] != NULL) {
				spool_envelope_free(spool->slots[i]->env);
				spool_slot_remove(spool, &spool->slots[i]);
			}
		free(spool->slots);
	}
	spool_strings_free(spool->strings);
	free(spool->pending);
	free(spool->dir);
	free(spool);
}

void spool_release(struct spool *spool)
{
	if (--spool->holds == 0 && spool->closing)
		spool_destroy(spool);
}

/*
 * Live logged messages, by id.
 */

static size_t slot_hash(const char *id)
{
	/* ids are time and counter digits: the last ones vary most */
	uint64_t h = 1469598103934665603u;
	for (size_t i = 0; i < SPOOL_ID_LEN; i++)
		h = (h ^ (unsigned char)id[i]) * 1099511628211u;
	return (size_t)h;
}

struct spool_slot **spool_slot_find(struct spool *spool, const char *id)
{
	if (spool->slots == NULL)
		return NULL;
	struct spool_slot **p = &spool->slots[slot_hash(id) & spool->slot_mask];
	while (*p != NULL && memcmp((*p)->id, id, SPOOL_ID_LEN) != 0)
		p = &(*p)->chain;
	return *p != NULL ? p : NULL;
}

struct spool_slot *spool_slot_of(struct spool *spool, const char *id)
{
	if (!spool_id_valid(id, strnlen(id, SPOOL_ID_LEN + 1)))
		return NULL;
	struct spool_slot **p = spool_slot_find(spool, id);
	return p != NULL ? *p : NULL;
}

static int slot_grow(struct spool *spool)
{
	size_t n = spool->slots == NULL ? 1024 : (spool->slot_mask + 1) * 2;
	struct spool_slot **table = calloc(n, sizeof *table);
	if (table == NULL)
		return -1;
	if (spool->slots != NULL) {
		for (size_t i = 0; i <= spool->slot_mask; i++) {
			struct spool_slot *sl = spool->slots[i];
			while (sl != NULL) {
				struct spool_slot *next = sl->chain;
				size_t b = slot_hash(sl->id) & (n - 1);
				sl->chain = table[b];
				table[b] = sl;
				sl = next;
			}
		}
		free(spool->slots);
	}
	spool->slots = table;
	spool->slot_mask = n - 1;
	return 0;
}

/* A new slot for id (not present yet), or NULL without memory. */
struct spool_slot *spool_slot_add(struct spool *spool, const char *id)
{
	if ((spool->slots == NULL || spool->slot_count > spool->slot_mask) &&
	    slot_grow(spool) == -1)
		return NULL;
	struct spool_slot *sl = calloc(1, sizeof *sl);
	if (sl == NULL)
		return NULL;
	memcpy(sl->id, id, SPOOL_ID_LEN);
	size_t b = slot_hash(id) & spool->slot_mask;
	sl->chain = spool->slots[b];
	spool->slots[b] = sl;
	spool->slot_count++;
	return sl;
}

void spool_slot_remove(struct spool *spool, struct spool_slot **p)
{
	struct spool_slot *sl = *p;
	*p = sl->chain;
	spool->slot_count--;
	free(sl);
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	if (fsync(fd) == -1) {
		int saved = errno;
		spool_close_fd(fd);
		errno = saved;
		return -1;
	}
	spool_close_fd(fd);
	return 0;
}

/* Flush the directory holding `path` (which has no trailing '/'). */
static int fsync_parent(char *path)
{
	char *slash = strrchr(path, '/');

	if (slash == NULL)
		return fsync_dir(".");
	if (slash == path)
		return fsync_dir("/");
	*slash = '\0';
	int rc = fsync_dir(path);
	int err = errno;
	*slash = '/';
	errno = err;
	return rc;
}

/* mkdir -p with mode 0700. Each directory made is flushed into its
 * parent, so that a new queue/ survives a crash. */
static int make_dirs(char *path)
{
	size_t len = strlen(path);

	for (size_t i = 1; i <= len; i++) {
		if ((i < len && path[i] != '/') || path[i - 1] == '/')
			continue; /* inside a name, or "a//b", or a final '/' */
		char saved = path[i];
		path[i] = '\0';
		int rc = mkdir(path, 0700);
		if (rc == 0) {
			rc = fsync_parent(path);
		} else if (errno == EEXIST) {
			rc = 0;
		}
		int err = errno;
		path[i] = saved;
		if (rc == -1) {
			errno = err;
			return -1;
		}
	}
	return 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	spool_batch_flush(arg);
}

static struct spool *open_spool(struct event_base *base, struct iothread *io,
				const char *dir, bool logged, char *err,
				size_t errlen)
{
	struct spool *spool = calloc(1, sizeof *spool);
	char *queue = NULL, *log = NULL;

	if (spool == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		return NULL;
	}
	spool->base = base;
	spool->io = io;
	spool->queue_fd = -1;
	spool->log_fd = -1;
	spool->logged = logged;
	spool->batch_tail = &spool->batch_head;
	spool->dir = strdup(dir);
	if (spool->dir == NULL || asprintf(&queue, "%s/queue", dir) == -1 ||
	    asprintf(&log, "%s/log", dir) == -1) {
		snprintf(err, errlen, "spool: out of memory");
		goto fail;
	}
	if (make_dirs(queue) == -1) {
		snprintf(err, errlen, "spool: cannot create %s: %s", queue,
			 strerror(errno));
		goto fail;
	}
	if (logged && make_dirs(log) == -1) {
		snprintf(err, errlen, "spool: cannot create %s: %s", log,
			 strerror(errno));
		goto fail;
	}
	spool->queue_fd = open(queue, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (spool->queue_fd == -1) {
		snprintf(err, errlen, "spool: cannot open %s: %s", queue,
			 strerror(errno));
		goto fail;
	}
	if (logged && (spool->strings = spool_strings_new()) == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		goto fail;
	}
	if (logged) {
		spool->log_fd = open(log, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (spool->log_fd == -1) {
			snprintf(err, errlen, "spool: cannot open %s: %s", log,
				 strerror(errno));
			goto fail;
		}
	}
	/* A drop spool without a loop commits only with spool_drop_commit. */
	if (base != NULL)
		spool->flush_event = event_new(base, -1, 0, on_flush, spool);
	if (base != NULL && spool->flush_event == NULL) {
		snprintf(err, errlen, "spool: cannot create an event");
		goto fail;
	}
	free(queue);
	free(log);
	return spool;
fail:
	free(queue);
	free(log);
	spool_destroy(spool);
	return NULL;
}

struct spool *spool_open(struct event_base *base, struct iothread *io,
			 const char *dir, char *err, size_t errlen)
{
	return open_spool(base, io, dir, true, err, errlen);
}

struct spool *spool_open_drop(struct event_base *base, struct iothread *io,
			      const char *dir, char *err, size_t errlen)
{
	return open_spool(base, io, dir, false, err, errlen);
}

void spool_close(struct spool *spool)
{
	if (spool == NULL || spool->closing)
		return;
	spool->closing = true;
	if (spool->flush_event != NULL)
		event_free(spool->flush_event);
	spool->flush_event = NULL;
	/* A batch still collecting goes to the iothread now; the spool
	 * lives on until every batch handed over has completed. */
	spool->holds++;
	spool_batch_flush(spool);
	spool_release(spool);
}

struct spool_strings *spool_strings_table(struct spool *spool)
{
	return spool->strings;
}

const char *spool_dir(const struct spool *spool)
{
	return spool->dir;
}

char *spool_msg_path(const struct spool *spool, const char *id, char *buf,
		     size_t len)
{
	int n = snprintf(buf, len, "%s/queue/%s.msg", spool->dir, id);
	/* A cut path would name another file: give none instead. */
	if ((n < 0 || (size_t)n >= len) && len > 0)
		buf[0] = '\0';
	return buf;
}

int spool_body_open(struct spool *spool, const struct spool_envelope *env,
		    struct spool_body *body)
{
	struct spool_slot *sl =
	    spool->logged ? spool_slot_of(spool, env->id) : NULL;
	char path[PATH_MAX];
	struct stat st;

	if (sl != NULL && !sl->file) {
		body->fd = fcntl(sl->seg->fd, F_DUPFD_CLOEXEC, 0);
		if (body->fd == -1)
			return -1;
		body->offset = sl->body_off;
		body->length = sl->body_len;
		return 0;
	}
	spool_msg_path(spool, env->id, path, sizeof path);
	if (path[0] == '\0') {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		int err = errno ? errno : EINVAL;
		spool_close_fd(fd);
		errno = err;
		return -1;
	}
	body->fd = fd;
	body->offset = 0;
	body->length = sl != NULL ? sl->body_len : (uint64_t)st.st_size;
	return 0;
}

/*
 * 64 bits: seconds (32), microseconds (20), and a per-process counter
 * (12). Each id is forced above the last one, so ids are unique within
 * the process even if the clock steps back, and sort in arrival order.
 */
void spool_new_id(struct spool *spool, char *buf)
{
	struct timespec ts;
	uint64_t id = 0;

	if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
		id = ((uint64_t)ts.tv_sec & 0xffffffffu) << 32 |
		     ((uint64_t)ts.tv_nsec / 1000 & 0xfffffu) << 12 |
		     (spool->counter++ & 0x7ffu) |
		     /* the daemon's ids and facteur-sendmail's never meet */
		     (spool->logged ? 0x800u : 0);
	if (id <= spool->last_id)
		id = spool->last_id + 1;
	/* the +1 may have carried into the tag bit: the next id above
	 * with the right one */
	uint64_t tag = spool->logged ? 0x800u : 0;
	if ((id & 0x800u) != tag)
		id = tag ? id | 0x800u : (id | 0xfffu) + 1;
	spool->last_id = id;
	snprintf(buf, SPOOL_ID_LEN + 1, "%016" PRIX64, id);
}

void spool_remove(struct spool *spool, const char *id)
{
	if (!spool_id_valid(id, strnlen(id, SPOOL_ID_LEN + 1)))
		return;
	struct spool_slot **p =
	    spool->logged ? spool_slot_find(spool, id) : NULL;
	if (p != NULL) {
		/* Its last records are flushed (the caller waited for
		 * them): the log says it is done, whatever comes. */
		struct spool_slot *sl = *p;
		if (sl->seg != NULL)
			sl->seg->live--;
		spool->live_bytes -= sl->log_bytes;
		if (sl->file)
			spool_unlink_file(spool, id, ".msg");
		spool_slot_remove(spool, p);
		spool_reap(spool);
		return;
	}
	/* Envelope first: a message file alone is never recovered. */
	spool_unlink_file(spool, id, ".env");
	spool_unlink_file(spool, id, ".msg");
}

void spool_delete(struct spool *spool, const char *id)
{
	static const char tombstone[] = "flags 2\n";
	char *record = strdup(tombstone);

	_Static_assert(SPOOL_FLAG_DELETED == 2, "the tombstone's flags");
	if (spool->logged && spool_slot_of(spool, id) != NULL)
		spool_batch_record(spool, id, record, sizeof tombstone - 1,
				   NULL, NULL);
	else
		free(record);
	spool_remove(spool, id);
}
