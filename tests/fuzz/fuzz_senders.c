/*
 * senders_parse on arbitrary text: a refusal always says why; a table
 * that parsed lets every login use each entry of its line.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/config.h"
#include "facteur/senders.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Each "login: entry, ..." line of the text that parsed. */
static void check_lines(const struct senders *t, char *text)
{
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		char *login = line + strspn(line, " \t\r");
		char *colon = strchr(login, ':');
		if (colon == NULL || login[0] == '#')
			continue; /* a comment or a blank line */
		*colon = '\0';
		login[strcspn(login, " \t\r")] = '\0';
		char *save_entry = NULL;
		for (char *e = strtok_r(colon + 1, ",", &save_entry); e != NULL;
		     e = strtok_r(NULL, ",", &save_entry)) {
			e += strspn(e, " \t\r");
			e[strcspn(e, " \t\r")] = '\0';
			if (e[0] == '\0')
				continue;
			if (e[0] != '@' && !senders_allowed(t, login, e))
				abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	struct config_errors errors = {0};
	struct senders *t = senders_parse(text, size, "fuzz", &errors);
	if (t != NULL) {
		if (errors.count != 0)
			abort();
		if (memchr(text, '\0', size) == NULL)
			check_lines(t, text);
		senders_free(t);
	} else if (errors.count == 0) {
		abort();
	}
	config_errors_clear(&errors);
	free(text);
	return 0;
}
