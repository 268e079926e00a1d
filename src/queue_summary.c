/*
 * The queue by destination domain (see queue_summary.h). An open
 * addressing hash of domains over an array of rows: one lookup per
 * recipient, so a summary of a million messages is a million lookups,
 * and memory grows with the number of domains, not of messages.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/ascii.h"
#include "facteur/queue_summary.h"

struct domain_row {
	struct control_summary_row row; /* row.domain and last_error owned */
	uint64_t hash;
	size_t last_message; /* the message that last counted here */
	time_t error_time;   /* when last_error was set */
};

struct queue_summary {
	struct domain_row *rows;
	size_t count;
	size_t cap;
	size_t *slots; /* index + 1 into rows; 0: empty */
	size_t nslots; /* a power of two, at least twice count */
	size_t messages;
};

struct queue_summary *queue_summary_new(void)
{
	return calloc(1, sizeof(struct queue_summary));
}

void queue_summary_free(struct queue_summary *qs)
{
	if (qs == NULL)
		return;
	for (size_t i = 0; i < qs->count; i++) {
		free((char *)qs->rows[i].row.domain);
		free((char *)qs->rows[i].row.last_error);
	}
	free(qs->rows);
	free(qs->slots);
	free(qs);
}

/* FNV-1a over the lower-cased name. */
static uint64_t hash_domain(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)ascii_lower(s[i]);
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int grow_slots(struct queue_summary *qs)
{
	size_t nslots = qs->nslots ? qs->nslots * 2 : 64;
	size_t *slots = calloc(nslots, sizeof *slots);
	if (slots == NULL)
		return -1;
	for (size_t i = 0; i < qs->count; i++) {
		size_t at = (size_t)qs->rows[i].hash & (nslots - 1);
		while (slots[at] != 0)
			at = (at + 1) & (nslots - 1);
		slots[at] = i + 1;
	}
	free(qs->slots);
	qs->slots = slots;
	qs->nslots = nslots;
	return 0;
}

static struct domain_row *row_for(struct queue_summary *qs, const char *domain)
{
	size_t n = strlen(domain);
	uint64_t h = hash_domain(domain, n);

	if (qs->nslots == 0 && grow_slots(qs) == -1)
		return NULL;
	size_t at = (size_t)h & (qs->nslots - 1);
	for (; qs->slots[at] != 0; at = (at + 1) & (qs->nslots - 1)) {
		struct domain_row *r = &qs->rows[qs->slots[at] - 1];
		if (r->hash == h &&
		    ascii_ieq_len(r->row.domain, strlen(r->row.domain), domain,
				  n))
			return r;
	}
	if (qs->count == qs->cap) {
		size_t cap = qs->cap ? qs->cap * 2 : 16;
		struct domain_row *rows = realloc(qs->rows, cap * sizeof *rows);
		if (rows == NULL)
			return NULL;
		qs->rows = rows;
		qs->cap = cap;
	}
	char *name = ascii_lower_dup(domain, n);
	if (name == NULL)
		return NULL;
	struct domain_row *r = &qs->rows[qs->count++];
	*r = (struct domain_row){.row = {.domain = name}, .hash = h};
	qs->slots[at] = qs->count;
	if (qs->count * 2 > qs->nslots && grow_slots(qs) == -1)
		return NULL; /* the summary fails: out of memory */
	return &qs->rows[qs->count - 1];
}

/* The latest error of the domain, copied only when newer. */
static int note_error(struct domain_row *r, const struct spool_rcpt *rcpt)
{
	if (rcpt->reason == NULL && rcpt->dsn[0] == '\0')
		return 0;
	if (r->row.last_error != NULL && rcpt->updated <= r->error_time)
		return 0;
	size_t dsn_len = strnlen(rcpt->dsn, sizeof rcpt->dsn);
	size_t reason_len = rcpt->reason ? strlen(rcpt->reason) : 0;
	char *text = malloc(dsn_len + reason_len + 2);
	if (text == NULL)
		return -1;
	memcpy(text, rcpt->dsn, dsn_len);
	size_t len = dsn_len;
	if (dsn_len > 0 && reason_len > 0)
		text[len++] = ' ';
	if (reason_len > 0)
		memcpy(text + len, rcpt->reason, reason_len);
	text[len + reason_len] = '\0';
	free((char *)r->row.last_error);
	r->row.last_error = text;
	r->error_time = rcpt->updated;
	return 0;
}

int queue_summary_add(struct queue_summary *qs,
		      const struct spool_envelope *env)
{
	size_t message = ++qs->messages;

	for (size_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *rcpt = &env->rcpts[i];
		if (rcpt->state == RCPT_DELIVERED ||
		    rcpt->state == RCPT_BOUNCED)
			continue;
		struct domain_row *r =
		    row_for(qs, control_proto_domain(rcpt->address));
		if (r == NULL)
			return -1;
		r->row.recipients++;
		if (r->last_message != message) {
			r->last_message = message;
			r->row.messages++;
		}
		if (r->row.oldest == 0 || env->arrival < r->row.oldest)
			r->row.oldest = env->arrival;
		if (note_error(r, rcpt) == -1)
			return -1;
	}
	return 0;
}

int queue_summary_include(struct queue_summary *qs, const char *domain)
{
	return row_for(qs, domain) == NULL ? -1 : 0;
}

static int by_messages(const void *a, const void *b)
{
	const struct domain_row *x = a;
	const struct domain_row *y = b;
	if (x->row.messages != y->row.messages)
		return x->row.messages > y->row.messages ? -1 : 1;
	return strcmp(x->row.domain, y->row.domain);
}

size_t queue_summary_finish(struct queue_summary *qs)
{
	/* The hash is not needed any more: rows move. */
	free(qs->slots);
	qs->slots = NULL;
	qs->nslots = 0;
	if (qs->count > 1)
		qsort(qs->rows, qs->count, sizeof *qs->rows, by_messages);
	return qs->count;
}

struct control_summary_row *queue_summary_row(struct queue_summary *qs,
					      size_t i)
{
	return i < qs->count ? &qs->rows[i].row : NULL;
}
