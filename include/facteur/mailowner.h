/*
 * Who owns the folders and files that local delivery writes, and their
 * modes (mailbox_owner, mailbox_mode), so that an IMAP server running as
 * another account reads and changes them. The parsing is pure; the rest
 * switches the calling thread's file-system identity (setfsuid), which
 * Linux keeps per thread: a delivery creates its files as the mailbox
 * owner while the loop's other work, and the other threads, stay the
 * daemon's account. The settings are read once at start, before any
 * thread is made, and never change after.
 */
#ifndef FACTEUR_MAILOWNER_H
#define FACTEUR_MAILOWNER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The file mode when mailbox_mode is not set: files 0600, folders 0700,
 * as facteur always made them. */
#define MAILOWNER_DEFAULT_MODE 0600u

/*
 * mailbox_mode's value: an octal mode with a leading 0, read and write
 * for the owner, no execute bit, no set-id or sticky bit, and never
 * writable by others. 0, or -1 with *why saying what is wrong.
 */
int mailowner_parse_mode(const char *text, mode_t *mode, const char **why);

/* The folder mode matching a file mode: each class that may read or
 * write a file may also search the folder (0600 -> 0700, 0640 -> 0750,
 * 0660 -> 0770). */
mode_t mailowner_directory_mode(mode_t file_mode);

/*
 * mailbox_owner's value, USER or USER:GROUP, looked up in the account
 * database (GROUP defaults to USER's primary group). 0, or -1 with a
 * message in `why` (`whylen` octets).
 */
int mailowner_lookup(const char *text, uid_t *uid, gid_t *gid, char *why,
		     size_t whylen);

/*
 * Take the settings for the life of the process: `set` false keeps the
 * daemon's own account. Called once at start, before any thread.
 * Checks that this thread may take the owner's identity: 0, or -1
 * (errno EPERM) when it may not.
 */
int mailowner_init(bool set, uid_t uid, gid_t gid, mode_t file_mode);

/* Whether mailbox_owner is set, and its uid (the daemon's effective uid
 * when it is not: the owner an mbox must have). */
bool mailowner_is_set(void);
uid_t mailowner_uid(void);

/* The modes to create with: mailbox_mode and its folder mode. */
mode_t mailowner_file_mode(void);
mode_t mailowner_dir_mode(void);

/*
 * Act as the mailbox owner on this thread's file-system calls, until
 * mailowner_leave; nothing when mailbox_owner is not set. Pairs do not
 * nest. Deliveries and the POP3 reader wrap their mailbox calls in them.
 */
void mailowner_enter(void);
void mailowner_leave(void);

/*
 * Give a file or folder just created the configured mode exactly: the
 * process umask may have taken group bits from it. Nothing when
 * mailbox_mode is the default. 0 or -1 (errno).
 */
int mailowner_fix_file_mode(int fd);
int mailowner_fix_dir_mode_at(int dirfd, const char *name);

#endif
