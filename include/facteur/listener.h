/*
 * The bound SMTP sockets, one per `listen` entry, and the connection
 * limits (max_connections in all, max_connections_per_ip), checked
 * before a session is made: past them the client gets a 421 and is
 * closed (SPEC.md §8).
 */
#ifndef FACTEUR_LISTENER_H
#define FACTEUR_LISTENER_H

#include <stddef.h>
#include <sys/socket.h>

struct server;
struct listener;

/* Bind every `listen` entry of srv->cfg (SO_REUSEADDR, IPV6_V6ONLY for
 * IPv6). NULL with a message in err when one cannot be bound. */
struct listener *listener_new(struct server *srv, char *err, size_t errlen);
/* Start accepting (after privileges are dropped). */
void listener_enable(struct listener *l);
/* After a reload: stop the entries no longer configured, bind the new
 * ones (errors are logged; a port below 1024 after privileges were
 * dropped needs a restart). */
void listener_reload(struct listener *l);
/* Stop accepting new connections (SIGTERM). */
void listener_disable(struct listener *l);
void listener_free(struct listener *l);

/* A session ends: release its place in the per-IP count. */
void listener_release(struct listener *l, const struct sockaddr *addr);

#endif
