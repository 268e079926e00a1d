"""REQUIRETLS (RFC 8689): offered on encrypted sessions only, stored with
the message, and honoured on relay: the message goes only over TLS whose
certificate verifies, to a next hop that offers REQUIRETLS itself (a
facteurd with a certificate does); otherwise it is bounced with 5.7.10.

The sending facteurd has a certificate so that the test's client can use
STARTTLS; the next hop is a receiving facteurd on 127.0.0.2, the MX of
secure.test in the shared dnsmasq zone.
"""
import smtplib
import ssl

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT
RCPT = "user@secure.test"


def tls_receiver(relay):
    cert, key = relay.cert("mx.secure.test")
    rcv = relay.receiver("127.0.0.2", "secure.test",
                         config={"tls_cert": str(cert), "tls_key": str(key)})
    return rcv, cert


def sender_with_tls(relay, **config):
    cert, key = relay.cert("sender.test")
    cfg = {"tls_cert": str(cert), "tls_key": str(key), "tls_outbound": "may"}
    cfg.update(config)
    return relay.sender(config=cfg)


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def submit_requiretls(d, rcpt=RCPT):
    """Over STARTTLS, MAIL FROM with REQUIRETLS; returns the queue id."""
    tok = rh.token()
    data = h.make_message(subject="requiretls %s" % tok,
                          body="token=%s\r\n" % tok, sender=rh.SENDER, to=rcpt)
    with smtplib.SMTP(d.host, d.port, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("requiretls"), s.esmtp_features
        s.starttls(context=client_context())
        s.ehlo("client.test")
        assert s.has_extn("requiretls"), s.esmtp_features
        s.mail(rh.SENDER, ["REQUIRETLS"])
        code, _ = s.rcpt(rcpt)
        assert code == 250
        code, reply = s.data(data)
        assert code == 250, reply
    qid = reply.decode().rsplit(" ", 1)[-1]
    return qid, tok


def test_requiretls_refused_on_a_plaintext_session(relay):
    d = sender_with_tls(relay)
    with smtplib.SMTP(d.host, d.port, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("requiretls")
        code, reply = s.mail(rh.SENDER, ["REQUIRETLS"])
        assert code == 530 and reply.startswith(b"5.7.10"), (code, reply)
        # the session goes on: without the parameter, MAIL is fine
        code, _ = s.mail(rh.SENDER)
        assert code == 250
    ev = d.wait_event("rejected", reason="REQUIRETLS without TLS")[0]
    assert ev["address"] == rh.SENDER


def test_requiretls_relayed_over_verified_tls_to_a_requiretls_hop(relay):
    rcv, cert = tls_receiver(relay)
    sender = sender_with_tls(relay, tls_ca_file=str(cert))
    qid, tok = submit_requiretls(sender)
    acc = sender.wait_event("accepted", queue_id=qid)[0]
    assert acc.get("requiretls") == "yes", acc
    msgs = rcv.wait_messages(RCPT, 1, T)
    assert rh.tokens_in(msgs) == [tok]
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert ev.get("verified") == "yes" and ev.get("tls", "").startswith("TLSv1"), ev
    # the next hop took REQUIRETLS on MAIL and stored it with the message
    got = rcv.wait_event("accepted", requiretls="yes")
    assert len(got) == 1, got


def test_requiretls_bounced_when_the_next_hop_has_no_tls(relay):
    rcv = relay.receiver("127.0.0.2", "secure.test")    # no certificate
    sender = sender_with_tls(relay)
    qid, _ = submit_requiretls(sender)
    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid)
    assert ev["dsn"] == "5.7.10", ev
    assert "REQUIRETLS" in ev.get("reason", ""), ev
    dsns = rh.wait_dsns(sender)
    rh.check_dsn(dsns[0], RCPT, "5.7.10")
    assert rcv.maildir_messages(RCPT) == []
    assert sender.events("deferred", queue_id=qid) == []


def test_requiretls_bounced_when_the_certificate_does_not_verify(relay):
    rcv, _ = tls_receiver(relay)
    sender = sender_with_tls(relay)      # trusts the system store only
    qid, _ = submit_requiretls(sender)
    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid)
    assert ev["dsn"] == "5.7.10" and "verify" in ev.get("reason", ""), ev
    rh.check_dsn(rh.wait_dsns(sender)[0], RCPT, "5.7.10")
    assert rcv.maildir_messages(RCPT) == []


def test_requiretls_bounced_when_the_next_hop_does_not_offer_it(relay):
    cert, key = relay.cert("mx.secure.test")
    srv = relay.scripted("127.0.0.2", name="mx.secure.test", cert=cert, key=key)
    sender = sender_with_tls(relay, tls_ca_file=str(cert))
    qid, _ = submit_requiretls(sender)
    ev = rh.wait_relay_event(sender, "bounced", queue_id=qid)
    assert ev["dsn"] == "5.7.10" and "REQUIRETLS is not offered" in ev.get("reason", ""), ev
    assert srv.rcpts_delivered() == []


def test_a_message_without_requiretls_is_relayed_as_before(relay):
    rcv = relay.receiver("127.0.0.2", "secure.test")    # no TLS at all
    sender = sender_with_tls(relay)
    qid, tok = rh.inject(sender, [RCPT])
    assert rh.tokens_in(rcv.wait_messages(RCPT, 1, T)) == [tok]
    acc = sender.events("accepted", queue_id=qid)[0]
    assert "requiretls" not in acc
