/*
 * The POP3 server (see pop3.h).
 *
 * One bufferevent per client and one state machine: AUTHORIZATION (USER,
 * PASS, AUTH PLAIN, STLS), TRANSACTION once the mailbox is open and
 * locked, UPDATE at QUIT. Logging in checks the password, then moves
 * new/ into cur/ and lists cur/ once, sizing each message from its name's
 * ",W=" or by reading it: both on the worker threads, so that one large
 * mailbox or one crypt(3) never stalls the other sessions. Message
 * numbers, sizes and UIDs come from that list until the session ends.
 * RETR and TOP stream the file through pop3_stream, a chunk at a time,
 * paced by the output's low-water mark, so that a message is never held
 * whole in memory. The mailbox lock lives in this
 * process only: the sessions' list is the table, keyed by the Maildir
 * path.
 *
 * The mailbox is read by the rule local delivery writes by
 * (pop3_maildrop.h): every message is opened, moved and removed relative
 * to the descriptors of its folders, never by a path the kernel walks
 * again. A link at the folder, new/ or cur/
 * fails the login; a link or other non-regular file where a message
 * belongs is left alone. So the owner of one mailbox never reaches
 * another's mail by planting a link.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "facteur/ascii.h"
#include "facteur/auth.h"
#include "facteur/auth_limit.h"
#include "facteur/config.h"
#include "facteur/lineio.h"
#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"
#include "facteur/metrics.h"
#include "facteur/password_check.h"
#include "facteur/policy.h"
#include "facteur/pop3.h"
#include "facteur/pop3_maildrop.h"
#include "facteur/pop3_proto.h"
#include "facteur/server.h"
#include "facteur/state_list.h"
#include "facteur/transport.h"
#include "facteur/worker.h"

#define IDLE_TIMEOUT_SECONDS 600 /* RFC 1939 §3: at least 10 minutes */
#define SEND_CHUNK 16384
#define SEND_LOW_WATER (32 * 1024)   /* on_write asks for more below this */
#define SEND_HIGH_WATER (128 * 1024) /* a RETR stops filling above this */
#define LOGIN_FAILURES_MAX 3	     /* then the connection is closed */
#define LOGIN_DELAY_MAX 5	     /* seconds */
#define MAX_PROTOCOL_ERRORS 20
#define ACCOUNT_MAX PASSWORD_CHECK_USER_MAX
#define PASSWORD_MAX PASSWORD_CHECK_PASSWORD_MAX

/* Each state once: its name in the enum and in the debug log. */
#define POP3_STATES(X)                                                         \
	X(POP3_STATE_AUTHORIZATION, "authorization")                           \
	/* AUTH PLAIN sent "+ ": the response line */                          \
	X(POP3_STATE_SASL, "sasl")                                             \
	/* the password is checked on the worker */                            \
	X(POP3_STATE_CHECKING, "checking")                                     \
	/* the mailbox is scanned on the worker */                             \
	X(POP3_STATE_OPENING, "opening")                                       \
	/* a failed login waits before its -ERR */                             \
	X(POP3_STATE_LOGIN_DELAY, "login_delay")                               \
	X(POP3_STATE_TRANSACTION, "transaction")                               \
	/* RETR/TOP streaming a message; input waits */                        \
	X(POP3_STATE_SENDING, "sending")                                       \
	/* QUIT: removing the messages marked deleted */                       \
	X(POP3_STATE_UPDATE, "update")                                         \
	/* the +OK to STLS drains; then the handshake */                       \
	X(POP3_STATE_STLS, "stls")                                             \
	/* flushing the last reply */                                          \
	X(POP3_STATE_CLOSING, "closing")

enum pop3_state { POP3_STATES(STATE_LIST_ENUM) };

static const char *const state_names[] = {POP3_STATES(STATE_LIST_NAME)};

struct pop3_session {
	struct pop3_session *prev, *next;
	struct pop3_server *server;
	struct bufferevent *bev;
	enum pop3_state state;
	struct sockaddr_storage addr;
	char client[INET6_ADDRSTRLEN];
	char id[LOG_SESSION_ID_SIZE];
	time_t started;
	bool loopback;
	bool tls;	      /* TLS requested (STLS or pop3s) */
	bool tls_established; /* the handshake completed */
	char *user;	      /* USER given, PASS awaited */
	char *account;	      /* logged in as */
	char *mailbox;	      /* the Maildir, while locked by this session */
	int cur_fd;	      /* its cur/, for every message's *at call */
	struct pop3_message *messages;
	size_t message_count;
	unsigned login_failures;
	unsigned errors;
	unsigned retrieved;
	bool discarding_line; /* a line over the limit is being skipped */
	bool paused;	      /* reading stopped until our replies drain */
	struct event *timer;  /* the login delay */
	int send_fd;	      /* the message RETR/TOP is streaming, or -1 */
	struct pop3_stream stream;
	const char *end_reason; /* for the pop3_disconnect line */
	struct pop3_job *job;	/* on the worker, or NULL */
};

/* A login's slow parts, done on the worker one after the other: the
 * password check, then (once the mailbox is locked) moving new/ into
 * cur/ and sizing each message. The job owns copies of all it reads, so
 * that neither a reload nor the session's end pulls anything away. */
struct pop3_job {
	struct pop3_session *session; /* NULL once the session is gone */
	struct password_check check;
	struct pop3_maildrop md; /* its cur/ and list handed to the session */
	int error;		 /* of the scan: 0 or an errno */
};

struct pop3_server {
	struct server *srv;
	struct listener *listener; /* its own: POP3 connections count apart */
	struct pop3_session *sessions;
	size_t session_count;
};

static void session_process(struct pop3_session *s);
static void session_close(struct pop3_session *s);
static void session_free(struct pop3_session *s);

static void enter_state(struct pop3_session *s, enum pop3_state state)
{
	if (s->state != state)
		log_event(LOG_LEVEL_DEBUG, "pop3_state", LOG_SESSION(s),
			  LOG_S("from", state_names[s->state]),
			  LOG_S("to", state_names[state]));
	s->state = state;
}

static struct server *srv_of(const struct pop3_session *s)
{
	return s->server->srv;
}

static void reply(struct pop3_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply(struct pop3_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* A protocol error (unknown command, bad syntax, wrong state): counted,
 * and past the limit the session ends after its reply. */
static void reply_error(struct pop3_session *s, const char *text)
{
	reply(s, "-ERR %s", text);
	if (++s->errors >= MAX_PROTOCOL_ERRORS) {
		reply(s, "-ERR too many errors, closing");
		s->end_reason = "too many errors";
		session_close(s);
	}
}

/* Passwords travel in clear only over loopback (SPEC.md §6). */
static bool passwords_allowed(const struct pop3_session *s)
{
	return s->tls || s->loopback;
}

/* ---- the mailbox ---- */

static bool mailbox_in_use(const struct pop3_server *p, const char *path)
{
	for (const struct pop3_session *o = p->sessions; o != NULL; o = o->next)
		if (o->mailbox != NULL && strcmp(o->mailbox, path) == 0)
			return true;
	return false;
}

static void mailbox_release(struct pop3_session *s)
{
	pop3_messages_free(s->messages, s->message_count);
	s->messages = NULL;
	s->message_count = 0;
	free(s->mailbox);
	s->mailbox = NULL;
	if (s->cur_fd != -1) {
		(void)close(s->cur_fd); /* a directory: nothing to lose */
		s->cur_fd = -1;
	}
}

static void job_free(struct pop3_job *job)
{
	password_check_clear(&job->check);
	pop3_maildrop_clear(&job->md);
	free(job);
}

/* On the worker: the mailbox's new mail into cur/, and cur/ listed. */
static void scan_run(void *arg)
{
	struct pop3_job *job = arg;
	job->error = 0;
	/* as the mailbox owner: it moves new mail into cur/ */
	mailowner_enter();
	if (pop3_maildrop_scan(&job->md) == -1)
		job->error = errno ? errno : EIO;
	mailowner_leave();
}

/* On the worker: the crypt(3) check. */
static void check_run(void *arg)
{
	struct pop3_job *job = arg;
	password_check_run(&job->check);
}

static void maildrop_totals(const struct pop3_session *s, size_t *count,
			    uint64_t *octets)
{
	*count = 0;
	*octets = 0;
	for (size_t i = 0; i < s->message_count; i++) {
		if (s->messages[i].deleted)
			continue;
		(*count)++;
		*octets += s->messages[i].size;
	}
}

static void log_login(struct pop3_session *s, const char *user,
		      const char *result)
{
	log_event(strcmp(result, "ok") == 0 ? LOG_LEVEL_INFO : LOG_LEVEL_WARN,
		  "pop3_login", LOG_SESSION(s), LOG_S("user", user),
		  LOG_S("result", result));
}

/* Back to reading commands after the worker, or after a refusal. */
static void resume_commands(struct pop3_session *s)
{
	enter_state(s, POP3_STATE_AUTHORIZATION);
	bufferevent_enable(s->bev, EV_READ);
	session_process(s);
}

/* A worker job is back: its session, or NULL (the job freed) when the
 * client left meanwhile or the session is closing (its last reply is on
 * its way). */
static struct pop3_session *job_claim(struct pop3_job *job)
{
	struct pop3_session *s = job->session;
	if (s == NULL) {
		job_free(job);
		return NULL;
	}
	s->job = NULL;
	if (s->state == POP3_STATE_CLOSING) {
		job_free(job);
		return NULL;
	}
	return s;
}

static void scan_done(void *arg)
{
	struct pop3_job *job = arg;
	struct pop3_session *s = job_claim(job);
	if (s == NULL)
		return;
	if (job->error != 0) {
		log_event(LOG_LEVEL_ERROR, "pop3_mailbox_error", LOG_SESSION(s),
			  LOG_S("user", job->check.user),
			  LOG_S("mailbox", s->mailbox),
			  LOG_S("path", job->md.failed_path),
			  LOG_S("reason", job->error == ELOOP
					      ? "symbolic link not followed"
					      : strerror(job->error)));
		mailbox_release(s);
		reply(s, "-ERR [SYS/TEMP] cannot open the mailbox");
		log_login(s, job->check.user, "mailbox_error");
		job_free(job);
		resume_commands(s);
		return;
	}
	char *who = strdup(job->check.user);
	if (who == NULL) {
		mailbox_release(s);
		reply(s, "-ERR [SYS/TEMP] out of memory");
		job_free(job);
		resume_commands(s);
		return;
	}
	if (job->md.skipped_count > 0)
		log_event(LOG_LEVEL_WARN, "pop3_mailbox_skipped",
			  LOG_SESSION(s), LOG_S("user", job->check.user),
			  LOG_S("mailbox", s->mailbox),
			  LOG_S("entry", job->md.skipped),
			  LOG_I("count", job->md.skipped_count),
			  LOG_S("reason", "not a regular file"));
	s->messages = job->md.messages;
	s->message_count = job->md.count;
	job->md.messages = NULL;
	job->md.count = 0;
	s->cur_fd = job->md.cur_fd;
	job->md.cur_fd = -1;
	free(s->account);
	s->account = who;
	job_free(job);
	size_t count;
	uint64_t octets;
	maildrop_totals(s, &count, &octets);
	metrics.auth_attempts[METRICS_AUTH_SUCCESS]++;
	log_event(LOG_LEVEL_INFO, "pop3_login", LOG_SESSION(s),
		  LOG_S("user", s->account), LOG_S("result", "ok"),
		  LOG_I("messages", count), LOG_I("octets", octets));
	reply(s, "+OK maildrop has %zu messages (%llu octets)", count,
	      (unsigned long long)octets);
	enter_state(s, POP3_STATE_TRANSACTION);
	bufferevent_enable(s->bev, EV_READ);
	session_process(s);
}

/* The credentials are good: lock the mailbox and have the worker open
 * it (reading every message to size it would stall the loop), or say
 * why not. The job is handed on or freed; false when the session goes
 * back to AUTHORIZATION. */
static bool mailbox_open(struct pop3_session *s, struct pop3_job *job)
{
	const struct config *cfg = srv_of(s)->cfg;
	const char *account = job->check.user;
	if (cfg->mailbox_format == MAILBOX_MBOX) {
		/* Only Maildir is served (SPEC.md §6). */
		reply(s, "-ERR [SYS/PERM] mbox is not served over POP3");
		log_login(s, account, "mbox");
		job_free(job);
		return false;
	}
	/* The same check and path as local delivery: an account name from
	 * the users file never reaches outside the mail root either. */
	size_t root_len = 0;
	char *path = policy_mailbox_path(cfg, account, &root_len);
	if (path == NULL) {
		reply(s, "-ERR [SYS/PERM] no mailbox for this account");
		log_login(s, account, "no_mailbox");
		job_free(job);
		return false;
	}
	if (mailbox_in_use(s->server, path)) {
		free(path);
		reply(s, "-ERR [IN-USE] mailbox in use");
		log_login(s, account, "in_use");
		job_free(job);
		return false;
	}
	job->md.mailbox = strdup(path);
	job->md.root_len = root_len;
	if (job->md.mailbox == NULL ||
	    worker_run(srv_of(s)->worker, scan_run, scan_done, job) == -1) {
		free(path);
		job_free(job);
		reply(s, "-ERR [SYS/TEMP] out of memory");
		return false;
	}
	/* Locked from now on: a second login to it gets [IN-USE]. */
	s->mailbox = path;
	s->job = job;
	enter_state(s, POP3_STATE_OPENING);
	return true;
}

/* ---- AUTHORIZATION: USER, PASS, AUTH, STLS ---- */

static void client_key(const struct pop3_session *s, uint8_t key[16])
{
	listener_client_key((const struct sockaddr *)&s->addr,
			    srv_of(s)->cfg->ipv6_prefix_length, key);
}

/* Has this client failed too many logins lately, in any session? */
static bool client_refused(const struct pop3_session *s)
{
	const struct config *cfg = srv_of(s)->cfg;
	uint8_t key[16];
	client_key(s, key);
	return auth_limit_client_refused(srv_of(s)->auth_limit, key, time(NULL),
					 cfg->auth_fail_limit,
					 cfg->auth_fail_window, NULL);
}

/* The login delay is over. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pop3_session *s = arg;
	if (s->state != POP3_STATE_LOGIN_DELAY)
		return;
	enter_state(s, POP3_STATE_AUTHORIZATION);
	if (s->login_failures >= LOGIN_FAILURES_MAX || client_refused(s)) {
		reply(s, "-ERR [AUTH] too many failed logins, closing");
		s->end_reason = "too many failed logins";
		session_close(s);
		return;
	}
	reply(s, "-ERR [AUTH] invalid user name or password");
	bufferevent_enable(s->bev, EV_READ);
	session_process(s);
}

/* A failed login is answered after a delay that grows with each failure,
 * so that guessing passwords costs time; input waits meanwhile. */
static void login_failed(struct pop3_session *s, const char *user)
{
	s->login_failures++;
	metrics.auth_attempts[METRICS_AUTH_FAILURE]++;
	log_event(LOG_LEVEL_WARN, "pop3_login", LOG_SESSION(s),
		  LOG_S("user", user), LOG_S("result", "failed"),
		  LOG_I("failures", s->login_failures));
	if (s->timer == NULL)
		s->timer = evtimer_new(srv_of(s)->base, on_timer, s);
	if (s->timer == NULL) {
		s->end_reason = "out of memory";
		session_close(s);
		return;
	}
	enter_state(s, POP3_STATE_LOGIN_DELAY);
	bufferevent_disable(s->bev, EV_READ);
	unsigned seconds = s->login_failures < LOGIN_DELAY_MAX
			       ? s->login_failures
			       : LOGIN_DELAY_MAX;
	struct timeval delay = {(time_t)seconds, 0};
	evtimer_add(s->timer, &delay);
}

static void check_done(void *arg)
{
	struct pop3_job *job = arg;
	struct pop3_session *s = job_claim(job);
	if (s == NULL)
		return;
	if (!job->check.ok) {
		const struct config *cfg = srv_of(s)->cfg;
		uint8_t key[16];
		client_key(s, key);
		/* Only accounts that exist are counted (as for SMTP). */
		auth_limit_failure(srv_of(s)->auth_limit, key,
				   job->check.hash != NULL ? job->check.user
							   : NULL,
				   time(NULL), cfg->auth_fail_window);
		login_failed(s, job->check.user);
		job_free(job);
		return;
	}
	if (!mailbox_open(s, job))
		resume_commands(s);
}

/* Check the password on the worker; input waits meanwhile, other
 * sessions go on. An account under attack is refused to clients that
 * have failed logins themselves. */
static void login(struct pop3_session *s, const char *user,
		  const char *password)
{
	struct server *srv = srv_of(s);
	if (srv->users == NULL) {
		reply(s, "-ERR [AUTH] no accounts on this server");
		log_login(s, user, "no_accounts");
		return;
	}
	uint8_t key[16];
	client_key(s, key);
	if (!auth_limit_account_open(srv->auth_limit, key, user, time(NULL),
				     srv->cfg->auth_fail_limit,
				     srv->cfg->auth_fail_window)) {
		reply(s, "-ERR [AUTH] too many failed logins for this "
			 "account, try again later");
		log_event(LOG_LEVEL_WARN, "pop3_login", LOG_SESSION(s),
			  LOG_S("user", user), LOG_S("result", "refused"),
			  LOG_S("reason", "auth_fail_limit"));
		return;
	}
	struct pop3_job *job = calloc(1, sizeof *job);
	if (job != NULL) {
		job->session = s;
		pop3_maildrop_init(&job->md);
	}
	if (job == NULL ||
	    password_check_init(&job->check, srv->users, user, password) ==
		-1 ||
	    worker_run(srv->worker, check_run, check_done, job) == -1) {
		if (job != NULL)
			job_free(job);
		reply(s, "-ERR [SYS/TEMP] out of memory");
		return;
	}
	s->job = job;
	enter_state(s, POP3_STATE_CHECKING);
	bufferevent_disable(s->bev, EV_READ);
}

/* USER, PASS and AUTH are refused before TLS on a non-loopback client,
 * and when nobody has an account. */
static bool login_possible(struct pop3_session *s)
{
	/* Counted as errors: a client that keeps trying gets closed. */
	if (!passwords_allowed(s)) {
		log_event(LOG_LEVEL_INFO, "pop3_login", LOG_SESSION(s),
			  LOG_S("result", "tls_required"));
		reply_error(s, "[AUTH] TLS required: use STLS first");
		return false;
	}
	if (srv_of(s)->users == NULL) {
		log_event(LOG_LEVEL_INFO, "pop3_login", LOG_SESSION(s),
			  LOG_S("result", "no_accounts"));
		reply_error(s, "[AUTH] no accounts on this server");
		return false;
	}
	return true;
}

static void cmd_user(struct pop3_session *s, const struct pop3_command *cmd)
{
	free(s->user);
	s->user = NULL;
	if (!login_possible(s))
		return;
	if (cmd->textlen[0] > ACCOUNT_MAX) {
		reply_error(s, "user name too long");
		return;
	}
	s->user = strndup(cmd->text[0], cmd->textlen[0]);
	if (s->user == NULL) {
		reply(s, "-ERR [SYS/TEMP] out of memory");
		return;
	}
	reply(s, "+OK send PASS");
}

static void cmd_pass(struct pop3_session *s, const struct pop3_command *cmd)
{
	if (s->user == NULL) {
		reply_error(s, "send USER first");
		return;
	}
	/* Whatever happens, the next try starts with USER (RFC 1939 §7). */
	char *user = s->user;
	s->user = NULL;
	if (!login_possible(s)) {
		free(user);
		return;
	}
	char password[PASSWORD_MAX];
	if (cmd->textlen[0] >= sizeof password) {
		free(user);
		reply_error(s, "password too long");
		return;
	}
	memcpy(password, cmd->text[0], cmd->textlen[0]);
	password[cmd->textlen[0]] = '\0';
	login(s, user, password);
	explicit_bzero(password, sizeof password);
	free(user);
}

/* One SASL PLAIN response (initial, or the line after "+ "). */
static void sasl_plain(struct pop3_session *s, const char *text, size_t len)
{
	enter_state(s, POP3_STATE_AUTHORIZATION);
	if (len == 1 && text[0] == '*') {
		reply(s, "-ERR [AUTH] authentication cancelled");
		return;
	}
	char user[ACCOUNT_MAX + 1];
	char password[PASSWORD_MAX];
	if (auth_sasl_plain_decode(text, len, user, sizeof user, password,
				   sizeof password) == -1) {
		reply_error(s, "[AUTH] invalid PLAIN response");
		return;
	}
	login(s, user, password);
	explicit_bzero(password, sizeof password);
}

static void cmd_auth(struct pop3_session *s, const struct pop3_command *cmd)
{
	if (cmd->ntext == 0) {
		/* The mechanisms, for clients that ask without CAPA. */
		reply(s, "+OK");
		reply(s, "PLAIN");
		reply(s, ".");
		return;
	}
	if (!ascii_ieq(cmd->text[0], cmd->textlen[0], "PLAIN")) {
		reply(s, "-ERR [AUTH] unsupported mechanism");
		return;
	}
	free(s->user);
	s->user = NULL;
	if (!login_possible(s))
		return;
	if (cmd->ntext == 2) {
		/* "=" is an empty initial response (RFC 5034 §4). */
		size_t len = cmd->textlen[1];
		if (len == 1 && cmd->text[1][0] == '=')
			len = 0;
		sasl_plain(s, cmd->text[1], len);
		return;
	}
	enter_state(s, POP3_STATE_SASL);
	reply(s, "+ ");
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static void set_callbacks(struct pop3_session *s)
{
	struct timeval idle = {IDLE_TIMEOUT_SECONDS, 0};
	bufferevent_set_timeouts(s->bev, &idle, &idle);
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_enable(s->bev, EV_READ);
}

static void cmd_stls(struct pop3_session *s)
{
	if (s->tls) {
		reply_error(s, "TLS already active");
		return;
	}
	if (srv_of(s)->tls_server == NULL) {
		reply(s, "-ERR [SYS/TEMP] TLS not available");
		return;
	}
	reply(s, "+OK begin TLS negotiation");
	/* Whatever the client pipelined after STLS came in the clear and
	 * must not be read as if it were protected (RFC 2595 §4); nothing
	 * more is read until the handshake. */
	transport_drop_input(s->bev);
	bufferevent_disable(s->bev, EV_READ);
	enter_state(s, POP3_STATE_STLS);
}

/* The +OK is out: the same socket goes on under TLS, and the session
 * starts over in AUTHORIZATION. */
static void stls_begin(struct pop3_session *s)
{
	/* (A reload may have taken the certificate away meanwhile.) */
	SSL_CTX *ctx = srv_of(s)->tls_server;
	SSL *ssl = ctx != NULL ? SSL_new(ctx) : NULL;
	if (ssl == NULL ||
	    transport_start_tls(srv_of(s)->base, &s->bev, ssl, true) == -1) {
		s->end_reason = "out of memory";
		session_free(s);
		return;
	}
	s->tls = true;
	free(s->user);
	s->user = NULL;
	enter_state(s, POP3_STATE_AUTHORIZATION);
	set_callbacks(s);
}

static void cmd_capa(struct pop3_session *s)
{
	bool authz = s->state == POP3_STATE_AUTHORIZATION;
	bool logins = authz && passwords_allowed(s) && srv_of(s)->users != NULL;
	reply(s, "+OK capability list follows");
	if (logins)
		reply(s, "USER");
	reply(s, "TOP");
	reply(s, "UIDL");
	reply(s, "PIPELINING");
	reply(s, "RESP-CODES");
	reply(s, "AUTH-RESP-CODE");
	if (logins)
		reply(s, "SASL PLAIN");
	if (authz && !s->tls && srv_of(s)->tls_server != NULL)
		reply(s, "STLS");
	reply(s, "IMPLEMENTATION facteur");
	reply(s, ".");
}

/* ---- TRANSACTION ---- */

/* The message numbered n (from 1), or NULL with the -ERR given. */
static struct pop3_message *message_get(struct pop3_session *s, uint64_t n)
{
	if (n == 0 || n > s->message_count) {
		reply(s, "-ERR no such message");
		return NULL;
	}
	struct pop3_message *m = &s->messages[n - 1];
	if (m->deleted) {
		reply(s, "-ERR message %llu already deleted",
		      (unsigned long long)n);
		return NULL;
	}
	return m;
}

static void cmd_stat(struct pop3_session *s)
{
	size_t count;
	uint64_t octets;
	maildrop_totals(s, &count, &octets);
	reply(s, "+OK %zu %llu", count, (unsigned long long)octets);
}

static void cmd_list(struct pop3_session *s, const struct pop3_command *cmd,
		     bool uidl)
{
	if (cmd->has_number) {
		struct pop3_message *m = message_get(s, cmd->number);
		if (m == NULL)
			return;
		if (uidl)
			reply(s, "+OK %llu %s", (unsigned long long)cmd->number,
			      m->uid);
		else
			reply(s, "+OK %llu %llu",
			      (unsigned long long)cmd->number,
			      (unsigned long long)m->size);
		return;
	}
	size_t count;
	uint64_t octets;
	maildrop_totals(s, &count, &octets);
	if (uidl)
		reply(s, "+OK unique-id listing follows");
	else
		reply(s, "+OK %zu messages (%llu octets)", count,
		      (unsigned long long)octets);
	for (size_t i = 0; i < s->message_count; i++) {
		const struct pop3_message *m = &s->messages[i];
		if (m->deleted)
			continue;
		if (uidl)
			reply(s, "%zu %s", i + 1, m->uid);
		else
			reply(s, "%zu %llu", i + 1,
			      (unsigned long long)m->size);
	}
	reply(s, ".");
}

static void sending_done(struct pop3_session *s)
{
	if (s->send_fd != -1) {
		(void)close(s->send_fd); /* read-only: nothing to lose */
		s->send_fd = -1;
	}
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
}

/* The end of the message: ".\r\n", and commands are read again. */
static void sending_finish(struct pop3_session *s)
{
	char tail[POP3_STREAM_FINISH_MAX];
	size_t n = pop3_stream_finish(&s->stream, tail);
	evbuffer_add(bufferevent_get_output(s->bev), tail, n);
	sending_done(s);
	enter_state(s, POP3_STATE_TRANSACTION);
	bufferevent_enable(s->bev, EV_READ);
}

/* Fill the output from the message up to the high-water mark; on_write
 * calls again once it drains below the low one. */
static void send_more(struct pop3_session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	char in[SEND_CHUNK];
	while (evbuffer_get_length(out) < SEND_HIGH_WATER) {
		ssize_t r = read(s->send_fd, in, sizeof in);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			/* Too late for a -ERR: the client sees the answer
			 * cut short by the close. */
			int err = errno;
			log_event(LOG_LEVEL_ERROR, "pop3_read_error",
				  LOG_SESSION(s), LOG_S("mailbox", s->mailbox),
				  LOG_S("reason", strerror(err)));
			sending_done(s);
			s->end_reason = "read error";
			session_close(s);
			return;
		}
		if (r == 0) {
			sending_finish(s);
			return;
		}
		struct evbuffer_iovec vec;
		if (evbuffer_reserve_space(
			out, (ev_ssize_t)POP3_STREAM_OUT_MAX((size_t)r), &vec,
			1) < 1) {
			sending_done(s);
			s->end_reason = "out of memory";
			session_close(s);
			return;
		}
		size_t used;
		vec.iov_len = pop3_stream_convert(&s->stream, in, (size_t)r,
						  vec.iov_base, &used);
		if (evbuffer_commit_space(out, &vec, 1) == -1) {
			sending_done(s);
			s->end_reason = "out of memory";
			session_close(s);
			return;
		}
		if (pop3_stream_done(&s->stream)) {
			sending_finish(s); /* TOP: the rest is not sent */
			return;
		}
	}
}

/* RETR and TOP: "+OK", then the message streamed from its file. */
static void cmd_retr(struct pop3_session *s, const struct pop3_command *cmd,
		     bool top)
{
	struct pop3_message *m = message_get(s, cmd->number);
	if (m == NULL)
		return;
	mailowner_enter();
	int fd = pop3_maildrop_open_message(s->cur_fd, m->name);
	int err = errno;
	mailowner_leave();
	if (fd == -1) {
		if (err == ENOENT)
			reply(s, "-ERR message %llu is no longer available",
			      (unsigned long long)cmd->number);
		else
			reply(s, "-ERR [SYS/TEMP] cannot read message %llu",
			      (unsigned long long)cmd->number);
		log_event(LOG_LEVEL_WARN, "pop3_read_error", LOG_SESSION(s),
			  LOG_S("mailbox", s->mailbox),
			  LOG_S("message", m->name),
			  LOG_S("reason", pop3_maildrop_error(err)));
		return;
	}
	if (top)
		reply(s, "+OK top of message follows");
	else
		reply(s, "+OK %llu octets", (unsigned long long)m->size);
	if (!top)
		s->retrieved++;
	pop3_stream_init(&s->stream, top, cmd->lines);
	s->send_fd = fd;
	enter_state(s, POP3_STATE_SENDING);
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setwatermark(s->bev, EV_WRITE, SEND_LOW_WATER, 0);
	send_more(s);
}

static void cmd_dele(struct pop3_session *s, const struct pop3_command *cmd)
{
	struct pop3_message *m = message_get(s, cmd->number);
	if (m == NULL)
		return;
	m->deleted = true;
	reply(s, "+OK message %llu deleted", (unsigned long long)cmd->number);
}

static void cmd_rset(struct pop3_session *s)
{
	for (size_t i = 0; i < s->message_count; i++)
		s->messages[i].deleted = false;
	size_t count;
	uint64_t octets;
	maildrop_totals(s, &count, &octets);
	reply(s, "+OK maildrop has %zu messages (%llu octets)", count,
	      (unsigned long long)octets);
}

/* QUIT in TRANSACTION: UPDATE removes what was marked, then goodbye. */
static void cmd_quit_update(struct pop3_session *s)
{
	enter_state(s, POP3_STATE_UPDATE);
	unsigned removed = 0, failed = 0;
	for (size_t i = 0; i < s->message_count; i++) {
		const struct pop3_message *m = &s->messages[i];
		if (!m->deleted)
			continue;
		/* Relative to cur/ as listed: a link swapped in for the
		 * name is removed itself, never what it points at. */
		mailowner_enter();
		int rc = unlinkat(s->cur_fd, m->name, 0);
		int err = errno;
		mailowner_leave();
		if (rc == 0 || err == ENOENT) {
			removed++;
		} else {
			failed++;
			log_event(LOG_LEVEL_ERROR, "pop3_delete_error",
				  LOG_SESSION(s), LOG_S("mailbox", s->mailbox),
				  LOG_S("message", m->name),
				  LOG_S("reason", strerror(err)));
		}
	}
	size_t left = s->message_count - removed;
	log_event(LOG_LEVEL_INFO, "pop3_logout", LOG_SESSION(s),
		  LOG_S("user", s->account), LOG_I("retrieved", s->retrieved),
		  LOG_I("deleted", removed), LOG_I("left", left));
	mailbox_release(s);
	if (failed > 0)
		reply(s, "-ERR [SYS/TEMP] %u deleted messages not removed",
		      failed);
	else
		reply(s,
		      "+OK facteur POP3 server signing off (%zu messages "
		      "left)",
		      left);
	s->end_reason = "quit";
	session_close(s);
}

static void cmd_quit(struct pop3_session *s)
{
	if (s->state == POP3_STATE_TRANSACTION) {
		cmd_quit_update(s);
		return;
	}
	reply(s, "+OK facteur POP3 server signing off");
	s->end_reason = "quit";
	session_close(s);
}

static void dispatch(struct pop3_session *s, const char *line, size_t len)
{
	struct pop3_command cmd;
	enum pop3_parse_result r = pop3_parse_command(line, len, &cmd);
	if (r == POP3_PARSE_UNKNOWN) {
		reply_error(s, "unknown command");
		return;
	}
	if (r == POP3_PARSE_SYNTAX) {
		reply_error(s, "syntax error");
		return;
	}
	bool authz = s->state == POP3_STATE_AUTHORIZATION;
	switch (cmd.verb) {
	case POP3_VERB_CAPA:
		cmd_capa(s);
		return;
	case POP3_VERB_QUIT:
		cmd_quit(s);
		return;
	case POP3_VERB_USER:
	case POP3_VERB_PASS:
	case POP3_VERB_AUTH:
	case POP3_VERB_STLS:
		if (!authz) {
			reply_error(s, "already logged in");
			return;
		}
		break;
	default:
		if (authz) {
			reply_error(s, "not logged in");
			return;
		}
		break;
	}
	switch (cmd.verb) {
	case POP3_VERB_USER:
		cmd_user(s, &cmd);
		break;
	case POP3_VERB_PASS:
		cmd_pass(s, &cmd);
		break;
	case POP3_VERB_AUTH:
		cmd_auth(s, &cmd);
		break;
	case POP3_VERB_STLS:
		cmd_stls(s);
		break;
	case POP3_VERB_STAT:
		cmd_stat(s);
		break;
	case POP3_VERB_LIST:
		cmd_list(s, &cmd, false);
		break;
	case POP3_VERB_UIDL:
		cmd_list(s, &cmd, true);
		break;
	case POP3_VERB_RETR:
		cmd_retr(s, &cmd, false);
		break;
	case POP3_VERB_TOP:
		cmd_retr(s, &cmd, true);
		break;
	case POP3_VERB_DELE:
		cmd_dele(s, &cmd);
		break;
	case POP3_VERB_RSET:
		cmd_rset(s);
		break;
	case POP3_VERB_NOOP:
		reply(s, "+OK");
		break;
	case POP3_VERB_CAPA:
	case POP3_VERB_QUIT:
	case POP3_VERB_UNKNOWN:
		break;
	}
}

/* ---- input ---- */

static void line_too_long(struct pop3_session *s)
{
	if (s->state == POP3_STATE_SASL)
		enter_state(s, POP3_STATE_AUTHORIZATION);
	reply_error(s, "line too long");
}

/* Read one line; false when none is complete yet. A line over the limit
 * is answered at once and skipped up to its end. A LF alone ends a line
 * too, as it always has here. */
static bool read_line(struct pop3_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	bool auth =
	    s->state == POP3_STATE_SASL || lineio_starts_with(in, "AUTH ");
	size_t limit = auth ? POP3_AUTH_LINE_MAX : POP3_COMMAND_LINE_MAX;
	char line[POP3_AUTH_LINE_MAX];
	size_t line_len = 0;
	switch (lineio_read(in, LINEIO_END_CRLF_OR_LF, limit,
			    &s->discarding_line, line, &line_len)) {
	case LINEIO_NONE:
		return false;
	case LINEIO_TOO_LONG:
		line_too_long(s);
		return true;
	case LINEIO_SKIPPED:
		return true;
	case LINEIO_LINE:
		break;
	}
	if (s->state == POP3_STATE_SASL)
		sasl_plain(s, line, line_len);
	else
		dispatch(s, line, line_len);
	explicit_bzero(line, line_len);
	return true;
}

static bool reading_commands(const struct pop3_session *s)
{
	return s->state == POP3_STATE_AUTHORIZATION ||
	       s->state == POP3_STATE_SASL ||
	       s->state == POP3_STATE_TRANSACTION;
}

static void session_process(struct pop3_session *s)
{
	while (reading_commands(s) && read_line(s))
		;
	/* A client that sends without reading replies is paused. */
	if (reading_commands(s))
		transport_pause_if_backlogged(s->bev, &s->paused);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	session_process(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct pop3_session *s = arg;
	switch (s->state) {
	case POP3_STATE_CLOSING:
		session_free(s);
		return;
	case POP3_STATE_STLS:
		stls_begin(s);
		return;
	case POP3_STATE_SENDING:
		send_more(s);
		/* done: commands pipelined behind the RETR are waiting */
		if (s->state == POP3_STATE_TRANSACTION)
			session_process(s);
		return;
	default:
		break;
	}
	if (reading_commands(s) && transport_resume(s->bev, &s->paused))
		session_process(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct pop3_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		/* the TLS handshake is done */
		s->tls_established = true;
		metrics_tls_session(METRICS_INBOUND);
		log_event(LOG_LEVEL_INFO, "pop3_tls", LOG_SESSION(s),
			  LOG_S("version", transport_tls_version(s->bev)),
			  LOG_S("cipher", transport_tls_cipher(s->bev)));
		return;
	}
	if (s->tls && !s->tls_established) {
		s->end_reason = (what & BEV_EVENT_TIMEOUT)
				    ? "tls handshake timeout"
				    : "tls handshake failed";
	} else if (what & BEV_EVENT_TIMEOUT) {
		/* RFC 1939 §3: an idle session is closed without a word,
		 * and nothing is deleted. */
		s->end_reason = "timeout";
	} else if (s->end_reason == NULL) {
		s->end_reason =
		    (what & BEV_EVENT_EOF) ? "disconnected" : "error";
	}
	session_free(s);
}

/* Stop reading and end the session once the queued replies are out. */
static void session_close(struct pop3_session *s)
{
	if (s->state == POP3_STATE_CLOSING)
		return;
	enter_state(s, POP3_STATE_CLOSING);
	if (s->timer != NULL)
		evtimer_del(s->timer);
	transport_close(s->bev); /* on_write frees s, on a later turn */
}

static void session_free(struct pop3_session *s)
{
	struct pop3_server *p = s->server;
	if (s->send_fd != -1)
		(void)close(s->send_fd); /* read-only: nothing to lose */
	/* A session that ends without QUIT deletes nothing (RFC 1939 §6). */
	log_event(LOG_LEVEL_INFO, "pop3_disconnect", LOG_SESSION(s),
		  LOG_S("user", s->account),
		  LOG_S("reason", s->end_reason ? s->end_reason : "closed"),
		  LOG_I("retrieved", s->retrieved),
		  LOG_I("duration", time(NULL) - s->started));
	mailbox_release(s);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		p->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	p->session_count--;
	listener_release(p->listener, (const struct sockaddr *)&s->addr);
	bufferevent_free(s->bev);
	if (s->timer != NULL)
		event_free(s->timer);
	free(s->user);
	free(s->account);
	if (s->job != NULL)
		s->job->session = NULL; /* its result is dropped */
	free(s);
}

static struct pop3_session *
session_new(struct pop3_server *p, int fd, const struct sockaddr *addr,
	    socklen_t addrlen, enum listen_mode mode, const char *listen)
{
	struct server *srv = p->srv;
	struct pop3_session *s = calloc(1, sizeof *s);
	if (s == NULL) {
		close(fd);
		return NULL;
	}
	s->bev = transport_accept(srv->base, fd, mode == LISTEN_POP3S,
				  srv->tls_server);
	s->tls = s->bev != NULL && mode == LISTEN_POP3S;
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return NULL;
	}
	s->server = p;
	s->send_fd = -1;
	s->cur_fd = -1;
	s->started = time(NULL);
	if (addrlen > sizeof s->addr)
		addrlen = sizeof s->addr;
	memcpy(&s->addr, addr, addrlen);
	listener_address_text(addr, s->client, sizeof s->client);
	log_session_id(s->id);
	s->loopback = pop3_client_is_loopback(addr);

	s->next = p->sessions;
	if (p->sessions != NULL)
		p->sessions->prev = s;
	p->sessions = s;
	p->session_count++;

	set_callbacks(s);
	log_event(LOG_LEVEL_INFO, "pop3_connect", LOG_SESSION(s),
		  LOG_S("listen", listen));
	if (client_refused(s)) {
		reply(s, "-ERR [AUTH] too many failed logins from your "
			 "address, try again later");
		log_event(LOG_LEVEL_WARN, "rejected", LOG_SESSION(s),
			  LOG_S("reason", "auth_fail_limit"));
		s->end_reason = "auth_fail_limit";
		session_close(s);
		return s;
	}
	reply(s, "+OK facteur POP3 server ready");
	return s;
}

/* ---- listening ---- */

static bool on_accept(void *arg, int fd, const struct sockaddr *addr,
		      socklen_t addrlen, enum listen_mode mode,
		      const char *listen)
{
	return session_new(arg, fd, addr, addrlen, mode, listen) != NULL;
}

/* The same limits as SMTP, counted over the POP3 sessions. */
static void on_refuse(void *arg, enum listener_limit limit, char *line,
		      size_t size)
{
	(void)arg;
	bool total = limit == LISTENER_LIMIT_TOTAL;
	snprintf(line, size, "%s",
		 total ? "-ERR [SYS/TEMP] too many connections\r\n"
		       : "-ERR [SYS/TEMP] too many connections from your "
			 "address\r\n");
	log_event(LOG_LEVEL_WARN, "rejected",
		  LOG_S("reason", total ? "pop3 max_connections"
					: "pop3 max_connections_per_ip"));
}

struct pop3_server *pop3_server_new(struct server *srv, char *err,
				    size_t errlen)
{
	const struct config *cfg = srv->cfg;
	for (size_t i = 0; i < cfg->pop3_listen_count; i++) {
		const struct listen_addr *la = &cfg->pop3_listen[i];
		if (la->mode == LISTEN_POP3S && srv->tls_server == NULL) {
			snprintf(err, errlen,
				 "%s: pop3s needs tls_cert and tls_key",
				 la->text);
			return NULL;
		}
	}
	struct pop3_server *p = calloc(1, sizeof *p);
	if (p == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->srv = srv;
	const struct listener_owner owner = {
	    .accept = on_accept,
	    .refuse = on_refuse,
	    .arg = p,
	    .metrics = false, /* the connection metrics are SMTP's */
	};
	p->listener = listener_new(srv, owner, cfg->pop3_listen,
				   cfg->pop3_listen_count, err, errlen);
	if (p->listener == NULL) {
		free(p);
		return NULL;
	}
	return p;
}

int pop3_server_enable(struct pop3_server *p, char *err, size_t errlen)
{
	return p == NULL ? 0 : listener_enable(p->listener, err, errlen);
}

void pop3_server_disable(struct pop3_server *p)
{
	if (p != NULL)
		listener_disable(p->listener);
}

void pop3_server_shutdown(struct pop3_server *p)
{
	if (p == NULL)
		return;
	pop3_server_disable(p);
	struct pop3_session *s = p->sessions;
	while (s != NULL) {
		struct pop3_session *next = s->next;
		if (s->state == POP3_STATE_SENDING) {
			/* No room for a word in the middle of a message. */
			s->end_reason = "shutdown";
			session_free(s);
		} else if (s->state == POP3_STATE_STLS) {
			/* The client awaits a handshake: not a word in the
			 * clear after the +OK. */
			s->end_reason = "shutdown";
			session_close(s);
		} else if (s->state != POP3_STATE_CLOSING) {
			reply(s, "-ERR [SYS/TEMP] server shutting down");
			s->end_reason = "shutdown";
			session_close(s);
		}
		s = next;
	}
}

size_t pop3_sessions_count(const struct pop3_server *p)
{
	return p == NULL ? 0 : p->session_count;
}

void pop3_server_free(struct pop3_server *p)
{
	if (p == NULL)
		return;
	while (p->sessions != NULL) {
		if (p->sessions->end_reason == NULL)
			p->sessions->end_reason = "shutdown";
		session_free(p->sessions);
	}
	listener_free(p->listener);
	free(p);
}
