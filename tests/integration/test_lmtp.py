"""local_transport = lmtp:... (RFC 2033): local recipients handed to an LMTP
server instead of being written by facteur.

The first tests drive a scripted LMTP server (asyncio, in a thread) for what
a real one never does on demand: a reply per recipient of each class, fewer
replies than recipients, garbage, a close or silence in the middle of the
replies. Every recipient without a 2xx reply must be deferred, then
delivered once by a later attempt: never lost, never twice. The last tests
run a real Dovecot (dovecot_harness.py) and read the mail over IMAP.
"""

import asyncio
import email
import os
import subprocess
import threading
import time

import pytest

from aio_server import AioServer
import dovecot_harness as dh
import facteur_harness as h
from dovecot_harness import dovecots  # noqa: F401 (fixture)
from dovecot_harness import traversable as base  # noqa: F401 (fixture)
from dovecot_harness import vmail as account  # noqa: F401 (fixture)
import relay_harness as rh

SENDER = "sender@localhost"
HANG = object()   # after the replies: keep the connection open, say nothing
CLOSE = object()  # after the replies: close the connection


class Transaction:
    def __init__(self, session, mail_from, rcpts, data):
        self.session = session
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data
        self.replies = []


class ScriptedLMTP:
    """An LMTP server on a UNIX-domain socket (`path`) or on TCP
    (`host`, `port`), in its own thread and event loop (aio_server.py).

    `rcpt(address)` gives the reply to RCPT (default 250). `after_data(tx)`
    gives the lines sent after the final dot: reply strings, then
    optionally CLOSE or HANG; by default one 250 per recipient. Every
    transaction is recorded in `transactions` with the replies it got."""

    def __init__(self, path=None, host=None, port=None, rcpt=None, after_data=None):
        self.rcpt = rcpt or (lambda address: "250 2.1.5 Ok")
        self.after_data = after_data or (
            lambda tx: ["250 2.0.0 <%s> Saved" % r for r in tx.rcpts])
        self.transactions = []
        self.sessions = 0
        self.lhlo = []
        self.lock = threading.Lock()
        self.aio = AioServer(self._session, host=host, port=port,
                             path=path or None, what="the scripted LMTP server")

    def start(self):
        self.aio.start()
        return self

    def stop(self):
        self.aio.stop()

    def delivered(self, address):
        """How many transactions got a 2xx for this recipient."""
        n = 0
        with self.lock:
            for tx in self.transactions:
                for rcpt, reply in zip(tx.rcpts, tx.replies):
                    n += rcpt == address and reply.startswith("2")
        return n

    def wait_transactions(self, count):
        return h.wait_for(lambda: len(self.transactions) >= count and self.transactions,
                          what="%d LMTP transaction(s)" % count)

    async def _session(self, reader, writer):
        with self.lock:
            self.sessions += 1
            session = self.sessions
        write = lambda text: writer.write(text.encode() + b"\r\n")
        write("220 lmtp.test LMTP ready")
        mail_from, rcpts = None, []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb, _, arg = line.decode().rstrip("\r\n").partition(" ")
                verb = verb.upper()
                if verb == "LHLO":
                    self.lhlo.append(arg)
                    write("250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                          "250 8BITMIME")
                elif verb == "MAIL":
                    mail_from, rcpts = arg[5:].split(">")[0].lstrip("<"), []
                    write("250 2.1.0 Ok")
                elif verb == "RCPT":
                    address = arg[3:].split(">")[0].lstrip("<")
                    reply = self.rcpt(address)
                    if reply.startswith("2"):
                        rcpts.append(address)
                    write(reply)
                elif verb == "DATA":
                    write("354 OK")
                    data = b""
                    while True:
                        chunk = await reader.readline()
                        if chunk in (b".\r\n", b""):
                            break
                        data += chunk[1:] if chunk.startswith(b".") else chunk
                    tx = Transaction(session, mail_from, rcpts, data)
                    with self.lock:
                        self.transactions.append(tx)
                    mail_from, rcpts = None, []
                    for item in self.after_data(tx):
                        if item is CLOSE:
                            await writer.drain()
                            return
                        if item is HANG:
                            await writer.drain()
                            await asyncio.sleep(3600)
                        tx.replies.append(item)
                        write(item)
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    write("250 2.0.0 Ok")
                elif verb == "QUIT":
                    write("221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    write("500 5.5.2 Unknown command")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
def servers():
    made = []
    yield made
    for s in made:
        s.stop()


def lmtp_daemon(make_daemon, transport, **config):
    settings = {"local_transport": transport, "retry_min": "1s", "retry_max": "2s"}
    settings.update(config)
    return make_daemon(config=settings)


def stats(d):
    out = subprocess.run([str(rh.FACTEURCTL), "-c", str(d.conf_path), "stats"],
                         capture_output=True, timeout=30, check=True,
                         env=h.clean_env()).stdout.decode()
    return dict((name, float(value)) for name, value in
                (line.rsplit(" ", 1) for line in out.splitlines()))


def lmtp_counter(values, result):
    return values['facteur_transport_deliveries_total{transport="lmtp",result="%s"}'
                  % result]


def dsn_to_sender(server):
    """The DSNs the LMTP server took for SENDER, parsed."""
    return [email.message_from_bytes(tx.data) for tx in server.transactions
            if tx.mail_from == "" and tx.rcpts == [SENDER]]


def test_unix_socket_one_reply_per_recipient(make_daemon, tmp_path, servers):
    """Three recipients, three replies after the data: 2xx delivered, 4xx
    deferred and then delivered, 5xx bounced with a DSN quoting the
    server; each logged with relay=lmtp:unix:PATH and counted."""
    path = tmp_path / "lmtp.sock"
    tries = {}

    def after_data(tx):
        out = []
        for r in tx.rcpts:
            tries[r] = tries.get(r, 0) + 1
            if r == "full@localhost" and tries[r] == 1:
                out.append("452 4.2.2 <full@localhost> Mailbox is full")
            elif r == "gone@localhost":
                out.append("550 5.1.1 <gone@localhost> User doesn't exist: gone@localhost")
            else:
                out.append("250 2.0.0 <%s> Saved" % r)
        return out

    server = ScriptedLMTP(path=path, after_data=after_data).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path)
    relay = "lmtp:unix:%s" % path
    d.send(sender=SENDER, recipients=("user@localhost", "full@localhost", "gone@localhost"),
           subject="three")
    d.wait_event("delivered", rcpt="full@localhost", relay=relay)
    (ev,) = d.events("delivered", rcpt="user@localhost")
    assert ev["relay"] == relay and ev["dsn"] == "2.0.0", ev
    (ev,) = d.events("deferred", rcpt="full@localhost")
    assert ev["relay"] == relay and ev["dsn"] == "4.2.2", ev
    assert "Mailbox is full" in ev["reason"], ev
    (ev,) = d.events("bounced", rcpt="gone@localhost")
    assert ev["relay"] == relay and ev["dsn"] == "5.1.1", ev
    assert server.lhlo[0] == h.HOSTNAME
    first = server.transactions[0]
    assert first.mail_from == SENDER
    assert first.rcpts == ["user@localhost", "full@localhost", "gone@localhost"]
    assert b"Subject: three" in first.data
    assert first.data.startswith(b"Received: from ")
    # Each recipient delivered once, the bounced one never.
    h.wait_for(lambda: dsn_to_sender(server), what="the DSN through LMTP")
    assert [server.delivered(r) for r in ("user@localhost", "full@localhost",
                                          "gone@localhost")] == [1, 1, 0]
    (dsn,) = dsn_to_sender(server)
    fields = h.dsn_fields(dsn)
    assert fields[1]["Final-Recipient"] == "rfc822; gone@localhost"
    assert fields[1]["Action"] == "failed" and fields[1]["Status"] == "5.1.1"
    diagnostic = " ".join(fields[1]["Diagnostic-Code"].split())
    assert "550 5.1.1 <gone@localhost> User doesn't exist: gone@localhost" in diagnostic
    values = stats(d)
    assert lmtp_counter(values, "delivered") == 3  # two, and the DSN
    assert lmtp_counter(values, "deferred") == 1
    assert lmtp_counter(values, "bounced") == 1
    assert values['facteur_transport_deliveries_total{transport="local",result="delivered"}'] == 0
    assert not d.mail_root.exists() or not any(d.mail_root.rglob("new/*"))


def test_inet_connection_is_reused(make_daemon, servers):
    """lmtp:[127.0.0.1]:PORT: messages one after the other share one
    connection (LHLO once)."""
    port = h.free_port()
    server = ScriptedLMTP(host="127.0.0.1", port=port).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:[127.0.0.1]:%d" % port)
    for i in range(3):
        d.send(recipients=("user@localhost",), subject="m%d" % i)
        d.wait_event("delivered", rcpt="user@localhost")
        h.wait_for(lambda: len(d.events("delivered")) == i + 1, what="delivery %d" % i)
    relays = {ev["relay"] for ev in d.events("delivered")}
    assert relays == {"lmtp:[127.0.0.1]:%d" % port}
    assert server.sessions == 1 and len(server.lhlo) == 1
    assert server.delivered("user@localhost") == 3


def test_ipv6_literal(make_daemon, servers):
    if not h.has_ipv6_loopback():
        pytest.skip("no ::1")
    port = h.free_port("::1")
    server = ScriptedLMTP(host="::1", port=port).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:[::1]:%d" % port)
    d.send(recipients=("user@localhost",))
    (ev,) = d.wait_event("delivered", rcpt="user@localhost")
    assert ev["relay"] == "lmtp:[::1]:%d" % port


def replies_then(count, then):
    """The first transaction gets `count` 250 replies then `then` (CLOSE,
    HANG or a garbage line); later ones the full answer."""
    state = {"first": True}

    def after_data(tx):
        if state.pop("first", False):
            return ["250 2.0.0 <%s> Saved" % r for r in tx.rcpts[:count]] + [then]
        return ["250 2.0.0 <%s> Saved" % r for r in tx.rcpts]
    return after_data


RCPTS = ("a@localhost", "b@localhost", "c@localhost")


@pytest.mark.parametrize("then, reason", [
    (CLOSE, "lost connection"),
    ("this is no reply", "malformed reply"),
    ("354 more?", "unexpected reply"),
    (HANG, "timeout"),
], ids=["close", "garbage", "wrong-code", "silence"])
def test_fewer_replies_defer_the_rest_once(make_daemon, tmp_path, servers, then, reason):
    """The server answers the first recipient only, then closes, sends
    garbage or goes silent: the first is delivered, the other two deferred
    and delivered by the next attempt; nobody twice, nobody lost."""
    path = tmp_path / "lmtp.sock"
    server = ScriptedLMTP(path=path, after_data=replies_then(1, then)).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path, smtp_timeout="2s")
    d.send(recipients=RCPTS)
    for r in RCPTS[1:]:
        (ev,) = d.wait_event("deferred", rcpt=r)
        assert ev["dsn"].startswith("4."), ev
        assert reason in ev["reason"], ev
    for r in RCPTS:
        d.wait_event("delivered", rcpt=r)
    assert len(d.events("delivered", rcpt="a@localhost")) == 1
    assert not d.events("deferred", rcpt="a@localhost")
    time.sleep(1.5)  # a second delivery would come with the next retry
    assert [server.delivered(r) for r in RCPTS] == [1, 1, 1]
    assert not d.events("bounced")


def test_close_before_any_reply_defers_all(make_daemon, tmp_path, servers):
    path = tmp_path / "lmtp.sock"
    server = ScriptedLMTP(path=path, after_data=replies_then(0, CLOSE)).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path)
    d.send(recipients=RCPTS)
    for r in RCPTS:
        d.wait_event("deferred", rcpt=r)
    for r in RCPTS:
        d.wait_event("delivered", rcpt=r)
    assert [server.delivered(r) for r in RCPTS] == [1, 1, 1]


def test_rcpt_refusals_are_per_recipient(make_daemon, tmp_path, servers):
    """A 4xx or 5xx to RCPT decides that recipient alone; the others get
    their reply after the data."""
    path = tmp_path / "lmtp.sock"
    server = ScriptedLMTP(path=path, rcpt=lambda a: (
        "550 5.1.1 <%s> User doesn't exist" % a if a.startswith("b@") else "250 2.1.5 Ok")
    ).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path)
    d.send(recipients=RCPTS)
    d.wait_event("bounced", rcpt="b@localhost")
    d.wait_event("delivered", rcpt="a@localhost")
    d.wait_event("delivered", rcpt="c@localhost")
    assert server.transactions[0].rcpts == ["a@localhost", "c@localhost"]


def test_server_down_then_up(make_daemon, tmp_path, servers):
    """No server on the socket: deferred (4.4.1) and retried with the usual
    backoff; delivered once it listens."""
    path = tmp_path / "lmtp.sock"
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path)
    d.send(recipients=("user@localhost",))
    (ev,) = d.wait_event("deferred", rcpt="user@localhost")
    assert ev["relay"] == "lmtp:unix:%s" % path and ev["dsn"] == "4.4.1", ev
    assert "No such file or directory" in ev["reason"], ev
    server = ScriptedLMTP(path=path).start()
    servers.append(server)
    d.wait_event("delivered", rcpt="user@localhost")
    assert server.delivered("user@localhost") == 1


def test_notify_success_and_remote_recipients_unchanged(make_daemon, tmp_path, servers):
    """NOTIFY=SUCCESS gets a "delivered" DSN as for local delivery."""
    path = tmp_path / "lmtp.sock"
    server = ScriptedLMTP(path=path).start()
    servers.append(server)
    d = lmtp_daemon(make_daemon, "lmtp:unix:%s" % path)
    h.send_envelope(d, SENDER, ["user@localhost"], rcpt_params=" NOTIFY=SUCCESS")
    h.wait_for(lambda: dsn_to_sender(server), what="the success DSN")
    (dsn,) = dsn_to_sender(server)
    fields = h.dsn_fields(dsn)
    assert fields[1]["Action"] == "delivered", fields
    assert fields[1]["Final-Recipient"] == "rfc822; user@localhost"


@pytest.mark.parametrize("value, message", [
    ("lmtp:unix:private/dovecot-lmtp", "the socket path must be absolute"),
    ("lmtp:127.0.0.1:24", "expected lmtp:unix:PATH or lmtp:[HOST]:PORT"),
    ("lmtp:[127.0.0.1]:0", "bad host or port"),
    ("smtp:[::1]:24", "expected lmtp:unix:PATH"),
])
def test_bad_local_transport_exits_78(tmp_path, value, message):
    conf = tmp_path / "facteur.conf"
    conf.write_text("spool_dir = %s\nlocal_transport = %s\n" % (tmp_path / "spool", value))
    for args in (["-n", "-c", str(conf)], ["-c", str(conf)]):
        r = h.run_facteurd(args)
        err = r.stderr.decode()
        assert r.returncode == h.EX_CONFIG, (args, err)
        assert "%s:2: local_transport: %s" % (conf, message) in err, err
    r = h.run_facteurd(["-n"], env={"FACTEUR_LOCAL_TRANSPORT": value,
                                    "FACTEUR_SPOOL_DIR": str(tmp_path / "spool")})
    assert r.returncode == h.EX_CONFIG and b"FACTEUR_LOCAL_TRANSPORT" in r.stderr


# ---------------------------------------------------------------------------
# A real Dovecot, configured as docs/operations.md shows (dovecot_harness).

POSTMASTER = "postmaster@example.com"
SMALL = "small@example.com"  # a 1 KiB quota of its own

def needs_dovecot(test):
    test = pytest.mark.skipif(os.geteuid() != 0,
                              reason="needs root (creates an account)")(test)
    return pytest.mark.skipif(not dh.available(),
                              reason="dovecot-imapd/lmtpd not installed")(test)


def dovecot(base, account, dovecots, start=True, extra=""):
    mail_root = base / "mail"
    mail_root.mkdir()
    os.chown(mail_root, account[0], account[1])
    mail_root.chmod(0o770)
    dc = dh.Dovecot(base, "dovecot-lmtp", mail_root,
                    ["user@example.com", POSTMASTER,
                     (SMALL, "userdb_quota_rule=*:storage=1K")], start=start,
                    extra=extra)
    dovecots.append(dc)
    return dc


def facteur_for(make_daemon, dc, transport=None, **config):
    """facteurd with the documentation's facteur.conf block, Dovecot's
    socket in place of /run/dovecot/lmtp."""
    settings = dh.facteur_settings(
        "facteur-lmtp", replace=[("/run/dovecot/lmtp", str(dc.lmtp_socket))])
    if transport is not None:
        settings["local_transport"] = transport
    settings.update(retry_min="1s", retry_max="2s")
    settings.update(config)
    return make_daemon(config=settings)


def imap_messages(dc, user):
    m = dc.login(user)
    assert m.select("INBOX")[0] == "OK", dc.log()
    out = []
    for num in dh.imap_search(m):
        typ, data = m.fetch(num, "(RFC822)")
        assert typ == "OK", data
        out.append(data[0][1])
    m.logout()
    return out


def wait_imap(dc, user, count):
    return h.wait_for(lambda: (lambda m: m if len(m) >= count else None)(
        imap_messages(dc, user)), what="%d message(s) over IMAP for %s\n%s"
        % (count, user, dc.log()))


def first_headers(raw):
    """The names of the header fields, in order."""
    return [line.split(b":", 1)[0] for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line and not line[:1].isspace()]


@needs_dovecot
@pytest.mark.parametrize("over", ["unix", "inet"])
def test_dovecot_lmtp_then_imap(make_daemon, base, account, dovecots, over):
    """facteur → Dovecot LMTP (its UNIX socket, or its TCP listener), then
    the message read over IMAP with Dovecot's and facteur's headers."""
    dc = dovecot(base, account, dovecots)
    transport = ("lmtp:unix:%s" % dc.lmtp_socket if over == "unix"
                 else "lmtp:[127.0.0.1]:%d" % dc.lmtp_port)
    d = facteur_for(make_daemon, dc, None if over == "unix" else transport)
    assert d.settings["local_transport"] == transport
    for i in range(2):
        d.send(sender=POSTMASTER, recipients=("user@example.com",),
               subject="over %s %d" % (over, i))
    msgs = wait_imap(dc, "user@example.com", 2)
    evs = d.events("delivered", rcpt="user@example.com")
    assert [ev["relay"] for ev in evs] == [transport] * 2, evs
    # two connections may deliver them in either order
    by_subject = {email.message_from_bytes(m)["Subject"]: m for m in msgs}
    assert sorted(by_subject) == ["over %s 0" % over, "over %s 1" % over]
    raw = by_subject["over %s 0" % over]
    assert first_headers(raw)[:3] == [b"Return-Path", b"Delivered-To", b"Received"], raw[:400]
    msg = email.message_from_bytes(raw)
    assert msg["Return-Path"] == "<%s>" % POSTMASTER
    assert msg["Delivered-To"] == "user@example.com"
    received = [r for r in msg.get_all("Received") if "(facteur)" in r]
    assert received and h.HOSTNAME in received[0], msg.get_all("Received")
    assert b"hello" in raw
    # Dovecot wrote the mailbox as its mail_uid; facteur wrote nothing.
    folder = base / "mail" / "example.com" / "user"
    assert folder.stat().st_uid == account[0]
    assert not d.mail_root.exists()
    values = stats(d)
    assert lmtp_counter(values, "delivered") == 2


@needs_dovecot
def test_dovecot_refusals_bounce_with_its_reply(make_daemon, base, account, dovecots):
    """A recipient Dovecot's userdb lacks (550 5.1.1) and one over its
    quota (552 5.2.2) are bounced; the sender's DSN, itself delivered by
    LMTP and read over IMAP, quotes Dovecot's reply."""
    dc = dovecot(base, account, dovecots)
    d = facteur_for(make_daemon, dc)
    d.send(sender=POSTMASTER, recipients=("user@example.com", "nobody@example.com"),
           subject="to two")
    (ev,) = d.wait_event("bounced", rcpt="nobody@example.com")
    assert ev["dsn"] == "5.1.1" and "doesn't exist" in ev["reason"], ev
    d.wait_event("delivered", rcpt="user@example.com")
    d.send(sender=POSTMASTER, recipients=(SMALL,), subject="too big",
           body=("y" * 70 + "\r\n") * 40)  # 2.8 KiB
    (ev,) = d.wait_event("bounced", rcpt=SMALL)
    assert ev["dsn"] == "5.2.2" and "Quota exceeded" in ev["reason"], ev
    dsns = [email.message_from_bytes(m) for m in wait_imap(dc, POSTMASTER, 2)]
    diagnostics = {}
    for dsn in dsns:
        for f in h.dsn_fields(dsn)[1:]:
            diagnostics[f["Final-Recipient"]] = (f["Action"], f["Status"],
                                                 " ".join(f["Diagnostic-Code"].split()))
    assert diagnostics["rfc822; nobody@example.com"][:2] == ("failed", "5.1.1")
    assert "User doesn't exist" in diagnostics["rfc822; nobody@example.com"][2]
    assert diagnostics["rfc822; %s" % SMALL][:2] == ("failed", "5.2.2")
    assert "Quota exceeded" in diagnostics["rfc822; %s" % SMALL][2]
    assert len(imap_messages(dc, "user@example.com")) == 1
    assert lmtp_counter(stats(d), "bounced") == 2


@needs_dovecot
def test_dovecot_down_then_up(make_daemon, base, account, dovecots):
    """Dovecot not running: deferred; delivered once it starts."""
    dc = dovecot(base, account, dovecots, start=False)
    d = facteur_for(make_daemon, dc)
    d.send(sender=POSTMASTER, recipients=("user@example.com",), subject="waited")
    (ev,) = d.wait_event("deferred", rcpt="user@example.com")
    assert ev["dsn"] == "4.4.1" and ev["relay"] == "lmtp:unix:%s" % dc.lmtp_socket, ev
    dc.start()
    d.wait_event("delivered", rcpt="user@example.com")
    (raw,) = wait_imap(dc, "user@example.com", 1)
    assert b"Subject: waited" in raw
    assert len(d.events("delivered", rcpt="user@example.com")) == 1


@needs_dovecot
def test_dovecot_quota_tempfail_defers_then_expires(make_daemon, base, account, dovecots):
    """With quota_full_tempfail = yes Dovecot says 452 4.2.2: deferred and
    retried; at the end of queue_lifetime the DSN reports that 4.2.2."""
    dc = dovecot(base, account, dovecots, extra="quota_full_tempfail = yes\n")
    d = facteur_for(make_daemon, dc, queue_lifetime="5s")
    d.send(sender=POSTMASTER, recipients=(SMALL,), subject="too big",
           body=("y" * 70 + "\r\n") * 40)
    # the first deferral; a loaded machine may log the retry before we look
    ev = d.wait_event("deferred", rcpt=SMALL)[0]
    assert ev["dsn"] == "4.2.2" and "Quota exceeded" in ev["reason"], ev
    d.wait_event("expired", rcpt=SMALL)
    assert len(d.events("deferred", rcpt=SMALL)) >= 2  # retried meanwhile
    (dsn,) = [email.message_from_bytes(m) for m in wait_imap(dc, POSTMASTER, 1)]
    f = h.dsn_fields(dsn)[1]
    assert (f["Final-Recipient"], f["Action"], f["Status"]) == (
        "rfc822; %s" % SMALL, "failed", "4.2.2"), f
    assert not d.events("delivered", rcpt=SMALL)
