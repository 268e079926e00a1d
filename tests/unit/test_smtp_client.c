/*
 * smtp_client against scripted fake servers on 127.0.0.1, served by the
 * same event loop: each script is a list of expected command prefixes
 * and the replies (or misbehaviour) that answer them. The message is a
 * spool-like file (wire form, dot-stuffed) in a temporary directory; TLS
 * uses a self-signed certificate made with the openssl command.
 */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/smtp_client.h"
#include "facteur/smtp_reply.h"
#include "facteur/tls.h"

/* ---- the fake server ---- */

enum fake_action {
	FA_REPLY,	  /* send the reply */
	FA_DATA,	  /* send the reply (354), then read the data */
	FA_DROP_IN_DATA,  /* send the reply (354), close when data comes */
	FA_CLOSE,	  /* send the reply (if any), then close */
	FA_STARTTLS,	  /* send the reply (220), then TLS as a server */
	FA_STARTTLS_JUNK, /* send the reply (220), answer TLS with junk */
	FA_SLOW,	  /* send the reply one octet per second */
	FA_ENDLESS,	  /* send the reply, then "250-" lines forever */
};

/* expect: the prefix of the command answered; NULL for the greeting
 * (first step) and for the end of the data (after FA_DATA). */
struct fake_step {
	const char *expect;
	const char *reply;
	enum fake_action action;
};

#define MAX_LINES 64

struct fake_server {
	struct event_base *base;
	struct evconnlistener *listener;
	uint16_t port;
	const struct fake_step *script;
	size_t nsteps;
	SSL_CTX *tls_ctx;
	bool implicit_tls; /* TLS from the first byte, greeting over it */
	unsigned accepted, open_conns, tls_handshakes;
	bool quit_seen;
	struct evbuffer *transcript; /* every command line, "\n" after each */
	struct evbuffer *data;	     /* the message data, final dot included */
	char *lines[MAX_LINES];
	unsigned line_batch[MAX_LINES]; /* which read each line came in */
	size_t nlines;
	unsigned batch;
	char errors[2048];
};

struct fake_conn {
	struct fake_server *srv;
	struct bufferevent *bev;
	size_t step;
	bool in_data, drop_in_data, closing, endless;
	bool junk_on_input; /* answer a ClientHello with plain junk */
	unsigned endless_lines;
	struct event *slow_timer;
	const char *slow_next;
	struct event *free_ev;
};

static void fake_error(struct fake_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fake_error(struct fake_server *srv, const char *fmt, ...)
{
	size_t len = strlen(srv->errors);
	va_list ap;

	if (len + 2 >= sizeof srv->errors)
		return;
	va_start(ap, fmt);
	vsnprintf(srv->errors + len, sizeof srv->errors - len, fmt, ap);
	va_end(ap);
	len = strlen(srv->errors);
	if (len + 2 < sizeof srv->errors)
		strcat(srv->errors, "; ");
}

static void fake_conn_free(struct fake_conn *conn)
{
	if (conn->slow_timer)
		event_free(conn->slow_timer);
	if (conn->free_ev)
		event_free(conn->free_ev);
	bufferevent_free(conn->bev);
	conn->srv->open_conns--;
	free(conn);
}

static void fake_free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	fake_conn_free(arg);
}

/* Close once the output has gone. */
static void fake_close(struct fake_conn *conn)
{
	conn->closing = true;
	conn->endless = false;
	bufferevent_disable(conn->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0) {
		struct timeval now = {0, 0};
		conn->free_ev =
		    evtimer_new(conn->srv->base, fake_free_cb, conn);
		assert_non_null(conn->free_ev);
		evtimer_add(conn->free_ev, &now);
	}
}

static void fake_write(struct fake_conn *conn, const char *s)
{
	if (s)
		bufferevent_write(conn->bev, s, strlen(s));
}

static void fake_read_cb(struct bufferevent *bev, void *arg);
static void fake_write_cb(struct bufferevent *bev, void *arg);
static void fake_event_cb(struct bufferevent *bev, short what, void *arg);

static void fake_start_tls(struct fake_conn *conn)
{
	SSL *ssl = SSL_new(conn->srv->tls_ctx);
	assert_non_null(ssl);
	struct bufferevent *tls = bufferevent_openssl_filter_new(
	    conn->srv->base, conn->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(tls);
	conn->bev = tls;
	bufferevent_setcb(tls, fake_read_cb, fake_write_cb, fake_event_cb,
			  conn);
	bufferevent_enable(tls, EV_READ | EV_WRITE);
}

static void fake_slow_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fake_conn *conn = arg;
	struct timeval one = {1, 0};

	(void)fd;
	(void)what;
	if (*conn->slow_next == '\0')
		return;
	bufferevent_write(conn->bev, conn->slow_next, 1);
	conn->slow_next++;
	evtimer_add(conn->slow_timer, &one);
}

static void fake_endless_more(struct fake_conn *conn)
{
	for (int i = 0; i < 50 && conn->endless_lines < 100000; i++) {
		fake_write(conn, "250-still going\r\n");
		conn->endless_lines++;
	}
}

static void fake_perform(struct fake_conn *conn, const struct fake_step *st)
{
	switch (st->action) {
	case FA_REPLY:
		fake_write(conn, st->reply);
		break;
	case FA_DATA:
		fake_write(conn, st->reply);
		conn->in_data = true;
		break;
	case FA_DROP_IN_DATA:
		fake_write(conn, st->reply);
		conn->in_data = true;
		conn->drop_in_data = true;
		break;
	case FA_CLOSE:
		fake_write(conn, st->reply);
		fake_close(conn);
		break;
	case FA_STARTTLS:
		fake_write(conn, st->reply);
		fake_start_tls(conn);
		break;
	case FA_STARTTLS_JUNK:
		fake_write(conn, st->reply);
		conn->junk_on_input = true;
		break;
	case FA_SLOW: {
		struct timeval one = {1, 0};
		conn->slow_next = st->reply;
		conn->slow_timer =
		    evtimer_new(conn->srv->base, fake_slow_cb, conn);
		assert_non_null(conn->slow_timer);
		evtimer_add(conn->slow_timer, &one);
		break;
	}
	case FA_ENDLESS:
		fake_write(conn, st->reply);
		conn->endless = true;
		fake_endless_more(conn);
		break;
	}
}

/* The next step of the script for `line` (NULL: the greeting or the end
 * of the data). */
static void fake_step(struct fake_conn *conn, const char *line)
{
	struct fake_server *srv = conn->srv;

	if (conn->step >= srv->nsteps) {
		fake_error(srv, "unexpected \"%s\" after the script",
			   line ? line : "(end of data)");
		fake_write(conn, "500 5.5.1 script exhausted\r\n");
		return;
	}
	const struct fake_step *st = &srv->script[conn->step++];
	if (line == NULL ? st->expect != NULL
			 : (st->expect == NULL ||
			    strncmp(line, st->expect, strlen(st->expect)) != 0))
		fake_error(srv, "step %zu: got \"%s\", expected \"%s\"",
			   conn->step - 1, line ? line : "(end of data)",
			   st->expect ? st->expect : "(end of data)");
	fake_perform(conn, st);
}

static void fake_record_line(struct fake_server *srv, const char *line)
{
	evbuffer_add_printf(srv->transcript, "%s\n", line);
	if (srv->nlines < MAX_LINES) {
		srv->lines[srv->nlines] = strdup(line);
		srv->line_batch[srv->nlines] = srv->batch;
		srv->nlines++;
	}
}

static void fake_read_cb(struct bufferevent *bev, void *arg)
{
	struct fake_conn *conn = arg;
	struct fake_server *srv = conn->srv;
	struct evbuffer *in = bufferevent_get_input(bev);

	srv->batch++;
	if (conn->junk_on_input) {
		evbuffer_drain(in, evbuffer_get_length(in));
		conn->junk_on_input = false;
		fake_write(conn, "this is not a TLS record at all\r\n");
		fake_close(conn);
		return;
	}
	while (!conn->closing) {
		if (conn->in_data) {
			if (conn->drop_in_data) {
				if (evbuffer_get_length(in) == 0)
					return;
				/* abrupt: no reply, unread data left behind */
				fake_conn_free(conn);
				return;
			}
			struct evbuffer_ptr p =
			    evbuffer_search(in, "\r\n.\r\n", 5, NULL);
			if (p.pos < 0)
				return;
			evbuffer_remove_buffer(in, srv->data,
					       (size_t)p.pos + 5);
			conn->in_data = false;
			fake_step(conn, NULL);
			continue;
		}
		size_t n;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
		if (line == NULL)
			return;
		fake_record_line(srv, line);
		if (strncmp(line, "QUIT", 4) == 0) {
			srv->quit_seen = true;
			fake_write(conn, "221 2.0.0 Bye\r\n");
			fake_close(conn);
		} else {
			fake_step(conn, line);
		}
		free(line);
	}
}

static void fake_write_cb(struct bufferevent *bev, void *arg)
{
	struct fake_conn *conn = arg;

	if (conn->endless) {
		fake_endless_more(conn);
		return;
	}
	if (conn->closing &&
	    evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		fake_conn_free(conn);
}

static void fake_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct fake_conn *conn = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		conn->srv->tls_handshakes++;
		return;
	}
	fake_conn_free(conn);
}

static void fake_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
			   struct sockaddr *sa, int salen, void *arg)
{
	struct fake_server *srv = arg;
	struct fake_conn *conn = calloc(1, sizeof *conn);

	(void)l;
	(void)sa;
	(void)salen;
	assert_non_null(conn);
	conn->srv = srv;
	conn->bev =
	    bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(conn->bev);
	bufferevent_setcb(conn->bev, fake_read_cb, fake_write_cb, fake_event_cb,
			  conn);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	srv->accepted++;
	srv->open_conns++;
	if (srv->implicit_tls)
		fake_start_tls(conn);
	fake_step(conn, NULL); /* the greeting */
}

static struct fake_server *fake_server_new(struct event_base *base,
					   const struct fake_step *script,
					   size_t nsteps, SSL_CTX *tls_ctx)
{
	struct fake_server *srv = calloc(1, sizeof *srv);
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof sin;

	assert_non_null(srv);
	srv->base = base;
	srv->script = script;
	srv->nsteps = nsteps;
	srv->tls_ctx = tls_ctx;
	srv->transcript = evbuffer_new();
	srv->data = evbuffer_new();
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	srv->listener =
	    evconnlistener_new_bind(base, fake_accept_cb, srv,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
				    16, (struct sockaddr *)&sin, sizeof sin);
	assert_non_null(srv->listener);
	assert_int_equal(getsockname(evconnlistener_get_fd(srv->listener),
				     (struct sockaddr *)&sin, &len),
			 0);
	srv->port = ntohs(sin.sin_port);
	return srv;
}

static void fake_server_free(struct fake_server *srv)
{
	evconnlistener_free(srv->listener);
	evbuffer_free(srv->transcript);
	evbuffer_free(srv->data);
	for (size_t i = 0; i < srv->nlines; i++)
		free(srv->lines[i]);
	free(srv);
}

/* The transcript as one string (valid until the next call). */
static const char *transcript(struct fake_server *srv)
{
	static char buf[8192];
	ev_ssize_t n = evbuffer_copyout(srv->transcript, buf, sizeof buf - 1);

	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

static int find_line(const struct fake_server *srv, const char *prefix)
{
	for (size_t i = 0; i < srv->nlines; i++)
		if (strncmp(srv->lines[i], prefix, strlen(prefix)) == 0)
			return (int)i;
	return -1;
}

/* An address where nothing listens. */
static uint16_t closed_port(void)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof sin;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

/* ---- the test fixture ---- */

static char tls_dir[64];
static char cert_file[128], key_file[128], other_key_file[128];
static SSL_CTX *server_ctx;

#define MSG                                                                    \
	"From: sender@example.org\r\n"                                         \
	"To: one@example.net\r\n"                                              \
	"Subject: hello\r\n"                                                   \
	"\r\n"                                                                 \
	"Hello.\r\n"                                                           \
	"..a line that starts with a dot\r\n"                                  \
	"..\r\n"                                                               \
	"bye\r\n"

struct fixture {
	char dir[64];
	char msg_path[128];
	struct event_base *base;
	struct spool_rcpt rcpts[3];
	struct spool_envelope env;
	size_t idx[3];
	struct smtp_client_address addrs[4];
	struct smtp_client_request req;
	struct fake_server *servers[3];
	size_t nservers;
	SSL_CTX *client_ctx;
	/* what the callback saw */
	unsigned calls;
	struct smtp_client_rcpt results[3];
	size_t nresults;
	char relay[320];
	bool tls;
	unsigned ticks_after;
	bool timed_out;
	/* several transactions over one client (run_chain) */
	unsigned chain_want;	 /* transactions in all */
	unsigned chain_delay_ms; /* idle time before each smtp_client_next */
	struct smtp_client *client;
	struct event *chain_later;
	bool reusable[4], reused[4];
	struct smtp_client_rcpt first[4]; /* recipient 0 of each */
	unsigned released;		  /* smtp_client_release's done */
};

static void write_file(const char *path, const char *content, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(content, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state)
{
	char cmd[512], err[256];

	(void)state;
	log_setup(LOG_FORMAT_LOGFMT,
		  getenv("TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
	snprintf(tls_dir, sizeof tls_dir, "/tmp/test_smtp_client_tls.XXXXXX");
	if (mkdtemp(tls_dir) == NULL)
		return -1;
	snprintf(cert_file, sizeof cert_file, "%s/cert.pem", tls_dir);
	snprintf(key_file, sizeof key_file, "%s/key.pem", tls_dir);
	snprintf(cmd, sizeof cmd,
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
		 "-days 2 -subj /CN=mx.test -addext subjectAltName=DNS:mx.test "
		 ">/dev/null 2>&1",
		 key_file, cert_file);
	if (system(cmd) != 0)
		return -1;
	snprintf(other_key_file, sizeof other_key_file, "%s/other.pem",
		 tls_dir);
	snprintf(cmd, sizeof cmd,
		 "openssl genpkey -algorithm EC -pkeyopt "
		 "ec_paramgen_curve:prime256v1 -out %s >/dev/null 2>&1",
		 other_key_file);
	if (system(cmd) != 0)
		return -1;
	server_ctx = tls_server_context(cert_file, key_file, err, sizeof err);
	if (server_ctx == NULL) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	SSL_CTX_free(server_ctx);
	unlink(cert_file);
	unlink(key_file);
	unlink(other_key_file);
	rmdir(tls_dir);
	return 0;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof f->dir, "/tmp/test_smtp_client.XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->msg_path, sizeof f->msg_path, "%s/message.msg", f->dir);
	write_file(f->msg_path, MSG, strlen(MSG));
	f->base = event_base_new();
	if (f->base == NULL)
		return -1;

	f->rcpts[0].address = "one@example.net";
	f->rcpts[1].address = "two@example.net";
	f->rcpts[2].address = "three@example.net";
	snprintf(f->env.id, sizeof f->env.id, "TESTQUEUEID00001");
	f->env.sender = "sender@example.org";
	f->env.size = strlen(MSG) - 2; /* unstuffed */
	f->env.rcpts = f->rcpts;
	f->env.rcpt_count = 3;
	for (size_t i = 0; i < 3; i++)
		f->idx[i] = i;

	f->req.env = &f->env;
	f->req.rcpts = f->idx;
	f->req.rcpt_count = 1;
	f->req.helo = "client.test";
	f->req.addrs = f->addrs;
	f->req.tls = TLS_POLICY_NONE;
	f->req.timeout = 5;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < f->nservers; i++)
		fake_server_free(f->servers[i]);
	if (f->client_ctx)
		SSL_CTX_free(f->client_ctx);
	event_base_free(f->base);
	unlink(f->msg_path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void add_address(struct fixture *f, const char *host, uint16_t port)
{
	struct smtp_client_address *a = &f->addrs[f->req.addr_count++];
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->addr;

	memset(a, 0, sizeof *a);
	a->host = host;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a->addrlen = sizeof *sin;
}

#define add_server(f, script)                                                  \
	add_server_(f, script, sizeof(script) / sizeof((script)[0]))

static struct fake_server *
add_server_(struct fixture *f, const struct fake_step *script, size_t nsteps)
{
	struct fake_server *srv =
	    fake_server_new(f->base, script, nsteps, server_ctx);
	f->servers[f->nservers++] = srv;
	add_address(f, "mx.test", srv->port);
	return srv;
}

static void on_result(const struct smtp_client_result *res, void *arg)
{
	struct fixture *f = arg;

	f->calls++;
	assert_true(res->rcpt_count <= 3);
	f->nresults = res->rcpt_count;
	memcpy(f->results, res->rcpts, res->rcpt_count * sizeof *res->rcpts);
	snprintf(f->relay, sizeof f->relay, "%s", res->relay);
	f->tls = res->tls;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fixture *f = arg;

	(void)fd;
	(void)what;
	if (f->calls == 0)
		return;
	for (size_t i = 0; i < f->nservers; i++)
		if (f->servers[i]->open_conns > 0)
			return;
	/* a few turns more for the client to free itself */
	if (++f->ticks_after >= 3)
		event_base_loopbreak(f->base);
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fixture *f = arg;

	(void)fd;
	(void)what;
	f->timed_out = true;
	event_base_loopbreak(f->base);
}

/* Start the client on the message file as it is now. */
static struct smtp_client *start(struct fixture *f)
{
	struct stat st;
	f->req.body.fd = open(f->msg_path, O_RDONLY | O_CLOEXEC);
	assert_true(f->req.body.fd >= 0);
	assert_int_equal(fstat(f->req.body.fd, &st), 0);
	f->req.body.offset = 0;
	f->req.body.length = (uint64_t)st.st_size;
	struct smtp_client *c =
	    smtp_client_start(f->base, &f->req, on_result, f);
	assert_int_equal(close(f->req.body.fd), 0); /* the client has its own */
	return c;
}

/* Run one attempt to its end; returns the seconds it took. */
static double run(struct fixture *f)
{
	struct timeval tick = {0, 10000}, guard = {30, 0};
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct smtp_client *c = start(f);
	assert_non_null(c);
	assert_int_equal(f->calls, 0); /* never from inside start */
	struct event *tev = event_new(f->base, -1, EV_PERSIST, tick_cb, f);
	struct event *gev = evtimer_new(f->base, guard_cb, f);
	event_add(tev, &tick);
	evtimer_add(gev, &guard);
	event_base_dispatch(f->base);
	event_free(tev);
	event_free(gev);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_false(f->timed_out);
	assert_int_equal(f->calls, 1);
	assert_int_equal(f->nresults, f->req.rcpt_count);
	for (size_t i = 0; i < f->nservers; i++)
		if (f->servers[i]->errors[0])
			fail_msg("server %zu: %s", i, f->servers[i]->errors);
	return (double)(t1.tv_sec - t0.tv_sec) +
	       (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

/* spool.c (rcpt_state_name) is not linked into this test */
static const char *state_name(enum rcpt_state state)
{
	static const char *const names[] = {"pending", "deferred", "delivered",
					    "bounced"};
	return (unsigned)state < 4 ? names[state] : "?";
}

static void assert_rcpt(const struct fixture *f, size_t i,
			enum rcpt_state state, const char *dsn,
			const char *reason_part)
{
	const struct smtp_client_rcpt *r = &f->results[i];
	if (r->state != state || strcmp(r->dsn, dsn) != 0 ||
	    (reason_part && strstr(r->reason, reason_part) == NULL))
		fail_msg("recipient %zu: %s %s \"%s\"; want %s %s \"%s\"", i,
			 state_name(r->state), r->dsn, r->reason,
			 state_name(state), dsn,
			 reason_part ? reason_part : "");
}

static void assert_data(struct fake_server *srv, const char *want)
{
	size_t len = evbuffer_get_length(srv->data);
	const char *got = (const char *)evbuffer_pullup(srv->data, -1);
	if (len != strlen(want) || memcmp(got, want, len) != 0)
		fail_msg("data: got %zu octets \"%.*s\", want \"%s\"", len,
			 (int)len, got ? got : "", want);
}

static void relay_of(const struct fake_server *srv, char *buf, size_t len)
{
	snprintf(buf, len, "mx.test[127.0.0.1]:%u", srv->port);
}

/* Scripts share their beginnings. */
#define GREET                                                                  \
	{                                                                      \
		NULL, "220 mx.test ESMTP fake\r\n", FA_REPLY                   \
	}
#define EHLO_PLAIN                                                             \
	{                                                                      \
		"EHLO client.test", "250-mx.test\r\n250 8BITMIME\r\n",         \
		    FA_REPLY                                                   \
	}
#define MAIL_OK                                                                \
	{                                                                      \
		"MAIL FROM:<sender@example.org>", "250 2.1.0 Ok\r\n", FA_REPLY \
	}
#define RCPT_OK(a)                                                             \
	{                                                                      \
		"RCPT TO:<" a ">", "250 2.1.5 Ok\r\n", FA_REPLY                \
	}
#define DATA_GO                                                                \
	{                                                                      \
		"DATA", "354 go ahead\r\n", FA_DATA                            \
	}
#define DOT_OK                                                                 \
	{                                                                      \
		NULL, "250 2.0.0 Ok: queued as XYZ\r\n", FA_REPLY              \
	}

/* ---- the cases ---- */

/* ---- LMTP (RFC 2033) ---- */

/* The dialogue up to the data, for three recipients; `two` answers the
 * second RCPT. */
#define LMTP_UP_TO_DATA(two)                                                   \
	GREET,                                                                 \
	    {"LHLO client.test", "250-lmtp.test\r\n250 PIPELINING\r\n",        \
	     FA_REPLY},                                                        \
	    MAIL_OK, RCPT_OK("one@example.net"),                               \
	    {"RCPT TO:<two@example.net>", two, FA_REPLY},                      \
	    RCPT_OK("three@example.net"), DATA_GO

/* Three recipients over LMTP, the server answering `after` (then
 * closing when `close`) after the data. */
static struct fake_server *run_lmtp(struct fixture *f, const char *two,
				    const char *after, bool close)
{
	const struct fake_step script[] = {
	    LMTP_UP_TO_DATA(two),
	    {NULL, after, close ? FA_CLOSE : FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.lmtp = true;
	f->req.rcpt_count = 3;
	run(f);
	return srv;
}

/* LHLO, then one reply per accepted recipient after the data, each
 * deciding its own recipient in RCPT order. */
static void test_client_lmtp_one_reply_per_recipient(void **state)
{
	struct fixture *f = *state;
	struct fake_server *srv =
	    run_lmtp(f, "250 2.1.5 Ok\r\n",
		     "250 2.0.0 <one@example.net> Saved\r\n"
		     "452 4.2.2 <two@example.net> Mailbox is full\r\n"
		     "550 5.1.1 <three@example.net> User doesn't exist\r\n",
		     false);

	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", "Saved");
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.2.2", "Mailbox is full");
	assert_rcpt(f, 2, RCPT_BOUNCED, "5.1.1", "User doesn't exist");
	assert_int_equal(find_line(srv, "EHLO"), -1);
	assert_true(srv->quit_seen);
}

/* A recipient refused at RCPT has no reply after the data: the replies
 * go to the accepted ones, in order. */
static void test_client_lmtp_replies_skip_refused_recipients(void **state)
{
	struct fixture *f = *state;

	run_lmtp(f, "550 5.1.1 nope\r\n",
		 "451 4.3.0 later\r\n250 2.0.0 Saved\r\n", false);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.3.0", "later");
	assert_rcpt(f, 1, RCPT_BOUNCED, "5.1.1", "nope");
	assert_rcpt(f, 2, RCPT_DELIVERED, "2.0.0", "Saved");
}

/* Fewer replies than recipients, then the connection closes: the
 * recipients without a reply are deferred, never delivered. */
static void test_client_lmtp_close_mid_replies_defers_the_rest(void **state)
{
	struct fixture *f = *state;

	run_lmtp(f, "250 2.1.5 Ok\r\n", "250 2.0.0 Saved\r\n", true);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", "Saved");
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.4.2", "lost connection");
	assert_rcpt(f, 2, RCPT_DEFERRED, "4.4.2", "lost connection");
}

/* No HELO fallback in LMTP: a refused LHLO is that address's failure. */
static void test_client_lmtp_refused_lhlo_is_not_followed_by_helo(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"LHLO client.test", "500 5.5.1 Unknown command\r\n", FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.lmtp = true;
	f->req.rcpt_count = 1;
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.5.1", "Unknown command");
	assert_int_equal(find_line(srv, "HELO"), -1);
}

/* lmtp:unix:PATH with nobody listening: deferred at once with the
 * reason, the server named as the setting names it. */
static void test_client_lmtp_unix_socket_missing_defers(void **state)
{
	struct fixture *f = *state;
	struct smtp_client_address a = {.host = "lmtp:unix:/nonexistent/lmtp"};
	struct sockaddr_un *sun = (struct sockaddr_un *)&a.addr;

	sun->sun_family = AF_UNIX;
	snprintf(sun->sun_path, sizeof sun->sun_path, "/nonexistent/lmtp");
	a.addrlen = sizeof *sun;
	f->req.addrs = &a;
	f->req.addr_count = 1;
	f->req.lmtp = true;
	f->req.rcpt_count = 1;
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.1",
		    "connect to lmtp:unix:/nonexistent/lmtp: No such file");
}

static void test_client_plain_delivery_sends_exact_data(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);
	char relay[64];

	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0",
		    "250 2.0.0 Ok: queued as XYZ");
	assert_string_equal(f->results[0].reason,
			    "250 2.0.0 Ok: queued as XYZ");
	assert_string_equal(transcript(srv), "EHLO client.test\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "QUIT\n");
	assert_data(srv, MSG ".\r\n");
	relay_of(srv, relay, sizeof relay);
	assert_string_equal(f->relay, relay);
	assert_false(f->tls);
	assert_true(srv->quit_seen);
}

static void test_client_large_message_streamed_whole(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);
	size_t len = 700 * 1024;
	char *big = malloc(len + 4);

	assert_non_null(big);
	/* lines of 100 octets: 98 letters and CRLF */
	for (size_t i = 0; i < len; i++)
		big[i] = (i % 100 == 98)   ? '\r'
			 : (i % 100 == 99) ? '\n'
					   : (char)('a' + i % 26);
	write_file(f->msg_path, big, len);
	f->env.size = len;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	memcpy(big + len, ".\r\n", 4);
	assert_data(srv, big);
	free(big);
}

static void test_client_message_without_final_crlf_gets_one(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	write_file(f->msg_path, "Subject: x\r\n\r\nno end", 20);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_data(srv, "Subject: x\r\n\r\nno end\r\n.\r\n");
}

static void test_client_pipelining_sends_mail_and_rcpts_together(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO client.test",
	     "250-mx.test\r\n250-PIPELINING\r\n250 SIZE\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_rcpt(f, 1, RCPT_DELIVERED, "2.0.0", NULL);
	int mail = find_line(srv, "MAIL FROM:");
	int r1 = find_line(srv, "RCPT TO:<one");
	int r2 = find_line(srv, "RCPT TO:<two");
	int data = find_line(srv, "DATA");
	assert_true(mail >= 0 && r1 >= 0 && r2 >= 0 && data >= 0);
	assert_int_equal(srv->line_batch[r1], srv->line_batch[mail]);
	assert_int_equal(srv->line_batch[r2], srv->line_batch[mail]);
	assert_true(srv->line_batch[data] > srv->line_batch[mail]);
	/* SIZE offered without a limit: the parameter is still sent */
	assert_string_equal(srv->lines[mail],
			    "MAIL FROM:<sender@example.org> SIZE=113");
}

static void test_client_without_pipelining_waits_for_each_reply(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	int mail = find_line(srv, "MAIL FROM:");
	int r1 = find_line(srv, "RCPT TO:<one");
	int r2 = find_line(srv, "RCPT TO:<two");
	assert_true(srv->line_batch[r1] > srv->line_batch[mail]);
	assert_true(srv->line_batch[r2] > srv->line_batch[r1]);
	assert_rcpt(f, 1, RCPT_DELIVERED, "2.0.0", NULL);
}

static void test_client_rcpt_550_bounces_only_that_recipient(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    {"RCPT TO:<one@example.net>", "550 5.1.1 No such user\r\n",
	     FA_REPLY},
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.1.1", NULL);
	assert_string_equal(f->results[0].reason, "550 5.1.1 No such user");
	assert_rcpt(f, 1, RCPT_DELIVERED, "2.0.0", NULL);
	assert_data(srv, MSG ".\r\n");
}

static void test_client_rcpt_451_defers_that_recipient(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    {"RCPT TO:<two@example.net>", "451 try later\r\n", FA_REPLY},
	    {"RCPT TO:<three@example.net>", "452 4.5.3 Too many\r\n", FA_REPLY},
	    DATA_GO,
	    DOT_OK,
	};
	add_server(f, script);

	f->req.rcpt_count = 3;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.0.0", "451 try later");
	assert_rcpt(f, 2, RCPT_DEFERRED, "4.5.3", "452 4.5.3 Too many");
}

static void test_client_no_recipient_accepted_sends_no_data(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    {"RCPT TO:<one@example.net>", "550 5.1.1 Unknown\r\n", FA_REPLY},
	    {"RCPT TO:<two@example.net>", "450 4.2.1 Busy\r\n", FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.1.1", NULL);
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.2.1", NULL);
	assert_int_equal(find_line(srv, "DATA"), -1);
	assert_true(srv->quit_seen);
}

static void test_client_final_452_defers(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    {NULL, "452 4.3.1 Insufficient system storage\r\n", FA_REPLY},
	};
	add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	for (size_t i = 0; i < 2; i++)
		assert_rcpt(f, i, RCPT_DEFERRED, "4.3.1",
			    "452 4.3.1 Insufficient system storage");
}

static void test_client_final_554_bounces(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    {"RCPT TO:<two@example.net>", "550 5.1.1 nope\r\n", FA_REPLY},
	    DATA_GO,
	    {NULL, "554 5.7.1 Message refused\r\n", FA_REPLY},
	};
	add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.7.1", "554 5.7.1 Message refused");
	/* already decided by its RCPT reply */
	assert_rcpt(f, 1, RCPT_BOUNCED, "5.1.1", "550 5.1.1 nope");
}

static void test_client_data_command_refused(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    {"DATA", "554 5.5.1 No valid recipients\r\n", FA_REPLY},
	};
	add_server(f, script);

	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.5.1", NULL);
}

static void test_client_mail_550_bounces_everyone(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO client.test", "250-mx.test\r\n250 PIPELINING\r\n", FA_REPLY},
	    {"MAIL FROM:", "550 5.7.1 Sender refused\r\n", FA_REPLY},
	    {"RCPT TO:<one", "503 5.5.1 No MAIL\r\n", FA_REPLY},
	    {"RCPT TO:<two", "503 5.5.1 No MAIL\r\n", FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.7.1", "550 5.7.1 Sender refused");
	assert_rcpt(f, 1, RCPT_BOUNCED, "5.7.1", "550 5.7.1 Sender refused");
	assert_true(srv->quit_seen);
}

static void test_client_mail_451_tries_next_address(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step first[] = {
	    GREET,
	    EHLO_PLAIN,
	    {"MAIL FROM:", "451 4.3.0 Try again\r\n", FA_REPLY},
	};
	static const struct fake_step second[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	struct fake_server *s1 = add_server(f, first);
	struct fake_server *s2 = add_server(f, second);
	char relay[64];

	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_int_equal(s1->accepted, 1);
	assert_int_equal(find_line(s1, "RCPT"), -1);
	assert_data(s2, MSG ".\r\n");
	relay_of(s2, relay, sizeof relay);
	assert_string_equal(f->relay, relay);
}

static void test_client_refused_address_then_next(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};

	add_address(f, "dead.test", closed_port());
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_data(srv, MSG ".\r\n");
}

static void test_client_all_refused_defers_4_4_1(void **state)
{
	struct fixture *f = *state;
	char want[128];
	uint16_t p1 = closed_port(), p2 = closed_port();

	add_address(f, "mx1.test", p1);
	add_address(f, "mx2.test", p2);
	f->req.rcpt_count = 2;
	run(f);
	snprintf(want, sizeof want,
		 "connect to mx2.test[127.0.0.1]:%u: Connection refused", p2);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.1", NULL);
	assert_string_equal(f->results[0].reason, want);
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.4.1", want);
	snprintf(want, sizeof want, "mx2.test[127.0.0.1]:%u", p2);
	assert_string_equal(f->relay, want);
}

static void test_client_no_address_defers(void **state)
{
	struct fixture *f = *state;

	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.1", NULL);
	assert_string_equal(f->relay, "");
}

static void test_client_ehlo_502_falls_back_to_helo(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO client.test", "502 5.5.1 What?\r\n", FA_REPLY},
	    {"HELO client.test", "250 mx.test\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	f->env.body = SMTP_BODY_8BITMIME;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	/* no extensions after HELO: no parameters */
	assert_string_equal(srv->lines[find_line(srv, "MAIL")],
			    "MAIL FROM:<sender@example.org>");
}

static void test_client_ehlo_421_tries_next_address(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step first[] = {
	    GREET,
	    {"EHLO", "421 4.3.2 Shutting down\r\n", FA_CLOSE},
	};
	static const struct fake_step second[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	add_server(f, first);
	add_server(f, second);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
}

static void test_client_greeting_554_only_address_defers(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    {NULL, "554 5.3.2 Not accepting mail\r\n", FA_REPLY},
	};
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.3.2",
		    "554 5.3.2 Not accepting mail");
}

static void test_client_drop_during_data_defers_4_4_2(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    {"DATA", "354 go ahead\r\n", FA_DROP_IN_DATA},
	};
	size_t len = 300 * 1024;
	char *big = malloc(len);

	assert_non_null(big);
	for (size_t i = 0; i < len; i++)
		big[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : 'x';
	write_file(f->msg_path, big, len);
	free(big);
	add_server(f, script);
	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.2", "lost connection");
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.4.2", "lost connection");
}

static void test_client_garbage_greeting_tries_next_address(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step first[] = {
	    {NULL, "HTTP/1.1 400 Bad Request\r\n", FA_REPLY},
	};
	static const struct fake_step second[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	add_server(f, first);
	struct fake_server *s2 = add_server(f, second);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_data(s2, MSG ".\r\n");
}

static void test_client_garbage_after_mail_defers_4_4_2(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    {"RCPT TO:<two@example.net>", "OK fine whatever\r\n", FA_REPLY},
	};
	static const struct fake_step unused[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	};
	add_server(f, script);
	struct fake_server *s2 = add_server(f, unused);
	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.2", "malformed reply");
	assert_rcpt(f, 1, RCPT_DEFERRED, "4.4.2", "malformed reply");
	/* MAIL was accepted: the next address is not tried */
	assert_int_equal(s2->accepted, 0);
}

static void test_client_overlong_reply_line_is_an_error(void **state)
{
	struct fixture *f = *state;
	static char greeting[4000];
	static struct fake_step script[] = {
	    {NULL, greeting, FA_REPLY},
	};

	memset(greeting, 'a', sizeof greeting);
	memcpy(greeting, "220 ", 4);
	memcpy(greeting + sizeof greeting - 3, "\r\n", 3);
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.2", "reply line too long");
}

static void test_client_endless_multiline_reply_is_cut(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO", "250-mx.test\r\n", FA_ENDLESS},
	};
	struct fake_server *srv = add_server(f, script);

	double secs = run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.2", "reply too long");
	assert_true(secs < 4);
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

static void test_client_slow_server_cut_off_by_deadline(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    {NULL, "220 slow.test ESMTP one octet at a time\r\n", FA_SLOW},
	};
	add_server(f, script);
	/* Bytes keep coming, so the idle timeout never fires; the step's
	 * overall limit (ten times smtp_timeout) cuts the server off. */
	f->req.timeout = 2;
	double secs = run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.4.2", "timeout");
	assert_true(secs >= 19.5 && secs < 24);
}

static void test_client_size_too_small_bounces_5_3_4(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO", "250-mx.test\r\n250 SIZE 100\r\n", FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.rcpt_count = 2;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.3.4", NULL);
	assert_rcpt(f, 1, RCPT_BOUNCED, "5.3.4", NULL);
	assert_int_equal(find_line(srv, "MAIL"), -1);
	assert_true(srv->quit_seen);
}

static void test_client_size_and_8bitmime_parameters(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO", "250-mx.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	struct fake_server *srv = add_server(f, script);

	f->env.body = SMTP_BODY_8BITMIME;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_string_equal(srv->lines[find_line(srv, "MAIL")],
			    "MAIL FROM:<sender@example.org> SIZE=113 "
			    "BODY=8BITMIME");
}

static void test_client_smtputf8_missing_bounces_5_6_7(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	};
	struct fake_server *srv = add_server(f, script);

	f->env.smtputf8 = true;
	run(f);
	assert_rcpt(f, 0, RCPT_BOUNCED, "5.6.7",
		    "SMTPUTF8 is required, but was not offered by host");
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

static void test_client_smtputf8_offered_is_requested(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO", "250-mx.test\r\n250 SMTPUTF8\r\n", FA_REPLY},
	    {"MAIL FROM:<sender@example.org> SMTPUTF8", "250 ok\r\n", FA_REPLY},
	    {"RCPT TO:<δοκιμή@example.net>", "250 ok\r\n", FA_REPLY},
	    DATA_GO,
	    DOT_OK,
	};
	add_server(f, script);

	f->env.smtputf8 = true;
	f->rcpts[0].address = "δοκιμή@example.net";
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
}

static void test_client_dsn_parameters_only_when_offered(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step with_dsn[] = {
	    GREET,
	    {"EHLO", "250-mx.test\r\n250 DSN\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	static const struct fake_step without[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    RCPT_OK("two@example.net"),
	    DATA_GO,
	    DOT_OK,
	};

	f->env.ret = SMTP_RET_HDRS;
	f->env.envid = "id+1 x=";
	f->rcpts[0].notify =
	    SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY;
	f->rcpts[0].orcpt = "rfc822;one+40example.net";
	f->rcpts[1].notify = SMTP_NOTIFY_NEVER;
	f->req.rcpt_count = 2;

	struct fake_server *srv = add_server(f, with_dsn);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_string_equal(srv->lines[find_line(srv, "MAIL")],
			    "MAIL FROM:<sender@example.org> RET=HDRS "
			    "ENVID=id+2B1+20x+3D");
	assert_string_equal(srv->lines[find_line(srv, "RCPT TO:<one")],
			    "RCPT TO:<one@example.net> "
			    "NOTIFY=SUCCESS,FAILURE,DELAY "
			    "ORCPT=rfc822;one+40example.net");
	assert_string_equal(srv->lines[find_line(srv, "RCPT TO:<two")],
			    "RCPT TO:<two@example.net> NOTIFY=NEVER");

	/* the same message to a server without DSN */
	f->calls = 0;
	f->ticks_after = 0;
	f->req.addr_count = 0;
	struct fake_server *plain = add_server(f, without);
	run(f);
	assert_string_equal(plain->lines[find_line(plain, "MAIL")],
			    "MAIL FROM:<sender@example.org>");
	assert_string_equal(plain->lines[find_line(plain, "RCPT TO:<one")],
			    "RCPT TO:<one@example.net>");
}

static void test_client_null_sender(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    {"MAIL FROM:<>", "250 ok\r\n", FA_REPLY},
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	add_server(f, script);
	f->env.sender = "";
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
}

static SSL_CTX *client_ctx(struct fixture *f, const char *ca_file)
{
	char err[256];

	f->client_ctx = tls_client_context(ca_file, err, sizeof err);
	if (f->client_ctx == NULL)
		fail_msg("%s", err);
	f->req.tls_ctx = f->client_ctx;
	return f->client_ctx;
}

#define EHLO_TLS_OFFER                                                         \
	{                                                                      \
		"EHLO client.test",                                            \
		    "250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",         \
		    FA_REPLY                                                   \
	}
#define STARTTLS_OK                                                            \
	{                                                                      \
		"STARTTLS", "220 2.0.0 Ready to start TLS\r\n", FA_STARTTLS    \
	}

static void test_client_starttls_may_is_used_when_offered(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,	EHLO_TLS_OFFER, STARTTLS_OK,
	    EHLO_PLAIN, MAIL_OK,	RCPT_OK("one@example.net"),
	    DATA_GO,	DOT_OK,
	};
	uint64_t before = metrics.tls_sessions_total;

	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_true(f->tls);
	assert_int_equal(srv->tls_handshakes, 1);
	assert_int_equal(metrics.tls_sessions_total, before + 1);
	assert_data(srv, MSG ".\r\n");
	assert_string_equal(transcript(srv), "EHLO client.test\n"
					     "STARTTLS\n"
					     "EHLO client.test\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "QUIT\n");
}

static void test_client_starttls_may_without_offer_stays_plain(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_false(f->tls);
}

static void test_client_tls_none_ignores_starttls(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_TLS_OFFER, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_NONE;
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_int_equal(find_line(srv, "STARTTLS"), -1);
}

static void test_client_failed_handshake_under_may_defers_4_7_5(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    {"STARTTLS", "220 go\r\n", FA_STARTTLS_JUNK},
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	add_server(f, script);
	double secs = run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.5", "TLS handshake with");
	assert_non_null(strstr(f->results[0].reason, "failed"));
	assert_true(secs < 2);
}

static void test_client_failed_handshake_under_may_tries_next(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step broken[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    {"STARTTLS", "220 go\r\n", FA_STARTTLS_JUNK},
	};
	static const struct fake_step plain[] = {
	    GREET,   EHLO_PLAIN, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	struct fake_server *s1 = add_server(f, broken);
	struct fake_server *s2 = add_server(f, plain);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_int_equal(s1->accepted, 1);
	assert_data(s2, MSG ".\r\n");
	assert_false(f->tls);
}

static void test_client_encrypt_without_starttls_defers_4_7_4(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {GREET, EHLO_PLAIN};

	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_ENCRYPT;
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.4",
		    "TLS is required, but was not offered by host");
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

/* A whole STARTTLS dialogue under `policy`, trusting the certificates
 * in ca_file (NULL: the system store): the recipient is delivered, over
 * TLS. */
static void check_delivered_over_tls(struct fixture *f, const char *ca_file,
				     enum tls_policy policy)
{
	static const struct fake_step script[] = {
	    GREET,	EHLO_TLS_OFFER, STARTTLS_OK,
	    EHLO_PLAIN, MAIL_OK,	RCPT_OK("one@example.net"),
	    DATA_GO,	DOT_OK,
	};
	client_ctx(f, ca_file);
	f->req.tls = policy;
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_true(f->tls);
}

static void test_client_encrypt_accepts_untrusted_certificate(void **state)
{
	check_delivered_over_tls(*state, NULL, TLS_POLICY_ENCRYPT);
}

static void test_client_verify_untrusted_certificate_defers_4_7_5(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	};
	client_ctx(f,
		   NULL); /* the system store: our certificate is not in it */
	f->req.tls = TLS_POLICY_VERIFY;
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.5", "verification failed");
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

static void test_client_verify_trusted_certificate_delivers(void **state)
{
	check_delivered_over_tls(*state, cert_file, TLS_POLICY_VERIFY);
}

static void test_client_verify_wrong_name_defers_4_7_5(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	};
	client_ctx(f, cert_file);
	f->req.tls = TLS_POLICY_VERIFY;
	f->req.verify_name = "other.test";
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.5", "other.test");
}

/* tls=implicit: no STARTTLS, the greeting and EHLO come over TLS from the
 * first byte, and the certificate is checked as the policy says. */
static void test_client_implicit_tls_greets_over_tls(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_TLS_OFFER, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	client_ctx(f, cert_file);
	f->req.tls = TLS_POLICY_VERIFY;
	f->req.implicit_tls = true;
	struct fake_server *srv = add_server(f, script);
	srv->implicit_tls = true;
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_true(f->tls);
	assert_int_equal(srv->tls_handshakes, 1);
	assert_int_equal(find_line(srv, "STARTTLS"), -1);
	assert_data(srv, MSG ".\r\n");
}

static void test_client_implicit_tls_untrusted_tries_next(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_TLS_OFFER, MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, DOT_OK,
	};
	client_ctx(f,
		   NULL); /* the system store: our certificate is not in it */
	f->req.tls = TLS_POLICY_VERIFY;
	f->req.implicit_tls = true;
	struct fake_server *s1 = add_server(f, script);
	struct fake_server *s2 = add_server(f, script);
	s1->implicit_tls = s2->implicit_tls = true;
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.5", "verification failed");
	assert_int_equal(s1->accepted, 1);
	assert_int_equal(s2->accepted, 1);
	assert_int_equal(find_line(s1, "EHLO"), -1);
	assert_int_equal(find_line(s2, "EHLO"), -1);
}

static void test_client_auth_plain_over_tls(void **state)
{
	struct fixture *f = *state;
	/* base64 of "\0relayuser\0s3cret" */
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH LOGIN PLAIN\r\n",
	     FA_REPLY},
	    {"AUTH PLAIN AHJlbGF5dXNlcgBzM2NyZXQ=", "235 2.7.0 Ok\r\n",
	     FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_ENCRYPT;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "s3cret";
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
	assert_string_equal(srv->lines[find_line(srv, "AUTH")],
			    "AUTH PLAIN AHJlbGF5dXNlcgBzM2NyZXQ=");
}

static void test_client_auth_login_when_plain_not_offered(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH LOGIN\r\n", FA_REPLY},
	    {"AUTH LOGIN", "334 VXNlcm5hbWU6\r\n", FA_REPLY},
	    {"cmVsYXl1c2Vy", "334 UGFzc3dvcmQ6\r\n", FA_REPLY},
	    {"czNjcmV0", "235 2.7.0 Ok\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "s3cret";
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
}

static void test_client_auth_rejected_defers(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH PLAIN\r\n", FA_REPLY},
	    {"AUTH PLAIN", "535 5.7.8 Authentication credentials invalid\r\n",
	     FA_REPLY},
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "wrong";
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.8", "535 5.7.8");
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

static void test_client_auth_refused_without_tls(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n",
	     FA_REPLY},
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_MAY;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "s3cret";
	struct fake_server *srv = add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DEFERRED, "4.7.0",
		    "will not send credentials without TLS");
	assert_int_equal(find_line(srv, "AUTH"), -1);
	assert_int_equal(find_line(srv, "MAIL"), -1);
}

static void test_client_auth_in_clear_with_tls_none(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH PLAIN\r\n", FA_REPLY},
	    {"AUTH PLAIN AHJlbGF5dXNlcgBzM2NyZXQ=", "235 ok\r\n", FA_REPLY},
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    DATA_GO,
	    DOT_OK,
	};
	f->req.tls = TLS_POLICY_NONE;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "s3cret";
	add_server(f, script);
	run(f);
	assert_rcpt(f, 0, RCPT_DELIVERED, "2.0.0", NULL);
}

/* ---- several transactions over one connection ---- */

static void on_chain_result(const struct smtp_client_result *res, void *arg);

static void chain_next(struct fixture *f)
{
	struct stat st;

	f->req.body.fd = open(f->msg_path, O_RDONLY | O_CLOEXEC);
	assert_true(f->req.body.fd >= 0);
	assert_int_equal(fstat(f->req.body.fd, &st), 0);
	f->req.body.offset = 0;
	f->req.body.length = (uint64_t)st.st_size;
	assert_int_equal(
	    smtp_client_next(f->client, &f->req, on_chain_result, f), 0);
	assert_int_equal(close(f->req.body.fd), 0);
}

static void chain_later_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	chain_next(arg);
}

static void on_released(void *arg)
{
	struct fixture *f = arg;

	f->released++;
}

/* Record the outcome; while transactions are wanted, the next goes over
 * the same client (from inside the callback, or after a pause). */
static void on_chain_result(const struct smtp_client_result *res, void *arg)
{
	struct fixture *f = arg;
	unsigned i = f->calls++;

	assert_true(i < 4);
	assert_true(res->rcpt_count >= 1);
	f->reusable[i] = res->reusable;
	f->reused[i] = res->reused;
	f->first[i] = res->rcpts[0];
	if (!res->reusable)
		return;
	if (f->calls >= f->chain_want) {
		smtp_client_release(f->client, on_released, f);
		return;
	}
	if (f->chain_delay_ms == 0) {
		chain_next(f);
		return;
	}
	struct timeval tv = {0, (suseconds_t)f->chain_delay_ms * 1000};
	if (f->chain_later == NULL)
		f->chain_later = evtimer_new(f->base, chain_later_cb, f);
	assert_non_null(f->chain_later);
	evtimer_add(f->chain_later, &tv);
}

static void chain_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fixture *f = arg;

	(void)fd;
	(void)what;
	if (f->calls == 0)
		return;
	unsigned last = f->calls - 1;
	if (f->calls < f->chain_want && f->reusable[last])
		return;
	if (f->reusable[last] && f->released == 0)
		return;
	for (size_t i = 0; i < f->nservers; i++)
		if (f->servers[i]->open_conns > 0)
			return;
	if (++f->ticks_after >= 3)
		event_base_loopbreak(f->base);
}

/* Up to `want` transactions of the message over one client; the last
 * reusable one is released. */
static void run_chain(struct fixture *f, unsigned want)
{
	struct timeval tick = {0, 10000}, guard = {30, 0};
	struct stat st;

	f->chain_want = want;
	f->req.body.fd = open(f->msg_path, O_RDONLY | O_CLOEXEC);
	assert_true(f->req.body.fd >= 0);
	assert_int_equal(fstat(f->req.body.fd, &st), 0);
	f->req.body.length = (uint64_t)st.st_size;
	f->client = smtp_client_start(f->base, &f->req, on_chain_result, f);
	assert_non_null(f->client);
	assert_int_equal(close(f->req.body.fd), 0);
	struct event *tev =
	    event_new(f->base, -1, EV_PERSIST, chain_tick_cb, f);
	struct event *gev = evtimer_new(f->base, guard_cb, f);
	event_add(tev, &tick);
	evtimer_add(gev, &guard);
	event_base_dispatch(f->base);
	event_free(tev);
	event_free(gev);
	if (f->chain_later)
		event_free(f->chain_later);
	assert_false(f->timed_out);
	for (size_t i = 0; i < f->nservers; i++)
		if (f->servers[i]->errors[0])
			fail_msg("server %zu: %s", i, f->servers[i]->errors);
}

static void assert_first(const struct fixture *f, unsigned i,
			 enum rcpt_state state, const char *dsn)
{
	const struct smtp_client_rcpt *r = &f->first[i];
	if (r->state != state || strcmp(r->dsn, dsn) != 0)
		fail_msg("transaction %u: %s %s \"%s\"; want %s %s", i,
			 state_name(r->state), r->dsn, r->reason,
			 state_name(state), dsn);
}

#define ONE_MESSAGE MAIL_OK, RCPT_OK("one@example.net"), DATA_GO, DOT_OK

static void test_client_two_messages_over_one_connection(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    ONE_MESSAGE,
	    ONE_MESSAGE,
	};
	struct fake_server *srv = add_server(f, script);
	uint64_t opened = metrics.relay_connections_total;
	uint64_t reused = metrics.relay_connections_reused_total;

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_int_equal(f->calls, 2);
	assert_first(f, 0, RCPT_DELIVERED, "2.0.0");
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_true(f->reusable[0] && f->reusable[1]);
	assert_false(f->reused[0]);
	assert_true(f->reused[1]);
	/* one greeting, one EHLO; no RSET after a finished transaction */
	assert_int_equal(srv->accepted, 1);
	assert_string_equal(transcript(srv), "EHLO client.test\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "QUIT\n");
	assert_data(srv, MSG ".\r\n" MSG ".\r\n");
	assert_int_equal(f->released, 1);
	assert_int_equal(metrics.relay_connections_total - opened, 1);
	assert_int_equal(metrics.relay_connections_reused_total - reused, 1);
}

static void test_client_reuse_keeps_tls_and_auth(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_TLS_OFFER,
	    STARTTLS_OK,
	    {"EHLO client.test", "250-mx.test\r\n250 AUTH PLAIN\r\n", FA_REPLY},
	    {"AUTH PLAIN ", "235 2.7.0 Ok\r\n", FA_REPLY},
	    ONE_MESSAGE,
	    ONE_MESSAGE,
	};
	client_ctx(f, NULL);
	f->req.tls = TLS_POLICY_ENCRYPT;
	f->req.auth_user = "relayuser";
	f->req.auth_password = "s3cret";
	f->req.max_transactions = 10;
	struct fake_server *srv = add_server(f, script);
	run_chain(f, 2);
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_true(f->reused[1]);
	assert_int_equal(srv->accepted, 1);
	assert_int_equal(srv->tls_handshakes, 1);
	int auth = find_line(srv, "AUTH");
	assert_true(auth >= 0);
	/* EHLO STARTTLS EHLO AUTH, MAIL RCPT DATA twice, QUIT */
	assert_int_equal(srv->nlines, 11);
	assert_int_equal(find_line(srv, "RSET"), -1);
}

/* The server drops the idle connection before the next message comes:
 * that message goes on a new connection, as if it were the first. */
static void test_client_idle_connection_closed_by_server(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN,
	    MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, {NULL, "250 2.0.0 Ok\r\n", FA_CLOSE},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 10;
	f->chain_delay_ms = 300; /* the EOF comes first */
	run_chain(f, 2);
	assert_int_equal(f->calls, 2);
	assert_first(f, 0, RCPT_DELIVERED, "2.0.0");
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_false(f->reused[1]); /* it went on a fresh connection */
	assert_int_equal(srv->accepted, 2);
	assert_data(srv, MSG ".\r\n" MSG ".\r\n");
}

/* The server answers the next MAIL with a 421 and closes: not the
 * message's failure either. */
static void test_client_421_to_mail_on_reused_connection(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    ONE_MESSAGE,
	    {"MAIL FROM:", "421 4.4.2 mx.test idle too long\r\n", FA_CLOSE},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_int_equal(f->calls, 2);
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_false(f->reused[1]);
	assert_int_equal(srv->accepted, 2);
	/* the second connection ran the script from the start */
	assert_data(srv, MSG ".\r\n" MSG ".\r\n");
}

/* Once MAIL is accepted on a reused connection, trouble is the
 * message's as on any connection. */
static void
test_client_drop_after_mail_on_reused_connection_defers(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    ONE_MESSAGE,
	    MAIL_OK,
	    {"RCPT TO:", NULL, FA_CLOSE},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_int_equal(f->calls, 2);
	assert_first(f, 1, RCPT_DEFERRED, "4.4.2");
	assert_false(f->reusable[1]);
	assert_int_equal(srv->accepted, 1);
}

static void test_client_rset_after_refused_transaction(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    {"RCPT TO:<one@example.net>", "550 5.1.1 No such user\r\n",
	     FA_REPLY},
	    {"RSET", "250 2.0.0 Ok\r\n", FA_REPLY},
	    ONE_MESSAGE,
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_first(f, 0, RCPT_BOUNCED, "5.1.1");
	assert_true(f->reusable[0]);
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_true(f->reused[1]);
	assert_int_equal(srv->accepted, 1);
	assert_string_equal(transcript(srv), "EHLO client.test\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "RSET\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "QUIT\n");
}

/* A refused RSET: the connection is not trusted with another message. */
static void test_client_refused_rset_ends_the_connection(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    MAIL_OK,
	    RCPT_OK("one@example.net"),
	    {"DATA", "554 5.5.1 No thanks\r\n", FA_REPLY},
	    {"RSET", "500 5.5.1 What?\r\n", FA_REPLY},
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_int_equal(f->calls, 1);
	assert_first(f, 0, RCPT_BOUNCED, "5.5.1");
	assert_false(f->reusable[0]);
	assert_true(srv->quit_seen);
}

static void test_client_transactions_capped_per_connection(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET, EHLO_PLAIN, ONE_MESSAGE, ONE_MESSAGE, ONE_MESSAGE,
	};
	struct fake_server *srv = add_server(f, script);

	f->req.max_transactions = 2;
	run_chain(f, 3);
	assert_int_equal(f->calls, 2);
	assert_true(f->reusable[0]);
	assert_false(f->reusable[1]); /* the second is the last */
	assert_first(f, 1, RCPT_DELIVERED, "2.0.0");
	assert_int_equal(f->released, 0); /* freed itself after QUIT */
	assert_true(srv->quit_seen);
	assert_int_equal(srv->accepted, 1);
	assert_string_equal(transcript(srv), "EHLO client.test\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "MAIL FROM:<sender@example.org>\n"
					     "RCPT TO:<one@example.net>\n"
					     "DATA\n"
					     "QUIT\n");
}

/* Without max_transactions the client is as it always was. */
static void test_client_no_reuse_by_default(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,
	    EHLO_PLAIN,
	    ONE_MESSAGE,
	};
	struct fake_server *srv = add_server(f, script);

	run_chain(f, 2);
	assert_int_equal(f->calls, 1);
	assert_false(f->reusable[0]);
	assert_true(srv->quit_seen);
}

/* A 421 at the end of data: delivered or not, the server is leaving. */
static void test_client_421_reply_is_not_reused(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    GREET,   EHLO_PLAIN,
	    MAIL_OK, RCPT_OK("one@example.net"),
	    DATA_GO, {NULL, "421 4.3.2 shutting down\r\n", FA_REPLY},
	};
	add_server(f, script);

	f->req.max_transactions = 10;
	run_chain(f, 2);
	assert_int_equal(f->calls, 1);
	assert_first(f, 0, RCPT_DEFERRED, "4.3.2");
	assert_false(f->reusable[0]);
}

static void test_client_cancel_runs_no_callback(void **state)
{
	struct fixture *f = *state;
	static const struct fake_step script[] = {
	    {NULL, "220 slow.test\r\n", FA_SLOW},
	};
	struct timeval half = {0, 300000};

	add_server(f, script);
	struct smtp_client *c = start(f);
	assert_non_null(c);
	event_base_loopexit(f->base, &half);
	event_base_dispatch(f->base);
	smtp_client_cancel(c);
	/* the server sees the connection go */
	half.tv_sec = 1;
	event_base_loopexit(f->base, &half);
	event_base_dispatch(f->base);
	assert_int_equal(f->calls, 0);
	assert_int_equal(f->servers[0]->open_conns, 0);
}

static void test_client_bad_recipient_index_is_refused(void **state)
{
	struct fixture *f = *state;
	size_t bad = 7;

	f->req.rcpts = &bad;
	assert_null(start(f));
}

/* ---- tls.c ---- */

static void test_tls_server_context_names_a_missing_file(void **state)
{
	char err[512] = "";

	(void)state;
	assert_null(tls_server_context("/nonexistent/cert.pem", key_file, err,
				       sizeof err));
	assert_non_null(strstr(err, "/nonexistent/cert.pem"));
}

static void
test_tls_server_context_refuses_a_key_that_does_not_match(void **state)
{
	char err[512] = "";

	(void)state;
	assert_null(
	    tls_server_context(cert_file, other_key_file, err, sizeof err));
	assert_non_null(strstr(err, other_key_file));
	if (strstr(err, "does not match") == NULL)
		fail_msg("%s", err);
}

static void test_tls_contexts_refuse_old_protocols(void **state)
{
	char err[256];
	SSL_CTX *client = tls_client_context(cert_file, err, sizeof err);

	(void)state;
	assert_non_null(client);
	assert_int_equal(SSL_CTX_get_min_proto_version(client), TLS1_2_VERSION);
	assert_int_equal(SSL_CTX_get_min_proto_version(server_ctx),
			 TLS1_2_VERSION);
	assert_true(SSL_CTX_get_options(server_ctx) & SSL_OP_NO_COMPRESSION);
	assert_int_equal(SSL_CTX_get_verify_mode(client), SSL_VERIFY_NONE);
	SSL_CTX_free(client);
}

static void test_tls_client_context_names_a_missing_ca_file(void **state)
{
	char err[512] = "";

	(void)state;
	assert_null(tls_client_context("/nonexistent/ca.pem", err, sizeof err));
	assert_non_null(strstr(err, "/nonexistent/ca.pem"));
}

static void test_tls_client_prepare_sni_for_names_only(void **state)
{
	char err[256];
	SSL_CTX *ctx = tls_client_context(NULL, err, sizeof err);
	SSL *ssl;

	(void)state;
	assert_non_null(ctx);

	ssl = SSL_new(ctx);
	assert_int_equal(tls_client_prepare(ssl, "mx.example.com.", false), 0);
	assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name),
			    "mx.example.com");
	assert_int_equal(SSL_get_verify_mode(ssl), SSL_VERIFY_NONE);
	SSL_free(ssl);

	ssl = SSL_new(ctx);
	assert_int_equal(tls_client_prepare(ssl, "192.0.2.1", true), 0);
	assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
	assert_int_equal(SSL_get_verify_mode(ssl), SSL_VERIFY_PEER);
	SSL_free(ssl);

	ssl = SSL_new(ctx);
	assert_int_equal(tls_client_prepare(ssl, "2001:db8::1", false), 0);
	assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
	SSL_free(ssl);

	ssl = SSL_new(ctx);
	assert_int_equal(tls_client_prepare(ssl, "", true), -1);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_client_plain_delivery_sends_exact_data),
	    T(test_client_lmtp_one_reply_per_recipient),
	    T(test_client_lmtp_replies_skip_refused_recipients),
	    T(test_client_lmtp_close_mid_replies_defers_the_rest),
	    T(test_client_lmtp_refused_lhlo_is_not_followed_by_helo),
	    T(test_client_lmtp_unix_socket_missing_defers),
	    T(test_client_large_message_streamed_whole),
	    T(test_client_message_without_final_crlf_gets_one),
	    T(test_client_pipelining_sends_mail_and_rcpts_together),
	    T(test_client_without_pipelining_waits_for_each_reply),
	    T(test_client_rcpt_550_bounces_only_that_recipient),
	    T(test_client_rcpt_451_defers_that_recipient),
	    T(test_client_no_recipient_accepted_sends_no_data),
	    T(test_client_final_452_defers),
	    T(test_client_final_554_bounces),
	    T(test_client_data_command_refused),
	    T(test_client_mail_550_bounces_everyone),
	    T(test_client_mail_451_tries_next_address),
	    T(test_client_refused_address_then_next),
	    T(test_client_all_refused_defers_4_4_1),
	    T(test_client_no_address_defers),
	    T(test_client_ehlo_502_falls_back_to_helo),
	    T(test_client_ehlo_421_tries_next_address),
	    T(test_client_greeting_554_only_address_defers),
	    T(test_client_drop_during_data_defers_4_4_2),
	    T(test_client_garbage_greeting_tries_next_address),
	    T(test_client_garbage_after_mail_defers_4_4_2),
	    T(test_client_overlong_reply_line_is_an_error),
	    T(test_client_endless_multiline_reply_is_cut),
	    T(test_client_slow_server_cut_off_by_deadline),
	    T(test_client_size_too_small_bounces_5_3_4),
	    T(test_client_size_and_8bitmime_parameters),
	    T(test_client_smtputf8_missing_bounces_5_6_7),
	    T(test_client_smtputf8_offered_is_requested),
	    T(test_client_dsn_parameters_only_when_offered),
	    T(test_client_null_sender),
	    T(test_client_starttls_may_is_used_when_offered),
	    T(test_client_starttls_may_without_offer_stays_plain),
	    T(test_client_tls_none_ignores_starttls),
	    T(test_client_failed_handshake_under_may_defers_4_7_5),
	    T(test_client_failed_handshake_under_may_tries_next),
	    T(test_client_encrypt_without_starttls_defers_4_7_4),
	    T(test_client_encrypt_accepts_untrusted_certificate),
	    T(test_client_verify_untrusted_certificate_defers_4_7_5),
	    T(test_client_verify_trusted_certificate_delivers),
	    T(test_client_verify_wrong_name_defers_4_7_5),
	    T(test_client_implicit_tls_greets_over_tls),
	    T(test_client_implicit_tls_untrusted_tries_next),
	    T(test_client_auth_plain_over_tls),
	    T(test_client_auth_login_when_plain_not_offered),
	    T(test_client_auth_rejected_defers),
	    T(test_client_auth_refused_without_tls),
	    T(test_client_auth_in_clear_with_tls_none),
	    T(test_client_two_messages_over_one_connection),
	    T(test_client_reuse_keeps_tls_and_auth),
	    T(test_client_idle_connection_closed_by_server),
	    T(test_client_421_to_mail_on_reused_connection),
	    T(test_client_drop_after_mail_on_reused_connection_defers),
	    T(test_client_rset_after_refused_transaction),
	    T(test_client_refused_rset_ends_the_connection),
	    T(test_client_transactions_capped_per_connection),
	    T(test_client_no_reuse_by_default),
	    T(test_client_421_reply_is_not_reused),
	    T(test_client_cancel_runs_no_callback),
	    T(test_client_bad_recipient_index_is_refused),
	};
	const struct CMUnitTest tls_tests[] = {
	    cmocka_unit_test(test_tls_server_context_names_a_missing_file),
	    cmocka_unit_test(
		test_tls_server_context_refuses_a_key_that_does_not_match),
	    cmocka_unit_test(test_tls_contexts_refuse_old_protocols),
	    cmocka_unit_test(test_tls_client_context_names_a_missing_ca_file),
	    cmocka_unit_test(test_tls_client_prepare_sni_for_names_only),
	};
	int failed =
	    cmocka_run_group_tests(tls_tests, group_setup, group_teardown);
	return failed +
	       cmocka_run_group_tests(tests, group_setup, group_teardown);
}
