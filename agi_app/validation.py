"""Input rules of CONTRACT section 3, applied wherever a value from outside can
reach the PBX (an AMI action, an AGI command, a dial string).

Each checker returns the clean value or raises :class:`InvalidInput` naming the
field, so the web layer can answer 400 with ``{"error": {"code", "message",
"field"}}`` and nothing reaches Asterisk.
"""

from __future__ import annotations

import re

from agi_app.errors import InvalidInput

__all__ = [
    "InvalidInput",
    "phone",
    "extension",
    "identifier",
    "seconds",
    "flag",
    "display_text",
    "assert_wire_safe",
]

# re.ASCII: "\d" and friends must not accept Arabic-Indic or other Unicode digits.
_PHONE = re.compile(r"^\+?[0-9]{3,15}$", re.ASCII)
_EXTENSION = re.compile(r"^[A-Za-z0-9_-]{1,32}$", re.ASCII)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$", re.ASCII)
# Characters that must never travel into a dial string, AGI command or AMI action.
FORBIDDEN = frozenset('\r\n\x00,&|()/@"\'`\\;')


def _text(field: str, value: object) -> str:
    if value is None or value == "":
        raise InvalidInput(field, f"{field} is required", code=f"missing_{field}")
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(field, f"{field} must be a string")
        value = str(value)
    return value


def phone(value: object, field: str = "phone") -> str:
    """A phone number: ``^\\+?[0-9]{3,15}$``."""
    v = _text(field, value)
    if not _PHONE.fullmatch(v):
        raise InvalidInput(field, f"{field} must be 3 to 15 digits, optionally after '+'")
    return v


def extension(value: object, field: str = "sip") -> str:
    """An extension / PJSIP endpoint name: ``^[A-Za-z0-9_-]{1,32}$``."""
    v = _text(field, value)
    if not _EXTENSION.fullmatch(v):
        raise InvalidInput(field, f"{field} must be 1 to 32 of A-Z a-z 0-9 _ -")
    return v


def identifier(value: object, field: str) -> str:
    """An order_id / external_key / call id: ``^[A-Za-z0-9_.:-]{1,64}$``."""
    v = _text(field, value)
    if not _IDENTIFIER.fullmatch(v):
        raise InvalidInput(field, f"{field} must be 1 to 64 of A-Z a-z 0-9 _ . : -")
    return v


def seconds(value: object, field: str, minimum: int = 1, maximum: int = 86400) -> int:
    """A whole number of seconds within ``minimum..maximum``."""
    if isinstance(value, bool):
        raise InvalidInput(field, f"{field} must be a whole number of seconds")
    if isinstance(value, int):
        n = value
    else:
        v = _text(field, value).strip()
        if not re.fullmatch(r"[0-9]{1,9}", v, re.ASCII):
            raise InvalidInput(field, f"{field} must be a whole number of seconds")
        n = int(v)
    if not minimum <= n <= maximum:
        raise InvalidInput(field, f"{field} must be between {minimum} and {maximum}")
    return n


def flag(value: object, field: str) -> bool:
    """A boolean given as 0/1, true/false, yes/no (or a JSON bool)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    v = _text(field, value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(field, f"{field} must be 0 or 1 (or true/false)")


def display_text(value: object, field: str, max_len: int = 64) -> str:
    """Free text shown on a phone (a caller ID name): printable, no separators
    or quotes that could break an AMI header, CallerID or dial string."""
    v = _text(field, value)
    if len(v) > max_len:
        raise InvalidInput(field, f"{field} must be at most {max_len} characters")
    if any(c in FORBIDDEN or c in "<>" or not c.isprintable() for c in v):
        raise InvalidInput(field, f"{field} contains characters that are not allowed")
    return v


def assert_wire_safe(value: str, what: str = "value") -> str:
    """Last line of defence before bytes go to Asterisk: refuse CR, LF, NUL."""
    if any(c in value for c in "\r\n\x00"):
        raise InvalidInput(what, f"{what} contains a line break or NUL", code="unsafe_value")
    return value
