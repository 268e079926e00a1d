/* This host's own SMTP endpoints: which next hops are the daemon itself,
 * and which mail exchangers a host that is one of them may still use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/config.h"
#include "facteur/localaddr.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* "1.2.3.4" or "::1" as an address with the given port. */
static struct sockaddr_storage addr_of(const char *text, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
	} else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
	} else {
		fail_msg("bad address %s in the test", text);
	}
	return ss;
}

static struct listen_addr listen_of(const char *text)
{
	struct listen_addr la;
	if (config_parse_listen(text, false, &la) != 0)
		fail_msg("listen \"%s\" refused", text);
	return la;
}

static void free_listen(struct listen_addr *la, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(la[i].text);
}

static bool is_self(const struct localaddr_self *self, const char *addr,
		    uint16_t port)
{
	/* the address's own port is not what counts: give it another */
	struct sockaddr_storage ss = addr_of(addr, 9);
	return localaddr_is_self(self, &ss, port);
}

/* A next hop and whether it is this host. */
struct probe {
	const char *addr;
	uint16_t port;
	bool self;
};

/* With the listen entries `entries` and the interface addresses
 * `interfaces` (both NULL ended; interfaces may be NULL), each probe is
 * this host or not, as it says. */
static void check_probes(const char *const *entries,
			 const char *const *interfaces,
			 const struct probe *probes, size_t count)
{
	struct listen_addr la[4];
	struct sockaddr_storage ifs[4];
	struct localaddr_self self = {.listen = la, .interfaces = ifs};

	for (; entries[self.listen_count] != NULL; self.listen_count++) {
		assert_true(self.listen_count < COUNT_OF(la));
		la[self.listen_count] = listen_of(entries[self.listen_count]);
	}
	for (; interfaces != NULL && interfaces[self.interface_count] != NULL;
	     self.interface_count++) {
		assert_true(self.interface_count < COUNT_OF(ifs));
		ifs[self.interface_count] =
		    addr_of(interfaces[self.interface_count], 0);
	}
	for (size_t i = 0; i < count; i++) {
		if (is_self(&self, probes[i].addr, probes[i].port) !=
		    probes[i].self)
			fail_msg("%s port %u: want self %d", probes[i].addr,
				 (unsigned)probes[i].port, probes[i].self);
	}
	free_listen(la, self.listen_count);
}

static void test_localaddr_exact_listen_address_and_port_is_self(void **state)
{
	static const char *const entries[] = {"127.0.0.1:2525",
					      "[::1]:2526/submission", NULL};
	static const struct probe probes[] = {
	    {"127.0.0.1", 2525, true},
	    {"::1", 2526, true},
	    {"::ffff:127.0.0.1", 2525, true},
	};

	(void)state;
	check_probes(entries, NULL, probes, COUNT_OF(probes));
}

static void test_localaddr_same_address_other_port_is_not_self(void **state)
{
	static const char *const entries[] = {"127.0.0.1:2525", NULL};
	static const struct probe probes[] = {
	    {"127.0.0.1", 25, false},
	    {"127.0.0.1", 2526, false},
	};

	(void)state;
	check_probes(entries, NULL, probes, COUNT_OF(probes));
}

/* The integration tests run several daemons on 127.0.0.2, 127.0.0.3...
 * on one port: each is another server for the others. */
static void test_localaddr_other_loopback_address_is_not_self(void **state)
{
	static const char *const entries[] = {"127.0.0.1:2525", NULL};
	static const struct probe probes[] = {
	    {"127.0.0.2", 2525, false},
	    {"::1", 2525, false},
	    {"192.0.2.1", 2525, false},
	};

	(void)state;
	check_probes(entries, NULL, probes, COUNT_OF(probes));
}

static void test_localaddr_unspecified_target_is_loopback(void **state)
{
	static const char *const entries[] = {"127.0.0.1:25", "[::1]:25", NULL};
	static const struct probe probes[] = {
	    {"0.0.0.0", 25, true},
	    {"::", 25, true},
	    {"0.0.0.0", 26, false},
	};

	(void)state;
	check_probes(entries, NULL, probes, COUNT_OF(probes));
}

static void test_localaddr_wildcard_covers_loopback_and_interfaces(void **state)
{
	static const char *const entries[] = {"0.0.0.0:25", NULL};
	static const char *const interfaces[] = {"127.0.0.1", "192.0.2.10",
						 "2001:db8::10", NULL};
	static const struct probe probes[] = {
	    {"192.0.2.10", 25, true},
	    {"127.0.0.1", 25, true},
	    {"127.3.4.5", 25, true}, /* all of 127/8 */
	    {"::ffff:192.0.2.10", 25, true},
	    {"192.0.2.11", 25, false},
	    {"192.0.2.10", 587, false},
	    /* IPv4 wildcard: IPv6 addresses are not on this socket */
	    {"2001:db8::10", 25, false},
	    {"::1", 25, false},
	};

	(void)state;
	check_probes(entries, interfaces, probes, COUNT_OF(probes));
}

/* IPv6 listeners are IPv6 only: [::]:P does not take IPv4. */
static void test_localaddr_ipv6_wildcard_covers_ipv6_only(void **state)
{
	static const char *const entries[] = {"[::]:25", NULL};
	static const char *const interfaces[] = {"192.0.2.10", "2001:db8::10",
						 NULL};
	static const struct probe probes[] = {
	    {"2001:db8::10", 25, true},	 {"::1", 25, true},
	    {"2001:db8::11", 25, false}, {"192.0.2.10", 25, false},
	    {"127.0.0.1", 25, false},
	};

	(void)state;
	check_probes(entries, interfaces, probes, COUNT_OF(probes));
}

static void
test_localaddr_interfaces_needed_only_for_a_wildcard_on_the_port(void **state)
{
	(void)state;
	struct listen_addr la[] = {listen_of("127.0.0.1:25"),
				   listen_of("0.0.0.0:587/submission")};

	assert_false(localaddr_needs_interfaces(la, COUNT_OF(la), 25));
	assert_true(localaddr_needs_interfaces(la, COUNT_OF(la), 587));
	assert_false(localaddr_needs_interfaces(la, 0, 587));
	free_listen(la, COUNT_OF(la));
}

/* Mail exchangers: name, preference, one address each. */
struct mx {
	const char *name;
	unsigned preference;
	const char *addr;
};

static bool cutoff_of(const struct localaddr_self *self, const struct mx *mx,
		      size_t n, uint16_t port, unsigned *cutoff)
{
	struct dns_host hosts[8];
	struct sockaddr_storage addrs[8];
	assert_true(n <= COUNT_OF(hosts));
	for (size_t i = 0; i < n; i++) {
		addrs[i] = addr_of(mx[i].addr, 0);
		hosts[i].name = (char *)mx[i].name;
		hosts[i].preference = mx[i].preference;
		hosts[i].addrs = &addrs[i];
		hosts[i].addr_count = 1;
	}
	return localaddr_self_cutoff(self, hosts, n, port, cutoff);
}

static void test_localaddr_backup_mx_keeps_only_better_hosts(void **state)
{
	(void)state;
	struct listen_addr la[] = {listen_of("127.0.0.1:25")};
	struct localaddr_self self = {.listen = la, .listen_count = 1};
	const struct mx mx[] = {{"mx1", 10, "192.0.2.1"},
				{"mx2", 20, "127.0.0.1"},
				{"mx3", 20, "192.0.2.3"},
				{"mx4", 30, "192.0.2.4"}};
	unsigned cutoff = 0;

	assert_true(cutoff_of(&self, mx, COUNT_OF(mx), 25, &cutoff));
	assert_int_equal(cutoff, 20); /* mx1 alone remains */
	free_listen(la, COUNT_OF(la));
}

static void test_localaddr_best_mx_self_leaves_nothing(void **state)
{
	(void)state;
	struct listen_addr la[] = {listen_of("127.0.0.1:25")};
	struct localaddr_self self = {.listen = la, .listen_count = 1};
	/* the self host listed last of its preference: the cut is still at
	 * the lowest preference where ourselves appear */
	const struct mx mx[] = {{"mx1", 10, "192.0.2.1"},
				{"self", 10, "127.0.0.1"},
				{"self-too", 5, "127.0.0.1"},
				{"mx3", 40, "192.0.2.3"}};
	unsigned cutoff = 99;

	assert_true(cutoff_of(&self, mx, COUNT_OF(mx), 25, &cutoff));
	assert_int_equal(cutoff, 5);
	free_listen(la, COUNT_OF(la));
}

static void test_localaddr_no_self_host_no_cutoff(void **state)
{
	(void)state;
	struct listen_addr la[] = {listen_of("127.0.0.1:2525")};
	struct localaddr_self self = {.listen = la, .listen_count = 1};
	const struct mx mx[] = {{"mx1", 10, "127.0.0.2"},
				{"mx2", 20, "127.0.0.1"}};
	unsigned cutoff = 77;

	/* 127.0.0.1 on port 25 is not where this daemon listens */
	assert_false(cutoff_of(&self, mx, COUNT_OF(mx), 25, &cutoff));
	assert_int_equal(cutoff, 77);
	assert_true(cutoff_of(&self, mx, COUNT_OF(mx), 2525, &cutoff));
	assert_int_equal(cutoff, 20);
	free_listen(la, COUNT_OF(la));
}

/* A host with several addresses is ourselves when one of them is. */
static void test_localaddr_host_with_one_self_address_is_self(void **state)
{
	(void)state;
	struct listen_addr la[] = {listen_of("[::1]:25")};
	struct localaddr_self self = {.listen = la, .listen_count = 1};
	struct sockaddr_storage addrs[] = {addr_of("192.0.2.1", 0),
					   addr_of("::1", 0)};
	struct dns_host host = {.name = (char *)"example.test",
				.preference = 0,
				.addrs = addrs,
				.addr_count = COUNT_OF(addrs)};
	unsigned cutoff = 1;

	assert_true(localaddr_self_cutoff(&self, &host, 1, 25, &cutoff));
	assert_int_equal(cutoff, 0);
	free_listen(la, COUNT_OF(la));
}

/* The system's list holds the loopback interface at least. */
static void test_localaddr_interfaces_include_loopback(void **state)
{
	(void)state;
	struct localaddr_interfaces *ifs = localaddr_interfaces_new();
	const struct sockaddr_storage *addrs = NULL;
	size_t count = 0;
	bool loopback = false;

	assert_non_null(ifs);
	localaddr_interfaces_get(ifs, &addrs, &count);
	for (size_t i = 0; i < count; i++) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)&addrs[i];
		if (addrs[i].ss_family == AF_INET &&
		    sin->sin_addr.s_addr == htonl(INADDR_LOOPBACK))
			loopback = true;
	}
	assert_true(loopback);
	/* a second call within the period gives the same list */
	const struct sockaddr_storage *again = NULL;
	size_t count_again = 0;
	localaddr_interfaces_get(ifs, &again, &count_again);
	assert_ptr_equal(again, addrs);
	assert_int_equal(count_again, count);
	localaddr_interfaces_free(ifs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(
		test_localaddr_exact_listen_address_and_port_is_self),
	    cmocka_unit_test(
		test_localaddr_same_address_other_port_is_not_self),
	    cmocka_unit_test(test_localaddr_other_loopback_address_is_not_self),
	    cmocka_unit_test(test_localaddr_unspecified_target_is_loopback),
	    cmocka_unit_test(
		test_localaddr_wildcard_covers_loopback_and_interfaces),
	    cmocka_unit_test(test_localaddr_ipv6_wildcard_covers_ipv6_only),
	    cmocka_unit_test(
		test_localaddr_interfaces_needed_only_for_a_wildcard_on_the_port),
	    cmocka_unit_test(test_localaddr_backup_mx_keeps_only_better_hosts),
	    cmocka_unit_test(test_localaddr_best_mx_self_leaves_nothing),
	    cmocka_unit_test(test_localaddr_no_self_host_no_cutoff),
	    cmocka_unit_test(test_localaddr_host_with_one_self_address_is_self),
	    cmocka_unit_test(test_localaddr_interfaces_include_loopback),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
