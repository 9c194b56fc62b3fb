"""Missed calls in the store (on both engines): recorded with ascending ids,
listed after a cursor, marked handled once per number, callbacks counted;
and the schema steps of missed calls and statistics applied to a database
that already holds calls."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from agi_app.store import store_at
from agi_app.store.schema import MIGRATIONS, migrate

T0 = 1795640677.0  # 2026-11-25T21:04:37Z


@pytest.fixture
def store(store_location: str):
    """An open store of the engine under test (both, one after the other)."""
    from twisted.internet import reactor

    clock = Clock()
    clock.advance(T0)
    s = store_at(store_location, reactor, clock=clock)
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


async def add(store, n: int, phone: str | None = "380631110000", **over) -> dict:
    fields = dict(call_id=f"c{n}", phone=phone, did="0443334023",
                  time=f"2026-11-25T21:0{n}:00.000Z", extensions=["1000", "1001"],
                  ring_seconds=12.3456)  # fmt: skip
    fields.update(over)
    return await (store.add_missed_call(**fields))


@pytest_twisted.ensureDeferred
async def test_a_missed_call_comes_back_as_it_was_recorded(store):
    row = await add(store, 1)
    assert row == {
        "id": 1, "call_id": "c1", "phone": "380631110000", "did": "0443334023",
        "time": "2026-11-25T21:01:00.000Z", "extensions": ["1000", "1001"],
        "ring_seconds": 12.346, "called_back": None, "handled_at": None,
        "callback_attempts": 0, "last_callback": None, "last_callback_at": None,
        "pbx": "default",
    }  # fmt: skip
    assert (await add(store, 2, phone=None, extensions=[]))["extensions"] == []
    with pytest.raises(ValueError):
        store.add_missed_call(call_id="x", phone=None, did=None, time="yesterday",
                              extensions=[], ring_seconds=0)  # fmt: skip
    with pytest.raises(ValueError):
        store.add_missed_call(call_id="x", phone=None, did=None, time=row["time"],
                              extensions=["1,2"], ring_seconds=0)  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_the_cursor_lists_each_once_in_order(store):
    for n in range(1, 6):
        await add(store, n)
    assert [r["id"] for r in await (store.missed_calls_after(0, 2))] == [1, 2]
    assert [r["id"] for r in await (store.missed_calls_after(2, 100))] == [3, 4, 5]
    assert await (store.missed_calls_after(5, 100)) == []
    with pytest.raises(ValueError):
        store.missed_calls_after(-1, 10)


@pytest_twisted.ensureDeferred
async def test_someone_getting_through_handles_every_open_call_of_the_number(store):
    await add(store, 1, phone="380631110000")
    await add(store, 2, phone="+380631110000")
    await add(store, 3, phone="380632220000")
    await add(store, 4, phone=None)
    assert [r["id"] for r in await (store.open_missed_calls())] == [1, 2, 3]
    n = await (store.missed_callback_placed(["380631110000", "+380631110000"], "cb-1",
                                           "2026-11-25T21:10:00.000Z"))  # fmt: skip
    assert n == 2
    handled = await (store.missed_calls_handled(["380631110000", "+380631110000"], "cb-1",
                                               "2026-11-25T21:11:00.000Z"))  # fmt: skip
    assert handled == [1, 2]
    # once: a later call of the number finds nothing open
    assert await (store.missed_calls_handled(["380631110000"], "c-9",
                                            "2026-11-25T21:12:00.000Z")) == []  # fmt: skip
    first, second, third, _ = await (store.missed_calls_after(0, 10))
    assert (first["called_back"], first["handled_at"], first["callback_attempts"],
            first["last_callback"]) == ("cb-1", "2026-11-25T21:11:00.000Z", 1, "cb-1")  # fmt: skip
    assert second["called_back"] == "cb-1"
    assert (third["called_back"], third["callback_attempts"]) == (None, 0)
    assert [r["id"] for r in await (store.open_missed_calls())] == [3]
    assert [r["id"] for r in await (store.missed_calls_after(0, 10, open_only=True))] == [3, 4]
    assert await (store.open_missed_calls(since="2026-11-25T21:04:00.000Z")) == []


def test_the_new_steps_apply_to_a_database_with_calls():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("BEGIN")
    for step in MIGRATIONS[:3]:
        step(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO calls (call_id, kind, sip, phone, created_at, final_status, finished_at, "
        "talk_seconds) VALUES ('a', 'makeCall', '1000', '380', '2026-11-25T21:00:00.000Z', "
        "'FINISH', '2026-11-25T21:01:00.000Z', 42.5)"
    )
    for status, time in (("CALL", "00:00"), ("OPERATOR_CALLTO", "00:01"),
                         ("OPERATOR_PICKUP", "00:04"), ("CLIENT_CALLTO", "00:05"),
                         ("CLIENT_PICKUP", "00:08"), ("FINISH", "01:00")):  # fmt: skip
        conn.execute("INSERT INTO call_status (call_id, status, time) VALUES ('a', ?, ?)",
                     (status, f"2026-11-25T21:{time}.000Z"))  # fmt: skip
    conn.execute("COMMIT")
    assert migrate(conn) == len(MIGRATIONS)
    rows = conn.execute("SELECT * FROM operator_totals").fetchall()
    assert rows == [("1000", "2026-11-25T21", 1, 1, 3000, 1, 42500)]
    assert conn.execute("SELECT * FROM operator_sips").fetchall() == [("1000",)]
    assert conn.execute("SELECT * FROM outcome_hours").fetchall() == [
        ("2026-11-25T21", "FINISH", 1)]
    assert conn.execute("SELECT count(*) FROM missed_calls").fetchone() == (0,)


def test_the_new_steps_apply_to_a_postgresql_database_with_calls(pg_cluster):
    import psycopg

    from agi_app.store import pg_schema

    with psycopg.connect(pg_cluster.new_schema(), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE agi_app_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO agi_app_schema (version) VALUES (3)")
            for step in pg_schema.MIGRATIONS[:3]:
                step(conn)
            conn.execute(
                "INSERT INTO calls (call_id, kind, sip, phone, created_at, final_status, "
                "finished_at, talk_seconds) VALUES ('a', 'makeCall', '1000', '380', "
                "'2026-11-25T21:00:00.000Z', 'FINISH', '2026-11-25T21:01:00.000Z', 42.5)"
            )
            for status, time in (("CALL", "00:00"), ("OPERATOR_CALLTO", "00:01"),
                                 ("OPERATOR_PICKUP", "00:04"), ("CLIENT_CALLTO", "00:05"),
                                 ("CLIENT_PICKUP", "00:08"), ("FINISH", "01:00")):  # fmt: skip
                conn.execute(
                    "INSERT INTO call_status (call_id, status, time) VALUES ('a', %s, %s)",
                    (status, f"2026-11-25T21:{time}.000Z"),
                )
        assert pg_schema.migrate(conn) == len(pg_schema.MIGRATIONS) == len(MIGRATIONS)
        rows = conn.execute("SELECT * FROM operator_totals").fetchall()
        assert rows == [("1000", "2026-11-25T21", 1, 1, 3000, 1, 42500)]
        assert conn.execute("SELECT * FROM operator_sips").fetchall() == [("1000",)]
        assert conn.execute("SELECT * FROM outcome_hours").fetchall() == [
            ("2026-11-25T21", "FINISH", 1)]
        assert conn.execute("SELECT count(*) FROM missed_calls").fetchone() == (0,)
