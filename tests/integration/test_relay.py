"""Relaying with real parts (issue 3): dnsmasq serving MX/A/AAAA/null-MX
records that point at other facteurd instances on 127.0.0.2, 127.0.0.3...

SPEC §3 (routes, dns_servers, mx_port, tls_outbound, retry_*,
queue_lifetime), §5 Relay / Retries and bounces, §7 log lines, §8 Outbound.
"""

import re
import time

import pytest

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT


def received_headers(msg):
    return [v.decode(errors="replace") for n, v in h.header_block(msg)
            if n.strip().lower() == b"received"]


def assert_nothing_arrives(boxes, seconds=2.0):
    """No message shows up in any of `boxes` ((daemon, address) pairs)
    during `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for d, addr in boxes:
            got = d.maildir_messages(addr)
            assert not got, "unexpected delivery to %s: %r" % (addr, got)
        time.sleep(0.2)


# --------------------------------------------------------------------------
# MX look-up

def test_delivers_to_the_most_preferred_mx(relay):
    mx1 = relay.receiver("127.0.0.2", "best.test")
    mx2 = relay.receiver("127.0.0.3", "best.test")
    sender = relay.sender()

    sent = [rh.inject(sender, ["user@best.test"]) for _ in range(3)]

    msgs = mx1.wait_messages("user@best.test", 3, T)
    assert sorted(rh.tokens_in(msgs)) == sorted(t for _, t in sent)
    for qid, _ in sent:
        ev = rh.wait_relay_event(sender, "delivered", queue_id=qid, rcpt="user@best.test")
        rh.assert_relay_field(ev, "mx1.best.test", "127.0.0.2", relay.port)
        assert ev.get("dsn") == "2.0.0", ev
        assert re.fullmatch(r"\d+", str(ev.get("delay"))), ev
    assert mx2.maildir_messages("user@best.test") == []

    # what the receiver got: the envelope sender, and a Received trace of the
    # hop from sender.test
    one = msgs[0]
    assert one.startswith(b"Return-Path: <%s>" % rh.SENDER.encode()), one[:200]
    rec = received_headers(one)
    assert any("sender.test" in r and "127.0.0.1" in r for r in rec), rec
    assert len(rh.tokens_in([one])) == 1
    assert sender.maildir_messages(rh.SENDER) == [], "unexpected bounce"


def test_fails_over_to_the_second_mx_when_the_first_refuses(relay):
    # nothing listens on 127.0.0.2: the connection is refused
    mx2 = relay.receiver("127.0.0.3", "best.test")
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["user@best.test"])
    msgs = mx2.wait_messages("user@best.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx2.best.test", "127.0.0.3", relay.port)
    assert ev.get("dsn") == "2.0.0", ev
    # failing over inside one attempt is not a deferral
    assert sender.events("deferred", queue_id=qid) == []


def test_falls_back_to_the_a_record_without_mx(relay):
    rcv = relay.receiver("127.0.0.4", "afallback.test")
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["someone@afallback.test"])
    msgs = rcv.wait_messages("someone@afallback.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "afallback.test", "127.0.0.4", relay.port)


def test_falls_back_to_the_aaaa_record_without_mx(relay):
    if not h.has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    port = rh.free_common_port(rh.RECEIVER_IPS + ("::1",))
    rcv = relay.receiver("::1", "v6only.test", port=port)
    sender = relay.sender(config={"mx_port": port})

    qid, tok = rh.inject(sender, ["someone@v6only.test"])
    msgs = rcv.wait_messages("someone@v6only.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert "[::1]" in ev.get("relay", "") and ev["relay"].endswith(":%d" % port), ev


# --------------------------------------------------------------------------
# permanent DNS answers bounce (SPEC §5, §8)

def test_null_mx_bounces_with_5_1_10(relay):
    sender = relay.sender()
    qid, tok = rh.inject(sender, ["user@nullmx.test"], subject="to a null MX")

    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid, rcpt="user@nullmx.test")
    assert ev.get("dsn") == "5.1.10", ev
    dsn = rh.check_dsn(rh.wait_dsns(sender)[0], "user@nullmx.test", "5.1.10")
    assert "to a null MX" in dsn.original_text(), dsn
    assert sender.events("deferred", queue_id=qid) == []


def test_nxdomain_bounces_with_5_1_2(relay):
    sender = relay.sender()
    qid, _ = rh.inject(sender, ["user@no-such-domain.test"], subject="to nowhere")

    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid)
    assert ev.get("dsn") == "5.1.2", ev
    assert ev.get("rcpt") == "user@no-such-domain.test", ev
    dsn = rh.check_dsn(rh.wait_dsns(sender)[0], "user@no-such-domain.test", "5.1.2")
    assert "to nowhere" in dsn.original_text(), dsn
    # the DSN is From the null sender's side: its envelope sender was <>
    head = dict((n.lower(), v) for n, v in h.header_block(dsn.raw))
    assert head.get(b"return-path") == b"<>", head.get(b"return-path")


def test_dns_server_down_defers_then_delivers_when_it_returns(relay):
    dns = relay.dnsmasq(start=False)          # nothing on its port yet
    rcv = relay.receiver("127.0.0.2", "best.test")
    sender = relay.sender(dns=dns)

    qid, tok = rh.inject(sender, ["user@best.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert rcv.maildir_messages("user@best.test") == []
    assert sender.events("bounced", queue_id=qid) == []

    dns.start()
    msgs = rcv.wait_messages("user@best.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx1.best.test", "127.0.0.2", relay.port)
    assert sender.maildir_messages(rh.SENDER) == [], "a DNS outage must not bounce"


# --------------------------------------------------------------------------
# retries and expiry

def test_retries_until_the_receiver_comes_up(relay):
    rcv = relay.receiver("127.0.0.4", "afallback.test", start=False)
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["late@afallback.test"])
    # at least two attempts, refused (4.4.1), with retry_min/max = 1s/2s
    h.wait_for(lambda: len(sender.events("deferred", queue_id=qid)) >= 2, T,
               what="two deferrals\n" + sender.log_tail())
    for ev in sender.events("deferred", queue_id=qid):
        assert ev.get("dsn") == "4.4.1", ev

    rcv.start()
    msgs = rcv.wait_messages("late@afallback.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    time.sleep(3)  # more than retry_max: no second copy
    assert len(rcv.maildir_messages("late@afallback.test")) == 1
    assert sender.maildir_messages(rh.SENDER) == []


def test_queue_lifetime_expiry_bounces_with_5_4_1_after_refused_connections(relay):
    sender = relay.sender(config={"queue_lifetime": "4s"})
    qid, _ = rh.inject(sender, ["gone@afallback.test"], subject="never delivered")

    ev = rh.wait_relay_event(sender, "expired", queue_id=qid, rcpt="gone@afallback.test")
    assert ev.get("dsn") == "5.4.1", ev
    assert sender.events("deferred", queue_id=qid), "expired without any attempt"
    # the DSN keeps the temporary status as it was (the log says 5.x.x)
    dsn = rh.check_dsn(rh.wait_dsns(sender)[0], "gone@afallback.test", "4.4.1")
    assert "never delivered" in dsn.original_text(), dsn
    # it is over: no attempt after the expiry
    n = len(sender.events("deferred", queue_id=qid))
    time.sleep(3)
    assert len(sender.events("deferred", queue_id=qid)) == n
    assert len(sender.maildir_messages(rh.SENDER)) == 1


def test_outcome_log_lines_carry_the_spec_fields(relay):
    """SPEC §7: delivered/deferred/bounced/expired lines carry queue_id,
    rcpt, relay, dsn, delay and (but for delivered) reason; a deferred or
    expired line names the relay host[ip]:port that failed."""
    rcv = relay.receiver("127.0.0.3", "best.test")   # mx1 (127.0.0.2) refuses
    sender = relay.sender(config={"queue_lifetime": "4s"})

    q_ok, _ = rh.inject(sender, ["ok@best.test"])
    q_nx, _ = rh.inject(sender, ["x@no-such-domain.test"])
    q_exp, _ = rh.inject(sender, ["late@afallback.test"])   # nothing on 127.0.0.4
    rcv.wait_messages("ok@best.test", 1, T)
    delivered = rh.wait_relay_event(sender, "delivered", queue_id=q_ok)
    bounced = rh.wait_relay_event(sender, "bounced", queue_id=q_nx)
    deferred = rh.wait_relay_event(sender, "deferred", queue_id=q_exp)
    expired = rh.wait_relay_event(sender, "expired", queue_id=q_exp)
    for ev in (delivered, bounced, deferred, expired):
        for key in ("ts", "level", "queue_id", "rcpt", "relay", "dsn", "delay"):
            assert key in ev, (key, ev)
        assert re.fullmatch(r"\d+", str(ev["delay"])), ev
    for ev in (bounced, deferred, expired):
        assert ev.get("reason"), ev
    rh.assert_relay_field(delivered, "mx2.best.test", "127.0.0.3", relay.port)
    rh.assert_relay_field(deferred, "afallback.test", "127.0.0.4", relay.port)
    assert deferred.get("dsn") == "4.4.1", deferred
    assert expired.get("dsn") == "5.4.1", expired
    assert expired.get("relay") == "afallback.test[127.0.0.4]:%d" % relay.port, \
        "the expired line should name the relay that last failed: %r" % expired


# --------------------------------------------------------------------------
# per-recipient results

def test_one_recipient_bounced_by_5xx_while_the_other_is_delivered(relay):
    srv = relay.scripted("127.0.0.4", replies={
        "rcpt": lambda s, addr: "550 5.1.1 <%s>: no such user" % addr
        if addr.startswith("bad@") else None})
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["good@afallback.test", "bad@afallback.test",
                                  "also@afallback.test"], subject="mixed fate")
    msgs = srv.wait_messages(1, T)
    ev_bad = rh.wait_relay_event(sender, "bounced", queue_id=qid, rcpt="bad@afallback.test")
    assert ev_bad.get("dsn") == "5.1.1", ev_bad
    for rcpt in ("good@afallback.test", "also@afallback.test"):
        ev = rh.wait_relay_event(sender, "delivered", queue_id=qid, rcpt=rcpt)
        rh.assert_relay_field(ev, "afallback.test", "127.0.0.4", relay.port)

    # one connection, one transaction, for both delivered recipients
    assert len(msgs) == 1, msgs
    assert sorted(msgs[0].rcpts) == ["also@afallback.test", "good@afallback.test"]
    assert msgs[0].mail_from == rh.SENDER
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert sum(s.transactions for s in srv.sessions) == 1, srv.transcript()

    dsn = rh.check_dsn(rh.wait_dsns(sender)[0], "bad@afallback.test", "5.1.1")
    diag = dsn.recipient("bad@afallback.test").get("diagnostic-code", "")
    assert "550" in diag and "no such user" in diag, dsn
    finals = [r.get("final-recipient", "") for r in dsn.recipients]
    assert not any("good@" in f or "also@" in f for f in finals), dsn
    time.sleep(2)
    assert len(srv.messages) == 1, "the delivered recipients were sent again"


# --------------------------------------------------------------------------
# routes (SPEC §3)

def test_route_to_bracketed_host_and_port_skips_the_mx_lookup(relay):
    port2 = rh.free_common_port()
    rcv = relay.receiver("127.0.0.5", "routed.test, literal.test", port=port2)
    # routed.test and literal.test do not exist in DNS: an MX look-up would bounce
    sender = relay.sender(extra_lines=[
        "route = routed.test [relayhost.test]:%d" % port2,
        "route = literal.test [127.0.0.5]:%d" % port2,
    ])

    q1, t1 = rh.inject(sender, ["a@routed.test"])
    q2, t2 = rh.inject(sender, ["b@literal.test"])
    assert rh.tokens_in(rcv.wait_messages("a@routed.test", 1, T)) == [t1]
    assert rh.tokens_in(rcv.wait_messages("b@literal.test", 1, T)) == [t2]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=q1)
    rh.assert_relay_field(ev, "relayhost.test", "127.0.0.5", port2)
    ev = rh.wait_relay_event(sender, "delivered", queue_id=q2)
    assert ev.get("relay", "").endswith("[127.0.0.5]:%d" % port2), ev
    assert sender.events("bounced") == []


def test_the_most_specific_route_wins_whatever_the_order(relay):
    servers = {ip: relay.scripted(ip, name="srv-%s.test" % ip) for ip in rh.RECEIVER_IPS}
    p = relay.port
    sender = relay.sender(extra_lines=[
        "route = * [127.0.0.2]:%d" % p,
        "route = *.b.example.test [127.0.0.5]:%d" % p,
        "route = a.example.test [127.0.0.4]:%d" % p,
        "route = *.example.test [127.0.0.3]:%d" % p,
    ])
    expect = {
        "u@a.example.test": "127.0.0.4",         # exact beats every suffix
        "u@c.example.test": "127.0.0.3",         # *.example.test
        "u@x.a.example.test": "127.0.0.3",       # exact does not cover subdomains
        "u@x.b.example.test": "127.0.0.5",       # longest suffix
        "u@deep.x.b.example.test": "127.0.0.5",  # any depth
        "u@b.example.test": "127.0.0.3",         # *.b... excludes b... itself
        "u@example.test": "127.0.0.2",           # *.example.test excludes it
        "u@elsewhere.test": "127.0.0.2",         # only *
    }
    for rcpt in expect:
        rh.inject(sender, [rcpt])
    # a local domain is never routed, even with `*`
    _, local_tok = rh.inject(sender, ["me@sender.test"])

    h.wait_for(lambda: sum(len(s.messages) for s in servers.values()) >= len(expect), T,
               what="every routed message\n" + sender.log_tail())
    got = {}
    for ip, s in servers.items():
        for r in s.rcpts_delivered():
            got.setdefault(r, []).append(ip)
    assert got == {r: [ip] for r, ip in expect.items()}, got
    assert rh.tokens_in(sender.wait_messages("me@sender.test", 1, T)) == [local_tok]


# --------------------------------------------------------------------------
# TLS and AUTH outbound

def test_tls_encrypt_route_delivers_over_starttls(relay):
    cert, key = relay.cert("mx.secure.test")
    rcv = relay.receiver("127.0.0.2", "secure.test",
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    sender = relay.sender(extra_lines=[
        "route = secure.test [127.0.0.2]:%d tls=encrypt" % relay.port])

    qid, tok = rh.inject(sender, ["user@secure.test"])
    msgs = rcv.wait_messages("user@secure.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    rec = received_headers(msgs[0])
    assert rec and re.search(r"\bESMTPS\b", rec[0]), rec
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_tls_outbound_encrypt_to_an_mx_with_a_certificate(relay):
    cert, key = relay.cert("mx.secure.test")
    rcv = relay.receiver("127.0.0.2", "secure.test",
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    sender = relay.sender(config={"tls_outbound": "encrypt"})

    qid, tok = rh.inject(sender, ["user@secure.test"])
    msgs = rcv.wait_messages("user@secure.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    assert re.search(r"\bESMTPS\b", received_headers(msgs[0])[0])
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx.secure.test", "127.0.0.2", relay.port)


def test_tls_encrypt_defers_when_starttls_is_not_offered(relay):
    rcv = relay.receiver("127.0.0.2", "secure.test")   # no certificate
    sender = relay.sender(extra_lines=[
        "route = secure.test [127.0.0.2]:%d tls=encrypt" % relay.port])

    qid, _ = rh.inject(sender, ["user@secure.test"])
    h.wait_for(lambda: len(sender.events("deferred", queue_id=qid)) >= 2, T,
               what="two deferrals\n" + sender.log_tail())
    for ev in sender.events("deferred", queue_id=qid):
        assert str(ev.get("dsn", "")).startswith("4."), ev
    assert rcv.maildir_messages("user@secure.test") == []
    assert sender.events("delivered", queue_id=qid) == []
    assert sender.events("bounced", queue_id=qid) == []


def test_tls_verify_accepts_the_trusted_certificate_of_the_bracketed_host(relay):
    cert, key = relay.cert("relayhost.test")
    rcv = relay.receiver("127.0.0.5", "verified.test",
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    sender = relay.sender(
        config={"tls_ca_file": str(cert)},
        extra_lines=["route = verified.test [relayhost.test]:%d tls=verify" % relay.port])

    qid, tok = rh.inject(sender, ["user@verified.test"])
    msgs = rcv.wait_messages("user@verified.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_tls_verify_defers_on_a_certificate_for_another_name(relay):
    cert, key = relay.cert("someone-else.test")
    rcv = relay.receiver("127.0.0.5", "verified.test",
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    sender = relay.sender(
        config={"tls_ca_file": str(cert)},
        extra_lines=["route = verified.test [relayhost.test]:%d tls=verify" % relay.port])

    qid, _ = rh.inject(sender, ["user@verified.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    time.sleep(2)
    assert rcv.maildir_messages("user@verified.test") == []
    assert sender.events("delivered", queue_id=qid) == []


@pytest.mark.parametrize("mechanisms", ["PLAIN LOGIN", "LOGIN"])
def test_auth_to_a_scripted_smarthost_after_starttls(relay, tmp_path, mechanisms):
    cert, key = relay.cert("smarthost.test")
    srv = relay.scripted("127.0.0.3", name="smarthost.test", cert=cert, key=key,
                         auth={"relay-user": "s3cret pass"}, auth_mechanisms=mechanisms)
    secret = tmp_path / "smarthost.secret"
    secret.write_text("relay-user:s3cret pass\n")
    sender = relay.sender(extra_lines=[
        "route = * [127.0.0.3]:%d tls=encrypt auth=%s" % (relay.port, secret)])

    qid, tok = rh.inject(sender, ["far@away.test"])
    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert msgs[0].rcpts == ["far@away.test"]
    mech, user, password, over_tls = srv.auths[0]
    assert (user, password) == ("relay-user", "s3cret pass"), srv.auths
    assert mech in mechanisms.split(), srv.auths
    assert over_tls, "credentials sent before TLS"
    assert msgs[0].session.tls and msgs[0].session.auth is not None
    assert msgs[0].session.pre_tls_leftover == b"", "commands pipelined across STARTTLS"
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert ev.get("relay", "").endswith("[127.0.0.3]:%d" % relay.port), ev


def test_auth_route_without_tls_verifies_the_smarthost(relay, tmp_path):
    """auth= without tls= means tls=verify: an untrusted certificate gets no
    password, a trusted one gets it."""
    cert, key = relay.cert("relayhost.test")
    srv = relay.scripted("127.0.0.5", name="relayhost.test", cert=cert, key=key,
                         auth={"relay-user": "s3cret pass"})
    secret = tmp_path / "smarthost.secret"
    secret.write_text("relay-user:s3cret pass\n")
    route = "route = * [relayhost.test]:%d auth=%s" % (relay.port, secret)

    untrusting = relay.sender(extra_lines=[route])
    qid, _ = rh.inject(untrusting, ["far@away.test"])
    ev = rh.wait_relay_event(untrusting, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert srv.auths == [], "credentials sent to an unverified server"
    assert srv.messages == []
    untrusting.stop_ok()

    trusting = relay.sender(config={"tls_ca_file": str(cert)}, extra_lines=[route])
    qid, tok = rh.inject(trusting, ["far@away.test"])
    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert [a[1:3] for a in srv.auths] == [("relay-user", "s3cret pass")], srv.auths
    rh.wait_relay_event(trusting, "delivered", queue_id=qid)


def test_rejected_smarthost_credentials_defer_and_never_bounce(relay, tmp_path):
    # like Postfix: a refused AUTH is the relay's configuration problem, the
    # mail waits for it to be fixed
    cert, key = relay.cert("smarthost.test")
    srv = relay.scripted("127.0.0.3", name="smarthost.test", cert=cert, key=key,
                         auth={"relay-user": "the right one"})
    secret = tmp_path / "smarthost.secret"
    secret.write_text("relay-user:a wrong one\n")
    sender = relay.sender(extra_lines=[
        "route = * [127.0.0.3]:%d tls=encrypt auth=%s" % (relay.port, secret)])

    qid, _ = rh.inject(sender, ["far@away.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert srv.auths and srv.auths[0][2] == "a wrong one", srv.auths
    assert srv.sessions[0].transactions == 0, "MAIL sent after a refused AUTH"
    time.sleep(2)
    assert srv.messages == []
    assert sender.events("bounced", queue_id=qid) == []


def test_auth_to_a_facteurd_submission_smarthost(relay, tmp_path):
    cert, key = relay.cert("smart.test")
    users = tmp_path / "smart-users"
    users.write_text("relay@smart.test:%s\nuser@dest.test:%s\n"
                     % (rh.password_hash("relay pw"), rh.password_hash("other")))
    # submission: MAIL before AUTH gets 530, so delivery proves AUTH worked
    rcv = relay.receiver("127.0.0.2", "dest.test, smart.test", mode="/submission",
                         config={"tls_cert": str(cert), "tls_key": str(key),
                                 "users_file": str(users)})
    secret = tmp_path / "secret"
    secret.write_text("relay@smart.test:relay pw\n")
    sender = relay.sender(extra_lines=[
        "route = dest.test [127.0.0.2]:%d tls=encrypt auth=%s" % (relay.port, secret)])

    qid, tok = rh.inject(sender, ["user@dest.test"])
    msgs = rcv.wait_messages("user@dest.test", 1, T)
    assert rh.tokens_in(msgs) == [tok]
    rec = received_headers(msgs[0])
    assert rec and re.search(r"\bESMTPSA\b", rec[0]), rec
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
