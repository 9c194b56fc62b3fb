"""Signed delivery of queued events, one ordered stream per subscription.

Every subscription has its own worker: it takes the subscription's oldest
queued delivery from the outbox, sends it, and only when the receiver has
answered 2xx takes it out of the outbox and goes on to the next one.  So
deliveries are at-least-once (a crash between the answer and the outbox
update repeats one) and in order per subscription, and a slow or dead
receiver holds up nothing but its own subscription: workers never wait for
each other, and the call flow only ever waits for the store write that
queues an event.

A failed attempt (connection refused, timeout, any non-2xx answer, a
redirect) is retried after ``retry_delay`` seconds, doubling each time up
to ``max_retry_delay``.  A delivery still failing once its event is
``give_up_after`` seconds old is given up: it leaves the outbox as
``given_up`` in the delivery log, and the next one is sent.

A delivery whose URL the :class:`~agi_app.netguard.TargetGuard` refuses
when connecting (its host resolves to a loopback, private... address; see
:mod:`agi_app.netguard`) is given up at once, with an error starting
``forbidden_target:``.  Nothing was sent then.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from hyperlink import EncodedURL
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app import __version__
from agi_app.events.signing import SIGNATURE_HEADER, sign
from agi_app.events.store import EventStore
from agi_app.netguard import FORBIDDEN, ForbiddenTarget, GuardedEndpointFactory, TargetGuard

__all__ = [
    "DeliverySettings",
    "Deliverer",
    "OutgoingRequest",
    "Sender",
    "TreqSender",
    "build_request",
]

log = Logger(namespace="agi_app.events")

_FORM = "application/x-www-form-urlencoded"
_USER_AGENT = f"agi_app/{__version__} (Python {platform.python_version()})"


@dataclass(frozen=True)
class DeliverySettings:
    """How deliveries are retried (see the module docstring)."""

    #: seconds before the first retry; doubles with each failure
    retry_delay: float = 1.0
    #: cap of the retry delay, seconds
    max_retry_delay: float = 300.0
    #: a delivery whose event is older than this (seconds) is given up
    give_up_after: float = 86400.0
    #: seconds one attempt may take (connect, answer, body)
    timeout: float = 10.0
    #: deliveries read from the outbox at a time, per subscription
    batch: int = 100

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        exponent = min(max(attempts - 1, 0), 60)
        return min(self.max_retry_delay, self.retry_delay * (2**exponent))


@dataclass(frozen=True)
class OutgoingRequest:
    """One HTTP request of a delivery, ready to send."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


class Sender(Protocol):
    """Sends one request; fires the HTTP status, or fails (refused, timeout)."""

    def __call__(self, request: OutgoingRequest) -> defer.Deferred[int]: ...


def _payload(delivery: Mapping[str, Any]) -> str:
    fields = {
        "EventType": delivery["event_type"],
        "EventID": str(delivery["event_id"]),
        "EventTime": str(delivery["time_us"]),
    }
    for name, value in delivery["fields"].items():
        if name not in fields and value is not None:
            fields[name] = str(value)
    return urlencode(list(fields.items()))


def build_request(
    subscription: Mapping[str, Any], delivery: Mapping[str, Any], now: float
) -> OutgoingRequest:
    """The signed request delivering ``delivery`` to ``subscription``: GET
    with the fields appended to the URL's query string, POST as a form.
    The signature covers the whole query string (GET) or the body (POST)."""
    payload = _payload(delivery)
    stamp = int(now)
    headers = {"User-Agent": _USER_AGENT, "X-Event-ID": str(delivery["event_id"])}
    if subscription["method"] == "GET":
        base, _, query = subscription["url"].partition("?")
        if query and not query.endswith("&"):
            query += "&"
        query += payload
        # What hyperlink makes of the URL is what goes on the wire (treq
        # sends it that way): sign exactly that query string.
        url = EncodedURL.from_text(f"{base}?{query}").to_uri().to_text()
        signed = url.partition("?")[2]
        headers[SIGNATURE_HEADER] = sign(subscription["secret"], signed.encode("ascii"), stamp)
        return OutgoingRequest("GET", url, headers, None)
    body = payload.encode("ascii")
    headers["Content-Type"] = _FORM
    headers[SIGNATURE_HEADER] = sign(subscription["secret"], body, stamp)
    return OutgoingRequest("POST", subscription["url"], headers, body)


class TreqSender:
    """:class:`Sender` over treq with a shared pool of keep-alive connections.

    Redirects are not followed (a delivery is signed for its URL); cookies
    are not kept between requests.  Every connection goes through ``guard``
    (default: public addresses only): the URL's host is resolved with
    ``resolver`` (default: the reactor's) and only an address the guard lets
    through is connected to; otherwise the request fails with
    :class:`~agi_app.netguard.ForbiddenTarget`.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: float = 10.0,
        per_host: int = 4,
        guard: TargetGuard | None = None,
        resolver: Any = None,
    ):
        from twisted.web.client import Agent, HTTPConnectionPool

        self._reactor = reactor
        self._timeout = timeout
        self.guard = guard if guard is not None else TargetGuard()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = per_host
        self._pool.cachedConnectionTimeout = 30
        endpoints = GuardedEndpointFactory(
            reactor, self.guard, resolver=resolver, connect_timeout=timeout
        )
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)

    def __call__(self, request: OutgoingRequest) -> defer.Deferred[int]:
        return defer.ensureDeferred(self._send(request))

    async def _send(self, request: OutgoingRequest) -> int:
        import treq
        from treq.client import HTTPClient

        client = HTTPClient(self._agent)  # a fresh cookie jar per request
        response = await client.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            data=request.body,
            allow_redirects=False,
            reactor=self._reactor,
            timeout=self._timeout,
        )
        # Read (and drop) the answer so the connection can be reused.
        collected = treq.collect(response, lambda _chunk: None)
        await collected.addTimeout(self._timeout, self._reactor)
        return response.code

    def close(self) -> defer.Deferred[None]:
        """Close the idle keep-alive connections."""
        return self._pool.closeCachedConnections()


class Claims(Protocol):
    """Who delivers a subscription's events when several nodes share the
    outbox: a worker runs only while it holds its subscription's claim (see
    :mod:`agi_app.cluster`).  Without claims (one node) every worker runs."""

    def claim(self, sub_id: int) -> defer.Deferred[object | None]:
        """Take the subscription for this node; fires a token for
        :meth:`release`, or None when another node holds it."""

    def release(self, token: object) -> defer.Deferred[None]:
        """Give back the claim of ``token`` (a claim lost meanwhile, with
        the node's lock session, is not given back twice)."""


class _Worker:
    __slots__ = ("running", "dirty", "sleep", "current")

    def __init__(self) -> None:
        self.running = False
        self.dirty = False
        self.sleep: defer.Deferred | None = None
        self.current: defer.Deferred | None = None


class Deliverer:
    """Runs one delivery worker per subscription that has queued events.

    :param store: the outbox (:class:`~agi_app.events.store.EventStore`)
    :param subscription: ``sub_id -> subscription dict or None`` (the
        service's cache), asked before every attempt so a deleted or changed
        subscription is honoured at once
    :param send: the HTTP :class:`Sender`
    :param clock: an ``IReactorTime``
    :param claims: with several nodes on one outbox, the claim a worker must
        hold to deliver (None: this node delivers everything)
    """

    def __init__(
        self,
        store: EventStore,
        *,
        subscription: Callable[[int], Mapping[str, Any] | None],
        send: Sender,
        clock: IReactorTime,
        settings: DeliverySettings | None = None,
        claims: Claims | None = None,
    ):
        self._store = store
        self.claims = claims
        self._subscription = subscription
        self._send = send
        self._clock = clock
        self.settings = settings or DeliverySettings()
        self._workers: dict[int, _Worker] = {}
        self._stopped = True
        #: counters since start: attempts, delivered, failed, given_up
        self.stats = {"attempts": 0, "delivered": 0, "failed": 0, "given_up": 0}

    # -- control ------------------------------------------------------------

    async def start(self) -> None:
        """Resume every subscription that still has queued deliveries."""
        self._stopped = False
        for sub_id in await self._store.subscriptions_with_pending():
            self.wake(sub_id)

    def stop(self) -> None:
        """Stop every worker; what is still queued stays in the outbox."""
        self._stopped = True
        for worker in self._workers.values():
            for d in (worker.sleep, worker.current):
                if d is not None and not d.called:
                    d.cancel()
        self._workers.clear()

    def wake(self, sub_id: int) -> None:
        """New deliveries were queued for ``sub_id``: make sure its worker runs."""
        if self._stopped:
            return
        worker = self._workers.get(sub_id)
        if worker is None:
            worker = self._workers[sub_id] = _Worker()
        worker.dirty = True
        if not worker.running:
            worker.running = True
            d = defer.ensureDeferred(self._run(sub_id, worker))
            d.addErrback(self._crashed, sub_id, worker)

    def reset(self) -> None:
        """Stop every worker but keep delivering: what they were doing is
        picked up again from the outbox by the next :meth:`wake` (the claims
        they held are gone: the lock session was lost)."""
        for sub_id in list(self._workers):
            self.forget(sub_id)

    def forget(self, sub_id: int) -> None:
        """The subscription was deleted: stop its worker."""
        worker = self._workers.pop(sub_id, None)
        if worker is not None:
            for d in (worker.sleep, worker.current):
                if d is not None and not d.called:
                    d.cancel()

    @property
    def active(self) -> int:
        """How many subscriptions have a worker running."""
        return sum(1 for w in self._workers.values() if w.running)

    # -- the worker ---------------------------------------------------------

    def _alive(self, sub_id: int, worker: _Worker) -> bool:
        return not self._stopped and self._workers.get(sub_id) is worker

    def _crashed(self, failure: Failure, sub_id: int, worker: _Worker) -> None:
        worker.running = False
        if failure.check(defer.CancelledError) or not self._alive(sub_id, worker):
            return
        log.failure("event delivery for subscription {sub_id} failed", failure, sub_id=sub_id)
        # Start over after a pause rather than stall the subscription for good.
        self._clock.callLater(self.settings.max_retry_delay, self.wake, sub_id)

    async def _run(self, sub_id: int, worker: _Worker) -> None:
        claims = self.claims
        token = None
        if claims is not None:
            token = await claims.claim(sub_id)
            if token is None:
                # Another node delivers this subscription now; when it stops
                # (or dies) the outbox is looked at again (agi_app.cluster).
                self._idle(sub_id, worker)
                return
        try:
            await self._drain(sub_id, worker)
        finally:
            if claims is not None:
                # Only once every delivery taken is settled in the outbox:
                # the next holder reads it from there.
                claims.release(token)
        self._idle(sub_id, worker)

    def _idle(self, sub_id: int, worker: _Worker) -> None:
        worker.running = False
        if self._workers.get(sub_id) is worker:
            del self._workers[sub_id]

    async def _drain(self, sub_id: int, worker: _Worker) -> None:
        while self._alive(sub_id, worker):
            worker.dirty = False
            if self._subscription(sub_id) is None:
                return  # not (yet) known here: its rows wait for whoever knows it
            rows = await self._store.pending_deliveries(sub_id, self.settings.batch)
            for row in rows:
                if not self._alive(sub_id, worker):
                    return
                await self._deliver(sub_id, worker, dict(row))
            if not rows and not worker.dirty:
                return

    async def _deliver(self, sub_id: int, worker: _Worker, row: dict[str, Any]) -> None:
        settings = self.settings
        deadline = row["created_at"] + settings.give_up_after
        while self._alive(sub_id, worker):
            wait = row["next_attempt_at"] - self._clock.seconds()
            if wait > 0:
                worker.sleep = task.deferLater(self._clock, wait, lambda: None)
                try:
                    await worker.sleep
                finally:
                    worker.sleep = None
                continue
            sub = self._subscription(sub_id)
            if sub is None:
                return
            status, error, final = await self._attempt(sub_id, worker, sub, row)
            now = self._clock.seconds()
            row["attempts"] += 1
            self.stats["attempts"] += 1
            if error is None:
                self.stats["delivered"] += 1
                await self._store.delivery_finished(
                    row["outbox_id"],
                    outcome="delivered",
                    attempts=row["attempts"],
                    http_status=status,
                    error=None,
                    when=now,
                )
                return
            self.stats["failed"] += 1
            if now >= deadline or final:
                self.stats["given_up"] += 1
                log.warn(
                    "event {event_id} to subscription {sub_id} given up after {n} attempts: "
                    "{error}",
                    event_id=row["event_id"],
                    sub_id=sub_id,
                    n=row["attempts"],
                    error=error,
                )
                await self._store.delivery_finished(
                    row["outbox_id"],
                    outcome="given_up",
                    attempts=row["attempts"],
                    http_status=status,
                    error=error,
                    when=now,
                )
                return
            # The last retry happens right at the deadline, not after it.
            row["next_attempt_at"] = min(now + settings.delay(row["attempts"]), deadline)
            row["last_error"] = error
            await self._store.delivery_failed(
                row["outbox_id"],
                attempts=row["attempts"],
                next_attempt_at=row["next_attempt_at"],
                error=error,
                when=now,
            )

    async def _attempt(
        self, sub_id: int, worker: _Worker, sub: Mapping[str, Any], row: Mapping[str, Any]
    ) -> tuple[int | None, str | None, bool]:
        """``(HTTP status, error, final)``: ``final`` when retrying is pointless."""
        request = build_request(sub, row, self._clock.seconds())
        worker.current = d = self._send(request)
        d.addTimeout(self.settings.timeout + 1, self._clock)
        try:
            status = await d
        except (defer.CancelledError, defer.TimeoutError):
            if not self._alive(sub_id, worker):
                raise  # stop() or forget()
            # treq's own timeout cancels the request too
            return None, f"no answer within {self.settings.timeout:g} s", False
        except ForbiddenTarget as e:
            return None, f"{FORBIDDEN}: {e.message}"[:300], True
        except Exception as e:  # noqa: BLE001 - any failure of the receiver is a retry
            return None, _describe(e), False
        finally:
            worker.current = None
        if 200 <= status < 300:
            return status, None, False
        return status, f"HTTP {status}", False


def _describe(error: BaseException) -> str:
    """A short, single-line reason for the delivery log."""
    # twisted.web's client wraps the real reason (refused, reset...) in a list.
    reasons = getattr(error, "reasons", None)
    if reasons and hasattr(reasons[0], "value"):
        error = reasons[0].value
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("\r", " ")
    return text[:300]
