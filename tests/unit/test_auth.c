/* Unit tests of the users file, crypt(3) checks, SASL PLAIN and base64. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <crypt.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/auth.h"
#include "support.h"

/* "secret5" under SHA-256 crypt, made with another implementation. */
static const char sha256_hash[] =
    "$5$saltsalt$708Qd1GA5FblAgceNooXo6mCmXw7DIUSz5IHtzs/2E6";

static void test_auth_users_parse_skips_comments_blanks_and_trims(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct auth_users *users =
	    auth_users_parse("# accounts\n"
			     "\n"
			     "   \t\n"
			     "alice@example.com:$6$x$y\n"
			     "  bob@Example.COM  :  $5$a$b  \r\n"
			     "  # indented comment\n"
			     "carol@example.org:$y$j9T$abc",
			     "users", &errors);
	assert_non_null(users);
	assert_int_equal(errors.count, 0);
	assert_int_equal(auth_users_count(users), 3);
	assert_true(auth_users_exists(users, "alice@example.com"));
	assert_true(auth_users_exists(users, "bob@example.com"));
	assert_true(auth_users_exists(users, "carol@example.org"));
	assert_false(auth_users_exists(users, "dave@example.com"));
	auth_users_free(users);
}

static void test_auth_users_lookup_ignores_case(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct auth_users *users =
	    auth_users_parse("Alice@Example.Com:$6$x$y\n", "users", &errors);
	assert_non_null(users);
	assert_true(auth_users_exists(users, "alice@example.com"));
	assert_true(auth_users_exists(users, "ALICE@EXAMPLE.COM"));
	assert_false(auth_users_exists(users, "alice@example.co"));
	assert_false(auth_users_exists(users, "alice@example.comm"));
	assert_false(auth_users_exists(users, ""));
	auth_users_free(users);
}

static void test_auth_users_hash_split_at_first_colon(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	/* Only the first ':' separates; the rest belongs to the hash, so the
	 * check below compares against "$5$saltsalt$...:extra". */
	char text[256];
	snprintf(text, sizeof text, "a@b:%s:extra\nc@d:%s\n", sha256_hash,
		 sha256_hash);
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	assert_false(auth_users_check(users, "a@b", "secret5"));
	assert_true(auth_users_check(users, "c@d", "secret5"));
	auth_users_free(users);
}

static void test_auth_users_errors_name_file_and_line(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct auth_users *users =
	    auth_users_parse("a@example.com:$6$x$y\n"
			     "# fine\n"
			     "no colon here\n"
			     "nobody:$6$x$y\n"
			     ":$6$x$y\n"
			     "A@EXAMPLE.COM:$6$x$z\n"
			     "e@example.com:\n"
			     "f@ex ample.com:$6$x$y\n",
			     "/etc/facteur/users", &errors);
	assert_null(users);
	assert_int_equal(errors.count, 6);
	assert_true(support_errors_contain(
	    &errors, "/etc/facteur/users:3: users_file: no ':'"));
	assert_true(support_errors_contain(&errors,
					   "/etc/facteur/users:4: users_file: "
					   "address without '@'"));
	assert_true(support_errors_contain(
	    &errors, "/etc/facteur/users:5: users_file: empty "
		     "address"));
	assert_true(support_errors_contain(
	    &errors, "/etc/facteur/users:6: users_file: duplicate "
		     "address a@example.com (first on line 1)"));
	assert_true(support_errors_contain(
	    &errors, "/etc/facteur/users:7: users_file: empty "
		     "hash"));
	assert_true(support_errors_contain(&errors,
					   "/etc/facteur/users:8: users_file: "
					   "blank or control character"));
	config_errors_clear(&errors);
}

static void test_auth_users_address_needs_local_part_and_domain(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	assert_null(auth_users_parse("@example.com:$6$x$y\n", "u", &errors));
	assert_null(auth_users_parse("alice@:$6$x$y\n", "u", &errors));
	assert_int_equal(errors.count, 2);
	assert_true(
	    support_errors_contain(&errors, "u:1: users_file: address needs"));
	config_errors_clear(&errors);
}

static void test_auth_users_empty_text_has_no_users(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse("", "u", &errors);
	assert_non_null(users);
	assert_int_equal(auth_users_count(users), 0);
	assert_false(auth_users_exists(users, "a@b"));
	assert_false(auth_users_check(users, "a@b", "x"));
	auth_users_free(users);
}

static void test_auth_users_load_reads_file(void **state)
{
	(void)state;
	char text[256];
	snprintf(text, sizeof text, "# users\nbob@example.com:%s\n",
		 sha256_hash);
	char *path = support_temp_file(text);

	struct config_errors errors = {0};
	struct auth_users *users = auth_users_load(path, &errors);
	assert_non_null(users);
	assert_int_equal(auth_users_count(users), 1);
	assert_true(auth_users_check(users, "Bob@Example.com", "secret5"));
	auth_users_free(users);

	/* Errors carry the path as the file name. */
	support_rewrite_file(path, "\nbroken\n");
	assert_null(auth_users_load(path, &errors));
	assert_int_equal(errors.count, 1);
	char expected[128];
	snprintf(expected, sizeof expected, "%s:2: users_file: no ':'", path);
	assert_true(support_errors_contain(&errors, expected));
	config_errors_clear(&errors);
	assert_int_equal(unlink(path), 0);
	free(path);
}

/* A NUL byte refuses its line wherever it is, a comment's included, as
 * in the aliases and senders files. */
static void test_auth_users_load_refuses_a_nul_byte_in_any_line(void **state)
{
	(void)state;
	char text[256];
	int len = snprintf(text, sizeof text, "# a%cb\nbob@example.com:%s\n",
			   '\0', sha256_hash);
	char *path = support_temp_file("");
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, (size_t)len, f), (size_t)len);
	assert_int_equal(fclose(f), 0);

	struct config_errors errors = {0};
	assert_null(auth_users_load(path, &errors));
	assert_int_equal(errors.count, 1);
	char expected[128];
	snprintf(expected, sizeof expected,
		 "%s:1: users_file: NUL byte in line", path);
	assert_string_equal(errors.messages[0], expected);
	config_errors_clear(&errors);
	assert_int_equal(unlink(path), 0);
	free(path);
}

static void test_auth_users_load_missing_file_is_an_error(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	assert_null(auth_users_load("/nonexistent/facteur/users", &errors));
	assert_int_equal(errors.count, 1);
	assert_true(support_errors_contain(&errors,
					   "/nonexistent/facteur/users: "
					   "users_file: cannot open"));
	config_errors_clear(&errors);
}

/* The check in two steps, the slow one meant for a worker thread. */
static void test_auth_users_hash_then_password_matches(void **state)
{
	(void)state;
	char text[256];
	snprintf(text, sizeof text, "bob@example.com:%s\n", sha256_hash);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	const char *hash = auth_users_hash(users, "BOB@example.com");
	assert_non_null(hash);
	assert_string_equal(hash, sha256_hash);
	assert_true(auth_password_matches(hash, "secret5"));
	assert_false(auth_password_matches(hash, "secret6"));
	assert_false(auth_password_matches(hash, NULL));
	/* No such user: no hash, and never a match. */
	assert_null(auth_users_hash(users, "carol@example.com"));
	assert_false(auth_password_matches(NULL, "secret5"));
	auth_users_free(users);
}

static void test_auth_users_hundred_thousand_lookups(void **state)
{
	(void)state;
	const size_t n = 100000;
	size_t cap = n * 40 + 1, len = 0;
	char *text = malloc(cap);
	assert_non_null(text);
	/* Written in descending order so that sorting is exercised. */
	for (size_t i = n; i-- > 0;)
		len +=
		    (size_t)snprintf(text + len, cap - len,
				     "user%zu@example.com:$6$s$h%zu\n", i, i);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "big", &errors);
	free(text);
	assert_non_null(users);
	assert_int_equal(auth_users_count(users), n);
	char addr[64];
	for (size_t i = 0; i < n; i += 997) {
		snprintf(addr, sizeof addr, "USER%zu@EXAMPLE.COM", i);
		assert_true(auth_users_exists(users, addr));
	}
	assert_false(auth_users_exists(users, "user100000@example.com"));
	assert_false(auth_users_exists(users, "user@example.com"));
	auth_users_free(users);
}

static void test_auth_hash_password_preferred_method_is_checkable(void **state)
{
	(void)state;
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	char *hash =
	    auth_hash_password_with("correct horse", AUTH_HASH_PREFERRED);

	/* libxcrypt's choice: yescrypt ("$y$") on Debian 12 */
	assert_non_null(crypt_gensalt_rn(NULL, 0, NULL, 0, salt, sizeof salt));
	assert_non_null(hash);
	size_t prefix = strcspn(salt + 1, "$") + 2;
	assert_memory_equal(hash, salt, prefix);
	char *again =
	    auth_hash_password_with("correct horse", AUTH_HASH_PREFERRED);
	assert_non_null(again);
	assert_string_not_equal(hash, again); /* a fresh salt each time */
	free(again);

	char text[512];
	snprintf(text, sizeof text, "alice@example.com:%s\n", hash);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	assert_true(
	    auth_users_check(users, "alice@example.com", "correct horse"));
	assert_false(
	    auth_users_check(users, "alice@example.com", "correct horsE"));
	auth_users_free(users);
	free(hash);

	hash = auth_hash_password_with("x", AUTH_HASH_SHA512);
	assert_non_null(hash);
	assert_memory_equal(hash, "$6$", 3);
	free(hash);
}

static void test_auth_hash_password_makes_checkable_sha512(void **state)
{
	(void)state;
	char *hash = auth_hash_password("correct horse");
	assert_non_null(hash);
	assert_memory_equal(hash, "$6$", 3);
	assert_true(strlen(hash) > 60);
	char *again = auth_hash_password("correct horse");
	assert_non_null(again);
	assert_string_not_equal(hash, again); /* a fresh salt each time */

	char text[512];
	snprintf(text, sizeof text,
		 "alice@example.com:%s\nbob@example.com:%s\n", hash, again);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	assert_true(
	    auth_users_check(users, "alice@example.com", "correct horse"));
	assert_true(
	    auth_users_check(users, "BOB@example.com", "correct horse"));
	assert_false(
	    auth_users_check(users, "alice@example.com", "correct horsE"));
	assert_false(auth_users_check(users, "alice@example.com", ""));
	assert_false(
	    auth_users_check(users, "alice@example.com", "correct horse "));
	assert_false(
	    auth_users_check(users, "carol@example.com", "correct horse"));
	auth_users_free(users);
	free(hash);
	free(again);
}

static void test_auth_check_accepts_sha256_hash(void **state)
{
	(void)state;
	char text[256];
	snprintf(text, sizeof text, "bob@example.com:%s\n", sha256_hash);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	assert_true(auth_users_check(users, "bob@example.com", "secret5"));
	assert_false(auth_users_check(users, "bob@example.com", "secret6"));
	auth_users_free(users);
}

static void test_auth_check_locked_hash_never_matches(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct auth_users *users =
	    auth_users_parse("locked@example.com:*\nbang@example.com:!\n"
			     "fail@example.com:*0\n",
			     "users", &errors);
	assert_non_null(users);
	const char *guesses[] = {"", "*", "!", "*0", "*1", "x"};
	for (size_t i = 0; i < sizeof guesses / sizeof guesses[0]; i++) {
		assert_false(
		    auth_users_check(users, "locked@example.com", guesses[i]));
		assert_false(
		    auth_users_check(users, "bang@example.com", guesses[i]));
		assert_false(
		    auth_users_check(users, "fail@example.com", guesses[i]));
	}
	auth_users_free(users);
}

static void test_auth_check_null_users_is_false(void **state)
{
	(void)state;
	assert_false(auth_users_check(NULL, "a@b", "x"));
	assert_false(auth_users_exists(NULL, "a@b"));
	assert_int_equal(auth_users_count(NULL), 0);
}

static int encode(const char *raw, size_t len, char *out, size_t outlen)
{
	return auth_base64_encode((const unsigned char *)raw, len, out, outlen);
}

static void test_auth_sasl_plain_without_authzid(void **state)
{
	(void)state;
	char b64[128], cid[64], pw[64];
	assert_true(encode("\0alice@example.com\0s3cret", 25, b64, sizeof b64) >
		    0);
	assert_int_equal(auth_sasl_plain_decode(b64, strlen(b64), cid,
						sizeof cid, pw, sizeof pw),
			 0);
	assert_string_equal(cid, "alice@example.com");
	assert_string_equal(pw, "s3cret");
}

static void test_auth_sasl_plain_rfc4616_example(void **state)
{
	(void)state;
	/* RFC 4616 §4: "\0tim\0tanstaaftanstaaf". */
	const char *b64 = "AHRpbQB0YW5zdGFhZnRhbnN0YWFm";
	char cid[64], pw[64];
	assert_int_equal(auth_sasl_plain_decode(b64, strlen(b64), cid,
						sizeof cid, pw, sizeof pw),
			 0);
	assert_string_equal(cid, "tim");
	assert_string_equal(pw, "tanstaaftanstaaf");
}

static void test_auth_sasl_plain_authzid_equal_to_authcid(void **state)
{
	(void)state;
	char b64[128], cid[64], pw[64];
	const char raw[] = "bob@example.com\0Bob@example.com\0pw";
	assert_true(encode(raw, sizeof raw - 1, b64, sizeof b64) > 0);
	assert_int_equal(auth_sasl_plain_decode(b64, strlen(b64), cid,
						sizeof cid, pw, sizeof pw),
			 0);
	assert_string_equal(cid, "Bob@example.com");
	assert_string_equal(pw, "pw");
}

static void test_auth_sasl_plain_refuses_bad_messages(void **state)
{
	(void)state;
	static const struct {
		const char *raw;
		size_t len;
	} cases[] = {
	    {"other@example.com\0bob@example.com\0pw", 36}, /* authzid */
	    {"\0bob@example.com", 16},			    /* one NUL */
	    {"bob@example.com", 15},			    /* no NUL */
	    {"\0\0pw", 4},				    /* no authcid */
	    {"\0bob\0", 5},				    /* no password */
	    {"\0bob\0pw\0extra", 13},			    /* third NUL */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char b64[128], cid[64], pw[64];
		assert_true(
		    encode(cases[i].raw, cases[i].len, b64, sizeof b64) > 0);
		assert_int_equal(auth_sasl_plain_decode(b64, strlen(b64), cid,
							sizeof cid, pw,
							sizeof pw),
				 -1);
	}
	char cid[64], pw[64];
	/* Not base64, or empty. */
	assert_int_equal(auth_sasl_plain_decode("AHRpbQB0YW5zdGFhZnRhbnN0YWF",
						27, cid, sizeof cid, pw,
						sizeof pw),
			 -1);
	assert_int_equal(
	    auth_sasl_plain_decode("", 0, cid, sizeof cid, pw, sizeof pw), -1);
	assert_int_equal(
	    auth_sasl_plain_decode("=", 1, cid, sizeof cid, pw, sizeof pw), -1);
}

static void test_auth_sasl_plain_refuses_what_does_not_fit(void **state)
{
	(void)state;
	const char *b64 = "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"; /* tim / 16 octets */
	char cid[4], pw[17];
	assert_int_equal(
	    auth_sasl_plain_decode(b64, strlen(b64), cid, 3, pw, sizeof pw),
	    -1);
	assert_int_equal(
	    auth_sasl_plain_decode(b64, strlen(b64), cid, sizeof cid, pw, 16),
	    -1);
	assert_int_equal(auth_sasl_plain_decode(b64, strlen(b64), cid,
						sizeof cid, pw, sizeof pw),
			 0);
	assert_string_equal(cid, "tim");
}

static void test_auth_base64_rfc4648_vectors(void **state)
{
	(void)state;
	static const char *const vectors[][2] = {
	    {"", ""},
	    {"f", "Zg=="},
	    {"fo", "Zm8="},
	    {"foo", "Zm9v"},
	    {"foob", "Zm9vYg=="},
	    {"fooba", "Zm9vYmE="},
	    {"foobar", "Zm9vYmFy"},
	};
	for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
		const char *raw = vectors[i][0], *b64 = vectors[i][1];
		char enc[16];
		unsigned char dec[16];
		assert_int_equal(encode(raw, strlen(raw), enc, sizeof enc),
				 (int)strlen(b64));
		assert_string_equal(enc, b64);
		assert_int_equal(
		    auth_base64_decode(b64, strlen(b64), dec, sizeof dec),
		    (int)strlen(raw));
		assert_memory_equal(dec, raw, strlen(raw));
	}
}

static void test_auth_base64_binary_round_trip(void **state)
{
	(void)state;
	unsigned char raw[256], dec[256];
	char enc[400];
	for (size_t i = 0; i < sizeof raw; i++)
		raw[i] = (unsigned char)(255 - i);
	for (size_t len = 0; len <= sizeof raw; len += 37) {
		int n = auth_base64_encode(raw, len, enc, sizeof enc);
		assert_int_equal(n, (int)((len + 2) / 3 * 4));
		assert_int_equal(
		    auth_base64_decode(enc, (size_t)n, dec, sizeof dec),
		    (int)len);
		assert_memory_equal(dec, raw, len);
	}
}

static void test_auth_base64_decode_is_strict(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "Zg",	/* missing padding */
	    "Zg=",	/* incomplete quantum */
	    "Zh==",	/* non-zero unused bits */
	    "Zm9=",	/* non-zero unused bits */
	    "Zg==Zg==", /* padding before the end */
	    "Z===",	/* too much padding */
	    "====",	/* only padding */
	    "=Zg=",	/* padding first */
	    "Zg=a",	/* data after padding */
	    "Zm9v\n",	/* line break */
	    "Zm 9",	/* space */
	    "Zm9-",	/* base64url alphabet */
	    "Zm9_",	/* base64url alphabet */
	    "Zm9v!!!!", /* junk */
	};
	unsigned char out[16];
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(
		    auth_base64_decode(bad[i], strlen(bad[i]), out, sizeof out),
		    -1);
}

static void test_auth_base64_respects_output_size(void **state)
{
	(void)state;
	unsigned char out[8];
	char enc[9];
	assert_int_equal(auth_base64_decode("Zm9vYmFy", 8, out, 5), -1);
	assert_int_equal(auth_base64_decode("Zm9vYmFy", 8, out, 6), 6);
	assert_int_equal(encode("foobar", 6, enc, 8), -1); /* no room for NUL */
	assert_int_equal(encode("foobar", 6, enc, 9), 8);
	assert_string_equal(enc, "Zm9vYmFy");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(
		test_auth_users_parse_skips_comments_blanks_and_trims),
	    cmocka_unit_test(test_auth_users_lookup_ignores_case),
	    cmocka_unit_test(test_auth_users_hash_split_at_first_colon),
	    cmocka_unit_test(test_auth_users_errors_name_file_and_line),
	    cmocka_unit_test(
		test_auth_users_address_needs_local_part_and_domain),
	    cmocka_unit_test(test_auth_users_empty_text_has_no_users),
	    cmocka_unit_test(test_auth_users_load_reads_file),
	    cmocka_unit_test(test_auth_users_load_missing_file_is_an_error),
	    cmocka_unit_test(
		test_auth_users_load_refuses_a_nul_byte_in_any_line),
	    cmocka_unit_test(test_auth_users_hash_then_password_matches),
	    cmocka_unit_test(test_auth_users_hundred_thousand_lookups),
	    cmocka_unit_test(test_auth_hash_password_makes_checkable_sha512),
	    cmocka_unit_test(
		test_auth_hash_password_preferred_method_is_checkable),
	    cmocka_unit_test(test_auth_check_accepts_sha256_hash),
	    cmocka_unit_test(test_auth_check_locked_hash_never_matches),
	    cmocka_unit_test(test_auth_check_null_users_is_false),
	    cmocka_unit_test(test_auth_sasl_plain_without_authzid),
	    cmocka_unit_test(test_auth_sasl_plain_rfc4616_example),
	    cmocka_unit_test(test_auth_sasl_plain_authzid_equal_to_authcid),
	    cmocka_unit_test(test_auth_sasl_plain_refuses_bad_messages),
	    cmocka_unit_test(test_auth_sasl_plain_refuses_what_does_not_fit),
	    cmocka_unit_test(test_auth_base64_rfc4648_vectors),
	    cmocka_unit_test(test_auth_base64_binary_round_trip),
	    cmocka_unit_test(test_auth_base64_decode_is_strict),
	    cmocka_unit_test(test_auth_base64_respects_output_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
