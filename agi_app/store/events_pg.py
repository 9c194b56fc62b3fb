"""PostgreSQL queries of the events service (:class:`EventStore`): the same
tables and rules as :mod:`agi_app.store.events_sqlite`, which describes them.

:class:`EventsPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases: it uses the
engine's writer thread (``_run``), so its writes are applied in call order
with every other write of the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from agi_app.events.store import DELIVERY_OUTCOMES, EventStore
from agi_app.store.base import iso_time
from agi_app.store.cluster_pg import notify_sql
from agi_app.store.events_sqlite import LOG_KEEP
from agi_app.store.pg_engine import PostgresEngine

__all__ = ["OUTBOX_CHANNEL", "SUBSCRIPTIONS_CHANNEL", "EventsPostgresMixin"]

#: NOTIFY channel waking the nodes when deliveries were queued (payload:
#: the subscription ids, comma separated); only a wake-up, the outbox is the log
OUTBOX_CHANNEL = "agi_app_outbox"
#: NOTIFY channel telling the nodes that a subscription was added or deleted
SUBSCRIPTIONS_CHANNEL = "agi_app_subscriptions"

_SUB_COLUMNS = (
    "id, extension, url, method, event_type, secret, created_at, delivered, given_up, "
    "last_delivered_at, last_error, last_error_at"
)
_PENDING_SQL = (
    "SELECT o.outbox_id, o.subscription_id, o.event_id, e.event_type, e.extension, e.fields, "
    "e.time_us, e.created_at, o.attempts, o.next_attempt_at, o.last_error "
    "FROM event_outbox o JOIN events e ON e.event_id = o.event_id "
    "WHERE o.subscription_id = %s ORDER BY o.outbox_id LIMIT %s"
)
_LOG_COLUMNS = (
    "id, subscription_id, event_id, event_type, outcome, attempts, http_status, error, "
    "created_at, finished_at"
)


class EventsPostgresMixin(PostgresEngine, EventStore):
    """The :class:`EventStore` methods of
    :class:`~agi_app.store.postgres.PostgresStore`."""

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

        def insert(conn) -> dict[str, Any]:
            with conn.transaction():
                sub_id = self._insert(conn, "event_subscriptions", row, "id")
                conn.execute(notify_sql(), (SUBSCRIPTIONS_CHANNEL, str(sub_id)))
            return self._subscription(conn, sub_id)

        return self._run(insert)

    def _subscription(self, conn, sub_id: int) -> dict[str, Any] | None:
        rows = self._select(
            conn, f"SELECT {_SUB_COLUMNS} FROM event_subscriptions WHERE id = %s", (sub_id,)
        )
        return rows[0] if rows else None

    def subscriptions(self, extension: str | None = None) -> Deferred[list[dict[str, Any]]]:
        if extension is None:
            sql, params = f"SELECT {_SUB_COLUMNS} FROM event_subscriptions ORDER BY id", ()
        else:
            sql = (
                f"SELECT {_SUB_COLUMNS} FROM event_subscriptions WHERE extension = %s ORDER BY id"
            )
            params = (extension,)
        return self._run(self._select, sql, params)

    def get_subscription(self, sub_id: int) -> Deferred[dict[str, Any] | None]:
        return self._run(self._subscription, sub_id)

    def delete_subscription(self, sub_id: int) -> Deferred[bool]:
        def delete(conn) -> bool:
            with conn.transaction():
                events = [
                    r[0]
                    for r in conn.execute(
                        "DELETE FROM event_outbox WHERE subscription_id = %s RETURNING event_id",
                        (sub_id,),
                    ).fetchall()
                ]
                conn.execute("DELETE FROM event_deliveries WHERE subscription_id = %s", (sub_id,))
                gone = conn.execute(
                    "DELETE FROM event_subscriptions WHERE id = %s", (sub_id,)
                ).rowcount
                self._forget_events(conn, events)
                if gone:
                    conn.execute(notify_sql(), (SUBSCRIPTIONS_CHANNEL, str(sub_id)))
            return gone > 0

        return self._run(delete)

    @staticmethod
    def _forget_events(conn, event_ids: list[int]) -> None:
        # An event is kept only while some delivery of it is still queued.
        if event_ids:
            conn.execute(
                "DELETE FROM events WHERE event_id = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM event_outbox o WHERE o.event_id = events.event_id)",
                (sorted(set(event_ids)),),
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

        def insert(conn) -> tuple[int, list[int]]:
            with conn.transaction():
                event_id = self._insert(conn, "events", row, "event_id")
                # A subscription deleted meanwhile gets nothing; the outbox
                # rows are made in the order of the subscription ids.
                queued = [
                    r[0]
                    for r in conn.execute(
                        "INSERT INTO event_outbox (subscription_id, event_id) "
                        "SELECT id, %s FROM event_subscriptions WHERE id = ANY(%s) ORDER BY id "
                        "RETURNING subscription_id",
                        (event_id, wanted),
                    ).fetchall()
                ]
                if not queued:
                    self._forget_events(conn, [event_id])
                else:
                    # delivered to the listening nodes at commit
                    payload = ",".join(str(q) for q in sorted(queued))
                    conn.execute(notify_sql(), (OUTBOX_CHANNEL, payload))
            return event_id, sorted(queued)

        return self._run(insert)

    def pending_deliveries(
        self, subscription_id: int, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        def query(conn) -> list[dict[str, Any]]:
            rows = self._select(conn, _PENDING_SQL, (subscription_id, limit))
            for r in rows:
                r["fields"] = json.loads(r["fields"])
            return rows

        return self._run(query)

    def subscriptions_with_pending(self) -> Deferred[list[int]]:
        def query(conn) -> list[int]:
            rows = conn.execute(
                "SELECT DISTINCT subscription_id FROM event_outbox ORDER BY subscription_id"
            ).fetchall()
            return [r[0] for r in rows]

        return self._run(query)

    def delivery_failed(
        self, outbox_id: int, *, attempts: int, next_attempt_at: float, error: str, when: float
    ) -> Deferred[None]:
        def update(conn) -> None:
            with conn.transaction():
                conn.execute(
                    "UPDATE event_outbox SET attempts = %s, next_attempt_at = %s, last_error = %s "
                    "WHERE outbox_id = %s",
                    (attempts, next_attempt_at, error, outbox_id),
                )
                conn.execute(
                    "UPDATE event_subscriptions SET last_error = %s, last_error_at = %s "
                    "WHERE id = (SELECT subscription_id FROM event_outbox WHERE outbox_id = %s)",
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

        def finish(conn) -> None:
            with conn.transaction():
                found = self._select(
                    conn,
                    "DELETE FROM event_outbox o USING events e "
                    "WHERE o.outbox_id = %s AND e.event_id = o.event_id "
                    "RETURNING o.subscription_id, o.event_id, e.event_type, e.created_at",
                    (outbox_id,),
                )
                if not found:  # its subscription was deleted meanwhile
                    return
                row = found[0]
                self._forget_events(conn, [row["event_id"]])
                log_id = self._insert(
                    conn,
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
                    "id",
                )
                if outcome == "delivered":
                    conn.execute(
                        "UPDATE event_subscriptions SET delivered = delivered + 1, "
                        "last_delivered_at = %s WHERE id = %s",
                        (when, row["subscription_id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE event_subscriptions SET given_up = given_up + 1, "
                        "last_error = %s, last_error_at = %s WHERE id = %s",
                        (error, when, row["subscription_id"]),
                    )
                if log_id % 100 == 0:
                    # Now and then, not on every write: keep the newest LOG_KEEP.
                    conn.execute(
                        "DELETE FROM event_deliveries WHERE subscription_id = %s AND id <= ("
                        " SELECT id FROM event_deliveries WHERE subscription_id = %s"
                        " ORDER BY id DESC LIMIT 1 OFFSET %s)",
                        (row["subscription_id"], row["subscription_id"], LOG_KEEP),
                    )

        return self._run(finish)

    def delivery_log(
        self, subscription_id: int, *, outcome: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        where, params = "subscription_id = %s", [subscription_id]
        if outcome is not None:
            if outcome not in DELIVERY_OUTCOMES:
                raise ValueError(f"unknown delivery outcome {outcome!r}")
            where += " AND outcome = %s"
            params.append(outcome)
        sql = (
            f"SELECT {_LOG_COLUMNS} FROM event_deliveries WHERE {where} ORDER BY id DESC LIMIT %s"
        )
        return self._run(self._select, sql, (*params, limit))

    def delivery_summary(self, subscription_id: int) -> Deferred[dict[str, Any]]:
        def query(conn) -> dict[str, Any]:
            pending, oldest, attempts, last_error = conn.execute(
                "SELECT (SELECT count(*) FROM event_outbox o JOIN events e "
                "        ON e.event_id = o.event_id WHERE o.subscription_id = %(s)s), "
                "       (SELECT min(e.created_at) FROM event_outbox o JOIN events e "
                "        ON e.event_id = o.event_id WHERE o.subscription_id = %(s)s), "
                "       h.attempts, h.last_error "
                "FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT attempts, last_error "
                "  FROM event_outbox WHERE subscription_id = %(s)s "
                "  ORDER BY outbox_id LIMIT 1) h ON true",
                {"s": subscription_id},
            ).fetchone()
            return {
                "pending": pending,
                "oldest_pending_at": oldest,
                "attempts": attempts if attempts is not None else 0,
                "last_error": last_error,
            }

        return self._run(query)

    # -- reads of the call log for event fields ---------------------------------

    def recordings_of_call(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            self._select,
            "SELECT record_id, path, created_at, duration, size FROM recordings "
            "WHERE call_id = %s ORDER BY record_id",
            (call_id,),
        )
