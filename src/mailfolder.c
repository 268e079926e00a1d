/*
 * Mail folders opened and made without following a link below the mail
 * root (see mailfolder.h), for Maildir and mbox delivery and for POP3.
 * The walk goes one component at a time from a descriptor on the root,
 * with O_NOFOLLOW, so that what it opens is what it checked; the mkdir
 * -p that makes missing folders reports the first one it made, for the
 * deliveries that must flush the directories whose entries changed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"

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

/* `path` without its trailing slashes ("/" stays), malloc'd, and its
 * length; NULL with errno ENOENT for an empty path, or ENOMEM. */
static char *trimmed_copy(const char *path, size_t *len)
{
	*len = strlen(path);
	while (*len > 1 && path[*len - 1] == '/')
		(*len)--;
	if (*len == 0) {
		errno = ENOENT;
		return NULL;
	}
	return strndup(path, *len);
}

/*
 * mkdir -p. *first_created is set to the length of the path of the
 * outermost directory this call created, or 0 when it created none, so
 * that the caller can flush the directories whose entries changed.
 */
static int mkdirs_tracked(const char *path, size_t *first_created)
{
	*first_created = 0;
	size_t len;
	char *copy = trimmed_copy(path, &len);
	if (copy == NULL)
		return -1;
	int rc = -1;
	/* Usually the parent exists: one call. */
	if (mkdir(copy, mailowner_dir_mode()) == 0) {
		/* a folder the umask narrowed is only less shared */
		(void)mailowner_fix_dir_mode_at(AT_FDCWD, copy);
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
		if (mkdir(copy, mailowner_dir_mode()) == 0) {
			(void)mailowner_fix_dir_mode_at(AT_FDCWD, copy);
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

int mailfolder_mkdirs(const char *path)
{
	size_t first_created;
	return mkdirs_tracked(path, &first_created);
}

/* openat for a directory that must not be a link: ELOOP if it is one
 * (O_PATH with O_NOFOLLOW opens the link itself, and says ENOTDIR). */
int mailfolder_open_directory_at(int dirfd, const char *name, int mode)
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
 * mailbox_mode's, 0700 by default). Its first `root_len` octets, the mail root,
 * are opened as they are: operators point /var/mail elsewhere with a link.
 * Every component after them is opened with O_NOFOLLOW (ELOOP for a link), so
 * that a link planted inside the root by the owner of a mailbox never takes a
 * delivery elsewhere; "." and ".." are refused (EINVAL) for the same
 * reason. *first_created as for mkdirs_tracked; on failure *failed_len
 * is the length of the path that failed and *what the call.
 */
int mailfolder_walk(const char *path, size_t root_len, bool create,
		    size_t *first_created, size_t *failed_len,
		    const char **what)
{
	*first_created = 0;
	*what = "open";
	int err;
	size_t len;
	char *copy = trimmed_copy(path, &len);
	*failed_len = len;
	if (copy == NULL)
		return -1;
	if (root_len > len)
		root_len = len;
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
		int next = mailfolder_open_directory_at(fd, name, O_PATH);
		if (next == -1 && errno == ENOENT && create) {
			*what = "mkdir";
			if (mkdirat(fd, name, mailowner_dir_mode()) == 0) {
				(void)mailowner_fix_dir_mode_at(fd, name);
				if (*first_created == 0)
					*first_created = end;
				next = mailfolder_open_directory_at(fd, name,
								    O_PATH);
			} else if (errno == EEXIST) {
				/* made meanwhile */
				next = mailfolder_open_directory_at(fd, name,
								    O_PATH);
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

int mailfolder_open(const char *path, size_t root_len, bool create,
		    size_t *failed_len)
{
	size_t first_created, failed;
	const char *what;
	int fd = mailfolder_walk(path, root_len, create, &first_created,
				 &failed, &what);
	if (failed_len != NULL)
		*failed_len = failed;
	return fd;
}

/* `n` random hex digits into `out` (no terminator). getrandom may be
 * missing or not ready; the clock and a counter still make the name
 * unlikely to be taken, and O_EXCL makes a taken one harmless. */
void mailfolder_random_hex(char *out, size_t n)
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
