/*
 * MTA-STS policy text (see mta_sts_policy.h): the TXT record, the policy
 * file and MX matching, pure. Field names and values are case-sensitive
 * (RFC 8461 §3.2 writes them with %s); MX names are not.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/hostname.h"
#include "facteur/mta_sts_policy.h"
#include "facteur/utf8.h"

static int fail(struct mta_sts_policy *out, char *err, size_t errlen,
		const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int fail(struct mta_sts_policy *out, char *err, size_t errlen,
		const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (errlen > 0)
		vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	mta_sts_policy_clear(out);
	return -1;
}

static bool valid_utf8(const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *)text;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_sequence_length(s + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

static bool field_is(const char *key, size_t len, const char *name)
{
	return len == strlen(name) && memcmp(key, name, len) == 0;
}

/* "mx.example.net" or "*.example.net": a host name, the wildcard only
 * as the whole leftmost label. */
static bool mx_pattern_valid(const char *value, size_t len)
{
	if (len > 2 && value[0] == '*' && value[1] == '.')
		return hostname_valid(value + 2, len - 2);
	return hostname_valid(value, len);
}

/* max_age: 1 to 10 digits, at most MTA_STS_MAX_AGE_MAX. */
static bool parse_max_age(const char *value, size_t len, uint32_t *out)
{
	uint64_t n = 0;
	if (len == 0 || len > 10)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!ascii_is_digit(value[i]))
			return false;
		n = n * 10 + (uint64_t)(value[i] - '0');
	}
	if (n > MTA_STS_MAX_AGE_MAX)
		return false;
	*out = (uint32_t)n;
	return true;
}

static bool parse_mode(const char *value, size_t len, enum mta_sts_mode *out)
{
	if (field_is(value, len, "enforce"))
		*out = MTA_STS_MODE_ENFORCE;
	else if (field_is(value, len, "testing"))
		*out = MTA_STS_MODE_TESTING;
	else if (field_is(value, len, "none"))
		*out = MTA_STS_MODE_NONE;
	else
		return false;
	return true;
}

int mta_sts_policy_parse(const char *text, size_t len,
			 struct mta_sts_policy *out, char *err, size_t errlen)
{
	bool has_version = false, has_mode = false, has_max_age = false;
	unsigned line_no = 0;

	memset(out, 0, sizeof *out);
	if (len > MTA_STS_POLICY_SIZE_MAX)
		return fail(out, err, errlen, "policy larger than %u octets",
			    MTA_STS_POLICY_SIZE_MAX);
	if (!valid_utf8(text, len))
		return fail(out, err, errlen, "policy is not UTF-8");
	for (size_t pos = 0; pos < len;) {
		const char *line = text + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t line_len = nl ? (size_t)(nl - line) : len - pos;
		pos += line_len + (nl != NULL);
		line_no++;
		if (line_len > 0 && line[line_len - 1] == '\r')
			line_len--;
		if (line_len == 0)
			continue; /* a final empty line, or blank lines */
		const char *colon = memchr(line, ':', line_len);
		if (colon == NULL || colon == line)
			return fail(out, err, errlen,
				    "line %u is not \"key: value\"", line_no);
		size_t key_len = (size_t)(colon - line);
		for (size_t i = 0; i < key_len; i++)
			if (!ascii_is_alnum(line[i]) && line[i] != '_' &&
			    line[i] != '-' && line[i] != '.')
				return fail(out, err, errlen,
					    "line %u has a bad key", line_no);
		size_t value_len = line_len - key_len - 1;
		const char *value = ascii_trim(colon + 1, &value_len, " \t");
		for (size_t i = 0; i < value_len; i++)
			if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
				return fail(out, err, errlen,
					    "line %u holds a control character",
					    line_no);
		/* the first of a repeated field counts (but mx: all) */
		if (field_is(line, key_len, "version")) {
			if (has_version)
				continue;
			if (!field_is(value, value_len, "STSv1"))
				return fail(out, err, errlen,
					    "version is not STSv1");
			has_version = true;
		} else if (field_is(line, key_len, "mode")) {
			if (has_mode)
				continue;
			if (!parse_mode(value, value_len, &out->mode))
				return fail(out, err, errlen,
					    "mode is not enforce, testing or "
					    "none");
			has_mode = true;
		} else if (field_is(line, key_len, "max_age")) {
			if (has_max_age)
				continue;
			if (!parse_max_age(value, value_len, &out->max_age))
				return fail(out, err, errlen,
					    "max_age is not a number from 0 "
					    "to %u",
					    MTA_STS_MAX_AGE_MAX);
			has_max_age = true;
		} else if (field_is(line, key_len, "mx")) {
			if (!mx_pattern_valid(value, value_len))
				return fail(out, err, errlen,
					    "line %u: bad mx pattern", line_no);
			if (out->mx_count == MTA_STS_MX_MAX)
				return fail(out, err, errlen,
					    "more than %d mx patterns",
					    MTA_STS_MX_MAX);
			char *mx = ascii_lower_dup(value, value_len);
			if (mx == NULL)
				return fail(out, err, errlen, "out of memory");
			out->mx[out->mx_count++] = mx;
		}
		/* other keys: ignored (§3.2, for extensions) */
	}
	if (!has_version)
		return fail(out, err, errlen, "no version field");
	if (!has_mode)
		return fail(out, err, errlen, "no mode field");
	if (!has_max_age)
		return fail(out, err, errlen, "no max_age field");
	if (out->mode != MTA_STS_MODE_NONE && out->mx_count == 0)
		return fail(out, err, errlen, "no mx field");
	return 0;
}

void mta_sts_policy_clear(struct mta_sts_policy *policy)
{
	for (size_t i = 0; i < policy->mx_count; i++)
		free(policy->mx[i]);
	memset(policy, 0, sizeof *policy);
}

int mta_sts_policy_copy(struct mta_sts_policy *to,
			const struct mta_sts_policy *from)
{
	memset(to, 0, sizeof *to);
	to->mode = from->mode;
	to->max_age = from->max_age;
	for (size_t i = 0; i < from->mx_count; i++) {
		to->mx[i] = strdup(from->mx[i]);
		if (to->mx[i] == NULL) {
			mta_sts_policy_clear(to);
			return -1;
		}
		to->mx_count++;
	}
	return 0;
}

bool mta_sts_policy_mx_matches(const struct mta_sts_policy *policy,
			       const char *host)
{
	size_t len = strlen(host);
	if (len > 0 && host[len - 1] == '.')
		len--;
	for (size_t i = 0; i < policy->mx_count; i++) {
		const char *p = policy->mx[i];
		size_t plen = strlen(p);
		if (p[0] == '*') {
			/* "*.b.c" against "a.b.c": one label, then ".b.c" */
			const char *dot = memchr(host, '.', len);
			if (dot == NULL || dot == host)
				continue;
			size_t rest = len - (size_t)(dot - host);
			if (ascii_ieq_len(dot, rest, p + 1, plen - 1))
				return true;
		} else if (ascii_ieq_len(host, len, p, plen)) {
			return true;
		}
	}
	return false;
}

const char *mta_sts_mode_name(enum mta_sts_mode mode)
{
	switch (mode) {
	case MTA_STS_MODE_ENFORCE:
		return "enforce";
	case MTA_STS_MODE_TESTING:
		return "testing";
	case MTA_STS_MODE_NONE:
		break;
	}
	return "none";
}

int mta_sts_txt_parse(const char *text, size_t len, char *id)
{
	bool has_id = false;
	size_t pos = 0;

	/* §3.1: "v=STSv1" first, then "; " separated fields */
	if (len < 7 || memcmp(text, "v=STSv1", 7) != 0)
		return 0;
	pos = 7;
	while (pos < len) {
		while (pos < len && ascii_is_wsp(text[pos]))
			pos++;
		if (pos == len)
			break;
		if (text[pos] != ';')
			return -1;
		pos++;
		while (pos < len && ascii_is_wsp(text[pos]))
			pos++;
		if (pos == len)
			break; /* a final ";" */
		const char *field = text + pos;
		const char *end = memchr(field, ';', len - pos);
		size_t field_len = end ? (size_t)(end - field) : len - pos;
		pos += field_len;
		field = ascii_trim(field, &field_len, " \t");
		const char *eq = memchr(field, '=', field_len);
		if (eq == NULL || eq == field)
			return -1;
		size_t key_len = (size_t)(eq - field);
		size_t value_len = field_len - key_len - 1;
		if (field_is(field, key_len, "id") && !has_id) {
			if (value_len == 0 || value_len > MTA_STS_ID_MAX)
				return -1;
			for (size_t i = 0; i < value_len; i++)
				if (!ascii_is_alnum(eq[1 + i]))
					return -1;
			memcpy(id, eq + 1, value_len);
			id[value_len] = '\0';
			has_id = true;
		}
	}
	return has_id ? 1 : -1;
}
