/*
 * facteurd: options, start-up, signals and the loop.
 *
 * Start-up order matters: the configuration (and every file it names)
 * is checked before any port is bound, so a broken one exits 78 having
 * touched nothing; ports are bound before privileges are dropped, but
 * the mail ports listen (a connect before is refused) only once the
 * spool is recovered and the control socket answers, so that whoever
 * reaches port 25 can also run facteurctl. The spool is recovered on
 * the worker while the loop already answers /healthz and /readyz (503)
 * and signals; the service manager hears READY=1 after that.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/auth.h"
#include "facteur/auth_limit.h"
#include "facteur/config.h"
#include "facteur/control.h"
#include "facteur/deliver.h"
#include "facteur/dkim.h"
#include "facteur/dns.h"
#include "facteur/iothread.h"
#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/mailfolder.h"
#include "facteur/mailowner.h"
#include "facteur/metrics.h"
#include "facteur/policy.h"
#include "facteur/pop3.h"
#include "facteur/relay.h"
#include "facteur/scheduler.h"
#include "facteur/sdnotify.h"
#include "facteur/server.h"
#include "facteur/smtp_session.h"
#include "facteur/spool.h"
#include "facteur/submit.h"
#include "facteur/tls.h"
#include "facteur/tlsrpt.h"
#include "facteur/worker.h"

extern char **environ;

#define EXIT_STARTUP 1
/* A listening port (SMTP, POP3 or metrics) cannot be bound: taken by
 * another program, or not ours to bind. EX_UNAVAILABLE from sysexits(3),
 * its own status so that a supervisor stops rather than retrying
 * (RestartPreventExitStatus= in the systemd unit). */
#define EXIT_CANNOT_LISTEN 69
#define DRAIN_LIMIT_SECONDS 7 /* SPEC.md §7: exit within 10 s, with margin */
/* Clients and accounts whose failed logins are remembered: a few MiB
 * (about 25 MiB with the longest account names), however many addresses
 * an attacker uses. */
#define AUTH_LIMIT_ENTRIES 65536
/* Clients whose messages are counted (max_messages_per_ip): about 4 MiB
 * of 64-octet entries; past it the oldest windows are forgotten. */
#define MESSAGE_RATE_ENTRIES 65536

/* What a configuration builds: swapped as a whole on reload. */
struct settings {
	struct config *cfg;
	struct auth_users *users;
	struct policy *policy;
	SSL_CTX *tls_server; /* NULL without tls_cert/tls_key */
	struct dkim_keys *dkim;
};

static struct server srv;
static struct pop3_server *pop3;
static struct control *control;
static struct submit *submit; /* NULL: submit_socket = none */
static struct metrics_http *metrics_http;
static const char *config_path;
static struct event *drain_check;
static struct event *drain_limit;
/* $NOTIFY_SOCKET: set when a service manager waits for READY=1. */
static const char *notify_socket;
static enum metrics_readiness readiness = METRICS_STARTING;
/* The status to exit with when start-up fails on the loop. */
static int exit_status;

/* Tell the service manager, if there is one. A failure is logged, not
 * fatal: the mail is served either way. */
static void notify(const char *state)
{
	if (sdnotify_send(notify_socket, state) == -1)
		log_event(LOG_LEVEL_WARN, "notify_error",
			  LOG_S("socket", notify_socket),
			  LOG_S("reason", strerror(errno)));
}

static void log_cannot_listen(const char *reason);

static void warn_hostname(const struct config *cfg)
{
	const char *why = config_hostname_warning(cfg);
	if (why != NULL)
		log_event(LOG_LEVEL_WARN, "config_warning",
			  LOG_S("key", "hostname"),
			  LOG_S("value", cfg->hostname), LOG_S("reason", why));
}

static void settings_free(struct settings *st)
{
	policy_free(st->policy);
	auth_users_free(st->users);
	config_free(st->cfg);
	if (st->tls_server != NULL)
		SSL_CTX_free(st->tls_server);
	dkim_keys_free(st->dkim);
}

/* Load the configuration and the files it names; on failure every error
 * is in `errors` and nothing is kept. */
static int settings_load(struct settings *st, struct config_errors *errors)
{
	memset(st, 0, sizeof *st);
	st->cfg = config_load(config_path, environ, errors);
	if (st->cfg == NULL)
		return -1;
	/* each milter's series from the first scrape */
	for (size_t i = 0; i < st->cfg->milter_count; i++)
		metrics_milter_slot(st->cfg->milters[i].name);
	if (st->cfg->users_file != NULL) {
		st->users = auth_users_load(st->cfg->users_file, errors);
		if (st->users == NULL) {
			settings_free(st);
			return -1;
		}
	}
	st->policy = policy_new(st->cfg, st->users, errors);
	if (st->policy == NULL) {
		settings_free(st);
		return -1;
	}
	if (st->cfg->tls_cert != NULL && st->cfg->tls_key != NULL) {
		char err[512];
		st->tls_server = tls_server_context(
		    st->cfg->tls_cert, st->cfg->tls_key, err, sizeof err);
		if (st->tls_server == NULL) {
			config_errors_add(errors, "tls_cert: %s", err);
			settings_free(st);
			return -1;
		}
	}
	/* Signing jobs on the worker hold their own key references. */
	st->dkim = dkim_keys_load(st->cfg->dkim_sign, st->cfg->dkim_sign_count,
				  errors);
	if (st->dkim == NULL) {
		settings_free(st);
		return -1;
	}
	return 0;
}

static void print_errors(const struct config_errors *errors)
{
	for (size_t i = 0; i < errors->count; i++)
		fprintf(stderr, "facteurd: %s\n", errors->messages[i]);
	if (errors->count == 0)
		fprintf(stderr, "facteurd: configuration error\n");
}

static void usage(void)
{
	fprintf(stderr, "usage: facteurd [-n] [-V] [-c FILE]\n");
}

static bool dns_settings_equal(const struct config *a, const struct config *b)
{
	if (a->dns_from_resolv_conf != b->dns_from_resolv_conf ||
	    a->dns_server_count != b->dns_server_count)
		return false;
	for (size_t i = 0; i < a->dns_server_count; i++)
		if (strcmp(a->dns_servers[i].text, b->dns_servers[i].text) != 0)
			return false;
	return true;
}

static int reload_settings_now(void);

/* A reload (SIGHUP, facteurctl reload) told to the service manager:
 * RELOADING=1 with the time it began, then READY=1 whatever the outcome
 * (the old configuration goes on serving), the outcome in STATUS=. Before
 * the first READY=1 there is nothing to tell. */
static int reload_settings(void)
{
	bool tell = readiness == METRICS_READY;
	if (tell) {
		char state[128];
		snprintf(state, sizeof state,
			 "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading "
			 "the configuration",
			 (unsigned long long)sdnotify_monotonic_usec());
		notify(state);
	}
	int rc = reload_settings_now();
	if (tell)
		notify(rc == 0 ? "READY=1\nSTATUS=configuration reloaded; "
				 "accepting mail"
			       : "READY=1\nSTATUS=new configuration refused "
				 "(see the log); running on the previous one");
	return rc;
}

/* A new configuration replaces the old one only if it is whole. */
static int reload_settings_now(void)
{
	struct settings st;
	struct config_errors errors = {0};
	if (settings_load(&st, &errors) == -1) {
		for (size_t i = 0; i < errors.count; i++)
			log_event(LOG_LEVEL_ERROR, "reload_error",
				  LOG_S("reason", errors.messages[i]));
		log_event(LOG_LEVEL_ERROR, "reload_failed",
			  LOG_S("reason", "configuration kept as it was"));
		config_errors_clear(&errors);
		return -1;
	}
	char err[512];
	SSL_CTX *client =
	    tls_client_context(st.cfg->tls_ca_file, err, sizeof err);
	if (client == NULL)
		log_event(LOG_LEVEL_WARN, "tls_error", LOG_S("reason", err));
	if (!dns_settings_equal(srv.cfg, st.cfg))
		log_event(LOG_LEVEL_WARN, "reload",
			  LOG_S("reason", "dns_servers changes take effect at "
					  "the next start"));
	/* Attempts under way hold their own reference to the old context. */
	if (srv.tls_client != NULL)
		SSL_CTX_free(srv.tls_client);
	srv.tls_client = client;
	struct settings old = {srv.cfg, srv.users, srv.policy, srv.tls_server,
			       srv.dkim};
	srv.cfg = st.cfg;
	srv.users = st.users;
	srv.policy = st.policy;
	srv.tls_server = st.tls_server;
	srv.dkim = st.dkim;
	settings_free(&old);
	log_setup(srv.cfg->log_format, srv.cfg->log_level);
	iothread_flush_by_filesystem(srv.io,
				     srv.cfg->flush_method == FLUSH_SYNCFS);
	listener_reload(srv.listener, srv.cfg->listen, srv.cfg->listen_count);
	log_event(LOG_LEVEL_INFO, "reloaded",
		  LOG_S("config", srv.cfg->source ? srv.cfg->source : ""));
	warn_hostname(srv.cfg);
	relay_read_credentials(srv.cfg);
	return 0;
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	reload_settings();
}

#define LAG_PROBE_NSEC 100000000L /* 100 ms */

static struct event *lag_probe;
static struct timespec lag_probe_due;

static void lag_probe_arm(void)
{
	struct timeval period = {0, LAG_PROBE_NSEC / 1000};
	clock_gettime(CLOCK_MONOTONIC, &lag_probe_due);
	lag_probe_due.tv_nsec += LAG_PROBE_NSEC;
	if (lag_probe_due.tv_nsec >= 1000000000L) {
		lag_probe_due.tv_sec++;
		lag_probe_due.tv_nsec -= 1000000000L;
	}
	evtimer_add(lag_probe, &period);
}

/* A timer due every 100 ms: how late it fires is how long the loop was
 * busy elsewhere (issue 7: the loop must not stall). */
static void on_lag_probe(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double late = (double)(now.tv_sec - lag_probe_due.tv_sec) +
		      (double)(now.tv_nsec - lag_probe_due.tv_nsec) / 1e9;
	metrics_observe_loop_lag(late > 0 ? late : 0);
	lag_probe_arm();
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	/* Recovery owns the spool until it is done: not interrupted. */
	if (readiness != METRICS_STARTING &&
	    smtp_server_sessions(srv.smtp) == 0 &&
	    pop3_sessions_count(pop3) == 0 &&
	    (srv.scheduler == NULL || scheduler_idle(srv.scheduler)) &&
	    iothread_pending(srv.io) == 0) {
		event_base_loopexit(srv.base, NULL);
		return;
	}
	struct timeval tick = {0, 50 * 1000};
	evtimer_add(drain_check, &tick);
}

static void on_drain_limit(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	/* Whatever is still in flight was never acknowledged, or is in the
	 * spool already: leaving now loses nothing. */
	log_event(LOG_LEVEL_WARN, "stopped",
		  LOG_S("reason", "sessions still open at the time limit"),
		  LOG_I("sessions", smtp_server_sessions(srv.smtp)));
	_exit(0);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (srv.stopping)
		return;
	srv.stopping = true;
	log_event(LOG_LEVEL_INFO, "stopping",
		  LOG_S("signal", sig == SIGINT ? "INT" : "TERM"),
		  LOG_I("sessions", smtp_server_sessions(srv.smtp)));
	notify("STOPPING=1\nSTATUS=stopping: finishing the sessions under way");
	if (readiness == METRICS_READY)
		readiness = METRICS_DRAINING;
	metrics_http_set_readiness(metrics_http, METRICS_DRAINING);
	listener_disable(srv.listener);
	submit_disable(submit);
	pop3_server_disable(pop3);
	pop3_server_shutdown(pop3);
	smtp_server_shutdown(srv.smtp);
	if (srv.scheduler != NULL)
		scheduler_stop(srv.scheduler);
	drain_check = evtimer_new(srv.base, on_drain_check, NULL);
	drain_limit = evtimer_new(srv.base, on_drain_limit, NULL);
	struct timeval now = {0, 0}, limit = {DRAIN_LIMIT_SECONDS, 0};
	evtimer_add(drain_check, &now);
	evtimer_add(drain_limit, &limit);
}

/*
 * Spool recovery, run on the worker. Until its done callback the loop
 * leaves the spool alone: no mail port listens, the control socket does
 * not accept and the scheduler does not exist yet, so the thread has the
 * spool to itself. The envelopes found wait here for the loop.
 */
struct recovery {
	struct spool *spool;
	struct spool_envelope **found;
	size_t count, cap;
	bool out_of_memory;
	long live; /* spool_recover's result */
};

static void recovery_keep(struct spool_envelope *env, void *arg)
{
	struct recovery *r = arg;
	if (r->count == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 256;
		struct spool_envelope **grown =
		    realloc(r->found, cap * sizeof *grown);
		if (grown == NULL) {
			r->out_of_memory = true;
			spool_envelope_free(env);
			return;
		}
		r->found = grown;
		r->cap = cap;
	}
	r->found[r->count++] = env;
}

static void recovery_run(void *arg)
{
	struct recovery *r = arg;
	r->live = spool_recover(r->spool, recovery_keep, r);
}

static void recovery_free(struct recovery *r)
{
	for (size_t i = 0; i < r->count; i++)
		if (r->found[i] != NULL)
			spool_envelope_free(r->found[i]);
	free(r->found);
	free(r);
}

static void start_failed(int status)
{
	exit_status = status;
	event_base_loopbreak(srv.base);
}

/* Back on the loop: hand the queue to the scheduler, then open the doors
 * (control socket, then the mail ports) and say so. */
static void recovery_done(void *arg)
{
	struct recovery *r = arg;
	if (r->live < 0 || r->out_of_memory) {
		log_event(
		    LOG_LEVEL_ERROR, "startup_error",
		    LOG_S("reason", r->out_of_memory
					? "out of memory reading the spool"
					: "cannot read the spool"));
		recovery_free(r);
		start_failed(EXIT_STARTUP);
		return;
	}
	const struct spool_recovery *rec = spool_last_recovery(srv.spool);
	log_event(rec->orphaned || rec->unreadable ? LOG_LEVEL_WARN
						   : LOG_LEVEL_INFO,
		  "recovered", LOG_I("live", rec->live),
		  LOG_I("uncommitted", rec->uncommitted),
		  LOG_I("orphaned", rec->orphaned), LOG_I("done", rec->done),
		  LOG_I("truncated", rec->truncated),
		  LOG_I("unreadable", rec->unreadable));
	srv.scheduler = scheduler_new(&srv);
	srv.tlsrpt = tlsrpt_new(&srv);
	if (srv.scheduler == NULL || srv.tlsrpt == NULL)
		fatal("out of memory");
	for (size_t i = 0; i < r->count; i++) {
		scheduler_enqueue(srv.scheduler, r->found[i],
				  SCHEDULER_RECOVERED);
		r->found[i] = NULL;
	}
	long queued = r->live;
	recovery_free(r);
	readiness = METRICS_READY;
	if (srv.stopping) {
		/* SIGTERM came during recovery: the drain ends it now. */
		readiness = METRICS_DRAINING;
		scheduler_stop(srv.scheduler);
		return;
	}
	char err[512];
	control_enable(control);
	if (listener_enable(srv.listener, err, sizeof err) == -1 ||
	    (submit != NULL && submit_enable(submit, err, sizeof err) == -1) ||
	    pop3_server_enable(pop3, err, sizeof err) == -1) {
		log_cannot_listen(err);
		start_failed(EXIT_CANNOT_LISTEN);
		return;
	}
	metrics_http_set_readiness(metrics_http, METRICS_READY);
	log_event(LOG_LEVEL_INFO, "started", LOG_S("version", FACTEUR_VERSION),
		  LOG_S("hostname", srv.cfg->hostname),
		  LOG_I("queued", queued));
	char state[160];
	snprintf(state, sizeof state,
		 "READY=1\nSTATUS=accepting mail; %ld messages queued at start",
		 queued);
	notify(state);
}

/* Ten thousand sessions need ten thousand descriptors. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Become `pw`, keeping mailbox_owner, when set, as the saved uid and gid:
 * what lets the daemon take that account's identity for the calls that
 * write mailboxes (mailowner.h) with no capability kept. */
static int become(const struct config *cfg, const struct passwd *pw)
{
	if (cfg->mailbox_owner == NULL)
		return setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1 ? -1
									    : 0;
	return setresgid(pw->pw_gid, pw->pw_gid, cfg->mailbox_gid) == -1 ||
		       setresuid(pw->pw_uid, pw->pw_uid, cfg->mailbox_uid) == -1
		   ? -1
		   : 0;
}

/* Started as root with `user` set: give the spool to that user, then
 * become it. Ports are bound already. */
static int drop_privileges(const struct config *cfg)
{
	if (geteuid() != 0 || cfg->user == NULL ||
	    strcmp(cfg->user, "root") == 0)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
			  LOG_S("user", cfg->user),
			  LOG_S("reason", "no such user"));
		return -1;
	}
	if (mailfolder_mkdirs(cfg->spool_dir) == -1 ||
	    chown(cfg->spool_dir, pw->pw_uid, pw->pw_gid) == -1 ||
	    initgroups(pw->pw_name, pw->pw_gid) == -1 ||
	    become(cfg, pw) == -1) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
			  LOG_S("user", cfg->user),
			  LOG_S("reason", strerror(errno)));
		return -1;
	}
	log_event(LOG_LEVEL_INFO, "privileges_dropped",
		  LOG_S("user", cfg->user));
	return 0;
}

/* The one line an operator needs when a port cannot be bound: which
 * entry, why, and the exit status a supervisor will see. */
static void log_cannot_listen(const char *reason)
{
	log_event(LOG_LEVEL_ERROR, "startup_error", LOG_S("reason", reason),
		  LOG_I("exit_status", EXIT_CANNOT_LISTEN));
}

int main(int argc, char **argv)
{
	bool check_only = false;
	int opt;
	while ((opt = getopt(argc, argv, "c:nVh")) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 'n':
			check_only = true;
			break;
		case 'V':
			printf("facteurd %s\n", FACTEUR_VERSION);
			return 0;
		default:
			usage();
			return opt == 'h' ? 0 : CONFIG_EX_CONFIG;
		}
	}
	if (optind != argc) {
		usage();
		return CONFIG_EX_CONFIG;
	}

	struct settings st;
	struct config_errors errors = {0};
	if (settings_load(&st, &errors) == -1) {
		print_errors(&errors);
		config_errors_clear(&errors);
		return CONFIG_EX_CONFIG;
	}
	if (check_only) {
		config_print(st.cfg, stdout);
		const char *why = config_hostname_warning(st.cfg);
		if (why != NULL)
			fprintf(stderr, "facteurd: warning: hostname %s %s\n",
				st.cfg->hostname, why);
		settings_free(&st);
		return 0;
	}
	srv.cfg = st.cfg;
	srv.users = st.users;
	srv.policy = st.policy;
	srv.tls_server = st.tls_server;
	srv.dkim = st.dkim;
	srv.reload = reload_settings;
	log_setup(srv.cfg->log_format, srv.cfg->log_level);
	warn_hostname(srv.cfg);
	relay_read_credentials(srv.cfg);
	notify_socket = getenv("NOTIFY_SOCKET");
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);
	/* A write past a file size limit must fail with EFBIG, not kill. */
	signal(SIGXFSZ, SIG_IGN);

	char err[512];
	srv.base = event_base_new();
	if (srv.base == NULL)
		fatal("event_base_new failed");
	srv.smtp = smtp_server_new();
	if (srv.smtp == NULL)
		fatal("out of memory");
	srv.listener =
	    listener_new(&srv, listener_smtp_owner(&srv), srv.cfg->listen,
			 srv.cfg->listen_count, err, sizeof err);
	if (srv.listener == NULL ||
	    submit_new(&srv, &submit, err, sizeof err) == -1) {
		log_cannot_listen(err);
		return EXIT_CANNOT_LISTEN;
	}
	pop3 = pop3_server_new(&srv, err, sizeof err);
	if (pop3 == NULL) {
		log_cannot_listen(err);
		return EXIT_CANNOT_LISTEN;
	}
	if (srv.cfg->metrics_listen != NULL) {
		metrics_http = metrics_http_new(
		    srv.base, srv.cfg->metrics_listen, err, sizeof err);
		if (metrics_http == NULL) {
			log_cannot_listen(err);
			return EXIT_CANNOT_LISTEN;
		}
	}
	if (drop_privileges(srv.cfg) == -1)
		return EXIT_STARTUP;
	/* Before any thread: they all inherit the identity it checks. */
	if (mailowner_init(srv.cfg->mailbox_owner != NULL, srv.cfg->mailbox_uid,
			   srv.cfg->mailbox_gid, srv.cfg->mailbox_mode) == -1) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
			  LOG_S("mailbox_owner", srv.cfg->mailbox_owner),
			  LOG_S("reason", "cannot act as the mailbox owner: "
					  "start facteurd as root or as that "
					  "account"));
		return CONFIG_EX_CONFIG;
	}
	srv.io = iothread_new(srv.base);
	if (srv.io == NULL)
		fatal("cannot start the I/O thread");
	iothread_flush_by_filesystem(srv.io,
				     srv.cfg->flush_method == FLUSH_SYNCFS);
	srv.deliver = deliver_new(srv.base, srv.io);
	if (srv.deliver == NULL)
		fatal("out of memory");
	srv.worker = worker_new(srv.base);
	srv.auth_limit = auth_limit_new(AUTH_LIMIT_ENTRIES);
	srv.message_rate = auth_limit_new(MESSAGE_RATE_ENTRIES);
	if (srv.worker == NULL || srv.auth_limit == NULL ||
	    srv.message_rate == NULL)
		fatal("cannot start the worker threads");
	srv.spool =
	    spool_open(srv.base, srv.io, srv.cfg->spool_dir, err, sizeof err);
	if (srv.spool == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
			  LOG_S("reason", err));
		return EXIT_STARTUP;
	}
	srv.dns = dns_new(srv.base, srv.cfg, err, sizeof err);
	if (srv.dns == NULL)
		log_event(LOG_LEVEL_WARN, "dns_error", LOG_S("reason", err));
	srv.tls_client =
	    tls_client_context(srv.cfg->tls_ca_file, err, sizeof err);
	if (srv.tls_client == NULL)
		log_event(LOG_LEVEL_WARN, "tls_error", LOG_S("reason", err));
	control = control_new(&srv, err, sizeof err);
	if (control == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
			  LOG_S("reason", err));
		return EXIT_STARTUP;
	}
	struct recovery *recovery = calloc(1, sizeof *recovery);
	if (recovery == NULL)
		fatal("out of memory");
	recovery->spool = srv.spool;

	struct event *sigterm = evsignal_new(srv.base, SIGTERM, on_stop, NULL);
	struct event *sigint = evsignal_new(srv.base, SIGINT, on_stop, NULL);
	struct event *sighup = evsignal_new(srv.base, SIGHUP, on_reload, NULL);
	if (sigterm == NULL || sigint == NULL || sighup == NULL ||
	    evsignal_add(sigterm, NULL) == -1 ||
	    evsignal_add(sigint, NULL) == -1 ||
	    evsignal_add(sighup, NULL) == -1)
		fatal("cannot install signal handlers");

	lag_probe = evtimer_new(srv.base, on_lag_probe, NULL);
	if (lag_probe == NULL)
		fatal("out of memory");
	lag_probe_arm();

	notify("STATUS=recovering the spool");
	if (worker_run(srv.worker, recovery_run, recovery_done, recovery) == -1)
		fatal("out of memory");

	event_base_dispatch(srv.base);

	if (exit_status == 0)
		log_event(LOG_LEVEL_INFO, "stopped", LOG_S("reason", "signal"));
	/* Password checks and mailbox scans still out report to their
	 * sessions while those are still there. */
	worker_free(srv.worker);
	event_free(lag_probe);
	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	if (drain_check != NULL)
		event_free(drain_check);
	if (drain_limit != NULL)
		event_free(drain_limit);
	control_free(control);
	submit_free(submit);
	metrics_http_free(metrics_http);
	pop3_server_free(pop3);
	tlsrpt_free(srv.tlsrpt); /* before the resolver it may be asking */
	srv.tlsrpt = NULL;
	scheduler_free(srv.scheduler);
	dns_free(srv.dns);
	if (srv.tls_client != NULL)
		SSL_CTX_free(srv.tls_client);
	spool_close(srv.spool);
	iothread_free(srv.io);
	deliver_free(srv.deliver); /* after the I/O thread's last completion */
	auth_limit_free(srv.auth_limit);
	auth_limit_free(srv.message_rate);
	listener_free(srv.listener);
	smtp_server_free(srv.smtp);
	struct settings last = {srv.cfg, srv.users, srv.policy, srv.tls_server,
				srv.dkim};
	settings_free(&last);
	event_base_free(srv.base);
	return exit_status;
}
