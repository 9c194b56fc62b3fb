"""Operator statistics end to end: a few operator-first calls on the sandbox
PBX (answered and talked, answered but the client busy, the operator busy),
then /api/operatorStats and /api/callStats agree with the same figures
computed here from the calls' history."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest_twisted
from callflow import make_call, wait_final

from agi_app.sandbox.phones import answer, busy
from agi_app.times import iso_time, parse_time


@pytest_twisted.ensureDeferred
async def test_the_statistics_are_the_history_counted(sandbox, app, api):
    started = time.time()
    sandbox.phones.start("1000", answer(after=0.4))
    sandbox.phones.start("1001", busy())
    sandbox.pstn.set("380631250001", answer_after=0.2, hangup_after=1.0)
    sandbox.pstn.set("380631250002", answer_after=0.2, hangup_after=2.0)
    sandbox.pstn.set("380631250003", "busy")
    calls = []
    for n, (sip, phone) in enumerate((("1000", "380631250001"), ("1000", "380631250002"),
                                       ("1000", "380631250003"), ("1001", "380631250001"))):
        calls.append(await make_call(api, sip=sip, phone=phone, order_id=f"st-{n}",
                                     external_key=f"st-{n}"))  # fmt: skip
        await wait_final(app, calls[-1])

    # the figures, counted from each call's history
    want: dict = defaultdict(lambda: {"offered": 0, "answered": 0, "ring": 0.0, "talked": 0,
                                      "talk": 0.0})  # fmt: skip
    outcomes: dict = defaultdict(lambda: defaultdict(int))
    for call_id in calls:
        call = await app.store.get_call(call_id)
        entries = {e["status"]: e for e in await app.store.statuses(call_id)}
        outcomes[call["created_at"][:13]][call["final_status"]] += 1
        figures = want[call["sip"]]
        figures["offered"] += 1
        if "OPERATOR_PICKUP" in entries:
            figures["answered"] += 1
            figures["ring"] += (parse_time(entries["OPERATOR_PICKUP"]["time"])
                                - parse_time(entries["OPERATOR_CALLTO"]["time"]))  # fmt: skip
            if call["final_status"] == "FINISH" and call["talk_seconds"] is not None:
                figures["talked"] += 1
                figures["talk"] += call["talk_seconds"]
    assert want["1000"]["talked"] == 2 and want["1001"]["answered"] == 0

    window = {"from": iso_time(started - 3600), "to": iso_time(time.time() + 60)}
    code, body = await api.get("/api/operatorStats.json", **window)
    assert code == 200, body
    got = {o["sip"]: o for o in body["operators"]}
    assert set(got) == set(want)
    for sip, figures in want.items():
        o = got[sip]
        assert (o["offered"], o["answered"], o["missed"], o["talked"]) == (
            figures["offered"], figures["answered"], figures["offered"] - figures["answered"],
            figures["talked"]), (sip, o)  # fmt: skip
        assert o["answer_rate"] == round(figures["answered"] / figures["offered"], 3)
        if figures["answered"]:
            assert abs(o["avg_ring_s"] - figures["ring"] / figures["answered"]) <= 0.06, o
        else:
            assert o["avg_ring_s"] is None
        assert abs(o["talk_s"] - figures["talk"]) <= 0.06, o
    code, body = await api.get("/api/operatorStats.json", sip="1001", **window)
    assert [o["sip"] for o in body["operators"]] == ["1001"]

    code, body = await api.get("/api/callStats.json", **window)
    assert code == 200, body
    counted = {h["hour"][:13]: {k: v for k, v in h.items() if k not in ("hour", "total") and v}
               for h in body["hours"]}  # fmt: skip
    assert counted == {hour: dict(c) for hour, c in outcomes.items()}
    assert sum(h["total"] for h in body["hours"]) == len(calls)
