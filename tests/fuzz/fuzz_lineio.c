/*
 * libFuzzer target for lineio: feeds split at 0xff octets, a random
 * limit and end-of-line mode; ASan and the checks inside catch any
 * overrun or a line longer than the limit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include "facteur/lineio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* First byte: mode and limit; then feeds separated by 0xff. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum lineio_end end = data[0] & 1 ? LINEIO_END_CRLF_OR_LF : LINEIO_END_CRLF;
	size_t limit = 2 + (data[0] >> 1) % 40;
	struct evbuffer *in = evbuffer_new();
	char *out = malloc(limit);
	bool discarding = false;
	size_t i = 1;
	while (i < size) {
		size_t j = i;
		while (j < size && data[j] != 0xff)
			j++;
		evbuffer_add(in, data + i, j - i);
		i = j + 1;
		for (int guard = 0;; guard++) {
			if (guard > 100000)
				abort();
			size_t len = 0;
			enum lineio_result r = lineio_read(in, end, limit, &discarding, out, &len);
			if (r == LINEIO_NONE)
				break;
			if (r == LINEIO_LINE) {
				if (len + 1 > limit || out[len] != '\0')
					abort();
				for (size_t k = 0; k < len; k++) {
					if (end == LINEIO_END_CRLF && k + 1 < len && out[k] == '\r' && out[k + 1] == '\n')
						abort();
					if (end == LINEIO_END_CRLF_OR_LF && out[k] == '\n')
						abort();
				}
			}
		}
		/* bounded: what stays is shorter than the limit */
		if (evbuffer_get_length(in) >= limit)
			abort();
		lineio_starts_with(in, "AUTH ");
	}
	free(out);
	evbuffer_free(in);
	return 0;
}
