"""Readiness: the mail ports refuse connections until the spool is recovered
and the control socket answers; /healthz and /readyz on the metrics
listener; the service manager's notifications (sd_notify) as systemd would
receive them on its AF_UNIX datagram socket (docs/operations.md,
docs/man/facteurd.8)."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import facteur_harness as h

FACTEURCTL = h.BUILD_DIR / "facteurctl"
# Enough queued mail that recovering it takes a visible while (about half a
# second here), so that the start-up window can be watched.
LOADED_MESSAGES = 4000


def metrics_config(extra=None):
    cfg = {"metrics_listen": "127.0.0.1:%d" % h.free_port(),
           "dns_servers": "127.0.0.1:9"}
    cfg.update(extra or {})
    return cfg


def http_get(d, path, timeout=5):
    """(status, body) of GET path on the daemon's metrics listener, over a
    raw socket; raises OSError when the connection is refused."""
    host, port = d.settings["metrics_listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                   % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


def ctl(d, *args, timeout=60):
    return subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=h.clean_env(), timeout=timeout)


def load_spool(d, count):
    """Queue `count` messages for a remote domain routed to a closed port:
    each is tried once, deferred for an hour, and stays in the spool."""
    body = h.dot_stuff(h.make_message(to="someone@remote.test"))
    errors = []

    def one_client(n):
        try:
            with d.raw() as c:
                c.ehlo()
                for _ in range(n):
                    c.send(b"MAIL FROM:<sender@example.org>\r\n"
                           b"RCPT TO:<someone@remote.test>\r\nDATA\r\n")
                    for code in (250, 250, 354):
                        r = c.reply()
                        assert r.code == code, r
                    c.send(body)
                    r = c.reply()
                    assert r.code == 250, r
        except Exception as e:  # reported by the main thread
            errors.append(e)

    clients = 8
    threads = [threading.Thread(target=one_client, args=(count // clients,))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def loaded_daemon(make_daemon):
    d = make_daemon(config=metrics_config({"retry_min": "1h", "retry_max": "2h"}),
                    extra_lines=["route = * [127.0.0.1]:%d tls=none" % h.free_port()])
    load_spool(d, LOADED_MESSAGES)
    d.stop_ok()
    return d


def smtp_connects(d):
    try:
        with socket.create_connection((d.host, d.port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_mail_port_refuses_until_spool_recovered_and_control_answers(make_daemon):
    d = loaded_daemon(make_daemon)
    d.start(wait=False)
    readyz, refused = [], 0
    deadline = time.monotonic() + h.START_TIMEOUT
    while True:
        assert time.monotonic() < deadline, d.log_tail()
        d.assert_alive()
        try:
            readyz.append(http_get(d, "/readyz"))
            if readyz[-1][0] == 503:
                # The loop runs while the spool is recovered.
                assert http_get(d, "/healthz") == (200, "ok\n")
                # /metrics waits for the queue to be counted (it may be
                # by now: then /readyz says so too).
                assert (http_get(d, "/metrics")[0] == 503
                        or http_get(d, "/readyz")[0] == 200)
        except OSError:
            pass  # the metrics port is not bound yet
        if not smtp_connects(d):
            refused += 1
            continue
        # The first connect that succeeds: the spool is recovered and the
        # control socket answers, at once.
        recovered = d.events("recovered", live=LOADED_MESSAGES)
        r = ctl(d, "queue", timeout=10)
        break
    assert recovered, d.log_tail()
    assert r.returncode == 0, (r.returncode, r.stderr, d.log_tail())
    assert "-- %d messages" % LOADED_MESSAGES in r.stdout.decode()
    assert refused > 0
    # /readyz said 503 while starting, then 200, never back.
    statuses = [s for s, _ in readyz]
    assert 503 in statuses, readyz[:5]
    assert all(b == "starting: recovering the spool\n"
               for s, b in readyz if s == 503), readyz
    assert statuses == sorted(statuses, reverse=True), statuses
    assert http_get(d, "/readyz") == (200, "ready\n")
    status, text = http_get(d, "/metrics")
    assert status == 200
    assert re.search(r"^facteur_queue_messages %d$" % LOADED_MESSAGES, text, re.M)
    started = d.events("started")[-1]
    assert started["queued"] == str(LOADED_MESSAGES)


def test_sigterm_while_the_spool_is_recovered_stops_without_listening(make_daemon):
    d = loaded_daemon(make_daemon)
    earlier = len(d.logs())
    d.start(wait=False)

    def starting():
        try:
            return http_get(d, "/readyz")[0] == 503
        except OSError:
            return False
    h.wait_for(starting, h.START_TIMEOUT, interval=0.005, what="/readyz 503")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(h.STOP_TIMEOUT) == 0, d.log_tail()
    d.observed_exit = True
    # Recovery was let finish; the mail port never listened.
    run = d.logs()[earlier:]
    events = [e["event"] for e in run]
    assert "stopping" in events and "recovered" in events, d.log_tail()
    assert events.index("stopping") < events.index("recovered"), events
    assert not [e for e in run if e["event"] == "listening" and "protocol" not in e], run
    assert "started" not in events, events
    # Nothing lost: the next start finds the whole queue.
    d.start()
    assert d.events("started")[-1]["queued"] == str(LOADED_MESSAGES)


def test_health_endpoints_answer_head_and_refuse_other_methods(make_daemon):
    d = make_daemon(config=metrics_config())
    host, port = d.settings["metrics_listen"].rsplit(":", 1)
    for method, path, status in (("HEAD", "/readyz", 200), ("HEAD", "/healthz", 200),
                                 ("POST", "/readyz", 405)):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Length: 0\r\n\r\n" % (method, path)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert int(head.split(b" ", 2)[1]) == status, (method, path, data)
        if method == "HEAD":
            assert body == b"", data


def test_readyz_says_draining_while_a_message_finishes(make_daemon):
    d = make_daemon(config=metrics_config())
    assert http_get(d, "/readyz") == (200, "ready\n")
    c = d.raw()
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
    assert c.cmd("RCPT TO:<user@localhost>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: half\r\n\r\nfirst half\r\n")
    d.proc.send_signal(signal.SIGTERM)
    d.wait_event("stopping")
    # The session in the middle of its message holds the drain open.
    assert http_get(d, "/readyz") == (503, "draining: stopping\n")
    assert http_get(d, "/healthz") == (200, "ok\n")
    assert not smtp_connects(d)
    c.send(b"second half\r\n.\r\n")
    r = c.reply()
    assert r.code == 250, r
    c.close()
    assert d.proc.wait(h.STOP_TIMEOUT) == 0
    d.observed_exit = True


class Manager:
    """systemd's side of sd_notify: an AF_UNIX datagram socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(h.START_TIMEOUT)

    def receive(self):
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self):
        self.sock.close()


def test_sd_notify_ready_reloading_stopping(make_daemon, tmp_path):
    path = str(tmp_path / "notify")
    m = Manager(path)
    d = make_daemon(config=metrics_config(), start=False,
                    env={"NOTIFY_SOCKET": path})
    d.start(wait=False)
    first = m.receive()
    assert first == {"STATUS": "recovering the spool"}, first
    ready = m.receive()
    assert ready["READY"] == "1", ready
    assert "accepting mail" in ready["STATUS"]
    # READY=1 comes once the daemon serves: port and control socket both.
    assert smtp_connects(d)
    assert ctl(d, "queue", timeout=10).returncode == 0

    before = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    reloading = m.receive()
    after = time.monotonic()
    assert reloading["RELOADING"] == "1", reloading
    usec = int(reloading["MONOTONIC_USEC"])
    assert before * 1e6 - 1e6 <= usec <= after * 1e6 + 1e6, (before, usec, after)
    done = m.receive()
    assert done["READY"] == "1" and "reloaded" in done["STATUS"], done

    # A refused configuration: facteurctl reload (the unit's ExecReload)
    # fails; on SIGHUP the old one goes on and READY=1 says so.
    d.conf_path.write_text(d.config_text() + "max_recipients = many\n")
    r = ctl(d, "reload", timeout=10)
    assert r.returncode != 0, r
    d.proc.send_signal(signal.SIGHUP)
    assert m.receive()["RELOADING"] == "1"
    refused = m.receive()
    assert refused["READY"] == "1" and "refused" in refused["STATUS"], refused
    d.write_config()

    d.proc.send_signal(signal.SIGTERM)
    stopping = m.receive()
    assert stopping["STOPPING"] == "1", stopping
    assert d.proc.wait(h.STOP_TIMEOUT) == 0
    d.observed_exit = True
    m.close()


def test_sd_notify_abstract_socket(make_daemon):
    name = "@facteur-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
    m = Manager("\0" + name[1:])
    d = make_daemon(start=False, env={"NOTIFY_SOCKET": name})
    d.start(wait=False)
    while True:
        state = m.receive()
        if state.get("READY") == "1":
            break
    assert smtp_connects(d)
    d.stop_ok()
    m.close()


def test_without_notify_socket_nothing_is_sent_and_start_is_the_same(make_daemon):
    d = make_daemon(config=metrics_config())
    assert not d.events("notify_error")
    assert http_get(d, "/readyz") == (200, "ready\n")
