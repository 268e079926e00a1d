/* The Message-ID scanner (message_id.h): the first field of the header
 * section, whatever the case of its name, folded or not, split across
 * feeds anywhere, and nothing from the body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "facteur/message_id.h"

/* The message fed one piece of `step` octets at a time. */
static const char *scan_in_steps(struct message_id_scan *scan, const char *msg,
				 size_t step)
{
	size_t len = strlen(msg);
	memset(scan, 0, sizeof *scan);
	for (size_t at = 0; at < len; at += step)
		message_id_feed(scan, msg + at,
				len - at < step ? len - at : step);
	return message_id_value(scan);
}

/* Another field by name (the session reads TLS-Required this way). */
static void test_message_id_other_field_by_name(void **state)
{
	(void)state;
	const char *msg = "From: a@example.org\r\n"
			  "TLS-Requirement: yes\r\n"
			  "tls-required :  No \r\n"
			  "Message-ID: <x@y>\r\n\r\n"
			  "TLS-Required: yes\r\n";
	struct message_id_scan scan;
	for (size_t step = 1; step <= strlen(msg); step++) {
		memset(&scan, 0, sizeof scan);
		scan.field = "tls-required";
		for (size_t at = 0; at < strlen(msg); at += step)
			message_id_feed(
			    &scan, msg + at,
			    strlen(msg) - at < step ? strlen(msg) - at : step);
		assert_string_equal(message_id_value(&scan), "No");
	}
	memset(&scan, 0, sizeof scan);
	scan.field = "tls-required";
	message_id_feed(&scan, "Subject: x\r\n\r\nTLS-Required: No\r\n", 33);
	assert_null(message_id_value(&scan));
}

static void test_message_id_found_in_any_split(void **state)
{
	(void)state;
	const char *msg = "From: a@example.org\r\n"
			  "Message-ID: <1234.abcd@example.org>\r\n"
			  "Subject: hi\r\n\r\nbody\r\n";
	struct message_id_scan scan;
	for (size_t step = 1; step <= strlen(msg); step++)
		assert_string_equal(scan_in_steps(&scan, msg, step),
				    "<1234.abcd@example.org>");
}

static void test_message_id_name_is_case_insensitive(void **state)
{
	(void)state;
	struct message_id_scan scan;
	assert_string_equal(
	    scan_in_steps(&scan, "message-id:<x@y>\n\nbody", 64), "<x@y>");
	assert_string_equal(
	    scan_in_steps(&scan, "MESSAGE-ID : <x@y>\n\nbody", 64), "<x@y>");
}

static void test_message_id_folded_value_is_unfolded(void **state)
{
	(void)state;
	struct message_id_scan scan;
	assert_string_equal(
	    scan_in_steps(&scan,
			  "Message-Id:\r\n\t<long.id@example.org>"
			  "\r\nTo: b@example.net\r\n\r\n",
			  3),
	    "<long.id@example.org>");
}

static void test_message_id_first_field_wins(void **state)
{
	(void)state;
	struct message_id_scan scan;
	assert_string_equal(scan_in_steps(&scan,
					  "Message-ID: <first@x>\r\n"
					  "Message-ID: <second@x>\r\n\r\n",
					  7),
			    "<first@x>");
}

static void test_message_id_in_body_is_not_seen(void **state)
{
	(void)state;
	struct message_id_scan scan;
	assert_null(scan_in_steps(
	    &scan, "Subject: x\r\n\r\nMessage-ID: <body@x>\r\n", 5));
	/* a similar name is another field */
	assert_null(scan_in_steps(
	    &scan, "Message-IDs: <no@x>\r\nX-Message-ID: <no@x>\r\n\r\n", 5));
	/* nor is a fold of another field */
	assert_null(
	    scan_in_steps(&scan, "Subject: a\r\n Message-ID: <no@x>\r\n", 5));
}

static void test_message_id_long_value_is_cut(void **state)
{
	(void)state;
	char msg[2048];
	char id[1200];
	memset(id, 'a', sizeof id - 1);
	id[sizeof id - 1] = '\0';
	snprintf(msg, sizeof msg, "Message-ID: <%s>\r\n\r\n", id);
	struct message_id_scan scan;
	const char *value = scan_in_steps(&scan, msg, 100);
	assert_non_null(value);
	assert_int_equal(strlen(value), MESSAGE_ID_MAX);
	assert_true(scan.truncated);
	assert_int_equal(value[0], '<');
}

static void test_message_id_empty_value_is_found_empty(void **state)
{
	(void)state;
	struct message_id_scan scan;
	assert_string_equal(scan_in_steps(&scan, "Message-ID:   \r\n\r\n", 4),
			    "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_message_id_found_in_any_split),
	    cmocka_unit_test(test_message_id_other_field_by_name),
	    cmocka_unit_test(test_message_id_name_is_case_insensitive),
	    cmocka_unit_test(test_message_id_folded_value_is_unfolded),
	    cmocka_unit_test(test_message_id_first_field_wins),
	    cmocka_unit_test(test_message_id_in_body_is_not_seen),
	    cmocka_unit_test(test_message_id_long_value_is_cut),
	    cmocka_unit_test(test_message_id_empty_value_is_found_empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
