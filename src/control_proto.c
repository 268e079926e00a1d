/*
 * The control protocol and facteur-sendmail's message handling as pure
 * text functions (see control_proto.h and docs/operations.md), plus the
 * small blocking client that facteurctl and facteur-sendmail share.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "facteur/control.h"
#include "facteur/control_proto.h"
#include "facteur/text.h"
#include "facteur/utf8.h"

/* A reply line the client accepts (a header line can be long). */
#define CLIENT_LINE_MAX (1024 * 1024)
#define CLIENT_TIMEOUT_SECONDS 60

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

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
	return w.n == strlen(s) && strncasecmp(w.p, s, w.n) == 0;
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
		while (i < len && is_wsp(line[i]))
			i++;
		if (i == len)
			break;
		size_t start = i;
		while (i < len && !is_wsp(line[i]))
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

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

char *control_proto_decode_value(char *token)
{
	if (strcmp(token, "-") == 0) {
		token[0] = '\0';
		return token;
	}
	char *out = token;
	for (const char *p = token; *p; p++) {
		if (*p != '+') {
			*out++ = *p;
			continue;
		}
		int hi = hex_value(p[1]);
		int lo = hi < 0 ? -1 : hex_value(p[2]);
		if (lo < 0)
			return NULL;
		*out++ = (char)(hi << 4 | lo);
		p += 2;
	}
	*out = '\0';
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

static const char *body_word(enum smtp_body body)
{
	switch (body) {
	case SMTP_BODY_7BIT:
		return "7bit";
	case SMTP_BODY_8BITMIME:
		return "8bitmime";
	case SMTP_BODY_UNSPECIFIED:
		break;
	}
	return NULL;
}

static const char *ret_word(enum smtp_ret ret)
{
	switch (ret) {
	case SMTP_RET_FULL:
		return "full";
	case SMTP_RET_HDRS:
		return "hdrs";
	case SMTP_RET_UNSPECIFIED:
		break;
	}
	return NULL;
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
	text_keyed(&t, "body", body_word(env->body));
	text_fmt(&t, "smtputf8 %d\n", env->smtputf8 ? 1 : 0);
	text_keyed(&t, "ret", ret_word(env->ret));
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

/* ---- the client ---- */

static int client_connect(const char *spool_dir, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int n = snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s", spool_dir,
			 CONTROL_SOCKET_NAME);

	if (n < 0 || (size_t)n >= sizeof sun.sun_path) {
		snprintf(err, errlen, "%s/%s: path too long for a socket",
			 spool_dir, CONTROL_SOCKET_NAME);
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	struct timeval tv = {CLIENT_TIMEOUT_SECONDS, 0};
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == -1) {
		snprintf(err, errlen, "setsockopt: %s", strerror(errno));
		close(fd);
		return -1;
	}
	while (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		if (errno == EINTR)
			continue;
		int saved = errno;
		if (saved == ENOENT || saved == ECONNREFUSED)
			snprintf(err, errlen,
				 "facteurd is not running (cannot connect to "
				 "%s: %s)",
				 sun.sun_path, strerror(saved));
		else
			snprintf(err, errlen, "cannot connect to %s: %s",
				 sun.sun_path, strerror(saved));
		close(fd);
		return -1;
	}
	return fd;
}

static int send_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads reply lines from the socket with a bounded buffer. */
struct line_reader {
	int fd;
	char *buf;
	size_t len;
	size_t cap;
	size_t start; /* of the next line */
};

/* The next line without its LF, NUL-terminated (valid until the next
 * call); NULL at EOF or on error, with errno (0 at a clean EOF). */
static char *reader_line(struct line_reader *r)
{
	for (;;) {
		char *nl = r->len > r->start ? memchr(r->buf + r->start, '\n',
						      r->len - r->start)
					     : NULL;
		if (nl != NULL) {
			char *line = r->buf + r->start;
			*nl = '\0';
			r->start = (size_t)(nl - r->buf) + 1;
			return line;
		}
		if (r->start > 0) {
			memmove(r->buf, r->buf + r->start, r->len - r->start);
			r->len -= r->start;
			r->start = 0;
		}
		if (r->cap - r->len < 4096) {
			if (r->cap >= CLIENT_LINE_MAX) {
				errno = EMSGSIZE;
				return NULL;
			}
			size_t cap = r->cap ? r->cap * 2 : 8192;
			char *p = realloc(r->buf, cap);
			if (p == NULL)
				return NULL;
			r->buf = p;
			r->cap = cap;
		}
		ssize_t n =
		    recv(r->fd, r->buf + r->len, r->cap - r->len - 1, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				errno = ETIMEDOUT;
			return NULL;
		}
		if (n == 0) {
			errno = 0;
			return NULL;
		}
		r->len += (size_t)n;
	}
}

enum control_call_result control_proto_call(const char *spool_dir,
					    const char *request,
					    control_line_cb cb, void *arg,
					    char *err, size_t errlen)
{
	int fd = client_connect(spool_dir, err, errlen);
	if (fd == -1)
		return CONTROL_CALL_UNREACHABLE;

	enum control_call_result result = CONTROL_CALL_BROKEN;
	struct line_reader r = {.fd = fd};
	char *req = NULL;
	if (asprintf(&req, "%s\n", request) == -1) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (send_all(fd, req, strlen(req)) == -1) {
		snprintf(err, errlen, "cannot send the request: %s",
			 strerror(errno));
		goto out;
	}
	for (;;) {
		char *line = reader_line(&r);
		if (line == NULL) {
			snprintf(err, errlen, "%s",
				 errno == 0 ? "the daemon closed the connection"
					    : strerror(errno));
			break;
		}
		size_t n = strlen(line);
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strcmp(line, "ok") == 0) {
			result = CONTROL_CALL_OK;
			break;
		}
		if (strncmp(line, "error", 5) == 0 &&
		    (line[5] == '\0' || line[5] == ' ')) {
			snprintf(err, errlen, "%s",
				 line[5] ? line + 6 : "failed");
			result = CONTROL_CALL_ERROR;
			break;
		}
		if (cb != NULL && cb(line, arg) != 0) {
			snprintf(err, errlen, "unexpected reply: %.200s", line);
			break;
		}
	}
out:
	free(req);
	free(r.buf);
	close(fd);
	return result;
}

/* ---- facteur-sendmail's message ---- */

enum input_state {
	INPUT_BOL, /* zero: at a line start */
	INPUT_TEXT,
	INPUT_DOT,    /* "." at a line start, held back */
	INPUT_DOT_CR, /* ".\r" at a line start, held back */
};

size_t control_proto_input_feed(struct control_input *in, const char *buf,
				size_t len, char *out, size_t *outlen)
{
	size_t o = 0;
	size_t i = 0;

	if (in->ignore_dots) {
		memcpy(out, buf, len);
		*outlen = len;
		return len;
	}
	while (i < len && !in->done) {
		char c = buf[i++];
		switch (in->state) {
		case INPUT_BOL:
			if (c == '.') {
				in->state = INPUT_DOT;
				break;
			}
			out[o++] = c;
			in->state = c == '\n' ? INPUT_BOL : INPUT_TEXT;
			break;
		case INPUT_TEXT:
			out[o++] = c;
			if (c == '\n')
				in->state = INPUT_BOL;
			break;
		case INPUT_DOT:
			if (c == '\n') {
				in->done = true;
			} else if (c == '\r') {
				in->state = INPUT_DOT_CR;
			} else {
				out[o++] = '.';
				out[o++] = c;
				in->state = INPUT_TEXT;
			}
			break;
		case INPUT_DOT_CR:
			if (c == '\n') {
				in->done = true;
			} else {
				out[o++] = '.';
				out[o++] = '\r';
				out[o++] = c;
				in->state = INPUT_TEXT;
			}
			break;
		}
	}
	*outlen = o;
	return i;
}

size_t control_proto_input_finish(struct control_input *in, char *out)
{
	(void)out;
	/* A last line "." (or ".\r") without its LF is a lone dot too. */
	if (!in->ignore_dots &&
	    (in->state == INPUT_DOT || in->state == INPUT_DOT_CR))
		in->done = true;
	return 0;
}

/* "Name:" with optional spaces before the colon (RFC 5322 §4.5.3). */
static size_t field_name_len(const char *line, size_t n)
{
	size_t i = 0;

	while (i < n && line[i] > 32 && line[i] < 127 && line[i] != ':')
		i++;
	size_t name = i;
	while (i < n && is_wsp(line[i]))
		i++;
	if (name == 0 || i == n || line[i] != ':')
		return 0;
	return name;
}

long control_proto_header_end(const char *text, size_t len, bool at_eof)
{
	size_t pos = 0;

	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		if (nl == NULL && !at_eof)
			return -1;
		size_t end = nl ? (size_t)(nl - text) : len;
		size_t next = nl ? end + 1 : len;
		size_t n = end - pos;
		if (n > 0 && text[pos + n - 1] == '\r')
			n--;
		if (n == 0)
			return (long)next;
		if (is_wsp(text[pos])) {
			if (pos == 0)
				return 0;
		} else if (field_name_len(text + pos, n) == 0) {
			return (long)pos;
		}
		pos = next;
	}
	return at_eof ? (long)len : -1;
}

void control_addresses_clear(struct control_addresses *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static int addresses_add(struct control_addresses *list, const char *s,
			 size_t n)
{
	char **items =
	    reallocarray(list->items, list->count + 1, sizeof *items);
	if (items == NULL)
		return -1;
	list->items = items;
	char *copy = malloc(n + 1);
	if (copy == NULL)
		return -1;
	/* A NUL would cut the address into another one: DEL instead, which
	 * no address admits, so that the address is refused as it is. */
	for (size_t i = 0; i < n; i++)
		copy[i] = s[i] == '\0' ? 0x7f : s[i];
	copy[n] = '\0';
	list->items[list->count++] = copy;
	return 0;
}

/* Whitespace and line breaks of a folded value. */
static bool is_fws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skip a comment starting at value[*i] == '('; nested, with quoted
 * pairs; an unclosed one runs to the end. */
static void skip_comment(const char *value, size_t len, size_t *i)
{
	unsigned depth = 0;

	while (*i < len) {
		char c = value[(*i)++];
		if (c == '\\' && *i < len)
			(*i)++;
		else if (c == '(')
			depth++;
		else if (c == ')' && --depth == 0)
			return;
	}
}

/* Copy a quoted string starting at value[*i] == '"', quotes and quoted
 * pairs kept, into t. */
static void copy_quoted(struct text *t, const char *value, size_t len,
			size_t *i)
{
	text_add(t, &value[(*i)++], 1);
	while (*i < len) {
		char c = value[(*i)++];
		if (c == '\\' && *i < len) {
			text_add(t, &value[*i - 1], 2);
			(*i)++;
			continue;
		}
		if (c == '\r' || c == '\n')
			continue; /* folding inside quotes */
		text_add(t, &c, 1);
		if (c == '"')
			return;
	}
}

/* A domain literal ("[IPv6:::1]") starting at value[*i] == '[': its
 * colons are not a group's. */
static void copy_literal(struct text *t, const char *value, size_t len,
			 size_t *i)
{
	while (*i < len) {
		char c = value[(*i)++];
		if (!is_fws(c))
			text_add(t, &c, 1);
		if (c == ']')
			return;
	}
}

/* The content of an angle address starting at value[*i] == '<'. */
static void copy_angle(struct text *t, const char *value, size_t len, size_t *i)
{
	(*i)++;
	while (*i < len) {
		char c = value[*i];
		if (c == '>') {
			(*i)++;
			return;
		}
		if (c == '"') {
			copy_quoted(t, value, len, i);
		} else if (c == '(') {
			skip_comment(value, len, i);
		} else {
			if (!is_fws(c))
				text_add(t, &c, 1);
			(*i)++;
		}
	}
}

/* The address of one list item: its angle address, else its text; a
 * source route ("@a,@b:") is dropped. */
static int item_finish(struct control_addresses *out, struct text *item,
		       struct text *angle, bool *have_angle)
{
	struct text *t = *have_angle ? angle : item;
	int rc = 0;

	if (t->failed) {
		rc = -1;
	} else if (t->len > 0) {
		const char *s = t->p;
		size_t n = t->len;
		if (*have_angle && s[0] == '@') {
			const char *colon = memchr(s, ':', n);
			if (colon != NULL) {
				n -= (size_t)(colon + 1 - s);
				s = colon + 1;
			}
		}
		if (n > 0)
			rc = addresses_add(out, s, n);
	}
	item->len = 0;
	angle->len = 0;
	item->failed = angle->failed = false;
	*have_angle = false;
	return rc;
}

int control_proto_parse_addresses(const char *value, size_t len,
				  struct control_addresses *out)
{
	struct text item = {0}, angle = {0};
	bool have_angle = false;
	size_t i = 0;
	int rc = 0;

	while (i < len && rc == 0) {
		char c = value[i];
		switch (c) {
		case '(':
			skip_comment(value, len, &i);
			break;
		case '"':
			copy_quoted(&item, value, len, &i);
			break;
		case '[':
			copy_literal(&item, value, len, &i);
			break;
		case '<':
			/* A second angle address in one item keeps the
			 * first: the rest is junk. */
			if (have_angle) {
				struct text junk = {0};
				copy_angle(&junk, value, len, &i);
				free(junk.p);
			} else {
				copy_angle(&angle, value, len, &i);
				have_angle = true;
			}
			break;
		case ',':
		case ';':
			rc = item_finish(out, &item, &angle, &have_angle);
			i++;
			break;
		case ':':
			/* A group's display name: what came before is no
			 * address. */
			item.len = 0;
			have_angle = false;
			angle.len = 0;
			i++;
			break;
		case '\\':
			if (i + 1 < len) {
				text_add(&item, value + i, 2);
				i += 2;
			} else {
				i++;
			}
			break;
		default:
			if (!is_fws(c))
				text_add(&item, &c, 1);
			i++;
			break;
		}
	}
	if (rc == 0)
		rc = item_finish(out, &item, &angle, &have_angle);
	free(item.p);
	free(angle.p);
	return rc;
}

/* A field of the header section: `n` octets from `line`, its
 * continuation lines included. */
struct field {
	const char *p;
	size_t n;
	size_t name_len;
};

static bool field_is(const struct field *f, const char *name)
{
	return f->name_len == strlen(name) &&
	       strncasecmp(f->p, name, f->name_len) == 0;
}

/* Copy a line's octets; a bare CR becomes a space, or the spool's
 * CRLF normalisation would make a new header line of what follows it
 * (a "Bcc:" that we did not remove, say). */
static void text_line(struct text *t, const char *s, size_t n)
{
	size_t start = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\r')
			continue;
		text_add(t, s + start, i - start);
		text_add(t, " ", 1);
		start = i + 1;
	}
	text_add(t, s + start, n - start);
}

/* Copy text with every line ending in CRLF. */
static void text_crlf(struct text *t, const char *s, size_t n)
{
	size_t start = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\n')
			continue;
		size_t end = i;
		if (end > start && s[end - 1] == '\r')
			end--;
		text_line(t, s + start, end - start);
		text_add(t, "\r\n", 2);
		start = i + 1;
	}
	if (start < n) {
		size_t end = n;
		if (s[end - 1] == '\r')
			end--;
		text_line(t, s + start, end - start);
		text_add(t, "\r\n", 2);
	}
}

/* Header values we add must stay on their line. */
static void text_header_value(struct text *t, const char *s)
{
	for (; *s; s++)
		if (*s != '\r' && *s != '\n')
			text_add(t, s, 1);
}

static bool phrase_needs_quotes(const char *s)
{
	static const char atext_specials[] = "!#$%&'*+-/=?^_`{|}~ ";

	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (!(*p >= 0x80 || (*p >= 'a' && *p <= 'z') ||
		      (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr(atext_specials, *p) != NULL))
			return true;
	return false;
}

static void text_from(struct text *t, const struct control_submission *sub)
{
	text_str(t, "From: ");
	if (sub->from_name != NULL && sub->from_name[0] != '\0') {
		if (phrase_needs_quotes(sub->from_name)) {
			text_add(t, "\"", 1);
			for (const char *p = sub->from_name; *p; p++) {
				if (*p == '\r' || *p == '\n')
					continue;
				if (*p == '"' || *p == '\\')
					text_add(t, "\\", 1);
				text_add(t, p, 1);
			}
			text_add(t, "\"", 1);
		} else {
			text_header_value(t, sub->from_name);
		}
		text_str(t, " <");
		text_header_value(t, sub->from);
		text_str(t, ">\r\n");
	} else {
		text_header_value(t, sub->from);
		text_str(t, "\r\n");
	}
}

char *control_proto_rewrite_headers(const char *text, size_t len,
				    const struct control_submission *sub,
				    struct control_addresses *rcpts,
				    size_t *outlen)
{
	struct text t = {0};
	bool has_from = false, has_date = false, has_message_id = false;
	size_t pos = 0;
	int rc = 0;

	while (pos < len && rc == 0) {
		/* One field: its first line and its continuations. */
		struct field f = {.p = text + pos};
		size_t end = pos;
		do {
			const char *nl = memchr(text + end, '\n', len - end);
			end = nl ? (size_t)(nl - text) + 1 : len;
		} while (end < len && is_wsp(text[end]));
		f.n = end - pos;
		pos = end;

		size_t first = f.n;
		const char *nl = memchr(f.p, '\n', f.n);
		if (nl != NULL)
			first = (size_t)(nl - f.p);
		if (first > 0 && f.p[first - 1] == '\r')
			first--;
		if (first == 0 && f.n <= 2)
			break; /* the empty line: ours is added below */
		f.name_len = field_name_len(f.p, first);
		const char *colon = f.name_len ? memchr(f.p, ':', f.n) : NULL;
		bool bcc = f.name_len && field_is(&f, "bcc");
		if (colon != NULL && sub->extract_recipients &&
		    (bcc || field_is(&f, "to") || field_is(&f, "cc")))
			rc = control_proto_parse_addresses(
			    colon + 1, f.n - (size_t)(colon + 1 - f.p), rcpts);
		if (f.name_len) {
			has_from |= field_is(&f, "from");
			has_date |= field_is(&f, "date");
			has_message_id |= field_is(&f, "message-id");
		}
		if (!bcc)
			text_crlf(&t, f.p, f.n);
	}
	if (!has_from && sub->from != NULL)
		text_from(&t, sub);
	if (!has_date && sub->date != NULL) {
		text_str(&t, "Date: ");
		text_header_value(&t, sub->date);
		text_str(&t, "\r\n");
	}
	if (!has_message_id && sub->message_id != NULL) {
		text_str(&t, "Message-ID: ");
		text_header_value(&t, sub->message_id);
		text_str(&t, "\r\n");
	}
	text_str(&t, "\r\n");
	if (rc != 0)
		t.failed = true;
	return text_finish(&t, outlen);
}
