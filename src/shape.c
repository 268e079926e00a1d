/*
 * The shaping table: `shape` values parsed into per-domain delivery
 * limits, the most-specific-match look-up (the route pattern rules), the
 * evenly spaced token bucket behind rate=, and the test that tells a
 * throttling reply. Pure code but for shape_source_check.
 */
#include "facteur/shape.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/hostname.h"

/* Longest piece of a user's text quoted back in an error message. */
#define SHAPE_QUOTE_MAX 100
/* A count above this is a typing error, not a policy. */
#define SHAPE_COUNT_MAX 1000000u

struct shape_table {
	struct shape *shapes;
	size_t count;
	size_t cap;
};

static const struct shape shape_defaults = {
    .max_rcpt = SHAPE_DEFAULT_MAX_RCPT,
    .max_msgs = SHAPE_DEFAULT_MAX_MSGS,
    .pause = SHAPE_DEFAULT_PAUSE,
};

struct shape_table *shape_table_new(void)
{
	return calloc(1, sizeof(struct shape_table));
}

static void shape_clear(struct shape *s)
{
	free(s->pattern);
	free(s->helo);
	free(s->text);
	memset(s, 0, sizeof(*s));
}

void shape_table_free(struct shape_table *table)
{
	if (table == NULL)
		return;
	for (size_t i = 0; i < table->count; i++)
		shape_clear(&table->shapes[i]);
	free(table->shapes);
	free(table);
}

size_t shape_table_count(const struct shape_table *table)
{
	return table == NULL ? 0 : table->count;
}

const struct shape *shape_table_get(const struct shape_table *table, size_t i)
{
	if (table == NULL || i >= table->count)
		return NULL;
	return &table->shapes[i];
}

/* Set err to `what "text"`, the text cut to a readable length. */
static int fail(char *err, size_t errlen, const char *what, const char *s,
		size_t len)
{
	if (err != NULL && errlen > 0) {
		int n = len > SHAPE_QUOTE_MAX ? SHAPE_QUOTE_MAX : (int)len;
		snprintf(err, errlen, "%s \"%.*s\"%s", what, n, s,
			 len > SHAPE_QUOTE_MAX ? "..." : "");
	}
	return -1;
}

/* A decimal count, 1..SHAPE_COUNT_MAX, digits only. */
static int parse_count(const char *s, size_t len, unsigned *out)
{
	unsigned long v = 0;

	if (len == 0 || len > 7)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > SHAPE_COUNT_MAX)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* "N/s", "N/m" or "N/h". */
static int parse_rate(const char *s, size_t len, struct shape *sh)
{
	if (len < 3 || s[len - 2] != '/')
		return -1;
	switch (s[len - 1]) {
	case 's':
		sh->rate_period = 1;
		break;
	case 'm':
		sh->rate_period = 60;
		break;
	case 'h':
		sh->rate_period = 3600;
		break;
	default:
		return -1;
	}
	return parse_count(s, len - 2, &sh->rate_count);
}

static int parse_source(const char *s, size_t len, struct shape *sh)
{
	char buf[INET6_ADDRSTRLEN + 1];
	struct sockaddr_in *sin = (struct sockaddr_in *)&sh->source;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&sh->source;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	memset(&sh->source, 0, sizeof(sh->source));
	if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sh->source_len = sizeof(*sin);
	} else if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sh->source_len = sizeof(*sin6);
	} else {
		return -1;
	}
	sh->has_source = true;
	return 0;
}

static int parse_duration_n(const char *s, size_t len, unsigned *out)
{
	char buf[32];

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return config_parse_duration(buf, out);
}

/* One NAME=VALUE option after the pattern. */
static int parse_option(const char *tok, size_t len, struct shape *sh,
			unsigned *seen, char *err, size_t errlen)
{
	static const char *const names[] = {
	    "max_connections", "max_rcpt", "max_msgs", "rate",
	    "source",	       "helo",	   "pause",
	};
	const char *eq = memchr(tok, '=', len);
	size_t nlen = eq != NULL ? (size_t)(eq - tok) : len;
	size_t opt = sizeof(names) / sizeof(names[0]);

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == nlen &&
		    memcmp(names[i], tok, nlen) == 0)
			opt = i;
	if (opt == sizeof(names) / sizeof(names[0]))
		return fail(err, errlen, "unknown option", tok, len);
	if (eq == NULL)
		return fail(err, errlen, "option without a value", tok, len);
	if (*seen & (1u << opt))
		return fail(err, errlen, "option given twice", tok, len);
	*seen |= 1u << opt;

	const char *v = eq + 1;
	size_t vlen = len - nlen - 1;
	int rc = 0;
	switch (opt) {
	case 0:
		rc = parse_count(v, vlen, &sh->max_connections);
		break;
	case 1:
		rc = parse_count(v, vlen, &sh->max_rcpt);
		break;
	case 2:
		rc = parse_count(v, vlen, &sh->max_msgs);
		break;
	case 3:
		rc = parse_rate(v, vlen, sh);
		break;
	case 4:
		rc = parse_source(v, vlen, sh);
		break;
	case 5:
		if (!hostname_valid(v, vlen))
			rc = -1;
		else if ((sh->helo = strndup(v, vlen)) == NULL)
			return fail(err, errlen, "out of memory in", tok, len);
		break;
	default:
		rc = parse_duration_n(v, vlen, &sh->pause);
		if (rc == 0 && sh->pause == 0)
			rc = -1;
		break;
	}
	if (rc < 0)
		return fail(err, errlen, "invalid value in", tok, len);
	return 0;
}

struct shape_parse {
	struct shape *sh;
	unsigned seen;
	char *err;
	size_t errlen;
};

static int shape_token(const char *tok, size_t len, size_t index, void *arg)
{
	struct shape_parse *sp = arg;

	if (tok == NULL)
		return fail(sp->err, sp->errlen, "out of memory in", "", 0);
	if (index == 0)
		return route_pattern_parse(tok, len, &sp->sh->kind,
					   &sp->sh->pattern, sp->err,
					   sp->errlen);
	return parse_option(tok, len, sp->sh, &sp->seen, sp->err, sp->errlen);
}

static struct route_pattern_table pattern_table(const struct shape_table *t)
{
	struct route_pattern_table pt = {
	    t->shapes, t->count, sizeof(struct shape),
	    offsetof(struct shape, kind), offsetof(struct shape, pattern)};
	return pt;
}

int shape_table_add(struct shape_table *table, const char *value, char *err,
		    size_t errlen)
{
	struct shape sh = shape_defaults;
	struct shape_parse sp = {&sh, 0, err, errlen};
	struct route_pattern_table pt = pattern_table(table);
	int ntok;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	ntok = route_split_tokens(value, &sh.text, shape_token, &sp);
	if (ntok == 0 && err != NULL && errlen > 0)
		snprintf(err, errlen, "empty shape");
	else if (ntok == 1)
		fail(err, errlen, "no option after pattern", sh.text,
		     strlen(sh.text));
	if (ntok < 2 ||
	    route_pattern_unique(&pt, sh.kind, sh.pattern, err, errlen) < 0) {
		shape_clear(&sh);
		return -1;
	}
	if (table->count == table->cap) {
		size_t cap = table->cap == 0 ? 8 : table->cap * 2;
		struct shape *grown =
		    reallocarray(table->shapes, cap, sizeof(*grown));

		if (grown == NULL) {
			shape_clear(&sh);
			return fail(err, errlen, "out of memory in", value, 0);
		}
		table->shapes = grown;
		table->cap = cap;
	}
	table->shapes[table->count++] = sh;
	return 0;
}

const struct shape *shape_lookup(const struct shape_table *table,
				 const char *domain)
{
	if (table == NULL)
		return &shape_defaults;
	struct route_pattern_table pt = pattern_table(table);
	size_t i = route_pattern_best(&pt, domain);
	return i < table->count ? &table->shapes[i] : &shape_defaults;
}

bool shape_groups(const struct shape *shape)
{
	return shape->pattern != NULL &&
	       (shape->max_connections > 0 || shape->rate_period > 0);
}

void shape_format(const struct shape *s, char *buf, size_t len)
{
	char source[INET6_ADDRSTRLEN] = "";
	const void *addr =
	    s->source.ss_family == AF_INET6
		? (const void *)&((const struct sockaddr_in6 *)&s->source)
		      ->sin6_addr
		: (const void *)&((const struct sockaddr_in *)&s->source)
		      ->sin_addr;
	size_t n;

	if (s->has_source && inet_ntop(s->source.ss_family, addr, source,
				       sizeof(source)) == NULL)
		source[0] = '\0';
	n = (size_t)snprintf(buf, len, "%s%s",
			     s->kind == ROUTE_SUFFIX ? "*." : "",
			     s->pattern != NULL ? s->pattern : "*");
	if (n < len && s->max_connections > 0)
		n += (size_t)snprintf(buf + n, len - n, " max_connections=%u",
				      s->max_connections);
	if (n < len)
		n += (size_t)snprintf(buf + n, len - n,
				      " max_rcpt=%u max_msgs=%u", s->max_rcpt,
				      s->max_msgs);
	if (n < len && s->rate_period > 0)
		n += (size_t)snprintf(buf + n, len - n, " rate=%u/%c",
				      s->rate_count,
				      s->rate_period == 1    ? 's'
				      : s->rate_period == 60 ? 'm'
							     : 'h');
	if (n < len && source[0] != '\0')
		n += (size_t)snprintf(buf + n, len - n, " source=%s", source);
	if (n < len && s->helo != NULL)
		n += (size_t)snprintf(buf + n, len - n, " helo=%s", s->helo);
	if (n < len)
		(void)snprintf(buf + n, len - n, " pause=%us", s->pause);
}

int shape_source_check(const struct shape *shape, char *err, size_t errlen)
{
	if (!shape->has_source)
		return 0;
	int fd = socket(shape->source.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "source: cannot open a socket: %s",
			 strerror(errno));
		return -1;
	}
	int rc = bind(fd, (const struct sockaddr *)&shape->source,
		      shape->source_len);
	int saved = errno;
	(void)close(fd); /* never connected */
	if (rc < 0) {
		snprintf(err, errlen, "source is not a local address (%s)",
			 strerror(saved));
		return -1;
	}
	return 0;
}

uint64_t shape_rate_interval_us(unsigned count, unsigned period)
{
	if (count == 0 || period == 0)
		return 0;
	uint64_t interval = (uint64_t)period * 1000000u / count;
	/* 2% slower than said: the receiver counts with its own clock,
	 * after delays that differ from one transaction to the next (a new
	 * connection's handshake, a busy network), and must never see more
	 * than the rate */
	interval += interval / 50;
	return interval == 0 ? 1 : interval;
}

uint64_t shape_bucket_take(struct shape_bucket *bucket, unsigned count,
			   unsigned period, uint64_t now_us)
{
	uint64_t interval = shape_rate_interval_us(count, period);
	if (interval == 0)
		return 0;
	if (bucket->next_us > now_us)
		return bucket->next_us - now_us;
	/* A timer that fired a little late keeps the schedule; after an
	 * idle spell the schedule starts again from now (no saved burst). */
	if (bucket->next_us == 0 || now_us - bucket->next_us >= interval)
		bucket->next_us = now_us;
	bucket->next_us += interval;
	return 0;
}

int shape_parse_redis_address(const char *text, char *host, size_t hostlen,
			      uint16_t *port, unsigned *db, char *err,
			      size_t errlen)
{
	const char *colon = strrchr(text, ':');
	const char *h = text;
	size_t hlen;
	unsigned char addr[16];
	char buf[64];

	if (colon == NULL) {
		snprintf(err, errlen, "expected HOST:PORT[/DB]");
		return -1;
	}
	hlen = (size_t)(colon - text);
	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof buf || hlen >= hostlen) {
		snprintf(err, errlen, "invalid host");
		return -1;
	}
	memcpy(buf, h, hlen);
	buf[hlen] = '\0';
	if (strcmp(buf, "localhost") == 0)
		snprintf(buf, sizeof buf, "127.0.0.1");
	else if (inet_pton(AF_INET, buf, addr) != 1 &&
		 inet_pton(AF_INET6, buf, addr) != 1) {
		snprintf(err, errlen,
			 "host must be an IP address or localhost");
		return -1;
	}
	char *end;
	unsigned long p = strtoul(colon + 1, &end, 10);
	unsigned long d = 0;
	if (end == colon + 1 || p == 0 || p > 65535 ||
	    (*end != '\0' && *end != '/')) {
		snprintf(err, errlen, "invalid port");
		return -1;
	}
	if (*end == '/') {
		const char *dbtext = end + 1;
		d = strtoul(dbtext, &end, 10);
		if (end == dbtext || *end != '\0' || d > 65535) {
			snprintf(err, errlen, "invalid database number");
			return -1;
		}
	}
	snprintf(host, hostlen, "%s", buf);
	*port = (uint16_t)p;
	*db = (unsigned)d;
	return 0;
}

bool shape_reply_throttles(const char *reason)
{
	if (reason == NULL || reason[0] != '4' || !ascii_is_digit(reason[1]) ||
	    !ascii_is_digit(reason[2]) ||
	    (reason[3] != ' ' && reason[3] != '\0'))
		return false;
	if (reason[1] == '2' && reason[2] == '1')
		return true;
	return reason[3] == ' ' && strncmp(reason + 4, "4.7.", 4) == 0;
}
