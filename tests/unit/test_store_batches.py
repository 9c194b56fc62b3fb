"""The store's writer thread takes the work of one reactor turn as one
batch, one transaction: each piece in a savepoint of its own, every
Deferred fired only once the batch has committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from agi_app.store import SQLiteStore, UnknownCall


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(str(tmp_path / "store.sqlite3"), reactor=_reactor())
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


def _call(store: SQLiteStore, call_id: str):
    return store.create_call(
        call_id=call_id, kind="makeCall", sip="1000", phone="380639920000",
        order_id=f"o-{call_id}", external_key=None, params={},
    )  # fmt: skip


def _committed_statuses(store: SQLiteStore) -> list[tuple[str, str]]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute("SELECT call_id, status FROM call_status ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_one_turn_is_one_batch_and_one_failure_stays_its_own(store: SQLiteStore):
    batches = store.batches
    seen_when_fired: list[list[tuple[str, str]]] = []
    # queued in one reactor turn
    ds = [_call(store, "a"), _call(store, "b")]
    ds.append(store.add_status("a", "OPERATOR_CALLTO"))
    bad = store.add_status("nobody", "OPERATOR_CALLTO")
    ds.append(store.add_status("b", "OPERATOR_CALLTO"))
    ds[-1].addCallback(lambda r: seen_when_fired.append(_committed_statuses(store)) or r)
    results = await defer.gatherResults(ds)
    with pytest.raises(UnknownCall):
        await bad
    assert store.batches == batches + 1 and store.batched >= 5
    assert [r["status"] for r in results[2:]] == ["OPERATOR_CALLTO", "OPERATOR_CALLTO"]
    expected = [("a", "CALL"), ("b", "CALL"), ("a", "OPERATOR_CALLTO"), ("b", "OPERATOR_CALLTO")]
    # durable before the Deferred fired: another connection saw every row
    assert seen_when_fired == [expected]
    assert _committed_statuses(store) == expected


@pytest_twisted.ensureDeferred
async def test_work_queued_while_a_batch_runs_goes_next_in_order(store: SQLiteStore):
    await _call(store, "c")
    first = store.add_status("c", "OPERATOR_CALLTO")
    later: list[defer.Deferred] = []
    # queued from the callback, while the worker is idle again
    first.addCallback(lambda r: later.append(store.add_status("c", "OPERATOR_PICKUP")) or r)
    await first
    await later[0]
    assert [s for c, s in _committed_statuses(store)] == ["CALL", "OPERATOR_CALLTO",
                                                          "OPERATOR_PICKUP"]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_close_writes_what_was_queued(tmp_path: Path):
    s = SQLiteStore(str(tmp_path / "s.sqlite3"), reactor=_reactor())
    s.open()
    d = _call(s, "z")
    await s.close()
    row, created = await d
    assert created and row["call_id"] == "z"
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 1
    conn.close()
