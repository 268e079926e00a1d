/*
 * The control protocol's parsers and facteur-sendmail's message handling
 * on arbitrary input. The first octet picks the mode of the sendmail
 * input (-i or not) and how it is cut into reads; the rest is both a
 * request line, a reply record, a suspended-domains file and a submitted
 * message. Checked: no crash or leak, bounds kept, a request's options
 * within their ranges, JSON strings free of raw controls, the suspended
 * domains file read back as written, and a rewritten header section is
 * whole CRLF lines, ends with the empty line and holds no Bcc: field.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/control_proto.h"
#include "facteur/domain_suspend.h"
#include "facteur/submission.h"
#include "facteur/text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_request(const char *text, size_t len)
{
	struct control_request req;
	const char *error = NULL;

	if (control_proto_parse_request(text, len, &req, &error) == -1) {
		if (error == NULL || error[0] == '\0')
			abort();
		return;
	}
	if (req.has_id && strlen(req.id) != SPOOL_ID_LEN)
		abort();
	if (req.has_id && req.all)
		abort();
	if (req.select.has_domain &&
	    (req.select.domain[0] == '\0' || strchr(req.select.domain, '@')))
		abort();
	if (req.all && !req.yes && !req.dry_run)
		abort();
	if (req.command == CONTROL_SUSPEND && !req.select.has_domain)
		abort();
}

/* Every octet below 0x20 escaped, the string closed. */
static void check_json(const char *text, size_t len)
{
	char *s = strndup(text, len);
	struct text t = {0};

	if (s == NULL)
		return;
	control_proto_json_string(&t, s);
	char *out = text_finish(&t, NULL);
	if (out != NULL) {
		size_t n = strlen(out);
		if (n < 2 || out[0] != '"' || out[n - 1] != '"')
			abort();
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)out[i] < 0x20)
				abort();
	}
	free(out);
	free(s);
}

/* What the table writes, it reads back whole. */
static void check_suspensions(const char *text, size_t len)
{
	struct domain_suspend *a = domain_suspend_new();
	struct domain_suspend *b = domain_suspend_new();
	size_t n = 0;

	if (a != NULL && b != NULL) {
		(void)domain_suspend_parse(a, text, len);
		char *out = domain_suspend_format(a, &n);
		if (out != NULL && domain_suspend_parse(b, out, n) != 0)
			abort();
		free(out);
	}
	domain_suspend_free(a);
	domain_suspend_free(b);
}

/* The human form of a record, whatever it holds. */
static void check_records(const char *text, size_t len)
{
	char *a = strndup(text, len);
	char *b = strndup(text, len);
	struct control_queue_totals totals = {0};
	bool in_headers = false;

	if (a != NULL)
		free(control_proto_format_queue_line(a, 0, &totals));
	char *c = strndup(text, len);
	if (c != NULL)
		free(control_proto_format_summary_line(c, 0, len % 2 == 0));
	free(c);
	if (b != NULL)
		free(control_proto_format_show_line(b, 0, &in_headers));
	free(a);
	free(b);
	char *h = control_proto_header_records(text, len, len % 2 == 0, NULL);
	if (h != NULL) {
		/* One record per line: never an empty line. */
		if (h[0] == '\n' || strstr(h, "\n\n") != NULL)
			abort();
		free(h);
	}
}

static void check_headers(const char *out, size_t len)
{
	if (len < 2 || out[len - 2] != '\r' || out[len - 1] != '\n')
		abort();
	if (len >= 4 && memcmp(out + len - 4, "\r\n\r\n", 4) != 0 && len != 2)
		abort();
	for (size_t i = 0; i < len; i++) {
		if (out[i] == '\r' && (i + 1 == len || out[i + 1] != '\n'))
			abort();
		if (out[i] == '\n' && (i == 0 || out[i - 1] != '\r'))
			abort();
		bool bol = i == 0 || out[i - 1] == '\n';
		if (bol && len - i >= 4 &&
		    strncasecmp(out + i, "bcc", 3) == 0) {
			size_t j = i + 3;
			while (j < len && (out[j] == ' ' || out[j] == '\t'))
				j++;
			if (j < len && out[j] == ':')
				abort();
		}
	}
}

static void check_message(const char *text, size_t len, bool ignore_dots,
			  size_t step)
{
	struct submission_input in = {.ignore_dots = ignore_dots};
	char *msg = malloc(2 * len + 8);
	char *out = malloc(SUBMISSION_INPUT_OUT_MAX(step));
	size_t used = 0;

	if (msg == NULL || out == NULL)
		goto done;
	for (size_t pos = 0; pos < len && !in.done;) {
		size_t n = len - pos < step ? len - pos : step;
		size_t outlen = 0;
		size_t consumed =
		    submission_input_feed(&in, text + pos, n, out, &outlen);
		if (consumed > n || outlen > SUBMISSION_INPUT_OUT_MAX(n))
			abort();
		if (consumed < n && !in.done)
			abort();
		memcpy(msg + used, out, outlen);
		used += outlen;
		pos += consumed;
	}
	used += submission_input_finish(&in, msg + used);
	if (used > len)
		abort();

	long end = submission_header_end(msg, used, true);
	if (end < 0 || (size_t)end > used)
		abort();
	struct submission_headers sub = {
	    .extract_recipients = true,
	    .from = "user@example.test",
	    .from_name = len % 3 == 0 ? "Name, \"quoted\"" : NULL,
	    .date = "Mon, 01 Jan 2024 00:00:00 +0000",
	    .message_id = "<1@example.test>",
	};
	struct submission_addresses rcpts = {0};
	size_t outlen = 0;
	char *head =
	    submission_rewrite_headers(msg, (size_t)end, &sub, &rcpts, &outlen);
	if (head != NULL) {
		check_headers(head, outlen);
		free(head);
	}
	for (size_t i = 0; i < rcpts.count; i++)
		if (rcpts.items[i][0] == '\0')
			abort();
	submission_addresses_clear(&rcpts);
done:
	free(msg);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	bool ignore_dots = data[0] & 1;
	size_t step = 1 + (data[0] >> 1) % 64;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;

	check_request(text, len);
	check_records(text, len);
	check_json(text, len);
	check_suspensions(text, len);
	check_message(text, len, ignore_dots, step);

	struct submission_addresses list = {0};
	if (submission_parse_addresses(text, len, &list) == 0)
		for (size_t i = 0; i < list.count; i++)
			if (list.items[i][0] == '\0')
				abort();
	submission_addresses_clear(&list);
	return 0;
}
