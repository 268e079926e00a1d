/*
 * The routing table (SPEC.md §3, "Routes"): which next hop serves a
 * recipient domain. Pure code: parsing a `route` value and looking a
 * domain up; nothing here resolves names or opens sockets.
 */
#ifndef FACTEUR_ROUTE_H
#define FACTEUR_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The tls= option; ROUTE_TLS_DEFAULT means "as tls_outbound". */
enum route_tls {
	ROUTE_TLS_DEFAULT,
	ROUTE_TLS_NONE,
	ROUTE_TLS_MAY,
	ROUTE_TLS_ENCRYPT,
	ROUTE_TLS_VERIFY,
};

enum route_pattern_kind {
	ROUTE_EXACT,    /* example.com */
	ROUTE_SUFFIX,   /* *.example.com: subdomains at any depth, not itself */
	ROUTE_WILDCARD, /* * */
};

struct route {
	enum route_pattern_kind kind;
	char *pattern;   /* lower case; for ROUTE_SUFFIX without the "*." */
	char *host;      /* the target host name or IP literal, no brackets */
	bool mx_lookup;  /* "host" (true) or "[host]" / "[ip]" (false) */
	bool host_is_ip; /* "[1.2.3.4]" or "[IPv6:...]"/"[::1]" */
	uint16_t port;   /* 0: use mx_port */
	enum route_tls tls;
	char *auth_file; /* NULL when no auth= */
	char *text;      /* the value as written, for messages and -n */
};

struct route_table;

struct route_table *route_table_new(void);
void route_table_free(struct route_table *table);

/*
 * Parse one `route` value ("PATTERN TARGET [tls=...] [auth=FILE]") and add
 * it to the table. Returns 0, or -1 with a short reason in `err`
 * (e.g. "bad target \"[host\""). A route with auth= and no tls= gets
 * ROUTE_TLS_VERIFY; auth= with tls=may is refused.
 */
int route_table_add(struct route_table *table, const char *value, char *err,
                    size_t errlen);

size_t route_table_count(const struct route_table *table);
const struct route *route_table_get(const struct route_table *table, size_t i);

/*
 * The most specific route for `domain` (case-insensitive): an exact
 * pattern, else the longest matching "*." suffix, else "*", else NULL
 * (deliver to the domain's own MX hosts). Order of the lines is irrelevant.
 */
const struct route *route_lookup(const struct route_table *table,
                                 const char *domain);

#endif
