/*
 * The TTL cache of the dns module: per (name, type), positive and
 * negative answers, at most DNS_CACHE_MAX entries (the oldest goes when
 * full), a hash table of DNS_CACHE_BUCKETS chains.
 */
#include <stdlib.h>
#include <string.h>

#include "facteur/dns_internal.h"

static size_t cache_bucket(const char *name, uint16_t type)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const char *p = name; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	h = (h ^ (type & 0xff)) * 16777619u;
	h = (h ^ (type >> 8)) * 16777619u;
	return h % DNS_CACHE_BUCKETS;
}

static void cache_remove(struct cache *c, struct cache_entry *e)
{
	struct cache_entry **pp = &c->buckets[cache_bucket(e->name, e->type)];

	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	if (e->older != NULL)
		e->older->newer = e->newer;
	else
		c->oldest = e->newer;
	if (e->newer != NULL)
		e->newer->older = e->older;
	else
		c->newest = e->older;
	c->count--;
	dns_records_free(e->records, e->count);
	free(e);
}

struct cache_entry *dns_cache_find(struct cache *c, const char *name,
				   uint16_t type, uint64_t now)
{
	struct cache_entry *e = c->buckets[cache_bucket(name, type)];

	for (; e != NULL; e = e->chain) {
		if (e->type != type || strcmp(e->name, name) != 0)
			continue;
		if (e->expires <= now) {
			cache_remove(c, e);
			return NULL;
		}
		return e;
	}
	return NULL;
}

void dns_cache_store(struct cache *c, const char *name, uint16_t type,
		     const struct outcome *o, uint32_t ttl, uint64_t now)
{
	size_t len = strlen(name);
	struct cache_entry *e, *old;
	size_t bucket = cache_bucket(name, type);

	if (ttl == 0)
		return;
	old = dns_cache_find(c, name, type, now);
	if (old != NULL)
		cache_remove(c, old);
	/* Full: the oldest entry goes, whatever its TTL. */
	if (c->count >= DNS_CACHE_MAX && c->oldest != NULL)
		cache_remove(c, c->oldest);

	e = dns_xcalloc(1, sizeof(*e) + len + 1);
	memcpy(e->name, name, len + 1);
	e->type = type;
	e->status = o->status;
	e->expires = now + (uint64_t)ttl * 1000;
	e->authenticated = o->authenticated;
	if (o->count > 0) {
		e->records = dns_records_copy(o->records, o->count);
		e->count = o->count;
	}
	e->chain = c->buckets[bucket];
	c->buckets[bucket] = e;
	e->older = c->newest;
	if (c->newest != NULL)
		c->newest->newer = e;
	else
		c->oldest = e;
	c->newest = e;
	c->count++;
}

void dns_cache_clear(struct cache *c)
{
	while (c->oldest != NULL)
		cache_remove(c, c->oldest);
}
