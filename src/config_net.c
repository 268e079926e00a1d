/*
 * The keys of the network: listen, pop3_listen and metrics_listen, the
 * trusted networks (relay_networks, proxy_networks), the DNS servers,
 * mx_port and the IPv6 prefix that makes one client.
 */
#include <stdlib.h>
#include <string.h>

#include "facteur/config_internal.h"

#define CONFIG_DNS_PORT 53

static void clear_listen_list(struct listen_addr **list, size_t *count,
			      char ***origins)
{
	for (size_t i = 0; i < *count; i++) {
		free((*list)[i].text);
		free((*origins)[i]);
	}
	free(*list);
	free(*origins);
	*list = NULL;
	*origins = NULL;
	*count = 0;
}

static void add_listen(struct loader *ld, const char *value, bool pop3,
		       struct listen_addr **list, size_t *count,
		       char ***origins)
{
	struct listen_addr la;
	const char *why;
	char q[CONFIG_QUOTE_BUF];

	why = config_parse_listen_entry(value, pop3, true, &la);
	if (why != NULL) {
		config_bad_value(ld, "%s in %s", why, config_quote(value, q));
		return;
	}
	*list = config_xreallocarray(*list, *count + 1, sizeof(**list));
	*origins =
	    config_xreallocarray(*origins, *count + 1, sizeof(**origins));
	(*list)[*count] = la;
	(*origins)[*count] = config_xstrdup(ld->origin);
	(*count)++;
}

void config_set_listen(struct loader *ld, const char *value)
{
	add_listen(ld, value, false, &ld->cfg->listen, &ld->cfg->listen_count,
		   &ld->listen_at);
}

void config_clear_listen(struct loader *ld)
{
	clear_listen_list(&ld->cfg->listen, &ld->cfg->listen_count,
			  &ld->listen_at);
}

void config_set_pop3_listen(struct loader *ld, const char *value)
{
	add_listen(ld, value, true, &ld->cfg->pop3_listen,
		   &ld->cfg->pop3_listen_count, &ld->pop3_listen_at);
}

void config_clear_pop3_listen(struct loader *ld)
{
	clear_listen_list(&ld->cfg->pop3_listen, &ld->cfg->pop3_listen_count,
			  &ld->pop3_listen_at);
}

void config_free_listen_addr(struct listen_addr *la)
{
	if (la == NULL)
		return;
	free(la->text);
	free(la);
}

void config_set_metrics_listen(struct loader *ld, const char *value)
{
	struct listen_addr la;
	struct listen_addr *copy = NULL;
	const char *why;
	char q[CONFIG_QUOTE_BUF];

	if (*value != '\0') {
		why = config_parse_listen_entry(value, false, false, &la);
		if (why != NULL) {
			config_bad_value(ld, "%s in %s", why,
					 config_quote(value, q));
			return;
		}
		copy = malloc(sizeof(*copy));
		if (copy == NULL)
			config_out_of_memory();
		*copy = la;
	}
	config_free_listen_addr(ld->cfg->metrics_listen);
	ld->cfg->metrics_listen = copy;
}

/* relay_networks and proxy_networks: one CIDR more on the list. */
static void add_network(struct loader *ld, struct cidr **nets, size_t *count,
			const char *value)
{
	struct cidr net;
	char q[CONFIG_QUOTE_BUF];

	if (config_parse_cidr(value, &net) < 0) {
		config_bad_value(ld, "invalid network %s",
				 config_quote(value, q));
		return;
	}
	*nets = config_xreallocarray(*nets, *count + 1, sizeof(**nets));
	(*nets)[(*count)++] = net;
}

static void clear_networks(struct cidr **nets, size_t *count)
{
	free(*nets);
	*nets = NULL;
	*count = 0;
}

void config_set_relay_network(struct loader *ld, const char *value)
{
	add_network(ld, &ld->cfg->relay_networks, &ld->cfg->relay_network_count,
		    value);
}

void config_clear_relay_networks(struct loader *ld)
{
	clear_networks(&ld->cfg->relay_networks, &ld->cfg->relay_network_count);
}

void config_set_proxy_network(struct loader *ld, const char *value)
{
	add_network(ld, &ld->cfg->proxy_networks, &ld->cfg->proxy_network_count,
		    value);
}

void config_clear_proxy_networks(struct loader *ld)
{
	clear_networks(&ld->cfg->proxy_networks, &ld->cfg->proxy_network_count);
}

void config_set_dns_server(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct dns_server ds = {0};
	const char *why;
	char q[CONFIG_QUOTE_BUF];

	/* The default names the system's resolver configuration; it cannot
	 * be mixed with explicit servers. */
	if (strcmp(value, CONFIG_RESOLV_CONF) == 0) {
		if (cfg->dns_server_count > 0)
			config_bad_value(ld,
					 "%s cannot be combined with servers",
					 config_quote(value, q));
		else
			cfg->dns_from_resolv_conf = true;
		return;
	}
	if (cfg->dns_from_resolv_conf) {
		config_bad_value(ld, "%s cannot be combined with \"%s\"",
				 config_quote(value, q), CONFIG_RESOLV_CONF);
		return;
	}
	why = config_parse_host_port(value, strlen(value), false,
				     CONFIG_DNS_PORT, &ds.addr, &ds.addrlen);
	if (why != NULL) {
		config_bad_value(ld, "%s in %s", why, config_quote(value, q));
		return;
	}
	ds.text = config_xstrdup(value);
	cfg->dns_servers =
	    config_xreallocarray(cfg->dns_servers, cfg->dns_server_count + 1,
				 sizeof(*cfg->dns_servers));
	cfg->dns_servers[cfg->dns_server_count++] = ds;
}

void config_clear_dns_servers(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	for (size_t i = 0; i < cfg->dns_server_count; i++)
		free(cfg->dns_servers[i].text);
	free(cfg->dns_servers);
	cfg->dns_servers = NULL;
	cfg->dns_server_count = 0;
	cfg->dns_from_resolv_conf = false;
}

void config_set_mx_port(struct loader *ld, const char *value)
{
	char q[CONFIG_QUOTE_BUF];

	if (config_parse_port(value, strlen(value), &ld->cfg->mx_port) < 0)
		config_bad_value(ld, "invalid port %s (1 to 65535)",
				 config_quote(value, q));
}

void config_set_ipv6_prefix_length(struct loader *ld, const char *value)
{
	uint64_t v;
	char q[CONFIG_QUOTE_BUF];

	if (config_parse_decimal(value, strlen(value), 128, &v) < 0 || v == 0)
		config_bad_value(ld, "invalid prefix length %s (1 to 128)",
				 config_quote(value, q));
	else
		ld->cfg->ipv6_prefix_length = (unsigned)v;
}

static void print_listen_list(const struct listen_addr *list, size_t count,
			      FILE *out)
{
	for (size_t i = 0; i < count; i++)
		fprintf(out, "%s%s", i ? ", " : "", list[i].text);
}

void config_print_listen(const struct config *cfg, FILE *out)
{
	print_listen_list(cfg->listen, cfg->listen_count, out);
}

void config_print_pop3_listen(const struct config *cfg, FILE *out)
{
	print_listen_list(cfg->pop3_listen, cfg->pop3_listen_count, out);
}

void config_print_metrics_listen(const struct config *cfg, FILE *out)
{
	if (cfg->metrics_listen != NULL)
		fputs(cfg->metrics_listen->text, out);
}

static void print_networks(const struct cidr *nets, size_t count, FILE *out)
{
	for (size_t i = 0; i < count; i++) {
		if (i > 0)
			fputs(", ", out);
		config_print_cidr(&nets[i], out);
	}
}

void config_print_relay_networks(const struct config *cfg, FILE *out)
{
	print_networks(cfg->relay_networks, cfg->relay_network_count, out);
}

void config_print_proxy_networks(const struct config *cfg, FILE *out)
{
	print_networks(cfg->proxy_networks, cfg->proxy_network_count, out);
}

void config_print_dns_servers(const struct config *cfg, FILE *out)
{
	if (cfg->dns_from_resolv_conf)
		fputs(CONFIG_RESOLV_CONF, out);
	for (size_t i = 0; i < cfg->dns_server_count; i++)
		fprintf(out, "%s%s", i ? ", " : "", cfg->dns_servers[i].text);
}

void config_print_mx_port(const struct config *cfg, FILE *out)
{
	fprintf(out, "%u", (unsigned)cfg->mx_port);
}
