/* The configuration: file syntax, environment, every key's values, the
 * error messages, and -n's printout (SPEC.md §3 and §8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/config.h"
#include "support.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))
#define ENV(...) ((char *const[]){__VA_ARGS__, NULL})

static void dump_errors(const struct config_errors *errors)
{
	for (size_t i = 0; i < errors->count; i++)
		print_message("  error: %s\n", errors->messages[i]);
}

/* Load text that must be refused with, among its errors, exactly
 * `message`. */
static void load_fails_with(const char *text, char *const *env,
			    const char *message)
{
	struct config_errors errors = {0};
	struct config *cfg = config_load_string(text, "x.conf", env, &errors);
	bool found = false;

	if (cfg != NULL)
		fail_msg("accepted:\n%s", text);
	assert_true(errors.count > 0);
	for (size_t i = 0; i < errors.count; i++)
		if (strcmp(errors.messages[i], message) == 0)
			found = true;
	if (!found) {
		dump_errors(&errors);
		fail_msg("expected error: %s", message);
	}
	config_errors_clear(&errors);
}

/* A value of `key` that must be refused. */
static void value_fails(const char *key, const char *value)
{
	struct config_errors errors = {0};
	char text[512];
	char prefix[128];
	struct config *cfg;

	snprintf(text, sizeof(text), "%s = %s\n", key, value);
	snprintf(prefix, sizeof(prefix), "x.conf:1: %s: ", key);
	cfg = config_load_string(text, "x.conf", NULL, &errors);
	if (cfg != NULL)
		fail_msg("accepted: %s", text);
	if (errors.count != 1 ||
	    strncmp(errors.messages[0], prefix, strlen(prefix)) != 0) {
		dump_errors(&errors);
		fail_msg("expected one error starting \"%s\"", prefix);
	}
	config_errors_clear(&errors);
}

static char *print_config(const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);

	assert_non_null(out);
	config_print(cfg, out);
	assert_int_equal(fclose(out), 0);
	return buf;
}

/* The "key = value" line of the printout for `key`, without "key = ". */
static void assert_printed(const struct config *cfg, const char *key,
			   const char *value)
{
	char *text = print_config(cfg);
	char line[512];

	snprintf(line, sizeof(line), "\n%s = %s\n", key, value);
	if (strstr(text, line) == NULL &&
	    strncmp(text, line + 1, strlen(line + 1)) != 0)
		fail_msg("printout lacks \"%s = %s\":\n%s", key, value, text);
	free(text);
}

static void test_config_defaults(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	char host[256] = "";
	const struct sockaddr_in *sin =
	    (const struct sockaddr_in *)&cfg->listen[0].addr;

	assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
	assert_string_equal(cfg->hostname, host);
	assert_int_equal(cfg->listen_count, 1);
	assert_string_equal(cfg->listen[0].text, "127.0.0.1:2525");
	assert_int_equal(cfg->listen[0].mode, LISTEN_SMTP);
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohs(sin->sin_port), 2525);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
	assert_int_equal(cfg->pop3_listen_count, 0);
	assert_null(cfg->metrics_listen);
	assert_string_equal(cfg->spool_dir, "/var/spool/facteur");
	assert_int_equal(cfg->local_domains.count, 1);
	assert_string_equal(cfg->local_domains.items[0], "localhost");
	assert_null(cfg->users_file);
	assert_null(cfg->aliases_file);
	assert_int_equal(cfg->mailbox_format, MAILBOX_MAILDIR);
	assert_string_equal(cfg->mailbox_path, "/var/mail/%d/%u");
	assert_int_equal(cfg->relay_network_count, 2);
	assert_int_equal(cfg->relay_networks[0].family, AF_INET);
	assert_int_equal(cfg->relay_networks[0].prefix, 8);
	assert_int_equal(cfg->relay_networks[1].family, AF_INET6);
	assert_int_equal(cfg->relay_networks[1].prefix, 128);
	assert_non_null(cfg->routes);
	assert_int_equal(route_table_count(cfg->routes), 0);
	assert_true(cfg->dns_from_resolv_conf);
	assert_int_equal(cfg->dns_server_count, 0);
	assert_int_equal(cfg->mx_port, 25);
	assert_null(cfg->tls_cert);
	assert_null(cfg->tls_key);
	assert_int_equal(cfg->tls_outbound, TLS_POLICY_MAY);
	assert_null(cfg->tls_ca_file);
	assert_int_equal(cfg->max_message_size, 25 * 1024 * 1024);
	assert_int_equal(cfg->max_recipients, 1000);
	assert_int_equal(cfg->max_connections, 10000);
	assert_int_equal(cfg->max_connections_per_ip, 100);
	assert_int_equal(cfg->smtp_timeout, 300);
	assert_int_equal(cfg->retry_min, 60);
	assert_int_equal(cfg->retry_max, 3600);
	assert_int_equal(cfg->queue_lifetime, 5 * 86400);
	assert_int_equal(cfg->max_connections_per_destination, 20);
	assert_int_equal(cfg->delay_notice, 4 * 3600);
	assert_int_equal(cfg->log_format, LOG_FORMAT_LOGFMT);
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
	assert_string_equal(cfg->source, "x.conf");
	config_free(cfg);
}

static void test_config_default_user_is_facteur_when_it_exists(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	struct passwd *pw = getpwnam("facteur");

	if (pw != NULL && pw->pw_uid != 0 && pw->pw_uid != geteuid())
		assert_string_equal(cfg->user, "facteur");
	else
		assert_null(cfg->user);
	config_free(cfg);
}

static void test_config_hash_starts_a_comment_only_at_line_start(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("# a comment\n"
				"   # an indented comment\n"
				"\t# a tabbed one = with equals\n"
				"spool_dir = /var/q # not a comment\n"
				"users_file = #users\n",
				NULL);

	assert_string_equal(cfg->spool_dir, "/var/q # not a comment");
	assert_string_equal(cfg->users_file, "#users");
	config_free(cfg);
	value_fails("max_recipients", "10 # ten");
}

static void test_config_blank_lines_spaces_and_crlf(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("\n\n   \n\t\n"
				"  spool_dir\t=\t /srv/spool  \r\n"
				"max_recipients=7\r\n"
				"\r\n"
				"hostname =mx.example.com",
				NULL);

	assert_string_equal(cfg->spool_dir, "/srv/spool");
	assert_int_equal(cfg->max_recipients, 7);
	assert_string_equal(cfg->hostname, "mx.example.com");
	config_free(cfg);
}

static void test_config_value_may_contain_equals(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("spool_dir = /a=b\n", NULL);

	assert_string_equal(cfg->spool_dir, "/a=b");
	config_free(cfg);
}

static void test_config_line_without_equals_is_an_error(void **state)
{
	(void)state;
	load_fails_with("spool_dir = /a\nlisten 127.0.0.1:25\n", NULL,
			"x.conf:2: expected \"key = value\", got "
			"\"listen 127.0.0.1:25\"");
	load_fails_with("= value\n", NULL,
			"x.conf:1: missing key before \"=\"");
}

static void test_config_scalar_key_last_wins(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("max_recipients = 5\n"
						 "spool_dir = /one\n"
						 "max_recipients = 6\n"
						 "spool_dir = /two\n",
						 NULL);

	assert_int_equal(cfg->max_recipients, 6);
	assert_string_equal(cfg->spool_dir, "/two");
	config_free(cfg);
}

static void test_config_list_key_repeats_append(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("local_domains = a.test, B.TEST\n"
				"local_domains = c.test\n"
				"listen = 127.0.0.1:25\n"
				"listen = [::1]:25, 127.0.0.1:587/"
				"submission\n"
				"tls_cert = c.pem\ntls_key = k.pem\n"
				"relay_networks = 10.0.0.0/8\n"
				"relay_networks = 192.168.0.0/16\n"
				"route = a.test [10.0.0.1]\n"
				"route = b.test [10.0.0.2], * relay.test\n"
				"dns_servers = 127.0.0.1:5353\n"
				"dns_servers = [::1]\n",
				NULL);

	/* the first line replaces the default "localhost" */
	assert_int_equal(cfg->local_domains.count, 3);
	assert_string_equal(cfg->local_domains.items[0], "a.test");
	assert_string_equal(cfg->local_domains.items[1], "b.test");
	assert_string_equal(cfg->local_domains.items[2], "c.test");
	assert_int_equal(cfg->listen_count, 3);
	assert_string_equal(cfg->listen[0].text, "127.0.0.1:25");
	assert_string_equal(cfg->listen[2].text, "127.0.0.1:587/submission");
	assert_int_equal(cfg->relay_network_count, 2);
	assert_int_equal(route_table_count(cfg->routes), 3);
	assert_int_equal(cfg->dns_server_count, 2);
	assert_false(cfg->dns_from_resolv_conf);
	config_free(cfg);
}

static void test_config_empty_list_value_empties_the_list(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("listen =\nrelay_networks =\n"
						 "local_domains =\n",
						 NULL);

	assert_int_equal(cfg->listen_count, 0);
	assert_int_equal(cfg->relay_network_count, 0);
	assert_int_equal(cfg->local_domains.count, 0);
	config_free(cfg);
}

static void test_config_empty_list_entry_is_an_error(void **state)
{
	(void)state;
	load_fails_with("local_domains = a.test,,b.test\n", NULL,
			"x.conf:1: local_domains: empty entry in list");
	load_fails_with("local_domains = a.test,\n", NULL,
			"x.conf:1: local_domains: empty entry in list");
}

static void test_config_environment_overrides_file(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("max_recipients = 5\nspool_dir = /file\n",
				ENV("PATH=/bin", "FACTEUR_MAX_RECIPIENTS=9",
				    "FACTEUR_LOG_LEVEL= debug ", "HOME=/root"));

	assert_int_equal(cfg->max_recipients, 9);
	assert_string_equal(cfg->spool_dir, "/file");
	assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
	config_free(cfg);
}

static void test_config_environment_replaces_file_lists(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "local_domains = a.test\nlocal_domains = b.test\n"
	    "route = a.test [10.0.0.1]\n",
	    ENV("FACTEUR_LOCAL_DOMAINS=c.test, d.test",
		"FACTEUR_ROUTE=a.test [10.0.0.9]", "FACTEUR_LISTEN="));

	assert_int_equal(cfg->local_domains.count, 2);
	assert_string_equal(cfg->local_domains.items[0], "c.test");
	assert_string_equal(cfg->local_domains.items[1], "d.test");
	assert_int_equal(route_table_count(cfg->routes), 1);
	assert_string_equal(
	    route_lookup(cfg->routes, "a.test")->targets[0].host, "10.0.0.9");
	assert_int_equal(cfg->listen_count, 0);
	config_free(cfg);
}

static void test_config_unknown_key_is_an_error(void **state)
{
	(void)state;
	load_fails_with("spool_dir = /a\n\nfoo = bar\n", NULL,
			"x.conf:3: unknown key \"foo\"");
	/* keys are lower case, as in the table */
	load_fails_with("Listen = 127.0.0.1:25\n", NULL,
			"x.conf:1: unknown key \"Listen\"");
}

static void test_config_unknown_facteur_variable_is_an_error(void **state)
{
	(void)state;
	load_fails_with("", ENV("FACTEUR_BOGUS=1"),
			"FACTEUR_BOGUS: unknown key \"bogus\"");
	load_fails_with("", ENV("FACTEUR_listen=127.0.0.1:25"),
			"FACTEUR_listen: unknown key \"listen\"");
	load_fails_with("", ENV("FACTEUR_=x"), "FACTEUR_: unknown key \"\"");
}

static void test_config_facteur_config_variable_is_not_a_key(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("", ENV("FACTEUR_CONFIG=/nonexistent",
					"FACTEURX=1", "FACTEUR_NOEQUALS"));

	config_free(cfg);
}

static void test_config_error_names_file_line_and_key(void **state)
{
	(void)state;
	char text[1024] = "";

	for (int i = 1; i < 12; i++)
		strcat(text, "# filler\n");
	strcat(text, "max_recipients = ten\n");
	load_fails_with(text, NULL,
			"x.conf:12: max_recipients: invalid number \"ten\"");
	load_fails_with("", ENV("FACTEUR_LISTEN=1.2.3.4:99999"),
			"FACTEUR_LISTEN: listen: invalid port in "
			"\"1.2.3.4:99999\"");
}

static void test_config_collects_every_error_in_order(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct config *cfg = config_load_string(
	    "max_recipients = ten\n"
	    "bogus = 1\n"
	    "smtp_timeout = 5x\n"
	    "spool_dir = /ok\n"
	    "listen = nowhere\n",
	    "x.conf", ENV("FACTEUR_LOG_LEVEL=loud", "FACTEUR_NOPE=1"), &errors);

	assert_null(cfg);
	assert_int_equal(errors.count, 6);
	assert_string_equal(errors.messages[0],
			    "x.conf:1: max_recipients: invalid number \"ten\"");
	assert_string_equal(errors.messages[1],
			    "x.conf:2: unknown key \"bogus\"");
	assert_string_equal(errors.messages[2],
			    "x.conf:3: smtp_timeout: invalid duration \"5x\" "
			    "(a number with s, m, h or d)");
	assert_string_equal(errors.messages[3],
			    "x.conf:5: listen: invalid address in \"nowhere\"");
	assert_string_equal(errors.messages[4],
			    "FACTEUR_LOG_LEVEL: log_level: invalid value "
			    "\"loud\" (error, warn, info or debug)");
	assert_string_equal(errors.messages[5],
			    "FACTEUR_NOPE: unknown key \"nope\"");
	config_errors_clear(&errors);
	assert_int_equal(errors.count, 0);
	assert_null(errors.messages);
}

static void test_config_errors_append_to_existing_ones(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct config *cfg;

	config_errors_add(&errors, "%s:%d: %s", "users", 3, "earlier");
	cfg = config_load_string("", "x.conf", NULL, &errors);
	/* errors found before this load do not fail it */
	assert_non_null(cfg);
	assert_int_equal(errors.count, 1);
	assert_string_equal(errors.messages[0], "users:3: earlier");
	config_free(cfg);
	config_errors_clear(&errors);
}

static void test_config_error_quotes_control_characters(void **state)
{
	(void)state;
	load_fails_with("", ENV("FACTEUR_SPOOL_DIR=/a\nb"),
			"FACTEUR_SPOOL_DIR: spool_dir: control character in "
			"value");
	load_fails_with("max_recipients = \"1\"\\\n", NULL,
			"x.conf:1: max_recipients: invalid number "
			"\"\\\"1\\\"\\\\\"");
	load_fails_with("max_recipients = \xc3\xa9\n", NULL,
			"x.conf:1: max_recipients: invalid number "
			"\"\\xc3\\xa9\"");
}

static void test_config_long_values_are_cut_in_messages(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	char text[4096];

	memcpy(text, "max_recipients = ", 17);
	memset(text + 17, '9', 3000);
	text[3017] = 'x';
	text[3018] = '\0';
	assert_null(config_load_string(text, "x.conf", NULL, &errors));
	assert_int_equal(errors.count, 1);
	assert_true(strlen(errors.messages[0]) < 300);
	assert_non_null(strstr(errors.messages[0], "...\""));
	config_errors_clear(&errors);
}

/* A number and what it parses to: seconds or octets. */
struct number_case {
	const char *text;
	uint64_t value;
};

typedef int number_parser(const char *text, uint64_t *out);

/* config_parse_duration as a number_parser. */
static int parse_duration_wide(const char *text, uint64_t *out)
{
	unsigned v = (unsigned)*out;
	int rc = config_parse_duration(text, &v);

	*out = v;
	return rc;
}

/* Each good text parses to its value; each bad one is refused and leaves
 * the result as it was. */
static void check_number_parser(number_parser *parse,
				const struct number_case *good,
				size_t good_count, const char *const *bad,
				size_t bad_count)
{
	for (size_t i = 0; i < good_count; i++) {
		uint64_t v = 12345;

		if (parse(good[i].text, &v) != 0)
			fail_msg("\"%s\" refused", good[i].text);
		assert_true(v == good[i].value);
	}
	for (size_t i = 0; i < bad_count; i++) {
		uint64_t v = 12345;

		if (parse(bad[i], &v) == 0)
			fail_msg("\"%s\" accepted", bad[i]);
		assert_true(v == 12345);
	}
}

static void test_config_parse_duration(void **state)
{
	(void)state;
	static const struct number_case good[] = {
	    {"0", 0},
	    {"30", 30},
	    {"30s", 30},
	    {"5m", 300},
	    {"2h", 7200},
	    {"5d", 432000},
	    {"007m", 420},
	    {"4294967295", 4294967295u},
	    {"49710d", 49710u * 86400},
	};
	static const char *const bad[] = {
	    "",
	    "s",
	    "m",
	    "-5",
	    "+5",
	    "5 m",
	    " 5",
	    "5ms",
	    "5M",
	    "5w",
	    "1.5h",
	    "0x10",
	    "5mm",
	    "ten",
	    "4294967296",
	    "49711d",
	    "99999999999999999999999",
	};

	check_number_parser(parse_duration_wide, good, COUNT_OF(good), bad,
			    COUNT_OF(bad));
}

static void test_config_parse_size(void **state)
{
	(void)state;
	static const struct number_case good[] = {
	    {"0", 0},
	    {"1", 1},
	    {"1K", 1024},
	    {"1k", 1024},
	    {"25M", 25ull * 1024 * 1024},
	    {"25m", 25ull * 1024 * 1024},
	    {"2G", 2ull * 1024 * 1024 * 1024},
	    {"18446744073709551615", UINT64_MAX},
	    {"17179869183G", 17179869183ull * 1024 * 1024 * 1024},
	};
	static const char *const bad[] = {
	    "",
	    "K",
	    "-1",
	    "+1",
	    "1.5M",
	    "1 K",
	    "1KB",
	    "1T",
	    "1b",
	    "abc",
	    "0x10",
	    "18446744073709551616",
	    "17179869184G",
	};

	check_number_parser(config_parse_size, good, COUNT_OF(good), bad,
			    COUNT_OF(bad));
}

static void test_config_size_and_duration_keys(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("max_message_size = 1K\n"
						 "smtp_timeout = 30s\n"
						 "retry_min = 10\n"
						 "retry_max = 2d\n"
						 "queue_lifetime = 1h\n",
						 NULL);

	assert_int_equal(cfg->max_message_size, 1024);
	assert_int_equal(cfg->smtp_timeout, 30);
	assert_int_equal(cfg->retry_min, 10);
	assert_int_equal(cfg->retry_max, 172800);
	assert_int_equal(cfg->queue_lifetime, 3600);
	config_free(cfg);
	value_fails("max_message_size", "0");
	value_fails("max_message_size", "25Q");
	value_fails("max_message_size", "-1M");
	value_fails("smtp_timeout", "0");
	value_fails("smtp_timeout", "-5m");
	value_fails("retry_min", "");
	value_fails("queue_lifetime", "5 days");
	load_fails_with("smtp_timeout = 0s\n", NULL,
			"x.conf:1: smtp_timeout: must be greater than 0");
}

static void test_config_count_keys(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("max_recipients = 1\n"
				"max_connections = 4294967295\n"
				"max_connections_per_ip = 3\n",
				NULL);

	assert_int_equal(cfg->max_recipients, 1);
	assert_int_equal(cfg->max_connections, 4294967295u);
	assert_int_equal(cfg->max_connections_per_ip, 3);
	config_free(cfg);
	static const char *const keys[] = {"max_recipients", "max_connections",
					   "max_connections_per_ip"};
	static const char *const bad[] = {"0", "-1",	     "ten", "1K",
					  "",  "4294967296", "1.0", "+3"};

	for (size_t k = 0; k < COUNT_OF(keys); k++)
		for (size_t i = 0; i < COUNT_OF(bad); i++)
			value_fails(keys[k], bad[i]);
	load_fails_with("max_connections = 0\n", NULL,
			"x.conf:1: max_connections: must be greater than 0");
}

static void test_config_keys_beyond_the_spec_table(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("max_connections_per_destination = 3\n"
				"delay_notice = 30m\n",
				NULL);

	assert_int_equal(cfg->max_connections_per_destination, 3);
	assert_int_equal(cfg->delay_notice, 1800);
	config_free(cfg);
	cfg = support_load_config("delay_notice = 0\n",
				  NULL); /* no delay notices */
	assert_int_equal(cfg->delay_notice, 0);
	assert_printed(cfg, "delay_notice", "0s");
	config_free(cfg);
	value_fails("max_connections_per_destination", "0");
	value_fails("max_connections_per_destination", "many");
	value_fails("delay_notice", "-1h");
	value_fails("delay_notice", "4 h");
}

static void test_config_parse_listen_ipv4_ipv6_and_modes(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		bool pop3;
		int family;
		const char *addr;
		uint16_t port;
		enum listen_mode mode;
	} good[] = {
	    {"127.0.0.1:25", false, AF_INET, "127.0.0.1", 25, LISTEN_SMTP},
	    {"0.0.0.0:25/smtp", false, AF_INET, "0.0.0.0", 25, LISTEN_SMTP},
	    {"*:587/submission", false, AF_INET, "0.0.0.0", 587,
	     LISTEN_SUBMISSION},
	    {"localhost:465/smtps", false, AF_INET, "127.0.0.1", 465,
	     LISTEN_SMTPS},
	    {"[::1]:25", false, AF_INET6, "::1", 25, LISTEN_SMTP},
	    {"[::]:65535/smtps", false, AF_INET6, "::", 65535, LISTEN_SMTPS},
	    {"[2001:db8::25]:2525/submission", false, AF_INET6, "2001:db8::25",
	     2525, LISTEN_SUBMISSION},
	    {"127.0.0.1:110", true, AF_INET, "127.0.0.1", 110, LISTEN_POP3},
	    {"[::1]:995/pop3s", true, AF_INET6, "::1", 995, LISTEN_POP3S},
	    {"*:110/pop3", true, AF_INET, "0.0.0.0", 110, LISTEN_POP3},
	};
	static const struct {
		const char *text;
		bool pop3;
	} bad[] = {
	    {"", false},
	    {"127.0.0.1", false},
	    {"127.0.0.1:", false},
	    {"127.0.0.1:0", false},
	    {"127.0.0.1:65536", false},
	    {"127.0.0.1:25x", false},
	    {"127.0.0.1:-25", false},
	    {"1.2.3:25", false},
	    {"256.1.1.1:25", false},
	    {"mail.example.com:25", false},
	    {"::1:25", false},
	    {"[::1]", false},
	    {"[::1]25", false},
	    {"[::1:25", false},
	    {"[1.2.3.4]:25", false},
	    {"[nothost]:25", false},
	    {"127.0.0.1:25/", false},
	    {"127.0.0.1:25/pop3", false},
	    {"127.0.0.1:25/SMTP", false},
	    {"127.0.0.1:110/smtp", true},
	    {"127.0.0.1:110/pop3x", true},
	    {":25", false},
	    {" 127.0.0.1:25", false},
	};

	for (size_t i = 0; i < COUNT_OF(good); i++) {
		struct listen_addr la;
		char addr[INET6_ADDRSTRLEN];
		const void *raw;
		uint16_t port;

		memset(&la, 0, sizeof(la));
		if (config_parse_listen(good[i].text, good[i].pop3, &la) != 0)
			fail_msg("\"%s\" refused", good[i].text);
		assert_string_equal(la.text, good[i].text);
		assert_int_equal(la.mode, good[i].mode);
		assert_int_equal(la.addr.ss_family, good[i].family);
		if (good[i].family == AF_INET) {
			const struct sockaddr_in *sin =
			    (const struct sockaddr_in *)&la.addr;
			raw = &sin->sin_addr;
			port = ntohs(sin->sin_port);
			assert_int_equal(la.addrlen, sizeof(*sin));
		} else {
			const struct sockaddr_in6 *sin6 =
			    (const struct sockaddr_in6 *)&la.addr;
			raw = &sin6->sin6_addr;
			port = ntohs(sin6->sin6_port);
			assert_int_equal(la.addrlen, sizeof(*sin6));
		}
		assert_non_null(
		    inet_ntop(good[i].family, raw, addr, sizeof(addr)));
		assert_string_equal(addr, good[i].addr);
		assert_int_equal(port, good[i].port);
		free(la.text);
	}
	for (size_t i = 0; i < COUNT_OF(bad); i++) {
		struct listen_addr la = {0};

		if (config_parse_listen(bad[i].text, bad[i].pop3, &la) == 0)
			fail_msg("\"%s\" accepted", bad[i].text);
		assert_null(la.text);
	}
}

static void test_config_listen_error_messages(void **state)
{
	(void)state;
	load_fails_with("listen = 127.0.0.1:25/pop3\n", NULL,
			"x.conf:1: listen: unknown mode (smtp, submission or "
			"smtps) in \"127.0.0.1:25/pop3\"");
	load_fails_with("pop3_listen = 127.0.0.1:110/smtp\n", NULL,
			"x.conf:1: pop3_listen: unknown mode (pop3 or pop3s) "
			"in \"127.0.0.1:110/smtp\"");
	load_fails_with("listen = example.com:25\n", NULL,
			"x.conf:1: listen: invalid address in "
			"\"example.com:25\"");
	load_fails_with("listen = [::1]\n", NULL,
			"x.conf:1: listen: missing port in \"[::1]\"");
}

static void test_config_metrics_listen(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("metrics_listen = [::1]:9100\n", NULL);

	assert_non_null(cfg->metrics_listen);
	assert_string_equal(cfg->metrics_listen->text, "[::1]:9100");
	assert_int_equal(cfg->metrics_listen->addr.ss_family, AF_INET6);
	config_free(cfg);
	cfg = support_load_config(
	    "metrics_listen = 127.0.0.1:9100\nmetrics_listen =\n", NULL);
	assert_null(cfg->metrics_listen);
	config_free(cfg);
	value_fails("metrics_listen", "127.0.0.1:9100/smtp");
	value_fails("metrics_listen", "127.0.0.1:9100, 127.0.0.1:9101");
	value_fails("metrics_listen", "127.0.0.1");
}

static void test_config_parse_cidr(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		int family;
		const char *addr;
		unsigned prefix;
	} good[] = {
	    {"127.0.0.0/8", AF_INET, "127.0.0.0", 8},
	    {"10.1.2.3/8", AF_INET, "10.0.0.0", 8}, /* host bits masked */
	    {"192.168.1.77/26", AF_INET, "192.168.1.64", 26},
	    {"1.2.3.4", AF_INET, "1.2.3.4", 32},
	    {"0.0.0.0/0", AF_INET, "0.0.0.0", 0},
	    {"::1/128", AF_INET6, "::1", 128},
	    {"::1", AF_INET6, "::1", 128},
	    {"2001:db8:ffff::1/33", AF_INET6, "2001:db8:8000::", 33},
	    {"::/0", AF_INET6, "::", 0},
	    {"::ffff:10.0.0.0/104", AF_INET6, "::ffff:10.0.0.0", 104},
	};
	static const char *const bad[] = {
	    "",
	    "/8",
	    "10.0.0.0/",
	    "10.0.0.0/33",
	    "::/129",
	    "10.0.0/8",
	    "10.0.0.0/-1",
	    "10.0.0.0/8/8",
	    "host/8",
	    "10.0.0.0/a",
	    "10.0.0.0 /8",
	    "[::1]/128",
	    "10.0.0.0/08x",
	};

	for (size_t i = 0; i < COUNT_OF(good); i++) {
		struct cidr net;
		char addr[INET6_ADDRSTRLEN];

		if (config_parse_cidr(good[i].text, &net) != 0)
			fail_msg("\"%s\" refused", good[i].text);
		assert_int_equal(net.family, good[i].family);
		assert_int_equal(net.prefix, good[i].prefix);
		assert_non_null(
		    inet_ntop(net.family, net.addr, addr, sizeof(addr)));
		assert_string_equal(addr, good[i].addr);
	}
	for (size_t i = 0; i < COUNT_OF(bad); i++) {
		struct cidr net;

		if (config_parse_cidr(bad[i], &net) == 0)
			fail_msg("\"%s\" accepted", bad[i]);
	}
}

static bool matches(const struct cidr *nets, size_t n, const char *ip)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	}
	return config_cidr_match(nets, n, (const struct sockaddr *)&ss);
}

static void test_config_cidr_match_v4_v6_and_mapped(void **state)
{
	(void)state;
	static const char *const texts[] = {"1.2.3.0/24",
					    "10.0.0.0/8",
					    "2001:db8::/32",
					    "::1",
					    "::ffff:172.16.0.0/108",
					    "192.168.7.9"};
	static const struct {
		const char *ip;
		bool in;
	} cases[] = {
	    {"1.2.3.4", true},
	    {"1.2.3.255", true},
	    {"1.2.4.1", false},
	    {"10.255.255.255", true},
	    {"11.0.0.0", false},
	    {"::ffff:1.2.3.4", true}, /* mapped client, v4 network */
	    {"::ffff:1.2.4.4", false},
	    {"::ffff:10.9.8.7", true},
	    {"2001:db8:1::5", true},
	    {"2001:db9::5", false},
	    {"::1", true},
	    {"::2", false},
	    {"172.16.5.5", true}, /* v4 client, mapped v6 network */
	    {"172.32.0.1", false},
	    {"192.168.7.9", true},
	    {"192.168.7.10", false},
	    {"::1.2.3.4", false}, /* compatible, not mapped */
	};
	struct cidr nets[COUNT_OF(texts)];

	for (size_t i = 0; i < COUNT_OF(texts); i++)
		assert_int_equal(config_parse_cidr(texts[i], &nets[i]), 0);
	for (size_t i = 0; i < COUNT_OF(cases); i++)
		if (matches(nets, COUNT_OF(nets), cases[i].ip) != cases[i].in)
			fail_msg("%s: expected %s", cases[i].ip,
				 cases[i].in ? "a match" : "no match");
	assert_false(config_cidr_match(nets, COUNT_OF(nets), NULL));
	assert_false(matches(nets, 0, "1.2.3.4"));
}

static void test_config_cidr_match_zero_prefix_matches_all(void **state)
{
	(void)state;
	struct cidr nets[2];

	assert_int_equal(config_parse_cidr("0.0.0.0/0", &nets[0]), 0);
	assert_true(matches(nets, 1, "203.0.113.9"));
	assert_true(matches(nets, 1, "::ffff:203.0.113.9"));
	assert_false(matches(nets, 1, "2001:db8::1"));
	assert_int_equal(config_parse_cidr("::/0", &nets[1]), 0);
	assert_true(matches(&nets[1], 1, "2001:db8::1"));
}

static void test_config_relay_networks_key(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "relay_networks = 192.0.2.0/24, 2001:db8::/48\n", NULL);

	assert_int_equal(cfg->relay_network_count, 2);
	assert_true(matches(cfg->relay_networks, 2, "192.0.2.10"));
	assert_false(matches(cfg->relay_networks, 2, "127.0.0.1"));
	config_free(cfg);
	load_fails_with("relay_networks = 10.0.0.0/33\n", NULL,
			"x.conf:1: relay_networks: invalid network "
			"\"10.0.0.0/33\"");
}

static void test_config_dns_servers(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "dns_servers = 127.0.0.1, 127.0.0.2:5353, [::1]:54, ::2, [::3]\n",
	    NULL);
	static const struct {
		int family;
		uint16_t port;
	} want[] = {{AF_INET, 53},
		    {AF_INET, 5353},
		    {AF_INET6, 54},
		    {AF_INET6, 53},
		    {AF_INET6, 53}};

	assert_false(cfg->dns_from_resolv_conf);
	assert_int_equal(cfg->dns_server_count, COUNT_OF(want));
	for (size_t i = 0; i < COUNT_OF(want); i++) {
		const struct sockaddr_storage *ss = &cfg->dns_servers[i].addr;
		uint16_t port =
		    ss->ss_family == AF_INET
			? ntohs(((const struct sockaddr_in *)ss)->sin_port)
			: ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);

		assert_int_equal(ss->ss_family, want[i].family);
		assert_int_equal(port, want[i].port);
	}
	assert_string_equal(cfg->dns_servers[1].text, "127.0.0.2:5353");
	config_free(cfg);

	cfg = support_load_config("dns_servers = /etc/resolv.conf\n", NULL);
	assert_true(cfg->dns_from_resolv_conf);
	config_free(cfg);
	cfg = support_load_config("dns_servers = 1.1.1.1\n",
				  ENV("FACTEUR_DNS_SERVERS="));
	assert_true(cfg->dns_from_resolv_conf);
	assert_int_equal(cfg->dns_server_count, 0);
	config_free(cfg);

	value_fails("dns_servers", "dns.example.com");
	value_fails("dns_servers", "127.0.0.1:0");
	value_fails("dns_servers", "[::1]:99999");
	value_fails("dns_servers", "/etc/other.conf");
	value_fails("dns_servers", "*");
	load_fails_with("dns_servers = /etc/resolv.conf, 127.0.0.1\n", NULL,
			"x.conf:1: dns_servers: \"127.0.0.1\" cannot be "
			"combined with \"/etc/resolv.conf\"");
}

static void test_config_hostname_and_local_domains(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("hostname = MX1.Example.COM\n"
				"local_domains = Example.COM, "
				"example.com., mail.example.org\n",
				NULL);

	assert_string_equal(cfg->hostname, "MX1.Example.COM");
	assert_int_equal(cfg->local_domains.count, 2);
	assert_string_equal(cfg->local_domains.items[0], "example.com");
	assert_string_equal(cfg->local_domains.items[1], "mail.example.org");
	assert_true(config_is_local_domain(cfg, "example.com"));
	assert_true(config_is_local_domain(cfg, "EXAMPLE.com"));
	assert_true(config_is_local_domain(cfg, "mail.example.org."));
	assert_false(config_is_local_domain(cfg, "example.org"));
	assert_false(config_is_local_domain(cfg, "sub.example.com"));
	assert_false(config_is_local_domain(cfg, "localhost"));
	assert_false(config_is_local_domain(cfg, ""));
	assert_false(config_is_local_domain(cfg, NULL));
	config_free(cfg);

	value_fails("hostname", "");
	value_fails("hostname", "mx example.com");
	value_fails("hostname", "mx_1.example.com");
	value_fails("hostname", "mx..example.com");
	value_fails("local_domains", "exa mple.com");
	value_fails("local_domains", "-a.example.com");
	value_fails("local_domains", "*.example.com");
	load_fails_with("local_domains = a..b\n", NULL,
			"x.conf:1: local_domains: invalid domain \"a..b\"");
}

static void test_config_paths_and_optional_files(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("spool_dir = var/spool\n"
				"users_file = /etc/facteur/users\n"
				"aliases_file = aliases\n"
				"tls_ca_file = /etc/ssl/ca.pem\n",
				NULL);

	assert_string_equal(cfg->spool_dir, "var/spool");
	assert_string_equal(cfg->users_file, "/etc/facteur/users");
	assert_string_equal(cfg->aliases_file, "aliases");
	assert_string_equal(cfg->tls_ca_file, "/etc/ssl/ca.pem");
	config_free(cfg);

	cfg = support_load_config(
	    "users_file = /u\naliases_file = /a\ntls_ca_file = /c\n",
	    ENV("FACTEUR_USERS_FILE=", "FACTEUR_ALIASES_FILE=",
		"FACTEUR_TLS_CA_FILE="));
	assert_null(cfg->users_file);
	assert_null(cfg->aliases_file);
	assert_null(cfg->tls_ca_file);
	config_free(cfg);
	load_fails_with("spool_dir =\n", NULL,
			"x.conf:1: spool_dir: must not be empty");
}

static void test_config_flush_method(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->flush_method, FLUSH_FSYNC);
	config_free(cfg);
	cfg = support_load_config("flush_method = syncfs\n", NULL);
	assert_int_equal(cfg->flush_method, FLUSH_SYNCFS);
	config_free(cfg);
	/* The environment wins over the file, as for every key. */
	cfg = support_load_config("flush_method = syncfs\n",
				  ENV("FACTEUR_FLUSH_METHOD=fsync"));
	assert_int_equal(cfg->flush_method, FLUSH_FSYNC);
	config_free(cfg);
	value_fails("flush_method", "fdatasync");
	value_fails("flush_method", "SYNCFS");
	value_fails("flush_method", "");
}

static void test_config_envelope_budgets(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->max_envelope_size, 256 * 1024);
	assert_int_equal(cfg->max_envelope_memory, 256 * 1024 * 1024);
	config_free(cfg);
	cfg = support_load_config(
	    "max_envelope_size = 64K\nmax_envelope_memory = 1G\n",
	    ENV("FACTEUR_MAX_ENVELOPE_SIZE=2048"));
	assert_int_equal(cfg->max_envelope_size, 2048);
	assert_int_equal(cfg->max_envelope_memory, 1024 * 1024 * 1024);
	assert_printed(cfg, "max_envelope_size", "2K");
	assert_printed(cfg, "max_envelope_memory", "1G");
	config_free(cfg);
	value_fails("max_envelope_size", "0");
	value_fails("max_envelope_size", "lots");
	value_fails("max_envelope_memory", "-1M");
	value_fails("max_envelope_memory", "");
}

static void test_config_ipv6_prefix_length(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->ipv6_prefix_length, 64);
	config_free(cfg);
	cfg = support_load_config("ipv6_prefix_length = 128\n",
				  ENV("FACTEUR_IPV6_PREFIX_LENGTH=56"));
	assert_int_equal(cfg->ipv6_prefix_length, 56);
	assert_printed(cfg, "ipv6_prefix_length", "56");
	config_free(cfg);
	cfg = support_load_config("ipv6_prefix_length = 128\n", NULL);
	assert_int_equal(cfg->ipv6_prefix_length, 128);
	config_free(cfg);
	value_fails("ipv6_prefix_length", "0");
	value_fails("ipv6_prefix_length", "129");
	value_fails("ipv6_prefix_length", "/64");
	load_fails_with("ipv6_prefix_length = 200\n", NULL,
			"x.conf:1: ipv6_prefix_length: invalid prefix length "
			"\"200\" (1 to 128)");
}

static void test_config_auth_fail_limit(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->auth_fail_limit, 10);
	assert_int_equal(cfg->auth_fail_window, 15 * 60);
	assert_printed(cfg, "auth_fail_limit", "10/15m");
	config_free(cfg);
	cfg = support_load_config("auth_fail_limit = 5/1h\n",
				  ENV("FACTEUR_AUTH_FAIL_LIMIT=3/90s"));
	assert_int_equal(cfg->auth_fail_limit, 3);
	assert_int_equal(cfg->auth_fail_window, 90);
	assert_printed(cfg, "auth_fail_limit", "3/90s");
	config_free(cfg);
	cfg = support_load_config("auth_fail_limit = 20/2s\n", NULL);
	assert_int_equal(cfg->auth_fail_limit, 20);
	assert_int_equal(cfg->auth_fail_window, 2);
	config_free(cfg);
	value_fails("auth_fail_limit", "10");
	value_fails("auth_fail_limit", "0/15m");
	value_fails("auth_fail_limit", "10/0s");
	value_fails("auth_fail_limit", "/15m");
	value_fails("auth_fail_limit", "10/");
	value_fails("auth_fail_limit", "ten/15m");
	value_fails("auth_fail_limit", "10/15x");
}

static void test_config_dnsbl_and_message_rate(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("dnsbl = Zen.Example.ORG.\n"
				"dnsbl = bl.test match=127.0.0.2,127.0.0.10\n"
				"max_messages_per_ip = 30/m\n",
				NULL);
	assert_int_equal(cfg->dnsbl_count, 2);
	assert_string_equal(cfg->dnsbl[0].zone, "zen.example.org");
	assert_int_equal(cfg->dnsbl[0].match_count, 0);
	assert_int_equal(cfg->dnsbl[1].match_count, 2);
	assert_int_equal(cfg->dnsbl[1].match[1][3], 10);
	assert_printed(cfg, "dnsbl",
		       "zen.example.org\ndnsbl = bl.test "
		       "match=127.0.0.2,127.0.0.10");
	assert_int_equal(cfg->max_messages, 30);
	assert_int_equal(cfg->max_messages_window, 60);
	assert_printed(cfg, "max_messages_per_ip", "30/m");
	config_free(cfg);
	cfg = support_load_config(
	    "", ENV("FACTEUR_DNSBL=a.test match=127.0.0.4; b.test",
		    "FACTEUR_MAX_MESSAGES_PER_IP=500/h"));
	assert_int_equal(cfg->dnsbl_count, 2);
	assert_string_equal(cfg->dnsbl[1].zone, "b.test");
	assert_int_equal(cfg->max_messages_window, 3600);
	assert_printed(cfg, "max_messages_per_ip", "500/h");
	config_free(cfg);
	cfg = support_load_config("", NULL);
	assert_int_equal(cfg->dnsbl_count, 0);
	assert_int_equal(cfg->max_messages, 0);
	config_free(cfg);
	static const char *const bad[][2] = {
	    {"dnsbl", "bad_zone!"},
	    {"dnsbl", "bl.test match="},
	    {"dnsbl", "bl.test match=127.0.0.2,"},
	    {"dnsbl", "bl.test match=::1"},
	    {"dnsbl", "bl.test only=127.0.0.2"},
	    {"dnsbl", "bl.test match=127.0.0.2 extra"},
	    {"max_messages_per_ip", "30"},
	    {"max_messages_per_ip", "0/m"},
	    {"max_messages_per_ip", "30/x"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		value_fails(bad[i][0], bad[i][1]);
}

static void test_config_milter(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "milter = inet:127.0.0.1:11332\n"
	    "milter = unix:/run/opendkim/opendkim.sock timeout=10s "
	    "default=accept\n",
	    NULL);
	assert_int_equal(cfg->milter_count, 2);
	assert_string_equal(cfg->milters[0].name, "inet:127.0.0.1:11332");
	assert_int_equal(cfg->milters[0].addr.ss_family, AF_INET);
	assert_int_equal(cfg->milters[0].timeout, 30);
	assert_int_equal(cfg->milters[0].on_error, MILTER_DEFAULT_TEMPFAIL);
	assert_int_equal(cfg->milters[1].addr.ss_family, AF_UNIX);
	assert_int_equal(cfg->milters[1].timeout, 10);
	assert_int_equal(cfg->milters[1].on_error, MILTER_DEFAULT_ACCEPT);
	assert_printed(cfg, "milter",
		       "inet:127.0.0.1:11332 timeout=30s default=tempfail\n"
		       "milter = unix:/run/opendkim/opendkim.sock timeout=10s "
		       "default=accept");
	config_free(cfg);
	cfg = support_load_config(
	    "", ENV("FACTEUR_MILTER=inet:[::1]:8891 default=reject; "
		    "inet:127.0.0.1:8893"));
	assert_int_equal(cfg->milter_count, 2);
	assert_int_equal(cfg->milters[0].addr.ss_family, AF_INET6);
	assert_int_equal(cfg->milters[0].on_error, MILTER_DEFAULT_REJECT);
	config_free(cfg);
	static const char *const bad[] = {
	    "127.0.0.1:8891",
	    "inet:127.0.0.1",
	    "inet:milter.example:8891",
	    "unix:relative.sock",
	    "inet:127.0.0.1:8891 timeout=0s",
	    "inet:127.0.0.1:8891 timeout=fast",
	    "inet:127.0.0.1:8891 default=discard",
	    "inet:127.0.0.1:8891 extra",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		value_fails("milter", bad[i]);
}

static void test_config_proxy_modes_and_networks(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		bool pop3;
		enum listen_mode mode;
		bool proxy;
	} good[] = {
	    {"127.0.0.1:25/smtp+proxy", false, LISTEN_SMTP, true},
	    {"127.0.0.1:587/submission+proxy", false, LISTEN_SUBMISSION, true},
	    {"[::1]:465/smtps+proxy", false, LISTEN_SMTPS, true},
	    {"127.0.0.1:110/pop3+proxy", true, LISTEN_POP3, true},
	    {"127.0.0.1:995/pop3s+proxy", true, LISTEN_POP3S, true},
	    {"127.0.0.1:25/smtp", false, LISTEN_SMTP, false},
	    {"127.0.0.1:25", false, LISTEN_SMTP, false},
	};
	for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
		struct listen_addr la = {0};
		assert_int_equal(
		    config_parse_listen(good[i].text, good[i].pop3, &la), 0);
		assert_int_equal(la.mode, good[i].mode);
		assert_int_equal(la.proxy, good[i].proxy);
		assert_string_equal(la.text, good[i].text);
		free(la.text);
	}
	static const char *const bad[] = {
	    "127.0.0.1:25/+proxy",
	    "127.0.0.1:25/proxy",
	    "127.0.0.1:25/smtp+proxy+proxy",
	    "127.0.0.1:25/smtp+PROXY",
	    "127.0.0.1:25/smtp+",
	    "127.0.0.1:25+proxy",
	    "127.0.0.1:25/pop3+proxy",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct listen_addr la = {0};
		if (config_parse_listen(bad[i], false, &la) == 0)
			fail_msg("\"%s\" accepted", bad[i]);
	}

	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->proxy_network_count, 2);
	assert_true(matches(cfg->proxy_networks, 2, "127.0.0.1"));
	assert_true(matches(cfg->proxy_networks, 2, "::1"));
	assert_false(matches(cfg->proxy_networks, 2, "192.0.2.1"));
	assert_printed(cfg, "proxy_networks", "127.0.0.0/8, ::1/128");
	config_free(cfg);
	/* The environment's list is comma-separated and replaces the
	 * file's, as relay_networks'. */
	cfg = support_load_config(
	    "proxy_networks = 10.0.0.0/8\n"
	    "proxy_networks = 10.1.0.0/16\n",
	    ENV("FACTEUR_PROXY_NETWORKS=192.0.2.5/32, 2001:db8::/32"));
	assert_int_equal(cfg->proxy_network_count, 2);
	assert_true(matches(cfg->proxy_networks, 2, "192.0.2.5"));
	assert_true(matches(cfg->proxy_networks, 2, "2001:db8::9"));
	assert_false(matches(cfg->proxy_networks, 2, "10.0.0.1"));
	assert_printed(cfg, "proxy_networks", "192.0.2.5/32, 2001:db8::/32");
	config_free(cfg);
	cfg = support_load_config("proxy_networks =\n", NULL);
	assert_int_equal(cfg->proxy_network_count, 0);
	config_free(cfg);
	load_fails_with("proxy_networks = 10.0.0.0/33\n", NULL,
			"x.conf:1: proxy_networks: invalid network "
			"\"10.0.0.0/33\"");
	value_fails("proxy_networks", "example.com");
}

static void test_config_mailbox_format_and_path(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("mailbox_format = mbox\n"
				"mailbox_path = /var/mail/%u%%%d.mbox\n",
				NULL);

	assert_int_equal(cfg->mailbox_format, MAILBOX_MBOX);
	assert_string_equal(cfg->mailbox_path, "/var/mail/%u%%%d.mbox");
	config_free(cfg);
	cfg = support_load_config(
	    "mailbox_format = maildir\nmailbox_path = Maildir\n", NULL);
	assert_int_equal(cfg->mailbox_format, MAILBOX_MAILDIR);
	config_free(cfg);

	value_fails("mailbox_format", "Maildir");
	value_fails("mailbox_format", "mh");
	value_fails("mailbox_path", "");
	value_fails("mailbox_path", "/var/mail/%");
	value_fails("mailbox_path", "/var/mail/%%%");
	load_fails_with("mailbox_path = /var/mail/%h/%u\n", NULL,
			"x.conf:1: mailbox_path: invalid escape \"%h\" in "
			"\"/var/mail/%h/%u\" (use %u, %d or %%)");
}

static void test_config_enumerated_keys(void **state)
{
	(void)state;
	static const struct {
		const char *value;
		enum tls_policy tls;
	} tls[] = {{"none", TLS_POLICY_NONE},
		   {"may", TLS_POLICY_MAY},
		   {"encrypt", TLS_POLICY_ENCRYPT},
		   {"verify", TLS_POLICY_VERIFY}};
	static const char *const levels[] = {"error", "warn", "info", "debug"};
	char text[64];

	for (size_t i = 0; i < COUNT_OF(tls); i++) {
		snprintf(text, sizeof(text), "tls_outbound = %s\n",
			 tls[i].value);
		struct config *cfg = support_load_config(text, NULL);
		assert_int_equal(cfg->tls_outbound, tls[i].tls);
		config_free(cfg);
	}
	for (size_t i = 0; i < COUNT_OF(levels); i++) {
		snprintf(text, sizeof(text), "log_level = %s\n", levels[i]);
		struct config *cfg = support_load_config(text, NULL);
		assert_int_equal(cfg->log_level, (enum log_level)i);
		config_free(cfg);
	}
	struct config *cfg = support_load_config("log_format = json\n", NULL);
	assert_int_equal(cfg->log_format, LOG_FORMAT_JSON);
	config_free(cfg);

	value_fails("tls_outbound", "maybe");
	value_fails("tls_outbound", "");
	value_fails("log_format", "text");
	value_fails("log_level", "warning");
	value_fails("log_level", "INFO");
	load_fails_with("tls_outbound = yes\n", NULL,
			"x.conf:1: tls_outbound: invalid value \"yes\" "
			"(none, may, encrypt or verify)");
}

static void test_config_mx_port(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("mx_port = 2525\n", NULL);

	assert_int_equal(cfg->mx_port, 2525);
	config_free(cfg);
	cfg = support_load_config("mx_port = 65535\n", NULL);
	assert_int_equal(cfg->mx_port, 65535);
	config_free(cfg);
	value_fails("mx_port", "0");
	value_fails("mx_port", "65536");
	value_fails("mx_port", "smtp");
	value_fails("mx_port", "-25");
	load_fails_with("mx_port = 0\n", NULL,
			"x.conf:1: mx_port: invalid port \"0\" (1 to 65535)");
}

static void test_config_user(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("user = root\n", NULL);
	struct passwd *me = getpwuid(geteuid());
	struct passwd *nobody;
	char text[300];

	assert_null(cfg->user); /* root: no switch */
	config_free(cfg);
	cfg = support_load_config("user =\n", NULL);
	assert_null(cfg->user);
	config_free(cfg);
	if (me != NULL) {
		snprintf(text, sizeof(text), "user = %s\n", me->pw_name);
		cfg = support_load_config(text, NULL);
		assert_null(cfg->user); /* already that user */
		config_free(cfg);
	}
	nobody = getpwnam("nobody");
	if (nobody != NULL && nobody->pw_uid != geteuid()) {
		cfg = support_load_config("user = nobody\n", NULL);
		assert_string_equal(cfg->user, "nobody");
		config_free(cfg);
	}
	load_fails_with("user = no-such-user-facteur\n", NULL,
			"x.conf:1: user: no such user "
			"\"no-such-user-facteur\"");
}

/* sender_route: a list whose values hold spaces, hence ";" between them
 * in the environment; its errors name the line like route's. */
static void test_config_sender_route_key(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "sender_route = a.test [r.test]:465|[10.0.0.2] tls=implicit\n",
	    NULL);
	const struct route *r;

	assert_int_equal(route_table_count(cfg->sender_routes), 1);
	r = route_lookup_sender(cfg->sender_routes, "x@a.test");
	assert_non_null(r);
	assert_int_equal(r->target_count, 2);
	assert_int_equal(r->targets[1].port, 465);
	assert_null(route_lookup(cfg->routes, "a.test"));
	config_free(cfg);

	cfg = support_load_config(
	    "sender_route = a.test [r.test]\n",
	    ENV("FACTEUR_SENDER_ROUTE=boss@a.test [s.test] tls=verify; "
		"* [t.test]:587"));
	assert_int_equal(route_table_count(cfg->sender_routes), 2);
	assert_string_equal(
	    route_lookup_sender(cfg->sender_routes, "boss@a.test")->text,
	    "boss@a.test [s.test] tls=verify");
	assert_string_equal(route_lookup_sender(cfg->sender_routes, "")->text,
			    "* [t.test]:587");
	config_free(cfg);

	load_fails_with("\nsender_route = @a.test [r.test]\n", NULL,
			"x.conf:2: sender_route: invalid address pattern "
			"\"@a.test\"");
	load_fails_with("route = a.test [r.test]|\n", NULL,
			"x.conf:1: route: empty element in target "
			"\"[r.test]|\"");
}

static void assert_round_trip(const char *text, char *const *env);

/* mailbox_owner is looked up when loaded, mailbox_mode checked for what
 * would open mail to others; -n prints both as given. */
static void test_config_mailbox_owner_and_mode(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_null(cfg->mailbox_owner);
	assert_int_equal(cfg->mailbox_mode, 0600);
	assert_printed(cfg, "mailbox_owner", "");
	assert_printed(cfg, "mailbox_mode", "0600");
	config_free(cfg);

	struct passwd *nobody = getpwnam("nobody");
	struct group *nogroup = getgrnam("nogroup");
	if (nobody != NULL && nogroup != NULL) {
		char *env[] = {"FACTEUR_MAILBOX_MODE=0640", NULL};
		cfg = support_load_config("mailbox_owner = nobody:nogroup\n",
					  env);
		assert_string_equal(cfg->mailbox_owner, "nobody:nogroup");
		assert_int_equal(cfg->mailbox_uid, nobody->pw_uid);
		assert_int_equal(cfg->mailbox_gid, nogroup->gr_gid);
		assert_int_equal(cfg->mailbox_mode, 0640);
		assert_printed(cfg, "mailbox_owner", "nobody:nogroup");
		assert_printed(cfg, "mailbox_mode", "0640");
		config_free(cfg);
		assert_round_trip(
		    "mailbox_owner = nobody\nmailbox_mode = 0660\n", NULL);
	}
	load_fails_with("\nmailbox_owner = no-such-user-x\n", NULL,
			"x.conf:2: mailbox_owner: no such user "
			"\"no-such-user-x\" in \"no-such-user-x\"");
	load_fails_with("mailbox_owner = root\n", NULL,
			"x.conf:1: mailbox_owner: root cannot be the mailbox "
			"owner in \"root\"");
	load_fails_with("mailbox_mode = 0662\n", NULL,
			"x.conf:1: mailbox_mode: \"0662\": world-writable mail "
			"can be changed by any local user");
	load_fails_with("mailbox_mode = 660\n", NULL,
			"x.conf:1: mailbox_mode: \"660\": not an octal mode "
			"with a leading 0 (0600, 0660...)");
}

/* One shape value a file line (commas and all), `;` between them in the
 * environment; -n prints each with its defaults, one a line. */
static void test_config_shape_key(void **state)
{
	(void)state;
	char *env[] = {"FACTEUR_SHAPE=a.test max_rcpt=5; *.b.test rate=2/s",
		       NULL};
	struct config *cfg = support_load_config(
	    "shape = gmail.com max_connections=3 rate=60/m\n"
	    "shape = * pause=3s\n",
	    NULL);

	assert_int_equal(shape_table_count(cfg->shapes), 2);
	assert_int_equal(shape_lookup(cfg->shapes, "gmail.com")->rate_count,
			 60);
	assert_printed(cfg, "shape",
		       "gmail.com max_connections=3 max_rcpt=50 max_msgs=100 "
		       "rate=60/m pause=60s\nshape = * max_rcpt=50 "
		       "max_msgs=100 pause=3s");
	config_free(cfg);
	cfg = support_load_config("", env);
	assert_int_equal(shape_table_count(cfg->shapes), 2);
	assert_int_equal(shape_lookup(cfg->shapes, "x.b.test")->rate_period, 1);
	config_free(cfg);

	load_fails_with("\nshape = a.test rate=0/m\n", NULL,
			"x.conf:2: shape: invalid value in \"rate=0/m\"");
	load_fails_with("shape = a.test speed=3\n", NULL,
			"x.conf:1: shape: unknown option \"speed=3\"");
	load_fails_with("shape_redis = redis.example:6379\n", NULL,
			"x.conf:1: shape_redis: host must be an IP address or "
			"localhost in \"redis.example:6379\"");
	load_fails_with("shape_redis = 127.0.0.1:6379/x\n", NULL,
			"x.conf:1: shape_redis: invalid database number in "
			"\"127.0.0.1:6379/x\"");
	cfg = support_load_config("shape_redis = [::1]:6380/2\n", NULL);
	assert_string_equal(cfg->shape_redis, "[::1]:6380/2");
	config_free(cfg);
	load_fails_with("shape = a.test source=192.0.2.77\n", NULL,
			"x.conf:1: shape: source is not a local address "
			"(Cannot assign requested address)");
}

static void test_config_route_key(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "route = *.free.fr                      smtp.free.fr\n"
	    "route = *                              "
	    "[smarthost.mondomaine.com]:587 tls=verify "
	    "auth=/run/secrets/smarthost\n"
	    "route = *.sousdomaine.mondomaine.com   "
	    "mail.sousdomaine.mondomaine.com\n",
	    NULL);
	const struct route *r;

	assert_int_equal(route_table_count(cfg->routes), 3);
	r = route_lookup(cfg->routes, "gmail.com");
	assert_string_equal(r->targets[0].host, "smarthost.mondomaine.com");
	assert_int_equal(r->targets[0].port, 587);
	assert_int_equal(r->tls, ROUTE_TLS_VERIFY);
	assert_string_equal(
	    route_lookup(cfg->routes, "a.free.fr")->targets[0].host,
	    "smtp.free.fr");
	config_free(cfg);

	load_fails_with("\nroute = example.com [host\n", NULL,
			"x.conf:2: route: bad target \"[host\"");
	load_fails_with("route = a.test mx.test\nroute = A.test other.test\n",
			NULL, "x.conf:2: route: duplicate pattern \"a.test\"");
	load_fails_with("route = * [relay.test]:587 tls=may auth=/r\n", NULL,
			"x.conf:1: route: auth= with tls=may would send the "
			"password over an unverified connection (use "
			"tls=verify, or tls=encrypt to accept any certificate) "
			"in \"* [relay.test]:587 tls=may auth=/r\"");
	cfg = support_load_config("tls_outbound = none\n"
				  "route = * [relay.test]:587 auth=/r\n",
				  NULL);
	assert_int_equal(route_lookup(cfg->routes, "x.test")->tls,
			 ROUTE_TLS_VERIFY);
	config_free(cfg);
	load_fails_with("", ENV("FACTEUR_ROUTE=a.test mx.test tls=sometimes"),
			"FACTEUR_ROUTE: route: invalid tls value (none, may, "
			"encrypt, verify or implicit) \"tls=sometimes\"");
}

static void test_config_tls_listeners_need_cert_and_key(void **state)
{
	(void)state;
	load_fails_with("listen = 127.0.0.1:2525\n"
			"listen = 0.0.0.0:587/submission\n",
			NULL,
			"x.conf:2: listen: \"0.0.0.0:587/submission\" needs "
			"tls_cert and tls_key");
	load_fails_with("", ENV("FACTEUR_LISTEN=0.0.0.0:465/smtps"),
			"FACTEUR_LISTEN: listen: \"0.0.0.0:465/smtps\" needs "
			"tls_cert and tls_key");
	load_fails_with("pop3_listen = 127.0.0.1:995/pop3s\n", NULL,
			"x.conf:1: pop3_listen: \"127.0.0.1:995/pop3s\" needs "
			"tls_cert and tls_key");
	load_fails_with("tls_cert = /c.pem\nlisten = [::1]:465/smtps\n", NULL,
			"x.conf:1: tls_cert: set without tls_key");
	load_fails_with("tls_key = /k.pem\n", NULL,
			"x.conf:1: tls_key: set without tls_cert");

	struct config *cfg =
	    support_load_config("tls_cert = /c.pem\ntls_key = /k.pem\n"
				"listen = 0.0.0.0:25, 0.0.0.0:587/"
				"submission, [::]:465/smtps\n"
				"pop3_listen = 0.0.0.0:110, "
				"0.0.0.0:995/pop3s\n",
				NULL);
	assert_int_equal(cfg->listen_count, 3);
	assert_int_equal(cfg->pop3_listen_count, 2);
	assert_string_equal(cfg->tls_cert, "/c.pem");
	assert_string_equal(cfg->tls_key, "/k.pem");
	config_free(cfg);
	/* plain smtp and pop3 listeners need no certificate */
	cfg = support_load_config("pop3_listen = 127.0.0.1:110\n", NULL);
	config_free(cfg);
}

static void test_config_retry_min_above_retry_max(void **state)
{
	(void)state;
	load_fails_with("retry_min = 2h\n", NULL,
			"x.conf:1: retry_min: retry_min (2h) is greater than "
			"retry_max (1h)");
	load_fails_with("retry_max = 30s\n", NULL,
			"x.conf:1: retry_max: retry_min (1m) is greater than "
			"retry_max (30s)");
	struct config *cfg =
	    support_load_config("retry_min = 1h\nretry_max = 1h\n", NULL);
	config_free(cfg);
}

/* SPEC.md §3's keys in its order, two more beside their kin, then
 * flush_method and the later keys (not in SPEC) in the order they came. */
static const char *const spec_order[] = {
    "hostname",
    "listen",
    "pop3_listen",
    "metrics_listen",
    "spool_dir",
    "local_domains",
    "users_file",
    "aliases_file",
    "mailbox_format",
    "mailbox_path",
    "relay_networks",
    "route",
    "dns_servers",
    "mx_port",
    "tls_cert",
    "tls_key",
    "tls_outbound",
    "tls_ca_file",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_destination",
    "smtp_timeout",
    "retry_min",
    "retry_max",
    "queue_lifetime",
    "delay_notice",
    "user",
    "log_format",
    "log_level",
    "flush_method",
    "max_envelope_size",
    "max_envelope_memory",
    "ipv6_prefix_length",
    "auth_fail_limit",
    "proxy_networks",
    "reuse_port",
    "sender_route",
    "srs_domain",
    "srs_secret_file",
    "senders_file",
    "dkim_sign",
    "shape",
    "shape_redis",
    "mailbox_owner",
    "mailbox_mode",
    "dnsbl",
    "max_messages_per_ip",
    "local_transport",
    "submit_socket",
    "dane",
    "milter",
    "mta_sts",
    "tlsrpt_from",
};

/* local_transport: none by default, the canonical form printed, a bad
 * form refused with its place (route's tests hold every form). */
static void test_config_local_transport(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_int_equal(cfg->local_transport.kind, LMTP_NONE);
	assert_printed(cfg, "local_transport", "");
	config_free(cfg);
	cfg = support_load_config("local_transport = LMTP:[127.0.0.1]\n", NULL);
	assert_int_equal(cfg->local_transport.kind, LMTP_INET);
	assert_printed(cfg, "local_transport", "lmtp:[127.0.0.1]:24");
	config_free(cfg);
	load_fails_with("\nlocal_transport = lmtp:unix:dovecot-lmtp\n", NULL,
			"x.conf:2: local_transport: the socket path must be "
			"absolute in \"lmtp:unix:dovecot-lmtp\"");
}

static void test_config_mta_sts_follows_tls_outbound(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_true(cfg->mta_sts);
	config_free(cfg);
	cfg = support_load_config("tls_outbound = none\n", NULL);
	assert_false(cfg->mta_sts);
	assert_printed(cfg, "mta_sts", "no");
	config_free(cfg);
	cfg = support_load_config("tls_outbound = none\nmta_sts = yes\n", NULL);
	assert_true(cfg->mta_sts);
	config_free(cfg);
	cfg = support_load_config("mta_sts = no\n", NULL);
	assert_false(cfg->mta_sts);
	config_free(cfg);
}

static void test_config_print_lists_every_key_in_spec_order(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	char *text = print_config(cfg);
	const char *p = text;

	for (size_t i = 0; i < COUNT_OF(spec_order); i++) {
		size_t n = strlen(spec_order[i]);

		if (strncmp(p, spec_order[i], n) != 0 ||
		    strncmp(p + n, " = ", 3) != 0)
			fail_msg("expected key %s at:\n%s", spec_order[i], p);
		p = strchr(p, '\n');
		assert_non_null(p);
		p++;
	}
	assert_string_equal(p, "");
	free(text);

	assert_printed(cfg, "listen", "127.0.0.1:2525");
	assert_printed(cfg, "pop3_listen", "");
	assert_printed(cfg, "relay_networks", "127.0.0.0/8, ::1/128");
	assert_printed(cfg, "route", "");
	assert_printed(cfg, "dns_servers", "/etc/resolv.conf");
	assert_printed(cfg, "max_message_size", "25M");
	assert_printed(cfg, "smtp_timeout", "5m");
	assert_printed(cfg, "retry_min", "1m");
	assert_printed(cfg, "retry_max", "1h");
	assert_printed(cfg, "queue_lifetime", "5d");
	assert_printed(cfg, "tls_cert", "");
	assert_printed(cfg, "log_level", "info");
	assert_printed(cfg, "flush_method", "fsync");
	config_free(cfg);
}

/* Print, parse the printout, print again: the same settings. */
static void assert_round_trip(const char *text, char *const *env)
{
	struct config *cfg = support_load_config(text, env);
	char *first = print_config(cfg);
	struct config *again = support_load_config(first, NULL);
	char *second = print_config(again);

	if (strcmp(first, second) != 0)
		fail_msg("printout changed on re-parse:\n%s\n---\n%s", first,
			 second);
	assert_int_equal(again->max_message_size, cfg->max_message_size);
	assert_int_equal(again->smtp_timeout, cfg->smtp_timeout);
	assert_int_equal(again->listen_count, cfg->listen_count);
	assert_int_equal(again->relay_network_count, cfg->relay_network_count);
	assert_int_equal(route_table_count(again->routes),
			 route_table_count(cfg->routes));
	free(first);
	free(second);
	config_free(cfg);
	config_free(again);
}

static void test_config_print_round_trips(void **state)
{
	(void)state;
	assert_round_trip("", NULL);
	assert_round_trip(
	    "hostname = mx.example.com\n"
	    "listen = 0.0.0.0:25, [::]:587/submission, *:465/smtps\n"
	    "pop3_listen = [::1]:110/pop3, 127.0.0.1:995/pop3s\n"
	    "metrics_listen = 127.0.0.1:9100\n"
	    "spool_dir = /srv/spool # really\n"
	    "local_domains = Example.com, example.org\n"
	    "users_file = /etc/facteur/users\n"
	    "aliases_file = /etc/facteur/aliases\n"
	    "mailbox_format = mbox\n"
	    "mailbox_path = /var/mail/%d/%u%%\n"
	    "relay_networks = 10.1.2.3/8, 2001:db8::/32, 192.0.2.1\n"
	    "route = *.free.fr smtp.free.fr\n"
	    "route = * [smarthost.mondomaine.com]:587 tls=verify "
	    "auth=/run/secrets/smarthost\n"
	    "dns_servers = 127.0.0.1:5353, [::1]\n"
	    "mx_port = 2525\n"
	    "tls_cert = /c.pem\ntls_key = /k.pem\n"
	    "tls_outbound = encrypt\n"
	    "tls_ca_file = /ca.pem\n"
	    "max_message_size = 1000\n"
	    "max_recipients = 5\n"
	    "max_connections = 6\n"
	    "max_connections_per_ip = 7\n"
	    "smtp_timeout = 90\n"
	    "retry_min = 120\n"
	    "retry_max = 1d\n"
	    "queue_lifetime = 3h\n"
	    "max_connections_per_destination = 2\n"
	    "delay_notice = 0\n"
	    "user = root\n"
	    "log_format = json\n"
	    "log_level = debug\n"
	    "flush_method = syncfs\n",
	    NULL);
	assert_round_trip("max_message_size = 3072K\nsmtp_timeout = 86399\n",
			  ENV("FACTEUR_LISTEN=", "FACTEUR_LOCAL_DOMAINS="));
}

/* A file that sets every key away from its default, the list keys with
 * several values. */
static const char every_key_text[] =
    "hostname = mx.example.test\n"
    "listen = 127.0.0.1:2525, [::1]:2587/submission, *:2465/smtps+proxy\n"
    "pop3_listen = 127.0.0.1:2110/pop3, [::1]:2995/pop3s\n"
    "metrics_listen = 127.0.0.1:9100\n"
    "spool_dir = /srv/spool\n"
    "local_domains = Example.test, example.org.\n"
    "users_file = /etc/facteur/users\n"
    "aliases_file = /etc/facteur/aliases\n"
    "mailbox_format = mbox\n"
    "mailbox_path = /srv/mail/%d/%u%%\n"
    "relay_networks = 10.1.2.3/8, 2001:db8::/32, 192.0.2.1\n"
    "route = *.free.fr smtp.free.fr\n"
    "route = * [smarthost.example.net]:587 tls=verify auth=/run/s/relay\n"
    "dns_servers = 127.0.0.1:5353, [::1]\n"
    "mx_port = 2525\n"
    "tls_cert = /c.pem\n"
    "tls_key = /k.pem\n"
    "tls_outbound = verify\n"
    "tls_ca_file = /ca.pem\n"
    "max_message_size = 3072K\n"
    "max_recipients = 5\n"
    "max_connections = 6\n"
    "max_connections_per_ip = 7\n"
    "max_connections_per_destination = 2\n"
    "smtp_timeout = 90\n"
    "retry_min = 120\n"
    "retry_max = 1d\n"
    "queue_lifetime = 3h\n"
    "delay_notice = 0\n"
    "user = nobody\n"
    "log_format = json\n"
    "log_level = debug\n"
    "flush_method = syncfs\n"
    "max_envelope_size = 2K\n"
    "max_envelope_memory = 1G\n"
    "ipv6_prefix_length = 56\n"
    "auth_fail_limit = 3/90s\n"
    "proxy_networks = 192.0.2.5, 2001:db8::/48\n"
    "reuse_port = yes\n"
    "sender_route = example.org [smtp.a.example]:465 tls=implicit "
    "auth=/run/s/a\n"
    "sender_route = boss@example.test [10.0.0.9]:25\n"
    "srs_domain = Fwd.Example.org\n"
    "srs_secret_file = /etc/facteur/srs\n"
    "senders_file = /etc/facteur/senders\n"
    "dkim_sign = example.test sel1 /k/dkim.pem\n"
    "dkim_sign = example.org sel2 /k/ed.pem\n"
    "shape = gmail.com max_connections=3 rate=60/m\n"
    "shape = * pause=3s\n"
    "shape_redis = 127.0.0.1:6379/3\n"
    "mailbox_owner = nobody:nogroup\n"
    "mailbox_mode = 0640\n"
    "dnsbl = zen.example.test match=127.0.0.2,127.0.0.3\n"
    "dnsbl = bl.example.org.\n"
    "max_messages_per_ip = 30/m\n"
    "local_transport = lmtp:unix:/run/dovecot/lmtp\n"
    "submit_socket = /run/facteur.submit\n"
    "dane = yes\n"
    "milter = inet:127.0.0.1:8891 timeout=10s default=accept\n"
    "milter = unix:/run/milter.sock\n"
    "mta_sts = no\n"
    "tlsrpt_from = tlsrpt@example.org\n";

/* -n's printout of a file that sets every key loads back as the same
 * printout; and no line of it is a default's, so every key's printer
 * and parser is in the loop. */
static void test_config_print_round_trips_every_key(void **state)
{
	(void)state;
	struct passwd *nobody = getpwnam("nobody");

	if (nobody == NULL || getgrnam("nogroup") == NULL ||
	    nobody->pw_uid == geteuid())
		skip(); /* user and mailbox_owner need these accounts */
	assert_round_trip(every_key_text, NULL);

	struct config *defaults = support_load_config("", NULL);
	struct config *every = support_load_config(every_key_text, NULL);
	char *default_text = print_config(defaults);
	char *every_text = print_config(every);
	char *lines = NULL;
	size_t keys = 0;

	assert_true(asprintf(&lines, "\n%s", every_text) > 0);
	for (char *line = default_text, *nl; *line != '\0'; line = nl + 1) {
		char wanted[1024];

		nl = strchr(line, '\n');
		assert_non_null(nl);
		snprintf(wanted, sizeof(wanted), "\n%.*s\n", (int)(nl - line),
			 line);
		if (strstr(lines, wanted) != NULL)
			fail_msg("left at its default: %s", wanted + 1);
		keys++;
	}
	assert_int_equal(keys, 55);
	free(lines);
	free(default_text);
	free(every_text);
	config_free(defaults);
	config_free(every);
}

static void test_config_print_shows_normalised_values(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("relay_networks = 10.1.2.3/8\n"
				"max_message_size = 2048K\n"
				"smtp_timeout = 90\n"
				"local_domains = A.Test\n"
				"dns_servers = 127.0.0.1:5353, [::1]\n",
				NULL);

	assert_printed(cfg, "relay_networks", "10.0.0.0/8");
	assert_printed(cfg, "max_message_size", "2M");
	assert_printed(cfg, "smtp_timeout", "90s");
	assert_printed(cfg, "local_domains", "a.test");
	assert_printed(cfg, "dns_servers", "127.0.0.1:5353, [::1]");
	config_free(cfg);
}

/* The checkout's conf/, found from this file's path. */
static char *source_path(const char *rel)
{
	const char *file = __FILE__;
	const char *slash = strstr(file, "tests/unit/test_config.c");
	char *path;

	assert_non_null(slash);
	assert_true(asprintf(&path, "%.*s%s", (int)(slash - file), file, rel) >
		    0);
	return path;
}

static void test_config_shipped_file_loads(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	char *path = source_path("conf/facteur.conf");
	struct config *cfg = config_load(path, ENV("PATH=/bin"), &errors);

	if (cfg == NULL) {
		dump_errors(&errors);
		fail_msg("%s refused", path);
	}
	assert_string_equal(cfg->source, path);
	assert_int_equal(cfg->listen_count, 1);
	assert_string_equal(cfg->listen[0].text, "127.0.0.1:2525");
	assert_string_equal(cfg->spool_dir, "var/spool");
	assert_string_equal(cfg->mailbox_path, "var/mail/%d/%u");
	assert_int_equal(cfg->local_domains.count, 1);
	assert_string_equal(cfg->local_domains.items[0], "localhost");
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
	config_free(cfg);
	free(path);
}

static void test_config_shipped_file_mentions_every_key(void **state)
{
	(void)state;
	char *path = source_path("conf/facteur.conf");
	FILE *f = fopen(path, "r");
	char line[512];
	bool seen[COUNT_OF(spec_order)] = {false};

	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		const char *p = line[0] == '#' ? line + 1 : line;

		for (size_t i = 0; i < COUNT_OF(spec_order); i++) {
			size_t n = strlen(spec_order[i]);

			if (strncmp(p, spec_order[i], n) == 0 &&
			    strncmp(p + n, " =", 2) == 0)
				seen[i] = true;
		}
	}
	assert_int_equal(fclose(f), 0);
	for (size_t i = 0; i < COUNT_OF(spec_order); i++)
		if (!seen[i])
			fail_msg("conf/facteur.conf lacks a %s line",
				 spec_order[i]);
	free(path);
}

static void test_config_kubernetes_service_variables_are_ignored(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "",
	    ENV("FACTEUR_SERVICE_HOST=10.96.0.12", "FACTEUR_SERVICE_PORT=25",
		"FACTEUR_SERVICE_PORT_SMTP=25",
		"FACTEUR_SERVICE_PORT_METRICS_HTTP=9187",
		"FACTEUR_PORT=tcp://10.96.0.12:25",
		"FACTEUR_PORT_25_TCP=tcp://10.96.0.12:25",
		"FACTEUR_PORT_25_TCP_PROTO=tcp", "FACTEUR_PORT_25_TCP_PORT=25",
		"FACTEUR_PORT_25_TCP_ADDR=10.96.0.12",
		"FACTEUR_PORT_53_UDP_ADDR=10.96.0.12",
		"FACTEUR_PORT_9187_SCTP=sctp://10.96.0.12:9187",
		"FACTEUR_MAX_RECIPIENTS=7"));

	assert_int_equal(cfg->max_recipients, 7);
	config_free(cfg);
}

static void test_config_near_kubernetes_names_are_unknown_keys(void **state)
{
	(void)state;
	load_fails_with("", ENV("FACTEUR_SERVICE_NAME=x"),
			"FACTEUR_SERVICE_NAME: unknown key \"service_name\"");
	load_fails_with("", ENV("FACTEUR_SERVICE_PORT_=1"),
			"FACTEUR_SERVICE_PORT_: unknown key \"service_port_\"");
	load_fails_with("", ENV("FACTEUR_PORT_25=1"),
			"FACTEUR_PORT_25: unknown key \"port_25\"");
	load_fails_with("", ENV("FACTEUR_PORT_X_TCP=1"),
			"FACTEUR_PORT_X_TCP: unknown key \"port_x_tcp\"");
	load_fails_with("", ENV("FACTEUR_PORT_25_TCP_HOST=1"),
			"FACTEUR_PORT_25_TCP_HOST: unknown key "
			"\"port_25_tcp_host\"");
	load_fails_with("", ENV("FACTEUR_port=1"),
			"FACTEUR_port: unknown key \"port\"");
}

static void test_config_file_variable_sets_the_key(void **state)
{
	(void)state;
	char *number = support_temp_file("42\n");
	char *list = support_temp_file("a.test, b.test\r\n");
	char *users = support_temp_file("/etc/facteur/users");
	char *v1, *v2, *v3;
	struct config *cfg;

	assert_true(asprintf(&v1, "FACTEUR_MAX_RECIPIENTS_FILE=%s", number) >
		    0);
	assert_true(asprintf(&v2, "FACTEUR_LOCAL_DOMAINS_FILE=%s", list) > 0);
	assert_true(asprintf(&v3, "FACTEUR_USERS_FILE_FILE=%s", users) > 0);
	cfg = support_load_config("max_recipients = 5\n", ENV(v1, v2, v3));
	assert_int_equal(cfg->max_recipients, 42);
	assert_int_equal(cfg->local_domains.count, 2);
	assert_string_equal(cfg->local_domains.items[1], "b.test");
	assert_string_equal(cfg->users_file, "/etc/facteur/users");
	config_free(cfg);
	assert_int_equal(unlink(number), 0);
	assert_int_equal(unlink(list), 0);
	assert_int_equal(unlink(users), 0);
	free(number);
	free(list);
	free(users);
	free(v1);
	free(v2);
	free(v3);
}

static void test_config_file_variable_errors_name_it(void **state)
{
	(void)state;
	char *bad = support_temp_file("ten\n");
	char *two_lines = support_temp_file("/a\n/b\n");
	char *v1, *v2;

	assert_true(asprintf(&v1, "FACTEUR_MAX_RECIPIENTS_FILE=%s", bad) > 0);
	load_fails_with("", ENV(v1),
			"FACTEUR_MAX_RECIPIENTS_FILE: max_recipients: "
			"invalid number \"ten\"");
	/* Only the final newline goes: a second line is in the value. */
	assert_true(asprintf(&v2, "FACTEUR_SPOOL_DIR_FILE=%s", two_lines) > 0);
	load_fails_with("", ENV(v2),
			"FACTEUR_SPOOL_DIR_FILE: spool_dir: control character "
			"in value");
	load_fails_with(
	    "", ENV("FACTEUR_SPOOL_DIR_FILE=/nonexistent/spool"),
	    "FACTEUR_SPOOL_DIR_FILE: spool_dir: /nonexistent/spool: "
	    "cannot open: No such file or directory");
	load_fails_with("", ENV("FACTEUR_SPOOL_DIR_FILE="),
			"FACTEUR_SPOOL_DIR_FILE: spool_dir: empty file name");
	load_fails_with("", ENV("FACTEUR_BOGUS_FILE=/etc/hostname"),
			"FACTEUR_BOGUS_FILE: unknown key \"bogus_file\"");
	assert_int_equal(unlink(bad), 0);
	assert_int_equal(unlink(two_lines), 0);
	free(bad);
	free(two_lines);
	free(v1);
	free(v2);
}

static void test_config_file_variable_and_plain_variable_conflict(void **state)
{
	(void)state;
	char *path = support_temp_file("9\n");
	char *var;

	assert_true(asprintf(&var, "FACTEUR_MAX_RECIPIENTS_FILE=%s", path) > 0);
	load_fails_with("", ENV("FACTEUR_MAX_RECIPIENTS=9", var),
			"FACTEUR_MAX_RECIPIENTS_FILE: max_recipients: also set "
			"by FACTEUR_MAX_RECIPIENTS; set only one of them");
	assert_int_equal(unlink(path), 0);
	free(path);
	free(var);
}

static void test_config_load_reads_the_named_file(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	char *path = support_temp_file("max_recipients = 42\nbogus = 1\n");
	char expected[256];
	struct config *cfg;

	cfg = config_load(path, NULL, &errors);
	assert_null(cfg);
	assert_int_equal(errors.count, 1);
	snprintf(expected, sizeof(expected), "%s:2: unknown key \"bogus\"",
		 path);
	assert_string_equal(errors.messages[0], expected);
	config_errors_clear(&errors);
	assert_int_equal(unlink(path), 0);
	free(path);

	path = support_temp_file("max_recipients = 42\n");
	cfg = config_load(path, ENV("FACTEUR_MAX_CONNECTIONS=8"), &errors);
	assert_non_null(cfg);
	assert_int_equal(cfg->max_recipients, 42);
	assert_int_equal(cfg->max_connections, 8);
	assert_string_equal(cfg->source, path);
	config_free(cfg);
	assert_int_equal(unlink(path), 0);
	free(path);
}

static void test_config_load_missing_file_is_an_error(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct config *cfg;

	cfg = config_load("missing.conf", ENV("FACTEUR_NOPE=1"), &errors);
	assert_null(cfg);
	assert_int_equal(errors.count, 2);
	assert_string_equal(errors.messages[0],
			    "missing.conf: cannot open: No such file or "
			    "directory");
	assert_string_equal(errors.messages[1],
			    "FACTEUR_NOPE: unknown key \"nope\"");
	config_errors_clear(&errors);
}

static void test_config_load_uses_facteur_config_variable(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	char *path = support_temp_file("max_recipients = 43\n");
	char *var;
	struct config *cfg;

	assert_true(asprintf(&var, "FACTEUR_CONFIG=%s", path) > 0);
	cfg = config_load(NULL, ENV(var), &errors);
	assert_non_null(cfg);
	assert_int_equal(cfg->max_recipients, 43);
	assert_string_equal(cfg->source, path);
	config_free(cfg);

	/* -c wins over FACTEUR_CONFIG */
	cfg = config_load("/nonexistent/x.conf", ENV(var), &errors);
	assert_null(cfg);
	assert_string_equal(errors.messages[0],
			    "/nonexistent/x.conf: cannot open: No such file "
			    "or directory");
	config_errors_clear(&errors);

	cfg = config_load(NULL, ENV("FACTEUR_CONFIG=/nonexistent/y.conf"),
			  &errors);
	assert_null(cfg);
	assert_int_equal(errors.count, 1);
	assert_string_equal(errors.messages[0],
			    "/nonexistent/y.conf: cannot open: No such file "
			    "or directory");
	config_errors_clear(&errors);
	assert_int_equal(unlink(path), 0);
	free(path);
	free(var);
}

static void test_config_load_directory_is_an_error(void **state)
{
	(void)state;
	struct config_errors errors = {0};

	assert_null(config_load("/tmp", NULL, &errors));
	assert_int_equal(errors.count, 1);
	assert_string_equal(errors.messages[0],
			    "/tmp: cannot read: Is a directory");
	config_errors_clear(&errors);
}

static void test_config_load_without_file_uses_defaults(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct config *cfg;

	if (access(CONFIG_DEFAULT_FILE, F_OK) == 0)
		skip(); /* this machine has a system configuration */
	cfg = config_load(NULL, ENV("FACTEUR_SPOOL_DIR=/q"), &errors);
	assert_non_null(cfg);
	assert_null(cfg->source);
	assert_string_equal(cfg->spool_dir, "/q");
	config_free(cfg);
}

static void test_config_reuse_port_is_yes_or_no(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_false(cfg->reuse_port);
	config_free(cfg);
	cfg = support_load_config("reuse_port = yes\n", NULL);
	assert_true(cfg->reuse_port);
	config_free(cfg);
	cfg = support_load_config("reuse_port = yes\n",
				  ENV("FACTEUR_REUSE_PORT=no"));
	assert_false(cfg->reuse_port);
	config_free(cfg);
	value_fails("reuse_port", "true");
	value_fails("reuse_port", "Yes");
	value_fails("reuse_port", "");
}

/* A key added later is printed after the others: -n output read by
 * scripts keeps its order. */
static void test_config_sender_route_is_printed_last(void **state)
{
	(void)state;
	struct config *cfg = support_load_config(
	    "reuse_port = yes\nsender_route = a.test [relay.test]\n", NULL);
	char *text = print_config(cfg);
	size_t len = strlen(text);
	const char *line =
	    "\nreuse_port = yes\nsender_route = a.test [relay.test]\n";
	assert_true(len > strlen(line));
	/* After them come only the keys added since (srs_domain...). */
	assert_non_null(strstr(text, line));
	assert_null(strstr(strstr(text, line), "\nproxy_networks ="));
	free(text);
	config_free(cfg);
}

static void test_config_srs_and_senders_keys(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("", NULL);
	assert_null(cfg->srs_domain);
	assert_null(cfg->srs_secret_file);
	assert_null(cfg->senders_file);
	config_free(cfg);
	cfg = support_load_config("srs_domain = Fwd.Example.ORG\n"
				  "srs_secret_file = /etc/facteur/srs\n"
				  "senders_file = /etc/facteur/senders\n",
				  NULL);
	assert_string_equal(cfg->srs_domain, "fwd.example.org");
	assert_string_equal(cfg->srs_secret_file, "/etc/facteur/srs");
	assert_string_equal(cfg->senders_file, "/etc/facteur/senders");
	config_free(cfg);
	value_fails("srs_domain", "not a domain");
	value_fails("srs_domain", "a..b");
}

/* dkim_sign: lines add up in a file; the environment separates entries
 * with ';' (a key path may hold a comma). The key files are read with
 * the other named files, not here. */
static void test_config_dkim_sign_lines(void **state)
{
	(void)state;
	struct config *cfg =
	    support_load_config("dkim_sign = example.com sel1 /k/rsa,1.pem\n"
				"dkim_sign = Example.com  sel2\t/k/ed.pem\n",
				NULL);
	assert_int_equal(cfg->dkim_sign_count, 2);
	assert_string_equal(cfg->dkim_sign[0].keyfile, "/k/rsa,1.pem");
	assert_string_equal(cfg->dkim_sign[1].domain, "Example.com");
	assert_string_equal(cfg->dkim_sign[1].selector, "sel2");
	assert_string_equal(cfg->dkim_sign[1].origin, "x.conf:2");
	char *text = print_config(cfg);
	assert_non_null(strstr(text, "\ndkim_sign = example.com sel1 "
				     "/k/rsa,1.pem\ndkim_sign = Example.com "
				     "sel2 /k/ed.pem\n"));
	free(text);
	config_free(cfg);
	cfg = support_load_config(
	    "dkim_sign = a.org s /x\n",
	    ENV("FACTEUR_DKIM_SIGN=b.org s1 /k1; b.org s2 /k2"));
	assert_int_equal(cfg->dkim_sign_count, 2);
	assert_string_equal(cfg->dkim_sign[1].keyfile, "/k2");
	assert_string_equal(cfg->dkim_sign[1].origin, "FACTEUR_DKIM_SIGN");
	config_free(cfg);
	cfg = support_load_config("", NULL);
	assert_int_equal(cfg->dkim_sign_count, 0);
	config_free(cfg);
	value_fails("dkim_sign", "example.com sel");
	value_fails("dkim_sign", "example.com sel /k extra");
	value_fails("dkim_sign", "exa_mple.com sel /k");
	value_fails("dkim_sign", "example.com -sel /k");
	value_fails("dkim_sign", "example.com sel..x /k");
}

/* The lines of a named file: numbered, trimmed, comments and blanks told
 * apart from entries and indented lines, a NUL byte reported once. */
static void test_config_lines_of_a_named_file(void **state)
{
	(void)state;
	static const char text[] = "first: a\r\n  \n# comment\n\tcont \n"
				   "  # indented comment\nmid\0dle\nlast";
	static const struct {
		enum config_line kind;
		const char *text;
	} want[] = {
	    {CONFIG_LINE_ENTRY, "first: a"}, {CONFIG_LINE_EMPTY, NULL},
	    {CONFIG_LINE_EMPTY, NULL},	     {CONFIG_LINE_INDENTED, "cont"},
	    {CONFIG_LINE_EMPTY, NULL},	     {CONFIG_LINE_BROKEN, NULL},
	    {CONFIG_LINE_ENTRY, "last"},
	};
	struct config_errors errors = {0};
	struct config_lines lines;
	const char *line;
	size_t len;

	config_lines_start(&lines, text, sizeof(text) - 1, "f", "users_file",
			   &errors);
	for (size_t i = 0; i < COUNT_OF(want); i++) {
		assert_int_equal(config_lines_next(&lines, &line, &len),
				 want[i].kind);
		assert_int_equal(lines.lineno, i + 1);
		if (want[i].text != NULL) {
			assert_int_equal(len, strlen(want[i].text));
			assert_memory_equal(line, want[i].text, len);
		}
	}
	assert_int_equal(config_lines_next(&lines, &line, &len),
			 CONFIG_LINE_END);
	assert_int_equal(config_lines_next(&lines, &line, &len),
			 CONFIG_LINE_END);
	assert_int_equal(errors.count, 1);
	assert_string_equal(errors.messages[0],
			    "f:6: users_file: NUL byte in line");
	config_errors_clear(&errors);

	config_lines_start(&lines, "", 0, "f", "users_file", &errors);
	assert_int_equal(config_lines_next(&lines, &line, &len),
			 CONFIG_LINE_END);
	assert_int_equal(lines.lineno, 0);
	config_lines_start(&lines, "a\n", 2, "f", "users_file", &errors);
	assert_int_equal(config_lines_next(&lines, &line, &len),
			 CONFIG_LINE_ENTRY);
	assert_int_equal(config_lines_next(&lines, &line, &len),
			 CONFIG_LINE_END);
	assert_int_equal(lines.lineno, 1);
	assert_int_equal(errors.count, 0);
}

static void test_config_hostname_without_a_dot_is_warned_about(void **state)
{
	(void)state;
	struct config *cfg = support_load_config("hostname = mailhost\n", NULL);
	const char *why = config_hostname_warning(cfg);
	assert_non_null(why);
	assert_non_null(strstr(why, "no dot"));
	config_free(cfg);
	cfg = support_load_config("hostname = mx.example.org\n", NULL);
	assert_null(config_hostname_warning(cfg));
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_config_defaults),
	    cmocka_unit_test(
		test_config_default_user_is_facteur_when_it_exists),
	    cmocka_unit_test(
		test_config_hash_starts_a_comment_only_at_line_start),
	    cmocka_unit_test(test_config_blank_lines_spaces_and_crlf),
	    cmocka_unit_test(test_config_value_may_contain_equals),
	    cmocka_unit_test(test_config_line_without_equals_is_an_error),
	    cmocka_unit_test(test_config_scalar_key_last_wins),
	    cmocka_unit_test(test_config_list_key_repeats_append),
	    cmocka_unit_test(test_config_empty_list_value_empties_the_list),
	    cmocka_unit_test(test_config_empty_list_entry_is_an_error),
	    cmocka_unit_test(test_config_environment_overrides_file),
	    cmocka_unit_test(test_config_environment_replaces_file_lists),
	    cmocka_unit_test(test_config_unknown_key_is_an_error),
	    cmocka_unit_test(test_config_unknown_facteur_variable_is_an_error),
	    cmocka_unit_test(test_config_facteur_config_variable_is_not_a_key),
	    cmocka_unit_test(test_config_error_names_file_line_and_key),
	    cmocka_unit_test(test_config_collects_every_error_in_order),
	    cmocka_unit_test(test_config_errors_append_to_existing_ones),
	    cmocka_unit_test(test_config_error_quotes_control_characters),
	    cmocka_unit_test(test_config_long_values_are_cut_in_messages),
	    cmocka_unit_test(test_config_parse_duration),
	    cmocka_unit_test(test_config_parse_size),
	    cmocka_unit_test(test_config_size_and_duration_keys),
	    cmocka_unit_test(test_config_count_keys),
	    cmocka_unit_test(test_config_keys_beyond_the_spec_table),
	    cmocka_unit_test(test_config_parse_listen_ipv4_ipv6_and_modes),
	    cmocka_unit_test(test_config_listen_error_messages),
	    cmocka_unit_test(test_config_metrics_listen),
	    cmocka_unit_test(test_config_parse_cidr),
	    cmocka_unit_test(test_config_cidr_match_v4_v6_and_mapped),
	    cmocka_unit_test(test_config_cidr_match_zero_prefix_matches_all),
	    cmocka_unit_test(test_config_relay_networks_key),
	    cmocka_unit_test(test_config_dns_servers),
	    cmocka_unit_test(test_config_hostname_and_local_domains),
	    cmocka_unit_test(test_config_paths_and_optional_files),
	    cmocka_unit_test(test_config_mailbox_format_and_path),
	    cmocka_unit_test(test_config_flush_method),
	    cmocka_unit_test(test_config_envelope_budgets),
	    cmocka_unit_test(test_config_ipv6_prefix_length),
	    cmocka_unit_test(test_config_auth_fail_limit),
	    cmocka_unit_test(test_config_dnsbl_and_message_rate),
	    cmocka_unit_test(test_config_milter),
	    cmocka_unit_test(test_config_proxy_modes_and_networks),
	    cmocka_unit_test(test_config_enumerated_keys),
	    cmocka_unit_test(test_config_mx_port),
	    cmocka_unit_test(test_config_user),
	    cmocka_unit_test(test_config_route_key),
	    cmocka_unit_test(test_config_sender_route_key),
	    cmocka_unit_test(test_config_shape_key),
	    cmocka_unit_test(test_config_mailbox_owner_and_mode),
	    cmocka_unit_test(test_config_tls_listeners_need_cert_and_key),
	    cmocka_unit_test(test_config_retry_min_above_retry_max),
	    cmocka_unit_test(test_config_local_transport),
	    cmocka_unit_test(test_config_print_lists_every_key_in_spec_order),
	    cmocka_unit_test(test_config_mta_sts_follows_tls_outbound),
	    cmocka_unit_test(test_config_print_round_trips),
	    cmocka_unit_test(test_config_print_round_trips_every_key),
	    cmocka_unit_test(test_config_lines_of_a_named_file),
	    cmocka_unit_test(test_config_print_shows_normalised_values),
	    cmocka_unit_test(test_config_shipped_file_loads),
	    cmocka_unit_test(test_config_shipped_file_mentions_every_key),
	    cmocka_unit_test(test_config_load_reads_the_named_file),
	    cmocka_unit_test(
		test_config_kubernetes_service_variables_are_ignored),
	    cmocka_unit_test(
		test_config_near_kubernetes_names_are_unknown_keys),
	    cmocka_unit_test(test_config_file_variable_sets_the_key),
	    cmocka_unit_test(test_config_file_variable_errors_name_it),
	    cmocka_unit_test(
		test_config_file_variable_and_plain_variable_conflict),
	    cmocka_unit_test(test_config_load_missing_file_is_an_error),
	    cmocka_unit_test(test_config_load_uses_facteur_config_variable),
	    cmocka_unit_test(test_config_load_directory_is_an_error),
	    cmocka_unit_test(test_config_load_without_file_uses_defaults),
	    cmocka_unit_test(test_config_reuse_port_is_yes_or_no),
	    cmocka_unit_test(test_config_sender_route_is_printed_last),
	    cmocka_unit_test(test_config_srs_and_senders_keys),
	    cmocka_unit_test(test_config_dkim_sign_lines),
	    cmocka_unit_test(
		test_config_hostname_without_a_dot_is_warned_about),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
