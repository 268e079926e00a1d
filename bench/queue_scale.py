#!/usr/bin/python3
"""Queue tooling at volume: BENCH_MESSAGES messages (default 100000) to a
dead destination (a closed port, retry in an hour), then the time of
`facteurctl summary`, `queue --domain D --limit 100`, a whole `queue
--json`, a /metrics scrape, `hold`/`release --domain D`, `suspend` and
`resume D`, and `flush`, and the loop's lag meanwhile (a NOOP every
BENCH_PROBE_MS on an open session, as lag.py); for release, resume and
flush the lag over BENCH_AFTER_S seconds (default 10) after the command
too, while the messages they made due run; RSS per queued message; the
restart time with the queue full. facteur alone.

Environment: BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE (default 300),
BENCH_PROBE_MS (5), FACTEURD (a release build is meant).
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

MESSAGES = b.env_int("BENCH_MESSAGES", 100000)
SIZE = b.env_int("BENCH_SIZE", 300)
PROBE_MS = b.env_float("BENCH_PROBE_MS", 5)
FACTEURCTL = b.FACTEURD.parent / "facteurctl"


class Probe:
    """NOOP round trips on one session, in a thread, between start and
    stop."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")
        self._reply()
        self.file.write(b"EHLO probe.test\r\n")
        self.file.flush()
        self._reply()
        self.times = []
        self.stopping = threading.Event()
        self.thread = None

    def _reply(self):
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("probe session closed")
            if line[3:4] != b"-":
                return line

    def _run(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self.file.write(b"NOOP\r\n")
            self.file.flush()
            self._reply()
            self.times.append(time.monotonic() - t0)
            time.sleep(PROBE_MS / 1000)

    def measure(self, fn):
        self.times = []
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        try:
            result = fn()
        finally:
            self.stopping.set()
            self.thread.join()
        t = sorted(self.times) or [0]
        return result, {"probes": len(self.times),
                        "lag_p50_ms": round(1000 * t[len(t) // 2], 2),
                        "lag_p99_ms": round(1000 * t[min(len(t) - 1, int(len(t) * 0.99))], 2),
                        "lag_max_ms": round(1000 * t[-1], 2)}

    def close(self):
        self.sock.close()


def ctl(server, *args, out=subprocess.PIPE):
    t0 = time.monotonic()
    r = subprocess.run([str(FACTEURCTL), "-c", str(server.dir / "facteur.conf")] + list(args),
                       stdout=out, stderr=subprocess.PIPE, timeout=600)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("facteurctl %s: %d %s" % (args, r.returncode, r.stderr[-300:]))
    return wall, r.stdout


REPEAT = b.env_int("BENCH_QUEUE_REPEAT", 5)
AFTER_S = b.env_float("BENCH_AFTER_S", 10)


def timed(probe, server, name, *args, out=subprocess.PIPE, repeat=REPEAT):
    """The command `repeat` times in a row: its median time, and the lag
    over the whole window."""
    def run():
        return [ctl(server, *args, out=out) for _ in range(repeat)]
    runs, lag = probe.measure(run)
    walls = sorted(w for w, _ in runs)
    wall = statistics.median(walls)
    b.log("%s: median %.3f s (max %.3f, %d runs), lag %s"
          % (name, wall, walls[-1], repeat, lag))
    return dict(wall_s=round(wall, 3), wall_max_s=round(walls[-1], 3),
                runs=repeat, **lag), runs[-1][1]


def timed_after(probe, server, name, *args):
    """The command once, then AFTER_S seconds more: its time, and the lag
    over the command and what it set going."""
    def run():
        r = ctl(server, *args)
        time.sleep(AFTER_S)
        return r
    (wall, _), lag = probe.measure(run)
    b.log("%s: %.3f s, lag over it and %.0f s after: %s" % (name, wall, AFTER_S, lag))
    return dict(wall_s=round(wall, 3), after_s=AFTER_S, **lag)


def timed_scrape(probe, server, repeat=REPEAT):
    """GET /metrics `repeat` times: the median time and the lag."""
    def run():
        walls = []
        for _ in range(repeat):
            t0 = time.monotonic()
            server.metrics()
            walls.append(time.monotonic() - t0)
        return walls
    walls, lag = probe.measure(run)
    walls.sort()
    b.log("/metrics: median %.3f s (max %.3f), lag %s"
          % (statistics.median(walls), walls[-1], lag))
    return dict(wall_s=round(statistics.median(walls), 3),
                wall_max_s=round(walls[-1], 3), runs=repeat, **lag)


def rss_kib(pid):
    return b.proc_status(pid).get("VmRSS", 0)


def main():
    server = b.Facteur("queue-scale", extra={"log_level": "error"}).start()
    results = {"messages": MESSAGES, "size": SIZE, "load1_before": b.loadavg()}
    try:
        base = rss_kib(server.pid)
        t0 = time.monotonic()
        gen = b.Generator(server.port, MESSAGES, b.SESSIONS, SIZE, b.REMOTE_RCPT,
                          reuse=True).run()
        while server.accepted() < MESSAGES and time.monotonic() - t0 < 3600:
            time.sleep(0.5)
        results["inject_s"] = round(time.monotonic() - t0, 1)
        results["accepted"] = server.accepted()
        # Every message tried once (connection refused) and deferred.
        while (server.metrics().get("facteur_deliveries_total{result=\"deferred\"}", 0)
               < MESSAGES and time.monotonic() - t0 < 3600):
            time.sleep(1)
        time.sleep(2)
        full = rss_kib(server.pid)
        results.update(rss_empty_kib=base, rss_full_kib=full,
                       rss_bytes_per_message=round((full - base) * 1024 / MESSAGES),
                       generator_rc=gen["rc"])
        b.log("RSS %d KiB empty, %d KiB with %d messages: %d bytes a message"
              % (base, full, MESSAGES, results["rss_bytes_per_message"]))
        probe = Probe(server.port)
        _, idle = probe.measure(lambda: time.sleep(10))
        b.log("idle: lag %s" % idle)
        results["idle"] = idle
        results["summary"], out = timed(probe, server, "summary", "summary")
        b.log(out.decode()[:300])
        results["queue_domain_limit"], out = timed(
            probe, server, "queue --domain remote.test --limit 100",
            "queue", "--domain", "remote.test", "--limit", "100")
        assert len(out.splitlines()) == 101, out[-200:]
        results["queue_json_all"], _ = timed(probe, server, "queue --json (all)",
                                             "queue", "--json", out=subprocess.DEVNULL)
        results["delete_dry_run"], _ = timed(probe, server, "delete --domain --dry-run",
                                           "delete", "--domain", "remote.test",
                                           "--dry-run")
        results["metrics_scrape"] = timed_scrape(probe, server)
        results["hold_domain"], _ = timed(probe, server, "hold --domain",
                                          "hold", "--domain", "remote.test", repeat=1)
        results["release_domain"] = timed_after(probe, server, "release --domain",
                                                "release", "--domain", "remote.test")
        # Every message made due by the release is tried again (refused)
        # and deferred for an hour; then suspend, resume, and flush.
        deadline = time.monotonic() + 1800
        while (server.metrics().get("facteur_deliveries_total{result=\"deferred\"}", 0)
               < 2 * MESSAGES and time.monotonic() < deadline):
            time.sleep(1)
        ctl(server, "suspend", "remote.test")
        results["resume_domain"] = timed_after(probe, server, "resume", "resume",
                                               "remote.test")
        results["flush"] = timed_after(probe, server, "flush", "flush")
        probe.close()
        # The flush made every message due: let the attempts settle.
        time.sleep(5)
        server.proc.send_signal(15)
        t_stop = time.monotonic()
        server.proc.wait(timeout=600)
        results["stop_s"] = round(time.monotonic() - t_stop, 2)
        server.log.close()
        conf = server.dir / "facteur.conf"
        server.log = open(server.dir / "facteurd.log", "ab")
        t_start = time.monotonic()
        server.proc = subprocess.Popen([str(b.FACTEURD), "-c", str(conf)],
                                       stdin=subprocess.DEVNULL, stdout=server.log,
                                       stderr=subprocess.STDOUT, cwd=str(server.dir),
                                       env={k: v for k, v in os.environ.items()
                                            if not k.startswith("FACTEUR_")},
                                       preexec_fn=lambda: b.raise_nofile(30000))
        server.pid = server.proc.pid
        b.wait_port(server.port, timeout=600, proc=server.proc, what="facteurd")
        results["restart_s"] = round(time.monotonic() - t_start, 2)
        time.sleep(3)
        results["rss_after_restart_kib"] = rss_kib(server.pid)
        b.log("restart: %.2f s, RSS %d KiB" % (results["restart_s"],
                                                results["rss_after_restart_kib"]))
    finally:
        server.stop()
        server.cleanup()
    results["load1_after"] = b.loadavg()
    print(json.dumps(results, indent=1))
    b.OUT.mkdir(parents=True, exist_ok=True)
    (b.OUT / "queue_scale.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
