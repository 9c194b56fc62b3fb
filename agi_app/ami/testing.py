"""Fakes for unit tests, shipped beside the real code.

:class:`FakeAMIServer` is an in-memory Asterisk Manager Interface that speaks
real AMI bytes: it greets, checks logins, answers Ping, CoreShowChannels,
DeviceStateList, PJSIPShowContacts, Originate (with a scripted
OriginateResponse), Hangup, Redirect, Getvar, Setvar and Logoff, and
broadcasts events.  It connects to the client through a
:class:`twisted.internet.testing.MemoryReactorClock`::

    reactor = MemoryReactorClock()
    pbx = FakeAMIServer(users={"agi_app": "s3cret"}, clock=reactor)
    ami = AMIService("127.0.0.1", 5038, "agi_app", "s3cret", reactor=reactor)
    ami.startService()
    link = pbx.accept(reactor)          # complete the pending connectTCP
    assert ami.connected
    pbx.emit("Hangup", Uniqueid="1700000000.1", Cause="16")
    link.drop()                         # the PBX goes away
    reactor.advance(1)                  # the client reconnects...
    pbx.accept(reactor)                 # ...and is let in again

Bytes move between the two sides as soon as either writes (``autoflush``);
``link.blackhole()`` makes the link swallow everything without closing,
like a dead peer behind a half-open TCP connection.

``FakeAMIServer(booted=False)`` is an Asterisk still loading its modules, as
Asterisk 22 is for a few hundred milliseconds after it opens its manager
port: logins are accepted, no FullyBooted follows them, and the actions of
modules not loaded yet (``DeviceStateList``, ``PJSIPShowContacts``) are
answered ``Invalid/unknown command``.  ``pbx.load("DeviceStateList")`` loads
one module, ``pbx.boot()`` the rest and broadcasts ``FullyBooted``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from agi_app.ami.message import AMIMessage, AMIParser

#: Actions of loadable modules (res_manager_devicestate, res_pjsip), unknown
#: to an Asterisk that has not loaded them yet.
MODULE_ACTIONS = frozenset({"devicestatelist", "pjsipshowcontacts"})

__all__ = ["FakeAMIServer", "FakeAMIPeer", "FakeAMIConnection", "OriginateOutcome"]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass
class OriginateOutcome:
    """How the fake PBX answers an Originate to one channel.

    ``error`` set: the action itself is refused with that message.  Otherwise
    the action is queued and, ``delay`` seconds later (on the server's
    clock), the outcome is reported as Asterisk 22 does it: when a channel
    was created (answered, or ``cause`` given) a ``Newchannel`` for it, then
    the ``OriginateResponse`` with ``reason`` (``Success`` for 4, ``Failure``
    otherwise), then, for a failed call, the channel's ``Hangup`` with
    ``cause`` (before the OriginateResponse with ``hangup_first``).
    ``delay=None`` never reports anything.  Use the class methods for what
    Asterisk 22 + PJSIP really sends.
    """

    reason: int = 4
    delay: float | None = 0.0
    error: str | None = None
    #: Q.850 cause of the dialled channel's Hangup; None: no channel was created
    cause: int | None = None
    hangup_first: bool = False
    #: extra headers for the OriginateResponse event
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def answered(cls, delay: float = 0.0) -> OriginateOutcome:
        """The phone answers."""
        return cls(reason=4, delay=delay)

    @classmethod
    def busy(cls, delay: float = 0.0) -> OriginateOutcome:
        """486 Busy Here: Asterisk 22 reports reason 0 and hangs up with cause 17."""
        return cls(reason=0, cause=17, delay=delay)

    @classmethod
    def declined(cls, delay: float = 0.0) -> OriginateOutcome:
        """603 Decline: reason 0, cause 21 (call rejected)."""
        return cls(reason=0, cause=21, delay=delay)

    @classmethod
    def no_answer(cls, delay: float = 30.0) -> OriginateOutcome:
        """Rings until the Originate's timeout: reason 3."""
        return cls(reason=3, cause=19, delay=delay)

    @classmethod
    def offline(cls, delay: float = 0.0) -> OriginateOutcome:
        """Endpoint without a contact: no channel at all, reason 0."""
        return cls(reason=0, delay=delay)


_CAUSE_TEXT = {16: "Normal Clearing", 17: "User busy", 19: "User alerting, no answer",
               21: "Call Rejected", 34: "Circuit/channel congestion"}


class FakeAMIServer:
    """An in-memory AMI server; every connection is a :class:`FakeAMIPeer`.

    Attributes a test may set or read:

    * ``users``: username -> secret accepted by Login;
    * ``channels``: Uniqueid -> snapshot headers listed by CoreShowChannels;
    * ``device_states``: device -> state listed by DeviceStateList;
    * ``contacts``: ContactList items (dicts); PJSIPShowContacts answers
      ``Permission denied`` unless ``system_class`` (the ``system`` write
      class) is true;
    * ``system_events``: the user reads the ``system`` class, so it gets
      ``FullyBooted`` (after Login when booted, and when booting ends);
    * ``booted``: False while Asterisk is still loading modules;
      ``unloaded``: lower-case actions of modules not loaded yet;
    * ``originate_outcomes``: Originate channel -> :class:`OriginateOutcome`
      (``default_outcome`` for others);
    * ``handlers``: lower-case action name -> ``handler(peer, action)``, to
      override or add actions (also those of modules not loaded yet);
    * ``silent_actions``: lower-case action names that get no answer at all;
    * ``actions``: every action received, all connections, in order;
    * ``peers`` / ``connections``: every connection made.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        clock: IReactorTime | None = None,
        port: int | None = None,
        version: str | None = "11.0.0",
        system_class: bool = False,
        system_events: bool = True,
        booted: bool = True,
    ):
        self.users = dict(users if users is not None else {"agi_app": "secret"})
        self.clock = clock
        self.port = port
        #: the AMI version in the greeting; None: send no greeting at all
        self.version = version
        self.system_class = system_class
        self.system_events = system_events
        self.booted = booted
        self.unloaded: set[str] = set() if booted else set(MODULE_ACTIONS)
        self.channels: dict[str, list[tuple[str, str]]] = {}
        self.device_states: dict[str, str] = {}
        self.contacts: list[dict[str, str]] = []
        self.originate_outcomes: dict[str, OriginateOutcome] = {}
        self.default_outcome = OriginateOutcome()
        self.handlers: dict[str, Callable[[FakeAMIPeer, AMIMessage], object]] = {}
        self.silent_actions: set[str] = set()
        self.actions: list[AMIMessage] = []
        self.peers: list[FakeAMIPeer] = []
        self.connections: list[FakeAMIConnection] = []
        self._uniqueids = itertools.count(1)
        self._channel_numbers = itertools.count(1)

    # -- connecting --------------------------------------------------------

    def buildProtocol(self, addr: object = None) -> FakeAMIPeer:
        """A server-side protocol for one connection (IProtocolFactory style)."""
        peer = FakeAMIPeer(self)
        self.peers.append(peer)
        return peer

    def _pending_attempt(self, reactor: MemoryReactor) -> tuple[int, tuple]:
        for i, attempt in enumerate(reactor.tcpClients):
            port = attempt[1]
            if reactor.connectors[i].stoppedConnecting:
                continue
            if self.port is None or port == self.port:
                return i, attempt
        raise AssertionError("no pending connection attempt to the fake AMI server")

    def has_pending(self, reactor: MemoryReactor) -> bool:
        """Whether a client is trying to connect (a connectTCP not yet answered)."""
        try:
            self._pending_attempt(reactor)
        except AssertionError:
            return False
        return True

    def accept(self, reactor: MemoryReactor, *, autoflush: bool = True) -> FakeAMIConnection:
        """Complete the oldest pending ``connectTCP`` of ``reactor`` to this server."""
        i, (host, port, factory, _timeout, _bind) = self._pending_attempt(reactor)
        del reactor.tcpClients[i]
        del reactor.connectors[i]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        peer = self.buildProtocol(None)
        conn = FakeAMIConnection(client, peer, autoflush=autoflush)
        self.connections.append(conn)
        conn.start()
        return conn

    def refuse(self, reactor: MemoryReactor) -> None:
        """Fail the oldest pending ``connectTCP`` with 'connection refused'."""
        i, (_host, _port, factory, _timeout, _bind) = self._pending_attempt(reactor)
        del reactor.tcpClients[i]
        connector = reactor.connectors.pop(i)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    # -- state and events --------------------------------------------------

    def add_channel(
        self, channel: str, *, uniqueid: str | None = None, state: str = "Up",
        variables: Mapping[str, str] | None = None, **fields: str,
    ) -> list[tuple[str, str]]:
        """Record a live channel (listed by CoreShowChannels, dropped by Hangup);
        returns its snapshot headers."""
        uniqueid = uniqueid or f"1700000000.{next(self._uniqueids)}"
        snapshot = {
            "Channel": channel,
            "ChannelState": {"Down": "0", "Ring": "4", "Ringing": "5", "Up": "6"}.get(state, "6"),
            "ChannelStateDesc": state,
            "CallerIDNum": "<unknown>",
            "CallerIDName": "<unknown>",
            "ConnectedLineNum": "<unknown>",
            "ConnectedLineName": "<unknown>",
            "Language": "en",
            "AccountCode": "",
            "Context": "default",
            "Exten": "s",
            "Priority": "1",
            "Uniqueid": uniqueid,
            "Linkedid": uniqueid,
        }
        snapshot.update(fields)
        pairs = list(snapshot.items())
        pairs += [("ChanVariable", f"{k}={v}") for k, v in (variables or {}).items()]
        self.channels[uniqueid] = pairs
        return pairs

    def load(self, action: str) -> None:
        """The module providing ``action`` finishes loading: it is known from now on."""
        self.unloaded.discard(action.lower())

    def boot(self) -> None:
        """Asterisk finishes loading: every action is known, and sessions
        reading the ``system`` class get ``FullyBooted`` (main/asterisk.c)."""
        self.unloaded.clear()
        self.booted = True
        if self.system_events:
            self.emit("FullyBooted", Privilege="system,all", Uptime="0", LastReload="0",
                      Status="Fully Booted")

    def emit(self, event: str, headers: Headers | None = None, /, **kw: str) -> None:
        """Send an event to every logged-in connection that asked for events."""
        for peer in self.peers:
            if peer.authenticated and peer.events and peer.connected:
                peer.send_event(event, headers, **kw)

    def actions_named(self, name: str) -> list[AMIMessage]:
        """The received actions called ``name`` (case-insensitive), in order."""
        low = name.lower()
        return [a for a in self.actions if (a.get("Action") or "").lower() == low]


def _pairs(headers: Headers | None, kw: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if headers is not None:
        pairs.extend(headers.items() if isinstance(headers, Mapping) else headers)
    pairs.extend(kw.items())
    return [(key, str(value)) for key, value in pairs]


class FakeAMIPeer(Protocol):
    """The server side of one fake AMI connection."""

    def __init__(self, server: FakeAMIServer):
        self.server = server
        self.authenticated = False
        self.events = True
        #: every byte received from the client
        self.received = bytearray()
        #: every action received on this connection
        self.actions: list[AMIMessage] = []
        self._parser = AMIParser(expect_greeting=False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False

    def connectionMade(self) -> None:
        if self.server.version is not None:
            self.transport.write(f"Asterisk Call Manager/{self.server.version}\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for msg in self._parser.feed(data):
            assert isinstance(msg, AMIMessage)
            self.actions.append(msg)
            self.server.actions.append(msg)
            self._handle(msg)

    # -- writing -------------------------------------------------------------

    def _write(self, pairs: list[tuple[str, str]]) -> None:
        if self.connected:
            self.transport.write(
                b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"
            )

    def respond(self, action: AMIMessage, response: str = "Success",
                headers: Headers | None = None, /, **kw: str) -> None:
        """Answer ``action`` (``Response``, echoed ``ActionID``, then headers)."""
        pairs = [("Response", response)]
        if action.get("ActionID"):
            pairs.append(("ActionID", action["ActionID"]))
        self._write(pairs + _pairs(headers, kw))

    def error(self, action: AMIMessage, message: str) -> None:
        """Answer ``action`` with ``Response: Error``."""
        self.respond(action, "Error", Message=message)

    def send_event(self, event: str, headers: Headers | None = None, /,
                   action_id: str | None = None, **kw: str) -> None:
        """Write one event (with ``ActionID`` when it belongs to an action)."""
        pairs = [("Event", event)]
        if action_id:
            pairs.append(("ActionID", action_id))
        self._write(pairs + _pairs(headers, kw))

    def send_list(self, action: AMIMessage, event: str, items: Iterable[Headers],
                  complete: str, message: str = "Events will follow") -> None:
        """Answer a list action as Asterisk does: listack, items, ...Complete."""
        self.respond(action, "Success", EventList="start", Message=message)
        count = 0
        for item in items:
            self.send_event(event, item, action_id=action.get("ActionID"))
            count += 1
        self.send_event(complete, action_id=action.get("ActionID"), EventList="Complete",
                        ListItems=str(count))

    # -- actions -------------------------------------------------------------

    def _handle(self, action: AMIMessage) -> None:
        name = (action.get("Action") or "").lower()
        if name in self.server.silent_actions:
            return
        if not self.authenticated and name not in ("login", "logoff", "challenge"):
            self.error(action, "Permission denied")
            return
        handler = self.server.handlers.get(name)
        if handler is not None:
            handler(self, action)
            return
        method = getattr(self, f"action_{name}", None)
        if method is None or name in self.server.unloaded:
            self.error(action, f"Invalid/unknown command: {action.get('Action')}. "
                               "Use Action: ListCommands to show available commands.")
            return
        method(action)

    def action_login(self, action: AMIMessage) -> None:
        user, secret = action.get("Username"), action.get("Secret")
        if user not in self.server.users or self.server.users[user] != secret:
            # Asterisk answers, then closes the session.
            self.error(action, "Authentication failed")
            self.transport.loseConnection()
            return
        self.authenticated = True
        self.events = (action.get("Events") or "on").lower() not in ("off", "no", "false")
        self.respond(action, Message="Authentication accepted")
        # main/manager.c action_login: only once fully booted, only to
        # sessions reading the system class, written right after the answer.
        if self.events and self.server.booted and self.server.system_events:
            self.send_event("FullyBooted", Privilege="system,all", Uptime="1", LastReload="1",
                            Status="Fully Booted")

    def action_logoff(self, action: AMIMessage) -> None:
        self.respond(action, "Goodbye", Message="Thanks for all the fish.")
        self.transport.loseConnection()

    def action_ping(self, action: AMIMessage) -> None:
        self.respond(action, Ping="Pong", Timestamp="1700000000.000000")

    def action_coreshowchannels(self, action: AMIMessage) -> None:
        self.send_list(action, "CoreShowChannel", list(self.server.channels.values()),
                       "CoreShowChannelsComplete", "Channels will follow")

    def action_devicestatelist(self, action: AMIMessage) -> None:
        items = [{"Device": d, "State": s} for d, s in self.server.device_states.items()]
        self.send_list(action, "DeviceStateChange", items, "DeviceStateListComplete",
                       "Device State Changes will follow")

    def action_pjsipshowcontacts(self, action: AMIMessage) -> None:
        if not self.server.system_class:
            self.error(action, "Permission denied")
        elif not self.server.contacts:
            self.error(action, "No Contacts found")
        else:
            self.send_list(action, "ContactList", self.server.contacts, "ContactListComplete",
                           "A listing of Contacts follows, presented as ContactList events")

    def action_originate(self, action: AMIMessage) -> None:
        channel = action.get("Channel") or ""
        if not channel:
            self.error(action, "Channel not specified")
            return
        if "/" not in channel:
            self.error(action, "Invalid channel")
            return
        outcome = self.server.originate_outcomes.get(channel, self.server.default_outcome)
        if outcome.error is not None:
            self.error(action, outcome.error)
            return
        self.respond(action, Message="Originate successfully queued")
        if outcome.delay is None:
            return
        if outcome.delay > 0 and self.server.clock is not None:
            self.server.clock.callLater(outcome.delay, self._originate_response, action, outcome)
        else:
            self._originate_response(action, outcome)

    def _originate_response(self, action: AMIMessage, outcome: OriginateOutcome) -> None:
        server = self.server
        channel = action.get("Channel") or ""
        answered = outcome.reason == 4
        uniqueid = action.get("ChannelId") or f"1700000000.{next(server._uniqueids)}"
        snapshot = None
        if answered or outcome.cause is not None:
            name = f"{channel}-{next(server._channel_numbers):08x}"
            snapshot = server.add_channel(name, uniqueid=uniqueid, state="Down")
            server.emit("Newchannel", snapshot)
        if answered:
            assert snapshot is not None
            reported_channel, reported_id = name, uniqueid
        else:
            reported_channel, reported_id = channel, action.get("ChannelId") or "<unknown>"
        if snapshot is not None and not answered:
            server.channels.pop(uniqueid, None)
        hangup = None
        if snapshot is not None and outcome.cause is not None and not answered:
            text = _CAUSE_TEXT.get(outcome.cause, "")
            hangup = snapshot + [("Cause", str(outcome.cause)), ("Cause-txt", text)]
        if hangup is not None and outcome.hangup_first:
            server.emit("Hangup", hangup)
        headers = [
            ("Privilege", "call,all"),
            ("Response", "Success" if answered else "Failure"),
            ("Channel", reported_channel),
        ]
        if action.get("Application"):
            headers += [("Application", action["Application"]), ("Data", action.get("Data", ""))]
        else:
            headers += [("Context", action.get("Context", "")), ("Exten", action.get("Exten", ""))]
        headers += [
            ("Reason", str(outcome.reason)),
            ("Uniqueid", reported_id),
            ("CallerIDNum", "<unknown>"),
            ("CallerIDName", "<unknown>"),
        ]
        headers += list(outcome.extra.items())
        # Asterisk sends OriginateResponse to every session reading call events.
        for peer in server.peers:
            if peer is self or (peer.authenticated and peer.events and peer.connected):
                peer.send_event("OriginateResponse", headers, action_id=action.get("ActionID"))
        if hangup is not None and not outcome.hangup_first:
            server.emit("Hangup", hangup)

    def action_hangup(self, action: AMIMessage) -> None:
        channel = action.get("Channel") or ""
        for uid, snap in list(self.server.channels.items()):
            if dict(snap).get("Channel") == channel:
                del self.server.channels[uid]
                self.respond(action, Message="Channel Hungup")
                cause = action.get("Cause") or "16"
                self.server.emit("Hangup", snap + [("Cause", cause), ("Cause-txt", "")])
                return
        self.error(action, "No such channel")

    def action_redirect(self, action: AMIMessage) -> None:
        self.respond(action, Message="Redirect successful")

    def action_getvar(self, action: AMIMessage) -> None:
        self.respond(action, Variable=action.get("Variable", ""), Value="")

    def action_setvar(self, action: AMIMessage) -> None:
        self.respond(action, Message="Variable Set")

    def action_userevent(self, action: AMIMessage) -> None:
        self.respond(action, Message="Event Sent")
        headers = [(k, v) for k, v in action.raw
                   if k.lower() not in ("action", "actionid", "userevent")]
        self.server.emit("UserEvent", [("UserEvent", action.get("UserEvent", ""))] + headers)


class _LinkTransport(StringTransport):
    def __init__(self, link: FakeAMIConnection, host_port: int, peer_port: int):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", host_port),
            peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port),
        )
        self._link = link

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            return
        super().write(data)
        self._link.kick()

    def loseConnection(self) -> None:
        super().loseConnection()
        self._link.kick()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._link.kick()


class FakeAMIConnection:
    """One in-memory TCP connection between a client protocol and a
    :class:`FakeAMIPeer`.  With ``autoflush`` bytes move as soon as written
    (never re-entrantly: writes made while delivering are queued)."""

    def __init__(self, client: IProtocol, peer: FakeAMIPeer, *, autoflush: bool = True):
        self.client = client
        self.peer = peer
        self.autoflush = autoflush
        self.client_transport = _LinkTransport(self, 40000, 5038)
        self.server_transport = _LinkTransport(self, 5038, 40000)
        self.closed = False
        self._blackholed = False
        self._flushing = False

    def start(self) -> None:
        # Hold delivery until both ends know of the connection.
        self._flushing = True
        try:
            self.peer.makeConnection(self.server_transport)
            self.client.makeConnection(self.client_transport)
        finally:
            self._flushing = False
        self.kick()

    def kick(self) -> None:
        if self.autoflush and not self._flushing:
            self.flush()

    def flush(self) -> None:
        """Deliver everything written so far, both ways, until nothing moves."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while not self.closed:
                to_server = self.client_transport.value()
                to_client = self.server_transport.value()
                self.client_transport.clear()
                self.server_transport.clear()
                if not self._blackholed:
                    if to_server:
                        self.peer.dataReceived(to_server)
                    if to_client and not self.closed:
                        self.client.dataReceived(to_client)
                if to_server or to_client:
                    continue
                if self.client_transport.disconnecting or self.server_transport.disconnecting:
                    self._close(Failure(ConnectionDone()))
                break
        finally:
            self._flushing = False

    def drop(self, abrupt: bool = True) -> None:
        """The server end goes away (``abrupt``: like a killed process)."""
        if not self.closed:
            self._close(Failure(ConnectionLost() if abrupt else ConnectionDone()))

    def blackhole(self) -> None:
        """From now on bytes vanish both ways but nobody notices a close
        (a half-open connection to a dead peer)."""
        self._blackholed = True

    def _close(self, reason: Failure) -> None:
        self.closed = True
        for transport in (self.client_transport, self.server_transport):
            transport.disconnecting = True
            transport.connected = False
        self.peer.connectionLost(reason)
        self.client.connectionLost(reason)
