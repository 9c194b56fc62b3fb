"""The Python API client against a real HTTP server on 127.0.0.1.

The server records every request exactly as it crossed the wire (method,
path, query, headers, body) and answers what each test scripted, so these
tests assert on the requests a CRM's client really sends.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agi_app.client import ApiError, ApiUnavailable, Client, verify_signature

KEY = "k3y-Secret_42"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


Handler = Callable[[Seen, BaseHTTPRequestHandler], "Reply | None"]


def reply(status: int = 200, obj: Any = None, **headers: str) -> Reply:
    body = b"" if obj is None else json.dumps(obj).encode()
    return Reply(status, body, {"Content-Type": "application/json", **headers})


def error(status: int, code: str, message: str, field: str | None = None, **beside: Any) -> Reply:
    """An answer with the contract's error body."""
    err = {"code": code, "message": message}
    if field:
        err["field"] = field
    return reply(status, {"error": err, **beside})


class FakeAPI:
    """A scripted agi_app HTTP API: ``route(method, path, reply_or_function)``."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.routes: dict[tuple[str, str], Reply | Handler] = {}
        self._lock = threading.Lock()
        api = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _any(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command,
                    parts.path,
                    urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with api._lock:
                    api.requests.append(seen)
                    route = api.routes.get((self.command, parts.path))
                if route is None:
                    answer: Reply | None = error(404, "not_found", "no such route")
                elif isinstance(route, Reply):
                    answer = route
                else:
                    answer = route(seen, self)
                if answer is None:  # the function wrote the answer itself
                    return
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval only makes shutdown() quick; requests wake select() at once.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def route(self, method: str, path: str, answer: Reply | Handler) -> None:
        with self._lock:
            self.routes[(method, path)] = answer

    @property
    def last(self) -> Seen:
        assert self.requests, "the client sent nothing"
        return self.requests[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def api():
    fake = FakeAPI()
    yield fake
    fake.close()


@pytest.fixture
def client(api: FakeAPI) -> Client:
    return Client(api.url, KEY, timeout=5)


def single(query: dict[str, list[str]]) -> dict[str, str]:
    """parse_qs output with every parameter given exactly once."""
    assert all(len(v) == 1 for v in query.values()), query
    return {k: v[0] for k, v in query.items()}


# -- construction ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "127.0.0.1:8080",
        "javascript:alert(1)",
        "http://",
        "http://user:pw@127.0.0.1:8080",
        "http://127.0.0.1:8080/?api_key=x",
        "http://127.0.0.1:8080/#frag",
    ],
)
def test_only_plain_http_and_https_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError):
        Client(url)


def test_https_url_and_path_prefix_are_kept() -> None:
    assert Client("https://10.0.0.4").url == "https://10.0.0.4"
    assert Client("http://127.0.0.1:8080/bridge/").url == "http://127.0.0.1:8080/bridge"


@pytest.mark.parametrize("key", ["", "a b", "abc\r\nX-Evil: 1", "ключ"])
def test_a_key_that_cannot_be_a_header_value_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ValueError) as info:
        Client("http://127.0.0.1:1", key)
    if key:
        assert key not in str(info.value)


def test_repr_never_shows_the_key(client: Client, api: FakeAPI) -> None:
    assert KEY not in repr(client)
    assert KEY not in repr(client.extension("200"))
    assert api.url in repr(client)


def test_path_prefix_is_prepended(api: FakeAPI) -> None:
    api.route("GET", "/bridge/health", reply(200, {"ami": "up"}))
    assert Client(api.url + "/bridge/").health() == {"ami": "up"}
    assert api.last.path == "/bridge/health"


# -- the key header -------------------------------------------------------


def test_key_travels_in_the_x_api_key_header_only(client: Client, api: FakeAPI) -> None:
    api.route("GET", "/api/recordList.json", reply(200, {"records": []}))
    client.record_list()
    seen = api.last
    assert seen.headers["x-api-key"] == KEY
    assert "api_key" not in seen.query
    assert seen.headers["accept"] == "application/json"


def test_no_key_sends_no_header(api: FakeAPI) -> None:
    api.route("GET", "/health", reply(200, {}))
    Client(api.url).health()
    assert "x-api-key" not in api.last.headers


# -- CRM endpoints (CONTRACT 3) -------------------------------------------


def test_make_call_posts_the_contract_parameters_as_json(client: Client, api: FakeAPI) -> None:
    api.route("POST", "/api/makeCall.json", reply(200, {"call_id": "c-1"}))
    answer = client.make_call(
        "1000",
        "380639920000",
        15,
        "24",
        call_time_to_ext=20,
        limit_call_time=600,
        playback_waiting=False,
        caller_id_for_employee="CRM client 3320",
        trunk="pstn2",
    )
    assert answer == {"call_id": "c-1"}
    seen = api.last
    assert (seen.method, seen.path, seen.query) == ("POST", "/api/makeCall.json", {})
    assert seen.headers["content-type"].startswith("application/json")
    assert seen.json == {
        "sip": "1000",
        "phone": "380639920000",
        "order_id": "15",
        "external_key": "24",
        "call_time_to_ext": 20,
        "limit_call_time": 600,
        "playback_waiting": 0,
        "caller_id_for_employee": "CRM client 3320",
        "trunk": "pstn2",
    }


def test_make_call_leaves_out_options_not_given(client: Client, api: FakeAPI) -> None:
    api.route("POST", "/api/makeCall.json", reply(200, {"call_id": "c-1"}))
    client.make_call("1000", "380639920000", order_id="15", external_key="24")
    assert api.last.json == {
        "sip": "1000",
        "phone": "380639920000",
        "order_id": "15",
        "external_key": "24",
    }


@pytest.mark.parametrize(
    "call, path, query",
    [
        (lambda c: c.record_list(), "/api/recordList.json", {"page": "1", "per_page": "20"}),
        (
            lambda c: c.record_list(page=3, per_page=500),
            "/api/recordList.json",
            {"page": "3", "per_page": "500"},
        ),
        (lambda c: c.order_records("ord-7"), "/api/orderRecords.json", {"order_id": "ord-7"}),
        (
            lambda c: c.order_history("ord-7"),
            "/api/orderHistory.json",
            {"order_id": "ord-7", "group_by_call": "0"},
        ),
        (
            lambda c: c.order_history(42, group_by_call=True),
            "/api/orderHistory.json",
            {"order_id": "42", "group_by_call": "1"},
        ),
        (lambda c: c.call_history(), "/api/callHistory.json", {}),
        (lambda c: c.call_history(call_id="c-9"), "/api/callHistory.json", {"call_id": "c-9"}),
        (
            lambda c: c.call_history(after_id=0, limit=1000),
            "/api/callHistory.json",
            {"after_id": "0", "limit": "1000"},
        ),
        (lambda c: c.sip_list(), "/api/sipList.json", {}),
        (
            lambda c: c.sip_list(page=5, per_page=100, status="offline"),
            "/api/sipList.json",
            {"page": "5", "per_page": "100", "status": "offline"},
        ),
        (
            lambda c: c.sip_list(status=["offline", "online", "inuse"]),
            "/api/sipList.json",
            {"status": "offline,online,inuse"},
        ),
        (
            lambda c: c.sip_list(status=(s for s in ("online", "inuse"))),
            "/api/sipList.json",
            {"status": "online,inuse"},
        ),
        (lambda c: c.operator_history(), "/api/operatorHistory.json", {}),
        (
            lambda c: c.operator_history(sip=1000, page=2, per_page=50),
            "/api/operatorHistory.json",
            {"sip": "1000", "page": "2", "per_page": "50"},
        ),
        (lambda c: c.health(), "/health", {}),
    ],
)
def test_read_endpoints_get_with_the_contract_query(
    client: Client, api: FakeAPI, call: Callable[[Client], Any], path: str, query: dict
) -> None:
    canned = {"answer": path}
    api.route("GET", path, reply(200, canned))
    assert call(client) == canned
    seen = api.last
    assert (seen.method, seen.path) == ("GET", path)
    assert single(seen.query) == query
    assert seen.body == b""
    assert seen.headers["x-api-key"] == KEY


def test_query_values_are_url_encoded(client: Client, api: FakeAPI) -> None:
    api.route("GET", "/api/orderRecords.json", reply(200, {}))
    client.order_records("a&b=c d")
    assert single(api.last.query) == {"order_id": "a&b=c d"}


# -- the call model (CONTRACT 4) ------------------------------------------

CALL_MODEL = [
    ("extToPhone", {"ext_number": "910", "phone_number": "0443334023"}),
    (
        "phoneToPhone",
        {
            "phoneNumber1": "0970002233",
            "phoneNumber2": "0443334333",
            "trunkNumber": "0443334023",
            "limitCallTime": "120",
        },
    ),
    ("attendedCallTransfer", {"generalCallID": "22661563", "phone_number": "912"}),
    ("hangupCall", {"generalCallID": "22661891"}),
    ("callWithAnnouncement", {"phone_number": "0443334023", "voiceFileID": "4"}),
    (
        "callWithInteractiveVoiceResponse",
        {"phone_number": "0443334023", "ivrName": "confirmation-call"},
    ),
]


@pytest.mark.parametrize("method, params", CALL_MODEL)
def test_call_model_posts_the_seed_parameters(
    client: Client, api: FakeAPI, method: str, params: dict
) -> None:
    canned = {"status": "success", "generalCallID": "g-1"}
    api.route("POST", f"/api/calls/{method}", reply(200, canned))
    assert getattr(client.calls, method)(params) == canned
    seen = api.last
    assert (seen.method, seen.path, seen.query) == ("POST", f"/api/calls/{method}", {})
    assert seen.json == params
    assert seen.headers["x-api-key"] == KEY


def test_call_model_takes_keywords_too_and_they_win(client: Client, api: FakeAPI) -> None:
    api.route("POST", "/api/calls/extToPhone", reply(200, {"status": "success"}))
    params = {"ext_number": "910", "phone_number": "0443334023"}
    client.calls.extToPhone(params, phone_number="0443334024", **{"async": True})
    assert api.last.json == {"ext_number": "910", "phone_number": "0443334024", "async": True}
    assert params == {"ext_number": "910", "phone_number": "0443334023"}  # caller's dict untouched


# -- extensions (CONTRACT 5, 6) -------------------------------------------


def test_current_calls_returns_the_call_list(client: Client, api: FakeAPI) -> None:
    calls = [{"call_api_id": "a1", "call_flow": "out", "real_call": True}]
    api.route("GET", "/extension/200/current_calls/", reply(200, {"call_list": calls}))
    assert client.extension("200").current_calls() == calls
    assert (api.last.method, api.last.headers["x-api-key"]) == ("GET", KEY)


def test_call_action_puts_action_and_send_dst(client: Client, api: FakeAPI) -> None:
    api.route("PUT", "/extension/200/current_calls/a1", reply(200, {"status": "success"}))
    ext = client.extension("200")
    assert ext.call_action("a1", "transfer", send_dst="201") == {"status": "success"}
    assert api.last.json == {"action": "transfer", "send_dst": "201"}
    ext.call_action("a1", "hold")
    assert api.last.json == {"action": "hold"}
    assert [r.method for r in api.requests] == ["PUT", "PUT"]


def test_hangup_deletes_and_accepts_204(client: Client, api: FakeAPI) -> None:
    api.route("DELETE", "/extension/200/current_calls/a1", Reply(204, b"", {}))
    assert client.extension("200").hangup("a1") is None
    assert (api.last.method, api.last.path) == ("DELETE", "/extension/200/current_calls/a1")


def test_subscriptions(client: Client, api: FakeAPI) -> None:
    sub = {
        "id": 72,
        "url": "http://10.0.0.5:9000/h?myid=175",
        "method": "GET",
        "event_type": "dial-out",
        "secret": "s",
    }
    api.route("POST", "/extension/200/event/", reply(201, sub))
    api.route("GET", "/extension/200/event/", reply(200, [sub]))
    api.route("GET", "/extension/200/event/72", reply(200, sub))
    api.route("DELETE", "/extension/200/event/72", Reply(204, b"", {}))
    ext = client.extension("200")

    assert ext.subscribe("http://10.0.0.5:9000/h?myid=175", "dial-out", method="GET") == sub
    assert api.last.json == {
        "url": "http://10.0.0.5:9000/h?myid=175",
        "method": "GET",
        "event_type": "dial-out",
    }
    ext.subscribe("http://10.0.0.5:9000/h", "hangup")
    assert api.last.json["method"] == "POST"
    assert ext.subscriptions() == [sub]
    assert ext.subscription(72) == sub
    assert ext.unsubscribe(72) is None
    assert [(r.method, r.path) for r in api.requests] == [
        ("POST", "/extension/200/event/"),
        ("POST", "/extension/200/event/"),
        ("GET", "/extension/200/event/"),
        ("GET", "/extension/200/event/72"),
        ("DELETE", "/extension/200/event/72"),
    ]


def test_subscriptions_also_read_from_an_envelope(client: Client, api: FakeAPI) -> None:
    api.route("GET", "/extension/200/event/", reply(200, {"subscriptions": [{"id": 1}]}))
    assert client.extension("200").subscriptions() == [{"id": 1}]


def test_callback_posts_dst_and_source_list(client: Client, api: FakeAPI) -> None:
    answer = {"call_api_id": "a9", "call_id": "c9"}
    api.route("POST", "/extension/200/callback/", reply(201, answer))
    ext = client.extension("200")
    assert ext.callback("+79817654321", ["200", 201]) == answer
    assert api.last.json == {"dst_num": "+79817654321", "src_num": ["200", "201"]}
    ext.callback("+79817654321", "200")  # one source given as text is one source, not "2","0","0"
    assert api.last.json["src_num"] == ["200"]


def test_path_segments_are_encoded_and_dot_segments_refused(client: Client, api: FakeAPI) -> None:
    # The fake server sees the raw request line; a real one decodes %40 back to '@'.
    api.route("GET", "/extension/%40200/current_calls/", reply(200, {"call_list": []}))
    assert client.extension("@200").current_calls() == []
    api.route("DELETE", "/extension/200/current_calls/x%2F..%2Fy", Reply(204, b"", {}))
    client.extension("200").hangup("x/../y")  # stays one segment, cannot climb the path
    assert api.last.path == "/extension/200/current_calls/x%2F..%2Fy"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            client.extension(bad)
        with pytest.raises(ValueError):
            client.extension("200").hangup(bad)
        with pytest.raises(ValueError):
            client.download_record(bad, io.BytesIO())
    assert len(api.requests) == 2


# -- errors ---------------------------------------------------------------


def test_400_names_the_field(client: Client, api: FakeAPI) -> None:
    body = {
        "error": {
            "code": "invalid_phone",
            "message": "phone must be 3 to 15 digits",
            "field": "phone",
        }
    }
    api.route("POST", "/api/makeCall.json", reply(400, body))
    with pytest.raises(ApiError) as info:
        client.make_call("1000", "12a", "15", "24")
    err = info.value
    assert (err.status, err.code, err.field) == (400, "invalid_phone", "phone")
    assert err.message == "phone must be 3 to 15 digits"
    assert err.body == body
    assert "invalid_phone" in str(err) and "phone" in str(err)
    assert KEY not in str(err) and KEY not in repr(err)


def test_401_has_no_field(api: FakeAPI) -> None:
    api.route("GET", "/api/sipList.json", error(401, "unauthorized", "wrong API key"))
    with pytest.raises(ApiError) as info:
        Client(api.url, "wrong").sip_list()
    assert (info.value.status, info.value.code, info.value.field) == (401, "unauthorized", None)
    assert "wrong" not in str(info.value).replace("wrong API key", "")


def test_409_carries_the_existing_call_id(client: Client, api: FakeAPI) -> None:
    body = {
        "error": {
            "code": "external_key_conflict",
            "message": "external_key used",
            "field": "external_key",
        },
        "call_id": "c-first",
    }
    api.route("POST", "/api/makeCall.json", reply(409, body))
    with pytest.raises(ApiError) as info:
        client.make_call("1000", "380639920000", "15", "24", trunk="other")
    assert info.value.status == 409
    assert info.value.body["call_id"] == "c-first"
    assert info.value.call_id == "c-first"


def test_503_pbx_unreachable(client: Client, api: FakeAPI) -> None:
    api.route("POST", "/api/calls/extToPhone", error(503, "pbx_unavailable", "AMI is down"))
    with pytest.raises(ApiError) as info:
        client.calls.extToPhone({"ext_number": "910", "phone_number": "0443334023"})
    assert (info.value.status, info.value.code) == (503, "pbx_unavailable")
    assert info.value.call_id is None


def test_health_503_keeps_the_state_on_the_error(client: Client, api: FakeAPI) -> None:
    state = {"ami": "disconnected", "agi": "listening", "store": "ok"}
    api.route("GET", "/health", reply(503, state))
    with pytest.raises(ApiError) as info:
        client.health()
    assert (info.value.status, info.value.code, info.value.body) == (503, "http_503", state)


def test_an_error_page_that_is_not_json(client: Client, api: FakeAPI) -> None:
    api.route(
        "GET", "/health", Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
    )
    with pytest.raises(ApiError) as info:
        client.health()
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert info.value.body == "<html>Bad Gateway</html>"


def test_a_2xx_that_is_not_json_is_an_error(client: Client, api: FakeAPI) -> None:
    api.route("GET", "/health", Reply(200, b"OK", {"Content-Type": "text/plain"}))
    with pytest.raises(ApiError) as info:
        client.health()
    assert (info.value.status, info.value.code) == (200, "invalid_response")


def test_redirects_are_not_followed_so_the_key_stays_home(client: Client, api: FakeAPI) -> None:
    elsewhere = FakeAPI()
    try:
        elsewhere.route("GET", "/health", reply(200, {}))
        api.route("GET", "/health", Reply(302, b"", {"Location": elsewhere.url + "/health"}))
        with pytest.raises(ApiError) as info:
            client.health()
        assert info.value.status == 302
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_nothing_listening_is_api_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = s.getsockname()[1]
        with pytest.raises(ApiUnavailable) as info:
            Client(f"http://127.0.0.1:{port}", KEY, timeout=5).health()
    assert isinstance(info.value, ConnectionError)
    assert "/health" in str(info.value) and KEY not in str(info.value)


def test_a_silent_server_times_out_as_api_unavailable(api: FakeAPI) -> None:
    release = threading.Event()

    def stall(seen: Seen, handler: BaseHTTPRequestHandler) -> None:
        release.wait(10)
        handler.close_connection = True

    api.route("GET", "/health", stall)
    try:
        with pytest.raises(ApiUnavailable):
            Client(api.url, KEY, timeout=0.2).health()
    finally:
        release.set()


def test_a_connection_closed_without_answer_is_api_unavailable(
    client: Client, api: FakeAPI
) -> None:
    def hang_up(seen: Seen, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True

    api.route("GET", "/health", hang_up)
    with pytest.raises(ApiUnavailable):
        client.health()


# -- poll_history ---------------------------------------------------------


class Stop(Exception):
    """Raised by a test's sleep to end an endless poll."""


def entry(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "call_id": f"c{i // 3}",
        "order_id": "o",
        "status": "CALL",
        "time": "2026-11-25T21:04:37.123Z",
        "detail": "",
    }


class HistoryServer:
    """Serves callHistory pages from a growing list and logs every answer."""

    def __init__(self, api: FakeAPI, inclusive: bool = False) -> None:
        self.entries = [entry(i) for i in range(1, 8)]
        self.timeline: list[tuple] = []
        self.inclusive = inclusive  # misbehave: also return the cursor's own entry
        api.route("GET", "/api/callHistory.json", self.answer)

    def answer(self, seen: Seen, handler: BaseHTTPRequestHandler) -> Reply:
        q = single(seen.query)
        after, limit = int(q["after_id"]), int(q["limit"])
        newer = [
            e for e in self.entries if (e["id"] >= after if self.inclusive else e["id"] > after)
        ]
        page = newer[:limit]
        self.timeline.append(("answer", after, len(page)))
        return reply(200, {"history": page, "last_id": page[-1]["id"] if page else after})


def run_poll(gen, timeline: list) -> list[int]:
    got = []
    with pytest.raises(Stop):
        for e in gen:
            timeline.append(("yield", e["id"]))
            got.append(e["id"])
    return got


@pytest.mark.timeout(20)
def test_poll_history_follows_the_cursor_and_sleeps_only_when_idle(
    client: Client, api: FakeAPI
) -> None:
    server = HistoryServer(api)
    sleeps = []

    def sleep(seconds: float) -> None:
        server.timeline.append(("sleep", seconds))
        sleeps.append(seconds)
        if len(sleeps) == 1:
            server.entries += [entry(8), entry(9)]  # new steps arrive while it sleeps
        else:
            raise Stop

    got = run_poll(client.poll_history(interval=2.5, limit=3, sleep=sleep), server.timeline)
    assert got == list(range(1, 10))
    assert sleeps == [2.5, 2.5]
    answers = [t for t in server.timeline if t[0] == "answer"]
    assert [a[1] for a in answers] == [0, 3, 6, 7, 7, 9]
    # every sleep comes straight after an empty answer, and every empty answer is followed by one
    for i, t in enumerate(server.timeline):
        if t[0] == "sleep":
            assert server.timeline[i - 1][0] == "answer" and server.timeline[i - 1][2] == 0
        if t[0] == "answer" and t[2] == 0:
            assert server.timeline[i + 1][0] == "sleep"
    assert all(r.headers["x-api-key"] == KEY for r in api.requests)


@pytest.mark.timeout(20)
def test_poll_history_resumes_after_a_given_id(client: Client, api: FakeAPI) -> None:
    server = HistoryServer(api)

    def sleep(seconds: float) -> None:
        raise Stop

    assert run_poll(client.poll_history(after_id=5, sleep=sleep), server.timeline) == [6, 7]
    assert single(api.requests[0].query) == {"after_id": "5", "limit": "100"}


@pytest.mark.timeout(20)
def test_poll_history_never_repeats_when_the_server_repeats_the_cursor(
    client: Client, api: FakeAPI
) -> None:
    server = HistoryServer(api, inclusive=True)
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        raise Stop

    assert run_poll(client.poll_history(limit=4, sleep=sleep), server.timeline) == list(range(1, 8))
    assert [t[1] for t in server.timeline if t[0] == "answer"] == [0, 4, 7]
    assert len(sleeps) == 1  # the answer holding only the cursor's own entry counts as empty


@pytest.mark.timeout(20)
def test_poll_history_retries_a_5xx_without_losing_its_place(client: Client, api: FakeAPI) -> None:
    server = HistoryServer(api)
    failures = iter([True])

    def flaky(seen: Seen, handler: BaseHTTPRequestHandler) -> Reply:
        if single(seen.query)["after_id"] == "3" and next(failures, False):
            return error(503, "unavailable", "restarting")
        return server.answer(seen, handler)

    api.route("GET", "/api/callHistory.json", flaky)
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise Stop

    assert run_poll(client.poll_history(limit=3, sleep=sleep), []) == list(range(1, 8))
    after_ids = [single(r.query)["after_id"] for r in api.requests]
    assert after_ids == ["0", "3", "3", "6", "7"]
    assert sleeps == [1.0, 1.0]


@pytest.mark.timeout(20)
def test_poll_history_retries_while_the_server_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        client = Client(f"http://127.0.0.1:{s.getsockname()[1]}", KEY, timeout=5)
        sleeps = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 3:
                raise Stop

        assert run_poll(client.poll_history(interval=0.5, sleep=sleep), []) == []
        assert sleeps == [0.5, 0.5, 0.5]


@pytest.mark.timeout(20)
def test_poll_history_raises_a_4xx(api: FakeAPI) -> None:
    api.route("GET", "/api/callHistory.json", error(401, "unauthorized", "wrong API key"))

    def sleep(seconds: float) -> None:
        raise AssertionError("a wrong key must not be retried")

    with pytest.raises(ApiError) as info:
        next(Client(api.url, "wrong").poll_history(sleep=sleep))
    assert info.value.status == 401


# -- download_record ------------------------------------------------------

AUDIO = bytes(range(256)) * 1024  # 256 KiB, several client chunks


def serve_audio(api: FakeAPI, record_id: str, data: bytes = AUDIO) -> None:
    api.route("GET", f"/records/{record_id}", Reply(200, data, {"Content-Type": "audio/wav"}))


def test_download_streams_while_the_server_is_still_sending(client: Client, api: FakeAPI) -> None:
    half = len(AUDIO) // 2
    got_first_half = threading.Event()
    stalled = []

    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()
            self.writes = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.data += b
            self.writes += 1
            if len(self.data) >= half:
                got_first_half.set()
            return len(b)

    def in_two_halves(seen: Seen, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/wav")
        handler.send_header("Content-Length", str(len(AUDIO)))
        handler.end_headers()
        handler.wfile.write(AUDIO[:half])
        handler.wfile.flush()
        # The second half is only sent once the first is in the file: a client
        # that buffered the whole answer before writing would stall here.
        if not got_first_half.wait(10):
            stalled.append(True)
        handler.wfile.write(AUDIO[half:])

    api.route("GET", "/records/r-1", in_two_halves)
    sink = Sink()
    assert client.download_record("r-1", sink) == len(AUDIO)
    assert stalled == []
    assert bytes(sink.data) == AUDIO
    assert sink.writes >= 2
    assert api.last.headers["x-api-key"] == KEY


def test_download_to_a_path(client: Client, api: FakeAPI, tmp_path) -> None:
    serve_audio(api, "17")
    dest = tmp_path / "17.wav"
    assert client.download_record(17, dest) == len(AUDIO)
    assert dest.read_bytes() == AUDIO
    assert sorted(p.name for p in tmp_path.iterdir()) == ["17.wav"]
    assert (api.last.method, api.last.path) == ("GET", "/records/17")


def test_download_of_a_gone_recording_leaves_nothing(
    client: Client, api: FakeAPI, tmp_path
) -> None:
    api.route("GET", "/records/18", error(404, "not_found", "recording is gone"))
    dest = tmp_path / "18.wav"
    with pytest.raises(ApiError) as info:
        client.download_record("18", str(dest))
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_short_is_an_error_and_keeps_the_old_file(
    client: Client, api: FakeAPI, tmp_path
) -> None:
    def cut(seen: Seen, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(AUDIO)))
        handler.end_headers()
        handler.wfile.write(AUDIO[:1000])
        handler.close_connection = True

    api.route("GET", "/records/19", cut)
    dest = tmp_path / "19.wav"
    dest.write_bytes(b"previous copy")
    with pytest.raises(ApiUnavailable):
        client.download_record("19", dest)
    assert dest.read_bytes() == b"previous copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["19.wav"]


# -- verify_signature -----------------------------------------------------

SECRET = "whsec-1"
BODY = b"EventType=hangup&EventID=7&CallID=c1&CallStatus=ANSWER&Duration=42"
T = 1_790_000_000


def sign(secret: str, t: int, payload: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()


def test_a_correct_signature_is_accepted() -> None:
    header = f"t={T},v1={sign(SECRET, T, BODY)}"
    assert verify_signature(SECRET, header, BODY, now=T + 5) is True
    # a GET delivery signs its query string; text works like bytes
    assert verify_signature(SECRET, header, BODY.decode(), now=T - 5) is True
    upper = f"t={T},v1={sign(SECRET, T, BODY).upper()}"
    assert verify_signature(SECRET, upper, BODY, now=T) is True
    # several v1 values (a secret being rotated): any one may match
    rotated = f"t={T}, v1={'0' * 64}, v1={sign(SECRET, T, BODY)}"
    assert verify_signature(SECRET, rotated, BODY, now=T) is True


@pytest.mark.parametrize(
    "header, payload, now",
    [
        (f"t={T},v1={sign('other', T, BODY)}", BODY, T),  # wrong secret
        (f"t={T},v1={sign(SECRET, T, BODY)}", BODY + b"&x=1", T),  # payload changed
        (f"t={T + 1},v1={sign(SECRET, T, BODY)}", BODY, T),  # time changed
        (f"t={T},v1={sign(SECRET, T, BODY)}", BODY, T + 301),  # too old: a replay
        (f"t={T},v1={sign(SECRET, T, BODY)}", BODY, T - 301),  # from the future
        (f"v1={sign(SECRET, T, BODY)}", BODY, T),  # no time
        (f"t={T}", BODY, T),  # no signature
        (f"t=-{T},v1={sign(SECRET, T, BODY)}", BODY, T),
        (f"t=١٢,v1={sign(SECRET, T, BODY)}", BODY, T),  # non-ASCII digits
        (f"t={T},v1=é{sign(SECRET, T, BODY)[1:]}", BODY, T),  # non-ASCII signature
        ("", BODY, T),
        ("garbage", BODY, T),
    ],
)
def test_a_wrong_or_stale_signature_is_refused(header: str, payload: bytes, now: int) -> None:
    assert verify_signature(SECRET, header, payload, now=now) is False


@pytest.mark.timeout(20)
def test_ext_to_phone_waits_as_long_as_the_server_may(api: FakeAPI) -> None:
    """Without async the server answers once the operator's leg has an
    outcome (up to callTimeToExt + 10 s): the client's read timeout follows
    that wait instead of giving up and tempting a retry that dials twice."""

    def slow(seen: Seen, handler: BaseHTTPRequestHandler) -> Reply:
        time.sleep(0.6)
        return reply(200, {"status": "success", "generalCallID": "c-1",
                           "result": "OPERATOR_PICKUP"})  # fmt: skip

    api.route("POST", "/api/calls/extToPhone", slow)
    client = Client(api.url, KEY, timeout=0.2)
    answer = client.calls.extToPhone({"ext_number": "910", "phone_number": "0443334023",
                                      "callTimeToExt": 1})  # fmt: skip
    assert answer["result"] == "OPERATOR_PICKUP"
    # the same wait with async, or any other call, keeps the client's timeout
    with pytest.raises(ApiUnavailable):
        client.calls.extToPhone({"ext_number": "910", "phone_number": "0443334023",
                                 "async": True})  # fmt: skip
