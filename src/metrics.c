/*
 * Counters and their Prometheus text form (see metrics.h), version 0.0.4
 * of the exposition format: "# HELP", "# TYPE", then "name{labels} value"
 * lines. Everything is printed from the start, zeros included, so that a
 * scrape never has to guess whether a series is missing or just quiet.
 */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "facteur/metrics.h"
#include "facteur/wholefile.h"

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
	metrics_queue_state_fn queue_states;
	void *queue_states_arg;
	/* names in the order they were first paused, "other" last */
	char *paused_names[METRICS_PAUSED_MAX + 1];
	unsigned paused[METRICS_PAUSED_MAX + 1];
	size_t paused_count;
	struct {
		char *name;
		uint64_t actions[METRICS_MILTER_ACTION_COUNT];
		uint64_t errors;
	} milters[METRICS_MILTERS_MAX];
	size_t milter_count;
} extra;

static const char *const milter_action_names[] = {
    METRICS_MILTER_ACTIONS(STATE_LIST_NAME)};

static const char *const rejection_names[] = {
    METRICS_REJECTIONS(STATE_LIST_NAME)};
static const char *const auth_result_names[] = {"success", "failure"};
static const char *const direction_names[] = {"inbound", "outbound"};
static const char *const transport_names[] = {"local", "relay", "lmtp"};
static const char *const result_names[] = {"delivered", "deferred", "bounced"};
static const char *const dns_reason_names[] = {"timeout", "servfail", "refused",
					       "other"};
static const char *const dns_type_names[] = {"mx", "a", "aaaa", "other"};
static const char *const queue_state_names[] = {"pending", "deferred", "held"};

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

/* One sample per member of a label's enum: name{label="value"} count. */
static void put_labelled(struct out *o, const char *name, const char *label,
			 const char *const *values, const uint64_t *counts,
			 size_t n)
{
	for (size_t i = 0; i < n; i++)
		put(o, "%s{%s=\"%s\"} %llu\n", name, label, values[i],
		    (unsigned long long)counts[i]);
}

/* A family of one counter without labels. */
static void put_counter(struct out *o, const char *name, const char *help,
			uint64_t value)
{
	put_header(o, name, "counter", help);
	put_value(o, name, value);
}

/* A label and the values it takes, in the order of its enum. */
struct label {
	const char *name;
	const char *const *values;
	size_t count;
};

/* A family with two labels: counts[i * b->count + j] is the series of
 * a's i-th value and b's j-th. */
static void put_grid(struct out *o, const char *name, const struct label *a,
		     const struct label *b, const uint64_t *counts)
{
	for (size_t i = 0; i < a->count; i++)
		for (size_t j = 0; j < b->count; j++)
			put(o, "%s{%s=\"%s\",%s=\"%s\"} %llu\n", name, a->name,
			    a->values[i], b->name, b->values[j],
			    (unsigned long long)counts[i * b->count + j]);
}

/* The unlabelled facteur_queue_messages stays the whole queue; the
 * states split it (a dashboard selects state=~".+"). */
static void put_queue_states(struct out *o)
{
	uint64_t counts[METRICS_QUEUE_STATE_COUNT] = {0};
	if (extra.queue_states != NULL)
		extra.queue_states(extra.queue_states_arg, counts);
	put_labelled(o, "facteur_queue_messages", "state", queue_state_names,
		     counts, METRICS_QUEUE_STATE_COUNT);
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
	put_queue_states(o);
	put_header(o, "facteur_dns_queries_total", "counter",
		   "DNS look-ups made.");
	put_value(o, "facteur_dns_queries_total", m->dns_queries_total);
	put_header(o, "facteur_dns_failures_total", "counter",
		   "DNS look-ups failed.");
	put_value(o, "facteur_dns_failures_total", m->dns_failures_total);
	put_grid(
	    o, "facteur_dns_failures_total",
	    &(struct label){"reason", dns_reason_names,
			    METRICS_DNS_REASON_COUNT},
	    &(struct label){"type", dns_type_names, METRICS_DNS_TYPE_COUNT},
	    &m->dns_failures[0][0]);
	put_header(o, "facteur_tls_sessions_total", "counter",
		   "TLS handshakes completed, inbound and outbound.");
	put_value(o, "facteur_tls_sessions_total", m->tls_sessions_total);
	put_labelled(o, "facteur_tls_sessions_total", "direction",
		     direction_names, m->tls_sessions, METRICS_DIRECTION_COUNT);
}

static void put_volume_metrics(struct out *o)
{
	const struct metrics *m = &metrics;
	put_header(o, "facteur_smtp_rejections_total", "counter",
		   "SMTP commands and sessions refused, by reason.");
	put_labelled(o, "facteur_smtp_rejections_total", "reason",
		     rejection_names, m->smtp_rejections,
		     METRICS_REJECTION_COUNT);
	put_header(o, "facteur_auth_attempts_total", "counter",
		   "SMTP AUTH and POP3 logins, by result.");
	put_labelled(o, "facteur_auth_attempts_total", "result",
		     auth_result_names, m->auth_attempts,
		     METRICS_AUTH_RESULT_COUNT);
	put_counter(o, "facteur_received_bytes_total",
		    "Octets of the messages queued from SMTP clients.",
		    m->received_bytes_total);
	put_counter(o, "facteur_relayed_bytes_total",
		    "Octets of the messages a remote server accepted.",
		    m->relayed_bytes_total);
	put_header(o, "facteur_transport_deliveries_total", "counter",
		   "Delivery attempts by transport and result, per recipient.");
	put_grid(o, "facteur_transport_deliveries_total",
		 &(struct label){"transport", transport_names,
				 METRICS_TRANSPORT_COUNT},
		 &(struct label){"result", result_names, METRICS_RESULT_COUNT},
		 &m->transport_deliveries[0][0]);
}

/* The process_* families of Prometheus' client libraries, so that the
 * usual dashboards and alerts apply. */
static void put_process_metrics(struct out *o)
{
	struct metrics_process p;
	metrics_process_read(&p);
	put_header(o, "process_start_time_seconds", "gauge",
		   "Start time of the process since the epoch, in seconds.");
	put(o, "process_start_time_seconds %.2f\n", p.start_time_seconds);
	put_header(o, "process_resident_memory_bytes", "gauge",
		   "Resident memory size in bytes.");
	put(o, "process_resident_memory_bytes %.0f\n", p.resident_memory_bytes);
	put_header(o, "process_open_fds", "gauge",
		   "Number of open file descriptors.");
	put(o, "process_open_fds %.0f\n", p.open_fds);
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

	put_header(o, "facteur_dkim_signatures_total", "counter",
		   "DKIM signatures made, trusted messages left unsigned, "
		   "signatures failed.");
	put_value(o, "facteur_dkim_signatures_total{result=\"signed\"}",
		  metrics.dkim_signed_total);
	put_value(o, "facteur_dkim_signatures_total{result=\"skipped\"}",
		  metrics.dkim_skipped_total);
	put_value(o, "facteur_dkim_signatures_total{result=\"error\"}",
		  metrics.dkim_error_total);

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

	static const char *const tls_policy_names[] = {"sts", "dane"};
	static const char *const tls_policy_results[] = {"success", "failure"};
	put_header(o, "facteur_tls_policy_total", "counter",
		   "Delivery attempts a published TLS policy governed: TLS "
		   "verified under it, or delivery stopped by it.");
	put_grid(o, "facteur_tls_policy_total",
		 &(struct label){"policy", tls_policy_names,
				 METRICS_TLS_POLICY_COUNT},
		 &(struct label){"result", tls_policy_results,
				 METRICS_TLS_POLICY_RESULT_COUNT},
		 &metrics.tls_policy[0][0]);

	put_header(o, "facteur_destination_paused", "gauge",
		   "1 while a destination that throttled us is paused.");
	for (size_t i = 0; i < extra.paused_count; i++) {
		put(o, "facteur_destination_paused{destination=\"");
		put_label_value(o, extra.paused_names[i]);
		put(o, "\"} %u\n", extra.paused[i] > 0 ? 1u : 0u);
	}

	put_header(o, "facteur_milter_actions_total", "counter",
		   "Milter replies, by milter and action.");
	for (size_t i = 0; i < extra.milter_count; i++)
		for (size_t a = 0; a < METRICS_MILTER_ACTION_COUNT; a++) {
			put(o, "facteur_milter_actions_total{milter=\"");
			put_label_value(o, extra.milters[i].name);
			put(o, "\",action=\"%s\"} %llu\n",
			    milter_action_names[a],
			    (unsigned long long)extra.milters[i].actions[a]);
		}
	put_header(o, "facteur_milter_errors_total", "counter",
		   "Milters dead, slow or speaking garbage, by milter.");
	for (size_t i = 0; i < extra.milter_count; i++) {
		put(o, "facteur_milter_errors_total{milter=\"");
		put_label_value(o, extra.milters[i].name);
		put(o, "\"} %llu\n",
		    (unsigned long long)extra.milters[i].errors);
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

	put_volume_metrics(o);
	put_process_metrics(o);

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
	size_t cap = 16384; /* the whole text in one pass: ~8 KiB */
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

void metrics_tls_session(enum metrics_direction direction)
{
	metrics.tls_sessions_total++;
	if (direction < METRICS_DIRECTION_COUNT)
		metrics.tls_sessions[direction]++;
}

enum metrics_dns_reason metrics_dns_reason_of(const char *why)
{
	if (why == NULL)
		return METRICS_DNS_OTHER;
	if (strcasecmp(why, "timeout") == 0)
		return METRICS_DNS_TIMEOUT;
	if (strcasecmp(why, "servfail") == 0)
		return METRICS_DNS_SERVFAIL;
	/* the server's REFUSED, or a refused connection to it */
	if (strcasecmp(why, "refused") == 0)
		return METRICS_DNS_REFUSED;
	return METRICS_DNS_OTHER;
}

enum metrics_dns_type metrics_dns_type_of(const char *type)
{
	for (size_t i = 0; type != NULL && i < METRICS_DNS_TYPE_OTHER; i++)
		if (strcasecmp(type, dns_type_names[i]) == 0)
			return (enum metrics_dns_type)i;
	return METRICS_DNS_TYPE_OTHER;
}

void metrics_dns_failure(const char *type, const char *why)
{
	metrics.dns_failures_total++;
	metrics.dns_failures[metrics_dns_reason_of(why)]
			    [metrics_dns_type_of(type)]++;
}

const char *metrics_rejection_name(enum metrics_rejection reason)
{
	return reason < METRICS_REJECTION_COUNT ? rejection_names[reason] : "?";
}

int metrics_milter_slot(const char *name)
{
	for (size_t i = 0; i < extra.milter_count; i++)
		if (strcmp(extra.milters[i].name, name) == 0)
			return (int)i;
	if (extra.milter_count == METRICS_MILTERS_MAX)
		return -1;
	char *copy = strdup(name);
	if (copy == NULL)
		return -1;
	extra.milters[extra.milter_count].name = copy;
	return (int)extra.milter_count++;
}

void metrics_milter_action(int slot, enum metrics_milter_action action)
{
	if (slot >= 0 && (size_t)slot < extra.milter_count &&
	    action < METRICS_MILTER_ACTION_COUNT)
		extra.milters[slot].actions[action]++;
}

void metrics_milter_error(int slot)
{
	if (slot >= 0 && (size_t)slot < extra.milter_count)
		extra.milters[slot].errors++;
}

void metrics_set_queue_state_source(metrics_queue_state_fn count, void *arg)
{
	extra.queue_states = count;
	extra.queue_states_arg = count != NULL ? arg : NULL;
}

/* A small /proc file, whole; NULL when it cannot be read. */
static char *proc_read(const char *path)
{
	char *text = NULL;
	size_t len = 0;
	if (wholefile_read(path, 1 << 20, 0, &text, &len) != WHOLEFILE_OK)
		return NULL;
	return text;
}

/* The process's start: the boot time (/proc/stat's btime) plus its
 * start in clock ticks after boot (/proc/self/stat's 22nd field, counted
 * after the command name, which may hold spaces and parentheses). It
 * never changes: read once. */
static double process_start_time(void)
{
	static double start = -1;
	if (start >= 0)
		return start;
	char *stat = proc_read("/proc/self/stat");
	char *sys = proc_read("/proc/stat");
	long ticks = sysconf(_SC_CLK_TCK);
	const char *p = stat ? strrchr(stat, ')') : NULL;
	const char *btime = sys ? strstr(sys, "\nbtime ") : NULL;
	unsigned long long started = 0;
	/* after ")": field 3 (the state) to field 22 (starttime) */
	for (int field = 2; p != NULL && field < 22; field++)
		p = strchr(p + 1, ' ');
	if (p != NULL && btime != NULL && ticks > 0 &&
	    sscanf(p, " %llu", &started) == 1)
		start =
		    strtod(btime + 7, NULL) + (double)started / (double)ticks;
	free(stat);
	free(sys);
	return start;
}

static double process_resident_memory(void)
{
	char *statm = proc_read("/proc/self/statm");
	unsigned long long size = 0, resident = 0;
	long page = sysconf(_SC_PAGESIZE);
	double bytes = -1;
	if (statm != NULL && page > 0 &&
	    sscanf(statm, "%llu %llu", &size, &resident) == 2)
		bytes = (double)resident * (double)page;
	free(statm);
	return bytes;
}

/* One readdir pass; the directory's own descriptor is left out. */
static double process_open_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	if (dir == NULL)
		return -1;
	double count = 0;
	const struct dirent *e;
	while ((e = readdir(dir)) != NULL)
		if (e->d_name[0] != '.')
			count++;
	if (closedir(dir) == -1)
		return -1;
	return count > 0 ? count - 1 : 0;
}

void metrics_process_read(struct metrics_process *out)
{
	out->start_time_seconds = process_start_time();
	out->resident_memory_bytes = process_resident_memory();
	out->open_fds = process_open_fds();
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
	for (size_t i = 0; i < extra.milter_count; i++)
		free(extra.milters[i].name);
	memset(&extra, 0, sizeof extra);
	memset(&metrics, 0, sizeof metrics);
}
