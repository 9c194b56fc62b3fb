"""The store's worker thread (:class:`agi_app.store.engine.WriterThread`)."""

from __future__ import annotations

import threading

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
