/*
 * Event lines on stderr (see log.h). A line is built in one buffer and
 * written with a single write(2), so lines from the loop and from a
 * crash handler never interleave.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "facteur/log.h"

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

/* A line buffer that truncates rather than overflows. */
struct line {
	char buf[8192];
	size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
	size_t room = sizeof l->buf - 2 - l->len; /* keep room for "\n" */
	if (n > room)
		n = room;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

static void putc_(struct line *l, char c)
{
	put(l, &c, 1);
}

static bool logfmt_needs_quotes(const char *s)
{
	if (*s == '\0')
		return true;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
			return true;
	}
	return false;
}

/* Escape a value for a quoted logfmt or JSON string: quotes,
 * backslashes and control characters never reach the log raw, so a
 * client cannot forge a log line. */
static void put_escaped(struct line *l, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		switch (c) {
		case '"':
			puts_(l, "\\\"");
			break;
		case '\\':
			puts_(l, "\\\\");
			break;
		case '\n':
			puts_(l, "\\n");
			break;
		case '\r':
			puts_(l, "\\r");
			break;
		case '\t':
			puts_(l, "\\t");
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				snprintf(esc, sizeof esc, "\\u%04x", c);
				puts_(l, esc);
			} else {
				putc_(l, (char)c);
			}
		}
	}
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

static void format_logfmt(struct line *l, enum log_level level,
                          const char *event, const struct log_field *fields,
                          size_t count)
{
	puts_(l, "ts=");
	put_timestamp(l);
	puts_(l, " level=");
	puts_(l, level_names[level]);
	puts_(l, " event=");
	puts_(l, event);
	for (size_t i = 0; i < count; i++) {
		char num[32];
		putc_(l, ' ');
		puts_(l, fields[i].key);
		putc_(l, '=');
		if (fields[i].type == LOG_FIELD_INT) {
			snprintf(num, sizeof num, "%lld", fields[i].num);
			puts_(l, num);
			continue;
		}
		const char *v = fields[i].str != NULL ? fields[i].str : "";
		if (logfmt_needs_quotes(v)) {
			putc_(l, '"');
			put_escaped(l, v);
			putc_(l, '"');
		} else {
			puts_(l, v);
		}
	}
}

static void format_json(struct line *l, enum log_level level,
                        const char *event, const struct log_field *fields,
                        size_t count)
{
	puts_(l, "{\"ts\":\"");
	put_timestamp(l);
	puts_(l, "\",\"level\":\"");
	puts_(l, level_names[level]);
	puts_(l, "\",\"event\":\"");
	put_escaped(l, event);
	putc_(l, '"');
	for (size_t i = 0; i < count; i++) {
		char num[32];
		puts_(l, ",\"");
		put_escaped(l, fields[i].key);
		puts_(l, "\":");
		if (fields[i].type == LOG_FIELD_INT) {
			snprintf(num, sizeof num, "%lld", fields[i].num);
			puts_(l, num);
		} else {
			putc_(l, '"');
			put_escaped(l, fields[i].str != NULL ? fields[i].str
			                                     : "");
			putc_(l, '"');
		}
	}
	putc_(l, '}');
}

void log_fields(enum log_level level, const char *event,
                const struct log_field *fields, size_t count)
{
	if (!log_enabled(level))
		return;
	int saved_errno = errno;
	struct line l;
	l.len = 0;
	if (log_format_in_use == LOG_FORMAT_JSON)
		format_json(&l, level, event, fields, count);
	else
		format_logfmt(&l, level, event, fields, count);
	l.buf[l.len++] = '\n';
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
