"""Operator-first click-to-call end to end: the real agi_app (HTTP API,
FastAGI, AMI, store) against the sandbox Asterisk 22 and SIPp phones.

Calls that do not share a phone run in parallel inside one test to keep the
suite short; every expectation is checked on the call log and, where it
matters, on what the phones themselves saw."""

from __future__ import annotations

import wave

import pytest
import pytest_twisted
from callflow import (
    app_config,
    make_call,
    reactor,
    recording_settled,
    seconds_between,
    start_app,
    wait_final,
    wait_status,
    words,
)
from twisted.internet import defer

from agi_app.sandbox.phones import answer, busy, no_answer

HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    # a short client ring time keeps CLIENT_NOANSWER quick; no-such-trunk is
    # configured but missing on the PBX, so a call through it ends in ERROR
    config = app_config(sandbox, tmp_path, AGI_APP_DIALING_CALL_TIME_TO_CLIENT="3",
                        AGI_APP_DIALING_TRUNKS="no-such-trunk")
    application = await start_app(config)
    yield application
    await application.stop()


@pytest_twisted.ensureDeferred
async def test_call_is_connected_recorded_and_logged_in_order(sandbox, app, api):
    operator = sandbox.phones.start("1000", answer(after=0.2))
    sandbox.pstn.set("380639920001", answer_after=0.3, hangup_after=3)
    call_id = await make_call(
        api, sip="1000", phone="380639920001", order_id="ord-1", external_key="k-finish"
    )
    entries = await wait_final(app, call_id)
    assert words(entries) == HAPPY
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    talk = seconds_between(entries[4], entries[5])
    assert 2.0 <= talk <= 4.5, entries
    # The operator's phone showed the client's number.
    seen = operator.calls()[0]
    assert seen["from_number"] == "380639920001"
    # The recording: tied to the order, real audio of about the talk time.
    code, body = await api.get("/api/orderRecords.json", order_id="ord-1")
    assert code == 200, body
    [call] = body["calls"]
    assert call["call_id"] == call_id and call["final_status"] == "FINISH"
    [record] = call["records"]
    rec = await recording_settled(app, record["record_id"])
    with wave.open(rec["path"], "rb") as w:
        seconds = w.getnframes() / w.getframerate()
        frames = w.readframes(w.getnframes())
    assert abs(seconds - talk) <= 1.5, (seconds, talk)
    assert any(frames[i] for i in range(0, len(frames), 2)), "the recording is silent"
    # And it can be downloaded.
    code, audio = await api.get(f"/records/{record['record_id']}")
    assert code == 200 and audio[:4] == b"RIFF"


@pytest_twisted.ensureDeferred
async def test_operator_outcomes_busy_noanswer_offline(sandbox, app, api):
    sandbox.phones.start("1001", busy())
    sandbox.phones.start("1002", no_answer())
    offline = sandbox.phones.offline("1003")
    busy_id = await make_call(
        api, sip="1001", phone="380639920002", order_id="o2", external_key="k-b"
    )
    noanswer_id = await make_call(
        api, sip="1002", phone="380639920003", order_id="o3", external_key="k-na",
        call_time_to_ext="2",
    )  # fmt: skip
    offline_id = await make_call(
        api, sip="1003", phone="380639920004", order_id="o4", external_key="k-off"
    )
    busy_h, noanswer_h, offline_h = await defer.gatherResults(
        [
            defer.ensureDeferred(wait_final(app, busy_id)),
            defer.ensureDeferred(wait_final(app, noanswer_id)),
            defer.ensureDeferred(wait_final(app, offline_id)),
        ]
    )
    assert words(busy_h) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    assert words(noanswer_h) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_NOANSWER"]
    rang = seconds_between(noanswer_h[1], noanswer_h[2])
    assert 1.5 <= rang <= 3.0, f"call_time_to_ext=2 but the phone rang {rang:.2f} s"
    assert words(offline_h)[-1] == "OPERATOR_OFFLINE"
    assert offline.calls() == [], "an offline operator must not be rung"
    # Nothing reached the client on any of them.
    assert not [
        c
        for c in sandbox.pstn.calls()
        if c["number"] in ("380639920002", "380639920003", "380639920004")
    ]


@pytest_twisted.ensureDeferred
async def test_client_outcomes_busy_noanswer_cancel_error(sandbox, app, api):
    for number in ("1004", "1005"):
        sandbox.phones.start(number, answer())
    # The operator who hangs up while the client still rings.
    sandbox.phones.start("1006", answer(hangup_after=1.0))
    sandbox.phones.start("1007", answer())
    sandbox.pstn.set("380630000486", "busy")
    sandbox.pstn.set("380630000408", "no_answer")
    sandbox.pstn.set("380630000487", "no_answer")
    common = {"playback_waiting": "0"}
    ids = {
        "busy": await make_call(api, sip="1004", phone="380630000486", order_id="c1",
                                external_key="k-cb", **common),
        "noanswer": await make_call(api, sip="1005", phone="380630000408", order_id="c2",
                                    external_key="k-cna", **common),
        "cancel": await make_call(api, sip="1006", phone="380630000487", order_id="c3",
                                  external_key="k-cc", **common),
        "error": await make_call(api, sip="1007", phone="380630000500", order_id="c4",
                                 external_key="k-ce", trunk="no-such-trunk", **common),
    }  # fmt: skip
    results = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, i)) for i in ids.values()]
    )
    history = dict(zip(ids, results, strict=True))
    prefix = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO"]
    assert words(history["busy"]) == [*prefix, "CLIENT_BUSY"]
    assert words(history["noanswer"]) == [*prefix, "CLIENT_NOANSWER"]
    assert words(history["cancel"]) == [*prefix, "CLIENT_CANCEL"]
    assert words(history["error"])[-1] == "ERROR"
    assert "CLIENT_PICKUP" not in words(history["error"])


@pytest_twisted.ensureDeferred
async def test_limit_call_time_ends_the_conversation(sandbox, app, api):
    sandbox.phones.start("1008", answer())
    sandbox.pstn.set("380639920010", answer_after=0.2)  # talks until hung up
    call_id = await make_call(
        api, sip="1008", phone="380639920010", order_id="lim", external_key="k-lim",
        limit_call_time="2", playback_waiting="0",
    )  # fmt: skip
    entries = await wait_final(app, call_id, timeout=20)
    assert words(entries) == HAPPY
    talk = seconds_between(entries[4], entries[5])
    assert 1.0 <= talk <= 3.0, f"limit 2 s, talked {talk:.2f} s"
    client = await sandbox.pstn.wait_for_hangup(number="380639920010", reactor=reactor())
    assert client["hung_up_by"] == "remote", client


@pytest_twisted.ensureDeferred
async def test_caller_id_for_employee_and_the_waiting_announcement(sandbox, app, api):
    op_with = sandbox.phones.start("1000", answer(after=0.2))
    sandbox.phones.start("1001", answer(after=0.2))
    sandbox.pstn.set("380639920020", answer_after=0.2, hangup_after=0.5)
    sandbox.pstn.set("380639920021", answer_after=0.2, hangup_after=0.5)
    with_wait = await make_call(
        api, sip="1000", phone="380639920020", order_id="cid", external_key="k-cid",
        caller_id_for_employee="Order 15 Ivanov",
    )  # fmt: skip
    without = await make_call(
        api, sip="1001", phone="380639920021", order_id="cid", external_key="k-nowait",
        playback_waiting="0",
    )  # fmt: skip
    a, b = await defer.gatherResults(
        [
            defer.ensureDeferred(wait_final(app, with_wait)),
            defer.ensureDeferred(wait_final(app, without)),
        ]
    )
    assert words(a) == HAPPY and words(b) == HAPPY
    shown = op_with.calls()[0]
    assert shown["from_name"] == "Order 15 Ivanov"
    assert shown["from_number"] == "380639920020"
    # The client is dialled only after the announcement (about 3 s of speech).
    waited = seconds_between(a[2], a[3])
    at_once = seconds_between(b[2], b[3])
    assert waited >= 2.0, f"client dialled {waited:.2f} s after pickup despite the announcement"
    assert at_once < 1.0, f"client dialled {at_once:.2f} s after pickup without announcement"


@pytest_twisted.ensureDeferred
async def test_phone_to_phone_and_ext_to_phone(sandbox, app, api):
    sandbox.phones.start("1002", answer(after=0.5))
    sandbox.phones.start("1003", answer(after=0.2))
    sandbox.pstn.set("380631110001", answer_after=0.2, hangup_after=1)
    sandbox.pstn.set("380631110002", answer_after=0.2, hangup_after=1)
    sandbox.pstn.set("380631110003", answer_after=0.2, hangup_after=1)
    sandbox.pstn.set("380631110004", answer_after=0.2, hangup_after=1)
    code, p2p = await api.post(
        "/api/calls/phoneToPhone",
        {"phoneNumber1": "380631110001", "phoneNumber2": "380631110002", "trunkNumber": "pstn",
         "playbackWaiting": False},
    )  # fmt: skip
    assert code == 200 and p2p["status"] == "success", p2p
    code, sync = await api.post(
        "/api/calls/extToPhone",
        {"ext_number": "1002", "phone_number": "380631110003", "playbackWaiting": False},
    )
    assert code == 200, sync
    assert sync["result"] == "OPERATOR_PICKUP"
    code, quick = await api.post(
        "/api/calls/extToPhone",
        {"ext_number": "1003", "phone_number": "380631110004", "async": True,
         "playbackWaiting": False},
    )  # fmt: skip
    assert code == 200 and "result" not in quick, quick
    histories = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, c["generalCallID"])) for c in (p2p, sync, quick)]
    )
    for entries in histories:
        assert words(entries) == HAPPY, entries
    numbers = {c["number"] for c in sandbox.pstn.calls()}
    assert {"380631110001", "380631110002"} <= numbers


@pytest_twisted.ensureDeferred
async def test_same_external_key_places_one_call(sandbox, app, api):
    operator = sandbox.phones.start("1004", answer(after=0.2))
    sandbox.pstn.set("380639920030", answer_after=0.2, hangup_after=0.5)
    params = dict(sip="1004", phone="380639920030", order_id="idem", external_key="k-idem",
                  playback_waiting="0")  # fmt: skip
    first = await make_call(api, **params)
    second = await make_call(api, **params)
    assert first == second
    code, body = await api.get("/api/makeCall.json", **{**params, "phone": "380639920031"})
    assert code == 409, body
    assert body["call_id"] == first and body["error"]["code"]
    await wait_final(app, first)
    assert len(operator.calls()) == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("phone", "123&PJSIP/1001"),
        ("phone", "123,1,G(x)"),
        ("sip", "1000\r\nAction: Hangup"),
        ("phone", "٣٨٠٦٣٩٩٢٠٠٠٠"),
        ("phone", "1234567890123456"),
        ("sip", ""),
        ("caller_id_for_employee", 'x" <1>\r\nAction: Originate'),
        ("trunk", "pstn/../x"),
        ("trunk", "1001"),  # an extension, not a configured trunk: unknown_trunk
        ("order_id", "a/b"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_is_refused_and_reaches_nothing(sandbox, app, api, field, value):
    params = dict(sip="1000", phone="380639920040", order_id="bad", external_key="k-bad")
    params[field] = value
    code, body = await api.get("/api/makeCall.json", **params)
    assert code == 400, body
    assert body["error"]["field"] == field
    assert sandbox.channels() == []
    assert await app.store.get_call_by_external_key("k-bad") is None


@pytest_twisted.ensureDeferred
async def test_pbx_unreachable_answers_503_and_logs_call_then_error(sandbox, tmp_path, api):
    config = app_config(sandbox, tmp_path, AGI_APP_AMI_PORT="1")  # nothing listens there
    app = await start_app_unconnected(config)
    try:
        code, body = await api.get(
            "/api/makeCall.json", sip="1000", phone="380639920050", order_id="down",
            external_key="k-down",
        )  # fmt: skip
        assert code == 503, body
        code, hist = await api.get("/api/orderHistory.json", order_id="down")
        assert words(hist["history"]) == ["CALL", "ERROR"]
        code, health = await api.get("/health")
        assert code == 503 and health["ami"]["connected"] is False
    finally:
        await app.stop()


async def start_app_unconnected(config):
    from agi_app.app import Application

    app = Application(config, reactor())
    await app.start()
    return app


@pytest_twisted.ensureDeferred
async def test_operator_hangs_up_during_the_announcement(sandbox, app, api):
    sandbox.phones.start("1009", answer(after=0.1, hangup_after=1.0))
    call_id = await make_call(
        api, sip="1009", phone="380639920060", order_id="early", external_key="k-early"
    )
    entries = await wait_final(app, call_id)
    assert words(entries) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CANCEL"]
    assert "380639920060" not in {c["number"] for c in sandbox.pstn.calls()}
    await wait_status(app, call_id, "CLIENT_CANCEL")
