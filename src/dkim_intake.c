/*
 * DKIM signing on the way into the spool (see dkim_intake.h): the
 * decision to sign, the job for the worker, the outcome for the log and
 * the counters.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "facteur/dkim.h"
#include "facteur/dkim_intake.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/spool.h"
#include "facteur/text.h"
#include "facteur/worker.h"

struct dkim_intake {
	struct dkim_message *message;
};

/* What the worker does for one message, and what it reports. */
struct dkim_job {
	struct dkim_signing *signings;
	size_t count;
	struct spool *spool;
	struct spool_incoming *inc;
	int write_error; /* errno of a failed prepend, or 0 */
	const char
	    *unsigned_reason; /* a static word, when nothing was signed */
	dkim_intake_done done;
	void *arg;
};

struct dkim_intake *dkim_intake_new(void)
{
	struct dkim_intake *in = calloc(1, sizeof *in);

	if (in == NULL)
		return NULL;
	in->message = dkim_message_new();
	if (in->message == NULL) {
		free(in);
		return NULL;
	}
	return in;
}

void dkim_intake_free(struct dkim_intake *in)
{
	if (in == NULL)
		return;
	dkim_message_free(in->message);
	free(in);
}

void dkim_intake_feed(struct dkim_intake *in, const void *buf, size_t len)
{
	dkim_message_feed(in->message, buf, len);
}

static void job_free(struct dkim_job *job)
{
	for (size_t i = 0; i < job->count; i++)
		dkim_signing_clear(&job->signings[i]);
	free(job->signings);
	free(job);
}

/* On the worker: the key operations, then the fields before the
 * message, newest (the last key's) on top. */
static void job_run(void *arg)
{
	struct dkim_job *job = arg;
	struct text fields = {0};
	size_t len;

	for (size_t i = job->count; i-- > 0;)
		if (dkim_signing_run(&job->signings[i]) == 0)
			text_add(&fields, job->signings[i].header,
				 job->signings[i].header_len);
	if (fields.len == 0 && !fields.failed) {
		free(fields.p);
		return;
	}
	char *text = text_finish(&fields, &len);
	if (text == NULL ||
	    spool_incoming_prepend(job->spool, job->inc, text, len) == -1)
		job->write_error = job->inc->error;
	free(text);
}

/* "signed:d/s,d/s" (or "error:..." when some failed), counted when
 * `count`. */
static char *job_outcome(struct dkim_job *job, bool count)
{
	struct text ok = {0}, failed = {0};

	if (job->count == 0) {
		metrics.dkim_skipped_total += count;
		text_fmt(&ok, "unsigned:%s", job->unsigned_reason);
		return text_finish(&ok, NULL);
	}
	for (size_t i = 0; i < job->count; i++) {
		const struct dkim_signing *sg = &job->signings[i];
		bool good = !sg->failed && job->write_error == 0;
		struct text *t = good ? &ok : &failed;

		text_str(t, t->len == 0 ? (good ? "signed:" : "error:") : ",");
		text_str(t, sg->label);
		if (good)
			metrics.dkim_signed_total += count;
		else
			metrics.dkim_error_total += count;
	}
	if (failed.len > 0) {
		free(ok.p);
		return text_finish(&failed, NULL);
	}
	return text_finish(&ok, NULL);
}

static void job_done(void *arg)
{
	struct dkim_job *job = arg;
	char *outcome = job_outcome(job, true);

	for (size_t i = 0; i < job->count; i++)
		if (job->signings[i].failed)
			log_event(LOG_LEVEL_ERROR, "dkim_error",
				  LOG_S("queue_id", job->inc->id),
				  LOG_S("key", job->signings[i].label),
				  LOG_S("reason", "signing failed"));
	if (job->count == 0)
		log_event(LOG_LEVEL_INFO, "dkim_unsigned",
			  LOG_S("queue_id", job->inc->id),
			  LOG_S("reason", job->unsigned_reason));
	job->done(outcome, job->arg);
	job_free(job);
}

/* The signatures this message gets; job->unsigned_reason when none. */
static int job_prepare(struct dkim_job *job, const struct dkim_message *m,
		       const struct dkim_keys *keys)
{
	const char *domain;
	enum dkim_from from = dkim_message_from(m, &domain);
	time_t now = time(NULL);

	if (from != DKIM_FROM_ONE) {
		job->unsigned_reason = dkim_from_reason(from);
		return 0;
	}
	job->signings =
	    calloc(keys->count ? keys->count : 1, sizeof *job->signings);
	if (job->signings == NULL)
		return -1;
	for (size_t i = 0; i < keys->count; i++) {
		if (!dkim_domain_covers(keys->keys[i].domain, domain))
			continue;
		if (dkim_signing_prepare(&job->signings[job->count], m,
					 &keys->keys[i], now) == -1)
			return -1;
		job->count++;
	}
	if (job->count == 0)
		job->unsigned_reason = "no-key-for-domain";
	return 0;
}

int dkim_intake_finish(struct dkim_intake *in, const struct dkim_keys *keys,
		       struct worker *worker, struct spool *spool,
		       struct spool_incoming *inc, dkim_intake_done done,
		       void *arg)
{
	struct dkim_job *job = calloc(1, sizeof *job);
	int rc = -1;

	dkim_message_finish(in->message);
	if (job == NULL)
		goto out;
	job->spool = spool;
	job->inc = inc;
	job->done = done;
	job->arg = arg;
	if (job_prepare(job, in->message, keys) == -1 ||
	    worker_run(worker, job_run, job_done, job) == -1) {
		job_free(job);
		goto out;
	}
	rc = 0;
out:
	dkim_intake_free(in);
	return rc;
}

char *dkim_intake_sign_now(struct dkim_intake *in, const struct dkim_keys *keys,
			   struct spool *spool, struct spool_incoming *inc)
{
	struct dkim_job *job = calloc(1, sizeof *job);
	char *outcome = NULL;

	dkim_message_finish(in->message);
	if (job != NULL) {
		job->spool = spool;
		job->inc = inc;
		if (job_prepare(job, in->message, keys) == 0) {
			job_run(job);
			outcome = job_outcome(job, false);
		}
		job_free(job);
	}
	dkim_intake_free(in);
	return outcome;
}
