/* Unit tests of host name syntax. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "facteur/hostname.h"

static void test_hostname_valid_accepts_ldh_labels(void **state)
{
	(void)state;
	const char *good[] = {"a", "example.org", "mx-1.example.org", "0.test",
			      "XN--BCHER-KVA.example"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
		if (!hostname_valid(good[i], strlen(good[i])))
			fail_msg("\"%s\" refused", good[i]);
}

static void test_hostname_valid_refuses(void **state)
{
	(void)state;
	const char *bad[] = {"",      ".",    "a.",	      ".a",
			     "a..b",  "-a.b", "a-.b",	      "a.b-",
			     "a_b.c", "a b",  "b\xc3\xbc.de", "[1.2.3.4]"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (hostname_valid(bad[i], strlen(bad[i])))
			fail_msg("\"%s\" accepted", bad[i]);
}

static void test_hostname_valid_lengths(void **state)
{
	(void)state;
	char name[HOSTNAME_MAX + 2];
	memset(name, 'a', HOSTNAME_LABEL_MAX);
	assert_true(hostname_valid(name, HOSTNAME_LABEL_MAX));
	name[HOSTNAME_LABEL_MAX] = 'a';
	assert_false(hostname_valid(name, HOSTNAME_LABEL_MAX + 1));
	/* 253 octets: labels of 49 and dots. */
	for (size_t i = 0; i < sizeof name; i++)
		name[i] = i % 50 == 49 ? '.' : 'a';
	assert_true(hostname_valid(name, HOSTNAME_MAX));
	assert_false(hostname_valid(name, HOSTNAME_MAX + 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hostname_valid_accepts_ldh_labels),
	    cmocka_unit_test(test_hostname_valid_refuses),
	    cmocka_unit_test(test_hostname_valid_lengths),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
