"""Fleet-wide shaping (`shape_redis`): two facteurd instances naming the
same Redis keep the combined connections and rate of a shaped destination
within its limits, as the receiving sink measures them; with Redis gone
each keeps delivering under its own limits and counts the errors; with
Redis back the shared limits hold again. A real redis-server runs on a
loopback port, started and stopped by PID here.
"""

import shutil
import socket
import subprocess
import time

import pytest

import facteur_harness as h
import relay_harness as rh
import tls_harness as t
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT
DOMAIN = "shape.test"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"),
                                reason="redis-server is not installed")


class Redis:
    def __init__(self, port):
        self.port = port
        self.proc = None

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        h.wait_for(self.ping, 15, what="redis-server on port %d" % self.port)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis():
    r = Redis(h.free_port("127.0.0.1")).start()
    yield r
    r.stop()


def fleet(relay, redis, shape, count=2):
    """`count` senders sharing the Redis, each with its own metrics port."""
    out = []
    for _ in range(count):
        mport = h.free_port("127.0.0.1")
        d = relay.sender(
            extra_lines=["route = %s [127.0.0.2]:%d" % (DOMAIN, relay.port),
                         "shape = %s %s" % (DOMAIN, shape)],
            config={"shape_redis": "127.0.0.1:%d" % redis.port,
                    "metrics_listen": "127.0.0.1:%d" % mport,
                    "max_connections_per_destination": 10})
        d.metrics_port = mport
        out.append(d)
    return out


def inject_all(senders, per_sender, tag):
    """`per_sender` messages into each sender at once; (sender, queue id)."""
    return rh.inject_parallel([(d, "%s%d-%d@%s" % (tag, k, i, DOMAIN))
                               for k, d in enumerate(senders)
                               for i in range(per_sender)])


def wait_delivered(ids):
    for d, qid in ids:
        rh.wait_relay_event(d, "delivered", queue_id=qid)


def slow_sink(relay):
    # each transaction holds its connection a while, so that they overlap
    return relay.scripted("127.0.0.2", replies={"eom": rh.Slow("250 ok", 0.05)})


def test_two_instances_share_the_connection_limit(relay, redis):
    sink = slow_sink(relay)
    senders = fleet(relay, redis, "max_connections=2")
    ids = inject_all(senders, 8, "c")
    sink.wait_messages(16, T)
    wait_delivered(ids)
    assert sink.max_concurrent() <= 2, sink.transcript(30)
    # both took part
    assert {s.peer[0] for s in sink.sessions} == {"127.0.0.1"}
    for d in senders:
        assert d.events("redis_unavailable") == []


def test_two_instances_share_the_rate(relay, redis):
    sink = relay.scripted("127.0.0.2")
    senders = fleet(relay, redis, "rate=120/m")
    ids = inject_all(senders, 6, "r")
    msgs = sink.wait_messages(12, T)
    wait_delivered(ids)
    times = sorted(m.at for m in msgs)
    # 12 transactions, one every 0.5 s across the fleet: 5.5 s at least
    assert times[-1] - times[0] >= 5.5 * 0.97, [round(x - times[0], 2) for x in times]


def test_redis_gone_then_back(relay, redis):
    sink = slow_sink(relay)
    senders = fleet(relay, redis, "max_connections=1")

    wait_delivered(inject_all(senders, 3, "a"))
    assert sink.max_concurrent() == 1, sink.transcript(20)

    redis.stop()
    before = time.monotonic()
    ids = inject_all(senders, 4, "b")
    wait_delivered(ids)
    # each alone under its local limit: one connection each at most
    assert sink.max_concurrent(after=before) <= 2, sink.transcript(20)
    for d in senders:
        assert len(d.events("redis_unavailable")) == 1, d.events("redis_unavailable")
        m = t.metrics(d.metrics_port)
        assert m["facteur_redis_errors_total"] >= 1, m

    redis.start()
    for d in senders:
        rh.wait_relay_event(d, "redis_available", timeout=20)
    # connections opened alone during the outage hold no slot: they
    # close once Redis answers again
    h.wait_for(lambda: all(s.closed for s in sink.sessions), 20,
               what="the outage's connections closed")
    before = time.monotonic()
    ids = inject_all(senders, 4, "c")
    wait_delivered(ids)
    assert sink.max_concurrent(after=before) == 1, sink.transcript(20)
    for d in senders:
        assert len(d.events("redis_unavailable")) == 1
