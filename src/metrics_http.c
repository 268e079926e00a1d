/*
 * GET /metrics over HTTP (SPEC.md §3 metrics_listen, §8), served by
 * libevent's evhttp on the daemon's loop. The text is made by
 * metrics_format at each request: a scrape sees the counters as they are
 * at that turn of the loop.
 *
 * Each connection is bounded by evhttp's own limits: an idle or slow
 * connection is dropped after METRICS_HTTP_TIMEOUT seconds and a request
 * may not carry more than a few kilobytes of headers and body. libevent
 * 2.1's evhttp has no cap on the number of connections, so the listener
 * belongs on a trusted address (loopback, or a private network).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "facteur/config.h"
#include "facteur/log.h"
#include "facteur/metrics.h"

#define METRICS_HTTP_TIMEOUT 10       /* seconds, per read and write */
#define METRICS_HTTP_MAX_HEADERS 8192 /* octets */
#define METRICS_HTTP_MAX_BODY 1024    /* octets: GET needs none */
#define METRICS_HTTP_BACKLOG 64
#define METRICS_PATH "/metrics"
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics_http {
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
};

/* Every method evhttp knows: those it was not allowed to accept would
 * get its "501 Not Implemented", where HTTP wants our 405. */
#define ALL_METHODS                                                         \
	(EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | \
	 EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |          \
	 EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH)

static void send_text(struct evhttp_request *req, int code,
                      const char *reason, const char *text)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	if (body == NULL ||
	    evhttp_add_header(headers, "Content-Type",
	                      "text/plain; charset=utf-8") == -1 ||
	    evbuffer_add(body, text, strlen(text)) == -1) {
		if (body != NULL)
			evbuffer_free(body);
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evhttp_send_reply(req, code, reason, body);
	evbuffer_free(body);
}

static void send_metrics(struct evhttp_request *req)
{
	size_t len = 0;
	char *text = metrics_format_alloc(&len);
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	if (text == NULL || body == NULL ||
	    evhttp_add_header(headers, "Content-Type", METRICS_CONTENT_TYPE) ==
	            -1 ||
	    evhttp_add_header(headers, "Cache-Control", "no-store") == -1 ||
	    evbuffer_add(body, text, len) == -1) {
		free(text);
		if (body != NULL)
			evbuffer_free(body);
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	free(text);
	/* evhttp leaves the body out of a HEAD reply and keeps its length. */
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	(void)arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	if (path == NULL || strcmp(path, METRICS_PATH) != 0) {
		send_text(req, HTTP_NOTFOUND, "Not Found",
		          "not found: try " METRICS_PATH "\n");
		return;
	}
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
		struct evkeyvalq *headers =
			evhttp_request_get_output_headers(req);
		if (evhttp_add_header(headers, "Allow", "GET, HEAD") == -1) {
			evhttp_send_error(req, HTTP_INTERNAL, NULL);
			return;
		}
		send_text(req, 405, "Method Not Allowed",
		          "method not allowed: use GET\n");
		return;
	}
	send_metrics(req);
}

/* The listening socket, made here rather than by evhttp so that it gets
 * the options of the SMTP listeners (IPV6_V6ONLY: "[::]:9187" is IPv6
 * only) and no name resolution is involved. */
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
	    (family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) ==
	             -1) ||
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
                                      const struct listen_addr *addr,
                                      char *err, size_t errlen)
{
	struct metrics_http *mh = calloc(1, sizeof *mh);
	if (mh == NULL || (mh->http = evhttp_new(base)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", addr->text);
		free(mh);
		return NULL;
	}
	evhttp_set_timeout(mh->http, METRICS_HTTP_TIMEOUT);
	evhttp_set_max_headers_size(mh->http, METRICS_HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(mh->http, METRICS_HTTP_MAX_BODY);
	evhttp_set_allowed_methods(mh->http, ALL_METHODS);
	evhttp_set_gencb(mh->http, on_request, mh);

	int fd = bind_metrics_socket(addr, err, errlen);
	if (fd == -1) {
		evhttp_free(mh->http);
		free(mh);
		return NULL;
	}
	/* From here evhttp owns the socket and closes it when freed. */
	mh->bound = evhttp_accept_socket_with_handle(mh->http, fd);
	if (mh->bound == NULL) {
		snprintf(err, errlen, "%s: cannot serve HTTP", addr->text);
		close(fd);
		evhttp_free(mh->http);
		free(mh);
		return NULL;
	}
	log_event(LOG_LEVEL_INFO, "listening", LOG_S("listen", addr->text),
	          LOG_S("protocol", "http"));
	return mh;
}

void metrics_http_free(struct metrics_http *mh)
{
	if (mh == NULL)
		return;
	/* Also closes the listening socket and every open connection. */
	evhttp_free(mh->http);
	free(mh);
}
