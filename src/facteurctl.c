/*
 * facteurctl: administration of facteur (SPEC.md §2). `passwd` makes a
 * password hash for the users file; every other command is one request
 * on the running daemon's control socket (docs/operations.md), whose
 * records it prints in human form.
 *
 * Exit status: 0 done; 1 the daemon cannot be reached; 2 the daemon
 * refused (no such message, no message matches, reload refused...); 64
 * usage; 78 the configuration cannot be read.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "facteur/auth.h"
#include "facteur/config.h"
#include "facteur/control_client.h"
#include "facteur/control_proto.h"
#include "facteur/dkim_keygen.h"
#include "facteur/text.h"

#define EXIT_UNREACHABLE 1
#define EXIT_REFUSED 2
#define EXIT_USAGE 64 /* EX_USAGE */

extern char **environ;

/* On stdout when asked for (-h, --help), on stderr after a usage error. */
static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: facteurctl [-c FILE] [-m METHOD] COMMAND [ARG]\n"
	    "       facteurctl -h | --help | -V\n"
	    "commands (SEL: ID, or --domain D and/or --sender S):\n"
	    "  queue [--json] [--domain D] [--sender S]\n"
	    "        [--state pending|deferred|held] [--older-than DURATION]\n"
	    "        [--limit N]   list the queued messages\n"
	    "  summary [--json]    the queue by destination domain\n"
	    "  show ID         envelope, recipients and headers of one\n"
	    "  flush [ID]      retry deferred deliveries now\n"
	    "  delete SEL|all [--dry-run] [--yes]\n"
	    "                  remove messages without a bounce (all: --yes)\n"
	    "  bounce SEL [--dry-run]\n"
	    "                  return messages to their senders now\n"
	    "  hold SEL        neither try nor expire until released\n"
	    "  release SEL     held no more, and due at once\n"
	    "  suspend DOMAIN [DURATION]   no attempt to that domain\n"
	    "  resume DOMAIN   end a suspension\n"
	    "  tlsrpt send     the TLS reports (RFC 8460) now, not at "
	    "midnight\n"
	    "  stats           the counters of /metrics\n"
	    "  reload          re-read the configuration (as SIGHUP)\n"
	    "  passwd          hash a password read on standard input\n"
	    "                  (-m sha512, the default, or -m preferred:\n"
	    "                  libxcrypt's choice, yescrypt on Debian)\n"
	    "  dkim-keygen DOMAIN SELECTOR --out FILE\n"
	    "                  [--type rsa|ed25519] [--bits N]: a DKIM\n"
	    "                  key (mode 0600) and its DNS record\n");
}

/* A line of standard input without its newline (nor a CR before it);
 * NULL at end of input. malloc'd: the caller wipes and frees it. */
static char *read_password_line(size_t *cap)
{
	char *line = NULL;
	ssize_t n;

	*cap = 0;
	n = getline(&line, cap, stdin);
	if (n < 0) {
		free(line);
		return NULL;
	}
	if (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	if (n > 0 && line[n - 1] == '\r')
		line[--n] = '\0';
	return line;
}

static void wipe(char *line, size_t cap)
{
	if (line != NULL)
		explicit_bzero(line, cap);
	free(line);
}

/* The terminal's settings while echo is off, for the signal handler that
 * puts them back if the user interrupts the prompt. */
static struct termios saved_termios;
static volatile sig_atomic_t echo_off;

static void restore_echo(void)
{
	if (echo_off && tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_termios) == 0)
		echo_off = 0;
}

static void on_prompt_signal(int sig)
{
	restore_echo();
	(void)signal(sig, SIG_DFL); /* async-signal-safe, and dying anyway */
	(void)raise(sig);
}

/* The signals that would leave the terminal without echo. */
static const int prompt_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};

static int set_prompt_signals(void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = handler;
	if (sigemptyset(&sa.sa_mask) < 0)
		return -1;
	for (size_t i = 0; i < sizeof prompt_signals / sizeof *prompt_signals;
	     i++)
		if (sigaction(prompt_signals[i], &sa, NULL) < 0)
			return -1;
	return 0;
}

/* Ask on the terminal, echo off, twice (as passwd(1) does): a typing
 * mistake nobody saw would lock the account out. NULL after printing
 * why not. */
static char *ask_password_on_terminal(size_t *cap)
{
	struct termios quiet;
	char *first = NULL;
	char *second = NULL;
	size_t first_cap = 0;
	size_t second_cap = 0;

	if (tcgetattr(STDIN_FILENO, &saved_termios) < 0) {
		fprintf(stderr, "facteurctl: passwd: terminal: %s\n",
			strerror(errno));
		return NULL;
	}
	quiet = saved_termios;
	quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHOE | ECHOK);
	quiet.c_lflag |= ECHONL; /* the Enter key still moves on a line */
	echo_off = 1; /* before the change: a signal may come at once */
	if (set_prompt_signals(on_prompt_signal) < 0 ||
	    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) < 0) {
		fprintf(stderr, "facteurctl: passwd: terminal: %s\n",
			strerror(errno));
		restore_echo();
		(void)set_prompt_signals(SIG_DFL);
		return NULL;
	}
	fputs("Password: ", stderr);
	fflush(stderr);
	first = read_password_line(&first_cap);
	if (first != NULL) {
		fputs("Again: ", stderr);
		fflush(stderr);
		second = read_password_line(&second_cap);
	}
	restore_echo();
	/* the defaults are back for the rest of a short life: a failure
	 * here changes nothing that matters */
	(void)set_prompt_signals(SIG_DFL);
	if (first == NULL || second == NULL) {
		fprintf(stderr, "facteurctl: passwd: no password\n");
		wipe(first, first_cap);
		return NULL;
	}
	if (strcmp(first, second) != 0) {
		fprintf(stderr,
			"facteurctl: passwd: the passwords do not match\n");
		wipe(first, first_cap);
		wipe(second, second_cap);
		return NULL;
	}
	wipe(second, second_cap);
	*cap = first_cap;
	return first;
}

/* Print the crypt(3) hash of a password: asked twice with echo off on a
 * terminal, else one line of standard input (its newline is not part of
 * it), as scripts pipe it. */
static int cmd_passwd(enum auth_hash_method method)
{
	size_t cap = 0;
	char *line;

	if (isatty(STDIN_FILENO)) {
		line = ask_password_on_terminal(&cap);
		if (line == NULL)
			return 1;
	} else {
		line = read_password_line(&cap);
		if (line == NULL) {
			fprintf(stderr, "facteurctl: passwd: no password on "
					"standard input\n");
			return 1;
		}
	}
	char *hash = auth_hash_password_with(line, method);
	wipe(line, cap);
	if (hash == NULL) {
		fprintf(stderr,
			"facteurctl: passwd: cannot hash the password\n");
		return 1;
	}
	printf("%s\n", hash);
	free(hash);
	return 0;
}

struct printer {
	const char *command;
	time_t now;
	struct control_queue_totals totals;
	bool in_headers;
	bool json;
	bool rows; /* a summary row was printed */
};

/* A summary row, after the title line the first time. */
static char *summary_line(struct printer *pr, char *line)
{
	char *text = control_proto_format_summary_line(line, pr->now, pr->json);
	if (text != NULL && !pr->json && !pr->rows)
		printf("%s\n", CONTROL_SUMMARY_TITLE);
	pr->rows = pr->rows || text != NULL;
	return text;
}

static int print_record(char *line, void *arg)
{
	struct printer *pr = arg;
	char *text = NULL;

	if (strncmp(line, "json ", 5) == 0) {
		printf("%s\n", line + 5); /* JSON made by the daemon */
		return 0;
	}
	if (strcmp(pr->command, "queue") == 0)
		text =
		    control_proto_format_queue_line(line, pr->now, &pr->totals);
	else if (strcmp(pr->command, "summary") == 0)
		text = summary_line(pr, line);
	else if (strcmp(pr->command, "show") == 0)
		text = control_proto_format_show_line(line, pr->now,
						      &pr->in_headers);
	if (text != NULL) {
		printf("%s\n", text);
		free(text);
	} else {
		/* stats, delete's count, or a record this version does not
		 * know: shown as sent, escaped. */
		text = control_proto_shown(line);
		printf("%s\n", text != NULL ? text : "");
		free(text);
	}
	return 0;
}

/*
 * The request line from the command's words: the values of --domain and
 * --sender written as record values ("" as "-"), everything else as
 * typed. Checked here with the daemon's own parser, so that a usage
 * error is one before anything is sent. 0, or -1 after saying why.
 */
static int build_request(char **args, int nargs, char *request, size_t size,
			 struct control_request *req)
{
	struct text t = {0};
	const char *error = NULL;

	for (int i = 0; i < nargs; i++) {
		if (i > 0)
			text_add(&t, " ", 1);
		bool value = i > 0 && (strcmp(args[i - 1], "--domain") == 0 ||
				       strcmp(args[i - 1], "--sender") == 0);
		if (value)
			text_value(&t, args[i]);
		else
			text_str(&t, args[i]);
		if (strpbrk(args[i], "\r\n") != NULL ||
		    (!value &&
		     (args[i][0] == '\0' || strpbrk(args[i], " \t") != NULL)))
			t.failed = true;
	}
	size_t len = 0;
	char *line = text_finish(&t, &len);
	if (line == NULL || len >= size) {
		free(line);
		fprintf(stderr, "facteurctl: bad argument\n");
		return -1;
	}
	memcpy(request, line, len + 1);
	free(line);
	if (control_proto_parse_request(request, len, req, &error) == 0 ||
	    strcmp(error, "no such message") == 0)
		return req->command == CONTROL_PICKUP ? -1 : 0;
	if (strcmp(error, "unknown command") == 0)
		fprintf(stderr, "facteurctl: %s: unknown command\n", args[0]);
	else
		fprintf(stderr, "facteurctl: %s: %s\n", args[0], error);
	return -1;
}

static int run_command(const char *config_path, const char *command,
		       const char *request, bool json, bool selecting)
{
	struct config_errors errors = {0};

	struct config *cfg = config_load(config_path, environ, &errors);
	if (cfg == NULL) {
		for (size_t i = 0; i < errors.count; i++)
			fprintf(stderr, "facteurctl: %s\n", errors.messages[i]);
		if (errors.count == 0)
			fprintf(stderr, "facteurctl: configuration error\n");
		config_errors_clear(&errors);
		return CONFIG_EX_CONFIG;
	}

	struct printer pr = {
	    .command = command, .now = time(NULL), .json = json};
	char err[512] = "";
	enum control_call_result rc = control_client_call(
	    cfg->spool_dir, request, print_record, &pr, err, sizeof err);
	config_free(cfg);
	switch (rc) {
	case CONTROL_CALL_OK:
		if (json)
			return 0;
		if (strcmp(command, "queue") == 0 && selecting &&
		    pr.totals.messages == 0) {
			printf("No message matches\n");
		} else if (strcmp(command, "queue") == 0) {
			char *summary =
			    control_proto_format_queue_summary(&pr.totals);
			if (summary != NULL)
				printf("%s\n", summary);
			free(summary);
		} else if (strcmp(command, "summary") == 0 && !pr.rows) {
			printf("Mail queue is empty\n");
		}
		return 0;
	case CONTROL_CALL_ERROR:
		fprintf(stderr, "facteurctl: %s: %s\n", command, err);
		return EXIT_REFUSED;
	case CONTROL_CALL_UNREACHABLE:
		fprintf(stderr, "facteurctl: %s\n", err);
		return EXIT_UNREACHABLE;
	case CONTROL_CALL_BROKEN:
		break;
	}
	fprintf(stderr, "facteurctl: %s: %s\n", command, err);
	return EXIT_UNREACHABLE;
}

int main(int argc, char **argv)
{
	static const struct option long_options[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"method", required_argument, NULL, 'm'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	const char *config_path = NULL;
	const char *method_name = NULL;
	enum auth_hash_method method = AUTH_HASH_SHA512;
	int opt;

	/* "+": stop at the command, whose own options (queue --json) are
	 * not ours; but passwd's -m may come after it, so a second round
	 * reads those. */
	int passwd_at = 0;
	for (;;) {
		while ((opt = getopt_long(argc, argv, "+c:m:Vh", long_options,
					  NULL)) != -1) {
			switch (opt) {
			case 'c':
				config_path = optarg;
				break;
			case 'm':
				method_name = optarg;
				break;
			case 'V':
				printf("facteurctl %s\n", FACTEUR_VERSION);
				return 0;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return EXIT_USAGE;
			}
		}
		if (passwd_at != 0 || optind >= argc ||
		    strcmp(argv[optind], "passwd") != 0)
			break;
		passwd_at = optind++;
	}
	if (passwd_at == 0 && optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	/* Its own options (--type, --bits, --out), read by itself. */
	if (passwd_at == 0 && strcmp(argv[optind], "dkim-keygen") == 0)
		return dkim_keygen_command(argc - optind, argv + optind);
	if (method_name != NULL) {
		if (passwd_at == 0) {
			fprintf(stderr, "facteurctl: -m is for passwd\n");
			usage(stderr);
			return EXIT_USAGE;
		}
		if (strcmp(method_name, "preferred") == 0) {
			method = AUTH_HASH_PREFERRED;
		} else if (strcmp(method_name, "sha512") != 0) {
			fprintf(stderr,
				"facteurctl: passwd: unknown method \"%s\" "
				"(sha512 or preferred)\n",
				method_name);
			return EXIT_USAGE;
		}
	}
	const char *command = argv[passwd_at ? passwd_at : optind];
	int nargs = argc - optind - (passwd_at ? 0 : 1);
	if (passwd_at != 0) {
		if (nargs != 0) {
			usage(stderr);
			return EXIT_USAGE;
		}
		return cmd_passwd(method);
	}
	char request[CONTROL_LINE_MAX];
	struct control_request req;
	if (build_request(argv + optind, nargs + 1, request, sizeof request,
			  &req) == -1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const struct control_selector *sel = &req.select;
	bool selecting = sel->has_domain || sel->has_sender ||
			 sel->state != CONTROL_STATE_ANY ||
			 sel->older_than >= 0;
	fflush(stdout);
	return run_command(config_path, command, request, req.json, selecting);
}
