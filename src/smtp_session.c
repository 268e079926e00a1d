/*
 * The inbound SMTP session (see smtp_session.h): its lifecycle, I/O and
 * state machine, and the commands that are not a message's (HELO, EHLO,
 * STARTTLS, RSET, QUIT). AUTH, MAIL and RCPT, and the message itself
 * have files of their own (smtp_session_internal.h says which).
 *
 * One bufferevent per client. smtp_session_process() is the state
 * machine: it takes whatever input is buffered and, depending on the
 * state, reads command lines, streams DATA or BDAT octets through the
 * smtp_proto decoder into the spool, or waits for the spool's commit.
 * Each command has a check step (sequence, syntax: the 5xx replies) and
 * a proceed step (its effect). Replies are queued on the output buffer,
 * so the answers to pipelined commands leave together.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "facteur/ascii.h"
#include "facteur/dkim_intake.h"
#include "facteur/dnsbl.h"
#include "facteur/lineio.h"
#include "facteur/listener.h"
#include "facteur/milter.h"
#include "facteur/server.h"
#include "facteur/smtp_session_internal.h"
#include "facteur/spool.h"
#include "facteur/transport.h"

#define MAX_PROTOCOL_ERRORS 10
/* Input read ahead while a commit is in flight: about one read's worth,
 * as much as was left over when reading stopped during the commit. */
#define COMMIT_READ_AHEAD DATA_CHUNK
#define HELO_MAX 255

static const char *const state_names[] = {SMTP_STATES(STATE_LIST_NAME)};

void smtp_session_enter_state(struct smtp_session *s, enum smtp_state state)
{
	if (s->state != state)
		log_event(LOG_LEVEL_DEBUG, "smtp_state", LOG_SESSION(s),
			  LOG_S("from", state_names[s->state]),
			  LOG_S("to", state_names[state]));
	s->state = state;
}

void smtp_session_reply(struct smtp_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* A protocol error (500, 501, 503): counted, and the tenth one ends the
 * session after its own reply. */
void smtp_session_reply_error(struct smtp_session *s, int code,
			      enum status_code status, const char *text)
{
	smtp_session_reply(s, "%d %s %s", code, status_code_str(status), text);
	if (code != 500 && code != 501 && code != 503)
		return;
	count_rejection(code == 501 ? METRICS_REJECT_SYNTAX
				    : METRICS_REJECT_PROTOCOL);
	if (++s->errors >= MAX_PROTOCOL_ERRORS) {
		count_rejection(METRICS_REJECT_TOO_MANY_ERRORS);
		smtp_session_reply(s, "421 %s %s Error: too many errors",
				   status_code_str(STATUS_SECURITY_TRANSIENT),
				   cfg_of(s)->hostname);
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "too many errors"));
		smtp_session_close(s);
	}
}

void smtp_session_log_rejected(struct smtp_session *s, const char *reason,
			       const char *address)
{
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", reason), LOG_S("address", address));
}

/* A milter's refusal: its reply, the rejected line naming it. */
void smtp_session_milter_refused(struct smtp_session *s,
				 const struct milter_outcome *o,
				 const char *address)
{
	smtp_session_reply(s, "%s", o->reply);
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", "milter"), LOG_S("address", address),
		  LOG_S("milter", o->milter ? o->milter : "-"),
		  LOG_S("action", o->action ? o->action : "-"),
		  LOG_S("reply", o->reply));
	count_rejection(METRICS_REJECT_MILTER);
}

/* ---- transaction ---- */

void smtp_session_transaction_reset(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	while (tx->blocks != NULL) {
		struct recipient_block *next = tx->blocks->next;
		free(tx->blocks);
		tx->blocks = next;
	}
	free(tx->rcpts);
	s->srv->smtp->envelope_memory -= tx->envelope_bytes;
	free(tx->outbuf);
	if (tx->incoming != NULL)
		spool_incoming_abort(s->srv->spool, tx->incoming);
	dkim_intake_free(tx->dkim);
	memset(tx, 0, sizeof *tx);
	milter_abort(s->milter);
}

/* Input is read on while the session waits (a commit, the milters), up
 * to a bound, and processed after it: stopping and restarting the read
 * event would cost two epoll_ctl per message. Not under TLS: when a
 * watermark stops libevent's TLS bufferevent, decrypted input can stay
 * in OpenSSL, not looked at again until the socket is readable. */
void smtp_session_input_hold(struct smtp_session *s)
{
	if (s->tls)
		bufferevent_disable(s->bev, EV_READ);
	else
		bufferevent_setwatermark(s->bev, EV_READ, 0, COMMIT_READ_AHEAD);
}

/* Reading is no longer bounded, and goes on if it was stopped (TLS, or
 * an EOF or a timeout during the wait: met again now). */
void smtp_session_input_release(struct smtp_session *s)
{
	if (!s->tls)
		bufferevent_setwatermark(s->bev, EV_READ, 0, 0);
	bufferevent_enable(s->bev, EV_READ);
}

static void milter_client_of(const struct smtp_session *s,
			     struct milter_client *mc)
{
	*mc = (struct milter_client){
	    .addr = (const struct sockaddr *)&s->addr,
	    .client = s->client,
	    .hostname = cfg_of(s)->hostname,
	    .helo = s->helo,
	    .tls_version = s->tls ? transport_tls_version(s->bev) : NULL,
	    .auth_user = s->auth_user,
	    .queue_id = s->tx.incoming ? s->tx.incoming->id : NULL};
}

/* The session waits for the milters: no command is read meanwhile. */
void smtp_session_milter_wait(struct smtp_session *s, struct milter_client *mc)
{
	milter_client_of(s, mc);
	smtp_session_enter_state(s, SMTP_STATE_MILTER);
	smtp_session_input_hold(s);
}

/* The milters answered: true when the client left meanwhile (s is no
 * more), else the session reads commands again. */
bool smtp_session_milter_resumed(struct smtp_session *s)
{
	if (s->gone) {
		smtp_session_free(s);
		return true;
	}
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	smtp_session_input_release(s);
	return false;
}

/* Is the session encrypted? The handshake's "connected" event may come
 * after the first bytes read under TLS, so ask OpenSSL itself. */
bool smtp_session_tls_active(const struct smtp_session *s)
{
	if (!s->tls)
		return false;
	return s->tls_established || transport_tls_done(s->bev);
}

/* ---- commands: HELO, EHLO ---- */

static bool helo_valid(const char *arg, size_t len)
{
	return len > 0 && len <= HELO_MAX &&
	       !ascii_has_blank_or_control(arg, len);
}

static void cmd_helo(struct smtp_session *s, const struct smtp_command *cmd,
		     bool esmtp)
{
	const struct config *cfg = cfg_of(s);
	if (!helo_valid(cmd->arg, cmd->arglen)) {
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS,
					 esmtp ? "Syntax: EHLO hostname"
					       : "Syntax: HELO hostname");
		return;
	}
	char *helo = strndup(cmd->arg, cmd->arglen);
	if (helo == NULL) {
		smtp_session_reply(s, "451 %s Out of memory",
				   status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	free(s->helo);
	s->helo = helo;
	s->esmtp = esmtp;
	smtp_session_transaction_reset(s);
	if (!esmtp) {
		smtp_session_reply(s, "250 %s", cfg->hostname);
		return;
	}
	smtp_session_reply(s, "250-%s", cfg->hostname);
	smtp_session_reply(s, "250-PIPELINING");
	smtp_session_reply(s, "250-SIZE %llu",
			   (unsigned long long)cfg->max_message_size);
	smtp_session_reply(s, "250-8BITMIME");
	smtp_session_reply(s, "250-ENHANCEDSTATUSCODES");
	smtp_session_reply(s, "250-SMTPUTF8");
	smtp_session_reply(s, "250-CHUNKING");
	if (s->srv->tls_server != NULL && !s->tls && !s->local_peer)
		smtp_session_reply(s, "250-STARTTLS");
	if (smtp_session_tls_active(s) && s->srv->users != NULL)
		smtp_session_reply(s, "250-AUTH PLAIN LOGIN");
	if (smtp_session_tls_active(s))
		smtp_session_reply(
		    s, "250-REQUIRETLS"); /* RFC 8689 §4: encrypted only */
	smtp_session_reply(s, "250 DSN");
}

/* ---- STARTTLS (RFC 3207) ---- */

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static void set_callbacks(struct smtp_session *s)
{
	const struct config *cfg = cfg_of(s);
	struct timeval timeout = {(time_t)cfg->smtp_timeout, 0};
	bufferevent_set_timeouts(s->bev, &timeout, &timeout);
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_enable(s->bev, EV_READ);
	/* A plain socket is written by session_flush; libevent's write
	 * event only waits for room for what the socket did not take. */
	if (!s->tls)
		bufferevent_disable(s->bev, EV_WRITE);
}

static void cmd_starttls(struct smtp_session *s, const struct smtp_command *cmd)
{
	if (cmd->arglen != 0) {
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS,
					 "Syntax: STARTTLS");
		return;
	}
	if (s->tls) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "TLS already active");
		return;
	}
	if (s->srv->tls_server == NULL || s->local_peer) {
		smtp_session_reply(s, "454 %s TLS not available",
				   status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	smtp_session_reply(s, "220 %s Ready to start TLS",
			   status_code_str(STATUS_OK));
	/* Whatever the client pipelined after STARTTLS came in the clear
	 * and must not be read as if it were protected; nothing more is
	 * read until the handshake. */
	transport_drop_input(s->bev);
	bufferevent_disable(s->bev, EV_READ);
	smtp_session_enter_state(s, SMTP_STATE_STARTTLS);
}

/* The 220 is out: the same socket goes on under TLS. */
static void starttls_begin(struct smtp_session *s)
{
	SSL *ssl = SSL_new(s->srv->tls_server);
	if (ssl == NULL ||
	    transport_start_tls(s->srv->base, &s->bev, ssl, true) == -1) {
		smtp_session_free(s);
		return;
	}
	s->tls = true;
	/* The session starts over: no HELO, no transaction (§4.2). */
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	smtp_session_transaction_reset(s);
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	set_callbacks(s);
}

/* ---- the client, as the policies see it ---- */

void smtp_session_client_key(const struct smtp_session *s, uint8_t key[16])
{
	listener_client_key((const struct sockaddr *)&s->addr,
			    cfg_of(s)->ipv6_prefix_length, key);
}

bool smtp_session_relay_client(const struct smtp_session *s)
{
	const struct config *cfg = cfg_of(s);
	if (s->local_peer)
		return true;
	return config_cidr_match(cfg->relay_networks, cfg->relay_network_count,
				 (const struct sockaddr *)&s->addr);
}

/* The client as the policy sees it: a local submission is trusted like
 * an authenticated one. */
struct policy_client smtp_session_policy_client(const struct smtp_session *s)
{
	return (struct policy_client){
	    .addr = (const struct sockaddr *)&s->addr,
	    .authenticated = s->auth_user != NULL || s->local_peer,
	};
}

/* ---- the rest ---- */

static void cmd_rset(struct smtp_session *s, const struct smtp_command *cmd)
{
	(void)cmd;
	smtp_session_transaction_reset(s);
	smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_OK));
}

static void cmd_quit(struct smtp_session *s)
{
	smtp_session_reply(s, "221 %s Bye", status_code_str(STATUS_OK));
	smtp_session_close(s);
}

static void dispatch(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_command cmd;
	smtp_parse_command(line, len, &cmd);
	if (smtp_admission_dnsbl_refuses(s, cmd.verb))
		return;
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
		cmd_helo(s, &cmd, false);
		break;
	case SMTP_VERB_EHLO:
		cmd_helo(s, &cmd, true);
		break;
	case SMTP_VERB_MAIL:
		smtp_admission_cmd_mail(s, &cmd);
		break;
	case SMTP_VERB_RCPT:
		smtp_admission_cmd_rcpt(s, &cmd);
		break;
	case SMTP_VERB_DATA:
		smtp_message_cmd_data(s, &cmd);
		break;
	case SMTP_VERB_BDAT:
		smtp_message_cmd_bdat(s, &cmd);
		break;
	case SMTP_VERB_RSET:
		cmd_rset(s, &cmd);
		break;
	case SMTP_VERB_NOOP:
		smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_OK));
		break;
	case SMTP_VERB_QUIT:
		cmd_quit(s);
		break;
	case SMTP_VERB_HELP:
		smtp_session_reply(
		    s,
		    "214 %s See RFC 5321; facteur speaks HELO EHLO MAIL "
		    "RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
		    status_code_str(STATUS_OK));
		break;
	case SMTP_VERB_VRFY:
		smtp_session_reply(
		    s,
		    "252 %s Cannot VRFY user, but will accept message "
		    "and attempt delivery",
		    status_code_str(STATUS_VRFY));
		break;
	case SMTP_VERB_EXPN:
		smtp_session_reply(s, "502 %s EXPN is not available",
				   status_code_str(STATUS_BAD_COMMAND));
		break;
	case SMTP_VERB_STARTTLS:
		cmd_starttls(s, &cmd);
		break;
	case SMTP_VERB_AUTH:
		smtp_auth_cmd(s, &cmd);
		break;
	case SMTP_VERB_UNKNOWN:
	default:
		smtp_session_reply_error(s, 500, STATUS_BAD_COMMAND,
					 "Command unrecognized");
		break;
	}
}

/* ---- input ---- */

/* Read one command line; false when none is complete yet. A line over
 * the limit is answered at once and skipped up to its CRLF. */
static bool read_command(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	bool auth =
	    s->state == SMTP_STATE_AUTH || lineio_starts_with(in, "AUTH ");
	size_t limit = auth ? SMTP_AUTH_LINE_MAX : SMTP_COMMAND_LINE_MAX;
	char line[SMTP_AUTH_LINE_MAX];
	size_t line_len = 0;
	switch (lineio_read(in, LINEIO_END_CRLF, limit, &s->discarding_line,
			    line, &line_len)) {
	case LINEIO_NONE:
		return false;
	case LINEIO_TOO_LONG:
		smtp_session_reply_error(s, 500, STATUS_SYNTAX_ERROR,
					 "Line too long");
		return true;
	case LINEIO_SKIPPED:
		return true;
	case LINEIO_LINE:
		break;
	}
	if (s->state == SMTP_STATE_AUTH)
		smtp_auth_response(s, line, line_len);
	else
		dispatch(s, line, line_len);
	explicit_bzero(line, line_len);
	return true;
}

void smtp_session_process(struct smtp_session *s)
{
	bool more = true;
	while (more) {
		switch (s->state) {
		case SMTP_STATE_COMMAND:
			if (s->shutdown_pending) {
				smtp_session_reply(
				    s, "421 %s %s Service shutting down",
				    status_code_str(STATUS_SHUTDOWN),
				    cfg_of(s)->hostname);
				smtp_session_close(s);
				more = false;
				break;
			}
			if (s->dnsbl != NULL &&
			    evbuffer_get_length(bufferevent_get_input(s->bev)) >
				0 &&
			    smtp_admission_dnsbl_wait(s)) {
				more = false;
				break;
			}
			more = read_command(s);
			break;
		case SMTP_STATE_AUTH:
			more = read_command(s);
			break;
		case SMTP_STATE_DATA:
			more = smtp_message_read_data(s);
			break;
		case SMTP_STATE_BDAT:
			more = smtp_message_read_bdat(s);
			break;
		case SMTP_STATE_COMMITTING:
		case SMTP_STATE_MILTER:
		case SMTP_STATE_AUTH_CHECK:
		case SMTP_STATE_AUTH_DELAY:
		case SMTP_STATE_STARTTLS:
		case SMTP_STATE_CLOSING:
			more = false;
			break;
		}
	}
	if (!smtp_session_flush(s))
		return;
	/* A client that sends without reading replies is paused. */
	if (s->state != SMTP_STATE_CLOSING &&
	    s->state != SMTP_STATE_COMMITTING &&
	    s->state != SMTP_STATE_MILTER && s->state != SMTP_STATE_STARTTLS &&
	    s->state != SMTP_STATE_AUTH_CHECK &&
	    s->state != SMTP_STATE_AUTH_DELAY) {
		transport_pause_if_backlogged(s->bev, &s->paused);
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	smtp_session_process(arg);
}

/* Every queued reply is out (libevent wrote what session_flush could
 * not, or the TLS layer wrote it). */
static void on_write(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;
	if (!s->tls)
		bufferevent_disable(bev, EV_WRITE); /* direct writes again */
	if (s->state != SMTP_STATE_COMMITTING &&
	    s->state != SMTP_STATE_MILTER &&
	    s->state != SMTP_STATE_AUTH_CHECK &&
	    s->state != SMTP_STATE_AUTH_DELAY &&
	    s->state != SMTP_STATE_CLOSING && s->state != SMTP_STATE_STARTTLS &&
	    transport_resume(s->bev, &s->paused)) {
		smtp_session_process(s);
		return;
	}
	smtp_session_flush(s); /* a closing session ends, STARTTLS begins */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		/* the TLS handshake is done */
		s->tls_established = true;
		metrics_tls_session(METRICS_INBOUND);
		log_event(LOG_LEVEL_INFO, "tls", LOG_SESSION(s),
			  LOG_S("version", transport_tls_version(s->bev)),
			  LOG_S("cipher", transport_tls_cipher(s->bev)));
		return;
	}
	if (s->state == SMTP_STATE_COMMITTING ||
	    s->state == SMTP_STATE_MILTER) {
		/* (The handshake is over: a message came through it.)
		 * Reading goes on during a commit on a plain socket.
		 * libevent stopped it at an EOF or a read timeout:
		 * on_committed restarts it, so that the EOF is met after the
		 * reply, and the timeout counts from the commit's end, as
		 * when nothing was read meanwhile. */
		if ((what & BEV_EVENT_READING) &&
		    (what & (BEV_EVENT_EOF | BEV_EVENT_TIMEOUT)))
			return;
		/* An error: the client is gone. */
		s->gone = true;
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		return;
	}
	if (s->tls && !s->tls_established) {
		/* A handshake that failed or never finished: nothing can
		 * be said to this client in the clear any more. */
		log_event(LOG_LEVEL_INFO, "tls_failed", LOG_SESSION(s),
			  LOG_S("reason", (what & BEV_EVENT_TIMEOUT)
					      ? "handshake timeout"
					      : "handshake failed"));
		smtp_session_free(s);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    s->state != SMTP_STATE_CLOSING) {
		smtp_session_reply(s, "421 %s %s Error: timeout exceeded",
				   status_code_str(STATUS_BAD_CONNECTION),
				   cfg_of(s)->hostname);
		log_event(LOG_LEVEL_INFO, "timeout", LOG_SESSION(s),
			  LOG_S("state", state_names[s->state]));
		smtp_session_close(s);
		smtp_session_flush(s);
		return;
	}
	/* EOF, error, or a write that timed out: the client is gone. */
	smtp_session_free(s);
}

/* Stop reading; session_flush, which every entry point ends with, ends
 * the session once the queued replies are out. */
void smtp_session_close(struct smtp_session *s)
{
	if (s->state == SMTP_STATE_CLOSING)
		return;
	smtp_session_enter_state(s, SMTP_STATE_CLOSING);
	transport_close(s->bev);
}

/* Send the queued replies. Every entry point (a callback, a new
 * session, shutdown) ends here, so that the replies to all that one read
 * brought leave in one write (transport_flush). Once all is out, a
 * closing session ends and STARTTLS begins. False when s is no more. */
bool smtp_session_flush(struct smtp_session *s)
{
	if (!transport_flush(s->bev, s->tls))
		return true; /* on_write comes back here */
	if (s->state == SMTP_STATE_CLOSING) {
		smtp_session_free(s);
		return false;
	}
	if (s->state == SMTP_STATE_STARTTLS) {
		starttls_begin(s);
		return false;
	}
	return true;
}

void smtp_session_free(struct smtp_session *s)
{
	smtp_session_transaction_reset(s);
	log_event(LOG_LEVEL_INFO, "disconnect", LOG_SESSION(s),
		  LOG_I("duration", time(NULL) - s->started),
		  LOG_I("errors", s->errors));
	struct smtp_server *smtp = s->srv->smtp;
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		smtp->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	smtp->session_count--;
	metrics.connections_active--;
	if (s->local_peer)
		s->local.release(s->local.arg);
	else
		listener_release(s->srv->listener, (struct sockaddr *)&s->addr);
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	free(s->helo);
	free(s->auth_user);
	free(s->auth_login_user);
	if (s->auth_timer != NULL)
		event_free(s->auth_timer);
	if (s->auth_job != NULL)
		smtp_auth_job_detach(s->auth_job); /* its result is dropped */
	dnsbl_check_free(s->dnsbl);
	if (s->dnsbl_timer != NULL)
		event_free(s->dnsbl_timer);
	free(s->dnsbl_zone);
	milter_session_free(s->milter);
	free(s);
}

/* What both kinds of session share once their fields are set: join the
 * server's sessions, greet, start the blocklist look-ups. */
static void session_start(struct smtp_session *s)
{
	struct server *srv = s->srv;
	log_session_id(s->id);
	struct smtp_server *smtp = srv->smtp;
	s->next = smtp->sessions;
	if (smtp->sessions != NULL)
		smtp->sessions->prev = s;
	smtp->sessions = s;
	smtp->session_count++;
	metrics.connections_active++;
	metrics.connections_total++;

	const struct config *cfg = srv->cfg;
	set_callbacks(s);
	if (s->local_peer)
		log_event(LOG_LEVEL_INFO, "connect", LOG_SESSION(s),
			  LOG_I("uid", s->local.uid),
			  LOG_S("user", s->local.user),
			  LOG_I("pid", s->local.pid));
	else
		log_event(LOG_LEVEL_INFO, "connect", LOG_SESSION(s));
	if (smtp_auth_client_refused(s)) {
		smtp_session_reply(
		    s,
		    "421 %s %s Error: too many failed logins from your "
		    "address, try again later",
		    status_code_str(STATUS_SECURITY_TRANSIENT), cfg->hostname);
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "auth_fail_limit"));
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		smtp_session_close(s);
		smtp_session_flush(s);
		return;
	}
	smtp_session_reply(s, "220 %s ESMTP facteur", cfg->hostname);
	smtp_session_flush(s);
	if (cfg->milter_count > 0) {
		struct milter_client mc;
		milter_client_of(s, &mc);
		s->milter = milter_session_new(srv->base, cfg, &mc);
	}
	smtp_admission_dnsbl_start(s);
}

/* A session on an accepted socket, plain or with implicit TLS. */
static struct smtp_session *session_new(struct server *srv, int fd,
					enum listen_mode mode)
{
	struct smtp_session *s = calloc(1, sizeof *s);
	if (s == NULL) {
		close(fd);
		return NULL;
	}
	s->bev = transport_accept(srv->base, fd, mode == LISTEN_SMTPS,
				  srv->tls_server);
	s->tls = s->bev != NULL && mode == LISTEN_SMTPS;
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return NULL;
	}
	s->srv = srv;
	s->mode = mode;
	s->started = time(NULL);
	return s;
}

struct smtp_session *smtp_session_new(struct server *srv, int fd,
				      const struct sockaddr *addr,
				      socklen_t addrlen, enum listen_mode mode)
{
	struct smtp_session *s = session_new(srv, fd, mode);
	if (s == NULL)
		return NULL;
	if (addrlen > sizeof s->addr)
		addrlen = sizeof s->addr;
	memcpy(&s->addr, addr, addrlen);
	listener_address_text(addr, s->client, sizeof s->client);
	session_start(s);
	return s;
}

struct smtp_session *smtp_session_new_local(struct server *srv, int fd,
					    const struct smtp_local_peer *peer)
{
	struct smtp_session *s = session_new(srv, fd, LISTEN_SMTP);
	if (s == NULL)
		return NULL;
	s->local_peer = true;
	s->local = *peer;
	s->addr.ss_family = AF_UNIX;
	snprintf(s->client, sizeof s->client, "local");
	session_start(s);
	return s;
}

struct smtp_server *smtp_server_new(void)
{
	return calloc(1, sizeof(struct smtp_server));
}

void smtp_server_free(struct smtp_server *smtp)
{
	free(smtp);
}

void smtp_server_shutdown(struct smtp_server *smtp)
{
	struct smtp_session *s = smtp->sessions;
	while (s != NULL) {
		struct smtp_session *next = s->next;
		if (s->state == SMTP_STATE_COMMAND) {
			smtp_session_reply(s, "421 %s %s Service shutting down",
					   status_code_str(STATUS_SHUTDOWN),
					   cfg_of(s)->hostname);
			smtp_session_close(s);
			smtp_session_flush(s);
		} else if (s->state != SMTP_STATE_CLOSING) {
			s->shutdown_pending = true;
		}
		s = next;
	}
}

size_t smtp_server_sessions(const struct smtp_server *smtp)
{
	return smtp->session_count;
}
