/* libFuzzer: a users file of arbitrary text, and the same bytes as a
 * SASL PLAIN response. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth.h"
#include "facteur/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	struct config_errors errors = {0};
	struct auth_users *users = auth_users_parse(text, "fuzz", &errors);
	if (users != NULL) {
		if (errors.count != 0)
			abort();
		/* Every address of the text that parsed must be found. */
		char *save = NULL;
		for (char *line = strtok_r(text, "\n", &save); line != NULL;
		     line = strtok_r(NULL, "\n", &save)) {
			char *colon = strchr(line, ':');
			char *start = line + strspn(line, " \t\r");
			if (colon == NULL || *start == '#')
				continue;
			char *end = colon;
			while (end > start && strchr(" \t\r", end[-1]) != NULL)
				end--;
			*end = '\0';
			if (!auth_users_exists(users, start))
				abort();
		}
		(void)auth_users_count(users);
		auth_users_free(users);
	} else if (errors.count == 0) {
		abort(); /* a refusal always says why */
	}
	config_errors_clear(&errors);

	/* The raw bytes as SASL PLAIN and base64. */
	char cid[256], pw[256];
	if (auth_sasl_plain_decode((const char *)data, size, cid, sizeof cid,
				   pw, sizeof pw) == 0) {
		if (strlen(cid) == 0 || strlen(pw) == 0)
			abort();
	}
	unsigned char *dec = malloc(size / 4 * 3 + 1);
	if (dec != NULL) {
		int n = auth_base64_decode((const char *)data, size, dec,
					   size / 4 * 3 + 1);
		if (n >= 0) {
			/* Strict decoding: encoding gives the input back. */
			char *enc = malloc(size + 1);
			if (enc == NULL ||
			    auth_base64_encode(dec, (size_t)n, enc, size + 1) !=
				(int)size ||
			    memcmp(enc, data, size) != 0)
				abort();
			free(enc);
		}
		free(dec);
	}
	free(text);
	return 0;
}
