/*
 * Delivery status notifications (RFC 3464, RFC 3461): the message that
 * tells a sender what became of its message. Pure: an envelope and the
 * original message's text in, the DSN's text out; the scheduler queues
 * it like any other message, from the null sender.
 */
#ifndef FACTEUR_BOUNCE_H
#define FACTEUR_BOUNCE_H

#include <stddef.h>
#include <time.h>

#include "facteur/spool.h"

enum bounce_kind {
	BOUNCE_FAILURE, /* Action: failed */
	BOUNCE_DELAY,   /* Action: delayed */
	BOUNCE_SUCCESS, /* Action: delivered (NOTIFY=SUCCESS) */
};

/* At most this much of the original message is returned (RET=FULL); past
 * it the copy stops at a line boundary. */
#define BOUNCE_ORIGINAL_MAX (256 * 1024)

struct bounce_input {
	enum bounce_kind kind;
	const struct spool_envelope *env; /* the original's envelope */
	const size_t *rcpts;  /* indexes of the recipients reported */
	size_t rcpt_count;
	const char *hostname; /* Reporting-MTA, From:, Message-ID */
	const char *id;       /* the DSN's own queue id, for Message-ID */
	time_t now;
	/* The original in the spool's wire form (CRLF, dot-stuffed, starting
	 * with facteur's Received header); only its first
	 * BOUNCE_ORIGINAL_MAX octets need be given. */
	const char *original;
	size_t original_len;
	/* For delays: when retries stop (arrival + queue_lifetime), shown as
	 * Will-Retry-Until; 0 when unknown (the field is then left out). */
	time_t retry_until;
};

/*
 * The DSN in wire form (CRLF line ends, dot-stuffed), ready to be stored
 * as a spool message: headers (From: MAILER-DAEMON@hostname, To: the
 * original sender, Subject, Date, Message-ID, Auto-Submitted,
 * MIME-Version), then multipart/report; report-type=delivery-status with
 * a text part, a message/delivery-status part (Reporting-MTA,
 * Original-Envelope-Id, Arrival-Date; per recipient Original-Recipient
 * from ORCPT, Final-Recipient, Action, Status, Diagnostic-Code,
 * Last-Attempt-Date, Will-Retry-Until for delays) and the original:
 * text/rfc822-headers unless RET=FULL (message/rfc822). Status takes the
 * class of the kind, except that a failure keeps a 4.x.x code as it is
 * (a recipient given up on at expiry, RFC 3463 §2). malloc'd; *len set.
 * NULL when out of memory.
 */
char *bounce_build(const struct bounce_input *in, size_t *len);

/* Whether recipient `r` of a message from `sender` wants a DSN of this
 * kind (RFC 3461 §4.1 NOTIFY; without NOTIFY: failures only). Never
 * for the null sender. */
bool bounce_wanted(const char *sender, const struct spool_rcpt *r,
                   enum bounce_kind kind);

/* The notice that recipient `r`'s final outcome calls for: true with
 * *kind set (a failure for a bounced recipient, a success for a
 * delivered one, when wanted); false for none (not final, or not
 * wanted). */
bool bounce_outcome_notice(const char *sender, const struct spool_rcpt *r,
			   enum bounce_kind *kind);

#endif
