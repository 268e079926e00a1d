"""Relays for operators: a route's failover list (T1|T2), implicit TLS to a
port-465 style relay (tls=implicit), and routes chosen by the envelope
sender (sender_route) with their own AUTH credentials
(docs/configuration.md, Routes and sender_route)."""

import time

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT


# -- failover lists

def test_failover_reaches_the_second_target_when_the_first_refuses(relay):
    # nothing listens on 127.0.0.2: the connection is refused
    rcv = relay.receiver("127.0.0.3", "far.test")
    sender = relay.sender(extra_lines=[
        "route = far.test [127.0.0.2]:%d|[127.0.0.3]:%d" % (relay.port, relay.port)])

    qid, tok = rh.inject(sender, ["user@far.test"])
    msgs = rcv.wait_messages("user@far.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert "127.0.0.3" in ev.get("relay", ""), ev
    failed = sender.events("relay_failed", queue_id=qid)
    assert failed and "127.0.0.2" in failed[0].get("relay", ""), failed


def test_failover_on_a_temporary_greeting_and_not_on_a_refused_recipient(relay):
    busy = relay.scripted("127.0.0.2", replies={"greeting": "421 4.3.2 busy, come back"})
    backup = relay.scripted("127.0.0.3")
    sender = relay.sender(extra_lines=[
        "route = far.test [127.0.0.2]:%d|[127.0.0.3]:%d" % (relay.port, relay.port)])

    qid, tok = rh.inject(sender, ["user@far.test"])
    msgs = backup.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert busy.messages == [] and busy.connections() >= 1
    rh.wait_relay_event(sender, "delivered", queue_id=qid)

    # a 5xx to RCPT from the first target is that recipient's answer
    backup.stop()
    picky = relay.scripted("127.0.0.4", replies={"rcpt": "550 5.1.1 no such user"})
    backup2 = relay.scripted("127.0.0.5")
    sender2 = relay.sender(extra_lines=[
        "route = far.test [127.0.0.4]:%d|[127.0.0.5]:%d" % (relay.port, relay.port)])
    qid2, _ = rh.inject(sender2, ["nobody@far.test"])
    ev = rh.wait_relay_event(sender2, "bounced", queue_id=qid2)
    assert ev.get("dsn") == "5.1.1", ev
    assert picky.connections() >= 1
    assert backup2.connections() == 0 and backup2.messages == []


def test_failover_with_every_target_down_defers_with_the_last_reason(relay):
    sender = relay.sender(extra_lines=[
        "route = far.test [127.0.0.2]:%d|[127.0.0.3]:%d" % (relay.port, relay.port)])

    qid, _ = rh.inject(sender, ["user@far.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert "127.0.0.3" in ev.get("reason", ""), ev
    assert "127.0.0.2" not in ev.get("reason", ""), ev
    # both were tried, in order
    tried = [e.get("relay", "") for e in sender.events("relay_failed", queue_id=qid)]
    assert len(tried) >= 2 and "127.0.0.2" in tried[0] and "127.0.0.3" in tried[1], tried


# -- implicit TLS

def smtps_receiver(relay, cert, key):
    """A facteurd on 127.0.0.5 whose listener speaks TLS from the first
    byte (the harness's readiness check speaks plain SMTP: wait for its
    log instead)."""
    rcv = relay.receiver("127.0.0.5", "verified.test", mode="/smtps", start=False,
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    rcv.start(wait=False)
    rcv.wait_event("listening")
    return rcv


def implicit_sender(relay, ca):
    """A sender trusting `ca`, whose route to verified.test is implicit TLS
    to [relayhost.test] (127.0.0.5)."""
    return relay.sender(
        config={"tls_ca_file": str(ca)},
        extra_lines=["route = verified.test [relayhost.test]:%d tls=implicit" % relay.port])


def test_implicit_tls_delivers_to_an_smtps_relay_with_a_trusted_certificate(relay):
    cert, key = relay.cert("relayhost.test")
    rcv = smtps_receiver(relay, cert, key)
    sender = implicit_sender(relay, cert)

    qid, tok = rh.inject(sender, ["user@verified.test"])
    msgs = rcv.wait_messages("user@verified.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    # the receiver saw TLS from its first byte: its trace header says ESMTPS
    assert b"with ESMTPS" in msgs[0], msgs[0][:600]
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_implicit_tls_defers_on_a_certificate_not_from_the_ca(relay):
    cert, key = relay.cert("relayhost.test")
    other, _ = relay.cert("other-ca.test")
    rcv = smtps_receiver(relay, cert, key)
    sender = implicit_sender(relay, other)

    qid, _ = rh.inject(sender, ["user@verified.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert "certificate verification failed" in ev.get("reason", ""), ev
    failed = sender.events("relay_failed", queue_id=qid)
    assert failed and failed[0].get("state") == "tls_handshake", failed
    time.sleep(1)
    assert rcv.maildir_messages("user@verified.test") == []


# -- sender-dependent relays

def test_sender_route_picks_each_senders_relay_and_credentials(relay, tmp_path):
    cert, key = relay.cert("relay.test")
    relay_a = relay.scripted("127.0.0.2", name="relay-a.test", cert=cert, key=key,
                             auth={"user-a": "pass a"})
    relay_b = relay.scripted("127.0.0.3", name="relay-b.test", cert=cert, key=key,
                             auth={"user-b": "pass b"})
    default = relay.scripted("127.0.0.4", name="default.test")
    secret_a = tmp_path / "a.secret"
    secret_a.write_text("user-a:pass a\n")
    secret_b = tmp_path / "b.secret"
    secret_b.write_text("user-b:pass b\n")
    p = relay.port
    sender = relay.sender(extra_lines=[
        "route = * [127.0.0.4]:%d" % p,
        "sender_route = a-corp.test [127.0.0.2]:%d tls=encrypt auth=%s" % (p, secret_a),
        "sender_route = *.b-corp.test [127.0.0.3]:%d tls=encrypt auth=%s" % (p, secret_b),
        # an exact address beats its domain
        "sender_route = boss@a-corp.test [127.0.0.3]:%d tls=encrypt auth=%s" % (p, secret_b),
    ])

    # two senders' messages in flight at once, to two recipient domains each
    rcpts = ["x@one.test", "y@two.test"]
    qa, tok_a = rh.inject(sender, rcpts, sender="alice@a-corp.test")
    qb, tok_b = rh.inject(sender, rcpts, sender="bob@mail.b-corp.test")
    qboss, tok_boss = rh.inject(sender, rcpts, sender="boss@a-corp.test")
    qo, tok_o = rh.inject(sender, rcpts, sender="carol@elsewhere.test")
    for q in (qa, qb, qboss, qo):
        h.wait_for(lambda q=q: len(sender.events("delivered", queue_id=q)) == 2, T,
                   what="both recipients of %s delivered" % q)

    def by_token(srv):
        return {t: m for m in srv.messages for t in rh.tokens_in([m.data])}

    got_a, got_b, got_default = by_token(relay_a), by_token(relay_b), by_token(default)
    assert set(got_a) == {tok_a}, got_a
    assert set(got_b) == {tok_b, tok_boss}, got_b
    assert set(got_default) == {tok_o}, got_default
    # every remote recipient of a message went through the sender's relay,
    # in one transaction
    assert sorted(got_a[tok_a].rcpts) == sorted(rcpts)
    assert sorted(got_b[tok_b].rcpts) == sorted(rcpts)
    # each relay saw its own login only, over TLS
    assert relay_a.auths and {a[1:] for a in relay_a.auths} == {("user-a", "pass a", True)}
    assert relay_b.auths and {a[1:] for a in relay_b.auths} == {("user-b", "pass b", True)}
    assert default.auths == []
    # no transaction ever crossed a session of another sender's relay
    for srv, senders in ((relay_a, {"alice@a-corp.test"}),
                         (relay_b, {"bob@mail.b-corp.test", "boss@a-corp.test"})):
        assert {m.mail_from for m in srv.messages} == senders, srv.messages


def test_sender_route_auth_file_is_read_at_start_and_reload(relay, tmp_path):
    cert, key = relay.cert("relay.test")
    srv = relay.scripted("127.0.0.2", name="relay-a.test", cert=cert, key=key,
                         auth={"user-a": "pass a"})
    secret = tmp_path / "missing.secret"
    sender = relay.sender(extra_lines=[
        "sender_route = a-corp.test [127.0.0.2]:%d tls=encrypt auth=%s"
        % (relay.port, secret)])
    warned = sender.wait_event("route_auth_unreadable", file=str(secret))[0]
    assert warned.get("route", "").startswith("a-corp.test "), warned

    qid, _ = rh.inject(sender, ["x@one.test"], sender="alice@a-corp.test")
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert ev.get("dsn") == "4.3.5", ev
    assert srv.messages == []


# -- bad settings

def _conf(tmp_path, port, line):
    p = tmp_path / "x.conf"
    p.write_text("listen = 127.0.0.1:%d\n"
                 "spool_dir = %s/spool\n"
                 "local_domains = example.test\n"
                 "hostname = mx.example.test\n"
                 "%s\n" % (port, tmp_path, line))
    return p


def test_bad_failover_sender_route_and_implicit_lines_exit_78(tmp_path):
    cases = [
        ("route = far.test [127.0.0.2]|", 'x.conf:5: route: empty element in target'),
        ("route = far.test [127.0.0.2]|1.2.3.4", 'x.conf:5: route: address target needs brackets "1.2.3.4"'),
        ("route = far.test [r.test] tls=implicit tls=verify",
         "x.conf:5: route: tls=implicit excludes any other tls="),
        ("sender_route = @a-corp.test [r.test]",
         'x.conf:5: sender_route: invalid address pattern "@a-corp.test"'),
        ("sender_route = a-corp.test", "x.conf:5: sender_route: missing target"),
        ("sender_route = a-corp.test [r.test] tls=may auth=/x",
         "x.conf:5: sender_route: auth= with tls=may"),
    ]
    for line, expected in cases:
        port = h.free_port()
        r = h.run_facteurd(["-c", str(_conf(tmp_path, port, line))])
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode == h.EX_CONFIG, (line, r.returncode, err)
        assert expected in err, (line, err)


def test_sender_route_from_the_environment_and_printed_as_written(tmp_path):
    port = h.free_port()
    env = ({"FACTEUR_SENDER_ROUTE":
                       "a-corp.test [10.0.0.1]:465|[10.0.0.2] tls=implicit; "
                       "* [10.0.0.3]:587 tls=verify"})
    r = h.run_facteurd(["-n", "-c", str(_conf(tmp_path, port,
                        "route = far.test [127.0.0.2]:2525|far-backup.test"))], env=env)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    # one value a line, as a file reads them back
    assert ("sender_route = a-corp.test [10.0.0.1]:465|[10.0.0.2] tls=implicit\n"
            "sender_route = * [10.0.0.3]:587 tls=verify\n") in out, out
    assert "route = far.test [127.0.0.2]:2525|far-backup.test\n" in out, out

    env = ({"FACTEUR_SENDER_ROUTE": "a-corp.test [r.test]; a-corp.test [s.test]"})
    r = h.run_facteurd(["-c", str(_conf(tmp_path, port, ""))], env=env)
    assert r.returncode == h.EX_CONFIG
    assert 'FACTEUR_SENDER_ROUTE: sender_route: duplicate pattern "a-corp.test"' in \
        r.stderr.decode(), r.stderr.decode()
