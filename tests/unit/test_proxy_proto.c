/* The PROXY protocol header parser (proxy_proto.h), versions 1 and 2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "facteur/proxy_proto.h"

static const uint8_t signature[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static enum proxy_proto_result parse_text(const char *text,
					  struct proxy_header *h)
{
	return proxy_proto_parse((const uint8_t *)text, strlen(text), h);
}

static void assert_source(const struct proxy_header *h, int family,
			  const char *address, unsigned port)
{
	char text[INET6_ADDRSTRLEN];
	assert_int_equal(h->source.ss_family, family);
	if (family == AF_INET) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)&h->source;
		inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
		assert_int_equal(ntohs(sin->sin_port), port);
		assert_int_equal(h->source_len, sizeof *sin);
	} else {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)&h->source;
		inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
		assert_int_equal(ntohs(sin6->sin6_port), port);
		assert_int_equal(h->source_len, sizeof *sin6);
	}
	assert_string_equal(text, address);
}

/* A v2 header: the signature, version/command, family/transport, the
 * block's length, then the block. Returns the total length. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam,
		 const uint8_t *block, size_t block_len)
{
	memcpy(out, signature, 12);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)(block_len >> 8);
	out[15] = (uint8_t)block_len;
	if (block_len > 0)
		memcpy(out + 16, block, block_len);
	return 16 + block_len;
}

static void test_proxy_v1_tcp4_names_the_client(void **state)
{
	(void)state;
	struct proxy_header h;
	const char *text =
	    "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n";

	assert_int_equal(parse_text(text, &h), PROXY_PROTO_OK);
	assert_int_equal(h.version, 1);
	assert_int_equal(h.command, PROXY_COMMAND_PROXY);
	assert_int_equal(h.length, strlen(text) - strlen("EHLO x\r\n"));
	assert_source(&h, AF_INET, "192.0.2.7", 56324);
	assert_int_equal(h.destination.ss_family, AF_INET);
}

static void test_proxy_v1_tcp6_names_the_client(void **state)
{
	(void)state;
	struct proxy_header h;
	assert_int_equal(
	    parse_text("PROXY TCP6 2001:db8::5 2001:db8::1 65535 0\r\n", &h),
	    PROXY_PROTO_OK);
	assert_source(&h, AF_INET6, "2001:db8::5", 65535);
}

static void test_proxy_v1_unknown_keeps_the_peer(void **state)
{
	(void)state;
	struct proxy_header h;
	assert_int_equal(parse_text("PROXY UNKNOWN\r\n", &h), PROXY_PROTO_OK);
	assert_int_equal(h.command, PROXY_COMMAND_LOCAL);
	assert_int_equal(h.length, 15);
	assert_int_equal(
	    parse_text("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", &h),
	    PROXY_PROTO_OK);
	assert_int_equal(h.command, PROXY_COMMAND_LOCAL);
	assert_int_equal(parse_text("PROXY UNKNOWNX\r\n", &h),
			 PROXY_PROTO_INVALID);
}

static void test_proxy_v1_every_prefix_asks_for_more(void **state)
{
	(void)state;
	struct proxy_header h;
	const char *text = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n";
	size_t len = strlen(text);

	for (size_t i = 0; i < len; i++)
		assert_int_equal(
		    proxy_proto_parse((const uint8_t *)text, i, &h),
		    PROXY_PROTO_NEED_MORE);
	assert_int_equal(proxy_proto_parse((const uint8_t *)text, len, &h),
			 PROXY_PROTO_OK);
}

static void test_proxy_v1_strict_syntax(void **state)
{
	(void)state;
	struct proxy_header h;
	static const char *const bad[] = {
	    "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 9\r\n",
	    "PROXY TCP4  192.0.2.7 198.51.100.1 56324 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 \r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 056324 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
	    "PROXY TCP4 192.0.2.256 198.51.100.1 1 25\r\n",
	    "PROXY TCP4 2001:db8::5 198.51.100.1 1 25\r\n",
	    "PROXY TCP6 192.0.2.7 2001:db8::1 1 25\r\n",
	    "PROXY TCP5 192.0.2.7 198.51.100.1 1 25\r\n",
	    "PROXY tcp4 192.0.2.7 198.51.100.1 1 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n",
	    "PROXY TCP4 192.0.2.7\r198.51.100.1 1 25\r\n",
	    "PROXY\r\n",
	    "PROXY \r\n",
	    "PROXYTCP4 192.0.2.7 198.51.100.1 1 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\xc3\xa9\r\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		assert_int_equal(parse_text(bad[i], &h), PROXY_PROTO_INVALID);
		assert_non_null(h.error);
	}
}

static void test_proxy_v1_line_longer_than_107_is_refused(void **state)
{
	(void)state;
	struct proxy_header h;
	char line[200] = "PROXY UNKNOWN ";
	/* 105 octets and CRLF: the longest line allowed. */
	memset(line + strlen(line), 'x', 105 - strlen(line));
	memcpy(line + 105, "\r\n", 3);
	assert_int_equal(parse_text(line, &h), PROXY_PROTO_OK);
	assert_int_equal(h.length, 107);

	memset(line + 105, 'x', 1);
	memcpy(line + 106, "\r\n", 3);
	assert_int_equal(parse_text(line, &h), PROXY_PROTO_INVALID);
	/* Without its end: refused once 107 octets brought no CRLF. */
	assert_int_equal(proxy_proto_parse((const uint8_t *)line, 106, &h),
			 PROXY_PROTO_NEED_MORE);
	assert_int_equal(proxy_proto_parse((const uint8_t *)line, 107, &h),
			 PROXY_PROTO_INVALID);
}

static void test_proxy_junk_is_refused_at_once(void **state)
{
	(void)state;
	struct proxy_header h;
	assert_int_equal(parse_text("EHLO client.example\r\n", &h),
			 PROXY_PROTO_INVALID);
	assert_int_equal(parse_text("PRX", &h), PROXY_PROTO_INVALID);
	assert_int_equal(parse_text("\r\n\r\nX", &h), PROXY_PROTO_INVALID);
	assert_int_equal(parse_text("\x16\x03\x01", &h), PROXY_PROTO_INVALID);
	assert_int_equal(proxy_proto_parse((const uint8_t *)"", 0, &h),
			 PROXY_PROTO_NEED_MORE);
}

static void test_proxy_v2_inet_with_tlvs(void **state)
{
	(void)state;
	struct proxy_header h;
	uint8_t buf[128];
	uint8_t block[12 + 7 + 3] = {192, 0, 2, 9, 198, 51, 100, 1, 0x30, 0x39,
				     0, 25,
				     /* PP2_TYPE_ALPN "smtp" */
				     0x01, 0, 4, 's', 'm', 't', 'p',
				     /* PP2_TYPE_NOOP, empty */
				     0x04, 0, 0};
	size_t len = v2(buf, 0x21, 0x11, block, sizeof block);
	memcpy(buf + len, "EHLO", 4);

	assert_int_equal(proxy_proto_parse(buf, len + 4, &h), PROXY_PROTO_OK);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.command, PROXY_COMMAND_PROXY);
	assert_int_equal(h.length, len);
	assert_source(&h, AF_INET, "192.0.2.9", 12345);
	for (size_t i = 0; i < len; i++)
		assert_int_equal(proxy_proto_parse(buf, i, &h),
				 PROXY_PROTO_NEED_MORE);
}

static void test_proxy_v2_inet6(void **state)
{
	(void)state;
	struct proxy_header h;
	uint8_t buf[128];
	uint8_t block[36] = {0x20, 0x01, 0x0d, 0xb8};
	block[15] = 5;
	block[16] = 0x20;
	block[17] = 0x01;
	block[31] = 1;
	block[32] = 0x01;
	block[33] = 0x00;
	size_t len = v2(buf, 0x21, 0x21, block, sizeof block);

	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_OK);
	assert_source(&h, AF_INET6, "2001:db8::5", 256);
}

static void test_proxy_v2_local_and_unspec_keep_the_peer(void **state)
{
	(void)state;
	struct proxy_header h;
	uint8_t buf[64];
	uint8_t block[12] = {192, 0, 2, 9};

	/* LOCAL (a health check), with or without an address block. */
	size_t len = v2(buf, 0x20, 0x00, NULL, 0);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_OK);
	assert_int_equal(h.command, PROXY_COMMAND_LOCAL);
	assert_int_equal(h.length, 16);
	len = v2(buf, 0x20, 0x11, block, sizeof block);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_OK);
	assert_int_equal(h.command, PROXY_COMMAND_LOCAL);
	assert_int_equal(h.length, 28);
	/* PROXY with AF_UNSPEC: the balancer did not know the client. */
	len = v2(buf, 0x21, 0x00, NULL, 0);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_OK);
	assert_int_equal(h.command, PROXY_COMMAND_LOCAL);
}

static void test_proxy_v2_refusals(void **state)
{
	(void)state;
	struct proxy_header h;
	uint8_t buf[PROXY_PROTO_MAX + 64];
	uint8_t block[216] = {192, 0, 2, 9};

	/* Version 1 or 3 in the binary head, command 2. */
	size_t len = v2(buf, 0x11, 0x11, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	assert_int_equal(proxy_proto_parse(buf, 13, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x31, 0x11, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x22, 0x11, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	/* Families: unix sockets and anything past them; UDP. */
	len = v2(buf, 0x21, 0x31, block, 216);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x21, 0x41, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	assert_string_equal(h.error, "v2: unknown family");
	len = v2(buf, 0x21, 0x12, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	/* An address block shorter than its family's addresses. */
	len = v2(buf, 0x21, 0x11, block, 11);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x21, 0x21, block, 12);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	/* TLVs that do not add up to the block. */
	block[12] = 0x01;
	block[13] = 0;
	block[14] = 5;
	len = v2(buf, 0x21, 0x11, block, 12 + 3 + 4);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x21, 0x11, block, 12 + 2);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
}

static void test_proxy_v2_length_is_bounded(void **state)
{
	(void)state;
	struct proxy_header h;
	static uint8_t buf[16 + 65535];
	static uint8_t block[65535];

	/* The longest allowed: one NOOP TLV filling the block. */
	size_t fill = PROXY_PROTO_MAX - 16 - 12 - 3;
	block[12] = 0x04;
	block[13] = (uint8_t)(fill >> 8);
	block[14] = (uint8_t)fill;
	size_t len = v2(buf, 0x21, 0x11, block, PROXY_PROTO_MAX - 16);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_OK);
	/* One more octet is refused as soon as the head is read. */
	len = v2(buf, 0x21, 0x11, block, PROXY_PROTO_MAX - 15);
	assert_int_equal(proxy_proto_parse(buf, 16, &h), PROXY_PROTO_INVALID);
	len = v2(buf, 0x21, 0x11, block, 65535);
	assert_int_equal(proxy_proto_parse(buf, len, &h), PROXY_PROTO_INVALID);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_proxy_v1_tcp4_names_the_client),
	    cmocka_unit_test(test_proxy_v1_tcp6_names_the_client),
	    cmocka_unit_test(test_proxy_v1_unknown_keeps_the_peer),
	    cmocka_unit_test(test_proxy_v1_every_prefix_asks_for_more),
	    cmocka_unit_test(test_proxy_v1_strict_syntax),
	    cmocka_unit_test(test_proxy_v1_line_longer_than_107_is_refused),
	    cmocka_unit_test(test_proxy_junk_is_refused_at_once),
	    cmocka_unit_test(test_proxy_v2_inet_with_tlvs),
	    cmocka_unit_test(test_proxy_v2_inet6),
	    cmocka_unit_test(test_proxy_v2_local_and_unspec_keep_the_peer),
	    cmocka_unit_test(test_proxy_v2_refusals),
	    cmocka_unit_test(test_proxy_v2_length_is_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
