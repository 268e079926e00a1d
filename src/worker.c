/*
 * Helper threads for slow work off the loop (see worker.h). Jobs queue
 * under a mutex; WORKER_THREADS threads take them in order and put them
 * on a finished list, and one byte in a pipe wakes the loop, which runs
 * the done callbacks. Two threads, so that one mailbox being sized does
 * not hold every password check behind it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/log.h"
#include "facteur/worker.h"

#define WORKER_THREADS 2

struct worker_job {
	struct worker_job *next;
	worker_fn run;
	worker_done done;
	void *arg;
};

struct job_list {
	struct worker_job *head;
	struct worker_job **tail;
};

struct worker {
	pthread_t threads[WORKER_THREADS];
	size_t started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct job_list todo;	  /* loop -> threads, under lock */
	struct job_list finished; /* threads -> loop, under lock */
	bool stopping;		  /* under lock */
	size_t pending;		  /* loop only */
	int notify[2];
	struct event *notify_event;
};

static void job_list_init(struct job_list *list)
{
	list->head = NULL;
	list->tail = &list->head;
}

static void job_list_append(struct job_list *list, struct worker_job *job)
{
	job->next = NULL;
	*list->tail = job;
	list->tail = &job->next;
}

static struct worker_job *job_list_pop(struct job_list *list)
{
	struct worker_job *job = list->head;
	if (job != NULL) {
		list->head = job->next;
		if (list->head == NULL)
			list->tail = &list->head;
	}
	return job;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		struct worker_job *job = job_list_pop(&w->todo);
		if (job == NULL) {
			if (w->stopping)
				break;
			pthread_cond_wait(&w->wake, &w->lock);
			continue;
		}
		pthread_mutex_unlock(&w->lock);
		job->run(job->arg);
		pthread_mutex_lock(&w->lock);
		bool was_empty = w->finished.head == NULL;
		job_list_append(&w->finished, job);
		/* One byte per batch: the loop takes the whole list. A full
		 * pipe already holds a wake-up. */
		if (was_empty) {
			ssize_t n = write(w->notify[1], "", 1);
			if (n == -1 && errno != EAGAIN)
				fatal("worker: notify pipe: %s",
				      strerror(errno));
		}
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static void run_finished(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	struct worker_job *job = w->finished.head;
	job_list_init(&w->finished);
	pthread_mutex_unlock(&w->lock);
	while (job != NULL) {
		struct worker_job *next = job->next;
		w->pending--;
		job->done(job->arg);
		free(job);
		job = next;
	}
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	char buf[64];
	while (read(fd, buf, sizeof buf) > 0)
		;
	run_finished(arg);
}

static void stop_threads(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->wake);
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < w->started; i++)
		pthread_join(w->threads[i], NULL);
	w->started = 0;
}

struct worker *worker_new(struct event_base *base)
{
	struct worker *w = calloc(1, sizeof *w);
	if (w == NULL)
		return NULL;
	job_list_init(&w->todo);
	job_list_init(&w->finished);
	if (pipe2(w->notify, O_CLOEXEC | O_NONBLOCK) == -1) {
		free(w);
		return NULL;
	}
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	w->notify_event =
	    event_new(base, w->notify[0], EV_READ | EV_PERSIST, on_notify, w);
	if (w->notify_event == NULL || event_add(w->notify_event, NULL) == -1)
		goto fail;
	for (; w->started < WORKER_THREADS; w->started++)
		if (pthread_create(&w->threads[w->started], NULL, worker_main,
				   w) != 0)
			goto fail;
	return w;
fail:
	stop_threads(w);
	if (w->notify_event != NULL)
		event_free(w->notify_event);
	(void)close(w->notify[0]); /* a pipe: nothing to lose */
	(void)close(w->notify[1]);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->wake);
	free(w);
	return NULL;
}

void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	/* The threads drain the queue before they stop. */
	stop_threads(w);
	run_finished(w);
	if (w->pending != 0)
		fatal("worker: %zu jobs lost", w->pending);
	event_free(w->notify_event);
	(void)close(w->notify[0]);
	(void)close(w->notify[1]);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->wake);
	free(w);
}

int worker_run(struct worker *w, worker_fn run, worker_done done, void *arg)
{
	struct worker_job *job = malloc(sizeof *job);
	if (job == NULL)
		return -1;
	job->run = run;
	job->done = done;
	job->arg = arg;
	w->pending++;
	pthread_mutex_lock(&w->lock);
	job_list_append(&w->todo, job);
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

size_t worker_pending(const struct worker *w)
{
	return w->pending;
}
