/*
 * Delivery status notifications (RFC 3464 inside an RFC 6522
 * multipart/report), built as pure text: the envelope and the original's
 * wire form in, the DSN's wire form out. The three parts are built first
 * and the boundary chosen afterwards, so that no text we copy (a remote
 * server's reply, the original message) can contain it.
 */
#include "facteur/bounce.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/mailtime.h"
#include "facteur/smtp_proto.h"
#include "facteur/text.h"

/* Diagnostics longer than this are cut: a DSN reports, it does not carry
 * a remote server's essays. */
#define BOUNCE_REASON_MAX 512
/* Where generated lines are folded (header fields) or wrapped (text). */
#define BOUNCE_LINE_WIDTH 76
/* The part of the queue id that goes into the MIME boundary. */
#define BOUNCE_BOUNDARY_ID_MAX 32

/* A growing buffer of wire-form text; a failed allocation sticks. */
struct out {
	char *data;
	size_t len;
	size_t cap;
	size_t line_start; /* where the line being written began */
	bool failed;
};

static bool out_reserve(struct out *o, size_t more)
{
	size_t cap;
	char *p;

	if (o->failed)
		return false;
	if (more <= o->cap - o->len)
		return true;
	if (more > SIZE_MAX / 2 - o->len) {
		o->failed = true;
		return false;
	}
	cap = o->cap ? o->cap : 1024;
	while (cap - o->len < more)
		cap *= 2;
	p = realloc(o->data, cap);
	if (p == NULL) {
		o->failed = true;
		return false;
	}
	o->data = p;
	o->cap = cap;
	return true;
}

static void out_raw(struct out *o, const void *p, size_t n)
{
	if (n == 0 || !out_reserve(o, n))
		return;
	memcpy(o->data + o->len, p, n);
	o->len += n;
}

static void out_str(struct out *o, const char *s)
{
	out_raw(o, s, strlen(s));
}

/* Text from the envelope or from us: a control octet could end a line or
 * smuggle a header, so it becomes '?'; UTF-8 is kept only when allowed. */
static void out_text(struct out *o, const char *s, size_t n, bool utf8)
{
	if (n == 0 || !out_reserve(o, n))
		return;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			c = '?';
		o->data[o->len++] = (char)c;
	}
}

static void out_fmt(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void out_fmt(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		o->failed = true;
		return;
	}
	if (!out_reserve(o, (size_t)n + 1))
		return;
	va_start(ap, fmt);
	vsnprintf(o->data + o->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	o->len += (size_t)n;
}

/* End the current line: dot-stuff it if it starts with '.', add CRLF. */
static void out_eol(struct out *o)
{
	if (!o->failed && o->len > o->line_start &&
	    o->data[o->line_start] == '.' && out_reserve(o, 1)) {
		memmove(o->data + o->line_start + 1, o->data + o->line_start,
			o->len - o->line_start);
		o->len++;
	}
	out_raw(o, "\r\n", 2);
	o->line_start = o->len;
}

static void out_line(struct out *o, const char *s)
{
	out_str(o, s);
	out_eol(o);
}

/*
 * Words of `text` (single spaces, no controls) after `first`, lines cut
 * before a word that would pass BOUNCE_LINE_WIDTH; each new line starts
 * with `cont`. With cont " " this is header folding (RFC 5322 §2.2.3):
 * unfolding gives back the single space.
 */
static void out_wrapped(struct out *o, const char *first, const char *cont,
			const char *text, bool utf8)
{
	size_t col = strlen(first), i = 0, n = strlen(text);
	bool line_empty = true;

	out_str(o, first);
	while (i < n) {
		const char *sp = memchr(text + i, ' ', n - i);
		size_t wlen = sp ? (size_t)(sp - (text + i)) : n - i;

		if (!line_empty && col + 1 + wlen > BOUNCE_LINE_WIDTH) {
			out_eol(o);
			out_str(o, cont);
			col = strlen(cont);
		} else if (!line_empty) {
			out_str(o, " ");
			col++;
		}
		out_text(o, text + i, wlen, utf8);
		col += wlen;
		line_empty = false;
		i += wlen;
		while (i < n && text[i] == ' ')
			i++;
	}
	out_eol(o);
}

/*
 * Copy text that is already wire form (CRLF, dot-stuffed) as it is. What
 * is not (never in the spool, but this is the last line of defence) is
 * made so: a bare CR or LF becomes CRLF and the line it opens is
 * dot-stuffed, as is a line starting with a single '.'; so no line of the
 * copy can be a lone "." that would end DATA. It always ends with CRLF.
 */
static void out_wire(struct out *o, const char *p, size_t n)
{
	bool bol = true, fresh = false;

	if (n == 0 || !out_reserve(o, 2 * n + 2))
		return;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];

		if (bol && c == '.' && (fresh || i + 1 == n || p[i + 1] != '.'))
			o->data[o->len++] = '.';
		bol = fresh = false;
		if (c == '\r' && i + 1 < n && p[i + 1] == '\n') {
			o->data[o->len++] = '\r';
			o->data[o->len++] = '\n';
			i++;
			bol = true;
		} else if (c == '\r' || c == '\n') {
			o->data[o->len++] = '\r';
			o->data[o->len++] = '\n';
			bol = fresh = true;
		} else {
			o->data[o->len++] = c;
		}
	}
	if (o->len < 2 || o->data[o->len - 2] != '\r' ||
	    o->data[o->len - 1] != '\n')
		out_raw(o, "\r\n", 2);
	o->line_start = o->len;
}

/* Lines already complete and in wire form (a part built apart). */
static void out_lines(struct out *o, const struct out *lines)
{
	out_raw(o, lines->data, lines->len);
	o->line_start = o->len;
}

static bool out_contains(const struct out *o, const char *s)
{
	return o->len > 0 && memmem(o->data, o->len, s, strlen(s)) != NULL;
}

static bool has_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)p[i] >= 0x80)
			return true;
	}
	return false;
}

static bool str_8bit(const char *s)
{
	return s != NULL && has_8bit(s, strlen(s));
}

/*
 * A diagnostic made fit for one header field: CR, LF and other controls
 * become spaces, runs of spaces one, non-ASCII '?', and it is cut at
 * BOUNCE_REASON_MAX with "...". malloc'd ("" when nothing is left);
 * NULL when out of memory.
 */
static char *clean_reason(const char *in)
{
	size_t n = strlen(in), o = 0;
	bool space = true; /* drops leading spaces */
	char *out;

	if (n > BOUNCE_REASON_MAX)
		n = BOUNCE_REASON_MAX;
	out = malloc(n + 4);
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c <= 0x20 || c == 0x7f) {
			if (!space)
				out[o++] = ' ';
			space = true;
			continue;
		}
		out[o++] = c >= 0x80 ? '?' : (char)c;
		space = false;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	if (strlen(in) > BOUNCE_REASON_MAX && o > 0) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

/* x.y.z with a class digit and one to three digits in each other part
 * (RFC 3463). */
static bool status_valid(const char *s)
{
	size_t i = 2;

	if (s[0] < '2' || s[0] > '5' || s[1] != '.')
		return false;
	for (int part = 0; part < 2; part++) {
		size_t start = i;

		while (s[i] >= '0' && s[i] <= '9' && i - start < 3)
			i++;
		if (i == start)
			return false;
		if (part == 0 && s[i++] != '.')
			return false;
	}
	return s[i] == '\0';
}

/*
 * The Status field: the recipient's code with the class the action
 * implies (a failure is 5, a delay 4, a success 2), or x.0.0. A failure
 * whose code is still 4.x.x is a recipient given up on when its queue
 * lifetime ended: RFC 3463 §2 reports that "persistent transient
 * failure" with its last temporary status as it was.
 */
static void report_status(enum bounce_kind kind, const char *dsn, char *buf,
			  size_t len)
{
	char class = kind == BOUNCE_FAILURE ? '5'
		     : kind == BOUNCE_DELAY ? '4'
					    : '2';

	if (!status_valid(dsn))
		snprintf(buf, len, "%c.0.0", class);
	else if (kind == BOUNCE_FAILURE && dsn[0] == '4')
		snprintf(buf, len, "%s", dsn);
	else
		snprintf(buf, len, "%c%s", class, dsn + 1);
}

/*
 * The Original-Recipient value from the ORCPT parameter as sent
 * ("type;xtext"): the address type kept, the xtext decoded (RFC 3461
 * §4.2). When the value does not decode to printable text, the value as
 * sent (printable by construction) is reported. malloc'd.
 */
static char *original_recipient(const char *orcpt)
{
	const char *semi = strchr(orcpt, ';');
	size_t n = strlen(orcpt), type_len;
	char *out;
	int dec;

	out = malloc(n + 1);
	if (out == NULL)
		return NULL;
	if (semi == NULL || semi == orcpt)
		goto as_sent;
	type_len = (size_t)(semi - orcpt);
	memcpy(out, orcpt, type_len + 1);
	dec = text_xtext_decode(semi + 1, n - type_len - 1, out + type_len + 1,
				n - type_len, 0);
	if (dec <= 0)
		goto as_sent;
	for (size_t i = 0; out[i] != '\0'; i++) {
		unsigned char c = (unsigned char)out[i];
		if (c < 0x20 || c == 0x7f)
			goto as_sent;
	}
	return out;

as_sent:
	memcpy(out, orcpt, n + 1);
	return out;
}

/* Where the original's copy stops: all of it when it fits, else after
 * the last CRLF within `max` (a line longer than that is cut). */
static size_t cut_original(const char *p, size_t len, size_t max,
			   bool *truncated)
{
	size_t n = len < max ? len : max;

	*truncated = false;
	if (n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n') {
		*truncated = n < len;
		return n;
	}
	if (len < max)
		return len; /* not wire form at its end; out_wire ends it */
	*truncated = true;
	for (size_t i = n; i >= 2; i--) {
		if (p[i - 2] == '\r' && p[i - 1] == '\n')
			return i;
	}
	return n;
}

/* The header section: up to and including the CRLF of its last field. */
static size_t header_section_len(const char *p, size_t len)
{
	if (len >= 2 && p[0] == '\r' && p[1] == '\n')
		return 0;
	for (size_t i = 0; i + 3 < len; i++) {
		if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' &&
		    p[i + 3] == '\n')
			return i + 2;
	}
	return len;
}

static const char *const subjects[] = {
    [BOUNCE_FAILURE] = "Undelivered Mail Returned to Sender",
    [BOUNCE_DELAY] = "Delayed Mail (still being retried)",
    [BOUNCE_SUCCESS] = "Successful Mail Delivery Report",
};

static const char *const actions[] = {
    [BOUNCE_FAILURE] = "failed",
    [BOUNCE_DELAY] = "delayed",
    [BOUNCE_SUCCESS] = "delivered",
};

/* What the DSN is made of, decided before any text is written. */
struct report {
	const struct bounce_input *in;
	const char *hostname;
	bool global;	  /* RFC 6533: UTF-8 addresses in the report */
	const char *orig; /* the slice of the original returned */
	size_t orig_len;
	bool orig_full; /* message/rfc822 rather than headers only */
	bool orig_cut;
	bool orig_global; /* UTF-8 in the returned header section */
};

/* Indexes past the envelope's recipients are ignored, not trusted. */
static bool rcpt_reported(const struct bounce_input *in, size_t k)
{
	return in->rcpts[k] < in->env->rcpt_count &&
	       in->env->rcpts[in->rcpts[k]].address != NULL;
}

static void write_text_part(struct out *o, const struct report *rp)
{
	const struct bounce_input *in = rp->in;
	char date[MAILTIME_BUF];

	out_str(o, "This is the mail system at host ");
	out_text(o, rp->hostname, strlen(rp->hostname), false);
	out_str(o, ".");
	out_eol(o);
	out_eol(o);
	switch (in->kind) {
	case BOUNCE_FAILURE:
		out_line(o, "Your message could not be delivered to the "
			    "recipients below.");
		out_line(o, "This is a permanent error: the mail system has "
			    "given up.");
		break;
	case BOUNCE_DELAY:
		out_line(o, "Your message has not been delivered yet to the "
			    "recipients below.");
		if (in->retry_until != 0) {
			mailtime_format(in->retry_until, date, sizeof date);
			out_fmt(o, "The mail system will keep trying until %s;",
				date);
			out_eol(o);
		} else {
			out_line(o, "The mail system will keep trying;");
		}
		out_line(o, "you do not need to send it again.");
		break;
	case BOUNCE_SUCCESS:
		out_line(o, "Your message was delivered to the recipients "
			    "below.");
		break;
	}
	for (size_t k = 0; k < in->rcpt_count; k++) {
		const struct spool_rcpt *r;
		char *reason;

		if (!rcpt_reported(in, k))
			continue;
		r = &in->env->rcpts[in->rcpts[k]];
		out_eol(o);
		out_str(o, "<");
		out_text(o, r->address, strlen(r->address), true);
		out_str(o, ">");
		if (r->original != NULL && strcmp(r->original, r->address)) {
			out_str(o, " (expanded from <");
			out_text(o, r->original, strlen(r->original), true);
			out_str(o, ">)");
		}
		out_eol(o);
		if (r->reason == NULL)
			continue;
		reason = clean_reason(r->reason);
		if (reason == NULL) {
			o->failed = true;
			return;
		}
		if (reason[0] != '\0')
			out_wrapped(o, "    ", "    ", reason, false);
		free(reason);
	}
	if (rp->orig_len == 0)
		return;
	out_eol(o);
	out_line(o, rp->orig_full
			? "A copy of your message is attached."
			: "The headers of your message are attached.");
	if (rp->orig_cut) {
		out_fmt(o, "It was cut to its first %zu octets.", rp->orig_len);
		out_eol(o);
	}
}

/* An address field "type; address": rfc822 for ASCII, utf-8 otherwise
 * (RFC 6533 §3). */
static void write_address_field(struct out *o, const char *name,
				const char *address)
{
	out_str(o, name);
	out_str(o, str_8bit(address) ? ": utf-8; " : ": rfc822; ");
	out_text(o, address, strlen(address), true);
	out_eol(o);
}

static void write_status_part(struct out *o, const struct report *rp)
{
	const struct bounce_input *in = rp->in;
	const struct spool_envelope *env = in->env;
	char date[MAILTIME_BUF], status[sizeof env->rcpts->dsn + 1];

	out_str(o, "Reporting-MTA: dns; ");
	out_text(o, rp->hostname, strlen(rp->hostname), false);
	out_eol(o);
	if (env->envid != NULL && env->envid[0] != '\0') {
		/* Stored decoded: smtp_parse_mail undoes the xtext. */
		out_str(o, "Original-Envelope-Id: ");
		out_text(o, env->envid, strlen(env->envid), false);
		out_eol(o);
	}
	if (env->arrival != 0) {
		mailtime_format(env->arrival, date, sizeof date);
		out_fmt(o, "Arrival-Date: %s", date);
		out_eol(o);
	}
	for (size_t k = 0; k < in->rcpt_count; k++) {
		const struct spool_rcpt *r;

		if (!rcpt_reported(in, k))
			continue;
		r = &env->rcpts[in->rcpts[k]];
		out_eol(o);
		if (r->orcpt != NULL && r->orcpt[0] != '\0') {
			char *orig = original_recipient(r->orcpt);
			if (orig == NULL) {
				o->failed = true;
				return;
			}
			out_str(o, "Original-Recipient: ");
			out_text(o, orig, strlen(orig), rp->global);
			out_eol(o);
			free(orig);
		}
		write_address_field(o, "Final-Recipient", r->address);
		out_fmt(o, "Action: %s", actions[in->kind]);
		out_eol(o);
		report_status(in->kind, r->dsn, status, sizeof status);
		out_fmt(o, "Status: %s", status);
		out_eol(o);
		if (r->reason != NULL) {
			char *reason = clean_reason(r->reason);
			if (reason == NULL) {
				o->failed = true;
				return;
			}
			if (reason[0] != '\0')
				out_wrapped(o, "Diagnostic-Code: smtp; ", " ",
					    reason, false);
			free(reason);
		}
		if (r->attempts > 0) {
			mailtime_format(r->updated ? r->updated : in->now, date,
					sizeof date);
			out_fmt(o, "Last-Attempt-Date: %s", date);
			out_eol(o);
		}
		if (in->kind == BOUNCE_DELAY && in->retry_until != 0) {
			mailtime_format(in->retry_until, date, sizeof date);
			out_fmt(o, "Will-Retry-Until: %s", date);
			out_eol(o);
		}
	}
}

/* Whether the report must be message/global-delivery-status (RFC
 * 6533): some address in it is not ASCII. -1 when out of memory. */
static int report_needs_utf8(const struct bounce_input *in)
{
	for (size_t k = 0; k < in->rcpt_count; k++) {
		const struct spool_rcpt *r;

		if (!rcpt_reported(in, k))
			continue;
		r = &in->env->rcpts[in->rcpts[k]];
		if (str_8bit(r->address))
			return 1;
		/* An ORCPT's xtext may hide UTF-8 behind +XX. */
		if (r->orcpt != NULL && r->orcpt[0] != '\0') {
			char *orig = original_recipient(r->orcpt);
			bool utf8;

			if (orig == NULL)
				return -1;
			utf8 = str_8bit(orig);
			free(orig);
			if (utf8)
				return 1;
		}
	}
	return 0;
}

/* Decide what is said and returned, before writing anything. -1 when
 * out of memory. */
static int report_plan(struct report *rp, const struct bounce_input *in)
{
	const char *p = in->original;
	size_t len = in->original ? in->original_len : 0;
	int utf8 = report_needs_utf8(in);

	if (utf8 < 0)
		return -1;
	memset(rp, 0, sizeof *rp);
	rp->in = in;
	rp->hostname =
	    in->hostname && in->hostname[0] ? in->hostname : "localhost";
	rp->global = utf8 == 1;
	rp->orig_full = in->env->ret == SMTP_RET_FULL;
	if (!rp->orig_full)
		len = header_section_len(p, len);
	rp->orig = p;
	rp->orig_len = cut_original(p, len, BOUNCE_ORIGINAL_MAX, &rp->orig_cut);
	rp->orig_global = has_8bit(p, header_section_len(p, rp->orig_len));
	return 0;
}

/* A boundary made from the queue id that appears in none of the parts. */
static char *choose_boundary(const char *id, const struct out *parts,
			     size_t count)
{
	char base[BOUNCE_BOUNDARY_ID_MAX + 1];
	size_t n = 0;
	char *b = NULL;

	for (size_t i = 0; id && id[i] && n < BOUNCE_BOUNDARY_ID_MAX; i++) {
		char c = id[i];
		if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		    (c >= 'A' && c <= 'Z'))
			base[n++] = c;
	}
	base[n] = '\0';
	/* Each try is a different string and the parts are finite, so this
	 * ends; in practice at the first try. */
	for (unsigned long try = 0;; try++) {
		bool clash = false;

		free(b);
		if (try == 0 ? asprintf(&b, "=_facteur_%s", base) < 0
			     : asprintf(&b, "=_facteur_%s_%lu", base, try) < 0)
			return NULL;
		for (size_t i = 0; i < count && !clash; i++)
			clash = out_contains(&parts[i], b);
		if (!clash)
			return b;
	}
}

/* Octets allowed in a msg-id half and a domain we print bare. */
static void out_token(struct out *o, const char *s)
{
	for (size_t i = 0; s[i] != '\0'; i++) {
		char c = s[i];
		bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
			  (c >= 'A' && c <= 'Z') ||
			  strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
		out_raw(o, ok ? &c : "_", 1);
	}
}

static void write_part_header(struct out *o, const char *boundary,
			      const char *type, const char *description,
			      bool eight_bit)
{
	out_eol(o);
	out_fmt(o, "--%s", boundary);
	out_eol(o);
	out_fmt(o, "Content-Type: %s", type);
	out_eol(o);
	out_fmt(o, "Content-Description: %s", description);
	out_eol(o);
	if (eight_bit)
		out_line(o, "Content-Transfer-Encoding: 8bit");
	out_eol(o);
}

char *bounce_build(const struct bounce_input *in, size_t *len)
{
	struct out parts[3] = {{0}}, msg = {0};
	struct report rp;
	const char *sender, *id;
	char *boundary = NULL, date[MAILTIME_BUF];
	size_t nparts = 2, reported = 0;
	bool eight_bit[3];

	if (in == NULL || in->env == NULL || len == NULL ||
	    (in->rcpt_count > 0 && in->rcpts == NULL) ||
	    (unsigned)in->kind > BOUNCE_SUCCESS) {
		errno = EINVAL;
		return NULL;
	}
	for (size_t k = 0; k < in->rcpt_count; k++)
		reported += rcpt_reported(in, k);
	if (reported == 0) {
		errno = EINVAL; /* a report about no one is not a DSN */
		return NULL;
	}
	if (report_plan(&rp, in) < 0) {
		errno = ENOMEM;
		return NULL;
	}
	sender = in->env->sender ? in->env->sender : "";
	id = in->id && in->id[0] ? in->id : in->env->id;

	write_text_part(&parts[0], &rp);
	write_status_part(&parts[1], &rp);
	if (rp.orig_len > 0) {
		out_wire(&parts[2], rp.orig, rp.orig_len);
		nparts = 3;
	}
	for (size_t i = 0; i < nparts; i++) {
		if (parts[i].failed)
			goto fail;
		eight_bit[i] = has_8bit(parts[i].data, parts[i].len);
	}
	boundary = choose_boundary(id, parts, nparts);
	if (boundary == NULL)
		goto fail;

	out_str(&msg, "From: Mail Delivery System <MAILER-DAEMON@");
	out_token(&msg, rp.hostname);
	out_str(&msg, ">");
	out_eol(&msg);
	out_str(&msg, "To: <");
	out_text(&msg, sender, strlen(sender), true);
	out_str(&msg, ">");
	out_eol(&msg);
	out_fmt(&msg, "Subject: %s", subjects[in->kind]);
	out_eol(&msg);
	mailtime_format(in->now, date, sizeof date);
	out_fmt(&msg, "Date: %s", date);
	out_eol(&msg);
	out_str(&msg, "Message-ID: <");
	out_token(&msg, id);
	out_str(&msg, "@");
	out_token(&msg, rp.hostname);
	out_str(&msg, ">");
	out_eol(&msg);
	out_line(&msg, "Auto-Submitted: auto-replied");
	out_line(&msg, "MIME-Version: 1.0");
	out_fmt(&msg, "Content-Type: multipart/report; report-type=%s;",
		rp.global ? "global-delivery-status" : "delivery-status");
	out_eol(&msg);
	out_fmt(&msg, "\tboundary=\"%s\"", boundary);
	out_eol(&msg);
	if (eight_bit[0] || eight_bit[1] || (nparts == 3 && eight_bit[2]))
		out_line(&msg, "Content-Transfer-Encoding: 8bit");
	out_eol(&msg);
	out_line(&msg, "This is a MIME-encapsulated message.");

	write_part_header(&msg, boundary,
			  eight_bit[0] ? "text/plain; charset=utf-8"
				       : "text/plain; charset=us-ascii",
			  "Notification", eight_bit[0]);
	out_lines(&msg, &parts[0]);
	write_part_header(&msg, boundary,
			  rp.global ? "message/global-delivery-status"
				    : "message/delivery-status",
			  "Delivery report", eight_bit[1]);
	out_lines(&msg, &parts[1]);
	if (nparts == 3) {
		const char *type;

		if (rp.orig_full)
			type = rp.orig_global ? "message/global"
					      : "message/rfc822";
		else
			type = rp.orig_global ? "message/global-headers"
					      : "text/rfc822-headers";
		write_part_header(&msg, boundary, type,
				  rp.orig_full ? "Undelivered message"
					       : "Undelivered message headers",
				  eight_bit[2]);
		out_lines(&msg, &parts[2]);
	}
	out_eol(&msg);
	out_fmt(&msg, "--%s--", boundary);
	out_eol(&msg);
	if (msg.failed)
		goto fail;

	for (size_t i = 0; i < 3; i++)
		free(parts[i].data);
	free(boundary);
	*len = msg.len;
	return msg.data;

fail:
	for (size_t i = 0; i < 3; i++)
		free(parts[i].data);
	free(boundary);
	free(msg.data);
	errno = ENOMEM;
	return NULL;
}

bool bounce_wanted(const char *sender, const struct spool_rcpt *r,
		   enum bounce_kind kind)
{
	unsigned bit;

	/* The null sender marks a DSN or the like: answering it could loop
	 * (RFC 5321 §4.5.5). */
	if (sender == NULL || sender[0] == '\0' || r == NULL)
		return false;
	if (r->notify & SMTP_NOTIFY_NEVER)
		return false;
	/* RFC 3461 §4.1: without NOTIFY, FAILURE (and DELAY at our choice;
	 * we send it only when asked). */
	if (r->notify == 0)
		return kind == BOUNCE_FAILURE;
	switch (kind) {
	case BOUNCE_FAILURE:
		bit = SMTP_NOTIFY_FAILURE;
		break;
	case BOUNCE_DELAY:
		bit = SMTP_NOTIFY_DELAY;
		break;
	case BOUNCE_SUCCESS:
		bit = SMTP_NOTIFY_SUCCESS;
		break;
	default:
		return false;
	}
	return (r->notify & bit) != 0;
}

bool bounce_outcome_notice(const char *sender, const struct spool_rcpt *r,
			   enum bounce_kind *kind)
{
	if (r == NULL)
		return false;
	if (r->state == RCPT_BOUNCED &&
	    bounce_wanted(sender, r, BOUNCE_FAILURE)) {
		*kind = BOUNCE_FAILURE;
		return true;
	}
	if (r->state == RCPT_DELIVERED &&
	    bounce_wanted(sender, r, BOUNCE_SUCCESS)) {
		*kind = BOUNCE_SUCCESS;
		return true;
	}
	return false;
}
