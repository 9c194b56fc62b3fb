"""The per-request shortcuts of the HTTP layer give exactly what the general
code gives: access log escaping, API key redaction, path and query decoding,
percent-decoding, JSON rendering."""

from __future__ import annotations

import io
import json
from urllib.parse import unquote_to_bytes

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from agi_app.web import Router, build_site
from agi_app.web.api import ApiError, _decode_path
from agi_app.web.body import BodyError, parse_multipart, parse_pairs, unquote
from agi_app.web.render import RawJSON, render_json, render_xml
from agi_app.web.site import _printable, redact_uri
from agi_app.web.testing import MemoryHTTP


def _printable_reference(value: bytes) -> str:
    # The rule, one byte at a time: printable ASCII but '"' as itself.
    return "".join(chr(b) if 32 <= b < 127 and b != 0x22 else f"\\x{b:02x}" for b in value)


def _redact_reference(uri: bytes) -> bytes:
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    fields = []
    for item in query.split(b"&"):
        name = item.split(b"=", 1)[0]
        if unquote_to_bytes(name.replace(b"+", b" ")).strip().lower() == b"api_key":
            item = name + b"=***"
        fields.append(item)
    return path + b"?" + b"&".join(fields)


def test_printable_examples():
    assert _printable(b"GET") == "GET"
    assert _printable(b"/a?b=1&c=x\\y") == "/a?b=1&c=x\\y"
    assert _printable(b'say "hi"') == "say \\x22hi\\x22"
    assert _printable(b"tab\there\n") == "tab\\x09here\\x0a"
    assert _printable("héllo".encode()) == "h\\xc3\\xa9llo"
    assert _printable(b"\x7f\x00") == "\\x7f\\x00"
    assert _printable(b"") == ""


@given(st.binary(max_size=64))
def test_printable_is_the_per_byte_rule(value):
    assert _printable(value) == _printable_reference(value)


_URI_PIECES = st.sampled_from(
    [b"api_key", b"API", b"_", b"%5F", b"%5f", b"key", b"=", b"&", b"+", b"%20", b"x", b"?", b"/"]
)


@given(st.lists(_URI_PIECES, max_size=12).map(b"".join))
def test_redact_uri_is_the_general_rule(query):
    uri = b"/api/x?" + query
    assert redact_uri(uri) == _redact_reference(uri)


def test_redact_uri_hides_the_whole_of_a_query_too_long_to_look_through():
    uri = b"/x?" + b"%61&" * 300 + b"api_key=S"
    assert redact_uri(uri) == b"/x?***"


def test_redact_uri_encoded_and_spaced_names():
    assert redact_uri(b"/x?api%5Fkey=S&a=1") == b"/x?api%5Fkey=***&a=1"
    assert redact_uri(b"/x?+api_key+=S") == b"/x?+api_key+=***"
    assert redact_uri(b"/x?a=api_key") == b"/x?a=api_key"
    assert redact_uri(b"/x?a=1&b=2") == b"/x?a=1&b=2"


def test_decode_path_plain_and_quoted():
    assert _decode_path(b"/api/calls/list.json") == "/api/calls/list.json"
    assert _decode_path(b"/api/a%2Fb/%D0%98") == "/api/a/b/\u0418"
    with pytest.raises(ApiError):
        _decode_path(b"/api/\xff")
    with pytest.raises(ApiError):
        _decode_path(b"/api/%FF")
    assert _decode_path(b"/api/100%") == "/api/100%"


# What a percent-encoded text is made of, including the odd cases: "%"
# starting no escape, "=" (which the C decoder uses), line ends, lower case.
_QUOTED_PIECES = st.sampled_from(
    [b"%", b"=", b"%3D", b"=3D", b"%41", b"%4", b"%e2", b"%zz", b"a", b"F", b"0", b"h", b"x",
     b"\r", b"\n", b"_", b"+", b" ", b"\xff"]
)


@given(st.lists(_QUOTED_PIECES, max_size=40).map(b"".join) | st.binary(max_size=64))
def test_unquote_is_the_standard_library_rule(raw):
    assert unquote(raw) == unquote_to_bytes(raw)


def test_unquote_refuses_to_loop_over_many_signs_that_start_no_escape():
    assert unquote(b"%41" * 20000) == b"A" * 20000  # escapes only: decoded in C
    assert unquote(b"%" * 512) == b"%" * 512
    with pytest.raises(ValueError):
        unquote(b"%" * 513)


def test_parse_pairs_plain_and_quoted():
    assert parse_pairs(b"a=1&b=&c&&d=x=y", "query") == [
        ("a", "1"),
        ("b", ""),
        ("c", ""),
        ("d", "x=y"),
    ]
    assert parse_pairs(b"n%61me=a+b&x=%D0%98", "query") == [("name", "a b"), ("x", "\u0418")]
    with pytest.raises(BodyError):
        parse_pairs(b"a=\xff", "query")
    with pytest.raises(BodyError):
        parse_pairs(b"a=%FF", "query")
    with pytest.raises(BodyError, match="percent-encoded"):
        parse_pairs(b"a=" + b"%" * 600, "body")


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _has_surrogate(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=5))
def test_render_json_is_compact_utf8_json_of_the_same_value(body):
    if _has_surrogate(body):  # a lone surrogate: not encodable in UTF-8
        with pytest.raises(UnicodeEncodeError):
            render_json(body)
        return
    out = render_json(body)
    assert json.loads(out) == body  # every float comes back exactly


def test_render_json_is_compact_and_not_ascii_escaped():
    assert render_json({"a": [1, 2.5], "b": {"c": "é ☎"}, "d": None, "e": True}) == (
        '{"a":[1,2.5],"b":{"c":"é ☎"},"d":null,"e":true}'.encode()
    )


@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=5), st.data())
def test_raw_json_values_render_as_the_parsed_value_would(body, data):
    """A value handed over as JSON text gives the same JSON value and the same
    XML as the value given as Python data."""
    if _has_surrogate(body):
        return
    raw_keys = data.draw(st.sets(st.sampled_from(sorted(body)))) if body else set()
    texts = {k: json.dumps(body[k], ensure_ascii=False) for k in raw_keys}
    mixed = {k: RawJSON(texts[k]) if k in raw_keys else v for k, v in body.items()}
    assert json.loads(render_json(mixed)) == body
    assert render_xml(mixed) == render_xml(body)


def test_raw_json_parses_with_the_given_function_for_xml():
    calls = []

    def parse():
        calls.append(1)
        return [{"id": 1}]

    body = {"history": RawJSON('[{"id":1}]', parse), "last_id": 1}
    assert render_json(body) == b'{"history":[{"id":1}],"last_id":1}'
    assert calls == []  # JSON never parses
    assert b"<history><item><id>1</id></item></history>" in render_xml(body)
    assert calls == [1]


def test_what_orjson_refuses_goes_through_the_standard_encoder():
    big, text = 2**70, b"1180591620717411303424"
    assert render_json({"n": big, "raw": RawJSON("[1]")}) == b'{"n":' + text + b',"raw":[1]}'
    assert render_json({"m": {1: "a", None: "b"}}) == b'{"m":{"1":"a","null":"b"}}'
    assert render_json({"n": big, "x": float("nan")}) == b'{"n":' + text + b',"x":null}'


def test_nan_and_infinity_are_null_and_empty_elements():
    body = {"x": float("nan"), "y": [float("inf"), 1.5]}
    assert render_json(body) == b'{"x":null,"y":[null,1.5]}'
    assert b"<x/><y><item/><item>1.5</item></y>" in render_xml(body)


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_access_log_escapes_what_is_not_printable():
    router = Router()
    router.add(["GET"], "/api/echo", lambda req: {})
    site = build_site(router, api_keys=(), static_dir=None, clock=_reactor())
    http = MemoryHTTP(site, _reactor())
    http.start()
    log = io.StringIO()
    site.logFile = log
    try:
        response = await http.request(
            "GET",
            "http://127.0.0.1/api/echo?x=1",
            headers={"User-Agent": 'odd "agent"\u00e9', "Referer": "/p?API%5FKEY=secret"},
        )
        await response.content()
        line = log.getvalue()  # (stopping the site closes its log file)
    finally:
        http.stop()
    assert response.code == 200
    assert line.count("\n") == 1
    assert '"GET /api/echo?x=1 HTTP/1.1" 200' in line
    assert '"odd \\x22agent\\x22\\xc3\\xa9"' in line
    assert '"/p?API%5FKEY=***"' in line
    assert "secret" not in line


def test_empty_multipart_form_has_no_fields():
    content_type = "multipart/form-data; boundary=b0und"
    assert parse_multipart(b"--b0und--\r\n", content_type) == []
    assert parse_multipart(
        b'--b0und\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b0und--\r\n',
        content_type,
    ) == [("a", "1")]
    with pytest.raises(BodyError):
        parse_multipart(b"--other--\r\n", content_type)
