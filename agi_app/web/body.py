"""Request parameters from a query string or a body, parsed within bounds.

The API is meant to face CRMs over a network, so every parser here is
bounded before it starts: whatever fits in the 64 KiB body cap (and in the
request line twisted.web accepts) costs the reactor at most about a
millisecond to refuse or to read.

- query strings and ``application/x-www-form-urlencoded`` bodies: at most
  :data:`MAX_FIELDS` fields, counted (one ``bytes.count``) before splitting;
- ``multipart/form-data``: at most :data:`MAX_FIELDS` parts, counted by
  their delimiters before any part is parsed, then parsed by the
  ``multipart`` library's strict streaming parser with the same bound, at
  most 8 header lines of at most 4 KiB per part, named text fields only;
- JSON (``application/json``, ``+json``, or a form body that is obviously
  JSON, as ``curl -d '{...}'`` sends it): fewer commas than
  :data:`MAX_JSON_VALUES` (counted first: the values of an array and the
  members of an object are separated by them), the C decoder (which
  refuses nesting deeper than the interpreter's recursion limit), then at
  most :data:`MAX_FIELDS` keys, :data:`MAX_JSON_VALUES` values in all and
  :data:`MAX_JSON_DEPTH` levels, checked by a walk that stops at the first
  value over a bound.

Every refusal is a :class:`BodyError`: an :class:`~agi_app.errors.AppError`
400 ``invalid_query`` or ``invalid_body`` that the router renders as is.
"""

from __future__ import annotations

import binascii
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from agi_app.errors import AppError

__all__ = [
    "MAX_BODY",
    "MAX_FIELDS",
    "MAX_JSON_DEPTH",
    "MAX_JSON_VALUES",
    "BodyError",
    "parse_body",
    "parse_json",
    "parse_multipart",
    "parse_pairs",
    "unquote",
]

#: Largest request body accepted (CONTRACT 3: 413 above it).
MAX_BODY = 64 * 1024
#: Most fields in a query string or form, parts in a multipart body, keys in
#: a JSON object.  A CRM sends a dozen; this is far beyond any real client.
MAX_FIELDS = 256
#: Most values (scalars, arrays and objects together) in a JSON body.
MAX_JSON_VALUES = 1024
#: Deepest nesting of a JSON body: the body object is level 1.
MAX_JSON_DEPTH = 8
# RFC 2046 5.1.1: a boundary is 1 to 70 characters.
_MAX_BOUNDARY = 70
# RFC 7578 needs three header lines per part at most.
_MAX_PART_HEADERS = 8
_MAX_PART_HEADER_LINE = 4096
# A Content-Type with a boundary is well under this; options past it are not
# looked through.
_MAX_CONTENT_TYPE = 1024
# Each byte's part in an escape: a hex digit "h", "%" itself, anything else "x".
_ESCAPE_SHAPE = bytes(
    ord("h") if chr(b) in "0123456789ABCDEFabcdef" else b if b == ord("%") else ord("x")
    for b in range(256)
)
# With a "%" that starts no escape, the plain decoder's Python loop runs once
# per "%": at most this many.
_MAX_STRAY_PERCENT_WORK = 512


class BodyError(AppError):
    """The query string or body is refused: 400 with ``code``
    (``invalid_query`` or ``invalid_body``) and a message for the client."""

    status = 400

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


def unquote(raw: bytes) -> bytes:
    """``%XX`` escapes decoded as :func:`urllib.parse.unquote_to_bytes`
    decodes them (a ``%`` that starts no escape stays), in C.

    That function loops in Python once per ``%``: 64 KiB of escapes cost
    it about 20 ms.  When every ``%`` starts an escape (counted on a
    translated copy), each becomes quoted-printable's ``=`` -- an ``=``
    already there becoming ``=3D`` -- and :func:`binascii.a2b_qp`, seeing
    every ``=`` followed by two hex digits, decodes escapes and nothing
    else.  Otherwise the plain decoder runs, for at most
    ``_MAX_STRAY_PERCENT_WORK`` signs; past that it is a :class:`ValueError`."""
    count = raw.count(b"%")
    if not count:
        return raw
    if raw.translate(_ESCAPE_SHAPE).count(b"%hh") == count:
        return binascii.a2b_qp(raw.replace(b"=", b"=3D").replace(b"%", b"="))
    if count > _MAX_STRAY_PERCENT_WORK:
        raise ValueError("too many % signs, some starting no escape")
    return unquote_to_bytes(raw)


def parse_pairs(raw: bytes, what: str) -> list[tuple[str, str]]:
    """``a=1&b=%D0%98`` into text pairs; ``+`` is a space; empty items are
    skipped.  ``what`` (``query`` or ``body``) names the part in errors:
    more than :data:`MAX_FIELDS` fields or invalid UTF-8 is a
    :class:`BodyError` ``invalid_<what>``."""
    # Counting separators is one pass in C; splitting and decoding are per
    # field in Python, so the count comes first.
    if raw.count(b"&") >= MAX_FIELDS:
        raise BodyError(f"invalid_{what}", f"too many fields in the {what}")
    pairs = []
    try:
        for item in raw.split(b"&"):
            if not item:
                continue
            name, _, value = item.partition(b"=")
            if b"%" not in item and b"+" not in item:  # the usual field: plain text
                pairs.append((name.decode("utf-8"), value.decode("utf-8")))
                continue
            pairs.append(
                (
                    unquote(name.replace(b"+", b" ")).decode("utf-8"),
                    unquote(value.replace(b"+", b" ")).decode("utf-8"),
                )
            )
    except UnicodeDecodeError:
        raise BodyError(f"invalid_{what}", f"the {what} is not valid UTF-8") from None
    except ValueError:
        raise BodyError(f"invalid_{what}", f"the {what} is not percent-encoded") from None
    return pairs


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _check_json_shape(value: dict[str, Any]) -> None:
    """At most MAX_FIELDS keys, MAX_JSON_VALUES values, MAX_JSON_DEPTH levels.
    The walk stops at the first value past a bound, so it costs at most
    MAX_JSON_VALUES steps whatever the body holds."""
    if len(value) > MAX_FIELDS:
        raise BodyError("invalid_body", "too many fields in the body")
    budget = MAX_JSON_VALUES
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise BodyError("invalid_body", "too many values in the JSON body")
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BodyError("invalid_body", "the JSON body is nested too deeply")
            if len(node) > budget:
                raise BodyError("invalid_body", "too many values in the JSON body")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def parse_json(body: bytes) -> list[tuple[str, Any]]:
    """A JSON object body into ``(name, value)`` pairs (values keep their
    JSON type); anything else, or a body past the bounds, is a
    :class:`BodyError`."""
    # Building thousands of values costs the decoder about a millisecond;
    # counting the commas that would separate them costs microseconds.  (A
    # comma inside a string counts too: no real body has a thousand.)
    if body.count(b",") >= MAX_JSON_VALUES:
        raise BodyError("invalid_body", "too many values in the JSON body")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BodyError("invalid_body", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BodyError("invalid_body", "the JSON body must be an object")
    _check_json_shape(value)
    return list(value.items())


def _boundary(content_type: str) -> bytes:
    if len(content_type) > _MAX_CONTENT_TYPE:
        raise BodyError("invalid_body", "the Content-Type header is too long")
    _, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if not 0 < len(boundary) <= _MAX_BOUNDARY or not boundary.isascii():
        raise BodyError("invalid_body", "the multipart boundary is missing or invalid")
    if not boundary.isprintable() or boundary.endswith(" "):
        raise BodyError("invalid_body", "the multipart boundary is missing or invalid")
    return boundary.encode("ascii")


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """A ``multipart/form-data`` body into text pairs.  Only named text
    fields are accepted (no files); a part's ``charset`` is honoured (UTF-8
    by default).  More than :data:`MAX_FIELDS` parts is refused before any
    part is parsed."""
    boundary = _boundary(content_type)
    # Every part starts with "--boundary", and so does the closing delimiter:
    # one C scan bounds the work before the parser sees a byte.
    if body.count(b"--" + boundary) > MAX_FIELDS + 1:
        raise BodyError("invalid_body", "too many fields in the body")
    parser = PushMultipartParser(
        boundary,
        content_length=len(body),
        max_header_size=_MAX_PART_HEADER_LINE,
        max_header_count=_MAX_PART_HEADERS,
        max_segment_size=MAX_BODY,
        max_segment_count=MAX_FIELDS,
        strict=True,
    )
    out: list[tuple[str, str]] = []
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    try:
        with parser:
            for event in parser.parse(body):
                if isinstance(event, MultipartSegment):
                    if not event.name or event.filename is not None:
                        raise BodyError("invalid_body", "only named text fields are accepted")
                    segment, chunks = event, []
                elif event is not None:
                    chunks.append(event)
                elif segment is not None:  # the end of a part
                    out.append((segment.name, _text(segment, b"".join(chunks))))
            for _ in parser.parse(b""):  # the end of the body: nothing more comes
                pass
    except MultipartError:
        raise BodyError("invalid_body", "the multipart body cannot be parsed") from None
    return out


def _text(segment: MultipartSegment, payload: bytes) -> str:
    try:
        return payload.decode(segment.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise BodyError("invalid_body", f"field {segment.name} is not valid text") from None


def parse_body(body: bytes, content_type: str) -> list[tuple[str, Any]]:
    """The parameters of a request body of ``content_type`` (the header's
    text, may be empty): JSON, a urlencoded form or a multipart form.  An
    empty body has none; another type is a :class:`BodyError`."""
    if not body.strip():
        return []
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        return parse_json(body)
    if mime in ("", "application/x-www-form-urlencoded", "text/plain"):
        # `curl -d '{"a": 1}'` labels JSON as a form: accept what it obviously is.
        if body.lstrip().startswith(b"{"):
            return parse_json(body)
        return parse_pairs(body.strip(), "body")
    if mime == "multipart/form-data":
        return parse_multipart(body, content_type)
    raise BodyError("invalid_body", f"unsupported Content-Type {mime!r}")
