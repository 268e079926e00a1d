"""Failed logins counted across sessions (auth_fail_limit = N/DURATION):
per client address, with 421 4.7.0 at connect until the window passes,
and per account, refused to clients that failed logins themselves while
clients with a clean record still log in."""

import socket
import time

import facteur_harness as h
import tls_harness as t
from test_tls_auth import (ALICE, PASSWORD, certs, ctx_for,  # noqa: F401
                           tls_daemon, user_hashes)


class SmtpsClient(t.TLSClient):
    """An smtps session from a chosen loopback source address."""

    def __init__(self, d, source="127.0.0.1", read_banner=True):
        self.context = ctx_for(d)
        self.server_hostname = h.HOSTNAME
        self.sock = socket.create_connection((d.host, d.smtps_port), h.IO_TIMEOUT,
                                             source_address=(source, 0))
        self.buf = b""
        self.wrap()
        self.banner = self.reply() if read_banner else None


def test_failed_logins_across_sessions_refuse_the_address_until_the_window_ends(tls_daemon):
    d = tls_daemon(config={"auth_fail_limit": "3/4s"})
    sessions = [SmtpsClient(d) for _ in range(3)]
    try:
        for c in sessions:
            c.ehlo()
        start = time.monotonic()
        # Three sessions, one wrong password each: no session reaches its
        # own limit of five, the address reaches three.
        for c in sessions:
            c.send(b"AUTH PLAIN " + t.plain_response(ALICE, "wrong").encode() + b"\r\n")
        replies = [c.reply() for c in sessions]
        assert all(r.code in (535, 421) for r in replies), replies
        assert any(r.code == 421 and r.enhanced == "4.7.0" for r in replies), replies
    finally:
        for c in sessions:
            c.close()
    # A new connection from the address, on any listener, is refused at once.
    c = SmtpsClient(d)
    assert c.banner.code == 421 and c.banner.enhanced == "4.7.0", c.banner
    c.wait_closed()
    c.close()
    with d.raw() as plain:
        assert plain.banner.code == 421, plain.banner
    assert time.monotonic() - start < 4, "too slow to see the refusal inside the window"
    assert d.events("rejected", reason="auth_fail_limit"), d.log_tail()
    # Once the window is over the address is welcome again.
    time.sleep(max(0.0, start + 4.5 - time.monotonic()))
    c = SmtpsClient(d)
    try:
        assert c.banner.code == 220, c.banner
        c.ehlo()
        r = c.auth_plain(ALICE, PASSWORD)
        assert r.code == 235, r
    finally:
        c.close()


def test_account_under_attack_is_refused_to_failing_addresses_only(tls_daemon):
    d = tls_daemon(config={"auth_fail_limit": "3/10m"})
    # Three addresses fail once each on the same account: none of them
    # reaches the limit, the account does.
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        c = SmtpsClient(d, source)
        try:
            c.ehlo()
            r = c.auth_plain(ALICE, "guess-" + source)
            assert r.code == 535, r
        finally:
            c.close()
    # One of them, even with the right password, is turned away...
    c = SmtpsClient(d, "127.0.0.2")
    try:
        assert c.banner.code == 220, c.banner
        c.ehlo()
        r = c.auth_plain(ALICE, PASSWORD)
        assert r.code == 454 and r.enhanced == "4.7.0", r
    finally:
        c.close()
    # ...while the account's owner, from an address with a clean record,
    # logs in.
    c = SmtpsClient(d, "127.0.0.5")
    try:
        c.ehlo()
        r = c.auth_plain(ALICE, PASSWORD)
        assert r.code == 235, r
    finally:
        c.close()
    assert d.events("auth", result="refused", reason="auth_fail_limit"), d.log_tail()


def test_client_gone_during_the_password_check_harms_nothing(tls_daemon):
    d = tls_daemon(config={"log_level": "debug"})
    for _ in range(5):
        c = SmtpsClient(d)
        c.ehlo()
        # The check goes to the worker thread; the client leaves before
        # its result comes back, which then finds no session to answer.
        c.send(b"AUTH PLAIN " + t.plain_response(ALICE, PASSWORD).encode() + b"\r\n")
        c.close()
    d.wait_event("smtp_state", to="auth_check")
    c = SmtpsClient(d)
    try:
        c.ehlo()
        r = c.auth_plain(ALICE, PASSWORD)
        assert r.code == 235, r
    finally:
        c.close()
    d.assert_alive()
