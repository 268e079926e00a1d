/*
 * facteurctl: administration of facteur. `passwd` makes a password hash
 * for the users file; the commands that talk to a running facteurd
 * (queue, show, flush, delete, bounce, stats, reload) come with the
 * control socket.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/auth.h"

#define EXIT_USAGE 64 /* EX_USAGE */

static void usage(void)
{
	fprintf(stderr, "usage: facteurctl [-c FILE] COMMAND [ARG]\n"
	                "commands: passwd\n");
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
		fprintf(stderr, "facteurctl: passwd: cannot hash the password\n");
		return 1;
	}
	printf("%s\n", hash);
	free(hash);
	return 0;
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "c:Vh")) != -1) {
		switch (opt) {
		case 'c':
			break; /* read by the commands that need it */
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
	if (strcmp(command, "passwd") == 0)
		return cmd_passwd();
	fprintf(stderr, "facteurctl: %s: not implemented yet\n", command);
	return 2;
}
