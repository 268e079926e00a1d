/* TLSA records (RFC 6698) on arbitrary bytes: the RDATA parser, then the
 * same bytes as the answer section of a TLSA response (one record per
 * 255-octet slice), then DANE's choice of usable records. Nothing is read
 * out of bounds; a digest's length always matches its matching type. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dane.h"
#include "facteur/dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_rdata(const struct dns_tlsa *t, enum dns_tlsa_check check)
{
	if (check != DNS_TLSA_WELL_FORMED)
		return;
	if (t->data_len == 0)
		abort();
	if (t->matching == DNS_TLSA_MATCH_SHA256 && t->data_len != 32)
		abort();
	if (t->matching == DNS_TLSA_MATCH_SHA512 && t->data_len != 64)
		abort();
}

/* A response to "_25._tcp.mx.test TLSA" whose records are slices of data. */
static size_t make_message(const uint8_t *data, size_t size, uint8_t *out,
			   size_t cap)
{
	static const uint8_t head[] = {
	    0x12, 0x34, 0x81, 0xa0, 0,	 1,   0,   0,	0,   0, 0,   0,
	    3,	  '_',	'2',  '5',  4,	 '_', 't', 'c', 'p', 2, 'm', 'x',
	    4,	  't',	'e',  's',  't', 0,   0,   52,	0,   1};
	size_t len = sizeof(head), records = 0;

	memcpy(out, head, sizeof(head));
	while (size > 0 && len + 12 + 255 <= cap && records < 40) {
		size_t n = size < 255 ? size : 255;

		out[len++] = 0xc0, out[len++] = 12; /* the question's name */
		out[len++] = 0, out[len++] = 52, out[len++] = 0, out[len++] = 1;
		out[len++] = 0, out[len++] = 0, out[len++] = 1, out[len++] = 0;
		out[len++] = 0, out[len++] = (uint8_t)n;
		memcpy(out + len, data, n);
		len += n, data += n, size -= n;
		records++;
	}
	out[6] = (uint8_t)(records >> 8), out[7] = (uint8_t)records;
	return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t msg[12 + 64 + 40 * (12 + 255)];
	struct dns_tlsa t;
	struct dns_answer a;
	struct dane_host host;
	size_t len;

	check_rdata(&t, dns_tlsa_parse(data, size, &t));

	len = make_message(data, size, msg, sizeof(msg));
	if (dns_answer_parse(msg, len, DNS_TYPE_TLSA, &a) != 0)
		abort(); /* every slice is a well-framed record */
	if (!a.authenticated)
		abort();
	for (size_t i = 0; i < a.count; i++) {
		const struct dns_record *r = &a.records[i];

		check_rdata(&r->tlsa, r->tlsa_check);
		if (dane_record_usable(r) &&
		    (r->tlsa_check != DNS_TLSA_WELL_FORMED ||
		     (r->tlsa.usage != 2 && r->tlsa.usage != 3)))
			abort();
	}
	struct dns_result result = {.status = DNS_OK,
				    .authenticated = true,
				    .records = a.records,
				    .record_count = a.count};
	dane_host_from_answer(&result, &host);
	if (host.tlsa_count + host.unusable != a.count)
		abort();
	for (size_t i = 0; i < host.tlsa_count; i++)
		free((void *)host.tlsa[i].data);
	free(host.tlsa);
	dns_answer_clear(&a);
	return 0;
}
