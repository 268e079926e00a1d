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
#include "facteur/control_proto.h"
#include "facteur/text.h"
#include "facteur/utf8.h"

/* ---- requests ---- */

static const struct {
	const char *name;
	enum control_command command;
} commands[] = {
    {"queue", CONTROL_QUEUE},	{"show", CONTROL_SHOW},
    {"flush", CONTROL_FLUSH},	{"delete", CONTROL_DELETE},
    {"bounce", CONTROL_BOUNCE}, {"stats", CONTROL_STATS},
    {"reload", CONTROL_RELOAD}, {"pickup", CONTROL_PICKUP},
};

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

int control_proto_parse_request(const char *line, size_t len,
				struct control_request *req, const char **error)
{
	struct word words[3];
	size_t count = 0;
	size_t i = 0;

	memset(req, 0, sizeof *req);
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len >= CONTROL_LINE_MAX) {
		*error = "line too long";
		return -1;
	}
	while (i < len) {
		while (i < len && ascii_is_wsp(line[i]))
			i++;
		if (i == len)
			break;
		size_t start = i;
		while (i < len && !ascii_is_wsp(line[i]))
			i++;
		if (count == sizeof words / sizeof words[0]) {
			*error = "too many arguments";
			return -1;
		}
		words[count].p = line + start;
		words[count].n = i - start;
		count++;
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
	switch (req->command) {
	case CONTROL_QUEUE:
	case CONTROL_STATS:
	case CONTROL_RELOAD:
		if (count != 1) {
			*error = "this command takes no argument";
			return -1;
		}
		return 0;
	case CONTROL_FLUSH:
		if (count == 1)
			return 0;
		break;
	case CONTROL_DELETE:
		if (count == 2 && word_is(words[1], "all")) {
			req->all = true;
			return 0;
		}
		break;
	case CONTROL_SHOW:
	case CONTROL_BOUNCE:
	case CONTROL_PICKUP:
		break;
	}
	if (count != 2) {
		*error = req->command == CONTROL_DELETE ? "usage: delete ID|all"
			 : req->command == CONTROL_FLUSH
			     ? "usage: flush [ID]"
			     : "a queue id is needed";
		return -1;
	}
	if (!parse_id(words[1], req->id)) {
		*error = "no such message";
		return -1;
	}
	req->has_id = true;
	return 0;
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

static bool rcpt_done(const struct spool_rcpt *r)
{
	return r->state == RCPT_DELIVERED || r->state == RCPT_BOUNCED;
}

/* The dsn field may lack its NUL if a caller filled all of it. */
static void copy_dsn(char *out, const struct spool_rcpt *r)
{
	memcpy(out, r->dsn, sizeof r->dsn);
	out[sizeof r->dsn - 1] = '\0';
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
	if (latest != NULL) {
		char dsn[sizeof latest->dsn];
		copy_dsn(dsn, latest);
		text_str(&error, dsn);
		if (dsn[0] != '\0' && latest->reason != NULL)
			text_add(&error, " ", 1);
		if (latest->reason != NULL)
			text_str(&error, latest->reason);
	}
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
