/*
 * Which envelope senders each login may use: the table of senders_file,
 * one "login: address, @domain, ..." line a login. Pure code (parsed
 * from text, fuzzed in tests/fuzz/fuzz_senders.c); the policy holds the
 * table and the SMTP session asks it at MAIL FROM.
 */
#ifndef FACTEUR_SENDERS_H
#define FACTEUR_SENDERS_H

#include <stdbool.h>
#include <stddef.h>

#include "facteur/config.h"

struct senders;

/*
 * Parse a senders file's text; `name` is used in errors
 * ("NAME:LINE: senders_file: ..."). Blank lines and lines starting with
 * '#' are skipped. NULL when any line is malformed (a missing ':', an
 * empty login, an entry that is neither an address nor "@domain", a
 * login given twice) or when out of memory, every error in `errors`.
 */
struct senders *senders_parse(const char *text, size_t len, const char *name,
			      struct config_errors *errors);
void senders_free(struct senders *senders);

/*
 * May `login` use `sender` as MAIL FROM? Yes for its own login when that
 * is an address, for an address its line lists and for any address in a
 * domain its line lists as "@domain"; the null sender ("") always
 * (it claims no one). Addresses compare without regard to case.
 */
bool senders_allowed(const struct senders *senders, const char *login,
		     const char *sender);

#endif
