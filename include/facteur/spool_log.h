/*
 * The spool log's record framing: pure functions, no I/O.
 *
 * A log segment is the magic line followed by records, each
 *
 *     <kind> <id> <text length> <body length> <crc32c>\n<text><body>\n
 *
 * kind M: a message, its envelope text (with state records) and its
 * wire form inline; kind F: a message whose wire form is the file
 * queue/<id>.msg (text only, body length 0); kind R: state records
 * for a message logged earlier (text only). The checksum covers text
 * and body. A record is valid only whole, checksum and final newline
 * included: a crash can leave a torn or zero-filled tail, which ends the
 * segment's valid part. docs/spool.md describes the format.
 */
#ifndef FACTEUR_SPOOL_LOG_H
#define FACTEUR_SPOOL_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "facteur/spool.h"

#define SPOOL_LOG_MAGIC "facteur-log 1\n"
#define SPOOL_LOG_MAGIC_LEN (sizeof SPOOL_LOG_MAGIC - 1)
/* The longest header line: kind, id, two 20-digit lengths, crc, spaces
 * and newline. */
#define SPOOL_LOG_HEADER_MAX 70

enum spool_log_kind {
	SPOOL_LOG_MESSAGE = 'M',
	SPOOL_LOG_FILE_MESSAGE = 'F',
	SPOOL_LOG_RECORDS = 'R',
};

struct spool_log_record {
	enum spool_log_kind kind;
	char id[SPOOL_ID_LEN + 1];
	size_t text_off; /* offsets into the buffer given to spool_log_next */
	size_t text_len;
	size_t body_off;
	size_t body_len;
	size_t end; /* the offset just past the record */
};

/* CRC-32C (Castagnoli), continuing from `crc` (0 to start). */
uint32_t spool_crc32c(uint32_t crc, const void *buf, size_t len);

/* The header line of a record into buf (SPOOL_LOG_HEADER_MAX octets);
 * returns its length. */
size_t spool_log_header(char *buf, enum spool_log_kind kind, const char *id,
                        size_t text_len, uint64_t body_len, uint32_t crc);

/*
 * The record starting at `pos` of a segment's bytes: 1 and *rec when
 * one is there whole and valid; 0 at the end of the valid part (the end
 * of the data, a torn record, garbage). Never reads outside buf[0, len).
 */
int spool_log_next(const char *buf, size_t len, size_t pos,
                   struct spool_log_record *rec);

#endif
