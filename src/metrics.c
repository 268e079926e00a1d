/*
 * Counters and their Prometheus text form (see metrics.h).
 */
#include <stdio.h>

#include "facteur/metrics.h"

struct metrics metrics;

size_t metrics_format(char *buf, size_t len)
{
	const struct metrics *m = &metrics;
	int n = snprintf(
		buf, len,
		"# HELP facteur_connections_active SMTP sessions open now.\n"
		"# TYPE facteur_connections_active gauge\n"
		"facteur_connections_active %llu\n"
		"# HELP facteur_connections_total SMTP sessions accepted.\n"
		"# TYPE facteur_connections_total counter\n"
		"facteur_connections_total %llu\n"
		"# HELP facteur_messages_accepted_total Messages queued.\n"
		"# TYPE facteur_messages_accepted_total counter\n"
		"facteur_messages_accepted_total %llu\n"
		"# HELP facteur_deliveries_total Delivery attempts by result.\n"
		"# TYPE facteur_deliveries_total counter\n"
		"facteur_deliveries_total{result=\"delivered\"} %llu\n"
		"facteur_deliveries_total{result=\"deferred\"} %llu\n"
		"facteur_deliveries_total{result=\"bounced\"} %llu\n"
		"# HELP facteur_queue_messages Messages in the spool.\n"
		"# TYPE facteur_queue_messages gauge\n"
		"facteur_queue_messages %llu\n"
		"# HELP facteur_dns_queries_total DNS look-ups made.\n"
		"# TYPE facteur_dns_queries_total counter\n"
		"facteur_dns_queries_total %llu\n"
		"# HELP facteur_dns_failures_total DNS look-ups failed.\n"
		"# TYPE facteur_dns_failures_total counter\n"
		"facteur_dns_failures_total %llu\n"
		"# HELP facteur_tls_sessions_total TLS handshakes completed.\n"
		"# TYPE facteur_tls_sessions_total counter\n"
		"facteur_tls_sessions_total %llu\n",
		(unsigned long long)m->connections_active,
		(unsigned long long)m->connections_total,
		(unsigned long long)m->messages_accepted_total,
		(unsigned long long)m->deliveries_delivered,
		(unsigned long long)m->deliveries_deferred,
		(unsigned long long)m->deliveries_bounced,
		(unsigned long long)m->queue_messages,
		(unsigned long long)m->dns_queries_total,
		(unsigned long long)m->dns_failures_total,
		(unsigned long long)m->tls_sessions_total);
	if (n < 0)
		return 0;
	return (size_t)n < len ? (size_t)n : len - 1;
}
