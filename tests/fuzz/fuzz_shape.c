/*
 * shape_table_add, shape_lookup and shape_format on arbitrary text: each
 * line is first added as a shape, then looked up as a domain. A refusal
 * says why; a line taken prints back as a line that is taken again with
 * the same limits; a look-up always answers with limits above 0.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/shape.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const struct shape *s)
{
	struct shape_table *again = shape_table_new();
	char line[1024];
	char err[128];

	if (again == NULL)
		return;
	shape_format(s, line, sizeof(line));
	if (shape_table_add(again, line, err, sizeof(err)) == 0) {
		const struct shape *t = shape_table_get(again, 0);

		if (t->max_rcpt != s->max_rcpt || t->max_msgs != s->max_msgs ||
		    t->rate_count != s->rate_count ||
		    t->rate_period != s->rate_period || t->pause != s->pause ||
		    t->max_connections != s->max_connections)
			abort();
	} else if (strlen(line) < sizeof(line) - 1) {
		abort(); /* a line taken once prints as one taken again */
	}
	shape_table_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct shape_table *table = shape_table_new();
	char *text = malloc(size + 1);
	char err[128];

	if (table == NULL || text == NULL) {
		shape_table_free(table);
		free(text);
		return 0;
	}
	memcpy(text, data, size);
	text[size] = '\0';
	for (int pass = 0; pass < 2; pass++) {
		char *line = text;

		while (line != NULL) {
			char *nl = strchr(line, '\n');

			if (nl != NULL)
				*nl = '\0';
			if (pass == 0) {
				if (shape_table_add(table, line, err,
						    sizeof(err)) < 0 &&
				    err[0] == '\0')
					abort();
			} else {
				const struct shape *s =
				    shape_lookup(table, line);

				if (s == NULL || s->max_rcpt == 0 ||
				    s->max_msgs == 0 || s->pause == 0)
					abort();
			}
			if (nl != NULL)
				*nl = '\n';
			line = nl != NULL ? nl + 1 : NULL;
		}
	}
	for (size_t i = 0; i < shape_table_count(table); i++)
		check_round_trip(shape_table_get(table, i));
	shape_table_free(table);
	free(text);
	return 0;
}
