/*
 * The SRS reverse parser on arbitrary addresses, and forwarding: an
 * address that reverses forwards again to one that reverses to the same
 * original; any sender that forwards reverses back to itself (SRS0) the
 * same day.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "facteur/srs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW ((time_t)1700000000)

static struct srs *srs;

static void check_round_trip(const char *sender)
{
	char *fwd = srs_forward(srs, sender, NOW);
	if (fwd == NULL)
		return;
	char *back = NULL;
	if (srs_reverse(srs, fwd, NOW, &back) != SRS_OK)
		abort();
	if (strncmp(fwd, "SRS0=", 5) == 0 && strcmp(back, sender) != 0)
		abort();
	free(back);
	free(fwd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (srs == NULL) {
		const char *why;
		const char secrets[] = "fuzz secret\nolder secret\n";
		srs = srs_new("fwd.example", secrets, sizeof secrets - 1, &why);
		if (srs == NULL)
			abort();
	}
	char *text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	char *original = NULL;
	enum srs_result r = srs_reverse(srs, text, NOW, &original);
	if ((r == SRS_OK) != (original != NULL))
		abort();
	if (srs_result_name(r) == NULL)
		abort();
	if (original != NULL) {
		check_round_trip(original);
		free(original);
	}
	check_round_trip(text);
	free(text);
	return 0;
}
