/*
 * transport: the backpressure rule, and the flush-then-close and pause
 * contracts the protocols rely on, on in-memory bufferevent pairs (no
 * socket, no TLS).
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
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "facteur/transport.h"

struct link {
	struct event_base *base;
	struct bufferevent *end[2]; /* end[0] is ours, end[1] the peer */
	int writes;		    /* write callbacks on end[0] */
};

static void on_write(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct link *l = arg;
	l->writes++;
}

static int setup(void **state)
{
	struct link *l = calloc(1, sizeof *l);
	if (l == NULL)
		return -1;
	l->base = event_base_new();
	if (l->base == NULL || bufferevent_pair_new(l->base, 0, l->end) == -1) {
		free(l);
		return -1;
	}
	bufferevent_setcb(l->end[0], NULL, on_write, NULL, l);
	bufferevent_enable(l->end[0], EV_READ);
	*state = l;
	return 0;
}

static int teardown(void **state)
{
	struct link *l = *state;
	bufferevent_free(l->end[0]);
	bufferevent_free(l->end[1]);
	event_base_free(l->base);
	free(l);
	return 0;
}

/* Output queued on our end that the peer does not take: its reading is
 * off, as a client that sends without reading. */
static void queue_output(struct link *l, size_t octets)
{
	bufferevent_disable(l->end[1], EV_READ);
	char *junk = calloc(1, octets);
	assert_non_null(junk);
	assert_int_equal(bufferevent_write(l->end[0], junk, octets), 0);
	free(junk);
}

static void
test_transport_backlogged_only_past_the_high_water_mark(void **state)
{
	(void)state;
	assert_false(transport_backlogged(0));
	assert_false(transport_backlogged(TRANSPORT_OUTPUT_HIGH_WATER));
	assert_true(transport_backlogged(TRANSPORT_OUTPUT_HIGH_WATER + 1));
}

static void test_transport_small_backlog_keeps_reading(void **state)
{
	struct link *l = *state;
	bool paused = false;
	queue_output(l, 1024);
	transport_pause_if_backlogged(l->end[0], &paused);
	assert_false(paused);
	assert_true(bufferevent_get_enabled(l->end[0]) & EV_READ);
	assert_false(transport_resume(l->end[0], &paused));
}

static void test_transport_backlog_pauses_until_resumed(void **state)
{
	struct link *l = *state;
	bool paused = false;
	queue_output(l, TRANSPORT_OUTPUT_HIGH_WATER + 1);
	transport_pause_if_backlogged(l->end[0], &paused);
	assert_true(paused);
	assert_false(bufferevent_get_enabled(l->end[0]) & EV_READ);
	assert_true(transport_resume(l->end[0], &paused));
	assert_false(paused);
	assert_true(bufferevent_get_enabled(l->end[0]) & EV_READ);
	/* once only: a second drain finds nothing to resume */
	assert_false(transport_resume(l->end[0], &paused));
}

static void test_transport_drop_input_empties_it(void **state)
{
	struct link *l = *state;
	assert_int_equal(bufferevent_write(l->end[1], "QUIT\r\n", 6), 0);
	event_base_loop(l->base, EVLOOP_NONBLOCK);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(l->end[0])),
			 6);
	transport_drop_input(l->end[0]);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(l->end[0])),
			 0);
}

static void test_transport_close_stops_reading_and_drops_input(void **state)
{
	struct link *l = *state;
	assert_int_equal(bufferevent_write(l->end[1], "NOOP\r\n", 6), 0);
	event_base_loop(l->base, EVLOOP_NONBLOCK);
	queue_output(l, 10);
	transport_close(l->end[0]);
	assert_false(bufferevent_get_enabled(l->end[0]) & EV_READ);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(l->end[0])),
			 0);
	/* the last reply is still queued: it drains first */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(l->end[0])),
			 10);
}

static void
test_transport_close_with_nothing_queued_calls_back_later(void **state)
{
	struct link *l = *state;
	transport_close(l->end[0]);
	assert_int_equal(l->writes, 0); /* never inside the call */
	event_base_loop(l->base, EVLOOP_NONBLOCK);
	assert_int_equal(l->writes, 1);
}

static void
test_transport_accept_refuses_implicit_tls_without_context(void **state)
{
	struct link *l = *state;
	assert_null(transport_accept(l->base, -1, true, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(
		test_transport_backlogged_only_past_the_high_water_mark),
	    cmocka_unit_test_setup_teardown(
		test_transport_small_backlog_keeps_reading, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_transport_backlog_pauses_until_resumed, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_transport_drop_input_empties_it, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_transport_close_stops_reading_and_drops_input, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_transport_close_with_nothing_queued_calls_back_later,
		setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_transport_accept_refuses_implicit_tls_without_context,
		setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
