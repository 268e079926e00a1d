/*
 * The service manager's readiness protocol (systemd's sd_notify), without
 * libsystemd: one datagram of "NAME=value" lines to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a path, or "@name" for an abstract socket).
 * Without that variable every call does nothing, so the daemon runs the
 * same under any supervisor.
 */
#ifndef FACTEUR_SDNOTIFY_H
#define FACTEUR_SDNOTIFY_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The address of a $NOTIFY_SOCKET value: 0, or -1 when it is not an
 * absolute path nor an "@" name, or does not fit (errno EINVAL). */
int sdnotify_address(const char *name, struct sockaddr_un *sun, socklen_t *len);

/* Send `state` (lines such as "READY=1\nSTATUS=...") to `name`, the
 * value of $NOTIFY_SOCKET; NULL or empty sends nothing and returns 0.
 * -1 with errno when it cannot be sent. Never blocks. */
int sdnotify_send(const char *name, const char *state);

/* CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it beside
 * MONOTONIC_USEC=. */
uint64_t sdnotify_monotonic_usec(void);

#endif
