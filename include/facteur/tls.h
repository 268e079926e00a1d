/*
 * OpenSSL contexts for facteur: the server side (STARTTLS, smtps, pop3s)
 * from tls_cert/tls_key, and the client side for relaying, with the
 * verification modes of tls_outbound / a route's tls=. TLS 1.2 and later
 * only. The contexts are built from the configuration and rebuilt on
 * reload; sessions hold their own SSL objects, and put them on their
 * connections with transport_start_tls or transport_accept.
 */
#ifndef FACTEUR_TLS_H
#define FACTEUR_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "facteur/dns.h"

/* A server context from PEM files; NULL with err filled (naming the
 * file and OpenSSL's reason) when they cannot be loaded or do not
 * match. */
SSL_CTX *tls_server_context(const char *cert_file, const char *key_file,
			    char *err, size_t errlen);

/* A client context; trust anchors from ca_file, or the system store when
 * NULL. Verification itself is per connection (tls_client_prepare). */
SSL_CTX *tls_client_context(const char *ca_file, char *err, size_t errlen);

/* Set up a client SSL for `host`: SNI when host is a name, the name
 * checked against the certificate (X509_VERIFY_PARAM_set1_host), and,
 * when `verify`, a handshake that fails unless the certificate is valid
 * for it; without `verify`, SSL_get_verify_result tells afterwards
 * whether it was. 0 or -1. */
int tls_client_prepare(SSL *ssl, const char *host, bool verify);

/*
 * Put a client SSL under DANE for `host` (the MX host name, SNI set by
 * the caller): the records as OpenSSL's DANE trust anchors and matches,
 * no name check for a DANE-EE match (RFC 7672 §3.1.1), the MX host name
 * for a DANE-TA one (§3.2.2), and a failed match fails the handshake.
 * 0, or -1 when no record could be added.
 */
int tls_client_dane(SSL *ssl, const char *host, const struct dns_tlsa *tlsa,
		     size_t count);

/* The last OpenSSL error as text, for logs. */
const char *tls_error_string(char *buf, size_t len);

#endif
