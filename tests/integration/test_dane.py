"""DANE for outbound SMTP (RFC 7672): `dane = yes` with a real validating
resolver.

The resolver is Debian's unbound on a loopback port. It serves the test's
own zone `dane.test.`, signed by the test (ldns-keygen + ldns-signzone), as
an `auth-zone:` with `for-upstream: yes` (so that its answers go through
the validator like fetched data) and `for-downstream: no`, and validates it
against the zone's KSK given as `trust-anchor-file:`. Two details make this
work: `local-zone: "test." nodefault` (unbound answers NXDOMAIN for the
special-use TLD `test.` otherwise) and `root-hints: ""` with no network. A
second, unsigned zone `insecure.test.` is an auth-zone too, marked
`domain-insecure:`, so that its answers come back without the AD bit.

Every MX host points at one receiving facteurd on 127.0.0.2 with a
certificate signed by the test's CA (chain in the file, so that DANE-TA
finds the CA), for every MX name. facteurd asks with the AD bit set in its
queries (RFC 6840 §5.7), and unbound sets AD in secure answers.
"""
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import facteur_harness as h
import relay_harness as rh
import tls_harness as th

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
LDNS_KEYGEN = shutil.which("ldns-keygen") or "/usr/bin/ldns-keygen"
LDNS_SIGNZONE = shutil.which("ldns-signzone") or "/usr/bin/ldns-signzone"
T = rh.RELAY_TIMEOUT
SINK = "127.0.0.2"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(UNBOUND) and os.path.exists(LDNS_SIGNZONE)),
    reason="unbound and ldnsutils are needed (scripts/install-deps.sh)")

# domain -> its MX host (in dane.test. unless said)
DOMAINS = {
    "ee.dane.test": "mx-ee.dane.test",         # 3 1 1 of the sink's key
    "bad.dane.test": "mx-bad.dane.test",       # 3 1 1 of another key
    "ta.dane.test": "mx-ta.dane.test",         # 2 0 1 of the test CA
    "len.dane.test": "mx-len.dane.test",       # 3 1 1 with 31 octets only
    "bogus.dane.test": "mx-bogus.dane.test",   # TLSA changed after signing
    "plain.dane.test": "mx-plain.dane.test",   # signed, no TLSA
    "insecure.test": "mx.insecure.test",       # unsigned zone, TLSA present
}


def run(args, **kw):
    r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120, **kw)
    assert r.returncode == 0, "%s failed: %s" % (args[0], r.stderr.decode("utf-8", "replace"))
    return r.stdout


def der_of_cert(pem):
    return run(["openssl", "x509", "-in", str(pem), "-outform", "DER"])


def spki_of_cert(pem):
    pub = run(["openssl", "x509", "-in", str(pem), "-noout", "-pubkey"])
    p = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def make_ca_and_leaf(d):
    """A CA, and a leaf signed by it for every MX name; the leaf file holds
    the chain (leaf then CA)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
         "/CN=facteur test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(ca_key), "-out", str(ca_crt)])
    key, csr, crt = d / "mx.key", d / "mx.csr", d / "mx.crt"
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=mx-ee.dane.test",
         "-keyout", str(key), "-out", str(csr)])
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=%s\n" % ",".join("DNS:" + m for m in DOMAINS.values()))
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey",
         str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
         "-out", str(crt)])
    chain = d / "mx-chain.crt"
    chain.write_text(crt.read_text() + ca_crt.read_text())
    return ca_crt, crt, chain, key


class Unbound:
    """unbound on 127.0.0.1:<port>, validating the signed dane.test. zone it
    serves itself, and serving the unsigned insecure.test. zone."""

    def __init__(self, workdir, port_for_tlsa, leaf, ca):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = rh.free_dns_port()
        self.proc = None
        self._zones(port_for_tlsa, leaf, ca)

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def _zones(self, port, leaf, ca):
        ee = hashlib.sha256(spki_of_cert(leaf)).hexdigest()
        self.ee = ee
        ta = hashlib.sha256(der_of_cert(ca)).hexdigest()
        other = hashlib.sha256(b"some other key").hexdigest()
        tlsa = "_%d._tcp" % port
        lines = [
            "$ORIGIN dane.test.", "$TTL 300",
            "@ IN SOA ns.dane.test. admin.dane.test. 1 3600 600 86400 300",
            "@ IN NS ns.dane.test.", "ns IN A 127.0.0.1",
        ]
        for domain, mx in DOMAINS.items():
            if domain.endswith(".dane.test"):
                label = domain[:-len(".dane.test")]
                host = mx[:-len(".dane.test")]
                lines += ["%s IN MX 10 %s." % (label, mx), "%s IN A %s" % (host, SINK)]
        # two.dane.test: the mismatching host first, then the matching one
        lines += ["two IN MX 5 mx-bad.dane.test.", "two IN MX 10 mx-ee.dane.test."]
        lines += [
            "%s.mx-ee IN TLSA 3 1 1 %s" % (tlsa, ee),
            "%s.mx-bad IN TLSA 3 1 1 %s" % (tlsa, other),
            "%s.mx-ta IN TLSA 2 0 1 %s" % (tlsa, ta),
            "%s.mx-len IN TLSA 3 1 1 %s" % (tlsa, ee[:62]),
            "%s.mx-bogus IN TLSA 3 1 1 %s" % (tlsa, ee),
        ]
        # TLS reports (RFC 8460) of these go to the sender's own domain
        for label in ("ee", "bad", "bogus", "two"):
            lines.append('_smtp._tls.%s IN TXT "v=TLSRPTv1; rua=mailto:reports@%s"'
                         % (label, rh.SENDER_DOMAIN))
        zone = self.dir / "dane.test.zone"
        zone.write_text("\n".join(lines) + "\n")
        ksk = run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "-k", "dane.test"],
                  cwd=self.dir).decode().strip()
        zsk = run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "dane.test"],
                  cwd=self.dir).decode().strip()
        run([LDNS_SIGNZONE, str(zone), ksk, zsk], cwd=self.dir)
        signed = self.dir / "dane.test.zone.signed"
        # A bogus answer: the record changed after it was signed.
        text = signed.read_text()
        bogus = re.compile(r"^(%s\.mx-bogus\.dane\.test\.\s.*TLSA\s+3 1 1 )(\S+)$"
                           % re.escape(tlsa), re.M)
        assert bogus.search(text), text
        signed.write_text(bogus.sub(lambda m: m.group(1) + other, text))
        self.trust_anchor = self.dir / (ksk + ".ds")
        (self.dir / "insecure.test.zone").write_text("\n".join([
            "$ORIGIN insecure.test.", "$TTL 300",
            "@ IN SOA ns.insecure.test. admin.insecure.test. 1 3600 600 86400 300",
            "@ IN NS ns.insecure.test.", "ns IN A 127.0.0.1",
            "@ IN MX 10 mx.insecure.test.", "mx IN A %s" % SINK,
            "%s.mx IN TLSA 3 1 1 %s" % (tlsa, other),
        ]) + "\n")

    def config(self):
        d = self.dir
        return "\n".join([
            "server:",
            "  interface: 127.0.0.1@%d" % self.port,
            "  port: %d" % self.port,
            "  do-daemonize: no", "  username: \"\"", "  chroot: \"\"",
            "  directory: \"%s\"" % d, "  pidfile: \"\"", "  use-syslog: no",
            "  logfile: \"%s\"" % (d / "unbound.log"),
            "  verbosity: 1", "  val-log-level: 2",
            "  access-control: 127.0.0.0/8 allow", "  do-ip6: no",
            "  module-config: \"validator iterator\"",
            "  trust-anchor-file: \"%s\"" % self.trust_anchor,
            "  root-hints: \"\"",
            "  local-zone: \"test.\" nodefault",
            "  domain-insecure: \"insecure.test\"",
            "auth-zone:", "  name: \"dane.test\"",
            "  zonefile: \"%s\"" % (d / "dane.test.zone.signed"),
            "  for-upstream: yes", "  for-downstream: no", "  fallback-enabled: no",
            "auth-zone:", "  name: \"insecure.test\"",
            "  zonefile: \"%s\"" % (d / "insecure.test.zone"),
            "  for-upstream: yes", "  for-downstream: no", "  fallback-enabled: no",
        ]) + "\n"

    def start(self, timeout=20.0):
        conf = self.dir / "unbound.conf"
        conf.write_text(self.config())
        log = open(self.dir / "stderr.log", "ab")
        try:
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        rh._PROCS.append(self.proc)

        def ready():
            if self.proc.poll() is not None:
                raise h.HarnessError("unbound exited with %s:\n%s" % (
                    self.proc.returncode, (self.dir / "stderr.log").read_text()))
            answer = rh.dns_query(self.port, "mx-ee.dane.test", "A", timeout=0.5)
            return answer is not None and answer[0] == 0 and answer[1] == 1
        h.wait_for(ready, timeout, what="unbound on port %d" % self.port)

    # stopped by PID as the harness stops dnsmasq
    alive = rh.Dnsmasq.alive
    stop = rh.Dnsmasq.stop


@pytest.fixture(scope="module")
def dane_world(tmp_path_factory):
    """(unbound, mx port, chain, key): the zone's TLSA names carry the port
    that the sender's mx_port and the receiver use in every test."""
    base = tmp_path_factory.mktemp("dane")
    port = rh.free_common_port()
    ca, leaf, chain, key = make_ca_and_leaf(base / "certs")
    ub = Unbound(base / "unbound", port, leaf, ca)
    ub.start()
    yield ub, port, chain, key
    ub.stop()


@pytest.fixture
def world(make_daemon, tmp_path, dane_world):
    ub, port, chain, key = dane_world
    env = rh.RelayEnv(make_daemon, tmp_path, ub)
    env.port = port
    env.chain, env.key = chain, key
    yield env
    env.close()


def receiver(world):
    return world.receiver(SINK, ", ".join(list(DOMAINS) + ["two.dane.test"]),
                          config={"tls_cert": str(world.chain), "tls_key": str(world.key)})


def dane_sender(world, **config):
    cfg = {"dane": "yes", "tls_outbound": "may"}
    cfg.update(config)
    return world.sender(config=cfg)


def stats(d):
    r = subprocess.run([str(rh.FACTEURCTL), "-c", str(d.conf_path), "stats"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.decode().splitlines():
        name, _, value = line.rpartition(" ")
        out[name] = value
    return out


def dane_count(d, result):
    return int(stats(d).get('facteur_tls_policy_total{policy="dane",result="%s"}'
                            % result, "-1"))


def delivered_through(world, rcpt, rcv=None):
    """Send to `rcpt` with dane = yes; it must arrive: (sender, the
    delivered line)."""
    rcv = rcv or receiver(world)
    sender = dane_sender(world)
    assert dane_count(sender, "success") == 0
    qid, tok = rh.inject(sender, [rcpt])
    assert rh.tokens_in(rcv.wait_messages(rcpt, 1, T)) == [tok]
    return sender, rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_dane_ee_match_delivers_verified(world):
    sender, ev = delivered_through(world, "user@ee.dane.test")
    assert ev.get("tls_policy") == "dane", ev
    assert ev.get("verified") == "yes", ev
    assert ev.get("tls", "").startswith("TLSv1"), ev
    t = sender.events("dane_tlsa", host="mx-ee.dane.test")
    assert t and t[0]["state"] == "verify" and t[0]["usable"] == "1", t
    assert dane_count(sender, "success") >= 1


def test_dane_ta_of_the_test_ca_delivers_verified(world):
    sender, ev = delivered_through(world, "user@ta.dane.test")
    assert dane_count(sender, "success") >= 1
    assert (ev.get("tls_policy"), ev.get("verified")) == ("dane", "yes"), ev


def test_dane_ee_mismatch_defers_logs_and_counts(world):
    rcv = receiver(world)
    sender = dane_sender(world)
    qid, _ = rh.inject(sender, ["user@bad.dane.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert ev.get("tls_policy") == "dane" and ev.get("verified") == "no", ev
    assert "DANE verification failed" in ev.get("reason", ""), ev
    fail = sender.wait_event("tls_policy_failed", tls_policy="dane")[0]
    assert fail.get("verified") == "no" and fail.get("reason"), fail
    assert dane_count(sender, "failure") >= 1
    assert rcv.maildir_messages("user@bad.dane.test") == []


def test_dane_bogus_tlsa_defers_and_never_sends(world):
    rcv = receiver(world)
    sender = dane_sender(world)
    qid, _ = rh.inject(sender, ["user@bogus.dane.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    # unbound answers SERVFAIL (c-ares may word it as its own failure)
    assert "TLSA look-up failed" in ev.get("reason", ""), ev
    ub_log = (world.zone.dir / "unbound.log").read_text()
    assert re.search(r"validation failure <_\d+\._tcp\.mx-bogus\.dane\.test\. TLSA",
                     ub_log), ub_log[-2000:]
    t = sender.events("dane_tlsa", host="mx-bogus.dane.test")
    assert t and t[0]["state"] == "failed", t
    assert dane_count(sender, "failure") >= 1
    # the host was not tried at all, neither in the clear nor under TLS
    assert stats(sender)["facteur_relay_connections_total"] == "0"
    assert rcv.maildir_messages("user@bogus.dane.test") == []


def test_dane_tlsa_of_bad_length_is_unusable_tls_still_mandatory(world):
    sender, ev = delivered_through(world, "user@len.dane.test")
    assert ev.get("tls", "").startswith("TLSv1"), ev
    assert ev.get("verified") == "no", ev
    t = sender.events("dane_tlsa", host="mx-len.dane.test")
    assert t and t[0]["state"] == "encrypt" and t[0]["unusable"] == "1", t


def test_dane_bad_length_host_without_tls_is_not_sent_in_the_clear(world):
    rcv = world.receiver(SINK, ", ".join(DOMAINS))   # no certificate: no STARTTLS
    sender = dane_sender(world)
    qid, _ = rh.inject(sender, ["user@len.dane.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert "TLS is required" in ev.get("reason", ""), ev
    assert rcv.maildir_messages("user@len.dane.test") == []


def test_insecure_zone_is_opportunistic(world):
    sender, ev = delivered_through(world, "user@insecure.test",   # no TLS at all
                                   world.receiver(SINK, ", ".join(DOMAINS)))
    assert ev.get("tls") == "none" and ev.get("tls_policy") == "none", ev
    # no look-up was made for a host whose answers were not validated
    assert not sender.events("dane_tlsa"), sender.log_tail()


def test_signed_zone_without_tlsa_is_opportunistic(world):
    sender, _ = delivered_through(world, "user@plain.dane.test",
                                  world.receiver(SINK, ", ".join(DOMAINS)))
    t = sender.wait_event("dane_tlsa", host="mx-plain.dane.test")[0]
    assert t["state"] == "none", t


def test_dane_no_leaves_tlsa_alone(world):
    rcv = world.receiver(SINK, ", ".join(DOMAINS))   # no TLS: bad.dane.test would fail DANE
    sender = world.sender(config={"tls_outbound": "may"})
    qid, tok = rh.inject(sender, ["user@bad.dane.test"])
    assert rh.tokens_in(rcv.wait_messages("user@bad.dane.test", 1, T)) == [tok]
    assert not sender.events("dane_tlsa")


def test_tls_required_no_header_skips_dane(world):
    """RFC 8689 §5: the sender's "TLS-Required: No" sets the recipient
    domain's DANE policy aside (the mismatching bad.dane.test takes it)."""
    rcv = receiver(world)
    sender = dane_sender(world)
    rcpt = "user@bad.dane.test"
    tok = rh.token()
    data = h.make_message(subject="tls-required %s" % tok, body="token=%s\r\n" % tok,
                          sender=rh.SENDER, to=rcpt, extra_headers=["TLS-Required: No"])
    qid = sender.send(sender=rh.SENDER, recipients=[rcpt], data=data)
    assert sender.wait_event("accepted", queue_id=qid)[0].get("tls_required") == "no"
    assert rh.tokens_in(rcv.wait_messages(rcpt, 1, T)) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert ev.get("tls_policy") == "none", ev
    assert not sender.events("dane_tlsa"), sender.log_tail()


def test_dane_sessions_are_reported_under_tlsa_policies(world):
    """`facteurctl tlsrpt send` mails a report per DANE domain: the
    policy is the MX host's TLSA records; a match is a success, a
    mismatch tlsa-invalid, a bogus TLSA answer dnssec-invalid, each
    failure with the MX host and the addresses."""
    ub = world.zone
    receiver(world)
    sender = dane_sender(world, tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    good = [rh.inject(sender, ["user@ee.dane.test"])[0] for _ in range(2)]
    bad, _ = rh.inject(sender, ["user@bad.dane.test"])
    bogus, _ = rh.inject(sender, ["user@bogus.dane.test"])
    h.wait_for(lambda: all(sender.events("delivered", queue_id=q) for q in good)
               and sender.events("deferred", queue_id=bad)
               and sender.events("deferred", queue_id=bogus), T,
               what="the deliveries")
    # the tlsa policies and the failure details outlive a restart
    sender.restart()
    h.wait_for(lambda: (sender.spool / "tlsrpt").is_file(), 10, what="the counts file")
    r = th.facteurctl(sender, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    msgs = sender.wait_messages("reports@" + rh.SENDER_DOMAIN, 3, T)
    reports = {}
    for raw in msgs:
        _, rep = th.tlsrpt_report_of(raw)
        [p] = rep["policies"]
        reports[p["policy"]["policy-domain"]] = p
    assert set(reports) == {"ee.dane.test", "bad.dane.test", "bogus.dane.test"}
    for dom, p in reports.items():
        assert p["policy"]["policy-type"] == "tlsa", p
        assert p["policy"]["mx-host"] == [DOMAINS[dom]], p
    ee = reports["ee.dane.test"]
    assert ee["policy"]["policy-string"] == ["3 1 1 " + ub.ee.upper()], ee
    assert ee["summary"] == {"total-successful-session-count": 2,
                             "total-failure-session-count": 0}, ee
    assert ee["failure-details"] == [], ee
    b = reports["bad.dane.test"]
    assert len(b["policy"]["policy-string"]) == 1, b
    assert b["policy"]["policy-string"][0].startswith("3 1 1 "), b
    assert b["summary"]["total-successful-session-count"] == 0, b
    assert b["summary"]["total-failure-session-count"] >= 1, b
    [f] = b["failure-details"]
    assert f["result-type"] == "tlsa-invalid", b
    assert f["receiving-mx-hostname"] == "mx-bad.dane.test", b
    assert f["receiving-ip"] == SINK, b
    assert f["sending-mta-ip"].startswith("127."), b
    g = reports["bogus.dane.test"]
    assert g["summary"]["total-failure-session-count"] >= 1, g
    assert [f["result-type"] for f in g["failure-details"]] == ["dnssec-invalid"], g
    assert g["failure-details"][0]["receiving-mx-hostname"] == "mx-bogus.dane.test", g


def test_each_connection_of_an_attempt_is_reported(world):
    """A host given up for the next is a session of its own in the TLS
    report: two.dane.test's first MX host mismatches its TLSA records
    (tlsa-invalid under that host's policy), its second delivers
    (success under its own), both within the one attempt."""
    rcv = receiver(world)
    sender = dane_sender(world, tlsrpt_from="tlsrpt@" + rh.SENDER_DOMAIN)
    qid, tok = rh.inject(sender, ["user@two.dane.test"])
    assert rh.tokens_in(rcv.wait_messages("user@two.dane.test", 1, T)) == [tok]
    r = th.facteurctl(sender, "tlsrpt", "send")
    assert r.returncode == 0, r.stderr
    [raw] = sender.wait_messages("reports@" + rh.SENDER_DOMAIN, 1, T)
    _, rep = th.tlsrpt_report_of(raw)
    policies = {p["policy"]["mx-host"][0]: p for p in rep["policies"]}
    assert set(policies) == {"mx-bad.dane.test", "mx-ee.dane.test"}, rep
    bad, ee = policies["mx-bad.dane.test"], policies["mx-ee.dane.test"]
    assert bad["summary"] == {"total-successful-session-count": 0,
                              "total-failure-session-count": 1}, bad
    assert [f["result-type"] for f in bad["failure-details"]] == ["tlsa-invalid"], bad
    assert ee["summary"] == {"total-successful-session-count": 1,
                             "total-failure-session-count": 0}, ee
