/*
 * The routing tables: `route` and `sender_route` values parsed into next
 * hops (one target, or a failover list of them), and the most-specific-
 * match look-up (an address for senders, then exact, then longest "*."
 * suffix, then "*"); and local_transport, the LMTP server that takes
 * local recipients, whose [HOST]:PORT is a route target's. Pure code (no
 * name resolution, no sockets), except the reading of the auth= files,
 * done once per load of the settings.
 */
#include "facteur/route.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "facteur/ascii.h"
#include "facteur/hostname.h"

/* Longest piece of a user's text quoted back in an error message. */
#define ROUTE_QUOTE_MAX 100

struct route_table {
	struct route *routes;
	size_t count;
	size_t cap;
};

struct route_table *route_table_new(void)
{
	return calloc(1, sizeof(struct route_table));
}

static void route_clear(struct route *r)
{
	free(r->pattern);
	for (size_t i = 0; i < r->target_count; i++)
		free(r->targets[i].host);
	free(r->auth_file);
	free(r->auth_user);
	if (r->auth_password != NULL)
		explicit_bzero(r->auth_password, strlen(r->auth_password));
	free(r->auth_password);
	free(r->text);
	memset(r, 0, sizeof(*r));
}

void route_table_free(struct route_table *table)
{
	if (table == NULL)
		return;
	for (size_t i = 0; i < table->count; i++)
		route_clear(&table->routes[i]);
	free(table->routes);
	free(table);
}

/* Read "user:password" from a route's auth= file; -1 with errno set. */
static int read_auth_file(const char *path, char **user, char **password)
{
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	char line[1024];
	int ok = fgets(line, sizeof line, f) != NULL;
	(void)fclose(f); /* read-only */
	if (!ok) {
		errno = ENODATA;
		return -1;
	}
	line[strcspn(line, "\r\n")] = '\0';
	char *colon = strchr(line, ':');
	if (colon == NULL || colon == line) {
		explicit_bzero(line, sizeof line);
		errno = EINVAL;
		return -1;
	}
	*colon = '\0';
	*user = strdup(line);
	*password = strdup(colon + 1);
	explicit_bzero(line, sizeof line);
	if (*user == NULL || *password == NULL) {
		free(*user);
		if (*password != NULL)
			explicit_bzero(*password, strlen(*password));
		free(*password);
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

size_t route_table_read_credentials(struct route_table *table,
				    route_unreadable_cb unreadable, void *arg)
{
	size_t failures = 0;
	for (size_t i = 0; table != NULL && i < table->count; i++) {
		struct route *r = &table->routes[i];
		if (r->auth_file == NULL || r->auth_user != NULL)
			continue;
		if (read_auth_file(r->auth_file, &r->auth_user,
				   &r->auth_password) == -1) {
			r->auth_user = NULL;
			r->auth_password = NULL;
			unreadable(r, errno, arg);
			failures++;
		}
	}
	return failures;
}

size_t route_table_count(const struct route_table *table)
{
	return table == NULL ? 0 : table->count;
}

const struct route *route_table_get(const struct route_table *table, size_t i)
{
	if (table == NULL || i >= table->count)
		return NULL;
	return &table->routes[i];
}

/* A decimal port, 1..65535, digits only. */
static int parse_port(const char *s, size_t len, uint16_t *port)
{
	unsigned long v = 0;

	if (len == 0 || len > 5)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static int oom(char *err, size_t errlen)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "out of memory");
	return -1;
}

/* Set err to `what "text"`, the text cut to a readable length. */
static int fail(char *err, size_t errlen, const char *what, const char *s,
		size_t len)
{
	if (err != NULL && errlen > 0) {
		int n = len > ROUTE_QUOTE_MAX ? ROUTE_QUOTE_MAX : (int)len;
		snprintf(err, errlen, "%s \"%.*s\"%s", what, n, s,
			 len > ROUTE_QUOTE_MAX ? "..." : "");
	}
	return -1;
}

/* "user@example.com": a local part of visible characters, one "@", a
 * domain. Compared case-insensitively, as mail systems look senders up. */
static int parse_address_pattern(const char *s, size_t len, struct route *r,
				 char *err, size_t errlen)
{
	const char *at = memchr(s, '@', len);
	size_t domlen = at != NULL ? len - (size_t)(at + 1 - s) : 0;

	if (at == NULL || at == s || memchr(at + 1, '@', domlen) != NULL ||
	    ascii_has_blank_or_control(s, (size_t)(at - s)))
		return fail(err, errlen, "invalid address pattern", s, len);
	if (domlen > 1 && at[domlen] == '.')
		domlen--;
	if (!hostname_valid(at + 1, domlen))
		return fail(err, errlen, "invalid address pattern", s, len);
	r->kind = ROUTE_ADDRESS;
	r->pattern = ascii_lower_dup(s, (size_t)(at + 1 - s) + domlen);
	return r->pattern == NULL ? oom(err, errlen) : 0;
}

int route_pattern_parse(const char *s, size_t len,
			enum route_pattern_kind *kind, char **pattern,
			char *err, size_t errlen)
{
	const char *name = s;
	size_t namelen = len;

	if (len == 1 && s[0] == '*') {
		*kind = ROUTE_WILDCARD;
		*pattern = strdup("*");
		return *pattern == NULL ? oom(err, errlen) : 0;
	}
	*kind = ROUTE_EXACT;
	if (len >= 2 && s[0] == '*' && s[1] == '.') {
		*kind = ROUTE_SUFFIX;
		name += 2;
		namelen -= 2;
	}
	/* An absolute name ("example.com.") is the same domain. */
	if (namelen > 1 && name[namelen - 1] == '.')
		namelen--;
	if (!hostname_valid(name, namelen))
		return fail(err, errlen, "invalid pattern", s, len);
	*pattern = ascii_lower_dup(name, namelen);
	if (*pattern == NULL)
		return oom(err, errlen);
	return 0;
}

static int parse_pattern(const char *s, size_t len, bool sender,
			 struct route *r, char *err, size_t errlen)
{
	if (sender && memchr(s, '@', len) != NULL)
		return parse_address_pattern(s, len, r, err, errlen);
	return route_pattern_parse(s, len, &r->kind, &r->pattern, err, errlen);
}

/* "[1.2.3.4]", "[::1]", "[IPv6:2001:db8::1]" or "[host]", brackets
 * included in s/len. */
static int parse_bracketed(const char *s, size_t len, struct route_target *r)
{
	char buf[INET6_ADDRSTRLEN + 8];
	unsigned char addr[sizeof(struct in6_addr)];
	const char *in = s + 1;
	size_t inlen = len - 2;
	bool v6_tag = false;

	if (inlen >= 5 && strncasecmp(in, "IPv6:", 5) == 0) {
		v6_tag = true;
		in += 5;
		inlen -= 5;
	}
	if (inlen == 0)
		return -1;
	if (inlen < sizeof(buf)) {
		memcpy(buf, in, inlen);
		buf[inlen] = '\0';
		if ((!v6_tag && inet_pton(AF_INET, buf, addr) == 1) ||
		    inet_pton(AF_INET6, buf, addr) == 1) {
			r->host_is_ip = true;
			r->host = ascii_lower_dup(in, inlen);
			return r->host == NULL ? -1 : 0;
		}
	}
	if (v6_tag)
		return -1;
	if (inlen > 1 && in[inlen - 1] == '.')
		inlen--;
	if (!hostname_valid(in, inlen))
		return -1;
	r->host = ascii_lower_dup(in, inlen);
	return r->host == NULL ? -1 : 0;
}

static int parse_target_element(const char *s, size_t len,
				struct route_target *r, char *err,
				size_t errlen)
{
	const char *hostpart = s;
	size_t hostlen;
	const char *colon = NULL;

	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);

		if (close == NULL)
			return fail(err, errlen, "bad target", s, len);
		hostlen = (size_t)(close - s) + 1;
		if (hostlen < len) {
			if (s[hostlen] != ':')
				return fail(err, errlen, "bad target", s, len);
			colon = s + hostlen;
		}
		r->mx_lookup = false;
		if (parse_bracketed(s, hostlen, r) < 0)
			return fail(err, errlen, "bad target", s, len);
	} else {
		unsigned char addr[sizeof(struct in_addr)];
		char buf[INET_ADDRSTRLEN];

		colon = memchr(s, ':', len);
		hostlen = colon != NULL ? (size_t)(colon - s) : len;
		if (hostlen > 1 && hostpart[hostlen - 1] == '.')
			hostlen--;
		if (!hostname_valid(hostpart, hostlen))
			return fail(err, errlen, "bad target", s, len);
		/* MX records of "1.2.3.4" make no sense: an address is
		 * written as a literal, "[1.2.3.4]". */
		if (hostlen < sizeof(buf)) {
			memcpy(buf, hostpart, hostlen);
			buf[hostlen] = '\0';
			if (inet_pton(AF_INET, buf, addr) == 1)
				return fail(err, errlen,
					    "address target needs brackets", s,
					    len);
		}
		r->mx_lookup = true;
		r->host = ascii_lower_dup(hostpart, hostlen);
		if (r->host == NULL)
			return oom(err, errlen);
	}
	if (colon != NULL) {
		size_t portlen = len - (size_t)(colon + 1 - s);

		if (parse_port(colon + 1, portlen, &r->port) < 0)
			return fail(err, errlen, "invalid port in target", s,
				    len);
	}
	return 0;
}

/* "T1|T2|...": each element a target of its own, kept in order. */
static int parse_target(const char *s, size_t len, struct route *r, char *err,
			size_t errlen)
{
	const char *end = s + len;

	for (const char *p = s;;) {
		const char *bar = memchr(p, '|', (size_t)(end - p));
		size_t elen =
		    bar != NULL ? (size_t)(bar - p) : (size_t)(end - p);

		if (elen == 0)
			return fail(err, errlen, "empty element in target", s,
				    len);
		if (r->target_count == ROUTE_TARGETS_MAX)
			return fail(err, errlen,
				    "too many failover elements (at most 8) in",
				    s, len);
		if (parse_target_element(p, elen,
					 &r->targets[r->target_count++], err,
					 errlen) < 0)
			return -1;
		if (bar == NULL)
			return 0;
		p = bar + 1;
	}
}

static int parse_option(const char *s, size_t len, struct route *r,
			bool *seen_tls, char *err, size_t errlen)
{
	static const struct {
		const char *name;
		enum route_tls tls;
	} tls_values[] = {
	    {"none", ROUTE_TLS_NONE},	      {"may", ROUTE_TLS_MAY},
	    {"encrypt", ROUTE_TLS_ENCRYPT},   {"verify", ROUTE_TLS_VERIFY},
	    {"implicit", ROUTE_TLS_IMPLICIT},
	};

	if (len >= 4 && strncmp(s, "tls=", 4) == 0) {
		/* implicit is a way of connecting, not a level to combine */
		if (*seen_tls &&
		    (r->tls == ROUTE_TLS_IMPLICIT ||
		     (len == 12 && memcmp(s + 4, "implicit", 8) == 0)))
			return fail(err, errlen,
				    "tls=implicit excludes any other tls= "
				    "(it always verifies the certificate), "
				    "in",
				    r->text, strlen(r->text));
		if (*seen_tls)
			return fail(err, errlen, "duplicate option", s, len);
		*seen_tls = true;
		for (size_t i = 0; i < sizeof(tls_values) / sizeof(*tls_values);
		     i++) {
			if (strlen(tls_values[i].name) == len - 4 &&
			    memcmp(tls_values[i].name, s + 4, len - 4) == 0) {
				r->tls = tls_values[i].tls;
				return 0;
			}
		}
		return fail(err, errlen,
			    "invalid tls value (none, may, encrypt, verify or "
			    "implicit)",
			    s, len);
	}
	if (len >= 5 && strncmp(s, "auth=", 5) == 0) {
		if (r->auth_file != NULL)
			return fail(err, errlen, "duplicate option", s, len);
		if (len == 5)
			return fail(err, errlen, "missing file name in", s,
				    len);
		r->auth_file = strndup(s + 5, len - 5);
		if (r->auth_file == NULL)
			return oom(err, errlen);
		return 0;
	}
	return fail(err, errlen, "unknown option", s, len);
}

/*
 * A password must not go to whoever answers: with auth= and no tls=, the
 * route verifies the relay's certificate, whatever tls_outbound says.
 * tls=may is refused, as it would authenticate over TLS that nobody
 * checked while reading as the cautious choice; tls=encrypt (any
 * certificate, stated on the line) and tls=none (no TLS, for a relay on
 * loopback or a private link) are the operator's explicit word.
 */
static int check_auth_tls(struct route *r, char *err, size_t errlen)
{
	if (r->auth_file == NULL)
		return 0;
	if (r->tls == ROUTE_TLS_DEFAULT)
		r->tls = ROUTE_TLS_VERIFY;
	if (r->tls == ROUTE_TLS_MAY)
		return fail(err, errlen,
			    "auth= with tls=may would send the password "
			    "over an unverified connection (use tls=verify, "
			    "or tls=encrypt to accept any certificate) in",
			    r->text, strlen(r->text));
	return 0;
}

/* TLS from the first byte is on port 465 unless the target says. */
static void apply_implicit_port(struct route *r)
{
	if (r->tls != ROUTE_TLS_IMPLICIT)
		return;
	for (size_t i = 0; i < r->target_count; i++)
		if (r->targets[i].port == 0)
			r->targets[i].port = ROUTE_IMPLICIT_TLS_PORT;
}

int route_split_tokens(const char *value, char **text, route_token_fn token,
		       void *arg)
{
	const char *p = value;
	const char *end;
	size_t ntok = 0;

	while (ascii_is_wsp(*p))
		p++;
	end = p + strlen(p);
	while (end > p && ascii_is_wsp(end[-1]))
		end--;
	*text = strndup(p, (size_t)(end - p));
	if (*text == NULL)
		return token(NULL, 0, 0, arg);

	while (p < end) {
		const char *tok = p;
		size_t len;

		while (p < end && !ascii_is_wsp(*p))
			p++;
		len = (size_t)(p - tok);
		while (p < end && ascii_is_wsp(*p))
			p++;
		if (token(tok, len, ntok, arg) < 0)
			return -1;
		ntok++;
	}
	return (int)ntok;
}

struct route_parse {
	struct route *r;
	bool sender;
	bool seen_tls;
	char *err;
	size_t errlen;
};

static int route_token(const char *tok, size_t len, size_t index, void *arg)
{
	struct route_parse *rp = arg;

	if (tok == NULL)
		return oom(rp->err, rp->errlen);
	if (index == 0)
		return parse_pattern(tok, len, rp->sender, rp->r, rp->err,
				     rp->errlen);
	if (index == 1)
		return parse_target(tok, len, rp->r, rp->err, rp->errlen);
	return parse_option(tok, len, rp->r, &rp->seen_tls, rp->err,
			    rp->errlen);
}

static int parse_route(const char *value, bool sender, struct route *r,
		       char *err, size_t errlen)
{
	struct route_parse rp = {r, sender, false, err, errlen};
	int ntok = route_split_tokens(value, &r->text, route_token, &rp);

	if (ntok < 0)
		return -1;
	if (ntok == 0) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "empty route");
		return -1;
	}
	if (ntok == 1)
		return fail(err, errlen, "missing target after pattern",
			    r->text, strlen(r->text));
	apply_implicit_port(r);
	return check_auth_tls(r, err, errlen);
}

#define ENTRY(t, i) ((const char *)(t)->entries + (i) * (t)->size)
#define ENTRY_KIND(t, i)                                                       \
	(*(const enum route_pattern_kind *)(ENTRY(t, i) + (t)->kind_offset))
#define ENTRY_PATTERN(t, i)                                                    \
	(*(char *const *)(ENTRY(t, i) + (t)->pattern_offset))

int route_pattern_unique(const struct route_pattern_table *t,
			 enum route_pattern_kind kind, const char *pattern,
			 char *err, size_t errlen)
{
	for (size_t i = 0; i < t->count; i++) {
		if (ENTRY_KIND(t, i) == kind &&
		    strcmp(ENTRY_PATTERN(t, i), pattern) == 0) {
			if (err != NULL && errlen > 0)
				snprintf(
				    err, errlen, "duplicate pattern \"%s%s\"",
				    kind == ROUTE_SUFFIX ? "*." : "", pattern);
			return -1;
		}
	}
	return 0;
}

size_t route_pattern_best(const struct route_pattern_table *t,
			  const char *domain)
{
	size_t best = t->count;
	size_t best_rank = 0;
	size_t len;

	if (domain == NULL)
		domain = "";
	len = strlen(domain);
	if (len > 1 && domain[len - 1] == '.')
		len--;
	/* A linear scan keeps the table in the operator's order; tables are
	 * a few lines long, and the best match is independent of order. */
	for (size_t i = 0; i < t->count; i++) {
		size_t rank = route_pattern_rank(
		    ENTRY_KIND(t, i), ENTRY_PATTERN(t, i), domain, len);

		if (rank > best_rank) {
			best = i;
			best_rank = rank;
		}
	}
	return best;
}

static struct route_pattern_table pattern_table(const struct route_table *t)
{
	struct route_pattern_table pt = {
	    t->routes, t->count, sizeof(struct route),
	    offsetof(struct route, kind), offsetof(struct route, pattern)};
	return pt;
}

static int table_add(struct route_table *table, const char *value, bool sender,
		     char *err, size_t errlen)
{
	struct route r = {0};

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (parse_route(value, sender, &r, err, errlen) < 0) {
		route_clear(&r);
		return -1;
	}
	struct route_pattern_table pt = pattern_table(table);
	if (route_pattern_unique(&pt, r.kind, r.pattern, err, errlen) < 0) {
		route_clear(&r);
		return -1;
	}
	if (table->count == table->cap) {
		size_t cap = table->cap == 0 ? 8 : table->cap * 2;
		struct route *grown =
		    reallocarray(table->routes, cap, sizeof(*grown));

		if (grown == NULL) {
			route_clear(&r);
			return oom(err, errlen);
		}
		table->routes = grown;
		table->cap = cap;
	}
	table->routes[table->count++] = r;
	return 0;
}

int route_table_add(struct route_table *table, const char *value, char *err,
		    size_t errlen)
{
	return table_add(table, value, false, err, errlen);
}

int route_table_add_sender(struct route_table *table, const char *value,
			   char *err, size_t errlen)
{
	return table_add(table, value, true, err, errlen);
}

size_t route_pattern_rank(enum route_pattern_kind kind, const char *pattern,
			  const char *domain, size_t len)
{
	size_t plen = strlen(pattern);

	switch (kind) {
	case ROUTE_EXACT:
		if (plen == len && strncasecmp(domain, pattern, len) == 0)
			return SIZE_MAX;
		break;
	case ROUTE_SUFFIX:
		if (len > plen + 1 && domain[len - plen - 1] == '.' &&
		    strncasecmp(domain + len - plen, pattern, plen) == 0)
			return plen + 2;
		break;
	case ROUTE_WILDCARD:
		return 1;
	case ROUTE_ADDRESS: /* sender routes: route_lookup_sender */
		break;
	}
	return 0;
}

const struct route *route_lookup(const struct route_table *table,
				 const char *domain)
{
	if (table == NULL)
		return NULL;
	struct route_pattern_table pt = pattern_table(table);
	size_t i = route_pattern_best(&pt, domain);
	return i < table->count ? &table->routes[i] : NULL;
}

const struct route *route_lookup_sender(const struct route_table *table,
					const char *sender)
{
	const char *at;

	if (table == NULL || sender == NULL || sender[0] == '\0') {
		/* the null sender: bounces and notices go by "*" alone */
		for (size_t i = 0; table != NULL && i < table->count; i++)
			if (table->routes[i].kind == ROUTE_WILDCARD)
				return &table->routes[i];
		return NULL;
	}
	for (size_t i = 0; i < table->count; i++) {
		const struct route *r = &table->routes[i];

		if (r->kind == ROUTE_ADDRESS &&
		    strcasecmp(r->pattern, sender) == 0)
			return r;
	}
	at = strrchr(sender, '@');
	return route_lookup(table, at != NULL ? at + 1 : "");
}

/* ---- local_transport ---- */

static int lmtp_fail(char *err, size_t errlen, const char *what,
		     const char *value)
{
	return fail(err, errlen, what, value, strlen(value));
}

/* One target element alone, its host freed on failure. */
static int target_parse(const char *s, size_t len, struct route_target *out,
			char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (parse_target_element(s, len, out, err, errlen) == 0)
		return 0;
	free(out->host);
	out->host = NULL;
	return -1;
}

static int parse_unix(const char *value, const char *path,
		      struct route_lmtp *out, char *err, size_t errlen)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&out->addr;
	size_t len = strlen(path);

	if (path[0] != '/')
		return lmtp_fail(err, errlen,
				 "the socket path must be absolute in", value);
	if (len >= sizeof(sun->sun_path))
		return lmtp_fail(err, errlen, "socket path too long in", value);
	if (ascii_has_blank_or_control(path, len))
		return lmtp_fail(err, errlen, "blank or control character in",
				 value);
	out->kind = LMTP_UNIX;
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, len + 1);
	out->addrlen =
	    (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	snprintf(out->text, sizeof(out->text), "lmtp:unix:%s", path);
	return 0;
}

/* An IP literal's socket address, the port set. */
static void literal_address(struct route_lmtp *out)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->addr;

	if (inet_pton(AF_INET, out->host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(out->port);
		out->addrlen = sizeof(*sin);
	} else if (inet_pton(AF_INET6, out->host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(out->port);
		out->addrlen = sizeof(*sin6);
	}
}

static int parse_inet(const char *value, const char *rest,
		      struct route_lmtp *out, char *err, size_t errlen)
{
	struct route_target t;
	char why[128];

	if (rest[0] != '[')
		return lmtp_fail(
		    err, errlen,
		    "expected lmtp:unix:PATH or lmtp:[HOST]:PORT, not", value);
	if (target_parse(rest, strlen(rest), &t, why, sizeof(why)) < 0)
		return lmtp_fail(err, errlen,
				 "bad host or port (lmtp:[HOST]:PORT) in",
				 value);
	snprintf(out->host, sizeof(out->host), "%s", t.host);
	free(t.host);
	out->kind = LMTP_INET;
	out->port = t.port != 0 ? t.port : LMTP_DEFAULT_PORT;
	/* "[127.0.0.1.]" is a name to the target grammar, an address here */
	literal_address(out);
	out->host_is_ip = out->addrlen != 0;
	snprintf(out->text, sizeof(out->text), "lmtp:[%s]:%u", out->host,
		 (unsigned)out->port);
	return 0;
}

int route_lmtp_parse(const char *value, struct route_lmtp *out, char *err,
		     size_t errlen)
{
	memset(out, 0, sizeof(*out));
	out->kind = LMTP_NONE;
	if (value[0] == '\0')
		return 0;
	if (strlen(value) < 5 || !ascii_ieq(value, 5, "lmtp:"))
		return lmtp_fail(
		    err, errlen,
		    "expected lmtp:unix:PATH or lmtp:[HOST]:PORT, not", value);
	const char *rest = value + 5;
	int rc = strlen(rest) >= 5 && ascii_ieq(rest, 5, "unix:")
		     ? parse_unix(value, rest + 5, out, err, errlen)
		     : parse_inet(value, rest, out, err, errlen);
	if (rc < 0)
		memset(out, 0, sizeof(*out));
	return rc;
}
