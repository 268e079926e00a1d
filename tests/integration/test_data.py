"""DATA: the end marker and SMTP smuggling, mail loops, size limits and
bounded memory (SPEC §4, §8)."""

import threading
import time

import pytest

import facteur_harness as h


def open_data(c, rcpts=("user@localhost",), sender="a@sender.test"):
    c.ehlo()
    r = c.cmd("MAIL FROM:<%s>" % sender)
    assert r.code == 250, r
    for rcpt in rcpts:
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r


# --------------------------------------------------------------------------
# smuggling: only <CRLF>.<CRLF> ends DATA

SMUGGLE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLE_ENDS))
def test_bare_lf_or_cr_never_ends_data(daemon, name):
    sep = SMUGGLE_ENDS[name]
    smuggled = (b"MAIL FROM:<x@y.test>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled body\r\n")
    data = (b"From: <a@sender.test>\r\nTo: <user@localhost>\r\nSubject: carrier " +
            name.encode() + b"\r\n\r\nbefore the fake end" + sep + smuggled)
    with daemon.raw() as c:
        open_data(c)
        c.send(data + b".\r\n")
        r = c.reply()
        assert r.code == 250, r
        h.queue_id_of(r)
        # nothing else may follow: a smuggled transaction would answer here
        r = c.cmd("QUIT")
        assert r.code == 221, "out of sync after DATA (smuggled commands ran?): %r" % r
    msgs = daemon.wait_messages("user@localhost")
    time.sleep(1.5)
    msgs = daemon.maildir_messages("user@localhost")
    assert len(msgs) == 1, msgs
    assert daemon.maildir_messages("victim@localhost") == []
    assert not daemon.maildir("victim@localhost").exists()
    msg = msgs[0]
    assert b"before the fake end" in msg
    assert b"MAIL FROM:<x@y.test>" in msg
    assert b"RCPT TO:<victim@localhost>" in msg
    assert b"smuggled body" in msg
    assert len(daemon.events("accepted")) == 1


def test_smuggling_with_pipelined_commands_after_data(daemon):
    """The whole attack in one write, as an attacker would send it."""
    with daemon.raw() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<x@y.test>\nRCPT TO:<victim@localhost>\n"
               b"DATA\nSubject: two\n\nsmuggled\n.\nQUIT\n\r\n.\r\nQUIT\r\n")
        r = c.reply()
        assert r.code == 250, r
        r = c.reply()
        assert r.code == 221, r
    daemon.wait_messages("user@localhost")
    time.sleep(1.5)
    assert len(daemon.maildir_messages("user@localhost")) == 1
    assert daemon.maildir_messages("victim@localhost") == []


def test_bare_lf_lines_are_stored_with_line_ends(daemon):
    with daemon.raw() as c:
        open_data(c)
        c.send(b"Subject: bare lf\r\n\r\nfirst\nsecond\rthird\r\n.\r\n")
        assert c.reply().code == 250
    msg = daemon.wait_messages("user@localhost")[0]
    assert b"first" in msg and b"second" in msg and b"third" in msg


# --------------------------------------------------------------------------
# mail loops

def loop_message(n_received):
    hops = b"".join(b"Received: from hop%d.test by relay%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
                    % (i, i) for i in range(n_received))
    return hops + b"From: <a@sender.test>\r\nSubject: %d hops\r\n\r\nloop body\r\n" % n_received


def test_100_received_headers_are_accepted(daemon):
    with daemon.raw() as c:
        open_data(c)
        c.send(h.dot_stuff(loop_message(100)))
        r = c.reply()
        assert r.code == 250, r
    msg = daemon.wait_messages("user@localhost")[0]
    names = [n.lower() for n, _ in h.header_block(msg)]
    assert names.count(b"received") == 101  # 100 + facteur's own


def test_101_received_headers_are_refused_as_a_loop(daemon):
    with daemon.raw() as c:
        open_data(c)
        c.send(h.dot_stuff(loop_message(101)))
        r = c.reply()
        assert r.code == 554, r
        assert r.enhanced == "5.4.6", r
        # the session is still usable
        assert c.cmd("RSET").code == 250
        r = c.send_message("a@sender.test", ["other@localhost"], h.make_message("after loop"),
                           ehlo=False)
        assert r.code == 250, r
    daemon.wait_messages("other@localhost")
    time.sleep(1)
    assert daemon.maildir_messages("user@localhost") == []


def test_received_in_body_is_not_counted(daemon):
    body = b"".join(b"Received: from body%d\r\n" % i for i in range(150))
    with daemon.raw() as c:
        open_data(c)
        c.send(h.dot_stuff(b"Subject: received in body\r\n\r\n" + body))
        r = c.reply()
        assert r.code == 250, r
    daemon.wait_messages("user@localhost")


# --------------------------------------------------------------------------
# size limits and memory

class RssSampler(threading.Thread):
    def __init__(self, daemon):
        super().__init__(daemon=True)
        self.d = daemon
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(self.d.rss_kb())
            except (OSError, AssertionError):
                pass
            time.sleep(0.02)


def test_50mb_message_refused_after_its_end_with_bounded_memory(make_daemon):
    # Under ASan, freed blocks sit in a quarantine (256 MB by default) and
    # would look like growth: keep it small so RSS shows live memory.
    d = make_daemon(config={"max_message_size": "1M"}, env=h.small_quarantine_env())
    line = b"x" * 76 + b"\r\n"
    chunk = b"Subject: huge\r\n\r\n" + line * (1024 * 1024 // len(line))
    total = 50 * 1024 * 1024
    with d.raw(timeout=120) as c:
        open_data(c)
        before = d.rss_kb()
        sampler = RssSampler(d)
        sampler.start()
        sent = 0
        first = True
        while sent < total:
            piece = chunk if first else line * (1024 * 1024 // len(line))
            first = False
            c.send(piece)
            sent += len(piece)
        c.send(b".\r\n")
        r = c.reply()
        sampler.stop.set()
        sampler.join()
        assert r.code == 552, r
        assert r.enhanced == "5.3.4", r
        peak = max(sampler.samples + [d.rss_kb()])
        growth_mb = (peak - before) / 1024.0
        assert growth_mb < 30, "VmRSS grew by %.1f MB during a 50 MB transfer (%d -> %d kB)" % (
            growth_mb, before, peak)
        # the session is still usable
        assert c.cmd("RSET").code == 250
        assert c.cmd("NOOP").code == 250
        r = c.cmd("QUIT")
        assert r.code == 221, r
    time.sleep(1)
    assert d.maildir_messages("user@localhost") == []
    assert not d.events("accepted")
    d.assert_alive()


def exact_message(size, dotted=False):
    """A message of exactly `size` octets (CRLF line ends, unstuffed),
    lines of at most 72 octets."""
    head = b"Subject: exact size\r\n\r\n"
    if dotted:
        head += b".starts with a dot\r\n"
    body = b""
    remaining = size - len(head)
    assert remaining >= 2
    while remaining >= 74:
        body += b"y" * 70 + b"\r\n"
        remaining -= 72
    body += b"y" * (remaining - 2) + b"\r\n"
    msg = head + body
    assert len(msg) == size, (len(msg), size)
    return msg


@pytest.mark.parametrize("dotted", [False, True])
def test_message_exactly_at_the_limit_is_accepted(make_daemon, dotted):
    d = make_daemon(config={"max_message_size": "1K"})
    msg = exact_message(1024, dotted)
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test> SIZE=1024").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(msg))
        r = c.reply()
        assert r.code == 250, "a message of exactly max_message_size octets: %r" % r
    got = d.wait_messages("user@localhost")[0]
    assert b"yyyy" in got


def test_message_one_octet_over_the_limit_is_refused(make_daemon):
    d = make_daemon(config={"max_message_size": "1K"})
    msg = exact_message(1025)
    with d.raw() as c:
        open_data(c)
        c.send(h.dot_stuff(msg))
        r = c.reply()
        assert r.code == 552, r
        assert r.enhanced == "5.3.4", r
        assert c.cmd("NOOP").code == 250
    time.sleep(1)
    assert d.maildir_messages("user@localhost") == []


def test_bdat_over_the_limit_is_refused(make_daemon):
    d = make_daemon(config={"max_message_size": "1K"})
    chunk = b"Subject: big bdat\r\n\r\n" + b"z" * 2000 + b"\r\n"
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.code == 552, r
        assert r.enhanced == "5.3.4", r
        assert c.cmd("NOOP").code == 250
    time.sleep(1)
    assert d.maildir_messages("user@localhost") == []
