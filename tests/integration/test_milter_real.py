"""Real milters from Debian, started on loopback by the tests and stopped
by PID: rspamd's proxy worker in milter mode (a GTUBE message is
rejected with rspamd's text, a clean one gets rspamd's headers);
OpenDKIM in verify mode (a message signed with a test key, its TXT
record served by dnsmasq on loopback and looked up there by OpenDKIM, gets
Authentication-Results dkim=pass; the same message tampered with gets
dkim=fail); OpenDMARC after OpenDKIM (an unsigned message from a domain
publishing p=reject is refused, a signed one gets dmarc=pass); and
clamav-milter with clamd, offline, its database one signature of the EICAR
test file (an infected attachment is refused with clamav-milter's text, a
clean message gets its X-Virus headers, clamd down or the milter down
tempfail). The configurations written here are the ones
docs/operations.md shows."""

import os
import shutil
import subprocess

import pytest

import facteur_harness as h
import relay_harness as r

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
RCPT = "user@localhost"


def message(subject, body, msgid):
    return ("From: Alice <alice@signed.test>\r\nTo: user@localhost\r\n"
            "Subject: %s\r\nMessage-ID: <%s@signed.test>\r\n"
            "Date: Mon, 07 Dec 2026 18:00:00 +0000\r\n\r\n%s" % (subject, msgid, body))


def wait_port(port, proc, what, timeout):
    import socket

    def up():
        if proc.poll() is not None:
            raise h.HarnessError("%s exited with %s" % (what, proc.returncode))
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0
    h.wait_for(up, timeout, what=what)


def wait_socket(path, proc, what, timeout):
    import socket

    def up():
        if proc.poll() is not None:
            raise h.HarnessError("%s exited with %s" % (what, proc.returncode))
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(str(path)) == 0
    h.wait_for(up, timeout, what=what)


def start_logged(args, log_path):
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


def conf_file(path, settings):
    """A "Key value" a line configuration file of (key, value) pairs, the
    format of OpenDKIM's, OpenDMARC's, clamd's and clamav-milter's."""
    path.write_text("".join("%s %s\n" % kv for kv in settings))
    return path


def stop(*procs):
    """SIGTERM to each, then wait for each: libmilter's milters look at
    their stop flag every 5 seconds, in parallel that is 5 seconds in all."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for proc in live:
        proc.terminate()
    for proc in live:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- rspamd

RSPAMD_OVERRIDES = {
    "worker-proxy.inc": """milter = yes;
timeout = 120s;
upstream "local" {
  default = yes;
  self_scan = yes;
}
bind_socket = "127.0.0.1:%(port)d";
count = 1;
spam_header = "X-Spam";
""",
    "worker-normal.inc": "enabled = false;\n",
    "worker-fuzzy.inc": "enabled = false;\n",
    "worker-controller.inc": 'bind_socket = "127.0.0.1:%(controller)d";\n',
    "logging.inc": 'type = "console";\nlevel = "notice";\n',
    "options.inc": 'dns { nameserver = ["127.0.0.1:%(dns)d"]; timeout = 1s; '
                   'retransmits = 1; }\n',
    # loopback clients are "local", whose mail rspamd leaves unmarked
    "milter_headers.conf": "extended_spam_headers = true;\nskip_local = false;\n"
                           "skip_authenticated = false;\n",
}
# modules that need Redis or the Internet
RSPAMD_OFF = ["fuzzy_check", "rbl", "surbl", "asn", "emails", "neural", "ratelimit",
              "greylist", "phishing", "replies", "history_redis", "dkim_signing", "arc"]


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    if not os.path.exists(RSPAMD):
        pytest.skip("rspamd is not installed (scripts/install-deps.sh installs it)")
    top = tmp_path_factory.mktemp("rspamd")
    local = top / "local"
    for d in ("override.d", "local.d", "db", "run", "log"):
        (local / d if d.endswith(".d") else top / d).mkdir(parents=True)
    ports = {"port": h.free_port(), "controller": h.free_port(),
             "dns": r.free_dns_port()}
    for name, text in RSPAMD_OVERRIDES.items():
        (local / "override.d" / name).write_text(text % ports)
    for name in RSPAMD_OFF:
        (local / "override.d" / (name + ".conf")).write_text("enabled = false;\n")
    log = open(top / "rspamd.log", "wb")
    proc = subprocess.Popen(
        [RSPAMD, "-f", "-i", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
         "--var=LOCAL_CONFDIR=%s" % local, "--var=DBDIR=%s" % (top / "db"),
         "--var=RUNDIR=%s" % (top / "run"), "--var=LOGDIR=%s" % (top / "log")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        # its regular expressions compile at start: slow on a busy machine
        wait_port(ports["port"], proc, "rspamd", 240)
        yield "inet:127.0.0.1:%d" % ports["port"]
    finally:
        stop(proc)


def test_rspamd_rejects_gtube_with_its_text(make_daemon, rspamd):
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % rspamd])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               message("spam", GTUBE + "\r\n", "gtube").encode())
    assert reply.code == 554 and "Gtube pattern" in reply.text, reply
    d.wait_event("rejected", reason="milter", milter=rspamd, action="reject")
    assert d.maildir_messages(RCPT) == []


def test_rspamd_adds_its_headers_to_clean_mail(make_daemon, rspamd):
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % rspamd])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               message("hello", "Just a friendly note.\r\n", "clean").encode())
    assert reply.code == 250, reply
    msg = h.parse_message(d.wait_messages(RCPT)[0])
    assert msg["X-Spamd-Result"] is not None, msg.keys()
    assert msg["X-Rspamd-Server"] is not None and msg["X-Rspamd-Queue-Id"] is not None
    assert msg.get_payload() == "Just a friendly note.\n"


# ---------------------------------------------------------------- OpenDKIM

SELECTOR, DOMAIN = "test", "signed.test"
KEY_NAME = "%s._domainkey.%s" % (SELECTOR, DOMAIN)


def dkim_key(tmp_path):
    """A 2048-bit key for SELECTOR and DOMAIN: (its PEM file, the strings of
    its TXT record)."""
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    import base64
    txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    # a 2048-bit key's record is longer than one string (255 octets at most)
    strings = [txt[i:i + 255] for i in range(0, len(txt), 255)]
    assert len(strings) == 2, strings
    return key, strings


def start_opendkim(tmp_path, dns_host, dns_port):
    """OpenDKIM verifying with its own resolver (Debian builds it with
    libunbound) sent to the DNS server at dns_host, dns_port; returns (its
    process, its milter address)."""
    # libunbound answers names under test. itself, as empty (RFC 6761),
    # and never sends the query out: test domains need this one line
    unbound = tmp_path / "unbound.conf"
    unbound.write_text('server:\n\tlocal-zone: "test." nodefault\n')
    port = h.free_port()
    conf = conf_file(tmp_path / "opendkim.conf", [
        ("Mode", "v"), ("Socket", "inet:%d@127.0.0.1" % port),
        ("Nameservers", "%s@%d" % (dns_host, dns_port)), ("ResolverConfiguration", unbound),
        ("AuthservID", "mx.example.test"), ("AlwaysAddARHeader", "yes"),
        ("Syslog", "no"), ("Background", "no"), ("PidFile", tmp_path / "opendkim.pid")])
    proc = start_logged([OPENDKIM, "-f", "-x", str(conf)], tmp_path / "opendkim.log")
    try:
        wait_port(port, proc, "opendkim", 30)
    except BaseException:
        stop(proc)
        raise
    return proc, "inet:127.0.0.1:%d" % port


def signer(key):
    dkim = pytest.importorskip("dkim")

    def sign(text):
        sig = dkim.sign(text.encode(), SELECTOR.encode(), DOMAIN.encode(),
                        key.read_bytes(), include_headers=[b"from", b"to", b"subject"])
        return sig.decode() + text
    return sign


@pytest.fixture
def opendkim(tmp_path):
    """OpenDKIM verifying, the key's TXT record served by a dnsmasq on
    loopback; yields (milter address, sign(text), that dnsmasq)."""
    pytest.importorskip("dkim")
    key, strings = dkim_key(tmp_path)
    dns = r.Dnsmasq(tmp_path / "dns", txt=[(KEY_NAME, strings)]).start()
    proc = None
    try:
        proc, address = start_opendkim(tmp_path, "127.0.0.1", dns.port)
        yield address, signer(key), dns
    finally:
        stop(proc)
        dns.stop()


def auth_results(d):
    msg = h.parse_message(d.wait_messages(RCPT)[0])
    return " ".join(msg.get_all("Authentication-Results") or [])


def test_opendkim_passes_a_signed_message(make_daemon, opendkim):
    address, sign, dns = opendkim
    d = make_daemon(extra_lines=["milter = %s timeout=30s" % address])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               sign(message("signed", "The body.\r\n", "ok")).encode())
    assert reply.code == 250, reply
    results = auth_results(d)
    assert "mx.example.test" in results and "dkim=pass" in results, results
    assert dns.queries(KEY_NAME, "TXT") >= 1, dns.log_tail()


def test_opendkim_fails_a_tampered_message(make_daemon, opendkim):
    address, sign, dns = opendkim
    d = make_daemon(extra_lines=["milter = %s timeout=30s" % address])
    signed = sign(message("signed", "The body.\r\n", "bad"))
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               signed.replace("The body.", "The b0dy.").encode())
    assert reply.code == 250, reply
    results = auth_results(d)
    # the key was found: the message, not the look-up, failed
    assert "dkim=fail" in results and "key not found" not in results, results
    assert dns.queries(KEY_NAME, "TXT") >= 1, dns.log_tail()


# ---------------------------------------------------------------- clamav-milter

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
CLAMAV_MILTER = shutil.which("clamav-milter") or "/usr/sbin/clamav-milter"
# the anti-virus test file: 68 octets that every scanner reports
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# no signature download offline: clamd loads this one body signature
# (name:any target type:any offset:the octets in hex), reported by clamd
# as "Facteur.Test.EICAR.UNOFFICIAL"
EICAR_NDB = "Facteur.Test.EICAR:0:*:%s\n" % EICAR.encode().hex()


def start_clamav(top):
    """clamd with a database of one signature (EICAR's) on a UNIX socket and
    clamav-milter on a loopback port handing it the messages (both start in
    a second or two); returns (milter address, clamd's process, the
    milter's process)."""
    if not (os.path.exists(CLAMD) and os.path.exists(CLAMAV_MILTER)):
        pytest.skip("clamav-daemon and clamav-milter are not installed "
                    "(scripts/install-deps.sh installs them)")
    (top / "db").mkdir()
    (top / "db" / "eicar.ndb").write_text(EICAR_NDB)
    sock = top / "clamd.sock"
    clamd_conf = conf_file(top / "clamd.conf", [
        ("Foreground", "yes"), ("LocalSocket", sock), ("DatabaseDirectory", top / "db"),
        ("TemporaryDirectory", top), ("LogFile", top / "clamd.log"),
        ("PidFile", top / "clamd.pid")])
    port = h.free_port()
    milter_conf = conf_file(top / "clamav-milter.conf", [
        ("Foreground", "yes"), ("MilterSocket", "inet:%d@127.0.0.1" % port),
        ("ClamdSocket", "unix:%s" % sock), ("OnInfected", "Reject"),
        ("RejectMsg", "Virus found: %v"), ("AddHeader", "Replace"),
        ("TemporaryDirectory", top), ("LogFile", top / "clamav-milter.log"),
        ("LogInfected", "Basic"), ("PidFile", top / "clamav-milter.pid")])
    clamd = start_logged([CLAMD, "-c", str(clamd_conf)], top / "clamd.out")
    milter = None
    try:
        wait_socket(sock, clamd, "clamd", 60)
        milter = start_logged([CLAMAV_MILTER, "-c", str(milter_conf)],
                              top / "clamav-milter.out")
        wait_port(port, milter, "clamav-milter", 30)
    except BaseException:
        stop(milter, clamd)
        raise
    return "inet:127.0.0.1:%d" % port, clamd, milter


@pytest.fixture(scope="module")
def clamav(tmp_path_factory):
    address, clamd, milter = start_clamav(tmp_path_factory.mktemp("clamav"))
    try:
        yield address
    finally:
        stop(milter, clamd)


def with_attachment(name, content, msgid):
    import base64
    return ("From: Alice <alice@signed.test>\r\nTo: user@localhost\r\n"
            "Subject: a file\r\nMessage-ID: <%s@signed.test>\r\n"
            "Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n"
            "--b1\r\nContent-Type: application/octet-stream\r\n"
            'Content-Disposition: attachment; filename="%s"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--b1--\r\n"
            % (msgid, name, base64.b64encode(content.encode()).decode()))


def first_refusal(d, text):
    """The first refusal of a transaction, or its last reply: a milter
    that cannot be reached refuses the MAIL command already."""
    with d.raw() as c:
        c.ehlo()
        for cmd in ("MAIL FROM:<alice@signed.test>", "RCPT TO:<%s>" % RCPT, "DATA"):
            reply = c.cmd(cmd)
            if reply.code >= 400:
                return reply
        c.send(h.dot_stuff(text.encode()))
        return c.reply()


def test_clamav_rejects_eicar(make_daemon, clamav):
    address = clamav
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("eicar.com", EICAR, "virus").encode())
    # the milter's own text, naming what clamd found
    assert reply.code == 550 and reply.enhanced == "5.7.1", reply
    assert "Virus found: Facteur.Test.EICAR" in reply.text, reply
    d.wait_event("rejected", reason="milter", milter=address, action="reject")
    assert d.maildir_messages(RCPT) == []


def test_clamav_passes_clean_mail_with_its_header(make_daemon, clamav):
    address = clamav
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("notes.txt", "Nothing to see.\n",
                                               "clean").encode())
    assert reply.code == 250, reply
    msg = h.parse_message(d.wait_messages(RCPT)[0])
    assert msg["X-Virus-Status"] == "Clean", msg.items()
    assert "clamav-milter" in (msg["X-Virus-Scanned"] or ""), msg.items()
    assert "See the file." in msg.get_payload()[0].get_payload()


def test_clamav_without_clamd_defers_then_default_decides(make_daemon, tmp_path):
    address, clamd, milter = start_clamav(tmp_path)
    try:
        clamd_down(make_daemon, address, clamd, milter)
    finally:
        stop(milter, clamd)


def clamd_down(make_daemon, address, clamd, milter):
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    stop(clamd)
    # clamav-milter answers, without a scanner: its OnFail (Defer) tempfails
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("notes.txt", "Nothing.\n", "noscan").encode())
    assert reply.code == 451 and reply.enhanced == "4.7.1", reply
    d.wait_event("rejected", reason="milter", milter=address, action="tempfail")
    assert d.events("milter_error", milter=address) == []
    # clamav-milter down too: facteurd's default= decides, tempfail unless set
    stop(milter)
    for default, code in (("", 451), (" default=accept", 250)):
        d = make_daemon(extra_lines=["milter = %s timeout=10s%s" % (address, default)])
        reply = first_refusal(d, with_attachment("notes.txt", "Nothing.\n", "down"))
        assert reply.code == code, (default, reply)
        d.wait_event("milter_error", milter=address)


# ---------------------------------------------------------------- OpenDMARC

OPENDMARC = shutil.which("opendmarc") or "/usr/sbin/opendmarc"
DMARC_NAME = "_dmarc." + DOMAIN


class Port53Dnsmasq(r.Dnsmasq):
    """dnsmasq on port 53 of an address of its own in 127.0.0.0/8.
    OpenDMARC looks records up with libc's resolver (libresolv), whose
    /etc/resolv.conf names servers without a port: the test gives
    OpenDMARC a resolv.conf of its own (in a mount namespace) naming this
    address."""

    def __init__(self, workdir, **kw):
        import random
        for _ in range(100):
            host = "127.53.%d.%d" % (random.randrange(256), random.randrange(1, 255))
            if r._can_bind(host, 53, r.socket.SOCK_DGRAM) and \
                    r._can_bind(host, 53, r.socket.SOCK_STREAM):
                break
        else:
            raise h.HarnessError("no 127.53.x.y address free on port 53")
        self.host = host
        super().__init__(workdir, port=53, **kw)

    def args(self):
        return ["--listen-address=" + self.host if a == "--listen-address=127.0.0.1" else a
                for a in super().args()]

    def start(self, timeout=15.0):
        self.proc = start_logged(self.args(), self.log_path)

        def ready():
            if self.proc.poll() is not None:
                raise h.HarnessError("dnsmasq exited with %s:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            return r.dns_query(self.port, "ready-probe.test", "A", host=self.host,
                               timeout=0.3)
        try:
            h.wait_for(ready, timeout, what="dnsmasq on %s:53" % self.host)
        except BaseException:
            self.stop()
            raise
        return self


@pytest.fixture
def opendmarc(tmp_path):
    """OpenDKIM then OpenDMARC (RejectFailures true), the key's record and
    DOMAIN's DMARC record (p=reject) served by one dnsmasq; yields (the two
    milter addresses, sign(text), that dnsmasq)."""
    if not os.path.exists(OPENDMARC):
        pytest.skip("opendmarc is not installed (scripts/install-deps.sh installs it)")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("OpenDMARC's own resolv.conf needs a mount namespace (root)")
    pytest.importorskip("dkim")
    key, strings = dkim_key(tmp_path)
    dns = Port53Dnsmasq(tmp_path / "dns", txt=[(KEY_NAME, strings),
                                               (DMARC_NAME, ["v=DMARC1; p=reject"])]).start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver %s\noptions timeout:2 attempts:2\n" % dns.host)
    # OpenDMARC skips mail from its IgnoreHosts, 127.0.0.1 unless set
    ignore = tmp_path / "ignore.hosts"
    ignore.write_text("192.0.2.1\n")
    port = h.free_port()
    conf = conf_file(tmp_path / "opendmarc.conf", [
        ("Socket", "inet:%d@127.0.0.1" % port), ("AuthservID", "mx.example.test"),
        ("TrustedAuthservIDs", "mx.example.test"), ("RejectFailures", "true"),
        ("IgnoreHosts", ignore), ("SPFSelfValidate", "false"), ("Syslog", "false"),
        ("Background", "false"), ("PidFile", tmp_path / "opendmarc.pid")])
    dkim_proc = dmarc_proc = None
    try:
        dkim_proc, dkim_address = start_opendkim(tmp_path, dns.host, 53)
        # its own view of /etc/resolv.conf, the machine's left alone; exec
        # keeps the PID
        dmarc_proc = start_logged(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
             OPENDMARC, "-f", "-c", str(conf)], tmp_path / "opendmarc.log")
        wait_port(port, dmarc_proc, "opendmarc", 30)
        yield (dkim_address, "inet:127.0.0.1:%d" % port), signer(key), dns
    finally:
        stop(dmarc_proc, dkim_proc)
        dns.stop()


def dmarc_daemon(make_daemon, milters):
    dkim_address, dmarc_address = milters
    return make_daemon(extra_lines=["milter = %s timeout=30s default=accept" % dkim_address,
                                    "milter = %s timeout=30s" % dmarc_address])


def test_opendmarc_rejects_unsigned_mail_of_a_reject_domain(make_daemon, opendmarc):
    milters, _, dns = opendmarc
    d = dmarc_daemon(make_daemon, milters)
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               message("unsigned", "The body.\r\n", "nodkim").encode())
    assert reply.code == 550 and reply.enhanced == "5.7.1", reply
    assert "rejected by DMARC policy for signed.test" in reply.text, reply
    d.wait_event("rejected", reason="milter", milter=milters[1], action="reject")
    assert dns.queries(DMARC_NAME, "TXT") >= 1, dns.log_tail()
    assert d.maildir_messages(RCPT) == []


def test_opendmarc_passes_signed_mail(make_daemon, opendmarc):
    milters, sign, dns = opendmarc
    d = dmarc_daemon(make_daemon, milters)
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               sign(message("signed", "The body.\r\n", "dkim")).encode())
    assert reply.code == 250, reply
    results = auth_results(d)
    # OpenDMARC read OpenDKIM's result, added by the milter before it
    assert "dkim=pass" in results, results
    assert "dmarc=pass (p=reject dis=none) header.from=signed.test" in results, results
    assert dns.queries(DMARC_NAME, "TXT") >= 1, dns.log_tail()
