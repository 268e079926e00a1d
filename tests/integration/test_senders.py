"""Senders bound to logins (senders_file): an authenticated client may use as
MAIL FROM only its login or the addresses and @domains its line lists;
anything else is 553 5.7.1, logged with the login. Unauthenticated clients
are not concerned."""

import os
import re
import signal

import pytest

import facteur_harness as h
import tls_harness as t

PASSWORD = t.USER_PASSWORD
ALICE = "alice@example.test"
BOB = "bob@example.test"
SENDERS = ("# who may send as whom\n"
           "alice@example.test: sales@example.test, @alice.example\n"
           "\n"
           "BOB@example.test : @example.test\n")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return t.make_cert(tmp_path_factory.mktemp("certs"), h.HOSTNAME, "main")


@pytest.fixture(scope="module")
def password_hash():
    r = t.facteurctl_passwd((PASSWORD + "\n").encode())
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


@pytest.fixture
def daemon(make_daemon, cert, password_hash, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "users").write_text("".join("%s:%s\n" % (u, password_hash)
                                         for u in (ALICE, BOB)))
    (files / "senders").write_text(SENDERS)
    d = make_daemon(config={
        "tls_cert": str(cert[0]), "tls_key": str(cert[1]),
        "users_file": str(files / "users"),
        "senders_file": str(files / "senders"),
        "local_domains": "localhost, example.test",
        "smtp_timeout": "30s",
    })
    d.senders_path = files / "senders"
    d.cafile = cert[0]
    return d


def login(d, user):
    c = t.TLSClient(d.host, d.port, t.client_context(cafile=d.cafile))
    c.ehlo()
    c.starttls()
    c.ehlo()
    r = c.auth_plain(user, PASSWORD)
    assert r.code == 235, r
    return c


def mail_from(c, sender):
    r = c.cmd("MAIL FROM:<%s>" % sender)
    if r.code == 250:
        assert c.cmd("RSET").code == 250
    return r


@pytest.mark.parametrize("user, sender", [
    (ALICE, ALICE),                    # the login itself
    (ALICE, "Alice@EXAMPLE.test"),     # in another case
    (ALICE, "sales@example.test"),     # listed
    (ALICE, "anyone@alice.example"),   # @domain
    (ALICE, "x@ALICE.EXAMPLE"),
    (ALICE, ""),                       # the null sender claims no one
    (BOB, "carol@example.test"),       # @domain of a login given in capitals
])
def test_allowed_senders(daemon, user, sender):
    with login(daemon, user) as c:
        r = mail_from(c, sender)
        assert r.code == 250, r


@pytest.mark.parametrize("user, sender", [
    (ALICE, BOB),
    (ALICE, "support@example.test"),
    (ALICE, "x@sub.alice.example"),
    (ALICE, "x@other.example"),
    (BOB, "bob@example.test.evil"),
    (BOB, "sales@alice.example"),
])
def test_refused_senders_are_553_5_7_1_logged_with_the_login(daemon, user, sender):
    with login(daemon, user) as c:
        r = mail_from(c, sender)
        assert r.code == 553 and r.enhanced == "5.7.1", r
        # the session goes on: an allowed sender is then accepted
        assert mail_from(c, user).code == 250
    ev = daemon.wait_event("rejected", address=sender)[0]
    assert ev.get("user") == user, ev
    assert ev.get("reason") == "sender not owned by login", ev


def test_a_whole_message_from_a_listed_address_is_delivered(daemon):
    with login(daemon, ALICE) as c:
        r = c.cmd("MAIL FROM:<sales@example.test>")
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<%s>" % BOB).code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message(subject="listed", sender="sales@example.test",
                                          to=BOB)))
        assert c.reply().code == 250
    msgs = daemon.wait_messages(BOB, 1)
    assert msgs[0].startswith(b"Return-Path: <sales@example.test>"), msgs[0][:100]


def test_unauthenticated_clients_are_not_concerned(daemon):
    with daemon.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % BOB).code == 250
        assert c.cmd("RCPT TO:<%s>" % ALICE).code == 250


def test_senders_file_is_read_again_on_sighup(daemon):
    with login(daemon, ALICE) as c:
        assert mail_from(c, "support@example.test").code == 553
    daemon.senders_path.write_text(
        "alice@example.test: support@example.test\n")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_event("reloaded")
    with login(daemon, ALICE) as c:
        assert mail_from(c, "support@example.test").code == 250
        assert mail_from(c, "sales@example.test").code == 553
    # a broken file is refused: the running table stays
    daemon.senders_path.write_text("alice@example.test support@example.test\n")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_event("reload_failed")
    with login(daemon, ALICE) as c:
        assert mail_from(c, "support@example.test").code == 250


@pytest.mark.parametrize("text, error", [
    ("alice@example.test sales@example.test\n", ":1: senders_file: no ':'"),
    ("ok: a@b.test\n\nalice: example.test\n", ":3: senders_file: bad sender"),
    ("a: b@c.test\nA: d@e.test\n", ":2: senders_file: login a given twice"),
])
def test_malformed_senders_file_exits_78_with_file_and_line(tmp_path, text, error):
    senders = tmp_path / "senders"
    senders.write_text(text)
    conf = tmp_path / "facteur.conf"
    conf.write_text("hostname = mx.example.test\nspool_dir = %s\nsenders_file = %s\n"
                    % (tmp_path / "spool", senders))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == h.EX_CONFIG, r
    assert re.search(re.escape(str(senders) + error), r.stderr.decode()), r.stderr
