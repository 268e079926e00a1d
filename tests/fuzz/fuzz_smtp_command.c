/*
 * A command line through smtp_parse_command, then its argument through
 * the MAIL, RCPT and BDAT parsers, with checks on what they return.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/smtp_proto.h"
#include "facteur/text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_path(const struct smtp_path *p)
{
	size_t len = strnlen(p->address, sizeof p->address);
	size_t i;

	if (len > SMTP_PATH_MAX || p->local_len > len)
		abort();
	if (p->is_null && len != 0)
		abort();
	if (!p->is_null && !p->is_postmaster &&
	    (p->local_len >= len || p->address[p->local_len] != '@' ||
	     p->local_len > SMTP_LOCAL_PART_MAX))
		abort();
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p->address[i];
		if (c < 32 || c == 127)
			abort();
		if (c >= 0x80 && !p->utf8)
			abort();
	}
	/* the domain of a parsed address passes the domain check */
	if (!p->is_null && !p->is_postmaster &&
	    !smtp_domain_valid(p->address + p->local_len + 1,
			       len - p->local_len - 1))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct smtp_command cmd;
	struct smtp_mail mail;
	struct smtp_rcpt rcpt;
	struct smtp_path path;
	uint64_t bdat_size;
	bool last;
	size_t used;
	char enc[3 * 64 + 1], dec[65];
	int n;

	smtp_parse_command(line, size, &cmd);
	if (cmd.arg < line || cmd.arg + cmd.arglen > line + size)
		abort();
	if (smtp_verb_name(cmd.verb) == NULL)
		abort();

	if (smtp_parse_mail(cmd.arg, cmd.arglen, &mail) == SMTP_PARSE_OK) {
		check_path(&mail.from);
		if (mail.from.is_postmaster)
			abort();
		if (strnlen(mail.envid, sizeof mail.envid) > SMTP_ENVID_MAX)
			abort();
	}
	if (smtp_parse_rcpt(cmd.arg, cmd.arglen, &rcpt) == SMTP_PARSE_OK) {
		check_path(&rcpt.to);
		if (rcpt.to.is_null)
			abort();
		if ((rcpt.notify & SMTP_NOTIFY_NEVER) &&
		    rcpt.notify != SMTP_NOTIFY_NEVER)
			abort();
		if (strnlen(rcpt.orcpt, sizeof rcpt.orcpt) > SMTP_ORCPT_MAX)
			abort();
	}
	/* the argument as one RCPT parameter alone (a milter's added
	 * recipient): on top of a NOTIFY already given, never changed
	 * unless accepted */
	memset(&rcpt, 0, sizeof rcpt);
	rcpt.notify = SMTP_NOTIFY_FAILURE;
	enum smtp_parse_result pr =
	    smtp_parse_rcpt_param(cmd.arg, cmd.arglen, &rcpt);
	if (pr != SMTP_PARSE_OK &&
	    (rcpt.notify != SMTP_NOTIFY_FAILURE || rcpt.orcpt[0] != '\0'))
		abort();
	if (pr == SMTP_PARSE_OK &&
	    (rcpt.notify != SMTP_NOTIFY_FAILURE ||
	     strnlen(rcpt.orcpt, sizeof rcpt.orcpt) > SMTP_ORCPT_MAX))
		abort();
	if (smtp_parse_bdat(cmd.arg, cmd.arglen, &bdat_size, &last) !=
		SMTP_PARSE_OK &&
	    (bdat_size != 0 || last))
		abort();

	if (smtp_parse_path(line, size, true, true, &path, &used) ==
	    SMTP_PARSE_OK) {
		if (used > size || used < 2 || line[used - 1] != '>')
			abort();
		check_path(&path);
	} else if (used != 0) {
		abort();
	}
	(void)smtp_domain_valid(line, size);

	/* xtext: what is encoded decodes back (no NUL: it ends a C string) */
	if (size <= 64 && memchr(line, '\0', size) == NULL) {
		n = text_xtext_encode(line, size, enc, sizeof enc);
		if (n < 0)
			abort();
		if (text_xtext_decode(enc, (size_t)n, dec, sizeof dec, 0) !=
			(int)size ||
		    memcmp(dec, line, size) != 0)
			abort();
	}
	n = text_xtext_decode(line, size, dec, sizeof dec, 0);
	if (n >= 0 && (size_t)n != strlen(dec))
		abort();
	return 0;
}
