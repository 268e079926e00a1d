/*
 * The outbound SMTP client (see smtp_client.h): the transaction. The
 * connection under it (addresses, sockets, TLS, reading replies, timers)
 * is smtp_client_transport.c; smtp_client_internal.h is what they share.
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
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "facteur/auth.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/smtp_client.h"
#include "facteur/smtp_client_internal.h"
#include "facteur/smtp_proto.h"
#include "facteur/smtp_reply.h"
#include "facteur/spool.h"
#include "facteur/state_list.h"
#include "facteur/status_code.h"
#include "facteur/text.h"

#define BODY_CHUNK (64 * 1024)	   /* read from the spool at a time */
#define BODY_LOW_WATER (16 * 1024) /* refill below this */

const char *const smtp_client_state_names[] = {CLIENT_STATES(STATE_LIST_NAME)};

#define CLIENT_STATE_DOING(state, name, doing) [state] = doing,
const char *const smtp_client_state_doing[] = {
    CLIENT_STATES(CLIENT_STATE_DOING)};
#undef CLIENT_STATE_DOING

void smtp_client_enter_state(struct smtp_client *c, enum client_state state)
{
	if (c->state != state)
		log_event(LOG_LEVEL_DEBUG, "smtp_client_state",
			  LOG_S("queue_id", c->queue_id),
			  LOG_S("relay", c->relay),
			  LOG_S("from", smtp_client_state_names[c->state]),
			  LOG_S("to", smtp_client_state_names[state]));
	c->state = state;
}

void smtp_client_send_line(struct smtp_client *c, const char *fmt, ...)
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
	smtp_client_enter_state(c, state);
	smtp_client_arm_deadline(c, c->timeout);
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
void smtp_client_decide_all(struct smtp_client *c, bool only_accepted,
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

	smtp_client_decide_all(c, true, state, dsn, reason);
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

void smtp_client_describe_connection(const struct smtp_client *c,
				     struct smtp_client_result *r)
{
	snprintf(r->relay, sizeof r->relay, "%s", c->relay);
	r->tls = c->tls;
	r->tls_version = c->tls ? c->tls_version : "none";
	r->verified = c->tls && c->verified;
	r->dane = c->next_addr > 0 &&
		  smtp_client_current_address(c)->dane == DANE_VERIFY;
	if (c->next_addr > 0) {
		const struct client_address *a = smtp_client_current_address(c);
		r->host = a->host;
		if (a->dane == DANE_VERIFY) {
			r->tlsa = a->tlsa;
			r->tlsa_count = a->tlsa_count;
		}
	}
	snprintf(r->peer_ip, sizeof r->peer_ip, "%s", c->peer_ip);
	snprintf(r->local_ip, sizeof r->local_ip, "%s", c->local_ip);
	r->tls_step = c->tls_step;
	r->tls_handshake = c->tls_handshake;
	r->verify_result = c->verify_result;
}

/*
 * Every outcome is known: report, then say QUIT when the conversation is
 * at a command boundary (best effort, QUIT_WAIT seconds), else close;
 * or keep the connection for smtp_client_next.
 */
void smtp_client_finish(struct smtp_client *c, bool quit)
{
	struct smtp_client_result result;

	for (size_t i = 0; i < c->rcpt_count; i++)
		if (c->results[i].state == RCPT_PENDING)
			fatal("smtp_client: recipient %zu of %s has no outcome "
			      "in state %s",
			      i, c->queue_id,
			      smtp_client_state_names[c->state]);

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
	smtp_client_describe_connection(c, &result);
	c->connection_reported = true;
	result.reused = c->reused;
	result.reusable = keep;
	c->transactions++;
	if (c->reused && !c->lmtp) /* the relay's connections only */
		metrics.relay_connections_reused_total++;

	if (keep) {
		evtimer_del(c->deadline);
		smtp_client_enter_state(c, CLIENT_READY);
	} else if (quit && c->bev) {
		/* replies still due to pipelined commands come first */
		c->quit_replies =
		    (unsigned)(c->rcpt_sent - c->rcpt_replied) + 1;
		smtp_client_send_line(c, "QUIT");
		smtp_client_enter_state(c, CLIENT_QUIT);
		smtp_client_arm_deadline(c, QUIT_WAIT);
	} else {
		smtp_client_close_connection(c);
		smtp_client_enter_state(c, CLIENT_DONE);
		smtp_client_schedule_step(c);
	}
	c->cb(&result, c->arg);
}

/* The end after QUIT: freed from the loop, never from inside our own
 * bufferevent callbacks. */
void smtp_client_quit_done(struct smtp_client *c)
{
	smtp_client_close_connection(c);
	smtp_client_enter_state(c, CLIENT_DONE);
	smtp_client_schedule_step(c);
}

/*
 * This connection failed. Before MAIL was accepted: remember why and try
 * the next address. After: the undecided recipients are deferred, since
 * the server may hold a part of the transaction.
 */
void smtp_client_connection_failed(struct smtp_client *c, const char *dsn,
				   const char *reason)
{
	if (c->reused && !c->mail_accepted) {
		/* the server dropped the connection while it sat idle, or is
		 * dropping it now: nothing of this message was taken */
		log_event(LOG_LEVEL_DEBUG, "smtp_client_stale",
			  LOG_S("queue_id", c->queue_id),
			  LOG_S("relay", c->relay),
			  LOG_S("state", smtp_client_state_names[c->state]),
			  LOG_S("reason", reason));
		smtp_client_close_connection(c);
		c->reused = false;
		c->next_addr = 0;
		smtp_client_enter_state(c, CLIENT_IDLE);
		smtp_client_connect_next(c);
		return;
	}
	log_event(LOG_LEVEL_INFO, "relay_failed",
		  LOG_S("queue_id", c->queue_id), LOG_S("relay", c->relay),
		  LOG_S("state", smtp_client_state_names[c->state]),
		  LOG_S("dsn", dsn), LOG_S("reason", reason));
	smtp_client_close_connection(c);
	if (c->mail_accepted) {
		smtp_client_decide_all(c, false, RCPT_DEFERRED,
				       status_code_str(STATUS_BAD_CONNECTION),
				       reason);
		smtp_client_finish(c, false);
		return;
	}
	snprintf(c->last_dsn, sizeof c->last_dsn, "%s", dsn);
	snprintf(c->last_reason, sizeof c->last_reason, "%s", reason);
	smtp_client_enter_state(c, CLIENT_IDLE);
	smtp_client_connect_next(c);
}

void smtp_client_connection_failedf(struct smtp_client *c, const char *dsn,
				    const char *fmt, ...)
{
	char reason[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	smtp_client_connection_failed(c, dsn, reason);
}

/* A negative (or senseless) reply before MAIL was accepted. */
static void reply_failed(struct smtp_client *c)
{
	char dsn[12], reason[512];

	reply_reason(&c->reply, reason, sizeof reason);
	reply_dsn(&c->reply, '4', dsn, sizeof dsn);
	smtp_client_connection_failed(c, dsn, reason);
}

void smtp_client_protocol_error(struct smtp_client *c, const char *what)
{
	smtp_client_connection_failedf(
	    c, status_code_str(STATUS_BAD_CONNECTION), "%s from %s %s", what,
	    c->relay, smtp_client_state_doing[c->state]);
}

/* Everything undecided gets one outcome before any command is sent. */
static void refuse_all(struct smtp_client *c, enum rcpt_state state,
		       const char *dsn, const char *reason)
{
	smtp_client_decide_all(c, false, state, dsn, reason);
	smtp_client_finish(c, true);
}

/* ---- the conversation ---- */

void smtp_client_send_ehlo(struct smtp_client *c, enum client_state state)
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
	       smtp_client_current_address(c)->dane != DANE_NONE;
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

/* A REQUIRETLS message cannot go over this connection: the next
 * address, or, with none left (smtp_client_connect_next), a bounce with
 * 5.7.10. */
void smtp_client_requiretls_refused(struct smtp_client *c, const char *lack)
{
	char reason[512];
	snprintf(reason, sizeof reason,
		 "REQUIRETLS: %s by host %s, the message is not sent", lack,
		 c->relay);
	if (c->reused)
		refuse_all(c, RCPT_BOUNCED,
			   status_code_str(STATUS_ENCRYPTION_NEEDED), reason);
	else
		smtp_client_connection_failed(
		    c, status_code_str(STATUS_ENCRYPTION_NEEDED), reason);
}

static void start_auth(struct smtp_client *c)
{
	if (!c->tls && c->tls_policy != TLS_POLICY_NONE) {
		smtp_client_connection_failed(
		    c, status_code_str(STATUS_SECURITY_TRANSIENT),
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
			smtp_client_connection_failed(
			    c, status_code_str(STATUS_LOCAL_ERROR),
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
			smtp_client_connection_failed(
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
		smtp_client_connection_failedf(
		    c, status_code_str(STATUS_SECURITY_TRANSIENT),
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
		smtp_client_connection_failed(
		    c, status_code_str(STATUS_LOCAL_ERROR), "out of memory");
		return;
	}
	if (auth_base64_encode((const unsigned char *)text, len, b64, b64len) <
		0 ||
	    b64len > SMTP_AUTH_LINE_MAX) {
		explicit_bzero(b64, b64len);
		free(b64);
		smtp_client_connection_failed(
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
	smtp_client_connection_failed(c, dsn, reason);
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
		smtp_client_requiretls_refused(c, lack);
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
		smtp_client_finish(c, true);
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
	smtp_client_enter_state(c, CLIENT_MAIL);
	smtp_client_arm_deadline(c, c->timeout);
}

/* After the last EHLO/HELO: STARTTLS, AUTH or MAIL, as the policy says. */
static void after_greeting_done(struct smtp_client *c)
{
	if (!c->tls && (c->tls_policy != TLS_POLICY_NONE || tls_required(c))) {
		c->tls_step = true;
		bool can = c->tls_ctx != NULL;
		if ((c->ext & SMTP_EXT_STARTTLS) && can) {
			send_command(c, CLIENT_STARTTLS, "STARTTLS");
			return;
		}
		if (c->requiretls) {
			smtp_client_requiretls_refused(
			    c, "STARTTLS is not offered");
			return;
		}
		if (tls_required(c)) {
			if (smtp_client_current_address(c)->dane == DANE_VERIFY)
				smtp_client_dane_outcome(
				    c, false, "STARTTLS not offered");
			if (!can)
				smtp_client_connection_failed(
				    c, status_code_str(STATUS_TLS_UNAVAILABLE),
				    "TLS is required, but no TLS "
				    "client context is set up");
			else
				smtp_client_connection_failedf(
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
		smtp_client_enter_state(c, CLIENT_RCPT);
		smtp_client_arm_deadline(c, c->timeout);
		return;
	}
	if (c->accepted_count == 0) {
		smtp_client_finish(c, true);
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
		smtp_client_protocol_error(c, "unexpected reply");
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
		smtp_client_protocol_error(c, "unexpected reply");
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
		smtp_client_arm_deadline(c, c->timeout);
	else
		smtp_client_finish(c, true);
}

/* One complete reply, read in the state that awaited it. */
void smtp_client_on_reply(struct smtp_client *c)
{
	const struct smtp_reply *r = &c->reply;
	int cls = r->code / 100;

	/* RFC 5321 §3.8: the server is closing the channel */
	if (r->code == 421)
		c->broken = true;
	switch (c->state) {
	case CLIENT_GREETING:
		if (cls == 2)
			smtp_client_send_ehlo(c, CLIENT_EHLO);
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
			smtp_client_start_tls(c);
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
			smtp_client_finish(c, true);
		} else {
			smtp_client_protocol_error(c, "unexpected reply");
		}
		break;
	case CLIENT_BODY:
		/* the server gave up before our end of data */
		if (cls == 4 || cls == 5) {
			decide_accepted_by_reply(c);
			smtp_client_finish(c, false);
		} else {
			smtp_client_protocol_error(c, "unexpected reply");
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
			smtp_client_finish(c, true);
		} else {
			smtp_client_protocol_error(c, "unexpected reply");
		}
		break;
	case CLIENT_RSET:
		if (cls == 2)
			c->mail_accepted = false;
		else
			c->broken = true;
		smtp_client_finish(c, true);
		break;
	case CLIENT_QUIT:
		if (c->quit_replies <= 1)
			smtp_client_quit_done(c);
		else
			c->quit_replies--;
		break;
	case CLIENT_IDLE:
	case CLIENT_CONNECTING:
	case CLIENT_TLS_HANDSHAKE:
	case CLIENT_READY:
	case CLIENT_DONE:
		fatal("smtp_client: reply in state %s",
		      smtp_client_state_names[c->state]);
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
	smtp_client_close_connection(c);
	smtp_client_decide_all(c, false, RCPT_DEFERRED,
			       status_code_str(STATUS_LOCAL_ERROR), reason);
	smtp_client_finish(c, false);
}

/* Top the output up with one chunk of the spool file; at its end, the
 * final dot. Memory stays at about BODY_LOW_WATER + BODY_CHUNK. */
void smtp_client_fill_body(struct smtp_client *c)
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
		smtp_client_arm_deadline(c, c->timeout);
		return;
	}
	/* the spool's lines end in CRLF; an empty message has none */
	if (c->body_last != '\n')
		evbuffer_add(out, "\r\n", 2);
	evbuffer_add(out, ".\r\n", 3);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	smtp_client_enter_state(c, CLIENT_DOT);
	smtp_client_arm_deadline(c, c->timeout);
}

static void start_body(struct smtp_client *c)
{
	c->body_sent = 0;
	c->body_last = '\n';
	smtp_client_enter_state(c, CLIENT_BODY);
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOW_WATER, 0);
	smtp_client_fill_body(c);
}

/* Before a transaction: nothing sent, nothing accepted. */
void smtp_client_reset_transaction(struct smtp_client *c)
{
	c->mail_accepted = false;
	c->rcpt_sent = c->rcpt_replied = c->accepted_count = 0;
	c->order_count = 0;
	c->dot_next = 0;
	for (size_t i = 0; i < c->rcpt_count; i++)
		c->rcpts[i].accepted = false;
	smtp_reply_init(&c->reply);
}

/* smtp_client_next, from the loop: MAIL on the open connection, or a
 * fresh one if the server has closed it meanwhile. */
void smtp_client_begin_next(struct smtp_client *c)
{
	c->next_pending = false;
	smtp_client_reset_transaction(c);
	if (c->bev == NULL) {
		c->next_addr = 0;
		smtp_client_enter_state(c, CLIENT_IDLE);
		if (c->rcpt_count == 0)
			smtp_client_finish(c, false);
		else
			smtp_client_connect_next(c);
		return;
	}
	c->reused = true;
	start_mail(c);
}
