/* Growing buffers and the text builder (see text.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/text.h"

int buffer_grow(char **buf, size_t *cap, size_t need, size_t first,
                size_t max)
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

bool text_octet_needs_escape(unsigned char c)
{
	return c <= 0x20 || c == '+' || c == '=' || c == 0x7f;
}

void text_value(struct text *t, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

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
		char esc[3] = {'+', hex[*p >> 4], hex[*p & 0xf]};
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
