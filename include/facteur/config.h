/*
 * The effective settings of facteur: the configuration file, then the
 * FACTEUR_* environment on top of it (SPEC.md §3; FACTEUR_<KEY>_FILE
 * names a file holding KEY's value, §9.4). Loading never exits: it
 * returns every error it found, each naming the file and line (or the
 * variable) and the key, so that callers print them all and exit 78.
 * A reload builds a new struct and swaps it; a struct is never changed
 * once loaded.
 */
#ifndef FACTEUR_CONFIG_H
#define FACTEUR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "facteur/route.h"
#include "facteur/shape.h"

#define CONFIG_EX_CONFIG 78 /* sysexits.h EX_CONFIG */
#define CONFIG_DEFAULT_FILE "/etc/facteur/facteur.conf"

enum listen_mode {
	LISTEN_SMTP,
	LISTEN_SUBMISSION,
	LISTEN_SMTPS,
	LISTEN_POP3,
	LISTEN_POP3S,
};

enum tls_policy {
	TLS_POLICY_NONE,
	TLS_POLICY_MAY,
	TLS_POLICY_ENCRYPT,
	TLS_POLICY_VERIFY,
};

enum mailbox_format {
	MAILBOX_MAILDIR,
	MAILBOX_MBOX,
};

/* How the I/O thread makes a round's writes durable: each file and
 * directory by itself, or each file system by one syncfs(2). */
enum flush_method {
	FLUSH_FSYNC,
	FLUSH_SYNCFS,
};

enum log_format {
	LOG_FORMAT_LOGFMT,
	LOG_FORMAT_JSON,
};

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/* One "ADDR:PORT[/MODE]" entry, already resolved to a socket address. */
struct listen_addr {
	char *text; /* as written, for messages: "127.0.0.1:2525/smtp" */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	enum listen_mode mode;
	/* "+proxy": a PROXY protocol header comes first (proxy.h). */
	bool proxy;
};

/* An "IP[/PREFIX]" entry of relay_networks. */
struct cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

/* A dnsbl entry: a blocklist zone and the A records that list a client
 * in it (IPv4, network order; none: any). */
struct config_dnsbl {
	char *zone;
	uint8_t (*match)[4];
	size_t match_count;
};

/* What a milter's failure (dead, slow, garbage) does to the session. */
enum milter_default {
	MILTER_DEFAULT_TEMPFAIL,
	MILTER_DEFAULT_ACCEPT,
	MILTER_DEFAULT_REJECT
};

/* A milter entry: its address as written (its name in logs and metrics),
 * the socket address (AF_UNIX or an IP), the reply timeout. */
struct config_milter {
	char *name;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	unsigned timeout; /* seconds */
	enum milter_default on_error;
};

/* A dns_servers entry: "IP[:PORT]", IPv6 as "[::1]:53". */
struct dns_server {
	char *text;
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

/* A dkim_sign line, DOMAIN SELECTOR KEYFILE, and where it was set
 * ("file:line" or the variable) for the key loader's errors. */
struct config_dkim_sign {
	char *domain;
	char *selector;
	char *keyfile;
	char *origin;
};

struct string_list {
	char **items;
	size_t count;
};

struct config {
	char *source;          /* the file read, or NULL when none */
	char *hostname;
	struct listen_addr *listen;
	size_t listen_count;
	struct listen_addr *pop3_listen;
	size_t pop3_listen_count;
	struct listen_addr *metrics_listen; /* NULL when empty */
	char *spool_dir;
	struct string_list local_domains; /* lower case */
	char *users_file;                 /* NULL when empty */
	char *aliases_file;               /* NULL when empty */
	enum mailbox_format mailbox_format;
	enum flush_method flush_method;
	char *mailbox_path;
	struct cidr *relay_networks;
	size_t relay_network_count;
	struct route_table *routes; /* never NULL; may be empty */
	struct route_table *sender_routes; /* never NULL; may be empty */
	bool dns_from_resolv_conf;  /* dns_servers left at its default */
	struct dns_server *dns_servers;
	size_t dns_server_count;
	uint16_t mx_port;
	char *tls_cert; /* NULL when empty */
	char *tls_key;
	enum tls_policy tls_outbound;
	char *tls_ca_file; /* NULL: the system store */
	uint64_t max_message_size; /* octets */
	unsigned max_recipients;
	unsigned max_connections;
	unsigned max_connections_per_ip;
	unsigned smtp_timeout;   /* seconds */
	unsigned retry_min;      /* seconds */
	unsigned retry_max;      /* seconds */
	unsigned queue_lifetime; /* seconds */
	unsigned delay_notice;   /* seconds; 0: no delay DSNs */
	unsigned max_connections_per_destination;
	/* The account to switch to, or NULL to stay who we are: unset with
	 * no "facteur" account, empty, "root" (any uid 0) or the account
	 * already running. A name that does not exist is an error. */
	char *user;
	enum log_format log_format;
	enum log_level log_level;
	/* Octets an SMTP transaction's envelope may hold (sender,
	 * recipients, their parameters and alias expansions), and all open
	 * transactions together. */
	uint64_t max_envelope_size;
	uint64_t max_envelope_memory;
	/* The leading bits of an IPv6 client's address that make one client
	 * for max_connections_per_ip and auth_fail_limit. */
	unsigned ipv6_prefix_length;
	/* auth_fail_limit = N/DURATION: failed logins from one client
	 * within the window, past which it is refused until it ends. */
	unsigned auth_fail_limit;
	unsigned auth_fail_window; /* seconds */
	/* The peers trusted to send a PROXY protocol header on a "+proxy"
	 * listen entry. */
	struct cidr *proxy_networks;
	size_t proxy_network_count;
	/* SO_REUSEPORT on the SMTP and POP3 sockets: several daemons, each
	 * with its own spool, share the listen addresses. */
	bool reuse_port;
	/* Forwarding with SRS: the rewriting domain (lower case) and the
	 * file of its secrets; NULL when empty. */
	char *srs_domain;
	char *srs_secret_file;
	/* Who may send as whom once authenticated; NULL when empty. */
	char *senders_file;
	/* dkim_sign: the keys that sign mail from trusted clients. */
	struct config_dkim_sign *dkim_sign;
	size_t dkim_sign_count;
	/* Delivery shaping per recipient domain (shape.h); never NULL. */
	struct shape_table *shapes;
	char *shape_redis; /* HOST:PORT[/DB]; NULL: limits per instance */
	/* mailbox_owner (NULL: the daemon's own account) as looked up, and
	 * mailbox_mode, the mode of the files delivery makes (mailowner.h). */
	char *mailbox_owner;
	uid_t mailbox_uid;
	gid_t mailbox_gid;
	mode_t mailbox_mode;
	/* dnsbl: blocklists asked about each client (dnsbl.h). */
	struct config_dnsbl *dnsbl;
	size_t dnsbl_count;
	/* max_messages_per_ip = N/m|N/h: MAIL commands one client may give
	 * within the window, across sessions; 0: no limit. */
	unsigned max_messages;
	unsigned max_messages_window; /* seconds */
	/* local_transport: an LMTP server for local recipients (route.h);
	 * kind LMTP_NONE: facteur writes the mailboxes. */
	struct route_lmtp local_transport;
	/* submit_socket: the local submission socket (submit.h); NULL: the
	 * default beside the spool, "none": not served. */
	char *submit_socket;
	/* dane = yes: TLSA records of MX hosts, from a validating resolver
	 * in dns_servers, make TLS mandatory and authenticated (RFC 7672). */
	bool dane;
	/* milter: the filters every SMTP session asks, in order (milter.h). */
	struct config_milter *milters;
	size_t milter_count;
	/* mta_sts: honour the MTA-STS policies of recipient domains (MX
	 * delivery only); default yes unless tls_outbound = none. */
	bool mta_sts;
	/* tlsrpt_from: the sender of the daily TLS reports (RFC 8460);
	 * NULL when empty: no reports. */
	char *tlsrpt_from;
};

/* The errors a load found, in order, each a full sentence such as
 * "/etc/facteur/facteur.conf:12: max_recipients: invalid number \"ten\"" or
 * "FACTEUR_LISTEN: listen: invalid port in \"127.0.0.1:99999\"". */
struct config_errors {
	char **messages;
	size_t count;
};

/*
 * Load the settings. `path` is the -c/-C argument or NULL; then
 * $FACTEUR_CONFIG, then CONFIG_DEFAULT_FILE if it exists, then none.
 * `environ_vars` is a NULL-terminated "NAME=value" array (normally
 * `environ`). Returns the config, or NULL with `errors` filled.
 */
struct config *config_load(const char *path, char *const *environ_vars,
                           struct config_errors *errors);

/* Parse settings from text as if read from a file named `name`; the
 * environment array may be NULL. For tests and fuzzing. */
struct config *config_load_string(const char *text, const char *name,
                                  char *const *environ_vars,
                                  struct config_errors *errors);

void config_free(struct config *cfg);
void config_errors_clear(struct config_errors *errors);
/* Append one message (printf format); used by every loader of a file
 * named in the configuration (users, aliases, routes' auth files). */
void config_errors_add(struct config_errors *errors, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The regular file that setting `key` names (users_file, aliases_file),
 * read whole and bounded by `max` (wholefile.h; flags such as
 * WHOLEFILE_SECRET): its text, NUL-terminated, *len octets; or NULL
 * after adding "PATH: KEY: why" to errors. */
char *config_read_named_file(const char *path, const char *key, size_t max,
			     unsigned flags, size_t *len,
			     struct config_errors *errors);

/*
 * The lines of a file the settings name (users_file, aliases_file,
 * senders_file), one at a time: numbered from 1, blanks (space, tab, CR)
 * trimmed around them. A line holding a NUL byte is reported as
 * "NAME:LINE: KEY: NUL byte in line" and comes back as
 * CONFIG_LINE_BROKEN, whatever else it holds.
 */
enum config_line {
	CONFIG_LINE_END,      /* no line left */
	CONFIG_LINE_ENTRY,    /* text from the line's first column */
	CONFIG_LINE_INDENTED, /* text after a space or tab in the first
				 column (an alias' continuation) */
	CONFIG_LINE_EMPTY,    /* blank, or a comment ('#' first) */
	CONFIG_LINE_BROKEN,   /* a NUL byte, already reported */
};

struct config_lines {
	const char *next;
	const char *end;
	const char *name; /* the file, for messages */
	const char *key;  /* the setting that names it */
	struct config_errors *errors;
	size_t lineno; /* of the line last returned */
};

void config_lines_start(struct config_lines *lines, const char *text,
			size_t len, const char *name, const char *key,
			struct config_errors *errors);
/* The next line's kind; for an entry or an indented line, its text
 * (trimmed, not NUL-terminated) in *line and *len. */
enum config_line config_lines_next(struct config_lines *lines,
				   const char **line, size_t *len);

/* Print the effective settings as "key = value" lines, every key of the
 * table in SPEC.md §3 in its order, lists comma-separated. */
void config_print(const struct config *cfg, FILE *out);

/* Why the host name looks wrong though valid (it has no dot), or NULL:
 * a warning at start, at reload and in -n. */
const char *config_hostname_warning(const struct config *cfg);

/* Parsing helpers, public for their unit tests. Each returns 0, or -1
 * when the text is not valid. On success config_parse_listen sets
 * out->text to a malloc'd copy of the text (the caller frees it). */
int config_parse_duration(const char *text, unsigned *seconds);
int config_parse_size(const char *text, uint64_t *octets);
int config_parse_listen(const char *text, bool pop3, struct listen_addr *out);
int config_parse_cidr(const char *text, struct cidr *out);
/* "N/DURATION" (auth_fail_limit): N and the duration both above 0. */
int config_parse_rate(const char *text, unsigned *count, unsigned *seconds);

/* Is this address inside one of the networks? */
bool config_cidr_match(const struct cidr *nets, size_t count,
                       const struct sockaddr *addr);

/* Is this (lower-cased) domain one of local_domains? */
bool config_is_local_domain(const struct config *cfg, const char *domain);

#endif
