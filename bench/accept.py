#!/usr/bin/python3
"""(a) Durable acceptance: how fast each server says 250 to BENCH_MESSAGES
messages of BENCH_SIZE bytes over BENCH_SESSIONS parallel sessions, one
message per connection ("single") and all messages over long connections
("reuse"). Delivery is routed to a closed port, so that every message is
stored, fsync'd, tried once and deferred; the clock stops when the load
generator has its last 250.

Environment: BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE, BENCH_RUNS,
BENCH_ACCEPT_MODES (default "single,reuse"), BENCH_POSTFIX (auto|0|1).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

MODES = [m for m in b.env_str("BENCH_ACCEPT_MODES", "single,reuse").split(",") if m]


def wait_accepted(server, want, timeout=30):
    deadline = time.monotonic() + timeout
    n = server.accepted()
    while n < want and time.monotonic() < deadline:
        time.sleep(0.2)
        n = server.accepted()
    return n


def one_run(track, make, mode, run):
    server = track(make())
    quiet = b.wait_quiet("accept/%s %s run %d" % (mode, server.name, run + 1))
    window = b.CpuWindow({"server": server.pid})
    window.start()
    gen = b.Generator(server.port, b.MESSAGES, b.SESSIONS, b.SIZE, b.REMOTE_RCPT,
                      reuse=(mode == "reuse")).run()
    cpu = window.stop()
    accepted = wait_accepted(server, b.MESSAGES)
    load_after = b.loadavg()
    server.stop()
    server.cleanup()
    # Postfix's count walks queue directories while files move between
    # them and may see one twice: never credit more than was sent.
    rate = min(accepted, b.MESSAGES) / gen["wall_s"] if gen["wall_s"] > 0 else 0
    r = {"run": run + 1, "server": server.name, "mode": mode, "messages": b.MESSAGES,
         "accepted": accepted, "wall_s": round(gen["wall_s"], 3),
         "msgs_per_s": round(rate, 1), "generator_rc": gen["rc"],
         "generator_cpu_pct": gen["generator_cpu_pct"],
         "server_cpu_pct": cpu["server_cpu_pct"],
         "machine_busy_pct": cpu["machine_busy_pct"],
         "load1_before": quiet["load1"], "load1_after": load_after}
    if gen["rc"] != 0 or accepted < b.MESSAGES:
        r["problem"] = ("generator exit %s, %d of %d accepted: %s"
                        % (gen["rc"], accepted, b.MESSAGES, gen["stderr"][-300:]))
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("accept/%s %s run %d: %.0f msgs/s (%d in %.2fs), server CPU %s%%, "
          "generator CPU %s%%, machine %s%%, load %.2f"
          % (mode, server.name, run + 1, rate, accepted, gen["wall_s"], cpu["server_cpu_pct"],
             gen["generator_cpu_pct"], cpu["machine_busy_pct"], quiet["load1"]))
    return r


def main(track):
    server_list, postfix_note = b.servers("accept")
    results = {}
    rows = []
    targets = {"single": 4, "reuse": 8}
    labels = {"single": "(a) durable acceptance, 1 message per connection",
              "reuse": "(a) durable acceptance, connection reuse"}
    for mode in MODES:
        runs = {}
        for i, name, make in b.interleaved(b.RUNS, server_list):
            runs.setdefault(name, []).append(one_run(track, make, mode, i))
        results[mode] = runs
        rows.append(b.ratio_row(labels[mode], "msgs/s", runs, "msgs_per_s",
                                target_ratio=targets[mode]))
    b.write_result("accept", {
        "title": "(a) durable acceptance",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE,
                   "modes": MODES},
        "postfix_note": postfix_note, "rows": rows, "runs": results})


if __name__ == "__main__":
    b.run_scenario(main)
