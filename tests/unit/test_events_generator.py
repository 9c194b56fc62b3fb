"""Seed 004's generation rules: CRM events from the call tracker, fed with
the AMI event sequences of the tracker's tests (recorded on the sandbox)."""

from __future__ import annotations

from test_tracker import Sim, TrackerTestCase  # noqa: F401 - the recorded call flows

from agi_app.events.delivery import DeliverySettings
from agi_app.events.generator import CallInfo, EventGenerator, crm_event
from agi_app.events.service import EVENT_TYPES, EventService
from agi_app.events.testing import MemoryEventStore
from agi_app.live.tracker import CallEvent
from agi_app.netguard import TargetGuard


class AutoSender:
    def __init__(self):
        self.requests = []

    def __call__(self, request):
        from twisted.internet.defer import succeed

        self.requests.append(request)
        return succeed(200)


class GeneratorTests(TrackerTestCase):
    def setUp(self):
        super().setUp()
        self.store = MemoryEventStore()
        self.sender = AutoSender()
        self.service = EventService(
            self.store, send=self.sender, clock=self.reactor, settings=DeliverySettings(),
            guard=TargetGuard(["127.0.0.0/8"]),
        )
        self.successResultOf(
            __import__("twisted").internet.defer.ensureDeferred(self.service.start())
        )
        info = CallInfo(self.store, public_url="https://127.0.0.1:8443/")
        self.generator = EventGenerator(self.tracker, self.service, info)
        self.generator.start()

    def subscribe(self, ext, kinds=EVENT_TYPES):
        from twisted.internet.defer import ensureDeferred

        for kind in kinds:
            self.successResultOf(
                ensureDeferred(
                    self.service.subscribe(
                        ext, url=f"http://127.0.0.1:9/{ext}", method="POST", event_type=kind
                    )
                )
            )

    def delivered(self, ext=None):
        """(EventType, fields) of every delivery, in the order sent."""
        from urllib.parse import parse_qsl

        out = []
        for r in self.sender.requests:
            if ext is None or r.url.endswith(f"/{ext}"):
                fields = dict(parse_qsl(r.body.decode()))
                out.append((fields["EventType"], fields))
        return out

    def test_incoming_call_from_the_trunk(self):
        self.subscribe("1000")
        self.subscribe("1001")
        self.sim.trunk_to_operator()
        self.reactor.advance(42)
        self.sim.hangup("pbx-1.3")
        self.sim.hangup("trunk-1")
        events = self.delivered("1000")
        self.assertEqual([t for t, _ in events], ["dial-in", "answer", "hangup"])
        dial_in = events[0][1]
        self.assertEqual(dial_in["CallFlow"], "in")
        self.assertEqual(dial_in["CallerIDNum"], "380501234567")
        self.assertEqual(dial_in["CallerIDName"], "Client")
        self.assertEqual(dial_in["CalledDID"], "0443334023")
        self.assertEqual(dial_in["CalledExtension"], "1000")
        self.assertEqual(dial_in["CallAPIID"], "trunk-1")
        self.assertNotIn("CallerExtension", dial_in)  # an outside caller
        hangup = events[2][1]
        self.assertEqual((hangup["CallStatus"], hangup["Duration"]), ("ANSWER", "42"))
        self.assertNotIn("RecordURL", hangup)
        ids = [int(f["EventID"]) for _, f in events]
        self.assertEqual(ids, sorted(ids))
        times = [int(f["EventTime"]) for _, f in events]
        self.assertEqual(times[0], int(1_795_644_000.0 * 1e6))
        self.assertEqual(times[2] - times[1], 42_000_000)
        self.assertEqual(self.delivered("1001"), [], "1001 took no part")

    def test_an_inbound_call_the_crm_knew_carries_name_and_link(self):
        """An inbound call agi_app looked up in the CRM (agi_app.inbound):
        every event of the operator's leg names the caller as the CRM does."""
        self.store.calls["c-90"] = {
            "order_id": None, "external_key": None, "kind": "incoming", "sip": "1000",
            "phone": "380501234567",
            "params": {"caller": "380501234567", "lookup": "found", "name": "Ivan Petrenko",
                       "crm_url": "https://crm.example/c/17", "operator": "1000"},
        }  # fmt: skip
        self.subscribe("1000")
        sim = self.sim
        sim.new("PJSIP/pstn-00000002", "trunk-9", state="Ring", context="agi-app-inbound",
                exten="0443334023", num="380501234567", cname="", var="c-90")  # fmt: skip
        sim.new("PJSIP/1000-00000003", "op-9", linkedid="trunk-9", context="sandbox-operators",
                num="1000", cname="Operator 1000", var="c-90")  # fmt: skip
        sim.set("op-9", ConnectedLineNum="380501234567", ConnectedLineName="Ivan Petrenko",
                Exten="1000")  # fmt: skip
        sim.dial("trunk-9", "op-9", "1000")
        sim.state("op-9", "Ringing")
        sim.answer_operator("trunk-9", "op-9")
        self.reactor.advance(3)
        sim.hangup("op-9")
        sim.hangup("trunk-9")
        events = self.delivered("1000")
        self.assertEqual([t for t, _ in events], ["dial-in", "answer", "hangup"])
        for _, f in events:
            self.assertEqual(f["CallID"], "c-90")
            self.assertEqual(f["CallFlow"], "in")
            self.assertEqual((f["name"], f["CallerIDName"]), ("Ivan Petrenko", "Ivan Petrenko"))
            self.assertEqual(f["crm_url"], "https://crm.example/c/17")
            self.assertEqual(f["CallerIDNum"], "380501234567")

    def test_calls_without_a_lookup_carry_no_name_fields(self):
        self.store.calls["c-91"] = {"kind": "incoming", "params": {"ivrName": "main"}}
        self.subscribe("1000")
        self.sim.trunk_to_operator()
        events = self.delivered("1000")
        self.assertEqual([t for t, _ in events], ["dial-in", "answer"])
        for _, f in events:
            self.assertNotIn("name", f)
            self.assertNotIn("crm_url", f)
            self.assertEqual(f["CallerIDName"], "Client")

    def test_click_to_call_gives_dial_out_answer_hangup_with_order_and_record(self):
        self.store.calls["c-77"] = {"order_id": "ord-15", "external_key": "k-15"}
        self.store.recordings["c-77"] = [{"record_id": 9}]
        self.subscribe("1000")
        sim = self.sim
        sim.new(
            "PJSIP/1000-00000019",
            "agiapp-1",
            context="sandbox-operators",
            num="380639920001",
            cname="Order 15",
            var="c-77",
        )
        sim.dial(None, "agiapp-1", "1000")
        sim.state("agiapp-1", "Ringing")
        sim.state("agiapp-1", "Up")
        sim.event("MixMonitorStart", "agiapp-1")
        sim.new("PJSIP/pstn-0000001a", "cl-1", linkedid="agiapp-1", num="380639920001", var="c-77")
        sim.dial("agiapp-1", "cl-1", "380639920001@pstn")
        sim.state("cl-1", "Up")
        sim.bridge("br-3", "agiapp-1", "cl-1")
        self.reactor.advance(5)
        sim.hangup("cl-1")
        sim.hangup("agiapp-1")
        events = self.delivered("1000")
        self.assertEqual([t for t, _ in events], ["dial-out", "answer", "hangup"])
        for _, f in events:
            self.assertEqual((f["CallID"], f["CallAPIID"]), ("c-77", "c-77"))
            self.assertEqual((f["OrderID"], f["ExternalKey"]), ("ord-15", "k-15"))
            self.assertEqual(f["CallFlow"], "out")
            self.assertEqual(f["CalledNumber"], "380639920001")
            self.assertEqual(f["CallerExtension"], "1000")
            self.assertNotIn("Transfered", f)
        hangup = events[2][1]
        self.assertEqual(hangup["RecordURL"], "https://127.0.0.1:8443/records/9")
        self.assertEqual((hangup["CallStatus"], hangup["Duration"]), ("ANSWER", "5"))

    def _closed(self, call_id, statuses, talk=None, time="2026-11-25T21:04:37Z"):
        """The lifecycle logged the call's final status (what its observers get)."""
        from agi_app.calls.lifecycle import Call, StatusLogged

        call = Call(call_id, "makeCall", {}, logged=list(statuses), final=True)
        entry = {"call_id": call_id, "status": statuses[-1], "time": time}
        self.generator.status_logged(StatusLogged(call, entry, 0.0, talk))

    def _placed(self, call_id):
        self.store.calls[call_id] = {
            "order_id": "ord-16", "external_key": "k-16", "kind": "makeCall", "sip": "1000",
            "phone": "380639920002", "params": {},
        }  # fmt: skip
        self.store.recordings[call_id] = [{"record_id": 11}]

    def test_a_call_that_ended_unseen_still_gives_the_operator_its_hangup(self):
        """agi_app was down (or its AMI link) for the whole of a call the
        dialplan connected by itself; the lifecycle closed it afterwards."""
        self._placed("c-80")
        self.subscribe("1000")
        happy = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO",
                 "CLIENT_PICKUP", "FINISH"]  # fmt: skip
        self._closed("c-80", happy, talk=3.4)
        [(kind, f)] = self.delivered("1000")
        self.assertEqual(kind, "hangup")
        self.assertEqual((f["CallID"], f["CallAPIID"]), ("c-80", "c-80"))
        self.assertEqual((f["OrderID"], f["ExternalKey"]), ("ord-16", "k-16"))
        self.assertEqual((f["CallFlow"], f["CallerExtension"]), ("out", "1000"))
        self.assertEqual(f["CalledNumber"], "380639920002")
        self.assertEqual((f["CallStatus"], f["Duration"]), ("ANSWER", "3"))
        self.assertEqual(f["RecordURL"], "https://127.0.0.1:8443/records/11")
        self.assertEqual(int(f["EventTime"]), 1795640677 * 1_000_000)

    def test_a_call_seen_or_never_answered_gets_no_made_up_hangup(self):
        self._placed("c-81")
        self._placed("c-82")
        self.subscribe("1000")
        sim = self.sim
        sim.new("PJSIP/1000-00000030", "agiapp-3", context="sandbox-operators", num="1000",
                cname="1000", var="c-81")  # fmt: skip
        sim.state("agiapp-3", "Up")
        sim.hangup("agiapp-3")
        seen = len(self.delivered("1000"))
        self._closed("c-81", ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CANCEL"])
        # the operator's phone never answered: nothing says it rang at all
        self._closed("c-82", ["CALL", "OPERATOR_CALLTO", "ERROR"])
        self.assertEqual(len(self.delivered("1000")), seen)
        self.assertEqual([t for t, _ in self.delivered("1000")].count("hangup"), 1)

    def test_ended_calls_leave_nothing_behind_in_the_memory_of_seen_calls(self):
        """The generator remembers the calls the tracker reported a leg of
        only until their final status (the one moment it asks): N calls
        placed and ended one after the other leave none of them behind, where
        it used to keep the last 10,000 (soak: about 150 bytes a call)."""
        self.subscribe("1000")
        sim = self.sim
        happy = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO",
                 "CLIENT_PICKUP", "FINISH"]  # fmt: skip
        calls = 300
        for n in range(calls):
            call_id = f"c-{n}"
            self._placed(call_id)
            op, cl = f"op-{n}", f"cl-{n}"
            sim.new(f"PJSIP/1000-{n:08x}", op, context="sandbox-operators", num="1000",
                    cname="1000", var=call_id)  # fmt: skip
            sim.dial(None, op, "1000")
            sim.state(op, "Up")
            sim.new(f"PJSIP/pstn-{n:08x}", cl, linkedid=op, num="380639920002", var=call_id)
            sim.dial(op, cl, "380639920002@pstn")
            sim.state(cl, "Up")
            sim.bridge(f"br-{n}", op, cl)
            self.reactor.advance(2)
            sim.hangup(cl)
            if n % 2:
                # as on the PBX: the FastAGI script logs FINISH once its Dial
                # returns, before the operator's channel hangs up
                self._closed(call_id, happy, talk=2.0)
                sim.hangup(op)
            else:
                # the lifecycle closed the call after its last hangup
                sim.hangup(op)
                self.assertEqual(len(self.generator._seen_calls), 1, "the call is remembered")
                self._closed(call_id, happy, talk=2.0)
            self.assertEqual(len(self.generator._seen_calls), 0, f"call {n} left behind")
        # every call's three events and no made-up hangup: the memory still
        # told the final status that the tracker had seen each call
        kinds = [t for t, _ in self.delivered("1000")]
        self.assertEqual(kinds, ["dial-out", "answer", "hangup"] * calls)

    def test_a_call_first_seen_at_its_hangup_gets_one_hangup(self):
        """agi_app restarted mid-call: the tracker learnt the call's channels
        without an event for them, then reports the operator's hangup; the
        lifecycle logs the final status after.  That hangup was the
        operator's event: no second one made up at the final status."""
        self._placed("c-90")
        self.subscribe("1000")
        sim = self.sim
        self.generator.stop()  # the channels came up while no agi_app watched
        sim.new("PJSIP/1000-00000090", "op-90", context="sandbox-operators", num="1000",
                cname="1000", var="c-90")  # fmt: skip
        sim.state("op-90", "Up")
        sim.new("PJSIP/pstn-00000091", "cl-90", linkedid="op-90", num="380639920002",
                var="c-90")  # fmt: skip
        sim.dial("op-90", "cl-90", "380639920002@pstn")
        sim.state("cl-90", "Up")
        sim.bridge("br-90", "op-90", "cl-90")
        self.generator.start()
        self.reactor.advance(2)
        sim.hangup("cl-90")
        sim.hangup("op-90")
        happy = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO",
                 "CLIENT_PICKUP", "FINISH"]  # fmt: skip
        self._closed("c-90", happy, talk=2.0)
        self.assertEqual([t for t, _ in self.delivered("1000")], ["hangup"])
        self.assertEqual(len(self.generator._seen_calls), 0)

    def test_click_to_call_first_seen_ringing_in_is_still_the_operators_dial_out(self):
        # Asterisk may report the originated channel ringing before the
        # DialBegin that shows it was originated: the store knows better.
        self.store.calls["c-78"] = {
            "order_id": "o",
            "external_key": None,
            "kind": "makeCall",
            "sip": "1000",
            "phone": "380639920001",
            "params": {},
        }
        self.subscribe("1000", kinds=("dial-out", "answer"))
        sim = self.sim
        sim.new(
            "PJSIP/1000-00000020",
            "agiapp-2",
            context="sandbox-operators",
            num="1000",
            cname="1000",
            var="c-78",
        )
        sim.state("agiapp-2", "Ringing")
        sim.dial(None, "agiapp-2", "1000")
        sim.state("agiapp-2", "Up")
        sim.new("PJSIP/pstn-00000021", "cl-2", linkedid="agiapp-2", num="380639920001", var="c-78")
        sim.dial("agiapp-2", "cl-2", "380639920001@pstn")
        sim.state("cl-2", "Up")
        sim.bridge("br-4", "agiapp-2", "cl-2")
        events = self.delivered("1000")
        self.assertEqual([t for t, _ in events], ["dial-out", "answer"])
        for _, f in events:
            self.assertEqual(f["CallFlow"], "out")
            self.assertEqual(f["CallerExtension"], "1000")
            self.assertEqual(f["CalledNumber"], "380639920001")
            self.assertNotIn("CalledExtension", f)

    def test_internal_call_dial_out_for_the_caller_dial_in_for_the_callee(self):
        self.subscribe("1000")
        self.subscribe("1001")
        sim = self.sim
        sim.new(
            "PJSIP/1001-00000001",
            "a",
            state="Ring",
            context="ops",
            exten="1000",
            num="1001",
            cname="Anna",
        )
        sim.new("PJSIP/1000-00000002", "b", linkedid="a", num="1000", cname="Boris")
        sim.set("b", ConnectedLineNum="1001", ConnectedLineName="Anna")
        sim.dial("a", "b", "1000")
        sim.state("b", "Ringing")
        [(kind_in, f_in)] = self.delivered("1000")
        [(kind_out, f_out)] = self.delivered("1001")
        self.assertEqual((kind_in, kind_out), ("dial-in", "dial-out"))
        self.assertEqual((f_in["CallerExtension"], f_in["CalledExtension"]), ("1001", "1000"))
        # The caller's dial-out goes when it dials: the number is known, the
        # extension that will ring not yet.
        self.assertEqual((f_out["CallerExtension"], f_out["CalledNumber"]), ("1001", "1000"))
        self.assertEqual(f_in["CallID"], f_out["CallID"])

    def test_only_subscribed_types_are_queued(self):
        self.subscribe("1000", kinds=("hangup",))
        self.sim.trunk_to_operator()
        self.sim.hangup("pbx-1.3")
        self.assertEqual([t for t, _ in self.delivered()], ["hangup"])
        self.assertEqual(len(self.store.events), 1)

    def test_forwarding_outside_gives_the_extension_a_transferred_dial_out(self):
        self.subscribe("1000")
        sim = self.sim
        # A client calls extension 1000, whose incoming rules forward to a mobile.
        sim.new(
            "PJSIP/pstn-00000030",
            "in-1",
            state="Ring",
            context="from-pstn",
            exten="1000",
            num="380501234567",
            cname="Client",
        )
        sim.new("PJSIP/pstn-00000031", "fw-1", linkedid="in-1", num="380509999999")
        sim.dial("in-1", "fw-1", "380509999999@pstn")
        sim.state("fw-1", "Ringing")
        [(kind, f)] = self.delivered("1000")
        self.assertEqual(kind, "dial-out")
        self.assertEqual(f["Transfered"], "yes")
        self.assertEqual(f["CallerExtension"], "1000")
        self.assertEqual(f["CalledNumber"], "380509999999")
        self.assertEqual(f["CallFlow"], "out")


def _event(kind="ringing", extension="200", direction="out", **call):
    return CallEvent(
        kind=kind,
        call_api_id="c1",
        call_id="c1",
        uniqueid="u1",
        channel="PJSIP/200-1",
        extension=extension,
        direction=direction,
        time=1.0,
        call=call,
    )


def test_a_call_of_an_extension_to_itself_gives_it_no_events():
    own = {"id": "200", "name": "200"}
    for kind in ("ringing", "answered", "hungup"):
        for direction in ("in", "out"):
            event = _event(kind, direction=direction, caller_extension=own, called_extension=own)
            assert crm_event(event) is None
    # ... while a callback of 200 to an outside number is 200's dial-out.
    ext, kind, fields = crm_event(_event(caller_extension=own, called_number="+79817654321"))
    assert (ext, kind, fields["CalledNumber"]) == ("200", "dial-out", "+79817654321")


def test_outside_legs_alone_give_no_events():
    assert crm_event(_event(extension=None, direction="in")) is None
    assert crm_event(_event(kind="answered", extension=None)) is None
