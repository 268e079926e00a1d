/*
 * Who may send what on the inbound session: the blocklists' verdict on
 * the client, MAIL and RCPT with their checks (the login's senders, the
 * message rate, relay control and the recipient policy, the envelope
 * budgets) and their milter steps, and the recipient records that an
 * accepted RCPT adds to the transaction.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "facteur/ascii.h"
#include "facteur/auth_limit.h"
#include "facteur/dnsbl.h"
#include "facteur/milter.h"
#include "facteur/server.h"
#include "facteur/smtp_session_internal.h"

/* How long a first command waits for the blocklists before it passes. */
#define DNSBL_WAIT_SECONDS 5

/* Octets of records in a block; a record is ~1 KiB at most. */
#define RECIPIENT_BLOCK 4096

/* ---- the recipient records ---- */

/* What one final recipient of this RCPT holds: its record and its
 * place in the list. */
static size_t recipient_cost(const struct smtp_rcpt *rcpt,
			     const struct policy_target *target)
{
	size_t size = sizeof(struct recipient) + sizeof(struct recipient *) +
		      strlen(target->address) + 1;
	if (strcmp(rcpt->to.address, target->address) != 0)
		size += strlen(rcpt->to.address) + 1;
	if (rcpt->orcpt[0] != '\0')
		size += strlen(rcpt->orcpt) + 1;
	return size;
}

/* Account for octets taken by (or given back from) the transaction. */
static void envelope_charge(struct smtp_session *s, size_t size)
{
	s->tx.envelope_bytes += size;
	s->srv->smtp->envelope_memory += size;
}

/* Room for one record in the newest block, or a new block. */
static struct recipient *recipient_alloc(struct transaction *tx, size_t size)
{
	size_t align = _Alignof(struct recipient);
	size = (size + align - 1) / align * align;
	struct recipient_block *b = tx->blocks;
	if (b == NULL || b->size - b->used < size) {
		size_t room = size > RECIPIENT_BLOCK ? size : RECIPIENT_BLOCK;
		b = malloc(sizeof *b + room);
		if (b == NULL)
			return NULL;
		b->used = 0;
		b->size = room;
		b->next = tx->blocks;
		tx->blocks = b;
	}
	struct recipient *r = (struct recipient *)(b->data + b->used);
	b->used += size;
	return r;
}

static bool recipient_known(const struct transaction *tx, const char *address)
{
	for (size_t i = 0; i < tx->rcpt_count; i++)
		if (strcmp(recipient_address(tx->rcpts[i]), address) == 0)
			return true;
	return false;
}

static int recipient_add(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			 const struct policy_target *target)
{
	struct transaction *tx = &s->tx;
	if (recipient_known(tx, target->address))
		return 0;
	if (tx->rcpt_count == tx->rcpt_cap) {
		size_t cap = tx->rcpt_cap ? 2 * tx->rcpt_cap : 4;
		struct recipient **grown =
		    realloc(tx->rcpts, cap * sizeof *grown);
		if (grown == NULL)
			return -1;
		tx->rcpts = grown;
		tx->rcpt_cap = cap;
	}
	/* Addresses are at most SMTP_PATH_MAX and ORCPT SMTP_ORCPT_MAX
	 * octets (the parser's bounds), so the offsets fit 16 bits. */
	size_t address_len = strlen(target->address) + 1;
	bool same = strcmp(rcpt->to.address, target->address) == 0;
	size_t original_len = same ? 0 : strlen(rcpt->to.address) + 1;
	size_t orcpt_len = rcpt->orcpt[0] ? strlen(rcpt->orcpt) + 1 : 0;
	struct recipient *r = recipient_alloc(tx, sizeof *r + address_len +
						      original_len + orcpt_len);
	if (r == NULL)
		return -1;
	r->notify = rcpt->notify;
	r->local = target->local;
	r->forwarded = target->forwarded;
	memcpy(r->text, target->address, address_len);
	r->original = same ? 0 : (uint16_t)address_len;
	memcpy(r->text + address_len, rcpt->to.address, original_len);
	r->orcpt = orcpt_len ? (uint16_t)(address_len + original_len) : 0;
	memcpy(r->text + address_len + original_len, rcpt->orcpt, orcpt_len);
	tx->rcpts[tx->rcpt_count++] = r;
	envelope_charge(s, recipient_cost(rcpt, target));
	return 0;
}

/* ---- MAIL, RCPT ---- */

/* What the refusals of a MAIL or RCPT argument say of it. */
struct path_command {
	const char *verb; /* in "Bad <verb> parameter" */
	enum status_code address_status;
	const char *address_error;
	const char *syntax;
};

static const struct path_command mail_command = {
    "MAIL", STATUS_BAD_SENDER_SYNTAX, "Bad sender address syntax",
    "Syntax: MAIL FROM:<address>"};
static const struct path_command rcpt_command = {"RCPT", STATUS_BAD_RCPT_SYNTAX,
						 "Bad recipient address syntax",
						 "Syntax: RCPT TO:<address>"};

/* Whether the argument parsed; if not, the refusal is sent. An unknown
 * parameter is a 555 that does not count as a protocol error. */
static bool path_command_parsed(struct smtp_session *s,
				const struct path_command *pc,
				enum smtp_parse_result result)
{
	char text[64];

	switch (result) {
	case SMTP_PARSE_OK:
		return true;
	case SMTP_PARSE_BAD_ADDRESS:
		smtp_session_reply_error(s, 501, pc->address_status,
					 pc->address_error);
		return false;
	case SMTP_PARSE_UNKNOWN_PARAM:
		smtp_session_reply(s, "555 %s Unsupported %s parameter",
				   status_code_str(STATUS_BAD_ARGS), pc->verb);
		return false;
	case SMTP_PARSE_BAD_PARAM:
		snprintf(text, sizeof text, "Bad %s parameter", pc->verb);
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS, text);
		return false;
	case SMTP_PARSE_SYNTAX:
	default:
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS, pc->syntax);
		return false;
	}
}

/* max_messages_per_ip: one more MAIL from this client, across
 * sessions, or a 450 when it is past its rate. */
static bool message_rate_allows(struct smtp_session *s, const char *sender)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	if (cfg->max_messages == 0 || smtp_session_relay_client(s))
		return true;
	smtp_session_client_key(s, key);
	if (auth_limit_rate_take(s->srv->message_rate, key, time(NULL),
				 cfg->max_messages, cfg->max_messages_window))
		return true;
	smtp_session_reply(
	    s,
	    "450 %s Error: too many messages from your address, try "
	    "again later",
	    status_code_str(STATUS_NOT_AUTHORIZED_TRANSIENT));
	smtp_session_log_rejected(s, "rate", sender);
	count_rejection(METRICS_REJECT_RATE);
	return false;
}

/* Is this the sender facteur-sendmail gives the caller by default, its
 * account's name at the host name or at a local domain? Anything else
 * from an unprivileged caller is a chosen sender (-f), logged. */
static bool sender_is_local_user(const struct smtp_session *s,
				 const char *address)
{
	const char *at = strrchr(address, '@');
	size_t user_len = strlen(s->local.user);
	if (at == NULL || (size_t)(at - address) != user_len ||
	    memcmp(address, s->local.user, user_len) != 0)
		return false;
	char *domain = ascii_lower_dup(at + 1, strlen(at + 1));
	bool local = domain != NULL &&
		     (ascii_ieq(domain, strlen(domain), cfg_of(s)->hostname) ||
		      config_is_local_domain(cfg_of(s), domain));
	free(domain);
	return local;
}

/* The ESMTP parameters of a MAIL or RCPT argument that parsed, as the
 * client wrote them (what follows the path), for the milters. */
static void path_params(const struct smtp_command *cmd, char *out, size_t size)
{
	const char *colon = memchr(cmd->arg, ':', cmd->arglen);
	size_t i = colon != NULL ? (size_t)(colon - cmd->arg) + 1 : cmd->arglen;
	while (i < cmd->arglen && cmd->arg[i] == ' ')
		i++;
	struct smtp_path path;
	size_t used = 0;
	if (smtp_parse_path(cmd->arg + i, cmd->arglen - i, true, true, &path,
			    &used) != SMTP_PARSE_OK)
		used = cmd->arglen - i;
	i += used;
	while (i < cmd->arglen && cmd->arg[i] == ' ')
		i++;
	snprintf(out, size, "%.*s", (int)(cmd->arglen - i), cmd->arg + i);
}

static void mail_accepted(struct smtp_session *s)
{
	s->tx.active = true;
	envelope_charge(s, strlen(s->tx.mail.from.address) + 1);
	smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_SENDER_OK));
}

static void on_milter_mail(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (smtp_session_milter_resumed(s))
		return;
	if (o->verdict == MILTER_CONTINUE) {
		mail_accepted(s);
	} else {
		smtp_session_milter_refused(s, o, s->tx.mail.from.address);
		smtp_session_transaction_reset(s);
	}
	smtp_session_process(s);
}

void smtp_admission_cmd_mail(struct smtp_session *s,
			     const struct smtp_command *cmd)
{
	const struct config *cfg = cfg_of(s);
	if (s->helo == NULL) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Send HELO/EHLO first");
		return;
	}
	if (s->tx.active) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Nested MAIL command");
		return;
	}
	if (s->mode == LISTEN_SUBMISSION && s->auth_user == NULL) {
		count_rejection(METRICS_REJECT_AUTH_REQUIRED);
		smtp_session_reply(s, "530 %s Authentication required",
				   status_code_str(STATUS_SECURITY_PERMANENT));
		return;
	}
	struct smtp_mail mail;
	if (!path_command_parsed(s, &mail_command,
				 smtp_parse_mail(cmd->arg, cmd->arglen, &mail)))
		return;
	if (mail.requiretls && !smtp_session_tls_active(s)) {
		smtp_session_reply(
		    s, "530 %s REQUIRETLS needs an encrypted session",
		    status_code_str(STATUS_ENCRYPTION_NEEDED));
		smtp_session_log_rejected(s, "REQUIRETLS without TLS",
					  mail.from.address);
		return;
	}
	if (mail.size_given && mail.size > cfg->max_message_size) {
		smtp_session_reply(s, "552 %s Message size exceeds fixed limit",
				   status_code_str(STATUS_TOO_BIG));
		smtp_session_log_rejected(s, "message too big",
					  mail.from.address);
		count_rejection(METRICS_REJECT_SIZE);
		return;
	}
	if (s->auth_user != NULL &&
	    !policy_sender_allowed(s->srv->policy, s->auth_user,
				   mail.from.address)) {
		smtp_session_reply(
		    s, "553 %s <%s>: Sender address not owned by user %s",
		    status_code_str(STATUS_NOT_AUTHORIZED), mail.from.address,
		    s->auth_user);
		log_event(LOG_LEVEL_INFO, "rejected",
			  LOG_S("client", s->client),
			  LOG_S("reason", "sender not owned by login"),
			  LOG_S("address", mail.from.address),
			  LOG_S("user", s->auth_user));
		return;
	}
	if (!message_rate_allows(s, mail.from.address))
		return;
	if (s->local_peer && !s->local.privileged &&
	    !sender_is_local_user(s, mail.from.address))
		log_event(LOG_LEVEL_INFO, "sender_override", LOG_SESSION(s),
			  LOG_I("uid", s->local.uid),
			  LOG_S("user", s->local.user),
			  LOG_S("from", mail.from.address));
	s->tx.mail = mail;
	if (s->milter != NULL) {
		struct milter_client mc;
		path_params(cmd, s->milter_params, sizeof s->milter_params);
		smtp_session_milter_wait(s, &mc);
		milter_mail(s->milter, &mc, s->tx.mail.from.address,
			    s->milter_params, on_milter_mail, s);
		return;
	}
	mail_accepted(s);
}

/* Would this RCPT's recipients fit the session's envelope budget and
 * the one of all sessions? If not, a 452 (RFC 5321 §4.5.3.1.10: the
 * client sends the message to those accepted so far, and the others
 * later); a refusal, not a protocol error. */
static bool envelope_has_room(struct smtp_session *s,
			      const struct smtp_rcpt *rcpt,
			      const struct policy_expansion *exp)
{
	const struct config *cfg = cfg_of(s);
	size_t need = 0;
	for (size_t i = 0; i < exp->count; i++)
		need += recipient_cost(rcpt, &exp->targets[i]);
	if (s->tx.envelope_bytes + need > cfg->max_envelope_size) {
		smtp_session_reply(s, "452 %s Too much envelope data",
				   status_code_str(STATUS_TOO_MANY_RCPTS));
		smtp_session_log_rejected(s, "max_envelope_size",
					  rcpt->to.address);
		count_rejection(METRICS_REJECT_ENVELOPE_LIMIT);
		return false;
	}
	uint64_t memory = s->srv->smtp->envelope_memory;
	if (memory + need > cfg->max_envelope_memory) {
		smtp_session_reply(s, "452 %s Insufficient system storage",
				   status_code_str(STATUS_SYSTEM_STORAGE));
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "max_envelope_memory"),
			  LOG_S("address", rcpt->to.address),
			  LOG_I("envelope_memory", memory));
		count_rejection(METRICS_REJECT_ENVELOPE_LIMIT);
		return false;
	}
	return true;
}

static void rcpt_accepted(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			  struct policy_expansion *exp);

static void on_milter_rcpt(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (s->gone)
		policy_expansion_clear(&s->milter_exp);
	if (smtp_session_milter_resumed(s))
		return;
	if (o->verdict == MILTER_CONTINUE) {
		rcpt_accepted(s, &s->milter_rcpt, &s->milter_exp);
	} else {
		policy_expansion_clear(&s->milter_exp);
		smtp_session_milter_refused(s, o, s->milter_rcpt.to.address);
	}
	smtp_session_process(s);
}

void smtp_admission_cmd_rcpt(struct smtp_session *s,
			     const struct smtp_command *cmd)
{
	const struct config *cfg = cfg_of(s);
	if (!s->tx.active) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Need MAIL before RCPT");
		return;
	}
	struct smtp_rcpt rcpt;
	if (!path_command_parsed(s, &rcpt_command,
				 smtp_parse_rcpt(cmd->arg, cmd->arglen, &rcpt)))
		return;
	if (s->tx.accepted_rcpt_commands >= cfg->max_recipients) {
		count_rejection(METRICS_REJECT_TOO_MANY_RECIPIENTS);
		smtp_session_reply(s, "452 %s Too many recipients",
				   status_code_str(STATUS_TOO_MANY_RCPTS));
		return;
	}
	struct policy_client client = smtp_session_policy_client(s);
	struct policy_expansion exp = {0};
	enum policy_verdict verdict = policy_check_recipient(
	    s->srv->policy, &client, rcpt.to.address, &exp);
	switch (verdict) {
	case POLICY_ACCEPT:
		break;
	case POLICY_UNKNOWN_USER:
	case POLICY_BAD_MAILBOX:
		smtp_session_reply(s,
				   "550 %s <%s>: Recipient address rejected: "
				   "User unknown",
				   status_code_str(STATUS_BAD_MAILBOX),
				   rcpt.to.address);
		smtp_session_log_rejected(s, "unknown user", rcpt.to.address);
		count_rejection(METRICS_REJECT_UNKNOWN_USER);
		return;
	case POLICY_BAD_SRS:
		smtp_session_reply(s,
				   "550 %s <%s>: Recipient address rejected: "
				   "Invalid SRS address",
				   status_code_str(STATUS_BAD_MAILBOX),
				   rcpt.to.address);
		log_event(LOG_LEVEL_INFO, "rejected",
			  LOG_S("client", s->client),
			  LOG_S("reason", "bad SRS address"),
			  LOG_S("address", rcpt.to.address),
			  LOG_S("srs", exp.srs_error));
		return;
	case POLICY_RELAY_DENIED:
		smtp_session_reply(s, "554 %s <%s>: Relay access denied",
				   status_code_str(STATUS_NOT_AUTHORIZED),
				   rcpt.to.address);
		smtp_session_log_rejected(s, "relay access denied",
					  rcpt.to.address);
		count_rejection(METRICS_REJECT_RELAY_DENIED);
		return;
	case POLICY_ALIAS_LOOP:
	default:
		smtp_session_reply(s, "554 %s <%s>: Alias expansion loops",
				   status_code_str(STATUS_LOOP),
				   rcpt.to.address);
		smtp_session_log_rejected(s, "alias loop", rcpt.to.address);
		count_rejection(METRICS_REJECT_LOOP);
		return;
	}
	if (!envelope_has_room(s, &rcpt, &exp)) {
		policy_expansion_clear(&exp);
		return;
	}
	if (s->milter != NULL) {
		struct milter_client mc;
		s->milter_rcpt = rcpt;
		s->milter_exp = exp;
		path_params(cmd, s->milter_params, sizeof s->milter_params);
		smtp_session_milter_wait(s, &mc);
		milter_rcpt(s->milter, &mc, s->milter_rcpt.to.address,
			    s->milter_params, on_milter_rcpt, s);
		return;
	}
	rcpt_accepted(s, &rcpt, &exp);
}

/* The recipients of an accepted RCPT join the envelope. */
static void rcpt_accepted(struct smtp_session *s, const struct smtp_rcpt *rcpt,
			  struct policy_expansion *exp)
{
	int failed = 0;
	for (size_t i = 0; i < exp->count && !failed; i++)
		failed = recipient_add(s, rcpt, &exp->targets[i]);
	policy_expansion_clear(exp);
	if (failed) {
		smtp_session_reply(s, "451 %s Out of memory",
				   status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	s->tx.accepted_rcpt_commands++;
	smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_RCPT_OK));
}

/* ---- the blocklists ---- */

/* A client listed by a dnsbl zone may still greet, start TLS and log
 * in (an authenticated client is exempt); anything else is refused
 * until it has logged in. */
bool smtp_admission_dnsbl_refuses(struct smtp_session *s, enum smtp_verb verb)
{
	if (s->dnsbl_zone == NULL || s->auth_user != NULL)
		return false;
	switch (verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_STARTTLS:
	case SMTP_VERB_AUTH:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_NOOP:
	case SMTP_VERB_RSET:
		return false;
	default:
		break;
	}
	smtp_session_reply(
	    s, "554 %s Service unavailable; client [%s] blocked using %s",
	    status_code_str(STATUS_NOT_AUTHORIZED), s->client, s->dnsbl_zone);
	log_event(LOG_LEVEL_INFO, "rejected", LOG_SESSION(s),
		  LOG_S("reason", "dnsbl"), LOG_S("zone", s->dnsbl_zone));
	count_rejection(METRICS_REJECT_DNSBL);
	return true;
}

static void dnsbl_done(struct smtp_session *s)
{
	dnsbl_check_free(s->dnsbl);
	s->dnsbl = NULL;
	if (s->dnsbl_timer != NULL) {
		event_free(s->dnsbl_timer);
		s->dnsbl_timer = NULL;
		smtp_session_process(s); /* the command that waited */
	}
}

static void on_dnsbl(const char *zone, void *arg)
{
	struct smtp_session *s = arg;
	if (zone != NULL) {
		s->dnsbl_zone = strdup(zone);
		if (s->dnsbl_zone == NULL)
			log_event(LOG_LEVEL_ERROR, "dnsbl_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "out of memory"),
				  LOG_S("zone", zone));
	}
	dnsbl_done(s);
}

/* Start the blocklist look-ups as the session starts. */
void smtp_admission_dnsbl_start(struct smtp_session *s)
{
	struct server *srv = s->srv;
	const struct config *cfg = srv->cfg;
	/* Exempt networks are not looked up; without a resolver nobody is
	 * listed (dns_error was logged at start). */
	if (cfg->dnsbl_count > 0 && srv->dns != NULL &&
	    !smtp_session_relay_client(s)) {
		s->dnsbl = dnsbl_check_start(srv->dns, cfg,
					     (const struct sockaddr *)&s->addr,
					     on_dnsbl, s);
		if (s->dnsbl == NULL) /* the client is not looked up */
			log_event(LOG_LEVEL_ERROR, "dnsbl_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "cannot start the look-ups"));
	}
}

/* The blocklists did not answer in time: the client passes. */
static void on_dnsbl_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;
	(void)fd;
	(void)what;
	log_event(LOG_LEVEL_WARN, "dnsbl_timeout", LOG_SESSION(s),
		  LOG_I("seconds", DNSBL_WAIT_SECONDS));
	dnsbl_done(s);
}

/* The first command waits for the blocklists' verdict, at most
 * DNSBL_WAIT_SECONDS. False when it cannot wait (it then passes). */
bool smtp_admission_dnsbl_wait(struct smtp_session *s)
{
	if (s->dnsbl_timer != NULL)
		return true;
	struct timeval wait = {DNSBL_WAIT_SECONDS, 0};
	s->dnsbl_timer = evtimer_new(s->srv->base, on_dnsbl_timeout, s);
	if (s->dnsbl_timer == NULL || evtimer_add(s->dnsbl_timer, &wait) < 0) {
		log_event(LOG_LEVEL_ERROR, "dnsbl_error", LOG_SESSION(s),
			  LOG_S("reason", "cannot arm the timer"));
		if (s->dnsbl_timer != NULL)
			event_free(s->dnsbl_timer);
		s->dnsbl_timer = NULL;
		dnsbl_check_free(s->dnsbl);
		s->dnsbl = NULL;
		return false;
	}
	return true;
}
