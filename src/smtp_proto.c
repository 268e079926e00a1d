/*
 * SMTP as pure data (see smtp_proto.h): command lines, paths, ESMTP
 * parameters (their xtext decoded by text.h), and the DATA/BDAT stream
 * decoder. Nothing here does I/O or allocates, so every function can be
 * driven by tests and fuzzers.
 * ASCII case folding is done by hand: the locale must not change the
 * protocol.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "facteur/smtp_proto.h"

#include "facteur/ascii.h"
#include "facteur/text.h"
#include "facteur/utf8.h"

/* RFC 5322 atext, ASCII part. */
static bool is_atext(unsigned char c)
{
	return ascii_is_alnum(c) ||
	       (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* Command lines */

static const char *const verb_names[] = {
    [SMTP_VERB_UNKNOWN] = "UNKNOWN", [SMTP_VERB_HELO] = "HELO",
    [SMTP_VERB_EHLO] = "EHLO",	     [SMTP_VERB_MAIL] = "MAIL",
    [SMTP_VERB_RCPT] = "RCPT",	     [SMTP_VERB_DATA] = "DATA",
    [SMTP_VERB_BDAT] = "BDAT",	     [SMTP_VERB_RSET] = "RSET",
    [SMTP_VERB_NOOP] = "NOOP",	     [SMTP_VERB_QUIT] = "QUIT",
    [SMTP_VERB_HELP] = "HELP",	     [SMTP_VERB_VRFY] = "VRFY",
    [SMTP_VERB_EXPN] = "EXPN",	     [SMTP_VERB_STARTTLS] = "STARTTLS",
    [SMTP_VERB_AUTH] = "AUTH",
};

const char *smtp_verb_name(enum smtp_verb verb)
{
	if ((unsigned)verb >= sizeof verb_names / sizeof verb_names[0])
		return verb_names[SMTP_VERB_UNKNOWN];
	return verb_names[verb];
}

void smtp_parse_command(const char *line, size_t len, struct smtp_command *cmd)
{
	size_t verb_len = 0, start, end;
	unsigned v;

	cmd->verb = SMTP_VERB_UNKNOWN;
	cmd->arg = line;
	cmd->arglen = 0;
	if (line == NULL)
		return;

	while (verb_len < len && line[verb_len] != ' ')
		verb_len++;
	/* The longest verb is STARTTLS; skip the table for anything longer. */
	if (verb_len > 0 && verb_len <= 8) {
		char lower[8];
		size_t i;

		for (i = 0; i < verb_len; i++)
			lower[i] = ascii_lower(line[i]);
		for (v = SMTP_VERB_HELO; v <= SMTP_VERB_AUTH; v++) {
			const char *name = verb_names[v];
			if (strlen(name) != verb_len)
				continue;
			for (i = 0; i < verb_len; i++) {
				if (ascii_lower(name[i]) != lower[i])
					break;
			}
			if (i == verb_len) {
				cmd->verb = (enum smtp_verb)v;
				break;
			}
		}
	}

	start = verb_len;
	while (start < len && line[start] == ' ')
		start++;
	end = len;
	while (end > start && (line[end - 1] == ' ' || line[end - 1] == '\t'))
		end--;
	cmd->arg = line + start;
	cmd->arglen = end - start;
}

/* Domains and paths */

/* The inside of "[...]": a dotted quad or "IPv6:" and an IPv6 address. */
static bool address_literal_valid(const char *s, size_t len)
{
	char buf[INET6_ADDRSTRLEN];
	unsigned char addr[sizeof(struct in6_addr)];
	int family = AF_INET;

	if (len >= 5 && ascii_ieq(s, 5, "ipv6:")) {
		family = AF_INET6;
		s += 5;
		len -= 5;
	}
	/* inet_pton wants a C string: anything longer cannot be valid. */
	if (len == 0 || len >= sizeof buf || memchr(s, '\0', len) != NULL)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return inet_pton(family, buf, addr) == 1;
}

/* Sets *utf8 when a label holds non-ASCII octets. */
static bool domain_name_valid(const char *d, size_t len, bool *utf8)
{
	const unsigned char *p = (const unsigned char *)d;
	size_t i = 0, label_start = 0;

	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	while (i <= len) {
		if (i == len || p[i] == '.') {
			size_t label_len = i - label_start;
			if (label_len == 0 || label_len > 63 ||
			    p[label_start] == '-' || p[i - 1] == '-')
				return false;
			label_start = i + 1;
			i++;
		} else if (p[i] < 0x80) {
			if (!ascii_is_alnum(p[i]) && p[i] != '-')
				return false;
			i++;
		} else {
			size_t n = utf8_sequence_length(p + i, len - i);
			if (n == 0)
				return false;
			*utf8 = true;
			i += n;
		}
	}
	return true;
}

/* Either form of RFC 5321 §4.1.2 "Domain / address-literal". */
static bool domain_or_literal_valid(const char *d, size_t len, bool *utf8)
{
	if (len >= 2 && d[0] == '[')
		return d[len - 1] == ']' &&
		       address_literal_valid(d + 1, len - 2);
	return domain_name_valid(d, len, utf8);
}

bool smtp_domain_valid(const char *domain, size_t len)
{
	bool utf8 = false;

	if (domain == NULL)
		return false;
	return domain_or_literal_valid(domain, len, &utf8);
}

/*
 * The source route "@a,@b:" at text[*i] (RFC 5321 A-d-l), checked and
 * skipped: RFC 5321 §3.3 says to ignore it.
 */
static bool skip_source_route(const char *text, size_t len, size_t *i)
{
	size_t p = *i;

	for (;;) {
		size_t start;
		bool utf8 = false;

		if (p >= len || text[p] != '@')
			return false;
		start = ++p;
		while (p < len && text[p] != ',' && text[p] != ':' &&
		       text[p] != '>')
			p++;
		if (p >= len || text[p] == '>' ||
		    !domain_name_valid(text + start, p - start, &utf8))
			return false;
		if (text[p++] == ':')
			break;
	}
	*i = p;
	return true;
}

/* A Dot-string local part; stops before '@' or '>'. */
static bool skip_dot_string(const char *text, size_t len, size_t *i, bool *utf8)
{
	const unsigned char *p = (const unsigned char *)text;
	size_t at = *i;
	bool need_atom = true;

	while (at < len && p[at] != '@' && p[at] != '>') {
		if (p[at] == '.') {
			if (need_atom)
				return false;
			need_atom = true;
			at++;
		} else if (p[at] >= 0x80) {
			size_t n = utf8_sequence_length(p + at, len - at);
			if (n == 0)
				return false;
			*utf8 = true;
			need_atom = false;
			at += n;
		} else if (is_atext(p[at])) {
			need_atom = false;
			at++;
		} else {
			return false;
		}
	}
	if (need_atom)
		return false;
	*i = at;
	return true;
}

/* A Quoted-string local part (qtextSMTP, quoted-pairSMTP, UTF-8). */
static bool skip_quoted_string(const char *text, size_t len, size_t *i,
			       bool *utf8)
{
	const unsigned char *p = (const unsigned char *)text;
	size_t at = *i + 1;

	while (at < len) {
		unsigned char c = p[at];
		if (c == '"') {
			*i = at + 1;
			return true;
		}
		if (c == '\\') {
			if (at + 1 >= len || p[at + 1] < 32 || p[at + 1] > 126)
				return false;
			at += 2;
		} else if (c >= 0x80) {
			size_t n = utf8_sequence_length(p + at, len - at);
			if (n == 0)
				return false;
			*utf8 = true;
			at += n;
		} else if (c >= 32 && c <= 126) {
			at++;
		} else {
			return false;
		}
	}
	return false;
}

enum smtp_parse_result smtp_parse_path(const char *text, size_t len,
				       bool allow_null, bool allow_postmaster,
				       struct smtp_path *out, size_t *consumed)
{
	size_t i = 1, local_start, at, domain_start, gt, addr_len;
	bool utf8 = false, routed = false;
	const char *close;

	memset(out, 0, sizeof *out);
	*consumed = 0;
	if (text == NULL || len < 2 || text[0] != '<')
		return SMTP_PARSE_BAD_ADDRESS;

	if (text[1] == '>') {
		if (!allow_null)
			return SMTP_PARSE_BAD_ADDRESS;
		out->is_null = true;
		*consumed = 2;
		return SMTP_PARSE_OK;
	}

	if (text[i] == '@') {
		if (!skip_source_route(text, len, &i))
			return SMTP_PARSE_BAD_ADDRESS;
		routed = true;
	}

	local_start = i;
	if (i < len && text[i] == '"') {
		if (!skip_quoted_string(text, len, &i, &utf8))
			return SMTP_PARSE_BAD_ADDRESS;
	} else if (!skip_dot_string(text, len, &i, &utf8)) {
		return SMTP_PARSE_BAD_ADDRESS;
	}
	if (i >= len)
		return SMTP_PARSE_BAD_ADDRESS;
	at = i;
	if (at - local_start > SMTP_LOCAL_PART_MAX)
		return SMTP_PARSE_BAD_ADDRESS;

	if (text[at] == '>') {
		/* Only <postmaster> may lack a domain (RFC 5321 §4.1.1.3). */
		if (!allow_postmaster || routed ||
		    !ascii_ieq(text + local_start, at - local_start,
			       "postmaster"))
			return SMTP_PARSE_BAD_ADDRESS;
		memcpy(out->address, text + local_start, at - local_start);
		out->address[at - local_start] = '\0';
		out->local_len = at - local_start;
		out->is_postmaster = true;
		*consumed = at + 1;
		return SMTP_PARSE_OK;
	}
	if (text[at] != '@')
		return SMTP_PARSE_BAD_ADDRESS;

	domain_start = at + 1;
	close = memchr(text + domain_start, '>', len - domain_start);
	if (close == NULL)
		return SMTP_PARSE_BAD_ADDRESS;
	gt = (size_t)(close - text);
	if (!domain_or_literal_valid(text + domain_start, gt - domain_start,
				     &utf8))
		return SMTP_PARSE_BAD_ADDRESS;

	addr_len = gt - local_start;
	if (addr_len > SMTP_PATH_MAX)
		return SMTP_PARSE_BAD_ADDRESS;
	memcpy(out->address, text + local_start, addr_len);
	out->address[addr_len] = '\0';
	out->local_len = at - local_start;
	out->utf8 = utf8;
	*consumed = gt + 1;
	return SMTP_PARSE_OK;
}

/* MAIL and RCPT parameters */

struct param {
	const char *key;
	size_t keylen;
	const char *value; /* NULL when the keyword came alone */
	size_t valuelen;
};

static bool parse_uint64(const char *s, size_t len, uint64_t *value)
{
	uint64_t v = 0;
	size_t i;

	if (len == 0)
		return false;
	for (i = 0; i < len; i++) {
		unsigned d;
		if (!ascii_is_digit((unsigned char)s[i]))
			return false;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*value = v;
	return true;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static bool keyword_valid(const char *k, size_t len)
{
	size_t i;

	if (len == 0 || !ascii_is_alnum((unsigned char)k[0]))
		return false;
	for (i = 1; i < len; i++) {
		if (!ascii_is_alnum((unsigned char)k[i]) && k[i] != '-')
			return false;
	}
	return true;
}

/*
 * Cuts the next space-separated "KEYWORD[=VALUE]" out of arg from *i.
 * Returns false at the end of the argument.
 */
static bool next_param(const char *arg, size_t len, size_t *i, struct param *pm)
{
	size_t p = *i, start, eq;

	while (p < len && arg[p] == ' ')
		p++;
	if (p >= len)
		return false;
	start = p;
	while (p < len && arg[p] != ' ')
		p++;
	*i = p;
	for (eq = start; eq < p && arg[eq] != '='; eq++)
		;
	pm->key = arg + start;
	pm->keylen = eq - start;
	if (eq < p) {
		pm->value = arg + eq + 1;
		pm->valuelen = p - eq - 1;
	} else {
		pm->value = NULL;
		pm->valuelen = 0;
	}
	return true;
}

/* Flags for parameters already seen, to refuse repeats. */
enum {
	SEEN_SIZE = 1 << 0,
	SEEN_BODY = 1 << 1,
	SEEN_SMTPUTF8 = 1 << 2,
	SEEN_RET = 1 << 3,
	SEEN_ENVID = 1 << 4,
	SEEN_AUTH = 1 << 5,
	SEEN_NOTIFY = 1 << 6,
	SEEN_ORCPT = 1 << 7,
	SEEN_REQUIRETLS = 1 << 8,
};

static bool first_time(unsigned *seen, unsigned flag)
{
	if (*seen & flag)
		return false;
	*seen |= flag;
	return true;
}

/* The values BODY= and RET= take, by their enum; 0 (unspecified) has
 * none. */
static const char *const body_names[] = {
    [SMTP_BODY_7BIT] = "7bit", [SMTP_BODY_8BITMIME] = "8bitmime"};
static const char *const ret_names[] = {
    [SMTP_RET_FULL] = "full", [SMTP_RET_HDRS] = "hdrs"};

/* A parameter given once whose value is one of `names` (any case): its
 * index in *out. */
static bool keyword_param(unsigned *seen, unsigned flag, const char *v,
			  size_t vl, const char *const *names, size_t count,
			  int *out)
{
	if (!first_time(seen, flag) || v == NULL)
		return false;
	for (size_t i = 0; i < count; i++) {
		if (names[i] != NULL && ascii_ieq(v, vl, names[i])) {
			*out = (int)i;
			return true;
		}
	}
	return false;
}

static enum smtp_parse_result mail_param(const struct param *pm, unsigned *seen,
					 void *arg)
{
	struct smtp_mail *out = arg;
	const char *v = pm->value;
	size_t vl = pm->valuelen;
	int i;

	if (ascii_ieq(pm->key, pm->keylen, "size")) {
		if (!first_time(seen, SEEN_SIZE) || v == NULL ||
		    !parse_uint64(v, vl, &out->size))
			return SMTP_PARSE_BAD_PARAM;
		out->size_given = true;
	} else if (ascii_ieq(pm->key, pm->keylen, "body")) {
		if (!keyword_param(seen, SEEN_BODY, v, vl, body_names,
				   sizeof body_names / sizeof body_names[0],
				   &i))
			return SMTP_PARSE_BAD_PARAM;
		out->body = (enum smtp_body)i;
	} else if (ascii_ieq(pm->key, pm->keylen, "smtputf8")) {
		if (!first_time(seen, SEEN_SMTPUTF8) || v != NULL)
			return SMTP_PARSE_BAD_PARAM;
		out->smtputf8 = true;
	} else if (ascii_ieq(pm->key, pm->keylen, "requiretls")) {
		if (!first_time(seen, SEEN_REQUIRETLS) || v != NULL)
			return SMTP_PARSE_BAD_PARAM;
		out->requiretls = true;
	} else if (ascii_ieq(pm->key, pm->keylen, "ret")) {
		if (!keyword_param(seen, SEEN_RET, v, vl, ret_names,
				   sizeof ret_names / sizeof ret_names[0], &i))
			return SMTP_PARSE_BAD_PARAM;
		out->ret = (enum smtp_ret)i;
	} else if (ascii_ieq(pm->key, pm->keylen, "envid")) {
		int n, k;
		if (!first_time(seen, SEEN_ENVID) || v == NULL || vl == 0)
			return SMTP_PARSE_BAD_PARAM;
		n = text_xtext_decode(v, vl, out->envid, sizeof out->envid, 0);
		if (n < 0)
			goto bad_envid;
		/* RFC 3461 §4.4: printable US-ASCII once decoded. */
		for (k = 0; k < n; k++) {
			unsigned char c = (unsigned char)out->envid[k];
			if (c < 32 || c > 126)
				goto bad_envid;
		}
	} else if (ascii_ieq(pm->key, pm->keylen, "auth")) {
		if (!first_time(seen, SEEN_AUTH) || v == NULL || vl == 0)
			return SMTP_PARSE_BAD_PARAM;
		if (!ascii_ieq(v, vl, "<>") && !text_xtext_valid(v, vl))
			return SMTP_PARSE_BAD_PARAM;
		out->auth_given = true;
	} else {
		return SMTP_PARSE_UNKNOWN_PARAM;
	}
	return SMTP_PARSE_OK;

bad_envid:
	out->envid[0] = '\0';
	return SMTP_PARSE_BAD_PARAM;
}

/* NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1). */
static bool parse_notify(const char *v, size_t len, unsigned *notify)
{
	unsigned bits = 0;
	size_t i = 0;

	for (;;) {
		size_t start = i;
		unsigned bit;

		while (i < len && v[i] != ',')
			i++;
		if (ascii_ieq(v + start, i - start, "never"))
			bit = SMTP_NOTIFY_NEVER;
		else if (ascii_ieq(v + start, i - start, "success"))
			bit = SMTP_NOTIFY_SUCCESS;
		else if (ascii_ieq(v + start, i - start, "failure"))
			bit = SMTP_NOTIFY_FAILURE;
		else if (ascii_ieq(v + start, i - start, "delay"))
			bit = SMTP_NOTIFY_DELAY;
		else
			return false;
		if (bits & bit)
			return false;
		bits |= bit;
		if (i == len)
			break;
		i++; /* the comma */
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return false;
	*notify = bits;
	return true;
}

/* ORCPT=addr-type ";" xtext (RFC 3461 §4.2), addr-type an atom. */
static bool orcpt_valid(const char *v, size_t len)
{
	const char *semi;
	size_t type_len, i;

	if (len == 0 || len > SMTP_ORCPT_MAX)
		return false;
	semi = memchr(v, ';', len);
	if (semi == NULL)
		return false;
	type_len = (size_t)(semi - v);
	if (type_len == 0 || type_len + 1 == len)
		return false;
	for (i = 0; i < type_len; i++) {
		if (!is_atext((unsigned char)v[i]))
			return false;
	}
	return text_xtext_valid(semi + 1, len - type_len - 1);
}

static enum smtp_parse_result rcpt_param(const struct param *pm, unsigned *seen,
					 void *arg)
{
	struct smtp_rcpt *out = arg;
	const char *v = pm->value;
	size_t vl = pm->valuelen;

	if (ascii_ieq(pm->key, pm->keylen, "notify")) {
		if (!first_time(seen, SEEN_NOTIFY) || v == NULL ||
		    !parse_notify(v, vl, &out->notify))
			return SMTP_PARSE_BAD_PARAM;
	} else if (ascii_ieq(pm->key, pm->keylen, "orcpt")) {
		if (!first_time(seen, SEEN_ORCPT) || v == NULL ||
		    !orcpt_valid(v, vl))
			return SMTP_PARSE_BAD_PARAM;
		memcpy(out->orcpt, v, vl);
		out->orcpt[vl] = '\0';
	} else {
		return SMTP_PARSE_UNKNOWN_PARAM;
	}
	return SMTP_PARSE_OK;
}

/*
 * "FROM:" or "TO:", then optional spaces: returns the offset of the path,
 * or 0 when the prefix is missing.
 */
static size_t skip_prefix(const char *arg, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);

	if (arg == NULL || len < n || !ascii_ieq(arg, n, prefix))
		return 0;
	while (n < len && arg[n] == ' ')
		n++;
	return n;
}

typedef enum smtp_parse_result param_fn(const struct param *pm, unsigned *seen,
					void *out);

/* "FROM:<path>" (mail) or "TO:<path>", then each ESMTP parameter through
 * `param`, which fills `out`. */
static enum smtp_parse_result parse_envelope(const char *arg, size_t len,
					     bool mail, struct smtp_path *path,
					     param_fn *param, void *out)
{
	enum smtp_parse_result r;
	struct param pm;
	size_t i, used;
	unsigned seen = 0;

	i = skip_prefix(arg, len, mail ? "from:" : "to:");
	if (i == 0)
		return SMTP_PARSE_SYNTAX;
	r = smtp_parse_path(arg + i, len - i, mail, !mail, path, &used);
	if (r != SMTP_PARSE_OK)
		return r;
	i += used;
	if (i < len && arg[i] != ' ')
		return SMTP_PARSE_BAD_ADDRESS;
	while (r == SMTP_PARSE_OK && next_param(arg, len, &i, &pm))
		r = keyword_valid(pm.key, pm.keylen) ? param(&pm, &seen, out)
						     : SMTP_PARSE_SYNTAX;
	return r;
}

enum smtp_parse_result smtp_parse_mail(const char *arg, size_t len,
				       struct smtp_mail *out)
{
	memset(out, 0, sizeof *out);
	return parse_envelope(arg, len, true, &out->from, mail_param, out);
}

enum smtp_parse_result smtp_parse_rcpt(const char *arg, size_t len,
				       struct smtp_rcpt *out)
{
	memset(out, 0, sizeof *out);
	return parse_envelope(arg, len, false, &out->to, rcpt_param, out);
}

enum smtp_parse_result smtp_parse_rcpt_param(const char *param, size_t len,
					     struct smtp_rcpt *out)
{
	struct param pm;
	size_t i = 0;
	unsigned seen = (out->notify != 0 ? SEEN_NOTIFY : 0) |
			(out->orcpt[0] != '\0' ? SEEN_ORCPT : 0);

	if (param == NULL || len == 0 || memchr(param, ' ', len) != NULL ||
	    !next_param(param, len, &i, &pm))
		return SMTP_PARSE_SYNTAX;
	if (!keyword_valid(pm.key, pm.keylen))
		return SMTP_PARSE_SYNTAX;
	/* a value refused leaves out as it was */
	struct smtp_rcpt was = *out;
	enum smtp_parse_result r = rcpt_param(&pm, &seen, out);
	if (r != SMTP_PARSE_OK)
		*out = was;
	return r;
}

enum smtp_parse_result smtp_parse_bdat(const char *arg, size_t len,
				       uint64_t *size, bool *last)
{
	size_t i = 0, start, after;

	*size = 0;
	*last = false;
	if (arg == NULL)
		return SMTP_PARSE_SYNTAX;
	while (i < len && arg[i] == ' ')
		i++;
	start = i;
	while (i < len && ascii_is_digit((unsigned char)arg[i]))
		i++;
	if (!parse_uint64(arg + start, i - start, size))
		goto syntax;
	after = i;
	while (i < len && arg[i] == ' ')
		i++;
	if (i < len) {
		if (i == after || len - i < 4 || !ascii_ieq(arg + i, 4, "last"))
			goto syntax;
		i += 4;
		while (i < len && arg[i] == ' ')
			i++;
		if (i < len)
			goto syntax;
		*last = true;
	}
	return SMTP_PARSE_OK;

syntax:
	*size = 0;
	*last = false;
	return SMTP_PARSE_SYNTAX;
}

/*
 * The message stream decoder. Input states: where we are in the client's
 * bytes. DATA_BOL is "just after a real CRLF (or at the start)", the only
 * place where a dot is special; DATA_DOT and DATA_DOT_CR hold a possible
 * end marker whose bytes have not been decided yet (they may be split
 * across feeds).
 */
enum data_state {
	DATA_BOL,
	DATA_DOT,
	DATA_DOT_CR,
	DATA_TEXT,
	DATA_CR,
	DATA_DONE,
};

/*
 * Received: detection uses line_prefix_len as a matcher position: 0..8 is
 * how much of "received" matched, then WSP* before the colon; HDR_DECIDED
 * once the line is known to be some other field (or a continuation).
 */
#define HDR_AFTER_NAME 8
#define HDR_IN_WSP 9
#define HDR_DECIDED 10

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode)
{
	memset(d, 0, sizeof *d);
	d->mode = mode;
	d->state = mode == SMTP_DATA_DOTTED ? DATA_BOL : DATA_TEXT;
	d->out_bol = true;
	d->in_headers = true;
	d->line_prefix_len = HDR_DECIDED;
}

static void header_match(struct smtp_data *d, const char *p, size_t n)
{
	static const char name[] = "received";
	size_t i;

	for (i = 0; i < n && d->line_prefix_len != HDR_DECIDED; i++) {
		unsigned char c = (unsigned char)p[i];

		if (d->line_prefix_len < HDR_AFTER_NAME) {
			if ((unsigned char)ascii_lower((char)c) ==
			    (unsigned char)name[d->line_prefix_len])
				d->line_prefix_len++;
			else
				d->line_prefix_len = HDR_DECIDED;
		} else if (c == ':') {
			if (d->received_count < UINT_MAX)
				d->received_count++;
			d->line_prefix_len = HDR_DECIDED;
		} else if (c == ' ' || c == '\t') {
			d->line_prefix_len = HDR_IN_WSP;
		} else {
			d->line_prefix_len = HDR_DECIDED;
		}
	}
}

/* Appends n > 0 octets of line content, stuffing a leading dot. */
static char *emit_text(struct smtp_data *d, char *o, const char *p, size_t n)
{
	if (d->out_bol) {
		d->out_bol = false;
		if (p[0] == '.')
			*o++ = '.';
		if (d->in_headers)
			d->line_prefix_len =
			    p[0] == ' ' || p[0] == '\t' ? HDR_DECIDED : 0;
	}
	if (d->in_headers && d->line_prefix_len != HDR_DECIDED)
		header_match(d, p, n);
	memcpy(o, p, n);
	d->size += n;
	return o + n;
}

static char *emit_eol(struct smtp_data *d, char *o)
{
	if (d->out_bol)
		d->in_headers = false; /* an empty line ends the header */
	*o++ = '\r';
	*o++ = '\n';
	d->size += 2;
	d->out_bol = true;
	return o;
}

size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t inlen,
		      char *out, size_t *outlen)
{
	char *o = out;
	size_t i = 0;
	size_t lf = 0; /* offset of the next LF at or after i, or inlen */
	bool lf_known = false;

	while (i < inlen && d->state != DATA_DONE) {
		switch (d->state) {
		case DATA_BOL:
			if (in[i] == '.') {
				i++;
				d->state = DATA_DOT;
			} else {
				d->state = DATA_TEXT;
			}
			break;
		case DATA_DOT:
			if (in[i] == '\r') {
				i++;
				d->state = DATA_DOT_CR;
			} else {
				/* A stuffing dot: dropped, the line goes on. */
				d->state = DATA_TEXT;
			}
			break;
		case DATA_DOT_CR:
			if (in[i] == '\n') {
				i++;
				d->state = DATA_DONE;
				d->done = true;
				break;
			}
			/* "." then a bare CR: an empty line, not the end. */
			o = emit_eol(d, o);
			d->state = DATA_TEXT;
			break;
		case DATA_CR:
			if (in[i] == '\n') {
				i++;
				o = emit_eol(d, o);
				d->state = d->mode == SMTP_DATA_DOTTED
					       ? DATA_BOL
					       : DATA_TEXT;
			} else {
				/* A bare CR ends the output line only. */
				o = emit_eol(d, o);
				d->state = DATA_TEXT;
			}
			break;
		case DATA_TEXT: {
			const char *cr;
			size_t stop;

			if (in[i] == '\r') {
				i++;
				d->state = DATA_CR;
				break;
			}
			if (in[i] == '\n') {
				/* A bare LF: a line end for the output only. */
				i++;
				o = emit_eol(d, o);
				break;
			}
			/* The LF position is cached so that bare CRs in a
			 * long line do not make the scan quadratic. */
			if (!lf_known || lf < i) {
				const char *q = memchr(in + i, '\n', inlen - i);
				lf = q != NULL ? (size_t)(q - in) : inlen;
				lf_known = true;
			}
			cr = memchr(in + i, '\r', lf - i);
			stop = cr != NULL ? (size_t)(cr - in) : lf;
			o = emit_text(d, o, in + i, stop - i);
			i = stop;
			break;
		}
		case DATA_DONE:
			break;
		}
	}
	*outlen = (size_t)(o - out);
	return i;
}

size_t smtp_data_finish(struct smtp_data *d, char *out)
{
	char *o = out;

	switch (d->state) {
	case DATA_DONE:
		return 0;
	case DATA_CR:
	case DATA_DOT_CR:
		o = emit_eol(d, o);
		break;
	case DATA_DOT:
		/* A lone stuffing dot at the very end: an empty line's start,
		 * nothing to write. */
		break;
	default:
		if (!d->out_bol)
			o = emit_eol(d, o);
		break;
	}
	d->state = DATA_TEXT;
	return (size_t)(o - out);
}

/*
 * Wire form to mailbox form. A CR at the end of one call waits for the
 * next; if a non-LF follows, that CR is written then, which would make
 * the call write one octet more than it read. To keep the promise of
 * `inlen` octets, the writer then runs one octet behind ("carry") until a
 * dropped octet (the CR of a CRLF, a stuffing dot) makes room; what is
 * still carried at the end waits in the state for the next call.
 */
enum unstuff_state {
	UNSTUFF_BOL,
	UNSTUFF_TEXT,
	UNSTUFF_CR,
};

#define UNSTUFF_BASE_MASK 0xffu
#define UNSTUFF_HELD 0x100u
#define UNSTUFF_HELD_SHIFT 16

struct unstuff_writer {
	char *buf;
	size_t n;
	bool carrying;
	char carry;
};

static void unstuff_put(struct unstuff_writer *w, const char *p, size_t len)
{
	if (len == 0)
		return;
	if (!w->carrying) {
		memcpy(w->buf + w->n, p, len);
		w->n += len;
		return;
	}
	w->buf[w->n++] = w->carry;
	memcpy(w->buf + w->n, p, len - 1);
	w->n += len - 1;
	w->carry = p[len - 1];
}

size_t smtp_unstuff_to_lf(struct smtp_unstuff *u, const char *in, size_t inlen,
			  char *out)
{
	static const char lf_char = '\n', cr_char = '\r';
	struct unstuff_writer w = {.buf = out};
	unsigned st = (unsigned)u->state;
	unsigned base = st & UNSTUFF_BASE_MASK;
	size_t i = 0, lf = 0;
	bool lf_known = false;

	if (inlen == 0)
		return 0;
	if (st & UNSTUFF_HELD) {
		w.carrying = true;
		w.carry = (char)((st >> UNSTUFF_HELD_SHIFT) & 0xffu);
	} else if (base == UNSTUFF_CR && in[0] != '\n') {
		/* The previous call's CR was bare: it is owed now. */
		w.carrying = true;
		w.carry = '\r';
		base = UNSTUFF_TEXT;
	}

	while (i < inlen) {
		switch (base) {
		case UNSTUFF_BOL:
			base = UNSTUFF_TEXT;
			if (in[i] == '.')
				i++;
			break;
		case UNSTUFF_CR:
			if (in[i] == '\n') {
				i++;
				base = UNSTUFF_BOL;
				unstuff_put(&w, &lf_char, 1);
			} else {
				base = UNSTUFF_TEXT;
				unstuff_put(&w, &cr_char, 1);
			}
			break;
		default: {
			const char *cr;
			size_t stop;

			if (in[i] == '\r') {
				i++;
				base = UNSTUFF_CR;
				break;
			}
			if (in[i] == '\n') {
				i++;
				base = UNSTUFF_BOL;
				unstuff_put(&w, &lf_char, 1);
				break;
			}
			if (!lf_known || lf < i) {
				const char *q = memchr(in + i, '\n', inlen - i);
				lf = q != NULL ? (size_t)(q - in) : inlen;
				lf_known = true;
			}
			cr = memchr(in + i, '\r', lf - i);
			stop = cr != NULL ? (size_t)(cr - in) : lf;
			unstuff_put(&w, in + i, stop - i);
			i = stop;
			break;
		}
		}
	}

	st = base;
	if (w.carrying) {
		if (w.n < inlen)
			w.buf[w.n++] = w.carry;
		else
			st |= UNSTUFF_HELD | ((unsigned)(unsigned char)w.carry
					      << UNSTUFF_HELD_SHIFT);
	}
	u->state = (int)st;
	return w.n;
}
