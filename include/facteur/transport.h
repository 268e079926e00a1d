/*
 * The byte transport shared by the SMTP server, the SMTP client and
 * POP3: a libevent bufferevent on a TCP socket, plain or TLS. Here is
 * the one way a connection goes under TLS (at accept for smtps and
 * pop3s, or on the same socket after STARTTLS and STLS, server or
 * client side), the one flush-then-close and the one backpressure rule;
 * command lines come out of the input with lineio. The protocols keep
 * their state machines and callbacks: this module moves bytes and never
 * decides what they mean.
 */
#ifndef FACTEUR_TRANSPORT_H
#define FACTEUR_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

struct bufferevent;
struct event_base;

/* Replies queued past this stop the reading of commands: a client that
 * pipelines without reading its answers is paused, not buffered for. */
#define TRANSPORT_OUTPUT_HIGH_WATER (256 * 1024)

/* A bufferevent on an accepted socket. With implicit_tls (smtps,
 * pop3s), the server side of the handshake is under way and what is
 * queued waits for it (RFC 8314); NULL then when tls is NULL. NULL on
 * failure, the descriptor still open. */
struct bufferevent *transport_accept(struct event_base *base, int fd,
				     bool implicit_tls, SSL_CTX *tls);

/* STARTTLS, STLS, and the client's STARTTLS: the connection goes on
 * under TLS on the same socket. Call it once the reply that grants TLS
 * is out (server) or in (client). ssl is the connection's own SSL
 * object, taken in every case. *bev is replaced by a TLS bufferevent,
 * handshake under way, callbacks and timeouts unset; whatever the plain
 * one held is dropped, since it came in the clear (RFC 3207 §5, RFC
 * 2595 §4). A socket-based TLS bufferevent, not a filter over the plain
 * one, writes to the socket itself: once its output is empty, the last
 * record is in the kernel and a close loses nothing. -1 when out of
 * memory: *bev is unchanged. */
int transport_start_tls(struct event_base *base, struct bufferevent **bev,
			SSL *ssl, bool server);

/* Is the connection encrypted? The handshake's "connected" event may
 * come after the first bytes read under TLS, so OpenSSL is asked. */
bool transport_tls_done(struct bufferevent *bev);

/* For the log line once a handshake is done: the protocol version and
 * the cipher, "" when the connection is not TLS. */
const char *transport_tls_version(struct bufferevent *bev);
const char *transport_tls_cipher(struct bufferevent *bev);

/* Drop what is buffered in: after STARTTLS (it came in the clear) and
 * when closing (nothing more is read). */
void transport_drop_input(struct bufferevent *bev);

/* The backpressure rule, pure: is this much queued output a reason to
 * stop reading? */
bool transport_backlogged(size_t queued_output);

/* Apply the rule after processing input: stop reading when the output
 * is backlogged. *paused belongs to the caller. */
void transport_pause_if_backlogged(struct bufferevent *bev, bool *paused);

/* The output drained (the write callback): read again if the rule had
 * stopped reading. True when it had; the caller then processes what is
 * buffered. */
bool transport_resume(struct bufferevent *bev, bool *paused);

/* Write what is queued straight to a plain socket, without waiting for
 * libevent's write event (two epoll_ctl and a loop turn per reply).
 * What the socket does not take, or an error, is left to that event:
 * libevent writes the rest and calls the write callback, or meets the
 * error again and calls the event callback. A TLS bufferevent writes by
 * itself. True when the output is empty. */
bool transport_flush(struct bufferevent *bev, bool tls);

/* The first half of flush-then-close: read no more, drop the input;
 * the last replies drain under the write timeout. The write callback
 * comes once the output is empty, also when it is empty already (then
 * on the next loop turn, never inside this call): the owner frees the
 * session there. */
void transport_close(struct bufferevent *bev);

#endif
