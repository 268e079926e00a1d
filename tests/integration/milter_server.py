"""A scripted milter for the tests: the Sendmail milter protocol (version
6) spoken from its wire format with asyncio, in a thread of its own
(aio_server.py) so that tests stay synchronous. Each test says how it
answers each command: the replies (packets), a delay, closing the
connection, garbage, the version and the actions and steps it
negotiates. Everything it receives is recorded, per connection, as
(command, data) pairs."""

import asyncio
import struct
import time

from aio_server import AioServer

# commands that get no reply
SILENT = {b"D", b"A", b"Q"}

# negotiated protocol flags (SMFIP_*)
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40)
NR_HDR, NODATA, SKIP = 0x80, 0x200, 0x400
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
NR_EOH, NR_BODY = 0x40000, 0x80000
ALL_ACTIONS = 0x1FF


def packet(kind, data=b""):
    if isinstance(kind, str):
        kind = kind.encode()
    return struct.pack(">I", len(data) + 1) + kind + data


def z(*strings):
    """NUL-terminated strings, back to back."""
    return b"".join((s.encode() if isinstance(s, str) else s) + b"\0" for s in strings)


CONTINUE = packet("c")
ACCEPT = packet("a")
REJECT = packet("r")
TEMPFAIL = packet("t")
DISCARD = packet("d")
SKIP_REPLY = packet("s")


def replycode(text):
    return packet("y", z(text))


def add_header(name, value):
    return packet("h", z(name, value))


def insert_header(index, name, value):
    return packet("i", struct.pack(">I", index) + z(name, value))


def change_header(index, name, value):
    return packet("m", struct.pack(">I", index) + z(name, value))


def change_from(address, args=None):
    return packet("e", z(address) if args is None else z(address, args))


def add_rcpt(address, args=None):
    if args is None:
        return packet("+", z(address))
    return packet("2", z(address, args))


def del_rcpt(address):
    return packet("-", z(address))


def replace_body(data):
    return packet("b", data)


def quarantine(reason):
    return packet("q", z(reason))


class MilterServer:
    """replies: {command letter: [packets]} or a callable(command, data,
    seen) returning the packets; a command not listed gets CONTINUE.
    delay: {letter: seconds}; close: letters on which to hang up;
    garbage: letters answered with garbage."""

    def __init__(self, replies=None, delay=None, close=(), garbage=(),
                 version=6, actions=ALL_ACTIONS, protocol=0, optneg=None):
        self.replies = {k.encode() if isinstance(k, str) else k: v
                        for k, v in (replies or {}).items()}
        self.delay = {k.encode(): v for k, v in (delay or {}).items()}
        self.close_on = {c.encode() for c in close}
        self.garbage_on = {c.encode() for c in garbage}
        self.version, self.actions, self.protocol = version, actions, protocol
        self.optneg = optneg
        self.connections = []  # one list of (command, data) per connection
        self.offered = None    # the MTA's (version, actions, protocol)
        self.aio = AioServer(self._serve, what="milter server")

    @property
    def port(self):
        return self.aio.port

    @property
    def address(self):
        return "inet:127.0.0.1:%d" % self.port

    def start(self):
        self.aio.start()
        return self

    def stop(self):
        self.aio.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def commands(self, conn=-1):
        """The command letters of one connection, in order."""
        return [c for c, _ in self.connections[conn]]

    def data_of(self, letter, conn=-1):
        return [d for c, d in self.connections[conn] if c == letter.encode()]

    def wait_for(self, letter, count=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(len(self.data_of(letter, i)) >= count
                   for i in range(len(self.connections))):
                return
            time.sleep(0.05)
        raise AssertionError("milter never got %r: %r" % (letter, self.connections))

    async def _serve(self, reader, writer):
        seen = []
        self.connections.append(seen)
        try:
            while True:
                head = await reader.readexactly(4)
                (n,) = struct.unpack(">I", head)
                body = await reader.readexactly(n)
                cmd, data = body[:1], body[1:]
                seen.append((cmd, data))
                if cmd == b"O":
                    self.offered = struct.unpack(">III", data[:12])
                    reply = self.optneg if self.optneg is not None else packet(
                        "O", struct.pack(">III", self.version, self.actions,
                                         self.protocol))
                    writer.write(reply)
                    await writer.drain()
                    continue
                if cmd == b"Q":
                    break
                if cmd in SILENT or self._no_reply(cmd):
                    continue
                if cmd in self.delay:
                    await asyncio.sleep(self.delay[cmd])
                if cmd in self.close_on:
                    break
                if cmd in self.garbage_on:
                    writer.write(b"\x00\x00\x00\x05zjunk")
                    await writer.drain()
                    continue
                answer = self.replies.get(cmd, [CONTINUE])
                if callable(answer):
                    answer = answer(cmd, data, seen)
                for p in answer:
                    writer.write(p)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _no_reply(self, cmd):
        flags = {b"C": NR_CONN, b"H": NR_HELO, b"M": NR_MAIL, b"R": NR_RCPT,
                 b"T": NR_DATA, b"L": NR_HDR, b"N": NR_EOH, b"B": NR_BODY}
        return bool(self.protocol & flags.get(cmd, 0))
