"""pytest fixtures for the facteur integration tests (see facteur_harness.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import facteur_harness as h  # noqa: E402


@pytest.fixture
def make_daemon(tmp_path):
    """Factory: make_daemon(config={...}, extra_lines=[...], env={...},
    start=True) -> a started Daemon. The first daemon of a test lives in
    tmp_path itself, others in tmp_path/d1, d2... At the end of the test every
    daemon still running is stopped with SIGTERM and must exit 0 within 10 s;
    one that died on its own is reported."""
    made = []

    def factory(config=None, extra_lines=(), env=None, start=True, port=None):
        workdir = tmp_path if not made else tmp_path / ("d%d" % len(made))
        d = h.Daemon(workdir, config=config, extra_lines=extra_lines, env=env, port=port)
        made.append(d)
        if start:
            d.start()
        return d

    yield factory

    problems = []
    for d in made:
        if d.proc is None:
            continue
        if d.alive():
            try:
                d.stop_ok()
            except AssertionError as e:
                problems.append(str(e))
        elif not d.expected_dead and not d.observed_exit:
            problems.append("facteurd died during the test (status %s):\n%s"
                            % (d.proc.returncode, d.log_tail()))
        d.close_log()
    h.kill_leftovers()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def daemon(make_daemon):
    """A facteurd with the default test configuration, started."""
    return make_daemon()


def pytest_sessionfinish(session, exitstatus):
    h.kill_leftovers()
