/*
 * config_load_string on arbitrary text. The input up to its first NUL is
 * the file; what follows, split at NULs, is the environment. A loaded
 * configuration must print, re-parse, and print the same again.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ENV_MAX 16

static char *print_config(const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);

	if (out == NULL)
		abort();
	config_print(cfg, out);
	if (fclose(out) != 0)
		abort();
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config_errors errors = {0};
	char *env[FUZZ_ENV_MAX + 1];
	size_t nenv = 0;
	struct config *cfg;
	char *text = malloc(size + 1);

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	for (size_t i = strlen(text) + 1; i < size && nenv < FUZZ_ENV_MAX;
	     i += strlen(text + i) + 1) {
		const char *eq = strchr(text + i, '=');

		/* FACTEUR_<KEY>_FILE opens the file it names: a fuzzer that
		 * found "/dev/stdin" would wait forever. */
		if (eq != NULL && eq - (text + i) >= 5 &&
		    memcmp(eq - 5, "_FILE", 5) == 0)
			continue;
		env[nenv++] = text + i;
	}
	env[nenv] = NULL;

	cfg = config_load_string(text, "fuzz.conf", env, &errors);
	if (cfg == NULL && errors.count == 0)
		abort(); /* a refusal always says why */
	if (cfg != NULL) {
		char *first = print_config(cfg);
		struct config *again;
		char *second;

		again = config_load_string(first, "printed", NULL, &errors);
		if (again == NULL) {
			for (size_t i = 0; i < errors.count; i++)
				fprintf(stderr, "%s\n", errors.messages[i]);
			fprintf(stderr, "printout refused:\n%s", first);
			abort();
		}
		second = print_config(again);
		if (strcmp(first, second) != 0) {
			fprintf(stderr, "%s---\n%s", first, second);
			abort();
		}
		free(first);
		free(second);
		config_free(again);
		config_free(cfg);
	}
	config_errors_clear(&errors);
	free(text);
	return 0;
}
