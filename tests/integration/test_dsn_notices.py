"""Delivery status notifications as RFC 3461 asks for them (issue 3 item 5):
NOTIFY=SUCCESS on local delivery, NOTIFY=DELAY once after delay_notice,
NOTIFY=NEVER, RET, ENVID and ORCPT in the report; and SIGHUP adding and
removing listeners (issue 6 item 5)."""

import signal
import socket
import time

import facteur_harness as h

SENDER = "sender@localhost"


def closed_port():
    """A loopback port with nothing listening (bound, then released)."""
    return h.free_port()


def report_fields(msg):
    return h.dsn_fields(msg)


def dsns(daemon):
    return h.dsns_to(daemon, SENDER)


def send_with(daemon, recipients, mail_params="", rcpt_params="", body="hello\r\n"):
    return h.send_envelope(daemon, SENDER, recipients, mail_params, rcpt_params,
                           subject="dsn test", body=body)


def test_notify_success_on_local_delivery(daemon):
    send_with(daemon, ["user@localhost"], mail_params=" ENVID=env+3Done",
              rcpt_params=" NOTIFY=SUCCESS ORCPT=rfc822;user@localhost")
    daemon.wait_messages("user@localhost")
    (dsn,) = h.wait_for(lambda: dsns(daemon) or None, h.IO_TIMEOUT, what="a success DSN")
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["Return-Path"] == "<>"
    per_message, rcpt = report_fields(dsn)[:2]
    assert per_message["Original-Envelope-Id"] == "env=one"
    assert rcpt["Action"] == "delivered"
    assert rcpt["Status"].startswith("2.")
    assert rcpt["Final-Recipient"] == "rfc822; user@localhost"
    assert rcpt["Original-Recipient"] == "rfc822;user@localhost"


def test_no_success_notice_without_notify(daemon):
    send_with(daemon, ["user@localhost"])
    daemon.wait_messages("user@localhost")
    daemon.wait_event("delivered", rcpt="user@localhost")
    time.sleep(1)
    assert dsns(daemon) == []


def expiring(make_daemon, **extra):
    config = {
        "route": "remote.test [127.0.0.1]:%d" % closed_port(),
        "retry_min": "1s",
        "retry_max": "1s",
        "queue_lifetime": "3s",
        "tls_outbound": "none",
    }
    config.update(extra)
    return make_daemon(config=config)


def test_failure_notice_carries_the_full_message_with_ret_full(make_daemon):
    d = expiring(make_daemon)
    send_with(d, ["someone@remote.test"], mail_params=" RET=FULL",
              body="the body that comes back\r\n")
    (dsn,) = h.wait_for(lambda: dsns(d) or None, 20, what="a failure DSN")
    rcpt = report_fields(dsn)[1]
    assert rcpt["Action"] == "failed"
    # the refused connection's status as it was: given up on, not refused
    assert rcpt["Status"] == "4.4.1"
    kinds = [p.get_content_type() for p in dsn.walk()]
    assert "message/rfc822" in kinds
    assert b"the body that comes back" in dsn.as_bytes()


def test_failure_notice_has_headers_only_by_default(make_daemon):
    d = expiring(make_daemon)
    send_with(d, ["someone@remote.test"], body="not returned\r\n")
    (dsn,) = h.wait_for(lambda: dsns(d) or None, 20, what="a failure DSN")
    kinds = [p.get_content_type() for p in dsn.walk()]
    assert "text/rfc822-headers" in kinds
    assert b"not returned" not in dsn.as_bytes()


def test_notify_never_sends_no_failure_notice(make_daemon):
    d = expiring(make_daemon)
    send_with(d, ["someone@remote.test"], rcpt_params=" NOTIFY=NEVER")
    d.wait_event("expired", rcpt="someone@remote.test", timeout=20)
    time.sleep(1.5)
    assert dsns(d) == []
    assert not d.events("dsn")


def test_notify_delay_sends_one_delay_notice(make_daemon):
    d = make_daemon(config={
        "route": "remote.test [127.0.0.1]:%d" % closed_port(),
        "retry_min": "1s",
        "retry_max": "1s",
        "queue_lifetime": "1h",
        "delay_notice": "2s",
        "tls_outbound": "none",
    })
    send_with(d, ["someone@remote.test"], rcpt_params=" NOTIFY=DELAY,FAILURE")
    (dsn,) = h.wait_for(lambda: dsns(d) or None, 20, what="a delay DSN")
    rcpt = report_fields(dsn)[1]
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"].startswith("4.")
    assert "Will-Retry-Until" in rcpt
    # More attempts fail afterwards, but the notice is sent once.
    attempts = len(d.events("deferred", rcpt="someone@remote.test"))
    h.wait_for(lambda: len(d.events("deferred", rcpt="someone@remote.test")) >= attempts + 3,
               20, what="three more attempts")
    assert len(dsns(d)) == 1
    # The flag is durable: a restart does not send it again.
    d.restart()
    time.sleep(3)
    assert len(dsns(d)) == 1


def test_no_delay_notice_without_notify_delay(make_daemon):
    d = make_daemon(config={
        "route": "remote.test [127.0.0.1]:%d" % closed_port(),
        "retry_min": "1s",
        "retry_max": "1s",
        "queue_lifetime": "1h",
        "delay_notice": "1s",
        "tls_outbound": "none",
    })
    send_with(d, ["someone@remote.test"])
    h.wait_for(lambda: len(d.events("deferred", rcpt="someone@remote.test")) >= 3,
               20, what="three attempts")
    assert dsns(d) == []


def connects(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220 ")
    except OSError:
        return False


def test_sighup_adds_and_removes_listeners(make_daemon):
    first = h.free_port()
    second = h.free_port()
    d = make_daemon(port=first)
    # A session opened on the first listener before the reload.
    with d.raw() as c:
        c.ehlo()
        d.write_config()
        text = d.conf_path.read_text().replace(
            "listen = 127.0.0.1:%d" % first, "listen = 127.0.0.1:%d" % second)
        d.conf_path.write_text(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_event("reloaded")
        h.wait_for(lambda: connects(second), 10, what="the new listener")
        assert not connects(first), "the removed listener still accepts"
        # The session accepted before the reload goes on.
        r = c.send_message(SENDER, ["user@localhost"], h.make_message(subject="kept"),
                           ehlo=False)
        assert r.code == 250, r
    assert d.events("unlistening")
    d.port = second  # for the fixture's final checks
