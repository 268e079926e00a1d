/*
 * The spool against a real event loop, the real iothread and a temporary
 * directory: envelope text; the drop spool's files (facteur-sendmail);
 * the daemon's log, its group commit, and recovery after the kinds of
 * damage a crash leaves.
 */
/* cmocka.h needs these first. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
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
#include "facteur/spool_log.h"
#include "facteur/spool_strings.h"

struct fixture {
	char tmp[64];
	char spool_dir[128];
	char queue_dir[160];
	char log_dir[160];
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

/* A fixture with the daemon's spool (logged) or a drop spool. */
static int setup_spool(void **state, bool logged)
{
	struct fixture *f = calloc(1, sizeof *f);
	char err[256];

	assert_non_null(f);
	strcpy(f->tmp, "/tmp/test_spool.XXXXXX");
	assert_non_null(mkdtemp(f->tmp));
	snprintf(f->spool_dir, sizeof f->spool_dir, "%s/a/spool", f->tmp);
	snprintf(f->queue_dir, sizeof f->queue_dir, "%s/queue", f->spool_dir);
	snprintf(f->log_dir, sizeof f->log_dir, "%s/log", f->spool_dir);
	f->base = event_base_new();
	assert_non_null(f->base);
	f->io = iothread_new(f->base);
	assert_non_null(f->io);
	f->spool =
	    logged ? spool_open(f->base, f->io, f->spool_dir, err, sizeof err)
		   : spool_open_drop(f->base, f->io, f->spool_dir, err,
				     sizeof err);
	if (f->spool == NULL)
		fail_msg("spool_open: %s", err);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_spool(state, true);
}

static int setup_drop(void **state)
{
	return setup_spool(state, false);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	spool_close(f->spool);
	if (f->io != NULL)
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
	env->flags = SPOOL_FLAG_DELAY_NOTIFIED | SPOOL_FLAG_REQUIRETLS;
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
		assert_str_or_null_equal(x->sender, y->sender);
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

/* The awkward envelope with a reason, a forwarded recipient and a DKIM
 * outcome: every kind of string a packed envelope holds. */
static struct spool_envelope *awkward_envelope_with_state(void)
{
	struct spool_envelope *env = awkward_envelope();
	env->rcpts[0].reason = xstrdup("connect to mx.example.org: refused");
	env->rcpts[0].state = RCPT_DEFERRED;
	strcpy(env->rcpts[0].dsn, "4.4.1");
	env->rcpts[2].sender = xstrdup("SRS0=abcd=xy=example.org=c@fwd.test");
	env->dkim = xstrdup("pass");
	return env;
}

static void test_envelope_packed_keeps_every_field(void **state)
{
	(void)state;
	struct spool_strings *strings = spool_strings_new();
	assert_non_null(strings);
	struct spool_envelope *plain = awkward_envelope_with_state();
	struct spool_envelope *packed =
	    spool_envelope_pack(awkward_envelope_with_state(), strings);
	assert_non_null(packed);
	assert_ptr_equal(packed->interned, strings);
	assert_envelopes_equal(plain, packed);
	assert_null(packed->dkim); /* for the accepted line only */
	/* The same text in the log either way. */
	size_t plain_len, packed_len;
	char *a = spool_envelope_format(plain, &plain_len);
	char *b = spool_envelope_format(packed, &packed_len);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(plain_len, packed_len);
	assert_memory_equal(a, b, plain_len);
	free(a);
	free(b);
	for (size_t i = 0; i < plain->rcpt_count; i++) {
		a = spool_record_format(plain, i, &plain_len);
		b = spool_record_format(packed, i, &packed_len);
		assert_int_equal(plain_len, packed_len);
		assert_memory_equal(a, b, plain_len);
		free(a);
		free(b);
	}
	/* client, HELO, protocol, login and the reason */
	assert_int_equal(spool_strings_count(strings), 5);
	assert_true(spool_envelope_pack(packed, strings) == packed);
	spool_envelope_free(packed);
	assert_int_equal(spool_strings_count(strings), 0);
	spool_envelope_free(plain);
	spool_strings_free(strings);
}

static void test_envelope_packed_share_their_common_texts(void **state)
{
	(void)state;
	struct spool_strings *strings = spool_strings_new();
	assert_non_null(strings);
	struct spool_envelope *x =
	    spool_envelope_pack(awkward_envelope_with_state(), strings);
	struct spool_envelope *y =
	    spool_envelope_pack(awkward_envelope_with_state(), strings);
	assert_non_null(x);
	assert_non_null(y);
	assert_ptr_equal(x->protocol, y->protocol);
	assert_ptr_equal(x->helo, y->helo);
	assert_ptr_equal(x->rcpts[0].reason, y->rcpts[0].reason);
	/* what is a message's own is not shared */
	assert_ptr_not_equal(x->sender, y->sender);
	assert_ptr_not_equal(x->rcpts[0].address, y->rcpts[0].address);
	assert_int_equal(spool_strings_count(strings), 5);
	spool_envelope_free(x);
	assert_int_equal(spool_strings_count(strings), 5);
	assert_string_equal(y->rcpts[0].reason,
			    "connect to mx.example.org: refused");
	spool_envelope_free(y);
	assert_int_equal(spool_strings_count(strings), 0);
	spool_strings_free(strings);
}

static void test_envelope_packed_without_recipients(void **state)
{
	(void)state;
	struct spool_strings *strings = spool_strings_new();
	struct spool_envelope *env = calloc(1, sizeof *env);
	assert_non_null(strings);
	assert_non_null(env);
	env->sender = xstrdup("");
	struct spool_envelope *packed = spool_envelope_pack(env, strings);
	assert_non_null(packed);
	assert_null(packed->rcpts);
	assert_string_equal(packed->sender, "");
	assert_null(packed->protocol);
	assert_int_equal(spool_strings_count(strings), 0);
	spool_envelope_free(packed);
	spool_strings_free(strings);
}

/* A new reason replaces the old in either form, the old one's text
 * given as the new too; NULL and "" leave none. */
static void test_envelope_set_reason_in_both_forms(void **state)
{
	(void)state;
	struct spool_strings *strings = spool_strings_new();
	assert_non_null(strings);
	struct spool_envelope *forms[2] = {
	    awkward_envelope_with_state(),
	    spool_envelope_pack(awkward_envelope_with_state(), strings),
	};
	assert_non_null(forms[1]);
	for (size_t f = 0; f < 2; f++) {
		struct spool_envelope *env = forms[f];
		assert_int_equal(spool_envelope_set_reason(env, 1, "busy"), 0);
		assert_string_equal(env->rcpts[1].reason, "busy");
		assert_int_equal(spool_envelope_set_reason(
				     env, 1, env->rcpts[1].reason),
				 0);
		assert_string_equal(env->rcpts[1].reason, "busy");
		assert_int_equal(spool_envelope_set_reason(env, 0, "busy"), 0);
		assert_int_equal(spool_envelope_set_reason(env, 1, ""), 0);
		assert_null(env->rcpts[1].reason);
		assert_int_equal(spool_envelope_set_reason(env, 2, NULL), 0);
		assert_null(env->rcpts[2].reason);
	}
	/* The packed one's "busy" is interned, its old reason gone:
	 * client, HELO, protocol, login and "busy". */
	assert_int_equal(spool_strings_count(strings), 5);
	assert_ptr_equal(spool_strings_get(strings, "busy"),
			 forms[1]->rcpts[0].reason);
	spool_strings_put(strings, forms[1]->rcpts[0].reason);
	spool_envelope_free(forms[0]);
	spool_envelope_free(forms[1]);
	assert_int_equal(spool_strings_count(strings), 0);
	spool_strings_free(strings);
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

static void test_envelope_forwarded_rcpt_keeps_its_sender(void **state)
{
	(void)state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	size_t len, valid_len;

	env->rcpts[1].sender = strdup("SRS0=GGBr=G3=example.org=a b@fwd.test");
	assert_non_null(env->rcpts[1].sender);
	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	/* Only the forwarded recipient's line has a seventh field. */
	assert_non_null(
	    strstr(text, " SRS0+3DGGBr+3DG3+3Dexample.org+3Da+20b@fwd.test\n"));
	assert_int_equal(spool_envelope_parse(text, len, &back, &valid_len), 0);
	assert_int_equal(valid_len, len);
	assert_null(back.rcpts[0].sender);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(text);
	spool_envelope_free(env);
}

static void test_envelope_of_older_spools_loads(void **state)
{
	(void)state;
	/* Six fields a recipient line, as written before forwarding. */
	const char old[] = "facteur-envelope 1\nid 0123456789ABCDEF\n"
			   "arrival 1700000000\nsender a@b.test\nclient "
			   "127.0.0.1\nhelo h\nprotocol ESMTP\nauth -\nsize "
			   "10\nbody -\nsmtputf8 0\nret -\nenvid -\nflags 0\n"
			   "rcpt c@d.test c@d.test - 0 0\nend\n";
	struct spool_envelope back;
	size_t valid_len;
	assert_int_equal(
	    spool_envelope_parse(old, sizeof old - 1, &back, &valid_len), 0);
	assert_int_equal(back.rcpt_count, 1);
	assert_null(back.rcpts[0].sender);
	spool_envelope_clear(&back);
	/* An eighth field is still refused. */
	const char more[] = "facteur-envelope 1\nid 0123456789ABCDEF\n"
			    "arrival 1700000000\nsender a@b.test\nclient "
			    "127.0.0.1\nhelo h\nprotocol ESMTP\nauth -\nsize "
			    "10\nbody -\nsmtputf8 0\nret -\nenvid -\nflags 0\n"
			    "rcpt c@d.test c@d.test - 0 0 s@x.test y\nend\n";
	assert_int_equal(
	    spool_envelope_parse(more, sizeof more - 1, &back, &valid_len), -1);
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
	    {"flags 9", "flags 4294967296"},
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

/* Helpers for the spool on disk. */

/* Run the loop until every flush handed to the iothread has called back
 * and two passes in a row found nothing more to do. */
static void drain(struct fixture *f)
{
	struct timeval tick = {0, 100000};
	struct event *timer = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
	int quiet = 0;

	assert_non_null(timer);
	assert_int_equal(event_add(timer, &tick), 0);
	for (int i = 0; i < 300 && quiet < 2; i++) {
		event_base_loop(f->base, EVLOOP_NONBLOCK);
		if (iothread_pending(f->io) == 0) {
			quiet++;
			continue;
		}
		quiet = 0;
		event_base_loop(f->base, EVLOOP_ONCE);
	}
	event_free(timer);
	assert_int_equal(iothread_pending(f->io), 0);
}

/* Close the daemon's spool as a stop would, and open a fresh one on the
 * same directory, as at start-up (recovery is the caller's). */
static void reopen(struct fixture *f)
{
	char err[256];

	spool_close(f->spool);
	f->spool = NULL;
	drain(f);
	f->spool = spool_open(f->base, f->io, f->spool_dir, err, sizeof err);
	if (f->spool == NULL)
		fail_msg("spool_open: %s", err);
}

/* Entries of dir whose name ends in suffix ("" counts all). */
static int count_dir(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), slen = strlen(suffix);
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (len >= slen && strcmp(de->d_name + len - slen, suffix) == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* The path of the newest segment in log/. */
static void newest_segment(struct fixture *f, char *path, size_t len)
{
	DIR *d = opendir(f->log_dir);
	char best[64] = "";
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		if (n == 20 && strcmp(de->d_name + 16, ".seg") == 0 &&
		    strcmp(de->d_name, best) > 0)
			memcpy(best, de->d_name, n + 1);
	}
	closedir(d);
	assert_true(best[0] != '\0');
	snprintf(path, len, "%s/%s", f->log_dir, best);
}

static bool path_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static off_t file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* A live message's wire form, read as a delivery would. */
static char *read_body(struct fixture *f, const char *id, size_t *len)
{
	struct spool_envelope e = {0};
	struct spool_body body;

	strcpy(e.id, id);
	if (spool_body_open(f->spool, &e, &body) != 0)
		fail_msg("spool_body_open %s: %s", id, strerror(errno));
	char *buf = malloc(body.length + 1);
	assert_non_null(buf);
	size_t got = 0;
	while (got < body.length) {
		ssize_t n = pread(body.fd, buf + got, body.length - got,
				  (off_t)(body.offset + got));
		assert_true(n > 0);
		got += (size_t)n;
	}
	/* the descriptor is the caller's and still open */
	assert_int_equal(close(body.fd), 0);
	*len = (size_t)body.length;
	return buf;
}

static void assert_body(struct fixture *f, const char *id, const char *want,
			size_t want_len)
{
	size_t len;
	char *got = read_body(f, id, &len);
	assert_int_equal(len, want_len);
	assert_memory_equal(got, want, len);
	free(got);
}

static const char message[] = "Subject: hi\r\n\r\n..dot\r\nbody\r\n";

/* Receive `message` on spool. */
static struct spool_incoming *receive_on(struct spool *spool, char *id)
{
	struct spool_incoming *inc = spool_incoming_new(spool);
	assert_non_null(inc);
	assert_int_equal(strlen(inc->id), SPOOL_ID_LEN);
	strcpy(id, inc->id);
	spool_incoming_write(inc, message, 10);
	spool_incoming_write(inc, message + 10, sizeof message - 1 - 10);
	assert_int_equal(inc->error, 0);
	assert_int_equal(inc->written, sizeof message - 1);
	return inc;
}

static struct spool_incoming *receive(struct fixture *f, char *id)
{
	return receive_on(f->spool, id);
}

/* A wire form of n octets, different at every offset that matters. */
static char *big_message(size_t n)
{
	char *p = malloc(n);
	assert_non_null(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (i + 1) % 64 == 0 ? '\n' : (char)('A' + (i / 64) % 26);
	return p;
}

/* Receive `data` in pieces of 4000 octets. */
static struct spool_incoming *receive_data(struct fixture *f, char *id,
					   const char *data, size_t n)
{
	struct spool_incoming *inc = spool_incoming_new(f->spool);
	assert_non_null(inc);
	strcpy(id, inc->id);
	for (size_t at = 0; at < n; at += 4000)
		spool_incoming_write(inc, data + at,
				     n - at < 4000 ? n - at : 4000);
	assert_int_equal(inc->error, 0);
	assert_int_equal(inc->written, n);
	return inc;
}

/* Commit on spool for real; the id into id. */
static void commit_on(struct fixture *f, struct spool *spool,
		      struct spool_envelope *env, char *id)
{
	struct result res = {0};
	spool_incoming_commit(spool, receive_on(spool, id), env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
}

static void commit_one(struct fixture *f, struct spool_envelope *env, char *id)
{
	commit_on(f, f->spool, env, id);
}

/* Commit a message of n octets (spilled to a file above 64 KiB). */
static void commit_big(struct fixture *f, struct spool_envelope *env, char *id,
		       const char *data, size_t n)
{
	struct result res = {0};
	spool_incoming_commit(f->spool, receive_data(f, id, data, n), env,
			      on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
}

/* Record recipient `index` of env (whose id names the message); the
 * errno reported. */
static int record_rcpt(struct fixture *f, struct spool_envelope *env,
		       size_t index, enum rcpt_state state)
{
	struct result res = {0};
	env->rcpts[index].state = state;
	env->rcpts[index].attempts++;
	env->rcpts[index].updated = 1700000100 + (time_t)index;
	spool_record_rcpt(f->spool, env, index, on_done, &res);
	assert_int_equal(res.calls, 0);
	run_until(f, &res.calls, 1);
	return res.error;
}

struct found {
	int count;
	char ids[64][SPOOL_ID_LEN + 1];
	struct spool_envelope *envs[64];
};

static void on_found(struct spool_envelope *env, void *arg)
{
	struct found *found = arg;
	assert_true(found->count < 64);
	strcpy(found->ids[found->count], env->id);
	found->envs[found->count++] = env;
}

static void found_free(struct found *found)
{
	for (int i = 0; i < found->count; i++)
		spool_envelope_free(found->envs[i]);
	found->count = 0;
}

/* Restart: a fresh spool on the same directory, then its recovery. */
static long restart(struct fixture *f, struct found *found)
{
	reopen(f);
	return spool_recover(f->spool, on_found, found);
}

static uint64_t id_value(const char *id)
{
	return strtoull(id, NULL, 16);
}

/* Both spools. */

static void test_spool_open_creates_private_dirs(void **state)
{
	struct fixture *f = *state;
	struct stat st;

	assert_int_equal(stat(f->queue_dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(stat(f->spool_dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(stat(f->log_dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_string_equal(spool_dir(f->spool), f->spool_dir);

	char path[256], tiny[8];
	spool_msg_path(f->spool, "0123456789ABCDEF", path, sizeof path);
	assert_string_equal(path, file_path(f, "0123456789ABCDEF", ".msg"));
	assert_string_equal(
	    spool_msg_path(f->spool, "0123456789ABCDEF", tiny, sizeof tiny),
	    "");
}

static void test_drop_spool_has_no_log_dir(void **state)
{
	struct fixture *f = *state;
	struct stat st;

	assert_int_equal(stat(f->queue_dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_false(path_exists(f->log_dir));
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

/*
 * Bit 11 of an id tells the daemon's from facteur-sendmail's, even when
 * the fallback "last id + 1" (the 11-bit counter wrapping within one
 * microsecond) would carry into it: ...AFFF must not be followed by
 * ...B000 in the daemon, nor ...07FF by ...0800 in a drop spool.
 */
static void test_daemon_and_drop_ids_never_meet(void **state)
{
	struct fixture *f = *state;
	char err[256], id[SPOOL_ID_LEN + 1];

	struct spool *drop =
	    spool_open_drop(f->base, f->io, f->spool_dir, err, sizeof err);

	assert_non_null(drop);
	for (int i = 0; i < 5000; i++) {
		spool_new_id(f->spool, id);
		if ((id_value(id) & 0x800) == 0)
			fail_msg("daemon id %s (draw %d) has bit 11 clear", id,
				 i);
		spool_new_id(drop, id);
		if ((id_value(id) & 0x800) != 0)
			fail_msg("drop id %s (draw %d) has bit 11 set", id, i);
	}
	spool_close(drop);
	drain(f);
}

/* The drop spool: <id>.msg and <id>.env, as facteur-sendmail writes. */

static void test_drop_commit_makes_files_that_parse(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];
	size_t len, valid_len;

	struct spool_incoming *inc = receive(f, id);
	assert_true(inc->fd >= 0); /* written to its file as it arrives */
	assert_true(file_exists(f, id, ".msg"));
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
	/* The body is the file, whole. */
	assert_body(f, id, message, sizeof message - 1);
	spool_envelope_free(env);
}

static void test_drop_commit_keeps_recipient_state_given(void **state)
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

static void test_drop_abort_removes_message_file(void **state)
{
	struct fixture *f = *state;
	char id[SPOOL_ID_LEN + 1];

	struct spool_incoming *inc = receive(f, id);
	assert_true(file_exists(f, id, ".msg"));
	spool_incoming_abort(f->spool, inc);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
}

/* facteur-sendmail's commit: synchronous, with no loop and no iothread. */
static struct spool *open_drop_without_loop(struct fixture *f)
{
	char err[256];
	struct spool *drop =
	    spool_open_drop(NULL, NULL, f->spool_dir, err, sizeof err);

	if (drop == NULL)
		fail_msg("spool_open_drop: %s", err);
	return drop;
}

static void
test_drop_sync_commit_without_loop_makes_files_that_parse(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];

	struct spool *drop = open_drop_without_loop(f);
	struct spool_incoming *inc = receive_on(drop, id);
	assert_int_equal(spool_drop_commit(drop, inc, env), 0);
	spool_close(drop);

	/* What the daemon reads at pickup. */
	assert_body(f, id, message, sizeof message - 1);
	struct spool_envelope *back = spool_load(f->spool, id);
	assert_non_null(back);
	strcpy(env->id, id);
	assert_envelopes_equal(env, back);
	spool_envelope_free(back);
	spool_envelope_free(env);
}

static void
test_drop_sync_commit_of_short_message_file_leaves_nothing(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];

	struct spool *drop = open_drop_without_loop(f);
	struct spool_incoming *inc = receive_on(drop, id);
	assert_int_equal(ftruncate(inc->fd, 3), 0);
	errno = 0;
	assert_int_equal(spool_drop_commit(drop, inc, env), -1);
	assert_int_equal(errno, EIO);
	spool_close(drop);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
	spool_envelope_free(env);
}

static void
test_drop_commit_after_failed_write_reports_error_no_files(void **state)
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

static void test_drop_commit_of_short_message_file_is_refused(void **state)
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

static void
test_drop_commits_of_one_loop_turn_share_one_iothread_round(void **state)
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
	/* A drop spool keeps no records: refused, in the same batch. */
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
	assert_int_equal(rec.error, ENOENT);
	spool_envelope_free(env);
}

static void test_drop_request_after_flush_forms_next_batch(void **state)
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

static void test_drop_remove_deletes_both_files(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];

	commit_one(f, env, id);
	spool_remove(f->spool, id);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
	commit_one(f, env, id);
	spool_delete(f->spool, id);
	assert_false(file_exists(f, id, ".msg"));
	assert_false(file_exists(f, id, ".env"));
	spool_envelope_free(env);
}

static void test_drop_close_with_commit_pending_still_calls_back(void **state)
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

/* The daemon's spool: the log. */

/* The records of a segment file, checked as recovery reads them. */
static int segment_records(const char *path, struct spool_log_record *recs,
			   int max, char **data, size_t *len)
{
	char *buf = read_all(path, len);
	size_t pos = SPOOL_LOG_MAGIC_LEN;
	int n = 0;

	assert_true(*len >= SPOOL_LOG_MAGIC_LEN);
	assert_memory_equal(buf, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	while (n < max && spool_log_next(buf, *len, pos, &recs[n]) == 1)
		pos = recs[n++].end;
	/* The whole file is records: nothing torn, nothing extra. */
	assert_int_equal(pos, *len);
	*data = buf;
	return n;
}

static void test_log_commit_reads_back_exact_wire_bytes(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope back;
	struct result res = {0};
	struct spool_log_record recs[4];
	char id[SPOOL_ID_LEN + 1], seg[256], *data;
	size_t len, valid_len;

	struct spool_incoming *inc = receive(f, id);
	assert_int_equal(inc->fd, -1); /* small: kept in memory */
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	assert_int_equal(res.calls, 0);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);

	/* No file of its own: one record in one segment. */
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	assert_int_equal(count_dir(f->log_dir, ""), 1);
	assert_int_equal(count_dir(f->log_dir, ".seg"), 1);
	assert_body(f, id, message, sizeof message - 1);

	newest_segment(f, seg, sizeof seg);
	assert_int_equal(segment_records(seg, recs, 4, &data, &len), 1);
	assert_int_equal(recs[0].kind, SPOOL_LOG_MESSAGE);
	assert_string_equal(recs[0].id, id);
	assert_int_equal(recs[0].body_len, sizeof message - 1);
	assert_memory_equal(data + recs[0].body_off, message,
			    sizeof message - 1);
	assert_int_equal(spool_envelope_parse(data + recs[0].text_off,
					      recs[0].text_len, &back,
					      &valid_len),
			 0);
	assert_int_equal(valid_len, recs[0].text_len);
	strcpy(env->id, id);
	assert_envelopes_equal(env, &back);
	spool_envelope_clear(&back);
	free(data);
	spool_envelope_free(env);
}

static void test_log_body_over_64k_goes_to_its_own_file(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_log_record recs[4];
	enum { LIMIT = 64 << 10 };
	char *big = big_message(LIMIT + 1);
	char small_id[SPOOL_ID_LEN + 1], big_id[SPOOL_ID_LEN + 1];
	char seg[256], *data;
	struct result res = {0};
	size_t len;

	/* Exactly 64 KiB stays inline. */
	struct spool_incoming *inc = receive_data(f, small_id, big, LIMIT);
	assert_int_equal(inc->fd, -1);
	assert_false(file_exists(f, small_id, ".msg"));
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
	assert_false(file_exists(f, small_id, ".msg"));

	/* One octet more is spilled to <id>.msg as it arrives. */
	inc = receive_data(f, big_id, big, LIMIT + 1);
	assert_true(inc->fd >= 0);
	assert_true(file_exists(f, big_id, ".msg"));
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 2);
	assert_int_equal(res.error, 0);
	assert_int_equal(file_size(file_path(f, big_id, ".msg")), LIMIT + 1);
	assert_int_equal(count_dir(f->queue_dir, ""), 1);

	assert_body(f, small_id, big, LIMIT);
	assert_body(f, big_id, big, LIMIT + 1);

	newest_segment(f, seg, sizeof seg);
	assert_int_equal(segment_records(seg, recs, 4, &data, &len), 2);
	assert_int_equal(recs[0].kind, SPOOL_LOG_MESSAGE);
	assert_int_equal(recs[0].body_len, LIMIT);
	assert_int_equal(recs[1].kind, SPOOL_LOG_FILE_MESSAGE);
	assert_string_equal(recs[1].id, big_id);
	assert_int_equal(recs[1].body_len, 0);
	free(data);

	/* Removing the file message removes its file. */
	spool_remove(f->spool, big_id);
	assert_false(file_exists(f, big_id, ".msg"));
	free(big);
	spool_envelope_free(env);
}

static void test_log_abort_leaves_nothing(void **state)
{
	struct fixture *f = *state;
	char *big = big_message(100000);
	char id[SPOOL_ID_LEN + 1];

	spool_incoming_abort(f->spool, receive(f, id));
	struct spool_incoming *inc = receive_data(f, id, big, 100000);
	assert_true(file_exists(f, id, ".msg"));
	spool_incoming_abort(f->spool, inc);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	drain(f);
	/* Nothing was logged, and nothing is recovered. */
	struct found found = {0};
	assert_int_equal(restart(f, &found), 0);
	free(big);
}

static void test_log_commit_after_failed_write_reports_error(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char *big = big_message(100000);
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1], small_id[SPOOL_ID_LEN + 1];
	struct spool_body body;

	struct spool_incoming *inc = receive_data(f, id, big, 100000);
	int ro = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	assert_true(dup2(ro, inc->fd) == inc->fd);
	close(ro);
	spool_incoming_write(inc, "more\r\n", 6);
	assert_int_equal(inc->error, EBADF);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	assert_int_equal(res.calls, 0);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, EBADF);
	assert_false(file_exists(f, id, ".msg"));
	strcpy(env->id, id);
	errno = 0;
	assert_int_equal(spool_body_open(f->spool, env, &body), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DELIVERED), ENOENT);

	/* An error remembered on an inline message is reported as is. */
	inc = receive(f, small_id);
	inc->error = ENOSPC;
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 2);
	assert_int_equal(res.error, ENOSPC);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 0);
	free(big);
	spool_envelope_free(env);
}

static void test_log_commit_of_short_message_file_is_refused(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char *big = big_message(100000);
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	struct spool_incoming *inc = receive_data(f, id, big, 100000);
	assert_int_equal(ftruncate(inc->fd, 3), 0);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, EIO);
	assert_false(file_exists(f, id, ".msg"));
	struct found found = {0};
	assert_int_equal(restart(f, &found), 0);
	free(big);
	spool_envelope_free(env);
}

static void
test_log_commits_of_one_turn_share_one_round_and_segment(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	enum { N = 20 };
	struct result res[N] = {{0}};
	int total = 0;
	char first[SPOOL_ID_LEN + 1], ids[N][SPOOL_ID_LEN + 1];

	commit_one(f, env, first);
	for (int i = 0; i < N; i++) {
		struct spool_incoming *inc = receive(f, ids[i]);
		spool_incoming_commit(f->spool, inc, env, on_done, &res[i]);
	}
	/* A state record in the same turn joins the same batch. */
	struct result rec = {0};
	strcpy(env->id, first);
	env->flags = 5;
	spool_record_flags(f->spool, env, on_done, &rec);
	assert_int_equal(iothread_pending(f->io), 0);

	/* One pass over the active events: one write, one flush. */
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
	assert_int_equal(rec.error, 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(res[i].error, 0);
		assert_body(f, ids[i], message, sizeof message - 1);
	}
	assert_int_equal(count_dir(f->log_dir, ".seg"), 1);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);

	struct found found = {0};
	assert_int_equal(restart(f, &found), N + 1);
	assert_string_equal(found.ids[0], first);
	assert_int_equal(found.envs[0]->flags, 5);
	for (int i = 0; i < N; i++)
		assert_string_equal(found.ids[i + 1], ids[i]);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_log_request_after_flush_forms_next_batch(void **state)
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
	assert_body(f, id_a, message, sizeof message - 1);
	assert_body(f, id_b, message, sizeof message - 1);
	spool_envelope_free(env);
}

static void test_log_records_survive_restart(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope *env_big = awkward_envelope();
	char *big = big_message(200000);
	char id[SPOOL_ID_LEN + 1], big_id[SPOOL_ID_LEN + 1];
	struct result res = {0};

	/* State given at commit is logged with it. */
	env->rcpts[2].state = RCPT_DELIVERED;
	env->rcpts[2].updated = 1700000123;
	strcpy(env->rcpts[2].dsn, "2.0.0");
	commit_one(f, env, id);
	strcpy(env->id, id);
	commit_big(f, env_big, big_id, big, 200000);
	strcpy(env_big->id, big_id);

	env->rcpts[1].next_attempt = 1700000600;
	strcpy(env->rcpts[1].dsn, "4.4.1");
	env->rcpts[1].reason = xstrdup("connection refused");
	assert_int_equal(record_rcpt(f, env, 1, RCPT_DEFERRED), 0);
	env->flags = 0;
	spool_record_flags(f->spool, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
	assert_int_equal(record_rcpt(f, env, 1, RCPT_DEFERRED), 0);
	assert_int_equal(record_rcpt(f, env_big, 0, RCPT_BOUNCED), 0);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	assert_string_equal(found.ids[0], id);
	assert_envelopes_equal(env, found.envs[0]);
	assert_int_equal(found.envs[0]->rcpts[1].attempts, 2);
	assert_string_equal(found.ids[1], big_id);
	assert_envelopes_equal(env_big, found.envs[1]);
	assert_body(f, id, message, sizeof message - 1);
	assert_body(f, big_id, big, 200000);
	/* Recovered packed, in the spool's table, sharing their texts. */
	for (size_t i = 0; i < 2; i++)
		assert_ptr_equal(found.envs[i]->interned,
				 spool_strings_table(f->spool));
	assert_ptr_equal(found.envs[0]->protocol, found.envs[1]->protocol);
	assert_ptr_equal(found.envs[0]->client_addr,
			 found.envs[1]->client_addr);

	const struct spool_recovery *rec = spool_last_recovery(f->spool);
	assert_int_equal(rec->live, 2);
	assert_int_equal(rec->truncated, 0);
	assert_int_equal(rec->uncommitted, 0);
	assert_int_equal(rec->orphaned, 0);
	assert_int_equal(rec->done, 0);

	/* The recovered messages take records, and a second restart reads
	 * them back. */
	assert_int_equal(record_rcpt(f, found.envs[0], 0, RCPT_DELIVERED), 0);
	struct found again = {0};
	assert_int_equal(restart(f, &again), 2);
	assert_envelopes_equal(found.envs[0], again.envs[0]);
	assert_envelopes_equal(found.envs[1], again.envs[1]);
	found_free(&again);
	found_free(&found);
	free(big);
	spool_envelope_free(env_big);
	spool_envelope_free(env);
}

/* Fields put before a message once it is all in (DKIM signatures):
 * in memory, across the inline limit, and in a file of its own; the
 * committed body is the prefix then the message, and no file is left
 * behind. */
static void prepend_and_check(struct fixture *f, const char *data, size_t n,
			      size_t prefix_len)
{
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];
	char *prefix = malloc(prefix_len);
	char *want = malloc(prefix_len + n);
	struct result res = {0};

	assert_non_null(prefix);
	assert_non_null(want);
	for (size_t i = 0; i < prefix_len; i++)
		prefix[i] = (char)('a' + i % 26);
	memcpy(want, prefix, prefix_len);
	memcpy(want + prefix_len, data, n);
	struct spool_incoming *inc = receive_data(f, id, data, n);
	assert_int_equal(
	    spool_incoming_prepend(f->spool, inc, prefix, prefix_len), 0);
	assert_int_equal(inc->written, prefix_len + n);
	strcpy(env->id, id);
	spool_incoming_commit(f->spool, inc, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, 0);
	assert_body(f, id, want, prefix_len + n);
	assert_false(file_exists(f, id, ".pre"));
	free(prefix);
	free(want);
	spool_envelope_free(env);
}

static void test_incoming_prepend_keeps_the_message_after(void **state)
{
	struct fixture *f = *state;
	char *big = big_message(300000);

	prepend_and_check(f, big, 1000, 700);	 /* stays in memory */
	prepend_and_check(f, big, 65000, 1000);	 /* pushed into a file */
	prepend_and_check(f, big, 300000, 2000); /* copied in the file */
	free(big);
}

static void test_log_removed_message_stays_removed(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char *big = big_message(100000);
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], c[SPOOL_ID_LEN + 1];
	struct spool_body body;
	struct result res = {0};

	commit_one(f, env, a);
	commit_big(f, env, b, big, 100000);
	commit_one(f, env, c);
	/* Done and recorded, as the scheduler does before removing. */
	for (size_t i = 0; i < 3; i++) {
		strcpy(env->id, a);
		assert_int_equal(record_rcpt(f, env, i, RCPT_DELIVERED), 0);
		strcpy(env->id, b);
		assert_int_equal(record_rcpt(f, env, i, RCPT_BOUNCED), 0);
	}

	/* A body opened before the removal stays readable. */
	strcpy(env->id, b);
	assert_int_equal(spool_body_open(f->spool, env, &body), 0);
	spool_remove(f->spool, a);
	spool_remove(f->spool, b);
	assert_false(file_exists(f, b, ".msg"));
	char buf[64];
	assert_int_equal(pread(body.fd, buf, sizeof buf, 1000), sizeof buf);
	assert_memory_equal(buf, big + 1000, sizeof buf);
	close(body.fd);

	/* Records for them are refused, and bring nothing back. */
	for (size_t i = 0; i < 3; i++)
		env->rcpts[i].state = RCPT_PENDING;
	strcpy(env->id, a);
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DEFERRED), ENOENT);
	strcpy(env->id, b);
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DEFERRED), ENOENT);
	spool_record_flags(f->spool, env, on_done, &res);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, ENOENT);
	assert_false(file_exists(f, b, ".msg"));
	/* A bad index is refused as such. */
	strcpy(env->id, c);
	spool_record_rcpt(f->spool, env, 7, on_done, &res);
	run_until(f, &res.calls, 2);
	assert_int_equal(res.error, EINVAL);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], c);
	assert_int_equal(spool_last_recovery(f->spool)->done, 2);
	assert_int_equal(spool_last_recovery(f->spool)->orphaned, 0);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	found_free(&found);
	free(big);
	spool_envelope_free(env);
}

/*
 * facteurctl delete removes a message whose recipients are not done: it
 * must not come back at the next start.
 */
static void test_log_deleted_message_stays_deleted(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char *big = big_message(100000);
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], c[SPOOL_ID_LEN + 1];

	commit_one(f, env, a);
	commit_big(f, env, b, big, 100000);
	commit_one(f, env, c);
	strcpy(env->id, a);
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DEFERRED), 0);
	spool_delete(f->spool, a);
	spool_delete(f->spool, b);
	assert_false(file_exists(f, b, ".msg"));
	/* Gone at once for records. */
	assert_int_equal(record_rcpt(f, env, 1, RCPT_DEFERRED), ENOENT);
	drain(f);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], c);
	const struct spool_recovery *rec = spool_last_recovery(f->spool);
	assert_int_equal(rec->done, 2);
	assert_int_equal(rec->orphaned, 0);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	found_free(&found);

	/* One recovered, then deleted, stays deleted too. */
	spool_delete(f->spool, c);
	drain(f);
	assert_int_equal(restart(f, &found), 0);
	free(big);
	spool_envelope_free(env);
}

/* Two committed messages, a with a state record; the segment's path and
 * size. */
static void two_logged(struct fixture *f, struct spool_envelope *env, char *a,
		       char *b, char *seg, size_t seglen, off_t *size)
{
	commit_one(f, env, a);
	commit_one(f, env, b);
	strcpy(env->id, a);
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DELIVERED), 0);
	newest_segment(f, seg, seglen);
	*size = file_size(seg);
}

static void test_log_torn_tail_is_cut_and_log_goes_on(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], c[SPOOL_ID_LEN + 1];
	char seg[256], junk[80];
	off_t size;

	two_logged(f, env, a, b, seg, sizeof seg, &size);
	/* Half a header, as a crash in the middle of a write leaves. */
	int n = snprintf(junk, sizeof junk, "R %s 41 0 1234", a);
	append_all(seg, junk, (size_t)n);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	const struct spool_recovery *rec = spool_last_recovery(f->spool);
	assert_int_equal(rec->truncated, 1);
	assert_int_equal(rec->truncate_failed, 0);
	assert_int_equal(file_size(seg), size);
	assert_string_equal(found.ids[0], a);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_DELIVERED);
	assert_string_equal(found.ids[1], b);

	/* What comes after the cut is read back. */
	commit_one(f, env, c);
	assert_int_equal(record_rcpt(f, found.envs[0], 1, RCPT_BOUNCED), 0);
	assert_body(f, c, message, sizeof message - 1);
	assert_body(f, a, message, sizeof message - 1);
	struct found again = {0};
	assert_int_equal(restart(f, &again), 3);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 0);
	assert_string_equal(again.ids[2], c);
	assert_int_equal(again.envs[0]->rcpts[0].state, RCPT_DELIVERED);
	assert_int_equal(again.envs[0]->rcpts[1].state, RCPT_BOUNCED);
	assert_body(f, c, message, sizeof message - 1);
	assert_body(f, b, message, sizeof message - 1);
	found_free(&again);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_log_cut_last_record_is_dropped(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], seg[256];
	off_t size;

	two_logged(f, env, a, b, seg, sizeof seg, &size);
	/* The last record (a's state) loses its final octets. */
	assert_int_equal(truncate(seg, size - 5), 0);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 1);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_PENDING);
	assert_true(file_size(seg) < size - 5);
	found_free(&found);

	/* A flipped octet in a record's text fails its checksum: it and
	 * everything after it are cut. */
	size = file_size(seg);
	char *data;
	size_t len;
	struct spool_log_record recs[4];
	assert_int_equal(segment_records(seg, recs, 4, &data, &len), 2);
	free(data);
	int fd = open(seg, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "#", 1, (off_t)recs[1].text_off + 3), 1);
	assert_int_equal(close(fd), 0);
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], a);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 1);
	assert_int_equal(file_size(seg), (off_t)recs[0].end);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_log_zero_filled_tail_is_cut(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], seg[256];
	char zeros[4096] = {0};
	off_t size;

	two_logged(f, env, a, b, seg, sizeof seg, &size);
	append_all(seg, zeros, sizeof zeros);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 1);
	assert_int_equal(file_size(seg), size);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_DELIVERED);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_log_all_recipients_done_is_dropped_at_recovery(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope *env_big = awkward_envelope();
	char *big = big_message(100000);
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1];

	commit_one(f, env, a);
	strcpy(env->id, a);
	commit_big(f, env_big, b, big, 100000);
	strcpy(env_big->id, b);
	/* Every recipient settled; the crash came before the removal. */
	assert_int_equal(record_rcpt(f, env, 0, RCPT_DELIVERED), 0);
	assert_int_equal(record_rcpt(f, env, 1, RCPT_BOUNCED), 0);
	assert_int_equal(record_rcpt(f, env, 2, RCPT_DELIVERED), 0);
	assert_int_equal(record_rcpt(f, env_big, 0, RCPT_DELIVERED), 0);
	assert_int_equal(record_rcpt(f, env_big, 2, RCPT_DELIVERED), 0);
	/* b has one recipient left */

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], b);
	assert_int_equal(spool_last_recovery(f->spool)->done, 1);
	found_free(&found);

	assert_int_equal(record_rcpt(f, env_big, 1, RCPT_BOUNCED), 0);
	assert_int_equal(restart(f, &found), 0);
	/* b, and a again: its records stay until their segment goes */
	assert_int_equal(spool_last_recovery(f->spool)->done, 2);
	assert_false(file_exists(f, b, ".msg"));
	/* Nothing live: the segments are gone. */
	assert_int_equal(count_dir(f->log_dir, ""), 0);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	free(big);
	spool_envelope_free(env_big);
	spool_envelope_free(env);
}

static void test_log_file_message_without_its_file_is_orphaned(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char *big = big_message(100000);
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], c[SPOOL_ID_LEN + 1];

	commit_big(f, env, a, big, 100000);
	commit_big(f, env, b, big, 100000);
	commit_one(f, env, c);
	assert_int_equal(unlink(file_path(f, a, ".msg")), 0);
	assert_int_equal(truncate(file_path(f, b, ".msg"), 99999), 0);
	/* A message file nobody committed, and a stray file. */
	write_all(file_path(f, "0000000000000ABC", ".msg"), "x", 1);
	write_all(file_path(f, "leftover", ".tmp"), "x", 1);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], c);
	const struct spool_recovery *rec = spool_last_recovery(f->spool);
	assert_int_equal(rec->orphaned, 2);
	assert_int_equal(rec->uncommitted, 1);
	assert_int_equal(rec->other, 1);
	assert_int_equal(rec->live, 1);
	assert_int_equal(count_dir(f->queue_dir, ""), 0);
	found_free(&found);
	free(big);
	spool_envelope_free(env);
}

static void test_log_record_write_failure_is_undone(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1], seg[256];
	struct rlimit saved, small;
	struct result res = {0};

	commit_one(f, env, a);
	strcpy(env->id, a);
	newest_segment(f, seg, sizeof seg);
	off_t size = file_size(seg);

	/* A file size limit makes the batch's write stop part-way, as a
	 * full disk would; the record is refused and its part cut. */
	assert_true(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
	small = saved;
	small.rlim_cur = (rlim_t)size + 10;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
	env->rcpts[0].state = RCPT_DELIVERED;
	spool_record_rcpt(f->spool, env, 0, on_done, &res);
	event_base_loop(f->base, EVLOOP_NONBLOCK); /* the write */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
	assert_true(signal(SIGXFSZ, SIG_DFL) != SIG_ERR);
	run_until(f, &res.calls, 1);
	assert_int_equal(res.error, EFBIG);
	assert_int_equal(file_size(seg), size);

	/* The log goes on (in a new segment): later records and commits
	 * are durable and read back. */
	env->rcpts[0].state = RCPT_PENDING;
	assert_int_equal(record_rcpt(f, env, 1, RCPT_BOUNCED), 0);
	commit_one(f, env, b);
	assert_body(f, a, message, sizeof message - 1);
	assert_body(f, b, message, sizeof message - 1);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 0);
	assert_string_equal(found.ids[0], a);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_PENDING);
	assert_int_equal(found.envs[0]->rcpts[1].state, RCPT_BOUNCED);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_log_close_with_commit_pending_still_calls_back(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct result res = {0};
	char id[SPOOL_ID_LEN + 1];

	spool_incoming_commit(f->spool, receive(f, id), env, on_done, &res);
	spool_close(f->spool);
	f->spool = NULL;
	assert_int_equal(res.calls, 0);
	iothread_free(f->io);
	f->io = NULL;
	assert_int_equal(res.calls, 1);
	assert_int_equal(res.error, 0);

	/* And it is there at the next start. */
	char err[256];
	struct found found = {0};
	f->io = iothread_new(f->base);
	assert_non_null(f->io);
	f->spool = spool_open(f->base, f->io, f->spool_dir, err, sizeof err);
	assert_non_null(f->spool);
	assert_int_equal(spool_recover(f->spool, on_found, &found), 1);
	assert_string_equal(found.ids[0], id);
	found_free(&found);
	spool_envelope_free(env);
}

/* One record, framed as the spool writes it, appended to *buf. */
static void add_record(char **buf, size_t *len, enum spool_log_kind kind,
		       const char *id, const char *text, size_t text_len,
		       const char *body, size_t body_len)
{
	char header[SPOOL_LOG_HEADER_MAX];
	uint32_t crc = spool_crc32c(0, text, text_len);
	crc = spool_crc32c(crc, body, body_len);
	size_t hlen =
	    spool_log_header(header, kind, id, text_len, body_len, crc);
	assert_true(hlen > 0);
	*buf = realloc(*buf, *len + hlen + text_len + body_len + 1);
	assert_non_null(*buf);
	memcpy(*buf + *len, header, hlen);
	memcpy(*buf + *len + hlen, text, text_len);
	memcpy(*buf + *len + hlen + text_len, body, body_len);
	(*buf)[*len + hlen + text_len + body_len] = '\n';
	*len += hlen + text_len + body_len + 1;
}

/* The envelope text of env under id with a "wire" line, as the spool
 * logs it. */
static char *logged_text(struct spool_envelope *env, const char *id,
			 size_t wire, size_t *len)
{
	size_t head_len;
	strcpy(env->id, id);
	char *head = spool_envelope_format(env, &head_len);
	assert_non_null(head);
	char *at = strstr(head, "\nbody ");
	assert_non_null(at);
	char *text = NULL;
	int n = asprintf(&text, "%.*s\nwire %zu%s", (int)(at - head), head,
			 wire, at);
	assert_true(n > 0);
	free(head);
	*len = (size_t)n;
	return text;
}

static void test_log_recovery_of_handmade_segments(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	const char x[] = "0123456789ABC800", y[] = "FFFFFFFFFFFFF800";
	const char z[] = "0123456789ABD800";
	char *seg = NULL, path[256];
	size_t seg_len = 0, len;

	seg = malloc(SPOOL_LOG_MAGIC_LEN);
	assert_non_null(seg);
	memcpy(seg, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	seg_len = SPOOL_LOG_MAGIC_LEN;
	char *text = logged_text(env, x, 5, &len);
	add_record(&seg, &seg_len, SPOOL_LOG_MESSAGE, x, text, len, "hello", 5);
	free(text);
	/* Records of a message not in the log change nothing. */
	const char r0[] = "state 0 delivered 1 0 0 - -\n";
	add_record(&seg, &seg_len, SPOOL_LOG_RECORDS, y, r0, strlen(r0), "", 0);
	const char r1[] = "state 0 deferred 1 1700000500 1700000000 4.4.1 -\n"
			  "flags 1\n";
	add_record(&seg, &seg_len, SPOOL_LOG_RECORDS, x, r1, strlen(r1), "", 0);
	size_t good_len = seg_len;
	/* Checksummed, yet no envelope: the log ends here. */
	add_record(&seg, &seg_len, SPOOL_LOG_MESSAGE, z, "hello\n", 6, "b", 1);
	text = logged_text(env, z, 1, &len);
	add_record(&seg, &seg_len, SPOOL_LOG_MESSAGE, z, text, len, "b", 1);
	free(text);

	snprintf(path, sizeof path, "%s/0000000000000005.seg", f->log_dir);
	write_all(path, seg, seg_len);
	/* Made, and the crash came before its first write. */
	snprintf(path, sizeof path, "%s/0000000000000003.seg", f->log_dir);
	write_all(path, "", 0);
	snprintf(path, sizeof path, "%s/notes.txt", f->log_dir);
	write_all(path, "mine", 4);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_string_equal(found.ids[0], x);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_DEFERRED);
	assert_int_equal(found.envs[0]->rcpts[0].next_attempt, 1700000500);
	assert_string_equal(found.envs[0]->rcpts[0].dsn, "4.4.1");
	assert_int_equal(found.envs[0]->flags, 1);
	assert_string_equal(found.envs[0]->sender, env->sender);
	assert_body(f, x, "hello", 5);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 1);

	snprintf(path, sizeof path, "%s/0000000000000005.seg", f->log_dir);
	assert_int_equal(file_size(path), (off_t)good_len);
	snprintf(path, sizeof path, "%s/0000000000000003.seg", f->log_dir);
	assert_false(path_exists(path)); /* dead, at the old end */
	snprintf(path, sizeof path, "%s/notes.txt", f->log_dir);
	assert_true(path_exists(path)); /* not ours: left alone */

	/* New records go to a new segment after the last one, and new ids
	 * sort after every recovered one. */
	char id[SPOOL_ID_LEN + 1];
	commit_one(f, env, id);
	assert_true(strcmp(id, x) > 0);
	newest_segment(f, path, sizeof path);
	assert_non_null(strstr(path, "/0000000000000006.seg"));
	assert_int_equal(record_rcpt(f, found.envs[0], 1, RCPT_BOUNCED), 0);
	struct found again = {0};
	assert_int_equal(restart(f, &again), 2);
	assert_envelopes_equal(found.envs[0], again.envs[0]);
	found_free(&again);
	found_free(&found);
	free(seg);
	spool_envelope_free(env);
}

/*
 * A checksummed M record whose envelope parses but lacks the "wire"
 * line ends the log there, and its parsed envelope is freed whole
 * (LeakSanitizer checks).
 */
static void
test_log_record_without_wire_line_ends_log_without_leak(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	const char x[] = "0123456789ABC800";
	char *seg = NULL, path[256];
	size_t seg_len = SPOOL_LOG_MAGIC_LEN, len;

	seg = malloc(SPOOL_LOG_MAGIC_LEN);
	assert_non_null(seg);
	memcpy(seg, SPOOL_LOG_MAGIC, SPOOL_LOG_MAGIC_LEN);
	strcpy(env->id, x);
	char *text = spool_envelope_format(env, &len);
	assert_non_null(text);
	add_record(&seg, &seg_len, SPOOL_LOG_MESSAGE, x, text, len, "hello", 5);
	free(text);
	text = logged_text(env, x, 4, &len); /* wire says 4, body is 5 */
	add_record(&seg, &seg_len, SPOOL_LOG_MESSAGE, x, text, len, "hello", 5);
	free(text);
	snprintf(path, sizeof path, "%s/0000000000000001.seg", f->log_dir);
	write_all(path, seg, seg_len);
	struct found found = {0};
	assert_int_equal(restart(f, &found), 0);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 1);
	free(seg);
	spool_envelope_free(env);
}

/* Messages of the file form (facteur-sendmail's) taken into the log. */

/* Commit one message through a drop spool on the same directory. */
static void drop_commit(struct fixture *f, struct spool_envelope *env, char *id)
{
	char err[256];
	struct spool *drop =
	    spool_open_drop(f->base, f->io, f->spool_dir, err, sizeof err);

	assert_non_null(drop);
	commit_on(f, drop, env, id);
	spool_close(drop);
	drain(f);
	assert_true(file_exists(f, id, ".env"));
	assert_true(file_exists(f, id, ".msg"));
}

static void test_import_at_recovery(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];

	env->rcpts[0].state = RCPT_DELIVERED;
	drop_commit(f, env, id);
	strcpy(env->id, id);

	struct found found = {0};
	reopen(f);
	assert_int_equal(spool_recover(f->spool, on_found, &found), 1);
	assert_string_equal(found.ids[0], id);
	assert_envelopes_equal(env, found.envs[0]);
	assert_int_equal(spool_last_recovery(f->spool)->live, 1);
	/* The envelope file goes once its F record is flushed. */
	assert_true(file_exists(f, id, ".env"));
	drain(f);
	assert_false(file_exists(f, id, ".env"));
	assert_true(file_exists(f, id, ".msg"));
	assert_body(f, id, message, sizeof message - 1);

	/* Now a logged message: records are taken, and it survives. */
	assert_int_equal(record_rcpt(f, found.envs[0], 1, RCPT_BOUNCED), 0);
	struct found again = {0};
	assert_int_equal(restart(f, &again), 1);
	assert_envelopes_equal(found.envs[0], again.envs[0]);
	assert_int_equal(spool_last_recovery(f->spool)->uncommitted, 0);
	assert_true(file_exists(f, id, ".msg"));
	assert_body(f, id, message, sizeof message - 1);
	found_free(&again);
	found_free(&found);
	spool_envelope_free(env);
}

static void test_import_at_load(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];

	drop_commit(f, env, id);
	strcpy(env->id, id);
	struct spool_envelope *loaded = spool_load(f->spool, id);
	assert_non_null(loaded);
	assert_envelopes_equal(env, loaded);
	/* Loaded once only. */
	errno = 0;
	assert_null(spool_load(f->spool, id));
	assert_int_equal(errno, EEXIST);
	drain(f);
	assert_false(file_exists(f, id, ".env"));
	errno = 0;
	assert_null(spool_load(f->spool, id));
	assert_int_equal(errno, ENOENT);
	assert_body(f, id, message, sizeof message - 1);

	assert_int_equal(record_rcpt(f, loaded, 2, RCPT_DELIVERED), 0);
	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_envelopes_equal(loaded, found.envs[0]);

	errno = 0;
	assert_null(spool_load(f->spool, "0123456789ABCDEF"));
	assert_int_equal(errno, ENOENT);
	errno = 0;
	assert_null(spool_load(f->spool, "../../etc/passwd"));
	assert_int_equal(errno, ENOENT);
	found_free(&found);
	spool_envelope_free(loaded);
	spool_envelope_free(env);
}

static void test_import_log_wins_over_leftover_env(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1];
	size_t len;

	drop_commit(f, env, id);
	char *text = read_all(file_path(f, id, ".env"), &len);
	struct spool_envelope *loaded = spool_load(f->spool, id);
	assert_non_null(loaded);
	drain(f);
	assert_int_equal(record_rcpt(f, loaded, 0, RCPT_DELIVERED), 0);
	/* The crash came between the F record's flush and the unlink. */
	write_all(file_path(f, id, ".env"), text, len);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_DELIVERED);
	assert_envelopes_equal(loaded, found.envs[0]);
	assert_false(file_exists(f, id, ".env"));
	assert_true(file_exists(f, id, ".msg"));
	found_free(&found);
	spool_envelope_free(loaded);
	free(text);
	spool_envelope_free(env);
}

static void test_import_sorts_out_what_a_crash_leaves(void **state)
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

	/* A message still being received when sendmail died. */
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

	/* The daemon starts on what the drop spool left. */
	assert_int_equal(restart(f, &found), 2);

	assert_int_equal(found.count, 2);
	assert_string_equal(found.ids[0], live);
	assert_string_equal(found.ids[1], torn);
	assert_int_equal(found.envs[1]->rcpts[0].state, RCPT_DELIVERED);
	assert_int_equal(found.envs[1]->rcpts[1].state, RCPT_PENDING);

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
	assert_int_equal(rec->other, 1);
	assert_int_equal(rec->unreadable, 0);

	/* Imported: the envelope files go, and the next start finds the
	 * same two in the log with the torn one's state. */
	drain(f);
	assert_false(file_exists(f, live, ".env"));
	assert_false(file_exists(f, torn, ".env"));
	struct found again = {0};
	assert_int_equal(restart(f, &again), 2);
	assert_string_equal(again.ids[0], live);
	assert_string_equal(again.ids[1], torn);
	assert_envelopes_equal(found.envs[1], again.envs[1]);
	assert_int_equal(spool_last_recovery(f->spool)->uncommitted, 0);
	assert_body(f, torn, message, sizeof message - 1);
	found_free(&again);
	found_free(&found);
	spool_envelope_free(env);
}

/* Compaction. */

static void on_done_count(int error, void *arg)
{
	struct result *r = arg;
	r->calls++;
	if (error != 0)
		r->error = error;
}

/* Fill the log with dead records (messages without recipients, which are
 * done as soon as committed, removed at once) until a second segment has
 * taken one batch: the log is then over 64 MiB and almost all dead. The
 * number of such messages into *dead, those of the newest into *last. */
static void fill_log(struct fixture *f, int *dead, int *last)
{
	enum { PER_TURN = 32, BODY = 64 << 10 };
	struct spool_envelope empty = {0};
	char *body = big_message(BODY);
	char ids[PER_TURN][SPOOL_ID_LEN + 1];

	*dead = 0;
	for (int turn = 0; turn < 60; turn++) {
		struct result res = {0};
		for (int i = 0; i < PER_TURN; i++) {
			struct spool_incoming *inc =
			    receive_data(f, ids[i], body, BODY);
			assert_int_equal(inc->fd, -1);
			spool_incoming_commit(f->spool, inc, &empty,
					      on_done_count, &res);
		}
		run_until(f, &res.calls, PER_TURN);
		assert_int_equal(res.error, 0);
		for (int i = 0; i < PER_TURN; i++)
			spool_remove(f->spool, ids[i]);
		*dead += PER_TURN;
		if (count_dir(f->log_dir, ".seg") == 2)
			break;
	}
	assert_int_equal(count_dir(f->log_dir, ".seg"), 2);
	*last = PER_TURN;
	free(body);
}

static void test_compaction_moves_live_messages_and_reaps(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	struct spool_envelope *env_big = awkward_envelope();
	char *big = big_message(100000);
	char a[SPOOL_ID_LEN + 1], b[SPOOL_ID_LEN + 1];
	char old_seg[256], new_seg[256], backup[256];
	int dead, last;

	commit_one(f, env, a);
	strcpy(env->id, a);
	assert_int_equal(record_rcpt(f, env, 1, RCPT_DEFERRED), 0);
	commit_big(f, env_big, b, big, 100000);
	strcpy(env_big->id, b);
	newest_segment(f, old_seg, sizeof old_seg);
	assert_false(spool_wants_compaction(f->spool)); /* one segment */

	fill_log(f, &dead, &last);
	/* The first segment took batches until it reached 64 MiB, and
	 * every batch whole. */
	off_t full = (off_t)64 << 20;
	assert_true(file_size(old_seg) >= full);
	assert_true(file_size(old_seg) < full + 32 * ((64 << 10) + 1024));
	assert_true(spool_wants_compaction(f->spool));
	assert_int_equal(spool_compact(f->spool, env), 1);
	/* Already on its way. */
	assert_int_equal(spool_compact(f->spool, env), 0);
	assert_int_equal(spool_compact(f->spool, env_big), 1);
	/* Keep the old segment's bytes for the second part. */
	snprintf(backup, sizeof backup, "%s/old.bak", f->tmp);
	assert_int_equal(link(old_seg, backup), 0);
	drain(f);

	/* Moved and flushed: the old segment is deleted. */
	assert_false(path_exists(old_seg));
	assert_int_equal(count_dir(f->log_dir, ".seg"), 1);
	newest_segment(f, new_seg, sizeof new_seg);
	assert_true(strcmp(new_seg, old_seg) > 0);
	assert_false(spool_wants_compaction(f->spool));
	assert_int_equal(spool_compact(f->spool, env), 0);
	assert_body(f, a, message, sizeof message - 1);
	assert_body(f, b, big, 100000);
	assert_true(file_exists(f, b, ".msg"));
	assert_int_equal(record_rcpt(f, env, 2, RCPT_BOUNCED), 0);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 2);
	assert_envelopes_equal(env, found.envs[0]);
	assert_int_equal(found.envs[0]->rcpts[1].state, RCPT_DEFERRED);
	assert_envelopes_equal(env_big, found.envs[1]);
	assert_int_equal(spool_last_recovery(f->spool)->done, last);
	assert_body(f, a, message, sizeof message - 1);
	assert_body(f, b, big, 100000);
	found_free(&found);

	/* As if the deletion of the old segment never reached the disk:
	 * both current records of a and b are there, the newer ones win,
	 * and the dead segment goes at recovery. */
	spool_close(f->spool);
	f->spool = NULL;
	drain(f);
	assert_int_equal(rename(backup, old_seg), 0);
	assert_int_equal(restart(f, &found), 2);
	assert_int_equal(found.count, 2);
	assert_envelopes_equal(env, found.envs[0]);
	assert_int_equal(found.envs[0]->rcpts[2].state, RCPT_BOUNCED);
	assert_envelopes_equal(env_big, found.envs[1]);
	assert_int_equal(spool_last_recovery(f->spool)->done, dead);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 0);
	assert_false(path_exists(old_seg));
	assert_int_equal(count_dir(f->log_dir, ".seg"), 1);
	assert_body(f, a, message, sizeof message - 1);
	assert_body(f, b, big, 100000);
	found_free(&found);
	free(big);
	spool_envelope_free(env_big);
	spool_envelope_free(env);
}

/* A record written ahead of its flush is in the segment at once, so a
 * kill -9 keeps it; the flush writes what the turn appended after it and
 * reports both. */
static void
test_log_record_written_ahead_is_in_the_segment_before_its_flush(void **state)
{
	struct fixture *f = *state;
	struct spool_envelope *env = awkward_envelope();
	char id[SPOOL_ID_LEN + 1], seg[256];
	struct result first = {0}, second = {0};

	commit_one(f, env, id);
	strcpy(env->id, id);
	newest_segment(f, seg, sizeof seg);
	off_t size = file_size(seg);

	env->rcpts[0].state = RCPT_DELIVERED;
	spool_record_rcpt(f->spool, env, 0, on_done, &first);
	assert_int_equal(file_size(seg), size);
	spool_write_ahead(f->spool);
	off_t ahead = file_size(seg);
	assert_true(ahead > size);
	spool_write_ahead(f->spool); /* nothing new appended */
	assert_int_equal(file_size(seg), ahead);
	assert_int_equal(first.calls, 0);

	env->rcpts[1].state = RCPT_BOUNCED;
	spool_record_rcpt(f->spool, env, 1, on_done, &second);
	run_until(f, &second.calls, 1);
	assert_int_equal(first.calls, 1);
	assert_int_equal(first.error, 0);
	assert_int_equal(second.error, 0);
	assert_true(file_size(seg) > ahead);

	struct found found = {0};
	assert_int_equal(restart(f, &found), 1);
	assert_int_equal(spool_last_recovery(f->spool)->truncated, 0);
	assert_int_equal(found.envs[0]->rcpts[0].state, RCPT_DELIVERED);
	assert_int_equal(found.envs[0]->rcpts[1].state, RCPT_BOUNCED);
	found_free(&found);
	spool_envelope_free(env);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
#define TD(name) cmocka_unit_test_setup_teardown(name, setup_drop, teardown)
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_envelope_round_trip_keeps_awkward_values),
	    cmocka_unit_test(test_envelope_packed_keeps_every_field),
	    cmocka_unit_test(test_envelope_packed_share_their_common_texts),
	    cmocka_unit_test(test_envelope_packed_without_recipients),
	    cmocka_unit_test(test_envelope_set_reason_in_both_forms),
	    cmocka_unit_test(test_envelope_null_fields_and_empty_sender),
	    cmocka_unit_test(test_envelope_forwarded_rcpt_keeps_its_sender),
	    cmocka_unit_test(test_envelope_of_older_spools_loads),
	    cmocka_unit_test(test_envelope_records_apply_in_order_last_wins),
	    cmocka_unit_test(
		test_envelope_torn_record_is_ignored_with_valid_len),
	    cmocka_unit_test(test_envelope_zero_filled_tail_is_ignored),
	    cmocka_unit_test(test_envelope_truncated_is_rejected),
	    cmocka_unit_test(test_envelope_rejects_bad_header_values),
	    cmocka_unit_test(test_envelope_done_only_when_every_rcpt_settled),
	    cmocka_unit_test(test_record_format_rejects_out_of_range_index),
	    T(test_spool_open_creates_private_dirs),
	    TD(test_drop_spool_has_no_log_dir),
	    T(test_ids_unique_over_100000_draws),
	    T(test_daemon_and_drop_ids_never_meet),
	    TD(test_drop_commit_makes_files_that_parse),
	    TD(test_drop_commit_keeps_recipient_state_given),
	    TD(test_drop_sync_commit_without_loop_makes_files_that_parse),
	    TD(test_drop_sync_commit_of_short_message_file_leaves_nothing),
	    TD(test_drop_abort_removes_message_file),
	    TD(test_drop_commit_after_failed_write_reports_error_no_files),
	    TD(test_drop_commit_of_short_message_file_is_refused),
	    TD(test_drop_commits_of_one_loop_turn_share_one_iothread_round),
	    TD(test_drop_request_after_flush_forms_next_batch),
	    TD(test_drop_remove_deletes_both_files),
	    TD(test_drop_close_with_commit_pending_still_calls_back),
	    T(test_log_commit_reads_back_exact_wire_bytes),
	    T(test_log_body_over_64k_goes_to_its_own_file),
	    T(test_log_abort_leaves_nothing),
	    T(test_log_commit_after_failed_write_reports_error),
	    T(test_log_commit_of_short_message_file_is_refused),
	    T(test_log_commits_of_one_turn_share_one_round_and_segment),
	    T(test_log_request_after_flush_forms_next_batch),
	    T(test_log_records_survive_restart),
	    T(test_log_removed_message_stays_removed),
	    T(test_incoming_prepend_keeps_the_message_after),
	    T(test_log_deleted_message_stays_deleted),
	    T(test_log_torn_tail_is_cut_and_log_goes_on),
	    T(test_log_cut_last_record_is_dropped),
	    T(test_log_zero_filled_tail_is_cut),
	    T(test_log_all_recipients_done_is_dropped_at_recovery),
	    T(test_log_file_message_without_its_file_is_orphaned),
	    T(test_log_record_write_failure_is_undone),
	    T(test_log_close_with_commit_pending_still_calls_back),
	    T(test_log_recovery_of_handmade_segments),
	    T(test_log_record_without_wire_line_ends_log_without_leak),
	    T(test_import_at_recovery),
	    T(test_import_at_load),
	    T(test_import_log_wins_over_leftover_env),
	    TD(test_import_sorts_out_what_a_crash_leaves),
	    T(test_compaction_moves_live_messages_and_reaps),
	    T(test_log_record_written_ahead_is_in_the_segment_before_its_flush),
	};
#undef T
#undef TD
	return cmocka_run_group_tests(tests, NULL, NULL);
}
