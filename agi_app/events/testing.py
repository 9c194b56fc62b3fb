"""Fakes for tests of the events service: an in-memory :class:`EventStore`
and a webhook receiver that records what really crosses the wire."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred, succeed
from twisted.web import resource, server

from agi_app.events.store import DELIVERY_OUTCOMES, EventStore

__all__ = ["MemoryEventStore", "ReceivedRequest", "Receiver"]


class MemoryEventStore(EventStore):
    """:class:`EventStore` in dicts; every Deferred has fired already."""

    def __init__(self) -> None:
        self.subs: dict[int, dict[str, Any]] = {}
        self.events: dict[int, dict[str, Any]] = {}
        self.outbox: dict[int, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.recordings: dict[str, list[dict[str, Any]]] = {}
        #: what the event generator reads of the call log: call_id -> call
        self.calls: dict[str, dict[str, Any]] = {}
        #: ... and call_id -> its history entries (``status``, ``time``, ``detail``)
        self.history: dict[str, list[dict[str, Any]]] = {}
        self._sub_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._outbox_ids = itertools.count(1)
        self._log_ids = itertools.count(1)

    def add_subscription(self, *, extension, url, method, event_type, secret):
        sub = {
            "id": next(self._sub_ids),
            "extension": extension,
            "url": url,
            "method": method,
            "event_type": event_type,
            "secret": secret,
            "created_at": "2026-01-01T00:00:00.000Z",
            "delivered": 0,
            "given_up": 0,
            "last_delivered_at": None,
            "last_error": None,
            "last_error_at": None,
        }
        self.subs[sub["id"]] = sub
        return succeed(dict(sub))

    def subscriptions(self, extension=None):
        return succeed([dict(s) for s in self.subs.values() if extension in (None, s["extension"])])

    def get_subscription(self, sub_id):
        sub = self.subs.get(sub_id)
        return succeed(dict(sub) if sub else None)

    def delete_subscription(self, sub_id):
        for oid in [o for o, r in self.outbox.items() if r["subscription_id"] == sub_id]:
            del self.outbox[oid]
        self.log = [e for e in self.log if e["subscription_id"] != sub_id]
        return succeed(self.subs.pop(sub_id, None) is not None)

    def enqueue_event(
        self, *, event_type, extension, fields, time_us, created_at, subscription_ids
    ):
        event_id = next(self._event_ids)
        self.events[event_id] = {
            "event_type": event_type,
            "extension": extension,
            "fields": dict(fields),
            "time_us": time_us,
            "created_at": created_at,
        }
        queued = []
        for sub_id in sorted(set(subscription_ids)):
            if sub_id in self.subs:
                oid = next(self._outbox_ids)
                self.outbox[oid] = {
                    "outbox_id": oid,
                    "subscription_id": sub_id,
                    "event_id": event_id,
                    "attempts": 0,
                    "next_attempt_at": 0.0,
                    "last_error": None,
                }
                queued.append(sub_id)
        return succeed((event_id, queued))

    def _pending(self, sub_id: int) -> list[dict[str, Any]]:
        out = []
        for oid in sorted(self.outbox):
            row = self.outbox[oid]
            if row["subscription_id"] == sub_id:
                event = self.events[row["event_id"]]
                out.append({**row, **{k: v for k, v in event.items()}})
        return out

    def pending_deliveries(self, subscription_id, limit=100):
        return succeed(self._pending(subscription_id)[:limit])

    def subscriptions_with_pending(self):
        return succeed(sorted({r["subscription_id"] for r in self.outbox.values()}))

    def delivery_failed(self, outbox_id, *, attempts, next_attempt_at, error, when):
        row = self.outbox.get(outbox_id)
        if row is not None:
            row.update(attempts=attempts, next_attempt_at=next_attempt_at, last_error=error)
            sub = self.subs[row["subscription_id"]]
            sub.update(last_error=error, last_error_at=when)
        return succeed(None)

    def delivery_finished(self, outbox_id, *, outcome, attempts, http_status, error, when):
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(outcome)
        row = self.outbox.pop(outbox_id, None)
        if row is None:
            return succeed(None)
        event = self.events[row["event_id"]]
        self.log.append(
            {
                "id": next(self._log_ids),
                "subscription_id": row["subscription_id"],
                "event_id": row["event_id"],
                "event_type": event["event_type"],
                "outcome": outcome,
                "attempts": attempts,
                "http_status": http_status,
                "error": error,
                "created_at": event["created_at"],
                "finished_at": when,
            }
        )
        sub = self.subs[row["subscription_id"]]
        if outcome == "delivered":
            sub["delivered"] += 1
            sub["last_delivered_at"] = when
        else:
            sub["given_up"] += 1
            sub.update(last_error=error, last_error_at=when)
        return succeed(None)

    def delivery_log(self, subscription_id, *, outcome=None, limit=100):
        rows = [
            dict(e)
            for e in reversed(self.log)
            if e["subscription_id"] == subscription_id and outcome in (None, e["outcome"])
        ]
        return succeed(rows[:limit])

    def delivery_summary(self, subscription_id):
        rows = self._pending(subscription_id)
        return succeed(
            {
                "pending": len(rows),
                "oldest_pending_at": min((r["created_at"] for r in rows), default=None),
                "attempts": rows[0]["attempts"] if rows else 0,
                "last_error": rows[0]["last_error"] if rows else None,
            }
        )

    def recordings_of_call(self, call_id):
        return succeed(list(self.recordings.get(call_id, [])))

    def get_call(self, call_id: str) -> Deferred[dict[str, Any] | None]:
        return succeed(self.calls.get(call_id))

    def statuses(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return succeed(list(self.history.get(call_id, [])))


@dataclass
class ReceivedRequest:
    """One request the :class:`Receiver` got."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def fields(self) -> dict[str, str]:
        """The event fields: the query string's (GET) or the form body's (POST)."""
        raw = self.query if self.method == "GET" else self.body.decode("utf-8")
        return dict(parse_qsl(raw, keep_blank_values=True))

    @property
    def signed_payload(self) -> bytes:
        """What ``X-Signature`` signs: the query string (GET) or the body (POST)."""
        return self.query.encode("ascii") if self.method == "GET" else self.body


@dataclass
class Receiver(resource.Resource):
    """A CRM's webhook endpoint: records every request; answers ``status``
    (200 by default), or holds the answer while ``hold`` is set."""

    isLeaf = True
    status: int = 200
    hold: bool = False
    requests: list[ReceivedRequest] = field(default_factory=list)
    waiters: list[tuple[int, Deferred]] = field(default_factory=list)
    held: list[server.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        resource.Resource.__init__(self)

    def render(self, request: server.Request) -> bytes | int:
        uri = request.uri.decode("ascii")
        path, _, query = uri.partition("?")
        request.content.seek(0)
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(
            ReceivedRequest(request.method.decode(), path, query, headers, request.content.read())
        )
        for entry in list(self.waiters):
            count, d = entry
            if len(self.requests) >= count:
                self.waiters.remove(entry)
                d.callback(list(self.requests))
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"ok"

    def wait_for(self, count: int) -> Deferred[list[ReceivedRequest]]:
        """Fires with every request once ``count`` have arrived."""
        if len(self.requests) >= count:
            return succeed(list(self.requests))
        d: Deferred = Deferred()
        self.waiters.append((count, d))
        return d

    def site(self) -> server.Site:
        """A twisted.web Site serving this receiver at every path."""
        return server.Site(self)

    def matching(self, fields: Iterable[str] = ()) -> list[dict[str, str]]:
        """The fields of every request so far (only ``fields`` when given)."""
        names = tuple(fields)
        out = []
        for r in self.requests:
            f = r.fields
            out.append({k: f.get(k) for k in names} if names else f)
        return out
