/*
 * OpenSSL contexts (see tls.h). Both sides refuse anything older than
 * TLS 1.2, compression and renegotiation. The client context verifies
 * nothing by itself: tls_client_prepare turns verification on for the
 * connections whose policy asks for it, so one context serves every
 * route.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "facteur/tls.h"

/* TLS 1.2 suites: forward secrecy and AEAD first, then the other strong
 * ones, since mail servers are old and a failed handshake means no mail.
 * TLS 1.3 suites are OpenSSL's defaults. */
#define TLS_CIPHERS                                                            \
	"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:HIGH:"            \
	"!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES"

#define TLS_OPTIONS (SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION)

const char *tls_error_string(char *buf, size_t len)
{
	unsigned long e = ERR_peek_last_error();

	if (len == 0)
		return buf;
	if (e == 0)
		snprintf(buf, len, "unknown TLS error");
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

static void set_error(char *err, size_t errlen, const char *file,
		      const char *what)
{
	char reason[256];

	tls_error_string(reason, sizeof reason);
	if (file)
		snprintf(err, errlen, "%s: %s: %s", file, what, reason);
	else
		snprintf(err, errlen, "%s: %s", what, reason);
}

static int common_setup(SSL_CTX *ctx)
{
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		return -1;
	SSL_CTX_set_options(ctx, TLS_OPTIONS);
	if (SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS) != 1)
		return -1;
	/* fewer idle buffers per session: many sessions, little traffic */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return 0;
}

SSL_CTX *tls_server_context(const char *cert_file, const char *key_file,
			    char *err, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		set_error(err, errlen, NULL, "cannot create a TLS context");
		return NULL;
	}
	if (common_setup(ctx) < 0) {
		set_error(err, errlen, NULL, "cannot set TLS options");
		goto fail;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		set_error(err, errlen, cert_file, "cannot load certificate");
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		/* OpenSSL compares the key with the certificate as it loads */
		unsigned long e = ERR_peek_last_error();
		bool mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 &&
				ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
		set_error(err, errlen, key_file,
			  mismatch
			      ? "private key does not match the certificate"
			      : "cannot load private key");
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		set_error(err, errlen, key_file,
			  "private key does not match the certificate");
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tls_client_context(const char *ca_file, char *err, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		set_error(err, errlen, NULL, "cannot create a TLS context");
		return NULL;
	}
	if (common_setup(ctx) < 0) {
		set_error(err, errlen, NULL, "cannot set TLS options");
		goto fail;
	}
	if (ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			set_error(err, errlen, ca_file,
				  "cannot load trust anchors");
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		set_error(err, errlen, NULL,
			  "cannot load the system trust store");
		goto fail;
	}
	/* DANE (RFC 7672) is turned on per connection, by tls_client_dane */
	if (SSL_CTX_dane_enable(ctx) <= 0) {
		set_error(err, errlen, NULL, "cannot enable DANE");
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static bool is_ip_literal(const char *host)
{
	struct in6_addr a6;
	struct in_addr a4;

	return inet_pton(AF_INET, host, &a4) == 1 ||
	       inet_pton(AF_INET6, host, &a6) == 1;
}

int tls_client_prepare(SSL *ssl, const char *host, bool verify)
{
	char name[256];
	size_t len;

	if (host == NULL || *host == '\0')
		return verify ? -1 : 0;
	/* "mx.example.com." and "mx.example.com" are the same name to DNS,
	 * not to certificate matching */
	len = strlen(host);
	if (len > 0 && host[len - 1] == '.')
		len--;
	if (len == 0 || len >= sizeof name)
		return -1;
	memcpy(name, host, len);
	name[len] = '\0';

	bool ip = is_ip_literal(name);
	/* RFC 6066 §3: SNI carries host names only, never addresses */
	if (!ip && SSL_set_tlsext_host_name(ssl, name) != 1)
		return -1;

	/* The name is checked even when the handshake must not fail on it:
	 * SSL_get_verify_result then tells whether the certificate would
	 * have passed (the verified= of the delivery lines). */
	X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
	X509_VERIFY_PARAM_set_hostflags(param,
					X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	int named = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
		       : X509_VERIFY_PARAM_set1_host(param, name, 0);
	if (!verify)
		return 0;
	if (named != 1)
		return -1;
	SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
	return 0;
}

int tls_client_dane(SSL *ssl, const char *host, const struct dns_tlsa *tlsa,
		    size_t count)
{
	size_t added = 0;

	if (SSL_dane_enable(ssl, host) <= 0)
		return -1;
	SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	for (size_t i = 0; i < count; i++) {
		const struct dns_tlsa *t = &tlsa[i];

		/* 0: a digest this OpenSSL lacks, a record to skip */
		if (SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->matching,
				      t->data, t->data_len) > 0)
			added++;
	}
	if (added == 0)
		return -1;
	SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
	return 0;
}
