"""How many notices, and when (issue 12 items 4 and 7): the outcomes of one
delivery run of a message make at most one DSN of each kind, listing every
recipient it reports; a DSN that cannot be written into the spool (a full
disk) stays owed and is sent once there is room again, once."""

import os
import subprocess
import time

import pytest

import facteur_harness as h

SENDER = "sender@localhost"
FACTEURCTL = h.BUILD_DIR / "facteurctl"


def report(msg):
    """(per-message fields, [per-recipient fields]) of a DSN."""
    blocks = h.dsn_fields(msg)
    return blocks[0], blocks[1:]


def dsns(d):
    return h.dsns_to(d, SENDER)


def send(d, rcpts, rcpt_params="", mail_params="", body="hello\r\n"):
    return h.send_envelope(d, SENDER, rcpts, mail_params, rcpt_params,
                           subject="how many notices", body=body)


def test_six_local_successes_make_one_notice_listing_all(daemon):
    rcpts = ["user%d@localhost" % i for i in range(6)]
    qid = send(daemon, rcpts, rcpt_params=" NOTIFY=SUCCESS")
    for r in rcpts:
        daemon.wait_messages(r)
    h.wait_for(lambda: dsns(daemon) or None, h.IO_TIMEOUT, what="a success DSN")
    time.sleep(1.5)  # a second notice would be there by now
    (dsn,) = dsns(daemon)
    _, per_rcpt = report(dsn)
    assert sorted(b["Final-Recipient"] for b in per_rcpt) == \
        sorted("rfc822; " + r for r in rcpts)
    assert all(b["Action"] == "delivered" for b in per_rcpt), per_rcpt
    (ev,) = daemon.events("dsn", queue_id=qid)
    assert ev["kind"] == "success" and ev["nrcpt"] == "6", ev


def test_recipients_expiring_together_get_one_failure_notice(make_daemon):
    closed = h.free_port()
    d = make_daemon(config={
        "route": ["remote.test [127.0.0.1]:%d" % closed,
                  "other.test [127.0.0.1]:%d" % closed],
        "retry_min": "1s",
        "retry_max": "1s",
        "queue_lifetime": "3s",
        "tls_outbound": "none",
    })
    rcpts = ["a@remote.test", "b@remote.test", "c@other.test"]
    qid = send(d, rcpts)
    h.wait_for(lambda: len(d.events("expired", queue_id=qid)) == 3, 30,
               what="three expiries\n" + d.log_tail())
    h.wait_for(lambda: dsns(d) or None, h.IO_TIMEOUT, what="a failure DSN")
    time.sleep(1.5)
    (dsn,) = dsns(d)
    _, per_rcpt = report(dsn)
    assert sorted(b["Final-Recipient"] for b in per_rcpt) == \
        sorted("rfc822; " + r for r in rcpts)
    for b in per_rcpt:
        assert b["Action"] == "failed" and b["Status"] == "4.4.1", b
    assert len(d.events("dsn", queue_id=qid)) == 1


def test_mixed_outcomes_of_one_run_make_one_notice_of_each_kind(make_daemon):
    """Three local recipients delivered and two remote ones bounced by the
    operator in the same queue: one success notice, one failure notice."""
    d = make_daemon(config={"route": "remote.test [127.0.0.1]:%d" % h.free_port(),
                            "tls_outbound": "none"})
    local = ["l%d@localhost" % i for i in range(3)]
    remote = ["r%d@remote.test" % i for i in range(2)]
    qid = send(d, local + remote, rcpt_params=" NOTIFY=SUCCESS,FAILURE")
    h.wait_for(lambda: len(d.events("deferred", queue_id=qid)) >= 2, 30,
               what="the remote deferrals\n" + d.log_tail())
    r = subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path), "bounce", qid],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=h.clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    h.wait_for(lambda: len(dsns(d)) >= 2 or None, h.IO_TIMEOUT, what="two DSNs")
    time.sleep(1.5)
    kinds = {}
    for dsn in dsns(d):
        _, per_rcpt = report(dsn)
        action = per_rcpt[0]["Action"]
        assert action not in kinds, "two %s notices" % action
        kinds[action] = sorted(b["Final-Recipient"] for b in per_rcpt)
    assert kinds == {"delivered": sorted("rfc822; " + a for a in local),
                     "failed": sorted("rfc822; " + a for a in remote)}


# --------------------------------------------------------------------------
# a full disk (item 7): needs root for a small tmpfs as the spool

def fill(directory):
    """Write a file until the file system is full; return its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


@pytest.fixture
def tmpfs_spool(make_daemon):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def factory(config):
        d = make_daemon(config=config, start=False)
        d.spool.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700",
                            "tmpfs", str(d.spool)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode().strip())
        mounted.append(d)
        d.start()
        return d

    yield factory
    for d in mounted:
        if d.alive():
            d.stop_ok()
        subprocess.run(["umount", "-l", str(d.spool)])


def test_a_notice_that_cannot_be_written_is_sent_once_space_returns(tmpfs_spool):
    d = tmpfs_spool({"route": "remote.test [127.0.0.1]:%d" % h.free_port(),
                     "tls_outbound": "none", "retry_min": "1s", "retry_max": "2s"})
    # RET=FULL: the notice carries these 40 KiB, more than the free end
    # of a page the spool's last write may have left
    qid = send(d, ["gone@remote.test"], mail_params=" RET=FULL",
               body="a line of the returned message\r\n" * 1300)
    d.wait_event("deferred", queue_id=qid)
    filler = fill(str(d.spool))
    try:
        r = subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path), "bounce", qid],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=h.clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        # the commit fails, and fails again while the disk stays full
        h.wait_for(lambda: d.events("spool_error"), 20,
                   what="a failed commit\n" + d.log_tail())
        time.sleep(3)  # more than retry_max
        assert dsns(d) == []
    finally:
        os.unlink(filler)
    (dsn,) = h.wait_for(lambda: dsns(d) or None, 20,
                        what="the notice once there is room\n" + d.log_tail())
    assert len(d.events("dsn_owed", queue_id=qid, kind="failure")) >= 2
    _, per_rcpt = report(dsn)
    assert per_rcpt[0]["Final-Recipient"] == "rfc822; gone@remote.test"
    assert per_rcpt[0]["Action"] == "failed"
    time.sleep(3)  # more than retry_max: no second copy
    assert len(dsns(d)) == 1
    # the outcome is recorded now: a restart sends nothing again
    d.stop_ok()
    d.start()
    time.sleep(2)
    assert len(dsns(d)) == 1


def test_a_notice_owed_at_a_crash_comes_with_the_recipients_next_outcome(tmpfs_spool):
    """kill -9 while a notice is owed: the bounce it reports was never
    recorded, so after the restart the recipient is still queued; its
    outcome comes again (here: expiry) and the notice with it, once."""
    d = tmpfs_spool({"route": "remote.test [127.0.0.1]:%d" % h.free_port(),
                     "tls_outbound": "none", "retry_min": "1s", "retry_max": "2s",
                     "queue_lifetime": "12s"})
    qid = send(d, ["gone@remote.test"], mail_params=" RET=FULL",
               body="a line of the returned message\r\n" * 1300)
    d.wait_event("deferred", queue_id=qid)
    filler = fill(str(d.spool))
    try:
        r = subprocess.run([str(FACTEURCTL), "-c", str(d.conf_path), "bounce", qid],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=h.clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        d.wait_event("dsn_owed", queue_id=qid, timeout=20)
        d.kill9()
    finally:
        os.unlink(filler)
    d.start()
    assert d.events("recovered")[-1]["live"] == "1", d.log_tail()
    (dsn,) = h.wait_for(lambda: dsns(d) or None, 30,
                        what="the notice after the restart\n" + d.log_tail())
    _, per_rcpt = report(dsn)
    assert per_rcpt[0]["Final-Recipient"] == "rfc822; gone@remote.test"
    assert per_rcpt[0]["Action"] == "failed"
    time.sleep(3)
    assert len(dsns(d)) == 1
