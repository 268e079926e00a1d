"""Relaying against faulty receivers (issue 3): a scripted SMTP server for
replies a real MTA does not give on demand, and SIGKILL of the sender in
the middle of relaying.

SPEC §5 Relay / Retries and bounces, §7 (kill -9), §8 Outbound.
"""

import threading
import time

import facteur_harness as h
import relay_harness as rh
from relay_harness import DISCONNECT, HANG, Slow
from relay_harness import relay, zone  # noqa: F401  (fixtures)

T = rh.RELAY_TIMEOUT


def outcomes(sender, rcpt):
    return [e for e, _ in rh.events_for(sender, rcpt)]


def first_session_only(value):
    """A scripted reply for the first connection; the default afterwards."""
    return lambda s, arg: value if s.index == 0 else None


def first_transaction_only(value):
    """A scripted reply for the first transaction (MAIL) of the first
    connection; the default afterwards, on that connection too: the retry
    may come over the connection the sender kept open."""
    return lambda s, arg: value if s.index == 0 and s.transactions == 1 else None


# --------------------------------------------------------------------------
# before RCPT: move on to the next MX (SPEC §8)

def test_421_greeting_moves_on_to_the_next_mx(relay):
    mx1 = relay.scripted("127.0.0.2", replies={"greeting": "421 4.3.2 busy, try later"})
    mx2 = relay.scripted("127.0.0.3")
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["user@best.test"])
    msgs = mx2.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert mx1.connections() >= 1 and mx1.messages == []
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx2.best.test", "127.0.0.3", relay.port)
    assert sender.events("deferred", queue_id=qid) == []


def test_4xx_to_mail_moves_on_to_the_next_mx(relay):
    mx1 = relay.scripted("127.0.0.2", replies={"mail": "451 4.3.0 local trouble"})
    mx2 = relay.scripted("127.0.0.3")
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["user@best.test"])
    msgs = mx2.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert mx1.messages == []
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid)
    rh.assert_relay_field(ev, "mx2.best.test", "127.0.0.3", relay.port)


def test_every_mx_refusing_with_421_defers_and_never_bounces(relay):
    relay.scripted("127.0.0.2", replies={"greeting": "421 4.3.2 busy"})
    relay.scripted("127.0.0.3", replies={"greeting": "421 4.3.2 busy"})
    sender = relay.sender()

    qid, _ = rh.inject(sender, ["user@best.test"])
    h.wait_for(lambda: len(sender.events("deferred", queue_id=qid)) >= 2, T,
               what="two deferrals\n" + sender.log_tail())
    ev = sender.events("deferred", queue_id=qid)[0]
    assert ev.get("dsn") == "4.3.2", ev
    assert "421" in ev.get("reason", ""), ev
    assert sender.events("bounced", queue_id=qid) == []
    assert sender.maildir_messages(rh.SENDER) == []


# --------------------------------------------------------------------------
# per-recipient temporary failures

def test_451_to_rcpt_defers_that_recipient_only_and_retries_it(relay):
    srv = relay.scripted("127.0.0.4", replies={
        "rcpt": lambda s, addr: "451 4.3.0 greylisted, come back later"
        if addr.startswith("grey@") and s.index == 0 and s.transactions == 1
        else None})
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["ok@afallback.test", "grey@afallback.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid, rcpt="grey@afallback.test")
    assert ev.get("dsn") == "4.3.0", ev
    rh.wait_relay_event(sender, "delivered", queue_id=qid, rcpt="grey@afallback.test")
    msgs = srv.wait_messages(2, T)
    # first ok@ alone, then grey@ alone: ok@ is never sent twice
    assert [m.rcpts for m in msgs] == [["ok@afallback.test"], ["grey@afallback.test"]], msgs
    assert rh.tokens_in([m.data for m in msgs]) == [tok, tok]
    time.sleep(2.5)
    assert len(srv.messages) == 2, srv.transcript()
    assert outcomes(sender, "ok@afallback.test") == ["delivered"]
    assert sender.maildir_messages(rh.SENDER) == []


def test_4xx_after_data_defers_the_whole_transaction(relay):
    srv = relay.scripted("127.0.0.4", replies={
        "eom": first_transaction_only("452 4.3.1 insufficient system storage")})
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["a@afallback.test", "b@afallback.test"])
    for rcpt in ("a@afallback.test", "b@afallback.test"):
        ev = rh.wait_relay_event(sender, "deferred", queue_id=qid, rcpt=rcpt)
        assert ev.get("dsn") == "4.3.1", ev
        rh.wait_relay_event(sender, "delivered", queue_id=qid, rcpt=rcpt)
    msgs = srv.wait_messages(1, T)
    assert len(msgs) == 1 and sorted(msgs[0].rcpts) == ["a@afallback.test", "b@afallback.test"]
    assert rh.tokens_in([msgs[0].data]) == [tok]


def test_5xx_after_data_bounces_every_recipient_of_the_transaction(relay):
    relay.scripted("127.0.0.4", replies={"eom": "554 5.6.0 content rejected"})
    sender = relay.sender()

    qid, _ = rh.inject(sender, ["a@afallback.test", "b@afallback.test"], subject="refused body")
    for rcpt in ("a@afallback.test", "b@afallback.test"):
        ev = rh.wait_relay_event(sender, "bounced", queue_id=qid, rcpt=rcpt)
        assert ev.get("dsn") == "5.6.0", ev
    rh.wait_dsns(sender)
    time.sleep(1)  # one DSN for both, or two: take whatever came
    dsns = sender.maildir_messages(rh.SENDER)
    rcpts_reported = []
    for raw in dsns:
        d = rh.Dsn(raw)
        rcpts_reported.extend(r.get("final-recipient", "") for r in d.recipients)
        for r in d.recipients:
            assert r.get("status") == "5.6.0", d
            assert "content rejected" in r.get("diagnostic-code", ""), d
        assert "refused body" in d.original_text()
    assert sorted(x.split(";")[-1].strip() for x in rcpts_reported) == \
        ["a@afallback.test", "b@afallback.test"], rcpts_reported


# --------------------------------------------------------------------------
# broken connections

def test_disconnect_in_the_middle_of_data_defers_then_delivers_once(relay):
    srv = relay.scripted("127.0.0.4", replies={"in_data": first_session_only(DISCONNECT)})
    sender = relay.sender()

    qid, tok = rh.inject(sender, ["user@afallback.test"],
                         subject="cut in DATA")
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    msgs = srv.wait_messages(1, T)
    rh.wait_relay_event(sender, "delivered", queue_id=qid)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    assert srv.sessions[0].transactions == 1
    time.sleep(2.5)
    assert len(srv.messages) == 1, srv.transcript()


def test_a_silent_server_times_out_and_the_message_is_retried(relay):
    srv = relay.scripted("127.0.0.4", replies={"greeting": first_session_only(HANG)})
    sender = relay.sender(config={"smtp_timeout": "3s"})

    started = time.monotonic()
    qid, tok = rh.inject(sender, ["user@afallback.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    waited = time.monotonic() - started
    assert str(ev.get("dsn", "")).startswith("4."), ev
    assert waited >= 2.5, "gave up after %.1fs, smtp_timeout is 3s" % waited
    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def test_a_server_silent_after_data_times_out_and_defers(relay):
    srv = relay.scripted("127.0.0.4", replies={"eom": first_session_only(HANG)})
    sender = relay.sender(config={"smtp_timeout": "3s"})

    qid, tok = rh.inject(sender, ["user@afallback.test"])
    ev = rh.wait_relay_event(sender, "deferred", queue_id=qid)
    assert str(ev.get("dsn", "")).startswith("4."), ev
    msgs = srv.wait_messages(1, T)
    assert rh.tokens_in([msgs[0].data]) == [tok]
    rh.wait_relay_event(sender, "delivered", queue_id=qid)


def _slow_reply_case(relay, stage, text):
    # smtp_timeout is the *idle* time allowed per reply (SPEC §3): a reply
    # that keeps trickling in, one byte a second, is not idle; the sender
    # reads it to its end, so the message is delivered in one attempt.
    srv = relay.scripted("127.0.0.4", replies={stage: first_session_only(Slow(text))})
    sender = relay.sender(config={"smtp_timeout": "4s"})

    qid, tok = rh.inject(sender, ["user@afallback.test"])
    ev = rh.wait_relay_event(sender, "delivered", queue_id=qid, timeout=90)
    assert ev.get("dsn") == "2.0.0", ev
    time.sleep(3)
    got = rh.tokens_in(m.data for m in srv.messages)
    assert got == [tok], "copies received: %d\n%s" % (len(got), srv.transcript())
    assert sender.events("deferred", queue_id=qid) == [], sender.log_tail()
    assert srv.connections() == 1, srv.transcript()


def test_a_greeting_one_byte_per_second_is_slow_but_not_idle(relay):
    _slow_reply_case(relay, "greeting", "220 slow.test ESMTP")


def test_a_final_reply_one_byte_per_second_is_read_and_not_resent(relay):
    # a timeout here would make the sender try again a message the receiver
    # has already taken: a duplicate
    _slow_reply_case(relay, "eom", "250 2.0.0 Ok: queued")


# --------------------------------------------------------------------------
# expiry with a remote status

def test_expiry_makes_the_last_remote_temporary_status_permanent(relay):
    relay.scripted("127.0.0.4", replies={"rcpt": "452 4.2.2 mailbox full"})
    sender = relay.sender(config={"queue_lifetime": "4s"})

    qid, _ = rh.inject(sender, ["full@afallback.test"], subject="into a full box")
    ev = rh.wait_relay_event(sender, "expired", queue_id=qid)
    assert ev.get("dsn") == "5.2.2", ev
    assert ev.get("rcpt") == "full@afallback.test", ev
    # Action: failed with the 4.x.x as it was (RFC 3463: a persistent
    # transient failure); only the log line makes it permanent
    dsn = rh.check_dsn(rh.wait_dsns(sender)[0], "full@afallback.test", "4.2.2")
    assert "into a full box" in dsn.original_text(), dsn


# --------------------------------------------------------------------------
# SIGKILL in the middle of relaying (SPEC §5, §7)

def test_sigkill_while_relaying_neither_resends_nor_loses_a_recipient(relay):
    """Each message goes to a@one.test (a facteurd, fast) and b@slow.test (a
    scripted server that takes the whole message and then never answers
    the final dot). Once every a@ is delivered and every b@ hangs, the
    sender is killed with SIGKILL and restarted: a@ must not get a second
    copy, b@ must get its copy exactly once."""
    n = 8
    fast = relay.receiver("127.0.0.2", "one.test")
    release = threading.Event()
    slow = relay.scripted("127.0.0.3", replies={
        "eom": lambda s, data: None if release.is_set() else HANG})
    sender = relay.sender()

    sent = [rh.inject(sender, ["a@one.test", "b@slow.test"]) for _ in range(n)]
    tokens = sorted(t for _, t in sent)

    fast.wait_messages("a@one.test", n, T)
    for qid, _ in sent:
        rh.wait_relay_event(sender, "delivered", queue_id=qid, rcpt="a@one.test")
    h.wait_for(lambda: sum(1 for s in slow.sessions if any("<hang>" in l for l in s.dialog)) >= 1,
               T, what="a hanging transaction at slow.test\n" + slow.transcript())
    assert slow.messages == []

    time.sleep(1)  # let the other transactions reach the hang too
    sender.kill9()
    release.set()
    sender.start()

    h.wait_for(lambda: len(slow.messages) >= n, T,
               what="%d messages at slow.test\n%s\n%s" % (n, slow.transcript(), sender.log_tail()))
    time.sleep(3)  # longer than retry_max: any extra copy would be here
    assert sorted(rh.tokens_in(m.data for m in slow.messages)) == tokens
    assert all(m.rcpts == ["b@slow.test"] for m in slow.messages), slow.messages
    assert sorted(rh.tokens_in(fast.maildir_messages("a@one.test"))) == tokens, \
        "a delivered recipient was sent again after the restart"
    assert sender.maildir_messages(rh.SENDER) == []


def test_sigkill_under_load_loses_nothing_and_resends_nothing_recorded(relay):
    """Many messages to three receivers; SIGKILL at an arbitrary moment.
    Every recipient gets every acknowledged message at least once, and a
    recipient whose delivery was logged before the kill is never sent
    again."""
    n = 30
    rcvs = {
        "u@one.test": relay.receiver("127.0.0.2", "one.test"),
        "v@slow.test": relay.receiver("127.0.0.3", "slow.test"),
        "w@afallback.test": relay.receiver("127.0.0.4", "afallback.test"),
    }
    sender = relay.sender()

    # submit in a thread so that the kill lands while relaying is busy
    sent = []
    stop = threading.Event()

    def submit():
        for _ in range(n):
            if stop.is_set():
                return
            try:
                sent.append(rh.inject(sender, list(rcvs)))
            except (OSError, AssertionError):
                return  # the sender died under us: that message was not acknowledged

    t = threading.Thread(target=submit, daemon=True)
    t.start()
    h.wait_for(lambda: len(rcvs["u@one.test"].maildir_messages("u@one.test")) >= n // 3,
               T, what="some deliveries before the kill")
    stop.set()
    sender.kill9()
    t.join(30)
    before_kill = sender.logs()
    done_before = {(e.get("queue_id"), e.get("rcpt")) for e in before_kill
                   if e.get("event") == "delivered"}
    sender.start()

    by_qid = dict(sent)
    for rcpt, rcv in rcvs.items():
        h.wait_for(lambda: set(rh.tokens_in(rcv.maildir_messages(rcpt))) >= set(by_qid.values()),
                   T, what="every acknowledged message at %s\n%s" % (rcpt, sender.log_tail()))
    time.sleep(3)
    for rcpt, rcv in rcvs.items():
        got = rh.tokens_in(rcv.maildir_messages(rcpt))
        counts = {tok: got.count(tok) for tok in set(got)}
        for qid, tok in sent:
            if (qid, rcpt) in done_before:
                assert counts.get(tok) == 1, (
                    "%s of %s was logged delivered before the kill and was sent again"
                    % (rcpt, qid))
        # A copy the receiver took just before the kill, whose 250 the sender
        # had not recorded yet, may legitimately come again (RFC 5321 §6.1);
        # those are the only duplicates allowed.
        recorded = {tok for qid, tok in sent if (qid, rcpt) in done_before}
        dup = {tok: c for tok, c in counts.items() if c > 1}
        assert not (set(dup) & recorded), "duplicates at %s: %r" % (rcpt, dup)
    assert sender.maildir_messages(rh.SENDER) == []

