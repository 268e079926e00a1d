"""Local submission for every account: facteur-sendmail over the daemon's
submission socket as `nobody`, -bs (SMTP on standard input and output),
mailq and newaliases by the name they are called, and what bad input on
-bs meets (docs/operations.md, "facteur as the host's sendmail")."""

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import facteur_harness as h

SENDMAIL = h.BUILD_DIR / "facteur-sendmail"
EX_NOPERM = 77
EX_TEMPFAIL = 75

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="runs programs as nobody: needs root")
pytestmark = needs_root

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY.pw_gid)
    os.setuid(NOBODY.pw_uid)


@pytest.fixture
def start():
    """start(config=..., extra_lines=..., env=...) -> a started Daemon in a
    folder every account may cross (tmp_path may not be), so that only the
    spool's own mode keeps the callers out. Stopped (exit 0) and removed at
    the end."""
    base = Path(tempfile.mkdtemp(prefix="facteur-submit-", dir="/tmp"))
    base.chmod(0o755)
    made = []

    def factory(config=None, extra_lines=(), env=None):
        d = h.Daemon(base / ("d%d" % len(made)), config=config,
                     extra_lines=extra_lines, env=env)
        made.append(d)
        return d.start()

    factory.base = base  # for the files a test writes beside the daemons
    yield factory
    try:
        for d in made:
            assert not d.alive() or d.stop() == 0, d.log_tail()
    finally:
        for d in made:
            d.close_log()
        h.kill_leftovers()
        shutil.rmtree(base, ignore_errors=True)


def sendmail(d, args, message=b"", nobody=True, program=SENDMAIL, timeout=60):
    if isinstance(message, str):
        message = message.encode()
    return subprocess.run([str(program), "-C", str(d.conf_path)] + list(args),
                          input=message, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=h.clean_env(),
                          preexec_fn=as_nobody if nobody else None,
                          timeout=timeout)


def queued_files(d):
    return list((d.spool / "queue").glob("*.msg")) if os.path.isdir(d.spool / "queue") else []


# --------------------------------------------------------------------------
# -t and the identity of the caller

def test_nobody_queues_with_t_and_the_accepted_line_names_it(start):
    d = start()
    r = sendmail(d, ["-t", "-v"], "To: user@localhost\nSubject: from nobody\n\nhello\n")
    assert r.returncode == 0, (r, d.log_tail())
    qid = re.search(rb"queued as ([0-9A-F]{16})", r.stderr).group(1).decode()
    msg = d.wait_messages("user@localhost")[0]
    assert b"Subject: from nobody" in msg
    assert b"\nFrom: nobody@mx.example.test" in msg.replace(b"\r\n", b"\n")
    assert re.search(rb"Received: by mx\.example\.test \(facteur\) with local id "
                     + qid.encode() + rb";", msg), msg
    accepted = d.wait_event("accepted", queue_id=qid)[0]
    assert accepted["uid"] == "65534" and accepted["user"] == "nobody", accepted
    assert accepted["client"] == "local" and accepted["protocol"] == "local", accepted
    connect = d.events("connect", session=accepted["session"])[0]
    assert connect["uid"] == "65534" and connect["user"] == "nobody", connect
    # the default sender is not an override
    assert not d.events("sender_override")


def test_nobody_cannot_read_the_spool(start):
    d = start()
    sendmail(d, ["user@localhost"], "Subject: x\n\nx\n")
    assert (d.spool.stat().st_mode & 0o777) == 0o700
    probe = ("import errno, os, sys\n"
             "for op in (lambda: os.listdir(sys.argv[1]),\n"
             "           lambda: open(os.path.join(sys.argv[1], 'queue')),\n"
             "           lambda: os.open(sys.argv[1], os.O_RDONLY)):\n"
             "    try:\n"
             "        op()\n"
             "    except PermissionError:\n"
             "        continue\n"
             "    sys.exit('readable')\n")
    r = subprocess.run(["/usr/bin/python3", "-c", probe, str(d.spool)],
                       preexec_fn=as_nobody, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    # ...while the socket beside it is everybody's
    sock = Path(str(d.spool) + ".submit")
    assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o666


def test_users_file_is_never_read_by_the_caller(start):
    users = start.base / "users"
    users.write_text("known@localhost:%s\n" % h.SECRET_HASH)
    users.chmod(0o600)  # the daemon's (root's) only
    d = start(config={"users_file": str(users)})
    r = sendmail(d, ["known@localhost"], "Subject: x\n\nx\n")
    assert r.returncode == 0, r
    d.wait_messages("known@localhost")
    r = sendmail(d, ["stranger@localhost"], "Subject: x\n\nx\n")
    assert r.returncode == 67 and b"stranger@localhost" in r.stderr, r


def test_f_by_nobody_is_logged_and_root_is_not(start):
    d = start()
    r = sendmail(d, ["-f", "other@elsewhere.example", "user@localhost"], "Subject: f\n\nx\n")
    assert r.returncode == 0, r
    ev = d.wait_event("sender_override")[0]
    assert ev["uid"] == "65534" and ev["user"] == "nobody", ev
    assert ev["from"] == "other@elsewhere.example" and ev["client"] == "local", ev
    msg = d.wait_messages("user@localhost")[0]
    assert b"Return-Path: <other@elsewhere.example>" in msg
    r = sendmail(d, ["-f", "robot@elsewhere.example", "user@localhost"], "Subject: f\n\nx\n",
                 nobody=False)
    assert r.returncode == 0, r
    d.wait_messages("user@localhost", count=2)
    assert len(d.events("sender_override")) == 1


def test_daemon_down_nobody_gets_75_and_root_still_queues(start):
    d = start()
    d.stop_ok()
    r = sendmail(d, ["user@localhost"], "Subject: down\n\nx\n")
    assert r.returncode == EX_TEMPFAIL, r
    assert b"cannot reach facteurd" in r.stderr and b"not sent" in r.stderr, r.stderr
    assert not queued_files(d)
    # -bs needs the daemon's session, whoever asks
    for nobody in (True, False):
        r = sendmail(d, ["-bs"], b"EHLO x\r\nQUIT\r\n", nobody=nobody)
        assert r.returncode == EX_TEMPFAIL and b"cannot reach facteurd" in r.stderr, r
    # root (who may write the spool) keeps the direct write
    r = sendmail(d, ["user@localhost"], "Subject: kept\n\nx\n", nobody=False)
    assert r.returncode == 0, r
    assert len(queued_files(d)) == 1
    d.start()
    msg = d.wait_messages("user@localhost")[0]
    assert b"Subject: kept" in msg


# --------------------------------------------------------------------------
# -bs

class BsClient:
    """facteur-sendmail -bs driven the way PHP's Symfony Mailer and
    Laravel do: one command, then its whole reply."""

    def __init__(self, d):
        self.proc = popen_sendmail(d, ["-bs"])

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def reply(self):
        lines = []
        while True:
            line = self.proc.stdout.readline()
            assert line, "-bs closed: %r" % (lines,)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def finish(self, timeout=30):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        return out


def test_bs_php_style_dialogue_delivers(start):
    d = start()
    c = BsClient(d)
    code, greeting = c.reply()
    assert code == 220 and b"ESMTP" in greeting
    code, ehlo = c.cmd(b"EHLO [127.0.0.1]")
    assert code == 250 and b"STARTTLS" not in ehlo and b"SIZE" in ehlo
    assert c.cmd(b"MAIL FROM:<app@shop.example>")[0] == 250
    assert c.cmd(b"RCPT TO:<user@localhost>")[0] == 250
    assert c.cmd(b"RCPT TO:<customer@far.example>")[0] == 250  # trusted: relays
    assert c.cmd(b"DATA")[0] == 354
    c.send(b"From: app@shop.example\r\nTo: user@localhost\r\nSubject: order\r\n\r\n"
           b"..leading dot\r\nthanks\r\n.\r\n")
    code, text = c.reply()
    assert code == 250, text
    qid = re.search(rb"queued as ([0-9A-F]{16})", text).group(1).decode()
    assert c.cmd(b"QUIT")[0] == 221
    c.finish()
    assert c.proc.returncode == 0
    msg = d.wait_messages("user@localhost")[0]
    assert b"\r\n.leading dot\r\n" in msg.replace(b"\n", b"\r\n").replace(b"\r\r", b"\r")
    accepted = d.wait_event("accepted", queue_id=qid)[0]
    assert accepted["protocol"] == "local" and accepted["client"] == "local"
    assert accepted["uid"] == "65534" and accepted["user"] == "nobody"
    assert d.events("sender_override", session=accepted["session"])


def test_bs_junk_commands_get_500_and_the_session_goes_on(start):
    d = start()
    c = BsClient(d)
    assert c.reply()[0] == 220
    for junk in (b"HELLO THERE", b"\x01\x02\x03", b"MAIL", b"DATA"):
        code, _ = c.cmd(junk)
        assert 500 <= code < 600, (junk, code)
    assert c.cmd(b"NOOP")[0] == 250
    assert c.cmd(b"QUIT")[0] == 221
    c.finish()
    assert c.proc.returncode == 0
    d.assert_alive()


def test_bs_endless_line_meets_the_line_limit(start):
    d = start(env=h.small_quarantine_env())
    rss_before = d.rss_kb()
    c = BsClient(d)
    assert c.reply()[0] == 220
    chunk = b"A" * (1 << 20)
    for _ in range(32):  # 32 MiB without a line end
        c.send(chunk)
    c.send(b"\r\n")
    code, text = c.reply()
    assert code == 500 and b"too long" in text.lower(), text
    assert c.cmd(b"NOOP")[0] == 250
    assert c.cmd(b"QUIT")[0] == 221
    c.finish()
    d.assert_alive()
    assert d.rss_kb() - rss_before < 24 * 1024, (rss_before, d.rss_kb())


def test_bs_client_without_quit_is_timed_out(start):
    d = start(config={"smtp_timeout": "2s"})
    c = BsClient(d)
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO app")[0] == 250
    # standard input stays open and silent: the daemon's timeout ends it
    t0 = time.monotonic()
    out = c.proc.stdout.read()
    c.proc.wait(30)
    assert b"421" in out, out
    assert time.monotonic() - t0 < 20
    assert c.proc.returncode == 0
    c.proc.stdin.close()
    d.wait_event("timeout")


def child_maxrss_kb(proc):
    """Reap proc and return its peak resident size."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss


def feed(proc, head, total, tail=b""):
    """Write head, `total` octets of 76-column lines, then tail, on a thread
    (the reader side reads the replies meanwhile)."""
    def run():
        try:
            proc.stdin.write(head)
            line = b"y" * 76 + b"\r\n"
            block = line * ((1 << 20) // len(line))
            sent = 0
            while sent < total:
                proc.stdin.write(block)
                sent += len(block)
            proc.stdin.write(tail)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def popen_sendmail(d, args):
    """facteur-sendmail as nobody, with a small ASan quarantine so that its
    peak memory is what it holds."""
    return subprocess.Popen([str(SENDMAIL), "-C", str(d.conf_path)] + args,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=h.clean_env(h.small_quarantine_env()),
                            preexec_fn=as_nobody)


HUNDRED_MB = 100 << 20


def measured_daemon(start, small_args, small_message):
    """A daemon with max_message_size = 1M, a small message through it to
    learn what facteur-sendmail needs for one, and facteurd's memory then."""
    d = start(config={"max_message_size": "1M"}, env=h.small_quarantine_env())
    p = popen_sendmail(d, small_args)
    p.stdin.write(small_message)
    p.stdin.close()
    small_rss = child_maxrss_kb(p)
    d.wait_messages("user@localhost")
    return d, small_rss, d.rss_kb()


def assert_refused_and_bounded(d, rss, small_rss, daemon_rss):
    """Nothing queued or delivered from the big message, and neither program
    held it: facteur-sendmail within 16 MiB of a small message's need,
    facteurd within 32 MiB of its size before."""
    assert rss - small_rss < 16 * 1024, (small_rss, rss)
    assert d.rss_kb() - daemon_rss < 32 * 1024, (daemon_rss, d.rss_kb())
    assert not queued_files(d)
    assert len(d.maildir_messages("user@localhost")) == 1


def test_100mb_over_max_message_size_through_bs_is_refused_and_streamed(start):
    d, small_rss, daemon_rss = measured_daemon(start, ["user@localhost"],
                                               b"Subject: small\n\nx\n")
    c = BsClient(d)
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO app")[0] == 250
    assert c.cmd(b"MAIL FROM:<app@shop.example>")[0] == 250
    assert c.cmd(b"RCPT TO:<user@localhost>")[0] == 250
    assert c.cmd(b"DATA")[0] == 354
    writer = feed(c.proc, b"Subject: huge\r\n\r\n", HUNDRED_MB, b".\r\nQUIT\r\n")
    code, text = c.reply()
    assert code == 552, text
    assert c.reply()[0] == 221
    writer.join(60)
    c.proc.stdout.read()
    rss = child_maxrss_kb(c.proc)
    assert c.proc.returncode == 0
    assert_refused_and_bounded(d, rss, small_rss, daemon_rss)


def test_100mb_over_max_message_size_through_t_is_refused_and_streamed(start):
    d, small_rss, daemon_rss = measured_daemon(
        start, ["-t"], b"To: user@localhost\nSubject: small\n\nx\n")
    p = popen_sendmail(d, ["-t"])
    writer = feed(p, b"To: user@localhost\nSubject: huge\n\n", HUNDRED_MB)
    writer.join(120)
    err = p.stderr.read()
    rss = child_maxrss_kb(p)
    assert p.returncode == 65, (p.returncode, err)
    assert b"552" in err, err
    assert_refused_and_bounded(d, rss, small_rss, daemon_rss)


# --------------------------------------------------------------------------
# mailq and newaliases, by the name they are called

def link(d, name):
    path = d.dir / name
    path.symlink_to(SENDMAIL)
    return path


def test_mailq_as_a_link_lists_the_queue(start):
    dead = h.free_port()
    d = start(config={"retry_min": "1h", "retry_max": "2h",
                                     "dns_servers": "127.0.0.1:%d" % h.free_port()},
              extra_lines=["route = * [127.0.0.1]:%d tls=none" % dead])
    mailq = link(d, "mailq")
    r = sendmail(d, [], nobody=False, program=mailq)
    assert r.returncode == 0 and r.stdout.decode().strip() == "Mail queue is empty", r
    r = sendmail(d, ["-v", "-f", "robot@example.org", "far@remote.test"], "Subject: q\n\nx\n")
    qid = re.search(rb"queued as ([0-9A-F]{16})", r.stderr).group(1).decode()
    d.wait_event("deferred", queue_id=qid)
    r = sendmail(d, [], nobody=False, program=mailq)
    lines = r.stdout.decode().strip().splitlines()
    assert r.returncode == 0 and len(lines) == 2, r
    assert lines[0].split()[0] == qid and "far@remote.test" in lines[0]
    # the queue is not everybody's to read
    r = sendmail(d, [], program=mailq)
    assert r.returncode == EX_NOPERM and b"mailq is for root" in r.stderr, r


def test_newaliases_as_a_link_reloads_the_aliases(start):
    aliases = start.base / "aliases"
    aliases.write_text("team: first@localhost\n")
    d = start(config={"aliases_file": str(aliases)})
    assert sendmail(d, ["team@localhost"], "Subject: one\n\nx\n").returncode == 0
    d.wait_messages("first@localhost")
    aliases.write_text("team: second@localhost\n")
    newaliases = link(d, "newaliases")
    r = sendmail(d, [], program=newaliases)
    assert r.returncode == EX_NOPERM and b"newaliases is for root" in r.stderr, r
    r = sendmail(d, [], nobody=False, program=newaliases)
    assert r.returncode == 0, r
    d.wait_event("reloaded")
    assert sendmail(d, ["team@localhost"], "Subject: two\n\nx\n").returncode == 0
    d.wait_messages("second@localhost")
    assert len(d.maildir_messages("first@localhost")) == 1


def test_newaliases_without_a_daemon_says_so(start):
    d = start()
    d.stop_ok()
    r = sendmail(d, ["-bi"], nobody=False)
    assert r.returncode == 1 and r.stderr, r


# --------------------------------------------------------------------------
# the socket's place

def test_configured_socket_that_cannot_be_made_stops_the_start(start):
    """Only the socket's own folder is made: a missing parent is a
    mistake in the path."""
    d = start()
    d.stop_ok()
    d.settings["submit_socket"] = str(d.dir / "missing" / "deeper" / "submit")
    d.write_config()
    r = h.run_facteurd(["-c", str(d.conf_path)], timeout=60)
    assert r.returncode == 69, r
    assert b"submit_socket" in r.stderr and b"missing/deeper" in r.stderr, r.stderr
    assert not (d.dir / "missing").exists()


def test_missing_socket_folder_is_made_as_a_runtime_folder(start):
    """/run/facteur/submit on a host where no service manager made
    /run/facteur: facteurd makes the folder, searchable by all."""
    d = start()
    d.stop_ok()
    folder = d.dir / "run-facteur"
    d.settings["submit_socket"] = str(folder / "submit")
    d.start()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755, oct(folder.stat().st_mode)
    assert stat.S_ISSOCK((folder / "submit").stat().st_mode)
    assert d.wait_event("submit_folder_made")[0]["path"] == str(folder)
    r = sendmail(d, ["user@localhost"], "Subject: runtime folder\n\nx\n")
    assert r.returncode == 0, r
    d.wait_event("delivered")
    # the next start finds it there and says nothing
    d.stop_ok()
    d.start()
    d.send()
    assert len(d.events("submit_folder_made")) <= 1


def test_default_socket_out_of_reach_is_a_warning(start):
    d = start()
    d.stop_ok()
    sock = Path(str(d.spool) + ".submit")
    assert not sock.exists()  # removed at the stop
    sock.write_text("in the way\n")
    d.start()
    ev = d.wait_event("submit_error")[0]
    assert "not a socket" in ev["reason"], ev
    # submission by nobody: no daemon to reach through it
    r = sendmail(d, ["user@localhost"], "Subject: x\n\nx\n")
    assert r.returncode == EX_TEMPFAIL, r
    # and none serves no socket, without a warning
    d.stop_ok()
    sock.unlink()
    d.settings["submit_socket"] = "none"
    d.start()
    d.send()
    assert not sock.exists() and not d.events("submit_error")[1:]
