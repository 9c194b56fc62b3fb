"""The one error hierarchy of agi_app.

Every part raises an :class:`AppError` (or a subclass) when a request from
outside cannot be carried out; the HTTP API and the widget's WebSocket render
any of them the same way: HTTP ``status`` with ``{"error": {"code",
"message", "field"?}, **extra}``, or a widget ``error`` message with the same
``code`` and ``message``.  Anything else that escapes a handler is a bug: a
500 ``internal`` without details, and a traceback in the service log.

The subclasses name the situations more than one layer meets:

* :class:`InvalidInput` (400): a value broke an input rule (CONTRACT
  section 3); :mod:`agi_app.validation` raises it;
* :class:`NotFound` (404), :class:`Conflict` (409);
* :class:`PBXUnavailable` (503): the AMI link is down.  A call that was
  created before that was found carries its ``call_id`` (its history shows
  CALL then ERROR).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AppError", "Conflict", "InvalidInput", "NotFound", "PBXUnavailable"]


class AppError(Exception):
    """A request that cannot be carried out, with its answer.

    :param message: for people (an English sentence)
    :param code: for programs (``invalid_phone``, ``unknown_call``...);
        default: the class's ``code``
    :param field: the parameter at fault, when one is
    :param status: the HTTP status; default: the class's ``status``
    :param extra: keys beside ``"error"`` in the answer (e.g. ``call_id``)
    :param headers: HTTP headers of the answer (e.g. ``Allow``)
    """

    status: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        status: int | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The answer body: ``{"error": {"code", "message", "field"?}, **extra}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error, **self.extra}


class InvalidInput(AppError, ValueError):
    """A value from outside broke an input rule: 400 naming the field.

    ``code`` defaults to ``invalid_<field>``.
    """

    status = 400

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(message, code=code or f"invalid_{field}", field=field)


class NotFound(AppError, LookupError):
    """No such object (404)."""

    status = 404
    code = "not_found"


class Conflict(AppError):
    """The request contradicts the state of things (409)."""

    status = 409
    code = "conflict"


class PBXUnavailable(AppError):
    """The AMI link is down: nothing was sent to the PBX (503).

    ``call_id`` is the call that was created and closed with ERROR before
    that was found, if any.
    """

    status = 503
    code = "pbx_unavailable"

    def __init__(self, call_id: str | None = None, message: str = "the PBX is unreachable"):
        super().__init__(message, extra={"call_id": call_id} if call_id else None)
        self.call_id = call_id
