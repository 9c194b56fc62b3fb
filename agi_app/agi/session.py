"""What an AGI script sees: :class:`AGISession`, one per FastAGI connection.

Every command method returns a Deferred (``await`` it in an ``async def``
script).  Errors -- including arguments refused before anything is written --
arrive through that Deferred as :mod:`agi_app.agi.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail

from agi_app.agi.errors import (
    AGIAppError,
    AGIArgumentError,
    AGICommandFailed,
    AGIHangup,
)
from agi_app.agi.wire import AGIReply, build_command, build_exec, normalize_verb

if TYPE_CHECKING:
    from agi_app.agi.protocol import FastAGIProtocol

__all__ = ["AGISession", "DEFAULT_TIMEOUT"]


class _DefaultTimeout:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT_TIMEOUT"


#: "use the server's ``[agi] command_timeout``"; pass ``timeout=None`` for no
#: timeout at all (``EXEC Dial`` runs for the whole conversation)
DEFAULT_TIMEOUT = _DefaultTimeout()

Timeout = float | None | _DefaultTimeout
#: ``convert(reply, arg)``: what a command's Deferred fires with
Convert = Callable[[AGIReply, Any], Any]


class AGISession:
    """The handle a script gets: the channel's AGI environment and its commands.

    Attributes:
        env: every ``agi_*`` line Asterisk sent (``agi_channel``,
            ``agi_uniqueid``, ``agi_callerid``...), except ``agi_arg_N``.
        args: ``agi_arg_1..N`` in order, from ``AGI(agi://host/script,a,b)``.
        script: the script name from ``agi_network_script`` (before any ``?``).
        params: the ``?query`` of the script URL, ``parse_qs`` style
            (name -> list of values).

    Only one command may be in flight: ``await`` each before the next
    (:class:`~agi_app.agi.errors.AGICommandInFlight` otherwise).  After the
    channel hangs up only the commands Asterisk runs on a dead channel are sent
    (EXEC, GET [FULL] VARIABLE, SET VARIABLE, DATABASE *, NOOP, VERBOSE...);
    others fail at once with :class:`~agi_app.agi.errors.AGIHangup`.
    """

    __slots__ = ("_proto", "env", "args", "script", "params")

    def __init__(
        self,
        proto: FastAGIProtocol,
        env: dict[str, str],
        args: list[str],
        script: str,
        params: dict[str, list[str]],
    ):
        self._proto = proto
        self.env = env
        self.args = args
        self.script = script
        self.params = params

    # -- environment -------------------------------------------------------

    @property
    def channel(self) -> str:
        """``agi_channel``, e.g. ``PJSIP/101-00000001``."""
        return self.env.get("agi_channel", "")

    @property
    def uniqueid(self) -> str:
        """``agi_uniqueid`` of the channel."""
        return self.env.get("agi_uniqueid", "")

    @property
    def language(self) -> str:
        """``agi_language`` of the channel (``en`` when absent)."""
        return self.env.get("agi_language") or "en"

    @property
    def session_id(self) -> str:
        """The id this session's log lines carry."""
        return self._proto.session_id

    def param(self, name: str, default: str | None = None) -> str | None:
        """First value of the script URL's query parameter ``name``."""
        values = self.params.get(name)
        return values[0] if values else default

    # -- hangup ------------------------------------------------------------

    @property
    def hungup(self) -> bool:
        """True once Asterisk sent ``HANGUP`` (or the connection is gone)."""
        return self._proto.hungup

    def wait_hangup(self) -> Deferred[None]:
        """Fires (with ``None``) when the channel hangs up or the connection closes."""
        return self._proto.wait_hangup()

    # -- commands ----------------------------------------------------------

    def command(self, name: str, *args: str | int, timeout: Timeout = DEFAULT_TIMEOUT
                ) -> Deferred[AGIReply]:
        """Send any AGI command, e.g. ``command("STREAM FILE", "agi_app/please-wait", "")``.

        Every argument is quoted and escaped for Asterisk's tokenizer.  Fires
        with the :class:`AGIReply` of a ``200`` reply; a 510/511/520 reply, a
        timeout or a lost connection fail it with the matching error.
        """
        try:
            verb = normalize_verb(name)
        except AGIArgumentError as e:
            return fail(e)
        return self._send(verb, args, timeout)

    def _send(self, verb: str, args: tuple[object, ...], timeout: Timeout,
              convert: Convert | None = None, arg: object = None) -> Deferred[Any]:
        # the convenience methods come here directly with a constant verb
        try:
            line = build_command(verb, args)
        except AGIArgumentError as e:
            return fail(e)
        return self._proto.send_command(verb, line, timeout, convert, arg)

    def exec_(self, app: str, *args: str | int, strict: bool = False,
              timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[AGIReply]:
        """Run a dialplan application: ``EXEC app "arg1,arg2"``.

        Arguments are joined with ``,``; an argument containing ``,`` is
        refused, as is one that would leave ``(``, ``[`` or ``"`` open.  Pass
        ``strict=True`` whenever a value came from outside (a CRM, a caller):
        then ``, ( ) [ ] " ' \\ | & $`` are all refused.  Fires with the reply
        (``result`` is what the application returned: ``-1`` usually means the
        channel hung up); a missing application fails with :class:`AGIAppError`.
        ``EXEC Dial`` lasts the whole call: give it ``timeout=None`` or a
        timeout longer than the call may last.
        """
        try:
            line = build_exec(app, args, strict)
        except AGIArgumentError as e:
            return fail(e)
        return self._proto.send_command("EXEC", line, timeout, _exec_result, app)

    def get_variable(self, name: str, timeout: Timeout = DEFAULT_TIMEOUT
                     ) -> Deferred[str | None]:
        """A channel variable or function (``CALLERID(num)``); ``None`` if unset."""
        return self._send("GET VARIABLE", (name,), timeout, _variable)

    def get_full_variable(self, expression: str, channel: str | None = None,
                          timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[str | None]:
        """Evaluate ``expression`` (``${EXTEN}-${CALLERID(num)}``), optionally on
        another channel; ``None`` if that channel does not exist."""
        args = (expression,) if channel is None else (expression, channel)
        return self._send("GET FULL VARIABLE", args, timeout, _variable)

    def set_variable(self, name: str, value: str | int, timeout: Timeout = DEFAULT_TIMEOUT
                     ) -> Deferred[None]:
        """Set a channel variable (or writable function)."""
        return self._send("SET VARIABLE", (name, value), timeout, _none)

    def answer(self, timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Answer the channel (no-op when it is already up)."""
        return self._send("ANSWER", (), timeout, _check_ok, self._proto)

    def hangup(self, channel: str | None = None, timeout: Timeout = DEFAULT_TIMEOUT
               ) -> Deferred[None]:
        """Hang up this channel, or ``channel`` by name
        (:class:`AGICommandFailed` if no such channel)."""
        args = () if channel is None else (channel,)
        return self._send("HANGUP", args, timeout, _check_ok, self._proto)

    def stream_file(self, name: str, escape_digits: str = "", offset: int | None = None,
                    timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[str]:
        """Play a sound file; fires with the escape digit pressed, or ``""``.
        A missing file (or a hangup while playing) fails with
        :class:`AGICommandFailed` (:class:`AGIHangup` if the hangup came first)."""
        args = (name, escape_digits) if offset is None else (name, escape_digits, offset)
        return self._send("STREAM FILE", args, timeout, _digit_or_empty, self._proto)

    def get_data(self, file: str, timeout_ms: int | None = None, max_digits: int | None = None,
                 timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[str | None]:
        """Play ``file`` and read digits until ``#``, ``max_digits`` or the
        digit timeout (``timeout_ms``; ``None``/0 = Asterisk's 6 s / 2 s).
        Fires with the digits (``""`` if ``#`` came first), or ``None`` when the
        caller entered nothing before the timeout.  ``timeout`` is the command
        timeout in seconds, which must cover the prompt plus the digit timeouts.
        """
        args: tuple[object, ...] = (file,)
        if timeout_ms is not None or max_digits is not None:
            args += (timeout_ms or 0,)
        if max_digits is not None:
            args += (max_digits,)
        return self._send("GET DATA", args, timeout, _get_data_result, self._proto)

    def wait_for_digit(self, timeout_ms: int = -1, timeout: Timeout = DEFAULT_TIMEOUT
                       ) -> Deferred[str | None]:
        """Wait for one DTMF digit (``timeout_ms=-1``: for ever); ``None`` on timeout.
        The command ``timeout`` (seconds) must outlast ``timeout_ms``: pass
        ``timeout=None`` when waiting for ever."""
        return self._send("WAIT FOR DIGIT", (timeout_ms,), timeout, _digit_or_none, self._proto)

    def verbose(self, message: str, level: int = 1, timeout: Timeout = DEFAULT_TIMEOUT
                ) -> Deferred[None]:
        """Write ``message`` to the Asterisk console at verbosity ``level``."""
        return self._send("VERBOSE", (message, level), timeout, _none)

    def noop(self, timeout: Timeout = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Do nothing (a round trip: checks the session is alive)."""
        return self._send("NOOP", (), timeout, _none)

    def close(self) -> None:
        """Close the connection now; Asterisk continues in the dialplan
        (``AGI_APP_RESULT`` is not set)."""
        self._proto.close()

    def __repr__(self) -> str:
        return f"<AGISession {self.script!r} {self.session_id}>"


# Reply converters, run by the protocol before it fires the command's
# Deferred (``convert(reply, arg)``; raising fails the Deferred): cheaper than
# an extra callback on a path run thousands of times a second.

def _none(_reply: AGIReply, _arg: object) -> None:
    return None


def _variable(reply: AGIReply, _arg: object) -> str | None:
    return reply.data if reply.result == "1" else None


def _failed(reply: AGIReply, proto: FastAGIProtocol) -> Exception:
    if proto.hungup:
        return AGIHangup(f"channel hung up: {reply.line!r}", reply.line)
    return AGICommandFailed(f"command failed: {reply.line!r}", reply.line, reply)


def _check_ok(reply: AGIReply, proto: FastAGIProtocol) -> None:
    if reply.result == "-1":
        raise _failed(reply, proto)
    return None


def _digit_or_none(reply: AGIReply, proto: FastAGIProtocol) -> str | None:
    code = reply.result_int
    if code < 0:
        raise _failed(reply, proto)
    return chr(code) if code else None


def _digit_or_empty(reply: AGIReply, proto: FastAGIProtocol) -> str:
    return _digit_or_none(reply, proto) or ""


def _get_data_result(reply: AGIReply, proto: FastAGIProtocol) -> str | None:
    digits = reply.result
    if digits == "-1":
        raise _failed(reply, proto)
    if not digits and reply.data == "timeout":
        return None
    return digits


def _exec_result(reply: AGIReply, app: str) -> AGIReply:
    if reply.result == "-2":
        raise AGIAppError(f"dialplan application {app!r} not found", reply.line)
    return reply

