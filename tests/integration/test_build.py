"""How facteur is built (issue 12, items 16 and 19): warnings are errors only
where a developer or CI asks for it (FACTEUR_WERROR), the DNS module builds
cleanly against every c-ares at hand, the image's build stage has every file
CMake needs, and scripts/run.sh installs only what running needs and never
runs a sanitizer build, even in a build directory scripts/test.sh made.

These build in temporary directories: the checkout's build/ is never
touched."""

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import facteur_harness as h

SOURCE = Path(h.SOURCE_DIR)
BUILD_TIMEOUT = 900
# The project's warning flags, as CMakeLists.txt gives them.
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes",
            "-Wmissing-prototypes", "-Wformat=2", "-Wno-format-nonliteral"]


def run(args, timeout=BUILD_TIMEOUT, check=True, **kw):
    env = h.clean_env(kw.pop("env", None))
    r = subprocess.run([str(a) for a in args], env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s exited with %d\n--- stdout:\n%s\n--- stderr:\n%s"
                             % (" ".join(map(str, args)), r.returncode,
                                r.stdout.decode(errors="replace")[-4000:],
                                r.stderr.decode(errors="replace")[-4000:]))
    return r


def core_flags(build):
    return (Path(build) / "CMakeFiles/facteur_core.dir/flags.make").read_text()


def cache_value(build, key):
    for line in (Path(build) / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------
# item 16: -Werror is a developer's option

def test_werror_only_when_asked(tmp_path):
    build = tmp_path / "build"
    run(["cmake", "-S", SOURCE, "-B", build, "-DFACTEUR_TESTS=OFF"])
    flags = core_flags(build)
    assert "-Wall" in flags, flags
    assert "-Werror" not in flags, flags
    run(["cmake", "-S", SOURCE, "-B", build, "-DFACTEUR_WERROR=ON"])
    assert "-Werror" in core_flags(build)


def cmake_lines(script):
    """The cmake configure commands of a shell script, continuation lines
    joined."""
    text = Path(script).read_text().replace("\\\n", " ")
    return [l for l in text.splitlines() if re.search(r"\bcmake -S\b", l)]


def test_test_script_builds_with_werror():
    lines = cmake_lines(SOURCE / "scripts" / "test.sh")
    assert len(lines) >= 2, lines       # the test build and the fuzz build
    for line in lines:
        assert "-DFACTEUR_WERROR=ON" in line, line


def cares_include_dirs():
    """The installed c-ares's headers, and those of any other c-ares named
    in FACTEUR_EXTRA_CARES (install prefixes separated by colons), to check
    the DNS module against a newer c-ares than the system's."""
    cflags = run(["pkg-config", "--cflags", "libcares"]).stdout.decode().split()
    dirs = [("system", cflags)]
    for prefix in filter(None, os.environ.get("FACTEUR_EXTRA_CARES", "").split(":")):
        dirs.append((prefix, ["-I" + str(Path(prefix) / "include")]))
    return dirs


def test_dns_module_builds_cleanly_against_each_cares():
    """No deprecated c-ares call, whichever version the headers are: with
    c-ares 1.28 or later, ares_query and ares_set_servers_ports are
    deprecated."""
    for name, flags in cares_include_dirs():
        r = subprocess.run(
            [os.environ.get("CC", "cc"), "-std=c11", "-D_GNU_SOURCE",
             '-DFACTEUR_VERSION="test"', "-I", str(SOURCE / "include")]
            + WARNINGS + ["-Werror", "-fsyntax-only"] + flags
            + [str(f) for f in sorted((SOURCE / "src").glob("dns*.c"))],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=120)
        assert r.returncode == 0, "%s c-ares:\n%s" % (name, r.stderr.decode())


# --------------------------------------------------------------------------
# item 16: the image's build stage

def dockerfile_build_stage():
    """The COPY sources and the cmake configure line of the Dockerfile's
    build stage."""
    text = (SOURCE / "packaging" / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("FROM ", 2)[1]
    copies = []
    configure = None
    for line in stage.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            copies.extend(w.rstrip("/") for w in words[1:-1])
        if words[:1] == ["RUN"] and "cmake -S" in line:
            configure = line[line.index("cmake -S"):].split("&&")[0]
    return copies, configure


def test_image_build_stage_has_what_cmake_needs(tmp_path):
    """Configure and build the programs, man pages and release notes from
    exactly what the Dockerfile copies, with its cmake options: a file the
    build needs and the image leaves out breaks this, as it would break
    docker build. No -Werror there."""
    copies, configure = dockerfile_build_stage()
    assert copies and configure, (copies, configure)
    ignore = (SOURCE / "packaging" / "Dockerfile.dockerignore").read_text()
    context = tmp_path / "src"
    context.mkdir()
    for path in copies:
        # The context lets through only what the ignore file re-includes.
        assert re.search(r"^!%s/?$" % re.escape(path), ignore, re.M), (
            "%s is copied but excluded from the build context" % path)
        src = SOURCE / path
        if src.is_dir():
            shutil.copytree(src, context / path,
                            ignore=shutil.ignore_patterns("*.secret"))
        else:
            shutil.copy2(src, context / path)
    args = shlex.split(configure)
    assert args[:2] == ["cmake", "-S"], args
    build = context / "build"
    run(args, cwd=str(context))
    assert "-Werror" not in core_flags(build)
    run(["cmake", "--build", build, "-j2"])
    for prog in ("facteurd", "facteurctl", "facteur-sendmail"):
        assert (build / prog).exists(), prog


# --------------------------------------------------------------------------
# item 19: scripts/run.sh

def deps(*args):
    out = run([SOURCE / "scripts" / "install-deps.sh", "--list"] + list(args))
    return out.stdout.decode().split()


def test_run_dependencies_leave_out_the_test_tools():
    running = deps("--run")
    for needed in ("cmake", "pkg-config", "libevent-dev", "libssl-dev",
                   "libc-ares-dev", "libcrypt-dev"):
        assert needed in running, running
    for tool in ("libcmocka-dev", "clang", "swaks", "dnsmasq-base",
                 "python3-pytest", "fetchmail", "dpkg-dev"):
        assert tool not in running, running
    everything = deps()
    assert set(running) < set(everything), (running, everything)
    assert {"libcmocka-dev", "clang", "python3-pytest"} <= set(everything)


def source_copy(tmp_path):
    """The checkout's tracked sources, without its build directories."""
    copy = tmp_path / "facteur"
    copy.mkdir()
    for name in ("CMakeLists.txt", "NEWS", "README.md", "LICENSE", "cmake",
                 "conf", "docs", "include", "packaging", "scripts", "src",
                 "tests"):
        src = SOURCE / name
        if src.is_dir():
            shutil.copytree(src, copy / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, copy / name)
    return copy


def needed_libraries(program):
    out = run(["readelf", "-d", program]).stdout.decode()
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_run_script_rebuilds_a_sanitizer_build(tmp_path):
    """build/ configured as scripts/test.sh leaves it (sanitizers, tests,
    -Werror): scripts/run.sh reconfigures it and the daemon it starts has
    no sanitizer in it."""
    copy = source_copy(tmp_path)
    build = copy / "build"
    run(["cmake", "-S", copy, "-B", build, "-DFACTEUR_SANITIZE=ON",
         "-DFACTEUR_TESTS=ON", "-DFACTEUR_WERROR=ON", "-DCMAKE_BUILD_TYPE=Debug"])
    assert cache_value(build, "FACTEUR_SANITIZE") == "ON"

    port = h.free_port()
    log = open(tmp_path / "run.log", "wb")
    env = h.clean_env({"FACTEUR_LISTEN": "127.0.0.1:%d" % port,
                       "FACTEUR_SPOOL_DIR": str(tmp_path / "spool"),
                       "FACTEUR_MAILBOX_PATH": str(tmp_path / "mail") + "/%d/%u",
                       "FACTEUR_DNS_SERVERS": "127.0.0.1:9"})
    if os.geteuid() == 0:
        env["FACTEUR_USER"] = "root"
    proc = subprocess.Popen([str(copy / "scripts" / "run.sh")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=env, cwd=str(tmp_path), start_new_session=True)
    h._ALL_PROCS.append(proc)

    def log_text():
        return (tmp_path / "run.log").read_text(errors="replace")[-4000:]

    banner = h.smtp_answers(proc, port, "run.sh", log_text)

    try:
        h.wait_for(banner, BUILD_TIMEOUT, interval=1,
                   what="the quick start's daemon\n" + log_text())
        assert cache_value(build, "FACTEUR_SANITIZE") == "OFF"
        assert cache_value(build, "CMAKE_BUILD_TYPE") == "RelWithDebInfo"
        assert cache_value(build, "FACTEUR_TESTS") == "OFF"
        libs = needed_libraries(build / "facteurd")
        assert not any("asan" in l or "ubsan" in l for l in libs), libs
        # run.sh execs the daemon: the process it started is facteurd.
        assert os.readlink("/proc/%d/exe" % proc.pid) == str(build / "facteurd")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
