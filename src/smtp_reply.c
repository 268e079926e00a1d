/*
 * SMTP replies as the client reads them (see smtp_reply.h). Pure code:
 * one line in, the reply struct updated, no I/O and no allocation. The
 * text is bounded by SMTP_REPLY_TEXT_MAX and the number of lines by
 * SMTP_REPLY_LINES_MAX, whatever the server sends.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "facteur/smtp_reply.h"

#include "facteur/ascii.h"

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

void smtp_reply_init(struct smtp_reply *r)
{
	memset(r, 0, sizeof *r);
}

/* RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39. */
static int parse_code(const char *line, size_t len)
{
	const unsigned char *p = (const unsigned char *)line;

	if (len < 3 || p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '5' ||
	    !is_digit(p[2]))
		return -1;
	return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
}

/*
 * An enhanced status code (RFC 3463: class "." 1*3digit "." 1*3digit) at
 * the start of text, followed by a space or the end, whose class matches
 * the reply's first digit (RFC 2034). Returns its length or 0.
 */
static size_t parse_esc(const char *text, size_t len, int code)
{
	const unsigned char *p = (const unsigned char *)text;
	size_t i = 0;

	if (len < 5 || p[0] != (unsigned char)('0' + code / 100) ||
	    (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < len && is_digit(p[i]) && i - start < 4)
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i >= len || p[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < len && p[i] != ' ')
		return 0;
	return i;
}

/* Append to the text, with control characters replaced so that the text
 * can go into logs and spool records as one line. */
static void text_append(struct smtp_reply *r, const char *s, size_t n)
{
	size_t room = sizeof r->text - 1 - r->text_len;

	if (n > room)
		n = room;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		r->text[r->text_len++] =
		    (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	r->text[r->text_len] = '\0';
}

static void add_text(struct smtp_reply *r, const char *s, size_t n)
{
	if (n == 0)
		return;
	if (r->text_len > 0)
		text_append(r, "; ", 2);
	text_append(r, s, n);
}

/* "SIZE 1000": the limit, 0 for none, an unreadable or an absurd one. */
static uint64_t parse_size(const char *s, size_t n)
{
	uint64_t v = 0;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned d;
		if (!is_digit((unsigned char)s[i]))
			return 0;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	return v;
}

/* The SASL mechanisms listed in s, separated by spaces. */
static unsigned parse_auth_mechanisms(const char *s, size_t n)
{
	unsigned bits = 0;
	size_t i = 0;

	while (i < n) {
		size_t start;
		while (i < n && s[i] == ' ')
			i++;
		start = i;
		while (i < n && s[i] != ' ')
			i++;
		if (ascii_ieq(s + start, i - start, "PLAIN"))
			bits |= SMTP_EXT_AUTH_PLAIN;
		else if (ascii_ieq(s + start, i - start, "LOGIN"))
			bits |= SMTP_EXT_AUTH_LOGIN;
	}
	return bits;
}

/* One EHLO keyword line (RFC 5321 §4.1.1.1: ehlo-keyword *(SP param)). */
static void parse_ehlo_line(struct smtp_reply *r, const char *s, size_t n)
{
	static const struct {
		const char *name;
		unsigned bit;
	} simple[] = {
	    {"PIPELINING", SMTP_EXT_PIPELINING},
	    {"8BITMIME", SMTP_EXT_8BITMIME},
	    {"STARTTLS", SMTP_EXT_STARTTLS},
	    {"SMTPUTF8", SMTP_EXT_SMTPUTF8},
	    {"DSN", SMTP_EXT_DSN},
	    {"CHUNKING", SMTP_EXT_CHUNKING},
	    {"ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES},
	    {"REQUIRETLS", SMTP_EXT_REQUIRETLS},
	};
	size_t kw = 0, rest;

	while (kw < n && s[kw] != ' ')
		kw++;
	rest = kw;
	while (rest < n && s[rest] == ' ')
		rest++;

	for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++) {
		if (ascii_ieq(s, kw, simple[i].name)) {
			r->ehlo |= simple[i].bit;
			return;
		}
	}
	if (ascii_ieq(s, kw, "SIZE")) {
		size_t end = rest;
		while (end < n && s[end] != ' ')
			end++;
		r->ehlo |= SMTP_EXT_SIZE;
		r->ehlo_size = parse_size(s + rest, end - rest);
	} else if (ascii_ieq(s, kw, "AUTH")) {
		r->ehlo |= parse_auth_mechanisms(s + rest, n - rest);
	} else if (kw > 5 && ascii_ieq(s, 5, "AUTH=")) {
		/* the pre-standard form some servers still send */
		r->ehlo |= parse_auth_mechanisms(s + 5, n - 5);
	}
}

enum smtp_reply_status smtp_reply_feed(struct smtp_reply *r, const char *line,
				       size_t len, bool ehlo)
{
	const char *text;
	size_t text_len;
	bool last;
	int code;

	if (r->complete || r->lines >= SMTP_REPLY_LINES_MAX)
		return SMTP_REPLY_INVALID;
	code = parse_code(line, len);
	if (code < 0)
		return SMTP_REPLY_INVALID;
	if (len == 3) {
		last = true;
	} else if (line[3] == ' ') {
		last = true;
	} else if (line[3] == '-') {
		last = false;
	} else {
		return SMTP_REPLY_INVALID;
	}
	if (r->lines > 0 && code != r->code)
		return SMTP_REPLY_INVALID;

	text = len > 4 ? line + 4 : line + len;
	text_len = len > 4 ? len - 4 : 0;
	r->lines++;

	if (r->lines == 1) {
		size_t esc_len;
		r->code = code;
		esc_len = parse_esc(text, text_len, code);
		if (esc_len > 0 && esc_len < sizeof r->esc) {
			memcpy(r->esc, text, esc_len);
			r->esc[esc_len] = '\0';
			text += esc_len;
			text_len -= esc_len;
			while (text_len > 0 && *text == ' ') {
				text++;
				text_len--;
			}
		}
	} else {
		if (ehlo && code / 100 == 2)
			parse_ehlo_line(r, text, text_len);
		/* servers repeat the enhanced code on every line */
		size_t esc_len = r->esc[0] ? strlen(r->esc) : 0;
		if (esc_len > 0 && text_len >= esc_len &&
		    memcmp(text, r->esc, esc_len) == 0 &&
		    (text_len == esc_len || text[esc_len] == ' ')) {
			text += esc_len;
			text_len -= esc_len;
			while (text_len > 0 && *text == ' ') {
				text++;
				text_len--;
			}
		}
	}
	add_text(r, text, text_len);

	if (!last)
		return SMTP_REPLY_MORE;
	r->complete = true;
	return SMTP_REPLY_DONE;
}
