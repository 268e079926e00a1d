/*
 * The POP3 server (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH
 * PLAIN) over the Maildir mailboxes of the users_file accounts: one more
 * state machine (AUTHORIZATION -> TRANSACTION -> UPDATE) in the same
 * loop, on the `pop3_listen` entries (`pop3` and `pop3s`).
 */
#ifndef FACTEUR_POP3_H
#define FACTEUR_POP3_H

#include <stddef.h>

struct server;
struct pop3_server;

/* Bind every pop3_listen entry of srv->cfg, not listening yet; NULL with
 * err filled when one cannot be bound. With no entries, a server with
 * nothing to serve. */
struct pop3_server *pop3_server_new(struct server *srv, char *err,
                                    size_t errlen);
/* Listen and accept (see listener_enable); -1 with err filled. */
int pop3_server_enable(struct pop3_server *p, char *err, size_t errlen);
void pop3_server_disable(struct pop3_server *p);
/* SIGTERM: end every session (no deletions: UPDATE happens only on QUIT). */
void pop3_server_shutdown(struct pop3_server *p);
size_t pop3_sessions_count(const struct pop3_server *p);
void pop3_server_free(struct pop3_server *p);

#endif
