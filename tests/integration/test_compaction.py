"""Spool compaction through the running daemon: once the log holds much
more than the live messages (here: most messages of a full segment
deleted), the scheduler offers the spool the live messages of its oldest
segment, a slice a loop turn; they are moved, the old segment goes, and
every message left survives a kill -9 and keeps its text.

Segments are 64 MiB and only messages up to 64 KiB are written into them,
so the test writes about 75 MiB of 60 KiB messages.
"""

import os

import facteur_harness as h
from test_facteurctl import deferring_daemon, ok

LINE = "x" * 98 + "\r\n"
BODY = LINE * 600  # 60,000 octets
MESSAGES = 1250
KEPT_EVERY = 100
PER_CONNECTION = 125


def segments(d):
    return sorted(p for p in os.listdir(d.spool / "log") if p.endswith(".seg"))


def test_compaction_moves_the_live_messages_and_keeps_them(make_daemon):
    d = deferring_daemon(make_daemon)
    kept = {}
    for start in range(0, MESSAGES, PER_CONNECTION):
        with d.smtp() as s:
            for i in range(start, start + PER_CONNECTION):
                keep = i % KEPT_EVERY == 0
                tag = ("kept%04d" if keep else "gone%04d") % i
                sender = "keep@example.org" if keep else "drop@example.org"
                msg = h.make_message(subject=tag, body=BODY, sender=sender,
                                     to="u%d@remote.test" % i)
                s.sendmail(sender, ["u%d@remote.test" % i], msg)
                if keep:
                    kept[tag] = None
    before = segments(d)
    assert len(before) >= 2, before
    out = ok(d, "delete", "--sender", "drop@example.org")
    assert out.strip() == "deleted %d" % (MESSAGES - len(kept)), out
    # the scheduler offers the messages every 10 s; the oldest segment
    # goes once its live messages are moved
    h.wait_for(lambda: before[0] not in segments(d), 60,
               what="the oldest segment compacted away")
    d.kill9()
    d.start()
    lines = [m for m in ok(d, "queue").splitlines() if m and not m.startswith("--")]
    assert len(lines) == len(kept), lines
    # every message kept is whole: its subject, and its body's size
    for line in lines:
        qid, _, size = line.split()[:3]
        assert int(size) > len(BODY), line
        shown = ok(d, "show", qid)
        tag = next(t for t in kept if "Subject: %s" % t in shown)
        kept[tag] = qid
    assert all(kept.values()), kept
