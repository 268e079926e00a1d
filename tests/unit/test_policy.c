/* Unit tests of relay decisions, local existence and alias expansion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "facteur/auth.h"
#include "facteur/policy.h"
#include "support.h"

static const char config_text[] =
    "local_domains = Example.COM, example.org\n"
    "relay_networks = 192.0.2.0/24, 2001:db8::/32\n";

static const char users_text[] = "alice@example.com:$6$x$y\n"
				 "bob@example.com:$6$x$y\n"
				 "alice@example.org:$6$x$y\n";

static const char aliases_text[] = "# test aliases\n"
				   "info: alice\n"
				   "Sales@Example.COM: alice, bob@EXAMPLE.com\n"
				   "list: alice, bob,\n"
				   "  Carol@Remote.NET\n"
				   "\tdave@remote.net\n"
				   "\n"
				   "team: list, sales, info\n"
				   "root: root, alice\n"
				   "fwd: friend@Remote.NET\n"
				   "loop1: loop2\n"
				   "loop2: loop1\n"
				   "self: self\n"
				   "unsafe: ../x\n"
				   "ghost: nobody\n"
				   "cross: alice@example.org\n"
				   "other@example.org: info\n"
				   "twice: alice, Alice, alice@EXAMPLE.com\n";

struct fixture {
	struct config *cfg;
	struct auth_users *users;
	struct policy *with_users;    /* users file and aliases */
	struct policy *without_users; /* aliases, no users file */
	struct policy *bare;	      /* neither */
};

static struct config *load_config(const char *text)
{
	struct config_errors errors = {0};
	struct config *cfg =
	    config_load_string(text, "test.conf", NULL, &errors);
	for (size_t i = 0; i < errors.count; i++)
		fprintf(stderr, "%s\n", errors.messages[i]);
	config_errors_clear(&errors);
	return cfg;
}

static struct policy *make_policy(const struct config *cfg,
				  const struct auth_users *users,
				  const char *aliases)
{
	struct config_errors errors = {0};
	struct policy *p =
	    policy_new_with_aliases(cfg, users, aliases, "aliases", &errors);
	for (size_t i = 0; i < errors.count; i++)
		fprintf(stderr, "%s\n", errors.messages[i]);
	config_errors_clear(&errors);
	return p;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	if (f == NULL)
		return -1;
	f->cfg = load_config(config_text);
	struct config_errors errors = {0};
	f->users = auth_users_parse(users_text, "users", &errors);
	config_errors_clear(&errors);
	if (f->cfg == NULL || f->users == NULL)
		return -1;
	f->with_users = make_policy(f->cfg, f->users, aliases_text);
	f->without_users = make_policy(f->cfg, NULL, aliases_text);
	f->bare = make_policy(f->cfg, NULL, NULL);
	if (f->with_users == NULL || f->without_users == NULL ||
	    f->bare == NULL)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	policy_free(f->with_users);
	policy_free(f->without_users);
	policy_free(f->bare);
	auth_users_free(f->users);
	config_free(f->cfg);
	free(f);
	return 0;
}

enum client_kind {
	IN_NET_V4,	/* 192.0.2.10, inside relay_networks */
	OUTSIDE_V4,	/* 198.51.100.7 */
	IN_NET_V6,	/* 2001:db8::5 */
	OUTSIDE_V6,	/* 2001:db9::1 */
	IN_NET_MAPPED,	/* ::ffff:192.0.2.10 */
	OUTSIDE_MAPPED, /* ::ffff:198.51.100.7 */
	AUTH_OUTSIDE,	/* 198.51.100.7, authenticated */
	NO_ADDRESS,	/* no address known, not authenticated */
};

struct client_storage {
	struct sockaddr_storage ss;
	struct policy_client client;
};

static const struct policy_client *make_client(struct client_storage *cs,
					       enum client_kind kind)
{
	static const char *const v4[] = {
	    [IN_NET_V4] = "192.0.2.10",
	    [OUTSIDE_V4] = "198.51.100.7",
	    [AUTH_OUTSIDE] = "198.51.100.7",
	};
	static const char *const v6[] = {
	    [IN_NET_V6] = "2001:db8::5",
	    [OUTSIDE_V6] = "2001:db9::1",
	    [IN_NET_MAPPED] = "::ffff:192.0.2.10",
	    [OUTSIDE_MAPPED] = "::ffff:198.51.100.7",
	};
	memset(cs, 0, sizeof *cs);
	cs->client.authenticated = kind == AUTH_OUTSIDE;
	if (kind == NO_ADDRESS)
		return &cs->client;
	if (kind < sizeof v4 / sizeof v4[0] && v4[kind] != NULL) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&cs->ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(40000);
		assert_int_equal(inet_pton(AF_INET, v4[kind], &sin->sin_addr),
				 1);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&cs->ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(40000);
		assert_int_equal(
		    inet_pton(AF_INET6, v6[kind], &sin6->sin6_addr), 1);
	}
	cs->client.addr = (const struct sockaddr *)&cs->ss;
	return &cs->client;
}

/* The targets as "address/L address/R ..." in their order. */
static void format_targets(const struct policy_expansion *exp, char *buf,
			   size_t len)
{
	size_t n = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < exp->count; i++) {
		int w = snprintf(buf + n, len - n, "%s%s/%c", i > 0 ? " " : "",
				 exp->targets[i].address,
				 exp->targets[i].local ? 'L' : 'R');
		assert_true(w > 0 && (size_t)w < len - n);
		n += (size_t)w;
	}
}

static void expect(const struct policy *p, enum client_kind kind,
		   const char *address, enum policy_verdict verdict,
		   const char *targets)
{
	struct client_storage cs;
	struct policy_expansion exp = {0};
	enum policy_verdict got =
	    policy_check_recipient(p, make_client(&cs, kind), address, &exp);
	char buf[1024];
	format_targets(&exp, buf, sizeof buf);
	if (got != verdict || strcmp(buf, targets) != 0)
		fail_msg("%s (client %d): verdict %d targets \"%s\", expected "
			 "%d \"%s\"",
			 address, (int)kind, (int)got, buf, (int)verdict,
			 targets);
	if (verdict != POLICY_ACCEPT)
		assert_int_equal(exp.count, 0);
	policy_expansion_clear(&exp);
	assert_null(exp.targets);
	assert_int_equal(exp.count, 0);
}

struct decision {
	const char *address;
	enum client_kind client;
	enum policy_verdict verdict;
	const char *targets;
};

static void run_table(const struct policy *p, const struct decision *table,
		      size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect(p, table[i].client, table[i].address, table[i].verdict,
		       table[i].targets);
}

#define RUN_TABLE(p, t) run_table((p), (t), sizeof(t) / sizeof((t)[0]))

static void test_policy_relay_needs_network_or_authentication(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    {"x@Remote.NET", IN_NET_V4, POLICY_ACCEPT, "x@remote.net/R"},
	    {"x@Remote.NET", IN_NET_V6, POLICY_ACCEPT, "x@remote.net/R"},
	    {"x@Remote.NET", IN_NET_MAPPED, POLICY_ACCEPT, "x@remote.net/R"},
	    {"X@Remote.NET", AUTH_OUTSIDE, POLICY_ACCEPT, "X@remote.net/R"},
	    {"x@remote.net", OUTSIDE_V4, POLICY_RELAY_DENIED, ""},
	    {"x@remote.net", OUTSIDE_V6, POLICY_RELAY_DENIED, ""},
	    {"x@remote.net", OUTSIDE_MAPPED, POLICY_RELAY_DENIED, ""},
	    {"x@remote.net", NO_ADDRESS, POLICY_RELAY_DENIED, ""},
	    /* A subdomain of a local domain is not local. */
	    {"x@sub.example.com", OUTSIDE_V4, POLICY_RELAY_DENIED, ""},
	};
	RUN_TABLE(f->bare, table);
	RUN_TABLE(f->with_users, table);
}

static void test_policy_may_relay_per_client(void **state)
{
	struct fixture *f = *state;
	struct client_storage cs;
	assert_true(policy_may_relay(f->bare, make_client(&cs, IN_NET_V4)));
	assert_true(policy_may_relay(f->bare, make_client(&cs, IN_NET_V6)));
	assert_true(policy_may_relay(f->bare, make_client(&cs, IN_NET_MAPPED)));
	assert_true(policy_may_relay(f->bare, make_client(&cs, AUTH_OUTSIDE)));
	assert_false(policy_may_relay(f->bare, make_client(&cs, OUTSIDE_V4)));
	assert_false(policy_may_relay(f->bare, make_client(&cs, OUTSIDE_V6)));
	assert_false(
	    policy_may_relay(f->bare, make_client(&cs, OUTSIDE_MAPPED)));
	assert_false(policy_may_relay(f->bare, make_client(&cs, NO_ADDRESS)));
	assert_false(policy_may_relay(f->bare, NULL));
}

static void test_policy_local_without_users_file_every_part_exists(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    {"Anyone@EXAMPLE.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "anyone@example.com/L"},
	    {"anyone@example.org", OUTSIDE_V6, POLICY_ACCEPT,
	     "anyone@example.org/L"},
	    {"anyone@example.org", IN_NET_V4, POLICY_ACCEPT,
	     "anyone@example.org/L"},
	    {"anyone@example.org", AUTH_OUTSIDE, POLICY_ACCEPT,
	     "anyone@example.org/L"},
	    {"anyone@example.org", NO_ADDRESS, POLICY_ACCEPT,
	     "anyone@example.org/L"},
	};
	RUN_TABLE(f->bare, table);
	RUN_TABLE(f->without_users, table);
}

static void test_policy_local_with_users_file_only_users_exist(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    {"ALICE@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L"},
	    {"alice@example.org", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.org/L"},
	    {"bob@example.org", OUTSIDE_V4, POLICY_UNKNOWN_USER, ""},
	    {"carol@example.com", OUTSIDE_V4, POLICY_UNKNOWN_USER, ""},
	    /* Even for a client that may relay. */
	    {"carol@example.com", IN_NET_V4, POLICY_UNKNOWN_USER, ""},
	    {"carol@example.com", AUTH_OUTSIDE, POLICY_UNKNOWN_USER, ""},
	    /* Alias keys exist. */
	    {"info@example.org", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.org/L"},
	};
	RUN_TABLE(f->with_users, table);
}

static void test_policy_postmaster_always_exists(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    {"postmaster", OUTSIDE_V4, POLICY_ACCEPT,
	     "postmaster@example.com/L"},
	    {"PostMaster", OUTSIDE_V6, POLICY_ACCEPT,
	     "postmaster@example.com/L"},
	    {"Postmaster@Example.org", OUTSIDE_V4, POLICY_ACCEPT,
	     "postmaster@example.org/L"},
	    {"postmaster@remote.net", OUTSIDE_V4, POLICY_RELAY_DENIED, ""},
	};
	RUN_TABLE(f->bare, table);
	/* The users file does not list postmaster: it exists anyway. */
	RUN_TABLE(f->with_users, table);
	/* Other bare local parts are not addresses. */
	expect(f->bare, IN_NET_V4, "alice", POLICY_BAD_MAILBOX, "");
}

static void test_policy_postmaster_may_be_an_alias(void **state)
{
	struct fixture *f = *state;
	struct policy *p = make_policy(f->cfg, f->users, "postmaster: alice\n");
	assert_non_null(p);
	expect(p, OUTSIDE_V4, "postmaster", POLICY_ACCEPT,
	       "alice@example.com/L");
	expect(p, OUTSIDE_V4, "postmaster@example.org", POLICY_ACCEPT,
	       "alice@example.org/L");
	policy_free(p);
}

static void test_policy_aliases_expand(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    /* Single target, bare key, same domain. */
	    {"INFO@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L"},
	    /* A full-address key applies to its domain only. */
	    {"sales@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L bob@example.com/L"},
	    /* Several lines, remote targets for an outside client. */
	    {"list@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L bob@example.com/L Carol@remote.net/R "
	     "dave@remote.net/R"},
	    /* Recursive, without duplicates. */
	    {"team@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L bob@example.com/L Carol@remote.net/R "
	     "dave@remote.net/R"},
	    /* Remote only, for anyone. */
	    {"fwd@example.com", OUTSIDE_V6, POLICY_ACCEPT,
	     "friend@remote.net/R"},
	    {"fwd@example.com", NO_ADDRESS, POLICY_ACCEPT,
	     "friend@remote.net/R"},
	    /* A target naming itself is its own mailbox. */
	    {"root@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "root@example.com/L alice@example.com/L"},
	    {"self@example.org", OUTSIDE_V4, POLICY_ACCEPT,
	     "self@example.org/L"},
	    /* A cycle ends at the first address seen again. */
	    {"loop1@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "loop1@example.com/L"},
	    {"loop2@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "loop2@example.com/L"},
	    /* A target in another local domain. */
	    {"cross@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.org/L"},
	    /* Full key first, its bare target in its own domain. */
	    {"other@example.org", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.org/L"},
	    {"twice@example.com", OUTSIDE_V4, POLICY_ACCEPT,
	     "alice@example.com/L"},
	};
	RUN_TABLE(f->with_users, table);
	RUN_TABLE(f->without_users, table);
	/* A full-address key does not apply in another domain. */
	expect(f->with_users, OUTSIDE_V4, "sales@example.org",
	       POLICY_UNKNOWN_USER, "");
	expect(f->without_users, OUTSIDE_V4, "sales@example.org", POLICY_ACCEPT,
	       "sales@example.org/L");
}

static void test_policy_alias_to_unknown_user_is_refused(void **state)
{
	struct fixture *f = *state;
	expect(f->with_users, OUTSIDE_V4, "ghost@example.com",
	       POLICY_UNKNOWN_USER, "");
	expect(f->without_users, OUTSIDE_V4, "ghost@example.com", POLICY_ACCEPT,
	       "nobody@example.com/L");
}

static void test_policy_unsafe_local_parts_are_bad_mailboxes(void **state)
{
	struct fixture *f = *state;
	static const struct decision table[] = {
	    {"../x@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {"a/b@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {".hidden@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {".@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {"..@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {"@example.com", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    {"alice@", IN_NET_V4, POLICY_BAD_MAILBOX, ""},
	    /* Remote addresses are not paths here: relayed as they are. */
	    {"../x@remote.net", IN_NET_V4, POLICY_ACCEPT, "../x@remote.net/R"},
	    /* A dot inside is fine. */
	    {"first.last@example.com", IN_NET_V4, POLICY_ACCEPT,
	     "first.last@example.com/L"},
	};
	RUN_TABLE(f->bare, table);
	RUN_TABLE(f->without_users, table);
	/* An alias to an unsafe local part. */
	expect(f->without_users, IN_NET_V4, "unsafe@example.com",
	       POLICY_BAD_MAILBOX, "");
	expect(f->bare, IN_NET_V4, "unsafe@example.com", POLICY_ACCEPT,
	       "unsafe@example.com/L");
}

static void test_policy_local_part_safe_rules(void **state)
{
	(void)state;
	assert_true(policy_local_part_safe("alice", 5));
	assert_true(policy_local_part_safe("a.b", 3));
	assert_true(policy_local_part_safe("a..", 3));
	assert_false(policy_local_part_safe("", 0));
	assert_false(policy_local_part_safe(".", 1));
	assert_false(policy_local_part_safe("..", 2));
	assert_false(policy_local_part_safe(".hidden", 7));
	assert_false(policy_local_part_safe("a/b", 3));
	assert_false(policy_local_part_safe("a\0b", 3));
	/* Only `len` octets count. */
	assert_true(policy_local_part_safe("ab/c", 2));
}

static void test_policy_mailbox_path_refuses_what_leaves_the_root(void **state)
{
	struct fixture *f = *state;
	static const char *const refused[] = {
	    "\"/../../../escaped/pwn\"@example.com",
	    "ghost/deep/tree@example.com",
	    ".hidden@example.com",
	    "..@example.com",
	    "@example.com",
	    "alice@../etc",
	    "alice@a/b",
	    "alice@",
	    "no-domain",
	};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
		errno = 0;
		char *path = policy_mailbox_path(f->cfg, refused[i], NULL);
		if (path != NULL)
			fail_msg("%s gave the path %s", refused[i], path);
		assert_int_equal(errno, EINVAL);
	}
	assert_null(policy_mailbox_path(f->cfg, NULL, NULL));

	char *path =
	    policy_mailbox_path(f->cfg, "Alice.Smith@Example.COM", NULL);
	assert_non_null(path);
	assert_string_equal(path, "/var/mail/example.com/alice.smith");
	free(path);
	/* A quoted local part without a slash is an odd but harmless name. */
	path = policy_mailbox_path(f->cfg, "\"a b\"@example.org", NULL);
	assert_non_null(path);
	assert_string_equal(path, "/var/mail/example.org/\"a b\"");
	free(path);
}

static void test_policy_canonical_address(void **state)
{
	struct fixture *f = *state;
	static const char *const cases[][2] = {
	    {"Alice@Example.COM", "alice@example.com"},
	    {"Bob@Remote.NET", "Bob@remote.net"},
	    {"\"A@B\"@EXAMPLE.org", "\"a@b\"@example.org"},
	    {"postmaster", "postmaster@example.com"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *c = policy_canonical_address(f->bare, cases[i][0]);
		assert_non_null(c);
		assert_string_equal(c, cases[i][1]);
		free(c);
	}
}

/* "a0: a1", "a1: a2", ... `n` aliases in a chain. */
static char *chain_aliases(size_t n)
{
	size_t cap = n * 32 + 1, len = 0;
	char *text = malloc(cap);
	assert_non_null(text);
	text[0] = '\0';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(text + len, cap - len, "a%zu: a%zu\n",
					i, i + 1);
	return text;
}

static void test_policy_alias_chain_of_twenty_levels_is_fine(void **state)
{
	struct fixture *f = *state;
	char *text = chain_aliases(20);
	struct policy *p = make_policy(f->cfg, NULL, text);
	free(text);
	assert_non_null(p);
	expect(p, OUTSIDE_V4, "a0@example.com", POLICY_ACCEPT,
	       "a20@example.com/L");
	policy_free(p);
}

static void test_policy_alias_deeper_than_twenty_is_a_loop(void **state)
{
	struct fixture *f = *state;
	char *text = chain_aliases(21);
	struct policy *p = make_policy(f->cfg, NULL, text);
	free(text);
	assert_non_null(p);
	expect(p, OUTSIDE_V4, "a0@example.com", POLICY_ALIAS_LOOP, "");
	expect(p, OUTSIDE_V4, "a1@example.com", POLICY_ACCEPT,
	       "a21@example.com/L");
	policy_free(p);
}

static void test_policy_alias_fan_out_is_bounded(void **state)
{
	struct fixture *f = *state;
	/* Each level names the next three times: 3^10 paths in 10 levels. */
	char text[1024];
	size_t len = 0;
	for (int i = 0; i < 10; i++)
		len += (size_t)snprintf(text + len, sizeof text - len,
					"x%d: x%d, x%d, x%d\n", i, i + 1, i + 1,
					i + 1);
	struct policy *p = make_policy(f->cfg, NULL, text);
	assert_non_null(p);
	expect(p, OUTSIDE_V4, "x0@example.com", POLICY_ALIAS_LOOP, "");
	/* 3^5 paths are within bounds, and give one mailbox. */
	expect(p, OUTSIDE_V4, "x5@example.com", POLICY_ACCEPT,
	       "x10@example.com/L");
	policy_free(p);
}

static void test_policy_aliases_errors_name_file_and_line(void **state)
{
	struct fixture *f = *state;
	struct config_errors errors = {0};
	struct policy *p = policy_new_with_aliases(
	    f->cfg, NULL,
	    "  indented: first\n"     /* 1: continues nothing */
	    "ok: alice\n"	      /* 2 */
	    "no colon\n"	      /* 3 */
	    "empty:\n"		      /* 4: no target */
	    "pipe: |/bin/cat\n"	      /* 5 */
	    "file: /tmp/x\n"	      /* 6 */
	    "OK: bob\n"		      /* 7: duplicate of line 2 */
	    ": alice\n"		      /* 8 */
	    "sp ace: alice\n"	      /* 9 */
	    "bad: alice, @x, y@\n"    /* 10: two bad targets */
	    "inc: :include:/etc/l\n", /* 11 */
	    "/etc/facteur/aliases", &errors);
	assert_null(p);
	static const char *const expected[] = {
	    "/etc/facteur/aliases:1: aliases_file: continuation line",
	    "/etc/facteur/aliases:3: aliases_file: no ':'",
	    "/etc/facteur/aliases:4: aliases_file: no target for empty",
	    "/etc/facteur/aliases:5: aliases_file: unsupported target",
	    "/etc/facteur/aliases:6: aliases_file: unsupported target",
	    "/etc/facteur/aliases:7: aliases_file: duplicate address ok "
	    "(first on line 2)",
	    "/etc/facteur/aliases:8: aliases_file: empty address",
	    "/etc/facteur/aliases:9: aliases_file: bad address",
	    "/etc/facteur/aliases:10: aliases_file: bad target \"@x\"",
	    "/etc/facteur/aliases:10: aliases_file: bad target \"y@\"",
	    "/etc/facteur/aliases:11: aliases_file: unsupported target",
	};
	for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
		if (!support_errors_contain(&errors, expected[i]))
			fail_msg("missing error: %s", expected[i]);
	assert_int_equal(errors.count, sizeof expected / sizeof expected[0]);
	config_errors_clear(&errors);
}

static void test_policy_continuation_after_blank_line_is_an_error(void **state)
{
	struct fixture *f = *state;
	struct config_errors errors = {0};
	assert_null(policy_new_with_aliases(f->cfg, NULL, "a: b\n\n  c\n", "al",
					    &errors));
	assert_int_equal(errors.count, 1);
	assert_true(support_errors_contain(&errors, "al:3: aliases_file: "
						    "continuation line"));
	config_errors_clear(&errors);
}

static void test_policy_new_reads_aliases_file(void **state)
{
	(void)state;
	char *path = support_temp_file("info: alice, friend@remote.net\n");

	char conf[512];
	snprintf(conf, sizeof conf, "%saliases_file = %s\n", config_text, path);
	struct config *cfg = load_config(conf);
	assert_non_null(cfg);
	struct config_errors errors = {0};
	struct policy *p = policy_new(cfg, NULL, &errors);
	assert_non_null(p);
	expect(p, OUTSIDE_V4, "info@example.org", POLICY_ACCEPT,
	       "alice@example.org/L friend@remote.net/R");
	policy_free(p);

	/* Errors name the file. */
	support_rewrite_file(path, "x\n");
	assert_null(policy_new(cfg, NULL, &errors));
	char want[128];
	snprintf(want, sizeof want, "%s:1: aliases_file: no ':'", path);
	assert_true(support_errors_contain(&errors, want));
	config_errors_clear(&errors);

	assert_int_equal(unlink(path), 0);
	assert_null(policy_new(cfg, NULL, &errors));
	snprintf(want, sizeof want, "%s: aliases_file: cannot open", path);
	assert_true(support_errors_contain(&errors, want));
	config_errors_clear(&errors);
	config_free(cfg);
	free(path);
}

/* SRS with the secret of test_srs.c's vectors, and an alias with a
 * remote and a local target. */
struct srs_fixture {
	struct config *cfg;
	char *secret_path;
	struct policy *p;
};

static int srs_setup(void **state)
{
	struct srs_fixture *f = calloc(1, sizeof *f);
	if (f == NULL)
		return -1;
	f->secret_path = support_temp_file("tops3cret\n");
	char text[512];
	snprintf(text, sizeof text,
		 "%ssrs_domain = Example.ORG\nsrs_secret_file = %s\n",
		 config_text, f->secret_path);
	f->cfg = load_config(text);
	if (f->cfg != NULL)
		f->p = make_policy(f->cfg, NULL,
				   "fwd: friend@remote.net, alice\n");
	*state = f;
	return f->p != NULL ? 0 : -1;
}

static int srs_teardown(void **state)
{
	struct srs_fixture *f = *state;
	policy_free(f->p);
	config_free(f->cfg);
	unlink(f->secret_path);
	free(f->secret_path);
	free(f);
	return 0;
}

static void test_policy_remote_alias_targets_are_forwarded(void **state)
{
	struct srs_fixture *f = *state;
	const struct policy *p = f->p;
	struct client_storage cs;
	struct policy_expansion exp;

	assert_int_equal(policy_check_recipient(p, make_client(&cs, OUTSIDE_V4),
						"fwd@example.com", &exp),
			 POLICY_ACCEPT);
	assert_int_equal(exp.count, 2);
	assert_string_equal(exp.targets[0].address, "friend@remote.net");
	assert_true(exp.targets[0].forwarded);
	assert_false(exp.targets[1].forwarded);
	policy_expansion_clear(&exp);
	/* A remote recipient named by the client is not forwarded. */
	assert_int_equal(policy_check_recipient(p, make_client(&cs, IN_NET_V4),
						"x@remote.net", &exp),
			 POLICY_ACCEPT);
	assert_false(exp.targets[0].forwarded);
	policy_expansion_clear(&exp);

	/* h("tops3cret", "G3", "example.net", "alice") = "AWYB" */
	char *out = NULL;
	assert_int_equal(policy_forward_sender(p, "alice@example.net",
					       (time_t)1700000000, &out),
			 0);
	assert_non_null(out);
	assert_string_equal(out, "SRS0=AWYB=G3=example.net=alice@example.org");
	free(out);
	/* Local domains and the null sender keep their sender. */
	const char *kept[] = {"", "bob@EXAMPLE.com", "postmaster"};
	for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
		out = (char *)"unset";
		assert_int_equal(policy_forward_sender(p, kept[i], 1, &out), 0);
		assert_null(out);
	}
}

static void test_policy_srs_addresses_reverse_for_anyone(void **state)
{
	struct srs_fixture *f = *state;
	const struct policy *p = f->p;
	struct client_storage cs;
	struct policy_expansion exp;
	char *srs = NULL;

	assert_int_equal(
	    policy_forward_sender(p, "Alice@Example.NET", time(NULL), &srs), 0);
	assert_non_null(srs);
	/* The client may not relay: the reversed address goes all the same. */
	assert_int_equal(
	    policy_check_recipient(p, make_client(&cs, OUTSIDE_V4), srs, &exp),
	    POLICY_ACCEPT);
	assert_int_equal(exp.count, 1);
	assert_string_equal(exp.targets[0].address, "Alice@example.net");
	assert_false(exp.targets[0].local);
	assert_false(exp.targets[0].forwarded);
	policy_expansion_clear(&exp);
	/* Forged: another hash. */
	srs[5] = srs[5] == 'A' ? 'B' : 'A';
	assert_int_equal(
	    policy_check_recipient(p, make_client(&cs, OUTSIDE_V4), srs, &exp),
	    POLICY_BAD_SRS);
	assert_string_equal(exp.srs_error, "bad_hash");
	assert_int_equal(exp.count, 0);
	free(srs);
	/* Only SRS addresses of srs_domain are reversed. */
	assert_int_equal(
	    policy_check_recipient(p, make_client(&cs, OUTSIDE_V4),
				   "SRS0=abcd=G3=example.net=alice@example.com",
				   &exp),
	    POLICY_ACCEPT);
	assert_string_equal(exp.targets[0].address,
			    "srs0=abcd=g3=example.net=alice@example.com");
	policy_expansion_clear(&exp);
}

static void test_policy_srs_needs_a_readable_secret(void **state)
{
	(void)state;
	struct config_errors errors = {0};
	struct config *cfg = load_config("srs_domain = fwd.example\n");
	assert_null(policy_new(cfg, NULL, &errors));
	assert_true(support_errors_contain(&errors, "srs_secret_file is not"));
	config_errors_clear(&errors);
	config_free(cfg);
	cfg = load_config("srs_domain = fwd.example\n"
			  "srs_secret_file = /nonexistent/srs\n");
	assert_null(policy_new(cfg, NULL, &errors));
	assert_true(support_errors_contain(
	    &errors, "/nonexistent/srs: srs_secret_file: cannot open"));
	config_errors_clear(&errors);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
		test_policy_remote_alias_targets_are_forwarded, srs_setup,
		srs_teardown),
	    cmocka_unit_test_setup_teardown(
		test_policy_srs_addresses_reverse_for_anyone, srs_setup,
		srs_teardown),
	    cmocka_unit_test(test_policy_srs_needs_a_readable_secret),
	    cmocka_unit_test(test_policy_relay_needs_network_or_authentication),
	    cmocka_unit_test(test_policy_may_relay_per_client),
	    cmocka_unit_test(
		test_policy_local_without_users_file_every_part_exists),
	    cmocka_unit_test(
		test_policy_local_with_users_file_only_users_exist),
	    cmocka_unit_test(test_policy_postmaster_always_exists),
	    cmocka_unit_test(test_policy_postmaster_may_be_an_alias),
	    cmocka_unit_test(test_policy_aliases_expand),
	    cmocka_unit_test(test_policy_alias_to_unknown_user_is_refused),
	    cmocka_unit_test(test_policy_unsafe_local_parts_are_bad_mailboxes),
	    cmocka_unit_test(test_policy_local_part_safe_rules),
	    cmocka_unit_test(
		test_policy_mailbox_path_refuses_what_leaves_the_root),
	    cmocka_unit_test(test_policy_canonical_address),
	    cmocka_unit_test(test_policy_alias_chain_of_twenty_levels_is_fine),
	    cmocka_unit_test(test_policy_alias_deeper_than_twenty_is_a_loop),
	    cmocka_unit_test(test_policy_alias_fan_out_is_bounded),
	    cmocka_unit_test(test_policy_aliases_errors_name_file_and_line),
	    cmocka_unit_test(
		test_policy_continuation_after_blank_line_is_an_error),
	    cmocka_unit_test(test_policy_new_reads_aliases_file),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
