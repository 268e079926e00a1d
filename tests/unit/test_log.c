/* Event lines (log.h): escaping of what peers send, invalid UTF-8, and
 * lines cut at their size limit that stay whole lines (valid JSON). The
 * lines are read back from a pipe put in place of stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/log.h"
#include "facteur/utf8.h"

#define LINE_MAX_OCTETS 8192

static int saved_stderr = -1;
static int pipe_read = -1;
static char captured[LINE_MAX_OCTETS * 2];

/* stderr becomes a pipe for one log call (the pipe holds 64 KiB, more
 * than any line), so that cmocka's own messages still show. */
static void begin(void)
{
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_true(dup2(fds[1], STDERR_FILENO) >= 0);
	assert_int_equal(close(fds[1]), 0);
	pipe_read = fds[0];
}

/* What the log calls since begin() wrote, NUL-terminated. */
static const char *end_line(size_t *len)
{
	size_t used = 0;
	ssize_t n;

	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	assert_int_equal(close(saved_stderr), 0);
	while ((n = read(pipe_read, captured + used,
			 sizeof captured - 1 - used)) > 0)
		used += (size_t)n;
	assert_int_equal(close(pipe_read), 0);
	captured[used] = '\0';
	*len = used;
	return captured;
}

static bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;

	while (len > 0) {
		size_t n = utf8_sequence_length(p, len);
		if (n == 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

/* A JSON string at *p (after its opening quote), up to its closing one. */
static bool json_string(const char **p, const char *end)
{
	while (*p < end) {
		unsigned char c = (unsigned char)**p;
		if (c == '"') {
			(*p)++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			(*p)++;
			if (*p >= end)
				return false;
			if (**p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (*p + i >= end ||
					    strchr("0123456789abcdefABCDEF",
						   (*p)[i]) == NULL)
						return false;
				*p += 4;
			} else if (strchr("\"\\/bfnrt", **p) == NULL) {
				return false;
			}
		}
		(*p)++;
	}
	return false;
}

/* One line: a flat JSON object of strings, integers and true, then a
 * newline, and valid UTF-8 throughout. */
static bool json_line_valid(const char *s, size_t len)
{
	const char *p = s;
	const char *end = s + len;

	if (len < 3 || s[len - 1] != '\n' || !utf8_valid(s, len))
		return false;
	end--;
	if (*p++ != '{')
		return false;
	for (;;) {
		if (p >= end || *p++ != '"' || !json_string(&p, end))
			return false;
		if (p >= end || *p++ != ':')
			return false;
		if (p < end && *p == '"') {
			p++;
			if (!json_string(&p, end))
				return false;
		} else if (end - p >= 4 && strncmp(p, "true", 4) == 0) {
			p += 4;
		} else {
			if (p < end && *p == '-')
				p++;
			if (p >= end || *p < '0' || *p > '9')
				return false;
			while (p < end && *p >= '0' && *p <= '9')
				p++;
		}
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		return p + 1 == end && *p == '}';
	}
}

static void test_log_json_escapes_invalid_utf8_as_replacement(void **state)
{
	(void)state;
	size_t len;
	const char *line;

	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	begin();
	log_event(LOG_LEVEL_INFO, "bounced",
		  LOG_S("reason", "550 5.1.1 Empf\xe4nger unbekannt"),
		  LOG_I("attempts", 3));
	line = end_line(&len);
	assert_true(json_line_valid(line, len));
	assert_non_null(
	    strstr(line, "\"reason\":\"550 5.1.1 Empf\\ufffdnger unbekannt\""));
	assert_non_null(strstr(line, "\"attempts\":3}"));

	/* each octet of a broken or overlong sequence is one U+FFFD */
	begin();
	log_event(LOG_LEVEL_INFO, "x",
		  LOG_S("v", "a\xc3(\xc0\xaf\xed\xa0\x80z"));
	line = end_line(&len);
	assert_true(json_line_valid(line, len));
	assert_non_null(strstr(line,
			       "\"v\":\"a\\ufffd(\\ufffd\\ufffd\\ufffd\\ufffd"
			       "\\ufffdz\""));
}

static void test_log_json_keeps_utf8_and_escapes_controls(void **state)
{
	(void)state;
	size_t len;
	const char *line;

	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	begin();
	log_event(LOG_LEVEL_INFO, "x",
		  LOG_S("v", "Empf\xc3\xa4nger \xe2\x82\xac \xf0\x9f\x93\xae"),
		  LOG_S("w", "\x1b[2J\"\\\n\xc2\x9b\x7f"));
	line = end_line(&len);
	assert_true(json_line_valid(line, len));
	assert_non_null(strstr(line, "\"v\":\"Empf\xc3\xa4nger \xe2\x82\xac "
				     "\xf0\x9f\x93\xae\""));
	assert_non_null(
	    strstr(line, "\"w\":\"\\u001b[2J\\\"\\\\\\n\\u009b\\u007f\""));
}

static void test_log_logfmt_escapes_invalid_utf8_and_controls(void **state)
{
	(void)state;
	size_t len;
	const char *line;

	log_setup(LOG_FORMAT_LOGFMT, LOG_LEVEL_INFO);
	begin();
	log_event(LOG_LEVEL_INFO, "bounced", LOG_S("reason", "Empf\xe4nger"),
		  LOG_S("rcpt", "a@b.test"), LOG_S("c1", "x\xc2\x9by"),
		  LOG_S("utf8", "\xc3\xa4"), LOG_S("ctl", "a\x1b"));
	line = end_line(&len);
	assert_true(utf8_valid(line, len));
	assert_non_null(strstr(line, " reason=\"Empf\\xe4nger\" "));
	assert_non_null(strstr(line, " rcpt=a@b.test "));
	assert_non_null(strstr(line, " c1=\"x\\u009by\" "));
	assert_non_null(strstr(line, " utf8=\xc3\xa4 "));
	assert_non_null(strstr(line, " ctl=\"a\\u001b\"\n"));
}

/* A value of `count` copies of `unit`. */
static char *repeat(const char *unit, size_t count)
{
	size_t n = strlen(unit);
	char *s = malloc(n * count + 1);

	assert_non_null(s);
	for (size_t i = 0; i < count; i++)
		memcpy(s + i * n, unit, n);
	s[n * count] = '\0';
	return s;
}

static void test_log_json_long_line_is_cut_and_stays_valid(void **state)
{
	(void)state;
	static const char *const units[] = {"\xc3\xa9", "\x01", "a\xe4",
					    "\xf0\x9f\x93\xae", "\""};
	size_t len;
	const char *line;

	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
		char *big = repeat(units[u], 10000);
		begin();
		log_event(LOG_LEVEL_INFO, "deferred", LOG_S("queue_id", "Q1"),
			  LOG_S("reason", big), LOG_S("after", "gone"));
		free(big);
		line = end_line(&len);
		assert_true(len <= LINE_MAX_OCTETS);
		assert_true(len > LINE_MAX_OCTETS - 64);
		if (!json_line_valid(line, len))
			fail_msg("unit %zu: invalid line ending %s", u,
				 line + len - 40);
		assert_non_null(strstr(line, "\"queue_id\":\"Q1\""));
		assert_null(strstr(line, "\"after\""));
		assert_string_equal(line + len - 20,
				    "\",\"truncated\":true}\n");
	}
}

static void test_log_json_field_that_does_not_fit_is_left_out(void **state)
{
	(void)state;
	size_t len;
	const char *line;
	/* fills the line so that the next key does not fit */
	char *big = repeat("b", LINE_MAX_OCTETS - 120);

	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	begin();
	log_event(
	    LOG_LEVEL_INFO, "x", LOG_S("v", big),
	    LOG_I("a_number_with_a_long_name_that_cannot_fit_anymore_here",
		  1234567890123LL),
	    LOG_S("w", "w"));
	free(big);
	line = end_line(&len);
	assert_true(json_line_valid(line, len));
	assert_null(strstr(line, "a_number_with"));
	assert_non_null(strstr(line, ",\"truncated\":true}\n"));
}

static void test_log_logfmt_long_line_is_cut_and_marked(void **state)
{
	(void)state;
	size_t len;
	const char *line;
	char *big = repeat("\xc3\xa9 ", 6000);

	log_setup(LOG_FORMAT_LOGFMT, LOG_LEVEL_INFO);
	begin();
	log_event(LOG_LEVEL_INFO, "deferred", LOG_S("reason", big),
		  LOG_S("after", "gone"));
	free(big);
	line = end_line(&len);
	assert_true(len <= LINE_MAX_OCTETS);
	assert_true(utf8_valid(line, len));
	assert_null(strstr(line, "after="));
	assert_string_equal(line + len - 17, "\" truncated=true\n");
	assert_null(memchr(line, '\n', len - 1));
}

static void test_log_short_lines_are_not_marked(void **state)
{
	(void)state;
	size_t len;
	const char *line;

	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	begin();
	log_event(LOG_LEVEL_INFO, "x", LOG_S("v", ""), LOG_S("w", NULL));
	line = end_line(&len);
	assert_true(json_line_valid(line, len));
	assert_null(strstr(line, "truncated"));
	assert_non_null(strstr(line, "\"v\":\"\",\"w\":\"\"}\n"));
}

/* Every length around the cut, with an invalid octet and an escape at
 * the very end of the value: the line is still one valid JSON object. */
static void test_log_json_cut_at_every_offset_stays_valid(void **state)
{
	(void)state;
	log_setup(LOG_FORMAT_JSON, LOG_LEVEL_INFO);
	for (size_t n = LINE_MAX_OCTETS - 160; n < LINE_MAX_OCTETS + 8; n++) {
		char *big = repeat("x", n);
		big[n - 1] = '\xff';
		big[n - 2] = '"';
		big[n / 2] = '\xc3'; /* a lone lead octet */
		size_t len;
		begin();
		log_event(LOG_LEVEL_INFO, "rejected", LOG_S("client", "::1"),
			  LOG_S("address", big), LOG_I("n", n));
		free(big);
		const char *line = end_line(&len);
		assert_true(len <= LINE_MAX_OCTETS);
		if (!json_line_valid(line, len))
			fail_msg("length %zu: invalid line ending %s", n,
				 line + len - 40);
	}
}

static void test_log_session_ids_are_distinct_hex(void **state)
{
	(void)state;
	char a[LOG_SESSION_ID_SIZE], b[LOG_SESSION_ID_SIZE];
	log_session_id(a);
	log_session_id(b);
	assert_int_equal(strlen(a), LOG_SESSION_ID_SIZE - 1);
	assert_int_equal(strspn(a, "0123456789ABCDEF"), strlen(a));
	assert_string_not_equal(a, b);
	/* one process: the same random half, the count goes on */
	assert_memory_equal(a, b, 8);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_log_json_escapes_invalid_utf8_as_replacement),
	    cmocka_unit_test(test_log_json_keeps_utf8_and_escapes_controls),
	    cmocka_unit_test(test_log_logfmt_escapes_invalid_utf8_and_controls),
	    cmocka_unit_test(test_log_json_long_line_is_cut_and_stays_valid),
	    cmocka_unit_test(test_log_json_field_that_does_not_fit_is_left_out),
	    cmocka_unit_test(test_log_logfmt_long_line_is_cut_and_marked),
	    cmocka_unit_test(test_log_short_lines_are_not_marked),
	    cmocka_unit_test(test_log_json_cut_at_every_offset_stays_valid),
	    cmocka_unit_test(test_log_session_ids_are_distinct_hex),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
