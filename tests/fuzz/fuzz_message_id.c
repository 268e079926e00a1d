/*
 * The Message-ID scanner on arbitrary octets: fed whole and fed in
 * pieces of every size the first octet picks, it must find the same
 * value, never longer than MESSAGE_ID_MAX.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/message_id.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct message_id_scan whole, pieces;
	if (size == 0)
		return 0;
	size_t step = (size_t)data[0] % 16 + 1;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;

	memset(&whole, 0, sizeof whole);
	memset(&pieces, 0, sizeof pieces);
	message_id_feed(&whole, text, len);
	for (size_t at = 0; at < len; at += step)
		message_id_feed(&pieces, text + at,
				len - at < step ? len - at : step);
	const char *a = message_id_value(&whole);
	const char *b = message_id_value(&pieces);
	if ((a == NULL) != (b == NULL))
		abort();
	if (a != NULL && (whole.value_len != pieces.value_len ||
			  memcmp(a, b, whole.value_len) != 0 ||
			  whole.value_len > MESSAGE_ID_MAX))
		abort();
	return 0;
}
