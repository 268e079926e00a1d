/* Bounded whole-file reads, and whole-file replacements (see wholefile.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/wholefile.h"

/* The first buffer holds the file as fstat saw it plus this much, so
 * that reading to the end usually needs no second allocation. */
#define WHOLEFILE_SLACK 4096

void wholefile_free_secret(char *text, size_t len)
{
	if (text != NULL)
		explicit_bzero(text, len);
	free(text);
}

static enum wholefile_status fail(char *buf, size_t len, unsigned flags,
				  enum wholefile_status status, int err)
{
	if (flags & WHOLEFILE_SECRET)
		wholefile_free_secret(buf, len);
	else
		free(buf);
	errno = err;
	return status;
}

/* positional: pread from offset 0, the descriptor's offset untouched;
 * otherwise read(2) on, so that a pipe named by path works too. */
static enum wholefile_status read_all(int fd, bool positional, size_t max,
				      unsigned flags, char **text, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	size_t cap = 0, used = 0;

	if (fstat(fd, &st) == -1)
		return WHOLEFILE_STAT;
	if ((flags & WHOLEFILE_REGULAR) && !S_ISREG(st.st_mode))
		return WHOLEFILE_NOT_REGULAR;
	/* Only a regular file's size means its length (a directory's does
	 * not); it sizes the first buffer. */
	size_t hint = 0;
	if (S_ISREG(st.st_mode) && st.st_size > 0) {
		if ((uintmax_t)st.st_size > max)
			return fail(NULL, 0, flags, WHOLEFILE_TOO_LARGE, EFBIG);
		hint = (size_t)st.st_size;
	}
	if (max > SIZE_MAX / 4)
		max = SIZE_MAX / 4; /* so that the sums below cannot wrap */
	for (;;) {
		if (cap - used < 2) {
			/* One octet to learn where the file ends, one for
			 * the NUL. */
			if (used > max)
				return fail(buf, used, flags,
					    WHOLEFILE_TOO_LARGE, EFBIG);
			size_t ncap =
			    cap == 0 ? hint + WHOLEFILE_SLACK : cap * 2;
			if (ncap > max + 2)
				ncap = max + 2;
			char *n = realloc(buf, ncap);
			if (n == NULL)
				return fail(buf, used, flags, WHOLEFILE_NOMEM,
					    ENOMEM);
			buf = n;
			cap = ncap;
		}
		ssize_t r = positional ? pread(fd, buf + used, cap - used - 1,
					       (off_t)used)
				       : read(fd, buf + used, cap - used - 1);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return fail(buf, used, flags, WHOLEFILE_READ, errno);
		}
		if (r == 0)
			break;
		used += (size_t)r;
		if (used > max)
			return fail(buf, used, flags, WHOLEFILE_TOO_LARGE,
				    EFBIG);
	}
	buf[used] = '\0';
	*text = buf;
	*len = used;
	return WHOLEFILE_OK;
}

enum wholefile_status wholefile_read_fd(int fd, size_t max, unsigned flags,
					char **text, size_t *len)
{
	return read_all(fd, true, max, flags, text, len);
}

enum wholefile_status wholefile_read(const char *path, size_t max,
				     unsigned flags, char **text, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd == -1)
		return WHOLEFILE_OPEN;
	enum wholefile_status st = read_all(fd, false, max, flags, text, len);
	if (st != WHOLEFILE_OK) {
		int saved = errno;
		(void)close(fd); /* already failing: keep the first cause */
		errno = saved;
		return st;
	}
	if (close(fd) == -1) {
		int saved = errno;
		if (flags & WHOLEFILE_SECRET)
			wholefile_free_secret(*text, *len);
		else
			free(*text);
		*text = NULL;
		errno = saved;
		return WHOLEFILE_READ;
	}
	return WHOLEFILE_OK;
}

int wholefile_replace(const char *path, const char *text, size_t len)
{
	char tmp[PATH_MAX];
	int n = snprintf(tmp, sizeof tmp, "%s.new", path);
	if (n < 0 || (size_t)n >= sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1)
		return -1;
	int rc = 0;
	for (size_t done = 0; rc == 0 && done < len;) {
		ssize_t w = write(fd, text + done, len - done);
		if (w > 0)
			done += (size_t)w;
		else if (w == -1 && errno != EINTR)
			rc = -1;
	}
	if (rc == 0 && fsync(fd) == -1)
		rc = -1;
	if (close(fd) == -1)
		rc = -1;
	if (rc == 0)
		rc = rename(tmp, path);
	if (rc == -1) {
		int saved = errno;
		(void)unlink(tmp);
		errno = saved;
		return -1;
	}
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1,
		 slash ? path : ".");
	if (slash == path)
		snprintf(dir, sizeof dir, "/");
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd == -1)
		return -1;
	rc = fsync(dfd);
	if (close(dfd) == -1)
		rc = -1;
	return rc;
}
