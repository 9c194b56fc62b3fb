"""A store nobody closed (a crash path, an interrupted test) does not keep
the process from exiting: its threads are daemons.  Closing it is still
what a clean stop does (the reactor's shutdown trigger)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from agi_app.store import store_at

    store = store_at(sys.argv[1], reactor)
    store.open()
    # work handed to the store's threads, the reactor never run, no close()
    store.subscriptions()
    print("opened", flush=True)
    """
)


def _exits(location: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM, location],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_an_sqlite_store_left_open_does_not_hang_the_exit(tmp_path):
    try:
        run = _exits(str(tmp_path / "calls.db"))
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit in 30 s: a store thread kept it alive")
    assert (run.returncode, run.stdout) == (0, "opened\n"), run.stderr


def test_a_postgresql_store_left_open_does_not_hang_the_exit(pg_cluster):
    try:
        run = _exits(pg_cluster.new_schema())
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit in 30 s: a store thread kept it alive")
    assert (run.returncode, run.stdout) == (0, "opened\n"), run.stderr
