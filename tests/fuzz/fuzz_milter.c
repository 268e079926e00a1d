/*
 * Octets from a milter through milter_parse_reply, packet after packet
 * as the client reads them, with checks on what it returns: a packet
 * within the input and the bound, strings that end inside it, reply
 * codes of 4xx or 5xx, and "need more" only when the packet is cut;
 * the ESMTP parameters of an added recipient through
 * milter_rcpt_param_next, each within its string.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/milter_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_string(const char *s, const uint8_t *start, size_t used)
{
	if (s == NULL)
		return;
	const uint8_t *p = (const uint8_t *)s;
	if (p < start || p >= start + used)
		abort();
	if (memchr(p, '\0', (size_t)(start + used - p)) == NULL)
		abort();
}

static void check_rcpt_params(const char *args)
{
	struct milter_rcpt_params params = {0};
	const char *param;
	size_t at = 0, len, end = strlen(args);
	enum milter_rcpt_param_result result;
	while (
	    milter_rcpt_param_next(args, &at, &param, &len, &params, &result)) {
		if (len == 0 || param < args || param + len > args + end ||
		    at > end || memchr(param, ' ', len) != NULL)
			abort();
	}
	if (memchr(params.orcpt, '\0', sizeof params.orcpt) == NULL)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	while (size > 0) {
		struct milter_reply r;
		size_t used = 0;
		enum milter_parse_result res =
		    milter_parse_reply(data, size, &used, &r);
		if (res == MILTER_PARSE_BAD)
			return 0;
		if (res == MILTER_PARSE_AGAIN) {
			if (size >= 4 + (size_t)MILTER_REPLY_MAX)
				abort();
			return 0;
		}
		if (used < 5 || used > size || used > 4 + MILTER_REPLY_MAX)
			abort();
		check_string(r.name, data, used);
		check_string(r.value, data, used);
		for (int i = 0; i < MILTER_STAGES; i++)
			check_string(r.macros[i], data, used);
		if (r.kind == MILTER_REPLY_REPLYCODE &&
		    (r.code < 400 || r.code > 599))
			abort();
		if (r.data != NULL && r.data + r.data_len > data + used)
			abort();
		if (r.kind == MILTER_REPLY_ADDRCPT_PAR && r.value != NULL)
			check_rcpt_params(r.value);
		(void)milter_reply_name(r.kind);
		data += used;
		size -= used;
	}
	return 0;
}
