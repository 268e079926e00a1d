"""Forwarding with SRS (srs_domain, srs_secret_file): mail that aliases_file
sends on to a remote address leaves with the sender rewritten in postsrsd's
SRS0 format, and bounces to such an address go back to the original sender.

Every SRS address is checked here with an independent computation of
libsrs2's scheme (HMAC-SHA1 in Python), never with facteur's own code. The
remote side is a scripted SMTP server on 127.0.0.2 (mx.one.test), which
records each transaction's MAIL FROM."""

import base64
import hashlib
import hmac
import os
import re
import signal
import subprocess
import time

import pytest

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT
SECRET = "a-secret-of-the-tests"
OLD_SECRET = "the-secret-before"
SRS_DOMAIN = rh.SENDER_DOMAIN          # sender.test: bounces come here
FORWARD = "fwd@" + rh.SENDER_DOMAIN    # an alias to a remote address
TARGET = "target@one.test"
ORIGIN = "alice@one.test"              # a sender outside local_domains
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def srs_stamp(when):
    day = int(when // 86400) % 1024
    return B32[day >> 5] + B32[day & 31]


def srs_hash(secret, *fields):
    mac = hmac.new(secret.encode(), b"".join(f.lower().encode() for f in fields),
                   hashlib.sha1).digest()
    return base64.b64encode(mac).decode()[:4]


def srs0(sender, when, secret=SECRET, domain=SRS_DOMAIN):
    local, host = sender.rsplit("@", 1)
    stamp = srs_stamp(when)
    return "SRS0=%s=%s=%s=%s@%s" % (srs_hash(secret, stamp, host, local), stamp,
                                    host, local, domain)


def assert_srs0_of(address, sender):
    """address is sender's SRS0 form, made today (or yesterday, should the
    day have turned during the test)."""
    now = time.time()
    assert address in (srs0(sender, now), srs0(sender, now - 86400)), (
        address, srs0(sender, now))


def srs_sender(relay, tmp_path, aliases, secrets=(SECRET,), config=None):
    files = tmp_path / "srs-files"
    files.mkdir(exist_ok=True)
    (files / "aliases").write_text(aliases)
    (files / "secret").write_text("".join(s + "\n" for s in secrets))
    (files / "secret").chmod(0o600)
    cfg = {"aliases_file": str(files / "aliases"),
           "srs_domain": SRS_DOMAIN,
           "srs_secret_file": str(files / "secret")}
    cfg.update(config or {})
    return relay.sender(config=cfg)


def send(d, sender, recipients, tok=None):
    return rh.inject(d, recipients, tok=tok, sender=sender)


def by_sender(messages):
    return {m.mail_from: m for m in messages}


def test_remote_alias_target_gets_an_srs0_sender(relay, tmp_path):
    sink = relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)

    qid, tok = send(d, ORIGIN, [FORWARD])
    msgs = sink.wait_messages(1, T)
    assert msgs[0].rcpts == [TARGET], msgs
    assert_srs0_of(msgs[0].mail_from, ORIGIN)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    rh.wait_relay_event(d, "delivered", queue_id=qid, rcpt=TARGET)


def test_forwarded_and_ordinary_recipients_get_their_own_senders(relay, tmp_path):
    # One message: a forwarded copy (SRS sender), an ordinary remote
    # recipient of the same destination (original sender, so another
    # transaction) and a local alias target (original sender).
    sink = relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s, keeper\n" % TARGET)

    qid, tok = send(d, ORIGIN, [FORWARD, "other@one.test"])
    msgs = sink.wait_messages(2, T)
    assert len(msgs) == 2, msgs
    senders = by_sender(msgs)
    srs = [s for s in senders if s != ORIGIN]
    assert len(srs) == 1 and ORIGIN in senders, senders
    assert_srs0_of(srs[0], ORIGIN)
    assert senders[srs[0]].rcpts == [TARGET]
    assert senders[ORIGIN].rcpts == ["other@one.test"]

    local = d.wait_messages("keeper@" + rh.SENDER_DOMAIN, 1, T)
    assert local[0].startswith(b"Return-Path: <%s>" % ORIGIN.encode()), local[0][:200]
    for rcpt in (TARGET, "other@one.test"):
        rh.wait_relay_event(d, "delivered", queue_id=qid, rcpt=rcpt)


def test_local_and_null_senders_are_not_rewritten(relay, tmp_path):
    sink = relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)

    local_sender = "bob@" + rh.SENDER_DOMAIN
    send(d, local_sender, [FORWARD])
    send(d, "", [FORWARD])
    msgs = sink.wait_messages(2, T)
    assert sorted(m.mail_from for m in msgs) == ["", local_sender], msgs


def test_rewritten_sender_survives_a_restart(relay, tmp_path):
    # Stored with the recipient: a message queued before a restart still
    # leaves with its SRS sender.
    refusing = [True]
    sink = relay.scripted("127.0.0.2", replies={
        "rcpt": lambda session, arg: "451 4.3.0 later" if refusing[0] else None})
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)
    qid, tok = send(d, ORIGIN, [FORWARD])
    rh.wait_relay_event(d, "deferred", queue_id=qid, rcpt=TARGET)
    d.restart()
    refusing[0] = False
    msgs = sink.wait_messages(1, T)
    assert_srs0_of(msgs[0].mail_from, ORIGIN)
    assert rh.tokens_in([msgs[0].data]) == [tok]


def test_facteur_sendmail_forwards_with_the_same_srs_sender(relay, tmp_path):
    sink = relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)
    message = "Subject: via sendmail\n\ntoken=sm1\n"
    r = subprocess.run([str(h.BUILD_DIR / "facteur-sendmail"), "-C", str(d.conf_path),
                        "-f", ORIGIN, FORWARD], input=message.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    msgs = sink.wait_messages(1, T)
    assert_srs0_of(msgs[0].mail_from, ORIGIN)
    assert rh.tokens_in([msgs[0].data]) == ["sm1"]


def test_bounce_to_an_srs_address_reaches_the_original_sender(relay, tmp_path):
    # The client is not allowed to relay (relay_networks excludes it): the
    # reversed address is delivered all the same, like a remote alias.
    sink = relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET,
                   config={"relay_networks": "192.0.2.0/24"})
    address = srs0(ORIGIN, time.time())

    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<>").code == 250
        r = c.cmd("RCPT TO:<%s>" % address)
        assert r.code == 250, r
        # the same in another case: libsrs2 accepts it
        r = c.cmd("RCPT TO:<%s>" % address.lower())
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message(subject="bounce", body="token=b1\r\n",
                                          sender="MAILER-DAEMON@one.test",
                                          to=address)))
        assert c.reply().code == 250
    msgs = sink.wait_messages(1, T)
    assert msgs[0].mail_from == "", msgs
    assert msgs[0].rcpts == [ORIGIN], msgs
    assert rh.tokens_in([msgs[0].data]) == ["b1"]
    # an ordinary remote recipient is still refused to that client
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<>").code == 250
        assert c.cmd("RCPT TO:<%s>" % ORIGIN).code == 554


def test_old_secret_still_reverses(relay, tmp_path):
    relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET,
                   secrets=(SECRET, OLD_SECRET))
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<>").code == 250
        r = c.cmd("RCPT TO:<%s>" % srs0(ORIGIN, time.time(), secret=OLD_SECRET))
        assert r.code == 250, r


def test_new_secret_is_read_on_sighup_and_the_old_one_kept(relay, tmp_path):
    relay.scripted("127.0.0.2")
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)
    new = srs0(ORIGIN, time.time(), secret="the-next-secret")

    def rcpt(address):
        with d.raw() as c:
            c.ehlo()
            assert c.cmd("MAIL FROM:<>").code == 250
            return c.cmd("RCPT TO:<%s>" % address).code

    assert rcpt(new) == 550
    (tmp_path / "srs-files" / "secret").write_text("the-next-secret\n%s\n" % SECRET)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_event("reloaded")
    assert rcpt(new) == 250
    assert rcpt(srs0(ORIGIN, time.time())) == 250


@pytest.mark.parametrize("why, address", [
    ("bad_hash", lambda: srs0(ORIGIN, time.time(), secret="not-the-secret")),
    ("bad_hash", lambda: srs0(ORIGIN, time.time()).replace("alice", "mallory")),
    ("expired", lambda: srs0(ORIGIN, time.time() - 22 * 86400)),
    ("expired", lambda: srs0(ORIGIN, time.time() + 2 * 86400)),
    ("malformed", lambda: "SRS0=abcd=AA=one.test@" + SRS_DOMAIN),
    ("malformed", lambda: "SRS0=ab=AA=one.test=x@" + SRS_DOMAIN),
])
def test_forged_or_expired_srs_address_is_550_5_1_1(relay, tmp_path, why, address):
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)
    address = address()
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<>").code == 250
        r = c.cmd("RCPT TO:<%s>" % address)
        assert r.code == 550 and r.enhanced == "5.1.1", r
    ev = d.wait_event("rejected", address=address)[0]
    assert ev.get("srs") == why, ev


def test_still_valid_after_21_days_not_22(relay, tmp_path):
    d = srs_sender(relay, tmp_path, "fwd: %s\n" % TARGET)
    relay.scripted("127.0.0.2")
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<>").code == 250
        # 20 days: a day of margin should the date turn meanwhile
        assert c.cmd("RCPT TO:<%s>" % srs0(ORIGIN, time.time() - 20 * 86400)).code == 250
        assert c.cmd("RCPT TO:<%s>" % srs0(ORIGIN, time.time() - 23 * 86400)).code == 550


def test_missing_or_empty_secret_file_is_a_configuration_error(tmp_path):
    conf = tmp_path / "facteur.conf"
    base = ("hostname = mx.example.test\nspool_dir = %s\nsrs_domain = fwd.example.test\n"
            % (tmp_path / "spool"))
    cases = [
        (base, "srs_secret_file is not set"),
        (base + "srs_secret_file = %s\n" % (tmp_path / "absent"), "absent"),
        (base + "srs_secret_file = %s\n" % (tmp_path / "empty"), "no secret"),
    ]
    (tmp_path / "empty").write_text("\n \n")
    for text, why in cases:
        conf.write_text(text)
        r = h.run_facteurd(["-n", "-c", str(conf)])
        assert r.returncode == h.EX_CONFIG, (text, r)
        assert why in r.stderr.decode(), r.stderr
    conf.write_text(base + "srs_domain = not a domain\n")
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == h.EX_CONFIG, r
    assert re.search(r"facteur\.conf:\d+: srs_domain: invalid domain", r.stderr.decode()), r.stderr
