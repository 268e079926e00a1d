/*
 * facteurctl dkim-keygen: a new DKIM private key written mode 0600 and
 * the DNS record that publishes its public half. The record's layout is
 * pure (dkim_keygen_record) for its unit test.
 */
#ifndef FACTEUR_DKIM_KEYGEN_H
#define FACTEUR_DKIM_KEYGEN_H

#include <stddef.h>

/* RSA sizes accepted by --bits; 2048 unless told. */
#define DKIM_KEYGEN_RSA_DEFAULT 2048
#define DKIM_KEYGEN_RSA_MAX 8192
/* One character-string of a TXT record holds at most this many octets
 * (RFC 1035 §3.3). */
#define DKIM_KEYGEN_TXT_STRING_MAX 255

/* `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=TYPE; p=..."`, the
 * value cut into quoted strings of at most DKIM_KEYGEN_TXT_STRING_MAX
 * octets; malloc'd, NULL when out of memory. */
char *dkim_keygen_record(const char *domain, const char *selector,
			 const char *type, const char *public_b64);

/* The subcommand: argv[0] is "dkim-keygen". Returns the exit status
 * (0; 1 when the key cannot be made or written; 64 on a usage error). */
int dkim_keygen_command(int argc, char **argv);

#endif
