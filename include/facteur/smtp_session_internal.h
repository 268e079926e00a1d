/*
 * What the files of the inbound SMTP session share, and nothing outside
 * src/smtp_*.c may use: the session, its transaction and recipient
 * records, and the helpers more than one of those files calls. Which
 * file does what:
 *
 *   smtp_session.c    the session's lifecycle and I/O, the state machine
 *                     (smtp_session_process) and the command dispatcher,
 *                     replies, HELO/EHLO, STARTTLS, RSET, QUIT, the
 *                     transaction's reset and the wait for the milters
 *   smtp_auth.c       AUTH (RFC 4954): the SASL exchange, the password
 *                     check on the worker, the delay after a failure
 *   smtp_admission.c  who may send what: the blocklist verdict, MAIL and
 *                     RCPT with their checks (sender, rate, relay,
 *                     envelope budgets) and milter steps, the recipient
 *                     records they admit
 *   smtp_message.c    the message: DATA and BDAT streamed into the spool,
 *                     the milters at its end, the envelope, DKIM, the
 *                     commit and its 250
 */
#ifndef FACTEUR_SMTP_SESSION_INTERNAL_H
#define FACTEUR_SMTP_SESSION_INTERNAL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "facteur/config.h"
#include "facteur/log.h"
#include "facteur/message_id.h"
#include "facteur/metrics.h"
#include "facteur/policy.h"
#include "facteur/server.h"
#include "facteur/smtp_proto.h"
#include "facteur/smtp_session.h"
#include "facteur/state_list.h"
#include "facteur/status_code.h"

struct auth_job;
struct bufferevent;
struct dkim_intake;
struct dnsbl_check;
struct event;
struct milter_client;
struct milter_outcome;
struct milter_session;
struct spool_envelope;
struct spool_incoming;

/* Message octets are decoded and read this much at a time. */
#define DATA_CHUNK 16384
/* Decoder output gathers here with the Received header, so that a
 * small message reaches the spool in one write; one feed always fits
 * once it is written out. */
#define MESSAGE_BUF_SIZE SMTP_DATA_OUT_MAX(DATA_CHUNK)

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
	/* milter: the connections, the RCPT they are asked about, and the
	 * ESMTP parameters of that RCPT or MAIL as the client wrote them */
	struct milter_session *milter;
	struct smtp_rcpt milter_rcpt;
	struct policy_expansion milter_exp;
	char milter_params[SMTP_COMMAND_LINE_MAX];
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

static inline const struct config *cfg_of(const struct smtp_session *s)
{
	return s->srv->cfg;
}

/* facteur_smtp_rejections_total, bumped where the refusal is answered. */
static inline void count_rejection(enum metrics_rejection reason)
{
	metrics.smtp_rejections[reason]++;
}

static inline const char *recipient_address(const struct recipient *r)
{
	return r->text;
}

static inline const char *recipient_original(const struct recipient *r)
{
	return r->text + r->original;
}

static inline const char *recipient_orcpt(const struct recipient *r)
{
	return r->orcpt != 0 ? r->text + r->orcpt : NULL;
}

/* smtp_session.c */
void smtp_session_enter_state(struct smtp_session *s, enum smtp_state state);
void smtp_session_reply(struct smtp_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A protocol error (500, 501, 503): counted, and the tenth one ends the
 * session after its own reply. */
void smtp_session_reply_error(struct smtp_session *s, int code,
			      enum status_code status, const char *text);
void smtp_session_log_rejected(struct smtp_session *s, const char *reason,
			       const char *address);
/* A milter's refusal: its reply, the rejected line naming it. */
void smtp_session_milter_refused(struct smtp_session *s,
				 const struct milter_outcome *o,
				 const char *address);
void smtp_session_transaction_reset(struct smtp_session *s);
/* Input is read on, up to a bound, while the session waits (a commit,
 * the milters); smtp_session_input_release lifts the bound. */
void smtp_session_input_hold(struct smtp_session *s);
void smtp_session_input_release(struct smtp_session *s);
/* The session waits for the milters (mc is filled for the call); once
 * they answer, smtp_session_milter_resumed is true when the client left
 * meanwhile (s is no more), else commands are read again. */
void smtp_session_milter_wait(struct smtp_session *s, struct milter_client *mc);
bool smtp_session_milter_resumed(struct smtp_session *s);
bool smtp_session_tls_active(const struct smtp_session *s);
/* The client as auth_limit, relay_networks and the policy see it. */
void smtp_session_client_key(const struct smtp_session *s, uint8_t key[16]);
bool smtp_session_relay_client(const struct smtp_session *s);
struct policy_client smtp_session_policy_client(const struct smtp_session *s);
void smtp_session_process(struct smtp_session *s);
bool smtp_session_flush(struct smtp_session *s);
void smtp_session_close(struct smtp_session *s);
void smtp_session_free(struct smtp_session *s);

/* smtp_auth.c */
bool smtp_auth_client_refused(const struct smtp_session *s);
void smtp_auth_cmd(struct smtp_session *s, const struct smtp_command *cmd);
void smtp_auth_response(struct smtp_session *s, const char *line, size_t len);
/* The session is gone: the check on the worker reports to nobody. */
void smtp_auth_job_detach(struct auth_job *job);

/* smtp_admission.c */
void smtp_admission_cmd_mail(struct smtp_session *s,
			     const struct smtp_command *cmd);
void smtp_admission_cmd_rcpt(struct smtp_session *s,
			     const struct smtp_command *cmd);
void smtp_admission_dnsbl_start(struct smtp_session *s);
bool smtp_admission_dnsbl_refuses(struct smtp_session *s, enum smtp_verb verb);
bool smtp_admission_dnsbl_wait(struct smtp_session *s);

/* smtp_message.c */
void smtp_message_cmd_data(struct smtp_session *s,
			   const struct smtp_command *cmd);
void smtp_message_cmd_bdat(struct smtp_session *s,
			   const struct smtp_command *cmd);
bool smtp_message_read_data(struct smtp_session *s);
bool smtp_message_read_bdat(struct smtp_session *s);

#endif
