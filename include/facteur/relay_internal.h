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

#include "facteur/config.h"

#define DESTINATION_BUCKETS 256

struct event;
struct relay_job;
struct server;
struct smtp_client;
struct localaddr_interfaces;

/* Where remote recipients go: the key is "route <target>" or "mx
 * <domain>", so that recipients and messages sharing a next hop share its
 * connection limit. */
struct destination {
	struct destination *next;
	char *key;
	unsigned active;
	struct relay_job *wait_head, **wait_tail;
	struct relay_idle_conn *idle; /* most recently used first */
	unsigned idle_count;
};

/* An open connection between attempts, with what it was opened with: a
 * reload may change a destination's TLS or AUTH settings under the same
 * key. Once closing (QUIT), it is on the relay's closing list. */
struct relay_idle_conn {
	struct relay_idle_conn *next;
	struct relay *relay;
	struct destination *dest; /* NULL once closing */
	struct smtp_client *client;
	struct event *timer;
	enum tls_policy tls;
	char *auth_file;
};

struct relay {
	struct server *srv;
	struct destination *destinations[DESTINATION_BUCKETS];
	struct relay_job *jobs;		 /* every attempt, for shutdown */
	struct relay_idle_conn *closing; /* connections saying QUIT */
	unsigned closing_count;
	struct localaddr_interfaces *interfaces; /* for the loop check */
	bool stopping;
};

/* relay.c: start the next attempts waiting for d (an idle connection of
 * d closed, so a slot is free). */
void relay_destination_drain(struct relay *relay, struct destination *d);

/* A client whose transaction ended cleanly waits for the next attempt to
 * d, opened with `tls` and `auth_file`; at a stop it says QUIT at once. */
void relay_idle_park(struct relay *relay, struct destination *d,
		     struct smtp_client *client, enum tls_policy tls,
		     const char *auth_file);
/* An idle connection of d opened with these settings, taken off d's
 * list; NULL if none. */
struct relay_idle_conn *relay_idle_take(struct destination *d,
					enum tls_policy tls,
					const char *auth_file);
/* Back onto d's list (a taken connection its attempt did not use). */
void relay_idle_link(struct destination *d, struct relay_idle_conn *ic);
/* Free a taken connection whose client the caller now owns. */
void relay_idle_conn_free(struct relay_idle_conn *ic);
/* QUIT on d's oldest idle connection (to make room), or on all of them. */
void relay_idle_close_oldest(struct destination *d);
void relay_idle_close_all(struct destination *d);
/* relay_free: cut the connections saying QUIT, and d's idle ones. */
void relay_idle_cancel_closing(struct relay *relay);
void relay_idle_cancel_all(struct destination *d);

#endif
