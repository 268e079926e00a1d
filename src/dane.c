/*
 * DANE for SMTP (RFC 7672; see dane.h): the usability of TLSA records,
 * pure, and the TLSA look-ups of one attempt's MX hosts, all at once,
 * reported together once the last one is answered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/dane.h"
#include "facteur/log.h"
#include "facteur/metrics.h"

/* RFC 7218 names of the usages that count for SMTP */
#define DANE_USAGE_TA 2
#define DANE_USAGE_EE 3
#define DANE_SELECTOR_SPKI 1
#define DANE_NAME_MAX 300

struct dane_lookup_host {
	struct dane_lookup *lookup;
	struct dns_query *query; /* while asking */
};

struct dane_lookup {
	dane_cb cb;
	void *arg;
	struct dns_result *mx; /* a copy: its hosts go to the callback */
	struct dane_host *dane;
	struct dane_lookup_host *asking;
	size_t count;
	size_t waiting;
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);

	if (p == NULL)
		fatal("dane: out of memory");
	return p;
}

bool dane_record_usable(const struct dns_record *record)
{
	const struct dns_tlsa *t = &record->tlsa;

	if (record->type != DNS_TYPE_TLSA ||
	    record->tlsa_check != DNS_TLSA_WELL_FORMED)
		return false;
	if (t->usage != DANE_USAGE_TA && t->usage != DANE_USAGE_EE)
		return false;
	if (t->selector > DANE_SELECTOR_SPKI)
		return false;
	return t->matching <= DNS_TLSA_MATCH_SHA512;
}

void dane_host_from_answer(const struct dns_result *answer,
			   struct dane_host *host)
{
	memset(host, 0, sizeof(*host));
	switch (answer->status) {
	case DNS_OK:
		break;
	case DNS_TEMPFAIL:
		host->state = DANE_FAILED;
		snprintf(host->reason, sizeof(host->reason), "%s",
			 answer->error);
		return;
	case DNS_NXDOMAIN:
	case DNS_NO_HOST:
	case DNS_NULL_MX:
		host->state = DANE_NONE;
		return;
	}
	/* records that a resolver did not validate are anyone's */
	if (!answer->authenticated) {
		host->state = DANE_NONE;
		return;
	}
	host->tlsa = xcalloc(answer->record_count, sizeof(*host->tlsa));
	for (size_t i = 0; i < answer->record_count; i++) {
		const struct dns_record *r = &answer->records[i];
		unsigned char *data;

		if (!dane_record_usable(r)) {
			host->unusable++;
			continue;
		}
		data = malloc(r->tlsa.data_len == 0 ? 1 : r->tlsa.data_len);
		if (data == NULL)
			fatal("dane: out of memory");
		memcpy(data, r->tlsa.data, r->tlsa.data_len);
		host->tlsa[host->tlsa_count] = r->tlsa;
		host->tlsa[host->tlsa_count].data = data;
		host->tlsa_count++;
	}
	host->state = host->tlsa_count > 0 ? DANE_VERIFY : DANE_ENCRYPT;
}

static void dane_host_clear(struct dane_host *host)
{
	for (size_t i = 0; i < host->tlsa_count; i++)
		free((void *)host->tlsa[i].data);
	free(host->tlsa);
	memset(host, 0, sizeof(*host));
}

bool dane_applies(const struct dns_result *mx)
{
	if (mx->status != DNS_OK || !mx->authenticated)
		return false;
	for (size_t i = 0; i < mx->host_count; i++)
		if (mx->hosts[i].secure)
			return true;
	return false;
}

const char *dane_state_name(enum dane_state state)
{
	switch (state) {
	case DANE_NONE:
		return "none";
	case DANE_ENCRYPT:
		return "encrypt";
	case DANE_VERIFY:
		return "verify";
	case DANE_FAILED:
		return "failed";
	}
	return "?";
}

static void on_tlsa(const struct dns_result *answer, void *arg)
{
	struct dane_lookup_host *asking = arg;
	struct dane_lookup *lookup = asking->lookup;
	size_t i = (size_t)(asking - lookup->asking);
	struct dane_host *host = &lookup->dane[i];

	asking->query = NULL;
	dane_host_from_answer(answer, host);
	if (host->state == DANE_FAILED)
		metrics.tls_policy[METRICS_TLS_POLICY_DANE]
				  [METRICS_TLS_POLICY_FAILURE]++;
	struct log_field f[5] = {
	    LOG_S("host", lookup->mx->hosts[i].name),
	    LOG_S("state", dane_state_name(host->state)),
	    LOG_I("usable", host->tlsa_count),
	    LOG_I("unusable", host->unusable),
	};
	size_t n = 4;
	if (host->state == DANE_FAILED)
		f[n++] = (struct log_field)LOG_S("reason", host->reason);
	log_fields(host->state == DANE_FAILED ? LOG_LEVEL_WARN : LOG_LEVEL_INFO,
		   "dane_tlsa", f, n);
	if (--lookup->waiting == 0)
		lookup->cb(lookup->mx->hosts, lookup->dane, lookup->count,
			   lookup->arg);
}

struct dane_lookup *dane_lookup_start(struct dns *dns,
				      const struct dns_result *mx,
				      uint16_t port, dane_cb cb, void *arg)
{
	struct dane_lookup *lookup = xcalloc(1, sizeof(*lookup));
	size_t n = mx->host_count;

	lookup->cb = cb;
	lookup->arg = arg;
	lookup->count = n;
	lookup->mx = dns_result_copy(mx);
	lookup->dane = xcalloc(n, sizeof(*lookup->dane));
	lookup->asking = xcalloc(n, sizeof(*lookup->asking));
	for (size_t i = 0; i < n; i++) {
		lookup->asking[i].lookup = lookup;
		if (mx->hosts[i].secure)
			lookup->waiting++;
	}
	if (lookup->waiting == 0)
		fatal("dane: a look-up with no secure host");
	/* counted up front: a cached answer still comes back later, but
	 * the count must be whole before the first one does */
	for (size_t i = 0; i < n; i++) {
		char name[DANE_NAME_MAX];

		if (!lookup->mx->hosts[i].secure)
			continue;
		snprintf(name, sizeof(name), "_%u._tcp.%s", (unsigned)port,
			 lookup->mx->hosts[i].name);
		lookup->asking[i].query =
		    dns_resolve_tlsa(dns, name, on_tlsa, &lookup->asking[i]);
	}
	return lookup;
}

void dane_lookup_free(struct dane_lookup *lookup)
{
	if (lookup == NULL)
		return;
	for (size_t i = 0; i < lookup->count; i++) {
		dns_cancel(lookup->asking[i].query);
		dane_host_clear(&lookup->dane[i]);
	}
	dns_result_free(lookup->mx);
	free(lookup->asking);
	free(lookup->dane);
	free(lookup);
}
