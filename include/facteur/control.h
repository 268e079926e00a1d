/*
 * The control socket: a UNIX stream socket at <spool_dir>/control (mode
 * 0600, owned by the daemon's user) through which facteurctl and
 * facteur-sendmail talk to the running daemon. The protocol is a line
 * protocol documented in docs/operations.md: one command line in, reply
 * lines out, the last one "ok" or "error <text>". Served by the loop;
 * a slow or silent client never blocks it.
 */
#ifndef FACTEUR_CONTROL_H
#define FACTEUR_CONTROL_H

#include <stddef.h>

struct server;
struct control;

#define CONTROL_SOCKET_NAME "control"

/* Bind <spool_dir>/control (a stale socket file is replaced) and listen:
 * from here a second daemon on this spool is refused, and a client's
 * connect waits in the backlog until control_enable. NULL with err
 * filled on failure. */
struct control *control_new(struct server *srv, char *err, size_t errlen);
/* Start serving (once the spool is recovered: commands read it). */
void control_enable(struct control *ctl);
/* Close the socket, end every control session, remove the socket file. */
void control_free(struct control *ctl);

#endif
