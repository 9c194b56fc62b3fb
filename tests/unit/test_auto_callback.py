"""Calling missed callers back: AutoCallback over the real CallService, the
call lifecycle and the store, against the in-memory AMI server (the
Originates it sends are the real AMI actions); the operators' device states
come as DeviceStateChange events, the working hours from a Clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from test_calls_service import T0, Harness

from agi_app.ami.testing import OriginateOutcome
from agi_app.calls import statuses as st
from agi_app.calls.callback import AutoCallback
from agi_app.hours import WorkingHours
from agi_app.times import iso_time

ALWAYS = WorkingHours.parse(["00:00-24:00"], ["mon-sun"], "UTC")
# T0 is 2026-11-25T21:04:37Z, a Wednesday
OFFICE = WorkingHours.parse(["09:00-18:00"], ["mon-fri"], "UTC")


class CallbackHarness(Harness):
    def _build(self) -> None:
        super()._build()
        self.pbx.device_states = {"PJSIP/1000": "UNAVAILABLE", "PJSIP/1001": "UNAVAILABLE"}
        self.pbx.default_outcome = OriginateOutcome(delay=None)

    def scheduler(self, hours: WorkingHours = ALWAYS, **over) -> AutoCallback:
        settings = dict(calls=self.calls, group=("1000", "1001"), hours=hours, trunk="pstn",
                        ring=25, attempts=2, retry_delay=600, max_age=86400)  # fmt: skip
        settings.update(over)
        self.auto = AutoCallback(**settings)
        return self.auto

    async def missed(self, phone: str, minutes_ago: float = 1) -> dict:
        return await self.store.add_missed_call(
            call_id=f"m-{phone}-{minutes_ago}", phone=phone, did="100",
            time=iso_time(self.clock.seconds() - minutes_ago * 60), extensions=[],
            ring_seconds=3,
        )  # fmt: skip

    def online(self, sip: str, state: str = "NOT_INUSE") -> None:
        self.pbx.device_states[f"PJSIP/{sip}"] = state
        self.pbx.emit("DeviceStateChange", [("Device", f"PJSIP/{sip}"), ("State", state)])

    async def settled(self) -> None:
        for _ in range(20):
            await self.barrier()
            if not self.auto.pending:
                return
        raise AssertionError("the callback rounds never finished")

    def originates(self) -> list:
        return self.pbx.actions_named("Originate")

    async def rows(self) -> list[dict]:
        return await self.store.missed_calls_after(0, 100)


@pytest.fixture
def h(tmp_path: Path):
    harness = CallbackHarness(tmp_path)
    yield harness
    if getattr(harness, "auto", None) is not None:
        harness.auto.stop()
    harness.close()


@pytest_twisted.ensureDeferred
async def test_the_caller_is_rung_back_once_an_operator_comes_online(h):
    await h.connect()
    auto = h.scheduler()
    auto.start()
    row = await h.missed("380631110000")
    auto.poke(row)
    await h.settled()
    assert h.originates() == []  # nobody online
    h.online("1001")
    await h.settled()
    [originate] = h.originates()
    assert originate["Channel"] == "PJSIP/1001"
    assert originate["CallerID"] == '"Callback 380631110000" <380631110000>'
    [call] = h.store.all_calls()
    assert (call["kind"], call["sip"], call["phone"]) == ("callback", "1001", "380631110000")
    [row] = await h.rows()
    assert (row["callback_attempts"], row["last_callback"]) == (1, call["call_id"])
    assert auto.in_flight == {"380631110000": call["call_id"]}
    # the operator answers, then the caller: the missed call is handled
    active = h.lifecycle.get(call["call_id"])
    for status in (st.OPERATOR_PICKUP, st.CLIENT_CALLTO, st.CLIENT_PICKUP):
        await h.lifecycle.log(active, status)
    await h.settled()
    [row] = await h.rows()
    assert row["called_back"] == call["call_id"]
    assert auto.in_flight == {} and auto.ringing == set()
    auto.poke()
    await h.settled()
    assert len(h.originates()) == 1


@pytest_twisted.ensureDeferred
async def test_outside_the_working_hours_nobody_is_rung(h):
    await h.connect()
    h.online("1000")
    auto = h.scheduler(hours=OFFICE)
    auto.start()
    await h.missed("380631110000")
    auto.poke()
    await h.settled()
    assert h.originates() == []
    # Thursday 09:00: the minute's look finds the office open
    h.clock.advance(11 * 3600 + 55 * 60 + 23)
    await h.settled()
    assert [o["Channel"] for o in h.originates()] == ["PJSIP/1000"]


@pytest_twisted.ensureDeferred
async def test_one_callback_per_free_operator_and_per_caller(h):
    await h.connect()
    h.online("1000")
    auto = h.scheduler()
    for phone in ("380631110001", "380631110002", "380631110001"):
        await h.missed(phone)
    auto.start()
    await h.settled()
    # two open calls of the first number: one callback; one operator: one call
    [first] = h.originates()
    assert first["Channel"] == "PJSIP/1000"
    rows = await h.rows()
    assert [r["callback_attempts"] for r in rows] == [1, 0, 1]
    # the second operator comes online: the second caller
    h.online("1001")
    await h.settled()
    assert [o["Channel"] for o in h.originates()] == ["PJSIP/1000", "PJSIP/1001"]
    assert "380631110002" in h.originates()[1]["CallerID"]


@pytest_twisted.ensureDeferred
async def test_a_failed_callback_is_tried_again_after_the_delay_up_to_the_attempts(h):
    await h.connect()
    h.online("1000")
    auto = h.scheduler(attempts=2, retry_delay=600)
    await h.missed("380631110000")
    auto.start()
    await h.settled()
    assert len(h.originates()) == 1

    async def caller_does_not_answer() -> None:
        [call] = [c for c in h.store.all_calls() if not c["final_status"]]
        active = h.lifecycle.get(call["call_id"])
        for status in (st.OPERATOR_PICKUP, st.CLIENT_CALLTO, st.CLIENT_NOANSWER):
            await h.lifecycle.log(active, status)
        await h.settled()

    await caller_does_not_answer()
    assert len(h.originates()) == 1  # not before the delay
    h.clock.advance(600)
    await h.settled()
    assert len(h.originates()) == 2
    await caller_does_not_answer()
    h.clock.advance(3600)
    await h.settled()
    assert len(h.originates()) == 2  # the attempts are used up
    [row] = await h.rows()
    assert (row["callback_attempts"], row["called_back"]) == (2, None)


@pytest_twisted.ensureDeferred
async def test_old_missed_calls_and_withheld_numbers_are_not_rung(h):
    await h.connect()
    h.online("1000")
    auto = h.scheduler(max_age=3600)
    await h.missed("380631110000", minutes_ago=61)
    await h.store.add_missed_call(call_id="anon", phone=None, did=None,
                                  time=iso_time(T0), extensions=[], ring_seconds=1)  # fmt: skip
    auto.start()
    await h.settled()
    assert h.originates() == []


@pytest_twisted.ensureDeferred
async def test_with_the_pbx_down_nothing_is_placed_and_nothing_counted(h):
    h.pbx.device_states["PJSIP/1000"] = "NOT_INUSE"
    auto = h.scheduler()
    await h.missed("380631110000")
    auto.start()
    await h.settled()
    assert h.store.all_calls() == []
    await h.connect()  # the login's look
    await h.settled()
    assert len(h.originates()) == 1
