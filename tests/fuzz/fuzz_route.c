/*
 * route_table_add and route_lookup on arbitrary text: each line is first
 * added as a route, then looked up as a domain. A route found must match
 * the domain by the rules of SPEC.md §3.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_match(const struct route *r, const char *domain)
{
	size_t len = strlen(domain);
	size_t plen = strlen(r->pattern);

	if (len > 1 && domain[len - 1] == '.')
		len--;
	switch (r->kind) {
	case ROUTE_EXACT:
		if (len != plen || strncasecmp(domain, r->pattern, len) != 0)
			abort();
		break;
	case ROUTE_SUFFIX:
		if (len <= plen + 1 || domain[len - plen - 1] != '.' ||
		    strncasecmp(domain + len - plen, r->pattern, plen) != 0)
			abort();
		break;
	case ROUTE_WILDCARD:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct route_table *table = route_table_new();
	char *text = malloc(size + 1);
	char err[128];

	if (table == NULL || text == NULL) {
		route_table_free(table);
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
				if (route_table_add(table, line, err,
						    sizeof(err)) < 0 &&
				    err[0] == '\0')
					abort(); /* a refusal says why */
			} else {
				const struct route *r =
				    route_lookup(table, line);

				if (r != NULL)
					check_match(r, line);
			}
			if (nl != NULL)
				*nl = '\n';
			line = nl != NULL ? nl + 1 : NULL;
		}
	}
	for (size_t i = 0; i < route_table_count(table); i++)
		if (route_table_get(table, i)->host == NULL)
			abort();
	route_table_free(table);
	free(text);
	return 0;
}
