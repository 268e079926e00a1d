/*
 * DKIM signing (see dkim.h): the streaming relaxed canonicaliser, the
 * choice of header fields, the DKIM-Signature field and the key
 * operation. The body never stays in memory: each octet goes through a
 * small state machine into a 4 KiB buffer that feeds SHA-256.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "facteur/ascii.h"
#include "facteur/config.h"
#include "facteur/dkim.h"
#include "facteur/hostname.h"
#include "facteur/text.h"

/* The fields receivers expect signed (RFC 6376 §5.4.1), From first. */
static const char *const signed_names[] = {
    "from",	    "to",
    "cc",	    "subject",
    "date",	    "message-id",
    "reply-to",	    "mime-version",
    "content-type", "content-transfer-encoding",
    "in-reply-to",  "references",
};
#define SIGNED_NAME_COUNT (sizeof signed_names / sizeof signed_names[0])
#define NAME_FROM 0

#define BODY_BUF 4096
#define B64_SHA256 45 /* 44 characters and a NUL */
/* Where the b= value and h= list are folded. */
#define FOLD_COLUMN 72

/* One kept header field, canonical ("name:value\r\n"). */
struct kept_field {
	unsigned name;
	size_t off, len; /* in dkim_message.kept */
};

enum phase {
	PHASE_HEADER,
	PHASE_BODY,
	PHASE_DONE,
};

struct dkim_message {
	enum phase phase;
	/* header section: the field being read */
	char *field;
	size_t field_len;
	bool field_overflow;
	bool at_line_start;
	bool line_starts_cr; /* a line began with CR: empty if LF follows */
	/* the kept fields, back to back */
	char *kept;
	size_t kept_len, kept_cap;
	struct kept_field *fields;
	size_t field_count, field_cap;
	unsigned from_count;
	bool from_bad;
	bool too_large;
	char *from_domain;
	/* body */
	EVP_MD_CTX *body_md;
	unsigned char out[BODY_BUF];
	size_t out_len;
	bool pending_cr;
	bool pending_wsp;
	uint64_t held_crlf; /* line ends not yet hashed: maybe trailing */
	bool body_seen;	    /* any non-empty line */
	char body_hash[B64_SHA256];
};

/* ---- names and domains ---- */

bool dkim_domain_covers(const char *parent, const char *domain)
{
	size_t plen = strlen(parent), dlen = strlen(domain);

	if (dlen < plen ||
	    !ascii_ieq_len(domain + dlen - plen, plen, parent, plen))
		return false;
	return dlen == plen || domain[dlen - plen - 1] == '.';
}

/* ---- keys ---- */

static void key_error(struct config_errors *errors,
		      const struct config_dkim_sign *line, const char *why)
{
	config_errors_add(errors, "%s: dkim_sign: %s: %s", line->origin,
			  line->keyfile, why);
}

/* The key of one line, or NULL after an error. */
static EVP_PKEY *key_read(const struct config_dkim_sign *line,
			  enum dkim_algorithm *algorithm,
			  struct config_errors *errors)
{
	FILE *f = fopen(line->keyfile, "re");
	EVP_PKEY *pkey;
	char reason[256];

	if (f == NULL) {
		key_error(errors, line, strerror(errno));
		return NULL;
	}
	ERR_clear_error();
	pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	if (fclose(f) != 0 && pkey != NULL) {
		key_error(errors, line, strerror(errno));
		EVP_PKEY_free(pkey);
		return NULL;
	}
	if (pkey == NULL) {
		ERR_error_string_n(ERR_peek_last_error(), reason,
				   sizeof reason);
		ERR_clear_error();
		snprintf(reason + strlen(reason),
			 sizeof reason - strlen(reason),
			 " (not a PEM private key)");
		key_error(errors, line, reason);
		return NULL;
	}
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		*algorithm = DKIM_RSA_SHA256;
		if (EVP_PKEY_get_bits(pkey) < DKIM_RSA_MIN_BITS) {
			snprintf(reason, sizeof reason,
				 "RSA key of %d bits, fewer than %d",
				 EVP_PKEY_get_bits(pkey), DKIM_RSA_MIN_BITS);
			key_error(errors, line, reason);
			EVP_PKEY_free(pkey);
			return NULL;
		}
	} else if (EVP_PKEY_is_a(pkey, "ED25519")) {
		*algorithm = DKIM_ED25519_SHA256;
	} else {
		key_error(errors, line, "neither an RSA nor an Ed25519 key");
		EVP_PKEY_free(pkey);
		return NULL;
	}
	return pkey;
}

struct dkim_keys *dkim_keys_load(const struct config_dkim_sign *lines,
				 size_t count, struct config_errors *errors)
{
	struct dkim_keys *keys = calloc(1, sizeof *keys);
	bool failed = false;

	if (keys == NULL ||
	    (count > 0 &&
	     (keys->keys = calloc(count, sizeof *keys->keys)) == NULL)) {
		config_errors_add(errors, "dkim_sign: out of memory");
		free(keys);
		return NULL;
	}
	for (size_t i = 0; i < count; i++) {
		struct dkim_key *k = &keys->keys[keys->count];
		EVP_PKEY *pkey = key_read(&lines[i], &k->algorithm, errors);

		if (pkey == NULL) {
			failed = true;
			continue;
		}
		k->pkey = pkey;
		keys->count++;
		k->domain =
		    ascii_lower_dup(lines[i].domain, strlen(lines[i].domain));
		k->selector = strdup(lines[i].selector);
		if (k->domain == NULL || k->selector == NULL) {
			config_errors_add(errors, "dkim_sign: out of memory");
			failed = true;
		}
	}
	if (failed) {
		dkim_keys_free(keys);
		return NULL;
	}
	return keys;
}

void dkim_keys_free(struct dkim_keys *keys)
{
	if (keys == NULL)
		return;
	for (size_t i = 0; i < keys->count; i++) {
		EVP_PKEY_free(keys->keys[i].pkey);
		free(keys->keys[i].domain);
		free(keys->keys[i].selector);
	}
	free(keys->keys);
	free(keys);
}

/* ---- header section ---- */

struct dkim_message *dkim_message_new(void)
{
	struct dkim_message *m = calloc(1, sizeof *m);

	if (m == NULL)
		return NULL;
	m->field = malloc(DKIM_FIELD_MAX);
	m->body_md = EVP_MD_CTX_new();
	if (m->field == NULL || m->body_md == NULL ||
	    EVP_DigestInit_ex(m->body_md, EVP_sha256(), NULL) != 1) {
		dkim_message_free(m);
		return NULL;
	}
	m->at_line_start = true;
	return m;
}

void dkim_message_free(struct dkim_message *m)
{
	if (m == NULL)
		return;
	free(m->field);
	free(m->kept);
	free(m->fields);
	free(m->from_domain);
	EVP_MD_CTX_free(m->body_md);
	free(m);
}

/*
 * Relaxed header canonicalisation (RFC 6376 §3.4.2) of a raw field into
 * t: the name in lower case, no space around the colon, line ends
 * removed (unfolding), runs of spaces and tabs made one space, none at
 * the end of the value; then CRLF, unless for the signature field.
 */
static void canon_header(struct text *t, const char *raw, size_t len, bool crlf)
{
	const char *colon = memchr(raw, ':', len);
	size_t name_len = (size_t)(colon - raw);
	bool wsp = false, started = false;

	while (name_len > 0 && ascii_is_wsp(raw[name_len - 1]))
		name_len--;
	for (size_t i = 0; i < name_len; i++) {
		char c = ascii_lower(raw[i]);
		text_add(t, &c, 1);
	}
	text_add(t, ":", 1);
	for (size_t i = (size_t)(colon - raw) + 1; i < len; i++) {
		char c = raw[i];

		if (c == '\r' || c == '\n')
			continue;
		if (ascii_is_wsp(c)) {
			wsp = true;
			continue;
		}
		if (wsp && started)
			text_add(t, " ", 1);
		wsp = false;
		started = true;
		text_add(t, &c, 1);
	}
	if (crlf)
		text_add(t, "\r\n", 2);
}

/* The domain of a canonical From: value, lower case, or NULL: the
 * address in angle brackets when there is one, else the whole value. */
static char *from_domain(const char *value, size_t len)
{
	const char *lt = NULL, *end = value + len;

	for (const char *p = value; p < end; p++)
		if (*p == '<')
			lt = p;
	if (lt != NULL) {
		const char *gt = memchr(lt, '>', (size_t)(end - lt));
		if (gt == NULL)
			return NULL;
		value = lt + 1;
		end = gt;
	}
	const char *at = NULL;
	for (const char *p = value; p < end; p++)
		if (*p == '@')
			at = p;
	if (at == NULL)
		return NULL;
	size_t n = 0;
	while (at + 1 + n < end &&
	       (ascii_is_ldh(at[1 + n]) || at[1 + n] == '.'))
		n++;
	while (n > 0 && at[n] == '.')
		n--;
	char *domain = ascii_lower_dup(at + 1, n);
	if (domain != NULL && !hostname_valid(domain, n)) {
		free(domain);
		return NULL;
	}
	return domain;
}

static int signed_name_index(const char *raw, size_t len)
{
	const char *colon = memchr(raw, ':', len);
	size_t n;

	if (colon == NULL)
		return -1;
	n = (size_t)(colon - raw);
	while (n > 0 && ascii_is_wsp(raw[n - 1]))
		n--;
	for (size_t i = 0; i < SIGNED_NAME_COUNT; i++)
		if (ascii_ieq(raw, n, signed_names[i]))
			return (int)i;
	return -1;
}

/* The field read so far is whole: keep it if it is signed. */
static void field_end(struct dkim_message *m)
{
	int name = signed_name_index(m->field, m->field_len);
	struct text t = {0};
	char *canon;
	size_t len;

	if (m->field_len == 0 || name < 0)
		goto done;
	if (name == NAME_FROM)
		m->from_count++;
	if (m->field_overflow || m->too_large) {
		m->too_large = true;
		goto done;
	}
	canon_header(&t, m->field, m->field_len, true);
	canon = text_finish(&t, &len);
	if (canon == NULL || m->kept_len + len > DKIM_HEADERS_MAX ||
	    buffer_grow(&m->kept, &m->kept_cap, m->kept_len + len, 4096,
			DKIM_HEADERS_MAX) == -1) {
		m->too_large = true;
		free(canon);
		goto done;
	}
	if (m->field_count == m->field_cap) {
		size_t cap = m->field_cap ? m->field_cap * 2 : 16;
		struct kept_field *f = reallocarray(m->fields, cap, sizeof *f);
		if (f == NULL) {
			m->too_large = true;
			free(canon);
			goto done;
		}
		m->fields = f;
		m->field_cap = cap;
	}
	memcpy(m->kept + m->kept_len, canon, len);
	m->fields[m->field_count++] = (struct kept_field){
	    .name = (unsigned)name, .off = m->kept_len, .len = len};
	m->kept_len += len;
	if (name == NAME_FROM && m->from_count == 1) {
		/* after "from:", before the CRLF */
		m->from_domain = from_domain(canon + 5, len - 7);
		m->from_bad = m->from_domain == NULL;
	}
	free(canon);
done:
	m->field_len = 0;
	m->field_overflow = false;
}

static void field_add(struct dkim_message *m, char c)
{
	if (m->field_len < DKIM_FIELD_MAX)
		m->field[m->field_len++] = c;
	else
		m->field_overflow = true;
}

/* One octet of the header section; true once it has ended. */
static bool header_octet(struct dkim_message *m, char c)
{
	if (m->line_starts_cr) {
		m->line_starts_cr = false;
		if (c == '\n')
			return true;
		/* a CR that is not a line end starts a field of junk */
		field_end(m);
		field_add(m, '\r');
	} else if (m->at_line_start) {
		m->at_line_start = false;
		if (c == '\r') {
			m->line_starts_cr = true;
			return false;
		}
		if (c == '\n')
			return true;
		if (!ascii_is_wsp(c))
			field_end(m); /* not a continuation: a new field */
	}
	field_add(m, c);
	if (c == '\n')
		m->at_line_start = true;
	return false;
}

/* ---- body ---- */

static void body_out(struct dkim_message *m, const char *s, size_t n)
{
	if (m->out_len + n > sizeof m->out) {
		EVP_DigestUpdate(m->body_md, m->out, m->out_len);
		m->out_len = 0;
		if (n >= sizeof m->out) {
			EVP_DigestUpdate(m->body_md, s, n);
			return;
		}
	}
	memcpy(m->out + m->out_len, s, n);
	m->out_len += n;
}

/* Body text follows: the line ends and the space held before it count
 * now. */
static void body_text_run(struct dkim_message *m, const char *s, size_t n)
{
	for (; m->held_crlf > 0; m->held_crlf--)
		body_out(m, "\r\n", 2);
	if (m->pending_wsp)
		body_out(m, " ", 1);
	m->pending_wsp = false;
	m->body_seen = true;
	body_out(m, s, n);
}

static void body_text(struct dkim_message *m, char c)
{
	body_text_run(m, &c, 1);
}

/* How many octets from s on canonicalise to themselves. */
static size_t body_plain_run(const char *s, size_t n)
{
	size_t k = 0;
	while (k < n && s[k] != '\r' && s[k] != '\n' && !ascii_is_wsp(s[k]))
		k++;
	return k;
}

/* Relaxed body canonicalisation (RFC 6376 §3.4.4), one octet at a time:
 * spaces are held until something follows them on the line, line ends
 * until a line with content follows them. */
static void body_octet(struct dkim_message *m, char c)
{
	if (m->pending_cr) {
		m->pending_cr = false;
		if (c == '\n') {
			m->pending_wsp = false;
			m->held_crlf++;
			return;
		}
		body_text(m, '\r'); /* a lone CR is text */
	}
	if (c == '\r') {
		m->pending_cr = true;
		return;
	}
	if (c == '\n') {
		m->pending_wsp = false;
		m->held_crlf++;
		return;
	}
	if (ascii_is_wsp(c))
		m->pending_wsp = true;
	else
		body_text(m, c);
}

void dkim_message_feed(struct dkim_message *m, const char *buf, size_t len)
{
	size_t i = 0;

	if (m->phase == PHASE_HEADER) {
		while (i < len) {
			if (header_octet(m, buf[i++])) {
				field_end(m);
				m->phase = PHASE_BODY;
				break;
			}
		}
	}
	if (m->phase != PHASE_BODY)
		return;
	/* most of a body is runs of plain text, passed on whole */
	while (i < len) {
		size_t run =
		    m->pending_cr ? 0 : body_plain_run(buf + i, len - i);
		if (run > 0) {
			body_text_run(m, buf + i, run);
			i += run;
		} else {
			body_octet(m, buf[i++]);
		}
	}
}

void dkim_message_finish(struct dkim_message *m)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned md_len = 0;

	if (m->phase == PHASE_DONE)
		return;
	if (m->phase == PHASE_HEADER) {
		/* no empty line: the last field ends here, the body is
		 * empty */
		if (m->line_starts_cr) {
			m->line_starts_cr = false;
			field_add(m, '\r');
		}
		field_end(m);
	}
	if (m->pending_cr) {
		m->pending_cr = false;
		body_text(m, '\r');
	}
	/* A body with content ends with one CRLF, whatever followed. */
	if (m->body_seen)
		body_out(m, "\r\n", 2);
	EVP_DigestUpdate(m->body_md, m->out, m->out_len);
	m->out_len = 0;
	EVP_DigestFinal_ex(m->body_md, md, &md_len);
	EVP_EncodeBlock((unsigned char *)m->body_hash, md, (int)md_len);
	m->phase = PHASE_DONE;
}

enum dkim_from dkim_message_from(const struct dkim_message *m,
				 const char **domain)
{
	*domain = NULL;
	if (m->from_count == 0)
		return DKIM_FROM_NONE;
	if (m->from_count > 1)
		return DKIM_FROM_SEVERAL;
	if (m->too_large)
		return DKIM_FROM_TOO_LARGE;
	if (m->from_bad)
		return DKIM_FROM_BAD;
	*domain = m->from_domain;
	return DKIM_FROM_ONE;
}

const char *dkim_from_reason(enum dkim_from from)
{
	switch (from) {
	case DKIM_FROM_ONE:
		return "from";
	case DKIM_FROM_NONE:
		return "no-from";
	case DKIM_FROM_SEVERAL:
		return "several-from";
	case DKIM_FROM_BAD:
		return "bad-from";
	case DKIM_FROM_TOO_LARGE:
	default:
		return "headers-too-large";
	}
}

const char *dkim_message_body_hash(const struct dkim_message *m)
{
	return m->body_hash;
}

/* ---- the signature ---- */

int dkim_sign_data(EVP_PKEY *pkey, enum dkim_algorithm algorithm,
		   const char *data, size_t len, char *out, size_t outlen)
{
	unsigned char digest[SHA256_DIGEST_LENGTH];
	unsigned char sig[1024];
	size_t siglen = sizeof sig;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = -1;

	if (ctx == NULL)
		return -1;
	if (algorithm == DKIM_RSA_SHA256) {
		if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey) !=
			1 ||
		    EVP_DigestSign(ctx, sig, &siglen,
				   (const unsigned char *)data, len) != 1)
			goto done;
	} else {
		/* RFC 8463: PureEdDSA over the SHA-256 of the data */
		SHA256((const unsigned char *)data, len, digest);
		if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey) != 1 ||
		    EVP_DigestSign(ctx, sig, &siglen, digest, sizeof digest) !=
			1)
			goto done;
	}
	if (4 * ((siglen + 2) / 3) + 1 > outlen)
		goto done;
	EVP_EncodeBlock((unsigned char *)out, sig, (int)siglen);
	rc = 0;
done:
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return rc;
}

/* h=: every signed field as often as it occurs (each instance signed),
 * From once more so that none can be added; folded at FOLD_COLUMN. */
static void header_list(struct text *t, const struct dkim_message *m,
			size_t column)
{
	bool first = true;

	for (unsigned name = 0; name < SIGNED_NAME_COUNT; name++) {
		size_t n = name == NAME_FROM ? 1 : 0;

		for (size_t i = 0; i < m->field_count; i++)
			n += m->fields[i].name == name;
		for (; n > 0; n--) {
			size_t len = strlen(signed_names[name]);

			if (!first)
				text_add(t, ":", 1);
			column += !first;
			if (column + len > FOLD_COLUMN) {
				text_add(t, "\r\n\t ", 4);
				column = 9;
			}
			text_str(t, signed_names[name]);
			column += len;
			first = false;
		}
	}
}

/* The kept fields in h= order: for a name listed n times, its instances
 * from the last up (RFC 6376 §5.4.2). */
static void signed_fields(struct text *t, const struct dkim_message *m)
{
	for (unsigned name = 0; name < SIGNED_NAME_COUNT; name++)
		for (size_t i = m->field_count; i-- > 0;)
			if (m->fields[i].name == name)
				text_add(t, m->kept + m->fields[i].off,
					 m->fields[i].len);
}

int dkim_signing_prepare(struct dkim_signing *sg, const struct dkim_message *m,
			 const struct dkim_key *key, time_t now)
{
	struct text h = {0}, d = {0};

	memset(sg, 0, sizeof *sg);
	sg->algorithm = key->algorithm;
	text_fmt(&h,
		 "DKIM-Signature: v=1; a=%s; c=relaxed/relaxed;\r\n"
		 "\td=%s; s=%s; t=%lld;\r\n\th=",
		 key->algorithm == DKIM_RSA_SHA256 ? "rsa-sha256"
						   : "ed25519-sha256",
		 key->domain, key->selector, (long long)now);
	header_list(&h, m, 10);
	text_fmt(&h, ";\r\n\tbh=%s;\r\n\tb=", dkim_message_body_hash(m));
	sg->header = text_finish(&h, &sg->header_len);
	if (sg->header == NULL)
		return -1;
	signed_fields(&d, m);
	/* The signature field itself, b= empty and without its CRLF. */
	canon_header(&d, sg->header, sg->header_len, false);
	sg->data = text_finish(&d, &sg->data_len);
	if (sg->data == NULL)
		goto fail;
	if (asprintf(&sg->label, "%s/%s", key->domain, key->selector) < 0) {
		sg->label = NULL;
		goto fail;
	}
	if (EVP_PKEY_up_ref(key->pkey) != 1)
		goto fail;
	sg->pkey = key->pkey;
	return 0;
fail:
	dkim_signing_clear(sg);
	return -1;
}

int dkim_signing_run(struct dkim_signing *sg)
{
	char b64[DKIM_SIGNATURE_B64_MAX];
	struct text t = {0};
	size_t n;

	if (dkim_sign_data(sg->pkey, sg->algorithm, sg->data, sg->data_len, b64,
			   sizeof b64) == -1) {
		sg->failed = true;
		return -1;
	}
	text_add(&t, sg->header, sg->header_len);
	n = strlen(b64);
	for (size_t i = 0; i < n; i += FOLD_COLUMN - 8) {
		size_t chunk =
		    n - i < FOLD_COLUMN - 8 ? n - i : FOLD_COLUMN - 8;

		if (i > 0)
			text_add(&t, "\r\n\t ", 4);
		text_add(&t, b64 + i, chunk);
	}
	text_add(&t, "\r\n", 2);
	char *whole = text_finish(&t, &n);
	if (whole == NULL) {
		sg->failed = true;
		return -1;
	}
	free(sg->header);
	sg->header = whole;
	sg->header_len = n;
	return 0;
}

void dkim_signing_clear(struct dkim_signing *sg)
{
	EVP_PKEY_free(sg->pkey);
	free(sg->label);
	free(sg->header);
	free(sg->data);
	memset(sg, 0, sizeof *sg);
}
