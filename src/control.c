/*
 * The control socket (see control.h; the protocol is in
 * docs/operations.md). Each connection is a bufferevent on the loop: a
 * request line in, its reply queued in the output buffer. A walk over
 * the queue (queue, summary, and delete, bounce, hold and release by
 * selector) is streamed: a slice of the queue per loop
 * turn, at most LISTING_SLICE_USEC of work, and no more until the
 * client has read what was written, so a listing of a million messages
 * neither stalls the loop nor fills memory. Memory stays bounded
 * whatever the client does: a request line is at most CONTROL_LINE_MAX
 * octets, no further request is read while a reply is waiting to be
 * read, and a client that neither sends nor reads for
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
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "facteur/control.h"
#include "facteur/control_proto.h"
#include "facteur/domain_suspend.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/queue_summary.h"
#include "facteur/scheduler.h"
#include "facteur/server.h"
#include "facteur/spool.h"
#include "facteur/tlsrpt.h"

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
/* The work of a listing in one loop turn, and how often the clock is
 * read to know (every so many messages visited). A session's reply
 * waits up to a slice while a walk runs, so the slice is that much of
 * the loop's lag: 1 ms, for a few hundred more loop turns in a summary
 * of 1,000,000 messages (docs/performance.md has the runs). */
#define LISTING_SLICE_USEC 1000
#define LISTING_CLOCK_EVERY 64

/* A listing under way (queue, summary): where it is in the queue. */
struct control_listing {
	struct control_request req;
	struct scheduler_cursor *cursor; /* NULL once the walk is over */
	struct queue_summary *summary;	 /* summary only */
	size_t rows, row;		 /* summary rows, the next to send */
	size_t listed;			 /* messages sent, for --limit */
	time_t now;
	/* The next slice: a timer of zero, which libevent runs only after
	 * polling the sockets again (an event made active from its own
	 * callback would run at once, before any socket). */
	struct event *resume;
};

struct control_session {
	struct control *ctl;
	struct bufferevent *bev;
	struct control_session *prev;
	struct control_session *next;
	bool eof;      /* the client sent everything it will send */
	bool closing;  /* flush the output, then free */
	bool overflow; /* the reply being built went past the bound */
	struct control_listing *listing; /* a reply being streamed */
};

struct control {
	struct server *srv;
	struct evconnlistener *listener;
	struct event *resume; /* accepting again after EMFILE */
	char *path;
	struct control_session *sessions;
	size_t session_count;
};

static void listing_free(struct control_listing *ls)
{
	if (ls == NULL)
		return;
	scheduler_cursor_free(ls->cursor);
	queue_summary_free(ls->summary);
	if (ls->resume != NULL)
		event_free(ls->resume);
	free(ls);
}

static void session_free(struct control_session *cs)
{
	struct control *ctl = cs->ctl;

	listing_free(cs->listing);
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

static void session_process(struct control_session *cs);

/* A record made of a keyword and a text freed here (NULL: out of
 * memory). */
static void reply_owned(struct control_session *cs, const char *keyword,
			char *text)
{
	struct evbuffer *out = bufferevent_get_output(cs->bev);

	if (text == NULL)
		cs->overflow = true;
	else if (!cs->overflow && keyword != NULL &&
		 evbuffer_add(out, keyword, strlen(keyword)) == -1)
		cs->overflow = true;
	else if (text != NULL)
		reply_str(cs, text);
	free(text);
}

/* The listing is over: its last line, then the next request. May free
 * cs. */
static void listing_end(struct control_session *cs, const char *error)
{
	listing_free(cs->listing);
	cs->listing = NULL;
	reply_end(cs, error);
	if (bufferevent_enable(cs->bev, EV_READ) == -1) {
		session_free(cs);
		return;
	}
	session_process(cs);
}

/* What the operator's commands do, and their words in the reply. */
static const struct {
	enum control_command command;
	enum scheduler_action action;
	const char *verb, *done;
} acts[] = {
    {CONTROL_DELETE, SCHEDULER_DELETE, "delete", "deleted"},
    {CONTROL_BOUNCE, SCHEDULER_BOUNCE, "bounce", "bounced"},
    {CONTROL_HOLD, SCHEDULER_HOLD, "hold", "held"},
    {CONTROL_RELEASE, SCHEDULER_RELEASE, "release", "released"},
};

static size_t act_index(enum control_command command)
{
	size_t a = 0;
	while (a + 1 < sizeof acts / sizeof acts[0] &&
	       acts[a].command != command)
		a++;
	return a;
}

static bool listing_acts(const struct control_listing *ls)
{
	return ls->req.command != CONTROL_QUEUE &&
	       ls->req.command != CONTROL_SUMMARY;
}

/* The end of a walk that acted: "VERB N", or "would VERB N" for a dry
 * run; a selector that picked nothing is an error. */
static const char *listing_act_end(struct control_session *cs)
{
	const struct control_listing *ls = cs->listing;
	const struct control_request *req = &ls->req;
	size_t a = act_index(req->command);
	char text[64];

	if (ls->listed == 0 && !req->dry_run && !req->all)
		return "no message matches";
	snprintf(text, sizeof text, "%s%s %zu", req->dry_run ? "would " : "",
		 req->dry_run ? acts[a].verb : acts[a].done, ls->listed);
	reply_str(cs, text);
	return NULL;
}

static void listing_visit(struct control_session *cs,
			  const struct spool_envelope *env)
{
	struct control_listing *ls = cs->listing;
	bool held = (env->flags & SPOOL_FLAG_HELD) != 0;

	if (listing_acts(ls)) {
		if (!ls->req.all &&
		    !control_proto_selects(&ls->req.select, env, held, ls->now))
			return;
		ls->listed++;
		if (!ls->req.dry_run)
			scheduler_cursor_act(
			    ls->cursor,
			    acts[act_index(ls->req.command)].action);
		return;
	}
	if (ls->summary != NULL) {
		if (queue_summary_add(ls->summary, env) == -1)
			cs->overflow = true;
		return;
	}
	if (!control_proto_selects(&ls->req.select, env, held, ls->now))
		return;
	ls->listed++;
	if (ls->req.json)
		reply_owned(cs, "json ",
			    control_proto_queue_json(env, held, ls->now));
	else
		reply_owned(cs, NULL, control_proto_queue_record(env));
}

/* The walk is over: the suspended domains without a message get their
 * row too, so that what is suspended shows. */
static void summary_finish(struct control_session *cs)
{
	struct control_listing *ls = cs->listing;
	const struct domain_suspend *ds =
	    scheduler_suspensions(cs->ctl->srv->scheduler);
	const char *domain;

	for (size_t i = 0; (domain = domain_suspend_at(ds, i)) != NULL; i++)
		if (domain_suspend_active(ds, domain, ls->now, NULL) &&
		    queue_summary_include(ls->summary, domain) == -1)
			cs->overflow = true;
	ls->rows = queue_summary_finish(ls->summary);
}

/* One summary row: its suspension from the scheduler's table, its pause
 * from the relay. */
static void listing_row(struct control_session *cs)
{
	struct control_listing *ls = cs->listing;
	struct control_summary_row *row =
	    queue_summary_row(ls->summary, ls->row++);
	time_t until = 0;

	row->suspended = domain_suspend_active(
	    scheduler_suspensions(cs->ctl->srv->scheduler), row->domain,
	    ls->now, &until);
	row->suspended_until = until;
	row->paused = scheduler_domain_paused(cs->ctl->srv->scheduler,
					      row->domain, NULL);
	reply_owned(cs, NULL, control_proto_summary_record(row));
}

/* Go on at the next turn of the loop, after the sockets had their turn.
 * -1 when the timer cannot be set. */
static int listing_later(struct control_session *cs)
{
	static const struct timeval now = {0, 0};

	return evtimer_add(cs->listing->resume, &now);
}

static long long usec_since(const struct timespec *start)
{
	struct timespec now;

	if (clock_gettime(CLOCK_MONOTONIC, &now) == -1)
		return LISTING_SLICE_USEC; /* cannot tell: yield */
	return (long long)(now.tv_sec - start->tv_sec) * 1000000 +
	       (now.tv_nsec - start->tv_nsec) / 1000;
}

/*
 * Move the listing on: visit messages until the slice's time is spent
 * (then go on at the next loop turn, after the other events) or the
 * output holds CONTROL_OUTPUT_LOW (then go on once the client read it:
 * on_write). May free cs.
 */
static void listing_step(struct control_session *cs)
{
	struct control_listing *ls = cs->listing;
	struct evbuffer *out = bufferevent_get_output(cs->bev);
	struct timespec start;
	size_t visited = 0;

	if (clock_gettime(CLOCK_MONOTONIC, &start) == -1) {
		listing_end(cs, strerror(errno));
		return;
	}
	while (evbuffer_get_length(out) < CONTROL_OUTPUT_LOW) {
		if (cs->overflow) {
			listing_end(cs, "out of memory");
			return;
		}
		if (++visited % LISTING_CLOCK_EVERY == 0 &&
		    usec_since(&start) >= LISTING_SLICE_USEC) {
			if (listing_later(cs) == -1)
				listing_end(cs, "cannot schedule the listing");
			return;
		}
		const struct spool_envelope *env = NULL;
		if (ls->cursor != NULL &&
		    (ls->req.limit == 0 || ls->listed < ls->req.limit))
			env = scheduler_cursor_next(ls->cursor);
		if (env != NULL) {
			listing_visit(cs, env);
			continue;
		}
		if (ls->cursor != NULL) {
			scheduler_cursor_free(ls->cursor);
			ls->cursor = NULL;
			if (ls->summary != NULL)
				summary_finish(cs);
		}
		if (ls->summary != NULL && ls->row < ls->rows) {
			listing_row(cs);
			continue;
		}
		listing_end(cs, listing_acts(ls) ? listing_act_end(cs) : NULL);
		return;
	}
}

static void on_listing_resume(evutil_socket_t fd, short what, void *arg)
{
	struct control_session *cs = arg;

	(void)fd;
	(void)what;
	if (cs->listing != NULL)
		listing_step(cs);
}

/* Start streaming a listing; no request is read until it is over. */
static void listing_start(struct control_session *cs,
			  const struct control_request *req)
{
	struct control_listing *ls = calloc(1, sizeof *ls);
	struct scheduler *sched = cs->ctl->srv->scheduler;

	if (ls == NULL) {
		reply_end(cs, "out of memory");
		return;
	}
	ls->req = *req;
	ls->now = time(NULL);
	ls->cursor = scheduler_cursor_new(sched);
	ls->resume = evtimer_new(cs->ctl->srv->base, on_listing_resume, cs);
	if (req->command == CONTROL_SUMMARY)
		ls->summary = queue_summary_new();
	if (ls->cursor == NULL || ls->resume == NULL ||
	    (req->command == CONTROL_SUMMARY && ls->summary == NULL)) {
		listing_free(ls);
		reply_end(cs, "out of memory");
		return;
	}
	/* The first slice runs from the loop too, never inside the
	 * request's own processing. */
	cs->listing = ls;
	if (listing_later(cs) == -1) {
		cs->listing = NULL;
		listing_free(ls);
		reply_end(cs, "cannot schedule the listing");
		return;
	}
	if (bufferevent_disable(cs->bev, EV_READ) == -1)
		cs->overflow = true; /* ends the listing at its first slice */
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
	size_t want = body.length < CONTROL_HEADERS_MAX ? (size_t)body.length
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
	case CONTROL_SUMMARY:
		return "summary";
	case CONTROL_HOLD:
		return "hold";
	case CONTROL_RELEASE:
		return "release";
	case CONTROL_SUSPEND:
		return "suspend";
	case CONTROL_RESUME:
		return "resume";
	case CONTROL_TLSRPT:
		return "tlsrpt";
	}
	return "?";
}

/* delete, bounce, hold, release of one message: "VERB 1" (a bounce
 * answers nothing more, as it always did). The other forms walk the
 * queue as a listing does. */
static void cmd_act(struct control_session *cs,
		    const struct control_request *req)
{
	size_t a = act_index(req->command);
	char text[64];

	if (!req->has_id) {
		listing_start(cs, req);
		return;
	}
	if (scheduler_act(cs->ctl->srv->scheduler, req->id, acts[a].action) ==
	    -1) {
		reply_end(cs, "no such message");
		return;
	}
	if (req->command != CONTROL_BOUNCE) {
		snprintf(text, sizeof text, "%s 1", acts[a].done);
		reply_str(cs, text);
	}
	reply_end(cs, NULL);
}

static void cmd_suspend(struct control_session *cs,
			const struct control_request *req)
{
	struct scheduler *sched = cs->ctl->srv->scheduler;
	const char *domain = req->select.domain;
	int rc;

	if (req->command == CONTROL_SUSPEND)
		rc = scheduler_suspend(sched, domain,
				       req->seconds ? time(NULL) + req->seconds
						    : 0);
	else
		rc = scheduler_resume(sched, domain);
	if (rc == 1)
		reply_end(cs, "that domain is not suspended");
	else if (rc == -1)
		reply_end(cs, errno == ENOSPC ? "too many suspended domains"
					      : strerror(errno));
	else
		reply_end(cs, NULL);
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
	enum log_level level =
	    req.command == CONTROL_QUEUE || req.command == CONTROL_SHOW ||
		    req.command == CONTROL_STATS ||
		    req.command == CONTROL_SUMMARY || req.dry_run
		? LOG_LEVEL_DEBUG
		: LOG_LEVEL_INFO;
	log_event(
	    level, "control", LOG_S("command", command_name(req.command)),
	    LOG_S("queue_id", req.has_id ? req.id
			      : req.all	 ? "all"
					 : NULL),
	    LOG_S("domain", req.select.has_domain ? req.select.domain : NULL),
	    LOG_S("sender", req.select.has_sender ? req.select.sender : NULL));
	switch (req.command) {
	case CONTROL_QUEUE:
	case CONTROL_SUMMARY:
		listing_start(cs, &req);
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
	case CONTROL_DELETE:
	case CONTROL_BOUNCE:
	case CONTROL_HOLD:
	case CONTROL_RELEASE:
		cmd_act(cs, &req);
		break;
	case CONTROL_SUSPEND:
	case CONTROL_RESUME:
		cmd_suspend(cs, &req);
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
	case CONTROL_TLSRPT:
		if (srv->cfg->tlsrpt_from == NULL)
			error = "tlsrpt_from is not set";
		else
			tlsrpt_send_now(srv->tlsrpt);
		reply_end(cs, error);
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

	while (!cs->closing && cs->listing == NULL &&
	       evbuffer_get_length(out) < CONTROL_OUTPUT_LOW) {
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
	if (!cs->closing && cs->listing == NULL && cs->eof &&
	    evbuffer_get_length(in) == 0)
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
	if (cs->listing != NULL)
		listing_step(cs); /* the listing drained: go on */
	else
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
