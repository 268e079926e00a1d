/* The DNS answer parsers (MX/A/AAAA, and TXT) on arbitrary bytes: never
 * read out of bounds, never loop, and what they return holds their
 * promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t types[] = {DNS_TYPE_MX, DNS_TYPE_A,
					 DNS_TYPE_AAAA};

	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		struct dns_answer a;
		int rc = dns_answer_parse(data, size, types[t], &a);

		if (rc != 0 && (a.count != 0 || a.records != NULL))
			abort();
		if (a.count > DNS_ANSWER_MAX)
			abort();
		for (size_t i = 0; i < a.count; i++) {
			const struct dns_record *r = &a.records[i];

			if (r->type != types[t] || (r->ttl & 0x80000000u))
				abort();
			if (r->ttl < a.ttl)
				abort();
			if (r->type == DNS_TYPE_MX) {
				size_t len = strlen(r->exchange);

				if (len > 253)
					abort();
				for (size_t j = 0; j < len; j++) {
					char c = r->exchange[j];

					if (!((c >= 'a' && c <= 'z') ||
					      (c >= '0' && c <= '9') ||
					      c == '-' || c == '_' ||
					      c == '.' || c == '?'))
						abort();
				}
			} else if (r->exchange != NULL) {
				abort();
			}
		}
		dns_answer_clear(&a);
	}

	char **texts = NULL;
	size_t count = 0;
	int rcode = 0;
	int rc = dns_txt_answer_parse(data, size, &rcode, &texts, &count);
	if ((rc != 0 && (texts != NULL || count != 0)) ||
	    count > DNS_ANSWER_MAX || rcode > 15)
		abort();
	for (size_t i = 0; i < count; i++)
		if (strlen(texts[i]) > size)
			abort();
	dns_txt_texts_free(texts, count);
	return 0;
}
