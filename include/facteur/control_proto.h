/*
 * The control protocol as data (docs/operations.md, "The control socket"):
 * request lines, the records of the replies and their human form, and
 * what facteur-sendmail does to a message before it is queued (lone-dot
 * input rule, -t recipients, Bcc removal, missing Date/Message-ID/From).
 * Everything here is pure (text in, text out) and driven by unit tests
 * and a fuzzer, except control_proto_call(), the blocking client used by
 * facteurctl and facteur-sendmail (never by the daemon).
 */
#ifndef FACTEUR_CONTROL_PROTO_H
#define FACTEUR_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/spool.h"

#define CONTROL_LINE_MAX 1024 /* a request line, its LF included */

/* ---- requests ---- */

enum control_command {
	CONTROL_QUEUE,
	CONTROL_SHOW,	/* ID */
	CONTROL_FLUSH,	/* [ID] */
	CONTROL_DELETE, /* ID | all */
	CONTROL_BOUNCE, /* ID */
	CONTROL_STATS,
	CONTROL_RELOAD,
	CONTROL_PICKUP, /* ID */
};

struct control_request {
	enum control_command command;
	bool has_id;
	bool all;		   /* "delete all" */
	char id[SPOOL_ID_LEN + 1]; /* upper case, when has_id */
};

/*
 * One request line, without its LF (a CR before it is tolerated).
 * Commands are case-insensitive, words separated by spaces or tabs. An
 * argument that cannot be a queue id is "no such message", like an id
 * that is not queued. Returns 0, or -1 with *error set to the static text
 * of the "error" reply.
 */
int control_proto_parse_request(const char *line, size_t len,
				struct control_request *req,
				const char **error);

/* ---- reply records ---- */

/*
 * Reply lines are records: a keyword, then values separated by one space.
 * A value is written as the spool writes envelope values: "-" for empty
 * or absent, "+2D" for a literal "-", "+XX" (hex) for octets 0x00-0x20,
 * '+', '=' and 0x7f; every other octet as is. The last line of a reply is
 * "ok" or "error <text>".
 */

/* Decode a token in place; returns it, or NULL when malformed. "-"
 * decodes to "". */
char *control_proto_decode_value(char *token);
/* Split a record in place at single spaces into at most `max` tokens;
 * the last token keeps what follows. Returns the count. */
size_t control_proto_split(char *line, char **tokens, size_t max);

/* "message ID ARRIVAL SIZE SENDER NPENDING PENDING LAST-ERROR": PENDING
 * is the NPENDING recipients not done, comma-separated; LAST-ERROR the
 * latest "DSN reason" among them. malloc'd, no newline; NULL when out of
 * memory. */
char *control_proto_queue_record(const struct spool_envelope *env);

/* The envelope of `show`: "id", "arrival", "sender", "client", "helo",
 * "protocol", "auth", "size", "body", "smtputf8", "ret", "envid" lines,
 * then one "rcpt ADDRESS ORIGINAL STATE ATTEMPTS NEXT-ATTEMPT UPDATED DSN
 * REASON" per recipient; each line ends in LF. malloc'd; NULL when out of
 * memory. */
char *control_proto_show_records(const struct spool_envelope *env, size_t *len);

/* The "header <line>" records of a message in wire form (CRLF,
 * dot-stuffed, as in the spool), `len` octets of its beginning (`whole`
 * when that is the whole file): one per header line, unstuffed, up to
 * the empty line. When the empty line is not within a cut beginning, the
 * last complete line is followed by a "truncated" record. Each record
 * ends in LF. malloc'd; NULL when out of memory. */
char *control_proto_header_records(const char *wire, size_t len, bool whole,
				   size_t *outlen);

/* ---- the human form (facteurctl, facteur-sendmail -bp) ---- */

/* Everything below escapes what came from peers (addresses, headers,
 * replies) for a terminal: control characters but TAB, octets that are
 * not UTF-8 and the backslash become \xHH. */

/* A record this version does not know, escaped the same way. malloc'd;
 * NULL when out of memory. */
char *control_proto_shown(const char *s);

/* "42s", "3m", "5h", "2d". */
void control_proto_format_age(time_t seconds, char *buf, size_t len);

struct control_queue_totals {
	size_t messages;
	uint64_t octets;
	size_t recipients; /* pending */
};

/* One "message" record (as received, modified in place) to one line
 * "ID  AGE  SIZE  SENDER  PENDING  LAST-ERROR", the sender as "<>" when
 * null, "-" for no error; counted into `totals`. malloc'd, no newline;
 * NULL when the record is malformed or out of memory. */
char *control_proto_format_queue_line(char *record, time_t now,
				      struct control_queue_totals *totals);
/* "Mail queue is empty", or "-- N messages, M octets, R recipients
 * pending". malloc'd. */
char *
control_proto_format_queue_summary(const struct control_queue_totals *totals);

/* One record of a `show` reply to its human form (malloc'd, no final
 * newline; may hold several lines). *in_headers tracks the move from the
 * envelope to the headers (start with false). NULL when malformed. */
char *control_proto_format_show_line(char *record, time_t now,
				     bool *in_headers);

/* ---- the client (facteurctl, facteur-sendmail; blocking) ---- */

enum control_call_result {
	CONTROL_CALL_OK,	  /* the reply ended in "ok" */
	CONTROL_CALL_ERROR,	  /* "error <text>": the text is in err */
	CONTROL_CALL_UNREACHABLE, /* no daemon: err says why */
	CONTROL_CALL_BROKEN,	  /* the exchange failed: err says why */
};

/* Called for each reply line before the last (without its LF); a
 * non-zero return abandons the call (CONTROL_CALL_BROKEN). */
typedef int (*control_line_cb)(char *line, void *arg);

/* Connect to <spool_dir>/control, send one request line, pass every
 * record to `cb` (may be NULL), and return how the reply ended. */
enum control_call_result control_proto_call(const char *spool_dir,
					    const char *request,
					    control_line_cb cb, void *arg,
					    char *err, size_t errlen);

/* ---- facteur-sendmail's message ---- */

/*
 * The input on standard input: every octet is message text, except that
 * without -i/-oi (ignore_dots false) a line that is a lone "." (LF or
 * CRLF) ends the input, as sendmail does; that line and anything after it
 * is not part of the message.
 */
struct control_input {
	bool ignore_dots;
	bool done; /* the lone "." line was seen */
	int state; /* private; zero */
};

/* Room needed in `out` for a feed of `inlen` octets. */
#define CONTROL_INPUT_OUT_MAX(inlen) ((inlen) + 2)

/* Copy message octets to out; returns the octets consumed (all of them,
 * unless the end was seen). */
size_t control_proto_input_feed(struct control_input *in, const char *buf,
				size_t len, char *out, size_t *outlen);
/* At the end of the input: the octets held back (at most 2). */
size_t control_proto_input_finish(struct control_input *in, char *out);

/*
 * Where the header section of a submitted message (LF or CRLF lines)
 * ends: after the empty line that closes it, or before the first line
 * that is neither a field ("Name:") nor a continuation. Returns that
 * offset, or -1 when more input is needed to tell (a partial last line,
 * and `at_eof` false). At the end of the input every field line counts.
 */
long control_proto_header_end(const char *text, size_t len, bool at_eof);

struct control_addresses {
	char **items;
	size_t count;
};
void control_addresses_clear(struct control_addresses *list);

/*
 * The mailboxes of an address-list field value (RFC 5322 §3.4): display
 * names, angle addresses, comments, quoted strings, groups ("team: a@b,
 * c@d;") and legacy "a@b (Name)" forms; the value may be folded. Each
 * address is appended without brackets, source route or whitespace (a
 * quoted local part keeps its quotes). Returns 0, or -1 when out of
 * memory.
 */
int control_proto_parse_addresses(const char *value, size_t len,
				  struct control_addresses *out);

struct control_submission {
	bool extract_recipients; /* -t: To, Cc, Bcc */
	const char *from;	 /* the address for a missing From: */
	const char *from_name;	 /* -F, or NULL */
	const char *date;	 /* RFC 5322 date for a missing Date: */
	const char *message_id;	 /* "<...>" for a missing Message-ID: */
};

/*
 * Rewrite a header section (`len` octets, as delimited by
 * control_proto_header_end): every line ends in CRLF, Bcc: fields are
 * removed (always: a Bcc must not reach the recipients), and From:,
 * Date: and Message-ID: are appended when missing; the result ends with
 * the empty line, added when the input had none. With extract_recipients
 * the addresses of To:, Cc: and Bcc: are appended to `rcpts`.
 * Returns the malloc'd text (length in *outlen), or NULL when out of
 * memory.
 */
char *control_proto_rewrite_headers(const char *text, size_t len,
				    const struct control_submission *sub,
				    struct control_addresses *rcpts,
				    size_t *outlen);

#endif
