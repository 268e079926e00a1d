/* The metrics listener's HTTP/1.x request heads (http_proto.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "facteur/http_proto.h"

#define MAX_HEAD 8192

static enum http_parse_result parse(const char *text, struct http_request *req)
{
	return http_proto_parse_request(text, strlen(text), MAX_HEAD, req);
}

static void test_http_get_with_query_is_the_path_alone(void **state)
{
	(void)state;
	struct http_request req;
	const char *text = "GET /metrics?name[]=x HTTP/1.1\r\n"
			   "Host: localhost\r\n\r\nGET /next";

	assert_int_equal(parse(text, &req), HTTP_PARSE_OK);
	assert_int_equal(req.method, HTTP_METHOD_GET);
	assert_string_equal(req.path, "/metrics");
	assert_true(req.keep_alive);
	assert_false(req.chunked);
	assert_int_equal(req.content_length, 0);
	assert_int_equal(req.head_len, strlen(text) - strlen("GET /next"));
}

static void test_http_methods_are_case_sensitive_tokens(void **state)
{
	(void)state;
	struct http_request req;

	assert_int_equal(parse("HEAD /metrics HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_int_equal(req.method, HTTP_METHOD_HEAD);
	assert_int_equal(parse("get /metrics HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_int_equal(req.method, HTTP_METHOD_OTHER);
	assert_int_equal(parse("POST /metrics HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_int_equal(req.method, HTTP_METHOD_OTHER);
	assert_int_equal(parse("G(T /metrics HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_BAD);
}

static void test_http_incomplete_head_asks_for_more(void **state)
{
	(void)state;
	struct http_request req;

	assert_int_equal(parse("", &req), HTTP_PARSE_AGAIN);
	assert_int_equal(parse("GET /metrics HTTP/1.1\r\n", &req),
			 HTTP_PARSE_AGAIN);
	assert_int_equal(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n", &req),
			 HTTP_PARSE_AGAIN);
	assert_int_equal(parse("\r\n\r\n", &req), HTTP_PARSE_AGAIN);
}

static void test_http_bare_lf_lines_and_leading_empty_lines(void **state)
{
	(void)state;
	struct http_request req;

	assert_int_equal(
	    parse("\r\n\nGET /metrics HTTP/1.0\nHost: x\n\n", &req),
	    HTTP_PARSE_OK);
	assert_string_equal(req.path, "/metrics");
	assert_false(req.keep_alive);
}

static void test_http_keep_alive_follows_version_and_connection(void **state)
{
	(void)state;
	struct http_request req;

	assert_int_equal(
	    parse("GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n",
		  &req),
	    HTTP_PARSE_OK);
	assert_false(req.keep_alive);
	assert_int_equal(
	    parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &req),
	    HTTP_PARSE_OK);
	assert_true(req.keep_alive);
	assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &req), HTTP_PARSE_OK);
	assert_false(req.keep_alive);
}

static void test_http_content_length_and_transfer_encoding(void **state)
{
	(void)state;
	struct http_request req;

	assert_int_equal(
	    parse("POST /metrics HTTP/1.1\r\nContent-Length: 12\r\n\r\n", &req),
	    HTTP_PARSE_OK);
	assert_int_equal(req.content_length, 12);
	assert_int_equal(parse("POST / HTTP/1.1\r\ncontent-length: 3\r\n"
			       "Content-Length: 3\r\n\r\n",
			       &req),
			 HTTP_PARSE_OK);
	assert_int_equal(req.content_length, 3);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\n"
			       "Content-Length: 4\r\n\r\n",
			       &req),
			 HTTP_PARSE_BAD);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &req),
	    HTTP_PARSE_BAD);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n"
		  "\r\n",
		  &req),
	    HTTP_PARSE_BAD);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
		  &req),
	    HTTP_PARSE_OK);
	assert_true(req.chunked);
}

static void test_http_malformed_heads_are_bad(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "GET\r\n\r\n",
	    "GET /metrics\r\n\r\n",
	    "GET /metrics HTTP/2.0\r\n\r\n",
	    "GET /metrics HTTP/1.1 extra\r\n\r\n",
	    "GET  /metrics HTTP/1.1\r\n\r\n",
	    "GET metrics HTTP/1.1\r\n\r\n",
	    "GET /met\x01rics HTTP/1.1\r\n\r\n",
	    "\x00\xff NOT HTTP AT ALL\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
	    "GET / HTTP/1.1\r\nno colon\r\n\r\n",
	    "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
	    "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
	};
	struct http_request req;

	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		size_t len = strlen(bad[i]);
		if (i == 7)
			len = 22; /* the NUL is part of it */
		if (http_proto_parse_request(bad[i], len, MAX_HEAD, &req) !=
		    HTTP_PARSE_BAD)
			fail_msg("accepted: %s", bad[i]);
	}
}

static void test_http_targets(void **state)
{
	(void)state;
	struct http_request req;
	char longer[600];

	assert_int_equal(
	    parse("GET http://localhost:9187/metrics?x HTTP/1.1\r\n\r\n", &req),
	    HTTP_PARSE_OK);
	assert_string_equal(req.path, "/metrics");
	assert_int_equal(parse("GET http://localhost HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_string_equal(req.path, "/");
	assert_int_equal(parse("OPTIONS * HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_string_equal(req.path, "*");
	assert_int_equal(parse("GET /../metrics HTTP/1.1\r\n\r\n", &req),
			 HTTP_PARSE_OK);
	assert_string_equal(req.path, "/../metrics");
	snprintf(longer, sizeof longer, "GET /metrics%0400d HTTP/1.1\r\n\r\n",
		 0);
	assert_int_equal(parse(longer, &req), HTTP_PARSE_OK);
	assert_true(req.path_too_long);
}

static void test_http_head_longer_than_allowed(void **state)
{
	(void)state;
	struct http_request req;
	char text[200];

	snprintf(text, sizeof text, "GET / HTTP/1.1\r\nX-Filler: %080d\r\n\r\n",
		 0);
	assert_int_equal(http_proto_parse_request(text, strlen(text), 64, &req),
			 HTTP_PARSE_TOO_LARGE);
	/* complete or not */
	assert_int_equal(http_proto_parse_request(text, 70, 64, &req),
			 HTTP_PARSE_TOO_LARGE);
	assert_int_equal(
	    http_proto_parse_request(text, strlen(text), sizeof text, &req),
	    HTTP_PARSE_OK);
	memset(text, '\n', sizeof text);
	assert_int_equal(http_proto_parse_request(text, sizeof text, 64, &req),
			 HTTP_PARSE_TOO_LARGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_http_get_with_query_is_the_path_alone),
	    cmocka_unit_test(test_http_methods_are_case_sensitive_tokens),
	    cmocka_unit_test(test_http_incomplete_head_asks_for_more),
	    cmocka_unit_test(test_http_bare_lf_lines_and_leading_empty_lines),
	    cmocka_unit_test(
		test_http_keep_alive_follows_version_and_connection),
	    cmocka_unit_test(test_http_content_length_and_transfer_encoding),
	    cmocka_unit_test(test_http_malformed_heads_are_bad),
	    cmocka_unit_test(test_http_targets),
	    cmocka_unit_test(test_http_head_longer_than_allowed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
