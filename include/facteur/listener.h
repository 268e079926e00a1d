/*
 * Bound sockets, one per `listen` entry, and the connection limits
 * (max_connections in all, max_connections_per_ip), checked before a
 * session is made: past them the client is sent the owner's refusal
 * line and closed (SPEC.md §8). The SMTP and the POP3 servers each own
 * one listener, so each counts its own connections; the owner says what
 * a connection becomes and what a refused one is told.
 */
#ifndef FACTEUR_LISTENER_H
#define FACTEUR_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "facteur/config.h"

struct server;
struct listener;

enum listener_limit {
	LISTENER_LIMIT_TOTAL,  /* max_connections */
	LISTENER_LIMIT_PER_IP, /* max_connections_per_ip */
};

struct listener_owner {
	/* Make the session for an accepted socket, which it owns from now
	 * on; `listen` is the entry's text. False when it could not (the
	 * socket closed): the connection's place is given back. Otherwise
	 * the session calls listener_release when it ends. */
	bool (*accept)(void *arg, int fd, const struct sockaddr *addr,
		       socklen_t addrlen, enum listen_mode mode,
		       const char *listen);
	/* A connection past a limit: write the line it is sent (CRLF
	 * included) into line, and log and count the refusal. */
	void (*refuse)(void *arg, enum listener_limit limit, char *line,
		       size_t size);
	void *arg;
	/* Count connections per entry in the metrics (SMTP only). */
	bool metrics;
};

/* The SMTP side: smtp_session_new, "421" refusals with the host name of
 * the moment, connections and refusals counted in the metrics. */
struct listener_owner listener_smtp_owner(struct server *srv);

/* Bind every entry (SO_REUSEADDR, IPV6_V6ONLY for IPv6, SO_REUSEPORT with
 * reuse_port) without listening: until listener_enable a connect is
 * refused. NULL with a message in err when one cannot be bound. */
struct listener *listener_new(struct server *srv, struct listener_owner owner,
			      const struct listen_addr *entries, size_t count,
			      char *err, size_t errlen);
/* Listen on every entry and start accepting (once the daemon can serve:
 * spool recovered, control socket up). -1 with a message in err when an
 * entry cannot listen (another socket listens on its address). */
int listener_enable(struct listener *l, char *err, size_t errlen);
/* After a reload, with the entries now configured: stop those no longer
 * there, bind the new ones (errors are logged; a port below 1024 after
 * privileges were dropped needs a restart). */
void listener_reload(struct listener *l, const struct listen_addr *entries,
		     size_t count);
/* Stop accepting new connections for good (SIGTERM): the sockets are
 * closed, so that a connect is refused; sessions go on. */
void listener_disable(struct listener *l);
void listener_free(struct listener *l);

/* A session ends: release its place in the counts. */
void listener_release(struct listener *l, const struct sockaddr *addr);

/* What counts as one client, as 16 bytes: an IPv4 address as an
 * IPv4-mapped IPv6 one (so that both forms count together), an IPv6
 * address with all but its first `ipv6_prefix` bits cleared (one
 * customer's /64 is one client, as one IPv4 address is). */
void listener_client_key(const struct sockaddr *sa, unsigned ipv6_prefix,
			 uint8_t key[16]);

/* A client's address as text ("192.0.2.1", "2001:db8::1"), for logs and
 * the Received header. */
void listener_address_text(const struct sockaddr *sa, char *buf, size_t len);

#endif
