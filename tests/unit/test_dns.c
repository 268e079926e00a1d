/* DNS for relaying (RFC 5321 §5.1, RFC 7505): the module against a real
 * dnsmasq (and a counting server of the test's own) on loopback ports, in
 * a real event loop. The answer parsers have test_dns_answer.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "facteur/dns.h"
#include "facteur/metrics.h"

#define DNSMASQ "/usr/sbin/dnsmasq"
#define MAX_HOSTS 8
#define MAX_ADDRS 8
#define DNS_TEST_HEADER_LEN 12 /* a DNS message starts with 12 octets */

static struct event_base *base;
static pid_t dnsmasq_pid = -1;
static uint16_t dnsmasq_port;
static int silent_fd = -1; /* bound, never read: a server that is mute */
static uint16_t silent_port;
static uint16_t closed_port; /* nothing bound: "port unreachable" */

/* What a callback saw, copied out before the result goes away. */
struct seen {
	int calls;
	enum dns_status status;
	char error[160];
	bool authenticated;
	size_t host_count;
	struct {
		char name[256];
		unsigned preference;
		size_t addr_count;
		char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
	} hosts[MAX_HOSTS];
	struct dns **free_dns; /* when set: dns_free from inside the callback */
};

static void addr_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
	const void *a =
	    ss->ss_family == AF_INET6
		? (const void *)&((const struct sockaddr_in6 *)(const void *)ss)
		      ->sin6_addr
		: (const void *)&((const struct sockaddr_in *)(const void *)ss)
		      ->sin_addr;

	if (inet_ntop(ss->ss_family, a, out, (socklen_t)len) == NULL)
		snprintf(out, len, "family %d", ss->ss_family);
}

static void on_result(const struct dns_result *r, void *arg)
{
	struct seen *s = arg;

	s->calls++;
	s->status = r->status;
	snprintf(s->error, sizeof(s->error), "%s", r->error);
	s->authenticated = r->authenticated;
	s->host_count = r->host_count;
	for (size_t i = 0; i < r->host_count && i < MAX_HOSTS; i++) {
		snprintf(s->hosts[i].name, sizeof(s->hosts[i].name), "%s",
			 r->hosts[i].name);
		s->hosts[i].preference = r->hosts[i].preference;
		s->hosts[i].addr_count = r->hosts[i].addr_count;
		for (size_t j = 0; j < r->hosts[i].addr_count && j < MAX_ADDRS;
		     j++)
			addr_text(&r->hosts[i].addrs[j], s->hosts[i].addrs[j],
				  sizeof(s->hosts[i].addrs[j]));
	}
	if (s->free_dns != NULL) {
		dns_free(*s->free_dns);
		*s->free_dns = NULL;
	}
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
}

/* Run the loop until s has its callback, or seconds have passed. */
static void run_until(struct seen *s, int seconds)
{
	bool late = false;
	struct timeval tv = {.tv_sec = seconds};
	struct event *deadline = evtimer_new(base, on_deadline, &late);

	assert_non_null(deadline);
	assert_int_equal(evtimer_add(deadline, &tv), 0);
	while (s->calls == 0 && !late)
		assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
	event_free(deadline);
	if (s->calls == 0)
		fail_msg("no DNS result within %d s", seconds);
}

/* Run the loop for a while, whatever happens. */
static void run_for_ms(long ms)
{
	bool late = false;
	struct timeval tv = {.tv_sec = ms / 1000,
			     .tv_usec = (ms % 1000) * 1000};
	struct event *deadline = evtimer_new(base, on_deadline, &late);

	assert_non_null(deadline);
	assert_int_equal(evtimer_add(deadline, &tv), 0);
	while (!late)
		assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
	event_free(deadline);
}

static struct dns *dns_at(uint16_t port)
{
	struct dns_server server = {.text = "127.0.0.1"};
	struct sockaddr_in *sin = (void *)&server.addr;
	struct config cfg = {0};
	char err[256] = "";
	struct dns *dns;

	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	server.addrlen = sizeof(*sin);
	cfg.dns_servers = &server;
	cfg.dns_server_count = 1;
	dns = dns_new(base, &cfg, err, sizeof(err));
	if (dns == NULL)
		fail_msg("dns_new: %s", err);
	return dns;
}

static struct seen resolve_mx(struct dns *dns, const char *domain)
{
	struct seen s = {0};

	assert_non_null(dns_resolve_mx(dns, domain, on_result, &s));
	run_until(&s, 15);
	assert_int_equal(s.calls, 1);
	return s;
}

static struct seen resolve_host(struct dns *dns, const char *host)
{
	struct seen s = {0};

	assert_non_null(dns_resolve_host(dns, host, on_result, &s));
	run_until(&s, 15);
	assert_int_equal(s.calls, 1);
	return s;
}

/* Host i of what s saw: its name, its preference and its one address. */
static void assert_host(const struct seen *s, size_t i, const char *name,
			unsigned preference, const char *addr)
{
	assert_string_equal(s->hosts[i].name, name);
	assert_int_equal(s->hosts[i].preference, preference);
	assert_int_equal(s->hosts[i].addr_count, 1);
	assert_string_equal(s->hosts[i].addrs[0], addr);
}

static double now_seconds(void)
{
	struct timespec ts;

	assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Against dnsmasq. */

static void test_dns_mx_hosts_sorted_by_preference(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	/* dnsmasq lists mx2 (20) before mx1 (10). */
	s = resolve_mx(dns, "example.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 2);
	assert_host(&s, 0, "mx1.example.test", 10, "127.0.0.2");
	assert_host(&s, 1, "mx2.example.test", 20, "127.0.0.3");
	dns_free(dns);
}

static void test_dns_domain_name_is_case_and_dot_insensitive(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "Example.TEST.");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 2);
	assert_string_equal(s.hosts[0].name, "mx1.example.test");
	dns_free(dns);
}

static void test_dns_equal_preferences_shuffled(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	int a_first = 0, b_first = 0;

	(void)state;
	/* Same preference 10 for mxa and mxb; mx0 at 5 always leads.
	 * After the first run the answers come from the cache, so the
	 * shuffle is per result, not per DNS answer. */
	for (int i = 0; i < 64; i++) {
		struct seen s = resolve_mx(dns, "shuffle.test");

		assert_int_equal(s.status, DNS_OK);
		assert_int_equal(s.host_count, 3);
		assert_string_equal(s.hosts[0].name, "mx0.shuffle.test");
		assert_int_equal(s.hosts[1].preference, 10);
		assert_int_equal(s.hosts[2].preference, 10);
		if (strcmp(s.hosts[1].name, "mxa.shuffle.test") == 0) {
			assert_string_equal(s.hosts[2].name,
					    "mxb.shuffle.test");
			a_first++;
		} else {
			assert_string_equal(s.hosts[1].name,
					    "mxb.shuffle.test");
			assert_string_equal(s.hosts[2].name,
					    "mxa.shuffle.test");
			b_first++;
		}
	}
	/* 2^-63 odds of a false failure. */
	assert_true(a_first > 0);
	assert_true(b_first > 0);
	dns_free(dns);
}

static void test_dns_no_mx_falls_back_to_the_domain_address(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t failures = metrics.dns_failures_total;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "aonly.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_host(&s, 0, "aonly.test", 0, "127.0.0.4");
	/* NODATA is an answer, not a failure. */
	assert_int_equal(metrics.dns_failures_total, failures);
	dns_free(dns);
}

static void test_dns_ipv6_only_domain(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "six.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_int_equal(s.hosts[0].addr_count, 1);
	assert_string_equal(s.hosts[0].addrs[0], "::1");
	dns_free(dns);
}

static void test_dns_ipv6_addresses_before_ipv4(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "dual.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_int_equal(s.hosts[0].addr_count, 2);
	assert_string_equal(s.hosts[0].addrs[0], "::5");
	assert_string_equal(s.hosts[0].addrs[1], "127.0.0.5");
	dns_free(dns);
}

static void test_dns_nxdomain(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t failures = metrics.dns_failures_total;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "nope.test");
	assert_int_equal(s.status, DNS_NXDOMAIN);
	assert_int_equal(s.host_count, 0);
	assert_non_null(strstr(s.error, "nope.test"));
	assert_non_null(strstr(s.error, "NXDOMAIN"));
	assert_int_equal(metrics.dns_failures_total, failures);
	dns_free(dns);
}

static void test_dns_null_mx(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "nullmx.test");
	assert_int_equal(s.status, DNS_NULL_MX);
	assert_int_equal(s.host_count, 0);
	assert_non_null(strstr(s.error, "nullmx.test"));
	/* No address look-up for the root. */
	assert_int_equal(metrics.dns_queries_total, queries + 1);
	dns_free(dns);
}

static void test_dns_mx_host_without_address_left_out(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	/* gone.partial.test (5) does not exist; mx1.example.test (10) does. */
	s = resolve_mx(dns, "partial.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_string_equal(s.hosts[0].name, "mx1.example.test");
	assert_int_equal(s.hosts[0].preference, 10);
	dns_free(dns);
}

static void test_dns_no_mx_host_with_address_is_no_host(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "dangling.test");
	assert_int_equal(s.status, DNS_NO_HOST);
	assert_int_equal(s.host_count, 0);
	dns_free(dns);
}

static void test_dns_refused_is_tempfail_and_not_cached(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t failures = metrics.dns_failures_total, queries;
	struct seen s;

	(void)state;
	/* Outside /test/ dnsmasq has no upstream and answers REFUSED. */
	s = resolve_mx(dns, "elsewhere.example");
	assert_int_equal(s.status, DNS_TEMPFAIL);
	/* c-ares 1.18 reports REFUSED as ECONNREFUSED: "refused". */
	if (strstr(s.error, "refused") == NULL &&
	    strstr(s.error, "REFUSED") == NULL)
		fail_msg("error: %s", s.error);
	assert_int_equal(metrics.dns_failures_total, failures + 1);

	/* A temporary failure is not cached: the next try asks again. */
	queries = metrics.dns_queries_total;
	s = resolve_mx(dns, "elsewhere.example");
	assert_int_equal(s.status, DNS_TEMPFAIL);
	assert_int_equal(metrics.dns_queries_total, queries + 1);
	assert_int_equal(metrics.dns_failures_total, failures + 2);
	dns_free(dns);
}

static void test_dns_silent_server_is_tempfail_within_seconds(void **state)
{
	struct dns *dns = dns_at(silent_port);
	uint64_t failures = metrics.dns_failures_total;
	double start = now_seconds(), elapsed;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "example.test");
	elapsed = now_seconds() - start;
	assert_int_equal(s.status, DNS_TEMPFAIL);
	assert_non_null(strstr(s.error, "timeout"));
	assert_true(elapsed < 10.0);
	assert_int_equal(metrics.dns_failures_total, failures + 1);
	dns_free(dns);
}

static void test_dns_unreachable_server_is_tempfail(void **state)
{
	struct dns *dns = dns_at(closed_port);
	double start = now_seconds();
	struct seen s;

	(void)state;
	s = resolve_host(dns, "mx1.example.test");
	assert_int_equal(s.status, DNS_TEMPFAIL);
	assert_true(now_seconds() - start < 10.0);
	dns_free(dns);
}

/* dns_servers in order, an IPv6 one with its port among them: the first
 * receives the query (on its port) and stays mute; after its timeout the
 * answer comes from the second. */
static void test_dns_servers_in_order_ipv6_with_port(void **state)
{
	struct dns_server servers[2] = {{.text = "[::1]"},
					{.text = "127.0.0.1"}};
	struct sockaddr_in6 *sin6 = (void *)&servers[0].addr;
	struct sockaddr_in *sin = (void *)&servers[1].addr;
	socklen_t len = sizeof(*sin6);
	struct config cfg = {0};
	char err[256] = "";
	unsigned char query[512];
	struct dns *dns;
	struct seen s;
	int mute;

	(void)state;
	mute = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (mute < 0)
		skip();
	sin6->sin6_family = AF_INET6;
	sin6->sin6_addr = in6addr_loopback;
	if (bind(mute, (struct sockaddr *)sin6, sizeof(*sin6)) < 0) {
		close(mute); /* no IPv6 loopback here */
		skip();
	}
	assert_int_equal(getsockname(mute, (struct sockaddr *)sin6, &len), 0);
	servers[0].addrlen = sizeof(*sin6);
	sin->sin_family = AF_INET;
	sin->sin_port = htons(dnsmasq_port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	servers[1].addrlen = sizeof(*sin);
	cfg.dns_servers = servers;
	cfg.dns_server_count = 2;
	dns = dns_new(base, &cfg, err, sizeof(err));
	if (dns == NULL)
		fail_msg("dns_new: %s", err);
	s = resolve_host(dns, "mx1.example.test");
	assert_true(recv(mute, query, sizeof(query), MSG_DONTWAIT) >
		    DNS_TEST_HEADER_LEN);
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.hosts[0].addr_count, 1);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.2");
	dns_free(dns);
	close(mute);
}

static void test_dns_cache_answers_without_new_query(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "example.test");
	assert_int_equal(s.status, DNS_OK);
	/* MX, then AAAA and A for each of the two hosts. */
	assert_int_equal(metrics.dns_queries_total, queries + 5);

	queries = metrics.dns_queries_total;
	s = resolve_mx(dns, "example.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 2);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.2");
	assert_int_equal(metrics.dns_queries_total, queries);

	/* A single host shares the cached A/AAAA answers. */
	s = resolve_host(dns, "mx2.example.test");
	assert_int_equal(s.status, DNS_OK);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.3");
	assert_int_equal(metrics.dns_queries_total, queries);
	dns_free(dns);
}

static void test_dns_negative_answers_cached(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;
	struct seen s;

	(void)state;
	s = resolve_mx(dns, "nope.test");
	assert_int_equal(s.status, DNS_NXDOMAIN);
	assert_int_equal(metrics.dns_queries_total, queries + 1);
	s = resolve_mx(dns, "nope.test");
	assert_int_equal(s.status, DNS_NXDOMAIN);
	assert_int_equal(metrics.dns_queries_total, queries + 1);

	/* NODATA for MX, then A and AAAA (one of them NODATA too). */
	queries = metrics.dns_queries_total;
	s = resolve_mx(dns, "aonly.test");
	assert_int_equal(metrics.dns_queries_total, queries + 3);
	s = resolve_mx(dns, "aonly.test");
	assert_int_equal(s.status, DNS_OK);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.4");
	assert_int_equal(metrics.dns_queries_total, queries + 3);
	dns_free(dns);
}

static void test_dns_same_question_in_flight_asked_once(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;
	struct seen a = {0}, b = {0};

	(void)state;
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &a));
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &b));
	run_until(&a, 15);
	run_until(&b, 15);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(b.status, DNS_OK);
	assert_int_equal(a.host_count, 2);
	assert_int_equal(b.host_count, 2);
	assert_int_equal(metrics.dns_queries_total, queries + 5);
	dns_free(dns);
}

static void test_dns_callback_never_runs_inside_resolve(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s = {0};

	(void)state;
	resolve_mx(dns, "example.test"); /* now cached */
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &s));
	assert_int_equal(s.calls, 0);
	assert_non_null(dns_resolve_mx(dns, "bad..name", on_result, &s));
	assert_int_equal(s.calls, 0);
	assert_non_null(dns_resolve_host(dns, "[127.0.0.1]", on_result, &s));
	assert_int_equal(s.calls, 0);
	run_for_ms(50);
	assert_int_equal(s.calls, 3);
	dns_free(dns);
}

static void test_dns_cancel_in_flight_and_cached(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen cancelled = {0}, kept = {0}, cached = {0}, after;
	struct dns_query *q;

	(void)state;
	/* Cancelled while its MX question is on the wire, which another
	 * query shares: the other still gets its answer. */
	q = dns_resolve_mx(dns, "example.test", on_result, &cancelled);
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &kept));
	dns_cancel(q);
	run_until(&kept, 15);
	assert_int_equal(kept.status, DNS_OK);

	/* Cancelled with its answer already waiting on the zero timer. */
	q = dns_resolve_mx(dns, "example.test", on_result, &cached);
	dns_cancel(q);
	run_for_ms(100);
	assert_int_equal(cancelled.calls, 0);
	assert_int_equal(cached.calls, 0);

	/* Cancelled between its MX answer and its address answers: dnsmasq
	 * forwards host.slow.test to a server that never answers. */
	{
		uint64_t start = metrics.dns_queries_total;
		int turns = 0;

		q = dns_resolve_mx(dns, "slowmx.test", on_result, &cancelled);
		assert_int_equal(metrics.dns_queries_total, start + 1);
		while (metrics.dns_queries_total == start + 1 && turns++ < 1000)
			assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
		/* The AAAA and A questions for host.slow.test went out. */
		assert_int_equal(metrics.dns_queries_total, start + 3);
		assert_int_equal(cancelled.calls, 0);
		dns_cancel(q);
	}
	after = resolve_mx(dns, "aonly.test");
	assert_int_equal(after.status, DNS_OK);
	run_for_ms(100);
	assert_int_equal(cancelled.calls, 0);
	dns_free(dns);
}

static void test_dns_free_drops_queries_in_flight(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen a = {0}, b = {0}, c = {0};

	(void)state;
	resolve_mx(dns, "nope.test");
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &a));
	assert_non_null(dns_resolve_host(dns, "six.test", on_result, &b));
	assert_non_null(dns_resolve_mx(dns, "nope.test", on_result, &c));
	dns_free(dns);
	run_for_ms(200);
	assert_int_equal(a.calls, 0);
	assert_int_equal(b.calls, 0);
	assert_int_equal(c.calls, 0);
}

static void test_dns_free_from_inside_a_callback(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen first = {0}, other = {0};

	(void)state;
	resolve_mx(dns, "nope.test");
	first.free_dns = &dns;
	assert_non_null(dns_resolve_mx(dns, "nope.test", on_result, &first));
	assert_non_null(dns_resolve_mx(dns, "example.test", on_result, &other));
	run_until(&first, 15);
	assert_null(dns);
	run_for_ms(200);
	assert_int_equal(other.calls, 0);
}

static void test_dns_resolve_host_addresses(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct seen s;

	(void)state;
	s = resolve_host(dns, "mx1.example.test");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_string_equal(s.hosts[0].name, "mx1.example.test");
	assert_int_equal(s.hosts[0].preference, 0);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.2");

	/* A "[host]" route target: no MX look-up, only the host. */
	s = resolve_host(dns, "[aonly.test]");
	assert_int_equal(s.status, DNS_OK);
	assert_string_equal(s.hosts[0].name, "aonly.test");
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.4");

	s = resolve_host(dns, "nope.test");
	assert_int_equal(s.status, DNS_NXDOMAIN);

	/* It has MX records but no address of its own. */
	s = resolve_host(dns, "example.test");
	assert_int_equal(s.status, DNS_NO_HOST);
	dns_free(dns);
}

static void test_dns_address_literals_need_no_query(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;
	struct seen s;

	(void)state;
	s = resolve_host(dns, "[127.0.0.9]");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_string_equal(s.hosts[0].addrs[0], "127.0.0.9");

	s = resolve_host(dns, "192.0.2.1");
	assert_int_equal(s.status, DNS_OK);
	assert_string_equal(s.hosts[0].addrs[0], "192.0.2.1");

	s = resolve_mx(dns, "[IPv6:2001:db8::1]");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.host_count, 1);
	assert_string_equal(s.hosts[0].addrs[0], "2001:db8::1");
	assert_int_equal(metrics.dns_queries_total, queries);
	dns_free(dns);
}

static void test_dns_invalid_domain_is_nxdomain_without_query(void **state)
{
	static const char *const bad[] = {
	    "",
	    ".",
	    "a..b",
	    "sp ace.test",
	    "semi;colon.test",
	    "label-of-sixty-four-characters-"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.test",
	};
	struct dns *dns = dns_at(dnsmasq_port);
	uint64_t queries = metrics.dns_queries_total;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct seen s = resolve_mx(dns, bad[i]);

		if (s.status != DNS_NXDOMAIN)
			fail_msg("\"%s\": status %d", bad[i], s.status);
	}
	assert_int_equal(metrics.dns_queries_total, queries);
	dns_free(dns);
}

/* Copies of results, kept past the callback. */

static void on_result_copy(const struct dns_result *r, void *arg)
{
	struct dns_result **copy = arg;

	*copy = dns_result_copy(r);
}

static void test_dns_result_copy_outlives_the_query(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct dns_result *copy = NULL;
	char addr[INET6_ADDRSTRLEN];
	bool late = false;
	struct timeval tv = {.tv_sec = 15};
	struct event *deadline = evtimer_new(base, on_deadline, &late);

	(void)state;
	assert_non_null(deadline);
	assert_non_null(
	    dns_resolve_mx(dns, "example.test", on_result_copy, &copy));
	assert_int_equal(evtimer_add(deadline, &tv), 0);
	while (copy == NULL && !late)
		assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
	event_free(deadline);
	assert_non_null(copy);
	/* the query and every answer it held are gone */
	dns_free(dns);
	assert_int_equal(copy->status, DNS_OK);
	assert_int_equal(copy->host_count, 2);
	assert_string_equal(copy->hosts[0].name, "mx1.example.test");
	assert_int_equal(copy->hosts[0].preference, 10);
	assert_int_equal(copy->hosts[0].addr_count, 1);
	addr_text(&copy->hosts[0].addrs[0], addr, sizeof(addr));
	assert_string_equal(addr, "127.0.0.2");
	assert_string_equal(copy->hosts[1].name, "mx2.example.test");
	assert_int_equal(copy->hosts[1].preference, 20);
	addr_text(&copy->hosts[1].addrs[0], addr, sizeof(addr));
	assert_string_equal(addr, "127.0.0.3");
	assert_null(copy->records);
	dns_result_free(copy);
}

static void test_dns_result_copy_is_deep(void **state)
{
	unsigned char data[32] = {0xab};
	char name[] = "mx.copy.test";
	struct sockaddr_storage addrs[2] = {{.ss_family = AF_INET6},
					    {.ss_family = AF_INET}};
	struct dns_host host = {
	    .name = name,
	    .preference = 5,
	    .secure = true,
	    .addrs = addrs,
	    .addr_count = 2,
	};
	struct dns_record record = {
	    .type = DNS_TYPE_TLSA,
	    .ttl = 300,
	    .tlsa = {.usage = 3,
		     .selector = 1,
		     .matching = 1,
		     .data = data,
		     .data_len = sizeof(data)},
	};
	struct dns_result r = {
	    .status = DNS_TEMPFAIL,
	    .hosts = &host,
	    .host_count = 1,
	    .error = "copy.test: timeout",
	    .authenticated = true,
	    .records = &record,
	    .record_count = 1,
	};
	struct dns_result *copy = dns_result_copy(&r);

	(void)state;
	/* what the copy holds is its own: the original's change later */
	name[0] = 'X';
	data[0] = 0;
	addrs[0].ss_family = AF_UNSPEC;
	assert_int_equal(copy->status, DNS_TEMPFAIL);
	assert_string_equal(copy->error, "copy.test: timeout");
	assert_true(copy->authenticated);
	assert_int_equal(copy->host_count, 1);
	assert_ptr_not_equal(copy->hosts, &host);
	assert_string_equal(copy->hosts[0].name, "mx.copy.test");
	assert_int_equal(copy->hosts[0].preference, 5);
	assert_true(copy->hosts[0].secure);
	assert_int_equal(copy->hosts[0].addr_count, 2);
	assert_int_equal(copy->hosts[0].addrs[0].ss_family, AF_INET6);
	assert_int_equal(copy->hosts[0].addrs[1].ss_family, AF_INET);
	assert_int_equal(copy->record_count, 1);
	assert_int_equal(copy->records[0].type, DNS_TYPE_TLSA);
	assert_int_equal(copy->records[0].tlsa.usage, 3);
	assert_int_equal(copy->records[0].tlsa.data_len, sizeof(data));
	assert_int_equal(copy->records[0].tlsa.data[0], 0xab);
	dns_result_free(copy);
	dns_result_free(NULL);
}

/* dnsmasq and the loop. */

/* A free port for both UDP and TCP on 127.0.0.1 (dnsmasq binds both). */
static int free_port(uint16_t *port, int *keep_udp)
{
	for (int attempt = 0; attempt < 50; attempt++) {
		struct sockaddr_in sin = {.sin_family = AF_INET};
		socklen_t len = sizeof(sin);
		int u = socket(AF_INET, SOCK_DGRAM, 0), t;

		if (u < 0)
			return -1;
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(u, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
		    getsockname(u, (struct sockaddr *)&sin, &len) < 0) {
			close(u);
			return -1;
		}
		t = socket(AF_INET, SOCK_STREAM, 0);
		if (t < 0) {
			close(u);
			return -1;
		}
		if (bind(t, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
			close(t);
			*port = ntohs(sin.sin_port);
			if (keep_udp != NULL)
				*keep_udp = u;
			else
				close(u);
			return 0;
		}
		close(t);
		close(u);
	}
	return -1;
}

static int wait_for_dnsmasq(void)
{
	for (int i = 0; i < 100; i++) {
		struct sockaddr_in sin = {.sin_family = AF_INET};
		int fd, status;

		if (waitpid(dnsmasq_pid, &status, WNOHANG) == dnsmasq_pid) {
			print_error("dnsmasq exited at start-up (status %d)\n",
				    status);
			dnsmasq_pid = -1;
			return -1;
		}
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return -1;
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sin.sin_port = htons(dnsmasq_port);
		if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
			close(fd);
			return 0;
		}
		close(fd);
		usleep(50 * 1000);
	}
	print_error("dnsmasq did not listen on port %u\n", dnsmasq_port);
	return -1;
}

static int start_dnsmasq(void)
{
	char port_arg[32], slow_arg[64];
	char *const argv[] = {
	    DNSMASQ,
	    "--no-daemon",
	    "--no-resolv",
	    "--no-hosts",
	    "--bind-interfaces",
	    "--listen-address=127.0.0.1",
	    port_arg,
	    "--conf-file=/dev/null",
	    "--local=/test/",
	    "--local-ttl=300",
	    "--mx-host=example.test,mx1.example.test,10",
	    "--txt-record=_mta-sts.example.test,v=STSv1; ,id=ab1",
	    "--txt-record=_mta-sts.example.test,v=spf1 -all",
	    "--mx-host=example.test,mx2.example.test,20",
	    "--host-record=mx1.example.test,127.0.0.2",
	    "--host-record=mx2.example.test,127.0.0.3",
	    "--host-record=aonly.test,127.0.0.4",
	    "--host-record=six.test,::1",
	    "--host-record=dual.test,127.0.0.5,::5",
	    "--mx-host=nullmx.test,.,0",
	    "--mx-host=shuffle.test,mxa.shuffle.test,10",
	    "--mx-host=shuffle.test,mxb.shuffle.test,10",
	    "--mx-host=shuffle.test,mx0.shuffle.test,5",
	    "--host-record=mxa.shuffle.test,127.0.0.11",
	    "--host-record=mxb.shuffle.test,127.0.0.12",
	    "--host-record=mx0.shuffle.test,127.0.0.10",
	    "--mx-host=partial.test,gone.partial.test,5",
	    "--mx-host=partial.test,mx1.example.test,10",
	    "--mx-host=dangling.test,nothere.test,10",
	    "--mx-host=slowmx.test,host.slow.test,10",
	    slow_arg,
	    NULL,
	};

	if (access(DNSMASQ, X_OK) != 0) {
		print_error("%s is missing (Debian package dnsmasq-base): "
			    "the DNS tests need it\n",
			    DNSMASQ);
		return -1;
	}
	if (free_port(&dnsmasq_port, NULL) < 0) {
		print_error("no free port for dnsmasq\n");
		return -1;
	}
	snprintf(port_arg, sizeof(port_arg), "--port=%u", dnsmasq_port);
	snprintf(slow_arg, sizeof(slow_arg), "--server=/slow.test/127.0.0.1#%u",
		 silent_port);
	dnsmasq_pid = fork();
	if (dnsmasq_pid < 0) {
		print_error("fork: %s\n", strerror(errno));
		return -1;
	}
	if (dnsmasq_pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0 && getenv("TEST_DNS_VERBOSE") == NULL) {
			dup2(null, STDOUT_FILENO);
			dup2(null, STDERR_FILENO);
		}
		execv(DNSMASQ, argv);
		_exit(127);
	}
	return wait_for_dnsmasq();
}

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	if (base == NULL)
		return -1;
	if (free_port(&silent_port, &silent_fd) < 0 ||
	    free_port(&closed_port, NULL) < 0) {
		print_error("no free ports\n");
		return -1;
	}
	return start_dnsmasq();
}

static int group_teardown(void **state)
{
	(void)state;
	if (dnsmasq_pid > 0) {
		int status;

		if (kill(dnsmasq_pid, SIGTERM) < 0)
			print_error("kill dnsmasq: %s\n", strerror(errno));
		else if (waitpid(dnsmasq_pid, &status, 0) < 0)
			print_error("waitpid dnsmasq: %s\n", strerror(errno));
		dnsmasq_pid = -1;
	}
	if (silent_fd >= 0)
		close(silent_fd);
	if (base != NULL)
		event_base_free(base);
	return 0;
}

struct txt_seen {
	int calls;
	enum dns_status status;
	size_t count;
	char texts[4][128];
};

static void on_txt(const struct dns_txt_result *r, void *arg)
{
	struct txt_seen *s = arg;

	s->calls++;
	s->status = r->status;
	s->count = r->count;
	for (size_t i = 0; i < r->count && i < 4; i++)
		snprintf(s->texts[i], sizeof(s->texts[i]), "%s", r->texts[i]);
}

static struct txt_seen resolve_txt(struct dns *dns, const char *name)
{
	struct txt_seen s = {0};

	assert_non_null(dns_resolve_txt(dns, name, on_txt, &s));
	/* never inside the call */
	assert_int_equal(s.calls, 0);
	for (int i = 0; i < 100 && s.calls == 0; i++)
		run_for_ms(50);
	assert_int_equal(s.calls, 1);
	return s;
}

static void test_dns_txt_records_joined_nodata_and_nxdomain(void **state)
{
	struct dns *dns = dns_at(dnsmasq_port);
	struct txt_seen s;

	(void)state;
	s = resolve_txt(dns, "_MTA-STS.example.test.");
	assert_int_equal(s.status, DNS_OK);
	assert_int_equal(s.count, 2);
	/* the strings of one record joined, in either order of records */
	bool sts = strcmp(s.texts[0], "v=STSv1; id=ab1") == 0 ||
		   strcmp(s.texts[1], "v=STSv1; id=ab1") == 0;
	assert_true(sts);
	s = resolve_txt(dns, "example.test");
	assert_int_equal(s.status, DNS_NO_HOST);
	s = resolve_txt(dns, "nothere.test");
	assert_int_equal(s.status, DNS_NXDOMAIN);
	s = resolve_txt(dns, "bad..name");
	assert_int_equal(s.status, DNS_NXDOMAIN);

	/* cancelled in flight: no callback, and dns_free with one pending */
	struct txt_seen never = {0};
	struct dns_txt_query *q =
	    dns_resolve_txt(dns, "_mta-sts.example.test", on_txt, &never);
	dns_txt_cancel(q);
	run_for_ms(300);
	assert_int_equal(never.calls, 0);
	(void)dns_resolve_txt(dns, "_mta-sts.example.test", on_txt, &never);
	dns_free(dns);
	assert_int_equal(never.calls, 0);
}

/* A DNS server of the test's own on a loopback UDP port: it counts the
 * questions it receives, and those with the AD bit, and answers each with
 * one TXT record ("hello", TTL 300), the AD bit as the question had it. */
struct counting_server {
	int fd;
	uint16_t port;
	int questions, ad_questions;
	struct event *ev;
};

static void on_counting_server_question(evutil_socket_t fd, short what,
					void *arg)
{
	/* owner: the question's name (offset 12); TXT, IN, TTL 300, RDATA */
	static const char txt[] = "\xc0\x0c\x00\x10\x00\x01"
				  "\x00\x00\x01\x2c\x00\x06\x05hello";
	struct counting_server *srv = arg;
	struct sockaddr_storage from;
	socklen_t fromlen = sizeof(from);
	unsigned char buf[512];
	size_t pos = DNS_TEST_HEADER_LEN;
	ssize_t n;

	(void)what;
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from,
		     &fromlen);
	if (n < DNS_TEST_HEADER_LEN)
		return;
	srv->questions++;
	if (buf[3] & 0x20)
		srv->ad_questions++;
	/* The one question, kept; what follows it (EDNS) dropped. */
	while (pos < (size_t)n && buf[pos] != 0)
		pos += (size_t)buf[pos] + 1;
	pos += 1 + 4;
	if (pos > (size_t)n || pos + sizeof(txt) - 1 > sizeof(buf))
		return;
	buf[2] = (unsigned char)(0x80 | (buf[2] & 0x01)); /* QR, RD kept */
	buf[3] = (unsigned char)(0x80 | (buf[3] & 0x20)); /* RA, AD kept */
	buf[6] = 0, buf[7] = 1;				  /* ANCOUNT */
	buf[8] = buf[9] = buf[10] = buf[11] = 0;
	memcpy(buf + pos, txt, sizeof(txt) - 1);
	pos += sizeof(txt) - 1;
	assert_int_equal(
	    sendto(fd, buf, pos, 0, (struct sockaddr *)&from, fromlen),
	    (ssize_t)pos);
}

static void counting_server_start(struct counting_server *srv)
{
	memset(srv, 0, sizeof(*srv));
	assert_int_equal(free_port(&srv->port, &srv->fd), 0);
	srv->ev = event_new(base, srv->fd, EV_READ | EV_PERSIST,
			    on_counting_server_question, srv);
	assert_non_null(srv->ev);
	assert_int_equal(event_add(srv->ev, NULL), 0);
}

static void counting_server_stop(struct counting_server *srv)
{
	event_free(srv->ev);
	close(srv->fd);
}

/* TXT answers are not cached (their users keep what they learn), by c-ares
 * either, which caches by default from 1.31 on: each look-up is asked. */
static void test_dns_txt_asked_on_the_wire_each_time(void **state)
{
	struct counting_server srv;
	struct dns *dns;
	struct txt_seen s;

	(void)state;
	counting_server_start(&srv);
	dns = dns_at(srv.port);
	for (int i = 1; i <= 2; i++) {
		s = resolve_txt(dns, "_mta-sts.counted.test");
		assert_int_equal(s.status, DNS_OK);
		assert_int_equal(s.count, 1);
		assert_string_equal(s.texts[0], "hello");
		assert_int_equal(srv.questions, i);
	}
	dns_free(dns);
	counting_server_stop(&srv);
}

/* RFC 6840 §5.7: the question carries the AD bit, and the answer's AD bit
 * reaches the result, whichever way c-ares sends and returns messages. */
static void
test_dns_questions_carry_the_ad_bit_and_answers_keep_it(void **state)
{
	struct counting_server srv;
	struct seen s = {0};
	struct dns *dns;

	(void)state;
	counting_server_start(&srv);
	dns = dns_at(srv.port);
	assert_non_null(
	    dns_resolve_tlsa(dns, "_25._tcp.mx.counted.test", on_result, &s));
	run_until(&s, 15);
	assert_int_equal(srv.questions, 1);
	assert_int_equal(srv.ad_questions, 1);
	/* a TXT record answers no TLSA question: NODATA, validated */
	assert_int_equal(s.status, DNS_NO_HOST);
	assert_true(s.authenticated);
	dns_free(dns);
	counting_server_stop(&srv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dns_mx_hosts_sorted_by_preference),
	    cmocka_unit_test(test_dns_domain_name_is_case_and_dot_insensitive),
	    cmocka_unit_test(test_dns_equal_preferences_shuffled),
	    cmocka_unit_test(test_dns_no_mx_falls_back_to_the_domain_address),
	    cmocka_unit_test(test_dns_ipv6_only_domain),
	    cmocka_unit_test(test_dns_ipv6_addresses_before_ipv4),
	    cmocka_unit_test(test_dns_nxdomain),
	    cmocka_unit_test(test_dns_null_mx),
	    cmocka_unit_test(test_dns_mx_host_without_address_left_out),
	    cmocka_unit_test(test_dns_no_mx_host_with_address_is_no_host),
	    cmocka_unit_test(test_dns_refused_is_tempfail_and_not_cached),
	    cmocka_unit_test(test_dns_silent_server_is_tempfail_within_seconds),
	    cmocka_unit_test(test_dns_unreachable_server_is_tempfail),
	    cmocka_unit_test(test_dns_servers_in_order_ipv6_with_port),
	    cmocka_unit_test(test_dns_cache_answers_without_new_query),
	    cmocka_unit_test(test_dns_negative_answers_cached),
	    cmocka_unit_test(test_dns_same_question_in_flight_asked_once),
	    cmocka_unit_test(test_dns_callback_never_runs_inside_resolve),
	    cmocka_unit_test(test_dns_cancel_in_flight_and_cached),
	    cmocka_unit_test(test_dns_free_drops_queries_in_flight),
	    cmocka_unit_test(test_dns_free_from_inside_a_callback),
	    cmocka_unit_test(test_dns_resolve_host_addresses),
	    cmocka_unit_test(test_dns_address_literals_need_no_query),
	    cmocka_unit_test(test_dns_invalid_domain_is_nxdomain_without_query),
	    cmocka_unit_test(test_dns_result_copy_outlives_the_query),
	    cmocka_unit_test(test_dns_result_copy_is_deep),
	    cmocka_unit_test(test_dns_txt_records_joined_nodata_and_nxdomain),
	    cmocka_unit_test(test_dns_txt_asked_on_the_wire_each_time),
	    cmocka_unit_test(
		test_dns_questions_carry_the_ad_bit_and_answers_keep_it),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
