"""POP3 (SPEC §6, §8): mail delivered over SMTP, read back with poplib, raw
POP3 lines, curl (pop3://, pop3s://, STLS) and fetchmail."""

import base64
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import time

import pytest

import facteur_harness as h

USER = "user@localhost"
PASSWORD = "secret"
OTHER = "other@localhost"
OTHER_PASSWORD = "an0ther pass"  # with a space: PASS takes the rest of the line


def facteurctl_hash(password):
    """A hash made the way an operator makes one (SPEC §2)."""
    r = subprocess.run([str(h.BUILD_DIR / "facteurctl"), "passwd"],
                       input=(password + "\n").encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    value = r.stdout.decode().strip()
    assert value.startswith("$6$"), value
    return value


@pytest.fixture(scope="module")
def users_text():
    return "%s:%s\n%s:%s\n" % (USER, h.SECRET_HASH, OTHER, facteurctl_hash(OTHER_PASSWORD))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost: (cert, key) paths."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    return cert, key


def insecure_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Pop3Daemon:
    """A facteurd with a POP3 listener, and helpers to talk to it."""

    def __init__(self, daemon, pop3_port, pop3s_port=None):
        self.d = daemon
        self.port = pop3_port
        self.pop3s_port = pop3s_port

    def login(self, user=USER, password=PASSWORD):
        p = poplib.POP3(self.d.host, self.port, timeout=h.IO_TIMEOUT)
        p.user(user)
        p.pass_(password)
        return p

    def raw(self):
        return Pop3Raw(self.d.host, self.port)

    def deliver(self, subject, body="hello\r\n", rcpt=USER):
        """Send one message over SMTP and wait until it is in the Maildir."""
        before = len(self.d.maildir_files(rcpt))
        self.d.send(recipients=(rcpt,), subject=subject, body=body)
        self.d.wait_messages(rcpt, before + 1)

    def files(self, address=USER):
        """{file name: bytes} for new/ and cur/."""
        return {p.name: p.read_bytes() for p in self.d.maildir_files(address)}


@pytest.fixture
def make_pop3(make_daemon, tmp_path, users_text, certificate):
    def factory(tls=False, pop3s=False, users=True, config=None, env=None):
        port = h.free_port()
        listen = ["127.0.0.1:%d" % port]
        pop3s_port = None
        if pop3s:
            pop3s_port = h.free_port()
            listen.append("127.0.0.1:%d/pop3s" % pop3s_port)
        settings = {"pop3_listen": listen}
        if users:
            uf = tmp_path / "users"
            uf.write_text(users_text)
            settings["users_file"] = str(uf)
        if tls or pop3s:
            settings["tls_cert"] = str(certificate[0])
            settings["tls_key"] = str(certificate[1])
        settings.update(config or {})
        d = make_daemon(config=settings, env=env)
        pd = Pop3Daemon(d, port, pop3s_port)
        wait_pop3_ready(d.host, port)
        return pd
    return factory


@pytest.fixture
def pop3(make_pop3):
    return make_pop3()


def wait_pop3_ready(host, port):
    def ready():
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                return s.recv(100).startswith(b"+OK")
        except OSError:
            return False
    h.wait_for(ready, timeout=h.START_TIMEOUT, what="POP3 listener on %d" % port)


class Pop3Raw:
    """One POP3 connection driven line by line."""

    def __init__(self, host, port, timeout=h.IO_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise h.ConnectionClosed("closed; unread %r" % self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.line()

    def multi_raw(self):
        """The raw octets of a multi-line body up to and including the
        terminating ".\\r\\n" (dot-stuffed, as on the wire)."""
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                end = i + 5
                break
            data = self.sock.recv(65536)
            if not data:
                raise h.ConnectionClosed("closed; unread %r" % self.buf)
            self.buf += data
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def login(self, user=USER, password=PASSWORD):
        assert self.cmd("USER " + user).startswith(b"+OK")
        r = self.cmd("PASS " + password)
        assert r.startswith(b"+OK"), r
        return r

    def wait_closed(self, timeout=h.IO_TIMEOUT):
        self.sock.settimeout(timeout)
        data = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def crlf(data):
    """Maildir form (LF) to the CRLF form POP3 sends."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire(data):
    """The multi-line wire form of a message: CRLF, stuffed, ended."""
    data = crlf(data)
    lines = data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n")
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines) + b".\r\n"


def by_mtime(files):
    """The mailbox's files in the order the server numbers them."""
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


# ---------------------------------------------------------------------------
# greeting, CAPA, errors


def test_greeting_and_capabilities(make_pop3):
    p = make_pop3(tls=True)
    with p.raw() as c:
        assert c.greeting == b"+OK facteur POP3 server ready"
        assert c.cmd("CAPA").startswith(b"+OK")
        caps = c.multi_raw().split(b"\r\n")[:-2]
        for cap in (b"USER", b"UIDL", b"TOP", b"PIPELINING", b"RESP-CODES",
                    b"AUTH-RESP-CODE", b"SASL PLAIN", b"STLS", b"IMPLEMENTATION facteur"):
            assert cap in caps, caps
        assert c.cmd("QUIT").startswith(b"+OK")


def test_stls_is_not_offered_without_certificates(pop3):
    with pop3.raw() as c:
        c.cmd("CAPA")
        caps = c.multi_raw().split(b"\r\n")
        assert b"STLS" not in caps
        assert c.cmd("STLS").startswith(b"-ERR")


def test_unknown_command_and_commands_out_of_state(pop3):
    with pop3.raw() as c:
        assert c.cmd("XYZZY") == b"-ERR unknown command"
        assert c.cmd("STAT").startswith(b"-ERR")
        assert c.cmd("RETR 1").startswith(b"-ERR")
        assert c.cmd("PASS secret").startswith(b"-ERR")  # no USER yet
        assert c.cmd("USER " + "a" * 300).startswith(b"-ERR")  # line too long
        assert c.cmd("NOOP").startswith(b"-ERR")  # TRANSACTION only
        c.login()
        assert c.cmd("USER x").startswith(b"-ERR")
        assert c.cmd("RETR x").startswith(b"-ERR")
        assert c.cmd("RETR 1").startswith(b"-ERR")  # empty mailbox
        assert c.cmd("NOOP") == b"+OK"
        assert c.cmd("quit").startswith(b"+OK")
    pop3.d.assert_alive()


def test_commands_are_case_insensitive_and_pipelined(pop3):
    pop3.deliver("pipelined")
    with pop3.raw() as c:
        c.send("user %s\r\npass %s\r\nstat\r\nlist 1\r\nuidl 1\r\nnoop\r\n" % (USER, PASSWORD))
        replies = [c.line() for _ in range(6)]
        assert all(r.startswith(b"+OK") for r in replies), replies
        assert replies[2].split()[1] == b"1"
        c.send("RETR 1\r\nNOOP\r\n")
        assert c.line().startswith(b"+OK")
        c.multi_raw()
        assert c.line() == b"+OK"


# ---------------------------------------------------------------------------
# the mailbox


def test_stat_list_and_retr_match_the_delivered_files(pop3):
    pop3.deliver("first", body="line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n")
    pop3.deliver("second", body="x" * 990 + "\r\n" + "short\r\n")
    pop3.d.wait_messages(USER, 2)
    m = pop3.login()
    count, size = m.stat()
    files = by_mtime(pop3.d.maildir_files(USER))
    contents = [f.read_bytes() for f in files]
    assert count == 2
    # SPEC §8: CRLF line ends, without the stuffing dots
    assert size == sum(len(crlf(c)) for c in contents)
    listing = m.list()[1]
    assert listing == [b"%d %d" % (i + 1, len(crlf(c))) for i, c in enumerate(contents)]
    for i, c in enumerate(contents):
        resp, lines, octets = m.retr(i + 1)
        assert resp.startswith(b"+OK")
        assert b"\r\n".join(lines) + b"\r\n" == crlf(c)
    m.quit()


def test_retr_is_the_delivered_file_byte_for_byte_with_stuffing(pop3):
    body = ".\r\n.dot\r\nFrom here\r\n\r\n..\r\nlast\r\n"
    pop3.deliver("stuffing", body=body)
    (content,) = pop3.d.wait_messages(USER, 1)
    assert b"\n.dot\n" in content  # the Maildir file holds it unstuffed, LF
    with pop3.raw() as c:
        c.login()
        first = c.cmd("RETR 1")
        assert first == b"+OK %d octets" % len(crlf(content))
        got = c.multi_raw()
        assert got == wire(content)
        assert c.cmd("QUIT").startswith(b"+OK")


def test_large_message_is_streamed_whole(pop3):
    body = "".join("%06d %s\r\n" % (i, "y" * 70) for i in range(40000))  # ~3 MB
    pop3.deliver("large", body=body)
    (content,) = pop3.d.wait_messages(USER, 1)
    m = pop3.login()
    resp, lines, octets = m.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == crlf(content)
    m.quit()


def test_retr_of_a_huge_message_keeps_memory_bounded(make_pop3):
    """A 64 MB file read by a slow client: the daemon's memory does not
    grow with the message, and other sessions go on meanwhile."""
    p = make_pop3(env=h.small_quarantine_env())
    box = p.d.maildir(USER)
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    line = b"." + b"q" * 78 + b"\n"  # every line needs stuffing
    count = (64 << 20) // len(line)
    name = "1700000000.huge.test"
    with open(box / "new" / name, "wb") as f:
        f.write(b"Subject: huge\n\n")
        chunk = line * 4096
        for _ in range(count // 4096):
            f.write(chunk)
    size = (box / "new" / name).stat().st_size
    lf = 2 + (count // 4096) * 4096
    wire_size = size + lf  # every LF becomes CRLF

    with Pop3Raw(p.d.host, p.port) as c:
        c.login()
        assert c.cmd("LIST 1") == b"+OK 1 %d" % wire_size
        rss_before = p.d.rss_kb()
        c.send("RETR 1\r\n")
        got = 0
        c.sock.settimeout(h.IO_TIMEOUT)
        while got < (2 << 20):
            got += len(c.sock.recv(65536))
        time.sleep(1.0)  # the server has all the room it wants to grow
        rss_during = p.d.rss_kb()
        # another account is served while this RETR is in progress
        other = p.login(OTHER, OTHER_PASSWORD)
        assert other.stat() == (0, 0)
        other.quit()
        # read the rest: the whole message, stuffed, then the end
        tail = b""
        total = got + len(c.buf)
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = c.sock.recv(1 << 20)
            assert chunk, "connection closed before the end"
            total += len(chunk)
            tail = (tail + chunk)[-16:]
        assert rss_during - rss_before < 24 * 1024, (rss_before, rss_during)
        # +OK line, the octets (with one stuffing dot per body line), end
        first_line = len(b"+OK %d octets\r\n" % wire_size)
        assert total == first_line + wire_size + (lf - 2) + 3
        assert c.cmd("QUIT").startswith(b"+OK")


def test_messages_move_from_new_to_cur_once_seen(pop3):
    pop3.deliver("moved")
    pop3.d.wait_messages(USER, 1)
    box = pop3.d.maildir(USER)
    (name,) = os.listdir(box / "new")
    m = pop3.login()
    assert os.listdir(box / "new") == []
    assert os.listdir(box / "cur") == [name + ":2,"]
    m.quit()
    assert os.listdir(box / "cur") == [name + ":2,"]


def test_uidl_is_stable_across_sessions_and_a_restart(pop3):
    pop3.deliver("one")
    pop3.deliver("two")
    pop3.d.wait_messages(USER, 2)
    m = pop3.login()
    first = m.uidl()[1]
    assert len(first) == 2
    assert m.uidl(2).split() == [b"+OK"] + first[1].split()
    m.quit()
    uids = [l.split()[1] for l in first]
    assert len(set(uids)) == 2
    for uid in uids:
        assert 1 <= len(uid) <= 70 and all(0x21 <= b <= 0x7e for b in uid)
    # the file name's unique part, before ":2,"
    names = sorted(p.name.split(":")[0].encode() for p in pop3.d.maildir_files(USER))
    assert sorted(uids) == names

    m = pop3.login()
    assert m.uidl()[1] == first
    m.quit()

    pop3.d.restart()
    wait_pop3_ready(pop3.d.host, pop3.port)
    pop3.deliver("three")
    pop3.d.wait_messages(USER, 3)
    m = pop3.login()
    after = [l.split()[1] for l in m.uidl()[1]]
    m.quit()
    assert after[:2] == uids
    assert len(after) == 3 and after[2] not in uids


def test_top_gives_headers_and_the_first_body_lines(pop3):
    pop3.deliver("top", body="b1\r\n.b2\r\nb3\r\nb4\r\n")
    (content,) = pop3.d.wait_messages(USER, 1)
    head, _, _ = crlf(content).partition(b"\r\n\r\n")
    m = pop3.login()
    resp, lines, _ = m.top(1, 0)
    assert resp.startswith(b"+OK")
    assert b"\r\n".join(lines) == head + b"\r\n"
    resp, lines, _ = m.top(1, 2)
    assert b"\r\n".join(lines) == head + b"\r\n\r\nb1\r\n.b2"
    resp, lines, _ = m.top(1, 100)
    assert b"\r\n".join(lines) + b"\r\n" == crlf(content)
    m.quit()


def test_dele_then_quit_deletes(pop3):
    for s in ("keep", "delete me", "keep too"):
        pop3.deliver(s)
    pop3.d.wait_messages(USER, 3)
    m = pop3.login()
    subjects = [dict(h.header_block(b"\r\n".join(m.top(i, 0)[1])))[b"Subject"] for i in (1, 2, 3)]
    victim = subjects.index(b"delete me") + 1
    assert m.dele(victim).startswith(b"+OK")
    # a deleted message is gone from this session's view at once
    assert m.stat()[0] == 2
    with pytest.raises(poplib.error_proto):
        m.retr(victim)
    with pytest.raises(poplib.error_proto):
        m.dele(victim)
    # ...but still on disk until QUIT
    assert len(pop3.d.maildir_files(USER)) == 3
    assert m.quit().startswith(b"+OK")
    left = pop3.d.maildir_messages(USER)
    assert len(left) == 2
    assert not any(b"Subject: delete me" in c for c in left)
    m = pop3.login()
    assert m.stat()[0] == 2
    m.quit()
    ev = pop3.d.wait_event("pop3_logout", user=USER, deleted=1)
    assert ev


def test_dele_then_dropped_connection_deletes_nothing(pop3):
    pop3.deliver("survivor")
    pop3.d.wait_messages(USER, 1)
    with pop3.raw() as c:
        c.login()
        assert c.cmd("DELE 1").startswith(b"+OK")
    pop3.d.wait_event("pop3_disconnect", user=USER)
    assert len(pop3.d.maildir_files(USER)) == 1
    m = pop3.login()
    assert m.stat()[0] == 1
    m.quit()


def test_rset_undeletes(pop3):
    pop3.deliver("a")
    pop3.deliver("b")
    pop3.d.wait_messages(USER, 2)
    m = pop3.login()
    m.dele(1)
    m.dele(2)
    assert m.stat()[0] == 0
    assert m.rset().startswith(b"+OK")
    assert m.stat()[0] == 2
    m.quit()
    assert len(pop3.d.maildir_files(USER)) == 2


def test_second_session_on_a_mailbox_gets_in_use(pop3):
    first = pop3.login()
    with pop3.raw() as c:
        assert c.cmd("USER " + USER.upper()).startswith(b"+OK")
        r = c.cmd("PASS " + PASSWORD)
        assert r.startswith(b"-ERR [IN-USE]"), r
        # another account is not locked out
        c2 = pop3.login(OTHER, OTHER_PASSWORD)
        c2.quit()
        first.quit()
        # the session stays in AUTHORIZATION and may try again
        c.login()
        assert c.cmd("QUIT").startswith(b"+OK")


def test_wrong_password_is_slowed_and_refused(pop3):
    with pop3.raw() as c:
        t0 = time.monotonic()
        assert c.cmd("USER " + USER).startswith(b"+OK")
        r = c.cmd("PASS wrong")
        assert r.startswith(b"-ERR [AUTH]"), r
        assert time.monotonic() - t0 >= 0.9
        # an unknown user gets the same answer
        c.cmd("USER nobody@localhost")
        assert c.cmd("PASS wrong").startswith(b"-ERR [AUTH]")
        c.cmd("USER " + USER)
        t0 = time.monotonic()
        r = c.cmd("PASS wrong again")
        assert r.startswith(b"-ERR [AUTH]")
        assert time.monotonic() - t0 >= 2.5  # the delay grows
        c.wait_closed(timeout=10)  # the third failure closes
    assert pop3.d.events("pop3_login", user=USER, result="failed")
    pop3.d.assert_alive()


def test_auth_plain_with_and_without_initial_response(pop3):
    token = base64.b64encode(("\0%s\0%s" % (USER, PASSWORD)).encode()).decode()
    with pop3.raw() as c:
        r = c.cmd("AUTH PLAIN " + token)
        assert r.startswith(b"+OK"), r
        assert c.cmd("QUIT").startswith(b"+OK")
    with pop3.raw() as c:
        assert c.cmd("AUTH PLAIN") == b"+ "
        assert c.cmd(token).startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")
    with pop3.raw() as c:
        assert c.cmd("AUTH PLAIN") == b"+ "
        assert c.cmd("*").startswith(b"-ERR")
        assert c.cmd("AUTH CRAM-MD5").startswith(b"-ERR")


def test_password_with_spaces(pop3):
    m = pop3.login(OTHER, OTHER_PASSWORD)
    assert m.stat() == (0, 0)
    m.quit()


def test_without_users_file_nobody_logs_in(make_pop3):
    p = make_pop3(users=False)
    with p.raw() as c:
        r = c.cmd("USER " + USER)
        if r.startswith(b"+OK"):
            r = c.cmd("PASS " + PASSWORD)
        assert r.startswith(b"-ERR [AUTH]"), r


def test_mbox_mailboxes_are_not_served(make_pop3, tmp_path):
    p = make_pop3(config={"mailbox_format": "mbox",
                          "mailbox_path": str(tmp_path / "mbox" / "%u")})
    with p.raw() as c:
        c.cmd("USER " + USER)
        assert c.cmd("PASS " + PASSWORD).startswith(b"-ERR [SYS/PERM]")


def test_login_events_are_logged(pop3):
    m = pop3.login()
    m.quit()
    pop3.d.wait_event("pop3_connect")
    pop3.d.wait_event("pop3_login", user=USER, result="ok")
    pop3.d.wait_event("pop3_logout", user=USER, retrieved=0, deleted=0)
    pop3.d.wait_event("pop3_disconnect", user=USER)


def test_sigterm_ends_pop3_sessions_without_deleting(pop3):
    pop3.deliver("kept")
    pop3.d.wait_messages(USER, 1)
    with pop3.raw() as c:
        c.login()
        assert c.cmd("DELE 1").startswith(b"+OK")
        pop3.d.stop_ok()
        rest = c.wait_closed(timeout=15)
        assert rest == b"" or rest.startswith(b"-ERR")
    assert len(pop3.d.maildir_files(USER)) == 1


def test_junk_and_abrupt_clients_do_not_disturb_the_server(make_pop3):
    import random
    p = make_pop3(tls=True)
    p.deliver("big", body="".join("line %d %s\r\n" % (i, "w" * 60) for i in range(20000)))
    rnd = random.Random(1939)
    # a line without end, far over the limit: refused once, then skipped
    with p.raw() as c:
        c.send(b"USER " + b"x" * 100000)
        assert c.line().startswith(b"-ERR")
        c.send(b"\r\n")
        assert c.cmd("NOOP").startswith(b"-ERR")  # still AUTHORIZATION, still talking
        # AUTH lines may be longer than commands (up to 12288 octets)
        assert c.cmd("AUTH PLAIN " + "A" * 4000).startswith(b"-ERR")
    # random octets, then the connection dropped
    for _ in range(20):
        with p.raw() as c:
            c.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000))))
    # too many errors end the session
    with p.raw() as c:
        c.send("BOGUS\r\n" * 30)
        data = c.wait_closed(timeout=10)
        assert data.count(b"-ERR") >= 20
    # a client that leaves in the middle of a RETR
    for i in range(3):
        c = p.raw()
        c.login()
        c.send("RETR 1\r\n")
        c.sock.recv(1000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        # the lock goes with the session
        h.wait_for(lambda: len(p.d.events("pop3_disconnect", user=USER)) > i,
                   what="the session's end")
    # STLS, then something that is not TLS
    with p.raw() as c:
        assert c.cmd("STLS").startswith(b"+OK")
        c.send(b"USER " + USER.encode() + b"\r\n")
        c.wait_closed(timeout=30)
    p.d.assert_alive()
    m = p.login()
    assert m.stat()[0] == 1
    m.quit()


# ---------------------------------------------------------------------------
# TLS


def test_stls_with_poplib(make_pop3):
    p = make_pop3(tls=True)
    p.deliver("over tls")
    (content,) = p.d.wait_messages(USER, 1)
    m = poplib.POP3(p.d.host, p.port, timeout=h.IO_TIMEOUT)
    assert m.stls(context=insecure_context()).startswith(b"+OK")
    m.user(USER)
    m.pass_(PASSWORD)
    resp, lines, _ = m.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == crlf(content)
    caps = m.capa()
    assert "STLS" not in caps  # already encrypted
    m.quit()
    p.d.wait_event("pop3_tls")


def test_stls_discards_commands_pipelined_in_clear(make_pop3):
    """RFC 2595 §4: what came in the clear after STLS is not read as if it
    had come over TLS (here a QUIT that would end the session)."""
    p = make_pop3(tls=True)
    with p.raw() as c:
        c.send("STLS\r\nQUIT\r\n")
        assert c.line().startswith(b"+OK")
        assert c.buf == b""
        tls = insecure_context().wrap_socket(c.sock, server_hostname="localhost")
        tls.sendall(("USER %s\r\nPASS %s\r\nSTAT\r\n" % (USER, PASSWORD)).encode())
        data = b""
        while data.count(b"\r\n") < 3:
            chunk = tls.recv(4096)
            assert chunk, data
            data += chunk
        lines = data.split(b"\r\n")
        assert lines[0].startswith(b"+OK") and lines[1].startswith(b"+OK"), lines
        assert lines[2] == b"+OK 0 0"
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(4096).startswith(b"+OK")
        tls.close()


def test_pop3s_with_poplib(make_pop3):
    p = make_pop3(pop3s=True)
    p.deliver("implicit tls")
    (content,) = p.d.wait_messages(USER, 1)
    m = poplib.POP3_SSL(p.d.host, p.pop3s_port, context=insecure_context(),
                        timeout=h.IO_TIMEOUT)
    assert m.getwelcome() == b"+OK facteur POP3 server ready"
    m.user(USER)
    m.pass_(PASSWORD)
    assert m.stat()[0] == 1
    resp, lines, _ = m.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == crlf(content)
    assert m.quit().startswith(b"+OK")


CURL = shutil.which("curl")


def curl(*args):
    r = subprocess.run([CURL, "-sS", "--max-time", "60"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_lists_and_retrieves(pop3):
    pop3.deliver("for curl", body="curl body\r\n.dotted\r\n")
    (content,) = pop3.d.wait_messages(USER, 1)
    base = "pop3://127.0.0.1:%d/" % pop3.port
    auth = ["--user", "%s:%s" % (USER, PASSWORD)]
    listing = curl(*auth, base)
    assert listing == b"1 %d\r\n" % len(crlf(content))
    got = curl(*auth, base + "1")
    assert got == crlf(content)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_pop3s_and_stls(make_pop3):
    p = make_pop3(pop3s=True)
    p.deliver("curl tls")
    (content,) = p.d.wait_messages(USER, 1)
    auth = ["--user", "%s:%s" % (USER, PASSWORD), "--insecure"]
    got = curl(*auth, "pop3s://127.0.0.1:%d/1" % p.pop3s_port)
    assert got == crlf(content)
    got = curl(*auth, "--ssl-reqd", "pop3://127.0.0.1:%d/1" % p.port)
    assert got == crlf(content)
    assert len(p.d.events("pop3_tls")) >= 2


FETCHMAIL = shutil.which("fetchmail")


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail is not installed (apt-get install fetchmail)")
@pytest.mark.parametrize("mode", ["plain", "stls"])
def test_fetchmail_retrieves_and_deletes_delivered_mail(make_pop3, tmp_path, mode):
    p = make_pop3(tls=(mode == "stls"))
    p.deliver("fetch me one", body="first body\r\n")
    p.deliver("fetch me two", body="second body\r\n.with a dot\r\n")
    p.d.wait_messages(USER, 2)
    out = tmp_path / "fetched"
    rc = tmp_path / "fetchmailrc"
    tls = ("sslproto tls1.2+ no sslcertck" if mode == "stls" else "sslproto ''")
    rc.write_text(
        "set no bouncemail\n"
        "poll 127.0.0.1 with proto POP3 port %d uidl\n"
        "  user \"%s\" there with password \"%s\" is \"%s\" here\n"
        "  options fetchall %s\n"
        "  mda \"cat >> %s\"\n" % (p.port, USER, PASSWORD, os.environ.get("USER", "root"), tls, out))
    rc.chmod(0o600)
    r = subprocess.run([FETCHMAIL, "-f", str(rc), "--nosyslog", "--pidfile",
                        str(tmp_path / "fetchmail.pid"), "-v"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=h.clean_env({"HOME": str(tmp_path)}), timeout=120)
    log = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, log
    data = out.read_bytes()
    assert b"Subject: fetch me one" in data and b"Subject: fetch me two" in data
    assert b"\n.with a dot\n" in data.replace(b"\r\n", b"\n")
    if mode == "stls":
        assert "STLS" in log
    # fetchmail deletes what it fetched: QUIT removed the files
    h.wait_for(lambda: len(p.d.maildir_files(USER)) == 0, what="mailbox emptied")
