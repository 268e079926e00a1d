/*
 * Growing buffers; the text builder that the spool's envelope records
 * and the control protocol's messages are written with; and the one
 * "+XX" codec, RFC 3461 xtext, that ESMTP parameters, DSNs and those
 * records' value tokens share. A text
 * that fails to grow remembers it: later additions do nothing, and
 * text_finish reports the failure once, where the result is used.
 */
#ifndef FACTEUR_TEXT_H
#define FACTEUR_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Make *buf hold at least `need` octets: its capacity doubles from
 * `first` until it does, and never exceeds `max`. 0, or -1 with errno
 * ENOMEM (*buf and *cap unchanged). */
int buffer_grow(char **buf, size_t *cap, size_t need, size_t first, size_t max);

/* A malloc'd copy of s[0..len), NUL-terminated (a NUL inside is copied
 * too); NULL when memory runs out. */
char *text_dup(const char *s, size_t len);

struct text {
	char *p; /* NUL-terminated once anything was added */
	size_t len;
	size_t cap;
	bool failed;
};

void text_add(struct text *t, const char *s, size_t n);
void text_str(struct text *t, const char *s);
void text_fmt(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * A value as one space-free token of a line: "-" for NULL or empty,
 * "+2D" for a literal "-", "+XX" (upper-case hex) for the octets that
 * would break a line or a token (controls, space, DEL) and for '+' and
 * '=' themselves; everything else, UTF-8 included, as is.
 */
void text_value(struct text *t, const char *s);
/* Whether text_value writes octet c as "+XX". */
bool text_octet_needs_escape(unsigned char c);

/*
 * "+XX" escapes, RFC 3461 §4: "!" to "~" stand as themselves but for
 * '+' and '=', which like every other octet are written "+" and two
 * upper-case hex digits. Decoding refuses lower-case hex, a '+' without
 * two hex digits after it, a bare '=', space or control, and "+00" (a
 * NUL would cut the C string short).
 */
#define TEXT_XTEXT_8BIT                                                        \
	0x1u /* octets 0x80-0xff stand as themselves, as                       \
		text_value writes them (UTF-8) */
/* Decode into out (NUL-terminated; out may be in itself): the decoded
 * length, or -1 when malformed or longer than outlen - 1. */
int text_xtext_decode(const char *in, size_t len, char *out, size_t outlen,
		      unsigned flags);
/* Encode into out (NUL-terminated): its length, or -1 when it does not
 * fit; non-ASCII octets are escaped too. */
int text_xtext_encode(const char *in, size_t len, char *out, size_t outlen);
/* The syntax alone, without decoding: "+00" passes here (an ORCPT is
 * kept as sent). */
bool text_xtext_valid(const char *in, size_t len);

/* The text, malloc'd and NUL-terminated (an empty one too), its length
 * in *len when not NULL; or NULL with errno ENOMEM, the text freed. */
char *text_finish(struct text *t, size_t *len);

#endif
