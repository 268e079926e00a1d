/*
 * The daemon's shared state, handed to every module that serves
 * sessions or deliveries. The configuration and what is built from it
 * (users, policy) are swapped as a whole on reload: nothing may keep a
 * pointer into them across loop turns; go through the server each time.
 */
#ifndef FACTEUR_SERVER_H
#define FACTEUR_SERVER_H

#include <stdbool.h>

#include <openssl/ssl.h>

struct auth_limit;
struct auth_users;
struct config;
struct dkim_keys;
struct deliver;
struct dns;
struct event_base;
struct iothread;
struct listener;
struct policy;
struct scheduler;
struct smtp_server;
struct spool;
struct tlsrpt;
struct worker;

struct server {
	struct event_base *base;
	struct config *cfg;
	struct auth_users *users; /* NULL without users_file */
	struct policy *policy;
	struct iothread *io;
	struct deliver *deliver; /* local deliveries' shared state */
	struct worker *worker; /* password checks, mailbox sizing */
	/* failed logins across sessions (auth_fail_limit) */
	struct auth_limit *auth_limit;
	/* MAIL commands per client across sessions (max_messages_per_ip) */
	struct auth_limit *message_rate;
	struct spool *spool;
	struct scheduler *scheduler;
	struct listener *listener;
	struct smtp_server *smtp; /* the SMTP sessions */
	struct dns *dns;
	SSL_CTX *tls_server; /* NULL without tls_cert/tls_key */
	struct dkim_keys *dkim; /* dkim_sign's keys; NULL: none */
	SSL_CTX *tls_client;
	struct tlsrpt *tlsrpt; /* TLS reporting's counts (tlsrpt_from) */
	bool stopping; /* SIGTERM seen: finish what is in flight, exit */
	/* Re-read the configuration (SIGHUP, facteurctl reload); 0 when the
	 * new one is in effect, -1 when it was refused (errors logged). */
	int (*reload)(void);
};

#endif
