/*
 * smtp_proto: command lines, paths, ESMTP parameters, xtext and the
 * DATA/BDAT stream decoder, driven with bytes only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four above first */
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/smtp_proto.h"
#include "facteur/text.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* Command lines */

static void test_command_verbs_are_case_insensitive(void **state)
{
	static const struct {
		const char *line;
		enum smtp_verb verb;
	} cases[] = {
	    {"HELO x", SMTP_VERB_HELO},	      {"ehlo x", SMTP_VERB_EHLO},
	    {"MaIl FROM:<>", SMTP_VERB_MAIL}, {"rcpt TO:<a@b>", SMTP_VERB_RCPT},
	    {"DATA", SMTP_VERB_DATA},	      {"bdat 10", SMTP_VERB_BDAT},
	    {"RSET", SMTP_VERB_RSET},	      {"noop", SMTP_VERB_NOOP},
	    {"Quit", SMTP_VERB_QUIT},	      {"HELP me", SMTP_VERB_HELP},
	    {"vrfy bob", SMTP_VERB_VRFY},     {"EXPN list", SMTP_VERB_EXPN},
	    {"StartTLS", SMTP_VERB_STARTTLS}, {"auth PLAIN", SMTP_VERB_AUTH},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct smtp_command cmd;
		smtp_parse_command(cases[i].line, strlen(cases[i].line), &cmd);
		if (cmd.verb != cases[i].verb)
			fail_msg("\"%s\": verb %d, want %d", cases[i].line,
				 cmd.verb, cases[i].verb);
	}
}

static void test_command_unknown_verbs(void **state)
{
	static const char *const lines[] = {
	    "",
	    " MAIL FROM:<a@b>",
	    "MAILFROM:<a@b>",
	    "MAIL\tFROM:<a@b>",
	    "HELLO x",
	    "STARTTLSX",
	    "DAT",
	    "DATA\r",
	    "X",
	    "\xc3\xa9HLO",
	    "EHLO\0",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		struct smtp_command cmd;
		size_t len = strlen(lines[i]);
		if (i == sizeof lines / sizeof lines[0] - 1)
			len = 5; /* with its NUL */
		smtp_parse_command(lines[i], len, &cmd);
		if (cmd.verb != SMTP_VERB_UNKNOWN)
			fail_msg("\"%s\" gave verb %d", lines[i], cmd.verb);
	}
}

static void test_command_arg_skips_spaces_and_trims_trailing(void **state)
{
	struct smtp_command cmd;
	const char *line = "MAIL   FROM:<a@b> SIZE=10 \t \t";

	(void)state;
	smtp_parse_command(line, strlen(line), &cmd);
	assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
	assert_ptr_equal(cmd.arg, line + 7);
	assert_int_equal(cmd.arglen, strlen("FROM:<a@b> SIZE=10"));
	assert_memory_equal(cmd.arg, "FROM:<a@b> SIZE=10", cmd.arglen);
}

static void test_command_without_argument_has_empty_arg(void **state)
{
	struct smtp_command cmd;

	(void)state;
	smtp_parse_command(LIT("DATA"), &cmd);
	assert_int_equal(cmd.verb, SMTP_VERB_DATA);
	assert_int_equal(cmd.arglen, 0);
	smtp_parse_command(LIT("QUIT    "), &cmd);
	assert_int_equal(cmd.verb, SMTP_VERB_QUIT);
	assert_int_equal(cmd.arglen, 0);
	smtp_parse_command(LIT("NOOP \t"), &cmd);
	assert_int_equal(cmd.verb, SMTP_VERB_NOOP);
	assert_int_equal(cmd.arglen, 0);
}

static void test_command_arg_keeps_inner_spacing(void **state)
{
	struct smtp_command cmd;

	(void)state;
	smtp_parse_command(LIT("HELO  my  host "), &cmd);
	assert_int_equal(cmd.verb, SMTP_VERB_HELO);
	assert_int_equal(cmd.arglen, 8);
	assert_memory_equal(cmd.arg, "my  host", 8);
}

static void test_verb_name_is_upper_case(void **state)
{
	(void)state;
	assert_string_equal(smtp_verb_name(SMTP_VERB_MAIL), "MAIL");
	assert_string_equal(smtp_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_verb_name(SMTP_VERB_AUTH), "AUTH");
	assert_string_equal(smtp_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
	assert_string_equal(smtp_verb_name((enum smtp_verb)999), "UNKNOWN");
}

/* Paths */

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* "<" local "@" domain ">" in a fresh buffer. */
static char *make_path(const char *local, const char *domain)
{
	size_t n = strlen(local) + strlen(domain) + 4;
	char *s = malloc(n);
	assert_non_null(s);
	snprintf(s, n, "<%s@%s>", local, domain);
	return s;
}

static enum smtp_parse_result parse_path_str(const char *text,
					     struct smtp_path *p)
{
	size_t used;
	return smtp_parse_path(text, strlen(text), false, false, p, &used);
}

static void test_path_valid_forms(void **state)
{
	static const struct {
		const char *text;
		const char *address;
		size_t local_len;
		bool utf8;
	} cases[] = {
	    {"<a@b.c>", "a@b.c", 1, false},
	    {"<First.Last+tag@Example.COM>", "First.Last+tag@Example.COM", 14,
	     false},
	    {"<!#$%&'*+-/=?^_`{|}~@x.org>", "!#$%&'*+-/=?^_`{|}~@x.org", 19,
	     false},
	    {"<\"john doe\"@example.com>", "\"john doe\"@example.com", 10,
	     false},
	    {"<\"a\\\"b\"@x.org>", "\"a\\\"b\"@x.org", 6, false},
	    {"<\"a>b@c\"@x.org>", "\"a>b@c\"@x.org", 7, false},
	    {"<\"\"@x.org>", "\"\"@x.org", 2, false},
	    {"<j\xc3\xa9r\xc3\xb4me@ex\xc3\xa4mple.fr>",
	     "j\xc3\xa9r\xc3\xb4me@ex\xc3\xa4mple.fr", 8, true},
	    {"<\"caf\xc3\xa9 bar\"@x.org>", "\"caf\xc3\xa9 bar\"@x.org", 11,
	     true},
	    {"<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac"
	     "\xe5\x8f\xb8>",
	     "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac"
	     "\xe5\x8f\xb8",
	     6, true},
	    {"<u@\xf0\x9f\x93\xa7.example>", "u@\xf0\x9f\x93\xa7.example", 1,
	     true},
	    {"<user@[192.0.2.1]>", "user@[192.0.2.1]", 4, false},
	    {"<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", 4, false},
	    {"<user@[ipv6:::ffff:192.0.2.1]>", "user@[ipv6:::ffff:192.0.2.1]",
	     4, false},
	    {"<@a.example,@b.example:user@c.example>", "user@c.example", 4,
	     false},
	    {"<@relay.example:x@y.z>", "x@y.z", 1, false},
	    {"<a@localhost>", "a@localhost", 1, false},
	    {"<a@1-2.3com>", "a@1-2.3com", 1, false},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct smtp_path p;
		size_t used;
		enum smtp_parse_result r;

		r = smtp_parse_path(cases[i].text, strlen(cases[i].text), false,
				    false, &p, &used);
		if (r != SMTP_PARSE_OK)
			fail_msg("%s: result %d", cases[i].text, r);
		assert_int_equal(used, strlen(cases[i].text));
		assert_string_equal(p.address, cases[i].address);
		if (p.local_len != cases[i].local_len)
			fail_msg("%s: local_len %zu", cases[i].text,
				 p.local_len);
		assert_int_equal(p.utf8, cases[i].utf8);
		assert_false(p.is_null);
		assert_false(p.is_postmaster);
	}
}

static void test_path_invalid_forms(void **state)
{
	static const char *const cases[] = {
	    "a@b.c",  /* no brackets */
	    "<a@b.c", /* no closing bracket */
	    "a@b.c>", /* no opening bracket */
	    "",
	    "<",
	    "<a..b@c.d>",
	    "<.a@c.d>",
	    "<a.@c.d>",
	    "<a@b..c>",
	    "<a@.b.c>",
	    "<a@-b.c>",
	    "<a@b-.c>",
	    "<a@b.c.>",
	    "<a@>",
	    "<@b.c>",
	    "<a b@c.d>",
	    "<a@b c>",
	    "<a@b_c.d>",
	    "<a@b.c@d>",
	    "<a@@b.c>",
	    "<a\x01@b.c>",
	    "<a@b\x7f.c>",
	    "<a\t@b.c>",
	    "<\"unterminated@c.d>",
	    "<\"a\x7f\"@c.d>",
	    "<\"a\x01\"@c.d>",
	    "<\"a\\\x01\"@c.d>",
	    "<\"a\"b@c.d>",
	    "<a@[1.2.3.256]>",
	    "<a@[1.2.3]>",
	    "<a@[01.2.3.4]>",
	    "<a@[IPv6:zz::1]>",
	    "<a@[IPv6:1.2.3.4]>",
	    "<a@[foo:bar]>",
	    "<a@[1.2.3.4>",
	    "<a@[]>",
	    "<a@[IPv6:]>",
	    "<a@1.2.3.4]>",
	    "<a\xc3\x28@b.c>",	       /* bad UTF-8 continuation */
	    "<a\xc0\xaf@b.c>",	       /* overlong */
	    "<a\xed\xa0\x80@b.c>",     /* surrogate */
	    "<a\xf4\x90\x80\x80@b.c>", /* above U+10FFFF */
	    "<a\xc3@b.c>",	       /* truncated */
	    "<a@b\xff.c>",
	    "<user>",
	    "<postmaster>", /* not allowed here */
	    "<@a.b>",
	    "<@a.b:>",
	    "<@a.b,b.c:x@y.z>",
	    "<@a_b:x@y.z>",
	    "<@a.b;x@y.z>",
	    "<@:x@y.z>",
	    "<>", /* null not allowed here */
	    "< a@b.c>",
	    "<a@b.c >",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct smtp_path p;
		if (parse_path_str(cases[i], &p) != SMTP_PARSE_BAD_ADDRESS)
			fail_msg("accepted \"%s\"", cases[i]);
	}
}

static void test_path_nul_octet_is_bad_address(void **state)
{
	struct smtp_path p;
	size_t used;

	(void)state;
	assert_int_equal(
	    smtp_parse_path(LIT("<a\0b@c.d>"), false, false, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(
	    smtp_parse_path(LIT("<ab@c\0.d>"), false, false, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(
	    smtp_parse_path(LIT("<\"a\0\"@c.d>"), false, false, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
}

static void test_path_length_limits(void **state)
{
	char *local64 = repeat('l', 64), *local65 = repeat('l', 65);
	char *label63 = repeat('d', 63), *label64 = repeat('d', 64);
	char domain191[192], domain192[193], domain255[256], domain256[257];
	char *s;
	struct smtp_path p;

	(void)state;
	snprintf(domain191, sizeof domain191, "%s.%s.%s", label63, label63,
		 label63);
	snprintf(domain192, sizeof domain192, "%s.%s.%.62s.x", label63, label63,
		 label63);
	snprintf(domain255, sizeof domain255, "%s.%s.%s.%s", label63, label63,
		 label63, label63);
	snprintf(domain256, sizeof domain256, "%s.%s.%s.%.62s.x", label63,
		 label63, label63, label63);
	assert_int_equal(strlen(domain191), 191);
	assert_int_equal(strlen(domain192), 192);
	assert_int_equal(strlen(domain255), 255);
	assert_int_equal(strlen(domain256), 256);
	assert_true(smtp_domain_valid(domain255, 255));
	assert_false(smtp_domain_valid(domain256, 256));
	assert_true(smtp_domain_valid(label63, 63));
	assert_false(smtp_domain_valid(label64, 64));

	s = make_path(local64, "b.c");
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_OK);
	assert_int_equal(p.local_len, 64);
	free(s);
	s = make_path(local65, "b.c");
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_BAD_ADDRESS);
	free(s);

	s = make_path("a", label63);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_OK);
	free(s);
	s = make_path("a", label64);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_BAD_ADDRESS);
	free(s);

	/* 64 + 1 + 191 = 256 octets: the longest address */
	s = make_path(local64, domain191);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_OK);
	assert_int_equal(strlen(p.address), 256);
	assert_string_equal(p.address + 65, domain191);
	free(s);
	/* 257 octets, each part within its own limit */
	s = make_path(local64, domain192);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_BAD_ADDRESS);
	free(s);
	/* a valid 255-octet domain still makes a 257-octet address */
	s = make_path("a", domain255);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_BAD_ADDRESS);
	free(s);
	s = make_path("a", domain256);
	assert_int_equal(parse_path_str(s, &p), SMTP_PARSE_BAD_ADDRESS);
	free(s);

	free(local64);
	free(local65);
	free(label63);
	free(label64);
}

static void test_path_null_only_when_allowed(void **state)
{
	struct smtp_path p;
	size_t used;

	(void)state;
	assert_int_equal(
	    smtp_parse_path(LIT("<> SIZE=1"), true, false, &p, &used),
	    SMTP_PARSE_OK);
	assert_true(p.is_null);
	assert_int_equal(used, 2);
	assert_string_equal(p.address, "");
	assert_int_equal(smtp_parse_path(LIT("<>"), false, true, &p, &used),
			 SMTP_PARSE_BAD_ADDRESS);
}

static void test_path_postmaster_only_when_allowed(void **state)
{
	struct smtp_path p;
	size_t used;

	(void)state;
	assert_int_equal(
	    smtp_parse_path(LIT("<PostMaster>"), false, true, &p, &used),
	    SMTP_PARSE_OK);
	assert_true(p.is_postmaster);
	assert_string_equal(p.address, "PostMaster");
	assert_int_equal(p.local_len, 10);
	assert_int_equal(used, 12);
	assert_int_equal(
	    smtp_parse_path(LIT("<postmaster>"), true, false, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(
	    smtp_parse_path(LIT("<postmasters>"), false, true, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(
	    smtp_parse_path(LIT("<\"postmaster\">"), false, true, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(
	    smtp_parse_path(LIT("<@a.b:postmaster>"), false, true, &p, &used),
	    SMTP_PARSE_BAD_ADDRESS);
	/* postmaster at a domain is an ordinary address */
	assert_int_equal(
	    smtp_parse_path(LIT("<postmaster@x.org>"), false, true, &p, &used),
	    SMTP_PARSE_OK);
	assert_false(p.is_postmaster);
}

static void test_path_reports_octets_consumed(void **state)
{
	struct smtp_path p;
	size_t used;

	(void)state;
	assert_int_equal(
	    smtp_parse_path(LIT("<a@b.c> SIZE=10"), false, false, &p, &used),
	    SMTP_PARSE_OK);
	assert_int_equal(used, 7);
	assert_int_equal(
	    smtp_parse_path(LIT("<\"x>\"@b.c>>"), false, false, &p, &used),
	    SMTP_PARSE_OK);
	assert_int_equal(used, 10);
}

static void test_domain_valid_forms(void **state)
{
	static const char *const good[] = {
	    "example.com",
	    "a",
	    "xn--bcher-kva.example",
	    "b\xc3\xbc"
	    "cher.example",
	    "a-b.c-d",
	    "123.example",
	    "[192.0.2.1]",
	    "[IPv6:::1]",
	    "[IPV6:2001:db8::ff00:42:8329]",
	};
	static const char *const bad[] = {
	    "",
	    ".",
	    "example.com.",
	    ".example.com",
	    "-a.com",
	    "a-.com",
	    "a_b.com",
	    "a..b",
	    "a b",
	    "[1.2.3.4",
	    "[]",
	    "[1.2.3.4.5]",
	    "[IPv6:::1%eth0]",
	    "[x]",
	    "1.2.3.4]",
	    "exa\xffmple.com",
	    "a.com\n",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (!smtp_domain_valid(good[i], strlen(good[i])))
			fail_msg("refused \"%s\"", good[i]);
	}
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (smtp_domain_valid(bad[i], strlen(bad[i])))
			fail_msg("accepted \"%s\"", bad[i]);
	}
}

/* MAIL */

static enum smtp_parse_result mail(const char *arg, struct smtp_mail *m)
{
	return smtp_parse_mail(arg, strlen(arg), m);
}

static enum smtp_parse_result rcpt(const char *arg, struct smtp_rcpt *r)
{
	return smtp_parse_rcpt(arg, strlen(arg), r);
}

/* Each of `params` after an address, in MAIL FROM or (rcpt_to) in RCPT
 * TO, gives `want`. */
static void check_params(bool rcpt_to, const char *const *params, size_t count,
			 enum smtp_parse_result want)
{
	char arg[200];

	for (size_t i = 0; i < count; i++) {
		struct smtp_mail m;
		struct smtp_rcpt r;
		enum smtp_parse_result res;

		snprintf(arg, sizeof arg, "%s %s",
			 rcpt_to ? "TO:<a@b.c>" : "FROM:<a@b.c>", params[i]);
		res = rcpt_to ? rcpt(arg, &r) : mail(arg, &m);
		if (res != want)
			fail_msg("\"%s\": result %d, want %d", arg, res, want);
	}
}

static void test_mail_plain_and_null_sender(void **state)
{
	struct smtp_mail m;

	(void)state;
	assert_int_equal(mail("FROM:<a@b.c>", &m), SMTP_PARSE_OK);
	assert_string_equal(m.from.address, "a@b.c");
	assert_false(m.size_given);
	assert_int_equal(m.body, SMTP_BODY_UNSPECIFIED);
	assert_int_equal(m.ret, SMTP_RET_UNSPECIFIED);
	assert_string_equal(m.envid, "");
	assert_false(m.smtputf8);
	assert_false(m.auth_given);

	assert_int_equal(mail("from:<>", &m), SMTP_PARSE_OK);
	assert_true(m.from.is_null);
	assert_int_equal(mail("From:   <a@b.c>", &m), SMTP_PARSE_OK);
	assert_string_equal(m.from.address, "a@b.c");
}

static void test_mail_prefix_errors_are_syntax(void **state)
{
	static const char *const cases[] = {
	    "",
	    "FROM",
	    "FROM<a@b.c>",
	    "FROM <a@b.c>",
	    "FROM :<a@b.c>",
	    "TO:<a@b.c>",
	    "<a@b.c>",
	    "FRM:<a@b.c>",
	};
	struct smtp_mail m;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (mail(cases[i], &m) != SMTP_PARSE_SYNTAX)
			fail_msg("\"%s\" not a syntax error", cases[i]);
	}
}

static void test_mail_bad_paths_are_bad_address(void **state)
{
	static const char *const cases[] = {
	    "FROM:",	      "FROM:a@b.c",	      "FROM:<a@b.c",
	    "FROM:<a@b.c>x",  "FROM:<a@b.c>\tSIZE=1", "FROM:<a@b.c>>",
	    "FROM:<a b@c.d>", "FROM:<user>",	      "FROM:<postmaster>",
	    "FROM:<a@b..c>",  "FROM:<a@b.c>,",	      "FROM: a@b.c",
	    "FROM:<<a@b.c>>",
	};
	struct smtp_mail m;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (mail(cases[i], &m) != SMTP_PARSE_BAD_ADDRESS)
			fail_msg("\"%s\" not a bad address", cases[i]);
	}
}

static void test_mail_all_parameters(void **state)
{
	struct smtp_mail m;

	(void)state;
	assert_int_equal(
	    mail("FROM:<a@b.c> SIZE=12345 BODY=8BITMIME SMTPUTF8 RET=HDRS "
		 "ENVID=QQ+2Bx+3Dy AUTH=<>",
		 &m),
	    SMTP_PARSE_OK);
	assert_true(m.size_given);
	assert_int_equal(m.size, 12345);
	assert_int_equal(m.body, SMTP_BODY_8BITMIME);
	assert_true(m.smtputf8);
	assert_int_equal(m.ret, SMTP_RET_HDRS);
	assert_string_equal(m.envid, "QQ+x=y");
	assert_true(m.auth_given);

	assert_int_equal(mail("FROM:<> size=0 body=7bit ret=full "
			      "auth=user+40example.com",
			      &m),
			 SMTP_PARSE_OK);
	assert_true(m.size_given);
	assert_int_equal(m.size, 0);
	assert_int_equal(m.body, SMTP_BODY_7BIT);
	assert_int_equal(m.ret, SMTP_RET_FULL);
	assert_true(m.auth_given);

	/* extra spaces between parameters and at the end are tolerated */
	assert_int_equal(mail("FROM:<a@b.c>   SIZE=1    SmtpUtf8  ", &m),
			 SMTP_PARSE_OK);
	assert_int_equal(m.size, 1);
	assert_true(m.smtputf8);

	/* REQUIRETLS (RFC 8689): a flag, no value */
	assert_int_equal(mail("FROM:<a@b.c> SIZE=1 RequireTLS", &m),
			 SMTP_PARSE_OK);
	assert_true(m.requiretls);
	assert_int_equal(mail("FROM:<a@b.c> SIZE=1", &m), SMTP_PARSE_OK);
	assert_false(m.requiretls);

	assert_int_equal(mail("FROM:<a@b.c> SIZE=18446744073709551615", &m),
			 SMTP_PARSE_OK);
	assert_true(m.size == UINT64_MAX);
}

static void test_mail_envid_length_limit(void **state)
{
	char arg[400];
	char *v100 = repeat('e', 100), *v101 = repeat('e', 101);
	struct smtp_mail m;

	(void)state;
	snprintf(arg, sizeof arg, "FROM:<a@b.c> ENVID=%s", v100);
	assert_int_equal(mail(arg, &m), SMTP_PARSE_OK);
	assert_string_equal(m.envid, v100);
	snprintf(arg, sizeof arg, "FROM:<a@b.c> ENVID=%s", v101);
	assert_int_equal(mail(arg, &m), SMTP_PARSE_BAD_PARAM);
	/* 100 decoded octets sent as 300 xtext octets */
	{
		char xt[301];
		size_t i;
		for (i = 0; i < 100; i++)
			memcpy(xt + 3 * i, "+2B", 3);
		xt[300] = '\0';
		snprintf(arg, sizeof arg, "FROM:<a@b.c> ENVID=%s", xt);
		assert_int_equal(mail(arg, &m), SMTP_PARSE_OK);
		assert_int_equal(strlen(m.envid), 100);
		assert_int_equal(m.envid[99], '+');
	}
	free(v100);
	free(v101);
}

static void test_mail_bad_parameter_values(void **state)
{
	static const char *const cases[] = {
	    "SIZE",
	    "SIZE=",
	    "SIZE=abc",
	    "SIZE=-1",
	    "SIZE=1k",
	    "SIZE=18446744073709551616",
	    "SIZE=99999999999999999999",
	    "BODY",
	    "BODY=",
	    "BODY=BINARYMIME",
	    "BODY=8BIT",
	    "SMTPUTF8=yes",
	    "SMTPUTF8=",
	    "RET",
	    "RET=ALL",
	    "RET=",
	    "ENVID",
	    "ENVID=",
	    "ENVID=a=b",
	    "ENVID=+2b",
	    "ENVID=+2",
	    "ENVID=+",
	    "ENVID=+0A",
	    "ENVID=+00",
	    "ENVID=+C3+A9",
	    "ENVID=\xc3\xa9",
	    "AUTH",
	    "AUTH=",
	    "AUTH=a+zz",
	    "AUTH=a+2",
	    "SIZE=1 SIZE=1",
	    "BODY=7BIT body=8bitmime",
	    "SMTPUTF8 smtputf8",
	    "RET=FULL RET=HDRS",
	    "ENVID=a ENVID=b",
	    "AUTH=<> AUTH=<>",
	    "REQUIRETLS=yes",
	    "REQUIRETLS requiretls",
	};
	(void)state;
	check_params(false, cases, sizeof cases / sizeof cases[0],
		     SMTP_PARSE_BAD_PARAM);
}

static void test_mail_unknown_parameters(void **state)
{
	static const char *const cases[] = {
	    "FOO=bar", "XFOO",	"NOTIFY=NEVER", "ORCPT=rfc822;a@b",
	    "SIZE2=1", "X-Y=z", "SIZE=1 FOO",
	};
	(void)state;
	check_params(false, cases, sizeof cases / sizeof cases[0],
		     SMTP_PARSE_UNKNOWN_PARAM);
}

static void test_mail_malformed_keyword_is_syntax(void **state)
{
	struct smtp_mail m;

	(void)state;
	assert_int_equal(mail("FROM:<a@b.c> =1", &m), SMTP_PARSE_SYNTAX);
	assert_int_equal(mail("FROM:<a@b.c> -X=1", &m), SMTP_PARSE_SYNTAX);
	assert_int_equal(mail("FROM:<a@b.c> SI_ZE=1", &m), SMTP_PARSE_SYNTAX);
	assert_int_equal(mail("FROM:<a@b.c> SIZE=1\t", &m),
			 SMTP_PARSE_BAD_PARAM);
}

/* RCPT */

static void test_rcpt_addresses(void **state)
{
	struct smtp_rcpt r;

	(void)state;
	assert_int_equal(rcpt("TO:<bob@example.org>", &r), SMTP_PARSE_OK);
	assert_string_equal(r.to.address, "bob@example.org");
	assert_int_equal(r.to.local_len, 3);
	assert_int_equal(r.notify, 0);
	assert_string_equal(r.orcpt, "");
	assert_int_equal(rcpt("to: <postmaster>", &r), SMTP_PARSE_OK);
	assert_true(r.to.is_postmaster);
	assert_int_equal(rcpt("To:<POSTMASTER>", &r), SMTP_PARSE_OK);
	assert_true(r.to.is_postmaster);
	assert_int_equal(rcpt("TO:<@hop.example:bob@example.org>", &r),
			 SMTP_PARSE_OK);
	assert_string_equal(r.to.address, "bob@example.org");

	assert_int_equal(rcpt("TO:<>", &r), SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(rcpt("TO:<bob>", &r), SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(rcpt("TO:bob@example.org", &r),
			 SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(rcpt("TO:<bob@example.org>junk", &r),
			 SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(rcpt("TO:", &r), SMTP_PARSE_BAD_ADDRESS);
	assert_int_equal(rcpt("<bob@example.org>", &r), SMTP_PARSE_SYNTAX);
	assert_int_equal(rcpt("FROM:<bob@example.org>", &r), SMTP_PARSE_SYNTAX);
	assert_int_equal(rcpt("TO :<bob@example.org>", &r), SMTP_PARSE_SYNTAX);
}

static void test_rcpt_notify_values(void **state)
{
	static const struct {
		const char *value;
		unsigned bits;
	} good[] = {
	    {"NEVER", SMTP_NOTIFY_NEVER},
	    {"never", SMTP_NOTIFY_NEVER},
	    {"SUCCESS", SMTP_NOTIFY_SUCCESS},
	    {"FAILURE,DELAY", SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY},
	    {"success,Failure,DELAY",
	     SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY},
	};
	static const char *const bad[] = {
	    "",
	    "NEVER,SUCCESS",
	    "DELAY,NEVER",
	    "SUCCESS,,DELAY",
	    "SUCCESS,",
	    ",SUCCESS",
	    "SUCCESS,SUCCESS",
	    "FOO",
	    "SUCCESS FAILURE",
	};
	struct smtp_rcpt r;
	char arg[200];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(arg, sizeof arg, "TO:<a@b.c> NOTIFY=%s",
			 good[i].value);
		if (rcpt(arg, &r) != SMTP_PARSE_OK)
			fail_msg("\"%s\" refused", arg);
		assert_int_equal(r.notify, good[i].bits);
	}
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		enum smtp_parse_result res;
		snprintf(arg, sizeof arg, "TO:<a@b.c> NOTIFY=%s", bad[i]);
		res = rcpt(arg, &r);
		/* "SUCCESS FAILURE" makes FAILURE an unknown keyword */
		if (res != SMTP_PARSE_BAD_PARAM &&
		    !(res == SMTP_PARSE_UNKNOWN_PARAM &&
		      strcmp(bad[i], "SUCCESS FAILURE") == 0))
			fail_msg("\"%s\": result %d", arg, res);
	}
	assert_int_equal(rcpt("TO:<a@b.c> NOTIFY", &r), SMTP_PARSE_BAD_PARAM);
	assert_int_equal(rcpt("TO:<a@b.c> NOTIFY=NEVER NOTIFY=NEVER", &r),
			 SMTP_PARSE_BAD_PARAM);
}

static void test_rcpt_orcpt_is_stored_as_sent(void **state)
{
	struct smtp_rcpt r;

	(void)state;
	assert_int_equal(rcpt("TO:<a@b.c> ORCPT=rfc822;Bob+2Bx@example.org "
			      "NOTIFY=DELAY",
			      &r),
			 SMTP_PARSE_OK);
	assert_string_equal(r.orcpt, "rfc822;Bob+2Bx@example.org");
	assert_int_equal(r.notify, SMTP_NOTIFY_DELAY);
	assert_int_equal(rcpt("TO:<postmaster> orcpt=UTF-8;a\\x{E9}@b.c", &r),
			 SMTP_PARSE_OK);
	assert_string_equal(r.orcpt, "UTF-8;a\\x{E9}@b.c");
}

static void test_rcpt_orcpt_invalid_values(void **state)
{
	static const char *const bad[] = {
	    "ORCPT",
	    "ORCPT=",
	    "ORCPT=rfc822",
	    "ORCPT=;a@b.c",
	    "ORCPT=rfc822;",
	    "ORCPT=rfc822;a=b",
	    "ORCPT=rfc822;+4",
	    "ORCPT=rfc822;+4g",
	    "ORCPT=rf(c;a@b",
	    "ORCPT=rfc822;\xc3\xa9",
	    "ORCPT=rfc822;a@b ORCPT=rfc822;a@b",
	};
	(void)state;
	check_params(true, bad, sizeof bad / sizeof bad[0],
		     SMTP_PARSE_BAD_PARAM);
}

static void test_rcpt_orcpt_length_limit(void **state)
{
	char arg[700];
	char *addr;
	struct smtp_rcpt r;

	(void)state;
	/* "rfc822;" is 7 octets: 493 more make exactly 500 */
	addr = repeat('x', 493);
	snprintf(arg, sizeof arg, "TO:<a@b.c> ORCPT=rfc822;%s", addr);
	assert_int_equal(rcpt(arg, &r), SMTP_PARSE_OK);
	assert_int_equal(strlen(r.orcpt), 500);
	free(addr);
	addr = repeat('x', 494);
	snprintf(arg, sizeof arg, "TO:<a@b.c> ORCPT=rfc822;%s", addr);
	assert_int_equal(rcpt(arg, &r), SMTP_PARSE_BAD_PARAM);
	free(addr);
}

static void test_rcpt_mail_parameters_are_unknown(void **state)
{
	struct smtp_rcpt r;

	(void)state;
	assert_int_equal(rcpt("TO:<a@b.c> SIZE=10", &r),
			 SMTP_PARSE_UNKNOWN_PARAM);
	assert_int_equal(rcpt("TO:<a@b.c> BODY=8BITMIME", &r),
			 SMTP_PARSE_UNKNOWN_PARAM);
	assert_int_equal(rcpt("TO:<a@b.c> FOO", &r), SMTP_PARSE_UNKNOWN_PARAM);
}

static enum smtp_parse_result rcpt_param(const char *param,
					 struct smtp_rcpt *r)
{
	return smtp_parse_rcpt_param(param, strlen(param), r);
}

static void test_rcpt_param_alone(void **state)
{
	struct smtp_rcpt r;

	(void)state;
	memset(&r, 0, sizeof r);
	assert_int_equal(rcpt_param("notify=SUCCESS,DELAY", &r), SMTP_PARSE_OK);
	assert_int_equal(r.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY);
	assert_int_equal(rcpt_param("ORCPT=rfc822;a@b.example", &r),
			 SMTP_PARSE_OK);
	assert_string_equal(r.orcpt, "rfc822;a@b.example");
	/* a repeat of what r holds, refused, r unchanged */
	assert_int_equal(rcpt_param("NOTIFY=NEVER", &r), SMTP_PARSE_BAD_PARAM);
	assert_int_equal(r.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY);
	assert_int_equal(rcpt_param("ORCPT=rfc822;c@d.example", &r),
			 SMTP_PARSE_BAD_PARAM);
	assert_string_equal(r.orcpt, "rfc822;a@b.example");
	/* bad values and shapes leave r as it was */
	memset(&r, 0, sizeof r);
	assert_int_equal(rcpt_param("NOTIFY=NEVER,SUCCESS", &r),
			 SMTP_PARSE_BAD_PARAM);
	assert_int_equal(r.notify, 0);
	assert_int_equal(rcpt_param("ORCPT=nosemicolon", &r),
			 SMTP_PARSE_BAD_PARAM);
	assert_int_equal(rcpt_param("SIZE=10", &r), SMTP_PARSE_UNKNOWN_PARAM);
	assert_int_equal(rcpt_param("NOTIFY=SUCCESS ORCPT=rfc822;a@b", &r),
			 SMTP_PARSE_SYNTAX);
	assert_int_equal(rcpt_param("", &r), SMTP_PARSE_SYNTAX);
	assert_int_equal(rcpt_param("=SUCCESS", &r), SMTP_PARSE_SYNTAX);
	assert_int_equal(r.notify, 0);
	assert_string_equal(r.orcpt, "");
}

/* BDAT */

static void test_bdat_arguments(void **state)
{
	static const struct {
		const char *arg;
		uint64_t size;
		bool last;
	} good[] = {
	    {"100", 100, false},
	    {"100 LAST", 100, true},
	    {"0 last", 0, true},
	    {"  7   LaSt  ", 7, true},
	    {"0", 0, false},
	    {"18446744073709551615", UINT64_MAX, false},
	    {"00012 LAST", 12, true},
	};
	static const char *const bad[] = {
	    "",		  " ",
	    "LAST",	  "100LAST",
	    "100 LAST x", "100 LASTX",
	    "-1",	  "1.5",
	    "+5",	  "18446744073709551616",
	    "abc",	  "100 FIRST",
	    "100\tLAST",  "100 LAST LAST",
	    "0x10",
	};
	uint64_t size;
	bool last;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (smtp_parse_bdat(good[i].arg, strlen(good[i].arg), &size,
				    &last) != SMTP_PARSE_OK)
			fail_msg("\"%s\" refused", good[i].arg);
		assert_true(size == good[i].size);
		assert_int_equal(last, good[i].last);
	}
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (smtp_parse_bdat(bad[i], strlen(bad[i]), &size, &last) !=
		    SMTP_PARSE_SYNTAX)
			fail_msg("\"%s\" accepted", bad[i]);
	}
}

/* xtext */

static void test_xtext_encode_escapes_plus_equals_and_controls(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(text_xtext_encode(LIT("a+b=c d\xe9"), out, sizeof out),
			 16);
	assert_string_equal(out, "a+2Bb+3Dc+20d+E9");
	assert_int_equal(text_xtext_encode(LIT(""), out, sizeof out), 0);
	assert_string_equal(out, "");
	/* exactly fits: 3 octets and the NUL */
	assert_int_equal(text_xtext_encode(LIT("+"), out, 4), 3);
	assert_int_equal(text_xtext_encode(LIT("+"), out, 3), -1);
	assert_int_equal(text_xtext_encode(LIT("ab"), out, 2), -1);
}

static void test_xtext_decode_rejects_malformed(void **state)
{
	static const char *const bad[] = {
	    "+", "+2", "+2b", "+g0", "a=b", "a b", "+00", "\x7f", "\xc3\xa9",
	};
	char out[16];
	size_t i;

	(void)state;
	assert_int_equal(text_xtext_decode(LIT("a+2Bb+3D"), out, sizeof out, 0),
			 4);
	assert_string_equal(out, "a+b=");
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (text_xtext_decode(bad[i], strlen(bad[i]), out, sizeof out,
				      0) != -1)
			fail_msg("\"%s\" decoded", bad[i]);
	}
	assert_int_equal(text_xtext_decode(LIT("abc"), out, 4, 0), 3);
	assert_int_equal(text_xtext_decode(LIT("abcd"), out, 4, 0), -1);
	assert_int_equal(text_xtext_decode(LIT("abc"), out, 0, 0), -1);
}

static void test_xtext_round_trip_every_octet(void **state)
{
	char raw[255], enc[255 * 3 + 1], dec[256];
	int n, m;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof raw; i++)
		raw[i] = (char)(i + 1);
	n = text_xtext_encode(raw, sizeof raw, enc, sizeof enc);
	assert_true(n > 0);
	assert_int_equal(strlen(enc), (size_t)n);
	m = text_xtext_decode(enc, (size_t)n, dec, sizeof dec, 0);
	assert_int_equal(m, sizeof raw);
	assert_memory_equal(dec, raw, sizeof raw);
}

/* The DATA/BDAT decoder */

struct decoded {
	char *out;
	size_t outlen;
	size_t consumed;
	uint64_t size;
	unsigned received;
	bool done;
	bool in_headers;
};

static void decoded_free(struct decoded *r)
{
	free(r->out);
	memset(r, 0, sizeof *r);
}

/*
 * Feeds `in` cut at the offsets in cuts[] (ascending); in RAW mode ends
 * with smtp_data_finish. Each feed gets an output buffer of exactly
 * SMTP_DATA_OUT_MAX so that ASan catches an overrun.
 */
static void decode_cuts(enum smtp_data_mode mode, const char *in, size_t len,
			const size_t *cuts, size_t ncuts, struct decoded *r)
{
	struct smtp_data d;
	size_t pos = 0, k;

	memset(r, 0, sizeof *r);
	r->out = malloc(SMTP_DATA_OUT_MAX(len) + 8);
	assert_non_null(r->out);
	smtp_data_init(&d, mode);
	for (k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		size_t piece = end - pos, used, outlen = 0;
		char *buf;

		buf = malloc(SMTP_DATA_OUT_MAX(piece));
		assert_non_null(buf);
		used = smtp_data_feed(&d, in + pos, piece, buf, &outlen);
		assert_true(used <= piece);
		assert_true(outlen <= SMTP_DATA_OUT_MAX(piece));
		if (used < piece)
			assert_true(d.done);
		memcpy(r->out + r->outlen, buf, outlen);
		r->outlen += outlen;
		r->consumed += used;
		free(buf);
		pos = end;
		if (d.done)
			break;
	}
	if (mode == SMTP_DATA_RAW) {
		char tail[4];
		size_t n = smtp_data_finish(&d, tail);
		assert_true(n <= 4);
		memcpy(r->out + r->outlen, tail, n);
		r->outlen += n;
	}
	r->size = d.size;
	r->received = d.received_count;
	r->done = d.done;
	r->in_headers = d.in_headers;
}

static void decode(enum smtp_data_mode mode, const char *in, size_t len,
		   struct decoded *r)
{
	decode_cuts(mode, in, len, NULL, 0, r);
}

static void assert_decoded_equal(const struct decoded *a,
				 const struct decoded *b, const char *what)
{
	if (a->outlen != b->outlen || memcmp(a->out, b->out, a->outlen) != 0 ||
	    a->consumed != b->consumed || a->size != b->size ||
	    a->received != b->received || a->done != b->done ||
	    a->in_headers != b->in_headers)
		fail_msg(
		    "%s: results differ (outlen %zu/%zu, consumed %zu/%zu, "
		    "size %llu/%llu, received %u/%u, done %d/%d)",
		    what, a->outlen, b->outlen, a->consumed, b->consumed,
		    (unsigned long long)a->size, (unsigned long long)b->size,
		    a->received, b->received, a->done, b->done);
}

/* The stuffing dots of a wire-form buffer: lines that start with '.'. */
static size_t count_stuffed_lines(const char *s, size_t n)
{
	size_t i, count = 0;
	bool bol = true;

	for (i = 0; i < n; i++) {
		if (bol && s[i] == '.')
			count++;
		bol = s[i] == '\n';
	}
	return count;
}

static void assert_dotted(const char *in, size_t len, const char *want,
			  size_t wantlen, size_t consumed)
{
	struct decoded r;

	decode(SMTP_DATA_DOTTED, in, len, &r);
	if (!r.done)
		fail_msg("end not seen");
	if (r.outlen != wantlen || memcmp(r.out, want, wantlen) != 0)
		fail_msg("output \"%.*s\", want \"%.*s\"", (int)r.outlen, r.out,
			 (int)wantlen, want);
	assert_int_equal(r.consumed, consumed);
	assert_int_equal(r.size,
			 r.outlen - count_stuffed_lines(r.out, r.outlen));
	decoded_free(&r);
}

static void test_data_plain_message_is_kept(void **state)
{
	struct decoded r;
	static const char msg[] = "Subject: hi\r\n\r\nbody\r\n.\r\n";

	(void)state;
	decode(SMTP_DATA_DOTTED, LIT(msg), &r);
	assert_true(r.done);
	assert_int_equal(r.consumed, sizeof msg - 1);
	assert_int_equal(r.outlen, sizeof msg - 4);
	assert_memory_equal(r.out, "Subject: hi\r\n\r\nbody\r\n", r.outlen);
	assert_int_equal(r.size, 21);
	assert_false(r.in_headers);
	assert_int_equal(r.received, 0);
	decoded_free(&r);
}

static void test_data_end_marker_leaves_next_command(void **state)
{
	(void)state;
	assert_dotted(LIT("a\r\n.\r\nQUIT\r\n"), LIT("a\r\n"), 6);
}

static void test_data_empty_message(void **state)
{
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_DOTTED, LIT(".\r\nRSET\r\n"), &r);
	assert_true(r.done);
	assert_int_equal(r.consumed, 3);
	assert_int_equal(r.outlen, 0);
	assert_int_equal(r.size, 0);
	assert_true(r.in_headers);
	decoded_free(&r);
}

static void test_data_dot_lines_are_unstuffed_then_restuffed(void **state)
{
	(void)state;
	/* "..x" is ".x" as sent; stored stuffed again */
	assert_dotted(LIT("..hidden\r\n...\r\n..\r\nx.y\r\n.\r\n"),
		      LIT("..hidden\r\n...\r\n..\r\nx.y\r\n"), 27);
	/* an unnecessary stuffing dot is removed */
	assert_dotted(LIT(".abc\r\n.\r\n"), LIT("abc\r\n"), 9);
}

static void test_data_size_counts_unstuffed_octets(void **state)
{
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_DOTTED, LIT("a\nb\r\n..c\r\n.\r\n"), &r);
	assert_int_equal(r.outlen, 11);
	assert_memory_equal(r.out, "a\r\nb\r\n..c\r\n", 11);
	/* "a" CRLF "b" CRLF ".c" CRLF: the bare LF counts as a CRLF */
	assert_int_equal(r.size, 10);
	decoded_free(&r);
}

/*
 * SMTP smuggling: each sequence embeds a fake end of data followed by a
 * command; none of them may end the message, and the fake command must
 * stay in the message as data.
 */
static void test_data_smuggling_sequences_do_not_end_data(void **state)
{
	static const struct {
		const char *seq;
		const char *want;
	} cases[] = {
	    {"\n.\n", "\r\n..\r\n"},	     {"\n.\r\n", "\r\n..\r\n"},
	    {"\r.\r", "\r\n..\r\n"},	     {"\r.\r\n", "\r\n..\r\n"},
	    {"\r\n.\n", "\r\n\r\n"},	     {"\r\n.\r", "\r\n\r\n"},
	    {"\r\n.\r\r\n", "\r\n\r\n\r\n"}, {"\r\n.\n\r\n", "\r\n\r\n\r\n"},
	    {"\n\r.\r\n", "\r\n\r\n..\r\n"}, {"\r\n .\r\n", "\r\n .\r\n"},
	    {"\r\n\0.\r\n", "\r\n\0.\r\n"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char in[128], want[128];
		size_t seqlen = strlen(cases[i].seq), wantlen;
		size_t n = 0;
		struct decoded r;

		if (i == sizeof cases / sizeof cases[0] - 1)
			seqlen = 6; /* with its NUL */
		memcpy(in + n, "X", 1);
		n += 1;
		memcpy(in + n, cases[i].seq, seqlen);
		n += seqlen;
		memcpy(in + n, "MAIL FROM:<evil@x.y>\r\n.\r\n", 25);
		n += 25;

		wantlen = strlen(cases[i].want);
		if (i == sizeof cases / sizeof cases[0] - 1)
			wantlen = 6;
		memcpy(want, "X", 1);
		memcpy(want + 1, cases[i].want, wantlen);
		memcpy(want + 1 + wantlen, "MAIL FROM:<evil@x.y>\r\n", 22);
		wantlen += 23;

		decode(SMTP_DATA_DOTTED, in, n, &r);
		if (!r.done || r.consumed != n)
			fail_msg("case %zu: ended early (consumed %zu of %zu)",
				 i, r.consumed, n);
		if (r.outlen != wantlen || memcmp(r.out, want, wantlen) != 0)
			fail_msg("case %zu: output \"%.*s\"", i, (int)r.outlen,
				 r.out);
		decoded_free(&r);
	}
}

static void test_data_real_crlf_after_bare_cr_still_ends(void **state)
{
	(void)state;
	/* the CR LF before the dot is a real pair: this is the end */
	assert_dotted(LIT("a\r\r\n.\r\nX"), LIT("a\r\n\r\n"), 7);
}

static void test_data_long_lines_and_8bit_are_kept(void **state)
{
	size_t linelen = 5000, n = 0;
	char *in = malloc(linelen + 64);
	struct decoded r;
	size_t i;

	(void)state;
	assert_non_null(in);
	for (i = 0; i < linelen; i++)
		in[n++] = (char)('a' + i % 26);
	memcpy(in + n, "\r\n\xff\xfe\x00\x80\xc3\xa9\r\n.\r\n", 13);
	n += 13;
	decode(SMTP_DATA_DOTTED, in, n, &r);
	assert_true(r.done);
	assert_int_equal(r.outlen, n - 3);
	assert_memory_equal(r.out, in, n - 3);
	assert_int_equal(r.size, n - 3);
	decoded_free(&r);
	free(in);
}

static void test_data_counts_received_headers(void **state)
{
	static const char msg[] = "Received: from a\r\n"
				  "received :from b\r\n"
				  "RECEIVED\t: from c\r\n"
				  "\tReceived: continuation\r\n"
				  " Received: continuation\r\n"
				  "X-Received: no\r\n"
				  "ReceivedX: no\r\n"
				  "Received no colon\r\n"
				  "Subject: Received: x\r\n"
				  "Receive: no\r\n"
				  "Received:\r\n"
				  "\r\n"
				  "Received: in the body\r\n"
				  ".\r\n";
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_DOTTED, LIT(msg), &r);
	assert_true(r.done);
	assert_int_equal(r.received, 4);
	assert_false(r.in_headers);
	decoded_free(&r);
}

static void test_data_headers_end_at_first_empty_line(void **state)
{
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_DOTTED, LIT("\r\nReceived: x\r\n.\r\n"), &r);
	assert_int_equal(r.received, 0);
	assert_false(r.in_headers);
	decoded_free(&r);

	/* no empty line: everything was header */
	decode(SMTP_DATA_DOTTED, LIT("Received: x\r\nReceived: y\r\n.\r\n"),
	       &r);
	assert_int_equal(r.received, 2);
	assert_true(r.in_headers);
	decoded_free(&r);

	/* a bare LF makes an empty line too */
	decode(SMTP_DATA_DOTTED, LIT("A: b\n\nReceived: x\r\n.\r\n"), &r);
	assert_int_equal(r.received, 0);
	assert_false(r.in_headers);
	decoded_free(&r);
}

static void test_data_many_received_headers_are_all_counted(void **state)
{
	char *in = malloc(102 * 20 + 16);
	size_t n = 0, i;
	struct decoded r;

	(void)state;
	assert_non_null(in);
	for (i = 0; i < 101; i++)
		n += (size_t)sprintf(in + n, "Received: hop %zu\r\n", i);
	memcpy(in + n, "\r\nbody\r\n.\r\n", 11);
	n += 11;
	decode(SMTP_DATA_DOTTED, in, n, &r);
	assert_int_equal(r.received, 101);
	assert_true(r.received > SMTP_RECEIVED_MAX);
	decoded_free(&r);
	free(in);
}

static void test_data_raw_mode_has_no_end_marker(void **state)
{
	static const char in[] = "line1\r\n.\r\n.line2\nline3\rend";
	static const char want[] = "line1\r\n..\r\n..line2\r\nline3\r\nend\r\n";
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_RAW, LIT(in), &r);
	assert_false(r.done);
	assert_int_equal(r.consumed, sizeof in - 1);
	assert_int_equal(r.outlen, sizeof want - 1);
	assert_memory_equal(r.out, want, r.outlen);
	assert_int_equal(r.size, r.outlen - 2);
	decoded_free(&r);
}

static void test_data_raw_cr_split_across_chunks(void **state)
{
	struct smtp_data d;
	char out[64];
	size_t outlen, n;

	(void)state;
	smtp_data_init(&d, SMTP_DATA_RAW);
	assert_int_equal(smtp_data_feed(&d, LIT("abc\r"), out, &outlen), 4);
	assert_int_equal(outlen, 3);
	assert_int_equal(smtp_data_feed(&d, LIT("\ndef\r\n"), out, &outlen), 6);
	assert_int_equal(outlen, 7);
	assert_memory_equal(out, "\r\ndef\r\n", 7);
	assert_int_equal(smtp_data_finish(&d, out), 0);
	assert_int_equal(d.size, 10);

	/* a CR left at the very end becomes a line end */
	smtp_data_init(&d, SMTP_DATA_RAW);
	smtp_data_feed(&d, LIT("abc\r"), out, &outlen);
	n = smtp_data_finish(&d, out);
	assert_int_equal(n, 2);
	assert_memory_equal(out, "\r\n", 2);
	assert_int_equal(d.size, 5);
	assert_int_equal(smtp_data_finish(&d, out), 0);
}

static void test_data_raw_empty_stream(void **state)
{
	struct decoded r;

	(void)state;
	decode(SMTP_DATA_RAW, "", 0, &r);
	assert_int_equal(r.outlen, 0);
	assert_int_equal(r.size, 0);
	decoded_free(&r);
}

static void test_data_feed_after_end_consumes_nothing(void **state)
{
	struct smtp_data d;
	char out[64];
	size_t outlen;

	(void)state;
	smtp_data_init(&d, SMTP_DATA_DOTTED);
	assert_int_equal(smtp_data_feed(&d, LIT("x\r\n.\r"), out, &outlen), 5);
	assert_false(d.done);
	assert_int_equal(smtp_data_feed(&d, LIT("\nNOOP\r\n"), out, &outlen),
			 1);
	assert_true(d.done);
	assert_int_equal(outlen, 0);
	assert_int_equal(smtp_data_feed(&d, LIT("NOOP\r\n"), out, &outlen), 0);
	assert_int_equal(outlen, 0);
	assert_int_equal(d.size, 3);
}

static uint32_t lcg(uint32_t *seed)
{
	*seed = *seed * 1103515245u + 12345u;
	return *seed >> 8;
}

static const char *const split_corpus[] = {
    "Received: a\r\nreceived  : b\r\nX: y\r\n\r\nbody\r\n.\r\n",
    "a\n.\nb\r\n.\r.\r\n..\r\n.x\r\n\r\n.\r\nafter",
    "\r\n.\r\r\n.\n\r\n.\r\n",
    ".\r\n",
    "..\r\n.\r\n",
    "\r\r\r\n\n\n.\r\n",
    "x\r\n.\r",
    "Rec\r\neived: x\r\n\n.\r\n",
    "A:\r\n Received: no\r\nReceived: yes\r\n\r\r\nz\r\n.\r\n",
    "\n.\r\n.\r\n",
    "\r.\r\n.\r\n",
    "...\r\n....\r\n\r\n.\r\n",
};

/*
 * Every way of cutting a short input gives the same result as one feed:
 * all single cuts, all pairs of cuts, byte by byte, and random cuts.
 */
static void test_data_results_do_not_depend_on_split_points(void **state)
{
	size_t c, a, b;
	int mode;

	(void)state;
	for (mode = 0; mode < 2; mode++) {
		enum smtp_data_mode m =
		    mode == 0 ? SMTP_DATA_DOTTED : SMTP_DATA_RAW;
		for (c = 0; c < sizeof split_corpus / sizeof split_corpus[0];
		     c++) {
			const char *in = split_corpus[c];
			size_t len = strlen(in);
			size_t cuts[64];
			struct decoded whole, part;
			uint32_t seed = (uint32_t)c + 1;
			int round;

			decode(m, in, len, &whole);
			for (a = 0; a <= len; a++) {
				for (b = a; b <= len; b++) {
					cuts[0] = a;
					cuts[1] = b;
					decode_cuts(m, in, len, cuts, 2, &part);
					assert_decoded_equal(&whole, &part,
							     split_corpus[c]);
					decoded_free(&part);
				}
			}
			for (a = 0; a < len && a < 64; a++)
				cuts[a] = a;
			decode_cuts(m, in, len, cuts, a, &part);
			assert_decoded_equal(&whole, &part, "byte by byte");
			decoded_free(&part);

			for (round = 0; round < 50; round++) {
				size_t k = 0, pos = 0;
				while (k < 16 && pos < len) {
					pos += lcg(&seed) % 4;
					if (pos > len)
						pos = len;
					cuts[k++] = pos;
				}
				decode_cuts(m, in, len, cuts, k, &part);
				assert_decoded_equal(&whole, &part, "random");
				decoded_free(&part);
			}
			decoded_free(&whole);
		}
	}
}

/* The stored form, sent again with DATA, decodes to itself. */
static void test_data_output_is_valid_data_content(void **state)
{
	size_t c;

	(void)state;
	for (c = 0; c < sizeof split_corpus / sizeof split_corpus[0]; c++) {
		struct decoded first, again;
		char *resend;

		decode(SMTP_DATA_RAW, split_corpus[c], strlen(split_corpus[c]),
		       &first);
		resend = malloc(first.outlen + 3);
		assert_non_null(resend);
		memcpy(resend, first.out, first.outlen);
		memcpy(resend + first.outlen, ".\r\n", 3);
		decode(SMTP_DATA_DOTTED, resend, first.outlen + 3, &again);
		assert_true(again.done);
		assert_int_equal(again.consumed, first.outlen + 3);
		assert_int_equal(again.outlen, first.outlen);
		assert_memory_equal(again.out, first.out, first.outlen);
		assert_int_equal(again.size, first.size);
		decoded_free(&first);
		decoded_free(&again);
		free(resend);
	}
}

static void test_data_worst_case_output_fits_bound(void **state)
{
	static const char *const inputs[] = {
	    "\n.\n.\n.\n.\n.\n.\n.",
	    "\r.\r.\r.\r.\r.",
	    ".",
	    "\r",
	    "\n",
	    "\r\n.\r",
	    ".\r",
	};
	size_t i, j;

	(void)state;
	for (i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
		for (j = 0; j < sizeof inputs / sizeof inputs[0]; j++) {
			struct smtp_data d;
			size_t outlen;
			char *out;

			smtp_data_init(&d, SMTP_DATA_RAW);
			out = malloc(SMTP_DATA_OUT_MAX(strlen(inputs[i])));
			assert_non_null(out);
			smtp_data_feed(&d, inputs[i], strlen(inputs[i]), out,
				       &outlen);
			free(out);
			/* a second feed starts with the pending state */
			out = malloc(SMTP_DATA_OUT_MAX(strlen(inputs[j])));
			assert_non_null(out);
			smtp_data_feed(&d, inputs[j], strlen(inputs[j]), out,
				       &outlen);
			assert_true(outlen <=
				    SMTP_DATA_OUT_MAX(strlen(inputs[j])));
			free(out);
		}
	}
}

/* smtp_unstuff_to_lf */

/* Runs the unstuffer over pieces of `step` octets (0: all at once); each
 * call gets a buffer of exactly its input length. */
static size_t unstuff_steps(const char *in, size_t len, size_t step, char *out)
{
	struct smtp_unstuff u = {0};
	size_t pos = 0, total = 0;

	if (step == 0)
		step = len ? len : 1;
	while (pos < len) {
		size_t n = len - pos < step ? len - pos : step, w;
		char *buf = malloc(n);
		assert_non_null(buf);
		w = smtp_unstuff_to_lf(&u, in + pos, n, buf);
		assert_true(w <= n);
		memcpy(out + total, buf, w);
		total += w;
		free(buf);
		pos += n;
	}
	return total;
}

static void test_unstuff_removes_dots_and_crs(void **state)
{
	char out[64];
	size_t n;

	(void)state;
	n = unstuff_steps(LIT("a\r\n..b\r\n.c\r\n\r\nd.\r\n"), 0, out);
	assert_int_equal(n, 11);
	assert_memory_equal(out, "a\n.b\nc\n\nd.\n", 11);
	n = unstuff_steps(LIT("..\r\n"), 0, out);
	assert_int_equal(n, 2);
	assert_memory_equal(out, ".\n", 2);
}

static void test_unstuff_keeps_bare_cr(void **state)
{
	char out[64];
	size_t n;

	(void)state;
	n = unstuff_steps(LIT("a\rb\r\n\r.x\r\n"), 0, out);
	assert_int_equal(n, 8);
	assert_memory_equal(out, "a\rb\n\r.x\n", 8);
}

static void test_unstuff_cr_split_across_calls(void **state)
{
	static const char *const inputs[] = {
	    "ab\r\n.c\r\n",
	    "a\rb\r\n",
	    "x\r\ry\r\r\r\n..\r\n",
	    "\r\r\r\r\r\r\n",
	    "long line without dots\r\n.\r\n..\r\n",
	    "\rx\ry\rz\r\n",
	};
	size_t i, step;

	(void)state;
	for (i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
		char whole[64], part[64];
		size_t len = strlen(inputs[i]);
		size_t nw = unstuff_steps(inputs[i], len, 0, whole);
		for (step = 1; step <= len; step++) {
			size_t np = unstuff_steps(inputs[i], len, step, part);
			if (np != nw || memcmp(whole, part, nw) != 0)
				fail_msg("input %zu, step %zu: \"%.*s\"", i,
					 step, (int)np, part);
		}
	}
}

static void test_unstuff_bare_cr_at_call_end_never_overflows(void **state)
{
	struct smtp_unstuff u = {0};
	char out[4];
	size_t n;

	(void)state;
	memset(out, '#', sizeof out);
	assert_int_equal(smtp_unstuff_to_lf(&u, LIT("a\r"), out), 1);
	assert_int_equal(out[0], 'a');
	/* one octet in: at most one out, though "\rb" is owed */
	memset(out, '#', sizeof out);
	n = smtp_unstuff_to_lf(&u, LIT("b"), out);
	assert_int_equal(n, 1);
	assert_int_equal(out[0], '\r');
	assert_int_equal(out[1], '#');
	n = smtp_unstuff_to_lf(&u, LIT("\r\n"), out);
	assert_int_equal(n, 2);
	assert_memory_equal(out, "b\n", 2);
	assert_int_equal(smtp_unstuff_to_lf(&u, "", 0, out), 0);
}

static void test_unstuff_of_decoder_output_matches_size(void **state)
{
	size_t c;

	(void)state;
	for (c = 0; c < sizeof split_corpus / sizeof split_corpus[0]; c++) {
		struct decoded r;
		char *lf;
		size_t n, lines = 0, i;

		decode(SMTP_DATA_RAW, split_corpus[c], strlen(split_corpus[c]),
		       &r);
		lf = malloc(r.outlen + 1);
		assert_non_null(lf);
		n = unstuff_steps(r.out, r.outlen, 0, lf);
		for (i = 0; i < r.outlen; i++)
			lines += r.out[i] == '\n';
		/* size counts CRLF as two octets, the mailbox form one */
		assert_int_equal(n + lines, r.size);
		free(lf);
		decoded_free(&r);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_command_verbs_are_case_insensitive),
	    cmocka_unit_test(test_command_unknown_verbs),
	    cmocka_unit_test(test_command_arg_skips_spaces_and_trims_trailing),
	    cmocka_unit_test(test_command_without_argument_has_empty_arg),
	    cmocka_unit_test(test_command_arg_keeps_inner_spacing),
	    cmocka_unit_test(test_verb_name_is_upper_case),
	    cmocka_unit_test(test_path_valid_forms),
	    cmocka_unit_test(test_path_invalid_forms),
	    cmocka_unit_test(test_path_nul_octet_is_bad_address),
	    cmocka_unit_test(test_path_length_limits),
	    cmocka_unit_test(test_path_null_only_when_allowed),
	    cmocka_unit_test(test_path_postmaster_only_when_allowed),
	    cmocka_unit_test(test_path_reports_octets_consumed),
	    cmocka_unit_test(test_domain_valid_forms),
	    cmocka_unit_test(test_mail_plain_and_null_sender),
	    cmocka_unit_test(test_mail_prefix_errors_are_syntax),
	    cmocka_unit_test(test_mail_bad_paths_are_bad_address),
	    cmocka_unit_test(test_mail_all_parameters),
	    cmocka_unit_test(test_mail_envid_length_limit),
	    cmocka_unit_test(test_mail_bad_parameter_values),
	    cmocka_unit_test(test_mail_unknown_parameters),
	    cmocka_unit_test(test_mail_malformed_keyword_is_syntax),
	    cmocka_unit_test(test_rcpt_addresses),
	    cmocka_unit_test(test_rcpt_notify_values),
	    cmocka_unit_test(test_rcpt_orcpt_is_stored_as_sent),
	    cmocka_unit_test(test_rcpt_orcpt_invalid_values),
	    cmocka_unit_test(test_rcpt_orcpt_length_limit),
	    cmocka_unit_test(test_rcpt_mail_parameters_are_unknown),
	    cmocka_unit_test(test_rcpt_param_alone),
	    cmocka_unit_test(test_bdat_arguments),
	    cmocka_unit_test(
		test_xtext_encode_escapes_plus_equals_and_controls),
	    cmocka_unit_test(test_xtext_decode_rejects_malformed),
	    cmocka_unit_test(test_xtext_round_trip_every_octet),
	    cmocka_unit_test(test_data_plain_message_is_kept),
	    cmocka_unit_test(test_data_end_marker_leaves_next_command),
	    cmocka_unit_test(test_data_empty_message),
	    cmocka_unit_test(test_data_dot_lines_are_unstuffed_then_restuffed),
	    cmocka_unit_test(test_data_size_counts_unstuffed_octets),
	    cmocka_unit_test(test_data_smuggling_sequences_do_not_end_data),
	    cmocka_unit_test(test_data_real_crlf_after_bare_cr_still_ends),
	    cmocka_unit_test(test_data_long_lines_and_8bit_are_kept),
	    cmocka_unit_test(test_data_counts_received_headers),
	    cmocka_unit_test(test_data_headers_end_at_first_empty_line),
	    cmocka_unit_test(test_data_many_received_headers_are_all_counted),
	    cmocka_unit_test(test_data_raw_mode_has_no_end_marker),
	    cmocka_unit_test(test_data_raw_cr_split_across_chunks),
	    cmocka_unit_test(test_data_raw_empty_stream),
	    cmocka_unit_test(test_data_feed_after_end_consumes_nothing),
	    cmocka_unit_test(test_data_results_do_not_depend_on_split_points),
	    cmocka_unit_test(test_data_output_is_valid_data_content),
	    cmocka_unit_test(test_data_worst_case_output_fits_bound),
	    cmocka_unit_test(test_unstuff_removes_dots_and_crs),
	    cmocka_unit_test(test_unstuff_keeps_bare_cr),
	    cmocka_unit_test(test_unstuff_cr_split_across_calls),
	    cmocka_unit_test(test_unstuff_bare_cr_at_call_end_never_overflows),
	    cmocka_unit_test(test_unstuff_of_decoder_output_matches_size),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
