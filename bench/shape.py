#!/usr/bin/python3
"""Delivery shaping at volume: BENCH_MESSAGES messages (20,000) to 20
destination domains behind 4 sinks (127.0.0.2-5), each domain with its own
`shape` line (max_connections=BENCH_SHAPE_CONNECTIONS, rate=BENCH_SHAPE_RATE
per minute). The sinks record when each message for each domain came in;
the report gives each domain's achieved rate beside the configured one
(steady state: from its 10th message to its last) and facteurd's CPU over
the run.

Environment: BENCH_MESSAGES, BENCH_SHAPE_RATE (per minute, default 1800),
BENCH_SHAPE_CONNECTIONS (default 2), FACTEURD, BENCH_OUT.
"""

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import benchlib as b  # noqa: E402

DOMAINS = ["d%02d.shape.test" % i for i in range(20)]
SINKS = ["127.0.0.%d" % (2 + i) for i in range(4)]
RATE = b.env_int("BENCH_SHAPE_RATE", 1800)
CONNS = b.env_int("BENCH_SHAPE_CONNECTIONS", 2)
BODY = ("Subject: shape bench\r\n\r\n" + "x" * 76 + "\r\n") * 20


class Sinks:
    """Four SMTP sinks on one asyncio loop in a thread; arrivals[domain]
    holds the monotonic time of each message's end of data."""

    def __init__(self, port):
        self.port = port
        self.arrivals = {d: [] for d in DOMAINS}
        self.count = 0
        self.loop = asyncio.new_event_loop()

    async def session(self, reader, writer):
        rcpts = []
        writer.write(b"220 sink ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.split(b"@")[-1].strip(b">\r\n ").decode().lower())
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                now = time.monotonic()
                for d in set(rcpts):
                    self.arrivals.setdefault(d, []).append(now)
                self.count += 1
                rcpts = []
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:  # MAIL, RSET, NOOP
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    def start(self):
        async def serve():
            for ip in SINKS:
                await asyncio.start_server(self.session, ip, self.port, backlog=512)
        self.loop.run_until_complete(serve())
        threading.Thread(target=self.loop.run_forever, daemon=True).start()


async def inject(port, count, sessions=20):
    """`count` messages round-robin over the domains, `sessions` clients
    reusing their connection."""
    async def client(k):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def cmd(text):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line
        await reader.readline()
        await cmd("EHLO load.test")
        for i in range(k, count, sessions):
            await cmd("MAIL FROM:<%s>" % b.SENDER)
            await cmd("RCPT TO:<u%d@%s>" % (i, DOMAINS[i % len(DOMAINS)]))
            await cmd("DATA")
            reply = await cmd(BODY + ".")
            assert reply.startswith(b"250"), reply
        await cmd("QUIT")
        writer.close()
    await asyncio.gather(*(client(k) for k in range(sessions)))


def cpu_seconds(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / b.CLK_TCK


def main():
    port = b.PORT_SINK
    sinks = Sinks(port)
    sinks.start()
    work = b.WORK / "facteur-shape"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    (work / "spool").mkdir(parents=True)
    lines = ["hostname = %s" % b.HOSTNAME,
             "listen = 127.0.0.1:%d" % b.PORT_FACTEUR,
             "spool_dir = %s" % (work / "spool"),
             "local_domains = %s" % b.LOCAL_DOMAIN,
             "relay_networks = 127.0.0.0/8",
             "log_level = warn", "retry_min = 1h", "retry_max = 1h",
             "max_connections_per_ip = 20000",
             "dns_servers = 127.0.0.1:%d" % b.PORT_CLOSED]
    for i, d in enumerate(DOMAINS):
        lines.append("route = %s [%s]:%d tls=none" % (d, SINKS[i % 4], port))
        lines.append("shape = %s max_connections=%d rate=%d/m" % (d, CONNS, RATE))
    conf = work / "facteur.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = open(work / "facteurd.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTEUR_")}
    proc = subprocess.Popen([str(b.FACTEURD), "-c", str(conf)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        b.wait_port(b.PORT_FACTEUR, proc=proc, what="facteurd")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        asyncio.run(inject(b.PORT_FACTEUR, b.MESSAGES))
        accepted = time.monotonic() - t0
        expect = b.MESSAGES / len(DOMAINS) / (RATE / 60.0)
        deadline = time.monotonic() + 3 * expect + 60
        while sinks.count < b.MESSAGES and time.monotonic() < deadline:
            time.sleep(0.2)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    per = {}
    for d, times in sinks.arrivals.items():
        if len(times) > 20:
            times = sorted(times)
            per[d] = (len(times) - 10) / (times[-1] - times[9]) * 60
    configured = RATE
    rates = sorted(per.values())
    result = {"messages": b.MESSAGES, "delivered": sinks.count,
              "domains": len(DOMAINS), "sinks": len(SINKS),
              "configured_per_min": configured, "max_connections": CONNS,
              "achieved_per_min_median": round(statistics.median(rates), 1) if rates else 0,
              "achieved_per_min_min": round(rates[0], 1) if rates else 0,
              "achieved_per_min_max": round(rates[-1], 1) if rates else 0,
              "accept_wall_s": round(accepted, 2), "wall_s": round(wall, 2),
              "facteurd_cpu_s": round(cpu, 2),
              "facteurd_cpu_pct": round(100 * cpu / wall, 1)}
    print(result)
    b.write_result("shape", result)


if __name__ == "__main__":
    main()
