"""Mail that would loop back to the daemon itself (issue 12, item 3).

A next hop whose address and port are one of facteurd's own SMTP listen
sockets is never connected to: it would hand the message to itself again
and again until the Received count stops it. After the MX (or A) look-up,
and for address literals, such hosts are dropped with every host of equal
or larger preference (RFC 5321 §5.1: a backup MX delivers only to better
ones); when nothing is left the recipient bounces with 5.4.6 "mail for
DOMAIN loops back to myself", as Postfix does. A route naming its target
in brackets is the operator's explicit choice and is not checked.

The daemon under test listens on 127.0.0.1:P and delivers to MX hosts on
port P (mx_port): the same port its receivers would use.
"""

import pytest

import facteur_harness as h
import relay_harness as rh

T = rh.RELAY_TIMEOUT
LOOP_REASON = "loops back to myself"

SELF_IP = "127.0.0.1"
OTHER_IP = "127.0.0.2"

# MX records naming this daemon (127.0.0.1) or another host (127.0.0.2).
LOOP_MX = [
    ("self.test", "mx.self.test", 10),
    ("backup.test", "mx.other.test", 10),
    ("backup.test", "mx.self.test", 20),
    ("primary.test", "mx.self.test", 10),
    ("primary.test", "mx.other.test", 20),
    ("routed-mx.test", "mx.self.test", 10),
]
LOOP_HOSTS = [
    ("mx.self.test", SELF_IP),
    ("mx.other.test", OTHER_IP),
    ("aself.test", SELF_IP),  # no MX: the A record names this daemon
]


@pytest.fixture
def loop_dns(tmp_path):
    d = rh.Dnsmasq(tmp_path / "dns", mx=LOOP_MX, hosts=LOOP_HOSTS)
    d.start()
    yield d
    d.stop()


@pytest.fixture
def port():
    """A port free on this daemon's address and on the other host's."""
    return rh.free_common_port((SELF_IP, OTHER_IP))


def start_self(make_daemon, dns, port, extra_lines=(), listen=None):
    """A facteurd on 127.0.0.1:port whose mx_port is that same port."""
    cfg = rh.sender_config(dns.server, port)
    cfg["listen"] = listen or "%s:%d" % (SELF_IP, port)
    return make_daemon(config=cfg, extra_lines=extra_lines, port=port)


def accepted_from_clients(d):
    """`accepted` lines of messages that came over SMTP (DSNs excluded)."""
    return [e for e in d.logs() if e.get("event") == "accepted"
            and e.get("protocol") != "DSN"]


def assert_bounced_as_loop(d, qid, rcpt, domain):
    # domains are compared, and logged, in lower case
    ev = h.wait_for(lambda: [e for e in d.events("bounced", queue_id=qid)
                             if e.get("rcpt", "").lower() == rcpt.lower()],
                    T, what="bounced %s\n%s" % (rcpt, d.log_tail()))[0]
    assert ev.get("dsn") == "5.4.6", ev
    assert ev.get("reason", "").lower() == \
        "mail for %s %s" % (domain.lower(), LOOP_REASON), ev
    dsn = rh.check_dsn(rh.wait_dsns(d)[0], rcpt, "5.4.6")
    assert LOOP_REASON in dsn.raw.decode(errors="replace"), dsn
    # the message never went through the daemon a second time
    assert len(accepted_from_clients(d)) == 1, accepted_from_clients(d)
    return ev


def test_address_literal_of_this_daemon_bounces_with_5_4_6(make_daemon, loop_dns, port):
    d = start_self(make_daemon, loop_dns, port)
    rcpt = "u@[%s]" % SELF_IP
    qid, _ = rh.inject(d, [rcpt], subject="to my own address")

    assert_bounced_as_loop(d, qid, rcpt, "[%s]" % SELF_IP)
    assert d.events("deferred", queue_id=qid) == []


def test_ipv6_address_literal_of_this_daemon_bounces_with_5_4_6(make_daemon, loop_dns):
    if not h.has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    port = rh.free_common_port((SELF_IP, "::1"))
    d = start_self(make_daemon, loop_dns, port,
                   listen="%s:%d, [::1]:%d" % (SELF_IP, port, port))
    rcpt = "u@[IPv6:::1]"
    qid, _ = rh.inject(d, [rcpt])
    assert_bounced_as_loop(d, qid, rcpt, "[IPv6:::1]")


def test_mx_naming_this_daemon_bounces_with_5_4_6(make_daemon, loop_dns, port):
    d = start_self(make_daemon, loop_dns, port)
    qid, _ = rh.inject(d, ["u@self.test"])
    assert_bounced_as_loop(d, qid, "u@self.test", "self.test")


def test_a_record_naming_this_daemon_bounces_with_5_4_6(make_daemon, loop_dns, port):
    d = start_self(make_daemon, loop_dns, port)
    qid, _ = rh.inject(d, ["u@aself.test"])
    assert_bounced_as_loop(d, qid, "u@aself.test", "aself.test")


def test_best_mx_naming_this_daemon_bounces_even_with_worse_ones(make_daemon, loop_dns,
                                                                 port):
    # RFC 5321 §5.1: hosts less preferred than ourselves are dropped too;
    # the one at 127.0.0.2 would accept the message, and must not get it.
    other = rh.start_receiver(make_daemon, OTHER_IP, port, "primary.test")
    d = start_self(make_daemon, loop_dns, port)
    qid, _ = rh.inject(d, ["u@primary.test"])
    assert_bounced_as_loop(d, qid, "u@primary.test", "primary.test")
    assert other.maildir_messages("u@primary.test") == []


def test_backup_mx_delivers_only_to_the_better_one(make_daemon, loop_dns, port):
    # This daemon is the backup MX (20) of backup.test; the primary (10) is
    # down: the message waits for it instead of going round through ourselves.
    d = start_self(make_daemon, loop_dns, port)
    qid, tok = rh.inject(d, ["u@backup.test"])

    ev = rh.wait_relay_event(d, "deferred", queue_id=qid, rcpt="u@backup.test")
    assert LOOP_REASON not in ev.get("reason", ""), ev
    assert "127.0.0.2" in ev.get("relay", ""), ev
    assert len(accepted_from_clients(d)) == 1, accepted_from_clients(d)

    other = rh.start_receiver(make_daemon, OTHER_IP, port, "backup.test")
    assert rh.tokens_in(other.wait_messages("u@backup.test", 1, T)) == [tok]
    ev = rh.wait_relay_event(d, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx.other.test", OTHER_IP, port)
    assert d.events("bounced") == []
    assert len(accepted_from_clients(d)) == 1, accepted_from_clients(d)


def test_route_to_an_mx_naming_this_daemon_defers_with_4_4_6(make_daemon, loop_dns,
                                                             port):
    # A route is the operator's configuration: a route whose MX hosts turn out
    # to be this daemon is our trouble, not the recipient's, so it defers.
    d = start_self(make_daemon, loop_dns, port,
                   extra_lines=["route = elsewhere.test routed-mx.test"])
    qid, _ = rh.inject(d, ["u@elsewhere.test"])

    ev = rh.wait_relay_event(d, "deferred", queue_id=qid, rcpt="u@elsewhere.test")
    assert ev.get("dsn") == "4.4.6", ev
    assert LOOP_REASON in ev.get("reason", ""), ev
    assert d.events("bounced", queue_id=qid) == []
    assert len(accepted_from_clients(d)) == 1, accepted_from_clients(d)


def test_same_address_on_another_port_is_not_this_daemon(make_daemon, loop_dns, port):
    # 127.0.0.1 on a port where this daemon does not listen is another
    # server: the scripted one there gets the message.
    other_port = rh.free_common_port((SELF_IP,))
    srv = rh.ScriptedSMTP(SELF_IP, other_port).start()
    try:
        cfg = rh.sender_config(loop_dns.server, other_port)
        cfg["listen"] = "%s:%d" % (SELF_IP, port)
        d = make_daemon(config=cfg, port=port)
        qid, tok = rh.inject(d, ["u@self.test"])
        msgs = srv.wait_messages(1, T)
        assert rh.tokens_in([m.data for m in msgs]) == [tok]
        ev = rh.wait_relay_event(d, "delivered", queue_id=qid)
        rh.assert_relay_field(ev, "mx.self.test", SELF_IP, other_port)
    finally:
        srv.stop()


def test_route_naming_this_daemon_explicitly_is_not_refused(make_daemon, loop_dns, port):
    # [ip]:port in a route is the operator's explicit choice: the check
    # stands aside, and the Received count (at most 100) ends the loop.
    d = start_self(make_daemon, loop_dns, port,
                   extra_lines=["route = round.test [%s]:%d" % (SELF_IP, port)])
    qid, _ = rh.inject(d, ["u@round.test"])

    ev = rh.wait_relay_event(d, "delivered", queue_id=qid, rcpt="u@round.test")
    assert ev.get("relay", "").endswith("[%s]:%d" % (SELF_IP, port)), ev
    # each hop is a new message; the 101st Received header is refused
    ev = rh.wait_relay_event(d, "bounced", rcpt="u@round.test")
    assert ev.get("dsn") == "5.4.6", ev
    assert "Received" in ev.get("reason", ""), ev
    assert len(accepted_from_clients(d)) > 1
    assert not [e for e in d.logs() if LOOP_REASON in str(e.get("reason", ""))]
