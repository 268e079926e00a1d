/*
 * A password check as SMTP AUTH and POP3 logins hand it to the worker:
 * crypt(3) costs milliseconds by design, so it runs off the loop. The
 * check holds copies of the account name, its stored hash and the
 * password, so that neither a reload (which swaps the users) nor the
 * session's end pulls anything away while it runs. The sessions wrap
 * it in their own job, with the pointer back to them that they clear
 * when they end first.
 */
#ifndef FACTEUR_PASSWORD_CHECK_H
#define FACTEUR_PASSWORD_CHECK_H

#include <stdbool.h>

#define PASSWORD_CHECK_USER_MAX 320 /* octets, as an address */
#define PASSWORD_CHECK_PASSWORD_MAX 1024

struct auth_users;

struct password_check {
	char *hash; /* NULL: no such account */
	bool ok;    /* the password matched, once run */
	char user[PASSWORD_CHECK_USER_MAX + 1];
	char password[PASSWORD_CHECK_PASSWORD_MAX];
};

/* Copy what the check needs into a zeroed check (users may be NULL: no
 * accounts). -1 when out of memory; password_check_clear is owed in
 * every case. */
int password_check_init(struct password_check *check,
			const struct auth_users *users, const char *user,
			const char *password);

/* On the worker: compare, then forget the password. */
void password_check_run(struct password_check *check);

/* Forget the password and free the copies. */
void password_check_clear(struct password_check *check);

#endif
