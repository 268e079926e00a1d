/*
 * Fleet-wide shaping limits in Redis (shape_redis = HOST:PORT[/DB]): the
 * connection slots and rate tokens of a shaped destination are counted
 * across every facteurd that names the same Redis. A slot is a lease
 * with an expiry, renewed while held, so that a crashed instance does
 * not hold slots forever; taking a slot and a token is one Lua script,
 * atomic on the server, timed by the server's clock. Keys start with
 * "facteur:".
 *
 * Every call is asynchronous (hiredis's libevent adapter): an answer's
 * callback always runs later, never inside the call. While Redis cannot
 * be reached the calls say so at once and the caller applies its local
 * limits alone; the outage is logged once (redis_unavailable), each
 * failure counted (facteur_redis_errors_total), and the connection
 * tried again with a growing delay.
 */
#ifndef FACTEUR_SHAPE_REDIS_H
#define FACTEUR_SHAPE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct shape_redis;

/* Connects at once (in the background); NULL when text is bad or out
 * of memory. `up`, when not NULL, runs from the loop each time Redis
 * answers after an outage (not at the first connection). */
typedef void (*shape_redis_up_cb)(void *arg);
struct shape_redis *shape_redis_new(struct event_base *base, const char *text,
				    shape_redis_up_cb up, void *arg);
/* Pending answers are dropped (no callback); held leases expire. */
void shape_redis_free(struct shape_redis *sr);

enum shape_redis_answer {
	SHAPE_REDIS_GRANTED, /* start; `lease` holds the slot (0: none) */
	SHAPE_REDIS_DENIED,  /* the fleet is at the limit: ask again later */
	SHAPE_REDIS_FAILED,  /* Redis went away: local limits alone */
};

typedef void (*shape_redis_cb)(enum shape_redis_answer answer, uint64_t lease,
			       unsigned retry_ms, void *arg);

/*
 * May a transaction of destination `key` start? With want_conn, it
 * needs a connection slot among `limit`; with interval_us, a rate token
 * (one every interval_us across the fleet). 0: the answer comes through
 * cb; -1: Redis is not reachable now, no callback.
 */
int shape_redis_acquire(struct shape_redis *sr, const char *key, bool want_conn,
			unsigned limit, uint64_t interval_us, shape_redis_cb cb,
			void *arg);

/* The connection of this lease is closed: its slot is free. */
void shape_redis_release(struct shape_redis *sr, const char *key,
			 uint64_t lease);

#endif
