"""AMI messages: parsing the bytes Asterisk sends and encoding the actions we send.

The wire format (main/manager.c): after a greeting line
``Asterisk Call Manager/<version>``, every message is a block of
``Key: Value`` lines ended by an empty line.  Asterisk writes CRLF and also
accepts bare LF.  Keys may repeat (``ChanVariable``, ``Output``), so a message
keeps every header in order and a lookup returns the first value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from agi_app.ami.errors import AMIInjectionError, AMIProtocolError

__all__ = [
    "AMIMessage",
    "AMIEventList",
    "AMIParser",
    "HeaderValue",
    "encode_action",
    "variable_assignment",
    "check_wire_value",
    "MAX_ACTION_LINE",
    "MAX_ACTION_HEADERS",
]

#: Asterisk reads an action into a 1025-byte buffer and silently discards a
#: line that does not fit (manager.c ``get_input``), so refuse such lines here.
MAX_ACTION_LINE = 1024
#: Asterisk keeps at most this many headers of one action (AST_MAX_MANHEADERS).
MAX_ACTION_HEADERS = 128
#: Limits on what we accept from the peer, so a broken peer cannot make us
#: buffer without end.
MAX_INCOMING_LINE = 256 * 1024
MAX_INCOMING_HEADERS = 20000

_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$", re.ASCII)
# A function's arguments may be several (PJSIP_HEADER(add,Call-Info)): the
# parser keeps a comma inside parentheses with its assignment.
_VARIABLE_NAME = re.compile(
    r"^[A-Za-z0-9_]{1,80}(\([A-Za-z0-9_-]{0,40}(,[A-Za-z0-9_-]{1,64}){0,3}\))?$", re.ASCII
)
_WIRE_UNSAFE = ("\r", "\n", "\x00")
# Asterisk splits every Variable header value with its application argument
# parser (manager.c man_do_variable_value -> AST_STANDARD_APP_ARGS): a comma
# starts another assignment, and quotes and backslashes are silently removed.
_VARIABLE_VALUE_UNSAFE = _WIRE_UNSAFE + (",", '"', "\\")
_SECRET_HEADERS = frozenset({"secret", "key"})

HeaderValue = str | int | float | bool | None


class AMIMessage(Mapping[str, str]):
    """One AMI message (a response or an event), immutable.

    * ``msg["Event"]`` - the first value of a header; keys are case-insensitive.
    * ``msg.getall("ChanVariable")`` - every value of a repeated header, in order.
    * ``msg.variables`` - ``{"NAME": "value"}`` from ``ChanVariable: NAME=value``.
    * ``msg.raw`` - every ``(key, value)`` pair as received.
    """

    __slots__ = ("_raw", "_index", "_keys")

    def __init__(self, headers: Iterable[tuple[str, str]] = ()):
        raw = tuple((str(k), str(v)) for k, v in headers)
        index: dict[str, list[str]] = {}
        keys: list[str] = []
        for key, value in raw:
            low = key.lower()
            if low not in index:
                index[low] = []
                keys.append(key)
            index[low].append(value)
        self._raw = raw
        self._index = index
        self._keys = tuple(keys)

    @classmethod
    def of(cls, **headers: str) -> AMIMessage:
        """Build a message from keyword arguments (handy in tests)."""
        return cls(headers.items())

    def __getitem__(self, key: str) -> str:
        values = self._index.get(key.lower())
        if not values:
            raise KeyError(key)
        return values[0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AMIMessage):
            return self._raw == other._raw
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = [(k, "********" if k.lower() in _SECRET_HEADERS else v) for k, v in self._raw]
        return f"AMIMessage({shown!r})"

    def getall(self, key: str) -> list[str]:
        """Every value of header ``key`` in the order received (empty list if absent)."""
        return list(self._index.get(key.lower(), ()))

    @property
    def raw(self) -> list[tuple[str, str]]:
        """Every ``(key, value)`` pair in the order received."""
        return list(self._raw)

    @property
    def variables(self) -> dict[str, str]:
        """Channel variables reported through ``ChanVariable: NAME=value`` headers
        (``channelvars`` in manager.conf)."""
        result: dict[str, str] = {}
        for item in self._index.get("chanvariable", ()):
            name, sep, value = item.partition("=")
            if sep and name:
                result[name] = value
        return result

    @property
    def event(self) -> str | None:
        """The ``Event`` name, or None for a response."""
        return self.get("Event")

    @property
    def response(self) -> str | None:
        """The ``Response`` word (``Success``, ``Error``, ``Goodbye``...), if any."""
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        """The ``ActionID`` this message answers, if any."""
        return self.get("ActionID")

    @property
    def is_event(self) -> bool:
        """True for an event (an OriginateResponse event also has a ``Response``
        header, so the ``Event`` header decides)."""
        return "event" in self._index

    @property
    def is_response(self) -> bool:
        """True for a response to an action."""
        return "event" not in self._index and "response" in self._index


class AMIEventList(list):
    """The events of a list action (``EventList: start`` ... ``EventList: Complete``),
    without the final ``...Complete`` event.

    ``response`` is the action's response, ``complete`` the final event
    (``ListItems`` tells how many items Asterisk meant to send); either may be
    None when Asterisk answered without a list.
    """

    def __init__(
        self,
        items: Iterable[AMIMessage] = (),
        response: AMIMessage | None = None,
        complete: AMIMessage | None = None,
    ):
        super().__init__(items)
        self.response = response
        self.complete = complete


class AMIParser:
    """Incremental parser: feed it bytes as they arrive, get messages back.

    Lines may end in CRLF or LF and may be split anywhere across ``feed``
    calls, even inside a multi-byte UTF-8 character: a line is decoded only
    once it is complete.  Bytes that are not UTF-8 (Asterisk passes caller
    names through as it got them, often latin-1) become U+FFFD.
    """

    def __init__(self, *, expect_greeting: bool = True):
        self._buffer = b""
        self._headers: list[tuple[str, str]] = []
        self._want_greeting = expect_greeting
        #: the greeting line, once received
        self.greeting: str | None = None
        #: lines that were not ``Key: Value`` (kept for diagnostics only)
        self.stray_lines = 0

    def feed(self, data: bytes) -> list[AMIMessage | str]:
        """Consume ``data``; return the greeting (a ``str``) and/or complete
        messages in arrival order.  Raises :class:`AMIProtocolError` when a line
        or message is beyond any sane size."""
        buffer = self._buffer + data if self._buffer else data
        cut = buffer.rfind(b"\n")
        if cut < 0:
            if len(buffer) > MAX_INCOMING_LINE:
                self._buffer = b""
                raise AMIProtocolError(f"line longer than {MAX_INCOMING_LINE} bytes")
            self._buffer = buffer
            return []
        if len(buffer) - cut > MAX_INCOMING_LINE:
            self._buffer = b""
            raise AMIProtocolError(f"line longer than {MAX_INCOMING_LINE} bytes")
        self._buffer = buffer[cut + 1:]
        # Decoding whole lines at once is safe: no UTF-8 sequence contains "\n".
        text = buffer[:cut].decode("utf-8", errors="replace")
        out: list[AMIMessage | str] = []
        headers = self._headers
        for line in text.split("\n"):
            if line.endswith("\r"):
                line = line[:-1]
            if self._want_greeting:
                self._want_greeting = False
                self.greeting = line
                out.append(line)
                continue
            if not line:
                if headers:
                    out.append(AMIMessage(headers))
                    headers = self._headers = []
                continue
            key, sep, value = line.partition(":")
            if not sep:
                self.stray_lines += 1
                continue
            headers.append((key.strip(), value.lstrip(" \t")))
            if len(headers) > MAX_INCOMING_HEADERS:
                self._headers = []
                raise AMIProtocolError(f"message with more than {MAX_INCOMING_HEADERS} headers")
        return out


def check_wire_value(value: str, what: str) -> str:
    """Refuse CR, LF and NUL, which would end a header or the action."""
    for ch in _WIRE_UNSAFE:
        if ch in value:
            raise AMIInjectionError(f"{what} contains a line break or NUL: {value!r}")
    return value


def _header_text(key: str, value: HeaderValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"AMI header {key!r}: value of type {type(value).__name__} is not text")


def variable_assignment(name: str, value: str) -> str:
    """``NAME=value`` for one ``Variable:`` header of Originate, validated.

    Each assignment goes in its own header; the value may not hold a comma
    (Asterisk would start another assignment there), quotes or backslashes
    (Asterisk drops them) or CR/LF/NUL.  Names are letters, digits and ``_``
    (a leading ``_``/``__`` makes the variable inherited), optionally a
    function call such as ``CHANNEL(language)`` or
    ``PJSIP_HEADER(add,Call-Info)`` (Asterisk's argument parser does not split
    inside the parentheses).
    """
    if not isinstance(name, str) or not _VARIABLE_NAME.match(name):
        raise AMIInjectionError(f"channel variable name not allowed: {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"channel variable {name}: value must be a string")
    for ch in _VARIABLE_VALUE_UNSAFE:
        if ch in value:
            raise AMIInjectionError(
                f"channel variable {name}: value may not contain {ch!r}: {value!r}"
            )
    return f"{name}={value}"


def encode_action(
    name: str, action_id: str, headers: Iterable[tuple[str, HeaderValue]] = ()
) -> bytes:
    """The bytes of one action, CRLF-terminated, ending in an empty line.

    Every name and value is checked before anything is built, so a refused
    action writes nothing.  ``None`` values are left out.  ``Action`` and
    ``ActionID`` are set here and may not be passed in ``headers``.
    """
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise AMIInjectionError(f"AMI action name not allowed: {name!r}")
    check_wire_value(action_id, "ActionID")
    lines = [f"Action: {name}", f"ActionID: {action_id}"]
    for key, value in headers:
        if not isinstance(key, str) or not _HEADER_NAME.match(key):
            raise AMIInjectionError(f"AMI header name not allowed: {key!r}")
        if key.lower() in ("action", "actionid"):
            raise ValueError(f"AMI header {key!r} is set by the client itself")
        if value is None:
            continue
        text = check_wire_value(_header_text(key, value), f"AMI header {key}")
        lines.append(f"{key}: {text}")
    if len(lines) > MAX_ACTION_HEADERS:
        raise ValueError(f"AMI action {name} has more than {MAX_ACTION_HEADERS} headers")
    encoded = [line.encode("utf-8") + b"\r\n" for line in lines]
    for line, data in zip(lines, encoded, strict=True):
        if len(data) > MAX_ACTION_LINE - 1:
            head = line.split(":", 1)[0]
            raise ValueError(f"AMI header {head} is longer than Asterisk accepts")
    return b"".join(encoded) + b"\r\n"
