/*
 * Reading PROXY protocol headers on the loop (see proxy.h). Each waiting
 * connection has a read event and a deadline timer. A read first peeks:
 * the parser says where the header ends, and only then are its octets
 * taken, so nothing of the client's is ever consumed here. While the
 * header is incomplete every octet peeked is header, so it is taken at
 * once (a level-triggered read event would otherwise fire again and
 * again on octets left in the socket).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/proxy.h"
#include "facteur/proxy_proto.h"

struct proxy_wait {
	struct proxy_reader *reader;
	struct proxy_wait *prev, *next;
	int fd;
	struct event *read;
	struct event *deadline;
	struct sockaddr_storage peer;
	socklen_t peer_len;
	char peer_text[64];
	enum listen_mode mode;
	char *listen;
	uint8_t header[PROXY_PROTO_MAX];
	size_t have; /* octets of the header taken from the socket */
};

struct proxy_reader {
	struct event_base *base;
	struct proxy_owner owner;
	struct proxy_wait *waiting;
};

struct proxy_reader *proxy_reader_new(struct event_base *base,
				      struct proxy_owner owner)
{
	struct proxy_reader *r = calloc(1, sizeof *r);
	if (r == NULL)
		return NULL;
	r->base = base;
	r->owner = owner;
	return r;
}

/* Unlink and free; the descriptor is the caller's business. */
static void wait_free(struct proxy_wait *w)
{
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		w->reader->waiting = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	if (w->read != NULL)
		event_free(w->read);
	if (w->deadline != NULL)
		event_free(w->deadline);
	free(w->listen);
	free(w);
}

void proxy_reader_free(struct proxy_reader *r)
{
	if (r == NULL)
		return;
	while (r->waiting != NULL) {
		int fd = r->waiting->fd;
		wait_free(r->waiting);
		close(fd);
	}
	free(r);
}

static void log_error(const char *client, const char *listen,
		      const char *reason)
{
	metrics.proxy_errors_total++;
	log_event(LOG_LEVEL_WARN, "proxy_error", LOG_S("client", client),
		  LOG_S("listen", listen), LOG_S("reason", reason));
}

static void fail(struct proxy_wait *w, const char *reason)
{
	struct proxy_owner owner = w->reader->owner;
	log_error(w->peer_text, w->listen, reason);
	close(w->fd);
	wait_free(w);
	owner.failed(owner.arg);
}

static void done(struct proxy_wait *w, const struct proxy_header *h)
{
	struct proxy_owner owner = w->reader->owner;
	const struct sockaddr *client = (const struct sockaddr *)&w->peer;
	socklen_t client_len = w->peer_len;
	if (h->command == PROXY_COMMAND_PROXY) {
		client = (const struct sockaddr *)&h->source;
		client_len = h->source_len;
	}
	char text[64];
	listener_address_text(client, text, sizeof text);
	log_event(LOG_LEVEL_DEBUG, "proxy_header", LOG_S("client", text),
		  LOG_S("proxy", w->peer_text), LOG_I("version", h->version),
		  LOG_S("command",
			h->command == PROXY_COMMAND_PROXY ? "proxy" : "local"));
	/* The callee may start reading at once: the wait goes first, so
	 * that nothing of it is left on the descriptor. */
	int fd = w->fd;
	enum listen_mode mode = w->mode;
	char *listen = w->listen;
	w->listen = NULL;
	struct sockaddr_storage copy;
	memcpy(&copy, client, client_len);
	wait_free(w);
	owner.ready(owner.arg, fd, (const struct sockaddr *)&copy, client_len,
		    mode, listen);
	free(listen);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct proxy_wait *w = arg;
	size_t room = sizeof w->header - w->have;
	ssize_t n = recv(fd, w->header + w->have, room, MSG_PEEK);
	if (n == -1) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		fail(w, strerror(errno));
		return;
	}
	if (n == 0) {
		fail(w, "connection closed before the end of the header");
		return;
	}

	struct proxy_header h;
	size_t seen = w->have + (size_t)n;
	enum proxy_proto_result r = proxy_proto_parse(w->header, seen, &h);
	if (r == PROXY_PROTO_INVALID) {
		fail(w, h.error);
		return;
	}
	/* Take the header's octets out of the socket: all that was peeked
	 * while it goes on, only its end once it is complete. */
	size_t take = r == PROXY_PROTO_OK ? h.length - w->have : (size_t)n;
	ssize_t got = recv(fd, w->header + w->have, take, 0);
	if (got != (ssize_t)take) {
		/* Peeked octets are queued: a short read is a broken socket. */
		fail(w, got == -1 ? strerror(errno) : "short read");
		return;
	}
	w->have += take;
	if (r == PROXY_PROTO_OK)
		done(w, &h);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	fail(arg, "no complete header within the deadline");
}

bool proxy_reader_start(struct proxy_reader *r, int fd,
			const struct sockaddr *peer, socklen_t peer_len,
			const struct cidr *networks, size_t network_count,
			enum listen_mode mode, const char *listen)
{
	char peer_text[64];
	listener_address_text(peer, peer_text, sizeof peer_text);
	if (!config_cidr_match(networks, network_count, peer)) {
		log_error(peer_text, listen, "peer not in proxy_networks");
		close(fd);
		return false;
	}
	struct proxy_wait *w = calloc(1, sizeof *w);
	if (w == NULL || (size_t)peer_len > sizeof w->peer ||
	    (w->listen = strdup(listen)) == NULL) {
		free(w);
		log_error(peer_text, listen, "out of memory");
		close(fd);
		return false;
	}
	w->reader = r;
	w->fd = fd;
	memcpy(&w->peer, peer, peer_len);
	w->peer_len = peer_len;
	memcpy(w->peer_text, peer_text, sizeof peer_text);
	w->mode = mode;
	w->next = r->waiting;
	if (r->waiting != NULL)
		r->waiting->prev = w;
	r->waiting = w;

	struct timeval deadline = {PROXY_DEADLINE_SECONDS, 0};
	w->read = event_new(r->base, fd, EV_READ | EV_PERSIST, on_read, w);
	w->deadline = evtimer_new(r->base, on_deadline, w);
	if (w->read == NULL || w->deadline == NULL ||
	    event_add(w->read, NULL) == -1 ||
	    evtimer_add(w->deadline, &deadline) == -1) {
		wait_free(w);
		log_error(peer_text, listen, "out of memory");
		close(fd);
		return false;
	}
	return true;
}
