/*
 * DKIM signing: the relaxed canonicalisation and the signature, checked
 * against values made by independent implementations (RFC 8463's
 * example, and dkimpy for the relaxed forms and a whole signature), and
 * the key loader's refusals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>

#include "facteur/config.h"
#include "facteur/dkim.h"
#include "facteur/dkim_keygen.h"
#include "support.h"

/* RFC 8463 appendix A's Ed25519 key (RFC 8032 §7.1 test 1's seed). */
static const unsigned char rfc8463_seed[32] = {
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a,
    0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32,
    0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
};

static EVP_PKEY *rfc8463_key(void)
{
	EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(
	    EVP_PKEY_ED25519, NULL, rfc8463_seed, sizeof rfc8463_seed);
	assert_non_null(pkey);
	return pkey;
}

/* The message fed in pieces of `step` octets (1 finds state carried
 * wrongly across calls). */
static struct dkim_message *read_message(const char *text, size_t step)
{
	struct dkim_message *m = dkim_message_new();
	size_t len = strlen(text);

	assert_non_null(m);
	for (size_t i = 0; i < len; i += step)
		dkim_message_feed(m, text + i, len - i < step ? len - i : step);
	dkim_message_finish(m);
	return m;
}

static void assert_body_hash(const char *message, const char *expected)
{
	static const size_t steps[] = {1, 2, 3, 7, 4096};

	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		struct dkim_message *m = read_message(message, steps[i]);
		assert_string_equal(dkim_message_body_hash(m), expected);
		dkim_message_free(m);
	}
}

/* RFC 8463 appendix A: the signature of its example (simple/simple,
 * header fields as they stand) made with its key. */
static void test_dkim_ed25519_signs_the_rfc8463_example(void **state)
{
	(void)state;
	const char *data =
	    "From: Joe SixPack <joe@football.example.com>\r\n"
	    "To: Suzie Q <suzie@shopping.example.net>\r\n"
	    "Subject: Is dinner ready?\r\n"
	    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
	    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
	    "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; \r\n"
	    " d=football.example.com; i=@football.example.com; \r\n"
	    " q=dns/txt; s=brisbane; t=1518460054; h=from : to : \r\n"
	    " subject : date : message-id : from : subject : date; \r\n"
	    " bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; \r\n"
	    " b=";
	char out[DKIM_SIGNATURE_B64_MAX];
	EVP_PKEY *pkey = rfc8463_key();

	assert_int_equal(dkim_sign_data(pkey, DKIM_ED25519_SHA256, data,
					strlen(data), out, sizeof out),
			 0);
	assert_string_equal(out, "9/dsDChY0YMTtD5Eyw3wx7x22BlSJP7M5ECbJ7GWrR45"
				 "nXlTCGb8l0YBo0wBLR++X5LqmsxXaOYLLJe46l10AQ"
				 "==");
	EVP_PKEY_free(pkey);
}

#define HEAD "From: a@example.com\r\n\r\n"

/* Expected values from dkimpy's Relaxed.canonicalize_body. */
static void test_dkim_empty_body_hashes_as_nothing(void **state)
{
	(void)state;
	assert_body_hash(HEAD, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	assert_body_hash("From: a@example.com\r\n",
			 "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	assert_body_hash(HEAD "\r\n\r\n\r\n",
			 "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

static void test_dkim_body_spaces_fold_and_trailing_lines_go(void **state)
{
	(void)state;
	/* RFC 6376 §3.4.5's example */
	assert_body_hash(HEAD " C \r\nD \t E\r\n\r\n\r\n",
			 "unak6JHq0wL+Q1HP7dW1tjBx9FLA6DffoZ0qrLwbbpo=");
	assert_body_hash(HEAD "Hello  world \r\n\t\r\n  \r\n",
			 "yGIXoM91E1DiKjvCBcC8NlWyw54TdfMQ08sdtwtOO4I=");
}

/* A line longer than the hashing buffer goes to the digest whole. */
static void test_dkim_body_long_runs_are_hashed_whole(void **state)
{
	(void)state;
	size_t head = strlen(HEAD), len = head + 20000 + 5;
	char *text = malloc(len + 1);

	assert_non_null(text);
	memcpy(text, HEAD, head);
	memset(text + head, 'x', 20000);
	memcpy(text + head + 20000, "  y\r\n", 6);
	assert_body_hash(text, "zz/2CgQEnoX0DzqNRmLl6Sdfj+18kUluEJiNkQyAoRM=");
	free(text);
}

static void test_dkim_body_keeps_inner_empty_lines(void **state)
{
	(void)state;
	assert_body_hash(HEAD "a\r\n\r\n\r\nb\r\n\r\n",
			 "SFh8erZISrt6Jo0tTtk8EO/1BfDisAl/Ht6k37OJmgk=");
}

static void test_dkim_body_without_final_line_end_gets_one(void **state)
{
	(void)state;
	assert_body_hash(HEAD "abc",
			 "VSuraGTHp7aaUC7RhUuSRcDhow8AiqoLKB2mJYX9sCU=");
}

static void test_dkim_body_8bit_is_hashed_as_is(void **state)
{
	(void)state;
	assert_body_hash(HEAD "caf\xc3\xa9 \xc3\xa0  la\tcarte\r\n",
			 "/YJIhDZY4TdmGL91mRFlKxLL3Q+1ebPYsAmfm/h+ots=");
}

/* A body of millions of empty lines is a count, not a buffer: the hash
 * is that of an empty body. */
static void test_dkim_many_trailing_lines_are_counted(void **state)
{
	(void)state;
	struct dkim_message *m = dkim_message_new();
	char block[4096];

	for (size_t i = 0; i < sizeof block; i += 2)
		memcpy(block + i, "\r\n", 2);
	dkim_message_feed(m, HEAD, strlen(HEAD));
	for (int i = 0; i < 2048; i++) /* 4 million lines */
		dkim_message_feed(m, block, sizeof block);
	dkim_message_finish(m);
	assert_string_equal(dkim_message_body_hash(m),
			    "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	dkim_message_free(m);
}

static enum dkim_from from_of(const char *message, const char **domain)
{
	static char copy[256];
	struct dkim_message *m = read_message(message, 5);
	enum dkim_from from = dkim_message_from(m, domain);

	if (*domain != NULL) {
		snprintf(copy, sizeof copy, "%s", *domain);
		*domain = copy;
	}
	dkim_message_free(m);
	return from;
}

static void test_dkim_from_domain_is_found(void **state)
{
	(void)state;
	const char *domain;

	assert_int_equal(from_of("fROM: \"Joe <x@y.z>\" <joe@Sub.Example.COM>"
				 "\r\n\r\nhi\r\n",
				 &domain),
			 DKIM_FROM_ONE);
	assert_string_equal(domain, "sub.example.com");
	assert_int_equal(
	    from_of("From:\r\n joe@example.org (Joe)\r\n\r\n", &domain),
	    DKIM_FROM_ONE);
	assert_string_equal(domain, "example.org");
}

static void test_dkim_from_none_several_or_bad(void **state)
{
	(void)state;
	const char *domain;

	assert_int_equal(from_of("To: a@b.c\r\n\r\nFrom: x@y.z\r\n", &domain),
			 DKIM_FROM_NONE);
	assert_int_equal(
	    from_of("From: a@b.c\r\nTo: x@y.z\r\nFROM: c@d.e\r\n\r\n", &domain),
	    DKIM_FROM_SEVERAL);
	assert_int_equal(from_of("From: nobody\r\n\r\n", &domain),
			 DKIM_FROM_BAD);
	assert_null(domain);
	assert_string_equal(dkim_from_reason(DKIM_FROM_SEVERAL),
			    "several-from");
}

static void test_dkim_huge_signed_field_is_refused(void **state)
{
	(void)state;
	size_t n = DKIM_FIELD_MAX + 100;
	char *text = malloc(n + 64);
	const char *domain;

	strcpy(text, "From: a@example.com\r\nSubject: ");
	size_t at = strlen(text);
	memset(text + at, 'x', n);
	strcpy(text + at + n, "\r\n\r\nbody\r\n");
	assert_int_equal(from_of(text, &domain), DKIM_FROM_TOO_LARGE);
	free(text);
}

static void test_dkim_domain_covers_subdomains_only(void **state)
{
	(void)state;
	assert_true(dkim_domain_covers("example.com", "example.com"));
	assert_true(dkim_domain_covers("example.com", "a.b.EXAMPLE.com"));
	assert_false(dkim_domain_covers("example.com", "badexample.com"));
	assert_false(dkim_domain_covers("example.com", "example.co"));
}

/* A whole signature with a fixed t= and the deterministic Ed25519: the
 * expected field was checked by dkimpy (dkim.verify) with the RFC 8463
 * public key. Odd-case names, folding and repeated To are in it. */
static void test_dkim_signature_field_is_what_dkimpy_verifies(void **state)
{
	(void)state;
	const char *message =
	    "Received: from x by y; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
	    "FROM:  Joe  <joe@football.example.com>\r\n"
	    "to: a@example.net\r\n"
	    "SUBJECT: a long\r\n"
	    "\tfolded   subject \r\n"
	    "X-Other: not signed\r\n"
	    "To: b@example.net\r\n"
	    "\r\n"
	    "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\n\r\n";
	const char *expected =
	    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
	    "\td=football.example.com; s=brisbane; t=1700000000;\r\n"
	    "\th=from:from:to:to:subject;\r\n"
	    "\tbh=aB3JHhL6YfMiNbWX8XRnLJvbWmh93GDFE5RlKDnCXMM=;\r\n"
	    "\tb=LNsPTeIaovmhiTt+eQR+"
	    "V8WOSHYAT3dHMGjrqzp3SLHHZFYhHA4eVYnNXOZ5U76p"
	    "\r\n"
	    "\t izk3cIJj0RllxSHnJw/sDQ==\r\n";
	struct dkim_key key = {.domain = "football.example.com",
			       .selector = "brisbane",
			       .algorithm = DKIM_ED25519_SHA256,
			       .pkey = rfc8463_key()};
	struct dkim_message *m = read_message(message, 3);
	struct dkim_signing sg;

	assert_int_equal(dkim_signing_prepare(&sg, m, &key, 1700000000), 0);
	assert_int_equal(dkim_signing_run(&sg), 0);
	assert_string_equal(sg.header, expected);
	assert_string_equal(sg.label, "football.example.com/brisbane");
	dkim_signing_clear(&sg);
	dkim_message_free(m);
	EVP_PKEY_free(key.pkey);
}

/* Keys: a missing file, not a key, a short RSA key and a key of another
 * type are each refused with the line's origin. */
static char *write_key(EVP_PKEY *pkey)
{
	char path[] = "/tmp/test_dkim_keyXXXXXX";
	int fd = mkstemp(path);
	FILE *f;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(
	    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
	return strdup(path);
}

static void assert_key_refused(const char *file, const char *why)
{
	struct config_dkim_sign line = {"example.com", "sel", (char *)file,
					"x.conf:7"};
	struct config_errors errors = {0};

	assert_null(dkim_keys_load(&line, 1, &errors));
	assert_true(support_errors_contain(&errors, "x.conf:7: dkim_sign: "));
	assert_true(support_errors_contain(&errors, why));
	config_errors_clear(&errors);
}

static void test_dkim_bad_keys_are_configuration_errors(void **state)
{
	(void)state;
	char *junk = support_temp_file("not a key\n");
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)512);
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	char *small_file = write_key(small);
	char *ec_file = write_key(ec);

	assert_key_refused("/nonexistent/key.pem", "No such file");
	assert_key_refused(junk, "not a PEM private key");
	assert_key_refused(small_file, "RSA key of 512 bits");
	assert_key_refused(ec_file, "neither an RSA nor an Ed25519 key");
	unlink(junk);
	unlink(small_file);
	unlink(ec_file);
	free(junk);
	free(small_file);
	free(ec_file);
	EVP_PKEY_free(small);
	EVP_PKEY_free(ec);
}

static void test_dkim_good_keys_load_with_their_algorithm(void **state)
{
	(void)state;
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *ed = rfc8463_key();
	char *rsa_file = write_key(rsa);
	char *ed_file = write_key(ed);
	struct config_dkim_sign lines[] = {
	    {"Example.COM", "r", rsa_file, "x.conf:1"},
	    {"example.com", "e", ed_file, "x.conf:2"},
	};
	struct config_errors errors = {0};
	struct dkim_keys *keys = dkim_keys_load(lines, 2, &errors);

	assert_non_null(keys);
	assert_int_equal(keys->count, 2);
	assert_string_equal(keys->keys[0].domain, "example.com");
	assert_int_equal(keys->keys[0].algorithm, DKIM_RSA_SHA256);
	assert_int_equal(keys->keys[1].algorithm, DKIM_ED25519_SHA256);
	dkim_keys_free(keys);
	unlink(rsa_file);
	unlink(ed_file);
	free(rsa_file);
	free(ed_file);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ed);
}

/* The record's value is cut into strings of at most 255 octets, and
 * joined again it is the value. */
static void test_dkim_keygen_record_splits_long_values(void **state)
{
	(void)state;
	char p[600];
	char *rec;

	rec = dkim_keygen_record("example.com", "ed1", "ed25519", "QUJD");
	assert_string_equal(rec, "ed1._domainkey.example.com. IN TXT "
				 "\"v=DKIM1; k=ed25519; p=QUJD\"");
	free(rec);
	memset(p, 'A', sizeof p - 1);
	p[sizeof p - 1] = '\0';
	rec = dkim_keygen_record("example.com", "s", "rsa", p);
	const char *first = strchr(rec, '"');
	size_t total = 0, strings = 0;
	for (const char *q = first; q != NULL && *q == '"';) {
		const char *end = strchr(q + 1, '"');
		assert_non_null(end);
		assert_true(end - q - 1 <= 255);
		total += (size_t)(end - q - 1);
		strings++;
		q = end[1] == ' ' ? end + 2 : NULL;
	}
	assert_int_equal(strings, 3);
	assert_int_equal(total, strlen("v=DKIM1; k=rsa; p=") + strlen(p));
	assert_int_equal(strncmp(first, "\"v=DKIM1; k=rsa; p=AAA", 22), 0);
	free(rec);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dkim_ed25519_signs_the_rfc8463_example),
	    cmocka_unit_test(test_dkim_empty_body_hashes_as_nothing),
	    cmocka_unit_test(test_dkim_body_spaces_fold_and_trailing_lines_go),
	    cmocka_unit_test(test_dkim_body_long_runs_are_hashed_whole),
	    cmocka_unit_test(test_dkim_body_keeps_inner_empty_lines),
	    cmocka_unit_test(test_dkim_body_without_final_line_end_gets_one),
	    cmocka_unit_test(test_dkim_body_8bit_is_hashed_as_is),
	    cmocka_unit_test(test_dkim_many_trailing_lines_are_counted),
	    cmocka_unit_test(test_dkim_from_domain_is_found),
	    cmocka_unit_test(test_dkim_from_none_several_or_bad),
	    cmocka_unit_test(test_dkim_huge_signed_field_is_refused),
	    cmocka_unit_test(test_dkim_domain_covers_subdomains_only),
	    cmocka_unit_test(test_dkim_signature_field_is_what_dkimpy_verifies),
	    cmocka_unit_test(test_dkim_bad_keys_are_configuration_errors),
	    cmocka_unit_test(test_dkim_good_keys_load_with_their_algorithm),
	    cmocka_unit_test(test_dkim_keygen_record_splits_long_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
