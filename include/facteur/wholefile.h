/*
 * A whole file read into memory, bounded: the configuration, the users
 * and aliases files, the secrets named by FACTEUR_<KEY>_FILE and the
 * spool's envelope files. Each caller words its own error message from
 * the step that failed, and errno says why. And the other way: a whole
 * file replaced at once (the suspended domains, the MTA-STS cache).
 */
#ifndef FACTEUR_WHOLEFILE_H
#define FACTEUR_WHOLEFILE_H

#include <stddef.h>

enum wholefile_status {
	WHOLEFILE_OK = 0,
	WHOLEFILE_OPEN,	       /* open(2) failed; ENOENT: the file is missing */
	WHOLEFILE_STAT,	       /* fstat(2) failed */
	WHOLEFILE_NOT_REGULAR, /* with WHOLEFILE_REGULAR only */
	WHOLEFILE_TOO_LARGE,   /* more than `max` octets; errno EFBIG */
	WHOLEFILE_NOMEM,       /* errno ENOMEM */
	WHOLEFILE_READ,	       /* read(2) or close(2) failed */
};

/* Flags */
#define WHOLEFILE_REGULAR 0x1u /* refuse anything but a regular file */
#define WHOLEFILE_SECRET 0x2u  /* zero what was read before freeing it */

/*
 * Read the file at `path` to its end (not trusting its size: it may
 * grow) into a malloc'd buffer, NUL-terminated, *len octets before the
 * NUL. On failure nothing is returned and errno is kept.
 */
enum wholefile_status wholefile_read(const char *path, size_t max,
				     unsigned flags, char **text, size_t *len);
/* The same from an open descriptor, from offset 0 (pread: its file
 * offset is left alone); the descriptor stays open. */
enum wholefile_status wholefile_read_fd(int fd, size_t max, unsigned flags,
					char **text, size_t *len);
/* Free a buffer that held a secret, zeroed first. */
void wholefile_free_secret(char *text, size_t len);

/*
 * Replace the file at `path` with `text`: written to "<path>.new" (mode
 * 0600), flushed, renamed over the old one, and the directory flushed,
 * so that a crash leaves one or the other whole. 0, or -1 with errno
 * (the old file then still holds). It flushes: call it rarely.
 */
int wholefile_replace(const char *path, const char *text, size_t len);

#endif
