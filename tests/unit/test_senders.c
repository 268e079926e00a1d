/* Unit tests of the senders table (senders_file). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "facteur/config.h"
#include "facteur/senders.h"
#include "support.h"

static struct senders *parse_ok(const char *text)
{
	struct config_errors errors = {0};
	struct senders *t =
	    senders_parse(text, strlen(text), "senders", &errors);
	for (size_t i = 0; i < errors.count; i++)
		print_error("%s\n", errors.messages[i]);
	assert_non_null(t);
	assert_int_equal(errors.count, 0);
	return t;
}

static void parse_fails(const char *text, const char *error)
{
	struct config_errors errors = {0};
	struct senders *t =
	    senders_parse(text, strlen(text), "senders", &errors);
	assert_null(t);
	if (!support_errors_contain(&errors, error))
		fail_msg("no error \"%s\" for \"%s\" (first: %s)", error, text,
			 errors.count ? errors.messages[0] : "none");
	config_errors_clear(&errors);
}

static void test_senders_login_may_use_itself(void **state)
{
	(void)state;
	struct senders *t = parse_ok("# nobody listed\n");
	assert_true(
	    senders_allowed(t, "alice@example.org", "alice@example.org"));
	assert_true(
	    senders_allowed(t, "alice@example.org", "Alice@EXAMPLE.org"));
	assert_false(
	    senders_allowed(t, "alice@example.org", "bob@example.org"));
	/* A login that is not an address names no sender. */
	assert_false(senders_allowed(t, "alice", "alice"));
	assert_false(senders_allowed(t, "alice", "alice@example.org"));
	senders_free(t);
}

static void test_senders_lists_addresses_and_domains(void **state)
{
	(void)state;
	struct senders *t =
	    parse_ok("alice@example.org: sales@example.org, @alice.example\n"
		     "\n"
		     "  # a comment\n"
		     "Relay : @example.net ,noreply@example.com\r\n");
	assert_true(
	    senders_allowed(t, "alice@example.org", "sales@example.org"));
	assert_true(
	    senders_allowed(t, "alice@example.org", "SALES@Example.org"));
	assert_true(
	    senders_allowed(t, "alice@example.org", "anyone@alice.example"));
	assert_true(senders_allowed(t, "alice@example.org", "x@ALICE.example"));
	assert_false(
	    senders_allowed(t, "alice@example.org", "x@sub.alice.example"));
	assert_false(
	    senders_allowed(t, "alice@example.org", "x@notalice.example"));
	assert_false(
	    senders_allowed(t, "alice@example.org", "support@example.org"));
	/* Logins match without regard to case. */
	assert_true(senders_allowed(t, "relay", "a@example.net"));
	assert_true(senders_allowed(t, "RELAY", "noreply@example.com"));
	assert_false(senders_allowed(t, "relay", "a@example.com"));
	assert_false(senders_allowed(t, "relay", "example.net"));
	/* One login's entries are not another's. */
	assert_false(senders_allowed(t, "bob@example.org", "a@example.net"));
	/* The null sender claims no one. */
	assert_true(senders_allowed(t, "bob@example.org", ""));
	senders_free(t);
}

static void test_senders_many_logins_are_found(void **state)
{
	(void)state;
	char text[64 * 40] = "";
	for (int i = 63; i >= 0; i--) {
		char line[40];
		snprintf(line, sizeof line, "user%d: @d%d.example\n", i, i);
		strcat(text, line);
	}
	struct senders *t = parse_ok(text);
	for (int i = 0; i < 64; i++) {
		char login[16], sender[32], other[32];
		snprintf(login, sizeof login, "user%d", i);
		snprintf(sender, sizeof sender, "x@d%d.example", i);
		snprintf(other, sizeof other, "x@d%d.example", (i + 1) % 64);
		assert_true(senders_allowed(t, login, sender));
		assert_false(senders_allowed(t, login, other));
	}
	senders_free(t);
}

static void test_senders_malformed_lines_name_file_and_line(void **state)
{
	(void)state;
	parse_fails("alice@example.org sales@example.org\n",
		    "senders:1: senders_file: no ':'");
	parse_fails("ok: a@b\n: a@example.org\n",
		    "senders:2: senders_file: bad login");
	parse_fails("a b: x@example.org\n",
		    "senders:1: senders_file: bad login");
	parse_fails("\nalice: example.org\n",
		    "senders:2: senders_file: bad sender \"example.org\"");
	parse_fails("alice: a@\n", "senders:1: senders_file: bad sender");
	parse_fails("alice: a b@example.org\n",
		    "senders:1: senders_file: bad sender");
	parse_fails("alice: a@x\nbob: b@x\nALICE: c@x\n",
		    "senders:3: senders_file: login alice given twice (first "
		    "on line 1)");
	struct config_errors errors = {0};
	assert_null(
	    senders_parse("a: b@c\nx\0y: d@e\n", 15, "senders", &errors));
	assert_true(
	    support_errors_contain(&errors, "senders:2: senders_file: NUL"));
	config_errors_clear(&errors);
}

static void test_senders_empty_entries_are_skipped(void **state)
{
	(void)state;
	struct senders *t = parse_ok("alice: , a@example.org,,\n");
	assert_true(senders_allowed(t, "alice", "a@example.org"));
	senders_free(t);
	t = parse_ok("nobody:\n");
	assert_false(senders_allowed(t, "nobody", "a@example.org"));
	senders_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_senders_login_may_use_itself),
	    cmocka_unit_test(test_senders_lists_addresses_and_domains),
	    cmocka_unit_test(test_senders_many_logins_are_found),
	    cmocka_unit_test(test_senders_malformed_lines_name_file_and_line),
	    cmocka_unit_test(test_senders_empty_entries_are_skipped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
