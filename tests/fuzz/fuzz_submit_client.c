/*
 * The submission client's reply reading (line cutting over a socket,
 * then smtp_reply) on arbitrary bytes from the daemon's side of a
 * socketpair: every call ends in a reply code or an error with its
 * message, never past the line bound, until the peer's close.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "facteur/submit_client.h"

/* Below the socket buffer: the whole input is written before reading. */
#define INPUT_MAX (32 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	struct submit_client c;

	if (size == 0 || size > INPUT_MAX)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == -1)
		abort();
	if (write(sv[1], data + 1, size - 1) != (ssize_t)(size - 1))
		abort();
	close(sv[1]);
	memset(&c, 0, sizeof c);
	c.fd = sv[0];
	bool ehlo = data[0] & 1;
	for (;;) {
		int code = submit_client_command(&c, NULL, ehlo);
		if (code == -1) {
			if (c.err[0] == '\0')
				abort();
			break;
		}
		if (code < 200 || code > 559 || !c.reply.complete ||
		    c.in_len > sizeof c.in)
			abort();
	}
	submit_client_close(&c);
	return 0;
}
