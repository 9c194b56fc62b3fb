"""The /extension/{id}/event/ and /extension/{id}/callback/ endpoints through
the real site: validation, answers, delivery state and the delivery log."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, task

from agi_app.calls.service import PBXUnavailable
from agi_app.events.delivery import DeliverySettings
from agi_app.events.service import EventService
from agi_app.events.testing import MemoryEventStore
from agi_app.netguard import TargetGuard
from agi_app.web.api import Router
from agi_app.web.extensions_events import ExtensionEventEndpoints, openapi_paths
from agi_app.web.openapi import build_document
from agi_app.web.site import build_site
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"


def _reactor():
    from twisted.internet import reactor

    return reactor


class FakeCalls:
    def __init__(self):
        self.placed = []
        self.down = False

    async def place(self, request):
        self.placed.append(request)
        if self.down:
            raise PBXUnavailable("c-err")
        return f"c-{len(self.placed)}", True


class Failing:
    def __call__(self, request):
        return defer.succeed(500)


@pytest.fixture
def parts():
    store = MemoryEventStore()
    clock = task.Clock()
    clock.advance(1000)
    service = EventService(
        store,
        send=Failing(),
        clock=clock,
        settings=DeliverySettings(give_up_after=10, max_retry_delay=4),
        # the URLs below are on loopback and 10.0.0.0/8 (the sender is a fake)
        guard=TargetGuard(["127.0.0.0/8", "10.0.0.0/8"]),
    )
    calls = FakeCalls()
    endpoints = ExtensionEventEndpoints(service, calls, default_trunk="pstn", call_time_to_ext=25)
    router = Router()
    endpoints.add_routes(router)
    http = MemoryHTTP(
        build_site(router, api_keys=(), static_dir=None, clock=_reactor()), _reactor()
    )
    pytest_twisted.blockon(defer.ensureDeferred(service.start()))
    return http, service, store, calls, clock


async def call(http, method, path, body=None, raw=None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": ctype} if data is not None else {}
    response = await http.request(method, BASE + path, data=data, headers=headers)
    content = await response.content()
    return response.code, (json.loads(content) if content else None)


NEW = {"url": "https://127.0.0.1:9/hook?myid=175", "method": "GET", "event_type": "dial-out"}


@pytest_twisted.ensureDeferred
async def test_subscribe_list_get_delete(parts):
    http, *_ = parts
    code, sub = await call(http, "POST", "/extension/200/event/", NEW)
    assert code == 201, sub
    assert set(sub) == {"id", "url", "method", "event_type", "secret"}
    assert sub["url"] == NEW["url"] and sub["method"] == "GET" and len(sub["secret"]) == 64
    # The seed writes extensions as @200; the same extension.
    code, listed = await call(http, "GET", "/extension/@200/event/")
    assert code == 200 and listed == {"subscriptions": [sub]}
    code, other = await call(http, "GET", "/extension/201/event/")
    assert other == {"subscriptions": []}
    code, one = await call(http, "GET", f"/extension/200/event/{sub['id']}")
    assert (
        code == 200 and one["delivery"]["pending"] == 0 and one["delivery"]["give_up_after"] == 10
    )
    assert (await call(http, "GET", f"/extension/201/event/{sub['id']}"))[0] == 404
    assert (await call(http, "DELETE", f"/extension/201/event/{sub['id']}"))[0] == 404
    assert (await call(http, "DELETE", f"/extension/200/event/{sub['id']}")) == (204, None)
    assert (await call(http, "GET", f"/extension/200/event/{sub['id']}"))[0] == 404
    assert (await call(http, "DELETE", f"/extension/200/event/{sub['id']}"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_form_bodies_and_default_method(parts):
    http, *_ = parts
    raw = b"url=http%3A%2F%2F10.0.0.5%3A9000%2Fe&event_type=HANGUP"
    code, sub = await call(
        http, "POST", "/extension/200/event/", raw=raw, ctype="application/x-www-form-urlencoded"
    )
    assert code == 201, sub
    assert (sub["method"], sub["event_type"], sub["url"]) == (
        "POST",
        "hangup",
        "http://10.0.0.5:9000/e",
    )


@pytest.mark.parametrize(
    "body, code, field",
    [
        ({"method": "GET", "event_type": "answer"}, "missing_url", "url"),
        ({**NEW, "url": "ftp://127.0.0.1:9/x"}, "invalid_url", "url"),
        ({**NEW, "url": "javascript:alert(1)"}, "invalid_url", "url"),
        ({**NEW, "url": "http:///nohost"}, "invalid_url", "url"),
        ({**NEW, "url": "http://127.0.0.1:9/a b"}, "invalid_url", "url"),
        ({**NEW, "url": "http://127.0.0.1:9/\r\nX-Evil: 1"}, "invalid_url", "url"),
        ({**NEW, "url": "http://127.0.0.1:9/" + "a" * 3000}, "invalid_url", "url"),
        ({**NEW, "url": 17}, "invalid_url", "url"),
        ({**NEW, "method": "PUT"}, "invalid_method", "method"),
        ({**NEW, "event_type": "message-in"}, "invalid_event_type", "event_type"),
        ({**NEW, "event_type": ["hangup"]}, "invalid_event_type", "event_type"),
        ({"url": NEW["url"]}, "missing_event_type", "event_type"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_subscriptions_are_refused_with_the_field(parts, body, code, field):
    http, service, store, *_ = parts
    status, answer = await call(http, "POST", "/extension/200/event/", body)
    assert status == 400, answer
    assert answer["error"]["code"] == code and answer["error"]["field"] == field
    assert store.subs == {}


@pytest.mark.parametrize(
    "raw, ctype",
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\xff\xfe", "application/x-www-form-urlencoded"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_bodies_are_400(parts, raw, ctype):
    http, *_ = parts
    status, answer = await call(http, "POST", "/extension/200/event/", raw=raw, ctype=ctype)
    assert status == 400 and answer["error"]["code"].startswith("invalid_")


@pytest_twisted.ensureDeferred
async def test_bad_extension_and_subscription_ids(parts):
    http, *_ = parts
    status, answer = await call(http, "POST", "/extension/2%2600/event/", NEW)
    assert status == 400 and answer["error"]["field"] == "extension_id"
    assert (await call(http, "GET", "/extension/200/event/abc"))[0] == 400
    assert (await call(http, "GET", "/extension/200/event/0"))[0] == 400
    assert (await call(http, "GET", "/extension/200/event/99"))[0] == 404
    assert (await call(http, "PUT", "/extension/200/event/"))[0] == 405


@pytest_twisted.ensureDeferred
async def test_failures_and_give_ups_are_visible(parts):
    http, service, store, calls, clock = parts
    code, sub = await call(http, "POST", "/extension/200/event/", {**NEW, "event_type": "hangup"})
    await service.publish("200", "hangup", {"CallID": "c1"})
    code, one = await call(http, "GET", f"/extension/200/event/{sub['id']}")
    assert one["delivery"]["pending"] == 1 and one["delivery"]["last_error"] == "HTTP 500"
    assert one["delivery"]["attempts"] == 1
    clock.advance(4)
    clock.advance(4)
    clock.advance(4)
    code, one = await call(http, "GET", f"/extension/200/event/{sub['id']}")
    assert one["delivery"]["pending"] == 0 and one["delivery"]["given_up"] == 1
    code, log = await call(
        http, "GET", f"/extension/200/event/{sub['id']}/deliveries?outcome=given_up"
    )
    assert code == 200
    [entry] = log["deliveries"]
    assert (
        entry["outcome"] == "given_up" and entry["error"] == "HTTP 500" and entry["event_id"] == 1
    )
    bad = await call(http, "GET", f"/extension/200/event/{sub['id']}/deliveries?outcome=lost")
    assert bad[0] == 400 and bad[1]["error"]["field"] == "outcome"
    assert (await call(http, "GET", f"/extension/200/event/{sub['id']}/deliveries?limit=0"))[
        0
    ] == 400


@pytest_twisted.ensureDeferred
async def test_callback_places_an_operator_first_call(parts):
    http, service, store, calls, clock = parts
    code, answer = await call(
        http, "POST", "/extension/@200/callback/", {"dst_num": "+79817654321", "src_num": ["200"]}
    )
    assert code == 201 and answer == {"call_api_id": "c-1", "call_id": "c-1"}
    [req] = calls.placed
    assert (req.kind, req.first, req.phone, req.trunk, req.call_time_to_ext) == (
        "callback",
        "200",
        "+79817654321",
        "pstn",
        25,
    )
    for body, field in [
        ({"dst_num": "+7981;x", "src_num": ["200"]}, "dst_num"),
        ({"dst_num": "+79817654321"}, "src_num"),
        ({"dst_num": "+79817654321", "src_num": ["2&00"]}, "src_num"),
        ({"dst_num": "+79817654321", "src_num": ["200", "200"]}, "src_num"),
    ]:
        status, err = await call(http, "POST", "/extension/200/callback/", body)
        assert status == 400 and err["error"]["field"] == field, (body, err)
    calls.down = True
    status, err = await call(
        http, "POST", "/extension/200/callback/", {"dst_num": "+79817654321", "src_num": "200"}
    )
    assert status == 503 and err["call_id"] == "c-err"


@pytest_twisted.ensureDeferred
async def test_callback_to_several_sources_rings_them_as_a_group(parts):
    http, service, store, calls, clock = parts
    code, answer = await call(
        http, "POST", "/extension/200/callback/",
        {"dst_num": "+79817654321", "src_num": ["200", "201", "202"]},
    )  # fmt: skip
    assert code == 201, answer
    [req] = calls.placed
    assert req.group == ("200", "201", "202") and req.first == "200"
    too_many = [str(300 + i) for i in range(21)]
    status, err = await call(
        http, "POST", "/extension/200/callback/", {"dst_num": "+79817654321", "src_num": too_many}
    )
    assert status == 400 and err["error"]["field"] == "src_num", err
    assert len(calls.placed) == 1


def test_openapi_paths_build():
    class Part:
        openapi_paths = staticmethod(openapi_paths)

    document = build_document([Part()])
    assert "/extension/{extension_id}/event/" in document["paths"]
