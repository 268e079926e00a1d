/*
 * The local submission socket (submit.h): bound at start like the SMTP
 * ports, listened on once the spool is recovered, each connection an
 * SMTP session of its own kind (smtp_session_new_local) that knows its
 * caller from the kernel, never from anything the caller says.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/listener.h>

#include "facteur/log.h"
#include "facteur/server.h"
#include "facteur/smtp_session.h"
#include "facteur/status_code.h"
#include "facteur/submit.h"

/* Local sessions are not counted by the network listeners' limits;
 * this bounds what local programs can hold open at once. */
#define SUBMIT_MAX_SESSIONS 256
#define SUBMIT_BACKLOG 64

struct submit {
	struct server *srv;
	struct sockaddr_un sun;
	int fd; /* bound; -1 once the listener owns it or it is closed */
	struct evconnlistener *listener;
	unsigned active;
};

int submit_socket_path(const struct config *cfg, char *buf, size_t len)
{
	int n;
	if (cfg->submit_socket != NULL &&
	    strcmp(cfg->submit_socket, "none") == 0)
		return 0;
	if (cfg->submit_socket != NULL)
		n = snprintf(buf, len, "%s", cfg->submit_socket);
	else
		n = snprintf(buf, len, "%s.submit", cfg->spool_dir);
	if (n < 0 || (size_t)n >= len ||
	    (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -1;
	return 1;
}

/* A socket file left by a daemon that is gone answers no connect; one
 * that answers belongs to a daemon still running. */
static bool served_by_another(const struct sockaddr_un *sun)
{
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe == -1)
		return false;
	bool answered =
	    connect(probe, (const struct sockaddr *)sun, sizeof *sun) == 0;
	close(probe);
	return answered;
}

/* The socket's own folder is made when it is missing (0755, searchable by
 * all), as a service manager's runtime folder would be: /run is emptied
 * at boot, and a host without systemd, or facteurd started by hand, has
 * nobody else to make /run/facteur. Only that last level: a missing
 * parent is a mistake in the path, not a folder to invent. */
static int make_folder(const char *path, char *err, size_t errlen)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const char *slash = strrchr(path, '/');
	if (slash == NULL || slash == path)
		return 0;
	size_t len = (size_t)(slash - path);
	memcpy(dir, path, len);
	dir[len] = '\0';
	if (mkdir(dir, 0755) == 0) {
		/* the umask may have taken bits the callers need */
		if (chmod(dir, 0755) == -1) {
			snprintf(err, errlen, "submit_socket %s: %s", dir,
				 strerror(errno));
			return -1;
		}
		log_event(LOG_LEVEL_INFO, "submit_folder_made",
			  LOG_S("path", dir));
	} else if (errno != EEXIST) {
		snprintf(err, errlen, "submit_socket %s: cannot make %s: %s",
			 path, dir, strerror(errno));
		return -1;
	}
	return 0;
}

static int bind_world_socket(struct submit *sub, char *err, size_t errlen)
{
	const char *path = sub->sun.sun_path;
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen,
				 "submit_socket %s exists and is not a socket",
				 path);
			return -1;
		}
		if (served_by_another(&sub->sun)) {
			snprintf(err, errlen,
				 "submit_socket %s: another facteurd serves it",
				 path);
			return -1;
		}
		if (unlink(path) == -1) {
			snprintf(err, errlen, "cannot remove %s: %s", path,
				 strerror(errno));
			return -1;
		}
	} else if (errno != ENOENT) {
		snprintf(err, errlen, "submit_socket %s: %s", path,
			 strerror(errno));
		return -1;
	}
	if (make_folder(path, err, errlen) == -1)
		return -1;
	sub->fd =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sub->fd == -1) {
		snprintf(err, errlen, "submit_socket: %s", strerror(errno));
		return -1;
	}
	/* Connecting needs write permission on the file: everybody's. */
	if (bind(sub->fd, (const struct sockaddr *)&sub->sun,
		 sizeof sub->sun) == -1 ||
	    chmod(path, 0666) == -1) {
		snprintf(err, errlen, "submit_socket %s: %s", path,
			 strerror(errno));
		close(sub->fd);
		sub->fd = -1;
		return -1;
	}
	return 0;
}

int submit_new(struct server *srv, struct submit **out, char *err,
	       size_t errlen)
{
	*out = NULL;
	struct submit *sub = calloc(1, sizeof *sub);
	if (sub == NULL) {
		snprintf(err, errlen, "submit_socket: out of memory");
		return -1;
	}
	sub->srv = srv;
	sub->fd = -1;
	sub->sun.sun_family = AF_UNIX;
	int rc = submit_socket_path(srv->cfg, sub->sun.sun_path,
				    sizeof sub->sun.sun_path);
	if (rc <= 0) {
		if (rc == -1)
			snprintf(err, errlen,
				 "submit_socket: path too long for a socket");
		free(sub);
		return rc;
	}
	if (bind_world_socket(sub, err, errlen) == -1) {
		free(sub);
		if (srv->cfg->submit_socket != NULL)
			return -1;
		/* The default place beside the spool may be out of reach (a
		 * container run as the daemon's account): local submission
		 * is then the direct write of root and that account. */
		log_event(LOG_LEVEL_WARN, "submit_error", LOG_S("reason", err),
			  LOG_S("hint", "set submit_socket, or none"));
		err[0] = '\0';
		return 0;
	}
	*out = sub;
	return 0;
}

static void on_session_end(void *arg)
{
	struct submit *sub = arg;
	sub->active--;
}

/* The caller's account name, or its uid in digits when it has none (a
 * container's process may run as a uid no passwd line names). The
 * look-up runs on the loop: local files, as on a mail host; a slow
 * directory service would be felt here. */
static void peer_user(uid_t uid, char *buf, size_t len)
{
	struct passwd pw, *found = NULL;
	char scratch[4096];
	if (getpwuid_r(uid, &pw, scratch, sizeof scratch, &found) == 0 &&
	    found != NULL && strlen(found->pw_name) < len) {
		snprintf(buf, len, "%s", found->pw_name);
		return;
	}
	snprintf(buf, len, "%lu", (unsigned long)uid);
}

/* Past the limit: one line, written at once (the socket's buffer is
 * empty), and the connection closed. */
static void refuse(struct submit *sub, int fd)
{
	char line[256];
	int n =
	    snprintf(line, sizeof line,
		     "421 %s %s Too many local submissions, try again "
		     "later\r\n",
		     status_code_str(STATUS_SHUTDOWN), sub->srv->cfg->hostname);
	if (n > 0 && write(fd, line, (size_t)n) == -1)
		errno = 0; /* the caller is gone: nothing to tell */
	close(fd);
	log_event(LOG_LEVEL_WARN, "rejected", LOG_S("client", "local"),
		  LOG_S("reason", "too many local submissions"));
}

static void on_accept(struct evconnlistener *ev, evutil_socket_t fd,
		      struct sockaddr *addr, int addrlen, void *arg)
{
	(void)ev;
	(void)addr;
	(void)addrlen;
	struct submit *sub = arg;
	if (sub->srv->stopping) {
		close(fd);
		return;
	}
	if (sub->active >= SUBMIT_MAX_SESSIONS) {
		refuse(sub, fd);
		return;
	}
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
		log_event(LOG_LEVEL_ERROR, "submit_error",
			  LOG_S("reason", strerror(errno)));
		close(fd);
		return;
	}
	struct smtp_local_peer peer = {
	    .uid = cred.uid,
	    .gid = cred.gid,
	    .pid = cred.pid,
	    .privileged = cred.uid == 0 || cred.uid == geteuid(),
	    .release = on_session_end,
	    .arg = sub,
	};
	peer_user(cred.uid, peer.user, sizeof peer.user);
	sub->active++;
	if (smtp_session_new_local(sub->srv, fd, &peer) == NULL)
		sub->active--;
}

static void on_accept_error(struct evconnlistener *ev, void *arg)
{
	(void)ev;
	(void)arg;
	log_event(LOG_LEVEL_ERROR, "submit_error",
		  LOG_S("reason", strerror(EVUTIL_SOCKET_ERROR())));
}

int submit_enable(struct submit *sub, char *err, size_t errlen)
{
	sub->listener =
	    evconnlistener_new(sub->srv->base, on_accept, sub,
			       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
			       SUBMIT_BACKLOG, sub->fd);
	if (sub->listener == NULL) {
		snprintf(err, errlen, "submit_socket %s: cannot listen: %s",
			 sub->sun.sun_path, strerror(errno));
		return -1;
	}
	sub->fd = -1; /* the listener's now */
	evconnlistener_set_error_cb(sub->listener, on_accept_error);
	return 0;
}

void submit_disable(struct submit *sub)
{
	if (sub == NULL)
		return;
	if (sub->listener != NULL)
		evconnlistener_free(sub->listener);
	sub->listener = NULL;
	if (sub->fd != -1)
		close(sub->fd);
	sub->fd = -1;
}

void submit_free(struct submit *sub)
{
	if (sub == NULL)
		return;
	submit_disable(sub);
	/* A daemon that dropped its privileges may no longer remove a file
	 * in the administrator's folder: the next start replaces it. */
	if (unlink(sub->sun.sun_path) == -1)
		errno = 0;
	free(sub);
}
