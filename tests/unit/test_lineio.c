/*
 * lineio: bounded CRLF lines out of an evbuffer, fed as a socket would
 * feed it (several reads, lines split anywhere).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "facteur/lineio.h"

#define LIMIT 8 /* octets, CRLF included */

struct reader {
	struct evbuffer *in;
	bool discarding;
	char out[LIMIT];
	size_t len;
	enum lineio_end end;
};

static int setup(void **state)
{
	struct reader *r = calloc(1, sizeof *r);
	if (r == NULL)
		return -1;
	r->in = evbuffer_new();
	if (r->in == NULL) {
		free(r);
		return -1;
	}
	r->end = LINEIO_END_CRLF;
	*state = r;
	return 0;
}

static int teardown(void **state)
{
	struct reader *r = *state;
	evbuffer_free(r->in);
	free(r);
	return 0;
}

/* One read from the socket: its own chain in the buffer, as bufferevents
 * often leave it. */
static void feed(struct reader *r, const char *bytes, size_t n)
{
	assert_int_equal(evbuffer_add_reference(r->in, bytes, n, NULL, NULL),
			 0);
}

static void feed_text(struct reader *r, const char *text)
{
	feed(r, text, strlen(text));
}

static enum lineio_result next(struct reader *r)
{
	r->len = (size_t)-1;
	return lineio_read(r->in, r->end, LIMIT, &r->discarding, r->out,
			   &r->len);
}

static void assert_line(struct reader *r, const char *expected)
{
	assert_int_equal(next(r), LINEIO_LINE);
	assert_int_equal(r->len, strlen(expected));
	assert_memory_equal(r->out, expected, r->len);
	assert_int_equal(r->out[r->len], '\0');
}

static void test_lineio_line_is_given_without_its_crlf(void **state)
{
	struct reader *r = *state;
	feed_text(r, "NOOP\r\nQUIT\r\n");
	assert_line(r, "NOOP");
	assert_line(r, "QUIT");
	assert_int_equal(next(r), LINEIO_NONE);
	assert_int_equal(evbuffer_get_length(r->in), 0);
}

static void test_lineio_empty_line_is_a_line(void **state)
{
	struct reader *r = *state;
	feed_text(r, "\r\n");
	assert_line(r, "");
}

static void test_lineio_line_at_exact_limit_is_read(void **state)
{
	struct reader *r = *state;
	feed_text(r, "ABCDEF\r\n"); /* 6 + CRLF = LIMIT */
	assert_line(r, "ABCDEF");
	assert_false(r->discarding);
}

static void test_lineio_line_one_over_limit_is_too_long_once(void **state)
{
	struct reader *r = *state;
	feed_text(r, "ABCDEFG\r\nNOOP\r\n"); /* 7 + CRLF = LIMIT + 1 */
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_false(r->discarding);
	assert_line(r, "NOOP");
	assert_int_equal(next(r), LINEIO_NONE);
}

static void test_lineio_incomplete_line_waits_untouched(void **state)
{
	struct reader *r = *state;
	feed_text(r, "1234567"); /* one short of the limit, no end yet */
	assert_int_equal(next(r), LINEIO_NONE);
	assert_int_equal(evbuffer_get_length(r->in), 7);
	assert_false(r->discarding);
}

static void test_lineio_line_completed_over_limit_is_too_long(void **state)
{
	struct reader *r = *state;
	feed_text(r, "1234567");
	assert_int_equal(next(r), LINEIO_NONE);
	feed_text(r, "\r\n");
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_int_equal(evbuffer_get_length(r->in), 0);
	assert_false(r->discarding);
}

static void test_lineio_line_split_across_feeds(void **state)
{
	struct reader *r = *state;
	feed_text(r, "NO");
	assert_int_equal(next(r), LINEIO_NONE);
	feed_text(r, "OP\r");
	assert_int_equal(next(r), LINEIO_NONE);
	feed_text(r, "\nRS");
	assert_line(r, "NOOP");
	assert_int_equal(next(r), LINEIO_NONE);
	feed_text(r, "ET\r\n");
	assert_line(r, "RSET");
}

static void test_lineio_unended_long_line_is_dropped_across_feeds(void **state)
{
	struct reader *r = *state;
	feed_text(r, "12345678"); /* the limit reached with no end in sight */
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_true(r->discarding);
	assert_int_equal(evbuffer_get_length(r->in), 0);
	assert_int_equal(next(r), LINEIO_NONE);

	feed_text(r, "abcdefghij"); /* still the same line: no second report */
	assert_int_equal(next(r), LINEIO_NONE);
	assert_true(r->discarding);
	assert_int_equal(evbuffer_get_length(r->in), 0);

	feed_text(r, "xy");
	assert_int_equal(next(r), LINEIO_NONE);
	feed_text(r, "\r\nNOOP\r\n");
	assert_int_equal(next(r), LINEIO_SKIPPED);
	assert_false(r->discarding);
	assert_line(r, "NOOP");
	assert_int_equal(next(r), LINEIO_NONE);
}

static void test_lineio_cr_ending_a_feed_is_kept_while_dropping(void **state)
{
	struct reader *r = *state;
	feed_text(r, "1234567\r"); /* the CR may start the line's CRLF */
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_true(r->discarding);
	assert_int_equal(evbuffer_get_length(r->in), 1);
	feed_text(r, "\nNOOP\r\n");
	assert_int_equal(next(r), LINEIO_SKIPPED);
	assert_line(r, "NOOP");
}

static void test_lineio_other_last_octet_is_dropped(void **state)
{
	struct reader *r = *state;
	feed_text(r, "12345678");
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_int_equal(evbuffer_get_length(r->in), 0);
	/* A LF alone now does not end the dropped line. */
	feed_text(r, "\nNOOP\r\n");
	assert_int_equal(next(r), LINEIO_SKIPPED);
	assert_int_equal(next(r), LINEIO_NONE);
}

static void test_lineio_bare_lf_does_not_end_a_line(void **state)
{
	struct reader *r = *state;
	feed_text(r, "AB\nCD\r\n");
	assert_line(r, "AB\nCD");
}

static void test_lineio_bare_cr_does_not_end_a_line(void **state)
{
	struct reader *r = *state;
	feed_text(r, "AB\rCD\r\n");
	assert_line(r, "AB\rCD");
}

static void test_lineio_lenient_end_takes_a_bare_lf(void **state)
{
	struct reader *r = *state;
	r->end = LINEIO_END_CRLF_OR_LF;
	feed_text(r, "USER a\nPASS b\r\n");
	assert_line(r, "USER a");
	assert_line(r, "PASS b");
}

static void test_lineio_lenient_limit_counts_the_lf(void **state)
{
	struct reader *r = *state;
	r->end = LINEIO_END_CRLF_OR_LF;
	feed_text(r, "1234567\n12345678\nNOOP\n");
	assert_line(r, "1234567");
	assert_int_equal(next(r), LINEIO_TOO_LONG);
	assert_line(r, "NOOP");
}

static void test_lineio_nul_octets_stay_in_the_line(void **state)
{
	struct reader *r = *state;
	static const char bytes[] = {'A', '\0', 'B', '\r', '\n'};
	feed(r, bytes, sizeof bytes);
	assert_int_equal(next(r), LINEIO_LINE);
	assert_int_equal(r->len, 3);
	assert_memory_equal(r->out, "A\0B", 3);
}

static void test_lineio_starts_with_ignores_case(void **state)
{
	struct reader *r = *state;
	feed_text(r, "auth PLAIN\r\n");
	assert_true(lineio_starts_with(r->in, "AUTH "));
	assert_false(lineio_starts_with(r->in, "AUTHX"));
	assert_int_equal(evbuffer_get_length(r->in), 12); /* only looked */
}

static void test_lineio_starts_with_needs_the_whole_prefix(void **state)
{
	struct reader *r = *state;
	assert_false(lineio_starts_with(r->in, "AUTH "));
	feed_text(r, "AUT");
	assert_false(lineio_starts_with(r->in, "AUTH "));
	feed_text(r, "H");
	assert_false(lineio_starts_with(r->in, "AUTH "));
	feed_text(r, " ");
	assert_true(lineio_starts_with(r->in, "AUTH "));
}

static void test_lineio_starts_with_long_prefix_over_feeds(void **state)
{
	struct reader *r = *state;
	feed_text(r, "0123456789abc");
	feed_text(r, "defGHIJKLmnop");
	assert_true(lineio_starts_with(r->in, "0123456789ABCDEFghijklMNOP"));
	assert_false(lineio_starts_with(r->in, "0123456789ABCDEFghijklMNOX"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	    T(test_lineio_line_is_given_without_its_crlf),
	    T(test_lineio_empty_line_is_a_line),
	    T(test_lineio_line_at_exact_limit_is_read),
	    T(test_lineio_line_one_over_limit_is_too_long_once),
	    T(test_lineio_incomplete_line_waits_untouched),
	    T(test_lineio_line_completed_over_limit_is_too_long),
	    T(test_lineio_line_split_across_feeds),
	    T(test_lineio_unended_long_line_is_dropped_across_feeds),
	    T(test_lineio_cr_ending_a_feed_is_kept_while_dropping),
	    T(test_lineio_other_last_octet_is_dropped),
	    T(test_lineio_bare_lf_does_not_end_a_line),
	    T(test_lineio_bare_cr_does_not_end_a_line),
	    T(test_lineio_lenient_end_takes_a_bare_lf),
	    T(test_lineio_lenient_limit_counts_the_lf),
	    T(test_lineio_nul_octets_stay_in_the_line),
	    T(test_lineio_starts_with_ignores_case),
	    T(test_lineio_starts_with_needs_the_whole_prefix),
	    T(test_lineio_starts_with_long_prefix_over_feeds),
#undef T
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
