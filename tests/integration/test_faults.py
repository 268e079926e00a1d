"""Local faults: the spool's or the mailboxes' file system full, out of
descriptors, I/O errors on a mailbox. Whatever happens, a client gets a 4xx
(never a 250 for a message that is not stored), a delivery is deferred
(never lost, never half written), and everything works again once the
fault is gone.

The full file systems are small tmpfs mounts made by the test, and the I/O
errors come from an LD_PRELOAD shim built by the test (device-mapper's
error target needs a kernel driver that containers rarely have), so these
tests need root."""

import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import facteur_harness as h

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: mounts small tmpfs file systems and preloads a shim")

USER = "user@localhost"


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: tmpfs(name, size) mounts a tmpfs of `size` (mount(8)
    syntax) at tmp_path/name and returns its path; unmounted at the end."""
    mounted = []

    def mount(name, size):
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
                            "tmpfs", str(where)], stderr=subprocess.PIPE)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.decode().strip())
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        # Lazily: a daemon that failed the test may still hold files.
        subprocess.run(["umount", "-l", str(where)])


def fill(directory):
    """Fill the file system of `directory` with one file; return it."""
    filler = Path(directory) / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
    return filler


def free_space(directory):
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def subjects(messages):
    out = []
    for m in messages:
        for line in m.split(b"\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].strip().decode())
                break
    return out


def try_send(d, subject, body):
    """One message over its own connection: the final reply, or the first
    refusal on the way there."""
    with d.raw() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@sender.test>")
        if r.code == 250:
            r = c.cmd("RCPT TO:<%s>" % USER)
        if r.code == 250:
            r = c.cmd("DATA")
        if r.code == 354:
            c.send(h.dot_stuff(h.make_message(subject=subject, body=body)))
            r = c.reply()
        try:
            c.cmd("QUIT")
        except (OSError, AssertionError):
            pass
    return r


# (a) The spool's file system fills up.

def test_spool_full_refuses_with_4xx_and_recovers(tmpfs, make_daemon, tmp_path):
    spool = tmpfs("spool", "4m")
    d = make_daemon(config={"spool_dir": str(spool / "q"), "retry_min": "1s",
                            "retry_max": "2s"})
    # Accepted mail stays in the spool for now: a file where the
    # mailboxes' folder must go defers every delivery.
    d.mail_root.mkdir()
    blocker = d.mail_root / "localhost"
    blocker.write_text("not a directory\n")
    filler = fill(spool)
    body = ("x" * 70 + "\r\n") * 300  # about 21 KB

    # Full: every message is refused with a temporary code, small or
    # large (a large one is stored in a file of its own).
    for i, size in enumerate((300, 300, 3000)):
        r = try_send(d, "full-%d" % i, ("x" * 70 + "\r\n") * size)
        assert r.code in (451, 452), r
        assert r.enhanced and r.enhanced.startswith("4."), r
    d.assert_alive()

    # Nearly full: some fit, some do not; only those that fit get 250.
    os.truncate(filler, max(0, os.path.getsize(filler) - 256 * 1024))
    accepted, refused = [], []
    for i in range(30):
        subject = "near-%02d" % i
        r = try_send(d, subject, body)
        if r.code == 250:
            accepted.append(subject)
        else:
            assert r.code in (451, 452) and r.enhanced.startswith("4."), r
            refused.append(subject)
    assert refused, "256 KiB should not hold 30 messages of 21 KB and their records"
    d.assert_alive()

    # Space comes back: new mail is accepted at once, and delivered once
    # the mailboxes can be made.
    filler.unlink()
    for i in range(3):
        subject = "after-%d" % i
        r = try_send(d, subject, body)
        assert r.code == 250, r
        accepted.append(subject)
    blocker.unlink()

    # Everything that got a 250 is delivered, once.
    h.wait_for(lambda: set(accepted) <= set(subjects(d.maildir_messages(USER))),
               what="every accepted message delivered\n--- log tail:\n%s" % d.log_tail())
    got = subjects(d.maildir_messages(USER))
    for s in accepted:
        assert got.count(s) == 1, (s, got)
    # And it survives a restart: nothing accepted comes back twice.
    d.restart()
    time.sleep(2)
    got = subjects(d.maildir_messages(USER))
    for s in accepted:
        assert got.count(s) == 1, (s, got)


# (b) The mailboxes' file system fills up.

@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_mailbox_full_defers_then_delivers_once(tmpfs, make_daemon, fmt):
    root = tmpfs("mail", "1m")
    cfg = {"retry_min": "1s", "retry_max": "2s",
           "mailbox_path": str(root) + "/%d/%u"}
    if fmt == "mbox":
        cfg["mailbox_format"] = "mbox"
    d = make_daemon(config=cfg)
    box = root / "localhost" / "user"
    # A first message makes the mailbox; then the disk fills.
    qid0 = d.send(subject="first", body="hello\r\n")
    d.wait_event("delivered", queue_id=qid0)
    filler = fill(root)
    before = box.read_bytes() if fmt == "mbox" else None

    body = ("y" * 70 + "\r\n") * 300
    qid = d.send(subject="while-full", body=body)
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0]["dsn"] == "4.3.1", ev
    assert "No space left on device" in ev[0].get("reason", ""), ev
    # Retried (retry_min = 1s), still deferred, nothing half written.
    h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 20,
               what="a second attempt")
    if fmt == "mbox":
        assert box.read_bytes() == before
    else:
        assert not list((box / "tmp").iterdir())
        assert len(d.maildir_messages(USER)) == 1
    assert not d.events("delivered", queue_id=qid)

    filler.unlink()
    d.wait_event("delivered", queue_id=qid)
    if fmt == "mbox":
        data = box.read_bytes()
        assert data.startswith(before)
        assert data.count(b"\nFrom ") == 1 and data.count(b"Subject: while-full") == 1
        assert data.endswith(b"y" * 70 + b"\n\n")
    else:
        assert sorted(subjects(d.maildir_messages(USER))) == ["first", "while-full"]
        assert not list((box / "tmp").iterdir())


# (c) Out of descriptors.

def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_neither_spins_nor_stops(make_daemon):
    d = make_daemon(config={"max_connections_per_ip": 1000})
    limit = open_fds(d.pid) + 12
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients = []
    try:
        for _ in range(60):
            s = socket.create_connection((d.host, d.port), timeout=5)
            clients.append(s)
        # The backlog holds what the daemon cannot accept; it waits.
        time.sleep(1.5)
        t0, c0 = time.monotonic(), cpu_seconds(d.pid)
        time.sleep(3)
        busy = (cpu_seconds(d.pid) - c0) / (time.monotonic() - t0)
        assert busy < 0.3, "facteurd spins at the descriptor limit: %.0f%% CPU" % (100 * busy)
        d.assert_alive()
        assert d.events("accept_error"), d.log_tail()
        # One line per episode, not per failed accept.
        assert len(d.events("accept_error")) == 1, d.log_tail()
    finally:
        for s in clients:
            s.close()
    # The descriptors come back: a new client is served again.
    def served():
        try:
            with d.raw(timeout=5) as c:
                return c.banner.code == 220
        except (OSError, AssertionError):
            return False
    h.wait_for(served, 20, what="a banner after the clients left\n" + d.log_tail())
    qid = d.send(subject="after-emfile")
    d.wait_event("delivered", queue_id=qid)


# (d) I/O errors on a mailbox.

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* EIO for files under $EIO_PREFIX while the file $EIO_SWITCH exists: for
 * writes and flushes, or for flushes only if it says "flush". */
static int failing(int fd, int flush)
{
    const char *prefix = getenv("EIO_PREFIX"), *sw = getenv("EIO_SWITCH");
    char link[64], path[4096], mode[8] = "";
    FILE *f;
    if (prefix == NULL || sw == NULL || (f = fopen(sw, "r")) == NULL)
        return 0;
    if (fgets(mode, sizeof mode, f) == NULL)
        mode[0] = '\0';
    fclose(f);
    if (!flush && strncmp(mode, "flush", 5) == 0)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

#define WRAP(ret, name, params, args, first, flush)                   \
    ret name params                                                   \
    {                                                                 \
        static ret (*real) params;                                    \
        if (real == NULL)                                             \
            real = (ret (*) params)dlsym(RTLD_NEXT, #name);           \
        if (failing(first, flush)) {                                  \
            errno = EIO;                                              \
            return -1;                                                \
        }                                                             \
        return real args;                                             \
    }

WRAP(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n), fd, 0)
WRAP(ssize_t, pwrite, (int fd, const void *b, size_t n, off_t o), (fd, b, n, o), fd, 0)
WRAP(ssize_t, pwrite64, (int fd, const void *b, size_t n, off_t o), (fd, b, n, o), fd, 0)
WRAP(ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n), fd, 0)
WRAP(int, fsync, (int fd), (fd), fd, 1)
WRAP(int, fdatasync, (int fd), (fd), fd, 1)
WRAP(int, syncfs, (int fd), (fd), fd, 1)
"""


@pytest.fixture
def eio_shim(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the EIO shim")
    src = tmp_path / "eio.c"
    lib = tmp_path / "eio.so"
    src.write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-ldl"],
                   check=True)
    # A sanitizer runtime must come first in the list of preloads.
    preload = [str(lib)]
    ldd = subprocess.run(["ldd", str(h.FACTEURD)], stdout=subprocess.PIPE).stdout.decode()
    for line in ldd.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libasan") and len(parts) >= 3:
            preload.insert(0, parts[2])
    return " ".join(preload)


@pytest.mark.parametrize("what", ["write", "flush"])
@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_mailbox_io_error_defers_then_delivers_once(eio_shim, make_daemon, tmp_path, fmt,
                                                    what):
    switch = tmp_path / "eio-on"
    root = tmp_path / "mail"
    cfg = {"retry_min": "1s", "retry_max": "2s"}
    if fmt == "mbox":
        cfg["mailbox_format"] = "mbox"
    d = make_daemon(config=cfg, env={"LD_PRELOAD": eio_shim,
                                     "EIO_PREFIX": str(root) + "/",
                                     "EIO_SWITCH": str(switch)})
    box = root / "localhost" / "user"
    qid0 = d.send(subject="first")
    d.wait_event("delivered", queue_id=qid0)
    before = box.read_bytes() if fmt == "mbox" else None

    switch.write_text(what)
    qid = d.send(subject="during-eio", body=("z" * 70 + "\r\n") * 100)
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0]["dsn"].startswith("4."), ev
    assert "Input/output error" in ev[0].get("reason", ""), ev
    h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 20,
               what="a second attempt")
    assert not d.events("delivered", queue_id=qid)
    if fmt == "mbox":
        assert box.read_bytes() == before
    else:
        assert subjects(d.maildir_messages(USER)) == ["first"]
        assert not list((box / "tmp").iterdir())
    d.assert_alive()

    switch.unlink()
    d.wait_event("delivered", queue_id=qid)
    if fmt == "mbox":
        data = box.read_bytes()
        assert data.startswith(before) and data.count(b"Subject: during-eio") == 1
    else:
        assert sorted(subjects(d.maildir_messages(USER))) == ["during-eio", "first"]
        assert not list((box / "tmp").iterdir())


# (a) and (b) at once: deliveries that succeed while their outcome cannot
# be recorded in a full spool.

def delivered_subjects(d, fmt, box):
    if fmt == "maildir":
        return subjects(d.maildir_messages(USER))
    data = box.read_bytes() if box.exists() else b""
    return [l[9:].decode() for l in data.split(b"\n") if l.startswith(b"Subject: ")]


# An mbox has no name to find a delivered message by: with it, only the
# spool's records keep a message from coming twice (a crash in between
# may repeat an mbox delivery, so it is not tried here).
@pytest.mark.parametrize("fmt,crash", [("maildir", False), ("maildir", True),
                                       ("mbox", False)])
def test_outcomes_not_recorded_in_a_full_spool_deliver_once(tmpfs, make_daemon, fmt,
                                                            crash):
    spool = tmpfs("spool", "4m")
    root = tmpfs("mail", "1m")
    d = make_daemon(config={"spool_dir": str(spool / "q"), "retry_min": "1s",
                            "retry_max": "2s", "mailbox_path": str(root) + "/%d/%u",
                            "mailbox_format": fmt})
    box = root / "localhost" / "user"
    qid0 = d.send(subject="first")
    d.wait_event("delivered", queue_id=qid0)
    mail_filler = fill(root)
    sent = []
    # Enough messages that their outcomes cannot all fit in what is left
    # of the log's last page once the file system is full.
    for i in range(100):
        sent.append("queued-%02d" % i)
        d.send(subject=sent[-1], body=("w" * 70 + "\r\n") * 10)
    h.wait_for(lambda: len(d.events("deferred")) >= 100, what="every one deferred\n" + d.log_tail())
    # The spool fills, then the mailboxes get their space back: the
    # messages can be written, their outcomes cannot all be logged.
    spool_filler = fill(spool)
    mail_filler.unlink()
    h.wait_for(lambda: d.events("spool_error"), what="a record refused\n" + d.log_tail())
    time.sleep(2)
    d.assert_alive()
    if crash:
        # Killed while outcomes are missing from the spool: the restart
        # tries those recipients again and finds them delivered.
        d.kill9()
        spool_filler.unlink()
        d.start()
    else:
        spool_filler.unlink()
    h.wait_for(lambda: set(sent) <= set(delivered_subjects(d, fmt, box)),
               what="every message delivered\n--- log tail:\n%s" % d.log_tail())
    # Every outcome ends up recorded, and nothing comes twice, not even
    # after a crash.
    h.wait_for(lambda: not list_queue(d), what="an empty queue\n" + d.log_tail())
    d.restart(kill=True)
    time.sleep(2)
    got = delivered_subjects(d, fmt, box)
    assert sorted(got) == sorted(["first"] + sent), got


def list_queue(d):
    r = subprocess.run([str(h.BUILD_DIR / "facteurctl"), "-c", str(d.conf_path), "queue"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return [l for l in r.stdout.decode().splitlines()
            if l.strip() and l.strip() != "Mail queue is empty"]
