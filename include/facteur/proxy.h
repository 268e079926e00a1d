/*
 * The PROXY protocol step of a "+proxy" listen entry: between accept and
 * the session, read the balancer's header (proxy_proto.h) within
 * PROXY_DEADLINE_SECONDS and hand the connection on with the client's
 * address. Only the header's octets are taken from the socket, so the
 * session (or its TLS handshake) starts at the client's first octet.
 * A peer outside proxy_networks, a bad or late header, is closed without
 * a word and logged as event=proxy_error.
 */
#ifndef FACTEUR_PROXY_H
#define FACTEUR_PROXY_H

#include <stdbool.h>
#include <sys/socket.h>

#include "facteur/config.h"

#define PROXY_DEADLINE_SECONDS 10

struct event_base;
struct proxy_reader;

struct proxy_owner {
	/* The header is read: the connection (fd, now the callee's) comes
	 * from `client`, the header's source or, for LOCAL, the peer. */
	void (*ready)(void *arg, int fd, const struct sockaddr *client,
		      socklen_t client_len, enum listen_mode mode,
		      const char *listen);
	/* The connection was closed (bad header, deadline, peer gone). */
	void (*failed)(void *arg);
	void *arg;
};

/* The headers being read for one listener. */
struct proxy_reader *proxy_reader_new(struct event_base *base,
				      struct proxy_owner owner);
/* Close every connection whose header is still awaited, without
 * callbacks (the listener is going away). */
void proxy_reader_free(struct proxy_reader *r);

/*
 * Await the header of an accepted connection from `peer`. False when
 * the peer is not in `networks` or no memory is left: the socket is then
 * closed and logged, and no callback runs. Otherwise exactly one of the
 * owner's callbacks runs later, never inside this call.
 */
bool proxy_reader_start(struct proxy_reader *r, int fd,
			const struct sockaddr *peer, socklen_t peer_len,
			const struct cidr *networks, size_t network_count,
			enum listen_mode mode, const char *listen);

#endif
