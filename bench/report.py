#!/usr/bin/python3
"""Turns the scenario results ($BENCH_OUT/*.json) into a Markdown report:
the machine, a summary table (medians, min-max, facteur/Postfix ratio,
target), then every run with the CPU of each process and the machine's load.

    report.py [OUTPUT]      (default $BENCH_RESULTS, else bench/RESULTS.md)
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

ORDER = ["accept", "maildir", "relay", "idle", "bigmsg", "lag"]

COLUMNS = {
    "accept": ["mode", "run", "server", "msgs_per_s", "wall_s", "accepted", "server_cpu_pct",
               "generator_cpu_pct", "machine_busy_pct", "other_cpu_pct", "load1_before",
               "load1_after"],
    "maildir": ["run", "server", "msgs_per_s", "wall_s", "delivered", "accept_msgs_per_s",
                "server_cpu_pct", "generator_cpu_pct", "machine_busy_pct", "other_cpu_pct",
                "load1_before", "load1_after"],
    "relay": ["run", "server", "msgs_per_s", "wall_s", "accept_msgs_per_s", "server_cpu_pct",
              "generator_cpu_pct", "sink_cpu_pct", "machine_busy_pct", "other_cpu_pct",
              "load1_before", "load1_after"],
    "idle": ["run", "server", "sessions", "connected", "noop_ok", "connect_s", "noop_p99_ms",
             "idle_rss_mib", "rss_mib", "pss_mib", "kib_per_session", "pss_mib_per_10k",
             "processes", "load1_before"],
    "bigmsg": ["run", "server", "size_mib", "delivered", "accept_s", "idle_rss_mib",
               "peak_rss_mib", "peak_over_idle", "max_process_peak_mib", "processes",
               "load1_before"],
    "lag": ["run", "server", "msgs_per_s", "noop_count", "noop_p50_ms", "noop_p99_ms",
            "noop_max_ms", "metric_p99_le_ms", "metric_max_ms", "server_cpu_pct",
            "generator_cpu_pct", "machine_busy_pct", "other_cpu_pct", "load1_before"],
}

HEADINGS = {
    "msgs_per_s": "msgs/s", "wall_s": "time (s)", "server_cpu_pct": "server CPU %",
    "generator_cpu_pct": "generator CPU %", "sink_cpu_pct": "sink CPU %",
    "machine_busy_pct": "machine CPU % (of 200)", "load1_before": "load before",
    "load1_after": "load after", "accept_msgs_per_s": "acceptance msgs/s",
    "noop_p99_ms": "NOOP p99 ms", "noop_p50_ms": "NOOP p50 ms", "noop_max_ms": "NOOP max ms",
    "noop_count": "NOOPs", "metric_p99_le_ms": "loop lag metric p99 <= ms",
    "metric_max_ms": "loop lag metric max ms", "idle_rss_mib": "idle RSS MiB",
    "rss_mib": "RSS MiB", "pss_mib": "PSS MiB", "kib_per_session": "KiB/session (RSS)",
    "pss_mib_per_10k": "PSS MiB per 10k", "peak_rss_mib": "peak RSS MiB",
    "peak_over_idle": "peak/idle", "max_process_peak_mib": "largest process peak MiB",
    "connect_s": "connect time (s)", "noop_ok": "NOOP ok", "accept_s": "accept time (s)",
    "other_cpu_pct": "other CPU % (neighbours, kernel threads)",
}


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              cwd=str(b.ROOT)).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def mount_type(path):
    """File system type of the mount holding `path` (from /proc/mounts)."""
    path = str(Path(path).resolve())
    best, kind = "", "?"
    try:
        for line in open("/proc/mounts"):
            parts = line.split()
            mnt = parts[1]
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, "%s on %s" % (parts[2], mnt)
    except OSError:
        pass
    return kind


def machine(data):
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    fs = mount_type(b.WORK)
    builds = sorted({"%s, built %s (the checkout's HEAD at run time: %s)" % (
        d["facteurd"].get("path"), d["facteurd"].get("built", "?"),
        d["facteurd"].get("commit", "?")) for d in data.values() if d.get("facteurd")})
    postfix = sh(["postconf", "-d", "-h", "mail_version"]) or "not installed"
    return [
        ("CPU", "%s, %d cores" % (cpu, os.cpu_count())),
        ("memory", mem),
        ("kernel", platform.release()),
        ("work directory", "%s (%s)" % (b.WORK, fs)),
        ("facteur", "; ".join(builds) or str(b.FACTEURD)),
        ("Postfix", postfix),
    ]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == float("inf"):
            return "inf"
        if abs(v) >= 100:
            return "%.0f" % v
        if abs(v) >= 10:
            return "%.1f" % v
        return "%.2f" % v
    return str(v)


def span(s):
    if not s:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"])
    return "%s (%s–%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"]))


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return out


def where(name, case):
    return name if case == name else "%s/%s" % (name, case)


def bottlenecks(name, runs):
    """Plain statements about who was busy, from the CPU figures."""
    notes = []
    for case, by_server in runs.items():
        for server, rs in by_server.items():
            for key, who in (("generator_cpu_pct", "the load generator"),
                             ("sink_cpu_pct", "the sink")):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if vals and b.median(vals) >= 85:
                    notes.append("%s %s: %s ran at %.0f%% of a core (median): it, not "
                                 "the server, may be the limit." % (
                                     where(name, case), server, who, b.median(vals)))
            vals = [r["server_cpu_pct"] for r in rs if r.get("server_cpu_pct") is not None]
            if server == "facteur" and vals and b.median(vals) >= 90:
                notes.append("%s: facteurd used %.0f%% of a core (median): its single "
                             "loop is the limit." % (where(name, case), b.median(vals)))
            gen = [r["generator_cpu_pct"] for r in rs if r.get("generator_cpu_pct") is not None]
            if (server == "facteur" and vals and gen and b.median(vals) < 80
                    and b.median(gen) < 85):
                notes.append("%s facteur: neither facteurd (%.0f%% of a core) nor the load "
                             "generator (%.0f%%) was CPU-bound: facteur was waiting "
                             "(see the profiles in docs/performance.md)."
                             % (where(name, case), b.median(vals), b.median(gen)))
            busy = [r["machine_busy_pct"] for r in rs if r.get("machine_busy_pct") is not None]
            if busy and b.median(busy) >= 180:
                notes.append("%s %s: the machine's two cores were %.0f%% busy (median of "
                             "200%%): CPU-bound as a whole." % (where(name, case), server,
                                                                 b.median(busy)))
    return notes


def main():
    out_path = Path(sys.argv[1] if len(sys.argv) > 1
                    else b.env_str("BENCH_RESULTS", str(b.BENCH / "RESULTS.md")))
    data = {}
    for name in ORDER:
        p = b.OUT / (name + ".json")
        if p.exists():
            data[name] = json.loads(p.read_text())
    lines = ["# facteur and Postfix, side by side", ""]
    lines.append("Written by `bench/report.py` (from `bench/run.sh`) on %s. "
                 "How the numbers are taken, and what they mean for the design: "
                 "[docs/performance.md](../docs/performance.md)."
                 % time.strftime("%Y-%m-%d %H:%M %Z"))
    lines += ["", "## Machine", ""]
    lines += table(["", ""], machine(data))
    if not data:
        lines += ["", "No results in %s." % b.OUT]
    params = next(iter(data.values()))["params"] if data else {}
    lines += ["", "Load generator: %s; %s runs of each scenario per server, interleaved "
              "(facteur, Postfix, facteur...); a fresh spool or queue for each run. "
              "Medians, with min–max in brackets. A ratio above 1 means facteur is ahead "
              "(for memory and latency rows it is Postfix's figure over facteur's)."
              % (params.get("generator", "?"), params.get("runs", "?"))]
    notes = set(d.get("postfix_note") for d in data.values() if d.get("postfix_note"))
    for n in sorted(notes):
        lines += ["", "**Postfix skipped**: %s." % n]

    # The machine is shared: say how quiet it was.
    loads = [r.get("load1_before") for d in data.values() for rs in d["runs"].values()
             for srv in rs.values() for r in srv if r.get("load1_before") is not None]
    rule = next((d["quiet_rule"] for d in data.values() if d.get("quiet_rule")),
                {"load_max": b.LOAD_MAX, "load_wait_s": b.LOAD_WAIT})
    if loads:
        lines += ["", "1-minute load average before each run: median %.2f, max %.2f "
                  "(the scripts wait for it to fall under %.1f, at most %ds%s)."
                  % (b.median(loads), max(loads), rule["load_max"], rule["load_wait_s"],
                     "; some runs could not get a quiet machine" if max(loads) > rule["load_max"]
                     else "")]

    lines += ["", "## Summary", ""]
    rows = []
    for name in ORDER:
        for row in data.get(name, {}).get("rows", []):
            ratio = row.get("ratio")
            met = row.get("met")
            rows.append([row["label"], row["unit"], span(row.get("facteur")),
                         span(row.get("postfix")),
                         "%.2f×" % ratio if ratio else "-", row.get("target") or "",
                         "-" if met is None else ("**yes**" if met else "**no**")])
    lines += table(["scenario", "unit", "facteur", "Postfix", "ratio", "target", "met"], rows)
    row_notes = [(row["label"], row["note"]) for name in ORDER
                 for row in data.get(name, {}).get("rows", []) if row.get("note")]
    if row_notes:
        lines.append("")
        for label, note in row_notes:
            lines.append("- %s: %s." % (label, note))

    all_notes = []
    for name in ORDER:
        if name in data:
            all_notes += bottlenecks(name, data[name]["runs"])
    if all_notes:
        lines += ["", "## Who was the limit", ""]
        lines += ["- " + n for n in all_notes]

    lines += ["", "## Every run", ""]
    for name in ORDER:
        d = data.get(name)
        if not d:
            continue
        lines += ["### %s" % d["title"], ""]
        p = d.get("params", {})
        lines.append("Parameters: " + ", ".join("%s=%s" % (k, v) for k, v in sorted(p.items())
                                                 if k != "runs") + ".")
        lines.append("")
        cols = COLUMNS.get(name)
        flat = []
        for case, by_server in d["runs"].items():
            for server, rs in by_server.items():
                for r in rs:
                    r = dict(r)
                    r.setdefault("mode", case)
                    if r.get("machine_busy_pct") is not None:
                        # What neither server nor load tools used: other
                        # people's work on the shared machine.
                        r["other_cpu_pct"] = max(0.0, round(
                            r["machine_busy_pct"] - sum(r.get(k) or 0 for k in (
                                "server_cpu_pct", "generator_cpu_pct", "sink_cpu_pct")), 1))
                    flat.append(r)
        flat.sort(key=lambda r: (str(r.get("mode")), r.get("run", 0), r.get("server", "")))
        if not cols:
            cols = sorted({k for r in flat for k in r if not isinstance(r[k], (dict, list))})
        cols = [c for c in cols if any(r.get(c) is not None for r in flat)]
        lines += table([HEADINGS.get(c, c) for c in cols],
                       [[fmt(r.get(c)) for c in cols] for r in flat])
        problems = [(r.get("server"), r.get("run"), r["problem"]) for r in flat
                    if r.get("problem")]
        if problems:
            lines.append("")
            for server, run, prob in problems:
                lines.append("- problem, %s run %s: %s" % (server, run,
                                                           " ".join(str(prob).split())))
        lines.append("")
    out_path.write_text("\n".join(lines).rstrip() + "\n")
    b.log("wrote", out_path)


if __name__ == "__main__":
    main()
