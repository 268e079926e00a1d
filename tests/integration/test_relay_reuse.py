"""Outbound connection reuse (issue 7, scenario (c)): messages for one
destination go over the connections already open to it, as Postfix's
connection cache does; a connection the receiver has dropped meanwhile is
never a message's failure.
"""

import threading
import time

import facteur_harness as h
import relay_harness as rh
import tls_harness as t
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT
DOMAIN = "reuse.test"   # not in DNS: only the route leads there


def route_to(ip, port):
    return ["route = %s [%s]:%d" % (DOMAIN, ip, port)]


def inject_parallel(sender, count, threads=5):
    """`count` messages to distinct recipients of DOMAIN, from `threads`
    SMTP clients at once; returns {token: queue id}."""
    out, errors, lock = {}, [], threading.Lock()

    def work(k):
        try:
            for i in range(k, count, threads):
                qid, tok = rh.inject(sender, ["u%d@%s" % (i, DOMAIN)])
                with lock:
                    out[tok] = qid
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    assert len(out) == count
    return out


def test_many_messages_share_a_few_connections(relay):
    n = 60
    rcv = relay.receiver("127.0.0.2", DOMAIN)
    probes = len(rcv.events("connect"))  # the harness's readiness check
    mport = h.free_port("127.0.0.1")
    sender = relay.sender(extra_lines=route_to("127.0.0.2", relay.port),
                          config={"metrics_listen": "127.0.0.1:%d" % mport,
                                  "max_connections_per_destination": 4})

    sent = inject_parallel(sender, n)

    # every message arrives, exactly once
    got = {}
    for i in range(n):
        msgs = rcv.wait_messages("u%d@%s" % (i, DOMAIN), 1, T)
        for tok in rh.tokens_in(msgs):
            got[tok] = got.get(tok, 0) + 1
    assert got == {tok: 1 for tok in sent}, got
    for qid in sent.values():
        rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert len(sender.events("delivered")) == n
    assert sender.events("deferred") == []

    # over far fewer connections than messages
    connects = len(rcv.events("connect")) - probes
    assert 1 <= connects <= n // 4, "%d connections for %d messages" % (connects, n)
    m = t.metrics(mport)
    opened = m["facteur_relay_connections_total"]
    reused = m["facteur_relay_connections_reused_total"]
    assert opened == connects, (opened, connects)
    # each message went on a new connection or on one already open
    assert opened + reused == n, m
    time.sleep(1)
    for i in range(n):
        assert len(rcv.maildir_messages("u%d@%s" % (i, DOMAIN))) == 1


def test_receiver_dropping_idle_connections_loses_nothing(relay):
    # a receiver that says 421 and closes after a second of silence,
    # before the sender's own idle limit
    srv = relay.scripted("127.0.0.3", idle_close=1.0)
    sender = relay.sender(extra_lines=route_to("127.0.0.3", relay.port))

    q1, t1 = rh.inject(sender, ["a@" + DOMAIN])
    rh.wait_relay_event(sender, "delivered", queue_id=q1)
    h.wait_for(lambda: srv.sessions and srv.sessions[0].closed, T,
               what="the receiver dropping the idle connection\n" + srv.transcript())
    q2, t2 = rh.inject(sender, ["b@" + DOMAIN])
    ev = rh.wait_relay_event(sender, "delivered", queue_id=q2)
    assert ev.get("relay", "").endswith("[127.0.0.3]:%d" % relay.port), ev

    msgs = srv.wait_messages(2, T)
    assert rh.tokens_in([m.data for m in msgs]) == [t1, t2]
    assert sender.events("deferred") == [], sender.log_tail()
    assert len(srv.sessions) == 2, srv.transcript()
    assert "-- closed: _Closed('idle')" in srv.sessions[0].dialog, srv.transcript()


def test_421_to_mail_on_a_reused_connection_is_not_the_messages_fault(relay):
    # the receiver takes one message per connection, then refuses MAIL
    srv = relay.scripted("127.0.0.4", replies={
        "mail": lambda s, addr: "421 4.7.0 one message per connection"
        if s.transactions > 1 else None})
    sender = relay.sender(extra_lines=route_to("127.0.0.4", relay.port))

    q1, t1 = rh.inject(sender, ["a@" + DOMAIN])
    rh.wait_relay_event(sender, "delivered", queue_id=q1)
    q2, t2 = rh.inject(sender, ["b@" + DOMAIN])
    rh.wait_relay_event(sender, "delivered", queue_id=q2)

    msgs = srv.wait_messages(2, T)
    assert rh.tokens_in([m.data for m in msgs]) == [t1, t2]
    assert sender.events("deferred") == [], sender.log_tail()
    # the second MAIL was tried on the first connection, then on a new one
    assert srv.sessions[0].transactions == 2, srv.transcript()
    assert len(srv.sessions) == 2, srv.transcript()


def test_rset_after_a_refused_transaction_then_the_next_message(relay):
    srv = relay.scripted("127.0.0.5", replies={
        "rcpt": lambda s, addr: "550 5.1.1 <%s>: no such user" % addr
        if addr.startswith("bad@") else None})
    sender = relay.sender(extra_lines=route_to("127.0.0.5", relay.port))

    q1, _ = rh.inject(sender, ["bad@" + DOMAIN])
    ev = rh.wait_relay_event(sender, "bounced", queue_id=q1)
    assert ev.get("dsn") == "5.1.1", ev
    q2, t2 = rh.inject(sender, ["good@" + DOMAIN])
    rh.wait_relay_event(sender, "delivered", queue_id=q2)

    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [t2]
    assert len(srv.sessions) == 1, srv.transcript()
    client_lines = [line[3:].split(" ")[0].upper() for line in srv.sessions[0].dialog
                    if line.startswith("C: ")]
    assert client_lines[:6] == ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT"], \
        srv.transcript()


def test_shutdown_closes_idle_connections_with_quit(relay):
    srv = relay.scripted("127.0.0.2")
    sender = relay.sender(extra_lines=route_to("127.0.0.2", relay.port))

    qid, _ = rh.inject(sender, ["a@" + DOMAIN])
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert not srv.sessions[0].closed  # kept open for the next message
    sender.stop_ok()
    h.wait_for(lambda: srv.sessions[0].closed, T, what="the connection closed")
    assert "C: QUIT" in srv.sessions[0].dialog, srv.transcript()
