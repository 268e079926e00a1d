/* Unit tests of the bounded whole-file read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/wholefile.h"
#include "support.h"

static void test_wholefile_reads_all_nul_terminated(void **state)
{
	(void)state;
	char *path = support_temp_file("line one\nline two\n");
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(
	    wholefile_read(path, 1024, WHOLEFILE_REGULAR, &text, &len),
	    WHOLEFILE_OK);
	assert_int_equal(len, 18);
	assert_string_equal(text, "line one\nline two\n");
	free(text);

	support_rewrite_file(path, "");
	assert_int_equal(wholefile_read(path, 1024, 0, &text, &len),
			 WHOLEFILE_OK);
	assert_int_equal(len, 0);
	assert_string_equal(text, "");
	wholefile_free_secret(text, len);
	unlink(path);
	free(path);
}

static void test_wholefile_bounds_and_failures(void **state)
{
	(void)state;
	char *path = support_temp_file("0123456789");
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(wholefile_read(path, 10, 0, &text, &len),
			 WHOLEFILE_OK);
	free(text);
	errno = 0;
	assert_int_equal(wholefile_read(path, 9, 0, &text, &len),
			 WHOLEFILE_TOO_LARGE);
	assert_int_equal(errno, EFBIG);
	unlink(path);
	assert_int_equal(wholefile_read(path, 10, 0, &text, &len),
			 WHOLEFILE_OPEN);
	assert_int_equal(errno, ENOENT);
	free(path);

	assert_int_equal(
	    wholefile_read("/tmp", 10, WHOLEFILE_REGULAR, &text, &len),
	    WHOLEFILE_NOT_REGULAR);
	assert_int_equal(wholefile_read("/tmp", 10, 0, &text, &len),
			 WHOLEFILE_READ);
	assert_int_equal(errno, EISDIR);
}

static void test_wholefile_replace_swaps_the_whole_file(void **state)
{
	(void)state;
	char *path = support_temp_file("old contents\n");
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(wholefile_replace(path, "new\n", 4), 0);
	assert_int_equal(wholefile_read(path, 64, 0, &text, &len),
			 WHOLEFILE_OK);
	assert_string_equal(text, "new\n");
	free(text);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.new", path);
	assert_int_equal(access(tmp, F_OK), -1);
	/* a folder that does not exist: -1, nothing left behind */
	assert_int_equal(wholefile_replace("/nonexistent/dir/f", "x", 1), -1);
	assert_int_equal(errno, ENOENT);
	unlink(path);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_wholefile_reads_all_nul_terminated),
	    cmocka_unit_test(test_wholefile_bounds_and_failures),
	    cmocka_unit_test(test_wholefile_replace_swaps_the_whole_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
