"""Widget tokens (CONTRACT section 8): a ``client_id`` that binds a widget
to one extension for a while.

A token is ``v1.<sip>.<expires>.<signature>``: ``sip`` the extension,
``expires`` a unix time (seconds), ``signature`` the hex HMAC-SHA256 of
``v1.<sip>.<expires>`` under ``[websocket] token_secret``.  The CRM's
server mints it with the shared secret (any language's HMAC does), or asks
``POST /api/widgetToken`` or ``agi-app widget-token``; the page passes it as
the widget's ``client_id``.  Nothing is stored: the signature is the proof.

A token is valid until ``expires`` (exclusive).  Its signature is compared
in constant time, and only a token whose signature holds is told apart as
expired, so the answers say nothing about the secret.

A **supervisor token** (the live dashboard, ``/static/dashboard.html``) is
``sv1.<expires>.<signature>``, the signature taken over ``sv1.<expires>``
under the same secret.  It names no extension: the connection sees every
extension's calls and acts as none (it can neither place nor transfer
calls).  Its own prefix keeps the two kinds apart: no widget token's signed
text (``v1.…``) is ever a supervisor token's (``sv1.…``), so neither can be
turned into the other.  It is minted by ``POST /api/supervisorToken`` (API
key) and may live up to :data:`SUPERVISOR_MAX_TTL` (a wall screen).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from agi_app import validation as v

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "MIN_TTL",
    "PREFIX",
    "SUPERVISOR_MAX_TTL",
    "SUPERVISOR_PREFIX",
    "InvalidToken",
    "TokenError",
    "TokenExpired",
    "issue",
    "issue_supervisor",
    "looks_like_supervisor_token",
    "looks_like_token",
    "mint",
    "mint_supervisor",
    "verify",
    "verify_supervisor",
]

#: the version word every token starts with
PREFIX = "v1"
#: seconds a token lives when nobody says otherwise
DEFAULT_TTL = 3600
#: the shortest lifetime one can ask for (seconds)
MIN_TTL = 60
#: the longest lifetime one can ask for (seconds): a work day and then some
MAX_TTL = 86400
#: the version word of supervisor tokens
SUPERVISOR_PREFIX = "sv1"
#: the longest lifetime of a supervisor token (seconds): a week of a wall
#: screen that sees calls but cannot act on them
SUPERVISOR_MAX_TTL = 7 * 86400

# sip: the extension rule of validation.extension (no dot, so the parts
# split unambiguously); expires: up to 12 digits (well past year 9999).
_TOKEN = re.compile(r"(v1\.([A-Za-z0-9_-]{1,32})\.([0-9]{1,12}))\.([0-9a-fA-F]{64})", re.ASCII)
_SUPERVISOR = re.compile(r"(sv1\.([0-9]{1,12}))\.([0-9a-fA-F]{64})", re.ASCII)


class TokenError(ValueError):
    """A ``client_id`` that is not a valid token; ``reason`` is what the
    widget is told (the WebSocket close reason)."""

    reason = "invalid token"

    def __init__(self, reason: str | None = None):
        super().__init__(reason or self.reason)
        if reason is not None:
            self.reason = reason


class InvalidToken(TokenError):
    """Malformed, or signed with another secret (forged)."""


class TokenExpired(TokenError):
    """Signed with the secret, but its ``expires`` has passed."""

    reason = "token expired"


def _key(secret: str) -> bytes:
    if not secret:
        raise ValueError("an empty token secret signs nothing")
    return secret.encode("utf-8")


def _signature(secret: str, message: str) -> str:
    return hmac.new(_key(secret), message.encode("ascii"), hashlib.sha256).hexdigest()


def looks_like_token(value: object) -> bool:
    """Whether ``value`` is meant as a token (starts with ``v1.``), valid or not."""
    return isinstance(value, str) and value.startswith(PREFIX + ".")


def mint(secret: str, sip: str, expires: int) -> str:
    """The token of extension ``sip`` valid until the unix time ``expires``.
    ``sip`` is checked as an extension (:class:`~agi_app.validation.InvalidInput`)."""
    sip = v.extension(sip, "sip")
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires < 10**12:
        raise v.InvalidInput("expires", "expires must be a unix time in seconds")
    message = f"{PREFIX}.{sip}.{expires}"
    return f"{message}.{_signature(secret, message)}"


def _expiry(ttl: object, now: float, longest: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise v.InvalidInput("ttl", "ttl must be a whole number of seconds")
    if not MIN_TTL <= ttl <= longest:
        raise v.InvalidInput("ttl", f"ttl must be between {MIN_TTL} and {longest} seconds")
    return int(now) + ttl


def issue(secret: str, sip: object, ttl: object, now: float) -> tuple[str, int]:
    """``(token, expires)`` for extension ``sip``, valid ``ttl`` seconds from
    ``now``; ``ttl`` is a whole number within :data:`MIN_TTL`..:data:`MAX_TTL`
    (:class:`~agi_app.validation.InvalidInput` naming ``sip`` or ``ttl``)."""
    clean = v.extension(sip, "sip")
    expires = _expiry(ttl, now, MAX_TTL)
    return mint(secret, clean, expires), expires


def verify(secret: str, token: str, now: float) -> str:
    """The extension ``token`` binds to, or :class:`InvalidToken` /
    :class:`TokenExpired`."""
    found = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if found is None:
        raise InvalidToken("invalid token")
    message, sip, expires, given = found.groups()
    expected = _signature(secret, message)
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("ascii")):
        raise InvalidToken("invalid token")
    if int(expires) <= now:
        raise TokenExpired()
    return sip


# -- supervisor tokens ---------------------------------------------------------


def looks_like_supervisor_token(value: object) -> bool:
    """Whether ``value`` is meant as a supervisor token (starts with ``sv1.``)."""
    return isinstance(value, str) and value.startswith(SUPERVISOR_PREFIX + ".")


def mint_supervisor(secret: str, expires: int) -> str:
    """The supervisor token valid until the unix time ``expires``."""
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires < 10**12:
        raise v.InvalidInput("expires", "expires must be a unix time in seconds")
    message = f"{SUPERVISOR_PREFIX}.{expires}"
    return f"{message}.{_signature(secret, message)}"


def issue_supervisor(secret: str, ttl: object, now: float) -> tuple[str, int]:
    """``(token, expires)`` of a supervisor token valid ``ttl`` seconds from
    ``now`` (:data:`MIN_TTL`..:data:`SUPERVISOR_MAX_TTL`, else
    :class:`~agi_app.validation.InvalidInput` naming ``ttl``)."""
    expires = _expiry(ttl, now, SUPERVISOR_MAX_TTL)
    return mint_supervisor(secret, expires), expires


def verify_supervisor(secret: str, token: str, now: float) -> int:
    """The ``expires`` of a valid supervisor token, or :class:`InvalidToken`
    / :class:`TokenExpired` (a widget token is an :class:`InvalidToken`)."""
    found = _SUPERVISOR.fullmatch(token) if isinstance(token, str) else None
    if found is None:
        raise InvalidToken("invalid token")
    message, expires, given = found.groups()
    expected = _signature(secret, message)
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("ascii")):
        raise InvalidToken("invalid token")
    if int(expires) <= now:
        raise TokenExpired()
    return int(expires)
