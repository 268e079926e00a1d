/*
 * Interned strings (see spool_strings.h): a chained hash table of
 * counted copies. An entry costs its text and 16 octets of header, plus a
 * bucket; a text shared by n messages saves n - 1 allocations.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/spool_strings.h"

struct entry {
	struct entry *chain;
	size_t refs;
	char text[];
};

struct spool_strings {
	struct entry **buckets;
	size_t mask; /* buckets - 1, a power of two less one */
	size_t count;
	bool closing; /* freed: goes with its last text */
};

#define FIRST_BUCKETS 64

static size_t hash_text(const char *s)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return (size_t)(h ^ h >> 32);
}

static struct entry *entry_of(const char *text)
{
	return (struct entry *)(void *)(text - offsetof(struct entry, text));
}

struct spool_strings *spool_strings_new(void)
{
	struct spool_strings *t = calloc(1, sizeof *t);
	if (t == NULL)
		return NULL;
	t->buckets = calloc(FIRST_BUCKETS, sizeof *t->buckets);
	if (t->buckets == NULL) {
		free(t);
		return NULL;
	}
	t->mask = FIRST_BUCKETS - 1;
	return t;
}

void spool_strings_free(struct spool_strings *t)
{
	if (t == NULL)
		return;
	t->closing = true;
	if (t->count > 0)
		return;
	free(t->buckets);
	free(t);
}

/* Twice the buckets once there are more entries than buckets; when that
 * cannot be had the chains just grow longer. */
static void grow(struct spool_strings *t)
{
	size_t n = (t->mask + 1) * 2;
	if (n > SIZE_MAX / sizeof *t->buckets)
		return;
	struct entry **b = calloc(n, sizeof *b);
	if (b == NULL)
		return;
	for (size_t i = 0; i <= t->mask; i++)
		while (t->buckets[i] != NULL) {
			struct entry *e = t->buckets[i];
			t->buckets[i] = e->chain;
			size_t at = hash_text(e->text) & (n - 1);
			e->chain = b[at];
			b[at] = e;
		}
	free(t->buckets);
	t->buckets = b;
	t->mask = n - 1;
}

const char *spool_strings_get(struct spool_strings *t, const char *s)
{
	if (s == NULL)
		return NULL;
	struct entry **bucket = &t->buckets[hash_text(s) & t->mask];
	for (struct entry *e = *bucket; e != NULL; e = e->chain)
		if (strcmp(e->text, s) == 0) {
			e->refs++;
			return e->text;
		}
	size_t len = strlen(s);
	struct entry *e = malloc(sizeof *e + len + 1);
	if (e == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	e->refs = 1;
	memcpy(e->text, s, len + 1);
	e->chain = *bucket;
	*bucket = e;
	if (++t->count > t->mask + 1)
		grow(t);
	return e->text;
}

void spool_strings_put(struct spool_strings *t, const char *s)
{
	if (s == NULL)
		return;
	struct entry *e = entry_of(s);
	if (--e->refs > 0)
		return;
	struct entry **at = &t->buckets[hash_text(s) & t->mask];
	while (*at != e)
		at = &(*at)->chain;
	*at = e->chain;
	t->count--;
	free(e);
	if (t->count == 0 && t->closing)
		spool_strings_free(t);
}

size_t spool_strings_count(const struct spool_strings *t)
{
	return t->count;
}
