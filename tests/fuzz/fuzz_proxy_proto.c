/*
 * Octets as the start of a connection through proxy_proto_parse, with
 * checks on what it returns: a header within the input and the bound,
 * addresses of the families promised, and "need more" only for inputs
 * shorter than the bound.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "facteur/proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_header h;
	enum proxy_proto_result r = proxy_proto_parse(data, size, &h);

	switch (r) {
	case PROXY_PROTO_OK:
		if (h.length == 0 || h.length > size ||
		    h.length > PROXY_PROTO_MAX ||
		    (h.version == 1 && h.length > PROXY_PROTO_V1_MAX) ||
		    (h.version != 1 && h.version != 2))
			abort();
		if (h.command == PROXY_COMMAND_PROXY &&
		    ((h.source.ss_family != AF_INET &&
		      h.source.ss_family != AF_INET6) ||
		     h.source.ss_family != h.destination.ss_family ||
		     h.source_len == 0))
			abort();
		/* The same header alone parses the same. */
		struct proxy_header again;
		if (proxy_proto_parse(data, h.length, &again) !=
			PROXY_PROTO_OK ||
		    again.length != h.length)
			abort();
		break;
	case PROXY_PROTO_NEED_MORE:
		if (size >= PROXY_PROTO_MAX)
			abort();
		break;
	case PROXY_PROTO_INVALID:
		if (h.error == NULL)
			abort();
		break;
	default:
		abort();
	}
	return 0;
}
