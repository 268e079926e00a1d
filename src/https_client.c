/*
 * One HTTPS request from the loop (see https_client.h).
 *
 * The exchange moves address (c-ares) → request (libevent's HTTP client
 * over an OpenSSL bufferevent to the first address, port given) → done.
 * The deadline runs from the connect. libevent's request callback may run
 * from inside its own connection code, so the end is always reported
 * from the exchange's own zero timer (`finish`), where the connection can
 * be freed.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "facteur/dns.h"
#include "facteur/https_client.h"
#include "facteur/log.h"
#include "facteur/server.h"
#include "facteur/tls.h"

struct https_exchange {
	struct server *srv;
	https_cb cb;
	void *arg;
	char *host, *path, *content_type;
	void *body;
	size_t body_len;
	uint16_t port;
	size_t max_answer;
	int deadline_s;
	struct dns_query *dns;
	struct evhttp_connection *conn; /* owns the bufferevent and SSL */
	SSL *ssl;
	struct event *deadline;
	struct event *finish;
	bool answered; /* the outcome is settled: only finish runs now */
	bool request_failed;
	enum evhttp_request_error error;
	struct https_response res;
	char *answer_type;
	char *answer;
	char reason[320];
};

static char *xstrdup(const char *text)
{
	char *copy = text != NULL ? strdup(text) : NULL;
	if (text != NULL && copy == NULL)
		fatal("https_client: out of memory");
	return copy;
}

static void exchange_free(struct https_exchange *x)
{
	if (x->dns != NULL)
		dns_cancel(x->dns);
	if (x->conn != NULL)
		evhttp_connection_free(x->conn); /* no callback then */
	event_free(x->deadline);
	event_free(x->finish);
	free(x->host);
	free(x->path);
	free(x->content_type);
	free(x->body);
	free(x->answer_type);
	free(x->answer);
	free(x);
}

/* The outcome is known: reported from the loop, on the next turn. */
static void settle(struct https_exchange *x, enum https_failure failure)
{
	x->answered = true;
	x->res.failure = failure;
	if (failure != HTTPS_ANSWERED)
		x->res.reason = x->reason;
	evtimer_del(x->deadline);
	event_active(x->finish, EV_TIMEOUT, 1);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
	struct https_exchange *x = arg;
	(void)fd;
	(void)what;
	x->res.verify_result =
	    x->ssl != NULL ? SSL_get_verify_result(x->ssl) : X509_V_OK;
	x->cb(&x->res, x->arg);
	exchange_free(x);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct https_exchange *x = arg;
	(void)fd;
	(void)what;
	if (x->answered)
		return;
	snprintf(x->reason, sizeof x->reason, "no answer from %s within %d s",
		 x->host, x->deadline_s);
	settle(x, HTTPS_TIMEOUT);
}

static void on_request_error(enum evhttp_request_error error, void *arg)
{
	struct https_exchange *x = arg;
	x->request_failed = true;
	x->error = error;
}

/* Why the request got no HTTP answer. */
static enum https_failure failure_of(struct https_exchange *x)
{
	long vr = x->ssl != NULL ? SSL_get_verify_result(x->ssl) : X509_V_OK;
	if (vr != X509_V_OK) {
		snprintf(x->reason, sizeof x->reason, "certificate of %s: %s",
			 x->host, X509_verify_cert_error_string(vr));
		return HTTPS_CERTIFICATE;
	}
	if (x->request_failed && x->error == EVREQ_HTTP_DATA_TOO_LONG) {
		snprintf(x->reason, sizeof x->reason,
			 "answer from %s larger than %zu octets", x->host,
			 x->max_answer);
		return HTTPS_TOO_LARGE;
	}
	if (x->request_failed && x->error == EVREQ_HTTP_TIMEOUT) {
		snprintf(x->reason, sizeof x->reason,
			 "no answer from %s within %d s", x->host,
			 x->deadline_s);
		return HTTPS_TIMEOUT;
	}
	snprintf(x->reason, sizeof x->reason, "no HTTPS answer from %s",
		 x->host);
	return HTTPS_NO_ANSWER;
}

static void on_response(struct evhttp_request *req, void *arg)
{
	struct https_exchange *x = arg;
	if (x->answered)
		return;
	int code = req != NULL ? evhttp_request_get_response_code(req) : 0;
	if (code == 0) {
		settle(x, failure_of(x));
		return;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = in != NULL ? evbuffer_get_length(in) : 0;
	if (len > x->max_answer) {
		snprintf(x->reason, sizeof x->reason,
			 "answer from %s larger than %zu octets", x->host,
			 x->max_answer);
		settle(x, HTTPS_TOO_LARGE);
		return;
	}
	x->answer = malloc(len + 1);
	if (x->answer == NULL)
		fatal("https_client: out of memory");
	if (len > 0 && evbuffer_remove(in, x->answer, len) != (int)len)
		len = 0;
	x->answer[len] = '\0';
	x->answer_type = xstrdup(evhttp_find_header(
	    evhttp_request_get_input_headers(req), "Content-Type"));
	x->res.code = code;
	x->res.content_type = x->answer_type;
	x->res.body = x->answer;
	x->res.len = len;
	settle(x, HTTPS_ANSWERED);
}

/* The request to `ip`; false, with the reason set, when it cannot be
 * made. */
static bool request_start(struct https_exchange *x, const char *ip)
{
	struct server *srv = x->srv;
	SSL *ssl = SSL_new(srv->tls_client);
	if (ssl == NULL)
		fatal("https_client: out of memory");
	if (tls_client_prepare(ssl, x->host, true) < 0) {
		SSL_free(ssl);
		snprintf(x->reason, sizeof x->reason,
			 "cannot set up TLS for %s", x->host);
		return false;
	}
	struct bufferevent *bev = bufferevent_openssl_socket_new(
	    srv->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL)
		fatal("https_client: out of memory");
	/* many HTTPS servers close without close_notify; an answer's
	 * length, or its contents, tell a cut one */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	x->ssl = ssl;
	x->conn = evhttp_connection_base_bufferevent_new(srv->base, NULL, bev,
							 ip, x->port);
	if (x->conn == NULL)
		fatal("https_client: out of memory");
	evhttp_connection_set_max_body_size(x->conn, (ev_ssize_t)x->max_answer);
	evhttp_connection_set_timeout(x->conn, x->deadline_s);
	evhttp_connection_set_retries(x->conn, 0);
	struct evhttp_request *req = evhttp_request_new(on_response, x);
	if (req == NULL)
		fatal("https_client: out of memory");
	evhttp_request_set_error_cb(req, on_request_error);
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	char host[320];
	if (x->port == 443)
		snprintf(host, sizeof host, "%s", x->host);
	else
		snprintf(host, sizeof host, "%s:%u", x->host,
			 (unsigned)x->port);
	if (evhttp_add_header(headers, "Host", host) < 0 ||
	    evhttp_add_header(headers, "Connection", "close") < 0)
		fatal("https_client: out of memory");
	if (x->content_type != NULL) {
		char length[32];
		snprintf(length, sizeof length, "%zu", x->body_len);
		if (evhttp_add_header(headers, "Content-Type",
				      x->content_type) < 0 ||
		    evhttp_add_header(headers, "Content-Length", length) < 0 ||
		    evbuffer_add(evhttp_request_get_output_buffer(req), x->body,
				 x->body_len) < 0)
			fatal("https_client: out of memory");
	}
	struct timeval tv = {.tv_sec = x->deadline_s};
	if (evtimer_add(x->deadline, &tv) < 0)
		fatal("https_client: cannot add a timer");
	if (evhttp_make_request(x->conn, req,
				x->content_type != NULL ? EVHTTP_REQ_POST
							: EVHTTP_REQ_GET,
				x->path) < 0) {
		/* libevent has freed the request */
		snprintf(x->reason, sizeof x->reason,
			 "cannot send the request to %s", x->host);
		settle(x, HTTPS_NO_ANSWER);
	}
	return true;
}

static void on_address(const struct dns_result *res, void *arg)
{
	struct https_exchange *x = arg;
	char ip[INET6_ADDRSTRLEN] = "";
	x->dns = NULL;
	if (res->status != DNS_OK || res->host_count == 0 ||
	    res->hosts[0].addr_count == 0) {
		if (res->error[0] != '\0')
			snprintf(x->reason, sizeof x->reason, "%s", res->error);
		else
			snprintf(x->reason, sizeof x->reason,
				 "%s has no address", x->host);
		settle(x, HTTPS_NO_ADDRESS);
		return;
	}
	const struct sockaddr_storage *ss = &res->hosts[0].addrs[0];
	const void *a =
	    ss->ss_family == AF_INET6
		? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
		: (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	if (inet_ntop(ss->ss_family, a, ip, sizeof ip) == NULL) {
		snprintf(x->reason, sizeof x->reason, "bad address for %s",
			 x->host);
		settle(x, HTTPS_NO_ADDRESS);
		return;
	}
	if (!request_start(x, ip))
		settle(x, HTTPS_NO_ANSWER);
}

struct https_exchange *https_start(struct server *srv,
				   const struct https_request *req, https_cb cb,
				   void *arg, char *why, size_t whylen)
{
	if (srv->tls_client == NULL) {
		snprintf(why, whylen, "no TLS client context");
		return NULL;
	}
	if (srv->dns == NULL) {
		snprintf(why, whylen, "no DNS resolver available");
		return NULL;
	}
	struct https_exchange *x = calloc(1, sizeof *x);
	if (x == NULL)
		fatal("https_client: out of memory");
	x->srv = srv;
	x->cb = cb;
	x->arg = arg;
	x->host = xstrdup(req->host);
	x->path = xstrdup(req->path);
	x->content_type = xstrdup(req->content_type);
	x->port = req->port;
	x->max_answer = req->max_answer;
	x->deadline_s = req->deadline;
	if (req->content_type != NULL && req->body_len > 0) {
		x->body = malloc(req->body_len);
		if (x->body == NULL)
			fatal("https_client: out of memory");
		memcpy(x->body, req->body, req->body_len);
		x->body_len = req->body_len;
	}
	x->deadline = evtimer_new(srv->base, on_deadline, x);
	x->finish = evtimer_new(srv->base, on_finish, x);
	if (x->deadline == NULL || x->finish == NULL)
		fatal("https_client: out of memory");
	x->dns = dns_resolve_host(srv->dns, x->host, on_address, x);
	if (x->dns == NULL) {
		snprintf(why, whylen, "DNS query could not be started");
		exchange_free(x);
		return NULL;
	}
	return x;
}

void https_cancel(struct https_exchange *x)
{
	if (x != NULL)
		exchange_free(x);
}
