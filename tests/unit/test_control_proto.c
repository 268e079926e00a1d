/*
 * The control protocol and facteur-sendmail's message rewriting, as
 * specified in docs/operations.md and SPEC.md §2.
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
#include "facteur/submission.h"

static int parse(const char *line, struct control_request *req,
		 const char **error)
{
	return control_proto_parse_request(line, strlen(line), req, error);
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
	assert_int_equal(parse("delete", &req, &error), -1);
	assert_string_equal(error, "usage: delete ID|all");
}

static void test_request_bad_id_is_no_such_message(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("show 123", &req, &error), -1);
	assert_string_equal(error, "no such message");
	assert_int_equal(parse("show 0123456789ABCDEG", &req, &error), -1);
	assert_string_equal(error, "no such message");
	assert_int_equal(parse("bounce ../../etc/passwd", &req, &error), -1);
	assert_string_equal(error, "no such message");
	assert_int_equal(parse("delete 0123456789ABCDEF0", &req, &error), -1);
	assert_string_equal(error, "no such message");
}

static void test_request_errors_name_the_problem(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("", &req, &error), -1);
	assert_string_equal(error, "empty request");
	assert_int_equal(parse("frobnicate", &req, &error), -1);
	assert_string_equal(error, "unknown command");
	assert_int_equal(parse("queue now", &req, &error), -1);
	assert_string_equal(error, "this command takes no argument");
	assert_int_equal(parse("show", &req, &error), -1);
	assert_string_equal(error, "a queue id is needed");
	assert_int_equal(parse("show a b c d", &req, &error), -1);
	assert_string_equal(error, "too many arguments");

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
