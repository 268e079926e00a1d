/*
 * The blocking client of the control socket (<spool_dir>/control), for
 * facteurctl and facteur-sendmail; never used by the daemon. The
 * protocol is control_proto.h.
 */
#ifndef FACTEUR_CONTROL_CLIENT_H
#define FACTEUR_CONTROL_CLIENT_H

#include <stddef.h>

enum control_call_result {
	CONTROL_CALL_OK,	  /* the reply ended in "ok" */
	CONTROL_CALL_ERROR,	  /* "error <text>": the text is in err */
	CONTROL_CALL_UNREACHABLE, /* no daemon: err says why */
	CONTROL_CALL_BROKEN,	  /* the exchange failed: err says why */
};

/* Called for each reply line before the last (without its LF); a
 * non-zero return abandons the call (CONTROL_CALL_BROKEN). */
typedef int (*control_line_cb)(char *line, void *arg);

/* Connect to <spool_dir>/control, send one request line, pass every
 * record to `cb` (may be NULL), and return how the reply ended. */
enum control_call_result control_client_call(const char *spool_dir,
					     const char *request,
					     control_line_cb cb, void *arg,
					     char *err, size_t errlen);

#endif
