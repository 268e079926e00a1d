/*
 * The keys of this host and its local mail: hostname, the account to
 * run as, spool_dir, local_domains, srs_domain, and the mailboxes'
 * path, owner and mode.
 */
#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "facteur/ascii.h"
#include "facteur/config_internal.h"
#include "facteur/hostname.h"
#include "facteur/mailowner.h"

bool config_is_local_domain(const struct config *cfg, const char *domain)
{
	size_t len;

	if (cfg == NULL || domain == NULL)
		return false;
	len = strlen(domain);
	if (len > 1 && domain[len - 1] == '.')
		len--;
	for (size_t i = 0; i < cfg->local_domains.count; i++) {
		const char *d = cfg->local_domains.items[i];

		if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
			return true;
	}
	return false;
}

void config_set_hostname(struct loader *ld, const char *value)
{
	char q[CONFIG_QUOTE_BUF];

	if (!hostname_valid(value, strlen(value))) {
		config_bad_value(ld, "invalid host name %s",
				 config_quote(value, q));
		return;
	}
	config_replace_string(&ld->cfg->hostname, value);
}

static void set_required_string(struct loader *ld, char **slot,
				const char *value)
{
	if (*value == '\0') {
		config_bad_value(ld, "must not be empty");
		return;
	}
	config_replace_string(slot, value);
}

void config_set_spool_dir(struct loader *ld, const char *value)
{
	set_required_string(ld, &ld->cfg->spool_dir, value);
}

void config_set_local_domain(struct loader *ld, const char *value)
{
	struct string_list *list = &ld->cfg->local_domains;
	size_t len = strlen(value);
	char q[CONFIG_QUOTE_BUF];
	char *lower;

	if (len > 1 && value[len - 1] == '.')
		len--;
	if (!hostname_valid(value, len)) {
		config_bad_value(ld, "invalid domain %s",
				 config_quote(value, q));
		return;
	}
	lower = config_xstrndup(value, len);
	ascii_lower_in_place(lower, len);
	for (size_t i = 0; i < list->count; i++) {
		if (strcmp(list->items[i], lower) == 0) {
			free(lower); /* listed twice: once is enough */
			return;
		}
	}
	list->items = config_xreallocarray(list->items, list->count + 1,
					   sizeof(*list->items));
	list->items[list->count++] = lower;
}

/* The domain of SRS addresses: a host name, kept lower case. */
void config_set_srs_domain(struct loader *ld, const char *value)
{
	size_t len = strlen(value);
	char q[CONFIG_QUOTE_BUF];

	free(ld->cfg->srs_domain);
	ld->cfg->srs_domain = NULL;
	if (len == 0)
		return;
	if (!hostname_valid(value, len)) {
		config_bad_value(ld, "invalid domain %s",
				 config_quote(value, q));
		return;
	}
	ld->cfg->srs_domain = config_xstrndup(value, len);
	ascii_lower_in_place(ld->cfg->srs_domain, len);
}

void config_clear_local_domains(struct loader *ld)
{
	struct string_list *list = &ld->cfg->local_domains;

	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

void config_set_mailbox_path(struct loader *ld, const char *value)
{
	char q[CONFIG_QUOTE_BUF];
	char e[CONFIG_QUOTE_BUF];

	for (const char *p = value; *p != '\0'; p++) {
		if (*p != '%')
			continue;
		if (p[1] != 'u' && p[1] != 'd' && p[1] != '%') {
			config_bad_value(
			    ld,
			    "invalid escape %s in %s (use %%u, %%d or %%%%)",
			    config_quote_n(p, p[1] == '\0' ? 1 : 2, e),
			    config_quote(value, q));
			return;
		}
		p++;
	}
	set_required_string(ld, &ld->cfg->mailbox_path, value);
}

/* mailbox_owner = USER[:GROUP], looked up now so that a typo stops the
 * start rather than the first delivery. */
void config_set_mailbox_owner(struct loader *ld, const char *value)
{
	char err[160], q[CONFIG_QUOTE_BUF];
	uid_t uid;
	gid_t gid;

	if (value[0] == '\0') {
		config_replace_string(&ld->cfg->mailbox_owner, NULL);
	} else if (mailowner_lookup(value, &uid, &gid, err, sizeof(err)) < 0) {
		config_bad_value(ld, "%s in %s", err, config_quote(value, q));
	} else {
		config_replace_string(&ld->cfg->mailbox_owner, value);
		ld->cfg->mailbox_uid = uid;
		ld->cfg->mailbox_gid = gid;
	}
}

void config_set_mailbox_mode(struct loader *ld, const char *value)
{
	char q[CONFIG_QUOTE_BUF];
	const char *why;
	mode_t mode;

	if (mailowner_parse_mode(value, &mode, &why) < 0)
		config_bad_value(ld, "%s: %s", config_quote(value, q), why);
	else
		ld->cfg->mailbox_mode = mode;
}

void config_print_mailbox_mode(const struct config *cfg, FILE *out)
{
	fprintf(out, "%04o", (unsigned)cfg->mailbox_mode);
}

/* cfg->user is the account to switch to, or NULL for "stay who we are":
 * an empty value, "root" (or any uid 0 account), or the account we
 * already run as. */
void config_set_user(struct loader *ld, const char *value)
{
	struct passwd *pw;
	char q[CONFIG_QUOTE_BUF];

	if (*value == '\0') {
		config_replace_string(&ld->cfg->user, NULL);
		return;
	}
	errno = 0;
	pw = getpwnam(value);
	if (pw == NULL) {
		/* getpwnam(3): "not found" may come with any of several
		 * errno values; these are real failures to look up */
		if (errno == EIO || errno == EMFILE || errno == ENFILE ||
		    errno == ENOMEM || errno == EINTR)
			config_bad_value(ld, "cannot look up %s: %s",
					 config_quote(value, q),
					 strerror(errno));
		else
			config_bad_value(ld, "no such user %s",
					 config_quote(value, q));
		return;
	}
	if (pw->pw_uid == 0 || pw->pw_uid == geteuid())
		config_replace_string(&ld->cfg->user, NULL);
	else
		config_replace_string(&ld->cfg->user, value);
}

void config_print_local_domains(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < cfg->local_domains.count; i++)
		fprintf(out, "%s%s", i ? ", " : "",
			cfg->local_domains.items[i]);
}
