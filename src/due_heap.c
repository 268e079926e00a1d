/*
 * A binary min-heap of due times (see due_heap.h). Each entry knows its
 * slot, so that moving or removing one is O(log n) without a search.
 */
#include <stdlib.h>

#include "facteur/due_heap.h"

static void place(struct due_heap *h, size_t i, struct due_entry *e)
{
	h->slots[i] = e;
	e->slot = i + 1;
}

static void sift_up(struct due_heap *h, size_t i)
{
	struct due_entry *e = h->slots[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (h->slots[parent]->due <= e->due)
			break;
		place(h, i, h->slots[parent]);
		i = parent;
	}
	place(h, i, e);
}

static void sift_down(struct due_heap *h, size_t i)
{
	struct due_entry *e = h->slots[i];
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= h->count)
			break;
		if (child + 1 < h->count &&
		    h->slots[child + 1]->due < h->slots[child]->due)
			child++;
		if (e->due <= h->slots[child]->due)
			break;
		place(h, i, h->slots[child]);
		i = child;
	}
	place(h, i, e);
}

int due_heap_set(struct due_heap *h, struct due_entry *e, time_t due)
{
	if (e->slot != 0) {
		time_t was = e->due;
		e->due = due;
		if (due < was)
			sift_up(h, e->slot - 1);
		else
			sift_down(h, e->slot - 1);
		return 0;
	}
	if (h->count == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 64;
		struct due_entry **slots =
		    realloc(h->slots, cap * sizeof *slots);
		if (slots == NULL)
			return -1;
		h->slots = slots;
		h->cap = cap;
	}
	e->due = due;
	h->slots[h->count] = e;
	sift_up(h, h->count++);
	return 0;
}

void due_heap_remove(struct due_heap *h, struct due_entry *e)
{
	if (e->slot == 0)
		return;
	size_t i = e->slot - 1;
	e->slot = 0;
	struct due_entry *last = h->slots[--h->count];
	if (i == h->count)
		return;
	place(h, i, last);
	if (i > 0 && h->slots[(i - 1) / 2]->due > last->due)
		sift_up(h, i);
	else
		sift_down(h, i);
}

struct due_entry *due_heap_first(const struct due_heap *h)
{
	return h->count > 0 ? h->slots[0] : NULL;
}

struct due_entry *due_heap_take_due(struct due_heap *h, time_t now)
{
	struct due_entry *e = due_heap_first(h);
	if (e == NULL || e->due > now)
		return NULL;
	due_heap_remove(h, e);
	return e;
}

void due_heap_free(struct due_heap *h)
{
	for (size_t i = 0; i < h->count; i++)
		h->slots[i]->slot = 0;
	free(h->slots);
	h->slots = NULL;
	h->count = h->cap = 0;
}
