/*
 * What the outbound client's two files share, and nothing outside them
 * may use: the client itself, its states, and the calls one file makes
 * into the other.
 *
 *   smtp_client.c            the transaction: greeting, EHLO/LHLO,
 *                            STARTTLS and AUTH decisions, MAIL/RCPT
 *                            (pipelined), DATA and the body, each
 *                            reply's outcome per recipient, the report
 *                            and QUIT
 *   smtp_client_transport.c  the connection: the walk over the addresses
 *                            (bound or UNIX-domain sockets), TLS and the
 *                            peer's verification (DANE), reading replies,
 *                            the bufferevent and deadline callbacks, and
 *                            the client's life cycle
 */
#ifndef FACTEUR_SMTP_CLIENT_INTERNAL_H
#define FACTEUR_SMTP_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "facteur/dane.h"
#include "facteur/smtp_client.h"
#include "facteur/smtp_proto.h"
#include "facteur/smtp_reply.h"
#include "facteur/spool.h"
#include "facteur/state_list.h"

struct bufferevent;
struct event;
struct event_base;

#define QUIT_WAIT 2 /* seconds for the reply to QUIT */

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

/* indexed by enum client_state: its name in the debug log, and what we
 * were doing in it, for reasons */
extern const char *const smtp_client_state_names[];
extern const char *const smtp_client_state_doing[];

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
	void (*connection_given_up)(const struct smtp_client_result *session,
				    void *arg);
	/* the current connection is described in a result already (a
	 * transaction ended on it): not reported again when given up */
	bool connection_reported;

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
	/* for the report (smtp_client_result) */
	char peer_ip[SMTP_CLIENT_IP_MAX];
	char local_ip[SMTP_CLIENT_IP_MAX];
	bool tls_step;
	bool tls_handshake;
	long verify_result;
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

/* The address of the current (or last) connection. */
static inline const struct client_address *
smtp_client_current_address(const struct smtp_client *c)
{
	return &c->addrs[c->next_addr - 1];
}

/* smtp_client.c: the transaction */
void smtp_client_enter_state(struct smtp_client *c, enum client_state state);
void smtp_client_send_line(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void smtp_client_send_ehlo(struct smtp_client *c, enum client_state state);
void smtp_client_on_reply(struct smtp_client *c);
void smtp_client_fill_body(struct smtp_client *c);
void smtp_client_decide_all(struct smtp_client *c, bool only_accepted,
			    enum rcpt_state state, const char *dsn,
			    const char *reason);
void smtp_client_finish(struct smtp_client *c, bool quit);
void smtp_client_quit_done(struct smtp_client *c);
void smtp_client_connection_failed(struct smtp_client *c, const char *dsn,
				   const char *reason);
void smtp_client_connection_failedf(struct smtp_client *c, const char *dsn,
				    const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void smtp_client_protocol_error(struct smtp_client *c, const char *what);
void smtp_client_requiretls_refused(struct smtp_client *c, const char *lack);
void smtp_client_reset_transaction(struct smtp_client *c);
void smtp_client_begin_next(struct smtp_client *c);

/* smtp_client_transport.c: the connection */
void smtp_client_arm_deadline(struct smtp_client *c, unsigned seconds);
void smtp_client_schedule_step(struct smtp_client *c);
void smtp_client_close_connection(struct smtp_client *c);
void smtp_client_connect_next(struct smtp_client *c);
void smtp_client_start_tls(struct smtp_client *c);
void smtp_client_dane_outcome(const struct smtp_client *c, bool success,
			      const char *reason);

/* smtp_client.c: the fields of `r` that describe the connection now
 * ending (relay, TLS, verification, DANE, addresses), for the final
 * result and for connection_given_up. */
void smtp_client_describe_connection(const struct smtp_client *c,
				     struct smtp_client_result *r);

#endif
