/*
 * The Sender Rewriting Scheme, in the form postsrsd and libsrs2 write it,
 * so that either can take over from facteur (or the other way round)
 * with the same secret:
 *
 *   SRS0=HHHH=TT=domain=local@SRS_DOMAIN
 *   SRS1=HHHH=first-forwarder=<rest of its SRS0 address>@SRS_DOMAIN
 *
 * HHHH is the first four characters of the base64 HMAC-SHA1, keyed with
 * the secret, of the lower-cased TT, domain and local part (of the
 * first-forwarder and rest for SRS1); TT is the day number modulo 1024
 * in two base32 characters. A forwarded message whose envelope sender
 * is so rewritten passes SPF at the next hop, and its bounces come back
 * to SRS_DOMAIN, where the address is checked and reversed.
 *
 * Pure code: no I/O, no clock (callers pass the time), fuzzed
 * (tests/fuzz/fuzz_srs.c).
 */
#ifndef FACTEUR_SRS_H
#define FACTEUR_SRS_H

#include <stddef.h>
#include <time.h>

struct srs;

/* Days an SRS0 address stays valid, as libsrs2's default. */
#define SRS_MAX_AGE_DAYS 21

/*
 * The rewriter of `domain` with the secrets of a secret file's text:
 * one secret a line (blank lines skipped, a final CR dropped), the first
 * signs, every one verifies (so that a secret can be changed without
 * refusing the bounces of mail sent under the old one). NULL when the
 * text holds no secret (*why says so) or when out of memory (*why NULL).
 */
struct srs *srs_new(const char *domain, const char *secrets, size_t len,
		    const char **why);
void srs_free(struct srs *srs);

/* The rewriting domain, lower case. */
const char *srs_domain(const struct srs *srs);
size_t srs_secret_count(const struct srs *srs);

/*
 * The forwarding address of `sender` ("local@domain") at time `now`:
 * SRS0 for an ordinary address, SRS1 for one that is already an SRS0 or
 * SRS1 address of another forwarder. malloc'd; NULL with errno EINVAL
 * for a sender without '@', with an empty part or with '=' in its
 * domain, ENOMEM.
 */
char *srs_forward(const struct srs *srs, const char *sender, time_t now);

enum srs_result {
	SRS_OK,
	SRS_NOT_SRS,   /* not an SRS address of this domain */
	SRS_MALFORMED, /* "SRS0=" of this domain, but fields missing */
	SRS_BAD_HASH,  /* no secret gives that hash */
	SRS_EXPIRED,   /* older than SRS_MAX_AGE_DAYS (or from the future) */
	SRS_NO_MEMORY,
};

/*
 * Undo a rewriting: `address` ("local@domain") is checked against the
 * secrets and the time; on SRS_OK *original is the address it stands
 * for (malloc'd): the sender's own for SRS0, the first forwarder's SRS0
 * address for SRS1. The tag, the hash and the timestamp are compared
 * without regard to case, as libsrs2 does, and the hash in constant
 * time.
 */
enum srs_result srs_reverse(const struct srs *srs, const char *address,
			    time_t now, char **original);

/* "ok", "not_srs", "malformed", "bad_hash", "expired", "no_memory". */
const char *srs_result_name(enum srs_result result);

#endif
