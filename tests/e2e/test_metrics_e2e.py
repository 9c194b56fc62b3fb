"""``GET /metrics`` end to end: calls with several outcomes on the sandbox
PBX, then a scrape read the way Prometheus reads it, whose counts must be
those of the call history."""

from __future__ import annotations

from collections import Counter

import pytest_twisted
from callflow import make_call, wait_final, wait_until, words
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from agi_app.calls.statuses import FINAL
from agi_app.sandbox.phones import answer, busy


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def _scrape(api) -> dict:
    code, body = await api.get("/metrics")
    assert code == 200, body
    return _samples(body.decode())


@pytest_twisted.ensureDeferred
async def test_call_counts_equal_the_history(sandbox, app, api):
    sandbox.phones.start("1000", answer(after=0.2))
    sandbox.phones.start("1001", busy())
    sandbox.phones.start("1002", answer(after=0.2))
    sandbox.phones.start("1003", answer(after=0.2))
    sandbox.pstn.set("380639930001", answer_after=0.3, hangup_after=1)
    sandbox.pstn.set("380639930003", answer_after=0.3, hangup_after=1)
    sandbox.pstn.set("380639930486", "busy")
    common = {"playback_waiting": "0"}
    ids = {
        "finish": await make_call(api, sip="1000", phone="380639930001", order_id="m1",
                                  external_key="m-finish", **common),
        "finish2": await make_call(api, sip="1003", phone="380639930003", order_id="m4",
                                   external_key="m-finish2", **common),
        "operator_busy": await make_call(api, sip="1001", phone="380639930002", order_id="m2",
                                         external_key="m-obusy", **common),
        "client_busy": await make_call(api, sip="1002", phone="380639930486", order_id="m3",
                                       external_key="m-cbusy", **common),
    }  # fmt: skip
    histories = dict(zip(ids, await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, i)) for i in ids.values()]), strict=True))
    assert words(histories["finish"])[-1] == "FINISH"
    assert words(histories["finish2"])[-1] == "FINISH"
    assert words(histories["operator_busy"])[-1] == "OPERATOR_BUSY"
    assert words(histories["client_busy"])[-1] == "CLIENT_BUSY"

    # the whole history as a CRM reads it
    code, body = await api.get("/api/callHistory.json", after_id="0", limit="1000")
    assert code == 200, body
    history = body["history"]
    finals = Counter(e["status"] for e in history if e["status"] in FINAL)
    pickups = sum(e["status"] == "CLIENT_PICKUP" for e in history)
    assert finals == {"FINISH": 2, "OPERATOR_BUSY": 1, "CLIENT_BUSY": 1}

    # the FastAGI sessions of the calls have ended once the scrape says so
    found = await wait_until(lambda: defer.ensureDeferred(_scrape(api)),
                             lambda f: _value(f, "agi_app_fastagi_sessions_active") == 0,
                             what="FastAGI sessions ended")  # fmt: skip
    for status in FINAL:
        got = _value(found, "agi_app_calls_total", final_status=status, pbx="default")
        assert got == finals[status], status
    assert _value(found, "agi_app_call_setup_seconds_count") == pickups == 2
    assert _value(found, "agi_app_call_talk_seconds_count") == finals["FINISH"]
    talk = _value(found, "agi_app_call_talk_seconds_sum")
    assert 1.0 <= talk <= 2 * 3.0, talk
    # every status but CALL went through the store's writer
    assert _value(found, "agi_app_store_write_seconds_count") == len(history) - len(ids)
    # operator_call ran for each call whose operator answered
    answered = sum("OPERATOR_PICKUP" in words(h) for h in histories.values())
    assert _value(found, "agi_app_fastagi_sessions_total") == answered == 3
    assert _value(found, "agi_app_fastagi_sessions_ended_total", outcome="OK") == answered
    assert _value(found, "agi_app_ami_connected", pbx="default") == 1
    assert _value(found, "agi_app_ami_events_received_total", pbx="default") > 0
    assert _value(found, "agi_app_http_request_duration_seconds_count",
                  route="/api/makeCall", method="GET", code="200") == len(ids)  # fmt: skip
    assert _value(found, "agi_app_webhook_backlog") == 0
    assert _value(found, "agi_app_widget_connections") == 0
