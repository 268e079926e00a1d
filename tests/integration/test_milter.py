"""The milter client (milter = ADDRESS [timeout=] [default=]) against a
scripted milter speaking the protocol from its wire format
(milter_server.py): every step is told, with its macros; every action and
modification has its effect; a milter that is slow, closed, speaks
garbage or the wrong version is cut off and its default= decides;
several milters are asked in order."""

import socket
import struct
import time

import pytest

import facteur_harness as h
import milter_server as m
import tls_harness as t
from test_facteurctl import ok, queue_ids

RCPT = "user@localhost"
MESSAGE = ("From: a@example.org\r\nTo: user@localhost\r\nSubject: hi\r\n"
           "X-One: 1\r\nX-One: 2\r\n\r\nthe body\r\n")


@pytest.fixture
def milter():
    servers = []

    def factory(**kw):
        s = m.MilterServer(**kw).start()
        servers.append(s)
        return s
    yield factory
    for s in servers:
        s.stop()


def milter_daemon(make_daemon, *lines):
    port = h.free_port()
    d = make_daemon(config={"metrics_listen": "127.0.0.1:%d" % port},
                    extra_lines=["milter = %s" % line for line in lines])
    d.metrics_port = port
    return d


def transaction(d, data=MESSAGE, rcpts=(RCPT,), sender="a@example.org"):
    """MAIL, RCPT..., DATA: the replies, stopping at the first refusal."""
    replies = []
    with d.raw() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<%s>" % sender)
        replies.append(r)
        if r.code != 250:
            return replies
        for rcpt in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            replies.append(r)
        if not any(x.code == 250 for x in replies[1:]):
            return replies
        r = c.cmd("DATA")
        replies.append(r)
        if r.code != 354:
            return replies
        c.send(h.dot_stuff(data.encode()))
        replies.append(c.reply())
        c.cmd("QUIT")
    return replies


def delivered(d, rcpt=RCPT):
    return h.parse_message(d.wait_messages(rcpt)[0])


def test_every_step_is_told_with_its_macros(make_daemon, milter):
    s = milter()
    d = milter_daemon(make_daemon, s.address)
    got = t.metrics(d.metrics_port)  # every series from the first scrape
    assert got['facteur_milter_errors_total{milter="%s"}' % s.address] == 0
    assert got['facteur_milter_actions_total{milter="%s",action="discard"}' % s.address] == 0
    final = transaction(d)[-1]
    assert final.code == 250, final
    d.wait_event("accepted", queue_id=h.queue_id_of(final), milter=s.address,
                 action="continue")
    assert s.offered[0] == 6
    cmds = s.commands()
    # connect, helo, mail, rcpt, data, five headers (ours first), eoh, body, eob
    told = [c for c in cmds if c != b"D"]
    assert told[:6] == [b"O", b"C", b"H", b"M", b"R", b"T"], cmds
    assert told[6:12] == [b"L"] * 6 and told[12:] == [b"N", b"B", b"E"], cmds
    macros = b"".join(s.data_of("D"))
    for name, value in [(b"j", h.HOSTNAME.encode()), (b"{client_addr}", b"127.0.0.1"),
                        (b"{mail_addr}", b"a@example.org"), (b"{rcpt_addr}", RCPT.encode())]:
        assert name + b"\0" + value + b"\0" in macros, macros
    qid = h.queue_id_of(final)
    assert b"i\0" + qid.encode() + b"\0" in macros
    assert s.data_of("M")[0] == b"<a@example.org>\0"
    assert s.data_of("R")[0] == b"<user@localhost>\0"
    headers = s.data_of("L")
    assert headers[0].startswith(b"Received\0from client.test")
    assert b"\n\tby " in headers[0] and b"\r" not in headers[0]
    assert headers[3] == b"Subject\0hi\0"
    assert s.data_of("B") == [b"the body\r\n"]
    connect = s.data_of("C")[0]
    assert connect.split(b"\0")[0] == b"unknown" and connect[8:9] == b"4"
    assert connect.endswith(b"127.0.0.1\0")


def test_reject_at_mail_gives_the_milters_text(make_daemon, milter):
    s = milter(replies={"M": [m.replycode("550 5.7.1 go away, spammer")]})
    d = milter_daemon(make_daemon, s.address)
    r = transaction(d)[-1]
    assert (r.code, r.text) == (550, "5.7.1 go away, spammer")
    d.wait_event("rejected", reason="milter", milter=s.address, action="reject")
    got = t.metrics(d.metrics_port)
    assert got['facteur_smtp_rejections_total{reason="milter"}'] == 1
    assert got['facteur_milter_actions_total{milter="%s",action="reject"}' % s.address] == 1


def test_reject_without_text_is_550_571(make_daemon, milter):
    s = milter(replies={"E": [m.REJECT]})
    d = milter_daemon(make_daemon, s.address)
    r = transaction(d)[-1]
    assert r.code == 550 and r.enhanced == "5.7.1", r
    assert d.maildir_messages(RCPT) == []


def test_tempfail_at_rcpt_refuses_that_recipient_only(make_daemon, milter):
    def per_rcpt(cmd, data, seen):
        return [m.TEMPFAIL] if data.startswith(b"<bad@") else [m.CONTINUE]
    s = milter(replies={"R": per_rcpt})
    d = milter_daemon(make_daemon, s.address)
    replies = transaction(d, rcpts=("bad@localhost", RCPT))
    assert replies[1].code == 451 and replies[1].enhanced == "4.7.1"
    assert replies[2].code == 250 and replies[-1].code == 250
    msg = delivered(d)
    assert msg["Subject"] == "hi"


def test_discard_answers_250_and_drops_the_message(make_daemon, milter):
    s = milter(replies={"E": [m.DISCARD]})
    d = milter_daemon(make_daemon, s.address)
    r = transaction(d)[-1]
    assert r.code == 250, r
    d.wait_event("discarded", milter=s.address)
    time.sleep(0.5)
    assert d.maildir_messages(RCPT) == []
    assert d.events("accepted") == []


def test_discard_at_rcpt_drops_the_whole_message(make_daemon, milter):
    s = milter(replies={"R": [m.DISCARD]})
    d = milter_daemon(make_daemon, s.address)
    r = transaction(d)[-1]
    assert r.code == 250, r
    d.wait_event("discarded")
    assert d.maildir_messages(RCPT) == []
    assert b"E" not in s.commands()


def test_quarantine_holds_the_message(make_daemon, milter):
    s = milter(replies={"E": [m.quarantine("looks odd"), m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    qid = h.queue_id_of(transaction(d)[-1])
    d.wait_event("quarantined", queue_id=qid, reason="looks odd")
    d.wait_event("accepted", queue_id=qid, milter=s.address, action="quarantine")
    time.sleep(0.5)
    assert d.maildir_messages(RCPT) == []
    assert qid in queue_ids(d)
    ok(d, "release", qid)
    assert delivered(d)["Subject"] == "hi"


def test_header_changes_are_applied_before_the_commit(make_daemon, milter):
    s = milter(replies={"E": [
        m.add_header("X-Added", "added value"),
        m.insert_header(0, "X-First", "on top"),
        m.change_header(2, "X-One", "second changed"),
        m.change_header(1, "Subject", ""),          # deleted
        m.add_header("X-Folded", "line one\n\tline two"),
        m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    final = transaction(d)[-1]
    assert final.code == 250, final
    raw = d.wait_messages(RCPT)[0]
    head = raw.split(b"\n\n")[0]
    lines = head.split(b"\n")
    first_field = [l for l in lines if not l.startswith((b"Return-Path", b"Delivered-To"))][0]
    assert first_field == b"X-First: on top"
    msg = h.parse_message(raw)
    assert msg.get_all("X-One") == ["1", "second changed"]
    assert msg["Subject"] is None
    assert msg["X-Added"] == "added value"
    assert b"X-Folded: line one\n\tline two" in head
    # our Received field names the id the message is queued under
    assert ("id %s" % h.queue_id_of(final)).encode() in raw
    assert msg.get_payload() == "the body\n"


def test_body_replaced(make_daemon, milter):
    s = milter(replies={"E": [m.replace_body(b"new "), m.replace_body(b"body\r\n"),
                              m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d)[-1].code == 250
    msg = delivered(d)
    assert msg.get_payload() == "new body\n"
    assert msg["Subject"] == "hi"


def test_large_body_streams_in_chunks_and_is_replaced(make_daemon, milter):
    body = "".join("line %06d of a long body\r\n" % i for i in range(8000))
    s = milter(replies={"E": [m.replace_body(b"short\r\n"), m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d, data="Subject: big\r\n\r\n" + body)[-1].code == 250
    chunks = s.data_of("B")
    assert len(chunks) > 1 and all(len(c) <= 65535 for c in chunks)
    assert b"".join(chunks) == body.encode()
    assert delivered(d).get_payload() == "short\n"


def test_envelope_changes(make_daemon, milter):
    s = milter(replies={"E": [m.change_from("<new@example.org>"),
                              m.add_rcpt("<other@localhost>"),
                              m.add_rcpt("<third@localhost>", "NOTIFY=NEVER"),
                              m.del_rcpt("<user@localhost>"),
                              m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d)[-1].code == 250
    for rcpt in ("other@localhost", "third@localhost"):
        msg = delivered(d, rcpt)
        assert msg["Return-Path"] == "<new@example.org>"
    time.sleep(0.3)
    assert d.maildir_messages(RCPT) == []


def test_mail_and_rcpt_parameters_are_told_as_the_client_wrote_them(make_daemon, milter):
    s = milter()
    d = milter_daemon(make_daemon, s.address)
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=1234  body=8BITMIME").code == 250
        r = c.cmd("RCPT TO:<user@localhost> NOTIFY=SUCCESS,FAILURE "
                  "ORCPT=rfc822;user@localhost")
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<other@localhost>").code == 250
        c.cmd("QUIT")
    assert s.data_of("M") == [b"<a@example.org>\0SIZE=1234\0body=8BITMIME\0"]
    assert s.data_of("R") == [
        b"<user@localhost>\0NOTIFY=SUCCESS,FAILURE\0ORCPT=rfc822;user@localhost\0",
        b"<other@localhost>\0"]


def test_added_recipient_takes_its_notify_and_orcpt(make_daemon, milter):
    sender = "sender@localhost"
    s = milter(replies={"E": [
        m.add_rcpt("<other@localhost>", "NOTIFY=SUCCESS ORCPT=rfc822;given@example.org"),
        m.add_rcpt("<third@localhost>", "NOTIFY=SOMETIMES SIZE=10"),
        m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    final = transaction(d, sender=sender)[-1]
    assert final.code == 250, final
    qid = h.queue_id_of(final)
    # the malformed parameter is refused, the one that means nothing for
    # a recipient ignored; the recipient is added all the same
    d.wait_event("milter_param", milter=s.address, queue_id=qid,
                 address="<third@localhost>", param="NOTIFY=SOMETIMES", result="refused")
    d.wait_event("milter_param", milter=s.address, queue_id=qid,
                 address="<third@localhost>", param="SIZE=10", result="ignored")
    for rcpt in (RCPT, "other@localhost", "third@localhost"):
        d.wait_event("delivered", rcpt=rcpt)
    # NOTIFY=SUCCESS: a success notice for the added recipient only, with
    # the ORCPT the milter gave
    (dsn,) = h.wait_for(lambda: h.dsns_to(d, sender) or None, h.IO_TIMEOUT,
                        what="a success DSN")
    per_recipient = h.dsn_fields(dsn)[1:]
    assert len(per_recipient) == 1, per_recipient
    assert per_recipient[0]["Action"] == "delivered"
    assert per_recipient[0]["Final-Recipient"] == "rfc822; other@localhost"
    assert per_recipient[0]["Original-Recipient"] == "rfc822;given@example.org"
    time.sleep(1)
    assert len(h.dsns_to(d, sender)) == 1


def test_a_change_not_negotiated_cuts_the_milter(make_daemon, milter):
    s = milter(actions=0, replies={"E": [m.add_header("X-No", "x"), m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    r = transaction(d)[-1]
    assert r.code == 451 and r.enhanced == "4.7.1", r
    d.wait_event("milter_error", milter=s.address)


def test_accept_skips_the_milter_for_the_message(make_daemon, milter):
    s = milter(replies={"M": [m.ACCEPT]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d)[-1].code == 250
    assert b"R" not in s.commands() and b"E" not in s.commands()
    assert delivered(d)["Subject"] == "hi"


def test_accept_at_connect_skips_the_milter_for_the_session(make_daemon, milter):
    s = milter(replies={"C": [m.ACCEPT]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d)[-1].code == 250
    assert [c for c in s.commands() if c != b"D"] == [b"O", b"C"]


def test_reject_at_connect_refuses_every_mail(make_daemon, milter):
    s = milter(replies={"C": [m.replycode("554 5.7.1 not you")]})
    d = milter_daemon(make_daemon, s.address)
    with d.raw() as c:
        c.ehlo()
        for _ in range(2):
            r = c.cmd("MAIL FROM:<a@example.org>")
            assert (r.code, r.text) == (554, "5.7.1 not you")


def test_steps_the_milter_declines_are_not_sent(make_daemon, milter):
    s = milter(protocol=m.NOHELO | m.NOBODY | m.NOHDRS | m.NR_RCPT | m.NOEOH,
               replies={"R": []})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d)[-1].code == 250
    told = [c for c in s.commands() if c != b"D"]
    assert told == [b"O", b"C", b"M", b"R", b"T", b"E"], told


def test_skip_ends_the_body_early(make_daemon, milter):
    body = "x" * 70000 + "\r\n" + "y" * 70000 + "\r\n"
    s = milter(protocol=m.SKIP, replies={"B": [m.SKIP_REPLY]})
    d = milter_daemon(make_daemon, s.address)
    assert transaction(d, data="Subject: s\r\n\r\n" + body)[-1].code == 250
    assert len(s.data_of("B")) == 1
    assert s.commands()[-1] == b"E"


def test_pipelined_commands_wait_for_the_milter(make_daemon, milter):
    s = milter(delay={"M": 1.0})
    d = milter_daemon(make_daemon, s.address)
    with d.raw() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 250
        assert c.reply().code == 354
        c.send(h.dot_stuff(MESSAGE.encode()))
        assert c.reply().code == 250
    assert s.commands().index(b"R") > s.commands().index(b"M")


@pytest.mark.parametrize("default,code", [("", 451), (" default=tempfail", 451),
                                          (" default=reject", 550),
                                          (" default=accept", 250)])
def test_slow_milter_is_cut_at_timeout(make_daemon, milter, default, code):
    s = milter(delay={"M": 5})
    d = milter_daemon(make_daemon, s.address + " timeout=1s" + default)
    start = time.time()
    r = transaction(d)
    assert r[0].code == code if code != 250 else r[-1].code == 250, r
    assert time.time() - start < 4.5
    d.wait_event("milter_error", milter=s.address, reason="timeout")
    got = t.metrics(d.metrics_port)
    assert got['facteur_milter_errors_total{milter="%s"}' % s.address] == 1


@pytest.mark.parametrize("fault", ["closed", "garbage", "version", "dead"])
def test_broken_milter_gets_its_default(make_daemon, milter, fault):
    if fault == "closed":
        s = milter(close={"R"})
        addr = s.address
    elif fault == "garbage":
        s = milter(garbage={"M"})
        addr = s.address
    elif fault == "version":
        s = milter(version=7)
        addr = s.address
    else:
        addr = "inet:127.0.0.1:%d" % h.free_port()
    d = milter_daemon(make_daemon, addr + " timeout=3s")
    r = transaction(d)
    refused = [x for x in r if x.code >= 400]
    assert refused and refused[0].code == 451 and refused[0].enhanced == "4.7.1", r
    d.wait_event("milter_error", milter=addr)
    # default=accept: the same fault lets mail through
    d2 = milter_daemon(make_daemon, addr + " timeout=3s default=accept")
    assert transaction(d2)[-1].code == 250


def test_milters_are_asked_in_order(make_daemon, milter):
    first = milter(replies={"E": [m.add_header("X-First", "1"), m.CONTINUE]})
    second = milter(replies={"E": [m.replycode("550 5.7.0 second says no")]})
    d = milter_daemon(make_daemon, first.address, second.address)
    r = transaction(d)[-1]
    assert (r.code, r.text) == (550, "5.7.0 second says no")
    # the second saw the first's change
    assert b"X-First\x001\x00" in second.data_of("L")


def test_the_second_milter_sees_the_firsts_changes_and_both_apply(make_daemon, milter):
    first = milter(replies={"M": [m.ACCEPT]})
    second = milter(replies={"E": [m.add_header("X-Second", "2"), m.CONTINUE]})
    d = milter_daemon(make_daemon, first.address, second.address)
    assert transaction(d)[-1].code == 250
    assert delivered(d)["X-Second"] == "2"
    assert b"E" not in first.commands()


def test_abort_between_transactions(make_daemon, milter):
    s = milter()
    d = milter_daemon(make_daemon, s.address)
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<b@example.org>").code == 250
        c.cmd("QUIT")
    s.wait_for("M", 2)
    cmds = [x for x in s.commands() if x != b"D"]
    assert cmds.index(b"A") > cmds.index(b"M")


def test_unix_socket_milter(make_daemon, tmp_path):
    """unix:PATH: a milter on a UNIX socket that rejects at MAIL."""
    import threading
    path = tmp_path / "milter.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn):
        with conn:
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    n = struct.unpack(">I", buf[:4])[0]
                    cmd, buf = buf[4:5], buf[4 + n:]
                    if cmd == b"O":
                        conn.sendall(m.packet("O", struct.pack(">III", 6, 0, 0)))
                    elif cmd == b"M":
                        conn.sendall(m.replycode("550 5.7.1 unix says no"))
                    elif cmd not in m.SILENT:
                        conn.sendall(m.CONTINUE)
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    d = milter_daemon(make_daemon, "unix:%s" % path)
    r = transaction(d)[-1]
    assert (r.code, r.text) == (550, "5.7.1 unix says no")
    srv.close()


def test_header_section_over_the_held_limit_is_kept_whole(make_daemon, milter):
    """Past 256 KiB of header fields the rest is sent as body; a change
    then keeps the section whole (no empty line slipped into it)."""
    fields = "".join("X-Filler-%05d: %s\r\n" % (i, "f" * 60) for i in range(4000))
    s = milter(replies={"E": [m.add_header("X-Added", "yes"), m.CONTINUE]})
    d = milter_daemon(make_daemon, s.address)
    data = "Subject: many\r\n" + fields + "\r\nthe body\r\n"
    assert transaction(d, data=data)[-1].code == 250
    msg = delivered(d)
    assert len(msg.get_all("X-Filler-03999") or []) == 1
    assert msg["X-Added"] == "yes" and msg.get_payload() == "the body\n"
