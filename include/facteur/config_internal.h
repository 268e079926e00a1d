/*
 * What the files of the config module share (config.c, config_env.c,
 * config_value.c, config_net.c, config_local.c, config_route.c,
 * config_filter.c); nothing outside them includes this. config.c holds
 * the table of keys and the load; the others parse and print the values
 * of one area each, called from the table.
 */
#ifndef FACTEUR_CONFIG_INTERNAL_H
#define FACTEUR_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "facteur/config.h"

#define CONFIG_QUOTE_MAX 120 /* text quoted back in errors */
/* Bytes of user text quoted for a message: printable ASCII as is,
 * anything else escaped, cut after CONFIG_QUOTE_MAX bytes. */
#define CONFIG_QUOTE_BUF (CONFIG_QUOTE_MAX * 4 + 8)
#define CONFIG_RESOLV_CONF "/etc/resolv.conf"
#define CONFIG_ENV_FILE "FACTEUR_CONFIG" /* names the file; not a key */
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

enum key {
	KEY_HOSTNAME,
	KEY_LISTEN,
	KEY_POP3_LISTEN,
	KEY_METRICS_LISTEN,
	KEY_SPOOL_DIR,
	KEY_LOCAL_DOMAINS,
	KEY_USERS_FILE,
	KEY_ALIASES_FILE,
	KEY_MAILBOX_FORMAT,
	KEY_MAILBOX_PATH,
	KEY_RELAY_NETWORKS,
	KEY_ROUTE,
	KEY_DNS_SERVERS,
	KEY_MX_PORT,
	KEY_TLS_CERT,
	KEY_TLS_KEY,
	KEY_TLS_OUTBOUND,
	KEY_TLS_CA_FILE,
	KEY_MAX_MESSAGE_SIZE,
	KEY_MAX_RECIPIENTS,
	KEY_MAX_CONNECTIONS,
	KEY_MAX_CONNECTIONS_PER_IP,
	KEY_MAX_CONNECTIONS_PER_DESTINATION,
	KEY_SMTP_TIMEOUT,
	KEY_RETRY_MIN,
	KEY_RETRY_MAX,
	KEY_QUEUE_LIFETIME,
	KEY_DELAY_NOTICE,
	KEY_USER,
	KEY_LOG_FORMAT,
	KEY_LOG_LEVEL,
	KEY_FLUSH_METHOD,
	KEY_MAX_ENVELOPE_SIZE,
	KEY_MAX_ENVELOPE_MEMORY,
	KEY_IPV6_PREFIX_LENGTH,
	KEY_AUTH_FAIL_LIMIT,
	KEY_PROXY_NETWORKS,
	KEY_REUSE_PORT,
	KEY_SENDER_ROUTE,
	KEY_SRS_DOMAIN,
	KEY_SRS_SECRET_FILE,
	KEY_SENDERS_FILE,
	KEY_DKIM_SIGN,
	KEY_SHAPE,
	KEY_SHAPE_REDIS,
	KEY_MAILBOX_OWNER,
	KEY_MAILBOX_MODE,
	KEY_DNSBL,
	KEY_MAX_MESSAGES_PER_IP,
	KEY_LOCAL_TRANSPORT,
	KEY_SUBMIT_SOCKET,
	KEY_DANE,
	KEY_MILTER,
	KEY_MTA_STS,
	KEY_TLSRPT_FROM,
	KEY_COUNT,
};

enum source {
	SOURCE_DEFAULT,
	SOURCE_FILE,
	SOURCE_ENV,
};

/* The state of one load: where the value being read comes from, and where
 * each key was last set, for the messages of the checks between keys. */
struct loader {
	struct config *cfg;
	struct config_errors *errors;
	const char *origin; /* "file:line" or "FACTEUR_X" */
	enum key key;
	bool file_seen[KEY_COUNT]; /* a list key's first file line drops
				      its default */
	char *set_at[KEY_COUNT];   /* NULL: left at its default */
	char **listen_at;	   /* per listen entry */
	char **pop3_listen_at;	   /* per pop3_listen entry */
};

typedef void key_set_fn(struct loader *ld, const char *value);
typedef void key_clear_fn(struct loader *ld);
typedef void key_print_fn(const struct config *cfg, FILE *out);

/* The key's name as the file spells it ("max_recipients"). */
const char *config_key_name(enum key key);

/* A load runs at start-up and on reload; a small allocation failing there
 * leaves nothing sensible to do but stop loudly. */
_Noreturn void config_out_of_memory(void);
void *config_xreallocarray(void *p, size_t n, size_t size);
char *config_xstrndup(const char *s, size_t len);
char *config_xstrdup(const char *s);
/* Free *slot and set it to a copy of value (NULL: to NULL). */
void config_replace_string(char **slot, const char *value);

const char *config_quote_n(const char *s, size_t len,
			   char buf[CONFIG_QUOTE_BUF]);
const char *config_quote(const char *s, char buf[CONFIG_QUOTE_BUF]);
/* An error about the value being read: "origin: key: message". */
void config_bad_value(struct loader *ld, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Apply one value (already trimmed) of `key` read from `origin`. */
void config_apply(struct loader *ld, enum key key, const char *value,
		  size_t len, enum source src, const char *origin);
/* Read a whole file of settings, bounded. Returns 0, 1 when it does not
 * exist and that is allowed, -1 after adding the error. */
int config_read_source(const char *path, bool missing_ok, char **text,
		       size_t *len, struct config_errors *errors);

/* config_env.c: the FACTEUR_* variables of `env` applied on top of the
 * file, and the value of one variable (NULL when unset). */
void config_read_environment(struct loader *ld, char *const *env);
const char *config_env_value(char *const *env, const char *name);

/* config_value.c: the values of several keys (numbers, ports, addresses)
 * parsed, and printed back as they read. Each parser returns 0 (or NULL)
 * when the text is valid, -1 (or the reason) when not. */
int config_parse_decimal(const char *s, size_t len, uint64_t max,
			 uint64_t *out);
int config_parse_port(const char *s, size_t len, uint16_t *port);
bool config_parse_ip(int family, const char *s, size_t len, uint8_t *out);
const char *config_parse_host_port(const char *s, size_t len, bool names,
				   uint16_t default_port,
				   struct sockaddr_storage *ss,
				   socklen_t *sslen);
/* "ADDR:PORT[/MODE[+proxy]]"; without with_mode (metrics_listen) a mode
 * is refused. On success out->text is a malloc'd copy of text. */
const char *config_parse_listen_entry(const char *text, bool pop3,
				      bool with_mode, struct listen_addr *out);
void config_format_duration(unsigned seconds, char *buf, size_t len);
void config_print_size(uint64_t octets, FILE *out);
void config_print_cidr(const struct cidr *net, FILE *out);

/* Setters: each parses one value (or one item of a list key) and stores
 * it, or reports why not and leaves the setting as it was. Clearers
 * forget every item of a list key. Printers for -n: each prints a value
 * in the form its key reads, so that the output loads back as the same
 * settings. */

/* config_net.c: where facteur listens, whom it trusts, whom it asks. */
key_set_fn config_set_listen, config_set_pop3_listen, config_set_metrics_listen,
    config_set_relay_network, config_set_proxy_network, config_set_dns_server,
    config_set_mx_port, config_set_ipv6_prefix_length;
key_clear_fn config_clear_listen, config_clear_pop3_listen,
    config_clear_relay_networks, config_clear_proxy_networks,
    config_clear_dns_servers;
key_print_fn config_print_listen, config_print_pop3_listen,
    config_print_metrics_listen, config_print_relay_networks,
    config_print_proxy_networks, config_print_dns_servers, config_print_mx_port;
void config_free_listen_addr(struct listen_addr *la);

/* config_local.c: this host, its account and its local mail. */
key_set_fn config_set_hostname, config_set_spool_dir, config_set_local_domain,
    config_set_srs_domain, config_set_mailbox_path, config_set_mailbox_owner,
    config_set_mailbox_mode, config_set_user;
key_clear_fn config_clear_local_domains;
key_print_fn config_print_local_domains, config_print_mailbox_mode;

/* config_route.c: how mail leaves: routes, shaping, the LMTP server,
 * DKIM signing. */
key_set_fn config_set_route, config_set_sender_route, config_set_shape,
    config_set_shape_redis, config_set_local_transport, config_set_dkim_sign;
key_clear_fn config_clear_routes, config_clear_sender_routes,
    config_clear_shapes, config_clear_dkim_sign;
key_print_fn config_print_routes, config_print_sender_routes,
    config_print_shapes, config_print_local_transport, config_print_dkim_sign;
void config_free_dkim_sign(struct config *cfg);

/* config_filter.c: what a client is checked against: blocklists, milters,
 * limits per client. */
key_set_fn config_set_dnsbl, config_set_milter, config_set_auth_fail_limit,
    config_set_max_messages;
key_clear_fn config_clear_dnsbl, config_clear_milters;
key_print_fn config_print_dnsbl, config_print_milters,
    config_print_auth_fail_limit, config_print_max_messages;
void config_free_dnsbl(struct config *cfg);
void config_free_milters(struct config *cfg);

#endif
