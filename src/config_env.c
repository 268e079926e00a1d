/*
 * The FACTEUR_* environment on top of the file: FACTEUR_<KEY> sets KEY,
 * FACTEUR_<KEY>_FILE names a file holding its value, and the variables
 * Kubernetes adds for a Service called "facteur" are left alone.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/config_internal.h"

#define CONFIG_ENV_PREFIX "FACTEUR_"

/* The key named by an environment variable's upper-case suffix
 * ("MAX_RECIPIENTS" for max_recipients). */
static bool find_env_key(const char *suffix, size_t len, enum key *out)
{
	for (int k = 0; k < KEY_COUNT; k++) {
		const char *key = config_key_name((enum key)k);
		size_t i;

		if (strlen(key) != len)
			continue;
		for (i = 0; i < len; i++)
			if (suffix[i] != ascii_upper(key[i]))
				break;
		if (i == len) {
			*out = (enum key)k;
			return true;
		}
	}
	return false;
}

static bool has_prefix(const char *s, size_t len, const char *prefix)
{
	size_t plen = strlen(prefix);

	return len >= plen && memcmp(s, prefix, plen) == 0;
}

/* Upper-case letters, digits and '_', at least one. */
static bool is_env_word(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

/*
 * The variables Kubernetes puts in every pod of a namespace that has a
 * Service called "facteur" (its docker-link style service environment):
 * SERVICE_HOST, SERVICE_PORT, SERVICE_PORT_<NAME>, PORT, PORT_<N>_<PROTO>
 * and PORT_<N>_<PROTO>_{PROTO,PORT,ADDR}, here without "FACTEUR_". They
 * are not ours, so they are neither keys nor errors.
 */
static bool is_kubernetes_name(const char *s, size_t len)
{
	static const char *const protocols[] = {"TCP", "UDP", "SCTP"};
	static const char *const forms[] = {"", "_PROTO", "_PORT", "_ADDR"};
	size_t digits = 0;

	if ((len == 12 && memcmp(s, "SERVICE_HOST", 12) == 0) ||
	    (len == 12 && memcmp(s, "SERVICE_PORT", 12) == 0) ||
	    (len == 4 && memcmp(s, "PORT", 4) == 0))
		return true;
	if (has_prefix(s, len, "SERVICE_PORT_"))
		return is_env_word(s + 13, len - 13);
	if (!has_prefix(s, len, "PORT_"))
		return false;
	s += 5;
	len -= 5;
	while (digits < len && s[digits] >= '0' && s[digits] <= '9')
		digits++;
	if (digits == 0 || digits == len || s[digits] != '_')
		return false;
	s += digits + 1;
	len -= digits + 1;
	for (size_t p = 0; p < COUNT_OF(protocols); p++) {
		size_t plen = strlen(protocols[p]);

		if (!has_prefix(s, len, protocols[p]))
			continue;
		for (size_t f = 0; f < COUNT_OF(forms); f++)
			if (len - plen == strlen(forms[f]) &&
			    memcmp(s + plen, forms[f], len - plen) == 0)
				return true;
	}
	return false;
}

/* FACTEUR_<KEY>_FILE=PATH: KEY's value is the file's content, without
 * its final newline, as container secrets are mounted. */
static void apply_env_file(struct loader *ld, char *const *env, enum key key,
			   const char *name, const char *path)
{
	struct config_errors file_errors = {0};
	size_t plain_len = strlen(name) - strlen("_FILE");
	char *plain = config_xstrndup(name, plain_len);
	const char *value;
	char *text = NULL;
	size_t len = 0;

	if (config_env_value(env, plain) != NULL) {
		config_errors_add(
		    ld->errors, "%s: %s: also set by %s; set only one of them",
		    name, config_key_name(key), plain);
		free(plain);
		return;
	}
	free(plain);
	if (*path == '\0') {
		config_errors_add(ld->errors, "%s: %s: empty file name", name,
				  config_key_name(key));
		return;
	}
	if (config_read_source(path, false, &text, &len, &file_errors) < 0) {
		for (size_t i = 0; i < file_errors.count; i++)
			config_errors_add(ld->errors, "%s: %s: %s", name,
					  config_key_name(key),
					  file_errors.messages[i]);
		config_errors_clear(&file_errors);
		return;
	}
	if (len > 0 && text[len - 1] == '\n')
		len--;
	if (len > 0 && text[len - 1] == '\r')
		len--;
	value = ascii_trim(text, &len, " \t");
	config_apply(ld, key, value, len, SOURCE_ENV, name);
	free(text);
}

void config_read_environment(struct loader *ld, char *const *env)
{
	const size_t plen = strlen(CONFIG_ENV_PREFIX);
	const size_t file_len = strlen("_FILE");

	for (char *const *e = env; e != NULL && *e != NULL; e++) {
		const char *var = *e;
		const char *eq = strchr(var, '=');
		const char *suffix;
		size_t name_len;
		size_t suffix_len;
		size_t value_len;
		const char *value;
		char *name;
		enum key k;

		if (eq == NULL || strncmp(var, CONFIG_ENV_PREFIX, plen) != 0)
			continue;
		suffix = var + plen;
		name_len = (size_t)(eq - var);
		if (name_len == strlen(CONFIG_ENV_FILE) &&
		    memcmp(var, CONFIG_ENV_FILE, name_len) == 0)
			continue;
		suffix_len = name_len - plen;
		name = config_xstrndup(var, name_len);
		if (find_env_key(suffix, suffix_len, &k)) {
			value_len = strlen(eq + 1);
			value = ascii_trim(eq + 1, &value_len, " \t");
			config_apply(ld, k, value, value_len, SOURCE_ENV, name);
		} else if (suffix_len > file_len &&
			   memcmp(suffix + suffix_len - file_len, "_FILE",
				  file_len) == 0 &&
			   find_env_key(suffix, suffix_len - file_len, &k)) {
			apply_env_file(ld, env, k, name, eq + 1);
		} else if (!is_kubernetes_name(suffix, suffix_len)) {
			char q[CONFIG_QUOTE_BUF];
			char *lower = config_xstrndup(suffix, suffix_len);

			ascii_lower_in_place(lower, suffix_len);
			config_errors_add(ld->errors, "%s: unknown key %s",
					  name, config_quote(lower, q));
			free(lower);
		}
		free(name);
	}
}

const char *config_env_value(char *const *env, const char *name)
{
	size_t len = strlen(name);

	for (; env != NULL && *env != NULL; env++)
		if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
			return *env + len + 1;
	return NULL;
}
