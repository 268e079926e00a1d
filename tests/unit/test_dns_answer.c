/* The pure parts of the dns module (src/dns_answer.c): the answer parsers
 * on hand-made messages and on one of dnsmasq's, and the TLSA RDATA
 * reader. Linked with that file (and log.c) alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dns.h"

struct msg {
	unsigned char buf[4096];
	size_t len;
};

static void put8(struct msg *m, unsigned v)
{
	assert_true(m->len < sizeof(m->buf));
	m->buf[m->len++] = (unsigned char)v;
}

static void put16(struct msg *m, unsigned v)
{
	put8(m, v >> 8 & 0xff);
	put8(m, v & 0xff);
}

static void put32(struct msg *m, uint32_t v)
{
	put16(m, v >> 16);
	put16(m, v & 0xffff);
}

/* "a.b.c" as labels, or "" for the root. */
static void put_name(struct msg *m, const char *name)
{
	while (*name != '\0') {
		const char *dot = strchr(name, '.');
		size_t n = dot ? (size_t)(dot - name) : strlen(name);

		put8(m, (unsigned)n);
		for (size_t i = 0; i < n; i++)
			put8(m, (unsigned char)name[i]);
		name += n + (dot ? 1 : 0);
	}
	put8(m, 0);
}

static void put_header(struct msg *m, unsigned rcode, unsigned an, unsigned ns)
{
	m->len = 0;
	put16(m, 0x1234);
	put16(m, 0x8180 | rcode);
	put16(m, 1);
	put16(m, an);
	put16(m, ns);
	put16(m, 0);
}

static size_t put_question(struct msg *m, const char *name, unsigned type)
{
	size_t at = m->len;

	put_name(m, name);
	put16(m, type);
	put16(m, 1);
	return at;
}

/* A record whose owner is a pointer to `owner`; rdata follows. */
static void put_rr_head(struct msg *m, size_t owner, unsigned type,
			uint32_t ttl)
{
	put16(m, 0xc000 | (unsigned)owner);
	put16(m, type);
	put16(m, 1);
	put32(m, ttl);
}

static void test_dns_parse_mx_answer_from_dnsmasq(void **state)
{
	/* dnsmasq's answer for example.test MX: compressed names, mx2
	 * listed first, glue in the additional section. */
	static const char hex[] =
	    "579485800001000200000002076578616d706c65047465737400000f0001"
	    "c00c000f00010000000000140014036d7832076578616d706c6504746573"
	    "7400c00c000f0001000000000014000a036d7831076578616d706c650474"
	    "65737400c02c000100010000000000047f000003c04c0001000100000000"
	    "00047f000002";
	unsigned char buf[sizeof(hex) / 2];
	struct dns_answer a;

	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(sscanf(hex + 2 * i, "%2hhx", &buf[i]), 1);
	assert_int_equal(dns_answer_parse(buf, sizeof(buf), DNS_TYPE_MX, &a),
			 0);
	assert_int_equal(a.rcode, 0);
	assert_int_equal(a.count, 2);
	assert_int_equal(a.records[0].preference, 20);
	assert_string_equal(a.records[0].exchange, "mx2.example.test");
	assert_int_equal(a.records[1].preference, 10);
	assert_string_equal(a.records[1].exchange, "mx1.example.test");
	assert_false(a.has_negative_ttl);
	dns_answer_clear(&a);

	/* Every truncation is refused, never read past. */
	for (size_t len = 0; len < sizeof(buf); len++) {
		int rc = dns_answer_parse(buf, len, DNS_TYPE_MX, &a);

		/* The answers end at 94; the additional section is not read. */
		assert_int_equal(rc, len < 94 ? -1 : 0);
		dns_answer_clear(&a);
	}
}

static void test_dns_parse_null_mx_gives_root_exchange(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	put_header(&m, 0, 1, 0);
	q = put_question(&m, "nullmx.test", DNS_TYPE_MX);
	put_rr_head(&m, q, DNS_TYPE_MX, 300);
	put16(&m, 3);
	put16(&m, 0);
	put8(&m, 0);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), 0);
	assert_int_equal(a.count, 1);
	assert_int_equal(a.records[0].preference, 0);
	assert_string_equal(a.records[0].exchange, "");
	assert_int_equal(a.ttl, 300);
	dns_answer_clear(&a);
}

static void test_dns_parse_keeps_only_asked_type_and_smallest_ttl(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	put_header(&m, 0, 3, 0);
	q = put_question(&m, "host.test", DNS_TYPE_A);
	put_rr_head(&m, q, 5 /* CNAME */, 10);
	put16(&m, 2);
	put16(&m, 0xc000 | (unsigned)q);
	put_rr_head(&m, q, DNS_TYPE_A, 600);
	put16(&m, 4);
	put32(&m, 0xc0000201);
	put_rr_head(&m, q, DNS_TYPE_A, 0x80000000u); /* top bit: zero */
	put16(&m, 4);
	put32(&m, 0xc0000202);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_A, &a), 0);
	assert_int_equal(a.count, 2);
	assert_memory_equal(a.records[0].addr, "\xc0\x00\x02\x01", 4);
	assert_memory_equal(a.records[1].addr, "\xc0\x00\x02\x02", 4);
	assert_int_equal(a.ttl, 0);
	dns_answer_clear(&a);
}

static void test_dns_parse_negative_ttl_from_soa(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	put_header(&m, 3, 0, 1);
	q = put_question(&m, "nope.test", DNS_TYPE_MX);
	put_rr_head(&m, q + 5, DNS_TYPE_SOA, 3600); /* owner "test" */
	{
		size_t rdlen_at = m.len, start;

		put16(&m, 0);
		start = m.len;
		put_name(&m, "ns.test");
		put_name(&m, "hostmaster.test");
		put32(&m, 1); /* serial */
		put32(&m, 7200);
		put32(&m, 900);
		put32(&m, 86400);
		put32(&m, 300); /* minimum */
		m.buf[rdlen_at] = (unsigned char)((m.len - start) >> 8);
		m.buf[rdlen_at + 1] = (unsigned char)(m.len - start);
	}
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), 0);
	assert_int_equal(a.rcode, 3);
	assert_int_equal(a.count, 0);
	assert_true(a.has_negative_ttl);
	assert_int_equal(a.negative_ttl, 300);
	dns_answer_clear(&a);
}

static void test_dns_parse_refuses_pointer_loops(void **state)
{
	struct msg m;
	struct dns_answer a;

	(void)state;
	/* The question's name is a pointer to itself. */
	put_header(&m, 0, 0, 0);
	put16(&m, 0xc00c);
	put16(&m, DNS_TYPE_MX);
	put16(&m, 1);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), -1);
	dns_answer_clear(&a);

	/* Two pointers to each other. */
	put_header(&m, 0, 0, 0);
	put16(&m, 0xc00e);
	put16(&m, 0xc00c);
	put16(&m, DNS_TYPE_MX);
	put16(&m, 1);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), -1);
	dns_answer_clear(&a);

	/* A label then a pointer back to it: grows until the 255 cap. */
	put_header(&m, 0, 0, 0);
	put8(&m, 3);
	put8(&m, 'a');
	put8(&m, 'b');
	put8(&m, 'c');
	put16(&m, 0xc00c);
	put16(&m, DNS_TYPE_MX);
	put16(&m, 1);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), -1);
	dns_answer_clear(&a);
}

static void test_dns_parse_refuses_overlong_names_and_bad_rdata(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	/* 5 labels of 63 octets: 320 octets on the wire. */
	put_header(&m, 0, 0, 0);
	for (int i = 0; i < 5; i++) {
		put8(&m, 63);
		for (int j = 0; j < 63; j++)
			put8(&m, 'x');
	}
	put8(&m, 0);
	put16(&m, DNS_TYPE_MX);
	put16(&m, 1);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), -1);
	dns_answer_clear(&a);

	/* An A record of 5 octets. */
	put_header(&m, 0, 1, 0);
	q = put_question(&m, "host.test", DNS_TYPE_A);
	put_rr_head(&m, q, DNS_TYPE_A, 60);
	put16(&m, 5);
	put32(&m, 0x7f000001);
	put8(&m, 0);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_A, &a), -1);
	assert_int_equal(a.count, 0);
	dns_answer_clear(&a);

	/* An MX whose exchange runs past its rdata. */
	put_header(&m, 0, 1, 0);
	q = put_question(&m, "host.test", DNS_TYPE_MX);
	put_rr_head(&m, q, DNS_TYPE_MX, 60);
	put16(&m, 4);
	put16(&m, 10);
	put_name(&m, "mx.test");
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), -1);
	dns_answer_clear(&a);

	/* An answer count larger than what is there. */
	put_header(&m, 0, 2, 0);
	q = put_question(&m, "host.test", DNS_TYPE_A);
	put_rr_head(&m, q, DNS_TYPE_A, 60);
	put16(&m, 4);
	put32(&m, 0x7f000001);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_A, &a), -1);
	dns_answer_clear(&a);
}

static void test_dns_parse_odd_exchange_octets_are_marked(void **state)
{
	struct msg m;
	size_t q, rdlen_at;
	struct dns_answer a;

	(void)state;
	put_header(&m, 0, 1, 0);
	q = put_question(&m, "host.test", DNS_TYPE_MX);
	put_rr_head(&m, q, DNS_TYPE_MX, 60);
	rdlen_at = m.len;
	put16(&m, 0);
	put16(&m, 10);
	put8(&m, 4);
	put8(&m, 'M');
	put8(&m, '.');
	put8(&m, 0);
	put8(&m, 'x');
	put_name(&m, "test");
	m.buf[rdlen_at + 1] = (unsigned char)(m.len - rdlen_at - 2);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_MX, &a), 0);
	assert_int_equal(a.count, 1);
	assert_string_equal(a.records[0].exchange, "m??x.test");
	dns_answer_clear(&a);
}

static void test_dns_tlsa_rdata_lengths(void **state)
{
	unsigned char rd[3 + 64];
	struct dns_tlsa t;

	(void)state;
	memset(rd, 0xab, sizeof(rd));
	rd[0] = 3, rd[1] = 1, rd[2] = DNS_TLSA_MATCH_SHA256;
	assert_int_equal(dns_tlsa_parse(rd, 3 + 32, &t), DNS_TLSA_WELL_FORMED);
	assert_int_equal(t.usage, 3);
	assert_int_equal(t.selector, 1);
	assert_int_equal(t.matching, 1);
	assert_int_equal(t.data_len, 32);
	assert_ptr_equal(t.data, rd + 3);
	/* a digest one octet short or long is unusable */
	assert_int_equal(dns_tlsa_parse(rd, 3 + 31, &t),
			 DNS_TLSA_BAD_DIGEST_SIZE);
	assert_int_equal(dns_tlsa_parse(rd, 3 + 33, &t),
			 DNS_TLSA_BAD_DIGEST_SIZE);
	rd[2] = DNS_TLSA_MATCH_SHA512;
	assert_int_equal(dns_tlsa_parse(rd, 3 + 64, &t), DNS_TLSA_WELL_FORMED);
	assert_int_equal(dns_tlsa_parse(rd, 3 + 32, &t),
			 DNS_TLSA_BAD_DIGEST_SIZE);
	/* a full certificate or key: any length but none */
	rd[2] = DNS_TLSA_MATCH_FULL;
	assert_int_equal(dns_tlsa_parse(rd, 3 + 1, &t), DNS_TLSA_WELL_FORMED);
	assert_int_equal(dns_tlsa_parse(rd, 3 + 17, &t), DNS_TLSA_WELL_FORMED);
	for (size_t len = 0; len < 4; len++)
		assert_int_equal(dns_tlsa_parse(rd, len, &t),
				 DNS_TLSA_TOO_SHORT);
	assert_int_equal(dns_tlsa_parse(NULL, 0, &t), DNS_TLSA_TOO_SHORT);
}

static void test_dns_parse_tlsa_answer_keeps_bad_records_marked(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	put_header(&m, 0, 3, 0);
	m.buf[3] |= 0x20; /* AD */
	q = put_question(&m, "_25._tcp.mx.test", DNS_TYPE_TLSA);
	put_rr_head(&m, q, DNS_TYPE_TLSA, 300);
	put16(&m, 3 + 32);
	put8(&m, 3), put8(&m, 1), put8(&m, 1);
	for (int i = 0; i < 32; i++)
		put8(&m, (unsigned)i);
	put_rr_head(&m, q, DNS_TYPE_TLSA, 200);
	put16(&m, 3 + 31); /* SHA-256 one octet short */
	put8(&m, 3), put8(&m, 1), put8(&m, 1);
	for (int i = 0; i < 31; i++)
		put8(&m, 0);
	put_rr_head(&m, q, DNS_TYPE_TLSA, 300);
	put16(&m, 2); /* not even the fields */
	put16(&m, 0x0300);
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_TLSA, &a), 0);
	assert_true(a.authenticated);
	assert_int_equal(a.count, 3);
	assert_int_equal(a.ttl, 200);
	assert_int_equal(a.records[0].tlsa_check, DNS_TLSA_WELL_FORMED);
	assert_int_equal(a.records[0].tlsa.data_len, 32);
	assert_int_equal(a.records[0].tlsa.data[31], 31);
	/* the data is the record's own, not the message's */
	assert_true(a.records[0].tlsa.data < m.buf ||
		    a.records[0].tlsa.data >= m.buf + sizeof(m.buf));
	assert_int_equal(a.records[1].tlsa_check, DNS_TLSA_BAD_DIGEST_SIZE);
	assert_int_equal(a.records[2].tlsa_check, DNS_TLSA_TOO_SHORT);
	dns_answer_clear(&a);

	/* without the AD bit: not authenticated */
	m.buf[3] &= (unsigned char)~0x20;
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_TLSA, &a), 0);
	assert_false(a.authenticated);
	dns_answer_clear(&a);
}

static void test_dns_parse_caps_the_record_count(void **state)
{
	struct msg m;
	size_t q;
	struct dns_answer a;

	(void)state;
	put_header(&m, 0, 40, 0);
	q = put_question(&m, "many.test", DNS_TYPE_A);
	for (unsigned i = 0; i < 40; i++) {
		put_rr_head(&m, q, DNS_TYPE_A, 60);
		put16(&m, 4);
		put32(&m, 0x0a000000 | i);
	}
	assert_int_equal(dns_answer_parse(m.buf, m.len, DNS_TYPE_A, &a), 0);
	assert_int_equal(a.count, DNS_ANSWER_MAX);
	assert_int_equal(a.records[DNS_ANSWER_MAX - 1].addr[3],
			 DNS_ANSWER_MAX - 1);
	dns_answer_clear(&a);
}

/* TXT: each record's strings joined in answer order, a NUL octet read as
 * '?', other types skipped; a string running past its record is malformed. */
static void test_dns_txt_parse_joins_strings_and_refuses_overruns(void **state)
{
	static const unsigned char one[] = {9,	 'v', '=', 'S', 'T', 'S',
					    'v', '1', ';', ' ', 5,   'i',
					    'd', '=', 0,   '1'};
	struct msg m;
	char **texts;
	size_t q, count;
	int rcode;

	(void)state;
	put_header(&m, 0, 3, 0);
	q = put_question(&m, "_mta-sts.example.test", DNS_TYPE_TXT);
	put_rr_head(&m, q, DNS_TYPE_TXT, 300);
	put16(&m, sizeof(one));
	for (size_t i = 0; i < sizeof(one); i++)
		put8(&m, one[i]);
	put_rr_head(&m, q, DNS_TYPE_A, 300);
	put16(&m, 4);
	put32(&m, 0x7f000001);
	put_rr_head(&m, q, DNS_TYPE_TXT, 300);
	put16(&m, 3);
	put8(&m, 2);
	put8(&m, 'o');
	put8(&m, 'k');
	assert_int_equal(
	    dns_txt_answer_parse(m.buf, m.len, &rcode, &texts, &count), 0);
	assert_int_equal(rcode, 0);
	assert_int_equal(count, 2);
	assert_string_equal(texts[0], "v=STSv1; id=?1");
	assert_string_equal(texts[1], "ok");
	dns_txt_texts_free(texts, count);

	/* the last string claims one octet more than its record holds */
	m.buf[m.len - 3] = 3;
	assert_int_equal(
	    dns_txt_answer_parse(m.buf, m.len, &rcode, &texts, &count), -1);
	assert_null(texts);
	assert_int_equal(count, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dns_parse_mx_answer_from_dnsmasq),
	    cmocka_unit_test(test_dns_parse_null_mx_gives_root_exchange),
	    cmocka_unit_test(
		test_dns_parse_keeps_only_asked_type_and_smallest_ttl),
	    cmocka_unit_test(test_dns_parse_negative_ttl_from_soa),
	    cmocka_unit_test(test_dns_parse_refuses_pointer_loops),
	    cmocka_unit_test(
		test_dns_parse_refuses_overlong_names_and_bad_rdata),
	    cmocka_unit_test(test_dns_parse_odd_exchange_octets_are_marked),
	    cmocka_unit_test(test_dns_tlsa_rdata_lengths),
	    cmocka_unit_test(
		test_dns_parse_tlsa_answer_keeps_bad_records_marked),
	    cmocka_unit_test(test_dns_parse_caps_the_record_count),
	    cmocka_unit_test(
		test_dns_txt_parse_joins_strings_and_refuses_overruns),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
