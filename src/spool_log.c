/*
 * The spool log's record framing (see spool_log.h and docs/spool.md).
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/spool_log.h"

/* Slicing-by-8 tables for CRC-32C, reflected polynomial 0x82F63B78. */
static uint32_t crc_table[8][256];
static bool crc_ready;

static void crc_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[0][n] = c;
	}
	for (uint32_t n = 0; n < 256; n++)
		for (int t = 1; t < 8; t++)
			crc_table[t][n] =
			    (crc_table[t - 1][n] >> 8) ^
			    crc_table[0][crc_table[t - 1][n] & 0xff];
	crc_ready = true;
}

uint32_t spool_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	if (!crc_ready)
		crc_init();
	crc = ~crc;
	while (len >= 8) {
		uint32_t lo =
		    crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
			   (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
		crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		      crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		      crc_table[3][p[4]] ^ crc_table[2][p[5]] ^
		      crc_table[1][p[6]] ^ crc_table[0][p[7]];
		p += 8;
		len -= 8;
	}
	while (len-- > 0)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

size_t spool_log_header(char *buf, enum spool_log_kind kind, const char *id,
			size_t text_len, uint64_t body_len, uint32_t crc)
{
	int n = snprintf(buf, SPOOL_LOG_HEADER_MAX, "%c %.16s %zu %llu %08X\n",
			 (char)kind, id, text_len, (unsigned long long)body_len,
			 (unsigned)crc);
	return n > 0 && n < SPOOL_LOG_HEADER_MAX ? (size_t)n : 0;
}

/* A decimal number of at most 19 digits without leading zeros (but "0"),
 * ending at a space; advances *pos past the space. */
static bool parse_len(const char *buf, size_t len, size_t *pos, uint64_t *out)
{
	size_t i = *pos, digits = 0;
	uint64_t v = 0;

	while (i < len && buf[i] >= '0' && buf[i] <= '9') {
		if (++digits > 19 || (digits == 2 && v == 0))
			return false;
		v = v * 10 + (uint64_t)(buf[i] - '0');
		i++;
	}
	if (digits == 0 || i >= len || buf[i] != ' ')
		return false;
	*pos = i + 1;
	*out = v;
	return true;
}

int spool_log_next(const char *buf, size_t len, size_t pos,
		   struct spool_log_record *rec)
{
	size_t i = pos;
	uint64_t text_len, body_len;
	uint32_t crc = 0;

	if (pos >= len || len - pos < 2 + SPOOL_ID_LEN + 1)
		return 0;
	char kind = buf[i];
	if (kind != SPOOL_LOG_MESSAGE && kind != SPOOL_LOG_FILE_MESSAGE &&
	    kind != SPOOL_LOG_RECORDS)
		return 0;
	if (buf[i + 1] != ' ')
		return 0;
	i += 2;
	for (size_t k = 0; k < SPOOL_ID_LEN; k++)
		if (ascii_hex_upper_value(buf[i + k]) < 0)
			return 0;
	if (buf[i + SPOOL_ID_LEN] != ' ')
		return 0;
	memcpy(rec->id, buf + i, SPOOL_ID_LEN);
	rec->id[SPOOL_ID_LEN] = '\0';
	i += SPOOL_ID_LEN + 1;
	if (!parse_len(buf, len, &i, &text_len) ||
	    !parse_len(buf, len, &i, &body_len))
		return 0;
	if (kind != SPOOL_LOG_MESSAGE && body_len != 0)
		return 0;
	if (len - i < 9)
		return 0;
	for (int k = 0; k < 8; k++) {
		int h = ascii_hex_upper_value(buf[i + (size_t)k]);
		if (h < 0)
			return 0;
		crc = crc << 4 | (uint32_t)h;
	}
	if (buf[i + 8] != '\n')
		return 0;
	i += 9;
	/* text, body and the final newline must all be there */
	size_t left = len - i;
	if (text_len >= left || body_len >= left - text_len ||
	    text_len + body_len + 1 > left)
		return 0;
	size_t text_off = i, body_off = i + (size_t)text_len;
	size_t end = body_off + (size_t)body_len;
	if (buf[end] != '\n')
		return 0;
	uint32_t got = spool_crc32c(0, buf + text_off, (size_t)text_len);
	got = spool_crc32c(got, buf + body_off, (size_t)body_len);
	if (got != crc)
		return 0;
	rec->kind = (enum spool_log_kind)kind;
	rec->text_off = text_off;
	rec->text_len = (size_t)text_len;
	rec->body_off = body_off;
	rec->body_len = (size_t)body_len;
	rec->end = end + 1;
	return 1;
}
