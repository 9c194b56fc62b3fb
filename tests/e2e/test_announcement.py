"""callWithAnnouncement end to end: the client's phone answers, receives the
recorded message for as long as the file lasts, and the PBX hangs up; the
history shows it.  Also the client's failures, bad input, and FastAGI being
unreachable (the dialplan still plays the message and the call still ends
with its final status)."""

from __future__ import annotations

import re

import pytest_twisted
from callflow import Api, reactor, wait_final, words
from test_call_control import start_control_app
from twisted.internet import defer

from agi_app import sounds
from agi_app.sandbox.phones import answer

FILE = sounds.default_source_dir() / "en" / "announcement.wav"
PACKETS_PER_SECOND = 50  # 20 ms RTP packets


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    application = await start_control_app(
        sandbox, tmp_path, AGI_APP_DIALING_CALL_TIME_TO_CLIENT="2"
    )
    yield application
    await application.stop()


async def the_call(sandbox, number: str) -> dict:
    """The PSTN phone's record of the ended call to ``number``."""
    return await sandbox.pstn.wait_for_hangup(number=number, reactor=reactor())


@pytest_twisted.ensureDeferred
async def test_the_client_hears_the_whole_message_then_the_call_ends(sandbox, app):
    api = Api()
    length = sounds.duration(FILE)
    sandbox.pstn.set("380632220001", answer(after=0.3))
    sandbox.pstn.set("380632220486", "busy")
    sandbox.pstn.set("380632220408", "no_answer")
    placed = {}
    for number in ("380632220001", "380632220486", "380632220408"):
        code, body = await api.post(
            "/api/calls/callWithAnnouncement",
            {"phone_number": number, "voiceFileID": "announcement", "order_id": "ann-1"},
        )
        assert code == 200 and body["status"] == "success", body
        placed[number] = body["generalCallID"]
    heard, busy, unanswered = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, placed[n], timeout=20)) for n in placed]
    )
    assert words(heard) == ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
    played = re.fullmatch(r"announcement played \(([0-9.]+) s\)", heard[-1]["detail"] or "")
    assert played and abs(float(played.group(1)) - length) <= 0.3, (heard[-1], length)
    call = await app.store.get_call(placed["380632220001"])
    assert abs(call["talk_seconds"] - length) < 0.5, (call["talk_seconds"], length)
    assert words(busy) == ["CALL", "CLIENT_CALLTO", "CLIENT_BUSY"]
    assert words(unanswered) == ["CALL", "CLIENT_CALLTO", "CLIENT_NOANSWER"]
    # What the client's phone saw: answered, audio for the file's length,
    # then the PBX hung up.
    phone = await the_call(sandbox, "380632220001")
    assert phone["hung_up_by"] == "remote", phone
    connected = phone["end_time"] - phone["answer_time"]
    assert length - 0.3 <= connected <= length + 1.0, (connected, length)
    expected = length * PACKETS_PER_SECOND
    print(f"announcement: file {length:.2f} s, client connected {connected:.2f} s, "
          f"{phone['media_packets']} RTP packets received (expected about {expected:.0f})")
    assert 0.85 * expected <= phone["media_packets"] <= 1.3 * expected + 10, (
        phone["media_packets"], expected,
    )  # fmt: skip
    # The history is the CRM's too.
    code, body = await api.get("/api/orderHistory.json", order_id="ann-1")
    assert code == 200
    assert {e["call_id"] for e in body["history"]} == set(placed.values())


@pytest_twisted.ensureDeferred
async def test_bad_input_places_nothing(sandbox, app):
    api = Api()
    cases = [
        ({"phone_number": "380632220002", "voiceFileID": "../../etc/passwd"}, "voiceFileID"),
        ({"phone_number": "380632220002", "voiceFileID": "no-such-message"}, "voiceFileID"),
        ({"phone_number": "380632220002"}, "voiceFileID"),
        ({"phone_number": "3806,1,G(x)", "voiceFileID": "announcement"}, "phone_number"),
        ({"phone_number": "380632220002&PJSIP/1000", "voiceFileID": "announcement"},
         "phone_number"),
    ]
    for body, field in cases:
        code, answer_ = await api.post("/api/calls/callWithAnnouncement", body)
        assert code == 400 and answer_["error"]["field"] == field, (body, answer_)
    assert sandbox.pstn.calls() == []
    assert await app.store.history_after(0, 10) == []


@pytest_twisted.ensureDeferred
async def test_without_fastagi_the_dialplan_plays_the_message(sandbox, tmp_path):
    # agi_app's FastAGI listens elsewhere: Asterisk cannot reach it.
    app = await start_control_app(
        sandbox, tmp_path,
        AGI_APP_AGI_LISTEN=f"tcp:{sandbox.agi_port + 7}:interface=127.0.0.1",
    )  # fmt: skip
    try:
        api = Api()
        sandbox.pstn.set("380632220003", answer(after=0.2))
        code, body = await api.post("/api/calls/callWithAnnouncement",
                                    {"phone_number": "380632220003", "voiceFileID": "announcement"})
        assert code == 200, body
        entries = await wait_final(app, body["generalCallID"], timeout=20)
        assert words(entries) == ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
        phone = await the_call(sandbox, "380632220003")
        length = sounds.duration(FILE)
        assert phone["media_packets"] >= 0.85 * length * PACKETS_PER_SECOND, phone
        assert phone["hung_up_by"] == "remote"
    finally:
        await app.stop()
