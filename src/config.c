/*
 * The effective settings: built-in defaults, then the file, then the
 * FACTEUR_* environment (SPEC.md §3, §8). Each value is parsed where it is
 * read, so that its error names its file:line or variable; checks between
 * keys run once everything is read. Every error is collected, none stops
 * the load.
 */
#include "facteur/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/hostname.h"
#include "facteur/mailowner.h"
#include "facteur/wholefile.h"

#define CONFIG_FILE_MAX (16u * 1024 * 1024) /* a config file, not a disk */
#define CONFIG_QUOTE_MAX 120		    /* text quoted back in errors */
#define CONFIG_ENV_PREFIX "FACTEUR_"
#define CONFIG_ENV_FILE "FACTEUR_CONFIG"
#define CONFIG_RESOLV_CONF "/etc/resolv.conf"
#define CONFIG_DNS_PORT 53

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

/* A load runs at start-up and on reload; a small allocation failing there
 * leaves nothing sensible to do but stop loudly. */
static _Noreturn void out_of_memory(void)
{
	static const char msg[] = "facteur: config: out of memory\n";
	ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);

	(void)n;
	abort();
}

static void *xreallocarray(void *p, size_t n, size_t size)
{
	void *q = reallocarray(p, n == 0 ? 1 : n, size);

	if (q == NULL)
		out_of_memory();
	return q;
}

static char *xstrndup(const char *s, size_t len)
{
	char *d = strndup(s, len);

	if (d == NULL)
		out_of_memory();
	return d;
}

static char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

static void replace_string(char **slot, const char *value)
{
	char *copy = value == NULL ? NULL : xstrdup(value);

	free(*slot);
	*slot = copy;
}

void config_errors_add(struct config_errors *errors, const char *fmt, ...)
{
	va_list ap;
	char *msg;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		out_of_memory();
	errors->messages = xreallocarray(errors->messages, errors->count + 1,
					 sizeof(*errors->messages));
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

/* Bytes of user text quoted for a message: printable ASCII as is,
 * anything else escaped, cut after CONFIG_QUOTE_MAX bytes. */
#define QUOTE_BUF (CONFIG_QUOTE_MAX * 4 + 8)
static const char *quote_n(const char *s, size_t len, char buf[QUOTE_BUF])
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

static const char *quote(const char *s, char buf[QUOTE_BUF])
{
	return quote_n(s, strlen(s), buf);
}

/* An error about the value being read: "origin: key: message". */
static void bad(struct loader *ld, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The table of keys in SPEC.md §3 order, which is also config_print's;
 * two keys beyond the SPEC's table (max_connections_per_destination,
 * delay_notice) sit beside their kin. */
static const struct key_def key_defs[KEY_COUNT];

static void bad(struct loader *ld, const char *fmt, ...)
{
	va_list ap;
	char *msg;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		out_of_memory();
	config_errors_add(ld->errors, "%s: %s: %s", ld->origin,
			  key_defs[ld->key].name, msg);
	free(msg);
}

/* Decimal digits only, no sign, no spaces; at most `max`. */
static int parse_decimal(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return -1;
		d = (unsigned)(s[i] - '0');
		if (d > max || v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

int config_parse_duration(const char *text, unsigned *seconds)
{
	size_t len = strlen(text);
	uint64_t unit = 1;
	uint64_t v;

	if (len > 0) {
		switch (text[len - 1]) {
		case 's':
			len--;
			break;
		case 'm':
			unit = 60;
			len--;
			break;
		case 'h':
			unit = 3600;
			len--;
			break;
		case 'd':
			unit = 86400;
			len--;
			break;
		default:
			break;
		}
	}
	if (parse_decimal(text, len, UINT_MAX / unit, &v) < 0)
		return -1;
	*seconds = (unsigned)(v * unit);
	return 0;
}

int config_parse_size(const char *text, uint64_t *octets)
{
	size_t len = strlen(text);
	uint64_t unit = 1;
	uint64_t v;

	if (len > 0) {
		switch (text[len - 1]) {
		case 'K':
		case 'k':
			unit = 1024;
			len--;
			break;
		case 'M':
		case 'm':
			unit = 1024 * 1024;
			len--;
			break;
		case 'G':
		case 'g':
			unit = 1024 * 1024 * 1024;
			len--;
			break;
		default:
			break;
		}
	}
	if (parse_decimal(text, len, UINT64_MAX / unit, &v) < 0)
		return -1;
	*octets = v * unit;
	return 0;
}

static int parse_port(const char *s, size_t len, uint16_t *port)
{
	uint64_t v;

	if (parse_decimal(s, len, 65535, &v) < 0 || v == 0)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* inet_pton on a counted string; `out` holds 16 bytes. */
static bool parse_ip(int family, const char *s, size_t len, uint8_t *out)
{
	char buf[INET6_ADDRSTRLEN];

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return inet_pton(family, buf, out) == 1;
}

static void fill_sockaddr(int family, const uint8_t *ip, uint16_t port,
			  struct sockaddr_storage *ss, socklen_t *sslen)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		memcpy(&sin->sin_addr, ip, 4);
		*sslen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		memcpy(&sin6->sin6_addr, ip, 16);
		*sslen = sizeof(*sin6);
	}
}

/*
 * "ADDR:PORT", "[IPv6]:PORT", and, when default_port is not 0, "ADDR",
 * "[IPv6]" or a bare IPv6 address. With `names`, ADDR may also be "*"
 * (0.0.0.0) or "localhost" (127.0.0.1). Returns NULL or the reason.
 */
static const char *parse_host_port(const char *s, size_t len, bool names,
				   uint16_t default_port,
				   struct sockaddr_storage *ss,
				   socklen_t *sslen)
{
	uint8_t ip[16];
	int family = AF_INET;
	const char *port_text = NULL;
	size_t port_len = 0;
	uint16_t port = default_port;

	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);
		size_t rest;

		if (close == NULL)
			return "invalid address";
		family = AF_INET6;
		if (!parse_ip(AF_INET6, s + 1, (size_t)(close - s) - 1, ip))
			return "invalid address";
		rest = len - (size_t)(close + 1 - s);
		if (rest > 0) {
			if (close[1] != ':')
				return "invalid address";
			port_text = close + 2;
			port_len = rest - 1;
		}
	} else if (default_port != 0 && parse_ip(AF_INET6, s, len, ip)) {
		family = AF_INET6;
	} else {
		const char *colon = memchr(s, ':', len);
		size_t addr_len = colon != NULL ? (size_t)(colon - s) : len;

		if (colon != NULL) {
			port_text = colon + 1;
			port_len = len - addr_len - 1;
		}
		if (names && addr_len == 1 && s[0] == '*') {
			memset(ip, 0, 4);
		} else if (names && addr_len == 9 &&
			   strncasecmp(s, "localhost", 9) == 0) {
			memcpy(ip, "\x7f\x00\x00\x01", 4);
		} else if (!parse_ip(AF_INET, s, addr_len, ip)) {
			return "invalid address";
		}
	}
	if (port_text != NULL) {
		if (parse_port(port_text, port_len, &port) < 0)
			return "invalid port";
	} else if (default_port == 0) {
		return "missing port";
	}
	fill_sockaddr(family, ip, port, ss, sslen);
	return NULL;
}

static const char *parse_listen(const char *text, bool pop3, bool with_mode,
				struct listen_addr *out)
{
	static const struct {
		const char *name;
		enum listen_mode mode;
		bool pop3;
	} modes[] = {
	    {"smtp", LISTEN_SMTP, false},
	    {"submission", LISTEN_SUBMISSION, false},
	    {"smtps", LISTEN_SMTPS, false},
	    {"pop3", LISTEN_POP3, true},
	    {"pop3s", LISTEN_POP3S, true},
	};
	static const char proxy_suffix[] = "+proxy";
	const char *slash = strchr(text, '/');
	size_t len = slash != NULL ? (size_t)(slash - text) : strlen(text);
	enum listen_mode mode = pop3 ? LISTEN_POP3 : LISTEN_SMTP;
	bool proxy = false;
	const char *why;

	if (slash != NULL) {
		bool found = false;
		size_t mode_len = strlen(slash + 1);
		size_t suffix_len = sizeof(proxy_suffix) - 1;

		if (!with_mode)
			return "unexpected mode";
		if (mode_len > suffix_len &&
		    strcmp(slash + 1 + mode_len - suffix_len, proxy_suffix) ==
			0) {
			proxy = true;
			mode_len -= suffix_len;
		}
		for (size_t i = 0; i < sizeof(modes) / sizeof(*modes); i++) {
			if (modes[i].pop3 == pop3 &&
			    strlen(modes[i].name) == mode_len &&
			    strncmp(modes[i].name, slash + 1, mode_len) == 0) {
				mode = modes[i].mode;
				found = true;
			}
		}
		if (!found)
			return pop3
				   ? "unknown mode (pop3 or pop3s)"
				   : "unknown mode (smtp, submission or smtps)";
	}
	why = parse_host_port(text, len, true, 0, &out->addr, &out->addrlen);
	if (why != NULL)
		return why;
	out->mode = mode;
	out->proxy = proxy;
	out->text = xstrdup(text);
	return NULL;
}

int config_parse_listen(const char *text, bool pop3, struct listen_addr *out)
{
	return parse_listen(text, pop3, true, out) == NULL ? 0 : -1;
}

int config_parse_cidr(const char *text, struct cidr *out)
{
	const char *slash = strchr(text, '/');
	size_t len = slash != NULL ? (size_t)(slash - text) : strlen(text);
	struct cidr net = {0};
	unsigned max;

	if (parse_ip(AF_INET, text, len, net.addr)) {
		net.family = AF_INET;
		max = 32;
	} else if (parse_ip(AF_INET6, text, len, net.addr)) {
		net.family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	net.prefix = max;
	if (slash != NULL) {
		uint64_t v;

		if (parse_decimal(slash + 1, strlen(slash + 1), max, &v) < 0)
			return -1;
		net.prefix = (unsigned)v;
	}
	/* "10.1.2.3/8" means 10.0.0.0/8: host bits are masked, not refused */
	for (unsigned bit = net.prefix; bit < max; bit++)
		net.addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
	*out = net;
	return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
	unsigned full = prefix / 8;
	unsigned rest = prefix % 8;

	if (memcmp(a, b, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[full] ^ b[full]) & (0xffu << (8 - rest)) & 0xffu) == 0;
}

bool config_cidr_match(const struct cidr *nets, size_t count,
		       const struct sockaddr *addr)
{
	static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0,    0,
						  0, 0, 0, 0, 0xff, 0xff};
	uint8_t v4[4];
	uint8_t v6[16];
	bool has_v4 = false;

	if (addr == NULL)
		return false;
	/* A client is seen both ways: 1.2.3.4 and ::ffff:1.2.3.4 are one
	 * host, whatever the family of the socket that accepted it. */
	if (addr->sa_family == AF_INET) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)addr;

		memcpy(v4, &sin->sin_addr, 4);
		memcpy(v6, mapped_prefix, 12);
		memcpy(v6 + 12, v4, 4);
		has_v4 = true;
	} else if (addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)addr;

		memcpy(v6, &sin6->sin6_addr, 16);
		if (memcmp(v6, mapped_prefix, 12) == 0) {
			memcpy(v4, v6 + 12, 4);
			has_v4 = true;
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < count; i++) {
		if (nets[i].family == AF_INET && has_v4 &&
		    prefix_equal(nets[i].addr, v4, nets[i].prefix))
			return true;
		if (nets[i].family == AF_INET6 &&
		    prefix_equal(nets[i].addr, v6, nets[i].prefix))
			return true;
	}
	return false;
}

bool config_is_local_domain(const struct config *cfg, const char *domain)
{
	size_t len;

	if (cfg == NULL || domain == NULL)
		return false;
	len = strlen(domain);
	if (len > 1 && domain[len - 1] == '.')
		len--;
	for (size_t i = 0; i < cfg->local_domains.count; i++) {
		const char *d = cfg->local_domains.items[i];

		if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
			return true;
	}
	return false;
}

/* Setters: each parses one value (or one item of a list key) and stores
 * it, or reports why not and leaves the setting as it was. */

static void set_hostname(struct loader *ld, const char *value)
{
	char q[QUOTE_BUF];

	if (!hostname_valid(value, strlen(value))) {
		bad(ld, "invalid host name %s", quote(value, q));
		return;
	}
	replace_string(&ld->cfg->hostname, value);
}

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
	char q[QUOTE_BUF];

	why = parse_listen(value, pop3, true, &la);
	if (why != NULL) {
		bad(ld, "%s in %s", why, quote(value, q));
		return;
	}
	*list = xreallocarray(*list, *count + 1, sizeof(**list));
	*origins = xreallocarray(*origins, *count + 1, sizeof(**origins));
	(*list)[*count] = la;
	(*origins)[*count] = xstrdup(ld->origin);
	(*count)++;
}

static void set_listen(struct loader *ld, const char *value)
{
	add_listen(ld, value, false, &ld->cfg->listen, &ld->cfg->listen_count,
		   &ld->listen_at);
}

static void clear_listen(struct loader *ld)
{
	clear_listen_list(&ld->cfg->listen, &ld->cfg->listen_count,
			  &ld->listen_at);
}

static void set_pop3_listen(struct loader *ld, const char *value)
{
	add_listen(ld, value, true, &ld->cfg->pop3_listen,
		   &ld->cfg->pop3_listen_count, &ld->pop3_listen_at);
}

static void clear_pop3_listen(struct loader *ld)
{
	clear_listen_list(&ld->cfg->pop3_listen, &ld->cfg->pop3_listen_count,
			  &ld->pop3_listen_at);
}

static void free_listen_addr(struct listen_addr *la)
{
	if (la == NULL)
		return;
	free(la->text);
	free(la);
}

static void set_metrics_listen(struct loader *ld, const char *value)
{
	struct listen_addr la;
	struct listen_addr *copy = NULL;
	const char *why;
	char q[QUOTE_BUF];

	if (*value != '\0') {
		why = parse_listen(value, false, false, &la);
		if (why != NULL) {
			bad(ld, "%s in %s", why, quote(value, q));
			return;
		}
		copy = malloc(sizeof(*copy));
		if (copy == NULL)
			out_of_memory();
		*copy = la;
	}
	free_listen_addr(ld->cfg->metrics_listen);
	ld->cfg->metrics_listen = copy;
}

static void set_required_string(struct loader *ld, char **slot,
				const char *value)
{
	if (*value == '\0') {
		bad(ld, "must not be empty");
		return;
	}
	replace_string(slot, value);
}

/* Optional file keys: an empty value means unset. */
static void set_optional_string(char **slot, const char *value)
{
	replace_string(slot, *value == '\0' ? NULL : value);
}

static void set_spool_dir(struct loader *ld, const char *value)
{
	set_required_string(ld, &ld->cfg->spool_dir, value);
}

static void set_local_domain(struct loader *ld, const char *value)
{
	struct string_list *list = &ld->cfg->local_domains;
	size_t len = strlen(value);
	char q[QUOTE_BUF];
	char *lower;

	if (len > 1 && value[len - 1] == '.')
		len--;
	if (!hostname_valid(value, len)) {
		bad(ld, "invalid domain %s", quote(value, q));
		return;
	}
	lower = xstrndup(value, len);
	ascii_lower_in_place(lower, len);
	for (size_t i = 0; i < list->count; i++) {
		if (strcmp(list->items[i], lower) == 0) {
			free(lower); /* listed twice: once is enough */
			return;
		}
	}
	list->items =
	    xreallocarray(list->items, list->count + 1, sizeof(*list->items));
	list->items[list->count++] = lower;
}

/* The domain of SRS addresses: a host name, kept lower case. */
static void set_srs_domain(struct loader *ld, const char *value)
{
	size_t len = strlen(value);
	char q[QUOTE_BUF];

	free(ld->cfg->srs_domain);
	ld->cfg->srs_domain = NULL;
	if (len == 0)
		return;
	if (!hostname_valid(value, len)) {
		bad(ld, "invalid domain %s", quote(value, q));
		return;
	}
	ld->cfg->srs_domain = xstrndup(value, len);
	ascii_lower_in_place(ld->cfg->srs_domain, len);
}

static void clear_local_domains(struct loader *ld)
{
	struct string_list *list = &ld->cfg->local_domains;

	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static const char *const mailbox_format_names[] = {"maildir", "mbox"};
static const char *const tls_policy_names[] = {"none", "may", "encrypt",
					       "verify"};
static const char *const log_format_names[] = {"logfmt", "json"};
static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
static const char *const flush_method_names[] = {"fsync", "syncfs"};
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* SLOT_CHOICE reads and writes these enums as int. */
_Static_assert(sizeof(enum mailbox_format) == sizeof(int) &&
		   sizeof(enum tls_policy) == sizeof(int) &&
		   sizeof(enum log_format) == sizeof(int) &&
		   sizeof(enum log_level) == sizeof(int) &&
		   sizeof(enum flush_method) == sizeof(int),
	       "a choice is stored as an int");

static void set_mailbox_path(struct loader *ld, const char *value)
{
	char q[QUOTE_BUF];
	char e[QUOTE_BUF];

	for (const char *p = value; *p != '\0'; p++) {
		if (*p != '%')
			continue;
		if (p[1] != 'u' && p[1] != 'd' && p[1] != '%') {
			bad(ld,
			    "invalid escape %s in %s (use %%u, %%d or %%%%)",
			    quote_n(p, p[1] == '\0' ? 1 : 2, e),
			    quote(value, q));
			return;
		}
		p++;
	}
	set_required_string(ld, &ld->cfg->mailbox_path, value);
}

/* relay_networks and proxy_networks: one CIDR more on the list. */
static void add_network(struct loader *ld, struct cidr **nets, size_t *count,
			const char *value)
{
	struct cidr net;
	char q[QUOTE_BUF];

	if (config_parse_cidr(value, &net) < 0) {
		bad(ld, "invalid network %s", quote(value, q));
		return;
	}
	*nets = xreallocarray(*nets, *count + 1, sizeof(**nets));
	(*nets)[(*count)++] = net;
}

static void clear_networks(struct cidr **nets, size_t *count)
{
	free(*nets);
	*nets = NULL;
	*count = 0;
}

static void set_relay_network(struct loader *ld, const char *value)
{
	add_network(ld, &ld->cfg->relay_networks, &ld->cfg->relay_network_count,
		    value);
}

static void clear_relay_networks(struct loader *ld)
{
	clear_networks(&ld->cfg->relay_networks, &ld->cfg->relay_network_count);
}

static void set_proxy_network(struct loader *ld, const char *value)
{
	add_network(ld, &ld->cfg->proxy_networks, &ld->cfg->proxy_network_count,
		    value);
}

static void clear_proxy_networks(struct loader *ld)
{
	clear_networks(&ld->cfg->proxy_networks, &ld->cfg->proxy_network_count);
}

static void set_route(struct loader *ld, const char *value)
{
	char err[256];

	if (route_table_add(ld->cfg->routes, value, err, sizeof(err)) < 0)
		bad(ld, "%s", err);
}

static void clear_route_table(struct route_table **table)
{
	struct route_table *fresh = route_table_new();

	if (fresh == NULL)
		out_of_memory();
	route_table_free(*table);
	*table = fresh;
}

static void clear_routes(struct loader *ld)
{
	clear_route_table(&ld->cfg->routes);
}

static void set_sender_route(struct loader *ld, const char *value)
{
	char err[256];

	if (route_table_add_sender(ld->cfg->sender_routes, value, err,
				   sizeof(err)) < 0)
		bad(ld, "%s", err);
}

static void clear_sender_routes(struct loader *ld)
{
	clear_route_table(&ld->cfg->sender_routes);
}

static void set_shape(struct loader *ld, const char *value)
{
	struct shape_table *table = ld->cfg->shapes;
	char err[256];

	if (shape_table_add(table, value, err, sizeof(err)) < 0 ||
	    shape_source_check(
		shape_table_get(table, shape_table_count(table) - 1), err,
		sizeof(err)) < 0)
		bad(ld, "%s", err);
}

static void set_shape_redis(struct loader *ld, const char *value)
{
	char host[64], err[128], q[QUOTE_BUF];
	uint16_t port;
	unsigned db;

	if (value[0] != '\0' &&
	    shape_parse_redis_address(value, host, sizeof(host), &port, &db,
				      err, sizeof(err)) < 0)
		bad(ld, "%s in %s", err, quote(value, q));
	else
		replace_string(&ld->cfg->shape_redis,
			       value[0] != '\0' ? value : NULL);
}

/* mailbox_owner = USER[:GROUP], looked up now so that a typo stops the
 * start rather than the first delivery. */
static void set_mailbox_owner(struct loader *ld, const char *value)
{
	char err[160], q[QUOTE_BUF];
	uid_t uid;
	gid_t gid;

	if (value[0] == '\0') {
		replace_string(&ld->cfg->mailbox_owner, NULL);
	} else if (mailowner_lookup(value, &uid, &gid, err, sizeof(err)) < 0) {
		bad(ld, "%s in %s", err, quote(value, q));
	} else {
		replace_string(&ld->cfg->mailbox_owner, value);
		ld->cfg->mailbox_uid = uid;
		ld->cfg->mailbox_gid = gid;
	}
}

static void set_mailbox_mode(struct loader *ld, const char *value)
{
	char q[QUOTE_BUF];
	const char *why;
	mode_t mode;

	if (mailowner_parse_mode(value, &mode, &why) < 0)
		bad(ld, "%s: %s", quote(value, q), why);
	else
		ld->cfg->mailbox_mode = mode;
}

static void print_mailbox_mode(const struct config *cfg, FILE *out)
{
	fprintf(out, "%04o", (unsigned)cfg->mailbox_mode);
}

static void clear_shapes(struct loader *ld)
{
	shape_table_free(ld->cfg->shapes);
	ld->cfg->shapes = shape_table_new();
	if (ld->cfg->shapes == NULL)
		out_of_memory();
}

static void set_dns_server(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct dns_server ds = {0};
	const char *why;
	char q[QUOTE_BUF];

	/* The default names the system's resolver configuration; it cannot
	 * be mixed with explicit servers. */
	if (strcmp(value, CONFIG_RESOLV_CONF) == 0) {
		if (cfg->dns_server_count > 0)
			bad(ld, "%s cannot be combined with servers",
			    quote(value, q));
		else
			cfg->dns_from_resolv_conf = true;
		return;
	}
	if (cfg->dns_from_resolv_conf) {
		bad(ld, "%s cannot be combined with \"%s\"", quote(value, q),
		    CONFIG_RESOLV_CONF);
		return;
	}
	why = parse_host_port(value, strlen(value), false, CONFIG_DNS_PORT,
			      &ds.addr, &ds.addrlen);
	if (why != NULL) {
		bad(ld, "%s in %s", why, quote(value, q));
		return;
	}
	ds.text = xstrdup(value);
	cfg->dns_servers =
	    xreallocarray(cfg->dns_servers, cfg->dns_server_count + 1,
			  sizeof(*cfg->dns_servers));
	cfg->dns_servers[cfg->dns_server_count++] = ds;
}

static void clear_dns_servers(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	for (size_t i = 0; i < cfg->dns_server_count; i++)
		free(cfg->dns_servers[i].text);
	free(cfg->dns_servers);
	cfg->dns_servers = NULL;
	cfg->dns_server_count = 0;
	cfg->dns_from_resolv_conf = false;
}

static void set_mx_port(struct loader *ld, const char *value)
{
	char q[QUOTE_BUF];

	if (parse_port(value, strlen(value), &ld->cfg->mx_port) < 0)
		bad(ld, "invalid port %s (1 to 65535)", quote(value, q));
}

/* Unlike the other durations, 0 is allowed: it turns delay notices off. */
static void set_delay_notice(struct loader *ld, const char *value)
{
	unsigned v;
	char q[QUOTE_BUF];

	if (config_parse_duration(value, &v) < 0)
		bad(ld, "invalid duration %s (a number with s, m, h or d)",
		    quote(value, q));
	else
		ld->cfg->delay_notice = v;
}

/* cfg->user is the account to switch to, or NULL for "stay who we are":
 * an empty value, "root" (or any uid 0 account), or the account we
 * already run as. */
static void set_user(struct loader *ld, const char *value)
{
	struct passwd *pw;
	char q[QUOTE_BUF];

	if (*value == '\0') {
		replace_string(&ld->cfg->user, NULL);
		return;
	}
	errno = 0;
	pw = getpwnam(value);
	if (pw == NULL) {
		/* getpwnam(3): "not found" may come with any of several
		 * errno values; these are real failures to look up */
		if (errno == EIO || errno == EMFILE || errno == ENFILE ||
		    errno == ENOMEM || errno == EINTR)
			bad(ld, "cannot look up %s: %s", quote(value, q),
			    strerror(errno));
		else
			bad(ld, "no such user %s", quote(value, q));
		return;
	}
	if (pw->pw_uid == 0 || pw->pw_uid == geteuid())
		replace_string(&ld->cfg->user, NULL);
	else
		replace_string(&ld->cfg->user, value);
}

static void set_ipv6_prefix_length(struct loader *ld, const char *value)
{
	uint64_t v;
	char q[QUOTE_BUF];

	if (parse_decimal(value, strlen(value), 128, &v) < 0 || v == 0)
		bad(ld, "invalid prefix length %s (1 to 128)", quote(value, q));
	else
		ld->cfg->ipv6_prefix_length = (unsigned)v;
}

int config_parse_rate(const char *text, unsigned *count, unsigned *seconds)
{
	const char *slash = strchr(text, '/');
	uint64_t n;

	if (slash == NULL ||
	    parse_decimal(text, (size_t)(slash - text), UINT_MAX, &n) < 0 ||
	    n == 0 || config_parse_duration(slash + 1, seconds) < 0 ||
	    *seconds == 0)
		return -1;
	*count = (unsigned)n;
	return 0;
}

static void set_auth_fail_limit(struct loader *ld, const char *value)
{
	char q[QUOTE_BUF];

	if (config_parse_rate(value, &ld->cfg->auth_fail_limit,
			      &ld->cfg->auth_fail_window) < 0)
		bad(ld,
		    "invalid limit %s (N/DURATION, such as 10/15m, both "
		    "greater than 0)",
		    quote(value, q));
}

/* Printers for -n: each prints a value in the form its key reads, so
 * that the output loads back as the same settings. */

static void format_duration(unsigned seconds, char *buf, size_t len)
{
	static const struct {
		unsigned seconds;
		char suffix;
	} units[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}};

	for (size_t i = 0; i < COUNT_OF(units); i++) {
		if (seconds != 0 && seconds % units[i].seconds == 0) {
			snprintf(buf, len, "%u%c", seconds / units[i].seconds,
				 units[i].suffix);
			return;
		}
	}
	snprintf(buf, len, "%us", seconds);
}

static void print_size(uint64_t octets, FILE *out)
{
	static const struct {
		uint64_t octets;
		char suffix;
	} units[] = {
	    {1024ull * 1024 * 1024, 'G'}, {1024 * 1024, 'M'}, {1024, 'K'}};

	for (size_t i = 0; i < COUNT_OF(units); i++) {
		if (octets != 0 && octets % units[i].octets == 0) {
			fprintf(out, "%llu%c",
				(unsigned long long)(octets / units[i].octets),
				units[i].suffix);
			return;
		}
	}
	fprintf(out, "%llu", (unsigned long long)octets);
}

static void print_cidr(const struct cidr *net, FILE *out)
{
	char buf[INET6_ADDRSTRLEN];

	if (inet_ntop(net->family, net->addr, buf, sizeof(buf)) == NULL)
		snprintf(buf, sizeof(buf), "?");
	fprintf(out, "%s/%u", buf, net->prefix);
}

static void print_listen_list(const struct listen_addr *list, size_t count,
			      FILE *out)
{
	for (size_t i = 0; i < count; i++)
		fprintf(out, "%s%s", i ? ", " : "", list[i].text);
}

static void print_listen(const struct config *cfg, FILE *out)
{
	print_listen_list(cfg->listen, cfg->listen_count, out);
}

static void print_pop3_listen(const struct config *cfg, FILE *out)
{
	print_listen_list(cfg->pop3_listen, cfg->pop3_listen_count, out);
}

static void print_metrics_listen(const struct config *cfg, FILE *out)
{
	if (cfg->metrics_listen != NULL)
		fputs(cfg->metrics_listen->text, out);
}

static void print_local_domains(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < cfg->local_domains.count; i++)
		fprintf(out, "%s%s", i ? ", " : "",
			cfg->local_domains.items[i]);
}

static void print_networks(const struct cidr *nets, size_t count, FILE *out)
{
	for (size_t i = 0; i < count; i++) {
		if (i > 0)
			fputs(", ", out);
		print_cidr(&nets[i], out);
	}
}

static void print_relay_networks(const struct config *cfg, FILE *out)
{
	print_networks(cfg->relay_networks, cfg->relay_network_count, out);
}

static void print_proxy_networks(const struct config *cfg, FILE *out)
{
	print_networks(cfg->proxy_networks, cfg->proxy_network_count, out);
}

/* As a file's line reads them: items between commas. */
static void print_route_table(const struct route_table *table, FILE *out)
{
	for (size_t i = 0; i < route_table_count(table); i++)
		fprintf(out, "%s%s", i ? ", " : "",
			route_table_get(table, i)->text);
}

static void print_routes(const struct config *cfg, FILE *out)
{
	print_route_table(cfg->routes, out);
}

static void print_sender_routes(const struct config *cfg, FILE *out)
{
	print_route_table(cfg->sender_routes, out);
}

/* One value a line, as the file reads them back. */
static void print_shapes(const struct config *cfg, FILE *out)
{
	char line[1024];

	for (size_t i = 0; i < shape_table_count(cfg->shapes); i++) {
		shape_format(shape_table_get(cfg->shapes, i), line,
			     sizeof(line));
		fprintf(out, "%s%s", i ? "\nshape = " : "", line);
	}
}

static void print_dns_servers(const struct config *cfg, FILE *out)
{
	if (cfg->dns_from_resolv_conf)
		fputs(CONFIG_RESOLV_CONF, out);
	for (size_t i = 0; i < cfg->dns_server_count; i++)
		fprintf(out, "%s%s", i ? ", " : "", cfg->dns_servers[i].text);
}

static void print_mx_port(const struct config *cfg, FILE *out)
{
	fprintf(out, "%u", (unsigned)cfg->mx_port);
}

static void print_auth_fail_limit(const struct config *cfg, FILE *out)
{
	char buf[32];

	format_duration(cfg->auth_fail_window, buf, sizeof(buf));
	fprintf(out, "%u/%s", cfg->auth_fail_limit, buf);
}

/* A key whose field is of a common kind, and one of the choices. */
/* dkim_sign = DOMAIN SELECTOR KEYFILE; the key itself is read with the
 * files the settings name (dkim.h). A path with spaces cannot be
 * given: three words exactly. */
static void set_dkim_sign(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	const char *word[3];
	size_t len[3], n = 0;
	char q[QUOTE_BUF];

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
		bad(ld, "expected DOMAIN SELECTOR KEYFILE, got %s",
		    quote(value, q));
		return;
	}
	for (size_t i = 0; i < 2; i++) {
		if (!hostname_valid(word[i], len[i])) {
			bad(ld, "invalid %s %s", i == 0 ? "domain" : "selector",
			    quote_n(word[i], len[i], q));
			return;
		}
	}
	cfg->dkim_sign = xreallocarray(cfg->dkim_sign, cfg->dkim_sign_count + 1,
				       sizeof *cfg->dkim_sign);
	cfg->dkim_sign[cfg->dkim_sign_count++] = (struct config_dkim_sign){
	    .domain = xstrndup(word[0], len[0]),
	    .selector = xstrndup(word[1], len[1]),
	    .keyfile = xstrndup(word[2], len[2]),
	    .origin = xstrndup(ld->origin, strlen(ld->origin)),
	};
}

static void free_dkim_sign(struct config *cfg)
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

static void clear_dkim_sign(struct loader *ld)
{
	free_dkim_sign(ld->cfg);
}

static void print_dkim_sign(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < cfg->dkim_sign_count; i++)
		fprintf(out, "%s%s %s %s", i ? "; " : "",
			cfg->dkim_sign[i].domain, cfg->dkim_sign[i].selector,
			cfg->dkim_sign[i].keyfile);
}

/* dnsbl = ZONE [match=A.B.C.D,...]: the zone leaves room for the 64
 * octets of an IPv6 client's nibbles in front of it. */
#define DNSBL_ZONE_MAX 180
#define DNSBL_MATCH_MAX 16

static bool parse_dnsbl_match(const char *p, size_t len,
			      struct config_dnsbl *entry)
{
	entry->match =
	    xreallocarray(NULL, DNSBL_MATCH_MAX, sizeof *entry->match);
	for (;;) {
		size_t n = strcspn(p, ",");
		uint8_t ip[16];

		if (n > len)
			n = len;
		if (entry->match_count == DNSBL_MATCH_MAX ||
		    !parse_ip(AF_INET, p, n, ip))
			return false;
		memcpy(entry->match[entry->match_count++], ip, 4);
		if (n == len)
			return true;
		p += n + 1;
		len -= n + 1;
	}
}

static void set_dnsbl(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct config_dnsbl entry = {0};
	size_t len = strcspn(value, " \t");
	const char *opt = value + len + strspn(value + len, " \t");
	size_t opt_len = strcspn(opt, " \t");
	char q[QUOTE_BUF];

	if (len > 1 && value[len - 1] == '.')
		len--;
	if (len > DNSBL_ZONE_MAX || !hostname_valid(value, len)) {
		bad(ld, "invalid zone %s", quote_n(value, len, q));
		return;
	}
	if (opt[opt_len + strspn(opt + opt_len, " \t")] != '\0' ||
	    (opt_len > 0 &&
	     (strncmp(opt, "match=", 6) != 0 ||
	      !parse_dnsbl_match(opt + 6, opt_len - 6, &entry)))) {
		free(entry.match);
		bad(ld, "expected ZONE [match=IP,...], got %s",
		    quote(value, q));
		return;
	}
	entry.zone = xstrndup(value, len);
	ascii_lower_in_place(entry.zone, len);
	cfg->dnsbl =
	    xreallocarray(cfg->dnsbl, cfg->dnsbl_count + 1, sizeof *cfg->dnsbl);
	cfg->dnsbl[cfg->dnsbl_count++] = entry;
}

static void free_dnsbl(struct config *cfg)
{
	for (size_t i = 0; i < cfg->dnsbl_count; i++) {
		free(cfg->dnsbl[i].zone);
		free(cfg->dnsbl[i].match);
	}
	free(cfg->dnsbl);
	cfg->dnsbl = NULL;
	cfg->dnsbl_count = 0;
}

static void clear_dnsbl(struct loader *ld)
{
	free_dnsbl(ld->cfg);
}

static void print_dnsbl(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < cfg->dnsbl_count; i++) {
		const struct config_dnsbl *e = &cfg->dnsbl[i];
		fprintf(out, "%s%s", i ? "\ndnsbl = " : "", e->zone);
		for (size_t m = 0; m < e->match_count; m++)
			fprintf(out, "%s%u.%u.%u.%u",
				m ? "," : " match=", e->match[m][0],
				e->match[m][1], e->match[m][2], e->match[m][3]);
	}
}

/* max_messages_per_ip = N/m|N/h (any N/DURATION is taken); "" is none. */
static void set_max_messages(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	char rate[64], q[QUOTE_BUF];
	const char *slash = strchr(value, '/');

	cfg->max_messages = 0;
	if (*value == '\0')
		return;
	/* "N/m" reads as "N/1m". */
	if (slash != NULL &&
	    (strcmp(slash + 1, "m") == 0 || strcmp(slash + 1, "h") == 0) &&
	    (size_t)(slash - value) < sizeof rate - 3) {
		snprintf(rate, sizeof rate, "%.*s/1%s", (int)(slash - value),
			 value, slash + 1);
		value = rate;
	}
	if (config_parse_rate(value, &cfg->max_messages,
			      &cfg->max_messages_window) < 0) {
		cfg->max_messages = 0;
		bad(ld, "invalid rate %s (N/m or N/h, N greater than 0)",
		    quote(value, q));
	}
}

static void print_max_messages(const struct config *cfg, FILE *out)
{
	char buf[32];
	if (cfg->max_messages == 0)
		return;
	format_duration(cfg->max_messages_window, buf, sizeof buf);
	fprintf(out, "%u/%s", cfg->max_messages,
		strcmp(buf, "1m") == 0	 ? "m"
		: strcmp(buf, "1h") == 0 ? "h"
					 : buf);
}

static void set_local_transport(struct loader *ld, const char *value)
{
	char err[160];

	if (route_lmtp_parse(value, &ld->cfg->local_transport, err,
			     sizeof(err)) < 0)
		bad(ld, "%s", err);
}

static void print_local_transport(const struct config *cfg, FILE *out)
{
	fputs(cfg->local_transport.text, out);
}

/* milter = unix:PATH|inet:HOST:PORT [timeout=DURATION]
 * [default=tempfail|accept|reject]; HOST is an address: a name would
 * need a resolver at connect time, for every session. */
#define MILTER_TIMEOUT_DEFAULT 30
static const char *const milter_default_names[] = {"tempfail", "accept",
						   "reject"};

static const char *parse_milter_address(const char *s, size_t len,
					struct config_milter *m)
{
	if (len > 5 && strncmp(s, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&m->addr;
		if (s[5] != '/' || len - 5 >= sizeof sun->sun_path)
			return "expected an absolute socket path";
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, s + 5, len - 5);
		m->addrlen = (socklen_t)sizeof *sun;
		return NULL;
	}
	if (len > 5 && strncmp(s, "inet:", 5) == 0)
		return parse_host_port(s + 5, len - 5, true, 0, &m->addr,
				       &m->addrlen);
	return "expected unix:PATH or inet:HOST:PORT";
}

static bool parse_milter_option(const char *opt, size_t len,
				struct config_milter *m)
{
	char text[32];
	if (len >= sizeof text)
		return false;
	memcpy(text, opt, len);
	text[len] = '\0';
	if (strncmp(text, "timeout=", 8) == 0)
		return config_parse_duration(text + 8, &m->timeout) == 0 &&
		       m->timeout > 0;
	if (strncmp(text, "default=", 8) != 0)
		return false;
	for (size_t i = 0; i < COUNT_OF(milter_default_names); i++) {
		if (strcmp(text + 8, milter_default_names[i]) == 0) {
			m->on_error = (enum milter_default)i;
			return true;
		}
	}
	return false;
}

static void set_milter(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct config_milter m = {.timeout = MILTER_TIMEOUT_DEFAULT};
	size_t len = strcspn(value, " \t");
	char q[QUOTE_BUF];
	const char *why = parse_milter_address(value, len, &m);
	if (why != NULL) {
		bad(ld, "%s in %s", why, quote(value, q));
		return;
	}
	for (const char *opt = value + len;;) {
		opt += strspn(opt, " \t");
		size_t opt_len = strcspn(opt, " \t");
		if (opt_len == 0)
			break;
		if (!parse_milter_option(opt, opt_len, &m)) {
			bad(ld,
			    "expected ADDRESS [timeout=DURATION] "
			    "[default=tempfail|accept|reject], got %s",
			    quote(value, q));
			return;
		}
		opt += opt_len;
	}
	m.name = xstrndup(value, len);
	cfg->milters = xreallocarray(cfg->milters, cfg->milter_count + 1,
				     sizeof *cfg->milters);
	cfg->milters[cfg->milter_count++] = m;
}

static void free_milters(struct config *cfg)
{
	for (size_t i = 0; i < cfg->milter_count; i++)
		free(cfg->milters[i].name);
	free(cfg->milters);
	cfg->milters = NULL;
	cfg->milter_count = 0;
}

static void clear_milters(struct loader *ld)
{
	free_milters(ld->cfg);
}

static void print_milters(const struct config *cfg, FILE *out)
{
	char buf[32];
	for (size_t i = 0; i < cfg->milter_count; i++) {
		const struct config_milter *m = &cfg->milters[i];
		format_duration(m->timeout, buf, sizeof buf);
		fprintf(out, "%s%s timeout=%s default=%s",
			i ? "\nmilter = " : "", m->name, buf,
			milter_default_names[m->on_error]);
	}
}

#define FIELD(kind, field)                                                     \
	.slot = kind, .offset = offsetof(struct config, field)
#define CHOICE(field, list)                                                    \
	FIELD(SLOT_CHOICE, field), .names = list, .name_count = COUNT_OF(list)

static const struct key_def key_defs[KEY_COUNT] = {
    [KEY_HOSTNAME] = {"hostname", NULL, .set = set_hostname,
		      FIELD(SLOT_STRING, hostname)},
    [KEY_LISTEN] = {"listen", "127.0.0.1:2525", .set = set_listen,
		    .clear = clear_listen, .print = print_listen},
    [KEY_POP3_LISTEN] = {"pop3_listen", "", .set = set_pop3_listen,
			 .clear = clear_pop3_listen,
			 .print = print_pop3_listen},
    [KEY_METRICS_LISTEN] = {"metrics_listen", "", .set = set_metrics_listen,
			    .print = print_metrics_listen},
    [KEY_SPOOL_DIR] = {"spool_dir", "/var/spool/facteur", .set = set_spool_dir,
		       FIELD(SLOT_STRING, spool_dir)},
    [KEY_LOCAL_DOMAINS] = {"local_domains", "localhost",
			   .set = set_local_domain,
			   .clear = clear_local_domains,
			   .print = print_local_domains},
    [KEY_USERS_FILE] = {"users_file", "", FIELD(SLOT_STRING, users_file)},
    [KEY_ALIASES_FILE] = {"aliases_file", "", FIELD(SLOT_STRING, aliases_file)},
    [KEY_MAILBOX_FORMAT] = {"mailbox_format", "maildir",
			    CHOICE(mailbox_format, mailbox_format_names)},
    [KEY_MAILBOX_PATH] = {"mailbox_path", "/var/mail/%d/%u",
			  .set = set_mailbox_path,
			  FIELD(SLOT_STRING, mailbox_path)},
    [KEY_RELAY_NETWORKS] = {"relay_networks", "127.0.0.0/8, ::1/128",
			    .set = set_relay_network,
			    .clear = clear_relay_networks,
			    .print = print_relay_networks},
    [KEY_ROUTE] = {"route", "", .set = set_route, .clear = clear_routes,
		   .print = print_routes},
    [KEY_DNS_SERVERS] = {"dns_servers", CONFIG_RESOLV_CONF,
			 .set = set_dns_server, .clear = clear_dns_servers,
			 .print = print_dns_servers},
    [KEY_MX_PORT] = {"mx_port", "25", .set = set_mx_port,
		     .print = print_mx_port},
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
    [KEY_USER] = {"user", NULL, .set = set_user, FIELD(SLOT_STRING, user)},
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
				.set = set_ipv6_prefix_length,
				FIELD(SLOT_COUNT, ipv6_prefix_length)},
    [KEY_AUTH_FAIL_LIMIT] = {"auth_fail_limit", "10/15m",
			     .set = set_auth_fail_limit,
			     .print = print_auth_fail_limit},
    [KEY_PROXY_NETWORKS] = {"proxy_networks", "127.0.0.0/8, ::1/128",
			    .set = set_proxy_network,
			    .clear = clear_proxy_networks,
			    .print = print_proxy_networks},
    [KEY_REUSE_PORT] = {"reuse_port", "no", FIELD(SLOT_YES_NO, reuse_port)},
    [KEY_SENDER_ROUTE] = {"sender_route", "", .set = set_sender_route,
			  .clear = clear_sender_routes, .semicolons = true,
			  .print = print_sender_routes},
    [KEY_SRS_DOMAIN] = {"srs_domain", "", .set = set_srs_domain,
			FIELD(SLOT_STRING, srs_domain)},
    [KEY_SRS_SECRET_FILE] = {"srs_secret_file", "",
			     FIELD(SLOT_STRING, srs_secret_file)},
    [KEY_SENDERS_FILE] = {"senders_file", "", FIELD(SLOT_STRING, senders_file)},
    [KEY_DKIM_SIGN] = {"dkim_sign", "", .set = set_dkim_sign,
		       .clear = clear_dkim_sign, .print = print_dkim_sign,
		       .semicolons = true},
    [KEY_SHAPE] = {"shape", "", .set = set_shape, .clear = clear_shapes,
		   .print = print_shapes, .semicolons = true},
    [KEY_SHAPE_REDIS] = {"shape_redis", "", .set = set_shape_redis,
			 FIELD(SLOT_STRING, shape_redis)},
    [KEY_MAILBOX_OWNER] = {"mailbox_owner", "", .set = set_mailbox_owner,
			   FIELD(SLOT_STRING, mailbox_owner)},
    [KEY_MAILBOX_MODE] = {"mailbox_mode", "0600", .set = set_mailbox_mode,
			  .print = print_mailbox_mode},
    [KEY_DNSBL] = {"dnsbl", "", .set = set_dnsbl, .clear = clear_dnsbl,
		   .print = print_dnsbl, .semicolons = true},
    [KEY_MAX_MESSAGES_PER_IP] = {"max_messages_per_ip", "",
				 .set = set_max_messages,
				 .print = print_max_messages},
    [KEY_LOCAL_TRANSPORT] = {"local_transport", "", .set = set_local_transport,
			     .print = print_local_transport},
    [KEY_SUBMIT_SOCKET] = {"submit_socket", "",
			   FIELD(SLOT_STRING, submit_socket)},
    [KEY_DANE] = {"dane", "no", FIELD(SLOT_YES_NO, dane)},
    [KEY_MILTER] = {"milter", "", .set = set_milter, .clear = clear_milters,
		    .print = print_milters, .semicolons = true},
    [KEY_MTA_STS] = {"mta_sts", "yes", FIELD(SLOT_YES_NO, mta_sts)},
    [KEY_TLSRPT_FROM] = {"tlsrpt_from", "", FIELD(SLOT_STRING, tlsrpt_from)},
};

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
	char q[QUOTE_BUF];

	switch (kind) {
	case SLOT_COUNT:
		rc = parse_decimal(value, strlen(value), UINT_MAX, &v);
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
		bad(ld, what, quote(value, q));
	else if (v == 0)
		bad(ld, "must be greater than 0");
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
	char q[QUOTE_BUF];
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
	bad(ld, "invalid value %s (%s)", quote(value, q), choices);
}

static void set_yes_no(struct loader *ld, bool *slot, const char *value)
{
	char q[QUOTE_BUF];

	if (strcmp(value, "yes") == 0)
		*slot = true;
	else if (strcmp(value, "no") == 0)
		*slot = false;
	else
		bad(ld, "invalid value %s (yes or no)", quote(value, q));
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

/* Apply one value (already trimmed) of `key` read from `origin`. */
static void apply(struct loader *ld, enum key key, const char *value,
		  size_t len, enum source src, const char *origin)
{
	const struct key_def *def = &key_defs[key];
	char *copy;

	ld->origin = origin;
	ld->key = key;
	if (src != SOURCE_DEFAULT)
		replace_string(&ld->set_at[key], origin);
	if (has_control(value, len)) {
		bad(ld, "control character in value");
		return;
	}
	if (def->clear == NULL) {
		copy = xstrndup(value, len);
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
			bad(ld, "empty entry in list");
		} else {
			copy = xstrndup(item, item_len);
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
	char q[QUOTE_BUF];

	if (len > 0 && line[len - 1] == '\r')
		len--;
	line = ascii_trim(line, &len, " \t");
	if (len == 0 || line[0] == '#')
		return;
	if (asprintf(&origin, "%s:%zu", name, lineno) < 0)
		out_of_memory();
	eq = memchr(line, '=', len);
	if (eq == NULL) {
		config_errors_add(ld->errors,
				  "%s: expected \"key = value\", got %s",
				  origin, quote_n(line, len, q));
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
				  quote_n(key, key_len, q));
	else
		apply(ld, k, value, value_len, SOURCE_FILE, origin);
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

/* The key named by an environment variable's upper-case suffix
 * ("MAX_RECIPIENTS" for max_recipients). */
static bool find_env_key(const char *suffix, size_t len, enum key *out)
{
	for (int k = 0; k < KEY_COUNT; k++) {
		const char *key = key_defs[k].name;
		size_t i;

		if (strlen(key) != len)
			continue;
		for (i = 0; i < len; i++)
			if (suffix[i] != ascii_upper(key[i]))
				break;
		if (i == len) {
			*out = (enum key)k;
			return true;
		}
	}
	return false;
}

static bool has_prefix(const char *s, size_t len, const char *prefix)
{
	size_t plen = strlen(prefix);

	return len >= plen && memcmp(s, prefix, plen) == 0;
}

/* Upper-case letters, digits and '_', at least one. */
static bool is_env_word(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

/*
 * The variables Kubernetes puts in every pod of a namespace that has a
 * Service called "facteur" (its docker-link style service environment):
 * SERVICE_HOST, SERVICE_PORT, SERVICE_PORT_<NAME>, PORT, PORT_<N>_<PROTO>
 * and PORT_<N>_<PROTO>_{PROTO,PORT,ADDR}, here without "FACTEUR_". They
 * are not ours, so they are neither keys nor errors.
 */
static bool is_kubernetes_name(const char *s, size_t len)
{
	static const char *const protocols[] = {"TCP", "UDP", "SCTP"};
	static const char *const forms[] = {"", "_PROTO", "_PORT", "_ADDR"};
	size_t digits = 0;

	if ((len == 12 && memcmp(s, "SERVICE_HOST", 12) == 0) ||
	    (len == 12 && memcmp(s, "SERVICE_PORT", 12) == 0) ||
	    (len == 4 && memcmp(s, "PORT", 4) == 0))
		return true;
	if (has_prefix(s, len, "SERVICE_PORT_"))
		return is_env_word(s + 13, len - 13);
	if (!has_prefix(s, len, "PORT_"))
		return false;
	s += 5;
	len -= 5;
	while (digits < len && s[digits] >= '0' && s[digits] <= '9')
		digits++;
	if (digits == 0 || digits == len || s[digits] != '_')
		return false;
	s += digits + 1;
	len -= digits + 1;
	for (size_t p = 0; p < COUNT_OF(protocols); p++) {
		size_t plen = strlen(protocols[p]);

		if (!has_prefix(s, len, protocols[p]))
			continue;
		for (size_t f = 0; f < COUNT_OF(forms); f++)
			if (len - plen == strlen(forms[f]) &&
			    memcmp(s + plen, forms[f], len - plen) == 0)
				return true;
	}
	return false;
}

static int read_file(const char *path, bool missing_ok, char **text,
		     size_t *len, struct config_errors *errors);
static const char *env_value(char *const *env, const char *name);

/* FACTEUR_<KEY>_FILE=PATH: KEY's value is the file's content, without
 * its final newline, as container secrets are mounted. */
static void apply_env_file(struct loader *ld, char *const *env, enum key key,
			   const char *name, const char *path)
{
	struct config_errors file_errors = {0};
	size_t plain_len = strlen(name) - strlen("_FILE");
	char *plain = xstrndup(name, plain_len);
	const char *value;
	char *text = NULL;
	size_t len = 0;

	if (env_value(env, plain) != NULL) {
		config_errors_add(
		    ld->errors, "%s: %s: also set by %s; set only one of them",
		    name, key_defs[key].name, plain);
		free(plain);
		return;
	}
	free(plain);
	if (*path == '\0') {
		config_errors_add(ld->errors, "%s: %s: empty file name", name,
				  key_defs[key].name);
		return;
	}
	if (read_file(path, false, &text, &len, &file_errors) < 0) {
		for (size_t i = 0; i < file_errors.count; i++)
			config_errors_add(ld->errors, "%s: %s: %s", name,
					  key_defs[key].name,
					  file_errors.messages[i]);
		config_errors_clear(&file_errors);
		return;
	}
	if (len > 0 && text[len - 1] == '\n')
		len--;
	if (len > 0 && text[len - 1] == '\r')
		len--;
	value = ascii_trim(text, &len, " \t");
	apply(ld, key, value, len, SOURCE_ENV, name);
	free(text);
}

static void read_environment(struct loader *ld, char *const *env)
{
	const size_t plen = strlen(CONFIG_ENV_PREFIX);
	const size_t file_len = strlen("_FILE");

	for (char *const *e = env; e != NULL && *e != NULL; e++) {
		const char *var = *e;
		const char *eq = strchr(var, '=');
		const char *suffix;
		size_t name_len;
		size_t suffix_len;
		size_t value_len;
		const char *value;
		char *name;
		enum key k;

		if (eq == NULL || strncmp(var, CONFIG_ENV_PREFIX, plen) != 0)
			continue;
		suffix = var + plen;
		name_len = (size_t)(eq - var);
		if (name_len == strlen(CONFIG_ENV_FILE) &&
		    memcmp(var, CONFIG_ENV_FILE, name_len) == 0)
			continue;
		suffix_len = name_len - plen;
		name = xstrndup(var, name_len);
		if (find_env_key(suffix, suffix_len, &k)) {
			value_len = strlen(eq + 1);
			value = ascii_trim(eq + 1, &value_len, " \t");
			apply(ld, k, value, value_len, SOURCE_ENV, name);
		} else if (suffix_len > file_len &&
			   memcmp(suffix + suffix_len - file_len, "_FILE",
				  file_len) == 0 &&
			   find_env_key(suffix, suffix_len - file_len, &k)) {
			apply_env_file(ld, env, k, name, eq + 1);
		} else if (!is_kubernetes_name(suffix, suffix_len)) {
			char q[QUOTE_BUF];
			char *lower = xstrndup(suffix, suffix_len);

			ascii_lower_in_place(lower, suffix_len);
			config_errors_add(ld->errors, "%s: unknown key %s",
					  name, quote(lower, q));
			free(lower);
		}
		free(name);
	}
}

static void check_tls_listeners(struct loader *ld,
				const struct listen_addr *list, size_t count,
				char **origins, enum key key)
{
	const struct config *cfg = ld->cfg;
	char q[QUOTE_BUF];

	if (cfg->tls_cert != NULL && cfg->tls_key != NULL)
		return;
	for (size_t i = 0; i < count; i++) {
		if (list[i].mode != LISTEN_SUBMISSION &&
		    list[i].mode != LISTEN_SMTPS &&
		    list[i].mode != LISTEN_POP3S)
			continue;
		ld->origin = origins[i] != NULL ? origins[i] : "default";
		ld->key = key;
		bad(ld, "%s needs tls_cert and tls_key",
		    quote(list[i].text, q));
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

		format_duration(cfg->retry_min, min, sizeof(min));
		format_duration(cfg->retry_max, max, sizeof(max));
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
			apply(ld, (enum key)k, v, strlen(v), SOURCE_DEFAULT,
			      "default");
	}
	if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	ld->cfg->hostname = xstrdup(host);

	pw = getpwnam("facteur");
	if (pw != NULL && pw->pw_uid != 0 && pw->pw_uid != geteuid())
		ld->cfg->user = xstrdup("facteur");
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
		out_of_memory();
	ld.cfg->routes = route_table_new();
	ld.cfg->sender_routes = route_table_new();
	ld.cfg->shapes = shape_table_new();
	if (ld.cfg->routes == NULL || ld.cfg->sender_routes == NULL ||
	    ld.cfg->shapes == NULL)
		out_of_memory();
	if (name != NULL)
		ld.cfg->source = xstrdup(name);

	set_defaults(&ld);
	if (text != NULL)
		parse_text(&ld, text, len, name);
	read_environment(&ld, env);
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

/* Read a whole file, bounded. Returns 0, 1 when it does not exist and
 * that is allowed, -1 after adding the error. */
static int read_file(const char *path, bool missing_ok, char **text,
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
		out_of_memory();
	default:
		config_errors_add(errors, "%s: cannot read: %s", path,
				  strerror(errno));
		return -1;
	}
}

static const char *env_value(char *const *env, const char *name)
{
	size_t len = strlen(name);

	for (; env != NULL && *env != NULL; env++)
		if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
			return *env + len + 1;
	return NULL;
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
		path = env_value(environ_vars, CONFIG_ENV_FILE);
		if (path != NULL && *path == '\0')
			path = NULL;
	}
	if (path == NULL) {
		path = CONFIG_DEFAULT_FILE;
		missing_ok = true;
	}
	rc = read_file(path, missing_ok, &text, &len, errors);
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
	free_listen_addr(cfg->metrics_listen);
	free(cfg->spool_dir);
	for (size_t i = 0; i < cfg->local_domains.count; i++)
		free(cfg->local_domains.items[i]);
	free(cfg->local_domains.items);
	free(cfg->users_file);
	free(cfg->aliases_file);
	free(cfg->mailbox_path);
	free(cfg->relay_networks);
	free(cfg->proxy_networks);
	free_dkim_sign(cfg);
	free_dnsbl(cfg);
	free_milters(cfg);
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
		format_duration(*(const unsigned *)slot, buf, sizeof(buf));
		fputs(buf, out);
		break;
	case SLOT_SIZE:
		print_size(*(const uint64_t *)slot, out);
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
