/*
 * Delivery shaping: the `shape` table says, per recipient domain, how
 * gently the relay treats the receiver (connections at once, recipients
 * per transaction, messages per connection, transactions started per
 * unit of time, the local address and EHLO name to use, and how long to
 * stay away after a throttling reply). Parsing a line, looking a domain
 * up and the token bucket are pure code: time is passed in, nothing here
 * opens a socket except shape_source_check, run once per load of the
 * settings.
 */
#ifndef FACTEUR_SHAPE_H
#define FACTEUR_SHAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "facteur/route.h"

#define SHAPE_DEFAULT_MAX_RCPT 50
#define SHAPE_DEFAULT_MAX_MSGS 100
#define SHAPE_DEFAULT_PAUSE 60 /* seconds */

struct shape {
	enum route_pattern_kind kind; /* patterns as for routes */
	char *pattern;		      /* NULL: the defaults, no line */
	unsigned max_connections;     /* 0: max_connections_per_destination */
	unsigned max_rcpt;
	unsigned max_msgs;
	unsigned rate_count;  /* transactions per rate_period seconds */
	unsigned rate_period; /* 0: no rate limit */
	bool has_source;
	struct sockaddr_storage source; /* port 0 */
	socklen_t source_len;
	char *helo;	/* NULL: hostname */
	unsigned pause; /* seconds */
	char *text;	/* the line as written */
};

struct shape_table;

struct shape_table *shape_table_new(void);
void shape_table_free(struct shape_table *table);

/*
 * Parse one `shape` value ("PATTERN OPTION...") and add it to the table.
 * Returns 0, or -1 with a short reason in `err` (an unknown option, a
 * count of 0, rate=0, a bad address, a duplicate pattern...).
 */
int shape_table_add(struct shape_table *table, const char *value, char *err,
		    size_t errlen);

size_t shape_table_count(const struct shape_table *table);
const struct shape *shape_table_get(const struct shape_table *table, size_t i);

/* The most specific line for `domain` (as route_lookup), or the
 * defaults (pattern NULL) when none matches; never NULL. */
const struct shape *shape_lookup(const struct shape_table *table,
				 const char *domain);

/* Does this line count connections and rate for all the domains it
 * matches together (it sets max_connections or rate)? Otherwise each
 * next hop keeps its own count. */
bool shape_groups(const struct shape *shape);

/* "*.free.fr max_connections=2 max_rcpt=50 ...": the line with every
 * option, defaults included, as -n prints it. */
void shape_format(const struct shape *shape, char *buf, size_t len);

/* Can source= be bound here? 0, or -1 with the reason in `err`. One
 * socket opened and closed: run with the settings, never per attempt. */
int shape_source_check(const struct shape *shape, char *err, size_t errlen);

/*
 * The rate of transactions, spaced evenly (no burst): a token every
 * period/count, 2% more. `next_us` is when the next one is due, in the
 * caller's clock; 0 when none was taken yet.
 */
struct shape_bucket {
	uint64_t next_us;
};

/* The time between two tokens, in microseconds; 0 for no rate. */
uint64_t shape_rate_interval_us(unsigned count, unsigned period);

/* Take a token at now_us: 0 when one was there (it is taken), else the
 * microseconds to wait for it (nothing taken). */
uint64_t shape_bucket_take(struct shape_bucket *bucket, unsigned count,
			   unsigned period, uint64_t now_us);

/* shape_redis = "HOST:PORT[/DB]": HOST an IPv4 address, "[IPv6]" or
 * "localhost" (no name look-up on the loop). 0, or -1 with the reason in
 * err. */
int shape_parse_redis_address(const char *text, char *host, size_t hostlen,
			      uint16_t *port, unsigned *db, char *err,
			      size_t errlen);

/*
 * Is this reply a receiver throttling us: a 421 at any stage, or a 4xx
 * whose enhanced code is 4.7.x? `reason` is the reply as a relay outcome
 * reports it ("421 4.7.0 Try again later").
 */
bool shape_reply_throttles(const char *reason);

#endif
