/*
 * The blocking client of the control socket, shared by facteurctl and
 * facteur-sendmail (never by the daemon, whose loop must not block): one
 * request line out, reply records in, each with a timeout. The protocol
 * itself is control_proto.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "facteur/control.h"
#include "facteur/control_client.h"

/* A reply line the client accepts (a header line can be long). */
#define CLIENT_LINE_MAX (1024 * 1024)
#define CLIENT_TIMEOUT_SECONDS 60

static int client_connect(const char *spool_dir, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int n = snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s", spool_dir,
			 CONTROL_SOCKET_NAME);

	if (n < 0 || (size_t)n >= sizeof sun.sun_path) {
		snprintf(err, errlen, "%s/%s: path too long for a socket",
			 spool_dir, CONTROL_SOCKET_NAME);
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	struct timeval tv = {CLIENT_TIMEOUT_SECONDS, 0};
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == -1) {
		snprintf(err, errlen, "setsockopt: %s", strerror(errno));
		close(fd);
		return -1;
	}
	while (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		if (errno == EINTR)
			continue;
		int saved = errno;
		if (saved == ENOENT || saved == ECONNREFUSED)
			snprintf(err, errlen,
				 "facteurd is not running (cannot connect to "
				 "%s: %s)",
				 sun.sun_path, strerror(saved));
		else
			snprintf(err, errlen, "cannot connect to %s: %s",
				 sun.sun_path, strerror(saved));
		close(fd);
		return -1;
	}
	return fd;
}

static int send_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads reply lines from the socket with a bounded buffer. */
struct line_reader {
	int fd;
	char *buf;
	size_t len;
	size_t cap;
	size_t start; /* of the next line */
};

/* The next line without its LF, NUL-terminated (valid until the next
 * call); NULL at EOF or on error, with errno (0 at a clean EOF). */
static char *reader_line(struct line_reader *r)
{
	for (;;) {
		char *nl = r->len > r->start ? memchr(r->buf + r->start, '\n',
						      r->len - r->start)
					     : NULL;
		if (nl != NULL) {
			char *line = r->buf + r->start;
			*nl = '\0';
			r->start = (size_t)(nl - r->buf) + 1;
			return line;
		}
		if (r->start > 0) {
			memmove(r->buf, r->buf + r->start, r->len - r->start);
			r->len -= r->start;
			r->start = 0;
		}
		if (r->cap - r->len < 4096) {
			if (r->cap >= CLIENT_LINE_MAX) {
				errno = EMSGSIZE;
				return NULL;
			}
			size_t cap = r->cap ? r->cap * 2 : 8192;
			char *p = realloc(r->buf, cap);
			if (p == NULL)
				return NULL;
			r->buf = p;
			r->cap = cap;
		}
		ssize_t n =
		    recv(r->fd, r->buf + r->len, r->cap - r->len - 1, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				errno = ETIMEDOUT;
			return NULL;
		}
		if (n == 0) {
			errno = 0;
			return NULL;
		}
		r->len += (size_t)n;
	}
}

enum control_call_result control_client_call(const char *spool_dir,
					     const char *request,
					     control_line_cb cb, void *arg,
					     char *err, size_t errlen)
{
	int fd = client_connect(spool_dir, err, errlen);
	if (fd == -1)
		return CONTROL_CALL_UNREACHABLE;

	enum control_call_result result = CONTROL_CALL_BROKEN;
	struct line_reader r = {.fd = fd};
	char *req = NULL;
	if (asprintf(&req, "%s\n", request) == -1) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (send_all(fd, req, strlen(req)) == -1) {
		snprintf(err, errlen, "cannot send the request: %s",
			 strerror(errno));
		goto out;
	}
	for (;;) {
		char *line = reader_line(&r);
		if (line == NULL) {
			snprintf(err, errlen, "%s",
				 errno == 0 ? "the daemon closed the connection"
					    : strerror(errno));
			break;
		}
		size_t n = strlen(line);
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strcmp(line, "ok") == 0) {
			result = CONTROL_CALL_OK;
			break;
		}
		if (strncmp(line, "error", 5) == 0 &&
		    (line[5] == '\0' || line[5] == ' ')) {
			snprintf(err, errlen, "%s",
				 line[5] ? line + 6 : "failed");
			result = CONTROL_CALL_ERROR;
			break;
		}
		if (cb != NULL && cb(line, arg) != 0) {
			snprintf(err, errlen, "unexpected reply: %.200s", line);
			break;
		}
	}
out:
	free(req);
	free(r.buf);
	close(fd);
	return result;
}
