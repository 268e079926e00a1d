/*
 * Fixtures the unit tests share: files written for a test to read, and
 * configurations loaded from text. Each fails the running test (cmocka)
 * when the system refuses.
 */
#ifndef FACTEUR_TEST_SUPPORT_H
#define FACTEUR_TEST_SUPPORT_H

/* A new file under /tmp holding `text`; its malloc'd path (unlink and
 * free it). */
char *support_temp_file(const char *text);
/* Replace the content of the file at path with `text`. */
void support_rewrite_file(const char *path, const char *text);

#include <stdbool.h>

struct config;
struct config_errors;

/* Load configuration text (named "x.conf") that must be valid, with the
 * environment env (NULL for none); its errors printed otherwise. */
struct config *support_load_config(const char *text, char *const *env);
/* Whether one of the errors holds `text`. */
bool support_errors_contain(const struct config_errors *errors,
			    const char *text);

#endif
