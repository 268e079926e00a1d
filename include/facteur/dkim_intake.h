/*
 * DKIM signing on the way into the spool: the loop-facing part of dkim.h.
 * A session that may have its mail signed (a relay_networks client or
 * an authenticated one) feeds the message as it writes it to the spool;
 * at the end the keys covering the From: domain each prepare a
 * signature, the key operations and the prepending of the fields run on
 * the worker, and the session commits once they are done. The loop never
 * waits on a private key.
 */
#ifndef FACTEUR_DKIM_INTAKE_H
#define FACTEUR_DKIM_INTAKE_H

#include <stddef.h>

struct dkim_intake;
struct dkim_keys;
struct spool;
struct spool_incoming;
struct worker;

/* A fresh reader; NULL when out of memory (the message goes unsigned). */
struct dkim_intake *dkim_intake_new(void);
void dkim_intake_free(struct dkim_intake *in);
/* The octets written to the spool, in order. */
void dkim_intake_feed(struct dkim_intake *in, const void *buf, size_t len);

/*
 * The last octet is in: sign with every key of `keys` whose domain
 * covers the From: domain, put the fields before the message in inc,
 * then call done(outcome, arg) on the loop. outcome is malloc'd, for the
 * `accepted` line's dkim= field: "signed:DOMAIN/SELECTOR,...",
 * "unsigned:REASON" or "error:DOMAIN/SELECTOR,...". A failure to write
 * the fields leaves its errno in inc->error, which refuses the commit.
 * Takes `in`. 0: the callback runs later, never inside this call, and
 * the loop must leave inc alone until it does. -1 when out of memory:
 * no callback, the message is as it was (unsigned).
 */
typedef void (*dkim_intake_done)(char *outcome, void *arg);
int dkim_intake_finish(struct dkim_intake *in, const struct dkim_keys *keys,
		       struct worker *worker, struct spool *spool,
		       struct spool_incoming *inc, dkim_intake_done done,
		       void *arg);

/* The same for a process without a loop (facteur-sendmail): signed
 * now, nothing logged or counted; the outcome (malloc'd, NULL when out
 * of memory). Takes `in`. */
char *dkim_intake_sign_now(struct dkim_intake *in,
			   const struct dkim_keys *keys, struct spool *spool,
			   struct spool_incoming *inc);

#endif
