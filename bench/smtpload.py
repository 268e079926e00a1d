#!/usr/bin/python3
"""Small SMTP load tools for the benchmarks, standard library only.

    smtpload.py source [-d] -s SESSIONS -m MESSAGES -l LENGTH -f FROM -t TO HOST:PORT
        send MESSAGES messages over SESSIONS parallel sessions, one message per
        connection (or all over the same connection with -d), like smtp-source;
        exit 1 if any message did not get its 250.
    smtpload.py sink -M COUNT HOST:PORT
        accept SMTP and throw the mail away; exit after COUNT messages, like
        smtp-sink -M.
    smtpload.py idle -n SESSIONS HOST:PORT
        open SESSIONS connections, read the banner, EHLO, then hold them. Prints
        one JSON line; then reads commands on standard input: "noop" sends one
        NOOP on every session and prints the round-trip times as JSON; "quit"
        sends QUIT everywhere and exits.
    smtpload.py probe [-i MS] HOST:PORT
        one session after EHLO sending a NOOP every MS milliseconds until SIGTERM
        or SIGINT, then one JSON line with the round-trip times (event-loop lag
        seen from outside).

bench/ uses Postfix's smtp-source and smtp-sink when they are installed; the
source and sink here stand in for them (the CI smoke test) and are slower.
"""

import argparse
import asyncio
import json
import resource
import signal
import socket
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def percentiles(values):
    v = sorted(values)
    if not v:
        return {"count": 0}

    def at(p):
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

    return {"count": len(v), "p50_ms": round(at(50) * 1000, 3),
            "p90_ms": round(at(90) * 1000, 3), "p99_ms": round(at(99) * 1000, 3),
            "max_ms": round(v[-1] * 1000, 3)}


async def read_reply(reader):
    """One SMTP reply (all its lines); returns (code, text)."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    return int(lines[-1][:3]), b"".join(lines)


async def command(reader, writer, line, expect):
    writer.write(line)
    code, text = await read_reply(reader)
    if code // 100 != expect:
        raise RuntimeError("%r -> %r" % (line.strip(), text.strip()))
    return code


def make_message(length, sender, rcpt, seq):
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: bench %d\r\n"
            "Message-ID: <%d.%d@client.test>\r\n\r\n"
            % (sender, rcpt, seq, seq, time.time_ns())).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * (length // len(line))
    rest = length - len(body)
    if rest >= 2:
        body += b"y" * (rest - 2) + b"\r\n"
    return head + body + b".\r\n"


async def source(args):
    host, port = split_addr(args.addr)
    state = {"left": args.m, "ok": 0, "failed": 0, "seq": 0}

    async def session_loop():
        reader = writer = None
        while state["left"] > 0:
            state["left"] -= 1
            state["seq"] += 1
            seq = state["seq"]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                    code, _ = await read_reply(reader)
                    if code != 220:
                        raise RuntimeError("banner %d" % code)
                    await command(reader, writer, b"EHLO client.test\r\n", 2)
                await command(reader, writer, b"MAIL FROM:<%s>\r\n" % args.f.encode(), 2)
                await command(reader, writer, b"RCPT TO:<%s>\r\n" % args.t.encode(), 2)
                await command(reader, writer, b"DATA\r\n", 3)
                writer.write(make_message(args.l, args.f, args.t, seq))
                code, text = await read_reply(reader)
                if code // 100 != 2:
                    raise RuntimeError("end of data -> %r" % text.strip())
                state["ok"] += 1
                if not args.d:
                    await command(reader, writer, b"QUIT\r\n", 2)
                    writer.close()
                    writer = None
            except (OSError, RuntimeError, ConnectionError) as e:
                state["failed"] += 1
                print("smtpload: message %d: %s" % (seq, e), file=sys.stderr)
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            try:
                await command(reader, writer, b"QUIT\r\n", 2)
            except (OSError, RuntimeError, ConnectionError):
                pass
            writer.close()

    await asyncio.gather(*(session_loop() for _ in range(args.s)))
    print("smtpload: %d sent, %d failed" % (state["ok"], state["failed"]), file=sys.stderr)
    return 0 if state["failed"] == 0 else 1


async def sink(args):
    host, port = split_addr(args.addr)
    done = asyncio.get_running_loop().create_future()
    state = {"messages": 0}

    async def serve(reader, writer):
        try:
            writer.write(b"220 sink ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                 b"250 SIZE 104857600\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while True:
                        body = await reader.readline()
                        if not body:
                            return
                        if body == b".\r\n":
                            break
                    writer.write(b"250 2.0.0 ok\r\n")
                    state["messages"] += 1
                    if state["messages"] >= args.M and not done.done():
                        await writer.drain()
                        done.set_result(True)
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, port, backlog=1024, reuse_address=True)
    async with server:
        await done
    return 0


async def open_session(host, port):
    reader, writer = await asyncio.open_connection(host, port)
    code, _ = await read_reply(reader)
    if code != 220:
        raise RuntimeError("banner %d" % code)
    await command(reader, writer, b"EHLO client.test\r\n", 2)
    return reader, writer


async def idle(args):
    raise_nofile()
    host, port = split_addr(args.addr)
    sessions = []
    errors = {}
    gate = asyncio.Semaphore(args.c)

    async def one():
        async with gate:
            try:
                sessions.append(await open_session(host, port))
            except (OSError, RuntimeError, ConnectionError) as e:
                key = type(e).__name__ + ": " + str(e)[:80]
                errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    print(json.dumps({"connected": len(sessions), "failed": sum(errors.values()),
                      "errors": errors, "connect_s": round(time.monotonic() - t0, 3)}),
          flush=True)

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if cmd == "noop":
            rtts = []
            bad = 0

            async def noop(rw):
                nonlocal bad
                async with gate:
                    t = time.monotonic()
                    try:
                        await command(rw[0], rw[1], b"NOOP\r\n", 2)
                        rtts.append(time.monotonic() - t)
                    except (OSError, RuntimeError, ConnectionError):
                        bad += 1

            await asyncio.gather(*(noop(rw) for rw in sessions))
            out = percentiles(rtts)
            out["ok"] = len(rtts)
            out["failed"] = bad
            print(json.dumps(out), flush=True)
        elif cmd == "quit" or not line:
            for _, w in sessions:
                try:
                    w.write(b"QUIT\r\n")
                except (OSError, RuntimeError):
                    pass
            await asyncio.sleep(0.2)
            for _, w in sessions:
                w.close()
            return 0


def probe(args):
    host, port = split_addr(args.addr)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    s = socket.create_connection((host, port), timeout=30)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return int(line[:3])

    reply()
    s.sendall(b"EHLO probe.test\r\n")
    reply()
    rtts = []
    failed = 0
    interval = args.i / 1000.0
    while not stop:
        t = time.monotonic()
        try:
            s.sendall(b"NOOP\r\n")
            if reply() != 250:
                failed += 1
            else:
                rtts.append(time.monotonic() - t)
        except (OSError, ConnectionError):
            failed += 1
            break
        left = interval - (time.monotonic() - t)
        if left > 0 and not stop:
            time.sleep(left)
    try:
        s.sendall(b"QUIT\r\n")
    except OSError:
        pass
    s.close()
    out = percentiles(rtts)
    out["failed"] = failed
    print(json.dumps(out), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("source")
    s.add_argument("-d", action="store_true")
    s.add_argument("-s", type=int, default=1)
    s.add_argument("-m", type=int, default=1)
    s.add_argument("-l", type=int, default=4096)
    s.add_argument("-f", default="load@client.test")
    s.add_argument("-t", default="user@remote.test")
    s.add_argument("addr")
    k = sub.add_parser("sink")
    k.add_argument("-M", type=int, required=True)
    k.add_argument("addr")
    i = sub.add_parser("idle")
    i.add_argument("-n", type=int, required=True)
    i.add_argument("-c", type=int, default=200, help="connections or NOOPs in flight")
    i.add_argument("addr")
    r = sub.add_parser("probe")
    r.add_argument("-i", type=float, default=10, help="milliseconds between NOOPs")
    r.add_argument("addr")
    args = p.parse_args()
    if args.cmd == "probe":
        return probe(args)
    return asyncio.run({"source": source, "sink": sink, "idle": idle}[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
