"""Helpers for the relaying integration tests (SPEC §3 routes, §5 relay,
§7 logs, §8 outbound rules).

- `Dnsmasq`: a real DNS server on a loopback port serving MX, A, AAAA and
  null-MX records; every other *.test name is NXDOMAIN.
- `ScriptedSMTP`: a small threaded SMTP server whose replies are scripted per
  command, for faults a real MTA never produces on demand (4xx/5xx per
  recipient, a disconnect in DATA, silence, a reply one byte per second),
  with STARTTLS and AUTH PLAIN/LOGIN that record what they receive.
- Sending and receiving facteurd instances on top of facteur_harness.Daemon:
  the sender on 127.0.0.1, receivers on 127.0.0.2, 127.0.0.3... all on the
  same port number (the sender's `mx_port`).
- DSN parsing with the email module.

Every process started here is stopped by PID in the finalisers.
"""

import atexit
import base64
import email
import email.policy
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

import facteur_harness as h

DNSMASQ = "/usr/sbin/dnsmasq"
FACTEURCTL = h.BUILD_DIR / "facteurctl"

# Receivers listen on these addresses; the sender on 127.0.0.1 (a Linux
# host answers on all of 127.0.0.0/8 without setup).
RECEIVER_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")

SENDER_DOMAIN = "sender.test"
SENDER = "sender@" + SENDER_DOMAIN

# Long enough for an ASan build on a shared 2-core machine doing retries.
RELAY_TIMEOUT = 60.0

# The zone every module shares (see `zone` fixture). MX records are listed
# worst preference first so that a sender that does not sort fails.
ZONE_MX = [
    ("best.test", "mx2.best.test", 20),
    ("best.test", "mx1.best.test", 10),
    ("nullmx.test", ".", 0),
    ("one.test", "mx.one.test", 10),
    ("slow.test", "mx.slow.test", 10),
    ("secure.test", "mx.secure.test", 10),
]
ZONE_HOSTS = [
    ("mx1.best.test", "127.0.0.2"),
    ("mx2.best.test", "127.0.0.3"),
    ("afallback.test", "127.0.0.4"),   # no MX: A fallback
    ("v6only.test", "::1"),            # no MX, only AAAA
    ("relayhost.test", "127.0.0.5"),   # target of [relayhost.test]:port
    ("mx.one.test", "127.0.0.2"),
    ("mx.slow.test", "127.0.0.3"),
    ("mx.secure.test", "127.0.0.2"),
]

_PROCS = []     # dnsmasq / helper processes started here
_SERVERS = []   # ScriptedSMTP instances still running


def kill_leftovers():
    for s in list(_SERVERS):
        s.stop()
    for p in _PROCS:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
    _PROCS[:] = [p for p in _PROCS if p.poll() is None]


# a safety net for a run interrupted before the finalisers
atexit.register(kill_leftovers)


# --------------------------------------------------------------------------
# ports

def _can_bind(host, port, kind):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_common_port(hosts=RECEIVER_IPS):
    """A TCP port number free on every address of `hosts` a moment ago."""
    for _ in range(100):
        port = h.free_port(hosts[0])
        if all(_can_bind(a, port, socket.SOCK_STREAM) for a in hosts[1:]):
            return port
    raise h.HarnessError("no port free on all of %s" % (hosts,))


def free_dns_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if _can_bind("127.0.0.1", port, socket.SOCK_STREAM) and \
                _can_bind("127.0.0.1", port, socket.SOCK_DGRAM):
            return port
    raise h.HarnessError("no free DNS port")


# --------------------------------------------------------------------------
# DNS

QTYPES = {"A": 1, "MX": 15, "AAAA": 28}


def dns_query(port, name, qtype="A", host="127.0.0.1", timeout=1.0):
    """One UDP query; returns (rcode, answer count) or None without an
    answer. Enough to know that the server is up and serving the zone."""
    qid = struct.unpack(">H", os.urandom(2))[0]
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", QTYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (host, port))
            while True:
                data = s.recv(4096)
                if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                    break
        except OSError:
            return None
    flags, _, ancount = struct.unpack(">HHH", data[2:8])
    return flags & 0xF, ancount


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port>, authoritative for *.test.

    `mx`: (domain, exchange, preference) triples ("." as exchange is a null
    MX); `hosts`: (name, address) pairs giving A or AAAA records; `txt`:
    (name, [strings]) pairs giving TXT records of those strings. Every
    query is logged to `log_path` (see `queries`)."""

    def __init__(self, workdir, mx=(), hosts=(), port=None, txt=()):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_dns_port()
        self.mx = list(mx)
        self.hosts = list(hosts)
        self.txt_records = [(name, list(strings)) for name, strings in txt]
        for name, strings in self.txt_records:
            # on its command line dnsmasq splits the strings at commas and
            # takes quotes literally (it honours them only in a conf file)
            assert all(len(s.encode()) <= 255 and "," not in s for s in strings), \
                (name, strings)
        self.log_path = self.dir / "dnsmasq.log"
        self.proc = None

    @property
    def server(self):
        """The value for the sender's `dns_servers`."""
        return "127.0.0.1:%d" % self.port

    def args(self):
        a = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
             "--listen-address=127.0.0.1", "--port=%d" % self.port,
             "--conf-file=/dev/null", "--local-ttl=1", "--local=/test/",
             "--log-queries", "--log-facility=-"]
        for domain, exchange, pref in self.mx:
            a.append("--mx-host=%s,%s,%d" % (domain, exchange, pref))
        for name, addr in self.hosts:
            a.append("--host-record=%s,%s" % (name, addr))
        for name, strings in self.txt_records:
            a.append("--txt-record=%s,%s" % (name, ",".join(strings)))
        return a

    def queries(self, name, qtype="A"):
        """How many queries for `name` of type `qtype` dnsmasq has logged."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        line = r"\bquery\[%s\] %s from " % (re.escape(qtype), re.escape(name))
        return len(re.findall(line, text))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=15.0):
        assert not self.alive()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        finally:
            log.close()
        _PROCS.append(self.proc)

        def ready():
            if self.proc.poll() is not None:
                raise h.HarnessError("dnsmasq exited with %s:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            return dns_query(self.port, "ready-probe.test", "A", timeout=0.3)
        h.wait_for(ready, timeout, what="dnsmasq on port %d" % self.port)
        return self

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n=30):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# certificates and secrets

def make_cert(workdir, cn, sans=()):
    """A self-signed certificate (EC P-256) for `cn`; returns (cert, key)
    paths. Made with the openssl CLI at test time."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cert = workdir / ("%s.crt" % cn)
    key = workdir / ("%s.key" % cn)
    names = ",".join("DNS:%s" % n for n in (cn,) + tuple(sans))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=%s" % cn,
                    "-addext", "subjectAltName=%s" % names,
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return cert, key


def password_hash(password):
    """A users-file hash made by `facteurctl passwd` (SPEC §2)."""
    r = subprocess.run([str(FACTEURCTL), "passwd"], input=(password + "\n").encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().strip()
    assert out.startswith("$6$"), out
    return out


# --------------------------------------------------------------------------
# the scripted SMTP server

class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


DISCONNECT = _Sentinel("DISCONNECT")   # close the connection instead of replying
HANG = _Sentinel("HANG")               # never reply; read and drop until EOF


class Slow:
    """A reply sent one byte every `interval` seconds."""

    def __init__(self, text, interval=1.0):
        self.text = text
        self.interval = interval

    def __repr__(self):
        return "Slow(%r)" % self.text


class Message:
    def __init__(self, session, mail_from, rcpts, data):
        self.session = session
        self.mail_from = mail_from
        self.rcpts = list(rcpts)
        self.data = data
        self.at = time.monotonic()  # when its end of data came in

    def __repr__(self):
        return "Message(from=%r rcpts=%r %d bytes)" % (self.mail_from, self.rcpts,
                                                       len(self.data))


class Session:
    def __init__(self, server, index, peer):
        self.server = server
        self.index = index          # 0 for the first connection
        self.peer = peer
        self.tls = False
        self.ehlo = None
        self.auth = None            # (mechanism, user, password, tls at the time)
        self.mail_from = None
        self.rcpts = []
        self.transactions = 0       # MAIL commands seen
        self.dialog = []            # "C: ..." / "S: ..." lines
        self.closed = False
        self.pre_tls_leftover = b""  # bytes pipelined after STARTTLS (injection)
        self.opened = time.monotonic()
        self.closed_at = None       # set when the connection is gone

    def note(self, line):
        self.dialog.append(line)


class _Closed(Exception):
    pass


class ScriptedSMTP:
    """A threaded SMTP server on (host, port).

    `replies` maps a stage to a reply: a string (lines separated by "\\n";
    the code is repeated on each line), DISCONNECT, HANG, Slow(text), None
    (the default), or a callable (session, argument) -> one of those.
    Stages: greeting, ehlo, helo, starttls, auth, mail, rcpt (argument: the
    address), data (the 354), in_data (once the first bytes of the message
    arrived; None continues), eom (after the final dot; argument: the
    message bytes), rset, noop, quit, other.

    A transaction is recorded in `messages` when the script answers its end
    of data with a 2xx (recorded before the reply is sent, as a real MTA
    commits first); never for DISCONNECT, HANG or a 4xx/5xx.
    `cert`/`key` make it offer STARTTLS; `auth` (a dict user -> password)
    makes it offer AUTH `auth_mechanisms` (PLAIN and LOGIN are understood),
    after TLS only unless `auth_before_tls`.
    `idle_close` (seconds): a connection silent that long gets "421 4.4.2
    ... timeout" and is closed, as Postfix's smtpd does.
    """

    def __init__(self, host, port, name="scripted.test", replies=None, cert=None,
                 key=None, auth=None, auth_before_tls=False, extensions=(),
                 auth_mechanisms="PLAIN LOGIN", idle_close=None):
        self.host = host
        self.port = port
        self.name = name
        self.replies = dict(replies or {})
        self.cert = cert
        self.key = key
        self.auth_users = auth
        self.auth_before_tls = auth_before_tls
        self.auth_mechanisms = auth_mechanisms
        self.extensions = list(extensions)
        self.idle_close = idle_close
        self.sessions = []
        self.messages = []
        self.auths = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sock = None
        self.threads = []
        self.conns = []
        self.errors = []

    # -- life cycle
    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, daemon=True,
                             name="scripted-%s:%d" % (self.host, self.port))
        t.start()
        self.threads.append(t)
        _SERVERS.append(self)
        return self

    def stop(self):
        if self.stopping.is_set():
            return
        self.stopping.set()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(10)
        try:
            self.sock.close()
        except OSError:
            pass
        if self in _SERVERS:
            _SERVERS.remove(self)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                s = Session(self, len(self.sessions), peer)
                self.sessions.append(s)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, s), daemon=True)
            t.start()
            self.threads.append(t)

    # -- observation
    def connections(self):
        return len(self.sessions)

    def rcpts_delivered(self):
        """Every recipient of every accepted transaction, in order."""
        with self.lock:
            return [r for m in self.messages for r in m.rcpts]

    def wait_messages(self, count=1, timeout=RELAY_TIMEOUT):
        return h.wait_for(lambda: list(self.messages) if len(self.messages) >= count else None,
                          timeout, what="%d message(s) at %s:%d; dialogs:\n%s"
                          % (count, self.host, self.port, self.transcript()))

    def max_concurrent(self, after=0.0):
        """The most connections that were open at once (from time.monotonic()
        `after` on)."""
        with self.lock:
            sessions = [s for s in self.sessions
                        if s.closed_at is None or s.closed_at > after]
            marks = [(max(s.opened, after), 1) for s in sessions]
            marks += [(s.closed_at if s.closed_at is not None else float("inf"), -1)
                      for s in sessions]
        most = now = 0
        for _, step in sorted(marks):  # a close sorts before an open at a tie
            now += step
            most = max(most, now)
        return most

    def transcript(self, last=6):
        out = []
        for s in self.sessions[-last:]:
            out.append("--- session %d from %s" % (s.index, s.peer))
            out.extend(s.dialog[-40:])
        return "\n".join(out)

    # -- one connection
    def _reply_for(self, stage, session, arg=None, default=None):
        value = self.replies.get(stage)
        if callable(value):
            value = value(session, arg)
        return default if value is None else value

    def _serve(self, conn, s):
        conn.settimeout(0.25 if self.idle_close else 0.5)
        io = _LineIO(conn, self.stopping)
        if self.idle_close:
            io.idle_limit = self.idle_close
            io.idle_reply = ("421 4.4.2 %s Error: timeout exceeded\r\n"
                             % self.name).encode()
        try:
            self._dialog(io, s)
        except (_Closed, OSError, ssl.SSLError) as e:
            s.note("-- closed: %r" % (e,))
        except Exception as e:  # a harness bug: keep it visible
            s.note("-- harness error: %r" % (e,))
            self.errors.append(e)
        finally:
            s.closed = True
            if s.closed_at is None:
                s.closed_at = time.monotonic()
            try:
                io.sock.close()
            except OSError:
                pass
            with self.lock:
                if conn in self.conns:
                    self.conns.remove(conn)

    def _send(self, io, s, value):
        """Send a reply per the script; False when the dialog must end."""
        if value is DISCONNECT:
            s.note("S: <disconnect>")
            raise _Closed("scripted disconnect")
        if value is HANG:
            s.note("S: <hang>")
            io.drain_until_eof()
            raise _Closed("hung until EOF")
        slow = isinstance(value, Slow)
        text = value.text if slow else value
        lines = text.split("\n")
        code = lines[0][:3]
        wire = b""
        for i, line in enumerate(lines):
            # each line is "NNN text"; the separators are rewritten
            sep = "-" if i < len(lines) - 1 else " "
            # raw octets travel as surrogate escapes ("\udce4" is 0xe4)
            wire += ("%s%s%s\r\n" % (line[:3], sep, line[4:])).encode(
                "utf-8", "surrogateescape")
        s.note("S: " + wire.decode(errors="replace").rstrip("\r\n").replace("\r\n", " | "))
        if slow:
            for b in wire:
                io.sendall(bytes([b]))
                if self.stopping.wait(value.interval):
                    raise _Closed("stopped")
        else:
            io.sendall(wire)
        return code

    def _ehlo_lines(self, s):
        lines = ["250 %s" % self.name, "250 PIPELINING", "250 8BITMIME",
                 "250 ENHANCEDSTATUSCODES", "250 SIZE 52428800"]
        if self.cert and not s.tls:
            lines.append("250 STARTTLS")
        if self.auth_users is not None and (s.tls or self.auth_before_tls):
            lines.append("250 AUTH " + self.auth_mechanisms)
        lines.extend("250 " + e for e in self.extensions)
        return "\n".join(lines)

    def _dialog(self, io, s):
        self._send(io, s, self._reply_for("greeting", s, None,
                                          "220 %s ESMTP scripted" % self.name))
        while True:
            line = io.readline()
            s.note("C: " + line.decode(errors="replace"))
            verb, _, arg = line.decode(errors="replace").partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                s.ehlo = arg
                s.mail_from, s.rcpts = None, []
                self._send(io, s, self._reply_for("ehlo", s, arg, self._ehlo_lines(s)))
            elif verb == "HELO":
                s.ehlo = arg
                self._send(io, s, self._reply_for("helo", s, arg, "250 %s" % self.name))
            elif verb == "STARTTLS" and self.cert and not s.tls:
                code = self._send(io, s, self._reply_for("starttls", s, None,
                                                         "220 2.0.0 Ready to start TLS"))
                if code == "220":
                    s.pre_tls_leftover = io.buf
                    io.buf = b""
                    io.start_tls(self.cert, self.key)
                    s.tls = True
                    s.ehlo, s.mail_from, s.rcpts = None, None, []
            elif verb == "AUTH" and self.auth_users is not None:
                self._auth(io, s, arg)
            elif verb == "MAIL":
                s.transactions += 1
                addr = _path(arg[5:] if arg.upper().startswith("FROM:") else arg)
                code = self._send(io, s, self._reply_for("mail", s, addr, "250 2.1.0 Ok"))
                if code.startswith("2"):
                    s.mail_from, s.rcpts = addr, []
            elif verb == "RCPT":
                addr = _path(arg[3:] if arg.upper().startswith("TO:") else arg)
                code = self._send(io, s, self._reply_for("rcpt", s, addr, "250 2.1.5 Ok"))
                if code.startswith("2"):
                    s.rcpts.append(addr)
            elif verb == "DATA":
                if s.mail_from is None or not s.rcpts:
                    self._send(io, s, "503 5.5.1 No valid recipients")
                    continue
                code = self._send(io, s, self._reply_for(
                    "data", s, None, "354 End data with <CR><LF>.<CR><LF>"))
                if not code.startswith("3"):
                    continue
                data = self._read_data(io, s)
                s.note("C: <%d bytes of data>" % len(data))
                value = self._reply_for("eom", s, data, "250 2.0.0 Ok: queued")
                text = value.text if isinstance(value, Slow) else value
                if isinstance(text, str) and text.startswith("2"):
                    # like a real MTA, it holds the message before it says so
                    with self.lock:
                        self.messages.append(Message(s, s.mail_from, s.rcpts, data))
                s.mail_from, s.rcpts = None, []
                self._send(io, s, value)
            elif verb == "RSET":
                s.mail_from, s.rcpts = None, []
                self._send(io, s, self._reply_for("rset", s, None, "250 2.0.0 Ok"))
            elif verb == "NOOP":
                self._send(io, s, self._reply_for("noop", s, None, "250 2.0.0 Ok"))
            elif verb == "QUIT":
                # over from here: the client may connect again as soon as
                # it reads the 221, before this thread gets to its finally
                s.closed_at = time.monotonic()
                self._send(io, s, self._reply_for("quit", s, None, "221 2.0.0 Bye"))
                raise _Closed("QUIT")
            else:
                self._send(io, s, self._reply_for("other", s, line,
                                                  "502 5.5.2 Command not implemented"))

    def _read_data(self, io, s):
        out = []
        first = True
        while True:
            line = io.readline(keep_end=True)
            if first:
                first = False
                value = self._reply_for("in_data", s, line)
                if value is not None:
                    self._send(io, s, value)
            if line == b".\r\n":
                return b"".join(out)
            if line.startswith(b"."):
                line = line[1:]
            out.append(line)

    def _auth(self, io, s, arg):
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        initial = parts[1] if len(parts) > 1 else None
        try:
            if mech == "PLAIN":
                if initial is None or initial == "=":
                    if initial is None:
                        self._send(io, s, "334 ")
                        initial = io.readline().decode()
                    else:
                        initial = ""
                raw = base64.b64decode(initial, validate=True)
                _authzid, user, password = raw.split(b"\0", 2)
            elif mech == "LOGIN":
                if initial is None:
                    self._send(io, s, "334 VXNlcm5hbWU6")
                    initial = io.readline().decode()
                user = base64.b64decode(initial, validate=True)
                self._send(io, s, "334 UGFzc3dvcmQ6")
                password = base64.b64decode(io.readline().decode(), validate=True)
            else:
                self._send(io, s, "504 5.5.4 Unrecognized authentication type")
                return
        except (ValueError, UnicodeDecodeError):
            self._send(io, s, "501 5.5.2 Cannot decode")
            return
        user, password = user.decode(errors="replace"), password.decode(errors="replace")
        record = (mech, user, password, s.tls)
        s.auth = record
        with self.lock:
            self.auths.append(record)
        good = self.auth_users.get(user) == password
        default = "235 2.7.0 Authentication successful" if good else \
            "535 5.7.8 Authentication credentials invalid"
        self._send(io, s, self._reply_for("auth", s, record, default))


def _path(text):
    """The address inside <...> of a MAIL/RCPT argument."""
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        return text[1:end] if end > 0 else text[1:]
    return text.split(" ", 1)[0]


class _LineIO:
    """Bounded line reading over a socket that can be upgraded to TLS."""

    MAX_LINE = 1 << 20

    def __init__(self, sock, stopping):
        self.sock = sock
        self.stopping = stopping
        self.buf = b""
        self.idle_limit = 600
        self.idle_reply = None  # sent before closing an idle connection

    def _recv(self):
        idle = 0.0
        while True:
            if self.stopping.is_set():
                raise _Closed("server stopping")
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                idle += self.sock.gettimeout()
                if idle >= self.idle_limit:
                    if self.idle_reply:
                        self.sendall(self.idle_reply)
                    raise _Closed("idle")
                continue
            except ssl.SSLWantReadError:
                continue
            if not data:
                raise _Closed("EOF")
            return data

    def readline(self, keep_end=False):
        while b"\n" not in self.buf:
            if len(self.buf) > self.MAX_LINE:
                raise _Closed("line too long")
            self.buf += self._recv()
        line, self.buf = self.buf.split(b"\n", 1)
        line += b"\n"
        return line if keep_end else line.rstrip(b"\r\n")

    def drain_until_eof(self):
        while True:
            self._recv()

    def sendall(self, data):
        self.sock.sendall(data)

    def start_tls(self, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.sock.settimeout(30)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(0.5)


# --------------------------------------------------------------------------
# facteurd senders and receivers

def sender_config(dns_server, mx_port, **extra):
    """The sending instance's settings (the brief's setup facts)."""
    cfg = {
        "hostname": "sender.test",
        "local_domains": SENDER_DOMAIN,
        "dns_servers": dns_server,
        "mx_port": mx_port,
        "retry_min": "1s",
        "retry_max": "2s",
        "tls_outbound": "none",
    }
    cfg.update(extra)
    return cfg


def start_sender(make_daemon, dns_server, mx_port, config=None, extra_lines=(),
                 start=True):
    cfg = sender_config(dns_server, mx_port)
    cfg.update(config or {})
    return make_daemon(config=cfg, extra_lines=extra_lines, start=start)


def start_receiver(make_daemon, ip, port, domains, config=None, extra_lines=(),
                   start=True, mode=""):
    """A facteurd on ip:port delivering `domains` into its own Maildirs.
    It would relay nothing anywhere: its DNS is a closed port."""
    cfg = {
        "listen": "%s:%d%s" % ("[%s]" % ip if ":" in ip else ip, port, mode),
        "hostname": "rcv-%s.test" % ip.replace(":", "").replace(".", "-"),
        "local_domains": domains,
        "dns_servers": "127.0.0.1:9",
        "relay_networks": "127.0.0.0/8, ::1/128",
        "tls_outbound": "none",
    }
    cfg.update(config or {})
    d = make_daemon(config=cfg, extra_lines=extra_lines, start=False, port=port)
    d.host = ip
    if start:
        d.start()
    return d


def token():
    return uuid.uuid4().hex


def inject(sender_daemon, recipients, tok=None, subject=None, sender=SENDER):
    """Submit one message to the sending instance; returns (queue id, token).
    The token sits in the Subject and the body, to count copies."""
    tok = tok or token()
    subject = subject or "relay test %s" % tok
    data = h.make_message(subject=subject, body="token=%s\r\nbody line\r\n" % tok,
                          sender=sender, to=recipients[0])
    qid = sender_daemon.send(sender=sender, recipients=list(recipients), data=data)
    return qid, tok


def inject_parallel(jobs, threads=4):
    """Submit one-recipient messages from several SMTP clients at once:
    `jobs` is a list of (sending daemon, recipient). Returns the (daemon,
    queue id) pairs."""
    out, errors, lock = [], [], threading.Lock()

    def work(k):
        try:
            for d, rcpt in jobs[k::threads]:
                qid, _ = inject(d, [rcpt])
                with lock:
                    out.append((d, qid))
        except Exception as e:  # reported in the caller's thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    assert len(out) == len(jobs)
    return out


def tokens_in(messages):
    """The tokens (token=<hex>) found in a list of message bytes, in order."""
    out = []
    for m in messages:
        for line in m.replace(b"\r\n", b"\n").split(b"\n"):
            if line.startswith(b"token="):
                out.append(line[len(b"token="):].decode().strip())
    return out


def wait_relay_event(d, event, timeout=RELAY_TIMEOUT, **fields):
    """Wait for a log event of the sender and return the first match."""
    return d.wait_event(event, timeout=timeout, **fields)[0]


def events_for(d, rcpt):
    """(event, dsn) of every delivery outcome logged for `rcpt`."""
    return [(e["event"], e.get("dsn")) for e in d.logs()
            if e.get("rcpt") == rcpt and e.get("event") in
            ("delivered", "deferred", "bounced", "expired")]


def assert_relay_field(event, host, ip, port):
    """SPEC §7 relay=host[ip]:port."""
    want = "%s[%s]:%d" % (host, ip, port)
    assert event.get("relay") == want, "relay=%r, expected %r in %r" % (
        event.get("relay"), want, event)


# --------------------------------------------------------------------------
# DSNs

class Dsn:
    def __init__(self, raw):
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        self.per_message = {}
        self.recipients = []
        self.original = None
        self.human = None
        if self.msg.get_content_type() != "multipart/report":
            return
        for part in self.msg.get_payload():
            ctype = part.get_content_type()
            if ctype == "message/delivery-status":
                blocks = part.get_payload()
                if isinstance(blocks, list):
                    blocks = [dict((k.lower(), str(v).strip()) for k, v in b.items())
                              for b in blocks]
                else:
                    blocks = _status_blocks(blocks)
                if blocks:
                    self.per_message = blocks[0]
                    self.recipients = blocks[1:]
            elif ctype in ("message/rfc822", "text/rfc822-headers"):
                self.original = part
            elif ctype == "text/plain" and self.human is None:
                self.human = part.get_payload(decode=True)

    def recipient(self, address):
        for r in self.recipients:
            if address.lower() in r.get("final-recipient", "").lower():
                return r
        raise AssertionError("no per-recipient block for %s in DSN:\n%s"
                             % (address, self.raw.decode(errors="replace")))

    def original_text(self):
        """The returned original part (headers at least) as text."""
        if self.original is None:
            return ""
        if self.original.get_content_type() == "message/rfc822":
            inner = self.original.get_payload()
            if isinstance(inner, list) and inner:
                return inner[0].as_string()
        return self.original.as_string()

    def __repr__(self):
        return self.raw.decode(errors="replace")


def _status_blocks(text):
    blocks, cur = [], {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        if line[:1] in (" ", "\t") and cur:
            k = list(cur)[-1]
            cur[k] += " " + line.strip()
        elif ":" in line:
            k, v = line.split(":", 1)
            cur[k.strip().lower()] = v.strip()
    if cur:
        blocks.append(cur)
    return blocks


def check_dsn(raw, rcpt, status):
    """Parse a DSN and assert its structure (RFC 3464) and the status of
    `rcpt`; returns the Dsn."""
    d = Dsn(raw)
    text = raw.decode(errors="replace")
    assert d.msg.get_content_type() == "multipart/report", text
    assert (d.msg.get_param("report-type") or "").lower() == "delivery-status", text
    assert d.recipients, "no per-recipient fields:\n" + text
    r = d.recipient(rcpt)
    assert r.get("action", "").lower() == "failed", (r, text)
    assert r.get("status") == status, "Status %r, expected %r:\n%s" % (
        r.get("status"), status, text)
    # the bounce goes to the envelope sender with the null sender itself
    return d


def wait_dsns(sender_daemon, count=1, timeout=RELAY_TIMEOUT):
    return sender_daemon.wait_messages(SENDER, count, timeout)


# --------------------------------------------------------------------------
# fixtures (import them into a test module to use them)

@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    """The shared dnsmasq serving ZONE_MX / ZONE_HOSTS."""
    d = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), mx=ZONE_MX, hosts=ZONE_HOSTS)
    d.start()
    yield d
    d.stop()


@pytest.fixture
def relay(make_daemon, tmp_path, zone):
    """Per-test helpers; tears down scripted servers and extra DNS servers
    before the daemons are stopped (make_daemon's own finaliser)."""
    env = RelayEnv(make_daemon, tmp_path, zone)
    yield env
    env.close()


class RelayEnv:
    def __init__(self, make_daemon, tmp_path, zone):
        self.make_daemon = make_daemon
        self.tmp = tmp_path
        self.zone = zone
        self.port = free_common_port()
        self.servers = []
        self.dns = []

    def sender(self, config=None, extra_lines=(), dns=None, start=True):
        return start_sender(self.make_daemon, (dns or self.zone).server, self.port,
                            config=config, extra_lines=extra_lines, start=start)

    def receiver(self, ip, domains, config=None, extra_lines=(), start=True, port=None,
                 mode=""):
        return start_receiver(self.make_daemon, ip, port or self.port, domains,
                              config=config, extra_lines=extra_lines, start=start,
                              mode=mode)

    def scripted(self, ip, port=None, **kw):
        s = ScriptedSMTP(ip, port or self.port, **kw)
        s.start()
        self.servers.append(s)
        return s

    def dnsmasq(self, mx=ZONE_MX, hosts=ZONE_HOSTS, start=True):
        d = Dnsmasq(self.tmp / ("dns%d" % len(self.dns)), mx=mx, hosts=hosts)
        self.dns.append(d)
        if start:
            d.start()
        return d

    def cert(self, cn, sans=()):
        return make_cert(self.tmp / "certs", cn, sans)

    def close(self):
        for s in self.servers:
            s.stop()
        for d in self.dns:
            d.stop()
        errors = [e for s in self.servers for e in s.errors]
        assert not errors, "scripted server harness errors: %r" % errors
