/*
 * SMTP replies as the client side reads them: multi-line replies
 * gathered line by line into one code, one enhanced status code and one
 * text, and the EHLO keywords a server offers. Pure code, bounded: a
 * server that sends an endless reply gets an error, not our memory.
 */
#ifndef FACTEUR_SMTP_REPLY_H
#define FACTEUR_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_REPLY_TEXT_MAX 1024  /* text kept, lines joined by "; " */
#define SMTP_REPLY_LINES_MAX 200  /* more continuation lines: an error */

struct smtp_reply {
	int code;          /* 3 digits, 0 until the first line */
	char esc[16];      /* "5.1.1", "" when the server gave none */
	char text[SMTP_REPLY_TEXT_MAX]; /* without code and esc */
	size_t text_len;
	unsigned lines;
	bool complete;
	/* EHLO: what the keywords offered (filled as lines arrive) */
	unsigned ehlo;     /* SMTP_EXT_* bits */
	uint64_t ehlo_size; /* SIZE n, 0 when none or no limit */
};

#define SMTP_EXT_PIPELINING 0x001
#define SMTP_EXT_SIZE 0x002
#define SMTP_EXT_8BITMIME 0x004
#define SMTP_EXT_STARTTLS 0x008
#define SMTP_EXT_AUTH_PLAIN 0x010
#define SMTP_EXT_AUTH_LOGIN 0x020
#define SMTP_EXT_SMTPUTF8 0x040
#define SMTP_EXT_DSN 0x080
#define SMTP_EXT_CHUNKING 0x100
#define SMTP_EXT_ENHANCEDSTATUSCODES 0x200
#define SMTP_EXT_REQUIRETLS 0x400

void smtp_reply_init(struct smtp_reply *r);

enum smtp_reply_status {
	SMTP_REPLY_MORE,     /* a continuation line: feed the next one */
	SMTP_REPLY_DONE,     /* the last line: the reply is complete */
	SMTP_REPLY_INVALID,  /* not a reply line, code changed mid-reply,
	                        or too many lines */
};

/* Feed one line, without its CRLF. Lines are "NNN-text" or "NNN text"
 * (or "NNN" alone). When `ehlo` is true, continuation lines after the
 * first are read as EHLO keywords. */
enum smtp_reply_status smtp_reply_feed(struct smtp_reply *r, const char *line,
                                       size_t len, bool ehlo);

#endif
