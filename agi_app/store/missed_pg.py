"""PostgreSQL queries of missed calls (table ``missed_calls``): the same
answers as :mod:`agi_app.store.missed_sqlite`.

:class:`MissedPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases.  Several processes
may write: a new missed call takes :data:`~agi_app.store.pg_schema.MISSED_LOCK`
for the rest of its transaction before its id, so ids become visible in
order (the ``missedCalls`` cursor relies on it, as the history's ids do:
see :mod:`agi_app.store.calls_pg`); marking handled is one ``UPDATE ...
WHERE called_back IS NULL``, which PostgreSQL re-checks after waiting for a
concurrent one, so a missed call is marked handled exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.base import check_time
from agi_app.store.missed_sqlite import MISSED_COLUMNS
from agi_app.store.pg_engine import PostgresEngine
from agi_app.store.pg_schema import MISSED_LOCK

__all__ = ["MissedPostgresMixin"]


def _missed_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row["extensions"] = [e for e in row["extensions"].split(",") if e]
    return row


class MissedPostgresMixin(PostgresEngine):
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

        def insert(conn) -> dict[str, Any]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MISSED_LOCK,))
                new_id = self._insert(conn, "missed_calls", row, "id")
            rows = self._select(
                conn, f"SELECT {MISSED_COLUMNS} FROM missed_calls WHERE id = %s", (new_id,)
            )
            return _missed_from_row(rows[0])

        return self._run(insert)

    def missed_calls_after(
        self, after_id: int, limit: int, open_only: bool = False
    ) -> Deferred[list[dict[str, Any]]]:
        if after_id < 0 or limit < 1:
            raise ValueError("after_id must be >= 0 and limit >= 1")
        where = "id > %s AND called_back IS NULL" if open_only else "id > %s"

        def query(conn) -> list[dict[str, Any]]:
            rows = self._select(
                conn,
                f"SELECT {MISSED_COLUMNS} FROM missed_calls WHERE {where} ORDER BY id LIMIT %s",
                (after_id, limit),
            )
            return [_missed_from_row(r) for r in rows]

        return self._read(query)

    def open_missed_calls(
        self, since: str | None = None, pbx: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = ["called_back IS NULL", "phone IS NOT NULL"], []
        if since is not None:
            where.append("time >= %s")
            params.append(check_time(since))
        if pbx is not None:
            where.append("pbx = %s")
            params.append(pbx)

        def query(conn) -> list[dict[str, Any]]:
            rows = self._select(
                conn,
                f"SELECT {MISSED_COLUMNS} FROM missed_calls "
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

        def update(conn) -> list[int]:
            if not phones:
                return []
            rows = conn.execute(
                "UPDATE missed_calls SET called_back = %s, handled_at = %s "
                "WHERE phone = ANY(%s) AND called_back IS NULL RETURNING id",
                (call_id, time, phones),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return self._run(update)

    def missed_callback_placed(
        self, phones: Sequence[str], call_id: str, time: str
    ) -> Deferred[int]:
        check_time(time)
        phones = [p for p in dict.fromkeys(phones) if p]

        def update(conn) -> int:
            if not phones:
                return 0
            return conn.execute(
                "UPDATE missed_calls SET callback_attempts = callback_attempts + 1, "
                "last_callback = %s, last_callback_at = %s "
                "WHERE phone = ANY(%s) AND called_back IS NULL",
                (call_id, time, phones),
            ).rowcount

        return self._run(update)
