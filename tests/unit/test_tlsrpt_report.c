/*
 * Unit tests of the TLS report's parts (RFC 8460): the TXT record, the
 * JSON report, its gzip (inflated back with zlib) and the mail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/x509_vfy.h>
#include <zlib.h>

#include "facteur/auth.h"
#include "facteur/tlsrpt_report.h"

static int rua_of(const char *text, struct tlsrpt_rua *rua)
{
	return tlsrpt_record_parse(text, rua);
}

static void test_tlsrpt_record_takes_the_first_mailto(void **state)
{
	(void)state;
	struct tlsrpt_rua r;
	assert_int_equal(rua_of("v=TLSRPTv1;rua=mailto:a@b.test;", &r), 1);
	assert_string_equal(r.mailto, "a@b.test");
	assert_string_equal(r.https_host, "");
	assert_int_equal(
	    rua_of("v=TLSRPTv1; rua=mailto:tls@Reports.example.test,"
		   "mailto:second@example.test",
		   &r),
	    1);
	assert_string_equal(r.mailto, "tls@Reports.example.test");
	assert_int_equal(rua_of("v=spf1 -all", &r), 0);
	assert_int_equal(rua_of("v=TLSRPTv10; rua=mailto:a@b.test", &r), 0);
	assert_int_equal(rua_of("v=TLSRPTv1;", &r), -1);
	assert_int_equal(rua_of("v=TLSRPTv1; rua=mailto:nobody", &r), -1);
	assert_int_equal(rua_of("v=TLSRPTv1; rua=mailto:a@bad..d", &r), -1);
	/* a malformed one is passed over for the next */
	assert_int_equal(
	    rua_of("v=TLSRPTv1; rua=mailto:nobody,mailto:c@d.test", &r), 1);
	assert_string_equal(r.mailto, "c@d.test");
}

static void test_tlsrpt_record_takes_the_first_https(void **state)
{
	(void)state;
	struct tlsrpt_rua r;
	assert_int_equal(rua_of("v=TLSRPTv1; rua=https://r.example/x,"
				"mailto:tls@reports.example.test",
				&r),
			 1);
	assert_string_equal(r.https_host, "r.example");
	assert_int_equal(r.https_port, 443);
	assert_string_equal(r.https_path, "/x");
	assert_string_equal(r.mailto, "tls@reports.example.test");
	assert_int_equal(rua_of("v=TLSRPTv1; rua=HTTPS://R.example", &r), 1);
	assert_string_equal(r.https_host, "R.example");
	assert_string_equal(r.https_path, "/");
	assert_int_equal(
	    rua_of("v=TLSRPTv1; rua=https://r.example:8443/v1/tlsrpt?k=1", &r),
	    1);
	assert_int_equal(r.https_port, 8443);
	assert_string_equal(r.https_path, "/v1/tlsrpt?k=1");
	assert_string_equal(r.mailto, "");
	/* passed over: user information, an address, bad ports, a
	 * fragment, another scheme, no host */
	static const char *const bad[] = {
	    "v=TLSRPTv1; rua=https://u@r.example/",
	    "v=TLSRPTv1; rua=https://192.0.2.1/",
	    "v=TLSRPTv1; rua=https://[2001:db8::1]/",
	    "v=TLSRPTv1; rua=https://r.example:0/",
	    "v=TLSRPTv1; rua=https://r.example:65536/",
	    "v=TLSRPTv1; rua=https://r.example:/",
	    "v=TLSRPTv1; rua=https://r.example:44a/",
	    "v=TLSRPTv1; rua=https://r.example/a#b",
	    "v=TLSRPTv1; rua=http://r.example/",
	    "v=TLSRPTv1; rua=https:///x",
	    "v=TLSRPTv1; rua=https://bad..host/",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(rua_of(bad[i], &r), -1);
		assert_string_equal(r.https_host, "");
	}
	/* the first usable https: */
	assert_int_equal(rua_of("v=TLSRPTv1; rua=https://u@a.example/,"
				"https://b.example/r,https://c.example/",
				&r),
			 1);
	assert_string_equal(r.https_host, "b.example");
}

static char *report_of(const struct tlsrpt_policy_counts *pcs, size_t n)
{
	struct tlsrpt_counts c = {
	    .domain = "example.test", .policies = pcs, .policy_count = n};
	size_t len = 0;
	char *json =
	    tlsrpt_report_json(&c, "mx.sender.test", "tls\"rpt@sender.test",
			       "r1@sender.test", 1796601600, 1796687999, &len);
	assert_non_null(json);
	assert_int_equal(strlen(json), len);
	return json;
}

/* One MTA-STS policy (NULL: none found) and its counts. */
static char *report(const struct mta_sts_policy *p, const uint64_t *counts)
{
	struct tlsrpt_policy_counts pc = {.type = TLSRPT_POLICY_STS};
	if (p != NULL)
		pc.sts = *p;
	memcpy(pc.count, counts, sizeof pc.count);
	return report_of(&pc, 1);
}

static void expect_all(const char *json, const char *const *expect, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strstr(json, expect[i]) == NULL)
			fail_msg("missing %s in\n%s", expect[i], json);
}

static void test_tlsrpt_json_report_fields(void **state)
{
	(void)state;
	char *mx[] = {"mx1.example.test", "*.mail.example.test"};
	struct mta_sts_policy p = {
	    .mode = MTA_STS_MODE_ENFORCE, .max_age = 86400, .mx_count = 2};
	p.mx[0] = mx[0];
	p.mx[1] = mx[1];
	uint64_t counts[TLSRPT_RESULT_COUNT] = {0};
	counts[TLSRPT_SUCCESS] = 7;
	counts[TLSRPT_VALIDATION_FAILURE] = 2;
	counts[TLSRPT_STS_POLICY_FETCH_ERROR] = 1;
	char *json = report(&p, counts);
	const char *expect[] = {
	    "{\"organization-name\":\"mx.sender.test\"",
	    "\"date-range\":{\"start-datetime\":\"2026-12-07T00:00:00Z\","
	    "\"end-datetime\":\"2026-12-07T23:59:59Z\"}",
	    "\"contact-info\":\"tls\\\"rpt@sender.test\"",
	    "\"report-id\":\"r1@sender.test\"",
	    "\"policy\":{\"policy-type\":\"sts\",\"policy-string\":["
	    "\"version: STSv1\",\"mode: enforce\",\"mx: mx1.example.test\","
	    "\"mx: *.mail.example.test\",\"max_age: 86400\"],"
	    "\"policy-domain\":\"example.test\",\"mx-host\":["
	    "\"mx1.example.test\",\"*.mail.example.test\"]}",
	    "\"summary\":{\"total-successful-session-count\":7,"
	    "\"total-failure-session-count\":3}",
	    "\"failure-details\":[{\"result-type\":\"validation-failure\","
	    "\"failed-session-count\":2},{\"result-type\":"
	    "\"sts-policy-fetch-error\",\"failed-session-count\":1}]}]}",
	};
	for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
		if (strstr(json, expect[i]) == NULL)
			fail_msg("missing %s in\n%s", expect[i], json);
	free(json);

	/* no policy found */
	memset(counts, 0, sizeof counts);
	counts[TLSRPT_STS_POLICY_INVALID] = 4;
	json = report(NULL, counts);
	assert_non_null(strstr(json, "\"policy-type\":\"no-policy-found\","
				     "\"policy-domain\":\"example.test\"}"));
	assert_null(strstr(json, "policy-string"));
	free(json);
}

static void test_tlsrpt_json_tlsa_policy_beside_sts(void **state)
{
	(void)state;
	char *mx[] = {"mx.example.test"};
	char *records[] = {"3 1 1 0A0B", "2 0 1 FF00"};
	struct tlsrpt_failure failures[] = {
	    {.result = TLSRPT_TLSA_INVALID,
	     .sending_ip = "192.0.2.1",
	     .receiving_ip = "198.51.100.7",
	     .receiving_mx = "mx.example.test",
	     .count = 2},
	};
	struct tlsrpt_policy_counts pcs[2] = {
	    {.type = TLSRPT_POLICY_STS,
	     .sts = {.mode = MTA_STS_MODE_TESTING,
		     .max_age = 600,
		     .mx_count = 1}},
	    {.type = TLSRPT_POLICY_TLSA,
	     .mx_host = "mx.example.test",
	     .tlsa = records,
	     .tlsa_count = 2,
	     .failures = failures,
	     .failure_count = 1},
	};
	pcs[0].sts.mx[0] = mx[0];
	pcs[0].count[TLSRPT_SUCCESS] = 1;
	pcs[1].count[TLSRPT_SUCCESS] = 5;
	/* two with details, one beyond them */
	pcs[1].count[TLSRPT_TLSA_INVALID] = 3;
	char *json = report_of(pcs, 2);
	const char *expect[] = {
	    "\"policies\":[{\"policy\":{\"policy-type\":\"sts\",",
	    "\"total-successful-session-count\":1,"
	    "\"total-failure-session-count\":0},\"failure-details\":[]},"
	    "{\"policy\":{\"policy-type\":\"tlsa\",\"policy-string\":["
	    "\"3 1 1 0A0B\",\"2 0 1 FF00\"],\"policy-domain\":"
	    "\"example.test\",\"mx-host\":[\"mx.example.test\"]},"
	    "\"summary\":{\"total-successful-session-count\":5,"
	    "\"total-failure-session-count\":3},\"failure-details\":["
	    "{\"result-type\":\"tlsa-invalid\",\"sending-mta-ip\":"
	    "\"192.0.2.1\",\"receiving-mx-hostname\":\"mx.example.test\","
	    "\"receiving-ip\":\"198.51.100.7\",\"failed-session-count\":2},"
	    "{\"result-type\":\"tlsa-invalid\",\"failed-session-count\":1}"
	    "]}]}",
	};
	expect_all(json, expect, sizeof expect / sizeof expect[0]);
	free(json);
}

/* Every result type has its RFC 8460 name, read back by name, and is
 * a failure in the summary and the details. */
static void test_tlsrpt_each_result_type_in_the_report(void **state)
{
	(void)state;
	const char *names[TLSRPT_RESULT_COUNT] = {
	    [TLSRPT_SUCCESS] = "success",
	    [TLSRPT_STARTTLS_NOT_SUPPORTED] = "starttls-not-supported",
	    [TLSRPT_CERTIFICATE_HOST_MISMATCH] = "certificate-host-mismatch",
	    [TLSRPT_CERTIFICATE_EXPIRED] = "certificate-expired",
	    [TLSRPT_CERTIFICATE_NOT_TRUSTED] = "certificate-not-trusted",
	    [TLSRPT_VALIDATION_FAILURE] = "validation-failure",
	    [TLSRPT_TLSA_INVALID] = "tlsa-invalid",
	    [TLSRPT_DNSSEC_INVALID] = "dnssec-invalid",
	    [TLSRPT_DANE_REQUIRED] = "dane-required",
	    [TLSRPT_STS_POLICY_FETCH_ERROR] = "sts-policy-fetch-error",
	    [TLSRPT_STS_POLICY_INVALID] = "sts-policy-invalid",
	    [TLSRPT_STS_WEBPKI_INVALID] = "sts-webpki-invalid",
	};
	for (int r = 0; r < TLSRPT_RESULT_COUNT; r++) {
		assert_string_equal(tlsrpt_result_name(r), names[r]);
		assert_int_equal(tlsrpt_result_from_name(names[r]), r);
		if (r == TLSRPT_SUCCESS)
			continue;
		uint64_t counts[TLSRPT_RESULT_COUNT] = {0};
		counts[r] = 4;
		char *json = report(NULL, counts);
		char want[160];
		snprintf(want, sizeof want,
			 "\"total-failure-session-count\":4},\"failure-details"
			 "\":[{\"result-type\":\"%s\",\"failed-session-count\":"
			 "4}]",
			 names[r]);
		if (strstr(json, want) == NULL)
			fail_msg("missing %s in\n%s", want, json);
		free(json);
	}
	assert_int_equal(tlsrpt_result_from_name("validation"),
			 TLSRPT_RESULT_COUNT);
}

static void test_tlsrpt_result_of_openssl_verify(void **state)
{
	(void)state;
	assert_int_equal(tlsrpt_result_of_verify(X509_V_ERR_HOSTNAME_MISMATCH),
			 TLSRPT_CERTIFICATE_HOST_MISMATCH);
	assert_int_equal(tlsrpt_result_of_verify(X509_V_ERR_CERT_HAS_EXPIRED),
			 TLSRPT_CERTIFICATE_EXPIRED);
	const long untrusted[] = {
	    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
	    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
	    X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
	    X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
	    X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
	    X509_V_ERR_CERT_UNTRUSTED,
	};
	for (size_t i = 0; i < sizeof untrusted / sizeof untrusted[0]; i++)
		assert_int_equal(tlsrpt_result_of_verify(untrusted[i]),
				 TLSRPT_CERTIFICATE_NOT_TRUSTED);
	assert_int_equal(tlsrpt_result_of_verify(X509_V_ERR_DANE_NO_MATCH),
			 TLSRPT_TLSA_INVALID);
	assert_int_equal(tlsrpt_result_of_verify(X509_V_ERR_CERT_NOT_YET_VALID),
			 TLSRPT_VALIDATION_FAILURE);
	assert_int_equal(tlsrpt_result_of_verify(X509_V_ERR_CERT_REVOKED),
			 TLSRPT_VALIDATION_FAILURE);
}

static void test_tlsrpt_tlsa_in_presentation_form(void **state)
{
	(void)state;
	const unsigned char data[] = {0x1f, 0x85, 0x0a, 0x00};
	struct dns_tlsa t = {.usage = 3,
			     .selector = 1,
			     .matching = 1,
			     .data = data,
			     .data_len = sizeof data};
	char *s = tlsrpt_tlsa_string(&t);
	assert_non_null(s);
	assert_string_equal(s, "3 1 1 1F850A00");
	free(s);
	t.usage = 2;
	t.selector = 0;
	t.matching = 2;
	t.data_len = 0;
	s = tlsrpt_tlsa_string(&t);
	assert_string_equal(s, "2 0 2 ");
	free(s);
}

static void test_tlsrpt_gzip_inflates_back(void **state)
{
	(void)state;
	const char *text = "{\"a\":\"some json, some json, some json\"}";
	size_t gz_len = 0;
	unsigned char *gz = tlsrpt_gzip(text, strlen(text), &gz_len);
	assert_non_null(gz);
	assert_true(gz_len > 18);
	assert_int_equal(gz[0], 0x1f); /* the gzip magic */
	assert_int_equal(gz[1], 0x8b);
	char out[256];
	z_stream z = {0};
	assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
	z.next_in = gz;
	z.avail_in = (uInt)gz_len;
	z.next_out = (Bytef *)out;
	z.avail_out = sizeof out;
	assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
	assert_int_equal(z.total_out, strlen(text));
	assert_memory_equal(out, text, strlen(text));
	inflateEnd(&z);
	free(gz);
}

static void test_tlsrpt_mail_headers_and_attachment(void **state)
{
	(void)state;
	unsigned char gz[200];
	for (size_t i = 0; i < sizeof gz; i++)
		gz[i] = (unsigned char)(i * 7);
	struct tlsrpt_mail m = {
	    .from = "tlsrpt@sender.test",
	    .to = "tls@example.test",
	    .domain = "example.test",
	    .submitter = "mx.sender.test",
	    .report_id = "20261207T000000Z.example.test@mx.sender.test",
	    .start = 1796601600,
	    .end = 1796688000,
	    .now = 1796688000,
	    .gz = gz,
	    .gz_len = sizeof gz,
	};
	size_t len = 0;
	char *mail = tlsrpt_mail_build(&m, &len);
	assert_non_null(mail);
	assert_int_equal(strlen(mail), len);
	const char *expect[] = {
	    "From: tlsrpt@sender.test\r\n",
	    "To: tls@example.test\r\n",
	    "Subject: Report Domain: example.test Submitter: mx.sender.test "
	    "Report-ID: <20261207T000000Z.example.test@mx.sender.test>\r\n",
	    "TLS-Report-Domain: example.test\r\n",
	    "TLS-Report-Submitter: mx.sender.test\r\n",
	    "Content-Type: multipart/report; report-type=\"tlsrpt\";",
	    "Content-Type: application/tlsrpt+gzip\r\n",
	    "filename=\"mx.sender.test!example.test!20261207T000000Z!"
	    "20261208T000000Z.json.gz\"",
	};
	for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
		if (strstr(mail, expect[i]) == NULL)
			fail_msg("missing %s in\n%s", expect[i], mail);
	/* every line ends in CRLF, none starts with a dot or passes 998 */
	for (const char *line = mail; *line;) {
		const char *crlf = strstr(line, "\r\n");
		assert_non_null(crlf);
		assert_true(crlf - line <= 998);
		assert_true(line[0] != '.');
		line = crlf + 2;
	}
	/* the attachment decodes back to the gzip'd octets */
	const char *b64 = strstr(mail, ".json.gz\"\r\n\r\n");
	assert_non_null(b64);
	b64 += strlen(".json.gz\"\r\n\r\n");
	char joined[400] = "";
	size_t n = 0;
	while (*b64 != '-') {
		const char *crlf = strstr(b64, "\r\n");
		memcpy(joined + n, b64, (size_t)(crlf - b64));
		n += (size_t)(crlf - b64);
		b64 = crlf + 2;
	}
	unsigned char back[256];
	assert_int_equal(auth_base64_decode(joined, n, back, sizeof back),
			 (int)sizeof gz);
	assert_memory_equal(back, gz, sizeof gz);
	free(mail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tlsrpt_record_takes_the_first_mailto),
	    cmocka_unit_test(test_tlsrpt_record_takes_the_first_https),
	    cmocka_unit_test(test_tlsrpt_json_report_fields),
	    cmocka_unit_test(test_tlsrpt_json_tlsa_policy_beside_sts),
	    cmocka_unit_test(test_tlsrpt_each_result_type_in_the_report),
	    cmocka_unit_test(test_tlsrpt_result_of_openssl_verify),
	    cmocka_unit_test(test_tlsrpt_tlsa_in_presentation_form),
	    cmocka_unit_test(test_tlsrpt_gzip_inflates_back),
	    cmocka_unit_test(test_tlsrpt_mail_headers_and_attachment),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
