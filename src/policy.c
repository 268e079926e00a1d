/*
 * Recipient policy (see policy.h): relay control, local existence and
 * alias expansion, the SRS rewriting of forwarded mail (srs.c) and the
 * senders of each login (senders.c). The aliases are an array sorted by
 * lower-cased key and searched by bisection. The policy borrows the
 * configuration and the users: it must be freed before them (a reload
 * builds a new policy with its new configuration and files).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/ascii.h"
#include "facteur/auth.h"
#include "facteur/policy.h"
#include "facteur/senders.h"
#include "facteur/srs.h"
#include "facteur/text.h"
#include "facteur/wholefile.h"

/* The recipient is level 0, its alias targets level 1, and so on; an
 * alias whose targets would sit deeper than this is a loop. */
#define ALIAS_DEPTH_MAX 20
/* Aliases expanded for one recipient, and final targets it may yield:
 * a bound on the work that a fan-out of aliases can cause. */
#define ALIAS_EXPANSIONS_MAX 1000
#define ALIAS_TARGETS_MAX 10000
#define ALIASES_FILE_MAX (64u * 1024 * 1024)
#define SENDERS_FILE_MAX (64u * 1024 * 1024)
#define SRS_SECRET_FILE_MAX (64u * 1024)

struct alias {
	char *key; /* lower case: "local@domain" or a bare "local" */
	char **targets;
	size_t count;
	size_t cap;
	size_t line;
	bool bad_target; /* reported already: no "no target" error too */
};

struct policy {
	const struct config *cfg;
	const struct auth_users *users;
	struct alias *aliases; /* sorted by key */
	size_t alias_count;
	struct srs *srs;	 /* NULL without srs_domain */
	struct senders *senders; /* NULL without senders_file */
};

/* Errors quote at most this much of a line. */
#define QUOTE_MAX 200
#define QUOTE(len) ((int)((len) > QUOTE_MAX ? QUOTE_MAX : (len)))

static void aliases_free(struct alias *aliases, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(aliases[i].key);
		for (size_t j = 0; j < aliases[i].count; j++)
			free(aliases[i].targets[j]);
		free(aliases[i].targets);
	}
	free(aliases);
}

void policy_free(struct policy *policy)
{
	if (policy == NULL)
		return;
	aliases_free(policy->aliases, policy->alias_count);
	srs_free(policy->srs);
	senders_free(policy->senders);
	free(policy);
}

struct alias_parser {
	struct policy *policy;
	size_t cap;
	const char *name;
	struct config_errors *errors;
	bool oom;
};

/* Add the comma-separated targets of `s` to the alias; blank items
 * (as in "a,\n  b") are skipped. */
static void parse_targets(struct alias_parser *ap, struct alias *alias,
			  const char *s, size_t len, size_t lineno)
{
	const char *end = s + len;
	while (s < end && !ap->oom) {
		const char *comma = memchr(s, ',', (size_t)(end - s));
		const char *item_end = comma != NULL ? comma : end;
		const char *t = s;
		size_t tlen = (size_t)(item_end - s);
		s = comma != NULL ? comma + 1 : end;
		t = ascii_trim(t, &tlen, ASCII_LINE_BLANKS);
		if (tlen >= 2 && t[0] == '<' && t[tlen - 1] == '>') {
			t++;
			tlen -= 2;
		}
		if (tlen == 0)
			continue;
		if (t[0] == '|' || t[0] == '/' ||
		    (tlen >= 9 && strncasecmp(t, ":include:", 9) == 0)) {
			config_errors_add(ap->errors,
					  "%s:%zu: aliases_file: unsupported "
					  "target \"%.*s\" (only addresses)",
					  ap->name, lineno, QUOTE(tlen), t);
			alias->bad_target = true;
			continue;
		}
		const char *at = memrchr(t, '@', tlen);
		if (ascii_has_blank_or_control(t, tlen) || t[0] == '@' ||
		    (at != NULL && at == t + tlen - 1)) {
			config_errors_add(ap->errors,
					  "%s:%zu: aliases_file: bad target "
					  "\"%.*s\"",
					  ap->name, lineno, QUOTE(tlen), t);
			alias->bad_target = true;
			continue;
		}
		if (alias->count == alias->cap) {
			size_t ncap = alias->cap == 0 ? 4 : alias->cap * 2;
			char **n =
			    reallocarray(alias->targets, ncap, sizeof *n);
			if (n == NULL) {
				ap->oom = true;
				return;
			}
			alias->targets = n;
			alias->cap = ncap;
		}
		alias->targets[alias->count] = text_dup(t, tlen);
		if (alias->targets[alias->count] == NULL) {
			ap->oom = true;
			return;
		}
		alias->count++;
	}
}

/* An "address: targets" line; returns the new alias or NULL (error
 * reported, or out of memory). */
static struct alias *parse_entry(struct alias_parser *ap, const char *line,
				 size_t len, size_t lineno)
{
	const char *colon = memchr(line, ':', len);
	if (colon == NULL) {
		config_errors_add(ap->errors,
				  "%s:%zu: aliases_file: no ':' in "
				  "line",
				  ap->name, lineno);
		return NULL;
	}
	const char *key = line;
	size_t keylen = (size_t)(colon - line);
	key = ascii_trim(key, &keylen, ASCII_LINE_BLANKS);
	if (keylen == 0) {
		config_errors_add(ap->errors,
				  "%s:%zu: aliases_file: empty "
				  "address",
				  ap->name, lineno);
		return NULL;
	}
	const char *at = memrchr(key, '@', keylen);
	if (ascii_has_blank_or_control(key, keylen) ||
	    (at != NULL && (at == key || at == key + keylen - 1))) {
		config_errors_add(ap->errors,
				  "%s:%zu: aliases_file: bad address \"%.*s\"",
				  ap->name, lineno, QUOTE(keylen), key);
		return NULL;
	}
	struct policy *p = ap->policy;
	if (p->alias_count == ap->cap) {
		size_t ncap = ap->cap == 0 ? 16 : ap->cap * 2;
		struct alias *n = reallocarray(p->aliases, ncap, sizeof *n);
		if (n == NULL) {
			ap->oom = true;
			return NULL;
		}
		p->aliases = n;
		ap->cap = ncap;
	}
	struct alias *alias = &p->aliases[p->alias_count];
	memset(alias, 0, sizeof *alias);
	alias->key = text_dup(key, keylen);
	if (alias->key == NULL) {
		ap->oom = true;
		return NULL;
	}
	ascii_lower_in_place(alias->key, keylen);
	alias->line = lineno;
	p->alias_count++;
	parse_targets(ap, alias, colon + 1, len - (size_t)(colon + 1 - line),
		      lineno);
	return alias;
}

static int compare_aliases(const void *a, const void *b)
{
	const struct alias *x = a, *y = b;
	int c = strcmp(x->key, y->key);
	if (c != 0)
		return c;
	return (x->line > y->line) - (x->line < y->line);
}

static int parse_aliases(struct policy *p, const char *text, size_t len,
			 const char *name, struct config_errors *errors)
{
	size_t errors_before = errors->count;
	struct alias_parser ap = {
	    .policy = p,
	    .name = name,
	    .errors = errors,
	};
	/* The entry that an indented line continues; NULL after a blank or
	 * comment line, as in sendmail. `skip` swallows the continuations
	 * of a line already reported as broken. */
	struct alias *current = NULL;
	bool skip = false;
	struct config_lines lines;
	enum config_line kind;
	const char *body;
	size_t bodylen;
	config_lines_start(&lines, text, len, name, "aliases_file", errors);
	while (!ap.oom && (kind = config_lines_next(&lines, &body, &bodylen)) !=
			      CONFIG_LINE_END) {
		size_t lineno = lines.lineno;
		switch (kind) {
		case CONFIG_LINE_BROKEN:
			current = NULL;
			skip = true;
			break;
		case CONFIG_LINE_EMPTY:
			current = NULL;
			skip = false;
			break;
		case CONFIG_LINE_INDENTED:
			if (skip)
				break;
			if (current == NULL) {
				config_errors_add(
				    errors,
				    "%s:%zu: aliases_file: "
				    "continuation line without an "
				    "address",
				    name, lineno);
				skip = true;
				break;
			}
			parse_targets(&ap, current, body, bodylen, lineno);
			break;
		case CONFIG_LINE_ENTRY:
			current = parse_entry(&ap, body, bodylen, lineno);
			skip = current == NULL;
			break;
		case CONFIG_LINE_END:
			break;
		}
	}
	if (ap.oom) {
		config_errors_add(errors, "%s: aliases_file: out of memory",
				  name);
		return -1;
	}
	for (size_t i = 0; i < p->alias_count; i++)
		if (p->aliases[i].count == 0 && !p->aliases[i].bad_target)
			config_errors_add(errors,
					  "%s:%zu: aliases_file: no target for "
					  "%s",
					  name, p->aliases[i].line,
					  p->aliases[i].key);
	if (p->alias_count > 1)
		qsort(p->aliases, p->alias_count, sizeof *p->aliases,
		      compare_aliases);
	for (size_t i = 1; i < p->alias_count; i++)
		if (strcmp(p->aliases[i - 1].key, p->aliases[i].key) == 0)
			config_errors_add(errors,
					  "%s:%zu: aliases_file: duplicate "
					  "address %s (first on line %zu)",
					  name, p->aliases[i].line,
					  p->aliases[i].key,
					  p->aliases[i - 1].line);
	return errors->count == errors_before ? 0 : -1;
}

static int load_senders(struct policy *p, struct config_errors *errors)
{
	const char *path = p->cfg->senders_file;
	if (path == NULL || path[0] == '\0')
		return 0;
	size_t len = 0;
	char *text = config_read_named_file(path, "senders_file",
					    SENDERS_FILE_MAX, 0, &len, errors);
	if (text == NULL)
		return -1;
	p->senders = senders_parse(text, len, path, errors);
	free(text);
	return p->senders != NULL ? 0 : -1;
}

/* The secrets are read with the settings: a reload that cannot read them
 * is refused and the running policy keeps the old ones. */
static int load_srs(struct policy *p, struct config_errors *errors)
{
	const struct config *cfg = p->cfg;
	if (cfg->srs_domain == NULL)
		return 0;
	if (cfg->srs_secret_file == NULL) {
		config_errors_add(errors, "srs_domain: srs_secret_file is "
					  "not set");
		return -1;
	}
	size_t len = 0;
	char *text = config_read_named_file(
	    cfg->srs_secret_file, "srs_secret_file", SRS_SECRET_FILE_MAX,
	    WHOLEFILE_SECRET, &len, errors);
	if (text == NULL)
		return -1;
	const char *why;
	p->srs = srs_new(cfg->srs_domain, text, len, &why);
	wholefile_free_secret(text, len);
	if (p->srs == NULL)
		config_errors_add(errors, "%s: srs_secret_file: %s",
				  cfg->srs_secret_file,
				  why != NULL ? why : "out of memory");
	return p->srs != NULL ? 0 : -1;
}

static struct policy *policy_build(const struct config *cfg,
				   const struct auth_users *users,
				   const char *text, size_t len,
				   const char *name,
				   struct config_errors *errors)
{
	struct policy *p = calloc(1, sizeof *p);
	if (p == NULL) {
		config_errors_add(errors, "policy: out of memory");
		return NULL;
	}
	p->cfg = cfg;
	p->users = users;
	if ((text != NULL &&
	     parse_aliases(p, text, len, name != NULL ? name : "aliases",
			   errors) == -1) ||
	    load_senders(p, errors) == -1 || load_srs(p, errors) == -1) {
		policy_free(p);
		return NULL;
	}
	return p;
}

struct policy *policy_new_with_aliases(const struct config *cfg,
				       const struct auth_users *users,
				       const char *aliases_text,
				       const char *name,
				       struct config_errors *errors)
{
	return policy_build(cfg, users, aliases_text,
			    aliases_text != NULL ? strlen(aliases_text) : 0,
			    name, errors);
}

struct policy *policy_new(const struct config *cfg,
			  const struct auth_users *users,
			  struct config_errors *errors)
{
	if (cfg->aliases_file == NULL || cfg->aliases_file[0] == '\0')
		return policy_build(cfg, users, NULL, 0, NULL, errors);
	size_t len = 0;
	char *text = config_read_named_file(cfg->aliases_file, "aliases_file",
					    ALIASES_FILE_MAX, 0, &len, errors);
	if (text == NULL)
		return NULL;
	struct policy *p =
	    policy_build(cfg, users, text, len, cfg->aliases_file, errors);
	free(text);
	return p;
}

static const struct alias *find_alias(const struct policy *p, const char *key,
				      size_t keylen)
{
	size_t lo = 0, hi = p->alias_count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const char *k = p->aliases[mid].key;
		int c = strncmp(k, key, keylen);
		if (c == 0 && k[keylen] != '\0')
			c = 1;
		if (c == 0)
			return &p->aliases[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

bool policy_local_part_safe(const char *local, size_t len)
{
	if (local == NULL || len == 0 || local[0] == '.')
		return false;
	/* "." and ".." start with a dot, so the rule above covers them. */
	return memchr(local, '/', len) == NULL &&
	       memchr(local, '\0', len) == NULL;
}

char *policy_expand_mailbox_path(const char *template_path, const char *local,
				 size_t local_len, const char *domain)
{
	if (template_path == NULL || local == NULL || domain == NULL ||
	    memchr(local, '\0', local_len) != NULL)
		return NULL;
	size_t domain_len = strlen(domain);
	size_t need = 1;
	for (const char *p = template_path; *p != '\0'; p++) {
		if (*p != '%') {
			need++;
			continue;
		}
		p++;
		if (*p == 'u')
			need += local_len;
		else if (*p == 'd')
			need += domain_len;
		else if (*p == '%')
			need++;
		else
			return NULL; /* unknown, or a lone '%' at the end */
	}
	char *out = malloc(need);
	if (out == NULL)
		return NULL;
	size_t n = 0;
	for (const char *p = template_path; *p != '\0'; p++) {
		if (*p != '%') {
			out[n++] = *p;
			continue;
		}
		p++;
		if (*p == 'u') {
			for (size_t i = 0; i < local_len; i++)
				out[n++] = ascii_lower(local[i]);
		} else if (*p == 'd') {
			for (size_t i = 0; i < domain_len; i++)
				out[n++] = ascii_lower(domain[i]);
		} else {
			out[n++] = '%';
		}
	}
	out[n] = '\0';
	return out;
}

size_t policy_mailbox_root_length(const char *template_path)
{
	if (template_path == NULL)
		return 0;
	const char *end = strchr(template_path, '%');
	if (end == NULL)
		end = template_path + strlen(template_path);
	const char *slash = NULL;
	for (const char *p = template_path; p < end; p++)
		if (*p == '/')
			slash = p;
	if (slash == NULL)
		return 0;
	return slash == template_path ? 1 : (size_t)(slash - template_path);
}

/* A domain is checked like a local part: "%d" is a path component too. */
char *policy_mailbox_path(const struct config *cfg, const char *address,
			  size_t *root_len)
{
	const char *at = address != NULL ? strrchr(address, '@') : NULL;
	if (at == NULL ||
	    !policy_local_part_safe(address, (size_t)(at - address)) ||
	    !policy_local_part_safe(at + 1, strlen(at + 1))) {
		errno = EINVAL;
		return NULL;
	}
	errno = 0;
	char *path = policy_expand_mailbox_path(cfg->mailbox_path, address,
						(size_t)(at - address), at + 1);
	if (path == NULL && errno == 0)
		errno = EINVAL; /* a template that config.c let through */
	if (path != NULL && root_len != NULL)
		*root_len = policy_mailbox_root_length(cfg->mailbox_path);
	return path;
}

static bool is_local_domain(const struct policy *p, const char *domain)
{
	return config_is_local_domain(p->cfg, domain);
}

static bool is_bare_postmaster(const char *address)
{
	return strcasecmp(address, "postmaster") == 0;
}

/* Canonical copy of "local@domain" split at its last '@' (a quoted local
 * part may hold another); *local_out tells whether the domain is local. */
static char *canonical(const struct policy *p, const char *address, size_t len,
		       bool *local_out)
{
	char *out = text_dup(address, len);
	if (out == NULL)
		return NULL;
	char *at = memrchr(out, '@', len);
	bool local = false;
	if (at != NULL) {
		ascii_lower_in_place(at + 1, strlen(at + 1));
		local = is_local_domain(p, at + 1);
		if (local)
			ascii_lower_in_place(out, (size_t)(at - out));
	}
	if (local_out != NULL)
		*local_out = local;
	return out;
}

static char *postmaster_address(const struct policy *p)
{
	const struct string_list *domains = &p->cfg->local_domains;
	if (domains->count == 0)
		return NULL;
	size_t len = strlen(domains->items[0]);
	char *out = malloc(sizeof "postmaster@" + len);
	if (out == NULL)
		return NULL;
	memcpy(out, "postmaster@", sizeof "postmaster@" - 1);
	memcpy(out + sizeof "postmaster@" - 1, domains->items[0], len + 1);
	ascii_lower_in_place(out, strlen(out));
	return out;
}

char *policy_canonical_address(const struct policy *policy, const char *address)
{
	if (address == NULL)
		return NULL;
	if (strchr(address, '@') == NULL) {
		char *pm;
		if (is_bare_postmaster(address) &&
		    (pm = postmaster_address(policy)) != NULL)
			return pm;
		return strdup(address);
	}
	return canonical(policy, address, strlen(address), NULL);
}

int policy_forward_sender(const struct policy *policy, const char *sender,
			  time_t now, char **out)
{
	*out = NULL;
	const char *at = sender != NULL ? strrchr(sender, '@') : NULL;
	if (policy->srs == NULL || at == NULL || at == sender ||
	    is_local_domain(policy, at + 1))
		return 0;
	*out = srs_forward(policy->srs, sender, now);
	return *out != NULL || errno != ENOMEM ? 0 : -1;
}

bool policy_sender_allowed(const struct policy *policy, const char *login,
			   const char *sender)
{
	return policy->senders == NULL ||
	       senders_allowed(policy->senders, login, sender);
}

bool policy_may_relay(const struct policy *policy,
		      const struct policy_client *client)
{
	if (client == NULL)
		return false;
	if (client->authenticated)
		return true;
	if (client->addr == NULL)
		return false;
	const struct config *cfg = policy->cfg;
	if (config_cidr_match(cfg->relay_networks, cfg->relay_network_count,
			      client->addr))
		return true;
	/* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they
	 * match the IPv4 networks. */
	if (client->addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)client->addr;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			struct sockaddr_in sin = {.sin_family = AF_INET,
						  .sin_port = sin6->sin6_port};
			memcpy(&sin.sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
			return config_cidr_match(cfg->relay_networks,
						 cfg->relay_network_count,
						 (const struct sockaddr *)&sin);
		}
	}
	return false;
}

void policy_expansion_clear(struct policy_expansion *exp)
{
	if (exp == NULL)
		return;
	for (size_t i = 0; i < exp->count; i++)
		free(exp->targets[i].address);
	free(exp->targets);
	exp->targets = NULL;
	exp->count = 0;
}

struct expansion {
	const struct policy *p;
	struct policy_expansion *out;
	size_t cap;
	size_t expansions;
	const char *path[ALIAS_DEPTH_MAX + 1]; /* addresses being expanded */
};

enum add_result { ADD_OK, ADD_FULL, ADD_NOMEM };

/* Takes ownership of `address`. */
static enum add_result add_target(struct expansion *e, char *address,
				  bool local)
{
	struct policy_expansion *out = e->out;
	if (out->count == ALIAS_TARGETS_MAX) {
		free(address);
		return ADD_FULL;
	}
	if (out->count == e->cap) {
		size_t ncap = e->cap == 0 ? 4 : e->cap * 2;
		struct policy_target *n =
		    reallocarray(out->targets, ncap, sizeof *n);
		if (n == NULL) {
			free(address);
			return ADD_NOMEM;
		}
		out->targets = n;
		e->cap = ncap;
	}
	out->targets[out->count].address = address;
	out->targets[out->count].local = local;
	out->targets[out->count].forwarded = false;
	out->count++;
	return ADD_OK;
}

static enum policy_verdict add_verdict(enum add_result r)
{
	/* Out of memory has no verdict of its own; refusing the recipient
	 * for now is the safe side (the session answers, the client
	 * retries). */
	return r == ADD_OK     ? POLICY_ACCEPT
	       : r == ADD_FULL ? POLICY_ALIAS_LOOP
			       : POLICY_UNKNOWN_USER;
}

static bool on_path(const struct expansion *e, size_t level,
		    const char *address)
{
	for (size_t i = 0; i <= level; i++)
		if (strcmp(e->path[i], address) == 0)
			return true;
	return false;
}

/* Expand a canonical local address at `level`; takes ownership of it. */
static enum policy_verdict expand(struct expansion *e, char *address,
				  size_t level)
{
	const struct policy *p = e->p;
	char *at = strrchr(address, '@');
	size_t local_len = (size_t)(at - address);
	const char *domain = at + 1;

	const struct alias *alias = find_alias(p, address, strlen(address));
	if (alias == NULL)
		alias = find_alias(p, address, local_len);
	if (alias == NULL) {
		bool exists =
		    p->users == NULL || auth_users_exists(p->users, address) ||
		    (local_len == 10 && memcmp(address, "postmaster", 10) == 0);
		if (!exists) {
			free(address);
			return POLICY_UNKNOWN_USER;
		}
		return add_verdict(add_target(e, address, true));
	}
	if (level + 1 > ALIAS_DEPTH_MAX ||
	    ++e->expansions > ALIAS_EXPANSIONS_MAX) {
		free(address);
		return POLICY_ALIAS_LOOP;
	}
	e->path[level] = address;
	enum policy_verdict verdict = POLICY_ACCEPT;
	for (size_t i = 0; i < alias->count && verdict == POLICY_ACCEPT; i++) {
		const char *t = alias->targets[i];
		size_t tlen = strlen(t);
		char *full;
		if (strchr(t, '@') == NULL) {
			/* A bare local part stays in the domain expanded. */
			size_t dlen = strlen(domain);
			full = malloc(tlen + 1 + dlen + 1);
			if (full == NULL) {
				verdict = POLICY_UNKNOWN_USER;
				break;
			}
			memcpy(full, t, tlen);
			full[tlen] = '@';
			memcpy(full + tlen + 1, domain, dlen + 1);
		} else {
			full = strdup(t);
			if (full == NULL) {
				verdict = POLICY_UNKNOWN_USER;
				break;
			}
		}
		bool local;
		char *target = canonical(p, full, strlen(full), &local);
		free(full);
		if (target == NULL) {
			verdict = POLICY_UNKNOWN_USER;
			break;
		}
		if (!local) {
			verdict = add_verdict(add_target(e, target, false));
			if (verdict == POLICY_ACCEPT)
				e->out->targets[e->out->count - 1].forwarded =
				    true;
			continue;
		}
		const char *tat = strrchr(target, '@');
		if (!policy_local_part_safe(target, (size_t)(tat - target))) {
			free(target);
			verdict = POLICY_BAD_MAILBOX;
			break;
		}
		/* sendmail's rule: "root: root, other" delivers to root's own
		 * mailbox instead of looping. */
		if (on_path(e, level, target)) {
			verdict = add_verdict(add_target(e, target, true));
			continue;
		}
		verdict = expand(e, target, level + 1);
	}
	free(address);
	return verdict;
}

struct ranked_target {
	struct policy_target target;
	size_t rank;
};

static int compare_ranked(const void *a, const void *b)
{
	const struct ranked_target *x = a, *y = b;
	int c = strcmp(x->target.address, y->target.address);
	if (c != 0)
		return c;
	return (x->rank > y->rank) - (x->rank < y->rank);
}

static int compare_rank(const void *a, const void *b)
{
	const struct ranked_target *x = a, *y = b;
	return (x->rank > y->rank) - (x->rank < y->rank);
}

/* Drop repeated addresses, keeping the first of each in its place. */
static int deduplicate(struct policy_expansion *out)
{
	if (out->count < 2)
		return 0;
	struct ranked_target *r = calloc(out->count, sizeof *r);
	if (r == NULL)
		return -1;
	for (size_t i = 0; i < out->count; i++) {
		r[i].target = out->targets[i];
		r[i].rank = i;
	}
	qsort(r, out->count, sizeof *r, compare_ranked);
	size_t kept = 0;
	for (size_t i = 0; i < out->count; i++) {
		if (kept > 0 && strcmp(r[kept - 1].target.address,
				       r[i].target.address) == 0) {
			free(r[i].target.address);
			continue;
		}
		r[kept++] = r[i];
	}
	qsort(r, kept, sizeof *r, compare_rank);
	for (size_t i = 0; i < kept; i++)
		out->targets[i] = r[i].target;
	out->count = kept;
	free(r);
	return 0;
}

enum policy_verdict policy_check_recipient(const struct policy *policy,
					   const struct policy_client *client,
					   const char *address,
					   struct policy_expansion *out)
{
	out->targets = NULL;
	out->count = 0;
	out->srs_error = NULL;
	if (address == NULL)
		return POLICY_BAD_MAILBOX;

	char *canon;
	bool local;
	char *reversed = NULL;
	if (policy->srs != NULL) {
		/* A bounce to an address we rewrote goes back to the one it
		 * stands for, whoever the client: like a remote alias. */
		enum srs_result r =
		    srs_reverse(policy->srs, address, time(NULL), &reversed);
		if (r == SRS_NO_MEMORY)
			return POLICY_UNKNOWN_USER;
		if (r != SRS_OK && r != SRS_NOT_SRS) {
			out->srs_error = srs_result_name(r);
			return POLICY_BAD_SRS;
		}
	}
	if (reversed != NULL) {
		canon = canonical(policy, reversed, strlen(reversed), &local);
		free(reversed);
		if (canon == NULL)
			return POLICY_UNKNOWN_USER;
		if (!local) {
			struct expansion e = {.p = policy, .out = out};
			return add_verdict(add_target(&e, canon, false));
		}
	} else if (strchr(address, '@') == NULL) {
		if (!is_bare_postmaster(address))
			return POLICY_BAD_MAILBOX;
		canon = postmaster_address(policy);
		if (canon == NULL)
			return POLICY_UNKNOWN_USER;
		local = true;
	} else {
		canon = canonical(policy, address, strlen(address), &local);
		if (canon == NULL)
			return POLICY_UNKNOWN_USER;
	}
	char *at = strrchr(canon, '@');
	if (at == canon || at[1] == '\0') {
		free(canon);
		return POLICY_BAD_MAILBOX;
	}

	struct expansion e = {.p = policy, .out = out};
	enum policy_verdict verdict;
	if (!local) {
		if (!policy_may_relay(policy, client)) {
			free(canon);
			return POLICY_RELAY_DENIED;
		}
		verdict = add_verdict(add_target(&e, canon, false));
	} else if (!policy_local_part_safe(canon, (size_t)(at - canon))) {
		free(canon);
		verdict = POLICY_BAD_MAILBOX;
	} else {
		verdict = expand(&e, canon, 0);
	}
	if (verdict == POLICY_ACCEPT && deduplicate(out) == -1)
		verdict = POLICY_UNKNOWN_USER;
	if (verdict != POLICY_ACCEPT)
		policy_expansion_clear(out);
	return verdict;
}
