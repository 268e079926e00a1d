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

#include <zlib.h>

#include "facteur/auth.h"
#include "facteur/tlsrpt_report.h"

static void test_tlsrpt_record_takes_the_first_mailto(void **state)
{
	(void)state;
	char to[64];
	assert_int_equal(
	    tlsrpt_record_parse("v=TLSRPTv1; rua=https://r.example/x,"
				"mailto:tls@Reports.example.test",
				to, sizeof to),
	    1);
	assert_string_equal(to, "tls@Reports.example.test");
	assert_int_equal(tlsrpt_record_parse("v=TLSRPTv1;rua=mailto:a@b.test;",
					     to, sizeof to),
			 1);
	assert_string_equal(to, "a@b.test");
	assert_int_equal(tlsrpt_record_parse("v=spf1 -all", to, sizeof to), 0);
	assert_int_equal(tlsrpt_record_parse("v=TLSRPTv10; rua=mailto:a@b.test",
					     to, sizeof to),
			 0);
	assert_int_equal(
	    tlsrpt_record_parse("v=TLSRPTv1; rua=https://r.example/", to,
				sizeof to),
	    -1);
	assert_int_equal(tlsrpt_record_parse("v=TLSRPTv1;", to, sizeof to), -1);
	assert_int_equal(
	    tlsrpt_record_parse("v=TLSRPTv1; rua=mailto:nobody", to, sizeof to),
	    -1);
	assert_int_equal(tlsrpt_record_parse("v=TLSRPTv1; rua=mailto:a@bad..d",
					     to, sizeof to),
			 -1);
}

static char *report(const struct mta_sts_policy *p, const uint64_t *counts)
{
	struct tlsrpt_counts c = {.domain = "example.test", .policy = p};
	memcpy(c.count, counts, sizeof c.count);
	size_t len = 0;
	char *json =
	    tlsrpt_report_json(&c, "mx.sender.test", "tls\"rpt@sender.test",
			       "r1@sender.test", 1796601600, 1796687999, &len);
	assert_non_null(json);
	assert_int_equal(strlen(json), len);
	return json;
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
	    cmocka_unit_test(test_tlsrpt_json_report_fields),
	    cmocka_unit_test(test_tlsrpt_gzip_inflates_back),
	    cmocka_unit_test(test_tlsrpt_mail_headers_and_attachment),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
