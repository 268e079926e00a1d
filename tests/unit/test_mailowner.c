/*
 * Unit tests of mailbox_owner and mailbox_mode: the mode rules, the
 * folder mode that goes with a file mode, the account look-up, and (as
 * root) that files made between mailowner_enter and mailowner_leave
 * belong to the owner with the configured mode, and the others do not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "facteur/mailowner.h"

static void assert_mode(const char *text, mode_t want)
{
	mode_t mode = 0;
	const char *why = NULL;
	if (mailowner_parse_mode(text, &mode, &why) != 0)
		fail_msg("%s refused: %s", text, why);
	assert_int_equal(mode, want);
}

static void assert_mode_refused(const char *text, const char *why_part)
{
	mode_t mode = 0;
	const char *why = NULL;
	assert_int_equal(mailowner_parse_mode(text, &mode, &why), -1);
	assert_non_null(why);
	if (strstr(why, why_part) == NULL)
		fail_msg("%s: \"%s\" lacks \"%s\"", text, why, why_part);
}

static void test_mailowner_modes(void **state)
{
	(void)state;
	assert_mode("0600", 0600);
	assert_mode("0640", 0640);
	assert_mode("0660", 0660);
	assert_mode("0644", 0644);
	assert_mode("00600", 0600);
	assert_mode_refused("600", "octal");
	assert_mode_refused("0", "octal");
	assert_mode_refused("", "octal");
	assert_mode_refused("0680", "octal");
	assert_mode_refused("0x180", "octal");
	assert_mode_refused("0600 ", "octal");
	assert_mode_refused("006000", "octal");
	assert_mode_refused("04600", "set-id");
	assert_mode_refused("0400", "read and write");
	assert_mode_refused("0200", "read and write");
	assert_mode_refused("0700", "executable");
	assert_mode_refused("0670", "executable");
	assert_mode_refused("0662", "world-writable");
	assert_mode_refused("0666", "world-writable");
}

static void test_mailowner_directory_modes(void **state)
{
	(void)state;
	assert_int_equal(mailowner_directory_mode(0600), 0700);
	assert_int_equal(mailowner_directory_mode(0640), 0750);
	assert_int_equal(mailowner_directory_mode(0660), 0770);
	assert_int_equal(mailowner_directory_mode(0620), 0730);
	assert_int_equal(mailowner_directory_mode(0644), 0755);
	assert_int_equal(mailowner_directory_mode(0604), 0705);
}

static void test_mailowner_lookup(void **state)
{
	(void)state;
	char why[160];
	uid_t uid;
	gid_t gid;
	struct passwd *nobody = getpwnam("nobody");
	struct group *nogroup = getgrnam("nogroup");
	if (nobody != NULL) {
		assert_int_equal(
		    mailowner_lookup("nobody", &uid, &gid, why, sizeof why), 0);
		assert_int_equal(uid, nobody->pw_uid);
		assert_int_equal(gid, nobody->pw_gid);
	}
	if (nobody != NULL && nogroup != NULL) {
		assert_int_equal(mailowner_lookup("nobody:nogroup", &uid, &gid,
						  why, sizeof why),
				 0);
		assert_int_equal(gid, nogroup->gr_gid);
		assert_int_equal(mailowner_lookup("nobody:no-such-group-x",
						  &uid, &gid, why, sizeof why),
				 -1);
		assert_non_null(strstr(why, "no such group"));
	}
	assert_int_equal(
	    mailowner_lookup("no-such-user-x", &uid, &gid, why, sizeof why),
	    -1);
	assert_non_null(strstr(why, "no such user \"no-such-user-x\""));
	assert_int_equal(mailowner_lookup("root", &uid, &gid, why, sizeof why),
			 -1);
	assert_non_null(strstr(why, "root"));
	assert_int_equal(
	    mailowner_lookup("nobody:", &uid, &gid, why, sizeof why), -1);
	assert_int_equal(
	    mailowner_lookup(":nogroup", &uid, &gid, why, sizeof why), -1);
}

/* As root: a file made as the owner is the owner's, with mailbox_mode
 * despite a umask that would take the group bits; once left, files are
 * root's again. */
static void test_mailowner_identity(void **state)
{
	(void)state;
	struct passwd *nobody = getpwnam("nobody");
	struct group *nogroup = getgrnam("nogroup");
	if (geteuid() != 0 || nobody == NULL || nogroup == NULL)
		skip();
	char dir[] = "/tmp/test_mailowner.XXXXXX";
	assert_non_null(mkdtemp(dir));
	assert_int_equal(chmod(dir, 0777), 0);
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0);
	assert_int_equal(
	    mailowner_init(true, nobody->pw_uid, nogroup->gr_gid, 0660), 0);
	assert_true(mailowner_is_set());
	assert_int_equal(mailowner_uid(), nobody->pw_uid);
	assert_int_equal(mailowner_dir_mode(), 0770);
	mode_t old = umask(077);

	mailowner_enter();
	int fd = openat(dirfd, "mine", O_CREAT | O_EXCL | O_WRONLY,
			mailowner_file_mode());
	assert_true(fd >= 0);
	assert_int_equal(mailowner_fix_file_mode(fd), 0);
	assert_int_equal(mkdirat(dirfd, "folder", mailowner_dir_mode()), 0);
	assert_int_equal(mailowner_fix_dir_mode_at(dirfd, "folder"), 0);
	mailowner_leave();
	int rootfd = openat(dirfd, "root", O_CREAT | O_EXCL | O_WRONLY, 0600);
	assert_true(rootfd >= 0);

	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_uid, nobody->pw_uid);
	assert_int_equal(st.st_gid, nogroup->gr_gid);
	assert_int_equal(st.st_mode & 07777, 0660);
	assert_int_equal(fstatat(dirfd, "folder", &st, 0), 0);
	assert_int_equal(st.st_uid, nobody->pw_uid);
	assert_int_equal(st.st_mode & 07777, 0770);
	assert_int_equal(fstat(rootfd, &st), 0);
	assert_int_equal(st.st_uid, 0);
	assert_int_equal(st.st_gid, 0);

	umask(old);
	assert_int_equal(close(fd), 0);
	assert_int_equal(close(rootfd), 0);
	assert_int_equal(unlinkat(dirfd, "mine", 0), 0);
	assert_int_equal(unlinkat(dirfd, "root", 0), 0);
	assert_int_equal(unlinkat(dirfd, "folder", AT_REMOVEDIR), 0);
	assert_int_equal(close(dirfd), 0);
	assert_int_equal(rmdir(dir), 0);
	assert_int_equal(mailowner_init(false, 0, 0, MAILOWNER_DEFAULT_MODE),
			 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mailowner_modes),
	    cmocka_unit_test(test_mailowner_directory_modes),
	    cmocka_unit_test(test_mailowner_lookup),
	    cmocka_unit_test(test_mailowner_identity),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
