/* ASCII case folding of strings (see ascii.h). */
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"

bool ascii_ieq(const char *s, size_t n, const char *lit)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (lit[i] == '\0' || ascii_lower(s[i]) != ascii_lower(lit[i]))
			return false;
	}
	return lit[i] == '\0';
}

bool ascii_ieq_len(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++)
		if (ascii_lower(a[i]) != ascii_lower(b[i]))
			return false;
	return true;
}

void ascii_lower_in_place(char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		s[i] = ascii_lower(s[i]);
}

char *ascii_lower_dup(const char *s, size_t len)
{
	char *out = malloc(len + 1);

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++)
		out[i] = ascii_lower(s[i]);
	out[len] = '\0';
	return out;
}

bool ascii_has_blank_or_control(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7f)
			return true;
	}
	return false;
}

static bool in_set(char c, const char *set)
{
	return c != '\0' && strchr(set, c) != NULL;
}

const char *ascii_trim(const char *s, size_t *len, const char *set)
{
	size_t n = *len;

	while (n > 0 && in_set(*s, set)) {
		s++;
		n--;
	}
	while (n > 0 && in_set(s[n - 1], set))
		n--;
	*len = n;
	return s;
}
