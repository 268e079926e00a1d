/* DANE (RFC 7672): which TLSA records count for SMTP, and the state an
 * MX host's TLSA answer gives it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dane.h"

static unsigned char digest[64];

static struct dns_record tlsa(unsigned usage, unsigned selector,
			      unsigned matching, size_t len)
{
	unsigned char rd[3 + sizeof(digest)];
	struct dns_record r = {.type = DNS_TYPE_TLSA};

	rd[0] = (unsigned char)usage;
	rd[1] = (unsigned char)selector;
	rd[2] = (unsigned char)matching;
	memcpy(rd + 3, digest, len);
	r.tlsa_check = dns_tlsa_parse(rd, 3 + len, &r.tlsa);
	r.tlsa.data = digest; /* outlives rd */
	return r;
}

static void test_dane_usages_2_and_3_only(void **state)
{
	(void)state;
	struct dns_record r;

	r = tlsa(3, 1, 1, 32);
	assert_true(dane_record_usable(&r));
	r = tlsa(2, 0, 1, 32);
	assert_true(dane_record_usable(&r));
	/* PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (§3.1.3) */
	r = tlsa(0, 0, 1, 32);
	assert_false(dane_record_usable(&r));
	r = tlsa(1, 1, 1, 32);
	assert_false(dane_record_usable(&r));
	r = tlsa(4, 1, 1, 32);
	assert_false(dane_record_usable(&r));
}

static void test_dane_selectors_and_matching_types(void **state)
{
	(void)state;
	struct dns_record r;

	r = tlsa(3, 0, 0, 40);
	assert_true(dane_record_usable(&r));
	r = tlsa(3, 1, 2, 64);
	assert_true(dane_record_usable(&r));
	r = tlsa(3, 2, 1, 32); /* no such selector */
	assert_false(dane_record_usable(&r));
	r = tlsa(3, 1, 3, 32); /* no such matching type */
	assert_false(dane_record_usable(&r));
	r = tlsa(3, 1, 1, 31); /* a bad digest length */
	assert_false(dane_record_usable(&r));
	r = tlsa(3, 1, 2, 32);
	assert_false(dane_record_usable(&r));
}

static void test_dane_host_state_from_the_answer(void **state)
{
	(void)state;
	struct dns_record records[3];
	struct dns_result answer = {.status = DNS_OK, .authenticated = true};
	struct dane_host host;

	records[0] = tlsa(3, 1, 1, 32);
	records[1] = tlsa(3, 1, 1, 31);
	records[2] = tlsa(1, 1, 1, 32);
	answer.records = records;

	/* one usable record among unusable ones: verify, with that one */
	answer.record_count = 3;
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_VERIFY);
	assert_int_equal(host.tlsa_count, 1);
	assert_int_equal(host.unusable, 2);
	assert_int_equal(host.tlsa[0].usage, 3);
	assert_memory_equal(host.tlsa[0].data, digest, 32);
	assert_ptr_not_equal(host.tlsa[0].data, digest); /* a copy */
	free((void *)host.tlsa[0].data);
	free(host.tlsa);

	/* only unusable ones: TLS without authentication */
	answer.records = records + 1;
	answer.record_count = 2;
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_ENCRYPT);
	assert_int_equal(host.tlsa_count, 0);
	free(host.tlsa);

	/* not validated: no DANE at all */
	answer.records = records;
	answer.record_count = 3;
	answer.authenticated = false;
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_NONE);

	/* no record, validated or not: no DANE */
	answer.status = DNS_NO_HOST;
	answer.authenticated = true;
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_NONE);
	answer.status = DNS_NXDOMAIN;
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_NONE);

	/* a failed look-up (bogus: SERVFAIL): the host is not tried */
	answer.status = DNS_TEMPFAIL;
	snprintf(answer.error, sizeof(answer.error), "TLSA look-up failed");
	dane_host_from_answer(&answer, &host);
	assert_int_equal(host.state, DANE_FAILED);
	assert_string_equal(host.reason, "TLSA look-up failed");
}

static void test_dane_applies_only_to_validated_mx_and_hosts(void **state)
{
	(void)state;
	struct dns_host hosts[2] = {{.name = "mx1.test"}, {.name = "mx2.test"}};
	struct dns_result mx = {
	    .status = DNS_OK, .hosts = hosts, .host_count = 2};

	assert_false(dane_applies(&mx));
	mx.authenticated = true;
	assert_false(dane_applies(&mx)); /* no host's addresses validated */
	hosts[1].secure = true;
	assert_true(dane_applies(&mx));
	mx.authenticated = false;
	assert_false(dane_applies(&mx));
	mx.authenticated = true;
	mx.status = DNS_TEMPFAIL;
	assert_false(dane_applies(&mx));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dane_usages_2_and_3_only),
	    cmocka_unit_test(test_dane_selectors_and_matching_types),
	    cmocka_unit_test(test_dane_host_state_from_the_answer),
	    cmocka_unit_test(test_dane_applies_only_to_validated_mx_and_hosts),
	};

	memset(digest, 0x5a, sizeof(digest));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
