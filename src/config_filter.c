/*
 * The keys of what a client is checked against: dnsbl zones, milters,
 * and the limits per client (auth_fail_limit, max_messages_per_ip).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "facteur/ascii.h"
#include "facteur/config_internal.h"
#include "facteur/hostname.h"

void config_set_auth_fail_limit(struct loader *ld, const char *value)
{
	char q[CONFIG_QUOTE_BUF];

	if (config_parse_rate(value, &ld->cfg->auth_fail_limit,
			      &ld->cfg->auth_fail_window) < 0)
		config_bad_value(
		    ld,
		    "invalid limit %s (N/DURATION, such as 10/15m, both "
		    "greater than 0)",
		    config_quote(value, q));
}

void config_print_auth_fail_limit(const struct config *cfg, FILE *out)
{
	char buf[32];

	config_format_duration(cfg->auth_fail_window, buf, sizeof(buf));
	fprintf(out, "%u/%s", cfg->auth_fail_limit, buf);
}

/* dnsbl = ZONE [match=A.B.C.D,...]: the zone leaves room for the 64
 * octets of an IPv6 client's nibbles in front of it. */
#define DNSBL_ZONE_MAX 180
#define DNSBL_MATCH_MAX 16

static bool parse_dnsbl_match(const char *p, size_t len,
			      struct config_dnsbl *entry)
{
	entry->match =
	    config_xreallocarray(NULL, DNSBL_MATCH_MAX, sizeof *entry->match);
	for (;;) {
		size_t n = strcspn(p, ",");
		uint8_t ip[16];

		if (n > len)
			n = len;
		if (entry->match_count == DNSBL_MATCH_MAX ||
		    !config_parse_ip(AF_INET, p, n, ip))
			return false;
		memcpy(entry->match[entry->match_count++], ip, 4);
		if (n == len)
			return true;
		p += n + 1;
		len -= n + 1;
	}
}

void config_set_dnsbl(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct config_dnsbl entry = {0};
	size_t len = strcspn(value, " \t");
	const char *opt = value + len + strspn(value + len, " \t");
	size_t opt_len = strcspn(opt, " \t");
	char q[CONFIG_QUOTE_BUF];

	if (len > 1 && value[len - 1] == '.')
		len--;
	if (len > DNSBL_ZONE_MAX || !hostname_valid(value, len)) {
		config_bad_value(ld, "invalid zone %s",
				 config_quote_n(value, len, q));
		return;
	}
	if (opt[opt_len + strspn(opt + opt_len, " \t")] != '\0' ||
	    (opt_len > 0 &&
	     (strncmp(opt, "match=", 6) != 0 ||
	      !parse_dnsbl_match(opt + 6, opt_len - 6, &entry)))) {
		free(entry.match);
		config_bad_value(ld, "expected ZONE [match=IP,...], got %s",
				 config_quote(value, q));
		return;
	}
	entry.zone = config_xstrndup(value, len);
	ascii_lower_in_place(entry.zone, len);
	cfg->dnsbl = config_xreallocarray(cfg->dnsbl, cfg->dnsbl_count + 1,
					  sizeof *cfg->dnsbl);
	cfg->dnsbl[cfg->dnsbl_count++] = entry;
}

void config_free_dnsbl(struct config *cfg)
{
	for (size_t i = 0; i < cfg->dnsbl_count; i++) {
		free(cfg->dnsbl[i].zone);
		free(cfg->dnsbl[i].match);
	}
	free(cfg->dnsbl);
	cfg->dnsbl = NULL;
	cfg->dnsbl_count = 0;
}

void config_clear_dnsbl(struct loader *ld)
{
	config_free_dnsbl(ld->cfg);
}

void config_print_dnsbl(const struct config *cfg, FILE *out)
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
void config_set_max_messages(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	char rate[64], q[CONFIG_QUOTE_BUF];
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
		config_bad_value(
		    ld, "invalid rate %s (N/m or N/h, N greater than 0)",
		    config_quote(value, q));
	}
}

void config_print_max_messages(const struct config *cfg, FILE *out)
{
	char buf[32];
	if (cfg->max_messages == 0)
		return;
	config_format_duration(cfg->max_messages_window, buf, sizeof buf);
	fprintf(out, "%u/%s", cfg->max_messages,
		strcmp(buf, "1m") == 0	 ? "m"
		: strcmp(buf, "1h") == 0 ? "h"
					 : buf);
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
		return config_parse_host_port(s + 5, len - 5, true, 0, &m->addr,
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

void config_set_milter(struct loader *ld, const char *value)
{
	struct config *cfg = ld->cfg;
	struct config_milter m = {.timeout = MILTER_TIMEOUT_DEFAULT};
	size_t len = strcspn(value, " \t");
	char q[CONFIG_QUOTE_BUF];
	const char *why = parse_milter_address(value, len, &m);
	if (why != NULL) {
		config_bad_value(ld, "%s in %s", why, config_quote(value, q));
		return;
	}
	for (const char *opt = value + len;;) {
		opt += strspn(opt, " \t");
		size_t opt_len = strcspn(opt, " \t");
		if (opt_len == 0)
			break;
		if (!parse_milter_option(opt, opt_len, &m)) {
			config_bad_value(
			    ld,
			    "expected ADDRESS [timeout=DURATION] "
			    "[default=tempfail|accept|reject], got %s",
			    config_quote(value, q));
			return;
		}
		opt += opt_len;
	}
	m.name = config_xstrndup(value, len);
	cfg->milters = config_xreallocarray(cfg->milters, cfg->milter_count + 1,
					    sizeof *cfg->milters);
	cfg->milters[cfg->milter_count++] = m;
}

void config_free_milters(struct config *cfg)
{
	for (size_t i = 0; i < cfg->milter_count; i++)
		free(cfg->milters[i].name);
	free(cfg->milters);
	cfg->milters = NULL;
	cfg->milter_count = 0;
}

void config_clear_milters(struct loader *ld)
{
	config_free_milters(ld->cfg);
}

void config_print_milters(const struct config *cfg, FILE *out)
{
	char buf[32];
	for (size_t i = 0; i < cfg->milter_count; i++) {
		const struct config_milter *m = &cfg->milters[i];
		config_format_duration(m->timeout, buf, sizeof buf);
		fprintf(out, "%s%s timeout=%s default=%s",
			i ? "\nmilter = " : "", m->name, buf,
			milter_default_names[m->on_error]);
	}
}
