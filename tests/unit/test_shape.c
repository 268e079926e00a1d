/* The shaping table: what a `shape` value means, which line serves a
 * domain, the token bucket behind rate=, and which replies throttle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "facteur/shape.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static struct shape_table *table_of(const char *const *values, size_t n)
{
	struct shape_table *t = shape_table_new();
	char err[256];

	assert_non_null(t);
	for (size_t i = 0; i < n; i++)
		if (shape_table_add(t, values[i], err, sizeof(err)) != 0)
			fail_msg("shape \"%s\" refused: %s", values[i], err);
	return t;
}

static void test_shape_every_option_is_read(void **state)
{
	(void)state;
	const char *const v[] = {
	    "  gmail.com max_connections=5 max_rcpt=20 max_msgs=7 rate=30/m "
	    "source=127.0.0.9 helo=out.example.net pause=3s  "};
	struct shape_table *t = table_of(v, 1);
	const struct shape *s = shape_table_get(t, 0);

	assert_int_equal(s->kind, ROUTE_EXACT);
	assert_string_equal(s->pattern, "gmail.com");
	assert_int_equal(s->max_connections, 5);
	assert_int_equal(s->max_rcpt, 20);
	assert_int_equal(s->max_msgs, 7);
	assert_int_equal(s->rate_count, 30);
	assert_int_equal(s->rate_period, 60);
	assert_true(s->has_source);
	assert_int_equal(s->source.ss_family, AF_INET);
	assert_int_equal(s->source_len, sizeof(struct sockaddr_in));
	assert_string_equal(s->helo, "out.example.net");
	assert_int_equal(s->pause, 3);
	assert_true(shape_groups(s));
	shape_table_free(t);
}

static void test_shape_defaults_fill_what_is_left_out(void **state)
{
	(void)state;
	const char *const v[] = {"*.free.fr helo=mx.example.net"};
	struct shape_table *t = table_of(v, 1);
	const struct shape *s = shape_table_get(t, 0);

	assert_int_equal(s->kind, ROUTE_SUFFIX);
	assert_int_equal(s->max_connections, 0);
	assert_int_equal(s->max_rcpt, 50);
	assert_int_equal(s->max_msgs, 100);
	assert_int_equal(s->rate_period, 0);
	assert_false(s->has_source);
	assert_int_equal(s->pause, 60);
	/* neither max_connections nor rate: each next hop counts alone */
	assert_false(shape_groups(s));
	shape_table_free(t);
}

static void test_shape_rates_in_each_unit(void **state)
{
	(void)state;
	const char *const v[] = {"a.test rate=2/s", "b.test rate=90/h",
				 "c.test source=::1"};
	struct shape_table *t = table_of(v, 3);

	assert_int_equal(shape_table_get(t, 0)->rate_period, 1);
	assert_int_equal(shape_table_get(t, 1)->rate_period, 3600);
	assert_int_equal(shape_table_get(t, 1)->rate_count, 90);
	assert_int_equal(shape_table_get(t, 2)->source.ss_family, AF_INET6);
	shape_table_free(t);
}

static void refused(const char *value, const char *reason)
{
	struct shape_table *t = shape_table_new();
	char err[256];

	if (shape_table_add(t, value, err, sizeof(err)) != -1)
		fail_msg("\"%s\" accepted", value);
	if (strstr(err, reason) == NULL)
		fail_msg("\"%s\": expected \"%s\" in \"%s\"", value, reason,
			 err);
	assert_int_equal(shape_table_count(t), 0);
	shape_table_free(t);
}

static void test_shape_bad_lines_are_refused_with_a_reason(void **state)
{
	(void)state;
	refused("", "empty shape");
	refused("gmail.com", "no option after pattern");
	refused("gmail.com speed=3", "unknown option \"speed=3\"");
	refused("gmail.com max_rcpt", "option without a value");
	refused("gmail.com rate=0/m", "invalid value in \"rate=0/m\"");
	refused("gmail.com rate=5", "invalid value");
	refused("gmail.com rate=5/d", "invalid value");
	refused("gmail.com max_connections=0", "invalid value");
	refused("gmail.com max_rcpt=0", "invalid value");
	refused("gmail.com max_msgs=-1", "invalid value");
	refused("gmail.com max_msgs=99999999", "invalid value");
	refused("gmail.com source=mail.example", "invalid value");
	refused("gmail.com source=", "invalid value");
	refused("gmail.com helo=bad_name!", "invalid value");
	refused("gmail.com pause=soon", "invalid value");
	refused("gmail.com pause=0", "invalid value");
	refused("gm@il.com max_rcpt=5", "invalid pattern");
	refused("gmail.com max_rcpt=5 max_rcpt=6", "option given twice");
}

static void test_shape_duplicate_pattern_is_refused(void **state)
{
	(void)state;
	struct shape_table *t = shape_table_new();
	char err[256];

	assert_int_equal(shape_table_add(t, "a.test max_rcpt=5", err, 256), 0);
	assert_int_equal(shape_table_add(t, "A.test. max_rcpt=6", err, 256),
			 -1);
	assert_string_equal(err, "duplicate pattern \"a.test\"");
	assert_int_equal(shape_table_add(t, "*.a.test max_rcpt=6", err, 256),
			 0);
	shape_table_free(t);
}

static void test_shape_most_specific_line_wins(void **state)
{
	(void)state;
	const char *const v[] = {"* max_rcpt=10", "*.fr max_rcpt=20",
				 "*.free.fr max_rcpt=30",
				 "free.fr max_rcpt=40"};
	struct shape_table *t = table_of(v, COUNT_OF(v));

	assert_int_equal(shape_lookup(t, "smtp.free.fr")->max_rcpt, 30);
	assert_int_equal(shape_lookup(t, "a.b.FREE.fr.")->max_rcpt, 30);
	assert_int_equal(shape_lookup(t, "free.fr")->max_rcpt, 40);
	assert_int_equal(shape_lookup(t, "orange.fr")->max_rcpt, 20);
	assert_int_equal(shape_lookup(t, "gmail.com")->max_rcpt, 10);
	shape_table_free(t);
}

static void test_shape_no_line_gives_the_defaults(void **state)
{
	(void)state;
	const char *const v[] = {"*.free.fr max_rcpt=30"};
	struct shape_table *t = table_of(v, 1);
	const struct shape *s = shape_lookup(t, "free.fr");

	assert_null(s->pattern);
	assert_int_equal(s->max_rcpt, SHAPE_DEFAULT_MAX_RCPT);
	assert_int_equal(s->max_msgs, SHAPE_DEFAULT_MAX_MSGS);
	assert_int_equal(s->pause, SHAPE_DEFAULT_PAUSE);
	assert_false(shape_groups(s));
	assert_null(shape_lookup(NULL, "x.test")->pattern);
	shape_table_free(t);
}

static void test_shape_format_prints_every_option(void **state)
{
	(void)state;
	const char *const v[] = {
	    "*.free.fr   rate=1/s source=127.0.0.9 max_connections=2",
	    "x.test pause=2m helo=h.example"};
	struct shape_table *t = table_of(v, 2);
	char buf[512];

	shape_format(shape_table_get(t, 0), buf, sizeof(buf));
	assert_string_equal(buf, "*.free.fr max_connections=2 max_rcpt=50 "
				 "max_msgs=100 rate=1/s source=127.0.0.9 "
				 "pause=60s");
	shape_format(shape_table_get(t, 1), buf, sizeof(buf));
	assert_string_equal(buf, "x.test max_rcpt=50 max_msgs=100 "
				 "helo=h.example pause=120s");
	/* the output reads back as the same line */
	struct shape_table *again = shape_table_new();
	char err[256];
	assert_int_equal(shape_table_add(again, buf, err, sizeof(err)), 0);
	assert_int_equal(shape_table_get(again, 0)->pause, 120);
	shape_table_free(again);
	shape_table_free(t);
}

static void test_shape_source_must_be_local(void **state)
{
	(void)state;
	const char *const v[] = {"a.test source=127.0.0.9",
				 "b.test source=192.0.2.77"};
	struct shape_table *t = table_of(v, 2);
	char err[256];

	assert_int_equal(shape_source_check(shape_table_get(t, 0), err, 256),
			 0);
	assert_int_equal(shape_source_check(shape_table_get(t, 1), err, 256),
			 -1);
	assert_non_null(strstr(err, "not a local address"));
	shape_table_free(t);
}

#define SECOND 1000000ull
#define TICK (SECOND + SECOND / 50) /* 60/m, with the 2% margin */

static void test_shape_bucket_spaces_transactions_evenly(void **state)
{
	(void)state;
	struct shape_bucket b = {0};
	uint64_t t0 = 1000 * SECOND;

	/* 60/m: one a second (and a little), no burst */
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0), 0);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0), TICK);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + SECOND / 4),
			 TICK - SECOND / 4);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + TICK), 0);
	/* a timer a little late keeps the schedule */
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + 2 * TICK + 10), 0);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + 3 * TICK), 0);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + 3 * TICK + 1),
			 TICK - 1);
	/* after an idle spell: no saved burst */
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + 100 * SECOND), 0);
	assert_int_equal(shape_bucket_take(&b, 60, 60, t0 + 100 * SECOND),
			 TICK);
}

static void test_shape_bucket_never_exceeds_the_rate(void **state)
{
	(void)state;
	struct shape_bucket b = {0};
	unsigned taken = 0;

	/* polled every 7 ms for 10 s at 5/s: 50 at most, 49 at least */
	for (uint64_t now = SECOND; now < 11 * SECOND; now += 7000)
		if (shape_bucket_take(&b, 5, 1, now) == 0)
			taken++;
	assert_true(taken >= 49 && taken <= 50);
	/* no rate: always a token */
	assert_int_equal(shape_bucket_take(&b, 0, 0, SECOND), 0);
}

static void test_shape_throttling_replies(void **state)
{
	(void)state;
	assert_true(shape_reply_throttles("421 4.7.0 Try again later"));
	assert_true(shape_reply_throttles("421 Service not available"));
	assert_true(shape_reply_throttles("421"));
	assert_true(shape_reply_throttles("450 4.7.1 Rate limited"));
	assert_true(shape_reply_throttles("451 4.7.28 Too many messages"));
	assert_false(shape_reply_throttles("450 4.2.0 Mailbox busy"));
	assert_false(shape_reply_throttles("452 4.5.3 Too many recipients"));
	assert_false(shape_reply_throttles("550 5.7.1 Refused"));
	assert_false(shape_reply_throttles("connect to x: refused"));
	assert_false(shape_reply_throttles("4210 x"));
	assert_false(shape_reply_throttles(""));
	assert_false(shape_reply_throttles(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_shape_every_option_is_read),
	    cmocka_unit_test(test_shape_defaults_fill_what_is_left_out),
	    cmocka_unit_test(test_shape_rates_in_each_unit),
	    cmocka_unit_test(test_shape_bad_lines_are_refused_with_a_reason),
	    cmocka_unit_test(test_shape_duplicate_pattern_is_refused),
	    cmocka_unit_test(test_shape_most_specific_line_wins),
	    cmocka_unit_test(test_shape_no_line_gives_the_defaults),
	    cmocka_unit_test(test_shape_format_prints_every_option),
	    cmocka_unit_test(test_shape_source_must_be_local),
	    cmocka_unit_test(test_shape_bucket_spaces_transactions_evenly),
	    cmocka_unit_test(test_shape_bucket_never_exceeds_the_rate),
	    cmocka_unit_test(test_shape_throttling_replies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
