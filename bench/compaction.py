#!/usr/bin/python3
"""The loop's lag while the spool compacts: BENCH_MESSAGES messages (default
300000) to two dead destinations at once, one in ten to keep.test and the
rest to drop.test, so that the kept ones are spread over every segment;
then `facteurctl delete --domain drop.test`, and a probe session's NOOP
round trips (every BENCH_PROBE_MS) over BENCH_WATCH_S seconds (default 40)
while the scheduler offers the spool the live messages of its oldest
segments (a pass every 10 s). Reports the lag and the segments before and
after. facteur alone; FACTEURD a release build.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402
import queue_scale as qs  # noqa: E402

MESSAGES = b.env_int("BENCH_MESSAGES", 300000)
WATCH_S = b.env_float("BENCH_WATCH_S", 40)


def segments(server):
    return sorted(p for p in os.listdir(server.dir / "spool" / "log") if p.endswith(".seg"))


def main():
    server = b.Facteur("compaction", extra={"log_level": "error"}).start()
    results = {"messages": MESSAGES, "load1_before": b.loadavg()}
    try:
        keep = MESSAGES // 10
        runs = {}

        def send(name, count, rcpt):
            runs[name] = b.Generator(server.port, count, max(1, b.SESSIONS // 2), 300,
                                     rcpt, reuse=True).run()
        threads = [threading.Thread(target=send, args=("keep", keep, "x@keep.test")),
                   threading.Thread(target=send, args=("drop", MESSAGES - keep, "y@drop.test"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while server.accepted() < MESSAGES:
            time.sleep(0.5)
        while (server.metrics().get('facteur_deliveries_total{result="deferred"}', 0)
               < MESSAGES):
            time.sleep(1)
        results["segments_full"] = len(segments(server))
        qs.ctl(server, "delete", "--domain", "drop.test")
        probe = qs.Probe(server.port)
        _, lag = probe.measure(lambda: time.sleep(WATCH_S))
        probe.close()
        results["segments_after"] = len(segments(server))
        results["lag"] = lag
        b.log("segments %d -> %d, lag over %.0f s: %s" % (
            results["segments_full"], results["segments_after"], WATCH_S, lag))
    finally:
        server.stop()
        server.cleanup()
    results["load1_after"] = b.loadavg()
    print(json.dumps(results, indent=1))
    b.OUT.mkdir(parents=True, exist_ok=True)
    (b.OUT / "compaction.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
