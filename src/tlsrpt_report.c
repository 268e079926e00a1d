/*
 * The TLS report's text (see tlsrpt_report.h): JSON written by hand (the
 * values are host names, policy lines, counts and the operator's
 * address, escaped as JSON strings), gzip through zlib, base64 through
 * auth's encoder.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/x509_vfy.h>
#include <zlib.h>

#include "facteur/auth.h"
#include "facteur/hostname.h"
#include "facteur/mailtime.h"
#include "facteur/text.h"
#include "facteur/tlsrpt_report.h"

static const char *const result_names[TLSRPT_RESULT_COUNT] = {
    [TLSRPT_SUCCESS] = "success",
    [TLSRPT_STARTTLS_NOT_SUPPORTED] = "starttls-not-supported",
    [TLSRPT_CERTIFICATE_HOST_MISMATCH] = "certificate-host-mismatch",
    [TLSRPT_CERTIFICATE_EXPIRED] = "certificate-expired",
    [TLSRPT_CERTIFICATE_NOT_TRUSTED] = "certificate-not-trusted",
    [TLSRPT_VALIDATION_FAILURE] = "validation-failure",
    [TLSRPT_TLSA_INVALID] = "tlsa-invalid",
    [TLSRPT_DNSSEC_INVALID] = "dnssec-invalid",
    [TLSRPT_DANE_REQUIRED] = "dane-required",
    [TLSRPT_STS_POLICY_FETCH_ERROR] = "sts-policy-fetch-error",
    [TLSRPT_STS_POLICY_INVALID] = "sts-policy-invalid",
    [TLSRPT_STS_WEBPKI_INVALID] = "sts-webpki-invalid",
};

const char *tlsrpt_result_name(enum tlsrpt_result result)
{
	return result < TLSRPT_RESULT_COUNT ? result_names[result] : "?";
}

enum tlsrpt_result tlsrpt_result_from_name(const char *name)
{
	for (int r = 0; r < TLSRPT_RESULT_COUNT; r++)
		if (strcmp(result_names[r], name) == 0)
			return (enum tlsrpt_result)r;
	return TLSRPT_RESULT_COUNT;
}

enum tlsrpt_result tlsrpt_result_of_verify(long verify_result)
{
	switch (verify_result) {
	case X509_V_ERR_HOSTNAME_MISMATCH:
		return TLSRPT_CERTIFICATE_HOST_MISMATCH;
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return TLSRPT_CERTIFICATE_EXPIRED;
	/* no chain to a root we trust */
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_CERT_UNTRUSTED:
		return TLSRPT_CERTIFICATE_NOT_TRUSTED;
	case X509_V_ERR_DANE_NO_MATCH:
		return TLSRPT_TLSA_INVALID;
	default:
		return TLSRPT_VALIDATION_FAILURE;
	}
}

char *tlsrpt_tlsa_string(const struct dns_tlsa *tlsa)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t len = 16 + 2 * tlsa->data_len;
	char *out = malloc(len);
	if (out == NULL)
		return NULL;
	int n = snprintf(out, len, "%u %u %u ", tlsa->usage, tlsa->selector,
			 tlsa->matching);
	char *p = out + n;
	for (size_t i = 0; i < tlsa->data_len; i++) {
		*p++ = hex[tlsa->data[i] >> 4];
		*p++ = hex[tlsa->data[i] & 0x0f];
	}
	*p = '\0';
	return out;
}

/* ---- the pure parts ---- */

/* "mailto:ADDRESS": the address, when its domain is a host name. */
static bool rua_mailto(const char *uri, size_t n, struct tlsrpt_rua *out)
{
	const char *addr = uri + 7;
	size_t alen = n - 7;
	const char *at = memchr(addr, '@', alen);
	if (at == NULL || at == addr || alen >= sizeof out->mailto ||
	    !hostname_valid(at + 1, alen - (size_t)(at - addr) - 1))
		return false;
	memcpy(out->mailto, addr, alen);
	out->mailto[alen] = '\0';
	return true;
}

/* "https://HOST[:PORT][/PATH]": a host name (no user information, no IP
 * address: the certificate is checked against the name), a port from 1
 * to 65535, a path of printable characters without a fragment. */
static bool rua_https(const char *uri, size_t n, struct tlsrpt_rua *out)
{
	const char *host = uri + 8, *end = uri + n;
	const char *slash = memchr(host, '/', (size_t)(end - host));
	const char *auth_end = slash != NULL ? slash : end;
	const char *colon = memchr(host, ':', (size_t)(auth_end - host));
	const char *host_end = colon != NULL ? colon : auth_end;
	size_t hlen = (size_t)(host_end - host);
	unsigned long port = 443;
	if (hlen == 0 || hlen > HOSTNAME_MAX || !hostname_valid(host, hlen) ||
	    memchr(host, '@', (size_t)(auth_end - host)) != NULL)
		return false;
	/* a top label of digits alone is an IPv4 address, not a name */
	const char *top = host + hlen;
	while (top > host && top[-1] != '.')
		top--;
	if (strspn(top, "0123456789") >= (size_t)(host_end - top))
		return false;
	if (colon != NULL) {
		if (colon + 1 == auth_end || auth_end - colon > 6)
			return false;
		port = 0;
		for (const char *p = colon + 1; p < auth_end; p++) {
			if (*p < '0' || *p > '9')
				return false;
			port = port * 10 + (unsigned long)(*p - '0');
		}
		if (port == 0 || port > 65535)
			return false;
	}
	size_t plen = slash != NULL ? (size_t)(end - slash) : 0;
	if (plen >= sizeof out->https_path)
		return false;
	for (size_t i = 0; i < plen; i++)
		if (slash[i] <= ' ' || slash[i] >= 0x7f || slash[i] == '#')
			return false;
	memcpy(out->https_host, host, hlen);
	out->https_host[hlen] = '\0';
	out->https_port = (uint16_t)port;
	if (plen == 0)
		snprintf(out->https_path, sizeof out->https_path, "/");
	else {
		memcpy(out->https_path, slash, plen);
		out->https_path[plen] = '\0';
	}
	return true;
}

int tlsrpt_record_parse(const char *text, struct tlsrpt_rua *out)
{
	memset(out, 0, sizeof *out);
	if (strncmp(text, "v=TLSRPTv1", 10) != 0 ||
	    (text[10] != ';' && text[10] != ' ' && text[10] != '\0'))
		return 0;
	const char *rua = strstr(text, "rua=");
	if (rua == NULL)
		return -1;
	/* rua=URI,URI...: the first usable of each scheme */
	for (const char *p = rua + 4; *p != '\0' && *p != ';';) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		size_t n = strcspn(p, ",; \t");
		if (out->mailto[0] == '\0' && n > 7 &&
		    strncasecmp(p, "mailto:", 7) == 0)
			(void)rua_mailto(p, n, out);
		else if (out->https_host[0] == '\0' && n > 8 &&
			 strncasecmp(p, "https://", 8) == 0)
			(void)rua_https(p, n, out);
		p += n;
	}
	return out->mailto[0] != '\0' || out->https_host[0] != '\0' ? 1 : -1;
}

static void json_string(struct text *t, const char *s)
{
	text_str(t, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			text_fmt(t, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			text_fmt(t, "\\u%04x", c);
		else
			text_add(t, s, 1);
	}
	text_str(t, "\"");
}

static void json_time(struct text *t, time_t when)
{
	struct tm tm;
	char buf[32] = "1970-01-01T00:00:00Z";
	if (gmtime_r(&when, &tm) != NULL)
		strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_string(t, buf);
}

/* The "policy" object of one element of "policies". */
static void json_policy(struct text *t, const char *domain,
			const struct tlsrpt_policy_counts *pc)
{
	const struct mta_sts_policy *p = &pc->sts;
	bool tlsa = pc->type == TLSRPT_POLICY_TLSA;
	bool sts = !tlsa && p->mode != MTA_STS_MODE_NONE;
	text_str(t, "{\"policy\":{\"policy-type\":");
	json_string(t, tlsa ? "tlsa" : sts ? "sts" : "no-policy-found");
	if (sts) {
		text_str(t, ",\"policy-string\":[\"version: STSv1\",");
		text_fmt(t, "\"mode: %s\"", mta_sts_mode_name(p->mode));
		for (size_t i = 0; i < p->mx_count; i++) {
			text_str(t, ",");
			char line[300];
			snprintf(line, sizeof line, "mx: %s", p->mx[i]);
			json_string(t, line);
		}
		text_fmt(t, ",\"max_age: %" PRIu32 "\"]", p->max_age);
	} else if (tlsa) {
		text_str(t, ",\"policy-string\":[");
		for (size_t i = 0; i < pc->tlsa_count; i++) {
			if (i > 0)
				text_str(t, ",");
			json_string(t, pc->tlsa[i]);
		}
		text_str(t, "]");
	}
	text_str(t, ",\"policy-domain\":");
	json_string(t, domain);
	if (sts) {
		text_str(t, ",\"mx-host\":[");
		for (size_t i = 0; i < p->mx_count; i++) {
			if (i > 0)
				text_str(t, ",");
			json_string(t, p->mx[i]);
		}
		text_str(t, "]");
	} else if (tlsa) {
		text_str(t, ",\"mx-host\":[");
		json_string(t, pc->mx_host);
		text_str(t, "]");
	}
	text_str(t, "}");
}

/* The failed sessions of result type r that no failure detail holds. */
static uint64_t undetailed(const struct tlsrpt_policy_counts *pc, int r)
{
	uint64_t n = pc->count[r];
	for (size_t i = 0; i < pc->failure_count; i++)
		if ((int)pc->failures[i].result == r)
			n -= n < pc->failures[i].count ? n
						       : pc->failures[i].count;
	return n;
}

static void json_failure(struct text *t, const struct tlsrpt_failure *f)
{
	text_fmt(t, "{\"result-type\":\"%s\"", result_names[f->result]);
	if (f->sending_ip[0]) {
		text_str(t, ",\"sending-mta-ip\":");
		json_string(t, f->sending_ip);
	}
	if (f->receiving_mx[0]) {
		text_str(t, ",\"receiving-mx-hostname\":");
		json_string(t, f->receiving_mx);
	}
	if (f->receiving_ip[0]) {
		text_str(t, ",\"receiving-ip\":");
		json_string(t, f->receiving_ip);
	}
	text_fmt(t, ",\"failed-session-count\":%" PRIu64 "}", f->count);
}

char *tlsrpt_report_json(const struct tlsrpt_counts *c, const char *org,
			 const char *contact, const char *report_id,
			 time_t start, time_t end, size_t *len)
{
	struct text t = {0};
	text_str(&t, "{\"organization-name\":");
	json_string(&t, org);
	text_str(&t, ",\"date-range\":{\"start-datetime\":");
	json_time(&t, start);
	text_str(&t, ",\"end-datetime\":");
	json_time(&t, end);
	text_str(&t, "},\"contact-info\":");
	json_string(&t, contact);
	text_str(&t, ",\"report-id\":");
	json_string(&t, report_id);
	text_str(&t, ",\"policies\":[");
	for (size_t k = 0; k < c->policy_count; k++) {
		const struct tlsrpt_policy_counts *pc = &c->policies[k];
		if (k > 0)
			text_str(&t, ",");
		json_policy(&t, c->domain, pc);
		uint64_t failed = 0;
		for (int r = TLSRPT_SUCCESS + 1; r < TLSRPT_RESULT_COUNT; r++)
			failed += pc->count[r];
		text_fmt(&t,
			 ",\"summary\":{\"total-successful-session-count\":"
			 "%" PRIu64 ",\"total-failure-session-count\":%" PRIu64
			 "}",
			 pc->count[TLSRPT_SUCCESS], failed);
		text_str(&t, ",\"failure-details\":[");
		bool first = true;
		/* by result type; the sessions of a type beyond what the
		 * details hold (they are bounded) in one line without
		 * addresses */
		for (int r = TLSRPT_SUCCESS + 1; r < TLSRPT_RESULT_COUNT; r++) {
			for (size_t i = 0; i < pc->failure_count; i++) {
				if ((int)pc->failures[i].result != r ||
				    pc->failures[i].count == 0)
					continue;
				text_str(&t, first ? "" : ",");
				json_failure(&t, &pc->failures[i]);
				first = false;
			}
			uint64_t rest = undetailed(pc, r);
			if (rest == 0)
				continue;
			struct tlsrpt_failure f = {.result = r, .count = rest};
			text_str(&t, first ? "" : ",");
			json_failure(&t, &f);
			first = false;
		}
		text_str(&t, "]}");
	}
	text_str(&t, "]}");
	return text_finish(&t, len);
}

unsigned char *tlsrpt_gzip(const char *in, size_t len, size_t *outlen)
{
	z_stream z = {0};
	/* 15 + 16: a gzip wrapper rather than zlib's own */
	if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return NULL;
	uLong bound = deflateBound(&z, (uLong)len);
	unsigned char *out = malloc(bound);
	if (out == NULL) {
		deflateEnd(&z);
		return NULL;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)len;
	z.next_out = out;
	z.avail_out = (uInt)bound;
	int rc = deflate(&z, Z_FINISH);
	*outlen = z.total_out;
	deflateEnd(&z);
	if (rc != Z_STREAM_END) {
		free(out);
		return NULL;
	}
	return out;
}

void tlsrpt_format_stamp(time_t when, char *buf, size_t len)
{
	struct tm tm;
	if (gmtime_r(&when, &tm) == NULL ||
	    strftime(buf, len, "%Y%m%dT%H%M%SZ", &tm) == 0)
		snprintf(buf, len, "%lld", (long long)when);
}

char *tlsrpt_mail_build(const struct tlsrpt_mail *m, size_t *len)
{
	struct text t = {0};
	char date[64];
	mailtime_format(m->now, date, sizeof date);
	char boundary[96];
	snprintf(boundary, sizeof boundary, "tlsrpt-%s", m->report_id);
	/* the boundary must not hold what a report id may: keep it to
	 * letters, digits and a few signs */
	for (char *b = boundary; *b; b++)
		if (!((*b >= 'a' && *b <= 'z') || (*b >= 'A' && *b <= 'Z') ||
		      (*b >= '0' && *b <= '9')))
			*b = '-';
	text_fmt(&t, "From: %s\r\nTo: %s\r\n", m->from, m->to);
	text_fmt(&t,
		 "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n",
		 m->domain, m->submitter, m->report_id);
	text_fmt(&t, "Date: %s\r\nMessage-ID: <%s>\r\n", date, m->report_id);
	text_fmt(&t, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n",
		 m->domain, m->submitter);
	text_str(&t, "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
	text_fmt(&t,
		 "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
		 "\tboundary=\"%s\"\r\n\r\n",
		 boundary);
	text_fmt(&t,
		 "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
		 "This is an aggregate TLS report (RFC 8460) from %s\r\n"
		 "for %s.\r\n\r\n",
		 boundary, m->submitter, m->domain);
	char start[32], end[32];
	tlsrpt_format_stamp(m->start, start, sizeof start);
	tlsrpt_format_stamp(m->end, end, sizeof end);
	text_fmt(&t,
		 "--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
		 "Content-Transfer-Encoding: base64\r\n"
		 "Content-Disposition: attachment;\r\n"
		 "\tfilename=\"%s!%s!%s!%s.json.gz\"\r\n\r\n",
		 boundary, m->submitter, m->domain, start, end);
	size_t b64_len = 4 * ((m->gz_len + 2) / 3) + 1;
	char *b64 = malloc(b64_len);
	if (b64 == NULL ||
	    auth_base64_encode(m->gz, m->gz_len, b64, b64_len) < 0) {
		free(b64);
		free(text_finish(&t, NULL));
		return NULL;
	}
	size_t n = strlen(b64);
	for (size_t at = 0; at < n; at += 76) {
		text_add(&t, b64 + at, n - at < 76 ? n - at : 76);
		text_str(&t, "\r\n");
	}
	free(b64);
	text_fmt(&t, "--%s--\r\n", boundary);
	return text_finish(&t, len);
}
