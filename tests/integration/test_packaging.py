"""The Debian package (issue 6, item 6 and 8): built with CPack from the CMake
install rules in a separate build without sanitizers, installed with
`dpkg -i` on this machine, its facteurd run from the installed path (checked
with -n, then started as root: it must drop to the facteur account and
deliver a message), then removed and purged.

The package tests need root and dpkg. They refuse to touch a machine where
facteur is already installed or configured, and they leave nothing behind:
not the package, not a running facteurd, not an account or a mailbox they
created.

Also here: the systemd unit, the postinst's start of the daemon (run from
the source tree with stand-ins for systemctl and its helpers, in a mount
namespace of its own), and the compose example (issue 12, items 2 and 18)."""

import grp
import gzip
import ipaddress
import os
import re
import pwd
import shutil
import signal
import smtplib
import stat
import subprocess
import tempfile
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

needs_root = pytest.mark.skipif(os.geteuid() != 0,
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

@needs_root
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


def installed_mail_transport_agents():
    """Installed packages that provide mail-transport-agent (Postfix, Exim,
    ...): facteur's package conflicts with them, so dpkg -i would fail and
    apt would remove them."""
    r = run(["dpkg-query", "-W", "-f=${Package} ${Status} ${Provides}\n"],
            check=False)
    found = []
    for line in r.stdout.decode(errors="replace").splitlines():
        name, _, rest = line.partition(" ")
        if name != PACKAGE and "install ok installed" in rest and \
                re.search(r"\bmail-transport-agent\b", rest):
            found.append(name)
    return found


@needs_root
def test_install_run_remove_purge(deb, machine, tmp_path):
    source = Path(h.SOURCE_DIR)
    others = installed_mail_transport_agents()
    if others:
        pytest.skip("another mail transport agent is installed (%s): the "
                    "package conflicts with it, and this test does not "
                    "remove someone else's MTA" % ", ".join(others))

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

    banner = h.smtp_answers(proc, port, "installed facteurd", log_text)

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


# --------------------------------------------------------------------------
# issue 12, items 16 and 18: what the package declares and ships

def package_listing(deb):
    """{path: symlink target or None} of the package's files."""
    listing = run(["dpkg-deb", "--contents", deb]).stdout.decode()
    entries = {}
    for line in listing.splitlines():
        if not line.strip():
            continue
        name = line.split(None, 5)[5]
        target = None
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        entries[name.lstrip(".")] = target
    return entries


@needs_root
def test_package_is_the_system_mta(deb):
    fields = run(["dpkg-deb", "--field", deb, "Provides", "Conflicts",
                  "Replaces"]).stdout.decode()
    values = dict(line.split(": ", 1) for line in fields.splitlines())
    for field in ("Provides", "Conflicts", "Replaces"):
        names = [v.strip() for v in values.get(field, "").split(",")]
        assert "mail-transport-agent" in names, (field, fields)
    # What programs submit through, once it is the only MTA.
    files = package_listing(deb)
    assert files.get("/usr/sbin/sendmail") == "facteur-sendmail", files
    assert files.get("/usr/lib/sendmail") == "../sbin/sendmail", files
    # sendmail's other modes, by the name it is called
    assert files.get("/usr/bin/mailq") == "../sbin/facteur-sendmail", files
    assert files.get("/usr/bin/newaliases") == "../sbin/facteur-sendmail", files


@needs_root
def test_package_ships_release_notes_and_licence(deb):
    source = Path(h.SOURCE_DIR)
    files = package_listing(deb)
    assert "/usr/share/doc/facteur/changelog.gz" in files, sorted(files)
    with tempfile.TemporaryDirectory() as tmp:
        run(["dpkg-deb", "-x", deb, tmp])
        doc = Path(tmp) / "usr/share/doc/facteur"
        with gzip.open(doc / "changelog.gz") as f:
            assert f.read() == (source / "NEWS").read_bytes()
        assert (doc / "copyright").read_bytes() == \
            (source / "LICENSE").read_bytes()


@needs_root
def test_package_build_does_not_treat_warnings_as_errors(deb):
    """The package is built as an operator would (no FACTEUR_WERROR): a
    newer compiler's new warning must not break it."""
    build = deb.parent
    flags = (build / "CMakeFiles/facteur_core.dir/flags.make").read_text()
    assert "-Wall" in flags, flags
    assert "-Werror" not in flags, flags


# --------------------------------------------------------------------------
# issue 12, item 18: the unit and the postinst do not hide a failed start

def unit_settings(path):
    settings = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_does_not_restart_on_a_port_it_cannot_bind():
    unit = unit_settings(Path(h.SOURCE_DIR) / "packaging" / "facteurd.service")
    prevented = " ".join(unit.get("RestartPreventExitStatus", [])).split()
    assert "69" in prevented, unit      # EX_UNAVAILABLE: a port taken
    assert "78" in prevented, unit      # EX_CONFIG


def test_unit_is_type_notify_and_reloads_with_facteurctl():
    """READY=1 makes "systemctl start" wait for a recovered spool; the
    reload goes through facteurctl, which fails on a refused
    configuration, where kill -HUP would always succeed."""
    unit = unit_settings(Path(h.SOURCE_DIR) / "packaging" / "facteurd.service")
    assert unit["Type"] == ["notify"], unit
    assert unit["NotifyAccess"] == ["main"], unit
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split(), unit
    reload = unit["ExecReload"][0].split()
    start = unit["ExecStart"][0].split()
    # The same configuration as the daemon, and facteurctl where the
    # package installs it (beside facteurd, CMake's sbin).
    assert reload == [str(Path(start[0]).parent / "facteurctl"),
                      "-c", start[start.index("-c") + 1], "reload"], reload
    cmake = (Path(h.SOURCE_DIR) / "CMakeLists.txt").read_text()
    assert re.search(r"install\(TARGETS facteurd facteurctl .*DESTINATION sbin\)",
                     cmake), "facteurctl is not installed beside facteurd"


def test_template_unit_in_the_docs_addresses_each_instance_by_its_file(tmp_path):
    """docs/operations.md's facteurd@.service: one configuration per
    instance, reloaded through facteurctl on that same file, Type=notify
    like the packaged unit."""
    text = (Path(h.SOURCE_DIR) / "docs" / "operations.md").read_text()
    m = re.search(r"```ini\n# /etc/systemd/system/facteurd@\.service\n(.*?)```", text, re.S)
    assert m, "no facteurd@.service in docs/operations.md"
    path = tmp_path / "facteurd@.service"
    path.write_text(m.group(1))
    unit = unit_settings(path)
    assert unit["Type"] == ["notify"], unit
    assert unit["ExecStart"] == ["/usr/sbin/facteurd -c /etc/facteur/%i.conf"], unit
    assert unit["ExecReload"] == ["/usr/sbin/facteurctl -c /etc/facteur/%i.conf reload"], unit
    prevented = " ".join(unit.get("RestartPreventExitStatus", [])).split()
    assert "69" in prevented and "78" in prevented, unit
    packaged = unit_settings(Path(h.SOURCE_DIR) / "packaging" / "facteurd.service")
    for key in ("NotifyAccess", "TimeoutStartSec", "User", "LimitNOFILE"):
        assert unit[key] == packaged[key], key
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", str(path).replace("@", "@a")],
                           capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        assert "Unknown key" not in r.stderr and "Invalid" not in r.stderr, r.stderr


# The n-th "systemctl is-active" answers the n-th status of {active} (the
# last one repeats): the daemon may be running before a restart and not
# after it.
STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> {calls}
case "$(basename "$0") $*" in
"systemctl "*is-active*)
    n=$(grep -c "^systemctl .*is-active" {calls})
    set -- {active}
    while [ "$n" -gt 1 ] && [ $# -gt 1 ]; do shift; n=$((n - 1)); done
    exit "$1" ;;
"systemctl show"*) echo {status} ;;
"deb-systemd-invoke "*) exit {invoke} ;;
"policy-rc.d "*) exit {policy} ;;
esac
exit 0
"""


def run_postinst(tmp_path, args, active, status=69, policy=0, invoke=0):
    """Run packaging/debian/postinst as dpkg would, in a mount namespace
    where systemd seems to run (/run/systemd/system) and systemctl,
    deb-systemd-invoke, deb-systemd-helper, policy-rc.d, the account tools
    and sleep are stand-ins that log their calls. `active`: the exit status
    of each "systemctl is-active" in turn (0 running, 3 not), a string
    such as "0 3". `invoke`: the exit status of deb-systemd-invoke (the
    unit is Type=notify: a start fails when the daemon exits before
    READY=1)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    for name in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper",
                 "policy-rc.d", "getent", "adduser", "addgroup", "install",
                 "sleep"):
        tool = fake / name
        tool.write_text(STAND_IN.format(calls=calls, active=active,
                                        status=status, policy=policy,
                                        invoke=invoke))
        tool.chmod(0o755)
    postinst = Path(h.SOURCE_DIR) / "packaging" / "debian" / "postinst"
    # Absolute paths the script tests are covered by the stand-ins too;
    # the namespace's mounts vanish with it.
    script = """set -e
mount -t tmpfs tmpfs /run/systemd 2>/dev/null || mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
for p in /usr/bin/deb-systemd-helper /usr/sbin/policy-rc.d; do
    [ -e "$p" ] || continue
    mount --bind "$FAKE/$(basename "$p")" "$p"
done
exec sh "$POSTINST" "$@"
"""
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         "postinst"] + list(args),
        env=h.clean_env({"PATH": "%s:%s" % (fake, os.environ["PATH"]),
                         "FAKE": str(fake), "POSTINST": str(postinst)}),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0 and b"unshare failed" in r.stderr:
        pytest.skip("no mount namespace here: %s" % r.stderr.decode())
    return r, calls.read_text()


@needs_root
def test_postinst_fails_when_the_daemon_does_not_start(tmp_path):
    r, calls = run_postinst(tmp_path, ["configure", ""], active=3, invoke=1)
    assert "deb-systemd-invoke start facteurd.service" in calls, calls
    err = r.stderr.decode()
    assert r.returncode != 0, (calls, err)
    assert "facteurd.service did not start" in err, err
    assert "exit status 69" in err, err
    assert "journalctl -u facteurd.service" in err, err


@needs_root
def test_postinst_succeeds_when_the_daemon_runs(tmp_path):
    r, calls = run_postinst(tmp_path, ["configure", ""], active=0)
    assert "deb-systemd-invoke start facteurd.service" in calls, calls
    assert r.returncode == 0, (calls, r.stderr.decode())
    assert r.stderr == b"", r.stderr
    # Type=notify: the start itself says whether the daemon came up; no
    # waiting and looking again.
    assert "sleep" not in calls and "is-active" not in calls, calls


@needs_root
def test_postinst_upgrade_fails_when_the_restarted_daemon_is_gone(tmp_path):
    """On upgrade a running daemon is restarted on the new binary; if that
    one does not come up, dpkg hears of it."""
    r, calls = run_postinst(tmp_path, ["configure", "0.0.9"], active="0 3",
                            invoke=1)
    assert "deb-systemd-invoke try-restart facteurd.service" in calls, calls
    assert r.returncode != 0, (calls, r.stderr.decode())
    assert "did not start" in r.stderr.decode()


@needs_root
def test_postinst_upgrade_leaves_a_stopped_daemon_alone(tmp_path):
    """A daemon the operator had stopped is not restarted (try-restart)
    and its absence is no failure."""
    r, calls = run_postinst(tmp_path, ["configure", "0.0.9"], active=3)
    assert "deb-systemd-invoke try-restart facteurd.service" in calls, calls
    assert r.returncode == 0, (calls, r.stderr.decode())


@needs_root
def test_postinst_respects_a_policy_that_forbids_starting(tmp_path):
    """Where policy-rc.d forbids starting services (image builds), nothing
    starts, and that is not a failure."""
    r, calls = run_postinst(tmp_path, ["configure", ""], active=3, policy=101)
    assert r.returncode == 0, (calls, r.stderr.decode())


# --------------------------------------------------------------------------
# issue 12, item 2: the compose example is not an open relay

COMPOSE = Path(h.SOURCE_DIR) / "packaging" / "compose.yaml"
# The ranges Docker takes its bridge networks from by default: behind its
# userland proxy, every outside client appears from one of these.
DOCKER_DEFAULT_POOLS = [ipaddress.ip_network("172.16.0.0/12"),
                        ipaddress.ip_network("192.168.0.0/16")]


def compose_file():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value):
    """Compose's ${VAR:-default} and ${VAR-default}, with VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}",
                  lambda m: m.group(1) or "", str(value))


def compose_services():
    services = compose_file()["services"]
    assert services, COMPOSE
    return services


def service_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: interpolate(v) for k, v in env.items()}


def declared_subnets(compose):
    """{subnet: gateway} of the networks the file declares."""
    subnets = {}
    for net in (compose.get("networks") or {}).values():
        for cfg in ((net or {}).get("ipam") or {}).get("config") or []:
            gateway = cfg.get("gateway")
            subnets[ipaddress.ip_network(cfg["subnet"])] = (
                ipaddress.ip_address(gateway) if gateway else None)
    return subnets


def test_compose_relay_networks_are_loopback_or_a_narrow_declared_network():
    compose = compose_file()
    subnets = declared_subnets(compose)
    for name, service in compose_services().items():
        env = service_env(service)
        if "FACTEUR_RELAY_NETWORKS" not in env:
            continue
        for entry in env["FACTEUR_RELAY_NETWORKS"].split(","):
            net = ipaddress.ip_network(entry.strip(), strict=False)
            if net.is_loopback:
                continue
            for pool in DOCKER_DEFAULT_POOLS:
                assert not net.overlaps(pool), (
                    "%s: relay_networks trusts %s, inside Docker's bridge "
                    "pool %s: an open relay behind the userland proxy"
                    % (name, net, pool))
            # Only a network this file makes, and without its gateway
            # (the host, and the userland proxy's address on it).
            inside = [s for s in subnets if net.version == s.version
                      and net.subnet_of(s)]
            assert inside, ("%s: relay_networks trusts %s, which no network "
                            "of the file declares" % (name, net))
            for s in inside:
                gateway = subnets[s]
                assert gateway is None or gateway not in net, (
                    "%s: relay_networks %s holds the gateway %s"
                    % (name, net, gateway))
            assert net.prefixlen >= (24 if net.version == 4 else 64), (
                "%s: relay_networks trusts the broad range %s" % (name, net))


def published(service):
    """[(host address or None, host port, container port)]."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published")),
                        str(port.get("target"))))
            continue
        text = interpolate(port).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0].strip("[]"), parts[1], parts[2]))
        elif len(parts) == 2:
            out.append((None, parts[0], parts[1]))
        else:
            out.append((None, None, parts[0]))
    return out


def test_compose_publishes_ports_on_a_chosen_address_only():
    for name, service in compose_services().items():
        for host, host_port, target in published(service):
            assert host, ("%s: port %s is published on every interface"
                          % (name, target))
            assert not ipaddress.ip_address(host).is_unspecified, (
                "%s: port %s is published on %s" % (name, target, host))


def test_compose_metrics_are_not_open_to_every_container():
    for name, service in compose_services().items():
        env = service_env(service)
        listen = env.get("FACTEUR_METRICS_LISTEN")
        if not listen:
            continue
        host, _, port = listen.rpartition(":")
        host = ipaddress.ip_address(host.strip("[]"))
        assert not host.is_unspecified, (
            "%s: metrics on %s, reachable from every container of its "
            "networks" % (name, listen))
        for pub_host, _, target in published(service):
            assert target != port or ipaddress.ip_address(pub_host).is_loopback, (
                "%s: the metrics port is published on %s" % (name, pub_host))


def test_compose_environment_is_a_valid_configuration(tmp_path):
    """facteurd -n accepts the example's settings as they are (secrets
    replaced by files of the same kind)."""
    import tls_harness as t

    cert, key = t.make_cert(tmp_path)
    secrets = {
        "/run/secrets/cert": cert,
        "/run/secrets/key": key,
        "/run/secrets/users": tmp_path / "users",
        "/run/secrets/smarthost": tmp_path / "smarthost",
    }
    (tmp_path / "users").write_text("scanner@relay.example.org:%s\n"
                                    % h.SECRET_HASH)
    (tmp_path / "smarthost").write_text("relay@example.org:the-password\n")
    (tmp_path / "smarthost").chmod(0o600)
    for name, service in compose_services().items():
        if "facteur" not in str(service.get("image", "")):
            continue
        env = service_env(service)
        for k, v in env.items():
            for path, local in secrets.items():
                v = v.replace(path, str(local))
            env[k] = v
        env["FACTEUR_SPOOL_DIR"] = str(tmp_path / "spool")
        r = h.run_facteurd(["-n"], env=env)
        assert r.returncode == 0, (name, r.stderr.decode())
        settings = r.stdout.decode()
        assert "relay_networks = " in settings, settings
