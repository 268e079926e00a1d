/*
 * UTF-8 well-formedness (RFC 3629), for the places that show a peer's
 * octets to people and programs: log lines and facteurctl's output. One
 * small inline function, so that every module can use it without a new
 * link dependency.
 */
#ifndef FACTEUR_UTF8_H
#define FACTEUR_UTF8_H

#include <stddef.h>

/*
 * The length (1 to 4) of the well-formed UTF-8 sequence that starts
 * s[0..len), or 0 when s[0] starts none: a stray continuation octet, an
 * overlong form, a surrogate, a code point past U+10FFFF, C0/C1/F5-FF, or
 * a sequence cut short by `len`.
 */
static inline size_t utf8_sequence_length(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	/* the second octet's range rules out overlongs, surrogates and
	 * code points past U+10FFFF */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (len < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

#endif
