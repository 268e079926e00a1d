"""mailbox_owner and mailbox_mode (SPEC §9.5): facteur writes Maildir and
mbox as another account with the configured modes; a real Dovecot IMAP
server running with mail_uid set to that account lists, reads, flags and
deletes the mail while facteur keeps delivering into the same folders, and
facteur's POP3 sees the same mailbox. Runs as root (it creates an account)."""

import os
import poplib
import pwd
import subprocess
from pathlib import Path

import pytest

import dovecot_harness as dh
import facteur_harness as h
from dovecot_harness import PASSWORD, imap_search, imap_subjects
from dovecot_harness import dovecots  # noqa: F401 (fixture)
from dovecot_harness import traversable as base  # noqa: F401 (fixture)

# An account of this file's own: test_lmtp.py, which may run at the same
# time, makes and removes dovecot_harness.ACCOUNT, and removing an account
# another test file still uses makes that file fail.
OWNER = "facteurowner"
USER = "user@localhost"


@pytest.fixture(scope="module")
def owner():
    """The account the mailboxes belong to: (uid, gid)."""
    yield from dh.ensure_account(OWNER)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates an account)"),
    pytest.mark.skipif(not dh.available(), reason="dovecot-imapd not installed"),
]


@pytest.fixture
def daemons():
    made = []
    yield made
    for d in made:
        if d.alive():
            d.stop_ok()
        d.close_log()
    h.kill_leftovers()


def start_facteur(daemons, base, owner, config=None, env=None):
    """facteurd as the harness runs it (root), with a mail root that the
    owner may write into, as /var/mail is on a host."""
    d = h.Daemon(base / "facteur", config=dict(config or {}), env=env)
    d.dir.chmod(0o755)
    d.mail_root.mkdir()
    os.chown(d.mail_root, owner[0], owner[1])
    d.mail_root.chmod(0o770)
    daemons.append(d)
    d.start()
    return d


def mode_owner(path):
    st = os.lstat(path)
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def Dovecot(base, mail_root, users):
    """Dovecot on the shared-Maildir configuration of docs/operations.md."""
    return dh.Dovecot(base, "dovecot-maildir", mail_root, users, account=OWNER)


def pop3_login(port):
    p = poplib.POP3("127.0.0.1", port, timeout=h.IO_TIMEOUT)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def test_maildir_is_the_owners_and_shared_with_dovecot(owner, base, daemons, dovecots):
    pop3_port = h.free_port()
    users = base / "users"
    users.write_text("".join("%s:%s\n" % (u, h.SECRET_HASH)
                             for u in (USER, "fresh@localhost")))
    d = start_facteur(daemons, base, owner, {
        "mailbox_owner": OWNER, "mailbox_mode": "0660",
        "pop3_listen": "127.0.0.1:%d" % pop3_port, "users_file": str(users)})
    d.send(subject="one")
    d.wait_messages(USER, 1)

    # Every folder facteur made, and the message, are the owner's.
    folder = d.maildir(USER)
    for path in (folder.parent, folder, folder / "tmp", folder / "new", folder / "cur"):
        assert mode_owner(path) == (0o770, owner[0], owner[1]), path
    (msg,) = d.maildir_files(USER)
    assert mode_owner(msg) == (0o660, owner[0], owner[1])
    # The spool stays the daemon's.
    assert all(p.stat().st_uid == 0 for p in d.spool.rglob("*"))

    dc = Dovecot(base, d.mail_root, [USER, "fresh@localhost"])
    dovecots.append(dc)
    m = dc.login(USER)
    typ, _ = m.select("INBOX")
    assert typ == "OK", dc.log()
    assert imap_subjects(m) == ["Subject: one"]
    typ, data = m.fetch(b"1", "(RFC822)")
    assert typ == "OK"
    assert b"Subject: one" in data[0][1] and b"hello" in data[0][1]
    assert m.store(b"1", "+FLAGS", "\\Seen")[0] == "OK"

    # Dovecot moved the message to cur/ and wrote its index files as the
    # owner; facteur keeps delivering into the folder meanwhile.
    d.send(subject="two")
    d.wait_messages(USER, 2)
    h.wait_for(lambda: len(imap_search(m)) == 2 or (m.noop() and False),
               what="IMAP sees the second message")
    assert imap_subjects(m) == ["Subject: one", "Subject: two"]
    assert m.store(b"1", "+FLAGS", "\\Deleted")[0] == "OK"
    assert m.expunge()[0] == "OK"
    assert imap_subjects(m) == ["Subject: two"]
    m.logout()
    d.send(subject="three")
    d.wait_messages(USER, 2)
    assert not d.events("deferred") and not d.events("bounced"), d.log_tail()

    # POP3 sees the same mailbox, and its deletion is Dovecot's too.
    p = pop3_login(pop3_port)
    count, _ = p.stat()
    assert count == 2
    tops = [b"\n".join(p.top(i, 0)[1]) for i in (1, 2)]
    assert any(b"Subject: two" in t for t in tops)
    assert any(b"Subject: three" in t for t in tops)
    p.dele(1)
    p.quit()
    m = dc.login(USER)
    m.select("INBOX")
    assert len(imap_search(m)) == 1
    m.logout()

    # A folder Dovecot made first (at login) is delivered into as well.
    m = dc.login("fresh@localhost")
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    fresh = d.maildir("fresh@localhost")
    assert fresh.is_dir() and fresh.stat().st_uid == owner[0]
    d.send(recipients=("fresh@localhost",), subject="to a dovecot folder")
    d.wait_messages("fresh@localhost", 1)
    m = dc.login("fresh@localhost")
    m.select("INBOX")
    assert imap_subjects(m) == ["Subject: to a dovecot folder"]
    m.logout()


def test_started_as_root_keeps_no_capability(owner, base, daemons):
    """With `user` set, facteurd runs as that account and can act only as
    the mailbox owner: its saved uid, no capability."""
    nobody = pwd.getpwnam("nobody")
    d = start_facteur(daemons, base, owner, {
        "user": "nobody", "mailbox_owner": OWNER, "mailbox_mode": "0640"},
        # A process that changed its uid may not be traced: the leak
        # checker of a sanitizer build cannot run at its exit.
        env={"ASAN_OPTIONS": ":".join(
            filter(None, [os.environ.get("ASAN_OPTIONS"), "detect_leaks=0"]))})
    status = Path("/proc/%d/status" % d.pid).read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split() == [str(nobody.pw_uid), str(nobody.pw_uid),
                                     str(owner[0]), str(nobody.pw_uid)]
    assert fields["Gid"].split()[2] == str(owner[1])
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    d.send(subject="dropped")
    d.wait_messages(USER, 1)
    (msg,) = d.maildir_files(USER)
    assert mode_owner(msg) == (0o640, owner[0], owner[1])
    assert mode_owner(d.maildir(USER)) == (0o750, owner[0], owner[1])
    assert all(p.stat().st_uid == nobody.pw_uid for p in d.spool.rglob("*"))


def test_mbox_owned_by_the_mailbox_owner(owner, base, daemons):
    """The /var/mail setup: an mbox owned by mailbox_owner is appended to,
    a new one is made as the owner, and one owned by another account is
    still refused (deferred)."""
    d = start_facteur(daemons, base, owner, {
        "mailbox_owner": OWNER, "mailbox_mode": "0660", "mailbox_format": "mbox",
        "mailbox_path": "%s/%%u" % (base / "facteur" / "mail")})
    existing = d.mail_root / "user"
    existing.write_bytes(b"")
    os.chown(existing, owner[0], owner[1])
    existing.chmod(0o660)
    d.send(subject="appended")
    h.wait_for(lambda: b"Subject: appended" in existing.read_bytes(),
               what="the mbox append\n" + d.log_tail())
    assert mode_owner(existing) == (0o660, owner[0], owner[1])

    d.send(recipients=("new@localhost",), subject="made")
    made = d.mail_root / "new"
    h.wait_for(lambda: made.exists() and b"Subject: made" in made.read_bytes(),
               what="the new mbox\n" + d.log_tail())
    assert mode_owner(made) == (0o660, owner[0], owner[1])

    foreign = d.mail_root / "other"
    foreign.write_bytes(b"")  # root's, not the owner's
    foreign.chmod(0o666)
    d.send(recipients=("other@localhost",), subject="refused")
    (ev,) = d.wait_event("deferred", rcpt="other@localhost")
    assert ev["dsn"] == "4.2.0", ev
    assert "owned by uid 0, not %d" % owner[0] in ev["reason"], ev
    assert foreign.read_bytes() == b""


@pytest.mark.parametrize("lines, message", [
    (["mailbox_owner = no-such-account-x"], "no such user"),
    (["mailbox_owner = %s:no-such-group-x" % OWNER], "no such group"),
    (["mailbox_owner = root"], "root cannot be the mailbox owner"),
    (["mailbox_mode = 0666"], "world-writable"),
    (["mailbox_mode = 0755"], "executable"),
    (["mailbox_mode = 660"], "octal"),
    (["mailbox_mode = rw-rw----"], "octal"),
])
def test_bad_owner_or_mode_exits_78(owner, tmp_path, lines, message):
    conf = tmp_path / "facteur.conf"
    conf.write_text("spool_dir = %s\n" % (tmp_path / "spool") + "\n".join(lines) + "\n")
    for args in (["-n", "-c", str(conf)], ["-c", str(conf)]):
        r = h.run_facteurd(args)
        err = r.stderr.decode()
        assert r.returncode == h.EX_CONFIG, (args, r.returncode, err)
        assert "%s:2: %s" % (conf, lines[0].split()[0]) in err, err
        assert message in err, err


def test_started_as_another_account_cannot_act_as_owner(owner, base):
    """Neither root nor the owner: facteurd could not write as the owner,
    so it says so and stops (exit 78) instead of failing every delivery."""
    nobody = pwd.getpwnam("nobody")
    work = base / "nobody"
    work.mkdir()
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    conf = work / "facteur.conf"
    conf.write_text("listen = 127.0.0.1:%d\nspool_dir = %s\nmailbox_path = %s/%%d/%%u\n"
                    "mailbox_owner = %s\n" % (h.free_port(), work / "spool", work / "mail", OWNER))
    r = subprocess.run(["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
                        "--clear-groups", str(h.FACTEURD), "-c", str(conf)],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                       env=h.clean_env(), cwd=str(work))
    err = r.stderr.decode()
    assert r.returncode == h.EX_CONFIG, (r.returncode, err)
    assert "event=startup_error mailbox_owner=%s" % OWNER in err, err
    assert "cannot act as the mailbox owner" in err, err
