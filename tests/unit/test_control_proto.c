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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/control_proto.h"
#include "facteur/domain_suspend.h"
#include "facteur/queue_summary.h"
#include "facteur/text.h"

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

	assert_int_equal(parse("delete all --yes", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_DELETE);
	assert_true(req.all);
	assert_true(req.yes);
	assert_false(req.has_id);
	assert_int_equal(parse("delete ALL --YES", &req, &error), 0);
	assert_true(req.all);
	assert_int_equal(parse("delete 65A1B2C3D4E5F607", &req, &error), 0);
	assert_false(req.all);
	assert_true(req.has_id);
	assert_refused("delete", "usage: delete ID|all|--domain D|--sender S");
	assert_refused("delete all", "delete all needs --yes");
	assert_int_equal(parse("delete all --dry-run", &req, &error), 0);
	assert_true(req.all);
	assert_true(req.dry_run);
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
	assert_refused("show a b c d", "a queue id is needed");
	assert_refused(
	    "queue a b c d e f g h i j k l m n o p q r s t u v w x y",
	    "too many arguments");

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

static void test_request_queue_options(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("queue", &req, &error), 0);
	assert_false(req.json);
	assert_false(req.select.has_domain);
	assert_int_equal(req.select.state, CONTROL_STATE_ANY);
	assert_true(req.select.older_than < 0);
	assert_int_equal(req.limit, 0);
	assert_int_equal(parse("queue --json --domain Example.ORG --sender "
			       "a+2Bb@x.test --state deferred --older-than 2h "
			       "--limit 100",
			       &req, &error),
			 0);
	assert_true(req.json);
	assert_true(req.select.has_domain);
	assert_string_equal(req.select.domain, "example.org");
	assert_true(req.select.has_sender);
	assert_string_equal(req.select.sender, "a+b@x.test");
	assert_int_equal(req.select.state, CONTROL_STATE_DEFERRED);
	assert_int_equal(req.select.older_than, 7200);
	assert_int_equal(req.limit, 100);
	/* the null sender, two ways */
	assert_int_equal(parse("queue --sender -", &req, &error), 0);
	assert_string_equal(req.select.sender, "");
	assert_int_equal(parse("queue --sender <>", &req, &error), 0);
	assert_true(req.select.has_sender);
	assert_string_equal(req.select.sender, "");
	assert_int_equal(parse("queue --state HELD", &req, &error), 0);
	assert_int_equal(req.select.state, CONTROL_STATE_HELD);
	assert_int_equal(parse("summary --json", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_SUMMARY);
	assert_true(req.json);
}

static void test_request_bad_options_are_refused(void **state)
{
	(void)state;
	assert_refused("queue --frobnicate", "unknown option");
	assert_refused("queue --json --json", "an option is given twice");
	assert_refused("queue --domain", "an option lacks its value");
	assert_refused("queue --older-than soon",
		       "bad duration (a number, then s, m, h or d)");
	assert_refused("queue --older-than 5x",
		       "bad duration (a number, then s, m, h or d)");
	assert_refused("queue --older-than -5m",
		       "bad duration (a number, then s, m, h or d)");
	assert_refused("queue --limit 0", "--limit takes a number above 0");
	assert_refused("queue --limit -3", "--limit takes a number above 0");
	assert_refused("queue --limit 99999999999999999999999",
		       "--limit takes a number above 0");
	assert_refused("queue --state frozen",
		       "--state is pending, deferred or held");
	assert_refused("queue --domain user@example.org", "bad domain");
	assert_refused("queue --domain +G0", "bad domain");
	assert_refused("summary --domain example.org",
		       "this command does not take that option");
	assert_refused("show 0123456789ABCDEF --json",
		       "this command does not take that option");
	assert_refused("hold --limit 3 --domain a.test",
		       "this command does not take that option");
	assert_refused("hold", "a queue id, or --domain D or --sender S, is "
			       "needed");
	assert_refused("hold 0123456789ABCDEF --domain a.test",
		       "a queue id, or --domain D or --sender S, is needed");
}

static void test_request_selectors_of_actions(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("hold 0123456789abcdef", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_HOLD);
	assert_true(req.has_id);
	assert_int_equal(
	    parse("release --domain a.test --sender b@c.test", &req, &error),
	    0);
	assert_int_equal(req.command, CONTROL_RELEASE);
	assert_false(req.has_id);
	assert_true(req.select.has_domain && req.select.has_sender);
	assert_int_equal(
	    parse("bounce --domain a.test --dry-run", &req, &error), 0);
	assert_true(req.dry_run);
	assert_int_equal(parse("delete --sender x@y.test", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_DELETE);
	assert_false(req.all);
	assert_refused("delete all --domain a.test",
		       "usage: delete ID|all|--domain D|--sender S");
}

static void test_request_suspend_and_resume(void **state)
{
	struct control_request req;
	const char *error = NULL;
	(void)state;

	assert_int_equal(parse("suspend Big.Example", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_SUSPEND);
	assert_string_equal(req.select.domain, "big.example");
	assert_int_equal(req.seconds, 0);
	assert_int_equal(parse("suspend big.example 30m", &req, &error), 0);
	assert_int_equal(req.seconds, 1800);
	assert_int_equal(parse("resume big.example", &req, &error), 0);
	assert_int_equal(req.command, CONTROL_RESUME);
	assert_refused("suspend", "usage: suspend DOMAIN [DURATION]");
	assert_refused("suspend a.test 1h extra",
		       "usage: suspend DOMAIN [DURATION]");
	assert_refused("suspend a.test forever",
		       "bad duration (a number, then s, m, h or d)");
	assert_refused("suspend a.test 0",
		       "bad duration (a number, then s, m, h or d)");
	assert_refused("resume a.test 1h", "usage: resume DOMAIN");
	assert_refused("resume user@a.test", "bad domain");
}

static void test_selector_matches_domain_sender_state_age(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct control_request req;
	const char *error = NULL;
	(void)state;

	make_envelope(&env, r);
	assert_int_equal(parse("queue --domain REMOTE.test", &req, &error), 0);
	assert_true(control_proto_selects(&req.select, &env, false, 5000));
	/* only recipients not done count: example.net was delivered */
	assert_int_equal(parse("queue --domain example.net", &req, &error), 0);
	assert_false(control_proto_selects(&req.select, &env, false, 5000));
	assert_int_equal(
	    parse("queue --sender Alice@Example.org", &req, &error), 0);
	assert_true(control_proto_selects(&req.select, &env, false, 5000));
	assert_int_equal(parse("queue --sender -", &req, &error), 0);
	assert_false(control_proto_selects(&req.select, &env, false, 5000));
	assert_int_equal(parse("queue --state deferred", &req, &error), 0);
	assert_true(control_proto_selects(&req.select, &env, false, 5000));
	assert_false(control_proto_selects(&req.select, &env, true, 5000));
	assert_int_equal(parse("queue --state held", &req, &error), 0);
	assert_true(control_proto_selects(&req.select, &env, true, 5000));
	assert_int_equal(parse("queue --state pending", &req, &error), 0);
	assert_false(control_proto_selects(&req.select, &env, false, 5000));
	r[1].state = RCPT_PENDING;
	assert_true(control_proto_selects(&req.select, &env, false, 5000));
	assert_int_equal(parse("queue --older-than 1h", &req, &error), 0);
	assert_false(control_proto_selects(&req.select, &env, false, 4599));
	assert_true(control_proto_selects(&req.select, &env, false, 4600));
}

static void test_json_string_escapes_controls_and_bad_utf8(void **state)
{
	struct text t = {0};
	(void)state;

	control_proto_json_string(&t, "a\"b\\c\n\t\x01\x7f"
				      "\xc3\xa9\xff\xc2\x85z");
	char *s = text_finish(&t, NULL);
	assert_string_equal(s, "\"a\\\"b\\\\c\\u000a\\u0009\\u0001\\u007f"
			       "\xc3\xa9\\ufffd\\u0085z\"");
	free(s);
}

static void test_queue_json_has_every_field(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	(void)state;

	make_envelope(&env, r);
	char *json = control_proto_queue_json(&env, true, 1100);
	assert_non_null(json);
	assert_string_equal(
	    json,
	    "{\"v\":1,\"id\":\"65A1B2C3D4E5F607\","
	    "\"arrival\":\"1970-01-01T00:16:40Z\",\"age_seconds\":100,"
	    "\"size\":1234,\"sender\":\"alice@example.org\",\"held\":true,"
	    "\"state\":\"held\",\"recipients\":["
	    "{\"address\":\"bob@example.net\",\"state\":\"delivered\","
	    "\"attempts\":0,\"last_error\":null,\"next_attempt\":null},"
	    "{\"address\":\"carol@remote.test\",\"state\":\"deferred\","
	    "\"attempts\":2,\"last_error\":\"4.4.1 connection refused\","
	    "\"next_attempt\":\"1970-01-01T00:33:20Z\"},"
	    "{\"address\":\"dave@remote.test\",\"state\":\"pending\","
	    "\"attempts\":0,\"last_error\":null,\"next_attempt\":null}]}");
	free(json);
}

static void test_summary_counts_per_domain(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct queue_summary *qs = queue_summary_new();
	(void)state;

	make_envelope(&env, r);
	assert_int_equal(queue_summary_add(qs, &env), 0);
	env.arrival = 900;
	r[1].address = (char *)"erin@Other.test";
	r[1].updated = 1200;
	r[1].reason = (char *)"later";
	assert_int_equal(queue_summary_add(qs, &env), 0);
	assert_int_equal(queue_summary_finish(qs), 2);
	struct control_summary_row *row = queue_summary_row(qs, 0);
	/* remote.test: two messages, three recipients, oldest 900 */
	assert_string_equal(row->domain, "remote.test");
	assert_int_equal(row->messages, 2);
	assert_int_equal(row->recipients, 3);
	assert_int_equal(row->oldest, 900);
	assert_string_equal(row->last_error, "4.4.1 connection refused");
	row = queue_summary_row(qs, 1);
	assert_string_equal(row->domain, "other.test");
	assert_int_equal(row->messages, 1);
	assert_string_equal(row->last_error, "4.4.1 later");
	assert_null(queue_summary_row(qs, 2));

	row = queue_summary_row(qs, 0);
	row->suspended = true;
	row->suspended_until = 0;
	char *record = control_proto_summary_record(row);
	assert_string_equal(record, "domain remote.test 2 3 900 -1 0 "
				    "4.4.1+20connection+20refused");
	char *json = control_proto_format_summary_line(record, 1000, true);
	assert_string_equal(
	    json, "{\"v\":1,\"domain\":\"remote.test\",\"messages\":2,"
		  "\"recipients\":3,\"oldest_age_seconds\":100,"
		  "\"last_error\":\"4.4.1 connection refused\","
		  "\"suspended\":true,\"suspended_until\":null,"
		  "\"paused\":false}");
	free(json);
	free(record);
	record = control_proto_summary_record(row);
	char *line = control_proto_format_summary_line(record, 1000, false);
	assert_non_null(strstr(line, "remote.test"));
	assert_non_null(strstr(line, "suspended"));
	assert_non_null(strstr(line, "4.4.1 connection refused"));
	free(line);
	free(record);
	queue_summary_free(qs);
}

static void test_summary_includes_domains_without_messages(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct queue_summary *qs = queue_summary_new();
	(void)state;

	make_envelope(&env, r);
	assert_int_equal(queue_summary_add(qs, &env), 0);
	assert_int_equal(queue_summary_include(qs, "Quiet.test"), 0);
	assert_int_equal(queue_summary_include(qs, "remote.test"), 0);
	assert_int_equal(queue_summary_finish(qs), 2);
	assert_string_equal(queue_summary_row(qs, 0)->domain, "remote.test");
	assert_int_equal(queue_summary_row(qs, 0)->messages, 1);
	assert_int_equal(queue_summary_row(qs, 0)->recipients, 2);
	assert_string_equal(queue_summary_row(qs, 1)->domain, "quiet.test");
	assert_int_equal(queue_summary_row(qs, 1)->messages, 0);
	assert_int_equal(queue_summary_row(qs, 1)->oldest, 0);
	queue_summary_free(qs);
}

static void test_summary_many_domains_grow_the_table(void **state)
{
	struct spool_envelope env;
	struct spool_rcpt r[3];
	struct queue_summary *qs = queue_summary_new();
	char names[500][32];
	(void)state;

	make_envelope(&env, r);
	env.rcpt_count = 1;
	r[0].state = RCPT_PENDING;
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < 500; i++) {
			snprintf(names[i], sizeof names[i], "u@d%d.test", i);
			r[0].address = names[i];
			assert_int_equal(queue_summary_add(qs, &env), 0);
		}
	assert_int_equal(queue_summary_finish(qs), 500);
	for (size_t i = 0; i < 500; i++)
		assert_int_equal(queue_summary_row(qs, i)->messages, 2);
	queue_summary_free(qs);
}

static void test_summary_line_refuses_malformed_records(void **state)
{
	static const char *bad[] = {
	    "domain a.test 1 1 900 0 0",    "domain a.test x 1 900 0 0 -",
	    "domain a.test 1 1 900 -2 0 -", "domain a.test 1 1 900 0 2 -",
	    "message a.test 1 1 900 0 0 -", "domain a+G0 1 1 900 0 0 -",
	};
	(void)state;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char *copy = strdup(bad[i]);
		assert_null(control_proto_format_summary_line(copy, 0, false));
		free(copy);
	}
}

static void test_suspensions_parse_format_and_expire(void **state)
{
	struct domain_suspend *ds = domain_suspend_new();
	static const char text[] = "big.example 0\n"
				   "Timed.Example 5000\n"
				   "\n"
				   "broken line\n"
				   "no-time\n"
				   "a@b 7\n";
	time_t until = 1;
	(void)state;

	assert_int_equal(domain_suspend_parse(ds, text, sizeof text - 1), 3);
	assert_true(domain_suspend_active(ds, "BIG.example", 100, &until));
	assert_int_equal(until, 0);
	assert_true(domain_suspend_active(ds, "user@big.example", 100, NULL));
	assert_true(domain_suspend_active(ds, "timed.example", 4999, &until));
	assert_int_equal(until, 5000);
	assert_false(domain_suspend_active(ds, "timed.example", 5000, NULL));
	assert_false(domain_suspend_active(ds, "other.example", 100, NULL));
	size_t len = 0;
	char *out = domain_suspend_format(ds, &len);
	assert_string_equal(out, "big.example 0\ntimed.example 5000\n");
	free(out);
	assert_int_equal(domain_suspend_set(ds, "new.example", 0), 0);
	assert_int_equal(domain_suspend_resume(ds, "big.example"), 0);
	assert_int_equal(domain_suspend_resume(ds, "big.example"), 1);
	assert_false(domain_suspend_active(ds, "big.example", 100, NULL));
	assert_true(domain_suspend_active(ds, "new.example", 100, NULL));
	assert_string_equal(domain_suspend_at(ds, 0), "new.example");
	assert_string_equal(domain_suspend_at(ds, 1), "timed.example");
	assert_null(domain_suspend_at(ds, 2));
	assert_int_equal(domain_suspend_set(ds, "bad domain", 0), -1);
	domain_suspend_free(ds);
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
	    cmocka_unit_test(test_request_queue_options),
	    cmocka_unit_test(test_request_bad_options_are_refused),
	    cmocka_unit_test(test_request_selectors_of_actions),
	    cmocka_unit_test(test_request_suspend_and_resume),
	    cmocka_unit_test(test_selector_matches_domain_sender_state_age),
	    cmocka_unit_test(test_json_string_escapes_controls_and_bad_utf8),
	    cmocka_unit_test(test_queue_json_has_every_field),
	    cmocka_unit_test(test_summary_counts_per_domain),
	    cmocka_unit_test(test_summary_includes_domains_without_messages),
	    cmocka_unit_test(test_summary_many_domains_grow_the_table),
	    cmocka_unit_test(test_summary_line_refuses_malformed_records),
	    cmocka_unit_test(test_suspensions_parse_format_and_expire),
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
