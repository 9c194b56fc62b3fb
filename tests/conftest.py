"""Shared test setup: Twisted's log goes to stderr (warnings and worse), so a
failing test shows what the service logged, e.g. the trace behind a 500;
the store's tests run on both engines (``store_location``), PostgreSQL on a
throwaway cluster of the session's own (``pg_cluster``)."""

from __future__ import annotations

import os
import sys

import pytest
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)

from agi_app.store.pg_testing import ClusterError, ThrowawayCluster, missing_prerequisites


class _Stderr:
    # pytest swaps sys.stderr per test; look it up at each write
    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


globalLogPublisher.addObserver(
    FilteringLogObserver(
        textFileLogObserver(_Stderr()),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
)


# -- the store on both engines ------------------------------------------------

#: the engines every contract test of the store runs on
STORE_ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the whole test session (started on
    first use, about two seconds).  Without PostgreSQL the tests that need it
    skip, except under ``CI=true``, where they fail with the reason."""
    reason = missing_prerequisites()
    cluster = ThrowawayCluster()
    if reason is None:
        try:
            cluster.start()
        except ClusterError as e:
            reason = str(e)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unavailable: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    yield cluster
    cluster.stop()


@pytest.fixture(params=STORE_ENGINES)
def store_engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: each test that uses it runs once per engine."""
    return request.param


@pytest.fixture
def store_location(request: pytest.FixtureRequest, store_engine: str, tmp_path) -> str:
    """Where a fresh, empty store of the engine under test lives: an SQLite
    file's path, or the URL of a new schema on the session's PostgreSQL
    cluster.  Open it with :func:`agi_app.store.store_at` (as often as a
    test likes: it stays until the session ends)."""
    if store_engine == "sqlite":
        return str(tmp_path / "var" / "store.sqlite3")
    return request.getfixturevalue("pg_cluster").new_schema()
