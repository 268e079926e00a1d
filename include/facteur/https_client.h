/*
 * One HTTPS request from the loop: the host's address asked of c-ares
 * (libevent never resolves a name itself, which would block), then
 * libevent's HTTP client over an OpenSSL bufferevent to it, with SNI and
 * the certificate verified for the host against the trust anchors of the
 * daemon's TLS client context. No redirect is followed. The callback runs
 * once, on a loop turn after libevent's last callback (never inside
 * https_start nor inside libevent's HTTP code); the exchange is freed
 * after it. Used for MTA-STS policies (GET) and TLS reports (POST).
 */
#ifndef FACTEUR_HTTPS_CLIENT_H
#define FACTEUR_HTTPS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct server;
struct https_exchange;

struct https_request {
	const char *host; /* for the address, SNI, verification and Host: */
	uint16_t port;
	const char *path; /* from its "/", with its query if any */
	/* a POST of `body` with this Content-Type; NULL: a GET */
	const char *content_type;
	const void *body;
	size_t body_len;
	size_t max_answer; /* octets of the answer's body kept at most */
	int deadline;	   /* seconds for the whole exchange */
};

enum https_failure {
	HTTPS_ANSWERED,	   /* an HTTP answer came: see code */
	HTTPS_NO_ADDRESS,  /* the host has no address, or DNS failed */
	HTTPS_TIMEOUT,	   /* no answer within the deadline */
	HTTPS_TOO_LARGE,   /* the answer's body was over max_answer */
	HTTPS_CERTIFICATE, /* the certificate did not verify */
	HTTPS_NO_ANSWER,   /* the connection or TLS failed otherwise */
};

struct https_response {
	enum https_failure failure;
	int code;		  /* the HTTP status; 0 unless answered */
	const char *content_type; /* the answer's; NULL when none */
	const char *body;	  /* the answer's body, NUL-terminated */
	size_t len;
	long verify_result; /* OpenSSL's for the certificate */
	const char *reason; /* a text for any failure but HTTPS_ANSWERED */
};

typedef void (*https_cb)(const struct https_response *res, void *arg);

/* Start the request; NULL, with why, when it cannot start (no resolver,
 * no TLS client context). */
struct https_exchange *https_start(struct server *srv,
				   const struct https_request *req, https_cb cb,
				   void *arg, char *why, size_t whylen);
/* Give up a request: its callback will not run. NULL is ignored. */
void https_cancel(struct https_exchange *x);

#endif
