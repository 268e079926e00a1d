"""Configuration: options -V and -n, file and environment rules, errors and
exit status 78 (SPEC §2, §3, §8)."""

import os
import re
import socket
import subprocess
import time

import pytest

import facteur_harness as h


# --------------------------------------------------------------------------
# helpers

def write_conf(tmp_path, text, name="facteur.conf"):
    p = tmp_path / name
    p.write_text(text)
    return p


def base_conf(tmp_path, port=None, extra=""):
    port = port or h.free_port()
    return ("listen = 127.0.0.1:%d\n"
            "spool_dir = %s/spool\n"
            "mailbox_path = %s/mail/%%d/%%u\n"
            "local_domains = localhost, example.test\n"
            "hostname = mx.example.test\n" % (port, tmp_path, tmp_path)) + extra


def effective(result):
    """Parse `facteurd -n` output: {key: value}."""
    out = {}
    for line in result.stdout.decode().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([a-z_0-9]+) = ?(.*)$", line)
        assert m, "not a 'key = value' line in -n output: %r" % line
        out[m.group(1)] = m.group(2).strip()
    return out


def as_list(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def as_size(value):
    m = re.match(r"^(\d+)\s*([KMGkmg]?)$", value)
    assert m, "not a size: %r" % value
    mult = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def as_duration(value):
    m = re.match(r"^(\d+)\s*([smhd]?)$", value)
    assert m, "not a duration: %r" % value
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * mult


def check_n(args, env=None, cwd=None):
    r = h.run_facteurd(["-n"] + list(args), env=env, cwd=cwd)
    assert r.returncode == 0, "facteurd -n exited %d\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout.decode(), r.stderr.decode())
    return effective(r)


def check_error(args, env=None, cwd=None):
    """Run facteurd expecting a configuration error; return its stderr."""
    r = h.run_facteurd(list(args), env=env, cwd=cwd)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == h.EX_CONFIG, "expected exit 78, got %d\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout.decode(), err)
    assert err.strip(), "no error message on stderr"
    return err


def port_is_bound(port):
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------
# -V and -n

def test_version_option_prints_a_version():
    r = h.run_facteurd(["-V"])
    assert r.returncode == 0, r
    out = r.stdout.decode()
    assert re.search(r"\d+\.\d+(\.\d+)?", out), "no version number on stdout: %r (stderr %r)" % (
        out, r.stderr)


def test_check_option_prints_every_spec_key(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr.decode()
    eff = effective(r)
    missing = [k for k in h.SPEC_KEYS if k not in eff]
    assert not missing, "keys missing from -n output: %s\n%s" % (missing, r.stdout.decode())
    assert eff["hostname"] == "mx.example.test"
    assert as_list(eff["local_domains"]) == ["localhost", "example.test"]
    assert eff["spool_dir"] == "%s/spool" % tmp_path
    assert eff["mailbox_path"] == "%s/mail/%%d/%%u" % tmp_path


def test_check_option_prints_keys_in_spec_order(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr.decode()
    keys = [re.match(r"^([a-z_0-9]+) =", l).group(1)
            for l in r.stdout.decode().splitlines() if re.match(r"^([a-z_0-9]+) =", l)]
    order = [k for k in keys if k in h.SPEC_KEYS]
    assert order == h.SPEC_KEYS, order


@pytest.mark.skipif(os.path.exists("/etc/facteur/facteur.conf"),
                    reason="a system configuration file exists")
def test_defaults_without_any_file(tmp_path):
    eff = check_n([], cwd=tmp_path)
    assert as_list(eff["listen"]) == ["127.0.0.1:2525"]
    assert eff["spool_dir"] == "/var/spool/facteur"
    assert as_list(eff["local_domains"]) == ["localhost"]
    assert eff["mailbox_format"] == "maildir"
    assert eff["mailbox_path"] == "/var/mail/%d/%u"
    assert sorted(as_list(eff["relay_networks"])) == sorted(["127.0.0.0/8", "::1/128"])
    assert int(eff["mx_port"]) == 25
    assert as_size(eff["max_message_size"]) == 25 * 1024 * 1024
    assert int(eff["max_recipients"]) == 1000
    assert int(eff["max_connections"]) == 10000
    assert int(eff["max_connections_per_ip"]) == 100
    assert as_duration(eff["smtp_timeout"]) == 300
    assert as_duration(eff["retry_min"]) == 60
    assert as_duration(eff["retry_max"]) == 3600
    assert as_duration(eff["queue_lifetime"]) == 5 * 86400
    assert eff["log_format"] == "logfmt"
    assert eff["log_level"] == "info"
    assert eff["tls_outbound"] == "may"
    assert eff["pop3_listen"] == ""
    assert eff["users_file"] == ""
    assert eff["hostname"] != ""


def test_environment_overrides_file(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path, extra="max_recipients = 10\n"))
    eff = check_n(["-c", str(conf)], env={"FACTEUR_LOCAL_DOMAINS": "env.test, other.test",
                                           "FACTEUR_MAX_RECIPIENTS": "7",
                                           "FACTEUR_HOSTNAME": "env-host.test"})
    assert as_list(eff["local_domains"]) == ["env.test", "other.test"]
    assert int(eff["max_recipients"]) == 7
    assert eff["hostname"] == "env-host.test"


def test_environment_local_domains_take_effect_in_daemon(make_daemon):
    d = make_daemon(config={"relay_networks": "10.0.0.0/8"},
                    env={"FACTEUR_LOCAL_DOMAINS": "env.test"})
    with d.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = c.cmd("RCPT TO:<someone@env.test>")
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert r.code == 554 and r.enhanced == "5.7.1", \
            "example.test is only in the file's list, which the environment replaced: %r" % r


def test_config_file_from_environment_variable(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path, extra="max_recipients = 42\n"))
    eff = check_n([], env={"FACTEUR_CONFIG": str(conf)})
    assert int(eff["max_recipients"]) == 42
    assert eff["hostname"] == "mx.example.test"


def test_option_c_wins_over_facteur_config(tmp_path):
    a = write_conf(tmp_path, base_conf(tmp_path, extra="max_recipients = 11\n"), "a.conf")
    b = write_conf(tmp_path, base_conf(tmp_path, extra="max_recipients = 22\n"), "b.conf")
    eff = check_n(["-c", str(a)], env={"FACTEUR_CONFIG": str(b)})
    assert int(eff["max_recipients"]) == 11


def test_list_key_repeated_in_file_appends(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) +
                      "local_domains = one.test\nlocal_domains = two.test, three.test\n"
                      "relay_networks = 10.0.0.0/8\nrelay_networks = 192.168.0.0/16\n")
    eff = check_n(["-c", str(conf)])
    assert as_list(eff["local_domains"]) == ["localhost", "example.test", "one.test",
                                             "two.test", "three.test"]
    nets = as_list(eff["relay_networks"])
    assert "10.0.0.0/8" in nets and "192.168.0.0/16" in nets
    assert "127.0.0.0/8" not in nets, "a list set in the file replaces the default"


def test_list_key_in_environment_replaces_file_list(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "local_domains = one.test\n")
    eff = check_n(["-c", str(conf)], env={"FACTEUR_LOCAL_DOMAINS": "env.test"})
    assert as_list(eff["local_domains"]) == ["env.test"]


def test_repeated_single_key_last_wins(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) +
                      "max_recipients = 5\nmax_recipients = 9\n")
    eff = check_n(["-c", str(conf)])
    assert int(eff["max_recipients"]) == 9


def test_comments_only_at_line_start(tmp_path):
    conf = write_conf(tmp_path,
                      "# a comment\n"
                      "    # an indented comment = not a key\n"
                      "\n"
                      "   \n" + base_conf(tmp_path) +
                      "spool_dir = %s/spool # not a comment\n" % tmp_path)
    eff = check_n(["-c", str(conf)])
    assert eff["spool_dir"] == "%s/spool # not a comment" % tmp_path


def test_spaces_around_key_and_value_are_trimmed(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "   max_recipients   =   17   \n")
    eff = check_n(["-c", str(conf)])
    assert int(eff["max_recipients"]) == 17


def test_durations_and_sizes(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) +
                      "max_message_size = 1K\nsmtp_timeout = 2m\nretry_min = 30s\n"
                      "retry_max = 2h\nqueue_lifetime = 3d\n")
    eff = check_n(["-c", str(conf)])
    assert as_size(eff["max_message_size"]) == 1024
    assert as_duration(eff["smtp_timeout"]) == 120
    assert as_duration(eff["retry_min"]) == 30
    assert as_duration(eff["retry_max"]) == 7200
    assert as_duration(eff["queue_lifetime"]) == 3 * 86400


@pytest.mark.parametrize("text,octets", [("1K", 1024), ("2M", 2 * 1024 ** 2),
                                         ("1G", 1024 ** 3), ("5000", 5000)])
def test_size_suffixes_are_1024_based(tmp_path, text, octets):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "max_message_size = %s\n" % text)
    eff = check_n(["-c", str(conf)])
    assert as_size(eff["max_message_size"]) == octets


def test_printed_settings_load_back_identically(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) +
                      "max_message_size = 3M\nsmtp_timeout = 90s\nrelay_networks = 10.0.0.0/8, ::1/128\n")
    first = check_n(["-c", str(conf)])
    # Feed the printed settings back as a file (empty values left out).
    text = "".join("%s = %s\n" % (k, v) for k, v in first.items() if v != "")
    again = write_conf(tmp_path, text, "again.conf")
    second = check_n(["-c", str(again)])
    assert second == first


def test_max_message_size_1k_is_advertised_as_1024(make_daemon):
    d = make_daemon(config={"max_message_size": "1K"})
    with d.raw() as c:
        r = c.ehlo()
    assert "SIZE 1024" in r.lines[1:], r


def test_size_from_environment_is_advertised(make_daemon):
    d = make_daemon(env={"FACTEUR_MAX_MESSAGE_SIZE": "2K"})
    with d.raw() as c:
        r = c.ehlo()
    assert "SIZE 2048" in r.lines[1:], r


# --------------------------------------------------------------------------
# errors

def test_unknown_key_is_an_error_naming_file_line_and_key(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "frobnicate = yes\n")
    line = len(conf.read_text().splitlines())
    err = check_error(["-n", "-c", str(conf)])
    assert "%s:%d" % (conf, line) in err or "facteur.conf:%d" % line in err, err
    assert "frobnicate" in err, err


def test_bad_value_is_an_error_naming_file_line_and_key(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "max_recipients = ten\n")
    line = len(conf.read_text().splitlines())
    err = check_error(["-n", "-c", str(conf)])
    assert "facteur.conf:%d" % line in err, err
    assert "max_recipients" in err, err


@pytest.mark.parametrize("key,value", [
    ("max_message_size", "12X"),
    ("max_message_size", "-1"),
    ("smtp_timeout", "5y"),
    ("smtp_timeout", "soon"),
    ("mailbox_format", "mh"),
    ("log_format", "xml"),
    ("log_level", "loud"),
    ("tls_outbound", "always"),
    ("listen", "127.0.0.1:99999"),
    ("listen", "127.0.0.1:2525/pop3"),
    ("relay_networks", "10.0.0.0/33"),
    ("mx_port", "0"),
    ("max_recipients", "0"),
    ("mailbox_path", "/var/mail/%x"),
])
def test_invalid_values_are_rejected(tmp_path, key, value):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "%s = %s\n" % (key, value))
    line = len(conf.read_text().splitlines())
    err = check_error(["-n", "-c", str(conf)])
    assert "facteur.conf:%d" % line in err, err
    assert key in err, err


def test_line_without_equals_is_an_error(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path) + "this line has no equals sign\n")
    line = len(conf.read_text().splitlines())
    err = check_error(["-n", "-c", str(conf)])
    assert "facteur.conf:%d" % line in err, err


def test_every_error_is_printed(tmp_path):
    text = base_conf(tmp_path)
    first = len(text.splitlines()) + 1
    conf = write_conf(tmp_path, text + "max_recipients = ten\nbogus_key = 1\nlog_level = loud\n")
    err = check_error(["-n", "-c", str(conf)])
    for n, key in ((first, "max_recipients"), (first + 1, "bogus_key"), (first + 2, "log_level")):
        assert "facteur.conf:%d" % n in err, "error for line %d missing:\n%s" % (n, err)
        assert key in err, err
    msgs = [l for l in err.splitlines() if "facteur.conf:" in l]
    assert len(msgs) >= 3, err


def test_unknown_facteur_variable_is_an_error(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    err = check_error(["-n", "-c", str(conf)], env={"FACTEUR_BOGUS": "1"})
    assert "FACTEUR_BOGUS" in err, err


KUBERNETES_SERVICE_ENV = {
    # What a pod gets for a Service named "facteur" with ports smtp and metrics.
    "FACTEUR_SERVICE_HOST": "10.96.0.12",
    "FACTEUR_SERVICE_PORT": "25",
    "FACTEUR_SERVICE_PORT_SMTP": "25",
    "FACTEUR_SERVICE_PORT_METRICS": "9187",
    "FACTEUR_PORT": "tcp://10.96.0.12:25",
    "FACTEUR_PORT_25_TCP": "tcp://10.96.0.12:25",
    "FACTEUR_PORT_25_TCP_PROTO": "tcp",
    "FACTEUR_PORT_25_TCP_PORT": "25",
    "FACTEUR_PORT_25_TCP_ADDR": "10.96.0.12",
    "FACTEUR_PORT_9187_TCP": "tcp://10.96.0.12:9187",
    "FACTEUR_PORT_9187_TCP_PROTO": "tcp",
    "FACTEUR_PORT_9187_TCP_PORT": "9187",
    "FACTEUR_PORT_9187_TCP_ADDR": "10.96.0.12",
}


def test_kubernetes_service_variables_are_ignored(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    env = dict(KUBERNETES_SERVICE_ENV, FACTEUR_MAX_RECIPIENTS="17")
    eff = check_n(["-c", str(conf)], env=env)
    assert eff["max_recipients"] == "17"
    # A name of that family that Kubernetes does not make is still an error.
    err = check_error(["-n", "-c", str(conf)],
                      env=dict(KUBERNETES_SERVICE_ENV, FACTEUR_PORT_25_TCP_HOST="x"))
    assert "FACTEUR_PORT_25_TCP_HOST" in err, err


def test_file_variable_sets_the_key_without_final_newline(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    secret = tmp_path / "max_recipients"
    secret.write_text("23\n")
    routes = tmp_path / "route"
    routes.write_text("* [127.0.0.1]:2526 tls=none\n")
    eff = check_n(["-c", str(conf)], env={"FACTEUR_MAX_RECIPIENTS_FILE": str(secret),
                                          "FACTEUR_ROUTE_FILE": str(routes)})
    assert eff["max_recipients"] == "23"
    assert eff["route"] == "* [127.0.0.1]:2526 tls=none"


def test_file_variable_errors(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    missing = tmp_path / "absent-secret"
    err = check_error(["-n", "-c", str(conf)],
                      env={"FACTEUR_MAX_RECIPIENTS_FILE": str(missing)})
    assert "FACTEUR_MAX_RECIPIENTS_FILE" in err and "absent-secret" in err, err
    secret = tmp_path / "n"
    secret.write_text("8\n")
    err = check_error(["-n", "-c", str(conf)],
                      env={"FACTEUR_MAX_RECIPIENTS_FILE": str(secret),
                           "FACTEUR_MAX_RECIPIENTS": "8"})
    assert "FACTEUR_MAX_RECIPIENTS_FILE" in err and "FACTEUR_MAX_RECIPIENTS;" in err, err
    secret.write_text("eight\n")
    err = check_error(["-n", "-c", str(conf)],
                      env={"FACTEUR_MAX_RECIPIENTS_FILE": str(secret)})
    assert "FACTEUR_MAX_RECIPIENTS_FILE: max_recipients" in err, err


def test_route_auth_with_tls_may_is_an_error(tmp_path):
    secret = tmp_path / "smarthost"
    secret.write_text("user:password\n")
    conf = write_conf(tmp_path, base_conf(
        tmp_path, extra="route = * [smarthost.example.net]:587 tls=may auth=%s\n" % secret))
    err = check_error(["-n", "-c", str(conf)])
    assert "facteur.conf:6: route: " in err and "tls=may" in err, err
    # Without tls=, the route verifies the relay whatever tls_outbound says.
    conf = write_conf(tmp_path, base_conf(
        tmp_path, extra="tls_outbound = may\n"
                        "route = * [smarthost.example.net]:587 auth=%s\n" % secret))
    eff = check_n(["-c", str(conf)])
    assert eff["route"] == "* [smarthost.example.net]:587 auth=%s" % secret


def test_bad_value_in_environment_names_the_variable(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    err = check_error(["-n", "-c", str(conf)], env={"FACTEUR_MAX_RECIPIENTS": "ten"})
    assert "FACTEUR_MAX_RECIPIENTS" in err, err
    assert "max_recipients" in err, err


def test_missing_c_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.conf"
    err = check_error(["-n", "-c", str(missing)])
    assert "nope.conf" in err, err


def test_missing_facteur_config_file_is_an_error(tmp_path):
    missing = tmp_path / "absent.conf"
    err = check_error(["-n"], env={"FACTEUR_CONFIG": str(missing)})
    assert "absent.conf" in err, err


def test_missing_c_file_stops_the_daemon(tmp_path):
    err = check_error(["-c", str(tmp_path / "nope.conf")])
    assert "nope.conf" in err, err


def test_submission_listener_without_tls_is_an_error(tmp_path):
    port = h.free_port()
    conf = write_conf(tmp_path, base_conf(tmp_path) + "listen = 127.0.0.1:%d/submission\n" % port)
    err = check_error(["-n", "-c", str(conf)])
    assert "tls_cert" in err or "submission" in err, err
    assert "listen" in err or "tls_cert" in err, err


@pytest.mark.parametrize("mode", ["smtps"])
def test_smtps_listener_without_tls_is_an_error(tmp_path, mode):
    port = h.free_port()
    conf = write_conf(tmp_path, base_conf(tmp_path) + "listen = 127.0.0.1:%d/%s\n" % (port, mode))
    err = check_error(["-n", "-c", str(conf)])
    assert "tls_cert" in err or mode in err, err


def test_pop3s_listener_without_tls_is_an_error(tmp_path):
    port = h.free_port()
    conf = write_conf(tmp_path, base_conf(tmp_path) + "pop3_listen = 127.0.0.1:%d/pop3s\n" % port)
    err = check_error(["-n", "-c", str(conf)])
    assert "tls_cert" in err or "pop3s" in err, err


def test_daemon_with_bad_config_exits_78_without_binding(tmp_path):
    port = h.free_port()
    # The bad line comes after listen, so a daemon that binds while reading
    # would be caught.
    conf = write_conf(tmp_path, base_conf(tmp_path, port=port) + "max_recipients = many\n")
    proc = subprocess.Popen([str(h.FACTEURD), "-c", str(conf)], env=h.clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(tmp_path))
    h._ALL_PROCS.append(proc)
    bound = False
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        if port_is_bound(port):
            bound = True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail("facteurd with a bad configuration did not exit within 20 s")
    _out, err = proc.communicate()
    assert proc.returncode == h.EX_CONFIG, (proc.returncode, err)
    assert b"max_recipients" in err, err
    assert not bound, "the port was bound although the configuration is bad"
    assert not port_is_bound(port)


def test_daemon_with_unknown_env_variable_exits_78(tmp_path):
    port = h.free_port()
    conf = write_conf(tmp_path, base_conf(tmp_path, port=port))
    err = check_error(["-c", str(conf)], env={"FACTEUR_NO_SUCH_KEY": "x"})
    assert "FACTEUR_NO_SUCH_KEY" in err, err
    assert not port_is_bound(port)


def test_user_root_means_no_switch(make_daemon):
    d = make_daemon(config={"user": "root"})
    d.send(subject="as root")
    d.wait_messages("user@localhost")


# --------------------------------------------------------------------------
# reuse_port, and a host name without a dot

def test_reuse_port_from_file_environment_and_check_output(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "reuse_port = no" in lines
    # A key of its own after those that came before it.
    assert lines.index("reuse_port = no") > lines.index(
        [l for l in lines if l.startswith("auth_fail_limit =")][0])
    conf = write_conf(tmp_path, base_conf(tmp_path, extra="reuse_port = yes\n"))
    assert check_n(["-c", str(conf)])["reuse_port"] == "yes"
    assert check_n(["-c", str(conf)], env={"FACTEUR_REUSE_PORT": "no"})["reuse_port"] == "no"


@pytest.mark.parametrize("value", ["maybe", "1", "YES", ""])
def test_reuse_port_bad_value_is_an_error(tmp_path, value):
    conf = write_conf(tmp_path, base_conf(tmp_path, extra="reuse_port = %s\n" % value))
    line = len(conf.read_text().splitlines())
    err = check_error(["-n", "-c", str(conf)])
    assert "facteur.conf:%d" % line in err and "reuse_port" in err, err
    err = check_error(["-n", "-c", str(write_conf(tmp_path, base_conf(tmp_path), "b.conf"))],
                      env={"FACTEUR_REUSE_PORT": "sometimes"})
    assert "FACTEUR_REUSE_PORT" in err, err


def test_hostname_without_a_dot_is_a_warning_in_check_output(tmp_path):
    conf = write_conf(tmp_path, base_conf(tmp_path).replace(
        "hostname = mx.example.test", "hostname = 3f2a9c81d0e4"))
    r = h.run_facteurd(["-n", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    assert effective(r)["hostname"] == "3f2a9c81d0e4"
    err = r.stderr.decode()
    assert re.search(r"warning: hostname 3f2a9c81d0e4 has no dot", err), err
    # A qualified name says nothing.
    r = h.run_facteurd(["-n", "-c", str(write_conf(tmp_path, base_conf(tmp_path), "q.conf"))])
    assert r.returncode == 0 and b"warning" not in r.stderr, r.stderr


def test_hostname_without_a_dot_is_a_warning_at_start(make_daemon):
    d = make_daemon(config={"hostname": "mailhost"})
    warn = d.events("config_warning", key="hostname")
    assert warn and warn[0]["value"] == "mailhost" and warn[0]["level"] == "warn", d.log_tail()
    # Still only a warning: the daemon serves under that name.
    with d.raw() as c:
        assert "mailhost" in c.banner.first
    other = make_daemon()
    assert not other.events("config_warning")
