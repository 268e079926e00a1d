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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_buffer_grow_doubles_from_first_up_to_max),
	    cmocka_unit_test(test_text_add_str_fmt),
	    cmocka_unit_test(test_text_finish_of_nothing_is_empty_not_null),
	    cmocka_unit_test(test_text_failure_sticks_and_finish_reports_it),
	    cmocka_unit_test(test_text_value_escapes_what_breaks_a_token),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
