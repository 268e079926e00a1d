/*
 * Unit tests of the Sender Rewriting Scheme. The expected addresses were
 * computed apart from facteur, with libsrs2's algorithm in Python:
 *
 *   import hmac, hashlib, base64
 *   B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
 *   def stamp(t): d = (t // 86400) % 1024; return B32[d >> 5] + B32[d & 31]
 *   def h(secret, *fields):
 *       m = hmac.new(secret.encode(),
 *                    b"".join(f.lower().encode() for f in fields),
 *                    hashlib.sha1).digest()
 *       return base64.b64encode(m).decode()[:4]
 *
 * At t = 1700000000 (day 19675, 219 modulo 1024) the stamp is "G3";
 * h("tops3cret", "G3", "example.org", "alice") is "GGBr".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/srs.h"

#define NOW ((time_t)1700000000)
#define DAY ((time_t)86400)
#define SECRET "tops3cret\n"

static struct srs *make(const char *secrets)
{
	const char *why = "unset";
	struct srs *srs =
	    srs_new("Fwd.Example.NET", secrets, strlen(secrets), &why);
	assert_non_null(srs);
	assert_null(why);
	return srs;
}

static void assert_forward(struct srs *srs, const char *sender, time_t now,
			   const char *want)
{
	char *got = srs_forward(srs, sender, now);
	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

static void assert_reverse(struct srs *srs, const char *address, time_t now,
			   enum srs_result want, const char *original)
{
	char *got = (char *)"unset";
	enum srs_result r = srs_reverse(srs, address, now, &got);
	if (r != want)
		fail_msg("%s: %s, not %s", address, srs_result_name(r),
			 srs_result_name(want));
	if (original == NULL) {
		assert_null(got);
		return;
	}
	assert_non_null(got);
	assert_string_equal(got, original);
	free(got);
}

static void test_srs_forward_matches_libsrs2_vectors(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	assert_string_equal(srs_domain(srs), "fwd.example.net");
	assert_forward(srs, "alice@example.org", NOW,
		       "SRS0=GGBr=G3=example.org=alice@fwd.example.net");
	/* The hash is over the lower-cased fields; the address keeps its
	 * case. */
	assert_forward(srs, "Bob.Smith@Example.COM", NOW,
		       "SRS0=mQjM=G3=Example.COM=Bob.Smith@fwd.example.net");
	srs_free(srs);
}

static void test_srs_forward_of_srs0_is_srs1(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	/* h("tops3cret", "other.example", "=HHHH=AB=orig.example=joe") */
	const char *srs1 = "SRS1=Q8WP=other.example==HHHH=AB=orig.example=joe"
			   "@fwd.example.net";
	assert_forward(srs, "SRS0=HHHH=AB=orig.example=joe@other.example", NOW,
		       srs1);
	/* An SRS1 keeps its first forwarder, with our hash. */
	assert_forward(srs,
		       "SRS1=zzzz=other.example==HHHH=AB=orig.example=joe"
		       "@third.example",
		       NOW, srs1);
	/* Its reverse is the first forwarder's SRS0 address. */
	assert_reverse(srs, srs1, NOW, SRS_OK,
		       "SRS0=HHHH=AB=orig.example=joe@other.example");
	srs_free(srs);
}

static void test_srs_round_trip_with_odd_local_parts(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	const char *senders[] = {"a@b", "x=y=z@example.org",
				 "\"quoted@local\"@example.org",
				 "SRS0@example.org", "srs1=@example.org"};
	for (size_t i = 0; i < sizeof senders / sizeof senders[0]; i++) {
		char *fwd = srs_forward(srs, senders[i], NOW);
		assert_non_null(fwd);
		char *back = NULL;
		enum srs_result r = srs_reverse(srs, fwd, NOW + DAY, &back);
		if (r != SRS_OK)
			fail_msg("%s -> %s: %s", senders[i], fwd,
				 srs_result_name(r));
		/* An SRS1 comes back as the first forwarder's address. */
		if (strncmp(fwd, "SRS0=", 5) == 0)
			assert_string_equal(back, senders[i]);
		free(back);
		free(fwd);
	}
	srs_free(srs);
}

static void test_srs_reverse_ignores_case(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	assert_reverse(srs, "SRS0=GGBr=G3=example.org=alice@fwd.example.net",
		       NOW, SRS_OK, "alice@example.org");
	/* Some relays lower-case the whole address; libsrs2 accepts it. */
	assert_reverse(srs, "srs0=ggbr=g3=EXAMPLE.org=Alice@FWD.example.net",
		       NOW, SRS_OK, "Alice@EXAMPLE.org");
	/* libsrs2 reads '+' and '-' after the tag too. */
	assert_reverse(srs, "SRS0+GGBr=G3=example.org=alice@fwd.example.net",
		       NOW, SRS_OK, "alice@example.org");
	srs_free(srs);
}

static void test_srs_reverse_refuses_forged_hash(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	assert_reverse(srs, "SRS0=GGBs=G3=example.org=alice@fwd.example.net",
		       NOW, SRS_BAD_HASH, NULL);
	assert_reverse(srs, "SRS0=GGBr=G3=example.org=mallory@fwd.example.net",
		       NOW, SRS_BAD_HASH, NULL);
	assert_reverse(srs, "SRS0=GGBr=G3=evil.example=alice@fwd.example.net",
		       NOW, SRS_BAD_HASH, NULL);
	/* Another secret makes other hashes. */
	struct srs *other = make("another secret\n");
	assert_reverse(other, "SRS0=GGBr=G3=example.org=alice@fwd.example.net",
		       NOW, SRS_BAD_HASH, NULL);
	srs_free(other);
	srs_free(srs);
}

static void test_srs_reverse_limits_age_to_21_days(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	const char *a = "SRS0=GGBr=G3=example.org=alice@fwd.example.net";
	assert_reverse(srs, a, NOW + 21 * DAY, SRS_OK, "alice@example.org");
	assert_reverse(srs, a, NOW + 22 * DAY, SRS_EXPIRED, NULL);
	/* A stamp from tomorrow reads as 1023 days old. */
	assert_reverse(srs, a, NOW - DAY, SRS_EXPIRED, NULL);
	/* The stamp wraps every 1024 days, as libsrs2's does. */
	assert_reverse(srs, a, NOW + 1024 * DAY, SRS_OK, "alice@example.org");
	srs_free(srs);
}

static void test_srs_old_secrets_still_reverse(void **state)
{
	(void)state;
	/* The first secret signs, the others only verify. */
	struct srs *srs = make("\r\n  new secret \r\n\ntops3cret\r\n");
	assert_int_equal(srs_secret_count(srs), 2);
	assert_reverse(srs, "SRS0=GGBr=G3=example.org=alice@fwd.example.net",
		       NOW, SRS_OK, "alice@example.org");
	char *fwd = srs_forward(srs, "alice@example.org", NOW);
	assert_non_null(fwd);
	assert_string_not_equal(
	    fwd, "SRS0=GGBr=G3=example.org=alice@fwd.example.net");
	free(fwd);
	srs_free(srs);
}

static void test_srs_reverse_tells_malformed_from_foreign(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	const char *foreign[] = {
	    "alice@fwd.example.net",
	    "SRS0=GGBr=G3=example.org=alice@elsewhere.example",
	    "SRS2=GGBr=G3=example.org=alice@fwd.example.net",
	    "SRS0",
	    "",
	    "SRS0=GGBr=G3=example.org=alice",
	};
	for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++)
		assert_reverse(srs, foreign[i], NOW, SRS_NOT_SRS, NULL);
	const char *broken[] = {
	    "SRS0=@fwd.example.net",
	    "SRS0=GGBr@fwd.example.net",
	    "SRS0=GGBr=G3@fwd.example.net",
	    "SRS0=GGBr=G3=example.org@fwd.example.net",
	    "SRS0=GGBr=G3=example.org=@fwd.example.net",
	    "SRS0==G3=example.org=alice@fwd.example.net",
	    "SRS0=GGB=G3=example.org=alice@fwd.example.net",
	    "SRS0=GGBr=G=example.org=alice@fwd.example.net",
	    "SRS0=GGBr=G1=example.org=alice@fwd.example.net",
	    "SRS0=GGBr=G3==alice@fwd.example.net",
	    "SRS1=Q8WP=other.example@fwd.example.net",
	    "SRS1=Q8WP==x@fwd.example.net",
	};
	for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++)
		assert_reverse(srs, broken[i], NOW, SRS_MALFORMED, NULL);
	srs_free(srs);
}

static void test_srs_forward_refuses_bad_senders(void **state)
{
	(void)state;
	struct srs *srs = make(SECRET);
	const char *bad[] = {"", "alice", "@example.org", "alice@",
			     "srs0+x=y@exa=mple.org"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		errno = 0;
		assert_null(srs_forward(srs, bad[i], NOW));
		assert_int_equal(errno, EINVAL);
	}
	srs_free(srs);
}

static void test_srs_new_needs_a_secret_and_a_domain(void **state)
{
	(void)state;
	const char *why = NULL;
	assert_null(srs_new("fwd.example", " \n\r\n\t\n", 6, &why));
	assert_non_null(why);
	why = NULL;
	assert_null(srs_new("fwd.example", "", 0, &why));
	assert_non_null(why);
	why = NULL;
	assert_null(srs_new("fwd.example", "a\0b", 3, &why));
	assert_non_null(why);
	why = NULL;
	assert_null(srs_new("", "secret", 6, &why));
	assert_non_null(why);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_srs_forward_matches_libsrs2_vectors),
	    cmocka_unit_test(test_srs_forward_of_srs0_is_srs1),
	    cmocka_unit_test(test_srs_round_trip_with_odd_local_parts),
	    cmocka_unit_test(test_srs_reverse_ignores_case),
	    cmocka_unit_test(test_srs_reverse_refuses_forged_hash),
	    cmocka_unit_test(test_srs_reverse_limits_age_to_21_days),
	    cmocka_unit_test(test_srs_old_secrets_still_reverse),
	    cmocka_unit_test(test_srs_reverse_tells_malformed_from_foreign),
	    cmocka_unit_test(test_srs_forward_refuses_bad_senders),
	    cmocka_unit_test(test_srs_new_needs_a_secret_and_a_domain),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
