/*
 * The helper thread that touches the disk for the loop (see iothread.h).
 * The loop hands over requests under a mutex; the thread takes the whole
 * queue at once as a round, flushes each distinct descriptor once, and
 * passes the finished requests back through a pipe that the loop
 * watches. All callbacks run on the loop thread.
 *
 * A round: the prepares (create and write a Maildir file), the first
 * flushes, the steps (move that file into new/), the later flushes (new/).
 * Requests with nothing after their first flushes (spool commits) are
 * handed back before the steps, so completions keep their order among
 * requests of the same kind only.
 *
 * The flushes of one stage run in parallel on a few helper workers: with
 * a journal, the file system folds concurrent fsyncs into shared commits;
 * without one, the block layer merges concurrent cache flushes. Either
 * way many files become durable for fewer disk flushes than files. With
 * flush_method = syncfs a stage's descriptors are grouped by file system
 * and each group gets one syncfs(2): one disk flush for the lot.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/iothread.h"
#include "facteur/log.h"

struct io_request {
	struct io_request *next;
	iothread_cb cb;
	iothread_prepare prepare; /* before the first flushes, or NULL */
	iothread_step step; /* or NULL */
	void *arg;
	int error;
	size_t nfds;   /* flushed first */
	size_t nafter; /* flushed after the step: fds[nfds..] */
	int fds[];
};

/* A FIFO of requests, appended at the tail. */
struct io_list {
	struct io_request *head;
	struct io_request **tail;
};

#define FLUSH_WORKERS 7 /* besides the iothread itself */

/* One round's distinct descriptors, shared with the workers. */
struct flush_pool {
	pthread_t threads[FLUSH_WORKERS];
	size_t started;
	pthread_mutex_t lock;
	pthread_cond_t work;     /* a new round, or stop */
	pthread_cond_t finished; /* the last flush of the round is done */
	const int *fds;
	const bool *whole; /* syncfs for fds[i] when whole[i]; may be NULL */
	int *errs;
	size_t count, next, done;
	unsigned round;
	bool stopping;
};

struct iothread {
	struct event_base *base;
	pthread_t thread;
	struct flush_pool pool;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct io_list todo; /* loop -> thread, under lock */
	struct io_list done; /* thread -> loop, under lock */
	bool stopping;
	bool by_filesystem; /* syncfs; under lock */
	size_t pending; /* handed over, callback not yet run (loop only) */
	int notify[2];  /* thread writes a byte when `done` gains requests */
	struct event *notify_event;
};

static void io_list_init(struct io_list *list)
{
	list->head = NULL;
	list->tail = &list->head;
}

static void io_list_append(struct io_list *list, struct io_request *req)
{
	req->next = NULL;
	*list->tail = req;
	list->tail = &req->next;
}

static void io_list_splice(struct io_list *to, struct io_list *from)
{
	if (from->head == NULL)
		return;
	*to->tail = from->head;
	to->tail = from->tail;
	io_list_init(from);
}

static int compare_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

/* fsync(2) the descriptor, or syncfs(2) its whole file system; 0 or the
 * errno. */
static int flush_one(int fd, bool whole)
{
	int rc = whole ? syncfs(fd) : fsync(fd);
	return rc == -1 ? errno : 0;
}

/* Take the round's next descriptor and flush it, until none is left;
 * called with the pool's lock held, returns with it held. */
static void pool_drain(struct flush_pool *pool)
{
	while (pool->next < pool->count) {
		size_t i = pool->next++;
		pthread_mutex_unlock(&pool->lock);
		int err = flush_one(pool->fds[i],
		                    pool->whole != NULL && pool->whole[i]);
		pthread_mutex_lock(&pool->lock);
		pool->errs[i] = err;
		if (++pool->done == pool->count)
			pthread_cond_signal(&pool->finished);
	}
}

static void *pool_worker(void *arg)
{
	struct flush_pool *pool = arg;
	unsigned seen = 0;
	pthread_mutex_lock(&pool->lock);
	for (;;) {
		while (pool->round == seen && !pool->stopping)
			pthread_cond_wait(&pool->work, &pool->lock);
		if (pool->stopping)
			break;
		seen = pool->round;
		pool_drain(pool);
	}
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

/* Flush `count` descriptors with the workers' help (whole: see struct
 * flush_pool); errs[i] gets the errno of fds[i] (or 0). */
static void pool_flush(struct flush_pool *pool, const int *fds,
                       const bool *whole, int *errs, size_t count)
{
	if (count == 1 || pool->started == 0) {
		for (size_t i = 0; i < count; i++)
			errs[i] = flush_one(fds[i], whole != NULL && whole[i]);
		return;
	}
	pthread_mutex_lock(&pool->lock);
	pool->fds = fds;
	pool->whole = whole;
	pool->errs = errs;
	pool->count = count;
	pool->next = 0;
	pool->done = 0;
	pool->round++;
	pthread_cond_broadcast(&pool->work);
	pool_drain(pool);
	while (pool->done < pool->count)
		pthread_cond_wait(&pool->finished, &pool->lock);
	pool->count = 0;
	pthread_mutex_unlock(&pool->lock);
}

static void pool_start(struct flush_pool *pool)
{
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	pthread_cond_init(&pool->finished, NULL);
	/* Fewer workers (even none) only means fewer parallel flushes. */
	while (pool->started < FLUSH_WORKERS &&
	       pthread_create(&pool->threads[pool->started], NULL, pool_worker,
	                      pool) == 0)
		pool->started++;
}

static void pool_stop(struct flush_pool *pool)
{
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->work);
	pthread_mutex_unlock(&pool->lock);
	for (size_t i = 0; i < pool->started; i++)
		pthread_join(pool->threads[i], NULL);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->work);
	pthread_cond_destroy(&pool->finished);
}

/*
 * Flush the descriptors of a stage by file system: those that share one
 * are made durable by one syncfs(2) of it, which writes whatever else is
 * dirty there too but costs the disk one flush instead of one per file.
 * A descriptor alone on its file system (or that fstat refuses) gets its
 * own fsync. -1 when out of memory (nothing done).
 */
static int flush_by_filesystem(struct flush_pool *pool, const int *fds,
                               int *errs, size_t count)
{
	struct member {
		dev_t dev;
		bool known; /* fstat worked */
		size_t group; /* index in reps */
	} *m = malloc(count * sizeof *m);
	int *reps = malloc(count * sizeof *reps); /* one per group */
	bool *whole = calloc(count, sizeof *whole);
	int *rep_errs = malloc(count * sizeof *rep_errs);
	if (m == NULL || reps == NULL || whole == NULL || rep_errs == NULL) {
		free(m);
		free(reps);
		free(whole);
		free(rep_errs);
		return -1;
	}
	size_t nreps = 0;
	for (size_t i = 0; i < count; i++) {
		struct stat st;
		m[i].known = fstat(fds[i], &st) == 0;
		m[i].dev = m[i].known ? st.st_dev : 0;
		m[i].group = nreps;
		for (size_t j = 0; m[i].known && j < i; j++)
			if (m[j].known && m[j].dev == m[i].dev) {
				m[i].group = m[j].group;
				whole[m[j].group] = true; /* shared: syncfs */
				break;
			}
		if (m[i].group == nreps)
			reps[nreps++] = fds[i];
	}
	pool_flush(pool, reps, whole, rep_errs, nreps);
	for (size_t i = 0; i < count; i++)
		errs[i] = rep_errs[m[i].group];
	free(m);
	free(reps);
	free(whole);
	free(rep_errs);
	return 0;
}

/* The descriptors of one stage of a request. */
static const int *stage_fds(const struct io_request *r, bool after,
                            size_t *count)
{
	*count = after ? r->nafter : r->nfds;
	return after ? r->fds + r->nfds : r->fds;
}

/*
 * Flush every distinct descriptor of one stage of a round once and give
 * each request still without error the error of any of its own. A round
 * is small (the commits of a few loop turns), so a sorted copy is cheap.
 */
static void flush_stage(struct iothread *io, struct io_request *round,
                        bool after)
{
	size_t total = 0, count;
	for (struct io_request *r = round; r != NULL; r = r->next)
		if (r->error == 0) {
			(void)stage_fds(r, after, &count);
			total += count;
		}
	if (total == 0)
		return;

	int *fds = malloc(total * sizeof *fds);
	int *errs = malloc(total * sizeof *errs);
	if (fds == NULL || errs == NULL) {
		/* No memory for the dedup table: flush one by one. */
		for (struct io_request *r = round; r != NULL; r = r->next) {
			const int *own = stage_fds(r, after, &count);
			for (size_t i = 0; i < count && r->error == 0; i++)
				if (fsync(own[i]) == -1)
					r->error = errno;
		}
		free(fds);
		free(errs);
		return;
	}
	size_t n = 0;
	for (struct io_request *r = round; r != NULL; r = r->next) {
		if (r->error != 0)
			continue;
		const int *own = stage_fds(r, after, &count);
		for (size_t i = 0; i < count; i++)
			fds[n++] = own[i];
	}
	qsort(fds, n, sizeof *fds, compare_int);
	size_t unique = 0;
	for (size_t i = 0; i < n; i++)
		if (unique == 0 || fds[unique - 1] != fds[i])
			fds[unique++] = fds[i];
	pthread_mutex_lock(&io->lock);
	bool by_filesystem = io->by_filesystem;
	pthread_mutex_unlock(&io->lock);
	if (!by_filesystem || unique == 1 ||
	    flush_by_filesystem(&io->pool, fds, errs, unique) == -1)
		pool_flush(&io->pool, fds, NULL, errs, unique);
	for (struct io_request *r = round; r != NULL; r = r->next) {
		const int *own = stage_fds(r, after, &count);
		for (size_t i = 0; i < count && r->error == 0; i++) {
			int *at =
			    bsearch(&own[i], fds, unique, sizeof *fds, compare_int);
			if (at != NULL)
				r->error = errs[at - fds];
		}
	}
	free(fds);
	free(errs);
}

/* Hand finished requests back to the loop; called with the lock held. */
static void post_done(struct iothread *io, struct io_list *finished)
{
	if (finished->head == NULL)
		return;
	bool was_empty = io->done.head == NULL;
	io_list_splice(&io->done, finished);
	if (was_empty) {
		char byte = 0;
		/* The pipe holds at most one unread byte per batch of
		 * completions, so it cannot fill up. */
		while (write(io->notify[1], &byte, 1) == -1 && errno == EINTR)
			;
	}
}

/* Move the requests that have nothing left to do (failed, or without a
 * step and later flushes) from `round` to `finished`, in order. */
static void split_finished(struct io_list *round, struct io_list *finished)
{
	struct io_list rest;
	io_list_init(&rest);
	struct io_request *r = round->head;
	while (r != NULL) {
		struct io_request *next = r->next;
		if (r->error != 0 || (r->step == NULL && r->nafter == 0))
			io_list_append(finished, r);
		else
			io_list_append(&rest, r);
		r = next;
	}
	io_list_init(round);
	io_list_splice(round, &rest);
}

/*
 * A round: the first flushes of every request; those with nothing more
 * to do go back to the loop at once (a spool commit does not wait for
 * the links and directory flushes of deliveries); then the steps, and
 * the later flushes of the requests still without error.
 */
static void run_round(struct iothread *io, struct io_list *round)
{
	struct io_list early;
	io_list_init(&early);
	for (struct io_request *r = round->head; r != NULL; r = r->next)
		if (r->prepare != NULL)
			r->error = r->prepare(r->arg, r->fds, r->nfds);
	flush_stage(io, round->head, false);
	split_finished(round, &early);
	if (early.head != NULL) {
		pthread_mutex_lock(&io->lock);
		post_done(io, &early);
		pthread_mutex_unlock(&io->lock);
	}
	if (round->head == NULL)
		return;
	for (struct io_request *r = round->head; r != NULL; r = r->next)
		if (r->step != NULL)
			r->error = r->step(r->arg);
	flush_stage(io, round->head, true);
	pthread_mutex_lock(&io->lock);
	post_done(io, round);
	pthread_mutex_unlock(&io->lock);
}

static void *iothread_main(void *arg)
{
	struct iothread *io = arg;

	pthread_mutex_lock(&io->lock);
	for (;;) {
		while (io->todo.head == NULL && !io->stopping)
			pthread_cond_wait(&io->wake, &io->lock);
		if (io->todo.head == NULL && io->stopping)
			break;
		struct io_list round;
		io_list_init(&round);
		io_list_splice(&round, &io->todo);
		pthread_mutex_unlock(&io->lock);
		run_round(io, &round);
		pthread_mutex_lock(&io->lock);
	}
	pthread_mutex_unlock(&io->lock);
	return NULL;
}

static void run_completions(struct iothread *io)
{
	struct io_list finished;
	io_list_init(&finished);
	pthread_mutex_lock(&io->lock);
	io_list_splice(&finished, &io->done);
	pthread_mutex_unlock(&io->lock);

	struct io_request *req = finished.head;
	while (req != NULL) {
		struct io_request *next = req->next;
		io->pending--;
		req->cb(req->error, req->arg);
		free(req);
		req = next;
	}
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	char buf[64];
	while (read(fd, buf, sizeof buf) > 0)
		;
	run_completions(arg);
}

struct iothread *iothread_new(struct event_base *base)
{
	struct iothread *io = calloc(1, sizeof *io);
	if (io == NULL)
		return NULL;
	io->base = base;
	io_list_init(&io->todo);
	io_list_init(&io->done);
	if (pipe2(io->notify, O_CLOEXEC | O_NONBLOCK) == -1) {
		free(io);
		return NULL;
	}
	io->notify_event = event_new(base, io->notify[0], EV_READ | EV_PERSIST,
	                             on_notify, io);
	if (io->notify_event == NULL || event_add(io->notify_event, NULL) == -1)
		goto fail;
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->wake, NULL);
	pool_start(&io->pool);
	if (pthread_create(&io->thread, NULL, iothread_main, io) != 0) {
		pool_stop(&io->pool);
		pthread_mutex_destroy(&io->lock);
		pthread_cond_destroy(&io->wake);
		goto fail;
	}
	return io;
fail:
	if (io->notify_event != NULL)
		event_free(io->notify_event);
	close(io->notify[0]);
	close(io->notify[1]);
	free(io);
	return NULL;
}

void iothread_free(struct iothread *io)
{
	if (io == NULL)
		return;
	pthread_mutex_lock(&io->lock);
	io->stopping = true;
	pthread_cond_signal(&io->wake);
	pthread_mutex_unlock(&io->lock);
	pthread_join(io->thread, NULL);
	pool_stop(&io->pool);
	/* Every request is finished now; their callbacks still run. */
	while (io->pending > 0) {
		size_t before = io->pending;
		run_completions(io);
		if (io->pending == before)
			fatal("iothread: %zu requests lost", io->pending);
	}
	event_free(io->notify_event);
	close(io->notify[0]);
	close(io->notify[1]);
	pthread_mutex_destroy(&io->lock);
	pthread_cond_destroy(&io->wake);
	free(io);
}

int iothread_prepare_fsync_step(struct iothread *io, iothread_prepare prepare,
                                const int *fds, size_t nfds,
                                iothread_step step, const int *after,
                                size_t nafter, iothread_cb cb, void *arg)
{
	/* No count comes near this; it only keeps the size from wrapping. */
	if (nfds > SIZE_MAX / 4 / sizeof(int) ||
	    nafter > SIZE_MAX / 4 / sizeof(int))
		return -1;
	struct io_request *req =
	    malloc(sizeof *req + (nfds + nafter) * sizeof(int));
	if (req == NULL)
		return -1;
	req->cb = cb;
	req->prepare = prepare;
	req->step = step;
	req->arg = arg;
	req->error = 0;
	req->nfds = nfds;
	req->nafter = nafter;
	if (nfds > 0)
		memcpy(req->fds, fds, nfds * sizeof(int));
	if (nafter > 0)
		memcpy(req->fds + nfds, after, nafter * sizeof(int));
	io->pending++;
	pthread_mutex_lock(&io->lock);
	io_list_append(&io->todo, req);
	pthread_cond_signal(&io->wake);
	pthread_mutex_unlock(&io->lock);
	return 0;
}

int iothread_fsync_step(struct iothread *io, const int *fds, size_t nfds,
                        iothread_step step, const int *after, size_t nafter,
                        iothread_cb cb, void *arg)
{
	return iothread_prepare_fsync_step(io, NULL, fds, nfds, step, after,
	                                   nafter, cb, arg);
}

int iothread_fsync(struct iothread *io, const int *fds, size_t nfds,
                   iothread_cb cb, void *arg)
{
	return iothread_fsync_step(io, fds, nfds, NULL, NULL, 0, cb, arg);
}

void iothread_flush_by_filesystem(struct iothread *io, bool on)
{
	pthread_mutex_lock(&io->lock);
	io->by_filesystem = on;
	pthread_mutex_unlock(&io->lock);
}

size_t iothread_pending(const struct iothread *io)
{
	return io->pending;
}
