/*
 * Experiment, not part of facteur: preloaded into facteurd alone
 * (BENCH_FACTEURD_PRELOAD), it sets TCP_NODELAY on every TCP socket the
 * daemon connects, to measure what the option would give the relay path
 * before anyone changes the code (docs/performance.md, scenario c).
 *
 *     cc -O2 -shared -fPIC -o /tmp/nodelay.so bench/nodelay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len);

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	static int (*real_connect)(int, const struct sockaddr *, socklen_t);

	if (real_connect == NULL)
		real_connect = (int (*)(int, const struct sockaddr *,
					socklen_t))dlsym(RTLD_NEXT, "connect");
	if (real_connect == NULL)
		return -1;
	if (addr != NULL &&
	    (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
		int one = 1;
		/* Best effort: a failure leaves the socket as it was. */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	return real_connect(fd, addr, len);
}
