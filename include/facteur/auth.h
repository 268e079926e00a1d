/*
 * Accounts: the users_file ("address:crypt-hash" lines) and password
 * checks with crypt(3). The same accounts own the local mailboxes, log in
 * with SMTP AUTH and read mail over POP3. SASL decoding lives here too.
 */
#ifndef FACTEUR_AUTH_H
#define FACTEUR_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "facteur/config.h"

struct auth_users;

/* Read a users file. Addresses are compared case-insensitively. A line
 * that is blank or starts with '#' is skipped; any other line without a
 * ':' or with an empty address is an error "FILE:LINE: ..." appended to
 * errors. Returns NULL (errors filled) when the file cannot be read or
 * holds errors. */
struct auth_users *auth_users_load(const char *path,
                                   struct config_errors *errors);
/* From text, for tests and fuzzing; `name` is used in messages. */
struct auth_users *auth_users_parse(const char *text, const char *name,
                                    struct config_errors *errors);
void auth_users_free(struct auth_users *users);

size_t auth_users_count(const struct auth_users *users);
bool auth_users_exists(const struct auth_users *users, const char *address);

/* Does `password` match the stored crypt(3) hash of `address`? False for
 * an unknown user (after spending the time of one hash check anyway). */
bool auth_users_check(const struct auth_users *users, const char *address,
                      const char *password);

/* The same check in two steps, so that the slow one runs off the loop:
 * the stored hash of `address` (NULL for an unknown user), looked up on
 * the loop; then, on any thread, whether `password` matches it (with
 * NULL: the time of one check spent, and false). */
const char *auth_users_hash(const struct auth_users *users,
                            const char *address);
bool auth_password_matches(const char *hash, const char *password);

/* How new hashes are made: SHA-512 crypt ("$6$"), which every crypt(3)
 * reads, or libxcrypt's preferred method (yescrypt, "$y$", on Debian 12),
 * stronger against guessing but unknown to older systems. */
enum auth_hash_method {
	AUTH_HASH_SHA512,
	AUTH_HASH_PREFERRED,
};

/* A new crypt(3) hash of `password` by `method`, with a random salt, in a
 * malloc'd string; NULL on failure. */
char *auth_hash_password_with(const char *password,
                              enum auth_hash_method method);
/* The same with AUTH_HASH_SHA512 ("$6$salt$..."). */
char *auth_hash_password(const char *password);

/* SASL PLAIN (RFC 4616): the base64 text decoded into authcid and
 * password (authzid must be empty or equal to authcid). 0 or -1. */
int auth_sasl_plain_decode(const char *b64, size_t len, char *authcid,
                           size_t authcid_len, char *password,
                           size_t password_len);

/* Base64 helpers for SASL. decode returns the decoded length or -1;
 * encode returns the encoded length (NUL-terminated) or -1. */
int auth_base64_decode(const char *in, size_t len, unsigned char *out,
                       size_t outlen);
int auth_base64_encode(const unsigned char *in, size_t len, char *out,
                       size_t outlen);

#endif
