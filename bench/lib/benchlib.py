"""Shared machinery of the facteur benchmarks (bench/*.py).

Starts facteurd and a private Postfix instance on loopback ports, drives them
with a load generator (Postfix's smtp-source when installed, else
bench/smtpload.py), and measures what the scenarios need: wall time, the CPU
of each process, memory from /proc, the machine's load. Each scenario script
writes one JSON file into $BENCH_OUT; bench/report.py turns them into
RESULTS.md.

Parameters come from the environment so that the CI smoke test can run every
scenario with tiny counts (see bench/README.md). Only the Python standard
library is used.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_float(name, default):
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def env_str(name, default):
    value = os.environ.get(name, "")
    return value if value.strip() else default


FACTEURD = Path(env_str("FACTEURD", str(ROOT / "build-bench" / "facteurd")))
WORK = Path(env_str("BENCH_WORK", "/tmp/facteur-bench"))
OUT = Path(env_str("BENCH_OUT", str(BENCH / "out")))
RUNS = env_int("BENCH_RUNS", 3)
MESSAGES = env_int("BENCH_MESSAGES", 20000)
SESSIONS = env_int("BENCH_SESSIONS", 50)
SIZE = env_int("BENCH_SIZE", 4096)
LOAD_MAX = env_float("BENCH_LOAD_MAX", 1.5)
LOAD_WAIT = env_float("BENCH_LOAD_WAIT", 300)
# CPU busy (% of one core) over 2 s that still counts as quiet.
BUSY_MAX = env_float("BENCH_BUSY_MAX", 40)
# Ports below the ephemeral range (32768-60999 here) so that no outgoing
# connection of the load generator can be holding them.
BASE_PORT = env_int("BENCH_BASE_PORT", 24520)
PORT_FACTEUR = BASE_PORT + 5
PORT_POSTFIX = BASE_PORT + 6
PORT_SINK = BASE_PORT + 7
PORT_CLOSED = BASE_PORT + 8  # nothing listens: "delivery held back"
PORT_METRICS = BASE_PORT + 9

HOSTNAME = "bench.test"
LOCAL_DOMAIN = "bench.test"
LOCAL_RCPT = "user@bench.test"
REMOTE_RCPT = "user@remote.test"
SENDER = "load@client.test"

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(*args):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def is_root():
    return os.geteuid() == 0


def postfix_wanted():
    """Whether the Postfix half runs: BENCH_POSTFIX=0 never, =1 always (an
    error if missing), auto (default) when installed and we are root."""
    mode = env_str("BENCH_POSTFIX", "auto")
    have = (shutil.which("postfix") is not None and os.path.exists(SMTP_SOURCE)
            and is_root())
    if mode == "0":
        return False, "disabled by BENCH_POSTFIX=0"
    if mode == "1" and not have:
        raise SystemExit("BENCH_POSTFIX=1 but Postfix is not installed (or not root): "
                         "run bench/install.sh as root")
    if not have:
        return False, "Postfix is not installed (bench/install.sh installs it)"
    return True, ""


def generator_kind():
    """smtp-source when present (the issue's load generator), else ours."""
    kind = env_str("BENCH_GENERATOR", "auto")
    if kind == "auto":
        return "smtp-source" if os.path.exists(SMTP_SOURCE) else "smtpload"
    return kind


def sink_kind():
    kind = env_str("BENCH_SINK", "auto")
    if kind == "auto":
        return "smtp-sink" if os.path.exists(SMTP_SINK) else "smtpload"
    return kind


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard) if hard != resource.RLIM_INFINITY else max(soft, n)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


# --------------------------------------------------------------------------
# The machine: load, CPU, memory

def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_now(seconds=2.0):
    """Machine CPU busy over the next `seconds`, in % of one core (200 = both
    cores of a 2-core machine)."""
    b0 = machine_cpu()
    time.sleep(seconds)
    b1 = machine_cpu()
    return 100.0 * os.cpu_count() * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])


def wait_quiet(what=""):
    """Poll until the 1-minute load is under LOAD_MAX and the CPUs are
    mostly idle right now (the load average lags by a minute, and counts
    tasks waiting on the disk), at most LOAD_WAIT seconds; return the load,
    the CPU busy figure, the seconds waited and whether it was quiet."""
    start = time.monotonic()
    load = loadavg()
    busy = None
    while True:
        if load <= LOAD_MAX:
            busy = busy_now() if LOAD_WAIT > 0 else 0.0
            if busy <= BUSY_MAX:
                break
        if time.monotonic() - start >= LOAD_WAIT:
            break
        time.sleep(3)
        load = loadavg()
    waited = time.monotonic() - start
    quiet = load <= LOAD_MAX and (busy is not None and busy <= BUSY_MAX)
    if waited > 3:
        log("waited %.0fs for a quiet machine before %s: load %.2f, CPU %s%%%s"
            % (waited, what, load, "-" if busy is None else "%.0f" % busy,
               "" if quiet else " (still busy, measuring anyway)"))
    return {"load1": load, "busy_before_pct": None if busy is None else round(busy, 1),
            "waited_s": round(waited, 1), "quiet": quiet}


def machine_cpu():
    """(busy ticks, total ticks) of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in seconds, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): utime is field 14, so rest[11].
    ppid = int(rest[1])
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return ppid, own, children


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(root):
    """root and every process below it."""
    parent = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st:
            parent[pid] = st[0]
    found = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(p for p in found if p in parent or p == root)


def tree_cpu(root):
    """CPU seconds of a process tree so far: every live member's own time
    plus what its reaped children used (a process that exits between two
    snapshots moves from its own entry into its parent's children time)."""
    total = 0.0
    for pid in descendants(root):
        st = proc_stat(pid)
        if st:
            total += st[1] + st[2]
    return total


def proc_status(pid):
    """VmRSS, VmHWM... in KiB from /proc/PID/status."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Vm") or line.startswith("Rss"):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
                elif line.startswith("Name:"):
                    out["Name"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return out


def proc_pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


class CpuWindow:
    """CPU used between start() and stop() by named process trees and by the
    whole machine."""

    def __init__(self, trees):
        self.trees = dict(trees)  # name -> root pid

    def start(self):
        self.t0 = time.monotonic()
        self.m0 = machine_cpu()
        self.c0 = {name: tree_cpu(pid) for name, pid in self.trees.items()}

    def stop(self):
        wall = time.monotonic() - self.t0
        m1 = machine_cpu()
        busy = (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1])
        out = {"wall_s": wall, "machine_busy_pct": round(100 * busy * os.cpu_count(), 1)}
        for name, pid in self.trees.items():
            sec = tree_cpu(pid) - self.c0[name]
            out[name + "_cpu_s"] = round(sec, 3)
            out[name + "_cpu_pct"] = round(100 * sec / wall, 1) if wall > 0 else 0
        return out


# --------------------------------------------------------------------------
# Load generator and sink

def generator_command(port, messages, sessions, size, rcpt, reuse):
    kind = generator_kind()
    if kind == "smtp-source":
        cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", rcpt, "-M", "client.test", "-C", "5"]
        if reuse:
            cmd.append("-d")
        cmd.append("127.0.0.1:%d" % port)
    else:
        cmd = [PYTHON, str(BENCH / "smtpload.py"), "source", "-s", str(sessions),
               "-m", str(messages), "-l", str(size), "-f", SENDER, "-t", rcpt,
               "127.0.0.1:%d" % port]
        if reuse:
            cmd.insert(3, "-d")
    return kind, cmd


def wait_child(proc, timeout):
    """Reap `proc` with wait4 so that its own CPU time is known; kill it
    after `timeout` seconds. Returns (monotonic end, CPU seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            end = time.monotonic()
            proc.returncode = os.waitstatus_to_exitcode(status)
            return end, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, ru.ru_utime + ru.ru_stime
        time.sleep(0.005)


class Generator:
    """Sends `messages` messages of `size` payload bytes over `sessions`
    parallel sessions, one message per connection unless reuse; measures
    its wall time and its own CPU."""

    def __init__(self, port, messages, sessions, size, rcpt, reuse=False):
        self.kind, self.cmd = generator_command(port, messages, sessions, size, rcpt, reuse)

    def run(self, timeout=3600):
        with tempfile.TemporaryFile() as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    preexec_fn=lambda: raise_nofile(4096))
            end, cpu = wait_child(proc, timeout)
            wall = (end or time.monotonic()) - t0
            err.seek(0)
            text = err.read().decode(errors="replace")[-2000:]
        return {"generator": self.kind, "wall_s": wall,
                "rc": proc.returncode if end else "timeout", "stderr": text,
                "t0_monotonic": t0, "generator_cpu_s": round(cpu, 3),
                "generator_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0}


class Sink:
    """An SMTP sink that exits after `count` messages: smtp-sink -M, or
    smtpload.py sink."""

    def __init__(self, port, count):
        self.port = port
        self.count = count
        self.kind = sink_kind()
        self.proc = None

    def start(self):
        if self.kind == "smtp-sink":
            cmd = [SMTP_SINK, "-M", str(self.count), "-m", "1000"]
            if is_root():
                cmd += ["-u", "nobody"]
            cmd += ["127.0.0.1:%d" % self.port, "1024"]
        else:
            cmd = [PYTHON, str(BENCH / "smtpload.py"), "sink", "-M", str(self.count),
                   "127.0.0.1:%d" % self.port]
        self.cpu_s = 0.0
        self.stderr = ""
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     preexec_fn=lambda: raise_nofile(4096))
        wait_port(self.port, proc=self.proc, what=self.kind)

    def wait(self, timeout):
        """Monotonic time at which the sink exited with its count, or None."""
        end, self.cpu_s = wait_child(self.proc, timeout)
        self.finish()
        return end

    def stop(self):
        if self.proc is None or self.proc.returncode is not None:
            self.finish()
            return
        self.proc.terminate()
        end, self.cpu_s = wait_child(self.proc, 5)
        self.finish()

    def finish(self):
        if self.proc.stderr and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read().decode(errors="replace")[-1000:]
            self.proc.stderr.close()


def wait_port(port, timeout=20, proc=None, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with status %s before listening on %d"
                               % (what, proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(5)
                s.recv(512)  # the banner, so that it is really serving
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on port %d within %ds" % (what, port, timeout))


def wait_ready(metrics_port, timeout=60, proc=None, what="server"):
    """Until GET /readyz answers 200: the spool recovered, every port
    listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with status %s before it was ready"
                               % (what, proc.returncode))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % metrics_port,
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("%s not ready within %ds" % (what, timeout))


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------
# Servers

class Facteur:
    name = "facteur"

    def __init__(self, tag, route_port=PORT_CLOSED, extra=None, metrics_port=PORT_METRICS,
                 shared=False):
        """`shared`: the SMTP port is shared with other instances
        (reuse_port = yes), so it may be taken already and is not proof
        that this one serves: its /readyz is."""
        self.dir = WORK / ("facteur-" + tag)
        self.route_port = route_port
        self.extra = dict(extra or {})
        self.proc = None
        self.port = PORT_FACTEUR
        self.metrics_port = metrics_port
        self.shared = shared

    @property
    def maildir_new(self):
        return self.dir / "mail" / LOCAL_DOMAIN / "user" / "new"

    def config(self):
        c = {
            "hostname": HOSTNAME,
            "listen": "127.0.0.1:%d" % self.port,
            "metrics_listen": "127.0.0.1:%d" % self.metrics_port,
            "spool_dir": str(self.dir / "spool"),
            "mailbox_path": str(self.dir / "mail" / "%d" / "%u"),
            "local_domains": LOCAL_DOMAIN,
            "route": "* [127.0.0.1]:%d tls=none" % self.route_port,
            "relay_networks": "127.0.0.0/8",
            "log_level": "warn",
            "max_connections": "20000",
            "max_connections_per_ip": "20000",
            "max_message_size": "60M",
            # No retry during a run: a deferred message waits past its end.
            "retry_min": "1h",
            "retry_max": "1h",
            "dns_servers": "127.0.0.1:%d" % PORT_CLOSED,
        }
        if is_root():
            c["user"] = "root"
        c.update(self.extra)
        return c

    def start(self):
        if not FACTEURD.exists():
            raise SystemExit("facteurd not found at %s: build it (bench/run.sh does) "
                             "or set FACTEURD" % FACTEURD)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "spool").mkdir(parents=True)
        (self.dir / "mail").mkdir()
        conf = self.dir / "facteur.conf"
        conf.write_text("".join("%s = %s\n" % kv for kv in self.config().items()))
        for p in ([] if self.shared else [self.port]) + [self.metrics_port]:
            if not port_free(p):
                raise RuntimeError("port %d is busy: a server left running?" % p)
        self.log = open(self.dir / "facteurd.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTEUR_")}
        # For experiments: a library preloaded into facteurd alone (say, one
        # that sets a socket option), to measure a change before making it.
        if env_str("BENCH_FACTEURD_PRELOAD", ""):
            env["LD_PRELOAD"] = os.environ["BENCH_FACTEURD_PRELOAD"]
        self.proc = subprocess.Popen([str(FACTEURD), "-c", str(conf)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=str(self.dir),
                                     preexec_fn=lambda: raise_nofile(30000))
        if self.shared:
            wait_ready(self.metrics_port, proc=self.proc, what="facteurd")
        else:
            wait_port(self.port, proc=self.proc, what="facteurd")
        self.pid = self.proc.pid
        return self

    def pids(self):
        return [self.pid]

    def metrics(self):
        """The /metrics text as {name{labels}: float}."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
        return out

    def accepted(self):
        return int(self.metrics().get("facteur_messages_accepted_total", -1))

    def memory(self):
        st = proc_status(self.pid)
        return {"rss_kib": st.get("VmRSS", 0), "hwm_kib": st.get("VmHWM", 0),
                "pss_kib": proc_pss_kib(self.pid), "processes": 1}

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("facteurd did not stop within 15s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.proc = None

    def log_tail(self, n=2000):
        try:
            return (self.dir / "facteurd.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def cleanup(self):
        if env_str("BENCH_KEEP", "0") != "1" and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance: its own config directory, queue and
    mailboxes under WORK, smtpd on a loopback port, master run in the
    foreground as our child (`postfix start-fg`) so that nothing outlives the
    benchmark; stopped with `postfix -c DIR stop`."""

    name = "postfix"

    def __init__(self, tag, relay_port=PORT_CLOSED, process_limit=200, extra=None):
        self.dir = WORK / ("postfix-" + tag)
        self.relay_port = relay_port
        self.process_limit = process_limit
        self.extra = dict(extra or {})
        self.proc = None
        self.port = PORT_POSTFIX
        self.master = None

    @property
    def maildir_new(self):
        return self.dir / "mail" / LOCAL_DOMAIN / "user" / "new"

    def main_cf(self):
        d = self.dir
        c = {
            "compatibility_level": "3.6",
            "config_directory": str(d / "etc"),
            "queue_directory": str(d / "queue"),
            "data_directory": str(d / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "pf." + HOSTNAME,
            "mydomain": HOSTNAME,
            "myorigin": HOSTNAME,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "[127.0.0.1]:%d" % self.relay_port,
            "default_transport": "smtp",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "default_process_limit": str(self.process_limit),
            "smtpd_client_connection_count_limit": "0",
            # NOOP is a "junk" command: past this many Postfix sleeps 1s on
            # each, which would make the lag probe measure a tarpit.
            "smtpd_junk_command_limit": "1000000",
            "virtual_mailbox_domains": LOCAL_DOMAIN,
            "virtual_mailbox_base": str(d / "mail"),
            "virtual_mailbox_maps": "static:%s/user/" % LOCAL_DOMAIN,
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "virtual_minimum_uid": "100",
            "virtual_mailbox_limit": "0",
            "message_size_limit": str(60 * 1024 * 1024),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file_prefixes": str(WORK),
            # Retries wait past the end of a run, as facteur's retry_min.
            "minimal_backoff_time": "3600s",
            "maximal_backoff_time": "3600s",
            "queue_run_delay": "3600s",
        }
        if env_str("BENCH_POSTFIX_LOG", "0") == "1":
            c["maillog_file"] = str(d / "maillog")
        c.update(self.extra)
        return c

    def start(self):
        d = self.dir
        # Postfix's daemons run as the postfix user and must reach their
        # queue through every parent directory.
        for parent in WORK.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise RuntimeError("Postfix cannot reach %s: %s is not searchable by "
                                   "others (set BENCH_WORK elsewhere)" % (WORK, parent))
        if d.exists():
            shutil.rmtree(d)
        for sub in ("etc", "queue", "data", "mail"):
            (d / sub).mkdir(parents=True)
        os.chmod(WORK, 0o755)
        os.chmod(d, 0o755)
        shutil.chown(d / "data", "postfix", "postfix")
        shutil.chown(d / "mail", 65534, 65534)
        (d / "etc" / "main.cf").write_text(
            "".join("%s = %s\n" % kv for kv in self.main_cf().items()))
        (d / "etc" / "master.cf").write_text(
            "127.0.0.1:%d inet n - n - %d smtpd\n" % (self.port, self.process_limit)
            + POSTFIX_SERVICES)
        if not port_free(self.port):
            raise RuntimeError("port %d is busy: a server left running?" % self.port)
        self.log = open(d / "postfix.out", "wb")
        # start-fg keeps master as our descendant: no daemon is left behind
        # if we die, and its children's CPU is accounted to its tree.
        self.proc = subprocess.Popen(["postfix", "-c", str(d / "etc"), "start-fg"],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=lambda: raise_nofile(30000))
        try:
            wait_port(self.port, proc=self.proc, what="postfix")
        except RuntimeError:
            check = subprocess.run(["script", "-qc", "postfix -c %s check" % (d / "etc"),
                                    "/dev/null"], capture_output=True, text=True)
            raise RuntimeError("postfix did not start: %s %s" % (check.stdout, self.log_tail()))
        self.master = self.find_master()
        self.pid = self.master
        return self

    def find_master(self):
        pidfile = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
                if proc_stat(pid):
                    return pid
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.05)
        raise RuntimeError("no Postfix master pid in %s" % pidfile)

    def pids(self):
        return descendants(self.master)

    def process_names(self):
        return {pid: proc_name(pid) for pid in self.pids()}

    def queued(self):
        """Messages in the queue directories (each file of incoming, active,
        deferred, hold is one message)."""
        n = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _dirpath, _dirs, files in os.walk(self.dir / "queue" / sub):
                n += len(files)
        return n

    def accepted(self):
        return self.queued()

    def memory(self, only=None):
        """RSS, peak and PSS summed over the instance's processes (or only
        those named in `only`)."""
        rss = hwm = pss = count = 0
        biggest = 0
        for pid in self.pids():
            name = proc_name(pid)
            if only and name not in only:
                continue
            st = proc_status(pid)
            rss += st.get("VmRSS", 0)
            hwm += st.get("VmHWM", 0)
            biggest = max(biggest, st.get("VmHWM", 0))
            pss += proc_pss_kib(pid)
            count += 1
        return {"rss_kib": rss, "hwm_kib": hwm, "pss_kib": pss, "processes": count,
                "max_process_hwm_kib": biggest}

    def stop(self):
        if self.proc is None:
            return
        subprocess.run(["postfix", "-c", str(self.dir / "etc"), "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log("postfix did not stop within 30s: killing its process group")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # A child that master did not take down (it normally does).
        if self.master and proc_stat(self.master):
            os.kill(self.master, signal.SIGKILL)
        self.log.close()
        self.proc = None

    def log_tail(self, n=2000):
        try:
            return (self.dir / "postfix.out").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def cleanup(self):
        if env_str("BENCH_KEEP", "0") != "1" and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def servers(tag, facteur_kw=None, postfix_kw=None):
    """The server factories of one scenario: facteur always, Postfix when
    installed. Returns ([(name, factory)], note about Postfix)."""
    out = [("facteur", lambda: Facteur(tag, **(facteur_kw or {})))]
    want, why = postfix_wanted()
    if want:
        out.append(("postfix", lambda: Postfix(tag, **(postfix_kw or {}))))
    return out, why


def count_files(path):
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def last_ctime(path):
    """The latest inode change time in a directory (a file's rename into
    new/ sets it), in time.time() terms."""
    latest = 0.0
    with os.scandir(path) as it:
        for e in it:
            try:
                latest = max(latest, e.stat().st_ctime)
            except FileNotFoundError:
                pass
    return latest


def wait_files(path, count, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    n = count_files(path)
    while n < count and time.monotonic() < deadline:
        time.sleep(interval)
        n = count_files(path)
    return n


def median(values):
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def summarize(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return {"median": median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def facteurd_info():
    """Which facteurd was measured: its path, build time and the checkout's
    commit at the time of the run."""
    info = {"path": str(FACTEURD)}
    try:
        info["built"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(FACTEURD.stat().st_mtime))
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT),
                                        capture_output=True, text=True,
                                        timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def write_result(name, data):
    OUT.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    data["scenario"] = name
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    data["params"] = dict(data.get("params", {}), runs=RUNS, generator=generator_kind())
    data["facteurd"] = facteurd_info()
    data["quiet_rule"] = {"load_max": LOAD_MAX, "load_wait_s": LOAD_WAIT, "busy_max": BUSY_MAX}
    path = OUT / (name + ".json")
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    log("wrote", path)
    return path


def leftover_masters():
    """Postfix masters running anywhere (zombies excluded)."""
    found = []
    for pid in all_pids():
        try:
            with open("/proc/%d/stat" % pid) as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index("(") + 1:data.rindex(")")]
        state = data[data.rindex(")") + 2:].split()[0]
        if name == "master" and state != "Z":
            found.append(pid)
    return found


def run_scenario(main):
    """Common entry: make the work directory, run, and always stop servers."""
    WORK.mkdir(parents=True, exist_ok=True)
    started = []

    def track(server):
        started.append(server)
        return server.start()

    def on_signal(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        main(track)
    finally:
        for s in started:
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                log("stopping %s: %s" % (s.name, e))


# --------------------------------------------------------------------------
# Result rows for RESULTS.md

def ratio_row(label, unit, runs, key, target_ratio=None, lower_is_better=False,
              target_text=None, note=""):
    """A summary row: facteur and Postfix medians (min-max) of `key` over
    their runs, and the facteur/Postfix ratio (inverted when lower is
    better, so that > 1 always means facteur is ahead)."""
    f = summarize(runs.get("facteur", []), key)
    p = summarize(runs.get("postfix", []), key)
    ratio = None
    if f and p and f["median"] and p["median"]:
        ratio = (p["median"] / f["median"]) if lower_is_better else (f["median"] / p["median"])
    met = None
    if target_ratio is not None and ratio is not None:
        met = ratio >= target_ratio
    if target_text is None and target_ratio is not None:
        target_text = "facteur/Postfix >= %g" % target_ratio
    return {"label": label, "unit": unit, "facteur": f, "postfix": p,
            "ratio": ratio, "lower_is_better": lower_is_better,
            "target": target_text or "", "met": met, "note": note}


def abs_row(label, unit, runs, key, limit=None, lower_is_better=True, target_text="",
            note="", with_ratio=False):
    """A summary row whose target is an absolute bound on facteur's median
    (the ratio is left out unless asked: a ratio of ratios means little)."""
    row = ratio_row(label, unit, runs, key, lower_is_better=lower_is_better, note=note)
    row["target"] = target_text
    if not with_ratio:
        row["ratio"] = None
    f = row["facteur"]
    if limit is not None and f:
        row["met"] = f["median"] < limit if lower_is_better else f["median"] >= limit
    return row


def interleaved(runs_wanted, server_list):
    """(run index, name, factory) in the order facteur, Postfix, facteur...
    so that a slow drift of the machine touches both alike."""
    for i in range(runs_wanted):
        for name, make in server_list:
            yield i, name, make
