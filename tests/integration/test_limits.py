"""Per-session and global bounds: the envelope budgets (max_envelope_size,
max_envelope_memory) and the failed-login limit (auth_fail_limit)."""

import facteur_harness as h


def rcpt_until_refused(c, prefix, limit=500):
    """Send RCPTs for prefix0@localhost, prefix1@localhost... until one is
    refused; return (accepted addresses, the refusal)."""
    accepted = []
    for i in range(limit):
        addr = "%s%d@localhost" % (prefix, i)
        r = c.cmd("RCPT TO:<%s>" % addr)
        if r.code != 250:
            return accepted, r
        accepted.append(addr)
    raise AssertionError("no RCPT refused after %d" % limit)


def test_envelope_past_its_budget_gets_452_and_the_message_still_goes(make_daemon):
    d = make_daemon(config={"max_envelope_size": "1K"})
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
        accepted, r = rcpt_until_refused(c, "recipient.with.a.long.name")
        assert r.code == 452 and r.enhanced == "4.5.3", r
        # A 1 KiB budget holds a handful of such recipients, not one.
        assert 3 <= len(accepted) < 20, accepted
        # More of them keep getting 452: refusals, not protocol errors,
        # so they never reach the 10-error limit.
        for i in range(12):
            r = c.cmd("RCPT TO:<late%d.recipient.with.a.long.name@localhost>" % i)
            assert r.code == 452 and r.enhanced == "4.5.3", r
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message(subject="budget")))
        r = c.reply()
        assert r.code == 250, r
        qid = h.queue_id_of(r)
        # RSET gives the budget back: a new transaction starts empty.
        assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
        assert c.cmd("RCPT TO:<again@localhost>").code == 250
    for addr in accepted:
        d.wait_messages(addr)
    assert not d.maildir_files("late0.recipient.with.a.long.name@localhost")
    ev = d.events("rejected", reason="max_envelope_size")
    assert ev, d.log_tail()
    assert d.events("accepted", queue_id=qid, nrcpt=len(accepted))


def test_all_sessions_past_the_global_budget_get_452_4_3_1(make_daemon):
    d = make_daemon(config={"max_envelope_memory": "2K"})
    a = d.raw()
    b = d.raw()
    try:
        a.ehlo()
        b.ehlo()
        assert a.cmd("MAIL FROM:<sender@example.org>").code == 250
        held, r = rcpt_until_refused(a, "holder.of.the.memory")
        assert r.code == 452 and r.enhanced == "4.3.1", r
        assert held
        assert b.cmd("MAIL FROM:<sender@example.org>").code == 250
        r = b.cmd("RCPT TO:<another.session@localhost>")
        assert r.code == 452 and r.enhanced == "4.3.1", r
        # The first session's RSET frees its share for everyone.
        assert a.cmd("RSET").code == 250
        assert b.cmd("RCPT TO:<another.session@localhost>").code == 250
    finally:
        a.close()
        b.close()
    assert d.events("rejected", reason="max_envelope_memory"), d.log_tail()


def test_ipv6_clients_of_one_network_share_max_connections_per_ip(make_daemon):
    if not h.has_ipv6_loopback():
        import pytest
        pytest.skip("no IPv6 loopback")
    port6 = h.free_port("::1")
    d = make_daemon(config={"max_connections_per_ip": 1, "ipv6_prefix_length": 64},
                    start=False)
    d.settings["listen"] = ["127.0.0.1:%d" % d.port, "[::1]:%d" % port6]
    d.start()
    first = h.RawClient("::1", port6)
    try:
        assert first.banner.code == 220, first.banner
        second = h.RawClient("::1", port6)
        try:
            assert second.banner.code == 421 and second.banner.enhanced == "4.7.0", second.banner
        finally:
            second.close()
        # IPv4 clients are counted apart.
        with d.raw() as v4:
            assert v4.banner.code == 220, v4.banner
    finally:
        first.close()
    assert d.events("rejected", reason="max_connections_per_ip"), d.log_tail()
