"""POP3 login: the mailbox is opened and sized off the loop, sizes come
from a Maildir name's ",W=" when it has one (S= is the LF size and is not
used), and failed logins count across sessions (auth_fail_limit)."""

import os
import time

import facteur_harness as h
from test_pop3 import (PASSWORD, USER, Pop3Raw, certificate,  # noqa: F401
                       make_pop3, users_text)


def put(d, name, data, mtime):
    """A message file written into USER's Maildir new/ by another MDA."""
    new = d.maildir(USER) / "new"
    new.mkdir(parents=True, exist_ok=True)
    path = new / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def crlf_size(data):
    return len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_sizes_from_w_in_the_name_or_measured(make_pop3):
    p = make_pop3(config={"log_level": "debug"})
    d = p.d
    plain = b"Subject: one\n\nline\nline\n"
    dovecot = b"Subject: two\n\nfirst\nsecond\nthird\n"
    lying = b"Subject: three\n\nshort\n"
    # No W=: measured (S= is the size on disk, with LF ends: not used).
    put(d, "1700000001.M1P1.mx,S=%d" % len(plain), plain, 1700000001)
    # W= as Dovecot writes it: the CRLF size.
    put(d, "1700000002.M2P2.mx,S=%d,W=%d" % (len(dovecot), crlf_size(dovecot)),
        dovecot, 1700000002)
    # A W= that is wrong is trusted, as Dovecot trusts it: the file is
    # not read to size it.
    put(d, "1700000003.M3P3.mx,W=4242", lying, 1700000003)
    c = Pop3Raw(d.host, p.port)
    try:
        assert c.cmd("USER " + USER).startswith(b"+OK")
        r = c.cmd("PASS " + PASSWORD)
        total = crlf_size(plain) + crlf_size(dovecot) + 4242
        assert r.startswith(b"+OK maildrop has 3 messages (%d octets)" % total), r
        assert c.cmd("STAT") == b"+OK 3 %d" % total
        assert c.cmd("LIST 1") == b"+OK 1 %d" % crlf_size(plain)
        assert c.cmd("LIST 2") == b"+OK 2 %d" % crlf_size(dovecot)
        assert c.cmd("LIST 3") == b"+OK 3 4242"
        # RETR of a W= message is its wire form all the same.
        assert c.cmd("RETR 2").startswith(b"+OK")
        body = c.multi_raw()
        assert body == dovecot.replace(b"\n", b"\r\n") + b".\r\n", body
        c.cmd("QUIT")
    finally:
        c.sock.close()
    # The password check and the mailbox scan went through the worker:
    # the session waited in these states while the loop went on.
    assert d.events("pop3_state", to="checking"), d.log_tail()
    assert d.events("pop3_state", to="opening"), d.log_tail()


def test_pop3_failures_count_with_the_address_and_refuse_it(make_pop3):
    p = make_pop3(config={"auth_fail_limit": "2/4s"})
    start = time.monotonic()
    for _ in range(2):
        c = Pop3Raw(p.d.host, p.port)
        try:
            assert c.cmd("USER " + USER).startswith(b"+OK")
            r = c.cmd("PASS wrong")
            assert r.startswith(b"-ERR [AUTH]"), r
        finally:
            c.sock.close()
    c = Pop3Raw(p.d.host, p.port)
    try:
        assert c.greeting.startswith(b"-ERR [AUTH]"), c.greeting
    finally:
        c.sock.close()
    # SMTP sessions from the address are refused too: one count.
    with p.d.raw() as s:
        assert s.banner.code == 421 and s.banner.enhanced == "4.7.0", s.banner
    assert time.monotonic() - start < 4
    time.sleep(max(0.0, start + 4.5 - time.monotonic()))
    pop = p.login()
    assert pop.stat()[0] == 0
    pop.quit()
