"""DNS blocklists (dnsbl = ZONE [match=...]): dnsmasq on loopback serves
a test zone; the daemon looks each client up when it connects and answers
its first command other than EHLO/HELO/STARTTLS/AUTH/QUIT/NOOP/RSET with
554 5.7.1 naming the zone. relay_networks clients and authenticated
clients are exempt; a zone that does not answer lets mail through."""

import socket
import time

import pytest

import facteur_harness as h
import relay_harness as r
import tls_harness as t
from test_auth_limit import SmtpsClient
from test_tls_auth import (ALICE, PASSWORD, certs, ctx_for,  # noqa: F401
                           tls_daemon, user_hashes)

LISTED = "127.0.0.2"      # A 127.0.0.2 in both zones
LISTED_10 = "127.0.0.3"   # A 127.0.0.10 in bl.test only
CLEAN = "127.0.0.4"
TRUSTED = "127.0.0.9"     # relay_networks
ZONE_HOSTS = [
    ("2.0.0.127.bl.test", "127.0.0.2"),
    ("3.0.0.127.bl.test", "127.0.0.10"),
    ("2.0.0.127.other.test", "127.0.0.2"),
    ("9.0.0.127.bl.test", "127.0.0.2"),
]


class SourceClient(h.RawClient):
    """A plain SMTP session from a chosen loopback source address."""

    def __init__(self, d, source, port=None):
        self.sock = socket.create_connection((d.host, port or d.port), h.IO_TIMEOUT,
                                             source_address=(source, 0))
        self.buf = b""
        self.banner = self.reply()


@pytest.fixture
def zone(tmp_path):
    dns = r.Dnsmasq(tmp_path / "dns", hosts=ZONE_HOSTS).start()
    yield dns
    dns.stop()


def dnsbl_daemon(make_daemon, dns, dnsbl):
    port = h.free_port()
    cfg = {"dns_servers": dns.server, "relay_networks": TRUSTED + "/32",
           "metrics_listen": "127.0.0.1:%d" % port}
    lines = ["dnsbl = %s" % z for z in dnsbl]
    d = make_daemon(config=cfg, extra_lines=lines)
    d.metrics_port = port
    return d


def test_listed_client_gets_554_naming_the_zone(make_daemon, zone):
    d = dnsbl_daemon(make_daemon, zone, ["bl.test"])
    with SourceClient(d, LISTED) as c:
        assert c.banner.code == 220
        c.ehlo()
        reply = c.cmd("MAIL FROM:<spammer@example.org>")
        assert reply.code == 554, reply
        assert reply.enhanced == "5.7.1", reply
        assert "bl.test" in reply.text, reply
        assert c.cmd("RCPT TO:<alice@example.test>").code == 554
        assert c.cmd("QUIT").code == 221
    ev = d.wait_event("rejected", reason="dnsbl")[0]
    assert ev["zone"] == "bl.test" and ev["client"] == LISTED
    assert t.metrics(d.metrics_port)[
        'facteur_smtp_rejections_total{reason="dnsbl"}'] == 2


def test_first_command_waits_for_the_answer(make_daemon, zone):
    """MAIL sent before the look-up could answer still gets the verdict."""
    d = dnsbl_daemon(make_daemon, zone, ["bl.test"])
    c = h.RawClient.__new__(h.RawClient)
    c.sock = socket.create_connection((d.host, d.port), h.IO_TIMEOUT,
                                      source_address=(LISTED, 0))
    c.buf = b""
    c.send(b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\n")
    assert c.reply().code == 220
    assert c.reply().code == 250
    assert c.reply().code == 554
    c.close()


def test_unlisted_client_passes(make_daemon, zone):
    d = dnsbl_daemon(make_daemon, zone, ["bl.test"])
    with SourceClient(d, CLEAN) as c:
        reply = c.send_message("a@example.org", ["alice@example.test"],
                               h.make_message())
        assert reply.code == 250, reply
    assert not d.events("rejected", reason="dnsbl")


def test_match_filters_the_answers(make_daemon, zone):
    d = dnsbl_daemon(make_daemon, zone, ["bl.test match=127.0.0.10,127.0.0.11"])
    with SourceClient(d, LISTED) as c:   # answered 127.0.0.2: not a match
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    with SourceClient(d, LISTED_10) as c:
        c.ehlo()
        reply = c.cmd("MAIL FROM:<a@example.org>")
        assert reply.code == 554 and "bl.test" in reply.text, reply


def test_several_zones_the_listing_one_is_named(make_daemon, zone):
    d = dnsbl_daemon(make_daemon, zone, ["none.test", "other.test"])
    with SourceClient(d, LISTED) as c:
        c.ehlo()
        reply = c.cmd("MAIL FROM:<a@example.org>")
        assert reply.code == 554 and "other.test" in reply.text, reply
    with SourceClient(d, LISTED_10) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250


def test_relay_networks_are_not_looked_up(make_daemon, zone):
    d = dnsbl_daemon(make_daemon, zone, ["bl.test"])
    with SourceClient(d, TRUSTED) as c:   # listed, but trusted
        reply = c.send_message("a@example.org", ["alice@example.test"],
                               h.make_message())
        assert reply.code == 250, reply
    assert "9.0.0.127.bl.test" not in zone.log_path.read_text()


def first_mail_from_listed(make_daemon, dns_server):
    """EHLO then MAIL from a listed client, with the daemon asking
    `dns_server`: the MAIL reply and the seconds both took."""
    class Resolver:
        server = dns_server
    d = dnsbl_daemon(make_daemon, Resolver, ["bl.test"])
    with SourceClient(d, LISTED) as c:
        start = time.monotonic()
        c.ehlo()
        reply = c.cmd("MAIL FROM:<a@example.org>")
        return d, reply, time.monotonic() - start


def test_zone_whose_server_is_down_lets_mail_through(make_daemon, tmp_path):
    dns = r.Dnsmasq(tmp_path / "down", hosts=ZONE_HOSTS)   # never started
    _, reply, waited = first_mail_from_listed(make_daemon, dns.server)
    assert reply.code == 250, reply
    assert waited < 15, waited   # at most the 5 s wait, with margin


def test_zone_that_never_answers_costs_at_most_the_wait(make_daemon):
    """A resolver that swallows the queries: the first command waits about
    5 s for the verdict, then the client passes."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        d, reply, waited = first_mail_from_listed(
            make_daemon, "127.0.0.1:%d" % silent.getsockname()[1])
        assert reply.code == 250, reply
        assert 3 <= waited < 20, waited
        d.wait_event("dnsbl_timeout", client=LISTED)
    finally:
        silent.close()


def test_authenticated_client_is_exempt(tls_daemon, zone):
    d = tls_daemon(config={"dns_servers": zone.server,
                           "relay_networks": TRUSTED + "/32",
                           "dnsbl": "bl.test"})
    c = SmtpsClient(d, LISTED)
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 554
        assert c.auth_plain(ALICE, PASSWORD).code == 235
        reply = c.send_message(ALICE, ["alice@example.test"], h.make_message(),
                               ehlo=False)
        assert reply.code == 250, reply
    finally:
        c.close()
