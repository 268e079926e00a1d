/* Delivery status notifications: the DSN a sender gets back (RFC 3464,
 * RFC 6522, RFC 3461 NOTIFY/RET/ENVID/ORCPT; SPEC.md §5). Each DSN is
 * parsed back from its wire form and checked field by field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "facteur/bounce.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* 2023-11-14 22:13:20 UTC, a Tuesday. */
#define T_NOW ((time_t)1700000000)
#define T_ARRIVAL (T_NOW - 3600)

static const char plain_original[] =
    "Received: from client.example (client.example [192.0.2.1])\r\n"
    "\tby mx.test with ESMTP id ABCDEF0123456789;\r\n"
    "\tTue, 14 Nov 2023 21:13:20 +0000\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.net\r\n"
    "Subject: hello\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n"
    "First body line.\r\n"
    "..a line that starts with a dot\r\n"
    "..\r\n"
    "Last body line.\r\n";

/* A test envelope with up to four recipients. */
struct fixture {
	struct spool_envelope env;
	struct spool_rcpt rcpts[4];
	size_t indexes[4];
	struct bounce_input in;
};

static void fixture_init(struct fixture *f, size_t nrcpt)
{
	static char *addresses[] = {"bob@example.net", "carol@example.net",
				    "dave@example.com", "erin@example.com"};

	memset(f, 0, sizeof *f);
	snprintf(f->env.id, sizeof f->env.id, "ABCDEF0123456789");
	f->env.arrival = T_ARRIVAL;
	f->env.sender = "alice@example.org";
	f->env.ret = SMTP_RET_UNSPECIFIED;
	f->env.rcpts = f->rcpts;
	f->env.rcpt_count = nrcpt;
	for (size_t i = 0; i < nrcpt; i++) {
		f->rcpts[i].address = addresses[i];
		f->rcpts[i].original = addresses[i];
		f->rcpts[i].state = RCPT_BOUNCED;
		f->rcpts[i].attempts = 1;
		f->rcpts[i].updated = T_NOW - 60;
		snprintf(f->rcpts[i].dsn, sizeof f->rcpts[i].dsn, "5.1.1");
		f->rcpts[i].reason = "550 5.1.1 <user>: no such user";
		f->indexes[i] = i;
	}
	f->in.kind = BOUNCE_FAILURE;
	f->in.env = &f->env;
	f->in.rcpts = f->indexes;
	f->in.rcpt_count = nrcpt;
	f->in.hostname = "mx.test";
	f->in.id = "DSN0123456789ABC";
	f->in.now = T_NOW;
	f->in.original = plain_original;
	f->in.original_len = sizeof plain_original - 1;
}

/* The DSN, parsed back. */
struct part {
	size_t head, body, end; /* line indexes: headers, body, one past */
};

struct dsn {
	char *wire;
	size_t wire_len;
	char **lines; /* dot-stuffing undone, CRLF removed */
	size_t nlines;
	size_t body; /* first line of the top-level body */
	char *boundary;
	struct part parts[4];
	size_t nparts;
	bool closed; /* the final "--boundary--" was seen */
};

static void assert_wire_form(const char *p, size_t len)
{
	assert_true(len >= 2);
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\r') {
			if (i + 1 >= len || p[i + 1] != '\n')
				fail_msg("bare CR at octet %zu", i);
		} else if (p[i] == '\n') {
			if (i == 0 || p[i - 1] != '\r')
				fail_msg("bare LF at octet %zu", i);
		}
	}
	assert_memory_equal(p + len - 2, "\r\n", 2);
}

static void split_lines(struct dsn *d)
{
	size_t cap = 16, start = 0;

	d->lines = malloc(cap * sizeof *d->lines);
	assert_non_null(d->lines);
	for (size_t i = 0; i + 1 < d->wire_len; i++) {
		if (d->wire[i] != '\r')
			continue;
		const char *line = d->wire + start;
		size_t n = i - start;
		/* Every line that starts with '.' is stuffed: drop one. */
		if (n > 0 && line[0] == '.') {
			line++;
			n--;
		}
		if (d->nlines == cap) {
			cap *= 2;
			d->lines = realloc(d->lines, cap * sizeof *d->lines);
			assert_non_null(d->lines);
		}
		d->lines[d->nlines] = strndup(line, n);
		assert_non_null(d->lines[d->nlines]);
		d->nlines++;
		start = i + 2;
		i++;
	}
}

/* The unfolded value of header `name` among lines [from, to), or NULL. */
static char *header_get(const struct dsn *d, size_t from, size_t to,
			const char *name)
{
	size_t nlen = strlen(name);

	for (size_t i = from; i < to && d->lines[i][0] != '\0'; i++) {
		const char *l = d->lines[i];
		char *v;

		if (strncasecmp(l, name, nlen) != 0 || l[nlen] != ':')
			continue;
		v = strdup(l + nlen + 1 + (l[nlen + 1] == ' '));
		assert_non_null(v);
		for (size_t j = i + 1; j < to && (d->lines[j][0] == ' ' ||
						  d->lines[j][0] == '\t');
		     j++) {
			size_t a = strlen(v), b = strlen(d->lines[j]);
			v = realloc(v, a + b + 1);
			assert_non_null(v);
			memcpy(v + a, d->lines[j], b + 1);
		}
		return v;
	}
	return NULL;
}

static size_t header_end(const struct dsn *d, size_t from)
{
	size_t i = from;

	while (i < d->nlines && d->lines[i][0] != '\0')
		i++;
	assert_true(i < d->nlines);
	return i + 1;
}

static void assert_header(const struct dsn *d, size_t from, size_t to,
			  const char *name, const char *value)
{
	char *v = header_get(d, from, to, name);

	if (v == NULL)
		fail_msg("header %s missing", name);
	if (strcmp(v, value) != 0)
		fail_msg("%s: \"%s\", expected \"%s\"", name, v, value);
	free(v);
}

static void assert_no_header(const struct dsn *d, size_t from, size_t to,
			     const char *name)
{
	char *v = header_get(d, from, to, name);

	if (v != NULL)
		fail_msg("header %s unexpected: %s", name, v);
}

static void dsn_parse(struct dsn *d, struct bounce_input *in)
{
	char *ct, *b, *q;
	size_t i;

	memset(d, 0, sizeof *d);
	d->wire = bounce_build(in, &d->wire_len);
	assert_non_null(d->wire);
	assert_wire_form(d->wire, d->wire_len);
	split_lines(d);
	d->body = header_end(d, 0);

	ct = header_get(d, 0, d->body, "Content-Type");
	assert_non_null(ct);
	b = strstr(ct, "boundary=\"");
	assert_non_null(b);
	b += strlen("boundary=\"");
	q = strchr(b, '"');
	assert_non_null(q);
	d->boundary = strndup(b, (size_t)(q - b));
	assert_true(strlen(d->boundary) >= 1 && strlen(d->boundary) <= 70);
	free(ct);

	for (i = d->body; i < d->nlines; i++) {
		const char *l = d->lines[i];
		size_t bl = strlen(d->boundary);

		if (l[0] != '-' || l[1] != '-' ||
		    strncmp(l + 2, d->boundary, bl) != 0)
			continue;
		if (d->nparts > 0)
			d->parts[d->nparts - 1].end = i;
		if (strcmp(l + 2 + bl, "--") == 0) {
			d->closed = true;
			break;
		}
		assert_string_equal(l + 2 + bl, "");
		assert_true(d->nparts < COUNT_OF(d->parts));
		d->parts[d->nparts].head = i + 1;
		d->parts[d->nparts].body = header_end(d, i + 1);
		d->nparts++;
	}
	assert_true(d->closed);
}

static void dsn_free(struct dsn *d)
{
	for (size_t i = 0; i < d->nlines; i++)
		free(d->lines[i]);
	free(d->lines);
	free(d->wire);
	free(d->boundary);
}

static void assert_part_type(const struct dsn *d, size_t n, const char *type)
{
	char *v;

	assert_true(n < d->nparts);
	v = header_get(d, d->parts[n].head, d->parts[n].body, "Content-Type");
	assert_non_null(v);
	if (strncmp(v, type, strlen(type)) != 0 ||
	    (v[strlen(type)] != '\0' && v[strlen(type)] != ';'))
		fail_msg("part %zu is %s, expected %s", n, v, type);
	free(v);
}

/* The delivery-status part as field groups: [0] per message, then one
 * per recipient, as line ranges. */
struct group {
	size_t from, to;
};

static size_t status_groups(const struct dsn *d, struct group *g, size_t max)
{
	const struct part *p = &d->parts[1];
	size_t n = 0, i = p->body;

	while (i < p->end && n < max) {
		while (i < p->end && d->lines[i][0] == '\0')
			i++;
		if (i >= p->end)
			break;
		g[n].from = i;
		while (i < p->end && d->lines[i][0] != '\0')
			i++;
		g[n].to = i;
		n++;
	}
	return n;
}

static bool wire_contains(const struct dsn *d, const char *s)
{
	return memmem(d->wire, d->wire_len, s, strlen(s)) != NULL;
}

/* Whether the DSN has a line equal to `line` (unstuffed). */
static bool wire_has_line(const struct dsn *d, const char *line)
{
	for (size_t i = 0; i < d->nlines; i++) {
		if (strcmp(d->lines[i], line) == 0)
			return true;
	}
	return false;
}

static size_t part_text_len(const struct dsn *d, size_t n)
{
	size_t total = 0;

	for (size_t i = d->parts[n].body; i < d->parts[n].end; i++)
		total += strlen(d->lines[i]) + 2;
	return total;
}

static void
test_bounce_failure_is_multipart_report_with_three_parts(void **state)
{
	struct fixture f;
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	dsn_parse(&d, &f.in);
	assert_header(&d, 0, d.body, "From",
		      "Mail Delivery System <MAILER-DAEMON@mx.test>");
	assert_header(&d, 0, d.body, "To", "<alice@example.org>");
	assert_header(&d, 0, d.body, "Subject",
		      "Undelivered Mail Returned to Sender");
	assert_header(&d, 0, d.body, "Date", "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_header(&d, 0, d.body, "Message-ID",
		      "<DSN0123456789ABC@mx.test>");
	assert_header(&d, 0, d.body, "Auto-Submitted", "auto-replied");
	assert_header(&d, 0, d.body, "MIME-Version", "1.0");
	char *ct = header_get(&d, 0, d.body, "Content-Type");
	assert_non_null(ct);
	assert_true(strncmp(ct,
			    "multipart/report; report-type=delivery-status;",
			    46) == 0);
	free(ct);
	assert_int_equal(d.nparts, 3);
	assert_part_type(&d, 0, "text/plain");
	assert_part_type(&d, 1, "message/delivery-status");
	assert_part_type(&d, 2, "text/rfc822-headers");
	/* The human part names the recipient and why. */
	assert_true(wire_has_line(&d, "<bob@example.net>"));
	assert_true(wire_has_line(&d, "    550 5.1.1 <user>: no such user"));
	/* No line is longer than SMTP allows. */
	for (size_t i = 0; i < d.nlines; i++)
		assert_true(strlen(d.lines[i]) <= 998);
	dsn_free(&d);
}

static void test_bounce_recipient_fields_are_reported(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[0].from, g[0].to, "Reporting-MTA", "dns; mx.test");
	assert_header(&d, g[0].from, g[0].to, "Arrival-Date",
		      "Tue, 14 Nov 2023 21:13:20 +0000");
	assert_no_header(&d, g[0].from, g[0].to, "Original-Envelope-Id");
	assert_header(&d, g[1].from, g[1].to, "Final-Recipient",
		      "rfc822; bob@example.net");
	assert_header(&d, g[1].from, g[1].to, "Action", "failed");
	assert_header(&d, g[1].from, g[1].to, "Status", "5.1.1");
	assert_header(&d, g[1].from, g[1].to, "Diagnostic-Code",
		      "smtp; 550 5.1.1 <user>: no such user");
	assert_header(&d, g[1].from, g[1].to, "Last-Attempt-Date",
		      "Tue, 14 Nov 2023 22:12:20 +0000");
	assert_no_header(&d, g[1].from, g[1].to, "Original-Recipient");
	assert_no_header(&d, g[1].from, g[1].to, "Will-Retry-Until");
	dsn_free(&d);
}

static void test_bounce_failure_status_defaults_and_class(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 3);
	f.rcpts[0].dsn[0] = '\0';
	f.rcpts[0].reason = NULL;
	f.rcpts[0].attempts = 0;
	/* An expired recipient's last temporary status. */
	snprintf(f.rcpts[1].dsn, sizeof f.rcpts[1].dsn, "4.4.1");
	snprintf(f.rcpts[2].dsn, sizeof f.rcpts[2].dsn, "garbage");
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 4), 4);
	assert_header(&d, g[1].from, g[1].to, "Status", "5.0.0");
	assert_no_header(&d, g[1].from, g[1].to, "Diagnostic-Code");
	assert_no_header(&d, g[1].from, g[1].to, "Last-Attempt-Date");
	/* Expired: the last temporary status as it was (RFC 3463 §2). */
	assert_header(&d, g[2].from, g[2].to, "Status", "4.4.1");
	assert_header(&d, g[3].from, g[3].to, "Status", "5.0.0");
	dsn_free(&d);
}

static void
test_bounce_expired_recipients_keep_their_temporary_status(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 3);
	/* Given up after a refused connection, a 451, and no attempt. */
	snprintf(f.rcpts[0].dsn, sizeof f.rcpts[0].dsn, "4.4.1");
	f.rcpts[0].reason = "delivery time expired: connection refused";
	snprintf(f.rcpts[1].dsn, sizeof f.rcpts[1].dsn, "4.3.2");
	f.rcpts[1].reason = "delivery time expired: 451 4.3.2 try later";
	snprintf(f.rcpts[2].dsn, sizeof f.rcpts[2].dsn, "4.4.7");
	f.rcpts[2].reason = "delivery time expired";
	f.rcpts[2].attempts = 0;
	dsn_parse(&d, &f.in);
	assert_header(&d, 0, d.body, "Subject",
		      "Undelivered Mail Returned to Sender");
	assert_int_equal(status_groups(&d, g, 4), 4);
	for (size_t k = 1; k < 4; k++)
		assert_header(&d, g[k].from, g[k].to, "Action", "failed");
	assert_header(&d, g[1].from, g[1].to, "Status", "4.4.1");
	assert_header(&d, g[2].from, g[2].to, "Status", "4.3.2");
	assert_header(&d, g[3].from, g[3].to, "Status", "4.4.7");
	assert_no_header(&d, g[1].from, g[1].to, "Will-Retry-Until");
	dsn_free(&d);
}

static void test_bounce_reports_only_the_recipients_given(void **state)
{
	struct fixture f;
	struct group g[5];
	struct dsn d;

	(void)state;
	fixture_init(&f, 4);
	f.indexes[0] = 3;
	f.indexes[1] = 1;
	f.in.rcpt_count = 2;
	f.rcpts[3].reason = "552 mailbox full";
	snprintf(f.rcpts[3].dsn, sizeof f.rcpts[3].dsn, "5.2.2");
	f.rcpts[1].original = "alias@example.net";
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 5), 3);
	assert_header(&d, g[1].from, g[1].to, "Final-Recipient",
		      "rfc822; erin@example.com");
	assert_header(&d, g[1].from, g[1].to, "Status", "5.2.2");
	assert_header(&d, g[1].from, g[1].to, "Diagnostic-Code",
		      "smtp; 552 mailbox full");
	assert_header(&d, g[2].from, g[2].to, "Final-Recipient",
		      "rfc822; carol@example.net");
	assert_header(&d, g[2].from, g[2].to, "Status", "5.1.1");
	assert_false(wire_has_line(&d, "<bob@example.net>"));
	assert_false(wire_has_line(&d, "<dave@example.com>"));
	assert_true(wire_has_line(&d, "<erin@example.com>"));
	assert_true(wire_has_line(
	    &d, "<carol@example.net> (expanded from <alias@example.net>)"));
	dsn_free(&d);
}

/* The notice to one recipient of a message sent with `ret`: its third
 * part, the returned content, is of `type`. */
static const struct part *returned_part(struct fixture *f, struct dsn *d,
					enum smtp_ret ret, const char *type)
{
	fixture_init(f, 1);
	f->env.ret = ret;
	dsn_parse(d, &f->in);
	assert_int_equal(d->nparts, 3);
	assert_part_type(d, 2, type);
	return &d->parts[2];
}

static void test_bounce_ret_full_returns_the_message_dot_stuffed(void **state)
{
	struct fixture f;
	struct dsn d;
	const struct part *p;

	(void)state;
	p = returned_part(&f, &d, SMTP_RET_FULL, "message/rfc822");
	/* The original, line for line, its Received header first. */
	assert_true(p->end - p->body >= 13);
	assert_string_equal(d.lines[p->body],
			    "Received: from client.example (client.example "
			    "[192.0.2.1])");
	assert_string_equal(d.lines[p->body + 9],
			    ".a line that starts with a dot");
	assert_string_equal(d.lines[p->body + 10], ".");
	assert_string_equal(d.lines[p->body + 11], "Last body line.");
	/* In wire form those lines stay stuffed. */
	assert_true(
	    wire_contains(&d, "\r\n..a line that starts with a dot\r\n..\r\n"));
	assert_false(wire_contains(&d, "\r\n.\r\n"));
	dsn_free(&d);
}

static void test_bounce_ret_hdrs_returns_the_header_section_only(void **state)
{
	struct fixture f;
	struct dsn d;
	const struct part *p;

	(void)state;
	p = returned_part(&f, &d, SMTP_RET_HDRS, "text/rfc822-headers");
	assert_string_equal(d.lines[p->body],
			    "Received: from client.example (client.example "
			    "[192.0.2.1])");
	assert_string_equal(d.lines[p->body + 6],
			    "Message-ID: <m1@example.org>");
	for (size_t i = p->body + 7; i < p->end; i++)
		assert_string_equal(d.lines[i], "");
	assert_false(wire_contains(&d, "First body line"));
	assert_false(wire_contains(&d, "starts with a dot"));
	dsn_free(&d);
}

static void test_bounce_ret_unspecified_returns_headers(void **state)
{
	struct fixture f;
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	assert_int_equal(f.env.ret, SMTP_RET_UNSPECIFIED);
	dsn_parse(&d, &f.in);
	assert_part_type(&d, 2, "text/rfc822-headers");
	assert_true(wire_has_line(&d, "Subject: hello"));
	assert_false(wire_contains(&d, "First body line"));
	dsn_free(&d);
}

/* An original of `lines` lines of 100 octets (CRLF included). */
static char *big_original(size_t lines, size_t *len)
{
	static const char head[] = "Received: by mx.test\r\n"
				   "Subject: big\r\n\r\n";
	size_t n = sizeof head - 1 + lines * 100;
	char *p = malloc(n);

	assert_non_null(p);
	memcpy(p, head, sizeof head - 1);
	for (size_t i = 0; i < lines; i++) {
		char *l = p + sizeof head - 1 + i * 100;
		memset(l, 'a' + (char)(i % 26), 98);
		l[0] = i % 7 == 0 ? '.' : 'x'; /* some stuffed lines */
		if (l[0] == '.')
			l[1] = '.';
		l[98] = '\r';
		l[99] = '\n';
	}
	*len = n;
	return p;
}

static void test_bounce_large_original_is_cut_at_a_line_boundary(void **state)
{
	struct fixture f;
	struct dsn d;
	size_t len, copied;
	char *orig = big_original(BOUNCE_ORIGINAL_MAX / 100 + 50, &len);
	const char *start, *end;

	(void)state;
	assert_true(len > BOUNCE_ORIGINAL_MAX);
	fixture_init(&f, 1);
	f.env.ret = SMTP_RET_FULL;
	f.in.original = orig;
	f.in.original_len = len;
	dsn_parse(&d, &f.in);
	assert_part_type(&d, 2, "message/rfc822");
	/* The copy in the wire form: from the Received line to the blank
	 * line before the closing boundary. */
	start = memmem(d.wire, d.wire_len, "Received: by mx.test\r\n", 22);
	assert_non_null(start);
	end = memmem(start, d.wire_len - (size_t)(start - d.wire), "\r\n\r\n--",
		     6);
	assert_non_null(end);
	copied = (size_t)(end - start) + 2;
	assert_true(copied <= BOUNCE_ORIGINAL_MAX);
	assert_true(copied > BOUNCE_ORIGINAL_MAX - 100);
	assert_memory_equal(start, orig, copied);
	assert_memory_equal(orig + copied - 2, "\r\n", 2);
	assert_true(part_text_len(&d, 2) <= BOUNCE_ORIGINAL_MAX);
	dsn_free(&d);

	/* Given only the first BOUNCE_ORIGINAL_MAX octets, mid-line: the
	 * partial last line is left out. */
	f.in.original_len = BOUNCE_ORIGINAL_MAX;
	assert_true(orig[BOUNCE_ORIGINAL_MAX - 1] != '\n');
	dsn_parse(&d, &f.in);
	start = memmem(d.wire, d.wire_len, "Received: by mx.test\r\n", 22);
	assert_non_null(start);
	end = memmem(start, d.wire_len - (size_t)(start - d.wire), "\r\n\r\n--",
		     6);
	assert_non_null(end);
	assert_int_equal((size_t)(end - start) + 2, copied);
	dsn_free(&d);
	free(orig);
}

static void test_bounce_envid_and_orcpt_are_reported_decoded(void **state)
{
	struct fixture f;
	struct group g[5];
	struct dsn d;

	(void)state;
	fixture_init(&f, 3);
	/* Stored decoded (smtp_parse_mail undoes the xtext). */
	f.env.envid = "QQ314159+x=y";
	f.rcpts[0].orcpt = "rfc822;b+2Bob@example.net";
	f.rcpts[1].orcpt = "rfc822;carol@example.net";
	/* Would decode to a line break: reported as sent instead. */
	f.rcpts[2].orcpt = "rfc822;dave+0D+0AX-Evil:+20yes@example.com";
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 5), 4);
	assert_header(&d, g[0].from, g[0].to, "Original-Envelope-Id",
		      "QQ314159+x=y");
	assert_header(&d, g[1].from, g[1].to, "Original-Recipient",
		      "rfc822;b+ob@example.net");
	assert_header(&d, g[2].from, g[2].to, "Original-Recipient",
		      "rfc822;carol@example.net");
	assert_header(&d, g[3].from, g[3].to, "Original-Recipient",
		      "rfc822;dave+0D+0AX-Evil:+20yes@example.com");
	assert_false(wire_has_line(&d, "X-Evil: yes@example.com"));
	dsn_free(&d);
}

static void test_bounce_delay_notice(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	f.in.kind = BOUNCE_DELAY;
	f.rcpts[0].state = RCPT_DEFERRED;
	snprintf(f.rcpts[0].dsn, sizeof f.rcpts[0].dsn, "4.4.1");
	f.rcpts[0].reason = "connection refused";
	f.in.retry_until = T_ARRIVAL + 5 * 86400;
	dsn_parse(&d, &f.in);
	assert_header(&d, 0, d.body, "Subject",
		      "Delayed Mail (still being retried)");
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[1].from, g[1].to, "Action", "delayed");
	assert_header(&d, g[1].from, g[1].to, "Status", "4.4.1");
	assert_header(&d, g[1].from, g[1].to, "Diagnostic-Code",
		      "smtp; connection refused");
	assert_header(&d, g[1].from, g[1].to, "Will-Retry-Until",
		      "Sun, 19 Nov 2023 21:13:20 +0000");
	dsn_free(&d);

	/* Without a known limit the field is left out; no status: 4.0.0. */
	f.in.retry_until = 0;
	f.rcpts[0].dsn[0] = '\0';
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[1].from, g[1].to, "Status", "4.0.0");
	assert_no_header(&d, g[1].from, g[1].to, "Will-Retry-Until");
	dsn_free(&d);
}

static void test_bounce_success_notice(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	f.in.kind = BOUNCE_SUCCESS;
	f.rcpts[0].state = RCPT_DELIVERED;
	f.rcpts[0].dsn[0] = '\0';
	f.rcpts[0].reason = NULL;
	dsn_parse(&d, &f.in);
	assert_header(&d, 0, d.body, "Subject",
		      "Successful Mail Delivery Report");
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[1].from, g[1].to, "Action", "delivered");
	assert_header(&d, g[1].from, g[1].to, "Status", "2.0.0");
	assert_no_header(&d, g[1].from, g[1].to, "Diagnostic-Code");
	dsn_free(&d);
}

static void test_bounce_reason_with_line_breaks_is_sanitised(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	f.rcpts[0].reason = "550 bad\r\nInjected: yes\r\n.\r\n\n\rX-Also: no\t";
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[1].from, g[1].to, "Diagnostic-Code",
		      "smtp; 550 bad Injected: yes . X-Also: no");
	for (size_t i = 0; i < d.nlines; i++) {
		assert_true(strncmp(d.lines[i], "Injected:", 9) != 0);
		assert_true(strncmp(d.lines[i], "X-Also:", 7) != 0);
	}
	dsn_free(&d);
}

static void test_bounce_long_reason_is_folded_and_cut(void **state)
{
	struct fixture f;
	struct group g[4];
	struct dsn d;
	char reason[4000];
	char *v;

	(void)state;
	for (size_t i = 0; i < sizeof reason - 1; i++)
		reason[i] = i % 10 == 9 ? ' ' : (char)('a' + i % 10);
	reason[sizeof reason - 1] = '\0';
	fixture_init(&f, 1);
	f.rcpts[0].reason = reason;
	dsn_parse(&d, &f.in);
	assert_int_equal(status_groups(&d, g, 4), 2);
	for (size_t i = g[1].from; i < g[1].to; i++)
		assert_true(strlen(d.lines[i]) <= 78);
	v = header_get(&d, g[1].from, g[1].to, "Diagnostic-Code");
	assert_non_null(v);
	assert_true(strncmp(v, "smtp; abcdefghi abcdefghi ", 26) == 0);
	assert_true(strlen(v) < 600);
	assert_string_equal(v + strlen(v) - 3, "...");
	/* Unfolding gives back single spaces between the words. */
	assert_null(strstr(v, "  "));
	free(v);
	dsn_free(&d);
}

static void test_bounce_boundary_never_appears_in_the_parts(void **state)
{
	struct fixture f, f2;
	struct dsn d, d2;
	char *orig;
	size_t n;

	(void)state;
	fixture_init(&f, 1);
	dsn_parse(&d, &f.in);
	/* An original that holds the boundary the first DSN used. */
	n = (size_t)asprintf(&orig,
			     "Received: by mx.test\r\nSubject: x\r\n"
			     "X-Trap: %s\r\n\r\n--%s\r\n--%s--\r\n",
			     d.boundary, d.boundary, d.boundary);
	fixture_init(&f2, 1);
	f2.env.ret = SMTP_RET_FULL;
	f2.in.original = orig;
	f2.in.original_len = n;
	/* And a reason that holds it too. */
	f2.rcpts[0].reason = orig + strlen("Received: by mx.test\r\n"
					   "Subject: x\r\nX-Trap: ");
	dsn_parse(&d2, &f2.in);
	assert_string_not_equal(d.boundary, d2.boundary);
	assert_null(memmem(orig, n, d2.boundary, strlen(d2.boundary)));
	assert_int_equal(d2.nparts, 3);
	assert_part_type(&d2, 2, "message/rfc822");
	assert_true(wire_has_line(&d2, "X-Trap: =_facteur_DSN0123456789ABC"));
	dsn_free(&d);
	dsn_free(&d2);
	free(orig);
}

static void test_bounce_original_not_in_wire_form_is_made_so(void **state)
{
	static const char orig[] = "Received: by mx.test\r\nSubject: a\n"
				   "\r\nbody\n.dot after a bare LF\r\n"
				   "x\ry\r\n.\rz\r\n.";
	struct fixture f;
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	f.env.ret = SMTP_RET_FULL;
	f.in.original = orig;
	f.in.original_len = sizeof orig - 1;
	dsn_parse(&d, &f.in);
	assert_true(wire_contains(
	    &d, "\r\nSubject: a\r\n\r\nbody\r\n..dot after a bare LF\r\n"
		"x\r\ny\r\n..\r\nz\r\n..\r\n\r\n--"));
	/* Whatever the original, no line is a lone "." that ends DATA. */
	assert_false(wire_contains(&d, "\r\n.\r\n"));
	dsn_free(&d);
}

static void test_bounce_utf8_address_uses_global_delivery_status(void **state)
{
	static const char orig[] = "Received: by mx.test\r\n"
				   "Subject: caf\xc3\xa9\r\n\r\nbody\r\n";
	struct fixture f;
	struct group g[4];
	struct dsn d;
	char *ct;

	(void)state;
	fixture_init(&f, 1);
	f.env.smtputf8 = true;
	f.rcpts[0].address = "j\xc3\xb6rg@example.net";
	f.rcpts[0].original = f.rcpts[0].address;
	f.in.original = orig;
	f.in.original_len = sizeof orig - 1;
	dsn_parse(&d, &f.in);
	ct = header_get(&d, 0, d.body, "Content-Type");
	assert_non_null(strstr(ct, "report-type=global-delivery-status;"));
	free(ct);
	assert_part_type(&d, 1, "message/global-delivery-status");
	assert_part_type(&d, 2, "message/global-headers");
	assert_int_equal(status_groups(&d, g, 4), 2);
	assert_header(&d, g[1].from, g[1].to, "Final-Recipient",
		      "utf-8; j\xc3\xb6rg@example.net");
	ct = header_get(&d, d.parts[0].head, d.parts[0].body, "Content-Type");
	assert_string_equal(ct, "text/plain; charset=utf-8");
	free(ct);
	assert_header(&d, 0, d.body, "Content-Transfer-Encoding", "8bit");
	dsn_free(&d);

	/* All ASCII: the plain types, and 7bit. */
	fixture_init(&f, 1);
	dsn_parse(&d, &f.in);
	assert_part_type(&d, 1, "message/delivery-status");
	assert_no_header(&d, 0, d.body, "Content-Transfer-Encoding");
	dsn_free(&d);
}

static void test_bounce_refuses_a_report_about_no_one(void **state)
{
	struct fixture f;
	size_t len;

	(void)state;
	fixture_init(&f, 1);
	f.in.rcpt_count = 0;
	errno = 0;
	assert_null(bounce_build(&f.in, &len));
	assert_int_equal(errno, EINVAL);
	f.in.rcpt_count = 1;
	f.indexes[0] = 7; /* not a recipient of the envelope */
	assert_null(bounce_build(&f.in, &len));
}

static void test_bounce_without_original_has_two_parts(void **state)
{
	struct fixture f;
	struct dsn d;

	(void)state;
	fixture_init(&f, 1);
	f.in.original = NULL;
	f.in.original_len = 0;
	dsn_parse(&d, &f.in);
	assert_int_equal(d.nparts, 2);
	assert_part_type(&d, 1, "message/delivery-status");
	dsn_free(&d);
}

/* A real MIME parser (Python's email package) agrees on the structure. */
static void test_bounce_python_email_parses_the_report(void **state)
{
	static const char script[] =
	    "import email, sys\n"
	    "from email import policy\n"
	    "raw = open(sys.argv[1], 'rb').read()\n"
	    "m = email.message_from_bytes(raw.replace(b'\\r\\n..', "
	    "b'\\r\\n.'), policy=policy.compat32)\n"
	    "assert m.get_content_type() == 'multipart/report', "
	    "m.get_content_type()\n"
	    "assert m.get_param('report-type') == 'delivery-status'\n"
	    "p = m.get_payload()\n"
	    "assert [x.get_content_type() for x in p] == ['text/plain', "
	    "'message/delivery-status', 'message/rfc822'], p\n"
	    "ds = p[1].get_payload()\n"
	    "assert ds[0]['Reporting-MTA'] == 'dns; mx.test'\n"
	    "assert ds[1]['Final-Recipient'] == 'rfc822; bob@example.net'\n"
	    "assert ds[2]['Final-Recipient'] == 'rfc822; carol@example.net'\n"
	    "assert ds[1]['Action'] == 'failed'\n"
	    "orig = p[2].get_payload()[0]\n"
	    "assert orig['Subject'] == 'hello', orig['Subject']\n"
	    "assert not m.defects, m.defects\n";
	char path[] = "/tmp/test_bounce_XXXXXX";
	struct fixture f;
	size_t len;
	char *dsn;
	int fd, status;
	pid_t pid;

	(void)state;
	if (access("/usr/bin/python3", X_OK) != 0)
		skip();
	fixture_init(&f, 2);
	f.env.ret = SMTP_RET_FULL;
	dsn = bounce_build(&f.in, &len);
	assert_non_null(dsn);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, dsn, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	free(dsn);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/usr/bin/python3", "python3", "-c", script, path,
		      (char *)NULL);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	unlink(path);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_bounce_outcome_notice_by_state_and_notify(void **state)
{
	static const struct {
		const char *sender;
		enum rcpt_state rcpt_state;
		unsigned notify;
		bool notice;
		enum bounce_kind kind;
	} cases[] = {
	    {"a@b", RCPT_BOUNCED, 0, true, BOUNCE_FAILURE},
	    {"a@b", RCPT_DELIVERED, 0, false, 0},
	    {"a@b", RCPT_DEFERRED, 0, false, 0},
	    {"a@b", RCPT_PENDING, SMTP_NOTIFY_FAILURE, false, 0},
	    {"a@b", RCPT_DEFERRED, SMTP_NOTIFY_DELAY, false, 0},
	    {"a@b", RCPT_DELIVERED, SMTP_NOTIFY_SUCCESS, true, BOUNCE_SUCCESS},
	    {"a@b", RCPT_BOUNCED, SMTP_NOTIFY_SUCCESS, false, 0},
	    {"a@b", RCPT_DELIVERED, SMTP_NOTIFY_FAILURE, false, 0},
	    {"a@b", RCPT_BOUNCED, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE,
	     true, BOUNCE_FAILURE},
	    {"a@b", RCPT_BOUNCED, SMTP_NOTIFY_NEVER, false, 0},
	    {"", RCPT_BOUNCED, 0, false, 0},
	    {"", RCPT_DELIVERED, SMTP_NOTIFY_SUCCESS, false, 0},
	};

	(void)state;
	for (size_t i = 0; i < COUNT_OF(cases); i++) {
		struct spool_rcpt r = {.address = "x@y",
				       .notify = cases[i].notify,
				       .state = cases[i].rcpt_state};
		enum bounce_kind kind = BOUNCE_DELAY;
		bool notice = bounce_outcome_notice(cases[i].sender, &r, &kind);
		if (notice != cases[i].notice ||
		    (notice && kind != cases[i].kind))
			fail_msg("case %zu: notice %d kind %d", i, notice,
				 kind);
	}
	assert_false(bounce_outcome_notice("a@b", NULL, NULL));
}

static void test_bounce_wanted_follows_notify(void **state)
{
	static const struct {
		const char *sender;
		unsigned notify;
		enum bounce_kind kind;
		bool wanted;
	} cases[] = {
	    {"a@b", 0, BOUNCE_FAILURE, true},
	    {"a@b", 0, BOUNCE_DELAY, false},
	    {"a@b", 0, BOUNCE_SUCCESS, false},
	    {"", 0, BOUNCE_FAILURE, false},
	    {"", SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_SUCCESS, BOUNCE_FAILURE,
	     false},
	    {"", SMTP_NOTIFY_SUCCESS, BOUNCE_SUCCESS, false},
	    {"a@b", SMTP_NOTIFY_NEVER, BOUNCE_FAILURE, false},
	    {"a@b", SMTP_NOTIFY_NEVER, BOUNCE_DELAY, false},
	    {"a@b", SMTP_NOTIFY_NEVER, BOUNCE_SUCCESS, false},
	    {"a@b", SMTP_NOTIFY_SUCCESS, BOUNCE_SUCCESS, true},
	    {"a@b", SMTP_NOTIFY_SUCCESS, BOUNCE_FAILURE, false},
	    {"a@b", SMTP_NOTIFY_SUCCESS, BOUNCE_DELAY, false},
	    {"a@b", SMTP_NOTIFY_FAILURE, BOUNCE_FAILURE, true},
	    {"a@b", SMTP_NOTIFY_FAILURE, BOUNCE_DELAY, false},
	    {"a@b", SMTP_NOTIFY_DELAY, BOUNCE_DELAY, true},
	    {"a@b", SMTP_NOTIFY_DELAY, BOUNCE_FAILURE, false},
	    {"a@b", SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY, BOUNCE_DELAY,
	     true},
	    {"a@b",
	     SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY,
	     BOUNCE_SUCCESS, true},
	};

	(void)state;
	for (size_t i = 0; i < COUNT_OF(cases); i++) {
		struct spool_rcpt r = {.address = "x@y",
				       .notify = cases[i].notify};
		if (bounce_wanted(cases[i].sender, &r, cases[i].kind) !=
		    cases[i].wanted)
			fail_msg("case %zu: sender \"%s\" notify %#x kind %d: "
				 "expected %d",
				 i, cases[i].sender, cases[i].notify,
				 (int)cases[i].kind, cases[i].wanted);
	}
	assert_false(
	    bounce_wanted(NULL, &(struct spool_rcpt){0}, BOUNCE_FAILURE));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(
		test_bounce_failure_is_multipart_report_with_three_parts),
	    cmocka_unit_test(test_bounce_recipient_fields_are_reported),
	    cmocka_unit_test(test_bounce_failure_status_defaults_and_class),
	    cmocka_unit_test(
		test_bounce_expired_recipients_keep_their_temporary_status),
	    cmocka_unit_test(test_bounce_reports_only_the_recipients_given),
	    cmocka_unit_test(
		test_bounce_ret_full_returns_the_message_dot_stuffed),
	    cmocka_unit_test(
		test_bounce_ret_hdrs_returns_the_header_section_only),
	    cmocka_unit_test(test_bounce_ret_unspecified_returns_headers),
	    cmocka_unit_test(
		test_bounce_large_original_is_cut_at_a_line_boundary),
	    cmocka_unit_test(test_bounce_envid_and_orcpt_are_reported_decoded),
	    cmocka_unit_test(test_bounce_delay_notice),
	    cmocka_unit_test(test_bounce_success_notice),
	    cmocka_unit_test(test_bounce_reason_with_line_breaks_is_sanitised),
	    cmocka_unit_test(test_bounce_long_reason_is_folded_and_cut),
	    cmocka_unit_test(test_bounce_boundary_never_appears_in_the_parts),
	    cmocka_unit_test(test_bounce_original_not_in_wire_form_is_made_so),
	    cmocka_unit_test(
		test_bounce_utf8_address_uses_global_delivery_status),
	    cmocka_unit_test(test_bounce_refuses_a_report_about_no_one),
	    cmocka_unit_test(test_bounce_without_original_has_two_parts),
	    cmocka_unit_test(test_bounce_python_email_parses_the_report),
	    cmocka_unit_test(test_bounce_wanted_follows_notify),
	    cmocka_unit_test(test_bounce_outcome_notice_by_state_and_notify),
	};

	/* Dates in the DSN are local time: pin it. */
	if (setenv("TZ", "UTC", 1) != 0)
		return 1;
	tzset();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
