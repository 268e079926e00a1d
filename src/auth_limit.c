/*
 * The failed-login table (see auth_limit.h): one chained hash table of
 * windows keyed by "c" + the client's 16 octets, "a" + the account in
 * lower case, or "r" + the client's 16 octets for a rate. Each window
 * keeps its own length, so a sweep knows which are over whatever kind
 * of key it holds. Lookups are O(1); only a full table costs a sweep,
 * which frees at least a second's worth of windows.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth_limit.h"

#define BUCKETS 4096
#define KEY_MAX 400 /* 'a' + an address of up to 320 octets */

struct window {
	struct window *next;
	time_t start;	   /* the first event of the window */
	unsigned length;   /* seconds: kinds of keys have their own */
	unsigned failures; /* or messages, for a rate key */
	size_t len;
	unsigned char key[];
};

struct auth_limit {
	struct window *buckets[BUCKETS];
	size_t count, capacity;
};

struct auth_limit *auth_limit_new(size_t capacity)
{
	struct auth_limit *t = calloc(1, sizeof *t);
	if (t != NULL)
		t->capacity = capacity ? capacity : 1;
	return t;
}

void auth_limit_free(struct auth_limit *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < BUCKETS; i++) {
		while (t->buckets[i] != NULL) {
			struct window *next = t->buckets[i]->next;
			free(t->buckets[i]);
			t->buckets[i] = next;
		}
	}
	free(t);
}

size_t auth_limit_size(const struct auth_limit *t)
{
	return t->count;
}

static size_t client_key(const uint8_t client[16], unsigned char *key)
{
	key[0] = 'c';
	memcpy(key + 1, client, 16);
	return 17;
}

/* 0 when there is no account or it is too long to be one. */
static size_t account_key(const char *account, unsigned char *key)
{
	if (account == NULL)
		return 0;
	size_t len = strlen(account);
	if (len == 0 || len + 1 > KEY_MAX)
		return 0;
	key[0] = 'a';
	for (size_t i = 0; i < len; i++)
		key[i + 1] = (unsigned char)tolower((unsigned char)account[i]);
	return len + 1;
}

static unsigned bucket_of(const unsigned char *key, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % BUCKETS;
}

static struct window **find(struct auth_limit *t, const unsigned char *key,
			    size_t len)
{
	struct window **at = &t->buckets[bucket_of(key, len)];
	while (*at != NULL &&
	       ((*at)->len != len || memcmp((*at)->key, key, len) != 0))
		at = &(*at)->next;
	return at;
}

/* `window`: the caller's length; a sweep uses each window's own. */
static bool over(const struct window *w, time_t now, unsigned window)
{
	return now - w->start >= (time_t)window || now < w->start;
}

/* Forget the windows that opened at or before `until` (all of them
 * when `until` is NULL) or that are over; returns the oldest start of
 * those left. */
static time_t sweep(struct auth_limit *t, time_t now, const time_t *until)
{
	time_t oldest = now;
	for (size_t i = 0; i < BUCKETS; i++) {
		struct window **at = &t->buckets[i];
		while (*at != NULL) {
			if (over(*at, now, (*at)->length) ||
			    (until != NULL && (*at)->start <= *until)) {
				struct window *gone = *at;
				*at = gone->next;
				free(gone);
				t->count--;
				continue;
			}
			if ((*at)->start < oldest)
				oldest = (*at)->start;
			at = &(*at)->next;
		}
	}
	return oldest;
}

/* Forget the windows that are over; if none is, those of the oldest
 * second. Dropping a whole second at once keeps a flood of new clients
 * from paying a sweep of the full table for each one of them. */
static void make_room(struct auth_limit *t, time_t now)
{
	time_t oldest = sweep(t, now, NULL);
	if (t->count >= t->capacity)
		sweep(t, now, &oldest);
}

static void count_one(struct auth_limit *t, const unsigned char *key,
		      size_t len, time_t now, unsigned window)
{
	struct window **at = find(t, key, len);
	if (*at == NULL) {
		if (t->count >= t->capacity) {
			make_room(t, now);
			at = find(t, key, len);
		}
		struct window *w = malloc(sizeof *w + len);
		if (w == NULL)
			return; /* uncounted: the per-session limit still holds
				 */
		w->next = NULL;
		w->start = now;
		w->length = window;
		w->failures = 0;
		w->len = len;
		memcpy(w->key, key, len);
		*at = w;
		t->count++;
	} else if (over(*at, now, window)) {
		(*at)->start = now;
		(*at)->length = window;
		(*at)->failures = 0;
	}
	(*at)->failures++;
}

void auth_limit_failure(struct auth_limit *t, const uint8_t client[16],
			const char *account, time_t now, unsigned window)
{
	unsigned char key[KEY_MAX];
	count_one(t, key, client_key(client, key), now, window);
	size_t len = account_key(account, key);
	if (len > 0)
		count_one(t, key, len, now, window);
}

/* Failures in the current window of this key (0 when it is over). */
static unsigned failures(struct auth_limit *t, const unsigned char *key,
			 size_t len, time_t now, unsigned window,
			 unsigned *wait)
{
	struct window **at = find(t, key, len);
	if (*at == NULL || over(*at, now, window))
		return 0;
	if (wait != NULL)
		*wait = (unsigned)((*at)->start + (time_t)window - now);
	return (*at)->failures;
}

bool auth_limit_client_refused(struct auth_limit *t, const uint8_t client[16],
			       time_t now, unsigned limit, unsigned window,
			       unsigned *wait)
{
	unsigned char key[KEY_MAX];
	return failures(t, key, client_key(client, key), now, window, wait) >=
	       limit;
}

bool auth_limit_account_open(struct auth_limit *t, const uint8_t client[16],
			     const char *account, time_t now, unsigned limit,
			     unsigned window)
{
	unsigned char key[KEY_MAX];
	size_t len = account_key(account, key);
	if (len == 0 || failures(t, key, len, now, window, NULL) < limit)
		return true;
	return failures(t, key, client_key(client, key), now, window, NULL) ==
	       0;
}

bool auth_limit_rate_take(struct auth_limit *t, const uint8_t client[16],
			  time_t now, unsigned limit, unsigned window)
{
	unsigned char key[KEY_MAX];
	size_t len = client_key(client, key);
	key[0] = 'r';
	if (failures(t, key, len, now, window, NULL) >= limit)
		return false;
	count_one(t, key, len, now, window);
	return true;
}
