"""A message acknowledged with 250 is never lost and never delivered twice,
even when the daemon is SIGKILLed under load (SPEC §4, §5, §7)."""

import os
import random
import re
import threading
import time

import pytest

import facteur_harness as h

CLIENTS = 10
DURATION = 30.0
SEED = int(os.environ.get("DURABILITY_SEED", "20261126"))
TOKEN_RE = re.compile(rb"tok-\d+-\d+")
SHARED = "all@example.test"


class Client(threading.Thread):
    """Sends messages one after another; records the tokens whose DATA got
    a 250. Every failure (refused connection, reset by a kill) is ignored:
    it simply tries again with a new token."""

    def __init__(self, d, n, stop):
        super().__init__(daemon=True)
        self.d, self.n, self.stop = d, n, stop
        self.acked = []
        self.attempts = 0
        self.failures = 0

    def run(self):
        seq = 0
        while not self.stop.is_set():
            seq += 1
            token = "tok-%d-%d" % (self.n, seq)
            self.attempts += 1
            try:
                c = h.RawClient("127.0.0.1", self.d.port, timeout=15)
            except Exception:  # noqa: BLE001 - refused, or reset before the banner
                self.failures += 1
                time.sleep(0.05)
                continue
            try:
                if c.banner.code != 220:
                    raise ConnectionError(str(c.banner))
                msg = h.make_message(token, body="token %s\r\nsecond line\r\n" % token,
                                     to="dur%d@localhost" % self.n)
                r = c.send_message("client%d@sender.test" % self.n,
                                   ["dur%d@localhost" % self.n, SHARED], msg)
                if r.code == 250:
                    self.acked.append(token)
                try:
                    c.cmd("QUIT")
                except Exception:  # noqa: BLE001 - the daemon may be gone
                    pass
            except Exception:  # noqa: BLE001 - killed mid-transaction
                self.failures += 1
            finally:
                c.close()


def tokens_by_mailbox(d):
    """{mailbox address: {token: number of messages holding it}}"""
    out = {}
    boxes = ["dur%d@localhost" % i for i in range(CLIENTS)] + [SHARED]
    for box in boxes:
        counts = {}
        for m in d.maildir_messages(box):
            for tok in set(TOKEN_RE.findall(m)):
                counts[tok.decode()] = counts.get(tok.decode(), 0) + 1
        out[box] = counts
    return out


@pytest.mark.parametrize("flush_method", ["fsync", "syncfs"])
def test_kill9_under_load_loses_and_duplicates_nothing(make_daemon, flush_method):
    d = make_daemon(config={"retry_min": "1s", "retry_max": "2s",
                            "max_connections_per_ip": 1000,
                            "flush_method": flush_method})
    rnd = random.Random(SEED)
    kills = sorted(rnd.uniform(2.0, DURATION - 2.0) for _ in range(rnd.randint(3, 5)))

    stop = threading.Event()
    clients = [Client(d, i, stop) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    t0 = time.monotonic()
    for at in kills:
        delay = at - (time.monotonic() - t0)
        if delay > 0:
            time.sleep(delay)
        d.kill9()
        d.start()  # same spool, same port; waits for the banner
    left = DURATION - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    stop.set()
    for c in clients:
        c.join(60)
    assert not any(c.is_alive() for c in clients), "a client thread hung"

    acked = [t for c in clients for t in c.acked]
    print("durability: seed %d, kills at %s, %d attempts, %d acknowledged, %d failures" % (
        SEED, ["%.1f" % k for k in kills], sum(c.attempts for c in clients), len(acked),
        sum(c.failures for c in clients)))
    assert len(acked) == len(set(acked))
    assert len(acked) >= 20, "too little traffic got through (%d acknowledged, %d attempts)" % (
        len(acked), sum(c.attempts for c in clients))
    d.assert_alive()

    def complete():
        boxes = tokens_by_mailbox(d)
        for c in clients:
            own = boxes["dur%d@localhost" % c.n]
            if any(t not in own for t in c.acked):
                return None
        if any(t not in boxes[SHARED] for t in acked):
            return None
        return boxes

    try:
        h.wait_for(complete, 180, interval=1, what="every acknowledged message delivered")
    except AssertionError:
        boxes = tokens_by_mailbox(d)
        missing = [t for c in clients for t in c.acked
                   if t not in boxes["dur%d@localhost" % c.n]]
        missing_shared = [t for t in acked if t not in boxes[SHARED]]
        raise AssertionError(
            "acknowledged but never delivered: %d of %d (e.g. %s), in %s: %d (e.g. %s); "
            "kills at %s\n--- log tail:\n%s" % (
                len(missing), len(acked), missing[:5], SHARED, len(missing_shared),
                missing_shared[:5], ["%.1f" % k for k in kills], d.log_tail(40)))

    # let anything still in flight land, then look for duplicates
    time.sleep(5)
    boxes = tokens_by_mailbox(d)
    dups = {box: {t: n for t, n in counts.items() if n > 1} for box, counts in boxes.items()}
    dups = {box: v for box, v in dups.items() if v}
    assert not dups, "tokens delivered more than once: %s" % dups
    # a token may only be in the mailbox of the client that sent it
    for c in clients:
        stray = [t for t in boxes["dur%d@localhost" % c.n] if not t.startswith("tok-%d-" % c.n)]
        assert not stray, stray
    d.assert_alive()
