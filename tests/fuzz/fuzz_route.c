/*
 * route_table_add and route_lookup on arbitrary text: each line is first
 * added as a route and as a sender route, then looked up as a domain and
 * as a sender. A route found must match by the rules of the routing
 * tables; every route kept has 1 to ROUTE_TARGETS_MAX targets, each with
 * a host, and a port on each when tls=implicit.
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
	case ROUTE_ADDRESS:
		abort(); /* never a domain's route */
	}
}

static void check_sender_match(const struct route *r, const char *sender)
{
	const char *at = strrchr(sender, '@');

	if (sender[0] == '\0') {
		if (r->kind != ROUTE_WILDCARD)
			abort();
	} else if (r->kind == ROUTE_ADDRESS) {
		if (strcasecmp(r->pattern, sender) != 0)
			abort();
	} else {
		check_match(r, at != NULL ? at + 1 : "");
	}
}

static void check_targets(const struct route_table *table)
{
	for (size_t i = 0; i < route_table_count(table); i++) {
		const struct route *r = route_table_get(table, i);

		if (r->target_count == 0 || r->target_count > ROUTE_TARGETS_MAX)
			abort();
		for (size_t t = 0; t < r->target_count; t++)
			if (r->targets[t].host == NULL ||
			    (r->tls == ROUTE_TLS_IMPLICIT &&
			     r->targets[t].port == 0))
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct route_table *table = route_table_new();
	struct route_table *senders = route_table_new();
	char *text = malloc(size + 1);
	char err[128];

	if (table == NULL || senders == NULL || text == NULL) {
		route_table_free(table);
		route_table_free(senders);
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
				if (route_table_add_sender(senders, line, err,
							   sizeof(err)) < 0 &&
				    err[0] == '\0')
					abort();
			} else {
				const struct route *r =
				    route_lookup(table, line);

				if (r != NULL)
					check_match(r, line);
				r = route_lookup_sender(senders, line);
				if (r != NULL)
					check_sender_match(r, line);
			}
			if (nl != NULL)
				*nl = '\n';
			line = nl != NULL ? nl + 1 : NULL;
		}
	}
	check_targets(table);
	check_targets(senders);
	route_table_free(table);
	route_table_free(senders);
	free(text);
	return 0;
}
