/*
 * The milter client (see milter.h). Each session holds one connection
 * per configured milter; a step (MAIL, RCPT, the message) asks them in
 * order, each through the packets of its phases, and ends at the first
 * refusal or after the last one. A phase's packet is skipped when the
 * milter negotiated not to get it, and not waited for when it
 * negotiated not to answer it. The message's header section is read
 * from the incoming into memory (at most HEADERS_MAX), its body streamed
 * from there chunk by chunk; a milter after another sees its changes.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/milter.h"
#include "facteur/milter_proto.h"
#include "facteur/spool.h"

/* The header section held for the milters, at most; what follows a
 * longer one is sent as body. */
#define HEADERS_MAX (256 * 1024)
#define REPLY_TEXT_MAX 1024
#define MILTER_REFUSED "550 5.7.1 Command rejected"
#define MILTER_TEMPFAILED "451 4.7.1 Service unavailable - try again later"
#define MILTER_LOCAL_ERROR "451 4.3.0 Local error in processing"

enum conn_state {
	CONN_CONNECTING,
	CONN_NEGOTIATING,
	CONN_READY,
	CONN_OFF,    /* accepted the session: not asked again */
	CONN_FAILED, /* cut off: its default= applies */
};

/* The packets of a step, in the order they are sent. */
enum phase {
	PHASE_CONNECT,
	PHASE_HELO,
	PHASE_MAIL,
	PHASE_RCPT,
	PHASE_DATA,
	PHASE_HEADER,
	PHASE_EOH,
	PHASE_BODY,
	PHASE_EOB,
	PHASE_DONE,
};

struct milter_conn {
	struct milter_session *ms;
	const struct config_milter *cfg;
	int slot; /* metrics */
	struct bufferevent *bev;
	struct event *timer;
	enum conn_state state;
	uint32_t actions, protocol;
	bool connect_told;
	char *helo_told;
	bool in_transaction;	/* told MAIL, not yet the end or an abort */
	bool skip_message;	/* accepted the message: not asked again */
	enum phase phase, last; /* the next packet to send, the step's last */
	bool waiting;		/* for the reply to `awaiting` */
	enum phase awaiting;
	size_t header_next;
	uint64_t body_next;
	bool body_skipped;
	bool replaced_body; /* its REPLBODY chunks started a new body */
};

struct header {
	char *name;
	char *value; /* after the colon, folded with CRLF, no final CRLF */
};

struct milter_session {
	struct event_base *base;
	const struct config *cfg;
	struct milter_conn *conns;
	size_t count, current;
	struct milter_client client;
	const char *sender, *rcpt; /* of the step running */
	const char *params;	   /* their ESMTP parameters */
	bool busy;
	bool advancing; /* in advance(): a failure is seen by its loop */
	milter_cb cb;
	void *cb_arg;
	struct event *done_event;
	struct milter_outcome outcome;
	char reply[REPLY_TEXT_MAX];
	/* a refusal at connect or HELO: every MAIL gets it */
	bool refused;
	enum milter_verdict refusal;
	char refusal_reply[REPLY_TEXT_MAX];
	const char *refusal_milter;
	bool discard; /* the transaction is to be dropped */
	/* the last milter that answered the message, and how: for the
	 * accepted line */
	const char *last_milter, *last_action;
	/* the message of the step running, then its changes */
	struct spool *spool;
	struct spool_incoming *inc;
	struct header *headers;
	size_t header_count, header_cap;
	uint64_t body_offset;
	bool separator;	  /* an empty line ends the header section */
	bool headers_cut; /* longer than HEADERS_MAX: the rest went as body */
	char *body;	  /* a replaced body */
	size_t body_len, body_cap;
	bool body_replaced, content_changed;
	uint8_t *chunk;
	struct milter_envelope_changes changes;
};

static void advance(struct milter_session *ms);
static void advance_milters(struct milter_session *ms);

static void finish(struct milter_session *ms, enum milter_verdict verdict,
		   const char *reply, const struct milter_conn *c,
		   const char *action)
{
	snprintf(ms->reply, sizeof ms->reply, "%s", reply ? reply : "");
	ms->outcome.verdict = verdict;
	ms->outcome.reply = ms->reply;
	ms->outcome.milter = c != NULL ? c->cfg->name : ms->last_milter;
	ms->outcome.action = c != NULL ? action : ms->last_action;
	if (c == NULL && ms->changes.quarantine != NULL)
		ms->outcome.action = "quarantine";
	ms->busy = false;
	event_active(ms->done_event, EV_TIMEOUT, 0);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
	struct milter_session *ms = arg;
	(void)fd;
	(void)what;
	ms->cb(&ms->outcome, ms->cb_arg);
}

static void conn_close(struct milter_conn *c)
{
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	c->bev = NULL;
	evtimer_del(c->timer);
	c->waiting = false;
}

/* The milter is cut off; the step it was in goes on by its default=. */
static void conn_fail(struct milter_conn *c, const char *reason)
{
	struct milter_session *ms = c->ms;
	log_event(LOG_LEVEL_WARN, "milter_error", LOG_S("milter", c->cfg->name),
		  LOG_S("reason", reason),
		  LOG_S("default", c->cfg->on_error == MILTER_DEFAULT_ACCEPT
				       ? "accept"
				   : c->cfg->on_error == MILTER_DEFAULT_REJECT
				       ? "reject"
				       : "tempfail"));
	metrics_milter_error(c->slot);
	conn_close(c);
	c->state = CONN_FAILED;
	if (ms->busy && !ms->advancing && &ms->conns[ms->current] == c)
		advance(ms);
}

/* Send one packet; NULL strings are sent as "". */
static void send_packet(struct milter_conn *c, struct milter_builder *b)
{
	size_t n = milter_end(b);
	if (n == 0 || bufferevent_write(c->bev, b->buf, n) < 0)
		log_event(LOG_LEVEL_ERROR, "milter_error",
			  LOG_S("milter", c->cfg->name),
			  LOG_S("reason", "cannot queue a packet"));
}

static size_t strings_size(const char *const *s, size_t n)
{
	size_t size = 16;
	for (size_t i = 0; i < n; i++)
		size += (s[i] != NULL ? strlen(s[i]) : 0) + 1;
	return size;
}

/* A packet of at most cap octets in a buffer of its own; false (and the
 * milter cut off) when memory is short. */
static bool packet_start(struct milter_conn *c, struct milter_builder *b,
			 size_t cap, char command)
{
	uint8_t *buf = malloc(cap);
	if (buf == NULL) {
		conn_fail(c, "out of memory");
		return false;
	}
	milter_begin(b, buf, cap, command);
	return true;
}

static void packet_send(struct milter_conn *c, struct milter_builder *b)
{
	send_packet(c, b);
	free(b->buf);
}

/* A command whose data is strings, each with its NUL. */
static void send_strings(struct milter_conn *c, char command,
			 const char *const *s, size_t n)
{
	struct milter_builder b;
	if (!packet_start(c, &b, strings_size(s, n), command))
		return;
	for (size_t i = 0; i < n; i++)
		milter_put_string(&b, s[i]);
	packet_send(c, &b);
}

/* The macros of a step: name and value pairs, those without a value
 * left out. */
static void send_macros(struct milter_conn *c, char command,
			const char *const *pairs, size_t n)
{
	const char *list[2 * 8];
	size_t used = 0;
	for (size_t i = 0; i + 1 < n && used + 2 <= 2 * 8; i += 2) {
		if (pairs[i + 1] == NULL)
			continue;
		list[used++] = pairs[i];
		list[used++] = pairs[i + 1];
	}
	struct milter_builder b;
	if (!packet_start(c, &b, strings_size(list, used) + 1,
			  MILTER_CMD_MACRO))
		return;
	milter_put_bytes(&b, &command, 1);
	for (size_t i = 0; i < used; i++)
		milter_put_string(&b, list[i]);
	packet_send(c, &b);
}

static void send_connect(struct milter_conn *c)
{
	const struct milter_client *cl = &c->ms->client;
	const char *macros[] = {"j",
				cl->hostname,
				"{daemon_name}",
				"facteur",
				"{client_addr}",
				cl->client,
				"{client_name}",
				"unknown"};
	send_macros(c, MILTER_CMD_CONNECT, macros, 8);
	uint8_t buf[128 + INET6_ADDRSTRLEN];
	struct milter_builder b;
	char family = 'U';
	uint16_t port = 0;
	if (cl->addr->sa_family == AF_INET) {
		family = '4';
		port = ntohs(((const struct sockaddr_in *)cl->addr)->sin_port);
	} else if (cl->addr->sa_family == AF_INET6) {
		family = '6';
		port =
		    ntohs(((const struct sockaddr_in6 *)cl->addr)->sin6_port);
	}
	milter_begin(&b, buf, sizeof buf, MILTER_CMD_CONNECT);
	milter_put_string(&b, "unknown");
	milter_put_bytes(&b, &family, 1);
	if (family != 'U')
		milter_put_u16(&b, port);
	milter_put_string(&b, cl->client);
	send_packet(c, &b);
}

/* MAIL or RCPT: the address in <>, then each ESMTP parameter. */
static void send_path(struct milter_conn *c, char command)
{
	const char *address =
	    command == MILTER_CMD_MAIL ? c->ms->sender : c->ms->rcpt;
	const char *params = c->ms->params ? c->ms->params : "";
	struct milter_builder b;
	if (!packet_start(c, &b, strlen(address) + strlen(params) + 16,
			  command))
		return;
	milter_put_bytes(&b, "<", 1);
	milter_put_bytes(&b, address, strlen(address));
	milter_put_string(&b, ">");
	milter_put_params(&b, params);
	packet_send(c, &b);
}

static void send_mail(struct milter_conn *c)
{
	const struct milter_client *cl = &c->ms->client;
	const char *macros[] = {"{mail_addr}",	 c->ms->sender,
				"{auth_authen}", cl->auth_user,
				"{tls_version}", cl->tls_version};
	send_macros(c, MILTER_CMD_MAIL, macros, 6);
	send_path(c, MILTER_CMD_MAIL);
}

static void send_rcpt(struct milter_conn *c)
{
	const char *macros[] = {"{rcpt_addr}", c->ms->rcpt};
	send_macros(c, MILTER_CMD_RCPT, macros, 2);
	send_path(c, MILTER_CMD_RCPT);
}

/* A header field as milters see it: the value without its leading
 * blanks, folded with LF (as Sendmail and Postfix send it). */
static void send_header(struct milter_conn *c, const struct header *h)
{
	const char *v = h->value + strspn(h->value, " \t");
	struct milter_builder b;
	if (!packet_start(c, &b, strlen(h->name) + strlen(v) + 16,
			  MILTER_CMD_HEADER))
		return;
	milter_put_string(&b, h->name);
	for (const char *p = v; *p != '\0'; p++)
		if (!(p[0] == '\r' && p[1] == '\n'))
			milter_put_bytes(&b, p, 1);
	milter_put_bytes(&b, "", 1);
	packet_send(c, &b);
}

static void send_empty(struct milter_conn *c, char command)
{
	uint8_t buf[8];
	struct milter_builder b;
	milter_begin(&b, buf, sizeof buf, command);
	send_packet(c, &b);
}

/* The next body chunk of what milters see now (a replaced body, or the
 * incoming's); its length, 0 at the end, -1 on a read error. */
static ssize_t body_chunk(struct milter_session *ms, uint64_t at, uint8_t *out)
{
	if (ms->body_replaced) {
		if (at >= ms->body_len)
			return 0;
		size_t n = ms->body_len - (size_t)at;
		if (n > MILTER_CHUNK_MAX)
			n = MILTER_CHUNK_MAX;
		memcpy(out, ms->body + at, n);
		return (ssize_t)n;
	}
	return spool_incoming_read(ms->spool, ms->inc, ms->body_offset + at,
				   out, MILTER_CHUNK_MAX);
}

static bool send_body(struct milter_conn *c)
{
	struct milter_session *ms = c->ms;
	ssize_t n = body_chunk(ms, c->body_next, ms->chunk + 5);
	if (n <= 0) {
		if (n < 0)
			conn_fail(c, "cannot read the message");
		return false;
	}
	struct milter_builder b;
	milter_begin(&b, ms->chunk, MILTER_CHUNK_MAX + 5, MILTER_CMD_BODY);
	b.len += (size_t)n; /* already in place */
	send_packet(c, &b);
	c->body_next += (uint64_t)n;
	return true;
}

/* Send the packet of one phase; whether it was sent (false: skipped). */
static bool send_phase(struct milter_conn *c, enum phase phase)
{
	struct milter_session *ms = c->ms;
	uint32_t p = c->protocol;
	switch (phase) {
	case PHASE_CONNECT:
		if (c->connect_told)
			return false;
		c->connect_told = true;
		if (p & MILTER_PROTO_NOCONNECT)
			return false;
		send_connect(c);
		return true;
	case PHASE_HELO:
		if (ms->client.helo == NULL ||
		    (c->helo_told != NULL &&
		     strcmp(c->helo_told, ms->client.helo) == 0))
			return false;
		free(c->helo_told);
		c->helo_told = strdup(ms->client.helo);
		if (p & MILTER_PROTO_NOHELO)
			return false;
		send_macros(
		    c, MILTER_CMD_HELO,
		    (const char *[]){"{tls_version}", ms->client.tls_version},
		    2);
		send_strings(c, MILTER_CMD_HELO, &ms->client.helo, 1);
		return true;
	case PHASE_MAIL:
		c->in_transaction = true;
		c->skip_message = false;
		if (p & MILTER_PROTO_NOMAIL)
			return false;
		send_mail(c);
		return true;
	case PHASE_RCPT:
		if (p & MILTER_PROTO_NORCPT)
			return false;
		send_rcpt(c);
		return true;
	case PHASE_DATA:
		c->header_next = 0;
		c->body_next = 0;
		c->body_skipped = false;
		c->replaced_body = false;
		if (p & MILTER_PROTO_NODATA)
			return false;
		send_macros(c, MILTER_CMD_DATA,
			    (const char *[]){"i", ms->client.queue_id}, 2);
		send_empty(c, MILTER_CMD_DATA);
		return true;
	case PHASE_HEADER:
		if ((p & MILTER_PROTO_NOHDRS) ||
		    c->header_next >= ms->header_count)
			return false;
		send_header(c, &ms->headers[c->header_next++]);
		return true;
	case PHASE_EOH:
		if (p & MILTER_PROTO_NOEOH)
			return false;
		send_empty(c, MILTER_CMD_EOH);
		return true;
	case PHASE_BODY:
		if ((p & MILTER_PROTO_NOBODY) || c->body_skipped)
			return false;
		return send_body(c);
	case PHASE_EOB:
		send_macros(c, MILTER_CMD_BODYEOB,
			    (const char *[]){"i", ms->client.queue_id}, 2);
		send_empty(c, MILTER_CMD_BODYEOB);
		c->in_transaction = false;
		return true;
	case PHASE_DONE:
	default:
		return false;
	}
}

static bool phase_answered(const struct milter_conn *c, enum phase phase)
{
	static const uint32_t no_reply[] = {
	    [PHASE_CONNECT] = MILTER_PROTO_NR_CONN,
	    [PHASE_HELO] = MILTER_PROTO_NR_HELO,
	    [PHASE_MAIL] = MILTER_PROTO_NR_MAIL,
	    [PHASE_RCPT] = MILTER_PROTO_NR_RCPT,
	    [PHASE_DATA] = MILTER_PROTO_NR_DATA,
	    [PHASE_HEADER] = MILTER_PROTO_NR_HDR,
	    [PHASE_EOH] = MILTER_PROTO_NR_EOH,
	    [PHASE_BODY] = MILTER_PROTO_NR_BODY,
	    [PHASE_EOB] = 0,
	};
	/* a version 2 milter answers everything */
	return (c->protocol & no_reply[phase]) == 0;
}

static void arm_timer(struct milter_conn *c)
{
	struct timeval tv = {(time_t)c->cfg->timeout, 0};
	if (evtimer_add(c->timer, &tv) < 0)
		log_event(LOG_LEVEL_ERROR, "milter_error",
			  LOG_S("milter", c->cfg->name),
			  LOG_S("reason", "cannot arm the timer"));
}

/* Send the step's packets up to one that wants a reply; true when one
 * is awaited, false when the milter is through the step. */
static bool conn_send(struct milter_conn *c)
{
	while (c->phase <= c->last && c->state == CONN_READY) {
		enum phase phase = c->phase;
		bool repeats = phase == PHASE_HEADER || phase == PHASE_BODY;
		bool sent = send_phase(c, phase);
		if (!sent || !repeats)
			c->phase++;
		if (sent && c->state == CONN_READY &&
		    phase_answered(c, phase)) {
			c->waiting = true;
			c->awaiting = phase;
			arm_timer(c);
			return true;
		}
	}
	return false;
}

static enum milter_verdict default_verdict(const struct milter_conn *c,
					   const char **reply)
{
	if (c->cfg->on_error == MILTER_DEFAULT_REJECT) {
		*reply = MILTER_REFUSED;
		return MILTER_REJECT;
	}
	*reply = MILTER_TEMPFAILED;
	return MILTER_TEMPFAIL;
}

/* Ask the milters in turn until one refuses or all are through. */
static void advance(struct milter_session *ms)
{
	ms->advancing = true;
	advance_milters(ms);
	ms->advancing = false;
}

static void advance_milters(struct milter_session *ms)
{
	while (ms->current < ms->count) {
		struct milter_conn *c = &ms->conns[ms->current];
		bool skip = c->state == CONN_OFF ||
			    (c->skip_message && c->phase >= PHASE_RCPT) ||
			    (c->state == CONN_FAILED &&
			     c->cfg->on_error == MILTER_DEFAULT_ACCEPT);
		if (skip) {
			ms->current++;
			continue;
		}
		if (c->state == CONN_FAILED) {
			const char *reply;
			enum milter_verdict v = default_verdict(c, &reply);
			finish(ms, v, reply, c, "default");
			return;
		}
		if (c->state != CONN_READY || c->waiting)
			return; /* negotiating, or a reply is due */
		if (conn_send(c))
			return;
		if (c->state != CONN_READY)
			continue; /* failed while sending */
		ms->current++;
	}
	finish(ms, MILTER_CONTINUE, NULL, NULL, NULL);
}

/* ---- the milter's replies ---- */

static bool header_name_valid(const char *name)
{
	if (*name == '\0')
		return false;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == ':')
			return false;
	return true;
}

/* A value from a milter as stored: a leading space, LF or CRLF folds
 * as CRLF, each continuation line starting with a blank. NULL when it
 * holds a bare CR or memory is short. */
static char *header_value_from_milter(const char *v)
{
	size_t len = strlen(v);
	char *out = malloc(2 * len + 2);
	if (out == NULL)
		return NULL;
	size_t n = 0;
	out[n++] = ' ';
	for (size_t i = 0; i < len; i++) {
		if (v[i] == '\r') {
			if (v[i + 1] != '\n') {
				free(out);
				return NULL;
			}
			continue;
		}
		if (v[i] == '\n') {
			out[n++] = '\r';
			out[n++] = '\n';
			if (v[i + 1] != ' ' && v[i + 1] != '\t')
				out[n++] = '\t';
			continue;
		}
		out[n++] = v[i];
	}
	out[n] = '\0';
	return out;
}

static int headers_insert(struct milter_session *ms, size_t at,
			  const char *name, char *value)
{
	if (ms->header_count == ms->header_cap) {
		size_t cap = ms->header_cap ? 2 * ms->header_cap : 16;
		struct header *grown =
		    realloc(ms->headers, cap * sizeof *ms->headers);
		if (grown == NULL)
			return -1;
		ms->headers = grown;
		ms->header_cap = cap;
	}
	char *copy = strdup(name);
	if (copy == NULL)
		return -1;
	if (at > ms->header_count)
		at = ms->header_count;
	memmove(&ms->headers[at + 1], &ms->headers[at],
		(ms->header_count - at) * sizeof *ms->headers);
	ms->headers[at] = (struct header){copy, value};
	ms->header_count++;
	return 0;
}

/* CHGHEADER: the index-th field of that name (from 1) changed, or
 * deleted when the value is empty; a new one added when there is none. */
static int header_change(struct milter_session *ms, uint32_t index,
			 const char *name, const char *value)
{
	uint32_t seen = 0;
	if (index == 0)
		index = 1;
	for (size_t i = 0; i < ms->header_count; i++) {
		struct header *h = &ms->headers[i];
		if (strcasecmp(h->name, name) != 0 || ++seen != index)
			continue;
		if (*value == '\0') {
			free(h->name);
			free(h->value);
			memmove(h, h + 1,
				(ms->header_count - i - 1) * sizeof *h);
			ms->header_count--;
			return 0;
		}
		char *v = header_value_from_milter(value);
		if (v == NULL)
			return -1;
		free(h->value);
		h->value = v;
		return 0;
	}
	if (*value == '\0')
		return 0;
	char *v = header_value_from_milter(value);
	if (v == NULL || headers_insert(ms, ms->header_count, name, v) < 0) {
		free(v);
		return -1;
	}
	return 0;
}

/* An address as a milter gives it, without its <> if it has them. */
static char *address_dup(const char *address)
{
	size_t len = strlen(address);
	if (len >= 2 && address[0] == '<' && address[len - 1] == '>') {
		address++;
		len -= 2;
	}
	return strndup(address, len);
}

static int list_add(char ***list, size_t *count, const char *address)
{
	char **grown = realloc(*list, (*count + 1) * sizeof **list);
	if (grown == NULL)
		return -1;
	*list = grown;
	grown[*count] = address_dup(address);
	if (grown[*count] == NULL)
		return -1;
	(*count)++;
	return 0;
}

/* A recipient added (ADDRCPT, or ADDRCPT_PAR with its parameters):
 * NOTIFY and ORCPT apply to it; another parameter is ignored, and a
 * malformed one refused and logged: the recipient is added without it. */
static int added_rcpt_add(struct milter_conn *c, const char *address,
			  const char *args)
{
	struct milter_envelope_changes *ch = &c->ms->changes;
	struct milter_rcpt_params params = {0};
	const char *param;
	size_t len, at = 0;
	enum milter_rcpt_param_result result;
	while (
	    milter_rcpt_param_next(args, &at, &param, &len, &params, &result)) {
		if (result == MILTER_RCPT_PARAM_APPLIED)
			continue;
		char text[256];
		snprintf(text, sizeof text, "%.*s", (int)len, param);
		bool bad = result == MILTER_RCPT_PARAM_BAD;
		log_event(bad ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, "milter_param",
			  LOG_S("milter", c->cfg->name),
			  LOG_S("queue_id", c->ms->client.queue_id),
			  LOG_S("address", address), LOG_S("param", text),
			  LOG_S("result", bad ? "refused" : "ignored"));
	}
	struct milter_added_rcpt *grown =
	    realloc(ch->added, (ch->added_count + 1) * sizeof *grown);
	if (grown == NULL)
		return -1;
	ch->added = grown;
	struct milter_added_rcpt *r = &grown[ch->added_count];
	*r = (struct milter_added_rcpt){
	    .address = address_dup(address),
	    .notify = params.notify,
	    .orcpt = params.orcpt[0] ? strdup(params.orcpt) : NULL};
	if (r->address == NULL || (params.orcpt[0] && r->orcpt == NULL)) {
		free(r->address);
		free(r->orcpt);
		return -1;
	}
	ch->added_count++;
	return 0;
}

static int body_append(struct milter_session *ms, const uint8_t *data,
		       size_t len)
{
	if (ms->body_len + len > ms->cfg->max_message_size)
		return -1;
	if (ms->body_len + len > ms->body_cap) {
		size_t cap = ms->body_cap ? ms->body_cap : 65536;
		while (cap < ms->body_len + len)
			cap *= 2;
		char *grown = realloc(ms->body, cap);
		if (grown == NULL)
			return -1;
		ms->body = grown;
		ms->body_cap = cap;
	}
	memcpy(ms->body + ms->body_len, data, len);
	ms->body_len += len;
	return 0;
}

/* A change at the end of the message; -1 when not allowed or broken. */
static int apply_change(struct milter_conn *c, const struct milter_reply *r)
{
	struct milter_session *ms = c->ms;
	struct milter_envelope_changes *ch = &ms->changes;
	uint32_t a = c->actions;
	char *v;
	switch (r->kind) {
	case MILTER_REPLY_ADDHEADER:
	case MILTER_REPLY_INSHEADER:
		if (!(a & MILTER_ACTION_ADDHDRS) || !header_name_valid(r->name))
			return -1;
		v = header_value_from_milter(r->value);
		if (v == NULL ||
		    headers_insert(ms,
				   r->kind == MILTER_REPLY_INSHEADER
				       ? r->index
				       : ms->header_count,
				   r->name, v) < 0) {
			free(v);
			return -1;
		}
		ms->content_changed = true;
		return 0;
	case MILTER_REPLY_CHGHEADER:
		if (!(a & MILTER_ACTION_CHGHDRS) || !header_name_valid(r->name))
			return -1;
		ms->content_changed = true;
		return header_change(ms, r->index, r->name, r->value);
	case MILTER_REPLY_CHGFROM:
		if (!(a & MILTER_ACTION_CHGFROM))
			return -1;
		free((char *)ch->sender);
		ch->sender = NULL;
		char **one = NULL;
		size_t n = 0;
		if (list_add(&one, &n, r->name) < 0)
			return -1;
		ch->sender = one[0];
		free(one);
		return 0;
	case MILTER_REPLY_ADDRCPT:
	case MILTER_REPLY_ADDRCPT_PAR:
		if (!(a & (MILTER_ACTION_ADDRCPT | MILTER_ACTION_ADDRCPT_PAR)))
			return -1;
		return added_rcpt_add(
		    c, r->name,
		    r->kind == MILTER_REPLY_ADDRCPT_PAR ? r->value : NULL);
	case MILTER_REPLY_DELRCPT:
		if (!(a & MILTER_ACTION_DELRCPT))
			return -1;
		return list_add(&ch->deleted, &ch->deleted_count, r->name);
	case MILTER_REPLY_REPLBODY:
		if (!(a & MILTER_ACTION_CHGBODY))
			return -1;
		if (!c->replaced_body) {
			c->replaced_body = true;
			ms->body_len = 0;
		}
		ms->body_replaced = true;
		ms->content_changed = true;
		return body_append(ms, r->data, r->data_len);
	case MILTER_REPLY_QUARANTINE:
		if (!(a & MILTER_ACTION_QUARANTINE))
			return -1;
		free((char *)ch->quarantine);
		ch->quarantine = strdup(r->value);
		return ch->quarantine != NULL ? 0 : -1;
	default:
		return -1;
	}
}

static void count_action(struct milter_conn *c, enum metrics_milter_action a)
{
	metrics_milter_action(c->slot, a);
}

static void on_negotiated(struct milter_conn *c, const struct milter_reply *r)
{
	if (r->kind != MILTER_REPLY_OPTNEG || r->version < MILTER_VERSION_MIN ||
	    r->version > MILTER_VERSION) {
		conn_fail(c, "wrong protocol version");
		return;
	}
	if ((r->protocol & ~MILTER_PROTOCOL_OFFERED) != 0) {
		conn_fail(c, "asks for steps we do not offer");
		return;
	}
	c->actions = r->actions & MILTER_ACTIONS_OFFERED;
	/* before version 6 every step is answered */
	c->protocol = r->version < 6 ? r->protocol & 0x7fu : r->protocol;
	c->state = CONN_READY;
	evtimer_del(c->timer);
	struct milter_session *ms = c->ms;
	if (ms->busy && &ms->conns[ms->current] == c)
		advance(ms);
}

/* A final reply to the packet awaited. */
static void on_decision(struct milter_conn *c, const struct milter_reply *r)
{
	struct milter_session *ms = c->ms;
	bool session_step = c->awaiting <= PHASE_HELO;
	const char *name = milter_reply_name(r->kind);
	enum milter_verdict v;
	const char *reply;
	c->waiting = false;
	evtimer_del(c->timer);
	if (c->awaiting >= PHASE_DATA) {
		ms->last_milter = c->cfg->name;
		ms->last_action = name;
	}
	switch (r->kind) {
	case MILTER_REPLY_CONTINUE:
		count_action(c, METRICS_MILTER_CONTINUE);
		advance(ms);
		return;
	case MILTER_REPLY_SKIP:
		if (c->awaiting == PHASE_BODY)
			c->body_skipped = true;
		count_action(c, METRICS_MILTER_CONTINUE);
		advance(ms);
		return;
	case MILTER_REPLY_ACCEPT:
		count_action(c, METRICS_MILTER_ACCEPT);
		if (session_step)
			c->state = CONN_OFF;
		else
			c->skip_message = true;
		c->phase = PHASE_DONE;
		ms->current++;
		advance(ms);
		return;
	case MILTER_REPLY_DISCARD:
		if (session_step) {
			conn_fail(c, "discard outside a transaction");
			return;
		}
		count_action(c, METRICS_MILTER_DISCARD);
		ms->discard = true;
		finish(ms,
		       c->awaiting == PHASE_EOB ? MILTER_DISCARD
						: MILTER_CONTINUE,
		       NULL, c, name);
		return;
	case MILTER_REPLY_REPLYCODE:
		v = r->code >= 500 ? MILTER_REJECT : MILTER_TEMPFAIL;
		reply = r->name;
		name = v == MILTER_REJECT ? "reject" : "tempfail";
		break;
	case MILTER_REPLY_REJECT:
		v = MILTER_REJECT;
		reply = MILTER_REFUSED;
		break;
	case MILTER_REPLY_TEMPFAIL:
	case MILTER_REPLY_SHUTDOWN:
	case MILTER_REPLY_CONN_FAIL:
	default:
		v = MILTER_TEMPFAIL;
		reply = MILTER_TEMPFAILED;
		name = "tempfail";
		break;
	}
	count_action(c, v == MILTER_REJECT ? METRICS_MILTER_REJECT
					   : METRICS_MILTER_TEMPFAIL);
	if (session_step) {
		ms->refused = true;
		ms->refusal = v;
		snprintf(ms->refusal_reply, sizeof ms->refusal_reply, "%s",
			 reply);
		ms->refusal_milter = c->cfg->name;
	}
	finish(ms, v, reply, c, name);
}

static void on_reply(struct milter_conn *c, const struct milter_reply *r)
{
	if (c->state == CONN_NEGOTIATING) {
		on_negotiated(c, r);
		return;
	}
	if (!c->waiting) {
		conn_fail(c, "a reply nobody asked for");
		return;
	}
	switch (r->kind) {
	case MILTER_REPLY_PROGRESS:
		arm_timer(c);
		return;
	case MILTER_REPLY_ADDHEADER:
	case MILTER_REPLY_INSHEADER:
	case MILTER_REPLY_CHGHEADER:
	case MILTER_REPLY_CHGFROM:
	case MILTER_REPLY_ADDRCPT:
	case MILTER_REPLY_ADDRCPT_PAR:
	case MILTER_REPLY_DELRCPT:
	case MILTER_REPLY_REPLBODY:
	case MILTER_REPLY_QUARANTINE:
		if (c->awaiting != PHASE_EOB || apply_change(c, r) < 0) {
			conn_fail(c, "a change out of place or refused");
			return;
		}
		if (r->kind == MILTER_REPLY_QUARANTINE)
			count_action(c, METRICS_MILTER_QUARANTINE);
		return;
	case MILTER_REPLY_OPTNEG:
		conn_fail(c, "a second negotiation");
		return;
	default:
		on_decision(c, r);
		return;
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct milter_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (c->bev != NULL && evbuffer_get_length(in) >= 4) {
		uint8_t head[4];
		if (evbuffer_copyout(in, head, 4) != 4)
			return;
		size_t want =
		    4 + ((size_t)head[0] << 24 | (size_t)head[1] << 16 |
			 (size_t)head[2] << 8 | head[3]);
		if (want > 4 + MILTER_REPLY_MAX || want == 4) {
			conn_fail(c, "garbage");
			return;
		}
		if (evbuffer_get_length(in) < want)
			return;
		const uint8_t *packet = evbuffer_pullup(in, (ssize_t)want);
		struct milter_reply r;
		size_t used = 0;
		if (packet == NULL ||
		    milter_parse_reply(packet, want, &used, &r) !=
			MILTER_PARSE_OK) {
			conn_fail(c, "garbage");
			return;
		}
		on_reply(c, &r);
		/* r points into the buffer: drained only now */
		if (c->bev != NULL)
			evbuffer_drain(in, used);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct milter_conn *c = arg;
	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		uint8_t buf[32];
		struct milter_builder b;
		milter_begin(&b, buf, sizeof buf, MILTER_CMD_OPTNEG);
		milter_put_u32(&b, MILTER_VERSION);
		milter_put_u32(&b, MILTER_ACTIONS_OFFERED);
		milter_put_u32(&b, MILTER_PROTOCOL_OFFERED);
		c->state = CONN_NEGOTIATING;
		send_packet(c, &b);
		return;
	}
	conn_fail(c, (what & BEV_EVENT_EOF) ? "closed" : "connection error");
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_fail(arg, "timeout");
}

static void conn_open(struct milter_session *ms, struct milter_conn *c,
		      const struct config_milter *cfg)
{
	c->ms = ms;
	c->cfg = cfg;
	c->slot = metrics_milter_slot(cfg->name);
	c->state = CONN_CONNECTING;
	c->phase = PHASE_DONE;
	c->timer = evtimer_new(ms->base, on_timeout, c);
	c->bev = bufferevent_socket_new(ms->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (c->timer == NULL || c->bev == NULL) {
		conn_fail(c, "out of memory");
		return;
	}
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0 ||
	    bufferevent_socket_connect(c->bev, (struct sockaddr *)&cfg->addr,
				       (int)cfg->addrlen) < 0) {
		conn_fail(c, strerror(errno));
		return;
	}
	arm_timer(c);
}

struct milter_session *milter_session_new(struct event_base *base,
					  const struct config *cfg,
					  const struct milter_client *client)
{
	if (cfg->milter_count == 0)
		return NULL;
	struct milter_session *ms = calloc(1, sizeof *ms);
	if (ms != NULL)
		ms->conns = calloc(cfg->milter_count, sizeof *ms->conns);
	if (ms != NULL)
		ms->done_event = event_new(base, -1, 0, on_done, ms);
	if (ms == NULL || ms->conns == NULL || ms->done_event == NULL) {
		log_event(LOG_LEVEL_ERROR, "milter_error",
			  LOG_S("reason", "out of memory"));
		milter_session_free(ms);
		return NULL;
	}
	ms->base = base;
	ms->cfg = cfg;
	ms->client = *client;
	ms->count = cfg->milter_count;
	for (size_t i = 0; i < ms->count; i++)
		conn_open(ms, &ms->conns[i], &cfg->milters[i]);
	return ms;
}

static void message_clear(struct milter_session *ms)
{
	for (size_t i = 0; i < ms->header_count; i++) {
		free(ms->headers[i].name);
		free(ms->headers[i].value);
	}
	ms->header_count = 0;
	free(ms->chunk);
	ms->chunk = NULL;
	free(ms->body);
	ms->body = NULL;
	ms->body_len = ms->body_cap = 0;
	ms->body_replaced = ms->content_changed = false;
	struct milter_envelope_changes *ch = &ms->changes;
	free((char *)ch->sender);
	free((char *)ch->quarantine);
	for (size_t i = 0; i < ch->added_count; i++) {
		free(ch->added[i].address);
		free(ch->added[i].orcpt);
	}
	for (size_t i = 0; i < ch->deleted_count; i++)
		free(ch->deleted[i]);
	free(ch->added);
	free(ch->deleted);
	memset(ch, 0, sizeof *ch);
}

void milter_session_free(struct milter_session *ms)
{
	if (ms == NULL)
		return;
	for (size_t i = 0; ms->conns != NULL && i < ms->count; i++) {
		struct milter_conn *c = &ms->conns[i];
		if (c->bev != NULL)
			send_empty(c, MILTER_CMD_QUIT);
		if (c->bev != NULL)
			bufferevent_free(c->bev);
		if (c->timer != NULL)
			event_free(c->timer);
		free(c->helo_told);
	}
	message_clear(ms);
	free(ms->headers);
	free(ms->conns);
	if (ms->done_event != NULL)
		event_free(ms->done_event);
	free(ms);
}

static void step_start(struct milter_session *ms,
		       const struct milter_client *client, enum phase first,
		       enum phase last, milter_cb cb, void *arg)
{
	ms->client = *client;
	ms->cb = cb;
	ms->cb_arg = arg;
	ms->busy = true;
	ms->current = 0;
	for (size_t i = 0; i < ms->count; i++) {
		ms->conns[i].phase = first;
		ms->conns[i].last = last;
	}
}

void milter_mail(struct milter_session *ms, const struct milter_client *client,
		 const char *sender, const char *params, milter_cb cb,
		 void *arg)
{
	message_clear(ms);
	ms->discard = false;
	ms->last_milter = ms->last_action = NULL;
	ms->sender = sender;
	ms->params = params;
	step_start(ms, client, PHASE_CONNECT, PHASE_MAIL, cb, arg);
	if (ms->refused) {
		snprintf(ms->reply, sizeof ms->reply, "%s", ms->refusal_reply);
		ms->outcome = (struct milter_outcome){
		    ms->refusal, ms->reply, ms->refusal_milter,
		    ms->refusal == MILTER_REJECT ? "reject" : "tempfail"};
		ms->busy = false;
		event_active(ms->done_event, EV_TIMEOUT, 0);
		return;
	}
	advance(ms);
}

void milter_rcpt(struct milter_session *ms, const struct milter_client *client,
		 const char *rcpt, const char *params, milter_cb cb, void *arg)
{
	ms->rcpt = rcpt;
	ms->params = params;
	step_start(ms, client, PHASE_RCPT, PHASE_RCPT, cb, arg);
	if (ms->discard) {
		finish(ms, MILTER_CONTINUE, NULL, NULL, NULL);
		return;
	}
	advance(ms);
}

/* Read the header section of inc into fields. */
static int headers_read(struct milter_session *ms)
{
	char *text = malloc(HEADERS_MAX);
	if (text == NULL)
		return -1;
	ssize_t n =
	    spool_incoming_read(ms->spool, ms->inc, 0, text, HEADERS_MAX - 1);
	if (n < 0) {
		free(text);
		return -1;
	}
	text[n] = '\0';
	size_t at = 0, len = (size_t)n;
	ms->separator = false;
	while (at < len) {
		if (len - at >= 2 && text[at] == '\r' && text[at + 1] == '\n') {
			at += 2;
			ms->separator = true;
			break;
		}
		const char *colon = memchr(text + at, ':', len - at);
		const char *crlf = strstr(text + at, "\r\n");
		if (colon == NULL || crlf == NULL || colon > crlf)
			break; /* not a field: the body starts here */
		const char *end = crlf;
		while (end[2] == ' ' || end[2] == '\t') {
			const char *next = strstr(end + 2, "\r\n");
			if (next == NULL)
				break;
			end = next;
		}
		char *name = strndup(text + at, (size_t)(colon - text - at));
		char *value = strndup(colon + 1, (size_t)(end - colon - 1));
		if (name == NULL || value == NULL ||
		    headers_insert(ms, ms->header_count, name, value) < 0) {
			free(name);
			free(value);
			free(text);
			return -1;
		}
		free(name);
		at = (size_t)(end - text) + 2;
	}
	ms->body_offset = at;
	ms->headers_cut = !ms->separator && (size_t)n == HEADERS_MAX - 1;
	free(text);
	return 0;
}

void milter_message(struct milter_session *ms,
		    const struct milter_client *client, struct spool *spool,
		    struct spool_incoming *inc, milter_cb cb, void *arg)
{
	ms->spool = spool;
	ms->inc = inc;
	step_start(ms, client, PHASE_DATA, PHASE_EOB, cb, arg);
	if (ms->discard) {
		finish(ms, MILTER_DISCARD, NULL, NULL, "discard");
		return;
	}
	ms->chunk = malloc(MILTER_CHUNK_MAX + 5);
	if (ms->chunk == NULL || headers_read(ms) < 0) {
		log_event(LOG_LEVEL_ERROR, "milter_error",
			  LOG_S("reason", "cannot read the message"),
			  LOG_S("queue_id", inc->id));
		finish(ms, MILTER_TEMPFAIL, MILTER_LOCAL_ERROR, NULL, NULL);
		return;
	}
	advance(ms);
}

void milter_abort(struct milter_session *ms)
{
	if (ms == NULL)
		return;
	for (size_t i = 0; i < ms->count; i++) {
		struct milter_conn *c = &ms->conns[i];
		if (c->state == CONN_READY && c->in_transaction && !c->waiting)
			send_empty(c, MILTER_CMD_ABORT);
		c->in_transaction = false;
		c->skip_message = false;
	}
	ms->discard = false;
	message_clear(ms);
}

bool milter_content_changed(const struct milter_session *ms)
{
	return ms->content_changed;
}

int milter_rewrite(struct milter_session *ms, struct spool *spool,
		   struct spool_incoming *inc, const char *new_id,
		   void (*write)(void *arg, const void *buf, size_t len),
		   void *arg)
{
	/* Our Received field names the queue id: the new one now */
	for (size_t i = 0; i < ms->header_count; i++) {
		char *at = strcasecmp(ms->headers[i].name, "Received") == 0
			       ? strstr(ms->headers[i].value, inc->id)
			       : NULL;
		if (at != NULL && strlen(new_id) == strlen(inc->id)) {
			memcpy(at, new_id, strlen(new_id));
			break;
		}
	}
	for (size_t i = 0; i < ms->header_count; i++) {
		const struct header *h = &ms->headers[i];
		write(arg, h->name, strlen(h->name));
		write(arg, ":", 1);
		write(arg, h->value, strlen(h->value));
		write(arg, "\r\n", 2);
	}
	bool has_body = ms->body_replaced ? ms->body_len > 0
					  : inc->written > ms->body_offset;
	/* a body that followed no empty line gets one, unless it is the
	 * rest of a header section too long to hold */
	if (ms->separator || (has_body && !ms->headers_cut))
		write(arg, "\r\n", 2);
	if (ms->body_replaced) {
		write(arg, ms->body, ms->body_len);
		return 0;
	}
	char buf[16384];
	for (uint64_t at = ms->body_offset;;) {
		ssize_t n =
		    spool_incoming_read(spool, inc, at, buf, sizeof buf);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		write(arg, buf, (size_t)n);
		at += (uint64_t)n;
	}
}

const struct milter_envelope_changes *
milter_envelope_changes(const struct milter_session *ms)
{
	return &ms->changes;
}
