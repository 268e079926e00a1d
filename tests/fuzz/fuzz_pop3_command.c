/*
 * A command line through pop3_parse_command, with checks on what it
 * returns; the same octets as a message through the RETR/TOP converter,
 * checked against pop3_measure and split at a point taken from the input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/pop3_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_command(const char *line, size_t size)
{
	struct pop3_command cmd;
	enum pop3_parse_result r = pop3_parse_command(line, size, &cmd);
	if (r != POP3_PARSE_OK && r != POP3_PARSE_UNKNOWN &&
	    r != POP3_PARSE_SYNTAX)
		abort();
	if (r == POP3_PARSE_UNKNOWN && cmd.verb != POP3_VERB_UNKNOWN)
		abort();
	if (r != POP3_PARSE_UNKNOWN && cmd.verb == POP3_VERB_UNKNOWN)
		abort();
	if (pop3_verb_name(cmd.verb) == NULL)
		abort();
	if (r != POP3_PARSE_OK)
		return;
	if (cmd.ntext > 2)
		abort();
	for (unsigned i = 0; i < cmd.ntext; i++) {
		if (cmd.text[i] < line ||
		    cmd.text[i] + cmd.textlen[i] > line + size ||
		    cmd.textlen[i] == 0)
			abort();
		if (memchr(cmd.text[i], '\0', cmd.textlen[i]) != NULL ||
		    memchr(cmd.text[i], '\n', cmd.textlen[i]) != NULL)
			abort();
	}
	switch (cmd.verb) {
	case POP3_VERB_RETR:
	case POP3_VERB_DELE:
	case POP3_VERB_TOP:
		if (!cmd.has_number)
			abort();
		break;
	case POP3_VERB_USER:
	case POP3_VERB_PASS:
		if (cmd.ntext != 1)
			abort();
		break;
	default:
		break;
	}
}

static void check_stream(const char *in, size_t size, size_t split,
			 bool limited, uint64_t lines)
{
	char *whole =
	    malloc(POP3_STREAM_OUT_MAX(size) + POP3_STREAM_FINISH_MAX);
	char *parts =
	    malloc(POP3_STREAM_OUT_MAX(size) + POP3_STREAM_FINISH_MAX);
	if (whole == NULL || parts == NULL)
		abort();
	struct pop3_stream a, b;
	size_t used, na = 0, nb = 0;

	pop3_stream_init(&a, limited, lines);
	na = pop3_stream_convert(&a, in, size, whole, &used);
	if (used > size || (used < size && !pop3_stream_done(&a)))
		abort();
	if (na > POP3_STREAM_OUT_MAX(used))
		abort();
	na += pop3_stream_finish(&a, whole + na);

	pop3_stream_init(&b, limited, lines);
	size_t first = split < size ? split : size;
	size_t u1 = 0, u2 = 0;
	nb = pop3_stream_convert(&b, in, first, parts, &u1);
	if (u1 == first && !pop3_stream_done(&b))
		nb += pop3_stream_convert(&b, in + first, size - first,
					  parts + nb, &u2);
	nb += pop3_stream_finish(&b, parts + nb);
	if (na != nb || memcmp(whole, parts, na) != 0 || u1 + u2 != used)
		abort();

	/* The wire form ends with ".\r\n", and its size without stuffing
	 * is what LIST says (for RETR). */
	if (na < 3 || memcmp(whole + na - 3, ".\r\n", 3) != 0)
		abort();
	if (!limited) {
		uint64_t octets = 0;
		int bol = 1;
		for (size_t i = 0; i < na - 3; i++) {
			if (bol && whole[i] == '.')
				i++;
			octets++;
			bol = whole[i] == '\n';
		}
		struct pop3_measure m = {0};
		pop3_measure_feed(&m, in, first);
		pop3_measure_feed(&m, in + first, size - first);
		if (pop3_measure_finish(&m) != octets)
			abort();
	}
	free(whole);
	free(parts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	char uid[POP3_UID_MAX + 1];

	check_command(in, size);

	size_t split = size > 0 ? data[0] % (size + 1) : 0;
	check_stream(in, size, split, false, 0);
	check_stream(in, size, split, true, size > 1 ? data[1] % 8 : 0);

	size_t n = pop3_uid_from_name(in, size, uid);
	if (n == 0 || n > POP3_UID_MAX || strlen(uid) != n)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)uid[i] < 0x21 ||
		    (unsigned char)uid[i] > 0x7e)
			abort();

	/* A size is only ever taken from a ",W=" field of the name. */
	uint64_t announced;
	if (pop3_size_from_name(in, size, &announced) &&
	    memmem(in, size, ",W=", 3) == NULL)
		abort();
	return 0;
}
