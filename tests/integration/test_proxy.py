"""The PROXY protocol (issue 16): `+proxy` listen modes and proxy_networks.

A real HAProxy (Debian's haproxy, TCP mode, send-proxy and send-proxy-v2)
in front of facteurd, started on loopback by the test and stopped by PID:
the client's own 127.0.0.x address is the client in the log, in Received:
and for relay control. Then bad input on raw sockets: an untrusted peer,
truncated, oversized and unknown headers, junk, a header in many pieces,
a slow header closed at the 10 s deadline while others are served.
"""

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest

import facteur_harness as h
import tls_harness as th

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
RELAYING_CLIENT = "127.0.0.5"
OTHER_CLIENT = "127.0.0.6"
BALANCER = "127.0.0.1"


def v2_header(command=0x21, family=0x11, block=None, tlvs=b""):
    if block is None:
        block = socket.inet_aton("192.0.2.44") + socket.inet_aton("192.0.2.1") \
            + struct.pack(">HH", 40000, 25)
    body = block + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack(">H", len(body)) + body


def v1_header(source="192.0.2.44", destination="192.0.2.1"):
    return ("PROXY TCP4 %s %s 40000 25\r\n" % (source, destination)).encode()


class ProxyDaemon:
    def __init__(self, daemon, proxy_port, pop3_port=None):
        self.d = daemon
        self.proxy_port = proxy_port
        self.pop3_port = pop3_port

    def connect(self, source=BALANCER, port=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(h.IO_TIMEOUT)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port or self.proxy_port))
        return s


@pytest.fixture
def make_proxied(make_daemon):
    """facteurd with a plain SMTP listener (for the harness) and a
    +proxy one; proxy_networks holds the balancer's address alone."""
    def factory(config=None, pop3=False):
        proxy_port = h.free_port()
        port = h.free_port()
        settings = {
            "listen": ["127.0.0.1:%d" % port,
                       "127.0.0.1:%d/smtp+proxy" % proxy_port],
            "proxy_networks": BALANCER + "/32",
            "relay_networks": RELAYING_CLIENT + "/32",
        }
        pop3_port = None
        if pop3:
            pop3_port = h.free_port()
            settings["pop3_listen"] = "127.0.0.1:%d/pop3+proxy" % pop3_port
        settings.update(config or {})
        d = make_daemon(config=settings, port=port)
        return ProxyDaemon(d, proxy_port, pop3_port)
    return factory


def closed_without_banner(sock, timeout=5.0):
    """The daemon closes without sending a byte."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    sock.close()



class Wrapped(h.RawClient):
    """A RawClient over an already connected socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.banner = self.reply()


# --------------------------------------------------------------------------
# HAProxy in front

class HAProxy:
    def __init__(self, workdir, backend_port, send_proxy):
        self.port = h.free_port()
        self.cfg = workdir / "haproxy.cfg"
        self.log = open(workdir / "haproxy.log", "ab")
        self.cfg.write_text(
            "defaults\n"
            "  mode tcp\n"
            "  timeout connect 5s\n"
            "  timeout client 30s\n"
            "  timeout server 30s\n"
            "frontend smtp\n"
            "  bind 127.0.0.1:%d\n"
            "  default_backend facteur\n"
            "backend facteur\n"
            "  server facteurd 127.0.0.1:%d %s\n"
            % (self.port, backend_port, send_proxy))
        self.proc = subprocess.Popen([HAPROXY, "-f", str(self.cfg), "-db"],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited: %s" % self.proc.returncode)
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        h.wait_for(listening, timeout=h.START_TIMEOUT, what="haproxy listening")

    def client(self, source):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(h.IO_TIMEOUT)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        return Wrapped(s)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture
def haproxy(tmp_path):
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy is not installed (scripts/install-deps.sh)")
    started = []

    def factory(backend_port, send_proxy):
        hp = HAProxy(tmp_path, backend_port, send_proxy)
        started.append(hp)
        return hp
    yield factory
    for hp in started:
        hp.stop()


def received_headers(msg):
    return [v.decode(errors="replace") for n, v in h.header_block(msg)
            if n.strip().lower() == b"received"]


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_client_address_is_the_client(make_proxied, haproxy, send_proxy):
    p = make_proxied()
    hp = haproxy(p.proxy_port, send_proxy)

    # 127.0.0.5 is in relay_networks: through the balancer it may relay,
    # and its message carries its own address.
    with hp.client(RELAYING_CLIENT) as c:
        assert c.banner.code == 220, c.banner
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
        r = c.cmd("RCPT TO:<someone@elsewhere.example>")
        assert r.code == 250, r
        assert c.cmd("RSET").code == 250
        r = c.send_message("sender@example.org", ["user@localhost"],
                           h.make_message(subject="through haproxy"), ehlo=False)
        assert r.code == 250, r
        c.cmd("QUIT")
    p.d.wait_event("connect", client=RELAYING_CLIENT)
    msg = p.d.wait_messages("user@localhost")[0]
    rec = received_headers(msg)
    assert "[%s]" % RELAYING_CLIENT in rec[0], rec

    # 127.0.0.6 is not, though the balancer (127.0.0.1) is loopback.
    with hp.client(OTHER_CLIENT) as c:
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
        r = c.cmd("RCPT TO:<someone@elsewhere.example>")
        assert r.code == 554 and r.enhanced == "5.7.1", r
        c.cmd("QUIT")
    p.d.wait_event("connect", client=OTHER_CLIENT)
    assert not p.d.events("proxy_error")


def test_haproxy_health_checks_keep_the_balancer_address(make_proxied, haproxy):
    # HAProxy's checks with check-send-proxy carry a v2 LOCAL header: the
    # session is the balancer's own, under its own address.
    p = make_proxied(config={"proxy_networks": "127.0.0.9/32"})
    haproxy(p.proxy_port,
            "send-proxy-v2 source 127.0.0.9 check check-send-proxy inter 300ms")
    p.d.wait_event("connect", client="127.0.0.9")
    assert not p.d.events("proxy_error")


# --------------------------------------------------------------------------
# raw headers

def test_v1_header_with_pipelined_command(make_proxied):
    p = make_proxied()
    s = p.connect()
    # The client's first octets come in the same segment as the header:
    # the session must see them.
    s.sendall(v1_header("192.0.2.44") + b"EHLO client.test\r\n")
    c = Wrapped(s)
    assert c.banner.code == 220
    assert c.reply().code == 250
    c.cmd("QUIT")
    c.close()
    p.d.wait_event("connect", client="192.0.2.44")


def test_v2_header_split_over_many_packets(make_proxied):
    p = make_proxied()
    s = p.connect()
    header = v2_header(tlvs=b"\x01\x00\x04smtp" + b"\x04\x00\x03abc")
    for i in range(len(header)):
        s.send(header[i:i + 1])
        time.sleep(0.01)
    c = Wrapped(s)
    assert c.banner.code == 220
    c.cmd("QUIT")
    c.close()
    p.d.wait_event("connect", client="192.0.2.44")


def test_v2_ipv6_source(make_proxied):
    p = make_proxied()
    s = p.connect()
    block = socket.inet_pton(socket.AF_INET6, "2001:db8::44") \
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack(">HH", 1, 25)
    s.sendall(v2_header(family=0x21, block=block))
    c = Wrapped(s)
    assert c.banner.code == 220
    c.cmd("QUIT")
    c.close()
    p.d.wait_event("connect", client="2001:db8::44")


def test_v2_local_keeps_the_peer_address(make_proxied):
    p = make_proxied(config={"relay_networks": BALANCER + "/32"})
    s = p.connect()
    # A balancer's health check: LOCAL, with an address block to ignore.
    s.sendall(v2_header(command=0x20))
    c = Wrapped(s)
    assert c.banner.code == 220
    c.cmd("QUIT")
    c.close()
    p.d.wait_event("connect", client=BALANCER)
    assert not p.d.events("connect", client="192.0.2.44")


def test_peer_outside_proxy_networks_is_closed_without_banner(make_proxied):
    p = make_proxied()
    s = p.connect(source="127.0.0.7")
    s.sendall(v1_header())
    closed_without_banner(s)
    ev = p.d.wait_event("proxy_error", client="127.0.0.7")[0]
    assert "proxy_networks" in ev["reason"], ev
    assert not p.d.events("connect", client="192.0.2.44")


BAD_INPUT = {
    "junk": b"EHLO client.test\r\n",
    "tls_hello_first": b"\x16\x03\x01\x00\xa5\x01",
    "v1_oversized": b"PROXY UNKNOWN " + b"x" * 200,
    "v1_bad_port": b"PROXY TCP4 192.0.2.44 192.0.2.1 040000 25\r\n",
    "v2_unknown_family": v2_header(family=0x41),
    "v2_unix_family": v2_header(family=0x31, block=bytes(216)),
    "v2_unknown_command": v2_header(command=0x22),
    "v2_unknown_version": v2_header(command=0x11),
    "v2_too_long": V2_SIGNATURE + b"\x21\x11\xff\xff",
    "v2_bad_tlv": v2_header(tlvs=b"\x01\x00\x09ab"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_header_is_closed_at_once_without_banner(make_proxied, name):
    p = make_proxied()
    s = p.connect()
    started = time.monotonic()
    s.sendall(BAD_INPUT[name])
    closed_without_banner(s)
    assert time.monotonic() - started < 5
    p.d.wait_event("proxy_error", client=BALANCER)
    assert not p.d.events("connect", client="192.0.2.44")


def test_truncated_header_then_close(make_proxied):
    p = make_proxied()
    s = p.connect()
    s.sendall(v1_header()[:20])
    s.shutdown(socket.SHUT_WR)
    closed_without_banner(s)
    ev = p.d.wait_event("proxy_error", client=BALANCER)[0]
    assert "closed" in ev["reason"], ev


def test_slow_header_is_closed_at_the_deadline_while_others_are_served(make_proxied):
    p = make_proxied()
    slow = p.connect()
    slow.sendall(v1_header()[:10])
    started = time.monotonic()
    # Meanwhile a whole session through the same listener.
    s = p.connect()
    s.sendall(v1_header("192.0.2.45"))
    c = Wrapped(s)
    assert c.banner.code == 220
    assert c.ehlo().code == 250
    c.cmd("QUIT")
    c.close()
    assert time.monotonic() - started < 5
    closed_without_banner(slow, timeout=20)
    waited = time.monotonic() - started
    assert 9 <= waited <= 14, waited
    ev = p.d.wait_event("proxy_error", client=BALANCER)[0]
    assert "deadline" in ev["reason"], ev


def test_per_ip_limit_counts_the_client_from_the_header(make_proxied):
    p = make_proxied(config={"max_connections_per_ip": 1})
    first = p.connect()
    first.sendall(v1_header("192.0.2.50"))
    a = Wrapped(first)
    assert a.banner.code == 220
    # Same client through the same balancer: past its limit.
    second = p.connect()
    second.sendall(v1_header("192.0.2.50"))
    b = Wrapped(second)
    assert b.banner.code == 421 and b.banner.enhanced == "4.7.0", b.banner
    b.close()
    # Another client through the same balancer: served.
    third = p.connect()
    third.sendall(v1_header("192.0.2.51"))
    c = Wrapped(third)
    assert c.banner.code == 220
    for x in (a, c):
        x.cmd("QUIT")
        x.close()
    # The places are given back when the sessions end.
    def served_again():
        s = p.connect()
        s.sendall(v1_header("192.0.2.50"))
        w = Wrapped(s)
        code = w.banner.code
        w.close()
        return code == 220
    h.wait_for(served_again, what="192.0.2.50 served again")


def test_smtps_handshake_starts_after_the_header(make_proxied, tmp_path):
    cert, key = th.make_cert(tmp_path)
    port = h.free_port()
    p = make_proxied(config={"tls_cert": str(cert), "tls_key": str(key)})
    p.d.settings["listen"] = p.d.settings["listen"] + ["127.0.0.1:%d/smtps+proxy" % port]
    p.d.stop_ok()
    p.d.start()
    s = p.connect(port=port)
    s.sendall(v2_header())
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t = ctx.wrap_socket(s)
    c = Wrapped(t)
    assert c.banner.code == 220
    c.cmd("QUIT")
    c.close()
    p.d.wait_event("connect", client="192.0.2.44")


def test_pop3_proxy_client_in_the_pop3_log(make_proxied):
    p = make_proxied(pop3=True)
    h.wait_for(lambda: p.d.events("listening"), what="listening")
    s = p.connect(port=p.pop3_port)
    s.sendall(v1_header("198.51.100.7"))
    s.settimeout(h.IO_TIMEOUT)
    assert s.recv(100).startswith(b"+OK")
    s.sendall(b"QUIT\r\n")
    s.recv(100)
    s.close()
    p.d.wait_event("pop3_connect", client="198.51.100.7")


def test_proxy_errors_are_counted(make_proxied):
    p = make_proxied(config={"metrics_listen": "127.0.0.1:%d" % h.free_port()})
    port = int(p.d.settings["metrics_listen"].rsplit(":", 1)[1])
    s = p.connect(source="127.0.0.7")
    closed_without_banner(s)
    s = p.connect()
    s.sendall(b"junk\r\n")
    closed_without_banner(s)
    p.d.wait_event("proxy_error", client=BALANCER)
    m = th.metrics(port)
    assert m["facteur_proxy_errors_total"] == 2, m


# --------------------------------------------------------------------------
# the key

def test_proxy_networks_from_file_environment_and_errors(tmp_path):
    conf = tmp_path / "facteur.conf"
    conf.write_text("listen = 127.0.0.1:2525/smtp+proxy\n"
                    "proxy_networks = 10.0.0.0/8\n"
                    "spool_dir = %s\n" % (tmp_path / "spool"))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "listen = 127.0.0.1:2525/smtp+proxy" in lines
    # printed among the keys added after the core ones, past flush_method
    keys = [line.split(" = ")[0] for line in lines]
    assert "proxy_networks = 10.0.0.0/8" in lines, lines
    assert keys.index("proxy_networks") > keys.index("flush_method"), keys

    r = h.run_facteurd(["-n", "-c", str(conf)],
                       env={"FACTEUR_PROXY_NETWORKS": "192.0.2.10, 2001:db8::/32"})
    assert r.returncode == 0, r.stderr
    assert "proxy_networks = 192.0.2.10/32, 2001:db8::/32" in r.stdout.decode()

    r = h.run_facteurd(["-n", "-c", str(conf)],
                       env={"FACTEUR_PROXY_NETWORKS": "10.0.0.0/33"})
    assert r.returncode == h.EX_CONFIG, r
    assert b"proxy_networks" in r.stderr
    r = h.run_facteurd(["-n", "-c", str(conf)],
                       env={"FACTEUR_LISTEN": "127.0.0.1:2525/smtp+proxi"})
    assert r.returncode == h.EX_CONFIG, r
