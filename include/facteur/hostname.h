/*
 * Host name syntax (RFC 1123 §2.1, RFC 1035 §2.3.4), the one check for
 * the domains an operator configures: hostname, local domains, route
 * patterns and relay hosts. What a client sends in SMTP (U-labels,
 * address literals) is smtp_proto's to judge.
 */
#ifndef FACTEUR_HOSTNAME_H
#define FACTEUR_HOSTNAME_H

#include <stdbool.h>
#include <stddef.h>

#define HOSTNAME_MAX 253 /* octets, without a final dot */
#define HOSTNAME_LABEL_MAX 63

/* Dot-separated labels of ASCII letters, digits and hyphens: none empty,
 * longer than HOSTNAME_LABEL_MAX, or starting or ending with '-'; at
 * most HOSTNAME_MAX octets in all. No final dot. */
bool hostname_valid(const char *s, size_t len);

#endif
