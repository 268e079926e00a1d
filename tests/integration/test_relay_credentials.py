"""A route's auth= file is read when the settings take effect, at start and
at each reload, not at each relay attempt (docs/configuration.md, auth=):
what the operator sees when it cannot be read, and once it is fixed."""

import signal

import facteur_harness as h
import relay_harness as rh
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT


def test_unreadable_auth_file_defers_until_fixed_and_reloaded(relay, tmp_path):
    cert, key = relay.cert("smarthost.test")
    srv = relay.scripted("127.0.0.3", name="smarthost.test", cert=cert, key=key,
                         auth={"relay-user": "s3cret pass"})
    secret = tmp_path / "smarthost.secret"
    sender = relay.sender(extra_lines=[
        "route = * [127.0.0.3]:%d tls=encrypt auth=%s" % (relay.port, secret)])

    # the daemon runs, and says so at start
    warned = sender.wait_event("route_auth_unreadable", file=str(secret))[0]
    assert warned.get("level") == "warn", warned

    qid, tok = rh.inject(sender, ["far@away.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert ev.get("dsn") == "4.3.5", ev
    assert ev.get("reason") == "cannot read auth file %s" % secret, ev

    # the file alone is not read again: the next attempts still defer
    secret.write_text("relay-user:s3cret pass\n")
    seen = len(sender.events("deferred", queue_id=qid))
    h.wait_for(lambda: len(sender.events("deferred", queue_id=qid)) > seen, T,
               what="another attempt")
    assert all(e.get("dsn") == "4.3.5"
               for e in sender.events("deferred", queue_id=qid))
    assert srv.auths == [] and srv.messages == []

    # a reload reads it: the next attempt authenticates and delivers
    sender.proc.send_signal(signal.SIGHUP)
    sender.wait_event("reloaded")
    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert [a[1:3] for a in srv.auths] == [("relay-user", "s3cret pass")], srv.auths
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert sender.events("bounced", queue_id=qid) == []
