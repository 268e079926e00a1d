"""Local delivery into Maildir (SPEC §4 Received/250, §5, §7 durability)."""

import email.utils
import re
import subprocess
import time

import pytest

import facteur_harness as h


def received_headers(msg):
    return [v for n, v in h.header_block(msg) if n.strip().lower() == b"received"]


# --------------------------------------------------------------------------
# the basic path

def test_smtplib_message_lands_in_maildir(daemon):
    msg = h.make_message("first delivery", body="Hello there.\r\nSecond line.\r\n",
                         sender="sender@example.org", to="user@localhost")
    s = daemon.smtp(local_hostname="client.helo.test")
    try:
        code, _ = s.ehlo()
        assert code == 250
        code, resp = s.mail("sender@example.org")
        assert code == 250, resp
        code, resp = s.rcpt("user@localhost")
        assert code == 250, resp
        code, resp = s.data(msg)
        assert code == 250, resp
        queue_id = h.queue_id_of(resp)
        s.quit()
    finally:
        s.close()

    files = h.wait_for(lambda: daemon.maildir_files("user@localhost"), 30,
                       what="a file in the Maildir")
    time.sleep(0.5)
    files = daemon.maildir_files("user@localhost")
    assert len(files) == 1, files
    box = daemon.maildir("user@localhost")
    assert box == daemon.mail_root / "localhost" / "user"
    assert files[0].parent == box / "new"
    assert (box / "cur").is_dir()
    assert (box / "tmp").is_dir()
    assert list((box / "tmp").iterdir()) == []

    content = files[0].read_bytes()
    lines = content.split(b"\n")
    assert lines[0] == b"Return-Path: <sender@example.org>", lines[:3]
    assert lines[1] == b"Delivered-To: user@localhost", lines[:3]
    assert lines[2].startswith(b"Received: "), lines[:4]

    # The Received header (possibly folded) is the first header after them.
    headers = h.header_block(content)
    assert [n for n, _ in headers[:3]] == [b"Return-Path", b"Delivered-To", b"Received"]
    received = headers[2][1].decode()
    assert "client.helo.test" in received, received
    assert "[127.0.0.1]" in received, received
    assert re.search(r"\bESMTP\b", received), received
    assert queue_id in received, received
    assert "facteur" in received, received
    assert "mx.example.test" in received, received
    assert ";" in received, received
    date = email.utils.parsedate_to_datetime(received.rsplit(";", 1)[1].strip())
    assert abs(date.timestamp() - time.time()) < 3600, received

    # the original message follows, unchanged apart from line ends
    rest = content.split(b"\n", 2)[2]
    assert h.body_lines(msg)[0] in content
    assert content.endswith(b"Hello there.\nSecond line.\n"), content[-80:]
    assert rest.count(b"Subject: first delivery") == 1

    acc = daemon.wait_event("accepted", queue_id=queue_id)
    assert acc
    dl = daemon.wait_event("delivered", queue_id=queue_id)
    assert dl[0].get("rcpt") in ("user@localhost", "<user@localhost>"), dl


def test_syncfs_flush_method_delivers(make_daemon):
    """flush_method = syncfs (here from the environment): mail is accepted
    and delivered the same way, each message once."""
    d = make_daemon(env={"FACTEUR_FLUSH_METHOD": "syncfs"})
    for i in range(20):
        d.send(subject="syncfs %d" % i, body="number %d\r\n" % i)
    files = h.wait_for(lambda: len(d.maildir_files("user@localhost")) >= 20 or None,
                       30, what="20 files in the Maildir")
    assert files
    bodies = d.maildir_messages("user@localhost")
    assert len(bodies) == 20
    assert sorted(int(b.rsplit(b"number ", 1)[1].split()[0]) for b in bodies) == list(range(20))


def test_maildir_file_name_shape(daemon):
    daemon.send(subject="name shape")
    f = h.wait_for(lambda: daemon.maildir_files("user@localhost"), 30)[0]
    m = re.match(r"^(\d+)\.([^/:]+)\.mx\.example\.test$", f.name)
    assert m, "Maildir name is not <time>.<unique>.<hostname>: %r" % f.name
    assert abs(int(m.group(1)) - time.time()) < 3600, f.name


def test_maildir_names_are_unique(daemon):
    with daemon.raw() as c:
        c.ehlo()
        for i in range(5):
            r = c.send_message("a@sender.test", ["user@localhost"],
                               h.make_message("unique %d" % i), ehlo=False)
            assert r.code == 250, r
    files = daemon.wait_messages("user@localhost", 5)
    assert len(files) == 5
    names = [p.name for p in daemon.maildir_files("user@localhost")]
    assert len(set(names)) == 5


def test_path_template_is_lower_cased(daemon):
    with daemon.raw() as c:
        r = c.send_message("a@sender.test", ["Mixed.Case@LocalHost"], h.make_message("case"))
        assert r.code == 250, r
    daemon.wait_messages("mixed.case@localhost")
    assert (daemon.mail_root / "localhost" / "mixed.case" / "new").is_dir()
    assert not (daemon.mail_root / "LocalHost").exists()


def test_multiple_recipients_each_get_a_copy(daemon):
    rcpts = ["alice@localhost", "bob@localhost", "carol@example.test"]
    with daemon.raw() as c:
        r = c.send_message("sender@example.org", rcpts, h.make_message("to three"))
        assert r.code == 250, r
        qid = h.queue_id_of(r)
    for rcpt in rcpts:
        msgs = daemon.wait_messages(rcpt)
        assert len(msgs) == 1, rcpt
        lines = msgs[0].split(b"\n")
        assert lines[0] == b"Return-Path: <sender@example.org>"
        assert lines[1] == b"Delivered-To: " + rcpt.encode(), lines[:2]
        assert b"Subject: to three" in msgs[0]
    acc = daemon.wait_event("accepted", queue_id=qid)
    assert str(acc[0].get("nrcpt")) == "3", acc


def test_same_recipient_twice_gets_one_copy(daemon):
    with daemon.raw() as c:
        r = c.send_message("a@sender.test", ["dup@localhost", "DUP@localhost"],
                           h.make_message("dedup"))
        assert r.code == 250, r
    daemon.wait_messages("dup@localhost")
    time.sleep(1.5)
    assert len(daemon.maildir_messages("dup@localhost")) == 1


def test_swaks_delivery(daemon):
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % daemon.port,
                        "--helo", "swaks.test", "--from", "a@sender.test",
                        "--to", "user@example.test", "--header", "Subject: via swaks",
                        "--body", "swaks body"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out
    assert re.search(r"<[-~]\s+250 2\.0\.0 Ok: queued as \S+", out), out
    msg = daemon.wait_messages("user@example.test")[0]
    assert b"Subject: via swaks" in msg
    assert b"swaks body" in msg
    assert b"swaks.test" in received_headers(msg)[0]


# --------------------------------------------------------------------------
# aliases

@pytest.fixture
def alias_daemon(make_daemon, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text(
        "# test aliases\n"
        "postmaster: alice\n"
        "team: alice, bob@example.test\n"
        "mixed: carol, remote2@far.test\n"
        "chain@localhost: team\n")
    # A DNS server that never answers (nothing listens on that loopback
    # port): remote targets stay deferred instead of bouncing on NXDOMAIN.
    dead_dns = h.free_port()
    return make_daemon(config={"aliases_file": str(aliases), "retry_min": "1s",
                               "retry_max": "2s", "dns_servers": "127.0.0.1:%d" % dead_dns})


def test_alias_to_local_user(alias_daemon):
    d = alias_daemon
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["postmaster@localhost"], h.make_message("to pm"))
        assert r.code == 250, r
    msgs = d.wait_messages("alice@localhost")
    assert len(msgs) == 1 and b"Subject: to pm" in msgs[0]
    assert not d.maildir("postmaster@localhost").exists()


def test_alias_with_several_targets(alias_daemon):
    d = alias_daemon
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["team@localhost"], h.make_message("to team"))
        assert r.code == 250, r
    assert b"Subject: to team" in d.wait_messages("alice@localhost")[0]
    assert b"Subject: to team" in d.wait_messages("bob@example.test")[0]


def test_alias_chain(alias_daemon):
    d = alias_daemon
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["chain@localhost"], h.make_message("to chain"))
        assert r.code == 250, r
    d.wait_messages("alice@localhost")
    d.wait_messages("bob@example.test")


def test_alias_with_remote_target_stays_queued(alias_daemon):
    d = alias_daemon
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["mixed@localhost"], h.make_message("to mixed"))
        assert r.code == 250, r
        qid = h.queue_id_of(r)
    assert b"Subject: to mixed" in d.wait_messages("carol@localhost")[0]
    time.sleep(3)
    d.assert_alive()
    assert not (d.mail_root / "far.test").exists()
    remote = [e for e in d.events("delivered", queue_id=qid) + d.events("bounced", queue_id=qid)
              if "far.test" in str(e.get("rcpt"))]
    assert not remote, remote
    # the message is still in the spool (the remote recipient is pending)
    spooled = [p for p in d.spool.rglob("*") if p.is_file()
               and b"Subject: to mixed" in p.read_bytes()]
    assert spooled, "message %s left the spool with a recipient undelivered" % qid


# --------------------------------------------------------------------------
# content preservation

def test_8bit_body_preserved(daemon):
    body_lines = [
        "Grüße aus Köln, café ☕, 日本語".encode("utf-8"),
        bytes(range(0x80, 0x100)),
        b"plain ascii line",
        bytes([0xff, 0xfe, 0x00 + 0x41, 0xc3, 0x28]),  # invalid UTF-8 on purpose
    ]
    data = (b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + b"\r\n".join(body_lines) + b"\r\n")
    with daemon.raw() as c:
        r = c.send_message("a@sender.test", ["user@localhost"], data,
                           mail_params=" BODY=8BITMIME")
        assert r.code == 250, r
    msg = daemon.wait_messages("user@localhost")[0]
    got = h.body_lines(msg)
    assert got[-len(body_lines):] == body_lines, got[-len(body_lines):]


def test_smtputf8_sender_delivered(daemon):
    sender = "expéditeur@exemple.test"
    with daemon.raw() as c:
        c.ehlo()
        r = c.cmd(("MAIL FROM:<%s> SMTPUTF8" % sender).encode())
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff("From: <{0}>\r\nSubject: utf8 sender\r\n\r\nbonjour\r\n"
                           .format(sender).encode()))
        r = c.reply()
        assert r.code == 250, r
    msg = daemon.wait_messages("user@localhost")[0]
    assert msg.split(b"\n")[0] == ("Return-Path: <%s>" % sender).encode(), msg[:100]


def test_smtputf8_recipient_delivered(daemon):
    rcpt = "josé@localhost"
    with daemon.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test> SMTPUTF8").code == 250
        r = c.cmd(("RCPT TO:<%s>" % rcpt).encode())
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(b"Subject: utf8 rcpt\r\n\r\nol\xc3\xa1\r\n"))
        assert c.reply().code == 250
    box = daemon.mail_root / "localhost" / "josé"
    msgs = h.wait_for(lambda: [p for p in (box / "new").glob("*")] if (box / "new").is_dir() else None,
                      30, what="delivery into %s" % box)
    content = msgs[0].read_bytes()
    assert content.split(b"\n")[1] == "Delivered-To: josé@localhost".encode(), content[:120]


def test_dot_unstuffing(daemon):
    data = b"Subject: dots\r\n\r\n..hidden\r\n...two\r\n.\tnot end\r\nend\r\n"
    with daemon.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        # sent as is: already stuffed by hand
        c.send(data + b".\r\n")
        assert c.reply().code == 250
    msg = daemon.wait_messages("user@localhost")[0]
    assert h.body_lines(msg)[-4:] == [b".hidden", b"..two", b"\tnot end", b"end"], msg[-80:]


def test_smtplib_dot_stuffing_round_trip(daemon):
    body = ".leading dot\r\n..two\r\n.\r\nafter a lone dot\r\n"
    msg = h.make_message("stuffing", body=body)
    s = daemon.smtp()
    try:
        refused = s.sendmail("a@sender.test", ["user@localhost"], msg)
        assert refused == {}
        s.quit()
    finally:
        s.close()
    got = daemon.wait_messages("user@localhost")[0]
    assert h.body_lines(got)[-4:] == [b".leading dot", b"..two", b".", b"after a lone dot"]


@pytest.mark.parametrize("length", [998, 999, 2000, 20000])
def test_long_line_arrives_unchanged(daemon, length):
    long_line = bytes((ord("a") + i % 26) for i in range(length))
    data = b"Subject: long line\r\n\r\nbefore\r\n" + long_line + b"\r\nafter\r\n"
    with daemon.raw() as c:
        r = c.send_message("a@sender.test", ["user@localhost"], data)
        assert r.code == 250, r
    msg = daemon.wait_messages("user@localhost")[0]
    assert h.body_lines(msg)[-3:] == [b"before", long_line, b"after"]


def test_bdat_last_line_without_crlf_gets_one(daemon):
    chunk = b"Subject: no final newline\r\n\r\nlast line"
    with daemon.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        assert c.reply().code == 250
    msg = daemon.wait_messages("user@localhost")[0]
    assert msg.endswith(b"\nlast line\n"), msg


def test_empty_message_is_delivered(daemon):
    with daemon.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b".\r\n")
        r = c.reply()
        assert r.code == 250, r
    msg = daemon.wait_messages("user@localhost")[0]
    assert msg.startswith(b"Return-Path: <a@sender.test>\nDelivered-To: user@localhost\nReceived:")


# --------------------------------------------------------------------------
# failed deliveries, retries and restarts

def _block_mailbox(d):
    """Make delivery into localhost impossible, even for root: a regular file
    where the domain's directory must go."""
    d.mail_root.mkdir(parents=True, exist_ok=True)
    blocker = d.mail_root / "localhost"
    blocker.write_text("not a directory\n")
    return blocker


def test_failed_delivery_is_deferred_then_retried(make_daemon):
    d = make_daemon(config={"retry_min": "1s", "retry_max": "2s"})
    blocker = _block_mailbox(d)
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["user@localhost"], h.make_message("deferred"))
        assert r.code == 250, r
        qid = h.queue_id_of(r)
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0].get("dsn", "").startswith("4."), ev
    assert ev[0].get("reason"), ev
    assert not d.events("delivered", queue_id=qid)
    # still retrying: at least one more attempt within a few seconds
    h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 20,
               what="a second attempt (retry_min = 1s)")
    blocker.unlink()
    msgs = d.wait_messages("user@localhost", timeout=30)
    assert len(msgs) == 1 and b"Subject: deferred" in msgs[0]
    d.wait_event("delivered", queue_id=qid)
    time.sleep(3)
    assert len(d.maildir_messages("user@localhost")) == 1


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_deferred_message_survives_restart(make_daemon, how):
    d = make_daemon(config={"retry_min": "1s", "retry_max": "2s"})
    blocker = _block_mailbox(d)
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["user@localhost", "other@example.test"],
                           h.make_message("survivor"))
        assert r.code == 250, r
        qid = h.queue_id_of(r)
    d.wait_event("deferred", queue_id=qid)
    # the example.test recipient is delivered at once, localhost waits
    assert len(d.wait_messages("other@example.test")) == 1
    if how == "sigterm":
        d.stop_ok()
    else:
        d.kill9()
    blocker.unlink()
    d.start()
    msgs = d.wait_messages("user@localhost", timeout=30)
    assert len(msgs) == 1 and b"Subject: survivor" in msgs[0]
    time.sleep(3)
    assert len(d.maildir_messages("user@localhost")) == 1
    assert len(d.maildir_messages("other@example.test")) == 1, \
        "a recipient already delivered was delivered again after the restart"


def test_restart_does_not_redeliver(make_daemon):
    d = make_daemon()
    for i in range(3):
        d.send(subject="before restart %d" % i)
    d.wait_messages("user@localhost", 3)
    d.restart()
    d.send(subject="after restart")
    d.wait_messages("user@localhost", 4)
    time.sleep(2)
    assert len(d.maildir_messages("user@localhost")) == 4


# --------------------------------------------------------------------------
# mbox

def mbox_messages(path):
    """Split an mbox file into (From_ line, content lines) pairs."""
    text = path.read_bytes()
    assert text.startswith(b"From "), text[:100]
    out = []
    for line in text.split(b"\n"):
        if line.startswith(b"From "):
            out.append((line, []))
        else:
            out[-1][1].append(line)
    return out


def test_mbox_delivery(make_daemon):
    d = make_daemon(config={"mailbox_format": "mbox"})
    body1 = (b"Subject: first mbox\r\n\r\nFrom the start\r\n>From quoted once\r\n"
             b">>From quoted twice\r\nFromage is not quoted\r\n.dot\r\n")
    with d.raw() as c:
        r = c.send_message("a@sender.test", ["user@localhost"], body1)
        assert r.code == 250, r
        r = c.send_message("", ["user@localhost"], b"Subject: second mbox\r\n\r\nsecond\r\n",
                           ehlo=False)
        assert r.code == 250, r
    path = d.mail_root / "localhost" / "user"
    h.wait_for(lambda: path.is_file() and path.read_bytes().count(b"Subject: ") >= 2, 30,
               what="two messages in the mbox %s\n%s" % (path, d.log_tail()))
    time.sleep(0.5)
    msgs = mbox_messages(path)
    assert len(msgs) == 2, msgs
    (from1, lines1), (from2, lines2) = msgs
    assert re.match(rb"^From a@sender\.test \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$", from1), from1
    assert re.match(rb"^From MAILER-DAEMON ", from2), from2
    assert lines1[0] == b"Return-Path: <a@sender.test>", lines1[:3]
    assert lines1[1] == b"Delivered-To: user@localhost", lines1[:3]
    assert lines1[2].startswith(b"Received: ")
    body = lines1[lines1.index(b"") + 1:]
    assert body[:6] == [b">From the start", b">>From quoted once", b">>>From quoted twice",
                        b"Fromage is not quoted", b".dot", b""], body
    assert lines2[0] == b"Return-Path: <>"
    # each message is followed by a blank line
    assert path.read_bytes().endswith(b"\nsecond\n\n")


def test_mbox_file_never_holds_half_a_message_after_restart(make_daemon):
    d = make_daemon(config={"mailbox_format": "mbox"})
    for i in range(5):
        d.send(subject="mbox %d" % i)
    path = d.mail_root / "localhost" / "user"
    h.wait_for(lambda: path.is_file() and path.read_bytes().count(b"Subject: mbox") == 5, 30)
    d.restart()
    time.sleep(2)
    assert path.read_bytes().count(b"Subject: mbox") == 5


# --------------------------------------------------------------------------
# links inside the mail root

def test_link_below_the_mail_root_defers_and_the_root_may_be_a_link(make_daemon, tmp_path):
    real_root = tmp_path / "real-mail"
    real_root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d = make_daemon(config={"retry_min": "1h", "retry_max": "2h"})
    # The operator's link: the root itself; then a user's, inside it.
    d.mail_root.symlink_to(real_root)
    (real_root / "localhost").symlink_to(elsewhere)
    qid = d.send(subject="planted")
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0]["dsn"] == "4.2.0", ev
    assert ev[0]["reason"] == "open %s/localhost: symbolic link not followed" % d.mail_root, ev
    assert not list(elsewhere.iterdir())
    # The same mail root takes mail for a domain without a planted link.
    qid = d.send(recipients=("user@example.test",), subject="plain")
    d.wait_event("delivered", queue_id=qid)
    assert len(list((real_root / "example.test" / "user" / "new").iterdir())) == 1
