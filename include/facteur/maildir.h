/*
 * Maildir delivery (maildir.c, driven by deliver.c): the message is made
 * in tmp/ under a fresh random name, flushed, moved into new/ under a
 * name made from the request's `unique` string without ever replacing
 * a file, and new/ flushed; a retry after a crash finds the file it
 * already delivered and does not deliver it twice. Folders that exist
 * are remembered with tmp/ and new/ open. This header holds the part
 * that other modules and the tests use: the file name.
 */
#ifndef FACTEUR_MAILDIR_H
#define FACTEUR_MAILDIR_H

#include <stddef.h>
#include <time.h>

/* The Maildir file name "<arrival>.<unique>.<hostname>", with '/' and ':'
 * in the host name written as \057 and \072. Returns the length, or -1 if
 * it does not fit. */
int maildir_name(char *buf, size_t len, time_t arrival,
                 const char *unique, const char *hostname);

#endif
