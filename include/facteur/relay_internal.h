/*
 * What the relay's two files share, and nothing outside them may use:
 * the relay, its destinations, and the open connections kept between
 * attempts. Which file does what:
 *
 *   relay.c       attempts: grouping by destination, the connection
 *                 limit, DNS, the loop check, the SMTP client, outcomes
 *   relay_idle.c  connections kept open between attempts: parked after a
 *                 clean transaction, taken by the next attempt with the
 *                 same settings, closed (QUIT) when idle too long, at a
 *                 stop, or to make room
 */
#ifndef FACTEUR_RELAY_INTERNAL_H
#define FACTEUR_RELAY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "facteur/config.h"
#include "facteur/shape.h"

#define DESTINATION_BUCKETS 256

struct event;
struct relay_job;
struct server;
struct smtp_client;
struct localaddr_interfaces;

/* Where remote recipients go: the key is "route <target>" or "mx
 * <domain>", so that recipients and messages sharing a next hop share its
 * connection limit; or "shape <pattern>" for a shape line that sets
 * max_connections or rate, whose limits hold for all the domains it
 * matches together. Its pause and rate schedule live here too. */
struct destination {
	struct destination *next;
	struct relay *relay;
	char *key;
	const char *label; /* for logs and metrics: the key's second word */
	unsigned active;
	struct relay_job *wait_head, **wait_tail;
	struct relay_idle_conn *idle; /* most recently used first */
	unsigned idle_count;
	/* its connections saying QUIT, within its limit until closed: a
	 * receiver that allows one connection sees one */
	unsigned closing;
	struct shape_bucket bucket; /* rate=: when the next may start */
	time_t paused_until;	    /* 0: not paused */
	char *pause_reply;	    /* the throttling reply */
	char pause_dsn[12];
	struct event *timer; /* the pause's end, or the next token */
	/* shape_redis: a question to the fleet in flight, or its yes not
	 * used yet (with the connection slot's lease, 0 for none) */
	bool fleet_asking;
	bool fleet_granted;
	uint64_t fleet_lease;
};

/* An open connection between attempts, with what it was opened with: a
 * reload may change a destination's TLS or AUTH settings under the same
 * key. Once closing (QUIT), it is on the relay's closing list. */
struct relay_idle_conn {
	struct relay_idle_conn *next;
	struct relay *relay;
	struct destination *dest;	 /* NULL once closing */
	struct destination *closing_for; /* once closing */
	unsigned transactions;		 /* carried so far */
	uint64_t lease;			 /* its slot in shape_redis; 0: none */
	struct smtp_client *client;
	struct event *timer;
	enum tls_policy tls;
	char *auth_file;
	char *host; /* the route target or the domain it was opened for */
};

struct relay {
	struct server *srv;
	struct destination *destinations[DESTINATION_BUCKETS];
	struct relay_job *jobs;		 /* every attempt, for shutdown */
	struct relay_idle_conn *closing; /* connections saying QUIT */
	unsigned closing_count;
	struct localaddr_interfaces *interfaces; /* for the loop check */
	struct shape_redis *redis;		 /* NULL: no shape_redis */
	struct mta_sts *sts;			 /* MTA-STS policies */
	bool stopping;
};

/* relay.c: start the next attempts waiting for d (an idle connection of
 * d closed, so a slot is free); forget d when nothing is left of it. */
void relay_destination_drain(struct relay *relay, struct destination *d);

/* A client whose transaction ended cleanly waits for the next attempt to
 * d, opened with `tls` and `auth_file`, having carried `transactions`; at
 * a stop, or when `last` (max_msgs), it says QUIT at once. */
void relay_idle_park(struct relay *relay, struct destination *d,
		     struct smtp_client *client, enum tls_policy tls,
		     const char *auth_file, const char *host,
		     unsigned transactions, uint64_t lease, bool last);
/* An idle connection of d opened with these settings for `host`, taken
 * off d's list; NULL if none. */
struct relay_idle_conn *relay_idle_take(struct destination *d,
					enum tls_policy tls,
					const char *auth_file,
					const char *host);
/* Back onto d's list (a taken connection its attempt did not use). */
void relay_idle_link(struct destination *d, struct relay_idle_conn *ic);
/* Free a taken connection whose client the caller now owns. */
void relay_idle_conn_free(struct relay_idle_conn *ic);
/* QUIT on d's oldest idle connection (to make room), or on all of them. */
void relay_idle_close_oldest(struct destination *d);
void relay_idle_close_all(struct destination *d);
/* QUIT on d's idle connections that hold no shape_redis slot (opened
 * while Redis was away), once Redis is back. */
void relay_idle_close_unleased(struct destination *d);
/* relay_free: cut the connections saying QUIT, and d's idle ones. */
void relay_idle_cancel_closing(struct relay *relay);
void relay_idle_cancel_all(struct destination *d);

#endif
