/*
 * Who may send what where: is a recipient domain local, does the
 * local user exist, what do aliases expand it to, may this client relay,
 * which sender does a forwarded copy carry (SRS), which senders may a
 * login use. Pure decisions over the configuration, the users, the
 * aliases, the SRS secrets and the senders table; nothing here parses
 * SMTP or touches a socket.
 */
#ifndef FACTEUR_POLICY_H
#define FACTEUR_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <time.h>

#include "facteur/config.h"

struct auth_users;
struct policy;

/* Build the policy of a configuration: reads aliases_file, senders_file
 * and srs_secret_file (errors as
 * "FILE:LINE: ..."). `users` may be NULL (no users_file: every local part
 * of a local domain exists); the policy does not own it. */
struct policy *policy_new(const struct config *cfg,
                          const struct auth_users *users,
                          struct config_errors *errors);
/* From the text of an aliases file, for tests and fuzzing (senders_file
 * and srs_secret_file are read as by policy_new). */
struct policy *policy_new_with_aliases(const struct config *cfg,
                                       const struct auth_users *users,
                                       const char *aliases_text,
                                       const char *name,
                                       struct config_errors *errors);
void policy_free(struct policy *policy);

enum policy_verdict {
	POLICY_ACCEPT,
	POLICY_UNKNOWN_USER,  /* 550 5.1.1 */
	POLICY_RELAY_DENIED,  /* 554 5.7.1 */
	POLICY_BAD_MAILBOX,   /* 550 5.1.1: a local part unfit for a path */
	POLICY_ALIAS_LOOP,    /* 554 5.4.6: aliases expand without end */
	POLICY_BAD_SRS,       /* 550 5.1.1: an SRS address of srs_domain that
	                         is forged, broken or too old */
};

/* One final recipient after alias expansion. */
struct policy_target {
	char *address; /* canonical: domain lower case; local part lower
	                  case when the domain is local */
	bool local;
	/* reached through an alias: relayed with the sender rewritten
	 * (policy_forward_sender) */
	bool forwarded;
};

struct policy_expansion {
	struct policy_target *targets;
	size_t count;
	/* On POLICY_BAD_SRS, why (srs_result_name): for the log. */
	const char *srs_error;
};

struct policy_client {
	const struct sockaddr *addr; /* the client's address */
	bool authenticated;
};

/*
 * Decide on one RCPT address (as parsed: "local@domain", or "postmaster"
 * with no domain, which means postmaster at the first local domain).
 * On POLICY_ACCEPT, `out` holds the final recipients, without duplicates;
 * the caller frees it with policy_expansion_clear().
 * Remote recipients (after expansion too) need a client that may relay;
 * an alias in a local domain may expand to remote targets for anyone.
 */
enum policy_verdict policy_check_recipient(const struct policy *policy,
                                           const struct policy_client *client,
                                           const char *address,
                                           struct policy_expansion *out);

void policy_expansion_clear(struct policy_expansion *exp);

/*
 * The envelope sender for a forwarded target (policy_target.forwarded):
 * 0 with *out the SRS address (malloc'd) when srs_domain is set and the
 * sender is neither null nor in a local domain, 0 with *out NULL when
 * the sender stays; -1 when out of memory.
 */
int policy_forward_sender(const struct policy *policy, const char *sender,
                          time_t now, char **out);

/* May an authenticated client with this login use `sender` as MAIL FROM?
 * Always without a senders_file; see senders_allowed. */
bool policy_sender_allowed(const struct policy *policy, const char *login,
                           const char *sender);

/* May this client send to non-local domains? */
bool policy_may_relay(const struct policy *policy,
                      const struct policy_client *client);

/* The canonical form of an address (see policy_target); malloc'd. */
char *policy_canonical_address(const struct policy *policy,
                               const char *address);

/* A local part that can name a mailbox on disk: not empty, no '/', no
 * NUL, not "." or "..", no leading '.'. */
bool policy_local_part_safe(const char *local, size_t len);

/*
 * The mailbox of a local address ("local@domain"), from mailbox_path:
 * the one place where an address becomes a path. Every caller (local
 * delivery, DSNs to a local sender, POP3) goes through it. NULL with
 * errno EINVAL when the local part or the domain could name something
 * outside the mail root (see policy_local_part_safe), or when the
 * template is bad; ENOMEM when out of memory. malloc'd. When `root_len`
 * is not NULL it gets the length of the mail root that starts the path
 * (policy_mailbox_root_length): the part that may hold symbolic links.
 */
char *policy_mailbox_path(const struct config *cfg, const char *address,
                          size_t *root_len);

/* Expand a mailbox_path template: %u the local part, %d the domain (both
 * lower-cased), %% a percent sign. malloc'd, or NULL on an unknown %x.
 * It does not judge the address: callers go through policy_mailbox_path,
 * which refuses one that could name a path outside the mail root. */
char *policy_expand_mailbox_path(const char *template_path, const char *local,
                                 size_t local_len, const char *domain);

/* The length of the fixed directory that starts a mailbox_path template
 * (the part before the '/' that precedes its first '%'; the directory
 * of a template without one): the mail root, which an operator may make
 * a symbolic link. 0 when the template starts with a '%'. */
size_t policy_mailbox_root_length(const char *template_path);

#endif
