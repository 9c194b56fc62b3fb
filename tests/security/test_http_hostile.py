"""Hostile HTTP requests within the 64 KiB body cap: each is answered
without the work it asks for.

Every request goes as raw bytes into the real twisted.web Site
(``build_site``) over a StringTransport, so what is asserted is what a
client on the network would see, plus the state of its connection.  No test
measures time: each asserts the bound that keeps the cost small -- a body
never parsed, a count refused before the parser starts (told apart by the
error the parser itself would have given), a chunked body cut off mid-way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from agi_app.app import Application
from agi_app.config import load
from agi_app.web import Router, build_site
from agi_app.web.body import MAX_BODY, MAX_FIELDS, MAX_JSON_DEPTH, MAX_JSON_VALUES
from agi_app.web.site import MAX_CHUNKS, MAX_SEGMENTS, MAX_URI, STATIC_DIR
from agi_app.web.testing import MemoryHTTP

KEY = "k3y"
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


class Answer:
    """A parsed HTTP answer and the connection it came on."""

    def __init__(self, raw: bytes, transport: StringTransport):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1]) if lines[0] else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])
        }
        self.closed = transport.disconnecting

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return self.json()["error"]["message"]


def exchange(site, data: bytes) -> Answer:
    """Send ``data`` on a new connection to ``site``; the answer written back."""
    protocol = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return Answer(transport.value(), transport)


def request(
    method: str,
    target: str | bytes,
    body: bytes = b"",
    content_type: str | None = None,
    *,
    key: str | None = None,
    headers: bytes = b"",
) -> bytes:
    if isinstance(target, str):
        target = target.encode()
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if key is not None:
        head += f"X-API-Key: {key}\r\n".encode()
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    head += headers + b"Content-Length: %d\r\n\r\n" % len(body)
    return head + body


class App:
    """A site with an open route that takes no parameters (like /health), a
    keyed one that reads them (like sipList), and the shipped static files."""

    def __init__(self) -> None:
        self.calls = 0
        router = Router()
        router.add(("GET", "POST"), "/health", self.status, auth=False, formats=False)
        router.add(("GET", "POST"), "/api/sipList", self.fields)
        self.site = build_site(
            router, api_keys=(KEY,), static_dir=STATIC_DIR, clock=MemoryReactorClock()
        )

    def status(self, req) -> dict:
        self.calls += 1
        return {"status": "ok"}

    def fields(self, req) -> dict:
        self.calls += 1
        return {"names": sorted(req.params), "values": sum(map(len, req.params._multi.values()))}

    def send(self, data: bytes) -> Answer:
        return exchange(self.site, data)


@pytest.fixture
def app() -> App:
    return App()


def parts(n: int, part: bytes, boundary: bytes = b"XyZ") -> bytes:
    return (b"--" + boundary + b"\r\n" + part + b"\r\n") * n + b"--" + boundary + b"--\r\n"


NAMED = b'Content-Disposition: form-data; name="a"\r\n\r\nv'
UNNAMED = b"\r\n"  # no headers at all: the parser would refuse the part
MULTIPART = "multipart/form-data; boundary=XyZ"

#: bodies within the cap that cost the old parsers hundreds of milliseconds
HOSTILE_BODIES = {
    "6000 empty parts": (parts(5900, UNNAMED), MULTIPART),
    "1200 named parts": (parts(1200, NAMED), MULTIPART),
    "deep JSON": (b"[" * 60000, "application/json"),
    "deep JSON object": (b'{"a":' * 12000, "application/json"),
    "7000 JSON keys": (
        ("{" + ",".join(f'"k{i}":1' for i in range(6000)) + "}").encode(),
        "application/json",
    ),
    "16000 form fields": (b"a=1&" * 16000, "application/x-www-form-urlencoded"),
    # (a well-formed one: decoded in C, and accepted)
    "21000 escapes": (b"a=" + b"%62" * 21000, "application/x-www-form-urlencoded"),
    "60000 stray % signs": (b"a=" + b"%" * 60000, "application/x-www-form-urlencoded"),
}


def test_the_hostile_bodies_fit_in_the_cap():
    for name, (body, _) in HOSTILE_BODIES.items():
        assert len(body) <= MAX_BODY, name


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_a_route_without_parameters_never_parses_the_body(app, name):
    body, content_type = HOSTILE_BODIES[name]
    answer = app.send(request("GET", "/health", body, content_type))
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_a_stranger_s_body_is_never_looked_at(app, name):
    body, content_type = HOSTILE_BODIES[name]
    answer = app.send(request("POST", "/api/sipList.json", body, content_type))
    assert answer.status == 401 and app.calls == 0
    answer = app.send(request("POST", "/api/sipList.json", body, content_type, key="wrong"))
    assert answer.status == 401 and app.calls == 0


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_a_key_holder_s_hostile_body_is_refused_by_a_bound(app, name):
    body, content_type = HOSTILE_BODIES[name]
    answer = app.send(request("POST", "/api/sipList.json", body, content_type, key=KEY))
    if name == "21000 escapes":
        assert answer.json() == {"names": ["a"], "values": 1}
        return
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["code"] == "invalid_body"


def test_a_declared_length_over_the_cap_is_413_after_authentication(app):
    head = b"POST /api/sipList HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
    assert app.send(head + b"\r\n" + b"a" * 1000).status == 0  # still waiting for the body
    big = b"a=" + b"x" * MAX_BODY
    assert app.send(request("POST", "/api/sipList", big, "text/plain")).status == 401
    answer = app.send(request("POST", "/api/sipList", big, "text/plain", key=KEY))
    assert answer.status == 413 and answer.json()["error"]["code"] == "body_too_large"


# -- multipart ---------------------------------------------------------------


def test_multipart_part_count_is_refused_before_the_parser_starts(app):
    def send(body: bytes) -> Answer:
        return app.send(request("POST", "/api/sipList", body, MULTIPART, key=KEY))

    # One part too many, each of them unparseable: refused for the count,
    # so the parser never saw the first part.
    answer = send(parts(MAX_FIELDS + 1, UNNAMED))
    assert answer.status == 400 and answer.message == "too many fields in the body"
    # As many as allowed: the parser runs and refuses the first part itself.
    answer = send(parts(MAX_FIELDS, UNNAMED))
    assert answer.status == 400 and answer.message == "the multipart body cannot be parsed"
    answer = send(parts(MAX_FIELDS, NAMED))
    assert answer.status == 200 and answer.json() == {"names": ["a"], "values": MAX_FIELDS}


def test_multipart_part_headers_are_bounded(app):
    def message(body: bytes, content_type: str = MULTIPART) -> str:
        answer = app.send(request("POST", "/api/sipList", body, content_type, key=KEY))
        assert answer.status == 400, answer.body
        return answer.message

    many = b"".join(b"X-%d: y\r\n" % i for i in range(8))
    assert message(
        parts(1, b'Content-Disposition: form-data; name="a"\r\n' + many + b"\r\nv")
    ) == "the multipart body cannot be parsed"
    long_line = b"X-Long: " + b"y" * 5000 + b"\r\n"
    assert "cannot be parsed" in message(
        parts(1, b'Content-Disposition: form-data; name="a"\r\n' + long_line + b"\r\nv")
    )
    file_part = b'Content-Disposition: form-data; name="a"; filename="x.txt"\r\n\r\nv'
    assert message(parts(1, file_part)) == "only named text fields are accepted"
    boundary = "b" * 71
    body = parts(1, NAMED, boundary.encode())
    assert "boundary" in message(body, f"multipart/form-data; boundary={boundary}")
    padded = "multipart/form-data; " + "x=y; " * 300 + "boundary=XyZ"
    assert "too long" in message(parts(1, NAMED), padded)


# -- forms, JSON and query strings ------------------------------------------------


def test_form_field_count_is_refused_before_decoding(app):
    def message(fields: int) -> str:
        body = b"&".join([b"a=%FF"] * fields)  # invalid UTF-8 in every field
        answer = app.send(request("POST", "/api/sipList", body, "text/plain", key=KEY))
        assert answer.status == 400
        return answer.message

    assert message(MAX_FIELDS + 1) == "too many fields in the body"
    assert message(MAX_FIELDS) == "the body is not valid UTF-8"


def test_json_bodies_are_bounded_in_depth_keys_and_values(app):
    def send(value) -> Answer:
        body = json.dumps(value).encode()
        return app.send(request("POST", "/api/sipList", body, "application/json", key=KEY))

    def nested(depth: int):  # the body object is level 1
        value: object = 1
        for _ in range(depth - 1):
            value = [value]
        return {"a": value}

    assert send(nested(MAX_JSON_DEPTH)).status == 200
    answer = send(nested(MAX_JSON_DEPTH + 1))
    assert answer.status == 400 and answer.message == "the JSON body is nested too deeply"
    assert send({f"k{i}": 1 for i in range(MAX_FIELDS)}).status == 200
    answer = send({f"k{i}": 1 for i in range(MAX_FIELDS + 1)})
    assert answer.message == "too many fields in the body"
    # The body object and the list count as values too.
    assert send({"a": [1] * (MAX_JSON_VALUES - 2)}).status == 200
    answer = send({"a": [1] * (MAX_JSON_VALUES - 1)})
    assert answer.message == "too many values in the JSON body"


def test_json_values_are_counted_before_the_decoder_runs(app):
    def message(body: bytes) -> str:
        answer = app.send(request("POST", "/api/sipList", body, "application/json", key=KEY))
        assert answer.status == 400
        return answer.message

    # Not JSON at all, but refused for its commas: the decoder never saw it.
    assert message(b"{" + b"," * MAX_JSON_VALUES + b"}") == "too many values in the JSON body"
    assert message(b"{" + b"," * (MAX_JSON_VALUES - 1) + b"}") == "the body is not valid JSON"


def test_query_strings_are_bounded_before_twisted_splits_them(app):
    log: list[dict] = []
    globalLogPublisher.addObserver(log.append)
    try:
        target = "/api/sipList.json?" + "%61=1&" * MAX_FIELDS + f"api_key={KEY}"
        answer = app.send(request("GET", target))
        assert answer.status == 400 and answer.json()["error"]["code"] == "invalid_query"
        answer = app.send(request("GET", "/api/sipList.json?" + "%61=1&" * (MAX_FIELDS - 2)
                                  + f"api_key={KEY}"))  # fmt: skip
        assert answer.status == 200 and answer.json() == {"names": ["a"], "values": 254}
        answer = app.send(request("GET", "/health?" + "a" * MAX_URI))
        assert answer.status == 414 and answer.json()["error"]["code"] == "uri_too_long"
        answer = app.send(request("GET", "/health" + "/a" * MAX_SEGMENTS))
        assert answer.status == 404
        assert app.calls == 1
    finally:
        globalLogPublisher.removeObserver(log.append)


def test_a_refused_uri_is_logged_cut_short(app):
    lines: list[str] = []

    class Log:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    app.site.logFile = Log()
    app.send(request("GET", "/health?" + "a&" * 3000))
    assert len(lines) == 1 and '" 400 ' in lines[0] and len(lines[0]) < 500


# -- the request line, headers and chunks -----------------------------------


def test_many_and_long_headers_are_twisted_s_limits(app):
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(400))
    assert app.send(request("GET", "/health", headers=many)).status == 200
    long_value = b"X-Long: " + b"v" * 16000 + b"\r\n"
    assert app.send(request("GET", "/health", headers=long_value)).status == 200
    too_many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
    answer = app.send(request("GET", "/health", headers=too_many))
    assert answer.status == 400 and answer.closed and app.calls == 2


def chunked(target: str, chunks: int, key: str | None = KEY) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    head += f"X-API-Key: {key}\r\n" if key else ""
    body = b"1\r\na\r\n" * chunks + b"0\r\n\r\n"
    return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + body


def test_a_chunked_body_of_too_many_chunks_is_cut_off(app):
    answer = app.send(chunked("/api/sipList", MAX_CHUNKS))
    assert answer.status == 200 and answer.json() == {"names": ["a" * MAX_CHUNKS], "values": 1}
    for target in ("/api/sipList", "/health"):
        # 20,000 one-byte chunks: the decoder stops at the first one too many.
        answer = app.send(chunked(target, 20000))
        assert answer.status == 400 and answer.closed
    assert app.calls == 1


# -- static files -----------------------------------------------------------


ODD_STATIC_PATHS = [
    "/static/%00",
    "/static/prostiezvonki.js%00",
    "/static/a/%00/b",
    "/static/%2e%2e",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/static/a%5cb",
    "/static/" + "a" * 5000,
    "/static/%ff",
    "/static/.gitkeep",
    "/static/%20prostiezvonki.js",
]


@pytest.mark.parametrize("path", ODD_STATIC_PATHS)
def test_odd_static_paths_are_404_and_log_nothing(app, path):
    log: list[dict] = []
    globalLogPublisher.addObserver(log.append)
    try:
        answer = app.send(request("GET", path))
    finally:
        globalLogPublisher.removeObserver(log.append)
    assert answer.status == 404
    assert [e for e in log if e.get("log_level", LogLevel.info) >= LogLevel.warn] == []


@pytest_twisted.ensureDeferred
async def test_every_shipped_static_file_is_still_served():
    # (File writes through a producer on the running reactor: a real one here.)
    from twisted.internet import reactor

    router = Router()
    http = MemoryHTTP(build_site(router, api_keys=(KEY,), clock=reactor), reactor)
    names = [p.name for p in STATIC_DIR.iterdir() if not p.name.startswith(".")]
    assert "prostiezvonki.js" in names
    for name in names:
        response = await http.get(f"http://127.0.0.1/static/{name}")
        assert response.code == 200, name
        assert await response.content() == (STATIC_DIR / name).read_bytes()


# -- /health details ---------------------------------------------------------------


def application_site(tmp_path: Path, keys: str):
    config = load(
        None,
        environ={
            "AGI_APP_HTTP_API_KEYS": keys,
            "AGI_APP_STORE_PATH": str(tmp_path / "store.sqlite3"),
        },
    )
    return Application(config, MemoryReactorClock()).site()


def test_health_details_need_a_key(tmp_path: Path):
    site = application_site(tmp_path, KEY)
    for headers in (b"", b"X-API-Key: wrong\r\n"):
        answer = exchange(site, request("GET", "/health", headers=headers))
        # The AMI link is down here: 503, and nothing but the status.
        assert (answer.status, answer.json()) == (503, {"status": "degraded"})
    for target, headers in (("/health", f"X-API-Key: {KEY}\r\n".encode()),
                            (f"/health?api_key={KEY}", b"")):  # fmt: skip
        answer = exchange(site, request("GET", target, headers=headers))
        body = answer.json()
        assert answer.status == 503 and body["status"] == "degraded"
        assert body["ami"]["connected"] is False and "path" in body["store"]


def test_health_without_keys_configured_shows_the_details(tmp_path: Path):
    site = application_site(tmp_path, "")
    answer = exchange(site, request("GET", "/health"))
    assert answer.status == 503 and {"ami", "fastagi", "store"} <= set(answer.json())
