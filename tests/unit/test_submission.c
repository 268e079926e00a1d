/*
 * facteur-sendmail's message handling, as specified in
 * docs/operations.md and SPEC.md §2: the lone-dot rule, the end of the
 * header section, address lists and the rewritten header section.
 */
/* cmocka.h needs these first. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include "facteur/submission.h"

/* Run text through the lone-dot filter, `step` octets at a time. */
static char *filter(const char *text, bool ignore_dots, size_t step, bool *done)
{
	struct submission_input in = {.ignore_dots = ignore_dots};
	size_t len = strlen(text);
	char *result = calloc(1, 2 * len + 8);
	size_t used = 0;
	char out[64];

	assert_true(step <= 32);
	for (size_t pos = 0; pos < len && !in.done;) {
		size_t n = len - pos < step ? len - pos : step;
		size_t outlen = 0;
		size_t consumed =
		    submission_input_feed(&in, text + pos, n, out, &outlen);
		assert_true(consumed <= n);
		assert_true(outlen <= SUBMISSION_INPUT_OUT_MAX(n));
		memcpy(result + used, out, outlen);
		used += outlen;
		pos += consumed;
	}
	used += submission_input_finish(&in, result + used);
	result[used] = '\0';
	*done = in.done;
	return result;
}

static void test_lone_dot_ends_input_without_i(void **state)
{
	bool done;
	(void)state;

	for (size_t step = 1; step <= 8; step++) {
		char *out = filter("Subject: x\n\nline\n.\nafter\n", false,
				   step, &done);
		assert_string_equal(out, "Subject: x\n\nline\n");
		assert_true(done);
		free(out);
		out = filter("a\r\n.\r\nafter\r\n", false, step, &done);
		assert_string_equal(out, "a\r\n");
		assert_true(done);
		free(out);
	}
}

static void test_lone_dot_is_text_with_i(void **state)
{
	bool done;
	(void)state;

	char *out = filter("line\n.\nafter\n", true, 3, &done);
	assert_string_equal(out, "line\n.\nafter\n");
	assert_false(done);
	free(out);
}

static void test_other_dot_lines_are_text(void **state)
{
	bool done;
	(void)state;

	for (size_t step = 1; step <= 4; step++) {
		char *out =
		    filter(".hidden\n..\n.\rx\nend", false, step, &done);
		assert_string_equal(out, ".hidden\n..\n.\rx\nend");
		assert_false(done);
		free(out);
	}
	char *out = filter("a.\n.b\n", false, 1, &done);
	assert_string_equal(out, "a.\n.b\n");
	free(out);
}

static void test_lone_dot_at_end_without_newline_ends(void **state)
{
	bool done;
	(void)state;

	char *out = filter("text\n.", false, 2, &done);
	assert_string_equal(out, "text\n");
	assert_true(done);
	free(out);
	out = filter(".", false, 1, &done);
	assert_string_equal(out, "");
	assert_true(done);
	free(out);
}

static long header_end(const char *text, bool at_eof)
{
	return submission_header_end(text, strlen(text), at_eof);
}

static void test_header_end_after_empty_line(void **state)
{
	(void)state;

	assert_int_equal(header_end("A: 1\nB: 2\n\nbody\n", false), 11);
	assert_int_equal(header_end("A: 1\r\n folded\r\n\r\nbody", false), 17);
	assert_int_equal(header_end("A: 1\nB: 2\n", false), -1);
	assert_int_equal(header_end("A: 1\nB: 2", false), -1);
	assert_int_equal(header_end("A: 1\nB: 2", true), 9);
	assert_int_equal(header_end("", true), 0);
}

static void test_header_end_before_a_non_header_line(void **state)
{
	(void)state;

	assert_int_equal(header_end("just a body line\n", false), 0);
	assert_int_equal(header_end(" starts with a space\n", false), 0);
	assert_int_equal(header_end("A: 1\nnot a header\nB: 2\n", false), 5);
	assert_int_equal(header_end("Obsolete : spacing\n\n", false), 20);
}

static void check_addresses(const char *value, const char *const *expected,
			    size_t count)
{
	struct submission_addresses list = {0};

	assert_int_equal(
	    submission_parse_addresses(value, strlen(value), &list), 0);
	assert_int_equal(list.count, count);
	for (size_t i = 0; i < count; i++)
		assert_string_equal(list.items[i], expected[i]);
	submission_addresses_clear(&list);
}

static void test_addresses_with_display_names(void **state)
{
	(void)state;
	const char *const a[] = {"john@example.com", "jane@example.org"};
	check_addresses(" John Doe <john@example.com>, \"Doe, Jane\" "
			"<jane@example.org>",
			a, 2);
	const char *const b[] = {"plain@example.com"};
	check_addresses("plain@example.com", b, 1);
	const char *const c[] = {"x@example.com"};
	check_addresses("=?utf-8?q?Ren=C3=A9?= <x@example.com>", c, 1);
}

static void test_addresses_with_comments_and_legacy_form(void **state)
{
	(void)state;
	const char *const a[] = {"old@example.com", "new@example.com"};
	check_addresses("old@example.com (Old, Style), (c) new@example.com "
			"(nested (comment))",
			a, 2);
}

static void test_addresses_in_groups(void **state)
{
	(void)state;
	const char *const a[] = {"a@example.com", "b@example.com",
				 "c@example.com"};
	check_addresses("Team: a@example.com, Bee <b@example.com>;, "
			"c@example.com",
			a, 3);
	check_addresses("undisclosed-recipients:;", NULL, 0);
	check_addresses("", NULL, 0);
	check_addresses(" , ,", NULL, 0);
}

static void test_addresses_folded_and_unusual(void **state)
{
	(void)state;
	const char *const a[] = {"a@example.com", "\"odd one\"@example.com",
				 "user@[IPv6:::1]", "route@example.com"};
	check_addresses("a@example.com,\r\n\t\"odd one\"@example.com,\r\n "
			"user@[IPv6:::1], <@hop1,@hop2:route@example.com>",
			a, 4);
	const char *const b[] = {"bare"};
	check_addresses("bare", b, 1);
}

static const struct submission_headers plain = {
    .from = "user@mx.example.test",
    .date = "Mon, 01 Jan 2024 00:00:00 +0000",
    .message_id = "<1.abc@mx.example.test>",
};

static char *rewrite(const char *head, const struct submission_headers *sub,
		     struct submission_addresses *rcpts)
{
	size_t len = 0;
	char *out =
	    submission_rewrite_headers(head, strlen(head), sub, rcpts, &len);
	assert_non_null(out);
	assert_int_equal(len, strlen(out));
	return out;
}

static void test_rewrite_adds_missing_date_message_id_from(void **state)
{
	struct submission_addresses rcpts = {0};
	(void)state;

	char *out =
	    rewrite("Subject: hi\nTo: a@example.com\n\n", &plain, &rcpts);
	assert_string_equal(out, "Subject: hi\r\n"
				 "To: a@example.com\r\n"
				 "From: user@mx.example.test\r\n"
				 "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
				 "Message-ID: <1.abc@mx.example.test>\r\n"
				 "\r\n");
	assert_int_equal(rcpts.count, 0); /* no -t */
	free(out);
}

static void test_rewrite_keeps_present_headers(void **state)
{
	struct submission_addresses rcpts = {0};
	(void)state;

	char *out = rewrite("FROM: Me <me@example.com>\r\n"
			    "date: Tue, 2 Jan 2024 10:00:00 +0100\r\n"
			    "Message-Id: <own@example.com>\r\n",
			    &plain, &rcpts);
	assert_string_equal(out, "FROM: Me <me@example.com>\r\n"
				 "date: Tue, 2 Jan 2024 10:00:00 +0100\r\n"
				 "Message-Id: <own@example.com>\r\n"
				 "\r\n");
	free(out);
}

static void test_rewrite_extracts_recipients_and_removes_bcc(void **state)
{
	struct submission_addresses rcpts = {0};
	struct submission_headers sub = plain;
	(void)state;

	sub.extract_recipients = true;
	char *out = rewrite("To: Ann <ann@example.com>,\n"
			    "  bob@example.com\n"
			    "Subject: s\n"
			    "Bcc: secret@example.com,\n"
			    "\thidden@example.com\n"
			    "Cc: Friends: carl@example.com, dan@example.com;\n"
			    "To: eve@example.com\n"
			    "bcc: another@example.com\n"
			    "X-Bcc-Like: stays\n"
			    "\n",
			    &sub, &rcpts);
	assert_null(strstr(out, "secret"));
	assert_null(strstr(out, "hidden"));
	assert_null(strstr(out, "another"));
	assert_null(strstr(out, "\nbcc"));
	assert_non_null(strstr(out, "To: Ann <ann@example.com>,\r\n"
				    "  bob@example.com\r\nSubject: s\r\n"
				    "Cc: Friends:"));
	assert_non_null(strstr(out, "X-Bcc-Like: stays\r\n"));
	const char *const expected[] = {
	    "ann@example.com",	  "bob@example.com",	 "secret@example.com",
	    "hidden@example.com", "carl@example.com",	 "dan@example.com",
	    "eve@example.com",	  "another@example.com",
	};
	assert_int_equal(rcpts.count, 8);
	for (size_t i = 0; i < 8; i++)
		assert_string_equal(rcpts.items[i], expected[i]);
	submission_addresses_clear(&rcpts);
	free(out);
}

static void test_rewrite_removes_bcc_without_t(void **state)
{
	struct submission_addresses rcpts = {0};
	(void)state;

	char *out = rewrite("Bcc: x@example.com\nSubject: s\n", &plain, &rcpts);
	assert_null(strstr(out, "x@example.com"));
	assert_int_equal(rcpts.count, 0);
	free(out);
}

static void test_rewrite_from_with_display_name(void **state)
{
	struct submission_addresses rcpts = {0};
	struct submission_headers sub = plain;
	(void)state;

	sub.from_name = "Cron Daemon";
	char *out = rewrite("Subject: s\n", &sub, &rcpts);
	assert_non_null(
	    strstr(out, "\r\nFrom: Cron Daemon <user@mx.example.test>\r\n"));
	free(out);

	sub.from_name = "Doe, \"J\"\r\nBcc: evil@example.com";
	out = rewrite("Subject: s\n", &sub, &rcpts);
	assert_non_null(strstr(out, "\r\nFrom: \"Doe, \\\"J\\\"Bcc: "
				    "evil@example.com\" "
				    "<user@mx.example.test>\r\n"));
	free(out);
}

static void test_rewrite_bare_cr_cannot_start_a_field(void **state)
{
	struct submission_addresses rcpts = {0};
	(void)state;

	char *out =
	    rewrite("Subject: a\rBcc: evil@example.com\n", &plain, &rcpts);
	assert_non_null(strstr(out, "Subject: a Bcc: evil@example.com\r\n"));
	assert_null(strstr(out, "\rB"));
	free(out);
}

static void test_rewrite_of_no_headers_gives_separator(void **state)
{
	struct submission_addresses rcpts = {0};
	(void)state;

	char *out = rewrite("", &plain, &rcpts);
	assert_string_equal(out, "From: user@mx.example.test\r\n"
				 "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
				 "Message-ID: <1.abc@mx.example.test>\r\n"
				 "\r\n");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lone_dot_ends_input_without_i),
	    cmocka_unit_test(test_lone_dot_is_text_with_i),
	    cmocka_unit_test(test_other_dot_lines_are_text),
	    cmocka_unit_test(test_lone_dot_at_end_without_newline_ends),
	    cmocka_unit_test(test_header_end_after_empty_line),
	    cmocka_unit_test(test_header_end_before_a_non_header_line),
	    cmocka_unit_test(test_addresses_with_display_names),
	    cmocka_unit_test(test_addresses_with_comments_and_legacy_form),
	    cmocka_unit_test(test_addresses_in_groups),
	    cmocka_unit_test(test_addresses_folded_and_unusual),
	    cmocka_unit_test(test_rewrite_adds_missing_date_message_id_from),
	    cmocka_unit_test(test_rewrite_keeps_present_headers),
	    cmocka_unit_test(test_rewrite_extracts_recipients_and_removes_bcc),
	    cmocka_unit_test(test_rewrite_removes_bcc_without_t),
	    cmocka_unit_test(test_rewrite_from_with_display_name),
	    cmocka_unit_test(test_rewrite_bare_cr_cannot_start_a_field),
	    cmocka_unit_test(test_rewrite_of_no_headers_gives_separator),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
