/*
 * Fixtures the unit tests share: files written for a test to read,
 * configurations loaded from text, an event loop run until callbacks
 * have run. Each fails the running test (cmocka)
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
#include <stddef.h>

struct config;
struct config_errors;

/* Load configuration text (named "x.conf") that must be valid, with the
 * environment env (NULL for none); its errors printed otherwise. */
struct config *support_load_config(const char *text, char *const *env);
/* Whether one of the errors holds `text`. */
bool support_errors_contain(const struct config_errors *errors,
			    const char *text);

struct event_base;

/* (support_loop.c) Run base one turn at a time until each of n callbacks
 * has run: items[i].calls above 0 for each (30 s at most); then each must
 * have run exactly once. */
#define SUPPORT_WAIT_CALLS(base, items, n)                                     \
	support_wait_calls((base), &(items)[0].calls, sizeof(items)[0], (n))
void support_wait_calls(struct event_base *base, const int *first,
			size_t stride, size_t n);

#endif
