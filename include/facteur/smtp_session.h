/*
 * The inbound SMTP state machine (SPEC.md §4): greeting, EHLO, MAIL/RCPT
 * policy, DATA and BDAT streamed into the spool, the 250 after the
 * commit. One struct per connection; every transition happens in
 * smtp_session.c's input handler.
 */
#ifndef FACTEUR_SMTP_SESSION_H
#define FACTEUR_SMTP_SESSION_H

#include <stddef.h>
#include <sys/socket.h>

#include "facteur/config.h"

struct server;
struct smtp_server;
struct smtp_session;

/* The SMTP side of one daemon (srv->smtp): its sessions and the memory
 * their envelopes hold together (max_envelope_memory). NULL when out of
 * memory. Free it once its sessions are gone, or the loop has stopped. */
struct smtp_server *smtp_server_new(void);
void smtp_server_free(struct smtp_server *smtp);

/* Take over an accepted socket, as a session of srv->smtp; the session
 * frees itself when it ends. NULL (socket closed) when out of memory. */
struct smtp_session *smtp_session_new(struct server *srv, int fd,
				      const struct sockaddr *addr,
				      socklen_t addrlen, enum listen_mode mode);

/* SIGTERM: idle sessions get "421 4.3.2" now; a session in the middle of
 * a message finishes it first. */
void smtp_server_shutdown(struct smtp_server *smtp);
size_t smtp_server_sessions(const struct smtp_server *smtp);

#endif
