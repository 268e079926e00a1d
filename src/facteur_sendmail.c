/*
 * facteur-sendmail: sendmail-compatible submission, installable as
 * /usr/sbin/sendmail (and as mailq and newaliases) for cron, PHP's
 * mail(), git send-email and the like, run by any local account.
 *
 * The message goes to the daemon over the local submission socket
 * (submit.h) as one SMTP transaction: the header section rewritten here
 * (submission), the rest streamed from standard input, and we exit 0
 * only on the daemon's 250, once the message is in its spool. -bs hands
 * standard input and output to the daemon's SMTP session as they are.
 *
 * When the daemon is not running, root and the daemon's account (who
 * may write the spool) still queue: the message goes straight into the
 * spool in the file form, as the daemon would write it, and the daemon
 * finds it when it starts. Anybody else gets exit 75 (EX_TEMPFAIL).
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
#include <sys/types.h>
#include <sys/un.h>
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
#include "facteur/submit.h"
#include "facteur/submit_client.h"
#include "facteur/text.h"

/* sysexits.h */
#define EXIT_USAGE 64
#define EXIT_DATAERR 65
#define EXIT_NOUSER 67
#define EXIT_TEMPFAIL 75
#define EXIT_NOPERM 77
/* -bp and -q, as facteurctl */
#define EXIT_UNREACHABLE 1
#define EXIT_REFUSED 2

#define READ_CHUNK (64 * 1024)
/* The header section is held in memory to be rewritten; past this the
 * input is no message we accept. */
#define HEADER_MAX (1024 * 1024)

extern char **environ;

enum mode {
	MODE_SEND,    /* -bm, the default */
	MODE_LIST,    /* -bp */
	MODE_FLUSH,   /* -q */
	MODE_SMTP,    /* -bs: SMTP on standard input and output */
	MODE_ALIASES, /* -bi, newaliases: the daemon reloads */
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
		"       facteur-sendmail -bp | -bs | -bi | -q\n"
		"       mailq, newaliases\n");
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

static const struct option_word modes[] = {{"m", MODE_SEND},
					   {"p", MODE_LIST},
					   {"s", MODE_SMTP},
					   {"i", MODE_ALIASES},
					   {NULL, 0}};
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

/* newaliases is the daemon's reload: it reads the aliases file as it
 * is, there is no database to rebuild. */
static int run_control(const struct config *cfg, enum mode mode)
{
	struct lister l = {.now = time(NULL)};
	char err[512] = "";
	const char *request = mode == MODE_LIST	   ? "queue"
			      : mode == MODE_FLUSH ? "flush"
						   : "reload";
	enum control_call_result rc = control_client_call(
	    cfg->spool_dir, request,
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
	struct spool_incoming *inc;   /* into the spool, or */
	struct submit_client *client; /* to the daemon (then the rest NULL) */
	bool failed;		      /* the daemon's socket broke */
	struct smtp_data data;
	char *out; /* SMTP_DATA_OUT_MAX(READ_CHUNK + 2) */
	bool *eight_bit;
	struct dkim_intake *dkim; /* reading for a signature, or NULL */
};

/* Octets into the spool file, and past the signer when there is one. */
static void store(struct writer *w, const char *p, size_t n)
{
	if (w->client != NULL) {
		if (!w->failed && submit_client_write(w->client, p, n) == -1)
			w->failed = true;
		return;
	}
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

/* The message's head: its header section as read (with whatever came
 * after it in the same reads) and as rewritten, and the recipients it
 * names with the command line's. */
struct head {
	struct submission_input in;
	bool eof;
	char *text; /* as read, lone-dot rule applied */
	size_t len;
	long end;      /* where the header section ends in text */
	char *headers; /* rewritten */
	size_t headers_len;
	struct submission_addresses addresses;
	time_t now;
	char date[MAILTIME_BUF];
};

static void head_clear(struct head *h)
{
	free(h->text);
	free(h->headers);
	submission_addresses_clear(&h->addresses);
}

/* Read the header section, whole, and rewrite it. 0 or an exit status. */
static int read_head(struct submission *sub, struct queueing *q, struct head *h)
{
	const struct options *opt = sub->opt;
	h->in.ignore_dots = opt->ignore_dots;
	h->end = -1;
	while (h->end < 0) {
		size_t n = 0;
		if (read_input(&h->in, q->raw, q->filtered, &n, &h->eof) ==
		    -1) {
			fail("reading the message: %s", strerror(errno));
			return EXIT_TEMPFAIL;
		}
		if (h->len + n > HEADER_MAX) {
			fail("header section larger than %d octets",
			     HEADER_MAX);
			return EXIT_DATAERR;
		}
		char *grown = realloc(h->text, h->len + n + 1);
		if (grown == NULL) {
			fail("out of memory");
			return EXIT_TEMPFAIL;
		}
		h->text = grown;
		memcpy(h->text + h->len, q->filtered, n);
		h->len += n;
		h->end = submission_header_end(h->text, h->len,
					       h->eof || h->in.done);
	}

	h->now = time(NULL);
	char message_id[256];
	uint64_t random = 0;
	if (getrandom(&random, sizeof random, 0) != sizeof random)
		random = (uint64_t)getpid() << 32 ^ (uint64_t)h->now;
	mailtime_format(h->now, h->date, sizeof h->date);
	snprintf(message_id, sizeof message_id, "<%lld.%016" PRIx64 "@%s>",
		 (long long)h->now, random, sub->cfg->hostname);
	struct submission_headers rewrite = {
	    .extract_recipients = opt->extract,
	    .from = sub->sender[0] ? sub->sender : sub->default_from,
	    .from_name = opt->from_name,
	    .date = h->date,
	    .message_id = message_id,
	};
	h->headers = submission_rewrite_headers(
	    h->text, (size_t)h->end, &rewrite, &h->addresses, &h->headers_len);
	for (int i = 0; i < opt->rcpt_argc && h->headers != NULL; i++)
		if (submission_parse_addresses(opt->rcpt_args[i],
					       strlen(opt->rcpt_args[i]),
					       &h->addresses) == -1) {
			free(h->headers);
			h->headers = NULL;
		}
	if (h->headers == NULL) {
		fail("out of memory");
		return EXIT_TEMPFAIL;
	}
	if (h->addresses.count == 0) {
		fail("no recipients");
		return EXIT_USAGE;
	}
	return 0;
}

/* The message, from its rewritten header section to the end of
 * standard input, in wire form through w; reading stops early only
 * when the spool's own file refused a write. Returns -1 when the input
 * could not be read. */
static int stream_message(struct writer *w, struct queueing *q, struct head *h)
{
	smtp_data_init(&w->data, SMTP_DATA_RAW);
	write_message(w, h->headers, h->headers_len);
	write_message(w, h->text + h->end, h->len - (size_t)h->end);
	while (!h->eof && !h->in.done && !w->failed &&
	       (w->inc == NULL || w->inc->error == 0)) {
		size_t n = 0;
		if (read_input(&h->in, q->raw, q->filtered, &n, &h->eof) ==
		    -1) {
			fail("reading the message: %s", strerror(errno));
			return -1;
		}
		write_message(w, q->filtered, n);
	}
	size_t tail = smtp_data_finish(&w->data, q->wire);
	store(w, q->wire, tail);
	return 0;
}

/*
 * Without a daemon: settle the recipients through the policy, stream
 * the message into the spool and commit it. Returns 0 with the queue id
 * in `id`, or an exit status.
 */
static int queue_in_spool(struct submission *sub, struct queueing *q,
			  struct head *h, char *id)
{
	const struct config *cfg = sub->cfg;
	const struct options *opt = sub->opt;
	int rc = add_recipients(sub, &h->addresses);
	if (rc == 0 && sub->rcpt_count == 0) {
		fail("no recipients");
		rc = EXIT_USAGE;
	}
	if (rc != 0)
		return rc;

	/* Into the spool, as facteurd's own sessions write it. */
	char err[512];
	if (become_spool_owner(cfg) == -1) {
		fail("cannot set up the spool");
		return EXIT_TEMPFAIL;
	}
	/* No loop and no iothread: one message, committed synchronously. */
	q->spool = spool_open_drop(NULL, NULL, cfg->spool_dir, err, sizeof err);
	if (q->spool == NULL ||
	    (q->inc = spool_incoming_new(q->spool)) == NULL) {
		fail("cannot queue the message: %s",
		     q->spool ? strerror(errno) : err);
		return EXIT_TEMPFAIL;
	}
	memcpy(id, q->inc->id, SPOOL_ID_LEN + 1);
	char *received = NULL;
	if (asprintf(&received,
		     "Received: by %s (facteur) with local id %s;\r\n\t%s\r\n",
		     cfg->hostname, id, h->date) == -1) {
		fail("out of memory");
		return EXIT_TEMPFAIL;
	}
	struct writer w = {
	    .inc = q->inc, .out = q->wire, .eight_bit = &sub->eight_bit};
	if (sub->dkim != NULL && sub->dkim->count > 0)
		w.dkim = dkim_intake_new(); /* NULL: unsigned, said below */
	store(&w, received, strlen(received));
	free(received);
	if (stream_message(&w, q, h) == -1) {
		dkim_intake_free(w.dkim);
		return EXIT_TEMPFAIL;
	}
	if (w.data.size > cfg->max_message_size ||
	    w.data.received_count > SMTP_RECEIVED_MAX) {
		dkim_intake_free(w.dkim);
		w.dkim = NULL;
	}
	if (w.data.size > cfg->max_message_size) {
		fail("message larger than max_message_size (%" PRIu64
		     " octets)",
		     cfg->max_message_size);
		return EXIT_DATAERR;
	}
	if (w.data.received_count > SMTP_RECEIVED_MAX) {
		fail("too many Received: headers (a mail loop?)");
		return EXIT_DATAERR;
	}

	struct spool_envelope env = {
	    .arrival = h->now,
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
		sub->rcpts[i].updated = h->now;
	if (sub->dkim != NULL && sub->dkim->count > 0)
		sign(sub, q, w.dkim);
	struct spool_incoming *inc = q->inc;
	q->inc = NULL; /* the spool owns it now */
	if (spool_drop_commit(q->spool, inc, &env) == -1) {
		fail("cannot queue the message: %s", strerror(errno));
		return EXIT_TEMPFAIL;
	}
	/* A daemon starting right now removes a message file that has no
	 * envelope yet; make sure ours survived. */
	char path[4096];
	struct stat st;
	spool_msg_path(q->spool, id, path, sizeof path);
	if (path[0] == '\0' || stat(path, &st) == -1) {
		spool_remove(q->spool, id);
		fail("the message was removed from the spool while it was "
		     "written (a daemon was starting?)");
		return EXIT_TEMPFAIL;
	}
	return 0;
}

/* A refusal or a broken exchange as an exit status: 4xx and a broken
 * socket are temporary (75), a 5xx is `permanent`. */
static int refused(const struct submit_client *c, int code, int permanent,
		   const char *what)
{
	if (code < 0) {
		fail("%s: %s; the message was not sent", what, c->err);
		return EXIT_TEMPFAIL;
	}
	fail("%s: %d %s%s%s", what, code, c->reply.esc,
	     c->reply.esc[0] ? " " : "", c->reply.text);
	return code >= 500 ? permanent : EXIT_TEMPFAIL;
}

/* MAIL FROM with the options that become its parameters. */
static int send_mail_from(struct submission *sub, struct submit_client *c)
{
	const struct options *opt = sub->opt;
	char envid[SMTP_ENVID_MAX * 3 + 1] = "";
	if (opt->envid != NULL &&
	    text_xtext_encode(opt->envid, strlen(opt->envid), envid,
			      sizeof envid) < 0)
		envid[0] = '\0';
	char *line = NULL;
	if (asprintf(&line, "MAIL FROM:<%s>%s%s%s%s%s", sub->sender,
		     sub->smtputf8 ? " SMTPUTF8" : "",
		     opt->ret == SMTP_RET_FULL	 ? " RET=FULL"
		     : opt->ret == SMTP_RET_HDRS ? " RET=HDRS"
						 : "",
		     envid[0] ? " ENVID=" : "", envid, "") == -1) {
		fail("out of memory");
		return EXIT_TEMPFAIL;
	}
	int code = submit_client_command(c, line, false);
	free(line);
	return code == 250 ? 0 : refused(c, code, EXIT_DATAERR, "sender");
}

/* " NOTIFY=SUCCESS,DELAY" from -N's bits, or "". */
static void notify_param(unsigned bits, char *buf, size_t len)
{
	static const struct option_word keywords[] = {
	    {"NEVER", SMTP_NOTIFY_NEVER},
	    {"SUCCESS", SMTP_NOTIFY_SUCCESS},
	    {"FAILURE", SMTP_NOTIFY_FAILURE},
	    {"DELAY", SMTP_NOTIFY_DELAY},
	    {NULL, 0}};
	const char *sep = " NOTIFY=";
	size_t used = 0;
	buf[0] = '\0';
	for (const struct option_word *k = keywords; k->word != NULL; k++) {
		if ((bits & (unsigned)k->value) == 0 || used >= len)
			continue;
		int n = snprintf(buf + used, len - used, "%s%s", sep, k->word);
		if (n > 0)
			used += (size_t)n;
		sep = ",";
	}
}

/* Every recipient, qualified and checked here, then by the daemon's
 * policy (a refused one ends the submission, as a direct write does). */
static int send_recipients(struct submission *sub, struct submit_client *c,
			   const struct submission_addresses *list)
{
	char notify[64];
	notify_param(sub->opt->notify, notify, sizeof notify);
	for (size_t i = 0; i < list->count; i++) {
		char *address = checked_address(
		    list->items[i], qualify_domain(sub->cfg), "recipient");
		if (address == NULL)
			return EXIT_NOUSER;
		char *line = NULL;
		if (asprintf(&line, "RCPT TO:<%s>%s", address, notify) == -1) {
			free(address);
			fail("out of memory");
			return EXIT_TEMPFAIL;
		}
		int code = submit_client_command(c, line, false);
		free(line);
		int rc = code == 250 || code == 251
			     ? 0
			     : refused(c, code, EXIT_NOUSER, address);
		free(address);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/*
 * Through the daemon: one SMTP transaction on the submission socket,
 * the message streamed as it is read. Returns 0 with the queue id in
 * `id` once the daemon said 250, or an exit status.
 */
static int queue_through_daemon(struct submission *sub, struct queueing *q,
				struct head *h, struct submit_client *c,
				char *id)
{
	for (size_t i = 0; i < h->addresses.count; i++)
		sub->smtputf8 |= has_eight_bit(h->addresses.items[i]);
	int code = submit_client_command(c, NULL, false);
	if (code != 220)
		return refused(c, code, EXIT_TEMPFAIL, "facteurd's greeting");
	char ehlo[300];
	snprintf(ehlo, sizeof ehlo, "EHLO %s", sub->cfg->hostname);
	if ((code = submit_client_command(c, ehlo, true)) != 250)
		return refused(c, code, EXIT_TEMPFAIL, "EHLO");
	int rc = send_mail_from(sub, c);
	if (rc == 0)
		rc = send_recipients(sub, c, &h->addresses);
	if (rc != 0)
		return rc;
	if ((code = submit_client_command(c, "DATA", false)) != 354)
		return refused(c, code, EXIT_DATAERR, "DATA");
	struct writer w = {
	    .client = c, .out = q->wire, .eight_bit = &sub->eight_bit};
	if (stream_message(&w, q, h) == -1)
		return EXIT_TEMPFAIL; /* we close without the end: discarded */
	if (w.failed)
		return refused(c, -1, EXIT_TEMPFAIL, "sending the message");
	code = submit_client_command(c, ".", false);
	if (code != 250)
		return refused(c, code, EXIT_DATAERR, "message refused");
	const char *queued = strstr(c->reply.text, "queued as ");
	if (queued != NULL)
		snprintf(id, SPOOL_ID_LEN + 1, "%s", queued + 10);
	(void)submit_client_command(c, "QUIT", false);
	return 0;
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

/* May this caller write the spool itself: root, or the account that
 * owns it (the daemon's)? Only they get the direct write when the
 * daemon is down, and the control socket's commands. */
static bool may_write_spool(const struct config *cfg)
{
	struct stat st;
	if (geteuid() == 0)
		return true;
	return stat(cfg->spool_dir, &st) == 0 && st.st_uid == geteuid();
}

/* The daemon's answers can wait for a flush: its own timeout, and a
 * minute more, bounds every wait. */
static enum submit_connect_result connect_daemon(const struct config *cfg,
						 struct submit_client *c)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int rc = submit_socket_path(cfg, path, sizeof path);
	if (rc <= 0) {
		memset(c, 0, sizeof *c);
		c->fd = -1;
		snprintf(c->err, sizeof c->err, "%s",
			 rc == 0 ? "submit_socket is none"
				 : "submit_socket: path too long for a socket");
		return rc == 0 ? SUBMIT_NOT_RUNNING : SUBMIT_CONNECT_FAILED;
	}
	return submit_client_connect(c, path, cfg->smtp_timeout + 60);
}

/* The message: its head read and rewritten, then through the daemon
 * when `c` is connected, else into the spool. 0 with the queue id, or
 * an exit status. */
static int submit(struct submission *sub, struct submit_client *c, char *id)
{
	struct queueing q = {0};
	struct head h = {0};
	int rc = EXIT_TEMPFAIL;

	q.raw = malloc(READ_CHUNK);
	q.filtered = malloc(SUBMISSION_INPUT_OUT_MAX(READ_CHUNK));
	q.wire = malloc(SMTP_DATA_OUT_MAX(READ_CHUNK));
	if (q.raw == NULL || q.filtered == NULL || q.wire == NULL)
		fail("out of memory");
	else if ((rc = read_head(sub, &q, &h)) == 0)
		rc = c != NULL ? queue_through_daemon(sub, &q, &h, c, id)
			       : queue_in_spool(sub, &q, &h, id);
	head_clear(&h);
	queueing_end(&q);
	return rc;
}

/* Without a daemon, as root or the daemon's account: the policy read
 * here (users, aliases), the keys for DKIM when readable, the message
 * written into the spool. */
static int submit_direct(struct config *cfg, const struct options *opt)
{
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
	    .cfg = cfg, .policy = policy, .opt = opt, .dkim = dkim};
	char id[SPOOL_ID_LEN + 1] = "";
	int rc = choose_sender(&sub, opt, invoking_user());
	if (rc == 0)
		rc = submit(&sub, NULL, id);
	if (rc == 0) {
		announce(cfg, id);
		if (opt->verbose)
			fprintf(stderr, "facteur-sendmail: queued as %s\n", id);
	}
	submission_clear(&sub);
	dkim_keys_free(dkim);
	policy_free(policy);
	auth_users_free(users);
	return rc;
}

/* The usual way: through the daemon; without one, the direct write for
 * those who may, exit 75 for the others. */
static int send_message(struct config *cfg, const struct options *opt)
{
	struct submit_client c;
	enum submit_connect_result connected = connect_daemon(cfg, &c);
	if (connected != SUBMIT_CONNECTED) {
		if (may_write_spool(cfg))
			return submit_direct(cfg, opt);
		fail("cannot reach facteurd (%s); the message was not sent, "
		     "try again later",
		     c.err);
		return EXIT_TEMPFAIL;
	}
	struct submission sub = {.cfg = cfg, .opt = opt};
	char id[SPOOL_ID_LEN + 1] = "";
	int rc = choose_sender(&sub, opt, invoking_user());
	if (rc == 0)
		rc = submit(&sub, &c, id);
	if (rc == 0 && opt->verbose)
		fprintf(stderr, "facteur-sendmail: queued as %s\n", id);
	submit_client_close(&c);
	submission_clear(&sub);
	return rc;
}

/* -bs: the daemon's SMTP session on standard input and output. */
static int speak_smtp(const struct config *cfg)
{
	struct submit_client c;
	if (connect_daemon(cfg, &c) != SUBMIT_CONNECTED) {
		fail("cannot reach facteurd (%s); try again later", c.err);
		return EXIT_TEMPFAIL;
	}
	int rc = submit_client_relay(&c, STDIN_FILENO, STDOUT_FILENO);
	if (rc == -1)
		fail("%s", c.err);
	submit_client_close(&c);
	return rc == -1 ? EXIT_TEMPFAIL : 0;
}

/* mailq, newaliases and -q act on the daemon's control socket, which is
 * root's and the daemon account's only. */
static int run_privileged(const struct config *cfg, enum mode mode)
{
	if (!may_write_spool(cfg)) {
		fail("%s is for root and the account facteurd runs as "
		     "(the queue and its control are theirs)",
		     mode == MODE_ALIASES ? "newaliases"
		     : mode == MODE_LIST  ? "mailq"
					  : "-q");
		return EXIT_NOPERM;
	}
	return run_control(cfg, mode);
}

/* Called as mailq or newaliases (a link's name), the mode it means. */
static enum mode mode_of_name(const char *argv0)
{
	const char *slash = strrchr(argv0, '/');
	const char *name = slash != NULL ? slash + 1 : argv0;
	if (strcmp(name, "mailq") == 0)
		return MODE_LIST;
	if (strcmp(name, "newaliases") == 0)
		return MODE_ALIASES;
	return MODE_SEND;
}

int main(int argc, char **argv)
{
	struct options opt = {.mode = mode_of_name(argc > 0 ? argv[0] : "")};
	int rc = parse_options(argc, argv, &opt);
	if (rc != 0)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);

	struct config *cfg = load_config(&opt);
	if (cfg == NULL)
		return CONFIG_EX_CONFIG;
	switch (opt.mode) {
	case MODE_SEND:
		rc = send_message(cfg, &opt);
		break;
	case MODE_SMTP:
		rc = speak_smtp(cfg);
		break;
	case MODE_LIST:
	case MODE_FLUSH:
	case MODE_ALIASES:
		rc = run_privileged(cfg, opt.mode);
		break;
	}
	config_free(cfg);
	return rc;
}
