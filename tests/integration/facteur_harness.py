"""Harness for the facteur integration tests.

Starts the real `facteurd` on a free loopback port with a configuration
generated in a per-test directory, talks to it with raw sockets or smtplib,
and reads back what it did: Maildir files and the event log on stderr.

Only the Python standard library is used (Debian's /usr/bin/python3 + pytest).
"""

import email
import email.policy
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_DIR = Path(os.environ.get("FACTEUR_SOURCE_DIR", HERE.parent.parent))
BUILD_DIR = Path(os.environ.get("FACTEUR_BUILD_DIR", SOURCE_DIR / "build"))
FACTEURD = BUILD_DIR / "facteurd"

HOSTNAME = "mx.example.test"

# Generous: the daemon may run under ASan/UBSan on a loaded 2-core machine.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0  # SPEC §7: exit within 10 s
IO_TIMEOUT = 30.0

EX_CONFIG = 78

# Every key of SPEC §3, in the order of its table.
SPEC_KEYS = [
    "hostname", "listen", "pop3_listen", "metrics_listen", "spool_dir",
    "local_domains", "users_file", "aliases_file", "mailbox_format",
    "mailbox_path", "relay_networks", "route", "dns_servers", "mx_port",
    "tls_cert", "tls_key", "tls_outbound", "tls_ca_file",
    "max_message_size", "max_recipients", "max_connections",
    "max_connections_per_ip", "smtp_timeout", "retry_min", "retry_max",
    "queue_lifetime", "user", "log_format", "log_level",
]

# SPEC §8: every series a metrics scrape must show, from the first one.
SPEC_METRICS = [
    "facteur_connections_active",
    "facteur_connections_total",
    "facteur_messages_accepted_total",
    'facteur_deliveries_total{result="delivered"}',
    'facteur_deliveries_total{result="deferred"}',
    'facteur_deliveries_total{result="bounced"}',
    "facteur_queue_messages",
    "facteur_dns_queries_total",
    "facteur_dns_failures_total",
    "facteur_tls_sessions_total",
]

# A SHA-512 crypt(3) hash of "secret" (openssl passwd -6 -salt saltsalt secret).
SECRET_HASH = ("$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5"
               "knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1")

ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class HarnessError(AssertionError):
    pass


# --------------------------------------------------------------------------
# small helpers

def wait_for(predicate, timeout=IO_TIMEOUT, interval=0.1, what=None):
    """Poll predicate() until it returns something truthy; return that value.
    Raise an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what or getattr(predicate, "__name__", "condition")))
        time.sleep(interval)


def smtp_answers(proc, port, what, log_text):
    """A predicate for wait_for(): an SMTP server on 127.0.0.1:port answers
    NOOP. It raises, with log_text(), once proc (`what`, which should serve
    that port) has exited."""
    def answers():
        if proc.poll() is not None:
            raise AssertionError("%s exited with %s:\n%s"
                                 % (what, proc.returncode, log_text()))
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.noop()
                return True
        except OSError:
            return False
    return answers


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago: bind port 0, read it, close."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def clean_env(extra=None):
    """The test process's environment without any FACTEUR_* variable, plus
    `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTEUR_")}
    if extra:
        env.update(extra)
    return env


def small_quarantine_env():
    """ASAN_OPTIONS with a small quarantine, for memory measurements of a
    sanitizer build (harmless for a plain build)."""
    opts = os.environ.get("ASAN_OPTIONS", "")
    extra = "quarantine_size_mb=4:thread_local_quarantine_size_kb=256"
    return {"ASAN_OPTIONS": (opts + ":" + extra) if opts else extra}


def run_facteurd(args, env=None, timeout=60, cwd=None):
    """Run facteurd to completion (for -V, -n and configuration errors)."""
    return subprocess.run([str(FACTEURD)] + list(args), env=clean_env(env),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)


def parse_logfmt(line):
    """Parse one logfmt line into a dict; None if it is not logfmt.
    Values are bare (no spaces, no quotes) or double-quoted with backslash
    escapes."""
    fields = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        m = re.compile(r"[^\s=\"]+").match(line, i)
        if not m:
            return None
        key = m.group(0)
        i = m.end()
        if i >= n or line[i] != "=":
            # a bare key (flag) is legal logfmt: value true
            fields[key] = True
            continue
        i += 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    return None  # unterminated quote
                c = line[i]
                if c == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    out.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                out.append(c)
                i += 1
            value = "".join(out)
            if i < n and line[i] != " ":
                return None
        else:
            j = i
            while j < n and line[j] != " ":
                j += 1
            value = line[i:j]
            if '"' in value:
                return None
            i = j
        fields[key] = value
    return fields


def header_block(message):
    """The header section of a message (bytes, LF or CRLF), unfolded, as a
    list of (name, value) byte pairs."""
    text = message.replace(b"\r\n", b"\n")
    head = text.split(b"\n\n", 1)[0]
    headers = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, value = line.split(b":", 1)
            headers.append((name, value.strip()))
    return headers


def body_lines(message):
    """The lines of a message with any line end (LF or CRLF) removed."""
    text = message.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    return text.split(b"\n")


def make_message(subject="test", body="hello\r\n", sender="sender@example.org",
                 to="user@localhost", extra_headers=()):
    """A small RFC 5322 message with CRLF line ends, as bytes."""
    lines = ["From: <%s>" % sender, "To: <%s>" % to, "Subject: %s" % subject,
             "Message-ID: <%s.%d@client.test>" % (re.sub(r"\W", "", subject)[:30],
                                                 time.monotonic_ns())]
    lines.extend(extra_headers)
    head = "\r\n".join(lines) + "\r\n\r\n"
    if isinstance(body, str):
        body = body.encode()
    return head.encode() + body


def dot_stuff(data):
    """Wire form of message bytes (CRLF lines): stuff dots, add the end."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    out = data.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out + b".\r\n"


# --------------------------------------------------------------------------
# a raw line client for exact-protocol tests

class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # text after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def first(self):
        return self.lines[0] if self.lines else ""

    @property
    def enhanced(self):
        """The enhanced status code of the first line, or None."""
        m = ENHANCED_RE.match(self.first)
        return m.group(0).strip() if m else None

    def __repr__(self):
        return "Reply(%d %r)" % (self.code, self.lines)

    def __str__(self):
        return "\n".join("%d%s%s" % (self.code, "-" if i < len(self.lines) - 1 else " ", l)
                         for i, l in enumerate(self.lines))


class ConnectionClosed(AssertionError):
    pass


class RawClient:
    """One SMTP connection driven line by line."""

    def __init__(self, host, port, timeout=IO_TIMEOUT, read_banner=True,
                 family=None):
        if family is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.banner = self.reply() if read_banner else None

    # -- sending
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def sendline(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")

    def cmd(self, line):
        """Send one command line and read its reply."""
        self.sendline(line)
        return self.reply()

    # -- receiving
    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise ConnectionClosed("connection closed by the server; unread: %r" % self.buf)
        self.buf += data

    def readline(self):
        """One reply line (bytes, without CRLF). Bare LF line ends are an
        error: SMTP replies end in CRLF."""
        while b"\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        if not line.endswith(b"\r"):
            raise HarnessError("reply line not ended by CRLF: %r" % line)
        return line[:-1]

    def reply(self):
        """Read one complete reply, multi-line included."""
        lines = []
        code = None
        while True:
            raw = self.readline()
            m = re.match(rb"^(\d{3})([ -])(.*)$", raw, re.S) or \
                re.match(rb"^(\d{3})()$", raw)
            if not m:
                raise HarnessError("malformed reply line %r (after %r)" % (raw, lines))
            c = int(m.group(1))
            if code is None:
                code = c
            elif c != code:
                raise HarnessError("reply code changed inside a multi-line reply: %r" % raw)
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                return Reply(code, lines)

    def pending(self, wait=0.5):
        """Bytes that arrive within `wait` seconds (without blocking longer)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
            self.buf += data
        except (socket.timeout, BlockingIOError):
            pass
        except ConnectionResetError:
            pass
        finally:
            self.sock.settimeout(old)
        return self.buf

    def wait_closed(self, timeout=IO_TIMEOUT):
        """Read until the server closes; return what arrived meanwhile.
        Raise if the connection is still open after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        data = self.buf
        self.buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("server did not close the connection within %.0fs; got %r"
                                     % (timeout, data[-500:]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- high level
    def ehlo(self, name="client.test"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def send_message(self, sender, recipients, data, ehlo=True, mail_params=""):
        """A whole transaction; returns the final reply to the data."""
        if ehlo:
            self.ehlo()
        r = self.cmd(("MAIL FROM:<%s>%s" % (sender, mail_params)).encode())
        assert r.code == 250, r
        for rcpt in recipients:
            r = self.cmd(("RCPT TO:<%s>" % rcpt).encode())
            assert r.code == 250, (rcpt, r)
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(dot_stuff(data))
        return self.reply()

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        """Close with an RST (SO_LINGER 0)."""
        import struct
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# the daemon

def _format_value(value):
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


class Daemon:
    """One facteurd process on its own directory, port, spool and mail root.

    `config` maps keys to values (a list value is joined with commas);
    a key mapped to None is left out. `extra_lines` are appended verbatim
    (e.g. to repeat a list key)."""

    def __init__(self, workdir, config=None, extra_lines=(), env=None, port=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.spool = self.dir / "spool"
        self.mail_root = self.dir / "mail"
        self.conf_path = self.dir / "facteur.conf"
        self.log_path = self.dir / "facteurd.log"
        self.settings = {
            "listen": "127.0.0.1:%d" % self.port,
            "spool_dir": str(self.spool),
            "mailbox_path": str(self.mail_root) + "/%d/%u",
            "local_domains": "localhost, example.test",
            "hostname": HOSTNAME,
        }
        if os.geteuid() == 0:
            # Running as root: stay root so that the daemon can write into
            # the test's directories, whether a facteur user exists or not
            # (the packaging test creates one for a while).
            self.settings["user"] = "root"
        for k, v in (config or {}).items():
            if v is None:
                self.settings.pop(k, None)
            else:
                self.settings[k] = v
        self.extra_lines = list(extra_lines)
        self.env = dict(env or {})
        self.proc = None
        self.exit_codes = []  # every exit seen, in order
        self.expected_dead = False
        self.observed_exit = False
        self._log_file = None

    # -- configuration
    def config_text(self):
        lines = ["# generated by facteur_harness.py"]
        for k, v in self.settings.items():
            lines.append("%s = %s" % (k, _format_value(v)))
        lines.extend(self.extra_lines)
        return "\n".join(lines) + "\n"

    def write_config(self):
        self.conf_path.write_text(self.config_text())

    # -- life cycle
    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not FACTEURD.exists():
            raise HarnessError("%s does not exist (set FACTEUR_BUILD_DIR)" % FACTEURD)
        self.write_config()
        self.close_log()
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(FACTEURD), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file,
            env=clean_env(self.env), cwd=str(self.dir))
        _ALL_PROCS.append(self.proc)
        self.expected_dead = False
        self.observed_exit = False
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        """Wait until the port accepts and the banner arrives."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError("facteurd exited with status %s during start-up:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                c = RawClient(self.host, self.port, timeout=5)
            except OSError as e:
                last = e
                time.sleep(0.1)
                continue
            try:
                banner = c.banner
                if banner.code == 220:
                    try:
                        c.cmd("QUIT")
                    except (OSError, AssertionError):
                        pass
                    return
                last = banner
            except (OSError, AssertionError) as e:
                last = e
            finally:
                c.close()
            time.sleep(0.1)
        raise HarnessError("facteurd not ready on port %d after %.0fs (last: %r):\n%s"
                           % (self.port, timeout, last, self.log_tail()))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig` and wait for the exit; return the exit status
        (negative: killed by that signal). Kills it (-9) and raises if it
        does not exit in time."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        self.observed_exit = True
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exit_codes.append("timeout")
            raise AssertionError("facteurd did not exit within %.0fs of signal %d:\n%s"
                                 % (timeout, sig, self.log_tail()))
        self.exit_codes.append(code)
        return code

    def stop_ok(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Stop and assert exit status 0 (SPEC §7)."""
        if not self.alive():
            raise AssertionError("facteurd is not running any more (status %s):\n%s"
                                 % (self.proc.returncode, self.log_tail()))
        code = self.stop(sig, timeout)
        assert code == 0, "facteurd exited with status %s on signal %d:\n%s" % (
            code, sig, self.log_tail())

    def kill9(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
            self.observed_exit = True
            self.exit_codes.append(-9)

    def restart(self, kill=False):
        """Stop (SIGTERM, status 0 asserted; or SIGKILL) and start again on
        the same configuration, spool and port."""
        if kill:
            self.kill9()
        else:
            self.stop_ok()
        return self.start()

    def assert_alive(self):
        assert self.alive(), "facteurd died (status %s):\n%s" % (
            self.proc.returncode, self.log_tail())

    def close_log(self):
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    # -- observation
    def log_bytes(self):
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            return b""

    def log_lines(self):
        return [l for l in self.log_bytes().decode("utf-8", "replace").split("\n") if l.strip()]

    def log_tail(self, n=60):
        return "\n".join(self.log_lines()[-n:])

    def logs(self):
        """The parsed log lines (logfmt, or JSON when log_format = json);
        lines that do not parse are skipped (see log_lines for raw text)."""
        out = []
        json_mode = self.settings.get("log_format") == "json"
        for line in self.log_lines():
            if json_mode:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
            else:
                d = parse_logfmt(line)
                if d and "event" in d:
                    out.append(d)
        return out

    def events(self, event, **fields):
        """Parsed log lines of `event` whose fields equal `fields`."""
        return [d for d in self.logs() if d.get("event") == event
                and all(str(d.get(k)) == str(v) for k, v in fields.items())]

    def wait_event(self, event, timeout=IO_TIMEOUT, **fields):
        return wait_for(lambda: self.events(event, **fields), timeout,
                        what="log event %s %r\n--- log tail:\n%s" % (event, fields, self.log_tail()))

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise HarnessError("no VmRSS for pid %d" % self.pid)

    def maildir(self, address):
        local, domain = address.rsplit("@", 1)
        return self.mail_root / domain.lower() / local.lower()

    def maildir_files(self, address):
        root = self.maildir(address)
        files = []
        for sub in ("new", "cur"):
            d = root / sub
            if d.is_dir():
                files.extend(sorted(p for p in d.iterdir() if p.is_file()))
        return files

    def maildir_messages(self, address):
        """Contents (bytes) of the files in new/ and cur/ of the mailbox."""
        out = []
        for p in self.maildir_files(address):
            try:
                out.append(p.read_bytes())
            except FileNotFoundError:
                pass  # moved between listing and reading
        return out

    def wait_messages(self, address, count=1, timeout=IO_TIMEOUT):
        """Wait until the mailbox holds at least `count` messages; return them."""
        return wait_for(lambda: (lambda m: m if len(m) >= count else None)(self.maildir_messages(address)),
                        timeout, what="%d message(s) in %s\n--- log tail:\n%s"
                        % (count, self.maildir(address), self.log_tail()))

    def all_messages(self):
        """Every Maildir message under the mail root: {path: bytes}."""
        out = {}
        if not self.mail_root.is_dir():
            return out
        for sub in ("new", "cur"):
            for p in self.mail_root.glob("*/*/" + sub + "/*"):
                try:
                    out[p] = p.read_bytes()
                except (FileNotFoundError, IsADirectoryError):
                    pass
        return out

    # -- clients
    def raw(self, **kw):
        return RawClient(self.host, self.port, **kw)

    def smtp(self, local_hostname="client.test", timeout=IO_TIMEOUT):
        return smtplib.SMTP(self.host, self.port, local_hostname=local_hostname,
                            timeout=timeout)

    def send(self, sender="sender@example.org", recipients=("user@localhost",),
             data=None, subject="test", body="hello\r\n"):
        """Send one message over a fresh connection; return the queue id from
        the final `250 2.0.0 Ok: queued as <id>` reply."""
        if data is None:
            data = make_message(subject=subject, body=body, sender=sender,
                                to=recipients[0])
        with self.raw() as c:
            r = c.send_message(sender, recipients, data)
            assert r.code == 250, r
            try:
                c.cmd("QUIT")
            except (OSError, AssertionError):
                pass
        return queue_id_of(r)


def queue_id_of(reply):
    text = reply.first if isinstance(reply, Reply) else reply
    if isinstance(text, bytes):
        text = text.decode()
    m = re.match(r"^2\.0\.0 Ok: queued as (\S+)$", text)
    assert m, "final reply is not '250 2.0.0 Ok: queued as <id>': %r" % text
    return m.group(1)


# Every facteurd process this harness started, so that the finaliser can
# make sure none survives (killed by PID, never by name).
_ALL_PROCS = []


def parse_message(raw):
    """A message read from a mailbox, parsed as sent (no re-folding)."""
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def dsn_fields(msg):
    """The field blocks of a DSN's message/delivery-status part: the
    per-message block first, then one per recipient."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            return [dict(b.items()) for b in part.get_payload()]
    raise AssertionError("no message/delivery-status part:\n%s" % msg.as_string())


def dsns_to(daemon, sender):
    """The notices delivered so far to the local sender's mailbox."""
    return [parse_message(m) for m in daemon.maildir_messages(sender)]


def send_envelope(daemon, sender, rcpts, mail_params="", rcpt_params="",
                  subject="test", body="hello\r\n", header_from=None):
    """One message over SMTP with the given envelope and ESMTP parameters,
    every step expected to succeed; returns its queue id."""
    data = make_message(subject=subject, body=body,
                        sender=header_from or sender, to=rcpts[0])
    with daemon.raw() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
        assert r.code == 250, r
        for rcpt in rcpts:
            r = c.cmd("RCPT TO:<%s>%s" % (rcpt, rcpt_params))
            assert r.code == 250, r
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(dot_stuff(data))
        r = c.reply()
        assert r.code == 250, r
        c.cmd("QUIT")
    return queue_id_of(r)


def kill_leftovers():
    for p in _ALL_PROCS:
        if p.poll() is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
    _ALL_PROCS[:] = [p for p in _ALL_PROCS if p.poll() is None]
