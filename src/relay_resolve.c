/*
 * Where an attempt connects, and under which TLS policy (see
 * relay_internal.h): its targets resolved in order (a route's failover
 * list, or the domain's MX hosts), each target's addresses without
 * those of this daemon (the loop check), the domain's MTA-STS policy
 * looked up beside its MX records, the TLSA records of its MX hosts
 * under DANE, and what the TLS reports count of each attempt.
 *
 * The MTA-STS look-up and the MX look-up start together; whichever
 * answers first waits for the other (an MX answer in a copy, mx_held),
 * since the policy says which MX hosts count and that TLS must be
 * verified. A host DANE covers is DANE's (RFC 8461 §2): its TLSA
 * records, not the policy, decide its TLS, and its sessions are counted
 * under its own `tlsa` policy.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <openssl/x509_vfy.h>

#include "facteur/config.h"
#include "facteur/dane.h"
#include "facteur/dns.h"
#include "facteur/localaddr.h"
#include "facteur/log.h"
#include "facteur/metrics.h"
#include "facteur/mta_sts.h"
#include "facteur/relay.h"
#include "facteur/relay_internal.h"
#include "facteur/route.h"
#include "facteur/server.h"
#include "facteur/smtp_client.h"
#include "facteur/status_code.h"
#include "facteur/tlsrpt.h"

/* ---- the policy of an attempt ---- */

/* MTA-STS is for the domain's own MX hosts, never a route's, and not for
 * a message whose sender said "TLS-Required: No" (RFC 8689 §5). */
bool relay_sts_applies(const struct relay *relay,
		       const struct spool_envelope *env, bool routed)
{
	return !routed && relay->sts != NULL && relay->srv->cfg->mta_sts &&
	       !(env->flags & SPOOL_FLAG_TLS_NOT_REQUIRED);
}

/* The published TLS policy that governs the attempt, for the log
 * lines: "none" when there is none (tls_outbound or a route's tls= then
 * say what TLS was asked for, and verified= what was had). */
const char *relay_tls_policy_name(const struct relay_job *job)
{
	switch (job->sts.mode) {
	case MTA_STS_MODE_ENFORCE:
		return "sts-enforce";
	case MTA_STS_MODE_TESTING:
		return "sts-testing";
	case MTA_STS_MODE_NONE:
		break;
	}
	return "none";
}

/* ---- addresses ---- */

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static socklen_t address_length(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
					 : sizeof(struct sockaddr_in);
}

/* Is one of the hosts this daemon itself, on the port the attempt would
 * use? Then hosts from *cutoff's preference on are not to be tried. */
static bool relay_self_cutoff(struct relay *relay, const struct dns_host *hosts,
			      size_t host_count, uint16_t port,
			      unsigned *cutoff)
{
	const struct config *cfg = relay->srv->cfg;
	struct localaddr_self self = {
	    .listen = cfg->listen,
	    .listen_count = cfg->listen_count,
	};
	if (localaddr_needs_interfaces(cfg->listen, cfg->listen_count, port))
		localaddr_interfaces_get(relay->interfaces, &self.interfaces,
					 &self.interface_count);
	return localaddr_self_cutoff(&self, hosts, host_count, port, cutoff);
}

/* Every host left would be this daemon: connecting would only hand the
 * message back to ourselves, hop after hop. For the recipient's own
 * domain that is final (5.4.6, as Postfix says it); a route's target is
 * our configuration, so its recipients wait for it to be fixed. */
static void relay_loops_back(struct relay_job *job,
			     const struct route_target *t)
{
	char reason[600];
	if (job->routed) {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself (route target %s)",
			 job->domain, t->host);
		relay_note_failure(job, RCPT_DEFERRED, STATUS_LOOP_TRANSIENT,
				   reason);
	} else {
		snprintf(reason, sizeof reason,
			 "mail for %s loops back to myself", job->domain);
		relay_note_failure(job, RCPT_BOUNCED, STATUS_LOOP, reason);
	}
}

/* MTA-STS: an MX host that the policy does not name is skipped under
 * enforce, tried but logged and counted under testing. */
static bool relay_sts_allows(struct relay_job *job, const char *host)
{
	if (job->sts.mode == MTA_STS_MODE_NONE ||
	    mta_sts_policy_mx_matches(&job->sts, host))
		return true;
	job->sts_mismatched++;
	log_event(LOG_LEVEL_WARN, "mta_sts_mx_mismatch",
		  LOG_S("queue_id", job->env->id), LOG_S("domain", job->domain),
		  LOG_S("mx", host),
		  LOG_S("mode", mta_sts_mode_name(job->sts.mode)));
	return job->sts.mode == MTA_STS_MODE_TESTING;
}

/* One target's addresses, in order, without those of this daemon, after
 * those of the targets before it; a target that gives none notes why. */
static void relay_add_addresses(struct relay_job *job,
				const struct route_target *t,
				const struct dns_host *hosts,
				const struct dane_host *dane, size_t host_count)
{
	uint16_t port = t->port ? t->port : job->relay->srv->cfg->mx_port;
	/* A "[host]" or "[ip]" route names its target on purpose: it is
	 * taken as written, even when that is this daemon. */
	unsigned cutoff = 0;
	bool self_found =
	    (!job->routed || t->mx_lookup) &&
	    relay_self_cutoff(job->relay, hosts, host_count, port, &cutoff);
	size_t hosts_kept = 0, n = 0;
	bool dane_failed = false;
	for (size_t h = 0; h < host_count; h++) {
		if (self_found && hosts[h].preference >= cutoff)
			continue;
		hosts_kept++;
		/* RFC 7672 §2.1.1: a host whose TLSA records cannot be had
		 * is not tried, neither in the clear nor unauthenticated */
		if (dane != NULL && dane[h].state == DANE_FAILED) {
			dane_failed = true;
			struct tlsrpt_session s = {
			    .type = TLSRPT_POLICY_TLSA,
			    .mx_host = hosts[h].name,
			    .result = TLSRPT_DNSSEC_INVALID,
			    .receiving_mx = hosts[h].name,
			};
			tlsrpt_count_session(job->relay->srv->tlsrpt,
					     job->domain, &s);
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_FAILED,
					   dane[h].reason);
			continue;
		}
		/* DANE comes before MTA-STS for a host it covers (RFC 8461
		 * §2) */
		bool under_dane = dane != NULL && dane[h].state == DANE_VERIFY;
		if (!under_dane && !relay_sts_allows(job, hosts[h].name))
			continue;
		/* a "[host]" target is verified against the host written;
		 * an LMTP server is named by the setting */
		const char *name = job->lmtp ? job->host
				   : job->routed && !t->mx_lookup
				       ? t->host
				       : hosts[h].name;
		for (size_t a = 0;
		     a < hosts[h].addr_count && n < MAX_ADDRESSES_PER_ATTEMPT;
		     a++) {
			struct smtp_client_address *out =
			    &job->addrs[job->addr_count];
			char *host = strdup(name);
			if (host == NULL)
				fatal("relay: out of memory");
			job->addr_hosts[job->addr_count++] = host;
			out->host = host;
			out->addr = hosts[h].addrs[a];
			set_port(&out->addr, port);
			out->addrlen = address_length(&out->addr);
			out->dane = dane != NULL ? dane[h].state : DANE_NONE;
			out->tlsa = dane != NULL ? dane[h].tlsa : NULL;
			out->tlsa_count = dane != NULL ? dane[h].tlsa_count : 0;
			n++;
		}
	}
	if (self_found) {
		log_event(LOG_LEVEL_DEBUG, "relay_self_skipped",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_I("preference", cutoff),
			  LOG_I("hosts_left", hosts_kept));
		if (hosts_kept == 0) {
			relay_loops_back(job, t);
			return;
		}
	}
	if (n == 0 && job->sts_mismatched > 0 &&
	    job->sts.mode == MTA_STS_MODE_ENFORCE) {
		char reason[600];
		snprintf(reason, sizeof reason,
			 "no MX host of %s matches its MTA-STS policy",
			 job->domain);
		relay_note_failure(job, RCPT_DEFERRED,
				   STATUS_SECURITY_TRANSIENT, reason);
		metrics.tls_policy[METRICS_TLS_POLICY_STS]
				  [METRICS_TLS_POLICY_FAILURE]++;
		tlsrpt_count(job->relay->srv->tlsrpt, job->domain, &job->sts,
			     TLSRPT_VALIDATION_FAILURE);
		log_event(LOG_LEVEL_WARN, "mta_sts_failure",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_S("mode", "enforce"), LOG_S("reason", reason));
	} else if (n == 0 && !dane_failed) {
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   "no address to connect to");
	}
}

/* ---- resolving the targets ---- */

static void relay_resolve_next(struct relay_job *job);

/* ---- DANE (RFC 7672) ---- */

static void on_dane(const struct dns_host *hosts, const struct dane_host *dane,
		    size_t count, void *arg)
{
	struct relay_job *job = arg;
	const struct route_target *t = &job->targets[job->target_next - 1];
	job->dane_waiting = false;
	relay_add_addresses(job, t, hosts, dane, count);
	relay_resolve_next(job);
}

/* A target resolved through MX records with dane = yes: its hosts'
 * TLSA records first, when the MX answer was validated. Not for a
 * "[host]" target (its route's tls= rules), nor without TLS at all, nor
 * for a message whose sender said "TLS-Required: No". */
static bool relay_dane_start(struct relay_job *job,
			     const struct route_target *t,
			     const struct dns_result *res)
{
	const struct config *cfg = job->relay->srv->cfg;
	if (!cfg->dane || !t->mx_lookup || job->tls == TLS_POLICY_NONE ||
	    (job->env->flags & SPOOL_FLAG_TLS_NOT_REQUIRED) ||
	    !dane_applies(res))
		return false;
	if (job->dane == NULL) {
		job->dane = calloc(job->target_count, sizeof *job->dane);
		if (job->dane == NULL)
			fatal("relay: out of memory");
	}
	uint16_t port = t->port ? t->port : cfg->mx_port;
	job->dane[job->target_next - 1] =
	    dane_lookup_start(job->relay->srv->dns, res, port, on_dane, job);
	job->dane_waiting = true;
	return true;
}

/* The answer of the target being resolved: its addresses, or why it
 * gives none; then the targets after it. */
static void relay_take_answer(struct relay_job *job,
			      const struct dns_result *res)
{
	const struct route_target *t = &job->targets[job->target_next - 1];
	switch (res->status) {
	case DNS_OK:
		if (relay_dane_start(job, t, res))
			return; /* on_dane goes on */
		relay_add_addresses(job, t, res->hosts, NULL, res->host_count);
		break;
	case DNS_NXDOMAIN:
	case DNS_NO_HOST:
		/* The recipients' own domain does not exist: that is final.
		 * A route's target that does not resolve is our trouble. */
		if (!job->routed)
			relay_note_failure(job, RCPT_BOUNCED, STATUS_BAD_SYSTEM,
					   res->error);
		else
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_UNAVAILABLE,
					   res->error);
		break;
	case DNS_NULL_MX:
		relay_note_failure(
		    job, job->routed ? RCPT_DEFERRED : RCPT_BOUNCED,
		    job->routed ? STATUS_ROUTING_UNAVAILABLE : STATUS_NULL_MX,
		    "the domain accepts no mail (null MX)");
		break;
	case DNS_TEMPFAIL:
	default:
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   res->error);
		break;
	}
	relay_resolve_next(job);
}

static void on_resolved(const struct dns_result *res, void *arg)
{
	struct relay_job *job = arg;
	job->dns = NULL;
	/* the policy decides which hosts count and how (DANE, TLS): the
	 * answer waits for it, in a copy, since res ends with this call */
	if (job->sts_wait != NULL) {
		job->mx_held = dns_result_copy(res);
		return;
	}
	relay_take_answer(job, res);
}

/* A literal "[1.2.3.4]" or "[::1]" target needs no look-up. */
static bool literal_host(const char *host, struct dns_host *out,
			 struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	const char *text = host;
	if (strncasecmp(text, "IPv6:", 5) == 0)
		text += 5;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1)
		ss->ss_family = AF_INET;
	else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1)
		ss->ss_family = AF_INET6;
	else
		return false;
	out->name = (char *)host;
	out->preference = 0;
	out->addrs = ss;
	out->addr_count = 1;
	return true;
}

/* Resolve the targets left, in order; connect once none is left. */
static void relay_resolve_next(struct relay_job *job)
{
	struct relay *relay = job->relay;
	while (job->target_next < job->target_count) {
		const struct route_target *t =
		    &job->targets[job->target_next++];
		if (t->host_is_ip) {
			struct dns_host host;
			struct sockaddr_storage ss;
			if (literal_host(t->host, &host, &ss)) {
				relay_add_addresses(job, t, &host, NULL, 1);
				continue;
			}
		}
		if (relay->srv->dns == NULL) {
			relay_note_failure(job, RCPT_DEFERRED,
					   STATUS_ROUTING_FAILED,
					   "no DNS resolver available");
			continue;
		}
		job->dns = t->mx_lookup
			       ? dns_resolve_mx(relay->srv->dns, t->host,
						on_resolved, job)
			       : dns_resolve_host(relay->srv->dns, t->host,
						  on_resolved, job);
		if (job->dns != NULL)
			return;
		relay_note_failure(job, RCPT_DEFERRED, STATUS_ROUTING_FAILED,
				   "DNS query could not be started");
	}
	/* no MX look-up to wait for: on_sts_policy connects */
	if (job->sts_wait != NULL)
		return;
	relay_connect(job);
}

static void on_sts_policy(const struct mta_sts_policy *policy, void *arg)
{
	struct relay_job *job = arg;
	job->sts_wait = NULL;
	mta_sts_policy_clear(&job->sts);
	if (policy != NULL && policy->mode != MTA_STS_MODE_NONE &&
	    mta_sts_policy_copy(&job->sts, policy) < 0)
		fatal("relay: out of memory");
	/* RFC 8461 §4.2: STARTTLS, each MX host's certificate verified */
	if (job->sts.mode == MTA_STS_MODE_ENFORCE)
		job->tls = TLS_POLICY_VERIFY;
	if (job->dns != NULL)
		return; /* on_resolved goes on */
	if (job->mx_held != NULL) {
		struct dns_result *mx = job->mx_held;
		job->mx_held = NULL;
		relay_take_answer(job, mx);
		dns_result_free(mx);
		return;
	}
	/* the MX look-up could not start: relay_resolve_next noted why */
	relay_resolve_next(job);
}

/* The MTA-STS policy and the MX look-up start together, so that a first
 * message to a domain pays one DNS round trip, not two in series; the
 * one answered first waits for the other (on_resolved, on_sts_policy).
 * Both callbacks run later, never inside this call. */
void relay_start(struct relay_job *job)
{
	struct relay *relay = job->relay;
	if (relay_sts_applies(relay, job->env, job->routed))
		job->sts_wait =
		    mta_sts_lookup(relay->sts, job->domain, on_sts_policy, job);
	relay_resolve_next(job);
}

/* ---- TLS reports ---- */

/* The RFC 8460 result type of a connection whose TLS failed a policy:
 * the certificate's trouble, STARTTLS missing, or validation-failure
 * (a handshake that failed otherwise, an MX host the policy does not
 * name). */
static enum tlsrpt_result
relay_tls_failure(const struct smtp_client_result *res)
{
	if (res->verify_result != X509_V_OK)
		return tlsrpt_result_of_verify(res->verify_result);
	if (!res->tls && !res->tls_handshake)
		return TLSRPT_STARTTLS_NOT_SUPPORTED;
	return TLSRPT_VALIDATION_FAILURE;
}

/* A connection under DANE that got as far as TLS, for the TLS report:
 * its MX host's TLSA records are the policy. */
static void relay_dane_count(const struct relay_job *job,
			     const struct smtp_client_result *res)
{
	if (!res->tls_step || res->host == NULL)
		return;
	struct tlsrpt_session s = {
	    .type = TLSRPT_POLICY_TLSA,
	    .mx_host = res->host,
	    .tlsa = res->tlsa,
	    .tlsa_count = res->tlsa_count,
	    .result = res->verified ? TLSRPT_SUCCESS : relay_tls_failure(res),
	    .sending_ip = res->local_ip,
	    .receiving_ip = res->peer_ip,
	    .receiving_mx = res->host,
	};
	tlsrpt_count_session(job->relay->srv->tlsrpt, job->domain, &s);
}

/* facteur_tls_policy_total for an attempt under an MTA-STS policy that
 * talked to a server: under enforce, whether TLS was verified; under
 * testing, whether it would have passed enforce. */
static void relay_sts_count(const struct relay_job *job,
			    const struct smtp_client_result *res)
{
	if (job->sts.mode == MTA_STS_MODE_NONE)
		return;
	bool ok = res->verified && (job->sts.mode == MTA_STS_MODE_ENFORCE ||
				    job->sts_mismatched == 0);
	metrics.tls_policy[METRICS_TLS_POLICY_STS]
			  [ok ? METRICS_TLS_POLICY_SUCCESS
			      : METRICS_TLS_POLICY_FAILURE]++;
	struct tlsrpt_session s = {
	    .type = TLSRPT_POLICY_STS,
	    .sts = &job->sts,
	    .result = ok ? TLSRPT_SUCCESS : relay_tls_failure(res),
	    .sending_ip = res->local_ip,
	    .receiving_ip = res->peer_ip,
	    .receiving_mx = res->host,
	};
	tlsrpt_count_session(job->relay->srv->tlsrpt, job->domain, &s);
	if (!ok)
		log_event(LOG_LEVEL_WARN, "mta_sts_failure",
			  LOG_S("queue_id", job->env->id),
			  LOG_S("domain", job->domain),
			  LOG_S("mode", mta_sts_mode_name(job->sts.mode)),
			  LOG_S("relay", res->relay),
			  LOG_S("reason", !res->tls ? "no TLS"
					  : !res->verified
					      ? "certificate not verified"
					      : "MX host not in the policy"));
}

void relay_tls_count(const struct relay_job *job,
		     const struct smtp_client_result *res)
{
	if (res->relay[0] == '\0') /* no server was reached */
		return;
	/* a connection under DANE was DANE's to count (RFC 8461 §2) */
	if (res->dane)
		relay_dane_count(job, res);
	else
		relay_sts_count(job, res);
}
