"""The store on both engines: schema and migrations, calls and statuses,
recordings, operators, history queries and crash safety.  Every test that
takes ``store`` or ``store_location`` runs on SQLite and on PostgreSQL (see
tests/conftest.py); SQLite's worker thread and inline reads, and
PostgreSQL's locks between several processes, have tests of their own."""

from __future__ import annotations

import inspect
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task

from agi_app.store import (
    FINAL_STATUSES,
    ExternalKeyConflict,
    SQLiteStore,
    Store,
    StoreError,
    UnknownCall,
    iso_time,
    store_at,
)
from agi_app.store.schema import MIGRATIONS
from agi_app.store.testing import MemoryStore, fired

T0 = 1795640677.123  # 2026-11-25T21:04:37.123Z


def _reactor():
    from twisted.internet import reactor

    return reactor


def open_store(path: Path, clock: task.Clock | None = None) -> SQLiteStore:
    store = SQLiteStore(str(path), reactor=_reactor(), clock=clock)
    store.open()
    return store


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(T0)
    return c


def open_at(location: str, clock: task.Clock | None = None) -> Store:
    store = store_at(location, _reactor(), clock=clock)
    store.open()
    return store


@pytest.fixture
def store(store_location: str, clock: task.Clock):
    """An open store of the engine under test (both, one after the other)."""
    s = open_at(store_location, clock)
    yield s
    pytest_twisted.blockon(s.close())


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: task.Clock):
    """An open SQLite store, for the tests of SQLite's own machinery."""
    s = open_store(tmp_path / "var" / "store.sqlite3", clock)
    yield s
    pytest_twisted.blockon(s.close())


async def make_call(store: Store, call_id: str = "c1", **over) -> dict:
    args = dict(
        call_id=call_id,
        kind="makeCall",
        sip="1000",
        phone="380639920000",
        order_id="order-15",
        external_key=None,
        params={"sip": "1000", "phone": "380639920000"},
    )
    args.update(over)
    call, created = await store.create_call(**args)
    assert created
    return call


# -- time -------------------------------------------------------------------


def test_iso_time_is_utc_milliseconds_truncated():
    assert iso_time(T0) == "2026-11-25T21:04:37.123Z"
    assert iso_time(1795640677.9999) == "2026-11-25T21:04:37.999Z"
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"


# -- schema ---------------------------------------------------------------


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_open_migrates_an_empty_file_and_reopens_it(tmp_path: Path):
    path = tmp_path / "new" / "s.sqlite3"
    store = open_store(path)
    try:
        call = (
            await store.create_call(
                call_id="keep", kind="incoming", sip=None, phone="123", order_id=None,
                external_key=None, params={},
            )
        )[0]
    finally:
        await store.close()
    assert {"calls", "call_status", "recordings", "operators", "operator_history"} <= _tables(
        path
    )
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

    again = open_store(path)  # an existing, current file: no step runs again
    try:
        assert await again.get_call("keep") == call
    finally:
        await again.close()


def test_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(path)


@pytest_twisted.ensureDeferred
async def test_connection_settings(sqlite_store: SQLiteStore):
    store = sqlite_store
    def pragmas():
        return {
            name: store._conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }

    got = await store._run(pragmas)
    assert got == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 5000}


@pytest_twisted.ensureDeferred
async def test_writes_run_only_on_the_worker_thread(sqlite_store: SQLiteStore):
    store = sqlite_store
    threads: set[int] = set()
    await store._run(store._conn.set_trace_callback, lambda sql: threads.add(threading.get_ident()))
    await make_call(store)
    await store.add_status("c1", "OPERATOR_CALLTO")
    await store.order_history("order-15")
    assert threads and threading.get_ident() not in threads
    assert len(threads) == 1


async def _seen_by(store: SQLiteStore, read) -> tuple[set[int], object, bool, bool]:
    """Which threads ran SQL on the inline reader and the writer during ``read``
    (the writer's batch framing around the tracing itself left out)."""
    inline: set[int] = set()
    worker: set[int] = set()
    framing = ("BEGIN", "COMMIT", "SAVEPOINT job", "RELEASE job")

    def traced(sql: str) -> None:
        if sql not in framing:
            worker.add(threading.get_ident())

    store._reader.set_trace_callback(lambda sql: inline.add(threading.get_ident()))
    await store._run(store._conn.set_trace_callback, traced)
    result = await read()
    store._reader.set_trace_callback(None)
    await store._run(store._conn.set_trace_callback, None)
    return inline | worker, result, bool(inline), bool(worker)


@pytest_twisted.ensureDeferred
async def test_api_reads_run_inline_and_see_every_committed_write(sqlite_store: SQLiteStore):
    store = sqlite_store
    await make_call(store)
    for status in ("OPERATOR_CALLTO", "OPERATOR_PICKUP"):
        entry = await store.add_status("c1", status)
        # the write's Deferred has fired: an inline read sees it at once
        page = await store.history_after_json(entry["id"] - 1, 10)
        assert [e["status"] for e in page.entries()] == [status]
    threads, page, inline, worker = await _seen_by(
        store, lambda: store.order_history_json("order-15")
    )
    assert threads == {threading.get_ident()} and inline and not worker
    assert page.count == 3
    for read in (
        lambda: store.recordings_json(1, 20, "/r/"),
        lambda: store.recordings(1, 20),
        lambda: store.order_calls("order-15"),
        lambda: store.operators(1, 20),
        lambda: store.operator_history(None, 1, 20),
        lambda: store.operator_history("1000", 1, 20),
    ):
        threads, _, inline, worker = await _seen_by(store, read)
        assert inline and not worker and threads == {threading.get_ident()}
    assert store.reads_moved == 0


@pytest_twisted.ensureDeferred
async def test_a_read_over_its_budget_is_done_again_on_the_worker(sqlite_store: SQLiteStore):
    store = sqlite_store
    await make_call(store)
    for _ in range(200):
        await store.add_status("c1", "OPERATOR_CALLTO")
    expected = await store.statuses("c1")  # worker thread
    store.read_budget = 0.0  # any read that reaches a progress check is over
    threads, page, inline, worker = await _seen_by(store, lambda: store.history_after_json(0, 500))
    assert inline and worker, "begun inline, finished on the worker"
    assert page.entries() == expected
    assert store.reads_moved == 1
    # a small read finishes before its first check: inline
    _, small, inline, worker = await _seen_by(store, lambda: store.operators(1, 20))
    assert small == (0, []) and inline and not worker
    assert store.reads_moved == 1


@pytest_twisted.ensureDeferred
async def test_a_read_the_reader_cannot_do_now_is_done_on_the_worker(sqlite_store: SQLiteStore):
    """The inline reader never waits for a lock: a busy file sends the read
    to the worker thread, which may wait; other errors fail the read."""
    store = sqlite_store
    await make_call(store)
    seen = []

    def busy_inline(conn, *args):
        seen.append(conn is store._reader)
        if conn is store._reader:
            raise sqlite3.OperationalError("database is locked")
        return store._entry_list(conn, *args)

    page = await store._read(busy_inline, "call_id = ?", ("c1",))
    assert seen == [True, False] and page.count == 1 and store.reads_moved == 1

    def broken(conn):
        raise ValueError("not a store problem")

    with pytest.raises(ValueError):
        await store._read(broken)
    assert store.reads_moved == 1


@pytest_twisted.ensureDeferred
async def test_reads_all_on_the_worker_without_a_budget(tmp_path: Path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), reactor=_reactor(), read_budget_us=0)
    store.open()
    try:
        assert store._reader is None
        await make_call(store)
        threads: set[int] = set()
        await store._run(
            store._conn.set_trace_callback, lambda sql: threads.add(threading.get_ident())
        )
        assert (await store.order_history_json("order-15")).count == 1
        assert threads and threading.get_ident() not in threads
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_closed_store_fails_calls(store_location: str):
    store = open_at(store_location)
    await store.close()
    with pytest.raises(StoreError):
        await store.get_call("x")
    await store.close()  # closing twice is harmless


# -- calls and statuses -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_call_writes_the_call_and_its_CALL_entry(store: SQLiteStore):
    call = await make_call(store, external_key="24")
    assert call == {
        "call_id": "c1",
        "kind": "makeCall",
        "sip": "1000",
        "phone": "380639920000",
        "order_id": "order-15",
        "external_key": "24",
        "params": {"sip": "1000", "phone": "380639920000"},
        "created_at": "2026-11-25T21:04:37.123Z",
        "final_status": None,
        "finished_at": None,
        "talk_seconds": None,
        "pbx": "default",
    }
    assert await store.get_call("c1") == call
    assert await store.get_call_by_external_key("24") == call
    assert await store.get_call("nope") is None
    entries = await store.statuses("c1")
    assert entries == [
        {
            "id": entries[0]["id"],
            "call_id": "c1",
            "order_id": "order-15",
            "status": "CALL",
            "time": "2026-11-25T21:04:37.123Z",
            "detail": None,
            "pbx": "default",
        }
    ]


@pytest_twisted.ensureDeferred
async def test_external_key_is_idempotent_for_the_same_parameters(store: SQLiteStore):
    first = await make_call(store, external_key="k", params={"a": 1, "b": [1, 2]})
    # the same parameters in another key order are the same request
    again, created = await store.create_call(
        call_id="c2", kind="makeCall", sip="1000", phone="380639920000", order_id="order-15",
        external_key="k", params={"b": [1, 2], "a": 1},
    )
    assert (again, created) == (first, False)
    assert await store.get_call("c2") is None
    assert len(await store.statuses("c1")) == 1

    with pytest.raises(ExternalKeyConflict) as e:
        await store.create_call(
            call_id="c3", kind="makeCall", sip="1000", phone="380639920000",
            order_id="order-15", external_key="k", params={"a": 2, "b": [1, 2]},
        )
    assert e.value.call_id == "c1"
    with pytest.raises(ExternalKeyConflict):
        await store.create_call(
            call_id="c4", kind="extToPhone", sip="1000", phone="380639920000",
            order_id="order-15", external_key="k", params={"a": 1, "b": [1, 2]},
        )
    assert await store.get_call("c3") is None and await store.get_call("c4") is None


@pytest_twisted.ensureDeferred
async def test_calls_without_external_key_never_conflict(store: SQLiteStore):
    await make_call(store, "a")
    await make_call(store, "b")
    assert (await store.get_call("b"))["external_key"] is None


def test_bad_kind_and_status_words_raise(store: SQLiteStore):
    with pytest.raises(ValueError):
        store.create_call(
            call_id="x", kind="teleport", sip=None, phone=None, order_id=None,
            external_key=None, params={},
        )
    with pytest.raises(ValueError):
        store.add_status("x", "RINGING")
    with pytest.raises(ValueError):
        store.add_status("x", "CALL", time="yesterday")
    with pytest.raises(ValueError):
        store.set_operator_status("1000", "away")


@pytest_twisted.ensureDeferred
async def test_add_status_until_the_final_one(store: SQLiteStore, clock: task.Clock):
    await make_call(store)
    clock.advance(1.5)
    e1 = await store.add_status("c1", "OPERATOR_CALLTO")
    assert e1["status"] == "OPERATOR_CALLTO" and e1["time"] == "2026-11-25T21:04:38.623Z"
    await store.add_status("c1", "OPERATOR_PICKUP")
    await store.add_status("c1", "CLIENT_CALLTO")
    await store.add_status("c1", "CLIENT_PICKUP", time="2026-11-25T21:05:00.000Z")
    fin = await store.add_status("c1", "FINISH", "normal clearing", talk_seconds=42.5)
    assert fin["detail"] == "normal clearing"
    call = await store.get_call("c1")
    assert call["final_status"] == "FINISH"
    assert call["finished_at"] == fin["time"]
    assert call["talk_seconds"] == 42.5

    assert await store.add_status("c1", "ERROR", "late") is None
    assert await store.add_status("c1", "CLIENT_PICKUP") is None
    statuses = [e["status"] for e in await store.statuses("c1")]
    assert statuses == [
        "CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH",
    ]
    ids = [e["id"] for e in await store.statuses("c1")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest_twisted.ensureDeferred
async def test_add_status_of_an_unknown_call_fails(store: SQLiteStore):
    with pytest.raises(UnknownCall):
        await store.add_status("ghost", "ERROR")


@pytest_twisted.ensureDeferred
async def test_racing_final_statuses_leave_exactly_one(store: SQLiteStore):
    calls = [f"race-{i}" for i in range(30)]
    for c in calls:
        await make_call(store, c)
    finals = sorted(FINAL_STATUSES)
    # Every part of the program tries to end every call at the same moment.
    pending = [
        (c, s, store.add_status(c, s, "from racer")) for s in finals for c in calls
    ]
    results = await defer.gatherResults([d for _, _, d in pending])
    for c in calls:
        won = [s for (cc, s, _), r in zip(pending, results, strict=True) if cc == c and r]
        assert len(won) == 1
        call = await store.get_call(c)
        assert call["final_status"] == won[0]
        final_entries = [e for e in await store.statuses(c) if e["status"] in FINAL_STATUSES]
        assert [e["status"] for e in final_entries] == won


@pytest_twisted.ensureDeferred
async def test_open_calls(store: SQLiteStore, clock: task.Clock):
    await make_call(store, "a")
    clock.advance(1)
    await make_call(store, "b", pbx="east")
    clock.advance(1)
    await make_call(store, "c")
    await store.add_status("c", "ERROR", "pbx unreachable")
    assert [c["call_id"] for c in await store.open_calls()] == ["a", "b"]
    assert [c["call_id"] for c in await store.open_calls("east")] == ["b"]
    assert [c["call_id"] for c in await store.open_calls("default")] == ["a"]


# -- history queries ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_order_history_and_calls(store: SQLiteStore, clock: task.Clock):
    await make_call(store, "a", order_id="o1")
    await make_call(store, "other", order_id="o2")
    clock.advance(1)
    await make_call(store, "b", order_id="o1")
    await store.add_status("a", "OPERATOR_BUSY")
    await store.add_status("b", "OPERATOR_CALLTO")
    rec = await store.add_recording(call_id="b", path="/rec/b.wav")

    history = await store.order_history("o1")
    assert [(e["call_id"], e["status"]) for e in history] == [
        ("a", "CALL"), ("b", "CALL"), ("a", "OPERATOR_BUSY"), ("b", "OPERATOR_CALLTO"),
    ]
    assert all(e["order_id"] == "o1" for e in history)
    calls = await store.order_calls("o1")
    assert [c["call_id"] for c in calls] == ["a", "b"]
    assert calls[0]["records"] == [] and calls[1]["records"] == [rec]
    assert calls[0]["final_status"] == "OPERATOR_BUSY"
    assert await store.order_calls("none") == [] and await store.order_history("none") == []


@pytest_twisted.ensureDeferred
async def test_history_as_json_text_is_the_same_history(store: SQLiteStore):
    """The JSON text handed to the CRM as is parses to exactly the dicts, with
    awkward details (quotes, backslashes, control characters, non-ASCII, and
    text that looks like an entry's start)."""
    await make_call(store, "a", order_id="o1")
    awkward = 'say "hi" \\ {"id":1,"x":2} \x01\t\n é ☎ \U0001f4de'
    await store.add_status("a", "OPERATOR_CALLTO", detail=awkward)
    await store.add_status("a", "OPERATOR_BUSY", detail="")
    listed = await store.order_history("o1")
    assert [e["detail"] for e in listed][1:] == [awkward, ""]
    text = await store.order_history_json("o1")
    assert text.count == 3 and text.last_id == listed[-1]["id"]
    assert text.entries() == listed == json.loads(text.json)
    page = await store.history_after_json(listed[0]["id"], 10)
    assert page.entries() == listed[1:] and page.count == 2 and page.last_id == listed[-1]["id"]
    none = await store.history_after_json(listed[-1]["id"], 10)
    assert (none.json, none.count, none.last_id) == ("[]", 0, None)
    assert (await store.order_history_json("nobody")).count == 0


def test_entry_list_is_sorted_when_the_aggregate_was_not(sqlite_store: SQLiteStore, monkeypatch):
    """SQLite does not promise the order an aggregate sees its rows in: a
    text out of order is put in order (ids are read off the text)."""
    store = sqlite_store
    unordered = json.dumps([
        {"id": 7, "call_id": "a", "order_id": None, "status": "FINISH", "time": "t",
         "detail": None},
        {"id": 3, "call_id": "a", "order_id": None, "status": "CALL", "time": "t",
         "detail": '{"id":99,'},
    ], separators=(",", ":"))  # fmt: skip
    monkeypatch.setattr(store, "_scalar", lambda sql, params, conn=None: unordered)
    got = store._entry_list(store._conn, "call_id = ?", ("a",))
    assert [e["id"] for e in got.entries()] == [3, 7]
    assert got.count == 2 and got.last_id == 7
    monkeypatch.setattr(
        store, "_scalar", lambda sql, params, conn=None: unordered.replace("7", "1", 1)
    )
    assert store._entry_list(store._conn, "call_id = ?", ("a",)).last_id == 3


@pytest_twisted.ensureDeferred
async def test_history_after_pages_by_id(store: SQLiteStore):
    await make_call(store, "a")
    await make_call(store, "b")
    for s in ("OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO"):
        await store.add_status("a", s)
        await store.add_status("b", s)
    every = await store.history_after(0, 1000)
    assert len(every) == 8
    ids = [e["id"] for e in every]
    assert ids == sorted(ids)
    assert await store.history_after(ids[2], 3) == every[3:6]
    assert await store.history_after(ids[-1], 10) == []
    only_b = await store.history_after(0, 100, call_id="b")
    assert [e["call_id"] for e in only_b] == ["b"] * 4
    assert await store.history_after(only_b[1]["id"], 1, call_id="b") == [only_b[2]]


@pytest_twisted.ensureDeferred
async def test_polling_while_writing_never_misses_or_repeats(store: SQLiteStore):
    seen: list[int] = []
    last = 0
    expected = 0
    for round_ in range(20):
        c = f"p{round_}"
        writes = [store.create_call(
            call_id=c, kind="incoming", sip=None, phone="123", order_id=None,
            external_key=None, params={},
        )]
        writes += [store.add_status(c, s) for s in ("OPERATOR_CALLTO", "OPERATOR_PICKUP")]
        expected += 3
        # Poll with a small page while those writes are still queued.
        polls = [store.history_after(last, 2)]
        for page in await defer.gatherResults(polls):
            seen += [e["id"] for e in page]
            if page:
                last = page[-1]["id"]
        await defer.gatherResults(writes)
    while True:
        page = await store.history_after(last, 2)
        if not page:
            break
        seen += [e["id"] for e in page]
        last = page[-1]["id"]
    assert len(seen) == expected == len(set(seen))
    assert seen == sorted(seen)


# -- recordings -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_recordings(store: SQLiteStore, clock: task.Clock):
    await make_call(store, "a", external_key="k1")
    recs = []
    for i in range(5):
        clock.advance(1)
        recs.append(await store.add_recording(call_id="a", path=f"/rec/{i}.wav"))
    assert recs[0] == {
        "record_id": recs[0]["record_id"],
        "call_id": "a",
        "order_id": "order-15",
        "external_key": "k1",
        "sip": "1000",
        "phone": "380639920000",
        "path": "/rec/0.wav",
        "created_at": "2026-11-25T21:04:38.123Z",
        "duration": None,
        "size": None,
        "pbx": "default",
    }
    updated = await store.update_recording(recs[0]["record_id"], duration=12.5, size=2048)
    assert updated == {**recs[0], "duration": 12.5, "size": 2048}
    assert await store.get_recording(recs[0]["record_id"]) == updated
    # durations are kept to the millisecond
    rounded = await store.update_recording(recs[1]["record_id"], duration=7.123456789)
    assert rounded["duration"] == 7.123
    assert await store.update_recording(999999, size=1) is None
    assert await store.get_recording(999999) is None

    page1 = await store.recordings(1, 2)
    assert page1.total == 5
    assert [r["path"] for r in page1.items] == ["/rec/4.wav", "/rec/3.wav"]
    page3 = await store.recordings(3, 2)
    assert [r["path"] for r in page3.items] == ["/rec/0.wav"]
    assert (await store.recordings(4, 2)).items == []
    with pytest.raises(UnknownCall):
        await store.add_recording(call_id="ghost", path="/x.wav")
    with pytest.raises(ValueError):
        store.recordings(0, 20)


# -- operators ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_operator_state_changes_only(store: SQLiteStore, clock: task.Clock):
    assert await store.set_operator_status("1000", "online") is True
    assert await store.set_operator_status("1000", "online") is False
    clock.advance(2)
    assert await store.set_operator_status("1000", "inuse") is True
    assert await store.set_operator_status("1001", "offline") is True
    assert await store.set_operator_status("1002", "online") is True
    assert await store.operator_statuses() == {"1000": "inuse", "1001": "offline", "1002": "online"}

    everyone = await store.operators(1, 10)
    assert everyone.total == 3
    assert everyone.items[0] == {
        "sip": "1000", "status": "inuse", "since": "2026-11-25T21:04:39.123Z", "pbx": "default",
    }
    some = await store.operators(1, 1, frozenset({"online", "offline"}))
    assert some.total == 2 and [o["sip"] for o in some.items] == ["1001"]
    second = await store.operators(2, 1, frozenset({"online", "offline"}))
    assert [o["sip"] for o in second.items] == ["1002"]

    hist = await store.operator_history()
    assert hist.total == 4
    assert [(h["sip"], h["status"]) for h in hist.items] == [
        ("1002", "online"), ("1001", "offline"), ("1000", "inuse"), ("1000", "online"),
    ]
    one = await store.operator_history("1000", 2, 1)
    assert one.total == 2
    assert [(h["sip"], h["status"]) for h in one.items] == [("1000", "online")]
    assert (await store.operator_history("9999")).total == 0


# -- several PBXs ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_entries_and_recordings_carry_the_pbx_of_their_call(store: Store):
    await make_call(store, "a", pbx="east")
    await make_call(store, "b")
    await store.add_status("a", "OPERATOR_CALLTO")
    await store.add_status("b", "OPERATOR_CALLTO")
    rec = await store.add_recording(call_id="a", path="/rec/a.wav")
    assert rec["pbx"] == "east"
    assert [(e["call_id"], e["status"], e["pbx"]) for e in await store.history_after(0, 10)] == [
        ("a", "CALL", "east"), ("b", "CALL", "default"),
        ("a", "OPERATOR_CALLTO", "east"), ("b", "OPERATOR_CALLTO", "default"),
    ]  # fmt: skip
    # the JSON text the API hands out says the same
    assert [e["pbx"] for e in (await store.order_history_json("order-15")).entries()] == [
        "east", "default", "east", "default",
    ]
    assert [(c["call_id"], c["pbx"], [r["pbx"] for r in c["records"]])
            for c in await store.order_calls("order-15")] == [
        ("a", "east", ["east"]), ("b", "default", []),
    ]  # fmt: skip
    page = await store.recordings_json(1, 10, "/records/")
    assert [r["pbx"] for r in page.items()] == ["east"]
    assert [c["call_id"] for c in await store.open_calls(pbx="east")] == ["a"]


@pytest_twisted.ensureDeferred
async def test_one_extension_on_two_pbxs_is_two_operators(store: Store, clock: task.Clock):
    assert await store.set_operator_status("1000", "online") is True
    assert await store.set_operator_status("1000", "offline", pbx="east") is True
    # each PBX's state changes on its own
    assert await store.set_operator_status("1000", "offline", pbx="east") is False
    assert await store.set_operator_status("1000", "inuse") is True
    assert await store.operator_statuses() == {"1000": "inuse"}
    assert await store.operator_statuses("east") == {"1000": "offline"}
    assert await store.operator_statuses("west") == {}
    listed = await store.operators(1, 10)
    assert listed.total == 2
    assert [(o["sip"], o["pbx"], o["status"]) for o in listed.items] == [
        ("1000", "default", "inuse"), ("1000", "east", "offline"),
    ]
    hist = await store.operator_history("1000")
    assert [(h["pbx"], h["status"]) for h in hist.items] == [
        ("default", "inuse"), ("east", "offline"), ("default", "online"),
    ]


_OLD_ROWS = (
    "INSERT INTO calls (call_id, kind, created_at) VALUES ('c', 'makeCall', 't')",
    "INSERT INTO call_status (call_id, status, time) VALUES ('c', 'CALL', 't')",
    "INSERT INTO recordings (call_id, path, created_at) VALUES ('c', '/r', 't')",
    "INSERT INTO operators (sip, status, since) VALUES ('1000', 'online', 't')",
    "INSERT INTO operator_history (sip, status, time) VALUES ('1000', 'online', 't')",
)


def _build_before_the_pbx_step(location: str) -> None:
    """The store at ``location`` as the step before several PBXs left it,
    with a call, its entry and recording, and an operator."""
    if not location.startswith("postgresql"):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(location, isolation_level=None)
        for version, step in enumerate(MIGRATIONS[:-1]):
            conn.execute("BEGIN")
            step(conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        for statement in _OLD_ROWS:
            conn.execute(statement)
        conn.close()
        return
    import psycopg

    from agi_app.store.pg_schema import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(location, autocommit=True) as conn:
        with conn.transaction():
            for step in PG_MIGRATIONS[:-1]:
                step(conn)
            conn.execute("CREATE TABLE agi_app_schema (version integer NOT NULL)")
            conn.execute(
                "INSERT INTO agi_app_schema (version) VALUES (%s)", (len(PG_MIGRATIONS) - 1,)
            )
            for statement in _OLD_ROWS:
                conn.execute(statement)


@pytest_twisted.ensureDeferred
async def test_the_pbx_step_keeps_what_was_there_as_the_default_pbx(store_location: str):
    """A store of the step before several PBXs: its rows become the default
    PBX's, and an operator's row is keyed by PBX and sip from then on."""
    _build_before_the_pbx_step(store_location)
    store = open_at(store_location)
    try:
        assert (await store.history_after(0, 10))[0]["pbx"] == "default"
        assert (await store.call_recordings("c"))[0]["pbx"] == "default"
        assert (await store.operators(1, 10)).items == [
            {"sip": "1000", "status": "online", "since": "t", "pbx": "default"}
        ]
        assert (await store.operator_history()).items[0]["pbx"] == "default"
        assert await store.set_operator_status("1000", "online", pbx="east") is True
        assert (await store.operators(1, 10)).total == 2
    finally:
        await store.close()


# -- crash safety -------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from agi_app.store import store_at

    store = store_at(sys.argv[1], reactor)
    store.open()

    async def main():
        await store.create_call(call_id="c", kind="incoming", sip=None, phone="123",
                                order_id=None, external_key=None, params={})
        while True:
            entry = await store.history_after(0, 1)  # keep the worker busy too
            entry = await store.add_status("c", "OPERATOR_CALLTO")
            if entry is None:
                break
            print(entry["id"], flush=True)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()
    """
)


@pytest_twisted.ensureDeferred
async def test_acknowledged_writes_survive_sigkill(store_location: str, clock: task.Clock):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, store_location],
        stdout=subprocess.PIPE,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) >= 300:
                break
    finally:
        proc.kill()  # SIGKILL: no shutdown, no checkpoint
        proc.wait()
        proc.stdout.close()
    assert len(acknowledged) >= 300
    store = open_at(store_location, clock)
    try:
        stored = {e["id"] for e in await store.statuses("c")}
    finally:
        await store.close()
    assert set(acknowledged) <= stored


# -- PostgreSQL: several processes on one database ----------------------------------------


@pytest.fixture
def pg_location(pg_cluster) -> str:
    """The URL of a fresh schema on the session's PostgreSQL cluster."""
    return pg_cluster.new_schema()


@pytest.fixture
def pg_nodes(pg_location: str, clock: task.Clock):
    """Two PostgreSQL stores on one database: two nodes, as far as the
    database can tell (each has its own connections and writer thread)."""
    nodes = [open_at(pg_location, clock), open_at(pg_location, clock)]
    yield nodes
    for node in nodes:
        pytest_twisted.blockon(node.close())


def _pg_schema_version(location: str) -> int:
    import psycopg

    from agi_app.store.pg_schema import schema_version

    with psycopg.connect(location, autocommit=True) as conn:
        return schema_version(conn)


@pytest_twisted.ensureDeferred
async def test_pg_open_migrates_an_empty_database_and_reopens_it(pg_location: str):
    import psycopg

    from agi_app.store.pg_schema import MIGRATIONS as PG_MIGRATIONS

    store = open_at(pg_location)
    call = (await make_call(store, "keep"))
    await store.close()
    assert _pg_schema_version(pg_location) == len(PG_MIGRATIONS) == len(MIGRATIONS)
    with psycopg.connect(pg_location, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )}  # fmt: skip
    assert {"calls", "call_status", "recordings", "operators", "operator_history", "events",
            "event_outbox", "row_counts", "agi_app_schema"} <= tables  # fmt: skip
    again = open_at(pg_location)  # an existing, current database: no step runs again
    try:
        assert await again.get_call("keep") == call
    finally:
        await again.close()


def test_pg_a_newer_schema_is_refused(pg_location: str):
    import psycopg

    from agi_app.store.pg_schema import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(pg_location, autocommit=True) as conn:
        conn.execute("CREATE TABLE agi_app_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO agi_app_schema VALUES (%s)", (len(PG_MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer"):
        open_at(pg_location)


def test_pg_an_unreachable_database_is_a_clear_error_without_the_password(pg_cluster):
    from agi_app.store.postgres import PostgresStore

    closed = socket_port_nobody_listens_on()
    store = PostgresStore(
        f"postgresql://agi_app:s3cret@127.0.0.1:{closed}/x", reactor=_reactor(),
        connect_timeout=1.0,
    )  # fmt: skip
    with pytest.raises(StoreError, match="cannot use the database") as e:
        store.open()
    assert "s3cret" not in str(e.value) and ":***@" in str(e.value)
    assert not store.is_open


def socket_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest_twisted.ensureDeferred
async def test_pg_queries_never_run_on_the_reactor_thread(pg_location: str):
    store = open_at(pg_location)
    try:
        here = threading.get_ident()
        write = await store._run(lambda conn: threading.get_ident())
        reads = await defer.gatherResults(
            [store._read(lambda conn: threading.get_ident()) for _ in range(8)]
        )
        assert write != here and here not in reads and write not in reads
        # one writer thread: writes run one at a time, in call order
        writers = await defer.gatherResults(
            [store._run(lambda conn: threading.get_ident()) for _ in range(8)]
        )
        assert set(writers) == {write}
        # every connection plans the store's statements once (pg_engine._configure)
        modes = await defer.gatherResults(
            [store._read(lambda conn: conn.execute("SHOW plan_cache_mode").fetchone()[0])
             for _ in range(8)]
            + [store._run(lambda conn: conn.execute("SHOW plan_cache_mode").fetchone()[0])]
        )  # fmt: skip
        assert set(modes) == {"force_generic_plan"}
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_both_engines_write_the_same_json(
    sqlite_store: SQLiteStore, pg_location: str, clock: task.Clock
):
    """The API's JSON built in SQL: history entries are the same bytes on
    both engines, recordings the same values."""
    pg = open_at(pg_location, clock)
    try:
        texts, pages = [], []
        for store in (sqlite_store, pg):
            await make_call(store, "a", order_id="o1", external_key="k\"1")
            for detail in ('say "hi" \\ {"id":1} \x01\x1f\t\n é ☎ \u2028', "", None):
                await store.add_status("a", "OPERATOR_CALLTO", detail)
            await store.add_recording(call_id="a", path="/r/a.wav", duration=3.0, size=44)
            await store.add_recording(call_id="a", path="/r/b.wav", duration=7.123456)
            texts.append((await store.order_history_json("o1")).json)
            texts.append((await store.history_after_json(1, 2)).json)
            pages.append(await store.recordings_json(1, 20, "http://h/records/"))
        assert texts[0] == texts[2] and texts[1] == texts[3]
        assert (pages[0].total, pages[0].count) == (pages[1].total, pages[1].count) == (2, 2)
        assert pages[0].items() == pages[1].items()
    finally:
        await pg.close()


@pytest_twisted.ensureDeferred
async def test_pg_history_ids_become_visible_in_commit_order(pg_nodes, pg_location: str):
    """Another node's transaction has taken a history id and not committed
    yet: a write here must not take (and show) a larger id before that one
    is visible, or a poller would skip it for good."""
    import psycopg

    from agi_app.store.pg_schema import HISTORY_LOCK

    node, _ = pg_nodes
    await make_call(node, "a")
    await make_call(node, "b")
    [first] = await node.statuses("a")
    other = psycopg.connect(pg_location)  # the other node, mid-transaction
    try:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (HISTORY_LOCK,))
        slow_id = other.execute(
            "INSERT INTO call_status (call_id, order_id, status, time) "
            "VALUES ('a', 'order-15', 'OPERATOR_CALLTO', '2026-11-25T21:04:37.123Z') RETURNING id"
        ).fetchone()[0]
        written = node.add_status("b", "OPERATOR_CALLTO")
        # The write waits for the other transaction; a poller sees neither.
        for _ in range(5):
            page = await node.history_after(first["id"], 10)
            assert [e["call_id"] for e in page] == ["b"]  # b's CALL entry only
            assert not written.called
        other.commit()
    finally:
        other.close()
    entry = await written
    assert entry["id"] > slow_id
    page = await node.history_after(first["id"], 10)
    assert [e["id"] for e in page][-2:] == [slow_id, entry["id"]]


@pytest_twisted.ensureDeferred
async def test_pg_two_nodes_polled_while_writing_never_miss_or_repeat(pg_nodes):
    a, b = pg_nodes
    expected, seen, last = 0, [], 0
    for round_ in range(15):
        writes = []
        for node, name in ((a, f"a{round_}"), (b, f"b{round_}")):
            writes.append(node.create_call(
                call_id=name, kind="incoming", sip=None, phone="123", order_id=None,
                external_key=None, params={},
            ))  # fmt: skip
            writes += [node.add_status(name, s) for s in ("OPERATOR_CALLTO", "OPERATOR_PICKUP")]
            expected += 3
        # Poll with a small page, through either node, while the writes are queued.
        page = await (a, b)[round_ % 2].history_after(last, 2)
        seen += [e["id"] for e in page]
        if page:
            last = page[-1]["id"]
        await defer.gatherResults(writes)
    while page := await a.history_after(last, 3):
        seen += [e["id"] for e in page]
        last = page[-1]["id"]
    assert len(seen) == expected == len(set(seen)) and seen == sorted(seen)


@pytest_twisted.ensureDeferred
async def test_pg_two_nodes_racing_final_statuses_leave_exactly_one(pg_nodes):
    a, b = pg_nodes
    calls = [f"race-{i}" for i in range(20)]
    for c in calls:
        await make_call(a, c)
    pending = [
        (c, s, node.add_status(c, s, "from racer"))
        for s in sorted(FINAL_STATUSES) for c in calls for node in (a, b)
    ]  # fmt: skip
    results = await defer.gatherResults([d for _, _, d in pending])
    for c in calls:
        won = [s for (cc, s, _), r in zip(pending, results, strict=True) if cc == c and r]
        assert len(won) == 1
        assert (await b.get_call(c))["final_status"] == won[0]
        finals = [e["status"] for e in await a.statuses(c) if e["status"] in FINAL_STATUSES]
        assert finals == won


@pytest_twisted.ensureDeferred
async def test_pg_two_nodes_with_one_external_key_make_one_call(pg_nodes):
    a, b = pg_nodes

    def create(node, call_id, params):
        return node.create_call(
            call_id=call_id, kind="makeCall", sip="1000", phone="380639920000",
            order_id="o", external_key="k", params=params,
        )  # fmt: skip

    results = await defer.DeferredList(
        [create(a, "ca", {"x": 1}), create(b, "cb", {"x": 1}), create(b, "cc", {"x": 2})],
        consumeErrors=True,
    )
    made = [r for ok, r in results if ok and r[1]]
    again = [r for ok, r in results if ok and not r[1]]
    conflicts = [r.value for ok, r in results if not ok]
    assert len(made) == 1 and made[0][0]["call_id"] in ("ca", "cb", "cc")
    winner = made[0][0]
    if winner["params"] == {"x": 1}:
        assert [c for c, _ in again] == [winner] and len(conflicts) == 1
    else:
        assert again == [] and len(conflicts) == 2
    assert all(isinstance(e, ExternalKeyConflict) and e.call_id == winner["call_id"]
               for e in conflicts)  # fmt: skip
    assert len(await a.history_after(0, 100)) == 1


# -- the in-memory store of unit tests ------------------------------------------

#: The contract tests above that need no file and no thread: MemoryStore, the
#: real SQLiteStore driven without threads, passes them too.
_CONTRACT = [
    test_create_call_writes_the_call_and_its_CALL_entry,
    test_external_key_is_idempotent_for_the_same_parameters,
    test_calls_without_external_key_never_conflict,
    test_bad_kind_and_status_words_raise,
    test_add_status_until_the_final_one,
    test_add_status_of_an_unknown_call_fails,
    test_racing_final_statuses_leave_exactly_one,
    test_open_calls,
    test_order_history_and_calls,
    test_history_as_json_text_is_the_same_history,
    test_history_after_pages_by_id,
    test_polling_while_writing_never_misses_or_repeats,
    test_recordings,
    test_operator_state_changes_only,
]


@pytest.mark.parametrize("contract", _CONTRACT, ids=lambda t: t.__name__[len("test_"):])
def test_the_memory_store_keeps_the_contract(contract, clock: task.Clock):
    store = MemoryStore(clock)
    given = {"store": store, "clock": clock}
    outcome = contract(**{name: given[name] for name in inspect.signature(contract).parameters})
    if inspect.iscoroutine(outcome):
        # No reactor turns: fired() fails if the test waited for anything.
        fired(defer.ensureDeferred(outcome))
    fired(store.close())


def test_the_memory_store_answers_before_returning_and_starts_no_thread(clock: task.Clock):
    threads = threading.active_count()
    store = MemoryStore(clock)
    d = store.create_call(
        call_id="a", kind="incoming", sip=None, phone="123", order_id=None, external_key=None,
        params={},
    )
    call, created = fired(d)
    assert created and call["created_at"] == iso_time(T0)
    assert threading.active_count() == threads
    fired(store.close())
    assert threading.active_count() == threads


def test_the_memory_store_readers(clock: task.Clock):
    store = MemoryStore(clock)
    for call_id in ("b", "a"):
        fired(defer.ensureDeferred(make_call(store, call_id)))
    fired(store.add_status("a", "OPERATOR_CALLTO", "ringing 1000"))
    fired(store.add_status("a", "OPERATOR_BUSY", "busy", talk_seconds=None))
    fired(store.add_status("b", "FINISH", "normal clearing", talk_seconds=12.5))
    fired(store.add_recording(call_id="b", path="/rec/b.wav"))
    fired(store.add_recording(call_id="a", path="/rec/a.wav"))
    assert store.words("a") == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    assert store.details("a", "OPERATOR_BUSY") == ["busy"]
    assert store.history("b") == fired(store.statuses("b"))
    assert [c["call_id"] for c in store.all_calls()] == ["b", "a"]
    assert store.call("b")["talk_seconds"] == 12.5 and store.call("nope") is None
    assert [r["path"] for r in store.all_recordings()] == ["/rec/b.wav", "/rec/a.wav"]
    other = MemoryStore(clock)  # each store is a database of its own
    assert other.all_calls() == [] and other.all_recordings() == []
    fired(other.close())
    fired(store.close())


def test_a_closed_memory_store_fails_calls(clock: task.Clock):
    store = MemoryStore(clock)
    fired(store.close())
    with pytest.raises(StoreError):
        fired(store.get_call("a"))
    fired(store.close())  # closing twice is harmless


def test_fired_gives_the_result_or_raises():
    assert fired(defer.succeed(3)) == 3
    with pytest.raises(UnknownCall):
        fired(defer.fail(UnknownCall("c")))
    with pytest.raises(AssertionError):
        fired(defer.Deferred())
