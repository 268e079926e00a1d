/*
 * What facteur-sendmail does to a message before it is queued, as pure
 * text functions (see submission.h): the lone-dot rule of its input, the
 * end of the header section, address lists for -t, and the rewritten
 * header section (Bcc removed; From, Date and Message-ID added when
 * missing). Unit-tested and fuzzed; no I/O.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/submission.h"
#include "facteur/text.h"

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

enum input_state {
	INPUT_BOL, /* zero: at a line start */
	INPUT_TEXT,
	INPUT_DOT,    /* "." at a line start, held back */
	INPUT_DOT_CR, /* ".\r" at a line start, held back */
};

size_t submission_input_feed(struct submission_input *in, const char *buf,
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

size_t submission_input_finish(struct submission_input *in, char *out)
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

long submission_header_end(const char *text, size_t len, bool at_eof)
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

void submission_addresses_clear(struct submission_addresses *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static int addresses_add(struct submission_addresses *list, const char *s,
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
static int item_finish(struct submission_addresses *out, struct text *item,
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

int submission_parse_addresses(const char *value, size_t len,
			       struct submission_addresses *out)
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

static void text_from(struct text *t, const struct submission_headers *sub)
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

char *submission_rewrite_headers(const char *text, size_t len,
				 const struct submission_headers *sub,
				 struct submission_addresses *rcpts,
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
			rc = submission_parse_addresses(
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
