#!/usr/bin/python3
"""(c) Relay through a route to an SMTP sink: BENCH_MESSAGES messages of
BENCH_SIZE bytes to a remote domain over BENCH_SESSIONS sessions, one message
per connection; facteur's `route = * [127.0.0.1]:PORT` and Postfix's
`relayhost = [127.0.0.1]:PORT` point at smtp-sink, which exits after the last
message: the clock runs from the first connect to that exit.

Environment: BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE, BENCH_RUNS,
BENCH_POSTFIX (auto|0|1).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402


def one_run(track, make, run):
    sink = b.Sink(b.PORT_SINK, b.MESSAGES)
    sink.start()
    try:
        server = track(make())
        quiet = b.wait_quiet("relay %s run %d" % (server.name, run + 1))
        window = b.CpuWindow({"server": server.pid})
        window.start()
        gen = b.Generator(server.port, b.MESSAGES, b.SESSIONS, b.SIZE, b.REMOTE_RCPT).run()
        end = sink.wait(timeout=max(60, 20 * gen["wall_s"]))
        cpu = window.stop()
    finally:
        sink.stop()
    load_after = b.loadavg()
    server.stop()
    server.cleanup()
    done = end is not None
    elapsed = (end - gen["t0_monotonic"]) if done else None
    sink_pct = round(100 * sink.cpu_s / cpu["wall_s"], 1)
    rate = b.MESSAGES / elapsed if done else 0
    r = {"run": run + 1, "server": server.name, "messages": b.MESSAGES, "complete": done,
         "wall_s": round(elapsed, 3) if done else None,
         "accept_wall_s": round(gen["wall_s"], 3), "msgs_per_s": round(rate, 1),
         "accept_msgs_per_s": round(b.MESSAGES / gen["wall_s"], 1),
         "generator_rc": gen["rc"], "generator_cpu_pct": gen["generator_cpu_pct"],
         "server_cpu_pct": cpu["server_cpu_pct"], "sink_cpu_pct": sink_pct,
         "sink": sink.kind, "machine_busy_pct": cpu["machine_busy_pct"],
         "load1_before": quiet["load1"], "load1_after": load_after}
    if gen["rc"] != 0 or not done:
        r["problem"] = ("generator exit %s, sink %s: %s %s"
                        % (gen["rc"], "got all" if done else "timed out",
                           gen["stderr"][-300:], getattr(sink, "stderr", "")[-300:]))
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("relay %s run %d: %.0f msgs/s relayed (%s; accepted in %.2fs), server CPU %s%%, "
          "generator CPU %s%%, sink CPU %s%%, machine %s%%, load %.2f"
          % (server.name, run + 1, rate, "%.2fs" % elapsed if done else "incomplete",
             gen["wall_s"], cpu["server_cpu_pct"], gen["generator_cpu_pct"],
             sink_pct, cpu["machine_busy_pct"], quiet["load1"]))
    return r


def main(track):
    server_list, postfix_note = b.servers(
        "relay", facteur_kw={"route_port": b.PORT_SINK},
        postfix_kw={"relay_port": b.PORT_SINK})
    runs = {}
    for i, name, make in b.interleaved(b.RUNS, server_list):
        runs.setdefault(name, []).append(one_run(track, make, i))
    rows = [b.ratio_row("(c) relay to an smtp-sink through a route, to the last message",
                        "msgs/s", runs, "msgs_per_s", target_ratio=5)]
    b.write_result("relay", {
        "title": "(c) relay to a sink",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE},
        "postfix_note": postfix_note, "rows": rows, "runs": {"relay": runs}})


if __name__ == "__main__":
    b.run_scenario(main)
