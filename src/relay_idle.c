/*
 * Connections kept open between relay attempts (see relay_internal.h).
 *
 * A connection whose transaction ended cleanly is parked on its
 * destination's list: the next attempt for that destination with the
 * same TLS and AUTH settings goes over it (no DNS, no greeting, no EHLO).
 * Unused, it stays for RELAY_IDLE_SECONDS at most, counted within the
 * destination's connection limit, then says QUIT; a stop, or an attempt
 * that needs the slot, closes it sooner. A closing connection waits on
 * the relay's closing list until its client is gone, so that a drain
 * waits for it too.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "facteur/log.h"
#include "facteur/relay_internal.h"
#include "facteur/server.h"
#include "facteur/shape_redis.h"
#include "facteur/smtp_client.h"

#define RELAY_IDLE_SECONDS 5 /* an unused open connection, at most */

static bool same_text(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

void relay_idle_conn_free(struct relay_idle_conn *ic)
{
	if (ic->timer != NULL)
		event_free(ic->timer);
	free(ic->auth_file);
	free(ic->host);
	free(ic);
}

/* Onto its destination's idle list, for RELAY_IDLE_SECONDS at most. */
void relay_idle_link(struct destination *d, struct relay_idle_conn *ic)
{
	struct timeval tv = {RELAY_IDLE_SECONDS, 0};
	ic->dest = d;
	ic->next = d->idle;
	d->idle = ic;
	d->idle_count++;
	if (evtimer_add(ic->timer, &tv) < 0)
		fatal("relay: cannot add a timer");
}

static void idle_unlink(struct relay_idle_conn *ic)
{
	struct destination *d = ic->dest;
	struct relay_idle_conn **at = &d->idle;
	while (*at != ic)
		at = &(*at)->next;
	*at = ic->next;
	d->idle_count--;
	ic->dest = NULL;
	ic->next = NULL;
	evtimer_del(ic->timer);
}

static void on_conn_closed(void *arg)
{
	struct relay_idle_conn *ic = arg;
	struct relay *relay = ic->relay;
	struct destination *d = ic->closing_for;
	struct relay_idle_conn **at = &relay->closing;
	while (*at != ic)
		at = &(*at)->next;
	*at = ic->next;
	relay->closing_count--;
	if (ic->lease != 0 && relay->redis != NULL)
		shape_redis_release(relay->redis, d->key, ic->lease);
	relay_idle_conn_free(ic);
	d->closing--;
	relay_destination_drain(relay, d);
}

/* QUIT: off d's idle list, on the closing list until the client is gone
 * (a drain waits for it; QUIT takes 2 s at most), counted within d's
 * limit meanwhile. */
static void idle_close_for(struct relay_idle_conn *ic, struct destination *d)
{
	struct relay *relay = ic->relay;
	if (ic->dest != NULL)
		idle_unlink(ic);
	ic->closing_for = d;
	d->closing++;
	ic->next = relay->closing;
	relay->closing = ic;
	relay->closing_count++;
	smtp_client_release(ic->client, on_conn_closed, ic);
}

static void idle_close(struct relay_idle_conn *ic)
{
	idle_close_for(ic, ic->dest);
}

static void on_idle_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct relay_idle_conn *ic = arg;
	struct relay *relay = ic->relay;
	struct destination *d = ic->dest;
	(void)fd;
	(void)what;
	idle_close(ic);
	relay_destination_drain(relay, d);
}

/* Before the attempt's end lets the next one start. */
void relay_idle_park(struct relay *relay, struct destination *d,
		     struct smtp_client *client, enum tls_policy tls,
		     const char *auth_file, const char *host,
		     unsigned transactions, uint64_t lease, bool last)
{
	struct relay_idle_conn *ic = calloc(1, sizeof *ic);
	if (ic == NULL ||
	    (auth_file != NULL &&
	     (ic->auth_file = strdup(auth_file)) == NULL) ||
	    (ic->host = strdup(host)) == NULL ||
	    (ic->timer = evtimer_new(relay->srv->base, on_idle_timeout, ic)) ==
		NULL)
		fatal("relay: out of memory");
	ic->relay = relay;
	ic->client = client;
	ic->tls = tls;
	ic->transactions = transactions;
	ic->lease = lease;
	if (relay->stopping || last) {
		idle_close_for(ic, d);
		return;
	}
	relay_idle_link(d, ic);
}

struct relay_idle_conn *relay_idle_take(struct destination *d,
					enum tls_policy tls,
					const char *auth_file, const char *host)
{
	/* a shape line groups domains whose servers differ */
	for (struct relay_idle_conn *ic = d->idle; ic != NULL; ic = ic->next) {
		if (ic->tls == tls && same_text(ic->auth_file, auth_file) &&
		    strcasecmp(ic->host, host) == 0) {
			idle_unlink(ic);
			return ic;
		}
	}
	return NULL;
}

void relay_idle_close_oldest(struct destination *d)
{
	struct relay_idle_conn *old = d->idle;
	while (old->next != NULL)
		old = old->next;
	idle_close(old);
}

void relay_idle_close_all(struct destination *d)
{
	while (d->idle != NULL)
		idle_close(d->idle);
}

void relay_idle_close_unleased(struct destination *d)
{
	struct relay_idle_conn *ic = d->idle;
	while (ic != NULL) {
		struct relay_idle_conn *next = ic->next; /* ic may go */
		if (ic->lease == 0)
			idle_close(ic);
		ic = next;
	}
}

/* Cut every connection of a list without QUIT, and free them. */
static void cancel_list(struct relay_idle_conn **head)
{
	while (*head != NULL) {
		struct relay_idle_conn *ic = *head;
		*head = ic->next;
		smtp_client_cancel(ic->client);
		relay_idle_conn_free(ic);
	}
}

void relay_idle_cancel_closing(struct relay *relay)
{
	cancel_list(&relay->closing);
}

void relay_idle_cancel_all(struct destination *d)
{
	cancel_list(&d->idle);
}
