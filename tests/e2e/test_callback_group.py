"""A callback to several source extensions end to end: the listed phones
ring together (a ring group in the dialplan), the first to answer talks to
``dst_num``, and the call log reads as for makeCall."""

from __future__ import annotations

import pytest_twisted
from callflow import Api, app_config, reactor, start_app, wait_final, words
from twisted.internet import defer

from agi_app.sandbox.phones import answer, busy, no_answer

HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    # a short ring time keeps "nobody answers" quick
    config = app_config(sandbox, tmp_path, AGI_APP_DIALING_CALL_TIME_TO_EXT="3")
    application = await start_app(config)
    yield application
    await application.stop()


async def callback(api: Api, owner: str, dst: str, sources: list[str]) -> str:
    code, body = await api.post(
        f"/extension/{owner}/callback/", {"dst_num": dst, "src_num": sources}
    )
    assert code == 201, body
    return body["call_id"]


@pytest_twisted.ensureDeferred
async def test_both_ring_the_one_who_answers_talks_the_other_stops_ringing(sandbox, app, api):
    silent = sandbox.phones.start("1000", no_answer())
    taker = sandbox.phones.start("1001", answer(after=1.0))
    sandbox.pstn.set("380639940001", answer_after=0.3, hangup_after=2)
    call_id = await callback(api, "1000", "380639940001", ["1000", "1001"])
    entries = await wait_final(app, call_id)
    assert words(entries) == HAPPY
    [rang] = silent.calls()
    [took] = taker.calls()
    # rung together, not one after the other
    assert abs(rang["invite_time"] - took["invite_time"]) < 0.5, (rang, took)
    # the one who did not answer was cancelled when the other answered
    assert rang["answer_time"] is None and rang["end"] == "cancel", rang
    assert abs(rang["end_time"] - took["answer_time"]) < 1.0, (rang, took)
    # both saw the client's number
    assert rang["from_number"] == took["from_number"] == "380639940001"
    # the answering phone was connected to the client, who answered and talked
    [client] = [c for c in sandbox.pstn.calls() if c["number"] == "380639940001"]
    assert client["answer_time"] is not None and client["media_received"], client
    assert took["media_received"], took
    # the call is the first listed extension's in the store (sip is one extension)
    call = await app.store.get_call(call_id)
    assert call["sip"] == "1000" and call["kind"] == "callback"


@pytest_twisted.ensureDeferred
async def test_nobody_answers_all_busy_all_offline(sandbox, app, api):
    ringing = [sandbox.phones.start(n, no_answer()) for n in ("1002", "1003")]
    busy_ones = [sandbox.phones.start(n, busy()) for n in ("1004", "1005")]
    offline = [sandbox.phones.offline(n) for n in ("1006", "1007")]
    ids = {
        "noanswer": await callback(api, "1002", "380639940002", ["1002", "1003"]),
        "busy": await callback(api, "1004", "380639940003", ["1004", "1005"]),
        "offline": await callback(api, "1006", "380639940004", ["1006", "1007"]),
    }
    results = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, i)) for i in ids.values()]
    )
    history = dict(zip(ids, results, strict=True))
    assert words(history["noanswer"]) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_NOANSWER"]
    assert words(history["busy"]) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    assert words(history["offline"]) == ["CALL", "OPERATOR_OFFLINE"]
    for phone in ringing:
        call = await phone.wait_for_hangup(reactor=reactor())
        assert len(phone.calls()) == 1
        assert call["answer_time"] is None and call["end"] == "cancel", call
    for phone in busy_ones:
        assert len(phone.calls()) == 1
    for phone in offline:
        assert phone.calls() == [], "an offline extension must not be rung"
    assert not [
        c
        for c in sandbox.pstn.calls()
        if c["number"] in ("380639940002", "380639940003", "380639940004")
    ], "the client must not be dialled when no extension answered"
