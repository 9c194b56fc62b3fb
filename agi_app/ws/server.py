"""The widget's WebSocket server and the hub routing events to widgets.

The wire protocol (``docs/widget.md``) is JSON text messages, one object
each with a ``type``.

Who may connect (``docs/security.md``, "Browser widget"):

- the opening handshake's ``Origin`` must be allowed by the factory's
  :class:`~agi_app.ws.origins.OriginPolicy` (``[websocket]
  allowed_origins``), else HTTP 403;
- the first message must be ``hello`` with a ``client_id``: a widget token
  (:mod:`agi_app.ws.tokens`), which binds the connection to its extension,
  or one of the static ``[websocket] client_ids`` (loopback listeners only,
  see :mod:`agi_app.config`), which does not.  Refusals close the
  connection with a code of 4000-4099 and a reason saying why (the
  ``CLOSE_*`` constants).

A supervisor token (``sv1.…``, :mod:`agi_app.ws.tokens`) opens a
read-only connection for the live dashboard: it follows no phone and acts as
none, and gets ``dashboard`` messages (the snapshot of ``GET
/api/dashboard``) when it says hello, a moment after anything changes (calls,
statuses, operators; at most every :data:`DASHBOARD_DELAY` seconds), and
every :data:`DASHBOARD_INTERVAL` seconds in any case.

After that a widget sets its user's phone (``set_phone``; with a token only
its own extension), places calls (``call``), transfers (``transfer``, only
calls its user's phone takes part in) and receives ``event`` messages for
the calls its user's phone takes part in.  A malformed, oversized or unknown
message is answered with an ``error`` message and the connection stays
open; only messages over :data:`MAX_FRAME` bytes make autobahn close it
(1009).
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger

from agi_app import __version__
from agi_app import validation as v
from agi_app.calls.service import CallRequest
from agi_app.errors import AppError, NotFound
from agi_app.events.generator import LegMemory
from agi_app.ws import tokens
from agi_app.ws.feed import widget_event
from agi_app.ws.origins import OriginPolicy

__all__ = [
    "CLOSE_BAD_CLIENT_ID",
    "CLOSE_NO_HELLO",
    "CLOSE_OTHER_EXTENSION",
    "CLOSE_TOKEN_EXPIRED",
    "DASHBOARD_DELAY",
    "DASHBOARD_INTERVAL",
    "HELLO_TIMEOUT",
    "MAX_FRAME",
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "Refused",
    "WidgetError",
    "WidgetFactory",
    "WidgetHub",
    "WidgetProtocol",
]

log = Logger(namespace="agi_app.ws")

PROTOCOL_VERSION = 1
#: close code: the first message was not a hello, or none came in time
CLOSE_NO_HELLO = 4000
#: close code: the client_id is neither a valid token nor a static client id
#: (reason ``invalid client_id``, or ``invalid token`` for a malformed or forged one)
CLOSE_BAD_CLIENT_ID = 4001
#: close code and reason ``token expired``: a genuine token past its ``expires``
CLOSE_TOKEN_EXPIRED = 4002
#: close code: a token-bound connection asked for another extension
CLOSE_OTHER_EXTENSION = 4003
#: seconds a new connection has to say hello
HELLO_TIMEOUT = 10.0
#: largest message handled; larger ones get an error message
MAX_MESSAGE = 4096
#: largest message autobahn accepts at all; larger ones close the connection (1009)
MAX_FRAME = 65536
#: seconds from a change to the dashboard snapshot sent for it (changes in
#: between are sent together: a burst of events costs one snapshot)
DASHBOARD_DELAY = 0.3
#: seconds between dashboard snapshots when nothing changes (the webhook
#: backlog and the call durations move without events)
DASHBOARD_INTERVAL = 5.0
#: what a supervisor connection is told when it asks to act
_READ_ONLY = "a supervisor connection watches every extension and acts as none"


class WidgetError(AppError):
    """A request of a widget cannot be done: answered as an ``error`` message
    (as is any other :class:`~agi_app.errors.AppError`)."""

    status = 409

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class Refused(Exception):
    """A connection is refused: closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WidgetHub:
    """The connected widgets by user phone, and what they can ask for.

    :param client_ids: the accepted static ``client_id`` values (the
        configuration allows them only on a loopback listener)
    :param token_secret: the secret of widget tokens; empty: no token is accepted
    :param clock: an ``IReactorTime`` telling whether a token has expired
        (needed with ``token_secret``)
    :param tracker: the call tracker whose events reach the widgets (optional)
    :param calls: the :class:`~agi_app.calls.service.CallService` behind ``call()``
    :param control: call control behind ``transfer()`` (a
        :class:`~agi_app.live.control.CallControl`), or None
    :param info: :class:`~agi_app.events.generator.CallInfo` for record links
    :param dashboard: an async function giving the dashboard snapshot sent to
        supervisor connections (``agi_app.web.dashboard.Dashboard.snapshot``);
        None: supervisor tokens are refused
    """

    def __init__(
        self,
        *,
        client_ids: Iterable[str],
        token_secret: str = "",
        clock: Any = None,
        tracker: Any = None,
        calls: Any = None,
        control: Any = None,
        info: Any = None,
        default_trunk: str = "pstn",
        call_time_to_ext: int = 30,
        dashboard: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        dashboard_interval: float = DASHBOARD_INTERVAL,
    ):
        if token_secret and clock is None:
            raise ValueError("a clock is needed to check the expiry of tokens")
        self._client_ids = tuple(c.encode("utf-8") for c in client_ids if c)
        self._token_secret = token_secret
        self._clock = clock
        self._tracker = tracker
        self._calls = calls
        self._control = control
        self._info = info
        self._default_trunk = default_trunk
        self._call_time_to_ext = call_time_to_ext
        self._by_phone: dict[str, set[WidgetProtocol]] = {}
        self._connections: set[WidgetProtocol] = set()
        self._unsubscribe: Callable[[], object] | None = None
        self._dashboard = dashboard
        self._dashboard_interval = dashboard_interval
        self._supervisors: set[WidgetProtocol] = set()
        self._dashboard_soon: Any = None  # the delayed push after a change
        self._dashboard_tick: Any = None  # the periodic push
        self._dashboard_building = False
        self._dashboard_dirty = False
        #: dashboard snapshots sent (each to every supervisor connection)
        self.dashboards_sent = 0
        # The call as each live leg last saw it: at the hangup the other
        # party is often gone already.
        self._legs = LegMemory()
        #: messages sent to widgets since start
        self.sent = 0
        #: connections refused since start, by reason (``origin``,
        #: ``invalid client_id``, ``token expired``...)
        self.refusals: Counter[str] = Counter()

    # -- lifetime -----------------------------------------------------------

    def start(self) -> None:
        """Follow the tracker's call events."""
        if self._tracker is not None:
            self._unsubscribe = self._tracker.subscribe(self.on_call_event)

    def stop(self) -> None:
        """Stop following the tracker and close every connection (1001)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop_dashboard()
        for proto in list(self._connections):
            # 1001 "going away" is the code for this (RFC 6455 7.4.1), which
            # autobahn's sendClose() keeps for itself: write the frame directly.
            if proto.state == WebSocketServerProtocol.STATE_OPEN:
                proto.sendCloseFrame(1001, b"server shutting down")

    @property
    def connections(self) -> int:
        """Connected widgets (said hello or not)."""
        return len(self._connections)

    # -- connections --------------------------------------------------------

    def check_client_id(self, value: object) -> bool:
        """True for one of the static ``client_id`` values (constant time)."""
        given = value.encode("utf-8") if isinstance(value, str) else b""
        ok = False
        for candidate in self._client_ids:
            ok |= hmac.compare_digest(candidate, given)
        return ok and bool(given)

    def authenticate(self, client_id: object) -> str | None:
        """The extension a hello's ``client_id`` binds its connection to: a
        token's ``sip``, or None for a static client id (any extension).
        Raises :class:`Refused` with the close code and reason."""
        if self._token_secret and tokens.looks_like_token(client_id):
            assert isinstance(client_id, str)
            try:
                return tokens.verify(self._token_secret, client_id, self._clock.seconds())
            except tokens.TokenExpired as e:
                raise Refused(CLOSE_TOKEN_EXPIRED, e.reason) from None
            except tokens.TokenError as e:
                raise Refused(CLOSE_BAD_CLIENT_ID, e.reason) from None
        if self.check_client_id(client_id):
            return None
        raise Refused(CLOSE_BAD_CLIENT_ID, "invalid client_id")

    def authenticate_supervisor(self, client_id: str) -> None:
        """Accept a supervisor token, or raise :class:`Refused` (an
        invalid, forged or expired one; any while there is no dashboard or
        no token secret)."""
        if not self._token_secret or self._dashboard is None:
            raise Refused(CLOSE_BAD_CLIENT_ID, "invalid client_id")
        try:
            tokens.verify_supervisor(self._token_secret, client_id, self._clock.seconds())
        except tokens.TokenExpired as e:
            raise Refused(CLOSE_TOKEN_EXPIRED, e.reason) from None
        except tokens.TokenError as e:
            raise Refused(CLOSE_BAD_CLIENT_ID, e.reason) from None

    def refused(self, reason: str) -> None:
        """Count a refused connection."""
        self.refusals[reason] += 1

    def add(self, proto: WidgetProtocol) -> None:
        """A connection opened."""
        self._connections.add(proto)

    def remove(self, proto: WidgetProtocol) -> None:
        """A connection closed."""
        self._connections.discard(proto)
        self._unlink(proto)
        self._supervisors.discard(proto)
        if not self._supervisors:
            self._stop_dashboard()

    def set_phone(self, proto: WidgetProtocol, phone: str | None) -> None:
        """Route the events of ``phone`` (an extension) to ``proto``."""
        self._unlink(proto)
        proto.user_phone = phone
        if phone:
            self._by_phone.setdefault(phone, set()).add(proto)

    def _unlink(self, proto: WidgetProtocol) -> None:
        phone = proto.user_phone
        if phone and phone in self._by_phone:
            self._by_phone[phone].discard(proto)
            if not self._by_phone[phone]:
                del self._by_phone[phone]

    def widgets_of(self, phone: str) -> int:
        """How many widgets follow ``phone``."""
        return len(self._by_phone.get(phone, ()))

    # -- the dashboard ------------------------------------------------------

    @property
    def supervisors(self) -> int:
        """Connected supervisor connections (the live dashboard)."""
        return len(self._supervisors)

    def add_supervisor(self, proto: WidgetProtocol) -> None:
        """A supervisor connection said hello: it gets a snapshot at once,
        then one after every change and every ``dashboard_interval``."""
        self._supervisors.add(proto)
        if self._dashboard_tick is None or not self._dashboard_tick.active():
            self._dashboard_tick = self._clock.callLater(self._dashboard_interval, self._tick)
        self._push_dashboard()

    def dashboard_changed(self, *_ignored: object) -> None:
        """Something the dashboard shows changed (a call event, a status, an
        operator's state): send a snapshot :data:`DASHBOARD_DELAY` seconds
        from now, together with whatever else changes until then.  Costs
        nothing while no supervisor is connected."""
        if not self._supervisors:
            return
        if self._dashboard_soon is not None and self._dashboard_soon.active():
            return
        self._dashboard_soon = self._clock.callLater(DASHBOARD_DELAY, self._push_dashboard)

    def _tick(self) -> None:
        if not self._supervisors:
            return
        self._dashboard_tick = self._clock.callLater(self._dashboard_interval, self._tick)
        self._push_dashboard()

    def _stop_dashboard(self) -> None:
        for call in (self._dashboard_soon, self._dashboard_tick):
            if call is not None and call.active():
                call.cancel()
        self._dashboard_soon = self._dashboard_tick = None

    def _push_dashboard(self) -> None:
        if self._dashboard is None or not self._supervisors:
            return
        if self._dashboard_building:
            # a snapshot is being made: another one follows it
            self._dashboard_dirty = True
            return
        self._dashboard_building = True
        d = defer.ensureDeferred(self._dashboard())
        d.addCallback(self._send_dashboard)
        d.addErrback(lambda f: log.failure("dashboard snapshot", f))
        d.addBoth(self._dashboard_built)

    def _dashboard_built(self, _: object) -> None:
        self._dashboard_building = False
        if self._dashboard_dirty:
            self._dashboard_dirty = False
            self.dashboard_changed()

    def _send_dashboard(self, snapshot: dict[str, Any]) -> None:
        """Send one snapshot to every supervisor (encoded once)."""
        payload = json.dumps({"type": "dashboard", "dashboard": snapshot},
                             separators=(",", ":")).encode()  # fmt: skip
        for proto in list(self._supervisors):
            if proto.state == WebSocketServerProtocol.STATE_OPEN:
                proto.sendMessage(payload, isBinary=False)
        self.dashboards_sent += 1

    # -- events -------------------------------------------------------------

    def send_event(self, phone: str, event: dict[str, Any]) -> int:
        """Send a widget event to every widget following ``phone``; returns
        how many got it.  The JSON is encoded once for all of them."""
        targets = self._by_phone.get(phone)
        if not targets:
            return 0
        payload = json.dumps({"type": "event", "event": event}, separators=(",", ":")).encode()
        sent = 0
        for proto in list(targets):
            # A widget that is closing cannot take it (autobahn would raise).
            if proto.state == WebSocketServerProtocol.STATE_OPEN:
                proto.sendMessage(payload, isBinary=False)
                sent += 1
        self.sent += sent
        return sent

    def on_call_event(self, event: Any) -> None:
        """The tracker's callback: the widget event of the leg's extension."""
        self.dashboard_changed()
        phone = event.extension
        if not phone:
            return
        if event.kind == "hungup":
            before = self._legs.forget(event.uniqueid)
            if before is not None:
                event = replace(event, call={**event.call, **before})
        else:
            self._legs.remember(
                event.uniqueid,
                {k: event.call.get(k) for k in ("caller_id_number", "called_number")},
            )
        if phone not in self._by_phone:
            return
        if event.call_id and self._info is not None:
            # A call agi_app placed: its store entry says who calls whom.
            d = defer.ensureDeferred(self._agi_app_call(event))
            d.addErrback(lambda f: log.failure("widget event of {phone}", f, phone=phone))
            return
        found = widget_event(event, answered_elsewhere=self._answered_elsewhere(event))
        if found is not None:
            self.send_event(phone, found)

    def _answered_elsewhere(self, event: Any) -> bool:
        if event.kind != "ringing" or self._tracker is None:
            return False
        call = self._tracker.call(event.call_api_id)
        if call is None:
            return False
        return any(
            leg.talking is not None for leg in call.legs.values() if leg.uniqueid != event.uniqueid
        )

    async def _agi_app_call(self, event: Any) -> None:
        elsewhere = self._answered_elsewhere(event)
        info = await self._info.get(event.call_id, refresh=event.kind == "hungup")
        if info.get("operator") == event.extension:
            # The user's own click-to-call ringing their phone first: no
            # incoming call popup, and an outgoing call in the history.
            if event.kind == "ringing":
                return
            call = {**event.call, "caller_id_number": event.extension}
            if info.get("phone"):
                call["called_number"] = info["phone"]
            event = replace(event, direction="out", call=call)
        found = widget_event(event, answered_elsewhere=elsewhere, record_url=info.get("record_url"),
                             name=info.get("name"), crm_url=info.get("crm_url"))  # fmt: skip
        if found is not None:
            self.send_event(event.extension, found)

    # -- requests -----------------------------------------------------------

    async def place_call(self, user_phone: str | None, number: object) -> str:
        """``pz.call(phone)``: an operator-first call from the user's phone to
        ``number``; returns the call id."""

        if not user_phone:
            raise WidgetError("no_user_phone", "setUserPhone() first")
        if self._calls is None:
            raise WidgetError("calls_unavailable", "calls cannot be placed on this server")
        phone = v.phone(number, "phone")
        request = CallRequest(
            kind="extToPhone",
            first=user_phone,
            phone=phone,
            trunk=self._default_trunk,
            call_time_to_ext=self._call_time_to_ext,
        )
        call_id, _created = await self._calls.place(request)
        return call_id

    async def transfer(self, user_phone: str | None, call_id: object, number: object) -> None:
        """``pz.transfer(call_id, phone)``: a blind transfer of one of the
        user's calls to ``number`` (an extension or an outside number)."""
        if not user_phone:
            raise WidgetError("no_user_phone", "setUserPhone() first")
        call = v.identifier(call_id, "call_id")
        if self._control is None:
            raise WidgetError(
                "transfer_unavailable", "call transfer is not available on this server"
            )
        if not self.takes_part(user_phone, call):
            raise NotFound(f"extension {user_phone} has no current call {call}",
                           code="unknown_call", field="call_id")  # fmt: skip
        await self._control.act(user_phone, call, "transfer", number)

    def takes_part(self, phone: str, call_api_id: str) -> bool:
        """Whether ``phone``'s device is a party of the live call
        ``call_api_id`` (one listening in on it is not).  True when the hub
        follows no tracker: call control checks the call's legs then."""
        if self._tracker is None:
            return True
        call = self._tracker.call(call_api_id)
        if call is None:
            return False
        return any(leg.extension == phone and leg.party for leg in call.legs.values())


class WidgetProtocol(WebSocketServerProtocol):
    """One widget connection (see the module docstring for the protocol)."""

    factory: WidgetFactory

    def __init__(self) -> None:
        super().__init__()
        self.user_phone: str | None = None
        #: the extension a token binds this connection to (None: a static client_id)
        self.bound_phone: str | None = None
        #: a supervisor token opened this connection: every extension, read only
        self.supervisor = False
        self.client_type: str | None = None
        self.authenticated = False
        self._hello_timer: Any = None

    # -- autobahn callbacks -------------------------------------------------

    def onConnect(self, request: Any) -> None:
        origin = request.origin
        if not self.factory.origins.allows(origin):
            self.factory.hub.refused("origin")
            log.info("widget {peer}: refused, origin {origin!r} not allowed",
                     peer=self.peer, origin=origin)  # fmt: skip
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        return None

    def onOpen(self) -> None:
        self.factory.hub.add(self)
        self._hello_timer = self.factory.clock.callLater(self.factory.hello_timeout, self._no_hello)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self.factory.hub.remove(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return  # refused or closing: nothing more is answered
        if isBinary:
            self._error("binary_message", "messages must be JSON text")
            return
        if len(payload) > MAX_MESSAGE:
            self._error("message_too_large", f"messages are limited to {MAX_MESSAGE} bytes")
            return
        try:
            message = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self._error("invalid_json", "the message is not valid JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._error("invalid_message", 'a message is a JSON object with a "type"')
            return
        kind = message["type"]
        request_id = message.get("id")
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            request_id = None
        if not self.authenticated:
            self._hello(message)
            return
        if self.supervisor and kind in self._acting:
            self._error("read_only", _READ_ONLY, request_id)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._error("unknown_type", f"unknown message type {kind[:40]!r}", request_id)
            return
        handler(self, message, request_id)

    # -- messages -----------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        """Send one JSON message (dropped once the connection is closing)."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(json.dumps(message, separators=(",", ":")).encode(), isBinary=False)

    def _error(self, code: str, message: str, request_id: Any = None) -> None:
        answer: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request_id is not None:
            answer["id"] = request_id
        self.send_json(answer)

    def _refuse(self, code: int, reason: str, counted_as: str | None = None) -> None:
        self.factory.hub.refused(counted_as or reason)
        log.info("widget {peer}: refused, {reason}", peer=self.peer, reason=reason)
        self.sendClose(code, reason)

    def _no_hello(self) -> None:
        if not self.authenticated and self.state == WebSocketServerProtocol.STATE_OPEN:
            self._refuse(CLOSE_NO_HELLO, "hello expected")

    def _other_extension(self) -> None:
        reason = f"this client_id is for extension {self.bound_phone} only"
        self._refuse(CLOSE_OTHER_EXTENSION, reason, counted_as="other extension")

    def _hello(self, message: dict[str, Any]) -> None:
        if message["type"] != "hello":
            self._refuse(CLOSE_NO_HELLO, "hello expected")
            return
        if tokens.looks_like_supervisor_token(message.get("client_id")):
            self._supervisor_hello(message)
            return
        try:
            bound = self.factory.hub.authenticate(message.get("client_id"))
        except Refused as e:
            self._refuse(e.code, e.reason)
            return
        phone = message.get("user_phone")
        if bound is not None and phone not in (None, "", bound):
            self.bound_phone = bound
            self._other_extension()
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self.authenticated = True
        self.bound_phone = bound
        client_type = message.get("client_type")
        self.client_type = client_type[:64] if isinstance(client_type, str) else None
        error = None
        if bound is not None:
            # A token names its extension: that is the user's phone.
            self.factory.hub.set_phone(self, bound)
        elif phone not in (None, ""):
            try:
                self.factory.hub.set_phone(self, v.extension(phone, "phone"))
            except v.InvalidInput as e:
                error = e
        self.send_json(
            {
                "type": "welcome",
                "protocol": PROTOCOL_VERSION,
                "server": f"agi_app/{__version__}",
                "user_phone": self.user_phone,
            }
        )
        if error is not None:
            self._error(error.code, error.message)

    def _supervisor_hello(self, message: dict[str, Any]) -> None:
        try:
            self.factory.hub.authenticate_supervisor(message["client_id"])
        except Refused as e:
            self._refuse(e.code, e.reason)
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self.authenticated = True
        self.supervisor = True
        client_type = message.get("client_type")
        self.client_type = client_type[:64] if isinstance(client_type, str) else None
        self.send_json(
            {
                "type": "welcome",
                "protocol": PROTOCOL_VERSION,
                "server": f"agi_app/{__version__}",
                "user_phone": None,
                "scope": "supervisor",
            }
        )
        self.factory.hub.add_supervisor(self)

    def _dashboard(self, message: dict[str, Any], request_id: Any) -> None:
        if not self.supervisor:
            self._error("not_supervisor", "the dashboard needs a supervisor token", request_id)
            return
        self.factory.hub.dashboard_changed()
        self._result(request_id, {})

    def _set_phone(self, message: dict[str, Any], request_id: Any) -> None:
        phone = message.get("phone")
        if self.bound_phone is not None and phone not in (None, "", self.bound_phone):
            self._other_extension()
            return
        try:
            clean = None if phone in (None, "") else v.extension(phone, "phone")
        except v.InvalidInput as e:
            self._error(e.code, e.message, request_id)
            return
        self.factory.hub.set_phone(self, clean)
        self._result(request_id, {"user_phone": clean})

    def _ping(self, message: dict[str, Any], request_id: Any) -> None:
        answer: dict[str, Any] = {"type": "pong"}
        if request_id is not None:
            answer["id"] = request_id
        self.send_json(answer)

    def _call(self, message: dict[str, Any], request_id: Any) -> None:
        d = defer.ensureDeferred(self.factory.hub.place_call(self.user_phone, message.get("phone")))
        d.addCallback(lambda call_id: self._result(request_id, {"call_id": call_id}))
        d.addErrback(self._failed, request_id)

    def _transfer(self, message: dict[str, Any], request_id: Any) -> None:
        d = defer.ensureDeferred(
            self.factory.hub.transfer(self.user_phone, message.get("call_id"), message.get("phone"))
        )
        d.addCallback(lambda _: self._result(request_id, {}))
        d.addErrback(self._failed, request_id)

    def _result(self, request_id: Any, body: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"type": "result", "ok": True, **body}
        if request_id is not None:
            answer["id"] = request_id
        self.send_json(answer)

    def _failed(self, failure: Any, request_id: Any) -> None:
        if failure.check(AppError):
            code, message = failure.value.code, failure.value.message
        else:
            log.failure("widget request failed", failure)
            code, message = "internal", "internal error"
        self._error(code, message, request_id)

    _handlers: dict[str, Callable[[WidgetProtocol, dict[str, Any], Any], None]] = {
        "set_phone": _set_phone,
        "ping": _ping,
        "call": _call,
        "transfer": _transfer,
        "dashboard": _dashboard,
    }
    #: what a supervisor connection may not ask
    _acting = frozenset(("set_phone", "call", "transfer"))


class WidgetFactory(WebSocketServerFactory):
    """The autobahn factory of :class:`WidgetProtocol` over a :class:`WidgetHub`.

    :param origins: the pages allowed to connect (default: any; the
        application passes :meth:`OriginPolicy.from_config`)
    """

    protocol = WidgetProtocol

    def __init__(
        self,
        hub: WidgetHub,
        *,
        reactor: Any,
        origins: OriginPolicy | None = None,
        ping_interval: float = 20.0,
        hello_timeout: float = HELLO_TIMEOUT,
    ):
        super().__init__(reactor=reactor)
        self.hub = hub
        self.clock = reactor
        self.origins = origins if origins is not None else OriginPolicy(("*",))
        self.hello_timeout = hello_timeout
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME,
            maxMessagePayloadSize=MAX_FRAME,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_interval / 2,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            # Say why (1007, 1009...) in a close frame rather than just drop.
            failByDrop=False,
        )
