"""The HTTP side of call control, current calls and automated calls: a real
twisted.web Site (through memory) over CallControl and OutboundCalls, whose
PBX is the in-memory FakeAMIServer.  Bad input is a clear 4xx and sends
nothing to the PBX."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from test_ivr_engine import EXAMPLE
from test_tracker import SECRET, T0, USER, Sim
from twisted.internet.testing import MemoryReactorClock

from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.calls.lifecycle import Lifecycle
from agi_app.calls.outbound import OutboundCalls
from agi_app.config import DialingConfig
from agi_app.ivr.service import IVRService
from agi_app.live.control import CallControl
from agi_app.live.tracker import CallTracker
from agi_app.store.testing import MemoryStore
from agi_app.web import Router, build_site, openapi
from agi_app.web.calls_control import CallControlEndpoints
from agi_app.web.extensions import CurrentCallsEndpoints
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"
_BACKGROUND = {"login", "coreshowchannels", "devicestatelist", "pjsipshowcontacts", "ping"}


def _reactor():
    from twisted.internet import reactor

    return reactor


class Stack:
    def __init__(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.clock)
        self.server.device_states.update({"PJSIP/1000": "INUSE", "PJSIP/1001": "NOT_INUSE"})
        self.server.handlers["redirect"] = lambda p, a: p.respond(a, Message="Redirected")
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.clock)
        self.tracker = CallTracker(self.ami, clock=self.clock)
        self.tracker.start()
        self.store = MemoryStore(self.clock)
        dialing = DialingConfig()
        self.control = CallControl(ami=self.ami, tracker=self.tracker, dialing=dialing,
                                   clock=self.clock, store=self.store)
        lifecycle = Lifecycle(store=self.store, ami=self.ami, dialing=dialing, clock=self.clock)
        ivr = IVRService(lifecycle=lifecycle, dialing=dialing, path=EXAMPLE)
        self.outbound = OutboundCalls(lifecycle=lifecycle, dialing=dialing, menus=ivr,
                                      voice_files=lambda: {"announcement"})
        self.ami.startService()
        self.link = self.server.accept(self.clock)
        self.sim = Sim(self.server)
        self.sim.trunk_to_operator()
        router = Router()
        self.current = CurrentCallsEndpoints(self.control)
        self.calls = CallControlEndpoints(self.control, self.outbound)
        self.current.add_routes(router)
        self.calls.add_routes(router)
        self.http = MemoryHTTP(build_site(router, api_keys=(), clock=_reactor()), _reactor())

    def sent(self):
        return [a["Action"] for a in self.server.actions
                if a["Action"].lower() not in _BACKGROUND]

    async def request(self, method, path, body=None):
        kwargs = {}
        if body is not None:
            kwargs = {"data": json.dumps(body).encode(),
                      "headers": {"Content-Type": "application/json"}}
        response = await self.http.request(method, BASE + path, **kwargs)
        content = await response.content()
        return response.code, (json.loads(content) if content else None)


@pytest.fixture
def stack():
    s = Stack()
    yield s
    s.ami.stopService()
    s.store.close()


@pytest_twisted.ensureDeferred
async def test_current_calls_of_an_extension(stack):
    code, body = await stack.request("GET", "/extension/1000/current_calls/")
    assert code == 200
    [call] = body["call_list"]
    assert call["call_api_id"] == "trunk-1"
    assert call["call_flow"] == "in"
    assert call["caller_id_number"] == "380501234567"
    assert call["called_extension"] == {"id": "1000", "name": "Operator 1000"}
    code, body = await stack.request("GET", "/extension/@1000/current_calls")
    assert code == 200 and len(body["call_list"]) == 1
    none = await stack.request("GET", "/extension/1001/current_calls/")
    assert none == (200, {"call_list": []})
    code, body = await stack.request("GET", "/extension/1999/current_calls/")
    assert code == 404 and body["error"]["code"] == "unknown_extension"


@pytest_twisted.ensureDeferred
async def test_put_hold_and_delete(stack):
    code, body = await stack.request("PUT", "/extension/1000/current_calls/trunk-1",
                                     {"action": "hold"})
    assert (code, body) == (200, {"status": "success"})
    assert stack.sent()[-1] == "Redirect"
    code, body = await stack.request("DELETE", "/extension/1000/current_calls/trunk-1")
    assert (code, body) == (204, None)
    assert stack.sent()[-2:] == ["Hangup", "Hangup"]


@pytest.mark.parametrize(
    "path,body,status,code,field",
    [
        ("/extension/1000/current_calls/trunk-1", {"action": "fly", "send_dst": "1001"}, 400,
         "invalid_action", "action"),
        ("/extension/1000/current_calls/trunk-1", {}, 400, "missing_action", "action"),
        ("/extension/1000/current_calls/trunk-1", {"action": "transfer"}, 400,
         "missing_send_dst", "send_dst"),
        ("/extension/1000/current_calls/trunk-1", {"action": "transfer",
         "send_dst": "1001\r\n\r\nAction: Originate"}, 400, "invalid_send_dst", "send_dst"),
        ("/extension/1000/current_calls/trunk-1", {"action": "whisper",
         "send_dst": "1001&PJSIP/1002"}, 400, "invalid_send_dst", "send_dst"),
        ("/extension/1000/current_calls/nope", {"action": "hold"}, 404, "unknown_call",
         "call_api_id"),
        ("/extension/1999/current_calls/trunk-1", {"action": "hold"}, 404, "unknown_extension",
         "extension_id"),
        ("/extension/1001/current_calls/trunk-1", {"action": "park"}, 404, "unknown_call",
         "call_api_id"),
        ("/extension/1000/current_calls/trunk-1", {"action": "offhold"}, 409, "not_on_hold",
         None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_4xx_and_reach_nothing(stack, path, body, status, code, field):
    got, answer = await stack.request("PUT", path, body)
    assert got == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"].get("field") == field
    assert stack.sent() == []


@pytest_twisted.ensureDeferred
async def test_call_model_control_and_automated_calls(stack):
    code, body = await stack.request("POST", "/api/calls/hangupCall", {"generalCallID": "c-x"})
    assert code == 404 and body["error"]["field"] == "generalCallID"
    code, body = await stack.request("POST", "/api/calls/attendedCallTransfer",
                                     {"generalCallID": "trunk-1", "phone_number": "1000;x"})
    assert code == 400 and body["error"]["field"] == "phone_number"
    code, body = await stack.request("POST", "/api/calls/callWithAnnouncement",
                                     {"phone_number": "0443334023", "voiceFileID": "4"})
    assert code == 400 and body["error"] == {
        "code": "unknown_voiceFileID", "field": "voiceFileID",
        "message": "voiceFileID '4' is not a known recorded message"}
    code, body = await stack.request("POST", "/api/calls/callWithInteractiveVoiceResponse",
                                     {"phone_number": "0443334023", "ivrName": "nope"})
    assert code == 400 and body["error"]["code"] == "unknown_ivrName"
    assert stack.sent() == []
    code, body = await stack.request("POST", "/api/calls/callWithAnnouncement",
                                     {"phone_number": "0443334023", "voiceFileID": "announcement",
                                      "order_id": "o-7"})
    assert code == 200 and body["status"] == "success"
    call_id = body["generalCallID"]
    assert stack.store.words(call_id) == ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP"]
    code, body = await stack.request("POST", "/api/calls/callWithInteractiveVoiceResponse",
                                     {"phone_number": "0443334023", "ivrName": "confirm"})
    assert code == 200 and body["generalCallID"] != call_id
    assert stack.sent() == ["Originate", "Originate"]


def test_openapi_document_takes_these_parts(stack):
    document = openapi.build_document([stack.current, stack.calls])
    assert "/extension/{extension_id}/current_calls/{call_api_id}" in document["paths"]
    assert "/api/calls/callWithInteractiveVoiceResponse" in document["paths"]
    assert "CallMdl" in document["components"]["schemas"]


@pytest_twisted.ensureDeferred
async def test_automated_calls_take_only_configured_trunks(stack):
    for path, extra in [("/api/calls/callWithAnnouncement", {"voiceFileID": "announcement"}),
                        ("/api/calls/callWithInteractiveVoiceResponse", {"ivrName": "confirm"})]:
        code, body = await stack.request("POST", path, {"phone_number": "0443334023",
                                                        "trunkNumber": "101", **extra})
        assert (code, body["error"]) == (400, {
            "code": "unknown_trunk", "field": "trunkNumber",
            "message": "trunkNumber '101' is not a configured trunk"})
    assert stack.sent() == []
    code, body = await stack.request("POST", "/api/calls/callWithAnnouncement", {
        "phone_number": "0443334023", "voiceFileID": "announcement", "trunkNumber": "pstn"})
    assert code == 200 and stack.sent() == ["Originate"]
