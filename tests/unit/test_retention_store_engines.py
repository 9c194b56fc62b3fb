"""The store's retention and erasure queries on both engines: old calls and
recordings in batches, a subject's calls, their deletion (counts kept for
the pager), queued events of a subject, and the erasure log."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import task

from agi_app.store import store_at
from agi_app.store.pg_testing import Handover
from agi_app.store.pg_testing import settled as fired
from agi_app.store.testing import MemoryStore

DAY = 86400
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Log:
    """A call log with calls at chosen times, on the engine under test."""

    def __init__(self, location: str | None):
        self.clock = task.Clock()
        self.clock.advance(T0)
        if location is None:
            self.store = MemoryStore(self.clock)
        else:
            self.store = store_at(location, Handover(), clock=self.clock)
            self.store.open()
        self.n = 0

    def call(self, day: float, *, order_id="o-1", phone="380631112233", sip="1000",
             kind="makeCall", finished=True, recorded=True) -> str:  # fmt: skip
        self.n += 1
        call_id = f"c{self.n:04d}"
        self.clock.advance(T0 + day * DAY - self.clock.seconds())
        fired(self.store.create_call(
            call_id=call_id, kind=kind, sip=sip, phone=phone, order_id=order_id,
            external_key=None, params={"n": self.n},
        ))  # fmt: skip
        fired(self.store.add_status(call_id, "OPERATOR_CALLTO"))
        if recorded:
            fired(self.store.add_recording(call_id=call_id,
                                           path=f"/monitor/{order_id}_{call_id}.wav"))
        if finished:
            fired(self.store.add_status(call_id, "FINISH", talk_seconds=1.0))
        return call_id

    def rows(self, table: str) -> int:
        return fired(self.store._run(self.store._select,
                                     f"SELECT count(*) AS n FROM {table}"))[0]["n"]  # fmt: skip

    def kept_total(self) -> int:
        return fired(self.store.recordings(1, 1)).total

    def calls(self) -> list[str]:
        rows = fired(self.store._run(self.store._select,
                                     "SELECT call_id FROM calls ORDER BY created_at"))
        return [r["call_id"] for r in rows]

    def recordings(self) -> list[dict]:
        sql = "SELECT record_id, call_id FROM recordings ORDER BY record_id"
        return fired(self.store._run(self.store._select, sql))

    def words(self, call_id: str) -> list[str]:
        return [e["status"] for e in fired(self.store.statuses(call_id))]


@pytest.fixture
def log(store_engine: str, request: pytest.FixtureRequest):
    location = None
    if store_engine == "postgresql":
        location = request.getfixturevalue("pg_cluster").new_schema()
    made = Log(location)
    yield made
    fired(made.store.close())


def test_old_calls_are_the_finished_ones_before_the_time_oldest_first(log):
    new = log.call(300)
    old_open = log.call(1, finished=False)
    second = log.call(20)
    first = log.call(10, recorded=False)
    batch = fired(log.store.old_calls("2026-06-01T00:00:00.000Z", 10))
    assert batch.call_ids == [first, second]
    assert [call for call, _ in batch.files] == [second]
    assert batch.files[0][1].endswith(f"_{second}.wav")
    assert fired(log.store.old_calls("2026-06-01T00:00:00.000Z", 1)).call_ids == [first]
    assert fired(log.store.old_calls("2026-06-01T00:00:00.000Z", 10, skip=[first])).call_ids == [
        second]
    assert new not in batch.call_ids and old_open not in batch.call_ids


def test_delete_calls_removes_their_rows_and_keeps_the_counts_right(log):
    a, b, c = log.call(1), log.call(2), log.call(3)
    open_call = log.call(4, finished=False)
    deleted = fired(log.store.delete_calls([a, c, open_call, "no-such-call"]))
    assert (deleted.calls, deleted.entries, deleted.recordings) == (2, 6, 2)
    assert sorted(Path(p).name for p in deleted.paths) == [f"o-1_{a}.wav", f"o-1_{c}.wav"]
    assert log.calls() == [b, open_call]
    assert log.rows("call_status") == 3 + 2
    assert log.rows("recordings") == log.kept_total() == 2
    assert [r["call_id"] for r in fired(log.store.recordings(1, 10)).items] == [open_call, b]
    assert log.words(b) == ["CALL", "OPERATOR_CALLTO", "FINISH"]


def test_old_recordings_and_their_deletion_skip_calls_in_progress(log):
    a = log.call(1)
    open_call = log.call(2, finished=False)
    b = log.call(3)
    later = log.call(100)
    rows = fired(log.store.old_recordings("2026-02-01T00:00:00.000Z", 10))
    ids = [r["record_id"] for r in rows]
    assert [Path(r["path"]).name for r in rows] == [f"o-1_{a}.wav", f"o-1_{b}.wav"]
    everything = [r["record_id"] for r in log.recordings()]
    assert fired(log.store.delete_recordings(everything[:3])) == 2  # not the open call's
    assert [r["call_id"] for r in log.recordings()] == [open_call, later]
    assert log.kept_total() == 2
    assert set(ids) <= set(everything[:3])
    assert log.calls() == [a, open_call, b, later]  # the calls stay


def test_subject_calls_of_an_order_and_of_a_phone_in_any_spelling(log):
    a = log.call(1, order_id="o-7", phone="380631112233")
    b = log.call(2, order_id="o-8", phone="+380631112233")
    first = log.call(3, order_id="o-9", phone="380500000000", sip="380631112233",
                     kind="phoneToPhone")  # fmt: skip
    ext = log.call(4, order_id="o-9", phone="380500000000", sip="380631112233")
    going = log.call(5, order_id="o-7", phone="380509999999", finished=False)
    order = fired(log.store.subject_calls(order_id="o-7"))
    assert (order.call_ids, list(order.open_ids)) == ([a], [going])
    for spelling in ("380631112233", "+380631112233"):
        phone = fired(log.store.subject_calls(phone=spelling))
        assert phone.call_ids == [a, b, first] and list(phone.open_ids) == []
    assert ext not in fired(log.store.subject_calls(phone="380631112233", limit=10)).call_ids
    assert fired(log.store.subject_calls(phone="380631112233", limit=2)).call_ids == [a, b]
    with pytest.raises(ValueError):
        log.store.subject_calls(order_id="o-7", phone="380631112233")


def test_the_erasure_log_keeps_counts_and_the_subject_id(log):
    entry = fired(log.store.log_erasure("order", "o-7", {"calls": 2, "entries": 9}))
    assert entry["subject_id"] == "o-7" and entry["calls"] == 2 and entry["files"] == 0
    fired(log.store.log_erasure("phone", "ab12", {"calls": 1}))
    assert [e["subject"] for e in fired(log.store.erasures())] == ["order", "phone"]
    assert [e["id"] for e in fired(log.store.erasures("phone", "ab12"))] == [entry["id"] + 1]
    with pytest.raises(ValueError):
        log.store.log_erasure("email", "x", {})


def test_queued_events_of_a_subject_are_erased_with_their_outbox(log):
    sub = fired(log.store.add_subscription(extension="1000", url="http://127.0.0.1:9/h",
                                           method="POST", event_type="hangup", secret="s"))
    for fields in ({"CallID": "c1", "OrderID": "o-7"},
                   {"CallID": "live-1", "CalledNumber": "380631112233"},
                   {"CallID": "c2", "OrderID": "o-8", "CalledNumber": "380500000000"}):
        fired(log.store.enqueue_event(event_type="hangup", extension="1000", fields=fields,
                                      time_us=1, created_at=T0, subscription_ids=[sub["id"]]))
    n, subs = fired(log.store.erase_events(call_ids=["c1"], phones=["380631112233"]))
    assert (n, subs) == (2, [sub["id"]])
    assert log.rows("events") == log.rows("event_outbox") == 1
    assert fired(log.store.erase_events(order_id="o-9")) == (0, [])
