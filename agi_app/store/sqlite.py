"""The SQLite implementation of :class:`agi_app.store.base.Store`.

One connection, used by one dedicated worker thread: every public method
queues a small function on that thread and returns a Deferred that fires on
the reactor thread.  Because a single thread applies the writes one after
another, a read-check-write sequence (one final status per call, one
history row per operator state change) needs no further locking, and ids
become visible in the order they are assigned (the ``callHistory`` cursor
relies on it).

WAL with ``synchronous=NORMAL``: a committed transaction survives the
process being killed (it may be lost only if the whole machine loses power).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

from sqlite_utils import Database
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from agi_app.store.base import (
    CALL_KINDS,
    FINAL_STATUSES,
    OPERATOR_STATES,
    STATUSES,
    EntryList,
    ExternalKeyConflict,
    JSONPage,
    Page,
    Store,
    StoreError,
    UnknownCall,
    api_record,
    canonical_json,
    check_time,
    iso_time,
)
from agi_app.store.events_sqlite import EventsSQLiteMixin, migration_events

__all__ = ["MIGRATIONS", "SQLiteStore", "migrate"]

_T = TypeVar("_T")

# -- schema -------------------------------------------------------------------

_SCHEMA_1 = (
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        sip TEXT,
        phone TEXT,
        order_id TEXT,
        external_key TEXT UNIQUE,
        params TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        final_status TEXT,
        finished_at TEXT,
        talk_seconds REAL,
        pbx TEXT NOT NULL DEFAULT 'default'
    )
    """,
    "CREATE INDEX calls_order ON calls (order_id, created_at)",
    # Partial index: only calls still in progress, which stay few.
    "CREATE INDEX calls_open ON calls (pbx, created_at) WHERE final_status IS NULL",
    """
    CREATE TABLE call_status (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls (call_id),
        order_id TEXT,
        status TEXT NOT NULL,
        time TEXT NOT NULL,
        detail TEXT
    )
    """,
    "CREATE INDEX call_status_call ON call_status (call_id, id)",
    "CREATE INDEX call_status_order ON call_status (order_id, id)",
    """
    CREATE TABLE recordings (
        record_id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls (call_id),
        order_id TEXT,
        external_key TEXT,
        sip TEXT,
        phone TEXT,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL,
        duration REAL,
        size INTEGER
    )
    """,
    "CREATE INDEX recordings_call ON recordings (call_id, record_id)",
    # A narrow copy of the ids: deep pages (OFFSET) step through this small
    # index instead of the wide table rows.
    "CREATE INDEX recordings_id ON recordings (record_id)",
    """
    CREATE TABLE operators (
        sip TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        since TEXT NOT NULL
    )
    """,
    "CREATE INDEX operators_status ON operators (status, sip)",
    """
    CREATE TABLE operator_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sip TEXT NOT NULL,
        status TEXT NOT NULL,
        time TEXT NOT NULL
    )
    """,
    "CREATE INDEX operator_history_sip ON operator_history (sip, id)",
    "CREATE INDEX operator_history_id ON operator_history (id)",
)


def _migration_1(conn: sqlite3.Connection) -> None:
    """The first schema: calls, call_status, recordings, operators, operator_history."""
    for statement in _SCHEMA_1:
        conn.execute(statement)


#: Listings paged newest first whose total is kept in ``row_counts``.
_COUNTED = ("recordings", "operator_history")


def _migration_row_counts(conn: sqlite3.Connection) -> None:
    """Row counts of the paged listings, kept by triggers.  ``count(*)`` walks
    a whole index (about 2 ms per million recordings, on every recordList
    request); this is one lookup.  It also tells the pager whether the ids
    have gaps (see :meth:`SQLiteStore._newest_page`)."""
    conn.execute(
        "CREATE TABLE row_counts (name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )
    for table in _COUNTED:
        conn.execute(
            f"INSERT INTO row_counts (name, n) SELECT '{table}', count(*) FROM {table}"
        )
        for event, change in (("INSERT", "+ 1"), ("DELETE", "- 1")):
            conn.execute(
                f"CREATE TRIGGER {table}_count_{event.lower()} AFTER {event} ON {table} "
                f"BEGIN UPDATE row_counts SET n = n {change} WHERE name = '{table}'; END"
            )


#: Schema steps; step N (1-based) brings ``PRAGMA user_version`` from N-1 to N.
#: Only ever append: a released step must never change.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1,
    migration_events,
    _migration_row_counts,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing :data:`MIGRATIONS` to ``conn`` (autocommit mode), each
    in its own transaction together with its ``user_version`` bump, and return
    the resulting version.  A database newer than this code is refused."""
    while True:
        # IMMEDIATE: take the write lock before reading the version, so two
        # processes opening a new file at once cannot both apply a step.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database schema version {version} is newer than this program "
                    f"knows ({len(MIGRATIONS)}); upgrade agi_app"
                )
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return version
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# -- row shapes ---------------------------------------------------------------

_CALL_COLUMNS = (
    "call_id, kind, sip, phone, order_id, external_key, params, created_at, "
    "final_status, finished_at, talk_seconds, pbx"
)
_ENTRY_COLUMNS = "id, call_id, order_id, status, time, detail"
# The same columns as one JSON object per entry (none is REAL: SQLite's JSON
# would print a REAL with 15 significant digits, not exactly).
_ENTRY_JSON = "json_object(" + ", ".join(
    f"'{c}', {c}" for c in _ENTRY_COLUMNS.split(", ")
) + ")"
# How often (in SQLite VM steps) an inline read checks its time budget.
_PROGRESS_STEPS = 1000
# The start of each entry object in that text, with its id.
_ENTRY_ID = re.compile(r'\{"id":(-?[0-9]+)')
_RECORD_COLUMNS = (
    "record_id, call_id, order_id, external_key, sip, phone, path, created_at, duration, size"
)
# A recording as the CRM API lists it (see base.api_record); durations are
# stored rounded to milliseconds, which SQLite's JSON writes exactly.
_RECORD_API_JSON = (
    "json_object("
    + ", ".join(f"'{c}', {c}" for c in _RECORD_COLUMNS.split(", ") if c != "path")
    + ", 'url', ?1 || record_id)"
)
# One page of recordings, newest first, with the table's total and id range
# (?1 the url prefix, ?2 the offset, ?3 the limit): the page is the id range
# below the newest when the ids have no gaps (the range comes back empty
# otherwise, and the caller pages the general way).
_RECORD_PAGE_JSON = f"""
WITH b(total, lo, hi) AS (
  SELECT (SELECT n FROM row_counts WHERE name = 'recordings'),
         (SELECT min(record_id) FROM recordings),
         (SELECT max(record_id) FROM recordings))
SELECT total, lo, hi, (
  SELECT json_group_array({_RECORD_API_JSON}) FROM (
    SELECT recordings.* FROM recordings, b AS r
    WHERE r.hi - r.lo + 1 = r.total
      AND record_id BETWEEN max(r.lo, r.hi - ?2 - ?3 + 1) AND r.hi - ?2
    ORDER BY record_id DESC))
FROM b
"""
_RECORD_ID = re.compile(r'\{"record_id":(-?[0-9]+)')


def _call_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row["params"] = json.loads(row["params"])
    return row


class SQLiteStore(Store, EventsSQLiteMixin):
    """The store in one SQLite file.

    ``reactor`` delivers results from the worker thread; ``clock`` (default:
    the reactor) gives the time of entries written without an explicit one.
    Call :meth:`open` before use and :meth:`close` at shutdown.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime | None = None,
        busy_timeout_ms: int = 5000,
        read_budget_us: int = 2000,
    ):
        self.path = path
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._db: Database | None = None
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: object | None = None
        #: see :meth:`_read`; 0: every read on the worker thread
        self.read_budget = max(0, read_budget_us) / 1e6
        self._reader: sqlite3.Connection | None = None
        self._deadline = 0.0
        #: inline reads that ran over the budget and went to the worker thread
        self.reads_moved = 0

    # -- lifetime ---------------------------------------------------------

    def open(self) -> None:
        """Open the file (creating its folder), set the pragmas, migrate, and
        start the worker thread.  Blocking: meant for startup."""
        if self._pool is not None:
            raise StoreError("store already open")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below is
        # either one autocommitted statement or inside an explicit atomic().
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            db = Database(conn, execute_plugins=False)
            db.enable_wal()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._db = conn, db
        if self.read_budget > 0 and self.path != ":memory:":
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only = ON")
            reader.execute("PRAGMA busy_timeout = 0")
            reader.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            self._reader = reader
        # From here on only the worker thread touches the connection.
        self._pool = ThreadPool(1, 1, name="agi_app-store")
        self._pool.start()
        # A worker thread left running would keep the process from exiting.
        add_trigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._shutdown_trigger = add_trigger("before", "shutdown", self.close)

    def close(self) -> Deferred[None]:
        """Let queued work finish, close the connection, stop the worker."""
        pool = self._pool
        if pool is None:
            return succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)  # type: ignore[attr-defined]
            self._shutdown_trigger = None
        self._pool = None  # refuse new work from now on
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        d = deferToThreadPool(self._reactor, pool, self._close_connection)

        def stop(result: object) -> object:
            pool.stop()
            return result

        return d.addBoth(stop)

    def _close_connection(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = self._db = None

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self._pool is None:
            return fail(StoreError("store is not open"))
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def _read(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run the read-only ``fn(conn, *args)`` for the CRM API.

        On one CPU core, handing a query to the worker thread and its result
        back costs the reactor more than an index-bounded query itself
        (about 0.2 ms of GIL hand-overs and wake-ups per request, against
        0.02-0.15 ms for the queries of the history API): so these reads run
        right here, on a read-only connection of their own (WAL: they never
        wait for the writer, and see every committed write), within a time
        budget (``[store] read_budget_us``).  SQLite interrupts a read that
        runs over it, and the read is then done again on the worker thread:
        a cold cache or an unusually large answer never holds the reactor
        for longer than the budget.
        """
        reader = self._reader
        if reader is None:
            if self._pool is None:
                return fail(StoreError("store is not open"))
            return self._run(fn, self._conn, *args)
        self._deadline = perf_counter() + self.read_budget
        try:
            result = fn(reader, *args)
        except sqlite3.OperationalError:
            # Over the budget ("interrupted"), or the file busy for a moment
            # (this connection never waits for a lock): the worker thread,
            # which may wait, does it again (and fails if it fails there too).
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            self.reads_moved += 1
            return self._run(fn, self._conn, *args)
        except Exception:
            return fail()
        return succeed(result)

    def _over_budget(self) -> bool:
        return perf_counter() > self._deadline

    def _now(self) -> str:
        return iso_time(self._clock.seconds())

    # -- helpers run on the worker thread -----------------------------------

    def _select(
        self, sql: str, params: tuple | list = (), conn: sqlite3.Connection | None = None
    ) -> list[dict[str, Any]]:
        conn = conn or self._conn
        assert conn is not None
        cursor = conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        # fetchall() steps through the rows in C; every row has len(names)
        # columns by construction (100 rows: 150 us, against 180 us iterating
        # the cursor with zip(strict=True)).
        return [dict(zip(names, row)) for row in cursor.fetchall()]  # noqa: B905

    def _scalar(
        self, sql: str, params: tuple | list = (), conn: sqlite3.Connection | None = None
    ) -> Any:
        conn = conn or self._conn
        assert conn is not None
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        # Plain INSERT rather than sqlite-utils' Table.insert, which inspects
        # the table on every call: measured 0.20 vs 0.58 ms per add_status.
        # Table and column names come from this module, never from input.
        assert self._conn is not None
        sql = f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        return self._conn.execute(sql, tuple(row.values())).lastrowid

    def _call(self, call_id: str) -> dict[str, Any] | None:
        rows = self._select(f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,))
        return _call_from_row(rows[0]) if rows else None

    def _entry_list(
        self, conn: sqlite3.Connection, where: str, params: tuple, limit: int | None = None
    ) -> EntryList:
        inner = f"SELECT {_ENTRY_COLUMNS} FROM call_status WHERE {where} ORDER BY id"
        if limit is not None:
            inner, params = inner + " LIMIT ?", (*params, limit)
        # The whole list as one JSON row: the sqlite3 module lets go of the
        # GIL for every row it steps to, and getting it back from a busy
        # reactor thread is what a 100-entry callHistory page mostly waited
        # for.  The text goes to the CRM as it is (no parsing, no encoding
        # again).  An aggregate's input order is not promised, so the ids are
        # read off the text and checked: each object starts with its id, and
        # '{"id":' cannot occur inside a JSON string (its quotes are escaped).
        text = self._scalar(
            f"SELECT json_group_array({_ENTRY_JSON}) FROM ({inner})", params, conn
        )
        ids = list(map(int, _ENTRY_ID.findall(text)))
        if any(a > b for a, b in zip(ids, ids[1:])):  # noqa: B905 - one shorter by design
            return EntryList.of(sorted(json.loads(text), key=itemgetter("id")))
        return EntryList(text, len(ids), ids[-1] if ids else None)

    def _entries(
        self, where: str, params: tuple, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return self._entry_list(self._conn, where, params, limit).entries()

    # -- calls and statuses -----------------------------------------------

    def create_call(
        self,
        *,
        call_id: str,
        kind: str,
        sip: str | None,
        phone: str | None,
        order_id: str | None,
        external_key: str | None,
        params: dict[str, Any],
        pbx: str = "default",
    ) -> Deferred[tuple[dict[str, Any], bool]]:
        if kind not in CALL_KINDS:
            raise ValueError(f"unknown call kind {kind!r}")
        if not call_id:
            raise ValueError("call_id must not be empty")
        row = {
            "call_id": call_id,
            "kind": kind,
            "sip": sip,
            "phone": phone,
            "order_id": order_id,
            "external_key": external_key or None,
            "params": canonical_json(params),
            "created_at": self._now(),
            "final_status": None,
            "finished_at": None,
            "talk_seconds": None,
            "pbx": pbx,
        }
        return self._run(self._create_call, row)

    def _create_call(self, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        assert self._db is not None
        with self._db.atomic():
            if row["external_key"] is not None:
                found = self._select(
                    f"SELECT {_CALL_COLUMNS} FROM calls WHERE external_key = ?",
                    (row["external_key"],),
                )
                if found:
                    existing = found[0]
                    if existing["kind"] == row["kind"] and existing["params"] == row["params"]:
                        return _call_from_row(existing), False
                    raise ExternalKeyConflict(existing["call_id"])
            self._insert("calls", row)
            self._insert(
                "call_status",
                {
                    "call_id": row["call_id"],
                    "order_id": row["order_id"],
                    "status": "CALL",
                    "time": row["created_at"],
                    "detail": None,
                },
            )
        return _call_from_row(dict(row)), True

    def add_status(
        self,
        call_id: str,
        status: str,
        detail: str | None = None,
        *,
        time: str | None = None,
        talk_seconds: float | None = None,
    ) -> Deferred[dict[str, Any] | None]:
        if status not in STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        when = check_time(time) if time is not None else self._now()
        d = self._run(self._add_status, call_id, status, detail, when, talk_seconds)

        def log_refused(result: tuple[dict[str, Any] | None, str | None]):
            entry, final = result
            if entry is None:
                self._log.warn(
                    "call {call_id}: {status} ignored, the call already ended with {final}",
                    call_id=call_id,
                    status=status,
                    final=final,
                )
            return entry

        return d.addCallback(log_refused)

    def _add_status(
        self,
        call_id: str,
        status: str,
        detail: str | None,
        when: str,
        talk_seconds: float | None,
    ) -> tuple[dict[str, Any] | None, str | None]:
        assert self._db is not None and self._conn is not None
        with self._db.atomic():
            found = self._select(
                "SELECT order_id, final_status FROM calls WHERE call_id = ?", (call_id,)
            )
            if not found:
                raise UnknownCall(call_id)
            order_id, final = found[0]["order_id"], found[0]["final_status"]
            if final is not None:
                return None, final
            entry = {
                "call_id": call_id,
                "order_id": order_id,
                "status": status,
                "time": when,
                "detail": detail,
            }
            entry_id = self._insert("call_status", entry)
            if status in FINAL_STATUSES:
                self._conn.execute(
                    "UPDATE calls SET final_status = ?, finished_at = ?, talk_seconds = ? "
                    "WHERE call_id = ?",
                    (status, when, talk_seconds, call_id),
                )
        return {"id": entry_id, **entry}, None

    def get_call(self, call_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(self._call, call_id)

    def get_call_by_external_key(self, external_key: str) -> Deferred[dict[str, Any] | None]:
        def query() -> dict[str, Any] | None:
            rows = self._select(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE external_key = ?", (external_key,)
            )
            return _call_from_row(rows[0]) if rows else None

        return self._run(query)

    def open_calls(self, pbx: str | None = None) -> Deferred[list[dict[str, Any]]]:
        def query() -> list[dict[str, Any]]:
            where, params = "final_status IS NULL", ()
            if pbx is not None:
                where, params = "final_status IS NULL AND pbx = ?", (pbx,)
            rows = self._select(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE {where} ORDER BY created_at", params
            )
            return [_call_from_row(r) for r in rows]

        return self._run(query)

    def statuses(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._entries, "call_id = ?", (call_id,))

    # -- recordings -------------------------------------------------------

    def add_recording(
        self,
        *,
        call_id: str,
        path: str,
        created_at: str | None = None,
        duration: float | None = None,
        size: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        when = check_time(created_at) if created_at is not None else self._now()
        duration = _milliseconds(duration)

        def insert() -> dict[str, Any]:
            assert self._db is not None
            with self._db.atomic():
                call = self._call(call_id)
                if call is None:
                    raise UnknownCall(call_id)
                row = {
                    "call_id": call_id,
                    "order_id": call["order_id"],
                    "external_key": call["external_key"],
                    "sip": call["sip"],
                    "phone": call["phone"],
                    "path": path,
                    "created_at": when,
                    "duration": duration,
                    "size": size,
                }
                record_id = self._insert("recordings", row)
            return {"record_id": record_id, **row}

        return self._run(insert)

    def update_recording(
        self, record_id: int, *, duration: float | None = None, size: int | None = None
    ) -> Deferred[dict[str, Any] | None]:
        duration = _milliseconds(duration)

        def update() -> dict[str, Any] | None:
            assert self._db is not None and self._conn is not None
            with self._db.atomic():
                if duration is not None:
                    self._conn.execute(
                        "UPDATE recordings SET duration = ? WHERE record_id = ?",
                        (duration, record_id),
                    )
                if size is not None:
                    self._conn.execute(
                        "UPDATE recordings SET size = ? WHERE record_id = ?", (size, record_id)
                    )
            return self._recording(record_id)

        return self._run(update)

    def _recording(self, record_id: int) -> dict[str, Any] | None:
        rows = self._select(
            f"SELECT {_RECORD_COLUMNS} FROM recordings WHERE record_id = ?", (record_id,)
        )
        return rows[0] if rows else None

    def get_recording(self, record_id: int) -> Deferred[dict[str, Any] | None]:
        return self._run(self._recording, record_id)

    def call_recordings(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            self._select,
            f"SELECT {_RECORD_COLUMNS} FROM recordings WHERE call_id = ? ORDER BY record_id",
            (call_id,),
        )

    # -- operators --------------------------------------------------------

    def set_operator_status(
        self, sip: str, status: str, time: str | None = None
    ) -> Deferred[bool]:
        if status not in OPERATOR_STATES:
            raise ValueError(f"unknown operator status {status!r}")
        when = check_time(time) if time is not None else self._now()

        def update() -> bool:
            assert self._db is not None and self._conn is not None
            with self._db.atomic():
                current = self._scalar("SELECT status FROM operators WHERE sip = ?", (sip,))
                if current == status:
                    return False
                self._conn.execute(
                    "INSERT INTO operators (sip, status, since) VALUES (?, ?, ?) "
                    "ON CONFLICT (sip) DO UPDATE SET status = excluded.status, "
                    "since = excluded.since",
                    (sip, status, when),
                )
                self._insert("operator_history", {"sip": sip, "status": status, "time": when})
            return True

        return self._run(update)

    def operator_statuses(self) -> Deferred[dict[str, str]]:
        def query() -> dict[str, str]:
            rows = self._select("SELECT sip, status FROM operators")
            return {r["sip"]: r["status"] for r in rows}

        return self._run(query)

    def operators(
        self, page: int, per_page: int, statuses: frozenset[str] | None = None
    ) -> Deferred[Page]:
        offset = _offset(page, per_page)
        where, params = "", []
        if statuses is not None:
            unknown = set(statuses) - set(OPERATOR_STATES)
            if unknown:
                raise ValueError(f"unknown operator status {sorted(unknown)!r}")
            where = f"WHERE status IN ({', '.join('?' * len(statuses))})"
            params = sorted(statuses)

        def query(conn: sqlite3.Connection) -> Page:
            with _snapshot(conn):
                total = self._scalar(f"SELECT count(*) FROM operators {where}", params, conn)
                rows = self._select(
                    f"SELECT sip, status, since FROM operators {where} "
                    "ORDER BY sip LIMIT ? OFFSET ?",
                    [*params, per_page, offset],
                    conn,
                )
            return Page(total, rows)

        return self._read(query)

    def operator_history(
        self, sip: str | None = None, page: int = 1, per_page: int = 20
    ) -> Deferred[Page]:
        offset = _offset(page, per_page)

        def query(conn: sqlite3.Connection) -> Page:
            if sip is None:
                return self._newest_page(
                    conn, "operator_history", "id", "id, sip, status, time", offset, per_page
                )
            with _snapshot(conn):
                total = self._scalar(
                    "SELECT count(*) FROM operator_history WHERE sip = ?", (sip,), conn
                )
                rows = self._select(
                    "SELECT id, sip, status, time FROM operator_history WHERE id IN ("
                    " SELECT id FROM operator_history WHERE sip = ?"
                    " ORDER BY id DESC LIMIT ? OFFSET ?) ORDER BY id DESC",
                    (sip, per_page, offset),
                    conn,
                )
            return Page(total, rows)

        return self._read(query)

    # -- history queries ----------------------------------------------------

    def recordings(self, page: int, per_page: int) -> Deferred[Page]:
        offset = _offset(page, per_page)
        return self._read(
            self._newest_page, "recordings", "record_id", _RECORD_COLUMNS, offset, per_page
        )

    def recordings_json(self, page: int, per_page: int, url_prefix: str) -> Deferred[JSONPage]:
        offset = _offset(page, per_page)
        return self._read(self._recordings_json, offset, per_page, url_prefix)

    def _recordings_json(
        self, conn: sqlite3.Connection, offset: int, limit: int, url_prefix: str
    ) -> JSONPage:
        """One statement (one snapshot, one step on the worker thread) for
        the usual case, ids without gaps (see :meth:`_newest_page`); with gaps
        the general page, encoded here."""
        total, lo, hi, text = conn.execute(
            _RECORD_PAGE_JSON, (url_prefix, offset, limit)
        ).fetchone()
        total = total or 0
        if total and offset < total and hi - lo + 1 != total:
            found = self._newest_page(
                conn, "recordings", "record_id", _RECORD_COLUMNS, offset, limit
            )
            return JSONPage.of(found.total, [api_record(r, url_prefix) for r in found.items])
        ids = list(map(int, _RECORD_ID.findall(text)))
        if any(a < b for a, b in zip(ids, ids[1:])):  # noqa: B905 - one shorter by design
            records = sorted(json.loads(text), key=itemgetter("record_id"), reverse=True)
            return JSONPage.of(total, records)
        return JSONPage(total, text, len(ids))

    def _newest_page(
        self,
        conn: sqlite3.Connection,
        table: str,
        id_column: str,
        columns: str,
        offset: int,
        limit: int,
    ) -> Page:
        """One page of a counted table (:data:`_COUNTED`), newest (highest id)
        first, with the table's total.

        Ids come from AUTOINCREMENT and rows are only ever removed from the
        old end, if at all, so the ids are normally exactly ``lo..hi``: then
        the page is the id range ``hi - offset`` downwards, found through the
        primary key however deep it is.  If there are gaps (``hi - lo + 1``
        differs from the count), the page is found by OFFSET over the narrow
        id index instead.
        """
        # One read transaction: the count and the ids agree even if another
        # connection writes meanwhile.
        with _snapshot(conn):
            total = self._scalar("SELECT n FROM row_counts WHERE name = ?", (table,), conn) or 0
            # Two subqueries: SQLite answers min() and max() from the index
            # ends only when each is alone in its SELECT.
            lo, hi = conn.execute(
                f"SELECT (SELECT min({id_column}) FROM {table}), "
                f"(SELECT max({id_column}) FROM {table})"
            ).fetchone()
            if not total or offset >= total:
                return Page(total, [])
            if hi - lo + 1 == total:
                top = hi - offset
                rows = self._select(
                    f"SELECT {columns} FROM {table} WHERE {id_column} BETWEEN ? AND ? "
                    f"ORDER BY {id_column} DESC",
                    (max(lo, top - limit + 1), top),
                    conn,
                )
            else:
                rows = self._select(
                    f"SELECT {columns} FROM {table} WHERE {id_column} IN ("
                    f" SELECT {id_column} FROM {table} INDEXED BY {table}_id"
                    f" ORDER BY {id_column} DESC LIMIT ? OFFSET ?) ORDER BY {id_column} DESC",
                    (limit, offset),
                    conn,
                )
        return Page(total, rows)

    def order_calls(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            with _snapshot(conn):
                calls = [
                    _call_from_row(r)
                    for r in self._select(
                        f"SELECT {_CALL_COLUMNS} FROM calls WHERE order_id = ? "
                        "ORDER BY created_at, rowid",
                        (order_id,),
                        conn,
                    )
                ]
                for call in calls:
                    call["records"] = self._select(
                        f"SELECT {_RECORD_COLUMNS} FROM recordings WHERE call_id = ? "
                        "ORDER BY record_id",
                        (call["call_id"],),
                        conn,
                    )
            return calls

        return self._read(query)

    def order_history(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._entries, "order_id = ?", (order_id,))

    def order_history_json(self, order_id: str) -> Deferred[EntryList]:
        return self._read(self._entry_list, "order_id = ?", (order_id,))

    def history_after(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        return self.history_after_json(after_id, limit, call_id).addCallback(EntryList.entries)

    def history_after_json(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[EntryList]:
        if after_id < 0 or limit < 1:
            raise ValueError("after_id must be >= 0 and limit >= 1")
        if call_id is None:
            return self._read(self._entry_list, "id > ?", (after_id,), limit)
        return self._read(
            self._entry_list, "call_id = ? AND id > ?", (call_id, after_id), limit
        )


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every statement inside sees the same snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _milliseconds(seconds: float | None) -> float | None:
    """A duration rounded to milliseconds: what is stored, and what SQLite's
    JSON (15 significant digits) then writes exactly."""
    return None if seconds is None else round(float(seconds), 3)


def _offset(page: int, per_page: int) -> int:
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be >= 1")
    return (page - 1) * per_page
