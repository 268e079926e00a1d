#!/usr/bin/python3
"""Durable acceptance through rspamd's milter: the load of accept.py
(BENCH_MESSAGES messages of BENCH_SIZE bytes over BENCH_SESSIONS sessions,
routed to a closed port so that every one is stored, flushed, tried once
and deferred) against facteur without a milter, facteur with rspamd's
proxy worker as its milter and, where Postfix is installed, Postfix with
the same rspamd as its milter (smtpd_milters, milter_default_action =
tempfail), runs interleaved. One rspamd serves both servers: its proxy
worker scans the message itself (self_scan), with the modules that need
Redis or the Internet turned off. Besides the rate, the resident memory
(PSS) of the server's processes is read at the end of each run and
divided by BENCH_SESSIONS: what a session costs while it waits for the
milter. The clock stops at the generator's last 250.

Environment: as accept.py, BENCH_MILTER_MODES (default "single,reuse") and
BENCH_POSTFIX (auto|0|1). Writes $BENCH_OUT/milter.json and prints a summary.
"""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402
import accept  # noqa: E402
from dkim import wait_connect  # noqa: E402

MODES = [m for m in b.env_str("BENCH_MILTER_MODES", "single,reuse").split(",") if m]
PORT_RSPAMD = b.BASE_PORT + 3
MILTER = "inet:127.0.0.1:%d" % PORT_RSPAMD
RSPAMD_OFF = ("fuzzy_check rbl surbl asn emails neural ratelimit greylist phishing "
              "replies history_redis dkim_signing arc").split()


def start_rspamd():
    top = b.WORK / "rspamd"
    override = top / "local" / "override.d"
    override.mkdir(parents=True, exist_ok=True)
    for d in ("db", "run", "log"):
        (top / d).mkdir(exist_ok=True)
    files = {
        "worker-proxy.inc": 'milter = yes;\ntimeout = 120s;\nupstream "local" '
                            '{ default = yes; self_scan = yes; }\n'
                            'bind_socket = "127.0.0.1:%d";\ncount = 2;\n' % PORT_RSPAMD,
        "worker-normal.inc": "enabled = false;\n",
        "worker-fuzzy.inc": "enabled = false;\n",
        "worker-controller.inc": 'bind_socket = "127.0.0.1:%d";\n' % (b.BASE_PORT + 4),
        "logging.inc": 'type = "console";\nlevel = "error";\n',
        "options.inc": 'dns { nameserver = ["127.0.0.1:%d"]; timeout = 1s; }\n'
                       % b.PORT_CLOSED,
    }
    for name in RSPAMD_OFF:
        files[name + ".conf"] = "enabled = false;\n"
    for name, text in files.items():
        (override / name).write_text(text)
    log = open(top / "rspamd.out", "wb")
    proc = subprocess.Popen(
        ["rspamd", "-f", "-i", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
         "--var=LOCAL_CONFDIR=%s" % (top / "local"), "--var=DBDIR=%s" % (top / "db"),
         "--var=RUNDIR=%s" % (top / "run"), "--var=LOGDIR=%s" % (top / "log")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    wait_connect(PORT_RSPAMD, proc, timeout=300)
    return proc


class PssProbe:
    """Wraps a server so that its processes' PSS is read before it stops."""

    def __init__(self, server, out):
        self.server, self.out = server, out

    def __getattr__(self, name):
        return getattr(self.server, name)

    def start(self):
        self.server.start()
        return self

    def stop(self):
        pss = sum(b.proc_pss_kib(p) or 0 for p in self.server.pids())
        self.out.append(pss)
        self.server.stop()


def variants(pss):
    out = [
        ("no-milter", lambda: PssProbe(b.Facteur("milter-none"), pss["no-milter"])),
        ("rspamd", lambda: PssProbe(b.Facteur("milter-rspamd", extra={
            "milter": MILTER + " timeout=60s"}), pss["rspamd"])),
    ]
    if b.postfix_wanted()[0]:
        out.append(("postfix+rspamd", lambda: PssProbe(b.Postfix("milter-pf", extra={
            "smtpd_milters": MILTER, "milter_default_action": "tempfail",
            "milter_protocol": "6"}), pss["postfix+rspamd"])))
    return out


def main(track):
    rspamd = start_rspamd()
    try:
        results, rows = {}, []
        for mode in MODES:
            runs = {}
            pss = {"no-milter": [], "rspamd": [], "postfix+rspamd": []}
            for i, name, make in b.interleaved(b.RUNS, variants(pss)):
                r = accept.one_run(track, make, mode, i)
                r["variant"] = name
                r["pss_kib"] = pss[name][-1]
                runs.setdefault(name, []).append(r)
            results[mode] = runs
            base = b.summarize(runs["no-milter"], "msgs_per_s")
            for name in runs:
                s = b.summarize(runs[name], "msgs_per_s")
                per_session = b.median([r["pss_kib"] for r in runs[name]]) / b.SESSIONS
                rows.append({"mode": mode, "variant": name, "msgs_per_s": s,
                             "of_no_milter": round(s["median"] / base["median"], 3)
                             if base and base["median"] else None,
                             "pss_kib_per_session": round(per_session, 1)})
                b.log("milter/%s %s: median %.0f msgs/s (%.0f-%.0f), %s of no milter, "
                      "%.0f KiB PSS per session"
                      % (mode, name, s["median"], s["min"], s["max"],
                         rows[-1]["of_no_milter"], per_session))
        b.write_result("milter", {
            "title": "durable acceptance through rspamd's milter",
            "params": {"messages": b.MESSAGES, "sessions": b.SESSIONS, "size": b.SIZE,
                       "modes": MODES, "runs": b.RUNS},
            "rows": rows, "runs": results})
    finally:
        rspamd.terminate()
        try:
            rspamd.wait(30)
        except subprocess.TimeoutExpired:
            rspamd.kill()
            rspamd.wait()



if __name__ == "__main__":
    b.run_scenario(main)
