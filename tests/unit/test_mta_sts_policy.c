/*
 * Unit tests of the MTA-STS policy parser, the TXT record parser and MX
 * matching (RFC 8461 §3.1, §3.2, §4.1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "facteur/mta_sts_policy.h"

static int parse(const char *text, struct mta_sts_policy *p, char *err)
{
	return mta_sts_policy_parse(text, strlen(text), p, err, 160);
}

static void test_mta_sts_policy_enforce_with_crlf_lines(void **state)
{
	(void)state;
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(parse("version: STSv1\r\nmode: enforce\r\n"
			       "mx: mx1.Example.test\r\nmx: *.mail.example."
			       "test\r\nmax_age: 86400\r\n",
			       &p, err),
			 0);
	assert_int_equal(p.mode, MTA_STS_MODE_ENFORCE);
	assert_int_equal(p.max_age, 86400);
	assert_int_equal(p.mx_count, 2);
	assert_string_equal(p.mx[0], "mx1.example.test");
	assert_string_equal(p.mx[1], "*.mail.example.test");
	mta_sts_policy_clear(&p);
}

static void test_mta_sts_policy_lf_lines_and_unknown_fields(void **state)
{
	(void)state;
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(parse("version:STSv1\nmode: testing\n"
			       "future_field: anything at all\n"
			       "mx: mx.example.test\nmax_age: 0",
			       &p, err),
			 0);
	assert_int_equal(p.mode, MTA_STS_MODE_TESTING);
	assert_int_equal(p.max_age, 0);
	assert_int_equal(p.mx_count, 1);
	mta_sts_policy_clear(&p);
}

static void test_mta_sts_policy_mode_none_needs_no_mx(void **state)
{
	(void)state;
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(
	    parse("version: STSv1\nmode: none\nmax_age: 31557600\n", &p, err),
	    0);
	assert_int_equal(p.mode, MTA_STS_MODE_NONE);
	assert_int_equal(p.max_age, 31557600);
	mta_sts_policy_clear(&p);
}

static void expect_invalid(const char *text, const char *why)
{
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(parse(text, &p, err), -1);
	assert_non_null(strstr(err, why));
	assert_int_equal(p.mx_count, 0);
	mta_sts_policy_clear(&p);
}

static void test_mta_sts_policy_refuses_bad_fields(void **state)
{
	(void)state;
	expect_invalid("version: STSv2\nmode: enforce\nmx: a.test\n"
		       "max_age: 1\n",
		       "version");
	expect_invalid("version: STSv1\nmode: Enforce\nmx: a.test\n"
		       "max_age: 1\n",
		       "mode");
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: 31557601\n",
		       "max_age");
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: -1\n",
		       "max_age");
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: 99999999999\n",
		       "max_age");
	expect_invalid("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx");
	expect_invalid("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version");
	expect_invalid("version: STSv1\nmx: a.test\nmax_age: 1\n", "no mode");
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.test\n",
		       "no max_age");
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.*.test\n"
		       "max_age: 1\n",
		       "mx");
	expect_invalid("version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n",
		       "mx");
	expect_invalid("<html>not a policy</html>\n", "key: value");
}

static void test_mta_sts_policy_refuses_non_utf8_and_oversize(void **state)
{
	(void)state;
	expect_invalid("version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: 1\nnote: caf\xe9\n",
		       "UTF-8");
	size_t big = MTA_STS_POLICY_SIZE_MAX + 1;
	char *text = malloc(big);
	assert_non_null(text);
	memset(text, '\n', big);
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(mta_sts_policy_parse(text, big, &p, err, sizeof err),
			 -1);
	assert_non_null(strstr(err, "larger"));
	free(text);
}

static void test_mta_sts_policy_first_of_a_repeated_field_counts(void **state)
{
	(void)state;
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(parse("version: STSv1\nmode: testing\nmode: enforce\n"
			       "mx: a.test\nmax_age: 5\nmax_age: 9\n",
			       &p, err),
			 0);
	assert_int_equal(p.mode, MTA_STS_MODE_TESTING);
	assert_int_equal(p.max_age, 5);
	mta_sts_policy_clear(&p);
}

static void test_mta_sts_mx_wildcard_covers_one_label(void **state)
{
	(void)state;
	struct mta_sts_policy p;
	char err[160] = "";
	assert_int_equal(parse("version: STSv1\nmode: enforce\n"
			       "mx: *.example.test\nmx: mx.other.test\n"
			       "max_age: 60\n",
			       &p, err),
			 0);
	assert_true(mta_sts_policy_mx_matches(&p, "mx1.example.test"));
	assert_true(mta_sts_policy_mx_matches(&p, "MX1.EXAMPLE.TEST."));
	assert_true(mta_sts_policy_mx_matches(&p, "mx.other.test"));
	assert_false(mta_sts_policy_mx_matches(&p, "example.test"));
	assert_false(mta_sts_policy_mx_matches(&p, "a.b.example.test"));
	assert_false(mta_sts_policy_mx_matches(&p, "xexample.test"));
	assert_false(mta_sts_policy_mx_matches(&p, "mx.other.test.evil"));
	assert_false(mta_sts_policy_mx_matches(&p, "a.mx.other.test"));
	mta_sts_policy_clear(&p);
}

static void test_mta_sts_txt_record(void **state)
{
	(void)state;
	char id[MTA_STS_ID_MAX + 1];
	const char *ok = "v=STSv1; id=20260101T000000;";
	assert_int_equal(mta_sts_txt_parse(ok, strlen(ok), id), 1);
	assert_string_equal(id, "20260101T000000");
	const char *bare = "v=STSv1;id=abc";
	assert_int_equal(mta_sts_txt_parse(bare, strlen(bare), id), 1);
	assert_string_equal(id, "abc");
	const char *ext = "v=STSv1; ext=1; id=x9";
	assert_int_equal(mta_sts_txt_parse(ext, strlen(ext), id), 1);
	assert_string_equal(id, "x9");
	const char *spf = "v=spf1 -all";
	assert_int_equal(mta_sts_txt_parse(spf, strlen(spf), id), 0);
	const char *no_id = "v=STSv1;";
	assert_int_equal(mta_sts_txt_parse(no_id, strlen(no_id), id), -1);
	const char *bad_id = "v=STSv1; id=with-dash";
	assert_int_equal(mta_sts_txt_parse(bad_id, strlen(bad_id), id), -1);
	const char *long_id = "v=STSv1; id=123456789012345678901234567890123";
	assert_int_equal(mta_sts_txt_parse(long_id, strlen(long_id), id), -1);
	const char *v10 = "v=STSv10; id=1";
	assert_int_equal(mta_sts_txt_parse(v10, strlen(v10), id), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mta_sts_policy_enforce_with_crlf_lines),
	    cmocka_unit_test(test_mta_sts_policy_lf_lines_and_unknown_fields),
	    cmocka_unit_test(test_mta_sts_policy_mode_none_needs_no_mx),
	    cmocka_unit_test(test_mta_sts_policy_refuses_bad_fields),
	    cmocka_unit_test(test_mta_sts_policy_refuses_non_utf8_and_oversize),
	    cmocka_unit_test(
		test_mta_sts_policy_first_of_a_repeated_field_counts),
	    cmocka_unit_test(test_mta_sts_mx_wildcard_covers_one_label),
	    cmocka_unit_test(test_mta_sts_txt_record),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
