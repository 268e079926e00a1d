/*
 * Password checks for the worker (see password_check.h). Nothing here
 * touches the loop's state: init runs on the loop, run on the worker,
 * each on the check alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth.h"
#include "facteur/password_check.h"

int password_check_init(struct password_check *check,
			const struct auth_users *users, const char *user,
			const char *password)
{
	const char *hash = users != NULL ? auth_users_hash(users, user) : NULL;
	snprintf(check->user, sizeof check->user, "%s", user);
	snprintf(check->password, sizeof check->password, "%s", password);
	if (hash == NULL)
		return 0;
	check->hash = strdup(hash);
	return check->hash != NULL ? 0 : -1;
}

void password_check_run(struct password_check *check)
{
	check->ok = auth_password_matches(check->hash, check->password);
	explicit_bzero(check->password, sizeof check->password);
}

void password_check_clear(struct password_check *check)
{
	explicit_bzero(check->password, sizeof check->password);
	free(check->hash);
	check->hash = NULL;
}
