/* Unit tests of the RFC 5322 date. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/mailtime.h"

static void test_mailtime_utc(void **state)
{
	(void)state;
	char buf[MAILTIME_BUF];
	setenv("TZ", "UTC", 1);
	tzset();
	mailtime_format(1700000000, buf, sizeof buf);
	assert_string_equal(buf, "Tue, 14 Nov 2023 22:13:20 +0000");
	mailtime_format(0, buf, sizeof buf);
	assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 +0000");
}

static void test_mailtime_local_offset(void **state)
{
	(void)state;
	char buf[MAILTIME_BUF];
	setenv("TZ", "<-0530>5:30", 1);
	tzset();
	mailtime_format(1700000000, buf, sizeof buf);
	assert_string_equal(buf, "Tue, 14 Nov 2023 16:43:20 -0530");
	setenv("TZ", "UTC", 1);
	tzset();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mailtime_utc),
	    cmocka_unit_test(test_mailtime_local_offset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
