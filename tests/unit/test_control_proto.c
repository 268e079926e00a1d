/*
 * The control protocol, as specified in docs/operations.md and SPEC.md
 * §2 (facteur-sendmail's message rewriting is test_submission.c).
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

#include "facteur/control_proto.h"

static int parse(const char *line, struct control_request *req,
		 const char **error)
{
	return control_proto_parse_request(line, strlen(line), req, error);
}

/* The request line is refused with the error `want`. */
static void assert_refused(const char *line, const char *want)
{
	struct control_request req;
	const char *error = NULL;

	assert_int_equal(parse(line, &req, &error), -1);
	assert_string_equal(error, want);
}

static void test_request_commands_without_argument(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("queue", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_QUEUE);
	assert_false(req.has_id);
	assert_int_equal(parse("STATS", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_STATS);
	assert_int_equal(parse("  Reload \r", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_RELOAD);
	assert_int_equal(parse("flush", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_FLUSH);
	assert_false(req.has_id);
}

static void test_request_id_is_upper_cased(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("show 0123456789abcdef", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_SHOW);
	assert_true(req.has_id);
	assert_string_equal(req.id, "0123456789ABCDEF");
	assert_int_equal(parse("flush\t00000000000000FF", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_FLUSH);
	assert_string_equal(req.id, "00000000000000FF");
	assert_int_equal(parse("bounce 65A1B2C3D4E5F607", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_BOUNCE);
	assert_int_equal(parse("pickup 65A1B2C3D4E5F607", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_PICKUP);
}

static void test_request_delete_takes_id_or_all(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("delete all", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_DELETE);
	assert_true(req.all);
	assert_false(req.has_id);
	assert_int_equal(parse("delete ALL", &req, &error), 0);
	assert_true(req.all);
	assert_int_equal(parse("delete 65A1B2C3D4E5F607", &req, &error), 0);
	assert_false(req.all);
	assert_true(req.has_id);
	assert_refused("delete", "usage: delete ID|all");
}

static void test_request_bad_id_is_no_such_message(void **state)
{
	(void)state;
	assert_refused("show 123", "no such message");
	assert_refused("show 0123456789ABCDEG", "no such message");
	assert_refused("bounce ../../etc/passwd", "no such message");
	assert_refused("delete 0123456789ABCDEF0", "no such message");
}

static void test_request_errors_name_the_problem(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_refused("", "empty request");
	assert_refused("frobnicate", "unknown command");
	assert_refused("queue now", "this command takes no argument");
	assert_refused("show", "a queue id is needed");
	assert_refused("show a b c d", "too many arguments");

	char line[CONTROL_LINE_MAX + 10];
	memset(line, 'q', sizeof line);
	assert_int_equal(
	    control_proto_parse_request(line, CONTROL_LINE_MAX, &req, &error),
	    -1);
	assert_string_equal(error, "line too long");
}

static void test_values_decode_escapes(void **state)
{
	char a[] = "hello+20world+2B";
	char b[] = "-";
	char c[] = "+2D";
	char d[] = "bad+G0";
	char e[] = "cut+4";
	(void)state;

	assert_string_equal(control_proto_decode_value(a), "hello world+");
	assert_string_equal(control_proto_decode_value(b), "");
	assert_string_equal(control_proto_decode_value(c), "-");
	assert_null(control_proto_decode_value(d));
	assert_null(control_proto_decode_value(e));
}

static void test_split_keeps_the_rest_in_the_last_token(void **state)
{
	char line[] = "a b c d e";
	char *tok[3];
	(void)state;

	assert_int_equal(control_proto_split(line, tok, 3), 3);
	assert_string_equal(tok[0], "a");
	assert_string_equal(tok[1], "b");
	assert_string_equal(tok[2], "c d e");
}

/* Two recipients, one delivered, one deferred; and one pending. */
static void make_envelope(struct spool_envelope *env, struct spool_rcpt *r)
{
	memset(env, 0, sizeof *env);
	memset(r, 0, 3 * sizeof *r);
	strcpy(env->id, "65A1B2C3D4E5F607");
	env->arrival = 1000;
	env->sender = (char *)"alice@example.org";
	env->client_addr = (char *)"127.0.0.1";
	env->helo = (char *)"client.test";
	env->protocol = (char *)"ESMTP";
	env->size = 1234;
	env->body = SMTP_BODY_8BITMIME;
	env->rcpts = r;
	env->rcpt_count = 3;
	r[0].address = (char *)"bob@example.net";
	r[0].original = (char *)"bob@example.net";
	r[0].state = RCPT_DELIVERED;
	r[0].updated = 1010;
	r[1].address = (char *)"carol@remote.test";
	r[1].original = (char *)"team@example.test";
	r[1].state = RCPT_DEFERRED;
	r[1].attempts = 2;
	r[1].next_attempt = 2000;
	r[1].updated = 1100;
	strcpy(r[1].dsn, "4.4.1");
	r[1].reason = (char *)"connection refused";
	r[2].address = (char *)"dave@remote.test";
	r[2].original = (char *)"dave@remote.test";
	r[2].state = RCPT_PENDING;
	r[2].updated = 1000;
}

static void test_queue_record_lists_pending_and_last_error(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	(void)state;

	make_envelope(&env, r);
	char *record = control_proto_queue_record(&env);
	assert_non_null(record);
	assert_string_equal(record, "message 65A1B2C3D4E5F607 1000 1234 "
				    "alice@example.org 2 "
				    "carol@remote.test,dave@remote.test "
				    "4.4.1+20connection+20refused");
	free(record);
}

static void test_queue_line_is_human_and_counts_totals(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct control_queue_totals totals = {0};
	(void)state;

	make_envelope(&env, r);
	char *record = control_proto_queue_record(&env);
	char *line =
	    control_proto_format_queue_line(record, 1000 + 185, &totals);
	assert_non_null(line);
	assert_string_equal(line, "65A1B2C3D4E5F607    3m      1234  "
				  "alice@example.org  "
				  "carol@remote.test,dave@remote.test  "
				  "4.4.1 connection refused");
	assert_int_equal(totals.messages, 1);
	assert_int_equal(totals.octets, 1234);
	assert_int_equal(totals.recipients, 2);
	free(line);
	free(record);

	char *summary = control_proto_format_queue_summary(&totals);
	assert_string_equal(summary,
			    "-- 1 message, 1234 octets, 2 recipients pending");
	free(summary);
}

static void test_queue_line_shows_null_sender_as_brackets(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct control_queue_totals totals = {0};
	(void)state;

	make_envelope(&env, r);
	env.sender = (char *)"";
	r[1].state = RCPT_BOUNCED;
	char *record = control_proto_queue_record(&env);
	char *line = control_proto_format_queue_line(record, 1000, &totals);
	assert_non_null(line);
	assert_non_null(strstr(line, "  <>  dave@remote.test  -"));
	free(line);
	free(record);
}

static void test_queue_line_refuses_malformed_records(void **state)
{
	struct control_queue_totals totals = {0};
	char a[] = "message X 1 2 s";
	char b[] = "message X notanumber 2 s 1 r -";
	char c[] = "rcpt X 1 2 s 1 r -";
	(void)state;

	assert_null(control_proto_format_queue_line(a, 0, &totals));
	assert_null(control_proto_format_queue_line(b, 0, &totals));
	assert_null(control_proto_format_queue_line(c, 0, &totals));
	assert_int_equal(totals.messages, 0);
}

static void test_queue_summary_of_empty_queue(void **state)
{
	struct control_queue_totals totals = {0};
	(void)state;

	char *summary = control_proto_format_queue_summary(&totals);
	assert_string_equal(summary, "Mail queue is empty");
	free(summary);
}

static void test_age_uses_the_largest_unit(void **state)
{
	char buf[16];
	(void)state;

	control_proto_format_age(42, buf, sizeof buf);
	assert_string_equal(buf, "42s");
	control_proto_format_age(3 * 60 + 59, buf, sizeof buf);
	assert_string_equal(buf, "3m");
	control_proto_format_age(5 * 3600, buf, sizeof buf);
	assert_string_equal(buf, "5h");
	control_proto_format_age(2 * 86400 + 5, buf, sizeof buf);
	assert_string_equal(buf, "2d");
	control_proto_format_age(-5, buf, sizeof buf);
	assert_string_equal(buf, "0s");
}

static void test_show_records_name_every_recipient_state(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	size_t len = 0;
	(void)state;

	make_envelope(&env, r);
	char *text = control_proto_show_records(&env, &len);
	assert_non_null(text);
	assert_int_equal(len, strlen(text));
	assert_non_null(strstr(text, "id 65A1B2C3D4E5F607\n"));
	assert_non_null(strstr(text, "sender alice@example.org\n"));
	assert_non_null(strstr(text, "auth -\n"));
	assert_non_null(strstr(text, "body 8bitmime\n"));
	assert_non_null(strstr(text, "ret -\n"));
	assert_non_null(strstr(text, "rcpt bob@example.net bob@example.net "
				     "delivered 0 0 1010 - -\n"));
	assert_non_null(strstr(text, "rcpt carol@remote.test "
				     "team@example.test deferred 2 2000 1100 "
				     "4.4.1 connection+20refused\n"));
	assert_non_null(strstr(text, "rcpt dave@remote.test dave@remote.test "
				     "pending 0 0 1000 - -\n"));
	free(text);
}

static void test_show_lines_are_human(void **state)
{
	bool in_headers = false;
	char sender[] = "sender -";
	char rcpt[] = "rcpt carol@remote.test team@example.test deferred 2 "
		      "0 1100 4.4.1 connection+20refused";
	char header[] = "header Subject: hello there";
	(void)state;

	char *s = control_proto_format_show_line(sender, 0, &in_headers);
	assert_string_equal(s, "sender     <>");
	free(s);
	s = control_proto_format_show_line(rcpt, 0, &in_headers);
	assert_non_null(s);
	assert_string_equal(s, "recipient  carol@remote.test deferred 2 - "
			       "4.4.1 connection refused "
			       "(for team@example.test)");
	free(s);
	assert_false(in_headers);
	s = control_proto_format_show_line(header, 0, &in_headers);
	assert_string_equal(s, "\nSubject: hello there");
	assert_true(in_headers);
	free(s);
}

static void test_show_lines_escape_what_peers_sent(void **state)
{
	bool in_headers = false;
	char header[] = "header Subject: \x1b[2J\x1b]0;owned\x07 Empf\xe4nger "
			"\xc3\xa4\tok \xc2\x9b\\";
	char sender[] = "sender a+1B+5B2J@example.org";
	char helo[] = "helo evil+07host";
	char rcpt[] = "rcpt b+1Bc@remote.test b+1Bc@remote.test deferred 1 0 "
		      "1100 4.4.1 550+20Empf\xe4nger+0D";
	(void)state;

	char *s = control_proto_format_show_line(header, 0, &in_headers);
	assert_non_null(s);
	assert_string_equal(s, "\nSubject: \\x1b[2J\\x1b]0;owned\\x07 "
			       "Empf\\xe4nger \xc3\xa4\tok \\xc2\\x9b\\x5c");
	free(s);
	s = control_proto_format_show_line(sender, 0, &in_headers);
	assert_string_equal(s, "sender     <a\\x1b[2J@example.org>");
	free(s);
	s = control_proto_format_show_line(helo, 0, &in_headers);
	assert_string_equal(s, "helo       evil\\x07host");
	free(s);
	s = control_proto_format_show_line(rcpt, 0, &in_headers);
	assert_non_null(s);
	assert_string_equal(s, "recipient  b\\x1bc@remote.test deferred 1 - "
			       "4.4.1 550 Empf\\xe4nger\\x0d");
	free(s);
}

static void test_queue_line_escapes_what_peers_sent(void **state)
{
	struct control_queue_totals totals = {0};
	char record[] = "message 65A1B2C3D4E5F607 1000 10 x+1B@example.org 1 "
			"y+9B@remote.test 4.4.1+20Empf\xe4nger+1B[0m";
	(void)state;

	char *line = control_proto_format_queue_line(record, 1000, &totals);
	assert_non_null(line);
	assert_string_equal(line, "65A1B2C3D4E5F607    0s        10  "
				  "x\\x1b@example.org  y\\x9b@remote.test  "
				  "4.4.1 Empf\\xe4nger\\x1b[0m");
	free(line);

	char *raw = control_proto_shown("stat\x1b 1");
	assert_string_equal(raw, "stat\\x1b 1");
	free(raw);
}

static void test_header_records_unstuff_and_stop_at_body(void **state)
{
	const char wire[] = "Received: by mx\r\n\tfor <a@b>;\r\n"
			    "..Dotted: yes\r\n"
			    "Subject: hi\r\n"
			    "\r\n"
			    "Body: not a header\r\n";
	size_t len = 0;
	(void)state;

	char *text =
	    control_proto_header_records(wire, sizeof wire - 1, true, &len);
	assert_string_equal(text, "header Received: by mx\n"
				  "header \tfor <a@b>;\n"
				  "header .Dotted: yes\n"
				  "header Subject: hi\n");
	free(text);
}

static void test_header_records_mark_a_cut_file(void **state)
{
	const char wire[] = "Subject: hi\r\nX-Long: abc";
	(void)state;

	char *cut =
	    control_proto_header_records(wire, sizeof wire - 1, false, NULL);
	assert_string_equal(cut, "header Subject: hi\ntruncated\n");
	free(cut);
	char *whole =
	    control_proto_header_records(wire, sizeof wire - 1, true, NULL);
	assert_string_equal(whole, "header Subject: hi\nheader X-Long: abc\n");
	free(whole);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_request_commands_without_argument),
	    cmocka_unit_test(test_request_id_is_upper_cased),
	    cmocka_unit_test(test_request_delete_takes_id_or_all),
	    cmocka_unit_test(test_request_bad_id_is_no_such_message),
	    cmocka_unit_test(test_request_errors_name_the_problem),
	    cmocka_unit_test(test_values_decode_escapes),
	    cmocka_unit_test(test_split_keeps_the_rest_in_the_last_token),
	    cmocka_unit_test(test_queue_record_lists_pending_and_last_error),
	    cmocka_unit_test(test_queue_line_is_human_and_counts_totals),
	    cmocka_unit_test(test_queue_line_shows_null_sender_as_brackets),
	    cmocka_unit_test(test_queue_line_refuses_malformed_records),
	    cmocka_unit_test(test_queue_summary_of_empty_queue),
	    cmocka_unit_test(test_age_uses_the_largest_unit),
	    cmocka_unit_test(test_show_records_name_every_recipient_state),
	    cmocka_unit_test(test_show_lines_are_human),
	    cmocka_unit_test(test_show_lines_escape_what_peers_sent),
	    cmocka_unit_test(test_queue_line_escapes_what_peers_sent),
	    cmocka_unit_test(test_header_records_unstuff_and_stop_at_body),
	    cmocka_unit_test(test_header_records_mark_a_cut_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
