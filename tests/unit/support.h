/*
 * Fixtures the unit tests share: files written for a test to read. Each
 * fails the running test (cmocka) when the system refuses.
 */
#ifndef FACTEUR_TEST_SUPPORT_H
#define FACTEUR_TEST_SUPPORT_H

/* A new file under /tmp holding `text`; its malloc'd path (unlink and
 * free it). */
char *support_temp_file(const char *text);
/* Replace the content of the file at path with `text`. */
void support_rewrite_file(const char *path, const char *text);

#endif
