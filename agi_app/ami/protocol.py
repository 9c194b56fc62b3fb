"""The AMI connection protocol: bytes in, messages out; actions in, Deferreds out.

One :class:`AMIProtocol` is one TCP connection to Asterisk.  It knows nothing
of logging in again, state or subscribers (that is
:class:`agi_app.ami.service.AMIService`); it matches every reply to its action
by ``ActionID`` and hands every other event to ``on_event``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app.ami.errors import (
    AMIActionError,
    AMIAuthenticationError,
    AMIDisconnected,
    AMIProtocolError,
    AMITimeout,
)
from agi_app.ami.message import AMIEventList, AMIMessage, AMIParser, HeaderValue, encode_action

__all__ = ["AMIProtocol", "Headers", "normalize_headers"]

#: Headers of an action: a mapping or a sequence of ``(name, value)`` pairs
#: (the latter allows a header to repeat, e.g. ``Variable``).
Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]

_SINGLE, _LIST, _EVENT = "single", "list", "event"


def normalize_headers(headers: Headers | None, extra: Mapping[str, HeaderValue]) -> list:
    """``headers`` (mapping or pairs) followed by ``extra``, as a list of pairs."""
    pairs: list[tuple[str, HeaderValue]] = []
    if headers is not None:
        pairs.extend(headers.items() if isinstance(headers, Mapping) else headers)
    pairs.extend(extra.items())
    return pairs


@dataclass
class _Pending:
    action_id: str
    name: str
    deferred: Deferred
    mode: str
    final_event: str | None
    error_class: type[AMIActionError]
    timer: IDelayedCall | None = None
    response: AMIMessage | None = None
    items: list[AMIMessage] = field(default_factory=list)
    early_event: AMIMessage | None = None


class AMIProtocol(Protocol):
    """One AMI connection.

    :param clock: times the greeting and every action (``callLater``).
    :param action_timeout: default seconds an action may wait for its reply.
    :param name: the PBX link's name, for logs.

    :param events: the event names to deliver (see :class:`AMIParser`;
        None: every event); :meth:`want` adds more.

    Set ``on_event`` to receive every event that is not an item of a list
    action collected with ``send_action(..., collect=True)``; set ``on_lost``
    to hear of the end of the connection (called before pending actions fail).
    """

    log = Logger(namespace="agi_app.ami.protocol")

    def __init__(
        self,
        *,
        clock: IReactorTime,
        action_timeout: float = 10.0,
        name: str = "default",
        events: Collection[str] | None = None,
    ):
        self.clock = clock
        self.action_timeout = action_timeout
        self.name = name
        self.on_event: Callable[[AMIMessage], object] | None = None
        self.on_lost: Callable[[Failure], object] | None = None
        #: the greeting line, e.g. ``Asterisk Call Manager/11.0.0``
        self.greeting: str | None = None
        self.closed = False
        self._parser = AMIParser(expect_greeting=True, events=events)
        self._pending: dict[str, _Pending] = {}
        # ActionIDs must be unique across every AMI session of the PBX: Asterisk
        # sends OriginateResponse (with our ActionID) to every session that may
        # read call events, including other instances of this application.
        self._id_prefix = os.urandom(5).hex()
        self._ids = itertools.count(1)
        self._greeting_waiters: list[Deferred] = []
        self._greeting_timer: IDelayedCall | None = None

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self._greeting_timer = self.clock.callLater(self.action_timeout, self._greeting_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.closed:
            return
        self.closed = True
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:
                self.log.failure("AMI {ami}: error in connection-lost handler", ami=self.name)
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        self.fail_pending(AMIDisconnected(f"AMI connection lost: {why}"))
        waiters, self._greeting_waiters = self._greeting_waiters, []
        for d in waiters:
            d.errback(AMIDisconnected(f"AMI connection lost before the greeting: {why}"))

    def want(self, name: str) -> None:
        """Deliver events called ``name`` too (when not every event is)."""
        self._parser.want(name)

    @property
    def skipped_events(self) -> int:
        """Events skipped unread because of their name."""
        return self._parser.skipped

    def when_greeted(self) -> Deferred:
        """A Deferred firing with the greeting line once it has arrived."""
        if self.greeting is not None:
            d: Deferred = Deferred()
            d.callback(self.greeting)
            return d
        if self.closed:
            return fail(AMIDisconnected("AMI connection closed"))
        d = Deferred()
        self._greeting_waiters.append(d)
        return d

    def _greeting_timeout(self) -> None:
        self.log.warn(
            "AMI {ami}: no greeting within {timeout}s; closing", ami=self.name,
            timeout=self.action_timeout,
        )
        waiters, self._greeting_waiters = self._greeting_waiters, []
        for d in waiters:
            d.errback(AMITimeout("no AMI greeting"))
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    # -- incoming ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self._parser.feed(data)
        except AMIProtocolError as e:
            self.log.error("AMI {ami}: {error}; closing", ami=self.name, error=str(e))
            self._abort()
            return
        for item in items:
            if self.closed:
                return
            if isinstance(item, str):
                self._got_greeting(item)
            else:
                self._got_message(item)

    def _got_greeting(self, line: str) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        waiters, self._greeting_waiters = self._greeting_waiters, []
        if "Call Manager" not in line:
            self.log.error(
                "AMI {ami}: the peer is not an Asterisk manager (greeting {line!r}); closing",
                ami=self.name, line=line[:80],
            )
            for d in waiters:
                d.errback(AMIProtocolError(f"not an AMI greeting: {line[:80]!r}"))
            self.transport.loseConnection()
            return
        self.greeting = line
        for d in waiters:
            d.callback(line)

    def _got_message(self, msg: AMIMessage) -> None:
        action_id = msg.get("ActionID")
        if msg.is_event:
            pending = self._pending.get(action_id) if action_id else None
            if pending is not None and self._take_event(pending, msg):
                return
            if self.on_event is not None:
                try:
                    self.on_event(msg)
                except Exception:
                    self.log.failure("AMI {ami}: error handling event", ami=self.name)
        elif msg.is_response:
            pending = self._pending.get(action_id) if action_id else None
            if pending is None:
                self.log.warn(
                    "AMI {ami}: response for unknown ActionID {action_id!r} dropped "
                    "(late reply to a timed-out action?)", ami=self.name, action_id=action_id,
                )
                return
            self._take_response(pending, msg)
        else:
            self.log.warn("AMI {ami}: message that is neither event nor response dropped: "
                          "{msg!r}", ami=self.name, msg=msg)

    def _take_response(self, p: _Pending, msg: AMIMessage) -> None:
        if (msg.get("Response") or "").lower() == "error":
            text = msg.get("Message") or "error"
            self._finish(p, Failure(p.error_class(text, msg)))
            return
        p.response = msg
        if p.mode == _SINGLE:
            self._finish(p, msg)
        elif p.mode == _LIST:
            if (msg.get("EventList") or "").lower() != "start":
                # Some actions answer a plain Success when there is nothing to list.
                self._finish(p, AMIEventList((), msg, None))
        elif p.mode == _EVENT and p.early_event is not None:
            self._finish(p, p.early_event)

    def _take_event(self, p: _Pending, msg: AMIMessage) -> bool:
        """Give an event carrying our ActionID to its action; True if consumed."""
        if p.mode == _LIST:
            flag = (msg.get("EventList") or "").lower()
            if flag == "complete":
                self._finish(p, AMIEventList(p.items, p.response, msg))
            elif flag == "cancelled":
                self._finish(p, Failure(AMIActionError(f"{p.name}: list cancelled", msg)))
            else:
                p.items.append(msg)
            return True
        if p.mode == _EVENT and (msg.event or "").lower() == p.final_event:
            if p.response is not None:
                self._finish(p, msg)
            else:
                p.early_event = msg
        # The final event of an action is still an event for everyone else.
        return False

    # -- outgoing ----------------------------------------------------------

    def send_action(
        self,
        name: str,
        headers: Headers | None = None,
        *,
        timeout: float | None = None,
        collect: bool = False,
        final_event: str | None = None,
        error_class: type[AMIActionError] = AMIActionError,
    ) -> Deferred:
        """Send an action; return a Deferred for its outcome.

        * plain: fires with the response :class:`AMIMessage`;
        * ``collect=True``: fires with an :class:`AMIEventList` of the events
          between ``EventList: start`` and the ``EventList: Complete`` event;
        * ``final_event="OriginateResponse"``: after a successful response,
          fires with the first event of that name carrying our ActionID.

        Fails with :class:`AMIActionError` on ``Response: Error``,
        :class:`AMITimeout` after ``timeout`` seconds (default
        ``action_timeout``; a late reply is then dropped), and
        :class:`AMIDisconnected` if the connection is closed or ends first.
        Raises :class:`AMIInjectionError`/``ValueError`` at once, writing
        nothing, when a header could break the framing.
        """
        action_id = f"{self._id_prefix}-{next(self._ids)}"
        data = encode_action(name, action_id, normalize_headers(headers, {}))
        if self.closed or self.transport is None:
            return fail(AMIDisconnected(f"AMI connection closed; {name} not sent"))
        mode = _LIST if collect else (_EVENT if final_event else _SINGLE)
        d: Deferred = Deferred(lambda _d: self._forget(action_id))
        p = _Pending(
            action_id=action_id, name=name, deferred=d, mode=mode,
            final_event=final_event.lower() if final_event else None, error_class=error_class,
        )
        self._pending[action_id] = p
        wait = self.action_timeout if timeout is None else timeout
        p.timer = self.clock.callLater(wait, self._timed_out, action_id, wait)
        self.log.debug("AMI {ami}: -> {action} {action_id}", ami=self.name, action=name,
                       action_id=action_id)
        self.transport.write(data)
        return d

    def login(self, username: str, secret: str, *, events: bool | str = True) -> Deferred:
        """``Action: Login``; fails with :class:`AMIAuthenticationError` when refused.

        ``events``: True for every event the user may read, False for none,
        or a comma-separated list of event classes (``call,system``): only
        those are sent, within the user's read classes (manager.c
        ``set_eventmask``; no privilege needed)."""
        mask = events if isinstance(events, str) else ("on" if events else "off")
        return self.send_action(
            "Login",
            [("Username", username), ("Secret", secret), ("Events", mask)],
            error_class=AMIAuthenticationError,
        )

    @property
    def pending_count(self) -> int:
        """Actions still waiting for their reply."""
        return len(self._pending)

    def fail_pending(self, exc: Exception) -> None:
        """Fail every action still waiting (used when the connection ends)."""
        for p in list(self._pending.values()):
            self._finish(p, Failure(exc))

    def _timed_out(self, action_id: str, wait: float) -> None:
        p = self._pending.get(action_id)
        if p is None:
            return
        p.timer = None
        self.log.warn("AMI {ami}: no reply to {action} {action_id} within {wait}s",
                      ami=self.name, action=p.name, action_id=action_id, wait=wait)
        self._finish(p, Failure(AMITimeout(f"no reply to {p.name} within {wait}s")))

    def _forget(self, action_id: str) -> None:
        p = self._pending.pop(action_id, None)
        if p is not None and p.timer is not None and p.timer.active():
            p.timer.cancel()

    def _finish(self, p: _Pending, result: object) -> None:
        if self._pending.pop(p.action_id, None) is None:
            return
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        if isinstance(result, Failure):
            p.deferred.errback(result)
        else:
            p.deferred.callback(result)
