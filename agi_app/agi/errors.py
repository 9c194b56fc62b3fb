"""The FastAGI error hierarchy.

Every failure of an AGI command reaches the script as an :class:`AGIError`
subclass, so a script can catch exactly what it can handle (a hangup, a
missing dialplan application) and let everything else end the session with
``AGI_APP_RESULT=ERROR``.
"""

from __future__ import annotations

__all__ = [
    "AGIError",
    "AGIHangup",
    "AGIConnectionLost",
    "AGIUsageError",
    "AGIInvalidCommand",
    "AGIDeadChannel",
    "AGITimeout",
    "AGIAppError",
    "AGICommandFailed",
    "AGIProtocolError",
    "AGIArgumentError",
    "AGICommandInFlight",
]


class AGIError(Exception):
    """Base of every FastAGI failure.  ``line`` is the reply that caused it, if any."""

    def __init__(self, message: str, line: str | None = None):
        super().__init__(message)
        self.line = line


class AGIHangup(AGIError):
    """The channel has hung up and the command cannot run on a dead channel."""


class AGIConnectionLost(AGIHangup):
    """The FastAGI socket closed (Asterisk went away, or we closed it after a
    timeout) while a command was pending or before it could be sent."""


class AGIUsageError(AGIError):
    """``520``: Asterisk rejected the command's syntax.  ``usage`` holds the
    usage text of a multi-line ``520-`` block (empty for the one-line form)."""

    def __init__(self, message: str, line: str | None = None, usage: str = ""):
        super().__init__(message, line)
        self.usage = usage


class AGIInvalidCommand(AGIError):
    """``510``: Asterisk does not know the command (or its module is not loaded)."""


class AGIDeadChannel(AGIError):
    """``511``: the command is not permitted on a dead channel (or inside an
    intercept routine)."""


class AGITimeout(AGIError):
    """No reply within the command's timeout; the connection has been closed
    because a late reply would be taken for the answer to the next command."""


class AGIAppError(AGIError):
    """``EXEC`` returned ``result=-2``: the dialplan application does not exist."""


class AGICommandFailed(AGIError):
    """A command answered ``200 result=-1`` (a channel operation failed: a
    missing sound file, or usually a hangup in progress).  ``reply`` is the
    parsed :class:`~agi_app.agi.wire.AGIReply`."""

    def __init__(self, message: str, line: str | None = None, reply: object = None):
        super().__init__(message, line)
        self.reply = reply


class AGIProtocolError(AGIError):
    """A line from Asterisk that is not a FastAGI reply (or is too long); the
    session is out of step and the connection is closed."""


class AGIArgumentError(AGIError, ValueError):
    """A command or argument was refused before anything was written: CR, LF
    or NUL, a line over Asterisk's 8 KiB limit, or (EXEC) a character that
    would change how the application's arguments are split."""


class AGICommandInFlight(AGIError):
    """A second command was issued while the first was still awaiting its reply.

    FastAGI is strictly one command at a time; a script must ``await`` each
    command before sending the next.  This is a bug in the script, so it is an
    error rather than a silent queue."""
