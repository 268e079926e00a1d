/*
 * The message of an inbound transaction: DATA and BDAT streamed through
 * the smtp_proto decoder into the spool's incoming (with our Received
 * field, the Message-ID and TLS-Required scanners and the DKIM reader),
 * the checks at its end, the milters' verdict and changes, the envelope,
 * the DKIM signature on the worker, and the commit whose flush the 250
 * waits for.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "facteur/ascii.h"
#include "facteur/dkim.h"
#include "facteur/dkim_intake.h"
#include "facteur/mailtime.h"
#include "facteur/milter.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/smtp_session_internal.h"
#include "facteur/spool.h"

/* ---- DATA, BDAT ---- */

static const char *protocol_name(const struct smtp_session *s)
{
	static const char *const names[2][2][2][2] = {
	    /* [utf8][esmtp][tls][auth] */
	    {{{"SMTP", "SMTPA"}, {"SMTPS", "SMTPSA"}},
	     {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}}},
	    {{{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}},
	     {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}},
	};
	if (s->local_peer)
		return "local";
	return names[s->tx.mail.smtputf8][s->esmtp][s->tls]
		    [s->auth_user != NULL];
}

/* Mail from a relay_networks or authenticated client is signed when
 * dkim_sign has keys. */
static bool dkim_signs(const struct smtp_session *s)
{
	struct policy_client client = smtp_session_policy_client(s);
	return s->srv->dkim != NULL && s->srv->dkim->count > 0 &&
	       policy_may_relay(s->srv->policy, &client);
}

/* Open the spool file and write our Received header (RFC 5321 §4.4). */
static bool message_begin(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	tx->incoming = spool_incoming_new(s->srv->spool);
	tx->outbuf = malloc(MESSAGE_BUF_SIZE);
	tx->tls_required.field = "tls-required";
	if (tx->incoming == NULL || tx->outbuf == NULL) {
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("reason", strerror(errno)));
		smtp_session_reply(s, "451 %s Local error in processing",
				   status_code_str(STATUS_LOCAL_ERROR));
		free(tx->outbuf);
		tx->outbuf = NULL;
		if (tx->incoming != NULL)
			spool_incoming_abort(s->srv->spool, tx->incoming);
		tx->incoming = NULL;
		return false;
	}
	char date[MAILTIME_BUF];
	mailtime_format(time(NULL), date, sizeof date);
	char for_clause[SMTP_PATH_MAX + 16] = "";
	/* One RCPT: its first recipient holds the address as given. */
	if (tx->accepted_rcpt_commands == 1 && tx->rcpt_count > 0)
		snprintf(for_clause, sizeof for_clause, "\r\n\tfor <%s>",
			 recipient_original(tx->rcpts[0]));
	/* The header waits in outbuf for the body's first octets. A local
	 * submission's has no "from" (the caller's HELO means nothing) and
	 * no "for" (it would show a Bcc: recipient of -t). */
	int n = s->local_peer
		    ? snprintf(tx->outbuf, MESSAGE_BUF_SIZE,
			       "Received: by %s (facteur) with local id %s;"
			       "\r\n\t%s\r\n",
			       cfg_of(s)->hostname, tx->incoming->id, date)
		    : snprintf(tx->outbuf, MESSAGE_BUF_SIZE,
			       "Received: from %s ([%s])\r\n"
			       "\tby %s (facteur) with %s id %s%s;\r\n"
			       "\t%s\r\n",
			       s->helo, s->client, cfg_of(s)->hostname,
			       protocol_name(s), tx->incoming->id, for_clause,
			       date);
	if (n < 0 || (size_t)n >= MESSAGE_BUF_SIZE) {
		smtp_session_reply(s, "451 %s Local error in processing",
				   status_code_str(STATUS_LOCAL_ERROR));
		spool_incoming_abort(s->srv->spool, tx->incoming);
		tx->incoming = NULL;
		return false;
	}
	tx->outlen = (size_t)n;
	/* NULL when out of memory: unsigned, said on the accepted line */
	tx->dkim_wanted = dkim_signs(s);
	if (tx->dkim_wanted)
		tx->dkim = dkim_intake_new();
	return true;
}

/* Hand what outbuf holds to the spool file. Past the size limit it is
 * dropped: the message will be refused. */
static void message_spill(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	if (tx->outlen > 0 && !tx->too_big) {
		spool_incoming_write(tx->incoming, tx->outbuf, tx->outlen);
		if (tx->dkim != NULL)
			dkim_intake_feed(tx->dkim, tx->outbuf, tx->outlen);
	}
	tx->outlen = 0;
}

/* Add a few octets (the BDAT tail, at most 8) to outbuf. */
static void message_store(struct smtp_session *s, const char *buf, size_t len)
{
	struct transaction *tx = &s->tx;
	if (MESSAGE_BUF_SIZE - tx->outlen < len)
		message_spill(s);
	memcpy(tx->outbuf + tx->outlen, buf, len);
	tx->outlen += len;
}

/* Run octets (at most DATA_CHUNK) through the decoder into outbuf, and
 * on to the spool file when it is full; past the size limit they are
 * still read (to find the end) but no longer stored. */
static size_t message_feed(struct smtp_session *s, const char *in, size_t len)
{
	struct transaction *tx = &s->tx;
	if (MESSAGE_BUF_SIZE - tx->outlen < SMTP_DATA_OUT_MAX(len))
		message_spill(s);
	size_t outlen = 0;
	size_t used = smtp_data_feed(&tx->data, in, len,
				     tx->outbuf + tx->outlen, &outlen);
	message_id_feed(&tx->message_id, tx->outbuf + tx->outlen, outlen);
	message_id_feed(&tx->tls_required, tx->outbuf + tx->outlen, outlen);
	if (!tx->too_big && tx->data.size > cfg_of(s)->max_message_size)
		tx->too_big = true;
	tx->outlen = tx->too_big ? 0 : tx->outlen + outlen;
	return used;
}

/* RFC 8689 §5: "TLS-Required: No" asks that the recipient domains' TLS
 * policies be ignored (REQUIRETLS, when given, wins). */
static bool tls_not_required(struct message_id_scan *field)
{
	const char *value = message_id_value(field);
	return value != NULL && ascii_ieq(value, strlen(value), "no");
}

static struct spool_envelope *envelope_build(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	struct spool_envelope *env = calloc(1, sizeof *env);
	if (env == NULL)
		return NULL;
	memcpy(env->id, tx->incoming->id, sizeof env->id);
	env->arrival = time(NULL);
	env->sender = strdup(tx->mail.from.address);
	env->client_addr = strdup(s->client);
	env->helo = strdup(s->helo);
	env->protocol = strdup(protocol_name(s));
	env->auth_user = s->auth_user ? strdup(s->auth_user) : NULL;
	env->size = tx->data.size;
	env->body = tx->mail.body;
	env->smtputf8 = tx->mail.smtputf8;
	env->ret = tx->mail.ret;
	if (tx->mail.requiretls)
		env->flags |= SPOOL_FLAG_REQUIRETLS;
	else if (tls_not_required(&tx->tls_required))
		env->flags |= SPOOL_FLAG_TLS_NOT_REQUIRED;
	env->envid = tx->mail.envid[0] ? strdup(tx->mail.envid) : NULL;
	env->rcpts = calloc(tx->rcpt_count, sizeof *env->rcpts);
	bool ok = env->sender && env->client_addr && env->helo &&
		  env->protocol && env->rcpts &&
		  (s->auth_user == NULL || env->auth_user) &&
		  (tx->mail.envid[0] == '\0' || env->envid);
	for (size_t i = 0; ok && i < tx->rcpt_count; i++) {
		struct spool_rcpt *r = &env->rcpts[i];
		const struct recipient *from = tx->rcpts[i];
		const char *orcpt = recipient_orcpt(from);
		env->rcpt_count++;
		r->address = strdup(recipient_address(from));
		r->original = strdup(recipient_original(from));
		r->orcpt = orcpt ? strdup(orcpt) : NULL;
		r->notify = from->notify;
		r->local = from->local;
		r->state = RCPT_PENDING;
		r->updated = env->arrival;
		ok = r->address && r->original && (!orcpt || r->orcpt);
		if (ok && from->forwarded)
			ok = policy_forward_sender(s->srv->policy, env->sender,
						   env->arrival,
						   &r->sender) == 0;
	}
	if (!ok) {
		spool_envelope_free(env);
		return NULL;
	}
	return env;
}

static void on_committed(int error, void *arg)
{
	struct smtp_session *s = arg;
	struct spool_envelope *env = s->committing;
	s->committing = NULL;
	if (error != 0) {
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("queue_id", env->id),
			  LOG_S("reason", strerror(error)));
		spool_envelope_free(env);
		if (!s->gone)
			smtp_session_reply(
			    s, "451 %s Local error: message not queued",
			    status_code_str(STATUS_LOCAL_ERROR));
	} else {
		if (!s->gone)
			smtp_session_reply(s, "250 %s Ok: queued as %s",
					   status_code_str(STATUS_OK), env->id);
		metrics.received_bytes_total += env->size;
		struct scheduler_arrival arrival = {
		    .session = s->id,
		    .message_id = s->committing_message_id[0] != '\0'
				      ? s->committing_message_id
				      : NULL,
		    .local_uid = s->local_peer ? (long)s->local.uid : -1,
		    .local_user = s->local_peer ? s->local.user : NULL,
		    .milter = s->milter_name,
		    .milter_action = s->milter_action};
		scheduler_enqueue_arrival(s->srv->scheduler, env, &arrival);
	}
	s->milter_name = s->milter_action = NULL;
	if (s->gone) {
		smtp_session_free(s);
		return;
	}
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	if (s->shutdown_pending) {
		smtp_session_reply(s, "421 %s %s Service shutting down",
				   status_code_str(STATUS_SHUTDOWN),
				   cfg_of(s)->hostname);
		smtp_session_close(s);
		smtp_session_flush(s);
		return;
	}
	smtp_session_input_release(s);
	smtp_session_process(s);
}

/* The signatures are before the message (or it goes unsigned): commit. */
static void on_signed(char *outcome, void *arg)
{
	struct smtp_session *s = arg;
	struct spool_incoming *inc = s->signing;
	s->signing = NULL;
	s->committing->dkim = outcome;
	spool_incoming_commit(s->srv->spool, inc, s->committing, on_committed,
			      s);
}

static void message_commit(struct smtp_session *s, const char *refusal);
static void on_milter_message(const struct milter_outcome *o, void *arg);
static bool milter_envelope_apply(struct smtp_session *s,
				  struct spool_envelope *env);
static bool envelope_add_rcpts(struct spool_envelope *env,
			       const struct milter_added_rcpt *added,
			       const struct policy_expansion *exp);

/* The last octet of the message is in: refuse it, or (once the milters
 * agree) make it durable and answer once it is. */
static void message_end(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	const char *refusal = NULL;
	message_spill(s);
	if (tx->too_big) {
		smtp_session_reply(s, "552 %s Message size exceeds fixed limit",
				   status_code_str(STATUS_TOO_BIG));
		refusal = "message too big";
		count_rejection(METRICS_REJECT_SIZE);
	} else if (tx->data.received_count > SMTP_RECEIVED_MAX) {
		smtp_session_reply(
		    s, "554 %s Too many Received headers: mail loop",
		    status_code_str(STATUS_LOOP));
		refusal = "mail loop";
		count_rejection(METRICS_REJECT_LOOP);
	} else if (tx->incoming->error != 0) {
		smtp_session_reply(s, "451 %s Local error writing the message",
				   status_code_str(STATUS_LOCAL_ERROR));
		log_event(LOG_LEVEL_ERROR, "spool_error", LOG_SESSION(s),
			  LOG_S("reason", strerror(tx->incoming->error)));
		refusal = "spool write error";
	}
	if (refusal == NULL && s->milter != NULL) {
		struct milter_client mc;
		smtp_session_milter_wait(s, &mc);
		milter_message(s->milter, &mc, s->srv->spool, tx->incoming,
			       on_milter_message, s);
		return;
	}
	message_commit(s, refusal);
}

/* Queue the message (or refuse it for `refusal`, when not NULL). */
static void message_commit(struct smtp_session *s, const char *refusal)
{
	struct transaction *tx = &s->tx;
	struct spool_envelope *env = refusal ? NULL : envelope_build(s);
	if (refusal == NULL && env == NULL) {
		smtp_session_reply(s, "451 %s Out of memory",
				   status_code_str(STATUS_LOCAL_ERROR));
		refusal = "out of memory";
	}
	if (refusal == NULL && s->milter != NULL &&
	    !milter_envelope_apply(s, env)) {
		spool_envelope_free(env);
		smtp_session_transaction_reset(s);
		smtp_session_enter_state(s, SMTP_STATE_COMMAND);
		return;
	}
	if (refusal != NULL) {
		smtp_session_log_rejected(s, refusal, tx->mail.from.address);
		smtp_session_transaction_reset(s);
		smtp_session_enter_state(s, SMTP_STATE_COMMAND);
		return;
	}
	const char *message_id = message_id_value(&tx->message_id);
	snprintf(s->committing_message_id, sizeof s->committing_message_id,
		 "%s", message_id != NULL ? message_id : "");
	struct spool_incoming *inc = tx->incoming;
	struct dkim_intake *dkim = tx->dkim;
	bool wanted = tx->dkim_wanted;
	tx->incoming = NULL; /* the spool owns it now */
	tx->dkim = NULL;
	smtp_session_transaction_reset(s);
	s->committing = env;
	smtp_session_enter_state(s, SMTP_STATE_COMMITTING);
	smtp_session_input_hold(s);
	if (dkim != NULL) {
		s->signing = inc;
		if (dkim_intake_finish(dkim, s->srv->dkim, s->srv->worker,
				       s->srv->spool, inc, on_signed, s) == 0)
			return;
		s->signing = NULL;
	}
	/* Trusted mail that could not be read for a signature (memory). */
	if (wanted)
		env->dkim = strdup("error:out-of-memory");
	else if (s->srv->dkim != NULL && s->srv->dkim->count > 0)
		env->dkim = strdup("unsigned:untrusted");
	spool_incoming_commit(s->srv->spool, inc, env, on_committed, s);
}

/* The milters' changes to the envelope: the sender, recipients deleted
 * and added (as if from a trusted client: aliases apply), a quarantine
 * (the message is held). False when no recipient is left: the message
 * is dropped, and the client told it was accepted. */
static bool milter_envelope_apply(struct smtp_session *s,
				  struct spool_envelope *env)
{
	const struct milter_envelope_changes *ch =
	    milter_envelope_changes(s->milter);
	char *sender = ch->sender ? strdup(ch->sender) : NULL;
	if (sender != NULL) {
		free(env->sender);
		env->sender = sender;
	}
	for (size_t d = 0; d < ch->deleted_count; d++)
		for (size_t i = 0; i < env->rcpt_count; i++) {
			struct spool_rcpt *r = &env->rcpts[i];
			if (strcasecmp(r->address, ch->deleted[d]) != 0 &&
			    strcasecmp(r->original, ch->deleted[d]) != 0)
				continue;
			free(r->address);
			free(r->original);
			free(r->orcpt);
			free(r->sender);
			free(r->reason);
			memmove(r, r + 1,
				(env->rcpt_count - i - 1) * sizeof *r);
			env->rcpt_count--;
			i--;
		}
	struct policy_client trusted = {
	    .addr = (const struct sockaddr *)&s->addr, .authenticated = true};
	for (size_t a = 0; a < ch->added_count; a++) {
		struct policy_expansion exp = {0};
		if (policy_check_recipient(s->srv->policy, &trusted,
					   ch->added[a].address,
					   &exp) != POLICY_ACCEPT ||
		    !envelope_add_rcpts(env, &ch->added[a], &exp))
			log_event(LOG_LEVEL_WARN, "milter_error",
				  LOG_SESSION(s),
				  LOG_S("reason", "recipient not added"),
				  LOG_S("address", ch->added[a].address));
		policy_expansion_clear(&exp);
	}
	if (ch->quarantine != NULL) {
		env->flags |= SPOOL_FLAG_HELD;
		log_event(LOG_LEVEL_INFO, "quarantined", LOG_SESSION(s),
			  LOG_S("queue_id", env->id),
			  LOG_S("reason", ch->quarantine));
	}
	if (env->rcpt_count > 0)
		return true;
	smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_OK));
	log_event(LOG_LEVEL_INFO, "discarded", LOG_SESSION(s),
		  LOG_S("queue_id", env->id),
		  LOG_S("reason", "no recipient left"));
	return false;
}

/* A milter's added recipient, expanded, at the end of the envelope;
 * its NOTIFY and ORCPT go to each address it stands for. */
static bool envelope_add_rcpts(struct spool_envelope *env,
			       const struct milter_added_rcpt *added,
			       const struct policy_expansion *exp)
{
	struct spool_rcpt *grown =
	    realloc(env->rcpts, (env->rcpt_count + exp->count) * sizeof *grown);
	if (grown == NULL)
		return false;
	env->rcpts = grown;
	for (size_t i = 0; i < exp->count; i++) {
		struct spool_rcpt *r = &env->rcpts[env->rcpt_count];
		*r = (struct spool_rcpt){
		    .address = strdup(exp->targets[i].address),
		    .original = strdup(added->address),
		    .orcpt = added->orcpt ? strdup(added->orcpt) : NULL,
		    .notify = added->notify,
		    .local = exp->targets[i].local,
		    .state = RCPT_PENDING,
		    .updated = env->arrival};
		if (r->address == NULL || r->original == NULL ||
		    (added->orcpt != NULL && r->orcpt == NULL)) {
			free(r->address);
			free(r->original);
			free(r->orcpt);
			return false;
		}
		env->rcpt_count++;
	}
	return true;
}

/* Octets of the changed message into the new incoming (and the DKIM
 * reader, which starts over). */
static void milter_write(void *arg, const void *buf, size_t len)
{
	struct smtp_session *s = arg;
	spool_incoming_write(s->tx.incoming, buf, len);
	if (s->tx.dkim != NULL)
		dkim_intake_feed(s->tx.dkim, buf, len);
}

/* The milters changed the content: it is written anew, before the
 * commit, so that the message is durable once, as changed. */
static bool milter_content_rewrite(struct smtp_session *s)
{
	struct transaction *tx = &s->tx;
	struct spool_incoming *old = tx->incoming;
	tx->incoming = spool_incoming_new(s->srv->spool);
	if (tx->incoming == NULL) {
		tx->incoming = old;
		return false;
	}
	if (tx->dkim != NULL) {
		dkim_intake_free(tx->dkim);
		tx->dkim = dkim_intake_new();
	}
	int rc = milter_rewrite(s->milter, s->srv->spool, old, tx->incoming->id,
				milter_write, s);
	spool_incoming_abort(s->srv->spool, old);
	tx->data.size = tx->incoming->written;
	return rc == 0 && tx->incoming->error == 0;
}

static void on_milter_message(const struct milter_outcome *o, void *arg)
{
	struct smtp_session *s = arg;
	if (smtp_session_milter_resumed(s))
		return;
	s->milter_name = o->milter;
	s->milter_action = o->action;
	switch (o->verdict) {
	case MILTER_CONTINUE:
		if (milter_content_changed(s->milter) &&
		    !milter_content_rewrite(s)) {
			smtp_session_reply(
			    s, "451 %s Local error writing the message",
			    status_code_str(STATUS_LOCAL_ERROR));
			message_commit(s, "spool write error");
			break;
		}
		message_commit(s, NULL);
		break;
	case MILTER_DISCARD:
		smtp_session_reply(s, "250 %s Ok", status_code_str(STATUS_OK));
		log_event(LOG_LEVEL_INFO, "discarded", LOG_SESSION(s),
			  LOG_S("milter", o->milter ? o->milter : "-"),
			  LOG_S("action", "discard"));
		smtp_session_transaction_reset(s);
		break;
	case MILTER_REJECT:
	case MILTER_TEMPFAIL:
	default:
		smtp_session_milter_refused(s, o, s->tx.mail.from.address);
		smtp_session_transaction_reset(s);
		break;
	}
	smtp_session_process(s);
}

void smtp_message_cmd_data(struct smtp_session *s,
			   const struct smtp_command *cmd)
{
	if (cmd->arglen != 0) {
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS,
					 "Syntax: DATA");
		return;
	}
	if (!s->tx.active) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Need MAIL command");
		return;
	}
	if (s->tx.rcpt_count == 0) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Need RCPT command");
		return;
	}
	if (s->tx.used_bdat) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "DATA after BDAT");
		return;
	}
	if (!message_begin(s))
		return;
	smtp_data_init(&s->tx.data, SMTP_DATA_DOTTED);
	smtp_session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
	smtp_session_enter_state(s, SMTP_STATE_DATA);
}

static void bdat_discard(struct smtp_session *s, int code,
			 enum status_code status, const char *text)
{
	s->bdat_discard = true;
	s->bdat_reply_code = code;
	s->bdat_reply_status = status;
	s->bdat_reply_text = text;
}

void smtp_message_cmd_bdat(struct smtp_session *s,
			   const struct smtp_command *cmd)
{
	uint64_t size;
	bool last;
	if (smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last) !=
	    SMTP_PARSE_OK) {
		/* Without a size no chunk can be skipped: what follows is
		 * read as commands, and junk there meets the error limit. */
		smtp_session_reply_error(s, 501, STATUS_BAD_ARGS,
					 "Syntax: BDAT size [LAST]");
		return;
	}
	s->bdat_remaining = size;
	s->bdat_last = last;
	s->bdat_discard = false;
	smtp_session_enter_state(s, SMTP_STATE_BDAT);
	/* The chunk is read in every case (RFC 3030 §2); an error is
	 * given once it has been. */
	if (!s->tx.active)
		bdat_discard(s, 503, STATUS_BAD_COMMAND, "Need MAIL command");
	else if (s->tx.rcpt_count == 0)
		bdat_discard(s, 503, STATUS_BAD_COMMAND, "Need RCPT command");
	else if (!s->tx.used_bdat) {
		if (!message_begin(s)) {
			/* the 451 is out already; skip the chunk quietly */
			s->bdat_discard = true;
			s->bdat_reply_code = 0;
			smtp_session_transaction_reset(s);
			return;
		}
		s->tx.used_bdat = true;
		smtp_data_init(&s->tx.data, SMTP_DATA_RAW);
	}
}

static void bdat_chunk_done(struct smtp_session *s)
{
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	if (s->bdat_discard) {
		s->bdat_discard = false;
		if (s->bdat_reply_code != 0)
			smtp_session_reply_error(s, s->bdat_reply_code,
						 s->bdat_reply_status,
						 s->bdat_reply_text);
		return;
	}
	if (s->tx.too_big) {
		smtp_session_reply(s, "552 %s Message size exceeds fixed limit",
				   status_code_str(STATUS_TOO_BIG));
		smtp_session_log_rejected(s, "message too big",
					  s->tx.mail.from.address);
		count_rejection(METRICS_REJECT_SIZE);
		smtp_session_transaction_reset(s);
		return;
	}
	if (!s->bdat_last) {
		smtp_session_reply(s, "250 %s %llu octets received",
				   status_code_str(STATUS_OK),
				   (unsigned long long)s->tx.data.size);
		return;
	}
	char tail[8];
	size_t n = smtp_data_finish(&s->tx.data, tail);
	if (n > 0 && !s->tx.too_big) {
		if (s->tx.data.size > cfg_of(s)->max_message_size)
			s->tx.too_big = true;
		else
			message_store(s, tail, n);
	}
	message_end(s);
}

/* Feed buffered DATA octets; true when more input may be processed. */
bool smtp_message_read_data(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec;
		if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
			break;
		size_t take =
		    vec.iov_len < DATA_CHUNK ? vec.iov_len : DATA_CHUNK;
		size_t used = message_feed(s, vec.iov_base, take);
		evbuffer_drain(in, used);
		if (s->tx.data.done) {
			smtp_session_enter_state(s, SMTP_STATE_COMMAND);
			message_end(s);
			return true;
		}
	}
	return false;
}

bool smtp_message_read_bdat(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (s->bdat_remaining > 0 && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec;
		if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
			break;
		size_t take =
		    vec.iov_len < DATA_CHUNK ? vec.iov_len : DATA_CHUNK;
		if (take > s->bdat_remaining)
			take = (size_t)s->bdat_remaining;
		if (!s->bdat_discard)
			message_feed(s, vec.iov_base, take);
		evbuffer_drain(in, take);
		s->bdat_remaining -= take;
	}
	if (s->bdat_remaining > 0)
		return false;
	bdat_chunk_done(s);
	return true;
}
