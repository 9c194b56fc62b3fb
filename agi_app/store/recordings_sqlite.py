"""SQLite queries of recordings (table ``recordings``), and the CRM API's
``recordList`` page of them.

:class:`RecordingsSQLiteMixin` is one of
:class:`~agi_app.store.sqlite.SQLiteStore`'s bases.  A recording copies its
call's order_id, external_key, sip and phone when it is stored (read with
the calls mixin's ``_call``, in the same transaction).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.base import JSONPage, Page, UnknownCall, api_record, check_time
from agi_app.store.engine import SQLiteEngine, page_offset

__all__ = ["RECORD_COLUMNS", "RecordingsSQLiteMixin"]

#: The columns of a stored recording, in the order of the table.
RECORD_COLUMNS = (
    "record_id, call_id, order_id, external_key, sip, phone, path, created_at, duration, size, "
    "pbx"
)
# A recording as the CRM API lists it (see base.api_record); durations are
# stored rounded to milliseconds, which SQLite's JSON writes exactly.
_RECORD_API_JSON = (
    "json_object("
    + ", ".join(f"'{c}', {c}" for c in RECORD_COLUMNS.split(", ") if c != "path")
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


class RecordingsSQLiteMixin(SQLiteEngine):
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

        def insert() -> dict[str, Any]:
            assert self._db is not None
            with self._db.atomic():
                call = self._call(call_id)  # CallsSQLiteMixin
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
                    "pbx": call["pbx"],
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
            f"SELECT {RECORD_COLUMNS} FROM recordings WHERE record_id = ?", (record_id,)
        )
        return rows[0] if rows else None

    def get_recording(self, record_id: int) -> Deferred[dict[str, Any] | None]:
        return self._run(self._recording, record_id)

    def call_recordings(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            self._select,
            f"SELECT {RECORD_COLUMNS} FROM recordings WHERE call_id = ? ORDER BY record_id",
            (call_id,),
        )

    # -- retention ------------------------------------------------------------

    def old_recordings(
        self, before: str, limit: int, skip: Sequence[int] = ()
    ) -> Deferred[list[dict[str, Any]]]:
        check_time(before)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return self._run(
            self._select,
            "SELECT r.record_id, r.path FROM recordings r INDEXED BY recordings_created "
            "JOIN calls c ON c.call_id = r.call_id "
            "WHERE r.created_at < ? AND c.final_status IS NOT NULL "
            "AND r.record_id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY r.created_at LIMIT ?",
            (before, json.dumps([int(i) for i in skip]), limit),
        )

    def delete_recordings(self, record_ids: Sequence[int]) -> Deferred[int]:
        ids = json.dumps([int(i) for i in record_ids])

        def delete() -> int:
            assert self._db is not None and self._conn is not None
            with self._db.atomic():
                # (each deleted row updates row_counts: its trigger)
                return self._conn.execute(
                    "DELETE FROM recordings WHERE record_id IN "
                    "(SELECT value FROM json_each(?)) AND EXISTS "
                    "(SELECT 1 FROM calls c WHERE c.call_id = recordings.call_id "
                    "AND c.final_status IS NOT NULL)",
                    (ids,),
                ).rowcount

        return self._run(delete)

    # -- history queries ----------------------------------------------------

    def recordings(self, page: int, per_page: int) -> Deferred[Page]:
        offset = page_offset(page, per_page)
        return self._read(
            self._newest_page, "recordings", "record_id", RECORD_COLUMNS, offset, per_page
        )

    def recordings_json(self, page: int, per_page: int, url_prefix: str) -> Deferred[JSONPage]:
        offset = page_offset(page, per_page)
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
                conn, "recordings", "record_id", RECORD_COLUMNS, offset, limit
            )
            return JSONPage.of(found.total, [api_record(r, url_prefix) for r in found.items])
        ids = list(map(int, _RECORD_ID.findall(text)))
        if any(a < b for a, b in zip(ids, ids[1:])):  # noqa: B905 - one shorter by design
            records = sorted(json.loads(text), key=itemgetter("record_id"), reverse=True)
            return JSONPage.of(total, records)
        return JSONPage(total, text, len(ids))


def _milliseconds(seconds: float | None) -> float | None:
    """A duration rounded to milliseconds: what is stored, and what SQLite's
    JSON (15 significant digits) then writes exactly."""
    return None if seconds is None else round(float(seconds), 3)
