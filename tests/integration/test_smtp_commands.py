"""SMTP inbound, command by command (SPEC §4, §8)."""

import re
import subprocess
import time

import pytest

import facteur_harness as h


def assert_enhanced(reply, klass=None):
    """Every line of the reply carries an enhanced status code whose class
    matches the reply code (RFC 2034, SPEC §8)."""
    for line in reply.lines:
        m = h.ENHANCED_RE.match(line)
        assert m, "no enhanced status code in %r" % (reply,)
        assert m.group(1) == str(reply.code)[0], "class of %s does not match %d" % (
            m.group(0), reply.code)
    if klass:
        assert reply.enhanced == klass, reply


def session(d, ehlo=True):
    c = d.raw()
    if ehlo:
        c.ehlo()
    return c


# --------------------------------------------------------------------------
# greeting, EHLO, HELO

def test_banner_names_hostname_and_facteur(daemon):
    with daemon.raw() as c:
        assert c.banner.code == 220
        assert len(c.banner.lines) == 1, c.banner
        assert re.match(r"^mx\.example\.test ESMTP facteur(\s|$)", c.banner.first), c.banner


def test_ehlo_lists_the_extensions(daemon):
    with daemon.raw() as c:
        r = c.cmd("EHLO client.test")
    assert r.code == 250
    assert r.lines[0].split()[0] == "mx.example.test", r
    keywords = [l.upper() for l in r.lines[1:]]
    for kw in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"):
        assert kw in keywords, "%s not advertised: %r" % (kw, r)
    assert "SIZE %d" % (25 * 1024 * 1024) in keywords, r
    assert not any(k.startswith("STARTTLS") for k in keywords), "STARTTLS without certificates"
    assert not any(k.startswith("AUTH") for k in keywords), "AUTH on a plain session"
    for l in r.lines:
        assert not h.ENHANCED_RE.match(l), "EHLO lines carry no enhanced code: %r" % r


def test_ehlo_size_follows_max_message_size(make_daemon):
    d = make_daemon(config={"max_message_size": "1M"})
    with d.raw() as c:
        r = c.ehlo()
    assert "SIZE 1048576" in r.lines[1:], r


def test_helo_is_answered_with_hostname_and_allows_mail(daemon):
    with daemon.raw() as c:
        r = c.cmd("HELO client.test")
        assert r.code == 250, r
        assert r.lines[0].split()[0] == "mx.example.test", r
        assert len(r.lines) == 1
        r = c.cmd("MAIL FROM:<a@sender.test>")
        assert r.code == 250, r
        assert_enhanced(r)
        r = c.cmd("RCPT TO:<user@localhost>")
        assert r.code == 250, r
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(h.dot_stuff(h.make_message("helo session")))
        r = c.reply()
        assert r.code == 250, r
        assert_enhanced(r, "2.0.0")
    daemon.wait_messages("user@localhost")


def test_ehlo_without_argument_is_a_syntax_error(daemon):
    with daemon.raw() as c:
        r = c.cmd("EHLO")
        assert r.code == 501, r
        assert_enhanced(r)


def test_second_ehlo_resets_the_transaction(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("EHLO again.test").code == 250
        r = c.cmd("RCPT TO:<user@localhost>")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")


# --------------------------------------------------------------------------
# enhanced codes and simple commands

def test_enhanced_codes_on_every_reply(daemon):
    with daemon.raw() as c:
        c.ehlo()
        for line in ("NOOP", "RSET", "VRFY user", "EXPN list", "HELP", "FOO bar",
                     "MAIL FROM:<a@sender.test>", "RCPT TO:<user@localhost>",
                     "RCPT TO:<bad address>", "MAIL FROM:<b@sender.test>", "RSET",
                     "RCPT TO:<user@localhost>", "DATA", "BDAT 1x"):
            r = c.cmd(line)
            assert_enhanced(r)
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(h.dot_stuff(h.make_message("codes")))
        r = c.reply()
        assert r.code == 250
        assert_enhanced(r, "2.0.0")
        r = c.cmd("QUIT")
        assert r.code == 221, r
        assert_enhanced(r, "2.0.0")


def test_commands_are_case_insensitive(daemon):
    with daemon.raw() as c:
        assert c.cmd("ehlo client.test").code == 250
        assert c.cmd("nOoP").code == 250
        assert c.cmd("mail from:<a@sender.test>").code == 250
        assert c.cmd("Rcpt To:<user@localhost>").code == 250
        assert c.cmd("rset").code == 250
        assert c.cmd("MaIl FrOm:<a@sender.test>").code == 250
        assert c.cmd("rcpt to:<user@localhost>").code == 250
        assert c.cmd("data").code == 354
        c.send(h.dot_stuff(h.make_message("lower case")))
        assert c.reply().code == 250
        r = c.cmd("quit")
        assert r.code == 221
    daemon.wait_messages("user@localhost")


def test_noop_rset_help_vrfy_expn_quit(daemon):
    with daemon.raw() as c:
        c.ehlo()
        r = c.cmd("NOOP")
        assert r.code == 250 and r.enhanced == "2.0.0", r
        r = c.cmd("NOOP with an argument")
        assert r.code == 250, r
        r = c.cmd("RSET")
        assert r.code == 250 and r.enhanced == "2.0.0", r
        r = c.cmd("HELP")
        assert r.code in (211, 214), r
        assert_enhanced(r)
        r = c.cmd("VRFY user")
        assert r.code == 252, r
        assert_enhanced(r)
        r = c.cmd("VRFY <user@localhost>")
        assert r.code == 252, r
        r = c.cmd("EXPN staff")
        assert r.code == 502, r
        assert_enhanced(r)
        r = c.cmd("QUIT")
        assert r.code == 221 and r.enhanced == "2.0.0", r
        c.wait_closed(10)


def test_rset_clears_the_transaction(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd("DATA")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250


def test_unknown_command(daemon):
    with session(daemon) as c:
        r = c.cmd("FROBNICATE now")
        assert r.code == 500, r
        assert_enhanced(r, "5.5.1")
        r = c.cmd("MAILFROM:<a@b.test>")
        assert r.code == 500, r
        assert_enhanced(r, "5.5.1")


def test_empty_line_is_an_error_not_a_crash(daemon):
    with session(daemon) as c:
        r = c.cmd("")
        assert r.code in (500, 501), r
        assert_enhanced(r)
        assert c.cmd("NOOP").code == 250


# --------------------------------------------------------------------------
# the 512-octet command line limit

def test_line_of_512_octets_with_crlf_is_accepted(daemon):
    with session(daemon) as c:
        line = "NOOP " + "x" * 505
        assert len(line) + 2 == 512
        r = c.cmd(line)
        assert r.code == 250, r


def test_line_of_513_octets_is_refused_with_5_5_2(daemon):
    with session(daemon) as c:
        line = "NOOP " + "x" * 506
        assert len(line) + 2 == 513
        r = c.cmd(line)
        assert r.code == 500, r
        assert_enhanced(r, "5.5.2")
        # the whole long line was consumed: the next command is understood
        r = c.cmd("NOOP")
        assert r.code == 250, r


def test_long_mail_command_is_refused_with_5_5_2(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:<" + "a" * 600 + "@sender.test>")
        assert r.code == 500, r
        assert_enhanced(r, "5.5.2")
        r = c.cmd("MAIL FROM:<a@sender.test>")
        assert r.code == 250, r


def test_mail_line_of_exactly_512_octets_is_parsed(daemon):
    with session(daemon) as c:
        # 512 octets with CRLF: the length check must not refuse it; the
        # address itself is too long (local part > 64), so 501 5.1.7.
        prefix, suffix = "MAIL FROM:<", "@sender.test>"
        line = prefix + "a" * (510 - len(prefix) - len(suffix)) + suffix
        assert len(line) == 510
        r = c.cmd(line)
        assert r.code == 501, r
        assert_enhanced(r, "5.1.7")


# --------------------------------------------------------------------------
# sequence and address errors

def test_mail_before_ehlo(daemon):
    with daemon.raw() as c:
        r = c.cmd("MAIL FROM:<a@sender.test>")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")


def test_rcpt_before_mail(daemon):
    with session(daemon) as c:
        r = c.cmd("RCPT TO:<user@localhost>")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")


def test_data_before_rcpt(daemon):
    with session(daemon) as c:
        r = c.cmd("DATA")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("DATA")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")


def test_nested_mail_is_a_sequence_error(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("MAIL FROM:<b@sender.test>")
        assert r.code == 503, r
        assert_enhanced(r, "5.5.1")


@pytest.mark.parametrize("path", ["<not an address>", "<a@>", "<@sender.test>", "<a@@sender.test>",
                                  "a@sender.test>", "<a@sender.test", "<a..b@sender.test>",
                                  "<a@-bad.test>"])
def test_bad_sender_address(daemon, path):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:" + path)
        assert r.code == 501, r
        assert_enhanced(r, "5.1.7")


@pytest.mark.parametrize("path", ["<bad address@localhost>", "<user@>", "<@localhost>",
                                  "<user@@localhost>", "<>", "<a..b@localhost>"])
def test_bad_recipient_address(daemon, path):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:" + path)
        assert r.code == 501, r
        assert_enhanced(r, "5.1.3")


def test_mail_without_from_is_a_syntax_error(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL <a@sender.test>")
        assert r.code == 501, r
        assert_enhanced(r)
        assert r.enhanced.startswith("5.5.") or r.enhanced == "5.1.7", r


def test_null_sender_accepted(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:<>")
        assert r.code == 250, r
        assert_enhanced(r)
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message("null sender", sender="")))
        assert c.reply().code == 250
    msgs = daemon.wait_messages("user@localhost")
    assert msgs[0].startswith(b"Return-Path: <>\n"), msgs[0][:200]


def test_postmaster_without_domain_accepted(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<Postmaster>")
        assert r.code == 250, r


def test_unknown_mail_parameter_refused(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:<a@sender.test> FROBNICATE=1")
        assert r.code in (501, 555), r
        assert_enhanced(r)


# --------------------------------------------------------------------------
# SIZE

def test_size_above_limit_refused_at_mail(make_daemon):
    d = make_daemon(config={"max_message_size": "1M"})
    with session(d) as c:
        r = c.cmd("MAIL FROM:<a@sender.test> SIZE=1048577")
        assert r.code == 552, r
        assert_enhanced(r, "5.3.4")
        r = c.cmd("MAIL FROM:<a@sender.test> SIZE=99999999999999")
        assert r.code == 552, r
        assert_enhanced(r, "5.3.4")


def test_size_equal_to_limit_accepted(make_daemon):
    d = make_daemon(config={"max_message_size": "1M"})
    with session(d) as c:
        r = c.cmd("MAIL FROM:<a@sender.test> SIZE=1048576")
        assert r.code == 250, r
        assert_enhanced(r)


def test_size_with_body_8bitmime_accepted(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:<a@sender.test> SIZE=1000 BODY=8BITMIME")
        assert r.code == 250, r


# --------------------------------------------------------------------------
# relay control and recipients

def test_relay_denied_outside_relay_networks(make_daemon):
    d = make_daemon(config={"relay_networks": "10.0.0.0/8"})
    with session(d) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<someone@remote.test>")
        assert r.code == 554, r
        assert_enhanced(r, "5.7.1")
        # local domains still accepted from anywhere
        r = c.cmd("RCPT TO:<user@localhost>")
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<user@Example.TEST>")
        assert r.code == 250, r


def test_relay_allowed_inside_relay_networks(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<someone@remote.test>")
        assert r.code == 250, r
        assert_enhanced(r)
        assert c.cmd("RSET").code == 250


def test_unknown_local_user_with_users_file(make_daemon, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:%s\nbob@example.test:%s\n" % (h.SECRET_HASH, h.SECRET_HASH))
    d = make_daemon(config={"users_file": str(users), "relay_networks": "10.0.0.0/8"})
    with session(d) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<nobody@localhost>")
        assert r.code == 550, r
        assert_enhanced(r, "5.1.1")
        r = c.cmd("RCPT TO:<bob@localhost>")
        assert r.code == 550, r
        assert_enhanced(r, "5.1.1")
        assert c.cmd("RCPT TO:<alice@localhost>").code == 250
        assert c.cmd("RCPT TO:<ALICE@LOCALHOST>").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        r = c.cmd("RCPT TO:<postmaster@localhost>")
        assert r.code == 250, "postmaster must exist (RFC 5321): %r" % r


def test_refused_recipients_are_not_counted_as_errors(make_daemon, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:%s\n" % h.SECRET_HASH)
    d = make_daemon(config={"users_file": str(users), "relay_networks": "10.0.0.0/8"})
    with session(d) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        for i in range(8):
            r = c.cmd("RCPT TO:<nobody%d@localhost>" % i)
            assert r.code == 550, r
            r = c.cmd("RCPT TO:<someone%d@remote.test>" % i)
            assert r.code == 554, r
        # 16 refusals so far, plus 9 real protocol errors: still no 421
        for i in range(9):
            r = c.cmd("BOGUS%d" % i)
            assert r.code == 500, (i, r)
        r = c.cmd("RCPT TO:<alice@localhost>")
        assert r.code == 250, r
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(h.dot_stuff(h.make_message("after refusals", to="alice@localhost")))
        assert c.reply().code == 250
    d.wait_messages("alice@localhost")


def test_tenth_protocol_error_closes_with_421(daemon):
    with daemon.raw() as c:
        # mixed kinds of protocol errors: 503, 500, 501
        errors = ["MAIL FROM:<a@sender.test>",  # 503: before EHLO
                  "EHLO client.test",           # (not an error)
                  "RCPT TO:<user@localhost>",   # 503
                  "DATA",                       # 503
                  "FOO",                        # 500
                  "BAR",                        # 500
                  "MAIL FROM:<bad address>",    # 501
                  "NOOP " + "x" * 600,          # 500 5.5.2
                  "BAZ",                        # 500
                  "QUX"]                        # 500 (9th)
        seen = 0
        for line in errors:
            r = c.cmd(line)
            if line.startswith("EHLO"):
                assert r.code == 250
                continue
            seen += 1
            assert r.code in (500, 501, 503), (line, r)
        assert seen == 9
        assert c.cmd("NOOP").code == 250, "9 errors must not close the session"
        r = c.cmd("LAST")
        assert r.code == 500, r
        assert_enhanced(r, "5.5.1")
        r = c.reply()
        assert r.code == 421, r
        assert_enhanced(r, "4.7.0")
        c.wait_closed(10)


def test_pipelined_commands_answered_in_order(daemon):
    with session(daemon) as c:
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<user@localhost>\r\n"
               b"RCPT TO:<other@localhost>\r\nDATA\r\n")
        replies = [c.reply() for _ in range(4)]
        assert [r.code for r in replies] == [250, 250, 250, 354], replies
        c.send(h.dot_stuff(h.make_message("pipelined")) + b"QUIT\r\n")
        r = c.reply()
        assert r.code == 250, r
        assert c.reply().code == 221
    daemon.wait_messages("user@localhost")
    daemon.wait_messages("other@localhost")


def test_pipelined_with_errors_answered_in_order(daemon):
    with session(daemon) as c:
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bad address>\r\n"
               b"RCPT TO:<user@localhost>\r\nNOOP\r\nRSET\r\nRCPT TO:<user@localhost>\r\n")
        codes = [c.reply().code for _ in range(6)]
        assert codes == [250, 501, 250, 250, 250, 503], codes


def test_swaks_pipelining(daemon):
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % daemon.port, "--pipeline",
                        "--helo", "swaks.test", "--from", "a@sender.test",
                        "--to", "user@localhost", "--header", "Subject: swaks pipelined",
                        "--body", "pipelined body"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    msgs = daemon.wait_messages("user@localhost")
    assert b"swaks pipelined" in msgs[0]


def test_max_recipients(make_daemon):
    d = make_daemon(config={"max_recipients": 3})
    with session(d) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        for i in range(3):
            assert c.cmd("RCPT TO:<u%d@localhost>" % i).code == 250
        r = c.cmd("RCPT TO:<u3@localhost>")
        assert r.code == 452, r
        assert_enhanced(r, "4.5.3")
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message("three recipients")))
        assert c.reply().code == 250
    for i in range(3):
        d.wait_messages("u%d@localhost" % i)
    time.sleep(0.5)
    assert d.maildir_messages("u3@localhost") == []


# --------------------------------------------------------------------------
# BDAT (CHUNKING) and DSN

def test_bdat_two_chunks_delivered_intact(daemon):
    chunk1 = (b"From: <a@sender.test>\r\nTo: <user@localhost>\r\nSubject: bdat chunks\r\n\r\n"
              b"line one\r\nline t")
    chunk2 = b"wo\r\n.dot line not stuffed\r\n..two dots\r\nlast line\r\n"
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        r = c.reply()
        assert r.code == 250, r
        assert_enhanced(r)
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        r = c.reply()
        assert r.code == 250, r
        h.queue_id_of(r)
    msg = daemon.wait_messages("user@localhost")[0]
    body = msg.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
    assert body == b"line one\nline two\n.dot line not stuffed\n..two dots\nlast line\n", body


def test_bdat_zero_last_ends_the_message(daemon):
    chunk = b"Subject: bdat zero\r\n\r\nonly chunk\r\n"
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert c.reply().code == 250
        r = c.cmd("BDAT 0 LAST")
        assert r.code == 250, r
        h.queue_id_of(r)
    msg = daemon.wait_messages("user@localhost")[0]
    assert msg.endswith(b"\nonly chunk\n"), msg


def test_bdat_pipelined_with_commands(daemon):
    chunk = b"Subject: bdat pipelined\r\n\r\nbody\r\n"
    with session(daemon) as c:
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<user@localhost>\r\n"
               b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
        codes = [c.reply() for _ in range(4)]
        assert [r.code for r in codes] == [250, 250, 250, 250], codes
    daemon.wait_messages("user@localhost")


def test_next_transaction_pipelined_during_the_commit(daemon):
    """After BDAT LAST the client sends the next transaction, larger than
    what is read ahead while the first commits, and QUIT, before reading
    any reply: every command is answered once, in order, and both
    messages arrive intact."""
    first = h.make_message("during commit one", body="first body\r\n")
    second = h.make_message("during commit two", body="y" * 78 + "\r\n") + \
        b"".join(b"line %05d " % i + b"z" * 60 + b"\r\n" for i in range(4000))
    assert len(second) > 256 * 1024
    with session(daemon) as c:
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<user@localhost>\r\n"
               b"BDAT %d LAST\r\n" % len(first) + first +
               b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<other@localhost>\r\n"
               b"BDAT %d LAST\r\n" % len(second) + second + b"QUIT\r\n")
        replies = [c.reply() for _ in range(7)]
        assert [r.code for r in replies] == [250, 250, 250, 250, 250, 250, 221], replies
        assert h.queue_id_of(replies[2]) != h.queue_id_of(replies[5])
        c.wait_closed(10)
    got = daemon.wait_messages("other@localhost")[0].replace(b"\r\n", b"\n")
    body = second.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    assert got.endswith(b"\n\n" + body), (len(got), got[-200:])
    got = daemon.wait_messages("user@localhost")[0]
    assert b"Subject: during commit one" in got and b"first body" in got, got


def test_bdat_without_rcpt_is_a_sequence_error(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        c.send(b"BDAT 4 LAST\r\nabcd")
        r = c.reply()
        assert r.code == 503, r
        # the chunk was consumed: the next command is understood
        assert c.cmd("NOOP").code == 250


def test_data_after_bdat_is_a_sequence_error(daemon):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        c.send(b"BDAT 3\r\nabc")
        assert c.reply().code == 250
        r = c.cmd("DATA")
        assert r.code == 503, r


def test_dsn_parameters_accepted(daemon):
    with session(daemon) as c:
        r = c.cmd("MAIL FROM:<a@sender.test> RET=HDRS ENVID=QQ314159+2Bx")
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<user@localhost> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;user@localhost")
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<other@localhost> NOTIFY=NEVER")
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(h.dot_stuff(h.make_message("dsn params")))
        r = c.reply()
        assert r.code == 250, r
        r = c.cmd("MAIL FROM:<a@sender.test> RET=FULL")
        assert r.code == 250, r
    daemon.wait_messages("user@localhost")
    daemon.wait_messages("other@localhost")


@pytest.mark.parametrize("line", ["MAIL FROM:<a@sender.test> RET=SOME",
                                  "MAIL FROM:<a@sender.test> RET=FULL RET=HDRS",
                                  "MAIL FROM:<a@sender.test> BODY=9BIT",
                                  "MAIL FROM:<a@sender.test> SIZE=abc"])
def test_bad_mail_parameters_refused(daemon, line):
    with session(daemon) as c:
        r = c.cmd(line)
        assert r.code in (501, 555), r
        assert_enhanced(r)


@pytest.mark.parametrize("param", ["NOTIFY=BOGUS", "NOTIFY=NEVER,SUCCESS"])
def test_bad_rcpt_parameters_refused(daemon, param):
    with session(daemon) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<user@localhost> " + param)
        assert r.code in (501, 555), r
        assert_enhanced(r)


# --------------------------------------------------------------------------
# timeouts and connection limits

def test_idle_timeout_sends_421_then_closes(make_daemon):
    d = make_daemon(config={"smtp_timeout": "2s"})
    with d.raw() as c:
        c.ehlo()
        start = time.monotonic()
        data = c.wait_closed(30)
        assert data.startswith(b"421 "), "expected a 421 line before the close, got %r" % data
        assert re.match(rb"^421 4\.\d+\.\d+ ", data), data
        assert time.monotonic() - start >= 1.0, "closed before the timeout"


def test_idle_timeout_right_after_banner(make_daemon):
    d = make_daemon(config={"smtp_timeout": "2s"})
    with d.raw() as c:
        data = c.wait_closed(30)
        assert data.startswith(b"421 "), data


def test_timeout_in_data_closes_and_delivers_nothing(make_daemon):
    d = make_daemon(config={"smtp_timeout": "2s"})
    with session(d) as c:
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert c.cmd("RCPT TO:<user@localhost>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: never finished\r\n\r\npartial")
        data = c.wait_closed(30)
        assert data.startswith(b"421 "), data
    time.sleep(1)
    assert d.maildir_messages("user@localhost") == []
    d.assert_alive()


def _open_sessions(d, n):
    clients = []
    for _ in range(n):
        c = d.raw()
        assert c.banner.code == 220, c.banner
        clients.append(c)
    return clients


def test_max_connections(make_daemon):
    d = make_daemon(config={"max_connections": 3})
    time.sleep(1)  # let the daemon see the readiness probe's close
    clients = _open_sessions(d, 3)
    try:
        with d.raw(read_banner=False) as extra:
            r = extra.reply()
            assert r.code == 421, r
            assert_enhanced(r, "4.3.2")
            extra.wait_closed(10)
        # the first three still work
        for c in clients:
            assert c.cmd("NOOP").code == 250
        # a freed slot can be used again
        quitter = clients.pop()
        assert quitter.cmd("QUIT").code == 221
        quitter.wait_closed(10)
        quitter.close()

        def accepted():
            c = d.raw(read_banner=False)
            r = c.reply()
            if r.code == 220:
                return c
            c.close()
            return None
        c = h.wait_for(accepted, 10, what="a free slot after a QUIT")
        clients.append(c)
    finally:
        for c in clients:
            c.close()


def test_max_connections_per_ip(make_daemon):
    d = make_daemon(config={"max_connections_per_ip": 2})
    time.sleep(1)
    clients = _open_sessions(d, 2)
    try:
        with d.raw(read_banner=False) as extra:
            r = extra.reply()
            assert r.code == 421, r
            assert_enhanced(r, "4.7.0")
            extra.wait_closed(10)
        for c in clients:
            assert c.cmd("NOOP").code == 250
    finally:
        for c in clients:
            c.close()


def test_max_connections_checked_before_per_ip(make_daemon):
    d = make_daemon(config={"max_connections": 2, "max_connections_per_ip": 2})
    time.sleep(1)
    clients = _open_sessions(d, 2)
    try:
        with d.raw(read_banner=False) as extra:
            r = extra.reply()
            assert r.code == 421, r
            assert_enhanced(r, "4.3.2")
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------
# IPv6

@pytest.mark.skipif(not h.has_ipv6_loopback(), reason="no ::1 on this machine")
def test_ipv6_listener(make_daemon, tmp_path):
    port4, port6 = h.free_port(), h.free_port("::1")
    d = make_daemon(port=port4, config={"listen": ["127.0.0.1:%d" % port4, "[::1]:%d" % port6]})
    c = h.RawClient("::1", port6)
    try:
        assert c.banner.code == 220, c.banner
        r = c.send_message("a@sender.test", ["user@localhost"], h.make_message("over ipv6"))
        assert r.code == 250, r
    finally:
        c.close()
    msg = d.wait_messages("user@localhost")[0]
    received = [v for n, v in h.header_block(msg) if n.lower() == b"received"]
    assert received and b"::1" in received[0], received
