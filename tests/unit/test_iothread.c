/* Unit tests of the iothread: plain flushes and requests with a step
 * between two flushes, with a real event loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/iothread.h"
#include "support.h"

struct fixture {
	struct event_base *base;
	struct iothread *io;
	char dir[64];
	int dir_fd;
	int file_fd;
	int pipe_fds[2]; /* fsync on a pipe fails with EINVAL */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	if (f == NULL)
		return -1;
	strcpy(f->dir, "/tmp/facteur-test-iothread-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	f->dir_fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	f->file_fd =
	    openat(f->dir_fd, "file", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (f->dir_fd == -1 || f->file_fd == -1 ||
	    write(f->file_fd, "data\n", 5) != 5 ||
	    pipe2(f->pipe_fds, O_CLOEXEC) == -1)
		return -1;
	f->base = event_base_new();
	if (f->base == NULL)
		return -1;
	f->io = iothread_new(f->base);
	if (f->io == NULL)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	iothread_free(f->io);
	event_base_free(f->base);
	(void)unlinkat(f->dir_fd, "file", 0);
	(void)unlinkat(f->dir_fd, "linked", 0); /* after some tests only */
	(void)close(f->file_fd);
	(void)close(f->dir_fd);
	(void)close(f->pipe_fds[0]);
	(void)close(f->pipe_fds[1]);
	if (rmdir(f->dir) == -1)
		return -1;
	free(f);
	return 0;
}

struct outcome {
	int calls;
	int error;
	int order; /* of this callback among the test's callbacks */
	/* The step's side. */
	int steps;
	int step_result;
	bool step_on_loop_thread;
	int step_dir_fd; /* the step links "file" to "linked" here, or -1 */
};

static pthread_t loop_thread;
static int callbacks_seen;

static void on_done(int error, void *arg)
{
	struct outcome *o = arg;
	assert_true(pthread_equal(pthread_self(), loop_thread));
	o->calls++;
	o->error = error;
	o->order = callbacks_seen++;
}

static int step(void *arg)
{
	struct outcome *o = arg;
	o->steps++;
	o->step_on_loop_thread = pthread_equal(pthread_self(), loop_thread);
	if (o->step_dir_fd != -1 &&
	    linkat(o->step_dir_fd, "file", o->step_dir_fd, "linked", 0) == -1)
		return errno;
	return o->step_result;
}

static void wait_for(struct fixture *f, struct outcome *o, size_t n)
{
	SUPPORT_WAIT_CALLS(f->base, o, n);
	assert_int_equal(iothread_pending(f->io), 0);
}

static void init_outcomes(struct outcome *o, size_t n)
{
	memset(o, 0, n * sizeof *o);
	for (size_t i = 0; i < n; i++)
		o[i].step_dir_fd = -1;
	loop_thread = pthread_self();
	callbacks_seen = 0;
}

static void test_iothread_step_runs_off_the_loop_between_flushes(void **state)
{
	struct fixture *f = *state;
	struct outcome o;
	init_outcomes(&o, 1);
	o.step_dir_fd = f->dir_fd;
	assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1, step,
					     &f->dir_fd, 1, on_done, &o),
			 0);
	/* Never inside the call. */
	assert_int_equal(o.calls, 0);
	assert_int_equal(iothread_pending(f->io), 1);
	wait_for(f, &o, 1);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.steps, 1);
	assert_false(o.step_on_loop_thread);
	struct stat st;
	assert_int_equal(fstatat(f->dir_fd, "linked", &st, 0), 0);
	assert_int_equal(st.st_nlink, 2);
}

static void test_iothread_failed_flush_skips_the_step(void **state)
{
	struct fixture *f = *state;
	struct outcome o;
	init_outcomes(&o, 1);
	o.step_dir_fd = f->dir_fd;
	int fds[2] = {f->file_fd, f->pipe_fds[0]};
	assert_int_equal(iothread_fsync_step(f->io, fds, 2, step, &f->dir_fd, 1,
					     on_done, &o),
			 0);
	wait_for(f, &o, 1);
	assert_int_equal(o.error, EINVAL);
	assert_int_equal(o.steps, 0);
	struct stat st;
	assert_int_equal(fstatat(f->dir_fd, "linked", &st, 0), -1);
	assert_int_equal(errno, ENOENT);
}

/* What a prepare stage saw, and what it should return. */
struct prepared {
	struct outcome *o;
	int fd;          /* it appends "more\n" here */
	int result;
	bool on_loop_thread;
	int steps_before; /* o->steps when it ran */
};

/* It also names the descriptor to flush: the request was given -1,
 * which flushed would fail with EBADF. */
static int prepare(void *arg, int *fds, size_t nfds)
{
	struct prepared *p = arg;
	p->on_loop_thread = pthread_equal(pthread_self(), loop_thread);
	p->steps_before = p->o->steps;
	assert_int_equal(nfds, 1);
	assert_int_equal(fds[0], -1);
	if (write(p->fd, "more\n", 5) != 5)
		return errno;
	fds[0] = p->fd;
	return p->result;
}

/* A prepared request's argument is its struct prepared: this step and
 * callback forward to its outcome. */
static int prepared_step(void *arg)
{
	return step(((struct prepared *)arg)->o);
}

static void on_prepared_done(int error, void *arg)
{
	on_done(error, ((struct prepared *)arg)->o);
}

static void test_iothread_prepare_runs_off_the_loop_before_the_flush(
    void **state)
{
	struct fixture *f = *state;
	struct outcome o;
	init_outcomes(&o, 1);
	o.step_dir_fd = f->dir_fd;
	struct prepared p = {.o = &o, .fd = f->file_fd};
	int unopened = -1;
	assert_int_equal(iothread_prepare_fsync_step(
			     f->io, prepare, &unopened, 1, prepared_step,
			     &f->dir_fd, 1, on_prepared_done, &p),
			 0);
	assert_int_equal(o.calls, 0);
	wait_for(f, &o, 1);
	assert_int_equal(o.error, 0);
	assert_false(p.on_loop_thread);
	assert_int_equal(p.steps_before, 0); /* before the step */
	assert_int_equal(o.steps, 1);
	struct stat st;
	assert_int_equal(fstatat(f->dir_fd, "linked", &st, 0), 0);
	assert_int_equal(st.st_size, 10); /* "data\n" and what it wrote */
}

static void test_iothread_failed_prepare_skips_flush_and_step(void **state)
{
	struct fixture *f = *state;
	struct outcome o[2];
	init_outcomes(o, 2);
	o[0].step_dir_fd = f->dir_fd;
	struct prepared p = {.o = &o[0], .fd = f->file_fd, .result = ENOSPC};
	int unopened = -1;
	assert_int_equal(iothread_prepare_fsync_step(
			     f->io, prepare, &unopened, 1, prepared_step,
			     &f->dir_fd, 1, on_prepared_done, &p),
			 0);
	/* another request of the same round is not disturbed */
	assert_int_equal(iothread_fsync(f->io, &f->file_fd, 1, on_done, &o[1]),
			 0);
	wait_for(f, o, 2);
	assert_int_equal(o[0].error, ENOSPC);
	assert_int_equal(o[0].steps, 0);
	assert_int_equal(o[1].error, 0);
	struct stat st;
	assert_int_equal(fstatat(f->dir_fd, "linked", &st, 0), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_iothread_step_error_and_later_flush_error(void **state)
{
	struct fixture *f = *state;
	struct outcome o[3];
	init_outcomes(o, 3);
	/* The step fails: its error, whatever the later flushes. */
	o[0].step_result = EXDEV;
	assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1, step,
					     &f->pipe_fds[0], 1, on_done,
					     &o[0]),
			 0);
	/* The step works, a later flush fails. */
	assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1, step,
					     &f->pipe_fds[0], 1, on_done,
					     &o[1]),
			 0);
	/* No step at all: both flushes, the later one fine. */
	assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1, NULL,
					     &f->dir_fd, 1, on_done, &o[2]),
			 0);
	wait_for(f, o, 3);
	assert_int_equal(o[0].error, EXDEV);
	assert_int_equal(o[0].steps, 1);
	assert_int_equal(o[1].error, EINVAL);
	assert_int_equal(o[1].steps, 1);
	assert_int_equal(o[2].error, 0);
	assert_int_equal(o[2].steps, 0);
}

static void test_iothread_mixed_requests_all_complete_in_order(void **state)
{
	struct fixture *f = *state;
	enum { N = 40 };
	struct outcome o[N];
	init_outcomes(o, N);
	/* Plain flushes and stepped ones, sharing descriptors (flushed
	 * once per round each), one of them failing. */
	for (int i = 0; i < N; i++) {
		int rc;
		if (i % 2 == 0)
			rc = iothread_fsync(f->io, &f->dir_fd, 1, on_done,
					    &o[i]);
		else
			rc = iothread_fsync_step(f->io, &f->file_fd, 1, step,
						 i == 7 ? &f->pipe_fds[1]
							: &f->dir_fd,
						 1, on_done, &o[i]);
		assert_int_equal(rc, 0);
	}
	assert_int_equal(iothread_pending(f->io), N);
	wait_for(f, o, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(o[i].error, i == 7 ? EINVAL : 0);
		assert_int_equal(o[i].steps, i % 2);
		/* Completions come back in the order they were asked among
		 * plain flushes, and among stepped requests. */
		if (i >= 2)
			assert_true(o[i].order > o[i - 2].order);
	}
}

/*
 * By file system: the descriptors of a round that share one get one
 * syncfs, a lone one its fsync. A pipe shows which was used: fsync on it
 * fails with EINVAL, while syncfs of the pipe file system succeeds.
 */
static void test_iothread_flush_by_filesystem(void **state)
{
	struct fixture *f = *state;
	enum { N = 4 };
	struct outcome o[N];
	init_outcomes(o, N);
	o[0].step_dir_fd = f->dir_fd;

	iothread_flush_by_filesystem(f->io, true);
	/* The file and the directory share /tmp's file system: flushed and
	 * linked as ever. */
	assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1, step,
					     &f->dir_fd, 1, on_done, &o[0]),
			 0);
	/* Both ends of the pipe in one round: one syncfs, no error. */
	assert_int_equal(iothread_fsync(f->io, f->pipe_fds, 2, on_done, &o[1]),
			 0);
	wait_for(f, o, 2);
	assert_int_equal(o[0].error, 0);
	assert_int_equal(o[0].steps, 1);
	struct stat st;
	assert_int_equal(fstatat(f->dir_fd, "linked", &st, 0), 0);
	assert_int_equal(o[1].error, 0);

	/* One end alone on its file system: fsync, and its error. */
	assert_int_equal(
	    iothread_fsync(f->io, &f->pipe_fds[1], 1, on_done, &o[2]), 0);
	wait_for(f, &o[2], 1);
	assert_int_equal(o[2].error, EINVAL);

	/* Switched off: fsync for each again. */
	iothread_flush_by_filesystem(f->io, false);
	assert_int_equal(iothread_fsync(f->io, f->pipe_fds, 2, on_done, &o[3]),
			 0);
	wait_for(f, &o[3], 1);
	assert_int_equal(o[3].error, EINVAL);
}

static void test_iothread_free_finishes_what_is_queued(void **state)
{
	struct fixture *f = *state;
	enum { N = 5 };
	struct outcome o[N];
	init_outcomes(o, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(iothread_fsync_step(f->io, &f->file_fd, 1,
						     step, &f->dir_fd, 1,
						     on_done, &o[i]),
				 0);
	iothread_free(f->io);
	f->io = iothread_new(f->base); /* for teardown */
	assert_non_null(f->io);
	for (int i = 0; i < N; i++) {
		assert_int_equal(o[i].calls, 1);
		assert_int_equal(o[i].error, 0);
		assert_int_equal(o[i].steps, 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
		test_iothread_step_runs_off_the_loop_between_flushes, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(test_iothread_flush_by_filesystem,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_failed_flush_skips_the_step, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_prepare_runs_off_the_loop_before_the_flush, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_failed_prepare_skips_flush_and_step, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_step_error_and_later_flush_error, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_mixed_requests_all_complete_in_order, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_iothread_free_finishes_what_is_queued, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
