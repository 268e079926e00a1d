/*
 * GET /metrics over HTTP (SPEC.md §3 metrics_listen, §8), served on the
 * daemon's loop. The text is made by metrics_format at each request: a
 * scrape sees the counters as they are at that turn of the loop.
 * GET /healthz answers 200 whenever the loop turns (it answers from the
 * loop, so an answer is the proof); GET /readyz says whether the daemon
 * takes mail: 503 while the spool is recovered and while draining. This
 * listener listens from the start, before the mail ports, so that
 * probes get a 503 rather than a refused connection while starting;
 * /metrics then answers the same 503 (the queue is not counted yet).
 *
 * A small HTTP/1.1 server of our own rather than libevent's evhttp,
 * because evhttp (2.1) can neither cap its connections nor stop
 * accepting when descriptors run out. Here every bound is ours:
 * - at most METRICS_HTTP_MAX_CONNECTIONS connections; at the cap the
 *   listener stops accepting (the kernel's backlog holds the next ones)
 *   until one closes;
 * - when accept(2) fails for want of descriptors (EMFILE, ENFILE), the
 *   listener pauses for METRICS_HTTP_PAUSE_MS instead of being woken at
 *   every turn of the loop, and the outage is logged once;
 * - a request head is at most METRICS_HTTP_MAX_HEAD octets, a body at
 *   most METRICS_HTTP_MAX_BODY (GET needs none), an idle or slow
 *   connection is closed after METRICS_HTTP_TIMEOUT seconds, and a client
 *   that pipelines without reading is not read until its replies drain.
 * Requests are parsed by http_proto; keep-alive and pipelining work as
 * HTTP/1.1 says.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "facteur/accept_pause.h"
#include "facteur/config.h"
#include "facteur/http_proto.h"
#include "facteur/log.h"
#include "facteur/metrics.h"

#define METRICS_HTTP_TIMEOUT 10	   /* seconds, per read and write */
#define METRICS_HTTP_MAX_HEAD 8192 /* octets */
#define METRICS_HTTP_MAX_BODY 1024 /* octets: GET needs none */
#define METRICS_HTTP_BACKLOG 64
/* Prometheus scrapes over one connection; a few spare for people. */
#define METRICS_HTTP_MAX_CONNECTIONS 16
#define METRICS_HTTP_PAUSE_MS 500     /* no accepting after EMFILE */
#define METRICS_HTTP_OUTPUT_MAX 65536 /* replies waiting: stop reading */
#define METRICS_PATH "/metrics"
#define HEALTH_PATH "/healthz"
#define READY_PATH "/readyz"
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE "text/plain; charset=utf-8"

struct metrics_conn {
	struct metrics_http *mh;
	struct bufferevent *bev;
	struct metrics_conn *prev, *next;
	bool closing; /* the last reply is out: close once it drains */
};

struct metrics_http {
	struct evconnlistener *listener;
	struct accept_pause pause; /* after EMFILE */
	struct metrics_conn *conns;
	unsigned open;
	bool error_logged;		  /* the current outage is in the log */
	char *text;			  /* the listen address, for the log */
	enum metrics_readiness readiness; /* what /readyz says */
};

/* Accept while below the cap and not pausing after an error. */
static void update_accepting(struct metrics_http *mh)
{
	if (mh->open < METRICS_HTTP_MAX_CONNECTIONS &&
	    !accept_pause_active(&mh->pause))
		evconnlistener_enable(mh->listener);
	else
		evconnlistener_disable(mh->listener);
}

static void conn_free(struct metrics_conn *c)
{
	struct metrics_http *mh = c->mh;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		mh->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	bufferevent_free(c->bev); /* closes the socket */
	free(c);
	mh->open--;
	update_accepting(mh);
}

/* One reply. The body is left out for HEAD, its length kept. */
static void reply(struct metrics_conn *c, const struct http_request *req,
		  int code, const char *reason, const char *content_type,
		  const char *extra_headers, const char *body, size_t len)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	if (gmtime_r(&now, &tm) == NULL ||
	    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
		date[0] = '\0';
	if (evbuffer_add_printf(
		out,
		"HTTP/1.1 %d %s\r\n"
		"Date: %s\r\n"
		"Content-Type: %s\r\n"
		"Content-Length: %zu\r\n"
		"%s%s\r\n",
		code, reason, date, content_type, len, extra_headers,
		c->closing ? "Connection: close\r\n" : "") < 0 ||
	    ((req == NULL || req->method != HTTP_METHOD_HEAD) &&
	     evbuffer_add(out, body, len) == -1)) {
		/* Out of memory: nothing sensible can be sent any more. */
		c->closing = true;
		evbuffer_drain(out, evbuffer_get_length(out));
	}
}

static void reply_text(struct metrics_conn *c, const struct http_request *req,
		       int code, const char *reason, const char *extra,
		       const char *text)
{
	reply(c, req, code, reason, TEXT_CONTENT_TYPE, extra, text,
	      strlen(text));
}

/* /readyz: 200 only while the daemon takes mail. */
static void serve_readiness(struct metrics_conn *c,
			    const struct http_request *req)
{
	static const char *const no_store = "Cache-Control: no-store\r\n";

	switch (c->mh->readiness) {
	case METRICS_READY:
		reply_text(c, req, 200, "OK", no_store, "ready\n");
		return;
	case METRICS_STARTING:
		reply_text(c, req, 503, "Service Unavailable", no_store,
			   "starting: recovering the spool\n");
		return;
	case METRICS_DRAINING:
		reply_text(c, req, 503, "Service Unavailable", no_store,
			   "draining: stopping\n");
		return;
	}
}

/* The answer to a complete request. */
static void serve(struct metrics_conn *c, const struct http_request *req)
{
	bool metrics_path = strcmp(req->path, METRICS_PATH) == 0;
	bool health_path = strcmp(req->path, HEALTH_PATH) == 0;
	bool ready_path = strcmp(req->path, READY_PATH) == 0;

	if (req->path_too_long ||
	    !(metrics_path || health_path || ready_path)) {
		reply_text(c, req, 404, "Not Found", "",
			   "not found: try " METRICS_PATH "\n");
		return;
	}
	if (req->method == HTTP_METHOD_OTHER) {
		reply_text(c, req, 405, "Method Not Allowed",
			   "Allow: GET, HEAD\r\n",
			   "method not allowed: use GET\n");
		return;
	}
	if (health_path) {
		reply_text(c, req, 200, "OK", "Cache-Control: no-store\r\n",
			   "ok\n");
		return;
	}
	/* Before recovery the queue gauge could not say what the spool
	 * holds: a scrape then is refused rather than told a wrong 0. */
	if (ready_path || c->mh->readiness == METRICS_STARTING) {
		serve_readiness(c, req);
		return;
	}
	size_t len = 0;
	char *text = metrics_format_alloc(&len);
	if (text == NULL) {
		reply_text(c, req, 500, "Internal Server Error", "",
			   "out of memory\n");
		return;
	}
	reply(c, req, 200, "OK", METRICS_CONTENT_TYPE,
	      "Cache-Control: no-store\r\n", text, len);
	free(text);
}

/* An answer after which the connection closes, whatever was asked. */
static void refuse(struct metrics_conn *c, int code, const char *reason,
		   const char *text)
{
	c->closing = true;
	reply_text(c, NULL, code, reason, "", text);
}

/*
 * Answer every complete request in the input, in order, until the
 * connection is to close or its replies pile up. Returns whether the
 * connection should keep reading.
 */
static bool process_input(struct metrics_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *out = bufferevent_get_output(c->bev);

	while (!c->closing &&
	       evbuffer_get_length(out) < METRICS_HTTP_OUTPUT_MAX) {
		size_t avail = evbuffer_get_length(in);
		size_t want = avail < METRICS_HTTP_MAX_HEAD + 1
				  ? avail
				  : METRICS_HTTP_MAX_HEAD + 1;
		const char *head =
		    (const char *)evbuffer_pullup(in, (ssize_t)want);
		struct http_request req;

		if (avail == 0)
			return true;
		if (head == NULL) {
			refuse(c, 500, "Internal Server Error",
			       "out of memory\n");
			break;
		}
		switch (http_proto_parse_request(head, want,
						 METRICS_HTTP_MAX_HEAD, &req)) {
		case HTTP_PARSE_AGAIN:
			return true;
		case HTTP_PARSE_BAD:
			refuse(c, 400, "Bad Request", "bad request\n");
			continue;
		case HTTP_PARSE_TOO_LARGE:
			refuse(c, 431, "Request Header Fields Too Large",
			       "request header fields too large\n");
			continue;
		case HTTP_PARSE_OK:
			break;
		}
		if (req.chunked) {
			refuse(c, 411, "Length Required",
			       "a body needs a Content-Length\n");
			continue;
		}
		if (req.content_length > METRICS_HTTP_MAX_BODY) {
			refuse(c, 413, "Content Too Large",
			       "no body is needed\n");
			continue;
		}
		if (avail < req.head_len + req.content_length)
			return true; /* the body is still coming */
		evbuffer_drain(in, req.head_len + (size_t)req.content_length);
		c->closing = !req.keep_alive;
		serve(c, &req);
	}
	return false;
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct metrics_conn *c = arg;

	if (!process_input(c))
		bufferevent_disable(bev, EV_READ);
}

/* The output drained: close after a last reply, else read on. */
static void on_write(struct bufferevent *bev, void *arg)
{
	struct metrics_conn *c = arg;

	if (c->closing) {
		conn_free(c);
		return;
	}
	if (process_input(c)) {
		if (bufferevent_enable(bev, EV_READ) == -1)
			conn_free(c);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct metrics_conn *c = arg;

	/* A client that shut its side after its request (printf | nc)
	 * still gets the reply; an error or a timeout ends everything. */
	if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) &&
	    evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		c->closing = true;
		bufferevent_disable(bev, EV_READ);
		return;
	}
	conn_free(c);
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd,
		      struct sockaddr *addr, int addrlen, void *arg)
{
	(void)listener;
	(void)addr;
	(void)addrlen;
	struct metrics_http *mh = arg;
	struct metrics_conn *c = calloc(1, sizeof *c);
	struct timeval timeout = {METRICS_HTTP_TIMEOUT, 0};

	mh->error_logged = false;
	if (c == NULL || (c->bev = bufferevent_socket_new(
			      evconnlistener_get_base(listener), fd,
			      BEV_OPT_CLOSE_ON_FREE)) == NULL) {
		free(c);
		close(fd); /* one scrape fails; the next may fit */
		return;
	}
	c->mh = mh;
	c->next = mh->conns;
	if (mh->conns != NULL)
		mh->conns->prev = c;
	mh->conns = c;
	mh->open++;
	update_accepting(mh);
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	if (bufferevent_set_timeouts(c->bev, &timeout, &timeout) == -1 ||
	    bufferevent_enable(c->bev, EV_READ) == -1)
		conn_free(c);
}

static void on_pause_change(void *arg)
{
	update_accepting(arg);
}

/* accept(2) failed with something other than EAGAIN or EINTR: out of
 * descriptors, mostly. Listening on would fire again at once. */
static void on_accept_error(struct evconnlistener *listener, void *arg)
{
	(void)listener;
	struct metrics_http *mh = arg;
	int err = EVUTIL_SOCKET_ERROR();

	if (!mh->error_logged)
		log_event(LOG_LEVEL_ERROR, "accept_error",
			  LOG_S("listen", mh->text), LOG_S("protocol", "http"),
			  LOG_S("reason", strerror(err)));
	mh->error_logged = true;
	accept_pause_start(&mh->pause);
}

/* The listening socket, made here so that it gets the options of the
 * SMTP listeners (IPV6_V6ONLY: "[::]:9187" is IPv6 only) and no name
 * resolution is involved. */
static int bind_metrics_socket(const struct listen_addr *addr, char *err,
			       size_t errlen)
{
	int family = addr->addr.ss_family;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "%s: socket: %s", addr->text,
			 strerror(errno));
		return -1;
	}
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
	    (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY,
					      &one, sizeof one) == -1) ||
	    bind(fd, (const struct sockaddr *)&addr->addr, addr->addrlen) ==
		-1 ||
	    listen(fd, METRICS_HTTP_BACKLOG) == -1) {
		snprintf(err, errlen, "%s: %s", addr->text, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

struct metrics_http *metrics_http_new(struct event_base *base,
				      const struct listen_addr *addr, char *err,
				      size_t errlen)
{
	struct metrics_http *mh = calloc(1, sizeof *mh);
	if (mh == NULL ||
	    accept_pause_init(&mh->pause, base,
			      (struct timeval){0, METRICS_HTTP_PAUSE_MS * 1000},
			      on_pause_change, mh) == -1 ||
	    (mh->text = strdup(addr->text)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", addr->text);
		metrics_http_free(mh);
		return NULL;
	}
	int fd = bind_metrics_socket(addr, err, errlen);
	if (fd == -1) {
		metrics_http_free(mh);
		return NULL;
	}
	/* From here the listener owns the socket and closes it when freed.
	 * Backlog 0: it listens already; -1 would make libevent listen(2)
	 * again with its own backlog of 128. */
	mh->listener = evconnlistener_new(
	    base, on_accept, mh, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
	    0, fd);
	if (mh->listener == NULL) {
		snprintf(err, errlen, "%s: out of memory", addr->text);
		close(fd);
		metrics_http_free(mh);
		return NULL;
	}
	evconnlistener_set_error_cb(mh->listener, on_accept_error);
	log_event(LOG_LEVEL_INFO, "listening", LOG_S("listen", addr->text),
		  LOG_S("protocol", "http"));
	return mh;
}

void metrics_http_set_readiness(struct metrics_http *mh,
				enum metrics_readiness readiness)
{
	if (mh != NULL)
		mh->readiness = readiness;
}

void metrics_http_free(struct metrics_http *mh)
{
	if (mh == NULL)
		return;
	while (mh->conns != NULL)
		conn_free(mh->conns);
	/* Also closes the listening socket. */
	if (mh->listener != NULL)
		evconnlistener_free(mh->listener);
	accept_pause_cleanup(&mh->pause);
	free(mh->text);
	free(mh);
}
