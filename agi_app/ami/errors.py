"""Exceptions of the AMI client."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agi_app.ami.message import AMIMessage

__all__ = [
    "AMIError",
    "AMIActionError",
    "AMIAuthenticationError",
    "AMIDisconnected",
    "AMITimeout",
    "AMIInjectionError",
    "AMIProtocolError",
]


class AMIError(Exception):
    """Base class of every AMI client failure."""


class AMIActionError(AMIError):
    """Asterisk answered an action with ``Response: Error``.

    ``message`` is Asterisk's ``Message:`` text, ``response`` the whole reply.
    """

    def __init__(self, message: str, response: AMIMessage | None = None):
        super().__init__(message)
        self.message = message
        self.response = response


class AMIAuthenticationError(AMIActionError):
    """The ``Login`` action was refused (wrong user or secret, ACL, session limit)."""


class AMIDisconnected(AMIError):
    """The AMI session is not logged in, or the connection ended before the reply.

    An action that fails this way may or may not have been carried out by
    Asterisk; it is never sent again automatically.
    """


class AMITimeout(AMIError):
    """No reply (or no final event) arrived in time."""


class AMIProtocolError(AMIError):
    """The peer broke the AMI framing (no greeting, a line too long, ...)."""


class AMIInjectionError(ValueError):
    """A header name or value could change the framing of an action (CR, LF, NUL,
    a colon in a name, a comma in a ``Variable`` value...).  Raised before a
    single byte of the action is written."""
