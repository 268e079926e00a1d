"""A real Dovecot (dovecot-imapd, dovecot-lmtpd) for the integration tests.

Its configuration is the one docs/operations.md shows, read from the
chapter "Reading mail over IMAP with Dovecot" (each block follows a
`<!-- tested: NAME -->` line), so that the documentation is tested as
written. Only paths, the account and the ports are put in for the test's
own (`/var/mail`, `/etc/dovecot/users`, `vmail`, `port = 24`), and the
settings that keep it off the system's (base_dir, state_dir, log_path, the
IMAP port) are appended. Dovecot runs in the foreground and is stopped by
PID; nothing here touches a system service.
"""

import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import facteur_harness as h

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOC = h.SOURCE_DIR / "docs" / "operations.md"
PASSWORD = "secret"  # h.SECRET_HASH is its hash
ACCOUNT = "facteurvmail"  # stands for the documentation's vmail

# What only a test needs: its own run and state folders, a log file, an
# IMAP port on loopback, no imaps.
TEST_SETTINGS = """
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def available():
    return os.path.exists(DOVECOT)


def doc_snippet(name, doc=DOC):
    """The indented block that follows `<!-- tested: NAME -->` in the
    documentation, without its indentation."""
    lines = Path(doc).read_text().splitlines()
    marker = "<!-- tested: %s -->" % name
    if marker not in lines:
        raise AssertionError("no %r in %s" % (marker, doc))
    i = lines.index(marker) + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    block = []
    while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        block.append(lines[i][4:])
        i += 1
    while block and not block[-1].strip():
        block.pop()
    assert block, "empty block after %r" % marker
    return "\n".join(block) + "\n"


def facteur_settings(name, replace=()):
    """A facteur.conf block of the documentation as {key: value}, with
    the (old, new) replacements made in the values."""
    out = {}
    for line in doc_snippet(name).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        for old, new in replace:
            value = value.replace(old, new)
        out[key.strip()] = value
    return out


def ensure_account(name=ACCOUNT):
    """Generator for a fixture: the account Dovecot's mail_uid names, made
    with its own group when missing and removed afterwards."""
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)
        made = True
    pw = pwd.getpwnam(name)
    yield pw.pw_uid, pw.pw_gid
    if made:
        subprocess.run(["userdel", name], check=False, timeout=60)


# Fixtures for the test files that start Dovecot (imported by name).

@pytest.fixture(scope="module")
def vmail():
    """The account Dovecot runs the mail as: (uid, gid)."""
    yield from ensure_account()


@pytest.fixture
def traversable():
    """A directory every account may cross (pytest's tmp_path is 0700,
    which Dovecot's mail processes could not)."""
    d = Path(tempfile.mkdtemp(prefix="facteur-dovecot-"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dovecots():
    """The Dovecots a test started, stopped at its end."""
    made = []
    yield made
    for dc in made:
        dc.stop()


class Dovecot:
    """Dovecot on the documentation's block `snippet`, in `workdir`/dovecot.

    `users` is a list of addresses, or of (address, extra userdb fields)
    pairs: the passwd-file that the configuration names for passdb and
    userdb. The LMTP UNIX socket is `lmtp_socket`; `lmtp_port` is the
    inet listener's port when the block has one. `extra` lines are added
    to the block (a setting the documentation names beside it)."""

    def __init__(self, workdir, snippet, mail_root, users, account=ACCOUNT,
                 start=True, extra=""):
        self.base = Path(workdir) / "dovecot"
        self.base.mkdir()
        self.imap_port = h.free_port()
        self.lmtp_port = h.free_port()
        self.lmtp_socket = self.base / "run" / "lmtp"
        self.users_path = self.base / "users"
        self.write_users(users)
        conf = doc_snippet(snippet)
        for old, new in (("/var/mail", str(mail_root)),
                         ("/etc/dovecot/users", str(self.users_path)),
                         ("vmail", account)):
            conf = conf.replace(old, new)
        conf = re.sub(r"(?m)^(\s*port = )24$", r"\g<1>%d" % self.lmtp_port, conf)
        # `extra`: a setting the documentation names beside its block
        conf += extra + TEST_SETTINGS.format(base=self.base, imap_port=self.imap_port)
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(conf)
        self.proc = None
        if start:
            self.start()

    def write_users(self, users):
        lines = []
        for u in users:
            address, extra = (u, "") if isinstance(u, str) else u
            lines.append("%s:%s::::::%s\n" % (address, h.SECRET_HASH, extra))
        self.users_path.write_text("".join(lines))

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "stderr", "ab"))

        def listening():
            assert self.proc.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=5) as s:
                    return s.recv(100).startswith(b"* OK")
            except OSError:
                return False
        h.wait_for(listening, timeout=h.START_TIMEOUT,
                   what="dovecot on %d\n%s" % (self.imap_port, self.log()))
        return self

    def log(self):
        out = ""
        for name in ("stderr", "dovecot.log"):
            p = self.base / name
            if p.exists():
                out += p.read_text(errors="replace")
        return out

    def login(self, user):
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=h.IO_TIMEOUT)
        m.login(user, PASSWORD)
        return m

    def stop(self):
        """SIGTERM to its master process (by PID), which stops its own
        children; then wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=h.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=h.STOP_TIMEOUT)


def imap_search(m):
    typ, data = m.search(None, "ALL")
    assert typ == "OK", data
    return data[0].split()


def imap_subjects(m):
    subjects = []
    for num in imap_search(m):
        typ, data = m.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        subjects.append(data[0][1].decode().strip())
    return subjects
