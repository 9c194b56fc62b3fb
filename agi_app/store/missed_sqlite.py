"""SQLite queries of missed calls (table ``missed_calls``): inbound calls
nobody answered, whether someone got through to the caller since, and the
callbacks placed to them.

:class:`MissedSQLiteMixin` is one of :class:`~agi_app.store.sqlite.SQLiteStore`'s
bases.  Its writes run on the engine's single worker thread, so ids are
assigned in commit order (the ``missedCalls`` cursor relies on it) and a
missed call is marked handled exactly once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.base import check_time
from agi_app.store.engine import SQLiteEngine

__all__ = ["MISSED_COLUMNS", "MissedSQLiteMixin"]

MISSED_COLUMNS = (
    "id, call_id, phone, did, time, extensions, ring_seconds, called_back, handled_at, "
    "callback_attempts, last_callback, last_callback_at, pbx"
)


def _missed_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row["extensions"] = [e for e in row["extensions"].split(",") if e]
    return row


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


class MissedSQLiteMixin(SQLiteEngine):
    """Missed calls: recorded once, listed after a cursor, marked handled."""

    def add_missed_call(
        self,
        *,
        call_id: str,
        phone: str | None,
        did: str | None,
        time: str,
        extensions: Sequence[str],
        ring_seconds: float,
        pbx: str = "default",
    ) -> Deferred[dict[str, Any]]:
        check_time(time)
        bad = [e for e in extensions if not e or "," in e]
        if bad:
            raise ValueError(f"extensions must be non-empty and without commas: {bad!r}")
        row = {
            "call_id": call_id,
            "phone": phone,
            "did": did,
            "time": time,
            "extensions": ",".join(extensions),
            "ring_seconds": round(max(0.0, ring_seconds), 3),
            "pbx": pbx,
        }

        def insert() -> dict[str, Any]:
            new_id = self._insert("missed_calls", row)
            rows = self._select(f"SELECT {MISSED_COLUMNS} FROM missed_calls WHERE id = ?",
                                (new_id,))  # fmt: skip
            return _missed_from_row(rows[0])

        return self._run(insert)

    def missed_calls_after(
        self, after_id: int, limit: int, open_only: bool = False
    ) -> Deferred[list[dict[str, Any]]]:
        if after_id < 0 or limit < 1:
            raise ValueError("after_id must be >= 0 and limit >= 1")
        where = "id > ? AND called_back IS NULL" if open_only else "id > ?"

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = self._select(
                f"SELECT {MISSED_COLUMNS} FROM missed_calls WHERE {where} ORDER BY id LIMIT ?",
                (after_id, limit),
                conn,
            )
            return [_missed_from_row(r) for r in rows]

        return self._read(query)

    def open_missed_calls(
        self, since: str | None = None, pbx: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = ["called_back IS NULL", "phone IS NOT NULL"], []
        if since is not None:
            where.append("time >= ?")
            params.append(check_time(since))
        if pbx is not None:
            where.append("pbx = ?")
            params.append(pbx)

        def query() -> list[dict[str, Any]]:
            rows = self._select(
                f"SELECT {MISSED_COLUMNS} FROM missed_calls INDEXED BY missed_calls_open "
                f"WHERE {' AND '.join(where)} ORDER BY id",
                params,
            )
            return [_missed_from_row(r) for r in rows]

        return self._run(query)

    def missed_calls_handled(
        self, phones: Sequence[str], call_id: str, time: str
    ) -> Deferred[list[int]]:
        check_time(time)
        phones = [p for p in dict.fromkeys(phones) if p]
        if not phones:
            return self._run(list)

        def update() -> list[int]:
            assert self._db is not None and self._conn is not None
            with self._db.atomic():
                ids = [
                    r["id"]
                    for r in self._select(
                        "SELECT id FROM missed_calls INDEXED BY missed_calls_open_phone "
                        f"WHERE phone IN ({_placeholders(phones)}) AND called_back IS NULL "
                        "ORDER BY id",
                        phones,
                    )
                ]
                if ids:
                    self._conn.execute(
                        "UPDATE missed_calls SET called_back = ?, handled_at = ? "
                        f"WHERE id IN ({_placeholders(ids)})",
                        (call_id, time, *ids),
                    )
            return ids

        return self._run(update)

    def missed_callback_placed(
        self, phones: Sequence[str], call_id: str, time: str
    ) -> Deferred[int]:
        check_time(time)
        phones = [p for p in dict.fromkeys(phones) if p]
        if not phones:
            return self._run(int)

        def update() -> int:
            assert self._conn is not None
            return self._conn.execute(
                "UPDATE missed_calls SET callback_attempts = callback_attempts + 1, "
                "last_callback = ?, last_callback_at = ? "
                f"WHERE phone IN ({_placeholders(phones)}) AND called_back IS NULL",
                (call_id, time, *phones),
            ).rowcount

        return self._run(update)
