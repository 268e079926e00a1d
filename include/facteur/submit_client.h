/*
 * The caller's side of the local submission socket (submit.h), for
 * facteur-sendmail; never used by the daemon. Blocking, one command and
 * its reply at a time, every wait bounded by the socket's timeouts, and
 * the byte relay of -bs between standard input and output and the
 * socket.
 */
#ifndef FACTEUR_SUBMIT_CLIENT_H
#define FACTEUR_SUBMIT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "facteur/smtp_reply.h"

/* Longest reply line read; a longer one breaks the exchange. */
#define SUBMIT_CLIENT_LINE_MAX 1024

struct submit_client {
	int fd;
	char in[SUBMIT_CLIENT_LINE_MAX + 2];
	size_t in_len;
	struct smtp_reply reply; /* the last reply read */
	char err[256];		 /* why the last call failed */
};

enum submit_connect_result {
	SUBMIT_CONNECTED,
	SUBMIT_NOT_RUNNING, /* no socket file, or nobody listens on it */
	SUBMIT_CONNECT_FAILED,
};

/* Connect to the socket at `path` with `timeout_seconds` on every read
 * and write (0: none). On failure c->err says why. */
enum submit_connect_result submit_client_connect(struct submit_client *c,
						 const char *path,
						 unsigned timeout_seconds);
/* Send `line` (without CRLF; NULL sends nothing, e.g. for the greeting)
 * and read the reply into c->reply. Returns its code, or -1 when the
 * exchange broke (c->err). */
int submit_client_command(struct submit_client *c, const char *line, bool ehlo);
/* Write octets as they are (the message's wire form); -1 on failure. */
int submit_client_write(struct submit_client *c, const char *p, size_t n);
void submit_client_close(struct submit_client *c);

/* -bs: copy standard input to the socket and the socket to standard
 * output until the daemon closes it; the end of standard input closes
 * the socket's writing side. 0, or -1 with c->err set. */
int submit_client_relay(struct submit_client *c, int in, int out);

#endif
