/*
 * facteurd: options, start-up, signals and the loop.
 *
 * Start-up order matters: the configuration (and every file it names)
 * is checked before any port is bound, so a broken one exits 78 having
 * touched nothing; ports are bound before privileges are dropped; the
 * spool is recovered before the first client is accepted.
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
#include "facteur/dns.h"
#include "facteur/iothread.h"
#include "facteur/listener.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/policy.h"
#include "facteur/pop3.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/smtp_session.h"
#include "facteur/spool.h"
#include "facteur/tls.h"
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

/* What a configuration builds: swapped as a whole on reload. */
struct settings {
	struct config *cfg;
	struct auth_users *users;
	struct policy *policy;
	SSL_CTX *tls_server; /* NULL without tls_cert/tls_key */
};

static struct server srv;
static struct pop3_server *pop3;
static struct control *control;
static struct metrics_http *metrics_http;
static const char *config_path;
static struct event *drain_check;
static struct event *drain_limit;

static void settings_free(struct settings *st)
{
	policy_free(st->policy);
	auth_users_free(st->users);
	config_free(st->cfg);
	if (st->tls_server != NULL)
		SSL_CTX_free(st->tls_server);
}

/* Load the configuration and the files it names; on failure every error
 * is in `errors` and nothing is kept. */
static int settings_load(struct settings *st, struct config_errors *errors)
{
	memset(st, 0, sizeof *st);
	st->cfg = config_load(config_path, environ, errors);
	if (st->cfg == NULL)
		return -1;
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
		st->tls_server = tls_server_context(st->cfg->tls_cert,
		                                    st->cfg->tls_key, err,
		                                    sizeof err);
		if (st->tls_server == NULL) {
			config_errors_add(errors, "tls_cert: %s", err);
			settings_free(st);
			return -1;
		}
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

/* A new configuration replaces the old one only if it is whole. */
static int reload_settings(void)
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
	SSL_CTX *client = tls_client_context(st.cfg->tls_ca_file, err, sizeof err);
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
	struct settings old = {srv.cfg, srv.users, srv.policy, srv.tls_server};
	srv.cfg = st.cfg;
	srv.users = st.users;
	srv.policy = st.policy;
	srv.tls_server = st.tls_server;
	settings_free(&old);
	log_setup(srv.cfg->log_format, srv.cfg->log_level);
	iothread_flush_by_filesystem(srv.io,
	                             srv.cfg->flush_method == FLUSH_SYNCFS);
	listener_reload(srv.listener, srv.cfg->listen, srv.cfg->listen_count);
	log_event(LOG_LEVEL_INFO, "reloaded",
	          LOG_S("config", srv.cfg->source ? srv.cfg->source : ""));
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
	if (smtp_sessions_count() == 0 && pop3_sessions_count(pop3) == 0 &&
	    scheduler_idle(srv.scheduler) && iothread_pending(srv.io) == 0) {
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
	          LOG_I("sessions", smtp_sessions_count()));
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
	          LOG_I("sessions", smtp_sessions_count()));
	listener_disable(srv.listener);
	pop3_server_disable(pop3);
	pop3_server_shutdown(pop3);
	smtp_sessions_shutdown();
	scheduler_stop(srv.scheduler);
	drain_check = evtimer_new(srv.base, on_drain_check, NULL);
	drain_limit = evtimer_new(srv.base, on_drain_limit, NULL);
	struct timeval now = {0, 0}, limit = {DRAIN_LIMIT_SECONDS, 0};
	evtimer_add(drain_check, &now);
	evtimer_add(drain_limit, &limit);
}

static void on_recovered(struct spool_envelope *env, void *arg)
{
	(void)arg;
	scheduler_add(srv.scheduler, env, true);
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

/* Started as root with `user` set: give the spool to that user, then
 * become it. Ports are bound already. */
static int drop_privileges(const struct config *cfg)
{
	if (geteuid() != 0 || cfg->user == NULL ||
	    strcmp(cfg->user, "root") == 0)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error", LOG_S("user", cfg->user),
		          LOG_S("reason", "no such user"));
		return -1;
	}
	if (deliver_mkdirs(cfg->spool_dir) == -1 ||
	    chown(cfg->spool_dir, pw->pw_uid, pw->pw_gid) == -1 ||
	    initgroups(pw->pw_name, pw->pw_gid) == -1 ||
	    setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1) {
		log_event(LOG_LEVEL_ERROR, "startup_error", LOG_S("user", cfg->user),
		          LOG_S("reason", strerror(errno)));
		return -1;
	}
	log_event(LOG_LEVEL_INFO, "privileges_dropped", LOG_S("user", cfg->user));
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
		const char *const *later = config_keys_not_in_effect(st.cfg);
		for (; *later != NULL; later++)
			fprintf(stderr,
			        "facteurd: %s: set, but not in effect in this "
			        "version yet\n",
			        *later);
		settings_free(&st);
		return 0;
	}
	srv.cfg = st.cfg;
	srv.users = st.users;
	srv.policy = st.policy;
	srv.tls_server = st.tls_server;
	srv.reload = reload_settings;
	log_setup(srv.cfg->log_format, srv.cfg->log_level);
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);
	/* A write past a file size limit must fail with EFBIG, not kill. */
	signal(SIGXFSZ, SIG_IGN);

	char err[512];
	srv.base = event_base_new();
	if (srv.base == NULL)
		fatal("event_base_new failed");
	srv.listener = listener_new(&srv, listener_smtp_owner(&srv),
	                            srv.cfg->listen, srv.cfg->listen_count, err,
	                            sizeof err);
	if (srv.listener == NULL) {
		log_cannot_listen(err);
		return EXIT_CANNOT_LISTEN;
	}
	pop3 = pop3_server_new(&srv, err, sizeof err);
	if (pop3 == NULL) {
		log_cannot_listen(err);
		return EXIT_CANNOT_LISTEN;
	}
	if (srv.cfg->metrics_listen != NULL) {
		metrics_http = metrics_http_new(srv.base, srv.cfg->metrics_listen,
		                                err, sizeof err);
		if (metrics_http == NULL) {
			log_cannot_listen(err);
			return EXIT_CANNOT_LISTEN;
		}
	}
	if (drop_privileges(srv.cfg) == -1)
		return EXIT_STARTUP;
	srv.io = iothread_new(srv.base);
	if (srv.io == NULL)
		fatal("cannot start the I/O thread");
	iothread_flush_by_filesystem(srv.io,
	                             srv.cfg->flush_method == FLUSH_SYNCFS);
	srv.worker = worker_new(srv.base);
	srv.auth_limit = auth_limit_new(AUTH_LIMIT_ENTRIES);
	if (srv.worker == NULL || srv.auth_limit == NULL)
		fatal("cannot start the worker threads");
	srv.spool = spool_open(srv.base, srv.io, srv.cfg->spool_dir, err,
	                       sizeof err);
	if (srv.spool == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error", LOG_S("reason", err));
		return EXIT_STARTUP;
	}
	srv.dns = dns_new(srv.base, srv.cfg, err, sizeof err);
	if (srv.dns == NULL)
		log_event(LOG_LEVEL_WARN, "dns_error", LOG_S("reason", err));
	srv.tls_client = tls_client_context(srv.cfg->tls_ca_file, err,
	                                    sizeof err);
	if (srv.tls_client == NULL)
		log_event(LOG_LEVEL_WARN, "tls_error", LOG_S("reason", err));
	srv.scheduler = scheduler_new(&srv);
	if (srv.scheduler == NULL)
		fatal("out of memory");
	control = control_new(&srv, err, sizeof err);
	if (control == NULL) {
		log_event(LOG_LEVEL_ERROR, "startup_error", LOG_S("reason", err));
		return EXIT_STARTUP;
	}
	long found = spool_recover(srv.spool, on_recovered, NULL);
	if (found < 0) {
		log_event(LOG_LEVEL_ERROR, "startup_error",
		          LOG_S("reason", "cannot read the spool"));
		return EXIT_STARTUP;
	}
	const struct spool_recovery *rec = spool_last_recovery(srv.spool);
	log_event(rec->orphaned || rec->unreadable ? LOG_LEVEL_WARN
	                                           : LOG_LEVEL_INFO,
	          "recovered", LOG_I("live", rec->live),
	          LOG_I("uncommitted", rec->uncommitted),
	          LOG_I("orphaned", rec->orphaned), LOG_I("done", rec->done),
	          LOG_I("truncated", rec->truncated),
	          LOG_I("unreadable", rec->unreadable));

	struct event *sigterm = evsignal_new(srv.base, SIGTERM, on_stop, NULL);
	struct event *sigint = evsignal_new(srv.base, SIGINT, on_stop, NULL);
	struct event *sighup = evsignal_new(srv.base, SIGHUP, on_reload, NULL);
	if (sigterm == NULL || sigint == NULL || sighup == NULL ||
	    evsignal_add(sigterm, NULL) == -1 || evsignal_add(sigint, NULL) == -1 ||
	    evsignal_add(sighup, NULL) == -1)
		fatal("cannot install signal handlers");

	lag_probe = evtimer_new(srv.base, on_lag_probe, NULL);
	if (lag_probe == NULL)
		fatal("out of memory");
	lag_probe_arm();

	listener_enable(srv.listener);
	pop3_server_enable(pop3);
	log_event(LOG_LEVEL_INFO, "started", LOG_S("version", FACTEUR_VERSION),
	          LOG_S("hostname", srv.cfg->hostname),
	          LOG_I("queued", found));

	event_base_dispatch(srv.base);

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
	metrics_http_free(metrics_http);
	pop3_server_free(pop3);
	scheduler_free(srv.scheduler);
	dns_free(srv.dns);
	if (srv.tls_client != NULL)
		SSL_CTX_free(srv.tls_client);
	spool_close(srv.spool);
	iothread_free(srv.io);
	auth_limit_free(srv.auth_limit);
	listener_free(srv.listener);
	struct settings last = {srv.cfg, srv.users, srv.policy, srv.tls_server};
	settings_free(&last);
	event_base_free(srv.base);
	return 0;
}
