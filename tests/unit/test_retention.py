"""Retention and erasure on small data: the store's batch queries, the
purge job (agi_app.retention.Retention) on a clock, the erasure of an order
or a phone number, and the DELETE routes through a real Site.

Everything runs on a MemoryStore (the real SQLite store, in memory, without
threads) and real files in a temporary folder; file removals run at once
(``run_blocking`` is synchronous here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task

from agi_app.errors import NotFound
from agi_app.events.delivery import DeliverySettings
from agi_app.events.service import EventService
from agi_app.netguard import TargetGuard
from agi_app.retention import (
    CallInProgress,
    Erasure,
    ErasureFailed,
    Retention,
    phone_spellings,
    remove_files,
)
from agi_app.store.testing import MemoryStore, fired
from agi_app.web import Router, build_site
from agi_app.web.erasure import ErasureEndpoints
from agi_app.web.testing import MemoryHTTP

DAY = 86400
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
KEY = "k-erase"


def at_once(fn, *args):
    return defer.maybeDeferred(fn, *args)


def _reactor():
    from twisted.internet import reactor

    return reactor


class Log:
    """A call log with calls at chosen times, their recording files on disk."""

    def __init__(self, tmp_path: Path):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.store = MemoryStore(self.clock)
        self.folder = tmp_path / "monitor"
        self.folder.mkdir()
        self.n = 0

    def call(self, day: float, *, order_id="o-1", phone="380631112233", sip="1000",
             kind="makeCall", finished=True, recorded=True) -> str:  # fmt: skip
        """A call created ``day`` days after T0 (the clock is put there)."""
        self.n += 1
        call_id = f"c{self.n:04d}"
        self.clock.advance(T0 + day * DAY - self.clock.seconds())
        fired(self.store.create_call(
            call_id=call_id, kind=kind, sip=sip, phone=phone, order_id=order_id,
            external_key=None, params={"n": self.n},
        ))  # fmt: skip
        fired(self.store.add_status(call_id, "OPERATOR_CALLTO"))
        if recorded:
            path = self.folder / f"{order_id}_{call_id}.wav"
            path.write_bytes(b"RIFF" + b"\0" * 40)
            fired(self.store.add_recording(call_id=call_id, path=str(path)))
        if finished:
            fired(self.store.add_status(call_id, "FINISH", talk_seconds=1.0))
        return call_id

    def now(self, day: float) -> None:
        self.clock.advance(T0 + day * DAY - self.clock.seconds())

    def rows(self, table: str) -> int:
        return fired(self.store._run(self.store._scalar, f"SELECT count(*) FROM {table}"))

    def kept_total(self) -> int:
        """The recordings' count the pager uses (kept by triggers)."""
        return fired(self.store.recordings(1, 1)).total

    def files(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()}

    def calls(self) -> list[str]:
        return [c["call_id"] for c in self.store.all_calls()]


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path)


# The store's batch queries are tested on both engines in
# test_retention_store_engines.py.

# -- the purge job -----------------------------------------------------------------------


def retention(log: Log, **kw) -> Retention:
    kw.setdefault("batch_size", 3)
    kw.setdefault("pause", 0)
    kw.setdefault("idle_ratio", 0)  # (the clock here is not the wall's)
    return Retention(log.store, clock=log.clock, run_blocking=at_once, **kw)


@pytest_twisted.ensureDeferred
async def test_history_older_than_the_limit_goes_with_its_files_newer_stays(log):
    old = [log.call(d) for d in (1, 2, 3, 4, 5, 6, 7)]
    old_open = log.call(8, finished=False)
    new = [log.call(d) for d in (100, 200)]
    log.now(400)  # 400 days after T0: keep 300 days
    report = await retention(log, history_days=300).run()
    assert (report.calls, report.entries, report.recordings, report.files) == (7, 21, 7, 7)
    assert report.batches == 3  # 3 + 3 + 1 calls
    assert log.calls() == [old_open, *new]
    assert log.files() == {f"o-1_{c}.wav" for c in (old_open, *new)}
    assert log.rows("call_status") == 2 + 3 + 3
    assert log.rows("recordings") == log.kept_total() == 3
    assert not set(old) & set(log.calls())
    # nothing more to do
    assert (await retention(log, history_days=300).run()).calls == 0


@pytest_twisted.ensureDeferred
async def test_old_recordings_go_the_calls_and_their_history_stay(log):
    old = [log.call(d) for d in (1, 2, 3, 4)]
    new = log.call(95)
    log.now(100)
    report = await retention(log, recordings_days=30).run()
    assert (report.calls, report.recordings, report.files) == (0, 4, 4)
    assert log.calls() == [*old, new]
    assert [r["call_id"] for r in log.store.all_recordings()] == [new]
    assert log.files() == {f"o-1_{new}.wav"}
    assert fired(log.store.recordings(1, 20)).total == 1
    assert log.store.words(old[0]) == ["CALL", "OPERATOR_CALLTO", "FINISH"]


@pytest_twisted.ensureDeferred
async def test_a_file_already_gone_is_no_error_and_one_that_cannot_go_keeps_its_row(log):
    gone, stuck, fine = log.call(1), log.call(2), log.call(3)
    (log.folder / f"o-1_{gone}.wav").unlink()
    # a directory where the file was: it cannot be removed like a file
    (log.folder / f"o-1_{stuck}.wav").unlink()
    (log.folder / f"o-1_{stuck}.wav").mkdir()
    log.now(100)
    report = await retention(log, history_days=30, batch_size=1).run()
    assert (report.calls, report.files, report.failed) == (2, 1, 1)
    assert log.calls() == [stuck]  # its rows still point at what is still there
    assert [r["call_id"] for r in log.store.all_recordings()] == [stuck]
    assert fine not in log.calls()


@pytest_twisted.ensureDeferred
async def test_the_job_runs_at_start_and_then_every_interval_on_the_clock(log):
    log.call(1)
    job = retention(log, history_days=10, interval=3600)
    log.now(12)
    job.start()
    assert log.calls() == [] and job.last.calls == 1
    second = log.call(12)  # made at day 12: 10 days old at day 22
    log.now(22)
    log.clock.advance(1)  # the next run is due an hour after the first
    assert job.last.calls == 0 and log.calls() == [second]
    log.clock.advance(3600)
    assert job.last.calls == 1 and log.calls() == []
    job.stop()
    assert not log.clock.getDelayedCalls()


def test_without_limits_the_job_never_runs(log):
    job = retention(log)
    job.start()
    assert job.last is None and not log.clock.getDelayedCalls()


def test_batches_are_spaced_by_the_pause_on_the_clock(log):
    for d in range(1, 8):
        log.call(d)
    log.now(100)
    d = defer.ensureDeferred(retention(log, history_days=30, pause=0.5).run())
    assert log.rows("calls") == 4 and not d.called  # one batch, then a pause
    log.clock.advance(0.5)
    assert log.rows("calls") == 1 and not d.called
    log.clock.advance(0.5)  # the last batch (a short one: no pause after it)
    report = fired(d)
    assert (report.calls, report.batches) == (7, 3) and log.rows("calls") == 0


def test_remove_files_tells_removed_missing_and_failed(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    out = remove_files([str(tmp_path / n) for n in ("a", "b", "d", "a")])
    assert out.removed == [str(tmp_path / "a")] and out.missing == [str(tmp_path / "b")]
    assert list(out.failed) == [str(tmp_path / "d")]
    assert phone_spellings("+3805") == ["3805", "+3805"] == phone_spellings("3805")


# -- erasure ------------------------------------------------------------------------------


class NoSend:
    def __call__(self, request):
        return defer.Deferred()  # never answers: events stay queued


def erasure(log: Log, events=None, batch_size: int = 2) -> Erasure:
    return Erasure(log.store, events=events, run_blocking=at_once, hash_key=b"k" * 32,
                   batch_size=batch_size)  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_an_order_is_erased_with_its_files_and_the_erasure_logged(log):
    mine = [log.call(d, order_id="o-7") for d in (1, 2, 3)]
    other = log.call(4, order_id="o-8")
    counts = await erasure(log).erase_order("o-7")
    assert counts == {"calls": 3, "entries": 9, "recordings": 3, "files": 3, "events": 0}
    assert log.calls() == [other]
    assert log.files() == {f"o-8_{other}.wav"}
    assert log.kept_total() == log.rows("recordings") == 1
    [entry] = fired(log.store.erasures())
    assert (entry["subject"], entry["subject_id"], entry["calls"]) == ("order", "o-7", 3)
    assert not set(mine) & set(log.calls())
    with pytest.raises(NotFound) as again:
        await erasure(log).erase_order("o-7")
    assert again.value.code == "unknown_order"
    assert len(fired(log.store.erasures())) == 1  # nothing erased: nothing logged


@pytest_twisted.ensureDeferred
async def test_a_phone_is_erased_in_any_spelling_and_logged_by_a_keyed_hash(log):
    a = log.call(1, phone="+380631112233", order_id="o-1")
    b = log.call(2, phone="380631112233", order_id="o-2")
    keep = log.call(3, phone="380500000000", order_id="o-3")
    eraser = erasure(log)
    counts = await eraser.erase_phone("380631112233")
    assert (counts["calls"], counts["files"]) == (2, 2)
    assert log.calls() == [keep]
    [entry] = fired(log.store.erasures())
    assert entry["subject_id"] == eraser.phone_hash("+380631112233")
    assert "380631112233" not in json.dumps(entry)
    assert len(entry["subject_id"]) == 64
    assert a not in log.calls() and b not in log.calls()
    with pytest.raises(NotFound) as nothing:
        await eraser.erase_phone("380631112233")
    assert nothing.value.code == "unknown_phone"


@pytest_twisted.ensureDeferred
async def test_nothing_is_erased_while_a_call_of_the_subject_is_in_progress(log):
    done = log.call(1, order_id="o-7")
    going = log.call(2, order_id="o-7", finished=False)
    with pytest.raises(CallInProgress) as refused:
        await erasure(log).erase_order("o-7")
    assert refused.value.status == 409 and refused.value.extra == {"call_ids": [going]}
    assert log.calls() == [done, going] and len(log.files()) == 2
    assert fired(log.store.erasures()) == []


@pytest_twisted.ensureDeferred
async def test_a_file_that_cannot_be_removed_stops_the_erasure_and_what_was_done_is_logged(log):
    first = log.call(1, order_id="o-7")
    stuck = log.call(2, order_id="o-7")
    (log.folder / f"o-7_{stuck}.wav").unlink()
    (log.folder / f"o-7_{stuck}.wav").mkdir()
    with pytest.raises(ErasureFailed):
        await erasure(log, batch_size=1).erase_order("o-7")
    assert log.calls() == [stuck]  # the first batch went; the stuck one stays whole
    assert first not in log.calls()
    [entry] = fired(log.store.erasures())
    assert entry["calls"] == 1


@pytest_twisted.ensureDeferred
async def test_queued_webhook_events_of_the_subject_are_erased_too(log):
    service = EventService(
        log.store, send=NoSend(), clock=log.clock, settings=DeliverySettings(),
        guard=TargetGuard(["127.0.0.0/8"]),
    )  # fmt: skip
    await service.start()
    await service.subscribe("1000", url="http://127.0.0.1:9/hook", method="POST",
                            event_type="hangup")  # fmt: skip
    call = log.call(1, order_id="o-7", phone="380631112233")
    other = log.call(2, order_id="o-8", phone="380500000000")
    for fields in (
        {"CallID": call, "OrderID": "o-7"},
        {"CallID": "live-1", "CalledNumber": "380631112233"},  # a call agi_app did not place
        {"CallID": other, "OrderID": "o-8", "CalledNumber": "380500000000"},
    ):
        await service.publish("1000", "hangup", fields)
    counts = await erasure(log, events=service).erase_phone("+380631112233")
    assert (counts["calls"], counts["events"]) == (1, 2)
    [pending] = fired(log.store.pending_deliveries(1))
    assert pending["fields"]["CallID"] == other
    assert log.rows("events") == 1
    service.stop()


# -- the routes ---------------------------------------------------------------------------


@pytest.fixture
def http(log):
    router = Router()
    ErasureEndpoints(erasure(log)).add_routes(router)
    return MemoryHTTP(build_site(router, api_keys=(KEY,), static_dir=None, clock=_reactor()),
                      _reactor())  # fmt: skip


async def delete(http, path, key=KEY):
    headers = {"X-API-Key": key} if key else {}
    response = await http.request("DELETE", "http://127.0.0.1" + path, headers=headers)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_delete_order_data_answers_what_was_erased(log, http):
    log.call(1, order_id="o-7")
    assert await delete(http, "/api/orderData?order_id=o-7", key=None) == (
        401, {"error": {"code": "unauthorized",
                        "message": "a valid API key is required (X-API-Key)"}})  # fmt: skip
    code, body = await delete(http, "/api/orderData.json?order_id=o-7")
    assert (code, body) == (200, {"erased": {"calls": 1, "entries": 3, "recordings": 1,
                                             "files": 1, "events": 0}})  # fmt: skip
    code, body = await delete(http, "/api/orderData?order_id=o-7")
    assert (code, body["error"]["code"]) == (404, "unknown_order")
    code, body = await delete(http, "/api/orderData?order_id=o%207")
    assert (code, body["error"]["code"]) == (400, "invalid_order_id")
    code, body = await delete(http, "/api/orderData")
    assert (code, body["error"]["code"]) == (400, "missing_order_id")


@pytest_twisted.ensureDeferred
async def test_delete_phone_data_refuses_during_a_call_then_erases(log, http):
    log.call(1, phone="380631112233")
    going = log.call(2, phone="380631112233", finished=False)
    code, body = await delete(http, "/api/phoneData?phone=%2B380631112233")
    assert (code, body["error"]["code"], body["call_ids"]) == (409, "call_in_progress", [going])
    fired(log.store.add_status(going, "FINISH"))
    code, body = await delete(http, "/api/phoneData?phone=%2B380631112233")
    assert (code, body["erased"]["calls"], body["erased"]["files"]) == (200, 2, 2)
    code, body = await delete(http, "/api/phoneData?phone=12")
    assert (code, body["error"]["code"]) == (400, "invalid_phone")
    code, body = await delete(http, "/api/phoneData?phone=380631112233")
    assert (code, body["error"]["code"]) == (404, "unknown_phone")
