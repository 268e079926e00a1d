/* Unit tests of the worker threads, with a real event loop: jobs run
 * off the loop thread, their done callbacks on it, always later. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <event2/event.h>

#include "facteur/worker.h"

#define JOBS 50

struct job {
	pthread_t loop;
	bool ran_off_loop;
	bool done;
	bool done_on_loop;
	int *done_count;
	struct event_base *base;
	int total;
};

static void job_run(void *arg)
{
	struct job *j = arg;
	j->ran_off_loop = !pthread_equal(pthread_self(), j->loop);
}

static void job_done(void *arg)
{
	struct job *j = arg;
	j->done = true;
	j->done_on_loop = pthread_equal(pthread_self(), j->loop);
	if (++*j->done_count == j->total)
		event_base_loopbreak(j->base);
}

/* Hand the worker JOBS jobs that count themselves done in *done_count. */
static void hand_over_jobs(struct worker *w, struct event_base *base,
			   struct job jobs[JOBS], int *done_count)
{
	for (int i = 0; i < JOBS; i++) {
		jobs[i].loop = pthread_self();
		jobs[i].done_count = done_count;
		jobs[i].base = base;
		jobs[i].total = JOBS;
		assert_int_equal(worker_run(w, job_run, job_done, &jobs[i]), 0);
	}
}

static void test_worker_runs_jobs_off_the_loop_and_reports_on_it(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct worker *w = worker_new(base);
	assert_non_null(w);
	struct job jobs[JOBS] = {0};
	int done_count = 0;
	hand_over_jobs(w, base, jobs, &done_count);
	/* Never inside the call: nothing is done before the loop runs. */
	assert_int_equal(done_count, 0);
	assert_int_equal(worker_pending(w), JOBS);
	assert_int_equal(event_base_dispatch(base), 0);
	assert_int_equal(done_count, JOBS);
	assert_int_equal(worker_pending(w), 0);
	for (int i = 0; i < JOBS; i++) {
		assert_true(jobs[i].ran_off_loop);
		assert_true(jobs[i].done_on_loop);
	}
	worker_free(w);
	event_base_free(base);
}

static void test_worker_free_finishes_what_was_handed_over(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct worker *w = worker_new(base);
	assert_non_null(w);
	struct job jobs[JOBS] = {0};
	int done_count = 0;
	hand_over_jobs(w, base, jobs, &done_count);
	worker_free(w);
	assert_int_equal(done_count, JOBS);
	for (int i = 0; i < JOBS; i++)
		assert_true(jobs[i].done && jobs[i].ran_off_loop);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(
		test_worker_runs_jobs_off_the_loop_and_reports_on_it),
	    cmocka_unit_test(test_worker_free_finishes_what_was_handed_over),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
