"""SQLite queries of the call statistics (tables ``operator_hours``,
``operator_days``, ``outcome_hours``, ``outcome_days``; what they hold and
the triggers that keep them: :mod:`agi_app.store.schema`).

A range of whole hours is read as the whole days inside it from the day
tables plus the hours at its two ends from the hour tables, so a month is
about 30 rows per operator however many calls it had.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.engine import SQLiteEngine

__all__ = ["StatsSQLiteMixin", "hour_key"]

_SUMS = ("offered", "answered", "ring_ms", "talked", "talk_ms")


def hour_key(time: str) -> str:
    """The hour key (``2026-12-06T10``) of a time at a whole hour
    (``2026-12-06T10:00:00.000Z``); ValueError for any other time."""
    if len(time) != 24 or not time.endswith(":00:00.000Z"):
        raise ValueError(f"not a whole hour: {time!r}")
    datetime.strptime(time[:13], "%Y-%m-%dT%H")
    return time[:13]


def _split(start: str, end: str) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """``[start, end)`` (hour keys) as a range of whole days (day keys, or
    None) and the ranges of hours around it."""
    if end <= start:
        return None, []
    first = datetime.strptime(start, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    if first.hour:
        first = first.replace(hour=0) + timedelta(days=1)
    first_day, end_day = first.strftime("%Y-%m-%d"), end[:10]
    if first_day >= end_day:
        return None, [(start, end)]
    hours = [(start, f"{first_day}T00"), (f"{end_day}T00", end)]
    return (first_day, end_day), [(a, b) for a, b in hours if a < b]


class StatsSQLiteMixin(SQLiteEngine):
    """Operator statistics and outcomes per hour or day, from the summary tables."""

    def operator_stats(
        self, start: str, end: str, sip: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        days, hours = _split(hour_key(start), hour_key(end))
        parts, params = [], []
        columns = ", ".join(_SUMS)
        only = " AND sip = ?" if sip is not None else ""
        if days is not None:
            parts.append(
                f"SELECT sip, {columns} FROM operator_days WHERE day >= ? AND day < ?{only}"
            )
            params += [*days, *([sip] if sip is not None else [])]
        for a, b in hours:
            parts.append(
                f"SELECT sip, {columns} FROM operator_hours WHERE hour >= ? AND hour < ?{only}"
            )
            params += [a, b, *([sip] if sip is not None else [])]
        if not parts:
            return self._read(lambda conn: [])
        sums = ", ".join(f"sum({c}) AS {c}" for c in _SUMS)
        sql = f"SELECT sip, {sums} FROM ({' UNION ALL '.join(parts)}) GROUP BY sip ORDER BY sip"

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return self._select(sql, params, conn)

        return self._read(query)

    def call_outcomes(
        self, start: str, end: str, by: str = "hour"
    ) -> Deferred[list[dict[str, Any]]]:
        if by not in ("hour", "day"):
            raise ValueError(f"by must be hour or day, not {by!r}")
        a, b = hour_key(start), hour_key(end)
        if by == "day":
            if a[11:] != "00" or b[11:] != "00":
                raise ValueError("a range by day runs from midnight to midnight")
            table, lo, hi = "outcome_days", a[:10], b[:10]
        else:
            table, lo, hi = "outcome_hours", a, b

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {by}, status, n FROM {table} WHERE {by} >= ? AND {by} < ? "
                f"ORDER BY {by}, status",
                (lo, hi),
            ).fetchall()
            out: list[dict[str, Any]] = []
            for period, status, n in rows:
                if not out or out[-1]["period"] != period:
                    out.append({"period": period, "counts": {}})
                out[-1]["counts"][status] = n
            return out

        return self._read(query)
