/*
 * What facteur-sendmail does to a message before it is queued: the
 * lone-dot rule of its input, the end of the header section, -t
 * recipients, Bcc removal, and a From:, Date: and Message-ID: added when
 * missing. Pure (text in, text out), driven by unit tests and a fuzzer.
 */
#ifndef FACTEUR_SUBMISSION_H
#define FACTEUR_SUBMISSION_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The input on standard input: every octet is message text, except that
 * without -i/-oi (ignore_dots false) a line that is a lone "." (LF or
 * CRLF) ends the input, as sendmail does; that line and anything after it
 * is not part of the message.
 */
struct submission_input {
	bool ignore_dots;
	bool done; /* the lone "." line was seen */
	int state; /* private; zero */
};

/* Room needed in `out` for a feed of `inlen` octets. */
#define SUBMISSION_INPUT_OUT_MAX(inlen) ((inlen) + 2)

/* Copy message octets to out; returns the octets consumed (all of them,
 * unless the end was seen). */
size_t submission_input_feed(struct submission_input *in, const char *buf,
			     size_t len, char *out, size_t *outlen);
/* At the end of the input: the octets held back (at most 2). */
size_t submission_input_finish(struct submission_input *in, char *out);

/*
 * Where the header section of a submitted message (LF or CRLF lines)
 * ends: after the empty line that closes it, or before the first line
 * that is neither a field ("Name:") nor a continuation. Returns that
 * offset, or -1 when more input is needed to tell (a partial last line,
 * and `at_eof` false). At the end of the input every field line counts.
 */
long submission_header_end(const char *text, size_t len, bool at_eof);

struct submission_addresses {
	char **items;
	size_t count;
};
void submission_addresses_clear(struct submission_addresses *list);

/*
 * The mailboxes of an address-list field value (RFC 5322 §3.4): display
 * names, angle addresses, comments, quoted strings, groups ("team: a@b,
 * c@d;") and legacy "a@b (Name)" forms; the value may be folded. Each
 * address is appended without brackets, source route or whitespace (a
 * quoted local part keeps its quotes). Returns 0, or -1 when out of
 * memory.
 */
int submission_parse_addresses(const char *value, size_t len,
			       struct submission_addresses *out);

struct submission_headers {
	bool extract_recipients; /* -t: To, Cc, Bcc */
	const char *from;	 /* the address for a missing From: */
	const char *from_name;	 /* -F, or NULL */
	const char *date;	 /* RFC 5322 date for a missing Date: */
	const char *message_id;	 /* "<...>" for a missing Message-ID: */
};

/*
 * Rewrite a header section (`len` octets, as delimited by
 * submission_header_end): every line ends in CRLF, Bcc: fields are
 * removed (always: a Bcc must not reach the recipients), and From:,
 * Date: and Message-ID: are appended when missing; the result ends with
 * the empty line, added when the input had none. With extract_recipients
 * the addresses of To:, Cc: and Bcc: are appended to `rcpts`.
 * Returns the malloc'd text (length in *outlen), or NULL when out of
 * memory.
 */
char *submission_rewrite_headers(const char *text, size_t len,
				 const struct submission_headers *sub,
				 struct submission_addresses *rcpts,
				 size_t *outlen);

#endif
