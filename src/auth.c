/*
 * Accounts (see auth.h): the users file held as an array sorted by
 * lower-cased address, so that 100,000 users cost one allocation each and
 * a lookup is a binary search; password checks through crypt_r(3); SASL
 * PLAIN and strict base64 (RFC 4616, RFC 4648).
 */
#include <crypt.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth.h"

#include "facteur/ascii.h"
#include "facteur/text.h"
#include "facteur/wholefile.h"

struct auth_user {
	char *address; /* lower case */
	char *hash;
	size_t line;
};

struct auth_users {
	struct auth_user *users; /* sorted by address */
	size_t count;
};

/* Checked for unknown users, so that a failed login costs the same time
 * whether the user exists or not. The password behind it is irrelevant. */
static const char dummy_hash[] =
    "$6$fAcTeUrDuMmYsAlT$CWwYTN/shZc70YluMNDi/sL.vt0y54408f.BR2gDLfxHyp6."
    "pWILOJbAFWIavTdNZjkJgAQ9XddBW1dOBFDul/";

/* A users file larger than this is surely a mistake (100,000 users take
 * about 15 MB). */
#define USERS_FILE_MAX (256u * 1024 * 1024)

void auth_users_free(struct auth_users *users)
{
	if (users == NULL)
		return;
	for (size_t i = 0; i < users->count; i++) {
		free(users->users[i].address);
		if (users->users[i].hash != NULL) {
			explicit_bzero(users->users[i].hash,
				       strlen(users->users[i].hash));
			free(users->users[i].hash);
		}
	}
	free(users->users);
	free(users);
}

static int compare_users(const void *a, const void *b)
{
	const struct auth_user *x = a, *y = b;
	int c = strcmp(x->address, y->address);
	if (c != 0)
		return c;
	return (x->line > y->line) - (x->line < y->line);
}

/* An address for the users file: local@domain, both parts present, no
 * blanks or control characters inside. NULL when fine, else why not. */
static const char *address_problem(const char *s, size_t len)
{
	const char *at = NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7f)
			return "blank or control character in address";
		if (c == '@')
			at = s + i;
	}
	if (at == NULL)
		return "address without '@'";
	if (at == s || at == s + len - 1)
		return "address needs a local part and a domain";
	return NULL;
}

static int parse_line(struct auth_users *users, size_t *cap, const char *line,
		      size_t len, const char *name, size_t lineno,
		      struct config_errors *errors)
{
	const char *colon = memchr(line, ':', len);
	if (colon == NULL) {
		config_errors_add(errors, "%s:%zu: users_file: no ':' in line",
				  name, lineno);
		return 0;
	}
	const char *addr = line, *hash = colon + 1;
	size_t addrlen = (size_t)(colon - line);
	size_t hashlen = len - addrlen - 1;
	addr = ascii_trim(addr, &addrlen, ASCII_LINE_BLANKS);
	hash = ascii_trim(hash, &hashlen, ASCII_LINE_BLANKS);
	if (addrlen == 0) {
		config_errors_add(errors, "%s:%zu: users_file: empty address",
				  name, lineno);
		return 0;
	}
	const char *problem = address_problem(addr, addrlen);
	if (problem != NULL) {
		config_errors_add(errors, "%s:%zu: users_file: %s: \"%.*s\"",
				  name, lineno, problem,
				  (int)(addrlen > 200 ? 200 : addrlen), addr);
		return 0;
	}
	if (hashlen == 0) {
		config_errors_add(
		    errors, "%s:%zu: users_file: empty hash for %.*s", name,
		    lineno, (int)(addrlen > 200 ? 200 : addrlen), addr);
		return 0;
	}
	if (users->count == *cap) {
		size_t ncap = *cap == 0 ? 64 : *cap * 2;
		struct auth_user *n =
		    reallocarray(users->users, ncap, sizeof *n);
		if (n == NULL)
			return -1;
		users->users = n;
		*cap = ncap;
	}
	struct auth_user *u = &users->users[users->count];
	u->address = ascii_lower_dup(addr, addrlen);
	u->hash = text_dup(hash, hashlen);
	u->line = lineno;
	if (u->address == NULL || u->hash == NULL) {
		free(u->address);
		free(u->hash);
		return -1;
	}
	users->count++;
	return 0;
}

/* Parse `len` octets of text. Duplicates are found after sorting, with
 * the line number of the later line. */
static struct auth_users *parse_text(const char *text, size_t len,
				     const char *name,
				     struct config_errors *errors)
{
	size_t errors_before = errors->count;
	struct auth_users *users = calloc(1, sizeof *users);
	if (users == NULL) {
		config_errors_add(errors, "%s: users_file: out of memory",
				  name);
		return NULL;
	}
	size_t cap = 0;
	struct config_lines lines;
	enum config_line kind;
	const char *line;
	size_t linelen;
	config_lines_start(&lines, text, len, name, "users_file", errors);
	while ((kind = config_lines_next(&lines, &line, &linelen)) !=
	       CONFIG_LINE_END) {
		if (kind != CONFIG_LINE_ENTRY && kind != CONFIG_LINE_INDENTED)
			continue;
		if (parse_line(users, &cap, line, linelen, name, lines.lineno,
			       errors) == -1) {
			config_errors_add(
			    errors, "%s: users_file: out of memory", name);
			auth_users_free(users);
			return NULL;
		}
	}
	if (users->count > 1)
		qsort(users->users, users->count, sizeof *users->users,
		      compare_users);
	for (size_t i = 1; i < users->count; i++) {
		if (strcmp(users->users[i - 1].address,
			   users->users[i].address) == 0)
			config_errors_add(
			    errors,
			    "%s:%zu: users_file: duplicate address %s "
			    "(first on line %zu)",
			    name, users->users[i].line, users->users[i].address,
			    users->users[i - 1].line);
	}
	if (errors->count != errors_before) {
		auth_users_free(users);
		return NULL;
	}
	return users;
}

struct auth_users *auth_users_parse(const char *text, const char *name,
				    struct config_errors *errors)
{
	return parse_text(text, strlen(text), name, errors);
}

struct auth_users *auth_users_load(const char *path,
				   struct config_errors *errors)
{
	size_t len = 0;
	/* Password hashes: zeroed before the memory is given back. */
	char *buf = config_read_named_file(path, "users_file", USERS_FILE_MAX,
					   WHOLEFILE_SECRET, &len, errors);
	if (buf == NULL)
		return NULL;
	struct auth_users *users = parse_text(buf, len, path, errors);
	wholefile_free_secret(buf, len);
	return users;
}

size_t auth_users_count(const struct auth_users *users)
{
	return users == NULL ? 0 : users->count;
}

static const struct auth_user *find_user(const struct auth_users *users,
					 const char *address)
{
	if (users == NULL || address == NULL)
		return NULL;
	size_t lo = 0, hi = users->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const unsigned char *a =
		    (const unsigned char *)users->users[mid].address;
		const unsigned char *b = (const unsigned char *)address;
		/* strcmp against the lower-cased key, without a copy. */
		while (*a != '\0' &&
		       *a == (unsigned char)ascii_lower((char)*b)) {
			a++;
			b++;
		}
		int c = (int)*a - (int)(unsigned char)ascii_lower((char)*b);
		if (c == 0)
			return &users->users[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

bool auth_users_exists(const struct auth_users *users, const char *address)
{
	return find_user(users, address) != NULL;
}

/* Equal strings, in a time that depends only on their lengths. */
static bool equal_constant_time(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t n = la < lb ? la : lb;
	volatile unsigned char diff = (unsigned char)(la != lb);
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

const char *auth_users_hash(const struct auth_users *users, const char *address)
{
	const struct auth_user *user = find_user(users, address);
	return user != NULL ? user->hash : NULL;
}

bool auth_password_matches(const char *hash, const char *password)
{
	if (password == NULL)
		return false;
	const char *setting = hash != NULL ? hash : dummy_hash;

	struct crypt_data *data = calloc(1, sizeof *data);
	if (data == NULL)
		return false;
	const char *result = crypt_r(password, setting, data);
	/* A failure is NULL or a "*..." token that never equals the setting
	 * given, but a stored "*" hash must never match anything. */
	bool ok = hash != NULL && result != NULL && result[0] != '*' &&
		  equal_constant_time(result, hash);
	explicit_bzero(data, sizeof *data);
	free(data);
	return ok;
}

bool auth_users_check(const struct auth_users *users, const char *address,
		      const char *password)
{
	return auth_password_matches(auth_users_hash(users, address), password);
}

char *auth_hash_password(const char *password)
{
	return auth_hash_password_with(password, AUTH_HASH_SHA512);
}

char *auth_hash_password_with(const char *password,
			      enum auth_hash_method method)
{
	if (password == NULL)
		return NULL;
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	/* A NULL prefix asks libxcrypt for its preferred method, with its
	 * default cost; the random salt comes from the system either way. */
	const char *prefix = method == AUTH_HASH_PREFERRED ? NULL : "$6$";
	if (crypt_gensalt_rn(prefix, 0, NULL, 0, salt, sizeof salt) == NULL)
		return NULL;
	struct crypt_data *data = calloc(1, sizeof *data);
	if (data == NULL)
		return NULL;
	char *out = NULL;
	const char *result = crypt_r(password, salt, data);
	if (result != NULL && result[0] == '$')
		out = strdup(result);
	explicit_bzero(data, sizeof *data);
	free(data);
	return out;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Strict RFC 4648 §4: whole quanta only, padding only at the end, no
 * other characters, and the unused bits of the last quantum zero (so that
 * every text has one encoding). */
int auth_base64_decode(const char *in, size_t len, unsigned char *out,
		       size_t outlen)
{
	if (len % 4 != 0 || len / 4 * 3 > (size_t)INT_MAX)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 4) {
		bool last = i + 4 == len;
		int v[4];
		size_t pad = 0;
		for (size_t j = 0; j < 4; j++) {
			unsigned char c = (unsigned char)in[i + j];
			if (c == '=' && last && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad > 0)
				return -1; /* data after '=' */
			v[j] = b64_value(c);
			if (v[j] < 0)
				return -1;
		}
		uint32_t bits = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
				(uint32_t)v[2] << 6 | (uint32_t)v[3];
		if ((pad == 1 && (bits & 0xff) != 0) ||
		    (pad == 2 && (bits & 0xffff) != 0))
			return -1;
		size_t bytes = 3 - pad;
		if (n + bytes > outlen)
			return -1;
		out[n++] = (unsigned char)(bits >> 16);
		if (bytes > 1)
			out[n++] = (unsigned char)(bits >> 8);
		if (bytes > 2)
			out[n++] = (unsigned char)bits;
	}
	return (int)n;
}

int auth_base64_encode(const unsigned char *in, size_t len, char *out,
		       size_t outlen)
{
	if (len > (size_t)INT_MAX / 4 * 3 - 3)
		return -1;
	size_t need = (len + 2) / 3 * 4;
	if (need + 1 > outlen)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 3) {
		size_t rest = len - i;
		uint32_t bits = (uint32_t)in[i] << 16;
		if (rest > 1)
			bits |= (uint32_t)in[i + 1] << 8;
		if (rest > 2)
			bits |= in[i + 2];
		out[n++] = b64_alphabet[(bits >> 18) & 63];
		out[n++] = b64_alphabet[(bits >> 12) & 63];
		out[n++] = rest > 1 ? b64_alphabet[(bits >> 6) & 63] : '=';
		out[n++] = rest > 2 ? b64_alphabet[bits & 63] : '=';
	}
	out[n] = '\0';
	return (int)n;
}

/* RFC 4616: message = [authzid] NUL authcid NUL passwd, authcid and passwd
 * not empty, no further NUL. */
int auth_sasl_plain_decode(const char *b64, size_t len, char *authcid,
			   size_t authcid_len, char *password,
			   size_t password_len)
{
	if (b64 == NULL || authcid == NULL || password == NULL ||
	    authcid_len == 0 || password_len == 0)
		return -1;
	size_t cap = len / 4 * 3;
	if (cap == 0)
		return -1;
	unsigned char *buf = malloc(cap);
	if (buf == NULL)
		return -1;
	int rc = -1;
	int n = auth_base64_decode(b64, len, buf, cap);
	if (n <= 0)
		goto out;
	const char *msg = (const char *)buf;
	size_t total = (size_t)n;
	const char *nul1 = memchr(msg, '\0', total);
	if (nul1 == NULL)
		goto out;
	const char *cid = nul1 + 1;
	size_t rest = total - (size_t)(cid - msg);
	const char *nul2 = memchr(cid, '\0', rest);
	if (nul2 == NULL)
		goto out;
	const char *pw = nul2 + 1;
	size_t zid_len = (size_t)(nul1 - msg);
	size_t cid_len = (size_t)(nul2 - cid);
	size_t pw_len = total - (size_t)(pw - msg);
	if (cid_len == 0 || pw_len == 0 || memchr(pw, '\0', pw_len) != NULL)
		goto out;
	/* We do not let one account act for another. */
	if (zid_len != 0 && !ascii_ieq_len(msg, zid_len, cid, cid_len))
		goto out;
	if (cid_len >= authcid_len || pw_len >= password_len)
		goto out;
	memcpy(authcid, cid, cid_len);
	authcid[cid_len] = '\0';
	memcpy(password, pw, pw_len);
	password[pw_len] = '\0';
	rc = 0;
out:
	explicit_bzero(buf, cap);
	free(buf);
	return rc;
}
