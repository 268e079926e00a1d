/*
 * Octets as a request head through http_proto_parse_request, with checks
 * on what it returns: a head within the input and the limit, a path that
 * is a string of the right length.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/http_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct http_request req;
	size_t max_head = size > 0 ? data[0] * 32u + 1 : 8192;
	enum http_parse_result r =
	    http_proto_parse_request((const char *)data, size, max_head, &req);

	switch (r) {
	case HTTP_PARSE_OK:
		if (req.head_len == 0 || req.head_len > size ||
		    req.head_len > max_head ||
		    strlen(req.path) > HTTP_PATH_MAX || req.path[0] == '\0' ||
		    (req.method != HTTP_METHOD_GET &&
		     req.method != HTTP_METHOD_HEAD &&
		     req.method != HTTP_METHOD_OTHER))
			abort();
		break;
	case HTTP_PARSE_AGAIN:
		if (size > max_head)
			abort();
		break;
	case HTTP_PARSE_BAD:
	case HTTP_PARSE_TOO_LARGE:
		break;
	default:
		abort();
	}
	return 0;
}
