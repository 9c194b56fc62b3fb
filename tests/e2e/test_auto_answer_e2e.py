"""Auto-answer end to end: the operator's SIPp phone keeps every SIP message
it gets, and the INVITE of each operator leg carries the configured
auto-answer headers exactly when the request (or ``[dialing]
operator_auto_answer``) asks for them."""

from __future__ import annotations

import pytest_twisted
from callflow import make_call, start_sandbox_app, wait_final, words

from agi_app.sandbox.phones import answer, header_values


def auto_answer_headers(invite: dict) -> tuple[list[str], list[str]]:
    return header_values(invite, "Call-Info"), header_values(invite, "Alert-Info")


@pytest_twisted.ensureDeferred
async def test_the_invite_carries_the_headers_only_when_asked(sandbox, app, api):
    operator = sandbox.phones.start("1000", answer(after=0.2), trace_sip=True)
    sandbox.pstn.set_default(answer_after=0.2, hangup_after=0.5)
    plain = await make_call(api, sip="1000", phone="380639921001", order_id="aa-1",
                            external_key="aa-1")  # fmt: skip
    assert words(await wait_final(app, plain))[-1] == "FINISH"
    auto = await make_call(api, sip="1000", phone="380639921002", order_id="aa-2",
                           external_key="aa-2", auto_answer=1)  # fmt: skip
    assert words(await wait_final(app, auto))[-1] == "FINISH"
    code, body = await api.post("/api/calls/extToPhone", {
        "ext_number": "1000", "phone_number": "380639921003", "autoAnswer": True,
    })  # fmt: skip
    assert (code, body["result"]) == (200, "OPERATOR_PICKUP"), body
    await wait_final(app, body["generalCallID"])

    await operator.wait_for_invite(count=3)
    first, second, third = operator.invites()
    assert auto_answer_headers(first) == ([], [])
    for invite in (second, third):
        assert auto_answer_headers(invite) == (
            ["<sip:127.0.0.1>;answer-after=0"], ["info=alert-autoanswer"])
    # the headers come with the operator leg only, never with the client's
    assert [c["number"] for c in sandbox.pstn.calls()] == [
        "380639921001", "380639921002", "380639921003"]


@pytest_twisted.ensureDeferred
async def test_a_configured_default_and_header_set(sandbox, tmp_path, api):
    app = await start_sandbox_app(
        sandbox, tmp_path,
        AGI_APP_DIALING_OPERATOR_AUTO_ANSWER="yes",
        AGI_APP_DIALING_AUTO_ANSWER_HEADERS=(
            "X-Auto-Answer: now, Call-Info: <sip:{pbx}>;answer-after=1"),
    )  # fmt: skip
    try:
        operator = sandbox.phones.start("1000", answer(after=0.2), trace_sip=True)
        sandbox.pstn.set_default(answer_after=0.2, hangup_after=0.5)
        default = await make_call(api, sip="1000", phone="380639921011", order_id="aa-3",
                                  external_key="aa-3")  # fmt: skip
        await wait_final(app, default)
        off = await make_call(api, sip="1000", phone="380639921012", order_id="aa-4",
                              external_key="aa-4", auto_answer=0)  # fmt: skip
        await wait_final(app, off)
        await operator.wait_for_invite(count=2)
        first, second = operator.invites()
        assert header_values(first, "X-Auto-Answer") == ["now"]
        assert header_values(first, "Call-Info") == ["<sip:127.0.0.1>;answer-after=1"]
        assert header_values(first, "Alert-Info") == []
        assert header_values(second, "X-Auto-Answer") == []
        assert header_values(second, "Call-Info") == []
    finally:
        await app.stop()
