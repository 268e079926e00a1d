"""Inbound TLS and authentication (SPEC §3 listen modes, tls_cert/tls_key,
users_file; §4 STARTTLS/AUTH; §8; RFC 3207, 8314, 6409, 4954).

Each daemon here has three listeners: smtp (the harness port, STARTTLS),
submission and smtps, a fresh self-signed certificate for mx.example.test
and a users file whose hashes come from `facteurctl passwd` ($6$) and from
libcrypt ($5$, $y$)."""

import os
import re
import signal
import smtplib
import ssl
import subprocess
import time

import pytest

import facteur_harness as h
import tls_harness as t

PASSWORD = t.USER_PASSWORD
ALICE = "alice@example.test"  # $6$, made by facteurctl passwd
BOB = "bob@example.test"      # $5$
CAROL = "carol@example.test"  # $y$ (yescrypt) where libcrypt has it
REMOTE = "someone@remote.test"


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    main = t.make_cert(d, h.HOSTNAME, "main")
    other = t.make_cert(d, "new.example.test", "other")
    third = t.make_cert(d, "third.example.test", "third")
    return {"main": main, "other": other, "third": third}


@pytest.fixture(scope="session")
def user_hashes():
    r = t.facteurctl_passwd((PASSWORD + "\n").encode())
    assert r.returncode == 0, r.stderr
    hashes = {ALICE: r.stdout.decode().strip(), BOB: t.crypt_hash(PASSWORD, "$5$")}
    assert hashes[BOB], "libcrypt cannot make a $5$ hash"
    yescrypt = t.crypt_hash(PASSWORD, "$y$")
    if yescrypt:
        hashes[CAROL] = yescrypt
    return hashes


@pytest.fixture
def tls_daemon(make_daemon, certs, user_hashes, tmp_path):
    """Factory: a facteurd with smtp (STARTTLS), submission and smtps
    listeners. tls=False leaves the certificates (and the TLS listeners)
    out; users=False leaves users_file out; metrics=True adds a metrics
    listener. Attributes added: submission_port, smtps_port, cert, key,
    metrics_port."""
    count = [0]

    def factory(config=None, tls=True, users=True, metrics=False, start=True):
        files = tmp_path / ("tls-files-%d" % count[0])
        count[0] += 1
        files.mkdir()
        cert, key = files / "cert.pem", files / "key.pem"
        t.install_files([(certs["main"][0], cert), (certs["main"][1], key)])
        port = h.free_port()
        sub_port, smtps_port = h.free_port(), h.free_port()
        cfg = {"smtp_timeout": "30s"}
        if tls:
            cfg["listen"] = ["127.0.0.1:%d" % port,
                             "127.0.0.1:%d/submission" % sub_port,
                             "127.0.0.1:%d/smtps" % smtps_port]
            cfg["tls_cert"] = str(cert)
            cfg["tls_key"] = str(key)
        if users:
            users_file = files / "users"
            users_file.write_text("".join("%s:%s\n" % kv for kv in user_hashes.items()))
            cfg["users_file"] = str(users_file)
            cfg["local_domains"] = "localhost, example.test"
        metrics_port = None
        if metrics:
            metrics_port = h.free_port()
            cfg["metrics_listen"] = "127.0.0.1:%d" % metrics_port
        cfg.update(config or {})
        d = make_daemon(config=cfg, port=port, start=False)
        d.submission_port, d.smtps_port = sub_port, smtps_port
        d.cert, d.key = cert, key
        d.metrics_port = metrics_port
        if start:
            d.start()
        return d

    return factory


def ctx_for(d, **kw):
    return t.client_context(cafile=d.cert, **kw)


def starttls_client(d, port=None, ehlo=True, context=None):
    """A session on the smtp (or `port`) listener after STARTTLS (and a
    second EHLO)."""
    c = t.TLSClient(d.host, port or d.port, context or ctx_for(d))
    c.ehlo()
    c.starttls()
    if ehlo:
        c.ehlo()
    return c


def smtps_client(d, ehlo=True, context=None):
    c = t.TLSClient(d.host, d.smtps_port, context or ctx_for(d), implicit=True)
    if ehlo:
        c.ehlo()
    return c


def keywords(ehlo_reply):
    return [l.upper() for l in ehlo_reply.lines[1:]]


def assert_reply(reply, code, enhanced=None):
    assert reply.code == code, reply
    if enhanced is not None:
        assert reply.enhanced == enhanced, reply


def received_protocol(message):
    """The protocol named in the first (facteur's) Received header."""
    received = [v for n, v in h.header_block(message) if n.lower() == b"received"]
    assert received, message[:500]
    m = re.search(rb"\bwith\s+(\S+)", received[0])
    assert m, received[0]
    return m.group(1).decode()


def send_mail(c, sender="sender@example.org", rcpt=ALICE, subject="tls",
              mail_params=""):
    """One whole transaction on an open, EHLO'd client; the final reply."""
    r = c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
    assert_reply(r, 250)
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    assert_reply(r, 250)
    r = c.cmd("DATA")
    assert_reply(r, 354)
    c.send(h.dot_stuff(h.make_message(subject=subject, sender=sender, to=rcpt)))
    return c.reply()


def delivered_with_subject(d, subject, address=ALICE):
    """Wait for the message with `subject` in `address`'s Maildir."""
    needle = ("Subject: %s\r\n" % subject).encode()

    def find():
        for m in d.maildir_messages(address):
            if needle in m.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"):
                return m
        return None
    return h.wait_for(find, what="message %r in %s\n%s" % (subject, address, d.log_tail()))


# --------------------------------------------------------------------------
# STARTTLS (RFC 3207)

def test_ehlo_offers_starttls_and_no_auth_before_tls(tls_daemon):
    d = tls_daemon()
    with d.raw() as c:
        kws = keywords(c.ehlo())
    assert "STARTTLS" in kws, kws
    assert not any(k.startswith("AUTH") for k in kws), "AUTH offered in the clear: %r" % kws


def test_starttls_replies_220_and_negotiates_tls12_or_later(tls_daemon):
    d = tls_daemon()
    with t.TLSClient(d.host, d.port, ctx_for(d)) as c:
        c.ehlo()
        r = c.starttls()
        assert_reply(r, 220, "2.0.0")
        assert c.tls_version in ("TLSv1.2", "TLSv1.3"), c.tls_version
        # the certificate served is ours (the context checked the name)
        assert c.peer_cert_der() == t.cert_der(d.cert)
        kws = keywords(c.ehlo())
        assert "STARTTLS" not in kws, "STARTTLS offered again on an encrypted session: %r" % kws
        assert "AUTH PLAIN LOGIN" in kws, kws
        assert_reply(c.cmd("NOOP"), 250)


def test_starttls_forgets_ehlo_and_transaction(tls_daemon):
    d = tls_daemon()
    with t.TLSClient(d.host, d.port, ctx_for(d)) as c:
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<before@example.org>"), 250)
        c.starttls()
        # no EHLO since the handshake: MAIL is out of sequence
        assert_reply(c.cmd("MAIL FROM:<after@example.org>"), 503, "5.5.1")
        c.ehlo()
        # and the MAIL given in the clear is gone
        assert_reply(c.cmd("RCPT TO:<%s>" % ALICE), 503, "5.5.1")
        r = send_mail(c, subject="after starttls")
        assert_reply(r, 250, "2.0.0")
    m = delivered_with_subject(d, "after starttls")
    assert b"before@example.org" not in m


def test_plaintext_pipelined_after_starttls_is_discarded(tls_daemon):
    """The STARTTLS command-injection class (CVE-2011-0411 and kin):
    commands sent in the clear after STARTTLS, in the same packet, must not
    be executed inside the TLS session."""
    d = tls_daemon()
    with t.TLSClient(d.host, d.port, ctx_for(d)) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\nEHLO injected.test\r\nMAIL FROM:<injected@evil.test>\r\n"
               b"RCPT TO:<" + ALICE.encode() + b">\r\n")
        r = c.reply()
        assert_reply(r, 220, "2.0.0")
        # nothing more in the clear: no reply to the injected commands
        assert c.pending(1.0) == b"", "server answered injected plaintext: %r" % c.buf
        c.wrap()
        # no reply is waiting inside TLS either
        assert c.pending(1.0) == b"", "replies to injected commands inside TLS: %r" % c.buf
        # the injected EHLO and MAIL did not happen
        assert_reply(c.cmd("RCPT TO:<%s>" % ALICE), 503, "5.5.1")
        c.ehlo()
        assert_reply(c.cmd("RCPT TO:<%s>" % ALICE), 503, "5.5.1")
        assert_reply(send_mail(c, subject="clean after injection"), 250)
    m = delivered_with_subject(d, "clean after injection")
    assert b"injected" not in m


def test_second_starttls_is_refused_and_session_goes_on(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        r = c.cmd("STARTTLS")
        assert r.code in (503, 554), r
        assert r.enhanced and r.enhanced.startswith("5."), r
        assert_reply(c.cmd("NOOP"), 250)


def test_starttls_with_an_argument_is_501(tls_daemon):
    d = tls_daemon()
    with d.raw() as c:
        c.ehlo()
        r = c.cmd("STARTTLS now")
        assert r.code == 501, r
        assert_reply(c.cmd("NOOP"), 250)


def test_starttls_without_certificates_is_454(tls_daemon):
    d = tls_daemon(tls=False, users=False)
    with d.raw() as c:
        kws = keywords(c.ehlo())
        assert "STARTTLS" not in kws, kws
        assert_reply(c.cmd("STARTTLS"), 454, "4.7.0")
        # still a plain, working session
        assert_reply(c.cmd("NOOP"), 250)
        r = c.send_message("a@example.org", ["user@localhost"], h.make_message("no tls"),
                           ehlo=False)
        assert_reply(r, 250)


def test_quit_after_starttls_gets_221(tls_daemon):
    """The last reply of a STARTTLS session reaches the client before the
    connection closes (RFC 5321 §4.1.1.10)."""
    d = tls_daemon()
    with starttls_client(d) as c:
        c.sendline("QUIT")
        data = c.wait_closed(timeout=10)
    assert data.startswith(b"221 2.0.0"), "no 221 after QUIT on a STARTTLS session: %r" % data


def test_quit_on_smtps_gets_221(tls_daemon):
    d = tls_daemon()
    with smtps_client(d) as c:
        c.sendline("QUIT")
        data = c.wait_closed(timeout=10)
    assert data.startswith(b"221 2.0.0"), "no 221 after QUIT on smtps: %r" % data


# --------------------------------------------------------------------------
# protocol versions

@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_are_accepted(tls_daemon, version):
    d = tls_daemon()
    v = getattr(ssl.TLSVersion, version)
    ctx = ctx_for(d, minimum=v, maximum=v)
    with starttls_client(d, context=ctx) as c:
        assert c.tls_version == version.replace("_", "."), c.tls_version
        assert_reply(c.cmd("NOOP"), 250)


@pytest.mark.parametrize("how", ["starttls", "smtps"])
def test_tls11_is_refused(tls_daemon, how):
    d = tls_daemon()
    ctx = t.client_context(verify=False, minimum=ssl.TLSVersion.TLSv1,
                           maximum=ssl.TLSVersion.TLSv1_1)
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 ciphers")
    if how == "starttls":
        c = t.TLSClient(d.host, d.port, ctx)
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
    else:
        c = t.TLSClient(d.host, d.smtps_port, ctx, read_banner=False)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)) as e:
            c.wrap()
            # a server that accepted: show what it negotiated
            raise AssertionError("TLS 1.1 accepted: %s" % c.tls_version)
    finally:
        c.close()
    reason = str(e.value).upper().replace(" ", "_")
    if "NO_PROTOCOLS_AVAILABLE" in reason:
        pytest.skip("the local OpenSSL refuses to offer TLS 1.1: %s" % e.value)
    # refused: a protocol_version alert, or (STARTTLS, where the daemon
    # closes before its alert is flushed) a bare close
    assert ("VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason
            or isinstance(e.value, (ssl.SSLZeroReturnError, ssl.SSLEOFError,
                                    ConnectionResetError))), repr(e.value)
    # the daemon is fine and still speaks TLS 1.2+
    d.assert_alive()
    with starttls_client(d) as c2:
        assert_reply(c2.cmd("NOOP"), 250)


def test_garbage_instead_of_a_client_hello_is_dropped(tls_daemon):
    d = tls_daemon()
    with d.raw() as c:
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
        c.send(b"EHLO this is not TLS\r\n" * 4)
        data = c.wait_closed(timeout=15)
    assert not data.startswith(b"250"), data
    with t.TLSClient(d.host, d.smtps_port, ctx_for(d), read_banner=False) as c:
        c.send(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        c.wait_closed(timeout=15)
    d.assert_alive()
    with starttls_client(d) as c:
        assert_reply(send_mail(c, subject="after garbage"), 250)


# --------------------------------------------------------------------------
# a handshake that never completes

@pytest.mark.parametrize("stall", ["after-220", "half-client-hello", "smtps-silent"])
def test_stalled_handshake_times_out_without_harm_to_others(tls_daemon, stall):
    d = tls_daemon(config={"smtp_timeout": "3s"})
    start = time.monotonic()
    if stall == "smtps-silent":
        stalled = h.RawClient(d.host, d.smtps_port, read_banner=False)
    else:
        stalled = h.RawClient(d.host, d.port)
        stalled.ehlo()
        assert_reply(stalled.cmd("STARTTLS"), 220, "2.0.0")
        if stall == "half-client-hello":
            stalled.send(t.partial_client_hello(20))
    try:
        # meanwhile, another client gets a whole message through TLS
        with starttls_client(d) as c:
            assert_reply(send_mail(c, subject="while another stalls"), 250, "2.0.0")
        assert time.monotonic() - start < 3, "the other client took too long to test this"
        delivered_with_subject(d, "while another stalls")
        # the stalled one is dropped after about smtp_timeout
        data = stalled.wait_closed(timeout=20)
        elapsed = time.monotonic() - start
    finally:
        stalled.close()
    assert elapsed >= 2.5, "dropped after %.1fs, before smtp_timeout (3s)" % elapsed
    assert elapsed <= 15, "dropped only after %.1fs" % elapsed
    # nothing readable was said in the clear once TLS was promised
    assert b"250" not in data, data
    d.assert_alive()
    # every session was freed: as many disconnect events as connect events
    h.wait_for(lambda: len(d.events("disconnect")) == len(d.events("connect")),
               timeout=10, what="one disconnect per connect\n" + d.log_tail())
    with starttls_client(d) as c:
        assert_reply(c.cmd("NOOP"), 250)


@pytest.mark.parametrize("how", ["starttls", "smtps"])
def test_idle_tls_session_gets_421_before_the_close(tls_daemon, how):
    """An encrypted session idle past smtp_timeout is told so (421, RFC
    5321 §4.5.3.2) before the connection closes."""
    d = tls_daemon(config={"smtp_timeout": "3s"})
    c = starttls_client(d) if how == "starttls" else smtps_client(d)
    try:
        data = c.wait_closed(timeout=20)
    finally:
        c.close()
    assert data.startswith(b"421 4."), "no 421 before the timeout close (%s): %r" % (how, data)


# --------------------------------------------------------------------------
# smtps (RFC 8314) and submission (RFC 6409)

def test_smtps_handshake_comes_before_the_banner(tls_daemon):
    d = tls_daemon()
    with smtps_client(d, ehlo=False) as c:
        assert c.tls_version in ("TLSv1.2", "TLSv1.3"), c.tls_version
        assert c.banner.code == 220, c.banner
        assert re.match(r"^mx\.example\.test ESMTP facteur(\s|$)", c.banner.first), c.banner
        kws = keywords(c.ehlo())
        assert "STARTTLS" not in kws, kws
        assert "AUTH PLAIN LOGIN" in kws, kws
        r = c.cmd("STARTTLS")
        assert r.code in (503, 554), "STARTTLS inside implicit TLS: %r" % r
        assert_reply(send_mail(c, subject="over smtps"), 250, "2.0.0")
    m = delivered_with_subject(d, "over smtps")
    assert received_protocol(m) == "ESMTPS", m[:400]


def test_smtps_sends_nothing_in_the_clear(tls_daemon):
    d = tls_daemon()
    with h.RawClient(d.host, d.smtps_port, read_banner=False) as c:
        data = c.pending(1.5)
    assert not data.startswith(b"220"), "plaintext banner on an smtps listener: %r" % data


def test_submission_requires_tls_then_auth_before_mail(tls_daemon):
    d = tls_daemon()  # 127.0.0.1 is in the default relay_networks: no matter
    with t.TLSClient(d.host, d.submission_port, ctx_for(d)) as c:
        assert c.banner.code == 220
        kws = keywords(c.ehlo())
        assert "STARTTLS" in kws, kws
        assert not any(k.startswith("AUTH") for k in kws), kws
        assert_reply(c.cmd("MAIL FROM:<a@example.org>"), 530, "5.7.0")
        assert_reply(c.auth_plain(ALICE, PASSWORD), 538, "5.7.11")
        c.starttls()
        kws = keywords(c.ehlo())
        assert "AUTH PLAIN LOGIN" in kws, kws
        assert_reply(c.cmd("MAIL FROM:<a@example.org>"), 530, "5.7.0")
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")
        r = send_mail(c, sender=ALICE, rcpt=BOB, subject="submitted")
        assert_reply(r, 250, "2.0.0")
    m = delivered_with_subject(d, "submitted", BOB)
    assert received_protocol(m) == "ESMTPSA", m[:400]


def test_submission_relays_for_an_authenticated_client(tls_daemon):
    d = tls_daemon(config={"relay_networks": "10.0.0.0/8",
                           "dns_servers": "127.0.0.1:%d" % h.free_port()})
    with starttls_client(d, port=d.submission_port) as c:
        assert_reply(c.auth_plain(BOB, PASSWORD), 235, "2.7.0")
        r = send_mail(c, sender=BOB, rcpt=REMOTE, subject="submitted far")
        assert_reply(r, 250, "2.0.0")
        qid = h.queue_id_of(r)
    d.wait_event("accepted", queue_id=qid)


# --------------------------------------------------------------------------
# AUTH (RFC 4954)

def test_auth_on_a_plain_session_is_538_even_with_good_credentials(tls_daemon):
    d = tls_daemon()
    with d.raw() as c:
        c.ehlo()
        assert_reply(c.cmd("AUTH PLAIN " + t.plain_response(ALICE, PASSWORD)), 538, "5.7.11")
        assert_reply(c.cmd("AUTH LOGIN"), 538, "5.7.11")
        # the session goes on, unauthenticated
        assert_reply(c.cmd("NOOP"), 250)


def test_auth_without_users_file_is_502_and_not_offered(tls_daemon):
    d = tls_daemon(users=False)
    with starttls_client(d, ehlo=False) as c:
        kws = keywords(c.ehlo())
        assert not any(k.startswith("AUTH") for k in kws), kws
        assert_reply(c.auth_plain(ALICE, PASSWORD), 502, "5.5.1")


@pytest.mark.parametrize("user,method", [(ALICE, "$6$"), (BOB, "$5$"), (CAROL, "$y$")])
def test_auth_plain_accepts_each_crypt_method(tls_daemon, user_hashes, user, method):
    if user not in user_hashes:
        pytest.skip("libcrypt has no %s" % method)
    assert user_hashes[user].startswith(method)
    d = tls_daemon()
    with starttls_client(d) as c:
        assert_reply(c.auth_plain(user, PASSWORD), 235, "2.7.0")


def test_auth_plain_with_an_empty_challenge(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334, r
        assert r.first.strip() == "", r
        assert_reply(c.cmd(t.plain_response(ALICE, PASSWORD)), 235, "2.7.0")


def test_auth_plain_with_authzid_equal_to_user(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        assert_reply(c.cmd("AUTH PLAIN " + t.plain_response(ALICE, PASSWORD, ALICE)),
                     235, "2.7.0")


def test_auth_login(tls_daemon):
    d = tls_daemon()
    with smtps_client(d) as c:
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334, r
        r = c.cmd(t.b64(BOB))
        assert r.code == 334, r
        assert_reply(c.cmd(t.b64(PASSWORD)), 235, "2.7.0")


def test_auth_login_with_initial_response(tls_daemon):
    d = tls_daemon()
    with smtps_client(d) as c:
        r = c.cmd("AUTH LOGIN " + t.b64(ALICE))
        assert r.code == 334, r
        assert_reply(c.cmd(t.b64(PASSWORD)), 235, "2.7.0")


def test_auth_unknown_mechanism_is_504(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        r = c.cmd("AUTH CRAM-MD5")
        assert r.code == 504, r
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "LOGIN-password"])
def test_auth_cancelled_with_star_is_501_and_can_be_retried(tls_daemon, mech):
    d = tls_daemon()
    with starttls_client(d) as c:
        r = c.cmd("AUTH " + mech.split("-")[0])
        assert r.code == 334, r
        if mech == "LOGIN-password":
            r = c.cmd(t.b64(ALICE))
            assert r.code == 334, r
        t0 = time.monotonic()
        assert_reply(c.cmd("*"), 501, "5.7.0")
        # not a failed login: answered at once, and a new AUTH works
        assert time.monotonic() - t0 < 0.9, "a cancelled AUTH was delayed like a failed login"
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")


def test_second_auth_is_503(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")
        r = c.auth_plain(BOB, PASSWORD)
        assert r.code == 503, r
        assert r.enhanced and r.enhanced.startswith("5.5."), r
        assert_reply(c.cmd("AUTH LOGIN"), 503)


def test_auth_during_a_transaction_is_503(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        assert_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        r = c.auth_plain(ALICE, PASSWORD)
        assert r.code == 503, r


def test_auth_malformed_base64_is_501(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        r = c.cmd("AUTH PLAIN ***not-base64***")
        assert r.code == 501, r
        assert r.enhanced and r.enhanced.startswith("5."), r
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235)


def test_auth_line_up_to_12288_octets_is_not_too_long(tls_daemon):
    """SPEC §8: AUTH lines may be up to 12,288 octets, CRLF included."""
    d = tls_daemon()
    with starttls_client(d) as c:
        prefix = "AUTH PLAIN "
        payload = t.b64("\0%s\0%s" % (ALICE, "x" * 9000))
        line = prefix + payload
        assert len(line) + 2 <= 12288
        r = c.cmd(line)
        assert r.code != 500, "a %d-octet AUTH line refused as too long: %r" % (len(line) + 2, r)
        assert r.code in (501, 535), r


def test_wrong_password_is_535_after_a_delay_then_good_one_works(tls_daemon):
    d = tls_daemon()
    with starttls_client(d) as c:
        t0 = time.monotonic()
        assert_reply(c.auth_plain(ALICE, "wrong"), 535, "5.7.8")
        first = time.monotonic() - t0
        t0 = time.monotonic()
        assert_reply(c.auth_plain("nobody@example.test", PASSWORD), 535, "5.7.8")
        second = time.monotonic() - t0
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")
    assert first >= 0.8, "first failure answered after %.2fs" % first
    assert second >= first + 0.5, "delay does not grow: %.2fs then %.2fs" % (first, second)


@pytest.mark.parametrize("how", ["starttls", "smtps"])
def test_fifth_failed_login_gets_421_and_the_delay_does_not_block_others(tls_daemon, how):
    d = tls_daemon()
    c = starttls_client(d) if how == "starttls" else smtps_client(d)
    delays = []
    try:
        for i in range(4):
            t0 = time.monotonic()
            if i == 3:
                # while this client waits for its answer, another one works
                c.sendline("AUTH PLAIN " + t.plain_response(ALICE, "wrong%d" % i))
                with smtps_client(d) as other:
                    t1 = time.monotonic()
                    assert_reply(other.auth_plain(BOB, PASSWORD), 235)
                    assert time.monotonic() - t1 < 2.0, "other sessions stalled"
                r = c.reply()
            else:
                r = c.auth_plain(ALICE, "wrong%d" % i)
            delays.append(time.monotonic() - t0)
            assert_reply(r, 535, "5.7.8")
        t0 = time.monotonic()
        c.sendline("AUTH PLAIN " + t.plain_response(ALICE, "wrong4"))
        data = c.wait_closed(timeout=30)
        delays.append(time.monotonic() - t0)
    finally:
        c.close()
    for i, dl in enumerate(delays):
        assert dl >= (i + 1) - 0.3, "failure %d answered after %.2fs: %r" % (i + 1, dl, delays)
    assert data.startswith(b"421 4.7.0"), \
        "the 5th failure did not get 421 4.7.0 before the close (%s): %r" % (how, data)
    d.assert_alive()


# --------------------------------------------------------------------------
# relay control and MAIL AUTH=

def test_relay_only_after_auth_from_outside_relay_networks(tls_daemon):
    d = tls_daemon(config={"relay_networks": "10.0.0.0/8",
                           "dns_servers": "127.0.0.1:%d" % h.free_port()})
    # in the clear
    with d.raw() as c:
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        assert_reply(c.cmd("RCPT TO:<%s>" % REMOTE), 554, "5.7.1")
        # local mail is still welcome from anywhere
        assert_reply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    # encrypted but not authenticated
    with starttls_client(d) as c:
        assert_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        assert_reply(c.cmd("RCPT TO:<%s>" % REMOTE), 554, "5.7.1")
        assert_reply(c.cmd("RSET"), 250)
        # authenticated: relaying is allowed
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")
        r = send_mail(c, sender=ALICE, rcpt=REMOTE, subject="relayed")
        assert_reply(r, 250, "2.0.0")
        qid = h.queue_id_of(r)
    ev = d.wait_event("accepted", queue_id=qid)
    assert ev[0].get("nrcpt") == "1", ev
    # the relay attempt happens, and can only defer (no DNS server)
    ev = d.wait_event("deferred", queue_id=qid, timeout=60)
    assert ev[0].get("rcpt") == REMOTE, ev
    assert not d.events("delivered", queue_id=qid)
    assert not d.events("bounced", queue_id=qid)


@pytest.mark.parametrize("param", ["AUTH=<>", "AUTH=" + ALICE, "AUTH=alice+2Bx@example.test"])
def test_mail_auth_parameter_is_accepted(tls_daemon, param):
    d = tls_daemon()
    with starttls_client(d) as c:
        # not yet authenticated: treated as AUTH=<> (RFC 4954 §5), still 250
        assert_reply(c.cmd("MAIL FROM:<a@example.org> " + param), 250)
        assert_reply(c.cmd("RSET"), 250)
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235)
        r = send_mail(c, sender=ALICE, subject="auth param", mail_params=" " + param)
        assert_reply(r, 250, "2.0.0")


# --------------------------------------------------------------------------
# Received: protocol names

@pytest.mark.parametrize("how,auth,utf8,expected", [
    ("plain", False, False, "ESMTP"),
    ("starttls", False, False, "ESMTPS"),
    ("starttls", True, False, "ESMTPSA"),
    ("smtps", False, False, "ESMTPS"),
    ("smtps", True, False, "ESMTPSA"),
    ("starttls", False, True, "UTF8SMTPS"),
    ("smtps", True, True, "UTF8SMTPSA"),
])
def test_received_names_the_protocol(tls_daemon, how, auth, utf8, expected):
    d = tls_daemon()
    if how == "plain":
        c = d.raw()
        c.ehlo()
    elif how == "starttls":
        c = starttls_client(d)
    else:
        c = smtps_client(d)
    subject = "proto %s %s %s" % (how, auth, utf8)
    with c:
        if auth:
            assert_reply(c.auth_plain(ALICE, PASSWORD), 235)
        r = send_mail(c, subject=subject, mail_params=" SMTPUTF8" if utf8 else "")
        assert_reply(r, 250, "2.0.0")
    m = delivered_with_subject(d, subject)
    assert received_protocol(m) == expected, h.header_block(m)[:4]


# --------------------------------------------------------------------------
# SIGHUP reloads the certificate

def test_sighup_reloads_certificate_and_keeps_sessions(tls_daemon, certs):
    d = tls_daemon()
    any_cert = t.client_context(verify=False)
    old_der, new_der = t.cert_der(certs["main"][0]), t.cert_der(certs["other"][0])
    # a session opened before the reload
    before = starttls_client(d)
    try:
        assert before.peer_cert_der() == old_der
        t.install_files([(certs["other"][0], d.cert), (certs["other"][1], d.key)])
        os.kill(d.pid, signal.SIGHUP)

        def served():
            with starttls_client(d, context=any_cert, ehlo=False) as c:
                return c.peer_cert_der() == new_der
        h.wait_for(served, timeout=15, what="new certificate on STARTTLS\n" + d.log_tail())
        with smtps_client(d, context=any_cert, ehlo=False) as c:
            assert c.peer_cert_der() == new_der, "smtps still serves the old certificate"
        # the old session lives on
        assert_reply(before.cmd("NOOP"), 250)
        assert_reply(send_mail(before, subject="across reload"), 250, "2.0.0")
    finally:
        before.close()
    delivered_with_subject(d, "across reload")


def test_sighup_with_a_mismatched_key_keeps_the_old_certificate(tls_daemon, certs):
    d = tls_daemon()
    any_cert = t.client_context(verify=False)
    old_der = t.cert_der(certs["main"][0])
    log_before = len(d.log_lines())
    # the certificate of "other" with the key of "third": unusable
    t.install_files([(certs["other"][0], d.cert), (certs["third"][1], d.key)])
    os.kill(d.pid, signal.SIGHUP)
    h.wait_for(lambda: any("level=error" in l for l in d.log_lines()[log_before:]),
               timeout=15, what="an error logged for the broken reload\n" + d.log_tail())
    d.assert_alive()
    for c in (starttls_client(d, context=any_cert), smtps_client(d, context=any_cert)):
        with c:
            assert c.peer_cert_der() == old_der, "a broken reload changed the certificate"
            assert_reply(c.cmd("NOOP"), 250)


# --------------------------------------------------------------------------
# metrics

def test_tls_sessions_are_counted(tls_daemon):
    d = tls_daemon(metrics=True)
    try:
        t.metrics(d.metrics_port)
    except ConnectionRefusedError:
        pytest.skip("metrics_listen is not served by this build (nothing listens on it)")
    assert t.metrics(d.metrics_port).get("facteur_tls_sessions_total") == 0
    with starttls_client(d) as c:
        assert_reply(c.cmd("NOOP"), 250)
    with smtps_client(d) as c:
        assert_reply(c.cmd("NOOP"), 250)
    with d.raw() as c:
        c.ehlo()
    h.wait_for(lambda: t.metrics(d.metrics_port).get("facteur_tls_sessions_total") == 2,
               timeout=10, what="facteur_tls_sessions_total == 2: %r" % t.metrics(d.metrics_port))


# --------------------------------------------------------------------------
# facteurctl passwd (SPEC §2, §8)

SHA512_CRYPT_RE = re.compile(r"^\$6\$(rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")


def test_facteurctl_passwd_prints_a_sha512_crypt_hash():
    r = t.facteurctl_passwd(b"hunter2\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    hashed = out.strip()
    assert SHA512_CRYPT_RE.match(hashed), hashed
    # the newline is not part of the password
    assert t.crypt("hunter2", hashed) == hashed
    assert t.crypt("hunter2\n", hashed) != hashed
    # salted: a second run differs
    again = t.facteurctl_passwd(b"hunter2\n").stdout.decode().strip()
    assert again != hashed and t.crypt("hunter2", again) == again


def test_facteurctl_passwd_without_final_newline_and_with_spaces():
    r = t.facteurctl_passwd(b"two words ")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.decode().strip()
    assert SHA512_CRYPT_RE.match(hashed), hashed
    assert t.crypt("two words ", hashed) == hashed


def test_facteurctl_passwd_reads_only_one_line():
    r = t.facteurctl_passwd(b"first\nsecond\n")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.decode().strip()
    assert t.crypt("first", hashed) == hashed


def test_facteurctl_passwd_hash_logs_in(tls_daemon, user_hashes):
    # alice's hash in every daemon here came from facteurctl passwd
    assert SHA512_CRYPT_RE.match(user_hashes[ALICE]), user_hashes[ALICE]
    d = tls_daemon()
    with smtps_client(d) as c:
        assert_reply(c.auth_plain(ALICE, PASSWORD), 235, "2.7.0")


# --------------------------------------------------------------------------
# real clients: swaks, curl, smtplib

def run(cmd, timeout=120, input_bytes=None):
    return subprocess.run(cmd, input=input_bytes, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout,
                          env=h.clean_env())


def swaks(d, *args):
    return run(["swaks", "--server", d.host, "--helo", "client.test",
                "--from", "sender@example.org", "--to", ALICE] + list(args))


def swaks_sends(d, subject, reply, protocol, *args):
    """swaks sends a message with `subject`: its dialogue shows `reply`, the
    message arrives received with `protocol`, swaks exits 0."""
    r = swaks(d, *args, "--header", "Subject: " + subject)
    out = r.stdout.decode("utf-8", "replace")
    assert reply in out, out
    m = delivered_with_subject(d, subject)
    assert received_protocol(m) == protocol
    assert r.returncode == 0, "swaks exit %d:\n%s" % (r.returncode, out[-1500:])


def test_swaks_starttls(tls_daemon):
    d = tls_daemon()
    swaks_sends(d, "swaks tls", "250 2.0.0 Ok: queued as", "ESMTPS",
                "--port", str(d.port), "--tls")


def test_swaks_smtps_with_auth_plain(tls_daemon):
    d = tls_daemon()
    swaks_sends(d, "swaks tlsc", "235 2.7.0", "ESMTPSA",
                "--port", str(d.smtps_port), "--tlsc", "--auth", "PLAIN",
                "--auth-user", ALICE, "--auth-password", PASSWORD)


def test_swaks_submission_starttls_auth_login(tls_daemon):
    d = tls_daemon()
    swaks_sends(d, "swaks submission", "235 2.7.0", "ESMTPSA",
                "--port", str(d.submission_port), "--tls", "--auth", "LOGIN",
                "--auth-user", BOB, "--auth-password", PASSWORD)


def test_swaks_wrong_password_and_no_auth_on_submission(tls_daemon):
    d = tls_daemon()
    r = swaks(d, "--port", str(d.smtps_port), "--tlsc", "--auth", "PLAIN",
              "--auth-user", ALICE, "--auth-password", "wrong")
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode != 0 and "535 5.7.8" in out, out
    r = swaks(d, "--port", str(d.submission_port), "--tls")
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode != 0 and "530 5.7.0" in out, out
    assert not d.maildir_messages(ALICE)


def curl(d, url_scheme, port, *args, tmp):
    msg = tmp / "curl-message.eml"
    msg.write_bytes(h.make_message(subject="curl %s %d" % (url_scheme, port), to=ALICE))
    return run(["curl", "-sS", "--max-time", "60",
                "--cacert", str(d.cert),
                "--resolve", "%s:%d:127.0.0.1" % (h.HOSTNAME, port),
                "%s://%s:%d" % (url_scheme, h.HOSTNAME, port),
                "--mail-from", "sender@example.org", "--mail-rcpt", ALICE,
                "--upload-file", str(msg)] + list(args))


def test_curl_ssl_reqd_smtp(tls_daemon, tmp_path):
    d = tls_daemon()
    r = curl(d, "smtp", d.port, "--ssl-reqd", tmp=tmp_path)
    assert r.returncode == 0, r.stdout
    m = delivered_with_subject(d, "curl smtp %d" % d.port)
    assert received_protocol(m) == "ESMTPS"


def test_curl_smtps_with_login_on_submission_and_smtps(tls_daemon, tmp_path):
    d = tls_daemon()
    r = curl(d, "smtps", d.smtps_port, "--user", "%s:%s" % (ALICE, PASSWORD), tmp=tmp_path)
    assert r.returncode == 0, r.stdout
    m = delivered_with_subject(d, "curl smtps %d" % d.smtps_port)
    assert received_protocol(m) == "ESMTPSA"
    r = curl(d, "smtp", d.submission_port, "--ssl-reqd", "--user", "%s:%s" % (BOB, PASSWORD),
             tmp=tmp_path)
    assert r.returncode == 0, r.stdout
    m = delivered_with_subject(d, "curl smtp %d" % d.submission_port)
    assert received_protocol(m) == "ESMTPSA"


def test_curl_ssl_reqd_fails_without_certificates(tls_daemon, tmp_path):
    d = tls_daemon(tls=False, users=False)
    r = curl(d, "smtp", d.port, "--ssl-reqd", tmp=tmp_path)
    assert r.returncode == 64, "curl --ssl-reqd: exit %d (64 expected): %r" % (
        r.returncode, r.stdout)
    time.sleep(0.5)
    assert not d.all_messages()


def test_smtplib_starttls_login_sendmail(tls_daemon):
    d = tls_daemon()
    s = smtplib.SMTP(d.host, d.port, local_hostname="client.test", timeout=h.IO_TIMEOUT)
    try:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.login(ALICE, PASSWORD)
        code, _ = s.starttls(context=ctx_for(d))
        assert code == 220
        s.ehlo()
        assert s.has_extn("auth") and not s.has_extn("starttls")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(ALICE, "wrong")
        assert e.value.smtp_code == 535
        code, _ = s.login(BOB, PASSWORD)
        assert code == 235
        refused = s.sendmail(BOB, [ALICE], h.make_message(subject="smtplib starttls", to=ALICE))
        assert refused == {}
    finally:
        try:
            s.quit()
        except smtplib.SMTPServerDisconnected:
            pass
    m = delivered_with_subject(d, "smtplib starttls")
    assert received_protocol(m) == "ESMTPSA"


def test_smtplib_smtp_ssl_login_sendmail(tls_daemon):
    d = tls_daemon()
    with smtplib.SMTP_SSL(d.host, d.smtps_port, local_hostname="client.test",
                          timeout=h.IO_TIMEOUT, context=ctx_for(d)) as s:
        s.ehlo()
        assert s.has_extn("auth")
        code, _ = s.login(ALICE, PASSWORD)
        assert code == 235
        refused = s.sendmail(ALICE, [BOB], h.make_message(subject="smtplib ssl", to=BOB))
        assert refused == {}
    m = delivered_with_subject(d, "smtplib ssl", BOB)
    assert received_protocol(m) == "ESMTPSA"


def test_smtplib_submission_refuses_mail_before_login(tls_daemon):
    d = tls_daemon()
    with smtplib.SMTP(d.host, d.submission_port, local_hostname="client.test",
                      timeout=h.IO_TIMEOUT) as s:
        s.starttls(context=ctx_for(d))
        s.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(ALICE, [BOB], h.make_message(subject="no login", to=BOB))
        assert e.value.smtp_code == 530
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [BOB], h.make_message(subject="after login", to=BOB)) == {}
    delivered_with_subject(d, "after login", BOB)
