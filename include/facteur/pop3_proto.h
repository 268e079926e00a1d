/*
 * POP3 as pure data (RFC 1939, RFC 2449, RFC 5034): command lines, the
 * Maildir message -> wire form converter used by RETR and TOP (LF line
 * ends become CRLF, lines starting with '.' are dot-stuffed), message
 * sizes as STAT and LIST give them, and UIDL strings. No I/O, no
 * allocation, so that unit tests and fuzzers drive it without sockets.
 */
#ifndef FACTEUR_POP3_PROTO_H
#define FACTEUR_POP3_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define POP3_COMMAND_LINE_MAX 255 /* octets, CRLF included (RFC 2449 §4) */
#define POP3_AUTH_LINE_MAX 12288  /* AUTH lines and SASL responses */
#define POP3_UID_MAX 70		  /* RFC 1939 §7: 1 to 70 octets */

enum pop3_verb {
	POP3_VERB_UNKNOWN,
	POP3_VERB_USER,
	POP3_VERB_PASS,
	POP3_VERB_STAT,
	POP3_VERB_LIST,
	POP3_VERB_RETR,
	POP3_VERB_DELE,
	POP3_VERB_NOOP,
	POP3_VERB_RSET,
	POP3_VERB_QUIT,
	POP3_VERB_UIDL,
	POP3_VERB_TOP,
	POP3_VERB_CAPA,
	POP3_VERB_STLS,
	POP3_VERB_AUTH,
};

enum pop3_parse_result {
	POP3_PARSE_OK,
	POP3_PARSE_UNKNOWN, /* not a command we know: "-ERR unknown command" */
	POP3_PARSE_SYNTAX,  /* a known command with bad arguments */
};

/*
 * A parsed command line. Text arguments point into the line given to
 * pop3_parse_command (not NUL-terminated):
 *   USER: text[0] the name; PASS: text[0] everything after "PASS "
 *   (spaces included, RFC 1939 §7); AUTH: text[0] the mechanism (absent:
 *   ntext 0), text[1] the initial response if any.
 * Message numbers: LIST and UIDL take an optional one (has_number), RETR,
 * DELE and TOP a required one; TOP's line count is `lines`. Numbers too
 * large to hold saturate at UINT64_MAX (never a valid message).
 */
struct pop3_command {
	enum pop3_verb verb;
	const char *text[2];
	size_t textlen[2];
	unsigned ntext;
	bool has_number;
	uint64_t number;
	uint64_t lines;
};

/* `line` is one command line without its line end. Keywords are
 * case-insensitive; arguments are separated by spaces. On anything but
 * POP3_PARSE_OK, cmd->verb still names the keyword when it was known. */
enum pop3_parse_result pop3_parse_command(const char *line, size_t len,
					  struct pop3_command *cmd);

/* The keyword in upper case ("RETR"), for logs; "UNKNOWN" for none. */
const char *pop3_verb_name(enum pop3_verb verb);

/*
 * A Maildir file (LF line ends, maybe some CRLF) to the multi-line wire
 * form of RETR and TOP, streaming: a bare LF becomes CRLF, a CRLF stays,
 * a '.' at the start of a line is doubled. With a line limit (TOP), the
 * header section, the blank line and then that many body lines are
 * given, and the stream is done: pop3_stream_done() turns true and the
 * rest of the input is left unused.
 */
struct pop3_stream {
	bool limited;	      /* private */
	bool in_body;	      /* private */
	bool done;	      /* private */
	bool prev_cr;	      /* private: the last octet was a CR */
	unsigned line_octets; /* private: octets in this line so far (max 2) */
	uint64_t lines_left;  /* private */
};

#define POP3_STREAM_OUT_MAX(inlen) (2 * (inlen))
#define POP3_STREAM_FINISH_MAX 5 /* CRLF, then ".\r\n" */

/* limited: a TOP with `body_lines` lines; else the whole message. */
void pop3_stream_init(struct pop3_stream *st, bool limited,
		      uint64_t body_lines);
/* Convert `in` into `out` (POP3_STREAM_OUT_MAX(inlen) octets at least);
 * returns the octets written and sets *used to the input consumed
 * (inlen, unless the stream became done). */
size_t pop3_stream_convert(struct pop3_stream *st, const char *in, size_t inlen,
			   char *out, size_t *used);
bool pop3_stream_done(const struct pop3_stream *st);
/* The end: a CRLF if the message ended inside a line, then ".\r\n". */
size_t pop3_stream_finish(struct pop3_stream *st, char *out);

/*
 * A message's size as STAT and LIST give it (SPEC.md §8): the octets of
 * its wire form with CRLF line ends, without the stuffing dots and the
 * final ".\r\n". Zero-initialise, feed the file, then finish.
 */
struct pop3_measure {
	uint64_t octets;
	bool prev_cr;  /* private */
	bool mid_line; /* private */
};

void pop3_measure_feed(struct pop3_measure *m, const char *buf, size_t len);
uint64_t pop3_measure_finish(struct pop3_measure *m);

/*
 * The size a Maildir file's name announces for STAT and LIST: the
 * ",W=<octets>" field of its base name (before the ':'), which Dovecot
 * and others write as the size with CRLF line ends. ",S=" is the size
 * on disk (LF line ends) and is not what POP3 counts, so it is ignored.
 * The name is trusted, as Dovecot trusts it. False when there is none
 * (the file must then be measured).
 */
bool pop3_size_from_name(const char *name, size_t len, uint64_t *size);

/*
 * The UIDL of a Maildir file: its name up to the first ':' (the part
 * that never changes, RFC 1939 §7 wants it stable across sessions) when
 * that is 1 to 70 octets in 0x21..0x7e; else "x" followed by a 64-bit
 * FNV-1a hash of that part in hex. `uid` needs POP3_UID_MAX + 1 octets.
 * Returns the length.
 */
size_t pop3_uid_from_name(const char *name, size_t len, char *uid);

/* Is the client on a loopback address (127.0.0.0/8, ::1, or IPv4
 * loopback mapped in IPv6)? Passwords in clear are allowed only there. */
bool pop3_client_is_loopback(const struct sockaddr *addr);

#endif
