"""POP3 and symbolic links in the mailboxes: below the mail root no link is
followed, so that the owner of one mailbox never reads, moves or deletes
another's mail over POP3 by planting a link (the rule local delivery keeps,
docs/operations.md "Mailboxes and links")."""

import os
import stat

import facteur_harness as h
from test_pop3 import (OTHER, OTHER_PASSWORD, USER, Pop3Raw,  # noqa: F401
                       certificate, make_pop3, users_text)

SECRET = "the other user's secret"


def snapshot(root):
    """{path below root: bytes} of every regular file under a folder, not
    following links, and the other entries as {path: link target or
    "fifo"}."""
    files, others = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                others[rel] = os.readlink(p)
            elif stat.S_ISFIFO(mode):
                others[rel] = "fifo"
            elif stat.S_ISREG(mode):
                with open(p, "rb") as f:
                    files[rel] = f.read()
    return files, others


def victim_with_mail(pop3):
    """The other user's mailbox with one message in cur/ (seen once) and one
    in new/, both carrying SECRET; returns its folder."""
    pop3.deliver("seen " + SECRET, body=SECRET + " 1\r\n", rcpt=OTHER)
    m = pop3.login(OTHER, OTHER_PASSWORD)
    assert m.stat()[0] == 1
    m.quit()
    pop3.deliver("unseen " + SECRET, body=SECRET + " 2\r\n", rcpt=OTHER)
    folder = pop3.d.maildir(OTHER)
    assert len(os.listdir(folder / "cur")) == 1
    assert len(os.listdir(folder / "new")) == 1
    return folder


def attacker_with_mail(pop3):
    """The attacker's own mailbox with one message delivered to new/."""
    pop3.deliver("mine", body="my own mail\r\n", rcpt=USER)
    return pop3.d.maildir(USER)


def attack(pop3):
    """Log in as the attacker and try everything: LIST, UIDL, TOP and RETR of
    each message, DELE of each, QUIT. Returns (the PASS reply, every octet the
    server sent)."""
    seen = b""
    with Pop3Raw(pop3.d.host, pop3.port) as c:
        assert c.cmd("USER " + USER).startswith(b"+OK")
        answer = c.cmd("PASS secret")
        seen += answer
        if not answer.startswith(b"+OK"):
            r = c.cmd("QUIT")
            assert r.startswith(b"+OK"), r
            return answer, seen
        r = c.cmd("LIST")
        assert r.startswith(b"+OK"), r
        listing = c.multi_raw()
        seen += listing
        count = len(listing.split(b"\r\n")) - 2
        assert c.cmd("UIDL").startswith(b"+OK")
        seen += c.multi_raw()
        for n in range(1, count + 1):
            for command in ("TOP %d 100" % n, "RETR %d" % n):
                r = c.cmd(command)
                seen += r
                if r.startswith(b"+OK"):
                    seen += c.multi_raw()
            seen += c.cmd("DELE %d" % n)
        seen += c.cmd("QUIT")
        seen += c.wait_closed()
    return answer, seen


def assert_refused(pop3, answer, path):
    assert answer.startswith(b"-ERR [SYS/TEMP]"), answer
    ev = pop3.d.wait_event("pop3_mailbox_error", user=USER)
    assert ev[-1].get("path") == str(path), ev[-1]


def test_cur_linked_to_another_users_cur_is_refused(make_pop3):
    pop3 = make_pop3()
    victim = victim_with_mail(pop3)
    mine = attacker_with_mail(pop3)
    m = pop3.login()  # makes cur/ and moves the attacker's mail into it
    m.quit()
    for name in os.listdir(mine / "cur"):
        os.rename(mine / "cur" / name, mine / "new" / name)
    os.rmdir(mine / "cur")
    os.symlink(victim / "cur", mine / "cur")
    before = snapshot(victim)
    answer, seen = attack(pop3)
    assert SECRET.encode() not in seen
    assert snapshot(victim) == before
    assert_refused(pop3, answer, mine / "cur")
    # the attacker's own mail was not moved through the link either
    assert len(os.listdir(mine / "new")) == 1


def test_new_linked_to_another_users_new_is_refused(make_pop3):
    pop3 = make_pop3()
    victim = victim_with_mail(pop3)
    mine = attacker_with_mail(pop3)
    for name in os.listdir(mine / "new"):
        os.rename(mine / "new" / name, mine / "cur" / (name + ":2,"))
    os.rmdir(mine / "new")
    os.symlink(victim / "new", mine / "new")
    before = snapshot(victim)
    answer, seen = attack(pop3)
    assert SECRET.encode() not in seen
    assert snapshot(victim) == before
    assert_refused(pop3, answer, mine / "new")


def test_mailbox_folder_linked_to_another_users_folder_is_refused(make_pop3):
    pop3 = make_pop3()
    victim = victim_with_mail(pop3)
    mine = pop3.d.maildir(USER)
    mine.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim.name, mine)  # relative: mail/localhost/user -> other
    before = snapshot(victim)
    answer, seen = attack(pop3)
    assert SECRET.encode() not in seen
    assert snapshot(victim) == before
    assert_refused(pop3, answer, mine)
    # the other user still reads all of their mail
    m = pop3.login(OTHER, OTHER_PASSWORD)
    assert m.stat()[0] == 2
    m.quit()


def test_links_to_another_users_messages_are_skipped(make_pop3):
    pop3 = make_pop3()
    victim = victim_with_mail(pop3)
    mine = attacker_with_mail(pop3)
    (theirs_new,) = os.listdir(victim / "new")
    (theirs_cur,) = os.listdir(victim / "cur")
    os.symlink(victim / "new" / theirs_new, mine / "new" / "1.planted.localhost")
    os.symlink(victim / "cur" / theirs_cur, mine / "cur" / "2.planted.localhost:2,")
    # a FIFO would stall a reader that opened it
    os.mkfifo(mine / "new" / "3.fifo.localhost")
    before = snapshot(victim)
    answer, seen = attack(pop3)
    assert answer.startswith(b"+OK maildrop has 1 messages"), answer
    assert SECRET.encode() not in seen
    assert b"my own mail" in seen
    assert snapshot(victim) == before
    # the links and the FIFO are neither moved, listed nor deleted; the
    # attacker's own message was deleted at QUIT
    files, others = snapshot(mine)
    assert files == {}
    assert set(others) == {"new/1.planted.localhost", "cur/2.planted.localhost:2,",
                           "new/3.fifo.localhost"}
    ev = pop3.d.wait_event("pop3_mailbox_skipped", user=USER)
    assert ev[-1].get("count") == "3", ev[-1]


def test_the_mail_root_itself_may_be_a_link(make_pop3, tmp_path):
    real = tmp_path / "disk" / "mail"
    real.mkdir(parents=True)
    root = tmp_path / "mailroot"
    os.symlink(real, root)
    pop3 = make_pop3(config={"mailbox_path": str(root) + "/%d/%u"})
    pop3.d.send(recipients=(USER,), subject="via the root link", body="through\r\n")
    h.wait_for(lambda: os.path.isdir(real / "localhost" / "user" / "new")
               and os.listdir(real / "localhost" / "user" / "new"),
               timeout=h.IO_TIMEOUT, what="delivery below the linked root")
    m = pop3.login()
    assert m.stat()[0] == 1
    assert b"through" in b"\r\n".join(m.retr(1)[1])
    m.dele(1)
    assert m.quit().startswith(b"+OK")
    assert os.listdir(real / "localhost" / "user" / "cur") == []
    assert os.listdir(real / "localhost" / "user" / "new") == []
