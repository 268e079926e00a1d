/*
 * smtp_reply_feed on arbitrary server output: the input is split into
 * lines at LF (a CR before it dropped, as the client does), fed in
 * order, a new reply started after each complete or invalid one. The
 * first octet picks the EHLO mode. The invariants of the struct are
 * checked after every line.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/smtp_reply.h"

static void check(const struct smtp_reply *r)
{
	if (r->text_len >= SMTP_REPLY_TEXT_MAX ||
	    strlen(r->text) != r->text_len ||
	    memchr(r->esc, '\0', sizeof r->esc) == NULL ||
	    r->lines > SMTP_REPLY_LINES_MAX ||
	    (r->lines > 0 && (r->code < 200 || r->code > 559)))
		abort();
	for (size_t i = 0; i < r->text_len; i++)
		if ((unsigned char)r->text[i] < 0x20)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_reply r;
	bool ehlo;

	if (size == 0)
		return 0;
	ehlo = data[0] & 1;
	data++;
	size--;
	smtp_reply_init(&r);
	while (size > 0) {
		const uint8_t *nl = memchr(data, '\n', size);
		size_t len = nl ? (size_t)(nl - data) : size;
		size_t line_len = len;
		if (line_len > 0 && data[line_len - 1] == '\r')
			line_len--;
		enum smtp_reply_status st =
		    smtp_reply_feed(&r, (const char *)data, line_len, ehlo);
		check(&r);
		if (st != SMTP_REPLY_MORE) {
			if (st == SMTP_REPLY_DONE && !r.complete)
				abort();
			smtp_reply_init(&r);
		}
		if (nl == NULL)
			break;
		data += len + 1;
		size -= len + 1;
	}
	return 0;
}
