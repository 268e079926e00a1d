"""Delivery shaping (`shape`): recipients per transaction, connections at
once, messages per connection, the rate of transactions, the source
address and EHLO name, and the pause after a receiver throttles us. The
receiving end is a scripted SMTP server on 127.0.0.x that records when
each connection opened and closed, who it came from, and when each
message arrived.
"""

import subprocess
import time

import facteur_harness as h
import relay_harness as rh
import tls_harness as t
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT
DOMAIN = "shape.test"   # not in DNS: only the route leads there


def route_to(ip, port, *shapes):
    return ["route = %s [%s]:%d" % (DOMAIN, ip, port)] + [
        "shape = %s" % s for s in shapes]


def inject_parallel(sender, count):
    """`count` one-recipient messages for DOMAIN, from several clients at
    once."""
    return rh.inject_parallel([(sender, "u%d@%s" % (i, DOMAIN))
                               for i in range(count)])


def ctl(d, *args):
    r = subprocess.run([str(rh.FACTEURCTL), "-c", str(d.conf_path)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout.decode()


def test_a_message_for_120_recipients_goes_as_3_transactions(relay):
    sink = relay.scripted("127.0.0.2")
    sender = relay.sender(extra_lines=route_to("127.0.0.2", relay.port))
    rcpts = ["r%d@%s" % (i, DOMAIN) for i in range(120)]

    rh.inject(sender, rcpts)

    h.wait_for(lambda: len(sink.rcpts_delivered()) >= 120, T,
               what="120 recipients at the sink:\n" + sink.transcript())
    sizes = sorted(len(m.rcpts) for m in sink.messages)
    assert sizes == [20, 50, 50], sizes
    assert sorted(sink.rcpts_delivered()) == sorted(rcpts)
    # the receiver never had to refuse a recipient for their number
    assert not any("452" in line for s in sink.sessions for line in s.dialog)
    assert len(sender.events("delivered")) == 120
    assert sender.events("deferred") == []


def test_max_rcpt_sets_the_transaction_size(relay):
    sink = relay.scripted("127.0.0.2")
    sender = relay.sender(extra_lines=route_to("127.0.0.2", relay.port,
                                               "%s max_rcpt=7" % DOMAIN))
    rh.inject(sender, ["r%d@%s" % (i, DOMAIN) for i in range(20)])
    h.wait_for(lambda: len(sink.rcpts_delivered()) >= 20, T)
    assert sorted(len(m.rcpts) for m in sink.messages) == [6, 7, 7]


def test_one_connection_at_once_and_two_messages_per_connection(relay):
    sink = relay.scripted("127.0.0.2")
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port,
                             "%s max_connections=1 max_msgs=2" % DOMAIN),
        config={"max_connections_per_destination": 10})

    inject_parallel(sender, 8)

    sink.wait_messages(8)
    h.wait_for(lambda: all(s.closed for s in sink.sessions), T)
    assert sink.max_concurrent() == 1, sink.transcript(20)
    carried = [s.transactions for s in sink.sessions if s.transactions]
    # a new connection every 2 messages
    assert max(carried) <= 2, carried
    assert sum(carried) == 8 and len(carried) >= 4, carried


def test_max_connections_holds_under_load(relay):
    sink = relay.scripted("127.0.0.2", replies={"eom": rh.Slow("250 ok", 0.05)})
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port,
                             "%s max_connections=2" % DOMAIN),
        config={"max_connections_per_destination": 10})
    inject_parallel(sender, 12)
    sink.wait_messages(12)
    assert sink.max_concurrent() <= 2, sink.transcript(20)


def test_rate_spreads_the_transactions(relay):
    sink = relay.scripted("127.0.0.2")
    sender = relay.sender(extra_lines=route_to("127.0.0.2", relay.port,
                                               "%s rate=60/m" % DOMAIN))
    inject_parallel(sender, 10)
    msgs = sink.wait_messages(10, T)
    times = sorted(m.at for m in msgs)
    # one a second: 10 transactions span 9 s at least
    assert times[-1] - times[0] >= 9.0, [round(x - times[0], 3) for x in times]
    # no burst: a transaction late on its slot (a busy machine) is
    # followed by a shorter gap, never by two at once
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.5, gaps


def test_source_address_and_helo_name(relay):
    sink = relay.scripted("127.0.0.2")
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port,
                             "%s source=127.0.0.9 helo=out.shape.example" % DOMAIN))
    rh.inject(sender, ["a@" + DOMAIN])
    sink.wait_messages(1)
    assert sink.sessions[0].peer[0] == "127.0.0.9", sink.sessions[0].peer
    assert sink.sessions[0].ehlo == "out.shape.example"


def throttle_first(reply):
    """A greeting script: the first connection is turned away."""
    return lambda session, arg: reply if session.index == 0 else None


def test_a_421_pauses_the_destination_and_the_message_follows_the_pause(relay):
    mport = h.free_port("127.0.0.1")
    sink = relay.scripted("127.0.0.2", replies={
        "greeting": throttle_first("421 4.7.0 Too many connections, slow down")})
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port, "%s pause=3s" % DOMAIN),
        config={"retry_min": "10m", "retry_max": "1h",
                "metrics_listen": "127.0.0.1:%d" % mport})
    start = time.monotonic()
    qid, _ = rh.inject(sender, ["a@" + DOMAIN])

    paused = rh.wait_relay_event(sender, "destination_paused")
    assert paused["destination"] == DOMAIN + " [127.0.0.2]:%d" % relay.port or \
        paused["destination"].startswith(DOMAIN), paused
    assert paused["reply"].startswith("421 4.7.0"), paused
    assert paused["until"].endswith("Z"), paused
    deferred = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert deferred["reason"].startswith("421 4.7.0"), deferred
    m = t.metrics(mport)
    gauge = [v for k, v in m.items() if k.startswith("facteur_destination_paused{")]
    assert gauge == [1], m

    msgs = sink.wait_messages(1, T)
    took = msgs[0].at - start
    # after the pause, long before retry_min
    assert 2.5 <= took <= 30, took
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    # tried once more, when the pause was over: no retries during it
    assert len(sender.events("deferred")) == 1, sender.events("deferred")
    m = t.metrics(mport)
    assert [v for k, v in m.items()
            if k.startswith("facteur_destination_paused{")] == [0], m


def test_a_4_7_x_deferral_pauses_too_and_waiting_mail_is_deferred(relay):
    sink = relay.scripted("127.0.0.2", replies={
        "rcpt": lambda s, arg: "450 4.7.1 Rate limited" if s.index == 0 else None})
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port, "%s pause=3s" % DOMAIN),
        config={"retry_min": "10m", "retry_max": "1h"})
    qid, _ = rh.inject(sender, ["a@" + DOMAIN])
    rh.wait_relay_event(sender, "destination_paused")
    # mail that comes during the pause waits for its end, on no connection
    qid2, _ = rh.inject(sender, ["b@" + DOMAIN])
    d2 = rh.wait_relay_event(sender, "deferred", queue_id=qid2)
    assert d2["reason"] == "450 4.7.1 Rate limited", d2
    sink.wait_messages(2, T)
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.wait_relay_event(sender, "delivered", queue_id=qid2)


def test_flush_ends_a_pause(relay):
    sink = relay.scripted("127.0.0.2", replies={
        "greeting": throttle_first("421 4.7.0 Slow down")})
    sender = relay.sender(
        extra_lines=route_to("127.0.0.2", relay.port, "%s pause=10m" % DOMAIN),
        config={"retry_min": "1h", "retry_max": "2h"})
    qid, _ = rh.inject(sender, ["a@" + DOMAIN])
    rh.wait_relay_event(sender, "deferred", queue_id=qid)
    time.sleep(1)
    assert sink.messages == []

    ctl(sender, "flush")

    sink.wait_messages(1, 20)
    rh.wait_relay_event(sender, "destination_resumed")
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_bad_shape_lines_exit_78_with_file_and_line(tmp_path):
    port = h.free_port()
    for line, why in [
            ("shape = gmail.com", "no option after pattern"),
            ("shape = gmail.com speed=3", "unknown option \"speed=3\""),
            ("shape = gmail.com rate=0/m", "invalid value in \"rate=0/m\""),
            ("shape = gmail.com max_connections=0", "invalid value"),
            ("shape = gmail.com source=192.0.2.1", "not a local address"),
            ("shape = gm@il.com max_rcpt=3", "invalid pattern")]:
        conf = tmp_path / "facteur.conf"
        conf.write_text("listen = 127.0.0.1:%d\nspool_dir = %s/spool\n"
                        "hostname = mx.example.test\n%s\n"
                        % (port, tmp_path, line))
        r = h.run_facteurd(["-c", str(conf)])
        err = r.stderr.decode()
        assert r.returncode == h.EX_CONFIG, (line, r.returncode, err)
        assert "%s:4: shape: " % conf in err and why in err, (line, err)


def test_n_prints_the_table_as_understood(tmp_path):
    conf = tmp_path / "facteur.conf"
    conf.write_text("spool_dir = %s/spool\nhostname = mx.example.test\n"
                    "shape = *.free.fr max_connections=2 rate=30/m\n"
                    "shape = gmail.com   source=127.0.0.9 pause=5m\n" % tmp_path)
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.decode().splitlines() if x.startswith("shape = ")]
    assert lines == [
        "shape = *.free.fr max_connections=2 max_rcpt=50 max_msgs=100 "
        "rate=30/m pause=60s",
        "shape = gmail.com max_rcpt=50 max_msgs=100 source=127.0.0.9 "
        "pause=300s"], lines
    env = {"FACTEUR_SHAPE": "a.test max_rcpt=5;b.test rate=1/s"}
    r = h.run_facteurd(["-n", "-c", str(conf)], env=env)
    lines = [x for x in r.stdout.decode().splitlines() if x.startswith("shape = ")]
    assert lines == ["shape = a.test max_rcpt=5 max_msgs=100 pause=60s",
                     "shape = b.test max_rcpt=50 max_msgs=100 rate=1/s pause=60s"], lines


def test_shapes_apply_to_mx_delivery_too(relay):
    sink = relay.scripted("127.0.0.2")   # mx.one.test in the zone
    sender = relay.sender(extra_lines=["shape = one.test max_rcpt=2 max_msgs=1"])
    rh.inject(sender, ["r%d@one.test" % i for i in range(5)])
    h.wait_for(lambda: len(sink.rcpts_delivered()) >= 5, T)
    assert sorted(len(m.rcpts) for m in sink.messages) == [1, 2, 2]
    h.wait_for(lambda: all(s.closed for s in sink.sessions), T)
    # max_msgs=1: one message a connection
    assert all(s.transactions <= 1 for s in sink.sessions), sink.transcript()


def test_a_source_that_cannot_be_bound_defers_and_logs(relay):
    if not h.has_ipv6_loopback():
        import pytest
        pytest.skip("no IPv6 loopback")
    # an IPv4 source for an IPv6 server: checked at start it binds, but
    # not for this connection
    sender = relay.sender(extra_lines=[
        "route = %s [::1]:%d" % (DOMAIN, relay.port),
        "shape = %s source=127.0.0.9" % DOMAIN])
    qid, _ = rh.inject(sender, ["a@" + DOMAIN])
    ev = rh.wait_relay_event(sender, "relay_bind_failed")
    assert ev["source"] == "127.0.0.9", ev
    d = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert "cannot bind to source 127.0.0.9" in d["reason"], d
    sender.assert_alive()
