"""A long-lived AMI session: connect, log in, resynchronise, keep alive, reconnect.

:class:`AMIService` wraps :class:`twisted.application.internet.ClientService`
(which owns the TCP connection and its retries) and adds what an AMI client
needs on top: the login, a snapshot of channels and device states rebuilt
after every login and kept current from events, event subscribers that
survive reconnects, a keep-alive ``Ping`` that detects a dead peer, and the
actions this application sends (Originate, Hangup, Redirect, Getvar, Setvar).

Nothing is ever re-sent after a reconnect: an action in flight when the link
drops fails with :class:`AMIDisconnected`, since a repeated Originate would
place a second call.

Asterisk opens its manager port before it loads its modules, so a login
right after a PBX restart can come a few hundred milliseconds before the
PBX is up: no ``FullyBooted`` follows it and ``DeviceStateList`` is an
unknown command until res_manager_devicestate is loaded (the device states
set before that never come as events either).  The session is only declared
connected once a device state snapshot was taken after that module loaded
(see :meth:`AMIService._snapshot`).
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from agi_app.ami.errors import (
    AMIActionError,
    AMIAuthenticationError,
    AMIDisconnected,
    AMIError,
    AMITimeout,
)
from agi_app.ami.message import (
    AMIEventList,
    AMIMessage,
    HeaderValue,
    check_wire_value,
    encode_action,
    variable_assignment,
)
from agi_app.ami.protocol import AMIProtocol, Headers, normalize_headers

__all__ = [
    "FOLLOWED_CLASSES",
    "FOLLOWED_EVENTS",
    "AMIService",
    "OriginateReason",
    "OriginateResult",
    "REASON_TEXT",
]

#: Seconds added to an Originate's ring timeout before giving up on its
#: OriginateResponse (channel setup and the dialplan take a moment).
ORIGINATE_MARGIN = 5.0
#: After a failed Originate whose channel was created, how long to wait for
#: that channel's Hangup event (it carries the real cause; Asterisk publishes
#: it a few milliseconds after the OriginateResponse, sometimes before).
HANGUP_GRACE = 2.0
#: The first reconnect waits this long; each failure in a row doubles it.
INITIAL_BACKOFF = 0.5
#: Each reconnect delay is shortened by up to this fraction at random, so
#: several clients do not all come back at the same instant.
BACKOFF_JITTER = 0.25
#: Seconds a session logged in to a still-booting Asterisk waits for a
#: DeviceStateList answer before it goes on without device states.
BOOT_TIMEOUT = 30.0

#: The events agi_app follows; every other event is skipped unread (see
#: :class:`~agi_app.ami.message.AMIParser`).  Asterisk sends every event of
#: every channel in the user's read classes to every session -- about 46 per
#: click-to-call with the README's classes, 125 with ``read = all`` -- and
#: reading them was most of agi_app's CPU under load.  Who needs which:
#:
#: * this service: OriginateResponse, Newchannel and Hangup (an Originate's
#:   outcome and cause; the channel list), DeviceStateChange, ContactStatus,
#:   FullyBooted, and every event below that carries a channel snapshot
#:   (``channels`` is kept current from them);
#: * the call lifecycle (agi_app.calls.lifecycle): Hangup and DialEnd of a
#:   call's channels, and any event that shows one of them alive;
#: * the call tracker (agi_app.live.tracker): the events it has a handler
#:   for, and the snapshot of a channel's state, caller ID and connected
#:   line (Newstate, NewCallerid, NewConnectedLine);
#: * operators (agi_app.live.operators): DeviceStateChange;
#: * call control (agi_app.live.control): ParkedCall.
#:
#: All of them are in the ``call`` class but FullyBooted and ContactStatus
#: (``system``): :data:`FOLLOWED_CLASSES`.  ``tests/unit/test_ami_events.py``
#: holds this list against what the consumers handle.
FOLLOWED_EVENTS: frozenset[str] = frozenset(
    {
        "BridgeDestroy", "BridgeEnter", "BridgeLeave", "ChanSpyStart", "ContactStatus",
        "DeviceStateChange", "DialBegin", "DialEnd", "FullyBooted", "Hangup",
        "MixMonitorStart", "MusicOnHoldStart", "MusicOnHoldStop", "NewCallerid",
        "NewConnectedLine", "Newchannel", "Newstate", "OriginateResponse", "ParkedCall",
        "ParkedCallGiveUp", "ParkedCallTimeOut", "Rename", "UnParkedCall",
    }
)  # fmt: skip
#: The event classes asked for at login (``Events: call,system``): the
#: classes of :data:`FOLLOWED_EVENTS`.  Within the user's read classes, so
#: a user with ``read = all`` gets no dialplan (``Newexten``, ``VarSet``),
#: agi, dtmf, reporting (RTCP), cdr or cel events either.
FOLLOWED_CLASSES = "call,system"


class OriginateReason(IntEnum):
    """``Reason`` of an OriginateResponse: the last control frame seen on the
    new channel (``enum ast_control_frame_type`` in Asterisk's frame.h).

    Asterisk 22 with PJSIP reports 0 for every rejected call (486, 603,
    480...): the channel hangs up before its control frame is read, so the
    dialing code never learns the cause.  :meth:`AMIService.originate`
    then derives the reason from the channel's Hangup cause with the table
    Asterisk itself uses (main/pbx.c ``pbx_dial_reason``).
    """

    OTHER = 0  #: failed before any answer: unregistered endpoint, no route...
    HANGUP = 1
    RING = 2
    NO_ANSWER = 3  #: AST_CONTROL_RINGING: it rang until the timeout
    ANSWERED = 4
    BUSY = 5
    CONGESTION = 8  #: congestion, or rejected (e.g. SIP 603 Decline)


REASON_TEXT = {
    OriginateReason.OTHER: "other",
    OriginateReason.HANGUP: "hangup",
    OriginateReason.RING: "ring",
    OriginateReason.NO_ANSWER: "no answer",
    OriginateReason.ANSWERED: "answered",
    OriginateReason.BUSY: "busy",
    OriginateReason.CONGESTION: "congestion",
}


# Q.850 cause -> reason, as main/pbx.c pbx_dial_reason() maps them.
_CAUSE_REASON = {
    17: OriginateReason.BUSY,  # user busy
    21: OriginateReason.CONGESTION,  # call rejected
    27: OriginateReason.CONGESTION,  # destination out of order
    34: OriginateReason.CONGESTION,  # circuit congestion
    38: OriginateReason.CONGESTION,  # network out of order
    41: OriginateReason.CONGESTION,  # temporary failure
    42: OriginateReason.CONGESTION,  # switch congestion
    19: OriginateReason.NO_ANSWER,  # no answer
    26: OriginateReason.NO_ANSWER,  # answered elsewhere
}


@dataclass(frozen=True)
class OriginateResult:
    """The outcome of an asynchronous Originate (its OriginateResponse event)."""

    #: ``Response: Success`` (the channel answered and went to the dialplan)
    success: bool
    #: ``Success`` or ``Failure``
    response: str
    #: see :class:`OriginateReason` (derived from ``cause`` when Asterisk says 0)
    reason: int
    #: ``busy``, ``no answer``, ``answered``... (``reason N`` for others)
    reason_text: str
    #: the channel's name (or the requested ``tech/data`` if none was created)
    channel: str
    #: the channel's Uniqueid ("" when Asterisk reports ``<unknown>``)
    uniqueid: str
    #: the OriginateResponse event itself (its ``Reason`` is Asterisk's own)
    event: AMIMessage
    #: Q.850 cause of the dialled channel's Hangup (17 busy, 21 rejected...);
    #: None when no channel was created (e.g. an unregistered endpoint) or answered
    cause: int | None = None
    #: Asterisk's text for ``cause`` (``User busy``...)
    cause_text: str = ""


@dataclass
class _OriginateWatch:
    """What was seen of the channel an Originate creates (by its ChannelId)."""

    channel_seen: bool = False
    hangup: AMIMessage | None = None
    waiter: Deferred | None = None


@dataclass
class _Link:
    """What one connection has learnt of the PBX's boot."""

    proto: AMIProtocol
    #: FullyBooted seen on this connection (Asterisk is up)
    booted: bool = False
    #: the first list of the first snapshot has completed; a FullyBooted from
    #: now on is not the one written right after the Login answer
    listed: bool = False
    #: FullyBooted arrived while the snapshot was being taken: take it again
    stale: bool = False
    #: fired to end a wait before the next snapshot
    wake: Deferred | None = None


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Wraps an endpoint to hear of failed connection attempts (ClientService
    keeps its own count, which it resets on every TCP connect)."""

    def __init__(self, endpoint: IStreamClientEndpoint, on_failure: Callable[[Failure], None],
                 description: str):
        self._endpoint = endpoint
        self._on_failure = on_failure
        self._description = description

    def __repr__(self) -> str:
        # ClientService names the endpoint in its "Scheduling retry" log line.
        return f"<AMI {self._description}>"

    def connect(self, factory: Factory) -> Deferred:
        d = self._endpoint.connect(factory)

        def failed(reason: Failure) -> Failure:
            self._on_failure(reason)
            return reason

        return d.addErrback(failed)


class _ProtocolFactory(Factory):
    noisy = False  # no "Starting factory" line per connection attempt

    def __init__(self, service: AMIService):
        self.service = service

    def buildProtocol(self, addr: object) -> AMIProtocol:
        return self.service._build_protocol()


def _default_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class AMIService(Service):
    """A self-healing AMI session with one Asterisk.

    :param host, port, username, secret: where and how to log in
        (manager.conf).
    :param reactor: provides ``connectTCP`` and ``callLater``; all timing
        uses it.
    :param ping_interval: seconds between keep-alive ``Ping`` actions.
    :param action_timeout: seconds an action (also the greeting, login and
        each Ping) may wait for its reply; an unanswered Ping drops the
        connection as dead.
    :param max_backoff: cap of the reconnect delay, in seconds.
    :param name: this PBX link's name, shown in every log line.
    :param endpoint: a client endpoint to use instead of TCP to host:port.
    :param rng: the source of reconnect jitter (``random.Random``).
    :param boot_timeout: seconds a login to an Asterisk that is still loading
        its modules waits for ``DeviceStateList`` to be answered (listing
        again with backoff, and at once on ``FullyBooted``) before it goes
        on with device states unknown.
    :param events: the event names delivered to subscribers (default
        :data:`FOLLOWED_EVENTS`; None: every event).  Subscribing to an event
        by name adds that name.  Others are skipped before they are parsed.
    :param event_classes: the event classes asked for at login (default
        :data:`FOLLOWED_CLASSES`; None: every class the user may read).  An
        event of another class never arrives, whatever is subscribed.

    State, rebuilt after every login and then kept current from events:
    ``channels`` (Uniqueid -> the latest snapshot message of that channel),
    ``device_states`` (``PJSIP/101`` -> ``NOT_INUSE``...) and ``contacts``
    (contact URI -> ``{"aor", "endpoint", "status"}``; empty when the AMI user
    lacks the ``system`` class that PJSIPShowContacts needs).
    """

    log = Logger(namespace="agi_app.ami")

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        reactor: Any,
        ping_interval: float = 20.0,
        action_timeout: float = 10.0,
        max_backoff: float = 30.0,
        name: str = "default",
        endpoint: IStreamClientEndpoint | None = None,
        rng: random.Random | None = None,
        boot_timeout: float = BOOT_TIMEOUT,
        events: Collection[str] | None = FOLLOWED_EVENTS,
        event_classes: str | None = FOLLOWED_CLASSES,
    ):
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self.reactor = reactor
        self.ping_interval = ping_interval
        self.action_timeout = action_timeout
        self.max_backoff = max_backoff
        self.boot_timeout = boot_timeout
        self.link_name = name
        # Service.name must be unique among siblings of a MultiService.
        self.name = f"ami:{name}"
        self._rng = rng if rng is not None else random.Random()
        self._backoff = backoffPolicy(
            initialDelay=INITIAL_BACKOFF, maxDelay=max_backoff, factor=2.0, jitter=lambda: 0.0
        )
        #: connection attempts and sessions in a row that failed before being ready
        self._failures = 0
        #: Uniqueid -> latest snapshot of the channel (Newchannel, Newstate...)
        self.channels: dict[str, AMIMessage] = {}
        #: device (``PJSIP/101``) -> state (``NOT_INUSE``, ``INUSE``, ``UNAVAILABLE``...)
        self.device_states: dict[str, str] = {}
        #: contact URI -> {"aor", "endpoint", "status"}
        self.contacts: dict[str, dict[str, str]] = {}
        #: greeting of the current connection, e.g. ``Asterisk Call Manager/11.0.0``
        self.greeting: str | None = None
        #: events received since the service was made, over every connection
        self.events_received = 0
        self._protocol: AMIProtocol | None = None
        self._link: _Link | None = None
        self._ready = False
        self._subscribers: dict[str | None, list[Callable[[AMIMessage], object]]] = {}
        self._on_connect: list[Callable[[AMIService], object]] = []
        self._on_disconnect: list[Callable[[AMIService], object]] = []
        self._waiters: list[Deferred] = []
        self._ping_loop: LoopingCall | None = None
        self._ping_outstanding = False
        self._originating: dict[str, _OriginateWatch] = {}
        self._events: set[str] | None = set(events) if events is not None else None
        self._event_classes = event_classes
        endpoint = endpoint or _default_endpoint(reactor, host, port, action_timeout)
        self._client = ClientService(
            _ReportingEndpoint(endpoint, self._connect_failed, f"{name} {host}:{port}"),
            _ProtocolFactory(self),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    # -- public state ------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in and resynchronised (actions may be sent)."""
        return self._ready

    def when_connected(self) -> Deferred:
        """A Deferred firing with this service once it is (or next becomes)
        connected; fails with :class:`AMIDisconnected` if the service stops first."""
        if self._ready:
            return succeed(self)
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def subscribe(
        self, callback: Callable[[AMIMessage], object], event_name: str | None = None
    ) -> Callable[[], None]:
        """Call ``callback(message)`` for every event named ``event_name``
        (case-insensitive; None: every event).  Returns a function that
        unsubscribes.  Subscriptions survive reconnects; an exception in a
        callback is logged and does not stop the others.  Items of list
        actions (``collect``) are answers, not events, and are not delivered.

        Events are delivered from the login on, also while the snapshot is
        taken (before ``on_connect``).  The callbacks for one event run one
        after another: those subscribed to its name, then those subscribed to
        every event, each group in subscription order.  A callback that fires
        a Deferred resumes its waiter before the later callbacks have seen
        the event.
        """
        key = event_name.lower() if event_name is not None else None
        if event_name is not None and self._events is not None:
            self._events.add(event_name)
            if self._protocol is not None:
                self._protocol.want(event_name)
        callbacks = self._subscribers.setdefault(key, [])
        # A wrapper makes each subscription distinct even for the same callback.
        entry = _Subscription(callback)
        callbacks.append(entry)

        def unsubscribe() -> None:
            if entry in callbacks:
                callbacks.remove(entry)

        return unsubscribe

    def on_connect(self, callback: Callable[[AMIService], object]) -> Callable[[], None]:
        """Call ``callback(service)`` after every login + resync; returns a remover."""
        return _register(self._on_connect, callback)

    def on_disconnect(self, callback: Callable[[AMIService], object]) -> Callable[[], None]:
        """Call ``callback(service)`` whenever a connected session ends; returns a remover."""
        return _register(self._on_disconnect, callback)

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self.log.info("AMI {ami}: connecting to {host}:{port} as {user!r}",
                      ami=self.link_name, host=self.host, port=self.port, user=self.username)
        self._client.startService()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        proto = self._protocol
        if proto is not None and not proto.closed:
            # Polite goodbye; the answer does not matter, the socket closes anyway.
            proto.send_action("Logoff").addErrback(lambda _f: None)
        stopped = self._client.stopService()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(AMIDisconnected(f"AMI {self.link_name}: service stopped"))
        return stopped

    # -- actions -----------------------------------------------------------

    def action(self, name: str, headers: Headers | None = None, /, **kw_headers: HeaderValue
               ) -> Deferred:
        """Send an action; a Deferred firing with its response :class:`AMIMessage`.

        ``headers`` is a mapping or a list of ``(name, value)`` pairs (to
        repeat a header); keyword arguments add more.  Fails with
        :class:`AMIDisconnected` at once when not connected,
        :class:`AMIActionError` on ``Response: Error``, :class:`AMITimeout`.
        Raises :class:`AMIInjectionError` (nothing is sent) for a name or value
        that could break the framing.
        """
        pairs = normalize_headers(headers, kw_headers)
        proto = self._usable(name, pairs)
        if isinstance(proto, Deferred):
            return proto
        return proto.send_action(name, pairs)

    def collect(self, name: str, headers: Headers | None = None, /, **kw_headers: HeaderValue
                ) -> Deferred:
        """Send a list action (``CoreShowChannels``, ``DeviceStateList``...); a
        Deferred firing with the :class:`AMIEventList` of its events."""
        pairs = normalize_headers(headers, kw_headers)
        proto = self._usable(name, pairs)
        if isinstance(proto, Deferred):
            return proto
        return proto.send_action(name, pairs, collect=True)

    def originate(
        self,
        channel: str,
        *,
        context: str | None = None,
        exten: str | None = None,
        priority: int | str | None = None,
        application: str | None = None,
        data: str | None = None,
        caller_id: str | None = None,
        timeout_ms: int = 30000,
        variables: Mapping[str, str] | None = None,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        account: str | None = None,
        codecs: str | Sequence[str] | None = None,
        early_media: bool = False,
    ) -> Deferred:
        """Place a call with an asynchronous Originate; a Deferred firing with
        an :class:`OriginateResult` once its OriginateResponse arrives.

        A busy, unanswered or unreachable destination is a result with
        ``success=False`` and its ``reason``, not a failure.  ``channel_id``
        (the new channel's Uniqueid) defaults to a generated unique id, so the
        result can carry the channel's hangup ``cause``.  Fails with
        :class:`AMIActionError` when Asterisk refuses the action (``Extension
        does not exist.``...), :class:`AMITimeout` when no OriginateResponse
        comes within ``timeout_ms`` + a margin, :class:`AMIDisconnected` when
        the link drops first (the call may then exist: it is not retried).
        Each ``variables`` item goes in its own ``Variable`` header; values may
        not hold commas, quotes, backslashes or line breaks
        (:class:`AMIInjectionError`, raised before anything is sent).
        """
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be a positive whole number, not {timeout_ms!r}")
        check_wire_value(channel, "Originate channel")
        if "/" not in channel:
            raise ValueError(f"Originate channel must be TECH/resource, not {channel!r}")
        if caller_id is not None:
            check_wire_value(caller_id, "Originate caller_id")
        if isinstance(codecs, (list, tuple)):
            codecs = ",".join(codecs)
        if channel_id is None:
            channel_id = f"agiapp-{uuid.uuid4().hex}"
        pairs: list[tuple[str, HeaderValue]] = [("Channel", channel)]
        if application is not None:
            pairs += [("Application", application), ("Data", data)]
        else:
            pairs += [("Context", context), ("Exten", exten), ("Priority", priority)]
        pairs += [
            ("CallerID", caller_id),
            ("Timeout", timeout_ms),
            ("ChannelId", channel_id),
            ("OtherChannelId", other_channel_id),
            ("Account", account),
            ("Codecs", codecs),
            ("EarlyMedia", "true" if early_media else None),
            ("Async", "true"),
        ]
        for var_name, value in (variables or {}).items():
            pairs.append(("Variable", variable_assignment(var_name, value)))
        proto = self._usable("Originate", pairs)
        if isinstance(proto, Deferred):
            return proto
        watch = _OriginateWatch()
        self._originating[channel_id] = watch
        d = proto.send_action(
            "Originate", pairs, final_event="OriginateResponse",
            timeout=timeout_ms / 1000.0 + ORIGINATE_MARGIN,
        )
        d.addCallback(self._originate_responded, watch)

        def forget(result: object) -> object:
            self._originating.pop(channel_id, None)
            return result

        return d.addBoth(forget)

    def _originate_responded(self, event: AMIMessage, watch: _OriginateWatch) -> object:
        failed = (event.get("Response") or "").lower() != "success"
        if not failed or watch.hangup is not None or not watch.channel_seen:
            return _originate_result(event, watch.hangup)
        waiter: Deferred = Deferred()
        watch.waiter = waiter
        timer = self.reactor.callLater(HANGUP_GRACE, waiter.callback, None)

        def done(_: object) -> OriginateResult:
            if timer.active():
                timer.cancel()
            return _originate_result(event, watch.hangup)

        return waiter.addCallback(done)

    def hangup(self, channel: str, cause: int = 16) -> Deferred:
        """Hang a channel up with a Q.850 cause (16: normal clearing)."""
        return self.action("Hangup", Channel=channel, Cause=cause)

    def redirect(
        self,
        channel: str,
        context: str,
        exten: str,
        priority: int | str,
        extra_channel: str | None = None,
        extra_context: str | None = None,
        extra_exten: str | None = None,
        extra_priority: int | str | None = None,
    ) -> Deferred:
        """Send a channel (and optionally a second one) to a dialplan location."""
        return self.action(
            "Redirect",
            Channel=channel, Context=context, Exten=exten, Priority=priority,
            ExtraChannel=extra_channel, ExtraContext=extra_context,
            ExtraExten=extra_exten, ExtraPriority=extra_priority,
        )

    def getvar(self, channel: str, name: str) -> Deferred:
        """A Deferred firing with the value of a channel variable or function
        (``None`` if Asterisk sends no value)."""
        d = self.action("Getvar", Channel=channel, Variable=name)
        return d.addCallback(lambda msg: msg.get("Value"))

    def setvar(self, channel: str, name: str, value: str) -> Deferred:
        """Set a channel variable (or function) on a live channel."""
        return self.action("Setvar", Channel=channel, Variable=name, Value=value)

    # -- connection life ---------------------------------------------------

    def _usable(self, name: str, pairs: list) -> AMIProtocol | Deferred:
        # Validate first, so bad input always raises whether or not we are connected.
        encode_action(name, "check", pairs)
        if not self._ready or self._protocol is None or self._protocol.closed:
            return fail(AMIDisconnected(f"AMI {self.link_name} is not connected; {name} not sent"))
        return self._protocol

    def _retry_delay(self, attempt: int) -> float:
        # ClientService's own attempt count restarts at every TCP connect, which
        # would retry a refused login every 0.5 s; count failures ourselves.
        base = self._backoff(max(self._failures - 1, 0))
        return base * (1.0 - BACKOFF_JITTER * self._rng.random())

    def _connect_failed(self, reason: Failure) -> None:
        self._failures += 1
        self.log.warn("AMI {ami}: cannot connect to {host}:{port}: {why}",
                      ami=self.link_name, host=self.host, port=self.port,
                      why=reason.getErrorMessage())

    def _build_protocol(self) -> AMIProtocol:
        proto = AMIProtocol(clock=self.reactor, action_timeout=self.action_timeout,
                            name=self.link_name, events=self._events)
        proto.on_event = self._on_event
        proto.on_lost = lambda reason: self._lost(proto, reason)
        self._protocol = proto
        self._link = _Link(proto)
        Deferred.fromCoroutine(self._session(proto)).addErrback(
            lambda f: self.log.failure("AMI {ami}: session setup failed", f, ami=self.link_name)
        )
        return proto

    async def _session(self, proto: AMIProtocol) -> None:
        try:
            self.greeting = await proto.when_greeted()
            await proto.login(self.username, self._secret,
                              events=self._event_classes or True)  # fmt: skip
        except AMIAuthenticationError as e:
            self.log.error(
                "AMI {ami}: login as {user!r} to {host}:{port} refused ({why}); check [ami] "
                "username/secret and manager.conf (secret, permit/deny); retrying with backoff",
                ami=self.link_name, user=self.username, host=self.host, port=self.port,
                why=e.message,
            )
            if not proto.closed:
                proto.transport.loseConnection()
            return
        except AMIDisconnected:
            return
        except AMIError as e:
            self.log.warn("AMI {ami}: login failed: {why}; reconnecting", ami=self.link_name,
                          why=str(e))
            if not proto.closed:
                proto.transport.abortConnection()
            return
        link = self._link
        if link is None or link.proto is not proto:
            return
        try:
            await self._snapshot(link)
        except AMIDisconnected:
            return
        except AMIError as e:
            self.log.warn("AMI {ami}: resynchronisation failed: {why}; reconnecting",
                          ami=self.link_name, why=str(e))
            if not proto.closed:
                proto.transport.abortConnection()
            return
        if proto.closed or proto is not self._protocol:
            return
        self._failures = 0
        self._ready = True
        self._start_ping(proto)
        self.log.info(
            "AMI {ami}: logged in to {host}:{port} ({greeting}); {channels} channels, "
            "{devices} device states", ami=self.link_name, host=self.host, port=self.port,
            greeting=self.greeting, channels=len(self.channels), devices=len(self.device_states),
        )
        for callback in list(self._on_connect):
            _call_logged(self.log, callback, self, f"AMI {self.link_name}: on_connect callback")
        if self._ready:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(self)

    async def _snapshot(self, link: _Link) -> None:
        """Take the snapshot a new session starts from, waiting for Asterisk
        to finish booting when the login came early.

        Device states are complete once ``DeviceStateList`` is answered:
        res_manager_devicestate starts forwarding DeviceStateChange events
        before it registers that action, so that list plus the events after
        it miss nothing.  Until then the list is taken again with backoff
        (``FullyBooted`` ends the wait at once).  A refusal after FullyBooted
        (the module is not loaded, or the user may not list) or past
        ``boot_timeout`` leaves the device states unknown.  A FullyBooted
        that arrives while a snapshot is taken (not the one written right
        after the Login answer) makes it be taken again: that snapshot
        predates the end of the boot."""
        started = self.reactor.seconds()
        attempt = 0
        while True:
            link.stale = False
            refused = await self._resync(link.proto, link)
            if link.stale:
                continue
            if refused is None:
                return
            waited = self.reactor.seconds() - started
            if link.booted or waited >= self.boot_timeout:
                self.log.warn(
                    "AMI {ami}: DeviceStateList refused ({why}); device states unknown",
                    ami=self.link_name, why=refused,
                )
                self.device_states.clear()
                return
            delay = min(self._backoff(attempt), self.boot_timeout - waited)
            attempt += 1
            self.log.info(
                "AMI {ami}: Asterisk is still loading its modules (DeviceStateList: {why}); "
                "listing again in {delay:.1f} s or when it reports FullyBooted",
                ami=self.link_name, why=refused, delay=delay,
            )
            await self._pause(link, delay)

    async def _pause(self, link: _Link, delay: float) -> None:
        """Wait ``delay`` seconds, less if FullyBooted arrives; fails with
        :class:`AMIDisconnected` if the connection ends meanwhile."""
        wake: Deferred = Deferred()
        link.wake = wake
        timer = self.reactor.callLater(delay, lambda: wake.called or wake.callback(None))
        try:
            await wake
        finally:
            link.wake = None
            if timer.active():
                timer.cancel()
        if link.proto.closed or link.proto is not self._protocol:
            raise AMIDisconnected(f"AMI {self.link_name}: connection lost while waiting")

    async def _resync(self, proto: AMIProtocol, link: _Link | None = None) -> str | None:
        """Rebuild the state dicts from list actions; returns why
        ``DeviceStateList`` was refused (the device states are then left as
        they were), or None.

        Asterisk writes a list from its session thread, which writes events
        only between actions (main/manager.c process_events), and its device
        state cache is updated before the DeviceStateChange event is made
        (main/devicestate.c publishes the aggregate from the cache): an event
        that arrived before the list is never newer than it, one that comes
        after is never older.  So replacing a dict when its list completes
        and applying later events on top keeps it exact."""
        try:
            listed = await proto.send_action("CoreShowChannels", collect=True)
        except AMIActionError as e:
            self.log.warn("AMI {ami}: CoreShowChannels refused ({why}); channel list empty",
                          ami=self.link_name, why=e.message)
            listed = AMIEventList()
        if link is not None:
            link.listed = True
        self.channels.clear()
        for item in listed:
            uid = item.get("Uniqueid")
            if uid:
                self.channels[uid] = item
        refused = None
        try:
            listed = await proto.send_action("DeviceStateList", collect=True)
        except AMIActionError as e:
            refused = e.message
        else:
            self.device_states.clear()
            for item in listed:
                device, state = item.get("Device"), item.get("State")
                if device and state is not None:
                    self.device_states[device] = state
        try:
            listed = await proto.send_action("PJSIPShowContacts", collect=True)
        except AMIActionError as e:
            # "No Contacts found", or "Permission denied" without the system class.
            self.log.debug("AMI {ami}: PJSIPShowContacts: {why}", ami=self.link_name,
                           why=e.message)
            listed = AMIEventList()
        self.contacts.clear()
        for item in listed:
            uri = item.get("Uri") or item.get("URI")
            if uri:
                aor = item.get("AOR") or (item.get("ObjectName") or "").split(";@")[0]
                self.contacts[uri] = {
                    "aor": aor,
                    "endpoint": item.get("Endpoint") or item.get("EndpointName") or "",
                    "status": item.get("Status") or "",
                }
        return refused

    def _booted_late(self, proto: AMIProtocol) -> None:
        """A FullyBooted event after the session is up: its snapshot was taken
        while Asterisk was still loading modules (e.g. the contacts), so take
        it again.  (Only AMI users that may read the ``system`` class get
        this event.)"""
        self.log.info("AMI {ami}: Asterisk finished booting; resynchronising",
                      ami=self.link_name)

        async def again() -> None:
            try:
                refused = await self._resync(proto)
            except AMIDisconnected:
                return
            except AMIError as e:
                self.log.warn("AMI {ami}: resynchronisation failed: {why}; reconnecting",
                              ami=self.link_name, why=str(e))
                if not proto.closed:
                    proto.transport.abortConnection()
                return
            if refused is not None:
                self.log.warn("AMI {ami}: DeviceStateList refused ({why}); device states "
                              "kept from the last snapshot and events", ami=self.link_name,
                              why=refused)

        Deferred.fromCoroutine(again()).addErrback(
            lambda f: self.log.failure("AMI {ami}: resync failed", f, ami=self.link_name)
        )

    def _start_ping(self, proto: AMIProtocol) -> None:
        self._ping_outstanding = False
        loop = LoopingCall(self._ping, proto)
        loop.clock = self.reactor
        loop.start(self.ping_interval, now=False).addErrback(
            lambda f: self.log.failure("AMI {ami}: keep-alive stopped", f, ami=self.link_name)
        )
        self._ping_loop = loop

    def _stop_ping(self) -> None:
        if self._ping_loop is not None and self._ping_loop.running:
            self._ping_loop.stop()
        self._ping_loop = None

    def _ping(self, proto: AMIProtocol) -> None:
        if self._ping_outstanding or proto.closed:
            return
        self._ping_outstanding = True

        def answered(_msg: object) -> None:
            self._ping_outstanding = False

        def failed(f: Failure) -> None:
            self._ping_outstanding = False
            if f.check(AMITimeout):
                self.log.warn(
                    "AMI {ami}: no answer to Ping within {timeout}s; the connection is dead, "
                    "reconnecting", ami=self.link_name, timeout=self.action_timeout,
                )
                if not proto.closed:
                    proto.transport.abortConnection()
            elif f.check(AMIActionError):
                # e.g. "Asterisk is shutting down": the PBX closes the link itself.
                self.log.info("AMI {ami}: Ping refused: {why}", ami=self.link_name,
                              why=f.value.message)
            elif not f.check(AMIDisconnected):
                self.log.failure("AMI {ami}: Ping failed", f, ami=self.link_name)

        proto.send_action("Ping").addCallbacks(answered, failed)

    def _lost(self, proto: AMIProtocol, reason: Failure) -> None:
        if proto is not self._protocol:
            return
        was_ready = self._ready
        self._ready = False
        self._protocol = None
        link, self._link = self._link, None
        self._stop_ping()
        if not was_ready:
            self._failures += 1
        why = reason.getErrorMessage() if reason is not None else "closed"
        if was_ready and self.running:
            self.log.warn("AMI {ami}: connection to {host}:{port} lost ({why}); reconnecting",
                          ami=self.link_name, host=self.host, port=self.port, why=why)
        else:
            self.log.info("AMI {ami}: connection to {host}:{port} closed ({why})",
                          ami=self.link_name, host=self.host, port=self.port, why=why)
        # Fail the actions in flight before telling anyone else, so an
        # on_disconnect callback sees a consistent picture.
        proto.fail_pending(AMIDisconnected(f"AMI {self.link_name}: connection lost ({why})"))
        if link is not None and link.wake is not None and not link.wake.called:
            link.wake.callback(None)
        if was_ready:
            for callback in list(self._on_disconnect):
                _call_logged(self.log, callback, self,
                             f"AMI {self.link_name}: on_disconnect callback")

    # -- events --------------------------------------------------------------

    def _on_event(self, msg: AMIMessage) -> None:
        self.events_received += 1
        name = (msg.get("Event") or "").lower()
        if self._originating:
            self._watch_originated(name, msg)
        if name == "fullybooted":
            self._fully_booted()
        try:
            self._track(name, msg)
        except Exception:
            _event_log.failure("AMI {ami}: could not track {event}", ami=self.link_name,
                               event=msg.event)  # fmt: skip
        # Per event and subscriber: nothing made that only an error needs.
        for key in (name, None):
            callbacks = self._subscribers.get(key)
            if not callbacks:
                continue
            for entry in tuple(callbacks):
                try:
                    result = entry.callback(msg)  # (the _Subscription's own, one call less)
                except Exception:
                    _event_log.failure("AMI {ami}: subscriber to {event} raised",
                                       ami=self.link_name, event=msg.event)  # fmt: skip
                    continue
                if result is not None and isinstance(result, Deferred):
                    result.addErrback(
                        lambda f, event=msg.event: _event_log.failure(
                            "AMI {ami}: subscriber to {event} failed", f, ami=self.link_name,
                            event=event,
                        )
                    )

    def _fully_booted(self) -> None:
        link = self._link
        if link is None:
            return
        link.booted = True
        if self._ready:
            self._booted_late(link.proto)
            return
        # Asterisk writes the FullyBooted of a login to a booted PBX right
        # after the Login answer, before the first list: only a later one
        # says the snapshot being taken is from before the end of the boot.
        if link.listed:
            link.stale = True
        if link.wake is not None and not link.wake.called:
            link.wake.callback(None)

    def _watch_originated(self, name: str, msg: AMIMessage) -> None:
        watch = self._originating.get(msg.get("Uniqueid") or "")
        if watch is None:
            return
        if name == "newchannel":
            watch.channel_seen = True
        elif name == "hangup":
            watch.hangup = msg
            if watch.waiter is not None and not watch.waiter.called:
                watch.waiter.callback(None)

    def _track(self, name: str, msg: AMIMessage) -> None:
        uid = msg.get("Uniqueid")
        if name == "newchannel" and uid:
            self.channels[uid] = msg
        elif name == "hangup" and uid:
            self.channels.pop(uid, None)
        elif uid and uid in self.channels and "ChannelState" in msg:
            # Every channel event carries the channel's whole snapshot.
            self.channels[uid] = msg
        if name == "devicestatechange":
            device, state = msg.get("Device"), msg.get("State")
            if device and state is not None:
                self.device_states[device] = state
        elif name == "contactstatus":
            uri = msg.get("URI")
            if not uri:
                return
            status = msg.get("ContactStatus") or ""
            if status == "Removed":
                self.contacts.pop(uri, None)
            else:
                self.contacts[uri] = {
                    "aor": msg.get("AOR") or "",
                    "endpoint": msg.get("EndpointName") or "",
                    "status": status,
                }


class _Subscription:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[AMIMessage], object]):
        self.callback = callback

    def __call__(self, msg: AMIMessage) -> object:
        return self.callback(msg)


def _register(callbacks: list, callback: Callable) -> Callable[[], None]:
    entry = _Subscription(callback)
    callbacks.append(entry)

    def remove() -> None:
        if entry in callbacks:
            callbacks.remove(entry)

    return remove


#: made once: ``self.log`` makes a new Logger at every use (a descriptor)
_event_log = Logger(namespace="agi_app.ami")


def _call_logged(log: Logger, callback: Callable, arg: object, what: str) -> None:
    """Call ``callback(arg)``; log (never raise) its exception or failed Deferred."""
    try:
        result = callback(arg)
    except Exception:
        log.failure("{what} raised", what=what)
        return
    if isinstance(result, Deferred):
        result.addErrback(lambda f: log.failure("{what} failed", f, what=what))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _originate_result(event: AMIMessage, hangup: AMIMessage | None) -> OriginateResult:
    response = event.get("Response") or ""
    success = response.lower() == "success"
    reason = _int(event.get("Reason")) or 0
    cause = _int(hangup.get("Cause")) if hangup is not None else None
    if not success and reason == 0 and cause in _CAUSE_REASON:
        reason = _CAUSE_REASON[cause]
    uniqueid = event.get("Uniqueid") or ""
    text = REASON_TEXT.get(reason)  # type: ignore[call-overload]
    return OriginateResult(
        success=success,
        response=response,
        reason=reason,
        reason_text=text or f"reason {reason}",
        channel=event.get("Channel") or "",
        uniqueid="" if uniqueid == "<unknown>" else uniqueid,
        event=event,
        cause=cause,
        cause_text=(hangup.get("Cause-txt") or "") if hangup is not None else "",
    )
