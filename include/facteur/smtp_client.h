/*
 * The outbound SMTP state machine (RFC 5321 client side): one delivery
 * attempt of some recipients of one message to one destination, trying
 * its addresses in turn. Connect (with a timeout), greeting, EHLO (HELO
 * fallback), STARTTLS per the TLS policy, AUTH when asked, MAIL and
 * RCPT (pipelined when offered), DATA streamed from the spool file, QUIT.
 * It reports one outcome per recipient and never touches the spool's
 * state: the scheduler records what it reports.
 *
 * In LMTP mode (RFC 2033, local_transport) the same machine says LHLO
 * instead of EHLO (no HELO fallback) and reads one reply per accepted
 * recipient after the final dot; addresses may be UNIX-domain sockets.
 *
 * A connection may carry several transactions (max_transactions): after
 * a clean one the client keeps it open and waits, idle, for the next
 * message to the same server (smtp_client_next) or for its release.
 */
#ifndef FACTEUR_SMTP_CLIENT_H
#define FACTEUR_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "facteur/config.h"
#include "facteur/dane.h"
#include "facteur/spool.h"

struct event_base;
struct smtp_client;
struct smtp_client_result;

/* One address to try, with the host name it belongs to (the MX name, or
 * the host of a "[host]" route) for logs, SNI and verification; in LMTP
 * mode the local_transport text, which names the server in logs as is.
 * An AF_UNIX address is connected at once (lmtp:unix:PATH). */
struct smtp_client_address {
	const char *host;
	struct sockaddr_storage addr; /* port set */
	socklen_t addrlen;
	/* DANE (RFC 7672) for this host: DANE_VERIFY makes TLS mandatory
	 * and matches the peer against `tlsa` (copied), DANE_ENCRYPT makes
	 * TLS mandatory; DANE_NONE leaves the request's policy */
	enum dane_state dane;
	const struct dns_tlsa *tlsa;
	size_t tlsa_count;
};

struct smtp_client_request {
	const struct spool_envelope *env;
	const size_t *rcpts; /* indexes into env->rcpts */
	size_t rcpt_count;
	struct spool_body body; /* the message, wire form; its descriptor is
				 * duplicated, the caller keeps its own */
	const char *helo;	/* our host name */
	const struct smtp_client_address *addrs; /* tried in this order */
	size_t addr_count;
	enum tls_policy tls;
	/* TLS from the first byte (port 465 relays), under the policy
	 * `tls`; no STARTTLS */
	bool implicit_tls;
	/* verify against this name instead of each address's host (for
	 * "[host]" targets, the host); NULL: the address's host */
	const char *verify_name;
	SSL_CTX *tls_ctx; /* client context; may be NULL with TLS_POLICY_NONE */
	const char *auth_user; /* AUTH to a relay host; NULL: none */
	const char *auth_password;
	unsigned timeout; /* seconds, per step (smtp_timeout) */
	/* transactions one connection may carry; 0 or 1: QUIT after the
	 * first, and the client frees itself */
	unsigned max_transactions;
	/* the local address to bind to before connecting (shape source=);
	 * NULL: the kernel's choice. A failed bind fails that address. */
	const struct sockaddr_storage *source;
	/* LMTP (RFC 2033): LHLO, and a reply per recipient after the data */
	bool lmtp;
	/* each connection that got as far as TLS was due (tls_step) and is
	 * given up for the next address, for the TLS reports: called with a
	 * result that describes that connection alone (no recipients; the
	 * same fields as the final result's last connection), and the
	 * callback's arg; NULL: not told. The final result still describes
	 * the last connection. */
	void (*connection_given_up)(const struct smtp_client_result *session,
				    void *arg);
};

#define SMTP_CLIENT_IP_MAX 46 /* INET6_ADDRSTRLEN */

/* The outcome for each recipient of the request, in request order. */
struct smtp_client_rcpt {
	enum rcpt_state state; /* RCPT_DELIVERED, RCPT_DEFERRED, RCPT_BOUNCED */
	char dsn[12];	       /* enhanced status code, e.g. "5.1.1" */
	char reason[512];      /* the server's reply or our diagnosis */
};

struct smtp_client_result {
	struct smtp_client_rcpt *rcpts; /* rcpt_count entries */
	size_t rcpt_count;
	/* the last server talked to, "mx1.example.com[192.0.2.1]:25", or ""
	 * when no connection was made */
	char relay[320];
	bool tls;		 /* the transaction ran over TLS */
	const char *tls_version; /* "TLSv1.3"..., or "none" */
	/* the peer's certificate is valid: matched by DANE under DANE, else
	 * valid for the host name (tls_ca_file, else the system's trust
	 * store), whatever the TLS policy asked */
	bool verified;
	bool dane; /* the last connection was under DANE (DANE_VERIFY) */
	/* the transaction ran on a connection opened for an earlier one */
	bool reused;
	/* For TLS reports (RFC 8460), of the last connection: its host
	 * (NULL when none was tried), its address and ours ("" when not
	 * known); whether it got as far as TLS was due (tls_step: STARTTLS
	 * offered or not, or implicit TLS) and a handshake started; the
	 * OpenSSL verify result of that handshake, finished or failed
	 * (X509_V_OK: verified, or none); its TLSA records under DANE. */
	const char *host;
	char peer_ip[SMTP_CLIENT_IP_MAX];
	char local_ip[SMTP_CLIENT_IP_MAX];
	bool tls_step;
	bool tls_handshake;
	long verify_result;
	const struct dns_tlsa *tlsa;
	size_t tlsa_count;
	/* the connection is open and idle: the client waits, with no timer
	 * of its own, for smtp_client_next or smtp_client_release (one of
	 * them is owed). false: the client frees itself. */
	bool reusable;
};

/* Runs once, on the loop, after smtp_client_start (or smtp_client_next)
 * returned; the result lives until the callback returns. Unless the
 * result is reusable, the client frees itself after. */
typedef void (*smtp_client_cb)(const struct smtp_client_result *result,
			       void *arg);

/* Start an attempt; the request's strings and arrays are copied. NULL
 * when out of memory (no callback then). */
struct smtp_client *smtp_client_start(struct event_base *base,
				      const struct smtp_client_request *req,
				      smtp_client_cb cb, void *arg);

/*
 * One more transaction on a client whose last result was reusable (from
 * inside that callback, or later): req's envelope, recipients and body
 * replace the last ones; its addresses, TLS, AUTH, HELO and timeout are
 * ignored, the client keeps those it started with. Should the server
 * have closed the idle connection (EOF, a 421, any failure before the
 * reply to MAIL), the message goes on a fresh connection to the same
 * addresses: a stale connection is never the message's failure. The
 * callback runs once, from the loop. -1 when out of memory or req is
 * bad: the client is released (no callback).
 */
int smtp_client_next(struct smtp_client *client,
		     const struct smtp_client_request *req, smtp_client_cb cb,
		     void *arg);

/* Done with a reusable client: QUIT (at most a couple of seconds) when
 * the connection is still open, then free it. `done`, when not NULL,
 * runs from the loop just before the client is freed. */
void smtp_client_release(struct smtp_client *client, void (*done)(void *arg),
			 void *arg);

/* Abandon an attempt or an idle client (shutdown): the connection is
 * closed at once, no callback runs. */
void smtp_client_cancel(struct smtp_client *client);

#endif
