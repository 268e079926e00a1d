/*
 * The counters behind /metrics and `facteurctl stats` (SPEC.md §8). One
 * process, one loop thread: plain integers, updated where things happen.
 */
#ifndef FACTEUR_METRICS_H
#define FACTEUR_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "facteur/state_list.h"

/* Why an SMTP client was refused, facteur_smtp_rejections_total{reason}:
 * a fixed set, so that no client text ever becomes a label. */
#define METRICS_REJECTIONS(X)                                                  \
	X(METRICS_REJECT_RELAY_DENIED, "relay_denied")                         \
	X(METRICS_REJECT_UNKNOWN_USER, "unknown_user")                         \
	X(METRICS_REJECT_SYNTAX, "syntax")                                     \
	X(METRICS_REJECT_PROTOCOL, "protocol")                                 \
	X(METRICS_REJECT_TOO_MANY_RECIPIENTS, "too_many_recipients")           \
	X(METRICS_REJECT_ENVELOPE_LIMIT, "envelope_limit")                     \
	X(METRICS_REJECT_SIZE, "size")                                         \
	X(METRICS_REJECT_LOOP, "loop")                                         \
	X(METRICS_REJECT_AUTH_REQUIRED, "auth_required")                       \
	X(METRICS_REJECT_TLS_REQUIRED, "tls_required")                         \
	X(METRICS_REJECT_AUTH_FAIL_LIMIT, "auth_fail_limit")                   \
	X(METRICS_REJECT_TOO_MANY_ERRORS, "too_many_errors")                   \
	X(METRICS_REJECT_DNSBL, "dnsbl")                                       \
	X(METRICS_REJECT_RATE, "rate")

enum metrics_rejection {
	METRICS_REJECTIONS(STATE_LIST_ENUM) METRICS_REJECTION_COUNT
};

enum metrics_auth_result {
	METRICS_AUTH_SUCCESS,
	METRICS_AUTH_FAILURE,
	METRICS_AUTH_RESULT_COUNT
};

enum metrics_direction {
	METRICS_INBOUND,
	METRICS_OUTBOUND,
	METRICS_DIRECTION_COUNT
};

enum metrics_transport {
	METRICS_TRANSPORT_LOCAL,
	METRICS_TRANSPORT_RELAY,
	METRICS_TRANSPORT_COUNT
};

/* A delivery attempt's result, as facteur_deliveries_total names it. */
enum metrics_result {
	METRICS_DELIVERED,
	METRICS_DEFERRED,
	METRICS_BOUNCED,
	METRICS_RESULT_COUNT
};

/* facteur_dns_failures_total{reason,type}: what went wrong, of what a
 * look-up asked. */
enum metrics_dns_reason {
	METRICS_DNS_TIMEOUT,
	METRICS_DNS_SERVFAIL,
	METRICS_DNS_REFUSED,
	METRICS_DNS_OTHER,
	METRICS_DNS_REASON_COUNT
};

enum metrics_dns_type {
	METRICS_DNS_MX,
	METRICS_DNS_A,
	METRICS_DNS_AAAA,
	METRICS_DNS_TYPE_OTHER,
	METRICS_DNS_TYPE_COUNT
};

/* facteur_queue_messages{state}: a held message counts as held whatever
 * its recipients; else deferred once one of them was tried and failed
 * for now; else pending. */
/* facteur_tls_policy_total: a published TLS policy (MTA-STS, DANE) that
 * governed a delivery attempt, and whether TLS was established and
 * verified under it (success) or it stopped the delivery (failure). */
enum metrics_tls_policy {
	METRICS_TLS_POLICY_STS,
	METRICS_TLS_POLICY_DANE,
	METRICS_TLS_POLICY_COUNT
};

enum metrics_tls_policy_result {
	METRICS_TLS_POLICY_SUCCESS,
	METRICS_TLS_POLICY_FAILURE,
	METRICS_TLS_POLICY_RESULT_COUNT
};

enum metrics_queue_state {
	METRICS_QUEUE_PENDING,
	METRICS_QUEUE_DEFERRED,
	METRICS_QUEUE_HELD,
	METRICS_QUEUE_STATE_COUNT
};

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
	/* Operating at volume: each family indexed by its label's enum. */
	uint64_t smtp_rejections[METRICS_REJECTION_COUNT];
	uint64_t auth_attempts[METRICS_AUTH_RESULT_COUNT]; /* SMTP, POP3 */
	uint64_t received_bytes_total; /* messages queued from SMTP */
	uint64_t relayed_bytes_total;  /* messages a relay took with 250 */
	uint64_t tls_sessions[METRICS_DIRECTION_COUNT];
	uint64_t dns_failures[METRICS_DNS_REASON_COUNT][METRICS_DNS_TYPE_COUNT];
	uint64_t transport_deliveries[METRICS_TRANSPORT_COUNT]
				     [METRICS_RESULT_COUNT];
	/* DKIM: signatures made, trusted messages left unsigned, and
	 * signatures that failed (dkim_intake.h). */
	uint64_t dkim_signed_total;
	uint64_t dkim_skipped_total;
	uint64_t dkim_error_total;
	/* shape_redis: commands and connections that failed. */
	uint64_t redis_errors_total;
	uint64_t tls_policy[METRICS_TLS_POLICY_COUNT]
			   [METRICS_TLS_POLICY_RESULT_COUNT];
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
				      const struct listen_addr *addr, char *err,
				      size_t errlen);
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

/* A TLS handshake completed: facteur_tls_sessions_total, whole and by
 * direction. */
void metrics_tls_session(enum metrics_direction direction);

/* A look-up failed for now: facteur_dns_failures_total, whole and by
 * reason and type. `type` is the record type's name ("MX", "A",
 * "AAAA"), `why` the resolver's word for the failure ("timeout",
 * "SERVFAIL", "REFUSED"...); anything else counts as "other". */
void metrics_dns_failure(const char *type, const char *why);
enum metrics_dns_reason metrics_dns_reason_of(const char *why);
enum metrics_dns_type metrics_dns_type_of(const char *type);

/* The label value of an enum member, as the exposition prints it. */
const char *metrics_rejection_name(enum metrics_rejection reason);

/* facteur_queue_messages{state}: `count` fills counts[] (zeroed by the
 * caller) at each scrape, on the loop thread; NULL unsets (all 0). */
typedef void (*metrics_queue_state_fn)(void *arg, uint64_t *counts);
void metrics_set_queue_state_source(metrics_queue_state_fn count, void *arg);

/* process_*: read from /proc/self at each scrape (a few small reads).
 * Exposed for the tests; a value that cannot be read is -1. */
struct metrics_process {
	double start_time_seconds; /* since the epoch */
	double resident_memory_bytes;
	double open_fds;
};
void metrics_process_read(struct metrics_process *out);
/* facteur_destination_paused{destination="..."}: 1 while the relay keeps
 * away from a destination that throttled it, 0 after. The label is the
 * shape pattern, the route or the domain; past METRICS_PAUSED_MAX names
 * the rest share destination="other", so the series stay few. */
#define METRICS_PAUSED_MAX 64
void metrics_destination_paused(const char *destination, bool paused);

/* Forget the listeners, the histogram and the counters (for tests). */
void metrics_reset(void);

#endif
