"""A call keeps its id through transfers, end to end: the real agi_app
against the sandbox Asterisk 22, SIPp phones and a webhook receiver.

A click-to-call answered by operator 1000 and the client is handed to 1001
(blind, then attended), who talks and hangs up.  Throughout, the call is one
call: one ``call_id`` in the history (CALL ... CLIENT_PICKUP, TRANSFER
"1000 → 1001", FINISH), in the tracker's events and in the webhooks; its
recordings, one per leg, cover the conversation before and after the
transfer; the hangup webhook of 1001 names 1001 as the extension the call
ended with and gives the talk time of the whole call.
"""

from __future__ import annotations

import os

import pytest_twisted
from callflow import (
    HTTP_PORT,
    Api,
    make_call,
    reactor,
    recording_settled,
    seconds_between,
    wait_final,
    wait_pbx,
    wait_status,
    wait_until,
    words,
)
from test_call_control import bridged, chan

from agi_app.calls.recording import WAV_BYTES_PER_SECOND, WAV_HEADER, recording_name
from agi_app.events.testing import Receiver
from agi_app.sandbox.phones import answer

RECEIVER_PORT = HTTP_PORT + 5
RECEIVER = f"http://127.0.0.1:{RECEIVER_PORT}"
BEFORE = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP"]


@pytest_twisted.async_yield_fixture
async def crm():
    receiver = Receiver()
    port = reactor().listenTCP(RECEIVER_PORT, receiver.site(), interface="127.0.0.1")
    yield receiver
    await port.stopListening()


async def hangup_hooks(api: Api, *extensions: str) -> None:
    for ext in extensions:
        code, sub = await api.post(
            f"/extension/{ext}/event/",
            {"url": f"{RECEIVER}/hook?ext={ext}", "method": "POST", "event_type": "hangup"},
        )
        assert code == 201, sub


async def recorded(path: str, seconds: float) -> None:
    """Wait until the recording file holds ``seconds`` of audio (MixMonitor
    writes while the parties are bridged): they have talked that long."""
    want = WAV_HEADER + seconds * WAV_BYTES_PER_SECOND
    await wait_until(
        lambda: os.path.getsize(path) if os.path.exists(path) else 0,
        lambda size: size >= want,
        timeout=15,
        what=f"{seconds} s recorded in {path}",
    )


async def placed_and_talking(app, api, sandbox, phone: str, order: str) -> tuple[str, str]:
    """A click-to-call of 1000 to ``phone``, both answered and talking for
    1.5 s; ``(call_id, path of its recording)``."""
    sandbox.pstn.set(phone, answer_after=0.2)  # talks until hung up
    call_id = await make_call(api, sip="1000", phone=phone, order_id=order,
                              external_key=f"k-{order}", playback_waiting="0")  # fmt: skip
    await wait_status(app, call_id, "CLIENT_PICKUP")
    path = os.path.join(sandbox.recordings_dir, recording_name(order, call_id))
    await recorded(path, 1.5)
    return call_id, path


async def one_call_throughout(app, crm, call_id: str, order: str, events: list) -> None:
    """What a transfer from 1000 to 1001 leaves behind, when 1001 hung up."""
    entries = await wait_final(app, call_id)
    assert words(entries) == [*BEFORE, "TRANSFER", "FINISH"], entries
    assert entries[5]["detail"] == "1000 → 1001", entries
    # The talk time runs from the client's answer to the end of the last leg.
    talk = seconds_between(entries[4], entries[6])
    call = await app.store.get_call(call_id)
    assert abs(call["talk_seconds"] - talk) <= 3.5, (call, entries)  # FINISH waits the grace
    assert call["talk_seconds"] >= 4.0, call
    # Every leg the tracker reported, 1000's and 1001's, is of this one call.
    legs = [e for e in events if e.extension in ("1000", "1001")]
    assert {e.extension for e in legs} == {"1000", "1001"}
    assert {e.call_id for e in legs} == {call_id}, {(e.extension, e.call_id) for e in legs}
    # One recording per leg, in order, covering the conversation before and
    # after the transfer: together about the talk time.
    [listed] = await app.store.order_calls(order)
    records = listed["records"]
    assert [r["record_id"] for r in records] == sorted(r["record_id"] for r in records)
    assert [os.path.basename(r["path"]) for r in records] == [
        recording_name(order, call_id), recording_name(order, call_id, 2)]  # fmt: skip
    settled = [await recording_settled(app, r["record_id"]) for r in records]
    durations = [r["duration"] for r in settled]
    assert all(d >= 1.0 for d in durations), durations
    assert abs(sum(durations) - call["talk_seconds"]) <= 1.5, (durations, call)
    # The hangup webhooks: 1000 handed the call over, 1001 ended it.
    requests = await crm.wait_for(2).addTimeout(30, reactor())
    by_ext = {r.query.split("ext=")[1]: r.fields for r in requests}
    assert set(by_ext) == {"1000", "1001"}, requests
    for fields in by_ext.values():
        assert fields["EventType"] == "hangup" and fields["CallID"] == call_id, fields
    assert "HangupExtension" not in by_ext["1000"] and "TotalDuration" not in by_ext["1000"]
    last = by_ext["1001"]
    assert last["HangupExtension"] == "1001", last
    assert abs(int(last["TotalDuration"]) - call["talk_seconds"]) <= 1.5, (last, call)
    assert int(last["Duration"]) < int(last["TotalDuration"]), last


@pytest_twisted.ensureDeferred
async def test_blind_transfer_keeps_the_call_id(sandbox, app, api, crm):
    await hangup_hooks(api, "1000", "1001")
    events: list = []
    app.tracker.subscribe(events.append)
    operator = sandbox.phones.start("1000", answer(after=0.2))
    sandbox.phones.start("1001", answer(after=0.3, hangup_after=2.5))
    call_id, _first = await placed_and_talking(app, api, sandbox, "380639920901", "tr-blind")
    code, body = await api.put(f"/extension/1000/current_calls/{call_id}",
                               {"action": "transfer", "send_dst": "1001"})  # fmt: skip
    assert (code, body) == (200, {"status": "success"})
    # Handed over at once: the history says so before 1001 even answers.
    entry = await wait_status(app, call_id, "TRANSFER")
    assert entry["detail"] == "1000 → 1001"
    await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1001-"),
                   what="client bridged with 1001")
    assert (await operator.wait_for_hangup(reactor=reactor()))["hung_up_by"] == "remote"
    await one_call_throughout(app, crm, call_id, "tr-blind", events)


@pytest_twisted.ensureDeferred
async def test_attended_transfer_keeps_the_call_id(sandbox, app, api, crm):
    await hangup_hooks(api, "1000", "1001")
    events: list = []
    app.tracker.subscribe(events.append)
    sandbox.phones.start("1000", answer(after=0.2))
    sandbox.phones.start("1001", answer(after=0.3, hangup_after=4))
    call_id, first = await placed_and_talking(app, api, sandbox, "380639920902", "tr-att")
    code, body = await api.post("/api/calls/attendedCallTransfer",
                                {"generalCallID": call_id, "phone_number": "1001"})  # fmt: skip
    assert code == 200, body
    chans = await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/1000-", "PJSIP/1001-"),
                           what="1000 consulting 1001")
    await recorded(first, 2.3)  # they talk a while (the consultation is in the first file)
    # Consulting is no transfer yet.
    assert "TRANSFER" not in words(await app.store.statuses(call_id))
    await app.ami.hangup(chan(chans, "PJSIP/1000-")["uniqueid"])
    await wait_pbx(sandbox, lambda c: bridged(c, "PJSIP/pstn-", "PJSIP/1001-"),
                   what="client bridged with 1001")
    entry = await wait_status(app, call_id, "TRANSFER")
    assert entry["detail"] == "1000 → 1001"
    await one_call_throughout(app, crm, call_id, "tr-att", events)
