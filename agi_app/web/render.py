"""Answer bodies as JSON or XML (CONTRACT section 3, "XML rendering rule").

JSON: compact UTF-8 (orjson; a value it cannot take, such as an integer
beyond 64 bits or a key that is not text, goes through the standard
library's encoder instead).  NaN and infinite numbers, which JSON cannot
carry, are written as null.

XML: the root element is ``<response>``; an object's keys become child
elements; a list under key ``k`` becomes ``<k>`` holding one ``<item>`` per
element; null (and NaN or an infinite number) becomes an empty element;
booleans are ``true``/``false``; text is escaped.  A key that is not a safe
XML element name is written as ``<field name="the key">`` so any data
renders as well-formed XML.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson

__all__ = ["CONTENT_TYPES", "RawJSON", "render", "render_json", "render_xml"]

CONTENT_TYPES = {
    "json": "application/json; charset=utf-8",
    "xml": "application/xml; charset=utf-8",
}

# ASCII subset of XML names; names starting with "xml" are reserved by the spec.
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", re.ASCII)
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class RawJSON:
    """A value that is JSON text already (e.g. a history page the store read
    as JSON), written into a JSON answer as it is and parsed for XML.

    ``parse`` gives the value when XML needs it (default: ``json.loads`` of
    the text).  The text is trusted to be valid JSON: it must come from this
    application (the store), never from outside.
    """

    __slots__ = ("_parse", "text")

    def __init__(self, text: str, parse: Callable[[], Any] | None = None):
        self.text = text
        self._parse = parse

    @property
    def value(self) -> Any:
        """The parsed value."""
        return self._parse() if self._parse is not None else json.loads(self.text)

    def __repr__(self) -> str:
        return f"RawJSON({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


def _orjson_default(value: Any) -> Any:
    if type(value) is RawJSON:
        return orjson.Fragment(value.text)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


class _Fallback(json.JSONEncoder):
    """The standard library's encoder, for what orjson refuses."""

    def default(self, o: Any) -> Any:
        if type(o) is RawJSON:
            return o.value
        if isinstance(o, Mapping):
            return dict(o)
        return super().default(o)

    def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
        return super().iterencode(_finite(o), _one_shot)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None (fallback path)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_FALLBACK = _Fallback(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def render_json(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``body`` (:class:`RawJSON` values as they are)."""
    try:
        return orjson.dumps(body, default=_orjson_default)
    except TypeError:
        # orjson.JSONEncodeError: an int beyond 64 bits, a key that is not a
        # str, text with lone surrogates (which stays an error below).
        return _FALLBACK.encode(body).encode("utf-8")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return escape(_NOT_XML.sub("\ufffd", str(value)))


def _element(name: str, value: Any, out: list[str]) -> None:
    if _SAFE_NAME.match(name) and not name.lower().startswith("xml"):
        open_tag, close_tag = f"<{name}", f"</{name}>"
    else:
        safe = quoteattr(_NOT_XML.sub("\ufffd", name))
        open_tag, close_tag = f"<field name={safe}", "</field>"
    if type(value) is RawJSON:
        value = value.value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        out.append(open_tag + "/>")
    elif isinstance(value, Mapping):
        out.append(open_tag + ">")
        for key, child in value.items():
            _element(str(key), child, out)
        out.append(close_tag)
    elif isinstance(value, (list, tuple)):
        out.append(open_tag + ">")
        for child in value:
            _element("item", child, out)
        out.append(close_tag)
    else:
        out.append(f"{open_tag}>{_text(value)}{close_tag}")


def render_xml(body: Mapping[str, Any]) -> bytes:
    """UTF-8 XML with the ``<response>`` root."""
    out = ['<?xml version="1.0" encoding="utf-8"?>\n']
    _element("response", body, out)
    out.append("\n")
    return "".join(out).encode("utf-8")


def render(fmt: str, body: Mapping[str, Any]) -> tuple[bytes, str]:
    """The bytes and Content-Type of ``body`` in ``fmt`` ("json" or "xml")."""
    if fmt == "xml":
        return render_xml(body), CONTENT_TYPES["xml"]
    return render_json(body), CONTENT_TYPES["json"]
