#!/usr/bin/python3
"""Durable acceptance with DKIM signing: the load of accept.py (BENCH_MESSAGES
messages of BENCH_SIZE bytes over BENCH_SESSIONS sessions, routed to a closed
port so that every one is stored, flushed, tried once and deferred) against
facteur without signing, with an RSA-2048 key and with an Ed25519 key, runs
interleaved. The generator's From: is in client.test, the signing domain.
The clock stops at the generator's last 250.

Where Postfix is installed (bench/install.sh), a fourth server runs in the
same rounds: Postfix with Debian's OpenDKIM as a milter (`opendkim -f`,
inet on BENCH_BASE_PORT + 3, relaxed/relaxed, the same RSA-2048 key, mail
from mynetworks signed; milter_default_action = tempfail, so that a message
is only accepted signed).

Environment: as accept.py, BENCH_DKIM_MODES (default "single,reuse") and
BENCH_POSTFIX (auto|0|1).
Writes $BENCH_OUT/dkim.json and prints a summary.
"""

import os
import socket
import subprocess
import sys
import time
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


PORT_MILTER = b.BASE_PORT + 3


def wait_connect(port, proc, timeout=20):
    """A milter says nothing first: a connection accepted is enough."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("opendkim exited with status %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("opendkim did not listen on port %d" % port)


class PostfixOpenDKIM(b.Postfix):
    """A private Postfix whose smtpd calls an OpenDKIM milter that signs."""

    def __init__(self, tag, key):
        super().__init__(tag, extra={
            "smtpd_milters": "inet:127.0.0.1:%d" % PORT_MILTER,
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
        })
        self.key = key
        self.milter = None

    def start(self):
        conf = b.WORK / "opendkim.conf"
        conf.write_text(
            "Mode s\nSyslog no\nCanonicalization relaxed/relaxed\n"
            "Domain %s\nSelector bench\nKeyFile %s\n"
            "Socket inet:%d@127.0.0.1\nInternalHosts 127.0.0.0/8\n"
            "UserID opendkim\nRequireSafeKeys false\n"
            % (SIGN_DOMAIN, self.key, PORT_MILTER))
        os.chmod(self.key, 0o644)  # read by the opendkim account
        self.milter_log = open(b.WORK / "opendkim.out", "wb")
        self.milter = subprocess.Popen(["/usr/sbin/opendkim", "-f", "-x", str(conf)],
                                       stdin=subprocess.DEVNULL, stdout=self.milter_log,
                                       stderr=subprocess.STDOUT)
        wait_connect(PORT_MILTER, self.milter)
        super().start()
        self.pid = self.master
        return self

    def pids(self):
        return super().pids() + [self.milter.pid]

    def stop(self):
        try:
            super().stop()
        finally:
            if self.milter is not None and self.milter.poll() is None:
                self.milter.terminate()
                self.milter.wait(20)
            self.milter = None


def variants():
    """(name, factory): the unsigned server first, as the reference."""
    rsa, ed = make_key("rsa"), make_key("ed25519")
    out = [
        ("unsigned", lambda: b.Facteur("dkim-none")),
        ("rsa2048", lambda: b.Facteur("dkim-rsa", extra={
            "dkim_sign": "%s bench %s" % (SIGN_DOMAIN, rsa)})),
        ("ed25519", lambda: b.Facteur("dkim-ed", extra={
            "dkim_sign": "%s bench %s" % (SIGN_DOMAIN, ed)})),
    ]
    if b.postfix_wanted()[0] and Path("/usr/sbin/opendkim").exists():
        out.append(("postfix+opendkim", lambda: PostfixOpenDKIM("dkim-pf", rsa)))
    return out


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
        for name in runs:
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
