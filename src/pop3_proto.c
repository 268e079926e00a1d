/*
 * POP3 as pure data (see pop3_proto.h): the command parser, the message
 * stream converter for RETR/TOP, sizes and UIDs.
 */
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "facteur/pop3_proto.h"

static const struct {
	const char *name;
	enum pop3_verb verb;
} keywords[] = {
    {"USER", POP3_VERB_USER}, {"PASS", POP3_VERB_PASS},
    {"STAT", POP3_VERB_STAT}, {"LIST", POP3_VERB_LIST},
    {"RETR", POP3_VERB_RETR}, {"DELE", POP3_VERB_DELE},
    {"NOOP", POP3_VERB_NOOP}, {"RSET", POP3_VERB_RSET},
    {"QUIT", POP3_VERB_QUIT}, {"UIDL", POP3_VERB_UIDL},
    {"TOP", POP3_VERB_TOP},   {"CAPA", POP3_VERB_CAPA},
    {"STLS", POP3_VERB_STLS}, {"AUTH", POP3_VERB_AUTH},
};

#define KEYWORD_COUNT (sizeof keywords / sizeof keywords[0])
#define MAX_ARGS 3 /* one more than any command takes, to see extras */

const char *pop3_verb_name(enum pop3_verb verb)
{
	for (size_t i = 0; i < KEYWORD_COUNT; i++)
		if (keywords[i].verb == verb)
			return keywords[i].name;
	return "UNKNOWN";
}

static char ascii_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static enum pop3_verb find_keyword(const char *word, size_t len)
{
	if (len < 3 || len > 4)
		return POP3_VERB_UNKNOWN;
	for (size_t i = 0; i < KEYWORD_COUNT; i++) {
		const char *name = keywords[i].name;
		if (strlen(name) != len)
			continue;
		size_t j = 0;
		while (j < len && ascii_upper(word[j]) == name[j])
			j++;
		if (j == len)
			return keywords[i].verb;
	}
	return POP3_VERB_UNKNOWN;
}

/* Decimal digits only; saturates rather than wraps. */
static bool parse_number(const char *s, size_t len, uint64_t *out)
{
	if (len == 0)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			v = UINT64_MAX;
		else
			v = v * 10 + d;
	}
	*out = v;
	return true;
}

struct words {
	const char *at[MAX_ARGS];
	size_t len[MAX_ARGS];
	unsigned count; /* up to MAX_ARGS: more is reported as MAX_ARGS */
};

/* Split at runs of spaces; leading and trailing spaces are ignored. */
static void split_words(const char *s, size_t len, struct words *w)
{
	size_t i = 0;
	w->count = 0;
	while (i < len) {
		while (i < len && s[i] == ' ')
			i++;
		if (i == len)
			break;
		size_t start = i;
		while (i < len && s[i] != ' ')
			i++;
		if (w->count == MAX_ARGS)
			return;
		w->at[w->count] = s + start;
		w->len[w->count] = i - start;
		w->count++;
	}
}

static bool has_control(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return true;
	}
	return false;
}

enum pop3_parse_result pop3_parse_command(const char *line, size_t len,
					  struct pop3_command *cmd)
{
	memset(cmd, 0, sizeof *cmd);
	size_t kw = 0;
	while (kw < len && line[kw] != ' ')
		kw++;
	cmd->verb = find_keyword(line, kw);
	if (cmd->verb == POP3_VERB_UNKNOWN)
		return POP3_PARSE_UNKNOWN;
	const char *rest = line + kw;
	size_t restlen = len - kw;

	if (cmd->verb == POP3_VERB_PASS) {
		/* The password is everything after the one space: it may
		 * hold spaces of its own (RFC 1939 §7). */
		if (restlen < 2 ||
		    memchr(rest + 1, '\0', restlen - 1) != NULL ||
		    memchr(rest + 1, '\r', restlen - 1) != NULL ||
		    memchr(rest + 1, '\n', restlen - 1) != NULL)
			return POP3_PARSE_SYNTAX;
		cmd->text[0] = rest + 1;
		cmd->textlen[0] = restlen - 1;
		cmd->ntext = 1;
		return POP3_PARSE_OK;
	}
	if (has_control(rest, restlen))
		return POP3_PARSE_SYNTAX;
	struct words w;
	split_words(rest, restlen, &w);

	switch (cmd->verb) {
	case POP3_VERB_STAT:
	case POP3_VERB_NOOP:
	case POP3_VERB_RSET:
	case POP3_VERB_QUIT:
	case POP3_VERB_CAPA:
	case POP3_VERB_STLS:
		return w.count == 0 ? POP3_PARSE_OK : POP3_PARSE_SYNTAX;
	case POP3_VERB_LIST:
	case POP3_VERB_UIDL:
		if (w.count == 0)
			return POP3_PARSE_OK;
		if (w.count > 1 ||
		    !parse_number(w.at[0], w.len[0], &cmd->number))
			return POP3_PARSE_SYNTAX;
		cmd->has_number = true;
		return POP3_PARSE_OK;
	case POP3_VERB_RETR:
	case POP3_VERB_DELE:
		if (w.count != 1 ||
		    !parse_number(w.at[0], w.len[0], &cmd->number))
			return POP3_PARSE_SYNTAX;
		cmd->has_number = true;
		return POP3_PARSE_OK;
	case POP3_VERB_TOP:
		if (w.count != 2 ||
		    !parse_number(w.at[0], w.len[0], &cmd->number) ||
		    !parse_number(w.at[1], w.len[1], &cmd->lines))
			return POP3_PARSE_SYNTAX;
		cmd->has_number = true;
		return POP3_PARSE_OK;
	case POP3_VERB_USER:
		if (w.count != 1)
			return POP3_PARSE_SYNTAX;
		cmd->text[0] = w.at[0];
		cmd->textlen[0] = w.len[0];
		cmd->ntext = 1;
		return POP3_PARSE_OK;
	case POP3_VERB_AUTH:
		if (w.count > 2)
			return POP3_PARSE_SYNTAX;
		for (unsigned i = 0; i < w.count; i++) {
			cmd->text[i] = w.at[i];
			cmd->textlen[i] = w.len[i];
		}
		cmd->ntext = w.count;
		return POP3_PARSE_OK;
	case POP3_VERB_PASS:
	case POP3_VERB_UNKNOWN:
		break;
	}
	return POP3_PARSE_UNKNOWN;
}

/* ---- RETR / TOP stream ---- */

void pop3_stream_init(struct pop3_stream *st, bool limited, uint64_t body_lines)
{
	memset(st, 0, sizeof *st);
	st->limited = limited;
	st->lines_left = body_lines;
}

bool pop3_stream_done(const struct pop3_stream *st)
{
	return st->done;
}

/* A line feed ends a line: count it against TOP's limit. */
static void end_line(struct pop3_stream *st)
{
	bool blank =
	    st->line_octets == 0 || (st->line_octets == 1 && st->prev_cr);
	st->line_octets = 0;
	st->prev_cr = false;
	if (!st->limited)
		return;
	if (st->in_body) {
		if (st->lines_left > 0)
			st->lines_left--;
		if (st->lines_left == 0)
			st->done = true;
	} else if (blank) {
		st->in_body = true;
		if (st->lines_left == 0)
			st->done = true;
	}
}

size_t pop3_stream_convert(struct pop3_stream *st, const char *in, size_t inlen,
			   char *out, size_t *used)
{
	size_t i = 0, n = 0;
	/* Runs between line feeds are copied whole: the only octets that
	 * change are a line's first '.' and a bare LF. */
	while (i < inlen && !st->done) {
		if (st->line_octets == 0 && in[i] == '.')
			out[n++] = '.';
		const char *lf = memchr(in + i, '\n', inlen - i);
		size_t end = lf != NULL ? (size_t)(lf - in) : inlen;
		size_t run = end - i;
		if (run > 0) {
			memcpy(out + n, in + i, run);
			n += run;
			st->prev_cr = in[end - 1] == '\r';
			st->line_octets =
			    run >= 2 ? 2 : st->line_octets + (unsigned)run;
			if (st->line_octets > 2)
				st->line_octets = 2;
			i = end;
		}
		if (lf == NULL)
			break;
		if (!st->prev_cr)
			out[n++] = '\r';
		out[n++] = '\n';
		i++;
		end_line(st);
	}
	*used = i;
	return n;
}

size_t pop3_stream_finish(struct pop3_stream *st, char *out)
{
	size_t n = 0;
	if (st->line_octets != 0) {
		out[n++] = '\r';
		out[n++] = '\n';
		st->line_octets = 0;
		st->prev_cr = false;
	}
	memcpy(out + n, ".\r\n", 3);
	return n + 3;
}

/* ---- sizes ---- */

void pop3_measure_feed(struct pop3_measure *m, const char *buf, size_t len)
{
	if (len == 0)
		return;
	m->octets += len;
	size_t i = 0;
	while (i < len) {
		const char *lf = memchr(buf + i, '\n', len - i);
		if (lf == NULL)
			break;
		size_t at = (size_t)(lf - buf);
		bool cr = at > 0 ? buf[at - 1] == '\r' : m->prev_cr;
		if (!cr)
			m->octets++;
		i = at + 1;
	}
	m->prev_cr = buf[len - 1] == '\r';
	m->mid_line = buf[len - 1] != '\n';
}

uint64_t pop3_measure_finish(struct pop3_measure *m)
{
	if (m->mid_line) {
		m->octets += 2;
		m->mid_line = false;
		m->prev_cr = false;
	}
	return m->octets;
}

/* ---- UIDs ---- */

bool pop3_size_from_name(const char *name, size_t len, uint64_t *size)
{
	const char *colon = memchr(name, ':', len);
	size_t base = colon != NULL ? (size_t)(colon - name) : len;
	/* Fields follow the unique part, each ",K=V"; find ",W=". */
	for (size_t i = 0; i + 3 <= base; i++) {
		if (name[i] != ',' || name[i + 1] != 'W' || name[i + 2] != '=')
			continue;
		size_t j = i + 3;
		uint64_t v = 0;
		size_t digits = 0;
		for (; j < base && name[j] >= '0' && name[j] <= '9'; j++) {
			if (v > (UINT64_MAX - 9) / 10)
				return false;
			v = v * 10 + (uint64_t)(name[j] - '0');
			digits++;
		}
		if (digits == 0 || (j < base && name[j] != ','))
			continue;
		*size = v;
		return true;
	}
	return false;
}

size_t pop3_uid_from_name(const char *name, size_t len, char *uid)
{
	const char *colon = memchr(name, ':', len);
	size_t base = colon != NULL ? (size_t)(colon - name) : len;
	bool plain = base >= 1 && base <= POP3_UID_MAX;
	for (size_t i = 0; plain && i < base; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < 0x21 || c > 0x7e)
			plain = false;
	}
	if (plain) {
		memcpy(uid, name, base);
		uid[base] = '\0';
		return base;
	}
	uint64_t h = 14695981039346656037ull; /* FNV-1a, 64 bits */
	for (size_t i = 0; i < base; i++)
		h = (h ^ (unsigned char)name[i]) * 1099511628211ull;
	static const char hex[] = "0123456789abcdef";
	uid[0] = 'x';
	for (int i = 0; i < 16; i++)
		uid[1 + i] = hex[(h >> (60 - 4 * i)) & 0xf];
	uid[17] = '\0';
	return 17;
}

bool pop3_client_is_loopback(const struct sockaddr *addr)
{
	if (addr->sa_family == AF_INET) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)addr;
		const uint8_t *b = (const uint8_t *)&sin->sin_addr;
		return b[0] == 127;
	}
	if (addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)addr;
		const uint8_t *b = sin6->sin6_addr.s6_addr;
		static const uint8_t loop6[16] = {[15] = 1};
		static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
		if (memcmp(b, loop6, 16) == 0)
			return true;
		return memcmp(b, mapped, 12) == 0 && b[12] == 127;
	}
	return false;
}
