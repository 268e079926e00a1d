"""Operating at volume: one scenario that touches SMTP, STARTTLS, AUTH,
POP3, relaying (with and without TLS), a bounce and a DNS failure on a
daemon that logs JSON, then checks that every log line parses, that
session lines carry their session id, that `accepted` names its session,
login and Message-ID, that relay outcomes say their TLS, and that each
new metric moved on /metrics."""

import json
import poplib
import time

import pytest

import facteur_harness as h
import relay_harness as rh
import tls_harness as t
from relay_harness import relay, zone  # noqa: F401  (fixtures)
from test_metrics import scrape

PASSWORD = t.USER_PASSWORD
ALICE = "alice@example.test"
SESSION_EVENTS = {"connect", "disconnect", "auth", "tls", "rejected",
                  "pop3_connect", "pop3_login", "pop3_tls", "pop3_logout",
                  "pop3_disconnect"}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return t.make_cert(tmp_path_factory.mktemp("obs-certs"), h.HOSTNAME, "obs")


def install_cert(cert, directory):
    directory.mkdir(exist_ok=True)
    crt, key = directory / "cert.pem", directory / "key.pem"
    t.install_files([(cert[0], crt), (cert[1], key)])
    return crt, key


def json_lines(d):
    """Every line of the daemon's log through json.loads, strict UTF-8."""
    objs = []
    for raw in d.log_bytes().split(b"\n"):
        if raw.strip():
            try:
                objs.append(json.loads(raw.decode("utf-8")))
            except ValueError as e:
                raise AssertionError("not JSON (%s): %r" % (e, raw[:300]))
    return objs


@pytest.fixture
def scene(relay, cert, tmp_path):
    """The daemon under watch, a TLS receiver for tls.test, a scripted
    server that refuses refuse.test, and a route to a closed port."""
    crt, key = install_cert(cert, tmp_path / "rcv-tls")
    relay.receiver("127.0.0.3", "tls.test", config={
        "tls_cert": str(crt), "tls_key": str(key)})
    relay.scripted("127.0.0.4", replies={
        "rcpt": "550 5.1.1 no such user here"})
    crt, key = install_cert(cert, tmp_path / "main")
    users = tmp_path / "users"
    users.write_text("%s:%s\n" % (ALICE, t.crypt_hash(PASSWORD, "$5$")))
    metrics_port, pop3_port = h.free_port(), h.free_port()
    sub_port = h.free_port()
    port = h.free_port()
    d = relay.sender(config={
        "log_format": "json",
        "listen": ["127.0.0.1:%d" % port, "127.0.0.1:%d/submission" % sub_port],
        "pop3_listen": "127.0.0.1:%d" % pop3_port,
        "metrics_listen": "127.0.0.1:%d" % metrics_port,
        "tls_cert": str(crt), "tls_key": str(key),
        "users_file": str(users),
        "local_domains": "example.test, sender.test",
        "relay_networks": "192.0.2.0/24",
        "max_recipients": "2",
        "max_message_size": "64K",
        "retry_min": "1h", "retry_max": "2h",
    }, extra_lines=[
        "route = tls.test [127.0.0.3]:%d tls=may" % relay.port,
        "route = refuse.test [127.0.0.4]:%d tls=none" % relay.port,
        "route = closed.test [127.0.0.1]:%d tls=none" % h.free_port(),
    ], start=False)
    d.port = port
    d.submission_port, d.pop3_port = sub_port, pop3_port
    d.metrics_host, d.metrics_port = "127.0.0.1", metrics_port
    d.start()
    return d


def tls_session(d, port):
    c = t.TLSClient(d.host, port, t.client_context(verify=False))
    c.ehlo()
    c.starttls()
    c.ehlo()
    return c


def provoke(d):
    """Everything the metrics and log lines should show, in one go."""
    msg = h.make_message("obs", body="hello\r\n", sender=ALICE, to="x@tls.test")
    mid = h.parse_message(msg)["Message-ID"]
    assert mid
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("AUTH PLAIN " + t.plain_response(ALICE, PASSWORD)).code == 538
        assert c.cmd("DATA").code == 503                        # protocol
        assert c.cmd("MAIL FROM:<not an address").code == 501    # syntax
        assert c.cmd("MAIL FROM:<a@b.test> SIZE=999999999").code == 552
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<x@elsewhere.invalid>").code == 554  # relay
        assert c.cmd("RCPT TO:<nobody@example.test>").code == 550  # user
        c.cmd("QUIT")
    with tls_session(d, d.submission_port) as c:
        assert c.cmd("MAIL FROM:<%s>" % ALICE).code == 530       # auth req.
        assert c.auth_plain(ALICE, "wrong").code == 535
        assert c.auth_plain(ALICE, PASSWORD).code == 235
        assert c.cmd("MAIL FROM:<%s>" % ALICE).code == 250
        for rcpt in ("x@tls.test", "y@refuse.test"):
            assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
        assert c.cmd("RCPT TO:<z@closed.test>").code == 452      # too many
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(msg))
        r = c.reply()
        assert r.code == 250, r
        assert c.cmd("MAIL FROM:<%s>" % ALICE).code == 250
        assert c.cmd("RCPT TO:<z@closed.test>").code == 250
        assert c.cmd("RCPT TO:<w@nomx.invalid>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message("deferred", sender=ALICE)))
        assert c.reply().code == 250
        c.cmd("QUIT")
    qid = h.queue_id_of(r)
    # the bounce comes back to alice as a DSN, delivered locally
    d.wait_messages(ALICE)
    p = poplib.POP3(d.host, d.pop3_port, timeout=h.IO_TIMEOUT)
    try:
        p.user(ALICE)
        with pytest.raises(poplib.error_proto):
            p.pass_("wrong")
    finally:
        p.close()
    p = poplib.POP3(d.host, d.pop3_port, timeout=h.IO_TIMEOUT)
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.quit()
    return qid, mid


def test_every_line_is_json_and_every_new_metric_moves(scene):
    d = scene
    qid, mid = provoke(d)
    rh.wait_relay_event(d, "delivered", queue_id=qid, rcpt="x@tls.test")
    rh.wait_relay_event(d, "bounced", queue_id=qid, rcpt="y@refuse.test")
    d.wait_event("pop3_disconnect", timeout=h.IO_TIMEOUT)

    def deferred_shown():
        s, _, _ = scrape(d)
        return s if s.get('facteur_queue_messages{state="deferred"}', 0) >= 1 \
            and s.get('facteur_dns_failures_total{reason="refused",type="mx"}', 0) \
            + s.get('facteur_dns_failures_total{reason="timeout",type="mx"}', 0) >= 1 \
            else None
    s = h.wait_for(deferred_shown, timeout=rh.RELAY_TIMEOUT,
                   what="a deferred message and a DNS failure")

    rej = 'facteur_smtp_rejections_total{reason="%s"}'
    for reason in ("tls_required", "protocol", "syntax", "size", "relay_denied",
                   "unknown_user", "auth_required", "too_many_recipients"):
        assert s[rej % reason] >= 1, (reason, s[rej % reason])
    assert s[rej % "loop"] == 0
    assert s['facteur_auth_attempts_total{result="success"}'] == 2  # SMTP, POP3
    assert s['facteur_auth_attempts_total{result="failure"}'] == 2
    assert s["facteur_received_bytes_total"] > 2 * 100
    assert s["facteur_relayed_bytes_total"] > 100
    assert s['facteur_tls_sessions_total{direction="inbound"}'] >= 1
    assert s['facteur_tls_sessions_total{direction="outbound"}'] >= 1
    assert s["facteur_tls_sessions_total"] == \
        s['facteur_tls_sessions_total{direction="inbound"}'] + \
        s['facteur_tls_sessions_total{direction="outbound"}']
    td = 'facteur_transport_deliveries_total{transport="%s",result="%s"}'
    assert s[td % ("relay", "delivered")] >= 1
    assert s[td % ("relay", "bounced")] >= 1
    assert s[td % ("relay", "deferred")] >= 1
    assert s[td % ("local", "delivered")] >= 1  # the DSN to alice
    assert s["facteur_queue_messages"] == sum(
        s['facteur_queue_messages{state="%s"}' % st]
        for st in ("pending", "deferred", "held"))
    assert 0 < time.time() - s["process_start_time_seconds"] < 3600
    assert s["process_resident_memory_bytes"] > 1024 * 1024
    assert s["process_open_fds"] >= 5

    logs = json_lines(d)
    sessions = {e["session"] for e in logs if e.get("event") == "connect"}
    for e in logs:
        if e["event"] in SESSION_EVENTS and e.get("client"):
            assert len(e.get("session", "")) == 16, e
    accepted = [e for e in logs if e["event"] == "accepted" and e["queue_id"] == qid]
    assert len(accepted) == 1
    assert accepted[0]["session"] in sessions
    assert accepted[0]["message_id"] == mid
    assert accepted[0]["auth_user"] == ALICE
    tls_lines = [e for e in logs if e["event"] == "tls"
                 and e.get("session") == accepted[0]["session"]]
    assert tls_lines and tls_lines[0]["version"].startswith("TLSv1"), tls_lines
    assert tls_lines[0]["cipher"]
    delivered = [e for e in logs if e["event"] == "delivered"
                 and e.get("rcpt") == "x@tls.test"][0]
    assert delivered["tls"].startswith("TLSv1"), delivered
    bounced = [e for e in logs if e["event"] == "bounced"
               and e.get("rcpt") == "y@refuse.test"][0]
    assert bounced["tls"] == "none", bounced
    pop3_sessions = {e["session"] for e in logs if e["event"] == "pop3_connect"}
    assert len(pop3_sessions) == 2 and not pop3_sessions & sessions
