#!/usr/bin/python3
"""(e) One big message (BENCH_BIG_MB, default 50 MiB of payload) delivered
into a local Maildir: the server's peak RSS against its idle RSS. The idle
figure is read after a small warm-up message went through the same path;
the peak is VmHWM (the kernel's high-water mark of the resident set) once
the big message is in new/.

For Postfix, RSS and VmHWM are summed over its processes (smtpd, cleanup,
virtual... each streams the message), and the largest single process is
given too. Environment: BENCH_BIG_MB, BENCH_RUNS, BENCH_POSTFIX (auto|0|1).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

BIG_MB = b.env_float("BENCH_BIG_MB", 50)
MIB = 1024.0


def one_run(track, make, run):
    server = track(make())
    quiet = b.wait_quiet("bigmsg %s run %d" % (server.name, run + 1))
    warm = b.Generator(server.port, 1, 1, 4096, b.LOCAL_RCPT).run()
    b.wait_files(server.maildir_new, 1, timeout=30, interval=0.05)
    time.sleep(0.5)
    idle = server.memory()
    size = int(BIG_MB * 1024 * 1024)
    gen = b.Generator(server.port, 1, 1, size, b.LOCAL_RCPT).run(timeout=600)
    n = b.wait_files(server.maildir_new, 2, timeout=120, interval=0.05)
    time.sleep(0.2)
    peak = server.memory()
    server.stop()
    server.cleanup()
    r = {"run": run + 1, "server": server.name, "size_mib": round(size / MIB / MIB, 1),
         "delivered": n >= 2, "accept_s": round(gen["wall_s"], 2),
         "idle_rss_mib": round(idle["rss_kib"] / MIB, 1),
         "peak_rss_mib": round(peak["hwm_kib"] / MIB, 1),
         "peak_over_idle": round(peak["hwm_kib"] / max(1, idle["rss_kib"]), 2),
         "processes": peak["processes"], "load1_before": quiet["load1"]}
    if server.name == "postfix":
        r["max_process_peak_mib"] = round(peak["max_process_hwm_kib"] / MIB, 1)
    if warm["rc"] != 0 or gen["rc"] != 0 or n < 2:
        r["problem"] = "generator exit %s/%s, %d files in new/: %s" % (
            warm["rc"], gen["rc"], n, gen["stderr"][-300:])
        b.log(server.name, "PROBLEM:", r["problem"])
    b.log("bigmsg %s run %d: %.0f MiB message accepted in %.2fs, idle RSS %.1f MiB, "
          "peak %.1f MiB (x%.2f)"
          % (server.name, run + 1, r["size_mib"], gen["wall_s"], r["idle_rss_mib"],
             r["peak_rss_mib"], r["peak_over_idle"]))
    return r


def main(track):
    server_list, postfix_note = b.servers("bigmsg")
    runs = {}
    for i, name, make in b.interleaved(b.RUNS, server_list):
        runs.setdefault(name, []).append(one_run(track, make, i))
    rows = [
        b.abs_row("(e) one %g MiB message: peak RSS / idle RSS" % BIG_MB, "x", runs,
                  "peak_over_idle", limit=2, target_text="facteur < 2x",
                  note="Postfix: summed over its processes"),
        b.ratio_row("(e) one %g MiB message: peak RSS" % BIG_MB, "MiB", runs,
                    "peak_rss_mib", lower_is_better=True),
    ]
    b.write_result("bigmsg", {
        "title": "(e) one big message",
        "params": {"size_mib": BIG_MB},
        "postfix_note": postfix_note, "rows": rows, "runs": {"bigmsg": runs}})


if __name__ == "__main__":
    b.run_scenario(main)
