/*
 * Bounded line reading (see lineio.h). libevent's evbuffer is used as a
 * data structure only: nothing here reads or writes a socket.
 */
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "facteur/lineio.h"

#define PREFIX_CHUNK 16

enum lineio_result lineio_read(struct evbuffer *in, enum lineio_end end,
			       size_t limit, bool *discarding, char *out,
			       size_t *len)
{
	size_t eol_len = 0;
	struct evbuffer_ptr eol = evbuffer_search_eol(
	    in, NULL, &eol_len,
	    end == LINEIO_END_CRLF ? EVBUFFER_EOL_CRLF_STRICT
				   : EVBUFFER_EOL_CRLF);

	if (eol.pos == -1) {
		size_t have = evbuffer_get_length(in);
		if (have == 0 || have < limit)
			return LINEIO_NONE;
		/* Keep a last CR: it may start the CR LF that ends the line. */
		unsigned char last = 0;
		struct evbuffer_ptr at;
		if (evbuffer_ptr_set(in, &at, have - 1, EVBUFFER_PTR_SET) ==
			-1 ||
		    evbuffer_copyout_from(in, &at, &last, 1) != 1)
			last = 0;
		evbuffer_drain(in, last == '\r' ? have - 1 : have);
		if (*discarding)
			return LINEIO_NONE;
		*discarding = true;
		return LINEIO_TOO_LONG;
	}
	size_t line_len = (size_t)eol.pos;
	if (*discarding) {
		evbuffer_drain(in, line_len + eol_len);
		*discarding = false;
		return LINEIO_SKIPPED;
	}
	if (line_len + eol_len > limit) {
		evbuffer_drain(in, line_len + eol_len);
		return LINEIO_TOO_LONG;
	}
	/* line_len + eol_len <= limit, eol_len >= 1: the NUL fits too. */
	if (evbuffer_remove(in, out, line_len) != (int)line_len)
		return LINEIO_NONE;
	evbuffer_drain(in, eol_len);
	out[line_len] = '\0';
	*len = line_len;
	return LINEIO_LINE;
}

bool lineio_starts_with(struct evbuffer *in, const char *prefix)
{
	size_t want = strlen(prefix);
	if (evbuffer_get_length(in) < want)
		return false;
	struct evbuffer_ptr at;
	if (evbuffer_ptr_set(in, &at, 0, EVBUFFER_PTR_SET) == -1)
		return false;
	char chunk[PREFIX_CHUNK];
	size_t done = 0;
	while (done < want) {
		size_t n =
		    want - done < sizeof chunk ? want - done : sizeof chunk;
		if (evbuffer_copyout_from(in, &at, chunk, n) != (ev_ssize_t)n ||
		    strncasecmp(chunk, prefix + done, n) != 0)
			return false;
		done += n;
		if (done < want &&
		    evbuffer_ptr_set(in, &at, n, EVBUFFER_PTR_ADD) == -1)
			return false;
	}
	return true;
}
