/*
 * The spool log's record framing: CRC-32C, header lines, and
 * spool_log_next on valid records and on every way a record can be
 * wrong. Buffers are malloc'd at their exact size so that AddressSanitizer
 * catches a read past the length given.
 */
/* cmocka.h needs these first. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/spool_log.h"

static const char id_a[] = "0123456789ABCDEF";

/* A bit-at-a-time CRC-32C to compare the table-driven one with. */
static uint32_t crc_reference(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint32_t crc = 0xffffffffu;

	for (size_t i = 0; i < len; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
	}
	return ~crc;
}

/* A copy of len octets at an exact-size allocation. */
static char *exact(const char *data, size_t len)
{
	char *p = malloc(len > 0 ? len : 1);
	assert_non_null(p);
	memcpy(p, data, len);
	return p;
}

/* A record as the spool frames it, into a growing buffer. */
struct seg {
	char *p;
	size_t len;
};

static void seg_add(struct seg *s, const void *data, size_t len)
{
	s->p = realloc(s->p, s->len + len + 1);
	assert_non_null(s->p);
	memcpy(s->p + s->len, data, len);
	s->len += len;
}

static size_t seg_record(struct seg *s, enum spool_log_kind kind,
			 const char *id, const char *text, size_t text_len,
			 const char *body, size_t body_len)
{
	char header[SPOOL_LOG_HEADER_MAX];
	uint32_t crc = spool_crc32c(0, text, text_len);
	crc = spool_crc32c(crc, body, body_len);
	size_t hlen =
	    spool_log_header(header, kind, id, text_len, body_len, crc);
	assert_true(hlen > 0);
	size_t start = s->len;
	seg_add(s, header, hlen);
	seg_add(s, text, text_len);
	seg_add(s, body, body_len);
	seg_add(s, "\n", 1);
	return start;
}

/* spool_log_next on an exact-size copy of data. */
static int next_exact(const char *data, size_t len, size_t pos,
		      struct spool_log_record *rec)
{
	char *p = exact(data, len);
	int rc = spool_log_next(p, len, pos, rec);
	free(p);
	return rc;
}

static void test_crc32c_known_answers(void **state)
{
	(void)state;
	unsigned char buf[32];

	assert_int_equal(spool_crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(spool_crc32c(0, "", 0), 0);
	assert_int_equal(spool_crc32c(0, "a", 1), 0xC1D04330u);
	/* RFC 3720, B.4 */
	memset(buf, 0, sizeof buf);
	assert_int_equal(spool_crc32c(0, buf, sizeof buf), 0x8A9136AAu);
	memset(buf, 0xff, sizeof buf);
	assert_int_equal(spool_crc32c(0, buf, sizeof buf), 0x62A8AB43u);
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)i;
	assert_int_equal(spool_crc32c(0, buf, sizeof buf), 0x46DD794Eu);
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)(31 - i);
	assert_int_equal(spool_crc32c(0, buf, sizeof buf), 0x113FDB5Cu);
}

static void test_crc32c_continues_and_matches_reference(void **state)
{
	(void)state;
	enum { N = 300 };
	unsigned char data[N + 8];
	uint32_t seed = 12345;

	for (size_t i = 0; i < sizeof data; i++) {
		seed = seed * 1103515245u + 12345u;
		data[i] = (unsigned char)(seed >> 16);
	}
	/* every length and alignment, table against bits */
	for (size_t off = 0; off < 8; off++)
		for (size_t len = 0; len <= N; len++)
			assert_int_equal(spool_crc32c(0, data + off, len),
					 crc_reference(data + off, len));
	/* split anywhere, continued: the same value */
	uint32_t whole = spool_crc32c(0, data, N);
	for (size_t cut = 0; cut <= N; cut++) {
		uint32_t c = spool_crc32c(0, data, cut);
		assert_int_equal(spool_crc32c(c, data + cut, N - cut), whole);
	}
	uint32_t c = spool_crc32c(0, "1234", 4);
	assert_int_equal(spool_crc32c(c, "56789", 5), 0xE3069283u);
}

static void test_header_format(void **state)
{
	(void)state;
	char buf[SPOOL_LOG_HEADER_MAX];

	size_t n =
	    spool_log_header(buf, SPOOL_LOG_MESSAGE, id_a, 12, 34, 0xDEADBEEFu);
	assert_int_equal(n, strlen("M 0123456789ABCDEF 12 34 DEADBEEF\n"));
	assert_memory_equal(buf, "M 0123456789ABCDEF 12 34 DEADBEEF\n", n);
	n = spool_log_header(buf, SPOOL_LOG_FILE_MESSAGE, id_a, 0, 0, 1);
	assert_memory_equal(buf, "F 0123456789ABCDEF 0 0 00000001\n", n);
	n = spool_log_header(buf, SPOOL_LOG_RECORDS, id_a, 7, 0, 0);
	assert_memory_equal(buf, "R 0123456789ABCDEF 7 0 00000000\n", n);

	/* The largest lengths the parser takes fit. */
	n = spool_log_header(buf, SPOOL_LOG_MESSAGE, id_a,
			     (size_t)9999999999999999999u, 9999999999999999999u,
			     0xFFFFFFFFu);
	assert_int_equal(n, 68);
	assert_memory_equal(buf,
			    "M 0123456789ABCDEF 9999999999999999999 "
			    "9999999999999999999 FFFFFFFF\n",
			    n);
	/* Beyond the buffer: no header rather than a cut one. */
	assert_int_equal(spool_log_header(buf, SPOOL_LOG_MESSAGE, id_a,
					  SIZE_MAX, UINT64_MAX, 0),
			 0);
}

static void test_next_reads_each_kind(void **state)
{
	(void)state;
	struct seg s = {0};
	struct spool_log_record r;
	const char text_m[] = "facteur-envelope 1\nid x\n";
	const char body_m[] = "Subject: x\r\n\r\nhi\r\n";
	const char text_r[] = "state 0 delivered 1 0 0 - -\n";
	const char id_b[] = "FEDCBA9876543210";

	seg_add(&s, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	size_t m_at = seg_record(&s, SPOOL_LOG_MESSAGE, id_a, text_m,
				 strlen(text_m), body_m, strlen(body_m));
	size_t f_at = seg_record(&s, SPOOL_LOG_FILE_MESSAGE, id_b, text_m,
				 strlen(text_m), "", 0);
	size_t r_at = seg_record(&s, SPOOL_LOG_RECORDS, id_a, text_r,
				 strlen(text_r), "", 0);
	/* Empty text and body: a record all the same. */
	size_t e_at = seg_record(&s, SPOOL_LOG_MESSAGE, id_b, "", 0, "", 0);
	char *buf = exact(s.p, s.len);
	free(s.p);

	assert_int_equal(m_at, SPOOL_LOG_MAGIC_LEN);
	assert_int_equal(spool_log_next(buf, s.len, m_at, &r), 1);
	assert_int_equal(r.kind, SPOOL_LOG_MESSAGE);
	assert_string_equal(r.id, id_a);
	assert_int_equal(r.text_len, strlen(text_m));
	assert_memory_equal(buf + r.text_off, text_m, r.text_len);
	assert_int_equal(r.body_len, strlen(body_m));
	assert_int_equal(r.body_off, r.text_off + r.text_len);
	assert_memory_equal(buf + r.body_off, body_m, r.body_len);
	assert_int_equal(r.end, f_at);
	assert_int_equal(buf[r.end - 1], '\n');

	assert_int_equal(spool_log_next(buf, s.len, f_at, &r), 1);
	assert_int_equal(r.kind, SPOOL_LOG_FILE_MESSAGE);
	assert_string_equal(r.id, id_b);
	assert_memory_equal(buf + r.text_off, text_m, r.text_len);
	assert_int_equal(r.body_len, 0);
	assert_int_equal(r.end, r_at);

	assert_int_equal(spool_log_next(buf, s.len, r_at, &r), 1);
	assert_int_equal(r.kind, SPOOL_LOG_RECORDS);
	assert_string_equal(r.id, id_a);
	assert_memory_equal(buf + r.text_off, text_r, r.text_len);
	assert_int_equal(r.body_len, 0);
	assert_int_equal(r.end, e_at);

	assert_int_equal(spool_log_next(buf, s.len, e_at, &r), 1);
	assert_int_equal(r.text_len, 0);
	assert_int_equal(r.body_len, 0);
	assert_int_equal(r.end, s.len);

	/* The end of the data ends the log. */
	assert_int_equal(spool_log_next(buf, s.len, s.len, &r), 0);
	assert_int_equal(spool_log_next(buf, s.len, s.len + 10, &r), 0);
	/* The magic line is not a record. */
	assert_int_equal(spool_log_next(buf, s.len, 0, &r), 0);
	free(buf);
}

/* A valid record's text, with one edit of its header line. */
static int next_with_header(const char *header, const char *text,
			    const char *body)
{
	struct spool_log_record r;
	char *data = NULL;
	int n = asprintf(&data, "%s%s%s\n", header, text, body);
	assert_true(n > 0);
	int rc = next_exact(data, (size_t)n, 0, &r);
	free(data);
	return rc;
}

static void test_next_rejects_each_bad_header_field(void **state)
{
	(void)state;
	const char text[] = "abc";
	const char body[] = "de";
	char good[SPOOL_LOG_HEADER_MAX];
	uint32_t crc = spool_crc32c(spool_crc32c(0, text, 3), body, 2);
	char hex[9];

	snprintf(hex, sizeof hex, "%08X", crc);
	spool_log_header(good, SPOOL_LOG_MESSAGE, id_a, 3, 2, crc);
	assert_int_equal(next_with_header(good, text, body), 1);

	char lower[9];
	for (int i = 0; i < 9; i++)
		lower[i] =
		    (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a'
							  : hex[i]);
	/* Make sure the lowercase form differs from the valid one. */
	int has_letter = strcmp(lower, hex) != 0;

	const char *bad[] = {
	    "X 0123456789ABCDEF 3 2 %s\n",    /* unknown kind */
	    "m 0123456789ABCDEF 3 2 %s\n",    /* kind in lowercase */
	    " M 0123456789ABCDEF 3 2 %s\n",   /* leading space */
	    "M  0123456789ABCDEF 3 2 %s\n",   /* double space */
	    "M0123456789ABCDEF 3 2 %s\n",     /* no space */
	    "M 0123456789abcdef 3 2 %s\n",    /* id in lowercase */
	    "M 0123456789ABCDE 3 2 %s\n",     /* id of 15 */
	    "M 0123456789ABCDEF0 3 2 %s\n",   /* id of 17 */
	    "M 0123456789ABCDEG 3 2 %s\n",    /* id not hex */
	    "M 0123456789ABCDEF 03 2 %s\n",   /* leading zero */
	    "M 0123456789ABCDEF 4 2 %s\n",    /* text length wrong */
	    "M 0123456789ABCDEF 2 2 %s\n",    /* text length wrong */
	    "M 0123456789ABCDEF -3 2 %s\n",   /* negative */
	    "M 0123456789ABCDEF +3 2 %s\n",   /* sign */
	    "M 0123456789ABCDEF  3 2 %s\n",   /* empty length */
	    "M 0123456789ABCDEF 3  2 %s\n",   /* double space */
	    "M 0123456789ABCDEF 3 02 %s\n",   /* leading zero */
	    "M 0123456789ABCDEF 3 1 %s\n",    /* body length wrong */
	    "M 0123456789ABCDEF 3 3 %s\n",    /* body length wrong */
	    "M 0123456789ABCDEF 3 x %s\n",    /* not a number */
	    "M 0123456789ABCDEF 3 2  %s\n",   /* double space */
	    "M 0123456789ABCDEF 3 2 %s \n",   /* trailing space */
	    "M 0123456789ABCDEF 3 2 %s\r\n",  /* CRLF */
	    "M 0123456789ABCDEF 3 2 0%s\n",   /* crc of 9 */
	    "M 0123456789ABCDEF 3 2 %.7s\n",  /* crc of 7 */
	    "M 0123456789ABCDEF 3 2 %.7sG\n", /* crc not hex */
	    "M 0123456789ABCDEF 3 2 %.7s\n0", /* crc cut, newline early */
	    "M 0123456789ABCDEF 3 2\n",	      /* no crc */
	    "M 0123456789ABCDEF 3 %s\n",      /* no body length */
	    "F 0123456789ABCDEF 3 2 %s\n",    /* F has no body */
	    "R 0123456789ABCDEF 3 2 %s\n",    /* R has no body */
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		char header[128];
		snprintf(header, sizeof header, bad[i], hex);
		if (next_with_header(header, text, body) != 0)
			fail_msg("accepted header %zu: %s", i, header);
	}
	if (has_letter) {
		char header[128];
		snprintf(header, sizeof header, "M %s 3 2 %s\n", id_a, lower);
		assert_int_equal(next_with_header(header, text, body), 0);
	}

	/* Lengths beyond 19 digits or beyond the data never wrap around. */
	const char *huge[] = {
	    "M 0123456789ABCDEF 18446744073709551615 2 %s\n",
	    "M 0123456789ABCDEF 3 18446744073709551615 %s\n",
	    "M 0123456789ABCDEF 18446744073709551614 18446744073709551614 %s\n",
	    "M 0123456789ABCDEF 9999999999999999999 9999999999999999999 %s\n",
	    "M 0123456789ABCDEF 00000000000000000003 2 %s\n",
	    "M 0123456789ABCDEF 18446744073709551619 18446744073709551619 %s\n",
	};
	for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
		char header[160];
		snprintf(header, sizeof header, huge[i], hex);
		if (next_with_header(header, text, body) != 0)
			fail_msg("accepted header: %s", header);
	}
}

static void test_next_rejects_damaged_records(void **state)
{
	(void)state;
	struct seg s = {0};
	struct spool_log_record r;
	const char text[] = "facteur-envelope 1\n";
	const char body[] = "body\r\n";

	seg_record(&s, SPOOL_LOG_MESSAGE, id_a, text, strlen(text), body,
		   strlen(body));
	size_t len = s.len;
	assert_int_equal(next_exact(s.p, len, 0, &r), 1);
	assert_int_equal(r.end, len);

	/* Cut anywhere: torn, never read past the cut. */
	for (size_t cut = 0; cut < len; cut++)
		if (next_exact(s.p, cut, 0, &r) != 0)
			fail_msg("accepted a record cut at %zu", cut);

	/* Any octet changed in the text, the body or the final newline. */
	size_t hlen = len - strlen(text) - strlen(body) - 1;
	for (size_t i = hlen; i < len; i++) {
		char *p = exact(s.p, len);
		p[i] ^= 0x20;
		if (spool_log_next(p, len, 0, &r) != 0)
			fail_msg("accepted octet %zu changed", i);
		free(p);
	}
	/* Any octet of the header changed (but for the digits of a length,
	 * which make another header, checked above). */
	for (size_t i = 0; i < hlen; i++) {
		char *p = exact(s.p, len);
		p[i] = (char)0xff;
		if (spool_log_next(p, len, 0, &r) != 0)
			fail_msg("accepted header octet %zu changed", i);
		p[i] = '\0';
		if (spool_log_next(p, len, 0, &r) != 0)
			fail_msg("accepted header octet %zu zeroed", i);
		free(p);
	}
	free(s.p);
}

static void test_next_stops_at_zeros_and_garbage(void **state)
{
	(void)state;
	struct seg s = {0};
	struct spool_log_record r;
	char zeros[4096] = {0};

	size_t first =
	    seg_record(&s, SPOOL_LOG_RECORDS, id_a, "flags 1\n", 8, "", 0);
	size_t second = s.len;
	seg_add(&s, zeros, sizeof zeros);
	char *buf = exact(s.p, s.len);
	assert_int_equal(spool_log_next(buf, s.len, first, &r), 1);
	assert_int_equal(r.end, second);
	for (size_t pos = second; pos <= s.len; pos++)
		assert_int_equal(spool_log_next(buf, s.len, pos, &r), 0);
	free(buf);

	/* Nothing but zeros, or a zero-filled record-sized hole. */
	for (size_t n = 0; n <= 100; n++)
		assert_int_equal(next_exact(zeros, n, 0, &r), 0);

	/* Text that is not a record, and a record not at a record start. */
	const char junk[] = "hello world, this is not a log record at all\n";
	assert_int_equal(next_exact(junk, strlen(junk), 0, &r), 0);
	for (size_t pos = 1; pos < second; pos++)
		assert_int_equal(next_exact(s.p, second, pos, &r), 0);
	free(s.p);
}

static void test_next_walks_a_segment(void **state)
{
	(void)state;
	struct seg s = {0};
	struct spool_log_record r;
	enum { N = 50 };
	size_t starts[N];
	char text[64], body[200];

	seg_add(&s, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	for (int i = 0; i < N; i++) {
		int n = snprintf(text, sizeof text, "text %d\n", i);
		memset(body, 'a' + i % 26, sizeof body);
		enum spool_log_kind kind = i % 3 == 0	? SPOOL_LOG_MESSAGE
					   : i % 3 == 1 ? SPOOL_LOG_FILE_MESSAGE
							: SPOOL_LOG_RECORDS;
		starts[i] =
		    seg_record(&s, kind, id_a, text, (size_t)n, body,
			       kind == SPOOL_LOG_MESSAGE ? (size_t)i * 4 : 0);
	}
	/* a torn last one */
	seg_add(&s, "M 0123456789ABCDEF 5 0 ", 23);
	char *buf = exact(s.p, s.len);
	size_t pos = SPOOL_LOG_MAGIC_LEN;
	int count = 0;
	while (spool_log_next(buf, s.len, pos, &r) == 1) {
		assert_true(count < N);
		assert_int_equal(pos, starts[count]);
		assert_true(r.end > pos && r.end <= s.len);
		char want[64];
		int n = snprintf(want, sizeof want, "text %d\n", count);
		assert_int_equal(r.text_len, (size_t)n);
		assert_memory_equal(buf + r.text_off, want, r.text_len);
		pos = r.end;
		count++;
	}
	assert_int_equal(count, N);
	assert_int_equal(pos, s.len - 23);
	free(buf);
	free(s.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crc32c_known_answers),
	    cmocka_unit_test(test_crc32c_continues_and_matches_reference),
	    cmocka_unit_test(test_header_format),
	    cmocka_unit_test(test_next_reads_each_kind),
	    cmocka_unit_test(test_next_rejects_each_bad_header_field),
	    cmocka_unit_test(test_next_rejects_damaged_records),
	    cmocka_unit_test(test_next_stops_at_zeros_and_garbage),
	    cmocka_unit_test(test_next_walks_a_segment),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
