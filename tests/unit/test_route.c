/* The routing table: what a `route` value means, and which route serves
 * a domain (SPEC.md §3, "Routes"). */
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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "facteur/route.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* route_table_add or route_table_add_sender */
typedef int (*add_fn)(struct route_table *table, const char *value, char *err,
		      size_t errlen);

static struct route_table *table_with(add_fn add, const char *const *values,
				      size_t n)
{
	struct route_table *t = route_table_new();
	char err[256];

	assert_non_null(t);
	for (size_t i = 0; i < n; i++) {
		if (add(t, values[i], err, sizeof(err)) != 0)
			fail_msg("route \"%s\" refused: %s", values[i], err);
	}
	return t;
}

static struct route_table *table_of(const char *const *values, size_t n)
{
	return table_with(route_table_add, values, n);
}

struct refusal {
	const char *value;
	const char *reason; /* a part of the message */
};

/* Each value is refused, with its reason, and the table stays empty. */
static void check_refusals(add_fn add, const struct refusal *cases, size_t n)
{
	struct route_table *t = route_table_new();

	for (size_t i = 0; i < n; i++) {
		char err[256] = "untouched";

		if (add(t, cases[i].value, err, sizeof(err)) == 0)
			fail_msg("\"%s\" was accepted", cases[i].value);
		if (strstr(err, cases[i].reason) == NULL)
			fail_msg("\"%s\": error \"%s\" lacks \"%s\"",
				 cases[i].value, err, cases[i].reason);
	}
	assert_int_equal(route_table_count(t), 0);
	route_table_free(t);
}

/* The SPEC's example, plus routes that compete with each other. */
static const char *const spec_routes[] = {
    "*.free.fr                      smtp.free.fr",
    "*                              [smarthost.mondomaine.com]:587 "
    "tls=verify auth=/run/secrets/smarthost",
    "*.sousdomaine.mondomaine.com   mail.sousdomaine.mondomaine.com",
    "example.org [10.0.0.1]",
    "*.example.org [10.0.0.2]",
    "*.deep.example.org [10.0.0.3]",
    "deep.example.org [10.0.0.4]",
    "*.org [10.0.0.5]",
};

struct lookup_case {
	const char *domain;
	const char *host; /* NULL: no route */
};

static void check_lookups(const struct route_table *t,
			  const struct lookup_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct route *r = route_lookup(t, cases[i].domain);

		if (cases[i].host == NULL) {
			if (r != NULL)
				fail_msg("%s: expected no route, got %s",
					 cases[i].domain, r->targets[0].host);
			continue;
		}
		if (r == NULL)
			fail_msg("%s: expected %s, got no route",
				 cases[i].domain, cases[i].host);
		if (strcmp(r->targets[0].host, cases[i].host) != 0)
			fail_msg("%s: expected %s, got %s", cases[i].domain,
				 cases[i].host, r->targets[0].host);
	}
}

static const struct lookup_case spec_cases[] = {
    {"free.fr", "smarthost.mondomaine.com"}, /* not its own *. */
    {"a.free.fr", "smtp.free.fr"},
    {"a.b.c.free.fr", "smtp.free.fr"},
    {"A.FREE.FR", "smtp.free.fr"},
    {"a.free.fr.", "smtp.free.fr"},
    {"notfree.fr", "smarthost.mondomaine.com"},
    {"free.fr.evil.com", "smarthost.mondomaine.com"},
    {"gmail.com", "smarthost.mondomaine.com"},
    {"mondomaine.com", "smarthost.mondomaine.com"},
    {"sousdomaine.mondomaine.com", "smarthost.mondomaine.com"},
    {"x.sousdomaine.mondomaine.com", "mail.sousdomaine.mondomaine.com"},
    {"y.x.sousdomaine.mondomaine.com", "mail.sousdomaine.mondomaine.com"},
    {"example.org", "10.0.0.1"},
    {"EXAMPLE.org", "10.0.0.1"},
    {"example.org.", "10.0.0.1"},
    {"a.example.org", "10.0.0.2"},
    {"deep.example.org", "10.0.0.4"},	/* exact beats *.example.org */
    {"a.deep.example.org", "10.0.0.3"}, /* longest suffix wins */
    {"b.a.deep.example.org", "10.0.0.3"},
    {"xdeep.example.org", "10.0.0.2"},
    {"other.org", "10.0.0.5"},
    {"org", "smarthost.mondomaine.com"},
    {"", "smarthost.mondomaine.com"},
};

static void test_route_spec_example_table(void **state)
{
	(void)state;
	struct route_table *t = table_of(spec_routes, COUNT_OF(spec_routes));

	check_lookups(t, spec_cases, COUNT_OF(spec_cases));
	route_table_free(t);
}

static void test_route_lookup_ignores_line_order(void **state)
{
	(void)state;
	const char *reversed[COUNT_OF(spec_routes)];

	for (size_t i = 0; i < COUNT_OF(spec_routes); i++)
		reversed[i] = spec_routes[COUNT_OF(spec_routes) - 1 - i];
	struct route_table *t = table_of(reversed, COUNT_OF(reversed));

	check_lookups(t, spec_cases, COUNT_OF(spec_cases));
	route_table_free(t);
}

static void test_route_no_wildcard_means_no_route(void **state)
{
	(void)state;
	static const char *const routes[] = {
	    "*.free.fr smtp.free.fr",
	    "example.com mx.example.com",
	};
	static const struct lookup_case cases[] = {
	    {"free.fr", NULL},
	    {"x.free.fr", "smtp.free.fr"},
	    {"example.com", "mx.example.com"},
	    {"www.example.com", NULL},
	    {"example.com.au", NULL},
	    {"gmail.com", NULL},
	};
	struct route_table *t = table_of(routes, COUNT_OF(routes));

	check_lookups(t, cases, COUNT_OF(cases));
	assert_null(route_lookup(t, NULL));
	route_table_free(t);
}

static void test_route_empty_table_has_no_route(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();

	assert_int_equal(route_table_count(t), 0);
	assert_null(route_lookup(t, "example.com"));
	assert_null(route_table_get(t, 0));
	route_table_free(t);
}

static void test_route_longest_suffix_wins(void **state)
{
	(void)state;
	static const char *const routes[] = {
	    "*.com [10.0.0.1]",
	    "*.b.c.com [10.0.0.3]",
	    "*.c.com [10.0.0.2]",
	};
	static const struct lookup_case cases[] = {
	    {"a.b.c.com", "10.0.0.3"},
	    {"b.c.com", "10.0.0.2"},
	    {"x.c.com", "10.0.0.2"},
	    {"c.com", "10.0.0.1"},
	    {"com", NULL},
	};
	struct route_table *t = table_of(routes, COUNT_OF(routes));

	check_lookups(t, cases, COUNT_OF(cases));
	route_table_free(t);
}

static const struct route *add_one(struct route_table *t, const char *value)
{
	char err[256];

	if (route_table_add(t, value, err, sizeof(err)) != 0)
		fail_msg("route \"%s\" refused: %s", value, err);
	return route_table_get(t, route_table_count(t) - 1);
}

static void test_route_parses_mx_target(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	const struct route *r = add_one(t, "  *.Free.FR\t Smtp.Free.FR  ");

	assert_int_equal(r->kind, ROUTE_SUFFIX);
	assert_string_equal(r->pattern, "free.fr");
	assert_string_equal(r->targets[0].host, "smtp.free.fr");
	assert_true(r->targets[0].mx_lookup);
	assert_false(r->targets[0].host_is_ip);
	assert_int_equal(r->targets[0].port, 0);
	assert_int_equal(r->tls, ROUTE_TLS_DEFAULT);
	assert_null(r->auth_file);
	assert_string_equal(r->text, "*.Free.FR\t Smtp.Free.FR");
	route_table_free(t);
}

static void test_route_parses_bracketed_host_port_and_options(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	const struct route *r =
	    add_one(t, "* [smarthost.mondomaine.com]:587 tls=verify "
		       "auth=/run/secrets/smarthost");

	assert_int_equal(r->kind, ROUTE_WILDCARD);
	assert_string_equal(r->pattern, "*");
	assert_string_equal(r->targets[0].host, "smarthost.mondomaine.com");
	assert_false(r->targets[0].mx_lookup);
	assert_false(r->targets[0].host_is_ip);
	assert_int_equal(r->targets[0].port, 587);
	assert_int_equal(r->tls, ROUTE_TLS_VERIFY);
	assert_string_equal(r->auth_file, "/run/secrets/smarthost");
	route_table_free(t);
}

static void test_route_parses_ip_literals(void **state)
{
	(void)state;
	static const struct {
		const char *value;
		const char *host;
		uint16_t port;
	} cases[] = {
	    {"a.test [1.2.3.4]", "1.2.3.4", 0},
	    {"b.test [1.2.3.4]:2525", "1.2.3.4", 2525},
	    {"c.test [::1]", "::1", 0},
	    {"d.test [::1]:25", "::1", 25},
	    {"e.test [IPv6:2001:DB8::1]", "2001:db8::1", 0},
	    {"f.test [ipv6:2001:db8::1]:465", "2001:db8::1", 465},
	    {"g.test [IPv6:::ffff:1.2.3.4]", "::ffff:1.2.3.4", 0},
	};
	struct route_table *t = route_table_new();

	for (size_t i = 0; i < COUNT_OF(cases); i++) {
		const struct route *r = add_one(t, cases[i].value);

		assert_string_equal(r->targets[0].host, cases[i].host);
		assert_true(r->targets[0].host_is_ip);
		assert_false(r->targets[0].mx_lookup);
		assert_int_equal(r->targets[0].port, cases[i].port);
	}
	route_table_free(t);
}

/* A route's text and the TLS policy it gets. */
struct tls_case {
	const char *value;
	enum route_tls tls;
};

static void check_tls_cases(const struct tls_case *cases, size_t count)
{
	struct route_table *t = route_table_new();

	for (size_t i = 0; i < count; i++)
		assert_int_equal(add_one(t, cases[i].value)->tls, cases[i].tls);
	route_table_free(t);
}

static void test_route_parses_every_tls_value(void **state)
{
	(void)state;
	static const struct tls_case cases[] = {
	    {"a.test mx.test tls=none", ROUTE_TLS_NONE},
	    {"b.test mx.test tls=may", ROUTE_TLS_MAY},
	    {"c.test mx.test tls=encrypt", ROUTE_TLS_ENCRYPT},
	    {"d.test mx.test tls=verify", ROUTE_TLS_VERIFY},
	    {"g.test mx.test tls=implicit", ROUTE_TLS_IMPLICIT},
	    {"e.test mx.test", ROUTE_TLS_DEFAULT},
	    {"f.test mx.test:2525 auth=/x tls=none", ROUTE_TLS_NONE},
	};
	check_tls_cases(cases, COUNT_OF(cases));
}

static void test_route_auth_without_tls_verifies_the_relay(void **state)
{
	(void)state;
	static const struct tls_case cases[] = {
	    {"a.test [relay.test]:587 auth=/x", ROUTE_TLS_VERIFY},
	    {"b.test [relay.test]:587 auth=/x tls=verify", ROUTE_TLS_VERIFY},
	    {"c.test [relay.test]:587 tls=encrypt auth=/x", ROUTE_TLS_ENCRYPT},
	    {"d.test [127.0.0.1]:2525 tls=none auth=/x", ROUTE_TLS_NONE},
	};
	check_tls_cases(cases, COUNT_OF(cases));
}

static void test_route_accepts_trailing_dots(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	const struct route *r = add_one(t, "example.com. mx.example.com.:26");

	assert_string_equal(r->pattern, "example.com");
	assert_string_equal(r->targets[0].host, "mx.example.com");
	assert_int_equal(r->targets[0].port, 26);
	r = add_one(t, "*.example.net. [relay.example.net.]");
	assert_string_equal(r->pattern, "example.net");
	assert_string_equal(r->targets[0].host, "relay.example.net");
	route_table_free(t);
}

static void test_route_rejects_invalid_values(void **state)
{
	(void)state;
	static const struct refusal cases[] = {
	    {"", "empty"},
	    {"   ", "empty"},
	    {"example.com", "missing target"},
	    {"*.", "invalid pattern"},
	    {"*", "missing target"},
	    {"**.example.com mx", "invalid pattern"},
	    {"*example.com mx", "invalid pattern"},
	    {"a.*.com mx", "invalid pattern"},
	    {"exa_mple.com mx", "invalid pattern"},
	    {"-example.com mx", "invalid pattern"},
	    {"example-.com mx", "invalid pattern"},
	    {"example..com mx", "invalid pattern"},
	    {".example.com mx", "invalid pattern"},
	    {"example.com [host", "bad target"},
	    {"example.com host]", "bad target"},
	    {"example.com []", "bad target"},
	    {"example.com [IPv6:1.2.3.4]", "bad target"},
	    {"example.com [IPv6:nothost]", "bad target"},
	    {"example.com [1.2.3.4]x", "bad target"},
	    {"example.com [bad_host]", "bad target"},
	    {"example.com 1.2.3.4", "brackets"},
	    {"example.com mx:0", "invalid port"},
	    {"example.com mx:65536", "invalid port"},
	    {"example.com mx:", "invalid port"},
	    {"example.com mx:25x", "invalid port"},
	    {"example.com mx:-25", "invalid port"},
	    {"example.com [1.2.3.4]:99999", "invalid port"},
	    {"example.com ::1", "bad target"},
	    {"example.com mx tls=maybe", "invalid tls"},
	    {"example.com mx tls=", "invalid tls"},
	    {"example.com mx tls=VERIFY", "invalid tls"},
	    {"example.com mx tls=none tls=may", "duplicate option"},
	    {"example.com mx auth=", "missing file"},
	    {"example.com mx auth=/a auth=/b", "duplicate option"},
	    {"example.com mx port=25", "unknown option"},
	    {"example.com [relay.test]:587 tls=may auth=/x", "tls=may"},
	    {"example.com [relay.test]:587 auth=/x tls=may", "tls=may"},
	    {"example.com mx extra", "unknown option"},
	    {"example.com a|", "empty element"},
	    {"example.com |a", "empty element"},
	    {"example.com a||b", "empty element"},
	    {"example.com |", "empty element"},
	    {"example.com [a]|[b", "bad target \"[b\""},
	    {"example.com a|1.2.3.4", "brackets"},
	    {"example.com a:25|b:0", "invalid port in target \"b:0\""},
	    {"example.com a|b|c|d|e|f|g|h|i", "too many failover elements"},
	    {"example.com a tls=implicit tls=verify", "tls=implicit excludes"},
	    {"example.com a tls=none tls=implicit", "tls=implicit excludes"},
	    {"user@example.com mx", "invalid pattern"},
	};

	check_refusals(route_table_add, cases, COUNT_OF(cases));
}

static void test_route_failover_list_keeps_its_order(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	const struct route *r =
	    add_one(t, "* [10.0.0.1]:2525|[relay.test]|backup.test:26");

	assert_int_equal(r->target_count, 3);
	assert_string_equal(r->targets[0].host, "10.0.0.1");
	assert_true(r->targets[0].host_is_ip);
	assert_int_equal(r->targets[0].port, 2525);
	assert_string_equal(r->targets[1].host, "relay.test");
	assert_false(r->targets[1].mx_lookup);
	assert_false(r->targets[1].host_is_ip);
	assert_int_equal(r->targets[1].port, 0);
	assert_string_equal(r->targets[2].host, "backup.test");
	assert_true(r->targets[2].mx_lookup);
	assert_int_equal(r->targets[2].port, 26);
	/* written as it was: -n prints it so */
	assert_string_equal(r->text,
			    "* [10.0.0.1]:2525|[relay.test]|backup.test:26");
	r = add_one(t, "a.test b|c|d|e|f|g|h|i");
	assert_int_equal(r->target_count, ROUTE_TARGETS_MAX);
	assert_string_equal(r->targets[7].host, "i");
	r = add_one(t, "b.test one.test");
	assert_int_equal(r->target_count, 1);
	route_table_free(t);
}

static void test_route_implicit_tls_defaults_to_port_465(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	const struct route *r =
	    add_one(t, "* [relay.test]|[10.0.0.2]:1465 tls=implicit");

	assert_int_equal(r->tls, ROUTE_TLS_IMPLICIT);
	assert_int_equal(r->targets[0].port, ROUTE_IMPLICIT_TLS_PORT);
	assert_int_equal(r->targets[1].port, 1465);
	r = add_one(t, "a.test [relay.test] tls=implicit auth=/x");
	assert_int_equal(r->tls, ROUTE_TLS_IMPLICIT);
	assert_string_equal(r->auth_file, "/x");
	r = add_one(t, "b.test [relay.test]");
	assert_int_equal(r->targets[0].port, 0);
	route_table_free(t);
}

static struct route_table *sender_table_of(const char *const *values, size_t n)
{
	return table_with(route_table_add_sender, values, n);
}

static void check_sender(const struct route_table *t, const char *sender,
			 const char *host)
{
	const struct route *r = route_lookup_sender(t, sender);

	if (host == NULL) {
		if (r != NULL)
			fail_msg("<%s>: expected no route, got %s", sender,
				 r->targets[0].host);
		return;
	}
	if (r == NULL)
		fail_msg("<%s>: expected %s, got no route", sender, host);
	if (strcmp(r->targets[0].host, host) != 0)
		fail_msg("<%s>: expected %s, got %s", sender, host,
			 r->targets[0].host);
}

static void test_route_sender_address_beats_domain_and_suffix(void **state)
{
	(void)state;
	static const char *const values[] = {
	    "* [default.test]",
	    "*.example.org [suffix.test]",
	    "example.org [domain.test]",
	    "Boss@Example.org [boss.test]",
	    "ceo@sub.example.org. [ceo.test]",
	};
	struct route_table *t = sender_table_of(values, COUNT_OF(values));

	check_sender(t, "boss@example.org", "boss.test");
	check_sender(t, "BOSS@EXAMPLE.ORG", "boss.test");
	check_sender(t, "other@example.org", "domain.test");
	check_sender(t, "boss@sub.example.org", "suffix.test");
	check_sender(t, "ceo@sub.example.org", "ceo.test");
	check_sender(t, "x@a.b.example.org", "suffix.test");
	check_sender(t, "x@example.net", "default.test");
	check_sender(t, "x@notexample.org", "default.test");
	check_sender(t, "no-domain", "default.test");
	route_table_free(t);
}

static void test_route_null_sender_matches_only_the_wildcard(void **state)
{
	(void)state;
	static const char *const no_wildcard[] = {
	    "example.org [domain.test]",
	    "*.example.org [suffix.test]",
	};
	static const char *const with_wildcard[] = {
	    "example.org [domain.test]",
	    "* [default.test]",
	};
	struct route_table *t =
	    sender_table_of(no_wildcard, COUNT_OF(no_wildcard));

	check_sender(t, "", NULL);
	check_sender(t, "x@example.org", "domain.test");
	check_sender(t, "x@example.net", NULL);
	route_table_free(t);
	t = sender_table_of(with_wildcard, COUNT_OF(with_wildcard));
	check_sender(t, "", "default.test");
	route_table_free(t);
	check_sender(NULL, "x@example.org", NULL);
}

static void test_route_sender_rejects_invalid_values(void **state)
{
	(void)state;
	static const struct refusal cases[] = {
	    {"@example.org [r]", "invalid address pattern"},
	    {"user@ [r]", "invalid address pattern"},
	    {"a@b@example.org [r]", "invalid address pattern"},
	    {"user@exa_mple.org [r]", "invalid address pattern"},
	    {"user@*.example.org [r]", "invalid address pattern"},
	    {"user@example.org", "missing target"},
	    {"user@example.org [r] tls=sometimes", "invalid tls"},
	    {"user@example.org a||b", "empty element"},
	    {"*.example.org [r] auth=/x tls=may", "tls=may"},
	};

	check_refusals(route_table_add_sender, cases, COUNT_OF(cases));
	struct route_table *t = route_table_new();
	char err[256];
	assert_int_equal(
	    route_table_add_sender(t, "u@example.org [r]", err, sizeof(err)),
	    0);
	assert_int_equal(
	    route_table_add_sender(t, "U@EXAMPLE.org [s]", err, sizeof(err)),
	    -1);
	assert_non_null(strstr(err, "duplicate pattern"));
	route_table_free(t);
}

static void test_route_error_quotes_the_offending_text(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	char err[256];

	assert_int_equal(
	    route_table_add(t, "example.com [host", err, sizeof(err)), -1);
	assert_string_equal(err, "bad target \"[host\"");
	route_table_free(t);
}

static void test_route_rejects_duplicate_patterns(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	char err[256];

	add_one(t, "*.free.fr smtp.free.fr");
	add_one(t, "free.fr mx.free.fr"); /* another pattern: exact */
	add_one(t, "* [relay.test]");
	assert_int_equal(
	    route_table_add(t, "*.FREE.fr. other.test", err, sizeof(err)), -1);
	assert_string_equal(err, "duplicate pattern \"*.free.fr\"");
	assert_int_equal(
	    route_table_add(t, "Free.Fr other.test", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "duplicate pattern"));
	assert_int_equal(route_table_add(t, "* other.test", err, sizeof(err)),
			 -1);
	assert_string_equal(err, "duplicate pattern \"*\"");
	assert_int_equal(route_table_count(t), 3);
	route_table_free(t);
}

static void test_route_small_error_buffer_is_bounded(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	char err[8];

	memset(err, 'x', sizeof(err));
	assert_int_equal(route_table_add(t, "example.com [hostname-too-long",
					 err, sizeof(err)),
			 -1);
	assert_int_equal(err[sizeof(err) - 1], '\0');
	assert_int_equal(route_table_add(t, "bad_pattern mx", NULL, 0), -1);
	route_table_free(t);
}

static void test_route_label_and_name_lengths(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	char value[600];
	char label[70];
	char err[256];

	memset(label, 'a', 63);
	label[63] = '\0';
	snprintf(value, sizeof(value), "%s.test mx.test", label);
	assert_int_equal(route_table_add(t, value, err, sizeof(err)), 0);
	label[63] = 'a';
	label[64] = '\0';
	snprintf(value, sizeof(value), "%s.test mx.test", label);
	assert_int_equal(route_table_add(t, value, err, sizeof(err)), -1);

	/* 254 octets: one more than a domain may hold */
	memset(value, 0, sizeof(value));
	for (size_t i = 0; i < 254; i++)
		value[i] = (i % 2) ? '.' : 'a';
	value[253] = 'a';
	memcpy(value + 254, " mx.test", 9);
	assert_int_equal(route_table_add(t, value, err, sizeof(err)), -1);
	value[252] = '\0'; /* 252 octets ending in a label */
	value[251] = 'a';
	strcat(value, " mx.test");
	assert_int_equal(route_table_add(t, value, err, sizeof(err)), 0);
	route_table_free(t);
}

static void test_route_many_routes(void **state)
{
	(void)state;
	struct route_table *t = route_table_new();
	char value[64];
	char err[256];

	for (int i = 0; i < 500; i++) {
		snprintf(value, sizeof(value), "*.d%d.test [10.0.%d.%d]", i,
			 i / 256, i % 256);
		assert_int_equal(route_table_add(t, value, err, sizeof(err)),
				 0);
	}
	assert_int_equal(route_table_count(t), 500);
	assert_string_equal(route_lookup(t, "x.d321.test")->targets[0].host,
			    "10.0.1.65");
	assert_null(route_lookup(t, "d321.test"));
	route_table_free(t);
}

/* Collects what route_table_read_credentials could not read. */
struct unreadable_seen {
	int count;
	int error;
	char file[256];
};

static void note_unreadable(const struct route *route, int error, void *arg)
{
	struct unreadable_seen *seen = arg;
	seen->count++;
	seen->error = error;
	snprintf(seen->file, sizeof(seen->file), "%s", route->auth_file);
}

/* A route whose auth= is `file`, in a table of its own. */
static struct route_table *table_with_auth_file(const char *file)
{
	struct route_table *t = route_table_new();
	char value[512];
	char err[256];
	snprintf(value, sizeof(value), "* [relay.test]:587 tls=encrypt auth=%s",
		 file);
	assert_int_equal(route_table_add(t, value, err, sizeof(err)), 0);
	return t;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

static void test_route_credentials_read_from_the_auth_file(void **state)
{
	(void)state;
	char path[] = "/tmp/facteur-test-route-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(close(fd), 0);
	write_file(path, "relay-user:s3cret: pass\r\nignored:line\n");
	struct route_table *t = table_with_auth_file(path);
	struct unreadable_seen seen = {0};

	assert_int_equal(
	    route_table_read_credentials(t, note_unreadable, &seen), 0);
	const struct route *r = route_lookup(t, "example.com");
	assert_string_equal(r->auth_user, "relay-user");
	assert_string_equal(r->auth_password, "s3cret: pass");
	assert_int_equal(seen.count, 0);
	route_table_free(t);
	assert_int_equal(unlink(path), 0);
}

static void test_route_credentials_unreadable_file_is_reported(void **state)
{
	(void)state;
	struct route_table *t = table_with_auth_file("/nonexistent/secret");
	struct unreadable_seen seen = {0};

	assert_int_equal(
	    route_table_read_credentials(t, note_unreadable, &seen), 1);
	const struct route *r = route_lookup(t, "example.com");
	assert_null(r->auth_user);
	assert_null(r->auth_password);
	assert_int_equal(seen.count, 1);
	assert_int_equal(seen.error, ENOENT);
	assert_string_equal(seen.file, "/nonexistent/secret");
	route_table_free(t);
}

static void test_route_credentials_need_user_and_colon(void **state)
{
	(void)state;
	static const char *const bad[] = {"", "no colon here\n", ":nouser\n"};
	char path[] = "/tmp/facteur-test-route-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(close(fd), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_file(path, bad[i]);
		struct route_table *t = table_with_auth_file(path);
		struct unreadable_seen seen = {0};
		assert_int_equal(
		    route_table_read_credentials(t, note_unreadable, &seen), 1);
		assert_null(route_lookup(t, "example.com")->auth_user);
		route_table_free(t);
	}
	assert_int_equal(unlink(path), 0);
}

/* local_transport: a socket path, or [HOST]:PORT as a route target. */
static void test_route_lmtp_unix_socket(void **state)
{
	struct route_lmtp t;
	char err[160];
	(void)state;

	assert_int_equal(route_lmtp_parse("lmtp:unix:/run/dovecot/lmtp", &t,
					  err, sizeof err),
			 0);
	assert_int_equal(t.kind, LMTP_UNIX);
	assert_string_equal(t.text, "lmtp:unix:/run/dovecot/lmtp");
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&t.addr;
	assert_int_equal(sun->sun_family, AF_UNIX);
	assert_string_equal(sun->sun_path, "/run/dovecot/lmtp");
	assert_int_equal(t.addrlen, offsetof(struct sockaddr_un, sun_path) +
					strlen("/run/dovecot/lmtp") + 1);
	/* the prefixes in any case, printed in lower case */
	assert_int_equal(route_lmtp_parse("LMTP:Unix:/x", &t, err, sizeof err),
			 0);
	assert_string_equal(t.text, "lmtp:unix:/x");
}

static void test_route_lmtp_inet_literals_and_names(void **state)
{
	struct route_lmtp t;
	char err[160];
	(void)state;

	assert_int_equal(
	    route_lmtp_parse("lmtp:[127.0.0.1]:24", &t, err, sizeof err), 0);
	assert_int_equal(t.kind, LMTP_INET);
	assert_true(t.host_is_ip);
	assert_string_equal(t.text, "lmtp:[127.0.0.1]:24");
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&t.addr;
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohs(sin->sin_port), 24);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);

	assert_int_equal(
	    route_lmtp_parse("lmtp:[::1]:2424", &t, err, sizeof err), 0);
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&t.addr;
	assert_int_equal(sin6->sin6_family, AF_INET6);
	assert_int_equal(ntohs(sin6->sin6_port), 2424);
	assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	assert_int_equal(t.addrlen, sizeof *sin6);
	assert_string_equal(t.text, "lmtp:[::1]:2424");

	/* no port: LMTP's own, 24 */
	assert_int_equal(route_lmtp_parse("lmtp:[::1]", &t, err, sizeof err),
			 0);
	assert_int_equal(t.port, 24);
	assert_string_equal(t.text, "lmtp:[::1]:24");

	/* a final dot makes a name of an address for routes, not here */
	assert_int_equal(
	    route_lmtp_parse("lmtp:[127.0.0.1.]:24", &t, err, sizeof err), 0);
	assert_true(t.host_is_ip);
	assert_string_equal(t.text, "lmtp:[127.0.0.1]:24");
	assert_int_equal(t.addrlen, sizeof *sin);

	/* a name is resolved when delivering: no address yet */
	assert_int_equal(
	    route_lmtp_parse("lmtp:[Mail.Example.com]:24", &t, err, sizeof err),
	    0);
	assert_false(t.host_is_ip);
	assert_string_equal(t.host, "mail.example.com");
	assert_int_equal(t.addrlen, 0);
}

static void test_route_lmtp_empty_is_none(void **state)
{
	struct route_lmtp t;
	char err[160];
	(void)state;

	assert_int_equal(route_lmtp_parse("", &t, err, sizeof err), 0);
	assert_int_equal(t.kind, LMTP_NONE);
	assert_string_equal(t.text, "");
}

static void test_route_lmtp_rejects_bad_forms(void **state)
{
	static const struct {
		const char *value, *reason;
	} bad[] = {
	    {"lmtp", "expected lmtp:unix:PATH or lmtp:[HOST]:PORT"},
	    {"smtp:[127.0.0.1]:24", "expected lmtp:unix:PATH"},
	    {"lmtp:127.0.0.1:24", "expected lmtp:unix:PATH"},
	    {"lmtp:inet:127.0.0.1:24", "expected lmtp:unix:PATH"},
	    {"lmtp:unix:", "must be absolute"},
	    {"lmtp:unix:private/dovecot-lmtp", "must be absolute"},
	    {"lmtp:unix:/a b", "blank or control"},
	    {"lmtp:unix:/a\tb", "blank or control"},
	    {"lmtp:[127.0.0.1]:0", "bad host or port"},
	    {"lmtp:[127.0.0.1]:65536", "bad host or port"},
	    {"lmtp:[127.0.0.1]:", "bad host or port"},
	    {"lmtp:[127.0.0.1]x", "bad host or port"},
	    {"lmtp:[]:24", "bad host or port"},
	    {"lmtp:[-bad-]:24", "bad host or port"},
	    {"lmtp:[127.0.0.1", "bad host or port"},
	    {"lmtp:[127.0.0.1]:24|[::1]:24", "bad host or port"},
	};
	char path[200];
	char err[160];
	struct route_lmtp t;
	(void)state;

	for (size_t i = 0; i < COUNT_OF(bad); i++) {
		err[0] = '\0';
		if (route_lmtp_parse(bad[i].value, &t, err, sizeof err) == 0)
			fail_msg("accepted %s", bad[i].value);
		if (strstr(err, bad[i].reason) == NULL)
			fail_msg("%s: %s", bad[i].value, err);
		assert_int_equal(t.kind, LMTP_NONE);
	}
	/* sun_path holds 107 octets and the NUL */
	memset(path, 'a', sizeof path);
	memcpy(path, "lmtp:unix:/", 11);
	path[10 + 107] = '\0';
	assert_int_equal(route_lmtp_parse(path, &t, err, sizeof err), 0);
	path[10 + 107] = 'a';
	path[10 + 108] = '\0';
	assert_int_equal(route_lmtp_parse(path, &t, err, sizeof err), -1);
	assert_non_null(strstr(err, "too long"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_route_spec_example_table),
	    cmocka_unit_test(test_route_lookup_ignores_line_order),
	    cmocka_unit_test(test_route_no_wildcard_means_no_route),
	    cmocka_unit_test(test_route_empty_table_has_no_route),
	    cmocka_unit_test(test_route_longest_suffix_wins),
	    cmocka_unit_test(test_route_parses_mx_target),
	    cmocka_unit_test(test_route_parses_bracketed_host_port_and_options),
	    cmocka_unit_test(test_route_parses_ip_literals),
	    cmocka_unit_test(test_route_parses_every_tls_value),
	    cmocka_unit_test(test_route_auth_without_tls_verifies_the_relay),
	    cmocka_unit_test(test_route_accepts_trailing_dots),
	    cmocka_unit_test(test_route_rejects_invalid_values),
	    cmocka_unit_test(test_route_failover_list_keeps_its_order),
	    cmocka_unit_test(test_route_implicit_tls_defaults_to_port_465),
	    cmocka_unit_test(test_route_sender_address_beats_domain_and_suffix),
	    cmocka_unit_test(test_route_null_sender_matches_only_the_wildcard),
	    cmocka_unit_test(test_route_sender_rejects_invalid_values),
	    cmocka_unit_test(test_route_error_quotes_the_offending_text),
	    cmocka_unit_test(test_route_rejects_duplicate_patterns),
	    cmocka_unit_test(test_route_small_error_buffer_is_bounded),
	    cmocka_unit_test(test_route_label_and_name_lengths),
	    cmocka_unit_test(test_route_many_routes),
	    cmocka_unit_test(test_route_credentials_read_from_the_auth_file),
	    cmocka_unit_test(
		test_route_credentials_unreadable_file_is_reported),
	    cmocka_unit_test(test_route_credentials_need_user_and_colon),
	    cmocka_unit_test(test_route_lmtp_unix_socket),
	    cmocka_unit_test(test_route_lmtp_inet_literals_and_names),
	    cmocka_unit_test(test_route_lmtp_empty_is_none),
	    cmocka_unit_test(test_route_lmtp_rejects_bad_forms),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
