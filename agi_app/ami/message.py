"""AMI messages: parsing the bytes Asterisk sends and encoding the actions we send.

The wire format (main/manager.c): after a greeting line
``Asterisk Call Manager/<version>``, every message is a block of
``Key: Value`` lines ended by an empty line.  Asterisk writes CRLF and also
accepts bare LF.  Keys may repeat (``ChanVariable``, ``Output``), so a message
keeps every header in order and a lookup returns the first value.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

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
# One header line of a message kept as text ("\n" before every line): the
# key up to the first colon, the value after it without leading blanks
# (what AMIParser._split makes of the same line).
_HEADER_LINE = re.compile(r"\n([^:\n]*):[ \t]*([^\n]*)")

HeaderValue = str | int | float | bool | None


class AMIMessage(Mapping[str, str]):
    """One AMI message (a response or an event), immutable.

    * ``msg["Event"]`` - the first value of a header; keys are case-insensitive.
    * ``msg.getall("ChanVariable")`` - every value of a repeated header, in order.
    * ``msg.variables`` - ``{"NAME": "value"}`` from ``ChanVariable: NAME=value``.
    * ``msg.raw`` - every ``(key, value)`` pair as received.

    A message from the parser keeps its text and splits it into headers
    when one is first asked for, with one regular expression (in C), into
    a dict of the first value of each key: the call tracker alone asks an
    event for about fifteen headers, most of which it does not have, and a
    search of the text per lookup cost more than the split.  Events nobody
    asks anything are never split.
    """

    __slots__ = ("_raw", "_index", "_keys", "_variables", "_text", "_found", "_pairs")

    _found: dict[str, Any] | None

    def __init__(self, headers: Iterable[tuple[str, str]] = ()):
        self._text: str | None = None
        self._found: dict[str, str] | None = None
        self._pairs: list[tuple[str, str]] | None = None
        self._variables: dict[str, str] | None = None
        self._index_from(tuple((str(k), str(v)) for k, v in headers))

    def _index_from(self, raw: tuple[tuple[str, str], ...]) -> None:
        index: dict[str, list[str]] = {}
        keys: list[str] = []
        for key, value in raw:
            low = key.lower()
            if low not in index:
                index[low] = []
                keys.append(key)
            index[low].append(value)
        self._raw = raw
        self._index: dict[str, list[str]] | None = index
        self._keys = tuple(keys)
        self._found = {low: values[0] for low, values in index.items()}

    @classmethod
    def _from_text(cls, text: str) -> AMIMessage:
        # ``text``: "\n" + the message's lines, each "Key: value" with the key
        # at the start of its line and no blank around it (AMIParser checks).
        msg = cls.__new__(cls)
        msg._text = text
        msg._found = msg._pairs = msg._variables = msg._index = None
        return msg

    def _headers(self) -> list[tuple[str, str]]:
        """Every ``(key, value)`` of a message kept as text, split by one
        regular expression (in C: a Python step per line cost more than
        the lookups it saved)."""
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = _HEADER_LINE.findall(self._text)  # type: ignore[arg-type]
        return pairs

    def _indexed(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            self._index_from(tuple(self._headers()))
            index = self._index
        return index  # type: ignore[return-value]

    def _first_values(self) -> dict[str, str]:
        """Lower-cased key -> its first value (reversed: the first value of
        a key is written last and stays)."""
        found = self._found = {k.lower(): v for k, v in reversed(self._headers())}
        return found

    @classmethod
    def of(cls, **headers: str) -> AMIMessage:
        """Build a message from keyword arguments (handy in tests)."""
        return cls(headers.items())

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The first value of header ``key``, or ``default`` (no exception
        raised and caught inside, as ``Mapping.get`` would: most lookups of
        the call tracker are of headers an event does not have)."""
        found = self._found
        if found is None:
            found = self._first_values()
        return found.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        self._indexed()
        return iter(self._keys)

    def __len__(self) -> int:
        self._indexed()
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AMIMessage):
            self._indexed()
            other._indexed()
            return self._raw == other._raw
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._indexed()
        shown = [(k, "********" if k.lower() in _SECRET_HEADERS else v) for k, v in self._raw]
        return f"AMIMessage({shown!r})"

    def getall(self, key: str) -> list[str]:
        """Every value of header ``key`` in the order received (empty list if absent)."""
        if self._index is not None:
            return list(self._index.get(key.lower(), ()))
        if self.get(key) is None:
            return []
        name = key.lower()
        return [v for k, v in self._headers() if k.lower() == name]

    @property
    def raw(self) -> list[tuple[str, str]]:
        """Every ``(key, value)`` pair in the order received."""
        self._indexed()
        return list(self._raw)

    @property
    def variables(self) -> dict[str, str]:
        """Channel variables reported through ``ChanVariable: NAME=value`` headers
        (``channelvars`` in manager.conf); made once per message (several
        subscribers ask), so do not change the dict."""
        result = self._variables
        if result is None:
            result = {}
            for item in self.getall("ChanVariable"):
                name, sep, value = item.partition("=")
                if sep and name:
                    result[name] = value
            self._variables = result
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
        return self.get("Event") is not None

    @property
    def is_response(self) -> bool:
        """True for a response to an action."""
        return self.get("Event") is None and self.get("Response") is not None


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
    calls, even inside a multi-byte UTF-8 character: a message is decoded
    only once it is complete.  Bytes that are not UTF-8 (Asterisk passes
    caller names through as it got them, often latin-1) become U+FFFD.

    ``events``: the event names (case-insensitive) to deliver; None: all.
    An event of another name is skipped before it is decoded or split into
    headers -- a PBX sends every event of every channel to every session,
    and most are of no interest -- unless it carries an ``ActionID`` (an
    item of a list an action asked for).  :meth:`want` adds names later.
    """

    def __init__(self, *, expect_greeting: bool = True, events: Collection[str] | None = None):
        self._buffer = b""
        self._want_greeting = expect_greeting
        self._events: set[bytes] | None = None
        if events is not None:
            self._events = {name.lower().encode("utf-8") for name in events}
        #: the greeting line, once received
        self.greeting: str | None = None
        #: lines that were not ``Key: Value`` (diagnostics only; counted in the
        #: messages split line by line, see :meth:`_message`)
        self.stray_lines = 0
        #: events skipped because of their name
        self.skipped = 0

    def want(self, name: str) -> None:
        """Deliver events called ``name`` too."""
        if self._events is not None:
            self._events.add(name.lower().encode("utf-8"))

    def feed(self, data: bytes) -> list[AMIMessage | str]:
        """Consume ``data``; return the greeting (a ``str``) and/or complete
        messages in arrival order.  Raises :class:`AMIProtocolError` when a line
        or message is beyond any sane size."""
        buffer = self._buffer + data if self._buffer else data
        out: list[AMIMessage | str] = []
        if self._want_greeting:
            cut = buffer.find(b"\n")
            if cut < 0:
                self._hold(buffer)
                return out
            line = buffer[:cut].decode("utf-8", errors="replace")
            if line.endswith("\r"):
                line = line[:-1]
            self._want_greeting = False
            self.greeting = line
            out.append(line)
            buffer = buffer[cut + 1 :]
        if b"\r" in buffer:
            # A CR that ends a line goes; a CR at the very end waits for its LF.
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._hold(buffer)
            return out
        self._hold(buffer[end + 2 :])
        events = self._events
        for block in buffer[:end].split(b"\n\n"):
            if block[:1] == b"\n":
                block = block.lstrip(b"\n")  # blank lines between messages
                if not block:
                    continue
            named = block[:7] == b"Event: "
            if events is not None and named and b"ActionID:" not in block:
                cut = block.find(b"\n")
                name = block[7:cut] if cut > 0 else block[7:]
                if name.strip().lower() not in events:
                    self.skipped += 1
                    continue
            msg = self._message(block, named)
            if msg is not None:
                out.append(msg)
        return out

    def _hold(self, rest: bytes) -> None:
        """Keep an incomplete message, within the limits."""
        self._buffer = b""
        if len(rest) > MAX_INCOMING_LINE and len(rest) - rest.rfind(b"\n") > MAX_INCOMING_LINE:
            raise AMIProtocolError(f"line longer than {MAX_INCOMING_LINE} bytes")
        if rest.count(b"\n") > MAX_INCOMING_HEADERS:
            raise AMIProtocolError(f"message with more than {MAX_INCOMING_HEADERS} headers")
        self._buffer = rest

    def _message(self, block: bytes, named: bool = False) -> AMIMessage | None:
        text = "\n" + block.decode("utf-8", errors="replace")
        lines = text.count("\n")
        if lines > MAX_INCOMING_HEADERS:
            raise AMIProtocolError(f"message with more than {MAX_INCOMING_HEADERS} headers")
        if (
            text.count(":") >= lines  # (a line without one is counted below)
            and "\n " not in text
            and "\n\t" not in text
            and "\r" not in text
            and " :" not in text
            and "\t:" not in text
        ):
            # Every line starts with its key (as Asterisk writes them): the
            # headers are found in the text when asked for.
            msg = AMIMessage._from_text(text)
        else:
            msg = self._split(text)
            if msg is None:
                return None
        if self._events is not None and not named and "ActionID" not in msg:
            # an event spelt otherwise ("Event:X", "event: x") than the check
            # before reading (``named``) looks for
            name = msg.get("Event")
            if name is not None and name.strip().lower().encode("utf-8") not in self._events:
                self.skipped += 1
                return None
        return msg

    def _split(self, text: str) -> AMIMessage | None:
        """Every header of a message with lines out of the ordinary (spaces
        around a key, a line without a colon...), the plain way."""
        raw: list[tuple[str, str]] = []
        for line in text[1:].split("\n"):
            key, sep, value = line.partition(":")
            if not sep:
                if line:
                    self.stray_lines += 1
                continue
            raw.append((key.strip(), value.lstrip(" \t")))
        return AMIMessage(raw) if raw else None


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
