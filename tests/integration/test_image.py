"""The container image's logic without Docker: the environment the
Dockerfile sets is a valid configuration that listens on both address
families, and the health check (packaging/healthcheck.sh) asks /readyz
without opening an SMTP session (docs/operations.md)."""

import re
import shlex
import signal
import subprocess

import pytest

import facteur_harness as h

PACKAGING = h.SOURCE_DIR / "packaging"
HEALTHCHECK = PACKAGING / "healthcheck.sh"


def dockerfile_env():
    """{name: value} of the runtime stage's ENV instructions."""
    text = (PACKAGING / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("\nFROM ")[-1]
    env = {}
    for line in runtime.splitlines():
        if not line.startswith("ENV "):
            continue
        for word in shlex.split(line[4:]):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def healthcheck(env):
    return subprocess.run(["bash", str(HEALTHCHECK)], env=h.clean_env(env),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


def test_image_listens_on_both_families_and_has_a_metrics_listener():
    env = dockerfile_env()
    entries = [e.strip() for e in env["FACTEUR_LISTEN"].split(",")]
    assert "0.0.0.0:2525" in entries and "[::]:2525" in entries, entries
    assert env["FACTEUR_METRICS_LISTEN"].startswith("127.0.0.1:"), env
    healthcheck_line = [l for l in (PACKAGING / "Dockerfile").read_text().splitlines()
                        if "facteur-healthcheck" in l]
    assert healthcheck_line, "the image has no health check"


def test_image_environment_is_a_valid_configuration(tmp_path):
    env = dockerfile_env()
    env["FACTEUR_SPOOL_DIR"] = str(tmp_path / "spool")
    env["FACTEUR_MAILBOX_PATH"] = str(tmp_path / "mail") + "/%d/%u"
    r = h.run_facteurd(["-n"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert re.search(r"^listen = 0\.0\.0\.0:2525, \[::\]:2525$", out, re.M), out


@pytest.mark.skipif(not h.has_ipv6_loopback(), reason="no IPv6 loopback")
def test_image_listen_entries_reach_both_families(make_daemon):
    """The image's two wildcard entries on a free port: an IPv4 and an IPv6
    client both get the banner (the IPv6 socket is IPv6 only, so the two
    do not collide)."""
    port = h.free_port()
    listen = dockerfile_env()["FACTEUR_LISTEN"].replace("2525", str(port))
    d = make_daemon(config={"listen": listen}, port=port)
    for host in ("127.0.0.1", "::1"):
        with h.RawClient(host, port) as c:
            assert c.banner.code == 220, (host, c.banner)


def metrics_daemon(make_daemon):
    return make_daemon(config={"metrics_listen": "127.0.0.1:%d" % h.free_port()})


def test_healthcheck_asks_readyz_and_opens_no_smtp_session(make_daemon):
    d = metrics_daemon(make_daemon)
    connects = len(d.events("connect"))
    r = healthcheck({"FACTEUR_METRICS_LISTEN": d.settings["metrics_listen"],
                     "FACTEUR_LISTEN": "127.0.0.1:%d" % d.port})
    assert r.returncode == 0, r.stderr
    assert len(d.events("connect")) == connects, d.log_tail()


def test_healthcheck_fails_while_draining_and_when_stopped(make_daemon):
    d = metrics_daemon(make_daemon)
    env = {"FACTEUR_METRICS_LISTEN": d.settings["metrics_listen"]}
    c = d.raw()
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
    assert c.cmd("RCPT TO:<user@localhost>").code == 250
    assert c.cmd("DATA").code == 354
    d.proc.send_signal(signal.SIGTERM)
    d.wait_event("stopping")
    r = healthcheck(env)
    assert r.returncode == 1, r
    assert b"503" in r.stderr and b"draining" in r.stderr, r.stderr
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert c.reply().code == 250
    c.close()
    assert d.proc.wait(h.STOP_TIMEOUT) == 0
    d.observed_exit = True
    r = healthcheck(env)
    assert r.returncode == 1 and b"cannot connect" in r.stderr, r


def test_healthcheck_without_metrics_falls_back_to_the_banner(make_daemon):
    d = make_daemon()
    r = healthcheck({"FACTEUR_METRICS_LISTEN": "",
                     "FACTEUR_LISTEN": "0.0.0.0:%d" % d.port})
    assert r.returncode == 0, r.stderr


def docker_daemon():
    """True where a Docker daemon answers (not on the project's CI machines)."""
    try:
        r = subprocess.run(["docker", "info"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_image_builds_from_a_clean_checkout(tmp_path):
    """docker build of packaging/Dockerfile from what git tracks, nothing
    else: a file the image needs and the checkout lacks shows here."""
    if not docker_daemon():
        pytest.skip("no Docker daemon on this machine")
    tree = tmp_path / "src"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(h.SOURCE_DIR), "archive", "HEAD"],
                             stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    tag = "facteur-test-build:%d" % tmp_path.stat().st_ino
    r = subprocess.run(["docker", "build", "-q", "-t", tag, "-f",
                        "packaging/Dockerfile", "."], cwd=str(tree),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    try:
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-4000:]
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
