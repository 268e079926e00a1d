/*
 * The control socket (see control.h; the protocol is in
 * docs/operations.md). Each connection is a bufferevent on the loop: a
 * request line in, its whole reply queued in the output buffer. Memory
 * stays bounded whatever the client does: a request line is at most
 * CONTROL_LINE_MAX octets, no further request is read while a reply is
 * waiting to be read, and a client that neither sends nor reads for
 * CONTROL_TIMEOUT_SECONDS is cut off.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "facteur/control.h"
#include "facteur/control_proto.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"

#define CONTROL_SESSIONS_MAX 64
#define CONTROL_TIMEOUT_SECONDS 30
#define CONTROL_BACKLOG 16
/* Input held before reading stops: a few request lines. */
#define CONTROL_READ_HIGH (4 * CONTROL_LINE_MAX)
/* Requests are read again once the reply so far drains below this. */
#define CONTROL_OUTPUT_LOW (64 * 1024)
/* One reply larger than this (the queue listing of a huge queue) is cut
 * and ends in an error. */
#define CONTROL_OUTPUT_MAX (64 * 1024 * 1024)
/* What `show` reads of a message file to find its headers. */
#define CONTROL_HEADERS_MAX (64 * 1024)

struct control_session {
	struct control *ctl;
	struct bufferevent *bev;
	struct control_session *prev;
	struct control_session *next;
	bool eof;      /* the client sent everything it will send */
	bool closing;  /* flush the output, then free */
	bool overflow; /* the reply being built went past the bound */
};

struct control {
	struct server *srv;
	struct evconnlistener *listener;
	struct event *resume; /* accepting again after EMFILE */
	char *path;
	struct control_session *sessions;
	size_t session_count;
};

static void session_free(struct control_session *cs)
{
	struct control *ctl = cs->ctl;

	if (cs->prev != NULL)
		cs->prev->next = cs->next;
	else
		ctl->sessions = cs->next;
	if (cs->next != NULL)
		cs->next->prev = cs->prev;
	ctl->session_count--;
	bufferevent_free(cs->bev);
	free(cs);
}

/* No more requests: free once the output is written. May free cs. */
static void session_finish(struct control_session *cs)
{
	cs->closing = true;
	bufferevent_disable(cs->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(cs->bev)) == 0) {
		session_free(cs);
		return;
	}
	/* The write callback now runs only once everything is out. */
	bufferevent_setwatermark(cs->bev, EV_WRITE, 0, 0);
}

static void reply_add(struct control_session *cs, const char *s, size_t n)
{
	struct evbuffer *out = bufferevent_get_output(cs->bev);

	if (cs->overflow)
		return;
	if (evbuffer_get_length(out) + n + 1 > CONTROL_OUTPUT_MAX ||
	    evbuffer_add(out, s, n) == -1 || evbuffer_add(out, "\n", 1) == -1)
		cs->overflow = true;
}

static void reply_str(struct control_session *cs, const char *s)
{
	reply_add(cs, s, strlen(s));
}

/* The last line of a reply. */
static void reply_end(struct control_session *cs, const char *error)
{
	struct evbuffer *out = bufferevent_get_output(cs->bev);

	if (cs->overflow && error == NULL)
		error = "reply too large";
	cs->overflow = false;
	/* The final line is always written: it is small. */
	if (error != NULL)
		evbuffer_add_printf(out, "error %s\n", error);
	else
		evbuffer_add(out, "ok\n", 3);
}

/* A multi-line text of records (each ending in LF). */
static void reply_records(struct control_session *cs, const char *text,
			  size_t len)
{
	if (text == NULL) {
		cs->overflow = true;
		return;
	}
	if (len > 0 && text[len - 1] == '\n')
		len--; /* reply_add ends the last line */
	if (len > 0)
		reply_add(cs, text, len);
}

static void on_queue_entry(const struct spool_envelope *env, void *arg)
{
	struct control_session *cs = arg;

	if (cs->overflow)
		return;
	char *record = control_proto_queue_record(env);
	if (record == NULL) {
		cs->overflow = true;
		return;
	}
	reply_str(cs, record);
	free(record);
}

/* The header records of a queued message, from the spool. Reading a
 * bounded piece of a regular file does not wait for the disk in any way
 * that matters (ARCHITECTURE.md: only fsync does). */
static void reply_headers(struct control_session *cs,
			  const struct spool_envelope *env)
{
	struct spool_body body;
	char *buf = NULL;
	size_t len = 0;

	if (spool_body_open(cs->ctl->srv->spool, env, &body) == -1) {
		log_event(LOG_LEVEL_WARN, "control_error",
			  LOG_S("queue_id", env->id),
			  LOG_S("reason", strerror(errno)));
		return;
	}
	size_t want = body.length < CONTROL_HEADERS_MAX
			  ? (size_t)body.length
			  : CONTROL_HEADERS_MAX;
	buf = malloc(CONTROL_HEADERS_MAX);
	while (buf != NULL && len < want) {
		ssize_t n = pread(body.fd, buf + len, want - len,
				  (off_t)(body.offset + len));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	if (buf != NULL) {
		bool whole = len == body.length;
		size_t outlen = 0;
		char *records =
		    control_proto_header_records(buf, len, whole, &outlen);
		reply_records(cs, records, outlen);
		free(records);
	}
	(void)close(body.fd); /* read only: nothing is lost */
	free(buf);
}

static void cmd_show(struct control_session *cs, const char *id)
{
	const struct spool_envelope *env =
	    scheduler_find(cs->ctl->srv->scheduler, id);
	if (env == NULL) {
		reply_end(cs, "no such message");
		return;
	}
	size_t len = 0;
	char *records = control_proto_show_records(env, &len);
	reply_records(cs, records, len);
	free(records);
	reply_headers(cs, env);
	reply_end(cs, NULL);
}

/* The metrics without the HELP/TYPE comments: "name value" lines. */
static void cmd_stats(struct control_session *cs)
{
	size_t len = 0;
	char *text = metrics_format_alloc(&len);
	const char *p = text;
	const char *end = text ? text + len : NULL;

	if (text == NULL) {
		reply_end(cs, "out of memory");
		return;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (n > 0 && p[0] != '#')
			reply_add(cs, p, n);
		p += n + 1;
	}
	free(text);
	reply_end(cs, NULL);
}

static void cmd_pickup(struct control_session *cs, const char *id)
{
	errno = 0;
	if (scheduler_pickup(cs->ctl->srv->scheduler, id) == 0 ||
	    errno == EEXIST) {
		reply_end(cs, NULL);
		return;
	}
	reply_end(cs, errno == ENOENT || errno == 0 ? "no such message"
						    : strerror(errno));
}

static const char *command_name(enum control_command command)
{
	switch (command) {
	case CONTROL_QUEUE:
		return "queue";
	case CONTROL_SHOW:
		return "show";
	case CONTROL_FLUSH:
		return "flush";
	case CONTROL_DELETE:
		return "delete";
	case CONTROL_BOUNCE:
		return "bounce";
	case CONTROL_STATS:
		return "stats";
	case CONTROL_RELOAD:
		return "reload";
	case CONTROL_PICKUP:
		return "pickup";
	}
	return "?";
}

static void session_request(struct control_session *cs, const char *line,
			    size_t len)
{
	struct server *srv = cs->ctl->srv;
	struct scheduler *sched = srv->scheduler;
	struct control_request req;
	const char *error = NULL;

	if (control_proto_parse_request(line, len, &req, &error) == -1) {
		reply_end(cs, error);
		return;
	}
	/* What changes the queue or the settings is worth a log line. */
	enum log_level level = req.command == CONTROL_QUEUE ||
				       req.command == CONTROL_SHOW ||
				       req.command == CONTROL_STATS
				   ? LOG_LEVEL_DEBUG
				   : LOG_LEVEL_INFO;
	log_event(level, "control", LOG_S("command", command_name(req.command)),
		  LOG_S("queue_id", req.has_id ? req.id
				    : req.all  ? "all"
					       : NULL));
	switch (req.command) {
	case CONTROL_QUEUE:
		scheduler_foreach(sched, on_queue_entry, cs);
		reply_end(cs, NULL);
		break;
	case CONTROL_SHOW:
		cmd_show(cs, req.id);
		break;
	case CONTROL_FLUSH:
		if (!req.has_id)
			scheduler_flush(sched);
		else if (scheduler_flush_one(sched, req.id) == -1)
			error = "no such message";
		reply_end(cs, error);
		break;
	case CONTROL_DELETE: {
		size_t n = 1;
		if (req.all)
			n = scheduler_delete_all(sched);
		else if (scheduler_delete(sched, req.id) == -1)
			error = "no such message";
		if (error == NULL) {
			char text[64];
			snprintf(text, sizeof text, "deleted %zu", n);
			reply_str(cs, text);
		}
		reply_end(cs, error);
		break;
	}
	case CONTROL_BOUNCE:
		if (scheduler_bounce(sched, req.id) == -1)
			error = "no such message";
		reply_end(cs, error);
		break;
	case CONTROL_STATS:
		cmd_stats(cs);
		break;
	case CONTROL_RELOAD:
		if (srv->reload == NULL)
			error = "reload is not available";
		else if (srv->reload() == -1)
			error = "the new configuration was refused, the old "
				"one is kept (see the daemon's log)";
		reply_end(cs, error);
		break;
	case CONTROL_PICKUP:
		cmd_pickup(cs, req.id);
		break;
	}
}

/* Serve the complete request lines that have arrived, as long as the
 * replies are being read. May free cs. */
static void session_process(struct control_session *cs)
{
	struct evbuffer *in = bufferevent_get_input(cs->bev);
	struct evbuffer *out = bufferevent_get_output(cs->bev);
	char line[CONTROL_LINE_MAX];

	while (!cs->closing && evbuffer_get_length(out) < CONTROL_OUTPUT_LOW) {
		size_t avail = evbuffer_get_length(in);
		size_t eol_len = 0;
		struct evbuffer_ptr eol =
		    evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		size_t n;
		if (eol.pos >= 0)
			n = (size_t)eol.pos;
		else if (cs->eof && avail > 0)
			n = avail; /* a last line without its LF */
		else if (avail >= CONTROL_LINE_MAX)
			n = avail;
		else
			break;
		if (n >= CONTROL_LINE_MAX) {
			reply_end(cs, "line too long");
			session_finish(cs);
			return;
		}
		if (evbuffer_remove(in, line, n) != (int)n ||
		    evbuffer_drain(in, eol_len) == -1) {
			session_free(cs);
			return;
		}
		session_request(cs, line, n);
	}
	if (!cs->closing && cs->eof && evbuffer_get_length(in) == 0)
		session_finish(cs);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	session_process(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct control_session *cs = arg;

	(void)bev;
	if (cs->closing) {
		if (evbuffer_get_length(bufferevent_get_output(cs->bev)) == 0)
			session_free(cs);
		return;
	}
	session_process(cs); /* the reply drained: read on */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct control_session *cs = arg;

	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		/* Silent because it is reading its reply: the write timeout
		 * is the one that counts. */
		bufferevent_enable(bev, EV_READ);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		cs->eof = true;
		session_process(cs);
		return;
	}
	session_free(cs);
}

/* Only the daemon's own user (and root) may drive it; the socket's mode
 * says so too, this holds if the mode is ever widened. */
static bool peer_allowed(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
		return false;
	return cred.uid == 0 || cred.uid == geteuid();
}

static void refuse(evutil_socket_t fd, const char *text)
{
	/* Best effort on a fresh socket, whose buffer is empty. */
	if (send(fd, text, strlen(text), MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
		errno = 0;
	evutil_closesocket(fd);
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd,
		      struct sockaddr *sa, int salen, void *arg)
{
	struct control *ctl = arg;

	(void)listener;
	(void)sa;
	(void)salen;
	if (!peer_allowed(fd)) {
		log_event(LOG_LEVEL_WARN, "control_refused",
			  LOG_S("reason", "peer is not the daemon's user"));
		refuse(fd, "error permission denied\n");
		return;
	}
	if (ctl->session_count >= CONTROL_SESSIONS_MAX) {
		refuse(fd, "error too many control connections\n");
		return;
	}
	struct control_session *cs = calloc(1, sizeof *cs);
	struct bufferevent *bev =
	    bufferevent_socket_new(ctl->srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (cs == NULL || bev == NULL) {
		free(cs);
		if (bev != NULL)
			bufferevent_free(bev);
		else
			evutil_closesocket(fd);
		return;
	}
	cs->ctl = ctl;
	cs->bev = bev;
	cs->next = ctl->sessions;
	if (ctl->sessions != NULL)
		ctl->sessions->prev = cs;
	ctl->sessions = cs;
	ctl->session_count++;

	struct timeval timeout = {CONTROL_TIMEOUT_SECONDS, 0};
	bufferevent_setcb(bev, on_read, on_write, on_event, cs);
	bufferevent_setwatermark(bev, EV_READ, 0, CONTROL_READ_HIGH);
	bufferevent_setwatermark(bev, EV_WRITE, CONTROL_OUTPUT_LOW, 0);
	bufferevent_set_timeouts(bev, &timeout, &timeout);
	if (bufferevent_enable(bev, EV_READ | EV_WRITE) == -1)
		session_free(cs);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct control *ctl = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(ctl->listener);
}

/* Out of descriptors: pause accepting for a second rather than spin. */
static void on_accept_error(struct evconnlistener *listener, void *arg)
{
	struct control *ctl = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval pause = {1, 0};

	log_event(LOG_LEVEL_WARN, "control_error",
		  LOG_S("reason", evutil_socket_error_to_string(err)));
	evconnlistener_disable(listener);
	evtimer_add(ctl->resume, &pause);
}

/* Is a daemon answering on this socket? Non-blocking: a full backlog
 * (EAGAIN) means yes, a refusal means the file is stale. */
static bool socket_in_use(const struct sockaddr_un *sun)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return false;
	int rc = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
	bool used = rc == 0 || errno == EAGAIN || errno == EINPROGRESS;
	close(fd);
	return used;
}

/* Bind the socket file with mode 0600 from its first moment. */
static int bind_socket(const struct sockaddr_un *sun, char *err, size_t errlen)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "control socket: %s", strerror(errno));
		return -1;
	}
	/* The loop's only thread that makes files is this one. */
	mode_t old = umask(0177);
	int rc = bind(fd, (const struct sockaddr *)sun, sizeof *sun);
	int saved = errno;
	umask(old);
	if (rc == -1 || chmod(sun->sun_path, 0600) == -1) {
		if (rc != -1)
			saved = errno;
		snprintf(err, errlen, "control socket %s: %s", sun->sun_path,
			 strerror(saved));
		close(fd);
		return -1;
	}
	return fd;
}

struct control *control_new(struct server *srv, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat st;
	int n = snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s",
			 srv->cfg->spool_dir, CONTROL_SOCKET_NAME);

	if (n < 0 || (size_t)n >= sizeof sun.sun_path) {
		snprintf(err, errlen,
			 "control socket: %s/%s: path too long for a socket",
			 srv->cfg->spool_dir, CONTROL_SOCKET_NAME);
		return NULL;
	}
	if (lstat(sun.sun_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "%s exists and is not a socket",
				 sun.sun_path);
			return NULL;
		}
		if (socket_in_use(&sun)) {
			snprintf(err, errlen,
				 "%s: another facteurd serves this spool",
				 sun.sun_path);
			return NULL;
		}
		if (unlink(sun.sun_path) == -1 && errno != ENOENT) {
			snprintf(err, errlen, "cannot remove %s: %s",
				 sun.sun_path, strerror(errno));
			return NULL;
		}
	} else if (errno != ENOENT) {
		snprintf(err, errlen, "%s: %s", sun.sun_path, strerror(errno));
		return NULL;
	}

	struct control *ctl = calloc(1, sizeof *ctl);
	if (ctl == NULL || (ctl->path = strdup(sun.sun_path)) == NULL) {
		free(ctl);
		snprintf(err, errlen, "control socket: out of memory");
		return NULL;
	}
	ctl->srv = srv;
	int fd = bind_socket(&sun, err, errlen);
	if (fd == -1) {
		free(ctl->path);
		free(ctl);
		return NULL;
	}
	ctl->resume = evtimer_new(srv->base, on_resume, ctl);
	ctl->listener = ctl->resume == NULL
			    ? NULL
			    : evconnlistener_new(srv->base, on_accept, ctl,
						 LEV_OPT_CLOSE_ON_FREE |
						     LEV_OPT_CLOSE_ON_EXEC |
						     LEV_OPT_DISABLED,
						 CONTROL_BACKLOG, fd);
	if (ctl->listener == NULL) {
		snprintf(err, errlen, "control socket %s: cannot listen",
			 sun.sun_path);
		close(fd);
		if (unlink(sun.sun_path) == -1)
			errno = 0;
		if (ctl->resume != NULL)
			event_free(ctl->resume);
		free(ctl->path);
		free(ctl);
		return NULL;
	}
	evconnlistener_set_error_cb(ctl->listener, on_accept_error);
	return ctl;
}

void control_enable(struct control *ctl)
{
	if (evconnlistener_enable(ctl->listener) == -1)
		fatal("control socket: cannot watch for connections");
}

void control_free(struct control *ctl)
{
	if (ctl == NULL)
		return;
	while (ctl->sessions != NULL)
		session_free(ctl->sessions);
	evconnlistener_free(ctl->listener);
	event_free(ctl->resume);
	/* Gone already is fine: the socket only had to stop answering. */
	if (unlink(ctl->path) == -1)
		errno = 0;
	free(ctl->path);
	free(ctl);
}
