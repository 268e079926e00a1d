/* libFuzzer: an arbitrary message through the DKIM canonicaliser and
 * header reader. Fed whole and in pieces (the first octet chooses their
 * size), it must give the same body hash, From: verdict and signed
 * data; a From: domain found must be a valid host name. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dkim.h"
#include "facteur/hostname.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const unsigned char seed[32] = {1, 2, 3, 4, 5, 6, 7, 8};

static struct dkim_message *read_in(const char *text, size_t len, size_t step)
{
	struct dkim_message *m = dkim_message_new();

	if (m == NULL)
		abort();
	for (size_t i = 0; i < len; i += step)
		dkim_message_feed(m, text + i, len - i < step ? len - i : step);
	dkim_message_finish(m);
	return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static EVP_PKEY *pkey;
	struct dkim_signing a, b;
	const char *da, *db;

	if (size < 1)
		return 0;
	if (pkey == NULL)
		pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL,
						    seed, sizeof seed);
	size_t step = (size_t)data[0] % 17 + 1;
	const char *text = (const char *)data + 1;
	struct dkim_message *whole = read_in(text, size - 1, size);
	struct dkim_message *pieces = read_in(text, size - 1, step);
	enum dkim_from fa = dkim_message_from(whole, &da);
	enum dkim_from fb = dkim_message_from(pieces, &db);

	if (fa != fb || strcmp(dkim_message_body_hash(whole),
			       dkim_message_body_hash(pieces)) != 0)
		abort();
	if (fa == DKIM_FROM_ONE) {
		if (strcmp(da, db) != 0 || !hostname_valid(da, strlen(da)))
			abort();
		struct dkim_key key = {"example.com", "s", DKIM_ED25519_SHA256,
				       pkey};
		if (dkim_signing_prepare(&a, whole, &key, 1) != 0 ||
		    dkim_signing_prepare(&b, pieces, &key, 1) != 0)
			abort();
		if (a.data_len != b.data_len ||
		    memcmp(a.data, b.data, a.data_len) != 0 ||
		    dkim_signing_run(&a) != 0)
			abort();
		dkim_signing_clear(&a);
		dkim_signing_clear(&b);
	}
	dkim_message_free(whole);
	dkim_message_free(pieces);
	return 0;
}
