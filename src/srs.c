/*
 * The Sender Rewriting Scheme (see srs.h): forward and reverse addresses
 * in libsrs2's format, with its hash, its day stamp and its leniency on
 * case. Secrets are wiped when freed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "facteur/ascii.h"
#include "facteur/srs.h"
#include "facteur/text.h"

#define SRS_HASH_LEN 4
#define SRS_STAMP_LEN 2
#define SRS_DAY (60 * 60 * 24)
/* Two base32 characters: the stamp wraps every 1024 days. */
#define SRS_STAMP_SLOTS 1024
/* The character between the tag and the hash: libsrs2 reads any of these
 * (and writes '='); the other fields are always separated by '='. */
#define SRS_TAG_SEPARATORS "=-+"

static const char base32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
static const char base64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

struct srs {
	char *domain;
	char **secrets; /* [0] signs */
	size_t secret_count;
};

const char *srs_domain(const struct srs *srs)
{
	return srs->domain;
}

size_t srs_secret_count(const struct srs *srs)
{
	return srs->secret_count;
}

void srs_free(struct srs *srs)
{
	if (srs == NULL)
		return;
	for (size_t i = 0; i < srs->secret_count; i++) {
		OPENSSL_cleanse(srs->secrets[i], strlen(srs->secrets[i]));
		free(srs->secrets[i]);
	}
	free(srs->secrets);
	free(srs->domain);
	free(srs);
}

static int add_secret(struct srs *srs, const char *s, size_t len)
{
	char **grown =
	    reallocarray(srs->secrets, srs->secret_count + 1, sizeof *grown);
	if (grown == NULL)
		return -1;
	srs->secrets = grown;
	if ((srs->secrets[srs->secret_count] = text_dup(s, len)) == NULL)
		return -1;
	srs->secret_count++;
	return 0;
}

struct srs *srs_new(const char *domain, const char *secrets, size_t len,
		    const char **why)
{
	*why = NULL;
	if (domain == NULL || domain[0] == '\0') {
		*why = "no rewriting domain";
		return NULL;
	}
	struct srs *srs = calloc(1, sizeof *srs);
	if (srs == NULL ||
	    (srs->domain = ascii_lower_dup(domain, strlen(domain))) == NULL) {
		srs_free(srs);
		return NULL;
	}
	const char *s = secrets, *end = secrets + len;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = (size_t)((nl != NULL ? nl : end) - s);
		const char *line = ascii_trim(s, &n, " \t\r");
		s = nl != NULL ? nl + 1 : end;
		if (n == 0)
			continue;
		if (memchr(line, '\0', n) != NULL) {
			*why = "a NUL byte in a secret";
			srs_free(srs);
			return NULL;
		}
		if (add_secret(srs, line, n) == -1) {
			srs_free(srs);
			return NULL;
		}
	}
	if (srs->secret_count == 0) {
		*why = "no secret in the file";
		srs_free(srs);
		return NULL;
	}
	return srs;
}

/* A field of an address, not NUL-terminated. */
struct span {
	const char *p;
	size_t n;
};

/*
 * The hash of `fields` with one secret: HMAC-SHA1 over the lower-cased
 * fields one after the other, the first SRS_HASH_LEN base64 characters
 * of it. -1 when out of memory.
 */
static int hash_fields(const char *secret, const struct span *fields,
		       size_t count, char out[SRS_HASH_LEN])
{
	size_t total = 0;
	for (size_t i = 0; i < count; i++)
		total += fields[i].n;
	unsigned char *data = malloc(total ? total : 1);
	if (data == NULL)
		return -1;
	size_t at = 0;
	for (size_t i = 0; i < count; i++)
		for (size_t j = 0; j < fields[i].n; j++)
			data[at++] = (unsigned char)ascii_lower(fields[i].p[j]);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	const unsigned char *ok = HMAC(EVP_sha1(), secret, (int)strlen(secret),
				       data, total, md, &md_len);
	free(data);
	if (ok == NULL || md_len < 3)
		return -1;
	/* Four base64 characters: the first 24 bits of the digest. */
	out[0] = base64[md[0] >> 2];
	out[1] = base64[(md[0] & 0x03) << 4 | md[1] >> 4];
	out[2] = base64[(md[1] & 0x0f) << 2 | md[2] >> 6];
	out[3] = base64[md[2] & 0x3f];
	return 0;
}

static void stamp_create(time_t now, char out[SRS_STAMP_LEN])
{
	unsigned day = (unsigned)((uint64_t)(now / SRS_DAY) % SRS_STAMP_SLOTS);
	out[0] = base32[day >> 5];
	out[1] = base32[day & 0x1f];
}

/* The day a stamp names, or -1 for a character outside base32. */
static int stamp_day(struct span stamp)
{
	if (stamp.n != SRS_STAMP_LEN)
		return -1;
	int day = 0;
	for (size_t i = 0; i < SRS_STAMP_LEN; i++) {
		const char *c = memchr(base32, ascii_upper(stamp.p[i]), 32);
		if (stamp.p[i] == '\0' || c == NULL)
			return -1;
		day = day << 5 | (int)(c - base32);
	}
	return day;
}

/* libsrs2's rule: the stamp is taken to be at most 1023 days old, so a
 * stamp from tomorrow reads as very old and fails. */
static bool stamp_fresh(int then, time_t now)
{
	long today = (long)((uint64_t)(now / SRS_DAY) % SRS_STAMP_SLOTS);
	while (today < then)
		today += SRS_STAMP_SLOTS;
	return today <= then + SRS_MAX_AGE_DAYS;
}

/* "SRS0" or "SRS1" and a separator starting a local part: the digit, or
 * 0 when the local part is not tagged. */
static char srs_tag(const char *local, size_t len)
{
	if (len < 5 || !ascii_ieq(local, 3, "SRS") ||
	    (local[3] != '0' && local[3] != '1') || local[4] == '\0' ||
	    strchr(SRS_TAG_SEPARATORS, local[4]) == NULL)
		return 0;
	return local[3];
}

/* Cut the next '='-terminated field off `rest`; false when there is no
 * '=' or the field is empty. */
static bool next_field(struct span *rest, struct span *field)
{
	const char *eq = memchr(rest->p, '=', rest->n);
	if (eq == NULL || eq == rest->p)
		return false;
	field->p = rest->p;
	field->n = (size_t)(eq - rest->p);
	rest->n -= field->n + 1;
	rest->p = eq + 1;
	return true;
}

/* The hash, the first forwarder and the rest of an SRS1 local part;
 * false when a field is missing. */
static bool srs1_split(struct span local, struct span *hash,
		       struct span *first_host, struct span *rest)
{
	*rest = (struct span){local.p + 5, local.n - 5};
	return next_field(rest, hash) && next_field(rest, first_host) &&
	       rest->n > 0;
}

/* Join the pieces into a new string. */
static char *join(const struct span *pieces, size_t count)
{
	struct text t = {0};
	for (size_t i = 0; i < count; i++)
		text_add(&t, pieces[i].p, pieces[i].n);
	size_t len;
	return text_finish(&t, &len);
}

#define SPAN(s) ((struct span){(s), strlen(s)})

static char *forward_srs0(const struct srs *srs, struct span local,
			  struct span host, time_t now)
{
	char hash[SRS_HASH_LEN];
	char stamp[SRS_STAMP_LEN];
	stamp_create(now, stamp);
	struct span fields[] = {{stamp, SRS_STAMP_LEN}, host, local};
	if (hash_fields(srs->secrets[0], fields, 3, hash) == -1)
		return NULL;
	struct span pieces[] = {SPAN("SRS0="), {hash, SRS_HASH_LEN},
				SPAN("="),     {stamp, SRS_STAMP_LEN},
				SPAN("="),     host,
				SPAN("="),     local,
				SPAN("@"),     SPAN(srs->domain)};
	return join(pieces, sizeof pieces / sizeof pieces[0]);
}

/* SRS1 names the first forwarder and keeps the rest of its address. */
static char *forward_srs1(const struct srs *srs, struct span first_host,
			  struct span rest)
{
	char hash[SRS_HASH_LEN];
	struct span fields[] = {first_host, rest};
	if (hash_fields(srs->secrets[0], fields, 2, hash) == -1)
		return NULL;
	struct span pieces[] = {SPAN("SRS1="), {hash, SRS_HASH_LEN},
				SPAN("="),     first_host,
				SPAN("="),     rest,
				SPAN("@"),     SPAN(srs->domain)};
	return join(pieces, sizeof pieces / sizeof pieces[0]);
}

char *srs_forward(const struct srs *srs, const char *sender, time_t now)
{
	const char *at = sender != NULL ? strrchr(sender, '@') : NULL;
	/* '=' separates the fields: a domain holding one (which no real
	 * domain does) could not be read back. */
	if (at == NULL || at == sender || at[1] == '\0' ||
	    strchr(at + 1, '=') != NULL) {
		errno = EINVAL;
		return NULL;
	}
	struct span local = {sender, (size_t)(at - sender)};
	struct span host = SPAN(at + 1);
	struct span rest, old_hash, first_host;
	char *out;

	char tag = srs_tag(local.p, local.n);
	if (tag == '0') {
		/* Another forwarder's SRS0: that forwarder becomes the first
		 * one, its address from the separator on kept whole. */
		rest = (struct span){local.p + 4, local.n - 4};
		out = forward_srs1(srs, host, rest);
	} else if (tag == '1' &&
		   srs1_split(local, &old_hash, &first_host, &rest)) {
		/* Already SRS1: the same first forwarder, our hash. */
		out = forward_srs1(srs, first_host, rest);
	} else {
		/* An ordinary address, or a broken SRS1 wrapped as one. */
		out = forward_srs0(srs, local, host, now);
	}
	if (out == NULL)
		errno = ENOMEM;
	return out;
}

/*
 * Whether one of the secrets gives `hash` over the fields. Case does not
 * matter (libsrs2 compares so, and some relays lower-case local parts);
 * every secret is tried and the comparison takes the same time whatever
 * the characters, so that timing tells nothing of the right hash.
 */
static enum srs_result hash_check(const struct srs *srs, struct span hash,
				  const struct span *fields, size_t count)
{
	if (hash.n < SRS_HASH_LEN)
		return SRS_MALFORMED;
	char given[SRS_HASH_LEN];
	for (size_t i = 0; i < SRS_HASH_LEN; i++)
		given[i] = ascii_lower(hash.p[i]);
	int matches = 0;
	for (size_t s = 0; s < srs->secret_count; s++) {
		char want[SRS_HASH_LEN];
		if (hash_fields(srs->secrets[s], fields, count, want) == -1)
			return SRS_NO_MEMORY;
		for (size_t i = 0; i < SRS_HASH_LEN; i++)
			want[i] = ascii_lower(want[i]);
		matches |= CRYPTO_memcmp(given, want, SRS_HASH_LEN) == 0;
	}
	return matches ? SRS_OK : SRS_BAD_HASH;
}

enum srs_result srs_reverse(const struct srs *srs, const char *address,
			    time_t now, char **original)
{
	*original = NULL;
	const char *at = address != NULL ? strrchr(address, '@') : NULL;
	if (at == NULL || !ascii_ieq_len(at + 1, strlen(at + 1), srs->domain,
					 strlen(srs->domain)))
		return SRS_NOT_SRS;
	size_t local_len = (size_t)(at - address);
	char tag = srs_tag(address, local_len);
	if (tag == 0)
		return SRS_NOT_SRS;
	struct span rest = {address + 5, local_len - 5};
	struct span hash, stamp, host;
	enum srs_result r;
	if (tag == '0') {
		if (!next_field(&rest, &hash) || !next_field(&rest, &stamp) ||
		    !next_field(&rest, &host) || rest.n == 0)
			return SRS_MALFORMED;
		int day = stamp_day(stamp);
		if (day < 0)
			return SRS_MALFORMED;
		struct span fields[] = {stamp, host, rest};
		if ((r = hash_check(srs, hash, fields, 3)) != SRS_OK)
			return r;
		if (!stamp_fresh(day, now))
			return SRS_EXPIRED;
		struct span pieces[] = {rest, SPAN("@"), host};
		*original = join(pieces, 3);
	} else {
		struct span local = {address, local_len};
		if (!srs1_split(local, &hash, &host, &rest))
			return SRS_MALFORMED;
		struct span fields[] = {host, rest};
		if ((r = hash_check(srs, hash, fields, 2)) != SRS_OK)
			return r;
		struct span pieces[] = {SPAN("SRS0"), rest, SPAN("@"), host};
		*original = join(pieces, 4);
	}
	return *original != NULL ? SRS_OK : SRS_NO_MEMORY;
}

const char *srs_result_name(enum srs_result result)
{
	switch (result) {
	case SRS_OK:
		return "ok";
	case SRS_NOT_SRS:
		return "not_srs";
	case SRS_MALFORMED:
		return "malformed";
	case SRS_BAD_HASH:
		return "bad_hash";
	case SRS_EXPIRED:
		return "expired";
	case SRS_NO_MEMORY:
		break;
	}
	return "no_memory";
}
