/*
 * The DNS answer parsers (RFC 1035 §4, RFC 2308, RFC 6698) and the rules
 * of the names we ask about: pure, bounds-checked, no I/O, no c-ares and
 * no libevent, so that the fuzzers and the parser tests link this file
 * alone. We read answers ourselves rather than through c-ares because
 * we need what its parsers hide: the RCODE (NXDOMAIN and NODATA are
 * different answers), the AD bit and the TTLs (the cache). The copies
 * of records and results, pure as well, live here too.
 */
#include <stdlib.h>
#include <string.h>

#include "facteur/dns_internal.h"
#include "facteur/log.h"

#define DNS_POINTER_HOPS_MAX 64

void *dns_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);

	if (p == NULL)
		fatal("dns: out of memory");
	return p;
}

char *dns_xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		fatal("dns: out of memory");
	return p;
}
static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* RFC 2181 §8: a TTL with the top bit set is read as zero. */
static uint32_t ttl_of(uint32_t raw)
{
	return (raw & 0x80000000u) ? 0 : raw;
}

/* Host names are letters, digits, hyphens (and underscores in practice);
 * anything else becomes '?' so that a name stays printable and is never
 * mistaken for a usable host. */
static char name_char(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return (char)(c - 'A' + 'a');
	if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
	    c == '_')
		return (char)c;
	return '?';
}

/*
 * Read the (maybe compressed) name at *off and move *off past it. With
 * out (DNS_NAME_BUF octets), write it as text: lower case, no final dot,
 * "" for the root. Pointers may point anywhere, but their number is
 * bounded so that loops end, and so is the name (255 octets on the wire).
 */
static int read_name(const unsigned char *buf, size_t len, size_t *off,
		     char *out)
{
	size_t pos = *off, wire = 1, n = 0, hops = 0;
	bool jumped = false;

	for (;;) {
		unsigned char c;

		if (pos >= len)
			return -1;
		c = buf[pos];
		if ((c & 0xc0) == 0xc0) {
			if (len - pos < 2 || ++hops > DNS_POINTER_HOPS_MAX)
				return -1;
			if (!jumped)
				*off = pos + 2;
			jumped = true;
			pos = (size_t)(c & 0x3f) << 8 | buf[pos + 1];
			continue;
		}
		if (c & 0xc0)
			return -1; /* extended label types (RFC 6891): none */
		if (c == 0)
			break;
		if (c > len - pos - 1)
			return -1;
		wire += (size_t)c + 1;
		if (wire > 255)
			return -1;
		if (out != NULL) {
			if (n + c + 2 > DNS_NAME_BUF)
				return -1;
			if (n > 0)
				out[n++] = '.';
			for (size_t i = 0; i < c; i++)
				out[n++] = name_char(buf[pos + 1 + i]);
		}
		pos += (size_t)c + 1;
	}
	if (!jumped)
		*off = pos + 1;
	if (out != NULL)
		out[n] = '\0';
	return 0;
}

enum dns_tlsa_check dns_tlsa_parse(const unsigned char *rdata, size_t len,
				   struct dns_tlsa *out)
{
	memset(out, 0, sizeof(*out));
	if (rdata == NULL || len < 4)
		return DNS_TLSA_TOO_SHORT;
	out->usage = rdata[0];
	out->selector = rdata[1];
	out->matching = rdata[2];
	out->data = rdata + 3;
	out->data_len = len - 3;
	/* RFC 6698 §2.1.3: a digest has its function's size; a full
	 * certificate or key (matching type 0) any size */
	if ((out->matching == DNS_TLSA_MATCH_SHA256 && out->data_len != 32) ||
	    (out->matching == DNS_TLSA_MATCH_SHA512 && out->data_len != 64))
		return DNS_TLSA_BAD_DIGEST_SIZE;
	return DNS_TLSA_WELL_FORMED;
}

static unsigned char *copy_octets(const unsigned char *data, size_t len)
{
	unsigned char *p = malloc(len == 0 ? 1 : len);

	if (p == NULL)
		fatal("dns: out of memory");
	if (len > 0)
		memcpy(p, data, len);
	return p;
}

static int add_record(struct dns_answer *a, const unsigned char *buf,
		      size_t len, size_t off, size_t rdlen, uint16_t type,
		      uint32_t ttl)
{
	struct dns_record r = {.type = type, .ttl = ttl};
	char name[DNS_NAME_BUF];
	size_t pos;

	switch (type) {
	case DNS_TYPE_A:
		if (rdlen != 4)
			return -1;
		memcpy(r.addr, buf + off, 4);
		break;
	case DNS_TYPE_AAAA:
		if (rdlen != 16)
			return -1;
		memcpy(r.addr, buf + off, 16);
		break;
	case DNS_TYPE_MX:
		if (rdlen < 3)
			return -1;
		r.preference = get16(buf + off);
		pos = off + 2;
		if (read_name(buf, len, &pos, name) < 0 || pos != off + rdlen)
			return -1;
		break;
	case DNS_TYPE_TLSA:
		r.tlsa_check = dns_tlsa_parse(buf + off, rdlen, &r.tlsa);
		break;
	default:
		return 0; /* a type we never ask for */
	}
	if (a->count >= DNS_ANSWER_MAX)
		return 0;
	if (type == DNS_TYPE_MX)
		r.exchange = dns_xstrdup(name);
	if (type == DNS_TYPE_TLSA)
		r.tlsa.data = copy_octets(r.tlsa.data, r.tlsa.data_len);
	if (a->records == NULL)
		a->records = dns_xcalloc(DNS_ANSWER_MAX, sizeof(*a->records));
	if (a->count == 0 || ttl < a->ttl)
		a->ttl = ttl;
	a->records[a->count++] = r;
	return 0;
}

/* RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM). */
static int read_soa(struct dns_answer *a, const unsigned char *buf, size_t len,
		    size_t off, size_t rdlen, uint32_t ttl)
{
	size_t pos = off, end = off + rdlen;
	uint32_t minimum, negative;

	if (read_name(buf, len, &pos, NULL) < 0 ||
	    read_name(buf, len, &pos, NULL) < 0)
		return -1;
	if (pos > end || end - pos != 20)
		return -1;
	minimum = ttl_of(get32(buf + pos + 16));
	negative = ttl < minimum ? ttl : minimum;
	if (!a->has_negative_ttl || negative < a->negative_ttl)
		a->negative_ttl = negative;
	a->has_negative_ttl = true;
	return 0;
}

int dns_answer_parse(const unsigned char *buf, size_t len, uint16_t qtype,
		     struct dns_answer *out)
{
	size_t off = DNS_HEADER_LEN;
	unsigned counts[2];
	unsigned qdcount;

	memset(out, 0, sizeof(*out));
	if (buf == NULL || len < DNS_HEADER_LEN)
		return -1;
	out->rcode = buf[3] & 0x0f;
	out->authenticated = (buf[3] & 0x20) != 0;
	qdcount = get16(buf + 4);
	counts[0] = get16(buf + 6); /* answer */
	counts[1] = get16(buf + 8); /* authority; additional is not read */

	for (unsigned i = 0; i < qdcount; i++) {
		if (read_name(buf, len, &off, NULL) < 0 || len - off < 4)
			goto malformed;
		off += 4;
	}
	for (int section = 0; section < 2; section++) {
		for (unsigned i = 0; i < counts[section]; i++) {
			uint16_t type, class, rdlen;
			uint32_t ttl;
			int rc = 0;

			if (read_name(buf, len, &off, NULL) < 0 ||
			    len - off < 10)
				goto malformed;
			type = get16(buf + off);
			class = get16(buf + off + 2);
			ttl = ttl_of(get32(buf + off + 4));
			rdlen = get16(buf + off + 8);
			off += 10;
			if (rdlen > len - off)
				goto malformed;
			if (class == DNS_CLASS_IN && section == 0 &&
			    type == qtype)
				rc = add_record(out, buf, len, off, rdlen, type,
						ttl);
			else if (class == DNS_CLASS_IN && section == 1 &&
				 type == DNS_TYPE_SOA)
				rc = read_soa(out, buf, len, off, rdlen, ttl);
			if (rc < 0)
				goto malformed;
			off += rdlen;
		}
	}
	return 0;

malformed:
	dns_answer_clear(out);
	return -1;
}

void dns_records_free(struct dns_record *records, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(records[i].exchange);
		free((void *)records[i].tlsa.data);
	}
	free(records);
}

void dns_answer_clear(struct dns_answer *answer)
{
	dns_records_free(answer->records, answer->count);
	memset(answer, 0, sizeof(*answer));
}

struct dns_record *dns_records_copy(const struct dns_record *records,
				    size_t count)
{
	struct dns_record *copy = dns_xcalloc(count, sizeof(*copy));

	for (size_t i = 0; i < count; i++) {
		copy[i] = records[i];
		if (records[i].exchange != NULL)
			copy[i].exchange = dns_xstrdup(records[i].exchange);
		if (records[i].tlsa.data != NULL)
			copy[i].tlsa.data = copy_octets(
			    records[i].tlsa.data, records[i].tlsa.data_len);
	}
	return copy;
}

struct dns_result *dns_result_copy(const struct dns_result *result)
{
	struct dns_result *copy = dns_xcalloc(1, sizeof(*copy));

	*copy = *result;
	copy->hosts = NULL;
	copy->records = NULL;
	if (result->host_count > 0) {
		copy->hosts =
		    dns_xcalloc(result->host_count, sizeof(*copy->hosts));
		for (size_t i = 0; i < result->host_count; i++) {
			const struct dns_host *h = &result->hosts[i];
			struct dns_host *c = &copy->hosts[i];

			*c = *h;
			c->name = dns_xstrdup(h->name);
			c->addrs =
			    dns_xcalloc(h->addr_count, sizeof(*c->addrs));
			if (h->addr_count > 0)
				memcpy(c->addrs, h->addrs,
				       h->addr_count * sizeof(*h->addrs));
		}
	}
	if (result->record_count > 0)
		copy->records =
		    dns_records_copy(result->records, result->record_count);
	return copy;
}

void dns_result_free(struct dns_result *result)
{
	if (result == NULL)
		return;
	for (size_t i = 0; i < result->host_count; i++) {
		free(result->hosts[i].name);
		free(result->hosts[i].addrs);
	}
	free(result->hosts);
	dns_records_free((struct dns_record *)result->records,
			 result->record_count);
	free(result);
}

int dns_name_normalize(const char *in, char *out)
{
	size_t len = strnlen(in, DNS_NAME_BUF), label = 0;

	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return -1;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '.') {
			if (label == 0)
				return -1;
			label = 0;
			out[i] = '.';
			continue;
		}
		out[i] = name_char((unsigned char)c);
		if (out[i] == '?' || ++label > 63)
			return -1;
	}
	if (label == 0)
		return -1;
	out[len] = '\0';
	return 0;
}

/* One TXT record: its character-strings joined, a NUL octet read as '?'
 * so that the text stays one C string. */
static int add_txt(char ***texts, size_t *count, const unsigned char *rdata,
		   size_t rdlen)
{
	char *text;
	size_t n = 0;

	if (*count >= DNS_ANSWER_MAX)
		return 0;
	text = malloc(rdlen + 1);
	if (text == NULL)
		fatal("dns: out of memory");
	for (size_t pos = 0; pos < rdlen;) {
		size_t part = rdata[pos++];

		if (part > rdlen - pos) {
			free(text);
			return -1;
		}
		for (size_t i = 0; i < part; i++)
			text[n++] = rdata[pos + i] ? (char)rdata[pos + i] : '?';
		pos += part;
	}
	text[n] = '\0';
	if (*texts == NULL)
		*texts = dns_xcalloc(DNS_ANSWER_MAX, sizeof(**texts));
	(*texts)[(*count)++] = text;
	return 0;
}

int dns_txt_answer_parse(const unsigned char *buf, size_t len, int *rcode,
			 char ***texts, size_t *count)
{
	size_t off = DNS_HEADER_LEN;
	unsigned qdcount, ancount;

	*texts = NULL;
	*count = 0;
	if (buf == NULL || len < DNS_HEADER_LEN)
		return -1;
	*rcode = buf[3] & 0x0f;
	qdcount = get16(buf + 4);
	ancount = get16(buf + 6);
	for (unsigned i = 0; i < qdcount; i++) {
		if (read_name(buf, len, &off, NULL) < 0 || len - off < 4)
			goto malformed;
		off += 4;
	}
	for (unsigned i = 0; i < ancount; i++) {
		uint16_t type, class, rdlen;

		if (read_name(buf, len, &off, NULL) < 0 || len - off < 10)
			goto malformed;
		type = get16(buf + off);
		class = get16(buf + off + 2);
		rdlen = get16(buf + off + 8);
		off += 10;
		if (rdlen > len - off)
			goto malformed;
		if (class == DNS_CLASS_IN && type == DNS_TYPE_TXT &&
		    add_txt(texts, count, buf + off, rdlen) < 0)
			goto malformed;
		off += rdlen;
	}
	return 0;

malformed:
	dns_txt_texts_free(*texts, *count);
	*texts = NULL;
	*count = 0;
	return -1;
}

void dns_txt_texts_free(char **texts, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(texts[i]);
	free(texts);
}
