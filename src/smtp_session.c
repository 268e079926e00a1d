/*
 * The inbound SMTP session (see smtp_session.h).
 *
 * One bufferevent per client. session_process() is the state machine:
 * it takes whatever input is buffered and, depending on the state, reads
 * command lines, streams DATA or BDAT octets through the smtp_proto
 * decoder into the spool, or waits for the spool's commit. Each command
 * has a check step (sequence, syntax: the 5xx replies) and a proceed
 * step (its effect). Replies are queued on the output buffer, so the
 * answers to pipelined commands leave together.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "facteur/ascii.h"
#include "facteur/auth.h"
#include "facteur/auth_limit.h"
#include "facteur/config.h"
#include "facteur/dkim.h"
#include "facteur/dkim_intake.h"
#include "facteur/dnsbl.h"
#include "facteur/lineio.h"
#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/mailtime.h"
#include "facteur/message_id.h"
#include "facteur/metrics.h"
#include "facteur/milter.h"
#include "facteur/password_check.h"
#include "facteur/policy.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/smtp_proto.h"
#include "facteur/smtp_session.h"
#include "facteur/spool.h"
#include "facteur/state_list.h"
#include "facteur/status_code.h"
#include "facteur/transport.h"
#include "facteur/worker.h"

#define MAX_PROTOCOL_ERRORS 10
#define DATA_CHUNK 16384
/* Decoder output gathers here with the Received header, so that a
 * small message reaches the spool in one write; one feed always fits
 * once it is written out. */
#define MESSAGE_BUF_SIZE SMTP_DATA_OUT_MAX(DATA_CHUNK)
/* Input read ahead while a commit is in flight: about one read's worth,
 * as much as was left over when reading stopped during the commit. */
#define COMMIT_READ_AHEAD DATA_CHUNK
#define HELO_MAX 255
#define AUTH_FAILURES_MAX 5 /* then 421 */
/* How long a first command waits for the blocklists before it passes. */
#define DNSBL_WAIT_SECONDS 5
#define AUTH_ADDRESS_MAX PASSWORD_CHECK_USER_MAX
#define AUTH_PASSWORD_MAX PASSWORD_CHECK_PASSWORD_MAX

/* Each state once: its name in the enum and in the debug log. */
#define SMTP_STATES(X)                                                         \
	/* reading command lines */                                            \
	X(SMTP_STATE_COMMAND, "command")                                       \
	/* reading a SASL response line */                                     \
	X(SMTP_STATE_AUTH, "auth")                                             \
	/* the password is checked off the loop */                             \
	X(SMTP_STATE_AUTH_CHECK, "auth_check")                                 \
	/* a failed login waits before its 535 */                              \
	X(SMTP_STATE_AUTH_DELAY, "auth_delay")                                 \
	/* reading DATA content up to CRLF.CRLF */                             \
	X(SMTP_STATE_DATA, "data")                                             \
	/* reading the octets of a BDAT chunk */                               \
	X(SMTP_STATE_BDAT, "bdat")                                             \
	/* waiting for the spool; input waits */                               \
	X(SMTP_STATE_COMMITTING, "committing")                                 \
	/* waiting for the milters; input waits */                             \
	X(SMTP_STATE_MILTER, "milter")                                         \
	/* the 220 drains; then the handshake */                               \
	X(SMTP_STATE_STARTTLS, "starttls")                                     \
	/* flushing the last replies */                                        \
	X(SMTP_STATE_CLOSING, "closing")

enum smtp_state { SMTP_STATES(STATE_LIST_ENUM) };

static const char *const state_names[] = {SMTP_STATES(STATE_LIST_NAME)};

/* One accepted RCPT may stand for several final recipients (aliases).
 * Each is one record holding its strings, packed with others in blocks,
 * and the address as given is stored only when it differs from the
 * final one: a recipient costs its text and a dozen octets, not three
 * allocations (with their headers and rounding). */
struct recipient {
	unsigned notify;
	bool local;
	bool forwarded;	   /* through an alias: the sender is rewritten */
	uint16_t original; /* offset in text of the address as given; 0:
			      the final address itself */
	uint16_t orcpt;	   /* offset in text of ORCPT; 0: none */
	char text[];	   /* the final (canonical) address, then the others,
			      each NUL-terminated */
};

/* Recipient records, back to back. */
struct recipient_block {
	struct recipient_block *next;
	size_t used, size;
	_Alignas(struct recipient) char data[];
};

/* Octets of records in a block; a record is ~1 KiB at most. */
#define RECIPIENT_BLOCK 4096

struct transaction {
	bool active; /* MAIL accepted */
	struct smtp_mail mail;
	struct recipient **rcpts; /* into blocks */
	size_t rcpt_count, rcpt_cap;
	struct recipient_block *blocks; /* the newest first */
	unsigned accepted_rcpt_commands;
	/* Octets this envelope holds (max_envelope_size), also counted in
	 * the server's envelope_memory (max_envelope_memory). */
	size_t envelope_bytes;
	struct spool_incoming *incoming;
	struct smtp_data data;
	char *outbuf;  /* MESSAGE_BUF_SIZE: what the spool is yet to get */
	size_t outlen; /* octets in outbuf */
	bool too_big;
	bool used_bdat;
	struct message_id_scan message_id;   /* for the accepted line */
	struct message_id_scan tls_required; /* the TLS-Required field */
	struct dkim_intake *dkim; /* reading for a signature, or NULL */
	bool dkim_wanted;	  /* a trusted client, dkim_sign has keys */
};

struct smtp_session {
	struct smtp_session *prev, *next; /* all sessions, for shutdown */
	struct server *srv;
	struct bufferevent *bev;
	enum smtp_state state;
	enum listen_mode mode;
	struct sockaddr_storage addr;
	char client[INET6_ADDRSTRLEN];
	char id[LOG_SESSION_ID_SIZE];
	time_t started;
	char *helo;
	bool esmtp;
	bool tls;	      /* TLS requested (STARTTLS or smtps) */
	bool tls_established; /* the handshake completed */
	char *auth_user;
	/* SASL in progress */
	enum { AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD } auth_step;
	char *auth_login_user;
	unsigned auth_failures;
	struct event *auth_timer;
	struct auth_job *auth_job; /* the check on the worker, or NULL */
	unsigned errors;
	bool discarding_line;  /* a line over the limit is being skipped */
	bool shutdown_pending; /* SIGTERM came during a message */
	bool gone;   /* the client left while a commit was in flight */
	bool paused; /* reading stopped until our replies drain */
	struct transaction tx;
	/* BDAT chunk in progress */
	uint64_t bdat_remaining;
	bool bdat_last;
	bool bdat_discard; /* read the chunk, then give bdat_reply */
	int bdat_reply_code;
	enum status_code bdat_reply_status;
	const char *bdat_reply_text;
	/* the commit in flight, and the Message-ID it carries ("": none) */
	struct spool_envelope *committing;
	char committing_message_id[MESSAGE_ID_MAX + 1];
	struct spool_incoming *signing; /* its message, while being signed */
	/* dnsbl: the look-ups in flight (NULL once decided), the timer of
	 * a command that waits for them, the zone that lists the client */
	struct dnsbl_check *dnsbl;
	struct event *dnsbl_timer;
	char *dnsbl_zone;
	/* a local submission (submit.h): who is on the other end */
	bool local_peer;
	struct smtp_local_peer local;
	/* milter: the connections, and the RCPT they are asked about */
	struct milter_session *milter;
	struct smtp_rcpt milter_rcpt;
	struct policy_expansion milter_exp;
	const char *milter_name, *milter_action; /* for the accepted line */
};

/* The SMTP side of one daemon: its sessions, for shutdown and the drain
 * check, and the memory their envelopes hold together. */
struct smtp_server {
	struct smtp_session *sessions;
	size_t session_count;
	/* The envelope octets of every open transaction. */
	uint64_t envelope_memory;
};

static void session_process(struct smtp_session *s);
static bool session_flush(struct smtp_session *s);
static void session_close(struct smtp_session *s);
static void session_free(struct smtp_session *s);

static const struct config *cfg_of(const struct smtp_session *s)
{
	return s->srv->cfg;
}

static void enter_state(struct smtp_session *s, enum smtp_state state)
{
	if (s->state != state)
		log_event(LOG_LEVEL_DEBUG, "smtp_state", LOG_SESSION(s),
			  LOG_S("from", state_names[s->state]),
			  LOG_S("to", state_names[state]));
	s->state = state;
}

static void reply(struct smtp_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply(struct smtp_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* facteur_smtp_rejections_total, bumped where the refusal is answered. */
static void count_rejection(enum metrics_rejection reason)
{
	metrics.smtp_rejections[reason]++;
}

/* A protocol error (500, 501, 503): counted, and the tenth one ends the
 * session after its own reply. */
static void reply_error(struct smtp_session *s, int code,
			enum status_code status, const char *text)
{
	reply(s, "%d %s %s", code, status_code_str(status), text);
	if (code != 500 && code != 501 && code != 503)
		return;
	count_rejection(code == 501 ? METRICS_REJECT_SYNTAX
				    : METRICS_REJECT_PROTOCOL);
	if (++s->errors >= MAX_PROTOCOL_ERRORS) {
		count_rejection(METRICS_REJECT_TOO_MANY_ERRORS);
		reply(s, "421 %s %s Error: too many errors",
		      status_code_str(STATUS_SECURITY_TRANSIENT),
		      cfg_of(s)->hostname);
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "too many errors"));
		session_close(s);
	}
}

static void log_rejected(struct smtp_session *s, const char *reason,
			 const char *address)
{
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", reason), LOG_S("address", address));
}

/* A milter's refusal: its reply, the rejected line naming it. */
static void milter_refused(struct smtp_session *s,
			   const struct milter_outcome *o, const char *address)
{
	reply(s, "%s", o->reply);
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", "milter"), LOG_S("address", address),
		  LOG_S("milter", o->milter ? o->milter : "-"),
		  LOG_S("action", o->action ? o->action : "-"),
		  LOG_S("reply", o->reply));
	count_rejection(METRICS_REJECT_MILTER);
}

/* ---- transaction ---- */

static void transaction_reset(struct smtp_session *s)
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
static void input_hold(struct smtp_session *s)
{
	if (s->tls)
		bufferevent_disable(s->bev, EV_READ);
	else
		bufferevent_setwatermark(s->bev, EV_READ, 0, COMMIT_READ_AHEAD);
}

/* Reading is no longer bounded, and goes on if it was stopped (TLS, or
 * an EOF or a timeout during the wait: met again now). */
static void input_release(struct smtp_session *s)
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
static void milter_wait(struct smtp_session *s, struct milter_client *mc)
{
	milter_client_of(s, mc);
	enter_state(s, SMTP_STATE_MILTER);
	input_hold(s);
}

/* The milters answered: true when the client left meanwhile (s is no
 * more), else the session reads commands again. */
static bool milter_resumed(struct smtp_session *s)
{
	if (s->gone) {
		session_free(s);
		return true;
	}
	enter_state(s, SMTP_STATE_COMMAND);
	input_release(s);
	return false;
}

static const char *recipient_address(const struct recipient *r)
{
	return r->text;
}

static const char *recipient_original(const struct recipient *r)
{
	return r->text + r->original;
}

static const char *recipient_orcpt(const struct recipient *r)
{
	return r->orcpt != 0 ? r->text + r->orcpt : NULL;
}

/* What one final recipient of this RCPT holds: its record and its
 * place in the list. */
static size_t recipient_cost(const struct smtp_rcpt *rcpt,
			     const struct policy_target *target)
{
	size_t size = sizeof(struct recipient) + sizeof(struct recipient *) +
		      strlen(target->address) + 1;
	if (strcmp(rcpt->to.address, target->address) != 0)
		size += strlen(rcpt->to.address) + 1;
	if (rcpt->orcpt[0] != '\0')
		size += strlen(rcpt->orcpt) + 1;
	return size;
}

/* Account for octets taken by (or given back from) the transaction. */
static void envelope_charge(struct smtp_session *s, size_t size)
{
	s->tx.envelope_bytes += size;
	s->srv->smtp->envelope_memory += size;
}

/* Room for one record in the newest block, or a new block. */
static struct recipient *recipient_alloc(struct transaction *tx, size_t size)
{
	size_t align = _Alignof(struct recipient);
	size = (size + align - 1) / align * align;
	struct recipient_block *b = tx->blocks;
	if (b == NULL || b->size - b->used < size) {
		size_t room = size > RECIPIENT_BLOCK ? size : RECIPIENT_BLOCK;
		b = malloc(sizeof *b + room);
		if (b == NULL)
			return NULL;
		b->used = 0;
		b->size = room;
		b->next = tx->blocks;
		tx->blocks = b;
	}
	struct recipient *r = (struct recipient *)(b->data + b->used);
	b->used += size;
	return r;
}

static bool recipient_known(const struct transaction *tx, const char *address)
{
	for (size_t i = 0; i < tx->rcpt_count; i++)
		if (strcmp(recipient_address(tx->rcpts[i]), address) == 0)
			return true;
	return false;
}

static int recipient_add(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			 const struct policy_target *target)
{
	struct transaction *tx = &s->tx;
	if (recipient_known(tx, target->address))
		return 0;
	if (tx->rcpt_count == tx->rcpt_cap) {
		size_t cap = tx->rcpt_cap ? 2 * tx->rcpt_cap : 4;
		struct recipient **grown =
		    realloc(tx->rcpts, cap * sizeof *grown);
		if (grown == NULL)
			return -1;
		tx->rcpts = grown;
		tx->rcpt_cap = cap;
	}
	/* Addresses are at most SMTP_PATH_MAX and ORCPT SMTP_ORCPT_MAX
	 * octets (the parser's bounds), so the offsets fit 16 bits. */
	size_t address_len = strlen(target->address) + 1;
	bool same = strcmp(rcpt->to.address, target->address) == 0;
	size_t original_len = same ? 0 : strlen(rcpt->to.address) + 1;
	size_t orcpt_len = rcpt->orcpt[0] ? strlen(rcpt->orcpt) + 1 : 0;
	struct recipient *r = recipient_alloc(tx, sizeof *r + address_len +
						      original_len + orcpt_len);
	if (r == NULL)
		return -1;
	r->notify = rcpt->notify;
	r->local = target->local;
	r->forwarded = target->forwarded;
	memcpy(r->text, target->address, address_len);
	r->original = same ? 0 : (uint16_t)address_len;
	memcpy(r->text + address_len, rcpt->to.address, original_len);
	r->orcpt = orcpt_len ? (uint16_t)(address_len + original_len) : 0;
	memcpy(r->text + address_len + original_len, rcpt->orcpt, orcpt_len);
	tx->rcpts[tx->rcpt_count++] = r;
	envelope_charge(s, recipient_cost(rcpt, target));
	return 0;
}

/* Is the session encrypted? The handshake's "connected" event may come
 * after the first bytes read under TLS, so ask OpenSSL itself. */
static bool tls_active(const struct smtp_session *s)
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
		reply_error(s, 501, STATUS_BAD_ARGS,
			    esmtp ? "Syntax: EHLO hostname"
				  : "Syntax: HELO hostname");
		return;
	}
	char *helo = strndup(cmd->arg, cmd->arglen);
	if (helo == NULL) {
		reply(s, "451 %s Out of memory",
		      status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	free(s->helo);
	s->helo = helo;
	s->esmtp = esmtp;
	transaction_reset(s);
	if (!esmtp) {
		reply(s, "250 %s", cfg->hostname);
		return;
	}
	reply(s, "250-%s", cfg->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %llu", (unsigned long long)cfg->max_message_size);
	reply(s, "250-8BITMIME");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-CHUNKING");
	if (s->srv->tls_server != NULL && !s->tls && !s->local_peer)
		reply(s, "250-STARTTLS");
	if (tls_active(s) && s->srv->users != NULL)
		reply(s, "250-AUTH PLAIN LOGIN");
	if (tls_active(s))
		reply(s, "250-REQUIRETLS"); /* RFC 8689 §4: encrypted only */
	reply(s, "250 DSN");
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
		reply_error(s, 501, STATUS_BAD_ARGS, "Syntax: STARTTLS");
		return;
	}
	if (s->tls) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "TLS already active");
		return;
	}
	if (s->srv->tls_server == NULL || s->local_peer) {
		reply(s, "454 %s TLS not available",
		      status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	reply(s, "220 %s Ready to start TLS", status_code_str(STATUS_OK));
	/* Whatever the client pipelined after STARTTLS came in the clear
	 * and must not be read as if it were protected; nothing more is
	 * read until the handshake. */
	transport_drop_input(s->bev);
	bufferevent_disable(s->bev, EV_READ);
	enter_state(s, SMTP_STATE_STARTTLS);
}

/* The 220 is out: the same socket goes on under TLS. */
static void starttls_begin(struct smtp_session *s)
{
	SSL *ssl = SSL_new(s->srv->tls_server);
	if (ssl == NULL ||
	    transport_start_tls(s->srv->base, &s->bev, ssl, true) == -1) {
		session_free(s);
		return;
	}
	s->tls = true;
	/* The session starts over: no HELO, no transaction (§4.2). */
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	transaction_reset(s);
	enter_state(s, SMTP_STATE_COMMAND);
	set_callbacks(s);
}

/* ---- AUTH (RFC 4954) ---- */

static void client_key(const struct smtp_session *s, uint8_t key[16])
{
	listener_client_key((const struct sockaddr *)&s->addr,
			    cfg_of(s)->ipv6_prefix_length, key);
}

static bool relay_client(const struct smtp_session *s)
{
	const struct config *cfg = cfg_of(s);
	if (s->local_peer)
		return true;
	return config_cidr_match(cfg->relay_networks, cfg->relay_network_count,
				 (const struct sockaddr *)&s->addr);
}

/* The client as the policy sees it: a local submission is trusted like
 * an authenticated one. */
static struct policy_client policy_client_of(const struct smtp_session *s)
{
	return (struct policy_client){
	    .addr = (const struct sockaddr *)&s->addr,
	    .authenticated = s->auth_user != NULL || s->local_peer,
	};
}

/* Has this client failed too many logins lately, in any session? */
static bool auth_client_refused(const struct smtp_session *s)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	client_key(s, key);
	return auth_limit_client_refused(s->srv->auth_limit, key, time(NULL),
					 cfg->auth_fail_limit,
					 cfg->auth_fail_window, NULL);
}

static void auth_succeeded(struct smtp_session *s, const char *user)
{
	free(s->auth_user);
	s->auth_user = strdup(user);
	enter_state(s, SMTP_STATE_COMMAND);
	if (s->auth_user == NULL) {
		reply(s, "454 %s Out of memory",
		      status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	metrics.auth_attempts[METRICS_AUTH_SUCCESS]++;
	log_event(LOG_LEVEL_INFO, "auth", LOG_SESSION(s),
		  LOG_S("user", s->auth_user), LOG_S("result", "ok"));
	reply(s, "235 %s Authentication successful",
	      status_code_str(STATUS_AUTH_OK));
}

static void on_auth_delay(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_session *s = arg;
	enter_state(s, SMTP_STATE_COMMAND);
	if (s->auth_failures >= AUTH_FAILURES_MAX || auth_client_refused(s)) {
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		reply(s, "421 %s %s Error: too many failed logins",
		      status_code_str(STATUS_SECURITY_TRANSIENT),
		      cfg_of(s)->hostname);
		session_close(s);
		session_flush(s);
		return;
	}
	reply(s, "535 %s Authentication credentials invalid",
	      status_code_str(STATUS_AUTH_FAILED));
	bufferevent_enable(s->bev, EV_READ);
	session_process(s);
}

/* A failed login is answered after a delay that grows with each failure,
 * so that guessing passwords costs time; input waits meanwhile. */
static void auth_failed(struct smtp_session *s, const char *user)
{
	s->auth_failures++;
	metrics.auth_attempts[METRICS_AUTH_FAILURE]++;
	log_event(LOG_LEVEL_WARN, "auth", LOG_SESSION(s), LOG_S("user", user),
		  LOG_S("result", "failed"),
		  LOG_I("failures", s->auth_failures));
	if (s->auth_timer == NULL)
		s->auth_timer = evtimer_new(s->srv->base, on_auth_delay, s);
	if (s->auth_timer == NULL) {
		session_close(s);
		return;
	}
	enter_state(s, SMTP_STATE_AUTH_DELAY);
	bufferevent_disable(s->bev, EV_READ);
	struct timeval delay = {s->auth_failures < 5 ? s->auth_failures : 5, 0};
	evtimer_add(s->auth_timer, &delay);
}

/* A password check on the worker, and the session it reports to. */
struct auth_job {
	struct smtp_session *session; /* NULL once the session is gone */
	struct password_check check;
};

static void auth_job_free(struct auth_job *job)
{
	password_check_clear(&job->check);
	free(job);
}

static void auth_job_run(void *arg)
{
	struct auth_job *job = arg;
	password_check_run(&job->check);
}

static void auth_job_done(void *arg)
{
	struct auth_job *job = arg;
	struct smtp_session *s = job->session;
	if (s == NULL) {
		auth_job_free(job); /* the client left meanwhile */
		return;
	}
	s->auth_job = NULL;
	if (job->check.ok) {
		auth_succeeded(s, job->check.user);
		bufferevent_enable(s->bev, EV_READ);
		auth_job_free(job);
		session_process(s);
		return;
	}
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	client_key(s, key);
	/* Only accounts that exist are counted: guesses at names that do
	 * not would only crowd the table. */
	auth_limit_failure(s->srv->auth_limit, key,
			   job->check.hash != NULL ? job->check.user : NULL,
			   time(NULL), cfg->auth_fail_window);
	auth_failed(s, job->check.user);
	auth_job_free(job);
	session_flush(s);
}

/* Check the password on the worker (crypt(3) costs milliseconds by
 * design); input waits, other sessions go on. An account under attack
 * is refused to clients that have failed logins themselves. */
static void auth_check(struct smtp_session *s, const char *user,
		       const char *password)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	client_key(s, key);
	if (!auth_limit_account_open(s->srv->auth_limit, key, user, time(NULL),
				     cfg->auth_fail_limit,
				     cfg->auth_fail_window)) {
		enter_state(s, SMTP_STATE_COMMAND);
		metrics.auth_attempts[METRICS_AUTH_FAILURE]++;
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		log_event(LOG_LEVEL_WARN, "auth", LOG_SESSION(s),
			  LOG_S("user", user), LOG_S("result", "refused"),
			  LOG_S("reason", "auth_fail_limit"));
		reply(s,
		      "454 %s Too many failed logins for this account, "
		      "try again later",
		      status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	struct auth_job *job = calloc(1, sizeof *job);
	if (job != NULL)
		job->session = s;
	if (job == NULL ||
	    password_check_init(&job->check, s->srv->users, user, password) ==
		-1 ||
	    worker_run(s->srv->worker, auth_job_run, auth_job_done, job) ==
		-1) {
		if (job != NULL)
			auth_job_free(job);
		enter_state(s, SMTP_STATE_COMMAND);
		reply(s, "454 %s Temporary authentication failure",
		      status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	s->auth_job = job;
	enter_state(s, SMTP_STATE_AUTH_CHECK);
	bufferevent_disable(s->bev, EV_READ);
}

/* One SASL response (the initial one, or a line after a 334). */
static void auth_response(struct smtp_session *s, const char *line, size_t len)
{
	if (len == 1 && line[0] == '*') {
		enter_state(s, SMTP_STATE_COMMAND);
		reply_error(s, 501, STATUS_SECURITY_PERMANENT,
			    "Authentication cancelled");
		return;
	}
	char user[AUTH_ADDRESS_MAX + 1];
	char password[AUTH_PASSWORD_MAX];
	unsigned char decoded[AUTH_PASSWORD_MAX];
	int n;
	switch (s->auth_step) {
	case AUTH_PLAIN:
		if (auth_sasl_plain_decode(line, len, user, sizeof user,
					   password, sizeof password) == -1) {
			enter_state(s, SMTP_STATE_COMMAND);
			reply_error(s, 501, STATUS_SYNTAX_ERROR,
				    "Invalid AUTH PLAIN response");
			return;
		}
		auth_check(s, user, password);
		explicit_bzero(password, sizeof password);
		return;
	case AUTH_LOGIN_USER:
		n = auth_base64_decode(line, len, decoded, sizeof decoded - 1);
		if (n < 0 || n > AUTH_ADDRESS_MAX ||
		    memchr(decoded, '\0', (size_t)n) != NULL) {
			enter_state(s, SMTP_STATE_COMMAND);
			reply_error(s, 501, STATUS_SYNTAX_ERROR,
				    "Invalid AUTH LOGIN response");
			return;
		}
		free(s->auth_login_user);
		s->auth_login_user = strndup((const char *)decoded, (size_t)n);
		s->auth_step = AUTH_LOGIN_PASSWORD;
		reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		return;
	case AUTH_LOGIN_PASSWORD:
		n = auth_base64_decode(line, len, decoded, sizeof decoded - 1);
		if (n < 0 || s->auth_login_user == NULL ||
		    memchr(decoded, '\0', (size_t)n) != NULL) {
			enter_state(s, SMTP_STATE_COMMAND);
			reply_error(s, 501, STATUS_SYNTAX_ERROR,
				    "Invalid AUTH LOGIN response");
			return;
		}
		decoded[n] = '\0';
		snprintf(user, sizeof user, "%s", s->auth_login_user);
		free(s->auth_login_user);
		s->auth_login_user = NULL;
		auth_check(s, user, (const char *)decoded);
		explicit_bzero(decoded, sizeof decoded);
		return;
	}
}

static void cmd_auth(struct smtp_session *s, const struct smtp_command *cmd)
{
	if (s->srv->users == NULL) {
		reply(s, "502 %s Authentication not enabled",
		      status_code_str(STATUS_BAD_COMMAND));
		return;
	}
	if (!tls_active(s)) {
		count_rejection(METRICS_REJECT_TLS_REQUIRED);
		reply(s,
		      "538 %s Encryption required for requested "
		      "authentication mechanism",
		      status_code_str(STATUS_ENCRYPTION_REQUIRED));
		return;
	}
	if (s->helo == NULL || !s->esmtp) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "Send EHLO first");
		return;
	}
	if (s->auth_user != NULL) {
		reply_error(s, 503, STATUS_BAD_COMMAND,
			    "Already authenticated");
		return;
	}
	if (s->tx.active) {
		reply_error(s, 503, STATUS_BAD_COMMAND,
			    "AUTH not allowed during a mail transaction");
		return;
	}
	const char *mech = cmd->arg;
	size_t mech_len = 0;
	while (mech_len < cmd->arglen && mech[mech_len] != ' ')
		mech_len++;
	const char *initial = NULL;
	size_t initial_len = 0;
	if (mech_len < cmd->arglen) {
		initial = mech + mech_len + 1;
		initial_len = cmd->arglen - mech_len - 1;
	}
	if (ascii_ieq(mech, mech_len, "PLAIN")) {
		s->auth_step = AUTH_PLAIN;
	} else if (ascii_ieq(mech, mech_len, "LOGIN")) {
		s->auth_step = AUTH_LOGIN_USER;
	} else {
		reply(s, "504 %s Unrecognized authentication mechanism",
		      status_code_str(STATUS_BAD_ARGS));
		return;
	}
	enter_state(s, SMTP_STATE_AUTH);
	if (initial != NULL) {
		/* "=" is an empty initial response (RFC 4954 §4). */
		if (initial_len == 1 && initial[0] == '=')
			initial_len = 0;
		auth_response(s, initial, initial_len);
		return;
	}
	if (s->auth_step == AUTH_PLAIN)
		reply(s, "334 ");
	else
		reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
}

/* ---- MAIL, RCPT ---- */

/* What the refusals of a MAIL or RCPT argument say of it. */
struct path_command {
	const char *verb; /* in "Bad <verb> parameter" */
	enum status_code address_status;
	const char *address_error;
	const char *syntax;
};

static const struct path_command mail_command = {
    "MAIL", STATUS_BAD_SENDER_SYNTAX, "Bad sender address syntax",
    "Syntax: MAIL FROM:<address>"};
static const struct path_command rcpt_command = {"RCPT", STATUS_BAD_RCPT_SYNTAX,
						 "Bad recipient address syntax",
						 "Syntax: RCPT TO:<address>"};

/* Whether the argument parsed; if not, the refusal is sent. An unknown
 * parameter is a 555 that does not count as a protocol error. */
static bool path_command_parsed(struct smtp_session *s,
				const struct path_command *pc,
				enum smtp_parse_result result)
{
	char text[64];

	switch (result) {
	case SMTP_PARSE_OK:
		return true;
	case SMTP_PARSE_BAD_ADDRESS:
		reply_error(s, 501, pc->address_status, pc->address_error);
		return false;
	case SMTP_PARSE_UNKNOWN_PARAM:
		reply(s, "555 %s Unsupported %s parameter",
		      status_code_str(STATUS_BAD_ARGS), pc->verb);
		return false;
	case SMTP_PARSE_BAD_PARAM:
		snprintf(text, sizeof text, "Bad %s parameter", pc->verb);
		reply_error(s, 501, STATUS_BAD_ARGS, text);
		return false;
	case SMTP_PARSE_SYNTAX:
	default:
		reply_error(s, 501, STATUS_BAD_ARGS, pc->syntax);
		return false;
	}
}

/* max_messages_per_ip: one more MAIL from this client, across
 * sessions, or a 450 when it is past its rate. */
static bool message_rate_allows(struct smtp_session *s, const char *sender)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	if (cfg->max_messages == 0 || relay_client(s))
		return true;
	client_key(s, key);
	if (auth_limit_rate_take(s->srv->message_rate, key, time(NULL),
				 cfg->max_messages, cfg->max_messages_window))
		return true;
	reply(s,
	      "450 %s Error: too many messages from your address, try "
	      "again later",
	      status_code_str(STATUS_NOT_AUTHORIZED_TRANSIENT));
	log_rejected(s, "rate", sender);
	count_rejection(METRICS_REJECT_RATE);
	return false;
}

/* Is this the sender facteur-sendmail gives the caller by default, its
 * account's name at the host name or at a local domain? Anything else
 * from an unprivileged caller is a chosen sender (-f), logged. */
static bool sender_is_local_user(const struct smtp_session *s,
				 const char *address)
{
	const char *at = strrchr(address, '@');
	size_t user_len = strlen(s->local.user);
	if (at == NULL || (size_t)(at - address) != user_len ||
	    memcmp(address, s->local.user, user_len) != 0)
		return false;
	char *domain = ascii_lower_dup(at + 1, strlen(at + 1));
	bool local = domain != NULL &&
		     (ascii_ieq(domain, strlen(domain), cfg_of(s)->hostname) ||
		      config_is_local_domain(cfg_of(s), domain));
	free(domain);
	return local;
}

static void mail_accepted(struct smtp_session *s)
{
	s->tx.active = true;
	envelope_charge(s, strlen(s->tx.mail.from.address) + 1);
	reply(s, "250 %s Ok", status_code_str(STATUS_SENDER_OK));
}

static void on_milter_mail(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (milter_resumed(s))
		return;
	if (o->verdict == MILTER_CONTINUE) {
		mail_accepted(s);
	} else {
		milter_refused(s, o, s->tx.mail.from.address);
		transaction_reset(s);
	}
	session_process(s);
}

static void cmd_mail(struct smtp_session *s, const struct smtp_command *cmd)
{
	const struct config *cfg = cfg_of(s);
	if (s->helo == NULL) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "Send HELO/EHLO first");
		return;
	}
	if (s->tx.active) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "Nested MAIL command");
		return;
	}
	if (s->mode == LISTEN_SUBMISSION && s->auth_user == NULL) {
		count_rejection(METRICS_REJECT_AUTH_REQUIRED);
		reply(s, "530 %s Authentication required",
		      status_code_str(STATUS_SECURITY_PERMANENT));
		return;
	}
	struct smtp_mail mail;
	if (!path_command_parsed(s, &mail_command,
				 smtp_parse_mail(cmd->arg, cmd->arglen, &mail)))
		return;
	if (mail.requiretls && !tls_active(s)) {
		reply(s, "530 %s REQUIRETLS needs an encrypted session",
		      status_code_str(STATUS_ENCRYPTION_NEEDED));
		log_rejected(s, "REQUIRETLS without TLS", mail.from.address);
		return;
	}
	if (mail.size_given && mail.size > cfg->max_message_size) {
		reply(s, "552 %s Message size exceeds fixed limit",
		      status_code_str(STATUS_TOO_BIG));
		log_rejected(s, "message too big", mail.from.address);
		count_rejection(METRICS_REJECT_SIZE);
		return;
	}
	if (s->auth_user != NULL &&
	    !policy_sender_allowed(s->srv->policy, s->auth_user,
				   mail.from.address)) {
		reply(s, "553 %s <%s>: Sender address not owned by user %s",
		      status_code_str(STATUS_NOT_AUTHORIZED), mail.from.address,
		      s->auth_user);
		log_event(LOG_LEVEL_INFO, "rejected",
			  LOG_S("client", s->client),
			  LOG_S("reason", "sender not owned by login"),
			  LOG_S("address", mail.from.address),
			  LOG_S("user", s->auth_user));
		return;
	}
	if (!message_rate_allows(s, mail.from.address))
		return;
	if (s->local_peer && !s->local.privileged &&
	    !sender_is_local_user(s, mail.from.address))
		log_event(LOG_LEVEL_INFO, "sender_override", LOG_SESSION(s),
			  LOG_I("uid", s->local.uid),
			  LOG_S("user", s->local.user),
			  LOG_S("from", mail.from.address));
	s->tx.mail = mail;
	if (s->milter != NULL) {
		struct milter_client mc;
		milter_wait(s, &mc);
		milter_mail(s->milter, &mc, s->tx.mail.from.address,
			    on_milter_mail, s);
		return;
	}
	mail_accepted(s);
}

/* Would this RCPT's recipients fit the session's envelope budget and
 * the one of all sessions? If not, a 452 (RFC 5321 §4.5.3.1.10: the
 * client sends the message to those accepted so far, and the others
 * later); a refusal, not a protocol error. */
static bool envelope_has_room(struct smtp_session *s,
			      const struct smtp_rcpt *rcpt,
			      const struct policy_expansion *exp)
{
	const struct config *cfg = cfg_of(s);
	size_t need = 0;
	for (size_t i = 0; i < exp->count; i++)
		need += recipient_cost(rcpt, &exp->targets[i]);
	if (s->tx.envelope_bytes + need > cfg->max_envelope_size) {
		reply(s, "452 %s Too much envelope data",
		      status_code_str(STATUS_TOO_MANY_RCPTS));
		log_rejected(s, "max_envelope_size", rcpt->to.address);
		count_rejection(METRICS_REJECT_ENVELOPE_LIMIT);
		return false;
	}
	uint64_t memory = s->srv->smtp->envelope_memory;
	if (memory + need > cfg->max_envelope_memory) {
		reply(s, "452 %s Insufficient system storage",
		      status_code_str(STATUS_SYSTEM_STORAGE));
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "max_envelope_memory"),
			  LOG_S("address", rcpt->to.address),
			  LOG_I("envelope_memory", memory));
		count_rejection(METRICS_REJECT_ENVELOPE_LIMIT);
		return false;
	}
	return true;
}

static void rcpt_accepted(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			  struct policy_expansion *exp);

static void on_milter_rcpt(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (s->gone)
		policy_expansion_clear(&s->milter_exp);
	if (milter_resumed(s))
		return;
	if (o->verdict == MILTER_CONTINUE) {
		rcpt_accepted(s, &s->milter_rcpt, &s->milter_exp);
	} else {
		policy_expansion_clear(&s->milter_exp);
		milter_refused(s, o, s->milter_rcpt.to.address);
	}
	session_process(s);
}

static void cmd_rcpt(struct smtp_session *s, const struct smtp_command *cmd)
{
	const struct config *cfg = cfg_of(s);
	if (!s->tx.active) {
		reply_error(s, 503, STATUS_BAD_COMMAND,
			    "Need MAIL before RCPT");
		return;
	}
	struct smtp_rcpt rcpt;
	if (!path_command_parsed(s, &rcpt_command,
				 smtp_parse_rcpt(cmd->arg, cmd->arglen, &rcpt)))
		return;
	if (s->tx.accepted_rcpt_commands >= cfg->max_recipients) {
		count_rejection(METRICS_REJECT_TOO_MANY_RECIPIENTS);
		reply(s, "452 %s Too many recipients",
		      status_code_str(STATUS_TOO_MANY_RCPTS));
		return;
	}
	struct policy_client client = policy_client_of(s);
	struct policy_expansion exp = {0};
	enum policy_verdict verdict = policy_check_recipient(
	    s->srv->policy, &client, rcpt.to.address, &exp);
	switch (verdict) {
	case POLICY_ACCEPT:
		break;
	case POLICY_UNKNOWN_USER:
	case POLICY_BAD_MAILBOX:
		reply(s,
		      "550 %s <%s>: Recipient address rejected: "
		      "User unknown",
		      status_code_str(STATUS_BAD_MAILBOX), rcpt.to.address);
		log_rejected(s, "unknown user", rcpt.to.address);
		count_rejection(METRICS_REJECT_UNKNOWN_USER);
		return;
	case POLICY_BAD_SRS:
		reply(s,
		      "550 %s <%s>: Recipient address rejected: "
		      "Invalid SRS address",
		      status_code_str(STATUS_BAD_MAILBOX), rcpt.to.address);
		log_event(LOG_LEVEL_INFO, "rejected",
			  LOG_S("client", s->client),
			  LOG_S("reason", "bad SRS address"),
			  LOG_S("address", rcpt.to.address),
			  LOG_S("srs", exp.srs_error));
		return;
	case POLICY_RELAY_DENIED:
		reply(s, "554 %s <%s>: Relay access denied",
		      status_code_str(STATUS_NOT_AUTHORIZED), rcpt.to.address);
		log_rejected(s, "relay access denied", rcpt.to.address);
		count_rejection(METRICS_REJECT_RELAY_DENIED);
		return;
	case POLICY_ALIAS_LOOP:
	default:
		reply(s, "554 %s <%s>: Alias expansion loops",
		      status_code_str(STATUS_LOOP), rcpt.to.address);
		log_rejected(s, "alias loop", rcpt.to.address);
		count_rejection(METRICS_REJECT_LOOP);
		return;
	}
	if (!envelope_has_room(s, &rcpt, &exp)) {
		policy_expansion_clear(&exp);
		return;
	}
	if (s->milter != NULL) {
		struct milter_client mc;
		s->milter_rcpt = rcpt;
		s->milter_exp = exp;
		milter_wait(s, &mc);
		milter_rcpt(s->milter, &mc, s->milter_rcpt.to.address,
			    on_milter_rcpt, s);
		return;
	}
	rcpt_accepted(s, &rcpt, &exp);
}

/* The recipients of an accepted RCPT join the envelope. */
static void rcpt_accepted(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			  struct policy_expansion *exp)
{
	int failed = 0;
	for (size_t i = 0; i < exp->count && !failed; i++)
		failed = recipient_add(s, rcpt, &exp->targets[i]);
	policy_expansion_clear(exp);
	if (failed) {
		reply(s, "451 %s Out of memory",
		      status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	s->tx.accepted_rcpt_commands++;
	reply(s, "250 %s Ok", status_code_str(STATUS_RCPT_OK));
}

/* ---- DATA, BDAT ---- */

static const char *protocol_name(const struct smtp_session *s)
{
	static const char *const names[2][2][2][2] = {
	    /* [utf8][esmtp][tls][auth] */
	    {{{"SMTP", "SMTPA"}, {"SMTPS", "SMTPSA"}},
	     {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}}},
	    {{{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}},
	     {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}},
	};
	if (s->local_peer)
		return "local";
	return names[s->tx.mail.smtputf8][s->esmtp][s->tls]
		    [s->auth_user != NULL];
}

/* Mail from a relay_networks or authenticated client is signed when
 * dkim_sign has keys. */
static bool dkim_signs(const struct smtp_session *s)
{
	struct policy_client client = policy_client_of(s);
	return s->srv->dkim != NULL && s->srv->dkim->count > 0 &&
	       policy_may_relay(s->srv->policy, &client);
}

/* Open the spool file and write our Received header (RFC 5321 §4.4). */
static bool message_begin(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	tx->incoming = spool_incoming_new(s->srv->spool);
	tx->outbuf = malloc(MESSAGE_BUF_SIZE);
	tx->tls_required.field = "tls-required";
	if (tx->incoming == NULL || tx->outbuf == NULL) {
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("reason", strerror(errno)));
		reply(s, "451 %s Local error in processing",
		      status_code_str(STATUS_LOCAL_ERROR));
		free(tx->outbuf);
		tx->outbuf = NULL;
		if (tx->incoming != NULL)
			spool_incoming_abort(s->srv->spool, tx->incoming);
		tx->incoming = NULL;
		return false;
	}
	char date[MAILTIME_BUF];
	mailtime_format(time(NULL), date, sizeof date);
	char for_clause[SMTP_PATH_MAX + 16] = "";
	/* One RCPT: its first recipient holds the address as given. */
	if (tx->accepted_rcpt_commands == 1 && tx->rcpt_count > 0)
		snprintf(for_clause, sizeof for_clause, "\r\n\tfor <%s>",
			 recipient_original(tx->rcpts[0]));
	/* The header waits in outbuf for the body's first octets. A local
	 * submission's has no "from" (the caller's HELO means nothing) and
	 * no "for" (it would show a Bcc: recipient of -t). */
	int n = s->local_peer
		    ? snprintf(tx->outbuf, MESSAGE_BUF_SIZE,
			       "Received: by %s (facteur) with local id %s;"
			       "\r\n\t%s\r\n",
			       cfg_of(s)->hostname, tx->incoming->id, date)
		    : snprintf(tx->outbuf, MESSAGE_BUF_SIZE,
			       "Received: from %s ([%s])\r\n"
			       "\tby %s (facteur) with %s id %s%s;\r\n"
			       "\t%s\r\n",
			       s->helo, s->client, cfg_of(s)->hostname,
			       protocol_name(s), tx->incoming->id, for_clause,
			       date);
	if (n < 0 || (size_t)n >= MESSAGE_BUF_SIZE) {
		reply(s, "451 %s Local error in processing",
		      status_code_str(STATUS_LOCAL_ERROR));
		spool_incoming_abort(s->srv->spool, tx->incoming);
		tx->incoming = NULL;
		return false;
	}
	tx->outlen = (size_t)n;
	/* NULL when out of memory: unsigned, said on the accepted line */
	tx->dkim_wanted = dkim_signs(s);
	if (tx->dkim_wanted)
		tx->dkim = dkim_intake_new();
	return true;
}

/* Hand what outbuf holds to the spool file. Past the size limit it is
 * dropped: the message will be refused. */
static void message_spill(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	if (tx->outlen > 0 && !tx->too_big) {
		spool_incoming_write(tx->incoming, tx->outbuf, tx->outlen);
		if (tx->dkim != NULL)
			dkim_intake_feed(tx->dkim, tx->outbuf, tx->outlen);
	}
	tx->outlen = 0;
}

/* Add a few octets (the BDAT tail, at most 8) to outbuf. */
static void message_store(struct smtp_session *s, const char *buf, size_t len)
{
	struct transaction *tx = &s->tx;
	if (MESSAGE_BUF_SIZE - tx->outlen < len)
		message_spill(s);
	memcpy(tx->outbuf + tx->outlen, buf, len);
	tx->outlen += len;
}

/* Run octets (at most DATA_CHUNK) through the decoder into outbuf, and
 * on to the spool file when it is full; past the size limit they are
 * still read (to find the end) but no longer stored. */
static size_t message_feed(struct smtp_session *s, const char *in, size_t len)
{
	struct transaction *tx = &s->tx;
	if (MESSAGE_BUF_SIZE - tx->outlen < SMTP_DATA_OUT_MAX(len))
		message_spill(s);
	size_t outlen = 0;
	size_t used = smtp_data_feed(&tx->data, in, len,
				     tx->outbuf + tx->outlen, &outlen);
	message_id_feed(&tx->message_id, tx->outbuf + tx->outlen, outlen);
	message_id_feed(&tx->tls_required, tx->outbuf + tx->outlen, outlen);
	if (!tx->too_big && tx->data.size > cfg_of(s)->max_message_size)
		tx->too_big = true;
	tx->outlen = tx->too_big ? 0 : tx->outlen + outlen;
	return used;
}

/* RFC 8689 §5: "TLS-Required: No" asks that the recipient domains' TLS
 * policies be ignored (REQUIRETLS, when given, wins). */
static bool tls_not_required(struct message_id_scan *field)
{
	const char *value = message_id_value(field);
	return value != NULL && ascii_ieq(value, strlen(value), "no");
}

static struct spool_envelope *envelope_build(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	struct spool_envelope *env = calloc(1, sizeof *env);
	if (env == NULL)
		return NULL;
	memcpy(env->id, tx->incoming->id, sizeof env->id);
	env->arrival = time(NULL);
	env->sender = strdup(tx->mail.from.address);
	env->client_addr = strdup(s->client);
	env->helo = strdup(s->helo);
	env->protocol = strdup(protocol_name(s));
	env->auth_user = s->auth_user ? strdup(s->auth_user) : NULL;
	env->size = tx->data.size;
	env->body = tx->mail.body;
	env->smtputf8 = tx->mail.smtputf8;
	env->ret = tx->mail.ret;
	if (tx->mail.requiretls)
		env->flags |= SPOOL_FLAG_REQUIRETLS;
	else if (tls_not_required(&tx->tls_required))
		env->flags |= SPOOL_FLAG_TLS_NOT_REQUIRED;
	env->envid = tx->mail.envid[0] ? strdup(tx->mail.envid) : NULL;
	env->rcpts = calloc(tx->rcpt_count, sizeof *env->rcpts);
	bool ok = env->sender && env->client_addr && env->helo &&
		  env->protocol && env->rcpts &&
		  (s->auth_user == NULL || env->auth_user) &&
		  (tx->mail.envid[0] == '\0' || env->envid);
	for (size_t i = 0; ok && i < tx->rcpt_count; i++) {
		struct spool_rcpt *r = &env->rcpts[i];
		const struct recipient *from = tx->rcpts[i];
		const char *orcpt = recipient_orcpt(from);
		env->rcpt_count++;
		r->address = strdup(recipient_address(from));
		r->original = strdup(recipient_original(from));
		r->orcpt = orcpt ? strdup(orcpt) : NULL;
		r->notify = from->notify;
		r->local = from->local;
		r->state = RCPT_PENDING;
		r->updated = env->arrival;
		ok = r->address && r->original && (!orcpt || r->orcpt);
		if (ok && from->forwarded)
			ok = policy_forward_sender(s->srv->policy, env->sender,
						   env->arrival,
						   &r->sender) == 0;
	}
	if (!ok) {
		spool_envelope_free(env);
		return NULL;
	}
	return env;
}

static void on_committed(int error, void *arg)
{
	struct smtp_session *s = arg;
	struct spool_envelope *env = s->committing;
	s->committing = NULL;
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("queue_id", env->id),
			  LOG_S("reason", strerror(error)));
		spool_envelope_free(env);
		if (!s->gone)
			reply(s, "451 %s Local error: message not queued",
			      status_code_str(STATUS_LOCAL_ERROR));
	} else {
		if (!s->gone)
			reply(s, "250 %s Ok: queued as %s",
			      status_code_str(STATUS_OK), env->id);
		metrics.received_bytes_total += env->size;
		struct scheduler_arrival arrival = {
		    .session = s->id,
		    .message_id = s->committing_message_id[0] != '\0'
				      ? s->committing_message_id
				      : NULL,
		    .local_uid = s->local_peer ? (long)s->local.uid : -1,
		    .local_user = s->local_peer ? s->local.user : NULL,
		    .milter = s->milter_name,
		    .milter_action = s->milter_action};
		scheduler_enqueue_arrival(s->srv->scheduler, env, &arrival);
	}
	s->milter_name = s->milter_action = NULL;
	if (s->gone) {
		session_free(s);
		return;
	}
	enter_state(s, SMTP_STATE_COMMAND);
	if (s->shutdown_pending) {
		reply(s, "421 %s %s Service shutting down",
		      status_code_str(STATUS_SHUTDOWN), cfg_of(s)->hostname);
		session_close(s);
		session_flush(s);
		return;
	}
	input_release(s);
	session_process(s);
}

/* The signatures are before the message (or it goes unsigned): commit. */
static void on_signed(char *outcome, void *arg)
{
	struct smtp_session *s = arg;
	struct spool_incoming *inc = s->signing;
	s->signing = NULL;
	s->committing->dkim = outcome;
	spool_incoming_commit(s->srv->spool, inc, s->committing, on_committed,
			      s);
}

static void message_commit(struct smtp_session *s, const char *refusal);
static void on_milter_message(const struct milter_outcome *o, void *arg);
static bool milter_envelope_apply(struct smtp_session *s,
				  struct spool_envelope *env);
static bool envelope_add_rcpts(struct spool_envelope *env, const char *given,
			       const struct policy_expansion *exp);

/* The last octet of the message is in: refuse it, or (once the milters
 * agree) make it durable and answer once it is. */
static void message_end(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	const char *refusal = NULL;
	message_spill(s);
	if (tx->too_big) {
		reply(s, "552 %s Message size exceeds fixed limit",
		      status_code_str(STATUS_TOO_BIG));
		refusal = "message too big";
		count_rejection(METRICS_REJECT_SIZE);
	} else if (tx->data.received_count > SMTP_RECEIVED_MAX) {
		reply(s, "554 %s Too many Received headers: mail loop",
		      status_code_str(STATUS_LOOP));
		refusal = "mail loop";
		count_rejection(METRICS_REJECT_LOOP);
	} else if (tx->incoming->error != 0) {
		reply(s, "451 %s Local error writing the message",
		      status_code_str(STATUS_LOCAL_ERROR));
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("reason", strerror(tx->incoming->error)));
		refusal = "spool write error";
	}
	if (refusal == NULL && s->milter != NULL) {
		struct milter_client mc;
		milter_wait(s, &mc);
		milter_message(s->milter, &mc, s->srv->spool, tx->incoming,
			       on_milter_message, s);
		return;
	}
	message_commit(s, refusal);
}

/* Queue the message (or refuse it for `refusal`, when not NULL). */
static void message_commit(struct smtp_session *s, const char *refusal)
{
	struct transaction *tx = &s->tx;
	struct spool_envelope *env = refusal ? NULL : envelope_build(s);
	if (refusal == NULL && env == NULL) {
		reply(s, "451 %s Out of memory",
		      status_code_str(STATUS_LOCAL_ERROR));
		refusal = "out of memory";
	}
	if (refusal == NULL && s->milter != NULL &&
	    !milter_envelope_apply(s, env)) {
		spool_envelope_free(env);
		transaction_reset(s);
		enter_state(s, SMTP_STATE_COMMAND);
		return;
	}
	if (refusal != NULL) {
		log_rejected(s, refusal, tx->mail.from.address);
		transaction_reset(s);
		enter_state(s, SMTP_STATE_COMMAND);
		return;
	}
	const char *message_id = message_id_value(&tx->message_id);
	snprintf(s->committing_message_id, sizeof s->committing_message_id,
		 "%s", message_id != NULL ? message_id : "");
	struct spool_incoming *inc = tx->incoming;
	struct dkim_intake *dkim = tx->dkim;
	bool wanted = tx->dkim_wanted;
	tx->incoming = NULL; /* the spool owns it now */
	tx->dkim = NULL;
	transaction_reset(s);
	s->committing = env;
	enter_state(s, SMTP_STATE_COMMITTING);
	input_hold(s);
	if (dkim != NULL) {
		s->signing = inc;
		if (dkim_intake_finish(dkim, s->srv->dkim, s->srv->worker,
				       s->srv->spool, inc, on_signed, s) == 0)
			return;
		s->signing = NULL;
	}
	/* Trusted mail that could not be read for a signature (memory). */
	if (wanted)
		env->dkim = strdup("error:out-of-memory");
	else if (s->srv->dkim != NULL && s->srv->dkim->count > 0)
		env->dkim = strdup("unsigned:untrusted");
	spool_incoming_commit(s->srv->spool, inc, env, on_committed, s);
}

/* The milters' changes to the envelope: the sender, recipients deleted
 * and added (as if from a trusted client: aliases apply), a quarantine
 * (the message is held). False when no recipient is left: the message
 * is dropped, and the client told it was accepted. */
static bool milter_envelope_apply(struct smtp_session *s,
				  struct spool_envelope *env)
{
	const struct milter_envelope_changes *ch =
	    milter_envelope_changes(s->milter);
	char *sender = ch->sender ? strdup(ch->sender) : NULL;
	if (sender != NULL) {
		free(env->sender);
		env->sender = sender;
	}
	for (size_t d = 0; d < ch->deleted_count; d++)
		for (size_t i = 0; i < env->rcpt_count; i++) {
			struct spool_rcpt *r = &env->rcpts[i];
			if (strcasecmp(r->address, ch->deleted[d]) != 0 &&
			    strcasecmp(r->original, ch->deleted[d]) != 0)
				continue;
			free(r->address);
			free(r->original);
			free(r->orcpt);
			free(r->sender);
			free(r->reason);
			memmove(r, r + 1,
				(env->rcpt_count - i - 1) * sizeof *r);
			env->rcpt_count--;
			i--;
		}
	struct policy_client trusted = {
	    .addr = (const struct sockaddr *)&s->addr, .authenticated = true};
	for (size_t a = 0; a < ch->added_count; a++) {
		struct policy_expansion exp = {0};
		if (policy_check_recipient(s->srv->policy, &trusted,
					   ch->added[a],
					   &exp) != POLICY_ACCEPT ||
		    !envelope_add_rcpts(env, ch->added[a], &exp))
			log_event(LOG_LEVEL_WARN, "milter_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "recipient not added"),
				  LOG_S("address", ch->added[a]));
		policy_expansion_clear(&exp);
	}
	if (ch->quarantine != NULL) {
		env->flags |= SPOOL_FLAG_HELD;
		log_event(LOG_LEVEL_INFO, "quarantined", LOG_SESSION(s),
			  LOG_S("queue_id", env->id),
			  LOG_S("reason", ch->quarantine));
	}
	if (env->rcpt_count > 0)
		return true;
	reply(s, "250 %s Ok", status_code_str(STATUS_OK));
	log_event(LOG_LEVEL_INFO, "discarded", LOG_SESSION(s),
		  LOG_S("queue_id", env->id),
		  LOG_S("reason", "no recipient left"));
	return false;
}

/* A milter's added recipient, expanded, at the end of the envelope. */
static bool envelope_add_rcpts(struct spool_envelope *env, const char *given,
			       const struct policy_expansion *exp)
{
	struct spool_rcpt *grown =
	    realloc(env->rcpts, (env->rcpt_count + exp->count) * sizeof *grown);
	if (grown == NULL)
		return false;
	env->rcpts = grown;
	for (size_t i = 0; i < exp->count; i++) {
		struct spool_rcpt *r = &env->rcpts[env->rcpt_count];
		*r = (struct spool_rcpt){.address =
					     strdup(exp->targets[i].address),
					 .original = strdup(given),
					 .local = exp->targets[i].local,
					 .state = RCPT_PENDING,
					 .updated = env->arrival};
		if (r->address == NULL || r->original == NULL) {
			free(r->address);
			free(r->original);
			return false;
		}
		env->rcpt_count++;
	}
	return true;
}

/* Octets of the changed message into the new incoming (and the DKIM
 * reader, which starts over). */
static void milter_write(void *arg, const void *buf, size_t len)
{
	struct smtp_session *s = arg;
	spool_incoming_write(s->tx.incoming, buf, len);
	if (s->tx.dkim != NULL)
		dkim_intake_feed(s->tx.dkim, buf, len);
}

/* The milters changed the content: it is written anew, before the
 * commit, so that the message is durable once, as changed. */
static bool milter_content_rewrite(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	struct spool_incoming *old = tx->incoming;
	tx->incoming = spool_incoming_new(s->srv->spool);
	if (tx->incoming == NULL) {
		tx->incoming = old;
		return false;
	}
	if (tx->dkim != NULL) {
		dkim_intake_free(tx->dkim);
		tx->dkim = dkim_intake_new();
	}
	int rc = milter_rewrite(s->milter, s->srv->spool, old, tx->incoming->id,
				milter_write, s);
	spool_incoming_abort(s->srv->spool, old);
	tx->data.size = tx->incoming->written;
	return rc == 0 && tx->incoming->error == 0;
}

static void on_milter_message(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (milter_resumed(s))
		return;
	s->milter_name = o->milter;
	s->milter_action = o->action;
	switch (o->verdict) {
	case MILTER_CONTINUE:
		if (milter_content_changed(s->milter) &&
		    !milter_content_rewrite(s)) {
			reply(s, "451 %s Local error writing the message",
			      status_code_str(STATUS_LOCAL_ERROR));
			message_commit(s, "spool write error");
			break;
		}
		message_commit(s, NULL);
		break;
	case MILTER_DISCARD:
		reply(s, "250 %s Ok", status_code_str(STATUS_OK));
		log_event(LOG_LEVEL_INFO, "discarded", LOG_SESSION(s),
			  LOG_S("milter", o->milter ? o->milter : "-"),
			  LOG_S("action", "discard"));
		transaction_reset(s);
		break;
	case MILTER_REJECT:
	case MILTER_TEMPFAIL:
	default:
		milter_refused(s, o, s->tx.mail.from.address);
		transaction_reset(s);
		break;
	}
	session_process(s);
}

static void cmd_data(struct smtp_session *s, const struct smtp_command *cmd)
{
	if (cmd->arglen != 0) {
		reply_error(s, 501, STATUS_BAD_ARGS, "Syntax: DATA");
		return;
	}
	if (!s->tx.active) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "Need MAIL command");
		return;
	}
	if (s->tx.rcpt_count == 0) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "Need RCPT command");
		return;
	}
	if (s->tx.used_bdat) {
		reply_error(s, 503, STATUS_BAD_COMMAND, "DATA after BDAT");
		return;
	}
	if (!message_begin(s))
		return;
	smtp_data_init(&s->tx.data, SMTP_DATA_DOTTED);
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	enter_state(s, SMTP_STATE_DATA);
}

static void bdat_discard(struct smtp_session *s, int code,
			 enum status_code status, const char *text)
{
	s->bdat_discard = true;
	s->bdat_reply_code = code;
	s->bdat_reply_status = status;
	s->bdat_reply_text = text;
}

static void cmd_bdat(struct smtp_session *s, const struct smtp_command *cmd)
{
	uint64_t size;
	bool last;
	if (smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last) !=
	    SMTP_PARSE_OK) {
		/* Without a size no chunk can be skipped: what follows is
		 * read as commands, and junk there meets the error limit. */
		reply_error(s, 501, STATUS_BAD_ARGS,
			    "Syntax: BDAT size [LAST]");
		return;
	}
	s->bdat_remaining = size;
	s->bdat_last = last;
	s->bdat_discard = false;
	enter_state(s, SMTP_STATE_BDAT);
	/* The chunk is read in every case (RFC 3030 §2); an error is
	 * given once it has been. */
	if (!s->tx.active)
		bdat_discard(s, 503, STATUS_BAD_COMMAND, "Need MAIL command");
	else if (s->tx.rcpt_count == 0)
		bdat_discard(s, 503, STATUS_BAD_COMMAND, "Need RCPT command");
	else if (!s->tx.used_bdat) {
		if (!message_begin(s)) {
			/* the 451 is out already; skip the chunk quietly */
			s->bdat_discard = true;
			s->bdat_reply_code = 0;
			transaction_reset(s);
			return;
		}
		s->tx.used_bdat = true;
		smtp_data_init(&s->tx.data, SMTP_DATA_RAW);
	}
}

static void bdat_chunk_done(struct smtp_session *s)
{
	enter_state(s, SMTP_STATE_COMMAND);
	if (s->bdat_discard) {
		s->bdat_discard = false;
		if (s->bdat_reply_code != 0)
			reply_error(s, s->bdat_reply_code, s->bdat_reply_status,
				    s->bdat_reply_text);
		return;
	}
	if (s->tx.too_big) {
		reply(s, "552 %s Message size exceeds fixed limit",
		      status_code_str(STATUS_TOO_BIG));
		log_rejected(s, "message too big", s->tx.mail.from.address);
		count_rejection(METRICS_REJECT_SIZE);
		transaction_reset(s);
		return;
	}
	if (!s->bdat_last) {
		reply(s, "250 %s %llu octets received",
		      status_code_str(STATUS_OK),
		      (unsigned long long)s->tx.data.size);
		return;
	}
	char tail[8];
	size_t n = smtp_data_finish(&s->tx.data, tail);
	if (n > 0 && !s->tx.too_big) {
		if (s->tx.data.size > cfg_of(s)->max_message_size)
			s->tx.too_big = true;
		else
			message_store(s, tail, n);
	}
	message_end(s);
}

/* ---- the rest ---- */

static void cmd_rset(struct smtp_session *s, const struct smtp_command *cmd)
{
	(void)cmd;
	transaction_reset(s);
	reply(s, "250 %s Ok", status_code_str(STATUS_OK));
}

static void cmd_quit(struct smtp_session *s)
{
	reply(s, "221 %s Bye", status_code_str(STATUS_OK));
	session_close(s);
}

/* A client listed by a dnsbl zone may still greet, start TLS and log
 * in (an authenticated client is exempt); anything else is refused
 * until it has logged in. */
static bool dnsbl_refuses(struct smtp_session *s, enum smtp_verb verb)
{
	if (s->dnsbl_zone == NULL || s->auth_user != NULL)
		return false;
	switch (verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_STARTTLS:
	case SMTP_VERB_AUTH:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_NOOP:
	case SMTP_VERB_RSET:
		return false;
	default:
		break;
	}
	reply(s, "554 %s Service unavailable; client [%s] blocked using %s",
	      status_code_str(STATUS_NOT_AUTHORIZED), s->client, s->dnsbl_zone);
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", "dnsbl"), LOG_S("zone", s->dnsbl_zone));
	count_rejection(METRICS_REJECT_DNSBL);
	return true;
}

static void dispatch(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_command cmd;
	smtp_parse_command(line, len, &cmd);
	if (dnsbl_refuses(s, cmd.verb))
		return;
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
		cmd_helo(s, &cmd, false);
		break;
	case SMTP_VERB_EHLO:
		cmd_helo(s, &cmd, true);
		break;
	case SMTP_VERB_MAIL:
		cmd_mail(s, &cmd);
		break;
	case SMTP_VERB_RCPT:
		cmd_rcpt(s, &cmd);
		break;
	case SMTP_VERB_DATA:
		cmd_data(s, &cmd);
		break;
	case SMTP_VERB_BDAT:
		cmd_bdat(s, &cmd);
		break;
	case SMTP_VERB_RSET:
		cmd_rset(s, &cmd);
		break;
	case SMTP_VERB_NOOP:
		reply(s, "250 %s Ok", status_code_str(STATUS_OK));
		break;
	case SMTP_VERB_QUIT:
		cmd_quit(s);
		break;
	case SMTP_VERB_HELP:
		reply(s,
		      "214 %s See RFC 5321; facteur speaks HELO EHLO MAIL "
		      "RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
		      status_code_str(STATUS_OK));
		break;
	case SMTP_VERB_VRFY:
		reply(s,
		      "252 %s Cannot VRFY user, but will accept message "
		      "and attempt delivery",
		      status_code_str(STATUS_VRFY));
		break;
	case SMTP_VERB_EXPN:
		reply(s, "502 %s EXPN is not available",
		      status_code_str(STATUS_BAD_COMMAND));
		break;
	case SMTP_VERB_STARTTLS:
		cmd_starttls(s, &cmd);
		break;
	case SMTP_VERB_AUTH:
		cmd_auth(s, &cmd);
		break;
	case SMTP_VERB_UNKNOWN:
	default:
		reply_error(s, 500, STATUS_BAD_COMMAND, "Command unrecognized");
		break;
	}
}

/* ---- input ---- */

static void dnsbl_done(struct smtp_session *s)
{
	dnsbl_check_free(s->dnsbl);
	s->dnsbl = NULL;
	if (s->dnsbl_timer != NULL) {
		event_free(s->dnsbl_timer);
		s->dnsbl_timer = NULL;
		session_process(s); /* the command that waited */
	}
}

static void on_dnsbl(const char *zone, void *arg)
{
	struct smtp_session *s = arg;
	if (zone != NULL) {
		s->dnsbl_zone = strdup(zone);
		if (s->dnsbl_zone == NULL)
			log_event(LOG_LEVEL_ERROR, "dnsbl_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "out of memory"),
				  LOG_S("zone", zone));
	}
	dnsbl_done(s);
}

/* The blocklists did not answer in time: the client passes. */
static void on_dnsbl_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;
	(void)fd;
	(void)what;
	log_event(LOG_LEVEL_WARN, "dnsbl_timeout", LOG_SESSION(s),
		  LOG_I("seconds", DNSBL_WAIT_SECONDS));
	dnsbl_done(s);
}

/* The first command waits for the blocklists' verdict, at most
 * DNSBL_WAIT_SECONDS. False when it cannot wait (it then passes). */
static bool dnsbl_wait(struct smtp_session *s)
{
	if (s->dnsbl_timer != NULL)
		return true;
	struct timeval wait = {DNSBL_WAIT_SECONDS, 0};
	s->dnsbl_timer = evtimer_new(s->srv->base, on_dnsbl_timeout, s);
	if (s->dnsbl_timer == NULL || evtimer_add(s->dnsbl_timer, &wait) < 0) {
		log_event(LOG_LEVEL_ERROR, "dnsbl_error", LOG_SESSION(s),
			  LOG_S("reason", "cannot arm the timer"));
		if (s->dnsbl_timer != NULL)
			event_free(s->dnsbl_timer);
		s->dnsbl_timer = NULL;
		dnsbl_check_free(s->dnsbl);
		s->dnsbl = NULL;
		return false;
	}
	return true;
}

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
		reply_error(s, 500, STATUS_SYNTAX_ERROR, "Line too long");
		return true;
	case LINEIO_SKIPPED:
		return true;
	case LINEIO_LINE:
		break;
	}
	if (s->state == SMTP_STATE_AUTH)
		auth_response(s, line, line_len);
	else
		dispatch(s, line, line_len);
	explicit_bzero(line, line_len);
	return true;
}

/* Feed buffered DATA octets; true when more input may be processed. */
static bool read_data(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec;
		if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
			break;
		size_t take =
		    vec.iov_len < DATA_CHUNK ? vec.iov_len : DATA_CHUNK;
		size_t used = message_feed(s, vec.iov_base, take);
		evbuffer_drain(in, used);
		if (s->tx.data.done) {
			enter_state(s, SMTP_STATE_COMMAND);
			message_end(s);
			return true;
		}
	}
	return false;
}

static bool read_bdat(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (s->bdat_remaining > 0 && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec;
		if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
			break;
		size_t take =
		    vec.iov_len < DATA_CHUNK ? vec.iov_len : DATA_CHUNK;
		if (take > s->bdat_remaining)
			take = (size_t)s->bdat_remaining;
		if (!s->bdat_discard)
			message_feed(s, vec.iov_base, take);
		evbuffer_drain(in, take);
		s->bdat_remaining -= take;
	}
	if (s->bdat_remaining > 0)
		return false;
	bdat_chunk_done(s);
	return true;
}

static void session_process(struct smtp_session *s)
{
	bool more = true;
	while (more) {
		switch (s->state) {
		case SMTP_STATE_COMMAND:
			if (s->shutdown_pending) {
				reply(s, "421 %s %s Service shutting down",
				      status_code_str(STATUS_SHUTDOWN),
				      cfg_of(s)->hostname);
				session_close(s);
				more = false;
				break;
			}
			if (s->dnsbl != NULL &&
			    evbuffer_get_length(bufferevent_get_input(s->bev)) >
				0 &&
			    dnsbl_wait(s)) {
				more = false;
				break;
			}
			more = read_command(s);
			break;
		case SMTP_STATE_AUTH:
			more = read_command(s);
			break;
		case SMTP_STATE_DATA:
			more = read_data(s);
			break;
		case SMTP_STATE_BDAT:
			more = read_bdat(s);
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
	if (!session_flush(s))
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
	session_process(arg);
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
		session_process(s);
		return;
	}
	session_flush(s); /* a closing session ends, STARTTLS begins */
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
		session_free(s);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    s->state != SMTP_STATE_CLOSING) {
		reply(s, "421 %s %s Error: timeout exceeded",
		      status_code_str(STATUS_BAD_CONNECTION),
		      cfg_of(s)->hostname);
		log_event(LOG_LEVEL_INFO, "timeout", LOG_SESSION(s),
			  LOG_S("state", state_names[s->state]));
		session_close(s);
		session_flush(s);
		return;
	}
	/* EOF, error, or a write that timed out: the client is gone. */
	session_free(s);
}

/* Stop reading; session_flush, which every entry point ends with, ends
 * the session once the queued replies are out. */
static void session_close(struct smtp_session *s)
{
	if (s->state == SMTP_STATE_CLOSING)
		return;
	enter_state(s, SMTP_STATE_CLOSING);
	transport_close(s->bev);
}

/* Send the queued replies. Every entry point (a callback, a new
 * session, shutdown) ends here, so that the replies to all that one read
 * brought leave in one write (transport_flush). Once all is out, a
 * closing session ends and STARTTLS begins. False when s is no more. */
static bool session_flush(struct smtp_session *s)
{
	if (!transport_flush(s->bev, s->tls))
		return true; /* on_write comes back here */
	if (s->state == SMTP_STATE_CLOSING) {
		session_free(s);
		return false;
	}
	if (s->state == SMTP_STATE_STARTTLS) {
		starttls_begin(s);
		return false;
	}
	return true;
}

static void session_free(struct smtp_session *s)
{
	transaction_reset(s);
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
		s->auth_job->session = NULL; /* its result is dropped */
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
	if (auth_client_refused(s)) {
		reply(s,
		      "421 %s %s Error: too many failed logins from your "
		      "address, try again later",
		      status_code_str(STATUS_SECURITY_TRANSIENT),
		      cfg->hostname);
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "auth_fail_limit"));
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		session_close(s);
		session_flush(s);
		return;
	}
	reply(s, "220 %s ESMTP facteur", cfg->hostname);
	session_flush(s);
	if (cfg->milter_count > 0) {
		struct milter_client mc;
		milter_client_of(s, &mc);
		s->milter = milter_session_new(srv->base, cfg, &mc);
	}
	/* Exempt networks are not looked up; without a resolver nobody is
	 * listed (dns_error was logged at start). */
	if (cfg->dnsbl_count > 0 && srv->dns != NULL && !relay_client(s)) {
		s->dnsbl = dnsbl_check_start(srv->dns, cfg,
					     (const struct sockaddr *)&s->addr,
					     on_dnsbl, s);
		if (s->dnsbl == NULL) /* the client is not looked up */
			log_event(LOG_LEVEL_ERROR, "dnsbl_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "cannot start the look-ups"));
	}
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
			reply(s, "421 %s %s Service shutting down",
			      status_code_str(STATUS_SHUTDOWN),
			      cfg_of(s)->hostname);
			session_close(s);
			session_flush(s);
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
