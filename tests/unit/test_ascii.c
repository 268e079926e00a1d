/* Unit tests of ASCII case folding: the locale never matters, and octets
 * above 0x7f are left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"

static void test_ascii_lower_folds_letters_only(void **state)
{
	(void)state;
	assert_int_equal(ascii_lower('A'), 'a');
	assert_int_equal(ascii_lower('Z'), 'z');
	assert_int_equal(ascii_lower('a'), 'a');
	assert_int_equal(ascii_lower('@'), '@');
	assert_int_equal(ascii_lower('['), '[');
	assert_int_equal(ascii_lower((char)0xc9), (char)0xc9);
	assert_int_equal(ascii_upper('q'), 'Q');
	assert_int_equal(ascii_upper('{'), '{');
}

static void test_ascii_ieq_needs_the_whole_literal(void **state)
{
	(void)state;
	assert_true(ascii_ieq("StartTLS", 8, "starttls"));
	assert_true(ascii_ieq("AUTH", 4, "auth"));
	assert_true(ascii_ieq("auth", 4, "AUTH"));
	assert_false(ascii_ieq("AUT", 3, "auth"));
	assert_false(ascii_ieq("AUTHX", 5, "auth"));
	assert_true(ascii_ieq("", 0, ""));
	assert_true(ascii_ieq_len("Ab", 2, "aB", 2));
	assert_false(ascii_ieq_len("Ab", 2, "aBc", 3));
	assert_false(ascii_ieq_len("\xc9", 1, "\xe9", 1));
}

static void test_ascii_lower_copies_and_in_place(void **state)
{
	(void)state;
	char *s = ascii_lower_dup("Bob@Example.ORG tail", 15);
	assert_non_null(s);
	assert_string_equal(s, "bob@example.org");
	free(s);
	char buf[] = "MiXeD\xc3\x89";
	ascii_lower_in_place(buf, strlen(buf));
	assert_string_equal(buf, "mixed\xc3\x89");
}

static void test_ascii_classes(void **state)
{
	(void)state;
	assert_true(ascii_is_ldh('-'));
	assert_true(ascii_is_ldh('7'));
	assert_false(ascii_is_ldh('_'));
	assert_false(ascii_is_alnum((char)0xe9));
	assert_true(ascii_is_digit('0'));
	assert_false(ascii_is_alpha('0'));
}

static void test_ascii_trim_takes_the_set_off_both_ends(void **state)
{
	(void)state;
	size_t len = 8;
	const char *s = ascii_trim(" \tkey \r\n", &len, ASCII_LINE_BLANKS);
	assert_int_equal(len, 6); /* the LF is not in the set */
	assert_memory_equal(s, "key \r\n", 6);
	len = 7;
	s = ascii_trim(" \tkey \r", &len, ASCII_LINE_BLANKS);
	assert_int_equal(len, 3);
	assert_memory_equal(s, "key", 3);
	len = 7;
	s = ascii_trim("\t a b\r ", &len, " \t");
	assert_int_equal(len, 4);
	assert_memory_equal(s, "a b\r", 4);
	len = 3;
	s = ascii_trim(" \t ", &len, " \t");
	assert_int_equal(len, 0);
}

static void test_ascii_has_blank_or_control(void **state)
{
	(void)state;
	assert_false(ascii_has_blank_or_control("a@b.test", 8));
	assert_false(ascii_has_blank_or_control("caf\xc3\xa9", 5));
	assert_false(ascii_has_blank_or_control("", 0));
	assert_true(ascii_has_blank_or_control("a b", 3));
	assert_true(ascii_has_blank_or_control("a\tb", 3));
	assert_true(ascii_has_blank_or_control("a\x7f", 2));
	assert_true(ascii_has_blank_or_control("a\0b", 3));
	/* Only the octets given count. */
	assert_false(ascii_has_blank_or_control("ab c", 2));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ascii_lower_folds_letters_only),
	    cmocka_unit_test(test_ascii_ieq_needs_the_whole_literal),
	    cmocka_unit_test(test_ascii_lower_copies_and_in_place),
	    cmocka_unit_test(test_ascii_classes),
	    cmocka_unit_test(test_ascii_trim_takes_the_set_off_both_ends),
	    cmocka_unit_test(test_ascii_has_blank_or_control),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
