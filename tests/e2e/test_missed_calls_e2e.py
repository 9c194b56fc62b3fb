"""Missed calls end to end: SIPp callers call in through the sandbox's trunk
(``[sandbox-from-pstn]`` dials the operator whose number they call) and
nobody answers.

- operator 1000 rings and the caller gives up: the call is listed by
  /api/missedCalls and the ``missed`` webhook reaches the CRM; the caller
  calls again and 1000 answers: the missed call is handled by that call;
- ``[inbound] auto_callback``: operator 1000 is offline when the call comes
  in; once the operator's phone comes online, agi_app rings 1000 and then
  the caller, and the missed call is handled by that callback.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from callflow import reactor, wait_final, wait_until, words
from test_events import ReceiverServer, subscribe, wait_requests

from agi_app.client import verify_signature
from agi_app.sandbox.phones import answer, no_answer

INBOUND = {"AGI_APP_INBOUND_GROUP": "1001"}
CALLBACKS = {
    "AGI_APP_INBOUND_GROUP": "1000",
    "AGI_APP_INBOUND_AUTO_CALLBACK": "yes",
    "AGI_APP_INBOUND_HOURS": "00:00-24:00",
    "AGI_APP_INBOUND_DAYS": "mon-sun",
    "AGI_APP_INBOUND_TIMEZONE": "UTC",
}


@pytest.fixture
def app_settings(request) -> dict[str, str]:
    return CALLBACKS if "callback" in request.node.name else INBOUND


@pytest_twisted.async_yield_fixture
async def crm():
    server = ReceiverServer()
    server.up()
    yield server
    await server.down()


async def missed_calls(api, **params) -> list[dict]:
    code, body = await api.get("/api/missedCalls.json", **params)
    assert code == 200, body
    return body["missed_calls"]


@pytest_twisted.ensureDeferred
async def test_a_caller_nobody_answered_is_listed_and_sent_then_handled(sandbox, app, api, crm):
    secret = (await subscribe(api, "1000", "missed"))["secret"]
    await subscribe(api, "1001", "missed", path="/group")
    sandbox.phones.start("1000", no_answer())
    outcome = await sandbox.pstn.call_in("1000", "380631240001", wait=2.0, reactor=reactor())
    assert outcome["cancelled"], outcome
    [missed] = await wait_until(lambda: missed_calls(api), what="the missed call")
    assert (missed["phone"], missed["did"], missed["extensions"]) == (
        "380631240001", "1000", ["1000"])
    assert 1.5 <= missed["ring_seconds"] <= 4.0, missed
    assert (missed["called_back"], missed["callback_attempts"]) == (None, 0)
    # the extension it rang and the group's extension, each its own webhook
    requests = await wait_requests(crm.receiver, 2)
    by_path = {r.path.split("?")[0]: r.fields for r in requests}
    assert set(by_path) == {"/hook", "/group"}
    fields = by_path["/hook"]
    assert (fields["EventType"], fields["CallerIDNum"], fields["CalledDID"], fields["CallID"],
            fields["MissedID"], fields["Extensions"]) == (
        "missed", "380631240001", "1000", missed["call_id"], str(missed["id"]), "1000")
    hook = next(r for r in requests if r.path.startswith("/hook"))
    assert verify_signature(secret, hook.headers["x-signature"], hook.signed_payload)

    # The caller tries again and gets through: the missed call is handled.
    sandbox.phones.start("1000", answer(after=0.3))
    outcome = await sandbox.pstn.call_in("1000", "380631240001", wait=3.0, talk=1.0,
                                         reactor=reactor())  # fmt: skip
    assert outcome["answered"], outcome
    [handled] = await wait_until(lambda: missed_calls(api),
                                 lambda found: found and found[0]["called_back"],
                                 what="the missed call handled")  # fmt: skip
    assert handled["called_back"] != handled["call_id"]
    assert await missed_calls(api, open=1) == []


@pytest_twisted.ensureDeferred
async def test_the_callback_comes_when_the_operator_comes_online(sandbox, app, api):
    sandbox.phones.offline("1000")
    outcome = await sandbox.pstn.call_in("1000", "380631240002", wait=2.0, reactor=reactor())
    assert outcome["rejected"], outcome  # nobody to ring: the PBX answers at once
    [missed] = await wait_until(lambda: missed_calls(api), what="the missed call")
    assert (missed["phone"], missed["extensions"], missed["called_back"]) == (
        "380631240002", [], None)
    # nothing was placed while nobody was online
    assert await app.store.history_after(0, 10) == []
    # the caller answers the callback and talks a second
    sandbox.pstn.set("380631240002", answer_after=0.3, hangup_after=1.0)
    operator = sandbox.phones.start("1000", answer(after=0.3))
    [handled] = await wait_until(lambda: missed_calls(api),
                                 lambda found: found and found[0]["called_back"],
                                 timeout=20, what="the callback")  # fmt: skip
    callback = await app.store.get_call(handled["called_back"])
    assert (callback["kind"], callback["sip"], callback["phone"]) == (
        "callback", "1000", "380631240002")
    assert handled["callback_attempts"] == 1
    entries = await wait_final(app, callback["call_id"])
    assert words(entries) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO",
                              "CLIENT_PICKUP", "FINISH"]  # fmt: skip
    rung = await operator.wait_for_call(reactor=reactor())
    assert rung["from_number"] == "380631240002"
    assert rung["from_name"] == "Callback 380631240002"
