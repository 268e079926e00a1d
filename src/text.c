/* Growing buffers, the text builder and the "+XX" codec (see text.h). */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/text.h"

int buffer_grow(char **buf, size_t *cap, size_t need, size_t first, size_t max)
{
	if (*cap >= need)
		return 0;
	size_t ncap = *cap ? *cap : first;
	if (ncap == 0)
		ncap = 1;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2) {
			errno = ENOMEM;
			return -1;
		}
		ncap *= 2;
	}
	if (ncap > max)
		ncap = max;
	if (ncap < need) {
		errno = ENOMEM;
		return -1;
	}
	char *p = realloc(*buf, ncap);
	if (p == NULL) {
		errno = ENOMEM;
		return -1;
	}
	*buf = p;
	*cap = ncap;
	return 0;
}

char *text_dup(const char *s, size_t len)
{
	char *out = malloc(len + 1);

	if (out == NULL)
		return NULL;
	memcpy(out, s, len);
	out[len] = '\0';
	return out;
}

void text_add(struct text *t, const char *s, size_t n)
{
	if (t->failed)
		return;
	if (n >= SIZE_MAX - t->len ||
	    buffer_grow(&t->p, &t->cap, t->len + n + 1, 128, SIZE_MAX) == -1) {
		t->failed = true;
		return;
	}
	if (n > 0)
		memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
}

void text_str(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

void text_fmt(struct text *t, const char *fmt, ...)
{
	char small[64];
	va_list ap;

	/* Numbers and short words fit on the stack; anything longer is
	 * formatted again into a buffer of its size. */
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0) {
		t->failed = true;
		return;
	}
	if ((size_t)n < sizeof small) {
		text_add(t, small, (size_t)n);
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (big == NULL) {
		t->failed = true;
		return;
	}
	va_start(ap, fmt);
	(void)vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	text_add(t, big, (size_t)n);
	free(big);
}

static const char hex_upper[] = "0123456789ABCDEF";

/* An octet that may stand as itself: RFC 3461's xchar ("!" to "~"
 * but '+' and '='), and with TEXT_XTEXT_8BIT any non-ASCII octet. */
static bool xtext_plain(unsigned char c, unsigned flags)
{
	if (c >= 0x80)
		return (flags & TEXT_XTEXT_8BIT) != 0;
	return c >= 33 && c <= 126 && c != '+' && c != '=';
}

bool text_octet_needs_escape(unsigned char c)
{
	return !xtext_plain(c, TEXT_XTEXT_8BIT);
}

/* The octet that the "+XX" at p (n octets left) stands for, or -1. */
static int plus_escape(const unsigned char *p, size_t n)
{
	if (n < 3)
		return -1;
	int hi = ascii_hex_upper_value((char)p[1]);
	int lo = ascii_hex_upper_value((char)p[2]);
	return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
}

int text_xtext_decode(const char *in, size_t len, char *out, size_t outlen,
		      unsigned flags)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t i = 0, o = 0;

	if (out == NULL || outlen == 0 || outlen - 1 > INT_MAX)
		return -1;
	while (i < len) {
		int c = p[i];
		if (c == '+') {
			c = plus_escape(p + i, len - i);
			/* A NUL would silently cut the C string short. */
			if (c <= 0)
				return -1;
			i += 3;
		} else if (xtext_plain((unsigned char)c, flags)) {
			i++;
		} else {
			return -1;
		}
		if (o >= outlen - 1)
			return -1;
		out[o++] = (char)c; /* o <= i: decoding in place is safe */
	}
	out[o] = '\0';
	return (int)o;
}

bool text_xtext_valid(const char *in, size_t len)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t i = 0;

	while (i < len) {
		if (p[i] == '+') {
			if (plus_escape(p + i, len - i) < 0)
				return false;
			i += 3;
		} else if (xtext_plain(p[i], 0)) {
			i++;
		} else {
			return false;
		}
	}
	return true;
}

int text_xtext_encode(const char *in, size_t len, char *out, size_t outlen)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0;

	if (out == NULL || outlen == 0 || outlen - 1 > INT_MAX)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		if (xtext_plain(c, 0)) {
			if (outlen - 1 - o < 1)
				return -1;
			out[o++] = (char)c;
		} else {
			if (outlen - 1 - o < 3)
				return -1;
			out[o++] = '+';
			out[o++] = hex_upper[c >> 4];
			out[o++] = hex_upper[c & 0xf];
		}
	}
	out[o] = '\0';
	return (int)o;
}

void text_value(struct text *t, const char *s)
{
	if (s == NULL || s[0] == '\0') {
		text_add(t, "-", 1);
		return;
	}
	if (strcmp(s, "-") == 0) {
		text_add(t, "+2D", 3);
		return;
	}
	const char *run = s; /* octets as they are, not yet added */
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (!text_octet_needs_escape(*p))
			continue;
		text_add(t, run, (size_t)((const char *)p - run));
		char esc[3] = {'+', hex_upper[*p >> 4], hex_upper[*p & 0xf]};
		text_add(t, esc, 3);
		run = (const char *)p + 1;
	}
	text_add(t, run, strlen(run));
}

char *text_finish(struct text *t, size_t *len)
{
	if (!t->failed && t->p == NULL)
		text_add(t, "", 0);
	if (t->failed) {
		free(t->p);
		t->p = NULL;
		errno = ENOMEM;
		return NULL;
	}
	if (len != NULL)
		*len = t->len;
	return t->p;
}
