"""max_messages_per_ip = N/m|N/h: MAIL commands per client address across
sessions; past N within the window, 450 4.7.1 at MAIL. Other addresses
and relay_networks clients are not held back."""

import facteur_harness as h
import tls_harness as t
from test_dnsbl import SourceClient

TRUSTED = "127.0.0.9"


def rate_daemon(make_daemon, rate="3/h"):
    port = h.free_port()
    d = make_daemon(config={"max_messages_per_ip": rate,
                            "relay_networks": TRUSTED + "/32",
                            "metrics_listen": "127.0.0.1:%d" % port})
    d.metrics_port = port
    return d


def send(d, source):
    with SourceClient(d, source) as c:
        c.ehlo()
        reply = c.cmd("MAIL FROM:<a@example.org>")
        if reply.code == 250:
            assert c.cmd("RCPT TO:<alice@example.test>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(h.dot_stuff(h.make_message()))
            assert c.reply().code == 250
        c.cmd("QUIT")
        return reply


def test_past_the_rate_mail_gets_450_across_sessions(make_daemon):
    d = rate_daemon(make_daemon)
    for _ in range(3):
        assert send(d, "127.0.0.2").code == 250
    reply = send(d, "127.0.0.2")
    assert reply.code == 450, reply
    assert reply.enhanced == "4.7.1", reply
    ev = d.wait_event("rejected", reason="rate")[0]
    assert ev["client"] == "127.0.0.2"
    assert t.metrics(d.metrics_port)[
        'facteur_smtp_rejections_total{reason="rate"}'] == 1
    # Another address has its own count.
    assert send(d, "127.0.0.3").code == 250


def test_relay_networks_are_exempt(make_daemon):
    d = rate_daemon(make_daemon, "1/m")
    for _ in range(3):
        assert send(d, TRUSTED).code == 250
    assert not d.events("rejected", reason="rate")


def test_window_passes(make_daemon):
    d = make_daemon(config={"max_messages_per_ip": "2/3s",
                            "relay_networks": TRUSTED + "/32"})
    assert send(d, "127.0.0.2").code == 250
    assert send(d, "127.0.0.2").code == 250
    assert send(d, "127.0.0.2").code == 450
    h.wait_for(lambda: send(d, "127.0.0.2").code == 250, timeout=10,
               interval=1.0, what="the window to pass")
