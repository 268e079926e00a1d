/*
 * password_check: what a login hands the worker, and what is left of
 * the password once the check has run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "facteur/auth.h"
#include "facteur/config.h"
#include "facteur/password_check.h"

static struct auth_users *users_with(const char *address, const char *password)
{
	char *hash = auth_hash_password(password);
	assert_non_null(hash);
	char text[512];
	snprintf(text, sizeof text, "%s:%s\n", address, hash);
	free(hash);
	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "users", &errors);
	assert_non_null(users);
	return users;
}

static bool all_zero(const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != '\0')
			return false;
	return true;
}

static void test_password_check_right_password_matches(void **state)
{
	(void)state;
	struct auth_users *users = users_with("alice@example.com", "s3cret");
	struct password_check check = {0};
	assert_int_equal(
	    password_check_init(&check, users, "alice@example.com", "s3cret"),
	    0);
	/* copies: the users may be swapped by a reload meanwhile */
	auth_users_free(users);
	assert_non_null(check.hash);
	assert_string_equal(check.user, "alice@example.com");
	password_check_run(&check);
	assert_true(check.ok);
	assert_true(all_zero(check.password, sizeof check.password));
	password_check_clear(&check);
	assert_null(check.hash);
}

/* Whether `password` is right for `user`, checked as the worker would. */
static bool matches(const struct auth_users *users, const char *user,
		    const char *password)
{
	struct password_check check = {0};
	assert_int_equal(password_check_init(&check, users, user, password), 0);
	password_check_run(&check);
	bool ok = check.ok;
	password_check_clear(&check);
	return ok;
}

static void test_password_check_wrong_password_fails(void **state)
{
	(void)state;
	struct auth_users *users = users_with("alice@example.com", "s3cret");
	assert_false(matches(users, "alice@example.com", "guess"));
	auth_users_free(users);
}

static void test_password_check_unknown_account_fails(void **state)
{
	(void)state;
	struct auth_users *users = users_with("alice@example.com", "s3cret");
	struct password_check check = {0};
	assert_int_equal(
	    password_check_init(&check, users, "bob@example.com", "s3cret"), 0);
	assert_null(check.hash);
	password_check_clear(&check);
	assert_false(matches(users, "bob@example.com", "s3cret"));
	auth_users_free(users);
}

static void test_password_check_without_accounts_fails(void **state)
{
	(void)state;
	assert_false(matches(NULL, "alice@example.com", "x"));
}

static void test_password_check_clear_forgets_the_password(void **state)
{
	(void)state;
	struct password_check check = {0};
	assert_int_equal(
	    password_check_init(&check, NULL, "alice@example.com", "x"), 0);
	password_check_clear(&check);
	assert_true(all_zero(check.password, sizeof check.password));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_password_check_right_password_matches),
	    cmocka_unit_test(test_password_check_wrong_password_fails),
	    cmocka_unit_test(test_password_check_unknown_account_fails),
	    cmocka_unit_test(test_password_check_without_accounts_fails),
	    cmocka_unit_test(test_password_check_clear_forgets_the_password),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
