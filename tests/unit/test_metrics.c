/* The counters' exposition (metrics.h): every family with its HELP and
 * TYPE, labelled series from bounded sets, the queue by state from its
 * source, DNS failures filed by reason and type, and process_* read from
 * /proc. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "facteur/metrics.h"

static char *text;

static int setup(void **state)
{
	(void)state;
	metrics_reset();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(text);
	text = NULL;
	metrics_reset();
	return 0;
}

/* The value of one series ("name{labels}" exactly), or -1 when absent. */
static double value_of(const char *series)
{
	free(text);
	text = metrics_format_alloc(NULL);
	assert_non_null(text);
	size_t n = strlen(series);
	for (const char *line = text; *line != '\0';) {
		const char *nl = strchr(line, '\n');
		assert_non_null(nl);
		if (strncmp(line, series, n) == 0 && line[n] == ' ')
			return strtod(line + n + 1, NULL);
		line = nl + 1;
	}
	return -1;
}

static void test_metrics_new_families_have_help_and_type(void **state)
{
	(void)state;
	static const char *const families[] = {
	    "facteur_smtp_rejections_total counter",
	    "facteur_auth_attempts_total counter",
	    "facteur_received_bytes_total counter",
	    "facteur_relayed_bytes_total counter",
	    "facteur_transport_deliveries_total counter",
	    "process_start_time_seconds gauge",
	    "process_resident_memory_bytes gauge",
	    "process_open_fds gauge",
	};
	value_of("x");
	for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
		char type[128], help[128];
		snprintf(type, sizeof type, "# TYPE %s\n", families[i]);
		snprintf(help, sizeof help, "# HELP %.*s ",
			 (int)strcspn(families[i], " "), families[i]);
		if (strstr(text, type) == NULL || strstr(text, help) == NULL)
			fail_msg("no HELP/TYPE for %s", families[i]);
	}
}

static void test_metrics_every_series_present_at_zero(void **state)
{
	(void)state;
	static const char *const series[] = {
	    "facteur_smtp_rejections_total{reason=\"relay_denied\"}",
	    "facteur_smtp_rejections_total{reason=\"too_many_errors\"}",
	    "facteur_auth_attempts_total{result=\"success\"}",
	    "facteur_auth_attempts_total{result=\"failure\"}",
	    "facteur_tls_sessions_total{direction=\"inbound\"}",
	    "facteur_tls_sessions_total{direction=\"outbound\"}",
	    "facteur_dns_failures_total{reason=\"timeout\",type=\"mx\"}",
	    "facteur_dns_failures_total{reason=\"other\",type=\"other\"}",
	    "facteur_transport_deliveries_total{transport=\"local\","
	    "result=\"delivered\"}",
	    "facteur_transport_deliveries_total{transport=\"relay\","
	    "result=\"bounced\"}",
	    "facteur_transport_deliveries_total{transport=\"lmtp\","
	    "result=\"deferred\"}",
	    "facteur_queue_messages{state=\"pending\"}",
	    "facteur_queue_messages{state=\"deferred\"}",
	    "facteur_queue_messages{state=\"held\"}",
	    "facteur_received_bytes_total",
	    "facteur_relayed_bytes_total",
	    /* the names that were there before keep their samples */
	    "facteur_tls_sessions_total",
	    "facteur_dns_failures_total",
	    "facteur_queue_messages",
	};
	for (size_t i = 0; i < sizeof series / sizeof *series; i++)
		if (value_of(series[i]) != 0)
			fail_msg("%s not at 0", series[i]);
}

static void test_metrics_rejection_reasons_are_named_once(void **state)
{
	(void)state;
	for (int i = 0; i < METRICS_REJECTION_COUNT; i++) {
		const char *name = metrics_rejection_name(i);
		assert_true(strspn(name, "abcdefghijklmnopqrstuvwxyz_") ==
			    strlen(name));
		for (int j = 0; j < i; j++)
			assert_string_not_equal(name,
						metrics_rejection_name(j));
	}
	metrics.smtp_rejections[METRICS_REJECT_SIZE] += 3;
	assert_true(
	    value_of("facteur_smtp_rejections_total{reason=\"size\"}") == 3);
}

static void test_metrics_tls_counts_whole_and_by_direction(void **state)
{
	(void)state;
	metrics_tls_session(METRICS_INBOUND);
	metrics_tls_session(METRICS_INBOUND);
	metrics_tls_session(METRICS_OUTBOUND);
	assert_true(value_of("facteur_tls_sessions_total") == 3);
	assert_true(
	    value_of("facteur_tls_sessions_total{direction=\"inbound\"}") == 2);
	assert_true(
	    value_of("facteur_tls_sessions_total{direction=\"outbound\"}") ==
	    1);
}

static void test_metrics_dns_failures_filed_by_reason_and_type(void **state)
{
	(void)state;
	assert_int_equal(metrics_dns_reason_of("timeout"), METRICS_DNS_TIMEOUT);
	assert_int_equal(metrics_dns_reason_of("SERVFAIL"),
			 METRICS_DNS_SERVFAIL);
	assert_int_equal(metrics_dns_reason_of("REFUSED"), METRICS_DNS_REFUSED);
	assert_int_equal(metrics_dns_reason_of("refused"), METRICS_DNS_REFUSED);
	assert_int_equal(metrics_dns_reason_of("malformed answer"),
			 METRICS_DNS_OTHER);
	assert_int_equal(metrics_dns_reason_of(NULL), METRICS_DNS_OTHER);
	assert_int_equal(metrics_dns_type_of("MX"), METRICS_DNS_MX);
	assert_int_equal(metrics_dns_type_of("AAAA"), METRICS_DNS_AAAA);
	assert_int_equal(metrics_dns_type_of("?"), METRICS_DNS_TYPE_OTHER);

	metrics_dns_failure("MX", "timeout");
	metrics_dns_failure("A", "SERVFAIL");
	metrics_dns_failure("A", "SERVFAIL");
	metrics_dns_failure("TXT", "FORMERR");
	assert_true(value_of("facteur_dns_failures_total") == 4);
	assert_true(value_of("facteur_dns_failures_total{reason=\"timeout\","
			     "type=\"mx\"}") == 1);
	assert_true(value_of("facteur_dns_failures_total{reason=\"servfail\","
			     "type=\"a\"}") == 2);
	assert_true(value_of("facteur_dns_failures_total{reason=\"other\","
			     "type=\"other\"}") == 1);
	assert_true(value_of("facteur_dns_failures_total{reason=\"timeout\","
			     "type=\"a\"}") == 0);
}

static void count_states(void *arg, uint64_t *counts)
{
	const uint64_t *given = arg;
	for (int i = 0; i < METRICS_QUEUE_STATE_COUNT; i++)
		counts[i] = given[i];
}

static void test_metrics_queue_states_come_from_their_source(void **state)
{
	(void)state;
	uint64_t given[METRICS_QUEUE_STATE_COUNT] = {5, 2, 1};
	metrics.queue_messages = 8;
	metrics_set_queue_state_source(count_states, given);
	assert_true(value_of("facteur_queue_messages") == 8);
	assert_true(value_of("facteur_queue_messages{state=\"pending\"}") == 5);
	assert_true(value_of("facteur_queue_messages{state=\"deferred\"}") ==
		    2);
	assert_true(value_of("facteur_queue_messages{state=\"held\"}") == 1);
	metrics_set_queue_state_source(NULL, NULL);
	assert_true(value_of("facteur_queue_messages{state=\"pending\"}") == 0);
}

static void test_metrics_process_values_are_plausible(void **state)
{
	(void)state;
	struct metrics_process p;
	metrics_process_read(&p);
	double now = (double)time(NULL);
	/* started in the last hour (this test), not in the future */
	assert_true(p.start_time_seconds > now - 3600);
	assert_true(p.start_time_seconds <= now + 1);
	assert_true(p.resident_memory_bytes > 100 * 1024);
	/* stdin, stdout, stderr at least; one more shows */
	int fd = dup(STDERR_FILENO);
	assert_true(fd >= 0);
	struct metrics_process q;
	metrics_process_read(&q);
	assert_true(q.open_fds >= 4);
	assert_true(q.open_fds == p.open_fds + 1);
	assert_int_equal(close(fd), 0);
	assert_true(value_of("process_open_fds") == p.open_fds);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
		test_metrics_new_families_have_help_and_type, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_every_series_present_at_zero, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_rejection_reasons_are_named_once, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_tls_counts_whole_and_by_direction, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_dns_failures_filed_by_reason_and_type, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_queue_states_come_from_their_source, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_metrics_process_values_are_plausible, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
