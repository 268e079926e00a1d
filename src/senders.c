/*
 * The senders a login may use (see senders.h). Logins and entries are
 * kept lower-cased, the logins in a sorted array searched by bisection,
 * so that a MAIL FROM costs a lookup whatever the size of the file.
 */
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/senders.h"
#include "facteur/text.h"

/* Errors quote at most this much of a line. */
#define QUOTE_MAX 200
#define QUOTE(len) ((int)((len) > QUOTE_MAX ? QUOTE_MAX : (len)))

struct sender_line {
	char *login;
	char **entries; /* "local@domain" or "@domain" */
	size_t count;
	size_t line;
};

struct senders {
	struct sender_line *lines; /* sorted by login */
	size_t count;
};

void senders_free(struct senders *senders)
{
	if (senders == NULL)
		return;
	for (size_t i = 0; i < senders->count; i++) {
		for (size_t j = 0; j < senders->lines[i].count; j++)
			free(senders->lines[i].entries[j]);
		free(senders->lines[i].entries);
		free(senders->lines[i].login);
	}
	free(senders->lines);
	free(senders);
}

/* "local@domain" or "@domain": one '@' (the last) with a domain after
 * it, no blank or control character. */
static bool entry_valid(const char *s, size_t len)
{
	const char *at = memrchr(s, '@', len);
	return at != NULL && at + 1 < s + len &&
	       !ascii_has_blank_or_control(s, len);
}

struct parser {
	const char *name;
	struct config_errors *errors;
	bool oom;
};

/* Add the comma-separated entries of `s` to the line; false on a bad
 * one (reported). */
static bool parse_entries(struct parser *ps, struct sender_line *sl,
			  const char *s, size_t len, size_t lineno)
{
	size_t cap = 0;
	while (len > 0) {
		const char *comma = memchr(s, ',', len);
		size_t n = comma != NULL ? (size_t)(comma - s) : len;
		const char *next = comma != NULL ? comma + 1 : s + len;
		len -= (size_t)(next - s);
		const char *entry = ascii_trim(s, &n, ASCII_LINE_BLANKS);
		s = next;
		if (n == 0)
			continue;
		if (!entry_valid(entry, n)) {
			config_errors_add(ps->errors,
					  "%s:%zu: senders_file: bad sender "
					  "\"%.*s\" (an address or @domain)",
					  ps->name, lineno, QUOTE(n), entry);
			return false;
		}
		if (sl->count == cap) {
			size_t ncap = cap ? cap * 2 : 4;
			char **grown =
			    reallocarray(sl->entries, ncap, sizeof *grown);
			if (grown == NULL) {
				ps->oom = true;
				return false;
			}
			sl->entries = grown;
			cap = ncap;
		}
		if ((sl->entries[sl->count] = ascii_lower_dup(entry, n)) ==
		    NULL) {
			ps->oom = true;
			return false;
		}
		sl->count++;
	}
	return true;
}

/* A "login: entries" line into *sl; false when malformed (reported). */
static bool parse_line(struct parser *ps, struct sender_line *sl,
		       const char *line, size_t len, size_t lineno)
{
	const char *colon = memchr(line, ':', len);
	if (colon == NULL) {
		config_errors_add(ps->errors,
				  "%s:%zu: senders_file: no ':' in \"%.*s\"",
				  ps->name, lineno, QUOTE(len), line);
		return false;
	}
	size_t login_len = (size_t)(colon - line);
	const char *login = ascii_trim(line, &login_len, " \t");
	if (login_len == 0 || ascii_has_blank_or_control(login, login_len)) {
		config_errors_add(ps->errors,
				  "%s:%zu: senders_file: bad login \"%.*s\"",
				  ps->name, lineno, QUOTE(login_len), login);
		return false;
	}
	sl->line = lineno;
	if ((sl->login = ascii_lower_dup(login, login_len)) == NULL) {
		ps->oom = true;
		return false;
	}
	return parse_entries(ps, sl, colon + 1,
			     len - (size_t)(colon + 1 - line), lineno);
}

static int compare_lines(const void *a, const void *b)
{
	const struct sender_line *x = a, *y = b;
	int c = strcmp(x->login, y->login);
	if (c != 0)
		return c;
	return (x->line > y->line) - (x->line < y->line);
}

struct senders *senders_parse(const char *text, size_t len, const char *name,
			      struct config_errors *errors)
{
	size_t errors_before = errors->count;
	struct parser ps = {.name = name, .errors = errors};
	struct senders *t = calloc(1, sizeof *t);
	if (t == NULL) {
		config_errors_add(errors, "%s: senders_file: out of memory",
				  name);
		return NULL;
	}
	size_t cap = 0;
	struct config_lines lines;
	enum config_line kind;
	const char *line;
	size_t n;
	config_lines_start(&lines, text, len, name, "senders_file", errors);
	while (!ps.oom && (kind = config_lines_next(&lines, &line, &n)) !=
			      CONFIG_LINE_END) {
		if (kind != CONFIG_LINE_ENTRY && kind != CONFIG_LINE_INDENTED)
			continue;
		if (t->count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct sender_line *grown =
			    reallocarray(t->lines, ncap, sizeof *grown);
			if (grown == NULL) {
				ps.oom = true;
				break;
			}
			t->lines = grown;
			cap = ncap;
		}
		struct sender_line *sl = &t->lines[t->count++];
		memset(sl, 0, sizeof *sl);
		(void)parse_line(&ps, sl, line, n, lines.lineno);
	}
	if (ps.oom)
		config_errors_add(errors, "%s: senders_file: out of memory",
				  name);
	if (t->count > 1 && errors->count == errors_before)
		qsort(t->lines, t->count, sizeof *t->lines, compare_lines);
	for (size_t i = 1; i < t->count && errors->count == errors_before; i++)
		if (strcmp(t->lines[i - 1].login, t->lines[i].login) == 0)
			config_errors_add(errors,
					  "%s:%zu: senders_file: login %s "
					  "given twice (first on line %zu)",
					  name, t->lines[i].line,
					  t->lines[i].login,
					  t->lines[i - 1].line);
	if (errors->count != errors_before) {
		senders_free(t);
		return NULL;
	}
	return t;
}

static const struct sender_line *find_login(const struct senders *t,
					    const char *login)
{
	size_t lo = 0, hi = t->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(t->lines[mid].login, login);
		if (c == 0)
			return &t->lines[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

bool senders_allowed(const struct senders *senders, const char *login,
		     const char *sender)
{
	if (sender == NULL || login == NULL)
		return false;
	if (sender[0] == '\0')
		return true;
	size_t sender_len = strlen(sender);
	const char *at = strrchr(sender, '@');
	if (strchr(login, '@') != NULL &&
	    ascii_ieq_len(login, strlen(login), sender, sender_len))
		return true;
	char *key = ascii_lower_dup(login, strlen(login));
	if (key == NULL)
		return false; /* refused for now: the client may try again */
	const struct sender_line *sl = find_login(senders, key);
	free(key);
	if (sl == NULL)
		return false;
	for (size_t i = 0; i < sl->count; i++) {
		const char *e = sl->entries[i];
		size_t elen = strlen(e);
		if (e[0] == '@') {
			if (at != NULL &&
			    ascii_ieq_len(at, strlen(at), e, elen))
				return true;
		} else if (ascii_ieq_len(sender, sender_len, e, elen)) {
			return true;
		}
	}
	return false;
}
