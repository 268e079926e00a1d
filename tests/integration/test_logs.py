"""Event logs on stderr (logfmt and JSON) and clean shutdown (SPEC §7)."""

import json
import re
import signal
import time

import pytest

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
LEVELS = {"error", "warn", "info", "debug"}


def traffic(d, relay_denied=True):
    """One accepted message for two local recipients and, when the daemon
    refuses relaying, one relay denial. Returns (queue id, message bytes)."""
    msg = h.make_message("log test", body="line one\r\nline two\r\n")
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
        if relay_denied:
            r = c.cmd("RCPT TO:<someone@remote.test>")
            assert r.code == 554, r
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("RCPT TO:<other@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(msg))
        r = c.reply()
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
        c.wait_closed(10)
    qid = h.queue_id_of(r)
    d.wait_messages("user@localhost")
    d.wait_messages("other@localhost")
    return qid, msg


def as_number(value):
    if isinstance(value, (int, float)):
        return value
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s)?$", str(value))
    assert m, "not a number: %r" % value
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def addr(value):
    return str(value).strip("<>")


def check_events(d, qid, msg):
    logs = d.logs()
    for e in logs:
        assert TS_RE.match(str(e.get("ts", ""))), e
        assert e.get("level") in LEVELS, e
        assert e.get("event"), e

    assert d.events("connect"), "no connect event"
    acc = d.wait_event("accepted", queue_id=qid)[0]
    assert addr(acc.get("from")) == "sender@example.org", acc
    assert int(acc.get("nrcpt")) == 2, acc
    assert int(acc.get("size")) == len(msg), "size %r, message is %d octets" % (
        acc.get("size"), len(msg))
    assert "127.0.0.1" in str(acc.get("client")), acc

    delivered = h.wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(
        d.events("delivered", queue_id=qid)), 30, what="two delivered events")
    rcpts = sorted(addr(e.get("rcpt")) for e in delivered)
    assert rcpts == ["other@localhost", "user@localhost"], delivered
    for e in delivered:
        assert "mail/localhost/" in str(e.get("mailbox")), e
        assert str(e.get("dsn")) == "2.0.0", e
        assert as_number(e.get("delay")) >= 0, e

    rej = d.events("rejected")
    assert rej, "no rejected event for the relay denial"
    assert "127.0.0.1" in str(rej[0].get("client")), rej
    assert rej[0].get("reason"), rej

    h.wait_for(lambda: d.events("disconnect"), 10, what="a disconnect event")


def test_logfmt_events(make_daemon):
    d = make_daemon(config={"relay_networks": "10.0.0.0/8"})
    qid, msg = traffic(d)
    check_events(d, qid, msg)
    # every line of stderr is a logfmt event line
    for line in d.log_lines():
        parsed = h.parse_logfmt(line)
        assert parsed and "ts" in parsed and "level" in parsed and "event" in parsed, \
            "not a logfmt event line: %r" % line


def test_json_events(make_daemon):
    d = make_daemon(config={"relay_networks": "10.0.0.0/8", "log_format": "json"})
    qid, msg = traffic(d)
    for line in d.log_lines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        for k in ("ts", "level", "event"):
            assert k in obj, line
    check_events(d, qid, msg)
    acc = d.events("accepted", queue_id=qid)[0]
    assert isinstance(acc["nrcpt"], int) and isinstance(acc["size"], int), acc


def test_log_level_error_hides_info(make_daemon):
    d = make_daemon(config={"log_level": "error"})
    traffic(d, relay_denied=False)
    time.sleep(1)
    infos = [e for e in d.logs() if e.get("level") in ("info", "debug")]
    assert not infos, infos[:3]


def test_log_level_debug_still_logfmt(make_daemon):
    d = make_daemon(config={"log_level": "debug"})
    qid, _ = traffic(d, relay_denied=False)
    d.wait_event("accepted", queue_id=qid)
    for line in d.log_lines():
        assert h.parse_logfmt(line), line


# --------------------------------------------------------------------------
# shutdown

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_within_10s_with_sessions_open(make_daemon, sig):
    d = make_daemon()
    idle = d.raw()
    idle.ehlo()
    mid = d.raw()
    mid.ehlo()
    assert mid.cmd("MAIL FROM:<a@sender.test>").code == 250
    assert mid.cmd("RCPT TO:<user@localhost>").code == 250
    assert mid.cmd("DATA").code == 354
    mid.send(b"Subject: cut by shutdown\r\n\r\npartial\r\n")
    start = time.monotonic()
    d.stop_ok(sig)
    assert time.monotonic() - start < 10.5
    idle.close()
    mid.close()


def test_sigterm_keeps_acknowledged_messages(make_daemon):
    d = make_daemon(config={"retry_min": "1s", "retry_max": "2s"})
    # a mailbox that cannot be written: the message waits in the spool
    d.mail_root.mkdir(parents=True, exist_ok=True)
    blocker = d.mail_root / "localhost"
    blocker.write_text("x")
    qid = d.send(subject="kept over sigterm")
    d.wait_event("deferred", queue_id=qid)
    d.stop_ok()
    blocker.unlink()
    d.start()
    msgs = d.wait_messages("user@localhost")
    assert b"Subject: kept over sigterm" in msgs[0]


def test_new_connections_refused_after_shutdown(make_daemon):
    d = make_daemon()
    d.stop_ok()
    import socket
    with socket.socket() as s:
        s.settimeout(2)
        with pytest.raises(OSError):
            s.connect(("127.0.0.1", d.port))


# --------------------------------------------------------------------------
# SIGHUP

def test_sighup_reloads_without_dropping_sessions(make_daemon):
    d = make_daemon(config={"max_message_size": "1M"})
    old = d.raw()
    try:
        old.ehlo()
        assert old.cmd("MAIL FROM:<a@sender.test>").code == 250
        d.settings["max_message_size"] = "2M"
        d.write_config()
        d.proc.send_signal(signal.SIGHUP)

        def new_size():
            with d.raw() as c:
                return "SIZE 2097152" in c.ehlo().lines[1:]
        h.wait_for(new_size, 15, what="the reloaded SIZE in EHLO\n" + d.log_tail())
        # the session opened before the reload goes on
        assert old.cmd("RCPT TO:<user@localhost>").code == 250
        assert old.cmd("DATA").code == 354
        old.send(h.dot_stuff(h.make_message("across sighup")))
        r = old.reply()
        assert r.code == 250, r
    finally:
        old.close()
    d.wait_messages("user@localhost")
    d.assert_alive()


def test_sighup_with_broken_config_keeps_old_settings(make_daemon):
    d = make_daemon(config={"max_message_size": "1M"})
    before = len(d.log_lines())
    d.extra_lines.append("max_recipients = lots")
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    h.wait_for(lambda: any("max_recipients" in l for l in d.log_lines()[before:]), 15,
               what="the reload error in the log\n" + d.log_tail())
    time.sleep(0.5)
    d.assert_alive()
    with d.raw() as c:
        assert "SIZE 1048576" in c.ehlo().lines[1:]
    d.send(subject="after broken reload")
    d.wait_messages("user@localhost")


def strict_json_lines(d):
    """Every line of the log as JSON, read as strict UTF-8."""
    objs = []
    for raw in d.log_bytes().split(b"\n"):
        if raw.strip():
            objs.append(json.loads(raw.decode("utf-8")))
    return objs


def test_json_lines_stay_valid_with_a_latin1_reply_from_a_peer(relay):
    relay.scripted("127.0.0.2", replies={
        # 0xe4 alone: "ä" in Latin-1, not UTF-8; and a terminal escape
        "rcpt": "550 5.1.1 Empf\udce4nger \x1b[2J unbekannt"})
    sender = relay.sender(config={"log_format": "json"}, extra_lines=[
        "route = * [127.0.0.2]:%d tls=none" % relay.port])
    qid, _ = rh.inject(sender, ["nobody@remote.test"])
    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid)
    assert "Empf\ufffdnger" in ev.get("reason", ""), ev
    objs = strict_json_lines(sender)
    assert any(o.get("event") == "bounced" for o in objs)
    assert b"\x1b" not in sender.log_bytes()

