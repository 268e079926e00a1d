/* Unit tests of the growing buffer and the text builder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/text.h"

static void test_buffer_grow_doubles_from_first_up_to_max(void **state)
{
	(void)state;
	char *buf = NULL;
	size_t cap = 0;
	assert_int_equal(buffer_grow(&buf, &cap, 10, 16, 1000), 0);
	assert_int_equal(cap, 16);
	assert_int_equal(buffer_grow(&buf, &cap, 16, 16, 1000), 0);
	assert_int_equal(cap, 16); /* enough already: untouched */
	assert_int_equal(buffer_grow(&buf, &cap, 100, 16, 1000), 0);
	assert_int_equal(cap, 128);
	/* Doubling would pass the bound: the bound, if it is enough. */
	assert_int_equal(buffer_grow(&buf, &cap, 700, 16, 1000), 0);
	assert_int_equal(cap, 1000);
	/* More than the bound: ENOMEM, the buffer as it was. */
	char *before = buf;
	errno = 0;
	assert_int_equal(buffer_grow(&buf, &cap, 1001, 16, 1000), -1);
	assert_int_equal(errno, ENOMEM);
	assert_ptr_equal(buf, before);
	assert_int_equal(cap, 1000);
	errno = 0;
	assert_int_equal(buffer_grow(&buf, &cap, SIZE_MAX, 16, SIZE_MAX), -1);
	assert_int_equal(errno, ENOMEM);
	free(buf);
}

static void test_text_add_str_fmt(void **state)
{
	(void)state;
	struct text t = {0};
	text_str(&t, "size ");
	text_fmt(&t, "%d", 4096);
	text_add(&t, "\nabc", 2); /* only "\na" */
	size_t len = 0;
	char *s = text_finish(&t, &len);
	assert_string_equal(s, "size 4096\na");
	assert_int_equal(len, 11);
	free(s);

	/* Longer than any stack buffer, and growing past the first
	 * capacities. */
	struct text big = {0};
	char word[300];
	memset(word, 'x', sizeof word - 1);
	word[sizeof word - 1] = '\0';
	for (int i = 0; i < 20; i++)
		text_fmt(&big, "%s%d", word, i);
	s = text_finish(&big, &len);
	assert_non_null(s);
	assert_int_equal(len, 20 * 299 + 10 + 2 * 10);
	assert_int_equal(strlen(s), len);
	assert_memory_equal(s + 299, "0", 1);
	assert_string_equal(s + len - 2, "19");
	free(s);
}

static void test_text_finish_of_nothing_is_empty_not_null(void **state)
{
	(void)state;
	struct text t = {0};
	size_t len = 99;
	char *s = text_finish(&t, &len);
	assert_non_null(s);
	assert_string_equal(s, "");
	assert_int_equal(len, 0);
	free(s);
}

static void test_text_failure_sticks_and_finish_reports_it(void **state)
{
	(void)state;
	struct text t = {0};
	text_str(&t, "start");
	t.failed = true; /* as after an allocation failure */
	text_str(&t, " more");
	assert_int_equal(t.len, 5);
	errno = 0;
	assert_null(text_finish(&t, NULL));
	assert_int_equal(errno, ENOMEM);
	assert_null(t.p);
}

static char *value(const char *s)
{
	struct text t = {0};
	text_value(&t, s);
	return text_finish(&t, NULL);
}

static void test_text_value_escapes_what_breaks_a_token(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {NULL, "-"},
	    {"", "-"},
	    {"-", "+2D"},
	    {"--", "--"},
	    {"alice@example.org", "alice@example.org"},
	    {"a b", "a+20b"},
	    {"x=1+2", "x+3D1+2B2"},
	    {"line\r\nnext", "line+0D+0Anext"},
	    {"tab\there\x7f", "tab+09here+7F"},
	    {"d\xc3\xa9j\xc3\xa0", "d\xc3\xa9j\xc3\xa0"}, /* UTF-8 as is */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *got = value(cases[i].in);
		assert_string_equal(got, cases[i].out);
		free(got);
	}
	assert_true(text_octet_needs_escape(' '));
	assert_true(text_octet_needs_escape('+'));
	assert_true(text_octet_needs_escape('='));
	assert_true(text_octet_needs_escape(0x00));
	assert_true(text_octet_needs_escape(0x7f));
	assert_false(text_octet_needs_escape('-'));
	assert_false(text_octet_needs_escape(0x80));
}

#define LIT(s) (s), (sizeof(s) - 1)

static void test_xtext_decode_edge_cases(void **state)
{
	(void)state;
	char out[32];
	struct {
		const char *in;
		int want; /* decoded length, -1 for malformed */
	} cases[] = {
	    {"a+2Bb", 3},  /* upper-case hex */
	    {"a+2bb", -1}, /* lower-case hex: RFC 3461 hexchar is upper */
	    {"a+", -1},	   /* '+' at the end */
	    {"a+2", -1},   /* one digit only */
	    {"+G0", -1},   /* '+' followed by non-hex */
	    {"+-1", -1},      {"a=b", -1}, /* '=' must be escaped */
	    {"a b", -1},		   /* space */
	    {"a\tb", -1},		   /* control */
	    {"a\x7f", -1},		   /* DEL */
	    {"+00", -1},		   /* NUL cannot live in a C string */
	    {"+3D+20+2B", 3}, {"", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int n = text_xtext_decode(cases[i].in, strlen(cases[i].in), out,
					  sizeof out, 0);
		if (n != cases[i].want)
			fail_msg("\"%s\": %d, not %d", cases[i].in, n,
				 cases[i].want);
	}
	assert_int_equal(
	    text_xtext_decode(LIT("+3D+20+2B"), out, sizeof out, 0), 3);
	assert_string_equal(out, "= +");
}

static void test_xtext_8bit_only_when_asked(void **state)
{
	(void)state;
	char out[16];
	assert_int_equal(
	    text_xtext_decode(LIT("caf\xc3\xa9"), out, sizeof out, 0), -1);
	assert_int_equal(text_xtext_decode(LIT("caf\xc3\xa9+2D"), out,
					   sizeof out, TEXT_XTEXT_8BIT),
			 6);
	assert_string_equal(out, "caf\xc3\xa9-");
	/* Still no space, '=' or NUL in the 8-bit form. */
	assert_int_equal(
	    text_xtext_decode(LIT("a b"), out, sizeof out, TEXT_XTEXT_8BIT),
	    -1);
	assert_int_equal(
	    text_xtext_decode(LIT("+00"), out, sizeof out, TEXT_XTEXT_8BIT),
	    -1);
}

static void test_xtext_decodes_in_place(void **state)
{
	(void)state;
	char buf[] = "hello+20world+2B";
	assert_int_equal(text_xtext_decode(buf, strlen(buf), buf, sizeof buf,
					   TEXT_XTEXT_8BIT),
			 12);
	assert_string_equal(buf, "hello world+");
}

static void test_xtext_valid_is_the_syntax_alone(void **state)
{
	(void)state;
	assert_true(text_xtext_valid(LIT("rfc822;a+2Bb@example.org")));
	assert_true(text_xtext_valid(LIT("+00"))); /* syntax, not a string */
	assert_false(text_xtext_valid(LIT("+2b")));
	assert_false(text_xtext_valid(LIT("a+")));
	assert_false(text_xtext_valid(LIT("a=b")));
	assert_false(text_xtext_valid(LIT("\xc3\xa9")));
}

static void test_text_value_round_trips_through_the_8bit_decoder(void **state)
{
	(void)state;
	const char *raw = "a b=c+d\te\x7f\xc3\xa9-";
	struct text t = {0};
	text_value(&t, raw);
	size_t len = 0;
	char *enc = text_finish(&t, &len);
	assert_non_null(enc);
	char dec[64];
	assert_int_equal(
	    text_xtext_decode(enc, len, dec, sizeof dec, TEXT_XTEXT_8BIT),
	    (int)strlen(raw));
	assert_string_equal(dec, raw);
	free(enc);
}

static void test_text_dup_copies_a_range_nul_included(void **state)
{
	(void)state;
	char *s = text_dup("ab\0cd", 5);
	assert_non_null(s);
	assert_memory_equal(s, "ab\0cd", 6);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_buffer_grow_doubles_from_first_up_to_max),
	    cmocka_unit_test(test_text_add_str_fmt),
	    cmocka_unit_test(test_text_finish_of_nothing_is_empty_not_null),
	    cmocka_unit_test(test_text_failure_sticks_and_finish_reports_it),
	    cmocka_unit_test(test_text_value_escapes_what_breaks_a_token),
	    cmocka_unit_test(test_text_dup_copies_a_range_nul_included),
	    cmocka_unit_test(test_xtext_decode_edge_cases),
	    cmocka_unit_test(test_xtext_8bit_only_when_asked),
	    cmocka_unit_test(test_xtext_decodes_in_place),
	    cmocka_unit_test(test_xtext_valid_is_the_syntax_alone),
	    cmocka_unit_test(
		test_text_value_round_trips_through_the_8bit_decoder),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
