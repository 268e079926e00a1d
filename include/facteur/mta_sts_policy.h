/*
 * MTA-STS (RFC 8461), the pure part: the `_mta-sts` TXT record, the
 * policy file served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt,
 * and which MX host names a policy allows. Text in, data out: no I/O,
 * so that the unit tests and the fuzzer drive it directly.
 */
#ifndef FACTEUR_MTA_STS_POLICY_H
#define FACTEUR_MTA_STS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 8461 §3.2: max_age at most a year. */
#define MTA_STS_MAX_AGE_MAX 31557600u
/* A policy file larger than this is refused (§3.3 asks for a limit). */
#define MTA_STS_POLICY_SIZE_MAX 65536u
/* mx patterns kept from one policy; more make the policy invalid. */
#define MTA_STS_MX_MAX 64
/* The TXT record's id: 1 to 32 letters and digits (§3.1). */
#define MTA_STS_ID_MAX 32

enum mta_sts_mode {
	MTA_STS_MODE_NONE,
	MTA_STS_MODE_TESTING,
	MTA_STS_MODE_ENFORCE,
};

struct mta_sts_policy {
	enum mta_sts_mode mode;
	uint32_t max_age;	  /* seconds */
	char *mx[MTA_STS_MX_MAX]; /* lower case, "*." kept for a wildcard */
	size_t mx_count;
};

/*
 * Parse a policy file (CRLF or LF lines of "key: value"). Unknown keys
 * are ignored; `version: STSv1`, `mode` and `max_age` are required, and
 * at least one `mx` unless the mode is none. Returns 0, or -1 with `err`
 * saying why (not UTF-8, too large, a bad line or value, a field
 * missing); `out` then holds nothing. Clear it with
 * mta_sts_policy_clear either way.
 */
int mta_sts_policy_parse(const char *text, size_t len,
			 struct mta_sts_policy *out, char *err, size_t errlen);
void mta_sts_policy_clear(struct mta_sts_policy *policy);
/* A copy of `from` into `to` (mx patterns duplicated); -1 when out of
 * memory (`to` then empty). Clear it with mta_sts_policy_clear. */
int mta_sts_policy_copy(struct mta_sts_policy *to,
			const struct mta_sts_policy *from);

/* Does one of the policy's mx patterns match `host` (an MX name, any
 * case, with or without its final dot)? A "*.example.net" pattern
 * matches exactly one label in front of "example.net" (§4.1). */
bool mta_sts_policy_mx_matches(const struct mta_sts_policy *policy,
			       const char *host);

const char *mta_sts_mode_name(enum mta_sts_mode mode);

/*
 * One TXT record's text (its strings joined): 1 when it is an MTA-STS
 * record ("v=STSv1; id=...;"), with its id copied into `id`
 * (MTA_STS_ID_MAX + 1 octets); 0 when it is some other record (it does
 * not start with "v=STSv1"); -1 when it starts so but is malformed.
 */
int mta_sts_txt_parse(const char *text, size_t len, char *id);

#endif
