"""facteurctl against a running daemon (SPEC.md §2, §8; docs/operations.md,
"The control socket"): every command, its output and its exit status.

Mail for remote domains is routed to a loopback port where nothing listens,
so that it stays deferred (retry_min = 1h) while the tests look at it.
"""

import os
import pty
import select
import socket
import stat
import subprocess
import time
import warnings

import pytest

import facteur_harness as h

FACTEURCTL = h.BUILD_DIR / "facteurctl"

EXIT_UNREACHABLE = 1
EXIT_REFUSED = 2
EXIT_USAGE = 64

def ctl(d, *args, stdin=None, env=None, config=True):
    """Run facteurctl on the daemon's configuration."""
    cmd = [str(FACTEURCTL)]
    if config:
        cmd += ["-c", str(d.conf_path)]
    cmd += list(args)
    return subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=h.clean_env(env),
                          timeout=60)


def ok(d, *args, **kw):
    r = ctl(d, *args, **kw)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr, d.log_tail())
    return r.stdout.decode()


def deferring_daemon(make_daemon, config=None):
    """Remote mail stays deferred: every remote domain goes to a closed
    port, and no retry comes before an hour."""
    cfg = {"retry_min": "1h", "retry_max": "2h",
           "dns_servers": "127.0.0.1:%d" % h.free_port()}
    cfg.update(config or {})
    d = make_daemon(config=cfg, start=False)
    d.extra_lines.append("route = * [127.0.0.1]:%d tls=none" % h.free_port())
    return d.start()


def send_deferred(d, sender="sender@example.org", rcpt="someone@remote.test",
                  subject="held"):
    qid = d.send(sender=sender, recipients=(rcpt,), subject=subject)
    d.wait_event("deferred", queue_id=qid)
    return qid


def queue_ids(d):
    out = ok(d, "queue")
    return [line.split()[0] for line in out.splitlines()
            if line and not line.startswith("--") and "queue is empty" not in line]


# --------------------------------------------------------------------------
# the socket

def test_control_socket_is_private_to_the_daemon(daemon):
    path = daemon.spool / "control"
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_raw_protocol_answers_records_then_ok(daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(h.IO_TIMEOUT)
        s.connect(str(daemon.spool / "control"))
        s.sendall(b"stats\r\nfrobnicate\nshow 0123456789ABCDEF\nqueue")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    stats_end = lines.index("ok")
    assert any(l.startswith("facteur_messages_accepted_total ") for l in lines[:stats_end])
    assert lines[stats_end + 1] == "error unknown command"
    assert lines[stats_end + 2] == "error no such message"
    assert lines[stats_end + 3:] == ["ok"]  # an empty queue, last line without LF


def test_over_long_request_line_is_refused_and_closed(daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(h.IO_TIMEOUT)
        s.connect(str(daemon.spool / "control"))
        try:
            s.sendall(b"show " + b"A" * 5000 + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    assert data == b"error line too long\n"
    daemon.assert_alive()


def test_client_that_does_not_read_blocks_nobody(daemon):
    """Thousands of pipelined requests whose replies are never read: the
    daemon stops reading that client and serves the others."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect(str(daemon.spool / "control"))
    sent = 0
    request = b"stats\n" * 1000
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sent += s.send(request)
        except BlockingIOError:
            break  # the daemon no longer reads it: that is the point
    try:
        assert sent > 0
        t0 = time.monotonic()
        out = ok(daemon, "stats")
        assert "facteur_queue_messages" in out
        assert time.monotonic() - t0 < 10
        qid = daemon.send()
        assert qid
    finally:
        s.close()
    daemon.assert_alive()


def test_silent_client_is_disconnected(daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.spool / "control"))
        s.settimeout(45)
        t0 = time.monotonic()
        assert s.recv(100) == b""
        elapsed = time.monotonic() - t0
    assert 20 < elapsed < 45, elapsed


# --------------------------------------------------------------------------
# queue, show

def test_queue_of_empty_spool(daemon):
    assert ok(daemon, "queue").strip() == "Mail queue is empty"


def test_queue_lists_each_message_like_mailq(make_daemon):
    d = deferring_daemon(make_daemon)
    q1 = send_deferred(d, sender="alice@example.org", rcpt="bob@remote.test")
    q2 = d.send(sender="", recipients=("carol@remote.test", "dave@far.test"),
                subject="null sender")
    d.wait_event("deferred", queue_id=q2)
    out = ok(d, "queue")
    lines = out.strip().splitlines()
    assert len(lines) == 3, out
    by_id = {l.split()[0]: l for l in lines[:2]}
    assert set(by_id) == {q1, q2}
    f1 = by_id[q1].split()
    # id, age, size, sender, pending recipients, last error
    assert f1[1][-1] in "smhd" and f1[1][:-1].isdigit()
    assert int(f1[2]) > 0
    assert f1[3] == "alice@example.org"
    assert f1[4] == "bob@remote.test"
    assert "4." in by_id[q1]  # a temporary status code as the last error
    f2 = by_id[q2].split()
    assert f2[3] == "<>"
    assert sorted(f2[4].split(",")) == ["carol@remote.test", "dave@far.test"]
    assert lines[2].startswith("-- 2 messages,")
    assert "3 recipients pending" in lines[2]


def test_show_gives_envelope_states_and_headers(make_daemon):
    d = deferring_daemon(make_daemon)
    qid = send_deferred(d, sender="alice@example.org", rcpt="bob@remote.test",
                        subject="show me")
    out = ok(d, "show", qid)
    assert qid in out
    assert "<alice@example.org>" in out
    assert "client.test" in out  # the HELO name
    rcpt_lines = [l for l in out.splitlines() if l.startswith("recipient")]
    assert len(rcpt_lines) == 1
    fields = rcpt_lines[0].split()
    assert fields[1:4] == ["bob@remote.test", "deferred", "1"], rcpt_lines
    assert fields[5].startswith("4.")
    headers = out.split("\n\n", 1)[1]
    assert "Subject: show me" in headers
    assert headers.startswith("Received: from client.test")
    assert "queued as" not in headers


def test_show_and_queue_escape_terminal_controls_from_peers(make_daemon):
    """A header carrying ESC [ 2 J (clear screen) and a Latin-1 octet, and
    a remote server's reply, reach the operator's terminal escaped."""
    d = deferring_daemon(make_daemon)
    data = (b"From: <alice@example.org>\r\n"
            b"To: <bob@remote.test>\r\n"
            b"Subject: \x1b[2J\x1b]0;owned\x07 Empf\xe4nger\r\n"
            b"\r\nbody\r\n")
    qid = d.send(sender="alice@example.org", recipients=("bob@remote.test",),
                 data=data)
    d.wait_event("deferred", queue_id=qid)
    r = ctl(d, "show", qid)
    assert r.returncode == 0, r
    for out in (r.stdout, ctl(d, "queue").stdout):
        assert b"\x1b" not in out and b"\x07" not in out, out
        out.decode("utf-8")  # strict: no stray octet reaches the terminal
    assert b"Subject: \\x1b[2J\\x1b]0;owned\\x07 Empf\\xe4nger" in r.stdout, r.stdout


def test_show_names_delivered_and_deferred_states(make_daemon):
    """One message, a local recipient (delivered) and a remote one
    (deferred); the lower-case id works too."""
    d = deferring_daemon(make_daemon)
    qid = d.send(recipients=("bob@remote.test", "user@localhost"))
    d.wait_event("deferred", queue_id=qid)
    d.wait_event("delivered", queue_id=qid)
    out = ok(d, "show", qid.lower())
    states = {l.split()[1]: l.split()[2] for l in out.splitlines()
              if l.startswith("recipient")}
    assert states == {"bob@remote.test": "deferred", "user@localhost": "delivered"}


def test_show_unknown_id_exits_2(daemon):
    for arg in ("0123456789ABCDEF", "not-an-id"):
        r = ctl(daemon, "show", arg)
        assert r.returncode == EXIT_REFUSED, r
        assert b"no such message" in r.stderr
        assert r.stdout == b""


# --------------------------------------------------------------------------
# flush, bounce, delete

def test_flush_one_retries_now(make_daemon):
    d = deferring_daemon(make_daemon)
    qid = send_deferred(d)
    assert ok(d, "flush", qid) == ""
    h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 20,
               what="a second attempt after flush ID")
    out = ok(d, "show", qid)
    assert " deferred 2 " in out


def test_flush_all_retries_every_message(make_daemon):
    d = deferring_daemon(make_daemon)
    ids = [send_deferred(d, subject="m%d" % i) for i in range(2)]
    assert ok(d, "flush") == ""
    for qid in ids:
        h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 20,
                   what="a second attempt of %s after flush" % qid)


def test_flush_unknown_id_exits_2(daemon):
    r = ctl(daemon, "flush", "0123456789ABCDEF")
    assert r.returncode == EXIT_REFUSED
    assert b"no such message" in r.stderr


def test_bounce_returns_the_message_to_its_sender(make_daemon):
    d = deferring_daemon(make_daemon)
    qid = send_deferred(d, sender="sender@localhost", rcpt="bob@remote.test",
                        subject="give up")
    assert ok(d, "bounce", qid) == ""
    dsn = d.wait_messages("sender@localhost")[0]
    assert b"multipart/report" in dsn
    assert b"bob@remote.test" in dsn
    assert b"Subject: give up" in dsn
    h.wait_for(lambda: qid not in queue_ids(d), 20, what="the bounced message leaving the queue")
    r = ctl(d, "bounce", qid)
    assert r.returncode == EXIT_REFUSED


def test_delete_one_then_all(make_daemon):
    d = deferring_daemon(make_daemon)
    ids = [send_deferred(d, sender="owner@localhost", subject="d%d" % i)
           for i in range(3)]
    assert ok(d, "delete", ids[0]).strip() == "deleted 1"
    h.wait_for(lambda: sorted(queue_ids(d)) == sorted(ids[1:]), 20,
               what="two messages left")
    h.wait_for(lambda: not (d.spool / "queue" / (ids[0] + ".msg")).exists(),
               20, what="the deleted message's file gone")
    r = ctl(d, "delete", ids[0])
    assert r.returncode == EXIT_REFUSED and b"no such message" in r.stderr
    assert ok(d, "delete", "all", "--yes").strip() == "deleted 2"
    h.wait_for(lambda: queue_ids(d) == [], 20, what="an empty queue")
    h.wait_for(lambda: not list((d.spool / "queue").glob("*.msg")), 20,
               what="an empty spool")
    # Gone for good: a restart does not bring them back.
    d.restart()
    assert queue_ids(d) == []
    assert not d.maildir_messages("owner@localhost")  # deleted: no DSN


# --------------------------------------------------------------------------
# stats, reload

def stats(d):
    out = ok(d, "stats")
    values = {}
    for line in out.splitlines():
        assert not line.startswith("#"), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_stats_has_every_metric_and_counts(daemon):
    before = stats(daemon)
    assert set(h.SPEC_METRICS) <= set(before), before
    daemon.send(recipients=("user@localhost",))
    daemon.wait_messages("user@localhost")
    after = stats(daemon)
    assert after["facteur_messages_accepted_total"] == \
        before["facteur_messages_accepted_total"] + 1
    assert after["facteur_connections_total"] > before["facteur_connections_total"]
    assert after['facteur_deliveries_total{result="delivered"}'] >= 1


def test_reload_applies_the_new_configuration(daemon):
    daemon.settings["local_domains"] = "localhost, example.test, new.test"
    daemon.write_config()
    assert ok(daemon, "reload") == ""
    daemon.wait_event("reloaded")
    daemon.send(recipients=("someone@new.test",))
    daemon.wait_messages("someone@new.test")


def test_reload_of_broken_file_is_reported_and_old_config_kept(daemon):
    conf = daemon.conf_path
    good = conf.read_text()
    conf.write_text(good + "no_such_key = 1\n")
    r = ctl(daemon, "reload")
    assert r.returncode == h.EX_CONFIG, r
    assert str(conf).encode() in r.stderr and b"no_such_key" in r.stderr
    daemon.assert_alive()
    daemon.send(recipients=("user@localhost",))
    daemon.wait_messages("user@localhost")


def test_reload_refused_by_the_daemon_exits_2(daemon, tmp_path):
    """A file that only the daemon reads (aliases) is missing: facteurctl
    reads the configuration fine, the daemon refuses it and says so."""
    daemon.settings["aliases_file"] = str(tmp_path / "missing-aliases")
    daemon.settings["local_domains"] = "localhost, example.test, new.test"
    daemon.write_config()
    r = ctl(daemon, "reload")
    assert r.returncode == EXIT_REFUSED, r
    assert b"refused" in r.stderr
    daemon.assert_alive()
    daemon.send(recipients=("user@localhost",))
    daemon.wait_messages("user@localhost")


# --------------------------------------------------------------------------
# passwd, errors

def test_passwd_prints_a_sha512_crypt_hash(tmp_path):
    r = subprocess.run([str(FACTEURCTL), "passwd"], input=b"s3cret pass\n",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=30)
    assert r.returncode == 0, r
    hashed = r.stdout.decode().strip()
    assert hashed.startswith("$6$")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    assert crypt.crypt("s3cret pass", hashed) == hashed
    assert crypt.crypt("s3cret pass\n", hashed) != hashed


def run_on_terminal(args, typed, timeout=30):
    """Run facteurctl with a pseudo-terminal as its standard input and
    error, typing each of `typed` after the next prompt. Returns (exit
    status, stdout, everything the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(FACTEURCTL)] + list(args), stdin=slave,
                            stdout=subprocess.PIPE, stderr=slave,
                            env=h.clean_env(), start_new_session=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        for text in typed:
            prompts = screen.count(b": ")
            while screen.count(b": ") == prompts:
                assert time.monotonic() < deadline, screen
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    screen += os.read(master, 1024)
            os.write(master, text.encode() + b"\r")
        out, _ = proc.communicate(timeout=timeout)
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, out, screen


def test_passwd_on_a_terminal_asks_twice_without_echo():
    code, out, screen = run_on_terminal(["passwd"], ["s3cret pass", "s3cret pass"])
    assert code == 0, (out, screen)
    hashed = out.decode().strip()
    assert hashed.startswith("$6$"), out
    assert b"s3cret" not in screen, screen  # never echoed
    assert screen.count(b"Password: ") == 1 and screen.count(b"Again: ") == 1, screen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    assert crypt.crypt("s3cret pass", hashed) == hashed


def test_passwd_on_a_terminal_refuses_two_different_passwords():
    code, out, screen = run_on_terminal(["passwd"], ["one secret", "another"])
    assert code != 0, (out, screen)
    assert out == b""
    assert b"do not match" in screen, screen
    assert b"secret" not in screen and b"another" not in screen, screen


def test_passwd_preferred_method_is_libxcrypt_choice():
    r = subprocess.run([str(FACTEURCTL), "passwd", "-m", "preferred"],
                       input=b"s3cret pass\n", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=30)
    assert r.returncode == 0, r
    hashed = r.stdout.decode().strip()
    assert hashed.startswith("$") and not hashed.startswith("$6$"), hashed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    assert crypt.crypt("s3cret pass", hashed) == hashed
    r = subprocess.run([str(FACTEURCTL), "-m", "md5", "passwd"], input=b"x\n",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=30)
    assert r.returncode == EXIT_USAGE and r.stdout == b"", r


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_on_stdout_and_exits_0(flag):
    r = subprocess.run([str(FACTEURCTL), flag], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=30)
    assert r.returncode == 0, r
    assert r.stdout.startswith(b"usage: facteurctl"), r
    assert b"passwd" in r.stdout
    assert r.stderr == b""


def test_daemon_not_running_exits_1(make_daemon):
    d = make_daemon(start=False)
    d.write_config()
    for args in (["queue"], ["stats"], ["flush"], ["show", "0123456789ABCDEF"]):
        r = ctl(d, *args)
        assert r.returncode == EXIT_UNREACHABLE, (args, r)
        assert b"not running" in r.stderr


def test_daemon_stopped_exits_1(daemon):
    daemon.stop_ok()
    r = ctl(daemon, "queue")
    assert r.returncode == EXIT_UNREACHABLE, r
    assert b"not running" in r.stderr
    assert not (daemon.spool / "control").exists()


def test_usage_errors_exit_64(daemon):
    for args in ([], ["frobnicate"], ["show"], ["delete"], ["queue", "extra"],
                 ["flush", "a", "b"]):
        r = ctl(daemon, *args)
        assert r.returncode == EXIT_USAGE, (args, r)
        assert b"usage" in r.stderr


def test_configuration_errors_exit_78(daemon, tmp_path):
    r = ctl(daemon, "-c", str(tmp_path / "missing.conf"), "queue", config=False)
    assert r.returncode == h.EX_CONFIG, r
    assert b"missing.conf" in r.stderr
    r = ctl(daemon, "queue", env={"FACTEUR_NO_SUCH_KEY": "1"})
    assert r.returncode == h.EX_CONFIG, r


def test_config_from_environment(daemon):
    """FACTEUR_CONFIG names the file, as for facteurd."""
    r = ctl(daemon, "stats", config=False,
            env={"FACTEUR_CONFIG": str(daemon.conf_path)})
    assert r.returncode == 0, r
    r = ctl(daemon, "stats", config=False,
            env={"FACTEUR_SPOOL_DIR": str(daemon.spool),
                 "FACTEUR_LOCAL_DOMAINS": "localhost"})
    assert r.returncode == 0, r
