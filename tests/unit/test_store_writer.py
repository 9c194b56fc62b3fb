"""The store's worker thread (:class:`agi_app.store.engine.WriterThread`)
and the grouping of writes under load (:data:`GROUP_WINDOW`)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from agi_app.store import SQLiteStore
from agi_app.store import engine as engine_module
from agi_app.store.engine import WriterThread


def _reactor():
    from twisted.internet import reactor

    return reactor


def test_writer_thread_runs_work_in_order_off_the_calling_thread_and_reports_failures():
    writer = WriterThread("test-writer")
    writer.start()
    done = threading.Event()
    seen: list = []
    caller = threading.get_ident()

    def job(n: int) -> tuple[int, bool]:
        if n == 2:
            raise ValueError("two")
        return n, threading.get_ident() != caller

    def report(ok: bool, result: object) -> None:
        seen.append((ok, result))
        if len(seen) == 4:
            done.set()

    for n in range(4):
        writer.callInThreadWithCallback(report, job, n)
    assert done.wait(10)
    writer.stop()
    assert [ok for ok, _ in seen] == [True, True, False, True]
    assert [r for ok, r in seen if ok] == [(0, True), (1, True), (3, True)]
    assert seen[2][1].check(ValueError)


def test_writer_thread_stop_finishes_what_was_handed_over_then_drops_more():
    writer = WriterThread("test-writer")
    writer.start()
    ran: list[int] = []
    for n in range(50):
        writer.callInThreadWithCallback(None, ran.append, n)
    writer.stop()
    assert ran == list(range(50))
    writer.callInThreadWithCallback(None, ran.append, 99)
    assert ran == list(range(50))


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


def _turn():
    """A Deferred firing in a later reactor turn."""
    d: defer.Deferred = defer.Deferred()
    _reactor().callLater(0, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_under_load_writes_of_several_turns_share_a_batch(store, monkeypatch):
    monkeypatch.setattr(engine_module, "GROUP_WINDOW", 0.2)
    await _call(store, "a")  # a batch just came back: the store is busy
    await _turn()  # (work queued by its callbacks would go at once, as the next batch)
    batches = store.batches
    first = store.add_status("a", "OPERATOR_CALLTO")
    await _turn()
    second = store.add_status("a", "OPERATOR_PICKUP")
    await defer.gatherResults([first, second])
    assert store.batches == batches + 1


@pytest_twisted.ensureDeferred
async def test_idle_a_write_goes_at_the_end_of_its_turn(store, monkeypatch):
    monkeypatch.setattr(engine_module, "GROUP_WINDOW", 30.0)
    monkeypatch.setattr(engine_module, "BUSY_WITHIN", 0.0)
    # with no batch back recently, a 30 s window would time the test out
    row, created = await _call(store, "b")
    assert created and row["call_id"] == "b"
