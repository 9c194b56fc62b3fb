"""CallTracker fed with the event sequences Asterisk 22 really sends (recorded
on the sandbox PBX and replayed through the in-memory FakeAMIServer): grouping
channels into calls, the call_mdl of each extension, call events, resync."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.live.tracker import CallEvent, CallTracker, gmt

USER, SECRET = "agi_app", "s3cret"
T0 = 1_795_644_000.0
STATES = {"Down": "0", "Ring": "4", "Ringing": "5", "Up": "6"}


class Sim:
    """A tiny PBX that keeps channel snapshots and emits the events Asterisk
    22 emits for them (field names and order as recorded on the sandbox)."""

    def __init__(self, server: FakeAMIServer):
        self.server = server
        self.snaps: dict[str, dict[str, str]] = {}
        self.apps: dict[str, tuple[str, str]] = {}
        self.bridges: dict[str, list[str]] = {}

    def _pairs(self, uid: str, prefix: str = "") -> list[tuple[str, str]]:
        snap = self.snaps[uid]
        pairs = [(prefix + k, v) for k, v in snap.items() if k != "vars"]
        for name, value in snap.get("vars", {}).items():  # type: ignore[union-attr]
            pairs.append((prefix + "ChanVariable", f"{name}={value}"))
        return pairs

    def _sync(self, uid: str) -> None:
        """What CoreShowChannels would list for the channel."""
        app, data = self.apps.get(uid, ("", ""))
        bridge = next((b for b, m in self.bridges.items() if uid in m), "")
        self.server.channels[uid] = self._pairs(uid) + [
            ("Application", app), ("ApplicationData", data),
            ("Duration", "00:00:05"), ("BridgeId", bridge),
        ]  # fmt: skip

    def new(self, name, uid, *, state="Down", linkedid=None, context="default", exten="s",
            num="<unknown>", cname="<unknown>", var=None, emit=True):  # fmt: skip
        self.snaps[uid] = {
            "Channel": name, "ChannelState": STATES[state], "ChannelStateDesc": state,
            "CallerIDNum": num, "CallerIDName": cname, "ConnectedLineNum": "<unknown>",
            "ConnectedLineName": "<unknown>", "Language": "en", "AccountCode": "",
            "Context": context, "Exten": exten, "Priority": "1", "Uniqueid": uid,
            "Linkedid": linkedid or uid, "vars": {"AGI_APP_CALL_ID": var or ""},
        }  # fmt: skip
        self._sync(uid)
        if emit:
            self.server.emit("Newchannel", self._pairs(uid))

    def set(self, uid, **fields):
        snap = self.snaps[uid]
        if "var" in fields:
            snap["vars"] = {"AGI_APP_CALL_ID": fields.pop("var")}
        if "state" in fields:
            state = fields.pop("state")
            snap["ChannelState"], snap["ChannelStateDesc"] = STATES[state], state
        snap.update(fields)
        self._sync(uid)

    def event(self, name, uid, **extra):
        self.server.emit(name, self._pairs(uid) + list(extra.items()))

    def state(self, uid, state):
        self.set(uid, state=state)
        self.event("Newstate", uid)

    def dial(self, caller, dest, dialstring):
        pairs = self._pairs(caller) if caller else []
        dest_pairs = self._pairs(dest, "Dest")
        self.server.emit("DialBegin", pairs + dest_pairs + [("DialString", dialstring)])

    def dial_end(self, caller, dest, status):
        pairs = self._pairs(caller) if caller else []
        self.server.emit("DialEnd", pairs + self._pairs(dest, "Dest") + [("DialStatus", status)])

    def bridge(self, bridge, *uids):
        members = self.bridges.setdefault(bridge, [])
        for uid in uids:
            members.append(uid)
            self._sync(uid)
            self.event("BridgeEnter", uid, BridgeUniqueid=bridge,
                       BridgeNumChannels=str(len(members)))

    def leave(self, bridge, uid):
        self.bridges[bridge].remove(uid)
        self._sync(uid)
        self.event("BridgeLeave", uid, BridgeUniqueid=bridge,
                   BridgeNumChannels=str(len(self.bridges[bridge])))

    def hangup(self, uid, cause=16):
        for members in self.bridges.values():
            if uid in members:
                members.remove(uid)
        self.server.channels.pop(uid, None)
        self.event("Hangup", uid, Cause=str(cause), **{"Cause-txt": ""})
        del self.snaps[uid]

    # -- the call flows recorded on the sandbox -------------------------------

    def trunk_to_operator(self, trunk="trunk-1", op="pbx-1.3", answer=True):
        """A client calls in on the trunk (DID 0443334023) and extension 1000 is rung."""
        self.new("PJSIP/pstn-00000002", trunk, state="Ring", context="from-pstn",
                 exten="0443334023", num="380501234567", cname="Client")
        self.set(trunk, Exten="0443334023")
        self.state(trunk, "Up")
        self.new("PJSIP/1000-00000003", op, linkedid=trunk, context="sandbox-operators",
                 num="1000", cname="Operator 1000")
        self.set(op, ConnectedLineNum="380501234567", ConnectedLineName="Client",
                 Exten="1000")
        self.dial(trunk, op, "1000")
        self.state(op, "Ringing")
        if answer:
            self.answer_operator(trunk, op)

    def answer_operator(self, trunk="trunk-1", op="pbx-1.3"):
        self.state(op, "Up")
        self.dial_end(trunk, op, "ANSWER")
        self.bridge("br-1", op, trunk)


class TrackerTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(T0)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.server.device_states.update({"PJSIP/1000": "NOT_INUSE", "PJSIP/1001": "NOT_INUSE"})
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
        self.tracker = CallTracker(self.ami, clock=self.reactor, trunks={"pstn"})
        self.events: list[CallEvent] = []
        self.tracker.subscribe(self.events.append)
        self.tracker.start()
        self.ami.startService()
        self.link = self.server.accept(self.reactor)
        self.sim = Sim(self.server)
        self.addCleanup(self.ami.stopService)

    def kinds(self, extension=None):
        return [(e.kind, e.extension, e.direction) for e in self.events
                if extension is None or e.extension == extension]


class IncomingCallTests(TrackerTestCase):
    def test_trunk_call_to_operator_is_one_call_seen_from_both_sides(self):
        self.sim.trunk_to_operator(answer=False)
        self.reactor.advance(3)
        self.sim.answer_operator()
        [call] = self.tracker.calls()
        self.assertEqual(call.call_api_id, "trunk-1")
        self.assertEqual(set(call.legs), {"trunk-1", "pbx-1.3"})
        [mdl] = self.tracker.calls_of_extension("1000")
        self.assertEqual(mdl["call_api_id"], "trunk-1")
        self.assertEqual(mdl["call_flow"], "in")
        self.assertEqual(mdl["caller_id_number"], "380501234567")
        self.assertEqual(mdl["caller_id_name"], "Client")
        self.assertEqual(mdl["called_number"], "0443334023")
        self.assertEqual(mdl["called_did"], "0443334023")
        self.assertEqual(mdl["called_extension"], {"id": "1000", "name": "Operator 1000"})
        self.assertIsNone(mdl["caller_extension"])
        self.assertEqual(mdl["init_time_gmt"], gmt(T0))
        self.assertEqual(mdl["answer_time_gmt"], gmt(T0 + 3))
        self.assertEqual(mdl["init_time_gmt"], "2026-11-25 22:00:00")
        self.assertIs(mdl["real_call"], True)
        self.assertEqual(mdl["state"], "talking")
        self.assertIsNone(mdl["record_uuid"])
        self.assertEqual(self.tracker.calls_of_extension("1001"), [])

    def test_events_ringing_answered_hungup_with_status_and_duration(self):
        self.sim.trunk_to_operator()
        self.reactor.advance(42)
        self.sim.hangup("pbx-1.3")
        self.sim.hangup("trunk-1")
        self.assertEqual(
            self.kinds("1000"),
            [("ringing", "1000", "in"), ("answered", "1000", "in"), ("hungup", "1000", "in")],
        )
        hungup = self.events[-2]
        self.assertEqual((hungup.kind, hungup.extension), ("hungup", "1000"))
        self.assertEqual(hungup.status, "ANSWER")
        self.assertEqual(hungup.duration, 42.0)
        self.assertEqual(hungup.call["caller_id_number"], "380501234567")
        # The outside line's own leg: an inbound call, no extension.
        self.assertEqual(self.kinds(None)[0], ("ringing", None, "in"))
        self.assertEqual(self.events[-1].extension, None)
        self.assertEqual(self.tracker.calls(), [])

    def test_busy_extension_rings_then_hangs_up_busy(self):
        self.sim.trunk_to_operator(answer=False)
        self.sim.dial_end("trunk-1", "pbx-1.3", "BUSY")
        self.sim.hangup("pbx-1.3", cause=17)
        [ringing, hungup] = [e for e in self.events if e.extension == "1000"]
        self.assertEqual((ringing.kind, hungup.kind, hungup.status), ("ringing", "hungup", "BUSY"))
        self.assertEqual(hungup.duration, 0.0)

    def test_extension_hung_up_before_anyone_answered_is_cancel_without_dial_end(self):
        self.sim.trunk_to_operator(answer=False)
        self.sim.hangup("trunk-1")
        self.sim.hangup("pbx-1.3")
        self.assertEqual(self.events[-1].status, "CANCEL")
        self.assertEqual([e.kind for e in self.events if e.extension == "1000"],
                         ["ringing", "hungup"])


class OutgoingCallTests(TrackerTestCase):
    def test_operator_dials_an_outside_number(self):
        sim = self.sim
        sim.new("PJSIP/1001-00000017", "op-2", state="Ring", context="sandbox-operators",
                exten="380501112233", num="1001", cname="Anna")
        sim.new("PJSIP/pstn-00000018", "out-2", linkedid="op-2", num="380501112233")
        sim.dial("op-2", "out-2", "380501112233@pstn")
        sim.state("out-2", "Ringing")
        sim.state("out-2", "Up")
        sim.state("op-2", "Up")
        sim.bridge("br-2", "out-2", "op-2")
        [mdl] = self.tracker.calls_of_extension("1001")
        self.assertEqual(mdl["call_flow"], "out")
        self.assertEqual(mdl["called_number"], "380501112233")
        self.assertEqual(mdl["caller_extension"], {"id": "1001", "name": "Anna"})
        self.assertIsNone(mdl["called_extension"])
        self.assertEqual((mdl["caller_id_number"], mdl["caller_id_name"]), ("1001", "Anna"))
        self.assertIsNone(mdl["called_did"])
        self.assertEqual(self.kinds("1001")[0], ("ringing", "1001", "out"))

    def test_internal_call_shows_both_extensions(self):
        sim = self.sim
        sim.new("PJSIP/1001-00000001", "a", state="Ring", context="ops", exten="1000",
                num="1001", cname="Anna")
        sim.new("PJSIP/1000-00000002", "b", linkedid="a", num="1000", cname="Boris")
        sim.set("b", ConnectedLineNum="1001", ConnectedLineName="Anna")
        sim.dial("a", "b", "1000")
        sim.state("b", "Ringing")
        [callee] = self.tracker.calls_of_extension("1000")
        [caller] = self.tracker.calls_of_extension("1001")
        self.assertEqual(callee["call_api_id"], caller["call_api_id"])
        self.assertEqual((callee["call_flow"], caller["call_flow"]), ("in", "out"))
        self.assertEqual(callee["caller_extension"], {"id": "1001", "name": "Anna"})
        self.assertEqual(caller["called_extension"], {"id": "1000", "name": "Boris"})
        self.assertEqual(callee["state"], "ringing")
        self.assertIsNone(callee["answer_time_gmt"])

    def test_click_to_call_takes_the_agi_app_call_id_once_the_variable_shows(self):
        sim = self.sim
        # Asterisk publishes Newchannel and DialBegin before Originate's
        # variables are set; they show from the first Newstate on.
        sim.new("PJSIP/1000-00000019", "agiapp-1", context="sandbox-operators", num="380639920001",
                cname="Order 15")
        sim.dial(None, "agiapp-1", "1000")
        self.assertEqual(self.tracker.calls()[0].call_api_id, "agiapp-1")
        sim.set("agiapp-1", var="c-77")
        sim.state("agiapp-1", "Ringing")
        sim.state("agiapp-1", "Up")
        [call] = self.tracker.calls()
        self.assertEqual((call.call_api_id, call.call_id), ("c-77", "c-77"))
        self.assertIs(self.tracker.call("agiapp-1"), call)  # the first id is an alias
        sim.event("MixMonitorStart", "agiapp-1")
        sim.new("PJSIP/pstn-0000001a", "cl-1", linkedid="agiapp-1", num="380639920001",
                var="c-77")
        sim.dial("agiapp-1", "cl-1", "380639920001@pstn")
        sim.state("cl-1", "Up")
        sim.bridge("br-3", "agiapp-1", "cl-1")
        [mdl] = self.tracker.calls_of_extension("1000")
        self.assertEqual(mdl["call_api_id"], "c-77")
        self.assertEqual(mdl["call_id"], "c-77")
        self.assertEqual(mdl["call_flow"], "out")
        self.assertEqual(mdl["called_number"], "380639920001")
        self.assertEqual(mdl["record_uuid"], "c-77")
        self.assertEqual(
            self.kinds("1000"), [("ringing", "1000", "out"), ("answered", "1000", "out")]
        )
        self.assertTrue(all(e.call_id == "c-77" for e in self.events if e.extension == "1000"))


class TrunkTests(TrackerTestCase):
    def test_trunks_come_from_the_dialing_section(self):
        from agi_app.config import DialingConfig

        dialing = DialingConfig(default_trunk="pstn", trunks=("pstn2", "pstn"))
        tracker = CallTracker.for_dialing(self.ami, dialing, self.reactor)
        self.assertEqual(tracker.trunks, {"pstn", "pstn2"})
        self.assertFalse(tracker.is_trunk("101"))

    def test_a_dial_string_through_an_extension_does_not_make_it_a_trunk(self):
        sim = self.sim
        # A request with trunk=101: 1001's call to an outside number goes out
        # as 380501112233@101, i.e. rings extension 101.
        sim.new("PJSIP/1001-00000017", "op-2", state="Ring", context="sandbox-operators",
                exten="380501112233", num="1001", cname="Anna")
        sim.new("PJSIP/101-00000018", "via-101", linkedid="op-2", num="380501112233")
        sim.dial("op-2", "via-101", "380501112233@101")
        sim.state("via-101", "Ringing")
        self.assertFalse(self.tracker.is_trunk("101"))
        self.assertEqual(self.tracker.trunks, {"pstn"})
        [mdl] = self.tracker.calls_of_extension("101")
        self.assertEqual(mdl["caller_extension"], {"id": "1001", "name": "Anna"})
        sim.hangup("via-101")
        sim.hangup("op-2")
        # A later call to extension 101 is still a call of extension 101.
        sim.new("PJSIP/1000-00000019", "a", state="Ring", context="ops", exten="101",
                num="1000", cname="Boris")
        sim.new("PJSIP/101-0000001a", "b", linkedid="a", num="101")
        sim.dial("a", "b", "101")
        sim.state("b", "Ringing")
        [mdl] = self.tracker.calls_of_extension("101")
        self.assertEqual(mdl["called_extension"]["id"], "101")
        self.assertEqual(mdl["caller_extension"]["id"], "1000")


class GroupingTests(TrackerTestCase):
    def test_pickup_merges_the_picker_into_the_call(self):
        sim = self.sim
        sim.trunk_to_operator(answer=False)
        self.reactor.advance(2)
        sim.new("PJSIP/1001-00000016", "pick-1", num="1001", cname="Anna")
        sim.dial(None, "pick-1", "1001")
        sim.state("pick-1", "Up")
        self.assertEqual(len(self.tracker.calls()), 2)
        sim.hangup("pbx-1.3", cause=26)
        sim.dial_end("trunk-1", "pick-1", "ANSWER")
        sim.bridge("br-9", "pick-1", "trunk-1")
        [call] = self.tracker.calls()
        self.assertEqual(call.call_api_id, "trunk-1")
        self.assertIs(self.tracker.call("pick-1"), call)
        [mdl] = self.tracker.calls_of_extension("1001")
        self.assertEqual(mdl["caller_id_number"], "380501234567")
        self.assertEqual(mdl["state"], "talking")
        picked = [e for e in self.events if e.extension == "1000" and e.kind == "hungup"]
        self.assertEqual(picked[0].status, "CANCEL")

    def test_spy_leg_joins_the_call_but_is_no_party(self):
        sim = self.sim
        sim.trunk_to_operator()
        sim.new("PJSIP/1001-0000000a", "spy-1", num="1001", cname="Anna", context="agi-app-spy",
                exten="eavesdrop")
        sim.dial(None, "spy-1", "1001")
        sim.state("spy-1", "Up")
        spy = sim._pairs("spy-1", "Spyer") + sim._pairs("pbx-1.3", "Spyee")
        self.server.emit("ChanSpyStart", spy)
        [call] = self.tracker.calls()
        self.assertIn("spy-1", call.legs)
        [spy] = self.tracker.calls_of_extension("1001")
        self.assertIs(spy["real_call"], False)
        self.assertEqual(spy["state"], "listening")
        [mine] = self.tracker.calls_of_extension("1000")
        self.assertEqual(mine["caller_id_number"], "380501234567")  # the spy is not the peer
        self.assertIn(("answered", "1001", "in"), self.kinds("1001"))

    def test_local_channels_tie_calls_and_stay_invisible(self):
        sim = self.sim
        sim.new("Local/q@queue-00000001;1", "l1", state="Ring")
        sim.new("Local/q@queue-00000001;2", "l2", linkedid="x-other")
        sim.new("PJSIP/1000-00000020", "op-9", linkedid="x-other", num="1000")
        sim.dial("l2", "op-9", "1000")
        sim.state("op-9", "Ringing")
        [call] = self.tracker.calls()
        self.assertEqual(set(call.legs), {"l1", "l2", "op-9"})
        self.assertEqual([e.extension for e in self.events], ["1000"])

    def test_hold_and_park_states(self):
        sim = self.sim
        sim.trunk_to_operator()
        sim.leave("br-1", "trunk-1")
        sim.leave("br-1", "pbx-1.3")
        sim.set("trunk-1", Context="agi-app-hold")
        sim.event("MusicOnHoldStart", "trunk-1")
        sim.set("pbx-1.3", Context="agi-app-hold", Exten="holder")
        [mdl] = self.tracker.calls_of_extension("1000")
        self.assertEqual(mdl["state"], "hold")
        sim.event("MusicOnHoldStop", "trunk-1")
        self.server.emit("ParkedCall", sim._pairs("trunk-1", "Parkee") + [("ParkingSpace", "701")])
        self.assertEqual(self.tracker.leg("trunk-1").parked_at, "701")
        self.assertEqual(self.tracker.calls_of_extension("1000")[0]["state"], "parked")


class SubscriberTests(TrackerTestCase):
    def test_a_failing_subscriber_does_not_stop_the_others_and_unsubscribe_works(self):
        seen: list[str] = []

        def broken(event):
            raise RuntimeError("boom")

        self.tracker.subscribe(broken)
        unsubscribe = self.tracker.subscribe(lambda e: seen.append(e.kind))
        self.sim.trunk_to_operator(answer=False)
        self.assertIn("ringing", seen)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(seen))
        unsubscribe()
        count = len(seen)
        self.sim.hangup("pbx-1.3")
        self.assertEqual(len(seen), count)
        self.assertEqual(self.events[-1].kind, "hungup")  # the first subscriber still hears
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ResyncTests(TrackerTestCase):
    def test_reconnect_ends_vanished_calls_and_adopts_new_ones(self):
        sim = self.sim
        sim.trunk_to_operator()
        self.link.drop()
        # While the link is down: the call ends, another one starts (an
        # extension calling out, already talking, and a rung extension).
        for uid in ("pbx-1.3", "trunk-1"):
            self.server.channels.pop(uid)
        sim.new("PJSIP/1001-00000030", "n1", state="Up", num="1001", cname="Anna", emit=False,
                exten="380509990000")
        sim.new("PJSIP/pstn-00000031", "n2", state="Up", linkedid="n1", emit=False,
                num="380509990000")
        sim.apps.update({"n1": ("Dial", "PJSIP/380509990000@pstn"), "n2": ("AppDial", "")})
        sim.bridges["br-7"] = ["n1", "n2"]
        sim._sync("n1")
        sim._sync("n2")
        self.reactor.advance(5)
        self.link = self.server.accept(self.reactor)
        self.assertTrue(self.ami.connected)
        hungup = [e for e in self.events if e.kind == "hungup"]
        self.assertEqual({e.uniqueid for e in hungup}, {"pbx-1.3", "trunk-1"})
        [call] = self.tracker.calls()
        self.assertEqual(call.call_api_id, "n1")
        [mdl] = self.tracker.calls_of_extension("1001")
        self.assertEqual(mdl["call_flow"], "out")
        self.assertEqual(mdl["state"], "talking")
        # creation time from Duration (5 s) before the resync
        self.assertEqual(mdl["init_time_gmt"], gmt(self.reactor.seconds() - 5))
        self.assertIsNotNone(mdl["answer_time_gmt"])
        # no "ringing"/"answered" for a call found already running
        self.assertFalse([e for e in self.events if e.uniqueid in ("n1", "n2")])
        sim.hangup("n1")
        self.assertEqual([(e.kind, e.status) for e in self.events if e.uniqueid == "n1"],
                         [("hungup", "ANSWER")])
