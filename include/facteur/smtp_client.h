/*
 * The outbound SMTP state machine (RFC 5321 client side): one delivery
 * attempt of some recipients of one message to one destination, trying
 * its addresses in turn. Connect (with a timeout), greeting, EHLO (HELO
 * fallback), STARTTLS per the TLS policy, AUTH when asked, MAIL and
 * RCPT (pipelined when offered), DATA streamed from the spool file, QUIT.
 * It reports one outcome per recipient and never touches the spool's
 * state: the scheduler records what it reports.
 */
#ifndef FACTEUR_SMTP_CLIENT_H
#define FACTEUR_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "facteur/config.h"
#include "facteur/spool.h"

struct event_base;
struct smtp_client;

/* One address to try, with the host name it belongs to (the MX name, or
 * the host of a "[host]" route) for logs, SNI and verification. */
struct smtp_client_address {
	const char *host;
	struct sockaddr_storage addr; /* port set */
	socklen_t addrlen;
};

struct smtp_client_request {
	const struct spool_envelope *env;
	const size_t *rcpts; /* indexes into env->rcpts */
	size_t rcpt_count;
	struct spool_body body; /* the message, wire form; its descriptor is
	                         * duplicated, the caller keeps its own */
	const char *helo;       /* our host name */
	const struct smtp_client_address *addrs; /* tried in this order */
	size_t addr_count;
	enum tls_policy tls;
	/* verify against this name instead of each address's host (for
	 * "[host]" targets, the host); NULL: the address's host */
	const char *verify_name;
	SSL_CTX *tls_ctx; /* client context; may be NULL with TLS_POLICY_NONE */
	const char *auth_user; /* AUTH to a relay host; NULL: none */
	const char *auth_password;
	unsigned timeout; /* seconds, per step (smtp_timeout) */
};

/* The outcome for each recipient of the request, in request order. */
struct smtp_client_rcpt {
	enum rcpt_state state; /* RCPT_DELIVERED, RCPT_DEFERRED, RCPT_BOUNCED */
	char dsn[12];          /* enhanced status code, e.g. "5.1.1" */
	char reason[512];      /* the server's reply or our diagnosis */
};

struct smtp_client_result {
	struct smtp_client_rcpt *rcpts; /* rcpt_count entries */
	size_t rcpt_count;
	/* the last server talked to, "mx1.example.com[192.0.2.1]:25", or ""
	 * when no connection was made */
	char relay[320];
	bool tls; /* the transaction ran over TLS */
};

/* Runs once, on the loop, after smtp_client_start returned; the result
 * lives until the callback returns. The client frees itself after. */
typedef void (*smtp_client_cb)(const struct smtp_client_result *result,
                               void *arg);

/* Start an attempt; the request's strings and arrays are copied. NULL
 * when out of memory (no callback then). */
struct smtp_client *smtp_client_start(struct event_base *base,
                                      const struct smtp_client_request *req,
                                      smtp_client_cb cb, void *arg);

/* Abandon an attempt (shutdown): the connection is closed, the callback
 * does not run. */
void smtp_client_cancel(struct smtp_client *client);

#endif
