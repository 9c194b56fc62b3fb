"""The routing layer and site: paths, methods, auth, parameters, bodies,
errors, JSON/XML rendering, static files and the access log — all through a
real twisted.web Site over an in-memory connection."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from agi_app.validation import InvalidInput, phone
from agi_app.web import ApiError, ApiResponse, Router, build_site
from agi_app.web.render import render_xml
from agi_app.web.site import redact_uri
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"
KEY = "s3cret-key"


def _reactor():
    from twisted.internet import reactor

    return reactor


def make_router() -> Router:
    router = Router()

    async def echo(req, **path):
        return {"method": req.method, "fmt": req.fmt, "path": path, "params": dict(req.params)}

    async def slow(req):
        # answers on a later reactor turn, like a handler waiting on the store
        await task.deferLater(_reactor(), 0, lambda: None)
        return {"slow": True}

    def deferred_handler(req):
        return defer.succeed({"from": "deferred"})

    async def listy(req):
        return {"status": req.param_list("status")}

    async def single(req):
        return {"a": req.params["a"]}

    async def fails(req):
        raise RuntimeError("boom: secret internals")

    async def conflict(req):
        raise ApiError(409, "conflict", "already there", extra={"call_id": "c-1"})

    async def invalid(req):
        phone(req.params.get("phone"))
        return {}

    async def created(req):
        return ApiResponse({"id": 1}, status=201, headers={"Location": "/x/1"})

    async def nothing(req):
        return ApiResponse(None, status=204)

    async def bad_value(req):
        return "not a dict"

    router.add(("GET", "POST"), "/api/echo", echo)
    router.add(("GET", "POST"), "/api/calls/{method}", echo)
    router.add(("GET",), "/api/calls/special", lambda req: {"special": True})
    router.add(("PUT", "DELETE"), "/extension/{extension_id}/current_calls/{call_api_id}", echo)
    router.add(("GET",), "/extension/{extension_id}/current_calls/", echo)
    router.add(("GET",), "/api/slow", slow)
    router.add(("GET",), "/api/deferred", deferred_handler)
    router.add(("GET",), "/api/list", listy)
    router.add(("GET", "POST"), "/api/single", single)
    router.add(("GET",), "/api/fails", fails)
    router.add(("GET",), "/api/conflict", conflict)
    router.add(("GET",), "/api/invalid", invalid)
    router.add(("POST",), "/api/created", created)
    router.add(("DELETE",), "/api/nothing", nothing)
    router.add(("GET",), "/api/bad", bad_value)
    router.add(("GET",), "/open", echo, auth=False, formats=False)
    return router


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    d = tmp_path / "static"
    (d / "sub").mkdir(parents=True)
    (d / "widget.js").write_text("window.pz = {};\n")
    (tmp_path / "secret.txt").write_text("not for you")
    return d


@pytest.fixture
def http(static_dir: Path):
    site = build_site(make_router(), api_keys=(KEY,), static_dir=static_dir, clock=_reactor())
    client = MemoryHTTP(site, _reactor())
    client.start()
    yield client
    client.stop()


@pytest.fixture
def open_http():
    site = build_site(make_router(), api_keys=(), static_dir=None, clock=_reactor())
    return MemoryHTTP(site, _reactor())


AUTH = {"X-API-Key": KEY}


async def call(http: MemoryHTTP, method: str, path: str, **kw):
    kw.setdefault("headers", AUTH)
    response = await http.request(method, BASE + path, **kw)
    body = await response.content()
    return response, body


async def call_json(http: MemoryHTTP, method: str, path: str, **kw):
    response, body = await call(http, method, path, **kw)
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    return response.code, json.loads(body)


# -- routing ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paths_match_case_insensitively_with_optional_format(http):
    for path in ("/api/echo", "/API/Echo", "/api/ECHO.json", "/api/echo.JSON", "/api/echo/"):
        code, body = await call_json(http, "GET", path + "?x=1")
        assert code == 200 and body["params"] == {"x": "1"} and body["fmt"] == "json", path
    response, raw = await call(http, "GET", "/Api/Echo.XML?x=1")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/xml; charset=utf-8"]
    root = ET.fromstring(raw)
    assert root.tag == "response" and root.findtext("params/x") == "1"
    assert root.findtext("fmt") == "xml"


@pytest_twisted.ensureDeferred
async def test_path_parameters_and_literals(http):
    code, body = await call_json(http, "POST", "/api/calls/extToPhone.json")
    assert body["path"] == {"method": "extToPhone"}  # parameter keeps its case
    code, body = await call_json(http, "GET", "/api/calls/special")
    assert body == {"special": True}  # a literal wins over {method}
    code, body = await call_json(http, "PUT", "/extension/910/current_calls/abc-1", json={})
    assert body["path"] == {"extension_id": "910", "call_api_id": "abc-1"}
    code, body = await call_json(http, "GET", "/extension/910/current_calls/")
    assert code == 200 and body["path"] == {"extension_id": "910"}
    code, body = await call_json(http, "GET", "/api/calls/a%20b")
    assert body["path"] == {"method": "a b"}


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404_in_the_asked_format(http):
    code, body = await call_json(http, "GET", "/api/nope")
    assert code == 404 and body == {"error": {"code": "not_found", "message": "no such path"}}
    response, raw = await call(http, "GET", "/api/nope.xml")
    assert response.code == 404
    assert ET.fromstring(raw).findtext("error/code") == "not_found"
    code, _ = await call_json(http, "GET", "/")
    assert code == 404
    code, _ = await call_json(http, "GET", "/api/echo/extra")
    assert code == 404
    code, _ = await call_json(http, "GET", "/open.json")  # formats=False: no suffix
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow(http):
    response, raw = await call(http, "DELETE", "/api/echo")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD, POST"]
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"
    response, _ = await call(http, "GET", "/extension/1/current_calls/2")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["DELETE, PUT"]


@pytest_twisted.ensureDeferred
async def test_head_answers_without_a_body(http):
    response, raw = await call(http, "HEAD", "/api/echo")
    assert response.code == 200 and raw == b""


def test_router_refuses_duplicates_and_bad_patterns():
    router = Router()
    router.add(("GET",), "/api/x", lambda req: {})
    with pytest.raises(ValueError):
        router.add(("GET", "POST"), "/API/X", lambda req: {})
    with pytest.raises(ValueError):
        router.add(("GET",), "api/y", lambda req: {})
    router.add(("POST",), "/api/x/", lambda req: {})  # another method is fine


# -- auth ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_api_key_by_header_or_query(http):
    code, body = await call_json(http, "GET", "/api/echo", headers={})
    assert code == 401 and body["error"]["code"] == "unauthorized"
    code, _ = await call_json(http, "GET", "/api/echo", headers={"X-API-Key": "wrong"})
    assert code == 401
    code, _ = await call_json(http, "GET", "/api/echo", headers={"X-API-Key": KEY + "x"})
    assert code == 401
    code, body = await call_json(http, "GET", f"/api/echo?api_key={KEY}&a=1", headers={})
    assert code == 200 and body["params"] == {"a": "1"}  # the key is not a parameter
    code, _ = await call_json(http, "GET", f"/api/echo?api_key={KEY}&api_key=x", headers={})
    assert code == 401
    response, raw = await call(http, "GET", "/api/echo.xml", headers={})
    assert response.code == 401 and ET.fromstring(raw).findtext("error/code") == "unauthorized"
    code, _ = await call_json(http, "GET", "/open", headers={})
    assert code == 200


def _public_router() -> Router:
    router = Router()

    async def status(req):
        return ApiResponse({"status": "degraded", "secret": "/var/x"}, status=503)

    async def refused(req):
        raise ApiError(409, "conflict", "no", extra={"secret": "kept"})

    router.add(("GET",), "/status", status, auth=False, formats=False)
    router.add(("GET",), "/refused", refused, auth=False)
    router.add(("GET",), "/keyed", status)
    router.public_fields("/status", ("status",))
    router.public_fields("/refused", ())
    return router


@pytest_twisted.ensureDeferred
async def test_public_fields_of_an_open_route():
    site = build_site(_public_router(), api_keys=(KEY,), static_dir=None, clock=_reactor())
    http = MemoryHTTP(site, _reactor())
    for headers in ({}, {"X-API-Key": "wrong"}):
        assert await call_json(http, "GET", "/status", headers=headers) == (
            503, {"status": "degraded"},
        )  # fmt: skip
    code, body = await call_json(http, "GET", "/status")
    assert (code, body) == (503, {"status": "degraded", "secret": "/var/x"})
    code, body = await call_json(http, "GET", f"/status?api_key={KEY}", headers={})
    assert body["secret"] == "/var/x"
    # Errors are never cut (they carry nothing a key would protect).
    code, body = await call_json(http, "GET", "/refused", headers={})
    assert code == 409 and body["secret"] == "kept"
    open_site = build_site(_public_router(), api_keys=(), static_dir=None, clock=_reactor())
    code, body = await call_json(MemoryHTTP(open_site, _reactor()), "GET", "/status", headers={})
    assert body["secret"] == "/var/x"  # no keys configured: everyone is trusted


def test_public_fields_needs_an_open_route():
    router = _public_router()
    with pytest.raises(ValueError):
        router.public_fields("/keyed", ("status",))
    with pytest.raises(ValueError):
        router.public_fields("/nowhere", ("status",))


@pytest_twisted.ensureDeferred
async def test_parameters_are_read_only_when_a_handler_asks(http):
    # /api/calls/special takes no parameters: its malformed body is never parsed.
    code, body = await call_json(
        http, "GET", "/api/calls/special?a=%FF", data=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert (code, body) == (200, {"special": True})
    code, body = await call_json(
        http, "GET", "/api/echo", data=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert code == 400 and body["error"]["code"] == "invalid_body"


@pytest_twisted.ensureDeferred
async def test_no_keys_configured_means_open(open_http):
    code, _ = await call_json(open_http, "GET", "/api/echo", headers={})
    assert code == 200


# -- parameters and bodies ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_form_json_and_multipart_bodies(http):
    code, body = await call_json(
        http, "POST", "/api/echo?q=1", data={"sip": "1000", "phone": "+380"},
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert body["params"] == {"q": "1", "sip": "1000", "phone": "+380"}
    code, body = await call_json(
        http, "POST", "/api/echo", json={"n": 5, "flag": True, "none": None, "l": [1, 2]}
    )
    assert body["params"] == {"n": 5, "flag": True, "none": None, "l": [1, 2]}
    # curl -d '{...}' sends JSON labelled as a form
    code, body = await call_json(
        http, "POST", "/api/echo", data=b'{"a": "b"}',
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert body["params"] == {"a": "b"}
    multipart = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"sip\"\r\n\r\n1000\r\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n\xd0\x98\xd0\xb2\r\n"
        b"--XyZ--\r\n"
    )
    code, body = await call_json(
        http, "POST", "/api/echo", data=multipart,
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert code == 200 and body["params"] == {"sip": "1000", "name": "Ив"}


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_400(http):
    cases = [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"a": NaN}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"a=%ff", "application/x-www-form-urlencoded"),
        (b"<x/>", "application/xml"),
        (b"--nope\r\n", "multipart/form-data; boundary=XyZ"),
        (b"[" * 100000, "application/json"),
    ]
    for data, ctype in cases:
        code, body = await call_json(
            http, "POST", "/api/echo", data=data, headers={**AUTH, "Content-Type": ctype}
        )
        if len(data) > 65536:
            assert code == 413, data[:20]
            continue
        assert code == 400, data
        assert body["error"]["code"] == "invalid_body", data
    code, body = await call_json(http, "GET", "/api/echo?a=%ff")
    assert code == 400 and body["error"]["code"] == "invalid_query"
    code, body = await call_json(http, "GET", "/api/calls/%ff")
    assert code == 400 and body["error"]["code"] == "invalid_path"


@pytest_twisted.ensureDeferred
async def test_body_over_64k_is_413(http):
    big = b"a=" + b"x" * (64 * 1024)
    code, body = await call_json(
        http, "POST", "/api/echo", data=big,
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert code == 413 and body["error"]["code"] == "body_too_large"
    just_fits = b"a=" + b"x" * (64 * 1024 - 2)
    code, body = await call_json(
        http, "POST", "/api/echo", data=just_fits,
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert code == 200 and len(body["params"]["a"]) == 64 * 1024 - 2


@pytest_twisted.ensureDeferred
async def test_repeated_parameter_is_400_unless_a_list_is_asked_for(http):
    code, body = await call_json(http, "GET", "/api/single?a=1&a=2")
    assert code == 400
    assert body["error"] == {
        "code": "repeated_parameter", "message": "a is given more than once", "field": "a",
    }
    code, body = await call_json(http, "POST", "/api/single?a=1", json={"a": 2})
    assert code == 400 and body["error"]["field"] == "a"
    code, body = await call_json(http, "GET", "/api/list?status=online,inuse&status=offline")
    assert body == {"status": ["online,inuse", "offline"]}
    code, body = await call_json(http, "GET", "/api/single?a=1&b=2&b=3")
    assert code == 200 and body == {"a": "1"}  # unread repeats are harmless


# -- answers and errors -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_async_deferred_and_custom_answers(http):
    assert await call_json(http, "GET", "/api/slow") == (200, {"slow": True})
    assert await call_json(http, "GET", "/api/deferred") == (200, {"from": "deferred"})
    response, raw = await call(http, "POST", "/api/created")
    assert response.code == 201 and response.headers.getRawHeaders("location") == ["/x/1"]
    response, raw = await call(http, "DELETE", "/api/nothing")
    assert response.code == 204 and raw == b""


@pytest_twisted.ensureDeferred
async def test_errors_carry_code_field_and_extra(http):
    code, body = await call_json(http, "GET", "/api/conflict")
    assert code == 409
    assert body == {"error": {"code": "conflict", "message": "already there"}, "call_id": "c-1"}
    code, body = await call_json(http, "GET", "/api/invalid?phone=12a")
    assert code == 400
    assert body["error"]["code"] == "invalid_phone" and body["error"]["field"] == "phone"
    response, raw = await call(http, "GET", "/api/invalid.xml")
    assert ET.fromstring(raw).findtext("error/field") == "phone"


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_a_bare_500_and_logged(http):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for path in ("/api/fails", "/api/bad"):
            code, body = await call_json(http, "GET", path)
            assert code == 500
            assert body == {"error": {"code": "internal", "message": "internal error"}}
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [e for e in logged if "log_failure" in e]
    assert any("boom: secret internals" in str(e["log_failure"].value) for e in failures)


def test_invalid_input_maps_like_api_error():
    error = InvalidInput("sip", "bad sip")
    assert error.code == "invalid_sip"


# -- rendering ---------------------------------------------------------------------


def test_xml_rendering_rule():
    body = {
        "page": 1,
        "ok": True,
        "no": False,
        "nothing": None,
        "ratio": 1.5,
        "text": "a < b & \"c\"\x00",
        "records": [{"id": 1}, {"id": 2}],
        "nested": [[1, 2]],
        "bad name": "x",
        "1st": "y",
        "xmlish": "z",
    }
    raw = render_xml(body)
    root = ET.fromstring(raw)
    assert root.tag == "response"
    assert root.findtext("page") == "1"
    assert root.findtext("ok") == "true" and root.findtext("no") == "false"
    assert root.find("nothing") is not None and root.findtext("nothing") == ""
    assert root.findtext("ratio") == "1.5"
    assert root.findtext("text") == 'a < b & "c"\ufffd'
    assert [i.findtext("id") for i in root.find("records")] == ["1", "2"]
    assert [i.text for i in root.find("nested/item")] == ["1", "2"]
    fields = {f.get("name"): f.text for f in root.findall("field")}
    assert fields == {"bad name": "x", "1st": "y", "xmlish": "z"}


@pytest_twisted.ensureDeferred
async def test_json_and_xml_carry_the_same_data(http):
    query = "/api/echo{}?sip=1000&text=%3Cb%3E%26"
    _, as_json = await call_json(http, "GET", query.format(".json"))
    _, raw = await call(http, "GET", query.format(".xml"))
    root = ET.fromstring(raw)
    assert {c.tag: c.text for c in root.find("params")} == as_json["params"]


# -- static files and the site -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_static_files_without_listing_or_escape(http):
    response, raw = await call(http, "GET", "/static/widget.js", headers={})
    assert response.code == 200 and raw == b"window.pz = {};\n"
    response, _ = await call(http, "GET", "/static/", headers={})
    assert response.code == 404
    response, _ = await call(http, "GET", "/static/sub/", headers={})
    assert response.code == 404
    response, raw = await call(http, "GET", "/static/../secret.txt", headers={})
    assert b"not for you" not in raw
    response, raw = await call(http, "GET", "/static/%2e%2e/secret.txt", headers={})
    assert b"not for you" not in raw
    response, _ = await call(http, "GET", "/static/missing.js", headers={})
    assert response.code == 404


def test_redact_uri():
    assert redact_uri(b"/api/x?a=1&api_key=SECRET&b=2") == b"/api/x?a=1&api_key=***&b=2"
    assert redact_uri(b"/api/x?API%5FKEY=SECRET") == b"/api/x?API%5FKEY=***"
    assert redact_uri(b"/api/x") == b"/api/x"


@pytest_twisted.ensureDeferred
async def test_access_log_never_shows_the_key(http):
    log = io.StringIO()
    http.site.logFile = log
    referrer = {"Referer": f"/p?api_key={KEY}"}
    await call(http, "GET", f"/api/echo?api_key={KEY}&x=1", headers=referrer)
    await call(http, "GET", "/api/echo?x=2")
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert KEY not in log.getvalue()
    assert '"GET /api/echo?api_key=***&x=1 HTTP/1.1" 200' in lines[0]


@implementer(IBodyProducer)
class _ChunkedBody:
    """A body of unknown length: sent chunked, without Content-Length."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]):
        self._chunks = chunks

    def startProducing(self, consumer):
        for chunk in self._chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_64k_is_413(http):
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    code, body = await call_json(
        http, "POST", "/api/echo", data=_ChunkedBody([b"a=" + b"x" * 40000, b"y" * 40000]),
        headers=form,
    )
    assert code == 413 and body["error"]["code"] == "body_too_large"
    code, body = await call_json(
        http, "POST", "/api/echo", data=_ChunkedBody([b"a=1", b"2"]), headers=form
    )
    assert code == 200 and body["params"] == {"a": "12"}


@pytest_twisted.ensureDeferred
async def test_no_request_makes_a_temporary_file(http, monkeypatch):
    """Bodies are capped at 64 KiB, so they are kept in memory: a GET (no
    Content-Length) and a chunked body never create a file on disk."""
    import tempfile

    def no_files(*args, **kwargs):
        raise AssertionError("a temporary file was created")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_files)
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    code, _ = await call_json(http, "GET", "/api/echo?a=1", headers=AUTH)
    assert code == 200
    code, body = await call_json(
        http, "POST", "/api/echo", data=_ChunkedBody([b"a=1", b"2"]), headers=form
    )
    assert code == 200 and body["params"] == {"a": "12"}
