"""IVR end to end: SIPp callers send RFC 2833 DTMF through a two-level menu
defined in an IVR file, against the real agi_app and the sandbox Asterisk.

Three callers at once:

- a callWithInteractiveVoiceResponse client presses an invalid digit, lets
  the menu time out, goes to the second level and asks for an operator, who
  answers -- the history holds every choice, the timeout and the invalid
  digit, then the operator's statuses, and the conversation is recorded;
- a client who presses nothing: the retries run out and agi_app hangs up;
- a client calling in from the trunk into ``[agi-app-ivr]``: a call of kind
  ``incoming`` with its own history.

The phones send their digits at fixed times after answering; the menus'
prompts (``connecting``, 0.8 s) and timeouts are chosen so that every digit
lands in the window it is meant for with about a second to spare.
"""

from __future__ import annotations

import pytest_twisted
from callflow import Api, reactor, recording_settled, seconds_between, wait_final, words
from test_call_control import start_control_app
from twisted.internet import defer

from agi_app.sandbox.phones import answer, dtmf

MENUS = """
[defaults]
timeout = 1
retries = 3
invalid_prompt = connecting
timeout_prompt = connecting
goodbye_prompt = connecting

[top]
prompt = connecting
2 = menu second
0 = extension 1000

[second]
prompt = connecting
timeout = 6
5 = extension 1000
4 = hangup

[quiet]
prompt = connecting
retries = 2
1 = hangup
"""

#: digits are sent 0.5 s after answering, then every GAP s
GAP = 4.3


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    menus = tmp_path / "ivr.conf"
    menus.write_text(MENUS)
    application = await start_control_app(sandbox, tmp_path, ivr_path=str(menus))
    yield application
    await application.stop()


def choices(entries: list[dict]) -> list[str]:
    return [e["detail"] for e in entries if e["status"] == "IVR_CHOICE"]


@pytest_twisted.ensureDeferred
async def test_two_level_menu_with_timeout_retries_invalid_and_an_operator(sandbox, app):
    api = Api()
    operator = sandbox.phones.start("1000", answer(after=0.2, hangup_after=1.0))
    sandbox.pstn.set("380631230001", dtmf("125", after=0.5, gap=GAP))
    sandbox.pstn.set("380631230002", answer())  # presses nothing
    sandbox.pstn.set("380631230003", dtmf("24", after=0.5, gap=GAP))
    code, chosen = await api.post("/api/calls/callWithInteractiveVoiceResponse",
                                  {"phone_number": "380631230001", "ivrName": "top",
                                   "order_id": "ivr-1"})
    assert code == 200, chosen
    code, quiet = await api.post("/api/calls/callWithInteractiveVoiceResponse",
                                 {"phone_number": "380631230002", "ivrName": "quiet"})
    assert code == 200, quiet
    # A call from the trunk sent to the menu "top" by the dialplan.
    incoming = app.ami.originate(
        "PJSIP/380631230003@pstn", context="agi-app-ivr", exten="top", priority=1,
        caller_id='"Caller" <380631230003>', timeout_ms=5000,
    )  # fmt: skip
    assert (await incoming).success
    first, second = await defer.gatherResults([
        defer.ensureDeferred(wait_final(app, chosen["generalCallID"], timeout=40)),
        defer.ensureDeferred(wait_final(app, quiet["generalCallID"], timeout=40)),
    ])  # fmt: skip

    # The caller who navigated: invalid digit, timeout, second level, operator.
    assert words(first) == [
        "CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", "IVR_CHOICE", "IVR_CHOICE", "IVR_CHOICE",
        "IVR_CHOICE", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "FINISH",
    ], [(e["status"], e["detail"], e["time"]) for e in first]  # fmt: skip
    assert choices(first) == [
        "menu=top digit=1 invalid (attempt 1 of 3)",
        "menu=top timeout (attempt 2 of 3)",
        "menu=top digit=2 -> menu second",
        "menu=second digit=5 -> extension 1000",
    ]
    # The timeout came after the prompt again (0.8 s) and the 1 s wait,
    # following the invalid-input prompt (0.8 s).
    waited = seconds_between(first[3], first[4])
    assert 2.0 <= waited <= 3.6, waited
    op_call = await operator.wait_for_hangup(reactor=reactor())
    assert op_call["from_number"] == "380631230001"
    # The conversation with the operator is recorded and tied to the order.
    [call] = (await app.store.order_calls("ivr-1"))
    [record] = call["records"]
    record = await recording_settled(app, record["record_id"])
    assert record["path"].endswith(f"ivr-1_{chosen['generalCallID']}.wav"), record
    assert 0.4 <= record["duration"] <= 2.5, record  # the operator talked for 1 s
    phone = await sandbox.pstn.wait_for_hangup(number="380631230001", reactor=reactor())
    assert phone["dtmf"] == "125"

    # The caller who pressed nothing: the retries ran out, agi_app hung up.
    assert words(second) == ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", "IVR_CHOICE",
                             "IVR_CHOICE", "FINISH"]
    assert choices(second) == [
        "menu=quiet timeout (attempt 1 of 2)",
        "menu=quiet timeout (attempt 2 of 2), retries exhausted -> hangup",
    ]
    assert 1.4 <= seconds_between(second[2], second[3]) <= 3.0
    silent = await sandbox.pstn.wait_for_hangup(number="380631230002", reactor=reactor())
    assert silent["hung_up_by"] == "remote"

    # The incoming caller: its own call, kind "incoming", with its choices.
    entries = await app.store.history_after(0, 1000)
    others = {chosen["generalCallID"], quiet["generalCallID"]}
    ids = {e["call_id"] for e in entries} - others
    assert len(ids) == 1, ids
    [incoming_id] = ids
    history = await wait_final(app, incoming_id, timeout=20)
    call = await app.store.get_call(incoming_id)
    assert (call["kind"], call["phone"]) == ("incoming", "380631230003")
    assert words(history) == ["CALL", "CLIENT_PICKUP", "IVR_CHOICE", "IVR_CHOICE", "FINISH"]
    assert choices(history) == ["menu=top digit=2 -> menu second",
                                "menu=second digit=4 -> hangup"]


@pytest_twisted.ensureDeferred
async def test_unknown_ivr_name_is_refused(sandbox, app):
    api = Api()
    code, body = await api.post("/api/calls/callWithInteractiveVoiceResponse",
                                {"phone_number": "380631230009", "ivrName": "missing"})
    assert code == 400 and body["error"]["field"] == "ivrName"
    code, body = await api.post("/api/calls/callWithInteractiveVoiceResponse",
                                {"phone_number": "380631230009", "ivrName": "top,1"})
    assert code == 400 and body["error"]["field"] == "ivrName"
    assert sandbox.pstn.calls() == []
