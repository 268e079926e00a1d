/*
 * A POP3 maildrop read off the loop (see pop3_maildrop.h): the Maildir
 * opened by the rule local delivery writes by, new/ moved into cur/, and
 * cur/ listed with each message's size and UID.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"
#include "facteur/pop3_maildrop.h"
#include "facteur/pop3_proto.h"

#define SCAN_CHUNK 65536

void pop3_maildrop_init(struct pop3_maildrop *md)
{
	memset(md, 0, sizeof *md);
	md->cur_fd = -1;
}

void pop3_messages_free(struct pop3_message *messages, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(messages[i].name);
	free(messages);
}

void pop3_maildrop_clear(struct pop3_maildrop *md)
{
	free(md->mailbox);
	if (md->cur_fd != -1)
		(void)close(md->cur_fd); /* a directory: nothing to lose */
	free(md->failed_path);
	free(md->skipped);
	pop3_messages_free(md->messages, md->count);
	pop3_maildrop_init(md);
}

static int compare_messages(const void *a, const void *b)
{
	const struct pop3_message *x = a, *y = b;
	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return strcmp(x->name, y->name);
}

int pop3_maildrop_open_message(int dirfd, const char *name)
{
	int fd =
	    openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1)
		return -1;
	struct stat st;
	int err = 0;
	if (fstat(fd, &st) == -1)
		err = errno;
	else if (!S_ISREG(st.st_mode))
		err = EINVAL;
	if (err != 0) {
		(void)close(fd); /* read-only: nothing to lose */
		errno = err;
		return -1;
	}
	return fd;
}

const char *pop3_maildrop_error(int err)
{
	if (err == ELOOP)
		return "symbolic link not followed";
	if (err == EINVAL)
		return "not a regular file";
	return strerror(err);
}

/* The size STAT and LIST give: the file read once, counting bare LFs. */
static int measure_file(int dirfd, const char *name, char *buf, uint64_t *size)
{
	int fd = pop3_maildrop_open_message(dirfd, name);
	if (fd == -1)
		return -1;
	struct pop3_measure m = {0};
	for (;;) {
		ssize_t r = read(fd, buf, SCAN_CHUNK);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			int err = errno;
			(void)close(fd); /* read-only: nothing to lose */
			errno = err;
			return -1;
		}
		if (r == 0)
			break;
		pop3_measure_feed(&m, buf, (size_t)r);
	}
	(void)close(fd); /* read-only: nothing to lose */
	*size = pop3_measure_finish(&m);
	return 0;
}

/* A link, FIFO, device or folder where a message belongs: not listed,
 * moved or deleted. Counted here and logged from the loop, since the
 * scan runs on a worker. */
static int skip_entry(struct pop3_maildrop *md, const char *folder,
		      const char *name)
{
	if (md->skipped_count++ == 0 &&
	    asprintf(&md->skipped, "%s/%s", folder, name) == -1) {
		md->skipped = NULL;
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

/* A listing of the folder `dirfd`, which stays open for the *at calls:
 * the stream gets a descriptor of its own. */
static DIR *open_listing(int dirfd)
{
	int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	if (fd == -1)
		return NULL;
	DIR *dir = fdopendir(fd);
	if (dir == NULL) {
		int err = errno;
		(void)close(fd); /* a directory: nothing to lose */
		errno = err;
	}
	return dir;
}

/* What a folder walk does with one regular file of it; 0, or -1 with
 * errno to stop the walk. */
typedef int (*folder_entry_fn)(struct pop3_maildrop *md, int dirfd,
			       const char *name, const struct stat *st,
			       void *arg);

/* Call `each` on every regular file of the folder `dirfd` (`folder` in
 * what a skipped entry reports), seen without following a link; names
 * starting with '.' are not messages, an entry gone meanwhile (another
 * reader moved it) is passed over, anything else is skipped and
 * counted. 0, or -1 with errno. */
static int walk_folder(struct pop3_maildrop *md, int dirfd, const char *folder,
		       folder_entry_fn each, void *arg)
{
	DIR *dir = open_listing(dirfd);
	if (dir == NULL)
		return -1;
	int rc = -1;
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(dir);
		if (e == NULL) {
			if (errno != 0)
				goto out;
			break;
		}
		if (e->d_name[0] == '.')
			continue;
		struct stat st;
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1) {
			if (errno == ENOENT)
				continue;
			goto out;
		}
		if (!S_ISREG(st.st_mode)) {
			if (skip_entry(md, folder, e->d_name) == -1)
				goto out;
			continue;
		}
		if (each(md, dirfd, e->d_name, &st, arg) == -1)
			goto out;
	}
	rc = 0;
out:;
	int err = errno;
	(void)closedir(dir); /* a directory: nothing to lose */
	errno = err;
	return rc;
}

/* A file of new/ goes to cur/ with the Maildir info ":2,"; its name
 * before the ':' (the UID) does not change. */
static int move_to_cur(struct pop3_maildrop *md, int newfd, const char *name,
		       const struct stat *st, void *arg)
{
	(void)st;
	(void)arg;
	char *target = NULL;
	int n = strchr(name, ':') != NULL ? asprintf(&target, "%s", name)
					  : asprintf(&target, "%s:2,", name);
	if (n == -1) {
		errno = ENOMEM;
		return -1;
	}
	/* A link swapped in since the fstatat moves as a link, and cur/'s
	 * listing and every open refuse it. */
	int moved = renameat(newfd, name, md->cur_fd, target);
	int err = errno;
	free(target);
	/* ENOENT: another reader moved it first; it is in cur/. */
	if (moved == -1 && err != ENOENT) {
		errno = err;
		return -1;
	}
	return 0;
}

static int add_message(struct pop3_maildrop *md, const char *name,
		       const struct stat *st, uint64_t size)
{
	if (md->count == md->cap) {
		size_t ncap = md->cap ? 2 * md->cap : 16;
		struct pop3_message *m =
		    realloc(md->messages, ncap * sizeof *m);
		if (m == NULL)
			return -1;
		md->messages = m;
		md->cap = ncap;
	}
	struct pop3_message *m = &md->messages[md->count];
	memset(m, 0, sizeof *m);
	m->name = strdup(name);
	if (m->name == NULL)
		return -1;
	pop3_uid_from_name(name, strlen(name), m->uid);
	m->size = size;
	m->mtime = st->st_mtim;
	md->count++;
	return 0;
}

/* One file of cur/ into md->messages. A file whose name gives its
 * size (",W=") is not read; any other is read once (into `arg`, a
 * SCAN_CHUNK buffer) to size it. */
static int list_one(struct pop3_maildrop *md, int curfd, const char *name,
		    const struct stat *st, void *arg)
{
	uint64_t size;
	if (!pop3_size_from_name(name, strlen(name), &size) &&
	    measure_file(curfd, name, arg, &size) == -1) {
		if (errno == ENOENT)
			return 0;
		/* replaced by a link or a FIFO since the fstatat */
		if (errno != ELOOP && errno != EINVAL)
			return -1;
		return skip_entry(md, "cur", name);
	}
	if (add_message(md, name, st, size) == -1) {
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

/* List cur/ into md->messages, oldest first. */
static int list_cur(struct pop3_maildrop *md)
{
	char *buf = malloc(SCAN_CHUNK);
	if (buf == NULL) {
		errno = ENOMEM;
		return -1;
	}
	int rc = walk_folder(md, md->cur_fd, "cur", list_one, buf);
	int err = errno;
	free(buf);
	errno = err;
	if (rc == 0 && md->count > 1)
		qsort(md->messages, md->count, sizeof *md->messages,
		      compare_messages);
	return rc;
}

/* The folder as local delivery opens it (mailfolder_open), then new/
 * and cur/ without following a link. */
int pop3_maildrop_scan(struct pop3_maildrop *md)
{
	size_t failed_len;
	int folder =
	    mailfolder_open(md->mailbox, md->root_len, false, &failed_len);
	if (folder == -1) {
		int err = errno;
		if (err == ENOENT)
			return 0;
		md->failed_path = strndup(md->mailbox, failed_len);
		errno = err;
		return -1;
	}
	int rc = -1;
	const char *step = "new";
	int newfd = mailfolder_open_directory_at(folder, "new", O_RDONLY);
	if (newfd == -1 && errno != ENOENT)
		goto out;
	step = "cur";
	md->cur_fd = mailfolder_open_directory_at(folder, "cur", O_RDONLY);
	if (md->cur_fd == -1 && errno == ENOENT && newfd != -1) {
		/* mail in new/ and no cur/ yet: make it, as readers do */
		if (mkdirat(folder, "cur", mailowner_dir_mode()) == -1 &&
		    errno != EEXIST)
			goto out;
		md->cur_fd =
		    mailfolder_open_directory_at(folder, "cur", O_RDONLY);
	}
	if (md->cur_fd == -1 && errno != ENOENT)
		goto out;
	step = "new";
	if (newfd != -1 && md->cur_fd != -1 &&
	    walk_folder(md, newfd, "new", move_to_cur, NULL) == -1)
		goto out;
	step = "cur";
	if (md->cur_fd != -1 && list_cur(md) == -1)
		goto out;
	rc = 0;
out:;
	int err = errno;
	if (rc == -1 &&
	    asprintf(&md->failed_path, "%s/%s", md->mailbox, step) == -1)
		md->failed_path = NULL;
	if (newfd != -1)
		(void)close(newfd); /* a directory: nothing to lose */
	(void)close(folder);	    /* an O_PATH descriptor */
	errno = err;
	return rc;
}
