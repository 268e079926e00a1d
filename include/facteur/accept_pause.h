/*
 * A listening socket's pause after accept(2) failed for want of
 * descriptors (EMFILE, ENFILE): listening on would wake the loop at every
 * turn with the same error, so its owner stops accepting for a while.
 * The mail listeners and the metrics endpoint share it; each logs the
 * outage its own way.
 */
#ifndef FACTEUR_ACCEPT_PAUSE_H
#define FACTEUR_ACCEPT_PAUSE_H

#include <stdbool.h>
#include <sys/time.h>

struct event;
struct event_base;

struct accept_pause {
	struct event *timer; /* ends the pause */
	struct timeval length;
	bool active;
	/* The owner turns accepting on or off, asking accept_pause_active
	 * among its own conditions; called when a pause starts and ends,
	 * always later than accept_pause_start's caller (the timer) for
	 * the end. */
	void (*update)(void *arg);
	void *arg;
};

/* 0, or -1 when the timer cannot be made (out of memory). */
int accept_pause_init(struct accept_pause *p, struct event_base *base,
		      struct timeval length, void (*update)(void *arg),
		      void *arg);
/* Stop accepting for p->length. Should the timer not arm, the pause
 * ends at once: spinning on the error beats never accepting again. */
void accept_pause_start(struct accept_pause *p);
bool accept_pause_active(const struct accept_pause *p);
/* Free the timer; p may be all zeros (never initialised). */
void accept_pause_cleanup(struct accept_pause *p);

#endif
