/*
 * Interned strings for the queue in memory: one copy of each text, with
 * a count of its references. A dead destination leaves thousands of
 * queued messages with the same protocol, client address, HELO, last
 * reason and last relay; each of those is kept once here instead of once
 * a message (spool_envelope_pack). The daemon's spool owns one table,
 * used by one thread at a time: recovery's worker at start-up, then the
 * loop (the scheduler) once recovery has handed the queue over.
 */
#ifndef FACTEUR_SPOOL_STRINGS_H
#define FACTEUR_SPOOL_STRINGS_H

#include <stddef.h>

struct spool_strings;

struct spool_strings *spool_strings_new(void);
/* Free the table now, or, while texts of it are still referenced (the
 * envelopes a test keeps past its spool's close), when the last one is
 * put back; nothing more is got from it. */
void spool_strings_free(struct spool_strings *strings);

/* A reference to the interned copy of s (NULL for NULL); NULL with
 * errno ENOMEM when a new copy cannot be made. */
const char *spool_strings_get(struct spool_strings *strings, const char *s);
/* Give back a reference spool_strings_get returned (NULL is ignored);
 * the copy goes with its last reference. */
void spool_strings_put(struct spool_strings *strings, const char *s);

/* Distinct texts held, for tests and the curious. */
size_t spool_strings_count(const struct spool_strings *strings);

#endif
