/*
 * The owner and modes of what local delivery writes (see mailowner.h).
 * The owner's identity is taken per thread with setfsuid and setfsgid,
 * so that a file is born with the right owner and never needs a chown:
 * the daemon keeps no capability for that; started as root, it keeps
 * the mailbox owner as its saved uid and gid when it drops to its own
 * account, which lets it take that identity for file-system calls and
 * nothing more (see main.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/mailowner.h"

static bool owner_set;
static uid_t owner_uid;
static gid_t owner_gid;
static mode_t file_mode = MAILOWNER_DEFAULT_MODE;

int mailowner_parse_mode(const char *text, mode_t *mode, const char **why)
{
	*why = "not an octal mode with a leading 0 (0600, 0660...)";
	size_t len = strlen(text);
	if (len < 2 || len > 5 || text[0] != '0')
		return -1;
	mode_t m = 0;
	for (size_t i = 1; i < len; i++) {
		if (text[i] < '0' || text[i] > '7')
			return -1;
		m = m * 8 + (mode_t)(text[i] - '0');
	}
	if (m & ~0777u) {
		*why = "set-id and sticky bits are not for mail files";
		return -1;
	}
	if ((m & 0600u) != 0600u) {
		*why = "the owner must be able to read and write (06..)";
		return -1;
	}
	if (m & 0111u) {
		*why = "mail files are not executable";
		return -1;
	}
	if (m & 0002u) {
		*why = "world-writable mail can be changed by any local user";
		return -1;
	}
	*mode = m;
	return 0;
}

mode_t mailowner_directory_mode(mode_t m)
{
	mode_t dir = m;
	for (unsigned shift = 0; shift <= 6; shift += 3)
		if (m & (06u << shift))
			dir |= 01u << shift;
	return dir;
}

int mailowner_lookup(const char *text, uid_t *uid, gid_t *gid, char *why,
		     size_t whylen)
{
	const char *colon = strchr(text, ':');
	size_t ulen = colon != NULL ? (size_t)(colon - text) : strlen(text);
	if (ulen == 0 || (colon != NULL && colon[1] == '\0')) {
		snprintf(why, whylen, "expected USER or USER:GROUP");
		return -1;
	}
	char *user = strndup(text, ulen);
	if (user == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	errno = 0;
	struct passwd *pw = getpwnam(user);
	if (pw == NULL) {
		snprintf(why, whylen, "no such user \"%s\"%s%s", user,
			 errno != 0 ? ": " : "",
			 errno != 0 ? strerror(errno) : "");
		free(user);
		return -1;
	}
	free(user);
	if (pw->pw_uid == 0) {
		/* kept as the saved uid, it would give root back */
		snprintf(why, whylen, "root cannot be the mailbox owner");
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	if (colon == NULL)
		return 0;
	errno = 0;
	struct group *gr = getgrnam(colon + 1);
	if (gr == NULL) {
		snprintf(why, whylen, "no such group \"%s\"%s%s", colon + 1,
			 errno != 0 ? ": " : "",
			 errno != 0 ? strerror(errno) : "");
		return -1;
	}
	*gid = gr->gr_gid;
	return 0;
}

/* setfsuid reports no error: it returns the old identity either way,
 * and an invalid id (-1) only reads the current one. */
static bool fs_identity_is(uid_t uid, gid_t gid)
{
	return (uid_t)setfsuid((uid_t)-1) == uid &&
	       (gid_t)setfsgid((gid_t)-1) == gid;
}

int mailowner_init(bool set, uid_t uid, gid_t gid, mode_t mode)
{
	owner_set = set;
	owner_uid = uid;
	owner_gid = gid;
	file_mode = mode;
	if (!set)
		return 0;
	mailowner_enter();
	bool ok = fs_identity_is(uid, gid);
	mailowner_leave();
	if (!ok) {
		owner_set = false;
		errno = EPERM;
		return -1;
	}
	return 0;
}

bool mailowner_is_set(void)
{
	return owner_set;
}

uid_t mailowner_uid(void)
{
	return owner_set ? owner_uid : geteuid();
}

mode_t mailowner_file_mode(void)
{
	return file_mode;
}

mode_t mailowner_dir_mode(void)
{
	return mailowner_directory_mode(file_mode);
}

void mailowner_enter(void)
{
	if (!owner_set)
		return;
	/* group first: with the uid changed, a daemon started as root
	 * would no longer be allowed to change it */
	(void)setfsgid(owner_gid);
	(void)setfsuid(owner_uid);
}

void mailowner_leave(void)
{
	if (!owner_set)
		return;
	(void)setfsuid(geteuid());
	(void)setfsgid(getegid());
}

int mailowner_fix_file_mode(int fd)
{
	if (file_mode == MAILOWNER_DEFAULT_MODE)
		return 0;
	return fchmod(fd, file_mode);
}

int mailowner_fix_dir_mode_at(int dirfd, const char *name)
{
	if (file_mode == MAILOWNER_DEFAULT_MODE)
		return 0;
	return fchmodat(dirfd, name, mailowner_dir_mode(), 0);
}
