/*
 * facteur-sendmail: sendmail-compatible submission (SPEC.md §2, §8),
 * installable as /usr/sbin/sendmail for cron, PHP's mail(), git
 * send-email and the like.
 *
 * The message goes straight into the spool, as the daemon would write
 * it: wire form (CRLF, dot-stuffed) behind a Received: header, with the
 * envelope's recipients run through the same policy (aliases, local or
 * remote). We exit 0 only once the spool's commit has flushed both files
 * and the directory; then a running daemon is told "pickup <id>" on its
 * control socket. A daemon that is not running finds the message when it
 * starts, so that case is no error.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "facteur/auth.h"
#include "facteur/config.h"
#include "facteur/control_client.h"
#include "facteur/control_proto.h"
#include "facteur/dkim.h"
#include "facteur/dkim_intake.h"
#include "facteur/mailtime.h"
#include "facteur/policy.h"
#include "facteur/smtp_proto.h"
#include "facteur/spool.h"
#include "facteur/submission.h"

/* sysexits.h */
#define EXIT_USAGE 64
#define EXIT_DATAERR 65
#define EXIT_NOUSER 67
#define EXIT_TEMPFAIL 75
/* -bp and -q, as facteurctl */
#define EXIT_UNREACHABLE 1
#define EXIT_REFUSED 2

#define READ_CHUNK (64 * 1024)
/* The header section is held in memory to be rewritten; past this the
 * input is no message we accept. */
#define HEADER_MAX (1024 * 1024)

extern char **environ;

enum mode {
	MODE_SEND,  /* -bm, the default */
	MODE_LIST,  /* -bp */
	MODE_FLUSH, /* -q */
};

struct options {
	enum mode mode;
	bool extract;		 /* -t */
	bool ignore_dots;	 /* -i, -oi */
	bool verbose;		 /* -v */
	const char *sender;	 /* -f / -r; NULL: the invoking user */
	const char *from_name;	 /* -F */
	const char *config_path; /* -C */
	unsigned notify;	 /* -N */
	enum smtp_ret ret;	 /* -R */
	const char *envid;	 /* -V */
	char **rcpt_args;
	int rcpt_argc;
};

/* What the message is made of while it is read. */
struct submission {
	const struct config *cfg;
	const struct policy *policy;
	const struct options *opt;
	char *sender;	    /* "" for the null sender */
	char *default_from; /* user@hostname */
	struct spool_rcpt *rcpts;
	size_t rcpt_count;
	bool smtputf8;
	bool eight_bit;
	const struct dkim_keys *dkim; /* NULL: nothing signed */
};

static void usage(void)
{
	fprintf(stderr,
		"usage: facteur-sendmail [-t] [-i|-oi] [-f SENDER] [-F NAME] "
		"[-C FILE] [-v] [RECIPIENT...]\n"
		"       facteur-sendmail -bp\n");
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
	va_list ap;

	fputs("facteur-sendmail: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The words an option takes, each with the value it stands for. */
struct option_word {
	const char *word; /* NULL ends a table */
	int value;
};

static const struct option_word modes[] = {
    {"m", MODE_SEND}, {"p", MODE_LIST}, {NULL, 0}};
static const struct option_word returns[] = {
    {"full", SMTP_RET_FULL}, {"hdrs", SMTP_RET_HDRS}, {NULL, 0}};
static const struct option_word notify_words[] = {
    {"never", SMTP_NOTIFY_NEVER},
    {"success", SMTP_NOTIFY_SUCCESS},
    {"failure", SMTP_NOTIFY_FAILURE},
    {"delay", SMTP_NOTIFY_DELAY},
    {NULL, 0}};

/* The value `word` stands for in `words`; -1 when it is none of them. */
static int option_word_value(const struct option_word *words, const char *word,
			     bool ignore_case)
{
	for (; words->word != NULL; words++)
		if ((ignore_case ? strcasecmp(word, words->word)
				 : strcmp(word, words->word)) == 0)
			return words->value;
	return -1;
}

/* -N never | success,failure,delay (RFC 3461 §4.1). */
static int parse_notify(const char *text, unsigned *out)
{
	char *copy = strdup(text);
	char *save = NULL;
	unsigned bits = 0;

	if (copy == NULL)
		return -1;
	for (char *w = strtok_r(copy, ",", &save); w != NULL;
	     w = strtok_r(NULL, ",", &save)) {
		int bit = option_word_value(notify_words, w, true);
		bits = bit == -1 ? ~0u : bits | (unsigned)bit;
	}
	free(copy);
	if (bits == 0 || bits == ~0u ||
	    ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER))
		return -1;
	*out = bits;
	return 0;
}

/* Sendmail's options: the ones that matter are acted on, the many that
 * callers pass out of habit (-odi, -oem, -v...) are accepted and
 * ignored. Returns 0 or an exit status. */
static int parse_options(int argc, char **argv, struct options *opt)
{
	int c, value;

	opterr = 0;
	while ((c = getopt(argc, argv,
			   "A:B:b:C:d:F:f:Gh:iL:mN:nO:o:p:q::R:r:tUvV:X:")) !=
	       -1) {
		switch (c) {
		case 'b':
			if ((value = option_word_value(modes, optarg, false)) ==
			    -1) {
				fail("-b%s is not supported", optarg);
				return EXIT_USAGE;
			}
			opt->mode = (enum mode)value;
			break;
		case 'C':
			opt->config_path = optarg;
			break;
		case 'F':
			opt->from_name = optarg;
			break;
		case 'f':
		case 'r':
			opt->sender = optarg;
			break;
		case 'i':
			opt->ignore_dots = true;
			break;
		case 'o':
			if (strcmp(optarg, "i") == 0)
				opt->ignore_dots = true;
			break; /* -odi, -oem, -oQ...: ours are fixed */
		case 'O':
			if (strcasecmp(optarg, "IgnoreDots") == 0 ||
			    strcasecmp(optarg, "IgnoreDots=true") == 0)
				opt->ignore_dots = true;
			break;
		case 'q':
			opt->mode = MODE_FLUSH;
			break;
		case 't':
			opt->extract = true;
			break;
		case 'v':
			opt->verbose = true;
			break;
		case 'N':
			if (parse_notify(optarg, &opt->notify) == -1) {
				fail("-N %s: expected never or "
				     "success,failure,delay",
				     optarg);
				return EXIT_USAGE;
			}
			break;
		case 'R':
			if ((value = option_word_value(returns, optarg,
						       true)) == -1) {
				fail("-R %s: expected full or hdrs", optarg);
				return EXIT_USAGE;
			}
			opt->ret = (enum smtp_ret)value;
			break;
		case 'V':
			if (strlen(optarg) > SMTP_ENVID_MAX) {
				fail("-V: envelope id too long");
				return EXIT_USAGE;
			}
			opt->envid = optarg;
			break;
		case 'A': /* -Am/-Ac: which configuration; we have one */
		case 'B': /* body type: measured instead */
		case 'd': /* debugging */
		case 'G':
		case 'h': /* hop count */
		case 'L':
		case 'm': /* me too: always */
		case 'n': /* no aliasing: aliases always apply */
		case 'p': /* protocol name */
		case 'U':
		case 'X':
			break;
		default:
			if (optopt != 0)
				fail("-%c: unknown option or missing argument",
				     optopt);
			usage();
			return EXIT_USAGE;
		}
	}
	opt->rcpt_args = argv + optind;
	opt->rcpt_argc = argc - optind;
	return 0;
}

static struct config *load_config(const struct options *opt)
{
	struct config_errors errors = {0};
	struct config *cfg = config_load(opt->config_path, environ, &errors);

	if (cfg == NULL) {
		for (size_t i = 0; i < errors.count; i++)
			fail("%s", errors.messages[i]);
		if (errors.count == 0)
			fail("configuration error");
	}
	config_errors_clear(&errors);
	return cfg;
}

/* -bp and -q: one control request, like facteurctl queue / flush. */
struct lister {
	time_t now;
	struct control_queue_totals totals;
};

static int print_queue_line(char *line, void *arg)
{
	struct lister *l = arg;
	char *text = control_proto_format_queue_line(line, l->now, &l->totals);

	/* a record this version does not know: as sent, escaped */
	if (text == NULL)
		text = control_proto_shown(line);
	printf("%s\n", text != NULL ? text : "");
	free(text);
	return 0;
}

static int run_control(const struct config *cfg, enum mode mode)
{
	struct lister l = {.now = time(NULL)};
	char err[512] = "";
	enum control_call_result rc = control_client_call(
	    cfg->spool_dir, mode == MODE_LIST ? "queue" : "flush",
	    mode == MODE_LIST ? print_queue_line : NULL, &l, err, sizeof err);

	switch (rc) {
	case CONTROL_CALL_OK:
		if (mode == MODE_LIST) {
			char *summary =
			    control_proto_format_queue_summary(&l.totals);
			if (summary != NULL)
				printf("%s\n", summary);
			free(summary);
		}
		return 0;
	case CONTROL_CALL_ERROR:
		fail("%s", err);
		return EXIT_REFUSED;
	case CONTROL_CALL_UNREACHABLE:
	case CONTROL_CALL_BROKEN:
		break;
	}
	fail("%s", err);
	return EXIT_UNREACHABLE;
}

/* The domain for a recipient without one: the host name when it is a
 * local domain, else the first local domain, so that "root" is
 * delivered here rather than relayed. */
static const char *qualify_domain(const struct config *cfg)
{
	if (config_is_local_domain(cfg, cfg->hostname) ||
	    cfg->local_domains.count == 0)
		return cfg->hostname;
	return cfg->local_domains.items[0];
}

static bool has_eight_bit(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/* An address as SMTP would take it, or NULL (message printed). */
static char *checked_address(const char *address, const char *domain,
			     const char *what)
{
	char *full = NULL;
	char *bracketed = NULL;
	struct smtp_path path;
	size_t used;

	if (strchr(address, '@') == NULL) {
		if (asprintf(&full, "%s@%s", address, domain) == -1)
			return NULL;
	} else if ((full = strdup(address)) == NULL) {
		return NULL;
	}
	if (asprintf(&bracketed, "<%s>", full) == -1) {
		free(full);
		return NULL;
	}
	if (smtp_parse_path(bracketed, strlen(bracketed), false, false, &path,
			    &used) != SMTP_PARSE_OK ||
	    used != strlen(bracketed)) {
		fail("%s: bad %s address", address, what);
		free(full);
		full = NULL;
	}
	free(bracketed);
	return full;
}

/* The envelope sender: -f (empty only as -f ''), else user@hostname. */
static int choose_sender(struct submission *sub, const struct options *opt,
			 const char *user)
{
	const struct config *cfg = sub->cfg;

	if (asprintf(&sub->default_from, "%s@%s", user, cfg->hostname) == -1)
		return EXIT_TEMPFAIL;
	if (opt->sender == NULL) {
		sub->sender = strdup(sub->default_from);
		return sub->sender ? 0 : EXIT_TEMPFAIL;
	}
	char *s = strdup(opt->sender);
	if (s == NULL)
		return EXIT_TEMPFAIL;
	size_t n = strlen(s);
	if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
		memmove(s, s + 1, n - 2);
		s[n - 2] = '\0';
	}
	if (s[0] == '\0') {
		sub->sender = s; /* the null sender */
		return 0;
	}
	sub->sender = checked_address(s, cfg->hostname, "sender");
	free(s);
	if (sub->sender == NULL)
		return EXIT_USAGE;
	sub->smtputf8 |= has_eight_bit(sub->sender);
	return 0;
}

static int rcpt_add(struct submission *sub, const char *original,
		    const struct policy_target *target)
{
	for (size_t i = 0; i < sub->rcpt_count; i++)
		if (strcmp(sub->rcpts[i].address, target->address) == 0)
			return 0;
	struct spool_rcpt *rcpts =
	    reallocarray(sub->rcpts, sub->rcpt_count + 1, sizeof *rcpts);
	if (rcpts == NULL)
		return -1;
	sub->rcpts = rcpts;
	struct spool_rcpt *r = &rcpts[sub->rcpt_count];
	memset(r, 0, sizeof *r);
	r->address = strdup(target->address);
	r->original = strdup(original);
	r->notify = sub->opt->notify;
	r->local = target->local;
	r->state = RCPT_PENDING;
	/* Forwarded through an alias: the same SRS sender as by SMTP. */
	if (r->address == NULL || r->original == NULL ||
	    (target->forwarded &&
	     policy_forward_sender(sub->policy, sub->sender, time(NULL),
				   &r->sender) == -1)) {
		free(r->address);
		free(r->original);
		return -1;
	}
	sub->rcpt_count++;
	sub->smtputf8 |= has_eight_bit(r->address);
	return 0;
}

/* One recipient as given: qualified, checked, expanded. Returns 0 or an
 * exit status. */
static int add_recipient(struct submission *sub, const char *given)
{
	char *address =
	    checked_address(given, qualify_domain(sub->cfg), "recipient");
	if (address == NULL)
		return EXIT_NOUSER;

	/* Local submission is trusted like an authenticated client. */
	struct policy_client client = {.addr = NULL, .authenticated = true};
	struct policy_expansion exp = {0};
	enum policy_verdict verdict =
	    policy_check_recipient(sub->policy, &client, address, &exp);
	int rc = 0;
	switch (verdict) {
	case POLICY_ACCEPT:
		for (size_t i = 0; i < exp.count && rc == 0; i++)
			if (rcpt_add(sub, address, &exp.targets[i]) == -1)
				rc = EXIT_TEMPFAIL;
		policy_expansion_clear(&exp);
		break;
	case POLICY_UNKNOWN_USER:
	case POLICY_BAD_MAILBOX:
		fail("%s: no such user", address);
		rc = EXIT_NOUSER;
		break;
	case POLICY_ALIAS_LOOP:
		fail("%s: aliases expand without end", address);
		rc = EXIT_NOUSER;
		break;
	case POLICY_RELAY_DENIED:
	default:
		fail("%s: relay access denied", address);
		rc = EXIT_NOUSER;
		break;
	}
	free(address);
	return rc;
}

/* Every address of a list (a command-line argument may hold several,
 * comma-separated, with display names). */
static int add_recipients(struct submission *sub,
			  const struct submission_addresses *list)
{
	for (size_t i = 0; i < list->count; i++) {
		int rc = add_recipient(sub, list->items[i]);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* The account the daemon runs as owns the spool: root becomes it, as
 * facteurd does, so that the files are the daemon's. */
static int become_spool_owner(const struct config *cfg)
{
	if (geteuid() != 0 || cfg->user == NULL ||
	    strcmp(cfg->user, "root") == 0)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL) {
		fail("user %s: no such user", cfg->user);
		return -1;
	}
	if (initgroups(pw->pw_name, pw->pw_gid) == -1 ||
	    setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1) {
		fail("cannot become %s: %s", cfg->user, strerror(errno));
		return -1;
	}
	return 0;
}

static const char *invoking_user(void)
{
	struct passwd *pw = getpwuid(getuid());
	if (pw != NULL && pw->pw_name[0] != '\0')
		return pw->pw_name;
	const char *name = getenv("LOGNAME");
	if (name == NULL || name[0] == '\0' || strpbrk(name, "@<> \t\r\n"))
		return "nobody";
	return name;
}

/* Read standard input through the lone-dot rule; 0 at the end. */
static ssize_t read_input(struct submission_input *in, char *raw, char *out,
			  size_t *outlen, bool *eof)
{
	*outlen = 0;
	if (in->done || *eof)
		return 0;
	ssize_t n;
	do {
		n = read(STDIN_FILENO, raw, READ_CHUNK);
	} while (n == -1 && errno == EINTR);
	if (n == -1)
		return -1;
	if (n == 0) {
		*eof = true;
		*outlen = submission_input_finish(in, out);
		return (ssize_t)*outlen;
	}
	submission_input_feed(in, raw, (size_t)n, out, outlen);
	return (ssize_t)n;
}

struct writer {
	struct spool_incoming *inc;
	struct smtp_data data;
	char *out; /* SMTP_DATA_OUT_MAX(READ_CHUNK + 2) */
	bool *eight_bit;
	struct dkim_intake *dkim; /* reading for a signature, or NULL */
};

/* Octets into the spool file, and past the signer when there is one. */
static void store(struct writer *w, const char *p, size_t n)
{
	spool_incoming_write(w->inc, p, n);
	if (w->dkim != NULL)
		dkim_intake_feed(w->dkim, p, n);
}

/* Message octets into the spool file in wire form. */
static void write_message(struct writer *w, const char *p, size_t n)
{
	while (n > 0) {
		size_t chunk = n < READ_CHUNK ? n : READ_CHUNK;
		size_t outlen = 0;
		for (size_t i = 0; i < chunk && !*w->eight_bit; i++)
			if ((unsigned char)p[i] >= 0x80)
				*w->eight_bit = true;
		smtp_data_feed(&w->data, p, chunk, w->out, &outlen);
		store(w, w->out, outlen);
		p += chunk;
		n -= chunk;
	}
}

/* Everything that lives while the message is queued. */
struct queueing {
	struct spool *spool;
	struct spool_incoming *inc;
	char *raw;
	char *filtered;
	char *wire;
};

static void queueing_end(struct queueing *q)
{
	if (q->inc != NULL)
		spool_incoming_abort(q->spool, q->inc);
	if (q->spool != NULL)
		spool_close(q->spool);
	free(q->raw);
	free(q->filtered);
	free(q->wire);
}

/* Put the DKIM signatures before the message (the daemon's sessions do
 * the same on the worker); a failure leaves the message unsigned, or,
 * when the fields could not be written, refused by the commit. */
static void sign(const struct submission *sub, struct queueing *q,
		 struct dkim_intake *dkim)
{
	char *outcome = dkim != NULL ? dkim_intake_sign_now(dkim, sub->dkim,
							    q->spool, q->inc)
				     : NULL;

	if (outcome == NULL || strncmp(outcome, "error:", 6) == 0)
		fprintf(stderr, "facteur-sendmail: warning: DKIM: %s\n",
			outcome ? outcome : "out of memory, not signed");
	else if (sub->opt->verbose)
		fprintf(stderr, "facteur-sendmail: DKIM: %s\n", outcome);
	free(outcome);
}

/*
 * Read the header section, rewrite it, settle the recipients, then
 * stream the message into the spool and commit it. Returns 0 with the
 * queue id in `id`, or an exit status.
 */
static int submit(struct submission *sub, char *id)
{
	const struct config *cfg = sub->cfg;
	const struct options *opt = sub->opt;
	struct submission_input in = {.ignore_dots = opt->ignore_dots};
	struct queueing q = {0};
	char *head = NULL;
	size_t head_len = 0;
	bool eof = false;
	long header_end = -1;
	int rc = EXIT_TEMPFAIL;

	q.raw = malloc(READ_CHUNK);
	q.filtered = malloc(SUBMISSION_INPUT_OUT_MAX(READ_CHUNK));
	q.wire = malloc(SMTP_DATA_OUT_MAX(READ_CHUNK));
	if (q.raw == NULL || q.filtered == NULL || q.wire == NULL) {
		fail("out of memory");
		goto out;
	}

	/* The header section, whole, in memory. */
	while (header_end < 0) {
		size_t n = 0;
		if (read_input(&in, q.raw, q.filtered, &n, &eof) == -1) {
			fail("reading the message: %s", strerror(errno));
			goto out;
		}
		if (head_len + n > HEADER_MAX) {
			fail("header section larger than %d octets",
			     HEADER_MAX);
			rc = EXIT_DATAERR;
			goto out;
		}
		char *grown = realloc(head, head_len + n + 1);
		if (grown == NULL) {
			fail("out of memory");
			goto out;
		}
		head = grown;
		memcpy(head + head_len, q.filtered, n);
		head_len += n;
		header_end =
		    submission_header_end(head, head_len, eof || in.done);
	}

	time_t now = time(NULL);
	char date[MAILTIME_BUF], message_id[256];
	uint64_t random = 0;
	if (getrandom(&random, sizeof random, 0) != sizeof random)
		random = (uint64_t)getpid() << 32 ^ (uint64_t)now;
	mailtime_format(now, date, sizeof date);
	snprintf(message_id, sizeof message_id, "<%lld.%016" PRIx64 "@%s>",
		 (long long)now, random, cfg->hostname);
	struct submission_headers rewrite = {
	    .extract_recipients = opt->extract,
	    .from = sub->sender[0] ? sub->sender : sub->default_from,
	    .from_name = opt->from_name,
	    .date = date,
	    .message_id = message_id,
	};
	struct submission_addresses addresses = {0};
	size_t headers_len = 0;
	char *headers = submission_rewrite_headers(
	    head, (size_t)header_end, &rewrite, &addresses, &headers_len);
	for (int i = 0; i < opt->rcpt_argc && headers != NULL; i++)
		if (submission_parse_addresses(opt->rcpt_args[i],
					       strlen(opt->rcpt_args[i]),
					       &addresses) == -1) {
			free(headers);
			headers = NULL;
		}
	if (headers == NULL) {
		submission_addresses_clear(&addresses);
		fail("out of memory");
		goto out;
	}
	rc = add_recipients(sub, &addresses);
	submission_addresses_clear(&addresses);
	if (rc == 0 && sub->rcpt_count == 0) {
		fail("no recipients");
		rc = EXIT_USAGE;
	}
	if (rc != 0) {
		free(headers);
		goto out;
	}
	rc = EXIT_TEMPFAIL;

	/* Into the spool, as facteurd's own sessions write it. */
	char err[512];
	if (become_spool_owner(cfg) == -1) {
		free(headers);
		fail("cannot set up the spool");
		goto out;
	}
	/* No loop and no iothread: one message, committed synchronously. */
	q.spool = spool_open_drop(NULL, NULL, cfg->spool_dir, err, sizeof err);
	if (q.spool == NULL || (q.inc = spool_incoming_new(q.spool)) == NULL) {
		fail("cannot queue the message: %s",
		     q.spool ? strerror(errno) : err);
		free(headers);
		goto out;
	}
	memcpy(id, q.inc->id, SPOOL_ID_LEN + 1);
	char *received = NULL;
	if (asprintf(&received,
		     "Received: by %s (facteur) with local id %s;\r\n\t%s\r\n",
		     cfg->hostname, id, date) == -1) {
		free(headers);
		fail("out of memory");
		goto out;
	}
	struct writer w = {
	    .inc = q.inc, .out = q.wire, .eight_bit = &sub->eight_bit};
	if (sub->dkim != NULL && sub->dkim->count > 0)
		w.dkim = dkim_intake_new(); /* NULL: unsigned, said below */
	store(&w, received, strlen(received));
	free(received);
	smtp_data_init(&w.data, SMTP_DATA_RAW);
	write_message(&w, headers, headers_len);
	free(headers);
	write_message(&w, head + header_end, head_len - (size_t)header_end);
	while (!eof && !in.done && w.data.size <= cfg->max_message_size &&
	       q.inc->error == 0) {
		size_t n = 0;
		if (read_input(&in, q.raw, q.filtered, &n, &eof) == -1) {
			fail("reading the message: %s", strerror(errno));
			goto out;
		}
		write_message(&w, q.filtered, n);
	}
	size_t tail = smtp_data_finish(&w.data, q.wire);
	store(&w, q.wire, tail);
	if (w.data.size > cfg->max_message_size ||
	    w.data.received_count > SMTP_RECEIVED_MAX) {
		dkim_intake_free(w.dkim);
		w.dkim = NULL;
	}
	if (w.data.size > cfg->max_message_size) {
		fail("message larger than max_message_size (%" PRIu64
		     " octets)",
		     cfg->max_message_size);
		rc = EXIT_DATAERR;
		goto out;
	}
	if (w.data.received_count > SMTP_RECEIVED_MAX) {
		fail("too many Received: headers (a mail loop?)");
		rc = EXIT_DATAERR;
		goto out;
	}

	struct spool_envelope env = {
	    .arrival = now,
	    .sender = sub->sender,
	    .client_addr = (char *)"local",
	    .helo = cfg->hostname,
	    .protocol = (char *)"local",
	    .size = w.data.size,
	    .body = sub->eight_bit ? SMTP_BODY_8BITMIME : SMTP_BODY_UNSPECIFIED,
	    .smtputf8 = sub->smtputf8,
	    .ret = opt->ret,
	    .envid = (char *)opt->envid,
	    .rcpts = sub->rcpts,
	    .rcpt_count = sub->rcpt_count,
	};
	memcpy(env.id, id, sizeof env.id);
	for (size_t i = 0; i < sub->rcpt_count; i++)
		sub->rcpts[i].updated = now;
	if (sub->dkim != NULL && sub->dkim->count > 0)
		sign(sub, &q, w.dkim);
	struct spool_incoming *inc = q.inc;
	q.inc = NULL; /* the spool owns it now */
	if (spool_drop_commit(q.spool, inc, &env) == -1) {
		fail("cannot queue the message: %s", strerror(errno));
		goto out;
	}
	/* A daemon starting right now removes a message file that has no
	 * envelope yet; make sure ours survived. */
	char path[4096];
	struct stat st;
	spool_msg_path(q.spool, id, path, sizeof path);
	if (path[0] == '\0' || stat(path, &st) == -1) {
		spool_remove(q.spool, id);
		fail("the message was removed from the spool while it was "
		     "written (a daemon was starting?)");
		goto out;
	}
	rc = 0;
out:
	free(head);
	queueing_end(&q);
	return rc;
}

/* Tell a running daemon; one that is not running finds it at start. */
static void announce(const struct config *cfg, const char *id)
{
	char request[64];
	char err[512] = "";

	snprintf(request, sizeof request, "pickup %s", id);
	if (control_client_call(cfg->spool_dir, request, NULL, NULL, err,
				sizeof err) == CONTROL_CALL_ERROR)
		fail("warning: %s is queued, but facteurd did not take it "
		     "(%s); it will at its next start",
		     id, err);
}

static void submission_clear(struct submission *sub)
{
	for (size_t i = 0; i < sub->rcpt_count; i++) {
		free(sub->rcpts[i].address);
		free(sub->rcpts[i].original);
		free(sub->rcpts[i].sender);
	}
	free(sub->rcpts);
	free(sub->sender);
	free(sub->default_from);
}

int main(int argc, char **argv)
{
	struct options opt = {0};
	int rc = parse_options(argc, argv, &opt);
	if (rc != 0)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);

	struct config *cfg = load_config(&opt);
	if (cfg == NULL)
		return CONFIG_EX_CONFIG;
	if (opt.mode != MODE_SEND) {
		rc = run_control(cfg, opt.mode);
		config_free(cfg);
		return rc;
	}

	/* The files named by the configuration are read as the caller,
	 * before any change of user, like facteurd reads them as root. */
	struct config_errors errors = {0};
	struct auth_users *users = NULL;
	struct policy *policy = NULL;
	if (cfg->users_file != NULL)
		users = auth_users_load(cfg->users_file, &errors);
	if (cfg->users_file == NULL || users != NULL)
		policy = policy_new(cfg, users, &errors);
	if (policy == NULL) {
		for (size_t i = 0; i < errors.count; i++)
			fail("%s", errors.messages[i]);
		config_errors_clear(&errors);
		auth_users_free(users);
		config_free(cfg);
		return CONFIG_EX_CONFIG;
	}

	/* Keys the caller cannot read leave its mail unsigned: facteurd,
	 * which checks them at start, signs what comes over SMTP. */
	struct dkim_keys *dkim =
	    dkim_keys_load(cfg->dkim_sign, cfg->dkim_sign_count, &errors);
	for (size_t i = 0; dkim == NULL && i < errors.count; i++)
		fprintf(stderr, "facteur-sendmail: warning: %s; not signed\n",
			errors.messages[i]);
	config_errors_clear(&errors);

	struct submission sub = {
	    .cfg = cfg, .policy = policy, .opt = &opt, .dkim = dkim};
	char id[SPOOL_ID_LEN + 1] = "";
	rc = choose_sender(&sub, &opt, invoking_user());
	if (rc == 0)
		rc = submit(&sub, id);
	if (rc == 0) {
		announce(cfg, id);
		if (opt.verbose)
			fprintf(stderr, "facteur-sendmail: queued as %s\n", id);
	}
	submission_clear(&sub);
	dkim_keys_free(dkim);
	policy_free(policy);
	auth_users_free(users);
	config_free(cfg);
	return rc;
}
