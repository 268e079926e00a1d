/*
 * The Message-ID of a message as it streams in, for the `accepted` log
 * line: a pure scanner fed the message's octets in pieces of any size
 * (CRLF or LF line ends), which keeps the first Message-ID header field
 * of the header section, unfolded and cut at MESSAGE_ID_MAX octets. It
 * looks at nothing past the header section and never allocates, so a
 * message of any size costs it a few hundred octets.
 */
#ifndef FACTEUR_MESSAGE_ID_H
#define FACTEUR_MESSAGE_ID_H

#include <stdbool.h>
#include <stddef.h>

/* More than any Message-ID a mailer makes (they run 30 to 100 octets);
 * a longer one is cut, as the log line only needs to find the message. */
#define MESSAGE_ID_MAX 255

/* A zeroed struct is a scanner at the start of a message. It looks for
 * `field` (lower case) instead of Message-ID when that is set: the
 * session reads TLS-Required (RFC 8689 §5) with a second one. */
struct message_id_scan {
	const char *field; /* NULL: "message-id" */
	int state;	  /* private */
	size_t name_len;  /* private: octets of the field name matched */
	size_t value_len; /* octets in value */
	bool found;	  /* the field was seen (its value may be empty) */
	bool truncated;	  /* the value was cut at MESSAGE_ID_MAX */
	char value[MESSAGE_ID_MAX + 1];
};

void message_id_feed(struct message_id_scan *scan, const char *in, size_t len);

/* The value, spaces trimmed (the struct's buffer, NUL-terminated), or
 * NULL when the header section had no Message-ID field. */
const char *message_id_value(struct message_id_scan *scan);

#endif
