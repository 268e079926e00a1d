/*
 * The counters behind /metrics and `facteurctl stats` (SPEC.md §8). One
 * process, one loop thread: plain integers, updated where things happen.
 */
#ifndef FACTEUR_METRICS_H
#define FACTEUR_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics {
	uint64_t connections_active; /* SMTP sessions only */
	uint64_t connections_total;
	uint64_t messages_accepted_total;
	uint64_t deliveries_delivered;
	uint64_t deliveries_deferred;
	uint64_t deliveries_bounced;
	uint64_t queue_messages;
	uint64_t dns_queries_total;
	uint64_t dns_failures_total;
	uint64_t tls_sessions_total;
	/* Beyond SPEC.md §8: SMTP connections turned away with a 421 at
	 * max_connections and at max_connections_per_ip. */
	uint64_t connections_refused_max;
	uint64_t connections_refused_per_ip;
	/* Outbound: SMTP connections opened (TCP connected), and messages
	 * carried over a connection that had carried one before. */
	uint64_t relay_connections_total;
	uint64_t relay_connections_reused_total;
	/* Connections of "+proxy" listeners closed for their PROXY header:
	 * an untrusted peer, a bad, late or missing header. */
	uint64_t proxy_errors_total;
	/* shape_redis: commands and connections that failed. */
	uint64_t redis_errors_total;
};

extern struct metrics metrics;

/* The Prometheus text exposition of every counter into buf; returns the
 * length (truncated to len - 1 if it does not fit). */
size_t metrics_format(char *buf, size_t len);
/* The same text, whole, in a malloc'd string the caller frees; its length
 * in *len when len is not NULL. NULL when out of memory. */
char *metrics_format_alloc(size_t *len);

struct event_base;
struct metrics_http;
struct listen_addr;

/* Serve GET /metrics, /healthz and /readyz on one address, listening at
 * once (readiness METRICS_STARTING); NULL with err filled when it cannot
 * be bound. */
struct metrics_http *metrics_http_new(struct event_base *base,
                                      const struct listen_addr *addr,
                                      char *err, size_t errlen);
void metrics_http_free(struct metrics_http *http);

/* What GET /readyz answers: 200 only when METRICS_READY, 503 while the
 * daemon starts (spool recovery) and while it drains after SIGTERM. */
enum metrics_readiness {
	METRICS_STARTING,
	METRICS_READY,
	METRICS_DRAINING,
};
/* `http` may be NULL (no metrics_listen): nothing to tell. */
void metrics_http_set_readiness(struct metrics_http *http,
                                enum metrics_readiness readiness);

/* ---- metrics beyond SPEC.md §8 (all present from the start) ---- */

/* facteur_delivery_delay_seconds, a histogram: the time from a message's
 * arrival to the delivery of one recipient (result "delivered" only). */
void metrics_observe_delivery_delay(double seconds);

/* facteur_queue_oldest_seconds: the age of the oldest queued message,
 * asked of `oldest_age` at each scrape (0 while no source is set). The
 * function runs on the loop thread and must be cheap. NULL unsets. */
typedef double (*metrics_queue_age_fn)(void *arg);

/* facteur_loop_lag_seconds (histogram) and facteur_loop_lag_max_seconds:
 * how late a periodic timer of the loop fired. */
void metrics_observe_loop_lag(double seconds);
void metrics_set_queue_age_source(metrics_queue_age_fn oldest_age, void *arg);

/* facteur_listener_connections_total{listen="..."}: SMTP connections
 * accepted per listener. metrics_listener_add registers one `listen`
 * entry (its text, e.g. "127.0.0.1:2525/smtp") and returns its slot, or
 * -1 when out of memory (the listener is then not counted);
 * metrics_listener_connection(-1) is a no-op. */
int metrics_listener_add(const char *listen);
void metrics_listener_connection(int slot);

/* facteur_destination_paused{destination="..."}: 1 while the relay keeps
 * away from a destination that throttled it, 0 after. The label is the
 * shape pattern, the route or the domain; past METRICS_PAUSED_MAX names
 * the rest share destination="other", so the series stay few. */
#define METRICS_PAUSED_MAX 64
void metrics_destination_paused(const char *destination, bool paused);

/* Forget the listeners, the histogram and the counters (for tests). */
void metrics_reset(void);

#endif
