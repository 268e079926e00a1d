/*
 * Destination domains the operator suspended (facteurctl suspend): no
 * attempt for their recipients until resumed or until a time. The table
 * is small (a handful of domains) and kept in <spool_dir>/suspended, one
 * "DOMAIN UNTIL" line each (UNTIL 0: until resumed), rewritten whole and
 * flushed at each change so that it survives a restart.
 */
#ifndef FACTEUR_DOMAIN_SUSPEND_H
#define FACTEUR_DOMAIN_SUSPEND_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define DOMAIN_SUSPEND_FILE "suspended"

struct domain_suspend;

/* Read <spool_dir>/suspended (missing: nothing suspended). A malformed
 * line is skipped and counted in *skipped. NULL with err filled when the
 * file cannot be read or memory runs out. */
struct domain_suspend *domain_suspend_open(const char *spool_dir,
					   size_t *skipped, char *err,
					   size_t errlen);
void domain_suspend_free(struct domain_suspend *ds);

/* Is this domain (any case), or the domain of this address (after its
 * last '@'), suspended at `now`? *until gets the end (0:
 * until resumed) when it is. A suspension whose time passed is over. */
bool domain_suspend_active(const struct domain_suspend *ds, const char *domain,
			   time_t now, time_t *until);

/* The i-th domain of the table (in lower case), or NULL past its end. */
const char *domain_suspend_at(const struct domain_suspend *ds, size_t i);

/* Suspend (until 0: until resumed) or resume a domain, and write the
 * file durably. 0, or -1 with errno (the table is then unchanged).
 * domain_suspend_resume returns 1 when the domain was not suspended. */
int domain_suspend_set(struct domain_suspend *ds, const char *domain,
		       time_t until);
int domain_suspend_resume(struct domain_suspend *ds, const char *domain);

/* The file's text for a table and its parse, pure (unit tests). Parse
 * fills ds from text, skipping malformed lines; returns how many. */
char *domain_suspend_format(const struct domain_suspend *ds, size_t *len);
size_t domain_suspend_parse(struct domain_suspend *ds, const char *text,
			    size_t len);
/* An empty table, not tied to a file (for the pure functions). */
struct domain_suspend *domain_suspend_new(void);

#endif
