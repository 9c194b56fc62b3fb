"""A call keeps its id through transfers: the TRANSFER status word, the
lifecycle's note of it and the recording of each further leg (on the fake
PBX and the real store), call control reporting hand-overs from the AMI
events of the dialplan's transfer contexts, and the hangup webhook of a
transferred call."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from test_calls_service import HAPPY, Harness
from test_control import ControlTestCase
from test_tracker import TrackerTestCase
from twisted.internet import defer

from agi_app.calls import statuses as st
from agi_app.calls.recording import WAV_BYTES_PER_SECOND, WAV_HEADER, recording_name
from agi_app.events.delivery import DeliverySettings
from agi_app.events.generator import CallInfo, EventGenerator
from agi_app.events.service import EventService
from agi_app.events.testing import MemoryEventStore
from agi_app.live.control import CallControl, handed_over
from agi_app.netguard import TargetGuard
from agi_app.times import iso_time

CONNECTED = HAPPY[:5]


def test_transfer_is_a_word_that_may_repeat_and_ends_nothing():
    assert st.TRANSFER in st.STATUSES and st.TRANSFER not in st.FINAL
    assert st.REPEATABLE == {st.IVR_CHOICE, st.TRANSFER}
    assert st.REPEATABLE.isdisjoint(st.FINAL)


def test_each_leg_has_its_file_named_from_the_call():
    assert recording_name("ord-1", "c1") == "ord-1_c1.wav"
    assert recording_name("ord-1", "c1", 2) == "ord-1_c1-2.wav"
    assert recording_name(None, "a:b", 3) == "call_a-b-3.wav"


# -- the lifecycle ---------------------------------------------------------------


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def audio(path: str, seconds: float) -> None:
    """A WAV file of ``seconds`` of audio, as MixMonitor leaves it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * (WAV_HEADER + int(seconds * WAV_BYTES_PER_SECOND)))


def channel(h: Harness, call_id: str, name: str, uniqueid: str) -> list:
    """A new channel of the call (Newchannel: the AMI link lists it)."""
    pairs = h.pbx.add_channel(name, uniqueid=uniqueid, variables={"AGI_APP_CALL_ID": call_id})
    h.pbx.emit("Newchannel", pairs)
    return pairs


async def connected(h: Harness) -> tuple[str, list, object]:
    """A makeCall of 1000 whose client answered (CLIENT_PICKUP at T0 + 5);
    ``(call_id, the operator's channel, the FastAGI session in its Dial)``."""
    await h.connect()
    call_id = await h.place(playback_waiting=False)
    operator = channel(h, call_id, "PJSIP/1000-00000001", "op-1")
    agi = h.session(call_id)
    await agi.up_to_dial(playback=False)
    client = channel(h, call_id, "PJSIP/pstn-00000002", "cl-1")
    h.clock.advance(5)
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    h.client = client
    return call_id, operator, agi


async def handed_off(agi) -> None:
    """Call control moved the operator's channel out of its Dial."""
    agi.send("200 result=0")
    await agi.expect('GET VARIABLE "DIALSTATUS"', "200 result=1 (ANSWER)")
    await agi.expect('GET VARIABLE "AGI_APP_HANDOFF"', "200 result=1 (transfer)")
    await agi.finished()


@pytest_twisted.ensureDeferred
async def test_a_transferred_call_is_one_call_to_its_last_hangup(h):
    call_id, operator, agi = await connected(h)
    lifecycle = h.lifecycle
    pickup_at = h.clock.seconds()
    # Call control asks for the next leg's file, then hands the call over.
    second = lifecycle.leg_recording(call_id)
    assert second == f"/pbx/monitor/order-15_{call_id}-2.wav"
    h.clock.advance(10)
    entry = await lifecycle.note(call_id, st.TRANSFER, "1000 → 1001")
    assert (entry["status"], entry["detail"]) == ("TRANSFER", "1000 → 1001")
    await handed_off(agi)
    h.channel_down(operator)  # released: the conversation goes on
    target = channel(h, call_id, "PJSIP/1001-00000003", "op-2")
    h.clock.advance(1)
    await lifecycle.leg_recorded(call_id)  # 1001 answered: its leg is recorded
    # ... and hands it over again, to a number this time.
    assert lifecycle.leg_recording(call_id).endswith(f"order-15_{call_id}-3.wav")
    await lifecycle.note(call_id, st.TRANSFER, "1001 → 380501234567")
    h.clock.advance(20)
    h.channel_down(target)
    h.channel_down(h.client)
    monitor = h.tmp_path / "monitor"
    audio(str(monitor / recording_name("order-15", call_id)), 10)
    audio(str(monitor / recording_name("order-15", call_id, 2)), 20)
    h.clock.advance(3)  # the grace after the last hangup
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == [*CONNECTED, "TRANSFER", "TRANSFER", "FINISH"]
    assert [e["detail"] for e in entries[5:7]] == ["1000 → 1001", "1001 → 380501234567"]
    # the talk time runs to the end of the last leg, not to the first hangup
    assert entries[-1]["detail"] == "talk 31 s"
    call = await h.store.get_call(call_id)
    assert call["talk_seconds"] == pytest.approx(31)
    # One recording per leg, in order, each completed with size and duration;
    # the third leg's file was handed out but never started: not stored.
    for _ in range(3):  # the size watch: two looks that agree
        h.clock.advance(0.5)
        await h.barrier()
    records = await h.store.call_recordings(call_id)
    assert [os.path.basename(r["path"]) for r in records] == [
        recording_name("order-15", call_id), recording_name("order-15", call_id, 2)]  # fmt: skip
    assert [r["duration"] for r in records] == [pytest.approx(10), pytest.approx(20)]
    assert records[1]["created_at"] == iso_time(pickup_at + 11)


@pytest_twisted.ensureDeferred
async def test_a_file_handed_out_for_a_transfer_that_never_connected_is_reused(h):
    call_id, _operator, _agi = await connected(h)
    first = h.lifecycle.leg_recording(call_id)
    assert h.lifecycle.leg_recording(call_id) == first
    await h.lifecycle.leg_recorded(call_id)
    assert h.lifecycle.leg_recording(call_id) != first
    assert len(await h.store.call_recordings(call_id)) == 2


@pytest_twisted.ensureDeferred
async def test_note_needs_a_connected_open_call(h):
    await h.connect()
    call_id = await h.place(playback_waiting=False)
    # not connected yet: a transfer cannot have happened
    assert await h.lifecycle.note(call_id, st.TRANSFER, "1000 → 1001") is None
    assert h.lifecycle.leg_recording(call_id) is None  # nothing recorded yet
    with pytest.raises(ValueError):
        await h.lifecycle.note(call_id, st.FINISH, "no")
    assert await h.lifecycle.note("no-such-call", st.TRANSFER, "a → b") is None
    assert h.lifecycle.leg_recording("no-such-call") is None
    assert "TRANSFER" not in await h.history(call_id)


@pytest_twisted.ensureDeferred
async def test_note_of_an_open_call_this_process_does_not_follow(h):
    """A call of another PBX (or not resumable here) is written through the
    store while it is open, and never after its final status."""
    await h.connect()
    for call_id in ("elsewhere", "ended"):
        await h.store.create_call(call_id=call_id, kind="makeCall", sip="1000",
                                  phone="380501234567", order_id=None, external_key=None,
                                  params={}, pbx="other")  # fmt: skip
    await h.store.add_status("ended", "FINISH", "talk 3 s")
    entry = await h.lifecycle.note("elsewhere", st.TRANSFER, "1000 → 1001")
    assert entry["status"] == "TRANSFER"
    assert await h.lifecycle.note("ended", st.TRANSFER, "1000 → 1001") is None
    assert await h.history("elsewhere") == ["CALL", "TRANSFER"]
    assert await h.history("ended") == ["CALL", "FINISH"]


@pytest_twisted.ensureDeferred
async def test_a_restart_takes_up_the_recordings_of_every_leg(h):
    call_id, _operator, agi = await connected(h)
    h.lifecycle.leg_recording(call_id)
    await h.lifecycle.note(call_id, st.TRANSFER, "1000 → 1001")
    await handed_off(agi)
    await h.lifecycle.leg_recorded(call_id)
    await h.restart({"cl-1": ("PJSIP/pstn-00000002", call_id, "Up"),
                     "op-2": ("PJSIP/1001-00000003", call_id, "Up")})  # fmt: skip
    call = await h.lifecycle.find(call_id)
    assert call is not None and [r.leg for r in call.further] == [2]
    # the next transfer's file is the third
    assert h.lifecycle.leg_recording(call_id).endswith("-3.wav")


# -- call control ------------------------------------------------------------------


class HandoverTests(ControlTestCase):
    """Transfers of a click-to-call (channels carrying its call id c-6):
    operator 1001 ("op-6") talks with the client ("cl-6")."""

    def setUp(self):
        super().setUp()
        self.reported = []
        self.recorded = []
        self.control = CallControl(
            ami=self.ami, tracker=self.tracker, dialing=self.control.dialing,
            clock=self.reactor, store=self.store,
            on_transfer=lambda *a: self.reported.append(a),
            leg_recording=lambda call_id: defer.succeed(f"/mon/{call_id}-2.wav"),
            on_leg_recorded=self.recorded.append,
        )  # fmt: skip
        sim = self.sim
        sim.new("PJSIP/1001-00000060", "op-6", num="380630000001", var="c-6")
        sim.dial(None, "op-6", "1001")
        sim.state("op-6", "Up")
        sim.new("PJSIP/pstn-00000061", "cl-6", linkedid="op-6", var="c-6")
        sim.dial("op-6", "cl-6", "380630000001@pstn")
        sim.state("cl-6", "Up")
        sim.bridge("br-6", "op-6", "cl-6")
        self.server.actions.clear()

    def vars_of(self, channel):
        return {h["Variable"][0]: h["Value"] for n, h in self.sent()
                if n == "Setvar" and h["Channel"] == channel}  # fmt: skip

    def target_answers(self, context, bridge=None):
        """1000 answers: its channel records the next leg
        (agi-app-leg-recording) and is bridged in ``context``."""
        sim = self.sim
        sim.new("PJSIP/1000-00000062", "t-6", linkedid="op-6", var="c-6")
        sim.set("t-6", Context="agi-app-leg-recording")
        sim.event("MixMonitorStart", "t-6")
        sim.set("t-6", Context=context)
        if bridge:
            sim.bridge(bridge, "t-6")

    def test_a_blind_transfer_is_reported_at_once_and_its_leg_recorded(self):
        self.act("1001", "c-6", "transfer", "1000")
        self.assertEqual(self.vars_of("cl-6")["__AGI_APP_LEG_RECORDING"], "/mon/c-6-2.wav")
        self.assertEqual(self.reported, [("c-6", "1001", "1000")])
        self.assertEqual(self.recorded, [])
        self.sim.hangup("op-6")  # released
        self.target_answers("sandbox-operators", bridge="br-7")
        self.assertEqual(self.recorded, ["c-6"])
        # seen through: the next recording start reports nothing
        self.sim.event("MixMonitorStart", "t-6", Context="agi-app-leg-recording")
        self.assertEqual((self.reported, self.recorded), ([("c-6", "1001", "1000")], ["c-6"]))

    def test_an_attended_transfer_is_reported_when_it_completes(self):
        self.successResultOf(self._d(self.control.transfer_call("c-6", "1000")))
        # the target of the consultation inherits the file from the operator
        self.assertEqual(self.vars_of("op-6")["__AGI_APP_LEG_RECORDING"], "/mon/c-6-2.wav")
        self.assertEqual(self.vars_of("cl-6")["__AGI_APP_LEG_RECORDING"], "/mon/c-6-2.wav")
        self.assertEqual(self.reported, [])
        # consulting: the operator and the target are bridged -- no transfer yet
        sim = self.sim
        sim.leave("br-6", "cl-6")
        sim.leave("br-6", "op-6")
        sim.set("op-6", Context="agi-app-consult")
        sim.new("PJSIP/1000-00000062", "t-6", linkedid="op-6", var="c-6")
        sim.bridge("br-8", "op-6", "t-6")
        self.assertEqual(self.reported, [])
        # the operator hangs up: the target records its leg and is bridged
        # with the waiting client in agi-app-xfer-complete
        sim.hangup("op-6")
        sim.set("t-6", Context="agi-app-leg-recording")
        sim.event("MixMonitorStart", "t-6")
        sim.set("t-6", Context="agi-app-xfer-complete")
        sim.bridge("br-9", "cl-6", "t-6")
        self.assertEqual(self.reported, [("c-6", "1001", "1000")])
        self.assertEqual(self.recorded, ["c-6"])

    def test_an_attended_transfer_the_client_completes_itself(self):
        # the operator hung up while 1000 still rang: the client, sent to
        # agi-app-transfer, dials 1000 and is bridged with it
        self.act("1001", "c-6", "attended_transfer", "1000")
        self.sim.hangup("op-6")
        self.sim.set("cl-6", Context="agi-app-transfer")
        self.target_answers("sandbox-operators", bridge="br-9")
        self.assertEqual(self.reported, [])
        self.sim.bridge("br-9", "cl-6")
        self.assertEqual(self.reported, [("c-6", "1001", "1000")])

    def test_an_attended_transfer_that_comes_back_is_no_transfer(self):
        self.act("1001", "c-6", "attended_transfer", "1000")
        sim = self.sim
        sim.set("op-6", Context="agi-app-consult")
        sim.bridge("br-10", "op-6", "cl-6")  # the target declined: back together
        self.assertEqual(self.reported, [])
        sim.hangup("cl-6")  # the call ends: nothing of the transfer is to come
        sim.new("PJSIP/1000-00000062", "t-6", context="agi-app-xfer-complete", var="c-6")
        sim.bridge("br-11", "t-6")
        self.assertEqual((self.reported, self.recorded), ([], []))

    def test_a_call_agi_app_did_not_place_reports_nothing(self):
        self.act("1000", "trunk-1", "transfer", "1001")
        # and no file of an earlier transfer is recorded into again
        self.assertEqual(self.vars_of("trunk-1")["__AGI_APP_LEG_RECORDING"], "")
        self.assertEqual(self.reported, [])

    def test_a_failing_report_leaves_the_transfer_done(self):
        def fail(*_):
            raise RuntimeError("store down")

        self.control.on_transfer = fail
        self.assertEqual(self.act("1001", "c-6", "transfer", "1000"), {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.sent()[-1][0], "Redirect")

    def test_which_legs_handed_their_call_over(self):
        released = self.tracker.leg("op-6")
        released.context, released.exten = "agi-app-hold", "release"
        self.assertTrue(handed_over(released))
        released.exten = "holder"  # on hold: still in the call
        self.assertFalse(handed_over(released))
        released.context, released.exten = "agi-app-consult", "h"
        self.assertTrue(handed_over(released))


# -- the hangup webhook ----------------------------------------------------------


class HangupEventTests(TrackerTestCase):
    def setUp(self):
        super().setUp()
        self.store = MemoryEventStore()
        self.requests = []

        def send(request):
            self.requests.append(request)
            return defer.succeed(200)

        self.service = EventService(
            self.store, send=send, clock=self.reactor, settings=DeliverySettings(),
            guard=TargetGuard(["127.0.0.0/8"]),
        )  # fmt: skip
        self.successResultOf(defer.ensureDeferred(self.service.start()))
        info = CallInfo(self.store, public_url="https://127.0.0.1:8443/")
        self.generator = EventGenerator(self.tracker, self.service, info,
                                        handed_over=handed_over)  # fmt: skip
        self.generator.start()
        for ext in ("1000", "1001"):
            self.successResultOf(defer.ensureDeferred(self.service.subscribe(
                ext, url=f"http://127.0.0.1:9/{ext}", method="POST", event_type="hangup")))

    def hangups(self):
        from urllib.parse import parse_qsl

        return {r.url.rsplit("/", 1)[1]: dict(parse_qsl(r.body.decode())) for r in self.requests}

    def blind_transfer(self, call_id):
        """The sandbox's events of a click-to-call of 1000 handed to 1001;
        the client answered at T0 + 2, 1001 hangs up at T0 + 30."""
        sim = self.sim
        sim.new("PJSIP/1000-00000019", "op", num="380639920001", var=call_id)
        sim.dial(None, "op", "1000")
        sim.state("op", "Up")
        sim.new("PJSIP/pstn-0000001a", "cl", linkedid="op", var=call_id)
        sim.dial("op", "cl", "380639920001@pstn")
        self.reactor.advance(2)
        sim.state("cl", "Up")
        sim.bridge("br-1", "op", "cl")
        self.reactor.advance(8)
        sim.leave("br-1", "op")
        sim.leave("br-1", "cl")
        sim.set("op", Context="agi-app-hold", Exten="release")
        sim.hangup("op")
        sim.set("cl", Context="agi-app-transfer")
        sim.new("PJSIP/1001-0000001b", "t", linkedid="op", var=call_id)
        sim.dial("cl", "t", "1001")
        sim.state("t", "Up")
        sim.bridge("br-2", "t", "cl")
        self.reactor.advance(20)
        sim.hangup("t")
        sim.hangup("cl")

    def test_the_hangup_that_ends_a_transferred_call_names_its_extension(self):
        start = 1_795_644_000.0
        self.store.calls["c-9"] = {"order_id": "o-9", "external_key": None}
        self.store.history["c-9"] = [
            {"status": "CLIENT_PICKUP", "time": iso_time(start + 2), "detail": None},
            {"status": "TRANSFER", "time": iso_time(start + 10), "detail": "1000 → 1001"},
        ]
        self.blind_transfer("c-9")
        got = self.hangups()
        self.assertEqual(got["1001"]["HangupExtension"], "1001")
        self.assertEqual(got["1001"]["TotalDuration"], "28")
        self.assertEqual(got["1001"]["Duration"], "20")
        self.assertEqual(got["1001"]["CallID"], "c-9")
        # 1000 handed the call over: its hangup ended nothing
        self.assertEqual(got["1000"]["CallID"], "c-9")
        self.assertNotIn("HangupExtension", got["1000"])
        self.assertNotIn("TotalDuration", got["1000"])

    def test_a_call_never_transferred_has_no_such_fields(self):
        self.store.calls["c-10"] = {"order_id": None, "external_key": None}
        self.store.history["c-10"] = [
            {"status": "CLIENT_PICKUP", "time": iso_time(1_795_644_002.0), "detail": None},
        ]
        self.blind_transfer("c-10")  # the same channels, but no TRANSFER in the history
        for fields in self.hangups().values():
            self.assertNotIn("HangupExtension", fields)
            self.assertNotIn("TotalDuration", fields)
