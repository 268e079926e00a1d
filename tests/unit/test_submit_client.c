/*
 * The client of the local submission socket against a scripted peer on
 * the other end of a socketpair: replies as the daemon gives them, the
 * ways an exchange breaks, and the -bs relay.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "facteur/submit_client.h"

struct pair {
	struct submit_client c;
	int peer;
};

static void pair_open(struct pair *p)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	memset(&p->c, 0, sizeof p->c);
	p->c.fd = sv[0];
	p->peer = sv[1];
}

static void pair_close(struct pair *p)
{
	submit_client_close(&p->c);
	if (p->peer != -1)
		close(p->peer);
}

static void peer_says(struct pair *p, const char *text)
{
	assert_int_equal(write(p->peer, text, strlen(text)),
			 (ssize_t)strlen(text));
}

/* What the client sent, up to `len` octets. */
static void peer_heard(struct pair *p, const char *expected)
{
	char buf[256];
	size_t len = strlen(expected), got = 0;
	while (got < len) {
		ssize_t n = read(p->peer, buf + got, len - got);
		assert_true(n > 0);
		got += (size_t)n;
	}
	assert_memory_equal(buf, expected, len);
}

static void test_submit_client_reads_a_multiline_ehlo_reply(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	peer_says(&p,
		  "220 mx ESMTP facteur\r\n"
		  "250-mx\r\n250-SIZE 1024\r\n250-PIPELINING\r\n250 DSN\r\n");
	assert_int_equal(submit_client_command(&p.c, NULL, false), 220);
	assert_int_equal(submit_client_command(&p.c, "EHLO here", true), 250);
	peer_heard(&p, "EHLO here\r\n");
	assert_true(p.c.reply.ehlo & SMTP_EXT_DSN);
	assert_int_equal(p.c.reply.ehlo_size, 1024);
	pair_close(&p);
}

static void test_submit_client_keeps_the_enhanced_code_and_text(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	/* Two replies in one read: the second waits for its command. */
	peer_says(&p, "552 5.3.4 Message size exceeds fixed limit\r\n"
		      "221 2.0.0 Bye\r\n");
	assert_int_equal(submit_client_command(&p.c, ".", false), 552);
	assert_string_equal(p.c.reply.esc, "5.3.4");
	assert_non_null(strstr(p.c.reply.text, "exceeds fixed limit"));
	assert_int_equal(submit_client_command(&p.c, "QUIT", false), 221);
	peer_heard(&p, ".\r\nQUIT\r\n");
	pair_close(&p);
}

static void test_submit_client_refuses_an_endless_reply_line(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	char line[SUBMIT_CLIENT_LINE_MAX + 64];
	memset(line, 'x', sizeof line - 1);
	memcpy(line, "250 ", 4);
	line[sizeof line - 1] = '\0';
	peer_says(&p, line);
	assert_int_equal(submit_client_command(&p.c, NULL, false), -1);
	assert_non_null(strstr(p.c.err, "longer than"));
	pair_close(&p);
}

static void test_submit_client_reports_a_closed_connection(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	peer_says(&p, "250-half a reply\r\n");
	close(p.peer);
	p.peer = -1;
	assert_int_equal(submit_client_command(&p.c, NULL, false), -1);
	assert_non_null(strstr(p.c.err, "closed"));
	pair_close(&p);
}

static void test_submit_client_refuses_what_is_no_reply(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	peer_says(&p, "hello there\r\n");
	assert_int_equal(submit_client_command(&p.c, NULL, false), -1);
	assert_non_null(strstr(p.c.err, "no SMTP reply"));
	pair_close(&p);
}

static void test_submit_client_tells_a_daemon_that_is_not_there(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_submit_client.XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[64];
	snprintf(path, sizeof path, "%s/submit", dir);
	struct submit_client c;
	/* no file */
	assert_int_equal(submit_client_connect(&c, path, 5),
			 SUBMIT_NOT_RUNNING);
	assert_non_null(strstr(c.err, path));
	/* a file left by a daemon that is gone: bound, nobody listening */
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	assert_int_equal(submit_client_connect(&c, path, 5),
			 SUBMIT_NOT_RUNNING);
	/* listening: connected */
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(submit_client_connect(&c, path, 5), SUBMIT_CONNECTED);
	submit_client_close(&c);
	close(fd);
	unlink(path);
	rmdir(dir);
}

/* -bs: what standard input holds reaches the peer; what the peer says
 * reaches standard output, and its close ends the relay. */
static void test_submit_client_relays_both_ways(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	int in[2], out[2];
	assert_int_equal(pipe(in), 0);
	assert_int_equal(pipe(out), 0);
	const char *commands = "EHLO php\r\nQUIT\r\n";
	assert_int_equal(write(in[1], commands, strlen(commands)),
			 (ssize_t)strlen(commands));
	close(in[1]);
	peer_says(&p, "220 hi\r\n221 bye\r\n");
	shutdown(p.peer, SHUT_WR);
	assert_int_equal(submit_client_relay(&p.c, in[0], out[1]), 0);
	close(out[1]);
	char got[64] = "";
	assert_int_equal(read(out[0], got, sizeof got - 1), 17);
	assert_string_equal(got, "220 hi\r\n221 bye\r\n");
	peer_heard(&p, commands);
	submit_client_close(&p.c);
	char more;
	assert_int_equal(read(p.peer, &more, 1), 0); /* nothing after them */
	close(in[0]);
	close(out[0]);
	pair_close(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_submit_client_reads_a_multiline_ehlo_reply),
	    cmocka_unit_test(
		test_submit_client_keeps_the_enhanced_code_and_text),
	    cmocka_unit_test(test_submit_client_refuses_an_endless_reply_line),
	    cmocka_unit_test(test_submit_client_reports_a_closed_connection),
	    cmocka_unit_test(test_submit_client_refuses_what_is_no_reply),
	    cmocka_unit_test(
		test_submit_client_tells_a_daemon_that_is_not_there),
	    cmocka_unit_test(test_submit_client_relays_both_ways),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
