/* sdnotify: the $NOTIFY_SOCKET address forms and the datagram a service
 * manager receives, played by a socket of our own. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "facteur/sdnotify.h"

/* A datagram socket bound to `name` (path or "@abstract"), as systemd
 * holds one. */
static int manager_socket(const char *name)
{
	struct sockaddr_un sun;
	socklen_t len;
	assert_int_equal(sdnotify_address(name, &sun, &len), 0);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, len), 0);
	return fd;
}

static void receive(int fd, char *buf, size_t size)
{
	ssize_t n = recv(fd, buf, size - 1, MSG_DONTWAIT);
	assert_true(n >= 0);
	buf[n] = '\0';
}

static void test_sdnotify_path_socket_receives_the_state(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_sdnotify.XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[sizeof dir + 16];
	snprintf(path, sizeof path, "%s/notify", dir);
	int fd = manager_socket(path);

	assert_int_equal(sdnotify_send(path, "READY=1\nSTATUS=accepting"), 0);
	char buf[256];
	receive(fd, buf, sizeof buf);
	assert_string_equal(buf, "READY=1\nSTATUS=accepting");

	assert_int_equal(close(fd), 0);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

static void test_sdnotify_abstract_socket_receives_the_state(void **state)
{
	(void)state;
	char name[64];
	snprintf(name, sizeof name, "@facteur-test-sdnotify-%ld",
		 (long)getpid());
	int fd = manager_socket(name);

	assert_int_equal(sdnotify_send(name, "STOPPING=1"), 0);
	char buf[64];
	receive(fd, buf, sizeof buf);
	assert_string_equal(buf, "STOPPING=1");
	assert_int_equal(close(fd), 0);
}

static void test_sdnotify_abstract_address_has_no_terminating_nul(void **state)
{
	(void)state;
	struct sockaddr_un sun;
	socklen_t len;
	assert_int_equal(sdnotify_address("@sd", &sun, &len), 0);
	assert_int_equal(sun.sun_path[0], '\0');
	assert_memory_equal(sun.sun_path + 1, "sd", 2);
	assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + 3);

	assert_int_equal(sdnotify_address("/run/n", &sun, &len), 0);
	assert_string_equal(sun.sun_path, "/run/n");
	assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + 7);
}

static void test_sdnotify_without_socket_sends_nothing(void **state)
{
	(void)state;
	assert_int_equal(sdnotify_send(NULL, "READY=1"), 0);
	assert_int_equal(sdnotify_send("", "READY=1"), 0);
}

static void test_sdnotify_refuses_relative_and_overlong_names(void **state)
{
	(void)state;
	struct sockaddr_un sun;
	socklen_t len;
	char longname[sizeof sun.sun_path + 2];
	memset(longname, 'a', sizeof longname - 1);
	longname[0] = '/';
	longname[sizeof longname - 1] = '\0';

	errno = 0;
	assert_int_equal(sdnotify_address("run/notify", &sun, &len), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(sdnotify_address("@", &sun, &len), -1);
	assert_int_equal(sdnotify_address(longname, &sun, &len), -1);
	/* vsock: forms are not ours to speak: an error, not a guess. */
	assert_int_equal(sdnotify_send("vsock:2:1234", "READY=1"), -1);
}

static void test_sdnotify_nobody_listening_is_an_error(void **state)
{
	(void)state;
	assert_int_equal(
	    sdnotify_send("/tmp/facteur-no-such-notify-socket", "READY=1"), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_sdnotify_monotonic_usec_moves_forward(void **state)
{
	(void)state;
	uint64_t a = sdnotify_monotonic_usec();
	usleep(2000);
	uint64_t b = sdnotify_monotonic_usec();
	assert_true(a > 0);
	assert_true(b >= a + 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sdnotify_path_socket_receives_the_state),
	    cmocka_unit_test(test_sdnotify_abstract_socket_receives_the_state),
	    cmocka_unit_test(
		test_sdnotify_abstract_address_has_no_terminating_nul),
	    cmocka_unit_test(test_sdnotify_without_socket_sends_nothing),
	    cmocka_unit_test(test_sdnotify_refuses_relative_and_overlong_names),
	    cmocka_unit_test(test_sdnotify_nobody_listening_is_an_error),
	    cmocka_unit_test(test_sdnotify_monotonic_usec_moves_forward),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
