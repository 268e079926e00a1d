/* The pause of a listener out of descriptors (see accept_pause.h). */
#include <event2/event.h>

#include "facteur/accept_pause.h"

static void on_pause_end(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct accept_pause *p = arg;
	p->active = false;
	p->update(p->arg);
}

int accept_pause_init(struct accept_pause *p, struct event_base *base,
		      struct timeval length, void (*update)(void *arg),
		      void *arg)
{
	p->length = length;
	p->active = false;
	p->update = update;
	p->arg = arg;
	p->timer = evtimer_new(base, on_pause_end, p);
	return p->timer != NULL ? 0 : -1;
}

void accept_pause_start(struct accept_pause *p)
{
	p->active = true;
	p->update(p->arg);
	if (evtimer_add(p->timer, &p->length) == -1) {
		p->active = false;
		p->update(p->arg);
	}
}

bool accept_pause_active(const struct accept_pause *p)
{
	return p->active;
}

void accept_pause_cleanup(struct accept_pause *p)
{
	if (p->timer != NULL)
		event_free(p->timer);
	p->timer = NULL;
	p->active = false;
}
