/*
 * Relay attempts: the due remote recipients of a message go to their
 * next hop (the sender's route, a route, or the domain's own MX hosts).
 * The recipients are grouped by destination and by sender
 * (spool_rcpt.sender: SRS), one attempt per group; each destination has
 * at most max_connections_per_destination attempts in flight, the
 * others wait in its FIFO. An attempt resolves (DNS), checks that the
 * hosts are not this daemon (the loop check), then hands the message to
 * smtp_client. A connection whose transaction ended cleanly is kept for
 * the next attempt to the same destination.
 *
 * An attempt's callback always runs later, never inside relay_send;
 * relay_stop and relay_free end the attempts they drop inside the call.
 */
#ifndef FACTEUR_RELAY_H
#define FACTEUR_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "facteur/spool.h"

struct relay;
struct server;

/* What became of one recipient of an attempt. The strings are valid
 * during the callback only. */
struct relay_outcome {
	size_t rcpt; /* its index in the envelope */
	enum rcpt_state state;
	const char *dsn;
	const char *reason; /* NULL or "" for none */
	const char *relay;  /* the host that answered, or the target */
	bool answered;	    /* a server gave this outcome (not DNS, not us) */
	const char *tls;    /* when answered: "TLSv1.3"..., or "none" */
	/* when answered: the outbound TLS policy that applied ("none",
	 * "sts-testing", "sts-enforce", "dane") and whether the peer's
	 * certificate was valid */
	const char *tls_policy;
	bool verified;
	/* a deferral while the destination is paused: due again at this
	 * time rather than after the backoff; 0 otherwise */
	time_t retry_at;
};

enum relay_end {
	RELAY_END_DONE,	   /* every recipient has an outcome */
	RELAY_END_DROPPED, /* stopped before it talked SMTP: no outcome */
	RELAY_END_FREED,   /* the relay is being freed */
};

/* Called once per attempt. RELAY_END_DONE: an outcome for each of its
 * recipients; RELAY_END_DROPPED: its recipients, `rcpt` alone set;
 * RELAY_END_FREED: none. */
typedef void (*relay_done_cb)(enum relay_end end,
			      const struct relay_outcome *outcomes,
			      size_t count, void *arg);

struct relay *relay_new(struct server *srv);
/* Every attempt ends with RELAY_END_FREED; open connections are cut. */
void relay_free(struct relay *relay);

/*
 * Start (or queue) attempts for the `count` recipients `due` of `env`,
 * grouped by destination and sender. `env` must outlive the attempts.
 * Returns the number of attempts: `done` is called that many times with
 * `arg`.
 */
size_t relay_send(struct relay *relay, const struct spool_envelope *env,
		  const size_t *due, size_t count, relay_done_cb done,
		  void *arg);

/*
 * The same for local recipients when local_transport is set: to its LMTP
 * server, max_rcpt (50) a transaction, over connections kept and reused
 * as for a destination of their own ("lmtp lmtp:unix:/path"). Outcomes
 * name the server as the setting does ("lmtp:unix:/path").
 */
size_t relay_send_lmtp(struct relay *relay, const struct spool_envelope *env,
		       const size_t *due, size_t count, relay_done_cb done,
		       void *arg);

/*
 * Read the auth= files of the routes and sender routes: at start and at
 * each reload, with the rest of the settings, never on the loop per
 * attempt. A file that cannot be read is logged (route_auth_unreadable)
 * and the daemon runs:
 * the route's recipients are deferred (4.3.5, "cannot read auth file")
 * until the file is fixed and the settings reloaded.
 */
struct config;
void relay_read_credentials(struct config *cfg);

/* SIGTERM: nothing new starts; attempts waiting for a connection slot or
 * for DNS end with RELAY_END_DROPPED; those talking SMTP may finish; idle
 * connections say QUIT. */
void relay_stop(struct relay *relay);

/*
 * Is the destination of recipient domain `domain` paused after it
 * throttled us (a 421, or a 4.7.x temporary reply)? Then *until, when
 * not NULL, is when new connections may start again.
 */
bool relay_domain_paused(const struct relay *relay, const char *domain,
			 time_t *until);

/* facteurctl flush: every pause ends now, and what waited starts. */
void relay_end_pauses(struct relay *relay);

/* No attempt and no closing connection left. */
bool relay_idle(const struct relay *relay);

#endif
