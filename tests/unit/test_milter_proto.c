/* The milter packet codec (milter_proto.h): commands built, replies
 * parsed and checked against their layout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "facteur/milter_proto.h"

/* A reply packet: the length, the letter, the data. */
static size_t make_reply(uint8_t *out, char kind, const void *data, size_t len)
{
	uint32_t n = (uint32_t)len + 1;
	out[0] = (uint8_t)(n >> 24);
	out[1] = (uint8_t)(n >> 16);
	out[2] = (uint8_t)(n >> 8);
	out[3] = (uint8_t)n;
	out[4] = (uint8_t)kind;
	memcpy(out + 5, data, len);
	return len + 5;
}

static enum milter_parse_result parse(char kind, const void *data, size_t len,
				      struct milter_reply *r)
{
	uint8_t buf[512];
	static uint8_t keep[512]; /* r's strings point into it */
	size_t n = make_reply(buf, kind, data, len);
	size_t used = 0;
	memcpy(keep, buf, n);
	enum milter_parse_result res = milter_parse_reply(keep, n, &used, r);
	if (res == MILTER_PARSE_OK)
		assert_int_equal(used, n);
	return res;
}

static void test_milter_builder_frames_a_command(void **state)
{
	(void)state;
	uint8_t buf[64];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_HELO);
	milter_put_string(&b, "client.test");
	size_t n = milter_end(&b);
	assert_int_equal(n, 4 + 1 + 12);
	assert_memory_equal(buf, "\0\0\0\x0dHclient.test\0", n);
}

static void test_milter_builder_optneg_in_network_order(void **state)
{
	(void)state;
	uint8_t buf[32];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_OPTNEG);
	milter_put_u32(&b, 6);
	milter_put_u32(&b, 0x1ff);
	milter_put_u16(&b, 0x0102);
	assert_int_equal(milter_end(&b), 15);
	assert_memory_equal(buf, "\0\0\0\x0bO\0\0\0\x06\0\0\x01\xff\x01\x02",
			    15);
}

static void test_milter_builder_refuses_overflow(void **state)
{
	(void)state;
	uint8_t buf[8];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_HELO);
	milter_put_string(&b, "far too long a name");
	assert_true(b.overflow);
	assert_int_equal(milter_end(&b), 0);
}

static void test_milter_parse_simple_replies(void **state)
{
	(void)state;
	struct milter_reply r;
	const char kinds[] = "acdrtsp";
	for (const char *k = kinds; *k; k++) {
		assert_int_equal(parse(*k, "", 0, &r), MILTER_PARSE_OK);
		assert_int_equal(r.kind, *k);
	}
	/* data after a reply that has none */
	assert_int_equal(parse('c', "x", 1, &r), MILTER_PARSE_BAD);
}

static void test_milter_parse_partial_packet_asks_for_more(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = make_reply(buf, 'h', "X-A\0v\0", 6);
	struct milter_reply r;
	size_t used = 0;
	for (size_t cut = 0; cut < n; cut++)
		assert_int_equal(milter_parse_reply(buf, cut, &used, &r),
				 MILTER_PARSE_AGAIN);
	assert_int_equal(milter_parse_reply(buf, n, &used, &r),
			 MILTER_PARSE_OK);
	assert_string_equal(r.name, "X-A");
	assert_string_equal(r.value, "v");
}

static void test_milter_parse_refuses_bad_lengths(void **state)
{
	(void)state;
	struct milter_reply r;
	size_t used;
	const uint8_t zero[] = {0, 0, 0, 0, 'c'};
	assert_int_equal(milter_parse_reply(zero, sizeof zero, &used, &r),
			 MILTER_PARSE_BAD);
	const uint8_t huge[] = {0x7f, 0, 0, 0, 'c'};
	assert_int_equal(milter_parse_reply(huge, sizeof huge, &used, &r),
			 MILTER_PARSE_BAD);
	assert_int_equal(parse('Z', "", 0, &r), MILTER_PARSE_BAD);
}

static void test_milter_parse_optneg_with_macros(void **state)
{
	(void)state;
	const uint8_t data[] = {0, 0, 0, 6, 0, 0,   0,	 0x1f, 0,   0,	 0x10,
				0, 0, 0, 0, 2, '{', 'a', '}',  ' ', 'i', 0};
	struct milter_reply r;
	assert_int_equal(parse('O', data, sizeof data, &r), MILTER_PARSE_OK);
	assert_int_equal(r.version, 6);
	assert_int_equal(r.actions, 0x1f);
	assert_int_equal(r.protocol, 0x1000);
	assert_string_equal(r.macros[2], "{a} i");
	assert_null(r.macros[0]);
	/* a stage out of range, a list without its NUL, a short packet */
	const uint8_t bad_stage[] = {0, 0, 0, 6, 0, 0, 0, 0,   0,
				     0, 0, 0, 0, 0, 0, 9, 'i', 0};
	assert_int_equal(parse('O', bad_stage, sizeof bad_stage, &r),
			 MILTER_PARSE_BAD);
	assert_int_equal(parse('O', bad_stage, sizeof bad_stage - 1, &r),
			 MILTER_PARSE_BAD);
	assert_int_equal(parse('O', data, 11, &r), MILTER_PARSE_BAD);
}

static void test_milter_parse_replycode(void **state)
{
	(void)state;
	struct milter_reply r;
	const char text[] = "550 5.7.1 Gtube pattern";
	assert_int_equal(parse('y', text, sizeof text, &r), MILTER_PARSE_OK);
	assert_int_equal(r.code, 550);
	assert_string_equal(r.name, text);
	const char multi[] = "451-4.7.1 first\r\n451 4.7.1 second";
	assert_int_equal(parse('y', multi, sizeof multi, &r), MILTER_PARSE_OK);
	assert_int_equal(r.code, 451);
}

static void test_milter_parse_replycode_refuses_bad_text(void **state)
{
	(void)state;
	struct milter_reply r;
	const char *bad[] = {"250 2.0.0 fine",
			     "55 short",
			     "550",
			     "550x5.7.1",
			     "550 5.7.1 bare\nnewline",
			     "550-5.7.1 a\r\n451 4.7.1 other code",
			     "550-5.7.1 last line continues"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		assert_int_equal(parse('y', bad[i], strlen(bad[i]) + 1, &r),
				 MILTER_PARSE_BAD);
	/* not NUL-terminated */
	assert_int_equal(parse('y', "550 5.7.1 x", 11, &r), MILTER_PARSE_BAD);
}

static void test_milter_parse_header_changes(void **state)
{
	(void)state;
	struct milter_reply r;
	const uint8_t chg[] = {0, 0, 0, 2, 'X', 0, 'v', 0};
	assert_int_equal(parse('m', chg, sizeof chg, &r), MILTER_PARSE_OK);
	assert_int_equal(r.index, 2);
	assert_string_equal(r.name, "X");
	assert_string_equal(r.value, "v");
	assert_int_equal(parse('i', chg, sizeof chg, &r), MILTER_PARSE_OK);
	/* a missing value, trailing octets, a short index */
	assert_int_equal(parse('m', chg, 6, &r), MILTER_PARSE_BAD);
	assert_int_equal(parse('h', "X\0v\0z", 5, &r), MILTER_PARSE_BAD);
	assert_int_equal(parse('i', "\0\0", 2, &r), MILTER_PARSE_BAD);
}

static void test_milter_parse_envelope_changes(void **state)
{
	(void)state;
	struct milter_reply r;
	assert_int_equal(parse('e', "<a@b>\0", 6, &r), MILTER_PARSE_OK);
	assert_string_equal(r.name, "<a@b>");
	assert_null(r.value);
	assert_int_equal(parse('2', "<a@b>\0NOTIFY=NEVER\0", 19, &r),
			 MILTER_PARSE_OK);
	assert_string_equal(r.value, "NOTIFY=NEVER");
	assert_int_equal(parse('+', "<a@b>\0x\0", 8, &r), MILTER_PARSE_BAD);
	assert_int_equal(parse('-', "<a@b>", 5, &r), MILTER_PARSE_BAD);
	assert_int_equal(parse('q', "spam\0", 5, &r), MILTER_PARSE_OK);
	assert_string_equal(r.value, "spam");
}

static void test_milter_parse_replaced_body(void **state)
{
	(void)state;
	struct milter_reply r;
	assert_int_equal(parse('b', "a\0b", 3, &r), MILTER_PARSE_OK);
	assert_int_equal(r.data_len, 3);
	assert_memory_equal(r.data, "a\0b", 3);
}

static void test_milter_builder_puts_each_param_as_a_string(void **state)
{
	(void)state;
	uint8_t buf[64];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_MAIL);
	milter_put_string(&b, "<a@b>");
	milter_put_params(&b, " SIZE=1234  BODY=8BITMIME ");
	size_t n = milter_end(&b);
	static const char want[] = "\0\0\0\x1fM<a@b>\0SIZE=1234\0BODY=8BITMIME";
	assert_int_equal(n, sizeof want);
	assert_memory_equal(buf, want, n);
}

static void test_milter_builder_puts_no_params_for_none(void **state)
{
	(void)state;
	uint8_t buf[32];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_RCPT);
	milter_put_string(&b, "<a@b>");
	milter_put_params(&b, NULL);
	milter_put_params(&b, "");
	milter_put_params(&b, "   ");
	assert_int_equal(milter_end(&b), 4 + 1 + 6);
}

/* Every parameter of args through the iterator: what became of each, as
 * one letter (a: applied, i: ignored, b: refused). */
static void rcpt_params(const char *args, struct milter_rcpt_params *out,
			char *results)
{
	memset(out, 0, sizeof *out);
	size_t at = 0, len = 0, n = 0;
	const char *param = NULL;
	enum milter_rcpt_param_result result;
	while (milter_rcpt_param_next(args, &at, &param, &len, out, &result)) {
		assert_true(len > 0 && param[0] != ' ');
		results[n++] = result == MILTER_RCPT_PARAM_APPLIED   ? 'a'
			       : result == MILTER_RCPT_PARAM_IGNORED ? 'i'
								     : 'b';
	}
	results[n] = '\0';
}

static void test_milter_rcpt_params_notify_and_orcpt_apply(void **state)
{
	(void)state;
	struct milter_rcpt_params p;
	char results[16];
	rcpt_params("NOTIFY=SUCCESS,FAILURE  ORCPT=rfc822;x+2By@example.org",
		    &p, results);
	assert_string_equal(results, "aa");
	assert_int_equal(p.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE);
	assert_string_equal(p.orcpt, "rfc822;x+2By@example.org");
	rcpt_params("notify=never", &p, results);
	assert_string_equal(results, "a");
	assert_int_equal(p.notify, SMTP_NOTIFY_NEVER);
	assert_string_equal(p.orcpt, "");
}

static void test_milter_rcpt_params_other_keywords_are_ignored(void **state)
{
	(void)state;
	struct milter_rcpt_params p;
	char results[16];
	rcpt_params("SIZE=10 NOTIFY=DELAY X-OURS=1", &p, results);
	assert_string_equal(results, "iai");
	assert_int_equal(p.notify, SMTP_NOTIFY_DELAY);
}

static void test_milter_rcpt_params_malformed_ones_are_refused(void **state)
{
	(void)state;
	struct milter_rcpt_params p;
	char results[16];
	/* a bad value, NEVER with another, no value, no keyword, a bad
	 * keyword, ORCPT without its type or with a bad xtext */
	rcpt_params("NOTIFY=SOMETIMES NOTIFY=NEVER,DELAY NOTIFY =x "
		    "BAD_KEY=1 ORCPT=user@example.org ORCPT=rfc822;a+zz",
		    &p, results);
	assert_string_equal(results, "bbbbbbb");
	assert_int_equal(p.notify, 0);
	assert_string_equal(p.orcpt, "");
	/* the second of a kind is refused, the first stays */
	rcpt_params("NOTIFY=FAILURE NOTIFY=SUCCESS ORCPT=rfc822;a@b "
		    "ORCPT=rfc822;c@d",
		    &p, results);
	assert_string_equal(results, "abab");
	assert_int_equal(p.notify, SMTP_NOTIFY_FAILURE);
	assert_string_equal(p.orcpt, "rfc822;a@b");
}

static void test_milter_rcpt_params_longer_than_any_are_refused(void **state)
{
	(void)state;
	char args[2 * SMTP_ORCPT_MAX];
	snprintf(args, sizeof args, "ORCPT=rfc822;");
	size_t n = strlen(args);
	memset(args + n, 'a', sizeof args - n - 1);
	args[sizeof args - 1] = '\0';
	struct milter_rcpt_params p;
	char results[16];
	rcpt_params(args, &p, results);
	assert_string_equal(results, "b");
	assert_string_equal(p.orcpt, "");
}

static void test_milter_rcpt_params_none(void **state)
{
	(void)state;
	struct milter_rcpt_params p;
	char results[16];
	rcpt_params("", &p, results);
	assert_string_equal(results, "");
	rcpt_params("   ", &p, results);
	assert_string_equal(results, "");
	size_t at = 0, len;
	const char *param;
	enum milter_rcpt_param_result result;
	assert_false(
	    milter_rcpt_param_next(NULL, &at, &param, &len, &p, &result));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_milter_builder_frames_a_command),
	    cmocka_unit_test(test_milter_builder_optneg_in_network_order),
	    cmocka_unit_test(test_milter_builder_refuses_overflow),
	    cmocka_unit_test(test_milter_parse_simple_replies),
	    cmocka_unit_test(test_milter_parse_partial_packet_asks_for_more),
	    cmocka_unit_test(test_milter_parse_refuses_bad_lengths),
	    cmocka_unit_test(test_milter_parse_optneg_with_macros),
	    cmocka_unit_test(test_milter_parse_replycode),
	    cmocka_unit_test(test_milter_parse_replycode_refuses_bad_text),
	    cmocka_unit_test(test_milter_parse_header_changes),
	    cmocka_unit_test(test_milter_parse_envelope_changes),
	    cmocka_unit_test(test_milter_parse_replaced_body),
	    cmocka_unit_test(test_milter_builder_puts_each_param_as_a_string),
	    cmocka_unit_test(test_milter_builder_puts_no_params_for_none),
	    cmocka_unit_test(test_milter_rcpt_params_notify_and_orcpt_apply),
	    cmocka_unit_test(
		test_milter_rcpt_params_other_keywords_are_ignored),
	    cmocka_unit_test(
		test_milter_rcpt_params_malformed_ones_are_refused),
	    cmocka_unit_test(
		test_milter_rcpt_params_longer_than_any_are_refused),
	    cmocka_unit_test(test_milter_rcpt_params_none),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
