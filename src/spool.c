/*
 * The durable queue (see spool.h and docs/spool.md). Files are written on
 * the loop, into the page cache; every flush goes through the iothread.
 * The requests of one loop turn form a batch that costs one iothread
 * round, and a commit's callback runs only once its message file, its
 * envelope and the queue directory are on disk: that is when the session
 * may say 250.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/iothread.h"
#include "facteur/spool.h"
#include "facteur/spool_log.h"
#include "facteur/text.h"

#define ENVELOPE_MAGIC "facteur-envelope 1"
/* Draws of a fresh id before giving up on O_EXCL collisions. */
#define ID_TRIES 100
/* Most tokens on one line: a state record. */
#define LINE_TOKENS_MAX 8
/* A segment takes new records until it is this large. */
#define SEGMENT_MAX ((uint64_t)64 << 20)
/* Messages up to this size are logged inline; larger ones are written
 * to a file of their own as they arrive (memory stays bounded). */
#define INLINE_MAX ((size_t)64 << 10)
/* The oldest segment's live messages are moved to the newest, so that
 * it and the dead ones behind it can go, once the log is more than twice
 * the size of what is live in it, plus a segment. A queue that is all
 * live is never rewritten; one stuck message cannot pin a disk's worth of
 * dead segments. */
#define COMPACT_SLACK SEGMENT_MAX

/*
 * A log segment: <spool_dir>/log/<seq>.seg. Segments are deleted oldest
 * first, one at a time, each deletion flushed before the next: then a
 * message whose record survives a crash always has every later record
 * of it too (they are in the same or newer segments).
 */
struct segment {
	struct segment *newer;
	uint64_t seq;
	int fd;
	uint64_t size;   /* octets written, or queued to be written */
	size_t live;     /* messages whose current record is here */
	unsigned flushing; /* batches written here and not yet flushed */
	bool broken;     /* a write or flush failed: nothing more here */
	bool unsynced;   /* new: the log directory still needs a flush */
};

/* Where a live logged message is. */
struct slot {
	struct slot *chain;
	char id[SPOOL_ID_LEN + 1];
	struct segment *seg; /* holds its current M or F record */
	uint64_t body_off;   /* M: the wire form's offset in seg */
	uint64_t body_len;   /* the wire form's length */
	uint64_t log_bytes;  /* the size of that record */
	bool file;           /* F: the wire form is queue/<id>.msg */
	bool moving;         /* a newer record of it is being flushed */
	struct spool_envelope *env; /* during recovery only */
};

enum request_kind {
	REQ_FILE_COMMIT, /* <id>.msg + <id>.env (facteur-sendmail) */
	REQ_LOG_COMMIT,  /* an M or F record */
	REQ_RECORD,      /* an R record */
	REQ_MOVE,        /* a live message copied to the newest segment */
	REQ_IMPORT,      /* an F record for <id>.env, removed once flushed */
};

struct spool_request {
	struct spool_request *next;
	struct spool *spool;
	enum request_kind kind;
	char id[SPOOL_ID_LEN + 1];
	int fds[2];
	size_t nfds;
	int error; /* failed before the flush: reported as is */
	spool_commit_cb cb;
	void *arg;
	/* where its log record went (log requests) */
	struct segment *seg;
	uint64_t body_off;
	uint64_t body_len;
	uint64_t log_bytes;
	bool file;
	struct segment *batch_seg; /* the head of a batch: where it wrote */
};

/* An incoming message carries the request its commit will use, so that
 * a commit never needs memory to report its outcome. */
struct incoming {
	struct spool_incoming pub;
	struct spool_request req;
	struct spool *logged; /* the spool, when it may keep the body inline */
	char *inline_body;    /* while small and not yet in a file */
	size_t inline_cap;
};

static struct incoming *incoming_of(struct spool_request *req)
{
	return (struct incoming *)((char *)req -
				   offsetof(struct incoming, req));
}

struct spool {
	struct event_base *base;
	struct iothread *io;
	char *dir;
	int queue_fd;
	bool logged; /* the daemon's spool; false: files only (a drop) */
	int log_fd;  /* <spool_dir>/log */
	struct segment *oldest, *newest, *active;
	uint64_t next_seq;
	/* Records appended during this loop turn, written at the flush. */
	char *pending;
	size_t pending_len, pending_cap;
	struct segment *pending_seg;
	uint64_t last_record; /* the size of the record log_append made */
	uint64_t log_bytes;   /* every segment's size */
	uint64_t live_bytes;  /* the current records of live messages */
	/* live logged messages by id */
	struct slot **slots;
	size_t slot_mask; /* buckets - 1 */
	size_t slot_count;
	bool reaping;     /* a segment deletion is being flushed */
	bool reap_failed; /* then no more: the order must hold */
	struct event *flush_event;
	/* The batch being collected during this loop turn. */
	struct spool_request *batch_head;
	struct spool_request **batch_tail;
	size_t batch_fds;
	/* Batches handed to the iothread, plus spool_close's own hold: the
	 * spool is freed when a closed spool has none left. */
	size_t holds;
	bool closing;
	uint64_t last_id;
	unsigned counter;
	struct spool_recovery recovery;
};

/* Errors of the envelope parser: bad data, or no memory to hold it. */
enum parse_status {
	PARSE_OK,
	PARSE_BAD,
	PARSE_NOMEM,
};

struct token {
	const char *p;
	size_t n;
};


static bool id_valid(const char *id, size_t len)
{
	if (len != SPOOL_ID_LEN)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((id[i] >= '0' && id[i] <= '9') ||
		      (id[i] >= 'A' && id[i] <= 'F')))
			return false;
	return true;
}

const char *rcpt_state_name(enum rcpt_state state)
{
	switch (state) {
	case RCPT_PENDING:
		return "pending";
	case RCPT_DEFERRED:
		return "deferred";
	case RCPT_DELIVERED:
		return "delivered";
	case RCPT_BOUNCED:
		return "bounced";
	}
	return "unknown";
}

/* A state outside the enum is written as pending: retried, not lost. */
static const char *rcpt_state_word(enum rcpt_state state)
{
	switch (state) {
	case RCPT_DEFERRED:
	case RCPT_DELIVERED:
	case RCPT_BOUNCED:
		return rcpt_state_name(state);
	case RCPT_PENDING:
		break;
	}
	return "pending";
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
	return "-";
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
	return "-";
}

static void text_record(struct text *t, const struct spool_envelope *env,
			size_t index)
{
	const struct spool_rcpt *r = &env->rcpts[index];
	char dsn[sizeof r->dsn];

	/* dsn may lack its NUL if a caller filled all of it. */
	memcpy(dsn, r->dsn, sizeof dsn);
	dsn[sizeof dsn - 1] = '\0';
	text_fmt(t, "state %zu %s %u %" PRId64 " %" PRId64 " ", index,
		 rcpt_state_word(r->state), r->attempts,
		 (int64_t)r->next_attempt, (int64_t)r->updated);
	text_value(t, dsn);
	text_add(t, " ", 1);
	text_value(t, r->reason);
	text_add(t, "\n", 1);
}


/*
 * The envelope text for `id`. `wire_size`, when given, is the length of
 * the message file; recovery compares it with the file to tell a message
 * that was flushed from one that was not.
 */
static char *envelope_format(const struct spool_envelope *env, const char *id,
			     const uint64_t *wire_size, size_t *len)
{
	struct text t = {0};

	if (!id_valid(id, strnlen(id, SPOOL_ID_LEN + 1))) {
		errno = EINVAL;
		return NULL;
	}
	text_str(&t, ENVELOPE_MAGIC "\nid ");
	text_str(&t, id);
	text_fmt(&t, "\narrival %" PRId64 "\nsender ", (int64_t)env->arrival);
	text_value(&t, env->sender);
	text_str(&t, "\nclient ");
	text_value(&t, env->client_addr);
	text_str(&t, "\nhelo ");
	text_value(&t, env->helo);
	text_str(&t, "\nprotocol ");
	text_value(&t, env->protocol);
	text_str(&t, "\nauth ");
	text_value(&t, env->auth_user);
	text_fmt(&t, "\nsize %" PRIu64 "\n", env->size);
	if (wire_size != NULL)
		text_fmt(&t, "wire %" PRIu64 "\n", *wire_size);
	text_fmt(&t, "body %s\nsmtputf8 %d\nret %s\nenvid ",
		 body_word(env->body), env->smtputf8 ? 1 : 0,
		 ret_word(env->ret));
	text_value(&t, env->envid);
	text_fmt(&t, "\nflags %u\n", env->flags);
	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		text_str(&t, "rcpt ");
		text_value(&t, r->address);
		text_add(&t, " ", 1);
		text_value(&t, r->original);
		text_add(&t, " ", 1);
		text_value(&t, r->orcpt);
		text_fmt(&t, " %u %d\n", r->notify, r->local ? 1 : 0);
	}
	text_str(&t, "end\n");
	return text_finish(&t, len);
}

char *spool_envelope_format(const struct spool_envelope *env, size_t *len)
{
	return envelope_format(env, env->id, NULL, len);
}

char *spool_record_format(const struct spool_envelope *env, size_t index,
			  size_t *len)
{
	struct text t = {0};

	if (index >= env->rcpt_count) {
		errno = EINVAL;
		return NULL;
	}
	text_record(&t, env, index);
	return text_finish(&t, len);
}

static char *flags_record_format(const struct spool_envelope *env, size_t *len)
{
	struct text t = {0};

	text_fmt(&t, "flags %u\n", env->flags);
	return text_finish(&t, len);
}

/* Whether a recipient differs from what a fresh envelope implies. */
static bool rcpt_has_state(const struct spool_rcpt *r)
{
	return r->state != RCPT_PENDING || r->attempts != 0 ||
	       r->next_attempt != 0 || r->updated != 0 || r->dsn[0] != '\0' ||
	       r->reason != NULL;
}

void spool_envelope_clear(struct spool_envelope *env)
{
	if (env == NULL)
		return;
	free(env->sender);
	free(env->client_addr);
	free(env->helo);
	free(env->protocol);
	free(env->auth_user);
	free(env->envid);
	for (size_t i = 0; i < env->rcpt_count; i++) {
		free(env->rcpts[i].address);
		free(env->rcpts[i].original);
		free(env->rcpts[i].orcpt);
		free(env->rcpts[i].reason);
	}
	free(env->rcpts);
	memset(env, 0, sizeof *env);
}

void spool_envelope_free(struct spool_envelope *env)
{
	spool_envelope_clear(env);
	free(env);
}

bool spool_envelope_done(const struct spool_envelope *env)
{
	if (env->flags & SPOOL_FLAG_DELETED)
		return true;
	for (size_t i = 0; i < env->rcpt_count; i++)
		if (env->rcpts[i].state != RCPT_DELIVERED &&
		    env->rcpts[i].state != RCPT_BOUNCED)
			return false;
	return true;
}

/*
 * Parsing. The file is untrusted: it may be cut anywhere or end in zeros
 * after a crash. Every line must end in '\n', tokens are separated by
 * exactly one space, and every number is range-checked.
 */

/* The next complete line at *pos (without its '\n'); false at the end
 * of the text or when the last line is not terminated. */
static bool next_line(const char *text, size_t len, size_t *pos,
		      struct token *line)
{
	if (*pos >= len)
		return false;
	const char *nl = memchr(text + *pos, '\n', len - *pos);
	if (nl == NULL)
		return false;
	line->p = text + *pos;
	line->n = (size_t)(nl - line->p);
	*pos += line->n + 1;
	return true;
}

/* Split at single spaces; -1 on an empty token or too many of them. */
static int split_line(struct token line, struct token *toks, int max)
{
	int count = 0;
	size_t start = 0;

	for (size_t i = 0; i <= line.n; i++) {
		if (i < line.n && line.p[i] != ' ')
			continue;
		if (i == start || count == max)
			return -1;
		toks[count].p = line.p + start;
		toks[count].n = i - start;
		count++;
		start = i + 1;
	}
	return count;
}

static bool token_is(struct token tok, const char *word)
{
	size_t n = strlen(word);
	return tok.n == n && memcmp(tok.p, word, n) == 0;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * Decode a value token into a new string. "-" gives NULL when the field
 * is optional and "" otherwise. A NUL octet cannot live in a C string,
 * so "+00" is refused.
 */
static enum parse_status decode_value(struct token tok, bool optional,
				      char **out)
{
	*out = NULL;
	if (token_is(tok, "-")) {
		if (optional)
			return PARSE_OK;
		*out = strdup("");
		return *out ? PARSE_OK : PARSE_NOMEM;
	}
	char *s = malloc(tok.n + 1);
	if (s == NULL)
		return PARSE_NOMEM;
	size_t n = 0;
	for (size_t i = 0; i < tok.n; i++) {
		unsigned char c = (unsigned char)tok.p[i];
		if (c == '+') {
			int hi = i + 2 < tok.n ? hex_digit(tok.p[i + 1]) : -1;
			int lo = hi >= 0 ? hex_digit(tok.p[i + 2]) : -1;
			if (lo < 0 || (hi == 0 && lo == 0)) {
				free(s);
				return PARSE_BAD;
			}
			s[n++] = (char)(hi << 4 | lo);
			i += 2;
		} else if (text_octet_needs_escape(c)) {
			free(s);
			return PARSE_BAD;
		} else {
			s[n++] = (char)c;
		}
	}
	s[n] = '\0';
	*out = s;
	return PARSE_OK;
}

static bool parse_u64(struct token tok, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (tok.n == 0 || tok.n > 20)
		return false;
	for (size_t i = 0; i < tok.n; i++) {
		if (tok.p[i] < '0' || tok.p[i] > '9')
			return false;
		unsigned d = (unsigned)(tok.p[i] - '0');
		if (d > max || v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

static bool parse_unsigned(struct token tok, unsigned *out)
{
	uint64_t v;
	if (!parse_u64(tok, UINT_MAX, &v))
		return false;
	*out = (unsigned)v;
	return true;
}

/* A time, possibly negative (written as the caller's time_t was). */
static bool parse_time(struct token tok, time_t *out)
{
	bool negative = tok.n > 0 && tok.p[0] == '-';
	uint64_t v;

	if (negative) {
		tok.p++;
		tok.n--;
	}
	if (!parse_u64(tok, negative ? (uint64_t)INT64_MAX + 1 : INT64_MAX, &v))
		return false;
	int64_t s = negative ? (int64_t)(0 - v) : (int64_t)v;
	if ((int64_t)(time_t)s != s)
		return false;
	*out = (time_t)s;
	return true;
}

static bool parse_bit(struct token tok, bool *out)
{
	if (token_is(tok, "0"))
		*out = false;
	else if (token_is(tok, "1"))
		*out = true;
	else
		return false;
	return true;
}

/* A "key value" line with the expected key; value in *val. */
static bool keyed_line(const char *text, size_t len, size_t *pos,
		       const char *key, struct token *val)
{
	struct token line, toks[2];

	if (!next_line(text, len, pos, &line))
		return false;
	if (split_line(line, toks, 2) != 2 || !token_is(toks[0], key))
		return false;
	*val = toks[1];
	return true;
}

static enum parse_status keyed_value(const char *text, size_t len, size_t *pos,
				     const char *key, bool optional, char **out)
{
	struct token val;
	if (!keyed_line(text, len, pos, key, &val))
		return PARSE_BAD;
	return decode_value(val, optional, out);
}

static enum parse_status parse_rcpt(const struct token *toks,
				    struct spool_rcpt *r)
{
	enum parse_status st;

	memset(r, 0, sizeof *r);
	if (!parse_unsigned(toks[4], &r->notify) ||
	    !parse_bit(toks[5], &r->local))
		return PARSE_BAD;
	if ((st = decode_value(toks[1], false, &r->address)) != PARSE_OK ||
	    (st = decode_value(toks[2], false, &r->original)) != PARSE_OK ||
	    (st = decode_value(toks[3], true, &r->orcpt)) != PARSE_OK) {
		free(r->address);
		free(r->original);
		free(r->orcpt);
		memset(r, 0, sizeof *r);
		return st;
	}
	r->state = RCPT_PENDING;
	return PARSE_OK;
}

static enum parse_status add_rcpt(struct spool_envelope *env, size_t *cap,
				  const struct token *toks)
{
	if (env->rcpt_count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 4;
		if (ncap > SIZE_MAX / sizeof *env->rcpts)
			return PARSE_NOMEM;
		struct spool_rcpt *r =
		    realloc(env->rcpts, ncap * sizeof *env->rcpts);
		if (r == NULL)
			return PARSE_NOMEM;
		env->rcpts = r;
		*cap = ncap;
	}
	enum parse_status st = parse_rcpt(toks, &env->rcpts[env->rcpt_count]);
	if (st == PARSE_OK)
		env->rcpt_count++;
	return st;
}

static bool parse_state_word(struct token tok, enum rcpt_state *out)
{
	static const enum rcpt_state states[] = {RCPT_PENDING, RCPT_DEFERRED,
						 RCPT_DELIVERED, RCPT_BOUNCED};
	for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
		if (token_is(tok, rcpt_state_name(states[i]))) {
			*out = states[i];
			return true;
		}
	}
	return false;
}

/* Apply one record if it is whole and well-formed; nothing changes
 * otherwise. */
static enum parse_status apply_record(struct spool_envelope *env,
				      struct token line)
{
	struct token toks[LINE_TOKENS_MAX];
	int n = split_line(line, toks, LINE_TOKENS_MAX);

	if (n == 2 && token_is(toks[0], "flags"))
		return parse_unsigned(toks[1], &env->flags) ? PARSE_OK
							    : PARSE_BAD;
	if (n != 8 || !token_is(toks[0], "state"))
		return PARSE_BAD;

	uint64_t index;
	enum rcpt_state state;
	unsigned attempts;
	time_t next_attempt, updated;
	char *dsn, *reason;
	enum parse_status st;

	if (env->rcpt_count == 0 ||
	    !parse_u64(toks[1], env->rcpt_count - 1, &index) ||
	    !parse_state_word(toks[2], &state) ||
	    !parse_unsigned(toks[3], &attempts) ||
	    !parse_time(toks[4], &next_attempt) ||
	    !parse_time(toks[5], &updated))
		return PARSE_BAD;
	if ((st = decode_value(toks[6], true, &dsn)) != PARSE_OK)
		return st;
	if (dsn != NULL && strlen(dsn) >= sizeof env->rcpts[0].dsn) {
		free(dsn);
		return PARSE_BAD;
	}
	if ((st = decode_value(toks[7], true, &reason)) != PARSE_OK) {
		free(dsn);
		return st;
	}

	struct spool_rcpt *r = &env->rcpts[index];
	r->state = state;
	r->attempts = attempts;
	r->next_attempt = next_attempt;
	r->updated = updated;
	memset(r->dsn, 0, sizeof r->dsn);
	if (dsn != NULL)
		memcpy(r->dsn, dsn, strlen(dsn));
	free(dsn);
	free(r->reason);
	r->reason = reason;
	return PARSE_OK;
}

static enum parse_status parse_header(const char *text, size_t len, size_t *pos,
				      struct spool_envelope *env,
				      uint64_t *wire_size, bool *has_wire)
{
	struct token line, val;
	enum parse_status st;
	uint64_t v;

	if (!next_line(text, len, pos, &line) ||
	    !token_is(line, ENVELOPE_MAGIC))
		return PARSE_BAD;
	if (!keyed_line(text, len, pos, "id", &val) || !id_valid(val.p, val.n))
		return PARSE_BAD;
	memcpy(env->id, val.p, SPOOL_ID_LEN);
	env->id[SPOOL_ID_LEN] = '\0';
	if (!keyed_line(text, len, pos, "arrival", &val) ||
	    !parse_time(val, &env->arrival))
		return PARSE_BAD;
	const struct {
		const char *key;
		bool optional;
		char **out;
	} strings[] = {
	    {"sender", false, &env->sender},
	    {"client", false, &env->client_addr},
	    {"helo", false, &env->helo},
	    {"protocol", false, &env->protocol},
	    {"auth", true, &env->auth_user},
	};
	for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
		st = keyed_value(text, len, pos, strings[i].key,
				 strings[i].optional, strings[i].out);
		if (st != PARSE_OK)
			return st;
	}
	if (!keyed_line(text, len, pos, "size", &val) ||
	    !parse_u64(val, UINT64_MAX, &env->size))
		return PARSE_BAD;

	/* "wire" is optional: only the spool's own commits write it. */
	size_t at = *pos;
	*has_wire = false;
	if (keyed_line(text, len, pos, "wire", &val)) {
		if (!parse_u64(val, UINT64_MAX, wire_size))
			return PARSE_BAD;
		*has_wire = true;
	} else {
		*pos = at;
	}

	if (!keyed_line(text, len, pos, "body", &val))
		return PARSE_BAD;
	if (token_is(val, "-"))
		env->body = SMTP_BODY_UNSPECIFIED;
	else if (token_is(val, "7bit"))
		env->body = SMTP_BODY_7BIT;
	else if (token_is(val, "8bitmime"))
		env->body = SMTP_BODY_8BITMIME;
	else
		return PARSE_BAD;
	if (!keyed_line(text, len, pos, "smtputf8", &val) ||
	    !parse_bit(val, &env->smtputf8))
		return PARSE_BAD;
	if (!keyed_line(text, len, pos, "ret", &val))
		return PARSE_BAD;
	if (token_is(val, "-"))
		env->ret = SMTP_RET_UNSPECIFIED;
	else if (token_is(val, "full"))
		env->ret = SMTP_RET_FULL;
	else if (token_is(val, "hdrs"))
		env->ret = SMTP_RET_HDRS;
	else
		return PARSE_BAD;
	st = keyed_value(text, len, pos, "envid", true, &env->envid);
	if (st != PARSE_OK)
		return st;
	if (!keyed_line(text, len, pos, "flags", &val) ||
	    !parse_u64(val, UINT_MAX, &v))
		return PARSE_BAD;
	env->flags = (unsigned)v;

	size_t cap = 0;
	for (;;) {
		struct token toks[6];
		if (!next_line(text, len, pos, &line))
			return PARSE_BAD;
		if (token_is(line, "end"))
			return PARSE_OK;
		if (split_line(line, toks, 6) != 6 ||
		    !token_is(toks[0], "rcpt"))
			return PARSE_BAD;
		if ((st = add_rcpt(env, &cap, toks)) != PARSE_OK)
			return st;
	}
}

static enum parse_status envelope_parse(const char *text, size_t len,
					struct spool_envelope *env,
					size_t *valid_len, uint64_t *wire_size,
					bool *has_wire)
{
	size_t pos = 0;
	enum parse_status st;

	memset(env, 0, sizeof *env);
	st = parse_header(text, len, &pos, env, wire_size, has_wire);
	if (st != PARSE_OK) {
		spool_envelope_clear(env);
		return st;
	}
	for (;;) {
		size_t start = pos;
		struct token line;
		if (!next_line(text, len, &pos, &line)) {
			*valid_len = start;
			return PARSE_OK;
		}
		st = apply_record(env, line);
		if (st == PARSE_NOMEM) {
			spool_envelope_clear(env);
			return st;
		}
		if (st == PARSE_BAD) {
			*valid_len = start;
			return PARSE_OK;
		}
	}
}

/* Apply the state records of a log R record, up to the first bad one
 * (the checksum makes that a bug, not a crash: stop there all the same). */
static enum parse_status apply_records(struct spool_envelope *env,
				       const char *text, size_t len)
{
	size_t pos = 0;
	struct token line;

	while (next_line(text, len, &pos, &line)) {
		enum parse_status st = apply_record(env, line);
		if (st != PARSE_OK)
			return st;
	}
	return PARSE_OK;
}

int spool_envelope_parse(const char *text, size_t len,
			 struct spool_envelope *env, size_t *valid_len)
{
	uint64_t wire_size;
	bool has_wire;
	size_t valid;

	switch (envelope_parse(text, len, env, &valid, &wire_size, &has_wire)) {
	case PARSE_OK:
		if (valid_len != NULL)
			*valid_len = valid;
		return 0;
	case PARSE_NOMEM:
		errno = ENOMEM;
		return -1;
	case PARSE_BAD:
		break;
	}
	errno = EINVAL;
	return -1;
}

/*
 * Files and the group commit.
 */

/* Write all of buf, at `off` (pwrite), or at the file offset when off
 * is -1; EIO for a write that makes no progress. */
static int write_out(int fd, const char *buf, size_t len, off_t off)
{
	while (len > 0) {
		ssize_t n = off < 0 ? write(fd, buf, len)
				    : pwrite(fd, buf, len, off);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
		if (off >= 0)
			off += n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	return write_out(fd, buf, len, -1);
}

/* close(2) on a descriptor whose data is already flushed or discarded:
 * its error changes nothing, and Linux must not retry it on EINTR. */
static void close_fd(int fd)
{
	if (fd >= 0 && close(fd) == -1)
		errno = 0;
}

static void file_name(char *buf, const char *id, const char *ext)
{
	/* Callers hold ids checked by id_valid: always 16 + 4 octets. */
	memcpy(buf, id, SPOOL_ID_LEN);
	memcpy(buf + SPOOL_ID_LEN, ext, 5);
}

static void unlink_file(const struct spool *spool, const char *id,
			const char *ext)
{
	char name[SPOOL_ID_LEN + 5];

	file_name(name, id, ext);
	/* A file that is already gone is what we wanted. */
	if (unlinkat(spool->queue_fd, name, 0) == -1)
		errno = 0;
}

static void slot_remove(struct spool *spool, struct slot **p);

static void spool_destroy(struct spool *spool)
{
	if (spool->flush_event != NULL)
		event_free(spool->flush_event);
	close_fd(spool->queue_fd);
	close_fd(spool->log_fd);
	while (spool->oldest != NULL) {
		struct segment *seg = spool->oldest;
		spool->oldest = seg->newer;
		close_fd(seg->fd);
		free(seg);
	}
	if (spool->slots != NULL) {
		for (size_t i = 0; i <= spool->slot_mask; i++)
			while (spool->slots[i] != NULL) {
				spool_envelope_free(spool->slots[i]->env);
				slot_remove(spool, &spool->slots[i]);
			}
		free(spool->slots);
	}
	free(spool->pending);
	free(spool->dir);
	free(spool);
}

static void spool_release(struct spool *spool)
{
	if (--spool->holds == 0 && spool->closing)
		spool_destroy(spool);
}

/*
 * Live logged messages, by id.
 */

static size_t slot_hash(const char *id)
{
	/* ids are time and counter digits: the last ones vary most */
	uint64_t h = 1469598103934665603u;
	for (size_t i = 0; i < SPOOL_ID_LEN; i++)
		h = (h ^ (unsigned char)id[i]) * 1099511628211u;
	return (size_t)h;
}

static struct slot **slot_find(struct spool *spool, const char *id)
{
	if (spool->slots == NULL)
		return NULL;
	struct slot **p = &spool->slots[slot_hash(id) & spool->slot_mask];
	while (*p != NULL && memcmp((*p)->id, id, SPOOL_ID_LEN) != 0)
		p = &(*p)->chain;
	return *p != NULL ? p : NULL;
}

static struct slot *slot_of(struct spool *spool, const char *id)
{
	if (!id_valid(id, strnlen(id, SPOOL_ID_LEN + 1)))
		return NULL;
	struct slot **p = slot_find(spool, id);
	return p != NULL ? *p : NULL;
}

static int slot_grow(struct spool *spool)
{
	size_t n = spool->slots == NULL ? 1024 : (spool->slot_mask + 1) * 2;
	struct slot **table = calloc(n, sizeof *table);
	if (table == NULL)
		return -1;
	if (spool->slots != NULL) {
		for (size_t i = 0; i <= spool->slot_mask; i++) {
			struct slot *sl = spool->slots[i];
			while (sl != NULL) {
				struct slot *next = sl->chain;
				size_t b = slot_hash(sl->id) & (n - 1);
				sl->chain = table[b];
				table[b] = sl;
				sl = next;
			}
		}
		free(spool->slots);
	}
	spool->slots = table;
	spool->slot_mask = n - 1;
	return 0;
}

/* A new slot for id (not present yet), or NULL without memory. */
static struct slot *slot_add(struct spool *spool, const char *id)
{
	if ((spool->slots == NULL || spool->slot_count > spool->slot_mask) &&
	    slot_grow(spool) == -1)
		return NULL;
	struct slot *sl = calloc(1, sizeof *sl);
	if (sl == NULL)
		return NULL;
	memcpy(sl->id, id, SPOOL_ID_LEN);
	size_t b = slot_hash(id) & spool->slot_mask;
	sl->chain = spool->slots[b];
	spool->slots[b] = sl;
	spool->slot_count++;
	return sl;
}

static void slot_remove(struct spool *spool, struct slot **p)
{
	struct slot *sl = *p;
	*p = sl->chain;
	spool->slot_count--;
	free(sl);
}

/*
 * Segments.
 */

static void segment_name(char *buf, size_t len, uint64_t seq)
{
	snprintf(buf, len, "%016" PRIX64 ".seg", seq);
}

static struct segment *segment_create(struct spool *spool)
{
	char name[32];
	struct segment *seg = calloc(1, sizeof *seg);
	if (seg == NULL)
		return NULL;
	seg->seq = spool->next_seq++;
	segment_name(name, sizeof name, seg->seq);
	seg->fd = openat(spool->log_fd, name,
			 O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (seg->fd == -1) {
		int saved = errno;
		free(seg);
		errno = saved;
		return NULL;
	}
	seg->unsynced = true;
	/* The magic line goes out with the first batch. */
	seg->size = 0;
	if (spool->newest != NULL)
		spool->newest->newer = seg;
	else
		spool->oldest = seg;
	spool->newest = seg;
	spool->active = seg;
	return seg;
}

static int pending_reserve(struct spool *spool, size_t n)
{
	if (n > SIZE_MAX - spool->pending_len) {
		errno = ENOMEM;
		return -1;
	}
	return buffer_grow(&spool->pending, &spool->pending_cap,
			   spool->pending_len + n, 64 * 1024, SIZE_MAX);
}

/*
 * Append one record to this turn's log batch; *seg and *body_off say
 * where it will be. The body is either `body` or, when `body_fd` is not
 * -1, `body_len` octets of that descriptor from `body_at`.
 */
static int log_append(struct spool *spool, enum spool_log_kind kind,
		      const char *id, const char *text, size_t text_len,
		      const void *body, size_t body_len, int body_fd,
		      uint64_t body_at, struct segment **seg,
		      uint64_t *body_off)
{
	char header[SPOOL_LOG_HEADER_MAX];

	if (spool->pending_len == 0) {
		/* A batch boundary: the place to start a new segment. */
		struct segment *a = spool->active;
		if ((a == NULL || a->broken || a->size >= SEGMENT_MAX) &&
		    segment_create(spool) == NULL)
			return -1;
		spool->pending_seg = spool->active;
	}
	struct segment *s = spool->pending_seg;
	if (s->broken) {
		errno = EIO;
		return -1;
	}
	size_t magic = s->size == 0 && spool->pending_len == 0
			   ? SPOOL_LOG_MAGIC_LEN
			   : 0;
	size_t need = magic + SPOOL_LOG_HEADER_MAX + text_len + body_len + 1;
	if (pending_reserve(spool, need) == -1)
		return -1;
	char *p = spool->pending + spool->pending_len;
	size_t at = magic;
	memcpy(p, SPOOL_LOG_MAGIC, magic);
	char *body_dst = NULL;
	/* the body goes in first, after room for the header: the header
	 * carries its checksum */
	size_t room = SPOOL_LOG_HEADER_MAX;
	memcpy(p + at + room, text, text_len);
	body_dst = p + at + room + text_len;
	if (body_fd != -1) {
		size_t got = 0;
		while (got < body_len) {
			ssize_t n = pread(body_fd, body_dst + got, body_len - got,
					  (off_t)(body_at + got));
			if (n == -1 && errno == EINTR)
				continue;
			if (n <= 0) {
				if (n == 0)
					errno = EIO;
				return -1;
			}
			got += (size_t)n;
		}
	} else if (body_len > 0) {
		memcpy(body_dst, body, body_len);
	}
	uint32_t crc = spool_crc32c(0, text, text_len);
	crc = spool_crc32c(crc, body_dst, body_len);
	size_t hlen = spool_log_header(header, kind, id, text_len, body_len,
				       crc);
	if (hlen == 0) {
		errno = EINVAL;
		return -1;
	}
	/* close the gap between the header and the text */
	memcpy(p + at, header, hlen);
	memmove(p + at + hlen, p + at + room, text_len + body_len);
	size_t rec_len = hlen + text_len + body_len;
	p[at + rec_len] = '\n';
	uint64_t start = s->size + magic;
	*seg = s;
	*body_off = start + hlen + text_len;
	spool->pending_len += magic + rec_len + 1;
	s->size += magic + rec_len + 1;
	spool->log_bytes += magic + rec_len + 1;
	spool->last_record = rec_len + 1;
	return 0;
}

/* pwrite all of buf at off. */
static int pwrite_full(int fd, const char *buf, size_t len, uint64_t off)
{
	return write_out(fd, buf, len, (off_t)off);
}

static void reap(struct spool *spool);

static void on_reaped(int error, void *arg)
{
	struct spool *spool = arg;
	spool->reaping = false;
	if (error != 0)
		spool->reap_failed = true;
	/* as after a batch: the next deletion, then our hold goes */
	reap(spool);
	spool_release(spool);
}

/* Delete the oldest segment once nothing refers to it any more. */
/* Unlink the oldest segment's file and forget it; the caller flushes the
 * log directory before the next one goes. -1 when the unlink failed. */
static int segment_drop_oldest(struct spool *spool)
{
	struct segment *seg = spool->oldest;
	char name[32];

	segment_name(name, sizeof name, seg->seq);
	if (unlinkat(spool->log_fd, name, 0) == -1 && errno != ENOENT)
		return -1;
	spool->oldest = seg->newer;
	if (spool->newest == seg)
		spool->newest = NULL;
	spool->log_bytes -= seg->size;
	close_fd(seg->fd);
	free(seg);
	return 0;
}

static void reap(struct spool *spool)
{
	struct segment *seg = spool->oldest;

	if (spool->reaping || spool->reap_failed || seg == NULL ||
	    seg == spool->active || seg->live > 0 || seg->flushing > 0 ||
	    seg == spool->pending_seg)
		return;
	if (segment_drop_oldest(spool) == -1) {
		spool->reap_failed = true;
		return;
	}
	spool->reaping = true;
	spool->holds++;
	if (iothread_fsync(spool->io, &spool->log_fd, 1, on_reaped, spool) ==
	    -1)
		on_reaped(ENOMEM, spool);
}

/* One request's outcome in the spool's own books; returns the result
 * to report (a commit that cannot be remembered has failed). */
static int request_settle(struct spool *spool, struct spool_request *req,
			  int result)
{
	struct slot *sl;

	switch (req->kind) {
	case REQ_FILE_COMMIT:
		if (req->error == 0 && result != 0) {
			/* Never acknowledged: leave nothing to recover. */
			unlink_file(spool, req->id, ".env");
			unlink_file(spool, req->id, ".msg");
		}
		break;
	case REQ_LOG_COMMIT:
		if (req->seg == NULL) /* failed before its record was made */
			break;
		if (result != 0 || (sl = slot_add(spool, req->id)) == NULL) {
			/* no memory for the slot: the commit failed */
			req->seg->live--;
			if (req->file)
				unlink_file(spool, req->id, ".msg");
			return result != 0 ? result : ENOMEM;
		}
		sl->seg = req->seg;
		sl->body_off = req->body_off;
		sl->body_len = req->body_len;
		sl->file = req->file;
		sl->log_bytes = req->log_bytes;
		spool->live_bytes += sl->log_bytes;
		break;
	case REQ_MOVE:
	case REQ_IMPORT:
		sl = slot_of(spool, req->id);
		if (sl != NULL)
			sl->moving = false;
		if (req->seg == NULL)
			break;
		if (result != 0 || sl == NULL) {
			req->seg->live--;
			break;
		}
		if (sl->seg != NULL)
			sl->seg->live--;
		sl->seg = req->seg;
		sl->body_off = req->body_off;
		spool->live_bytes += req->log_bytes - sl->log_bytes;
		sl->log_bytes = req->log_bytes;
		if (req->kind == REQ_IMPORT)
			unlink_file(spool, req->id, ".env");
		break;
	case REQ_RECORD:
		break;
	}
	return result;
}

/* The iothread finished a batch (or it could not be handed over). */
static void batch_done(int error, void *arg)
{
	struct spool_request *req = arg;
	struct spool *spool = req->spool;
	struct segment *seg = req->batch_seg;

	if (seg != NULL) {
		seg->flushing--;
		/* An earlier batch's failure may have lost data before ours:
		 * nothing written after it is acknowledged. */
		if (error != 0)
			seg->broken = true;
		else if (seg->broken)
			error = EIO;
		else
			seg->unsynced = false;
	}
	while (req != NULL) {
		struct spool_request *next = req->next;
		int result = req->error != 0 ? req->error : error;
		spool_commit_cb cb = req->cb;
		void *cb_arg = req->arg;

		for (size_t i = 0; i < req->nfds; i++)
			close_fd(req->fds[i]);
		result = request_settle(spool, req, result);
		if (req->kind == REQ_FILE_COMMIT || req->kind == REQ_LOG_COMMIT)
			free(incoming_of(req));
		else
			free(req);
		if (cb != NULL)
			cb(result, cb_arg);
		req = next;
	}
	reap(spool);
	spool_release(spool);
}

/* Hand the collected batch to the iothread: its log records written in
 * one go, then one flush of the segment, every file of the batch and the
 * directories concerned. */
static void spool_flush(struct spool *spool)
{
	struct spool_request *batch = spool->batch_head;
	struct segment *seg = spool->pending_seg;
	size_t nfds = spool->batch_fds + 3;
	int write_error = 0;

	if (batch == NULL)
		return;
	spool->batch_head = NULL;
	spool->batch_tail = &spool->batch_head;
	spool->batch_fds = 0;
	spool->holds++;
	if (seg != NULL) {
		uint64_t start = seg->size - spool->pending_len;
		if (seg->broken) {
			write_error = EIO;
		} else if (pwrite_full(seg->fd, spool->pending,
				       spool->pending_len, start) == -1) {
			write_error = errno != 0 ? errno : EIO;
			/* Cut what was written, or no record after it would
			 * ever be read; if that fails, no more here. */
			if (ftruncate(seg->fd, (off_t)start) == -1)
				seg->broken = true;
		}
		if (write_error != 0) {
			/* counted as written by log_append */
			spool->log_bytes -= spool->pending_len;
			seg->size = start;
			seg->broken = true;
		}
		seg->flushing++;
		batch->batch_seg = seg;
		spool->pending_len = 0;
		spool->pending_seg = NULL;
	}
	if (write_error != 0) {
		for (struct spool_request *r = batch; r != NULL; r = r->next)
			if (r->error == 0 && r->seg != NULL)
				r->error = write_error;
		batch_done(0, batch);
		return;
	}

	int *fds = malloc(nfds * sizeof *fds);
	if (fds == NULL) {
		batch_done(ENOMEM, batch);
		return;
	}
	size_t n = 0;
	bool files = false;
	for (struct spool_request *r = batch; r != NULL; r = r->next)
		for (size_t i = 0; i < r->nfds; i++) {
			fds[n++] = r->fds[i];
			files = true;
		}
	if (seg != NULL) {
		fds[n++] = seg->fd;
		if (seg->unsynced)
			fds[n++] = spool->log_fd;
	}
	if (files || !spool->logged)
		fds[n++] = spool->queue_fd;
	int rc = iothread_fsync(spool->io, fds, n, batch_done, batch);
	free(fds);
	if (rc == -1)
		batch_done(ENOMEM, batch);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	spool_flush(arg);
}

static void batch_add(struct spool *spool, struct spool_request *req)
{
	bool first = spool->batch_head == NULL;

	req->next = NULL;
	*spool->batch_tail = req;
	spool->batch_tail = &req->next;
	spool->batch_fds += req->nfds;
	if (spool->closing)
		spool_flush(spool); /* no loop turn to wait for any more */
	else if (first)
		event_active(spool->flush_event, EV_TIMEOUT, 1);
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	if (fsync(fd) == -1) {
		int saved = errno;
		close_fd(fd);
		errno = saved;
		return -1;
	}
	close_fd(fd);
	return 0;
}

/* Flush the directory holding `path` (which has no trailing '/'). */
static int fsync_parent(char *path)
{
	char *slash = strrchr(path, '/');

	if (slash == NULL)
		return fsync_dir(".");
	if (slash == path)
		return fsync_dir("/");
	*slash = '\0';
	int rc = fsync_dir(path);
	int err = errno;
	*slash = '/';
	errno = err;
	return rc;
}

/* mkdir -p with mode 0700. Each directory made is flushed into its
 * parent, so that a new queue/ survives a crash. */
static int make_dirs(char *path)
{
	size_t len = strlen(path);

	for (size_t i = 1; i <= len; i++) {
		if ((i < len && path[i] != '/') || path[i - 1] == '/')
			continue; /* inside a name, or "a//b", or a final '/' */
		char saved = path[i];
		path[i] = '\0';
		int rc = mkdir(path, 0700);
		if (rc == 0) {
			rc = fsync_parent(path);
		} else if (errno == EEXIST) {
			rc = 0;
		}
		int err = errno;
		path[i] = saved;
		if (rc == -1) {
			errno = err;
			return -1;
		}
	}
	return 0;
}

static struct spool *open_spool(struct event_base *base, struct iothread *io,
				const char *dir, bool logged, char *err,
				size_t errlen)
{
	struct spool *spool = calloc(1, sizeof *spool);
	char *queue = NULL, *log = NULL;

	if (spool == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		return NULL;
	}
	spool->base = base;
	spool->io = io;
	spool->queue_fd = -1;
	spool->log_fd = -1;
	spool->logged = logged;
	spool->batch_tail = &spool->batch_head;
	spool->dir = strdup(dir);
	if (spool->dir == NULL || asprintf(&queue, "%s/queue", dir) == -1 ||
	    asprintf(&log, "%s/log", dir) == -1) {
		snprintf(err, errlen, "spool: out of memory");
		goto fail;
	}
	if (make_dirs(queue) == -1) {
		snprintf(err, errlen, "spool: cannot create %s: %s", queue,
			 strerror(errno));
		goto fail;
	}
	if (logged && make_dirs(log) == -1) {
		snprintf(err, errlen, "spool: cannot create %s: %s", log,
			 strerror(errno));
		goto fail;
	}
	spool->queue_fd = open(queue, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (spool->queue_fd == -1) {
		snprintf(err, errlen, "spool: cannot open %s: %s", queue,
			 strerror(errno));
		goto fail;
	}
	if (logged) {
		spool->log_fd = open(log, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (spool->log_fd == -1) {
			snprintf(err, errlen, "spool: cannot open %s: %s", log,
				 strerror(errno));
			goto fail;
		}
	}
	spool->flush_event = event_new(base, -1, 0, on_flush, spool);
	if (spool->flush_event == NULL) {
		snprintf(err, errlen, "spool: cannot create an event");
		goto fail;
	}
	free(queue);
	free(log);
	return spool;
fail:
	free(queue);
	free(log);
	spool_destroy(spool);
	return NULL;
}

struct spool *spool_open(struct event_base *base, struct iothread *io,
			 const char *dir, char *err, size_t errlen)
{
	return open_spool(base, io, dir, true, err, errlen);
}

struct spool *spool_open_drop(struct event_base *base, struct iothread *io,
			      const char *dir, char *err, size_t errlen)
{
	return open_spool(base, io, dir, false, err, errlen);
}

void spool_close(struct spool *spool)
{
	if (spool == NULL || spool->closing)
		return;
	spool->closing = true;
	event_free(spool->flush_event);
	spool->flush_event = NULL;
	/* A batch still collecting goes to the iothread now; the spool
	 * lives on until every batch handed over has completed. */
	spool->holds++;
	spool_flush(spool);
	spool_release(spool);
}

const char *spool_dir(const struct spool *spool)
{
	return spool->dir;
}

char *spool_msg_path(const struct spool *spool, const char *id, char *buf,
		     size_t len)
{
	int n = snprintf(buf, len, "%s/queue/%s.msg", spool->dir, id);
	/* A cut path would name another file: give none instead. */
	if ((n < 0 || (size_t)n >= len) && len > 0)
		buf[0] = '\0';
	return buf;
}

int spool_body_open(struct spool *spool, const struct spool_envelope *env,
		    struct spool_body *body)
{
	struct slot *sl = spool->logged ? slot_of(spool, env->id) : NULL;
	char path[PATH_MAX];
	struct stat st;

	if (sl != NULL && !sl->file) {
		body->fd = fcntl(sl->seg->fd, F_DUPFD_CLOEXEC, 0);
		if (body->fd == -1)
			return -1;
		body->offset = sl->body_off;
		body->length = sl->body_len;
		return 0;
	}
	spool_msg_path(spool, env->id, path, sizeof path);
	if (path[0] == '\0') {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		int err = errno ? errno : EINVAL;
		close_fd(fd);
		errno = err;
		return -1;
	}
	body->fd = fd;
	body->offset = 0;
	body->length = sl != NULL ? sl->body_len : (uint64_t)st.st_size;
	return 0;
}

/*
 * 64 bits: seconds (32), microseconds (20), and a per-process counter
 * (12). Each id is forced above the last one, so ids are unique within
 * the process even if the clock steps back, and sort in arrival order.
 */
void spool_new_id(struct spool *spool, char *buf)
{
	struct timespec ts;
	uint64_t id = 0;

	if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
		id = ((uint64_t)ts.tv_sec & 0xffffffffu) << 32 |
		     ((uint64_t)ts.tv_nsec / 1000 & 0xfffffu) << 12 |
		     (spool->counter++ & 0x7ffu) |
		     /* the daemon's ids and facteur-sendmail's never meet */
		     (spool->logged ? 0x800u : 0);
	if (id <= spool->last_id)
		id = spool->last_id + 1;
	/* the +1 may have carried into the tag bit: the next id above
	 * with the right one */
	uint64_t tag = spool->logged ? 0x800u : 0;
	if ((id & 0x800u) != tag)
		id = tag ? id | 0x800u : (id | 0xfffu) + 1;
	spool->last_id = id;
	snprintf(buf, SPOOL_ID_LEN + 1, "%016" PRIX64, id);
}

/* Create <id>.msg for inc (O_EXCL); the descriptor, or -1. */
static int create_msg_file(struct spool *spool, const char *id)
{
	char name[SPOOL_ID_LEN + 5];

	file_name(name, id, ".msg");
	return openat(spool->queue_fd, name,
		      O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
}

struct spool_incoming *spool_incoming_new(struct spool *spool)
{
	struct incoming *in = calloc(1, sizeof *in);

	if (in == NULL)
		return NULL;
	in->pub.fd = -1;
	if (spool->logged) {
		/* Kept in memory until it outgrows INLINE_MAX; ids are
		 * unique within the process and above every logged one. */
		spool_new_id(spool, in->pub.id);
		in->logged = spool;
		return &in->pub;
	}
	for (int tries = 0; tries < ID_TRIES; tries++) {
		spool_new_id(spool, in->pub.id);
		in->pub.fd = create_msg_file(spool, in->pub.id);
		if (in->pub.fd >= 0)
			return &in->pub;
		if (errno != EEXIST)
			break;
	}
	int saved = errno;
	free(in);
	errno = saved;
	return NULL;
}

/* Move an inline body into <id>.msg. */
static int spill(struct spool_incoming *inc, struct spool *spool)
{
	struct incoming *in = (struct incoming *)inc;

	inc->fd = create_msg_file(spool, inc->id);
	if (inc->fd == -1)
		return -1;
	if (write_full(inc->fd, in->inline_body, inc->written) == -1)
		return -1;
	free(in->inline_body);
	in->inline_body = NULL;
	in->inline_cap = 0;
	return 0;
}

void spool_incoming_write(struct spool_incoming *inc, const void *buf,
			  size_t len)
{
	struct incoming *in = (struct incoming *)inc;

	if (inc->error != 0)
		return;
	if (inc->fd == -1 && in->logged != NULL) {
		if (inc->written + len <= INLINE_MAX) {
			if (buffer_grow(&in->inline_body, &in->inline_cap,
					(size_t)inc->written + len, 8192,
					INLINE_MAX) == -1) {
				inc->error = ENOMEM;
				return;
			}
			memcpy(in->inline_body + inc->written, buf, len);
			inc->written += len;
			return;
		}
		if (spill(inc, in->logged) == -1) {
			inc->error = errno != 0 ? errno : EIO;
			return;
		}
	}
	if (write_full(inc->fd, buf, len) == -1) {
		inc->error = errno != 0 ? errno : EIO;
		return;
	}
	inc->written += len;
}

void spool_incoming_abort(struct spool *spool, struct spool_incoming *inc)
{
	struct incoming *in = (struct incoming *)inc;

	if (inc->fd != -1) {
		close_fd(inc->fd);
		unlink_file(spool, inc->id, ".msg");
	}
	free(in->inline_body);
	free(in);
}

/* The envelope text with `wire` and a state record for every recipient
 * that has one: what a commit or a move writes. */
static char *envelope_text(const struct spool_envelope *env, const char *id,
			   uint64_t wire, size_t *len)
{
	struct text t = {0};
	char *head = envelope_format(env, id, &wire, len);

	if (head == NULL)
		return NULL;
	t.p = head;
	t.len = *len;
	t.cap = *len + 1;
	/* A recipient already settled (a bounce queued for a done one,
	 * say) keeps its state: recorded in the same write. */
	for (size_t i = 0; i < env->rcpt_count; i++)
		if (rcpt_has_state(&env->rcpts[i]))
			text_record(&t, env, i);
	return text_finish(&t, len);
}

/* The message file must hold what we wrote to it, or recovery would
 * take a short file for a flushed one. */
static int check_msg_file(const struct spool_incoming *inc)
{
	struct stat st;

	if (fstat(inc->fd, &st) == -1)
		return -1;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != inc->written) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/* Write <id>.env; its descriptor, or -1 with errno. */
static int write_envelope(struct spool *spool, struct spool_incoming *inc,
			  const struct spool_envelope *env)
{
	char name[SPOOL_ID_LEN + 5];
	size_t len;

	if (check_msg_file(inc) == -1)
		return -1;
	char *body = envelope_text(env, inc->id, inc->written, &len);
	if (body == NULL)
		return -1;
	file_name(name, inc->id, ".env");
	int fd = openat(spool->queue_fd, name,
			O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		free(body);
		return -1;
	}
	if (write_full(fd, body, len) == -1) {
		int saved = errno;
		free(body);
		close_fd(fd);
		unlink_file(spool, inc->id, ".env");
		errno = saved;
		return -1;
	}
	free(body);
	return fd;
}

/* The commit of a drop spool: <id>.env beside <id>.msg. */
static void commit_files(struct spool *spool, struct spool_incoming *inc,
			 const struct spool_envelope *env,
			 struct spool_request *req)
{
	int env_fd = -1;

	req->kind = REQ_FILE_COMMIT;
	if (inc->error != 0)
		req->error = inc->error;
	else if ((env_fd = write_envelope(spool, inc, env)) == -1)
		req->error = errno != 0 ? errno : EIO;

	if (req->error != 0) {
		close_fd(inc->fd);
		unlink_file(spool, inc->id, ".msg");
	} else {
		req->fds[0] = inc->fd;
		req->fds[1] = env_fd;
		req->nfds = 2;
	}
}

/* The commit of the daemon's spool: one log record, with the body
 * inline or in <id>.msg. */
static void commit_log(struct spool *spool, struct incoming *in,
		       const struct spool_envelope *env,
		       struct spool_request *req)
{
	struct spool_incoming *inc = &in->pub;
	struct segment *seg;
	uint64_t body_off = 0;
	size_t len = 0;
	char *text = NULL;

	req->kind = REQ_LOG_COMMIT;
	req->file = inc->fd != -1;
	if (inc->error != 0) {
		req->error = inc->error;
	} else if ((req->file && check_msg_file(inc) == -1) ||
		   (text = envelope_text(env, inc->id, inc->written, &len)) ==
		       NULL ||
		   log_append(spool,
			      req->file ? SPOOL_LOG_FILE_MESSAGE
					: SPOOL_LOG_MESSAGE,
			      inc->id, text, len, in->inline_body,
			      req->file ? 0 : (size_t)inc->written, -1, 0, &seg,
			      &body_off) == -1) {
		req->error = errno != 0 ? errno : EIO;
	} else {
		req->seg = seg;
		req->body_off = req->file ? 0 : body_off;
		req->body_len = inc->written;
		req->log_bytes = spool->last_record;
		seg->live++;
	}
	free(text);
	free(in->inline_body);
	in->inline_body = NULL;
	if (req->file && req->error == 0) {
		req->fds[0] = inc->fd; /* flushed with the batch */
		req->nfds = 1;
	} else if (req->file) {
		close_fd(inc->fd);
		unlink_file(spool, inc->id, ".msg");
	}
}

void spool_incoming_commit(struct spool *spool, struct spool_incoming *inc,
			   const struct spool_envelope *env, spool_commit_cb cb,
			   void *arg)
{
	struct incoming *in = (struct incoming *)inc;
	struct spool_request *req = &in->req;

	memset(req, 0, sizeof *req);
	req->spool = spool;
	memcpy(req->id, inc->id, sizeof req->id);
	req->cb = cb;
	req->arg = arg;
	if (spool->logged)
		commit_log(spool, in, env, req);
	else
		commit_files(spool, inc, env, req);
	batch_add(spool, req);
}

static struct spool_request *request_new(struct spool *spool,
					 enum request_kind kind,
					 const char *id, spool_commit_cb cb,
					 void *arg)
{
	struct spool_request *req = calloc(1, sizeof *req);

	/* Without 100 octets the promised callback cannot be kept; the
	 * queue on disk is consistent, so a restart loses nothing. */
	if (req == NULL)
		abort();
	req->spool = spool;
	req->kind = kind;
	snprintf(req->id, sizeof req->id, "%s", id);
	req->cb = cb;
	req->arg = arg;
	return req;
}

/* Log state records of a live message and queue their flush. */
static void record_append(struct spool *spool, const char *id, char *record,
			  size_t len, spool_commit_cb cb, void *arg)
{
	struct spool_request *req = request_new(spool, REQ_RECORD, id, cb, arg);
	uint64_t off;

	if (record == NULL)
		req->error = errno != 0 ? errno : ENOMEM;
	else if (!spool->logged || slot_of(spool, id) == NULL)
		req->error = ENOENT; /* removed: it stays removed */
	else if (log_append(spool, SPOOL_LOG_RECORDS, id, record, len, NULL, 0,
			    -1, 0, &req->seg, &off) == -1)
		req->error = errno != 0 ? errno : EIO;
	free(record);
	batch_add(spool, req);
}

void spool_record_rcpt(struct spool *spool, const struct spool_envelope *env,
		       size_t index, spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *record = spool_record_format(env, index, &len);
	record_append(spool, env->id, record, len, cb, arg);
}

void spool_record_flags(struct spool *spool, const struct spool_envelope *env,
			spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *record = flags_record_format(env, &len);
	record_append(spool, env->id, record, len, cb, arg);
}

void spool_remove(struct spool *spool, const char *id)
{
	if (!id_valid(id, strnlen(id, SPOOL_ID_LEN + 1)))
		return;
	struct slot **p = spool->logged ? slot_find(spool, id) : NULL;
	if (p != NULL) {
		/* Its last records are flushed (the caller waited for
		 * them): the log says it is done, whatever comes. */
		struct slot *sl = *p;
		if (sl->seg != NULL)
			sl->seg->live--;
		spool->live_bytes -= sl->log_bytes;
		if (sl->file)
			unlink_file(spool, id, ".msg");
		slot_remove(spool, p);
		reap(spool);
		return;
	}
	/* Envelope first: a message file alone is never recovered. */
	unlink_file(spool, id, ".env");
	unlink_file(spool, id, ".msg");
}

void spool_delete(struct spool *spool, const char *id)
{
	static const char tombstone[] = "flags 2\n";
	char *record = strdup(tombstone);

	_Static_assert(SPOOL_FLAG_DELETED == 2, "the tombstone's flags");
	if (spool->logged && slot_of(spool, id) != NULL)
		record_append(spool, id, record, sizeof tombstone - 1, NULL,
			      NULL);
	else
		free(record);
	spool_remove(spool, id);
}


bool spool_wants_compaction(const struct spool *spool)
{
	const struct segment *seg = spool->oldest;
	return spool->logged && seg != NULL && seg != spool->active &&
	       seg->live > 0 &&
	       spool->log_bytes > 2 * spool->live_bytes + COMPACT_SLACK;
}

/* A new current record for a live message, with its state now. */
static int log_current(struct spool *spool, const struct spool_envelope *env,
		       struct slot *sl, enum request_kind kind,
		       spool_commit_cb cb, void *arg)
{
	size_t len = 0;
	char *text = envelope_text(env, sl->id, sl->body_len, &len);
	if (text == NULL)
		return -1;
	struct spool_request *req = request_new(spool, kind, sl->id, cb, arg);
	uint64_t off;
	int rc = log_append(spool,
			    sl->file ? SPOOL_LOG_FILE_MESSAGE
				     : SPOOL_LOG_MESSAGE,
			    sl->id, text, len, NULL,
			    sl->file ? 0 : (size_t)sl->body_len,
			    sl->file ? -1 : sl->seg->fd, sl->body_off,
			    &req->seg, &off);
	free(text);
	if (rc == -1) {
		req->seg = NULL;
		req->error = errno != 0 ? errno : EIO;
	} else {
		req->seg->live++;
		req->body_off = sl->file ? 0 : off;
		req->log_bytes = spool->last_record;
		sl->moving = true;
	}
	batch_add(spool, req);
	return rc;
}

int spool_compact(struct spool *spool, const struct spool_envelope *env)
{
	struct slot *sl = spool->logged ? slot_of(spool, env->id) : NULL;

	if (sl == NULL || sl->moving || sl->seg != spool->oldest ||
	    !spool_wants_compaction(spool))
		return 0;
	return log_current(spool, env, sl, REQ_MOVE, NULL, NULL) == 0 ? 1
								      : -1;
}

/*
 * Recovery, before the loop runs: blocking I/O is fine here.
 */

enum entry_kind {
	ENTRY_ENV,
	ENTRY_MSG,
};

struct entry {
	char id[SPOOL_ID_LEN + 1];
	enum entry_kind kind;
};

static int compare_entries(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->id, y->id);
	return c != 0 ? c : (int)x->kind - (int)y->kind;
}

static int read_file(int fd, char **out, size_t *outlen)
{
	struct stat st;

	if (fstat(fd, &st) == -1)
		return -1;
	if (st.st_size < 0 || (uint64_t)st.st_size >= SIZE_MAX) {
		errno = EFBIG;
		return -1;
	}
	size_t size = (size_t)st.st_size;
	char *buf = malloc(size + 1);
	if (buf == NULL)
		return -1;
	size_t got = 0;
	while (got < size) {
		ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			int saved = errno;
			free(buf);
			errno = saved;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	*out = buf;
	*outlen = got;
	return 0;
}

/*
 * Take a message of the file form (facteur-sendmail's, or an older
 * spool's) into the log: an F record with its state, its <id>.msg kept as
 * the body, its <id>.env removed once the record is flushed. Until then
 * a crash leaves both, and recovery prefers the log.
 */
static int import(struct spool *spool, const struct spool_envelope *env,
		  uint64_t wire)
{
	struct slot *sl = slot_add(spool, env->id);
	if (sl == NULL)
		return -1;
	sl->file = true;
	sl->body_len = wire;
	/* A flush that fails later leaves <id>.env, and the next start
	 * imports it again. */
	if (log_current(spool, env, sl, REQ_IMPORT, NULL, NULL) == -1) {
		slot_remove(spool, slot_find(spool, env->id));
		return -1;
	}
	return 0;
}

/* One message with both files: remove it, or hand it to `found`. */
static void recover_message(struct spool *spool, const char *id,
			    spool_found_cb found, void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	char name[SPOOL_ID_LEN + 5];
	struct spool_envelope *env = NULL;
	char *text = NULL;
	size_t len, valid_len;
	uint64_t wire_size = 0;
	bool has_wire = false;
	struct stat st;

	if (spool->logged && slot_of(spool, id) != NULL) {
		/* imported before: the log has it, with newer records */
		unlink_file(spool, id, ".env");
		return;
	}
	file_name(name, id, ".env");
	int fd = openat(spool->queue_fd, name, O_RDWR | O_CLOEXEC);
	if (fd == -1 || read_file(fd, &text, &len) == -1)
		goto unreadable;
	env = calloc(1, sizeof *env);
	if (env == NULL)
		goto unreadable;
	switch (
	    envelope_parse(text, len, env, &valid_len, &wire_size, &has_wire)) {
	case PARSE_OK:
		break;
	case PARSE_NOMEM:
		goto unreadable;
	case PARSE_BAD:
		/* Cut or garbage: its commit never completed. */
		rec->uncommitted++;
		goto remove;
	}

	file_name(name, id, ".msg");
	if (fstatat(spool->queue_fd, name, &st, AT_SYMLINK_NOFOLLOW) == -1) {
		if (errno != ENOENT)
			goto unreadable;
		rec->orphaned++;
		goto remove;
	}
	if (has_wire && (uint64_t)st.st_size != wire_size) {
		/* The envelope reached the disk, the message did not: the
		 * flush never finished, so nobody was told 250. */
		rec->uncommitted++;
		goto remove;
	}
	/* The file name is what the records will be appended to. */
	memcpy(env->id, id, sizeof env->id);
	if (spool_envelope_done(env)) {
		rec->done++;
		goto remove;
	}
	if (spool->logged) {
		close_fd(fd);
		free(text);
		if (import(spool, env, (uint64_t)st.st_size) == -1) {
			/* left as it is: the next start tries again */
			rec->unreadable++;
			spool_envelope_free(env);
			return;
		}
		rec->live++;
		if (found != NULL)
			found(env, arg);
		else
			spool_envelope_free(env);
		return;
	}
	if (valid_len < len) {
		if (ftruncate(fd, (off_t)valid_len) == 0 && fsync(fd) == 0)
			rec->truncated++;
		else
			rec->truncate_failed++;
	}
	close_fd(fd);
	free(text);
	rec->live++;
	if (found != NULL)
		found(env, arg);
	else
		spool_envelope_free(env);
	return;

remove:
	unlink_file(spool, id, ".env");
	unlink_file(spool, id, ".msg");
	close_fd(fd);
	free(text);
	spool_envelope_free(env);
	return;

unreadable:
	/* Never delete what could not be read: next start tries again. */
	rec->unreadable++;
	close_fd(fd);
	free(text);
	spool_envelope_free(env);
}

struct spool_envelope *spool_load(struct spool *spool, const char *id)
{
	char name[SPOOL_ID_LEN + 5];
	struct spool_envelope *env = NULL;
	char *text = NULL;
	size_t len, valid_len;
	uint64_t wire_size = 0;
	bool has_wire = false;
	struct stat st;

	if (!id_valid(id, strlen(id))) {
		errno = ENOENT;
		return NULL;
	}
	file_name(name, id, ".env");
	int fd = openat(spool->queue_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return NULL;
	int rc = read_file(fd, &text, &len);
	close_fd(fd);
	if (rc == -1)
		return NULL;
	env = calloc(1, sizeof *env);
	if (env == NULL ||
	    envelope_parse(text, len, env, &valid_len, &wire_size, &has_wire) !=
	            PARSE_OK) {
		free(text);
		spool_envelope_free(env);
		errno = EINVAL;
		return NULL;
	}
	free(text);
	file_name(name, id, ".msg");
	if (fstatat(spool->queue_fd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
	    (has_wire && (uint64_t)st.st_size != wire_size)) {
		spool_envelope_free(env);
		errno = ENOENT;
		return NULL;
	}
	memcpy(env->id, id, sizeof env->id);
	if (spool->logged) {
		if (slot_of(spool, id) != NULL) {
			spool_envelope_free(env);
			errno = EEXIST;
			return NULL;
		}
		if (import(spool, env, (uint64_t)st.st_size) == -1) {
			spool_envelope_free(env);
			errno = ENOMEM;
			return NULL;
		}
	}
	return env;
}

static int push(void **array, size_t *count, size_t *cap, size_t size,
		const void *item);

/* Read one segment and apply its records to the slots. */
static int recover_segment(struct spool *spool, struct segment *seg)
{
	struct spool_recovery *rec = &spool->recovery;
	char *buf = NULL;
	size_t len = 0, pos = SPOOL_LOG_MAGIC_LEN;
	struct spool_log_record r;

	if (read_file(seg->fd, &buf, &len) == -1)
		return -1;
	if (len < SPOOL_LOG_MAGIC_LEN ||
	    memcmp(buf, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN) != 0)
		pos = 0; /* made, and the crash came before its first write */
	while (pos > 0 && spool_log_next(buf, len, pos, &r) == 1) {
		uint64_t rec_bytes = r.end - pos;
		const char *text = buf + r.text_off;
		struct slot **p = slot_find(spool, r.id);
		struct slot *sl = p != NULL ? *p : NULL;

		if (r.kind == SPOOL_LOG_RECORDS) {
			if (sl != NULL && sl->env != NULL &&
			    apply_records(sl->env, text, r.text_len) ==
				PARSE_NOMEM)
				goto nomem;
			pos = r.end;
			continue;
		}
		struct spool_envelope *env = calloc(1, sizeof *env);
		uint64_t wire = 0;
		bool has_wire = false;
		size_t valid;
		if (env == NULL)
			goto nomem;
		enum parse_status st = envelope_parse(text, r.text_len, env,
						      &valid, &wire, &has_wire);
		if (st == PARSE_NOMEM) {
			free(env);
			goto nomem;
		}
		if (st != PARSE_OK || !has_wire ||
		    (r.kind == SPOOL_LOG_MESSAGE && wire != r.body_len)) {
			spool_envelope_free(env);
			break; /* checksummed, yet not ours: stop here */
		}
		memcpy(env->id, r.id, sizeof env->id);
		if (sl == NULL && (sl = slot_add(spool, r.id)) == NULL) {
			spool_envelope_free(env);
			goto nomem;
		}
		if (sl->seg != NULL)
			sl->seg->live--;
		spool->live_bytes += rec_bytes - sl->log_bytes;
		sl->log_bytes = rec_bytes;
		spool_envelope_free(sl->env);
		sl->env = env;
		sl->seg = seg;
		sl->seg->live++;
		sl->file = r.kind == SPOOL_LOG_FILE_MESSAGE;
		sl->body_off = sl->file ? 0 : r.body_off;
		sl->body_len = wire;
		pos = r.end;
	}
	seg->size = pos;
	spool->log_bytes += pos;
	if (pos < len) {
		/* a torn last batch: never acknowledged; cut it so that
		 * nothing ever follows it */
		if (ftruncate(seg->fd, (off_t)pos) == 0 && fsync(seg->fd) == 0)
			rec->truncated++;
		else
			rec->truncate_failed++;
	}
	free(buf);
	return 0;
nomem:
	free(buf);
	errno = ENOMEM;
	return -1;
}

static int compare_seq(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* A directory stream on dirfd's directory (dirfd itself stays open). */
static DIR *open_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return NULL;
	DIR *d = fdopendir(fd);
	if (d == NULL)
		close_fd(fd);
	return d;
}

/* The next entry: 1 and *de, 0 at the end, -1 on a read error. */
static int next_entry(DIR *d, struct dirent **de)
{
	errno = 0;
	*de = readdir(d);
	if (*de != NULL)
		return 1;
	return errno != 0 ? -1 : 0;
}

/* Open every segment of log/, oldest first, and replay it. */
static int recover_log(struct spool *spool)
{
	uint64_t *seqs = NULL;
	size_t n = 0, cap = 0;
	int rc = -1, more;
	struct dirent *de;
	DIR *d = open_dir(spool->log_fd);
	if (d == NULL)
		return -1;
	while ((more = next_entry(d, &de)) == 1) {
		uint64_t seq = 0;
		size_t len = strlen(de->d_name);
		if (len != 20 || strcmp(de->d_name + 16, ".seg") != 0 ||
		    !id_valid(de->d_name, 16))
			continue; /* not ours: left alone */
		for (size_t i = 0; i < 16; i++)
			seq = seq << 4 | (uint64_t)hex_digit(de->d_name[i]);
		if (push((void **)&seqs, &n, &cap, sizeof seq, &seq) == -1)
			goto out;
	}
	if (more == -1)
		goto out;
	if (n > 0)
		qsort(seqs, n, sizeof *seqs, compare_seq);
	for (size_t i = 0; i < n; i++) {
		char name[32];
		struct segment *seg = calloc(1, sizeof *seg);
		if (seg == NULL)
			goto out;
		seg->seq = seqs[i];
		segment_name(name, sizeof name, seg->seq);
		seg->fd = openat(spool->log_fd, name, O_RDWR | O_CLOEXEC);
		if (seg->fd == -1) {
			free(seg);
			goto out;
		}
		if (spool->newest != NULL)
			spool->newest->newer = seg;
		else
			spool->oldest = seg;
		spool->newest = seg;
		spool->next_seq = seg->seq + 1;
		if (recover_segment(spool, seg) == -1)
			goto out;
	}
	rc = 0;
out:
	if (closedir(d) == -1)
		errno = 0;
	free(seqs);
	return rc;
}

static int compare_slots(const void *a, const void *b)
{
	const struct slot *x = *(struct slot *const *)a;
	const struct slot *y = *(struct slot *const *)b;
	return memcmp(x->id, y->id, SPOOL_ID_LEN);
}

/* After the log and the queue directory are read: drop what is done,
 * hand the rest over in arrival order. */
static int recover_hand_over(struct spool *spool, spool_found_cb found,
			     void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	struct slot **live = NULL;
	size_t n = 0, cap = 0;

	for (size_t b = 0; spool->slots != NULL && b <= spool->slot_mask;
	     b++) {
		struct slot **p = &spool->slots[b];
		while (*p != NULL) {
			struct slot *sl = *p;
			struct stat st;
			char name[SPOOL_ID_LEN + 5];
			if (sl->env == NULL) { /* imported from files */
				p = &sl->chain;
				continue;
			}
			bool done = spool_envelope_done(sl->env);
			bool missing = false;
			if (!done && sl->file) {
				file_name(name, sl->id, ".msg");
				missing = fstatat(spool->queue_fd, name, &st,
						  AT_SYMLINK_NOFOLLOW) == -1 ||
					  (uint64_t)st.st_size != sl->body_len;
			}
			if (done || missing) {
				if (done)
					rec->done++;
				else
					rec->orphaned++;
				if (sl->file)
					unlink_file(spool, sl->id, ".msg");
				sl->seg->live--;
				spool->live_bytes -= sl->log_bytes;
				spool_envelope_free(sl->env);
				slot_remove(spool, p);
				continue;
			}
			if (push((void **)&live, &n, &cap, sizeof sl, &sl) == -1) {
				free(live);
				return -1;
			}
			p = &sl->chain;
		}
	}
	if (n > 0)
		qsort(live, n, sizeof *live, compare_slots);
	for (size_t i = 0; i < n; i++) {
		struct spool_envelope *env = live[i]->env;
		live[i]->env = NULL;
		rec->live++;
		if (found != NULL)
			found(env, arg);
		else
			spool_envelope_free(env);
	}
	free(live);
	/* Dead segments at the old end go now, in order. */
	while (spool->oldest != NULL && spool->oldest->live == 0 &&
	       spool->oldest != spool->active)
		if (segment_drop_oldest(spool) == -1 ||
		    fsync(spool->log_fd) == -1)
			break;
	return 0;
}

/* Ids handed out from now on sort after every one in the spool. */
static void raise_last_id(struct spool *spool, const char *id)
{
	uint64_t v = 0;
	for (size_t i = 0; i < SPOOL_ID_LEN; i++)
		v = v << 4 | (uint64_t)hex_digit(id[i]);
	if (v > spool->last_id)
		spool->last_id = v;
}

/* Classify a directory entry: an id-named .env or .msg file, something
 * to skip (a directory), or a leftover to remove. */
static int entry_kind_of(const struct spool *spool, const struct dirent *de,
			 struct entry *entry)
{
	size_t n = strlen(de->d_name);
	unsigned char type = de->d_type;

	if (type == DT_UNKNOWN) {
		struct stat st;
		if (fstatat(spool->queue_fd, de->d_name, &st,
			    AT_SYMLINK_NOFOLLOW) == -1)
			return -1;
		type = S_ISDIR(st.st_mode)   ? DT_DIR
		       : S_ISREG(st.st_mode) ? DT_REG
					     : DT_UNKNOWN;
	}
	if (type == DT_DIR)
		return -1;
	if (type == DT_REG && n == SPOOL_ID_LEN + 4 &&
	    id_valid(de->d_name, SPOOL_ID_LEN)) {
		const char *ext = de->d_name + SPOOL_ID_LEN;
		if (strcmp(ext, ".env") == 0 || strcmp(ext, ".msg") == 0) {
			memcpy(entry->id, de->d_name, SPOOL_ID_LEN);
			entry->id[SPOOL_ID_LEN] = '\0';
			entry->kind =
			    strcmp(ext, ".env") == 0 ? ENTRY_ENV : ENTRY_MSG;
			return 0;
		}
	}
	return 1;
}

static int push(void **array, size_t *count, size_t *cap, size_t size,
		const void *item)
{
	if (*count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		if (ncap > SIZE_MAX / size)
			return -1;
		void *p = realloc(*array, ncap * size);
		if (p == NULL)
			return -1;
		*array = p;
		*cap = ncap;
	}
	memcpy((char *)*array + *count * size, item, size);
	(*count)++;
	return 0;
}

long spool_recover(struct spool *spool, spool_found_cb found, void *arg)
{
	struct spool_recovery *rec = &spool->recovery;
	struct entry *entries = NULL;
	char **others = NULL;
	size_t nentries = 0, entries_cap = 0, nothers = 0, others_cap = 0;
	long result = -1;

	memset(rec, 0, sizeof *rec);
	if (spool->logged && recover_log(spool) == -1)
		return -1;
	/* Read the whole directory before changing it. */
	struct dirent *de;
	int more;
	DIR *d = open_dir(spool->queue_fd);
	if (d == NULL)
		return -1;
	while ((more = next_entry(d, &de)) == 1) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		struct entry entry;
		int kind = entry_kind_of(spool, de, &entry);
		if (kind == 0) {
			if (push((void **)&entries, &nentries, &entries_cap,
				 sizeof entry, &entry) == -1)
				goto out;
		} else if (kind == 1) {
			char *name = strdup(de->d_name);
			if (name == NULL ||
			    push((void **)&others, &nothers, &others_cap,
				 sizeof name, &name) == -1) {
				free(name);
				goto out;
			}
		}
	}
	if (more == -1)
		goto out;

	for (size_t i = 0; i < nothers; i++) {
		if (unlinkat(spool->queue_fd, others[i], 0) == 0)
			rec->other++;
	}
	/* In id order, that is in arrival order. */
	if (nentries > 0)
		qsort(entries, nentries, sizeof *entries, compare_entries);
	for (size_t i = 0; i < nentries;) {
		const char *id = entries[i].id;
		bool has_env = false, has_msg = false;
		size_t j = i;
		for (; j < nentries && strcmp(entries[j].id, id) == 0; j++) {
			if (entries[j].kind == ENTRY_ENV)
				has_env = true;
			else
				has_msg = true;
		}
		raise_last_id(spool, id);
		if (has_env && has_msg) {
			recover_message(spool, id, found, arg);
		} else if (has_msg && spool->logged &&
			   slot_of(spool, id) != NULL &&
			   slot_of(spool, id)->file) {
			/* the body of a logged message */
		} else if (has_msg) {
			/* Received but never committed. */
			unlink_file(spool, id, ".msg");
			rec->uncommitted++;
		} else {
			unlink_file(spool, id, ".env");
			rec->orphaned++;
		}
		i = j;
	}
	if (spool->logged) {
		for (size_t b = 0;
		     spool->slots != NULL && b <= spool->slot_mask; b++)
			for (struct slot *sl = spool->slots[b]; sl != NULL;
			     sl = sl->chain)
				raise_last_id(spool, sl->id);
		if (recover_hand_over(spool, found, arg) == -1)
			goto out;
	}
	result = (long)rec->live;
out:
	if (closedir(d) == -1)
		errno = 0;
	for (size_t i = 0; i < nothers; i++)
		free(others[i]);
	free(others);
	free(entries);
	return result;
}

const struct spool_recovery *spool_last_recovery(const struct spool *spool)
{
	return &spool->recovery;
}
