/*
 * Failed logins counted across sessions (auth_fail_limit = N/DURATION),
 * per client (an address, an IPv6 client by its ipv6_prefix_length
 * network) and per account. A window opens at the first failure and
 * lasts DURATION; N failures in it and the client is refused until it
 * closes. An account with N failures in its window is under attack:
 * attempts on it are then refused from clients that have failed a login
 * themselves in their window, while a client with a clean record may
 * still log in (the real user elsewhere is not locked out).
 * The same bounded table also counts messages per client
 * (auth_limit_rate_take). Pure: the caller gives the time; no I/O.
 */
#ifndef FACTEUR_AUTH_LIMIT_H
#define FACTEUR_AUTH_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct auth_limit;

/* At most `capacity` clients and accounts are remembered; past it the
 * windows that are over are forgotten first, then those opened in the
 * oldest second still held. */
struct auth_limit *auth_limit_new(size_t capacity);
void auth_limit_free(struct auth_limit *t);

/* Count a failed login of `client` (a listener_client_key) on
 * `account` (case-insensitive; NULL for none, or one that does not
 * exist). */
void auth_limit_failure(struct auth_limit *t, const uint8_t client[16],
			const char *account, time_t now, unsigned window);

/* Is the client past the limit in its window? Then its remaining time
 * (at least 1) in *wait, when not NULL. */
bool auth_limit_client_refused(struct auth_limit *t, const uint8_t client[16],
			       time_t now, unsigned limit, unsigned window,
			       unsigned *wait);

/* May this client try this account now? False when the account is past
 * the limit in its window and the client has failed a login in its own. */
bool auth_limit_account_open(struct auth_limit *t, const uint8_t client[16],
			     const char *account, time_t now, unsigned limit,
			     unsigned window);

/*
 * A rate per client (max_messages_per_ip): count one event of `client`
 * and return true when it is within `limit` per window (a fixed window
 * opened by the first event); false, uncounted, when it is past it.
 * Kept in its own table (its own auth_limit_new) so that one kind of
 * traffic cannot push the other's records out.
 */
bool auth_limit_rate_take(struct auth_limit *t, const uint8_t client[16],
			  time_t now, unsigned limit, unsigned window);

/* Entries remembered (for tests). */
size_t auth_limit_size(const struct auth_limit *t);

#endif
