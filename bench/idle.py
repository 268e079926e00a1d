#!/usr/bin/python3
"""(d) Idle sessions: BENCH_IDLE_SESSIONS connections (default 10,000) opened
and taken past EHLO, then held; every one must answer a NOOP; the server's
memory is read from /proc while they are held. facteur's memory is its
process's VmRSS; Postfix's is summed over its processes (one smtpd each
session), as RSS and as PSS (RSS with shared pages divided among sharers).

Postfix gets a process limit of the session count plus headroom; its count
can be lowered separately (BENCH_POSTFIX_IDLE_SESSIONS) because each session
costs it a process. Environment: BENCH_IDLE_SESSIONS,
BENCH_POSTFIX_IDLE_SESSIONS, BENCH_RUNS, BENCH_POSTFIX (auto|0|1).
"""

import json
import select
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

SESSIONS = b.env_int("BENCH_IDLE_SESSIONS", 10000)
# Each Postfix session is a process of about 1.2 MiB (PSS): 10,000 of them
# would take some 12 GiB of a machine shared with other work, so Postfix holds
# at most 2,000 by default and its figure is scaled.
PF_SESSIONS = b.env_int("BENCH_POSTFIX_IDLE_SESSIONS", min(SESSIONS, 2000))
MIB = 1024.0


def read_json(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError("idle client said nothing within %ds" % timeout)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("idle client exited (status %s)" % proc.poll())
    return json.loads(line)


def one_run(track, make, run):
    server = track(make())
    n = SESSIONS if server.name == "facteur" else PF_SESSIONS
    quiet = b.wait_quiet("idle %s run %d" % (server.name, run + 1))
    time.sleep(0.5)
    before = server.memory()
    client = subprocess.Popen([b.PYTHON, str(b.BENCH / "smtpload.py"), "idle", "-n", str(n),
                               "-c", "100", "127.0.0.1:%d" % server.port],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              preexec_fn=lambda: b.raise_nofile(n + 1000))
    try:
        opened = read_json(client, 60 + n / 20)
        time.sleep(1)
        held = server.memory()
        client.stdin.write(b"noop\n")
        client.stdin.flush()
        noop = read_json(client, 60 + n / 50)
        after = server.memory()
        active = None
        if server.name == "facteur":
            active = int(server.metrics().get("facteur_connections_active", -1))
        smtpd = server.memory(only={"smtpd"}) if server.name == "postfix" else None
        client.stdin.write(b"quit\n")
        client.stdin.flush()
        client.wait(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    server.stop()
    server.cleanup()
    rss = max(held["rss_kib"], after["rss_kib"])
    r = {"run": run + 1, "server": server.name, "sessions": n,
         "connected": opened["connected"], "connect_failed": opened["failed"],
         "connect_errors": opened.get("errors", {}), "connect_s": opened["connect_s"],
         "noop_ok": noop.get("ok", 0), "noop_failed": noop.get("failed", 0),
         "noop_p50_ms": noop.get("p50_ms"), "noop_p99_ms": noop.get("p99_ms"),
         "idle_rss_mib": round(before["rss_kib"] / MIB, 1),
         "rss_mib": round(rss / MIB, 1),
         "pss_mib": round(max(held["pss_kib"], after["pss_kib"]) / MIB, 1),
         "kib_per_session": round((rss - before["rss_kib"]) / max(1, opened["connected"]), 1),
         "processes": after["processes"], "connections_active_metric": active,
         "load1_before": quiet["load1"]}
    if smtpd:
        r["smtpd_processes"] = smtpd["processes"]
        r["smtpd_rss_mib"] = round(smtpd["rss_kib"] / MIB, 1)
        r["smtpd_pss_mib"] = round(smtpd["pss_kib"] / MIB, 1)
    # Scaled to the facteur session count when Postfix held fewer.
    r["rss_mib_per_10k"] = round((rss - before["rss_kib"]) / max(1, opened["connected"])
                                 * 10000 / MIB, 1)
    r["pss_mib_per_10k"] = round((max(held["pss_kib"], after["pss_kib"]) - before["pss_kib"])
                                 / max(1, opened["connected"]) * 10000 / MIB, 1)
    if opened["connected"] < n or noop.get("ok", 0) < n:
        r["problem"] = "%d of %d connected, %d answered NOOP: %s" % (
            opened["connected"], n, noop.get("ok", 0), opened.get("errors"))
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("idle %s run %d: %d/%d sessions in %.1fs, %d NOOPs ok (p99 %s ms), RSS %.1f MiB "
          "(idle %.1f), PSS %.1f MiB, %d processes"
          % (server.name, run + 1, opened["connected"], n, opened["connect_s"],
             noop.get("ok", 0), noop.get("p99_ms"), r["rss_mib"], r["idle_rss_mib"],
             r["pss_mib"], r["processes"]))
    return r


def main(track):
    b.raise_nofile(SESSIONS + 1000)
    server_list, postfix_note = b.servers(
        "idle", postfix_kw={"process_limit": PF_SESSIONS + 100})
    runs = {}
    for i, name, make in b.interleaved(b.RUNS, server_list):
        runs.setdefault(name, []).append(one_run(track, make, i))
    note = ""
    if PF_SESSIONS != SESSIONS and "postfix" in runs:
        note = ("Postfix held %d sessions (one process each); its figure is scaled "
                "to %d" % (PF_SESSIONS, SESSIONS))
    rows = [
        b.abs_row("(d) %d idle sessions after EHLO: server RSS" % SESSIONS, "MiB",
                  runs, "rss_mib", limit=150, target_text="facteur < 150 MiB",
                  note="Postfix: RSS summed over its processes, for %d sessions" % PF_SESSIONS),
        b.ratio_row("(d) memory per 10,000 sessions (PSS, shared pages divided)", "MiB",
                    runs, "pss_mib_per_10k", lower_is_better=True, note=note),
        b.abs_row("(d) sessions answering NOOP", "sessions", runs, "noop_ok",
                  limit=SESSIONS, lower_is_better=False,
                  target_text="all %d" % SESSIONS),
    ]
    b.write_result("idle", {
        "title": "(d) idle sessions",
        "params": {"sessions": SESSIONS, "postfix_sessions": PF_SESSIONS},
        "postfix_note": postfix_note, "rows": rows, "runs": {"idle": runs}})


if __name__ == "__main__":
    b.run_scenario(main)
