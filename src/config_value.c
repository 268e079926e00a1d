/*
 * The values several keys share: decimal numbers, durations, sizes,
 * ports, IP addresses with ports, listen entries, networks and rates,
 * parsed without a loader (pure, for their unit tests), and printed
 * back for -n in the form they read.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/config_internal.h"

/* Decimal digits only, no sign, no spaces; at most `max`. */
int config_parse_decimal(const char *s, size_t len, uint64_t max, uint64_t *out)
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
	if (config_parse_decimal(text, len, UINT_MAX / unit, &v) < 0)
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
	if (config_parse_decimal(text, len, UINT64_MAX / unit, &v) < 0)
		return -1;
	*octets = v * unit;
	return 0;
}

int config_parse_port(const char *s, size_t len, uint16_t *port)
{
	uint64_t v;

	if (config_parse_decimal(s, len, 65535, &v) < 0 || v == 0)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* inet_pton on a counted string; `out` holds 16 bytes. */
bool config_parse_ip(int family, const char *s, size_t len, uint8_t *out)
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
const char *config_parse_host_port(const char *s, size_t len, bool names,
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
		if (!config_parse_ip(AF_INET6, s + 1, (size_t)(close - s) - 1,
				     ip))
			return "invalid address";
		rest = len - (size_t)(close + 1 - s);
		if (rest > 0) {
			if (close[1] != ':')
				return "invalid address";
			port_text = close + 2;
			port_len = rest - 1;
		}
	} else if (default_port != 0 && config_parse_ip(AF_INET6, s, len, ip)) {
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
		} else if (!config_parse_ip(AF_INET, s, addr_len, ip)) {
			return "invalid address";
		}
	}
	if (port_text != NULL) {
		if (config_parse_port(port_text, port_len, &port) < 0)
			return "invalid port";
	} else if (default_port == 0) {
		return "missing port";
	}
	fill_sockaddr(family, ip, port, ss, sslen);
	return NULL;
}

const char *config_parse_listen_entry(const char *text, bool pop3,
				      bool with_mode, struct listen_addr *out)
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
	why = config_parse_host_port(text, len, true, 0, &out->addr,
				     &out->addrlen);
	if (why != NULL)
		return why;
	out->mode = mode;
	out->proxy = proxy;
	out->text = config_xstrdup(text);
	return NULL;
}

int config_parse_listen(const char *text, bool pop3, struct listen_addr *out)
{
	return config_parse_listen_entry(text, pop3, true, out) == NULL ? 0
									: -1;
}

int config_parse_cidr(const char *text, struct cidr *out)
{
	const char *slash = strchr(text, '/');
	size_t len = slash != NULL ? (size_t)(slash - text) : strlen(text);
	struct cidr net = {0};
	unsigned max;

	if (config_parse_ip(AF_INET, text, len, net.addr)) {
		net.family = AF_INET;
		max = 32;
	} else if (config_parse_ip(AF_INET6, text, len, net.addr)) {
		net.family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	net.prefix = max;
	if (slash != NULL) {
		uint64_t v;

		if (config_parse_decimal(slash + 1, strlen(slash + 1), max,
					 &v) < 0)
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

int config_parse_rate(const char *text, unsigned *count, unsigned *seconds)
{
	const char *slash = strchr(text, '/');
	uint64_t n;

	if (slash == NULL ||
	    config_parse_decimal(text, (size_t)(slash - text), UINT_MAX, &n) <
		0 ||
	    n == 0 || config_parse_duration(slash + 1, seconds) < 0 ||
	    *seconds == 0)
		return -1;
	*count = (unsigned)n;
	return 0;
}

void config_format_duration(unsigned seconds, char *buf, size_t len)
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

void config_print_size(uint64_t octets, FILE *out)
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

void config_print_cidr(const struct cidr *net, FILE *out)
{
	char buf[INET6_ADDRSTRLEN];

	if (inet_ntop(net->family, net->addr, buf, sizeof(buf)) == NULL)
		snprintf(buf, sizeof(buf), "?");
	fprintf(out, "%s/%u", buf, net->prefix);
}
