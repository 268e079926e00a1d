/*
 * The Sendmail milter protocol, version 6 as Postfix speaks it: the
 * packets the MTA sends (built into a caller's buffer) and the replies
 * it reads (parsed in place). Pure: no I/O, no allocation, so that the
 * unit tests and the fuzzer drive it without sockets. A packet is a
 * 32-bit length in network order (counting the command octet), one
 * command octet, then its data.
 */
#ifndef FACTEUR_MILTER_PROTO_H
#define FACTEUR_MILTER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "facteur/smtp_proto.h"

#define MILTER_VERSION 6
#define MILTER_VERSION_MIN 2
/* A body chunk sent, at most (libmilter's MILTER_CHUNK_SIZE). */
#define MILTER_CHUNK_MAX 65535
/* A reply read, at most: a replaced body chunk, a header field, with
 * room; anything longer is garbage from a broken milter. */
#define MILTER_REPLY_MAX (256 * 1024)

/* Commands, MTA to milter (SMFIC_*). */
enum {
	MILTER_CMD_ABORT = 'A',
	MILTER_CMD_BODY = 'B',
	MILTER_CMD_CONNECT = 'C',
	MILTER_CMD_MACRO = 'D',
	MILTER_CMD_BODYEOB = 'E',
	MILTER_CMD_HELO = 'H',
	MILTER_CMD_HEADER = 'L',
	MILTER_CMD_MAIL = 'M',
	MILTER_CMD_EOH = 'N',
	MILTER_CMD_OPTNEG = 'O',
	MILTER_CMD_QUIT = 'Q',
	MILTER_CMD_RCPT = 'R',
	MILTER_CMD_DATA = 'T',
};

/* Replies, milter to MTA (SMFIR_*). */
enum milter_reply_kind {
	MILTER_REPLY_ADDRCPT = '+',
	MILTER_REPLY_DELRCPT = '-',
	MILTER_REPLY_ADDRCPT_PAR = '2',
	MILTER_REPLY_SHUTDOWN = '4',
	MILTER_REPLY_ACCEPT = 'a',
	MILTER_REPLY_REPLBODY = 'b',
	MILTER_REPLY_CONTINUE = 'c',
	MILTER_REPLY_DISCARD = 'd',
	MILTER_REPLY_CHGFROM = 'e',
	MILTER_REPLY_CONN_FAIL = 'f',
	MILTER_REPLY_ADDHEADER = 'h',
	MILTER_REPLY_INSHEADER = 'i',
	MILTER_REPLY_SETSYMLIST = 'l',
	MILTER_REPLY_CHGHEADER = 'm',
	MILTER_REPLY_PROGRESS = 'p',
	MILTER_REPLY_QUARANTINE = 'q',
	MILTER_REPLY_REJECT = 'r',
	MILTER_REPLY_SKIP = 's',
	MILTER_REPLY_TEMPFAIL = 't',
	MILTER_REPLY_REPLYCODE = 'y',
	MILTER_REPLY_OPTNEG = 'O',
};

/* Actions a milter may take (SMFIF_*), offered in OPTNEG. */
#define MILTER_ACTION_ADDHDRS 0x01u
#define MILTER_ACTION_CHGBODY 0x02u
#define MILTER_ACTION_ADDRCPT 0x04u
#define MILTER_ACTION_DELRCPT 0x08u
#define MILTER_ACTION_CHGHDRS 0x10u
#define MILTER_ACTION_QUARANTINE 0x20u
#define MILTER_ACTION_CHGFROM 0x40u
#define MILTER_ACTION_ADDRCPT_PAR 0x80u
#define MILTER_ACTIONS_OFFERED 0xffu

/* Steps a milter may skip or not answer (SMFIP_*). */
#define MILTER_PROTO_NOCONNECT 0x1u
#define MILTER_PROTO_NOHELO 0x2u
#define MILTER_PROTO_NOMAIL 0x4u
#define MILTER_PROTO_NORCPT 0x8u
#define MILTER_PROTO_NOBODY 0x10u
#define MILTER_PROTO_NOHDRS 0x20u
#define MILTER_PROTO_NOEOH 0x40u
#define MILTER_PROTO_NR_HDR 0x80u
#define MILTER_PROTO_NOUNKNOWN 0x100u
#define MILTER_PROTO_NODATA 0x200u
#define MILTER_PROTO_SKIP 0x400u
#define MILTER_PROTO_RCPT_REJ 0x800u
#define MILTER_PROTO_NR_CONN 0x1000u
#define MILTER_PROTO_NR_HELO 0x2000u
#define MILTER_PROTO_NR_MAIL 0x4000u
#define MILTER_PROTO_NR_RCPT 0x8000u
#define MILTER_PROTO_NR_DATA 0x10000u
#define MILTER_PROTO_NR_UNKN 0x20000u
#define MILTER_PROTO_NR_EOH 0x40000u
#define MILTER_PROTO_NR_BODY 0x80000u
/* Everything above but RCPT_REJ: recipients we refused are never sent. */
#define MILTER_PROTOCOL_OFFERED 0xff7ffu

/* The macro stages of an OPTNEG reply (SMFIM_*). */
#define MILTER_STAGES 7

/* A packet being built in a caller's buffer; `overflow` once it did not
 * fit (the packet is then unusable). */
struct milter_builder {
	uint8_t *buf;
	size_t cap, len;
	bool overflow;
};

void milter_begin(struct milter_builder *b, uint8_t *buf, size_t cap,
		  char command);
void milter_put_u16(struct milter_builder *b, uint16_t v);
void milter_put_u32(struct milter_builder *b, uint32_t v);
void milter_put_bytes(struct milter_builder *b, const void *data, size_t len);
/* A string and its NUL; NULL is put as "". */
void milter_put_string(struct milter_builder *b, const char *s);
/* Each space-separated word of `params` as a string of its own: the
 * ESMTP parameters of a MAIL or RCPT command as the client wrote them
 * ("SIZE=10 BODY=8BITMIME"), sent after the address as Sendmail and
 * Postfix send them. NULL or "" puts nothing. */
void milter_put_params(struct milter_builder *b, const char *params);
/* Fill in the length; the packet's size, or 0 when it overflowed. */
size_t milter_end(struct milter_builder *b);

enum milter_parse_result {
	MILTER_PARSE_OK,
	MILTER_PARSE_AGAIN, /* a partial packet: read more */
	MILTER_PARSE_BAD,   /* garbage: the milter is broken */
};

/* A reply, its strings pointing into the parsed input. */
struct milter_reply {
	enum milter_reply_kind kind;
	uint32_t index; /* CHGHEADER, INSHEADER */
	/* REPLYCODE: the whole reply ("550 5.7.1 text", maybe several
	 * CRLF-separated lines); headers: name and value; ADDRCPT,
	 * DELRCPT, CHGFROM: the address in name, its arguments in value
	 * (NULL: none); QUARANTINE: the reason in value */
	const char *name, *value;
	const uint8_t *data; /* REPLBODY */
	size_t data_len;
	unsigned code; /* REPLYCODE: 4xx or 5xx */
	/* OPTNEG */
	uint32_t version, actions, protocol;
	const char *macros[MILTER_STAGES]; /* NULL: none asked */
};

/*
 * Parse the reply at the start of `in`. With MILTER_PARSE_OK, *used is
 * the packet's size. The strings of a packet must each end in NUL and
 * fill it exactly; a reply code must be 4xx or 5xx with printable text.
 */
enum milter_parse_result milter_parse_reply(const uint8_t *in, size_t len,
					    size_t *used,
					    struct milter_reply *out);

/* What the ESMTP parameters of an added recipient (ADDRCPT_PAR) mean
 * for it: NOTIFY and ORCPT, each with the syntax a client's RCPT must
 * follow. */
struct milter_rcpt_params {
	unsigned notify;		/* SMTP_NOTIFY_* bits; 0: not given */
	char orcpt[SMTP_ORCPT_MAX + 1]; /* "rfc822;..."; "": not given */
};

/* What became of one parameter. */
enum milter_rcpt_param_result {
	MILTER_RCPT_PARAM_APPLIED, /* NOTIFY or ORCPT, now in the params */
	MILTER_RCPT_PARAM_IGNORED, /* a keyword that means nothing for a
				      recipient (SIZE=, BODY=, ...) */
	MILTER_RCPT_PARAM_BAD,	   /* malformed, or given twice: refused */
};

/*
 * The next parameter of `args` (ADDRCPT_PAR's second string, its
 * parameters separated by spaces) from *at: false at its end; else *param
 * and *len name the parameter, *at moves past it, and *result says what
 * became of it. Start with *at = 0 and `out` zeroed.
 */
bool milter_rcpt_param_next(const char *args, size_t *at, const char **param,
			    size_t *len, struct milter_rcpt_params *out,
			    enum milter_rcpt_param_result *result);

/* The reply's one-letter name for logs ("accept", "reject", ...). */
const char *milter_reply_name(enum milter_reply_kind kind);

#endif
