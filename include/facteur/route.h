/*
 * The routing tables: which next hop serves a recipient domain (`route`),
 * or every remote recipient of a sender (`sender_route`). A target may be
 * a failover list "T1|T2|...", tried in order. Parsing a value and
 * looking a domain or a sender up are pure code; nothing here resolves
 * names or opens sockets. The auth= files are read apart
 * (route_table_read_credentials), with the rest of the settings, so that
 * no relay attempt reads a file on the loop.
 */
#ifndef FACTEUR_ROUTE_H
#define FACTEUR_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The tls= option; ROUTE_TLS_DEFAULT means "as tls_outbound". */
enum route_tls {
	ROUTE_TLS_DEFAULT,
	ROUTE_TLS_NONE,
	ROUTE_TLS_MAY,
	ROUTE_TLS_ENCRYPT,
	ROUTE_TLS_VERIFY,
	ROUTE_TLS_IMPLICIT, /* verify, with TLS from the first byte (465) */
};

/* The port of a tls=implicit target written without one (RFC 8314). */
#define ROUTE_IMPLICIT_TLS_PORT 465

/* Elements of a failover list, at most: a handful of backups is what a
 * relay needs, and each costs a resolution before the first connect. */
#define ROUTE_TARGETS_MAX 8

enum route_pattern_kind {
	ROUTE_EXACT,	/* example.com */
	ROUTE_SUFFIX,	/* *.example.com: subdomains at any depth, not itself */
	ROUTE_WILDCARD, /* * */
	ROUTE_ADDRESS,	/* user@example.com: sender routes only */
};

/* One element of a TARGET. */
struct route_target {
	char *host;	 /* the target host name or IP literal, no brackets */
	bool mx_lookup;	 /* "host" (true) or "[host]" / "[ip]" (false) */
	bool host_is_ip; /* "[1.2.3.4]" or "[IPv6:...]"/"[::1]" */
	uint16_t port;	 /* 0: use mx_port */
};

struct route {
	enum route_pattern_kind kind;
	char *pattern; /* lower case; for ROUTE_SUFFIX without the "*." */
	/* in the order written; more than one: a failover list */
	struct route_target targets[ROUTE_TARGETS_MAX];
	size_t target_count;
	enum route_tls tls;
	char *auth_file; /* NULL when no auth= */
	/* From auth_file, once route_table_read_credentials has run; NULL
	 * when it could not be read (the relay then defers, 4.3.5). */
	char *auth_user;
	char *auth_password;
	char *text; /* the value as written, for messages and -n */
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

/* The same for a `sender_route` value, whose PATTERN may also be an
 * address ("user@example.com"). */
int route_table_add_sender(struct route_table *table, const char *value,
			   char *err, size_t errlen);

/*
 * Read every route's auth= file ("user:password" on its first line) into
 * its auth_user and auth_password. A file that cannot be read leaves the
 * route without credentials and is reported to `unreadable` with an
 * errno value. Returns how many could not be read.
 */
typedef void (*route_unreadable_cb)(const struct route *route, int error,
				    void *arg);
size_t route_table_read_credentials(struct route_table *table,
				    route_unreadable_cb unreadable, void *arg);

size_t route_table_count(const struct route_table *table);
const struct route *route_table_get(const struct route_table *table, size_t i);

/*
 * The most specific route for `domain` (case-insensitive): an exact
 * pattern, else the longest matching "*." suffix, else "*", else NULL
 * (deliver to the domain's own MX hosts). Order of the lines is irrelevant.
 */
const struct route *route_lookup(const struct route_table *table,
				 const char *domain);

/*
 * The sender route for an envelope sender: an address pattern equal to
 * it (case-insensitive), else route_lookup on its domain. The null
 * sender ("") matches only "*". NULL: no sender route.
 */
const struct route *route_lookup_sender(const struct route_table *table,
					const char *sender);

/*
 * The pattern grammar and matching of routes, for other tables keyed the
 * same way (shape). route_pattern_parse reads "example.com",
 * "*.example.com" or "*" into a kind and a lower-case malloc'd pattern
 * (-1 with `err` set). route_pattern_rank says how specifically `domain`
 * (len octets, no final dot) matches: 0 not at all, higher wins; an
 * exact name beats any suffix, a longer suffix a shorter one, "*" last.
 */
int route_pattern_parse(const char *s, size_t len,
			enum route_pattern_kind *kind, char **pattern,
			char *err, size_t errlen);
size_t route_pattern_rank(enum route_pattern_kind kind, const char *pattern,
			  const char *domain, size_t len);

/* A table of entries `size` bytes apart, each with its pattern kind and
 * pattern at these offsets (the routes, the shapes). */
struct route_pattern_table {
	const void *entries;
	size_t count;
	size_t size;
	size_t kind_offset;
	size_t pattern_offset;
};

/* The index of the most specific entry for `domain`, count when none. */
size_t route_pattern_best(const struct route_pattern_table *table,
			  const char *domain);
/* 0, or -1 with "duplicate pattern ..." in err when an entry has it. */
int route_pattern_unique(const struct route_pattern_table *table,
			 enum route_pattern_kind kind, const char *pattern,
			 char *err, size_t errlen);

/* Split a value at spaces and tabs: *text gets the value trimmed
 * (malloc'd), each token goes to `token` with its index (tok NULL: out
 * of memory, once, and nothing follows). Returns how many tokens, or -1
 * when `token` did. */
typedef int (*route_token_fn)(const char *tok, size_t len, size_t index,
			      void *arg);
int route_split_tokens(const char *value, char **text, route_token_fn token,
		       void *arg);

/*
 * local_transport: where local recipients go instead of facteur's own
 * Maildir and mbox writer, an LMTP server (RFC 2033) such as Dovecot's,
 * on a UNIX-domain socket or over TCP. A next hop like a route's, its
 * [HOST]:PORT written the same way; the conversation is smtp_client's
 * LMTP mode, driven by relay_send_lmtp.
 */
#define LMTP_DEFAULT_PORT 24 /* RFC 2033's registered port */
#define LMTP_HOST_MAX 253
#define LMTP_TEXT_MAX 320

enum route_lmtp_kind {
	LMTP_NONE, /* facteur writes the mailboxes itself */
	LMTP_UNIX, /* lmtp:unix:PATH */
	LMTP_INET, /* lmtp:[HOST]:PORT */
};

struct route_lmtp {
	enum route_lmtp_kind kind;
	/* "lmtp:unix:/run/dovecot/lmtp", "lmtp:[127.0.0.1]:24": the
	 * canonical form, as -n prints it and log lines name it */
	char text[LMTP_TEXT_MAX];
	char host[LMTP_HOST_MAX + 1]; /* LMTP_INET: no brackets */
	bool host_is_ip;	      /* else a name to resolve */
	uint16_t port;
	/* LMTP_UNIX, and LMTP_INET when host_is_ip: where to connect */
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

/*
 * Parse a local_transport value: "" (none), "lmtp:unix:/ABSOLUTE/PATH"
 * or "lmtp:[HOST]" with an optional ":PORT" (default 24), HOST an IPv4
 * or IPv6 literal or a host name. 0, or -1 with the reason in `err`.
 */
int route_lmtp_parse(const char *value, struct route_lmtp *out, char *err,
		     size_t errlen);

#endif
