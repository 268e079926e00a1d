/* Shared unit test fixtures that run an event loop (see support.h); apart
 * from support.c so that a test of a module with no configuration links
 * it alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <time.h>

#include <event2/event.h>

#include "support.h"

/* A test's callbacks run on the loop; 30 s is far past any of them. */
#define SUPPORT_LOOP_SECONDS 30

static int calls_at(const int *first, size_t stride, size_t i)
{
	return *(const int *)((const char *)first + i * stride);
}

void support_wait_calls(struct event_base *base, const int *first,
			size_t stride, size_t n)
{
	time_t deadline = time(NULL) + SUPPORT_LOOP_SECONDS;

	for (;;) {
		size_t done = 0;

		for (size_t i = 0; i < n; i++)
			done += calls_at(first, stride, i) > 0;
		if (done == n)
			break;
		assert_true(time(NULL) < deadline);
		assert_int_not_equal(event_base_loop(base, EVLOOP_ONCE), -1);
	}
	for (size_t i = 0; i < n; i++)
		assert_int_equal(calls_at(first, stride, i), 1);
}
