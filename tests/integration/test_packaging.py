"""The Debian package (issue 6, item 6 and 8): built with CPack from the CMake
install rules in a separate build without sanitizers, installed with
`dpkg -i` on this machine, its facteurd run from the installed path (checked
with -n, then started as root: it must drop to the facteur account and
deliver a message), then removed and purged.

Needs root and dpkg. It refuses to touch a machine where facteur is already
installed or configured, and it leaves nothing behind: not the package, not
a running facteurd, not an account or a mailbox it created."""

import grp
import gzip
import os
import pwd
import shutil
import signal
import smtplib
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import facteur_harness as h

PACKAGE = "facteur"
PROGRAMS = ("facteurd", "facteurctl", "facteur-sendmail")
MAN_PAGES = ("man8/facteurd.8.gz", "man8/facteurctl.8.gz",
             "man8/facteur-sendmail.8.gz", "man5/facteur.conf.5.gz")
CONF = Path("/etc/facteur/facteur.conf")
UNIT = Path("/lib/systemd/system/facteurd.service")
SPOOL = Path("/var/spool/facteur")
MAIL_ROOT = Path("/var/mail")
WANTS_LINK = Path("/etc/systemd/system/multi-user.target.wants/facteurd.service")

BUILD_TIMEOUT = 900
DPKG_TIMEOUT = 300

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="installing a .deb with dpkg -i needs root")


def run(args, timeout=DPKG_TIMEOUT, check=True, **kw):
    """Run a command with a clean environment (no FACTEUR_* from the test
    harness); on failure show its output."""
    env = kw.pop("env", None)
    r = subprocess.run([str(a) for a in args], env=h.clean_env(env),
                       stdin=kw.pop("stdin", subprocess.DEVNULL),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s exited with %d\n--- stdout:\n%s\n--- stderr:\n%s"
                             % (" ".join(map(str, args)), r.returncode,
                                r.stdout.decode(errors="replace")[-4000:],
                                r.stderr.decode(errors="replace")[-4000:]))
    return r


def package_status():
    r = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
    return r.stdout.decode() if r.returncode == 0 else ""


def account_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def refuse_to_touch_this_machine():
    """A reason not to run here, or None."""
    if shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None:
        return "dpkg is not available"
    status = package_status()
    if status and "not-installed" not in status:
        return "a facteur package is already on this machine (%s)" % status
    if CONF.exists():
        return "%s exists: it belongs to someone else's installation" % CONF
    if SPOOL.exists() and any(SPOOL.iterdir()):
        return "%s holds a spool that a purge would delete" % SPOOL
    return None


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """Build the package: a fresh build directory without sanitizers, the
    same commands as the Dockerfile's build stage, then cpack."""
    reason = refuse_to_touch_this_machine()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("pkg") / "build"
    run(["cmake", "-S", h.SOURCE_DIR, "-B", build,
         "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DFACTEUR_TESTS=OFF",
         "-DFACTEUR_SANITIZE=OFF"], timeout=BUILD_TIMEOUT)
    run(["cmake", "--build", build, "-j2"], timeout=BUILD_TIMEOUT)
    run(["cpack", "-G", "DEB"], timeout=BUILD_TIMEOUT, cwd=str(build))
    debs = sorted(build.glob("facteur_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


class Machine:
    """What the test changed on the machine, to undo it whatever happens."""

    def __init__(self):
        self.had_account = account_exists("facteur")
        self.had_group = group_exists("facteur")
        self.had_mail_localhost = (MAIL_ROOT / "localhost").exists()
        self.mailboxes = []
        self.procs = []

    def restore(self):
        problems = []
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
                problems.append("an installed facteurd was still running (killed)")
        if package_status() and "not-installed" not in package_status():
            r = run(["dpkg", "--purge", PACKAGE], check=False)
            if r.returncode != 0:
                problems.append("dpkg --purge failed: %s" % r.stderr.decode())
        for box in self.mailboxes:
            shutil.rmtree(box, ignore_errors=True)
        if not self.had_mail_localhost:
            shutil.rmtree(MAIL_ROOT / "localhost", ignore_errors=True)
        if not self.had_account and account_exists("facteur"):
            run(["userdel", "facteur"], check=False)
        if not self.had_group and group_exists("facteur"):
            run(["groupdel", "facteur"], check=False)
        return problems


@pytest.fixture
def machine():
    m = Machine()
    yield m
    problems = m.restore()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def proc_uid(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line for pid %d" % pid)


# --------------------------------------------------------------------------

def test_package_metadata_and_contents(deb):
    info = run(["dpkg-deb", "--field", deb, "Package", "Version", "Depends",
                "Section"]).stdout.decode()
    assert "Package: facteur" in info, info
    assert "Section: mail" in info, info
    depends = [l for l in info.splitlines() if l.startswith("Depends:")]
    assert depends, info
    for lib in ("adduser", "libevent-core-2.1-7", "libssl3", "libc-ares2",
                "libcrypt1"):
        assert lib in depends[0], (lib, depends[0])

    listing = run(["dpkg-deb", "--contents", deb]).stdout.decode()
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()
             if line.strip()}
    for prog in PROGRAMS:
        assert "/usr/sbin/" + prog in paths, sorted(paths)
    for page in MAN_PAGES:
        assert "/usr/share/man/" + page in paths, sorted(paths)
    assert str(CONF) in paths
    assert str(UNIT) in paths
    # Nothing from the checkout's quick-start configuration or build tree.
    assert not any("var/spool" in p or "/build" in p for p in paths), sorted(paths)

    control = run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.decode()
    assert control.split() == [str(CONF)], control
    for script in ("postinst", "prerm", "postrm"):
        text = run(["dpkg-deb", "--info", deb, script]).stdout.decode()
        assert text.startswith("#!/bin/sh"), (script, text[:80])


def test_install_run_remove_purge(deb, machine, tmp_path):
    source = Path(h.SOURCE_DIR)

    # ---- install
    run(["dpkg", "-i", deb])
    assert "install ok installed" in package_status()

    for prog in PROGRAMS:
        mode = os.stat("/usr/sbin/" + prog).st_mode
        assert mode & stat.S_IXUSR, prog
    assert CONF.read_text() == (source / "packaging" / "facteur.conf").read_text()
    assert UNIT.read_text() == (source / "packaging" / "facteurd.service").read_text()
    for page in MAN_PAGES:
        with gzip.open("/usr/share/man/" + page) as f:
            text = f.read().decode()
        assert text.startswith(".Dd "), page
        assert ".Sh NAME" in text, page
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout.decode()
    assert str(CONF) in conffiles, conffiles

    # the account and the spool made by postinst
    pw = pwd.getpwnam("facteur")
    assert pw.pw_shell in ("/usr/sbin/nologin", "/bin/false"), pw
    assert "facteur" in grp.getgrnam("mail").gr_mem
    st = SPOOL.stat()
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == pw.pw_uid, (st.st_uid, pw.pw_uid)
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)

    # ---- the installed programs
    version = run(["/usr/sbin/facteurd", "-V"]).stdout.decode()
    assert version.startswith("facteurd "), version
    check = run(["/usr/sbin/facteurd", "-n", "-c", CONF])
    settings = dict(line.split(" = ", 1) for line in
                    check.stdout.decode().splitlines() if " = " in line)
    assert settings["listen"] == "127.0.0.1:25", settings
    assert settings["spool_dir"] == "/var/spool/facteur", settings
    assert settings["mailbox_path"] == "/var/mail/%d/%u", settings
    assert settings["user"] == "facteur", settings
    # With no -c, the installed file is the one read.
    default = run(["/usr/sbin/facteurd", "-n"]).stdout.decode()
    assert "spool_dir = /var/spool/facteur" in default
    hashed = run(["/usr/sbin/facteurctl", "passwd"], stdin=None,
                 input=b"secret\n").stdout.decode()
    assert hashed.startswith("$6$"), hashed

    if shutil.which("systemd-analyze"):
        r = run(["systemd-analyze", "verify", UNIT], check=False)
        out = (r.stdout + r.stderr).decode()
        assert "Unknown key" not in out and "Invalid" not in out, out

    # ---- run it from the installed path, as root, on the installed
    # configuration (only the port moved): it drops to facteur, takes a
    # message and delivers it under /var/mail.
    port = h.free_port()
    user = "pkgtest%s" % uuid.uuid4().hex[:10]
    machine.mailboxes.append(MAIL_ROOT / "localhost" / user)
    log = open(tmp_path / "facteurd.log", "wb")
    proc = subprocess.Popen(
        ["/usr/sbin/facteurd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        env=h.clean_env({"FACTEUR_LISTEN": "127.0.0.1:%d" % port,
                         "FACTEUR_DNS_SERVERS": "127.0.0.1:9"}),
        cwd="/")
    machine.procs.append(proc)

    def log_text():
        return (tmp_path / "facteurd.log").read_text(errors="replace")

    def banner():
        if proc.poll() is not None:
            raise AssertionError("installed facteurd exited with %s:\n%s"
                                 % (proc.returncode, log_text()))
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.noop()
                return True
        except OSError:
            return False

    try:
        h.wait_for(banner, h.START_TIMEOUT, what="the installed facteurd's banner")
        uids = proc_uid(proc.pid)
        assert set(uids) == {pw.pw_uid}, (uids, log_text())
        assert "privileges_dropped" in log_text()

        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("sender@example.org", ["%s@localhost" % user],
                       h.make_message("packaged", to="%s@localhost" % user))
        box = MAIL_ROOT / "localhost" / user / "new"
        files = h.wait_for(lambda: list(box.glob("*")) if box.is_dir() else None,
                           h.IO_TIMEOUT, what="the message in %s\n%s" % (box, log_text()))
        assert files[0].stat().st_uid == pw.pw_uid
        assert b"Subject: packaged" in files[0].read_bytes()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()

    # ---- remove: the programs go, the configuration and spool stay
    run(["dpkg", "-r", PACKAGE])
    for prog in PROGRAMS:
        assert not os.path.exists("/usr/sbin/" + prog), prog
    assert not UNIT.exists()
    assert CONF.exists(), "dpkg -r must keep the conffile"
    assert SPOOL.is_dir()
    assert "config-files" in package_status()

    # ---- purge: nothing of the package is left
    run(["dpkg", "-P", PACKAGE])
    status = package_status()
    assert status == "" or "not-installed" in status, status
    assert not CONF.exists()
    assert not CONF.parent.exists()
    assert not SPOOL.exists()
    assert not WANTS_LINK.exists() and not WANTS_LINK.is_symlink()
