/*
 * Recovery at start-up, before the loop runs: blocking I/O is fine here.
 * The order: replay every log segment, oldest first (a torn tail is cut
 * off); then read queue/, where a message of the file form is imported
 * into the log unless the log has it already, and leftovers are removed;
 * then drop what is done, hand the live messages over in arrival order,
 * and delete the dead segments at the old end of the log.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/spool.h"
#include "facteur/spool_internal.h"
#include "facteur/spool_log.h"
#include "facteur/wholefile.h"

enum entry_kind {
	ENTRY_ENV,
	ENTRY_MSG,
};

struct entry {
	char id[SPOOL_ID_LEN + 1];
	enum entry_kind kind;
};

static int compare_entries(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->id, y->id);
	return c != 0 ? c : (int)x->kind - (int)y->kind;
}

/*
 * Take a message of the file form (facteur-sendmail's, or an older
 * spool's) into the log: an F record with its state, its <id>.msg kept as
 * the body, its <id>.env removed once the record is flushed. Until then
 * a crash leaves both, and recovery prefers the log.
 */
static int import(struct spool *spool, const struct spool_envelope *env,
		  uint64_t wire)
{
	struct spool_slot *sl = spool_slot_add(spool, env->id);
	if (sl == NULL)
		return -1;
	sl->file = true;
	sl->body_len = wire;
	/* A flush that fails later leaves <id>.env, and the next start
	 * imports it again. */
	if (spool_batch_relog(spool, env, sl, SPOOL_REQ_IMPORT, NULL, NULL) ==
	    -1) {
		spool_slot_remove(spool, spool_slot_find(spool, env->id));
		return -1;
	}
	return 0;
}

/* One message with both files: remove it, or hand it to `found`. */
static void recover_message(struct spool *spool, const char *id,
			    spool_found_cb found, void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	char name[SPOOL_ID_LEN + 5];
	struct spool_envelope *env = NULL;
	char *text = NULL;
	size_t len, valid_len;
	uint64_t wire_size = 0;
	bool has_wire = false;
	struct stat st;

	if (spool->logged && spool_slot_of(spool, id) != NULL) {
		/* imported before: the log has it, with newer records */
		spool_unlink_file(spool, id, ".env");
		return;
	}
	spool_file_name(name, id, ".env");
	int fd = openat(spool->queue_fd, name, O_RDWR | O_CLOEXEC);
	if (fd == -1 ||
	    wholefile_read_fd(fd, SIZE_MAX, 0, &text, &len) != WHOLEFILE_OK)
		goto unreadable;
	env = calloc(1, sizeof *env);
	if (env == NULL)
		goto unreadable;
	switch (spool_envelope_parse_wire(text, len, env, &valid_len,
					  &wire_size, &has_wire)) {
	case SPOOL_PARSE_OK:
		break;
	case SPOOL_PARSE_NOMEM:
		goto unreadable;
	case SPOOL_PARSE_BAD:
		/* Cut or garbage: its commit never completed. */
		rec->uncommitted++;
		goto remove;
	}

	spool_file_name(name, id, ".msg");
	if (fstatat(spool->queue_fd, name, &st, AT_SYMLINK_NOFOLLOW) == -1) {
		if (errno != ENOENT)
			goto unreadable;
		rec->orphaned++;
		goto remove;
	}
	if (has_wire && (uint64_t)st.st_size != wire_size) {
		/* The envelope reached the disk, the message did not: the
		 * flush never finished, so nobody was told 250. */
		rec->uncommitted++;
		goto remove;
	}
	/* The file name is what the records will be appended to. */
	memcpy(env->id, id, sizeof env->id);
	if (spool_envelope_done(env)) {
		rec->done++;
		goto remove;
	}
	if (spool->logged) {
		spool_close_fd(fd);
		free(text);
		if (import(spool, env, (uint64_t)st.st_size) == -1) {
			/* left as it is: the next start tries again */
			rec->unreadable++;
			spool_envelope_free(env);
			return;
		}
		rec->live++;
		if (found != NULL)
			found(env, arg);
		else
			spool_envelope_free(env);
		return;
	}
	if (valid_len < len) {
		if (ftruncate(fd, (off_t)valid_len) == 0 && fsync(fd) == 0)
			rec->truncated++;
		else
			rec->truncate_failed++;
	}
	spool_close_fd(fd);
	free(text);
	rec->live++;
	if (found != NULL)
		found(env, arg);
	else
		spool_envelope_free(env);
	return;

remove:
	spool_unlink_file(spool, id, ".env");
	spool_unlink_file(spool, id, ".msg");
	spool_close_fd(fd);
	free(text);
	spool_envelope_free(env);
	return;

unreadable:
	/* Never delete what could not be read: next start tries again. */
	rec->unreadable++;
	spool_close_fd(fd);
	free(text);
	spool_envelope_free(env);
}

struct spool_envelope *spool_load(struct spool *spool, const char *id)
{
	char name[SPOOL_ID_LEN + 5];
	struct spool_envelope *env = NULL;
	char *text = NULL;
	size_t len, valid_len;
	uint64_t wire_size = 0;
	bool has_wire = false;
	struct stat st;

	if (!spool_id_valid(id, strlen(id))) {
		errno = ENOENT;
		return NULL;
	}
	spool_file_name(name, id, ".env");
	int fd = openat(spool->queue_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return NULL;
	enum wholefile_status rc =
	    wholefile_read_fd(fd, SIZE_MAX, 0, &text, &len);
	spool_close_fd(fd);
	if (rc != WHOLEFILE_OK)
		return NULL;
	env = calloc(1, sizeof *env);
	if (env == NULL ||
	    spool_envelope_parse_wire(text, len, env, &valid_len, &wire_size,
				      &has_wire) != SPOOL_PARSE_OK) {
		free(text);
		spool_envelope_free(env);
		errno = EINVAL;
		return NULL;
	}
	free(text);
	spool_file_name(name, id, ".msg");
	if (fstatat(spool->queue_fd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
	    (has_wire && (uint64_t)st.st_size != wire_size)) {
		spool_envelope_free(env);
		errno = ENOENT;
		return NULL;
	}
	memcpy(env->id, id, sizeof env->id);
	if (spool->logged) {
		if (spool_slot_of(spool, id) != NULL) {
			spool_envelope_free(env);
			errno = EEXIST;
			return NULL;
		}
		if (import(spool, env, (uint64_t)st.st_size) == -1) {
			spool_envelope_free(env);
			errno = ENOMEM;
			return NULL;
		}
	}
	return env;
}

static int push(void **array, size_t *count, size_t *cap, size_t size,
		const void *item);

/* Read one segment and apply its records to the slots. */
static int recover_segment(struct spool *spool, struct spool_segment *seg)
{
	struct spool_recovery *rec = &spool->recovery;
	char *buf = NULL;
	size_t len = 0, pos = SPOOL_LOG_MAGIC_LEN;
	struct spool_log_record r;

	if (wholefile_read_fd(seg->fd, SIZE_MAX, 0, &buf, &len) != WHOLEFILE_OK)
		return -1;
	if (len < SPOOL_LOG_MAGIC_LEN ||
	    memcmp(buf, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN) != 0)
		pos = 0; /* made, and the crash came before its first write */
	while (pos > 0 && spool_log_next(buf, len, pos, &r) == 1) {
		uint64_t rec_bytes = r.end - pos;
		const char *text = buf + r.text_off;
		struct spool_slot **p = spool_slot_find(spool, r.id);
		struct spool_slot *sl = p != NULL ? *p : NULL;

		if (r.kind == SPOOL_LOG_RECORDS) {
			if (sl != NULL && sl->env != NULL &&
			    spool_records_apply(sl->env, text, r.text_len) ==
				SPOOL_PARSE_NOMEM)
				goto nomem;
			pos = r.end;
			continue;
		}
		struct spool_envelope *env = calloc(1, sizeof *env);
		uint64_t wire = 0;
		bool has_wire = false;
		size_t valid;
		if (env == NULL)
			goto nomem;
		enum spool_parse_status st = spool_envelope_parse_wire(
		    text, r.text_len, env, &valid, &wire, &has_wire);
		if (st == SPOOL_PARSE_NOMEM) {
			free(env);
			goto nomem;
		}
		if (st != SPOOL_PARSE_OK || !has_wire ||
		    (r.kind == SPOOL_LOG_MESSAGE && wire != r.body_len)) {
			spool_envelope_free(env);
			break; /* checksummed, yet not ours: stop here */
		}
		memcpy(env->id, r.id, sizeof env->id);
		/* Packed at once: every live envelope is held until the
		 * replay ends, and only one form of each should be. Out of
		 * memory for it, the plain one serves. */
		struct spool_envelope *packed =
		    spool_envelope_pack(env, spool->strings);
		if (packed != NULL)
			env = packed;
		if (sl == NULL && (sl = spool_slot_add(spool, r.id)) == NULL) {
			spool_envelope_free(env);
			goto nomem;
		}
		if (sl->seg != NULL)
			sl->seg->live--;
		spool->live_bytes += rec_bytes - sl->log_bytes;
		sl->log_bytes = rec_bytes;
		spool_envelope_free(sl->env);
		sl->env = env;
		sl->seg = seg;
		sl->seg->live++;
		sl->file = r.kind == SPOOL_LOG_FILE_MESSAGE;
		sl->body_off = sl->file ? 0 : r.body_off;
		sl->body_len = wire;
		pos = r.end;
	}
	seg->size = pos;
	spool->log_bytes += pos;
	if (pos < len) {
		/* a torn last batch: never acknowledged; cut it so that
		 * nothing ever follows it */
		if (ftruncate(seg->fd, (off_t)pos) == 0 && fsync(seg->fd) == 0)
			rec->truncated++;
		else
			rec->truncate_failed++;
	}
	free(buf);
	return 0;
nomem:
	free(buf);
	errno = ENOMEM;
	return -1;
}

static int compare_seq(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* A directory stream on dirfd's directory (dirfd itself stays open). */
static DIR *open_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return NULL;
	DIR *d = fdopendir(fd);
	if (d == NULL)
		spool_close_fd(fd);
	return d;
}

/* The next entry: 1 and *de, 0 at the end, -1 on a read error. */
static int next_entry(DIR *d, struct dirent **de)
{
	errno = 0;
	*de = readdir(d);
	if (*de != NULL)
		return 1;
	return errno != 0 ? -1 : 0;
}

/* Open every segment of log/, oldest first, and replay it. */
static int recover_log(struct spool *spool)
{
	uint64_t *seqs = NULL;
	size_t n = 0, cap = 0;
	int rc = -1, more;
	struct dirent *de;
	DIR *d = open_dir(spool->log_fd);
	if (d == NULL)
		return -1;
	while ((more = next_entry(d, &de)) == 1) {
		uint64_t seq = 0;
		size_t len = strlen(de->d_name);
		if (len != 20 || strcmp(de->d_name + 16, ".seg") != 0 ||
		    !spool_id_valid(de->d_name, 16))
			continue; /* not ours: left alone */
		seq = spool_id_value(de->d_name);
		if (push((void **)&seqs, &n, &cap, sizeof seq, &seq) == -1)
			goto out;
	}
	if (more == -1)
		goto out;
	if (n > 0)
		qsort(seqs, n, sizeof *seqs, compare_seq);
	for (size_t i = 0; i < n; i++) {
		char name[32];
		struct spool_segment *seg = calloc(1, sizeof *seg);
		if (seg == NULL)
			goto out;
		seg->seq = seqs[i];
		spool_segment_name(name, sizeof name, seg->seq);
		seg->fd = openat(spool->log_fd, name, O_RDWR | O_CLOEXEC);
		if (seg->fd == -1) {
			free(seg);
			goto out;
		}
		if (spool->newest != NULL)
			spool->newest->newer = seg;
		else
			spool->oldest = seg;
		spool->newest = seg;
		spool->next_seq = seg->seq + 1;
		if (recover_segment(spool, seg) == -1)
			goto out;
	}
	rc = 0;
out:
	if (closedir(d) == -1)
		errno = 0;
	free(seqs);
	return rc;
}

static int compare_slots(const void *a, const void *b)
{
	const struct spool_slot *x = *(struct spool_slot *const *)a;
	const struct spool_slot *y = *(struct spool_slot *const *)b;
	return memcmp(x->id, y->id, SPOOL_ID_LEN);
}

/* After the log and the queue directory are read: drop what is done,
 * hand the rest over in arrival order. */
static int recover_hand_over(struct spool *spool, spool_found_cb found,
			     void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	struct spool_slot **live = NULL;
	size_t n = 0, cap = 0;

	for (size_t b = 0; spool->slots != NULL && b <= spool->slot_mask; b++) {
		struct spool_slot **p = &spool->slots[b];
		while (*p != NULL) {
			struct spool_slot *sl = *p;
			struct stat st;
			char name[SPOOL_ID_LEN + 5];
			if (sl->env == NULL) { /* imported from files */
				p = &sl->chain;
				continue;
			}
			bool done = spool_envelope_done(sl->env);
			bool missing = false;
			if (!done && sl->file) {
				spool_file_name(name, sl->id, ".msg");
				missing = fstatat(spool->queue_fd, name, &st,
						  AT_SYMLINK_NOFOLLOW) == -1 ||
					  (uint64_t)st.st_size != sl->body_len;
			}
			if (done || missing) {
				if (done)
					rec->done++;
				else
					rec->orphaned++;
				if (sl->file)
					spool_unlink_file(spool, sl->id,
							  ".msg");
				sl->seg->live--;
				spool->live_bytes -= sl->log_bytes;
				spool_envelope_free(sl->env);
				spool_slot_remove(spool, p);
				continue;
			}
			if (push((void **)&live, &n, &cap, sizeof sl, &sl) ==
			    -1) {
				free(live);
				return -1;
			}
			p = &sl->chain;
		}
	}
	if (n > 0)
		qsort(live, n, sizeof *live, compare_slots);
	for (size_t i = 0; i < n; i++) {
		struct spool_envelope *env = live[i]->env;
		live[i]->env = NULL;
		rec->live++;
		if (found != NULL)
			found(env, arg);
		else
			spool_envelope_free(env);
	}
	free(live);
	/* Dead segments at the old end go now, in order. */
	while (spool->oldest != NULL && spool->oldest->live == 0 &&
	       spool->oldest != spool->active)
		if (spool_segment_drop_oldest(spool) == -1 ||
		    fsync(spool->log_fd) == -1)
			break;
	return 0;
}

/* Ids handed out from now on sort after every one in the spool. */
static void raise_last_id(struct spool *spool, const char *id)
{
	uint64_t v = spool_id_value(id);
	if (v > spool->last_id)
		spool->last_id = v;
}

/* Classify a directory entry: an id-named .env or .msg file, something
 * to skip (a directory), or a leftover to remove. */
static int entry_kind_of(const struct spool *spool, const struct dirent *de,
			 struct entry *entry)
{
	size_t n = strlen(de->d_name);
	unsigned char type = de->d_type;

	if (type == DT_UNKNOWN) {
		struct stat st;
		if (fstatat(spool->queue_fd, de->d_name, &st,
			    AT_SYMLINK_NOFOLLOW) == -1)
			return -1;
		type = S_ISDIR(st.st_mode)   ? DT_DIR
		       : S_ISREG(st.st_mode) ? DT_REG
					     : DT_UNKNOWN;
	}
	if (type == DT_DIR)
		return -1;
	if (type == DT_REG && n == SPOOL_ID_LEN + 4 &&
	    spool_id_valid(de->d_name, SPOOL_ID_LEN)) {
		const char *ext = de->d_name + SPOOL_ID_LEN;
		if (strcmp(ext, ".env") == 0 || strcmp(ext, ".msg") == 0) {
			memcpy(entry->id, de->d_name, SPOOL_ID_LEN);
			entry->id[SPOOL_ID_LEN] = '\0';
			entry->kind =
			    strcmp(ext, ".env") == 0 ? ENTRY_ENV : ENTRY_MSG;
			return 0;
		}
	}
	return 1;
}

static int push(void **array, size_t *count, size_t *cap, size_t size,
		const void *item)
{
	if (*count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		if (ncap > SIZE_MAX / size)
			return -1;
		void *p = realloc(*array, ncap * size);
		if (p == NULL)
			return -1;
		*array = p;
		*cap = ncap;
	}
	memcpy((char *)*array + *count * size, item, size);
	(*count)++;
	return 0;
}

long spool_recover(struct spool *spool, spool_found_cb found, void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	struct entry *entries = NULL;
	char **others = NULL;
	size_t nentries = 0, entries_cap = 0, nothers = 0, others_cap = 0;
	long result = -1;

	memset(rec, 0, sizeof *rec);
	if (spool->logged && recover_log(spool) == -1)
		return -1;
	/* Read the whole directory before changing it. */
	struct dirent *de;
	int more;
	DIR *d = open_dir(spool->queue_fd);
	if (d == NULL)
		return -1;
	while ((more = next_entry(d, &de)) == 1) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		struct entry entry;
		int kind = entry_kind_of(spool, de, &entry);
		if (kind == 0) {
			if (push((void **)&entries, &nentries, &entries_cap,
				 sizeof entry, &entry) == -1)
				goto out;
		} else if (kind == 1) {
			char *name = strdup(de->d_name);
			if (name == NULL ||
			    push((void **)&others, &nothers, &others_cap,
				 sizeof name, &name) == -1) {
				free(name);
				goto out;
			}
		}
	}
	if (more == -1)
		goto out;

	for (size_t i = 0; i < nothers; i++) {
		if (unlinkat(spool->queue_fd, others[i], 0) == 0)
			rec->other++;
	}
	/* In id order, that is in arrival order. */
	if (nentries > 0)
		qsort(entries, nentries, sizeof *entries, compare_entries);
	for (size_t i = 0; i < nentries;) {
		const char *id = entries[i].id;
		bool has_env = false, has_msg = false;
		size_t j = i;
		for (; j < nentries && strcmp(entries[j].id, id) == 0; j++) {
			if (entries[j].kind == ENTRY_ENV)
				has_env = true;
			else
				has_msg = true;
		}
		raise_last_id(spool, id);
		if (has_env && has_msg) {
			recover_message(spool, id, found, arg);
		} else if (has_msg && spool->logged &&
			   spool_slot_of(spool, id) != NULL &&
			   spool_slot_of(spool, id)->file) {
			/* the body of a logged message */
		} else if (has_msg) {
			/* Received but never committed. */
			spool_unlink_file(spool, id, ".msg");
			rec->uncommitted++;
		} else {
			spool_unlink_file(spool, id, ".env");
			rec->orphaned++;
		}
		i = j;
	}
	if (spool->logged) {
		for (size_t b = 0;
		     spool->slots != NULL && b <= spool->slot_mask; b++)
			for (struct spool_slot *sl = spool->slots[b];
			     sl != NULL; sl = sl->chain)
				raise_last_id(spool, sl->id);
		if (recover_hand_over(spool, found, arg) == -1)
			goto out;
	}
	result = (long)rec->live;
out:
	if (closedir(d) == -1)
		errno = 0;
	for (size_t i = 0; i < nothers; i++)
		free(others[i]);
	free(others);
	free(entries);
	return result;
}

const struct spool_recovery *spool_last_recovery(const struct spool *spool)
{
	return &spool->recovery;
}
