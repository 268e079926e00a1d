/*
 * Bound sockets and the connection limits (see listener.h). The per-IP
 * counts live in a small chained hash table keyed by the client's
 * address bytes (an IPv6 client by its ipv6_prefix_length network);
 * an entry goes away when its last connection does.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "facteur/accept_pause.h"
#include "facteur/config.h"
#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/proxy.h"
#include "facteur/server.h"
#include "facteur/smtp_session.h"
#include "facteur/status_code.h"

#define IP_BUCKETS 1024
#define LISTEN_BACKLOG 1024
/* A failed accept within this many seconds of the previous one is the
 * same shortage of descriptors going on: it is not logged again. */
#define ACCEPT_EPISODE_SECONDS 5
#define REFUSAL_MAX 512

struct ip_count {
	struct ip_count *next;
	uint8_t addr[16]; /* IPv4 as an IPv4-mapped IPv6 address */
	unsigned count;
};

struct bound {
	struct listener *owner;
	struct evconnlistener *ev;
	enum listen_mode mode;
	bool proxy; /* "+proxy": a PROXY protocol header comes first */
	char *text;
	int metrics_slot; /* -1 when not counted */
	int fd;		  /* the bound socket, owned by ev */
	bool listening;	  /* listen(2) done: connects are no longer refused */
};

struct listener {
	struct server *srv;
	struct listener_owner owner;
	struct bound **bound; /* each its own allocation: accept callbacks
				 hold a pointer to it */
	size_t bound_count;
	bool enabled; /* wanted on; may be paused for a second after EMFILE */
	unsigned active;
	struct ip_count *buckets[IP_BUCKETS];
	struct accept_pause pause; /* a second without accepting after EMFILE */
	/* ipv6_prefix_length as read at start: the counts are keyed by it,
	 * so a reload must not change it under them. */
	unsigned ipv6_prefix;
	time_t last_accept_error;   /* monotonic seconds, 0 before any */
	struct proxy_reader *proxy; /* headers awaited on "+proxy" entries */
};

void listener_client_key(const struct sockaddr *sa, unsigned ipv6_prefix,
			 uint8_t key[16])
{
	memset(key, 0, 16);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &sin->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;
		memcpy(key, &sin6->sin6_addr, 16);
		/* An IPv4 client seen through an IPv6 socket is one IPv4
		 * address, not a share of ::ffff:0:0/96. */
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) ||
		    ipv6_prefix >= 128)
			return;
		size_t whole = ipv6_prefix / 8;
		unsigned bits = ipv6_prefix % 8;
		if (bits != 0)
			key[whole++] &= (uint8_t)(0xff00u >> bits);
		memset(key + whole, 0, 16 - whole);
	}
}

static unsigned bucket_of(const uint8_t key[16])
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % IP_BUCKETS;
}

static struct ip_count **find_ip(struct listener *l, const uint8_t key[16])
{
	struct ip_count **at = &l->buckets[bucket_of(key)];
	while (*at != NULL && memcmp((*at)->addr, key, 16) != 0)
		at = &(*at)->next;
	return at;
}

/* Send the owner's refusal line and close. The line is tiny and the
 * socket brand new, so one non-blocking send fits its buffer. */
static void refuse(struct listener *l, int fd, enum listener_limit limit)
{
	char line[REFUSAL_MAX];
	line[0] = '\0';
	l->owner.refuse(l->owner.arg, limit, line, sizeof line);
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n; /* the client is turned away either way */
	close(fd);
}

/* Count the client and make its session, unless it is past its
 * per-IP limit; metrics_slot is the entry's count, or -1. */
static void admit(struct listener *l, int fd, const struct sockaddr *addr,
		  socklen_t addrlen, enum listen_mode mode, const char *text,
		  int metrics_slot)
{
	const struct config *cfg = l->srv->cfg;
	uint8_t key[16];
	listener_client_key(addr, l->ipv6_prefix, key);
	struct ip_count **at = find_ip(l, key);
	if (*at != NULL && (*at)->count >= cfg->max_connections_per_ip) {
		refuse(l, fd, LISTENER_LIMIT_PER_IP);
		return;
	}
	if (*at == NULL) {
		*at = calloc(1, sizeof **at);
		if (*at == NULL) {
			close(fd);
			return;
		}
		memcpy((*at)->addr, key, 16);
	}
	(*at)->count++;
	l->active++;
	metrics_listener_connection(metrics_slot);
	/* TCP_NODELAY comes from the listening socket (bind_one). */
	if (!l->owner.accept(l->owner.arg, fd, addr, addrlen, mode, text))
		listener_release(l, addr);
}

static void on_accept(struct evconnlistener *ev, evutil_socket_t fd,
		      struct sockaddr *addr, int addrlen, void *arg)
{
	(void)ev;
	struct bound *b = arg;
	struct listener *l = b->owner;
	const struct config *cfg = l->srv->cfg;

	if (l->srv->stopping || !l->enabled) {
		close(fd);
		return;
	}
	if (l->active >= cfg->max_connections) {
		refuse(l, fd, LISTENER_LIMIT_TOTAL);
		return;
	}
	if (!b->proxy) {
		admit(l, fd, addr, (socklen_t)addrlen, b->mode, b->text,
		      b->metrics_slot);
		return;
	}
	metrics_listener_connection(b->metrics_slot);
	/* The per-IP count waits for the header, which names the client;
	 * until then the connection holds a place in max_connections. */
	l->active++;
	if (!proxy_reader_start(l->proxy, fd, addr, (socklen_t)addrlen,
				cfg->proxy_networks, cfg->proxy_network_count,
				b->mode, b->text))
		l->active--;
}

static void on_proxy_ready(void *arg, int fd, const struct sockaddr *client,
			   socklen_t client_len, enum listen_mode mode,
			   const char *listen)
{
	struct listener *l = arg;
	l->active--;
	if (l->srv->stopping) {
		close(fd);
		return;
	}
	admit(l, fd, client, client_len, mode, listen, -1);
}

static void on_proxy_failed(void *arg)
{
	struct listener *l = arg;
	l->active--;
}

static void set_accepting(struct listener *l, bool on)
{
	for (size_t i = 0; i < l->bound_count; i++) {
		if (on && l->bound[i]->listening)
			evconnlistener_enable(l->bound[i]->ev);
		else
			evconnlistener_disable(l->bound[i]->ev);
	}
}

/* A pause starts (accepting stops) or ends (accepting resumes unless the
 * daemon stops or the listener was disabled meanwhile). */
static void on_pause_change(void *arg)
{
	struct listener *l = arg;
	if (accept_pause_active(&l->pause))
		set_accepting(l, false);
	else if (!l->srv->stopping && l->enabled)
		set_accepting(l, true);
}

/* Out of descriptors: stop accepting for a second rather than spin,
 * and log once per episode rather than once a second. */
static void on_accept_error(struct evconnlistener *ev, void *arg)
{
	(void)ev;
	struct bound *b = arg;
	struct listener *l = b->owner;
	int err = EVUTIL_SOCKET_ERROR();
	struct timespec now;
	if (clock_gettime(CLOCK_MONOTONIC, &now) == -1)
		now.tv_sec = 0; /* cannot fail with this clock; then it logs */
	if (l->last_accept_error == 0 || now.tv_sec == 0 ||
	    now.tv_sec - l->last_accept_error > ACCEPT_EPISODE_SECONDS)
		log_event(LOG_LEVEL_ERROR, "accept_error",
			  LOG_S("listen", b->text),
			  LOG_S("reason", strerror(err)));
	l->last_accept_error = now.tv_sec;
	accept_pause_start(&l->pause);
}

/* Bound only: until listen(2), a connect to the port is refused, so no
 * client reaches a daemon that cannot serve it yet (bound_listen). */
static int bind_one(const struct listen_addr *la, bool reuse_port, char *err,
		    size_t errlen)
{
	int family = la->addr.ss_family;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "%s: socket: %s", la->text,
			 strerror(errno));
		return -1;
	}
	int one = 1;
	/* Replies are whole groups written once per loop turn; Nagle would
	 * only hold one back for a delayed ACK. Accepted sockets inherit
	 * TCP_NODELAY (Linux), which saves a setsockopt per connection.
	 * SO_REUSEPORT (reuse_port) lets several daemons share the address,
	 * the kernel spreading connections among those listening. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
	    (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
				      sizeof one) == -1) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1 ||
	    (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY,
					      &one, sizeof one) == -1) ||
	    bind(fd, (const struct sockaddr *)&la->addr, la->addrlen) == -1) {
		snprintf(err, errlen, "%s: %s", la->text, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Start listening on a bound socket. It can still fail: Linux lets two
 * SO_REUSEADDR sockets bind one address while neither listens, and
 * only the first to listen gets it. */
static int bound_listen(struct bound *b, char *err, size_t errlen)
{
	if (b->listening)
		return 0;
	if (listen(b->fd, LISTEN_BACKLOG) == -1) {
		snprintf(err, errlen, "%s: %s", b->text, strerror(errno));
		return -1;
	}
	b->listening = true;
	log_event(LOG_LEVEL_INFO, "listening", LOG_S("listen", b->text));
	return 0;
}

static struct bound *bound_new(struct listener *l, const struct listen_addr *la,
			       char *err, size_t errlen)
{
	int fd = bind_one(la, l->srv->cfg->reuse_port, err, errlen);
	if (fd == -1)
		return NULL;
	struct bound *b = calloc(1, sizeof *b);
	if (b == NULL || (b->text = strdup(la->text)) == NULL) {
		close(fd);
		free(b);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	b->owner = l;
	b->fd = fd;
	b->mode = la->mode;
	b->proxy = la->proxy;
	b->metrics_slot =
	    l->owner.metrics ? metrics_listener_add(la->text) : -1;
	/* Backlog 0: libevent must not call listen(2) itself (-1 would,
	 * with a backlog of 128); bound_listen does, when it is time. */
	b->ev = evconnlistener_new(l->srv->base, on_accept, b,
				   LEV_OPT_CLOSE_ON_FREE |
				       LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
				   0, fd);
	if (b->ev == NULL) {
		close(fd);
		free(b->text);
		free(b);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	evconnlistener_set_error_cb(b->ev, on_accept_error);
	log_event(LOG_LEVEL_INFO, "bound", LOG_S("listen", la->text));
	return b;
}

static void bound_free(struct bound *b)
{
	evconnlistener_free(b->ev);
	free(b->text);
	free(b);
}

struct listener *listener_new(struct server *srv, struct listener_owner owner,
			      const struct listen_addr *entries, size_t count,
			      char *err, size_t errlen)
{
	struct listener *l = calloc(1, sizeof *l);
	if (l == NULL)
		goto nomem;
	l->srv = srv;
	l->owner = owner;
	l->ipv6_prefix = srv->cfg->ipv6_prefix_length;
	l->bound = calloc(count ? count : 1, sizeof *l->bound);
	int pause_rc = accept_pause_init(
	    &l->pause, srv->base, (struct timeval){1, 0}, on_pause_change, l);
	struct proxy_owner proxy_owner = {
	    .ready = on_proxy_ready,
	    .failed = on_proxy_failed,
	    .arg = l,
	};
	l->proxy = proxy_reader_new(srv->base, proxy_owner);
	if (l->bound == NULL || pause_rc == -1 || l->proxy == NULL)
		goto nomem;
	for (size_t i = 0; i < count; i++) {
		struct bound *b = bound_new(l, &entries[i], err, errlen);
		if (b == NULL)
			goto fail;
		l->bound[l->bound_count++] = b;
	}
	return l;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	listener_free(l);
	return NULL;
}

/* Is this entry (by its text, which names address, port and mode) among
 * the entries? */
static bool listed(const struct listen_addr *entries, size_t count,
		   const char *text)
{
	for (size_t i = 0; i < count; i++)
		if (strcmp(entries[i].text, text) == 0)
			return true;
	return false;
}

void listener_reload(struct listener *l, const struct listen_addr *entries,
		     size_t count)
{
	if (l->srv->stopping)
		return; /* closed for good (listener_disable) */
	/* Entries gone from the configuration stop; sessions they
	 * accepted go on. */
	size_t kept = 0;
	for (size_t i = 0; i < l->bound_count; i++) {
		if (listed(entries, count, l->bound[i]->text)) {
			l->bound[kept++] = l->bound[i];
			continue;
		}
		log_event(LOG_LEVEL_INFO, "unlistening",
			  LOG_S("listen", l->bound[i]->text));
		bound_free(l->bound[i]);
	}
	l->bound_count = kept;
	struct bound **grown =
	    realloc(l->bound, (kept + count + 1) * sizeof *l->bound);
	if (grown == NULL) {
		log_event(LOG_LEVEL_ERROR, "listen_error",
			  LOG_S("reason", "out of memory"));
		return;
	}
	l->bound = grown;
	for (size_t i = 0; i < count; i++) {
		bool have = false;
		for (size_t j = 0; j < l->bound_count && !have; j++)
			have = strcmp(l->bound[j]->text, entries[i].text) == 0;
		if (have)
			continue;
		char err[512];
		struct bound *b = bound_new(l, &entries[i], err, sizeof err);
		if (b == NULL) {
			/* Privileges may be gone: a low port needs a restart.
			 */
			log_event(LOG_LEVEL_ERROR, "listen_error",
				  LOG_S("listen", entries[i].text),
				  LOG_S("reason", err));
			continue;
		}
		if (l->enabled && bound_listen(b, err, sizeof err) == -1) {
			log_event(LOG_LEVEL_ERROR, "listen_error",
				  LOG_S("listen", entries[i].text),
				  LOG_S("reason", err));
			bound_free(b);
			continue;
		}
		l->bound[l->bound_count++] = b;
		if (l->enabled)
			evconnlistener_enable(b->ev);
	}
}

int listener_enable(struct listener *l, char *err, size_t errlen)
{
	for (size_t i = 0; i < l->bound_count; i++)
		if (bound_listen(l->bound[i], err, errlen) == -1)
			return -1;
	l->enabled = true;
	set_accepting(l, true);
	return 0;
}

void listener_disable(struct listener *l)
{
	l->enabled = false;
	/* Closed rather than paused: a connect is refused at once, and with
	 * reuse_port the kernel gives it to a daemon that still listens. */
	for (size_t i = 0; i < l->bound_count; i++) {
		log_event(LOG_LEVEL_INFO, "unlistening",
			  LOG_S("listen", l->bound[i]->text));
		bound_free(l->bound[i]);
	}
	l->bound_count = 0;
}

void listener_release(struct listener *l, const struct sockaddr *addr)
{
	uint8_t key[16];
	listener_client_key(addr, l->ipv6_prefix, key);
	struct ip_count **at = find_ip(l, key);
	if (*at == NULL || l->active == 0)
		fatal("listener: release of an address that holds no place");
	l->active--;
	if (--(*at)->count == 0) {
		struct ip_count *gone = *at;
		*at = gone->next;
		free(gone);
	}
}

void listener_free(struct listener *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->bound_count; i++)
		bound_free(l->bound[i]);
	free(l->bound);
	for (size_t i = 0; i < IP_BUCKETS; i++) {
		while (l->buckets[i] != NULL) {
			struct ip_count *next = l->buckets[i]->next;
			free(l->buckets[i]);
			l->buckets[i] = next;
		}
	}
	accept_pause_cleanup(&l->pause);
	proxy_reader_free(l->proxy);
	free(l);
}

/* ---- the SMTP side ---- */

static bool smtp_accept(void *arg, int fd, const struct sockaddr *addr,
			socklen_t addrlen, enum listen_mode mode,
			const char *listen)
{
	(void)listen;
	return smtp_session_new(arg, fd, addr, addrlen, mode) != NULL;
}

static void smtp_refuse(void *arg, enum listener_limit limit, char *line,
			size_t size)
{
	const struct server *srv = arg;
	if (limit == LISTENER_LIMIT_TOTAL) {
		snprintf(line, size,
			 "421 %s %s Error: too many connections\r\n",
			 status_code_str(STATUS_SHUTDOWN), srv->cfg->hostname);
		metrics.connections_refused_max++;
		log_event(LOG_LEVEL_WARN, "rejected",
			  LOG_S("reason", "max_connections"));
	} else {
		snprintf(line, size,
			 "421 %s %s Error: too many connections from your "
			 "address\r\n",
			 status_code_str(STATUS_SECURITY_TRANSIENT),
			 srv->cfg->hostname);
		metrics.connections_refused_per_ip++;
		log_event(LOG_LEVEL_WARN, "rejected",
			  LOG_S("reason", "max_connections_per_ip"));
	}
}

struct listener_owner listener_smtp_owner(struct server *srv)
{
	struct listener_owner owner = {
	    .accept = smtp_accept,
	    .refuse = smtp_refuse,
	    .arg = srv,
	    .metrics = true,
	};
	return owner;
}

void listener_address_text(const struct sockaddr *sa, char *buf, size_t len)
{
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t)len);
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t)len);
	} else {
		snprintf(buf, len, "unknown");
	}
}
