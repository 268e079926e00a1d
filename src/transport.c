/*
 * The byte transport (see transport.h): bufferevents on TCP sockets,
 * plain or TLS, the same way for every protocol. libevent does the
 * reading and writing; here are the few decisions about how.
 */
#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "facteur/transport.h"

/* A TLS bufferevent that owns fd and ssl. A peer that closes without
 * close_notify is an ordinary EOF: mail clients and servers do. NULL on
 * failure, the descriptor still open; ssl is then libevent's
 * (BEV_OPT_CLOSE_ON_FREE), which frees it on its error paths: freeing
 * it here too could free it twice. */
static struct bufferevent *tls_bufferevent(struct event_base *base, int fd,
					   SSL *ssl, bool server)
{
	struct bufferevent *bev = bufferevent_openssl_socket_new(
	    base, fd, ssl,
	    server ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (bev != NULL)
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *transport_accept(struct event_base *base, int fd,
				     bool implicit_tls, SSL_CTX *tls)
{
	if (!implicit_tls)
		return bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	SSL *ssl = tls != NULL ? SSL_new(tls) : NULL;
	if (ssl == NULL)
		return NULL;
	return tls_bufferevent(base, fd, ssl, true);
}

int transport_start_tls(struct event_base *base, struct bufferevent **bev,
			SSL *ssl, bool server)
{
	evutil_socket_t fd = bufferevent_getfd(*bev);
	if (fd < 0) {
		SSL_free(ssl);
		return -1;
	}
	struct bufferevent *tls = tls_bufferevent(base, fd, ssl, server);
	if (tls == NULL)
		return -1;
	/* The plain bufferevent lets go of the descriptor, the TLS one's
	 * now, and goes with what it buffered. */
	if (bufferevent_setfd(*bev, -1) == -1) {
		/* It would close the socket under the TLS one: keep it. */
		bufferevent_setfd(tls, -1);
		bufferevent_free(tls);
		return -1;
	}
	bufferevent_free(*bev);
	*bev = tls;
	return 0;
}

bool transport_tls_done(struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	return ssl != NULL && SSL_is_init_finished(ssl);
}

const char *transport_tls_version(struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	return ssl != NULL ? SSL_get_version(ssl) : "";
}

const char *transport_tls_cipher(struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	const char *name = ssl != NULL ? SSL_get_cipher_name(ssl) : NULL;
	return name != NULL ? name : "";
}

void transport_drop_input(struct bufferevent *bev)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	evbuffer_drain(in, evbuffer_get_length(in));
}

bool transport_backlogged(size_t queued_output)
{
	return queued_output > TRANSPORT_OUTPUT_HIGH_WATER;
}

void transport_pause_if_backlogged(struct bufferevent *bev, bool *paused)
{
	if (!transport_backlogged(
		evbuffer_get_length(bufferevent_get_output(bev))))
		return;
	bufferevent_disable(bev, EV_READ);
	*paused = true;
}

bool transport_resume(struct bufferevent *bev, bool *paused)
{
	if (!*paused)
		return false;
	*paused = false;
	bufferevent_enable(bev, EV_READ);
	return true;
}

bool transport_flush(struct bufferevent *bev, bool tls)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	if (!tls && evbuffer_get_length(out) > 0 &&
	    !(bufferevent_get_enabled(bev) & EV_WRITE)) {
		evutil_socket_t fd = bufferevent_getfd(bev);
		/* The bufferevent keeps the output's start frozen but for
		 * its own writes: this is one of them. */
		int n = -1;
		if (fd >= 0 && evbuffer_unfreeze(out, 1) == 0) {
			n = evbuffer_write(out, fd);
			evbuffer_freeze(out, 1);
		}
		if (n == -1 || evbuffer_get_length(out) > 0)
			bufferevent_enable(bev, EV_WRITE);
	}
	return evbuffer_get_length(out) == 0;
}

void transport_close(struct bufferevent *bev)
{
	bufferevent_disable(bev, EV_READ);
	/* Every last octet, however low the mark a stream had set. */
	bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
	transport_drop_input(bev);
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		bufferevent_trigger(bev, EV_WRITE,
				    BEV_TRIG_DEFER_CALLBACKS |
					BEV_TRIG_IGNORE_WATERMARKS);
}
