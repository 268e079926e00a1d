"""MTA-STS (RFC 8461) on the wire: the sending facteurd looks up the
`_mta-sts` TXT record in dnsmasq, fetches the policy from a Python HTTPS
server on 127.0.0.9:443 (mta-sts.DOMAIN resolves there) whose certificate
comes from a test CA (the sender's tls_ca_file), and applies it to the MX
hosts: scripted SMTP servers with STARTTLS on 127.0.0.2 (a certificate of
the test CA) and 127.0.0.3 (one of another CA).

Every domain of the zone plays one case; a test uses its own sender, so
that nothing is cached from another test.
"""

import gzip
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import facteur_harness as h
import relay_harness as rh
import tls_harness as th
from relay_harness import relay, zone  # noqa: F401  (fixtures)

HTTPS_IP = "127.0.0.9"
OTHER_CA_HTTPS_IP = "127.0.0.11"  # a policy server with another CA's certificate
GOOD_MX_IP = "127.0.0.2"      # certificate of the test CA
OTHER_CA_MX_IP = "127.0.0.3"  # certificate of another CA

# domain -> its MX host; the good server's certificate names every MX host
# but mx.wrongname.test
DOMAINS = {
    "good.test": "mx.good.test",
    "nomatch.test": "mx.nomatch.test",
    "badca.test": "mx.badca.test",
    "wrongname.test": "mx.wrongname.test",
    "testing.test": "mx.testing.test",
    "cache.test": "mx.cache.test",
    "fail404.test": "mx.fail404.test",
    "redirect.test": "mx.redirect.test",
    "big.test": "mx.big.test",
    "latin.test": "mx.latin.test",
    "maxage.test": "mx.maxage.test",
    "down.test": "mx.down.test",
    "slowpolicy.test": "mx.slowpolicy.test",
    "notype.test": "mx.notype.test",
    "webpki.test": "mx.webpki.test",
    "slowfetch.test": "mx.slowfetch.test",
    "txtfail.test": "mx.txtfail.test",
    # and mx.badca.test before it (see sts_zone)
    "twomx.test": "mx.twomx.test",
}
# the _mta-sts TXT question of these goes to a server that never answers
TXT_FAILS = {"txtfail.test"}
# seconds the policy server takes over a "delay" answer
FETCH_DELAY = 2
MX_IP = {d: (OTHER_CA_MX_IP if d == "badca.test" else GOOD_MX_IP) for d in DOMAINS}


def policy(mode, *mx, max_age=86400):
    lines = ["version: STSv1", "mode: %s" % mode]
    lines += ["mx: %s" % m for m in mx]
    lines.append("max_age: %d" % max_age)
    return ("\r\n".join(lines) + "\r\n").encode()


# What the HTTPS server answers for each mta-sts host.
def default_answers():
    return {
        "good.test": ("policy", policy("enforce", "mx.good.test")),
        "nomatch.test": ("policy", policy("enforce", "mx1.elsewhere.test")),
        "badca.test": ("policy", policy("enforce", "mx.badca.test")),
        "wrongname.test": ("policy", policy("enforce", "*.wrongname.test")),
        "testing.test": ("policy", policy("testing", "mx.elsewhere.test")),
        "cache.test": ("policy", policy("enforce", "mx.cache.test")),
        # each of these would defer the mail, were it applied
        "fail404.test": ("status", 404),
        "redirect.test": ("redirect", "https://mta-sts.good.test/.well-known/mta-sts.txt"),
        "big.test": ("policy", policy("enforce", "no.match.test") + b"#" * 70000 + b"\r\n"),
        "latin.test": ("policy", policy("enforce", "no.match.test") + b"note: caf\xe9\r\n"),
        "maxage.test": ("policy", policy("enforce", "no.match.test", max_age=31557601)),
        "slowpolicy.test": ("slow", policy("enforce", "no.match.test")),
        "notype.test": ("policy-html", policy("enforce", "no.match.test")),
        "webpki.test": ("policy", policy("enforce", "no.match.test")),
        "slowfetch.test": ("delay", policy("enforce", "mx.slowfetch.test")),
        "twomx.test": ("policy", policy("enforce", "mx.badca.test", "mx.twomx.test")),
    }


# --------------------------------------------------------------------------
# certificates from a test CA

def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def make_ca(directory, name):
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / (name + ".crt"), directory / (name + ".key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=%s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_leaf(directory, ca, name, sans):
    cert, key = directory / (name + ".crt"), directory / (name + ".key")
    csr, ext = directory / (name + ".csr"), directory / (name + ".ext")
    ext.write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n"
                   % ",".join("DNS:%s" % s for s in sans))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=%s" % sans[0], "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "facteur-test-ca")
    other = make_ca(d, "some-other-ca")
    mx_names = [m for dom, m in DOMAINS.items() if dom != "wrongname.test"]
    return {
        "ca": ca[0],
        "mx": make_leaf(d, ca, "mx", mx_names),
        "other_mx": make_leaf(d, other, "other-mx", ["mx.badca.test"]),
        "other_https": make_leaf(d, other, "other-https", ["mta-sts.webpki.test"]),
        "https": make_leaf(d, ca, "https", ["mta-sts.%s" % dom for dom in DOMAINS]),
    }


# --------------------------------------------------------------------------
# the zone: MX and A records, and the _mta-sts TXT records

class StsDnsmasq(rh.Dnsmasq):
    def __init__(self, workdir, txt, forward=(), **kw):
        super().__init__(workdir, **kw)
        self.txt = dict(txt)
        self.forward = list(forward)

    def args(self):
        a = super().args()
        for name, text in self.txt.items():
            a.append("--txt-record=%s,%s" % (name, text))
        for name, server in self.forward:
            a.append("--server=/%s/%s" % (name, server))
        return a


def sts_zone(workdir, mute_port, ids=None, port=None, rua=None):
    ids = dict(ids or {})
    mx, hosts, txt = [], [], {}
    # twomx.test's first MX host has another CA's certificate
    mx.append(("twomx.test", "mx.badca.test", 5))
    for dom, host in DOMAINS.items():
        mx.append((dom, host, 10))
        hosts.append((host, MX_IP[dom]))
        # down.test's mta-sts host has an address where nothing listens
        hosts.append(("mta-sts." + dom, {"down.test": "127.0.0.10",
                                         "webpki.test": OTHER_CA_HTTPS_IP}.get(dom, HTTPS_IP)))
        if dom not in TXT_FAILS:
            txt["_mta-sts." + dom] = "v=STSv1; id=%s;" % ids.get(dom, "1")
    # TLS reports for these go to the sender's own domain; nomatch.test
    # publishes none
    for dom in ("good.test", "testing.test", "badca.test", "wrongname.test",
                "twomx.test"):
        # (dnsmasq cuts a record into strings at each comma: one URI)
        txt["_smtp._tls." + dom] = "v=TLSRPTv1; rua=%s" % (
            (rua or {}).get(dom) or "mailto:reports@%s" % rh.SENDER_DOMAIN)
    forward = [("_mta-sts." + dom, "127.0.0.1#%d" % mute_port) for dom in TXT_FAILS]
    return StsDnsmasq(workdir, txt, forward=forward, mx=mx, hosts=hosts, port=port)


# --------------------------------------------------------------------------
# the policy server

class PolicyServer:
    """HTTPS on HTTPS_IP:443; `answers` maps a domain to what
    mta-sts.DOMAIN/.well-known/mta-sts.txt gets. `fetches` counts the
    requests per domain. A "delay" answer comes after FETCH_DELAY seconds,
    when `before_answer(domain)`, if set, has run."""

    def __init__(self, cert, key, ip=HTTPS_IP):
        self.answers = default_answers()
        self.fetches = {}
        self.posts = []  # (path, headers, body) of each POST
        self.before_answer = None
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                dom = host[len("mta-sts."):] if host.startswith("mta-sts.") else host
                with outer.lock:
                    outer.fetches[dom] = outer.fetches.get(dom, 0) + 1
                    kind, value = outer.answers.get(dom, ("status", 404))
                if self.path != "/.well-known/mta-sts.txt":
                    kind, value = "status", 404
                if kind == "status":
                    self.send_response(value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "redirect":
                    self.send_response(301)
                    self.send_header("Location", value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "slow":
                    time.sleep(13)
                if kind == "delay":
                    time.sleep(FETCH_DELAY)
                    if outer.before_answer is not None:
                        outer.before_answer(dom)
                ctype = "text/html" if kind == "policy-html" else "text/plain; charset=utf-8"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(value)))
                self.end_headers()
                try:
                    self.wfile.write(value)
                except OSError:
                    pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.posts.append((self.path, dict(self.headers), body))
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server((ip, 443), Handler, bind_and_activate=False)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.server_bind()
        self.httpd.server_activate()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def sts(relay, pki, tmp_path):  # noqa: F811
    env = StsEnv(relay, pki, tmp_path)
    yield env
    env.close()


class StsEnv:
    def __init__(self, relay, pki, tmp):  # noqa: F811
        self.relay = relay
        self.pki = pki
        self.tmp = tmp
        # bound and never read: a DNS server that does not answer
        self.mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.mute.bind(("127.0.0.1", 0))
        self.dns = sts_zone(tmp / "dns", self.mute.getsockname()[1]).start()
        self.https = PolicyServer(*pki["https"])
        self.other_ca_https = PolicyServer(*pki["other_https"], ip=OTHER_CA_HTTPS_IP)
        self.good = relay.scripted(GOOD_MX_IP, name="mx.good.test",
                                   cert=pki["mx"][0], key=pki["mx"][1])
        self.other_ca = relay.scripted(OTHER_CA_MX_IP, name="mx.badca.test",
                                       cert=pki["other_mx"][0], key=pki["other_mx"][1])
        self.metrics_port = None

    def sender(self, start=True, **config):
        self.metrics_port = h.free_port()
        cfg = {"tls_outbound": "may", "tls_ca_file": str(self.pki["ca"]),
               "metrics_listen": "127.0.0.1:%d" % self.metrics_port,
               "retry_min": "2s", "retry_max": "4s"}
        cfg.update(config)
        return self.relay.sender(config=cfg, dns=self.dns, start=start)

    def restart_dns(self, ids, rua=None):
        port = self.dns.port
        self.dns.stop()
        self.dns = sts_zone(self.tmp / "dns", self.mute.getsockname()[1], ids=ids,
                            port=port, rua=rua).start()

    def metric(self, result):
        m = th.metrics(self.metrics_port)
        return m.get('facteur_tls_policy_total{policy="sts",result="%s"}' % result, 0)

    def close(self):
        self.https.stop()
        self.other_ca_https.stop()
        self.dns.stop()
        self.mute.close()


def outcome(d, rcpt, event, timeout=rh.RELAY_TIMEOUT):
    return rh.wait_relay_event(d, event, timeout=timeout, rcpt=rcpt)


# --------------------------------------------------------------------------

def test_enforce_matching_mx_with_valid_certificate_is_delivered(sts):
    d = sts.sender()
    rcpt = "user@good.test"
    _, tok = rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "sts-enforce", e
    assert e["verified"] == "yes", e
    assert e["tls"].startswith("TLSv1"), e
    p = d.wait_event("mta_sts_policy", domain="good.test")[0]
    assert (p["mode"], p["id"], p["max_age"]) == ("enforce", "1", "86400"), p
    assert tok in rh.tokens_in([m.data for m in sts.good.messages])
    assert sts.metric("success") >= 1
    # cached on disk, for the next run
    assert (d.spool / "mta-sts" / "good.test").is_file()


def test_mx_lookup_overlaps_a_slow_policy_fetch(sts):
    """The MX look-up goes out with the _mta-sts TXT one, not after the
    policy: when the policy server answers, FETCH_DELAY seconds after the
    request, dnsmasq has already logged the MX question; the mail then
    goes under the policy."""
    mx_queries = {}
    sts.https.before_answer = lambda dom: mx_queries.setdefault(
        dom, sts.dns.queries(dom, "MX"))
    d = sts.sender()
    rcpt = "user@slowfetch.test"
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "sts-enforce", e
    assert e["verified"] == "yes", e
    assert sts.https.fetches["slowfetch.test"] == 1
    assert mx_queries.get("slowfetch.test", 0) >= 1, (mx_queries, sts.dns.log_tail())


def test_failed_txt_lookup_means_no_policy_and_the_mail_goes(sts):
    """The TXT question gets no answer (c-ares gives up after about 6 s):
    the MX answer, there long before, waits for the policy look-up to end
    without a policy, then the mail goes as without MTA-STS."""
    d = sts.sender()
    rcpt = "user@txtfail.test"
    rh.inject(d, [rcpt])
    h.wait_for(lambda: sts.dns.queries("txtfail.test", "MX") >= 1, 5,
               what="the MX question, before the TXT look-up fails")
    assert sts.dns.queries("_mta-sts.txtfail.test", "TXT") >= 1
    assert not d.events("delivered", rcpt=rcpt), d.log_tail()
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "none", e
    assert "txtfail.test" not in sts.https.fetches
    assert [m for m in sts.good.messages if rcpt in m.rcpts]


def test_stop_while_the_mx_answer_waits_for_the_policy(sts):
    """SIGTERM while the MX answer is kept for a policy look-up still
    running: the attempt is dropped cleanly (exit status 0, nothing left
    for the leak checker) and the mail goes after the restart."""
    d = sts.sender()
    rcpt = "user@txtfail.test"
    rh.inject(d, [rcpt])
    h.wait_for(lambda: sts.dns.queries("mx.txtfail.test", "A") >= 1, 5,
               what="the MX host's address question")
    time.sleep(0.3)  # its answer, and so the whole MX answer, is in
    assert not d.events("delivered", rcpt=rcpt), d.log_tail()
    d.restart()
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "none", e


def test_enforce_without_a_matching_mx_is_deferred_and_counted(sts):
    d = sts.sender()
    rcpt = "user@nomatch.test"
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "deferred")
    assert e["tls_policy"] == "sts-enforce", e
    assert "MTA-STS" in e["reason"] and e["dsn"] == "4.7.0", e
    d.wait_event("mta_sts_mx_mismatch", domain="nomatch.test", mx="mx.nomatch.test")
    d.wait_event("mta_sts_failure", domain="nomatch.test")
    assert sts.metric("failure") >= 1
    assert not [m for m in sts.good.messages if rcpt in m.rcpts]


def test_tls_required_no_sets_the_policy_aside(sts):
    """RFC 8689 §5: a message whose sender wrote "TLS-Required: No" is
    delivered as if the domain published no policy (nomatch.test's
    enforce policy names none of its MX hosts)."""
    d = sts.sender()
    rcpt = "user@nomatch.test"
    tok = rh.token()
    data = h.make_message(subject="tls-required %s" % tok, body="token=%s\r\n" % tok,
                          sender=rh.SENDER, to=rcpt, extra_headers=["TLS-Required: No"])
    qid = d.send(sender=rh.SENDER, recipients=[rcpt], data=data)
    e = rh.wait_relay_event(d, "delivered", queue_id=qid)
    assert e["tls_policy"] == "none", e
    assert tok in rh.tokens_in([m.data for m in sts.good.messages])
    assert not d.events("mta_sts_policy"), d.log_tail()


@pytest.mark.parametrize("domain", ["badca.test", "wrongname.test"])
def test_enforce_with_a_bad_certificate_is_deferred(sts, domain):
    d = sts.sender()
    rcpt = "user@" + domain
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "deferred")
    assert e["tls_policy"] == "sts-enforce", e
    assert "certificate" in e["reason"], e
    assert e["dsn"] == "4.7.5", e
    server = sts.other_ca if domain == "badca.test" else sts.good
    assert not [m for m in server.messages if rcpt in m.rcpts]
    h.wait_for(lambda: sts.metric("failure") >= 1, 10, what="failure counted")


def test_testing_mode_delivers_and_counts_the_failure(sts):
    d = sts.sender()
    rcpt = "user@testing.test"
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "sts-testing", e
    d.wait_event("mta_sts_mx_mismatch", domain="testing.test", mode="testing")
    f = d.wait_event("mta_sts_failure", domain="testing.test")[0]
    assert f["reason"] == "MX host not in the policy", f
    assert sts.metric("failure") >= 1
    assert sts.metric("success") == 0


FAILING = {
    "fail404.test": "HTTP 404",
    "redirect.test": "redirect",
    "big.test": "larger than",
    "latin.test": "UTF-8",
    "maxage.test": "max_age",
    "down.test": "no HTTPS answer",
    "slowpolicy.test": "within 10 s",
    "notype.test": "text/plain",
    "webpki.test": "certificate of mta-sts.webpki.test",
}


def test_failed_fetch_without_a_cached_policy_means_no_policy(sts):
    """Each of these policies would defer the mail had it been applied:
    delivered, the fetch's failure logged with its reason."""
    d = sts.sender()
    rcpts = ["user@" + dom for dom in FAILING]
    rh.inject(d, rcpts)
    for dom, why in FAILING.items():
        rcpt = "user@" + dom
        e = outcome(d, rcpt, "delivered", timeout=rh.RELAY_TIMEOUT + 20)
        assert e["tls_policy"] == "none", e
        err = d.wait_event("mta_sts_error", domain=dom)[0]
        assert why in err["reason"], (dom, err)
        assert err["cached"] == "no", err
        assert err["type"] == ("sts-webpki-invalid" if dom == "webpki.test"
                               else "sts-policy-invalid" if dom in
                               ("latin.test", "maxage.test")
                               else "sts-policy-fetch-error"), err
    assert not d.events("mta_sts_policy")


def test_cache_id_change_and_restart(sts):
    d = sts.sender()
    rcpt = "user@cache.test"
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "sts-enforce", e
    assert sts.https.fetches["cache.test"] == 1

    # a new id, and the policy server fails: the cached policy holds
    sts.https.answers["cache.test"] = ("status", 500)
    sts.restart_dns({"cache.test": "2"})
    d.restart()
    qid, _ = rh.inject(d, [rcpt])
    err = d.wait_event("mta_sts_error", domain="cache.test")[0]
    assert "HTTP 500" in err["reason"] and err["cached"] == "yes", err
    h.wait_for(lambda: len(d.events("delivered", rcpt=rcpt, queue_id=qid)) == 1,
               rh.RELAY_TIMEOUT, what="second delivery")
    assert d.events("delivered", queue_id=qid)[0]["tls_policy"] == "sts-enforce"
    assert sts.https.fetches["cache.test"] == 2

    # a new id, a new policy: it applies at once
    sts.https.answers["cache.test"] = ("policy", policy("testing", "mx.cache.test"))
    sts.restart_dns({"cache.test": "3"})
    d.restart()
    qid, _ = rh.inject(d, [rcpt])
    p = d.wait_event("mta_sts_policy", domain="cache.test", id="3")[0]
    assert p["mode"] == "testing", p
    h.wait_for(lambda: d.events("delivered", queue_id=qid), rh.RELAY_TIMEOUT,
               what="third delivery")
    assert d.events("delivered", queue_id=qid)[0]["tls_policy"] == "sts-testing"

    # the policy server gone, the same id: the cache survives a restart
    sts.https.answers["cache.test"] = ("status", 404)
    d.restart()
    qid, _ = rh.inject(d, [rcpt])
    h.wait_for(lambda: d.events("delivered", queue_id=qid), rh.RELAY_TIMEOUT,
               what="fourth delivery")
    assert d.events("delivered", queue_id=qid)[0]["tls_policy"] == "sts-testing"
    assert sts.https.fetches["cache.test"] == 3
    assert len(d.events("mta_sts_error", domain="cache.test")) == 1


def test_many_messages_fetch_the_policy_once(sts):
    d = sts.sender()
    rcpt = "user@good.test"
    qids = [rh.inject(d, [rcpt])[0] for _ in range(5)]
    h.wait_for(lambda: all(d.events("delivered", queue_id=q) for q in qids),
               rh.RELAY_TIMEOUT, what="five deliveries")
    assert sts.https.fetches["good.test"] == 1


def test_routes_and_mta_sts_no_ignore_policies(sts):
    d = sts.sender(mta_sts="no")
    rcpt = "user@nomatch.test"
    rh.inject(d, [rcpt])
    e = outcome(d, rcpt, "delivered")
    assert e["tls_policy"] == "none", e
    assert "nomatch.test" not in sts.https.fetches

    d2 = sts.sender(route="nomatch.test [mx.nomatch.test]:%d" % sts.relay.port)
    rh.inject(d2, [rcpt])
    e = outcome(d2, rcpt, "delivered")
    assert e["tls_policy"] == "none", e
    assert "nomatch.test" not in sts.https.fetches


def test_tls_report_counts_sessions_and_is_mailed(sts):
    d = sts.sender(tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    # tlsrpt send without tlsrpt_from is refused: another sender
    r = th.facteurctl(d, "tlsrpt", "bogus")
    assert r.returncode != 0
    good = [rh.inject(d, ["a@good.test"])[0] for _ in range(2)]
    bad, _ = rh.inject(d, ["b@nomatch.test"])
    testing, _ = rh.inject(d, ["c@testing.test"])
    h.wait_for(lambda: all(d.events("delivered", queue_id=q) for q in good + [testing])
               and d.events("deferred", queue_id=bad), rh.RELAY_TIMEOUT,
               what="the deliveries")
    # the counts outlive a restart
    d.restart()
    h.wait_for(lambda: (d.spool / "tlsrpt").is_file(), 10, what="the counts file")
    r = th.facteurctl(d, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    msgs = d.wait_messages("reports@" + rh.SENDER_DOMAIN, 2, rh.RELAY_TIMEOUT)
    reports = {}
    for raw in msgs:
        msg, rep = th.tlsrpt_report_of(raw)
        dom = rep["policies"][0]["policy"]["policy-domain"]
        reports[dom] = (msg, rep)
        assert msg["TLS-Report-Domain"] == dom
        assert msg["TLS-Report-Submitter"] == "sender.test"
        assert msg["Subject"].startswith(
            "Report Domain: %s Submitter: sender.test Report-ID: <" % dom), msg["Subject"]
        assert rep["organization-name"] == "sender.test"
        assert rep["contact-info"] == "tlsrpt@sender.test"
        assert set(rep["date-range"]) == {"start-datetime", "end-datetime"}
    assert set(reports) == {"good.test", "testing.test"}
    g = reports["good.test"][1]["policies"][0]
    assert g["policy"]["policy-type"] == "sts"
    assert "mode: enforce" in g["policy"]["policy-string"]
    assert g["policy"]["mx-host"] == ["mx.good.test"]
    assert g["summary"]["total-successful-session-count"] == 2, g
    assert g["summary"]["total-failure-session-count"] == 0, g
    t = reports["testing.test"][1]["policies"][0]
    assert t["summary"]["total-failure-session-count"] == 1, t
    # the certificate is good, the MX host is not in the policy
    [f] = t["failure-details"]
    assert f["result-type"] == "validation-failure", t
    assert f["receiving-mx-hostname"] == "mx.testing.test", t
    assert f["receiving-ip"] == GOOD_MX_IP, t
    assert f["sending-mta-ip"].startswith("127."), t
    assert f["failed-session-count"] == 1, t
    # nomatch.test publishes no TLSRPT record: logged, not mailed
    d.wait_event("tlsrpt_error", domain="nomatch.test")
    assert len(d.events("tlsrpt_sent")) == 2


def test_tls_report_is_posted_to_an_https_rua(sts):
    """An https: rua gets the report POSTed, gzip'd, over verified TLS
    (RFC 8460 §5.4); an answer other than 2xx is logged, not retried."""
    d = sts.sender(tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    sts.restart_dns({}, rua={"good.test": "https://mta-sts.good.test/v1/tlsrpt",
                             "testing.test": "https://mta-sts.good.test/fail"})
    good, _ = rh.inject(d, ["a@good.test"])
    testing, _ = rh.inject(d, ["c@testing.test"])
    h.wait_for(lambda: d.events("delivered", queue_id=good)
               and d.events("delivered", queue_id=testing), rh.RELAY_TIMEOUT,
               what="the deliveries")
    r = th.facteurctl(d, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    [sent] = d.wait_event("tlsrpt_sent", domain="good.test", timeout=rh.RELAY_TIMEOUT)
    assert sent["to"] == "https://mta-sts.good.test/v1/tlsrpt", sent
    assert sent["status"] == "200", sent
    [err] = d.wait_event("tlsrpt_error", domain="testing.test", timeout=rh.RELAY_TIMEOUT)
    assert err["to"] == "https://mta-sts.good.test/fail" and err["reason"] == "HTTP 500", err
    with sts.https.lock:
        posts = {path: (headers, body) for path, headers, body in sts.https.posts}
    assert set(posts) == {"/v1/tlsrpt", "/fail"}, posts.keys()
    headers, body = posts["/v1/tlsrpt"]
    assert headers["Content-Type"] == "application/tlsrpt+gzip", headers
    assert headers["Host"] == "mta-sts.good.test", headers
    rep = json.loads(gzip.decompress(body))
    [p] = rep["policies"]
    assert p["policy"]["policy-domain"] == "good.test", rep
    assert p["summary"]["total-successful-session-count"] == 1, rep
    assert rep["contact-info"] == "tlsrpt@sender.test"
    # nothing mailed, nothing retried
    time.sleep(2)
    assert len(sts.https.posts) == 2
    assert not d.events("tlsrpt_sent", domain="testing.test")


def test_tls_report_counts_each_connection_of_an_attempt(sts):
    """A connection given up for the next MX host is a session of its own
    in the report (RFC 8460 counts sessions): the first MX host's
    untrusted certificate is a failure, the second host's delivery a
    success, both of the one attempt."""
    d = sts.sender(tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    qid, _ = rh.inject(d, ["a@twomx.test"])
    e = outcome(d, "a@twomx.test", "delivered")
    assert e["relay"].startswith("mx.twomx.test["), e
    r = th.facteurctl(d, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    [raw] = d.wait_messages("reports@" + rh.SENDER_DOMAIN, 1, rh.RELAY_TIMEOUT)
    _, rep = th.tlsrpt_report_of(raw)
    [p] = rep["policies"]
    assert p["policy"]["policy-domain"] == "twomx.test", rep
    assert p["summary"] == {"total-successful-session-count": 1,
                            "total-failure-session-count": 1}, p
    [f] = p["failure-details"]
    assert f["result-type"] == "certificate-not-trusted", f
    assert f["receiving-mx-hostname"] == "mx.badca.test", f
    assert f["receiving-ip"] == OTHER_CA_MX_IP, f
    assert f["failed-session-count"] == 1, f


def test_tls_report_names_the_certificate_trouble(sts):
    """Under enforce, a certificate of another CA is reported as
    certificate-not-trusted, one that does not name the MX host as
    certificate-host-mismatch, with the addresses of the sessions."""
    d = sts.sender(tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    rcpts = {"badca.test": "a@badca.test", "wrongname.test": "b@wrongname.test"}
    qids = {dom: rh.inject(d, [r])[0] for dom, r in rcpts.items()}
    h.wait_for(lambda: all(d.events("deferred", queue_id=q) for q in qids.values()),
               rh.RELAY_TIMEOUT, what="the deferrals")
    r = th.facteurctl(d, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    msgs = d.wait_messages("reports@" + rh.SENDER_DOMAIN, 2, rh.RELAY_TIMEOUT)
    want = {"badca.test": ("certificate-not-trusted", OTHER_CA_MX_IP),
            "wrongname.test": ("certificate-host-mismatch", GOOD_MX_IP)}
    seen = set()
    for raw in msgs:
        _, rep = th.tlsrpt_report_of(raw)
        [p] = rep["policies"]
        dom = p["policy"]["policy-domain"]
        seen.add(dom)
        assert p["policy"]["policy-type"] == "sts", p
        assert p["summary"]["total-successful-session-count"] == 0, p
        failed = p["summary"]["total-failure-session-count"]
        assert failed >= 1, p
        result, ip = want[dom]
        assert [f["result-type"] for f in p["failure-details"]] == [result], p
        [f] = p["failure-details"]
        assert f["receiving-mx-hostname"] == DOMAINS[dom], p
        assert f["receiving-ip"] == ip, p
        assert f["sending-mta-ip"].startswith("127."), p
        assert f["failed-session-count"] == failed, p
    assert seen == set(want)


def test_tls_report_reads_counts_of_the_earlier_form(sts):
    """A counts file written before policies had lines of their own
    ("DOMAIN C0 ... C5 MODE MAX_AGE MX", six counts in the order of then:
    success, starttls-not-supported, validation-failure and the three
    sts-* types) is read and reported."""
    d = sts.sender(tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN, start=False)
    d.spool.mkdir(parents=True, exist_ok=True)
    (d.spool / "tlsrpt").write_text(
        "start 1796601600\ngood.test 3 1 2 0 4 0 enforce 86400 mx.good.test\n")
    d.start()
    r = th.facteurctl(d, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    [raw] = d.wait_messages("reports@" + rh.SENDER_DOMAIN, 1, rh.RELAY_TIMEOUT)
    _, rep = th.tlsrpt_report_of(raw)
    [p] = rep["policies"]
    assert p["policy"]["policy-type"] == "sts", p
    assert p["policy"]["mx-host"] == ["mx.good.test"], p
    assert p["summary"] == {"total-successful-session-count": 3,
                            "total-failure-session-count": 7}, p
    assert p["failure-details"] == [
        {"result-type": "starttls-not-supported", "failed-session-count": 1},
        {"result-type": "validation-failure", "failed-session-count": 2},
        {"result-type": "sts-policy-invalid", "failed-session-count": 4},
    ], p
    assert not d.events("tlsrpt_error", reason="bad line in the counts")
