"""PostgreSQL queries of the call statistics (tables ``operator_totals``,
``operator_sips``, ``outcome_hours`` and ``outcome_days``, kept by the
triggers of :mod:`agi_app.store.pg_schema`): the same answers as
:mod:`agi_app.store.stats_sqlite`, by the same two primary-key lookups per
operator.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.pg_engine import PostgresEngine
from agi_app.store.schema import OPERATOR_FIGURES
from agi_app.store.stats_sqlite import hour_key

__all__ = ["StatsPostgresMixin"]


def _totals_before(alias: str, bound: str) -> str:
    # the operator's latest running totals before the hour ``bound``
    return (
        f"operator_totals {alias} ON {alias}.sip = o.sip AND {alias}.hour = ("
        f"SELECT max(hour) FROM operator_totals WHERE sip = o.sip AND hour < {bound})"
    )


_FIGURES = ", ".join(f"e.{c} - coalesce(s.{c}, 0) AS {c}" for c in OPERATOR_FIGURES)
_OPERATOR_STATS = (
    f"SELECT o.sip AS sip, {_FIGURES} FROM operator_sips o "
    f"JOIN {_totals_before('e', '%(end)s')} LEFT JOIN {_totals_before('s', '%(start)s')} "
)


class StatsPostgresMixin(PostgresEngine):
    """Operator statistics and outcomes per hour or day, from the summary tables."""

    def operator_stats(
        self, start: str, end: str, sip: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        params = {"start": hour_key(start), "end": hour_key(end), "sip": sip}
        sql = _OPERATOR_STATS + ("WHERE o.sip = %(sip)s " if sip is not None else "")
        sql += "ORDER BY o.sip"

        def query(conn) -> list[dict[str, Any]]:
            if params["end"] <= params["start"]:
                return []
            # operators without a call in the range have no difference
            return [r for r in self._select(conn, sql, params) if r["offered"]]

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

        def query(conn) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT period, status, n FROM {table} WHERE period >= %s AND period < %s "
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
