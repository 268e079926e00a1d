/*
 * Counters and their Prometheus text form (see metrics.h), version 0.0.4
 * of the exposition format: "# HELP", "# TYPE", then "name{labels} value"
 * lines. Everything is printed from the start, zeros included, so that a
 * scrape never has to guess whether a series is missing or just quiet.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/metrics.h"

#ifndef FACTEUR_VERSION
#define FACTEUR_VERSION "unknown"
#endif

struct metrics metrics;

/* Upper bounds of the delivery delay buckets, in seconds: from a local
 * delivery (under a second) to a relay that waited a day. */
static const double delay_bounds[] = {1,   5,	 30,	60,   300,
				      900, 3600, 14400, 86400};
#define DELAY_BUCKETS (sizeof delay_bounds / sizeof delay_bounds[0])

/* Upper bounds of the loop lag buckets, in seconds: how late a periodic
 * timer fires tells how long the loop was busy with something else. */
static const double lag_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025,
				    0.05,  0.1,	   0.25,  1};
#define LAG_BUCKETS (sizeof lag_bounds / sizeof lag_bounds[0])

struct listener_metric {
	char *listen;
	uint64_t connections;
};

static struct {
	uint64_t delay_counts[DELAY_BUCKETS + 1]; /* the last one is +Inf */
	uint64_t delay_count;
	double delay_sum;
	uint64_t lag_counts[LAG_BUCKETS + 1];
	uint64_t lag_count;
	double lag_sum;
	double lag_max;
	metrics_queue_age_fn queue_age;
	void *queue_age_arg;
	struct listener_metric *listeners;
	size_t listener_count;
	/* names in the order they were first paused, "other" last */
	char *paused_names[METRICS_PAUSED_MAX + 1];
	unsigned paused[METRICS_PAUSED_MAX + 1];
	size_t paused_count;
} extra;

/* Text that may not fit: `used` counts what the whole text needs even
 * once `buf` is full, so that a caller can size a second try. */
struct out {
	char *buf;
	size_t cap;
	size_t used;
};

static void put(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
	char *at = NULL;
	size_t room = 0;
	if (o->used < o->cap) {
		at = o->buf + o->used;
		room = o->cap - o->used;
	}
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(at, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->used += (size_t)n;
}

static void put_header(struct out *o, const char *name, const char *type,
		       const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_value(struct out *o, const char *name, uint64_t value)
{
	put(o, "%s %llu\n", name, (unsigned long long)value);
}

/* A label value in the exposition format: \, " and newline escaped. */
static void put_label_value(struct out *o, const char *value)
{
	for (const char *p = value; *p != '\0'; p++) {
		if (*p == '\\')
			put(o, "\\\\");
		else if (*p == '"')
			put(o, "\\\"");
		else if (*p == '\n')
			put(o, "\\n");
		else
			put(o, "%c", *p);
	}
}

static void put_spec_metrics(struct out *o)
{
	const struct metrics *m = &metrics;
	put_header(o, "facteur_connections_active", "gauge",
		   "SMTP sessions open now.");
	put_value(o, "facteur_connections_active", m->connections_active);
	put_header(o, "facteur_connections_total", "counter",
		   "SMTP sessions accepted.");
	put_value(o, "facteur_connections_total", m->connections_total);
	put_header(o, "facteur_messages_accepted_total", "counter",
		   "Messages queued.");
	put_value(o, "facteur_messages_accepted_total",
		  m->messages_accepted_total);
	put_header(o, "facteur_deliveries_total", "counter",
		   "Delivery attempts by result, one per recipient.");
	put_value(o, "facteur_deliveries_total{result=\"delivered\"}",
		  m->deliveries_delivered);
	put_value(o, "facteur_deliveries_total{result=\"deferred\"}",
		  m->deliveries_deferred);
	put_value(o, "facteur_deliveries_total{result=\"bounced\"}",
		  m->deliveries_bounced);
	put_header(o, "facteur_queue_messages", "gauge",
		   "Messages in the spool.");
	put_value(o, "facteur_queue_messages", m->queue_messages);
	put_header(o, "facteur_dns_queries_total", "counter",
		   "DNS look-ups made.");
	put_value(o, "facteur_dns_queries_total", m->dns_queries_total);
	put_header(o, "facteur_dns_failures_total", "counter",
		   "DNS look-ups failed.");
	put_value(o, "facteur_dns_failures_total", m->dns_failures_total);
	put_header(o, "facteur_tls_sessions_total", "counter",
		   "TLS handshakes completed, inbound and outbound.");
	put_value(o, "facteur_tls_sessions_total", m->tls_sessions_total);
}

static void put_extra_metrics(struct out *o)
{
	put_header(o, "facteur_connections_refused_total", "counter",
		   "SMTP connections refused at a connection limit.");
	put_value(o,
		  "facteur_connections_refused_total{reason=\"max_"
		  "connections\"}",
		  metrics.connections_refused_max);
	put_value(o,
		  "facteur_connections_refused_total{reason=\"max_"
		  "connections_per_ip\"}",
		  metrics.connections_refused_per_ip);

	put_header(o, "facteur_proxy_errors_total", "counter",
		   "Connections closed for their PROXY protocol header.");
	put_value(o, "facteur_proxy_errors_total", metrics.proxy_errors_total);

	put_header(o, "facteur_relay_connections_total", "counter",
		   "Outbound SMTP connections opened.");
	put_value(o, "facteur_relay_connections_total",
		  metrics.relay_connections_total);
	put_header(o, "facteur_relay_connections_reused_total", "counter",
		   "Messages relayed over an already open connection.");
	put_value(o, "facteur_relay_connections_reused_total",
		  metrics.relay_connections_reused_total);

	put_header(o, "facteur_listener_connections_total", "counter",
		   "SMTP connections accepted, per listener.");
	for (size_t i = 0; i < extra.listener_count; i++) {
		put(o, "facteur_listener_connections_total{listen=\"");
		put_label_value(o, extra.listeners[i].listen);
		put(o, "\"} %llu\n",
		    (unsigned long long)extra.listeners[i].connections);
	}

	put_header(
	    o, "facteur_redis_errors_total", "counter",
	    "Redis commands and connections of shape_redis that failed.");
	put_value(o, "facteur_redis_errors_total", metrics.redis_errors_total);

	put_header(o, "facteur_destination_paused", "gauge",
		   "1 while a destination that throttled us is paused.");
	for (size_t i = 0; i < extra.paused_count; i++) {
		put(o, "facteur_destination_paused{destination=\"");
		put_label_value(o, extra.paused_names[i]);
		put(o, "\"} %u\n", extra.paused[i] > 0 ? 1u : 0u);
	}

	double age = 0;
	if (extra.queue_age != NULL) {
		age = extra.queue_age(extra.queue_age_arg);
		if (!(age > 0)) /* negative, or NaN */
			age = 0;
	}
	put_header(o, "facteur_queue_oldest_seconds", "gauge",
		   "Age of the oldest queued message.");
	put(o, "facteur_queue_oldest_seconds %.0f\n", age);

	put_header(o, "facteur_delivery_delay_seconds", "histogram",
		   "Time from arrival to delivery, per delivered recipient.");
	uint64_t cumulative = 0;
	for (size_t i = 0; i < DELAY_BUCKETS; i++) {
		cumulative += extra.delay_counts[i];
		put(o,
		    "facteur_delivery_delay_seconds_bucket{le=\"%g\"} %llu\n",
		    delay_bounds[i], (unsigned long long)cumulative);
	}
	cumulative += extra.delay_counts[DELAY_BUCKETS];
	put(o, "facteur_delivery_delay_seconds_bucket{le=\"+Inf\"} %llu\n",
	    (unsigned long long)cumulative);
	put(o, "facteur_delivery_delay_seconds_sum %.3f\n", extra.delay_sum);
	put_value(o, "facteur_delivery_delay_seconds_count", extra.delay_count);

	put_header(o, "facteur_loop_lag_seconds", "histogram",
		   "How late the event loop ran a timer due every 100 ms.");
	cumulative = 0;
	for (size_t i = 0; i < LAG_BUCKETS; i++) {
		cumulative += extra.lag_counts[i];
		put(o, "facteur_loop_lag_seconds_bucket{le=\"%g\"} %llu\n",
		    lag_bounds[i], (unsigned long long)cumulative);
	}
	cumulative += extra.lag_counts[LAG_BUCKETS];
	put(o, "facteur_loop_lag_seconds_bucket{le=\"+Inf\"} %llu\n",
	    (unsigned long long)cumulative);
	put(o, "facteur_loop_lag_seconds_sum %.6f\n", extra.lag_sum);
	put_value(o, "facteur_loop_lag_seconds_count", extra.lag_count);
	put_header(o, "facteur_loop_lag_max_seconds", "gauge",
		   "The longest loop lag seen since the start.");
	put(o, "facteur_loop_lag_max_seconds %.6f\n", extra.lag_max);

	put_header(o, "facteur_build_info", "gauge",
		   "The running version; always 1.");
	put(o, "facteur_build_info{version=\"");
	put_label_value(o, FACTEUR_VERSION);
	put(o, "\"} 1\n");
}

static size_t format_into(char *buf, size_t len)
{
	struct out o = {buf, len, 0};
	put_spec_metrics(&o);
	put_extra_metrics(&o);
	return o.used;
}

size_t metrics_format(char *buf, size_t len)
{
	if (len == 0)
		return 0;
	size_t need = format_into(buf, len);
	return need < len ? need : len - 1;
}

char *metrics_format_alloc(size_t *len)
{
	size_t cap = 4096;
	for (;;) {
		char *buf = malloc(cap);
		if (buf == NULL)
			return NULL;
		size_t need = format_into(buf, cap);
		if (need < cap) {
			if (len != NULL)
				*len = need;
			return buf;
		}
		free(buf);
		/* The queue age may grow a digit between two passes: leave
		 * room to spare. */
		cap = need + 64;
	}
}

/* One observation into a histogram: its bucket (the one past the bounds
 * is +Inf), its count and sum; below zero counts as zero. */
static void observe(const double *bounds, size_t nbounds, uint64_t *counts,
		    uint64_t *count, double *sum, double seconds)
{
	size_t i = 0;
	while (i < nbounds && seconds > bounds[i])
		i++;
	counts[i]++;
	(*count)++;
	*sum += seconds;
}

void metrics_observe_delivery_delay(double seconds)
{
	if (isnan(seconds))
		return;
	if (seconds < 0)
		seconds = 0;
	observe(delay_bounds, DELAY_BUCKETS, extra.delay_counts,
		&extra.delay_count, &extra.delay_sum, seconds);
}

void metrics_observe_loop_lag(double seconds)
{
	if (isnan(seconds))
		return;
	if (seconds < 0)
		seconds = 0;
	observe(lag_bounds, LAG_BUCKETS, extra.lag_counts, &extra.lag_count,
		&extra.lag_sum, seconds);
	if (seconds > extra.lag_max)
		extra.lag_max = seconds;
}

void metrics_set_queue_age_source(metrics_queue_age_fn oldest_age, void *arg)
{
	extra.queue_age = oldest_age;
	extra.queue_age_arg = oldest_age != NULL ? arg : NULL;
}

int metrics_listener_add(const char *listen)
{
	if (extra.listener_count >= (size_t)INT_MAX)
		return -1;
	char *copy = strdup(listen);
	if (copy == NULL)
		return -1;
	struct listener_metric *grown =
	    realloc(extra.listeners,
		    (extra.listener_count + 1) * sizeof *extra.listeners);
	if (grown == NULL) {
		free(copy);
		return -1;
	}
	extra.listeners = grown;
	extra.listeners[extra.listener_count].listen = copy;
	extra.listeners[extra.listener_count].connections = 0;
	return (int)extra.listener_count++;
}

void metrics_listener_connection(int slot)
{
	if (slot >= 0 && (size_t)slot < extra.listener_count)
		extra.listeners[slot].connections++;
}

void metrics_destination_paused(const char *destination, bool paused)
{
	size_t i = 0;
	while (i < extra.paused_count &&
	       strcmp(extra.paused_names[i], destination) != 0 &&
	       i < METRICS_PAUSED_MAX)
		i++;
	if (i == extra.paused_count) {
		const char *name =
		    i < METRICS_PAUSED_MAX ? destination : "other";
		if ((extra.paused_names[i] = strdup(name)) == NULL)
			return; /* out of memory: not shown */
		extra.paused_count++;
	}
	/* "other" counts the destinations it stands for */
	if (paused)
		extra.paused[i]++;
	else if (extra.paused[i] > 0)
		extra.paused[i]--;
}

void metrics_reset(void)
{
	for (size_t i = 0; i < extra.paused_count; i++)
		free(extra.paused_names[i]);
	for (size_t i = 0; i < extra.listener_count; i++)
		free(extra.listeners[i].listen);
	free(extra.listeners);
	memset(&extra, 0, sizeof extra);
	memset(&metrics, 0, sizeof metrics);
}
