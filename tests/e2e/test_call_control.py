"""Call control end to end: the real agi_app (HTTP API, FastAGI, AMI, store,
call tracker) against the sandbox Asterisk 22 and SIPp phones.

Every action of ``PUT /extension/{id}/current_calls/{call_api_id}`` is
carried out on a live call and checked on the PBX (its channels, bridges and
applications) and on the phones (who rang, who answered, who was hung up);
DELETE and the call model's hangupCall/attendedCallTransfer end or move
calls placed by makeCall, with the history's final status; bad input is a
4xx and leaves the PBX as it was.

A "client calling in" is an Originate of the PSTN number into the sandbox's
``[sandbox-from-pstn]`` context, whose Dial rings the operator: for the
operator's phone and for agi_app that is a call from the trunk.
"""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted
from callflow import Api, reactor, wait_final, wait_for, wait_pbx, words

# test_announcement and test_ivr start their agi_app with this name
from callflow import start_sandbox_app as start_control_app  # noqa: F401

from agi_app.sandbox.phones import answer, no_answer

CLIENT = "380501234567"

# Every test runs against the ``app`` fixture (conftest.py): the whole
# agi_app with the settings of callflow.app_config.

# -- helpers -------------------------------------------------------------------


async def pbx_channels(sandbox) -> list[dict[str, str]]:
    return await sandbox.pbx.channels_deferred(reactor())


def chan(chans: list[dict], prefix: str) -> dict | None:
    return next((c for c in chans if c["channel"].startswith(prefix)), None)


def bridged(chans: list[dict], a: str, b: str) -> bool:
    """Channels named ``a*`` and ``b*`` are in the same bridge."""
    x, y = chan(chans, a), chan(chans, b)
    return bool(x and y and x["bridge_id"] and x["bridge_id"] == y["bridge_id"])


async def client_calls_in(app, sandbox, ext: str, number: str = CLIENT) -> str:
    """A client calls ``ext`` from the trunk; returns the call's call_api_id
    once the tracker sees the call at the extension."""
    d = app.ami.originate(
        f"PJSIP/{number}@pstn", context="sandbox-from-pstn", exten=ext, priority=1,
        caller_id=f'"Client {number[-4:]}" <{number}>', timeout_ms=5000,
    )  # fmt: skip
    result = await d
    assert result.success, result
    calls = await wait_for(lambda: app.tracker.calls_of_extension(ext), what=f"a call at {ext}")
    return calls[0]["call_api_id"]


async def talking(app, ext: str) -> dict:
    return (await wait_for(
        lambda: [c for c in app.tracker.calls_of_extension(ext) if c["state"] == "talking"],
        what=f"{ext} talking",
    ))[0]  # fmt: skip


async def client_talking(app, sandbox, ext: str) -> str:
    """A client calls ``ext`` from the trunk and the operator answers;
    returns the call's call_api_id once the tracker sees them talking."""
    call_api_id = await client_calls_in(app, sandbox, ext)
    await talking(app, ext)
    return call_api_id


async def put(api: Api, ext: str, call_api_id: str, body: dict) -> tuple[int, Any]:
    return await api.put(f"/extension/{ext}/current_calls/{call_api_id}", body)


async def delete(api: Api, ext: str, call_api_id: str) -> int:
    code, _ = await api.delete(f"/extension/{ext}/current_calls/{call_api_id}")
    return code


# -- the tests -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_current_calls_of_an_incoming_and_a_click_to_call(sandbox, app, api):
    sandbox.phones.start("1000", answer(after=0.2))
    sandbox.phones.start("1001", answer(after=0.2))
    events = []
    app.tracker.subscribe(events.append)
    call_api_id = await client_calls_in(app, sandbox, "1000")
    mine = await talking(app, "1000")
    code, body = await api.get("/extension/1000/current_calls/")
    assert code == 200, body
    [call] = body["call_list"]
    assert call["call_api_id"] == call_api_id == mine["call_api_id"]
    assert call["call_flow"] == "in"
    assert (call["caller_id_number"], call["caller_id_name"]) == (CLIENT, "Client 4567")
    assert call["called_extension"] == {"id": "1000", "name": "Operator 1000"}
    assert call["caller_extension"] is None
    assert call["real_call"] is True
    assert call["answer_time_gmt"] and call["init_time_gmt"] <= call["answer_time_gmt"]
    # A click-to-call of 1001: the operator's leg is an outgoing call.
    sandbox.pstn.set("380639920071", answer_after=0.2)
    code, placed = await api.get("/api/makeCall.json", sip="1001", phone="380639920071",
                                 order_id="cc-1", external_key="cc-k1", playback_waiting="0")
    assert code == 200, placed
    out = await talking(app, "1001")
    assert out["call_api_id"] == placed["call_id"] == out["call_id"]
    assert out["call_flow"] == "out"
    assert out["called_number"] == "380639920071"
    assert out["caller_extension"]["id"] == "1001"
    # DELETE hangs both calls up; the click-to-call's history gets its final status.
    assert await delete(api, "1000", call_api_id) == 204
    assert await delete(api, "1001", placed["call_id"]) == 204
    history = await wait_final(app, placed["call_id"])
    assert words(history)[-1] == "FINISH"
    await wait_pbx(sandbox, lambda chans: chans == [], what="no channel left")
    op = await sandbox.operator("1000").wait_for_hangup(reactor=reactor())
    assert op["hung_up_by"] == "remote"
    # The call events of both operators' legs, in order, with their direction.
    seen = {ext: [(e.kind, e.direction, e.status) for e in events if e.extension == ext]
            for ext in ("1000", "1001")}
    assert seen == {
        "1000": [("ringing", "in", None), ("answered", "in", None), ("hungup", "in", "ANSWER")],
        "1001": [("ringing", "out", None), ("answered", "out", None),
                 ("hungup", "out", "ANSWER")],
    }, seen
    assert {e.call_id for e in events if e.extension == "1001"} == {placed["call_id"]}


@pytest_twisted.ensureDeferred
async def test_blind_transfer_moves_the_client_and_releases_the_operator(sandbox, app, api):
    operator = sandbox.phones.start("1000", answer(after=0.2))
    target = sandbox.phones.start("1001", answer(after=0.3))
    call_api_id = await client_talking(app, sandbox, "1000")
    code, body = await put(api, "1000", call_api_id, {"action": "transfer", "send_dst": "1001"})
    assert (code, body) == (200, {"status": "success"})
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1001-"),
                           what="client bridged with 1001")
    assert chan(chans, "PJSIP/1000-") is None, "the operator must be released"
    assert (await operator.wait_for_hangup(reactor=reactor()))["hung_up_by"] == "remote"
    rang = await target.wait_for_answer(reactor=reactor())
    assert rang["from_number"] == CLIENT  # 1001 sees who is calling
    # The tracker follows: the call is 1001's now, under the same call_api_id.
    moved = await talking(app, "1001")
    assert moved["call_api_id"] == call_api_id
    assert app.tracker.calls_of_extension("1000") == []


@pytest_twisted.ensureDeferred
async def test_attended_transfer_consults_then_hands_over(sandbox, app, api):
    operator = sandbox.phones.start("1000", answer(after=0.2))
    target = sandbox.phones.start("1002", answer(after=0.3))
    call_api_id = await client_talking(app, sandbox, "1000")
    code, body = await put(api, "1000", call_api_id,
                           {"action": "attended_transfer", "send_dst": "1002"})
    assert code == 200, body
    # The client waits on music on hold while 1000 talks to 1002.
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/1000-", "PJSIP/1002-"),
                           what="operator consulting 1002")
    client = chan(chans, "PJSIP/pstn-")
    assert (client["application"], client["context"]) == ("MusicOnHold", "agi-app-hold")
    # The operator hangs up: 1002 gets the client.
    op_chan = chan(chans, "PJSIP/1000-")
    await app.ami.hangup(op_chan["uniqueid"])
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1002-"),
                           what="client bridged with 1002")
    assert chan(chans, "PJSIP/1000-") is None
    assert (await operator.wait_for_hangup(reactor=reactor()))["end"] is not None
    assert (await target.wait_for_answer(reactor=reactor()))["answer_time"]
    assert (await talking(app, "1002"))["call_api_id"] == call_api_id


@pytest_twisted.ensureDeferred
async def test_attended_call_transfer_and_hangup_call_of_make_call(sandbox, app, api):
    sandbox.phones.start("1003", answer(after=0.2))
    target = sandbox.phones.start("1004", answer(after=0.2))
    sandbox.phones.start("1005", answer(after=0.2))
    sandbox.pstn.set("380639920072", answer_after=0.2)
    sandbox.pstn.set("380639920073", answer_after=0.2)
    code, moved = await api.get("/api/makeCall.json", sip="1003", phone="380639920072",
                                order_id="at-1", external_key="at-k1", playback_waiting="0")
    code2, ended = await api.get("/api/makeCall.json", sip="1005", phone="380639920073",
                                 order_id="at-2", external_key="at-k2", playback_waiting="0")
    assert (code, code2) == (200, 200), (moved, ended)
    await talking(app, "1003")
    await talking(app, "1005")
    # hangupCall ends a call placed by makeCall.
    code, body = await api.post("/api/calls/hangupCall", {"generalCallID": ended["call_id"]})
    assert (code, body) == (200, {"status": "success", "generalCallID": ended["call_id"]})
    assert words(await wait_final(app, ended["call_id"]))[-1] == "FINISH"
    code, body = await api.post("/api/calls/hangupCall", {"generalCallID": ended["call_id"]})
    assert code == 409 and body["error"]["code"] == "call_ended"
    # attendedCallTransfer moves the other one to 1004.
    code, body = await api.post("/api/calls/attendedCallTransfer",
                                {"generalCallID": moved["call_id"], "phone_number": "1004"})
    assert code == 200, body
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/1003-", "PJSIP/1004-"),
                           what="operator consulting 1004")
    await app.ami.hangup(chan(chans, "PJSIP/1003-")["uniqueid"])
    await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1004-"),
                   what="client bridged with 1004")
    seen = await target.wait_for_answer(reactor=reactor())
    assert seen["answer_time"]
    # The client's conversation goes on with 1004 under the same call.
    assert (await talking(app, "1004"))["call_api_id"] == moved["call_id"]


@pytest_twisted.ensureDeferred
async def test_eavesdrop_whisper_and_conference(sandbox, app, api):
    for ext in ("1000", "1002", "1004"):
        sandbox.phones.start(ext, answer(after=0.2))
    listeners = {"eavesdrop": "1001", "whisper": "1003", "conference": "1005"}
    phones = {mode: sandbox.phones.start(ext, answer(after=0.2))
              for mode, ext in listeners.items()}
    calls = {}
    for ext, mode, number in (("1000", "eavesdrop", "380501110001"),
                              ("1002", "whisper", "380501110002"),
                              ("1004", "conference", "380501110003")):
        calls[mode] = (ext, await client_calls_in(app, sandbox, ext, number))
    for mode, (ext, call_api_id) in calls.items():
        await talking(app, ext)
        code, body = await put(api, ext, call_api_id, {"action": mode, "send_dst": listeners[mode]})
        assert code == 200, body
    options = {"eavesdrop": "quE", "whisper": "quEw", "conference": "quEB"}
    for mode, (ext, call_api_id) in calls.items():
        listener = listeners[mode]
        chans = await wait_pbx(
            sandbox, lambda c, p=f"PJSIP/{listener}-": (chan(c, p) or {}).get("application")
            == "ChanSpy", what=f"{listener} in ChanSpy")  # fmt: skip
        spy = chan(chans, f"PJSIP/{listener}-")
        spied = chan(chans, f"PJSIP/{ext}-")
        assert spy["data"] == f"{spied['uniqueid']},{options[mode]}", spy
        # the conversation itself is untouched
        assert bridged(chans, f"PJSIP/{ext}-", "PJSIP/pstn-") or spied["bridge_id"]
        answered = await phones[mode].wait_for_answer(reactor=reactor())
        assert answered["from_name"] == f"{mode} {ext}"
        # the listener hears the call: audio flows to its phone
        await wait_for(lambda p=phones[mode]: p.calls()[0]["media_packets"] > 20,
                       what=f"audio to the {mode} phone")
        view = (await wait_for(lambda lst=listener: app.tracker.calls_of_extension(lst)))[0]
        assert view["call_api_id"] == call_api_id and view["real_call"] is False


@pytest_twisted.ensureDeferred
async def test_hold_and_offhold_bring_the_client_back_to_the_same_operator(sandbox, app, api):
    sandbox.phones.start("1006", answer(after=0.2))
    call_api_id = await client_talking(app, sandbox, "1006")
    before = await pbx_channels(sandbox)
    client_id = chan(before, "PJSIP/pstn-")["uniqueid"]
    op_id = chan(before, "PJSIP/1006-")["uniqueid"]
    code, body = await put(api, "1006", call_api_id, {"action": "hold"})
    assert code == 200, body
    chans = await wait_pbx(
        sandbox, lambda c: (chan(c, "PJSIP/pstn-") or {}).get("application") == "MusicOnHold",
        what="client on music on hold")
    assert not chan(chans, "PJSIP/pstn-")["bridge_id"]
    assert chan(chans, "PJSIP/1006-")["context"] == "agi-app-hold"
    await wait_for(lambda: app.tracker.calls_of_extension("1006")[0]["state"] == "hold")
    # Music really reaches the client while it is held.
    pstn = sandbox.pstn
    held = pstn.calls()[-1]["media_packets"]
    await wait_for(lambda: pstn.calls()[-1]["media_packets"] > held + 25, what="hold music")
    code, body = await put(api, "1006", call_api_id, {"action": "hold"})
    assert code == 409 and body["error"]["code"] == "not_connected"
    code, body = await put(api, "1006", call_api_id, {"action": "offhold"})
    assert code == 200, body
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1006-"),
                           what="client back with 1006")
    # the very same channels: the same operator, the same client
    assert chan(chans, "PJSIP/pstn-")["uniqueid"] == client_id
    assert chan(chans, "PJSIP/1006-")["uniqueid"] == op_id
    assert (await talking(app, "1006"))["call_api_id"] == call_api_id


@pytest_twisted.ensureDeferred
async def test_park_and_retrieve(sandbox, app, api):
    operator = sandbox.phones.start("1007", answer(after=0.2))
    retriever = sandbox.phones.start("1008", answer(after=0.2))
    call_api_id = await client_talking(app, sandbox, "1007")
    code, body = await put(api, "1007", call_api_id, {"action": "park"})
    assert code == 200, body
    space = body["parking_space"]
    assert space.isdigit()
    assert (await operator.wait_for_hangup(reactor=reactor()))["hung_up_by"] == "remote"
    parked = await sandbox.pbx.cli_deferred("parking show default", reactor())
    assert re.search(rf"Space\s*:\s*{space}\b", parked) and "PJSIP/pstn-" in parked, parked
    assert app.tracker.calls_of_extension("1007") == []
    # Anyone can take it back by dialling the space.
    result = await app.ami.originate("PJSIP/1008", context="parkedcalls", exten=space,
                                     priority=1, timeout_ms=5000)
    assert result.success, result
    await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1008-"),
                   what="parked client retrieved by 1008")
    assert (await retriever.wait_for_answer(reactor=reactor()))["answer_time"]


@pytest_twisted.ensureDeferred
async def test_pickup_of_a_call_ringing_elsewhere(sandbox, app, api):
    ringing = sandbox.phones.start("1009", no_answer())
    picker = sandbox.phones.start("1000", answer(after=0.2))
    call_api_id = await client_calls_in(app, sandbox, "1009")
    await wait_for(lambda: app.tracker.calls_of_extension("1009")[0]["state"] == "ringing")
    code, body = await put(api, "1009", call_api_id, {"action": "pickup", "send_dst": "1000"})
    assert code == 200, body
    await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1000-"),
                   what="client connected to the picker")
    rung = await ringing.wait_for_hangup(reactor=reactor())
    assert rung["end"] == "cancel"
    assert (await picker.wait_for_answer(reactor=reactor()))["from_number"] == CLIENT
    assert (await talking(app, "1000"))["call_api_id"] == call_api_id
    # An answered call cannot be picked up.
    code, body = await put(api, "1000", call_api_id, {"action": "pickup", "send_dst": "1009"})
    assert code == 409 and body["error"]["code"] == "not_ringing"


@pytest_twisted.ensureDeferred
async def test_bad_input_is_4xx_and_nothing_happens_on_the_pbx(sandbox, app, api):
    sandbox.phones.start("1001", answer(after=0.2))
    call_api_id = await client_talking(app, sandbox, "1001")
    before = await pbx_channels(sandbox)
    cases = [
        ("1001", call_api_id, {"action": "teleport", "send_dst": "1002"}, 400, "action"),
        ("1001", call_api_id, {"action": "transfer"}, 400, "send_dst"),
        ("1001", call_api_id, {"action": "eavesdrop", "send_dst": ""}, 400, "send_dst"),
        ("1001", call_api_id, {"action": "transfer", "send_dst": "1002&PJSIP/1003"}, 400,
         "send_dst"),
        ("1001", call_api_id, {"action": "whisper", "send_dst": "1002,1,G(x)"}, 400, "send_dst"),
        ("1001", call_api_id, {"action": "transfer",
                               "send_dst": "1002\r\n\r\nAction: Hangup\r\nChannel: all"},
         400, "send_dst"),
        ("1001", call_api_id, {"action": "pickup", "send_dst": "Local/1@x"}, 400, "send_dst"),
        ("1999", call_api_id, {"action": "hold"}, 404, "extension_id"),
        ("1001", "1700000000.999", {"action": "hold"}, 404, "call_api_id"),
        ("1002", call_api_id, {"action": "park"}, 404, "call_api_id"),
    ]
    for ext, cid, body, status, field in cases:
        code, answer_ = await put(api, ext, cid, body)
        assert code == status, (body, answer_)
        assert answer_["error"]["field"] == field, answer_
        assert answer_["error"]["message"]
    assert await delete(api, "1999", call_api_id) == 404
    after = await pbx_channels(sandbox)
    assert [(c["uniqueid"], c["application"], c["bridge_id"]) for c in after] == [
        (c["uniqueid"], c["application"], c["bridge_id"]) for c in before
    ]
    assert len(sandbox.phones.operator("1002").calls()) == 0
    ended = await api.post("/api/calls/hangupCall", {"generalCallID": "no-such-call"})
    assert ended[0] == 404
