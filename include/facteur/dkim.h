/*
 * DKIM signatures (RFC 6376, relaxed/relaxed; RFC 8463 for Ed25519).
 *
 * A message is read once, as it streams into the spool: the header
 * fields worth signing are kept in canonical form, the body is hashed as
 * it passes (its trailing empty lines held back as a count), so memory
 * stays bounded whatever the size. At the end, one signature is
 * prepared per key whose domain covers the From: domain; the private-key
 * step (dkim_signing_run) touches only what the signing owns, so it may
 * run on a helper thread. Everything here is pure but dkim_keys_load.
 */
#ifndef FACTEUR_DKIM_H
#define FACTEUR_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

struct config_dkim_sign;
struct config_errors;

enum dkim_algorithm {
	DKIM_RSA_SHA256,
	DKIM_ED25519_SHA256,
};

/* RSA keys shorter than this are refused (RFC 8301 §3.2). */
#define DKIM_RSA_MIN_BITS 1024

struct dkim_key {
	char *domain; /* lower case */
	char *selector;
	enum dkim_algorithm algorithm;
	EVP_PKEY *pkey;
};

struct dkim_keys {
	struct dkim_key *keys;
	size_t count;
};

/* Read every dkim_sign line's key file. NULL when a key is missing,
 * unreadable, neither RSA nor Ed25519, or RSA shorter than
 * DKIM_RSA_MIN_BITS: each such line adds "ORIGIN: dkim_sign: FILE: why"
 * to errors. With no line, an empty set. */
struct dkim_keys *dkim_keys_load(const struct config_dkim_sign *lines,
				 size_t count, struct config_errors *errors);
void dkim_keys_free(struct dkim_keys *keys);

/* Whether `domain` is `parent` or a subdomain of it (case-insensitive). */
bool dkim_domain_covers(const char *parent, const char *domain);

/* What the header section said about the author. */
enum dkim_from {
	DKIM_FROM_ONE,
	DKIM_FROM_NONE,
	DKIM_FROM_SEVERAL,
	DKIM_FROM_BAD,	     /* no domain found in it */
	DKIM_FROM_TOO_LARGE, /* the signed fields outgrew their bound */
};

/* Bounds on what is kept of the header section: one field, and all
 * the kept (signed) fields together. */
#define DKIM_FIELD_MAX ((size_t)64 << 10)
#define DKIM_HEADERS_MAX ((size_t)256 << 10)

struct dkim_message;

/* NULL when out of memory. */
struct dkim_message *dkim_message_new(void);
void dkim_message_free(struct dkim_message *m);
/* The message as stored (CRLF lines; a bare LF is taken as a line end
 * too), in pieces of any size. */
void dkim_message_feed(struct dkim_message *m, const char *buf, size_t len);
/* After the last octet: the body hash is final. */
void dkim_message_finish(struct dkim_message *m);
/* After finish: the From: verdict, and on DKIM_FROM_ONE its domain in
 * lower case (valid while m lives). */
enum dkim_from dkim_message_from(const struct dkim_message *m,
				 const char **domain);
/* A word for a verdict other than DKIM_FROM_ONE, for logs. */
const char *dkim_from_reason(enum dkim_from from);
/* The relaxed body hash (SHA-256), base64, after finish. */
const char *dkim_message_body_hash(const struct dkim_message *m);

/* One signature being made. */
struct dkim_signing {
	EVP_PKEY *pkey; /* a reference of the signing's own */
	enum dkim_algorithm algorithm;
	char *label;  /* "domain/selector", for logs */
	char *header; /* "DKIM-Signature: ...b=" until run, then whole */
	size_t header_len;
	char *data; /* the canonical header fields and signature field */
	size_t data_len;
	bool failed;
};

/* Build the signature field (t=now) and what it signs. 0, or -1 when
 * out of memory. */
int dkim_signing_prepare(struct dkim_signing *sg, const struct dkim_message *m,
			 const struct dkim_key *key, time_t now);
/* The private-key step: sg->header becomes the whole field, CRLF-ended.
 * Touches only sg. 0, or -1 (sg->failed) when the key operation fails. */
int dkim_signing_run(struct dkim_signing *sg);
void dkim_signing_clear(struct dkim_signing *sg);

/* Sign `len` octets with pkey as `algorithm` asks (rsa-sha256 over the
 * data; ed25519-sha256: Ed25519 over the data's SHA-256), the signature
 * in base64 into out (NUL-terminated). 0, or -1. */
int dkim_sign_data(EVP_PKEY *pkey, enum dkim_algorithm algorithm,
		   const char *data, size_t len, char *out, size_t outlen);

/* Room for dkim_sign_data's output, up to RSA-8192. */
#define DKIM_SIGNATURE_B64_MAX 1500

#endif
