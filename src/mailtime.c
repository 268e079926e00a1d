/* RFC 5322 dates (see mailtime.h). */
#include <stdio.h>

#include "facteur/mailtime.h"

void mailtime_format(time_t t, char *buf, size_t len)
{
	/* Written by hand: strftime's %a and %b follow the locale. */
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed",
					"Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr",
					   "May", "Jun", "Jul", "Aug",
					   "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;

	if (localtime_r(&t, &tm) == NULL) {
		snprintf(buf, len, "Thu, 01 Jan 1970 00:00:00 +0000");
		return;
	}
	long off = tm.tm_gmtoff / 60;
	long abs_off = off < 0 ? -off : off;
	snprintf(buf, len, "%s, %02d %s %d %02d:%02d:%02d %c%02ld%02ld",
		 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
		 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 off < 0 ? '-' : '+', abs_off / 60, abs_off % 60);
}
