/*
 * What the relay's three files share, and nothing outside them may use:
 * the relay, its destinations, its attempts, and the open connections
 * kept between attempts. Which file does what:
 *
 *   relay.c          attempts: grouping by destination and sender, the
 *                    connection limit, shaping and pauses, connecting
 *                    (the SMTP client), outcomes, the relay's life
 *   relay_resolve.c  where an attempt connects and under which TLS
 *                    policy: its targets resolved in order, the loop
 *                    check, the MTA-STS policy beside the MX look-up,
 *                    DANE's TLSA look-ups, the TLS reports' counts
 *   relay_idle.c     connections kept open between attempts: parked
 *                    after a clean transaction, taken by the next attempt
 *                    with the same settings, closed (QUIT) when idle too
 *                    long, at a stop, or to make room
 */
#ifndef FACTEUR_RELAY_INTERNAL_H
#define FACTEUR_RELAY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <sys/socket.h>
#include <time.h>

#include "facteur/config.h"
#include "facteur/mta_sts.h"
#include "facteur/relay.h"
#include "facteur/route.h"
#include "facteur/shape.h"
#include "facteur/smtp_client.h"
#include "facteur/status_code.h"

#define DESTINATION_BUCKETS 256

struct dane_lookup;
struct dns_query;
struct dns_result;
struct event;
struct localaddr_interfaces;
struct mta_sts_wait;
struct server;
struct smtp_client;

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

#define MAX_ADDRESSES_PER_ATTEMPT 10

/* One attempt at some recipients of a message for one destination. The
 * route's fields are copied: a reload may free the table meanwhile. */
struct relay_job {
	struct relay_job *next;		       /* in its destination's FIFO */
	struct relay_job *prev_job, *next_job; /* every job */
	struct relay *relay;
	const struct spool_envelope *env;
	relay_done_cb done;
	void *arg;
	struct destination *dest;
	size_t *rcpts;
	size_t rcpt_count;
	char *domain; /* the recipients' domain */
	bool routed;
	char *host; /* the first target's host, or the domain: for reports */
	/* the route's targets, or the domain's MX hosts as the only one */
	struct route_target *targets;
	size_t target_count;
	size_t target_next; /* the next to resolve */
	/* what resolving has found so far, each with its own host name */
	struct smtp_client_address *addrs;
	char **addr_hosts;
	size_t addr_count;
	enum tls_policy tls;
	bool implicit_tls;
	bool lmtp; /* local_transport: LMTP to the mailbox server */
	char *auth_file;
	char *auth_user; /* read with the settings; NULL: unreadable */
	char *auth_password;
	/* from the shape of the recipients' domain */
	unsigned max_connections; /* 0: max_connections_per_destination */
	unsigned max_msgs;
	unsigned rate_count, rate_period;
	unsigned pause;
	bool has_source;
	struct sockaddr_storage source;
	char *helo;		    /* NULL: hostname */
	unsigned conn_transactions; /* this one included, on its connection */
	uint64_t lease;		    /* its connection's slot in shape_redis */
	struct dns_query *dns;
	/* DANE: each target's TLSA look-ups (their records back the
	 * addresses' until the job ends), and whether one is in flight */
	struct dane_lookup **dane;
	bool dane_waiting;
	struct smtp_client *client;
	/* An outcome for every recipient, reported on the next loop turn. */
	struct event *failed;
	enum rcpt_state fail_state;
	char fail_dsn[16];
	char *fail_reason;
	time_t retry_at; /* deferred while its destination is paused */
	/* MTA-STS (MX delivery only): the look-up in flight, then the
	 * domain's policy (mode none: no policy), and the MX hosts it does
	 * not name */
	struct mta_sts_wait *sts_wait;
	struct mta_sts_policy sts;
	unsigned sts_mismatched;
	/* the MX answer, when it came before the policy: kept until the
	 * policy says which of its hosts count, and how */
	struct dns_result *mx_held;
};

/* relay.c: start the next attempts waiting for d (an idle connection of
 * d closed, so a slot is free); forget d when nothing is left of it. */
void relay_destination_drain(struct relay *relay, struct destination *d);

/* relay.c: what every recipient of the attempt gets should no target
 * give an address (why the last one gave none), or should the whole
 * attempt fail; reported when the attempt ends. */
void relay_note_failure(struct relay_job *job, enum rcpt_state state,
			enum status_code dsn, const char *reason);
/* relay.c: every target resolved: connect to the addresses found, or
 * report the failure noted (on the next loop turn). */
void relay_connect(struct relay_job *job);

/* relay_resolve.c: the attempt's targets resolved in order (beside the
 * domain's MTA-STS policy when it applies), then relay_connect; the
 * callbacks run later, never inside this call. */
void relay_start(struct relay_job *job);
/* Whether the domain's MTA-STS policy governs an attempt: its own MX
 * hosts, never a route's, and not for a message whose sender said
 * "TLS-Required: No". */
bool relay_sts_applies(const struct relay *relay,
		       const struct spool_envelope *env, bool routed);
/* The published policy the attempt went under, for the log lines
 * ("sts-enforce", "sts-testing" or "none"). */
const char *relay_tls_policy_name(const struct relay_job *job);
/* The TLS reports' and metrics' count of a finished attempt's last
 * connection: under its MX host's TLSA policy when it was under DANE,
 * else under the domain's MTA-STS policy, if any. */
void relay_tls_count(const struct relay_job *job,
		     const struct smtp_client_result *res);

/* relay_idle.c: a client whose transaction ended cleanly waits for the
 * next attempt to d, opened with `tls` and `auth_file`, having carried
 * `transactions`; at a stop, or when `last` (max_msgs), it says QUIT at
 * once. */
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
