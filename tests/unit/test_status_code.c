/* Unit tests of the enhanced status code table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "facteur/status_code.h"

static void test_status_code_every_row_is_well_formed(void **state)
{
	(void)state;
	for (int c = 0; c < STATUS_CODE_COUNT; c++) {
		const struct status_code_def *d =
		    status_code_def((enum status_code)c);
		unsigned cls, subject, detail;
		char end;
		assert_non_null(d->code);
		assert_non_null(d->text);
		if (sscanf(d->code, "%u.%u.%u%c", &cls, &subject, &detail,
			   &end) != 3)
			fail_msg("row %d: \"%s\"", c, d->code);
		assert_int_equal(cls, (unsigned)d->class);
		assert_true(subject <= 999 && detail <= 999);
		for (int o = 0; o < c; o++)
			if (strcmp(status_code_str((enum status_code)o),
				   d->code) == 0)
				fail_msg("%s listed twice", d->code);
	}
}

static void test_status_code_names(void **state)
{
	(void)state;
	assert_string_equal(status_code_str(STATUS_OK), "2.0.0");
	assert_string_equal(status_code_str(STATUS_BAD_MAILBOX), "5.1.1");
	assert_string_equal(status_code_str(STATUS_NO_ANSWER), "4.4.1");
	assert_string_equal(status_code_str(STATUS_LOOP), "5.4.6");
	assert_string_equal(status_code_str(STATUS_LOOP_TRANSIENT), "4.4.6");
	assert_string_equal(status_code_str(STATUS_NULL_MX), "5.1.10");
	assert_string_equal(status_code_def(STATUS_EXPIRED)->text,
			    "Delivery time expired");
	assert_int_equal(status_code_def(STATUS_LOCAL_ERROR)->class,
			 STATUS_CLASS_TRANSIENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_status_code_every_row_is_well_formed),
	    cmocka_unit_test(test_status_code_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
