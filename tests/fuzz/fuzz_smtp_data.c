/*
 * The DATA/BDAT decoder fed at fuzzer-chosen split points must give the
 * same result as one feed; its output must be clean wire form (CRLF
 * lines only) whose size and mailbox form agree with the counters.
 *
 * Input: byte 0 picks the mode, byte 1 the number of cuts (0..15), the
 * next bytes the length of each piece; the rest is the stream.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct result {
	char *out;
	size_t outlen;
	size_t consumed;
	struct smtp_data d;
};

/* pieces[] holds the lengths of the first npieces feeds; the rest of the
 * input goes in one last feed. Each feed gets an exact-size buffer. */
static void run(enum smtp_data_mode mode, const char *in, size_t len,
		const uint8_t *pieces, size_t npieces, struct result *r)
{
	size_t pos = 0, k;

	r->out = malloc(SMTP_DATA_OUT_MAX(len) + 8);
	if (r->out == NULL)
		abort();
	r->outlen = 0;
	r->consumed = 0;
	smtp_data_init(&r->d, mode);
	for (k = 0; k <= npieces && !r->d.done; k++) {
		size_t piece = k < npieces ? pieces[k] : len - pos;
		size_t used, outlen;
		char *buf;

		if (piece > len - pos)
			piece = len - pos;
		buf = malloc(SMTP_DATA_OUT_MAX(piece));
		if (buf == NULL)
			abort();
		used = smtp_data_feed(&r->d, in + pos, piece, buf, &outlen);
		if (used > piece || (used < piece && !r->d.done) ||
		    outlen > SMTP_DATA_OUT_MAX(piece))
			abort();
		memcpy(r->out + r->outlen, buf, outlen);
		r->outlen += outlen;
		r->consumed += used;
		pos += piece;
		free(buf);
	}
	if (mode == SMTP_DATA_RAW)
		r->outlen += smtp_data_finish(&r->d, r->out + r->outlen);
}

static bool same(const struct result *a, const struct result *b)
{
	return a->outlen == b->outlen &&
	       memcmp(a->out, b->out, a->outlen) == 0 &&
	       a->consumed == b->consumed && a->d.size == b->d.size &&
	       a->d.done == b->d.done &&
	       a->d.received_count == b->d.received_count &&
	       a->d.in_headers == b->d.in_headers;
}

/* Unstuffs in pieces of `step` octets, each into an exact-size buffer. */
static size_t unstuff(const char *in, size_t len, size_t step, char *out)
{
	struct smtp_unstuff u = {0};
	size_t pos = 0, total = 0;

	while (pos < len) {
		size_t n = len - pos < step ? len - pos : step, w;
		char *buf = malloc(n);
		if (buf == NULL)
			abort();
		w = smtp_unstuff_to_lf(&u, in + pos, n, buf);
		if (w > n)
			abort();
		memcpy(out + total, buf, w);
		total += w;
		pos += n;
		free(buf);
	}
	return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum smtp_data_mode mode;
	const uint8_t *pieces;
	const char *in;
	size_t npieces, len, i, stuffed = 0, lines = 0;
	struct result whole, split, bytewise;
	bool bol = true;

	if (size < 2)
		return 0;
	mode = data[0] & 1 ? SMTP_DATA_RAW : SMTP_DATA_DOTTED;
	npieces = data[1] % 16;
	if (size - 2 < npieces)
		return 0;
	pieces = data + 2;
	in = (const char *)data + 2 + npieces;
	len = size - 2 - npieces;

	run(mode, in, len, NULL, 0, &whole);
	run(mode, in, len, pieces, npieces, &split);
	if (!same(&whole, &split))
		abort();
	if (len <= 512) {
		uint8_t ones[512];
		memset(ones, 1, sizeof ones);
		run(mode, in, len, ones, len, &bytewise);
		if (!same(&whole, &bytewise))
			abort();
		free(bytewise.out);
	}
	if (mode == SMTP_DATA_RAW && whole.consumed != len)
		abort();

	/* CR and LF only as CRLF; count the stuffing dots and the lines */
	for (i = 0; i < whole.outlen; i++) {
		char c = whole.out[i];
		if (c == '\r' &&
		    (i + 1 == whole.outlen || whole.out[i + 1] != '\n'))
			abort();
		if (c == '\n' && (i == 0 || whole.out[i - 1] != '\r'))
			abort();
		if (bol && c == '.') {
			/* every dot line is stuffed, so none is ".\r\n" */
			if (i + 1 == whole.outlen || whole.out[i + 1] != '.')
				abort();
			stuffed++;
		}
		if (c == '\n')
			lines++;
		bol = c == '\n';
	}
	if (whole.d.size != whole.outlen - stuffed)
		abort();
	if (whole.d.received_count > lines + 1)
		abort();

	/* a finished message is whole lines: check the mailbox form and
	 * that the stored form decodes to itself when sent with DATA */
	if (mode == SMTP_DATA_RAW || whole.d.done) {
		char *lf1, *lf2, *again;
		size_t n1, n2;
		struct result re;

		if (whole.outlen > 0 && !bol)
			abort();
		lf1 = malloc(whole.outlen + 1);
		lf2 = malloc(whole.outlen + 1);
		again = malloc(whole.outlen + 3);
		if (lf1 == NULL || lf2 == NULL || again == NULL)
			abort();
		n1 = unstuff(whole.out, whole.outlen, whole.outlen + 1, lf1);
		n2 = unstuff(whole.out, whole.outlen, 1 + data[0] % 7, lf2);
		if (n1 != n2 || memcmp(lf1, lf2, n1) != 0)
			abort();
		if (n1 + lines != whole.d.size)
			abort();

		memcpy(again, whole.out, whole.outlen);
		memcpy(again + whole.outlen, ".\r\n", 3);
		run(SMTP_DATA_DOTTED, again, whole.outlen + 3, NULL, 0, &re);
		if (!re.d.done || re.consumed != whole.outlen + 3 ||
		    re.outlen != whole.outlen ||
		    memcmp(re.out, whole.out, whole.outlen) != 0 ||
		    re.d.size != whole.d.size ||
		    re.d.received_count != whole.d.received_count)
			abort();
		free(re.out);
		free(lf1);
		free(lf2);
		free(again);
	}

	/* the unstuffer alone, on raw bytes: any split gives the same
	 * octets once the stream ends with CRLF */
	if (len <= 512) {
		char *a = malloc(len + 3), *b = malloc(len + 3), *src;
		size_t na, nb;
		src = malloc(len + 2);
		if (a == NULL || b == NULL || src == NULL)
			abort();
		memcpy(src, in, len);
		memcpy(src + len, "\r\n", 2);
		na = unstuff(src, len + 2, len + 2, a);
		nb = unstuff(src, len + 2, 1 + data[1] % 5, b);
		if (na != nb || memcmp(a, b, na) != 0)
			abort();
		free(a);
		free(b);
		free(src);
	}

	free(whole.out);
	free(split.out);
	return 0;
}
