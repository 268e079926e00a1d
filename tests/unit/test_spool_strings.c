/* Interned strings: one copy a text, counted, gone with its last
 * reference, across the table's growth. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "facteur/spool_strings.h"

static void test_spool_strings_same_text_one_copy(void **state)
{
	(void)state;
	struct spool_strings *t = spool_strings_new();
	assert_non_null(t);
	char a[] = "connect to 127.0.0.1: Connection refused";
	char b[sizeof a];
	memcpy(b, a, sizeof a);
	const char *x = spool_strings_get(t, a);
	const char *y = spool_strings_get(t, b);
	assert_non_null(x);
	assert_ptr_equal(x, y);
	assert_ptr_not_equal(x, a);
	assert_string_equal(x, a);
	assert_int_equal(spool_strings_count(t), 1);
	const char *other = spool_strings_get(t, "ESMTP");
	assert_ptr_not_equal(other, x);
	assert_int_equal(spool_strings_count(t), 2);
	spool_strings_put(t, x);
	assert_int_equal(spool_strings_count(t), 2); /* y still holds it */
	assert_string_equal(y, a);
	spool_strings_put(t, y);
	assert_int_equal(spool_strings_count(t), 1);
	spool_strings_put(t, other);
	assert_int_equal(spool_strings_count(t), 0);
	spool_strings_free(t);
}

static void test_spool_strings_null_and_empty(void **state)
{
	(void)state;
	struct spool_strings *t = spool_strings_new();
	assert_non_null(t);
	assert_null(spool_strings_get(t, NULL));
	spool_strings_put(t, NULL);
	assert_int_equal(spool_strings_count(t), 0);
	const char *e = spool_strings_get(t, "");
	assert_non_null(e);
	assert_string_equal(e, "");
	assert_int_equal(spool_strings_count(t), 1);
	spool_strings_put(t, e);
	assert_int_equal(spool_strings_count(t), 0);
	spool_strings_free(t);
}

#define MANY 5000

/* Thousands of texts, each taken twice, survive the table's growth and
 * are found again; putting them back in another order empties it. */
static void test_spool_strings_many_texts_through_growth(void **state)
{
	(void)state;
	struct spool_strings *t = spool_strings_new();
	assert_non_null(t);
	static const char *got[MANY];
	char buf[64];
	for (size_t i = 0; i < MANY; i++) {
		snprintf(buf, sizeof buf, "relay%zu.example.net", i);
		got[i] = spool_strings_get(t, buf);
		assert_non_null(got[i]);
	}
	assert_int_equal(spool_strings_count(t), MANY);
	for (size_t i = 0; i < MANY; i++) {
		snprintf(buf, sizeof buf, "relay%zu.example.net", i);
		assert_ptr_equal(spool_strings_get(t, buf), got[i]);
	}
	assert_int_equal(spool_strings_count(t), MANY);
	for (size_t i = 0; i < MANY; i++)
		spool_strings_put(t, got[(i * 7) % MANY]);
	assert_int_equal(spool_strings_count(t), MANY);
	for (size_t i = MANY; i-- > 0;)
		spool_strings_put(t, got[i]);
	assert_int_equal(spool_strings_count(t), 0);
	spool_strings_free(t);
}

/* A table freed while texts of it are still held stays until the last
 * is put back (the sanitizer's leak check sees it go). */
static void test_spool_strings_freed_with_the_last_text(void **state)
{
	(void)state;
	struct spool_strings *t = spool_strings_new();
	assert_non_null(t);
	const char *a = spool_strings_get(t, "left behind");
	const char *b = spool_strings_get(t, "and another");
	spool_strings_free(t);
	assert_string_equal(a, "left behind");
	spool_strings_put(t, a);
	assert_int_equal(spool_strings_count(t), 1);
	assert_string_equal(b, "and another");
	spool_strings_put(t, b); /* the table goes with it */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_spool_strings_same_text_one_copy),
	    cmocka_unit_test(test_spool_strings_null_and_empty),
	    cmocka_unit_test(test_spool_strings_many_texts_through_growth),
	    cmocka_unit_test(test_spool_strings_freed_with_the_last_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
