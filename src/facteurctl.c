/*
 * facteurctl: administration of a running facteurd. The commands of
 * SPEC.md §2 arrive with the control socket (issue "Operations");
 * until then this program says so and exits 2.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	(void)argv;
	if (argc > 1 && strcmp(argv[argc - 1], "-V") == 0) {
		printf("facteurctl %s\n", FACTEUR_VERSION);
		return 0;
	}
	fprintf(stderr, "facteurctl: not implemented yet\n");
	return 2;
}
