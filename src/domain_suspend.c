/*
 * Suspended destination domains (see domain_suspend.h). A linear table:
 * an operator suspends a few domains at a time, and the scheduler asks
 * only for recipients it is about to try. Writing the file costs one
 * fsync on the loop, acceptable for an operator's command.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/domain_suspend.h"
#include "facteur/text.h"
#include "facteur/wholefile.h"

/* A domain name is at most 255 octets; the file is bounded with it. */
#define DOMAIN_SUSPEND_MAX 4096
#define DOMAIN_NAME_MAX 255

struct suspended {
	char *domain; /* lower case */
	time_t until; /* 0: until resumed */
};

struct domain_suspend {
	char *path; /* NULL: not tied to a file */
	struct suspended *items;
	size_t count;
	size_t cap;
};

struct domain_suspend *domain_suspend_new(void)
{
	return calloc(1, sizeof(struct domain_suspend));
}

void domain_suspend_free(struct domain_suspend *ds)
{
	if (ds == NULL)
		return;
	for (size_t i = 0; i < ds->count; i++)
		free(ds->items[i].domain);
	free(ds->items);
	free(ds->path);
	free(ds);
}

static struct suspended *lookup(const struct domain_suspend *ds,
				const char *domain)
{
	size_t n = strlen(domain);
	for (size_t i = 0; i < ds->count; i++)
		if (ascii_ieq_len(ds->items[i].domain,
				  strlen(ds->items[i].domain), domain, n))
			return &ds->items[i];
	return NULL;
}

bool domain_suspend_active(const struct domain_suspend *ds, const char *domain,
			   time_t now, time_t *until)
{
	const char *at = strrchr(domain, '@');
	const struct suspended *s =
	    ds->count == 0 ? NULL : lookup(ds, at != NULL ? at + 1 : domain);
	if (s == NULL || (s->until != 0 && s->until <= now))
		return false;
	if (until != NULL)
		*until = s->until;
	return true;
}

const char *domain_suspend_at(const struct domain_suspend *ds, size_t i)
{
	return i < ds->count ? ds->items[i].domain : NULL;
}

/* A name the file can hold on its line: no space, control or '@'. */
static bool domain_ok(const char *domain, size_t len)
{
	return len > 0 && len <= DOMAIN_NAME_MAX &&
	       !ascii_has_blank_or_control(domain, len) &&
	       memchr(domain, '@', len) == NULL;
}

/* Add or update an entry in memory; -1 with errno. */
static int put(struct domain_suspend *ds, const char *domain, size_t len,
	       time_t until)
{
	if (!domain_ok(domain, len)) {
		errno = EINVAL;
		return -1;
	}
	char *name = ascii_lower_dup(domain, len);
	if (name == NULL)
		return -1;
	struct suspended *s = lookup(ds, name);
	if (s != NULL) {
		free(name);
		s->until = until;
		return 0;
	}
	if (ds->count >= DOMAIN_SUSPEND_MAX) {
		free(name);
		errno = ENOSPC;
		return -1;
	}
	if (ds->count == ds->cap) {
		size_t cap = ds->cap ? ds->cap * 2 : 8;
		struct suspended *p = realloc(ds->items, cap * sizeof *p);
		if (p == NULL) {
			free(name);
			return -1;
		}
		ds->items = p;
		ds->cap = cap;
	}
	ds->items[ds->count++] = (struct suspended){name, until};
	return 0;
}

char *domain_suspend_format(const struct domain_suspend *ds, size_t *len)
{
	struct text t = {0};

	text_str(&t, "");
	for (size_t i = 0; i < ds->count; i++)
		text_fmt(&t, "%s %" PRId64 "\n", ds->items[i].domain,
			 (int64_t)ds->items[i].until);
	return text_finish(&t, len);
}

size_t domain_suspend_parse(struct domain_suspend *ds, const char *text,
			    size_t len)
{
	size_t skipped = 0;
	size_t pos = 0;

	while (pos < len) {
		const char *line = text + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - line) : len - pos;
		pos += n + (nl ? 1 : 0);
		if (n == 0)
			continue;
		const char *sp = memchr(line, ' ', n);
		char num[24];
		size_t numlen = sp ? n - (size_t)(sp - line) - 1 : 0;
		char *end;
		if (sp == NULL || numlen == 0 || numlen >= sizeof num ||
		    !ascii_is_digit(sp[1])) {
			skipped++;
			continue;
		}
		memcpy(num, sp + 1, numlen);
		num[numlen] = '\0';
		errno = 0;
		long long until = strtoll(num, &end, 10);
		if (errno != 0 || *end != '\0' ||
		    put(ds, line, (size_t)(sp - line), (time_t)until) == -1)
			skipped++;
	}
	return skipped;
}

struct domain_suspend *domain_suspend_open(const char *spool_dir,
					   size_t *skipped, char *err,
					   size_t errlen)
{
	struct domain_suspend *ds = domain_suspend_new();
	char *text = NULL;
	size_t len = 0;

	*skipped = 0;
	if (ds == NULL || asprintf(&ds->path, "%s/%s", spool_dir,
				   DOMAIN_SUSPEND_FILE) == -1) {
		if (ds != NULL)
			ds->path = NULL;
		domain_suspend_free(ds);
		snprintf(err, errlen, "suspended domains: out of memory");
		return NULL;
	}
	if (wholefile_read(ds->path,
			   DOMAIN_SUSPEND_MAX * (DOMAIN_NAME_MAX + 24),
			   WHOLEFILE_REGULAR, &text, &len) != WHOLEFILE_OK) {
		if (errno == ENOENT)
			return ds;
		snprintf(err, errlen, "%s: %s", ds->path, strerror(errno));
		domain_suspend_free(ds);
		return NULL;
	}
	*skipped = domain_suspend_parse(ds, text, len);
	free(text);
	return ds;
}

/* The table to its file, replacing the old one whole. */
static int save(const struct domain_suspend *ds)
{
	if (ds->path == NULL)
		return 0;
	size_t len = 0;
	char *text = domain_suspend_format(ds, &len);
	if (text == NULL) {
		errno = ENOMEM;
		return -1;
	}
	int rc = wholefile_replace(ds->path, text, len);
	int saved = errno;
	free(text);
	errno = saved;
	return rc;
}

int domain_suspend_set(struct domain_suspend *ds, const char *domain,
		       time_t until)
{
	struct suspended *old = lookup(ds, domain);
	time_t before = old ? old->until : 0;
	bool existed = old != NULL;

	if (put(ds, domain, strlen(domain), until) == -1)
		return -1;
	if (save(ds) == 0)
		return 0;
	int saved = errno;
	if (existed)
		lookup(ds, domain)->until = before;
	else
		free(ds->items[--ds->count].domain);
	errno = saved;
	return -1;
}

int domain_suspend_resume(struct domain_suspend *ds, const char *domain)
{
	struct suspended *s = lookup(ds, domain);
	if (s == NULL)
		return 1;
	struct suspended gone = *s;
	*s = ds->items[--ds->count];
	if (save(ds) == 0) {
		free(gone.domain);
		return 0;
	}
	int saved = errno;
	ds->items[ds->count++] = gone; /* still suspended, as on disk */
	errno = saved;
	return -1;
}
