"""Queue tooling (docs/operations.md, "Queue tooling"): facteurctl queue
with filters and --json, summary, hold/release, suspend/resume, delete and
bounce by domain or sender, their durability across restarts, bad input,
and listings streamed while the daemon keeps taking mail.

Remote mail goes to a loopback port: a closed one (it stays deferred) or a
scripted SMTP server (to see every attempt).
"""

import json
import os
import socket
import subprocess
import threading
import time

import pytest

import facteur_harness as h
import relay_harness as rh
from test_facteurctl import (EXIT_REFUSED, EXIT_USAGE, FACTEURCTL, ctl, deferring_daemon,
                             ok, queue_ids, send_deferred)


def queue_json(d, *args):
    out = ok(d, "queue", "--json", *args)
    return [json.loads(line) for line in out.splitlines()]


def summary_json(d):
    return {row["domain"]: row for row in
            (json.loads(line) for line in ok(d, "summary", "--json").splitlines())}


def relaying_daemon(make_daemon, sink_port, config=None):
    """Every remote domain goes to the scripted server; retries come
    quickly so that an attempt that should not happen would."""
    cfg = {"retry_min": "1s", "retry_max": "2s",
           "dns_servers": "127.0.0.1:%d" % h.free_port()}
    cfg.update(config or {})
    d = make_daemon(config=cfg, start=False)
    d.extra_lines.append("route = * [127.0.0.1]:%d tls=none" % sink_port)
    return d.start()


@pytest.fixture
def sink():
    s = rh.ScriptedSMTP("127.0.0.1", h.free_port())
    s.start()
    yield s
    s.stop()


# --------------------------------------------------------------------------
# listing

def test_queue_json_lists_every_field(make_daemon):
    d = deferring_daemon(make_daemon)
    qid = send_deferred(d, rcpt="someone@remote.test")
    [m] = queue_json(d)
    assert m["v"] == 1
    assert m["id"] == qid
    assert m["sender"] == "sender@example.org"
    assert m["held"] is False
    assert m["state"] == "deferred"
    assert m["size"] > 0
    assert m["age_seconds"] >= 0
    assert time.strptime(m["arrival"], "%Y-%m-%dT%H:%M:%SZ")
    [r] = m["recipients"]
    assert r["address"] == "someone@remote.test"
    assert r["state"] == "deferred"
    assert r["attempts"] == 1
    assert r["last_error"].startswith("4.")
    assert time.strptime(r["next_attempt"], "%Y-%m-%dT%H:%M:%SZ")


def test_queue_filters(make_daemon):
    d = deferring_daemon(make_daemon)
    a = send_deferred(d, sender="alice@example.org", rcpt="x@one.test")
    b = send_deferred(d, sender="bob@example.org", rcpt="y@two.test")
    c = send_deferred(d, sender="alice@example.org", rcpt="z@two.test")
    ids = lambda *args: sorted(m["id"] for m in queue_json(d, *args))
    assert ids() == sorted([a, b, c])
    assert ids("--domain", "TWO.test") == sorted([b, c])
    assert ids("--sender", "alice@example.org") == sorted([a, c])
    assert ids("--domain", "two.test", "--sender", "alice@example.org") == [c]
    assert ids("--state", "deferred") == sorted([a, b, c])
    assert ids("--state", "pending") == []
    assert ids("--older-than", "1h") == []
    assert ids("--older-than", "0s") == sorted([a, b, c])
    assert len(ids("--limit", "2")) == 2
    # the human form, filtered
    out = ok(d, "queue", "--domain", "one.test")
    assert a in out and b not in out and c not in out
    assert "-- 1 message" in out
    assert ok(d, "queue", "--domain", "nowhere.test").strip() == "No message matches"


def test_queue_without_options_is_unchanged(make_daemon):
    d = deferring_daemon(make_daemon)
    qid = send_deferred(d)
    lines = ok(d, "queue").splitlines()
    assert lines[0].split()[0] == qid
    assert lines[-1].startswith("-- 1 message")


def test_summary_by_domain(make_daemon):
    d = deferring_daemon(make_daemon)
    assert ok(d, "summary").strip() == "Mail queue is empty"
    assert ok(d, "summary", "--json") == ""
    d.send(recipients=("a@big.test", "b@big.test", "c@small.test"))
    qid = d.send(recipients=("d@big.test",))
    d.wait_event("deferred", queue_id=qid)
    h.wait_for(lambda: len(d.events("deferred")) >= 4, 30, what="4 deferrals")
    rows = summary_json(d)
    assert set(rows) == {"big.test", "small.test"}
    big = rows["big.test"]
    assert big["v"] == 1
    assert (big["messages"], big["recipients"]) == (2, 3)
    assert rows["small.test"]["messages"] == 1
    assert big["oldest_age_seconds"] >= 0
    assert big["last_error"].startswith("4.")
    assert big["suspended"] is False and big["paused"] is False
    human = ok(d, "summary").splitlines()
    assert human[0].startswith("DOMAIN")
    assert human[1].split()[:3] == ["big.test", "2", "3"]  # most messages first


# --------------------------------------------------------------------------
# hold and release

def test_hold_and_release_by_id(make_daemon, sink):
    sink.replies["rcpt"] = "451 4.3.0 not now"
    d = relaying_daemon(make_daemon, sink.port)
    qid = d.send(recipients=("u@remote.test",))
    d.wait_event("deferred", queue_id=qid)
    assert ok(d, "hold", qid).strip() == "held 1"
    d.wait_event("held", queue_id=qid)
    [m] = queue_json(d)
    assert m["held"] is True and m["state"] == "held"
    assert [x["id"] for x in queue_json(d, "--state", "held")] == [qid]
    tries = len(sink.sessions)
    time.sleep(4)  # retry_max is 2s: a held message would be tried by now
    assert len(sink.sessions) == tries
    sink.replies["rcpt"] = None
    assert ok(d, "release", qid).strip() == "released 1"
    d.wait_event("delivered", queue_id=qid, timeout=rh.RELAY_TIMEOUT)
    assert len(sink.messages) == 1


def test_hold_in_flight_takes_effect_after_the_attempt(make_daemon, sink):
    """The attempt under way ends as it would have; then nothing more until
    released; then exactly one delivery."""
    in_data = threading.Event()
    go_on = threading.Event()

    def eom(session, data):
        in_data.set()
        go_on.wait(30)
        return "451 4.3.0 try again later"

    sink.replies["eom"] = eom
    d = relaying_daemon(make_daemon, sink.port)
    qid = d.send(recipients=("u@remote.test",))
    assert in_data.wait(30), "the attempt never reached the end of data"
    assert ok(d, "hold", qid).strip() == "held 1"
    go_on.set()
    d.wait_event("deferred", queue_id=qid, timeout=rh.RELAY_TIMEOUT)
    [m] = queue_json(d)
    assert m["held"] is True
    assert m["recipients"][0]["attempts"] == 1
    time.sleep(4)
    assert len(sink.sessions) == 1
    assert len(d.events("deferred", queue_id=qid)) == 1
    sink.replies["eom"] = None
    ok(d, "release", qid)
    d.wait_event("delivered", queue_id=qid, timeout=rh.RELAY_TIMEOUT)
    time.sleep(1)
    assert len(sink.messages) == 1
    assert len(d.events("delivered", queue_id=qid)) == 1


def test_hold_survives_restart_and_kill(make_daemon):
    d = deferring_daemon(make_daemon)
    a = send_deferred(d, rcpt="x@one.test")
    b = send_deferred(d, rcpt="y@two.test")
    assert ok(d, "hold", "--domain", "one.test").strip() == "held 1"
    d.wait_event("held", queue_id=a)
    time.sleep(0.5)  # the record is flushed with its loop turn
    d.kill9()
    d.start()
    held = {m["id"]: m["held"] for m in queue_json(d)}
    assert held == {a: True, b: False}
    d.restart()
    assert {m["id"]: m["held"] for m in queue_json(d)} == {a: True, b: False}
    assert ok(d, "release", "--sender", "sender@example.org").strip() == "released 2"
    assert not any(m["held"] for m in queue_json(d))


def test_hold_and_release_by_selector_with_no_match(make_daemon):
    d = deferring_daemon(make_daemon)
    send_deferred(d)
    for verb in ("hold", "release", "bounce", "delete"):
        r = ctl(d, verb, "--domain", "nowhere.test")
        assert r.returncode == EXIT_REFUSED, (verb, r)
        assert b"no message matches" in r.stderr


# --------------------------------------------------------------------------
# the queue's gauges

def queue_gauges(d):
    """facteur_queue_messages by state and the oldest message's age, as
    facteurctl stats gives them (the same numbers as /metrics)."""
    values = {}
    for line in ok(d, "stats").splitlines():
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    states = {st: values['facteur_queue_messages{state="%s"}' % st]
              for st in ("pending", "deferred", "held")}
    return states, values["facteur_queue_oldest_seconds"]


def listed_states(d):
    return {st: len(queue_json(d, "--state", st))
            for st in ("pending", "deferred", "held")}


def test_queue_gauges_follow_every_change(make_daemon):
    """The gauges are kept as messages change, not counted at each
    scrape: each step of a message's life moves them as the listing
    sees it, and a restart counts what the spool held."""
    d = deferring_daemon(make_daemon)
    assert queue_gauges(d) == ({"pending": 0, "deferred": 0, "held": 0}, 0)
    a = send_deferred(d, rcpt="x@one.test")
    time.sleep(1.1)  # a's age in whole seconds is then at least 1
    b = send_deferred(d, rcpt="y@two.test")
    c = send_deferred(d, rcpt="z@two.test")
    states, oldest = queue_gauges(d)
    assert states == {"pending": 0, "deferred": 3, "held": 0} == listed_states(d)
    assert oldest >= 1
    ok(d, "hold", b)
    d.wait_event("held", queue_id=b)
    assert queue_gauges(d)[0] == {"pending": 0, "deferred": 2, "held": 1} \
        == listed_states(d)
    ok(d, "delete", a)
    h.wait_for(lambda: a not in queue_ids(d), 10, what="a deleted")
    states, oldest = queue_gauges(d)
    assert states == {"pending": 0, "deferred": 1, "held": 1} == listed_states(d)
    assert oldest < 60
    d.restart()
    assert queue_gauges(d)[0] == {"pending": 0, "deferred": 1, "held": 1} \
        == listed_states(d)
    ok(d, "release", b)
    d.wait_event("released", queue_id=b)
    # released, b is tried at once and deferred again
    h.wait_for(lambda: len(d.events("deferred", queue_id=b)) >= 2, 30,
               what="b tried again after its release")
    assert queue_gauges(d)[0] == {"pending": 0, "deferred": 2, "held": 0} \
        == listed_states(d)
    ok(d, "bounce", c)
    h.wait_for(lambda: c not in queue_ids(d), 10, what="c bounced")
    # the DSN to the remote sender is deferred in its place
    h.wait_for(lambda: len(d.events("deferred")) >= 5, 30, what="the DSN tried")
    assert queue_gauges(d)[0] == {"pending": 0, "deferred": 2, "held": 0} \
        == listed_states(d)


def test_flush_and_resume_run_a_large_queue_in_slices(make_daemon, sink):
    """flush and resume walk the queue a slice a loop turn: every message
    of a queue larger than a slice is run, and sessions are served
    meanwhile."""
    d = relaying_daemon(make_daemon, sink.port,
                        config={"retry_min": "1h", "retry_max": "2h"})
    ok(d, "suspend", "remote.test")
    d.wait_event("suspended", domain="remote.test")
    ids = [d.send(recipients=("u%d@remote.test" % i,)) for i in range(300)]
    ok(d, "resume", "remote.test")
    probe = d.send(recipients=("p@other.test",))
    d.wait_event("delivered", queue_id=probe, timeout=rh.RELAY_TIMEOUT)
    h.wait_for(lambda: len(d.events("delivered")) >= 301, 120,
               what="every message delivered after the resume")
    assert {e["queue_id"] for e in d.events("delivered")} >= set(ids)
    # flush: the sink defers once, then the flush runs them all again
    sink.replies["rcpt"] = "451 4.3.0 try again"
    more = [d.send(recipients=("v%d@remote.test" % i,)) for i in range(300)]
    h.wait_for(lambda: len(d.events("deferred")) >= 300, 120,
               what="300 deferrals")
    del sink.replies["rcpt"]
    ok(d, "flush")
    h.wait_for(lambda: len(d.events("delivered")) >= 601, 120,
               what="every deferred message delivered after the flush")
    assert {e["queue_id"] for e in d.events("delivered")} >= set(more)


# --------------------------------------------------------------------------
# suspend and resume

def test_suspend_until_resumed_survives_restart(make_daemon, sink):
    d = relaying_daemon(make_daemon, sink.port)
    ok(d, "suspend", "remote.test")
    d.wait_event("suspended", domain="remote.test")
    empty = summary_json(d)["remote.test"]  # shown before any message
    assert (empty["messages"], empty["suspended"]) == (0, True)
    qid = d.send(recipients=("u@remote.test", "v@other.test"))
    d.wait_event("delivered", queue_id=qid, rcpt="v@other.test",
                 timeout=rh.RELAY_TIMEOUT)
    rows = summary_json(d)
    assert rows["remote.test"]["suspended"] is True
    assert rows["remote.test"]["suspended_until"] is None
    assert "suspended" in ok(d, "summary")
    d.restart()
    time.sleep(3)
    assert sink.rcpts_delivered() == ["v@other.test"]
    assert summary_json(d)["remote.test"]["suspended"] is True
    ok(d, "resume", "remote.test")
    d.wait_event("delivered", queue_id=qid, rcpt="u@remote.test",
                 timeout=rh.RELAY_TIMEOUT)
    r = ctl(d, "resume", "remote.test")
    assert r.returncode == EXIT_REFUSED and b"not suspended" in r.stderr


def test_suspend_for_a_duration_ends_by_itself(make_daemon, sink):
    d = relaying_daemon(make_daemon, sink.port)
    ok(d, "suspend", "remote.test", "3s")
    start = time.monotonic()
    qid = d.send(recipients=("u@remote.test",))
    until = summary_json(d)["remote.test"]["suspended_until"]
    assert time.strptime(until, "%Y-%m-%dT%H:%M:%SZ")
    d.wait_event("delivered", queue_id=qid, timeout=rh.RELAY_TIMEOUT)
    assert time.monotonic() - start >= 2  # generous: whole seconds


# --------------------------------------------------------------------------
# delete and bounce by selector

def test_delete_by_domain_with_dry_run(make_daemon):
    d = deferring_daemon(make_daemon)
    a = send_deferred(d, rcpt="x@one.test")
    send_deferred(d, rcpt="y@two.test")
    send_deferred(d, rcpt="z@two.test")
    assert ok(d, "delete", "--domain", "two.test", "--dry-run").strip() == "would delete 2"
    assert len(queue_json(d)) == 3
    assert ok(d, "delete", "--domain", "two.test").strip() == "deleted 2"
    assert [m["id"] for m in queue_json(d)] == [a]
    d.restart()
    assert [m["id"] for m in queue_json(d)] == [a]


def test_delete_all_asks_for_yes(make_daemon):
    d = deferring_daemon(make_daemon)
    send_deferred(d)
    r = ctl(d, "delete", "all")
    assert r.returncode == EXIT_USAGE and b"--yes" in r.stderr
    assert ok(d, "delete", "all", "--dry-run").strip() == "would delete 1"
    assert len(queue_json(d)) == 1
    assert ok(d, "delete", "all", "--yes").strip() == "deleted 1"


def test_bounce_by_sender(make_daemon):
    d = deferring_daemon(make_daemon)
    a = send_deferred(d, sender="owner@localhost", rcpt="x@one.test")
    b = send_deferred(d, sender="other@example.org", rcpt="y@one.test")
    assert ok(d, "bounce", "--sender", "owner@localhost", "--dry-run").strip() \
        == "would bounce 1"
    assert ok(d, "bounce", "--sender", "OWNER@localhost").strip() == "bounced 1"
    d.wait_messages("owner@localhost")  # the DSN
    h.wait_for(lambda: [m["id"] for m in queue_json(d)] == [b], 20,
               what="only the other sender's message left")
    assert a not in ok(d, "queue")


# --------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("args,text", [
    (["queue", "--frobnicate"], b"unknown option"),
    (["queue", "--older-than", "soon"], b"bad duration"),
    (["queue", "--older-than"], b"lacks its value"),
    (["queue", "--limit", "0"], b"--limit"),
    (["queue", "--state", "frozen"], b"--state"),
    (["summary", "--domain", "a.test"], b"does not take"),
    (["suspend"], b"usage"),
    (["suspend", "a.test", "1y"], b"bad duration"),
    (["hold"], b"needed"),
    (["delete", "--domain", "x@a.test"], b"bad domain"),
])
def test_bad_input_exits_64(daemon, args, text):
    r = ctl(daemon, *args)
    assert r.returncode == EXIT_USAGE, (args, r)
    assert text in r.stderr, r.stderr
    assert b"usage" in r.stderr


def test_raw_protocol_refuses_bad_requests(daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.spool / "control"))
        s.sendall(b"queue --limit x\nsummary\n")
        data = b""
        while data.count(b"\n") < 2 or not data.endswith(b"ok\n"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.splitlines()[0] == b"error --limit takes a number above 0"
    daemon.assert_alive()


def test_concurrent_clients_while_mail_flows(make_daemon):
    """Listings from many clients at once, while SMTP clients deliver: every
    listing is whole and valid JSON, and every message is accepted."""
    d = deferring_daemon(make_daemon)
    for i in range(60):
        d.send(recipients=("r%d@far%d.test" % (i, i % 7),))
    failures = []
    accepted = []
    stop = threading.Event()

    def lister(kind):
        while not stop.is_set():
            args = ["queue", "--json"] if kind == 0 else ["summary", "--json"]
            r = ctl(d, *args)
            if r.returncode != 0:
                failures.append(r)
                return
            for line in r.stdout.decode().splitlines():
                json.loads(line)

    def sender():
        for i in range(40):
            accepted.append(d.send(recipients=("late%d@far.test" % i,)))

    threads = [threading.Thread(target=lister, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    sender()
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures[:1]
    assert len(accepted) == 40
    h.wait_for(lambda: len(queue_json(d)) == 100, 30, what="100 messages listed")
    d.assert_alive()


def test_listing_streams_to_a_slow_reader(make_daemon):
    """A client that reads its listing slowly holds neither the loop nor
    memory: mail is accepted meanwhile, and the listing arrives whole."""
    d = deferring_daemon(make_daemon)
    for i in range(300):
        d.send(recipients=("r%d@slow.test" % i,),
               body="x" * 200 + "\r\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(d.spool / "control"))
        s.sendall(b"queue --json\n")
        time.sleep(1)  # the daemon has written what fits, and waits
        t0 = time.monotonic()
        qid = d.send(recipients=("during@slow.test",))
        assert time.monotonic() - t0 < 20
        data = b""
        while not data.endswith(b"ok\n"):
            chunk = s.recv(1024)
            assert chunk, data[-200:]
            data += chunk
            time.sleep(0.001)
    lines = data.splitlines()
    assert lines[-1] == b"ok"
    listed = [json.loads(line[5:]) for line in lines[:-1]]
    assert len(listed) >= 300
    assert all(line.startswith(b"json ") for line in lines[:-1])
    assert qid in [m["id"] for m in queue_json(d)]


# --------------------------------------------------------------------------
# logged means recorded

def _segments_hold(d, text):
    return any(text in p.read_bytes() for p in (d.spool / "log").glob("*.seg"))


def _blocked_writing_stderr(pid):
    """Whether the process sleeps in write(2) on descriptor 2 (the log),
    from /proc/PID/syscall: "1 0x2 ..." on x86-64; None when that cannot
    be read here."""
    try:
        fields = open("/proc/%d/syscall" % pid).read().split()
    except OSError:
        return None
    if not fields or fields[0] == "running":
        return False
    return fields[0] == "1" and int(fields[1], 16) == 2


@pytest.mark.parametrize("outcome", ["bounce", "expire"])
def test_outcome_is_recorded_before_it_is_logged(make_daemon, outcome):
    """The daemon's log is a pipe the test fills, so that the daemon stops
    in the write of its `bounced` (facteurctl bounce) or `expired` (queue
    lifetime over) line: by then the recipient's record is in the log
    segment (written ahead), as for a delivery's outcome."""
    cfg = {"retry_min": "1h", "retry_max": "2h", "log_level": "warn",
           "dns_servers": "127.0.0.1:%d" % h.free_port()}
    if outcome == "expire":
        cfg["queue_lifetime"] = "4s"
    d = make_daemon(config=cfg, start=False)
    d.extra_lines.append("route = * [127.0.0.1]:%d tls=none" % h.free_port())
    d.write_config()
    r, w = os.pipe()
    os.set_blocking(r, False)
    # A description of our own on the pipe, non-blocking; the daemon's
    # stays blocking.
    filler = os.open("/proc/self/fd/%d" % w, os.O_WRONLY | os.O_NONBLOCK)
    proc = subprocess.Popen([str(h.FACTEURD), "-c", str(d.conf_path)],
                            stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                            env=h.clean_env(d.env), cwd=str(d.dir))
    os.close(w)
    log = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            log.extend(chunk)

    draining = threading.Event()
    draining.set()

    def drainer():
        while draining.is_set():
            drain()
            time.sleep(0.01)

    t = threading.Thread(target=drainer)
    t.start()
    try:
        d.proc = proc
        d.wait_ready()
        # The null sender: no DSN, so the record is written in the turn.
        qid = d.send(sender="", recipients=("someone@remote.test",))
        h.wait_for(lambda: b"deferred" in log and qid.encode() in log,
                   timeout=30, what="the deferral")
        h.wait_for(lambda: _segments_hold(d, b"state 0 deferred"), timeout=10,
                   what="the deferral's record")
        record = b"state 0 bounced"
        assert not _segments_hold(d, record)
        draining.clear()
        t.join()
        drain()
        for size in (4096, 1):
            try:
                while True:
                    os.write(filler, b"." * size)
            except BlockingIOError:
                pass
        bounce = None
        if outcome == "bounce":
            bounce = subprocess.Popen([str(FACTEURCTL), "-c", str(d.conf_path),
                                       "bounce", qid], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=h.clean_env())
        h.wait_for(lambda: _blocked_writing_stderr(proc.pid) is not False,
                   timeout=15, what="the daemon stopped in its log write")
        time.sleep(0.5)  # whatever would come after the line has not come
        assert _blocked_writing_stderr(proc.pid) is not False
        if bounce is not None:
            assert bounce.poll() is None  # its answer waits behind the line
        assert _segments_hold(d, record), "logged before recorded"
        draining.set()
        t = threading.Thread(target=drainer)
        t.start()
        if bounce is not None:
            out, err = bounce.communicate(timeout=30)
            assert bounce.returncode == 0, (out, err)
        event = b"bounced" if outcome == "bounce" else b"expired"
        h.wait_for(lambda: event in log, timeout=10, what="the outcome line")
    finally:
        d.expected_dead = True
        if not t.is_alive():  # the daemon's exit logs too
            draining.set()
            t = threading.Thread(target=drainer)
            t.start()
        proc.terminate()
        proc.wait(timeout=30)
        draining.clear()
        t.join()
        os.close(filler)
        os.close(r)
