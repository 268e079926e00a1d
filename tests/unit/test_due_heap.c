/* The due heap: order, moves and removals against a plain scan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "facteur/due_heap.h"

#define N 500

/* Every parent is due no later than its children, and every entry
 * knows its slot. */
static void assert_heap(const struct due_heap *h)
{
	for (size_t i = 0; i < h->count; i++) {
		assert_int_equal(h->slots[i]->slot, i + 1);
		if (i > 0)
			assert_true(h->slots[(i - 1) / 2]->due <=
				    h->slots[i]->due);
	}
}

/* The earliest of the entries in the heap, by a plain scan. */
static time_t earliest(const struct due_entry *e, size_t n)
{
	time_t best = 0;
	bool any = false;
	for (size_t i = 0; i < n; i++)
		if (due_heap_has(&e[i]) && (!any || e[i].due < best)) {
			best = e[i].due;
			any = true;
		}
	return any ? best : -1;
}

static void test_due_heap_takes_in_due_order(void **state)
{
	(void)state;
	struct due_heap h = {0};
	struct due_entry e[N] = {{0}};
	srandom(7);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(due_heap_set(&h, &e[i], random() % 1000), 0);
	assert_heap(&h);
	assert_null(due_heap_take_due(&h, -1));
	time_t last = -1;
	size_t taken = 0;
	struct due_entry *x;
	while ((x = due_heap_take_due(&h, 1000)) != NULL) {
		assert_true(x->due >= last);
		assert_false(due_heap_has(x));
		last = x->due;
		taken++;
		assert_heap(&h);
	}
	assert_int_equal(taken, N);
	assert_null(due_heap_first(&h));
	due_heap_free(&h);
}

static void test_due_heap_moves_and_removals_keep_order(void **state)
{
	(void)state;
	struct due_heap h = {0};
	struct due_entry e[N] = {{0}};
	srandom(11);
	for (int round = 0; round < 20000; round++) {
		struct due_entry *x = &e[random() % N];
		switch (random() % 3) {
		case 0:
		case 1: /* add, or move earlier or later */
			assert_int_equal(due_heap_set(&h, x, random() % 100000),
					 0);
			break;
		default:
			due_heap_remove(&h, x);
			assert_false(due_heap_has(x));
		}
		if (round % 97 == 0)
			assert_heap(&h);
		struct due_entry *first = due_heap_first(&h);
		assert_int_equal(first ? first->due : -1, earliest(e, N));
	}
	assert_heap(&h);
	due_heap_free(&h);
	for (size_t i = 0; i < N; i++)
		assert_false(due_heap_has(&e[i]));
}

static void test_due_heap_takes_only_what_is_due(void **state)
{
	(void)state;
	struct due_heap h = {0};
	struct due_entry a = {0}, b = {0}, c = {0};
	assert_int_equal(due_heap_set(&h, &a, 30), 0);
	assert_int_equal(due_heap_set(&h, &b, 10), 0);
	assert_int_equal(due_heap_set(&h, &c, 20), 0);
	assert_ptr_equal(due_heap_take_due(&h, 15), &b);
	assert_null(due_heap_take_due(&h, 15));
	/* moved later than a: a comes first */
	assert_int_equal(due_heap_set(&h, &c, 40), 0);
	assert_ptr_equal(due_heap_first(&h), &a);
	due_heap_remove(&h, &a);
	due_heap_remove(&h, &a); /* twice: nothing */
	assert_ptr_equal(due_heap_take_due(&h, 100), &c);
	assert_null(due_heap_first(&h));
	due_heap_free(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_due_heap_takes_in_due_order),
	    cmocka_unit_test(test_due_heap_moves_and_removals_keep_order),
	    cmocka_unit_test(test_due_heap_takes_only_what_is_due),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
