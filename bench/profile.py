#!/usr/bin/python3
"""Profiles of facteurd under (a) acceptance and (b) Maildir delivery, for
choosing optimisations: where its CPU goes (perf, sampled on cpu-clock,
flat by symbol: the release build has no frame pointers), user against
kernel time, and the system calls per message (strace -c, on a separate,
slower run since strace stops the process at every call).

Writes $BENCH_OUT/profile-<scenario>.txt. Environment: BENCH_PROFILE_MESSAGES
(default 20000), BENCH_STRACE_MESSAGES (default 5000), BENCH_SESSIONS,
BENCH_SIZE, BENCH_PROFILE_SCENARIOS (default "accept maildir").
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

MESSAGES = b.env_int("BENCH_PROFILE_MESSAGES", 20000)
STRACE_MESSAGES = b.env_int("BENCH_STRACE_MESSAGES", 5000)
SCENARIOS = b.env_str("BENCH_PROFILE_SCENARIOS", "accept maildir").split()


def cpu_split(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) / b.CLK_TCK, int(rest[12]) / b.CLK_TCK


def rcpt_for(scenario):
    return b.LOCAL_RCPT if scenario == "maildir" else b.REMOTE_RCPT


def wait_done(server, scenario, count):
    if scenario == "maildir":
        b.wait_files(server.maildir_new, count, timeout=300)


def perf_run(track, scenario):
    server = track(b.Facteur("profile"))
    quiet = b.wait_quiet("profile %s" % scenario)
    data = b.WORK / ("perf-%s.data" % scenario)
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-o", str(data),
                             "-p", str(server.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    u0, s0 = cpu_split(server.pid)
    gen = b.Generator(server.port, MESSAGES, b.SESSIONS, b.SIZE, rcpt_for(scenario)).run()
    wait_done(server, scenario, MESSAGES)
    u1, s1 = cpu_split(server.pid)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)
    server.stop()
    server.cleanup()
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                             "--sort", "dso,sym", "--percent-limit", "0.7"],
                            capture_output=True, text=True).stdout
    by_dso = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                             "--sort", "dso"], capture_output=True, text=True).stdout
    data.unlink(missing_ok=True)
    user, system = u1 - u0, s1 - s0
    head = ["facteurd under %s: %d messages, %d sessions, %d bytes, %.0f msgs/s, load %.2f"
            % (scenario, MESSAGES, b.SESSIONS, b.SIZE, MESSAGES / gen["wall_s"], quiet["load1"]),
            "CPU: user %.2fs, kernel %.2fs (%.0f%% kernel), %.1f us of CPU per message"
            % (user, system, 100 * system / max(1e-9, user + system),
               1e6 * (user + system) / MESSAGES), ""]
    keep = [line for line in by_dso.splitlines() if line and not line.startswith("#")]
    keep2 = [line for line in report.splitlines() if line and not line.startswith("#")]
    return head + ["By object:"] + keep[:15] + ["", "By symbol (self time):"] + keep2[:45]


def strace_run(track, scenario):
    if not shutil.which("strace"):
        return ["(strace not installed: no system call counts)"]
    server = track(b.Facteur("profile"))
    summary = b.WORK / ("strace-%s.txt" % scenario)
    st = subprocess.Popen(["strace", "-c", "-f", "-o", str(summary), "-p", str(server.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    b.Generator(server.port, STRACE_MESSAGES, b.SESSIONS, b.SIZE, rcpt_for(scenario)).run()
    wait_done(server, scenario, STRACE_MESSAGES)
    st.send_signal(signal.SIGINT)
    st.wait(timeout=60)
    server.stop()
    server.cleanup()
    text = summary.read_text() if summary.exists() else ""
    summary.unlink(missing_ok=True)
    out = ["System calls (strace -c -f, %d messages; calls per message in the last column):"
           % STRACE_MESSAGES]
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit():
            calls = int(parts[3])
            out.append("%s  %8.2f" % (line, calls / STRACE_MESSAGES))
        elif line.strip():
            out.append(line)
    return out


def main(track):
    b.OUT.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS:
        lines = perf_run(track, scenario)
        lines += [""] + strace_run(track, scenario)
        path = b.OUT / ("profile-%s.txt" % scenario)
        path.write_text("\n".join(lines) + "\n")
        b.log("wrote", path)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("profile.py: perf and strace -p need root")
    b.run_scenario(main)
