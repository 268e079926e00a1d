/*
 * Relay attempts (see relay.h).
 *
 * Remote recipients are grouped by destination (a route, or the domain's
 * own MX hosts, or a shape line's domains together when it sets
 * max_connections or rate) and by envelope sender (a recipient forwarded
 * through an alias has its own, SRS, sender): one attempt carries the
 * recipients of a message for one destination and sender, max_rcpt of
 * them at most (shape.h), and each destination has at most
 * max_connections (default max_connections_per_destination) attempts in
 * flight; the others wait in that destination's FIFO. With rate=, an
 * attempt also waits for its token, on a timer. A throttling reply (a
 * 421, a 4.7.x deferral) pauses the destination: what waits for it, and
 * what comes meanwhile, is deferred with that reply, due again when the
 * pause ends.
 *
 * A connection whose transaction ended cleanly is kept (relay_idle.c):
 * the next attempt for its destination goes over it (no DNS, no greeting,
 * no EHLO), up to RELAY_MAX_TRANSACTIONS messages. With no attempt
 * waiting it sits idle for a few seconds at most, counted within the
 * destination's connection limit, then says QUIT.
 *
 * A sender route that matches the message's sender is the destination of
 * all its remote recipients, a destination of its own: its connections
 * and their credentials never carry another sender route's mail. A
 * route's failover list is resolved target after target before the
 * first connect (relay_resolve.c, with the TLS policy of each host); the
 * client then tries the addresses in that order, so the next target is
 * tried exactly when the addresses before it fail.
 *
 * Local recipients go the same way when local_transport names an LMTP
 * server (relay_send_lmtp): its own destination, its connections kept
 * and reused, smtp_client in LMTP mode.
 *
 * An attempt that ends before it talks to anyone (no resolver, no
 * address, the loop check, an unreadable message) reports on the next
 * loop turn through its own event: the caller never sees its callback
 * inside relay_send, and starting the next waiting attempt never nests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/config.h"
#include "facteur/dane.h"
#include "facteur/dns.h"
#include "facteur/localaddr.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/mta_sts.h"
#include "facteur/relay.h"
#include "facteur/relay_internal.h"
#include "facteur/route.h"
#include "facteur/server.h"
#include "facteur/shape.h"
#include "facteur/shape_redis.h"
#include "facteur/smtp_client.h"
#include "facteur/status_code.h"

static void relay_reuse(struct relay_job *job, struct relay_idle_conn *ic);

static unsigned hash_key(const char *key)
{
	uint32_t h = 2166136261u;
	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 16777619u;
	return h % DESTINATION_BUCKETS;
}

static uint64_t monotonic_us(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		fatal("relay: clock_gettime: %s", strerror(errno));
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The key of the destination of `domain`'s recipients (see
 * relay_internal.h). */
static void destination_key(const char *domain, const struct route *route,
			    bool by_sender, const struct shape *shape,
			    char *key, size_t len)
{
	/* A sender route's key differs from any route's: its connections,
	 * with their credentials, carry its senders' mail alone. */
	if (shape_groups(shape))
		snprintf(key, len, "shape %s%s",
			 shape->kind == ROUTE_SUFFIX ? "*." : "",
			 shape->pattern);
	else if (route != NULL)
		snprintf(key, len, "%s %s",
			 by_sender ? "sender_route" : "route", route->text);
	else
		snprintf(key, len, "mx %s", domain);
}

static struct destination *destination_find(const struct relay *relay,
					    const char *key)
{
	struct destination *d = relay->destinations[hash_key(key)];
	while (d != NULL && strcmp(d->key, key) != 0)
		d = d->next;
	return d;
}

static void on_destination_timer(evutil_socket_t fd, short what, void *arg);

static struct destination *destination_get(struct relay *relay, const char *key)
{
	struct destination *d = destination_find(relay, key);
	if (d != NULL)
		return d;
	d = calloc(1, sizeof *d);
	if (d == NULL || (d->key = strdup(key)) == NULL ||
	    (d->timer = evtimer_new(relay->srv->base, on_destination_timer,
				    d)) == NULL)
		fatal("relay: out of memory");
	d->relay = relay;
	d->label = strchr(d->key, ' ') + 1;
	d->wait_tail = &d->wait_head;
	struct destination **at = &relay->destinations[hash_key(key)];
	d->next = *at;
	*at = d;
	return d;
}

static void destination_free(struct destination *d)
{
	event_free(d->timer);
	free(d->pause_reply);
	free(d->key);
	free(d);
}

static void destination_arm(struct destination *d, uint64_t us)
{
	struct timeval tv = {(time_t)(us / 1000000u),
			     (suseconds_t)(us % 1000000u)};
	if (evtimer_add(d->timer, &tv) < 0)
		fatal("relay: cannot add a timer");
}

/* A destination with nothing active, waiting or idle is forgotten; not
 * while paused or before its next token is due, which the timer waits
 * for (a forgotten rate schedule would let a burst through). */
static void destination_release(struct relay *relay, struct destination *d)
{
	if (d->active > 0 || d->wait_head != NULL || d->idle != NULL ||
	    d->closing > 0 || d->paused_until != 0 || d->fleet_asking ||
	    evtimer_pending(d->timer, NULL))
		return;
	if (d->fleet_lease != 0) /* a yes that no attempt used */
		shape_redis_release(relay->redis, d->key, d->fleet_lease);
	uint64_t now = monotonic_us();
	if (d->bucket.next_us > now) {
		destination_arm(d, d->bucket.next_us - now);
		return;
	}
	struct destination **at = &relay->destinations[hash_key(d->key)];
	while (*at != d)
		at = &(*at)->next;
	*at = d->next;
	destination_free(d);
}

static void secret_free(char *secret)
{
	if (secret != NULL)
		explicit_bzero(secret, strlen(secret));
	free(secret);
}

/* Off the list of every job, and freed. */
static void relay_job_free(struct relay_job *job)
{
	struct relay *relay = job->relay;
	if (job->prev_job != NULL)
		job->prev_job->next_job = job->next_job;
	else
		relay->jobs = job->next_job;
	if (job->next_job != NULL)
		job->next_job->prev_job = job->prev_job;
	if (job->failed != NULL)
		event_free(job->failed);
	free(job->rcpts);
	free(job->domain);
	free(job->host);
	for (size_t i = 0; i < job->target_count; i++)
		free(job->targets[i].host);
	for (size_t i = 0; job->dane != NULL && i < job->target_count; i++)
		dane_lookup_free(job->dane[i]);
	free(job->dane);
	free(job->targets);
	for (size_t i = 0; i < job->addr_count; i++)
		free(job->addr_hosts[i]);
	free(job->addr_hosts);
	free(job->addrs);
	free(job->auth_file);
	free(job->auth_user);
	secret_free(job->auth_password);
	free(job->fail_reason);
	free(job->helo);
	mta_sts_policy_clear(&job->sts);
	dns_result_free(job->mx_held);
	free(job);
}

static void relay_fail_text(struct relay_job *job, enum rcpt_state state,
			    const char *dsn, const char *reason);

/* Off the head of d's FIFO, counted as active. */
static struct relay_job *destination_dequeue(struct destination *d)
{
	struct relay_job *job = d->wait_head;
	d->wait_head = job->next;
	if (d->wait_head == NULL)
		d->wait_tail = &d->wait_head;
	d->active++;
	return job;
}

static void on_fleet_answer(enum shape_redis_answer answer, uint64_t lease,
			    unsigned retry_ms, void *arg)
{
	struct destination *d = arg;
	d->fleet_asking = false;
	if (answer == SHAPE_REDIS_DENIED) {
		/* the fleet is at the limit: ask again soon */
		destination_arm(d, (uint64_t)(retry_ms ? retry_ms : 1) * 1000u);
		return;
	}
	/* yes; or Redis failed, and the local limits alone apply this time */
	d->fleet_granted = true;
	d->fleet_lease = lease;
	relay_destination_drain(d->relay, d);
}

/* With shape_redis, an attempt for a shape line's destination also needs
 * the fleet's yes (a connection slot when it opens one, a rate token):
 * one question at a time, the drain runs again with the answer. Redis
 * out of reach: the local limits alone. */
static bool destination_fleet_allows(struct relay *relay, struct destination *d,
				     const struct relay_job *job,
				     bool new_connection, unsigned limit)
{
	if (relay->redis == NULL || strncmp(d->key, "shape ", 6) != 0)
		return true;
	if (d->fleet_granted) {
		d->fleet_granted = false;
		return true;
	}
	if (d->fleet_asking)
		return false;
	uint64_t interval =
	    shape_rate_interval_us(job->rate_count, job->rate_period);
	if (shape_redis_acquire(relay->redis, d->key, new_connection, limit,
				interval, on_fleet_answer, d) < 0)
		return true;
	d->fleet_asking = true;
	return false;
}

/* Start the next attempts waiting for this destination: over an idle
 * connection when one suits, else on a new one within the limit, which
 * idle connections count towards. No attempt ends inside its start, so
 * this never runs nested for the same destination. */
void relay_destination_drain(struct relay *relay, struct destination *d)
{
	while (d->wait_head != NULL && !relay->stopping) {
		struct relay_job *job = d->wait_head;
		if (d->paused_until != 0) {
			/* each on the next loop turn: no nesting */
			job = destination_dequeue(d);
			job->retry_at = d->paused_until;
			relay_fail_text(job, RCPT_DEFERRED, d->pause_dsn,
					d->pause_reply);
			continue;
		}
		unsigned limit =
		    job->max_connections
			? job->max_connections
			: relay->srv->cfg->max_connections_per_destination;
		uint64_t now = monotonic_us();
		if (job->rate_period != 0 && d->bucket.next_us > now) {
			destination_arm(d, d->bucket.next_us - now);
			break;
		}
		struct relay_idle_conn *ic =
		    relay_idle_take(d, job->tls, job->auth_file, job->host);
		if (ic == NULL &&
		    d->active + d->idle_count + d->closing >= limit) {
			if (d->idle == NULL || d->active + d->closing >= limit)
				break;
			/* idle connections of other settings or hosts (a
			 * reload, a shape over several domains): the oldest
			 * makes room */
			relay_idle_close_oldest(d);
		}
		/* a connection opened while Redis was away has no slot */
		if (!destination_fleet_allows(
			relay, d, job, ic == NULL || ic->lease == 0, limit)) {
			if (ic != NULL)
				relay_idle_link(d, ic);
			break;
		}
		job = destination_dequeue(d);
		(void)shape_bucket_take(&d->bucket, job->rate_count,
					job->rate_period, now);
		uint64_t lease = d->fleet_lease;
		d->fleet_lease = 0;
		if (ic != NULL) {
			if (ic->lease == 0)
				ic->lease = lease;
			else if (lease != 0) /* the connection has its own */
				shape_redis_release(relay->redis, d->key,
						    lease);
			relay_reuse(job, ic);
		} else {
			job->lease = lease;
			relay_start(job);
		}
	}
	destination_release(relay, d);
}

/* ---- the end of an attempt ---- */

/* The attempt is over: its caller learns the outcomes, then the next
 * attempt waiting for the destination may start. */
static void relay_done(struct relay_job *job, const struct relay_outcome *out,
		       size_t count)
{
	struct relay *relay = job->relay;
	struct destination *d = job->dest;
	relay_done_cb done = job->done;
	void *arg = job->arg;
	d->active--;
	if (job->lease != 0) /* its connection is closed */
		shape_redis_release(relay->redis, d->key, job->lease);
	relay_job_free(job);
	done(RELAY_END_DONE, out, count, arg);
	relay_destination_drain(relay, d);
}

static void on_failed(evutil_socket_t fd, short what, void *arg)
{
	struct relay_job *job = arg;
	struct relay_outcome *out =
	    calloc(job->rcpt_count ? job->rcpt_count : 1, sizeof *out);
	(void)fd;
	(void)what;
	if (out == NULL)
		fatal("relay: out of memory");
	/* the job is freed before the callback: keep what it reports */
	char *reason = job->fail_reason;
	char *host = job->host;
	char dsn[sizeof job->fail_dsn];
	memcpy(dsn, job->fail_dsn, sizeof dsn);
	job->fail_reason = NULL;
	job->host = NULL;
	size_t count = job->rcpt_count;
	for (size_t i = 0; i < count; i++) {
		out[i].rcpt = job->rcpts[i];
		out[i].state = job->fail_state;
		out[i].dsn = dsn;
		out[i].reason = reason;
		out[i].relay = host;
		out[i].answered = false;
		out[i].retry_at = job->retry_at;
		out[i].tls_policy = relay_tls_policy_name(job);
	}
	relay_done(job, out, count);
	free(out);
	free(reason);
	free(host);
}

/* What every recipient of the attempt gets, recorded for later: why a
 * target gave no address (the outcome should no target give one), or
 * why the whole attempt fails. */
static void relay_note_failure_text(struct relay_job *job,
				    enum rcpt_state state, const char *dsn,
				    const char *reason)
{
	job->fail_state = state;
	snprintf(job->fail_dsn, sizeof job->fail_dsn, "%s", dsn);
	free(job->fail_reason);
	job->fail_reason = reason ? strdup(reason) : NULL;
	if (reason != NULL && job->fail_reason == NULL)
		fatal("relay: out of memory");
}

void relay_note_failure(struct relay_job *job, enum rcpt_state state,
			enum status_code dsn, const char *reason)
{
	relay_note_failure_text(job, state, status_code_str(dsn), reason);
}

/* Every recipient of the attempt gets the same outcome (DNS failures,
 * configuration trouble, a pause), reported on the next loop turn. */
static void relay_fail_text(struct relay_job *job, enum rcpt_state state,
			    const char *dsn, const char *reason)
{
	relay_note_failure_text(job, state, dsn, reason);
	event_active(job->failed, 0, 0);
}

static void relay_fail(struct relay_job *job, enum rcpt_state state,
		       enum status_code dsn, const char *reason)
{
	relay_fail_text(job, state, status_code_str(dsn), reason);
}

/* ---- pauses ---- */

static void destination_resume(struct destination *d)
{
	d->paused_until = 0;
	free(d->pause_reply);
	d->pause_reply = NULL;
	evtimer_del(d->timer);
	metrics_destination_paused(d->label, false);
	log_event(LOG_LEVEL_INFO, "destination_resumed",
		  LOG_S("destination", d->label));
}

/* The receiver throttles us: no new connection for `seconds`, the idle
 * ones say QUIT, and what waits is deferred with its reply. */
static void destination_pause(struct destination *d, unsigned seconds,
			      const char *dsn, const char *reply)
{
	/* rounded up past the timer's end: mail due at `until` finds the
	 * pause over, never a pause that has a fraction of a second left */
	time_t until = time(NULL) + (time_t)seconds + 1;
	if (until <= d->paused_until)
		return; /* another connection's reply, same pause */
	if (d->paused_until == 0)
		metrics_destination_paused(d->label, true);
	d->paused_until = until;
	free(d->pause_reply);
	d->pause_reply = strdup(reply);
	if (d->pause_reply == NULL)
		fatal("relay: out of memory");
	snprintf(d->pause_dsn, sizeof d->pause_dsn, "%s", dsn);
	destination_arm(d, (uint64_t)seconds * 1000000u);
	relay_idle_close_all(d);
	char when[32];
	struct tm tm;
	if (gmtime_r(&until, &tm) == NULL ||
	    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(when, sizeof when, "%lld", (long long)until);
	log_event(LOG_LEVEL_WARN, "destination_paused",
		  LOG_S("destination", d->label), LOG_S("until", when),
		  LOG_I("seconds", seconds), LOG_S("reply", reply));
}

/* The pause is over (or the next token is due, or the destination may
 * be forgotten): what waits may start. */
static void on_destination_timer(evutil_socket_t fd, short what, void *arg)
{
	struct destination *d = arg;
	(void)fd;
	(void)what;
	if (d->paused_until != 0)
		destination_resume(d);
	relay_destination_drain(d->relay, d);
}

static void on_client_done(const struct smtp_client_result *res, void *arg)
{
	struct relay_job *job = arg;
	struct smtp_client *client = job->client;
	job->client = NULL;
	size_t count = job->rcpt_count < res->rcpt_count ? job->rcpt_count
							 : res->rcpt_count;
	struct relay_outcome *out = calloc(count ? count : 1, sizeof *out);
	if (out == NULL)
		fatal("relay: out of memory");
	const char *relay = res->relay[0] ? res->relay : job->host;
	const struct smtp_client_rcpt *throttled = NULL;
	for (size_t i = 0; i < count; i++) {
		out[i].rcpt = job->rcpts[i];
		out[i].state = res->rcpts[i].state;
		out[i].dsn = res->rcpts[i].dsn;
		out[i].reason = res->rcpts[i].reason;
		out[i].relay = relay;
		out[i].answered = true;
		out[i].tls = res->tls_version;
		out[i].tls_policy =
		    res->dane ? "dane" : relay_tls_policy_name(job);
		out[i].verified = res->verified;
		if (throttled == NULL && out[i].state == RCPT_DEFERRED &&
		    shape_reply_throttles(out[i].reason))
			throttled = &res->rcpts[i];
	}
	relay_tls_count(job, res);
	if (throttled != NULL) {
		destination_pause(job->dest, job->pause, throttled->dsn,
				  throttled->reason);
		for (size_t i = 0; i < count; i++)
			if (out[i].state == RCPT_DEFERRED)
				out[i].retry_at = job->dest->paused_until;
	}
	/* the connection's count, unless the client had to open a fresh one
	 * for this message */
	unsigned carried = res->reused ? job->conn_transactions : 1;
	if (res->reusable)
		relay_idle_park(job->relay, job->dest, client, job->tls,
				job->auth_file, job->host, carried, job->lease,
				carried >= job->max_msgs || throttled != NULL);
	if (res->reusable)
		job->lease = 0; /* the parked connection holds it */
	/* `relay` may be the job's host: kept past the job's free */
	char *host = job->host;
	job->host = NULL;
	relay_done(job, out, count);
	free(host);
	free(out);
}

/* ---- connecting ---- */

/* The message's body for the client; false when the attempt ended. */
static bool relay_body_open(struct relay_job *job, struct spool_body *body)
{
	if (spool_body_open(job->relay->srv->spool, job->env, body) == 0)
		return true;
	char reason[512];
	snprintf(reason, sizeof reason, "cannot read the queued message: %s",
		 strerror(errno));
	relay_fail(job, RCPT_DEFERRED, STATUS_LOCAL_ERROR, reason);
	return false;
}

/* A connection the client gave up for the next address is a TLS session
 * of its own for the reports (RFC 8460 counts sessions, not messages). */
static void on_connection_given_up(const struct smtp_client_result *session,
				   void *arg)
{
	relay_tls_count(arg, session);
}

/* Every target resolved: connect to what they gave, or report why
 * none gave anything (the last target's reason). */
void relay_connect(struct relay_job *job)
{
	struct relay *relay = job->relay;
	const struct config *cfg = relay->srv->cfg;
	if (job->addr_count == 0) {
		event_active(job->failed, 0, 0);
		return;
	}
	if (job->auth_file != NULL && job->auth_user == NULL) {
		/* logged when the settings were loaded; the recipients
		 * wait for the file to be fixed and the settings reloaded */
		char reason[512];
		snprintf(reason, sizeof reason, "cannot read auth file %s",
			 job->auth_file);
		relay_fail(job, RCPT_DEFERRED, STATUS_SYSTEM_CONGESTED, reason);
		return;
	}
	struct spool_body body;
	if (!relay_body_open(job, &body))
		return;
	struct smtp_client_request req = {
	    .env = job->env,
	    .rcpts = job->rcpts,
	    .rcpt_count = job->rcpt_count,
	    .body = body,
	    .helo = job->helo != NULL ? job->helo : cfg->hostname,
	    .addrs = job->addrs,
	    .addr_count = job->addr_count,
	    .tls = job->tls,
	    .implicit_tls = job->implicit_tls,
	    .tls_ctx = relay->srv->tls_client,
	    .auth_user = job->auth_user,
	    .auth_password = job->auth_password,
	    .timeout = cfg->smtp_timeout,
	    /* max_msgs is counted here, so that the QUIT after the last
	     * one is within the destination's limit (relay_idle_park) */
	    .max_transactions = job->max_msgs + 1,
	    .source = job->has_source ? &job->source : NULL,
	    .lmtp = job->lmtp,
	    .connection_given_up = on_connection_given_up,
	};
	job->client =
	    smtp_client_start(relay->srv->base, &req, on_client_done, job);
	(void)close(body.fd); /* read-only; the client has its own */
	if (job->client == NULL)
		relay_fail(job, RCPT_DEFERRED, STATUS_LOCAL_ERROR,
			   "out of memory");
}

/* The attempt goes over an idle connection of its destination: no DNS,
 * and the client's own addresses should it have to reconnect. */
static void relay_reuse(struct relay_job *job, struct relay_idle_conn *ic)
{
	struct spool_body body;
	if (!relay_body_open(job, &body)) {
		relay_idle_link(job->dest,
				ic); /* the connection is still good */
		return;
	}
	struct smtp_client *client = ic->client;
	job->conn_transactions = ic->transactions + 1;
	job->lease = ic->lease;
	relay_idle_conn_free(ic);
	struct smtp_client_request req = {
	    .env = job->env,
	    .rcpts = job->rcpts,
	    .rcpt_count = job->rcpt_count,
	    .body = body,
	};
	int rc = smtp_client_next(client, &req, on_client_done, job);
	(void)close(body.fd); /* read-only; the client has its own */
	if (rc == -1) {
		/* the client has released itself */
		relay_fail(job, RCPT_DEFERRED, STATUS_LOCAL_ERROR,
			   "out of memory");
		return;
	}
	job->client = client;
}

/* ---- grouping ---- */

static enum tls_policy route_tls_policy(enum route_tls tls,
					enum tls_policy fallback)
{
	switch (tls) {
	case ROUTE_TLS_NONE:
		return TLS_POLICY_NONE;
	case ROUTE_TLS_MAY:
		return TLS_POLICY_MAY;
	case ROUTE_TLS_ENCRYPT:
		return TLS_POLICY_ENCRYPT;
	case ROUTE_TLS_VERIFY:
	case ROUTE_TLS_IMPLICIT:
		return TLS_POLICY_VERIFY;
	case ROUTE_TLS_DEFAULT:
	default:
		return fallback;
	}
}

static const char *domain_of(const char *address)
{
	const char *at = strrchr(address, '@');
	return at ? at + 1 : "";
}

static char *copy_or_null(const char *text)
{
	char *copy = text ? strdup(text) : NULL;
	if (text != NULL && copy == NULL)
		fatal("relay: out of memory");
	return copy;
}

/* The job's own copy of the targets: a reload may free the route. */
static void relay_job_targets(struct relay_job *job, const struct route *route)
{
	size_t count = route != NULL ? route->target_count : 1;
	job->targets = calloc(count, sizeof *job->targets);
	job->addrs =
	    calloc(count * MAX_ADDRESSES_PER_ATTEMPT, sizeof *job->addrs);
	job->addr_hosts =
	    calloc(count * MAX_ADDRESSES_PER_ATTEMPT, sizeof *job->addr_hosts);
	if (job->targets == NULL || job->addrs == NULL ||
	    job->addr_hosts == NULL)
		fatal("relay: out of memory");
	job->target_count = count;
	if (route == NULL) {
		job->targets[0].host = copy_or_null(job->domain);
		job->targets[0].mx_lookup = true;
		return;
	}
	for (size_t i = 0; i < count; i++) {
		job->targets[i] = route->targets[i];
		job->targets[i].host = copy_or_null(route->targets[i].host);
	}
}

/* A new attempt for recipients of `env`, for the destination `key`, with
 * the shape's limits; no recipient, target or route setting yet. */
static struct relay_job *relay_job_alloc(struct relay *relay,
					 const struct spool_envelope *env,
					 const char *key,
					 const struct shape *shape, size_t room)
{
	struct relay_job *job = calloc(1, sizeof *job);
	if (job == NULL ||
	    (job->rcpts = malloc(room * sizeof *job->rcpts)) == NULL ||
	    (job->failed =
		 event_new(relay->srv->base, -1, 0, on_failed, job)) == NULL)
		fatal("relay: out of memory");
	job->relay = relay;
	job->env = env;
	job->max_connections = shape->max_connections;
	job->max_msgs = shape->max_msgs;
	job->rate_count = shape->rate_count;
	job->rate_period = shape->rate_period;
	job->pause = shape->pause;
	job->has_source = shape->has_source;
	job->source = shape->source;
	job->helo = copy_or_null(shape->helo);
	job->dest = destination_get(relay, key);
	job->next_job = relay->jobs;
	if (relay->jobs != NULL)
		relay->jobs->prev_job = job;
	relay->jobs = job;
	return job;
}

/* A new attempt for recipients of `env` bound for `domain`, with the
 * route's settings (NULL: the domain's MX hosts), a sender route when
 * `by_sender`, and the shape's; no recipient yet. */
static struct relay_job *
relay_job_new(struct relay *relay, const struct spool_envelope *env,
	      const char *domain, const struct route *route, bool by_sender,
	      const struct shape *shape, size_t room)
{
	const struct config *cfg = relay->srv->cfg;
	char key[600];
	destination_key(domain, route, by_sender, shape, key, sizeof key);
	struct relay_job *job = relay_job_alloc(relay, env, key, shape, room);
	job->domain = copy_or_null(domain);
	job->routed = route != NULL;
	job->host = copy_or_null(route ? route->targets[0].host : domain);
	relay_job_targets(job, route);
	job->tls = route_tls_policy(route ? route->tls : ROUTE_TLS_DEFAULT,
				    cfg->tls_outbound);
	job->implicit_tls = route != NULL && route->tls == ROUTE_TLS_IMPLICIT;
	/* RFC 8689: only verified TLS (by the trust anchors or DANE) */
	if (env->flags & SPOOL_FLAG_REQUIRETLS)
		job->tls = TLS_POLICY_VERIFY;
	/* an enforced policy already known: the attempt may take an idle
	 * connection opened under it, and no other */
	if (relay_sts_applies(relay, env, route != NULL)) {
		job->sts.mode = mta_sts_known_mode(relay->sts, domain);
		if (job->sts.mode == MTA_STS_MODE_ENFORCE)
			job->tls = TLS_POLICY_VERIFY;
	}
	if (route != NULL) {
		job->auth_file = copy_or_null(route->auth_file);
		job->auth_user = copy_or_null(route->auth_user);
		job->auth_password = copy_or_null(route->auth_password);
	}
	return job;
}

static bool same_sender(const struct spool_rcpt *a, const struct spool_rcpt *b)
{
	if (a->sender == NULL || b->sender == NULL)
		return a->sender == b->sender;
	return strcmp(a->sender, b->sender) == 0;
}

size_t relay_send(struct relay *relay, const struct spool_envelope *env,
		  const size_t *due, size_t count, relay_done_cb done,
		  void *arg)
{
	const struct config *cfg = relay->srv->cfg;
	size_t attempts = 0;
	bool *taken = calloc(count ? count : 1, sizeof *taken);
	size_t *group = malloc((count ? count : 1) * sizeof *group);
	if (taken == NULL || group == NULL)
		fatal("relay: out of memory");
	/* The sender's route, when one matches, takes every recipient. */
	const struct route *by_sender =
	    route_lookup_sender(cfg->sender_routes, env->sender);
	for (size_t i = 0; i < count; i++) {
		if (taken[i])
			continue;
		const char *domain = domain_of(env->rcpts[due[i]].address);
		const struct route *route =
		    by_sender != NULL ? by_sender
				      : route_lookup(cfg->routes, domain);
		const struct shape *shape = shape_lookup(cfg->shapes, domain);
		/* Every due recipient with the same next hop, shape and
		 * sender joins. */
		size_t n = 0;
		for (size_t j = i; j < count; j++) {
			if (taken[j])
				continue;
			const char *other =
			    domain_of(env->rcpts[due[j]].address);
			bool same =
			    by_sender != NULL || strcasecmp(other, domain) == 0;
			if (!same && route != NULL)
				same =
				    route_lookup(cfg->routes, other) == route;
			same = same &&
			       shape_lookup(cfg->shapes, other) == shape &&
			       /* one MAIL FROM a transaction: a forwarded
				* recipient (SRS sender) goes apart */
			       same_sender(&env->rcpts[due[i]],
					   &env->rcpts[due[j]]);
			if (same) {
				taken[j] = true;
				group[n++] = due[j];
			}
		}
		/* max_rcpt a transaction, so that the receiver never has to
		 * answer 452 to the rest */
		struct destination *d = NULL;
		for (size_t at = 0; at < n; at += shape->max_rcpt) {
			size_t take =
			    n - at < shape->max_rcpt ? n - at : shape->max_rcpt;
			struct relay_job *job =
			    relay_job_new(relay, env, domain, route,
					  by_sender != NULL, shape, take);
			memcpy(job->rcpts, group + at, take * sizeof *group);
			job->rcpt_count = take;
			job->done = done;
			job->arg = arg;
			attempts++;
			d = job->dest;
			*d->wait_tail = job;
			d->wait_tail = &job->next;
		}
		relay_destination_drain(relay, d);
	}
	free(group);
	free(taken);
	return attempts;
}

/* The LMTP server's address when the setting holds it (a socket path, an
 * IP literal); a host name is resolved as a "[host]" target is. */
static void lmtp_job_target(struct relay_job *job, const struct route_lmtp *t)
{
	job->addrs = calloc(MAX_ADDRESSES_PER_ATTEMPT, sizeof *job->addrs);
	job->addr_hosts =
	    calloc(MAX_ADDRESSES_PER_ATTEMPT, sizeof *job->addr_hosts);
	job->targets = calloc(1, sizeof *job->targets);
	if (job->addrs == NULL || job->addr_hosts == NULL ||
	    job->targets == NULL)
		fatal("relay: out of memory");
	if (t->kind == LMTP_INET && !t->host_is_ip) {
		job->targets[0].host = copy_or_null(t->host);
		job->targets[0].port = t->port;
		job->target_count = 1;
		return;
	}
	job->addr_hosts[0] = copy_or_null(t->text);
	job->addrs[0].host = job->addr_hosts[0];
	job->addrs[0].addr = t->addr;
	job->addrs[0].addrlen = t->addrlen;
	job->addr_count = 1;
}

size_t relay_send_lmtp(struct relay *relay, const struct spool_envelope *env,
		       const size_t *due, size_t count, relay_done_cb done,
		       void *arg)
{
	const struct route_lmtp *t = &relay->srv->cfg->local_transport;
	/* the default limits: no shape line matches a mailbox server */
	static const struct shape limits = {
	    .max_rcpt = SHAPE_DEFAULT_MAX_RCPT,
	    .max_msgs = SHAPE_DEFAULT_MAX_MSGS,
	    .pause = SHAPE_DEFAULT_PAUSE,
	};
	char key[sizeof t->text + 8];
	size_t attempts = 0;

	if (t->kind == LMTP_NONE)
		fatal("relay: LMTP delivery without local_transport");
	snprintf(key, sizeof key, "lmtp %s", t->text);
	for (size_t at = 0; at < count; at += limits.max_rcpt) {
		size_t take =
		    count - at < limits.max_rcpt ? count - at : limits.max_rcpt;
		struct relay_job *job =
		    relay_job_alloc(relay, env, key, &limits, take);
		memcpy(job->rcpts, due + at, take * sizeof *due);
		job->rcpt_count = take;
		job->done = done;
		job->arg = arg;
		job->lmtp = true;
		/* our configuration: what fails there defers, never bounces */
		job->routed = true;
		job->domain = copy_or_null(t->text);
		job->host = copy_or_null(t->text);
		job->tls = TLS_POLICY_NONE;
		lmtp_job_target(job, t);
		attempts++;
		*job->dest->wait_tail = job;
		job->dest->wait_tail = &job->next;
	}
	if (attempts > 0)
		relay_destination_drain(relay, destination_find(relay, key));
	return attempts;
}

/* ---- the relay's life ---- */

static void on_auth_unreadable(const struct route *route, int error, void *arg)
{
	(void)arg;
	log_event(LOG_LEVEL_WARN, "route_auth_unreadable",
		  LOG_S("route", route->text), LOG_S("file", route->auth_file),
		  LOG_S("reason", strerror(error)));
}

void relay_read_credentials(struct config *cfg)
{
	(void)route_table_read_credentials(cfg->routes, on_auth_unreadable,
					   NULL);
	(void)route_table_read_credentials(cfg->sender_routes,
					   on_auth_unreadable, NULL);
}

/* Redis is back: connections opened while it was away, which hold no
 * slot, close, so that the fleet's count is whole again. */
static void on_redis_up(void *arg)
{
	struct relay *relay = arg;
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++)
		for (struct destination *d = relay->destinations[i]; d != NULL;
		     d = d->next)
			if (strncmp(d->key, "shape ", 6) == 0)
				relay_idle_close_unleased(d);
}

struct relay *relay_new(struct server *srv)
{
	struct relay *relay = calloc(1, sizeof *relay);
	if (relay == NULL)
		return NULL;
	relay->srv = srv;
	relay->interfaces = localaddr_interfaces_new();
	relay->sts = mta_sts_new(srv);
	if (relay->interfaces == NULL || relay->sts == NULL) {
		localaddr_interfaces_free(relay->interfaces);
		mta_sts_free(relay->sts);
		free(relay);
		return NULL;
	}
	/* read at start only: a reload keeps the Redis it started with */
	if (srv->cfg->shape_redis != NULL &&
	    (relay->redis = shape_redis_new(srv->base, srv->cfg->shape_redis,
					    on_redis_up, relay)) == NULL) {
		localaddr_interfaces_free(relay->interfaces);
		mta_sts_free(relay->sts);
		free(relay);
		return NULL;
	}
	return relay;
}

/* An attempt that has not talked SMTP yet ends without an outcome: its
 * recipients stay as recorded and are tried again after the restart. */
static void relay_drop(struct relay_job *job)
{
	relay_done_cb done = job->done;
	void *arg = job->arg;
	size_t count = job->rcpt_count;
	struct relay_outcome *out = calloc(count ? count : 1, sizeof *out);
	if (out == NULL)
		fatal("relay: out of memory");
	for (size_t i = 0; i < count; i++)
		out[i].rcpt = job->rcpts[i];
	relay_job_free(job);
	done(RELAY_END_DROPPED, out, count, arg);
	free(out);
}

void relay_stop(struct relay *relay)
{
	relay->stopping = true;
	for (struct relay_job *job = relay->jobs; job != NULL;) {
		struct relay_job *next = job->next_job;
		if (job->dns != NULL || job->dane_waiting ||
		    job->sts_wait != NULL) {
			dns_cancel(job->dns);
			mta_sts_cancel(job->sts_wait);
			job->dest->active--;
			relay_drop(job);
		}
		job = next;
	}
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++) {
		for (struct destination *d = relay->destinations[i]; d != NULL;
		     d = d->next) {
			while (d->wait_head != NULL) {
				struct relay_job *job = d->wait_head;
				d->wait_head = job->next;
				relay_drop(job);
			}
			d->wait_tail = &d->wait_head;
			relay_idle_close_all(d);
		}
	}
}

bool relay_domain_paused(const struct relay *relay, const char *domain,
			 time_t *until)
{
	const struct config *cfg = relay->srv->cfg;
	char key[600];
	/* the destination of the domain's own mail; a sender route's
	 * pauses are its own */
	destination_key(domain, route_lookup(cfg->routes, domain), false,
			shape_lookup(cfg->shapes, domain), key, sizeof key);
	const struct destination *d = destination_find(relay, key);
	if (d == NULL || d->paused_until == 0)
		return false;
	if (until != NULL)
		*until = d->paused_until;
	return true;
}

void relay_end_pauses(struct relay *relay)
{
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++) {
		struct destination *d = relay->destinations[i];
		while (d != NULL) {
			struct destination *next = d->next; /* d may go */
			if (d->paused_until != 0) {
				destination_resume(d);
				relay_destination_drain(relay, d);
			}
			d = next;
		}
	}
}

bool relay_idle(const struct relay *relay)
{
	return relay->jobs == NULL && relay->closing_count == 0;
}

void relay_free(struct relay *relay)
{
	if (relay == NULL)
		return;
	/* first: no answer may come for a destination freed below */
	shape_redis_free(relay->redis);
	relay->redis = NULL;
	while (relay->jobs != NULL) {
		struct relay_job *job = relay->jobs;
		relay_done_cb done = job->done;
		void *arg = job->arg;
		if (job->dns != NULL)
			dns_cancel(job->dns);
		mta_sts_cancel(job->sts_wait);
		if (job->client != NULL)
			smtp_client_cancel(job->client);
		relay_job_free(job);
		done(RELAY_END_FREED, NULL, 0, arg);
	}
	relay_idle_cancel_closing(relay);
	mta_sts_free(relay->sts);
	for (size_t i = 0; i < DESTINATION_BUCKETS; i++) {
		while (relay->destinations[i] != NULL) {
			struct destination *d = relay->destinations[i];
			relay->destinations[i] = d->next;
			relay_idle_cancel_all(d);
			destination_free(d);
		}
	}
	localaddr_interfaces_free(relay->interfaces);
	free(relay);
}
