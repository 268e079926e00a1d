/* libFuzzer: an aliases file of arbitrary text, then a few recipients
 * through the alias expansion. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth.h"
#include "facteur/config.h"
#include "facteur/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct config *cfg;
static struct auth_users *users;

static void check(const struct policy *p, const char *address)
{
	struct policy_client client = {.addr = NULL, .authenticated = false};
	struct policy_expansion exp;
	enum policy_verdict v =
	    policy_check_recipient(p, &client, address, &exp);
	if (v != POLICY_ACCEPT && (exp.count != 0 || exp.targets != NULL))
		abort();
	for (size_t i = 0; i < exp.count; i++) {
		for (size_t j = i + 1; j < exp.count; j++)
			if (strcmp(exp.targets[i].address,
				   exp.targets[j].address) == 0)
				abort(); /* duplicates are removed */
		/* Nothing remote without relay rights, except through an
		 * alias of a local address (the only kind we ask about). */
	}
	policy_expansion_clear(&exp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (cfg == NULL) {
		struct config_errors errors = {0};
		cfg = config_load_string("local_domains = example.com, "
					 "example.org\n",
					 "fuzz.conf", NULL, &errors);
		users = auth_users_parse("alice@example.com:$6$x$y\n"
					 "a@example.org:$6$x$y\n",
					 "users", &errors);
		if (cfg == NULL || users == NULL)
			abort();
	}
	char *text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	struct config_errors errors = {0};
	struct policy *with =
	    policy_new_with_aliases(cfg, users, text, "fuzz", &errors);
	struct policy *without =
	    policy_new_with_aliases(cfg, NULL, text, "fuzz", &errors);
	if ((with == NULL) != (without == NULL))
		abort();
	if (with != NULL) {
		/* The key of the first line, in both domains, and a few
		 * fixed names; one-letter keys are what the fuzzer finds. */
		char key[64];
		size_t n = strcspn(text, ":\n");
		if (n >= sizeof key - 16)
			n = sizeof key - 16;
		memcpy(key, text, n);
		key[n] = '\0';
		char *at = strchr(key, '@');
		char address[96];
		static const char *const fixed[] = {
		    "postmaster",    "a@example.com",	  "a@example.org",
		    "b@example.com", "alice@example.com", "x@remote.net"};
		for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
			check(with, fixed[i]);
			check(without, fixed[i]);
		}
		if (at == NULL) {
			strcpy(address, key);
			strcat(address, "@example.com");
		} else {
			strcpy(address, key);
		}
		check(with, address);
		check(without, address);
	}
	policy_free(with);
	policy_free(without);
	config_errors_clear(&errors);
	free(text);
	return 0;
}
