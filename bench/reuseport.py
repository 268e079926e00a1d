#!/usr/bin/python3
"""Durable acceptance by one facteurd against two sharing one address with
reuse_port = yes, each with its own spool (one instance per core). The load
is that of accept.py: BENCH_MESSAGES messages of BENCH_SIZE bytes over
BENCH_SESSIONS sessions, one message per connection ("single") or many
("reuse"), routed to a closed port so that every one is stored, flushed,
tried once and deferred. The clock stops at the generator's last 250.

Each run records the CPU of every facteurd, of the load generator and of
the machine: on a 2-core machine the generator competes with the daemons,
and a run whose generator is near a full core says "generator-bound"
rather than pretending to measure the servers. The second daemon's
metrics listen on BENCH_BASE_PORT + 4.

Environment: as accept.py, and BENCH_REUSEPORT_MODES (default
"single,reuse"). Writes $BENCH_OUT/reuseport.json and prints a summary.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

MODES = [m for m in b.env_str("BENCH_REUSEPORT_MODES", "single,reuse").split(",") if m]
PORT_METRICS_SECOND = b.BASE_PORT + 4
# Past this share of one core, the generator is what limits the rate.
GENERATOR_BOUND_PCT = 90


def instances(count):
    made = [b.Facteur("reuseport-a", extra={"reuse_port": "yes"}, shared=True)]
    if count == 2:
        made.append(b.Facteur("reuseport-b", extra={"reuse_port": "yes"},
                              metrics_port=PORT_METRICS_SECOND, shared=True))
    return made


def accepted(servers):
    return sum(max(0, s.accepted()) for s in servers)


def one_run(track, count, mode, run):
    servers = [track(s) for s in instances(count)]
    quiet = b.wait_quiet("reuseport/%s x%d run %d" % (mode, count, run + 1))
    window = b.CpuWindow({"server%d" % i: s.pid for i, s in enumerate(servers)})
    window.start()
    gen = b.Generator(b.PORT_FACTEUR, b.MESSAGES, b.SESSIONS, b.SIZE, b.REMOTE_RCPT,
                      reuse=(mode == "reuse")).run()
    cpu = window.stop()
    deadline = time.monotonic() + 30
    got = accepted(servers)
    while got < b.MESSAGES and time.monotonic() < deadline:
        time.sleep(0.2)
        got = accepted(servers)
    shares = [max(0, s.accepted()) for s in servers]
    for s in servers:
        s.stop()
        s.cleanup()
    rate = min(got, b.MESSAGES) / gen["wall_s"] if gen["wall_s"] > 0 else 0
    r = {"run": run + 1, "instances": count, "mode": mode, "messages": b.MESSAGES,
         "accepted": got, "accepted_per_instance": shares,
         "wall_s": round(gen["wall_s"], 3), "msgs_per_s": round(rate, 1),
         "generator_rc": gen["rc"], "generator_cpu_pct": gen["generator_cpu_pct"],
         "server_cpu_pct": [cpu["server%d_cpu_pct" % i] for i in range(count)],
         "machine_busy_pct": cpu["machine_busy_pct"],
         "load1_before": quiet["load1"], "load1_after": b.loadavg(),
         "generator_bound": gen["generator_cpu_pct"] >= GENERATOR_BOUND_PCT}
    if gen["rc"] != 0 or got < b.MESSAGES:
        r["problem"] = ("generator exit %s, %d of %d accepted: %s"
                        % (gen["rc"], got, b.MESSAGES, gen["stderr"][-300:]))
        b.log("reuseport PROBLEM:", r["problem"])
    b.log("reuseport/%s x%d run %d: %.0f msgs/s (%s), server CPU %s%%, generator CPU %s%%%s, "
          "machine %s%%, load %.2f"
          % (mode, count, run + 1, rate, "+".join(map(str, shares)), r["server_cpu_pct"],
             gen["generator_cpu_pct"], " (generator-bound)" if r["generator_bound"] else "",
             cpu["machine_busy_pct"], quiet["load1"]))
    return r


def main(track):
    runs = {}
    summary = []
    for mode in MODES:
        for i in range(b.RUNS):
            # One and two alternately, so that a drift of the machine
            # touches both alike.
            for count in (1, 2):
                runs.setdefault(mode, {}).setdefault("x%d" % count, []).append(
                    one_run(track, count, mode, i))
        one = b.summarize(runs[mode]["x1"], "msgs_per_s")
        two = b.summarize(runs[mode]["x2"], "msgs_per_s")
        ratio = two["median"] / one["median"] if one and two and one["median"] else None
        bound = any(r["generator_bound"] for r in runs[mode]["x1"] + runs[mode]["x2"])
        summary.append({"mode": mode, "one": one, "two": two, "two_over_one": ratio,
                        "generator_bound": bound})
        b.log("reuseport/%s: one %s msgs/s, two %s msgs/s, two/one %s%s"
              % (mode, one and one["median"], two and two["median"],
                 "%.2f" % ratio if ratio else "-",
                 "; the generator was the limit in some runs" if bound else ""))
    b.write_result("reuseport", {
        "title": "durable acceptance: one facteurd against two with reuse_port",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE,
                   "modes": MODES},
        "summary": summary, "runs": runs})


if __name__ == "__main__":
    b.run_scenario(main)
