"""Missed calls found in the live tracker's events: the event sequences
Asterisk 22 sends (the sandbox recordings of test_tracker, replayed through
the in-memory AMI server) into a real CallTracker, MissedCalls on the real
store in memory, and the webhooks it would publish."""

from __future__ import annotations

from test_tracker import SECRET, T0, USER, Sim
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.calls.missed import MissedCalls, phone_variants
from agi_app.live.tracker import CallTracker
from agi_app.store.testing import MemoryStore, fired
from agi_app.times import iso_time


class Webhooks:
    """What the event service is asked: who wants what, and what is published."""

    def __init__(self, wanted: set[tuple[str, str]]):
        self.wanted = wanted
        self.published: list[tuple[str, str, dict, float | None]] = []

    def wants(self, extension: str, event_type: str) -> bool:
        return (extension, event_type) in self.wanted

    async def publish(self, extension, event_type, fields, *, when=None):
        self.published.append((extension, event_type, dict(fields), when))
        return len(self.published)


class MissedCallsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(T0)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
        self.tracker = CallTracker(self.ami, clock=self.reactor, trunks={"pstn"})
        self.store = MemoryStore(self.reactor)
        self.addCleanup(lambda: fired(self.store.close()))
        self.webhooks = Webhooks({("1000", "missed"), ("1002", "missed")})
        self.seen: list[dict] = []
        self.missed = MissedCalls(tracker=self.tracker, store=self.store, clock=self.reactor,
                                  events=self.webhooks, group=("1001", "1002"),
                                  on_missed=self.seen.append)  # fmt: skip
        self.tracker.start()
        self.missed.start()
        self.ami.startService()
        self.link = self.server.accept(self.reactor)
        self.sim = Sim(self.server)
        self.addCleanup(self.ami.stopService)

    def rows(self) -> list[dict]:
        return fired(self.store.missed_calls_after(0, 100))

    def caller(self, uid="trunk-1", num="380501234567", var=None):
        """A caller comes in through the trunk for DID 0443334023."""
        self.sim.new("PJSIP/pstn-00000002", uid, state="Ring", context="from-pstn",
                     exten="0443334023", num=num, cname="Client", var=var)  # fmt: skip

    def test_a_caller_who_rang_an_extension_and_gave_up_is_missed(self):
        self.sim.trunk_to_operator(answer=False)
        self.reactor.advance(12.5)
        self.sim.dial_end("trunk-1", "pbx-1.3", "CANCEL")
        self.sim.hangup("pbx-1.3", cause=16)
        self.sim.hangup("trunk-1", cause=16)
        [row] = self.rows()
        self.assertEqual(
            {k: row[k] for k in ("call_id", "phone", "did", "time", "extensions",
                                 "ring_seconds", "called_back")},
            {"call_id": "trunk-1", "phone": "380501234567", "did": "0443334023",
             "time": iso_time(T0), "extensions": ["1000"], "ring_seconds": 12.5,
             "called_back": None},
        )  # fmt: skip
        self.assertEqual(self.seen, [row])
        # the extensions it rang and the group; only those that subscribed
        self.assertEqual([(e, t) for e, t, _, _ in self.webhooks.published],
                         [("1000", "missed"), ("1002", "missed")])  # fmt: skip
        fields = self.webhooks.published[0][2]
        self.assertEqual(
            {k: fields[k] for k in ("CallID", "CallFlow", "CallerIDNum", "CallerIDName",
                                    "CalledDID", "MissedID", "RingSeconds", "Extensions")},
            {"CallID": "trunk-1", "CallFlow": "in", "CallerIDNum": "380501234567",
             "CallerIDName": "Client", "CalledDID": "0443334023", "MissedID": row["id"],
             "RingSeconds": "12.5", "Extensions": "1000"},
        )  # fmt: skip
        self.assertEqual(self.webhooks.published[0][3], T0 + 12.5)

    def test_a_caller_an_extension_answered_is_not_missed(self):
        self.sim.trunk_to_operator()
        self.reactor.advance(30)
        self.sim.hangup("pbx-1.3")
        self.sim.hangup("trunk-1")
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.webhooks.published, [])

    def test_nobody_online_is_a_missed_call_that_rang_no_one(self):
        self.caller()
        self.sim.state("trunk-1", "Up")
        self.reactor.advance(1)
        self.sim.hangup("trunk-1", cause=20)
        [row] = self.rows()
        self.assertEqual((row["extensions"], row["ring_seconds"]), ([], 1.0))
        self.assertEqual([e for e, _, _, _ in self.webhooks.published], ["1002"])

    def test_a_withheld_number_is_listed_without_a_phone(self):
        self.caller(num="anonymous")
        self.sim.hangup("trunk-1")
        [row] = self.rows()
        self.assertIsNone(row["phone"])
        self.assertEqual(self.webhooks.published[0][2]["CallerIDNum"], "anonymous")

    def test_a_later_call_that_gets_through_marks_the_number_handled(self):
        self.caller()
        self.sim.hangup("trunk-1")
        self.caller(uid="trunk-2", num="+380501234567")
        self.sim.hangup("trunk-2")
        self.assertEqual(len(self.rows()), 2)
        # the caller calls again and an extension answers
        self.reactor.advance(60)
        self.sim.trunk_to_operator(trunk="trunk-3", op="pbx-3.1")
        self.assertEqual([(r["called_back"], r["handled_at"]) for r in self.rows()],
                         [("trunk-3", iso_time(T0 + 60))] * 2)  # fmt: skip
        self.assertEqual(fired(self.store.open_missed_calls()), [])

    def test_an_outbound_call_that_gets_through_marks_the_number_handled(self):
        self.caller()
        self.sim.hangup("trunk-1")
        self.sim.new("PJSIP/1000-00000009", "op-9", state="Ring", context="sandbox-operators",
                     exten="380501234567", num="1000", cname="Operator 1000")  # fmt: skip
        self.sim.new("PJSIP/pstn-0000000a", "out-9", linkedid="op-9", num="380501234567")
        self.sim.dial("op-9", "out-9", "380501234567@pstn")
        self.sim.state("out-9", "Up")
        self.sim.bridge("br-9", "op-9", "out-9")
        [row] = self.rows()
        self.assertEqual(row["called_back"], "op-9")

    def test_a_caller_the_ivr_served_is_not_missed_one_that_asked_for_someone_is(self):
        for n, asked in enumerate((False, True)):
            call_id = f"ivr-{n}"
            fired(self.store.create_call(call_id=call_id, kind="incoming", sip=None,
                                         phone="380501234567", order_id=None,
                                         external_key=None, params={}))  # fmt: skip
            fired(self.store.add_status(call_id, "CLIENT_PICKUP", "menu main"))
            if asked:
                fired(self.store.add_status(call_id, "OPERATOR_CALLTO", "extension 1000"))
                fired(self.store.add_status(call_id, "OPERATOR_NOANSWER"))
            self.caller(uid=f"trunk-{n}", var=call_id)
            self.sim.state(f"trunk-{n}", "Up")
            self.sim.hangup(f"trunk-{n}")
        [row] = self.rows()
        self.assertEqual(row["call_id"], "ivr-1")

    def test_the_open_numbers_are_known_after_a_restart(self):
        fired(self.store.add_missed_call(call_id="old", phone="380501234567", did=None,
                                         time=iso_time(T0), extensions=[],
                                         ring_seconds=1))  # fmt: skip
        again = MissedCalls(tracker=self.tracker, store=self.store, clock=self.reactor)
        again.start()
        self.addCleanup(again.stop)
        self.sim.trunk_to_operator(trunk="trunk-3", op="pbx-3.1")
        [row] = self.rows()
        self.assertEqual(row["called_back"], "trunk-3")

    def test_phone_variants(self):
        self.assertEqual(phone_variants("+380501234567"), ("380501234567", "+380501234567"))
        self.assertEqual(phone_variants("380501234567"), ("380501234567", "+380501234567"))
