/*
 * facteurctl dkim-keygen (see dkim_keygen.h). The key file is created
 * with mode 0600 and O_EXCL: it is never readable by others, not even
 * for a moment, and an existing key is never overwritten by mistake.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "facteur/dkim_keygen.h"
#include "facteur/hostname.h"
#include "facteur/text.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 64 /* EX_USAGE */

char *dkim_keygen_record(const char *domain, const char *selector,
			 const char *type, const char *public_b64)
{
	struct text value = {0}, t = {0};
	char *v;
	size_t len;

	text_fmt(&value, "v=DKIM1; k=%s; p=%s", type, public_b64);
	v = text_finish(&value, &len);
	if (v == NULL)
		return NULL;
	text_fmt(&t, "%s._domainkey.%s. IN TXT", selector, domain);
	for (size_t i = 0; i < len; i += DKIM_KEYGEN_TXT_STRING_MAX) {
		size_t n = len - i < DKIM_KEYGEN_TXT_STRING_MAX
			       ? len - i
			       : DKIM_KEYGEN_TXT_STRING_MAX;
		text_str(&t, " \"");
		text_add(&t, v + i, n);
		text_str(&t, "\"");
	}
	free(v);
	return text_finish(&t, NULL);
}

/* The public key as DKIM publishes it, base64: RSA's
 * SubjectPublicKeyInfo, Ed25519's 32 raw octets (RFC 8463 §4.2). */
static char *public_base64(EVP_PKEY *pkey, bool rsa)
{
	unsigned char raw[32], *der = NULL;
	const unsigned char *bytes = raw;
	size_t n = sizeof raw;
	char *out;

	if (rsa) {
		int len = i2d_PUBKEY(pkey, &der);
		if (len <= 0)
			return NULL;
		bytes = der;
		n = (size_t)len;
	} else if (EVP_PKEY_get_raw_public_key(pkey, raw, &n) != 1) {
		return NULL;
	}
	out = malloc(4 * ((n + 2) / 3) + 1);
	if (out != NULL)
		EVP_EncodeBlock((unsigned char *)out, bytes, (int)n);
	OPENSSL_free(der);
	return out;
}

/* Write the key, PEM (PKCS#8), into a new file of mode 0600. */
static int write_key(EVP_PKEY *pkey, const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	BIO *bio;
	int ok;

	if (fd == -1) {
		fprintf(stderr, "facteurctl: dkim-keygen: %s: %s\n", path,
			strerror(errno));
		return -1;
	}
	bio = BIO_new_fd(fd, BIO_NOCLOSE);
	ok = bio != NULL &&
	     PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) ==
		 1 &&
	     BIO_flush(bio) == 1;
	BIO_free(bio);
	if (!ok || fsync(fd) == -1 || close(fd) == -1) {
		fprintf(stderr,
			"facteurctl: dkim-keygen: %s: cannot write "
			"the key\n",
			path);
		if (ok)
			close(fd);
		unlink(path);
		return -1;
	}
	return 0;
}

static int usage_error(const char *why)
{
	fprintf(stderr,
		"facteurctl: dkim-keygen: %s\n"
		"usage: facteurctl dkim-keygen DOMAIN SELECTOR "
		"[--type rsa|ed25519] [--bits N] --out FILE\n",
		why);
	return EXIT_USAGE;
}

int dkim_keygen_command(int argc, char **argv)
{
	const char *args[2], *out = NULL, *type = "rsa";
	long bits = 0;
	int nargs = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool takes = strcmp(a, "--type") == 0 ||
			     strcmp(a, "--bits") == 0 ||
			     strcmp(a, "--out") == 0;

		if (takes && i + 1 >= argc)
			return usage_error("an option lacks its value");
		if (strcmp(a, "--type") == 0) {
			type = argv[++i];
		} else if (strcmp(a, "--out") == 0) {
			out = argv[++i];
		} else if (strcmp(a, "--bits") == 0) {
			char *end;
			errno = 0;
			bits = strtol(argv[++i], &end, 10);
			if (errno != 0 || *end != '\0' || end == argv[i])
				return usage_error("--bits needs a number");
		} else if (a[0] == '-') {
			return usage_error("unknown option");
		} else if (nargs < 2) {
			args[nargs++] = a;
		} else {
			return usage_error("too many arguments");
		}
	}
	if (nargs != 2 || out == NULL)
		return usage_error(
		    "DOMAIN, SELECTOR and --out FILE are needed");
	if (!hostname_valid(args[0], strlen(args[0])))
		return usage_error("DOMAIN is not a valid domain name");
	if (!hostname_valid(args[1], strlen(args[1])))
		return usage_error("SELECTOR is not a valid DNS name");
	bool rsa = strcmp(type, "rsa") == 0;
	if (!rsa && strcmp(type, "ed25519") != 0)
		return usage_error("--type is rsa or ed25519");
	if (!rsa && bits != 0)
		return usage_error("--bits is for RSA keys");
	if (rsa && bits == 0)
		bits = DKIM_KEYGEN_RSA_DEFAULT;
	if (rsa && (bits < 1024 || bits > DKIM_KEYGEN_RSA_MAX))
		return usage_error("--bits is from 1024 to 8192");

	EVP_PKEY *pkey =
	    rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits)
		: EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *pub = pkey ? public_base64(pkey, rsa) : NULL;
	char *record =
	    pub ? dkim_keygen_record(args[0], args[1], type, pub) : NULL;
	int status = EXIT_FAILED;

	if (record == NULL)
		fprintf(stderr, "facteurctl: dkim-keygen: cannot make a key\n");
	else if (write_key(pkey, out) == 0 && printf("%s\n", record) > 0 &&
		 fflush(stdout) == 0)
		status = 0;
	free(record);
	free(pub);
	EVP_PKEY_free(pkey);
	return status;
}
