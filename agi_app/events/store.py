"""What the events service needs of the store: subscriptions, a durable
outbox of deliveries, and a delivery log.

:class:`EventStore` is the interface; :class:`agi_app.store.SQLiteStore`
implements it (``agi_app/store/events_sqlite.py``).  Every method returns a
Deferred and is applied by the store's single writer, in call order, so an
event enqueued before another gets a smaller ``event_id`` and a smaller
outbox position in every subscription it goes to.

Shapes of the dicts handed out:

- subscription: ``id, extension, url, method, event_type, secret,
  created_at, delivered, given_up, last_delivered_at, last_error,
  last_error_at``
- pending delivery: ``outbox_id, subscription_id, event_id, event_type,
  extension, fields (dict), time_us, created_at (unix s), attempts,
  next_attempt_at (unix s), last_error``
- delivery log entry: ``id, subscription_id, event_id, event_type, outcome
  (delivered|given_up), attempts, http_status, error, created_at,
  finished_at`` (times as unix seconds)
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["DELIVERY_OUTCOMES", "EventStore"]

#: How a delivery ends in the delivery log.
DELIVERY_OUTCOMES = ("delivered", "given_up")


class EventStore(abc.ABC):
    """Persistence of event subscriptions and their deliveries."""

    # -- subscriptions ----------------------------------------------------

    @abc.abstractmethod
    def add_subscription(
        self, *, extension: str, url: str, method: str, event_type: str, secret: str
    ) -> Deferred[dict[str, Any]]:
        """Store a subscription and fire it with its new ``id``."""

    @abc.abstractmethod
    def subscriptions(self, extension: str | None = None) -> Deferred[list[dict[str, Any]]]:
        """The subscriptions of one extension (or all), ascending by id."""

    @abc.abstractmethod
    def get_subscription(self, sub_id: int) -> Deferred[dict[str, Any] | None]:
        """One subscription, or None."""

    @abc.abstractmethod
    def delete_subscription(self, sub_id: int) -> Deferred[bool]:
        """Delete a subscription with its pending deliveries and its log;
        fires False when there was none."""

    # -- the outbox -------------------------------------------------------

    @abc.abstractmethod
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
        """Give the event the next ``event_id`` and queue one delivery per
        subscription that still exists, in one transaction.  Fires
        ``(event_id, [subscription ids queued])``."""

    @abc.abstractmethod
    def pending_deliveries(
        self, subscription_id: int, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """The oldest ``limit`` deliveries waiting for one subscription, in
        the order they were queued."""

    @abc.abstractmethod
    def subscriptions_with_pending(self) -> Deferred[list[int]]:
        """Ids of the subscriptions that have deliveries waiting."""

    @abc.abstractmethod
    def delivery_failed(
        self, outbox_id: int, *, attempts: int, next_attempt_at: float, error: str, when: float
    ) -> Deferred[None]:
        """Record a failed attempt of a delivery that stays queued."""

    @abc.abstractmethod
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
        """Take a delivery out of the outbox (``delivered`` or ``given_up``)
        and append it to the subscription's delivery log."""

    @abc.abstractmethod
    def delivery_log(
        self, subscription_id: int, *, outcome: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """The newest delivery log entries of a subscription, newest first,
        optionally only one outcome."""

    @abc.abstractmethod
    def delivery_summary(self, subscription_id: int) -> Deferred[dict[str, Any]]:
        """``{"pending", "oldest_pending_at", "attempts", "last_error"}`` of
        the deliveries still waiting for a subscription."""

    @abc.abstractmethod
    def erase_events(
        self,
        *,
        call_ids: Iterable[str] = (),
        order_id: str | None = None,
        phones: Iterable[str] = (),
    ) -> Deferred[tuple[int, list[int]]]:
        """Delete the events still queued (and their outbox rows) that carry
        a subject's data: ``CallID`` one of ``call_ids``, ``OrderID`` equal
        to ``order_id``, or ``CallerIDNum``/``CalledNumber``/``CalledDID``
        one of ``phones``.  They will not be delivered.  Fires ``(events
        deleted, ids of the subscriptions they were queued for)``.
        (Delivered events are not kept: the delivery log holds no field of
        them.)"""

    # -- the call log -------------------------------------------------------

    @abc.abstractmethod
    def recordings_of_call(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        """``record_id, path, created_at, duration, size`` of a call's
        recordings (for RecordURL), ascending by record_id."""
