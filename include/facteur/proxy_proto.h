/*
 * The PROXY protocol header (HAProxy's "proxy-protocol.txt", versions 1
 * and 2) as pure data: the octets a load balancer sends before the
 * client's own, parsed into the client's address. No I/O, no
 * allocation, so that unit tests and a fuzzer drive it without sockets.
 *
 * The parser is called again with more octets each time a read brings
 * some (the caller keeps them); it says "need more" only while the
 * octets so far can still begin a valid header, so junk is refused at
 * its first wrong octet rather than at the deadline.
 */
#ifndef FACTEUR_PROXY_PROTO_H
#define FACTEUR_PROXY_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A version 1 line is at most 107 octets, CRLF included. */
#define PROXY_PROTO_V1_MAX 107
/* Version 2: the 16-octet head and its address block. The format allows
 * 65,535 octets of addresses and TLVs; balancers send a few dozen (AWS's
 * endpoint id, HAProxy's TLS facts), so a longer header is refused. */
#define PROXY_PROTO_V2_HEAD 16
#define PROXY_PROTO_MAX 1024

enum proxy_proto_result {
	PROXY_PROTO_OK,
	PROXY_PROTO_NEED_MORE, /* a valid beginning: read more */
	PROXY_PROTO_INVALID,   /* see proxy_header.error */
};

enum proxy_command {
	/* The address block names the client: use it. */
	PROXY_COMMAND_PROXY,
	/* The balancer speaks for itself (a health check, v2 LOCAL), or
	 * did not know the client (v1 UNKNOWN, v2 AF_UNSPEC): keep the
	 * connection's own peer address. */
	PROXY_COMMAND_LOCAL,
};

struct proxy_header {
	int version; /* 1 or 2 */
	enum proxy_command command;
	/* With PROXY_COMMAND_PROXY: the client (source) and the address it
	 * connected to (destination), AF_INET or AF_INET6 with ports. */
	struct sockaddr_storage source;
	socklen_t source_len;
	struct sockaddr_storage destination;
	socklen_t destination_len;
	size_t length;	   /* octets of the whole header: the client's follow */
	const char *error; /* on PROXY_PROTO_INVALID: why, for the log */
};

/*
 * Parse the header at the start of buf[0..len). On PROXY_PROTO_OK, *out
 * is filled and the client's own octets begin at buf + out->length; on
 * PROXY_PROTO_NEED_MORE every octet given belongs to the header (none of
 * the client's has been seen yet), and the header needs at most
 * PROXY_PROTO_MAX octets in all.
 */
enum proxy_proto_result proxy_proto_parse(const uint8_t *buf, size_t len,
					  struct proxy_header *out);

#endif
