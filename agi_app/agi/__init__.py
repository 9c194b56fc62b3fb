"""The FastAGI server: Asterisk's ``AGI(agi://...)`` calls land here.

* :mod:`~agi_app.agi.protocol` -- :class:`FastAGIFactory` /
  :class:`FastAGIProtocol` (the wire, one command in flight, ``HANGUP`` as an
  event, timeouts, ``AGI_APP_RESULT``), and :func:`listen`;
* :mod:`~agi_app.agi.session` -- :class:`AGISession`, what a script uses;
* :mod:`~agi_app.agi.registry` -- :class:`ScriptRegistry`, script name -> handler;
* :mod:`~agi_app.agi.wire` -- command quoting and reply parsing;
* :mod:`~agi_app.agi.errors` -- the exceptions;
* the scripts themselves live with their services: ``operator_call`` in
  :mod:`agi_app.calls.service`, ``announcement`` and ``ivr_call`` in
  :mod:`agi_app.calls.outbound`, ``ivr_incoming`` in :mod:`agi_app.ivr.service`.

A script::

    registry = ScriptRegistry()

    @registry.script("hello")
    async def hello(agi: AGISession) -> None:
        await agi.answer()
        await agi.stream_file("agi_app/please-wait")
        await agi.set_variable("GREETED", "yes")
"""

from agi_app.agi.errors import (
    AGIAppError,
    AGIArgumentError,
    AGICommandFailed,
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
from agi_app.agi.protocol import (
    OUTCOMES,
    RESULT_VARIABLE,
    FastAGIFactory,
    FastAGIProtocol,
    listen,
)
from agi_app.agi.registry import Handler, ScriptRegistry
from agi_app.agi.session import DEFAULT_TIMEOUT, AGISession
from agi_app.agi.wire import AGIReply

__all__ = [
    "AGIAppError",
    "AGIArgumentError",
    "AGICommandFailed",
    "AGICommandInFlight",
    "AGIConnectionLost",
    "AGIDeadChannel",
    "AGIError",
    "AGIHangup",
    "AGIInvalidCommand",
    "AGIProtocolError",
    "AGIReply",
    "AGISession",
    "AGITimeout",
    "AGIUsageError",
    "DEFAULT_TIMEOUT",
    "FastAGIFactory",
    "FastAGIProtocol",
    "Handler",
    "OUTCOMES",
    "RESULT_VARIABLE",
    "ScriptRegistry",
    "listen",
]
