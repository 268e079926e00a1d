"""reuse_port = yes: several facteurd, each with its own spool, share one
listen address and the kernel spreads the connections among them; without
it the second one cannot listen and exits 69 (docs/operations.md)."""

import socket
import subprocess

import facteur_harness as h

EXIT_CANNOT_LISTEN = 69
CONNECTIONS = 40


def banner_and_quit(port):
    with h.RawClient("127.0.0.1", port, timeout=10) as c:
        assert c.banner.code == 220, c.banner
        c.cmd("QUIT")


def test_two_daemons_share_one_address_with_reuse_port(make_daemon):
    first = make_daemon(config={"reuse_port": "yes"})
    second = make_daemon(config={"reuse_port": "yes"}, port=first.port, start=False)
    second.start(wait=False)
    second.wait_event("started")
    assert first.spool != second.spool
    for _ in range(CONNECTIONS):
        banner_and_quit(first.port)
    a = len(first.events("connect"))
    b = len(second.events("connect"))
    # The first one also answered its own start-up probe.
    assert a + b >= CONNECTIONS, (a, b)
    assert a > 1 and b > 0, (a, b)
    # Mail lands with whichever daemon took the connection, through its
    # own spool.
    qid = first.send(subject="shared address")
    h.wait_for(lambda: first.events("accepted", queue_id=qid)
               or second.events("accepted", queue_id=qid), what="accepted")
    h.wait_for(lambda: first.maildir_messages("user@localhost")
               or second.maildir_messages("user@localhost"), what="delivered")


def test_without_reuse_port_the_second_daemon_exits_69(make_daemon):
    first = make_daemon()
    second = make_daemon(port=first.port, start=False)
    second.write_config()
    r = subprocess.run([str(h.FACTEURD), "-c", str(second.conf_path)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=30)
    assert r.returncode == EXIT_CANNOT_LISTEN, (r.returncode, r.stderr)
    assert b"startup_error" in r.stderr, r.stderr
    banner_and_quit(first.port)


def test_reuse_port_on_one_side_only_is_refused_too(make_daemon):
    first = make_daemon(config={"reuse_port": "yes"})
    second = make_daemon(port=first.port, start=False)
    second.write_config()
    r = subprocess.run([str(h.FACTEURD), "-c", str(second.conf_path)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=h.clean_env(), timeout=30)
    assert r.returncode == EXIT_CANNOT_LISTEN, (r.returncode, r.stderr)


def test_a_stopping_daemon_leaves_new_connections_to_the_others(make_daemon):
    """SIGTERM closes the listening sockets: connects go to the daemon that
    still listens instead of waiting in a backlog nobody accepts."""
    first = make_daemon(config={"reuse_port": "yes"})
    second = make_daemon(config={"reuse_port": "yes"}, port=first.port, start=False)
    second.start(wait=False)
    second.wait_event("started")
    second.stop_ok()
    before = len(first.events("connect"))
    for _ in range(10):
        banner_and_quit(first.port)
    assert len(first.events("connect")) - before == 10
