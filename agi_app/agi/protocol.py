"""The FastAGI server: one :class:`FastAGIProtocol` per connection from Asterisk.

Asterisk's ``AGI(agi://host:4573/<script>?a=1,arg1,arg2)`` connects, sends the
``agi_*`` environment and a blank line, then reads one reply per command line
we write.  The protocol

* reads the environment (``agi_arg_N`` into a list, the script URL's ``?query``
  through :func:`urllib.parse.parse_qs`), looks the script up in a
  :class:`~agi_app.agi.registry.ScriptRegistry` and runs its handler with an
  :class:`~agi_app.agi.session.AGISession`;
* keeps exactly one command in flight and matches each reply to it
  (``100 Trying`` skipped, ``510``/``511``/``520`` and the multi-line ``520-``
  block turned into errors), with a timeout per command from the ``clock``.
  A second command sent while one is pending fails at once with
  ``AGICommandInFlight`` rather than being queued: FastAGI is strictly one
  command at a time, so that is always a script that forgot an ``await``;
* treats ``HANGUP`` as an event, whenever it arrives -- never as a reply;
* reports how the handler ended through the channel variable
  ``AGI_APP_RESULT`` and closes the socket.

Handlers
--------
A handler is ``async def handler(agi: AGISession) -> None``: coroutines read
like the call flow they drive, and each ``await agi.command(...)`` is a
Deferred underneath (the coroutine is run with ``Deferred.fromCoroutine``, so
no asyncio loop is involved).  A plain function returning a Deferred (or
``None``) is accepted too.

How a session ends, as seen from the dialplan
---------------------------------------------
When the handler returns, ``SET VARIABLE AGI_APP_RESULT <outcome>`` is sent
and the connection is closed; Asterisk then continues the dialplan with
``AGISTATUS=SUCCESS``.  The outcome is

* ``OK`` -- the handler returned;
* ``ERROR`` -- it raised (logged with its traceback), or the script URL's
  query was malformed;
* ``NOTFOUND`` -- no handler is registered under the script name;
* ``HANGUP`` -- it stopped because the channel hung up (an ``AGIHangup``).

``AGI_APP_RESULT`` is left unset when the connection was lost or closed on a
timeout.  ``AGISTATUS`` is ``FAILURE`` when this server could not be reached,
so the dialplan must check both::

    same => n,AGI(${AGI_APP_URL}/operator-answered,${CALL_ID})
    same => n,GotoIf($["${AGISTATUS}" != "SUCCESS" | "${AGI_APP_RESULT}" != "OK"]?fallback)

Who may connect
---------------
The factory's ``allowed_peers`` (``[agi] allowed_peers``, loopback by
default) are the networks Asterisk connects from.  A connection from
anywhere else is closed at once, before a byte is read or written, and
logged once per peer address and minute: a script must never run on the
word of whoever reaches the port.

Closing
-------
If Asterisk disconnects while a command is pending, that command fails with
:class:`~agi_app.agi.errors.AGIConnectionLost` (an ``AGIHangup``) and the
handler unwinds; nothing is left scheduled on the clock once the connection
is gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import CoroutineType
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app.agi.errors import (
    AGICommandInFlight,
    AGIConnectionLost,
    AGIDeadChannel,
    AGIError,
    AGIHangup,
    AGIInvalidCommand,
    AGIProtocolError,
    AGITimeout,
    AGIUsageError,
)
from agi_app.agi.registry import ScriptRegistry
from agi_app.agi.session import DEFAULT_TIMEOUT, AGISession, Convert, Timeout
from agi_app.agi.wire import DEAD_CHANNEL_COMMANDS, AGIReply, build_command, parse_success
from agi_app.config import AGIConfig
from agi_app.netguard import NetworkSet

__all__ = ["FastAGIProtocol", "FastAGIFactory", "RESULT_VARIABLE", "OUTCOMES", "listen"]

#: the channel variable that tells the dialplan how the script ended
RESULT_VARIABLE = "AGI_APP_RESULT"
OUTCOMES = ("OK", "ERROR", "NOTFOUND", "HANGUP")
_REPORT = {o: build_command("SET VARIABLE", (RESULT_VARIABLE, o)) for o in OUTCOMES}

_ENV, _RUNNING, _DONE = 0, 1, 2
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FastAGIProtocol(Protocol):
    """One FastAGI connection from Asterisk.

    Lines end in ``\\n`` (a ``\\r`` before it is dropped).  A line longer than
    :attr:`MAX_LENGTH` closes the connection, as does an environment of more
    than :attr:`MAX_ENV_LINES` lines or one not complete within the command
    timeout.
    """

    #: longest line (and longest environment block) accepted from Asterisk
    MAX_LENGTH = 64 * 1024
    #: Asterisk sends ~25 lines plus one per AGI() argument (at most 127)
    MAX_ENV_LINES = 512

    log = Logger()

    def __init__(
        self,
        registry: ScriptRegistry,
        clock: IReactorTime,
        command_timeout: float | None = 30.0,
        factory: FastAGIFactory | None = None,
    ):
        self._registry = registry
        self._clock = clock
        self._timeout = command_timeout
        self._factory = factory
        self._buffer = b""
        self._state = _ENV
        self._env: dict[str, str] = {}
        self._argmap: dict[int, str] | None = None
        self._pending: Deferred[AGIReply] | _ReportWaiter | None = None
        self._pending_verb = ""
        self._convert: Convert | None = None
        self._convert_arg: object = None
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        self._timer_at = 0.0  # when self._timer fires
        self._usage: list[str] | None = None
        self._usage_size = 0
        self._hangup_waiters: list[Deferred[None]] | None = None
        self._closed = False
        self._lost = False
        self._counted = False  # in the factory's ``active``
        #: True once Asterisk sent ``HANGUP`` or the connection is gone
        self.hungup = False
        #: the id in this session's log lines (agi_uniqueid, else the channel)
        self.session_id = "-"
        #: how the handler ended (one of :data:`OUTCOMES`), once known
        self.outcome: str | None = None
        #: the script name from ``agi_network_script``, once the environment is in
        self.script = ""

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self._factory
        if factory is not None:
            if not factory.admits(self.transport.getPeer()):
                self._closed = True
                self._state = _DONE
                self.transport.abortConnection()
                return
            factory.active += 1
            self._counted = True
        self._arm(self._timeout)

    def connectionLost(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        self._closed = True
        self._state = _DONE
        self.hungup = True
        self._cancel_timer()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.errback(
                AGIConnectionLost(f"connection closed while {self._pending_verb} was pending")
            )
        self._fire_hangup()
        if self._counted:
            self._counted = False
            self._factory.active -= 1  # type: ignore[union-attr]

    def close(self) -> None:
        """Close the connection (idempotent); later commands fail at once."""
        if self._closed:
            return
        self._closed = True
        if self._pending is None:
            self._cancel_timer()
        if self.transport is not None:
            self.transport.loseConnection()

    # -- timeouts ----------------------------------------------------------
    #
    # One DelayedCall per connection, not one per command: a command sets a
    # deadline, a reply clears it, and the timer -- when it fires -- either
    # acts on a passed deadline, re-arms for a later one, or does nothing.
    # This keeps callLater/cancel (a heap operation each) off the per-command
    # path.

    def _arm(self, timeout: float | None) -> None:
        if timeout is None:
            self._deadline = None
            return
        deadline = self._clock.seconds() + timeout
        self._deadline = deadline
        if self._timer is None:
            self._timer = self._clock.callLater(timeout, self._on_timer)
            self._timer_at = deadline
        elif self._timer_at > deadline:
            self._timer.reset(timeout)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        self._deadline = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self._clock.seconds()
        if now < deadline:
            self._timer = self._clock.callLater(deadline - now, self._on_timer)
            self._timer_at = deadline
            return
        self._deadline = None
        if self._state == _ENV:
            self.log.warn("FastAGI: no complete environment within {t} s; closing",
                          t=self._timeout)
            self.close()
        elif self._pending is not None:
            self._command_timed_out()

    # -- bytes to lines ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._buffer:
            searched = len(self._buffer)
            data = self._buffer + data
            self._buffer = b""
        else:
            searched = 0
        if self._state == _ENV:
            data = self._env_data(data, searched)
            if not data or self._closed:
                return
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > self.MAX_LENGTH:
            self._buffer = b""
            self._protocol_error(f"line longer than {self.MAX_LENGTH} bytes")
            return
        for raw in lines:
            if self._closed:
                return
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            if len(raw) > self.MAX_LENGTH:
                self._protocol_error(f"line longer than {self.MAX_LENGTH} bytes")
                return
            # lines are split as bytes first, so a UTF-8 character cut between
            # two packets is whole again by the time it is decoded
            self._reply_line(raw.decode("utf-8", "replace"))

    # -- the environment ---------------------------------------------------

    def _env_data(self, data: bytes, searched: int) -> bytes:
        """Buffer ``data`` until the blank line ending the environment, parse
        the block in one go and start the script; returns what follows it."""
        if data[:1] == b"\n":
            block, rest = b"", data[1:]
        elif data[:2] == b"\r\n":
            block, rest = b"", data[2:]
        else:
            # only the new bytes (and the two before them) need searching
            start = max(0, searched - 2)
            end = data.find(b"\n\n", start)
            crlf = data.find(b"\n\r\n", start)
            if crlf >= 0 and (end < 0 or crlf < end):
                block, rest = data[:crlf], data[crlf + 3:]
            elif end >= 0:
                block, rest = data[:end], data[end + 2:]
            else:
                if len(data) > self.MAX_LENGTH:
                    self._protocol_error(f"environment longer than {self.MAX_LENGTH} bytes")
                elif data.count(b"\n") > self.MAX_ENV_LINES:
                    self._protocol_error(f"more than {self.MAX_ENV_LINES} environment lines")
                else:
                    self._buffer = data
                return b""
        if len(block) > self.MAX_LENGTH:
            self._protocol_error(f"environment longer than {self.MAX_LENGTH} bytes")
            return b""
        text = block.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text[-1:] == "\r":  # the last line's CR, before the blank line
                text = text[:-1]
        lines = text.split("\n") if text else []
        if len(lines) > self.MAX_ENV_LINES:
            self._protocol_error(f"more than {self.MAX_ENV_LINES} environment lines")
            return b""
        self._parse_env(lines)
        self._start()
        return rest

    def _parse_env(self, lines: list[str]) -> None:
        # Fast path for what Asterisk sends: every line "agi_<name>: <value>",
        # split in C by dict(); anything else goes line by line.
        try:
            env = dict([line.split(": ", 1) for line in lines])
        except ValueError:
            env = None
        if env is not None and len(env) == len(lines):
            args = None
            for key in env:
                if key[:4] != "agi_" or " " in key:
                    break
                if key[:8] == "agi_arg_":
                    if args is None:
                        args = []
                    args.append(key)
            else:
                if args:
                    for key in args:
                        value = env.pop(key)
                        self._odd_env_line(f"{key}: {value}", key, ": ", value)
                self._env = env
                return
        env = self._env
        for line in lines:
            if line[-1:] == "\r":
                line = line[:-1]
            key, sep, value = line.partition(": ")
            if sep and key[:4] == "agi_" and key[:8] != "agi_arg_" and " " not in key:
                env[key] = value
            else:
                self._odd_env_line(line, key, sep, value)

    def _odd_env_line(self, line: str, key: str, sep: str, value: str) -> None:
        if not sep and line.endswith(":"):
            key, sep, value = line[:-1], ":", ""
        if not sep or not key.startswith("agi_") or " " in key:
            self.log.warn("FastAGI: ignoring garbled environment line {line!r}", line=line)
        elif key.startswith("agi_arg_"):
            number = key[8:]
            if number.isdigit() and 0 < int(number) <= self.MAX_ENV_LINES:
                if self._argmap is None:
                    self._argmap = {}
                self._argmap[int(number)] = value
            else:
                self.log.warn("FastAGI: ignoring garbled environment line {line!r}", line=line)
        else:
            self._env[key] = value

    def _start(self) -> None:
        self._deadline = None
        self._state = _RUNNING
        env = self._env
        self.session_id = env.get("agi_uniqueid") or env.get("agi_channel") or "-"
        argmap = self._argmap
        if argmap:
            args = [argmap.get(i, "") for i in range(1, max(argmap) + 1)]
        else:
            args = []
        script, _, query = env.get("agi_network_script", "").partition("?")
        params: dict[str, list[str]] = {}
        bad = None
        if _CONTROL.search(script):
            bad = "control character in the script name"
        elif query:
            try:
                params = parse_qs(query, keep_blank_values=True, errors="strict")
            except (ValueError, UnicodeDecodeError) as e:
                bad = f"undecodable query: {e}"
            else:
                for name, values in params.items():
                    if _CONTROL.search(name) or any(_CONTROL.search(v) for v in values):
                        bad = f"control character in query parameter {name!r}"
                        break
        self.script = script
        # the protocol keeps no reference to the session: with the session
        # pointing here, a reference back would be a cycle, and every session
        # would wait for the garbage collector instead of being freed at once
        session = AGISession(self, env, args, script, params)
        if self._factory is not None:
            self._factory.total += 1
        if bad is not None:
            self.log.error(
                "[{sid}] FastAGI: refused script URL {url!r} from {channel}: {why}",
                sid=self.session_id, url=env.get("agi_network_script", ""),
                channel=env.get("agi_channel", "?"), why=bad,
            )
            self._finish("ERROR")
            return
        handler = self._registry.get(script)
        if handler is None:
            self.log.warn(
                "[{sid}] FastAGI: no script {script!r} (channel {channel}); "
                "AGI_APP_RESULT=NOTFOUND",
                sid=self.session_id, script=script, channel=env.get("agi_channel", "?"),
            )
            self._finish("NOTFOUND")
            return
        try:
            result = handler(session)
        except Exception:
            d: Deferred[object] = fail()
        else:
            if type(result) is CoroutineType:
                d = Deferred.fromCoroutine(result)
            elif isinstance(result, Deferred):
                d = result
            else:
                d = succeed(result)
        d.addCallbacks(self._handler_done, self._handler_failed)

    def _handler_done(self, _result: object) -> None:
        self._finish("OK")

    def _handler_failed(self, failure: Failure) -> None:
        if failure.check(AGIHangup):
            self.log.debug(
                "[{sid}] FastAGI: script {script!r} ended by hangup: {error}",
                sid=self.session_id, script=self.script,
                error=failure.value,
            )
            self._finish("HANGUP")
            return
        self.log.failure(
            "[{sid}] FastAGI: script {script!r} failed; AGI_APP_RESULT=ERROR",
            failure, sid=self.session_id, script=self.script,
        )
        self._finish("ERROR")

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        if self._factory is not None:
            self._factory.outcomes[outcome] += 1
        # no log line for a session that went well: a Twisted log event costs
        # several microseconds even when its level is filtered out, which is a
        # few percent of a whole session; factory.outcomes counts them instead
        if self._closed:
            return
        if self._pending is not None:
            self.log.warn(
                "[{sid}] FastAGI: script returned while {verb} was still pending; closing",
                sid=self.session_id, verb=self._pending_verb,
            )
            self.close()
            return
        # sent like any command, but awaited by a _ReportWaiter rather than a
        # Deferred: one Deferred and its callback run fewer for every session
        self._pending = _ReportWaiter(self)
        self._pending_verb = "SET VARIABLE"
        self._convert = None
        self._arm(self._timeout)
        self.transport.write(_REPORT[outcome])

    # -- commands and replies ---------------------------------------------

    def send_command(self, verb: str, line: bytes, timeout: Timeout = DEFAULT_TIMEOUT,
                     convert: Convert | None = None, arg: object = None) -> Deferred[Any]:
        """Write one encoded command line (built by :mod:`agi_app.agi.wire`)
        and return the Deferred of its reply.  ``verb`` is the normalized
        command name, used for the dead-channel rule and in messages.

        The Deferred fires with the :class:`AGIReply`, or with
        ``convert(reply, arg)`` when ``convert`` is given (an exception it
        raises fails the Deferred instead)."""
        if self._closed:
            return fail(AGIConnectionLost(f"{verb}: the FastAGI connection is closed"))
        if self._pending is not None:
            return fail(AGICommandInFlight(
                f"{verb} sent while {self._pending_verb} is still awaiting its reply"
            ))
        if self.hungup and verb not in DEAD_CHANNEL_COMMANDS:
            return fail(AGIHangup(f"{verb}: the channel has hung up"))
        if timeout is DEFAULT_TIMEOUT:
            timeout = self._timeout
        d: Deferred[Any] = Deferred()
        self._pending = d
        self._pending_verb = verb
        self._convert = convert
        self._convert_arg = arg
        self._arm(timeout)
        self.transport.write(line)
        return d

    def _reply_line(self, line: str) -> None:
        if line == "HANGUP":
            self._on_hangup()
            return
        if self._pending is None:
            if line:
                self.log.warn(
                    "[{sid}] FastAGI: ignoring line with no command pending: {line!r}",
                    sid=self.session_id, line=line,
                )
            return
        if self._usage is not None:
            if line.startswith("520 "):
                usage = "\n".join(self._usage)
                self._usage = None
                self._reject(AGIUsageError(
                    f"{self._pending_verb}: invalid command syntax", line, usage
                ))
                return
            self._usage_size += len(line)
            if self._usage_size > self.MAX_LENGTH:
                self._protocol_error("520 usage block too long")
                return
            self._usage.append(line)
            return
        if line[:4] == "200 ":
            try:
                reply = parse_success(line)
            except AGIProtocolError as e:
                self._protocol_error(str(e))
                return
            self._resolve(reply)
            return
        head = line[:4]
        if head == "100 ":
            return  # "100 result=0 Trying..." (GOSUB): the real reply follows
        if head == "510 ":
            self._reject(AGIInvalidCommand(f"{self._pending_verb}: invalid or unknown command",
                                           line))
        elif head == "511 ":
            self._reject(AGIDeadChannel(
                f"{self._pending_verb}: not permitted on a dead channel", line
            ))
        elif head == "520 ":
            self._reject(AGIUsageError(f"{self._pending_verb}: invalid command syntax", line))
        elif head == "520-":
            self._usage = []
            self._usage_size = 0
        elif len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
            self._reject(AGIError(f"{self._pending_verb}: unexpected reply {line!r}", line))
        else:
            self._protocol_error(f"not a FastAGI reply: {line!r}")

    def _take_pending(self) -> Deferred[AGIReply] | _ReportWaiter:
        d = self._pending
        self._pending = None
        self._deadline = None
        assert d is not None
        return d

    def _resolve(self, reply: AGIReply) -> None:
        # the pending slot is cleared before the callback runs, because the
        # script resumes inside it and usually sends its next command at once
        d = self._take_pending()
        convert = self._convert
        if convert is None:
            d.callback(reply)
            return
        self._convert = None
        try:
            value = convert(reply, self._convert_arg)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(value)

    def _reject(self, error: AGIError) -> None:
        self._take_pending().errback(error)

    def _command_timed_out(self) -> None:
        d, self._pending = self._pending, None
        verb = self._pending_verb
        self.log.warn("[{sid}] FastAGI: no reply to {verb}; closing", sid=self.session_id,
                      verb=verb)
        # closed first: a late reply would be taken for the next command's
        self.close()
        if d is not None:
            d.errback(AGITimeout(f"{verb}: no reply in time"))

    def _protocol_error(self, why: str) -> None:
        self.log.error("[{sid}] FastAGI: {why}; closing", sid=self.session_id, why=why)
        self.close()
        if self._pending is not None:
            self._take_pending().errback(AGIProtocolError(why))

    # -- hangup ------------------------------------------------------------

    def _on_hangup(self) -> None:
        if self.hungup:
            return  # Asterisk repeats HANGUP when its command loop ends
        self.hungup = True
        self._fire_hangup()

    def _fire_hangup(self) -> None:
        waiters, self._hangup_waiters = self._hangup_waiters, None
        if waiters:
            for d in waiters:
                d.callback(None)

    def wait_hangup(self) -> Deferred[None]:
        """A Deferred that fires when the channel hangs up (or the connection goes)."""
        if self.hungup:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._hangup_waiters is None:
            self._hangup_waiters = []
        self._hangup_waiters.append(d)
        return d


class _ReportWaiter:
    """Stands in for the Deferred of the final ``SET VARIABLE AGI_APP_RESULT``:
    whatever its reply, the connection is closed next."""

    __slots__ = ("_proto",)

    def __init__(self, proto: FastAGIProtocol):
        self._proto = proto

    def callback(self, _reply: AGIReply) -> None:
        self._proto.close()

    def errback(self, error: BaseException) -> None:
        proto = self._proto
        if not isinstance(error, AGIHangup):
            proto.log.warn("[{sid}] FastAGI: could not set AGI_APP_RESULT: {error}",
                           sid=proto.session_id, error=error)
        proto.close()


class FastAGIFactory(Factory):
    """Builds a :class:`FastAGIProtocol` per connection from Asterisk.

    ``clock`` is the reactor (or a ``task.Clock`` in tests);
    ``command_timeout`` is ``[agi] command_timeout``, the default for every
    command of every session (``None``: no timeout).  ``allowed_peers``
    (``[agi] allowed_peers``) are the networks connections may come from;
    others are closed at once (``None``: from anywhere).  ``active``,
    ``total``, ``refused`` and ``outcomes`` count connections and how
    sessions ended, for health reports.
    """

    noisy = False
    log = Logger()
    #: a refused peer is logged at most once per this many seconds
    REFUSAL_LOG_INTERVAL = 60.0
    #: peers remembered for that; past it, refusals are only counted
    MAX_REFUSAL_PEERS = 4096

    def __init__(
        self,
        registry: ScriptRegistry,
        clock: IReactorTime,
        command_timeout: float | None = 30.0,
        allowed_peers: Iterable[str] | None = None,
    ):
        self.registry = registry
        self.clock = clock
        self.command_timeout = command_timeout
        self.allowed_peers = None if allowed_peers is None else NetworkSet(allowed_peers)
        #: connections open now
        self.active = 0
        #: sessions started (environment received) since the factory was made
        self.total = 0
        #: connections closed at once because of their peer address
        self.refused = 0
        #: sessions per outcome
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self._refusals_logged: dict[str, float] = {}

    def buildProtocol(self, addr: IAddress) -> FastAGIProtocol:
        return FastAGIProtocol(self.registry, self.clock, self.command_timeout, self)

    def admits(self, peer: IAddress | None) -> bool:
        """Whether a connection from ``peer`` may speak FastAGI; counts and
        logs (once per peer and minute) the ones that may not."""
        if self.allowed_peers is None or isinstance(peer, UNIXAddress):
            return True  # no list; a UNIX socket is this host
        host = getattr(peer, "host", None)
        if host is not None and host in self.allowed_peers:
            return True
        self.refused += 1
        self._log_refusal(str(host))
        return False

    def _log_refusal(self, host: str) -> None:
        now = self.clock.seconds()
        logged = self._refusals_logged
        last = logged.get(host)
        if last is not None and now - last < self.REFUSAL_LOG_INTERVAL:
            return
        if last is None and len(logged) >= self.MAX_REFUSAL_PEERS:
            for peer in [p for p, t in logged.items() if now - t >= self.REFUSAL_LOG_INTERVAL]:
                del logged[peer]
            if len(logged) >= self.MAX_REFUSAL_PEERS:
                return  # a flood from many addresses: counted, not logged
        logged[host] = now
        self.log.warn(
            "FastAGI connection from {peer} refused: not in [agi] allowed_peers "
            "({refused} refused so far)",
            peer=host,
            refused=self.refused,
        )


def listen(reactor: Any, config: AGIConfig, registry: ScriptRegistry) -> Deferred[IListeningPort]:
    """Start the FastAGI listener of ``[agi]`` (``listen``, ``command_timeout``,
    ``allowed_peers``) on ``reactor``; fires with the listening port."""
    factory = FastAGIFactory(
        registry, reactor, config.command_timeout, allowed_peers=config.allowed_peers
    )
    return serverFromString(reactor, config.listen).listen(factory)
