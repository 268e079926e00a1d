/*
 * The keys of mail leaving: route and sender_route (route.h), shape and
 * shape_redis (shape.h), local_transport, and dkim_sign's keys.
 */
#include <stdlib.h>
#include <string.h>

#include "facteur/config_internal.h"
#include "facteur/hostname.h"

void config_set_route(struct loader *ld, const char *value)
{
	char err[256];

	if (route_table_add(ld->cfg->routes, value, err, sizeof(err)) < 0)
		config_bad_value(ld, "%s", err);
}

static void clear_route_table(struct route_table **table)
{
	struct route_table *fresh = route_table_new();

	if (fresh == NULL)
		config_out_of_memory();
	route_table_free(*table);
	*table = fresh;
}

void config_clear_routes(struct loader *ld)
{
	clear_route_table(&ld->cfg->routes);
}

void config_set_sender_route(struct loader *ld, const char *value)
{
	char err[256];

	if (route_table_add_sender(ld->cfg->sender_routes, value, err,
				   sizeof(err)) < 0)
		config_bad_value(ld, "%s", err);
}

void config_clear_sender_routes(struct loader *ld)
{
	clear_route_table(&ld->cfg->sender_routes);
}

void config_set_shape(struct loader *ld, const char *value)
{
	struct shape_table *table = ld->cfg->shapes;
	char err[256];

	if (shape_table_add(table, value, err, sizeof(err)) < 0 ||
	    shape_source_check(
		shape_table_get(table, shape_table_count(table) - 1), err,
		sizeof(err)) < 0)
		config_bad_value(ld, "%s", err);
}

void config_set_shape_redis(struct loader *ld, const char *value)
{
	char host[64], err[128], q[CONFIG_QUOTE_BUF];
	uint16_t port;
	unsigned db;

	if (value[0] != '\0' &&
	    shape_parse_redis_address(value, host, sizeof(host), &port, &db,
				      err, sizeof(err)) < 0)
		config_bad_value(ld, "%s in %s", err, config_quote(value, q));
	else
		config_replace_string(&ld->cfg->shape_redis,
				      value[0] != '\0' ? value : NULL);
}

void config_clear_shapes(struct loader *ld)
{
	shape_table_free(ld->cfg->shapes);
	ld->cfg->shapes = shape_table_new();
	if (ld->cfg->shapes == NULL)
		config_out_of_memory();
}

/* As a file's line reads them: items between commas. */
static void print_route_table(const struct route_table *table, FILE *out)
{
	for (size_t i = 0; i < route_table_count(table); i++)
		fprintf(out, "%s%s", i ? ", " : "",
			route_table_get(table, i)->text);
}

void config_print_routes(const struct config *cfg, FILE *out)
{
	print_route_table(cfg->routes, out);
}

/* One value a line, as the file reads them back: a sender route's items
 * are not separated by commas. */
void config_print_sender_routes(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < route_table_count(cfg->sender_routes); i++)
		fprintf(out, "%s%s", i ? "\nsender_route = " : "",
			route_table_get(cfg->sender_routes, i)->text);
}

/* One value a line, as the file reads them back. */
void config_print_shapes(const struct config *cfg, FILE *out)
{
	char line[1024];

	for (size_t i = 0; i < shape_table_count(cfg->shapes); i++) {
		shape_format(shape_table_get(cfg->shapes, i), line,
			     sizeof(line));
		fprintf(out, "%s%s", i ? "\nshape = " : "", line);
	}
}
/* dkim_sign = DOMAIN SELECTOR KEYFILE; the key itself is read with the
 * files the settings name (dkim.h). A path with spaces cannot be
 * given: three words exactly. */
void config_set_dkim_sign(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	const char *word[3];
	size_t len[3], n = 0;
	char q[CONFIG_QUOTE_BUF];

	for (const char *p = value; *p != '\0';) {
		size_t w = strcspn(p, " \t");

		if (w > 0) {
			if (n == 3) {
				n++;
				break;
			}
			word[n] = p;
			len[n++] = w;
		}
		p += w;
		p += strspn(p, " \t");
	}
	if (n != 3) {
		config_bad_value(ld, "expected DOMAIN SELECTOR KEYFILE, got %s",
				 config_quote(value, q));
		return;
	}
	for (size_t i = 0; i < 2; i++) {
		if (!hostname_valid(word[i], len[i])) {
			config_bad_value(ld, "invalid %s %s",
					 i == 0 ? "domain" : "selector",
					 config_quote_n(word[i], len[i], q));
			return;
		}
	}
	cfg->dkim_sign = config_xreallocarray(
	    cfg->dkim_sign, cfg->dkim_sign_count + 1, sizeof *cfg->dkim_sign);
	cfg->dkim_sign[cfg->dkim_sign_count++] = (struct config_dkim_sign){
	    .domain = config_xstrndup(word[0], len[0]),
	    .selector = config_xstrndup(word[1], len[1]),
	    .keyfile = config_xstrndup(word[2], len[2]),
	    .origin = config_xstrndup(ld->origin, strlen(ld->origin)),
	};
}

void config_free_dkim_sign(struct config *cfg)
{
	for (size_t i = 0; i < cfg->dkim_sign_count; i++) {
		free(cfg->dkim_sign[i].domain);
		free(cfg->dkim_sign[i].selector);
		free(cfg->dkim_sign[i].keyfile);
		free(cfg->dkim_sign[i].origin);
	}
	free(cfg->dkim_sign);
	cfg->dkim_sign = NULL;
	cfg->dkim_sign_count = 0;
}

void config_clear_dkim_sign(struct loader *ld)
{
	config_free_dkim_sign(ld->cfg);
}

/* One value a line, as the file reads them back. */
void config_print_dkim_sign(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < cfg->dkim_sign_count; i++)
		fprintf(out, "%s%s %s %s", i ? "\ndkim_sign = " : "",
			cfg->dkim_sign[i].domain, cfg->dkim_sign[i].selector,
			cfg->dkim_sign[i].keyfile);
}

void config_set_local_transport(struct loader *ld, const char *value)
{
	char err[160];

	if (route_lmtp_parse(value, &ld->cfg->local_transport, err,
			     sizeof(err)) < 0)
		config_bad_value(ld, "%s", err);
}

void config_print_local_transport(const struct config *cfg, FILE *out)
{
	fputs(cfg->local_transport.text, out);
}
