"""Addresses that become mailbox paths (issue 12 item 1): a DSN goes to the
envelope sender, and a sender in a local domain is checked like a local
recipient (the users file, aliases, a local part fit for a path) before it
can name a mailbox. A notice with nobody here to go to is dropped and
logged (event=dsn_dropped); nothing is ever created outside the mail root."""

import os
import subprocess
import time

import pytest

import facteur_harness as h

BOB = "bob@localhost"
ESCAPING = '"/../../../escaped/pwn"@localhost'
SLASHED = "ghost/deep/tree@localhost"

SENDMAIL = h.BUILD_DIR / "facteur-sendmail"
FACTEURCTL = h.BUILD_DIR / "facteurctl"


def daemon_with(make_daemon, tmp_path, users, aliases=None):
    config = {}
    if users:
        uf = tmp_path / "users"
        uf.write_text("".join("%s:%s\n" % (u, h.SECRET_HASH) for u in users))
        config["users_file"] = str(uf)
    if aliases:
        af = tmp_path / "aliases"
        af.write_text(aliases)
        config["aliases_file"] = str(af)
    return make_daemon(config=config)


def send_raw(d, sender, rcpts, rcpt_params=" NOTIFY=SUCCESS"):
    return h.send_envelope(d, sender, rcpts, rcpt_params=rcpt_params,
                           subject="path probe", header_from="probe@example.org")


def notice_settled(d, qid):
    """Wait until the notice about qid was either queued or dropped, then
    give a queued one the time to be delivered."""
    h.wait_for(lambda: d.events("dsn", queue_id=qid)
               or d.events("dsn_dropped", queue_id=qid),
               h.IO_TIMEOUT, what="the notice of %s\n%s" % (qid, d.log_tail()))
    time.sleep(1.0)


def everything_under(root):
    out = set()
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), str(root)))
    return out


def mailboxes(d):
    domain = d.mail_root / "localhost"
    return sorted(p.name for p in domain.iterdir()) if domain.is_dir() else []


def assert_nothing_escaped(d, before):
    """Nothing new in the test's directory but under the mail root, the
    spool and the daemon's own files."""
    allowed = ("mail", "spool")
    new = {p for p in everything_under(d.dir) - before
           if p.split(os.sep)[0] not in allowed}
    assert not new, "created outside the mail root: %r" % sorted(new)
    assert not any("pwn" in p or "escaped" in p for p in everything_under(d.dir)), \
        sorted(everything_under(d.dir))


@pytest.mark.parametrize("users", [None, [BOB]], ids=["no_users_file", "users_file"])
def test_a_sender_with_dot_dot_never_becomes_a_path(make_daemon, tmp_path, users):
    d = daemon_with(make_daemon, tmp_path, users)
    before = everything_under(d.dir)
    qid = send_raw(d, ESCAPING, [BOB])
    d.wait_messages(BOB)
    notice_settled(d, qid)
    assert_nothing_escaped(d, before)
    assert mailboxes(d) == ["bob"]
    (ev,) = d.events("dsn_dropped", queue_id=qid)
    assert ev["kind"] == "success" and ev["to"] == ESCAPING and ev.get("reason"), ev
    assert not d.events("dsn", queue_id=qid)


@pytest.mark.parametrize("users", [None, [BOB]], ids=["no_users_file", "users_file"])
def test_a_sender_with_slashes_gets_no_mailbox(make_daemon, tmp_path, users):
    d = daemon_with(make_daemon, tmp_path, users)
    before = everything_under(d.dir)
    qid = send_raw(d, SLASHED, [BOB])
    d.wait_messages(BOB)
    notice_settled(d, qid)
    assert_nothing_escaped(d, before)
    assert mailboxes(d) == ["bob"], "a mailbox for a sender that is no user"
    assert d.events("dsn_dropped", queue_id=qid, to=SLASHED)


def test_a_sender_not_in_the_users_file_gets_no_notice(make_daemon, tmp_path):
    d = daemon_with(make_daemon, tmp_path, [BOB])
    qid = send_raw(d, "ghost@localhost", [BOB])
    d.wait_messages(BOB)
    notice_settled(d, qid)
    assert mailboxes(d) == ["bob"], "a mailbox for ghost, who is not a user"
    (ev,) = d.events("dsn_dropped", queue_id=qid)
    assert ev["to"] == "ghost@localhost" and ev["reason"] == "no such local user", ev
    # the outcome is recorded all the same: a restart delivers nothing again
    d.stop_ok()
    d.start()
    time.sleep(1.0)
    assert len(d.maildir_messages(BOB)) == 1


def test_failure_notice_to_a_bad_local_sender_is_dropped(make_daemon, tmp_path):
    """A failure notice too: the remote recipient is bounced by the
    operator, and the sender has no mailbox to be told in."""
    d = make_daemon(config={"route": "remote.test [127.0.0.1]:%d" % h.free_port(),
                            "tls_outbound": "none"})
    before = everything_under(d.dir)
    qid = send_raw(d, ESCAPING, ["someone@remote.test"], rcpt_params="")
    d.wait_event("deferred", queue_id=qid)
    r = subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path), "bounce", qid],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    notice_settled(d, qid)
    assert_nothing_escaped(d, before)
    assert d.events("dsn_dropped", queue_id=qid, kind="failure")


def test_a_notice_to_a_local_alias_follows_the_alias(make_daemon, tmp_path):
    d = daemon_with(make_daemon, tmp_path, [BOB, "carol@localhost"],
                    aliases="postmaster: bob\nbounces: bob\n")
    qid = send_raw(d, "bounces@localhost", ["carol@localhost"])
    d.wait_messages("carol@localhost")
    notice_settled(d, qid)
    (dsn,) = d.wait_messages(BOB)
    assert b"Successful Mail Delivery Report" in dsn
    assert b"Delivered-To: bob@localhost" in dsn
    assert mailboxes(d) == ["bob", "carol"]


def test_sendmail_f_with_dot_dot_never_becomes_a_path(make_daemon, tmp_path):
    d = daemon_with(make_daemon, tmp_path, None)
    before = everything_under(d.dir)
    r = subprocess.run([str(SENDMAIL), "-C", str(d.conf_path), "-f", ESCAPING,
                        "-N", "success", BOB],
                       input=b"Subject: from sendmail\n\nhello\n",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    d.wait_messages(BOB)
    h.wait_for(lambda: d.events("dsn_dropped") or d.events("dsn"), h.IO_TIMEOUT,
               what="the notice\n" + d.log_tail())
    time.sleep(1.0)
    assert_nothing_escaped(d, before)
    assert mailboxes(d) == ["bob"]
    assert d.events("dsn_dropped", to=ESCAPING)
