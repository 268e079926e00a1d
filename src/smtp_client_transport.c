/*
 * The outbound SMTP client's connection (see smtp_client.h and
 * smtp_client_internal.h): the walk over the addresses, a socket bound to
 * the source address or a UNIX-domain one, TLS (STARTTLS or implicit) and
 * the peer's verification, DANE's included, reading reply lines, and the
 * bufferevent and deadline callbacks that feed the transaction in
 * smtp_client.c. Transport never decides: it reports what happened, and
 * the transaction's functions decide the recipients. The client's life
 * cycle (start, next, release, cancel) is here too.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "facteur/lineio.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/smtp_client.h"
#include "facteur/smtp_client_internal.h"
#include "facteur/smtp_reply.h"
#include "facteur/status_code.h"
#include "facteur/tls.h"
#include "facteur/transport.h"

#define REPLY_LINE_MAX 2048 /* octets, without the line end */
#define DEFAULT_TIMEOUT 300

static void client_free(struct smtp_client *c);
static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* smtp_timeout is idle time (SPEC.md §3): the bufferevent's read timeout
 * enforces it. The step deadline only cuts off a server that keeps a
 * reply trickling for many times that long. Connecting and the TLS
 * handshake get smtp_timeout itself. */
#define STEP_LIMIT_FACTOR 10

void smtp_client_arm_deadline(struct smtp_client *c, unsigned seconds)
{
	if (seconds == c->timeout && c->state != CLIENT_CONNECTING &&
	    c->state != CLIENT_TLS_HANDSHAKE)
		seconds *= STEP_LIMIT_FACTOR;
	struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
	if (evtimer_add(c->deadline, &tv) < 0)
		fatal("smtp_client: cannot add a timer");
}

void smtp_client_schedule_step(struct smtp_client *c)
{
	struct timeval now = {0, 0};
	if (evtimer_add(c->step, &now) < 0)
		fatal("smtp_client: cannot add a timer");
}

void smtp_client_close_connection(struct smtp_client *c)
{
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	evtimer_del(c->deadline);
}

/* A delivery attempt DANE governed ended its TLS step: counted, and
 * logged when it stopped the delivery. */
void smtp_client_dane_outcome(const struct smtp_client *c, bool success,
			      const char *reason)
{
	metrics.tls_policy[METRICS_TLS_POLICY_DANE]
			  [success ? METRICS_TLS_POLICY_SUCCESS
				   : METRICS_TLS_POLICY_FAILURE]++;
	if (!success)
		log_event(LOG_LEVEL_WARN, "tls_policy_failed",
			  LOG_S("queue_id", c->queue_id),
			  LOG_S("relay", c->relay), LOG_S("tls_policy", "dane"),
			  LOG_S("verified", "no"), LOG_S("reason", reason));
}

static const char *tls_name(const struct smtp_client *c)
{
	if (c->verify_name)
		return c->verify_name;
	return c->addrs[c->next_addr - 1].host;
}

void smtp_client_start_tls(struct smtp_client *c)
{
	char err[256];
	SSL *ssl;

	ERR_clear_error();
	ssl = SSL_new(c->tls_ctx);
	if (ssl == NULL) {
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_TLS_FAILED),
		    "cannot set up TLS: %s", tls_error_string(err, sizeof err));
		return;
	}
	const struct client_address *a = smtp_client_current_address(c);
	bool dane = a->dane == DANE_VERIFY;
	if (tls_client_prepare(ssl, tls_name(c),
			       !dane && (c->tls_policy == TLS_POLICY_VERIFY ||
					 c->requiretls)) < 0 ||
	    (dane &&
	     tls_client_dane(ssl, a->host, a->tlsa, a->tlsa_count) < 0)) {
		SSL_free(ssl);
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_TLS_FAILED),
		    "cannot set up TLS for %s: %s", tls_name(c),
		    tls_error_string(err, sizeof err));
		return;
	}
	/* RFC 3207 §5: nothing the server sent before the handshake counts;
	 * the plain bufferevent goes with what it buffered */
	if (transport_start_tls(c->base, &c->bev, ssl, false) == -1) {
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_LOCAL_ERROR),
		    "cannot set up TLS: out of memory");
		return;
	}
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	struct timeval tv = {.tv_sec = c->timeout, .tv_usec = 0};
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		fatal("smtp_client: bufferevent_enable");
	c->tls_step = true;
	c->tls_handshake = true;
	smtp_client_enter_state(c, CLIENT_TLS_HANDSHAKE);
	smtp_client_arm_deadline(c, c->timeout);
}

/* ---- transport ---- */

static bool awaits_reply(enum client_state state)
{
	switch (state) {
	case CLIENT_IDLE:
	case CLIENT_CONNECTING:
	case CLIENT_TLS_HANDSHAKE:
	case CLIENT_READY:
	case CLIENT_DONE:
		return false;
	default:
		return true;
	}
}

/* An idle connection had news: EOF, an error, its timeout, or words (a
 * 421 before closing). Whatever it was, the connection is of no more
 * use; the client waits on, and reconnects if given a message. */
static void idle_lost(struct smtp_client *c, const char *why)
{
	log_event(LOG_LEVEL_DEBUG, "smtp_client_idle_closed",
		  LOG_S("relay", c->relay), LOG_S("reason", why));
	smtp_client_close_connection(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	/* the limit counts the line's end: a CR LF after REPLY_LINE_MAX */
	char line[REPLY_LINE_MAX + 2];

	if (c->state == CLIENT_READY) {
		idle_lost(c, "data from the server");
		return;
	}

	/* stop when the connection is closed or replaced (STARTTLS) */
	while (c->bev == bev) {
		size_t len = 0;
		bool discarding = false; /* a line too long ends it all */
		enum lineio_result r =
		    lineio_read(in, LINEIO_END_CRLF_OR_LF, sizeof line,
				&discarding, line, &len);
		if (r == LINEIO_NONE)
			return;
		/* (a LF alone leaves room for one more octet) */
		if (r != LINEIO_LINE || len > REPLY_LINE_MAX) {
			smtp_client_protocol_error(c, "reply line too long");
			return;
		}
		if (!awaits_reply(c->state)) {
			smtp_client_protocol_error(c, "unexpected data");
			return;
		}

		bool ehlo =
		    c->state == CLIENT_EHLO || c->state == CLIENT_EHLO_TLS;
		switch (smtp_reply_feed(&c->reply, line, len, ehlo)) {
		case SMTP_REPLY_MORE:
			break;
		case SMTP_REPLY_INVALID:
			if (c->state == CLIENT_QUIT) {
				smtp_client_quit_done(c);
				return;
			}
			smtp_client_protocol_error(
			    c, c->reply.lines >= SMTP_REPLY_LINES_MAX
				   ? "reply too long"
				   : "malformed reply");
			return;
		case SMTP_REPLY_DONE:
			smtp_client_on_reply(c);
			smtp_reply_init(&c->reply);
			break;
		}
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;

	if (c->bev == bev && c->state == CLIENT_BODY)
		smtp_client_fill_body(c);
}

/* An IP address as text, "" for another family. */
static void address_text(const struct sockaddr_storage *ss, char *buf,
			 size_t len)
{
	buf[0] = '\0';
	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr,
			  buf, (socklen_t)len);
	else if (ss->ss_family == AF_INET6)
		inet_ntop(AF_INET6,
			  &((const struct sockaddr_in6 *)ss)->sin6_addr, buf,
			  (socklen_t)len);
}

/* Our end of a connection, for TLS reports. */
static void local_address(struct smtp_client *c, evutil_socket_t fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	c->local_ip[0] = '\0';
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
		address_text(&ss, c->local_ip, sizeof c->local_ip);
}

/* Why the connection ended, in words. */
static void describe_io_error(struct smtp_client *c, short what, char *buf,
			      size_t len)
{
	unsigned long e = bufferevent_get_openssl_error(c->bev);
	int err = EVUTIL_SOCKET_ERROR();

	if (e != 0) {
		ERR_error_string_n(e, buf, len);
		ERR_clear_error();
	} else if (what & BEV_EVENT_EOF) {
		snprintf(buf, len, "connection closed by the server");
	} else if (err != 0) {
		snprintf(buf, len, "%s", strerror(err));
	} else {
		snprintf(buf, len, "connection failed");
	}
}

static void handshake_failed(struct smtp_client *c, short what)
{
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	char why[256];

	if (what & BEV_EVENT_TIMEOUT) {
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_TLS_FAILED),
		    "TLS handshake with %s timed out", c->relay);
		return;
	}
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	c->verify_result = vr;
	if (smtp_client_current_address(c)->dane == DANE_VERIFY) {
		char reason[300];
		snprintf(reason, sizeof reason,
			 "DANE verification failed for %s: %s", tls_name(c),
			 vr != X509_V_OK ? X509_verify_cert_error_string(vr)
					 : "handshake failed");
		smtp_client_dane_outcome(c, false, reason);
		smtp_client_connection_failed(
		    c, status_code_str(STATUS_TLS_FAILED), reason);
		return;
	}
	if (c->requiretls && vr != X509_V_OK) {
		char lack[300];
		snprintf(lack, sizeof lack,
			 "the certificate (name %s) does not verify: %s",
			 tls_name(c), X509_verify_cert_error_string(vr));
		smtp_client_requiretls_refused(c, lack);
		return;
	}
	if (c->tls_policy == TLS_POLICY_VERIFY && vr != X509_V_OK) {
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_TLS_FAILED),
		    "TLS certificate verification failed for %s "
		    "(name %s): %s",
		    c->relay, tls_name(c), X509_verify_cert_error_string(vr));
		return;
	}
	describe_io_error(c, what, why, sizeof why);
	smtp_client_connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				       "TLS handshake with %s failed: %s",
				       c->relay, why);
}

/* After a handshake: was the peer verified, and how? A DANE host's
 * handshake succeeds only with a match. */
static bool peer_verified(struct smtp_client *c, struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	if (ssl == NULL)
		return false;
	c->verify_result = SSL_get_verify_result(ssl);
	if (smtp_client_current_address(c)->dane == DANE_VERIFY) {
		bool matched = SSL_get0_dane_authority(ssl, NULL, NULL) >= 0;
		smtp_client_dane_outcome(c, matched, "no TLSA record matched");
		return matched;
	}
	/* the name to check is set on every session (tls_client_prepare);
	 * only `verify` makes the handshake fail on it */
	return SSL_get_verify_result(ssl) == X509_V_OK &&
	       SSL_get0_peer_certificate(ssl) != NULL;
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_client *c = arg;
	char why[256];

	if (c->bev != bev)
		return;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->state == CLIENT_CONNECTING) {
			/* A command group, the body and its final dot go out
			 * in separate writes: without this, Nagle holds each
			 * last small write for the server's delayed ACK. */
			int one = 1;
			setsockopt(bufferevent_getfd(bev), IPPROTO_TCP,
				   TCP_NODELAY, &one, sizeof one);
			local_address(c, bufferevent_getfd(bev));
			if (!c->lmtp)
				metrics.relay_connections_total++;
			if (c->implicit_tls) {
				smtp_client_start_tls(c);
				return;
			}
			smtp_client_enter_state(c, CLIENT_GREETING);
			smtp_client_arm_deadline(c, c->timeout);
		} else if (c->state == CLIENT_TLS_HANDSHAKE) {
			c->tls = true;
			c->verified = peer_verified(c, bev);
			metrics_tls_session(METRICS_OUTBOUND);
			snprintf(c->tls_version, sizeof c->tls_version, "%s",
				 transport_tls_version(bev));
			log_event(LOG_LEVEL_DEBUG, "tls",
				  LOG_S("queue_id", c->queue_id),
				  LOG_S("relay", c->relay),
				  LOG_S("version", transport_tls_version(bev)),
				  LOG_S("cipher", transport_tls_cipher(bev)));
			if (c->implicit_tls) {
				/* the greeting comes over TLS */
				smtp_client_enter_state(c, CLIENT_GREETING);
				smtp_client_arm_deadline(c, c->timeout);
			} else {
				smtp_client_send_ehlo(c, CLIENT_EHLO_TLS);
			}
		}
		return;
	}
	if (c->state == CLIENT_READY) {
		idle_lost(c, what & BEV_EVENT_TIMEOUT ? "timeout"
			     : what & BEV_EVENT_EOF   ? "closed by the server"
						      : "connection error");
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    c->state == CLIENT_BODY) {
		/* silence is expected while we send; the write side and the
		 * step deadline watch this state */
		bufferevent_enable(bev, EV_READ);
		return;
	}
	switch (c->state) {
	case CLIENT_QUIT:
		smtp_client_quit_done(c);
		return;
	case CLIENT_CONNECTING:
		if (what & BEV_EVENT_TIMEOUT) {
			smtp_client_connection_failedf(
			    c, status_code_str(STATUS_NO_ANSWER),
			    "connect to %s: Connection timed out", c->relay);
		} else {
			int err = EVUTIL_SOCKET_ERROR();
			/* libevent reports an immediate refusal without
			 * errno */
			smtp_client_connection_failedf(
			    c, status_code_str(STATUS_NO_ANSWER),
			    "connect to %s: %s", c->relay,
			    err != 0 && err != EINPROGRESS && err != EAGAIN
				? strerror(err)
				: strerror(ECONNREFUSED));
		}
		return;
	case CLIENT_TLS_HANDSHAKE:
		handshake_failed(c, what);
		return;
	default:
		break;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_BAD_CONNECTION),
		    "timeout (%us) with %s %s", c->timeout, c->relay,
		    smtp_client_state_doing[c->state]);
		return;
	}
	describe_io_error(c, what, why, sizeof why);
	smtp_client_connection_failedf(
	    c, status_code_str(STATUS_BAD_CONNECTION),
	    "lost connection with %s %s (%s)", c->relay,
	    smtp_client_state_doing[c->state], why);
}

/* The step deadline: a server that trickles a reply for ever is cut off
 * too. */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;

	(void)fd;
	(void)what;
	switch (c->state) {
	case CLIENT_QUIT:
		smtp_client_quit_done(c);
		break;
	case CLIENT_CONNECTING:
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_NO_ANSWER),
		    "connect to %s: Connection timed out", c->relay);
		break;
	case CLIENT_TLS_HANDSHAKE:
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_TLS_FAILED),
		    "TLS handshake with %s timed out", c->relay);
		break;
	case CLIENT_IDLE:
	case CLIENT_READY:
	case CLIENT_DONE:
		break;
	default:
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_BAD_CONNECTION),
		    "timeout (%us) with %s %s", c->timeout, c->relay,
		    smtp_client_state_doing[c->state]);
		break;
	}
}

static void format_relay(struct smtp_client *c, const struct client_address *a)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (c->lmtp || a->addr.ss_family == AF_UNIX) {
		/* "lmtp:unix:/run/dovecot/lmtp": the setting names it */
		snprintf(c->relay, sizeof c->relay, "%s",
			 a->host ? a->host : "");
		return;
	}
	if (a->addr.ss_family == AF_INET) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)&a->addr;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		port = ntohs(sin->sin_port);
	} else if (a->addr.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)&a->addr;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		port = ntohs(sin6->sin6_port);
	}
	snprintf(c->relay, sizeof c->relay, "%s[%s]:%u", a->host ? a->host : "",
		 ip, port);
}

/* A socket bound to the source address, for bufferevent_socket_connect;
 * -1 with the reason in last_reason (logged) when it cannot be. */
static int bound_socket(struct smtp_client *c, const struct client_address *a)
{
	socklen_t len = c->source.ss_family == AF_INET6
			    ? sizeof(struct sockaddr_in6)
			    : sizeof(struct sockaddr_in);
	int fd = -1;
	int err = EAFNOSUPPORT; /* an IPv4 source for an IPv6 address */

	if (c->source.ss_family == a->addr.ss_family) {
		fd = socket(a->addr.ss_family,
			    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		err = errno;
		if (fd >= 0 &&
		    bind(fd, (const struct sockaddr *)&c->source, len) < 0) {
			err = errno;
			(void)close(fd); /* never connected */
			fd = -1;
		}
	}
	if (fd >= 0)
		return fd;
	char source[INET6_ADDRSTRLEN] = "?";
	const void *in =
	    c->source.ss_family == AF_INET6
		? (const void *)&((struct sockaddr_in6 *)&c->source)->sin6_addr
		: (const void *)&((struct sockaddr_in *)&c->source)->sin_addr;
	(void)inet_ntop(c->source.ss_family, in, source, sizeof source);
	snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
		 status_code_str(STATUS_LOCAL_ERROR));
	snprintf(c->last_reason, sizeof c->last_reason,
		 "cannot bind to source %s for %s: %s", source, c->relay,
		 strerror(err));
	log_event(LOG_LEVEL_WARN, "relay_bind_failed",
		  LOG_S("queue_id", c->queue_id), LOG_S("relay", c->relay),
		  LOG_S("source", source), LOG_S("reason", strerror(err)));
	return -1;
}

/* A UNIX-domain socket (lmtp:unix:PATH) connects at once or not at all,
 * so the greeting is next; -1 with the reason in last_reason (logged). */
static int unix_connect(struct smtp_client *c, const struct client_address *a)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int err = errno;

	if (fd >= 0 &&
	    connect(fd, (const struct sockaddr *)&a->addr, a->addrlen) == 0)
		return fd;
	if (fd >= 0) {
		err = errno;
		(void)close(fd); /* never connected */
	}
	snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
		 status_code_str(STATUS_NO_ANSWER));
	snprintf(c->last_reason, sizeof c->last_reason, "connect to %s: %s",
		 c->relay, strerror(err));
	log_event(LOG_LEVEL_INFO, "relay_failed",
		  LOG_S("queue_id", c->queue_id), LOG_S("relay", c->relay),
		  LOG_S("state", smtp_client_state_names[c->state]),
		  LOG_S("dsn", c->last_dsn), LOG_S("reason", c->last_reason));
	return -1;
}

/* Connect to the next address; with none left, defer what is undecided
 * with the last error. */
void smtp_client_connect_next(struct smtp_client *c)
{
	struct timeval tv = {.tv_sec = c->timeout, .tv_usec = 0};

	/* the connection given up, for the TLS reports */
	if (c->next_addr > 0 && c->tls_step && !c->connection_reported &&
	    c->connection_given_up) {
		struct smtp_client_result session;
		memset(&session, 0, sizeof session);
		smtp_client_describe_connection(c, &session);
		c->connection_given_up(&session, c->arg);
	}

	while (c->next_addr < c->addr_count) {
		const struct client_address *a = &c->addrs[c->next_addr++];

		format_relay(c, a);
		c->tls = false;
		c->verified = false;
		c->tls_step = false;
		c->tls_handshake = false;
		c->connection_reported = false;
		c->verify_result = X509_V_OK;
		c->local_ip[0] = '\0';
		address_text(&a->addr, c->peer_ip, sizeof c->peer_ip);
		c->ext = 0;
		c->ext_size = 0;
		c->transactions = 0;
		c->reused = false;
		c->broken = false;
		smtp_client_reset_transaction(c);

		bool local = a->addr.ss_family == AF_UNIX;
		int fd = local		 ? unix_connect(c, a)
			 : c->has_source ? bound_socket(c, a)
					 : -1;
		if ((local || c->has_source) && fd < 0)
			continue;
		c->bev =
		    bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (c->bev == NULL) {
			if (fd >= 0)
				(void)close(fd); /* never connected */
			snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
				 status_code_str(STATUS_LOCAL_ERROR));
			snprintf(c->last_reason, sizeof c->last_reason,
				 "cannot create a socket: out of memory");
			continue;
		}
		bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
		bufferevent_set_timeouts(c->bev, &tv, &tv);
		if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
			fatal("smtp_client: bufferevent_enable");
		if (local) {
			smtp_client_enter_state(c, CLIENT_GREETING);
			smtp_client_arm_deadline(c, c->timeout);
			return;
		}
		smtp_client_enter_state(c, CLIENT_CONNECTING);
		smtp_client_arm_deadline(c, c->timeout);
		if (bufferevent_socket_connect(
			c->bev, (const struct sockaddr *)&a->addr,
			(int)a->addrlen) < 0) {
			int err = errno;
			smtp_client_close_connection(c);
			snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
				 status_code_str(STATUS_NO_ANSWER));
			snprintf(c->last_reason, sizeof c->last_reason,
				 "connect to %s: %s", c->relay, strerror(err));
			log_event(
			    LOG_LEVEL_INFO, "relay_failed",
			    LOG_S("queue_id", c->queue_id),
			    LOG_S("relay", c->relay),
			    LOG_S("state", smtp_client_state_names[c->state]),
			    LOG_S("dsn", c->last_dsn),
			    LOG_S("reason", c->last_reason));
			smtp_client_enter_state(c, CLIENT_IDLE);
			continue;
		}
		return;
	}
	/* a REQUIRETLS refusal by the last host is final (RFC 8689 §4.2.1);
	 * a host that could not be reached may be tried again */
	bool refused =
	    strcmp(c->last_dsn, status_code_str(STATUS_ENCRYPTION_NEEDED)) == 0;
	smtp_client_decide_all(c, false, refused ? RCPT_BOUNCED : RCPT_DEFERRED,
			       c->last_dsn, c->last_reason);
	smtp_client_finish(c, false);
}

static void step_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;

	(void)fd;
	(void)what;
	if (c->state == CLIENT_DONE) {
		if (c->release_done)
			c->release_done(c->release_arg);
		client_free(c);
	} else if (c->state == CLIENT_READY && c->next_pending) {
		smtp_client_begin_next(c);
	} else if (c->state == CLIENT_IDLE && c->rcpt_count == 0) {
		smtp_client_finish(c, false);
	} else if (c->state == CLIENT_IDLE) {
		smtp_client_connect_next(c);
	}
}

/* ---- life cycle ---- */

/* What belongs to one message: its spool file, sender, recipients. */
static void free_message(struct smtp_client *c)
{
	if (c->fd >= 0)
		(void)close(c->fd); /* read-only */
	c->fd = -1;
	for (size_t i = 0; i < c->rcpt_count; i++) {
		free(c->rcpts[i].address);
		free(c->rcpts[i].orcpt);
	}
	free(c->rcpts);
	free(c->results);
	free(c->order);
	c->rcpts = NULL;
	c->results = NULL;
	c->order = NULL;
	c->rcpt_count = 0;
	free(c->sender);
	free(c->envid);
	c->sender = NULL;
	c->envid = NULL;
}

static void client_free(struct smtp_client *c)
{
	smtp_client_close_connection(c);
	if (c->deadline)
		event_free(c->deadline);
	if (c->step)
		event_free(c->step);
	free_message(c);
	for (size_t i = 0; i < c->addr_count; i++) {
		free(c->addrs[i].host);
		for (size_t j = 0; j < c->addrs[i].tlsa_count; j++)
			free((void *)c->addrs[i].tlsa[j].data);
		free(c->addrs[i].tlsa);
	}
	free(c->addrs);
	free(c->helo);
	free(c->verify_name);
	if (c->tls_ctx)
		SSL_CTX_free(c->tls_ctx);
	free(c->auth_user);
	if (c->auth_password) {
		explicit_bzero(c->auth_password, strlen(c->auth_password));
		free(c->auth_password);
	}
	free(c);
}

/* strdup that keeps NULL, and tells a failure from it. */
static bool dup_opt(char **dst, const char *src)
{
	*dst = NULL;
	if (src == NULL)
		return true;
	*dst = strdup(src);
	return *dst != NULL;
}

/* Copy the message part of a request; false when out of memory or a
 * recipient index is bad (free_message cleans up). */
static bool load_message(struct smtp_client *c,
			 const struct smtp_client_request *req)
{
	const struct spool_envelope *env = req->env;

	c->fd = fcntl(req->body.fd, F_DUPFD_CLOEXEC, 0);
	c->body_offset = req->body.offset;
	c->body_length = req->body.length;
	snprintf(c->queue_id, sizeof c->queue_id, "%s", env->id);
	c->size = env->size;
	c->body = env->body;
	c->smtputf8 = env->smtputf8;
	c->requiretls = (env->flags & SPOOL_FLAG_REQUIRETLS) != 0;
	c->ret = env->ret;
	/* The relay groups recipients by sender: the first one's (an SRS
	 * address for a forwarded recipient) is the transaction's. */
	const char *sender = env->sender ? env->sender : "";
	if (req->rcpt_count > 0 && req->rcpts[0] < env->rcpt_count &&
	    env->rcpts[req->rcpts[0]].sender != NULL)
		sender = env->rcpts[req->rcpts[0]].sender;
	if (c->fd < 0 || !dup_opt(&c->sender, sender) ||
	    !dup_opt(&c->envid, env->envid))
		return false;
	if (req->rcpt_count > 0) {
		c->rcpts = calloc(req->rcpt_count, sizeof *c->rcpts);
		c->results = calloc(req->rcpt_count, sizeof *c->results);
		c->order = calloc(req->rcpt_count, sizeof *c->order);
		if (c->rcpts == NULL || c->results == NULL || c->order == NULL)
			return false;
	}
	c->rcpt_count = req->rcpt_count;
	for (size_t i = 0; i < req->rcpt_count; i++) {
		if (req->rcpts[i] >= env->rcpt_count)
			return false;
		const struct spool_rcpt *sr = &env->rcpts[req->rcpts[i]];
		c->results[i].state = RCPT_PENDING;
		c->rcpts[i].notify = sr->notify;
		if (!dup_opt(&c->rcpts[i].address, sr->address) ||
		    !dup_opt(&c->rcpts[i].orcpt, sr->orcpt) ||
		    c->rcpts[i].address == NULL)
			return false;
	}
	return true;
}

/* An address's DANE records, data and all. */
static bool copy_tlsa(struct client_address *to,
		      const struct smtp_client_address *from)
{
	to->dane = from->dane;
	if (from->tlsa_count == 0)
		return true;
	to->tlsa = calloc(from->tlsa_count, sizeof *to->tlsa);
	if (to->tlsa == NULL)
		return false;
	for (size_t i = 0; i < from->tlsa_count; i++) {
		unsigned char *data = malloc(from->tlsa[i].data_len + 1);
		if (data == NULL)
			return false;
		memcpy(data, from->tlsa[i].data, from->tlsa[i].data_len);
		to->tlsa[i] = from->tlsa[i];
		to->tlsa[i].data = data;
		to->tlsa_count++;
	}
	return true;
}

struct smtp_client *smtp_client_start(struct event_base *base,
				      const struct smtp_client_request *req,
				      smtp_client_cb cb, void *arg)
{
	struct smtp_client *c = calloc(1, sizeof *c);

	if (c == NULL)
		return NULL;
	c->base = base;
	c->cb = cb;
	c->arg = arg;
	c->fd = -1;
	c->state = CLIENT_IDLE;
	c->timeout = req->timeout ? req->timeout : DEFAULT_TIMEOUT;
	c->max_transactions = req->max_transactions;
	if (req->source != NULL) {
		c->has_source = true;
		c->source = *req->source;
	}
	c->tls_policy = req->tls;
	c->implicit_tls = req->implicit_tls;
	c->lmtp = req->lmtp;
	c->connection_given_up = req->connection_given_up;
	snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
		 status_code_str(STATUS_NO_ANSWER));
	snprintf(c->last_reason, sizeof c->last_reason,
		 "no address to connect to");

	c->deadline = evtimer_new(base, deadline_cb, c);
	c->step = evtimer_new(base, step_cb, c);
	if (c->deadline == NULL || c->step == NULL)
		goto fail;
	if (!load_message(c, req) ||
	    !dup_opt(&c->helo, req->helo ? req->helo : "localhost") ||
	    !dup_opt(&c->verify_name, req->verify_name) ||
	    !dup_opt(&c->auth_user, req->auth_user) ||
	    !dup_opt(&c->auth_password,
		     req->auth_user
			 ? (req->auth_password ? req->auth_password : "")
			 : NULL))
		goto fail;

	if (req->addr_count > 0) {
		c->addrs = calloc(req->addr_count, sizeof *c->addrs);
		if (c->addrs == NULL)
			goto fail;
	}
	c->addr_count = req->addr_count;
	for (size_t i = 0; i < req->addr_count; i++) {
		const struct smtp_client_address *a = &req->addrs[i];
		if (!dup_opt(&c->addrs[i].host, a->host) ||
		    a->addrlen > sizeof c->addrs[i].addr)
			goto fail;
		memcpy(&c->addrs[i].addr, &a->addr, a->addrlen);
		c->addrs[i].addrlen = a->addrlen;
		if (!copy_tlsa(&c->addrs[i], a))
			goto fail;
	}

	if (req->tls_ctx) {
		if (SSL_CTX_up_ref(req->tls_ctx) != 1)
			goto fail;
		c->tls_ctx = req->tls_ctx;
	}
	/* the first connect runs from the loop, so the callback never runs
	 * before smtp_client_start has returned */
	smtp_client_schedule_step(c);
	return c;
fail:
	client_free(c);
	return NULL;
}

/* The owner's calls that need an idle client. */
static void assert_ready(const struct smtp_client *c, const char *what)
{
	if (c->state != CLIENT_READY || c->next_pending)
		fatal("smtp_client: %s in state %s", what,
		      smtp_client_state_names[c->state]);
}

int smtp_client_next(struct smtp_client *client,
		     const struct smtp_client_request *req, smtp_client_cb cb,
		     void *arg)
{
	struct smtp_client *c = client;

	assert_ready(c, "smtp_client_next");
	free_message(c);
	c->cb = cb;
	c->arg = arg;
	if (!load_message(c, req)) {
		free_message(c);
		smtp_client_release(c, NULL, NULL);
		return -1;
	}
	/* from the loop, so the callback never runs before we return */
	c->next_pending = true;
	smtp_client_schedule_step(c);
	return 0;
}

void smtp_client_release(struct smtp_client *client, void (*done)(void *arg),
			 void *arg)
{
	struct smtp_client *c = client;

	assert_ready(c, "smtp_client_release");
	c->release_done = done;
	c->release_arg = arg;
	if (c->bev) {
		c->quit_replies = 1;
		smtp_client_send_line(c, "QUIT");
		smtp_client_enter_state(c, CLIENT_QUIT);
		smtp_client_arm_deadline(c, QUIT_WAIT);
	} else {
		smtp_client_enter_state(c, CLIENT_DONE);
		smtp_client_schedule_step(c);
	}
}

void smtp_client_cancel(struct smtp_client *client)
{
	if (client == NULL)
		return;
	client_free(client);
}
