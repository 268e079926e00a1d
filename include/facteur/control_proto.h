/*
 * The control protocol as data (docs/operations.md, "The control socket"):
 * request lines, the records of the replies and their human form.
 * Everything here is pure (text in, text out) and driven by unit tests
 * and a fuzzer; control_client.h sends a request, submission.h holds what
 * facteur-sendmail does to a message.
 */
#ifndef FACTEUR_CONTROL_PROTO_H
#define FACTEUR_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "facteur/spool.h"

struct text;

#define CONTROL_LINE_MAX 1024 /* a request line, its LF included */

/* ---- requests ---- */

enum control_command {
	CONTROL_QUEUE,	/* [options: see struct control_selector] */
	CONTROL_SHOW,	/* ID */
	CONTROL_FLUSH,	/* [ID] */
	CONTROL_DELETE, /* ID | all --yes | selectors [--dry-run] */
	CONTROL_BOUNCE, /* ID | selectors [--dry-run] */
	CONTROL_STATS,
	CONTROL_RELOAD,
	CONTROL_PICKUP,	 /* ID */
	CONTROL_SUMMARY, /* [--json] */
	CONTROL_HOLD,	 /* ID | selectors */
	CONTROL_RELEASE, /* ID | selectors */
	CONTROL_SUSPEND, /* DOMAIN [DURATION] */
	CONTROL_RESUME,	 /* DOMAIN */
	CONTROL_TLSRPT,	 /* send */
};

/* A message's state as the listing filters and shows it: held by the
 * operator, else deferred when a recipient not done was tried, else
 * pending. */
enum control_state {
	CONTROL_STATE_ANY,
	CONTROL_STATE_PENDING,
	CONTROL_STATE_DEFERRED,
	CONTROL_STATE_HELD,
};

/* Which messages a command applies to; every criterion given must hold. */
struct control_selector {
	bool has_domain; /* a recipient not done is at this domain */
	bool has_sender; /* the sender is this address ("" the null one) */
	char domain[CONTROL_LINE_MAX];
	char sender[CONTROL_LINE_MAX];
	enum control_state state;
	long long older_than; /* seconds in the queue at least; -1: any */
};

struct control_request {
	enum control_command command;
	bool has_id;
	bool all;		   /* "delete all" */
	char id[SPOOL_ID_LEN + 1]; /* upper case, when has_id */
	struct control_selector select;
	bool json;	  /* --json */
	bool dry_run;	  /* --dry-run: count, change nothing */
	bool yes;	  /* --yes */
	size_t limit;	  /* --limit N; 0: no limit */
	unsigned seconds; /* suspend's DURATION; 0: until resumed */
};

/*
 * One request line, without its LF (a CR before it is tolerated).
 * Commands are case-insensitive, words separated by spaces or tabs;
 * option values (--domain, --sender) are written as record values are
 * (below), so "-" is the null sender. An argument that cannot be a queue
 * id is "no such message", like an id that is not queued. Returns 0, or
 * -1 with *error set to the static text of the "error" reply.
 */
int control_proto_parse_request(const char *line, size_t len,
				struct control_request *req,
				const char **error);

/* Does a queued message fit the selector, at time `now`? `held` is
 * whether the operator holds it. */
bool control_proto_selects(const struct control_selector *sel,
			   const struct spool_envelope *env, bool held,
			   time_t now);
enum control_state control_proto_state(const struct spool_envelope *env,
				       bool held);
const char *control_proto_state_name(enum control_state state);

/* The domain of an address (after its last '@'; "" when none). */
const char *control_proto_domain(const char *address);

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

/* The JSON form of one message, one line without its LF (docs/operations.md,
 * "Queue tooling"): {"v":1,"id":...,"arrival":RFC 3339 UTC,"age_seconds",
 * "size","sender","held","state","recipients":[{"address","state",
 * "attempts","last_error","next_attempt"}]}. Strings are JSON-escaped;
 * octets that are not UTF-8 become U+FFFD. malloc'd; NULL when out of
 * memory. */
#define CONTROL_JSON_VERSION 1
char *control_proto_queue_json(const struct spool_envelope *env, bool held,
			       time_t now);

/* A JSON string (quotes included) appended to t. */
void control_proto_json_string(struct text *t, const char *s);

/* One destination domain of `summary`. */
struct control_summary_row {
	const char *domain;
	size_t messages;
	size_t recipients;
	time_t oldest;		/* arrival of its oldest message */
	const char *last_error; /* the latest, or NULL */
	bool suspended;
	time_t suspended_until; /* 0: until resumed */
	bool paused;		/* by the relay's throttling */
};

/* "domain DOMAIN MESSAGES RECIPIENTS OLDEST-ARRIVAL SUSPENDED PAUSED
 * LAST-ERROR" (SUSPENDED: 0, or the end time, -1 for until resumed;
 * PAUSED 0 or 1). malloc'd, no newline; NULL when out of memory. */
char *control_proto_summary_record(const struct control_summary_row *row);
/* A "domain" record (modified in place) to its human line (`json`
 * false) or its JSON object. NULL when malformed or out of memory. */
char *control_proto_format_summary_line(char *record, time_t now, bool json);
/* The title line of the human summary. */
#define CONTROL_SUMMARY_TITLE                                                  \
	"DOMAIN                          MESSAGES  RCPTS  OLDEST  STATUS     " \
	"LAST-ERROR"

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

#endif
