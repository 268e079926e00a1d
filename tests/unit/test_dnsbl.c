/*
 * dnsbl: the reversed names asked of a blocklist zone (IPv4, IPv6,
 * IPv4-mapped IPv6) and which answers list a client under match=.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "facteur/dnsbl.h"

static int name_of(int family, const char *ip, const char *zone, char *out,
		   size_t len)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	ss.ss_family = (sa_family_t)family;
	void *at = family == AF_INET
		       ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
		       : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
	assert_int_equal(inet_pton(family, ip, at), 1);
	return dnsbl_query_name((struct sockaddr *)&ss, zone, out, len);
}

static void test_dnsbl_ipv4_name_is_reversed(void **state)
{
	(void)state;
	char name[256];
	assert_int_equal(name_of(AF_INET, "192.0.2.99", "zen.example.org", name,
				 sizeof name),
			 0);
	assert_string_equal(name, "99.2.0.192.zen.example.org");
	assert_int_equal(
	    name_of(AF_INET, "127.0.0.2", "bl.test", name, sizeof name), 0);
	assert_string_equal(name, "2.0.0.127.bl.test");
}

static void test_dnsbl_ipv6_name_is_nibbles(void **state)
{
	(void)state;
	char name[256];
	assert_int_equal(
	    name_of(AF_INET6, "2001:db8:1:2::ab", "bl.test", name, sizeof name),
	    0);
	assert_string_equal(name, "b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
				  "2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test");
}

static void test_dnsbl_mapped_ipv4_reads_as_ipv4(void **state)
{
	(void)state;
	char name[256];
	assert_int_equal(
	    name_of(AF_INET6, "::ffff:10.1.2.3", "bl.test", name, sizeof name),
	    0);
	assert_string_equal(name, "3.2.1.10.bl.test");
}

static void test_dnsbl_name_that_does_not_fit_fails(void **state)
{
	(void)state;
	char name[20];
	assert_int_equal(name_of(AF_INET, "192.0.2.99", "zen.example.org", name,
				 sizeof name),
			 -1);
	struct sockaddr_storage ss = {.ss_family = AF_UNIX};
	char big[256];
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&ss, "bl.test",
					  big, sizeof big),
			 -1);
}

static void test_dnsbl_match_filters_answers(void **state)
{
	(void)state;
	uint8_t match[2][4] = {{127, 0, 0, 2}, {127, 0, 0, 10}};
	struct config_dnsbl any = {.zone = "bl.test"};
	struct config_dnsbl some = {
	    .zone = "bl.test", .match = match, .match_count = 2};
	const unsigned char two[4] = {127, 0, 0, 2}, four[4] = {127, 0, 0, 4};
	assert_true(dnsbl_answer_lists(&any, four));
	assert_true(dnsbl_answer_lists(&some, two));
	assert_false(dnsbl_answer_lists(&some, four));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dnsbl_ipv4_name_is_reversed),
	    cmocka_unit_test(test_dnsbl_ipv6_name_is_nibbles),
	    cmocka_unit_test(test_dnsbl_mapped_ipv4_reads_as_ipv4),
	    cmocka_unit_test(test_dnsbl_name_that_does_not_fit_fails),
	    cmocka_unit_test(test_dnsbl_match_filters_answers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
