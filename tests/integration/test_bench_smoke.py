"""Smoke run of the benchmark scripts (bench/): every scenario end to end
with tiny counts, to keep them working. No timing is asserted: the test
only proves that the scripts run, measure something, and write their
results and report. Postfix is never installed here; its half runs only
in the second test, and only where Postfix is already installed."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import facteur_harness as h  # noqa: E402

BENCH = h.SOURCE_DIR / "bench"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SCENARIOS = ["accept", "maildir", "relay", "idle", "bigmsg", "lag"]


def free_port_block(count=10):
    """A base port with `count` free ports after it, below the ephemeral
    range, so that parallel tests and the generator's own connections
    cannot collide with the benchmark's servers."""
    for base in range(20000 + (os.getpid() % 500) * 10, 32000, 10):
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.fail("no free block of %d ports" % count)


@pytest.fixture
def work_dir():
    """Scratch directory for spools, queues and mailboxes. Not under pytest's
    tmp_path, whose 0700 parents Postfix's unprivileged daemons cannot
    cross."""
    path = tempfile.mkdtemp(prefix="facteur-bench-smoke-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def bench_env(tmp_path, work, **extra):
    env = h.clean_env(h.small_quarantine_env())
    env.update({
        "FACTEURD": str(h.FACTEURD),
        "BENCH_WORK": str(work),
        "BENCH_OUT": str(tmp_path / "out"),
        "BENCH_RESULTS": str(tmp_path / "RESULTS.md"),
        "BENCH_BASE_PORT": str(free_port_block()),
        "BENCH_RUNS": "1",
        "BENCH_MESSAGES": "200",
        "BENCH_SESSIONS": "10",
        "BENCH_IDLE_SESSIONS": "200",
        "BENCH_BIG_MB": "2",
        "BENCH_LOAD_MAX": "1000",  # never wait for a quiet machine in CI
        "BENCH_LOAD_WAIT": "0",
    })
    env.update(extra)
    return env


def run_scripts(env, scenarios, timeout=240):
    for name in scenarios:
        r = subprocess.run([PYTHON, str(BENCH / (name + ".py"))], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        assert r.returncode == 0, "%s.py exited %d:\n%s" % (name, r.returncode, r.stderr[-3000:])
    r = subprocess.run([PYTHON, str(BENCH / "report.py")], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]


def processes_of(work):
    """Processes whose command line or environment names the benchmark's
    work directory (facteurd -c WORK/..., Postfix's MAIL_CONFIG=WORK/...)."""
    found = []
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        for part in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (pid, part), "rb") as f:
                    if work.encode() in f.read():
                        found.append(int(pid))
                        break
            except OSError:
                pass
    return [p for p in found if p != os.getpid()]


def load_results(out, name):
    path = Path(out) / (name + ".json")
    assert path.exists(), "%s.py wrote no %s" % (name, path)
    return json.loads(path.read_text())


def all_runs(data, server):
    return [r for case in data["runs"].values() for r in case.get(server, [])]


def test_bench_scenarios_run_end_to_end_without_postfix(tmp_path, work_dir):
    if not h.FACTEURD.exists():
        pytest.skip("facteurd not built at %s" % h.FACTEURD)
    env = bench_env(tmp_path, work_dir, BENCH_POSTFIX="0", BENCH_GENERATOR="smtpload",
                    BENCH_SINK="smtpload")
    run_scripts(env, SCENARIOS)

    accept = load_results(env["BENCH_OUT"], "accept")
    runs = all_runs(accept, "facteur")
    assert sorted(r["mode"] for r in runs) == ["reuse", "single"]
    for r in runs:
        assert r["accepted"] == 200, r
        assert r["msgs_per_s"] > 0 and r["server_cpu_pct"] >= 0
        assert "problem" not in r, r
    assert all_runs(accept, "postfix") == []
    assert "not installed" in accept["postfix_note"] or "BENCH_POSTFIX=0" in accept["postfix_note"]

    maildir = load_results(env["BENCH_OUT"], "maildir")
    # facteur twice: the default flush_method, and syncfs in a case of its own
    runs = all_runs(maildir, "facteur")
    assert sorted(r["server"] for r in runs) == ["facteur", "facteur-syncfs"], runs
    for r in runs:
        assert r["delivered"] == 200 and r["msgs_per_s"] > 0, r
    assert sorted(maildir["runs"]) == ["maildir", "maildir-syncfs"]

    relay = load_results(env["BENCH_OUT"], "relay")
    (r,) = all_runs(relay, "facteur")
    assert r["complete"] is True and r["msgs_per_s"] > 0, r
    assert r["sink"] == "smtpload"

    idle = load_results(env["BENCH_OUT"], "idle")
    (r,) = all_runs(idle, "facteur")
    assert r["connected"] == 200 and r["noop_ok"] == 200, r
    assert r["connections_active_metric"] >= 200, r
    assert r["rss_mib"] > 0

    big = load_results(env["BENCH_OUT"], "bigmsg")
    (r,) = all_runs(big, "facteur")
    assert r["delivered"] is True and r["peak_rss_mib"] >= r["idle_rss_mib"] > 0, r

    lag = load_results(env["BENCH_OUT"], "lag")
    (r,) = all_runs(lag, "facteur")
    assert r["noop_count"] > 0 and r["noop_p99_ms"] is not None, r
    assert r.get("metric_samples", 0) > 0, "facteur_loop_lag_seconds not observed: %r" % r

    report = Path(env["BENCH_RESULTS"]).read_text()
    assert "## Summary" in report and "## Every run" in report
    assert "Postfix skipped" in report
    for label in ("(a) durable acceptance", "(b) local Maildir", "(c) relay",
                  "(d) 200 idle sessions", "(e) one 2 MiB message", "(f) NOOP round trip"):
        assert label in report, label
    # Nothing of the benchmark is left running.
    assert processes_of(env["BENCH_WORK"]) == []


@pytest.mark.skipif(not (shutil.which("postfix") and os.path.exists("/usr/sbin/smtp-source")
                         and os.geteuid() == 0),
                    reason="Postfix is not installed (bench/install.sh installs it) or not root")
def test_bench_postfix_half_runs_when_installed(tmp_path, work_dir):
    if not h.FACTEURD.exists():
        pytest.skip("facteurd not built at %s" % h.FACTEURD)
    env = bench_env(tmp_path, work_dir, BENCH_POSTFIX="1", BENCH_ACCEPT_MODES="single",
                    BENCH_IDLE_SESSIONS="50")
    run_scripts(env, ["accept", "maildir", "relay", "idle"])
    for name in ("accept", "maildir", "relay", "idle"):
        data = load_results(env["BENCH_OUT"], name)
        pf = all_runs(data, "postfix")
        assert len(pf) == 1, (name, data["runs"])
        assert "problem" not in pf[0], pf[0]
        row = data["rows"][0]
        assert row["postfix"] and row["postfix"]["median"] > 0, row
    assert load_results(env["BENCH_OUT"], "accept")["params"]["generator"] == "smtp-source"
    report = Path(env["BENCH_RESULTS"]).read_text()
    assert "Postfix skipped" not in report
    assert "×" in report  # a facteur/Postfix ratio was computed
    # The private Postfix instances are stopped.
    assert processes_of(env["BENCH_WORK"]) == []


def test_bench_reuseport_runs_one_and_two_instances(tmp_path, work_dir):
    """bench/reuseport.py end to end with tiny counts: one facteurd, then two
    sharing the port; every message accepted, both instances took some."""
    if not h.FACTEURD.exists():
        pytest.skip("facteurd not built at %s" % h.FACTEURD)
    env = bench_env(tmp_path, work_dir, BENCH_POSTFIX="0", BENCH_GENERATOR="smtpload",
                    BENCH_REUSEPORT_MODES="single")
    r = subprocess.run([PYTHON, str(BENCH / "reuseport.py")], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    data = load_results(env["BENCH_OUT"], "reuseport")
    (one,) = data["runs"]["single"]["x1"]
    (two,) = data["runs"]["single"]["x2"]
    for run in (one, two):
        assert run["accepted"] == 200 and "problem" not in run, run
        assert run["msgs_per_s"] > 0 and run["generator_cpu_pct"] >= 0, run
    assert len(two["accepted_per_instance"]) == 2 and min(two["accepted_per_instance"]) > 0, two
    assert len(two["server_cpu_pct"]) == 2, two
    assert data["summary"][0]["two_over_one"] is not None
    assert processes_of(env["BENCH_WORK"]) == []
