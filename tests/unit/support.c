/* Shared unit test fixtures (see support.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/config.h"
#include "support.h"

static void write_all(int fd, const char *text)
{
	size_t len = strlen(text);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

char *support_temp_file(const char *text)
{
	char *path = strdup("/tmp/facteur-test.XXXXXX");

	assert_non_null(path);
	write_all(mkstemp(path), text);
	return path;
}

void support_rewrite_file(const char *path, const char *text)
{
	write_all(open(path, O_WRONLY | O_TRUNC | O_CLOEXEC), text);
}

struct config *support_load_config(const char *text, char *const *env)
{
	struct config_errors errors = {0};
	struct config *cfg = config_load_string(text, "x.conf", env, &errors);

	if (cfg == NULL) {
		for (size_t i = 0; i < errors.count; i++)
			print_message("  error: %s\n", errors.messages[i]);
		fail_msg("configuration refused:\n%s", text);
	}
	assert_int_equal(errors.count, 0);
	return cfg;
}

bool support_errors_contain(const struct config_errors *errors,
			    const char *text)
{
	for (size_t i = 0; i < errors->count; i++)
		if (strstr(errors->messages[i], text) != NULL)
			return true;
	return false;
}
