/*
 * AUTH (RFC 4954) on the inbound session: PLAIN and LOGIN, the password
 * checked on the worker (crypt(3) costs milliseconds by design), a
 * failed login answered after a delay that grows with each failure, and
 * the auth_limit tables that refuse clients and accounts under attack.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "facteur/ascii.h"
#include "facteur/auth.h"
#include "facteur/auth_limit.h"
#include "facteur/password_check.h"
#include "facteur/server.h"
#include "facteur/smtp_session_internal.h"
#include "facteur/worker.h"

#define AUTH_FAILURES_MAX 5 /* then 421 */
#define AUTH_ADDRESS_MAX PASSWORD_CHECK_USER_MAX
#define AUTH_PASSWORD_MAX PASSWORD_CHECK_PASSWORD_MAX

/* Has this client failed too many logins lately, in any session? */
bool smtp_auth_client_refused(const struct smtp_session *s)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	smtp_session_client_key(s, key);
	return auth_limit_client_refused(s->srv->auth_limit, key, time(NULL),
					 cfg->auth_fail_limit,
					 cfg->auth_fail_window, NULL);
}

static void auth_succeeded(struct smtp_session *s, const char *user)
{
	free(s->auth_user);
	s->auth_user = strdup(user);
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	if (s->auth_user == NULL) {
		smtp_session_reply(s, "454 %s Out of memory",
				   status_code_str(STATUS_LOCAL_ERROR));
		return;
	}
	metrics.auth_attempts[METRICS_AUTH_SUCCESS]++;
	log_event(LOG_LEVEL_INFO, "auth", LOG_SESSION(s),
		  LOG_S("user", s->auth_user), LOG_S("result", "ok"));
	smtp_session_reply(s, "235 %s Authentication successful",
			   status_code_str(STATUS_AUTH_OK));
}

static void on_auth_delay(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_session *s = arg;
	smtp_session_enter_state(s, SMTP_STATE_COMMAND);
	if (s->auth_failures >= AUTH_FAILURES_MAX ||
	    smtp_auth_client_refused(s)) {
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		smtp_session_reply(s, "421 %s %s Error: too many failed logins",
				   status_code_str(STATUS_SECURITY_TRANSIENT),
				   cfg_of(s)->hostname);
		smtp_session_close(s);
		smtp_session_flush(s);
		return;
	}
	smtp_session_reply(s, "535 %s Authentication credentials invalid",
			   status_code_str(STATUS_AUTH_FAILED));
	bufferevent_enable(s->bev, EV_READ);
	smtp_session_process(s);
}

/* A failed login is answered after a delay that grows with each failure,
 * so that guessing passwords costs time; input waits meanwhile. */
static void auth_failed(struct smtp_session *s, const char *user)
{
	s->auth_failures++;
	metrics.auth_attempts[METRICS_AUTH_FAILURE]++;
	log_event(LOG_LEVEL_WARN, "auth", LOG_SESSION(s), LOG_S("user", user),
		  LOG_S("result", "failed"),
		  LOG_I("failures", s->auth_failures));
	if (s->auth_timer == NULL)
		s->auth_timer = evtimer_new(s->srv->base, on_auth_delay, s);
	if (s->auth_timer == NULL) {
		smtp_session_close(s);
		return;
	}
	smtp_session_enter_state(s, SMTP_STATE_AUTH_DELAY);
	bufferevent_disable(s->bev, EV_READ);
	struct timeval delay = {s->auth_failures < 5 ? s->auth_failures : 5, 0};
	evtimer_add(s->auth_timer, &delay);
}

/* A password check on the worker, and the session it reports to. */
struct auth_job {
	struct smtp_session *session; /* NULL once the session is gone */
	struct password_check check;
};

static void auth_job_free(struct auth_job *job)
{
	password_check_clear(&job->check);
	free(job);
}

void smtp_auth_job_detach(struct auth_job *job)
{
	job->session = NULL;
}

static void auth_job_run(void *arg)
{
	struct auth_job *job = arg;
	password_check_run(&job->check);
}

static void auth_job_done(void *arg)
{
	struct auth_job *job = arg;
	struct smtp_session *s = job->session;
	if (s == NULL) {
		auth_job_free(job); /* the client left meanwhile */
		return;
	}
	s->auth_job = NULL;
	if (job->check.ok) {
		auth_succeeded(s, job->check.user);
		bufferevent_enable(s->bev, EV_READ);
		auth_job_free(job);
		smtp_session_process(s);
		return;
	}
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	smtp_session_client_key(s, key);
	/* Only accounts that exist are counted: guesses at names that do
	 * not would only crowd the table. */
	auth_limit_failure(s->srv->auth_limit, key,
			   job->check.hash != NULL ? job->check.user : NULL,
			   time(NULL), cfg->auth_fail_window);
	auth_failed(s, job->check.user);
	auth_job_free(job);
	smtp_session_flush(s);
}

/* Check the password on the worker (crypt(3) costs milliseconds by
 * design); input waits, other sessions go on. An account under attack
 * is refused to clients that have failed logins themselves. */
static void auth_check(struct smtp_session *s, const char *user,
		       const char *password)
{
	const struct config *cfg = cfg_of(s);
	uint8_t key[16];
	smtp_session_client_key(s, key);
	if (!auth_limit_account_open(s->srv->auth_limit, key, user, time(NULL),
				     cfg->auth_fail_limit,
				     cfg->auth_fail_window)) {
		smtp_session_enter_state(s, SMTP_STATE_COMMAND);
		metrics.auth_attempts[METRICS_AUTH_FAILURE]++;
		count_rejection(METRICS_REJECT_AUTH_FAIL_LIMIT);
		log_event(LOG_LEVEL_WARN, "auth", LOG_SESSION(s),
			  LOG_S("user", user), LOG_S("result", "refused"),
			  LOG_S("reason", "auth_fail_limit"));
		smtp_session_reply(
		    s,
		    "454 %s Too many failed logins for this account, "
		    "try again later",
		    status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	struct auth_job *job = calloc(1, sizeof *job);
	if (job != NULL)
		job->session = s;
	if (job == NULL ||
	    password_check_init(&job->check, s->srv->users, user, password) ==
		-1 ||
	    worker_run(s->srv->worker, auth_job_run, auth_job_done, job) ==
		-1) {
		if (job != NULL)
			auth_job_free(job);
		smtp_session_enter_state(s, SMTP_STATE_COMMAND);
		smtp_session_reply(s, "454 %s Temporary authentication failure",
				   status_code_str(STATUS_SECURITY_TRANSIENT));
		return;
	}
	s->auth_job = job;
	smtp_session_enter_state(s, SMTP_STATE_AUTH_CHECK);
	bufferevent_disable(s->bev, EV_READ);
}

/* One SASL response (the initial one, or a line after a 334). */
void smtp_auth_response(struct smtp_session *s, const char *line, size_t len)
{
	if (len == 1 && line[0] == '*') {
		smtp_session_enter_state(s, SMTP_STATE_COMMAND);
		smtp_session_reply_error(s, 501, STATUS_SECURITY_PERMANENT,
					 "Authentication cancelled");
		return;
	}
	char user[AUTH_ADDRESS_MAX + 1];
	char password[AUTH_PASSWORD_MAX];
	unsigned char decoded[AUTH_PASSWORD_MAX];
	int n;
	switch (s->auth_step) {
	case AUTH_PLAIN:
		if (auth_sasl_plain_decode(line, len, user, sizeof user,
					   password, sizeof password) == -1) {
			smtp_session_enter_state(s, SMTP_STATE_COMMAND);
			smtp_session_reply_error(s, 501, STATUS_SYNTAX_ERROR,
						 "Invalid AUTH PLAIN response");
			return;
		}
		auth_check(s, user, password);
		explicit_bzero(password, sizeof password);
		return;
	case AUTH_LOGIN_USER:
		n = auth_base64_decode(line, len, decoded, sizeof decoded - 1);
		if (n < 0 || n > AUTH_ADDRESS_MAX ||
		    memchr(decoded, '\0', (size_t)n) != NULL) {
			smtp_session_enter_state(s, SMTP_STATE_COMMAND);
			smtp_session_reply_error(s, 501, STATUS_SYNTAX_ERROR,
						 "Invalid AUTH LOGIN response");
			return;
		}
		free(s->auth_login_user);
		s->auth_login_user = strndup((const char *)decoded, (size_t)n);
		s->auth_step = AUTH_LOGIN_PASSWORD;
		smtp_session_reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		return;
	case AUTH_LOGIN_PASSWORD:
		n = auth_base64_decode(line, len, decoded, sizeof decoded - 1);
		if (n < 0 || s->auth_login_user == NULL ||
		    memchr(decoded, '\0', (size_t)n) != NULL) {
			smtp_session_enter_state(s, SMTP_STATE_COMMAND);
			smtp_session_reply_error(s, 501, STATUS_SYNTAX_ERROR,
						 "Invalid AUTH LOGIN response");
			return;
		}
		decoded[n] = '\0';
		snprintf(user, sizeof user, "%s", s->auth_login_user);
		free(s->auth_login_user);
		s->auth_login_user = NULL;
		auth_check(s, user, (const char *)decoded);
		explicit_bzero(decoded, sizeof decoded);
		return;
	}
}

void smtp_auth_cmd(struct smtp_session *s, const struct smtp_command *cmd)
{
	if (s->srv->users == NULL) {
		smtp_session_reply(s, "502 %s Authentication not enabled",
				   status_code_str(STATUS_BAD_COMMAND));
		return;
	}
	if (!smtp_session_tls_active(s)) {
		count_rejection(METRICS_REJECT_TLS_REQUIRED);
		smtp_session_reply(s,
				   "538 %s Encryption required for requested "
				   "authentication mechanism",
				   status_code_str(STATUS_ENCRYPTION_REQUIRED));
		return;
	}
	if (s->helo == NULL || !s->esmtp) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Send EHLO first");
		return;
	}
	if (s->auth_user != NULL) {
		smtp_session_reply_error(s, 503, STATUS_BAD_COMMAND,
					 "Already authenticated");
		return;
	}
	if (s->tx.active) {
		smtp_session_reply_error(
		    s, 503, STATUS_BAD_COMMAND,
		    "AUTH not allowed during a mail transaction");
		return;
	}
	const char *mech = cmd->arg;
	size_t mech_len = 0;
	while (mech_len < cmd->arglen && mech[mech_len] != ' ')
		mech_len++;
	const char *initial = NULL;
	size_t initial_len = 0;
	if (mech_len < cmd->arglen) {
		initial = mech + mech_len + 1;
		initial_len = cmd->arglen - mech_len - 1;
	}
	if (ascii_ieq(mech, mech_len, "PLAIN")) {
		s->auth_step = AUTH_PLAIN;
	} else if (ascii_ieq(mech, mech_len, "LOGIN")) {
		s->auth_step = AUTH_LOGIN_USER;
	} else {
		smtp_session_reply(
		    s, "504 %s Unrecognized authentication mechanism",
		    status_code_str(STATUS_BAD_ARGS));
		return;
	}
	smtp_session_enter_state(s, SMTP_STATE_AUTH);
	if (initial != NULL) {
		/* "=" is an empty initial response (RFC 4954 §4). */
		if (initial_len == 1 && initial[0] == '=')
			initial_len = 0;
		smtp_auth_response(s, initial, initial_len);
		return;
	}
	if (s->auth_step == AUTH_PLAIN)
		smtp_session_reply(s, "334 ");
	else
		smtp_session_reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
}
