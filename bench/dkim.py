#!/usr/bin/python3
"""Durable acceptance with DKIM signing: the load of accept.py (BENCH_MESSAGES
messages of BENCH_SIZE bytes over BENCH_SESSIONS sessions, routed to a closed
port so that every one is stored, flushed, tried once and deferred) against
facteur without signing, with an RSA-2048 key and with an Ed25519 key, runs
interleaved. The generator's From: is in client.test, the signing domain.
The clock stops at the generator's last 250.

Postfix + OpenDKIM (as a milter) is not part of it yet: see RESULTS.md.

Environment: as accept.py, and BENCH_DKIM_MODES (default "single,reuse").
Writes $BENCH_OUT/dkim.json and prints a summary.
"""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402
import accept  # noqa: E402

MODES = [m for m in b.env_str("BENCH_DKIM_MODES", "single,reuse").split(",") if m]
SIGN_DOMAIN = b.SENDER.split("@")[1]


def make_key(kind):
    path = b.WORK / ("dkim-%s.pem" % kind)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        args = (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
                if kind == "rsa" else ["-algorithm", "ED25519"])
        subprocess.run(["openssl", "genpkey"] + args + ["-out", str(path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def variants():
    """(name, factory): the unsigned server first, as the reference."""
    rsa, ed = make_key("rsa"), make_key("ed25519")
    return [
        ("unsigned", lambda: b.Facteur("dkim-none")),
        ("rsa2048", lambda: b.Facteur("dkim-rsa", extra={
            "dkim_sign": "%s bench %s" % (SIGN_DOMAIN, rsa)})),
        ("ed25519", lambda: b.Facteur("dkim-ed", extra={
            "dkim_sign": "%s bench %s" % (SIGN_DOMAIN, ed)})),
    ]


def main(track):
    results, rows = {}, []
    for mode in MODES:
        runs = {}
        for i, name, make in b.interleaved(b.RUNS, variants()):
            r = accept.one_run(track, make, mode, i)
            r["variant"] = name
            runs.setdefault(name, []).append(r)
        results[mode] = runs
        base = b.summarize(runs["unsigned"], "msgs_per_s")
        for name in ("unsigned", "rsa2048", "ed25519"):
            s = b.summarize(runs[name], "msgs_per_s")
            rows.append({"mode": mode, "variant": name, "msgs_per_s": s,
                         "of_unsigned": round(s["median"] / base["median"], 3)
                         if base and base["median"] else None})
            b.log("dkim/%s %s: median %.0f msgs/s (%.0f-%.0f), %s of unsigned"
                  % (mode, name, s["median"], s["min"], s["max"],
                     rows[-1]["of_unsigned"]))
    b.write_result("dkim", {
        "title": "durable acceptance with DKIM signing",
        "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE,
                   "modes": MODES, "runs": b.RUNS},
        "rows": rows, "runs": results})


if __name__ == "__main__":
    b.run_scenario(main)
