/*
 * The file form, written by other processes (facteur-sendmail): a
 * message is queue/<id>.msg and its envelope queue/<id>.env, both flushed
 * with the queue directory before the writer says the message is queued.
 * The daemon imports such a message into its log at pickup or start
 * (spool_recover.c); until then the files are the message.
 *
 * Two ways to commit: spool_drop_commit, synchronous, for a process that
 * queues one message and has no loop; and the batch of spool_batch.c
 * (through spool_incoming_commit), which flushes the same files through
 * the iothread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "facteur/spool.h"
#include "facteur/spool_internal.h"

/* Write <id>.env; its descriptor, or -1 with errno. */
static int write_envelope(struct spool *spool, struct spool_incoming *inc,
			  const struct spool_envelope *env)
{
	char name[SPOOL_ID_LEN + 5];
	size_t len;

	if (spool_check_msg_file(inc) == -1)
		return -1;
	char *body = spool_envelope_text(env, inc->id, inc->written, &len);
	if (body == NULL)
		return -1;
	spool_file_name(name, inc->id, ".env");
	int fd = openat(spool->queue_fd, name,
			O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		free(body);
		return -1;
	}
	if (spool_write_full(fd, body, len) == -1) {
		int saved = errno;
		free(body);
		spool_close_fd(fd);
		spool_unlink_file(spool, inc->id, ".env");
		errno = saved;
		return -1;
	}
	free(body);
	return fd;
}

/* The commit of a drop spool: <id>.env beside <id>.msg. */
void spool_drop_commit_files(struct spool *spool, struct spool_incoming *inc,
			     const struct spool_envelope *env,
			     struct spool_request *req)
{
	int env_fd = -1;

	req->kind = SPOOL_REQ_FILE_COMMIT;
	if (inc->error != 0)
		req->error = inc->error;
	else if ((env_fd = write_envelope(spool, inc, env)) == -1)
		req->error = errno != 0 ? errno : EIO;

	if (req->error != 0) {
		spool_close_fd(inc->fd);
		spool_unlink_file(spool, inc->id, ".msg");
	} else {
		req->fds[0] = inc->fd;
		req->fds[1] = env_fd;
		req->nfds = 2;
	}
}

int spool_drop_commit(struct spool *spool, struct spool_incoming *inc,
		      const struct spool_envelope *env)
{
	int error = inc->error;
	int env_fd = -1;

	/* The message file first: its envelope is what makes it a message,
	 * so the envelope never reaches the disk before it. */
	if (error == 0 && fsync(inc->fd) == -1)
		error = errno;
	if (error == 0 && (env_fd = write_envelope(spool, inc, env)) == -1)
		error = errno != 0 ? errno : EIO;
	if (error == 0 && fsync(env_fd) == -1)
		error = errno;
	if (error == 0 && fsync(spool->queue_fd) == -1)
		error = errno;
	spool_close_fd(env_fd);
	spool_close_fd(inc->fd);
	if (error != 0) {
		/* Never acknowledged: leave nothing to recover. An <id>.env
		 * we could not create is not ours to remove. */
		if (env_fd != -1)
			spool_unlink_file(spool, inc->id, ".env");
		spool_unlink_file(spool, inc->id, ".msg");
	}
	free((struct incoming *)inc);
	errno = error;
	return error != 0 ? -1 : 0;
}
