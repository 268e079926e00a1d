/*
 * The spool against a real event loop, the real iothread and a temporary
 * directory: envelope text, the group commit, and recovery after the
 * kinds of damage a crash leaves.
 */
/* cmocka.h needs these first. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/iothread.h"
#include "facteur/spool.h"

struct fixture {
	char tmp[64];
	char spool_dir[128];
	char queue_dir[160];
	struct event_base *base;
	struct iothread *io;
	struct spool *spool;
};

struct result {
	int calls;
	int error;
};

static void on_done(int error, void *arg)
{
	struct result *r = arg;
	r->calls++;
	r->error = error;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	char err[256];

	assert_non_null(f);
	strcpy(f->tmp, "/tmp/test_spool.XXXXXX");
	assert_non_null(mkdtemp(f->tmp));
	snprintf(f->spool_dir, sizeof f->spool_dir, "%s/a/spool", f->tmp);
	snprintf(f->queue_dir, sizeof f->queue_dir, "%s/queue", f->spool_dir);
	f->base = event_base_new();
	assert_non_null(f->base);
	f->io = iothread_new(f->base);
	assert_non_null(f->io);
	f->spool = spool_open(f->base, f->io, f->spool_dir, err, sizeof err);
	if (f->spool == NULL)
		fail_msg("spool_open: %s", err);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	spool_close(f->spool);
	iothread_free(f->io);
	event_base_free(f->base);
	nftw(f->tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Run the loop until *calls reaches target; ten seconds at most. */
static void run_until(struct fixture *f, const int *calls, int target)
{
	struct timeval tick = {0, 100000};
	struct event *timer = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);

	assert_non_null(timer);
	assert_int_equal(event_add(timer, &tick), 0);
	for (int i = 0; i < 100 && *calls < target; i++)
		event_base_loop(f->base, EVLOOP_ONCE);
	event_free(timer);
	assert_int_equal(*calls, target);
}

static char *file_path(struct fixture *f, const char *id, const char *ext)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s/%s%s", f->queue_dir, id, ext);
	return buf;
}

static bool file_exists(struct fixture *f, const char *id, const char *ext)
{
	struct stat st;
	return stat(file_path(f, id, ext), &st) == 0;
}

static char *read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	assert_non_null(fp);
	char *buf = malloc(1 << 20);
	assert_non_null(buf);
	*len = fread(buf, 1, 1 << 20, fp);
	fclose(fp);
	return buf;
}

static void write_all(const char *path, const void *data, size_t len)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

static void append_all(const char *path, const void *data, size_t len)
{
	FILE *fp = fopen(path, "ab");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

static char *xstrdup(const char *s)
{
	char *p = s ? strdup(s) : NULL;
	if (s != NULL)
		assert_non_null(p);
	return p;
}

/* An envelope with the values most likely to break an encoding. */
static struct spool_envelope *awkward_envelope(void)
{
	struct spool_envelope *env = calloc(1, sizeof *env);
	assert_non_null(env);
	strcpy(env->id, "0123456789ABCDEF");
	env->arrival = 1700000000;
	env->sender = xstrdup("\"john smith\"+tag=x@exämple.org");
	env->client_addr = xstrdup("::1");
	env->helo = xstrdup("[127.0.0.1] evil\r\nrcpt x");
	env->protocol = xstrdup("ESMTPSA");
	env->auth_user = xstrdup("-");
	env->size = UINT64_MAX;
	env->body = SMTP_BODY_8BITMIME;
	env->smtputf8 = true;
	env->ret = SMTP_RET_HDRS;
	env->envid = xstrdup("+2D space \x7f tab\t%");
	env->flags = SPOOL_FLAG_DELAY_NOTIFIED;
	env->rcpt_count = 3;
	env->rcpts = calloc(3, sizeof *env->rcpts);
	assert_non_null(env->rcpts);
	env->rcpts[0].address = xstrdup("ünïcode@例え.jp");
	env->rcpts[0].original = xstrdup("alias@example.org");
	env->rcpts[0].orcpt = xstrdup("rfc822;alias+2B@example.org");
	env->rcpts[0].notify = SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY;
	env->rcpts[0].local = true;
	env->rcpts[1].address = xstrdup("-x-@-");
	env->rcpts[1].original = xstrdup("=");
	env->rcpts[1].notify = SMTP_NOTIFY_NEVER;
	env->rcpts[2].address = xstrdup("c@example.net");
	env->rcpts[2].original = xstrdup("c@example.net");
	return env;
}

static void assert_str_or_null_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_envelopes_equal(const struct spool_envelope *a,
				   const struct spool_envelope *b)
{
	assert_string_equal(a->id, b->id);
	assert_int_equal(a->arrival, b->arrival);
	assert_string_equal(a->sender, b->sender);
	assert_string_equal(a->client_addr, b->client_addr);
	assert_string_equal(a->helo, b->helo);
	assert_string_equal(a->protocol, b->protocol);
	assert_str_or_null_equal(a->auth_user, b->auth_user);
	assert_true(a->size == b->size);
	assert_int_equal(a->body, b->body);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_int_equal(a->ret, b->ret);
	assert_str_or_null_equal(a->envid, b->envid);
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->rcpt_count, b->rcpt_count);
	for (size_t i = 0; i < a->rcpt_count; i++) {
		const struct spool_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		assert_string_equal(x->address, y->address);
		assert_string_equal(x->original, y->original);
		assert_str_or_null_equal(x->orcpt, y->orcpt);
		assert_int_equal(x->notify, y->notify);
		assert_int_equal(x->local, y->local);
		assert_int_equal(x->state, y->state);
		assert_int_equal(x->attempts, y->attempts);
		assert_int_equal(x->next_attempt, y->next_attempt);
		assert_int_equal(x->updated, y->updated);
		assert_string_equal(x->dsn, y->dsn);
		assert_str_or_null_equal(x->reason, y->reason);
	}
}

/* Envelope text followed by the given extra text. */
static char *envelope_with(const struct spool_envelope *env, const char *extra,
			   size_t extra_len, size_t *len)
{
	size_t head_len;
	char *head = spool_envelope_format(env, &head_len);
	assert_non_null(head);
	char *text = malloc(head_len + extra_len + 1);
	assert_non_null(text);
	memcpy(text, head, head_len);
	memcpy(text + head_len, extra, extra_len);
	text[head_len + extra_len] = '\0';
	free(head);
	*len = head_len + extra_len;
	return text;
}

static void test_envelope_round_trip_keeps_awkward_values(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	size_t len, valid_len;

	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	assert_memory_equal(text, "facteur-envelope 1\n", 19);
	assert_string_equal(text + len - 4, "end\n");
	/* Encoded values never split a line or a token. */
	assert_null(strstr(text, "\r"));
	assert_null(strstr(text, "evil\n"));
	assert_non_null(strstr(text, "auth +2D\n"));

	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_envelope_null_fields_and_empty_sender(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	size_t len, valid_len;

	env->sender[0] = '\0';
	free(env->auth_user);
	env->auth_user = NULL;
	free(env->envid);
	env->envid = NULL;
	env->body = SMTP_BODY_UNSPECIFIED;
	env->ret = SMTP_RET_UNSPECIFIED;
	env->arrival = -5;

	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	assert_non_null(strstr(text, "\nsender -\n"));
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_string_equal(back.sender, "");
	assert_null(back.auth_user);
	assert_null(back.envid);
	assert_null(back.rcpts[1].orcpt);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_envelope_records_apply_in_order_last_wins(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	char records[2048] = "";
	size_t len, valid_len, rlen;

	env->rcpts[1].state = RCPT_DEFERRED;
	env->rcpts[1].attempts = 1;
	env->rcpts[1].next_attempt = 1700000600;
	env->rcpts[1].updated = 1700000000;
	strcpy(env->rcpts[1].dsn, "4.4.1");
	env->rcpts[1].reason = xstrdup("connection refused");
	char *r = spool_record_format(env, 1, &rlen);
	assert_non_null(r);
	assert_int_equal(strlen(r), rlen);
	assert_string_equal(r, "state 1 deferred 1 1700000600 1700000000 "
			       "4.4.1 connection+20refused\n");
	strcat(records, r);
	free(r);

	env->rcpts[1].state = RCPT_DELIVERED;
	env->rcpts[1].attempts = 2;
	env->rcpts[1].updated = 1700000700;
	strcpy(env->rcpts[1].dsn, "2.0.0");
	free(env->rcpts[1].reason);
	env->rcpts[1].reason = xstrdup("250 ok: queued as - x");
	r = spool_record_format(env, 1, &rlen);
	strcat(records, r);
	free(r);
	strcat(records, "flags 0\nflags 7\n");
	env->flags = 7;

	env->rcpts[0].state = RCPT_BOUNCED;
	env->rcpts[0].attempts = 1;
	strcpy(env->rcpts[0].dsn, "5.1.1");
	r = spool_record_format(env, 0, &rlen);
	strcat(records, r);
	free(r);

	/* The envelope itself as first written: fresh recipients. */
	struct spool_envelope *fresh = awkward_envelope();
	char *text = envelope_with(fresh, records, strlen(records), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	assert_envelopes_equal(env, &back);
	assert_int_equal(back.rcpts[1].state, RCPT_DELIVERED);
	assert_string_equal(back.rcpts[1].reason, "250 ok: queued as - x");
	assert_int_equal(back.rcpts[2].state, RCPT_PENDING);
	assert_int_equal(back.flags, 7);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(fresh);
	spool_envelope_free(env);
}

static void test_envelope_torn_record_is_ignored_with_valid_len(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	const char good[] = "state 2 delivered 1 0 1700000001 2.0.0 -\n";
	const char torn[] = "state 0 bounced 1 0 17000";
	const char last[] = "state 1 delivered 1 0 0 - -\n";
	char extra[256];
	size_t len, valid_len;

	snprintf(extra, sizeof extra, "%s%s", good, torn);
	char *text = envelope_with(env, extra, strlen(extra), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len - strlen(torn));
	assert_int_equal(back.rcpts[2].state, RCPT_DELIVERED);
	assert_int_equal(back.rcpts[0].state, RCPT_PENDING);
	spool_envelope_clear(&back);
	free(text);

	/* A complete line that is not a valid record stops the parse too,
	 * and nothing after it is applied. */
	const char *bad_records[] = {
	    "state 3 delivered 1 0 0 - -\n",	      /* index out of range */
	    "state 0 lost 1 0 0 - -\n",		      /* unknown state */
	    "state 0 delivered 4294967296 0 0 - -\n", /* attempts range */
	    "state 0 delivered 1 0 0 2.0.0.0.0.0.0 -\n", /* dsn too long */
	    "state 0 delivered 1 0 0 - a+0\n",		 /* bad escape */
	    "state 0 delivered 1 0 0 - a+00\n",		 /* NUL octet */
	    "state 0  delivered 1 0 0 - -\n",		 /* double space */
	    "state 0 delivered 1 0 0 - -  \n",		 /* trailing space */
	    "flags -1\n",
	    "flags\n",
	    "end\n",
	};
	for (size_t i = 0; i < sizeof bad_records / sizeof *bad_records; i++) {
		snprintf(extra, sizeof extra, "%s%s%s", good, bad_records[i],
			 last);
		text = envelope_with(env, extra, strlen(extra), &len);
		assert_int_equal(
		    spool_envelope_parse(text, len, &back, &valid_len), 0);
		size_t bad_at = len - strlen(last) - strlen(bad_records[i]);
		assert_memory_equal(text + bad_at, bad_records[i],
				    strlen(bad_records[i]));
		assert_int_equal(valid_len, bad_at);
		assert_int_equal(back.rcpts[2].state, RCPT_DELIVERED);
		assert_int_equal(back.rcpts[1].state, RCPT_PENDING);
		spool_envelope_clear(&back);
		free(text);
	}
	spool_envelope_free(env);
}

static void test_envelope_zero_filled_tail_is_ignored(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	char extra[512];
	const char good[] = "state 1 bounced 3 0 1700000009 5.0.0 no\n";
	size_t len, valid_len;

	memset(extra, 0, sizeof extra);
	memcpy(extra, good, strlen(good));
	extra[300] = '\n'; /* zeros, then a newline: still not a record */
	char *text = envelope_with(env, extra, sizeof extra, &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len - sizeof extra + strlen(good));
	assert_int_equal(back.rcpts[1].state, RCPT_BOUNCED);
	assert_int_equal(back.rcpts[1].attempts, 3);
	spool_envelope_clear(&back);
	free(text);

	/* A file that is nothing but zeros is no envelope. */
	memset(extra, 0, sizeof extra);
	errno = 0;
	assert_int_equal(
	    spool_envelope_parse(extra, sizeof extra, &back, &valid_len), -1);
	assert_int_equal(errno, EINVAL);
	spool_envelope_free(env);
}

static void test_envelope_truncated_is_rejected(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	size_t len, valid_len;

	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	/* Every cut before the end of the "end" line is incomplete. */
	for (size_t cut = 0; cut < len; cut++) {
		errno = 0;
		assert_int_equal(
		    spool_envelope_parse(text, cut, &back, &valid_len), -1);
		assert_int_equal(errno, EINVAL);
	}
	/* A damaged octet in the envelope part rejects it as a whole. */
	text[len - 3] = 'x';
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len),
			 -1);
	free(text);
	spool_envelope_free(env);
}

static void test_envelope_rejects_bad_header_values(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	size_t len, valid_len;
	const struct {
		const char *from, *to;
	} edits[] = {
	    {"id 0123456789ABCDEF", "id 0123456789abcdef"},
	    {"id 0123456789ABCDEF", "id ../../etc/passw"},
	    {"arrival 1700000000", "arrival 99999999999999999999"},
	    {"size 18446744073709551615", "size 18446744073709551616"},
	    {"body 8bitmime", "body binarymime"},
	    {"smtputf8 1", "smtputf8 2"},
	    {"ret hdrs", "ret none"},
	    {"flags 1", "flags 4294967296"},
	    {"facteur-envelope 1", "facteur-envelope 2"},
	};
	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
		char *at = strstr(text, edits[i].from);
		assert_non_null(at);
		size_t head = (size_t)(at - text);
		size_t from_len = strlen(edits[i].from);
		char *edited = NULL;
		int n = asprintf(&edited, "%.*s%s%s", (int)head, text,
				 edits[i].to, at + from_len);
		assert_true(n > 0);
		assert_int_equal(
		    spool_envelope_parse(edited, (size_t)n, &back, &valid_len),
		    -1);
		free(edited);
	}
	free(text);
	spool_envelope_free(env);
}

static void test_envelope_done_only_when_every_rcpt_settled(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();

	assert_false(spool_envelope_done(env));
	env->rcpts[0].state = RCPT_DELIVERED;
	env->rcpts[1].state = RCPT_BOUNCED;
	env->rcpts[2].state = RCPT_DEFERRED;
	assert_false(spool_envelope_done(env));
	env->rcpts[2].state = RCPT_DELIVERED;
	assert_true(spool_envelope_done(env));
	assert_string_equal(rcpt_state_name(RCPT_DEFERRED), "deferred");
	spool_envelope_free(env);
}

static void test_record_format_rejects_out_of_range_index(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	size_t len;

	assert_null(spool_record_format(env, 3, &len));
	spool_envelope_free(env);
}

static void test_spool_open_creates_private_queue_dir(void **state)
{
	struct fixture *f = *state;
	struct stat st;

	assert_int_equal(stat(f->queue_dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(stat(f->spool_dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_string_equal(spool_dir(f->spool), f->spool_dir);

	char path[256], tiny[8];
	spool_msg_path(f->spool, "0123456789ABCDEF", path, sizeof path);
	assert_string_equal(path, file_path(f, "0123456789ABCDEF", ".msg"));
	assert_string_equal(
	    spool_msg_path(f->spool, "0123456789ABCDEF", tiny, sizeof tiny),
	    "");
}

static const char message[] = "Subject: hi\r\n\r\n..dot\r\nbody\r\n";

/* Receive `message` and commit it with a copy of awkward_envelope(). */
static struct spool_incoming *receive(struct fixture *f, char *id)
{
	struct spool_incoming *inc = spool_incoming_new(f->spool);
	assert_non_null(inc);
	assert_int_equal(strlen(inc->id), SPOOL_ID_LEN);
	strcpy(id, inc->id);
	spool_incoming_write(inc, message, 10);
	spool_incoming_write(inc, message + 10, sizeof message - 1 - 10);
	assert_int_equal(inc->error, 0);
	assert_int_equal(inc->written, sizeof message - 1);
	return inc;
}

static void test_commit_makes_files_that_parse(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];
	size_t len, valid_len;

	struct spool_incoming *inc = receive(f, id);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	assert_int_equal(res.calls, 0); /* never inside the call */
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);

	char *text = read_all(file_path(f, id, ".msg"), &len);
	assert_int_equal(len, sizeof message - 1);
	assert_memory_equal(text, message, len);
	free(text);

	text = read_all(file_path(f, id, ".env"), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	/* The id is the incoming's, not the one in the given envelope. */
	assert_string_equal(back.id, id);
	strcpy(env->id, id);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_commit_keeps_recipient_state_given(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];
	size_t len, valid_len;

	env->rcpts[2].state = RCPT_DELIVERED;
	env->rcpts[2].updated = 1700000123;
	struct spool_incoming *inc = receive(f, id);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
	char *text = read_all(file_path(f, id, ".env"), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	strcpy(env->id, id);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_abort_removes_message_file(void **state)
{
	struct fixture *f = *state;
	char id[SPOOL_ID_LEN + 1];

	struct spool_incoming *inc = receive(f, id);
	assert_true(file_exists(f, id, ".msg"));
	spool_incoming_abort(f->spool, inc);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
}

static void test_commit_after_failed_write_reports_error_no_files(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	struct spool_incoming *inc = receive(f, id);
	/* The descriptor now refuses writes, as a full disk would. */
	int ro = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	assert_true(dup2(ro, inc->fd) == inc->fd);
	close(ro);
	spool_incoming_write(inc, "more\r\n", 6);
	assert_int_equal(inc->error, EBADF);
	spool_incoming_write(inc, "again\r\n", 7);
	assert_int_equal(inc->error, EBADF); /* the first errno stays */

	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	assert_int_equal(res.calls, 0);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, EBADF);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
	spool_envelope_free(env);
}

static void test_commit_of_short_message_file_is_refused(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	struct spool_incoming *inc = receive(f, id);
	/* What was written is not what is there: never commit that. */
	assert_int_equal(ftruncate(inc->fd, 3), 0);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, EIO);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
	spool_envelope_free(env);
}

static void test_commits_of_one_loop_turn_share_one_iothread_round(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	enum { N = 20 };
	struct result res[N] = {{0}};
	int total = 0;
	char ids[N][SPOOL_ID_LEN + 1];

	for (int i = 0; i < N; i++) {
		struct spool_incoming *inc = receive(f, ids[i]);
		spool_incoming_commit(f->spool, inc, env, on_done, &res[i]);
	}
	/* A state record in the same turn joins the same batch. */
	struct result rec = {0};
	strcpy(env->id, ids[0]);
	spool_record_flags(f->spool, env, on_done, &rec);
	assert_int_equal(iothread_pending(f->io), 0);

	/* One pass over the active events runs the batch's flush. */
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(iothread_pending(f->io), 1);

	for (int round = 0; round < 100 && total < N + 1; round++) {
		event_base_loop(f->base, EVLOOP_ONCE);
		total = rec.calls;
		for (int i = 0; i < N; i++)
			total += res[i].calls;
	}
	assert_int_equal(total, N + 1);
	assert_int_equal(iothread_pending(f->io), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(res[i].error, 0);
		assert_true(file_exists(f, ids[i], ".env"));
	}
	assert_int_equal(rec.error, 0);
	spool_envelope_free(env);
}

static void test_request_after_flush_forms_next_batch(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result a = {0}, b = {0};
	char id_a[SPOOL_ID_LEN + 1], id_b[SPOOL_ID_LEN + 1];

	spool_incoming_commit(f->spool, receive(f, id_a), env, on_done, &a);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(iothread_pending(f->io), 1);
	spool_incoming_commit(f->spool, receive(f, id_b), env, on_done, &b);
	run_until(f, &b.calls, 1);
	run_until(f, &a.calls, 1);
	assert_int_equal(a.error, 0);
	assert_int_equal(b.error, 0);
	spool_envelope_free(env);
}

static void test_record_rcpt_is_appended_and_parsed(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];
	size_t len, valid_len;

	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	run_until(f, &res.calls, 1);
	strcpy(env->id, id);

	env->rcpts[1].state = RCPT_DEFERRED;
	env->rcpts[1].attempts = 1;
	strcpy(env->rcpts[1].dsn, "4.4.1");
	spool_record_rcpt(f->spool, env, 1, on_done, &res);
	env->flags = 0;
	spool_record_flags(f->spool, env, on_done, &res);
	env->rcpts[1].state = RCPT_DELIVERED;
	env->rcpts[1].attempts = 2;
	strcpy(env->rcpts[1].dsn, "2.0.0");
	spool_record_rcpt(f->spool, env, 1, on_done, &res);
	assert_int_equal(res.calls, 1);
	run_until(f, &res.calls, 4);
	assert_int_equal(res.error, 0);

	char *text = read_all(file_path(f, id, ".env"), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_record_for_removed_message_reports_enoent(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	run_until(f, &res.calls, 1);
	strcpy(env->id, id);
	spool_remove(f->spool, id);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));

	spool_record_rcpt(f->spool, env, 0, on_done, &res);
	run_until(f, &res.calls, 2);
	assert_int_equal(res.error, ENOENT);
	/* The record did not bring the envelope back. */
	assert_false(file_exists(f, id, ".env"));

	spool_record_rcpt(f->spool, env, 7, on_done, &res);
	run_until(f, &res.calls, 3);
	assert_int_equal(res.error, EINVAL);
	spool_envelope_free(env);
}

static void test_record_cut_short_is_undone(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];
	struct stat before, after;
	struct rlimit saved, small;
	size_t len, valid_len;

	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	run_until(f, &res.calls, 1);
	strcpy(env->id, id);
	assert_int_equal(stat(file_path(f, id, ".env"), &before), 0);

	/* A file size limit makes the record's write stop part-way, as a
	 * full disk would. */
	assert_true(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
	small = saved;
	small.rlim_cur = (rlim_t)before.st_size + 10;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
	env->rcpts[0].state = RCPT_DELIVERED;
	spool_record_rcpt(f->spool, env, 0, on_done, &res);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
	assert_true(signal(SIGXFSZ, SIG_DFL) != SIG_ERR);
	run_until(f, &res.calls, 2);
	assert_int_equal(res.error, EFBIG);

	/* The partial record is gone, so the next one is read back. */
	assert_int_equal(stat(file_path(f, id, ".env"), &after), 0);
	assert_int_equal(after.st_size, before.st_size);
	env->rcpts[1].state = RCPT_BOUNCED;
	spool_record_rcpt(f->spool, env, 1, on_done, &res);
	run_until(f, &res.calls, 3);
	assert_int_equal(res.error, 0);
	char *text = read_all(file_path(f, id, ".env"), &len);
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	assert_int_equal(back.rcpts[0].state, RCPT_PENDING);
	assert_int_equal(back.rcpts[1].state, RCPT_BOUNCED);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_close_with_commit_pending_still_calls_back(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	spool_close(f->spool);
	f->spool = NULL;
	assert_int_equal(res.calls, 0);
	/* The iothread finishes what it holds; the spool goes after. */
	iothread_free(f->io);
	f->io = NULL;
	assert_int_equal(res.calls, 1);
	assert_int_equal(res.error, 0);
	assert_true(file_exists(f, id, ".env"));
	spool_envelope_free(env);
}

/* Recovery. */

struct found {
	int count;
	char ids[8][SPOOL_ID_LEN + 1];
	struct spool_envelope *envs[8];
};

static void on_found(struct spool_envelope *env, void *arg)
{
	struct found *found = arg;
	assert_true(found->count < 8);
	strcpy(found->ids[found->count], env->id);
	found->envs[found->count++] = env;
}

static void found_free(struct found *found)
{
	for (int i = 0; i < found->count; i++)
		spool_envelope_free(found->envs[i]);
}

/* Commit a message for real and return its id. */
static void commit_one(struct fixture *f, struct spool_envelope *env, char *id)
{
	struct result res = {0};
	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
}

static void test_recover_sorts_out_what_a_crash_leaves(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char live[SPOOL_ID_LEN + 1], torn[SPOOL_ID_LEN + 1];
	char done[SPOOL_ID_LEN + 1], orphan[SPOOL_ID_LEN + 1];
	char short_msg[SPOOL_ID_LEN + 1], garbage[SPOOL_ID_LEN + 1];
	char cut[SPOOL_ID_LEN + 1];
	struct found found = {0};
	size_t len;

	commit_one(f, env, live);
	commit_one(f, env, torn);
	commit_one(f, env, done);
	commit_one(f, env, orphan);
	commit_one(f, env, short_msg);
	commit_one(f, env, garbage);
	commit_one(f, env, cut);

	/* A message still being received when the daemon died. */
	char receiving[SPOOL_ID_LEN + 1];
	struct spool_incoming *inc = receive(f, receiving);
	close(inc->fd);
	free(inc); /* leaked on purpose as a crash would: no abort */

	/* torn: a good record, then half of one. */
	const char good[] = "state 0 delivered 1 0 1700000001 2.0.0 -\n";
	const char half[] = "state 1 bounced 1 0 1700";
	append_all(file_path(f, torn, ".env"), good, strlen(good));
	append_all(file_path(f, torn, ".env"), half, strlen(half));

	/* done: every recipient settled, the removal never happened. */
	for (size_t i = 0; i < 3; i++) {
		char rec[64];
		snprintf(rec, sizeof rec, "state %zu %s 1 0 0 - -\n", i,
			 i == 1 ? "bounced" : "delivered");
		append_all(file_path(f, done, ".env"), rec, strlen(rec));
	}
	assert_int_equal(unlink(file_path(f, orphan, ".msg")), 0);
	/* short_msg: the envelope reached the disk, the message did not. */
	assert_int_equal(truncate(file_path(f, short_msg, ".msg"), 5), 0);
	write_all(file_path(f, garbage, ".env"), "\0\0\0\0\0\0\0\0", 8);
	char *text = read_all(file_path(f, cut, ".env"), &len);
	write_all(file_path(f, cut, ".env"), text, len / 2);
	free(text);
	write_all(file_path(f, "leftover", ".tmp"), "x", 1);
	assert_int_equal(mkdir(file_path(f, "subdir", ""), 0700), 0);

	/* Recovery runs on a fresh spool, as at start-up. */
	spool_close(f->spool);
	char err[256];
	f->spool = spool_open(f->base, f->io, f->spool_dir, err, sizeof err);
	assert_non_null(f->spool);
	assert_int_equal(spool_recover(f->spool, on_found, &found), 2);

	assert_int_equal(found.count, 2);
	assert_string_equal(found.ids[0], live);
	assert_string_equal(found.ids[1], torn);
	assert_int_equal(found.envs[1]->rcpts[0].state, RCPT_DELIVERED);
	assert_int_equal(found.envs[1]->rcpts[1].state, RCPT_PENDING);

	text = read_all(file_path(f, torn, ".env"), &len);
	assert_true(len > strlen(good));
	assert_memory_equal(text + len - strlen(good), good, strlen(good));
	free(text);

	const char *gone[] = {done, orphan, short_msg, garbage, cut, receiving};
	for (size_t i = 0; i < sizeof gone / sizeof *gone; i++) {
		assert_false(file_exists(f, gone[i], ".msg"));
		assert_false(file_exists(f, gone[i], ".env"));
	}
	assert_true(file_exists(f, live, ".msg"));
	assert_true(file_exists(f, torn, ".msg"));
	assert_false(file_exists(f, "leftover", ".tmp"));
	assert_true(file_exists(f, "subdir", ""));

	const struct spool_recovery *rec = spool_last_recovery(f->spool);
	assert_int_equal(rec->live, 2);
	assert_int_equal(rec->uncommitted, 4); /* short, garbage, cut, rx */
	assert_int_equal(rec->orphaned, 1);
	assert_int_equal(rec->done, 1);
	assert_int_equal(rec->truncated, 1);
	assert_int_equal(rec->other, 1);
	assert_int_equal(rec->unreadable, 0);

	/* A second recovery finds the same two and changes nothing. */
	struct found again = {0};
	assert_int_equal(spool_recover(f->spool, on_found, &again), 2);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 0);
	found_free(&again);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_recovered_message_takes_new_records(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct found found = {0};
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	commit_one(f, env, id);
	const char half[] = "state 1 bou";
	append_all(file_path(f, id, ".env"), half, strlen(half));
	assert_int_equal(spool_recover(f->spool, on_found, &found), 1);

	/* After the cut, an appended record is read back. */
	struct spool_envelope *back = found.envs[0];
	back->rcpts[1].state = RCPT_BOUNCED;
	spool_record_rcpt(f->spool, back, 1, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
	struct found again = {0};
	assert_int_equal(spool_recover(f->spool, on_found, &again), 1);
	assert_int_equal(again.envs[0]->rcpts[1].state, RCPT_BOUNCED);
	found_free(&again);
	found_free(&found);
	spool_envelope_free(env);
}

static int compare_ids(const void *a, const void *b)
{
	return memcmp(a, b, SPOOL_ID_LEN);
}

static void test_ids_unique_over_100000_draws(void **state)
{
	struct fixture *f = *state;
	enum { N = 100000 };
	char(*ids)[SPOOL_ID_LEN + 1] = calloc(N, sizeof *ids);

	assert_non_null(ids);
	for (size_t i = 0; i < N; i++) {
		spool_new_id(f->spool, ids[i]);
		assert_int_equal(strlen(ids[i]), SPOOL_ID_LEN);
		assert_int_equal(strspn(ids[i], "0123456789ABCDEF"),
				 SPOOL_ID_LEN);
		/* Drawn in increasing order: arrival order sorts by id. */
		if (i > 0)
			assert_true(memcmp(ids[i - 1], ids[i], SPOOL_ID_LEN) <
				    0);
	}
	qsort(ids, N, sizeof *ids, compare_ids);
	for (size_t i = 1; i < N; i++)
		assert_true(memcmp(ids[i - 1], ids[i], SPOOL_ID_LEN) != 0);
	free(ids);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_envelope_round_trip_keeps_awkward_values),
	    cmocka_unit_test(test_envelope_null_fields_and_empty_sender),
	    cmocka_unit_test(test_envelope_records_apply_in_order_last_wins),
	    cmocka_unit_test(
		test_envelope_torn_record_is_ignored_with_valid_len),
	    cmocka_unit_test(test_envelope_zero_filled_tail_is_ignored),
	    cmocka_unit_test(test_envelope_truncated_is_rejected),
	    cmocka_unit_test(test_envelope_rejects_bad_header_values),
	    cmocka_unit_test(test_envelope_done_only_when_every_rcpt_settled),
	    cmocka_unit_test(test_record_format_rejects_out_of_range_index),
	    cmocka_unit_test_setup_teardown(
		test_spool_open_creates_private_queue_dir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_commit_makes_files_that_parse,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_commit_keeps_recipient_state_given, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_abort_removes_message_file,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_commit_after_failed_write_reports_error_no_files, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_commit_of_short_message_file_is_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_commits_of_one_loop_turn_share_one_iothread_round, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_request_after_flush_forms_next_batch, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_record_rcpt_is_appended_and_parsed, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_record_for_removed_message_reports_enoent, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(test_record_cut_short_is_undone,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_close_with_commit_pending_still_calls_back, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_recover_sorts_out_what_a_crash_leaves, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_recovered_message_takes_new_records, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ids_unique_over_100000_draws,
					    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
