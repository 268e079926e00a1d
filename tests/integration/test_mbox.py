"""mbox delivery (SPEC §5): `From ` separator lines, mboxrd quoting, a blank
line after each message, and many clients delivering to one mbox at once."""

import mailbox
import re
import threading

import pytest

import facteur_harness as h

USER = "user@localhost"

FROM_LINE = re.compile(rb"^From \S+ (Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
                       rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                       rb"[ \d]\d \d\d:\d\d:\d\d \d{4}$")


@pytest.fixture
def mbox_daemon(make_daemon, tmp_path):
    d = make_daemon(config={"mailbox_format": "mbox",
                            "mailbox_path": str(tmp_path / "mbox" / "%u"),
                            "max_connections_per_ip": 200})
    d.mbox_path = tmp_path / "mbox" / "user"
    return d


def separators(data):
    """Indexes of the `From ` separator lines of an mbox (bytes)."""
    lines = data.split(b"\n")
    return [i for i, l in enumerate(lines) if l.startswith(b"From ")]


def wait_mbox(d, count):
    """Wait until `count` deliveries are done (the data is written before
    the fsync and the unlock) and the mbox holds them; return its bytes."""
    h.wait_for(lambda: len(d.events("delivered")) >= count,
               what="%d deliveries\n--- log tail:\n%s" % (count, d.log_tail()))

    def done():
        try:
            data = d.mbox_path.read_bytes()
        except FileNotFoundError:
            return None
        return data if len(separators(data)) >= count else None
    return h.wait_for(done, what="%d messages in %s\n--- log tail:\n%s"
                      % (count, d.mbox_path, d.log_tail()))


def check_well_formed(data, count):
    """Every `From ` line starts a message: it is first or follows a blank
    line, it has the asctime date, and there are exactly `count`; the file
    ends with the blank line after the last message."""
    lines = data.split(b"\n")
    seps = separators(data)
    assert len(seps) == count, (len(seps), count)
    assert seps[0] == 0, "the mbox does not start with a From line"
    for i in seps:
        assert FROM_LINE.match(lines[i]), lines[i]
        if i > 0:
            assert lines[i - 1] == b"", "From line %d not after a blank line" % i
    assert data.endswith(b"\n\n"), data[-40:]
    assert b"\r" not in data  # mailbox form: LF line ends


def unquote(body):
    """mboxrd: one '>' less on every line that matches ^>+From ."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", body)


def test_from_lines_in_the_body_are_quoted_mboxrd(mbox_daemon):
    d = mbox_daemon
    body = ("From the start\r\n"
            ">From once quoted\r\n"
            ">>From twice quoted\r\n"
            "From\r\n"              # no space: not a From_ line
            " From indented\r\n"
            "Fromage\r\n"
            "end From here\r\n")
    d.send(sender="sender@example.org", recipients=(USER,), subject="mboxrd", body=body)
    data = wait_mbox(d, 1)
    check_well_formed(data, 1)
    assert data.startswith(b"From sender@example.org ")
    text = data.split(b"\n", 1)[1]
    head, _, rest = text.partition(b"\n\n")
    assert head.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: user@localhost\n")
    assert b"\n>From the start\n" in b"\n" + rest
    assert b"\n>>From once quoted\n" in rest
    assert b"\n>>>From twice quoted\n" in rest
    assert b"\nFrom\n" in rest
    assert b"\n From indented\n" in rest
    assert b"\nFromage\n" in rest
    assert b"\nend From here\n" in rest
    # mboxrd undone, the body is what was sent
    assert unquote(rest) == body.replace("\r\n", "\n").encode() + b"\n"

    box = mailbox.mbox(str(d.mbox_path), create=False)
    try:
        msgs = list(box)
        assert len(msgs) == 1
        assert msgs[0]["Subject"] == "mboxrd"
        assert msgs[0].get_from().startswith("sender@example.org ")
    finally:
        box.close()
    assert not d.mbox_path.with_name("user.lock").exists()


def test_null_sender_gets_mailer_daemon_in_the_from_line(mbox_daemon):
    d = mbox_daemon
    d.send(sender="", recipients=(USER,), subject="bounce-like")
    data = wait_mbox(d, 1)
    check_well_formed(data, 1)
    assert data.startswith(b"From MAILER-DAEMON ")


def test_messages_are_appended_each_after_a_blank_line(mbox_daemon):
    d = mbox_daemon
    for i in range(3):
        d.send(recipients=(USER,), subject="seq %d" % i, body="body %d\r\n" % i)
        wait_mbox(d, i + 1)
    data = wait_mbox(d, 3)
    check_well_formed(data, 3)
    box = mailbox.mbox(str(d.mbox_path), create=False)
    try:
        assert [m["Subject"] for m in box] == ["seq 0", "seq 1", "seq 2"]
        for i, m in enumerate(box):
            assert m.get_payload() == "body %d\n\n" % i or m.get_payload() == "body %d\n" % i
    finally:
        box.close()


def test_twenty_clients_delivering_at_once_leave_a_well_formed_mbox(mbox_daemon):
    d = mbox_daemon
    n = 20
    barrier = threading.Barrier(n)
    errors = []

    def body_of(i):
        # a few KB, with lines that need quoting, so that interleaved
        # writes would show
        lines = ["client %d line %d %s" % (i, j, "z" * 60) for j in range(60)]
        lines[10] = "From client %d inside the body" % i
        lines[20] = ">From client %d quoted" % i
        return "\r\n".join(lines) + "\r\n"

    def client(i):
        try:
            data = h.make_message(subject="concurrent %02d" % i, body=body_of(i),
                                  to=USER)
            with d.raw() as c:
                c.ehlo()
                barrier.wait(timeout=60)
                r = c.send_message("s%d@example.org" % i, [USER], data, ehlo=False)
                assert r.code == 250, r
                c.cmd("QUIT")
        except Exception as e:  # reported below
            errors.append((i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors

    data = wait_mbox(d, n)
    check_well_formed(data, n)

    box = mailbox.mbox(str(d.mbox_path), create=False)
    try:
        msgs = list(box)
    finally:
        box.close()
    subjects = sorted(m["Subject"] for m in msgs)
    assert subjects == ["concurrent %02d" % i for i in range(n)]
    for m in msgs:
        i = int(m["Subject"].split()[1])
        assert m.get_from().startswith("s%d@example.org " % i)
        payload = m.get_payload().encode()
        assert unquote(payload).rstrip(b"\n") == body_of(i).replace("\r\n", "\n").encode().rstrip(b"\n")
    assert not d.mbox_path.with_name("user.lock").exists()
    d.assert_alive()


def test_mbox_that_is_a_link_or_hard_link_is_left_alone(make_daemon, tmp_path):
    d = make_daemon(config={"mailbox_format": "mbox", "retry_min": "1h", "retry_max": "2h"})
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (d.mail_root / "localhost").mkdir(parents=True)
    (d.mail_root / "localhost" / "user").symlink_to(victim)
    (d.mail_root / "localhost" / "other").hardlink_to(victim)
    qid = d.send(subject="planted")
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0]["dsn"] == "4.2.0", ev
    assert ev[0]["reason"].endswith("/localhost/user: symbolic link not followed"), ev
    qid = d.send(recipients=("other@localhost",), subject="linked")
    ev = d.wait_event("deferred", queue_id=qid)
    assert ev[0]["reason"].endswith("/localhost/other has 2 links, not 1"), ev
    assert victim.read_bytes() == b"precious\n"
    assert not (d.mail_root / "localhost" / "user.lock").exists()
    assert not (d.mail_root / "localhost" / "other.lock").exists()
