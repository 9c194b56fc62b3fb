"""SQLite queries of operators' states (tables ``operators``, the current
state of each sip, and ``operator_history``, every change).

:class:`OperatorsSQLiteMixin` is one of
:class:`~agi_app.store.sqlite.SQLiteStore`'s bases.  A state change is
written on the engine's single worker thread, so comparing with the current
state and adding the history row needs no further locking: each change is
in the history exactly once.
"""

from __future__ import annotations

import sqlite3

from twisted.internet.defer import Deferred

from agi_app.store.base import OPERATOR_STATES, Page, check_time
from agi_app.store.engine import SQLiteEngine, page_offset, snapshot

__all__ = ["OperatorsSQLiteMixin"]


class OperatorsSQLiteMixin(SQLiteEngine):
    """Operators' current states and the history of their changes."""

    def set_operator_status(
        self, sip: str, status: str, time: str | None = None, pbx: str = "default"
    ) -> Deferred[bool]:
        if status not in OPERATOR_STATES:
            raise ValueError(f"unknown operator status {status!r}")
        when = check_time(time) if time is not None else self._now()

        def update() -> bool:
            assert self._db is not None and self._conn is not None
            with self._db.atomic():
                current = self._scalar(
                    "SELECT status FROM operators WHERE pbx = ? AND sip = ?", (pbx, sip)
                )
                if current == status:
                    return False
                self._conn.execute(
                    "INSERT INTO operators (pbx, sip, status, since) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pbx, sip) DO UPDATE SET status = excluded.status, "
                    "since = excluded.since",
                    (pbx, sip, status, when),
                )
                self._insert(
                    "operator_history", {"sip": sip, "status": status, "time": when, "pbx": pbx}
                )
            return True

        return self._run(update)

    def operator_statuses(self, pbx: str = "default") -> Deferred[dict[str, str]]:
        def query() -> dict[str, str]:
            rows = self._select("SELECT sip, status FROM operators WHERE pbx = ?", (pbx,))
            return {r["sip"]: r["status"] for r in rows}

        return self._run(query)

    def operators(
        self, page: int, per_page: int, statuses: frozenset[str] | None = None
    ) -> Deferred[Page]:
        offset = page_offset(page, per_page)
        where, params = "", []
        if statuses is not None:
            unknown = set(statuses) - set(OPERATOR_STATES)
            if unknown:
                raise ValueError(f"unknown operator status {sorted(unknown)!r}")
            where = f"WHERE status IN ({', '.join('?' * len(statuses))})"
            params = sorted(statuses)

        def query(conn: sqlite3.Connection) -> Page:
            with snapshot(conn):
                total = self._scalar(f"SELECT count(*) FROM operators {where}", params, conn)
                rows = self._select(
                    f"SELECT sip, status, since, pbx FROM operators {where} "
                    "ORDER BY sip, pbx LIMIT ? OFFSET ?",
                    [*params, per_page, offset],
                    conn,
                )
            return Page(total, rows)

        return self._read(query)

    def operator_history(
        self, sip: str | None = None, page: int = 1, per_page: int = 20
    ) -> Deferred[Page]:
        offset = page_offset(page, per_page)

        def query(conn: sqlite3.Connection) -> Page:
            if sip is None:
                return self._newest_page(
                    conn, "operator_history", "id", "id, sip, status, time, pbx", offset, per_page
                )
            with snapshot(conn):
                total = self._scalar(
                    "SELECT count(*) FROM operator_history WHERE sip = ?", (sip,), conn
                )
                rows = self._select(
                    "SELECT id, sip, status, time, pbx FROM operator_history WHERE id IN ("
                    " SELECT id FROM operator_history WHERE sip = ?"
                    " ORDER BY id DESC LIMIT ? OFFSET ?) ORDER BY id DESC",
                    (sip, per_page, offset),
                    conn,
                )
            return Page(total, rows)

        return self._read(query)
