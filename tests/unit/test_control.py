"""CallControl against the in-memory FakeAMIServer: what each action sends to
the PBX (checked on the AMI actions received), and that bad input, unknown
extensions or calls and impossible states send nothing at all."""

from __future__ import annotations

from test_tracker import SECRET, T0, USER, Sim
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.config import DialingConfig
from agi_app.errors import PBXUnavailable
from agi_app.live.control import (
    ActionNotPossible,
    CallControl,
    CallNotFound,
    PBXRefused,
    UnknownExtension,
)
from agi_app.live.tracker import CallTracker
from agi_app.store.testing import MemoryStore
from agi_app.validation import InvalidInput

# Actions the client sends by itself: not caused by call control.
_BACKGROUND = {"login", "coreshowchannels", "devicestatelist", "pjsipshowcontacts", "ping"}


class ControlTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(T0)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.server.device_states.update({
            "PJSIP/1000": "INUSE", "PJSIP/1001": "NOT_INUSE", "PJSIP/1002": "UNAVAILABLE",
            "PJSIP/pstn": "NOT_INUSE",
        })  # fmt: skip
        self.server.handlers["hangup"] = self._hangup
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
        self.tracker = CallTracker(self.ami, clock=self.reactor, trunks={"pstn"})
        self.tracker.start()
        self.store = MemoryStore(self.reactor)
        self.addCleanup(self.store.close)
        self.control = CallControl(
            ami=self.ami, tracker=self.tracker, dialing=DialingConfig(), clock=self.reactor,
            store=self.store, new_id=lambda: "agiapp-new",
        )  # fmt: skip
        self.ami.startService()
        self.link = self.server.accept(self.reactor)
        self.addCleanup(self.ami.stopService)
        self.sim = Sim(self.server)
        self.sim.trunk_to_operator()  # call "trunk-1": client <-> extension 1000 ("pbx-1.3")

    def _hangup(self, peer, action):
        # Asterisk finds a channel by name or by uniqueid
        uid = action["Channel"]
        if uid not in self.sim.snaps:
            peer.error(action, "No such channel")
            return
        peer.respond(action, Message="Channel Hungup")
        self.sim.hangup(uid)

    def sent(self):
        """The actions call control sent, as (name, {headers}) pairs."""
        out = []
        for a in self.server.actions:
            name = a["Action"]
            if name.lower() in _BACKGROUND:
                continue
            headers = {k: v for k, v in a.raw if k not in ("Action", "ActionID")}
            headers["Variable"] = a.getall("Variable")
            if not headers["Variable"]:
                del headers["Variable"]
            out.append((name, headers))
        return out

    def act(self, *args, **kwargs):
        return self.successResultOf(self._d(self.control.act(*args, **kwargs)))

    def refused(self, exc, *args, **kwargs):
        failure = self.failureResultOf(self._d(self.control.act(*args, **kwargs)), exc)
        self.assertEqual(self.sent(), [], "nothing may reach the PBX")
        return failure.value

    @staticmethod
    def _d(coro):
        from twisted.internet import defer

        return defer.ensureDeferred(coro)


class BadInputTests(ControlTestCase):
    def test_unknown_action(self):
        e = self.refused(InvalidInput, "1000", "trunk-1", "teleport", "1001")
        self.assertEqual((e.field, e.code), ("action", "invalid_action"))

    def test_missing_send_dst(self):
        for action in ("transfer", "attended_transfer", "eavesdrop", "whisper", "conference",
                       "pickup"):
            e = self.refused(InvalidInput, "1000", "trunk-1", action, None)
            self.assertEqual((e.field, e.code), ("send_dst", "missing_send_dst"))

    def test_injection_in_send_dst(self):
        for bad in ("1001&PJSIP/1002", "1001,1,G(x)", "1001\r\nAction: Hangup", "PJSIP/1001",
                    "1001@pstn", "123(", "٣٨٠٦٣٩٩٢٠٠٠٠", "x" * 40):
            e = self.refused(InvalidInput, "1000", "trunk-1", "transfer", bad)
            self.assertEqual(e.field, "send_dst", bad)

    def test_unknown_extension_or_call(self):
        self.refused(UnknownExtension, "1999", "trunk-1", "hold")
        self.refused(UnknownExtension, "pstn", "trunk-1", "hold")  # a trunk is no extension
        self.refused(InvalidInput, "10 00", "trunk-1", "hold")
        self.refused(CallNotFound, "1000", "no-such-call", "hold")
        self.refused(CallNotFound, "1001", "trunk-1", "hold")  # 1001 is not in that call
        e = self.refused(InvalidInput, "1000", "trunk-1\r\nAction: Hangup", "hold")
        self.assertEqual(e.field, "call_api_id")

    def test_offline_destination(self):
        e = self.refused(ActionNotPossible, "1000", "trunk-1", "transfer", "1002")
        self.assertEqual((e.code, e.field), ("send_dst_offline", "send_dst"))

    def test_transfer_to_itself(self):
        e = self.refused(InvalidInput, "1000", "trunk-1", "transfer", "1000")
        self.assertEqual(e.field, "send_dst")

    def test_pbx_down(self):
        self.link.drop()
        self.refused(PBXUnavailable, "1000", "trunk-1", "hold")


class ActionTests(ControlTestCase):
    def test_blind_transfer_to_an_extension(self):
        self.assertEqual(self.act("1000", "trunk-1", "transfer", "1001"), {})
        self.assertEqual(self.sent(), [
            ("Setvar", {"Channel": "trunk-1", "Variable": ["AGI_APP_TARGET"],
                        "Value": "PJSIP/1001"}),
            ("Setvar", {"Channel": "trunk-1", "Variable": ["AGI_APP_RING"], "Value": "30"}),
            ("Setvar", {"Channel": "pbx-1.3", "Variable": ["AGI_APP_HANDOFF"],
                        "Value": "transfer"}),
            ("Redirect", {"Channel": "trunk-1", "Context": "agi-app-transfer", "Exten": "s",
                          "Priority": "1", "ExtraChannel": "pbx-1.3",
                          "ExtraContext": "agi-app-hold", "ExtraExten": "release",
                          "ExtraPriority": "1"}),
        ])  # fmt: skip

    def test_transfer_to_an_outside_number_uses_the_trunk(self):
        self.act("1000", "trunk-1", "transfer", "+380501234999")
        self.assertEqual(self.sent()[0][1]["Value"], "PJSIP/+380501234999@pstn")
        self.assertEqual(self.sent()[1][1]["Value"], "40")  # call_time_to_client

    def test_attended_transfer(self):
        self.act("1000", "trunk-1", "attended_transfer", "1001")
        sent = self.sent()
        own_vars = {h["Variable"][0]: h["Value"] for n, h in sent
                    if n == "Setvar" and h["Channel"] == "pbx-1.3"}
        self.assertEqual(own_vars, {
            "AGI_APP_TARGET": "PJSIP/1001", "AGI_APP_RING": "30", "AGI_APP_RETURNED": "",
            "__AGI_APP_PEER": "trunk-1", "AGI_APP_HANDOFF": "attended_transfer",
        })  # fmt: skip
        self.assertEqual(sent[-1], ("Redirect", {
            "Channel": "trunk-1", "Context": "agi-app-hold", "Exten": "s", "Priority": "1",
            "ExtraChannel": "pbx-1.3", "ExtraContext": "agi-app-consult", "ExtraExten": "s",
            "ExtraPriority": "1",
        }))  # fmt: skip

    def test_hold_then_offhold(self):
        self.refused(ActionNotPossible, "1000", "trunk-1", "offhold")
        self.act("1000", "trunk-1", "hold")
        self.assertEqual(self.sent()[-1][1]["ExtraExten"], "holder")
        self.assertEqual(self.sent()[-1][1]["Context"], "agi-app-hold")
        # What Asterisk then reports: both left the bridge, into agi-app-hold.
        sim = self.sim
        sim.leave("br-1", "trunk-1")
        sim.leave("br-1", "pbx-1.3")
        sim.set("trunk-1", Context="agi-app-hold", Exten="s")
        sim.event("MusicOnHoldStart", "trunk-1")
        sim.set("pbx-1.3", Context="agi-app-hold", Exten="holder")
        sim.event("Newstate", "pbx-1.3")
        e = self.failureResultOf(self._d(self.control.act("1000", "trunk-1", "hold")),
                                 ActionNotPossible).value
        self.assertEqual(e.code, "not_connected")
        self.server.handlers["bridge"] = lambda p, a: p.respond(a, Message="Channels bridged")
        self.server.actions.clear()
        self.act("1000", "trunk-1", "offhold")
        self.assertEqual(self.sent(), [("Bridge", {"Channel1": "pbx-1.3", "Channel2": "trunk-1"})])

    def test_offhold_asks_the_pbx_when_the_holder_sent_no_event(self):
        # Asterisk's BridgeLeave of the redirected extension may still show its
        # old context, and its Wait() in agi-app-hold sends nothing more.
        self.act("1000", "trunk-1", "hold")
        sim = self.sim
        sim.leave("br-1", "trunk-1")
        sim.set("trunk-1", Context="agi-app-hold", Exten="s")
        sim.event("MusicOnHoldStart", "trunk-1")
        sim.leave("br-1", "pbx-1.3")
        self.assertNotEqual(self.tracker.leg("pbx-1.3").context, "agi-app-hold")
        where = {"pbx-1.3": "from-internal"}
        self.server.handlers["getvar"] = lambda p, a: p.respond(
            a, Variable=a["Variable"], Value=where[a["Channel"]])
        self.server.handlers["bridge"] = lambda p, a: p.respond(a, Message="Channels bridged")
        self.server.actions.clear()
        e = self.failureResultOf(self._d(self.control.act("1000", "trunk-1", "offhold")),
                                 ActionNotPossible).value
        self.assertEqual(e.code, "not_on_hold")
        self.assertEqual(self.sent(), [("Getvar", {"Channel": "pbx-1.3", "Variable": ["CONTEXT"]})])
        where["pbx-1.3"] = "agi-app-hold"
        self.server.actions.clear()
        self.act("1000", "trunk-1", "offhold")
        self.assertEqual(self.sent(), [
            ("Getvar", {"Channel": "pbx-1.3", "Variable": ["CONTEXT"]}),
            ("Bridge", {"Channel1": "pbx-1.3", "Channel2": "trunk-1"}),
        ])

    def test_park_reports_the_space_and_releases_the_extension(self):
        def park(peer, action):
            peer.respond(action, Message="Park successful")
            self.server.emit("ParkedCall", self.sim._pairs("trunk-1", "Parkee")
                             + [("ParkingSpace", "701")])

        self.server.handlers["park"] = park
        self.assertEqual(self.act("1000", "trunk-1", "park"), {"parking_space": "701"})
        names = [n for n, _ in self.sent()]
        self.assertEqual(names, ["Setvar", "Park", "Hangup"])
        self.assertEqual(self.sent()[1][1], {"Channel": "trunk-1",
                                             "TimeoutChannel": "PJSIP/1000-00000003"})
        self.assertEqual(self.sent()[2][1]["Channel"], "pbx-1.3")

    def test_park_without_report_is_409(self):
        self.server.handlers["park"] = lambda p, a: p.respond(a, Message="Park successful")
        d = self._d(self.control.act("1000", "trunk-1", "park"))
        self.reactor.advance(3)
        self.failureResultOf(d, ActionNotPossible)

    def test_eavesdrop_whisper_conference_ring_send_dst_into_chanspy(self):
        for mode in ("eavesdrop", "whisper", "conference"):
            self.server.actions.clear()
            self.act("1000", "trunk-1", mode, "1001")
            [(name, h)] = self.sent()
            self.assertEqual(name, "Originate")
            self.assertEqual(
                (h["Channel"], h["Context"], h["Exten"], h["Variable"], h["Async"]),
                ("PJSIP/1001", "agi-app-spy", mode, ["AGI_APP_SPY=pbx-1.3"], "true"),
            )
            self.assertEqual(h["CallerID"], f'"{mode} 1000" <1000>')

    def test_pickup_of_a_ringing_call(self):
        self.sim.new("PJSIP/pstn-00000040", "t2", state="Ring", num="380509998877",
                     cname='Evil" <1>')
        self.sim.state("t2", "Up")
        self.sim.new("PJSIP/1002-00000041", "r2", linkedid="t2", num="1002")
        self.sim.dial("t2", "r2", "1002")
        self.sim.state("r2", "Ringing")
        self.server.device_states["PJSIP/1002"] = "RINGING"
        self.link.drop()
        self.reactor.advance(1)
        self.link = self.server.accept(self.reactor)
        self.server.actions.clear()
        self.act("1002", "t2", "pickup", "1001")
        [(name, h)] = self.sent()
        self.assertEqual((h["Context"], h["Variable"]), ("agi-app-pickup", ["AGI_APP_PICKUP=r2"]))
        self.assertEqual(h["CallerID"], '"Evil 1" <380509998877>')
        # an answered call cannot be picked up
        self.server.actions.clear()
        self.refused(ActionNotPossible, "1000", "trunk-1", "pickup", "1001")

    def test_pbx_refusal_is_a_409(self):
        self.server.handlers["redirect"] = lambda p, a: p.error(a, "Channel not found")
        d = self._d(self.control.act("1000", "trunk-1", "hold"))
        e = self.failureResultOf(d, PBXRefused).value
        self.assertIn("Channel not found", e.message)


class HangupTests(ControlTestCase):
    def test_delete_hangs_up_every_channel(self):
        self.successResultOf(self._d(self.control.hangup("1000", "trunk-1")))
        self.assertEqual(sorted(h["Channel"] for n, h in self.sent() if n == "Hangup"),
                         ["pbx-1.3", "trunk-1"])
        self.assertEqual(self.tracker.calls(), [])

    def test_hangup_call_by_general_call_id(self):
        self.sim.new("PJSIP/1001-00000050", "op-5", state="Up", num="1001", var="c-9")
        self.successResultOf(self._d(self.control.hangup_call("c-9")))
        self.assertEqual([h["Channel"] for n, h in self.sent()], ["op-5"])

    def test_hangup_call_of_an_ended_a_lost_or_an_unknown_call(self):
        for call_id in ("c-old", "c-open"):
            self.successResultOf(self.store.create_call(
                call_id=call_id, kind="makeCall", sip="1000", phone="380501234567",
                order_id=None, external_key=None, params={},
            ))  # fmt: skip
        self.successResultOf(self.store.add_status("c-old", "FINISH"))
        e = self.failureResultOf(self._d(self.control.hangup_call("c-old")),
                                 ActionNotPossible).value
        self.assertEqual(e.code, "call_ended")
        e = self.failureResultOf(self._d(self.control.hangup_call("c-open")),
                                 ActionNotPossible).value
        self.assertEqual(e.code, "not_live")  # in the log, but on no channel of the PBX
        self.failureResultOf(self._d(self.control.hangup_call("c-none")), CallNotFound)
        self.assertEqual(self.sent(), [])

    def test_attended_call_transfer_of_a_click_to_call(self):
        sim = self.sim
        sim.new("PJSIP/1001-00000060", "op-6", num="380630000001", var="c-6")
        sim.dial(None, "op-6", "1001")
        sim.state("op-6", "Up")
        sim.new("PJSIP/pstn-00000061", "cl-6", linkedid="op-6", var="c-6")
        sim.dial("op-6", "cl-6", "380630000001@pstn")
        sim.state("cl-6", "Up")
        sim.bridge("br-6", "op-6", "cl-6")
        self.server.actions.clear()
        self.successResultOf(self._d(self.control.transfer_call("c-6", "1000")))
        redirect = self.sent()[-1][1]
        self.assertEqual((redirect["Channel"], redirect["ExtraChannel"]), ("cl-6", "op-6"))
        self.assertEqual(redirect["ExtraContext"], "agi-app-consult")
        e = self.failureResultOf(self._d(self.control.transfer_call("c-6", "1001")),
                                 InvalidInput).value
        self.assertEqual(e.field, "phone_number")
