"""The click-to-call endpoints (makeCall, extToPhone, phoneToPhone, /health)
through the real site over a fake call service: what reaches the service,
and the exact error answers of bad input (which then reaches nothing)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import defer, task

from agi_app.calls.service import CallRequest
from agi_app.web import Router, build_site
from agi_app.web.calls import CallEndpoints
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"


def _reactor():
    from twisted.internet import reactor

    return reactor


class FakeStore:
    def __init__(self):
        self.entries: dict[str, list[dict]] = {}

    async def statuses(self, call_id):
        return self.entries.get(call_id, [])


class FakeCalls:
    """Takes every CallRequest; the operator leg's outcome is ``outcome``."""

    def __init__(self):
        self.placed: list[CallRequest] = []
        self.store = FakeStore()
        self.outcome: defer.Deferred | None = None

    async def place(self, request: CallRequest):
        self.placed.append(request)
        return f"c-{len(self.placed)}", True

    def operator_outcome(self, call_id):
        return self.outcome if self.outcome is not None else defer.succeed("OPERATOR_PICKUP")


class Stack:
    def __init__(self):
        self.calls = FakeCalls()
        self.clock = task.Clock()
        self.healthy = True
        endpoints = CallEndpoints(
            self.calls, default_trunk="pstn", trunks=("pstn2",), call_time_to_ext=25,
            health=lambda: (self.healthy, {"status": "ok" if self.healthy else "degraded"}),
            clock=self.clock,
        )  # fmt: skip
        router = Router()
        endpoints.add_routes(router)
        self.http = MemoryHTTP(build_site(router, api_keys=(), static_dir=None,
                                          clock=_reactor()), _reactor())  # fmt: skip

    async def get(self, path, **params):
        response = await self.http.get(f"{BASE}{path}?{urlencode(params)}")
        return response.code, json.loads(await response.content())

    async def post(self, path, body):
        response = await self.http.post(BASE + path, json=body)
        return response.code, json.loads(await response.content())


@pytest.fixture
def stack():
    return Stack()


MAKE_CALL = {"sip": "1000", "phone": "380639920000", "order_id": "o-1", "external_key": "k-1"}


@pytest_twisted.ensureDeferred
async def test_make_call_hands_the_checked_values_over(stack):
    code, body = await stack.get(
        "/api/makeCall.json", **MAKE_CALL, trunk="pstn2", call_time_to_ext=" 40 ",
        limit_call_time="600", playback_waiting="no", caller_id_for_employee="Иван Петров",
    )  # fmt: skip
    assert (code, body) == (200, {"call_id": "c-1"})
    assert stack.calls.placed == [CallRequest(
        kind="makeCall", first="1000", phone="380639920000", trunk="pstn2", order_id="o-1",
        external_key="k-1", call_time_to_ext=40, limit_call_time=600, playback_waiting=False,
        caller_id_for_employee="Иван Петров",
    )]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_make_call_defaults_and_empty_values(stack):
    code, _ = await stack.get("/api/makeCall", **MAKE_CALL, trunk="", call_time_to_ext="")
    assert code == 200
    code, _ = await stack.post("/api/makeCall.json", {**MAKE_CALL, "limit_call_time": None})
    assert code == 200
    for placed in stack.calls.placed:
        assert (placed.trunk, placed.call_time_to_ext, placed.limit_call_time,
                placed.playback_waiting, placed.caller_id_for_employee) == (
                "pstn", 25, None, True, None)  # fmt: skip


# Today's answers, word for word: CRMs and the e2e tests read them.
@pytest.mark.parametrize(
    "change, code, message, field",
    [
        ({"sip": ""}, "missing_sip", "sip is required", "sip"),
        ({"sip": "10&00"}, "invalid_sip", "sip must be 1 to 32 of A-Z a-z 0-9 _ -", "sip"),
        ({"phone": "12"}, "invalid_phone",
         "phone must be 3 to 15 digits, optionally after '+'", "phone"),
        ({"phone": "٣٨٠٦٣٩٩٢٠٠٠٠"}, "invalid_phone",
         "phone must be 3 to 15 digits, optionally after '+'", "phone"),
        ({"order_id": None}, "missing_order_id", "order_id is required", "order_id"),
        ({"external_key": "a/b"}, "invalid_external_key",
         "external_key must be 1 to 64 of A-Z a-z 0-9 _ . : -", "external_key"),
        ({"trunk": "pstn/../x"}, "invalid_trunk",
         "trunk must be 1 to 32 of A-Z a-z 0-9 _ -", "trunk"),
        ({"trunk": "101"}, "unknown_trunk", "trunk '101' is not a configured trunk", "trunk"),
        ({"call_time_to_ext": "601"}, "invalid_call_time_to_ext",
         "call_time_to_ext must be between 1 and 600", "call_time_to_ext"),
        ({"call_time_to_ext": "3.5"}, "invalid_call_time_to_ext",
         "call_time_to_ext must be a whole number of seconds", "call_time_to_ext"),
        ({"limit_call_time": "0"}, "invalid_limit_call_time",
         "limit_call_time must be between 1 and 86400", "limit_call_time"),
        ({"playback_waiting": "maybe"}, "invalid_playback_waiting",
         "playback_waiting must be 0 or 1 (or true/false)", "playback_waiting"),
        ({"caller_id_for_employee": 'x" <1>'}, "invalid_caller_id_for_employee",
         "caller_id_for_employee contains characters that are not allowed",
         "caller_id_for_employee"),
        ({"caller_id_for_employee": "x" * 65}, "invalid_caller_id_for_employee",
         "caller_id_for_employee must be at most 64 characters", "caller_id_for_employee"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_make_call_refuses_bad_input_word_for_word(stack, change, code, message, field):
    params = {k: x for k, x in {**MAKE_CALL, **change}.items() if x is not None}
    status, body = await stack.get("/api/makeCall.json", **params)
    assert (status, body) == (400, {"error": {"code": code, "message": message, "field": field}})
    status, body = await stack.post("/api/makeCall", {**MAKE_CALL, **change})
    assert (status, body) == (400, {"error": {"code": code, "message": message, "field": field}})
    assert stack.calls.placed == []


@pytest_twisted.ensureDeferred
async def test_the_first_fault_in_declaration_order_is_answered(stack):
    status, body = await stack.get("/api/makeCall", sip="1&0", phone="1", trunk="101")
    assert body["error"]["field"] == "sip"
    status, body = await stack.get("/api/makeCall", **{**MAKE_CALL, "trunk": "101",
                                                       "limit_call_time": "0"})  # fmt: skip
    assert body["error"]["code"] == "unknown_trunk"


@pytest_twisted.ensureDeferred
async def test_a_trunk_must_be_a_configured_one(stack):
    """An extension (101) named as a trunk would dial the client through a
    phone: only [dialing] default_trunk and trunks are taken."""
    for path, body, field in [
        ("/api/makeCall", {**MAKE_CALL, "trunk": "101"}, "trunk"),
        ("/api/calls/extToPhone", {"ext_number": "1000", "phone_number": "380639920000",
                                   "trunkNumber": "101"}, "trunkNumber"),
        ("/api/calls/phoneToPhone", {"phoneNumber1": "380639920000",
                                     "phoneNumber2": "380639920001", "trunkNumber": "101"},
         "trunkNumber"),
    ]:  # fmt: skip
        status, answer = await stack.post(path, body)
        assert status == 400, (path, answer)
        assert answer["error"]["code"] == "unknown_trunk"
        assert answer["error"]["field"] == field
    assert stack.calls.placed == []
    for trunk in ("pstn", "pstn2"):
        status, _ = await stack.post("/api/calls/phoneToPhone", {
            "phoneNumber1": "380639920000", "phoneNumber2": "380639920001", "trunkNumber": trunk,
        })  # fmt: skip
        assert status == 200
    assert [c.trunk for c in stack.calls.placed] == ["pstn", "pstn2"]


@pytest_twisted.ensureDeferred
async def test_ext_to_phone_waits_for_the_operator_unless_async(stack):
    body = {"ext_number": "1000", "phone_number": "380639920000", "callTimeToExt": 20,
            "limitCallTime": "90", "playbackWaiting": False, "callerIdForEmployee": "CRM 7",
            "order_id": "o-2", "external_key": "k-2"}  # fmt: skip
    status, answer = await stack.post("/api/calls/extToPhone", body)
    assert (status, answer) == (
        200, {"status": "success", "generalCallID": "c-1", "result": "OPERATOR_PICKUP"}
    )
    assert stack.calls.placed[0] == CallRequest(
        kind="extToPhone", first="1000", phone="380639920000", trunk="pstn", order_id="o-2",
        external_key="k-2", call_time_to_ext=20, limit_call_time=90, playback_waiting=False,
        caller_id_for_employee="CRM 7",
    )  # fmt: skip
    status, answer = await stack.post("/api/calls/extToPhone", {**body, "async": "true"})
    assert (status, answer) == (200, {"status": "success", "generalCallID": "c-2"})
    status, answer = await stack.post("/api/calls/extToPhone", {**body, "async": "later"})
    assert (status, answer["error"]["code"]) == (400, "invalid_async")


@pytest_twisted.ensureDeferred
async def test_ext_to_phone_gives_up_waiting_after_the_ring_time(stack):
    stack.calls.outcome = defer.Deferred()
    stack.calls.store.entries["c-1"] = [{"status": "CALL"}, {"status": "OPERATOR_CALLTO"}]
    d = defer.ensureDeferred(stack.post("/api/calls/extToPhone", {
        "ext_number": "1000", "phone_number": "380639920000", "callTimeToExt": "5"}))
    await task.deferLater(_reactor(), 0.01, lambda: None)
    assert not d.called
    stack.clock.advance(5 + 10)
    status, answer = await d
    assert (status, answer["result"]) == (200, "OPERATOR_CALLTO")


@pytest_twisted.ensureDeferred
async def test_phone_to_phone_needs_its_trunk(stack):
    status, answer = await stack.post(
        "/api/calls/phoneToPhone", {"phoneNumber1": "380639920000", "phoneNumber2": "3806"}
    )
    assert (status, answer["error"]) == (400, {
        "code": "missing_trunkNumber", "message": "trunkNumber is required",
        "field": "trunkNumber"})  # fmt: skip
    status, answer = await stack.post("/api/calls/phoneToPhone", {
        "phoneNumber1": "380639920000", "phoneNumber2": "380639920001", "trunkNumber": "pstn",
        "limitCallTime": 30, "playbackWaiting": "0"})  # fmt: skip
    assert (status, answer) == (200, {"status": "success", "generalCallID": "c-1"})
    assert stack.calls.placed == [CallRequest(
        kind="phoneToPhone", first="380639920000", first_is_phone=True, phone="380639920001",
        trunk="pstn", call_time_to_ext=25, limit_call_time=30, playback_waiting=False,
    )]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_health(stack):
    response = await stack.http.get(BASE + "/health")
    assert (response.code, json.loads(await response.content())) == (200, {"status": "ok"})
    stack.healthy = False
    response = await stack.http.get(BASE + "/health")
    assert (response.code, json.loads(await response.content())) == (503, {"status": "degraded"})
