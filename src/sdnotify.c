/*
 * sd_notify in a few lines (see sdnotify.h). One socket per message: the
 * daemon sends a handful in its life (ready, reloading, stopping), so
 * keeping a descriptor open would buy nothing.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "facteur/sdnotify.h"

int sdnotify_address(const char *name, struct sockaddr_un *sun, socklen_t *len)
{
	size_t n = strlen(name);

	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	/* An abstract name has no terminating NUL: its length is all. */
	if ((name[0] != '/' && name[0] != '@') || n < 2 ||
	    n > sizeof sun->sun_path - (name[0] == '/')) {
		errno = EINVAL;
		return -1;
	}
	memcpy(sun->sun_path, name, n);
	if (name[0] == '@')
		sun->sun_path[0] = '\0';
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
			   (name[0] == '/'));
	return 0;
}

int sdnotify_send(const char *name, const char *state)
{
	struct sockaddr_un sun;
	socklen_t len;

	if (name == NULL || name[0] == '\0')
		return 0;
	if (sdnotify_address(name, &sun, &len) == -1)
		return -1;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd == -1)
		return -1;
	ssize_t sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
			      (const struct sockaddr *)&sun, len);
	int saved = errno;
	/* The datagram is out or refused already: a failing close loses
	 * nothing, so only the send's result counts. */
	if (close(fd) == -1)
		errno = saved;
	if (sent == -1 || (size_t)sent != strlen(state)) {
		errno = sent == -1 ? saved : EMSGSIZE;
		return -1;
	}
	return 0;
}

uint64_t sdnotify_monotonic_usec(void)
{
	struct timespec ts;

	/* Cannot fail with this clock and a valid pointer. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
