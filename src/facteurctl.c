/*
 * facteurctl: administration of facteur (SPEC.md §2). `passwd` makes a
 * password hash for the users file; every other command is one request
 * on the running daemon's control socket (docs/operations.md), whose
 * records it prints in human form.
 *
 * Exit status: 0 done; 1 the daemon cannot be reached; 2 the daemon
 * refused (no such message, reload refused...); 64 usage; 78 the
 * configuration cannot be read.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/auth.h"
#include "facteur/config.h"
#include "facteur/control_proto.h"

#define EXIT_UNREACHABLE 1
#define EXIT_REFUSED 2
#define EXIT_USAGE 64 /* EX_USAGE */

extern char **environ;

static void usage(void)
{
	fprintf(stderr,
		"usage: facteurctl [-c FILE] COMMAND [ARG]\n"
		"commands:\n"
		"  queue           list the queued messages\n"
		"  show ID         envelope, recipients and headers of one\n"
		"  flush [ID]      retry deferred deliveries now\n"
		"  delete ID|all   remove messages without a bounce\n"
		"  bounce ID       return a message to its sender now\n"
		"  stats           the counters of /metrics\n"
		"  reload          re-read the configuration (as SIGHUP)\n"
		"  passwd          hash a password read on standard input\n");
}

/* Read one line (the password; its newline is not part of it) and print
 * its SHA-512 crypt(3) hash. */
static int cmd_passwd(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, stdin);
	if (n < 0) {
		fprintf(stderr, "facteurctl: passwd: no password on standard "
				"input\n");
		free(line);
		return 1;
	}
	if (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	if (n > 0 && line[n - 1] == '\r')
		line[--n] = '\0';
	char *hash = auth_hash_password(line);
	explicit_bzero(line, cap);
	free(line);
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
};

static int print_record(char *line, void *arg)
{
	struct printer *pr = arg;
	char *text = NULL;

	if (strcmp(pr->command, "queue") == 0)
		text =
		    control_proto_format_queue_line(line, pr->now, &pr->totals);
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

/* Which commands take which arguments; the daemon checks them again. */
static bool arguments_fit(const char *command, int nargs)
{
	static const struct {
		const char *name;
		int min, max;
	} table[] = {
	    {"queue", 0, 0},  {"show", 1, 1},	{"flush", 0, 1},
	    {"delete", 1, 1}, {"bounce", 1, 1}, {"stats", 0, 0},
	    {"reload", 0, 0},
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
		if (strcmp(table[i].name, command) == 0)
			return nargs >= table[i].min && nargs <= table[i].max;
	return false;
}

static int run_command(const char *config_path, char **args, int nargs)
{
	const char *command = args[0];
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

	/* The request is the command line itself: words checked by the
	 * daemon, so only their length matters here. */
	char request[CONTROL_LINE_MAX];
	size_t len = 0;
	for (int i = 0; i < nargs; i++) {
		int n = snprintf(request + len, sizeof request - len, "%s%s",
				 i ? " " : "", args[i]);
		if (n < 0 || (size_t)n >= sizeof request - len ||
		    strpbrk(args[i], "\r\n") != NULL) {
			fprintf(stderr, "facteurctl: bad argument\n");
			config_free(cfg);
			return EXIT_USAGE;
		}
		len += (size_t)n;
	}

	struct printer pr = {.command = command, .now = time(NULL)};
	char err[512] = "";
	enum control_call_result rc = control_proto_call(
	    cfg->spool_dir, request, print_record, &pr, err, sizeof err);
	config_free(cfg);
	switch (rc) {
	case CONTROL_CALL_OK:
		if (strcmp(command, "queue") == 0) {
			char *summary =
			    control_proto_format_queue_summary(&pr.totals);
			if (summary != NULL)
				printf("%s\n", summary);
			free(summary);
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
	const char *config_path = NULL;
	int opt;

	while ((opt = getopt(argc, argv, "c:Vh")) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 'V':
			printf("facteurctl %s\n", FACTEUR_VERSION);
			return 0;
		default:
			usage();
			return opt == 'h' ? 0 : EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage();
		return EXIT_USAGE;
	}
	const char *command = argv[optind];
	int nargs = argc - optind - 1;
	if (strcmp(command, "passwd") == 0) {
		if (nargs != 0) {
			usage();
			return EXIT_USAGE;
		}
		return cmd_passwd();
	}
	if (!arguments_fit(command, nargs)) {
		if (arguments_fit(command, 0) || arguments_fit(command, 1))
			fprintf(stderr, "facteurctl: %s: wrong arguments\n",
				command);
		else
			fprintf(stderr, "facteurctl: %s: unknown command\n",
				command);
		usage();
		return EXIT_USAGE;
	}
	fflush(stdout);
	return run_command(config_path, argv + optind, nargs + 1);
}
