/*
 * The envelope text of a queued message and its state records: pure
 * code, no I/O, fuzzed (tests/fuzz/fuzz_spool_envelope.c). The same text
 * is the body of a log record's envelope (spool_batch.c) and the <id>.env
 * file of the file form (spool_drop.c); docs/spool.md gives the format.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/ascii.h"
#include "facteur/spool.h"
#include "facteur/spool_internal.h"
#include "facteur/spool_strings.h"
#include "facteur/text.h"

#define ENVELOPE_MAGIC "facteur-envelope 1"
/* Most tokens on one line: a state record. */
#define LINE_TOKENS_MAX 8
/* The tokens of a recipient line; a forwarded recipient's sender (SRS)
 * is one more. */
#define RCPT_FIELDS 6

struct token {
	const char *p;
	size_t n;
};

bool spool_id_valid(const char *id, size_t len)
{
	if (len != SPOOL_ID_LEN)
		return false;
	for (size_t i = 0; i < len; i++)
		if (ascii_hex_upper_value(id[i]) < 0)
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

static const char *word_or_dash(const char *word)
{
	return word != NULL ? word : "-";
}

/* The words of the body and ret lines, indexed by their enum, for
 * writing and reading alike; NULL (written "-") when not given. */
static const char *const body_names[] = {
    [SMTP_BODY_UNSPECIFIED] = NULL,
    [SMTP_BODY_7BIT] = "7bit",
    [SMTP_BODY_8BITMIME] = "8bitmime",
};
static const char *const ret_names[] = {
    [SMTP_RET_UNSPECIFIED] = NULL,
    [SMTP_RET_FULL] = "full",
    [SMTP_RET_HDRS] = "hdrs",
};
#define NAMES_COUNT(names) (sizeof(names) / sizeof(names)[0])

const char *spool_body_name(enum smtp_body body)
{
	return (size_t)body < NAMES_COUNT(body_names) ? body_names[body] : NULL;
}

const char *spool_ret_name(enum smtp_ret ret)
{
	return (size_t)ret < NAMES_COUNT(ret_names) ? ret_names[ret] : NULL;
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

	if (!spool_id_valid(id, strnlen(id, SPOOL_ID_LEN + 1))) {
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
		 word_or_dash(spool_body_name(env->body)),
		 env->smtputf8 ? 1 : 0, word_or_dash(spool_ret_name(env->ret)));
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
		text_fmt(&t, " %u %d", r->notify, r->local ? 1 : 0);
		/* Only a forwarded recipient has a sender of its own; the
		 * others keep the six fields that older spools hold. */
		if (r->sender != NULL) {
			text_add(&t, " ", 1);
			text_value(&t, r->sender);
		}
		text_add(&t, "\n", 1);
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

char *spool_flags_record_format(const struct spool_envelope *env, size_t *len)
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

/* What a packed envelope holds in its table; its own strings go with
 * its one allocation. */
static void release_interned(struct spool_envelope *env)
{
	struct spool_strings *t = env->interned;
	spool_strings_put(t, env->client_addr);
	spool_strings_put(t, env->helo);
	spool_strings_put(t, env->protocol);
	spool_strings_put(t, env->auth_user);
	for (size_t i = 0; i < env->rcpt_count; i++)
		spool_strings_put(t, env->rcpts[i].reason);
}

void spool_envelope_clear(struct spool_envelope *env)
{
	if (env == NULL)
		return;
	if (env->interned != NULL) {
		release_interned(env);
		memset(env, 0, sizeof *env);
		return;
	}
	free(env->sender);
	free(env->client_addr);
	free(env->helo);
	free(env->protocol);
	free(env->auth_user);
	free(env->envid);
	free(env->dkim);
	for (size_t i = 0; i < env->rcpt_count; i++) {
		free(env->rcpts[i].address);
		free(env->rcpts[i].original);
		free(env->rcpts[i].orcpt);
		free(env->rcpts[i].sender);
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

static size_t text_size(const char *s)
{
	return s != NULL ? strlen(s) + 1 : 0;
}

/* A copy of s at *at, which moves past it; NULL stays NULL. */
static char *put_text(char **at, const char *s)
{
	if (s == NULL)
		return NULL;
	size_t n = strlen(s) + 1;
	char *copy = memcpy(*at, s, n);
	*at += n;
	return copy;
}

/* An interned copy for a packed envelope's char * field: its text is
 * never written through the field. false when one was wanted and none
 * could be had. */
static bool intern(struct spool_strings *t, char **field, const char *s)
{
	*field = (char *)spool_strings_get(t, s);
	return s == NULL || *field != NULL;
}

struct spool_envelope *spool_envelope_pack(struct spool_envelope *env,
					   struct spool_strings *strings)
{
	if (env->interned != NULL || strings == NULL)
		return env->interned != NULL ? env : NULL;
	size_t n = env->rcpt_count;
	size_t size = sizeof *env + n * sizeof *env->rcpts +
		      text_size(env->sender) + text_size(env->envid);
	for (size_t i = 0; i < n; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		size += text_size(r->address) + text_size(r->original) +
			text_size(r->orcpt) + text_size(r->sender);
	}
	struct spool_envelope *p = malloc(size);
	if (p == NULL)
		return NULL;
	*p = *env;
	p->rcpts = n > 0 ? (struct spool_rcpt *)(void *)(p + 1) : NULL;
	char *at = (char *)(p + 1) + n * sizeof *env->rcpts;
	p->sender = put_text(&at, env->sender);
	p->envid = put_text(&at, env->envid);
	p->dkim = NULL;
	p->interned = strings;
	/* Every field is set, to NULL when it failed, so that
	 * release_interned gives back exactly what was taken: no
	 * short-circuit. */
	bool ok = intern(strings, &p->client_addr, env->client_addr);
	ok = intern(strings, &p->helo, env->helo) && ok;
	ok = intern(strings, &p->protocol, env->protocol) && ok;
	ok = intern(strings, &p->auth_user, env->auth_user) && ok;
	for (size_t i = 0; i < n; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		struct spool_rcpt *c = &p->rcpts[i];
		*c = *r;
		c->address = put_text(&at, r->address);
		c->original = put_text(&at, r->original);
		c->orcpt = put_text(&at, r->orcpt);
		c->sender = put_text(&at, r->sender);
		ok &= intern(strings, &c->reason, r->reason);
	}
	if (!ok) {
		release_interned(p);
		free(p);
		return NULL;
	}
	spool_envelope_free(env);
	return p;
}

int spool_envelope_set_reason(struct spool_envelope *env, size_t index,
			      const char *reason)
{
	struct spool_rcpt *r = &env->rcpts[index];
	char *copy = NULL;
	/* reason may be r->reason itself: copied before it goes */
	bool wanted = reason != NULL && *reason != '\0';
	if (wanted)
		copy = env->interned != NULL
			   ? (char *)spool_strings_get(env->interned, reason)
			   : strdup(reason);
	if (env->interned != NULL)
		spool_strings_put(env->interned, r->reason);
	else
		free(r->reason);
	r->reason = copy;
	return wanted && copy == NULL ? -1 : 0;
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

uint64_t spool_id_value(const char *hex)
{
	uint64_t v = 0;
	for (size_t i = 0; i < SPOOL_ID_LEN; i++)
		v = v << 4 | (uint64_t)ascii_hex_upper_value(hex[i]);
	return v;
}

/*
 * Decode a value token into a new string. "-" gives NULL when the field
 * is optional and "" otherwise. A NUL octet cannot live in a C string,
 * so "+00" is refused.
 */
static enum spool_parse_status decode_value(struct token tok, bool optional,
					    char **out)
{
	*out = NULL;
	if (token_is(tok, "-")) {
		if (optional)
			return SPOOL_PARSE_OK;
		*out = strdup("");
		return *out ? SPOOL_PARSE_OK : SPOOL_PARSE_NOMEM;
	}
	char *s = malloc(tok.n + 1);
	if (s == NULL)
		return SPOOL_PARSE_NOMEM;
	if (text_xtext_decode(tok.p, tok.n, s, tok.n + 1, TEXT_XTEXT_8BIT) <
	    0) {
		free(s);
		return SPOOL_PARSE_BAD;
	}
	*out = s;
	return SPOOL_PARSE_OK;
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

/* The line "<key> <word>" with a word of names[0..count) ("-" for a
 * NULL one): the word's index, or -1. */
static int keyed_word(const char *text, size_t len, size_t *pos,
		      const char *key, const char *const *names, size_t count)
{
	struct token val;
	if (!keyed_line(text, len, pos, key, &val))
		return -1;
	for (size_t i = 0; i < count; i++)
		if (token_is(val, word_or_dash(names[i])))
			return (int)i;
	return -1;
}

static enum spool_parse_status keyed_value(const char *text, size_t len,
					   size_t *pos, const char *key,
					   bool optional, char **out)
{
	struct token val;
	if (!keyed_line(text, len, pos, key, &val))
		return SPOOL_PARSE_BAD;
	return decode_value(val, optional, out);
}

static enum spool_parse_status parse_rcpt(const struct token *toks, int count,
					  struct spool_rcpt *r)
{
	enum spool_parse_status st;

	memset(r, 0, sizeof *r);
	if (!parse_unsigned(toks[4], &r->notify) ||
	    !parse_bit(toks[5], &r->local))
		return SPOOL_PARSE_BAD;
	if ((st = decode_value(toks[1], false, &r->address)) !=
		SPOOL_PARSE_OK ||
	    (st = decode_value(toks[2], false, &r->original)) !=
		SPOOL_PARSE_OK ||
	    (st = decode_value(toks[3], true, &r->orcpt)) != SPOOL_PARSE_OK ||
	    (count > RCPT_FIELDS &&
	     (st = decode_value(toks[6], false, &r->sender)) !=
		 SPOOL_PARSE_OK)) {
		free(r->address);
		free(r->original);
		free(r->orcpt);
		free(r->sender);
		memset(r, 0, sizeof *r);
		return st;
	}
	r->state = RCPT_PENDING;
	return SPOOL_PARSE_OK;
}

static enum spool_parse_status add_rcpt(struct spool_envelope *env, size_t *cap,
					const struct token *toks, int count)
{
	if (env->rcpt_count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 4;
		if (ncap > SIZE_MAX / sizeof *env->rcpts)
			return SPOOL_PARSE_NOMEM;
		struct spool_rcpt *r =
		    realloc(env->rcpts, ncap * sizeof *env->rcpts);
		if (r == NULL)
			return SPOOL_PARSE_NOMEM;
		env->rcpts = r;
		*cap = ncap;
	}
	enum spool_parse_status st =
	    parse_rcpt(toks, count, &env->rcpts[env->rcpt_count]);
	if (st == SPOOL_PARSE_OK)
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
static enum spool_parse_status apply_record(struct spool_envelope *env,
					    struct token line)
{
	struct token toks[LINE_TOKENS_MAX];
	int n = split_line(line, toks, LINE_TOKENS_MAX);

	if (n == 2 && token_is(toks[0], "flags"))
		return parse_unsigned(toks[1], &env->flags) ? SPOOL_PARSE_OK
							    : SPOOL_PARSE_BAD;
	if (n != 8 || !token_is(toks[0], "state"))
		return SPOOL_PARSE_BAD;

	uint64_t index;
	enum rcpt_state state;
	unsigned attempts;
	time_t next_attempt, updated;
	char *dsn, *reason;
	enum spool_parse_status st;

	if (env->rcpt_count == 0 ||
	    !parse_u64(toks[1], env->rcpt_count - 1, &index) ||
	    !parse_state_word(toks[2], &state) ||
	    !parse_unsigned(toks[3], &attempts) ||
	    !parse_time(toks[4], &next_attempt) ||
	    !parse_time(toks[5], &updated))
		return SPOOL_PARSE_BAD;
	if ((st = decode_value(toks[6], true, &dsn)) != SPOOL_PARSE_OK)
		return st;
	if (dsn != NULL && strlen(dsn) >= sizeof env->rcpts[0].dsn) {
		free(dsn);
		return SPOOL_PARSE_BAD;
	}
	if ((st = decode_value(toks[7], true, &reason)) != SPOOL_PARSE_OK) {
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
	if (env->interned != NULL) {
		int rc = spool_envelope_set_reason(env, (size_t)index, reason);
		free(reason);
		return rc == -1 ? SPOOL_PARSE_NOMEM : SPOOL_PARSE_OK;
	}
	free(r->reason);
	r->reason = reason;
	return SPOOL_PARSE_OK;
}

static enum spool_parse_status parse_header(const char *text, size_t len,
					    size_t *pos,
					    struct spool_envelope *env,
					    uint64_t *wire_size, bool *has_wire)
{
	struct token line, val;
	enum spool_parse_status st;
	uint64_t v;

	if (!next_line(text, len, pos, &line) ||
	    !token_is(line, ENVELOPE_MAGIC))
		return SPOOL_PARSE_BAD;
	if (!keyed_line(text, len, pos, "id", &val) ||
	    !spool_id_valid(val.p, val.n))
		return SPOOL_PARSE_BAD;
	memcpy(env->id, val.p, SPOOL_ID_LEN);
	env->id[SPOOL_ID_LEN] = '\0';
	if (!keyed_line(text, len, pos, "arrival", &val) ||
	    !parse_time(val, &env->arrival))
		return SPOOL_PARSE_BAD;
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
		if (st != SPOOL_PARSE_OK)
			return st;
	}
	if (!keyed_line(text, len, pos, "size", &val) ||
	    !parse_u64(val, UINT64_MAX, &env->size))
		return SPOOL_PARSE_BAD;

	/* "wire" is optional: only the spool's own commits write it. */
	size_t at = *pos;
	*has_wire = false;
	if (keyed_line(text, len, pos, "wire", &val)) {
		if (!parse_u64(val, UINT64_MAX, wire_size))
			return SPOOL_PARSE_BAD;
		*has_wire = true;
	} else {
		*pos = at;
	}

	int word;
	if ((word = keyed_word(text, len, pos, "body", body_names,
			       NAMES_COUNT(body_names))) == -1)
		return SPOOL_PARSE_BAD;
	env->body = (enum smtp_body)word;
	if (!keyed_line(text, len, pos, "smtputf8", &val) ||
	    !parse_bit(val, &env->smtputf8))
		return SPOOL_PARSE_BAD;
	if ((word = keyed_word(text, len, pos, "ret", ret_names,
			       NAMES_COUNT(ret_names))) == -1)
		return SPOOL_PARSE_BAD;
	env->ret = (enum smtp_ret)word;
	st = keyed_value(text, len, pos, "envid", true, &env->envid);
	if (st != SPOOL_PARSE_OK)
		return st;
	if (!keyed_line(text, len, pos, "flags", &val) ||
	    !parse_u64(val, UINT_MAX, &v))
		return SPOOL_PARSE_BAD;
	env->flags = (unsigned)v;

	size_t cap = 0;
	for (;;) {
		struct token toks[RCPT_FIELDS + 1];
		if (!next_line(text, len, pos, &line))
			return SPOOL_PARSE_BAD;
		if (token_is(line, "end")) {
			/* No room left over: recovery holds every live
			 * envelope at once before the scheduler packs them. */
			if (cap > env->rcpt_count && env->rcpt_count > 0) {
				struct spool_rcpt *r = realloc(
				    env->rcpts, env->rcpt_count * sizeof *r);
				if (r != NULL)
					env->rcpts = r;
			}
			return SPOOL_PARSE_OK;
		}
		int count = split_line(line, toks, RCPT_FIELDS + 1);
		if (count < RCPT_FIELDS || !token_is(toks[0], "rcpt"))
			return SPOOL_PARSE_BAD;
		if ((st = add_rcpt(env, &cap, toks, count)) != SPOOL_PARSE_OK)
			return st;
	}
}

enum spool_parse_status spool_envelope_parse_wire(const char *text, size_t len,
						  struct spool_envelope *env,
						  size_t *valid_len,
						  uint64_t *wire_size,
						  bool *has_wire)
{
	size_t pos = 0;
	enum spool_parse_status st;

	memset(env, 0, sizeof *env);
	st = parse_header(text, len, &pos, env, wire_size, has_wire);
	if (st != SPOOL_PARSE_OK) {
		spool_envelope_clear(env);
		return st;
	}
	for (;;) {
		size_t start = pos;
		struct token line;
		if (!next_line(text, len, &pos, &line)) {
			*valid_len = start;
			return SPOOL_PARSE_OK;
		}
		st = apply_record(env, line);
		if (st == SPOOL_PARSE_NOMEM) {
			spool_envelope_clear(env);
			return st;
		}
		if (st == SPOOL_PARSE_BAD) {
			*valid_len = start;
			return SPOOL_PARSE_OK;
		}
	}
}

/* Apply the state records of a log R record, up to the first bad one
 * (the checksum makes that a bug, not a crash: stop there all the same). */
enum spool_parse_status spool_records_apply(struct spool_envelope *env,
					    const char *text, size_t len)
{
	size_t pos = 0;
	struct token line;

	while (next_line(text, len, &pos, &line)) {
		enum spool_parse_status st = apply_record(env, line);
		if (st != SPOOL_PARSE_OK)
			return st;
	}
	return SPOOL_PARSE_OK;
}

int spool_envelope_parse(const char *text, size_t len,
			 struct spool_envelope *env, size_t *valid_len)
{
	uint64_t wire_size;
	bool has_wire;
	size_t valid;

	switch (spool_envelope_parse_wire(text, len, env, &valid, &wire_size,
					  &has_wire)) {
	case SPOOL_PARSE_OK:
		if (valid_len != NULL)
			*valid_len = valid;
		return 0;
	case SPOOL_PARSE_NOMEM:
		errno = ENOMEM;
		return -1;
	case SPOOL_PARSE_BAD:
		break;
	}
	errno = EINVAL;
	return -1;
}

/* The envelope text with `wire` and a state record for every recipient
 * that has one: what a commit or a move writes. */
char *spool_envelope_text(const struct spool_envelope *env, const char *id,
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
