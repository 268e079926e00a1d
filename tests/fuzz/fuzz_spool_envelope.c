/*
 * The envelope parser on arbitrary bytes, as a crash may leave a file.
 * Whatever parses must survive the trip back: the text cut at valid_len
 * parses to the same values (that is what recovery truncates to), and
 * formatting the values with one record per recipient parses to them
 * again. Packed for the queue (spool_envelope_pack), the envelope keeps
 * its values and formats to the same text, and gives back every interned
 * text when freed.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/spool.h"
#include "facteur/spool_strings.h"

static bool same_str(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static bool same_envelope(const struct spool_envelope *a,
			  const struct spool_envelope *b)
{
	if (strcmp(a->id, b->id) != 0 || a->arrival != b->arrival ||
	    !same_str(a->sender, b->sender) ||
	    !same_str(a->client_addr, b->client_addr) ||
	    !same_str(a->helo, b->helo) ||
	    !same_str(a->protocol, b->protocol) ||
	    !same_str(a->auth_user, b->auth_user) || a->size != b->size ||
	    a->body != b->body || a->smtputf8 != b->smtputf8 ||
	    a->ret != b->ret || !same_str(a->envid, b->envid) ||
	    a->flags != b->flags || a->rcpt_count != b->rcpt_count)
		return false;
	for (size_t i = 0; i < a->rcpt_count; i++) {
		const struct spool_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		if (!same_str(x->address, y->address) ||
		    !same_str(x->original, y->original) ||
		    !same_str(x->orcpt, y->orcpt) || x->notify != y->notify ||
		    x->local != y->local || x->state != y->state ||
		    x->attempts != y->attempts ||
		    x->next_attempt != y->next_attempt ||
		    x->updated != y->updated || strcmp(x->dsn, y->dsn) != 0 ||
		    !same_str(x->reason, y->reason))
			return false;
	}
	return true;
}

/* Envelope text plus one state record per recipient. */
static char *format_all(const struct spool_envelope *env, size_t *len)
{
	char *text = spool_envelope_format(env, len);
	if (text == NULL)
		return NULL;
	for (size_t i = 0; i < env->rcpt_count; i++) {
		size_t rlen;
		char *rec = spool_record_format(env, i, &rlen);
		if (rec == NULL) {
			free(text);
			return NULL;
		}
		char *grown = realloc(text, *len + rlen + 1);
		if (grown == NULL) {
			free(rec);
			free(text);
			return NULL;
		}
		text = grown;
		memcpy(text + *len, rec, rlen + 1);
		*len += rlen;
		free(rec);
	}
	return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_envelope env, cut, again;
	size_t valid_len, cut_len, again_len;

	if (spool_envelope_parse((const char *)data, size, &env, &valid_len) !=
	    0)
		return 0;
	if (valid_len > size)
		abort();

	if (spool_envelope_parse((const char *)data, valid_len, &cut,
				 &cut_len) != 0 ||
	    cut_len != valid_len || !same_envelope(&env, &cut))
		abort();
	spool_envelope_clear(&cut);

	size_t len;
	char *text = format_all(&env, &len);
	if (text == NULL)
		abort();
	if (spool_envelope_parse(text, len, &again, &again_len) != 0 ||
	    again_len != len || !same_envelope(&env, &again))
		abort();
	spool_envelope_clear(&again);

	struct spool_strings *strings = spool_strings_new();
	struct spool_envelope *plain = calloc(1, sizeof *plain);
	if (strings == NULL || plain == NULL ||
	    spool_envelope_parse(text, len, plain, NULL) != 0)
		abort();
	struct spool_envelope *packed = spool_envelope_pack(plain, strings);
	if (packed == NULL || !same_envelope(&env, packed))
		abort();
	size_t packed_len;
	char *packed_text = format_all(packed, &packed_len);
	if (packed_text == NULL || packed_len != len ||
	    memcmp(packed_text, text, len) != 0)
		abort();
	free(packed_text);
	spool_envelope_free(packed);
	if (spool_strings_count(strings) != 0)
		abort();
	spool_strings_free(strings);

	free(text);
	spool_envelope_clear(&env);
	return 0;
}
