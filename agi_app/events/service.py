"""Event subscriptions of extensions and the publishing of events to them
(CONTRACT section 6).

:class:`EventService` holds the rules and knows nothing of HTTP: the web
layer hands it checked values (:func:`check_url`, :func:`check_method`,
:func:`check_event_type` raise :class:`~agi_app.validation.InvalidInput`),
and the event generator calls :meth:`EventService.publish`.  A subscription
URL whose host denotes a loopback, private... address is refused with
:class:`~agi_app.netguard.ForbiddenTarget` (400 ``forbidden_target``), and
checked again, resolved, when each delivery connects.  The
subscriptions are cached in memory, so publishing an event nobody asked for
costs nothing; an event somebody asked for is one store transaction (the
event and one outbox row per matching subscription), after which the
:class:`~agi_app.events.delivery.Deliverer` takes over.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from agi_app.errors import AppError, InvalidInput
from agi_app.events.delivery import Claims, Deliverer, DeliverySettings, Sender
from agi_app.events.signing import new_secret
from agi_app.events.store import EventStore
from agi_app.netguard import TargetGuard

__all__ = [
    "EVENT_TYPES",
    "MAX_SUBSCRIPTIONS",
    "MAX_URL",
    "METHODS",
    "EventService",
    "check_event_type",
    "check_method",
    "check_url",
]

log = Logger(namespace="agi_app.events")

#: The event types a CRM can subscribe to: seed 004's, ``missed`` (an
#: inbound call nobody answered, see agi_app.calls.missed) and ``record`` (a
#: recording is complete; CONTRACT section 10).
EVENT_TYPES: tuple[str, ...] = ("dial-in", "dial-out", "answer", "hangup", "missed", "record")
#: How deliveries can be made.
METHODS: tuple[str, ...] = ("GET", "POST")
#: Longest subscription URL accepted.
MAX_URL = 2048
#: Subscriptions one extension may have.
MAX_SUBSCRIPTIONS = 100

# The characters of a properly percent-encoded URL (RFC 3986), no others.
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+$", re.ASCII)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A name may end in the root's dot (``crm.example.com.``); whether the host
# is a target at all is the guard's question (agi_app.netguard).
_HOST = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\.?)$", re.ASCII
)


def check_url(value: object, field: str = "url") -> str:
    """An absolute ``http://`` or ``https://`` URL with a host, percent-encoded
    ASCII, no fragment, at most :data:`MAX_URL` characters."""
    if value is None or value == "":
        raise InvalidInput(field, f"{field} is required", code=f"missing_{field}")
    if not isinstance(value, str):
        raise InvalidInput(field, f"{field} must be a string")
    if len(value) > MAX_URL:
        raise InvalidInput(field, f"{field} must be at most {MAX_URL} characters")
    if not _URL_CHARS.match(value) or _BAD_ESCAPE.search(value):
        raise InvalidInput(field, f"{field} must be a percent-encoded URL without spaces")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidInput(field, f"{field} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(field, f"{field} must start with http:// or https://")
    host = parts.hostname or ""
    if not host or not _HOST.match(host if ":" not in host else f"[{host}]"):
        raise InvalidInput(field, f"{field} must name a host")
    if port == 0:
        raise InvalidInput(field, f"{field} has an invalid port")
    if parts.fragment or "#" in value:
        raise InvalidInput(field, f"{field} must not have a #fragment")
    return value


def check_method(value: object, field: str = "method") -> str:
    """``GET`` or ``POST`` (any case); absent means POST."""
    if value is None or value == "":
        return "POST"
    if not isinstance(value, str) or value.strip().upper() not in METHODS:
        raise InvalidInput(field, f"{field} must be GET or POST")
    return value.strip().upper()


def check_event_type(value: object, field: str = "event_type") -> str:
    """One of :data:`EVENT_TYPES`."""
    if value is None or value == "":
        raise InvalidInput(field, f"{field} is required", code=f"missing_{field}")
    if not isinstance(value, str) or value.strip().lower() not in EVENT_TYPES:
        raise InvalidInput(field, f"{field} must be one of {', '.join(EVENT_TYPES)}")
    return value.strip().lower()


def _public(sub: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": sub["id"],
        "url": sub["url"],
        "method": sub["method"],
        "event_type": sub["event_type"],
        "secret": sub["secret"],
    }


class TooManySubscriptions(AppError):
    """The extension has :data:`MAX_SUBSCRIPTIONS` already (400)."""

    status = 400
    code = "too_many_subscriptions"

    def __init__(self) -> None:
        super().__init__(f"an extension can have at most {MAX_SUBSCRIPTIONS} subscriptions")


class EventService:
    """Subscriptions per extension, and the outbox of their events.

    :param store: an :class:`~agi_app.events.store.EventStore`
    :param send: how a delivery goes out (a :class:`~agi_app.events.delivery.TreqSender`)
    :param clock: an ``IReactorTime``
    :param guard: where subscription URLs may point (default: public
        addresses only); the sender checks each connection with its own
    :param claims: several nodes share the outbox: a subscription's events
        are delivered by the node holding its claim (:mod:`agi_app.cluster`)
    """

    def __init__(
        self,
        store: EventStore,
        *,
        send: Sender,
        clock: IReactorTime,
        settings: DeliverySettings | None = None,
        guard: TargetGuard | None = None,
        claims: Claims | None = None,
    ):
        self._store = store
        self._clock = clock
        self.guard = guard if guard is not None else TargetGuard()
        self._subs: dict[int, dict[str, Any]] = {}
        self._index: dict[tuple[str, str], list[int]] = {}
        self.deliverer = Deliverer(
            store, subscription=self._subs.get, send=send, clock=clock, settings=settings,
            claims=claims,
        )
        self._last_time_us = 0

    @property
    def settings(self) -> DeliverySettings:
        """The delivery settings in force."""
        return self.deliverer.settings

    # -- lifetime -----------------------------------------------------------

    async def start(self) -> None:
        """Load the subscriptions and resume the deliveries left in the outbox."""
        for sub in await self._store.subscriptions():
            self._remember(sub)
        await self.deliverer.start()

    def stop(self) -> None:
        """Stop delivering (queued deliveries stay in the outbox)."""
        self.deliverer.stop()

    async def reload(self) -> None:
        """Read the subscriptions again: another node (on the same
        PostgreSQL) added or deleted some.  The workers of deleted ones stop."""
        subs = await self._store.subscriptions()
        fresh = {s["id"] for s in subs}
        for sub_id in set(self._subs) - fresh:
            self.deliverer.forget(sub_id)
        self._subs.clear()
        self._index.clear()
        for sub in subs:
            self._remember(sub)

    def _remember(self, sub: dict[str, Any]) -> None:
        self._subs[sub["id"]] = sub
        self._index.setdefault((sub["extension"], sub["event_type"]), []).append(sub["id"])

    # -- subscriptions ----------------------------------------------------

    async def subscribe(
        self, extension: str, *, url: str, method: str, event_type: str
    ) -> dict[str, Any]:
        """Add a subscription (values already checked with :func:`check_url`
        ...); fires ``{"id", "url", "method", "event_type", "secret"}``.
        Raises :class:`~agi_app.netguard.ForbiddenTarget` for a URL the
        guard refuses."""
        self.guard.check_url(url)
        if sum(1 for s in self._subs.values() if s["extension"] == extension) >= MAX_SUBSCRIPTIONS:
            raise TooManySubscriptions()
        sub = await self._store.add_subscription(
            extension=extension, url=url, method=method, event_type=event_type, secret=new_secret()
        )
        self._remember(sub)
        return _public(sub)

    async def subscriptions(self, extension: str) -> list[dict[str, Any]]:
        """The extension's subscriptions, oldest first."""
        return [_public(s) for s in await self._store.subscriptions(extension)]

    async def subscription(self, extension: str, sub_id: int) -> dict[str, Any] | None:
        """One subscription of the extension with its delivery state, or None::

        {"id", "url", "method", "event_type", "secret",
         "delivery": {"pending", "oldest_pending_at", "attempts", "last_error",
                      "delivered", "given_up", "last_delivered_at",
                      "last_error_at", "give_up_after"}}
        """
        sub = await self._store.get_subscription(sub_id)
        if sub is None or sub["extension"] != extension:
            return None
        summary = await self._store.delivery_summary(sub_id)
        out = _public(sub)
        out["delivery"] = {
            "pending": summary["pending"],
            "oldest_pending_at": summary["oldest_pending_at"],
            "attempts": summary["attempts"],
            "last_error": summary["last_error"] or sub["last_error"],
            "last_error_at": sub["last_error_at"],
            "delivered": sub["delivered"],
            "given_up": sub["given_up"],
            "last_delivered_at": sub["last_delivered_at"],
            "give_up_after": self.settings.give_up_after,
        }
        return out

    async def unsubscribe(self, extension: str, sub_id: int) -> bool:
        """Delete a subscription and what is still queued for it."""
        sub = self._subs.get(sub_id)
        if sub is None or sub["extension"] != extension:
            return False
        del self._subs[sub_id]
        self._index[(sub["extension"], sub["event_type"])].remove(sub_id)
        self.deliverer.forget(sub_id)
        return await self._store.delete_subscription(sub_id)

    async def deliveries(
        self, extension: str, sub_id: int, *, outcome: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]] | None:
        """The subscription's delivery log, newest first (None: no such subscription)."""
        sub = self._subs.get(sub_id)
        if sub is None or sub["extension"] != extension:
            return None
        return await self._store.delivery_log(sub_id, outcome=outcome, limit=limit)

    # -- erasure ------------------------------------------------------------

    async def erase(
        self,
        *,
        call_ids: Iterable[str] = (),
        order_id: str | None = None,
        phones: Iterable[str] = (),
    ) -> int:
        """Drop the queued events that carry a subject's data (see
        :meth:`~agi_app.events.store.EventStore.erase_events`); returns how
        many.  The workers of the subscriptions they were queued for start
        over from the outbox, so none of them is sent from memory (a
        delivery already on the wire may still arrive)."""
        count, subs = await self._store.erase_events(
            call_ids=call_ids, order_id=order_id, phones=phones
        )
        for sub_id in subs:
            self.deliverer.forget(sub_id)
            self.deliverer.wake(sub_id)
        return count

    # -- publishing -------------------------------------------------------

    def wants(self, extension: str, event_type: str) -> bool:
        """True when some subscription would receive this event."""
        return bool(self._index.get((extension, event_type)))

    def event_time_us(self, when: float | None = None) -> int:
        """``EventTime``: unix microseconds, never going backwards."""
        now = self._clock.seconds() if when is None else when
        us = max(math.floor(now * 1_000_000), self._last_time_us)
        self._last_time_us = us
        return us

    async def publish(
        self,
        extension: str,
        event_type: str,
        fields: Mapping[str, Any],
        *,
        when: float | None = None,
    ) -> int | None:
        """Queue an event of ``extension`` for every subscription to it.

        ``fields`` are the CONTRACT 6 fields after ``EventType``, ``EventID``
        and ``EventTime`` (which are added here); None values are left out.
        Fires the new ``EventID``, or None when nobody subscribed (nothing is
        stored then).
        """
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        sub_ids = list(self._index.get((extension, event_type), ()))
        if not sub_ids:
            return None
        clean = {k: str(v) for k, v in fields.items() if v is not None}
        created = self._clock.seconds()
        event_id, queued = await self._store.enqueue_event(
            event_type=event_type,
            extension=extension,
            fields=clean,
            time_us=self.event_time_us(when),
            created_at=created,
            subscription_ids=sub_ids,
        )
        for sub_id in queued:
            self.deliverer.wake(sub_id)
        return event_id
