"""SQLite queries of calls and their status history (tables ``calls`` and
``call_status``), and the CRM API's history reads of them.

:class:`CallsSQLiteMixin` is one of :class:`~agi_app.store.sqlite.SQLiteStore`'s
bases.  Its writes run on the engine's single worker thread, which is what
makes "exactly one final status per call" a plain read-check-write.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from agi_app.store.base import (
    CALL_KINDS,
    ERASURE_SUBJECTS,
    FINAL_STATUSES,
    STATUSES,
    CallBatch,
    Deleted,
    EntryList,
    ExternalKeyConflict,
    UnknownCall,
    canonical_json,
    check_time,
)
from agi_app.store.engine import SQLiteEngine, snapshot
from agi_app.store.recordings_sqlite import RECORD_COLUMNS

__all__ = ["CallsSQLiteMixin"]

_CALL_COLUMNS = (
    "call_id, kind, sip, phone, order_id, external_key, params, created_at, "
    "final_status, finished_at, talk_seconds, pbx"
)
_ENTRY_COLUMNS = "id, call_id, order_id, status, time, detail, pbx"
# The same columns as one JSON object per entry (none is REAL: SQLite's JSON
# would print a REAL with 15 significant digits, not exactly).
_ENTRY_JSON = "json_object(" + ", ".join(
    f"'{c}', {c}" for c in _ENTRY_COLUMNS.split(", ")
) + ")"
# The start of each entry object in that text, with its id.
_ENTRY_ID = re.compile(r'\{"id":(-?[0-9]+)')
# A list of ids as one parameter: the JSON text of the array.  SQLite looks
# each value up in the index (no limit on the number of ``?``).
_IDS = "(SELECT value FROM json_each(?))"
_ERASURE_COLUMNS = "id, time, subject, subject_id, calls, entries, recordings, files, events"


def _call_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row["params"] = json.loads(row["params"])
    return row


class CallsSQLiteMixin(SQLiteEngine):
    """Calls, their status history, and the history reads of the CRM API
    (``order_calls`` lists each call's recordings too)."""

    _log = Logger()

    # -- helpers run on the worker thread -----------------------------------

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
        # One job of the worker thread: its own savepoint (engine._batch)
        # makes it all or nothing.
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
                "pbx": row["pbx"],
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
        assert self._conn is not None
        # one job of the worker thread, in a savepoint of its own (engine._batch)
        found = self._select(
            "SELECT order_id, final_status, pbx FROM calls WHERE call_id = ?", (call_id,)
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
            "pbx": found[0]["pbx"],
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

    # -- history queries ----------------------------------------------------

    def order_calls(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            with snapshot(conn):
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
                        f"SELECT {RECORD_COLUMNS} FROM recordings WHERE call_id = ? "
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

    # -- retention and erasure ----------------------------------------------

    def _recording_files(self, conn: sqlite3.Connection, ids_json: str) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in conn.execute(
                f"SELECT call_id, path FROM recordings WHERE call_id IN {_IDS} "
                "ORDER BY record_id",
                (ids_json,),
            )
        ]

    def old_calls(
        self, before: str, limit: int, skip: Sequence[str] = ()
    ) -> Deferred[CallBatch]:
        check_time(before)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        skipped = json.dumps(list(skip))

        def query() -> CallBatch:
            conn = self._conn
            assert conn is not None
            with snapshot(conn):
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT call_id FROM calls INDEXED BY calls_created "
                        "WHERE created_at < ? AND final_status IS NOT NULL "
                        f"AND call_id NOT IN {_IDS} ORDER BY created_at LIMIT ?",
                        (before, skipped, limit),
                    )
                ]
                files = self._recording_files(conn, json.dumps(ids)) if ids else []
            return CallBatch(ids, files)

        return self._run(query)

    def subject_calls(
        self, *, order_id: str | None = None, phone: str | None = None, limit: int = 500
    ) -> Deferred[CallBatch]:
        if (order_id is None) == (phone is None):
            raise ValueError("give exactly one of order_id and phone")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if order_id is not None:
            where, params = "order_id = ?", (order_id,)
        else:
            # The number as given and its other spelling (with or without "+").
            assert phone is not None
            bare = phone.removeprefix("+")
            spellings = json.dumps([bare, "+" + bare])
            where = (
                f"call_id IN (SELECT call_id FROM calls WHERE phone IN {_IDS} "
                f"UNION SELECT call_id FROM calls WHERE kind = 'phoneToPhone' AND sip IN {_IDS})"
            )
            params = (spellings, spellings)

        def query() -> CallBatch:
            conn = self._conn
            assert conn is not None
            with snapshot(conn):
                open_ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT call_id FROM calls WHERE {where} AND final_status IS NULL "
                        "ORDER BY created_at",
                        params,
                    )
                ]
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT call_id FROM calls WHERE {where} AND final_status IS NOT NULL "
                        "ORDER BY created_at, rowid LIMIT ?",
                        (*params, limit),
                    )
                ]
                files = self._recording_files(conn, json.dumps(ids)) if ids else []
            return CallBatch(ids, files, open_ids)

        return self._run(query)

    def delete_calls(self, call_ids: Sequence[str]) -> Deferred[Deleted]:
        wanted = json.dumps(list(dict.fromkeys(call_ids)))

        def delete() -> Deleted:
            assert self._db is not None and self._conn is not None
            conn = self._conn
            with self._db.atomic():
                ids = json.dumps(
                    [
                        r[0]
                        for r in conn.execute(
                            f"SELECT call_id FROM calls WHERE call_id IN {_IDS} "
                            "AND final_status IS NOT NULL",
                            (wanted,),
                        )
                    ]
                )
                paths = [path for _call, path in self._recording_files(conn, ids)]
                # Children first: both reference calls (foreign keys are on).
                # Each recording row deleted updates row_counts (its trigger).
                recordings = conn.execute(
                    f"DELETE FROM recordings WHERE call_id IN {_IDS}", (ids,)
                ).rowcount
                entries = conn.execute(
                    f"DELETE FROM call_status WHERE call_id IN {_IDS}", (ids,)
                ).rowcount
                calls = conn.execute(f"DELETE FROM calls WHERE call_id IN {_IDS}", (ids,)).rowcount
            return Deleted(calls, entries, recordings, paths)

        return self._run(delete)

    def log_erasure(
        self, subject: str, subject_id: str, counts: Mapping[str, int]
    ) -> Deferred[dict[str, Any]]:
        if subject not in ERASURE_SUBJECTS:
            raise ValueError(f"unknown erasure subject {subject!r}")
        row = {
            "time": self._now(),
            "subject": subject,
            "subject_id": subject_id,
            **{k: int(counts.get(k, 0)) for k in
               ("calls", "entries", "recordings", "files", "events")},
        }  # fmt: skip

        def insert() -> dict[str, Any]:
            return {"id": self._insert("erasures", row), **row}

        return self._run(insert)

    def erasures(
        self, subject: str | None = None, subject_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = [], []
        if subject is not None:
            where.append("subject = ?")
            params.append(subject)
        if subject_id is not None:
            where.append("subject_id = ?")
            params.append(subject_id)
        sql = f"SELECT {_ERASURE_COLUMNS} FROM erasures"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._run(self._select, sql + " ORDER BY id", params)
