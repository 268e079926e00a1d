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

/* mailtime_format(t) in time zone tz (a POSIX TZ value) is `want`. */
static void assert_date(const char *tz, time_t t, const char *want)
{
	char buf[MAILTIME_BUF];

	assert_int_equal(setenv("TZ", tz, 1), 0);
	tzset();
	mailtime_format(t, buf, sizeof buf);
	assert_string_equal(buf, want);
}

static void test_mailtime_utc(void **state)
{
	(void)state;
	assert_date("UTC", 1700000000, "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_date("UTC", 0, "Thu, 01 Jan 1970 00:00:00 +0000");
}

static void test_mailtime_local_offset(void **state)
{
	(void)state;
	assert_date("<-0530>5:30", 1700000000,
		    "Tue, 14 Nov 2023 16:43:20 -0530");
	assert_date("<+1245>-12:45", 1700000000,
		    "Wed, 15 Nov 2023 10:58:20 +1245");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mailtime_utc),
	    cmocka_unit_test(test_mailtime_local_offset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
