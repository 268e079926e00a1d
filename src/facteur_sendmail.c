/*
 * facteur-sendmail: sendmail-compatible submission into the spool.
 * It arrives with the control socket (issue "Operations"); until then
 * this program says so and exits 2.
 */
#include <stdio.h>

int main(void)
{
	fprintf(stderr, "facteur-sendmail: not implemented yet\n");
	return 2;
}
