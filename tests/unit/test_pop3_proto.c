/*
 * pop3_proto: command lines, the RETR/TOP stream converter, sizes, UIDs
 * and the loopback test, driven with bytes only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four above first */
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/pop3_proto.h"

#define LIT(s) (s), (sizeof(s) - 1)

static enum pop3_parse_result parse(const char *line, struct pop3_command *cmd)
{
	return pop3_parse_command(line, strlen(line), cmd);
}

static bool text_is(const struct pop3_command *cmd, unsigned i,
		    const char *want)
{
	return cmd->textlen[i] == strlen(want) &&
	       memcmp(cmd->text[i], want, cmd->textlen[i]) == 0;
}

/* ---- command lines ---- */

static void test_pop3_command_keywords_are_case_insensitive(void **state)
{
	static const struct {
		const char *line;
		enum pop3_verb verb;
	} cases[] = {
	    {"USER a@b", POP3_VERB_USER}, {"pass x", POP3_VERB_PASS},
	    {"Stat", POP3_VERB_STAT},	  {"list", POP3_VERB_LIST},
	    {"rEtR 1", POP3_VERB_RETR},	  {"dele 2", POP3_VERB_DELE},
	    {"NOOP", POP3_VERB_NOOP},	  {"rset", POP3_VERB_RSET},
	    {"quit", POP3_VERB_QUIT},	  {"uidl", POP3_VERB_UIDL},
	    {"top 1 0", POP3_VERB_TOP},	  {"capa", POP3_VERB_CAPA},
	    {"stls", POP3_VERB_STLS},	  {"Auth PLAIN", POP3_VERB_AUTH},
	};
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct pop3_command cmd;
		enum pop3_parse_result r = parse(cases[i].line, &cmd);
		if (r != POP3_PARSE_OK || cmd.verb != cases[i].verb)
			fail_msg("\"%s\": result %d verb %d, want verb %d",
				 cases[i].line, r, cmd.verb, cases[i].verb);
	}
	assert_string_equal(pop3_verb_name(POP3_VERB_RETR), "RETR");
	assert_string_equal(pop3_verb_name(POP3_VERB_TOP), "TOP");
	assert_string_equal(pop3_verb_name(POP3_VERB_UNKNOWN), "UNKNOWN");
}

static void test_pop3_command_unknown_keywords(void **state)
{
	static const char *const lines[] = {
	    "",	       " STAT",	 "STATS", "ST",		"APOP a b", "XTND",
	    "RETR\t1", "LIST\r", "TO 1",  "CAPABILITY", "\0STAT",
	};
	(void)state;
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		struct pop3_command cmd;
		size_t len = i == 10 ? 5 : strlen(lines[i]);
		if (pop3_parse_command(lines[i], len, &cmd) !=
		    POP3_PARSE_UNKNOWN)
			fail_msg("\"%s\" was recognised", lines[i]);
		assert_int_equal(cmd.verb, POP3_VERB_UNKNOWN);
	}
}

static void test_pop3_command_without_arguments_refuses_extra_ones(void **state)
{
	static const char *const lines[] = {
	    "STAT 1", "NOOP x", "RSET all", "QUIT now", "CAPA x", "STLS 1",
	};
	(void)state;
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		struct pop3_command cmd;
		if (parse(lines[i], &cmd) != POP3_PARSE_SYNTAX)
			fail_msg("\"%s\" was accepted", lines[i]);
		assert_int_not_equal(cmd.verb, POP3_VERB_UNKNOWN);
	}
}

static void test_pop3_command_trailing_spaces_are_ignored(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("STAT  ", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.verb, POP3_VERB_STAT);
	assert_int_equal(parse("RETR 7 ", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 7);
	assert_int_equal(parse("TOP  3   10", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 3);
	assert_int_equal(cmd.lines, 10);
}

static void test_pop3_command_message_numbers(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("RETR 1", &cmd), POP3_PARSE_OK);
	assert_true(cmd.has_number);
	assert_int_equal(cmd.number, 1);
	assert_int_equal(parse("DELE 0042", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 42);
	/* 0 parses; the session answers "no such message" */
	assert_int_equal(parse("RETR 0", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 0);
	/* too large: saturates, never wraps to a small valid number */
	assert_int_equal(parse("RETR 18446744073709551617", &cmd),
			 POP3_PARSE_OK);
	assert_true(cmd.number == UINT64_MAX);
	assert_int_equal(parse("RETR 99999999999999999999999999", &cmd),
			 POP3_PARSE_OK);
	assert_true(cmd.number == UINT64_MAX);

	static const char *const bad[] = {
	    "RETR", "RETR -1", "RETR +1",   "RETR 1a",	"RETR 1 2",
	    "DELE", "DELE x",  "RETR 0x10", "DELE 1.0",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (parse(bad[i], &cmd) != POP3_PARSE_SYNTAX)
			fail_msg("\"%s\" was accepted", bad[i]);
	}
	assert_int_equal(parse("RETR x", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(cmd.verb, POP3_VERB_RETR);
}

static void
test_pop3_command_list_and_uidl_take_an_optional_number(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("LIST", &cmd), POP3_PARSE_OK);
	assert_false(cmd.has_number);
	assert_int_equal(parse("LIST 3", &cmd), POP3_PARSE_OK);
	assert_true(cmd.has_number);
	assert_int_equal(cmd.number, 3);
	assert_int_equal(parse("UIDL", &cmd), POP3_PARSE_OK);
	assert_false(cmd.has_number);
	assert_int_equal(parse("UIDL 12", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 12);
	assert_int_equal(parse("LIST 1 2", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("UIDL abc", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_top_needs_two_numbers(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("TOP 2 0", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.number, 2);
	assert_int_equal(cmd.lines, 0);
	assert_int_equal(parse("TOP 1 99999999999999999999999", &cmd),
			 POP3_PARSE_OK);
	assert_true(cmd.lines == UINT64_MAX);
	assert_int_equal(parse("TOP", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("TOP 1", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("TOP 1 2 3", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("TOP 1 -2", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_user_takes_one_word(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("USER Bob@Example.TEST", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.ntext, 1);
	assert_true(text_is(&cmd, 0, "Bob@Example.TEST"));
	assert_int_equal(parse("USER", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("USER a b", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("USER a\tb", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_pass_keeps_spaces(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("PASS  two  spaces ", &cmd), POP3_PARSE_OK);
	assert_true(text_is(&cmd, 0, " two  spaces "));
	assert_int_equal(parse("pass s3cr\tt", &cmd), POP3_PARSE_OK);
	assert_true(text_is(&cmd, 0, "s3cr\tt"));
	assert_int_equal(parse("PASS", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("PASS ", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(pop3_parse_command(LIT("PASS a\0b"), &cmd),
			 POP3_PARSE_SYNTAX);
	assert_int_equal(parse("PASS a\rb", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_auth_mechanism_and_initial_response(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("AUTH", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.ntext, 0);
	assert_int_equal(parse("AUTH plain", &cmd), POP3_PARSE_OK);
	assert_int_equal(cmd.ntext, 1);
	assert_true(text_is(&cmd, 0, "plain"));
	assert_int_equal(parse("AUTH PLAIN AHVzZXIAcGFzcw==", &cmd),
			 POP3_PARSE_OK);
	assert_int_equal(cmd.ntext, 2);
	assert_true(text_is(&cmd, 0, "PLAIN"));
	assert_true(text_is(&cmd, 1, "AHVzZXIAcGFzcw=="));
	assert_int_equal(parse("AUTH PLAIN a b", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_control_characters_are_syntax_errors(void **state)
{
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(parse("STAT \x01", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 1\x7f", &cmd), POP3_PARSE_SYNTAX);
	assert_int_equal(pop3_parse_command(LIT("LIST \0"), &cmd),
			 POP3_PARSE_SYNTAX);
	assert_int_equal(parse("AUTH PLAIN\x1b", &cmd), POP3_PARSE_SYNTAX);
}

static void test_pop3_command_arguments_point_into_the_line(void **state)
{
	char line[] = "AUTH PLAIN abc";
	struct pop3_command cmd;
	(void)state;
	assert_int_equal(pop3_parse_command(line, strlen(line), &cmd),
			 POP3_PARSE_OK);
	assert_ptr_equal(cmd.text[0], line + 5);
	assert_ptr_equal(cmd.text[1], line + 11);
}

/* ---- the RETR / TOP stream ---- */

/* An independent, octet-at-a-time reference for the whole message. */
static size_t reference_wire(const char *in, size_t len, char *out)
{
	size_t n = 0;
	bool bol = true;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (bol && c == '.')
			out[n++] = '.';
		if (c == '\n' && (i == 0 || in[i - 1] != '\r'))
			out[n++] = '\r';
		out[n++] = c;
		bol = c == '\n';
	}
	if (!bol) {
		out[n++] = '\r';
		out[n++] = '\n';
	}
	memcpy(out + n, ".\r\n", 3);
	return n + 3;
}

/* Run the converter over `in`, fed in pieces of `step` octets (0: all at
 * once); returns the output length. */
static size_t run_stream(const char *in, size_t len, size_t step, bool top,
			 uint64_t lines, char *out)
{
	struct pop3_stream st;
	pop3_stream_init(&st, top, lines);
	size_t n = 0, i = 0;
	if (step == 0)
		step = len ? len : 1;
	while (i < len && !pop3_stream_done(&st)) {
		size_t take = len - i < step ? len - i : step;
		size_t used = 99999;
		n += pop3_stream_convert(&st, in + i, take, out + n, &used);
		assert_true(used <= take);
		if (used < take)
			assert_true(pop3_stream_done(&st));
		i += used;
	}
	n += pop3_stream_finish(&st, out + n);
	return n;
}

static void expect_wire(const char *in, size_t len, const char *want,
			size_t wantlen)
{
	char *out = malloc(POP3_STREAM_OUT_MAX(len) + POP3_STREAM_FINISH_MAX);
	assert_non_null(out);
	size_t n = run_stream(in, len, 0, false, 0, out);
	if (n != wantlen || memcmp(out, want, n) != 0)
		fail_msg("got %zu octets \"%.*s\", want \"%.*s\"", n, (int)n,
			 out, (int)wantlen, want);
	free(out);
}

static void test_pop3_stream_lf_becomes_crlf(void **state)
{
	(void)state;
	expect_wire(LIT("a\nb\n"), LIT("a\r\nb\r\n.\r\n"));
	expect_wire(LIT("\n\n"), LIT("\r\n\r\n.\r\n"));
}

static void test_pop3_stream_crlf_and_bare_cr_are_kept(void **state)
{
	(void)state;
	expect_wire(LIT("a\r\nb\n"), LIT("a\r\nb\r\n.\r\n"));
	expect_wire(LIT("a\rb\n"), LIT("a\rb\r\n.\r\n"));
}

static void test_pop3_stream_dots_are_stuffed_at_line_start_only(void **state)
{
	(void)state;
	expect_wire(LIT(".\n..x\na.b\n.\n"),
		    LIT("..\r\n...x\r\na.b\r\n..\r\n.\r\n"));
	/* a '.' after a bare CR is inside a line */
	expect_wire(LIT("a\r.b\n"), LIT("a\r.b\r\n.\r\n"));
}

static void test_pop3_stream_unterminated_last_line_gets_crlf(void **state)
{
	(void)state;
	expect_wire(LIT("a\nlast"), LIT("a\r\nlast\r\n.\r\n"));
	expect_wire(LIT("."), LIT("..\r\n.\r\n"));
}

static void test_pop3_stream_empty_message_is_just_the_end(void **state)
{
	(void)state;
	expect_wire("", 0, LIT(".\r\n"));
}

static unsigned long long rng_state = 88172645463325252ull;

static unsigned rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (unsigned)(rng_state >> 11);
}

/* Inputs made of the octets that matter, in every mix. */
static size_t random_message(char *buf, size_t max)
{
	static const char alphabet[] = {'.', '\n', '\r', 'a', ' ', '.', '\n'};
	size_t len = rnd() % max;
	for (size_t i = 0; i < len; i++)
		buf[i] = alphabet[rnd() % sizeof alphabet];
	return len;
}

static void test_pop3_stream_split_invariance(void **state)
{
	char in[200];
	char want[2 * sizeof in + 8], got[2 * sizeof in + 8];
	(void)state;
	for (int round = 0; round < 2000; round++) {
		size_t len = random_message(in, sizeof in);
		size_t wn = reference_wire(in, len, want);
		for (size_t step = 0; step <= 7; step++) {
			size_t gn = run_stream(in, len, step, false, 0, got);
			if (gn != wn || memcmp(got, want, wn) != 0)
				fail_msg("round %d step %zu: outputs differ",
					 round, step);
		}
	}
}

static void test_pop3_stream_large_input_in_one_call(void **state)
{
	size_t len = 1 << 20;
	char *in = malloc(len);
	char *want = malloc(2 * len + 8), *got = malloc(2 * len + 8);
	(void)state;
	assert_non_null(in);
	assert_non_null(want);
	assert_non_null(got);
	for (size_t i = 0; i < len; i++)
		in[i] = (i % 77 == 76) ? '\n' : (i % 77 == 0 ? '.' : 'x');
	size_t wn = reference_wire(in, len, want);
	size_t gn = run_stream(in, len, 65536, false, 0, got);
	assert_int_equal(gn, wn);
	assert_memory_equal(got, want, wn);
	free(in);
	free(want);
	free(got);
}

static void expect_top(const char *in, uint64_t lines, const char *want)
{
	size_t len = strlen(in);
	char out[512];
	assert_true(POP3_STREAM_OUT_MAX(len) + POP3_STREAM_FINISH_MAX <
		    sizeof out);
	for (size_t step = 0; step <= 3; step++) {
		size_t n = run_stream(in, len, step, true, lines, out);
		if (n != strlen(want) || memcmp(out, want, n) != 0)
			fail_msg("TOP %llu step %zu: got \"%.*s\", want \"%s\"",
				 (unsigned long long)lines, step, (int)n, out,
				 want);
	}
}

static void test_pop3_stream_top_gives_headers_and_n_body_lines(void **state)
{
	static const char msg[] = "Subject: x\nFrom: a\n\none\n.two\nthree\n";
	(void)state;
	expect_top(msg, 0, "Subject: x\r\nFrom: a\r\n\r\n.\r\n");
	expect_top(msg, 1, "Subject: x\r\nFrom: a\r\n\r\none\r\n.\r\n");
	expect_top(msg, 2,
		   "Subject: x\r\nFrom: a\r\n\r\none\r\n..two\r\n.\r\n");
	expect_top(msg, 10,
		   "Subject: x\r\nFrom: a\r\n\r\none\r\n..two\r\n"
		   "three\r\n.\r\n");
	expect_top(msg, UINT64_MAX,
		   "Subject: x\r\nFrom: a\r\n\r\none\r\n"
		   "..two\r\nthree\r\n.\r\n");
}

static void test_pop3_stream_top_with_crlf_blank_line(void **state)
{
	(void)state;
	expect_top("A: b\r\n\r\nbody\r\nmore\r\n", 1,
		   "A: b\r\n\r\nbody\r\n.\r\n");
	/* a line holding only spaces is not the end of the headers */
	expect_top("A: b\n \nC: d\n\nbody\n", 0,
		   "A: b\r\n \r\nC: d\r\n\r\n.\r\n");
}

static void test_pop3_stream_top_of_a_message_without_body(void **state)
{
	(void)state;
	expect_top("A: b\nC: d\n", 0, "A: b\r\nC: d\r\n.\r\n");
	expect_top("A: b\nC: d", 5, "A: b\r\nC: d\r\n.\r\n");
	expect_top("A: b\n\nlast line unterminated", 3,
		   "A: b\r\n\r\nlast line unterminated\r\n.\r\n");
}

static void test_pop3_stream_top_stops_consuming_input(void **state)
{
	static const char msg[] = "A: b\n\n1\n2\n3\n";
	struct pop3_stream st;
	char out[64];
	size_t used;
	(void)state;
	pop3_stream_init(&st, true, 1);
	size_t n = pop3_stream_convert(&st, LIT(msg), out, &used);
	assert_true(pop3_stream_done(&st));
	assert_int_equal(used, strlen("A: b\n\n1\n"));
	assert_int_equal(n, strlen("A: b\r\n\r\n1\r\n"));
	/* done: nothing more is taken */
	n = pop3_stream_convert(&st, LIT("more\n"), out, &used);
	assert_int_equal(n, 0);
	assert_int_equal(used, 0);
}

/* ---- sizes ---- */

/* The reference size: the reference wire form, minus stuffing and end. */
static uint64_t reference_size(const char *in, size_t len)
{
	char *out = malloc(2 * len + 8);
	assert_non_null(out);
	size_t n = reference_wire(in, len, out) - 3;
	uint64_t size = 0;
	bool bol = true;
	for (size_t i = 0; i < n; i++) {
		if (bol && out[i] == '.') {
			i++; /* the stuffed dot, then the original one */
		}
		size++;
		bol = out[i] == '\n';
	}
	free(out);
	return size;
}

static uint64_t measure(const char *in, size_t len, size_t step)
{
	struct pop3_measure m = {0};
	if (step == 0)
		step = len ? len : 1;
	for (size_t i = 0; i < len; i += step)
		pop3_measure_feed(&m, in + i, len - i < step ? len - i : step);
	return pop3_measure_finish(&m);
}

static void test_pop3_measure_counts_crlf_octets_without_stuffing(void **state)
{
	(void)state;
	assert_int_equal(measure(LIT("a\nb\n"), 0), 6);
	assert_int_equal(measure(LIT("a\r\nb\n"), 0), 6);
	assert_int_equal(measure(LIT(".\n..\n"), 0), 7);
	assert_int_equal(measure(LIT("abc"), 0), 5);
	assert_int_equal(measure("", 0, 0), 0);
	/* the CR before an LF may come in the previous piece */
	assert_int_equal(measure(LIT("a\r\nb\r\n"), 1), 6);
}

static void test_pop3_measure_matches_the_stream(void **state)
{
	char in[200];
	(void)state;
	for (int round = 0; round < 2000; round++) {
		size_t len = random_message(in, sizeof in);
		uint64_t want = reference_size(in, len);
		for (size_t step = 0; step <= 5; step++) {
			uint64_t got = measure(in, len, step);
			if (got != want)
				fail_msg(
				    "round %d step %zu: size %llu, want %llu",
				    round, step, (unsigned long long)got,
				    (unsigned long long)want);
		}
	}
}

/* ---- sizes from names ---- */

static void test_pop3_size_from_name_takes_w_not_s(void **state)
{
	uint64_t size = 0;
	(void)state;
	assert_true(pop3_size_from_name(
	    LIT("1700000000.M1P2.mx.test,S=1200,W=1234:2,S"), &size));
	assert_int_equal(size, 1234);
	size = 0;
	assert_true(
	    pop3_size_from_name(LIT("1700000000.M1P2.mx,W=7,S=5"), &size));
	assert_int_equal(size, 7);
	/* S= alone is the size with LF line ends: not the POP3 size. */
	assert_false(
	    pop3_size_from_name(LIT("1700000000.M1P2.mx,S=1200:2,"), &size));
	assert_false(pop3_size_from_name(LIT("1700000000.M1P2.mx"), &size));
}

static void test_pop3_size_from_name_ignores_odd_fields(void **state)
{
	uint64_t size = 0;
	(void)state;
	assert_false(pop3_size_from_name(LIT("1.M1.mx,W=:2,"), &size));
	assert_false(pop3_size_from_name(LIT("1.M1.mx,W=12x:2,"), &size));
	assert_false(pop3_size_from_name(LIT("1.M1.mx,w=12"), &size));
	/* after the ':' are the flags, not fields */
	assert_false(pop3_size_from_name(LIT("1.M1.mx:2,W=12"), &size));
	assert_false(pop3_size_from_name(
	    LIT("1.M1.mx,W=99999999999999999999999"), &size));
}

/* ---- UIDs ---- */

static void test_pop3_uid_is_the_name_before_the_info(void **state)
{
	char uid[POP3_UID_MAX + 1];
	(void)state;
	assert_int_equal(
	    pop3_uid_from_name(LIT("1700000000.FabcR0.mx.test:2,S"), uid),
	    strlen("1700000000.FabcR0.mx.test"));
	assert_string_equal(uid, "1700000000.FabcR0.mx.test");
	pop3_uid_from_name(LIT("1700000000.FabcR0.mx.test"), uid);
	assert_string_equal(uid, "1700000000.FabcR0.mx.test");
	/* the same name in new/ and in cur/ has the same UID */
	char uid2[POP3_UID_MAX + 1];
	pop3_uid_from_name(LIT("1.x\\057y.host:2,"), uid2);
	pop3_uid_from_name(LIT("1.x\\057y.host"), uid);
	assert_string_equal(uid, uid2);
}

static void test_pop3_uid_hashes_long_or_odd_names(void **state)
{
	char name[200];
	char a[POP3_UID_MAX + 1], b[POP3_UID_MAX + 1], c[POP3_UID_MAX + 1];
	(void)state;
	memset(name, 'n', sizeof name);
	assert_int_equal(pop3_uid_from_name(name, 71, a), 17);
	assert_int_equal(a[0], 'x');
	pop3_uid_from_name(name, 71, b);
	assert_string_equal(a, b); /* stable */
	name[3] = 'm';
	pop3_uid_from_name(name, 71, c);
	assert_string_not_equal(a, c);
	/* exactly 70 is kept as it is */
	assert_int_equal(pop3_uid_from_name(name, 70, a), 70);
	/* a space or a high octet is not allowed in a UID */
	assert_int_equal(pop3_uid_from_name(LIT("a b:2,"), a), 17);
	assert_int_equal(pop3_uid_from_name(LIT("caf\xc3\xa9"), b), 17);
	for (int i = 0; i < 17; i++)
		assert_true(a[i] > 0x20 && a[i] < 0x7f);
	/* an empty unique part too */
	assert_int_equal(pop3_uid_from_name(LIT(":2,"), c), 17);
}

/* ---- loopback ---- */

static bool loopback4(const char *text)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	assert_int_equal(inet_pton(AF_INET, text, &sin.sin_addr), 1);
	return pop3_client_is_loopback((struct sockaddr *)&sin);
}

static bool loopback6(const char *text)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
	assert_int_equal(inet_pton(AF_INET6, text, &sin6.sin6_addr), 1);
	return pop3_client_is_loopback((struct sockaddr *)&sin6);
}

static void test_pop3_client_is_loopback_only_for_loopback(void **state)
{
	(void)state;
	assert_true(loopback4("127.0.0.1"));
	assert_true(loopback4("127.3.2.1"));
	assert_false(loopback4("10.0.0.1"));
	assert_false(loopback4("128.0.0.1"));
	assert_true(loopback6("::1"));
	assert_true(loopback6("::ffff:127.0.0.2"));
	assert_false(loopback6("::ffff:192.0.2.1"));
	assert_false(loopback6("2001:db8::1"));
	assert_false(loopback6("::2"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pop3_command_keywords_are_case_insensitive),
	    cmocka_unit_test(test_pop3_command_unknown_keywords),
	    cmocka_unit_test(
		test_pop3_command_without_arguments_refuses_extra_ones),
	    cmocka_unit_test(test_pop3_command_trailing_spaces_are_ignored),
	    cmocka_unit_test(test_pop3_command_message_numbers),
	    cmocka_unit_test(
		test_pop3_command_list_and_uidl_take_an_optional_number),
	    cmocka_unit_test(test_pop3_command_top_needs_two_numbers),
	    cmocka_unit_test(test_pop3_command_user_takes_one_word),
	    cmocka_unit_test(test_pop3_command_pass_keeps_spaces),
	    cmocka_unit_test(
		test_pop3_command_auth_mechanism_and_initial_response),
	    cmocka_unit_test(
		test_pop3_command_control_characters_are_syntax_errors),
	    cmocka_unit_test(test_pop3_command_arguments_point_into_the_line),
	    cmocka_unit_test(test_pop3_stream_lf_becomes_crlf),
	    cmocka_unit_test(test_pop3_stream_crlf_and_bare_cr_are_kept),
	    cmocka_unit_test(
		test_pop3_stream_dots_are_stuffed_at_line_start_only),
	    cmocka_unit_test(test_pop3_stream_unterminated_last_line_gets_crlf),
	    cmocka_unit_test(test_pop3_stream_empty_message_is_just_the_end),
	    cmocka_unit_test(test_pop3_stream_split_invariance),
	    cmocka_unit_test(test_pop3_stream_large_input_in_one_call),
	    cmocka_unit_test(
		test_pop3_stream_top_gives_headers_and_n_body_lines),
	    cmocka_unit_test(test_pop3_stream_top_with_crlf_blank_line),
	    cmocka_unit_test(test_pop3_stream_top_of_a_message_without_body),
	    cmocka_unit_test(test_pop3_stream_top_stops_consuming_input),
	    cmocka_unit_test(
		test_pop3_measure_counts_crlf_octets_without_stuffing),
	    cmocka_unit_test(test_pop3_measure_matches_the_stream),
	    cmocka_unit_test(test_pop3_uid_is_the_name_before_the_info),
	    cmocka_unit_test(test_pop3_uid_hashes_long_or_odd_names),
	    cmocka_unit_test(test_pop3_size_from_name_takes_w_not_s),
	    cmocka_unit_test(test_pop3_size_from_name_ignores_odd_fields),
	    cmocka_unit_test(test_pop3_client_is_loopback_only_for_loopback),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
