"""SQLite queries of the call statistics (tables ``operator_totals``,
``operator_sips``, ``outcome_hours`` and ``outcome_days``; what they hold and
the triggers that keep them: :mod:`agi_app.store.schema`).

An operator's figures over a range of hours are the difference of two rows
of running totals -- the latest before the range's end and the latest
before its start, each one primary-key lookup -- so a year costs what an
hour costs: two lookups per operator.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.engine import SQLiteEngine
from agi_app.store.schema import OPERATOR_FIGURES

__all__ = ["StatsSQLiteMixin", "hour_key"]


def hour_key(time: str) -> str:
    """The hour key (``2026-12-06T10``) of a time at a whole hour
    (``2026-12-06T10:00:00.000Z``); ValueError for any other time."""
    if not isinstance(time, str) or len(time) != 24 or not time.endswith(":00:00.000Z"):
        raise ValueError(f"not a whole hour: {time!r}")
    datetime.strptime(time[:13], "%Y-%m-%dT%H")
    return time[:13]


def _totals_before(alias: str, bound: str) -> str:
    # the operator's latest running totals before the hour ``bound``
    return (
        f"operator_totals {alias} ON {alias}.sip = o.sip AND {alias}.hour = ("
        f"SELECT max(hour) FROM operator_totals WHERE sip = o.sip AND hour < {bound})"
    )


_FIGURES = ", ".join(f"e.{c} - coalesce(s.{c}, 0) AS {c}" for c in OPERATOR_FIGURES)
_OPERATOR_STATS = (
    f"SELECT o.sip AS sip, {_FIGURES} FROM operator_sips o "
    f"JOIN {_totals_before('e', ':end')} LEFT JOIN {_totals_before('s', ':start')} "
)


class StatsSQLiteMixin(SQLiteEngine):
    """Operator statistics and outcomes per hour or day, from the summary tables."""

    def operator_stats(
        self, start: str, end: str, sip: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        params = {"start": hour_key(start), "end": hour_key(end), "sip": sip}
        sql = _OPERATOR_STATS + ("WHERE o.sip = :sip " if sip is not None else "")
        sql += "ORDER BY o.sip"

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if params["end"] <= params["start"]:
                return []
            # operators without a call in the range have no difference
            return [r for r in self._select(sql, params, conn) if r["offered"]]

        return self._read(query)

    def call_outcomes(
        self, start: str, end: str, by: str = "hour"
    ) -> Deferred[list[dict[str, Any]]]:
        if by not in ("hour", "day"):
            raise ValueError(f"by must be hour or day, not {by!r}")
        lo, hi = hour_key(start), hour_key(end)
        table = "outcome_hours"
        if by == "day":
            if lo[11:] != "00" or hi[11:] != "00":
                raise ValueError("a range by day runs from midnight to midnight")
            table, lo, hi = "outcome_days", lo[:10], hi[:10]

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT period, status, n FROM {table} WHERE period >= ? AND period < ? "
                "ORDER BY period, status",
                (lo, hi),
            ).fetchall()
            out: list[dict[str, Any]] = []
            for period, status, n in rows:
                if not out or out[-1]["period"] != period:
                    out.append({"period": period, "counts": {}})
                out[-1]["counts"][status] = n
            return out

        return self._read(query)
