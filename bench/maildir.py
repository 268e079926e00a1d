#!/usr/bin/python3
"""(b) Local Maildir delivery: BENCH_MESSAGES messages of BENCH_SIZE bytes to
one local mailbox over BENCH_SESSIONS sessions, one message per connection;
the clock runs from the first connect to the last file in the mailbox's new/
(its inode change time, which the rename into new/ sets).

facteur delivers with its own Maildir code; Postfix with virtual(8) into a
Maildir (static map, uid nobody), both fsync'ing each file before the rename.

Environment: BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE, BENCH_RUNS,
BENCH_POSTFIX (auto|0|1), BENCH_MAILDIR_SYNCFS (1: also run facteur with
flush_method = syncfs, reported as a row of its own; 0: not).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402


def one_run(track, make, run):
    server = track(make())
    quiet = b.wait_quiet("maildir %s run %d" % (server.name, run + 1))
    window = b.CpuWindow({"server": server.pid})
    window.start()
    t0 = time.time()
    gen = b.Generator(server.port, b.MESSAGES, b.SESSIONS, b.SIZE, b.LOCAL_RCPT).run()
    # Generous: Postfix may deliver at a fraction of the acceptance rate.
    n = b.wait_files(server.maildir_new, b.MESSAGES, timeout=max(60, 20 * gen["wall_s"]))
    cpu = window.stop()
    end = b.last_ctime(server.maildir_new) if n else t0
    load_after = b.loadavg()
    server.stop()
    server.cleanup()
    elapsed = max(1e-6, end - t0)
    rate = n / elapsed
    r = {"run": run + 1, "server": server.name, "messages": b.MESSAGES, "delivered": n,
         "wall_s": round(elapsed, 3), "accept_wall_s": round(gen["wall_s"], 3),
         "msgs_per_s": round(rate, 1),
         "accept_msgs_per_s": round(b.MESSAGES / gen["wall_s"], 1),
         "generator_rc": gen["rc"], "generator_cpu_pct": gen["generator_cpu_pct"],
         "server_cpu_pct": cpu["server_cpu_pct"], "machine_busy_pct": cpu["machine_busy_pct"],
         "load1_before": quiet["load1"], "load1_after": load_after}
    if gen["rc"] != 0 or n < b.MESSAGES:
        r["problem"] = ("generator exit %s, %d of %d delivered: %s"
                        % (gen["rc"], n, b.MESSAGES, gen["stderr"][-300:]))
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("maildir %s run %d: %.0f msgs/s delivered (%d in %.2fs; accepted in %.2fs), "
          "server CPU %s%%, generator CPU %s%%, machine %s%%, load %.2f"
          % (server.name, run + 1, rate, n, elapsed, gen["wall_s"], cpu["server_cpu_pct"],
             gen["generator_cpu_pct"], cpu["machine_busy_pct"], quiet["load1"]))
    return r


def main(track):
    server_list, postfix_note = b.servers("maildir")
    # facteur once more with flush_method = syncfs (one flush per file
    # system and round instead of one per file), beside the default.
    if b.env_str("BENCH_MAILDIR_SYNCFS", "1") == "1":
        def make_syncfs():
            server = b.Facteur("maildir", extra={"flush_method": "syncfs"})
            server.name = "facteur-syncfs"  # in the log and the run table
            return server
        server_list.insert(1, ("facteur-syncfs", make_syncfs))
    runs = {}
    for i, name, make in b.interleaved(b.RUNS, server_list):
        runs.setdefault(name, []).append(one_run(track, make, i))
    default = {k: v for k, v in runs.items() if k in ("facteur", "postfix")}
    rows = [b.ratio_row("(b) local Maildir delivery, first connect to last file in new/",
                        "msgs/s", default, "msgs_per_s", target_ratio=5)]
    cases = {"maildir": default}
    if "facteur-syncfs" in runs:
        syncfs = {"facteur": runs["facteur-syncfs"]}
        if "postfix" in runs:
            syncfs["postfix"] = runs["postfix"]
        rows.append(b.ratio_row(
            "(b) the same, facteur with flush_method = syncfs", "msgs/s", syncfs,
            "msgs_per_s", target_ratio=5,
            note="one syncfs per file system and I/O round instead of an fsync "
                 "per file; for a volume holding the spool and mailboxes only"))
        cases["maildir-syncfs"] = {"facteur": runs["facteur-syncfs"]}
    b.write_result("maildir", {
        "title": "(b) local Maildir delivery",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE},
        "postfix_note": postfix_note, "rows": rows, "runs": cases})


if __name__ == "__main__":
    b.run_scenario(main)
