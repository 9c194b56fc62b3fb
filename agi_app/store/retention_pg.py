"""PostgreSQL queries of retention and erasure (:mod:`agi_app.retention`):
old calls and recordings in batches, a subject's calls, their deletion,
the queued events that carry a subject's data, and the ``erasures`` log.
The same answers as the SQLite store's.

:class:`RetentionPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases.  Each method is
one short transaction.  With several nodes writing, a call is deleted only
if it has its final status when its row is locked (``FOR UPDATE``): a
call in progress on another node is never deleted, and a status written
to a call being deleted waits for the deletion, then finds no call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.store.base import ERASURE_SUBJECTS, CallBatch, Deleted, check_time
from agi_app.store.pg_engine import PostgresEngine

__all__ = ["RetentionPostgresMixin"]

_ERASURE_COLUMNS = "id, time, subject, subject_id, calls, entries, recordings, files, events"
_ERASURE_COUNTS = ("calls", "entries", "recordings", "files", "events")


def _recording_files(conn, ids: list[str]) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT call_id, path FROM recordings WHERE call_id = ANY(%s) ORDER BY record_id",
            (ids,),
        )
    ]


class RetentionPostgresMixin(PostgresEngine):
    """Old and erased calls and recordings, deleted batch by batch; the erasure log."""

    def old_calls(
        self, before: str, limit: int, skip: Sequence[str] = ()
    ) -> Deferred[CallBatch]:
        check_time(before)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        skipped = list(skip)

        def query(conn) -> CallBatch:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT call_id FROM calls WHERE created_at < %s "
                        "AND final_status IS NOT NULL AND NOT (call_id = ANY(%s)) "
                        "ORDER BY created_at, seq LIMIT %s",
                        (before, skipped, limit),
                    )
                ]
                files = _recording_files(conn, ids) if ids else []
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
            where, params = "order_id = %s", (order_id,)
        else:
            # The number as given and its other spelling (with or without "+").
            assert phone is not None
            bare = phone.removeprefix("+")
            spellings = [bare, "+" + bare]
            where = (
                "call_id IN (SELECT call_id FROM calls WHERE phone = ANY(%s) "
                "UNION SELECT call_id FROM calls WHERE kind = 'phoneToPhone' AND sip = ANY(%s))"
            )
            params = (spellings, spellings)

        def query(conn) -> CallBatch:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                open_ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT call_id FROM calls WHERE {where} AND final_status IS NULL "
                        "ORDER BY created_at, seq",
                        params,
                    )
                ]
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT call_id FROM calls WHERE {where} AND final_status IS NOT NULL "
                        "ORDER BY created_at, seq LIMIT %s",
                        (*params, limit),
                    )
                ]
                files = _recording_files(conn, ids) if ids else []
            return CallBatch(ids, files, open_ids)

        return self._run(query)

    def delete_calls(self, call_ids: Sequence[str]) -> Deferred[Deleted]:
        wanted = list(dict.fromkeys(call_ids))

        def delete(conn) -> Deleted:
            with conn.transaction():
                # Locked in one order (call_id), so two nodes deleting
                # overlapping batches cannot deadlock.
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT call_id FROM calls WHERE call_id = ANY(%s) "
                        "AND final_status IS NOT NULL ORDER BY call_id FOR UPDATE",
                        (wanted,),
                    )
                ]
                paths = [path for _call, path in _recording_files(conn, ids)]
                # Children first: both reference calls.  The recordings'
                # row count follows by its statement trigger.
                recordings = conn.execute(
                    "DELETE FROM recordings WHERE call_id = ANY(%s)", (ids,)
                ).rowcount
                entries = conn.execute(
                    "DELETE FROM call_status WHERE call_id = ANY(%s)", (ids,)
                ).rowcount
                calls = conn.execute("DELETE FROM calls WHERE call_id = ANY(%s)", (ids,)).rowcount
            return Deleted(calls, entries, recordings, paths)

        return self._run(delete)

    def old_recordings(
        self, before: str, limit: int, skip: Sequence[int] = ()
    ) -> Deferred[list[dict[str, Any]]]:
        check_time(before)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        skipped = [int(i) for i in skip]

        def query(conn) -> list[dict[str, Any]]:
            return self._select(
                conn,
                "SELECT r.record_id, r.path FROM recordings r "
                "JOIN calls c ON c.call_id = r.call_id "
                "WHERE r.created_at < %s AND c.final_status IS NOT NULL "
                "AND NOT (r.record_id = ANY(%s)) ORDER BY r.created_at, r.record_id LIMIT %s",
                (before, skipped, limit),
            )

        return self._run(query)

    def delete_recordings(self, record_ids: Sequence[int]) -> Deferred[int]:
        ids = [int(i) for i in record_ids]

        def delete(conn) -> int:
            with conn.transaction():
                return conn.execute(
                    "DELETE FROM recordings r WHERE r.record_id = ANY(%s) AND EXISTS "
                    "(SELECT 1 FROM calls c WHERE c.call_id = r.call_id "
                    "AND c.final_status IS NOT NULL)",
                    (ids,),
                ).rowcount

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
            **{k: int(counts.get(k, 0)) for k in _ERASURE_COUNTS},
        }

        def insert(conn) -> dict[str, Any]:
            return {"id": self._insert(conn, "erasures", row, "id"), **row}

        return self._run(insert)

    def erasures(
        self, subject: str | None = None, subject_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = [], []
        if subject is not None:
            where.append("subject = %s")
            params.append(subject)
        if subject_id is not None:
            where.append("subject_id = %s")
            params.append(subject_id)
        sql = f"SELECT {_ERASURE_COLUMNS} FROM erasures"
        if where:
            sql += " WHERE " + " AND ".join(where)

        def query(conn) -> list[dict[str, Any]]:
            return self._select(conn, sql + " ORDER BY id", params)

        return self._run(query)

    def erase_events(
        self,
        *,
        call_ids: Iterable[str] = (),
        order_id: str | None = None,
        phones: Iterable[str] = (),
    ) -> Deferred[tuple[int, list[int]]]:
        ids, numbers = list(call_ids), list(phones)

        def erase(conn) -> tuple[int, list[int]]:
            with conn.transaction():
                # Only queued events are kept, so this table stays small: a scan.
                found = [
                    r[0]
                    for r in conn.execute(
                        "SELECT event_id FROM events e, LATERAL (SELECT e.fields::jsonb AS f) j "
                        "WHERE j.f->>'CallID' = ANY(%(ids)s) "
                        "OR j.f->>'OrderID' = %(order)s "
                        "OR j.f->>'CallerIDNum' = ANY(%(phones)s) "
                        "OR j.f->>'CalledNumber' = ANY(%(phones)s) "
                        "OR j.f->>'CalledDID' = ANY(%(phones)s) FOR UPDATE OF e",
                        {"ids": ids, "order": order_id, "phones": numbers},
                    )
                ]
                subs = [
                    r[0]
                    for r in conn.execute(
                        "DELETE FROM event_outbox WHERE event_id = ANY(%s) "
                        "RETURNING subscription_id",
                        (found,),
                    )
                ]
                conn.execute("DELETE FROM events WHERE event_id = ANY(%s)", (found,))
            return len(found), sorted(set(subs))

        return self._run(erase)
