/*
 * smtp_reply: server replies read line by line, multi-line replies,
 * enhanced status codes, and the EHLO keywords.
 */
/* cmocka.h needs these first. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "facteur/smtp_reply.h"

/* Feed `lines` (NULL-terminated) and return the status of the last. */
static enum smtp_reply_status feed_all(struct smtp_reply *r,
				       const char *const *lines, bool ehlo)
{
	enum smtp_reply_status st = SMTP_REPLY_INVALID;

	smtp_reply_init(r);
	for (size_t i = 0; lines[i]; i++) {
		st = smtp_reply_feed(r, lines[i], strlen(lines[i]), ehlo);
		if (st != SMTP_REPLY_MORE)
			break;
	}
	return st;
}

static void test_reply_table(void **state)
{
	static const struct {
		const char *lines[4];
		enum smtp_reply_status status;
		int code;
		const char *esc;
		const char *text;
	} cases[] = {
	    {{"250 ok", NULL}, SMTP_REPLY_DONE, 250, "", "ok"},
	    {{"220 mx.example.com ESMTP", NULL},
	     SMTP_REPLY_DONE,
	     220,
	     "",
	     "mx.example.com ESMTP"},
	    {{"250", NULL}, SMTP_REPLY_DONE, 250, "", ""},
	    {{"250 ", NULL}, SMTP_REPLY_DONE, 250, "", ""},
	    {{"550 5.1.1 No such user", NULL},
	     SMTP_REPLY_DONE,
	     550,
	     "5.1.1",
	     "No such user"},
	    {{"451 4.3.0", NULL}, SMTP_REPLY_DONE, 451, "4.3.0", ""},
	    {{"250 2.0.0 Ok: queued as ABC", NULL},
	     SMTP_REPLY_DONE,
	     250,
	     "2.0.0",
	     "Ok: queued as ABC"},
	    /* class must match the reply's first digit */
	    {{"550 4.1.1 odd", NULL}, SMTP_REPLY_DONE, 550, "", "4.1.1 odd"},
	    /* not an enhanced code: stays in the text */
	    {{"550 5.1 short", NULL}, SMTP_REPLY_DONE, 550, "", "5.1 short"},
	    {{"550 5.1.1234 long", NULL},
	     SMTP_REPLY_DONE,
	     550,
	     "",
	     "5.1.1234 long"},
	    {{"550 5.1.1x", NULL}, SMTP_REPLY_DONE, 550, "", "5.1.1x"},
	    {{"550-5.1.1 first", "550-5.1.1 second", "550 5.1.1 third", NULL},
	     SMTP_REPLY_DONE,
	     550,
	     "5.1.1",
	     "first; second; third"},
	    {{"250-one", "250-", "250 three", NULL},
	     SMTP_REPLY_DONE,
	     250,
	     "",
	     "one; three"},
	    /* bad lines */
	    {{"", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"25", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"hello", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"250x ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"2500 ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"150 ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"650 ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"260 ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{"25a ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    {{" 250 ok", NULL}, SMTP_REPLY_INVALID, 0, "", ""},
	    /* the code changes mid-reply */
	    {{"250-one", "251 two", NULL}, SMTP_REPLY_INVALID, 250, "", "one"},
	    {{"250-one", "garbage", NULL}, SMTP_REPLY_INVALID, 250, "", "one"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct smtp_reply r;
		enum smtp_reply_status st = feed_all(&r, cases[i].lines, false);
		if (st != cases[i].status)
			fail_msg("case %zu (%s): status %d, want %d", i,
				 cases[i].lines[0], st, cases[i].status);
		assert_int_equal(r.code, cases[i].code);
		assert_string_equal(r.esc, cases[i].esc);
		assert_string_equal(r.text, cases[i].text);
		assert_int_equal(r.text_len, strlen(cases[i].text));
		assert_int_equal(r.complete, st == SMTP_REPLY_DONE);
	}
}

static void test_reply_multiline_reports_more_until_last(void **state)
{
	struct smtp_reply r;

	(void)state;
	smtp_reply_init(&r);
	assert_int_equal(smtp_reply_feed(&r, "421-a", 5, false),
			 SMTP_REPLY_MORE);
	assert_false(r.complete);
	assert_int_equal(r.code, 421);
	assert_int_equal(smtp_reply_feed(&r, "421-b", 5, false),
			 SMTP_REPLY_MORE);
	assert_int_equal(smtp_reply_feed(&r, "421 c", 5, false),
			 SMTP_REPLY_DONE);
	assert_true(r.complete);
	assert_int_equal(r.lines, 3);
	assert_string_equal(r.text, "a; b; c");
	/* a complete reply takes no more lines */
	assert_int_equal(smtp_reply_feed(&r, "421 d", 5, false),
			 SMTP_REPLY_INVALID);
}

static void test_reply_too_many_lines_is_invalid(void **state)
{
	struct smtp_reply r;
	unsigned i;

	(void)state;
	smtp_reply_init(&r);
	for (i = 0; i < SMTP_REPLY_LINES_MAX; i++)
		assert_int_equal(smtp_reply_feed(&r, "250-x", 5, false),
				 SMTP_REPLY_MORE);
	assert_int_equal(smtp_reply_feed(&r, "250-x", 5, false),
			 SMTP_REPLY_INVALID);
	assert_int_equal(smtp_reply_feed(&r, "250 x", 5, false),
			 SMTP_REPLY_INVALID);
	assert_true(r.text_len < SMTP_REPLY_TEXT_MAX);
}

static void test_reply_max_lines_with_last_is_done(void **state)
{
	struct smtp_reply r;
	unsigned i;

	(void)state;
	smtp_reply_init(&r);
	for (i = 0; i + 1 < SMTP_REPLY_LINES_MAX; i++)
		assert_int_equal(smtp_reply_feed(&r, "250-x", 5, false),
				 SMTP_REPLY_MORE);
	assert_int_equal(smtp_reply_feed(&r, "250 x", 5, false),
			 SMTP_REPLY_DONE);
}

static void test_reply_text_is_bounded(void **state)
{
	char line[3000];
	struct smtp_reply r;

	(void)state;
	memcpy(line, "250-", 4);
	memset(line + 4, 'a', sizeof line - 4);
	smtp_reply_init(&r);
	for (int i = 0; i < 5; i++)
		assert_int_equal(smtp_reply_feed(&r, line, sizeof line, false),
				 SMTP_REPLY_MORE);
	line[3] = ' ';
	assert_int_equal(smtp_reply_feed(&r, line, sizeof line, false),
			 SMTP_REPLY_DONE);
	assert_int_equal(r.text_len, SMTP_REPLY_TEXT_MAX - 1);
	assert_int_equal(strlen(r.text), SMTP_REPLY_TEXT_MAX - 1);
}

static void test_reply_control_characters_are_replaced(void **state)
{
	static const char line[] = "554 5.7.1 bad\tthing\x01\0x";
	struct smtp_reply r;

	(void)state;
	smtp_reply_init(&r);
	assert_int_equal(smtp_reply_feed(&r, line, sizeof line - 1, false),
			 SMTP_REPLY_DONE);
	assert_string_equal(r.text, "bad?thing??x");
	assert_string_equal(r.esc, "5.7.1");
}

static void test_ehlo_keywords_are_extracted(void **state)
{
	static const char *const lines[] = {
	    "250-mx.example.com Hello client [192.0.2.1]",
	    "250-pipelining",
	    "250-SIZE 10485760",
	    "250-8BITMIME",
	    "250-STARTTLS",
	    "250-AUTH LOGIN PLAIN CRAM-MD5",
	    "250-SMTPUTF8",
	    "250-DSN",
	    "250-CHUNKING",
	    "250 ENHANCEDSTATUSCODES",
	    NULL,
	};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.code, 250);
	assert_int_equal(
	    r.ehlo, SMTP_EXT_PIPELINING | SMTP_EXT_SIZE | SMTP_EXT_8BITMIME |
			SMTP_EXT_STARTTLS | SMTP_EXT_AUTH_PLAIN |
			SMTP_EXT_AUTH_LOGIN | SMTP_EXT_SMTPUTF8 | SMTP_EXT_DSN |
			SMTP_EXT_CHUNKING | SMTP_EXT_ENHANCEDSTATUSCODES);
	assert_int_equal(r.ehlo_size, 10485760);
}

static void test_ehlo_first_line_is_not_a_keyword(void **state)
{
	static const char *const lines[] = {"250-STARTTLS", "250 8BITMIME",
					    NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, SMTP_EXT_8BITMIME);
}

static void test_ehlo_single_line_offers_nothing(void **state)
{
	static const char *const lines[] = {"250 mx.example.com", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, 0);
	assert_int_equal(r.ehlo_size, 0);
}

static void test_ehlo_size_without_limit(void **state)
{
	static const char *const no_number[] = {"250-mx", "250 SIZE", NULL};
	static const char *const zero[] = {"250-mx", "250 SIZE 0", NULL};
	static const char *const junk[] = {"250-mx", "250 SIZE 12ab", NULL};
	static const char *const huge[] = {
	    "250-mx", "250 SIZE 99999999999999999999999", NULL};
	const char *const *cases[] = {no_number, zero, junk, huge};
	struct smtp_reply r;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_int_equal(feed_all(&r, cases[i], true), SMTP_REPLY_DONE);
		assert_int_equal(r.ehlo, SMTP_EXT_SIZE);
		assert_int_equal(r.ehlo_size, 0);
	}
}

static void test_ehlo_old_auth_form(void **state)
{
	static const char *const lines[] = {"250-mx", "250-AUTH=PLAIN LOGIN",
					    "250 auth=login", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, SMTP_EXT_AUTH_PLAIN | SMTP_EXT_AUTH_LOGIN);
}

static void test_ehlo_auth_without_known_mechanism(void **state)
{
	static const char *const lines[] = {"250-mx",
					    "250 AUTH CRAM-MD5 PLAINX", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, 0);
}

static void test_ehlo_keywords_ignored_when_not_ehlo(void **state)
{
	static const char *const lines[] = {"250-mx", "250 PIPELINING", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, false), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, 0);
}

static void test_ehlo_keywords_ignored_in_error_reply(void **state)
{
	static const char *const lines[] = {"554-mx", "554 STARTTLS", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, 0);
	assert_int_equal(r.code, 554);
}

static void test_ehlo_keyword_prefix_does_not_match(void **state)
{
	static const char *const lines[] = {"250-mx", "250-PIPELININGX",
					    "250 DSNX", NULL};
	struct smtp_reply r;

	(void)state;
	assert_int_equal(feed_all(&r, lines, true), SMTP_REPLY_DONE);
	assert_int_equal(r.ehlo, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_reply_table),
	    cmocka_unit_test(test_reply_multiline_reports_more_until_last),
	    cmocka_unit_test(test_reply_too_many_lines_is_invalid),
	    cmocka_unit_test(test_reply_max_lines_with_last_is_done),
	    cmocka_unit_test(test_reply_text_is_bounded),
	    cmocka_unit_test(test_reply_control_characters_are_replaced),
	    cmocka_unit_test(test_ehlo_keywords_are_extracted),
	    cmocka_unit_test(test_ehlo_first_line_is_not_a_keyword),
	    cmocka_unit_test(test_ehlo_single_line_offers_nothing),
	    cmocka_unit_test(test_ehlo_size_without_limit),
	    cmocka_unit_test(test_ehlo_old_auth_form),
	    cmocka_unit_test(test_ehlo_auth_without_known_mechanism),
	    cmocka_unit_test(test_ehlo_keywords_ignored_when_not_ehlo),
	    cmocka_unit_test(test_ehlo_keywords_ignored_in_error_reply),
	    cmocka_unit_test(test_ehlo_keyword_prefix_does_not_match),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
