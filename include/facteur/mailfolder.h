/*
 * Mail folders below the mail root, opened and made without following a
 * symbolic link: the mail root (the fixed start of mailbox_path, see
 * policy_mailbox_root_length) is opened as it is, since operators point
 * /var/mail elsewhere with a link, and every component after it one at a
 * time with O_NOFOLLOW, so that a link planted by a mailbox's owner
 * never takes a delivery, or a POP3 reader, elsewhere. Maildir, mbox and
 * POP3 all open their folders here. Nothing here keeps state: safe on
 * any thread.
 */
#ifndef FACTEUR_MAILFOLDER_H
#define FACTEUR_MAILFOLDER_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Open the folder `path` the way deliveries do, so that a mail reader
 * (POP3) reaches no more than they write: its first `root_len` octets
 * (policy_mailbox_root_length) are opened as they are, every component
 * after them without following a link (ELOOP for one), and "." or ".." there
 * is refused (EINVAL). Missing folders are made (mailowner_dir_mode) when
 * `create`. Returns an O_PATH directory descriptor, for the *at calls,
 * or -1 (errno) with *failed_len, when not NULL, the length of the
 * part of `path` that failed. Safe on any thread: it keeps no state.
 */
int mailfolder_open(const char *path, size_t root_len, bool create,
                    size_t *failed_len);

/* openat(dirfd, name) of a directory with O_DIRECTORY|O_NOFOLLOW|
 * O_CLOEXEC added to `mode` (O_RDONLY, O_PATH): ELOOP, never ENOTDIR,
 * when `name` is a symbolic link. */
int mailfolder_open_directory_at(int dirfd, const char *name, int mode);

/* mkdir -p, making folders mailowner_dir_mode. 0 or -1 (errno). */
int mailfolder_mkdirs(const char *path);

/*
 * The walk behind mailfolder_open, for deliveries, which flush what they
 * create: *first_created gets the length of the path of the outermost
 * directory made (0 when none was), and on failure *failed_len the
 * length of the part of `path` that failed and *what the call ("open",
 * "mkdir"). An O_PATH directory descriptor, or -1 (errno).
 */
int mailfolder_walk(const char *path, size_t root_len, bool create,
                    size_t *first_created, size_t *failed_len,
                    const char **what);

/* `n` random hex digits into `out` (no terminator), for names in a
 * folder that nobody may guess: never a strong secret, and callers
 * create with O_EXCL, so a taken name is only a retry. */
void mailfolder_random_hex(char *out, size_t n);

#endif
