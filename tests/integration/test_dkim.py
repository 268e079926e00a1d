"""DKIM signing, checked only by independent implementations.

A facteurd signs with an RSA-2048 and an Ed25519 key made by
`facteurctl dkim-keygen`; the records it printed are served as TXT records
by dnsmasq on a loopback port. Every message relayed to a sink is verified
by dkimpy (python3-dkim, its DNS look-ups sent to that dnsmasq) and by
OpenDKIM (`opendkim -t` in verify mode, its libunbound resolver forwarding
to that dnsmasq). Both verify rsa-sha256 and ed25519-sha256 on Debian 12.
"""

import re
import signal
import subprocess
import time
from pathlib import Path

import dkim
import dns.resolver
import pytest

import facteur_harness as h
import relay_harness as rh

DOMAIN = "sign.test"
FACTEURCTL = h.BUILD_DIR / "facteurctl"
OPENDKIM = "/usr/sbin/opendkim"
SINK_IP = "127.0.0.2"
RCPT = "rcpt@remote.test"


def keygen(workdir, selector, *extra):
    """A key by facteurctl dkim-keygen; (path, the TXT record's strings)."""
    path = Path(workdir) / ("%s.pem" % selector)
    r = subprocess.run([str(FACTEURCTL), "dkim-keygen", DOMAIN, selector,
                        "--out", str(path)] + list(extra),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().strip()
    prefix = "%s._domainkey.%s. IN TXT " % (selector, DOMAIN)
    assert out.startswith(prefix), out
    strings = re.findall(r'"([^"]*)"', out[len(prefix):])
    assert all(len(s) <= 255 for s in strings), strings
    return path, strings


class TxtDnsmasq(rh.Dnsmasq):
    """The harness's dnsmasq with TXT records: (name, [strings])."""

    def __init__(self, workdir, txt):
        super().__init__(workdir)
        self.txt = txt

    def args(self):
        a = super().args()
        for name, strings in self.txt:
            a.append("--txt-record=%s,%s" % (name, ",".join(strings)))
        return a


class Verifiers:
    def __init__(self, workdir, dns_port):
        self.dir = Path(workdir)
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.port = dns_port
        self.resolver.lifetime = 5
        unbound = self.dir / "unbound.conf"
        # unbound answers test. itself (RFC 6761) unless told not to
        unbound.write_text("server:\n\tdo-not-query-localhost: no\n"
                           "\tlocal-zone: \"test.\" nodefault\n"
                           "forward-zone:\n\tname: \".\"\n"
                           "\tforward-addr: 127.0.0.1@%d\n" % dns_port)
        self.opendkim_conf = self.dir / "opendkim.conf"
        self.opendkim_conf.write_text("Mode v\nSyslog no\nResolverConfiguration %s\n"
                                      % unbound)
        self.count = 0

    def dnsfunc(self, name, timeout=5):
        try:
            answer = self.resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    def dkimpy(self, message):
        """{selector: verified} for each DKIM-Signature, by dkimpy."""
        d = dkim.DKIM(message)
        sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
        out = {}
        for i, sig in enumerate(sigs):
            sel = re.search(rb"\bs=([^;\s]+)", sig).group(1).decode()
            try:
                out[sel] = dkim.DKIM(message).verify(idx=i, dnsfunc=self.dnsfunc)
            except dkim.ValidationError:  # a body hash mismatch
                out[sel] = False
        return out

    def opendkim(self, message):
        """{selector: "pass"/"fail"/...} from OpenDKIM's
        Authentication-Results for the message."""
        self.count += 1
        path = self.dir / ("msg%d.eml" % self.count)
        # opendkim -t reads files in local form (LF), as on disk
        path.write_bytes(message.replace(b"\r\n", b"\n"))
        r = subprocess.run([OPENDKIM, "-x", str(self.opendkim_conf), "-vv", "-t",
                            str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        text = (r.stdout + r.stderr).decode(errors="replace")
        results = dict((s, res) for res, s in
                       re.findall(r"dkim=(\w+)[^\n]*?header\.s=([\w.-]+)", text))
        assert results, "no DKIM result from OpenDKIM:\n%s" % text
        return results

    def assert_signed(self, message, selectors=("rsa1", "ed1")):
        want = {s: True for s in selectors}
        assert self.dkimpy(message) == want, message[:2000]
        assert self.opendkim(message) == {s: "pass" for s in selectors}, \
            message[:2000]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    work = tmp_path_factory.mktemp("dkimkeys")
    rsa, rsa_txt = keygen(work, "rsa1")
    ed, ed_txt = keygen(work, "ed1", "--type", "ed25519")
    assert any("k=rsa" in s for s in rsa_txt) and len(rsa_txt) == 2, rsa_txt
    assert ed_txt[0].startswith("v=DKIM1; k=ed25519; p="), ed_txt
    dnsd = TxtDnsmasq(work / "dns", [("rsa1._domainkey." + DOMAIN, rsa_txt),
                                     ("ed1._domainkey." + DOMAIN, ed_txt)])
    dnsd.start()
    yield {"rsa": rsa, "ed": ed, "dns": dnsd,
           "verify": Verifiers(work, dnsd.port)}
    dnsd.stop()


@pytest.fixture
def signer(make_daemon, keys):
    """A sink on 127.0.0.2 and a facteurd relaying everything to it,
    signing for sign.test with both keys."""
    port = rh.free_common_port()
    sink = rh.ScriptedSMTP(SINK_IP, port).start()
    d = make_daemon(config={
        "dns_servers": keys["dns"].server,
        "tls_outbound": "none",
        "retry_min": "1s",
    }, extra_lines=[
        "route = * [%s]:%d" % (SINK_IP, port),
        "dkim_sign = %s rsa1 %s" % (DOMAIN, keys["rsa"]),
        "dkim_sign = %s ed1 %s" % (DOMAIN, keys["ed"]),
    ])
    d.sink = sink
    yield d
    sink.stop()


def relayed(d, data, sender="me@" + DOMAIN, count=1):
    d.send(sender=sender, recipients=[RCPT], data=data)
    msgs = d.sink.wait_messages(count, timeout=rh.RELAY_TIMEOUT)
    return msgs[count - 1].data


def message(headers, body):
    head = "".join("%s\r\n" % x for x in headers)
    if isinstance(body, str):
        body = body.encode()
    return head.encode() + b"\r\n" + body


BASIC = ["From: Me <me@sign.test>", "To: <rcpt@remote.test>", "Subject: hello",
         "Date: Mon, 7 Dec 2026 10:00:00 +0000", "Message-ID: <1@sign.test>"]


def test_rsa_and_ed25519_signatures_verify(signer, keys):
    got = relayed(signer, message(BASIC, "Hello,\r\n\r\nthe  body.\r\n"))
    assert got.count(b"DKIM-Signature:") == 2
    keys["verify"].assert_signed(got)
    accepted = signer.events("accepted")[-1]
    assert accepted["dkim"] == "signed:sign.test/rsa1,sign.test/ed1", accepted
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"a=rsa-sha256" in head and b"a=ed25519-sha256" in head
    assert b"c=relaxed/relaxed" in head and b"h=from:from:" in head


def test_a_message_changed_after_signing_fails(signer, keys):
    got = relayed(signer, message(BASIC, "Pay 10 euros.\r\n"))
    keys["verify"].assert_signed(got)
    forged = got.replace(b"Pay 10 euros.", b"Pay 99 euros.")
    v = keys["verify"]
    assert v.dkimpy(forged) == {"rsa1": False, "ed1": False}
    assert set(v.opendkim(forged).values()) == {"fail"}
    # an added From: is caught by the over-signing
    added = got.replace(b"From: Me", b"From: evil@other.test\r\nFrom: Me", 1)
    assert v.dkimpy(added) == {"rsa1": False, "ed1": False}


def test_8bit_body(signer, keys):
    body = "Caf\u00e9 cr\u00e8me \u00e0  la\tcarte, \u00fcber \u20ac\r\n".encode()
    with signer.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<me@sign.test> BODY=8BITMIME").code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(message(BASIC + ["Content-Type: text/plain; charset=utf-8",
                                            "Content-Transfer-Encoding: 8bit"], body)))
        assert c.reply().code == 250
    got = signer.sink.wait_messages(1, timeout=rh.RELAY_TIMEOUT)[0].data
    assert body in got
    keys["verify"].assert_signed(got)


def test_long_folded_headers(signer, keys):
    refs = " ".join("<ref%d.%s@sign.test>" % (i, "x" * 20) for i in range(60))
    headers = BASIC[:2] + [
        "Subject: " + " ".join("word%d" % i for i in range(150)).replace(
            "word50 ", "word50\r\n\t  ").replace("word100 ", "word100\r\n "),
        "References: " + refs.replace("> <", ">\r\n\t<"),
        "In-Reply-To: <ref59.x@sign.test>",
    ] + BASIC[3:]
    got = relayed(signer, message(headers, "folded\r\n"))
    keys["verify"].assert_signed(got)
    assert b"references" in got.split(b"\r\n\r\n", 1)[0].lower()


def test_trailing_blank_lines_and_spaces(signer, keys):
    got = relayed(signer, message(BASIC, "text  \t\r\n\r\n \r\n\r\n\r\n\r\n"))
    keys["verify"].assert_signed(got)


def test_empty_body(signer, keys):
    got = relayed(signer, message(BASIC, ""))
    keys["verify"].assert_signed(got)


def test_odd_case_header_names(signer, keys):
    headers = ["fROM: Me <me@sign.test>", "TO: <rcpt@remote.test>",
               "sUbJeCt: odd case", "DATE: Mon, 7 Dec 2026 10:00:00 +0000",
               "message-ID: <odd@sign.test>"]
    got = relayed(signer, message(headers, "odd\r\n"))
    keys["verify"].assert_signed(got)


def test_from_a_subdomain_is_signed_for_the_domain(signer, keys):
    headers = ["From: Deep <me@deep.sub.sign.test>"] + BASIC[1:]
    got = relayed(signer, message(headers, "sub\r\n"), sender="me@deep.sub.sign.test")
    assert b"d=sign.test;" in got
    keys["verify"].assert_signed(got)


def test_another_domain_is_not_signed(signer, keys):
    headers = ["From: <me@notsign.test>"] + BASIC[1:]
    got = relayed(signer, message(headers, "x\r\n"), sender="me@notsign.test")
    assert b"DKIM-Signature" not in got
    assert signer.events("accepted")[-1]["dkim"] == "unsigned:no-key-for-domain"


def test_bdat(signer, keys):
    data = message(BASIC, "chunked\r\n" * 100)
    half = len(data) // 2
    with signer.raw() as c:
        ehlo = c.ehlo()
        assert "CHUNKING" in ehlo.text, ehlo
        assert c.cmd("MAIL FROM:<me@sign.test>").code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        c.send(b"BDAT %d\r\n" % half + data[:half])
        assert c.reply().code == 250
        c.send(b"BDAT %d LAST\r\n" % (len(data) - half) + data[half:])
        assert c.reply().code == 250
    got = signer.sink.wait_messages(1, timeout=rh.RELAY_TIMEOUT)[0].data
    keys["verify"].assert_signed(got)


def test_twenty_mebibytes(signer, keys):
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz  ABCDEFGHIJKLMNOPQRSTUVWXYZ \r\n"
    body = line * (20 * 1024 * 1024 // len(line))
    got = relayed(signer, message(BASIC, body))
    assert len(got) > 20 * 1000 * 1000
    keys["verify"].assert_signed(got)


def test_message_just_under_the_inline_limit(signer, keys):
    # small bodies are kept in memory until the commit; the signatures
    # push this one over into a file of its own
    head = message(BASIC, "")
    body = b"x" * 70 + b"\r\n"
    body = body * ((64 * 1024 - 600 - len(head)) // len(body))
    got = relayed(signer, message(BASIC, body))
    keys["verify"].assert_signed(got)


def test_no_from_or_several_accepted_unsigned(signer, keys):
    relayed(signer, message(BASIC[1:], "no from\r\n"))
    got = relayed(signer, message(BASIC + ["From: <two@sign.test>"], "two\r\n"),
                  count=2)
    assert b"DKIM-Signature" not in got
    reasons = [e["reason"] for e in signer.events("dkim_unsigned")]
    assert reasons == ["no-from", "several-from"], reasons
    dkims = [e["dkim"] for e in signer.events("accepted")]
    assert dkims == ["unsigned:no-from", "unsigned:several-from"]
    r = subprocess.run([str(FACTEURCTL), "-c", str(signer.conf_path), "stats"],
                       stdout=subprocess.PIPE, env=h.clean_env(), timeout=60)
    assert b'facteur_dkim_signatures_total{result="skipped"} 2' in r.stdout, r.stdout


def test_untrusted_client_is_not_signed(make_daemon, keys):
    d = make_daemon(config={"relay_networks": "10.9.9.9/32"}, extra_lines=[
        "dkim_sign = %s rsa1 %s" % (DOMAIN, keys["rsa"])])
    d.send(sender="me@sign.test", recipients=["user@example.test"],
           data=message(["From: <me@sign.test>", "To: <user@example.test>",
                         "Subject: untrusted"], "hi\r\n"))
    got = d.wait_messages("user@example.test")[0]
    assert b"DKIM-Signature" not in got
    assert d.events("accepted")[-1]["dkim"] == "unsigned:untrusted"


def test_a_key_broken_at_reload_keeps_the_old_one(make_daemon, keys, tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(Path(keys["rsa"]).read_bytes())
    d = make_daemon(extra_lines=["dkim_sign = %s rsa1 %s" % (DOMAIN, key)])
    key.write_text("garbage\n")
    d.proc.send_signal(signal.SIGHUP)
    err = d.wait_event("reload_error")[0]
    assert "dkim_sign" in err["reason"] and str(key) in err["reason"], err
    d.send(sender="me@sign.test", recipients=["user@example.test"],
           data=message(BASIC, "after reload\r\n"))
    got = d.wait_messages("user@example.test")[0]
    assert keys["verify"].dkimpy(got) == {"rsa1": True}


def test_rotation_by_reload_signs_with_the_new_selector(make_daemon, keys):
    d = make_daemon(extra_lines=["dkim_sign = %s rsa1 %s" % (DOMAIN, keys["rsa"])])
    d.send(sender="me@sign.test", recipients=["user@example.test"],
           data=message(BASIC, "before\r\n"))
    d.extra_lines = ["dkim_sign = %s ed1 %s" % (DOMAIN, keys["ed"])]
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_event("reloaded")
    d.send(sender="me@sign.test", recipients=["user@example.test"],
           data=message(BASIC, "after\r\n"))
    got = sorted(d.wait_messages("user@example.test", 2), key=lambda m: b"after" in m)
    assert keys["verify"].dkimpy(got[0]) == {"rsa1": True}
    assert keys["verify"].dkimpy(got[1]) == {"ed1": True}


@pytest.mark.parametrize("line, why", [
    ("sign.test rsa1 /nonexistent/k.pem", "No such file"),
    ("sign.test rsa1 {junk}", "not a PEM private key"),
    ("sign.test rsa1 {small}", "RSA key of 512 bits"),
    ("sign.test rsa1 {ec}", "neither an RSA nor an Ed25519 key"),
    ("sign_test rsa1 {junk}", "invalid domain"),
    ("sign.test -rsa1 {junk}", "invalid selector"),
])
def test_bad_keys_and_names_exit_78_with_the_line(tmp_path, line, why):
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    small = tmp_path / "small.pem"
    ec = tmp_path / "ec.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:512", "-out", str(small)], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(ec)], check=True)
    conf = tmp_path / "f.conf"
    conf.write_text("spool_dir = %s\n\ndkim_sign = %s\n"
                    % (tmp_path / "spool", line.format(junk=junk, small=small, ec=ec)))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 78, r
    err = r.stderr.decode()
    assert "%s:3: dkim_sign: " % conf in err and why in err, err


def test_keygen_refuses_bad_arguments_and_existing_files(tmp_path):
    def run(*args):
        return subprocess.run([str(FACTEURCTL), "dkim-keygen"] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=h.clean_env(), timeout=60)
    out = tmp_path / "k.pem"
    assert run("sign.test", "s").returncode == 64
    assert run("bad_domain", "s", "--out", str(out)).returncode == 64
    assert run("sign.test", "s", "--type", "dsa", "--out", str(out)).returncode == 64
    assert run("sign.test", "s", "--bits", "512", "--out", str(out)).returncode == 64
    r = run("sign.test", "s", "--type", "ed25519", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    assert b"-----BEGIN PRIVATE KEY-----" in out.read_bytes()
    before = out.read_bytes()
    assert run("sign.test", "s", "--type", "ed25519", "--out", str(out)).returncode == 1
    assert out.read_bytes() == before
    r = run("sign.test", "big", "--bits", "4096", "--out", str(tmp_path / "b.pem"))
    assert r.returncode == 0
    assert len(re.findall(rb'"[^"]*"', r.stdout)) == 3


def test_facteur_sendmail_signs(signer, keys):
    msg = b"From: Local <me@sign.test>\nTo: <%s>\nSubject: local\n\nfrom sendmail\n\n" \
        % RCPT.encode()
    r = subprocess.run([str(h.BUILD_DIR / "facteur-sendmail"), "-C",
                        str(signer.conf_path), "-f", "me@sign.test", RCPT],
                       input=msg, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    got = signer.sink.wait_messages(1, timeout=rh.RELAY_TIMEOUT)[0].data
    assert got.count(b"DKIM-Signature:") == 2
    keys["verify"].assert_signed(got)
