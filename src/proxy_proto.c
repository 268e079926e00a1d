/*
 * The PROXY protocol header parser (see proxy_proto.h). Version 1 is one
 * text line, checked strictly: single spaces, addresses inet_pton takes,
 * ports without leading zeros. Version 2 is a binary head whose address
 * block is read by family; the TLVs after the addresses are walked only
 * to check that their lengths add up, since nothing here needs them.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "facteur/proxy_proto.h"

static const uint8_t v2_signature[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_prefix[] = "PROXY ";

#define V2_VERSION 0x20
#define V2_COMMAND_LOCAL 0x00
#define V2_COMMAND_PROXY 0x01
#define V2_FAMILY_UNSPEC 0x00
#define V2_FAMILY_INET 0x10
#define V2_FAMILY_INET6 0x20
#define V2_FAMILY_UNIX 0x30
#define V2_TRANSPORT_STREAM 0x01
#define V2_INET_BLOCK 12  /* two IPv4 addresses, two ports */
#define V2_INET6_BLOCK 36 /* two IPv6 addresses, two ports */
#define V2_TLV_HEAD 3	  /* type, 16-bit length */

static enum proxy_proto_result invalid(struct proxy_header *out,
				       const char *why)
{
	out->error = why;
	return PROXY_PROTO_INVALID;
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* ---- version 1 ---- */

/* A port: 1 to 5 digits, no leading zero but "0" itself, at most 65535. */
static bool v1_port(const char *text, size_t len, uint16_t *port)
{
	unsigned value = 0;

	if (len == 0 || len > 5 || (len > 1 && text[0] == '0'))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return false;
		value = value * 10 + (unsigned)(text[i] - '0');
	}
	if (value > 65535)
		return false;
	*port = (uint16_t)value;
	return true;
}

static bool v1_address(int family, const char *text, size_t len, void *addr)
{
	char copy[INET6_ADDRSTRLEN];

	if (len == 0 || len >= sizeof copy)
		return false;
	memcpy(copy, text, len);
	copy[len] = '\0';
	return inet_pton(family, copy, addr) == 1;
}

static void fill_inet(struct sockaddr_storage *ss, socklen_t *len,
		      const void *addr, uint16_t port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof *ss);
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	memcpy(&sin->sin_addr, addr, 4);
	*len = sizeof *sin;
}

static void fill_inet6(struct sockaddr_storage *ss, socklen_t *len,
		       const void *addr, uint16_t port)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof *ss);
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	memcpy(&sin6->sin6_addr, addr, 16);
	*len = sizeof *sin6;
}

/* "TCP4 SRC DST SPORT DPORT" (or TCP6) without its CRLF: exactly four
 * fields after the protocol, each separated by one space. */
static enum proxy_proto_result v1_fields(const char *line, size_t len,
					 int family, struct proxy_header *out)
{
	const char *field[4];
	size_t field_len[4];
	size_t n = 0;
	size_t at = 0;

	while (n < 4) {
		if (at >= len || line[at] != ' ')
			return invalid(out, "v1: missing field");
		at++;
		field[n] = line + at;
		while (at < len && line[at] != ' ')
			at++;
		field_len[n] = (size_t)(line + at - field[n]);
		if (field_len[n] == 0)
			return invalid(out, "v1: empty field");
		n++;
	}
	if (at != len)
		return invalid(out, "v1: extra field");

	uint8_t source[16], destination[16];
	uint16_t source_port, destination_port;
	if (!v1_address(family, field[0], field_len[0], source) ||
	    !v1_address(family, field[1], field_len[1], destination))
		return invalid(out, "v1: invalid address");
	if (!v1_port(field[2], field_len[2], &source_port) ||
	    !v1_port(field[3], field_len[3], &destination_port))
		return invalid(out, "v1: invalid port");
	if (family == AF_INET) {
		fill_inet(&out->source, &out->source_len, source, source_port);
		fill_inet(&out->destination, &out->destination_len, destination,
			  destination_port);
	} else {
		fill_inet6(&out->source, &out->source_len, source, source_port);
		fill_inet6(&out->destination, &out->destination_len,
			   destination, destination_port);
	}
	out->command = PROXY_COMMAND_PROXY;
	return PROXY_PROTO_OK;
}

static enum proxy_proto_result v1_parse(const uint8_t *buf, size_t len,
					struct proxy_header *out)
{
	size_t prefix = sizeof v1_prefix - 1;

	if (memcmp(buf, v1_prefix, min_size(len, prefix)) != 0)
		return invalid(out, "not a PROXY header");
	/* Look for the CRLF; any other control octet on the way is junk,
	 * refused now rather than at the length limit. */
	size_t end = 0;
	bool found = false;
	for (size_t i = 0; i < min_size(len, PROXY_PROTO_V1_MAX) && !found;
	     i++) {
		if (buf[i] == '\r') {
			if (i + 1 < len && buf[i + 1] != '\n')
				return invalid(out, "v1: bare CR");
			if (i + 1 < len) {
				end = i;
				found = true;
			}
		} else if (buf[i] < 0x20 || buf[i] > 0x7e) {
			return invalid(out, "v1: control or 8-bit octet");
		}
	}
	if (!found) {
		if (len >= PROXY_PROTO_V1_MAX)
			return invalid(out, "v1: line too long");
		return PROXY_PROTO_NEED_MORE;
	}
	if (end + 2 > PROXY_PROTO_V1_MAX)
		return invalid(out, "v1: line too long");
	if (end < prefix)
		return invalid(out, "not a PROXY header");

	const char *rest = (const char *)buf + prefix;
	size_t rest_len = end - prefix;
	out->version = 1;
	out->length = end + 2;
	if (rest_len >= 4 && memcmp(rest, "TCP4", 4) == 0)
		return v1_fields(rest + 4, rest_len - 4, AF_INET, out);
	if (rest_len >= 4 && memcmp(rest, "TCP6", 4) == 0)
		return v1_fields(rest + 4, rest_len - 4, AF_INET6, out);
	/* UNKNOWN may be followed by anything up to the CRLF, which the
	 * receiver ignores (the balancer could not tell the client). */
	if (rest_len >= 7 && memcmp(rest, "UNKNOWN", 7) == 0 &&
	    (rest_len == 7 || rest[7] == ' ')) {
		out->command = PROXY_COMMAND_LOCAL;
		return PROXY_PROTO_OK;
	}
	return invalid(out, "v1: unknown protocol");
}

/* ---- version 2 ---- */

static enum proxy_proto_result v2_tlvs(const uint8_t *p, size_t len,
				       struct proxy_header *out)
{
	while (len > 0) {
		if (len < V2_TLV_HEAD)
			return invalid(out, "v2: truncated TLV");
		size_t value = (size_t)p[1] << 8 | p[2];
		if (value > len - V2_TLV_HEAD)
			return invalid(out, "v2: TLV longer than the header");
		p += V2_TLV_HEAD + value;
		len -= V2_TLV_HEAD + value;
	}
	return PROXY_PROTO_OK;
}

/* The address block of an INET or INET6 stream: the source and the
 * destination address, their two ports, then TLVs. */
static enum proxy_proto_result v2_addresses(const uint8_t *p, size_t block,
					    uint8_t transport, int af,
					    struct proxy_header *out)
{
	size_t alen = af == AF_INET ? 4 : 16;
	size_t need = af == AF_INET ? V2_INET_BLOCK : V2_INET6_BLOCK;
	const uint8_t *ports = p + 2 * alen;

	if (transport != V2_TRANSPORT_STREAM)
		return invalid(out, "v2: not a stream transport");
	if (block < need)
		return invalid(out, "v2: address block too short");
	uint16_t sport = (uint16_t)(ports[0] << 8 | ports[1]);
	uint16_t dport = (uint16_t)(ports[2] << 8 | ports[3]);
	if (af == AF_INET) {
		fill_inet(&out->source, &out->source_len, p, sport);
		fill_inet(&out->destination, &out->destination_len, p + alen,
			  dport);
	} else {
		fill_inet6(&out->source, &out->source_len, p, sport);
		fill_inet6(&out->destination, &out->destination_len, p + alen,
			   dport);
	}
	out->command = PROXY_COMMAND_PROXY;
	return v2_tlvs(p + need, block - need, out);
}

static enum proxy_proto_result v2_parse(const uint8_t *buf, size_t len,
					struct proxy_header *out)
{
	if (memcmp(buf, v2_signature, min_size(len, sizeof v2_signature)) != 0)
		return invalid(out, "not a PROXY header");
	if (len > 12 && (buf[12] & 0xf0) != V2_VERSION)
		return invalid(out, "v2: unknown version");
	if (len > 12 && (buf[12] & 0x0f) != V2_COMMAND_LOCAL &&
	    (buf[12] & 0x0f) != V2_COMMAND_PROXY)
		return invalid(out, "v2: unknown command");
	if (len < PROXY_PROTO_V2_HEAD)
		return PROXY_PROTO_NEED_MORE;

	size_t block = (size_t)buf[14] << 8 | buf[15];
	if (block > PROXY_PROTO_MAX - PROXY_PROTO_V2_HEAD)
		return invalid(out, "v2: header too long");
	if (len < PROXY_PROTO_V2_HEAD + block)
		return PROXY_PROTO_NEED_MORE;

	out->version = 2;
	out->length = PROXY_PROTO_V2_HEAD + block;
	const uint8_t *p = buf + PROXY_PROTO_V2_HEAD;
	/* LOCAL: the balancer's own connection (a health check); its
	 * address block, whatever it holds, is not the client's. */
	if ((buf[12] & 0x0f) == V2_COMMAND_LOCAL) {
		out->command = PROXY_COMMAND_LOCAL;
		return PROXY_PROTO_OK;
	}

	uint8_t family = buf[13] & 0xf0;
	uint8_t transport = buf[13] & 0x0f;
	switch (family) {
	case V2_FAMILY_UNSPEC:
		/* The balancer did not know the client: its own address
		 * stands, as the format says. */
		out->command = PROXY_COMMAND_LOCAL;
		return PROXY_PROTO_OK;
	case V2_FAMILY_INET:
		return v2_addresses(p, block, transport, AF_INET, out);
	case V2_FAMILY_INET6:
		return v2_addresses(p, block, transport, AF_INET6, out);
	case V2_FAMILY_UNIX:
		/* A socket path is no client address: relay control and
		 * limits could only fall back on the balancer's, which
		 * would give every such client the balancer's rights. */
		return invalid(out, "v2: unix socket family");
	default:
		return invalid(out, "v2: unknown family");
	}
}

enum proxy_proto_result proxy_proto_parse(const uint8_t *buf, size_t len,
					  struct proxy_header *out)
{
	memset(out, 0, sizeof *out);
	if (len == 0)
		return PROXY_PROTO_NEED_MORE;
	if (buf[0] == v1_prefix[0])
		return v1_parse(buf, len, out);
	if (buf[0] == v2_signature[0])
		return v2_parse(buf, len, out);
	return invalid(out, "not a PROXY header");
}
