/*
 * The local submission socket: a UNIX stream socket that any local
 * account may connect to (mode 0666, outside the spool, which stays the
 * daemon's alone), on which the daemon runs its SMTP session with the
 * caller's identity from SO_PEERCRED. facteur-sendmail speaks SMTP over
 * it, so that every user submits without the right to read or change
 * the spool, and the message is the daemon's before the 250.
 */
#ifndef FACTEUR_SUBMIT_H
#define FACTEUR_SUBMIT_H

#include <stddef.h>

#include "facteur/config.h"

struct server;
struct submit;

/* Where the socket is: submit_socket, or by default spool_dir with
 * ".submit" appended (beside the spool, not in it: its folder must be
 * open to every account). 1 with the path in buf, 0 when it is "none"
 * (no socket), -1 when the path does not fit a socket address. */
int submit_socket_path(const struct config *cfg, char *buf, size_t len);

/* Bind the socket (before privileges are dropped: its folder may be the
 * administrator's) without listening: a connect is refused until
 * submit_enable. *out is NULL when submit_socket is "none", or when the
 * default path cannot be bound (logged). -1 with a message in err when
 * the configured one cannot be bound or another daemon serves it. */
int submit_new(struct server *srv, struct submit **out, char *err,
	       size_t errlen);
/* Listen and accept (once the daemon serves its other listeners). */
int submit_enable(struct submit *sub, char *err, size_t errlen);
/* SIGTERM: stop accepting; open sessions go on. */
void submit_disable(struct submit *sub);
/* Close and remove the socket file (when the account still may). */
void submit_free(struct submit *sub);

#endif
