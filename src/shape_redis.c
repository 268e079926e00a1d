/*
 * Fleet-wide shaping limits in Redis (see shape_redis.h): one async
 * hiredis connection on the loop, two Lua scripts, the leases this
 * instance holds (renewed on a timer), and reconnection with backoff.
 */
#include "facteur/shape_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/shape.h"

/* A lease lives this long unless renewed, every third of it. */
#define LEASE_TTL_MS 30000
/* Reconnection: the first delay, doubled up to the last. */
#define RECONNECT_MIN_MS 250
#define RECONNECT_MAX_MS 5000
/* How soon to ask again when the fleet has no free slot. */
#define DENIED_RETRY_MS 50

/*
 * KEYS: the slots (a sorted set of leases scored by expiry, ms) and the
 * rate's next due time (us). ARGV: want a slot (0/1), the limit, the
 * lease's name, its TTL (ms), the rate interval (us, 0: none). Returns
 * {1, 0} when taken, {0, ms to wait} when not; nothing is taken then.
 * Numbers go back to Redis through %.0f: Lua's own conversion keeps 14
 * digits only.
 */
static const char acquire_script[] =
    "local now = redis.call('TIME')\n"
    "local us = tonumber(now[1]) * 1000000 + tonumber(now[2])\n"
    "local ms = math.floor(us / 1000)\n"
    "local interval = tonumber(ARGV[5])\n"
    "local due = 0\n"
    "if interval > 0 then\n"
    "  due = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "  if due > us then return {0, math.ceil((due - us) / 1000)} end\n"
    "end\n"
    "if ARGV[1] == '1' then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)\n"
    "  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then\n"
    "    return {0, -1}\n"
    "  end\n"
    "  redis.call('ZADD', KEYS[1], string.format('%.0f', ms + ARGV[4]),"
    " ARGV[3])\n"
    "  redis.call('PEXPIRE', KEYS[1], 2 * ARGV[4])\n"
    "end\n"
    "if interval > 0 then\n"
    "  if us - due >= interval then due = us end\n"
    "  redis.call('SET', KEYS[2], string.format('%.0f', due + interval),"
    " 'PX', math.ceil(interval / 1000) + 1000)\n"
    "end\n"
    "return {1, 0}\n";

/* KEYS: the slots; ARGV: the lease, its TTL (ms). Renews it if still
 * there (XX: an expired lease is not brought back). */
static const char renew_script[] =
    "local now = redis.call('TIME')\n"
    "local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / "
    "1000)\n"
    "redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', ms + ARGV[2]),"
    " ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], 2 * ARGV[2])\n"
    "return 1\n";

struct lease {
	struct lease *next;
	char *key; /* the slots' key */
	uint64_t id;
};

struct request {
	struct shape_redis *sr;
	shape_redis_cb cb;
	void *arg;
	char *key;
	uint64_t lease; /* 0: no slot asked for */
};

struct shape_redis {
	struct event_base *base;
	char host[64];
	uint16_t port;
	unsigned db;
	char instance[48];     /* names this daemon's leases */
	redisAsyncContext *ac; /* NULL while disconnected */
	bool up;	       /* connected, SELECT done */
	bool outage_logged;
	bool freeing; /* answers are dropped */
	unsigned backoff_ms;
	uint64_t next_lease;
	struct lease *leases;
	struct event *reconnect;
	struct event *renew;
	shape_redis_up_cb up_cb;
	void *up_arg;
};

static void redis_connect(struct shape_redis *sr);

/* One failed command or connection; the outage logged once. */
static void redis_failed(struct shape_redis *sr, const char *why)
{
	metrics.redis_errors_total++;
	if (sr->outage_logged)
		return;
	sr->outage_logged = true;
	log_event(LOG_LEVEL_WARN, "redis_unavailable", LOG_S("host", sr->host),
		  LOG_I("port", sr->port), LOG_S("reason", why));
}

/* The context is gone (hiredis frees it): try again after a delay. */
static void redis_lost(struct shape_redis *sr, const char *why)
{
	sr->ac = NULL;
	sr->up = false;
	if (sr->freeing)
		return;
	redis_failed(sr, why);
	struct timeval tv = {sr->backoff_ms / 1000,
			     (suseconds_t)(sr->backoff_ms % 1000) * 1000};
	if (evtimer_add(sr->reconnect, &tv) < 0)
		fatal("shape_redis: cannot add a timer");
	sr->backoff_ms *= 2;
	if (sr->backoff_ms > RECONNECT_MAX_MS)
		sr->backoff_ms = RECONNECT_MAX_MS;
}

static void on_selected(redisAsyncContext *ac, void *r, void *arg)
{
	struct shape_redis *sr = arg;
	redisReply *reply = r;
	(void)ac;
	if (sr->freeing || sr->ac == NULL)
		return;
	if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
		redis_failed(sr, reply ? reply->str : "no reply to SELECT");
		redisAsyncDisconnect(sr->ac);
		return;
	}
	sr->up = true;
	sr->backoff_ms = RECONNECT_MIN_MS;
	if (!sr->outage_logged)
		return;
	sr->outage_logged = false;
	log_event(LOG_LEVEL_INFO, "redis_available", LOG_S("host", sr->host),
		  LOG_I("port", sr->port));
	if (sr->up_cb != NULL)
		sr->up_cb(sr->up_arg);
}

static void on_connected(const redisAsyncContext *ac, int status)
{
	struct shape_redis *sr = ac->data;
	if (status != REDIS_OK) {
		redis_lost(sr, ac->errstr);
		return;
	}
	if (redisAsyncCommand(sr->ac, on_selected, sr, "SELECT %u", sr->db) !=
	    REDIS_OK)
		redis_failed(sr, "cannot send SELECT");
}

static void on_disconnected(const redisAsyncContext *ac, int status)
{
	struct shape_redis *sr = ac->data;
	redis_lost(sr, status == REDIS_OK ? "disconnected" : ac->errstr);
}

static void redis_connect(struct shape_redis *sr)
{
	redisAsyncContext *ac = redisAsyncConnect(sr->host, sr->port);
	if (ac == NULL) {
		redis_lost(sr, "out of memory");
		return;
	}
	if (ac->err) {
		char why[128];
		snprintf(why, sizeof why, "%s", ac->errstr);
		redisAsyncFree(ac);
		redis_lost(sr, why);
		return;
	}
	ac->data = sr;
	sr->ac = ac;
	if (redisLibeventAttach(ac, sr->base) != REDIS_OK ||
	    redisAsyncSetConnectCallback(ac, on_connected) != REDIS_OK ||
	    redisAsyncSetDisconnectCallback(ac, on_disconnected) != REDIS_OK)
		fatal("shape_redis: cannot attach to the loop");
}

static void on_reconnect(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	redis_connect(arg);
}

static void on_renewed(redisAsyncContext *ac, void *r, void *arg)
{
	struct shape_redis *sr = arg;
	redisReply *reply = r;
	(void)ac;
	if (!sr->freeing && (reply == NULL || reply->type == REDIS_REPLY_ERROR))
		redis_failed(sr, reply ? reply->str : "no reply");
}

static void on_renew_timer(evutil_socket_t fd, short what, void *arg)
{
	struct shape_redis *sr = arg;
	(void)fd;
	(void)what;
	for (struct lease *l = sr->leases; l != NULL && sr->up; l = l->next)
		if (redisAsyncCommand(
			sr->ac, on_renewed, sr, "EVAL %s 1 %s %s:%llu %d",
			renew_script, l->key, sr->instance,
			(unsigned long long)l->id, LEASE_TTL_MS) != REDIS_OK)
			redis_failed(sr, "cannot send a renewal");
}

struct shape_redis *shape_redis_new(struct event_base *base, const char *text,
				    shape_redis_up_cb up, void *arg)
{
	char err[128];
	char hostname[64] = "";
	struct shape_redis *sr = calloc(1, sizeof *sr);
	if (sr == NULL)
		return NULL;
	if (shape_parse_redis_address(text, sr->host, sizeof sr->host,
				      &sr->port, &sr->db, err,
				      sizeof err) < 0) {
		free(sr);
		return NULL;
	}
	(void)gethostname(hostname, sizeof hostname - 1); /* a name only */
	snprintf(sr->instance, sizeof sr->instance, "%.24s:%ld:%lld", hostname,
		 (long)getpid(), (long long)time(NULL));
	sr->base = base;
	sr->up_cb = up;
	sr->up_arg = arg;
	sr->backoff_ms = RECONNECT_MIN_MS;
	struct timeval every = {LEASE_TTL_MS / 3000, 0};
	sr->reconnect = evtimer_new(base, on_reconnect, sr);
	sr->renew = event_new(base, -1, EV_PERSIST, on_renew_timer, sr);
	if (sr->reconnect == NULL || sr->renew == NULL ||
	    event_add(sr->renew, &every) < 0)
		fatal("shape_redis: out of memory");
	redis_connect(sr);
	return sr;
}

void shape_redis_free(struct shape_redis *sr)
{
	if (sr == NULL)
		return;
	sr->freeing = true;
	if (sr->ac != NULL)
		redisAsyncFree(sr->ac); /* pending callbacks see `freeing` */
	while (sr->leases != NULL) {
		struct lease *l = sr->leases;
		sr->leases = l->next;
		free(l->key);
		free(l);
	}
	event_free(sr->reconnect);
	event_free(sr->renew);
	free(sr);
}

static void slots_key(const char *key, char *buf, size_t len)
{
	snprintf(buf, len, "facteur:conn:%s", key);
}

static void on_acquired(redisAsyncContext *ac, void *r, void *arg)
{
	struct request *req = arg;
	struct shape_redis *sr = req->sr;
	redisReply *reply = r;
	(void)ac;
	enum shape_redis_answer answer = SHAPE_REDIS_FAILED;
	unsigned retry_ms = 0;
	if (sr->freeing) {
		free(req->key);
		free(req);
		return;
	}
	if (reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
	    reply->elements == 2 &&
	    reply->element[0]->type == REDIS_REPLY_INTEGER &&
	    reply->element[1]->type == REDIS_REPLY_INTEGER) {
		long long wait = reply->element[1]->integer;
		answer = reply->element[0]->integer == 1 ? SHAPE_REDIS_GRANTED
							 : SHAPE_REDIS_DENIED;
		retry_ms = wait < 0	  ? DENIED_RETRY_MS
			   : wait > 60000 ? 60000
					  : (unsigned)wait;
	} else {
		redis_failed(sr, reply && reply->type == REDIS_REPLY_ERROR
				     ? reply->str
				     : "no reply");
	}
	uint64_t lease = answer == SHAPE_REDIS_GRANTED ? req->lease : 0;
	if (lease != 0) {
		struct lease *l = calloc(1, sizeof *l);
		if (l == NULL)
			fatal("shape_redis: out of memory");
		l->key = req->key;
		req->key = NULL;
		l->id = lease;
		l->next = sr->leases;
		sr->leases = l;
	}
	req->cb(answer, lease, retry_ms, req->arg);
	free(req->key);
	free(req);
}

int shape_redis_acquire(struct shape_redis *sr, const char *key, bool want_conn,
			unsigned limit, uint64_t interval_us, shape_redis_cb cb,
			void *arg)
{
	if (!sr->up) {
		redis_failed(sr, "not connected");
		return -1;
	}
	char slots[600], rate[600];
	slots_key(key, slots, sizeof slots);
	snprintf(rate, sizeof rate, "facteur:rate:%s", key);
	struct request *req = calloc(1, sizeof *req);
	if (req == NULL || (req->key = strdup(slots)) == NULL)
		fatal("shape_redis: out of memory");
	req->sr = sr;
	req->cb = cb;
	req->arg = arg;
	req->lease = want_conn ? ++sr->next_lease : 0;
	if (redisAsyncCommand(sr->ac, on_acquired, req,
			      "EVAL %s 2 %s %s %d %u %s:%llu %d %llu",
			      acquire_script, slots, rate, want_conn ? 1 : 0,
			      limit, sr->instance,
			      (unsigned long long)req->lease, LEASE_TTL_MS,
			      (unsigned long long)interval_us) != REDIS_OK) {
		free(req->key);
		free(req);
		redis_failed(sr, "cannot send a command");
		return -1;
	}
	return 0;
}

static void on_released(redisAsyncContext *ac, void *r, void *arg)
{
	on_renewed(ac, r, arg);
}

void shape_redis_release(struct shape_redis *sr, const char *key,
			 uint64_t lease)
{
	char slots[600];
	if (sr == NULL)
		return;
	slots_key(key, slots, sizeof slots);
	for (struct lease **at = &sr->leases; *at != NULL; at = &(*at)->next) {
		struct lease *l = *at;
		if (l->id == lease && strcmp(l->key, slots) == 0) {
			*at = l->next;
			free(l->key);
			free(l);
			break;
		}
	}
	/* down: the lease expires by itself */
	if (sr->up && redisAsyncCommand(sr->ac, on_released, sr,
					"ZREM %s %s:%llu", slots, sr->instance,
					(unsigned long long)lease) != REDIS_OK)
		redis_failed(sr, "cannot send a release");
}
