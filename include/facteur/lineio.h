/*
 * Bounded lines out of an input evbuffer, as the SMTP and POP3 sessions
 * read their commands and the SMTP client its replies. The limit counts
 * the line's end (RFC 5321 §4.5.3.1.4); a longer line is reported once,
 * then skipped up to its end, however many reads it spans, so that
 * memory stays bounded and its tail is never taken for a command. Only
 * the buffer is touched: the caller replies.
 */
#ifndef FACTEUR_LINEIO_H
#define FACTEUR_LINEIO_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;

/* What ends a line. */
enum lineio_end {
	LINEIO_END_CRLF,       /* CR LF only: a bare LF or CR is data (SMTP) */
	LINEIO_END_CRLF_OR_LF, /* CR LF, or a LF alone (POP3) */
};

enum lineio_result {
	LINEIO_NONE,	 /* no complete line yet: wait for more input */
	LINEIO_LINE,	 /* a line, in out */
	LINEIO_TOO_LONG, /* a line is over the limit: answer it; call again */
	LINEIO_SKIPPED,	 /* the end of such a line was dropped; call again */
};

/* Take the next line out of in. LINEIO_LINE copies it to out without its
 * end, sets *len and adds a NUL after it; out holds at least limit
 * octets. *discarding belongs to the caller (false at first): it stays
 * set while an over-long line's rest is being dropped, across calls. A
 * last CR is kept while dropping, since it may start the CR LF that ends
 * the line. */
enum lineio_result lineio_read(struct evbuffer *in, enum lineio_end end,
			       size_t limit, bool *discarding, char *out,
			       size_t *len);

/* Does the buffered input start with prefix, ignoring ASCII case? (An
 * "AUTH " line is allowed a larger limit.) */
bool lineio_starts_with(struct evbuffer *in, const char *prefix);

#endif
