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
struct smtp_session;

/* Take over an accepted socket; the session frees itself when it ends.
 * NULL (socket closed) when out of memory. */
struct smtp_session *smtp_session_new(struct server *srv, int fd,
                                      const struct sockaddr *addr,
                                      socklen_t addrlen,
                                      enum listen_mode mode);

/* SIGTERM: idle sessions get "421 4.3.2" now; a session in the middle of
 * a message finishes it first. */
void smtp_sessions_shutdown(void);
size_t smtp_sessions_count(void);

#endif
