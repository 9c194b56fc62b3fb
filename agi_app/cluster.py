"""Several agi_app nodes on one PostgreSQL store (CONTRACT section 9).

Every node serves the whole API, its own FastAGI sessions and its own AMI
link to each PBX (for actions: Originate, call control).  What must happen
*once* however many nodes run is decided by locks of the database, held on
each node's lock session (:class:`~agi_app.store.cluster_pg.ClusterLink`),
so a node that dies gives up everything it held the moment PostgreSQL sees
its connection close:

- **Webhook delivery** (:class:`SharedDelivery`): a subscription's events
  are delivered by the node holding the subscription's claim (an advisory
  lock keyed by the subscription id) -- one node at a time, oldest first,
  from the outbox.  A node takes the claim when it has work for the
  subscription and gives it back once the outbox has nothing more for it.
  ``NOTIFY`` wakes the other nodes when events are queued; a sweep of the
  outbox every few seconds finds the work a dead node left behind.
- **PBX leadership** (:class:`Leadership`): for each PBX one node leads (an
  advisory lock keyed by the PBX name) and applies what the PBX's AMI events
  say to the store -- operator states, missed calls, the webhook events of
  the tracker -- and closes the calls no node follows any more
  (:meth:`~agi_app.calls.lifecycle.Lifecycle.sweep_orphans`).  The other
  nodes try for the lock every ``retry`` seconds and one of them takes
  over within that when the leader's session ends.

What each duty of a PBX is, is given as :class:`Duty` objects (``lead()``
and ``follow()``), so a PBX's own objects -- one AMI link, tracker,
lifecycle per PBX -- are wrapped where they are built (``agi_app.app``).

Calls (the rule *every call ends with exactly one final status* across
nodes; docs/scaling.md): a call is followed in memory by the node that
placed it and by the node running its FastAGI session (which reads it from
the store); each writes the statuses it sees and settles the call when its
channels are gone, after reading back what the store has.  The store keeps
one final status per call (a row lock) and refuses a status the call
already has, so two nodes seeing the same moment write it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from agi_app.store.cluster_pg import ClusterLink
from agi_app.store.events_pg import OUTBOX_CHANNEL, SUBSCRIPTIONS_CHANNEL

__all__ = [
    "CLAIM_SPACE",
    "LEADER_SPACE",
    "ClusterNode",
    "Duty",
    "Leadership",
    "LifecycleDuty",
    "SharedDelivery",
    "StartStopDuty",
    "WebhookClaims",
]

log = Logger(namespace="agi_app.cluster")

#: lock space of the webhook claims (one lock per subscription)
CLAIM_SPACE = "agi_app.webhooks"
#: lock space of PBX leadership (one lock per PBX name)
LEADER_SPACE = "agi_app.pbx-leader"


class Locks(Protocol):
    """What this module needs of a :class:`~agi_app.store.cluster_pg.ClusterLink`."""

    def try_lock(self, space: str, key: str) -> defer.Deferred[bool]: ...

    def unlock(self, space: str, key: str) -> defer.Deferred[None]: ...

    def on_lost(self, callback: Callable[[], object]) -> None: ...


# -- webhooks ---------------------------------------------------------------------


class WebhookClaims:
    """The :class:`~agi_app.events.delivery.Claims` of a node: one advisory
    lock per subscription on the node's lock session."""

    def __init__(self, locks: Locks):
        self._locks = locks
        # A claim taken before the session was lost must not be given back
        # on the next session (where it may belong to a newer worker).
        self._generation = 0
        locks.on_lost(self._lost)

    def _lost(self) -> None:
        self._generation += 1

    def claim(self, sub_id: int) -> defer.Deferred[object | None]:
        """Fires ``(sub_id, generation)`` when this node holds the claim now, else None."""
        generation = self._generation
        d = self._locks.try_lock(CLAIM_SPACE, str(sub_id))

        def taken(ok: bool) -> object | None:
            if not ok:
                return None
            if generation != self._generation:
                return None  # taken on a session that is gone already
            return (sub_id, generation)

        def failed(failure: Any) -> None:
            log.warn("claim of subscription {sub_id}: {e}", sub_id=sub_id, e=failure.value)
            return None

        return d.addCallbacks(taken, failed)

    def release(self, token: object) -> defer.Deferred[None]:
        """Give the claim back, unless its session is gone (then it is free already)."""
        if not isinstance(token, tuple):
            return defer.succeed(None)
        sub_id, generation = token
        if generation != self._generation:
            return defer.succeed(None)
        return self._locks.unlock(CLAIM_SPACE, str(sub_id))


class SharedDelivery:
    """Webhook delivery of a node sharing the outbox with others.

    :param link: the node's :class:`~agi_app.store.cluster_pg.ClusterLink`
        (not opened yet: the channels are listened to from its opening)
    :param service: the node's :class:`~agi_app.events.service.EventService`
    :param store: the store (its ``subscriptions_with_pending``)
    :param clock: an ``IReactorTime``
    :param sweep: seconds between looks at the outbox for work nobody does
        (a node died holding a claim; a wake-up was missed)
    """

    def __init__(self, link: Any, service: Any, store: Any, clock: Any, *, sweep: float = 2.0):
        self._service = service
        self._store = store
        self._clock = clock
        self._interval = sweep
        self._loop: task.LoopingCall | None = None
        self.claims = WebhookClaims(link)
        service.deliverer.claims = self.claims
        link.listen(OUTBOX_CHANNEL, self._queued)
        link.listen(SUBSCRIPTIONS_CHANNEL, self._changed)
        link.on_resync(self._resync)
        link.on_lost(self._lost)

    def start(self) -> None:
        """Sweep the outbox now and every ``sweep`` seconds."""
        self._loop = task.LoopingCall(self.sweep)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: log.failure("webhook sweep stopped", f)
        )

    def stop(self) -> None:
        """Stop sweeping."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _queued(self, payload: str) -> None:
        for part in payload.split(","):
            if part.strip().isdigit():
                self._service.deliverer.wake(int(part))

    def _changed(self, _payload: str) -> None:
        d = defer.ensureDeferred(self._service.reload())
        d.addErrback(lambda f: log.failure("reloading the subscriptions", f))

    def _resync(self) -> None:
        self._changed("")
        self.sweep()

    def _lost(self) -> None:
        # Every claim is gone with the session: stop delivering from memory,
        # start over from the outbox with fresh claims.
        self._service.deliverer.reset()
        self._clock.callLater(0, self.sweep)

    def sweep(self) -> defer.Deferred[None]:
        """Wake the worker of every subscription with deliveries waiting
        (each runs only if it gets the claim)."""

        async def run() -> None:
            for sub_id in await self._store.subscriptions_with_pending():
                self._service.deliverer.wake(sub_id)

        d = defer.ensureDeferred(run())
        d.addErrback(lambda f: log.warn("webhook sweep: {e}", e=f.value))
        return d


# -- PBX leadership ---------------------------------------------------------------


class Duty(Protocol):
    """Something only the leader of a PBX does."""

    def lead(self) -> object:
        """This node leads the PBX from now on."""

    def follow(self) -> object:
        """This node no longer leads the PBX (another may)."""


class StartStopDuty:
    """A part that works while started (``start()``/``stop()``): started while
    this node leads.  ``resync`` is called after starting (the state the
    leader must write now, e.g. the operators' device states)."""

    def __init__(
        self, part: Any, *, resync: Callable[[], object] | None = None, running: bool = True
    ):
        self.part = part
        self._resync = resync
        #: started (by the application, at first)
        self._running = running

    def lead(self) -> None:
        if not self._running:
            self._running = True
            self.part.start()
            if self._resync is not None:
                self._resync()

    def follow(self) -> None:
        if self._running:
            self._running = False
            self.part.stop()


class LifecycleDuty:
    """A PBX's :class:`~agi_app.calls.lifecycle.Lifecycle` among several nodes:
    it always follows this node's calls; while leading it also closes, every
    ``interval`` seconds, the calls of the PBX that no node follows."""

    def __init__(self, lifecycle: Any, clock: Any, *, interval: float = 3.0):
        self.lifecycle = lifecycle
        self._clock = clock
        self._interval = interval
        self._loop: task.LoopingCall | None = None
        lifecycle.shared = True
        lifecycle.leading = False

    def lead(self) -> None:
        self.lifecycle.leading = True
        if self._loop is None:
            self._loop = task.LoopingCall(self._sweep)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=True)

    def follow(self) -> None:
        self.lifecycle.leading = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _sweep(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self.lifecycle.sweep_orphans())
        d.addErrback(lambda f: log.failure("closing the calls nobody follows", f))
        return d


class Leadership:
    """One node leads the PBX named ``pbx`` among those sharing the database.

    :param locks: the node's :class:`~agi_app.store.cluster_pg.ClusterLink`
    :param clock: an ``IReactorTime``
    :param duties: what the leader does (:class:`Duty`), in order
    :param retry: seconds between attempts to lead while another node does
    """

    def __init__(
        self,
        locks: Locks,
        clock: Any,
        *,
        pbx: str = "default",
        duties: Iterable[Duty] = (),
        retry: float = 1.0,
    ):
        self.pbx = pbx
        self._locks = locks
        self._clock = clock
        self._retry = retry
        self.duties = list(duties)
        self.leading = False
        #: times this node became the leader since start
        self.terms = 0
        self._loop: task.LoopingCall | None = None
        locks.on_lost(self._lost)

    def start(self) -> None:
        """Try to lead now and every ``retry`` seconds."""
        self._loop = task.LoopingCall(self._try)
        self._loop.clock = self._clock
        self._loop.start(self._retry, now=True)

    async def stop(self) -> None:
        """Stop leading (the lock goes back at once, so another node takes over)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.leading:
            self._step_down()
            await self._locks.unlock(LEADER_SPACE, self.pbx)

    def _try(self) -> defer.Deferred[None] | None:
        if self.leading:
            return None
        d = self._locks.try_lock(LEADER_SPACE, self.pbx)

        def taken(ok: bool) -> None:
            if not ok or self.leading or self._loop is None:
                if ok:  # stopped meanwhile
                    self._locks.unlock(LEADER_SPACE, self.pbx)
                return
            self.leading = True
            self.terms += 1
            log.info("this node leads PBX {pbx}", pbx=self.pbx)
            for duty in self.duties:
                try:
                    duty.lead()
                except Exception:
                    log.failure("PBX {pbx}: taking up {duty}", pbx=self.pbx, duty=duty)

        d.addCallback(taken)
        d.addErrback(lambda f: log.warn("PBX {pbx}: leadership: {e}", pbx=self.pbx, e=f.value))
        return d

    def _lost(self) -> None:
        if self.leading:
            log.warn("PBX {pbx}: the lock session was lost; no longer leading", pbx=self.pbx)
            self._step_down()

    def _step_down(self) -> None:
        self.leading = False
        for duty in reversed(self.duties):
            try:
                duty.follow()
            except Exception:
                log.failure("PBX {pbx}: giving up {duty}", pbx=self.pbx, duty=duty)


# -- one node -----------------------------------------------------------------------


class ClusterNode:
    """This process as one node of several on the PostgreSQL store at
    ``url``: its :class:`~agi_app.store.cluster_pg.ClusterLink`, shared
    webhook delivery for ``events`` (an
    :class:`~agi_app.events.service.EventService`) and a
    :class:`Leadership` per PBX (:meth:`lead_pbx`).

    The parts given as duties are started by the application as on a single
    node; :meth:`start` stops them again until this node leads their PBX.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any,
        name: str,
        events: Any,
        store: Any,
        leader_retry: float = 1.0,
        sweep: float = 2.0,
    ):
        self.name = name
        self._reactor = reactor
        self._retry = leader_retry
        self.link = ClusterLink(url, reactor=reactor, name=name)
        self.delivery = SharedDelivery(self.link, events, store, reactor, sweep=sweep)
        self.leaderships: dict[str, Leadership] = {}

    def lead_pbx(self, pbx: str, duties: Iterable[Duty]) -> Leadership:
        """What only the leader of PBX ``pbx`` does (one call per PBX)."""
        if pbx in self.leaderships:
            raise ValueError(f"PBX {pbx!r} has its leadership already")
        lead = Leadership(self.link, self._reactor, pbx=pbx, duties=duties, retry=self._retry)
        self.leaderships[pbx] = lead
        return lead

    def open(self) -> None:
        """Connect the lock session and the listener (blocking: at startup,
        once the store is open)."""
        self.link.open()

    def start(self) -> None:
        """Hand the PBX duties to leadership and start delivering."""
        for lead in self.leaderships.values():
            for duty in lead.duties:
                duty.follow()
            lead.start()
        self.delivery.start()

    async def stop(self) -> None:
        """Stop leading and delivering; close the link (its locks go back)."""
        self.delivery.stop()
        for lead in self.leaderships.values():
            await lead.stop()
        await self.link.close()

    def describe(self) -> dict[str, Any]:
        """``{"name", "leads": [PBX names]}`` for ``GET /health``."""
        return {
            "name": self.name,
            "leads": sorted(p for p, lead in self.leaderships.items() if lead.leading),
        }
