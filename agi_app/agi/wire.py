"""FastAGI wire format: building command lines and parsing ``200`` replies.

Pure functions, no I/O; :mod:`agi_app.agi.protocol` moves the bytes.

Facts taken from Asterisk 22 ``res/res_agi.c``:

* A command is one line ending in ``\\n``; Asterisk reads it into an 8192-byte
  buffer, so the whole line including the newline must be at most 8191 bytes.
* ``parse_args`` splits it on spaces and tabs; ``"`` toggles quoting; ``\\``
  makes the next character literal (also outside quotes).  So every argument
  is sent as ``"..."`` with ``\\`` and ``"`` escaped by a backslash, which
  round-trips any text.  A newline cannot be escaped (it ends the command),
  and NUL ends the C string: both are refused, as is CR.
* ``EXEC app data`` hands ``data`` (one argument) to the application, whose own
  parser (``__ast_app_separate_args`` in ``main/app.c``) splits on ``,`` and
  treats ``(`` ``)`` ``[`` ``]`` ``"`` ``\\`` specially.  Hence the EXEC
  argument rules in :func:`exec_data`.
* Replies are ``200 result=<r>[ (<data>)][ endpos=<n>]``; ``result`` is not
  always a number (``GET DATA`` puts the digits there, possibly none), and
  some commands append free text (``GOSUB``: ``Gosub complete``).
* The commands Asterisk still runs after the channel hung up are those
  registered with ``dead = 1`` in ``commands[]``: see
  :data:`DEAD_CHANNEL_COMMANDS`.
"""

from __future__ import annotations

from agi_app.agi.errors import AGIArgumentError, AGIProtocolError

__all__ = [
    "AGIReply",
    "MAX_COMMAND_BYTES",
    "DEAD_CHANNEL_COMMANDS",
    "STRICT_FORBIDDEN",
    "normalize_verb",
    "quote",
    "build_command",
    "build_exec",
    "check_app_name",
    "exec_data",
    "parse_success",
]

#: longest command line Asterisk reads in one piece, newline included
MAX_COMMAND_BYTES = 8191

#: commands registered with ``dead = 1`` in res_agi.c's ``commands[]`` of
#: Asterisk 22 (everything else answers ``511`` once the channel hung up)
DEAD_CHANNEL_COMMANDS = frozenset(
    {
        "ASYNCAGI BREAK",
        "DATABASE DEL",
        "DATABASE DELTREE",
        "DATABASE GET",
        "DATABASE PUT",
        "EXEC",
        "GET FULL VARIABLE",
        "GET VARIABLE",
        "NOOP",
        "SET VARIABLE",
        "SPEECH DESTROY",
        "SPEECH UNLOAD GRAMMAR",
        "VERBOSE",
    }
)

#: characters refused in an EXEC argument in strict mode (values that came
#: from outside): the application argument separator and grouping characters,
#: ``&`` (several Dial destinations), ``|`` (the separator of old dialplans some
#: applications still split on), quotes, backslash and ``$`` (expanded when
#: the channel sets ``AGIEXECFULL``)
STRICT_FORBIDDEN = frozenset(",()[]\"'\\|&$")

_LINE_BREAKERS = ("\r", "\n", "\x00")
# characters the application argument parser treats specially
_APP_SPECIAL = frozenset('()[]"\\')
_VERB_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ ")
_APP_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class AGIReply:
    """A successful (``200``) reply.

    ``result`` is the text after ``result=`` (usually a number; the digits for
    ``GET DATA``), ``data`` the text in parentheses (or trailing free text),
    ``endpos`` the sample position of ``STREAM FILE`` and friends.
    """

    __slots__ = ("code", "result", "data", "endpos", "line")

    def __init__(
        self,
        code: int,
        result: str,
        data: str | None = None,
        endpos: int | None = None,
        line: str = "",
    ):
        self.code = code
        self.result = result
        self.data = data
        self.endpos = endpos
        self.line = line

    @property
    def result_int(self) -> int:
        """``result`` as a number; :class:`AGIProtocolError` if it is not one."""
        try:
            return int(self.result)
        except ValueError:
            raise AGIProtocolError(f"result is not a number: {self.line!r}", self.line) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AGIReply):
            return NotImplemented
        return (self.code, self.result, self.data, self.endpos) == (
            other.code,
            other.result,
            other.data,
            other.endpos,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.result, self.data, self.endpos))

    def __repr__(self) -> str:
        return (
            f"AGIReply(code={self.code}, result={self.result!r}, data={self.data!r}, "
            f"endpos={self.endpos!r})"
        )


def parse_success(line: str) -> AGIReply:
    """Parse a ``200 result=...`` line (the caller has checked the ``200 ``).

    Parsed from the right: a trailing ``endpos=<n>`` first, then data in
    parentheses, which may itself hold spaces and parentheses
    (``200 result=1 (a (b) c)`` gives data ``a (b) c``).
    """
    rest = line[4:]
    if not rest.startswith("result="):
        raise AGIProtocolError(f"reply without result=: {line!r}", line)
    result, sep, tail = rest[7:].partition(" ")
    if not sep:
        return AGIReply(200, result, None, None, line)
    endpos = None
    # endpos is always the last token when present; data in parentheses
    # ends with ")", so it can never be mistaken for one
    head, _, last = tail.rpartition(" ")
    if last.startswith("endpos="):
        number = last[7:]
        if number.lstrip("-").isdigit():
            endpos = int(number)
            tail = head
    tail = tail.strip(" ")
    if not tail:
        data = None
    elif tail[0] == "(":
        # a value holding a newline arrives cut at the newline, without ")"
        data = tail[1:-1] if tail[-1] == ")" else tail[1:]
    else:
        data = tail
    return AGIReply(200, result, data, endpos, line)


def normalize_verb(name: str) -> str:
    """``"get  variable"`` -> ``"GET VARIABLE"``; refuses anything but ASCII
    letters and spaces (a line break would end the command)."""
    if not isinstance(name, str) or not name.isascii():
        raise AGIArgumentError(f"not an AGI command name: {name!r}")
    verb = " ".join([w for w in name.upper().split(" ") if w])
    if not verb or not _VERB_CHARS.issuperset(verb):
        raise AGIArgumentError(f"not an AGI command name: {name!r}")
    return verb


def _text(value: object, what: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        raise AGIArgumentError(f"{what} must be text or a whole number, not {type(value).__name__}")
    for bad in _LINE_BREAKERS:
        if bad in text:
            raise AGIArgumentError(f"{what} contains CR, LF or NUL: {text!r}")
    return text


def _plain(value: object) -> bool:
    # printable text (so no CR, LF or NUL) with nothing to escape: the common case
    return type(value) is str and value.isprintable() and '"' not in value and "\\" not in value


def quote(value: object, what: str = "argument") -> str:
    """One argument as Asterisk's tokenizer reads it back unchanged:
    ``"`` + value with ``\\`` and ``"`` backslash-escaped + ``"``."""
    if _plain(value):
        return f'"{value}"'
    text = _text(value, what)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if '"' in text:
        text = text.replace('"', '\\"')
    return f'"{text}"'


def build_command(verb: str, args: tuple[object, ...] | list[object]) -> bytes:
    """The encoded command line: ``VERB "arg1" "arg2"\\n``.

    ``verb`` must already be normalized (:func:`normalize_verb`).  Raises
    :class:`AGIArgumentError` for CR/LF/NUL or a line over 8191 bytes.
    """
    parts = [verb]
    for i, a in enumerate(args, 1):
        # _plain() inlined: this runs for every argument of every command; the
        # message is only formatted for an argument that needs the slow path
        if type(a) is str and a.isprintable() and '"' not in a and "\\" not in a:
            parts.append(f'"{a}"')
        else:
            parts.append(quote(a, f"argument {i} of {verb}"))
    return _encode(verb, " ".join(parts) + "\n")


def build_exec(app: str, args: tuple[object, ...], strict: bool = False) -> bytes:
    """``EXEC App "arg1,arg2"\\n`` after the checks of :func:`exec_data`."""
    check_app_name(app)
    if args:
        line = f"EXEC {app} {quote(exec_data(app, args, strict))}\n"
    else:
        line = f"EXEC {app}\n"
    return _encode("EXEC", line)


def _encode(verb: str, line: str) -> bytes:
    data = line.encode("utf-8")
    if len(data) > MAX_COMMAND_BYTES:
        raise AGIArgumentError(
            f"{verb}: command line of {len(data)} bytes is over Asterisk's "
            f"{MAX_COMMAND_BYTES}-byte limit"
        )
    return data


def check_app_name(app: str) -> str:
    """A dialplan application name: letters, digits, underscore."""
    if not isinstance(app, str) or not app or not _APP_NAME_CHARS.issuperset(app):
        raise AGIArgumentError(f"not a dialplan application name: {app!r}")
    return app


def exec_data(app: str, args: tuple[object, ...], strict: bool = False) -> str:
    """Join EXEC application arguments with ``,`` after checking each one.

    Always refused: CR, LF, NUL, and ``,`` (it would start another argument).
    Without ``strict``, an argument must also leave the application's argument
    parser in its neutral state: balanced ``()`` and ``[]``, an even number of
    ``"``, no trailing ``\\`` -- otherwise it would swallow the separators of
    the arguments after it.  Options like ``U(sub^arg)`` stay possible.
    With ``strict`` (for any value that came from outside: a CRM, a caller),
    every character of :data:`STRICT_FORBIDDEN` is refused as well.
    """
    parts = []
    for i, value in enumerate(args, 1):
        text = value if _plain(value) else _text(value, f"argument {i} of {app}")
        if "," in text:
            raise AGIArgumentError(
                f"argument {i} of {app} contains ',' (the argument separator): {text!r}"
            )
        if strict:
            if not STRICT_FORBIDDEN.isdisjoint(text):
                bad = "".join(sorted(STRICT_FORBIDDEN.intersection(text)))
                raise AGIArgumentError(
                    f"argument {i} of {app} contains {bad!r}, refused for outside values: "
                    f"{text!r}"
                )
        elif not _APP_SPECIAL.isdisjoint(text):
            _check_neutral(text, f"argument {i} of {app}")
        parts.append(text)
    return ",".join(parts)


def _check_neutral(text: str, what: str) -> None:
    # Mirrors the state kept by __ast_app_separate_args while it scans.
    paren = bracket = 0
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch == "[":
            bracket += 1
        elif ch == "]":
            bracket = max(0, bracket - 1)
    if paren or bracket or quoted or escaped:
        raise AGIArgumentError(
            f"{what} has an unclosed '(', '[' or '\"' or a trailing '\\', which would "
            f"swallow the following arguments: {text!r}"
        )
