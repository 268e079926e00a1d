/*
 * Event lines on stderr (see log.h). A line is built in one buffer and
 * written with a single write(2), so lines from the loop and from a
 * crash handler never interleave. Whatever the values hold, each line is
 * one line of valid UTF-8, and in JSON one valid object, cut if need be.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "facteur/log.h"
#include "facteur/utf8.h"

static enum log_format log_format_in_use = LOG_FORMAT_LOGFMT;
static enum log_level log_level_in_use = LOG_LEVEL_INFO;

static const char *const level_names[] = {
    [LOG_LEVEL_ERROR] = "error",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_DEBUG] = "debug",
};

void log_setup(enum log_format format, enum log_level level)
{
	log_format_in_use = format;
	log_level_in_use = level;
}

bool log_enabled(enum log_level level)
{
	return level <= log_level_in_use;
}

/*
 * A line buffer that cuts rather than overflows. Every piece goes in
 * whole or not at all (a character with its escape, a key with its
 * '='), so a cut falls between characters; once something does not fit,
 * the rest of the line is left out, and the last LOG_TAIL_RESERVE octets
 * still take what closes it: the open string's quote, the truncated
 * mark, the JSON brace and the newline.
 */
#define LOG_LINE_MAX 8192
#define LOG_TAIL_RESERVE 32

struct line {
	char buf[LOG_LINE_MAX];
	size_t len;
	bool full;
};

static bool put(struct line *l, const char *s, size_t n)
{
	if (l->full || n > LOG_LINE_MAX - LOG_TAIL_RESERVE - l->len) {
		l->full = true;
		return false;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	return true;
}

static bool puts_(struct line *l, const char *s)
{
	return put(l, s, strlen(s));
}

/* Into the reserve: only the closing octets of a line go there. */
static void put_tail(struct line *l, const char *s)
{
	size_t n = strlen(s);

	if (n > LOG_LINE_MAX - l->len)
		n = LOG_LINE_MAX - l->len; /* cannot happen: the reserve */
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

enum value_form {
	VALUE_BARE,   /* logfmt, nothing to escape: as is */
	VALUE_LOGFMT, /* inside a logfmt string */
	VALUE_JSON,   /* inside a JSON string */
};

/* C1 controls (U+0080-U+009F) are terminal controls too. */
static bool is_c1(const unsigned char *p, size_t n)
{
	return n == 2 && p[0] == 0xc2 && p[1] < 0xa0;
}

/* Does a logfmt value need quotes (and escapes)? Empty, spaces, quotes,
 * '=', backslashes, controls, C1 controls and invalid UTF-8 do. */
static bool logfmt_needs_quotes(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);

	if (left == 0)
		return true;
	while (left > 0) {
		size_t n = utf8_sequence_length(p, left);
		if (n == 0 || is_c1(p, n) ||
		    (n == 1 && (*p <= ' ' || *p == '"' || *p == '=' ||
				*p == '\\' || *p == 0x7f)))
			return true;
		p += n;
		left -= n;
	}
	return false;
}

/*
 * A value, character by character. Quotes, backslashes and control
 * characters never reach the log raw, so a client cannot forge a line;
 * nor do octets that are not UTF-8 (a peer's Latin-1 reply), which would
 * make a JSON line invalid: in JSON each becomes U+FFFD, in logfmt \xHH.
 * Returns false when the line filled up before the end of the value.
 */
static bool put_value(struct line *l, const char *s, enum value_form form)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);

	while (left > 0) {
		size_t n = utf8_sequence_length(p, left);
		char esc[8];
		bool ok;

		if (form == VALUE_BARE || (n > 1 && !is_c1(p, n))) {
			ok = put(l, (const char *)p, n == 0 ? 1 : n);
		} else if (n == 0) {
			if (form == VALUE_JSON)
				ok = puts_(l, "\\ufffd");
			else {
				snprintf(esc, sizeof esc, "\\x%02x", *p);
				ok = puts_(l, esc);
			}
			n = 1;
		} else if (n == 2) { /* a C1 control */
			snprintf(esc, sizeof esc, "\\u%04x",
				 ((p[0] & 0x1f) << 6) | (p[1] & 0x3f));
			ok = puts_(l, esc);
		} else {
			switch (*p) {
			case '"':
				ok = puts_(l, "\\\"");
				break;
			case '\\':
				ok = puts_(l, "\\\\");
				break;
			case '\n':
				ok = puts_(l, "\\n");
				break;
			case '\r':
				ok = puts_(l, "\\r");
				break;
			case '\t':
				ok = puts_(l, "\\t");
				break;
			default:
				if (*p < 0x20 || *p == 0x7f) {
					snprintf(esc, sizeof esc, "\\u%04x",
						 *p);
					ok = puts_(l, esc);
				} else {
					ok = put(l, (const char *)p, 1);
				}
			}
		}
		if (!ok)
			return false;
		p += n;
		left -= n;
	}
	return true;
}

static void put_timestamp(struct line *l)
{
	struct timeval tv;
	struct tm tm;
	char ts[40];
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof ts - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
	puts_(l, ts);
}

/* A line cut short says so in its last field. */
static void format_logfmt(struct line *l, enum log_level level,
			  const char *event, const struct log_field *fields,
			  size_t count)
{
	puts_(l, "ts=");
	put_timestamp(l);
	puts_(l, " level=");
	puts_(l, level_names[level]);
	puts_(l, " event=");
	put_value(l, event, VALUE_BARE);
	for (size_t i = 0; i < count && !l->full; i++) {
		size_t mark = l->len;
		char num[32];

		if (!puts_(l, " ") || !puts_(l, fields[i].key) ||
		    !puts_(l, "=")) {
			l->len = mark; /* no field without its value */
			break;
		}
		if (fields[i].type == LOG_FIELD_INT) {
			snprintf(num, sizeof num, "%lld", fields[i].num);
			if (!puts_(l, num))
				l->len = mark;
			continue;
		}
		const char *v = fields[i].str != NULL ? fields[i].str : "";
		if (!logfmt_needs_quotes(v)) {
			put_value(l, v, VALUE_BARE);
		} else if (put(l, "\"", 1)) {
			if (!put_value(l, v, VALUE_LOGFMT) || !put(l, "\"", 1))
				put_tail(l, "\"");
		} else {
			l->len = mark;
		}
	}
	if (l->full)
		put_tail(l, " truncated=true");
}

static void format_json(struct line *l, enum log_level level, const char *event,
			const struct log_field *fields, size_t count)
{
	puts_(l, "{\"ts\":\"");
	put_timestamp(l);
	puts_(l, "\",\"level\":\"");
	puts_(l, level_names[level]);
	puts_(l, "\",\"event\":\"");
	put_value(l, event, VALUE_JSON);
	puts_(l, "\"");
	for (size_t i = 0; i < count && !l->full; i++) {
		size_t mark = l->len;
		char num[32];

		if (!puts_(l, ",\"") ||
		    !put_value(l, fields[i].key, VALUE_JSON) ||
		    !puts_(l, "\":")) {
			l->len = mark; /* no key without its value */
			break;
		}
		if (fields[i].type == LOG_FIELD_INT) {
			snprintf(num, sizeof num, "%lld", fields[i].num);
			if (!puts_(l, num))
				l->len = mark;
			continue;
		}
		if (!puts_(l, "\"")) {
			l->len = mark;
			break;
		}
		if (!put_value(l, fields[i].str != NULL ? fields[i].str : "",
			       VALUE_JSON) ||
		    !puts_(l, "\""))
			put_tail(l, "\"");
	}
	if (l->full)
		put_tail(l, ",\"truncated\":true");
	put_tail(l, "}");
}

void log_fields(enum log_level level, const char *event,
		const struct log_field *fields, size_t count)
{
	if (!log_enabled(level))
		return;
	int saved_errno = errno;
	struct line l;
	l.len = 0;
	l.full = false;
	if (log_format_in_use == LOG_FORMAT_JSON)
		format_json(&l, level, event, fields, count);
	else
		format_logfmt(&l, level, event, fields, count);
	put_tail(&l, "\n");
	const char *p = l.buf;
	size_t left = l.len;
	while (left > 0) {
		ssize_t n = write(STDERR_FILENO, p, left);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		p += n;
		left -= (size_t)n;
	}
	errno = saved_errno;
}

/* The high half is drawn once; the low half counts. Without entropy
 * (getrandom failing, which a running Linux does not do) the time and
 * pid stand in: ids stay unique in the process either way. */
void log_session_id(char id[LOG_SESSION_ID_SIZE])
{
	static uint32_t prefix;
	static uint32_t counter;
	static bool seeded;

	if (!seeded) {
		if (getrandom(&prefix, sizeof prefix, GRND_NONBLOCK) !=
		    (ssize_t)sizeof prefix)
			prefix =
			    (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16);
		seeded = true;
	}
	counter++;
	snprintf(id, LOG_SESSION_ID_SIZE, "%08X%08X", (unsigned)prefix,
		 (unsigned)counter);
}

void fatal(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_event(LOG_LEVEL_ERROR, "fatal", LOG_S("reason", msg));
	abort();
}
