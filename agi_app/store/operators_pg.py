"""PostgreSQL queries of operators' states (tables ``operators``, the current
state of each sip, and ``operator_history``, every change).

:class:`OperatorsPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases.  A state change
locks the operator's row before comparing (a new operator's row is made
first, so there is a row to lock), so with several writers too each change
is in the history exactly once.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from agi_app.store.base import OPERATOR_STATES, Page, check_time
from agi_app.store.pg_engine import PostgresEngine

__all__ = ["OperatorsPostgresMixin"]

_PAGE = """
WITH m AS (SELECT sip, status, since, pbx FROM operators {where})
SELECT (SELECT count(*) FROM m),
       (SELECT coalesce(json_agg(p ORDER BY p.sip, p.pbx), '[]'::json)
        FROM (SELECT * FROM m ORDER BY sip, pbx LIMIT %(limit)s OFFSET %(offset)s) p)
"""
_SIP_HISTORY = """
SELECT (SELECT count(*) FROM operator_history WHERE sip = %(sip)s),
       (SELECT coalesce(json_agg(p ORDER BY p.id DESC), '[]'::json)
        FROM (SELECT id, sip, status, time, pbx FROM operator_history WHERE sip = %(sip)s
              ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s) p)
"""


class OperatorsPostgresMixin(PostgresEngine):
    """Operators' current states and the history of their changes."""

    def set_operator_status(
        self, sip: str, status: str, time: str | None = None, pbx: str = "default"
    ) -> Deferred[bool]:
        if status not in OPERATOR_STATES:
            raise ValueError(f"unknown operator status {status!r}")
        when = check_time(time) if time is not None else self._now()

        def update(conn) -> bool:
            with conn.transaction():
                created = conn.execute(
                    "INSERT INTO operators (pbx, sip, status, since) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (pbx, sip) DO NOTHING RETURNING sip",
                    (pbx, sip, status, when),
                ).fetchone()
                if created is None:
                    current = self._scalar(
                        conn,
                        "SELECT status FROM operators WHERE pbx = %s AND sip = %s FOR UPDATE",
                        (pbx, sip),
                    )
                    if current == status:
                        return False
                    conn.execute(
                        "UPDATE operators SET status = %s, since = %s WHERE pbx = %s AND sip = %s",
                        (status, when, pbx, sip),
                    )
                conn.execute(
                    "INSERT INTO operator_history (sip, status, time, pbx) "
                    "VALUES (%s, %s, %s, %s)",
                    (sip, status, when, pbx),
                )
            return True

        return self._run(update)

    def operator_statuses(self, pbx: str = "default") -> Deferred[dict[str, str]]:
        def query(conn) -> dict[str, str]:
            return dict(
                conn.execute("SELECT sip, status FROM operators WHERE pbx = %s", (pbx,)).fetchall()
            )

        return self._run(query)

    def operators(
        self, page: int, per_page: int, statuses: frozenset[str] | None = None
    ) -> Deferred[Page]:
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page must be >= 1")
        params = {"limit": per_page, "offset": (page - 1) * per_page}
        where = ""
        if statuses is not None:
            unknown = set(statuses) - set(OPERATOR_STATES)
            if unknown:
                raise ValueError(f"unknown operator status {sorted(unknown)!r}")
            where = "WHERE status = ANY(%(statuses)s)"
            params["statuses"] = sorted(statuses)

        def query(conn) -> Page:
            total, items = conn.execute(_PAGE.format(where=where), params).fetchone()
            return Page(total, items)

        return self._read(query)

    def operator_history(
        self, sip: str | None = None, page: int = 1, per_page: int = 20
    ) -> Deferred[Page]:
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page must be >= 1")
        offset = (page - 1) * per_page

        def query(conn) -> Page:
            if sip is None:
                return self._newest_page(
                    conn, "operator_history", "id", "id, sip, status, time, pbx", offset, per_page
                )
            total, items = conn.execute(
                _SIP_HISTORY, {"sip": sip, "limit": per_page, "offset": offset}
            ).fetchone()
            return Page(total, items)

        return self._read(query)

