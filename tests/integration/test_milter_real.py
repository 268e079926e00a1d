"""Real milters from Debian, started on loopback by the tests and stopped
by PID: rspamd's proxy worker in milter mode (a GTUBE message is
rejected with rspamd's text, a clean one gets rspamd's headers) and
OpenDKIM in verify mode (a message signed with a test key, its TXT
record served by dnsmasq on loopback and looked up there by OpenDKIM, gets
Authentication-Results dkim=pass; the same message tampered with gets
dkim=fail). The configurations written here are the ones
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


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
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


@pytest.fixture
def opendkim(tmp_path):
    """OpenDKIM verifying with its own resolver (Debian builds it with
    libunbound) sent to a dnsmasq on loopback that serves the key's TXT
    record; yields (milter address, sign(text), that dnsmasq)."""
    dkim = pytest.importorskip("dkim")
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
    dns = r.Dnsmasq(tmp_path / "dns", txt=[(KEY_NAME, strings)]).start()
    # libunbound answers names under test. itself, as empty (RFC 6761),
    # and never sends the query out: test domains need this one line
    unbound = tmp_path / "unbound.conf"
    unbound.write_text('server:\n\tlocal-zone: "test." nodefault\n')
    port = h.free_port()
    conf = tmp_path / "opendkim.conf"
    conf.write_text("Mode v\nSocket inet:%d@127.0.0.1\n"
                    "Nameservers 127.0.0.1@%d\nResolverConfiguration %s\n"
                    "AuthservID mx.example.test\nAlwaysAddARHeader yes\n"
                    "Syslog no\nBackground no\nPidFile %s\n"
                    % (port, dns.port, unbound, tmp_path / "opendkim.pid"))
    log = open(tmp_path / "opendkim.log", "wb")
    proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    log.close()
    try:
        wait_port(port, proc, "opendkim", 30)

        def sign(text):
            sig = dkim.sign(text.encode(), SELECTOR.encode(), DOMAIN.encode(),
                            key.read_bytes(), include_headers=[b"from", b"to", b"subject"])
            return sig.decode() + text
        yield "inet:127.0.0.1:%d" % port, sign, dns
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


@pytest.fixture
def clamav(tmp_path_factory):
    """clamd with a database of one signature (EICAR's) on a UNIX socket and
    clamav-milter on a loopback port handing it the messages (both start in
    a second or two); yields (milter address, clamd's process, the milter's
    process) for a test to stop them."""
    if not (os.path.exists(CLAMD) and os.path.exists(CLAMAV_MILTER)):
        pytest.skip("clamav-daemon and clamav-milter are not installed "
                    "(scripts/install-deps.sh installs them)")
    top = tmp_path_factory.mktemp("clamav")
    (top / "db").mkdir()
    (top / "db" / "eicar.ndb").write_text(EICAR_NDB)
    sock = top / "clamd.sock"
    (top / "clamd.conf").write_text(
        "Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\n"
        "LogFile %s\nPidFile %s\n"
        % (sock, top / "db", top, top / "clamd.log", top / "clamd.pid"))
    port = h.free_port()
    (top / "clamav-milter.conf").write_text(
        "Foreground yes\nMilterSocket inet:%d@127.0.0.1\nClamdSocket unix:%s\n"
        "OnInfected Reject\nRejectMsg Virus found: %%v\nAddHeader Replace\n"
        "TemporaryDirectory %s\n"
        "LogFile %s\nLogInfected Basic\nPidFile %s\n"
        % (port, sock, top, top / "clamav-milter.log", top / "clamav-milter.pid"))
    clamd = start_logged([CLAMD, "-c", str(top / "clamd.conf")], top / "clamd.out")
    milter = None
    try:
        wait_socket(sock, clamd, "clamd", 60)
        milter = start_logged([CLAMAV_MILTER, "-c", str(top / "clamav-milter.conf")],
                              top / "clamav-milter.out")
        wait_port(port, milter, "clamav-milter", 30)
        yield "inet:127.0.0.1:%d" % port, clamd, milter
    finally:
        if milter is not None:
            stop(milter)
        stop(clamd)


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
    address, _, _ = clamav
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("eicar.com", EICAR, "virus").encode())
    assert 500 <= reply.code < 600, reply
    # the milter's own text, naming what clamd found
    assert "Virus found: Facteur.Test.EICAR" in reply.text, reply
    d.wait_event("rejected", reason="milter", milter=address, action="reject")
    assert d.maildir_messages(RCPT) == []


def test_clamav_passes_clean_mail_with_its_header(make_daemon, clamav):
    address, _, _ = clamav
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("notes.txt", "Nothing to see.\n",
                                               "clean").encode())
    assert reply.code == 250, reply
    msg = h.parse_message(d.wait_messages(RCPT)[0])
    assert "clean" in (msg["X-Virus-Status"] or "").lower(), msg.items()
    assert "clamav-milter" in (msg["X-Virus-Scanned"] or ""), msg.items()
    assert "See the file." in msg.get_payload()[0].get_payload()


def test_clamav_without_clamd_defers_then_default_decides(make_daemon, clamav):
    address, clamd, milter = clamav
    d = make_daemon(extra_lines=["milter = %s timeout=60s" % address])
    stop(clamd)
    # clamav-milter answers, without a scanner: its OnFail (Defer) tempfails
    with d.raw() as c:
        reply = c.send_message("alice@signed.test", [RCPT],
                               with_attachment("notes.txt", "Nothing.\n", "noscan").encode())
    assert reply.code == 451, reply
    d.wait_event("rejected", reason="milter", milter=address, action="tempfail")
    assert d.events("milter_error", milter=address) == []
    # clamav-milter down too: facteurd's default= decides, tempfail unless set
    stop(milter)
    for default, code in (("", 451), (" default=accept", 250)):
        d = make_daemon(extra_lines=["milter = %s timeout=10s%s" % (address, default)])
        reply = first_refusal(d, with_attachment("notes.txt", "Nothing.\n", "down"))
        assert reply.code == code, (default, reply)
        d.wait_event("milter_error", milter=address)
