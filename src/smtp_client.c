/*
 * The outbound SMTP client (see smtp_client.h).
 *
 * One struct per attempt and one state machine in the style of
 * OpenSMTPD's mta_session: a state is entered by sending its command,
 * and on_reply() switches on the state to read the answer. Transport
 * (connect, lines, TLS, timers) feeds it and never decides.
 *
 * Until MAIL is accepted, any trouble with an address (refused, timed
 * out, 4xx, garbage, TLS) closes that connection and moves on to the
 * next address; no recipient is decided before MAIL. Once MAIL is
 * accepted the attempt is committed to this connection: RCPT replies
 * decide recipients one by one, DATA decides the accepted ones, and
 * trouble defers whatever is still undecided.
 *
 * In LMTP mode the greeting is answered with LHLO, and the final dot
 * with one reply per accepted recipient, in RCPT order (RFC 2033 §4.2):
 * each decides its recipient; a connection that fails before every
 * reply came defers the recipients still undecided, so that none is
 * delivered twice or lost.
 *
 * With implicit_tls, TLS starts as soon as TCP is up (RFC 8314) and the
 * greeting is read over it; STARTTLS is then never sent.
 *
 * With max_transactions above one, a clean end leaves the connection
 * open (CLIENT_READY) for smtp_client_next; a transaction left half-done
 * is RSET first. A reused connection that fails before the reply to MAIL
 * was closed by the server while idle: the message starts over on a
 * fresh connection, from the first address.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
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

#include "facteur/auth.h"
#include "facteur/lineio.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/smtp_client.h"
#include "facteur/smtp_proto.h"
#include "facteur/smtp_reply.h"
#include "facteur/spool.h"
#include "facteur/state_list.h"
#include "facteur/status_code.h"
#include "facteur/text.h"
#include "facteur/tls.h"
#include "facteur/transport.h"

#define REPLY_LINE_MAX 2048	   /* octets, without the line end */
#define BODY_CHUNK (64 * 1024)	   /* read from the spool at a time */
#define BODY_LOW_WATER (16 * 1024) /* refill below this */
#define QUIT_WAIT 2		   /* seconds for the reply to QUIT */
#define DEFAULT_TIMEOUT 300

/* Each state once: its name in the enum and in the debug log, and what
 * we were doing in it, for reasons ("lost connection with X while
 * ..."). */
#define CLIENT_STATES(X)                                                       \
	/* between addresses */                                                \
	X(CLIENT_IDLE, "idle", "between connections")                          \
	X(CLIENT_CONNECTING, "connecting", "while connecting")                 \
	X(CLIENT_GREETING, "greeting", "while waiting for the greeting")       \
	X(CLIENT_EHLO, "ehlo", "in reply to EHLO")                             \
	X(CLIENT_HELO, "helo", "in reply to HELO")                             \
	X(CLIENT_STARTTLS, "starttls", "in reply to STARTTLS")                 \
	X(CLIENT_TLS_HANDSHAKE, "tls_handshake", "during the TLS handshake")   \
	X(CLIENT_EHLO_TLS, "ehlo_tls", "in reply to EHLO after STARTTLS")      \
	/* AUTH PLAIN <response>, or AUTH LOGIN */                             \
	X(CLIENT_AUTH, "auth", "in reply to AUTH")                             \
	X(CLIENT_AUTH_LOGIN_USER, "auth_login_user",                           \
	  "in reply to the AUTH LOGIN user name")                              \
	X(CLIENT_AUTH_LOGIN_PASS, "auth_login_pass",                           \
	  "in reply to the AUTH LOGIN password")                               \
	X(CLIENT_MAIL, "mail", "in reply to MAIL FROM")                        \
	X(CLIENT_RCPT, "rcpt", "in reply to RCPT TO")                          \
	X(CLIENT_DATA, "data", "in reply to DATA")                             \
	/* streaming the message */                                            \
	X(CLIENT_BODY, "body", "while sending the message body")               \
	/* waiting for the reply to the final dot */                           \
	X(CLIENT_DOT, "dot", "in reply to the end of data")                    \
	/* a half-done transaction, before the report */                       \
	X(CLIENT_RSET, "rset", "in reply to RSET")                             \
	/* reported, connection kept for the next message (or closed by the    \
	 * server meanwhile: bev NULL) */                                      \
	X(CLIENT_READY, "ready", "while idle")                                 \
	X(CLIENT_QUIT, "quit", "in reply to QUIT")                             \
	/* reported, connection closed, being freed */                         \
	X(CLIENT_DONE, "done", "after the end")

enum client_state { CLIENT_STATES(STATE_LIST_ENUM) };

static const char *const state_names[] = {CLIENT_STATES(STATE_LIST_NAME)};

#define CLIENT_STATE_DOING(state, name, doing) [state] = doing,
static const char *const state_doing[] = {CLIENT_STATES(CLIENT_STATE_DOING)};
#undef CLIENT_STATE_DOING

struct client_rcpt {
	char *address;
	char *orcpt;	 /* "type;xtext" as stored, or NULL */
	unsigned notify; /* SMTP_NOTIFY_* */
	bool accepted;	 /* 2xx to RCPT in this transaction */
};

struct client_address {
	char *host;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	enum dane_state dane;
	struct dns_tlsa *tlsa; /* owned, data included */
	size_t tlsa_count;
};

struct smtp_client {
	struct event_base *base;
	enum client_state state;
	smtp_client_cb cb;
	void *arg;

	/* the request, copied: the scheduler may change its envelope
	 * while we run */
	char queue_id[SPOOL_ID_LEN + 1];
	char *sender;
	char *envid;
	uint64_t size;
	enum smtp_body body;
	bool smtputf8;
	bool requiretls; /* the message's REQUIRETLS (RFC 8689) */
	enum smtp_ret ret;
	struct client_rcpt *rcpts;
	struct smtp_client_rcpt *results; /* parallel to rcpts */
	size_t rcpt_count;
	uint64_t body_offset; /* the message: fd, from here, this long */
	uint64_t body_length;
	uint64_t body_sent;
	char *helo;
	struct client_address *addrs;
	size_t addr_count;
	enum tls_policy tls_policy;
	bool implicit_tls;
	char *verify_name;
	SSL_CTX *tls_ctx; /* a reference of our own */
	char *auth_user;
	char *auth_password;
	unsigned timeout;
	unsigned max_transactions;
	bool has_source;
	struct sockaddr_storage source;
	bool lmtp;

	/* the current connection */
	size_t next_addr;
	struct bufferevent *bev;
	char relay[320];
	bool tls;
	char tls_version[16]; /* of the handshake, for the delivered line */
	/* the peer's certificate: matched by DANE under DANE, else valid
	 * for tls_name */
	bool verified;
	unsigned ext; /* SMTP_EXT_* offered */
	uint64_t ext_size;
	struct smtp_reply reply;
	bool mail_accepted;
	size_t *order; /* recipients in RCPT order */
	size_t order_count;
	size_t rcpt_sent, rcpt_replied, accepted_count;
	size_t dot_next; /* LMTP: the next in `order` to read a reply for */
	bool auth_login; /* AUTH LOGIN rather than PLAIN */
	unsigned quit_replies; /* replies still due once QUIT is sent */
	int fd;		       /* the spool file, -1 until needed */
	char body_last;	       /* last octet of the body sent */
	unsigned transactions; /* reported on this connection */
	bool reused;	       /* this transaction follows one on it */
	bool broken;	       /* a 421 or a refused RSET: never reuse */
	bool next_pending;     /* smtp_client_next, to start from the loop */
	void (*release_done)(void *arg);
	void *release_arg;

	/* why the last address failed, for when none is left */
	char last_dsn[12];
	char last_reason[512];

	struct event *deadline; /* the overall limit of each step */
	struct event *step;	/* runs the next thing from the loop */
};

static void connect_next(struct smtp_client *c);

/* The address of the current (or last) connection. */
static const struct client_address *current_address(const struct smtp_client *c)
{
	return &c->addrs[c->next_addr - 1];
}

static void client_free(struct smtp_client *c);
static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void enter_state(struct smtp_client *c, enum client_state state)
{
	if (c->state != state)
		log_event(LOG_LEVEL_DEBUG, "smtp_client_state",
			  LOG_S("queue_id", c->queue_id),
			  LOG_S("relay", c->relay),
			  LOG_S("from", state_names[c->state]),
			  LOG_S("to", state_names[state]));
	c->state = state;
}

/* smtp_timeout is idle time (SPEC.md §3): the bufferevent's read timeout
 * enforces it. The step deadline only cuts off a server that keeps a
 * reply trickling for many times that long. Connecting and the TLS
 * handshake get smtp_timeout itself. */
#define STEP_LIMIT_FACTOR 10

static void arm_deadline(struct smtp_client *c, unsigned seconds)
{
	if (seconds == c->timeout && c->state != CLIENT_CONNECTING &&
	    c->state != CLIENT_TLS_HANDSHAKE)
		seconds *= STEP_LIMIT_FACTOR;
	struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
	if (evtimer_add(c->deadline, &tv) < 0)
		fatal("smtp_client: cannot add a timer");
}

static void schedule_step(struct smtp_client *c)
{
	struct timeval now = {0, 0};
	if (evtimer_add(c->step, &now) < 0)
		fatal("smtp_client: cannot add a timer");
}

static void close_connection(struct smtp_client *c)
{
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	evtimer_del(c->deadline);
}

static void send_line(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void send_line(struct smtp_client *c, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* Send a command and wait for its reply in `state`. */
static void send_command(struct smtp_client *c, enum client_state state,
			 const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void send_command(struct smtp_client *c, enum client_state state,
			 const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
	enter_state(c, state);
	arm_deadline(c, c->timeout);
}

/* ---- outcomes ---- */

/* snprintf for texts that may be cut short on purpose (reasons are
 * bounded by the result struct). */
static void text_printf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void text_printf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* "550 5.1.1 No such user": the reply as a reason. */
static void reply_reason(const struct smtp_reply *r, char *buf, size_t len)
{
	if (r->esc[0] && r->text_len > 0)
		text_printf(buf, len, "%d %s %s", r->code, r->esc, r->text);
	else if (r->esc[0] || r->text_len > 0)
		text_printf(buf, len, "%d %s", r->code,
			    r->esc[0] ? r->esc : r->text);
	else
		text_printf(buf, len, "%d", r->code);
}

/* The reply's enhanced code in class `cls` (a 5xx that only defers keeps
 * its detail), or "<cls>.0.0" when the server gave none. */
static void reply_dsn(const struct smtp_reply *r, char cls, char *out,
		      size_t len)
{
	if (r->esc[0])
		snprintf(out, len, "%c%s", cls, r->esc + 1);
	else
		snprintf(out, len, "%c.0.0", cls);
}

static void decide(struct smtp_client *c, size_t i, enum rcpt_state state,
		   const char *dsn, const char *reason)
{
	struct smtp_client_rcpt *res = &c->results[i];

	if (res->state != RCPT_PENDING)
		return;
	res->state = state;
	snprintf(res->dsn, sizeof res->dsn, "%s", dsn);
	snprintf(res->reason, sizeof res->reason, "%s", reason);
}

/* Every recipient not decided yet (only_accepted: those the server took
 * with RCPT, waiting for the data). */
static void decide_all(struct smtp_client *c, bool only_accepted,
		       enum rcpt_state state, const char *dsn,
		       const char *reason)
{
	for (size_t i = 0; i < c->rcpt_count; i++)
		if (!only_accepted || c->rcpts[i].accepted)
			decide(c, i, state, dsn, reason);
}

/* What a reply to DATA or to the final dot makes of a recipient. */
static enum rcpt_state reply_outcome(const struct smtp_reply *r, char *dsn,
				     size_t dsnlen, char *reason,
				     size_t reasonlen)
{
	reply_reason(r, reason, reasonlen);
	switch (r->code / 100) {
	case 2:
		if (r->esc[0])
			reply_dsn(r, '2', dsn, dsnlen);
		else
			snprintf(dsn, dsnlen, "%s", status_code_str(STATUS_OK));
		return RCPT_DELIVERED;
	case 5:
		reply_dsn(r, '5', dsn, dsnlen);
		return RCPT_BOUNCED;
	default:
		reply_dsn(r, '4', dsn, dsnlen);
		return RCPT_DEFERRED;
	}
}

/* The outcome of the accepted recipients from a reply to DATA or to the
 * final dot, or from a reply that cut the data short. */
static void decide_accepted_by_reply(struct smtp_client *c)
{
	char dsn[12], reason[512];
	enum rcpt_state state =
	    reply_outcome(&c->reply, dsn, sizeof dsn, reason, sizeof reason);

	decide_all(c, true, state, dsn, reason);
}

/* LMTP: the next accepted recipient in RCPT order, or false when every
 * one has had its reply after the data. */
static bool lmtp_next_accepted(struct smtp_client *c, size_t *i)
{
	while (c->dot_next < c->order_count) {
		size_t k = c->order[c->dot_next++];
		if (c->rcpts[k].accepted) {
			*i = k;
			return true;
		}
	}
	return false;
}

/* The connection may carry another transaction: at a command boundary,
 * no reply still due, no 421, below the cap. */
static bool can_keep(const struct smtp_client *c, bool quit)
{
	return quit && c->bev != NULL && !c->broken &&
	       c->transactions + 1 < c->max_transactions &&
	       c->rcpt_sent == c->rcpt_replied;
}

/*
 * Every outcome is known: report, then say QUIT when the conversation is
 * at a command boundary (best effort, QUIT_WAIT seconds), else close;
 * or keep the connection for smtp_client_next.
 */
static void finish(struct smtp_client *c, bool quit)
{
	struct smtp_client_result result;

	for (size_t i = 0; i < c->rcpt_count; i++)
		if (c->results[i].state == RCPT_PENDING)
			fatal("smtp_client: recipient %zu of %s has no outcome "
			      "in state %s",
			      i, c->queue_id, state_names[c->state]);

	bool keep = can_keep(c, quit);
	if (keep && c->mail_accepted && c->state != CLIENT_DOT) {
		/* MAIL accepted but no final reply to the data (every RCPT
		 * or DATA refused): the next MAIL would be out of sequence.
		 * The report waits for the reply to RSET. */
		send_command(c, CLIENT_RSET, "RSET");
		return;
	}
	/* the body is sent: an idle connection holds no spool file */
	if (c->fd >= 0) {
		(void)close(c->fd);
		c->fd = -1;
	}

	memset(&result, 0, sizeof result);
	result.rcpts = c->results;
	result.rcpt_count = c->rcpt_count;
	snprintf(result.relay, sizeof result.relay, "%s", c->relay);
	result.tls = c->tls;
	result.tls_version = c->tls ? c->tls_version : "none";
	result.verified = c->tls && c->verified;
	result.dane =
	    c->next_addr > 0 && current_address(c)->dane == DANE_VERIFY;
	result.reused = c->reused;
	result.reusable = keep;
	c->transactions++;
	if (c->reused && !c->lmtp) /* the relay's connections only */
		metrics.relay_connections_reused_total++;

	if (keep) {
		evtimer_del(c->deadline);
		enter_state(c, CLIENT_READY);
	} else if (quit && c->bev) {
		/* replies still due to pipelined commands come first */
		c->quit_replies =
		    (unsigned)(c->rcpt_sent - c->rcpt_replied) + 1;
		send_line(c, "QUIT");
		enter_state(c, CLIENT_QUIT);
		arm_deadline(c, QUIT_WAIT);
	} else {
		close_connection(c);
		enter_state(c, CLIENT_DONE);
		schedule_step(c);
	}
	c->cb(&result, c->arg);
}

/* The end after QUIT: freed from the loop, never from inside our own
 * bufferevent callbacks. */
static void quit_done(struct smtp_client *c)
{
	close_connection(c);
	enter_state(c, CLIENT_DONE);
	schedule_step(c);
}

/*
 * This connection failed. Before MAIL was accepted: remember why and try
 * the next address. After: the undecided recipients are deferred, since
 * the server may hold a part of the transaction.
 */
static void connection_failed(struct smtp_client *c, const char *dsn,
			      const char *reason)
{
	if (c->reused && !c->mail_accepted) {
		/* the server dropped the connection while it sat idle, or is
		 * dropping it now: nothing of this message was taken */
		log_event(LOG_LEVEL_DEBUG, "smtp_client_stale",
			  LOG_S("queue_id", c->queue_id),
			  LOG_S("relay", c->relay),
			  LOG_S("state", state_names[c->state]),
			  LOG_S("reason", reason));
		close_connection(c);
		c->reused = false;
		c->next_addr = 0;
		enter_state(c, CLIENT_IDLE);
		connect_next(c);
		return;
	}
	log_event(LOG_LEVEL_INFO, "relay_failed",
		  LOG_S("queue_id", c->queue_id), LOG_S("relay", c->relay),
		  LOG_S("state", state_names[c->state]), LOG_S("dsn", dsn),
		  LOG_S("reason", reason));
	close_connection(c);
	if (c->mail_accepted) {
		decide_all(c, false, RCPT_DEFERRED,
			   status_code_str(STATUS_BAD_CONNECTION), reason);
		finish(c, false);
		return;
	}
	snprintf(c->last_dsn, sizeof c->last_dsn, "%s", dsn);
	snprintf(c->last_reason, sizeof c->last_reason, "%s", reason);
	enter_state(c, CLIENT_IDLE);
	connect_next(c);
}

static void connection_failedf(struct smtp_client *c, const char *dsn,
			       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void connection_failedf(struct smtp_client *c, const char *dsn,
			       const char *fmt, ...)
{
	char reason[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	connection_failed(c, dsn, reason);
}

/* A negative (or senseless) reply before MAIL was accepted. */
static void reply_failed(struct smtp_client *c)
{
	char dsn[12], reason[512];

	reply_reason(&c->reply, reason, sizeof reason);
	reply_dsn(&c->reply, '4', dsn, sizeof dsn);
	connection_failed(c, dsn, reason);
}

static void protocol_error(struct smtp_client *c, const char *what)
{
	connection_failedf(c, status_code_str(STATUS_BAD_CONNECTION),
			   "%s from %s %s", what, c->relay,
			   state_doing[c->state]);
}

/* Everything undecided gets one outcome before any command is sent. */
static void refuse_all(struct smtp_client *c, enum rcpt_state state,
		       const char *dsn, const char *reason)
{
	decide_all(c, false, state, dsn, reason);
	finish(c, true);
}

/* ---- the conversation ---- */

static void send_ehlo(struct smtp_client *c, enum client_state state)
{
	c->ext = 0;
	c->ext_size = 0;
	send_command(c, state, "%s %s", c->lmtp ? "LHLO" : "EHLO", c->helo);
}

/* TLS is required of this connection: by the policy, or by DANE for its
 * host (RFC 7672 §2.2: TLSA records, usable or not, mean TLS) */
static bool tls_required(const struct smtp_client *c)
{
	return c->tls_policy == TLS_POLICY_ENCRYPT ||
	       c->tls_policy == TLS_POLICY_VERIFY || c->requiretls ||
	       current_address(c)->dane != DANE_NONE;
}

/* What a REQUIRETLS message lacks on this connection (RFC 8689 §4.2.1:
 * TLS, verified, to a server that offers REQUIRETLS), or NULL. */
static const char *requiretls_lacks(const struct smtp_client *c)
{
	if (!c->requiretls)
		return NULL;
	if (!c->tls)
		return "no TLS";
	if (!c->verified)
		return "the certificate is not verified";
	if (!(c->ext & SMTP_EXT_REQUIRETLS))
		return "REQUIRETLS is not offered";
	return NULL;
}

static void connection_failed(struct smtp_client *c, const char *dsn,
			      const char *reason);

/* A REQUIRETLS message cannot go over this connection: the next
 * address, or, with none left (connect_next), a bounce with 5.7.10. */
static void requiretls_refused(struct smtp_client *c, const char *lack)
{
	char reason[512];
	snprintf(reason, sizeof reason,
		 "REQUIRETLS: %s by host %s, the message is not sent", lack,
		 c->relay);
	if (c->reused)
		refuse_all(c, RCPT_BOUNCED,
			   status_code_str(STATUS_ENCRYPTION_NEEDED), reason);
	else
		connection_failed(c, status_code_str(STATUS_ENCRYPTION_NEEDED),
				  reason);
}

/* A delivery attempt DANE governed ended its TLS step: counted, and
 * logged when it stopped the delivery. */
static void dane_outcome(const struct smtp_client *c, bool success,
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

static void start_tls(struct smtp_client *c)
{
	char err[256];
	SSL *ssl;

	ERR_clear_error();
	ssl = SSL_new(c->tls_ctx);
	if (ssl == NULL) {
		connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				   "cannot set up TLS: %s",
				   tls_error_string(err, sizeof err));
		return;
	}
	const struct client_address *a = current_address(c);
	bool dane = a->dane == DANE_VERIFY;
	if (tls_client_prepare(ssl, tls_name(c),
			       !dane && (c->tls_policy == TLS_POLICY_VERIFY ||
					 c->requiretls)) < 0 ||
	    (dane &&
	     tls_client_dane(ssl, a->host, a->tlsa, a->tlsa_count) < 0)) {
		SSL_free(ssl);
		connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				   "cannot set up TLS for %s: %s", tls_name(c),
				   tls_error_string(err, sizeof err));
		return;
	}
	/* RFC 3207 §5: nothing the server sent before the handshake counts;
	 * the plain bufferevent goes with what it buffered */
	if (transport_start_tls(c->base, &c->bev, ssl, false) == -1) {
		connection_failedf(c, status_code_str(STATUS_LOCAL_ERROR),
				   "cannot set up TLS: out of memory");
		return;
	}
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	struct timeval tv = {.tv_sec = c->timeout, .tv_usec = 0};
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		fatal("smtp_client: bufferevent_enable");
	enter_state(c, CLIENT_TLS_HANDSHAKE);
	arm_deadline(c, c->timeout);
}

static void start_auth(struct smtp_client *c)
{
	if (!c->tls && c->tls_policy != TLS_POLICY_NONE) {
		connection_failed(c, status_code_str(STATUS_SECURITY_TRANSIENT),
				  "will not send credentials without TLS");
		return;
	}
	if (c->ext & SMTP_EXT_AUTH_PLAIN) {
		/* RFC 4616: authzid NUL authcid NUL passwd, authzid empty */
		size_t ulen = strlen(c->auth_user);
		size_t plen = strlen(c->auth_password);
		size_t rawlen = ulen + plen + 2;
		size_t b64len = (rawlen + 2) / 3 * 4 + 1;
		unsigned char *raw = malloc(rawlen);
		char *b64 = malloc(b64len);
		if (raw == NULL || b64 == NULL) {
			free(raw);
			free(b64);
			connection_failed(c,
					  status_code_str(STATUS_LOCAL_ERROR),
					  "out of memory");
			return;
		}
		raw[0] = '\0';
		memcpy(raw + 1, c->auth_user, ulen);
		raw[1 + ulen] = '\0';
		memcpy(raw + 2 + ulen, c->auth_password, plen);
		int n = auth_base64_encode(raw, rawlen, b64, b64len);
		explicit_bzero(raw, rawlen);
		free(raw);
		if (n < 0 || (size_t)n + 13 > SMTP_AUTH_LINE_MAX) {
			explicit_bzero(b64, b64len);
			free(b64);
			connection_failed(
			    c, status_code_str(STATUS_AUTH_REJECTED_TRANSIENT),
			    "credentials too long for AUTH PLAIN");
			return;
		}
		c->auth_login = false;
		send_command(c, CLIENT_AUTH, "AUTH PLAIN %s", b64);
		explicit_bzero(b64, b64len);
		free(b64);
	} else if (c->ext & SMTP_EXT_AUTH_LOGIN) {
		c->auth_login = true;
		send_command(c, CLIENT_AUTH, "AUTH LOGIN");
	} else {
		connection_failedf(c,
				   status_code_str(STATUS_SECURITY_TRANSIENT),
				   "AUTH PLAIN or LOGIN is required, but was "
				   "not offered by host %s",
				   c->relay);
	}
}

/* One line of AUTH LOGIN: the base64 of `text`. */
static void send_auth_login(struct smtp_client *c, enum client_state state,
			    const char *text)
{
	size_t len = strlen(text);
	size_t b64len = (len + 2) / 3 * 4 + 1;
	char *b64 = malloc(b64len);

	if (b64 == NULL) {
		connection_failed(c, status_code_str(STATUS_LOCAL_ERROR),
				  "out of memory");
		return;
	}
	if (auth_base64_encode((const unsigned char *)text, len, b64, b64len) <
		0 ||
	    b64len > SMTP_AUTH_LINE_MAX) {
		explicit_bzero(b64, b64len);
		free(b64);
		connection_failed(
		    c, status_code_str(STATUS_AUTH_REJECTED_TRANSIENT),
		    "credentials too long for AUTH LOGIN");
		return;
	}
	send_command(c, state, "%s", b64);
	explicit_bzero(b64, b64len);
	free(b64);
}

static void auth_failed(struct smtp_client *c)
{
	char dsn[12], reason[512];

	reply_reason(&c->reply, reason, sizeof reason);
	if (c->reply.esc[0])
		reply_dsn(&c->reply, '4', dsn, sizeof dsn);
	else
		snprintf(dsn, sizeof dsn, "%s",
			 status_code_str(STATUS_AUTH_REJECTED_TRANSIENT));
	connection_failed(c, dsn, reason);
}

/* Addresses come from our own spool; still, nothing that could end a
 * command line goes into one. */
static bool address_safe(const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch < 0x20 || ch == 0x7f)
			return false;
	}
	return true;
}

static void add_rcpt_command(struct smtp_client *c, size_t i)
{
	const struct client_rcpt *r = &c->rcpts[i];
	struct evbuffer *out = bufferevent_get_output(c->bev);

	evbuffer_add_printf(out, "RCPT TO:<%s>", r->address);
	if (c->ext & SMTP_EXT_DSN) {
		if (r->notify & SMTP_NOTIFY_NEVER) {
			evbuffer_add_printf(out, " NOTIFY=NEVER");
		} else if (r->notify) {
			const char *sep = " NOTIFY=";
			if (r->notify & SMTP_NOTIFY_SUCCESS) {
				evbuffer_add_printf(out, "%sSUCCESS", sep);
				sep = ",";
			}
			if (r->notify & SMTP_NOTIFY_FAILURE) {
				evbuffer_add_printf(out, "%sFAILURE", sep);
				sep = ",";
			}
			if (r->notify & SMTP_NOTIFY_DELAY)
				evbuffer_add_printf(out, "%sDELAY", sep);
		}
		if (r->orcpt)
			evbuffer_add_printf(out, " ORCPT=%s", r->orcpt);
	}
	evbuffer_add(out, "\r\n", 2);
	c->rcpt_sent++;
}

static void start_mail(struct smtp_client *c)
{
	char reason[512];
	const char *lack = requiretls_lacks(c);

	if (lack != NULL) {
		requiretls_refused(c, lack);
		return;
	}
	if (c->smtputf8 && !(c->ext & SMTP_EXT_SMTPUTF8)) {
		/* RFC 6531 §3.2: never downgraded */
		snprintf(reason, sizeof reason,
			 "SMTPUTF8 is required, but was not offered by host %s",
			 c->relay);
		refuse_all(c, RCPT_BOUNCED, status_code_str(STATUS_NEEDS_UTF8),
			   reason);
		return;
	}
	if ((c->ext & SMTP_EXT_SIZE) && c->ext_size > 0 &&
	    c->size > c->ext_size) {
		snprintf(reason, sizeof reason,
			 "message size %llu exceeds the limit of %llu octets "
			 "of host %s",
			 (unsigned long long)c->size,
			 (unsigned long long)c->ext_size, c->relay);
		refuse_all(c, RCPT_BOUNCED, status_code_str(STATUS_TOO_BIG),
			   reason);
		return;
	}
	if (!address_safe(c->sender)) {
		refuse_all(c, RCPT_BOUNCED,
			   status_code_str(STATUS_BAD_SENDER_SYNTAX),
			   "bad sender address");
		return;
	}
	c->order_count = 0;
	for (size_t i = 0; i < c->rcpt_count; i++) {
		if (c->results[i].state != RCPT_PENDING)
			continue;
		if (!address_safe(c->rcpts[i].address)) {
			decide(c, i, RCPT_BOUNCED,
			       status_code_str(STATUS_BAD_RCPT_SYNTAX),
			       "bad recipient address");
			continue;
		}
		c->order[c->order_count++] = i;
	}
	if (c->order_count == 0) {
		finish(c, true);
		return;
	}

	struct evbuffer *out = bufferevent_get_output(c->bev);
	evbuffer_add_printf(out, "MAIL FROM:<%s>", c->sender);
	if (c->ext & SMTP_EXT_SIZE)
		evbuffer_add_printf(out, " SIZE=%llu",
				    (unsigned long long)c->size);
	if (c->body == SMTP_BODY_8BITMIME && (c->ext & SMTP_EXT_8BITMIME))
		evbuffer_add_printf(out, " BODY=8BITMIME");
	if (c->smtputf8)
		evbuffer_add_printf(out, " SMTPUTF8");
	if (c->requiretls)
		evbuffer_add_printf(out, " REQUIRETLS");
	if (c->ext & SMTP_EXT_DSN) {
		if (c->ret == SMTP_RET_FULL)
			evbuffer_add_printf(out, " RET=FULL");
		else if (c->ret == SMTP_RET_HDRS)
			evbuffer_add_printf(out, " RET=HDRS");
		if (c->envid) {
			char xtext[SMTP_ENVID_MAX * 3 + 1];
			if (text_xtext_encode(c->envid, strlen(c->envid), xtext,
					      sizeof xtext) >= 0)
				evbuffer_add_printf(out, " ENVID=%s", xtext);
		}
	}
	evbuffer_add(out, "\r\n", 2);
	/* RFC 2920: MAIL and every RCPT in one write, replies in order */
	if (c->ext & SMTP_EXT_PIPELINING)
		for (size_t k = 0; k < c->order_count; k++)
			add_rcpt_command(c, c->order[k]);
	enter_state(c, CLIENT_MAIL);
	arm_deadline(c, c->timeout);
}

/* After the last EHLO/HELO: STARTTLS, AUTH or MAIL, as the policy says. */
static void after_greeting_done(struct smtp_client *c)
{
	if (!c->tls && (c->tls_policy != TLS_POLICY_NONE || tls_required(c))) {
		bool can = c->tls_ctx != NULL;
		if ((c->ext & SMTP_EXT_STARTTLS) && can) {
			send_command(c, CLIENT_STARTTLS, "STARTTLS");
			return;
		}
		if (c->requiretls) {
			requiretls_refused(c, "STARTTLS is not offered");
			return;
		}
		if (tls_required(c)) {
			if (current_address(c)->dane == DANE_VERIFY)
				dane_outcome(c, false, "STARTTLS not offered");
			if (!can)
				connection_failed(
				    c, status_code_str(STATUS_TLS_UNAVAILABLE),
				    "TLS is required, but no TLS "
				    "client context is set up");
			else
				connection_failedf(
				    c, status_code_str(STATUS_TLS_UNAVAILABLE),
				    "TLS is required, but was not "
				    "offered by host %s",
				    c->relay);
			return;
		}
	}
	if (c->auth_user) {
		start_auth(c);
		return;
	}
	start_mail(c);
}

static void start_body(struct smtp_client *c);

/* The next RCPT, or DATA once every RCPT has its reply. */
static void rcpt_next(struct smtp_client *c)
{
	if (c->rcpt_replied < c->order_count) {
		if (c->rcpt_sent == c->rcpt_replied)
			add_rcpt_command(c, c->order[c->rcpt_sent]);
		enter_state(c, CLIENT_RCPT);
		arm_deadline(c, c->timeout);
		return;
	}
	if (c->accepted_count == 0) {
		finish(c, true);
		return;
	}
	send_command(c, CLIENT_DATA, "DATA");
}

static void on_rcpt_reply(struct smtp_client *c)
{
	const struct smtp_reply *r = &c->reply;
	size_t i = c->order[c->rcpt_replied++];
	char dsn[12], reason[512];

	switch (r->code / 100) {
	case 2:
		c->rcpts[i].accepted = true;
		c->accepted_count++;
		break;
	case 4:
	case 5:
		reply_reason(r, reason, sizeof reason);
		reply_dsn(r, r->code / 100 == 4 ? '4' : '5', dsn, sizeof dsn);
		decide(c, i, r->code / 100 == 4 ? RCPT_DEFERRED : RCPT_BOUNCED,
		       dsn, reason);
		break;
	default:
		protocol_error(c, "unexpected reply");
		return;
	}
	rcpt_next(c);
}

/* LMTP, after the final dot: this reply is the next accepted
 * recipient's; the transaction ends with the last one. */
static void on_lmtp_dot_reply(struct smtp_client *c)
{
	int cls = c->reply.code / 100;
	char dsn[12], reason[512];
	size_t i;

	if (cls != 2 && cls != 4 && cls != 5) {
		protocol_error(c, "unexpected reply");
		return;
	}
	if (!lmtp_next_accepted(c, &i))
		fatal("smtp_client: LMTP reply with no recipient left");
	enum rcpt_state state =
	    reply_outcome(&c->reply, dsn, sizeof dsn, reason, sizeof reason);
	decide(c, i, state, dsn, reason);
	size_t left = 0;
	for (size_t k = c->dot_next; k < c->order_count; k++)
		left += c->rcpts[c->order[k]].accepted;
	if (left > 0)
		arm_deadline(c, c->timeout);
	else
		finish(c, true);
}

/* One complete reply, read in the state that awaited it. */
static void on_reply(struct smtp_client *c)
{
	const struct smtp_reply *r = &c->reply;
	int cls = r->code / 100;

	/* RFC 5321 §3.8: the server is closing the channel */
	if (r->code == 421)
		c->broken = true;
	switch (c->state) {
	case CLIENT_GREETING:
		if (cls == 2)
			send_ehlo(c, CLIENT_EHLO);
		else
			reply_failed(c);
		break;
	case CLIENT_EHLO:
	case CLIENT_EHLO_TLS:
		if (cls == 2) {
			c->ext = r->ehlo;
			c->ext_size = r->ehlo_size;
			after_greeting_done(c);
		} else if (cls == 5 && !c->lmtp) {
			/* RFC 5321 §3.2: an old server; no extensions */
			send_command(c, CLIENT_HELO, "HELO %s", c->helo);
		} else {
			reply_failed(c);
		}
		break;
	case CLIENT_HELO:
		if (cls == 2) {
			c->ext = 0;
			c->ext_size = 0;
			after_greeting_done(c);
		} else {
			reply_failed(c);
		}
		break;
	case CLIENT_STARTTLS:
		if (cls == 2)
			start_tls(c);
		else
			reply_failed(c);
		break;
	case CLIENT_AUTH:
		if (r->code == 235 && !c->auth_login)
			start_mail(c);
		else if (r->code == 334 && c->auth_login)
			send_auth_login(c, CLIENT_AUTH_LOGIN_USER,
					c->auth_user);
		else
			auth_failed(c);
		break;
	case CLIENT_AUTH_LOGIN_USER:
		if (r->code == 334)
			send_auth_login(c, CLIENT_AUTH_LOGIN_PASS,
					c->auth_password);
		else
			auth_failed(c);
		break;
	case CLIENT_AUTH_LOGIN_PASS:
		if (r->code == 235)
			start_mail(c);
		else
			auth_failed(c);
		break;
	case CLIENT_MAIL:
		if (cls == 2) {
			c->mail_accepted = true;
			rcpt_next(c);
		} else if (cls == 5) {
			char dsn[12], reason[512];
			reply_reason(r, reason, sizeof reason);
			reply_dsn(r, '5', dsn, sizeof dsn);
			refuse_all(c, RCPT_BOUNCED, dsn, reason);
		} else {
			reply_failed(c);
		}
		break;
	case CLIENT_RCPT:
		on_rcpt_reply(c);
		break;
	case CLIENT_DATA:
		if (cls == 3) {
			start_body(c);
		} else if (cls == 4 || cls == 5) {
			decide_accepted_by_reply(c);
			finish(c, true);
		} else {
			protocol_error(c, "unexpected reply");
		}
		break;
	case CLIENT_BODY:
		/* the server gave up before our end of data */
		if (cls == 4 || cls == 5) {
			decide_accepted_by_reply(c);
			finish(c, false);
		} else {
			protocol_error(c, "unexpected reply");
		}
		break;
	case CLIENT_DOT:
		if (c->lmtp) {
			on_lmtp_dot_reply(c);
			break;
		}
		if (cls == 2)
			metrics.relayed_bytes_total += c->size;
		if (cls == 2 || cls == 4 || cls == 5) {
			decide_accepted_by_reply(c);
			finish(c, true);
		} else {
			protocol_error(c, "unexpected reply");
		}
		break;
	case CLIENT_RSET:
		if (cls == 2)
			c->mail_accepted = false;
		else
			c->broken = true;
		finish(c, true);
		break;
	case CLIENT_QUIT:
		if (c->quit_replies <= 1)
			quit_done(c);
		else
			c->quit_replies--;
		break;
	case CLIENT_IDLE:
	case CLIENT_CONNECTING:
	case CLIENT_TLS_HANDSHAKE:
	case CLIENT_READY:
	case CLIENT_DONE:
		fatal("smtp_client: reply in state %s", state_names[c->state]);
	}
}

/* ---- the message body ---- */

static void body_read_failed(struct smtp_client *c, int err)
{
	char reason[512];

	/* the server has part of a message: only closing aborts it */
	snprintf(reason, sizeof reason, "cannot read the queued message: %s",
		 strerror(err));
	log_event(LOG_LEVEL_ERROR, "relay_failed",
		  LOG_S("queue_id", c->queue_id), LOG_S("relay", c->relay),
		  LOG_S("reason", reason));
	close_connection(c);
	decide_all(c, false, RCPT_DEFERRED, status_code_str(STATUS_LOCAL_ERROR),
		   reason);
	finish(c, false);
}

/* Top the output up with one chunk of the spool file; at its end, the
 * final dot. Memory stays at about BODY_LOW_WATER + BODY_CHUNK. */
static void fill_body(struct smtp_client *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct evbuffer_iovec v;
	ssize_t n;

	if (evbuffer_get_length(out) > BODY_LOW_WATER)
		return;
	if (evbuffer_reserve_space(out, BODY_CHUNK, &v, 1) < 1)
		fatal("smtp_client: evbuffer_reserve_space");
	uint64_t left = c->body_length - c->body_sent;
	n = 0;
	if (left > 0) {
		do
			n = pread(c->fd, v.iov_base,
				  left < BODY_CHUNK ? (size_t)left : BODY_CHUNK,
				  (off_t)(c->body_offset + c->body_sent));
		while (n < 0 && errno == EINTR);
	}
	if (n < 0 || (n == 0 && left > 0)) {
		/* shorter than the spool recorded: never send a cut message */
		body_read_failed(c, n < 0 ? errno : EIO);
		return;
	}
	if (n > 0) {
		c->body_sent += (uint64_t)n;
		/* before the commit: a TLS bufferevent may consume it at once
		 */
		c->body_last = ((char *)v.iov_base)[n - 1];
		v.iov_len = (size_t)n;
		if (evbuffer_commit_space(out, &v, 1) < 0)
			fatal("smtp_client: evbuffer_commit_space");
		arm_deadline(c, c->timeout);
		return;
	}
	/* the spool's lines end in CRLF; an empty message has none */
	if (c->body_last != '\n')
		evbuffer_add(out, "\r\n", 2);
	evbuffer_add(out, ".\r\n", 3);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	enter_state(c, CLIENT_DOT);
	arm_deadline(c, c->timeout);
}

static void start_body(struct smtp_client *c)
{
	c->body_sent = 0;
	c->body_last = '\n';
	enter_state(c, CLIENT_BODY);
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOW_WATER, 0);
	fill_body(c);
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
	close_connection(c);
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
			protocol_error(c, "reply line too long");
			return;
		}
		if (!awaits_reply(c->state)) {
			protocol_error(c, "unexpected data");
			return;
		}

		bool ehlo =
		    c->state == CLIENT_EHLO || c->state == CLIENT_EHLO_TLS;
		switch (smtp_reply_feed(&c->reply, line, len, ehlo)) {
		case SMTP_REPLY_MORE:
			break;
		case SMTP_REPLY_INVALID:
			if (c->state == CLIENT_QUIT) {
				quit_done(c);
				return;
			}
			protocol_error(c, c->reply.lines >= SMTP_REPLY_LINES_MAX
					      ? "reply too long"
					      : "malformed reply");
			return;
		case SMTP_REPLY_DONE:
			on_reply(c);
			smtp_reply_init(&c->reply);
			break;
		}
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;

	if (c->bev == bev && c->state == CLIENT_BODY)
		fill_body(c);
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
		connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				   "TLS handshake with %s timed out", c->relay);
		return;
	}
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (current_address(c)->dane == DANE_VERIFY) {
		char reason[300];
		snprintf(reason, sizeof reason,
			 "DANE verification failed for %s: %s", tls_name(c),
			 vr != X509_V_OK ? X509_verify_cert_error_string(vr)
					 : "handshake failed");
		dane_outcome(c, false, reason);
		connection_failed(c, status_code_str(STATUS_TLS_FAILED),
				  reason);
		return;
	}
	if (c->requiretls && vr != X509_V_OK) {
		char lack[300];
		snprintf(lack, sizeof lack,
			 "the certificate (name %s) does not verify: %s",
			 tls_name(c), X509_verify_cert_error_string(vr));
		requiretls_refused(c, lack);
		return;
	}
	if (c->tls_policy == TLS_POLICY_VERIFY && vr != X509_V_OK) {
		connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				   "TLS certificate verification failed for %s "
				   "(name %s): %s",
				   c->relay, tls_name(c),
				   X509_verify_cert_error_string(vr));
		return;
	}
	describe_io_error(c, what, why, sizeof why);
	connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
			   "TLS handshake with %s failed: %s", c->relay, why);
}

/* After a handshake: was the peer verified, and how? A DANE host's
 * handshake succeeds only with a match. */
static bool peer_verified(const struct smtp_client *c, struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	if (ssl == NULL)
		return false;
	if (current_address(c)->dane == DANE_VERIFY) {
		bool matched = SSL_get0_dane_authority(ssl, NULL, NULL) >= 0;
		dane_outcome(c, matched, "no TLSA record matched");
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
			if (!c->lmtp)
				metrics.relay_connections_total++;
			if (c->implicit_tls) {
				start_tls(c);
				return;
			}
			enter_state(c, CLIENT_GREETING);
			arm_deadline(c, c->timeout);
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
				enter_state(c, CLIENT_GREETING);
				arm_deadline(c, c->timeout);
			} else {
				send_ehlo(c, CLIENT_EHLO_TLS);
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
		quit_done(c);
		return;
	case CLIENT_CONNECTING:
		if (what & BEV_EVENT_TIMEOUT) {
			connection_failedf(
			    c, status_code_str(STATUS_NO_ANSWER),
			    "connect to %s: Connection timed out", c->relay);
		} else {
			int err = EVUTIL_SOCKET_ERROR();
			/* libevent reports an immediate refusal without
			 * errno */
			connection_failedf(c, status_code_str(STATUS_NO_ANSWER),
					   "connect to %s: %s", c->relay,
					   err != 0 && err != EINPROGRESS &&
						   err != EAGAIN
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
		connection_failedf(c, status_code_str(STATUS_BAD_CONNECTION),
				   "timeout (%us) with %s %s", c->timeout,
				   c->relay, state_doing[c->state]);
		return;
	}
	describe_io_error(c, what, why, sizeof why);
	connection_failedf(c, status_code_str(STATUS_BAD_CONNECTION),
			   "lost connection with %s %s (%s)", c->relay,
			   state_doing[c->state], why);
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
		quit_done(c);
		break;
	case CLIENT_CONNECTING:
		connection_failedf(c, status_code_str(STATUS_NO_ANSWER),
				   "connect to %s: Connection timed out",
				   c->relay);
		break;
	case CLIENT_TLS_HANDSHAKE:
		connection_failedf(c, status_code_str(STATUS_TLS_FAILED),
				   "TLS handshake with %s timed out", c->relay);
		break;
	case CLIENT_IDLE:
	case CLIENT_READY:
	case CLIENT_DONE:
		break;
	default:
		connection_failedf(c, status_code_str(STATUS_BAD_CONNECTION),
				   "timeout (%us) with %s %s", c->timeout,
				   c->relay, state_doing[c->state]);
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

/* Before a transaction: nothing sent, nothing accepted. */
static void reset_transaction(struct smtp_client *c)
{
	c->mail_accepted = false;
	c->rcpt_sent = c->rcpt_replied = c->accepted_count = 0;
	c->order_count = 0;
	c->dot_next = 0;
	for (size_t i = 0; i < c->rcpt_count; i++)
		c->rcpts[i].accepted = false;
	smtp_reply_init(&c->reply);
}

/* Connect to the next address; with none left, defer what is undecided
 * with the last error. */
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
		  LOG_S("state", state_names[c->state]),
		  LOG_S("dsn", c->last_dsn), LOG_S("reason", c->last_reason));
	return -1;
}

static void connect_next(struct smtp_client *c)
{
	struct timeval tv = {.tv_sec = c->timeout, .tv_usec = 0};

	while (c->next_addr < c->addr_count) {
		const struct client_address *a = &c->addrs[c->next_addr++];

		format_relay(c, a);
		c->tls = false;
		c->verified = false;
		c->ext = 0;
		c->ext_size = 0;
		c->transactions = 0;
		c->reused = false;
		c->broken = false;
		reset_transaction(c);

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
			enter_state(c, CLIENT_GREETING);
			arm_deadline(c, c->timeout);
			return;
		}
		enter_state(c, CLIENT_CONNECTING);
		arm_deadline(c, c->timeout);
		if (bufferevent_socket_connect(
			c->bev, (const struct sockaddr *)&a->addr,
			(int)a->addrlen) < 0) {
			int err = errno;
			close_connection(c);
			snprintf(c->last_dsn, sizeof c->last_dsn, "%s",
				 status_code_str(STATUS_NO_ANSWER));
			snprintf(c->last_reason, sizeof c->last_reason,
				 "connect to %s: %s", c->relay, strerror(err));
			log_event(LOG_LEVEL_INFO, "relay_failed",
				  LOG_S("queue_id", c->queue_id),
				  LOG_S("relay", c->relay),
				  LOG_S("state", state_names[c->state]),
				  LOG_S("dsn", c->last_dsn),
				  LOG_S("reason", c->last_reason));
			enter_state(c, CLIENT_IDLE);
			continue;
		}
		return;
	}
	/* a REQUIRETLS refusal by the last host is final (RFC 8689 §4.2.1);
	 * a host that could not be reached may be tried again */
	bool refused =
	    strcmp(c->last_dsn, status_code_str(STATUS_ENCRYPTION_NEEDED)) == 0;
	decide_all(c, false, refused ? RCPT_BOUNCED : RCPT_DEFERRED,
		   c->last_dsn, c->last_reason);
	finish(c, false);
}

/* smtp_client_next, from the loop: MAIL on the open connection, or a
 * fresh one if the server has closed it meanwhile. */
static void begin_next(struct smtp_client *c)
{
	c->next_pending = false;
	reset_transaction(c);
	if (c->bev == NULL) {
		c->next_addr = 0;
		enter_state(c, CLIENT_IDLE);
		if (c->rcpt_count == 0)
			finish(c, false);
		else
			connect_next(c);
		return;
	}
	c->reused = true;
	start_mail(c);
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
		begin_next(c);
	} else if (c->state == CLIENT_IDLE && c->rcpt_count == 0) {
		finish(c, false);
	} else if (c->state == CLIENT_IDLE) {
		connect_next(c);
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
	close_connection(c);
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
	schedule_step(c);
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
		      state_names[c->state]);
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
	schedule_step(c);
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
		send_line(c, "QUIT");
		enter_state(c, CLIENT_QUIT);
		arm_deadline(c, QUIT_WAIT);
	} else {
		enter_state(c, CLIENT_DONE);
		schedule_step(c);
	}
}

void smtp_client_cancel(struct smtp_client *client)
{
	if (client == NULL)
		return;
	client_free(client);
}
