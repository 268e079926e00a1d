/*
 * The blocking client of the local submission socket (submit_client.h).
 * Reply lines are cut here and parsed by smtp_reply, as the relay's
 * client parses a remote server's.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "facteur/submit_client.h"

#define RELAY_BUF (64 * 1024)

static void failed(struct submit_client *c, const char *what)
{
	snprintf(c->err, sizeof c->err, "%s: %s", what, strerror(errno));
}

enum submit_connect_result submit_client_connect(struct submit_client *c,
						 const char *path,
						 unsigned timeout_seconds)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	memset(c, 0, sizeof *c);
	if (strlen(path) >= sizeof sun.sun_path) {
		snprintf(c->err, sizeof c->err, "%s: path too long", path);
		return SUBMIT_CONNECT_FAILED;
	}
	strcpy(sun.sun_path, path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd == -1) {
		failed(c, "socket");
		return SUBMIT_CONNECT_FAILED;
	}
	struct timeval tv = {(time_t)timeout_seconds, 0};
	if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == -1 ||
	    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == -1) {
		failed(c, "setsockopt");
		submit_client_close(c);
		return SUBMIT_CONNECT_FAILED;
	}
	if (connect(c->fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		int saved = errno;
		snprintf(c->err, sizeof c->err, "%s: %s", path,
			 strerror(saved));
		submit_client_close(c);
		return saved == ENOENT || saved == ECONNREFUSED
			   ? SUBMIT_NOT_RUNNING
			   : SUBMIT_CONNECT_FAILED;
	}
	return SUBMIT_CONNECTED;
}

int submit_client_write(struct submit_client *c, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1) {
			failed(c, errno == EAGAIN
				      ? "writing to facteurd (timed "
					"out)"
				      : "writing to facteurd");
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One reply line into c->in (its CRLF cut); its length, or -1. */
static ssize_t read_line(struct submit_client *c)
{
	for (;;) {
		char *lf = memchr(c->in, '\n', c->in_len);
		if (lf != NULL) {
			size_t len = (size_t)(lf - c->in);
			if (len > 0 && c->in[len - 1] == '\r')
				len--;
			return (ssize_t)len;
		}
		if (c->in_len >= sizeof c->in) {
			snprintf(c->err, sizeof c->err,
				 "facteurd sent a reply line longer than %d "
				 "octets",
				 SUBMIT_CLIENT_LINE_MAX);
			return -1;
		}
		ssize_t n =
		    recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == 0) {
			snprintf(c->err, sizeof c->err,
				 "facteurd closed the connection");
			return -1;
		}
		if (n == -1) {
			failed(c, errno == EAGAIN ? "reading from facteurd "
						    "(timed out)"
						  : "reading from facteurd");
			return -1;
		}
		c->in_len += (size_t)n;
	}
}

/* Drop the line just read (and its end) from c->in. */
static void consume_line(struct submit_client *c)
{
	char *lf = memchr(c->in, '\n', c->in_len);
	size_t used = (size_t)(lf - c->in) + 1;
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
}

int submit_client_command(struct submit_client *c, const char *line, bool ehlo)
{
	if (line != NULL && (submit_client_write(c, line, strlen(line)) == -1 ||
			     submit_client_write(c, "\r\n", 2) == -1))
		return -1;
	smtp_reply_init(&c->reply);
	for (;;) {
		ssize_t len = read_line(c);
		if (len < 0)
			return -1;
		enum smtp_reply_status st =
		    smtp_reply_feed(&c->reply, c->in, (size_t)len, ehlo);
		consume_line(c);
		if (st == SMTP_REPLY_DONE)
			return c->reply.code;
		if (st == SMTP_REPLY_INVALID) {
			snprintf(c->err, sizeof c->err,
				 "facteurd sent a line that is no SMTP reply");
			return -1;
		}
	}
}

void submit_client_close(struct submit_client *c)
{
	if (c->fd > 0)
		close(c->fd);
	c->fd = -1;
}

/* One direction of the relay: a buffer filled from `from` and drained
 * into `to`, so that neither side waits for the other to read. */
struct relay_half {
	int from, to;
	char buf[RELAY_BUF];
	size_t len;
	bool eof;
};

/* Move what is ready; -1 on an error, with c->err. */
static int relay_step(struct submit_client *c, struct relay_half *h,
		      short from_events, short to_events, const char *what)
{
	if ((from_events & (POLLIN | POLLHUP | POLLERR)) && h->len == 0 &&
	    !h->eof) {
		ssize_t n = read(h->from, h->buf, sizeof h->buf);
		if (n == -1 && errno != EINTR && errno != EAGAIN) {
			failed(c, what);
			return -1;
		}
		if (n == 0)
			h->eof = true;
		if (n > 0)
			h->len = (size_t)n;
	}
	if ((to_events & POLLOUT) && h->len > 0) {
		ssize_t n = h->to == c->fd
				? send(h->to, h->buf, h->len, MSG_NOSIGNAL)
				: write(h->to, h->buf, h->len);
		if (n == -1 && h->to == c->fd &&
		    (errno == EPIPE || errno == ECONNRESET)) {
			/* The daemon closed (after QUIT, a timeout): what
			 * is left is for nobody; its replies still go out. */
			h->len = 0;
			h->eof = true;
			return 0;
		}
		if (n == -1 && errno != EINTR && errno != EAGAIN) {
			failed(c, what);
			return -1;
		}
		if (n > 0) {
			memmove(h->buf, h->buf + n, h->len - (size_t)n);
			h->len -= (size_t)n;
		}
	}
	return 0;
}

int submit_client_relay(struct submit_client *c, int in, int out)
{
	struct relay_half up = {.from = in, .to = c->fd};
	struct relay_half down = {.from = c->fd, .to = out};
	bool write_shut = false;
	int flags = fcntl(c->fd, F_GETFL);
	if (flags == -1 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == -1) {
		failed(c, "fcntl");
		return -1;
	}
	/* The daemon's close ends the session: what it said is written out
	 * first. */
	while (!down.eof || down.len > 0) {
		if (up.eof && up.len == 0 && !write_shut) {
			if (shutdown(c->fd, SHUT_WR) == -1 &&
			    errno != ENOTCONN) {
				failed(c, "shutdown");
				return -1;
			}
			write_shut = true;
		}
		struct pollfd p[3] = {
		    {.fd = up.len == 0 && !up.eof ? in : -1, .events = POLLIN},
		    {.fd = c->fd,
		     .events =
			 (short)((down.len == 0 && !down.eof ? POLLIN : 0) |
				 (up.len > 0 ? POLLOUT : 0))},
		    {.fd = down.len > 0 ? out : -1, .events = POLLOUT},
		};
		if (poll(p, 3, -1) == -1) {
			if (errno == EINTR)
				continue;
			failed(c, "poll");
			return -1;
		}
		/* The daemon's session has its own timeout: no timer here. */
		if (relay_step(c, &up, p[0].revents, p[1].revents,
			       "standard input to facteurd") == -1 ||
		    relay_step(c, &down, p[1].revents, p[2].revents,
			       "facteurd to standard output") == -1)
			return -1;
	}
	return 0;
}
