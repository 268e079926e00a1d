"""Start-up failures that are not configuration errors: a listening port
that cannot be bound makes facteurd exit at once with its own status, 69
(EX_UNAVAILABLE), and one log line naming the entry and the reason, so that
systemd's RestartPreventExitStatus= stops instead of restarting it in a loop."""

import socket
import subprocess

import pytest

import facteur_harness as h

EX_UNAVAILABLE = 69


def squat(port):
    """Another program holding 127.0.0.1:port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def start_and_wait_exit(d, timeout=h.START_TIMEOUT):
    d.start(wait=False)
    try:
        code = d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("facteurd kept running although a port is taken:\n%s"
                    % d.log_tail())
    d.expected_dead = True
    return code


def startup_error(d):
    lines = [h.parse_logfmt(l) for l in d.log_path.read_text().splitlines()]
    errors = [l for l in lines if l and l.get("event") == "startup_error"]
    assert len(errors) == 1, d.log_tail()
    return errors[0]


@pytest.mark.parametrize("key", ["listen", "pop3_listen", "metrics_listen"])
def test_port_taken_exits_69_with_one_clear_line(make_daemon, key):
    port = h.free_port()
    held = squat(port)
    try:
        config = {key: "127.0.0.1:%d" % port}
        d = make_daemon(config=config, start=False)
        code = start_and_wait_exit(d)
    finally:
        held.close()
    assert code == EX_UNAVAILABLE, (code, d.log_tail())
    err = startup_error(d)
    assert err["level"] == "error", err
    assert "127.0.0.1:%d" % port in err["reason"], err
    assert "in use" in err["reason"].lower(), err
    assert err["exit_status"] == str(EX_UNAVAILABLE), err
    # Nothing was started: no other listener, no "started" line.
    assert "event=started" not in d.log_path.read_text()


def test_second_listen_entry_taken_exits_69(make_daemon):
    """The first entry binds, the second cannot: the daemon does not run
    half-listening."""
    port = h.free_port()
    held = squat(port)
    try:
        d = make_daemon(start=False)
        d.extra_lines.append("listen = 127.0.0.1:%d" % port)
        code = start_and_wait_exit(d)
    finally:
        held.close()
    assert code == EX_UNAVAILABLE, (code, d.log_tail())
    assert "127.0.0.1:%d" % port in startup_error(d)["reason"]
