/*
 * ASCII case folding and character classes, by hand: protocol keywords,
 * domains and configuration keys compare the same whatever the locale,
 * and octets above 0x7f (UTF-8) are never folded.
 */
#ifndef FACTEUR_ASCII_H
#define FACTEUR_ASCII_H

#include <stdbool.h>
#include <stddef.h>

/* Inline: the DATA decoder folds every header octet through these. */
static inline char ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static inline char ascii_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static inline bool ascii_is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline bool ascii_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static inline bool ascii_is_alnum(char c)
{
	return ascii_is_alpha(c) || ascii_is_digit(c);
}

/* Letter, digit or hyphen: the octets of a host name label. */
static inline bool ascii_is_ldh(char c)
{
	return ascii_is_alnum(c) || c == '-';
}

/* Space or tab: RFC 5234's WSP. */
static inline bool ascii_is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* The value of an upper-case hex digit (what facteur writes in queue
 * ids, spool records and xtext), or -1. */
static inline int ascii_hex_upper_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Blanks around a field of the users and aliases files: CR too, so
 * that a file with CRLF lines reads as one with LF lines. */
#define ASCII_LINE_BLANKS " \t\r"

/* s[0..*len) without the octets of `set` at either end (" \t", or
 * ASCII_LINE_BLANKS): its new start, *len shortened. */
const char *ascii_trim(const char *s, size_t *len, const char *set);

/* s (n octets) equals the NUL-terminated `lit`, ignoring ASCII case. */
bool ascii_ieq(const char *s, size_t n, const char *lit);
/* a (alen octets) equals b (blen octets), ignoring ASCII case. */
bool ascii_ieq_len(const char *a, size_t alen, const char *b, size_t blen);
void ascii_lower_in_place(char *s, size_t len);
/* A malloc'd, NUL-terminated, lower-cased copy of s[0..len); NULL when
 * memory runs out. */
char *ascii_lower_dup(const char *s, size_t len);
/* Whether s[0..len) holds a space, a control character or DEL: not a
 * single token of the users, aliases or senders files. */
bool ascii_has_blank_or_control(const char *s, size_t len);

#endif
