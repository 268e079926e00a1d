/* Unit tests of local delivery, with a real event loop and iothread in a
 * temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "facteur/deliver.h"
#include "facteur/iothread.h"
#include "facteur/maildir.h"
#include "facteur/mailfolder.h"
#include "facteur/mbox.h"
#include "facteur/policy.h"
#include "support.h"

struct fixture {
	struct event_base *base;
	struct iothread *io;
	struct deliver *deliver;
	char dir[64];
};

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Descriptors of the message bodies a test opened, closed by teardown. */
static int bodies[64];
static size_t body_count;

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	if (f == NULL)
		return -1;
	strcpy(f->dir, "/tmp/facteur-test-deliver-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	f->base = event_base_new();
	if (f->base == NULL)
		return -1;
	f->io = iothread_new(f->base);
	if (f->io == NULL)
		return -1;
	f->deliver = deliver_new(f->base, f->io);
	if (f->deliver == NULL)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	while (body_count > 0)
		(void)close(bodies[--body_count]);
	iothread_free(f->io);
	deliver_free(f->deliver);
	event_base_free(f->base);
	if (chmod(f->dir, 0700) == -1)
		return -1;
	nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

struct outcome {
	int calls;
	bool start_returned; /* deliver_start had returned at callback time */
	enum deliver_result result;
	char dsn[16];
	char reason[1024];
};

static void on_done(enum deliver_result result, const char *dsn,
		    const char *reason, void *arg)
{
	struct outcome *o = arg;
	o->calls++;
	o->result = result;
	snprintf(o->dsn, sizeof o->dsn, "%s", dsn);
	snprintf(o->reason, sizeof o->reason, "%s", reason);
}

static void on_done_checked(enum deliver_result result, const char *dsn,
			    const char *reason, void *arg)
{
	struct outcome *o = arg;
	assert_true(o->start_returned);
	on_done(result, dsn, reason, arg);
}

/* Run the loop until every outcome has its callback (30 s at most). */
static void wait_for(struct fixture *f, struct outcome *o, size_t n)
{
	SUPPORT_WAIT_CALLS(f->base, o, n);
}

static char *path_in(const struct fixture *f, const char *rel)
{
	char *p = NULL;
	assert_int_not_equal(asprintf(&p, "%s/%s", f->dir, rel), -1);
	return p;
}

static void write_file(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

static char *read_file(const char *path, size_t *lenp)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	char *buf = malloc((size_t)st.st_size + 1);
	assert_non_null(buf);
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);
		assert_true(r >= 0);
		if (r == 0)
			break;
		len += (size_t)r;
	}
	buf[len] = '\0';
	assert_int_equal(close(fd), 0);
	if (lenp != NULL)
		*lenp = len;
	return buf;
}

/* Entries of a directory other than . and ..; the last one's name. */
static size_t count_entries(const char *path, char *name, size_t namelen)
{
	DIR *dir = opendir(path);
	assert_non_null(dir);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(dir)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		n++;
		if (name != NULL)
			snprintf(name, namelen, "%s", e->d_name);
	}
	assert_int_equal(closedir(dir), 0);
	return n;
}

/* The whole of a spool file as a message body. */
static struct spool_body body_of(const char *spool)
{
	struct stat st;
	struct spool_body body = {.fd = open(spool, O_RDONLY | O_CLOEXEC)};
	assert_true(body.fd >= 0);
	assert_true(body_count < sizeof bodies / sizeof bodies[0]);
	bodies[body_count++] = body.fd;
	assert_int_equal(fstat(body.fd, &st), 0);
	body.length = (uint64_t)st.st_size;
	return body;
}

static struct deliver_request maildir_request(const char *mailbox,
					      const char *spool)
{
	return (struct deliver_request){
	    .format = MAILBOX_MAILDIR,
	    .mailbox = mailbox,
	    .body = body_of(spool),
	    .sender = "alice@example.org",
	    .recipient = "bob@example.com",
	    .unique = "Q1234.0",
	    .arrival = 1700000000,
	    .hostname = "mx.example.com",
	};
}

static void deliver_one(struct fixture *f, const struct deliver_request *req,
			struct outcome *o)
{
	memset(o, 0, sizeof *o);
	assert_int_equal(deliver_start(f->deliver, req, on_done_checked, o), 0);
	o->start_returned = true;
	wait_for(f, o, 1);
}

/*
 * Deliver as an unprivileged user when the tests run as root, who
 * ignores file modes: the fixture's directory and `open_dirs` (NULL
 * terminated) are opened to everyone first, so that only the mode the
 * test set matters.
 */
static void deliver_as_nobody(struct fixture *f, const char *const *open_dirs,
			      const struct deliver_request *req,
			      struct outcome *o)
{
	bool root = geteuid() == 0;
	if (root) {
		assert_int_equal(chmod(f->dir, 0755), 0);
		for (const char *const *d = open_dirs; *d != NULL; d++)
			assert_int_equal(chmod(*d, 0777), 0);
		assert_int_equal(seteuid(65534), 0);
	}
	deliver_one(f, req, o);
	if (root)
		assert_int_equal(seteuid(0), 0);
}

static void test_deliver_expand_path_substitutes_lower_case(void **state)
{
	(void)state;
	char *p = policy_expand_mailbox_path("/var/mail/%d/%u", "Bob.Smith", 9,
					     "Example.COM");
	assert_string_equal(p, "/var/mail/example.com/bob.smith");
	free(p);
	p = policy_expand_mailbox_path("/m/%u+%%/%d%%", "bob+tag", 3, "x.org");
	assert_string_equal(p, "/m/bob+%/x.org%");
	free(p);
	p = policy_expand_mailbox_path("/plain", "u", 1, "d");
	assert_string_equal(p, "/plain");
	free(p);
	assert_null(policy_expand_mailbox_path("/m/%x", "u", 1, "d"));
	assert_null(policy_expand_mailbox_path("/m/%U", "u", 1, "d"));
	assert_null(policy_expand_mailbox_path("/m/%", "u", 1, "d"));
	assert_null(policy_expand_mailbox_path("/m/%u", "a\0b", 3, "d"));
}

static void test_deliver_maildir_name_escapes_host(void **state)
{
	(void)state;
	char buf[128];
	assert_int_equal(
	    maildir_name(buf, sizeof buf, 1700000000, "Q1.2", "mx.example.com"),
	    (int)strlen("1700000000.Q1.2.mx.example.com"));
	assert_string_equal(buf, "1700000000.Q1.2.mx.example.com");
	assert_true(maildir_name(buf, sizeof buf, 5, "u", "a/b:c") > 0);
	assert_string_equal(buf, "5.u.a\\057b\\072c");
	/* Exactly fitting, and one octet short. */
	assert_int_equal(maildir_name(buf, 9, 5, "u", "host"), 8);
	assert_string_equal(buf, "5.u.host");
	assert_int_equal(maildir_name(buf, 8, 5, "u", "host"), -1);
	assert_int_equal(maildir_name(buf, 11, 5, "u", "hos/"), -1);
	assert_int_equal(maildir_name(buf, 12, 5, "u", "hos/"), 11);
	assert_string_equal(buf, "5.u.hos\\057");
	assert_int_equal(maildir_name(buf, 2, 12345, "u", "h"), -1);
}

static void test_deliver_mkdirs_makes_parents_private(void **state)
{
	struct fixture *f = *state;
	char *deep = path_in(f, "a/b//c/");
	assert_int_equal(mailfolder_mkdirs(deep), 0);
	assert_int_equal(mailfolder_mkdirs(deep), 0); /* exists: fine */
	struct stat st;
	char *mid = path_in(f, "a/b");
	assert_int_equal(stat(mid, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0700);
	char *file = path_in(f, "a/file");
	write_file(file, "x", 1);
	char *under = path_in(f, "a/file/sub");
	errno = 0;
	assert_int_equal(mailfolder_mkdirs(under), -1);
	assert_int_equal(errno, ENOTDIR);
	assert_int_equal(mailfolder_mkdirs(file), -1);
	assert_int_equal(errno, ENOTDIR);
	free(deep);
	free(mid);
	free(file);
	free(under);
}

static void quote_all(const char *in, size_t len, bool bytewise, char *out,
		      size_t *outlen)
{
	struct mbox_quote_state q = {0};
	size_t n = 0;
	if (bytewise) {
		for (size_t i = 0; i < len; i++)
			n += mbox_quote(&q, in + i, 1, out + n);
	} else {
		n = mbox_quote(&q, in, len, out);
	}
	n += mbox_quote_finish(&q, out + n);
	*outlen = n;
}

static void test_deliver_mboxrd_quotes_from_lines(void **state)
{
	(void)state;
	static const char *const cases[][2] = {
	    {"From x\n", ">From x\n"},
	    {">From y\n>>From z\n", ">>From y\n>>>From z\n"},
	    {"a\nFrom b\nc From d\n", "a\n>From b\nc From d\n"},
	    {"From\nFromage\nFrom:x\nfrom y\n",
	     "From\nFromage\nFrom:x\nfrom y\n"},
	    {" From a\n> From b\n", " From a\n> From b\n"},
	    {"\n\nFrom \n", "\n\n>From \n"},
	    {"Fro", "Fro"},
	    {">>Fr", ">>Fr"},
	    {"From ", ">From "},
	    {"FFrom x\n", "FFrom x\n"},
	    {"", ""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *in = cases[i][0], *want = cases[i][1];
		size_t len = strlen(in);
		char out[MBOX_QUOTE_OUT_MAX(64)];
		size_t n;
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			quote_all(in, len, bytewise, out, &n);
			out[n] = '\0';
			if (strcmp(out, want) != 0)
				fail_msg("quote(\"%s\") = \"%s\", want \"%s\"",
					 in, out, want);
		}
	}
}

static void test_deliver_maildir_creates_folders_and_one_message(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	const char wire[] = "Subject: hi\r\n"
			    "\r\n"
			    "..leading dot\r\n"
			    "bare\rcr stays\r\n"
			    "...two\r\n"
			    "last\r\n";
	write_file(spool, wire, sizeof wire - 1);
	char *mailbox = path_in(f, "mail/example.com/bob");
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_string_equal(o.dsn, "2.0.0");

	char *tmp = path_in(f, "mail/example.com/bob/tmp");
	char *new = path_in(f, "mail/example.com/bob/new");
	char *cur = path_in(f, "mail/example.com/bob/cur");
	char name[256];
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	assert_int_equal(count_entries(cur, NULL, 0), 0);
	assert_int_equal(count_entries(new, name, sizeof name), 1);
	assert_string_equal(name, "1700000000.Q1234.0.mx.example.com");
	struct stat st;
	assert_int_equal(stat(mailbox, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);

	char *file = NULL;
	assert_int_not_equal(asprintf(&file, "%s/%s", new, name), -1);
	assert_int_equal(stat(file, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	char *content = read_file(file, NULL);
	assert_string_equal(content, "Return-Path: <alice@example.org>\n"
				     "Delivered-To: bob@example.com\n"
				     "Subject: hi\n"
				     "\n"
				     ".leading dot\n"
				     "bare\rcr stays\n"
				     "..two\n"
				     "last\n");
	free(content);
	free(file);
	free(spool);
	free(mailbox);
	free(tmp);
	free(new);
	free(cur);
}

static void test_deliver_maildir_null_sender_and_large_body(void **state)
{
	struct fixture *f = *state;
	/* A body over several 64 KiB chunks, with dots at chunk edges. */
	size_t lines = 20000;
	size_t cap = lines * 12 + 64, len = 0;
	char *wire = malloc(cap);
	assert_non_null(wire);
	len += (size_t)snprintf(wire, cap, "Subject: big\r\n\r\n");
	for (size_t i = 0; i < lines; i++)
		len +=
		    (size_t)snprintf(wire + len, cap - len, "..%07zu\r\n", i);
	char *spool = path_in(f, "spool-big");
	write_file(spool, wire, len);
	free(wire);

	char *mailbox = path_in(f, "big");
	struct deliver_request req = maildir_request(mailbox, spool);
	req.sender = "";
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);

	char *file = path_in(f, "big/new/1700000000.Q1234.0.mx.example.com");
	size_t got_len;
	char *got = read_file(file, &got_len);
	const char head[] = "Return-Path: <>\nDelivered-To: bob@example.com\n"
			    "Subject: big\n\n";
	assert_memory_equal(got, head, sizeof head - 1);
	assert_int_equal(got_len, sizeof head - 1 + lines * 9);
	char want[16];
	for (size_t i = 0; i < lines; i += 1111) {
		snprintf(want, sizeof want, ".%07zu\n", i);
		assert_memory_equal(got + sizeof head - 1 + i * 9, want, 9);
	}
	free(got);
	free(file);
	free(spool);
	free(mailbox);
}

static void
test_deliver_maildir_same_unique_is_not_delivered_twice(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "box");
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);

	/* The spool changes; a retry must not deliver a second copy. */
	write_file(spool, "Subject: b\r\n\r\nother\r\n", 21);
	req.check_existing = true;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_string_equal(o.dsn, "2.0.0");
	req.check_existing = false;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);

	char *new = path_in(f, "box/new");
	char *tmp = path_in(f, "box/tmp");
	char name[256];
	assert_int_equal(count_entries(new, name, sizeof name), 1);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	char *file = path_in(f, "box/new/1700000000.Q1234.0.mx.example.com");
	char *content = read_file(file, NULL);
	assert_non_null(strstr(content, "Subject: a\n"));
	free(content);

	/* A reader moved it to cur/ with flags: still delivered. */
	char *moved =
	    path_in(f, "box/cur/1700000000.Q1234.0.mx.example.com:2,S");
	assert_int_equal(rename(file, moved), 0);
	req.check_existing = true;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_int_equal(count_entries(new, NULL, 0), 0);
	char *cur = path_in(f, "box/cur");
	assert_int_equal(count_entries(cur, NULL, 0), 1);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);

	/* Another unique is another message. */
	req.unique = "Q1234.1";
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_int_equal(count_entries(new, name, sizeof name), 1);
	assert_string_equal(name, "1700000000.Q1234.1.mx.example.com");

	free(spool);
	free(mailbox);
	free(new);
	free(tmp);
	free(cur);
	free(file);
	free(moved);
}

static void test_deliver_maildir_read_only_folder_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "ro");
	char *tmp = path_in(f, "ro/tmp");
	assert_int_equal(mailfolder_mkdirs(tmp), 0);
	assert_int_equal(chmod(tmp, 0555), 0);
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_as_nobody(f, (const char *const[]){mailbox, NULL}, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	char want[512];
	snprintf(want, sizeof want,
		 "open %s/1700000000.Q1234.0.mx.example.com: Permission "
		 "denied",
		 tmp);
	assert_string_equal(o.reason, want);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	free(spool);
	free(mailbox);
	free(tmp);
}

static void test_deliver_maildir_under_a_file_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "x\r\n", 3);
	char *mailbox = path_in(f, "spool-msg/box");
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	assert_non_null(strstr(o.reason, "Not a directory"));
	free(spool);
	free(mailbox);
}

static void test_deliver_maildir_short_body_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "short-spool-file");
	char *mailbox = path_in(f, "box");
	write_file(spool, "Subject: cut\r\n", 14);
	struct deliver_request req = maildir_request(mailbox, spool);
	req.body.length = 100; /* the spool promised more than there is */
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.3.0");
	assert_string_equal(o.reason,
			    "read the queued message: Input/output error");
	char *tmp = path_in(f, "box/tmp");
	char *new = path_in(f, "box/new");
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	assert_int_equal(count_entries(new, NULL, 0), 0);
	free(spool);
	free(mailbox);
	free(tmp);
	free(new);
}

/* Writes past `limit` octets in any file fail with EFBIG, as a full disk
 * would fail them. */
static void limit_file_size(rlim_t limit, struct rlimit *saved)
{
	assert_int_equal(getrlimit(RLIMIT_FSIZE, saved), 0);
	struct rlimit rl = *saved;
	rl.rlim_cur = limit;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void test_deliver_maildir_failed_write_leaves_nothing(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	char body[8192];
	memset(body, 'x', sizeof body);
	memcpy(body + sizeof body - 2, "\r\n", 2);
	write_file(spool, body, sizeof body);
	char *mailbox = path_in(f, "full");
	struct deliver_request req = maildir_request(mailbox, spool);
	assert_int_equal(mailfolder_mkdirs(mailbox), 0);
	struct sigaction ign = {.sa_handler = SIG_IGN}, old;
	assert_int_equal(sigaction(SIGXFSZ, &ign, &old), 0);
	struct rlimit saved;
	limit_file_size(1000, &saved);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
	assert_int_equal(sigaction(SIGXFSZ, &old, NULL), 0);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	assert_memory_equal(o.reason, "write ", 6);
	assert_non_null(strstr(o.reason, "File too large"));
	char *tmp = path_in(f, "full/tmp");
	char *new = path_in(f, "full/new");
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	assert_int_equal(count_entries(new, NULL, 0), 0);
	free(spool);
	free(mailbox);
	free(tmp);
	free(new);
}

/* Remove a whole tree, as an administrator would behind our back. */
static void remove_tree(const char *path)
{
	assert_int_equal(nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static void test_deliver_maildir_removed_folder_is_made_again(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "gone");
	char *new = path_in(f, "gone/new");
	char *tmp = path_in(f, "gone/tmp");
	char *cur = path_in(f, "gone/cur");
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);

	/* The folder is remembered now; it goes, and the next delivery
	 * makes it again instead of failing. */
	remove_tree(mailbox);
	req.unique = "Q1234.1";
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_string_equal(o.dsn, "2.0.0");
	char name[256];
	assert_int_equal(count_entries(new, name, sizeof name), 1);
	assert_string_equal(name, "1700000000.Q1234.1.mx.example.com");
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	assert_int_equal(count_entries(cur, NULL, 0), 0);

	/* Only new/ goes: that delivery may defer (the link finds no
	 * new/), never lose the message or report it delivered when it is
	 * not, and the next one makes new/ again. */
	remove_tree(new);
	req.unique = "Q1234.2";
	deliver_one(f, &req, &o);
	if (o.result != DELIVER_OK) {
		assert_int_equal(o.result, DELIVER_TEMPFAIL);
		assert_string_equal(o.dsn, "4.2.0");
		char want[512];
		snprintf(want, sizeof want,
			 "link %s/1700000000.Q1234.2.mx.example.com: No such "
			 "file or directory",
			 new);
		assert_string_equal(o.reason, want);
		assert_int_equal(count_entries(tmp, NULL, 0), 0);
	} else {
		assert_int_equal(count_entries(new, NULL, 0), 1);
	}
	bool second_delivered = o.result == DELIVER_OK;
	req.unique = "Q1234.3";
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_int_equal(count_entries(new, NULL, 0), second_delivered ? 2 : 1);
	char *file = path_in(f, "gone/new/1700000000.Q1234.3.mx.example.com");
	char *content = read_file(file, NULL);
	assert_string_equal(content, "Return-Path: <alice@example.org>\n"
				     "Delivered-To: bob@example.com\n"
				     "Subject: a\n\nbody\n");
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	free(content);
	free(file);
	free(spool);
	free(mailbox);
	free(new);
	free(tmp);
	free(cur);
}

/* The file is created on the I/O thread, so several deliveries can be
 * in flight when a remembered folder turns out to have gone: each one
 * notices, the first makes the folder again, and none is lost or
 * reported twice. */
static void test_deliver_maildir_removed_folder_several_in_flight(void **state)
{
	struct fixture *f = *state;
	enum { N = 5 };
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "vanishing");
	struct deliver_request first = maildir_request(mailbox, spool);
	struct outcome o[N];
	deliver_one(f, &first, &o[0]);
	assert_int_equal(o[0].result, DELIVER_OK);
	remove_tree(mailbox);

	char uniques[N][32];
	struct deliver_request req[N];
	memset(o, 0, sizeof o);
	for (int i = 0; i < N; i++) {
		snprintf(uniques[i], sizeof uniques[i], "Q77.%d", i);
		req[i] = maildir_request(mailbox, spool);
		req[i].unique = uniques[i];
		assert_int_equal(
		    deliver_start(f->deliver, &req[i], on_done, &o[i]), 0);
	}
	wait_for(f, o, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(o[i].result, DELIVER_OK);
		assert_string_equal(o[i].reason, "delivered");
	}
	char *new = path_in(f, "vanishing/new");
	char *tmp = path_in(f, "vanishing/tmp");
	assert_int_equal(count_entries(new, NULL, 0), N);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	free(new);
	free(tmp);
	free(spool);
	free(mailbox);
}

static void test_deliver_maildir_renamed_folder_stops_getting_mail(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "box");
	char *old = path_in(f, "box.old");
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);

	/* Moved aside: the remembered descriptors still reach it, but a
	 * remembered folder is checked against its path once a second. */
	assert_int_equal(rename(mailbox, old), 0);
	struct timespec pause = {1, 100 * 1000 * 1000};
	assert_int_equal(nanosleep(&pause, NULL), 0);
	req.unique = "Q1234.1";
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	char name[256];
	char *new = path_in(f, "box/new");
	char *old_new = path_in(f, "box.old/new");
	assert_int_equal(count_entries(new, name, sizeof name), 1);
	assert_string_equal(name, "1700000000.Q1234.1.mx.example.com");
	assert_int_equal(count_entries(old_new, name, sizeof name), 1);
	assert_string_equal(name, "1700000000.Q1234.0.mx.example.com");
	free(spool);
	free(mailbox);
	free(old);
	free(new);
	free(old_new);
}

static void test_deliver_maildir_thirty_in_one_turn(void **state)
{
	struct fixture *f = *state;
	enum { N = 30 };
	char *mailbox = path_in(f, "many/bob");
	char *spools[N];
	char uniques[N][32];
	struct deliver_request req[N];
	struct outcome o[N];
	memset(o, 0, sizeof o);
	/* All started before the loop runs: the first makes the folder,
	 * all reach the iothread together. */
	for (int i = 0; i < N; i++) {
		char name[32];
		snprintf(name, sizeof name, "spool-%d", i);
		spools[i] = path_in(f, name);
		char wire[64];
		int len = snprintf(wire, sizeof wire,
				   "Subject: msg %d\r\n\r\nbody %d\r\n", i, i);
		write_file(spools[i], wire, (size_t)len);
		snprintf(uniques[i], sizeof uniques[i], "Q99.%d", i);
		req[i] = maildir_request(mailbox, spools[i]);
		req[i].unique = uniques[i];
		assert_int_equal(
		    deliver_start(f->deliver, &req[i], on_done, &o[i]), 0);
	}
	wait_for(f, o, N);
	char *new = path_in(f, "many/bob/new");
	char *tmp = path_in(f, "many/bob/tmp");
	for (int i = 0; i < N; i++) {
		assert_int_equal(o[i].result, DELIVER_OK);
		assert_string_equal(o[i].dsn, "2.0.0");
		assert_string_equal(o[i].reason, "delivered");
		char *file = NULL;
		assert_int_not_equal(asprintf(&file,
					      "%s/1700000000.%s.mx.example.com",
					      new, uniques[i]),
				     -1);
		char *content = read_file(file, NULL);
		char want[256];
		snprintf(want, sizeof want,
			 "Return-Path: <alice@example.org>\n"
			 "Delivered-To: bob@example.com\n"
			 "Subject: msg %d\n\nbody %d\n",
			 i, i);
		assert_string_equal(content, want);
		free(content);
		free(file);
		free(spools[i]);
	}
	assert_int_equal(count_entries(new, NULL, 0), N);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	free(new);
	free(tmp);
	free(mailbox);
}

static size_t open_descriptors(void)
{
	/* Less the one that reads the directory. */
	return count_entries("/proc/self/fd", NULL, 0) - 1;
}

static void test_deliver_maildir_many_folders_bounded(void **state)
{
	struct fixture *f = *state;
	enum { FOLDERS = 70 }; /* more than are remembered */
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	struct deliver_request req = maildir_request("", spool);
	size_t before = open_descriptors();
	char *boxes[FOLDERS];
	struct outcome o;
	for (int i = 0; i < FOLDERS; i++) {
		char rel[32];
		snprintf(rel, sizeof rel, "users/u%02d", i);
		boxes[i] = path_in(f, rel);
		req.mailbox = boxes[i];
		deliver_one(f, &req, &o);
		assert_int_equal(o.result, DELIVER_OK);
	}
	/* Two descriptors per remembered folder, no more. */
	size_t after = open_descriptors();
	assert_true(after <= before + 2 * 64);
	/* The first were forgotten to make room, the last are remembered:
	 * both take the next message. */
	req.unique = "Q1234.1";
	const int again[] = {0, 1, FOLDERS - 1};
	for (size_t k = 0; k < sizeof again / sizeof again[0]; k++) {
		req.mailbox = boxes[again[k]];
		deliver_one(f, &req, &o);
		assert_int_equal(o.result, DELIVER_OK);
		char *new = NULL;
		assert_int_not_equal(asprintf(&new, "%s/new", boxes[again[k]]),
				     -1);
		assert_int_equal(count_entries(new, NULL, 0), 2);
		free(new);
	}
	assert_true(open_descriptors() <= before + 2 * 64);
	for (int i = 0; i < FOLDERS; i++)
		free(boxes[i]);
	free(spool);
}

static void test_deliver_maildir_new_not_writable_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *mailbox = path_in(f, "rn");
	char *tmp = path_in(f, "rn/tmp");
	char *new = path_in(f, "rn/new");
	char *cur = path_in(f, "rn/cur");
	assert_int_equal(mailfolder_mkdirs(tmp), 0);
	assert_int_equal(mailfolder_mkdirs(new), 0);
	assert_int_equal(mailfolder_mkdirs(cur), 0);
	assert_int_equal(chmod(new, 0555), 0);
	struct deliver_request req = maildir_request(mailbox, spool);
	struct outcome o;
	deliver_as_nobody(f, (const char *const[]){mailbox, tmp, NULL}, &req,
			  &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	char want[512];
	snprintf(want, sizeof want,
		 "link %s/1700000000.Q1234.0.mx.example.com: Permission "
		 "denied",
		 new);
	assert_string_equal(o.reason, want);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	assert_int_equal(count_entries(new, NULL, 0), 0);

	/* Writable again: the remembered folder takes it. */
	assert_int_equal(chmod(new, 0700), 0);
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_int_equal(count_entries(new, NULL, 0), 1);
	assert_int_equal(count_entries(tmp, NULL, 0), 0);
	free(spool);
	free(mailbox);
	free(tmp);
	free(new);
	free(cur);
}

static struct deliver_request mbox_request(const char *mbox, const char *spool,
					   const char *sender)
{
	return (struct deliver_request){
	    .format = MAILBOX_MBOX,
	    .mailbox = mbox,
	    .body = body_of(spool),
	    .sender = sender,
	    .recipient = "bob@example.com",
	    .unique = "unused",
	    .arrival = 1700000000,
	    .hostname = "mx.example.com",
	};
}

/* A From_ line: "From SENDER Www Mmm dd hh:mm:ss yyyy". */
static void assert_from_line(const char *line, size_t len, const char *sender)
{
	size_t slen = strlen(sender);
	assert_true(len == 5 + slen + 1 + 24);
	assert_memory_equal(line, "From ", 5);
	assert_memory_equal(line + 5, sender, slen);
	const char *date = line + 5 + slen + 1;
	assert_true(date[3] == ' ' && date[7] == ' ' && date[10] == ' ' &&
		    date[13] == ':' && date[16] == ':' && date[19] == ' ');
}

static void test_deliver_mbox_appends_with_from_lines_and_quoting(void **state)
{
	struct fixture *f = *state;
	char *spool1 = path_in(f, "spool-1");
	char *spool2 = path_in(f, "spool-2");
	const char wire1[] =
	    "Subject: one\r\n\r\nFrom here\r\n>From there\r\n..dot\r\n";
	write_file(spool1, wire1, sizeof wire1 - 1);
	/* No final line end: the mbox still gets one, then a blank line. */
	write_file(spool2, "Subject: two\r\n\r\nno newline", 26);
	char *mbox = path_in(f, "var/mail/bob");
	struct deliver_request req1 = mbox_request(mbox, spool1, "a@b.example");
	struct deliver_request req2 = mbox_request(mbox, spool2, "");
	struct outcome o[2] = {0};
	assert_int_equal(deliver_start(f->deliver, &req1, on_done, &o[0]), 0);
	assert_int_equal(deliver_start(f->deliver, &req2, on_done, &o[1]), 0);

	wait_for(f, o, 2);
	assert_int_equal(o[0].result, DELIVER_OK);
	assert_int_equal(o[1].result, DELIVER_OK);
	assert_string_equal(o[0].dsn, "2.0.0");

	char *content = read_file(mbox, NULL);
	/* Split off the two From_ lines, compare the rest exactly. */
	char *nl1 = strchr(content, '\n');
	assert_non_null(nl1);
	assert_from_line(content, (size_t)(nl1 - content), "a@b.example");
	const char first[] = "Return-Path: <a@b.example>\n"
			     "Delivered-To: bob@example.com\n"
			     "Subject: one\n\n"
			     ">From here\n"
			     ">>From there\n"
			     ".dot\n"
			     "\n";
	assert_memory_equal(nl1 + 1, first, sizeof first - 1);
	char *second = nl1 + sizeof first;
	char *nl2 = strchr(second, '\n');
	assert_non_null(nl2);
	assert_from_line(second, (size_t)(nl2 - second), "MAILER-DAEMON");
	assert_string_equal(nl2 + 1, "Return-Path: <>\n"
				     "Delivered-To: bob@example.com\n"
				     "Subject: two\n\n"
				     "no newline\n"
				     "\n");
	struct stat st;
	assert_int_equal(stat(mbox, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	char *lock = path_in(f, "var/mail/bob.lock");
	assert_int_equal(access(lock, F_OK), -1); /* the dot lock is gone */
	free(content);
	free(lock);
	free(spool1);
	free(spool2);
	free(mbox);
}

static void test_deliver_mbox_twenty_at_once_each_whole_once(void **state)
{
	struct fixture *f = *state;
	enum { N = 20 };
	char *mbox = path_in(f, "mbox");
	struct deliver_request req[N];
	char *spools[N];
	struct outcome o[N];
	memset(o, 0, sizeof o);
	/* Bodies large enough to span chunks: 100 KB each. */
	size_t body_lines = 2000;
	for (int i = 0; i < N; i++) {
		char name[32];
		snprintf(name, sizeof name, "spool-%d", i);
		spools[i] = path_in(f, name);
		size_t cap = 64 + body_lines * 64, len = 0;
		char *wire = malloc(cap);
		assert_non_null(wire);
		len +=
		    (size_t)snprintf(wire, cap, "Subject: msg %d\r\n\r\n", i);
		for (size_t l = 0; l < body_lines; l++)
			len += (size_t)snprintf(wire + len, cap - len,
						"message %02d line %04zu "
						"....................\r\n",
						i, l);
		write_file(spools[i], wire, len);
		free(wire);
		req[i] = mbox_request(mbox, spools[i], "sender@example.org");
		assert_int_equal(
		    deliver_start(f->deliver, &req[i], on_done, &o[i]), 0);
	}
	wait_for(f, o, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(o[i].result, DELIVER_OK);

	size_t len;
	char *content = read_file(mbox, &len);
	int seen[N] = {0};
	size_t messages = 0;
	char *p = content;
	while (p < content + len) {
		/* Each message: From_ line, two headers, Subject, blank,
		 * body_lines lines, blank. */
		char *eol = strchr(p, '\n');
		assert_non_null(eol);
		assert_memory_equal(p, "From sender@example.org ", 24);
		p = eol + 1;
		const char head[] = "Return-Path: <sender@example.org>\n"
				    "Delivered-To: bob@example.com\n"
				    "Subject: msg ";
		assert_memory_equal(p, head, sizeof head - 1);
		int id = atoi(p + sizeof head - 1);
		assert_true(id >= 0 && id < N);
		seen[id]++;
		p = strchr(p + sizeof head - 1, '\n') + 1;
		assert_int_equal(*p++, '\n');
		for (size_t l = 0; l < body_lines; l++) {
			char want[64];
			int w = snprintf(want, sizeof want,
					 "message %02d line %04zu "
					 "....................\n",
					 id, l);
			assert_memory_equal(p, want, (size_t)w);
			p += w;
		}
		assert_int_equal(*p++, '\n');
		messages++;
	}
	assert_int_equal(messages, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(seen[i], 1);
		free(spools[i]);
	}
	free(content);
	free(mbox);
}

static void test_deliver_mbox_failed_write_truncates_back(void **state)
{
	struct fixture *f = *state;
	char *mbox = path_in(f, "trunc-mbox");
	const char before[] = "From x Thu Jan  1 00:00:00 1970\nold\n\n";
	write_file(mbox, before, sizeof before - 1);
	char *spool = path_in(f, "spool-big");
	char body[8192];
	memset(body, 'y', sizeof body);
	memcpy(body + sizeof body - 2, "\r\n", 2);
	write_file(spool, body, sizeof body);

	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	struct sigaction ign = {.sa_handler = SIG_IGN}, old;
	assert_int_equal(sigaction(SIGXFSZ, &ign, &old), 0);
	struct rlimit saved;
	limit_file_size(2000, &saved);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
	assert_int_equal(sigaction(SIGXFSZ, &old, NULL), 0);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	assert_non_null(strstr(o.reason, "File too large"));

	size_t len;
	char *content = read_file(mbox, &len);
	assert_int_equal(len, sizeof before - 1);
	assert_string_equal(content, before);
	free(content);
	char *lock = path_in(f, "trunc-mbox.lock");
	assert_int_equal(access(lock, F_OK), -1);

	/* The next delivery appends after the old message. */
	write_file(spool, "hi\r\n", 4);
	req = mbox_request(mbox, spool, "a@b");
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	content = read_file(mbox, &len);
	assert_memory_equal(content, before, sizeof before - 1);
	assert_non_null(strstr(content + sizeof before - 1, "\nhi\n\n"));
	free(content);
	free(lock);
	free(mbox);
	free(spool);
}

struct unlock_later {
	char *lock;
	bool removed;
};

static void remove_lock(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct unlock_later *u = arg;
	assert_int_equal(unlink(u->lock), 0);
	u->removed = true;
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_deliver_mbox_waits_for_a_dot_lock(void **state)
{
	struct fixture *f = *state;
	char *mbox = path_in(f, "locked");
	char *spool = path_in(f, "spool");
	write_file(spool, "hi\r\n", 4);
	struct unlock_later u = {.lock = path_in(f, "locked.lock")};
	write_file(u.lock, "", 0);
	struct timeval delay = {0, 350000};
	assert_int_equal(
	    event_base_once(f->base, -1, EV_TIMEOUT, remove_lock, &u, &delay),
	    0);
	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	struct outcome o;
	double t0 = now_seconds();
	deliver_one(f, &req, &o);
	assert_true(u.removed);
	assert_true(now_seconds() - t0 >= 0.3);
	assert_int_equal(o.result, DELIVER_OK);
	char *content = read_file(mbox, NULL);
	assert_non_null(strstr(content, "\nhi\n\n"));
	free(content);
	free(u.lock);
	free(mbox);
	free(spool);
}

static void test_deliver_mbox_waits_for_an_fcntl_lock(void **state)
{
	struct fixture *f = *state;
	char *mbox = path_in(f, "fcntl-locked");
	char *spool = path_in(f, "spool");
	write_file(spool, "hi\r\n", 4);
	write_file(mbox, "", 0);
	int ready[2];
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* Another program holds the lock for half a second. */
		int fd = open(mbox, O_WRONLY);
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		if (fd == -1 || fcntl(fd, F_SETLK, &fl) == -1)
			_exit(1);
		if (write(ready[1], "x", 1) != 1)
			_exit(1);
		usleep(500000);
		_exit(0);
	}
	char c;
	assert_int_equal(read(ready[0], &c, 1), 1);
	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	struct outcome o;
	double t0 = now_seconds();
	deliver_one(f, &req, &o);
	assert_true(now_seconds() - t0 >= 0.3);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(o.result, DELIVER_OK);
	char *content = read_file(mbox, NULL);
	assert_memory_equal(content, "From a@b ", 9);
	free(content);
	close(ready[0]);
	close(ready[1]);
	free(mbox);
	free(spool);
}

static void test_deliver_mbox_busy_lock_defers_after_ten_seconds(void **state)
{
	struct fixture *f = *state;
	char *mbox = path_in(f, "busy");
	char *spool = path_in(f, "spool");
	write_file(spool, "hi\r\n", 4);
	char *lock = path_in(f, "busy.lock");
	write_file(lock, "", 0);
	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	struct outcome o;
	double t0 = now_seconds();
	deliver_one(f, &req, &o);
	double waited = now_seconds() - t0;
	assert_true(waited >= 9.0 && waited < 20.0);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.1");
	assert_string_equal(o.reason, "mailbox busy");
	assert_int_equal(access(lock, F_OK), 0); /* not ours: left alone */
	assert_int_equal(access(mbox, F_OK), -1);
	free(lock);
	free(mbox);
	free(spool);
}

static void test_deliver_root_length_is_the_fixed_directory(void **state)
{
	(void)state;
	assert_int_equal(policy_mailbox_root_length("/var/mail/%d/%u"), 9);
	assert_int_equal(policy_mailbox_root_length("/var/mail/%u"), 9);
	assert_int_equal(policy_mailbox_root_length("/home/%u/Maildir"), 5);
	assert_int_equal(policy_mailbox_root_length("/var/mail/all"), 9);
	assert_int_equal(policy_mailbox_root_length("/var/mail/u%u"), 9);
	assert_int_equal(policy_mailbox_root_length("/%u"), 1);
	assert_int_equal(policy_mailbox_root_length("mail/%u"), 4);
	assert_int_equal(policy_mailbox_root_length("%u"), 0);
}

/* A file outside every mailbox that a planted link points at. */
static char *make_victim(const struct fixture *f)
{
	char *victim = path_in(f, "victim");
	write_file(victim, "precious\n", 9);
	return victim;
}

static void assert_victim_untouched(const char *victim)
{
	size_t len;
	char *content = read_file(victim, &len);
	assert_int_equal(len, 9);
	assert_string_equal(content, "precious\n");
	free(content);
}

/* A message in the spool and the Maildir "box" it goes to, box/tmp made. */
struct maildir_scene {
	char *spool;
	char *mailbox;
	char *tmp;
	char *new;
};

static struct maildir_scene maildir_scene(const struct fixture *f)
{
	struct maildir_scene sc = {
	    .spool = path_in(f, "spool-msg"),
	    .mailbox = path_in(f, "box"),
	    .tmp = path_in(f, "box/tmp"),
	    .new = path_in(f, "box/new"),
	};

	write_file(sc.spool, "Subject: a\r\n\r\nbody\r\n", 20);
	assert_int_equal(mailfolder_mkdirs(sc.tmp), 0);
	return sc;
}

static void maildir_scene_free(struct maildir_scene *sc)
{
	free(sc->new);
	free(sc->tmp);
	free(sc->mailbox);
	free(sc->spool);
}

/* Delivered to req, the message waits: the link at `link` is not
 * followed. */
static void deliver_refusing_link(struct fixture *f,
				  const struct deliver_request *req,
				  const char *link, struct outcome *o)
{
	char want[512];

	deliver_one(f, req, o);
	assert_int_equal(o->result, DELIVER_TEMPFAIL);
	snprintf(want, sizeof want, "open %s: symbolic link not followed",
		 link);
	assert_string_equal(o->reason, want);
}

/* The tmp/ name of the old scheme (the message's own name) holds a link
 * to another file: the delivery neither writes through it nor stops. */
static void test_deliver_maildir_link_at_tmp_name_is_not_followed(void **state)
{
	struct fixture *f = *state;
	struct maildir_scene sc = maildir_scene(f);
	char *victim = make_victim(f);
	char *planted = path_in(f, "box/tmp/1700000000.Q1234.0.mx.example.com");
	assert_int_equal(symlink(victim, planted), 0);
	struct deliver_request req = maildir_request(sc.mailbox, sc.spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_victim_untouched(victim);
	char *file = path_in(f, "box/new/1700000000.Q1234.0.mx.example.com");
	struct stat st;
	assert_int_equal(lstat(file, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	char *content = read_file(file, NULL);
	assert_non_null(strstr(content, "Subject: a\n\nbody\n"));
	assert_int_equal(lstat(planted, &st), 0);
	assert_true(S_ISLNK(st.st_mode)); /* not ours to remove */
	assert_int_equal(count_entries(sc.tmp, NULL, 0), 1);
	assert_int_equal(count_entries(sc.new, NULL, 0), 1);
	free(content);
	free(file);
	free(planted);
	free(victim);
	maildir_scene_free(&sc);
}

/* A link planted in new/ under the message's name is neither written
 * through nor taken for an earlier copy: the delivery waits. */
static void test_deliver_maildir_link_at_new_name_defers(void **state)
{
	struct fixture *f = *state;
	struct maildir_scene sc = maildir_scene(f);
	char *victim = make_victim(f);
	char *planted = path_in(f, "box/new/1700000000.Q1234.0.mx.example.com");
	assert_int_equal(mailfolder_mkdirs(sc.new), 0);
	assert_int_equal(symlink(victim, planted), 0);
	struct deliver_request req = maildir_request(sc.mailbox, sc.spool);
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	char want[512];
	snprintf(want, sizeof want,
		 "link %s/1700000000.Q1234.0.mx.example.com: File exists",
		 sc.new);
	assert_string_equal(o.reason, want);
	assert_victim_untouched(victim);
	assert_int_equal(count_entries(sc.tmp, NULL, 0), 0);

	/* A retry looks for an earlier copy first: a link is none. */
	req.check_existing = true;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	snprintf(want, sizeof want,
		 "%s/new/1700000000.Q1234.0.mx.example.com is not a regular "
		 "file",
		 sc.mailbox);
	assert_string_equal(o.reason, want);
	assert_victim_untouched(victim);
	assert_int_equal(count_entries(sc.tmp, NULL, 0), 0);

	/* Once it is gone, the message is delivered. */
	assert_int_equal(unlink(planted), 0);
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	struct stat st;
	assert_int_equal(lstat(planted, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	free(planted);
	free(victim);
	maildir_scene_free(&sc);
}

/* A crash between the creation in tmp/ and the move into new/ leaves a
 * file there; the retry removes it (ours only) and delivers once. */
static void test_deliver_maildir_retry_removes_own_tmp_leftover(void **state)
{
	struct fixture *f = *state;
	struct maildir_scene sc = maildir_scene(f);
	char *ours = path_in(
	    f, "box/tmp/1700000000.Q1234.0.mx.example.com.0123456789abcdef");
	char *old_scheme =
	    path_in(f, "box/tmp/1700000000.Q1234.0.mx.example.com");
	char *other = path_in(f, "box/tmp/1700000000.Q1234.01.mx.example.com");
	write_file(ours, "half", 4);
	write_file(old_scheme, "half", 4);
	write_file(other, "someone else's", 14);
	struct deliver_request req = maildir_request(sc.mailbox, sc.spool);
	req.check_existing = true;
	struct outcome o;
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	assert_int_equal(access(ours, F_OK), -1);
	assert_int_equal(access(old_scheme, F_OK), -1);
	assert_int_equal(access(other, F_OK), 0);
	assert_int_equal(count_entries(sc.tmp, NULL, 0), 1);
	assert_int_equal(count_entries(sc.new, NULL, 0), 1);
	free(other);
	free(old_scheme);
	free(ours);
	maildir_scene_free(&sc);
}

/* Below the mail root a folder that is a link is not followed (the
 * delivery waits); the root itself may be a link. */
static void test_deliver_maildir_link_below_root_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool-msg");
	write_file(spool, "Subject: a\r\n\r\nbody\r\n", 20);
	char *elsewhere = path_in(f, "elsewhere");
	char *real_root = path_in(f, "real-root");
	char *root = path_in(f, "mail");
	char *domain = path_in(f, "mail/example.com");
	assert_int_equal(mailfolder_mkdirs(elsewhere), 0);
	assert_int_equal(mailfolder_mkdirs(real_root), 0);
	assert_int_equal(symlink(real_root, root), 0);	 /* the operator's */
	assert_int_equal(symlink(elsewhere, domain), 0); /* planted */
	char *mailbox = path_in(f, "mail/example.com/bob");
	struct deliver_request req = maildir_request(mailbox, spool);
	req.root_len = strlen(root);
	struct outcome o;
	deliver_refusing_link(f, &req, domain, &o);
	assert_string_equal(o.dsn, "4.2.0");
	assert_int_equal(count_entries(elsewhere, NULL, 0), 0);

	/* Through the root's own link, a real folder takes mail. */
	assert_int_equal(unlink(domain), 0);
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	char *new = path_in(f, "real-root/example.com/bob/new");
	assert_int_equal(count_entries(new, NULL, 0), 1);

	/* A link planted for the folder itself, or for its new/. */
	char *other = path_in(f, "mail/example.com/carol");
	char *other_new = path_in(f, "mail/example.com/dave/new");
	char *dave = path_in(f, "mail/example.com/dave");
	assert_int_equal(symlink(elsewhere, other), 0);
	assert_int_equal(mailfolder_mkdirs(dave), 0);
	assert_int_equal(symlink(elsewhere, other_new), 0);
	req.mailbox = other;
	deliver_refusing_link(f, &req, other, &o);
	req.mailbox = dave;
	deliver_refusing_link(f, &req, other_new, &o);
	assert_int_equal(count_entries(elsewhere, NULL, 0), 0);
	free(dave);
	free(other_new);
	free(other);
	free(new);
	free(mailbox);
	free(domain);
	free(root);
	free(real_root);
	free(elsewhere);
	free(spool);
}

/* The folder walk that POP3 shares: the root may be a link, nothing
 * below it may, "." and ".." are refused, and nothing is made unless
 * asked; the length says which part failed. */
static void test_deliver_open_folder_follows_only_the_root(void **state)
{
	struct fixture *f = *state;
	char *real_root = path_in(f, "real-root");
	char *root = path_in(f, "mail");
	char *bob = path_in(f, "mail/example.com/bob");
	char *carol = path_in(f, "mail/example.com/carol");
	char *dotdot = path_in(f, "mail/example.com/../example.com/bob");
	char *missing = path_in(f, "mail/example.com/dave");
	assert_int_equal(mailfolder_mkdirs(real_root), 0);
	assert_int_equal(symlink(real_root, root), 0); /* the operator's */
	size_t root_len = strlen(root);
	size_t failed = 0;

	errno = 0;
	assert_int_equal(mailfolder_open(bob, root_len, false, &failed), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(access(bob, F_OK), -1); /* not made */

	int fd = mailfolder_open(bob, root_len, true, &failed);
	assert_true(fd >= 0);
	assert_int_equal(mkdirat(fd, "new", 0700), 0);
	assert_int_equal(close(fd), 0);
	char *made = path_in(f, "real-root/example.com/bob/new");
	assert_int_equal(access(made, F_OK), 0);

	/* carol -> bob, planted below the root */
	assert_int_equal(symlink("bob", carol), 0);
	errno = 0;
	assert_int_equal(mailfolder_open(carol, root_len, true, &failed), -1);
	assert_int_equal(errno, ELOOP);
	assert_int_equal(failed, strlen(carol));
	/* the same link met as a middle component */
	char *through = path_in(f, "mail/example.com/carol/new");
	errno = 0;
	assert_int_equal(mailfolder_open(through, root_len, false, &failed),
			 -1);
	assert_int_equal(errno, ELOOP);
	assert_int_equal(failed, strlen(carol));

	errno = 0;
	assert_int_equal(mailfolder_open(dotdot, root_len, false, &failed), -1);
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_int_equal(mailfolder_open(missing, root_len, false, NULL), -1);
	assert_int_equal(errno, ENOENT);
	free(through);
	free(made);
	free(missing);
	free(dotdot);
	free(carol);
	free(bob);
	free(root);
	free(real_root);
}

/* A link where a directory is expected says ELOOP, for O_PATH and
 * O_RDONLY alike, so that callers can tell it from a plain file. */
static void test_deliver_open_directory_at_says_eloop_for_a_link(void **state)
{
	struct fixture *f = *state;
	int dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dirfd >= 0);
	assert_int_equal(mkdirat(dirfd, "real", 0700), 0);
	assert_int_equal(symlinkat("real", dirfd, "link"), 0);
	int file = openat(dirfd, "file", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	assert_true(file >= 0);
	assert_int_equal(close(file), 0);
	int modes[] = {O_PATH, O_RDONLY};
	for (size_t i = 0; i < 2; i++) {
		int fd = mailfolder_open_directory_at(dirfd, "real", modes[i]);
		assert_true(fd >= 0);
		assert_int_equal(close(fd), 0);
		errno = 0;
		assert_int_equal(
		    mailfolder_open_directory_at(dirfd, "link", modes[i]), -1);
		assert_int_equal(errno, ELOOP);
		errno = 0;
		assert_int_equal(
		    mailfolder_open_directory_at(dirfd, "file", modes[i]), -1);
		assert_int_equal(errno, ENOTDIR);
	}
	assert_int_equal(close(dirfd), 0);
}

/* An mbox that is a link, a file with another link, or someone else's
 * file is refused before anything is written; the delivery waits. */
static void test_deliver_mbox_link_hard_link_or_owner_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool");
	write_file(spool, "hi\r\n", 4);
	char *victim = make_victim(f);
	char *mbox = path_in(f, "var/mail/bob");
	char *dir = path_in(f, "var/mail");
	char *lock = path_in(f, "var/mail/bob.lock");
	assert_int_equal(mailfolder_mkdirs(dir), 0);
	struct outcome o;
	char want[512];

	assert_int_equal(symlink(victim, mbox), 0);
	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	deliver_refusing_link(f, &req, mbox, &o);
	assert_string_equal(o.dsn, "4.2.0");
	assert_victim_untouched(victim);
	assert_int_equal(access(lock, F_OK), -1);

	assert_int_equal(unlink(mbox), 0);
	assert_int_equal(link(victim, mbox), 0);
	req = mbox_request(mbox, spool, "a@b");
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_TEMPFAIL);
	assert_string_equal(o.dsn, "4.2.0");
	snprintf(want, sizeof want, "%s has 2 links, not 1", mbox);
	assert_string_equal(o.reason, want);
	assert_victim_untouched(victim);
	assert_int_equal(access(lock, F_OK), -1);

	assert_int_equal(unlink(mbox), 0);
	write_file(mbox, "precious\n", 9);
	if (geteuid() == 0) {
		assert_int_equal(chown(mbox, 65534, 65534), 0);
		req = mbox_request(mbox, spool, "a@b");
		deliver_one(f, &req, &o);
		assert_int_equal(o.result, DELIVER_TEMPFAIL);
		snprintf(want, sizeof want, "%s is owned by uid 65534, not 0",
			 mbox);
		assert_string_equal(o.reason, want);
		assert_victim_untouched(mbox);
		assert_int_equal(chown(mbox, 0, 0), 0);
	}

	/* Our own plain file takes the message. */
	req = mbox_request(mbox, spool, "a@b");
	deliver_one(f, &req, &o);
	assert_int_equal(o.result, DELIVER_OK);
	char *content = read_file(mbox, NULL);
	assert_memory_equal(content, "precious\nFrom a@b ", 18);
	free(content);
	free(lock);
	free(dir);
	free(mbox);
	free(victim);
	free(spool);
}

/* A link planted as a folder on the way to the mbox is not followed. */
static void test_deliver_mbox_link_below_root_defers(void **state)
{
	struct fixture *f = *state;
	char *spool = path_in(f, "spool");
	write_file(spool, "hi\r\n", 4);
	char *root = path_in(f, "mail");
	char *elsewhere = path_in(f, "elsewhere");
	char *domain = path_in(f, "mail/example.com");
	assert_int_equal(mailfolder_mkdirs(root), 0);
	assert_int_equal(mailfolder_mkdirs(elsewhere), 0);
	assert_int_equal(symlink(elsewhere, domain), 0);
	char *mbox = path_in(f, "mail/example.com/bob");
	struct deliver_request req = mbox_request(mbox, spool, "a@b");
	req.root_len = strlen(root);
	struct outcome o;
	deliver_refusing_link(f, &req, domain, &o);
	assert_int_equal(count_entries(elsewhere, NULL, 0), 0);
	free(mbox);
	free(domain);
	free(elsewhere);
	free(root);
	free(spool);
}

/* A dot lock older than this is stale in the tests below. */
#define TEST_STALE_SECONDS 300

static void make_stale_lock(const char *path)
{
	write_file(path, "", 0);
	struct timespec old[2] = {{.tv_sec = time(NULL) - 3600},
				  {.tv_sec = time(NULL) - 3600}};
	assert_int_equal(utimensat(AT_FDCWD, path, old, 0), 0);
}

static ino_t inode_of(const char *path)
{
	struct stat st;
	assert_int_equal(lstat(path, &st), 0);
	return st.st_ino;
}

/*
 * The race of two lockers that find the same stale lock: the first
 * breaks it and takes the lock; the second, which judged the same stale
 * file, must not then remove the first one's fresh lock.
 */
static void test_deliver_dot_lock_break_spares_a_fresh_lock(void **state)
{
	struct fixture *f = *state;
	int dirfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0);
	char *lock = path_in(f, "bob.lock");
	make_stale_lock(lock);

	struct mbox_lock_file first, second;
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &first),
	    DOT_LOCK_STALE);
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &second),
	    DOT_LOCK_STALE);
	/* The first breaks it and takes the lock... */
	assert_int_equal(mbox_dot_lock_break(dirfd, "bob.lock", &first),
			 DOT_LOCK_STALE);
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &first),
	    DOT_LOCK_TAKEN);
	ino_t taken = inode_of(lock);
	assert_true(first.ino == taken);
	/* ...then the second goes on with what it judged. */
	assert_int_equal(mbox_dot_lock_break(dirfd, "bob.lock", &second),
			 DOT_LOCK_BUSY);
	assert_int_equal(inode_of(lock), taken);
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &second),
	    DOT_LOCK_BUSY);
	assert_int_equal(count_entries(f->dir, NULL, 0), 1); /* no litter */

	/* The same when another program broke it and made its own lock
	 * between our look and our break. */
	assert_int_equal(unlink(lock), 0);
	make_stale_lock(lock);
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &second),
	    DOT_LOCK_STALE);
	assert_int_equal(unlink(lock), 0);
	write_file(lock, "4242\n", 5);
	taken = inode_of(lock);
	assert_int_equal(mbox_dot_lock_break(dirfd, "bob.lock", &second),
			 DOT_LOCK_BUSY);
	assert_int_equal(inode_of(lock), taken);
	assert_int_equal(count_entries(f->dir, NULL, 0), 1);
	free(lock);
	assert_int_equal(close(dirfd), 0);
}

/* While one locker breaks a stale lock (and holds flock on it), another
 * that judged the same file waits instead of breaking it too. */
static void test_deliver_dot_lock_breakers_take_turns(void **state)
{
	struct fixture *f = *state;
	int dirfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0);
	char *lock = path_in(f, "bob.lock");
	make_stale_lock(lock);
	struct mbox_lock_file mine;
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &mine),
	    DOT_LOCK_STALE);
	int held = open(lock, O_RDONLY);
	assert_true(held >= 0);
	assert_int_equal(flock(held, LOCK_EX), 0);
	assert_int_equal(mbox_dot_lock_break(dirfd, "bob.lock", &mine),
			 DOT_LOCK_BUSY);
	assert_int_equal(access(lock, F_OK), 0);
	assert_int_equal(close(held), 0);
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &mine),
	    DOT_LOCK_STALE);
	assert_int_equal(mbox_dot_lock_break(dirfd, "bob.lock", &mine),
			 DOT_LOCK_STALE);
	assert_int_equal(access(lock, F_OK), -1);
	free(lock);
	assert_int_equal(close(dirfd), 0);
}

/* Only a file (or a link) that a crash left is a stale lock: an old
 * directory of that name is not ours to remove. */
static void test_deliver_dot_lock_only_breaks_files(void **state)
{
	struct fixture *f = *state;
	int dirfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0);
	char *lock = path_in(f, "bob.lock");
	assert_int_equal(mkdir(lock, 0700), 0);
	struct timespec old[2] = {{.tv_sec = time(NULL) - 3600},
				  {.tv_sec = time(NULL) - 3600}};
	assert_int_equal(utimensat(AT_FDCWD, lock, old, 0), 0);
	struct mbox_lock_file file;
	assert_int_equal(
	    mbox_dot_lock_try(dirfd, "bob.lock", TEST_STALE_SECONDS, &file),
	    DOT_LOCK_BUSY);
	assert_int_equal(file.fd, -1);
	struct stat st;
	assert_int_equal(lstat(lock, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(rmdir(lock), 0);
	free(lock);
	assert_int_equal(close(dirfd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_deliver_expand_path_substitutes_lower_case),
	    cmocka_unit_test(test_deliver_maildir_name_escapes_host),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mkdirs_makes_parents_private, setup, teardown),
	    cmocka_unit_test(test_deliver_mboxrd_quotes_from_lines),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_creates_folders_and_one_message, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_null_sender_and_large_body, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_same_unique_is_not_delivered_twice, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_read_only_folder_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_under_a_file_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_short_body_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_failed_write_leaves_nothing, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_removed_folder_is_made_again, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_removed_folder_several_in_flight, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_renamed_folder_stops_getting_mail, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_thirty_in_one_turn, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_new_not_writable_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_many_folders_bounded, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_appends_with_from_lines_and_quoting, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_twenty_at_once_each_whole_once, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_failed_write_truncates_back, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_waits_for_a_dot_lock, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_waits_for_an_fcntl_lock, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_busy_lock_defers_after_ten_seconds, setup,
		teardown),
	    cmocka_unit_test(test_deliver_root_length_is_the_fixed_directory),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_link_at_tmp_name_is_not_followed, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_link_at_new_name_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_retry_removes_own_tmp_leftover, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_maildir_link_below_root_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_open_folder_follows_only_the_root, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_open_directory_at_says_eloop_for_a_link, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_link_hard_link_or_owner_defers, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_mbox_link_below_root_defers, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_dot_lock_break_spares_a_fresh_lock, setup,
		teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_dot_lock_breakers_take_turns, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_deliver_dot_lock_only_breaks_files, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
