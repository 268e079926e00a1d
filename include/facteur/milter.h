/*
 * The milter client: every SMTP session asks the configured milters
 * (milter = ...), in order, at each step of its transactions. One
 * connection per session and milter, opened with the session and
 * negotiated at once; each reply is awaited at most the milter's
 * timeout, and a milter that is dead, slow or speaks garbage is cut off
 * and its default= decides (tempfail, accept: skip it for the rest of
 * the session, reject). The message itself is sent at its end, read
 * back from the spool's incoming file (never held whole in memory but a
 * replaced body), and the milters' changes are written into a new
 * incoming before the commit, so that the message becomes durable once,
 * changed. Every callback runs later, never inside the call.
 */
#ifndef FACTEUR_MILTER_H
#define FACTEUR_MILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "facteur/config.h"

struct event_base;
struct spool;
struct spool_incoming;
struct milter_session;

/* What the milters decided about a step. */
enum milter_verdict {
	MILTER_CONTINUE, /* go on */
	MILTER_REJECT,	 /* 5xx: reply holds it */
	MILTER_TEMPFAIL, /* 4xx: reply holds it */
	MILTER_DISCARD,	 /* 250 to the client, the message dropped */
};

/* The session facts the milters are told (as macros and arguments). */
struct milter_client {
	const struct sockaddr *addr;
	const char *client;	 /* its address as text */
	const char *hostname;	 /* ours: j */
	const char *helo;	 /* NULL before HELO */
	const char *tls_version; /* NULL without TLS */
	const char *auth_user;	 /* NULL when not logged in */
	const char *queue_id;	 /* i: NULL before DATA */
};

/* A step's outcome. `reply` is the full SMTP reply (one line or more,
 * without the final CRLF) for REJECT and TEMPFAIL; `milter` names the
 * milter that decided (NULL: none did), `action` its reply's name. */
struct milter_outcome {
	enum milter_verdict verdict;
	const char *reply;
	const char *milter;
	const char *action;
};

typedef void (*milter_cb)(const struct milter_outcome *outcome, void *arg);

/* Open a connection to every milter of cfg (cfg must outlive the
 * session); NULL when cfg has none or memory is short (logged). */
struct milter_session *milter_session_new(struct event_base *base,
					  const struct config *cfg,
					  const struct milter_client *client);
void milter_session_free(struct milter_session *ms);

/* The envelope steps: connect and HELO (when not told yet) then MAIL;
 * RCPT. The address goes with the command's ESMTP parameters as the
 * client wrote them (`params`, separated by spaces; NULL or "": none),
 * each sent as a string of its own. The strings must stay valid until
 * the callback. */
void milter_mail(struct milter_session *ms, const struct milter_client *client,
		 const char *sender, const char *params, milter_cb cb,
		 void *arg);
void milter_rcpt(struct milter_session *ms, const struct milter_client *client,
		 const char *rcpt, const char *params, milter_cb cb, void *arg);
/* The message, read from inc: headers, body, end of message, and the
 * milters' changes kept for milter_rewrite and the envelope. */
void milter_message(struct milter_session *ms,
		    const struct milter_client *client, struct spool *spool,
		    struct spool_incoming *inc, milter_cb cb, void *arg);
/* The transaction ended without its end of message (RSET, refusal):
 * the milters that saw it forget it. */
void milter_abort(struct milter_session *ms);

/* After MILTER_CONTINUE at the end of the message: */
/* whether the content changed (headers or body) */
bool milter_content_changed(const struct milter_session *ms);
/* Write the changed message through `write` (read from inc as needed),
 * our Received field naming new_id; 0, or -1 when inc could not be
 * read. */
int milter_rewrite(struct milter_session *ms, struct spool *spool,
		   struct spool_incoming *inc, const char *new_id,
		   void (*write)(void *arg, const void *buf, size_t len),
		   void *arg);
/* A recipient a milter added, and what the ESMTP parameters it gave
 * (ADDRCPT_PAR) mean for it; others were ignored, malformed ones refused
 * (and logged). */
struct milter_added_rcpt {
	char *address;	 /* without <> */
	unsigned notify; /* SMTP_NOTIFY_* bits; 0: not given */
	char *orcpt;	 /* "rfc822;..."; NULL: not given */
};

/* The envelope changes: the new sender (NULL: unchanged), recipients
 * added and deleted (addresses without <>), the quarantine reason
 * (NULL: not quarantined). Valid until the next step. */
struct milter_envelope_changes {
	const char *sender;
	struct milter_added_rcpt *added;
	size_t added_count;
	char **deleted;
	size_t deleted_count;
	const char *quarantine;
};
const struct milter_envelope_changes *
milter_envelope_changes(const struct milter_session *ms);

#endif
