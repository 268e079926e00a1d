/*
 * listener: what counts as one client for max_connections_per_ip (and
 * the failed-login limit): an IPv4 address, or an IPv6 network of
 * ipv6_prefix_length bits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "facteur/listener.h"

static struct sockaddr_in6 v6(const char *text)
{
	struct sockaddr_in6 sa;
	memset(&sa, 0, sizeof sa);
	sa.sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, text, &sa.sin6_addr), 1);
	return sa;
}

static struct sockaddr_in v4(const char *text)
{
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, text, &sa.sin_addr), 1);
	return sa;
}

static bool same_client(const char *a, const char *b, unsigned prefix)
{
	struct sockaddr_in6 x = v6(a), y = v6(b);
	uint8_t kx[16], ky[16];
	listener_client_key((struct sockaddr *)&x, prefix, kx);
	listener_client_key((struct sockaddr *)&y, prefix, ky);
	return memcmp(kx, ky, 16) == 0;
}

static void test_listener_ipv6_same_64_is_one_client(void **state)
{
	(void)state;
	assert_true(same_client("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", 64));
	assert_true(same_client("::1", "::2", 64));
}

static void test_listener_ipv6_other_64_is_another_client(void **state)
{
	(void)state;
	assert_false(same_client("2001:db8:1:2::1", "2001:db8:1:3::1", 64));
}

static void test_listener_ipv6_prefix_128_counts_each_address(void **state)
{
	(void)state;
	assert_false(same_client("2001:db8::1", "2001:db8::2", 128));
	assert_true(same_client("2001:db8::1", "2001:db8::1", 128));
}

static void test_listener_ipv6_prefix_not_on_a_byte(void **state)
{
	(void)state;
	/* /60: the low nibble of the 8th octet is host bits. */
	assert_true(same_client("2001:db8:0:10::1", "2001:db8:0:1f::1", 60));
	assert_false(same_client("2001:db8:0:10::1", "2001:db8:0:20::1", 60));
	assert_true(same_client("8000::", "ffff::", 1));
	assert_false(same_client("0::", "8000::", 1));
}

static void test_listener_ipv4_mapped_is_not_masked(void **state)
{
	(void)state;
	assert_false(same_client("::ffff:192.0.2.1", "::ffff:192.0.2.2", 64));
}

static void test_listener_ipv4_and_mapped_count_together(void **state)
{
	(void)state;
	struct sockaddr_in a = v4("192.0.2.1");
	struct sockaddr_in6 b = v6("::ffff:192.0.2.1");
	struct sockaddr_in c = v4("192.0.2.2");
	uint8_t ka[16], kb[16], kc[16];
	listener_client_key((struct sockaddr *)&a, 64, ka);
	listener_client_key((struct sockaddr *)&b, 64, kb);
	listener_client_key((struct sockaddr *)&c, 64, kc);
	assert_memory_equal(ka, kb, 16);
	assert_memory_not_equal(ka, kc, 16);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_listener_ipv6_same_64_is_one_client),
	    cmocka_unit_test(test_listener_ipv6_other_64_is_another_client),
	    cmocka_unit_test(test_listener_ipv6_prefix_128_counts_each_address),
	    cmocka_unit_test(test_listener_ipv6_prefix_not_on_a_byte),
	    cmocka_unit_test(test_listener_ipv4_mapped_is_not_masked),
	    cmocka_unit_test(test_listener_ipv4_and_mapped_count_together),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
