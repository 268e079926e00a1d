/*
 * route_lmtp_parse (local_transport) on arbitrary text. A refusal says
 * why and leaves no target; a value taken prints (its canonical text) as
 * one taken again with the same server, and holds a socket address unless
 * it names a host to resolve.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	struct route_lmtp t, again;
	char err[160];

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	err[0] = '\0';
	if (route_lmtp_parse(text, &t, err, sizeof err) < 0) {
		if (err[0] == '\0' || t.kind != LMTP_NONE)
			abort();
		free(text);
		return 0;
	}
	if (t.kind != LMTP_NONE) {
		if (route_lmtp_parse(t.text, &again, err, sizeof err) < 0 ||
		    again.kind != t.kind || again.port != t.port ||
		    strcmp(again.text, t.text) != 0 ||
		    strcmp(again.host, t.host) != 0 ||
		    again.addrlen != t.addrlen ||
		    memcmp(&again.addr, &t.addr, sizeof t.addr) != 0)
			abort();
		if ((t.kind == LMTP_UNIX || t.host_is_ip) && t.addrlen == 0)
			abort();
	}
	free(text);
	return 0;
}
