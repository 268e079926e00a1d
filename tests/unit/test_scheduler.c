/*
 * The scheduler's retry arithmetic. The queue's behaviour as a whole is
 * tested on the wire (tests/integration): here, the pure backoff rule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "facteur/scheduler.h"

static void test_backoff_starts_at_retry_min(void **state)
{
	(void)state;
	assert_int_equal(scheduler_backoff(60, 3600, 1), 60);
}

static void test_backoff_doubles_each_attempt(void **state)
{
	(void)state;
	assert_int_equal(scheduler_backoff(60, 3600, 2), 120);
	assert_int_equal(scheduler_backoff(60, 3600, 3), 240);
	assert_int_equal(scheduler_backoff(60, 3600, 6), 1920);
}

static void test_backoff_is_capped_by_retry_max(void **state)
{
	(void)state;
	assert_int_equal(scheduler_backoff(60, 3600, 7), 3600);
	assert_int_equal(scheduler_backoff(60, 3600, 1000), 3600);
	assert_int_equal(scheduler_backoff(1, 2, 4000000000u), 2);
}

static void test_backoff_zero_attempts_is_retry_min(void **state)
{
	(void)state;
	assert_int_equal(scheduler_backoff(30, 3600, 0), 30);
}

static void test_backoff_equal_bounds_is_constant(void **state)
{
	(void)state;
	for (unsigned i = 1; i < 50; i++)
		assert_int_equal(scheduler_backoff(300, 300, i), 300);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff_starts_at_retry_min),
		cmocka_unit_test(test_backoff_doubles_each_attempt),
		cmocka_unit_test(test_backoff_is_capped_by_retry_max),
		cmocka_unit_test(test_backoff_zero_attempts_is_retry_min),
		cmocka_unit_test(test_backoff_equal_bounds_is_constant),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
