/*
 * SMTP as pure data (RFC 5321, 1869, 3030, 3461, 6152, 6531): command
 * lines, paths, ESMTP parameters and the DATA/BDAT byte stream. No I/O,
 * no allocation: bytes in, a struct and a result out, so that unit tests
 * and fuzzers drive every parser without sockets.
 */
#ifndef FACTEUR_SMTP_PROTO_H
#define FACTEUR_SMTP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_COMMAND_LINE_MAX 512   /* octets, CRLF included (§4.5.3.1.4) */
#define SMTP_AUTH_LINE_MAX 12288    /* RFC 4954 §4 */
#define SMTP_LOCAL_PART_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256           /* the address, without the brackets */
#define SMTP_ENVID_MAX 100          /* RFC 3461 §4.4, after xtext decoding */
#define SMTP_ORCPT_MAX 500          /* RFC 3461 §4.2, as sent (xtext) */
#define SMTP_RECEIVED_MAX 100       /* more Received: headers is a loop */

enum smtp_verb {
	SMTP_VERB_UNKNOWN,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_HELP,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
};

/* A command line split into its verb and argument. `arg` points into the
 * line given to smtp_parse_command (not NUL-terminated), after the single
 * space that follows the verb; trailing spaces are not part of it. */
struct smtp_command {
	enum smtp_verb verb;
	const char *arg;
	size_t arglen;
};

/* `line` is one command line without its CRLF. Verbs are case-insensitive.
 * Never fails: an unrecognised verb gives SMTP_VERB_UNKNOWN. */
void smtp_parse_command(const char *line, size_t len, struct smtp_command *cmd);

/* The verb's name in upper case ("MAIL"), for logs. */
const char *smtp_verb_name(enum smtp_verb verb);

/* Results of the MAIL/RCPT/BDAT/HELO parsers; the session maps each to a
 * reply. */
enum smtp_parse_result {
	SMTP_PARSE_OK,
	SMTP_PARSE_SYNTAX,        /* 501 5.5.4: "FROM:" missing, junk... */
	SMTP_PARSE_BAD_ADDRESS,   /* 501 5.1.7 (sender) / 5.1.3 (recipient) */
	SMTP_PARSE_UNKNOWN_PARAM, /* 555 5.5.4 */
	SMTP_PARSE_BAD_PARAM,     /* 501 5.5.4: a known parameter, bad value */
};

/* A parsed path. `address` is the mailbox without brackets or source
 * route, NUL-terminated, with the local part exactly as sent (quotes and
 * case kept) and the domain as sent. */
struct smtp_path {
	char address[SMTP_PATH_MAX + 1];
	size_t local_len;   /* octets before the '@'; == strlen when no '@' */
	bool is_null;       /* "<>" */
	bool is_postmaster; /* "<postmaster>" with no domain (RCPT only) */
	bool utf8;          /* holds octets above 0x7f */
};

/* Parse "<...>" at the start of `text`; sets *consumed to the octets used.
 * The null path is accepted only when allow_null; "<postmaster>" (any
 * case, no domain) only when allow_postmaster. */
enum smtp_parse_result smtp_parse_path(const char *text, size_t len,
                                       bool allow_null, bool allow_postmaster,
                                       struct smtp_path *out, size_t *consumed);

/* Domain syntax of RFC 5321 §4.1.2 (letters, digits, hyphens, dots; no
 * empty label; 255 octets at most), with UTF-8 labels allowed (RFC 6531),
 * or an address literal "[1.2.3.4]" / "[IPv6:...]". */
bool smtp_domain_valid(const char *domain, size_t len);

enum smtp_body {
	SMTP_BODY_UNSPECIFIED,
	SMTP_BODY_7BIT,
	SMTP_BODY_8BITMIME,
};

enum smtp_ret {
	SMTP_RET_UNSPECIFIED,
	SMTP_RET_FULL,
	SMTP_RET_HDRS,
};

/* NOTIFY= bits (RFC 3461 §4.1); 0 means "not given". */
#define SMTP_NOTIFY_NEVER 0x1
#define SMTP_NOTIFY_SUCCESS 0x2
#define SMTP_NOTIFY_FAILURE 0x4
#define SMTP_NOTIFY_DELAY 0x8

struct smtp_mail {
	struct smtp_path from;
	bool size_given;
	uint64_t size;
	enum smtp_body body;
	bool smtputf8;
	enum smtp_ret ret;
	char envid[SMTP_ENVID_MAX + 1]; /* xtext-decoded; "" when absent */
	bool auth_given;                /* AUTH=... (RFC 4954 §5), ignored */
	bool requiretls;                /* REQUIRETLS (RFC 8689) */
};

struct smtp_rcpt {
	struct smtp_path to;
	unsigned notify;                /* SMTP_NOTIFY_* bits */
	char orcpt[SMTP_ORCPT_MAX + 1]; /* "rfc822;..." as sent; "" if absent */
};

/* `arg` is what follows "MAIL" / "RCPT" (e.g. "FROM:<a@b> SIZE=10").
 * A space after the colon is tolerated. */
enum smtp_parse_result smtp_parse_mail(const char *arg, size_t len,
                                       struct smtp_mail *out);
enum smtp_parse_result smtp_parse_rcpt(const char *arg, size_t len,
                                       struct smtp_rcpt *out);

/* One ESMTP parameter of RCPT, alone ("NOTIFY=SUCCESS,DELAY",
 * "ORCPT=rfc822;a@b.example"), read as smtp_parse_rcpt reads it, into
 * `out` on top of what it already holds: a parameter `out` already has
 * is a repeat (SMTP_PARSE_BAD_PARAM), a keyword RCPT does not know is
 * SMTP_PARSE_UNKNOWN_PARAM. `out` is unchanged unless SMTP_PARSE_OK. */
enum smtp_parse_result smtp_parse_rcpt_param(const char *param, size_t len,
                                             struct smtp_rcpt *out);

/* "BDAT <size> [LAST]". */
enum smtp_parse_result smtp_parse_bdat(const char *arg, size_t len,
                                       uint64_t *size, bool *last);

/*
 * The message stream, from the client to the spool. In DATA mode the
 * input is dot-stuffed and ends at CRLF.CRLF, and only there: a bare LF
 * or CR never ends a line for that purpose. In BDAT mode the input is raw
 * octets with no end marker.
 *
 * The output is the spool's wire form: every line ends in CRLF (a bare LF
 * or bare CR becomes CRLF), every line that starts with '.' gets one more
 * (dot-stuffed), so that the stored message can be sent with DATA as is.
 * `size` counts the message as received: unstuffed, CRLF line ends.
 * While in the header section, Received: fields are counted.
 */
enum smtp_data_mode {
	SMTP_DATA_DOTTED, /* DATA */
	SMTP_DATA_RAW,    /* BDAT */
};

struct smtp_data {
	enum smtp_data_mode mode;
	int state;                /* private */
	bool out_bol;             /* private: output is at a line start */
	bool in_headers;
	bool done;                /* DATA: the final "." line was seen */
	uint64_t size;
	unsigned received_count;
	unsigned line_prefix_len; /* private: first octets of a header line */
	char line_prefix[10];
};

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode);

/* Room needed in `out` for a feed of `inlen` octets. */
#define SMTP_DATA_OUT_MAX(inlen) (2 * (inlen) + 8)

/* Consume octets, appending wire form to out (which must hold
 * SMTP_DATA_OUT_MAX(inlen)), *outlen set to the octets written. Returns
 * the octets consumed: all of them, except in DATA mode once the end is
 * seen (the rest belongs to the next command). */
size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t inlen,
                      char *out, size_t *outlen);

/* End of a RAW stream (BDAT LAST): terminate a last line that has no
 * CRLF. Writes at most 4 octets; returns how many. */
size_t smtp_data_finish(struct smtp_data *d, char *out);

/*
 * The spool's wire form to a mailbox's form: dot-stuffing undone and CRLF
 * turned into LF. Streaming: the state carries across calls. `out` must
 * hold `inlen` octets; returns the octets written.
 */
struct smtp_unstuff {
	int state; /* private; zero-initialise */
};
size_t smtp_unstuff_to_lf(struct smtp_unstuff *u, const char *in,
                          size_t inlen, char *out);

#endif
