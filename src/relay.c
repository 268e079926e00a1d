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
 * first connect; the client then tries the addresses in that order, so
 * the next target is tried exactly when the addresses before it fail.
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
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <openssl/x509_vfy.h>

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
#include "facteur/tlsrpt.h"

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

static void relay_start(struct relay_job *job);
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

/* The published TLS policy that governs the attempt, for the log
 * lines: "none" when there is none (tls_outbound or a route's tls= then
 * say what TLS was asked for, and verified= what was had). */
static const char *relay_tls_policy_name(const struct relay_job *job)
{
	switch (job->sts.mode) {
	case MTA_STS_MODE_ENFORCE:
		return "sts-enforce";
	case MTA_STS_MODE_TESTING:
		return "sts-testing";
	case MTA_STS_MODE_NONE:
		break;
	}
	return "none";
}

/* The RFC 8460 result type of a connection whose TLS failed a policy:
 * the certificate's trouble, STARTTLS missing, or validation-failure
 * (a handshake that failed otherwise, an MX host the policy does not
 * name). */
static enum tlsrpt_result
relay_tls_failure(const struct smtp_client_result *res)
{
	if (res->verify_result != X509_V_OK)
		return tlsrpt_result_of_verify(res->verify_result);
	if (!res->tls && !res->tls_handshake)
		return TLSRPT_STARTTLS_NOT_SUPPORTED;
	return TLSRPT_VALIDATION_FAILURE;
}

/* A connection under DANE that got as far as TLS, for the TLS report:
 * its MX host's TLSA records are the policy. */
static void relay_dane_count(const struct relay_job *job,
			     const struct smtp_client_result *res)
{
	if (!res->tls_step || res->host == NULL)
		return;
	struct tlsrpt_session s = {
	    .type = TLSRPT_POLICY_TLSA,
	    .mx_host = res->host,
	    .tlsa = res->tlsa,
	    .tlsa_count = res->tlsa_count,
	    .result = res->verified ? TLSRPT_SUCCESS : relay_tls_failure(res),
	    .sending_ip = res->local_ip,
	    .receiving_ip = res->peer_ip,
	    .receiving_mx = res->host,
	};
	tlsrpt_count_session(job->relay->srv->tlsrpt, job->domain, &s);
}

/* facteur_tls_policy_total for an attempt under an MTA-STS policy that
 * talked to a server: under enforce, whether TLS was verified; under
 * testing, whether it would have passed enforce. */
static void relay_sts_count(const struct relay_job *job,
			    const struct smtp_client_result *res)
{
	if (job->sts.mode == MTA_STS_MODE_NONE)
		return;
	bool ok = res->verified && (job->sts.mode == MTA_STS_MODE_ENFORCE ||
				    job->sts_mismatched == 0);
	metrics.tls_policy[METRICS_TLS_POLICY_STS]
			  [ok ? METRICS_TLS_POLICY_SUCCESS
			      : METRICS_TLS_POLICY_FAILURE]++;
	struct tlsrpt_session s = {
	    .type = TLSRPT_POLICY_STS,
	    .sts = &job->sts,
	    .result = ok ? TLSRPT_SUCCESS : relay_tls_failure(res),
	    .sending_ip = res->local_ip,
	    .receiving_ip = res->peer_ip,
	    .receiving_mx = res->host,
	};
	tlsrpt_count_session(job->relay->srv->tlsrpt, job->domain, &s);
	if (!ok)
		log_event(LOG_LEVEL_WARN, "mta_sts_failure",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_S("mode", mta_sts_mode_name(job->sts.mode)),
			  LOG_S("relay", res->relay),
			  LOG_S("reason", !res->tls ? "no TLS"
					  : !res->verified
					      ? "certificate not verified"
					      : "MX host not in the policy"));
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

static void relay_note_failure(struct relay_job *job, enum rcpt_state state,
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
	/* a connection under DANE was DANE's to count (RFC 8461 §2) */
	if (res->relay[0] != '\0' && !res->dane)
		relay_sts_count(job, res);
	else if (res->relay[0] != '\0')
		relay_dane_count(job, res);
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

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static socklen_t address_length(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
					 : sizeof(struct sockaddr_in);
}

/* Is one of the hosts this daemon itself, on the port the attempt would
 * use? Then hosts from *cutoff's preference on are not to be tried. */
static bool relay_self_cutoff(struct relay *relay, const struct dns_host *hosts,
			      size_t host_count, uint16_t port,
			      unsigned *cutoff)
{
	const struct config *cfg = relay->srv->cfg;
	struct localaddr_self self = {
	    .listen = cfg->listen,
	    .listen_count = cfg->listen_count,
	};
	if (localaddr_needs_interfaces(cfg->listen, cfg->listen_count, port))
		localaddr_interfaces_get(relay->interfaces, &self.interfaces,
					 &self.interface_count);
	return localaddr_self_cutoff(&self, hosts, host_count, port, cutoff);
}

/* Every host left would be this daemon: connecting would only hand the
 * message back to ourselves, hop after hop. For the recipient's own
 * domain that is final (5.4.6, as Postfix says it); a route's target is
 * our configuration, so its recipients wait for it to be fixed. */
static void relay_loops_back(struct relay_job *job,
			     const struct route_target *t)
{
	char reason[600];
	if (job->routed) {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself (route target %s)",
			 job->domain, t->host);
		relay_note_failure(job, RCPT_DEFERRED, STATUS_LOOP_TRANSIENT,
				   reason);
	} else {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself", job->domain);
		relay_note_failure(job, RCPT_BOUNCED, STATUS_LOOP, reason);
	}
}

/* MTA-STS: an MX host that the policy does not name is skipped under
 * enforce, tried but logged and counted under testing. */
static bool relay_sts_allows(struct relay_job *job, const char *host)
{
	if (job->sts.mode == MTA_STS_MODE_NONE ||
	    mta_sts_policy_mx_matches(&job->sts, host))
		return true;
	job->sts_mismatched++;
	log_event(LOG_LEVEL_WARN, "mta_sts_mx_mismatch",
		  LOG_S("queue_id", job->env->id), LOG_S("domain", job->domain),
		  LOG_S("mx", host),
		  LOG_S("mode", mta_sts_mode_name(job->sts.mode)));
	return job->sts.mode == MTA_STS_MODE_TESTING;
}

/* One target's addresses, in order, without those of this daemon, after
 * those of the targets before it; a target that gives none notes why. */
static void relay_add_addresses(struct relay_job *job,
				const struct route_target *t,
				const struct dns_host *hosts,
				const struct dane_host *dane, size_t host_count)
{
	uint16_t port = t->port ? t->port : job->relay->srv->cfg->mx_port;
	/* A "[host]" or "[ip]" route names its target on purpose: it is
	 * taken as written, even when that is this daemon. */
	unsigned cutoff = 0;
	bool self_found =
	    (!job->routed || t->mx_lookup) &&
	    relay_self_cutoff(job->relay, hosts, host_count, port, &cutoff);
	size_t hosts_kept = 0, n = 0;
	bool dane_failed = false;
	for (size_t h = 0; h < host_count; h++) {
		if (self_found && hosts[h].preference >= cutoff)
			continue;
		hosts_kept++;
		/* RFC 7672 §2.1.1: a host whose TLSA records cannot be had
		 * is not tried, neither in the clear nor unauthenticated */
		if (dane != NULL && dane[h].state == DANE_FAILED) {
			dane_failed = true;
			struct tlsrpt_session s = {
			    .type = TLSRPT_POLICY_TLSA,
			    .mx_host = hosts[h].name,
			    .result = TLSRPT_DNSSEC_INVALID,
			    .receiving_mx = hosts[h].name,
			};
			tlsrpt_count_session(job->relay->srv->tlsrpt,
					     job->domain, &s);
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_FAILED,
					   dane[h].reason);
			continue;
		}
		/* DANE comes before MTA-STS for a host it covers (RFC 8461
		 * §2) */
		bool under_dane = dane != NULL && dane[h].state == DANE_VERIFY;
		if (!under_dane && !relay_sts_allows(job, hosts[h].name))
			continue;
		/* a "[host]" target is verified against the host written;
		 * an LMTP server is named by the setting */
		const char *name = job->lmtp ? job->host
				   : job->routed && !t->mx_lookup
				       ? t->host
				       : hosts[h].name;
		for (size_t a = 0;
		     a < hosts[h].addr_count && n < MAX_ADDRESSES_PER_ATTEMPT;
		     a++) {
			struct smtp_client_address *out =
			    &job->addrs[job->addr_count];
			char *host = strdup(name);
			if (host == NULL)
				fatal("relay: out of memory");
			job->addr_hosts[job->addr_count++] = host;
			out->host = host;
			out->addr = hosts[h].addrs[a];
			set_port(&out->addr, port);
			out->addrlen = address_length(&out->addr);
			out->dane = dane != NULL ? dane[h].state : DANE_NONE;
			out->tlsa = dane != NULL ? dane[h].tlsa : NULL;
			out->tlsa_count = dane != NULL ? dane[h].tlsa_count : 0;
			n++;
		}
	}
	if (self_found) {
		log_event(LOG_LEVEL_DEBUG, "relay_self_skipped",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_I("preference", cutoff),
			  LOG_I("hosts_left", hosts_kept));
		if (hosts_kept == 0) {
			relay_loops_back(job, t);
			return;
		}
	}
	if (n == 0 && job->sts_mismatched > 0 &&
	    job->sts.mode == MTA_STS_MODE_ENFORCE) {
		char reason[600];
		snprintf(reason, sizeof reason,
			 "no MX host of %s matches its MTA-STS policy",
			 job->domain);
		relay_note_failure(job, RCPT_DEFERRED,
				   STATUS_SECURITY_TRANSIENT, reason);
		metrics.tls_policy[METRICS_TLS_POLICY_STS]
				  [METRICS_TLS_POLICY_FAILURE]++;
		tlsrpt_count(job->relay->srv->tlsrpt, job->domain, &job->sts,
			     TLSRPT_VALIDATION_FAILURE);
		log_event(LOG_LEVEL_WARN, "mta_sts_failure",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_S("mode", "enforce"), LOG_S("reason", reason));
	} else if (n == 0 && !dane_failed) {
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   "no address to connect to");
	}
}

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

/* Every target resolved: connect to what they gave, or report why
 * none gave anything (the last target's reason). */
static void relay_connect(struct relay_job *job)
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

static void relay_resolve_next(struct relay_job *job);

/* ---- DANE (RFC 7672) ---- */

static void on_dane(const struct dns_host *hosts, const struct dane_host *dane,
		    size_t count, void *arg)
{
	struct relay_job *job = arg;
	const struct route_target *t = &job->targets[job->target_next - 1];
	job->dane_waiting = false;
	relay_add_addresses(job, t, hosts, dane, count);
	relay_resolve_next(job);
}

/* A target resolved through MX records with dane = yes: its hosts'
 * TLSA records first, when the MX answer was validated. Not for a
 * "[host]" target (its route's tls= rules), nor without TLS at all, nor
 * for a message whose sender said "TLS-Required: No". */
static bool relay_dane_start(struct relay_job *job,
			     const struct route_target *t,
			     const struct dns_result *res)
{
	const struct config *cfg = job->relay->srv->cfg;
	if (!cfg->dane || !t->mx_lookup || job->tls == TLS_POLICY_NONE ||
	    (job->env->flags & SPOOL_FLAG_TLS_NOT_REQUIRED) ||
	    !dane_applies(res))
		return false;
	if (job->dane == NULL) {
		job->dane = calloc(job->target_count, sizeof *job->dane);
		if (job->dane == NULL)
			fatal("relay: out of memory");
	}
	uint16_t port = t->port ? t->port : cfg->mx_port;
	job->dane[job->target_next - 1] =
	    dane_lookup_start(job->relay->srv->dns, res, port, on_dane, job);
	job->dane_waiting = true;
	return true;
}

/* The answer of the target being resolved: its addresses, or why it
 * gives none; then the targets after it. */
static void relay_take_answer(struct relay_job *job,
			      const struct dns_result *res)
{
	const struct route_target *t = &job->targets[job->target_next - 1];
	switch (res->status) {
	case DNS_OK:
		if (relay_dane_start(job, t, res))
			return; /* on_dane goes on */
		relay_add_addresses(job, t, res->hosts, NULL, res->host_count);
		break;
	case DNS_NXDOMAIN:
	case DNS_NO_HOST:
		/* The recipients' own domain does not exist: that is final.
		 * A route's target that does not resolve is our trouble. */
		if (!job->routed)
			relay_note_failure(job, RCPT_BOUNCED, STATUS_BAD_SYSTEM,
					   res->error);
		else
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_UNAVAILABLE,
					   res->error);
		break;
	case DNS_NULL_MX:
		relay_note_failure(
		    job, job->routed ? RCPT_DEFERRED : RCPT_BOUNCED,
		    job->routed ? STATUS_ROUTING_UNAVAILABLE : STATUS_NULL_MX,
		    "the domain accepts no mail (null MX)");
		break;
	case DNS_TEMPFAIL:
	default:
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   res->error);
		break;
	}
	relay_resolve_next(job);
}

static void on_resolved(const struct dns_result *res, void *arg)
{
	struct relay_job *job = arg;
	job->dns = NULL;
	/* the policy decides which hosts count and how (DANE, TLS): the
	 * answer waits for it, in a copy, since res ends with this call */
	if (job->sts_wait != NULL) {
		job->mx_held = dns_result_copy(res);
		return;
	}
	relay_take_answer(job, res);
}

/* A literal "[1.2.3.4]" or "[::1]" target needs no look-up. */
static bool literal_host(const char *host, struct dns_host *out,
			 struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	const char *text = host;
	if (strncasecmp(text, "IPv6:", 5) == 0)
		text += 5;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1)
		ss->ss_family = AF_INET;
	else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1)
		ss->ss_family = AF_INET6;
	else
		return false;
	out->name = (char *)host;
	out->preference = 0;
	out->addrs = ss;
	out->addr_count = 1;
	return true;
}

/* Resolve the targets left, in order; connect once none is left. */
static void relay_resolve_next(struct relay_job *job)
{
	struct relay *relay = job->relay;
	while (job->target_next < job->target_count) {
		const struct route_target *t =
		    &job->targets[job->target_next++];
		if (t->host_is_ip) {
			struct dns_host host;
			struct sockaddr_storage ss;
			if (literal_host(t->host, &host, &ss)) {
				relay_add_addresses(job, t, &host, NULL, 1);
				continue;
			}
		}
		if (relay->srv->dns == NULL) {
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_FAILED,
					   "no DNS resolver available");
			continue;
		}
		job->dns = t->mx_lookup
			       ? dns_resolve_mx(relay->srv->dns, t->host,
						on_resolved, job)
			       : dns_resolve_host(relay->srv->dns, t->host,
						  on_resolved, job);
		if (job->dns != NULL)
			return;
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   "DNS query could not be started");
	}
	/* no MX look-up to wait for: on_sts_policy connects */
	if (job->sts_wait != NULL)
		return;
	relay_connect(job);
}

static void on_sts_policy(const struct mta_sts_policy *policy, void *arg)
{
	struct relay_job *job = arg;
	job->sts_wait = NULL;
	mta_sts_policy_clear(&job->sts);
	if (policy != NULL && policy->mode != MTA_STS_MODE_NONE &&
	    mta_sts_policy_copy(&job->sts, policy) < 0)
		fatal("relay: out of memory");
	/* RFC 8461 §4.2: STARTTLS, each MX host's certificate verified */
	if (job->sts.mode == MTA_STS_MODE_ENFORCE)
		job->tls = TLS_POLICY_VERIFY;
	if (job->dns != NULL)
		return; /* on_resolved goes on */
	if (job->mx_held != NULL) {
		struct dns_result *mx = job->mx_held;
		job->mx_held = NULL;
		relay_take_answer(job, mx);
		dns_result_free(mx);
		return;
	}
	/* the MX look-up could not start: relay_resolve_next noted why */
	relay_resolve_next(job);
}

/* MTA-STS is for the domain's own MX hosts, never a route's, and not for
 * a message whose sender said "TLS-Required: No" (RFC 8689 §5). */
static bool relay_sts_applies(const struct relay *relay,
			      const struct spool_envelope *env, bool routed)
{
	return !routed && relay->sts != NULL && relay->srv->cfg->mta_sts &&
	       !(env->flags & SPOOL_FLAG_TLS_NOT_REQUIRED);
}

/* The MTA-STS policy and the MX look-up start together, so that a first
 * message to a domain pays one DNS round trip, not two in series; the
 * one answered first waits for the other (on_resolved, on_sts_policy).
 * Both callbacks run later, never inside this call. */
static void relay_start(struct relay_job *job)
{
	struct relay *relay = job->relay;
	if (relay_sts_applies(relay, job->env, job->routed))
		job->sts_wait =
		    mta_sts_lookup(relay->sts, job->domain, on_sts_policy, job);
	relay_resolve_next(job);
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
