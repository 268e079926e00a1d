/*
 * The inbound SMTP state machine: greeting, EHLO, MAIL/RCPT policy,
 * DATA and BDAT streamed into the spool, the 250 after the commit. One
 * struct per connection; every transition happens in its input handler
 * (smtp_session_process). Its files share smtp_session_internal.h.
 */
#ifndef FACTEUR_SMTP_SESSION_H
#define FACTEUR_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

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

/* Who is on the other end of a local submission socket (submit.h), as
 * the kernel says (SO_PEERCRED). The session is trusted like a
 * relay_networks client, logs client=local with these fields, and calls
 * release(arg) when it ends instead of the listener's release. */
struct smtp_local_peer {
	uid_t uid;
	gid_t gid;
	pid_t pid;
	char user[64];	 /* the account's name, or the uid in digits */
	bool privileged; /* root or the daemon's account: -f is not logged */
	void (*release)(void *arg);
	void *arg;
};

/* The same for a local submission: protocol=local, no STARTTLS. */
struct smtp_session *smtp_session_new_local(struct server *srv, int fd,
					    const struct smtp_local_peer *peer);

/* SIGTERM: idle sessions get "421 4.3.2" now; a session in the middle of
 * a message finishes it first. */
void smtp_server_shutdown(struct smtp_server *smtp);
size_t smtp_server_sessions(const struct smtp_server *smtp);

#endif
