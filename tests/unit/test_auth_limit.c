/*
 * auth_limit: failed logins counted across sessions per client and per
 * account, in windows that open at the first failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "facteur/auth_limit.h"

static const uint8_t attacker[16] = {0, 0, 0,	 0,    0,   0, 0, 0,
				     0, 0, 0xff, 0xff, 192, 0, 2, 66};
static const uint8_t user_home[16] = {0, 0, 0,	  0,	0,   0, 0, 0,
				      0, 0, 0xff, 0xff, 192, 0, 2, 7};

#define LIMIT 3
#define WINDOW 60

static void login_failed(struct auth_limit *t, const uint8_t *client,
			 const char *account, time_t now)
{
	auth_limit_failure(t, client, account, now, WINDOW);
}

static void test_auth_limit_client_refused_at_the_limit(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(100);
	login_failed(t, attacker, "a@example.test", 1000);
	login_failed(t, attacker, "b@example.test", 1001);
	assert_false(
	    auth_limit_client_refused(t, attacker, 1002, LIMIT, WINDOW, NULL));
	login_failed(t, attacker, "c@example.test", 1002);
	unsigned wait = 0;
	assert_true(
	    auth_limit_client_refused(t, attacker, 1003, LIMIT, WINDOW, &wait));
	assert_int_equal(wait, 1000 + WINDOW - 1003);
	/* Another client is not concerned. */
	assert_false(
	    auth_limit_client_refused(t, user_home, 1003, LIMIT, WINDOW, NULL));
	auth_limit_free(t);
}

static void test_auth_limit_refusal_ends_with_the_window(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(100);
	for (int i = 0; i < LIMIT; i++)
		login_failed(t, attacker, NULL, 1000);
	assert_true(auth_limit_client_refused(t, attacker, 1000 + WINDOW - 1,
					      LIMIT, WINDOW, NULL));
	assert_false(auth_limit_client_refused(t, attacker, 1000 + WINDOW,
					       LIMIT, WINDOW, NULL));
	/* A failure after the window opens a new one, counted from 1. */
	login_failed(t, attacker, NULL, 1000 + WINDOW);
	assert_false(auth_limit_client_refused(t, attacker, 1000 + WINDOW,
					       LIMIT, WINDOW, NULL));
	auth_limit_free(t);
}

static void
test_auth_limit_account_under_attack_stays_open_to_clean_clients(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(100);
	for (int i = 0; i < LIMIT; i++) {
		uint8_t client[16] = {0x20, 0x01, 0x0d, 0xb8, (uint8_t)i};
		login_failed(t, client, "User@Example.test", 1000);
	}
	assert_true(auth_limit_account_open(t, user_home, "user@example.test",
					    1001, LIMIT, WINDOW));
	login_failed(t, attacker, "someone@example.test", 1001);
	assert_false(auth_limit_account_open(t, attacker, "USER@example.test",
					     1002, LIMIT, WINDOW));
	assert_true(auth_limit_account_open(t, attacker, "other@example.test",
					    1002, LIMIT, WINDOW));
	assert_true(auth_limit_account_open(t, attacker, "user@example.test",
					    1000 + WINDOW, LIMIT, WINDOW));
	auth_limit_free(t);
}

static void test_auth_limit_capacity_forgets_old_windows(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(4);
	for (int i = 0; i < 10; i++) {
		uint8_t client[16] = {(uint8_t)i};
		login_failed(t, client, NULL, 1000 + i);
		assert_true(auth_limit_size(t) <= 4);
	}
	/* The newest is still remembered. */
	uint8_t last[16] = {9};
	for (int i = 0; i < LIMIT - 1; i++)
		login_failed(t, last, NULL, 1010);
	assert_true(
	    auth_limit_client_refused(t, last, 1010, LIMIT, WINDOW, NULL));
	auth_limit_free(t);
}

static void test_auth_limit_rate_counts_within_the_window(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(100);
	for (int i = 0; i < LIMIT; i++)
		assert_true(
		    auth_limit_rate_take(t, attacker, 1000 + i, LIMIT, WINDOW));
	assert_false(auth_limit_rate_take(t, attacker, 1010, LIMIT, WINDOW));
	/* A refused event is not counted; another client has its own. */
	assert_false(auth_limit_rate_take(t, attacker, 1011, LIMIT, WINDOW));
	assert_true(auth_limit_rate_take(t, user_home, 1011, LIMIT, WINDOW));
	/* The window opened at 1000; at its end the count starts again. */
	assert_false(auth_limit_rate_take(t, attacker, 1000 + WINDOW - 1, LIMIT,
					  WINDOW));
	assert_true(
	    auth_limit_rate_take(t, attacker, 1000 + WINDOW, LIMIT, WINDOW));
	auth_limit_free(t);
}

static void test_auth_limit_rate_is_apart_from_failed_logins(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(100);
	for (int i = 0; i < LIMIT; i++)
		assert_true(
		    auth_limit_rate_take(t, attacker, 1000, LIMIT, WINDOW));
	assert_false(
	    auth_limit_client_refused(t, attacker, 1000, LIMIT, WINDOW, NULL));
	for (int i = 0; i < LIMIT; i++)
		login_failed(t, user_home, NULL, 1000);
	assert_true(auth_limit_rate_take(t, user_home, 1000, LIMIT, WINDOW));
	auth_limit_free(t);
}

/* A full table forgets the windows that are over, each by its own
 * length, before the oldest one still running. */
static void test_auth_limit_rate_eviction_keeps_live_windows(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(2);
	uint8_t a[16] = {1}, b[16] = {2}, c[16] = {3};
	assert_true(auth_limit_rate_take(t, a, 1000, 1, 10)); /* over at 1010 */
	assert_true(auth_limit_rate_take(t, b, 995, 1, 3600)); /* running */
	assert_true(auth_limit_rate_take(t, c, 1020, 1, 10));
	assert_int_equal(auth_limit_size(t), 2);
	assert_false(auth_limit_rate_take(t, b, 1020, 1, 3600));
	/* Full again, nothing over: the oldest window (b's) goes. */
	uint8_t d[16] = {4};
	assert_true(auth_limit_rate_take(t, d, 1021, 1, 3600));
	assert_int_equal(auth_limit_size(t), 2);
	assert_true(auth_limit_rate_take(t, b, 1022, 1, 3600));
	auth_limit_free(t);
}

/* Nothing over: the windows of the oldest second go together, so that
 * the next clients find room without a sweep each. */
static void test_auth_limit_full_table_drops_the_oldest_second(void **state)
{
	(void)state;
	struct auth_limit *t = auth_limit_new(4);
	for (uint8_t i = 0; i < 3; i++) {
		uint8_t client[16] = {i};
		assert_true(auth_limit_rate_take(t, client, 1000, 1, 3600));
	}
	uint8_t later[16] = {7}, next[16] = {8};
	assert_true(auth_limit_rate_take(t, later, 1001, 1, 3600));
	assert_true(auth_limit_rate_take(t, next, 1002, 1, 3600));
	assert_int_equal(auth_limit_size(t), 2);
	assert_false(auth_limit_rate_take(t, later, 1003, 1, 3600));
	auth_limit_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_auth_limit_client_refused_at_the_limit),
	    cmocka_unit_test(test_auth_limit_refusal_ends_with_the_window),
	    cmocka_unit_test(
		test_auth_limit_account_under_attack_stays_open_to_clean_clients),
	    cmocka_unit_test(test_auth_limit_capacity_forgets_old_windows),
	    cmocka_unit_test(test_auth_limit_rate_counts_within_the_window),
	    cmocka_unit_test(test_auth_limit_rate_is_apart_from_failed_logins),
	    cmocka_unit_test(test_auth_limit_rate_eviction_keeps_live_windows),
	    cmocka_unit_test(
		test_auth_limit_full_table_drops_the_oldest_second),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
