"""Metrics over HTTP (SPEC §3 metrics_listen, §7, §8): GET /metrics in the
Prometheus text format, every SPEC metric present from the start, values
that follow the mail, and an HTTP server that only answers GET /metrics."""

import http.client
import os
import re
import resource
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import facteur_harness as h

GAUGES = {"facteur_connections_active", "facteur_queue_messages"}

SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? '
    r'(-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$')


# --------------------------------------------------------------------------
# helpers

def metrics_daemon(make_daemon, config=None, start=True, host="127.0.0.1"):
    """A daemon with a metrics listener on a free port of `host`."""
    port = h.free_port(host)
    hostport = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    cfg = {"metrics_listen": hostport, "dns_servers": "127.0.0.1:9"}
    cfg.update(config or {})
    d = make_daemon(config=cfg, start=start)
    d.metrics_host = host
    d.metrics_port = port
    return d


def url_of(d, path="/metrics"):
    host = "[%s]" % d.metrics_host if ":" in d.metrics_host else d.metrics_host
    return "http://%s:%d%s" % (host, d.metrics_port, path)


def parse_exposition(text):
    """{series: value} for every sample line, {family: type} for every
    TYPE line. Raises on a line that is not in the text format."""
    samples, types = {}, {}
    for line in text.split("\n"):
        if line == "":
            continue
        if line.startswith("# TYPE "):
            parts = line.split()
            assert len(parts) == 4, line
            types[parts[2]] = parts[3]
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        series = m.group(1) + (m.group(2) or "")
        assert series not in samples, "series twice: %r" % series
        samples[series] = float(m.group(3))
    assert text.endswith("\n"), "exposition does not end with a newline"
    return samples, types


def scrape(d, timeout=10):
    """GET /metrics with urllib; returns (samples, types, response)."""
    with urllib.request.urlopen(url_of(d), timeout=timeout) as r:
        body = r.read().decode("utf-8")
        assert r.status == 200
        samples, types = parse_exposition(body)
        return samples, types, r


def wait_scrapable(d, timeout=h.START_TIMEOUT):
    """Poll the metrics port until it answers (the daemon started with
    wait=False); return the first scrape, taken before any SMTP session."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not d.alive():
            raise AssertionError("facteurd exited with status %s:\n%s"
                                 % (d.proc.returncode, d.log_tail()))
        try:
            return scrape(d, timeout=5)
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            last = e
            time.sleep(0.1)
    raise AssertionError("metrics not served after %.0fs (last: %r):\n%s"
                         % (timeout, last, d.log_tail()))


def wait_metric(d, series, predicate, what, timeout=h.IO_TIMEOUT):
    """Scrape until predicate(value of series) holds; return the samples."""
    last = {}

    def check():
        nonlocal last
        last, _, _ = scrape(d)
        return last if predicate(last.get(series)) else None

    try:
        return h.wait_for(check, timeout, what=what)
    except AssertionError:
        raise AssertionError("%s: %s is %r\n--- log tail:\n%s"
                             % (what, series, last.get(series), d.log_tail()))


def http_request(d, method, path, body=None, headers=None):
    """One request on a fresh http.client connection; (status, headers,
    body)."""
    c = http.client.HTTPConnection(d.metrics_host, d.metrics_port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def remote_route_to_closed_port():
    """A route line sending every remote domain to a port nobody listens
    on: each attempt fails at connect and the recipient is deferred."""
    return "route = * [127.0.0.1]:%d tls=none" % h.free_port()


# --------------------------------------------------------------------------
# the exposition at start

def test_every_spec_metric_is_present_at_start_with_counters_at_zero(make_daemon):
    d = metrics_daemon(make_daemon, start=False)
    d.start(wait=False)
    samples, types, r = wait_scrapable(d)

    ctype = r.headers["Content-Type"]
    assert ctype.startswith("text/plain"), ctype
    assert "version=0.0.4" in ctype, ctype
    for series in h.SPEC_METRICS:
        assert series in samples, "%s missing from:\n%s" % (series, sorted(samples))
        assert samples[series] == 0, (series, samples[series])
    for series in h.SPEC_METRICS:
        family = series.split("{")[0]
        expected = "gauge" if family in GAUGES else "counter"
        assert types.get(family) == expected, (family, types.get(family))
    d.wait_ready()


def test_queue_metric_at_start_counts_what_the_spool_held(make_daemon):
    d = metrics_daemon(make_daemon, config={"retry_min": "1h", "retry_max": "2h"},
                       start=False)
    d.extra_lines.append(remote_route_to_closed_port())
    d.start()
    ids = [d.send(recipients=("someone@remote.test",), subject="held %d" % i)
           for i in range(2)]
    for qid in ids:
        d.wait_event("deferred", queue_id=qid)
    samples = wait_metric(d, "facteur_queue_messages", lambda v: v == 2,
                          "two messages queued")
    assert samples['facteur_deliveries_total{result="deferred"}'] == 2
    assert samples["facteur_messages_accepted_total"] == 2

    d.stop_ok()
    d.start(wait=False)
    samples, _, _ = wait_scrapable(d)
    # A new process: its counters start again at zero, the queue gauge
    # shows the two messages recovered from the spool (their next attempt
    # is an hour away, so nothing moves meanwhile).
    assert samples["facteur_queue_messages"] == 2, samples
    for series in h.SPEC_METRICS:
        if series != "facteur_queue_messages":
            assert samples[series] == 0, (series, samples[series])
    d.wait_ready()


# --------------------------------------------------------------------------
# values follow the mail

def test_counters_rise_as_mail_flows(make_daemon):
    d = metrics_daemon(make_daemon)
    before, _, _ = scrape(d)

    for i in range(3):
        d.send(recipients=("user@localhost",), subject="count %d" % i)
    d.wait_messages("user@localhost", 3)

    after = wait_metric(d, 'facteur_deliveries_total{result="delivered"}',
                        lambda v: v is not None and
                        v >= before['facteur_deliveries_total{result="delivered"}'] + 3,
                        "three deliveries counted")
    assert after["facteur_connections_total"] - before["facteur_connections_total"] == 3
    assert after["facteur_messages_accepted_total"] - \
        before["facteur_messages_accepted_total"] == 3
    assert after['facteur_deliveries_total{result="delivered"}'] - \
        before['facteur_deliveries_total{result="delivered"}'] == 3
    assert after['facteur_deliveries_total{result="bounced"}'] == 0
    assert after['facteur_deliveries_total{result="deferred"}'] == 0
    # Every session ended and every message left the queue.
    wait_metric(d, "facteur_connections_active", lambda v: v == 0,
                "no SMTP session open")
    wait_metric(d, "facteur_queue_messages", lambda v: v == 0, "an empty queue")


def test_one_delivery_per_recipient_is_counted(make_daemon):
    d = metrics_daemon(make_daemon)
    before, _, _ = scrape(d)
    d.send(recipients=("a@localhost", "b@localhost", "c@example.test"))
    for rcpt in ("a@localhost", "b@localhost", "c@example.test"):
        d.wait_messages(rcpt, 1)
    key = 'facteur_deliveries_total{result="delivered"}'
    after = wait_metric(d, key, lambda v: v is not None and v >= before[key] + 3,
                        "three recipients delivered")
    assert after[key] - before[key] == 3
    assert after["facteur_messages_accepted_total"] - \
        before["facteur_messages_accepted_total"] == 1


def test_active_connections_gauge_follows_open_sessions(make_daemon):
    d = metrics_daemon(make_daemon)
    wait_metric(d, "facteur_connections_active", lambda v: v == 0,
                "no session at first")
    clients = [d.raw() for _ in range(2)]
    try:
        wait_metric(d, "facteur_connections_active", lambda v: v == 2,
                    "two sessions open")
    finally:
        for c in clients:
            try:
                c.cmd("QUIT")
            except (OSError, AssertionError):
                pass
            c.close()
    wait_metric(d, "facteur_connections_active", lambda v: v == 0,
                "sessions closed")


def test_deferred_deliveries_are_counted(make_daemon):
    d = metrics_daemon(make_daemon, config={"retry_min": "1h", "retry_max": "2h"},
                       start=False)
    d.extra_lines.append(remote_route_to_closed_port())
    d.start()
    qid = d.send(recipients=("x@remote.test", "y@remote.test"))
    d.wait_event("deferred", queue_id=qid)
    samples = wait_metric(d, 'facteur_deliveries_total{result="deferred"}',
                          lambda v: v == 2, "two deferred recipients")
    assert samples['facteur_deliveries_total{result="delivered"}'] == 0
    assert samples["facteur_queue_messages"] == 1


def test_delivery_delay_histogram_is_consistent(make_daemon):
    d = metrics_daemon(make_daemon)
    d.send(recipients=("user@localhost",))
    d.wait_messages("user@localhost", 1)
    samples, types, _ = scrape(d)
    assert types.get("facteur_delivery_delay_seconds") == "histogram"
    buckets = [(k, v) for k, v in samples.items()
               if k.startswith("facteur_delivery_delay_seconds_bucket{")]
    assert buckets, sorted(samples)
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets are not cumulative: %r" % buckets
    assert buckets[-1][0] == 'facteur_delivery_delay_seconds_bucket{le="+Inf"}'
    assert buckets[-1][1] == samples["facteur_delivery_delay_seconds_count"]
    assert samples["facteur_delivery_delay_seconds_sum"] >= 0


# --------------------------------------------------------------------------
# HTTP behaviour

def test_other_paths_get_404(make_daemon):
    d = metrics_daemon(make_daemon)
    for path in ("/", "/other", "/metrics/", "/metricsx", "/../metrics"):
        status, _, _ = http_request(d, "GET", path)
        assert status == 404, (path, status)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url_of(d, "/other"), timeout=10)
    assert e.value.code == 404


def test_other_methods_get_405_with_allow(make_daemon):
    d = metrics_daemon(make_daemon)
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        status, headers, _ = http_request(d, method, "/metrics", body=b"")
        assert status == 405, (method, status)
        allow = {m.strip() for m in headers.get("Allow", "").split(",")}
        assert "GET" in allow, headers


def test_head_and_query_strings_are_served(make_daemon):
    d = metrics_daemon(make_daemon)
    status, headers, body = http_request(d, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert headers["Content-Type"].startswith("text/plain")
    status, _, body = http_request(d, "GET", "/metrics?name[]=x")
    assert status == 200
    assert b"facteur_connections_total " in body


def test_keep_alive_connection_serves_several_scrapes(make_daemon):
    d = metrics_daemon(make_daemon)
    c = http.client.HTTPConnection("127.0.0.1", d.metrics_port, timeout=10)
    try:
        for _ in range(3):
            c.request("GET", "/metrics")
            r = c.getresponse()
            body = r.read().decode()
            assert r.status == 200
            parse_exposition(body)
    finally:
        c.close()


def test_curl_scrape(make_daemon):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    d = metrics_daemon(make_daemon)
    d.send()
    out = subprocess.run([curl, "-sS", "--fail", "--max-time", "10", url_of(d)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert out.returncode == 0, out.stderr
    samples, _ = parse_exposition(out.stdout.decode())
    assert samples["facteur_messages_accepted_total"] >= 1
    out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "10", url_of(d, "/nothing")],
                         stdout=subprocess.PIPE, timeout=30)
    assert out.stdout == b"404"


def test_ipv6_metrics_listener(make_daemon):
    if not h.has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    d = metrics_daemon(make_daemon, host="::1")
    samples, _, _ = scrape(d)
    assert "facteur_connections_total" in samples


def test_silent_and_garbage_clients_disturb_nothing(make_daemon):
    d = metrics_daemon(make_daemon)
    idle = socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
    garbage = socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
    try:
        garbage.sendall(b"\x00\xff NOT HTTP AT ALL\r\n" + b"A" * 20000 + b"\r\n\r\n")
        # Scrapes and mail go on meanwhile.
        samples, _, _ = scrape(d)
        assert "facteur_queue_messages" in samples
        d.send()
        d.wait_messages("user@localhost", 1)
        huge = {"X-Filler": "y" * 16384}
        try:
            status, _, _ = http_request(d, "GET", "/metrics", headers=huge)
            assert status >= 400
        except (ConnectionError, http.client.HTTPException):
            pass  # closing on oversized headers is as good as an error
    finally:
        idle.close()
        garbage.close()
    scrape(d)
    d.assert_alive()


def test_metrics_port_in_use_stops_the_start(make_daemon):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = make_daemon(config={"metrics_listen": "127.0.0.1:%d" % port},
                        start=False)
        d.start(wait=False)
        try:
            code = d.proc.wait(h.START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("facteurd started although the metrics port "
                                 "was taken:\n%s" % d.log_tail())
        d.observed_exit = True
        assert code not in (0, None), code
        assert "127.0.0.1:%d" % port in d.log_tail(), d.log_tail()


# --------------------------------------------------------------------------
# limits: connections and descriptors

METRICS_MAX_CONNECTIONS = 16  # docs/operations.md, "Metrics"


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_connections_past_the_cap_wait_until_one_closes(make_daemon):
    d = metrics_daemon(make_daemon)
    idle = [socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
            for _ in range(METRICS_MAX_CONNECTIONS)]
    try:
        # Every slot is taken: a scrape is queued by the kernel, not served.
        with pytest.raises((socket.timeout, urllib.error.URLError)):
            urllib.request.urlopen(url_of(d), timeout=1.5).read()
        fds_full = open_descriptors(d.pid)
        more = [socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
                for _ in range(20)]
        time.sleep(0.5)
        # Those wait in the backlog: the daemon holds no descriptor for them.
        assert open_descriptors(d.pid) <= fds_full + 1
        for s in more:
            s.close()
        idle.pop().close()
        samples, _, _ = scrape(d)
        assert "facteur_connections_total" in samples
    finally:
        for s in idle:
            s.close()
    d.assert_alive()


def test_out_of_descriptors_pauses_accepting_without_spinning(make_daemon):
    d = metrics_daemon(make_daemon)
    scrape(d)
    # Leave the daemon three descriptors: the fourth connection fails to
    # be accepted (EMFILE) and the rest wait in the backlog.
    limit = open_descriptors(d.pid) + 3
    old = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, old[1]))
    clients = []
    try:
        clients = [socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
                   for _ in range(10)]
        time.sleep(0.5)
        cpu0, t0 = cpu_seconds(d.pid), time.monotonic()
        time.sleep(2)
        busy = (cpu_seconds(d.pid) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.5, "facteurd used %.0f%% of a CPU while out of " \
                           "descriptors" % (busy * 100)
        errors = d.events("accept_error", protocol="http")
        assert len(errors) == 1, errors
    finally:
        for s in clients:
            s.close()
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, old)
    # Descriptors are back: scrapes and mail go on.
    samples, _, _ = wait_scrapable(d)
    assert "facteur_queue_messages" in samples
    d.send()
    d.wait_messages("user@localhost", 1)


def test_request_then_half_close_still_gets_its_reply(make_daemon):
    """A client that shuts its sending side after the request (printf |
    nc) still reads the whole reply."""
    d = metrics_daemon(make_daemon)
    with socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    assert len(body) == length
    parse_exposition(body.decode())


# --------------------------------------------------------------------------
# operating at volume: the families beyond SPEC §8

VOLUME_FAMILIES = {
    "facteur_smtp_rejections_total": ("counter", "reason", {
        "relay_denied", "unknown_user", "syntax", "protocol",
        "too_many_recipients", "envelope_limit", "size", "loop",
        "auth_required", "tls_required", "auth_fail_limit", "too_many_errors",
        "dnsbl", "rate", "milter"}),
    "facteur_auth_attempts_total": ("counter", "result", {"success", "failure"}),
    "facteur_tls_sessions_total": ("counter", "direction", {"inbound", "outbound"}),
    "facteur_queue_messages": ("gauge", "state", {"pending", "deferred", "held"}),
}


def test_volume_families_are_present_at_start_with_bounded_labels(make_daemon):
    d = metrics_daemon(make_daemon)
    samples, types, _ = scrape(d)
    for family, (kind, label, values) in VOLUME_FAMILIES.items():
        assert types.get(family) == kind, (family, types.get(family))
        seen = {m.group(1) for m in (
            re.match(r'^%s\{%s="([^"]*)"\}$' % (family, label), s)
            for s in samples) if m}
        assert seen == values, (family, seen)
        for v in values:
            assert samples['%s{%s="%s"}' % (family, label, v)] == 0
    for name in ("facteur_received_bytes_total", "facteur_relayed_bytes_total"):
        assert types[name] == "counter" and samples[name] == 0
    dns = [s for s in samples if s.startswith("facteur_dns_failures_total{")]
    assert len(dns) == 4 * 4, dns
    assert all(samples[s] == 0 for s in dns)
    td = [s for s in samples if s.startswith("facteur_transport_deliveries_total{")]
    assert len(td) == 3 * 3, td  # local, relay, lmtp
    for name in ("process_start_time_seconds", "process_resident_memory_bytes",
                 "process_open_fds"):
        assert types[name] == "gauge", name
    assert abs(time.time() - samples["process_start_time_seconds"]) < 600
    assert samples["process_resident_memory_bytes"] > 1024 * 1024
    fds = len(os.listdir("/proc/%d/fd" % d.pid))
    assert abs(samples["process_open_fds"] - fds) <= 2, (samples["process_open_fds"], fds)


def test_process_open_fds_follows_open_sessions(make_daemon):
    d = metrics_daemon(make_daemon)
    before, _, _ = scrape(d)
    clients = [d.raw() for _ in range(5)]
    try:
        s = wait_metric(d, "facteur_connections_active", lambda v: v == 5,
                        "five sessions open")
        assert s["process_open_fds"] >= before["process_open_fds"] + 5
    finally:
        for c in clients:
            c.close()
