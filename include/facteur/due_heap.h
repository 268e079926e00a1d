/*
 * Which queued message is due next: a binary min-heap of due times, each
 * entry embedded in what it schedules. The scheduler keeps one heap and
 * one timer for the whole queue instead of a timer per message (a
 * libevent event and its allocation cost about 150 bytes a message,
 * which at a million deferred messages is most of the queue's memory).
 * Pure: no clock, no loop.
 */
#ifndef FACTEUR_DUE_HEAP_H
#define FACTEUR_DUE_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Embedded in the scheduled object; zeroed (not in the heap) at first. */
struct due_entry {
	time_t due;
	size_t slot; /* its place in the heap, plus one; 0: not in it */
};

struct due_heap {
	struct due_entry **slots;
	size_t count, cap;
};

/* e is due at `due`: added, or moved if already in. -1 when out of
 * memory (e unchanged). */
int due_heap_set(struct due_heap *h, struct due_entry *e, time_t due);
/* e out of the heap, if it is in. */
void due_heap_remove(struct due_heap *h, struct due_entry *e);
/* The entry due first, or NULL. */
struct due_entry *due_heap_first(const struct due_heap *h);
/* The entry due first if it is due at `now` or before, taken out; NULL
 * when none is. */
struct due_entry *due_heap_take_due(struct due_heap *h, time_t now);
static inline bool due_heap_has(const struct due_entry *e)
{
	return e->slot != 0;
}
void due_heap_free(struct due_heap *h);

#endif
