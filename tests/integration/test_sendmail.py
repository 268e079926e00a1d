"""facteur-sendmail against a running (or stopped) daemon (SPEC.md §2, §8;
docs/operations.md): what callers such as cron, PHP's mail() and git
send-email pass it, and what arrives in the mailboxes."""

import os
import re
import subprocess
import time

import facteur_harness as h

SENDMAIL = h.BUILD_DIR / "facteur-sendmail"
FACTEURCTL = h.BUILD_DIR / "facteurctl"

EX_USAGE = 64
EX_NOUSER = 67


def sendmail(d, args, message, env=None, config=True, timeout=60):
    """Run facteur-sendmail with `message` (bytes or str) on stdin."""
    if isinstance(message, str):
        message = message.encode()
    cmd = [str(SENDMAIL)]
    if config:
        cmd += ["-C", str(d.conf_path)]
    cmd += list(args)
    return subprocess.run(cmd, input=message, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=h.clean_env(env),
                          timeout=timeout)


def sent(d, args, message, **kw):
    r = sendmail(d, args, message, **kw)
    assert r.returncode == 0, (args, r.returncode, r.stderr, d.log_tail())
    return r


def headers(message):
    return h.header_block(message)


def header(message, name):
    values = [v for n, v in headers(message) if n.lower() == name.lower().encode()]
    return values


def body(message):
    text = message.replace(b"\r\n", b"\n")
    return text.split(b"\n\n", 1)[1]


def invoking_user():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


# --------------------------------------------------------------------------
# plain submission

def test_plain_message_arrives_with_date_message_id_and_from(daemon):
    r = sent(daemon, ["user@localhost"], "Subject: plain\n\nhello world\n")
    assert r.stdout == b"" and r.stderr == b""
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Subject") == [b"plain"]
    date = header(msg, "Date")
    assert len(date) == 1 and re.match(rb"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$",
                                      date[0]), date
    mid = header(msg, "Message-ID")
    assert len(mid) == 1 and re.match(rb"^<\d+\.[0-9a-f]+@mx\.example\.test>$", mid[0]), mid
    sender = "%s@%s" % (invoking_user(), h.HOSTNAME)
    assert header(msg, "From") == [sender.encode()]
    assert header(msg, "Return-Path") == [("<%s>" % sender).encode()]
    received = header(msg, "Received")
    assert len(received) == 1
    assert re.match(rb"^by mx\.example\.test \(facteur\) with local id [0-9A-F]{16};",
                    received[0]), received
    assert body(msg) == b"hello world\n"


def test_present_headers_are_kept(daemon):
    message = ("From: Me <me@example.org>\nDate: Tue, 02 Jan 2024 10:00:00 +0100\n"
               "Message-ID: <own.1@example.org>\nSubject: own\n\nbody\n")
    sent(daemon, ["user@localhost"], message)
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "From") == [b"Me <me@example.org>"]
    assert header(msg, "Date") == [b"Tue, 02 Jan 2024 10:00:00 +0100"]
    assert header(msg, "Message-ID") == [b"<own.1@example.org>"]


def test_message_without_headers_gets_them(daemon):
    sent(daemon, ["user@localhost"], "just a body line\nsecond line\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Date") and header(msg, "Message-ID") and header(msg, "From")
    assert body(msg) == b"just a body line\nsecond line\n"


def test_several_recipients_and_bare_local_name(daemon):
    """A recipient without a domain gets the first local domain (the host
    name mx.example.test is not local here); one argument may hold a
    list."""
    sent(daemon, ["user", "a@example.test, B <b@localhost>"], "Subject: many\n\nx\n")
    for rcpt in ("user@localhost", "a@example.test", "b@localhost"):
        msg = daemon.wait_messages(rcpt)[0]
        assert header(msg, "Subject") == [b"many"]


def test_stored_in_wire_form_in_the_spool(make_daemon):
    """With the daemon stopped, the spool file can be read: CRLF lines,
    dot-stuffed, behind facteur's Received header."""
    d = make_daemon()
    d.stop_ok()
    sent(d, ["-i", "user@localhost"], "Subject: wire\n\n.hidden\nlast\n")
    msgs = list((d.spool / "queue").glob("*.msg"))
    assert len(msgs) == 1
    data = msgs[0].read_bytes()
    qid = msgs[0].stem
    assert data.startswith(b"Received: by mx.example.test (facteur) with local id "
                           + qid.encode())
    assert b"\r\n\r\n..hidden\r\nlast\r\n" in data
    assert re.search(rb"[^\r]\n", data) is None  # every LF after a CR
    assert (d.spool / "queue" / (qid + ".env")).exists()


# --------------------------------------------------------------------------
# options

def test_t_takes_recipients_from_headers_and_removes_bcc(daemon):
    message = ("To: Ann <ann@localhost>,\n"
               "  \"Doe, Bob\" <bob@localhost>\n"
               "Cc: Team: carl@localhost;\n"
               "Bcc: (hidden) dora@localhost\n"
               "Subject: with -t\n\nbody\n")
    sent(daemon, ["-t"], message)
    for rcpt in ("ann@localhost", "bob@localhost", "carl@localhost", "dora@localhost"):
        msg = daemon.wait_messages(rcpt)[0]
        assert header(msg, "Subject") == [b"with -t"]
        assert header(msg, "Bcc") == []
        text = msg.split(b"\n\n", 1)[0]
        assert b"hidden" not in text
        assert header(msg, "Cc") == [b"Team: carl@localhost;"]


def test_t_adds_command_line_recipients(daemon):
    sent(daemon, ["-t", "extra@localhost"], "To: ann@localhost\nSubject: both\n\nx\n")
    daemon.wait_messages("ann@localhost")
    daemon.wait_messages("extra@localhost")


def test_bcc_is_removed_without_t(daemon):
    sent(daemon, ["user@localhost"], "Bcc: secret@localhost\nSubject: s\n\nx\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Bcc") == []
    assert not daemon.maildir_messages("secret@localhost")


def test_f_sets_the_envelope_sender(daemon):
    sent(daemon, ["-f", "robot@example.org", "user@localhost"], "Subject: f\n\nx\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Return-Path") == [b"<robot@example.org>"]
    assert header(msg, "From") == [b"robot@example.org"]


def test_f_attached_and_r_and_F_display_name(daemon):
    sent(daemon, ["-frobot@example.org", "-F", "Cron Daemon", "user@localhost"],
         "Subject: F\n\nx\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Return-Path") == [b"<robot@example.org>"]
    assert header(msg, "From") == [b"Cron Daemon <robot@example.org>"]
    sent(daemon, ["-r", "other@example.org", "b@localhost"], "Subject: r\n\nx\n")
    msg = daemon.wait_messages("b@localhost")[0]
    assert header(msg, "Return-Path") == [b"<other@example.org>"]


def test_f_empty_is_the_null_sender(daemon):
    sent(daemon, ["-f", "", "user@localhost"], "Subject: null\n\nx\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert header(msg, "Return-Path") == [b"<>"]
    # The From: still names someone: the invoking user.
    assert header(msg, "From") == [("%s@%s" % (invoking_user(), h.HOSTNAME)).encode()]


def test_lone_dot_ends_the_message_without_i(daemon):
    sent(daemon, ["user@localhost"], "Subject: dot\n\nbefore\n.\nafter\n")
    msg = daemon.wait_messages("user@localhost")[0]
    assert body(msg) == b"before\n"


def test_lone_dot_is_text_with_i_and_oi(daemon):
    for flag, rcpt in (("-i", "i@localhost"), ("-oi", "oi@localhost")):
        sent(daemon, [flag, rcpt], "Subject: dot\r\n\r\nbefore\r\n.\r\n..two\r\nafter\r\n")
        msg = daemon.wait_messages(rcpt)[0]
        assert body(msg) == b"before\n.\n..two\nafter\n", flag


def test_common_ignored_options_are_accepted(daemon):
    """What PHP, cron and git send-email pass."""
    sent(daemon, ["-odi", "-oem", "-oQ/tmp", "-bm", "-t", "-i"],
         "To: php@localhost\nSubject: php\n\nx\n")
    daemon.wait_messages("php@localhost")


def test_v_prints_the_queue_id(daemon):
    r = sent(daemon, ["-v", "user@localhost"], "Subject: v\n\nx\n")
    m = re.search(rb"queued as ([0-9A-F]{16})", r.stderr)
    assert m, r.stderr
    daemon.wait_event("delivered", queue_id=m.group(1).decode())


def test_config_from_FACTEUR_CONFIG(daemon):
    sent(daemon, ["user@localhost"], "Subject: env\n\nx\n", config=False,
         env={"FACTEUR_CONFIG": str(daemon.conf_path)})
    daemon.wait_messages("user@localhost")


def test_C_names_the_configuration(daemon, tmp_path):
    r = sendmail(daemon, ["-C", str(tmp_path / "missing.conf"), "user@localhost"],
                 "Subject: x\n\nx\n", config=False)
    assert r.returncode == h.EX_CONFIG, r
    assert b"missing.conf" in r.stderr
    r = sendmail(daemon, ["user@localhost"], "x\n", env={"FACTEUR_NO_SUCH_KEY": "1"})
    assert r.returncode == h.EX_CONFIG, r


def test_aliases_expand(make_daemon, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("team: alice, bob\n")
    d = make_daemon(config={"aliases_file": str(aliases)})
    sent(d, ["team@localhost"], "Subject: team\n\nx\n")
    d.wait_messages("alice@localhost")
    d.wait_messages("bob@localhost")


# --------------------------------------------------------------------------
# refusals

def test_no_recipients_exits_64(daemon):
    r = sendmail(daemon, [], "Subject: nobody\n\nx\n")
    assert r.returncode == EX_USAGE, r
    assert b"no recipients" in r.stderr
    r = sendmail(daemon, ["-t"], "Subject: nobody\n\nx\n")
    assert r.returncode == EX_USAGE, r
    assert not list((daemon.spool / "queue").glob("*.msg"))


def test_unknown_user_and_bad_address_are_refused(make_daemon, tmp_path):
    users = tmp_path / "users"
    users.write_text("known@localhost:%s\n" % h.SECRET_HASH)
    d = make_daemon(config={"users_file": str(users)})
    r = sendmail(d, ["nobody@localhost"], "Subject: x\n\nx\n")
    assert r.returncode == EX_NOUSER, r
    assert b"nobody@localhost" in r.stderr
    r = sendmail(d, ["someone@example..org"], "Subject: x\n\nx\n")
    assert r.returncode == EX_NOUSER, r
    r = sendmail(d, ["-f", "not an address", "known@localhost"], "Subject: x\n\nx\n")
    assert r.returncode == EX_USAGE, r
    assert not list((d.spool / "queue").glob("*.msg"))
    sent(d, ["known@localhost"], "Subject: fine\n\nx\n")
    d.wait_messages("known@localhost")


def test_unsupported_mode_exits_64(daemon):
    r = sendmail(daemon, ["-bz"], "")
    assert r.returncode == EX_USAGE, r


# --------------------------------------------------------------------------
# the queue, and a stopped daemon

def test_bp_lists_the_queue(make_daemon):
    d = make_daemon(config={"retry_min": "1h", "retry_max": "2h",
                            "dns_servers": "127.0.0.1:%d" % h.free_port()},
                    start=False)
    d.extra_lines.append("route = * [127.0.0.1]:%d tls=none" % h.free_port())
    d.start()
    r = sent(d, ["-bp"], "")
    assert r.stdout.decode().strip() == "Mail queue is empty"
    r = sent(d, ["-v", "-f", "robot@example.org", "far@remote.test"], "Subject: q\n\nx\n")
    qid = re.search(rb"queued as ([0-9A-F]{16})", r.stderr).group(1).decode()
    d.wait_event("deferred", queue_id=qid)
    r = sent(d, ["-bp"], "")
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 2, lines
    fields = lines[0].split()
    assert fields[0] == qid and fields[3] == "robot@example.org" and fields[4] == "far@remote.test"
    assert lines[1].startswith("-- 1 message,")
    ctl = subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path), "queue"],
                         stdout=subprocess.PIPE, env=h.clean_env(), timeout=30)
    # id, age, size, sender, recipients: the age may tick between the two calls
    ctl_fields = ctl.stdout.decode().splitlines()[0].split()
    assert ctl_fields[0] == fields[0] and ctl_fields[2:5] == fields[2:5]
    assert ctl_fields[1][-1] in "smhd" and ctl_fields[1][:-1].isdigit()


def test_daemon_stopped_message_is_queued_then_delivered_at_start(make_daemon):
    d = make_daemon()
    d.stop_ok()
    t0 = time.monotonic()
    r = sent(d, ["user@localhost"], "Subject: while stopped\n\nkept\n")
    assert time.monotonic() - t0 < 30
    assert r.stdout == b"" and r.stderr == b""  # not running: no error
    assert len(list((d.spool / "queue").glob("*.env"))) == 1
    assert not d.maildir_messages("user@localhost")
    d.start()
    msg = d.wait_messages("user@localhost")[0]
    assert header(msg, "Subject") == [b"while stopped"]
    assert body(msg) == b"kept\n"


def test_running_daemon_picks_the_message_up_at_once(daemon):
    """No restart, no queue scan: the pickup request does it."""
    r = sent(daemon, ["-v", "user@localhost"], "Subject: now\n\nx\n")
    qid = re.search(rb"queued as ([0-9A-F]{16})", r.stderr).group(1).decode()
    daemon.wait_event("delivered", queue_id=qid, timeout=15)
    h.wait_for(lambda: not (daemon.spool / "queue" / (qid + ".msg")).exists(), 15,
               what="the delivered message leaving the spool")


def test_large_message_streams_through(daemon):
    line = "x" * 70 + "\n"
    text = "Subject: big\n\n" + line * 30000  # ~2 MiB
    sent(daemon, ["user@localhost"], text)
    msg = daemon.wait_messages("user@localhost")[0]
    assert body(msg) == (line * 30000).encode()


def test_message_over_max_size_is_refused(make_daemon):
    d = make_daemon(config={"max_message_size": "10K"})
    r = sendmail(d, ["user@localhost"], "Subject: big\n\n" + "y" * 20000 + "\n")
    assert r.returncode == 65, r
    assert not list((d.spool / "queue").glob("*.msg"))
