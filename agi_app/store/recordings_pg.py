"""PostgreSQL queries of recordings (table ``recordings``), and the CRM API's
``recordList`` page of them.

:class:`RecordingsPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases.  A recording copies
its call's order_id, external_key, sip and phone when it is stored, in the
same statement that inserts it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.base import JSONPage, Page, UnknownCall, check_time
from agi_app.store.pg_engine import PostgresEngine, json_object_sql, newest_page_sql

__all__ = ["RECORD_COLUMNS", "RecordingsPostgresMixin"]

#: The columns of a stored recording, in the order of the table.
RECORD_COLUMNS = (
    "record_id, call_id, order_id, external_key, sip, phone, path, created_at, duration, size, "
    "pbx"
)
# A recording as the CRM API lists it (see base.api_record): every column
# but the path, then the url (the prefix is the query's parameter).
_API_COLUMNS = ", ".join(c for c in RECORD_COLUMNS.split(", ") if c != "path")
_RECORD_API_JSON = json_object_sql(
    _API_COLUMNS, "p.", extra=(("url", "%(prefix)s::text || p.record_id"),)
)
_RECORD_PAGE_JSON = newest_page_sql("recordings", "record_id", _RECORD_API_JSON, RECORD_COLUMNS)
_INSERT = f"""
INSERT INTO recordings
    (call_id, order_id, external_key, sip, phone, path, created_at, duration, size, pbx)
SELECT call_id, order_id, external_key, sip, phone, %s, %s, %s, %s, pbx
FROM calls WHERE call_id = %s
RETURNING {RECORD_COLUMNS}
"""


class RecordingsPostgresMixin(PostgresEngine):
    """Recordings of calls, and their newest-first listing."""

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

        def insert(conn) -> dict[str, Any]:
            rows = self._select(conn, _INSERT, (path, when, duration, size, call_id))
            if not rows:
                raise UnknownCall(call_id)
            return rows[0]

        return self._run(insert)

    def update_recording(
        self, record_id: int, *, duration: float | None = None, size: int | None = None
    ) -> Deferred[dict[str, Any] | None]:
        duration = _milliseconds(duration)

        def update(conn) -> dict[str, Any] | None:
            rows = self._select(
                conn,
                "UPDATE recordings SET duration = coalesce(%s, duration), "
                f"size = coalesce(%s, size) WHERE record_id = %s RETURNING {RECORD_COLUMNS}",
                (duration, size, record_id),
            )
            return rows[0] if rows else None

        return self._run(update)

    def _recording(self, conn, record_id: int) -> dict[str, Any] | None:
        rows = self._select(
            conn, f"SELECT {RECORD_COLUMNS} FROM recordings WHERE record_id = %s", (record_id,)
        )
        return rows[0] if rows else None

    def get_recording(self, record_id: int) -> Deferred[dict[str, Any] | None]:
        return self._run(self._recording, record_id)

    def call_recordings(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            self._select,
            f"SELECT {RECORD_COLUMNS} FROM recordings WHERE call_id = %s ORDER BY record_id",
            (call_id,),
        )

    # -- history queries ----------------------------------------------------

    def recordings(self, page: int, per_page: int) -> Deferred[Page]:
        offset = _offset(page, per_page)
        return self._read(
            self._newest_page, "recordings", "record_id", RECORD_COLUMNS, offset, per_page
        )

    def recordings_json(self, page: int, per_page: int, url_prefix: str) -> Deferred[JSONPage]:
        offset = _offset(page, per_page)

        def query(conn) -> JSONPage:
            total, text, count = conn.execute(
                _RECORD_PAGE_JSON, {"offset": offset, "limit": per_page, "prefix": url_prefix}
            ).fetchone()
            return JSONPage(total, text, count)

        return self._read(query)


def _offset(page: int, per_page: int) -> int:
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be >= 1")
    return (page - 1) * per_page


def _milliseconds(seconds: float | None) -> float | None:
    """A duration rounded to milliseconds, as SQLite's store keeps it."""
    return None if seconds is None else round(float(seconds), 3)
