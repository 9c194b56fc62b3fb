"""Input rules of CONTRACT section 3, applied wherever a value from outside can
reach the PBX (an AMI action, an AGI command, a dial string).

Each kind of value has one :class:`Rule`: a regular expression that both the
checker here and the OpenAPI document (the parameter schema's ``pattern``)
use, so what the document promises is what the code accepts.  The patterns
are written in the common part of Python's and ECMA-262's syntax (what JSON
Schema uses): explicit character classes, ``\\xHH``/``\\uHHHH`` escapes, no
``\\d``/``\\s``/``\\w`` (they differ between the two).

Each checker returns the clean value or raises :class:`InvalidInput` naming the
field, so the web layer can answer 400 with ``{"error": {"code", "message",
"field"}}`` and nothing reaches Asterisk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from agi_app.errors import InvalidInput

__all__ = [
    "DISPLAY_TEXT",
    "EXTENSION",
    "FLAG",
    "FORBIDDEN",
    "IDENTIFIER",
    "PBX_NAME",
    "PHONE",
    "PROMPT_NAME",
    "SECONDS",
    "WHITESPACE",
    "WHOLE_NUMBER",
    "InvalidInput",
    "Rule",
    "any_case",
    "assert_wire_safe",
    "display_text",
    "extension",
    "flag",
    "identifier",
    "pbx_name",
    "phone",
    "seconds",
    "whole_number",
    "word_choice",
    "word_list",
]


class Rule:
    """One kind of value: an anchored regular expression (``pattern``) and
    how to say it in an error message (``says``).

    ``body`` is the expression without its anchors, for building bigger
    patterns (``"^@?" + EXTENSION.body + "$"``).  Matching is ASCII-only:
    ``[0-9]`` never takes Arabic-Indic or full-width digits.
    """

    __slots__ = ("body", "says", "_regex")

    def __init__(self, body: str, says: str):
        self.body = body
        self.says = says
        self._regex = re.compile(body, re.ASCII)

    @property
    def pattern(self) -> str:
        """The JSON Schema ``pattern``: ``^body$``."""
        return f"^{self.body}$"

    def match(self, text: str) -> bool:
        """Whether the whole of ``text`` is such a value."""
        return self._regex.fullmatch(text) is not None

    def schema(self, **more: Any) -> dict[str, Any]:
        """A JSON Schema for such a value (a string), with ``more`` keywords."""
        return {"type": "string", "pattern": self.pattern, **more}

    def __repr__(self) -> str:
        return f"Rule({self.pattern!r})"


#: Every character ``str.strip()`` removes (``str.isspace``), as a class body:
#: a rule that allows blanks around a word says exactly what ``strip`` does.
WHITESPACE = (
    r"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BLANKS = f"[{WHITESPACE}]*"


def _literal(c: str) -> str:
    # Escape only what is special to both syntaxes (ECMA-262 in unicode mode
    # refuses escapes of other characters, such as "\\&").
    return "\\" + c if c in "\\^$.*+?()[]{}|/-" else c


def any_case(word: str) -> str:
    """``word`` as a pattern matching it in any case (``[Oo][Nn]``): JSON
    Schema patterns have no case-insensitive flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else _literal(c) for c in word)


PHONE = Rule(r"\+?[0-9]{3,15}", "3 to 15 digits, optionally after '+'")
EXTENSION = Rule(r"[A-Za-z0-9_-]{1,32}", "1 to 32 of A-Z a-z 0-9 _ -")
IDENTIFIER = Rule(r"[A-Za-z0-9_.:-]{1,64}", "1 to 64 of A-Z a-z 0-9 _ . : -")
#: A PBX's name: ``NAME`` of an ``[ami:NAME]`` section, ``default`` for
#: ``[ami]``; the API's ``pbx`` and the ``pbx`` of what the store keeps.
PBX_NAME = Rule(r"[a-z][a-z0-9_-]{0,31}", "1 to 32 of a-z 0-9 _ -, starting with a letter")
#: A recorded message's name (voiceFileID): see :func:`agi_app.sounds.check_name`.
PROMPT_NAME = Rule(r"[A-Za-z0-9_-]{1,64}", "1 to 64 of A-Z a-z 0-9 _ -")
#: A number of seconds as text: digits, blanks around them allowed.
SECONDS = Rule(f"{_BLANKS}[0-9]{{1,9}}{_BLANKS}", "a whole number of seconds")
#: A whole number as text (a page, a cursor): digits, blanks around them allowed.
WHOLE_NUMBER = Rule(f"{_BLANKS}[0-9]{{1,19}}{_BLANKS}", "a whole number")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")
#: A flag as text: 0/1, true/false, yes/no, on/off in any case, blanks around.
FLAG = Rule(
    f"{_BLANKS}(?:{'|'.join(any_case(w) for w in _TRUE_WORDS + _FALSE_WORDS)}){_BLANKS}",
    "0 or 1 (or true/false)",
)
# Characters that must never travel into a dial string, AGI command or AMI action.
FORBIDDEN = frozenset('\r\n\x00,&|()/@"\'`\\;')
#: What :func:`display_text` needs at the least: no forbidden character, no
#: angle bracket, no ASCII control (it also refuses the other non-printables).
DISPLAY_TEXT = Rule(
    "[^"
    + "".join(_literal(c) for c in sorted(FORBIDDEN | set("<>")) if c.isprintable())
    + r"\x00-\x1f\x7f]+",
    "printable text without separators or quotes",
)


def _text(field: str, value: object) -> str:
    if value is None or value == "":
        raise InvalidInput(field, f"{field} is required", code=f"missing_{field}")
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(field, f"{field} must be a string")
        value = str(value)
    return value


def _ruled(rule: Rule, value: object, field: str) -> str:
    v = _text(field, value)
    if not rule.match(v):
        raise InvalidInput(field, f"{field} must be {rule.says}")
    return v


def phone(value: object, field: str = "phone") -> str:
    """A phone number: :data:`PHONE`, ``^\\+?[0-9]{3,15}$``."""
    return _ruled(PHONE, value, field)


def extension(value: object, field: str = "sip") -> str:
    """An extension / PJSIP endpoint name: :data:`EXTENSION`, ``^[A-Za-z0-9_-]{1,32}$``."""
    return _ruled(EXTENSION, value, field)


def identifier(value: object, field: str) -> str:
    """An order_id / external_key / call id: :data:`IDENTIFIER`,
    ``^[A-Za-z0-9_.:-]{1,64}$``."""
    return _ruled(IDENTIFIER, value, field)


def pbx_name(value: object, field: str) -> str:
    """A PBX's name: :data:`PBX_NAME`, ``^[a-z][a-z0-9_-]{0,31}$``."""
    return _ruled(PBX_NAME, value, field)


def seconds(value: object, field: str, minimum: int = 1, maximum: int = 86400) -> int:
    """A whole number of seconds within ``minimum..maximum`` (a JSON integer,
    or :data:`SECONDS` as text)."""
    if isinstance(value, bool):
        raise InvalidInput(field, f"{field} must be a whole number of seconds")
    if isinstance(value, int):
        n = value
    else:
        v = _text(field, value)
        if not SECONDS.match(v):
            raise InvalidInput(field, f"{field} must be a whole number of seconds")
        n = int(v.strip())
    if not minimum <= n <= maximum:
        raise InvalidInput(field, f"{field} must be between {minimum} and {maximum}")
    return n


def whole_number(value: object, field: str, *, minimum: int, maximum: int) -> int:
    """A whole number (a JSON integer, or :data:`WHOLE_NUMBER` as text) within
    ``minimum..maximum``."""
    if isinstance(value, bool):
        raise InvalidInput(field, f"{field} must be a whole number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and WHOLE_NUMBER.match(value):
        n = int(value.strip())
    else:
        raise InvalidInput(field, f"{field} must be a whole number")
    if not minimum <= n <= maximum:
        raise InvalidInput(field, f"{field} must be between {minimum} and {maximum}")
    return n


def flag(value: object, field: str) -> bool:
    """A boolean given as 0/1, true/false, yes/no, on/off (:data:`FLAG`) or a
    JSON bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    v = _text(field, value)
    if not FLAG.match(v):
        raise InvalidInput(field, f"{field} must be {FLAG.says}")
    return v.strip().lower() in _TRUE_WORDS


def word_choice(words: Iterable[str]) -> Rule:
    """One of ``words`` in any case, blanks around it allowed (``" Post"``)."""
    words = tuple(words)
    choice = "|".join(any_case(w) for w in words)
    return Rule(f"{_BLANKS}(?:{choice}){_BLANKS}", f"one of {', '.join(words)}")


def word_list(words: Iterable[str]) -> Rule:
    """Comma separated ``words`` in any case, blanks around each, empty
    items allowed (``"online, INUSE,"``)."""
    words = tuple(words)
    item = f"{_BLANKS}(?:(?:{'|'.join(any_case(w) for w in words)}){_BLANKS})?"
    return Rule(f"{item}(?:,{item})*", f"some of {', '.join(words)}")


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
