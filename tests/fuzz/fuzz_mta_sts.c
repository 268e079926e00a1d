/*
 * The MTA-STS policy and TXT parsers, and the TLSRPT TXT parser, on
 * arbitrary octets: a policy that parses has a valid mode, max_age in
 * range, and mx patterns that match the names they stand for; a TLSRPT
 * address has an '@' and fits.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/hostname.h"
#include "facteur/mta_sts_policy.h"
#include "facteur/tlsrpt_report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mta_sts_policy p;
	char err[160];
	const char *text = (const char *)data;
	if (mta_sts_policy_parse(text, size, &p, err, sizeof err) == 0) {
		if (p.max_age > MTA_STS_MAX_AGE_MAX ||
		    (p.mode != MTA_STS_MODE_NONE && p.mx_count == 0))
			abort();
		for (size_t i = 0; i < p.mx_count; i++) {
			const char *mx = p.mx[i];
			char probe[300];
			/* a wildcard stands for one label */
			if (mx[0] == '*')
				snprintf(probe, sizeof probe, "a%s", mx + 1);
			else
				snprintf(probe, sizeof probe, "%s.", mx);
			if (!mta_sts_policy_mx_matches(&p, probe))
				abort();
		}
	}
	mta_sts_policy_clear(&p);
	char *text0 = malloc(size + 1);
	if (text0 != NULL) {
		memcpy(text0, data, size);
		text0[size] = '\0';
		struct tlsrpt_rua rua;
		int found = tlsrpt_record_parse(text0, &rua);
		if (found == 1 && rua.mailto[0] == '\0' &&
		    rua.https_host[0] == '\0')
			abort();
		if (rua.mailto[0] != '\0' && strchr(rua.mailto, '@') == NULL)
			abort();
		if (rua.https_host[0] != '\0' &&
		    (rua.https_port == 0 || rua.https_path[0] != '/' ||
		     !hostname_valid(rua.https_host, strlen(rua.https_host)) ||
		     strchr(rua.https_path, '#') != NULL))
			abort();
		free(text0);
	}
	char id[MTA_STS_ID_MAX + 1];
	if (mta_sts_txt_parse(text, size, id) == 1 &&
	    (id[0] == '\0' || strlen(id) > MTA_STS_ID_MAX))
		abort();
	return 0;
}
