/*
 * Event lines on stderr, one per event, in logfmt or JSON (SPEC.md §7):
 *   ts=2026-11-26T14:00:00.123Z level=info event=accepted queue_id=... 
 * Fields are typed so that JSON gets numbers as numbers.
 */
#ifndef FACTEUR_LOG_H
#define FACTEUR_LOG_H

#include "facteur/config.h"

enum log_field_type {
	LOG_FIELD_STR,
	LOG_FIELD_INT,
};

struct log_field {
	const char *key;
	enum log_field_type type;
	const char *str; /* NULL prints as an empty value */
	long long num;
};

#define LOG_S(k, v) {.key = (k), .type = LOG_FIELD_STR, .str = (v)}
#define LOG_I(k, v) {.key = (k), .type = LOG_FIELD_INT, .num = (long long)(v)}

void log_setup(enum log_format format, enum log_level level);
bool log_enabled(enum log_level level);
void log_fields(enum log_level level, const char *event,
                const struct log_field *fields, size_t count);

/* log_event(LOG_LEVEL_INFO, "accepted", LOG_S("queue_id", id), ...) */
#define log_event(level, event, ...)                                        \
	do {                                                                \
		if (log_enabled(level)) {                                   \
			const struct log_field log_f_[] = {__VA_ARGS__};    \
			log_fields((level), (event), log_f_,                \
			           sizeof log_f_ / sizeof log_f_[0]);       \
		}                                                           \
	} while (0)

/* A session's id, 16 hex digits: unique in the process (a counter) and
 * most likely across processes and restarts (a random start). It ties
 * the lines of one SMTP or POP3 session together and to its messages. */
#define LOG_SESSION_ID_SIZE 17
void log_session_id(char id[LOG_SESSION_ID_SIZE]);

/* The fields that open every line of a session: its id and its client
 * (of any struct with `id` and `client` strings). */
#define LOG_SESSION(s) LOG_S("session", (s)->id), LOG_S("client", (s)->client)

/* A broken invariant of our own: log it and abort. */
_Noreturn void fatal(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

#endif
