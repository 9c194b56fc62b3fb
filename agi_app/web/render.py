"""Answer bodies as JSON or XML (CONTRACT section 3, "XML rendering rule").

XML: the root element is ``<response>``; an object's keys become child
elements; a list under key ``k`` becomes ``<k>`` holding one ``<item>`` per
element; null becomes an empty element; booleans are ``true``/``false``; text
is escaped.  A key that is not a safe XML element name is written as
``<field name="the key">`` so any data renders as well-formed XML.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = ["CONTENT_TYPES", "render", "render_json", "render_xml"]

CONTENT_TYPES = {
    "json": "application/json; charset=utf-8",
    "xml": "application/xml; charset=utf-8",
}

# ASCII subset of XML names; names starting with "xml" are reserved by the spec.
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", re.ASCII)
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# json.dumps with any option builds a new encoder on every call; this one is
# configured once (an encoder keeps no state between calls).
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def render_json(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return _JSON_ENCODER.encode(body).encode("utf-8")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinite numbers cannot be rendered")
        return repr(value)
    return escape(_NOT_XML.sub("\ufffd", str(value)))


def _element(name: str, value: Any, out: list[str]) -> None:
    if _SAFE_NAME.match(name) and not name.lower().startswith("xml"):
        open_tag, close_tag = f"<{name}", f"</{name}>"
    else:
        safe = quoteattr(_NOT_XML.sub("\ufffd", name))
        open_tag, close_tag = f"<field name={safe}", "</field>"
    if value is None:
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
