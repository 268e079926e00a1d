/*
 * The queue by destination domain (facteurctl summary): messages and
 * recipients not done per domain, the oldest arrival and the latest
 * error. Pure: envelopes in, rows out, so that it is unit tested and can
 * be filled a slice of the queue at a time.
 */
#ifndef FACTEUR_QUEUE_SUMMARY_H
#define FACTEUR_QUEUE_SUMMARY_H

#include <stddef.h>

#include "facteur/control_proto.h"

struct queue_summary;

struct queue_summary *queue_summary_new(void);
void queue_summary_free(struct queue_summary *qs);

/* Count one message's recipients not done under their domains (in lower
 * case; a message counts once per domain). -1 when memory runs out. */
int queue_summary_add(struct queue_summary *qs,
		      const struct spool_envelope *env);

/* A row for this domain even without a message (a suspended domain
 * shows). -1 when memory runs out. */
int queue_summary_include(struct queue_summary *qs, const char *domain);

/* Sort the rows, most messages first (then by name), and count them. */
size_t queue_summary_finish(struct queue_summary *qs);
/* Row i after queue_summary_finish; the caller may set its `suspended`
 * and `paused` fields. */
struct control_summary_row *queue_summary_row(struct queue_summary *qs,
					      size_t i);

#endif
