/*
 * The control protocol as pure text functions (see control_proto.h and
 * docs/operations.md): request lines, reply records and their human
 * form. No I/O here; the client that sends a request is control_client.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/control_proto.h"
#include "facteur/text.h"
#include "facteur/utf8.h"

/* ---- requests ---- */

static const struct {
	const char *name;
	enum control_command command;
	unsigned options; /* the OPT_* it takes */
} commands[] = {
    {"queue", CONTROL_QUEUE, 0x3f},	 {"show", CONTROL_SHOW, 0},
    {"flush", CONTROL_FLUSH, 0},	 {"delete", CONTROL_DELETE, 0x306},
    {"bounce", CONTROL_BOUNCE, 0x206},	 {"stats", CONTROL_STATS, 0},
    {"reload", CONTROL_RELOAD, 0},	 {"pickup", CONTROL_PICKUP, 0},
    {"summary", CONTROL_SUMMARY, 0x1},	 {"hold", CONTROL_HOLD, 0x206},
    {"release", CONTROL_RELEASE, 0x206}, {"suspend", CONTROL_SUSPEND, 0},
    {"resume", CONTROL_RESUME, 0},	 {"tlsrpt", CONTROL_TLSRPT, 0},
};

/* The options, in the order of their bits. */
enum {
	OPT_JSON = 0x1,
	OPT_DOMAIN = 0x2,
	OPT_SENDER = 0x4,
	OPT_STATE = 0x8,
	OPT_OLDER_THAN = 0x10,
	OPT_LIMIT = 0x20,
	OPT_YES = 0x100,
	OPT_DRY_RUN = 0x200,
};

static const struct {
	const char *name;
	unsigned bit;
	bool has_value;
} options[] = {
    {"--json", OPT_JSON, false},
    {"--domain", OPT_DOMAIN, true},
    {"--sender", OPT_SENDER, true},
    {"--state", OPT_STATE, true},
    {"--older-than", OPT_OLDER_THAN, true},
    {"--limit", OPT_LIMIT, true},
    {"--yes", OPT_YES, false},
    {"--dry-run", OPT_DRY_RUN, false},
};

#define REQUEST_WORDS_MAX 24

struct word {
	const char *p;
	size_t n;
};

static bool word_is(struct word w, const char *s)
{
	return ascii_ieq(w.p, w.n, s);
}

static bool parse_id(struct word w, char *id)
{
	if (w.n != SPOOL_ID_LEN)
		return false;
	for (size_t i = 0; i < w.n; i++) {
		char c = w.p[i];
		if (c >= 'a' && c <= 'f')
			c = (char)(c - 'a' + 'A');
		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F')))
			return false;
		id[i] = c;
	}
	id[SPOOL_ID_LEN] = '\0';
	return true;
}

/* A word as a C string into out (CONTROL_LINE_MAX octets). */
static void word_copy(struct word w, char *out)
{
	memcpy(out, w.p, w.n);
	out[w.n] = '\0';
}

/* An option's value: a record value ("-" empty); "<>" is the null
 * sender too. Domains compare in lower case. */
static bool parse_value(struct word w, char *out, bool domain)
{
	word_copy(w, out);
	if (strcmp(out, "<>") == 0)
		out[0] = '\0';
	else if (control_proto_decode_value(out) == NULL)
		return false;
	if (domain) {
		ascii_lower_in_place(out, strlen(out));
		if (out[0] == '\0' || strchr(out, '@') != NULL)
			return false;
	}
	return true;
}

static bool parse_count(struct word w, size_t *out)
{
	char buf[32];
	char *end;

	if (w.n == 0 || w.n >= sizeof buf || !ascii_is_digit(w.p[0]))
		return false;
	word_copy(w, buf);
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno != 0 || *end != '\0' || v == 0 || v > SIZE_MAX)
		return false;
	*out = (size_t)v;
	return true;
}

static bool parse_seconds(struct word w, unsigned *out)
{
	char buf[32];

	if (w.n == 0 || w.n >= sizeof buf)
		return false;
	word_copy(w, buf);
	return config_parse_duration(buf, out) == 0;
}

static bool parse_state(struct word w, enum control_state *out)
{
	static const enum control_state states[] = {
	    CONTROL_STATE_PENDING, CONTROL_STATE_DEFERRED, CONTROL_STATE_HELD};
	for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
		if (word_is(w, control_proto_state_name(states[i]))) {
			*out = states[i];
			return true;
		}
	return false;
}

/* The value of option `bit` into req; the static error text, or NULL. */
static const char *parse_option(struct control_request *req, unsigned bit,
				struct word value)
{
	struct control_selector *sel = &req->select;
	unsigned seconds;

	switch (bit) {
	case OPT_JSON:
		req->json = true;
		return NULL;
	case OPT_YES:
		req->yes = true;
		return NULL;
	case OPT_DRY_RUN:
		req->dry_run = true;
		return NULL;
	case OPT_DOMAIN:
		sel->has_domain = true;
		return parse_value(value, sel->domain, true) ? NULL
							     : "bad domain";
	case OPT_SENDER:
		sel->has_sender = true;
		return parse_value(value, sel->sender, false) ? NULL
							      : "bad sender";
	case OPT_STATE:
		return parse_state(value, &sel->state)
			   ? NULL
			   : "--state is pending, deferred or held";
	case OPT_OLDER_THAN:
		if (!parse_seconds(value, &seconds))
			return "bad duration (a number, then s, m, h or d)";
		sel->older_than = seconds;
		return NULL;
	case OPT_LIMIT:
		return parse_count(value, &req->limit)
			   ? NULL
			   : "--limit takes a number above 0";
	}
	return "unknown option";
}

/* Cut a line into words; -1 when there are too many. */
static int split_words(const char *line, size_t len, struct word *words,
		       size_t max, size_t *count)
{
	size_t i = 0;

	*count = 0;
	while (i < len) {
		while (i < len && ascii_is_wsp(line[i]))
			i++;
		if (i == len)
			break;
		size_t start = i;
		while (i < len && !ascii_is_wsp(line[i]))
			i++;
		if (*count == max)
			return -1;
		words[*count].p = line + start;
		words[*count].n = i - start;
		(*count)++;
	}
	return 0;
}

/* The positional arguments against the command; the error or NULL. */
static const char *check_arguments(struct control_request *req,
				   const struct word *args, size_t nargs)
{
	bool selectors = req->select.has_domain || req->select.has_sender;

	switch (req->command) {
	case CONTROL_QUEUE:
	case CONTROL_STATS:
	case CONTROL_RELOAD:
	case CONTROL_SUMMARY:
		return nargs == 0 ? NULL : "this command takes no argument";
	case CONTROL_FLUSH:
		if (nargs == 0)
			return NULL;
		return nargs == 1 ? "" : "usage: flush [ID]";
	case CONTROL_SHOW:
	case CONTROL_PICKUP:
		return nargs == 1 ? "" : "a queue id is needed";
	case CONTROL_TLSRPT:
		return nargs == 1 && word_is(args[0], "send")
			   ? NULL
			   : "usage: tlsrpt send";
	case CONTROL_SUSPEND:
	case CONTROL_RESUME:
		if (nargs < 1 ||
		    nargs > (req->command == CONTROL_SUSPEND ? 2u : 1u))
			return req->command == CONTROL_SUSPEND
				   ? "usage: suspend DOMAIN [DURATION]"
				   : "usage: resume DOMAIN";
		if (args[0].n >= CONTROL_LINE_MAX ||
		    !parse_value(args[0], req->select.domain, true))
			return "bad domain";
		req->select.has_domain = true;
		if (nargs == 2 && (!parse_seconds(args[1], &req->seconds) ||
				   req->seconds == 0))
			return "bad duration (a number, then s, m, h or d)";
		return NULL;
	case CONTROL_DELETE:
		if (nargs == 1 && word_is(args[0], "all") && !selectors) {
			req->all = true;
			return req->yes || req->dry_run
				   ? NULL
				   : "delete all needs --yes";
		}
		/* fall through */
	case CONTROL_BOUNCE:
	case CONTROL_HOLD:
	case CONTROL_RELEASE:
		if (nargs == 0 && selectors)
			return NULL;
		if (nargs == 1 && !selectors)
			return "";
		return req->command == CONTROL_DELETE
			   ? "usage: delete ID|all|--domain D|--sender S"
			   : "a queue id, or --domain D or --sender S, is "
			     "needed";
	}
	return "unknown command";
}

int control_proto_parse_request(const char *line, size_t len,
				struct control_request *req, const char **error)
{
	struct word words[REQUEST_WORDS_MAX];
	struct word args[REQUEST_WORDS_MAX];
	size_t count = 0;
	size_t nargs = 0;
	unsigned seen = 0;

	memset(req, 0, sizeof *req);
	req->select.older_than = -1;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len >= CONTROL_LINE_MAX) {
		*error = "line too long";
		return -1;
	}
	if (split_words(line, len, words, REQUEST_WORDS_MAX, &count) == -1) {
		*error = "too many arguments";
		return -1;
	}
	if (count == 0) {
		*error = "empty request";
		return -1;
	}
	size_t c;
	for (c = 0; c < sizeof commands / sizeof commands[0]; c++)
		if (word_is(words[0], commands[c].name))
			break;
	if (c == sizeof commands / sizeof commands[0]) {
		*error = "unknown command";
		return -1;
	}
	req->command = commands[c].command;
	for (size_t i = 1; i < count; i++) {
		if (words[i].n < 2 || words[i].p[0] != '-' ||
		    words[i].p[1] != '-') {
			args[nargs++] = words[i];
			continue;
		}
		size_t o;
		for (o = 0; o < sizeof options / sizeof options[0]; o++)
			if (word_is(words[i], options[o].name))
				break;
		if (o == sizeof options / sizeof options[0] ||
		    !(commands[c].options & options[o].bit)) {
			*error = o == sizeof options / sizeof options[0]
				     ? "unknown option"
				     : "this command does not take that option";
			return -1;
		}
		if (seen & options[o].bit) {
			*error = "an option is given twice";
			return -1;
		}
		seen |= options[o].bit;
		struct word value = {"", 0};
		if (options[o].has_value) {
			if (++i == count) {
				*error = "an option lacks its value";
				return -1;
			}
			value = words[i];
		}
		*error = parse_option(req, options[o].bit, value);
		if (*error != NULL)
			return -1;
	}
	*error = check_arguments(req, args, nargs);
	if (*error == NULL)
		return 0;
	if ((*error)[0] != '\0')
		return -1;
	/* "": the one argument is a queue id */
	if (!parse_id(args[0], req->id)) {
		*error = "no such message";
		return -1;
	}
	req->has_id = true;
	*error = NULL;
	return 0;
}

/* ---- selecting messages ---- */

const char *control_proto_domain(const char *address)
{
	const char *at = strrchr(address, '@');
	return at != NULL ? at + 1 : "";
}

static bool rcpt_done(const struct spool_rcpt *r)
{
	return r->state == RCPT_DELIVERED || r->state == RCPT_BOUNCED;
}

const char *control_proto_state_name(enum control_state state)
{
	switch (state) {
	case CONTROL_STATE_PENDING:
		return "pending";
	case CONTROL_STATE_DEFERRED:
		return "deferred";
	case CONTROL_STATE_HELD:
		return "held";
	case CONTROL_STATE_ANY:
		break;
	}
	return "any";
}

enum control_state control_proto_state(const struct spool_envelope *env,
				       bool held)
{
	if (held)
		return CONTROL_STATE_HELD;
	for (size_t i = 0; i < env->rcpt_count; i++)
		if (env->rcpts[i].state == RCPT_DEFERRED)
			return CONTROL_STATE_DEFERRED;
	return CONTROL_STATE_PENDING;
}

bool control_proto_selects(const struct control_selector *sel,
			   const struct spool_envelope *env, bool held,
			   time_t now)
{
	if (sel->has_sender && !ascii_ieq_len(env->sender, strlen(env->sender),
					      sel->sender, strlen(sel->sender)))
		return false;
	if (sel->older_than >= 0 && now - env->arrival < sel->older_than)
		return false;
	if (sel->state != CONTROL_STATE_ANY &&
	    control_proto_state(env, held) != sel->state)
		return false;
	if (!sel->has_domain)
		return true;
	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		const char *d = control_proto_domain(r->address);
		if (!rcpt_done(r) && ascii_ieq_len(d, strlen(d), sel->domain,
						   strlen(sel->domain)))
			return true;
	}
	return false;
}

/* ---- reply records (values escaped as text_value does) ---- */

char *control_proto_decode_value(char *token)
{
	if (strcmp(token, "-") == 0) {
		token[0] = '\0';
		return token;
	}
	size_t len = strlen(token);
	if (text_xtext_decode(token, len, token, len + 1, TEXT_XTEXT_8BIT) < 0)
		return NULL;
	return token;
}

size_t control_proto_split(char *line, char **tokens, size_t max)
{
	size_t count = 0;

	if (max == 0)
		return 0;
	tokens[count++] = line;
	while (count < max) {
		char *sp = strchr(line, ' ');
		if (sp == NULL)
			break;
		*sp = '\0';
		line = sp + 1;
		tokens[count++] = line;
	}
	return count;
}

/* The dsn field may lack its NUL if a caller filled all of it. */
static void copy_dsn(char *out, const struct spool_rcpt *r)
{
	memcpy(out, r->dsn, sizeof r->dsn);
	out[sizeof r->dsn - 1] = '\0';
}

/* ---- the JSON form ---- */

/*
 * A JSON string: quote, backslash and controls escaped (C1 controls as
 * \u0080-\u009f too, for terminals), UTF-8 as is, and each octet that is
 * not UTF-8 (a peer's Latin-1) as U+FFFD, so that every line parses.
 */
void control_proto_json_string(struct text *t, const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	size_t left = strlen((const char *)p);

	text_add(t, "\"", 1);
	while (left > 0) {
		size_t n = utf8_sequence_length(p, left);
		if (n == 0) {
			text_str(t, "\\ufffd");
			n = 1;
		} else if (n == 2 && p[0] == 0xc2 && p[1] < 0xa0) {
			text_fmt(t, "\\u%04x", p[1]);
		} else if (n > 1 || (*p >= 0x20 && *p != 0x7f && *p != '"' &&
				     *p != '\\')) {
			text_add(t, (const char *)p, n);
		} else if (*p == '"' || *p == '\\') {
			char esc[2] = {'\\', (char)*p};
			text_add(t, esc, 2);
		} else {
			text_fmt(t, "\\u%04x", *p);
		}
		p += n;
		left -= n;
	}
	text_add(t, "\"", 1);
}

/* An RFC 3339 time in UTC, as a JSON string; null for 0. */
static void json_time(struct text *t, time_t when)
{
	struct tm tm;
	char buf[40];

	if (when == 0 || gmtime_r(&when, &tm) == NULL ||
	    strftime(buf, sizeof buf, "\"%Y-%m-%dT%H:%M:%SZ\"", &tm) == 0) {
		text_str(t, "null");
		return;
	}
	text_str(t, buf);
}

/* "DSN reason" of a recipient, or "" when it has neither. */
static void last_error(struct text *t, const struct spool_rcpt *r)
{
	char dsn[sizeof r->dsn];

	copy_dsn(dsn, r);
	text_str(t, dsn);
	if (dsn[0] != '\0' && r->reason != NULL)
		text_add(t, " ", 1);
	if (r->reason != NULL)
		text_str(t, r->reason);
}

/* A JSON member holding a string, or null when the text is empty. */
static void json_text_or_null(struct text *t, struct text *value)
{
	if (value->failed)
		t->failed = true;
	if (value->len == 0)
		text_str(t, "null");
	else
		control_proto_json_string(t, value->p);
	free(value->p);
	*value = (struct text){0};
}

char *control_proto_queue_json(const struct spool_envelope *env, bool held,
			       time_t now)
{
	struct text t = {0};

	text_fmt(&t, "{\"v\":%d,\"id\":", CONTROL_JSON_VERSION);
	control_proto_json_string(&t, env->id);
	text_str(&t, ",\"arrival\":");
	json_time(&t, env->arrival);
	text_fmt(&t, ",\"age_seconds\":%lld,\"size\":%" PRIu64 ",\"sender\":",
		 (long long)(now > env->arrival ? now - env->arrival : 0),
		 env->size);
	control_proto_json_string(&t, env->sender);
	text_fmt(&t, ",\"held\":%s,\"state\":\"%s\",\"recipients\":[",
		 held ? "true" : "false",
		 control_proto_state_name(control_proto_state(env, held)));
	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		struct text error = {0};
		text_str(&t, i ? ",{\"address\":" : "{\"address\":");
		control_proto_json_string(&t, r->address);
		text_fmt(&t,
			 ",\"state\":\"%s\",\"attempts\":%u,\"last_error\":",
			 rcpt_state_name(r->state), r->attempts);
		last_error(&error, r);
		json_text_or_null(&t, &error);
		text_str(&t, ",\"next_attempt\":");
		json_time(&t, r->state == RCPT_DEFERRED ? r->next_attempt : 0);
		text_add(&t, "}", 1);
	}
	text_str(&t, "]}");
	return text_finish(&t, NULL);
}

char *control_proto_queue_record(const struct spool_envelope *env)
{
	struct text t = {0};
	struct text pending = {0};
	struct text error = {0};
	const struct spool_rcpt *latest = NULL;
	size_t npending = 0;

	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		if (rcpt_done(r))
			continue;
		if (npending++ > 0)
			text_add(&pending, ",", 1);
		text_str(&pending, r->address ? r->address : "");
		if ((r->reason != NULL || r->dsn[0] != '\0') &&
		    (latest == NULL || r->updated >= latest->updated))
			latest = r;
	}
	if (latest != NULL)
		last_error(&error, latest);
	text_str(&t, "message ");
	text_value(&t, env->id);
	text_fmt(&t, " %" PRId64 " %" PRIu64 " ", (int64_t)env->arrival,
		 env->size);
	text_value(&t, env->sender);
	text_fmt(&t, " %zu ", npending);
	text_value(&t, pending.failed ? NULL : pending.p);
	text_add(&t, " ", 1);
	text_value(&t, error.failed ? NULL : error.p);
	if (pending.failed || error.failed)
		t.failed = true;
	free(pending.p);
	free(error.p);
	return text_finish(&t, NULL);
}

/* ---- the summary ---- */

char *control_proto_summary_record(const struct control_summary_row *row)
{
	struct text t = {0};
	long long suspended = !row->suspended ? 0
			      : row->suspended_until == 0
				  ? -1
				  : (long long)row->suspended_until;

	text_str(&t, "domain ");
	text_value(&t, row->domain);
	text_fmt(&t, " %zu %zu %lld %lld %d ", row->messages, row->recipients,
		 (long long)row->oldest, suspended, row->paused ? 1 : 0);
	text_value(&t, row->last_error);
	return text_finish(&t, NULL);
}

static void text_keyed(struct text *t, const char *key, const char *value)
{
	text_str(t, key);
	text_add(t, " ", 1);
	text_value(t, value);
	text_add(t, "\n", 1);
}

char *control_proto_show_records(const struct spool_envelope *env, size_t *len)
{
	struct text t = {0};

	text_keyed(&t, "id", env->id);
	text_fmt(&t, "arrival %" PRId64 "\n", (int64_t)env->arrival);
	text_keyed(&t, "sender", env->sender);
	text_keyed(&t, "client", env->client_addr);
	text_keyed(&t, "helo", env->helo);
	text_keyed(&t, "protocol", env->protocol);
	text_keyed(&t, "auth", env->auth_user);
	text_fmt(&t, "size %" PRIu64 "\n", env->size);
	text_keyed(&t, "body", spool_body_name(env->body));
	text_fmt(&t, "smtputf8 %d\n", env->smtputf8 ? 1 : 0);
	text_keyed(&t, "ret", spool_ret_name(env->ret));
	text_keyed(&t, "envid", env->envid);
	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		char dsn[sizeof r->dsn];
		copy_dsn(dsn, r);
		text_str(&t, "rcpt ");
		text_value(&t, r->address);
		text_add(&t, " ", 1);
		text_value(&t, r->original);
		text_fmt(&t, " %s %u %" PRId64 " %" PRId64 " ",
			 rcpt_state_name(r->state), r->attempts,
			 (int64_t)r->next_attempt, (int64_t)r->updated);
		text_value(&t, dsn);
		text_add(&t, " ", 1);
		text_value(&t, r->reason);
		text_add(&t, "\n", 1);
	}
	return text_finish(&t, len);
}

char *control_proto_header_records(const char *wire, size_t len, bool whole,
				   size_t *outlen)
{
	struct text t = {0};
	size_t pos = 0;
	bool ended = false;

	while (pos < len) {
		const char *nl = memchr(wire + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - wire) : len;
		size_t next = nl ? end + 1 : len;
		if (nl == NULL && !whole)
			break; /* a cut line: not shown */
		size_t n = end - pos;
		if (n > 0 && wire[pos + n - 1] == '\r')
			n--;
		if (n == 0) {
			ended = true;
			break;
		}
		const char *line = wire + pos;
		if (line[0] == '.') { /* undo dot-stuffing */
			line++;
			n--;
		}
		text_str(&t, "header ");
		for (size_t i = 0; i < n; i++) {
			/* A record is one line whatever the file holds. */
			char c =
			    line[i] == '\r' || line[i] == '\n' ? ' ' : line[i];
			text_add(&t, &c, 1);
		}
		text_add(&t, "\n", 1);
		pos = next;
	}
	if (!ended && !whole)
		text_str(&t, "truncated\n");
	return text_finish(&t, outlen);
}

/* ---- the human form ---- */

/*
 * Text that came from a peer (headers, addresses, a server's reply), for
 * a terminal: control characters other than TAB (C0, DEL and the C1
 * range, which terminals obey as commands: "ESC [ 2 J" clears the
 * screen), octets that are not UTF-8 and the backslash itself are
 * written as \xHH (C1 as the two octets of its UTF-8 form), so that
 * what is shown is what was sent and nothing in it acts on the terminal.
 */
static void text_shown(struct text *t, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);

	while (left > 0) {
		size_t n = utf8_sequence_length(p, left);
		bool c1 = n == 2 && p[0] == 0xc2 && p[1] < 0xa0;
		bool plain = n > 1 ? !c1
				   : n == 1 && (*p >= 0x20 || *p == '\t') &&
					 *p != 0x7f && *p != '\\';

		if (n == 0)
			n = 1;
		if (plain) {
			text_add(t, (const char *)p, n);
		} else {
			for (size_t i = 0; i < n; i++) {
				char esc[4] = {'\\', 'x', hex[p[i] >> 4],
					       hex[p[i] & 15]};
				text_add(t, esc, sizeof esc);
			}
		}
		p += n;
		left -= n;
	}
}

char *control_proto_shown(const char *s)
{
	struct text t = {0};

	text_shown(&t, s);
	return text_finish(&t, NULL);
}

void control_proto_format_age(time_t seconds, char *buf, size_t len)
{
	long long s = seconds < 0 ? 0 : (long long)seconds;

	if (s < 60)
		snprintf(buf, len, "%llds", s);
	else if (s < 3600)
		snprintf(buf, len, "%lldm", s / 60);
	else if (s < 86400)
		snprintf(buf, len, "%lldh", s / 3600);
	else
		snprintf(buf, len, "%lldd", s / 86400);
}

static bool parse_number(const char *s, long long min, long long max,
			 long long *out)
{
	char *end;

	if (s[0] == '\0')
		return false;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* Tokens of a record, decoded; false when one is malformed. */
static bool decode_all(char **tokens, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (control_proto_decode_value(tokens[i]) == NULL)
			return false;
	return true;
}

char *control_proto_format_queue_line(char *record, time_t now,
				      struct control_queue_totals *totals)
{
	char *tok[8];
	long long arrival, size, npending;
	char age[32];

	if (control_proto_split(record, tok, 8) != 8 ||
	    strcmp(tok[0], "message") != 0 || !decode_all(tok + 1, 7) ||
	    !parse_number(tok[2], INT64_MIN, INT64_MAX, &arrival) ||
	    !parse_number(tok[3], 0, INT64_MAX, &size) ||
	    !parse_number(tok[5], 0, INT64_MAX, &npending))
		return NULL;
	control_proto_format_age((time_t)(now - arrival), age, sizeof age);
	totals->messages++;
	totals->octets += (uint64_t)size;
	totals->recipients += (size_t)npending;

	struct text t = {0};
	text_fmt(&t, "%-16s  %4s  %8lld  ", tok[1], age, size);
	text_shown(&t, tok[4][0] ? tok[4] : "<>");
	text_str(&t, "  ");
	text_shown(&t, tok[6][0] ? tok[6] : "-");
	text_str(&t, "  ");
	text_shown(&t, tok[7][0] ? tok[7] : "-");
	return text_finish(&t, NULL);
}

char *
control_proto_format_queue_summary(const struct control_queue_totals *totals)
{
	struct text t = {0};

	if (totals->messages == 0)
		text_str(&t, "Mail queue is empty");
	else
		text_fmt(&t,
			 "-- %zu message%s, %" PRIu64 " octets, %zu "
			 "recipient%s pending",
			 totals->messages, totals->messages == 1 ? "" : "s",
			 totals->octets, totals->recipients,
			 totals->recipients == 1 ? "" : "s");
	return text_finish(&t, NULL);
}

static void text_time(struct text *t, long long when)
{
	struct tm tm;
	time_t tt = (time_t)when;
	char buf[64];

	if (when == 0 || localtime_r(&tt, &tm) == NULL ||
	    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &tm) == 0) {
		text_str(t, "-");
		return;
	}
	text_str(t, buf);
}

static char *format_rcpt(char *rest, time_t now)
{
	char *tok[8];
	long long attempts, next, updated;

	(void)now;
	if (control_proto_split(rest, tok, 8) != 8 || !decode_all(tok, 8) ||
	    !parse_number(tok[3], 0, UINT32_MAX, &attempts) ||
	    !parse_number(tok[4], INT64_MIN, INT64_MAX, &next) ||
	    !parse_number(tok[5], INT64_MIN, INT64_MAX, &updated))
		return NULL;
	struct text t = {0};
	text_str(&t, "recipient  ");
	text_shown(&t, tok[0]);
	text_str(&t, " ");
	text_shown(&t, tok[2]);
	text_fmt(&t, " %lld ", attempts);
	text_time(&t, strcmp(tok[2], "deferred") == 0 ? next : 0);
	text_str(&t, " ");
	text_shown(&t, tok[6][0] ? tok[6] : "-");
	text_str(&t, " ");
	text_shown(&t, tok[7][0] ? tok[7] : "-");
	if (tok[1][0] != '\0' && strcmp(tok[1], tok[0]) != 0) {
		text_str(&t, " (for ");
		text_shown(&t, tok[1]);
		text_str(&t, ")");
	}
	return text_finish(&t, NULL);
}

char *control_proto_format_show_line(char *record, time_t now, bool *in_headers)
{
	struct text t = {0};
	char *sp = strchr(record, ' ');
	char *rest = sp ? sp + 1 : record + strlen(record);
	const char *key = record;

	if (sp != NULL)
		*sp = '\0';
	if (strcmp(key, "header") == 0 || strcmp(key, "truncated") == 0) {
		if (!*in_headers)
			text_str(&t, "\n");
		*in_headers = true;
		if (strcmp(key, "header") == 0)
			text_shown(&t, rest);
		else
			text_str(&t, "[headers cut here]");
		return text_finish(&t, NULL);
	}
	if (strcmp(key, "rcpt") == 0)
		return format_rcpt(rest, now);
	if (control_proto_decode_value(rest) == NULL)
		return NULL;
	text_fmt(&t, "%-10s ", key);
	if (strcmp(key, "arrival") == 0) {
		long long when;
		char age[32];
		if (!parse_number(rest, INT64_MIN, INT64_MAX, &when)) {
			free(t.p);
			return NULL;
		}
		control_proto_format_age((time_t)(now - when), age, sizeof age);
		text_time(&t, when);
		text_fmt(&t, " (%s ago)", age);
	} else if (strcmp(key, "sender") == 0) {
		text_str(&t, "<");
		text_shown(&t, rest);
		text_str(&t, ">");
	} else if (strcmp(key, "smtputf8") == 0) {
		text_str(&t, strcmp(rest, "1") == 0 ? "yes" : "no");
	} else {
		text_shown(&t, rest[0] ? rest : "-");
	}
	return text_finish(&t, NULL);
}

char *control_proto_format_summary_line(char *record, time_t now, bool json)
{
	char *tok[8];
	long long messages, rcpts, oldest, suspended, paused;
	struct text t = {0};

	if (control_proto_split(record, tok, 8) != 8 ||
	    strcmp(tok[0], "domain") != 0 || !decode_all(tok + 1, 7) ||
	    !parse_number(tok[2], 0, INT64_MAX, &messages) ||
	    !parse_number(tok[3], 0, INT64_MAX, &rcpts) ||
	    !parse_number(tok[4], INT64_MIN, INT64_MAX, &oldest) ||
	    !parse_number(tok[5], -1, INT64_MAX, &suspended) ||
	    !parse_number(tok[6], 0, 1, &paused))
		return NULL;
	long long age = oldest > 0 && now > oldest ? now - oldest : 0;
	if (json) {
		text_fmt(&t, "{\"v\":%d,\"domain\":", CONTROL_JSON_VERSION);
		control_proto_json_string(&t, tok[1]);
		text_fmt(&t,
			 ",\"messages\":%lld,\"recipients\":%lld,"
			 "\"oldest_age_seconds\":%lld,\"last_error\":",
			 messages, rcpts, age);
		if (tok[7][0] == '\0')
			text_str(&t, "null");
		else
			control_proto_json_string(&t, tok[7]);
		text_fmt(&t, ",\"suspended\":%s,\"suspended_until\":",
			 suspended != 0 ? "true" : "false");
		json_time(&t, suspended > 0 ? (time_t)suspended : 0);
		text_fmt(&t, ",\"paused\":%s}", paused ? "true" : "false");
		return text_finish(&t, NULL);
	}
	char agebuf[32];
	control_proto_format_age((time_t)age, agebuf, sizeof agebuf);
	const char *status = suspended != 0 && paused ? "suspended+paused"
			     : suspended != 0	      ? "suspended"
			     : paused		      ? "paused"
						      : "active";
	text_str(&t, "");
	text_shown(&t, tok[1]);
	while (t.len < 30 && !t.failed)
		text_add(&t, " ", 1);
	text_fmt(&t, "  %8lld  %5lld  %6s  %-9s  ", messages, rcpts, agebuf,
		 status);
	text_shown(&t, tok[7][0] ? tok[7] : "-");
	return text_finish(&t, NULL);
}
