"""Paging of the newest-first listings (recordList, operatorHistory) at any
depth, with the row counts the store keeps, and callHistory's unknown-call
check -- against a real store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import pytest_twisted

from agi_app.store import SQLiteStore, Store, schema, store_at
from agi_app.store.schema import MIGRATIONS
from agi_app.web import Router, build_site, history
from agi_app.web.testing import MemoryHTTP


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def store(store_location: str):
    s = store_at(store_location, _reactor())
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


async def add_recordings(store: Store, count: int) -> list[int]:
    await store.create_call(
        call_id="c1", kind="makeCall", sip="1000", phone="380639920000", order_id="o-1",
        external_key=None, params={},
    )  # fmt: skip
    ids = []
    for i in range(count):
        duration = i / 7 if i % 3 else None  # stored rounded to ms
        rec = await store.add_recording(
            call_id="c1", path=f"/tmp/{i}.wav", size=i, duration=duration
        )
        ids.append(rec["record_id"])
    return ids


async def execute(store: Store, sql: str) -> None:
    """Run one statement on the store's own connection (its writer)."""
    if isinstance(store, SQLiteStore):
        await store._run(lambda: store._conn.execute(sql))
    else:
        await store._run(lambda conn: conn.execute(sql))


async def expect_pages(store: Store, ids: list[int]) -> None:
    """Every page of every size up to 7 (and one past the end) is the slice of
    ``ids`` newest first, with the right total."""
    newest_first = sorted(ids, reverse=True)
    for per_page in range(1, 8):
        for page in range(1, len(ids) // per_page + 3):
            got = await store.recordings(page, per_page)
            want = newest_first[(page - 1) * per_page : page * per_page]
            assert got.total == len(ids), (page, per_page)
            assert [r["record_id"] for r in got.items] == want, (page, per_page)
            assert [r["size"] for r in got.items] == [i - 1 for i in want]  # the whole rows
            # The API's page as JSON text: the same as built from those rows.
            text = await store.recordings_json(page, per_page, "http://h/records/")
            built = await Store.recordings_json(store, page, per_page, "http://h/records/")
            assert (text.total, text.count) == (built.total, built.count) == (len(ids), len(want))
            assert json.loads(text.json) == json.loads(built.json) == text.items()
            assert [r["url"] for r in text.items()] == [f"http://h/records/{i}" for i in want]


@pytest_twisted.ensureDeferred
async def test_record_pages_when_ids_are_contiguous(store: Store):
    assert (await store.recordings(1, 20)) == (0, [])
    assert (await store.recordings_json(1, 20, "/r/")) == (0, "[]", 0)
    ids = await add_recordings(store, 23)
    await expect_pages(store, ids)


@pytest_twisted.ensureDeferred
async def test_record_pages_after_the_oldest_are_removed(store: Store):
    ids = await add_recordings(store, 23)
    await execute(store, "DELETE FROM recordings WHERE record_id <= 5")
    await expect_pages(store, ids[5:])


@pytest_twisted.ensureDeferred
async def test_record_pages_with_gaps_in_the_ids(store: Store):
    ids = await add_recordings(store, 23)
    gone = {ids[3], ids[11], ids[12], ids[22]}  # the newest one too
    await execute(
        store, f"DELETE FROM recordings WHERE record_id IN ({', '.join(map(str, gone))})"
    )
    await expect_pages(store, [i for i in ids if i not in gone])
    await execute(store, "DELETE FROM recordings")
    assert (await store.recordings(1, 5)) == (0, [])
    assert (await store.recordings_json(1, 5, "/r/")) == (0, "[]", 0)


@pytest_twisted.ensureDeferred
async def test_operator_history_pages_at_any_depth(store: Store):
    changes = []
    for i in range(17):
        sip, status = f"10{i % 3:02d}", ("online", "inuse")[i // 3 % 2]
        if await store.set_operator_status(sip, status):
            changes.append((sip, status))
    newest_first = changes[::-1]
    for per_page in (1, 2, 5, 20):
        for page in range(1, len(changes) // per_page + 3):
            got = await store.operator_history(None, page, per_page)
            want = newest_first[(page - 1) * per_page : page * per_page]
            assert got.total == len(changes)
            assert [(h["sip"], h["status"]) for h in got.items] == want, (page, per_page)
    # with a gap, the pager falls back and still answers right
    await execute(store, "DELETE FROM operator_history WHERE id = 4")
    del changes[3]
    got = await store.operator_history(None, 1, 50)
    assert got.total == len(changes) and len(got.items) == len(changes)
    assert [(h["sip"], h["status"]) for h in got.items] == changes[::-1]


@pytest_twisted.ensureDeferred
async def test_counts_of_an_existing_store_are_taken_when_it_is_upgraded(tmp_path: Path):
    """A store made before the row counts existed gets them counted from its
    rows when it is opened; from then on triggers keep them."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    # the schema steps before the row counts, as such a store was made
    before = MIGRATIONS.index(schema._migration_row_counts)
    conn.execute("BEGIN")
    for step in MIGRATIONS[:before]:
        step(conn)
    conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO calls (call_id, kind, params, created_at) "
        "VALUES ('c', 'makeCall', '{}', '2026-11-25T21:04:37.123Z')"
    )
    conn.executemany(
        "INSERT INTO recordings (call_id, path, created_at) "
        "VALUES ('c', ?, '2026-11-25T21:04:37.123Z')",
        [(f"/{i}.wav",) for i in range(4)],
    )
    conn.execute(
        "INSERT INTO operator_history (sip, status, time) "
        "VALUES ('1000', 'online', '2026-11-25T21:04:37.123Z')"
    )
    conn.execute(f"PRAGMA user_version = {before}")
    conn.close()

    s = SQLiteStore(str(path), reactor=_reactor())
    s.open()
    try:
        assert (await s.recordings(1, 10)).total == 4
        assert (await s.operator_history(None, 1, 10)).total == 1
        await s.add_recording(call_id="c", path="/4.wav")
        page = await s.recordings(1, 2)
        assert page.total == 5 and [r["path"] for r in page.items] == ["/4.wav", "/3.wav"]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_pg_counts_of_an_existing_store_are_taken_when_it_is_upgraded(pg_cluster):
    """The same on PostgreSQL: a database at the step before the row counts,
    with rows, gets them counted when it is opened."""
    import psycopg

    from agi_app.store import pg_schema

    location = pg_cluster.new_schema()
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("CREATE TABLE agi_app_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO agi_app_schema VALUES (0)")
        for version, step in enumerate(pg_schema.MIGRATIONS[:-1]):
            with conn.transaction():
                step(conn)
                conn.execute("UPDATE agi_app_schema SET version = %s", (version + 1,))
        conn.execute(
            "INSERT INTO calls (call_id, kind, params, created_at) "
            "VALUES ('c', 'makeCall', '{}', '2026-11-25T21:04:37.123Z')"
        )
        for i in range(4):
            conn.execute(
                "INSERT INTO recordings (call_id, path, created_at) "
                "VALUES ('c', %s, '2026-11-25T21:04:37.123Z')",
                (f"/{i}.wav",),
            )
        conn.execute(
            "INSERT INTO operator_history (sip, status, time) "
            "VALUES ('1000', 'online', '2026-11-25T21:04:37.123Z')"
        )
    s = store_at(location, _reactor())
    s.open()
    try:
        assert (await s.recordings(1, 10)).total == 4
        assert (await s.operator_history(None, 1, 10)).total == 1
        await s.add_recording(call_id="c", path="/4.wav")
        page = await s.recordings(1, 2)
        assert page.total == 5 and [r["path"] for r in page.items] == ["/4.wav", "/3.wav"]
        await execute(s, "DELETE FROM recordings WHERE path IN ('/0.wav', '/1.wav')")
        assert (await s.recordings(1, 10)).total == 3
        await execute(s, "TRUNCATE recordings")
        assert (await s.recordings(1, 10)) == (0, [])
    finally:
        await s.close()


# -- callHistory of one call ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_call_history_tells_an_unknown_call_from_one_with_nothing_new(store):
    router = Router()
    history.add_routes(router, store, public_url="http://127.0.0.1:8080")
    http = MemoryHTTP(build_site(router, api_keys=(), static_dir=None, clock=_reactor()),
                      _reactor())  # fmt: skip
    await store.create_call(
        call_id="c1", kind="makeCall", sip="1000", phone="380639920000", order_id="o-1",
        external_key=None, params={},
    )  # fmt: skip
    [entry] = await store.statuses("c1")

    async def get(query: str) -> tuple[int, dict]:
        response = await http.get(f"http://127.0.0.1/api/callHistory.json?{query}")
        return response.code, await response.json()

    assert await get("call_id=c1") == (200, {"history": [entry], "last_id": entry["id"]})
    # nothing after the cursor: still the known call, an empty page
    assert await get(f"call_id=c1&after_id={entry['id']}") == (
        200, {"history": [], "last_id": entry["id"]},
    )  # fmt: skip
    code, body = await get("call_id=c2")
    assert code == 404 and body["error"]["code"] == "unknown_call"
    code, body = await get(f"call_id=c2&after_id={entry['id']}")
    assert code == 404 and body["error"]["field"] == "call_id"


# -- history entries come back exactly as written -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_entries_keep_every_character_and_their_order(store: Store):
    """The entries are read as one JSON row (see SQLiteStore._entries): any
    text must come back unchanged, nulls as None, ids as ints, in id order."""
    await store.create_call(
        call_id="c:1", kind="makeCall", sip="1000", phone="+380639920000", order_id="o.1",
        external_key=None, params={},
    )  # fmt: skip
    details = [
        'quote " backslash \\ slash /', "line\nbreak\ttab\r\x01\x1f", "\u2028\u2029 \ud7ff",
        "Заказ № 15 — 😀", "", None, "<xml>&amp;</xml>", "x" * 5000,
    ]  # fmt: skip
    for detail in details:
        await store.add_status("c:1", "OPERATOR_CALLTO", detail)
    entries = await store.statuses("c:1")
    assert [e["detail"] for e in entries] == [None, *details]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert all(type(e["id"]) is int for e in entries)
    assert list(entries[1]) == ["id", "call_id", "order_id", "status", "time", "detail", "pbx"]
    assert entries[1]["call_id"] == "c:1" and entries[1]["order_id"] == "o.1"
    assert await store.order_history("o.1") == entries
    assert await store.history_after(entries[2]["id"], 3) == entries[3:6]
    assert await store.history_after(entries[-1]["id"], 3) == []
    assert await store.history_after(0, 100, "c:1") == entries
