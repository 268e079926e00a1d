/* The DNS answer parser on arbitrary bytes: never reads out of bounds,
 * never loops, and what it returns holds its promises. */
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
	return 0;
}
