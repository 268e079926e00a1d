/*
 * The counters behind /metrics and `facteurctl stats` (SPEC.md §8). One
 * process, one loop thread: plain integers, updated where things happen.
 */
#ifndef FACTEUR_METRICS_H
#define FACTEUR_METRICS_H

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
};

extern struct metrics metrics;

/* The Prometheus text exposition of every counter into buf; returns the
 * length (truncated to len - 1 if it does not fit). */
size_t metrics_format(char *buf, size_t len);

struct event_base;
struct metrics_http;
struct listen_addr;

/* Serve GET /metrics with evhttp on one address; NULL with err filled
 * when it cannot be bound. */
struct metrics_http *metrics_http_new(struct event_base *base,
                                      const struct listen_addr *addr,
                                      char *err, size_t errlen);
void metrics_http_free(struct metrics_http *http);

#endif
