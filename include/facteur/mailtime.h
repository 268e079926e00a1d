/*
 * The date of an Internet message (RFC 5322 §3.3), as the Received
 * header, the Date of a generated message and the fields of a delivery
 * report write it: local time with its numeric offset, day and month
 * names in English whatever the locale.
 */
#ifndef FACTEUR_MAILTIME_H
#define FACTEUR_MAILTIME_H

#include <stddef.h>
#include <time.h>

/* Room for any date mailtime_format writes, NUL included. */
#define MAILTIME_BUF 64

/* "Tue, 14 Nov 2023 22:13:20 +0100" into buf; the epoch when t cannot
 * be converted to local time. */
void mailtime_format(time_t t, char *buf, size_t len);

#endif
