#!/usr/bin/python3
"""(f) Event-loop lag under load: while the acceptance load of (a) runs (one
message per connection), a probe session that passed EHLO sends a NOOP every
BENCH_PROBE_MS milliseconds (default 10) and times each round trip. On
facteur, whose sessions all share one loop, that round trip is the loop's
stall seen from outside; facteurd's own histogram facteur_loop_lag_seconds
(how late a 100 ms timer fires) is read before and after when it exists.
On Postfix the probe's smtpd is a process of its own: its figure is the
operating system's scheduling, for reference.

Environment: BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE, BENCH_RUNS,
BENCH_PROBE_MS, BENCH_POSTFIX (auto|0|1).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

PROBE_MS = b.env_float("BENCH_PROBE_MS", 10)
LAG = "facteur_loop_lag_seconds_bucket"


def lag_buckets(metrics):
    """{upper bound: cumulative count} of the loop lag histogram."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(LAG + "{le=\""):
            le = key[len(LAG) + 5:-2]
            out[float("inf") if le == "+Inf" else float(le)] = value
    return out


def bucket_quantile(before, after, q):
    """Upper bound of the bucket holding quantile q of the observations
    made between two scrapes."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    if total <= 0:
        return None, 0
    for le in sorted(delta):
        if delta[le] >= q * total:
            return le, int(total)
    return float("inf"), int(total)


def one_run(track, make, run):
    server = track(make())
    quiet = b.wait_quiet("lag %s run %d" % (server.name, run + 1))
    m0 = server.metrics() if server.name == "facteur" else {}
    probe = subprocess.Popen([b.PYTHON, str(b.BENCH / "smtpload.py"), "probe", "-i",
                              str(PROBE_MS), "127.0.0.1:%d" % server.port],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    time.sleep(0.5)
    window = b.CpuWindow({"server": server.pid})
    window.start()
    gen = b.Generator(server.port, b.MESSAGES, b.SESSIONS, b.SIZE, b.REMOTE_RCPT).run()
    cpu = window.stop()
    probe.send_signal(signal.SIGTERM)
    out, _ = probe.communicate(timeout=30)
    try:
        rtt = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        rtt = {"count": 0}
    m1 = server.metrics() if server.name == "facteur" else {}
    server.stop()
    server.cleanup()
    r = {"run": run + 1, "server": server.name, "messages": b.MESSAGES,
         "msgs_per_s": round(b.MESSAGES / gen["wall_s"], 1),
         "noop_count": rtt.get("count", 0), "noop_p50_ms": rtt.get("p50_ms"),
         "noop_p99_ms": rtt.get("p99_ms"), "noop_max_ms": rtt.get("max_ms"),
         "server_cpu_pct": cpu["server_cpu_pct"], "generator_cpu_pct": gen["generator_cpu_pct"],
         "machine_busy_pct": cpu["machine_busy_pct"], "load1_before": quiet["load1"]}
    before, after = lag_buckets(m0), lag_buckets(m1)
    if after:
        p99, count = bucket_quantile(before, after, 0.99)
        p50, _ = bucket_quantile(before, after, 0.50)
        r["metric_samples"] = count
        r["metric_p50_le_ms"] = None if p50 is None else p50 * 1000
        r["metric_p99_le_ms"] = None if p99 is None else p99 * 1000
        r["metric_max_ms"] = round(m1.get("facteur_loop_lag_max_seconds", 0) * 1000, 3)
    if rtt.get("count", 0) == 0 or rtt.get("failed"):
        r["problem"] = "probe: %s" % rtt
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("lag %s run %d: under %.0f msgs/s, NOOP RTT p50 %s ms p99 %s ms max %s ms (%d); "
          "loop metric p99 <= %s ms, max %s ms"
          % (server.name, run + 1, r["msgs_per_s"], r["noop_p50_ms"], r["noop_p99_ms"],
             r["noop_max_ms"], r["noop_count"], r.get("metric_p99_le_ms"),
             r.get("metric_max_ms")))
    return r


def main(track):
    server_list, postfix_note = b.servers("lag")
    runs = {}
    for i, name, make in b.interleaved(b.RUNS, server_list):
        runs.setdefault(name, []).append(one_run(track, make, i))
    rows = [
        b.abs_row("(f) NOOP round trip on an idle session during (a), p99", "ms", runs,
                  "noop_p99_ms", limit=10, target_text="facteur < 10 ms", with_ratio=True,
                  note="Postfix: a process of its own per session, for reference"),
        b.ratio_row("(f) NOOP round trip during (a), p50", "ms", runs, "noop_p50_ms",
                    lower_is_better=True),
    ]
    if any("metric_p99_le_ms" in r for r in runs.get("facteur", [])):
        rows.append(b.abs_row("(f) facteur_loop_lag_seconds p99 (bucket bound)", "ms", runs,
                              "metric_p99_le_ms", limit=10.0001,
                              target_text="<= 10 ms, exposed as a metric"))
        rows.append(b.abs_row("(f) facteur_loop_lag_max_seconds", "ms", runs,
                              "metric_max_ms", target_text="(worst single stall)"))
    b.write_result("lag", {
        "title": "(f) event-loop lag under load",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE,
                   "probe_ms": PROBE_MS},
        "postfix_note": postfix_note, "rows": rows, "runs": {"lag": runs}})


if __name__ == "__main__":
    b.run_scenario(main)
