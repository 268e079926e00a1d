/*
 * The milter packet codec (see milter_proto.h): builders that write a
 * command into a bounded buffer, and the reply parser, which checks
 * each reply's layout against its command before anything trusts it.
 */
#include <string.h>

#include "facteur/milter_proto.h"

void milter_begin(struct milter_builder *b, uint8_t *buf, size_t cap,
		  char command)
{
	b->buf = buf;
	b->cap = cap;
	b->len = 0;
	b->overflow = false;
	milter_put_u32(b, 0); /* the length, filled in by milter_end */
	milter_put_bytes(b, &command, 1);
}

void milter_put_bytes(struct milter_builder *b, const void *data, size_t len)
{
	if (b->overflow || b->cap - b->len < len) {
		b->overflow = true;
		return;
	}
	memcpy(b->buf + b->len, data, len);
	b->len += len;
}

void milter_put_u16(struct milter_builder *b, uint16_t v)
{
	uint8_t be[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	milter_put_bytes(b, be, sizeof be);
}

void milter_put_u32(struct milter_builder *b, uint32_t v)
{
	uint8_t be[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16),
			 (uint8_t)(v >> 8), (uint8_t)v};
	milter_put_bytes(b, be, sizeof be);
}

void milter_put_string(struct milter_builder *b, const char *s)
{
	if (s == NULL)
		s = "";
	milter_put_bytes(b, s, strlen(s) + 1);
}

void milter_put_params(struct milter_builder *b, const char *params)
{
	for (const char *p = params; p != NULL && *p != '\0';) {
		size_t n = strcspn(p, " ");
		if (n > 0) {
			milter_put_bytes(b, p, n);
			milter_put_bytes(b, "", 1);
		}
		p += n + strspn(p + n, " ");
	}
}

size_t milter_end(struct milter_builder *b)
{
	if (b->overflow || b->len < 5)
		return 0;
	uint32_t n = (uint32_t)(b->len - 4);
	b->buf[0] = (uint8_t)(n >> 24);
	b->buf[1] = (uint8_t)(n >> 16);
	b->buf[2] = (uint8_t)(n >> 8);
	b->buf[3] = (uint8_t)n;
	return b->len;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* The NUL-terminated string at *p within end; NULL when unterminated. */
static const char *take_string(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *nul = memchr(*p, '\0', (size_t)(end - *p));
	if (nul == NULL)
		return NULL;
	const char *s = (const char *)*p;
	*p = nul + 1;
	return s;
}

/* One line of an SMTP reply: the code, ' ' or '-' (not after the last
 * line), printable text. */
static bool reply_line_valid(const char *line, size_t len, const char *code,
			     bool last)
{
	if (len < 4 || memcmp(line, code, 3) != 0)
		return false;
	if (line[3] != ' ' && !(line[3] == '-' && !last))
		return false;
	for (size_t i = 4; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

/* "550 5.7.1 text", or several lines joined by CRLF ("550-...\r\n550
 * ..."); the code a 4xx or 5xx. */
static bool reply_code_valid(const char *text, unsigned *code)
{
	if (!(text[0] == '4' || text[0] == '5') || text[1] < '0' ||
	    text[1] > '9' || text[2] < '0' || text[2] > '9')
		return false;
	*code = (unsigned)((text[0] - '0') * 100 + (text[1] - '0') * 10 +
			   (text[2] - '0'));
	for (const char *line = text;;) {
		const char *crlf = strstr(line, "\r\n");
		size_t len =
		    crlf != NULL ? (size_t)(crlf - line) : strlen(line);
		if (!reply_line_valid(line, len, text, crlf == NULL))
			return false;
		if (crlf == NULL)
			return true;
		line = crlf + 2;
	}
}

static enum milter_parse_result
parse_optneg(const uint8_t *p, const uint8_t *end, struct milter_reply *out)
{
	if (end - p < 12)
		return MILTER_PARSE_BAD;
	out->version = get_u32(p);
	out->actions = get_u32(p + 4);
	out->protocol = get_u32(p + 8);
	p += 12;
	while (p < end) {
		if (end - p < 5)
			return MILTER_PARSE_BAD;
		uint32_t stage = get_u32(p);
		p += 4;
		const char *list = take_string(&p, end);
		if (stage >= MILTER_STAGES || list == NULL)
			return MILTER_PARSE_BAD;
		out->macros[stage] = list;
	}
	return MILTER_PARSE_OK;
}

/* The strings a reply holds: `count` of them (the last optional when
 * `optional`), filling the data exactly. */
static enum milter_parse_result parse_strings(const uint8_t *p,
					      const uint8_t *end, int count,
					      bool optional,
					      struct milter_reply *out)
{
	const char **slots[2] = {&out->name, &out->value};
	for (int i = 0; i < count; i++) {
		if (p == end && optional && i == count - 1)
			break;
		*slots[i] = take_string(&p, end);
		if (*slots[i] == NULL)
			return MILTER_PARSE_BAD;
	}
	return p == end ? MILTER_PARSE_OK : MILTER_PARSE_BAD;
}

static enum milter_parse_result parse_data(enum milter_reply_kind kind,
					   const uint8_t *p, const uint8_t *end,
					   struct milter_reply *out)
{
	switch (kind) {
	case MILTER_REPLY_ACCEPT:
	case MILTER_REPLY_CONTINUE:
	case MILTER_REPLY_DISCARD:
	case MILTER_REPLY_REJECT:
	case MILTER_REPLY_TEMPFAIL:
	case MILTER_REPLY_SKIP:
	case MILTER_REPLY_PROGRESS:
	case MILTER_REPLY_SHUTDOWN:
	case MILTER_REPLY_CONN_FAIL:
		return p == end ? MILTER_PARSE_OK : MILTER_PARSE_BAD;
	case MILTER_REPLY_OPTNEG:
		return parse_optneg(p, end, out);
	case MILTER_REPLY_REPLBODY:
		out->data = p;
		out->data_len = (size_t)(end - p);
		return MILTER_PARSE_OK;
	case MILTER_REPLY_REPLYCODE:
		if (parse_strings(p, end, 1, false, out) != MILTER_PARSE_OK ||
		    !reply_code_valid(out->name, &out->code))
			return MILTER_PARSE_BAD;
		return MILTER_PARSE_OK;
	case MILTER_REPLY_QUARANTINE:
		if (parse_strings(p, end, 1, false, out) != MILTER_PARSE_OK)
			return MILTER_PARSE_BAD;
		out->value = out->name;
		out->name = NULL;
		return MILTER_PARSE_OK;
	case MILTER_REPLY_ADDHEADER:
		return parse_strings(p, end, 2, false, out);
	case MILTER_REPLY_CHGHEADER:
	case MILTER_REPLY_INSHEADER:
		if (end - p < 4)
			return MILTER_PARSE_BAD;
		out->index = get_u32(p);
		return parse_strings(p + 4, end, 2, false, out);
	case MILTER_REPLY_ADDRCPT:
	case MILTER_REPLY_DELRCPT:
		return parse_strings(p, end, 1, false, out);
	case MILTER_REPLY_ADDRCPT_PAR:
	case MILTER_REPLY_CHGFROM:
		return parse_strings(p, end, 2, true, out);
	case MILTER_REPLY_SETSYMLIST:
	default:
		return MILTER_PARSE_BAD;
	}
}

enum milter_parse_result milter_parse_reply(const uint8_t *in, size_t len,
					    size_t *used,
					    struct milter_reply *out)
{
	memset(out, 0, sizeof *out);
	if (len < 4)
		return MILTER_PARSE_AGAIN;
	uint32_t n = get_u32(in);
	if (n == 0 || n > MILTER_REPLY_MAX)
		return MILTER_PARSE_BAD;
	if (len - 4 < n)
		return MILTER_PARSE_AGAIN;
	out->kind = (enum milter_reply_kind)in[4];
	enum milter_parse_result r =
	    parse_data(out->kind, in + 5, in + 4 + n, out);
	if (r == MILTER_PARSE_OK)
		*used = 4 + (size_t)n;
	return r;
}

/* One parameter of an added recipient, read as RCPT reads its own
 * (smtp_proto), on top of those before it. */
static enum milter_rcpt_param_result
rcpt_param_apply(const char *param, size_t len, struct milter_rcpt_params *out)
{
	struct smtp_rcpt rcpt;
	memset(&rcpt, 0, sizeof rcpt);
	rcpt.notify = out->notify;
	memcpy(rcpt.orcpt, out->orcpt, sizeof rcpt.orcpt);
	switch (smtp_parse_rcpt_param(param, len, &rcpt)) {
	case SMTP_PARSE_OK:
		break;
	case SMTP_PARSE_UNKNOWN_PARAM:
		return MILTER_RCPT_PARAM_IGNORED;
	default:
		return MILTER_RCPT_PARAM_BAD;
	}
	out->notify = rcpt.notify;
	memcpy(out->orcpt, rcpt.orcpt, sizeof out->orcpt);
	return MILTER_RCPT_PARAM_APPLIED;
}

bool milter_rcpt_param_next(const char *args, size_t *at, const char **param,
			    size_t *len, struct milter_rcpt_params *out,
			    enum milter_rcpt_param_result *result)
{
	if (args == NULL)
		return false;
	size_t i = *at + strspn(args + *at, " ");
	*at = i;
	if (args[i] == '\0')
		return false;
	*param = args + i;
	*len = strcspn(args + i, " ");
	*at = i + *len;
	*result = rcpt_param_apply(*param, *len, out);
	return true;
}

const char *milter_reply_name(enum milter_reply_kind kind)
{
	switch (kind) {
	case MILTER_REPLY_ACCEPT:
		return "accept";
	case MILTER_REPLY_CONTINUE:
		return "continue";
	case MILTER_REPLY_DISCARD:
		return "discard";
	case MILTER_REPLY_REJECT:
	case MILTER_REPLY_REPLYCODE:
		return "reject";
	case MILTER_REPLY_TEMPFAIL:
		return "tempfail";
	case MILTER_REPLY_QUARANTINE:
		return "quarantine";
	default:
		return "other";
	}
}
