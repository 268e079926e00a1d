/*
 * The little HTTP/1.x that the metrics listener speaks, as pure data: the
 * head of a request (request line and header fields, RFC 9112) parsed
 * into what the server needs to answer it. No I/O, no allocation, so
 * that unit tests and a fuzzer drive it without sockets.
 */
#ifndef FACTEUR_HTTP_PROTO_H
#define FACTEUR_HTTP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_PATH_MAX 256 /* longer paths are nothing we serve */

enum http_parse_result {
	HTTP_PARSE_OK,
	HTTP_PARSE_AGAIN,     /* the head is not complete yet */
	HTTP_PARSE_BAD,       /* not an HTTP/1.0 or 1.1 request: 400 */
	HTTP_PARSE_TOO_LARGE, /* the head is longer than allowed: 431 */
};

enum http_method {
	HTTP_METHOD_GET,
	HTTP_METHOD_HEAD,
	HTTP_METHOD_OTHER, /* any other token: POST, PUT, OPTIONS... */
};

struct http_request {
	enum http_method method;
	/* The path of the target without its query, not decoded; cut
	 * paths are marked too_long and served as no path of ours. */
	char path[HTTP_PATH_MAX + 1];
	bool path_too_long;
	bool keep_alive; /* 1.1 unless "close"; 1.0 only with "keep-alive" */
	bool chunked;    /* a Transfer-Encoding field was sent */
	uint64_t content_length;
	size_t head_len; /* octets of the head, its empty line included */
};

/*
 * Parse the head at the start of buf[0..len). Lines may end in CRLF or
 * a bare LF; empty lines before the request line are skipped. A head
 * longer than `max_head` octets is HTTP_PARSE_TOO_LARGE, complete or
 * not. On HTTP_PARSE_OK, *req is filled; the body, if any, follows at
 * buf + req->head_len.
 */
enum http_parse_result http_proto_parse_request(const char *buf, size_t len,
                                                size_t max_head,
                                                struct http_request *req);

#endif
