"""Helpers for the inbound TLS and authentication tests (test_tls_auth.py),
and for the outbound TLS policies' reports (test_mta_sts.py, test_dane.py).

Certificates are made with the openssl CLI, password hashes with libcrypt
(through ctypes, so that $y$ works where libcrypt has it) or with
`facteurctl passwd`, and TLS clients are RawClient connections whose socket
is wrapped by Python's ssl module after STARTTLS (or at once for smtps).
"""

import base64
import ctypes
import ctypes.util
import email
import email.policy
import gzip
import json
import shutil
import socket
import ssl
import subprocess
import warnings
from pathlib import Path

import facteur_harness as h

FACTEURCTL = h.BUILD_DIR / "facteurctl"

USER_PASSWORD = "s3cret pass"  # a space: PLAIN and LOGIN must carry it whole


# --------------------------------------------------------------------------
# certificates

def make_cert(directory, cn=h.HOSTNAME, name="server"):
    """A self-signed RSA certificate for `cn` (and 127.0.0.1, so that
    clients that check the name of the host they dialled accept it):
    (cert path, key path)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / (name + ".crt")
    key = directory / (name + ".key")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-subj", "/CN=" + cn, "-days", "1",
         "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % cn,
         "-keyout", str(key), "-out", str(cert)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=120)
    assert r.returncode == 0, "openssl req failed: %s" % r.stderr.decode("utf-8", "replace")
    return cert, key


def cert_der(cert_path):
    """The DER bytes of a PEM certificate file (to compare with what a
    server presents)."""
    return ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())


def install_files(pairs):
    """Replace files atomically: [(source, destination)]. A daemon that
    reloads at any moment sees either the old or the new file."""
    for src, dst in pairs:
        tmp = Path(str(dst) + ".new")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


# --------------------------------------------------------------------------
# password hashes

_libcrypt = None


def _crypt_lib():
    global _libcrypt
    if _libcrypt is None:
        name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
        lib = ctypes.CDLL(name)
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        if hasattr(lib, "crypt_gensalt"):
            lib.crypt_gensalt.restype = ctypes.c_char_p
            lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong,
                                          ctypes.c_char_p, ctypes.c_int]
        _libcrypt = lib
    return _libcrypt


def crypt(password, setting):
    """crypt(3) of `password` with `setting` (a salt or a whole hash);
    None when libcrypt refuses it."""
    if isinstance(password, str):
        password = password.encode()
    if isinstance(setting, str):
        setting = setting.encode()
    out = _crypt_lib().crypt(password, setting)
    if out is None or out.startswith(b"*"):
        return None
    return out.decode()


def crypt_hash(password, prefix):
    """A fresh hash of `password` with the method `prefix` ("$6$", "$5$",
    "$y$"); None when this libcrypt does not have that method."""
    lib = _crypt_lib()
    if not hasattr(lib, "crypt_gensalt"):
        return None
    salt = lib.crypt_gensalt(prefix.encode(), 0, None, 0)
    if salt is None:
        return None
    out = crypt(password, salt)
    if out is None or not out.startswith(prefix):
        return None
    return out


def facteurctl_passwd(stdin_bytes, timeout=60):
    """Run `facteurctl passwd` with `stdin_bytes`; the CompletedProcess."""
    return subprocess.run([str(FACTEURCTL), "passwd"], input=stdin_bytes,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=h.clean_env(), timeout=timeout)


# --------------------------------------------------------------------------
# SASL

def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def plain_response(user, password, authzid=""):
    return b64("%s\0%s\0%s" % (authzid, user, password))


# --------------------------------------------------------------------------
# TLS clients

def client_context(cafile=None, verify=True, minimum=None, maximum=None):
    """A client context that trusts `cafile` and checks the server name
    (mx.example.test), or that checks nothing (verify=False)."""
    if verify:
        ctx = ssl.create_default_context(cafile=str(cafile))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # TLS 1.0/1.1 are deprecated in Python: asked for on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    return ctx


class TLSClient(h.RawClient):
    """A RawClient that can switch to TLS: starttls() on a plain
    connection, or implicit=True for an smtps listener (the handshake
    comes before the banner)."""

    def __init__(self, host, port, context, implicit=False, read_banner=True,
                 timeout=h.IO_TIMEOUT, server_hostname=h.HOSTNAME):
        self.context = context
        self.server_hostname = server_hostname
        super().__init__(host, port, timeout=timeout,
                         read_banner=read_banner and not implicit)
        if implicit:
            self.wrap()
            if read_banner:
                self.banner = self.reply()

    def wrap(self, context=None):
        """Run the handshake on the connection as it stands. Nothing the
        server sent in the clear may be left unread at this point."""
        assert self.buf == b"", "server sent %r in the clear before the handshake" % self.buf
        self.sock = (context or self.context).wrap_socket(
            self.sock, server_hostname=self.server_hostname)
        return self.sock

    def starttls(self, context=None):
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        self.wrap(context)
        return r

    @property
    def tls_version(self):
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def peer_cert_der(self):
        return self.sock.getpeercert(binary_form=True)

    def auth_plain(self, user, password):
        return self.cmd("AUTH PLAIN " + plain_response(user, password))

    def pending(self, wait=0.5):
        # Python's SSL socket raises its own timeout/want-read errors too.
        try:
            return super().pending(wait)
        except (ssl.SSLWantReadError, ssl.SSLError):
            return self.buf


def partial_client_hello(nbytes=20):
    """The first `nbytes` of a real TLS ClientHello (made by an in-memory
    handshake that is never finished)."""
    ctx = client_context(verify=False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=h.HOSTNAME)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert len(hello) > nbytes, hello
    return hello[:nbytes]


def metrics(port, host="127.0.0.1", timeout=h.IO_TIMEOUT):
    """GET /metrics: {name: float}."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


# --------------------------------------------------------------------------
# TLS reports (RFC 8460)

def facteurctl(d, *args):
    """`facteurctl ARGS` against daemon d, run to its end."""
    return subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=h.clean_env(), timeout=60)


def tlsrpt_report_of(raw):
    """(headers, the JSON report) of a TLS report mail."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", raw
    assert msg.get_param("report-type") == "tlsrpt", raw
    parts = [p for p in msg.get_payload()
             if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, raw
    return msg, json.loads(gzip.decompress(parts[0].get_payload(decode=True)))
