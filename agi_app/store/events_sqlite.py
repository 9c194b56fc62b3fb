"""SQLite queries of the events service (:class:`EventStore`).

:class:`EventsSQLiteMixin` is one of :class:`~agi_app.store.sqlite.SQLiteStore`'s
bases: it uses the store's worker thread (``_run``) and row helpers, so its
writes are serialised with every other write of the store.

Tables (schema step :func:`agi_app.store.schema.migration_events`):

- ``event_subscriptions``: who wants which event type of which extension, and
  running counters of what happened to the deliveries;
- ``events``: one row per generated event; ``event_id`` is AUTOINCREMENT, so
  ids only ever grow, even after old rows are deleted;
- ``event_outbox``: one row per (event, subscription) still to deliver;
- ``event_deliveries``: the delivery log (delivered or given up), the newest
  :data:`LOG_KEEP` entries per subscription.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.events.store import DELIVERY_OUTCOMES, EventStore
from agi_app.store.base import iso_time
from agi_app.store.engine import SQLiteEngine

__all__ = ["LOG_KEEP", "EventsSQLiteMixin"]

#: Delivery log entries kept per subscription (older ones are deleted).
LOG_KEEP = 1000

_SUB_COLUMNS = (
    "id, extension, url, method, event_type, secret, created_at, delivered, given_up, "
    "last_delivered_at, last_error, last_error_at"
)
_PENDING_SQL = (
    "SELECT o.outbox_id, o.subscription_id, o.event_id, e.event_type, e.extension, e.fields, "
    "e.time_us, e.created_at, o.attempts, o.next_attempt_at, o.last_error "
    "FROM event_outbox o JOIN events e ON e.event_id = o.event_id "
    "WHERE o.subscription_id = ? ORDER BY o.outbox_id LIMIT ?"
)
_LOG_COLUMNS = (
    "id, subscription_id, event_id, event_type, outcome, attempts, http_status, error, "
    "created_at, finished_at"
)


class EventsSQLiteMixin(SQLiteEngine, EventStore):
    """The :class:`EventStore` methods of :class:`~agi_app.store.sqlite.SQLiteStore`,
    on the engine's ``_run``, ``_select``, ``_scalar``, ``_insert``,
    ``_conn``, ``_db`` and ``_clock``.
    """

    # -- subscriptions ----------------------------------------------------

    def add_subscription(
        self, *, extension: str, url: str, method: str, event_type: str, secret: str
    ) -> Deferred[dict[str, Any]]:
        row = {
            "extension": extension,
            "url": url,
            "method": method,
            "event_type": event_type,
            "secret": secret,
            "created_at": iso_time(self._clock.seconds()),
        }

        def insert() -> dict[str, Any]:
            sub_id = self._insert("event_subscriptions", row)
            return self._subscription(sub_id)

        return self._run(insert)

    def _subscription(self, sub_id: int) -> dict[str, Any] | None:
        rows = self._select(
            f"SELECT {_SUB_COLUMNS} FROM event_subscriptions WHERE id = ?", (sub_id,)
        )
        return rows[0] if rows else None

    def subscriptions(self, extension: str | None = None) -> Deferred[list[dict[str, Any]]]:
        if extension is None:
            sql, params = f"SELECT {_SUB_COLUMNS} FROM event_subscriptions ORDER BY id", ()
        else:
            sql = f"SELECT {_SUB_COLUMNS} FROM event_subscriptions WHERE extension = ? ORDER BY id"
            params = (extension,)
        return self._run(self._select, sql, params)

    def get_subscription(self, sub_id: int) -> Deferred[dict[str, Any] | None]:
        return self._run(self._subscription, sub_id)

    def delete_subscription(self, sub_id: int) -> Deferred[bool]:
        def delete() -> bool:
            with self._db.atomic():
                conn = self._conn
                events = [
                    r[0]
                    for r in conn.execute(
                        "SELECT event_id FROM event_outbox WHERE subscription_id = ?", (sub_id,)
                    )
                ]
                conn.execute("DELETE FROM event_outbox WHERE subscription_id = ?", (sub_id,))
                conn.execute("DELETE FROM event_deliveries WHERE subscription_id = ?", (sub_id,))
                gone = conn.execute(
                    "DELETE FROM event_subscriptions WHERE id = ?", (sub_id,)
                ).rowcount
                for event_id in events:
                    self._forget_event(event_id)
            return gone > 0

        return self._run(delete)

    def _forget_event(self, event_id: int) -> None:
        # An event is kept only while some delivery of it is still queued.
        self._conn.execute(
            "DELETE FROM events WHERE event_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM event_outbox WHERE event_id = ?)",
            (event_id, event_id),
        )

    # -- the outbox -------------------------------------------------------

    def enqueue_event(
        self,
        *,
        event_type: str,
        extension: str,
        fields: Mapping[str, str],
        time_us: int,
        created_at: float,
        subscription_ids: Iterable[int],
    ) -> Deferred[tuple[int, list[int]]]:
        wanted = sorted(set(subscription_ids))
        row = {
            "event_type": event_type,
            "extension": extension,
            "time_us": int(time_us),
            "created_at": float(created_at),
            "fields": json.dumps(dict(fields), ensure_ascii=False, separators=(",", ":")),
        }

        def insert() -> tuple[int, list[int]]:
            with self._db.atomic():
                event_id = self._insert("events", row)
                queued = []
                for sub_id in wanted:
                    # A subscription deleted meanwhile gets nothing.
                    cursor = self._conn.execute(
                        "INSERT INTO event_outbox (subscription_id, event_id) "
                        "SELECT id, ? FROM event_subscriptions WHERE id = ?",
                        (event_id, sub_id),
                    )
                    if cursor.rowcount:
                        queued.append(sub_id)
                if not queued:
                    self._forget_event(event_id)
            return event_id, queued

        return self._run(insert)

    def pending_deliveries(
        self, subscription_id: int, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        def query() -> list[dict[str, Any]]:
            rows = self._select(_PENDING_SQL, (subscription_id, limit))
            for r in rows:
                r["fields"] = json.loads(r["fields"])
            return rows

        return self._run(query)

    def subscriptions_with_pending(self) -> Deferred[list[int]]:
        def query() -> list[int]:
            rows = self._conn.execute(
                "SELECT DISTINCT subscription_id FROM event_outbox ORDER BY subscription_id"
            )
            return [r[0] for r in rows]

        return self._run(query)

    def delivery_failed(
        self, outbox_id: int, *, attempts: int, next_attempt_at: float, error: str, when: float
    ) -> Deferred[None]:
        def update() -> None:
            with self._db.atomic():
                conn = self._conn
                conn.execute(
                    "UPDATE event_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
                    "WHERE outbox_id = ?",
                    (attempts, next_attempt_at, error, outbox_id),
                )
                conn.execute(
                    "UPDATE event_subscriptions SET last_error = ?, last_error_at = ? "
                    "WHERE id = (SELECT subscription_id FROM event_outbox WHERE outbox_id = ?)",
                    (error, when, outbox_id),
                )

        return self._run(update)

    def delivery_finished(
        self,
        outbox_id: int,
        *,
        outcome: str,
        attempts: int,
        http_status: int | None,
        error: str | None,
        when: float,
    ) -> Deferred[None]:
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(f"unknown delivery outcome {outcome!r}")

        def finish() -> None:
            with self._db.atomic():
                conn = self._conn
                found = self._select(
                    "SELECT o.subscription_id, o.event_id, e.event_type, e.created_at "
                    "FROM event_outbox o JOIN events e ON e.event_id = o.event_id "
                    "WHERE o.outbox_id = ?",
                    (outbox_id,),
                )
                if not found:  # its subscription was deleted meanwhile
                    return
                row = found[0]
                conn.execute("DELETE FROM event_outbox WHERE outbox_id = ?", (outbox_id,))
                self._forget_event(row["event_id"])
                log_id = self._insert(
                    "event_deliveries",
                    {
                        "subscription_id": row["subscription_id"],
                        "event_id": row["event_id"],
                        "event_type": row["event_type"],
                        "outcome": outcome,
                        "attempts": attempts,
                        "http_status": http_status,
                        "error": error,
                        "created_at": row["created_at"],
                        "finished_at": when,
                    },
                )
                if outcome == "delivered":
                    conn.execute(
                        "UPDATE event_subscriptions SET delivered = delivered + 1, "
                        "last_delivered_at = ? WHERE id = ?",
                        (when, row["subscription_id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE event_subscriptions SET given_up = given_up + 1, "
                        "last_error = ?, last_error_at = ? WHERE id = ?",
                        (error, when, row["subscription_id"]),
                    )
                if log_id % 100 == 0:
                    # Now and then, not on every write: keep the newest LOG_KEEP.
                    conn.execute(
                        "DELETE FROM event_deliveries WHERE subscription_id = ? AND id <= ("
                        " SELECT id FROM event_deliveries WHERE subscription_id = ?"
                        " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (row["subscription_id"], row["subscription_id"], LOG_KEEP),
                    )

        return self._run(finish)

    def delivery_log(
        self, subscription_id: int, *, outcome: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = "subscription_id = ?", [subscription_id]
        if outcome is not None:
            if outcome not in DELIVERY_OUTCOMES:
                raise ValueError(f"unknown delivery outcome {outcome!r}")
            where += " AND outcome = ?"
            params.append(outcome)
        sql = f"SELECT {_LOG_COLUMNS} FROM event_deliveries WHERE {where} ORDER BY id DESC LIMIT ?"
        return self._run(self._select, sql, (*params, limit))

    def delivery_summary(self, subscription_id: int) -> Deferred[dict[str, Any]]:
        def query() -> dict[str, Any]:
            rows = self._select(
                "SELECT count(*) AS pending, min(e.created_at) AS oldest_pending_at "
                "FROM event_outbox o JOIN events e ON e.event_id = o.event_id "
                "WHERE o.subscription_id = ?",
                (subscription_id,),
            )
            head = self._select(
                "SELECT attempts, last_error FROM event_outbox WHERE subscription_id = ? "
                "ORDER BY outbox_id LIMIT 1",
                (subscription_id,),
            )
            out = dict(rows[0])
            out["attempts"] = head[0]["attempts"] if head else 0
            out["last_error"] = head[0]["last_error"] if head else None
            return out

        return self._run(query)

    def erase_events(
        self,
        *,
        call_ids: Iterable[str] = (),
        order_id: str | None = None,
        phones: Iterable[str] = (),
    ) -> Deferred[tuple[int, list[int]]]:
        ids = json.dumps(list(call_ids))
        numbers = json.dumps(list(phones))

        def erase() -> int:
            with self._db.atomic():
                conn = self._conn
                # Only queued events are kept, so this table stays small: a scan.
                found = [
                    r[0]
                    for r in conn.execute(
                        "SELECT event_id FROM events WHERE "
                        "json_extract(fields, '$.CallID') IN (SELECT value FROM json_each(?1)) "
                        "OR json_extract(fields, '$.OrderID') = ?2 "
                        "OR json_extract(fields, '$.CallerIDNum') IN "
                        "   (SELECT value FROM json_each(?3)) "
                        "OR json_extract(fields, '$.CalledNumber') IN "
                        "   (SELECT value FROM json_each(?3)) "
                        "OR json_extract(fields, '$.CalledDID') IN "
                        "   (SELECT value FROM json_each(?3))",
                        (ids, order_id, numbers),
                    )
                ]
                subs: set[int] = set()
                for event_id in found:
                    subs.update(
                        r[0]
                        for r in conn.execute(
                            "SELECT subscription_id FROM event_outbox WHERE event_id = ?",
                            (event_id,),
                        )
                    )
                    conn.execute("DELETE FROM event_outbox WHERE event_id = ?", (event_id,))
                    conn.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
            return len(found), sorted(subs)

        return self._run(erase)

    # -- reads of the call log for event fields ---------------------------------

    def recordings_of_call(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            self._select,
            "SELECT record_id, path, created_at, duration, size FROM recordings "
            "WHERE call_id = ? ORDER BY record_id",
            (call_id,),
        )
