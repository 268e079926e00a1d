/*
 * The effective settings: built-in defaults, then the file, then the
 * FACTEUR_* environment. Each value is parsed where it is read, so that
 * its error names its file:line or variable; checks between keys run
 * once everything is read. Every error is collected, none stops the load.
 * This file holds the table of keys, the reading of the file, the checks,
 * -n's printout, and the line reader of the files the settings name; the
 * values of special keys are parsed and printed by area in config_net.c,
 * config_local.c, config_route.c and config_filter.c, the common ones in
 * config_value.c, and the environment is read in config_env.c.
 */
#include "facteur/config.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/config_internal.h"
#include "facteur/wholefile.h"

#define CONFIG_FILE_MAX (16u * 1024 * 1024) /* a config file, not a disk */

/* What a key's field of struct config holds. The table names the kind
 * and the field, so that a key of a common kind needs no code of its
 * own: with set NULL its kind parses it, and its kind prints it for -n. */
enum slot_kind {
	SLOT_OTHER,    /* key_def.set and key_def.print do it */
	SLOT_STRING,   /* char *; set by kind, an empty value is NULL */
	SLOT_COUNT,    /* unsigned, above 0 */
	SLOT_DURATION, /* unsigned seconds, above 0 */
	SLOT_SIZE,     /* uint64_t octets, above 0 */
	SLOT_CHOICE,   /* an enum, by its index in key_def.names */
	SLOT_YES_NO,   /* bool */
};

struct key_def {
	const char *name;
	const char *default_value; /* NULL: computed (hostname, user) */
	key_set_fn *set;	   /* NULL: set by slot kind */
	key_clear_fn *clear;	   /* list keys only: forget every item */
	key_print_fn *print;	   /* SLOT_OTHER only */
	enum slot_kind slot;
	size_t offset;		  /* of the slot in struct config */
	const char *const *names; /* SLOT_CHOICE: the values, by index */
	size_t name_count;
	/* A list whose values may hold commas and spaces: one value a file
	 * line, `;` between values in the environment. */
	bool semicolons;
};

_Noreturn void config_out_of_memory(void)
{
	static const char msg[] = "facteur: config: out of memory\n";
	ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);

	(void)n;
	abort();
}

void *config_xreallocarray(void *p, size_t n, size_t size)
{
	void *q = reallocarray(p, n == 0 ? 1 : n, size);

	if (q == NULL)
		config_out_of_memory();
	return q;
}

char *config_xstrndup(const char *s, size_t len)
{
	char *d = strndup(s, len);

	if (d == NULL)
		config_out_of_memory();
	return d;
}

char *config_xstrdup(const char *s)
{
	return config_xstrndup(s, strlen(s));
}

void config_replace_string(char **slot, const char *value)
{
	char *copy = value == NULL ? NULL : config_xstrdup(value);

	free(*slot);
	*slot = copy;
}

/* A message of a printf format, malloc'd. */
static char *format_message(const char *fmt, va_list ap)
{
	char *msg;

	if (vasprintf(&msg, fmt, ap) < 0)
		config_out_of_memory();
	return msg;
}

void config_errors_add(struct config_errors *errors, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = format_message(fmt, ap);
	va_end(ap);
	errors->messages = config_xreallocarray(
	    errors->messages, errors->count + 1, sizeof(*errors->messages));
	errors->messages[errors->count++] = msg;
}

char *config_read_named_file(const char *path, const char *key, size_t max,
			     unsigned flags, size_t *len,
			     struct config_errors *errors)
{
	char *text = NULL;
	const char *why = NULL;

	switch (
	    wholefile_read(path, max, flags | WHOLEFILE_REGULAR, &text, len)) {
	case WHOLEFILE_OK:
		return text;
	case WHOLEFILE_OPEN:
		why = "cannot open";
		break;
	case WHOLEFILE_STAT:
		why = "cannot stat";
		break;
	case WHOLEFILE_NOT_REGULAR:
		config_errors_add(errors, "%s: %s: not a regular file", path,
				  key);
		return NULL;
	case WHOLEFILE_TOO_LARGE:
		config_errors_add(errors, "%s: %s: file too large", path, key);
		return NULL;
	case WHOLEFILE_NOMEM:
		config_errors_add(errors, "%s: %s: out of memory", path, key);
		return NULL;
	case WHOLEFILE_READ:
		why = "cannot read";
		break;
	}
	config_errors_add(errors, "%s: %s: %s: %s", path, key, why,
			  strerror(errno));
	return NULL;
}

void config_lines_start(struct config_lines *lines, const char *text,
			size_t len, const char *name, const char *key,
			struct config_errors *errors)
{
	*lines = (struct config_lines){
	    .next = text,
	    .end = text + len,
	    .name = name,
	    .key = key,
	    .errors = errors,
	};
}

enum config_line config_lines_next(struct config_lines *lines,
				   const char **line, size_t *len)
{
	const char *start = lines->next;
	const char *nl;
	size_t n;

	if (start >= lines->end)
		return CONFIG_LINE_END;
	nl = memchr(start, '\n', (size_t)(lines->end - start));
	n = (size_t)((nl != NULL ? nl : lines->end) - start);
	lines->next = nl != NULL ? nl + 1 : lines->end;
	lines->lineno++;
	if (memchr(start, '\0', n) != NULL) {
		config_errors_add(lines->errors, "%s:%zu: %s: NUL byte in line",
				  lines->name, lines->lineno, lines->key);
		return CONFIG_LINE_BROKEN;
	}
	*line = ascii_trim(start, &n, ASCII_LINE_BLANKS);
	*len = n;
	if (n == 0 || **line == '#')
		return CONFIG_LINE_EMPTY;
	return start[0] == ' ' || start[0] == '\t' ? CONFIG_LINE_INDENTED
						   : CONFIG_LINE_ENTRY;
}

void config_errors_clear(struct config_errors *errors)
{
	if (errors == NULL)
		return;
	for (size_t i = 0; i < errors->count; i++)
		free(errors->messages[i]);
	free(errors->messages);
	errors->messages = NULL;
	errors->count = 0;
}

const char *config_quote_n(const char *s, size_t len,
			   char buf[CONFIG_QUOTE_BUF])
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	buf[o++] = '"';
	for (size_t i = 0; i < len && i < CONFIG_QUOTE_MAX; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c >= 0x20 && c < 0x7f) {
			buf[o++] = (char)c;
		} else {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		}
	}
	if (len > CONFIG_QUOTE_MAX) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

const char *config_quote(const char *s, char buf[CONFIG_QUOTE_BUF])
{
	return config_quote_n(s, strlen(s), buf);
}

/* The table of keys in SPEC.md §3 order, which is also config_print's;
 * two keys beyond the SPEC's table (max_connections_per_destination,
 * delay_notice) sit beside their kin. */
static const struct key_def key_defs[KEY_COUNT];

void config_bad_value(struct loader *ld, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = format_message(fmt, ap);
	va_end(ap);
	config_errors_add(ld->errors, "%s: %s: %s", ld->origin,
			  key_defs[ld->key].name, msg);
	free(msg);
}

/* Optional file keys: an empty value means unset. */
static void set_optional_string(char **slot, const char *value)
{
	config_replace_string(slot, *value == '\0' ? NULL : value);
}

static const char *const mailbox_format_names[] = {"maildir", "mbox"};
static const char *const tls_policy_names[] = {"none", "may", "encrypt",
					       "verify"};
static const char *const log_format_names[] = {"logfmt", "json"};
static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
static const char *const flush_method_names[] = {"fsync", "syncfs"};

/* SLOT_CHOICE reads and writes these enums as int. */
_Static_assert(sizeof(enum mailbox_format) == sizeof(int) &&
		   sizeof(enum tls_policy) == sizeof(int) &&
		   sizeof(enum log_format) == sizeof(int) &&
		   sizeof(enum log_level) == sizeof(int) &&
		   sizeof(enum flush_method) == sizeof(int),
	       "a choice is stored as an int");

/* Unlike the other durations, 0 is allowed: it turns delay notices off. */
static void set_delay_notice(struct loader *ld, const char *value)
{
	unsigned v;
	char q[CONFIG_QUOTE_BUF];

	if (config_parse_duration(value, &v) < 0)
		config_bad_value(
		    ld, "invalid duration %s (a number with s, m, h or d)",
		    config_quote(value, q));
	else
		ld->cfg->delay_notice = v;
}

#define FIELD(kind, field)                                                     \
	.slot = kind, .offset = offsetof(struct config, field)
#define CHOICE(field, list)                                                    \
	FIELD(SLOT_CHOICE, field), .names = list, .name_count = COUNT_OF(list)

static const struct key_def key_defs[KEY_COUNT] = {
    [KEY_HOSTNAME] = {"hostname", NULL, .set = config_set_hostname,
		      FIELD(SLOT_STRING, hostname)},
    [KEY_LISTEN] = {"listen", "127.0.0.1:2525", .set = config_set_listen,
		    .clear = config_clear_listen, .print = config_print_listen},
    [KEY_POP3_LISTEN] = {"pop3_listen", "", .set = config_set_pop3_listen,
			 .clear = config_clear_pop3_listen,
			 .print = config_print_pop3_listen},
    [KEY_METRICS_LISTEN] = {"metrics_listen", "",
			    .set = config_set_metrics_listen,
			    .print = config_print_metrics_listen},
    [KEY_SPOOL_DIR] = {"spool_dir", "/var/spool/facteur",
		       .set = config_set_spool_dir,
		       FIELD(SLOT_STRING, spool_dir)},
    [KEY_LOCAL_DOMAINS] = {"local_domains", "localhost",
			   .set = config_set_local_domain,
			   .clear = config_clear_local_domains,
			   .print = config_print_local_domains},
    [KEY_USERS_FILE] = {"users_file", "", FIELD(SLOT_STRING, users_file)},
    [KEY_ALIASES_FILE] = {"aliases_file", "", FIELD(SLOT_STRING, aliases_file)},
    [KEY_MAILBOX_FORMAT] = {"mailbox_format", "maildir",
			    CHOICE(mailbox_format, mailbox_format_names)},
    [KEY_MAILBOX_PATH] = {"mailbox_path", "/var/mail/%d/%u",
			  .set = config_set_mailbox_path,
			  FIELD(SLOT_STRING, mailbox_path)},
    [KEY_RELAY_NETWORKS] = {"relay_networks", "127.0.0.0/8, ::1/128",
			    .set = config_set_relay_network,
			    .clear = config_clear_relay_networks,
			    .print = config_print_relay_networks},
    [KEY_ROUTE] = {"route", "", .set = config_set_route,
		   .clear = config_clear_routes, .print = config_print_routes},
    [KEY_DNS_SERVERS] = {"dns_servers", CONFIG_RESOLV_CONF,
			 .set = config_set_dns_server,
			 .clear = config_clear_dns_servers,
			 .print = config_print_dns_servers},
    [KEY_MX_PORT] = {"mx_port", "25", .set = config_set_mx_port,
		     .print = config_print_mx_port},
    [KEY_TLS_CERT] = {"tls_cert", "", FIELD(SLOT_STRING, tls_cert)},
    [KEY_TLS_KEY] = {"tls_key", "", FIELD(SLOT_STRING, tls_key)},
    [KEY_TLS_OUTBOUND] = {"tls_outbound", "may",
			  CHOICE(tls_outbound, tls_policy_names)},
    [KEY_TLS_CA_FILE] = {"tls_ca_file", "", FIELD(SLOT_STRING, tls_ca_file)},
    [KEY_MAX_MESSAGE_SIZE] = {"max_message_size", "25M",
			      FIELD(SLOT_SIZE, max_message_size)},
    [KEY_MAX_RECIPIENTS] = {"max_recipients", "1000",
			    FIELD(SLOT_COUNT, max_recipients)},
    [KEY_MAX_CONNECTIONS] = {"max_connections", "10000",
			     FIELD(SLOT_COUNT, max_connections)},
    [KEY_MAX_CONNECTIONS_PER_IP] = {"max_connections_per_ip", "100",
				    FIELD(SLOT_COUNT, max_connections_per_ip)},
    [KEY_MAX_CONNECTIONS_PER_DESTINATION] =
	{"max_connections_per_destination", "20",
	 FIELD(SLOT_COUNT, max_connections_per_destination)},
    [KEY_SMTP_TIMEOUT] = {"smtp_timeout", "5m",
			  FIELD(SLOT_DURATION, smtp_timeout)},
    [KEY_RETRY_MIN] = {"retry_min", "1m", FIELD(SLOT_DURATION, retry_min)},
    [KEY_RETRY_MAX] = {"retry_max", "1h", FIELD(SLOT_DURATION, retry_max)},
    [KEY_QUEUE_LIFETIME] = {"queue_lifetime", "5d",
			    FIELD(SLOT_DURATION, queue_lifetime)},
    [KEY_DELAY_NOTICE] = {"delay_notice", "4h", .set = set_delay_notice,
			  FIELD(SLOT_DURATION, delay_notice)},
    [KEY_USER] = {"user", NULL, .set = config_set_user,
		  FIELD(SLOT_STRING, user)},
    [KEY_LOG_FORMAT] = {"log_format", "logfmt",
			CHOICE(log_format, log_format_names)},
    [KEY_LOG_LEVEL] = {"log_level", "info", CHOICE(log_level, log_level_names)},
    [KEY_FLUSH_METHOD] = {"flush_method", "fsync",
			  CHOICE(flush_method, flush_method_names)},
    [KEY_MAX_ENVELOPE_SIZE] = {"max_envelope_size", "256K",
			       FIELD(SLOT_SIZE, max_envelope_size)},
    [KEY_MAX_ENVELOPE_MEMORY] = {"max_envelope_memory", "256M",
				 FIELD(SLOT_SIZE, max_envelope_memory)},
    [KEY_IPV6_PREFIX_LENGTH] = {"ipv6_prefix_length", "64",
				.set = config_set_ipv6_prefix_length,
				FIELD(SLOT_COUNT, ipv6_prefix_length)},
    [KEY_AUTH_FAIL_LIMIT] = {"auth_fail_limit", "10/15m",
			     .set = config_set_auth_fail_limit,
			     .print = config_print_auth_fail_limit},
    [KEY_PROXY_NETWORKS] = {"proxy_networks", "127.0.0.0/8, ::1/128",
			    .set = config_set_proxy_network,
			    .clear = config_clear_proxy_networks,
			    .print = config_print_proxy_networks},
    [KEY_REUSE_PORT] = {"reuse_port", "no", FIELD(SLOT_YES_NO, reuse_port)},
    [KEY_SENDER_ROUTE] = {"sender_route", "", .set = config_set_sender_route,
			  .clear = config_clear_sender_routes,
			  .semicolons = true,
			  .print = config_print_sender_routes},
    [KEY_SRS_DOMAIN] = {"srs_domain", "", .set = config_set_srs_domain,
			FIELD(SLOT_STRING, srs_domain)},
    [KEY_SRS_SECRET_FILE] = {"srs_secret_file", "",
			     FIELD(SLOT_STRING, srs_secret_file)},
    [KEY_SENDERS_FILE] = {"senders_file", "", FIELD(SLOT_STRING, senders_file)},
    [KEY_DKIM_SIGN] = {"dkim_sign", "", .set = config_set_dkim_sign,
		       .clear = config_clear_dkim_sign,
		       .print = config_print_dkim_sign, .semicolons = true},
    [KEY_SHAPE] = {"shape", "", .set = config_set_shape,
		   .clear = config_clear_shapes, .print = config_print_shapes,
		   .semicolons = true},
    [KEY_SHAPE_REDIS] = {"shape_redis", "", .set = config_set_shape_redis,
			 FIELD(SLOT_STRING, shape_redis)},
    [KEY_MAILBOX_OWNER] = {"mailbox_owner", "", .set = config_set_mailbox_owner,
			   FIELD(SLOT_STRING, mailbox_owner)},
    [KEY_MAILBOX_MODE] = {"mailbox_mode", "0600",
			  .set = config_set_mailbox_mode,
			  .print = config_print_mailbox_mode},
    [KEY_DNSBL] = {"dnsbl", "", .set = config_set_dnsbl,
		   .clear = config_clear_dnsbl, .print = config_print_dnsbl,
		   .semicolons = true},
    [KEY_MAX_MESSAGES_PER_IP] = {"max_messages_per_ip", "",
				 .set = config_set_max_messages,
				 .print = config_print_max_messages},
    [KEY_LOCAL_TRANSPORT] = {"local_transport", "",
			     .set = config_set_local_transport,
			     .print = config_print_local_transport},
    [KEY_SUBMIT_SOCKET] = {"submit_socket", "",
			   FIELD(SLOT_STRING, submit_socket)},
    [KEY_DANE] = {"dane", "no", FIELD(SLOT_YES_NO, dane)},
    [KEY_MILTER] = {"milter", "", .set = config_set_milter,
		    .clear = config_clear_milters,
		    .print = config_print_milters, .semicolons = true},
    [KEY_MTA_STS] = {"mta_sts", "yes", FIELD(SLOT_YES_NO, mta_sts)},
    [KEY_TLSRPT_FROM] = {"tlsrpt_from", "", FIELD(SLOT_STRING, tlsrpt_from)},
};

const char *config_key_name(enum key key)
{
	return key_defs[key].name;
}

static bool find_key(const char *name, size_t len, enum key *out)
{
	for (int k = 0; k < KEY_COUNT; k++) {
		if (strlen(key_defs[k].name) == len &&
		    memcmp(key_defs[k].name, name, len) == 0) {
			*out = (enum key)k;
			return true;
		}
	}
	return false;
}

/* A control character would break the one-line "key = value" form that
 * -n prints and logs quote. */
static bool has_control(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return true;
	}
	return false;
}

/*
 * A count, a duration or a size that must be above 0: none of these
 * keys means anything at 0 (an envelope budget of 0 would refuse every
 * recipient).
 */
static void set_positive(struct loader *ld, enum slot_kind kind, void *slot,
			 const char *value)
{
	uint64_t v = 0;
	unsigned u = 0;
	const char *what;
	int rc;
	char q[CONFIG_QUOTE_BUF];

	switch (kind) {
	case SLOT_COUNT:
		rc = config_parse_decimal(value, strlen(value), UINT_MAX, &v);
		what = "invalid number %s";
		break;
	case SLOT_DURATION:
		rc = config_parse_duration(value, &u);
		v = u;
		what = "invalid duration %s (a number with s, m, h or d)";
		break;
	default:
		rc = config_parse_size(value, &v);
		what = "invalid size %s (a number with K, M or G)";
		break;
	}
	if (rc < 0)
		config_bad_value(ld, what, config_quote(value, q));
	else if (v == 0)
		config_bad_value(ld, "must be greater than 0");
	else if (kind == SLOT_SIZE)
		*(uint64_t *)slot = v;
	else
		*(unsigned *)slot = (unsigned)v;
}

/* One of def->names: its index in *slot, or an error that lists the
 * choices ("a, b or c"). */
static void set_choice(struct loader *ld, const struct key_def *def, int *slot,
		       const char *value)
{
	char q[CONFIG_QUOTE_BUF];
	char choices[128];
	size_t used = 0;

	for (size_t i = 0; i < def->name_count; i++) {
		if (strcmp(value, def->names[i]) == 0) {
			*slot = (int)i;
			return;
		}
	}
	choices[0] = '\0';
	for (size_t i = 0; i < def->name_count; i++) {
		const char *sep = i == 0		    ? ""
				  : i + 1 < def->name_count ? ", "
							    : " or ";
		int n = snprintf(choices + used, sizeof(choices) - used, "%s%s",
				 sep, def->names[i]);

		if (n < 0 || (size_t)n >= sizeof(choices) - used)
			break;
		used += (size_t)n;
	}
	config_bad_value(ld, "invalid value %s (%s)", config_quote(value, q),
			 choices);
}

static void set_yes_no(struct loader *ld, bool *slot, const char *value)
{
	char q[CONFIG_QUOTE_BUF];

	if (strcmp(value, "yes") == 0)
		*slot = true;
	else if (strcmp(value, "no") == 0)
		*slot = false;
	else
		config_bad_value(ld, "invalid value %s (yes or no)",
				 config_quote(value, q));
}

static void set_value(struct loader *ld, const struct key_def *def,
		      const char *value)
{
	void *slot = (char *)ld->cfg + def->offset;

	if (def->set != NULL) {
		def->set(ld, value);
		return;
	}
	switch (def->slot) {
	case SLOT_STRING:
		set_optional_string(slot, value);
		break;
	case SLOT_COUNT:
	case SLOT_DURATION:
	case SLOT_SIZE:
		set_positive(ld, def->slot, slot, value);
		break;
	case SLOT_CHOICE:
		set_choice(ld, def, slot, value);
		break;
	case SLOT_YES_NO:
		set_yes_no(ld, slot, value);
		break;
	case SLOT_OTHER: /* the table gives each of these a setter */
		break;
	}
}

void config_apply(struct loader *ld, enum key key, const char *value,
		  size_t len, enum source src, const char *origin)
{
	const struct key_def *def = &key_defs[key];
	char *copy;

	ld->origin = origin;
	ld->key = key;
	if (src != SOURCE_DEFAULT)
		config_replace_string(&ld->set_at[key], origin);
	if (has_control(value, len)) {
		config_bad_value(ld, "control character in value");
		return;
	}
	if (def->clear == NULL) {
		copy = config_xstrndup(value, len);
		set_value(ld, def, copy);
		free(copy);
		return;
	}
	/* Lists: the file's first line replaces the default and later
	 * lines append; the environment replaces everything. */
	if (src != SOURCE_FILE || !ld->file_seen[key])
		def->clear(ld);
	if (src == SOURCE_FILE)
		ld->file_seen[key] = true;
	if (len == 0)
		return;
	char separator = def->semicolons ? ';' : ',';
	if (def->semicolons && src == SOURCE_FILE)
		separator = '\0'; /* never in a line: the whole value */
	for (;;) {
		const char *comma = memchr(value, separator, len);
		size_t item_len = comma != NULL ? (size_t)(comma - value) : len;
		const char *item = ascii_trim(value, &item_len, " \t");

		if (item_len == 0) {
			config_bad_value(ld, "empty entry in list");
		} else {
			copy = config_xstrndup(item, item_len);
			set_value(ld, def, copy);
			free(copy);
		}
		if (comma == NULL)
			break;
		len -= (size_t)(comma + 1 - value);
		value = comma + 1;
	}
}

static void parse_line(struct loader *ld, const char *name, size_t lineno,
		       const char *line, size_t len)
{
	const char *eq;
	const char *key;
	const char *value;
	size_t key_len;
	size_t value_len;
	enum key k;
	char *origin;
	char q[CONFIG_QUOTE_BUF];

	if (len > 0 && line[len - 1] == '\r')
		len--;
	line = ascii_trim(line, &len, " \t");
	if (len == 0 || line[0] == '#')
		return;
	if (asprintf(&origin, "%s:%zu", name, lineno) < 0)
		config_out_of_memory();
	eq = memchr(line, '=', len);
	if (eq == NULL) {
		config_errors_add(ld->errors,
				  "%s: expected \"key = value\", got %s",
				  origin, config_quote_n(line, len, q));
		free(origin);
		return;
	}
	key_len = (size_t)(eq - line);
	key = ascii_trim(line, &key_len, " \t");
	value_len = len - (size_t)(eq + 1 - line);
	value = ascii_trim(eq + 1, &value_len, " \t");
	if (key_len == 0)
		config_errors_add(ld->errors, "%s: missing key before \"=\"",
				  origin);
	else if (!find_key(key, key_len, &k))
		config_errors_add(ld->errors, "%s: unknown key %s", origin,
				  config_quote_n(key, key_len, q));
	else
		config_apply(ld, k, value, value_len, SOURCE_FILE, origin);
	free(origin);
}

static void parse_text(struct loader *ld, const char *text, size_t len,
		       const char *name)
{
	const char *p = text;
	const char *end = text + len;
	size_t lineno = 0;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *line_end = nl != NULL ? nl : end;

		parse_line(ld, name, ++lineno, p, (size_t)(line_end - p));
		p = nl != NULL ? nl + 1 : end;
	}
}

static void check_tls_listeners(struct loader *ld,
				const struct listen_addr *list, size_t count,
				char **origins, enum key key)
{
	const struct config *cfg = ld->cfg;
	char q[CONFIG_QUOTE_BUF];

	if (cfg->tls_cert != NULL && cfg->tls_key != NULL)
		return;
	for (size_t i = 0; i < count; i++) {
		if (list[i].mode != LISTEN_SUBMISSION &&
		    list[i].mode != LISTEN_SMTPS &&
		    list[i].mode != LISTEN_POP3S)
			continue;
		ld->origin = origins[i] != NULL ? origins[i] : "default";
		ld->key = key;
		config_bad_value(ld, "%s needs tls_cert and tls_key",
				 config_quote(list[i].text, q));
	}
}

static const char *origin_of(struct loader *ld, enum key key)
{
	return ld->set_at[key] != NULL ? ld->set_at[key] : "default";
}

/* Checks that involve more than one key, once every source is read. */
static void check_keys_together(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	if (cfg->tls_cert != NULL && cfg->tls_key == NULL)
		config_errors_add(ld->errors,
				  "%s: tls_cert: set without tls_key",
				  origin_of(ld, KEY_TLS_CERT));
	if (cfg->tls_key != NULL && cfg->tls_cert == NULL)
		config_errors_add(ld->errors,
				  "%s: tls_key: set without tls_cert",
				  origin_of(ld, KEY_TLS_KEY));
	check_tls_listeners(ld, cfg->listen, cfg->listen_count, ld->listen_at,
			    KEY_LISTEN);
	check_tls_listeners(ld, cfg->pop3_listen, cfg->pop3_listen_count,
			    ld->pop3_listen_at, KEY_POP3_LISTEN);
	if (cfg->retry_min > cfg->retry_max) {
		enum key k = ld->set_at[KEY_RETRY_MIN] != NULL ? KEY_RETRY_MIN
							       : KEY_RETRY_MAX;
		char min[32];
		char max[32];

		config_format_duration(cfg->retry_min, min, sizeof(min));
		config_format_duration(cfg->retry_max, max, sizeof(max));
		config_errors_add(ld->errors,
				  "%s: %s: retry_min (%s) is greater than "
				  "retry_max (%s)",
				  origin_of(ld, k), key_defs[k].name, min, max);
	}
	/* no TLS outbound at all: no MTA-STS unless asked for */
	if (ld->set_at[KEY_MTA_STS] == NULL &&
	    cfg->tls_outbound == TLS_POLICY_NONE)
		cfg->mta_sts = false;
	/* An empty server list means the system's resolver, as by default. */
	if (cfg->dns_server_count == 0)
		cfg->dns_from_resolv_conf = true;
}

static void set_defaults(struct loader *ld)
{
	char host[HOST_NAME_MAX + 1];
	struct passwd *pw;

	for (int k = 0; k < KEY_COUNT; k++) {
		const char *v = key_defs[k].default_value;

		if (v != NULL)
			config_apply(ld, (enum key)k, v, strlen(v),
				     SOURCE_DEFAULT, "default");
	}
	if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	ld->cfg->hostname = config_xstrdup(host);

	pw = getpwnam("facteur");
	if (pw != NULL && pw->pw_uid != 0 && pw->pw_uid != geteuid())
		ld->cfg->user = config_xstrdup("facteur");
}

static void loader_free(struct loader *ld)
{
	for (int k = 0; k < KEY_COUNT; k++)
		free(ld->set_at[k]);
	for (size_t i = 0; i < ld->cfg->listen_count; i++)
		free(ld->listen_at[i]);
	free(ld->listen_at);
	for (size_t i = 0; i < ld->cfg->pop3_listen_count; i++)
		free(ld->pop3_listen_at[i]);
	free(ld->pop3_listen_at);
}

static struct config *load(const char *text, size_t len, const char *name,
			   char *const *env, struct config_errors *errors)
{
	struct config_errors local = {0};
	struct loader ld = {0};
	size_t before;

	if (errors == NULL)
		errors = &local;
	before = errors->count;
	ld.errors = errors;
	ld.cfg = calloc(1, sizeof(*ld.cfg));
	if (ld.cfg == NULL)
		config_out_of_memory();
	ld.cfg->routes = route_table_new();
	ld.cfg->sender_routes = route_table_new();
	ld.cfg->shapes = shape_table_new();
	if (ld.cfg->routes == NULL || ld.cfg->sender_routes == NULL ||
	    ld.cfg->shapes == NULL)
		config_out_of_memory();
	if (name != NULL)
		ld.cfg->source = config_xstrdup(name);

	set_defaults(&ld);
	if (text != NULL)
		parse_text(&ld, text, len, name);
	config_read_environment(&ld, env);
	check_keys_together(&ld);
	loader_free(&ld);
	config_errors_clear(&local);
	if (errors->count > before) {
		config_free(ld.cfg);
		return NULL;
	}
	return ld.cfg;
}

struct config *config_load_string(const char *text, const char *name,
				  char *const *environ_vars,
				  struct config_errors *errors)
{
	if (text == NULL)
		text = "";
	if (name == NULL)
		name = "<string>";
	return load(text, strlen(text), name, environ_vars, errors);
}

int config_read_source(const char *path, bool missing_ok, char **text,
		       size_t *len, struct config_errors *errors)
{
	switch (wholefile_read(path, CONFIG_FILE_MAX, 0, text, len)) {
	case WHOLEFILE_OK:
		return 0;
	case WHOLEFILE_OPEN:
		if (missing_ok && errno == ENOENT)
			return 1;
		config_errors_add(errors, "%s: cannot open: %s", path,
				  strerror(errno));
		return -1;
	case WHOLEFILE_TOO_LARGE:
		config_errors_add(errors, "%s: file larger than %u octets",
				  path, CONFIG_FILE_MAX);
		return -1;
	case WHOLEFILE_NOMEM:
		config_out_of_memory();
	default:
		config_errors_add(errors, "%s: cannot read: %s", path,
				  strerror(errno));
		return -1;
	}
}

struct config *config_load(const char *path, char *const *environ_vars,
			   struct config_errors *errors)
{
	struct config_errors local = {0};
	bool missing_ok = false;
	char *text = NULL;
	size_t len = 0;
	struct config *cfg;
	int rc;

	if (errors == NULL)
		errors = &local;
	if (path == NULL) {
		path = config_env_value(environ_vars, CONFIG_ENV_FILE);
		if (path != NULL && *path == '\0')
			path = NULL;
	}
	if (path == NULL) {
		path = CONFIG_DEFAULT_FILE;
		missing_ok = true;
	}
	rc = config_read_source(path, missing_ok, &text, &len, errors);
	/* With the file unreadable, still read the environment so that every
	 * error is reported at once; the load fails anyway. */
	cfg = load(text, len, rc == 1 ? NULL : path, environ_vars, errors);
	free(text);
	if (rc < 0) {
		config_free(cfg);
		cfg = NULL;
	}
	config_errors_clear(&local);
	return cfg;
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->source);
	free(cfg->hostname);
	for (size_t i = 0; i < cfg->listen_count; i++)
		free(cfg->listen[i].text);
	free(cfg->listen);
	for (size_t i = 0; i < cfg->pop3_listen_count; i++)
		free(cfg->pop3_listen[i].text);
	free(cfg->pop3_listen);
	config_free_listen_addr(cfg->metrics_listen);
	free(cfg->spool_dir);
	for (size_t i = 0; i < cfg->local_domains.count; i++)
		free(cfg->local_domains.items[i]);
	free(cfg->local_domains.items);
	free(cfg->users_file);
	free(cfg->aliases_file);
	free(cfg->mailbox_path);
	free(cfg->relay_networks);
	free(cfg->proxy_networks);
	config_free_dkim_sign(cfg);
	config_free_dnsbl(cfg);
	config_free_milters(cfg);
	route_table_free(cfg->routes);
	route_table_free(cfg->sender_routes);
	shape_table_free(cfg->shapes);
	free(cfg->shape_redis);
	free(cfg->mailbox_owner);
	free(cfg->submit_socket);
	for (size_t i = 0; i < cfg->dns_server_count; i++)
		free(cfg->dns_servers[i].text);
	free(cfg->dns_servers);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_ca_file);
	free(cfg->user);
	free(cfg->srs_domain);
	free(cfg->srs_secret_file);
	free(cfg->senders_file);
	free(cfg->tlsrpt_from);
	free(cfg);
}

static void print_value(const struct config *cfg, const struct key_def *def,
			FILE *out)
{
	const void *slot = (const char *)cfg + def->offset;
	const char *text;
	char buf[32];

	switch (def->slot) {
	case SLOT_OTHER:
		def->print(cfg, out);
		break;
	case SLOT_STRING:
		text = *(char *const *)slot;
		fputs(text != NULL ? text : "", out);
		break;
	case SLOT_COUNT:
		fprintf(out, "%u", *(const unsigned *)slot);
		break;
	case SLOT_DURATION:
		config_format_duration(*(const unsigned *)slot, buf,
				       sizeof(buf));
		fputs(buf, out);
		break;
	case SLOT_SIZE:
		config_print_size(*(const uint64_t *)slot, out);
		break;
	case SLOT_CHOICE:
		fputs(def->names[*(const int *)slot], out);
		break;
	case SLOT_YES_NO:
		fputs(*(const bool *)slot ? "yes" : "no", out);
		break;
	}
}

void config_print(const struct config *cfg, FILE *out)
{
	for (int k = 0; k < KEY_COUNT; k++) {
		fprintf(out, "%s = ", key_defs[k].name);
		print_value(cfg, &key_defs[k], out);
		fputc('\n', out);
	}
}

const char *config_hostname_warning(const struct config *cfg)
{
	/* A container's or a bare machine's name (its id, "localhost"):
	 * remote servers see it in EHLO, and many refuse a name that is not
	 * fully qualified. Allowed, as a test setup may want it. */
	if (strchr(cfg->hostname, '.') == NULL)
		return "has no dot: remote servers may refuse it in EHLO; set "
		       "hostname to this host's fully qualified name";
	return NULL;
}
