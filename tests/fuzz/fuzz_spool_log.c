/*
 * The log's record framing on arbitrary bytes, as a crash may leave a
 * segment: the input is read as a segment's records, once after the
 * magic line and once as it is. Every record found must lie inside the
 * buffer, start where the previous one ended, frame exactly as
 * spool_log_header writes it and carry a matching checksum; cut by one
 * octet, it must no longer be found.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/spool_log.h"

static bool id_ok(const char *id)
{
	for (size_t i = 0; i < SPOOL_ID_LEN; i++)
		if (!((id[i] >= '0' && id[i] <= '9') ||
		      (id[i] >= 'A' && id[i] <= 'F')))
			return false;
	return id[SPOOL_ID_LEN] == '\0';
}

static void check_record(const char *buf, size_t len, size_t pos,
			 const struct spool_log_record *r)
{
	char header[SPOOL_LOG_HEADER_MAX];

	if (r->kind != SPOOL_LOG_MESSAGE && r->kind != SPOOL_LOG_FILE_MESSAGE &&
	    r->kind != SPOOL_LOG_RECORDS)
		abort();
	if (r->kind != SPOOL_LOG_MESSAGE && r->body_len != 0)
		abort();
	if (!id_ok(r->id))
		abort();
	/* inside the buffer, in order: header, text, body, newline */
	if (r->text_off <= pos || r->text_off > len ||
	    r->text_len > len - r->text_off ||
	    r->body_off != r->text_off + r->text_len ||
	    r->body_len > len - r->body_off ||
	    r->end != r->body_off + r->body_len + 1 || r->end > len ||
	    r->end <= pos || buf[r->end - 1] != '\n')
		abort();
	uint32_t crc = spool_crc32c(0, buf + r->text_off, r->text_len);
	crc = spool_crc32c(crc, buf + r->body_off, r->body_len);
	size_t hlen = spool_log_header(header, r->kind, r->id, r->text_len,
				       r->body_len, crc);
	if (hlen == 0 || hlen != r->text_off - pos ||
	    memcmp(header, buf + pos, hlen) != 0)
		abort();
}

/* Walk the records from pos; the end of the valid part. */
static size_t walk(const char *buf, size_t len, size_t pos)
{
	struct spool_log_record r;

	while (spool_log_next(buf, len, pos, &r) == 1) {
		check_record(buf, len, pos, &r);
		/* a torn copy of it is no record */
		struct spool_log_record torn;
		if (spool_log_next(buf, r.end - 1, pos, &torn) != 0)
			abort();
		pos = r.end;
	}
	if (pos > len)
		abort();
	return pos;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* As it is: exact-size, so AddressSanitizer sees any overread. */
	char *buf = malloc(size > 0 ? size : 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	walk(buf, size, 0);
	free(buf);

	/* After the magic line, as recovery reads a segment. */
	size_t len = SPOOL_LOG_MAGIC_LEN + size;
	buf = malloc(len);
	if (buf == NULL)
		return 0;
	memcpy(buf, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	memcpy(buf + SPOOL_LOG_MAGIC_LEN, data, size);
	walk(buf, len, SPOOL_LOG_MAGIC_LEN);
	free(buf);
	return 0;
}
