"""The FastAGI script ``inbound``: a caller looked up in the (fake, in
memory) CRM, named on the operator's phone and put through to the operator
the CRM names when free, else to ``[inbound] group`` -- with the history of
each outcome, and the call going on unchanged when the CRM fails."""

from __future__ import annotations

from test_ivr_engine import FakeAGI
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.agi import AGIHangup
from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.calls.lifecycle import Lifecycle
from agi_app.config import CRMConfig, DialingConfig
from agi_app.events.generator import CallInfo
from agi_app.inbound import CRMLookup, InboundService
from agi_app.inbound.testing import CRMAnswer, FakeCRM
from agi_app.live.tracker import CallEvent
from agi_app.store.testing import MemoryStore
from agi_app.ws.feed import widget_event

USER, SECRET = "agi_app", "s3cret"
CALLER = "380507654321"
ENV = {"agi_callerid": CALLER, "agi_calleridname": "", "agi_dnid": "0443334023"}
KNOWN = CRMAnswer.caller(name="Ivan Petrenko", operator="1001", url="https://crm.example/c/17")


class Caller(FakeAGI):
    """A call from the trunk: Dial rings for ``ring`` seconds, then the
    phone answers (``DIALSTATUS``) and the conversation lasts ``talk``
    seconds.  ``on_dial`` runs when the ringing starts."""

    def __init__(self, clock, *, ring=0.0, talk=0.0, dialstatus="ANSWER", peer=None, **kw):
        super().__init__(args=kw.pop("args", ["0443334023"]), env=kw.pop("env", ENV), **kw)
        self.clock = clock
        self.ring, self.talk = ring, talk
        self.dial_result = {"DIALSTATUS": dialstatus, "DIALEDPEERNAME": peer}
        self.on_dial = None
        self.dialled_at = None
        self.closed = False

    def exec_(self, app, *args, timeout=None, strict=False):
        self.commands.append(("exec", app, *args))
        if app != "Dial":
            return defer.succeed(None)
        self.dialled_at = self.clock.seconds()
        if self.on_dial is not None:
            self.on_dial()
        self.clock.advance(self.ring)
        if self.dial_result["DIALSTATUS"] == "ANSWER" and self.answered is not None:
            self.answered()
        self.clock.advance(self.talk)
        return defer.succeed(None)

    answered = None

    def close(self):
        self.closed = True

    def dials(self):
        return [c[2:] for c in self.commands if c[:2] == ("exec", "Dial")]


class InboundTestCase(SynchronousTestCase):
    group = ("1000", "1002")
    states = {"PJSIP/1000": "NOT_INUSE", "PJSIP/1001": "NOT_INUSE", "PJSIP/1002": "NOT_INUSE"}

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_795_644_000)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.server.device_states.update(self.states)
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
        self.store = MemoryStore(self.reactor)
        self.addCleanup(self.store.close)
        ids = iter(f"c{i}" for i in range(1, 100))
        self.lifecycle = Lifecycle(store=self.store, ami=self.ami, dialing=DialingConfig(),
                                   clock=self.reactor, new_id=lambda: next(ids))  # fmt: skip
        self.crm = FakeCRM(self.reactor)
        self.agent = RequestTraversalAgent(self.crm)
        settings = CRMConfig(lookup_url="http://crm.test/lookup?phone={phone}")
        self.lookup = CRMLookup(settings, agent=self.agent, clock=self.reactor)
        self.service = InboundService(lifecycle=self.lifecycle, dialing=DialingConfig(),
                                      lookup=self.lookup, group=self.group)  # fmt: skip
        self.lifecycle.start()
        self.ami.startService()
        self.link = self.server.accept(self.reactor)
        self.addCleanup(self.ami.stopService)

    def run_script(self, agi):
        d = defer.ensureDeferred(self.service.inbound(agi))
        self.agent.flush()
        return d

    def the_call(self):
        [call] = self.store.all_calls()
        return call

    def dial_end(self, call_id, status="ANSWER"):
        self.server.emit("DialEnd", [("Uniqueid", "u1"), ("DialStatus", status),
                                     ("ChanVariable", f"AGI_APP_CALL_ID={call_id}")])  # fmt: skip


class RoutingTests(InboundTestCase):
    def test_a_known_caller_goes_to_the_free_operator_the_crm_names(self):
        self.crm.answers[CALLER] = KNOWN
        agi = Caller(self.reactor, ring=4, talk=12, peer="PJSIP/1001-0000000a")
        agi.answered = lambda: self.dial_end(self.the_call()["call_id"])
        self.successResultOf(self.run_script(agi))
        call = self.the_call()
        call_id = call["call_id"]
        self.assertEqual((call["kind"], call["phone"], call["sip"]), ("incoming", CALLER, "1001"))
        self.assertEqual(call["params"], {
            "caller": CALLER, "did": "0443334023", "lookup": "found", "name": "Ivan Petrenko",
            "crm_url": "https://crm.example/c/17", "operator": "1001",
        })  # fmt: skip
        # the name on the operator's phone, the call id on every channel
        self.assertIn(("set", "CALLERID(name)", "Ivan Petrenko"), agi.commands)
        self.assertIn(("set", "__AGI_APP_CALL_ID", call_id), agi.commands)
        self.assertEqual(agi.dials(), [("PJSIP/1001", 30, "g")])
        self.assertEqual(self.store.words(call_id), [
            "CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_PICKUP", "FINISH"])
        self.assertEqual(self.store.details(call_id, "OPERATOR_CALLTO"), ["extension 1001"])
        self.assertEqual(self.store.details(call_id, "CLIENT_PICKUP"),
                         ["connected to extension 1001"])
        self.assertEqual(self.store.details(call_id, "FINISH"),
                         ["talk 12 s with extension 1001"])
        # talk time from the answer, not from the call's arrival (4 s of ringing)
        self.assertEqual(self.store.call(call_id)["talk_seconds"], 12.0)
        # recorded from the ringing, stored when the phone answered
        mixmonitor = [c for c in agi.commands if c[:2] == ("exec", "MixMonitor")]
        self.assertEqual(mixmonitor, [("exec", "MixMonitor",
                                       f"/var/spool/asterisk/monitor/call_{call_id}.wav", "b")])
        [record] = self.store.all_recordings()
        self.assertEqual(record["call_id"], call_id)
        self.assertEqual(agi.variables.get("AGI_APP_RESULT"), None)  # OK comes from the server

    def test_an_operator_who_is_not_free_leaves_the_call_to_the_group(self):
        for state in ("INUSE", "RINGING", "UNAVAILABLE", "BUSY", None):
            if state is None:
                self.ami.device_states.pop("PJSIP/1001", None)
            else:
                self.ami.device_states["PJSIP/1001"] = state
            self.crm.answers[CALLER] = KNOWN
            self.lookup._cache.clear()
            agi = Caller(self.reactor, peer="PJSIP/1002-00000001")
            self.successResultOf(self.run_script(agi))
            self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")], state)
            # the name is shown all the same
            self.assertIn(("set", "CALLERID(name)", "Ivan Petrenko"), agi.commands)
        calls = self.store.all_calls()
        self.assertEqual({c["sip"] for c in calls}, {None})
        for call in calls:
            self.assertEqual(self.store.details(call["call_id"], "OPERATOR_CALLTO"),
                             ["group 1000,1002"])
            self.assertEqual(self.store.details(call["call_id"], "FINISH"),
                             ["talk 0 s with extension 1002"])

    def test_an_unknown_caller_goes_to_the_group_unchanged(self):
        agi = Caller(self.reactor)  # the fake CRM answers 404
        self.successResultOf(self.run_script(agi))
        self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")])
        self.assertNotIn("CALLERID(name)", agi.variables)
        params = self.the_call()["params"]
        self.assertEqual((params["lookup"], params["name"], params["operator"]),
                         ("unknown", None, None))

    def test_a_caller_without_a_number_is_not_looked_up(self):
        agi = Caller(self.reactor, env={"agi_callerid": "anonymous", "agi_dnid": "unknown"},
                     args=["unknown"])  # fmt: skip
        self.successResultOf(self.run_script(agi))
        self.assertEqual(self.crm.requests, [])
        call = self.the_call()
        self.assertIsNone(call["phone"])
        self.assertEqual((call["params"]["lookup"], call["params"]["did"]), ("off", None))
        self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")])

    def test_the_crm_answer_cannot_reach_the_dial_string(self):
        self.crm.answers[CALLER] = CRMAnswer.caller(name="Ivan", operator="1001&PJSIP/9@pstn")
        agi = Caller(self.reactor)
        self.successResultOf(self.run_script(agi))
        self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")])
        self.assertIsNone(self.the_call()["params"]["operator"])


class FailingCRMTests(InboundTestCase):
    def test_a_crm_that_does_not_answer_delays_the_call_by_the_timeout_only(self):
        self.crm.answers[CALLER] = CRMAnswer.caller(delay=None, name="Never", operator="1001")
        agi = Caller(self.reactor)
        started = self.reactor.seconds()
        d = self.run_script(agi)
        self.assertEqual(agi.dials(), [])  # still asking
        self.reactor.advance(1.5)
        self.successResultOf(d)
        self.assertEqual(agi.dialled_at - started, 1.5)
        self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")])
        self.assertNotIn("CALLERID(name)", agi.variables)
        self.assertEqual(self.the_call()["params"]["lookup"], "timeout")

    def test_garbage_and_errors_change_nothing(self):
        for n, answer in enumerate((CRMAnswer(500, b"oops"), CRMAnswer(200, b"<html>"),
                                    CRMAnswer(200, b"[]"), CRMAnswer(302, b""))):  # fmt: skip
            caller = f"38050765430{n}"
            self.crm.answers[caller] = answer
            agi = Caller(self.reactor, env={**ENV, "agi_callerid": caller})
            self.successResultOf(self.run_script(agi))
            self.assertEqual(agi.dials(), [("PJSIP/1000&PJSIP/1002", 30, "g")])
            self.assertNotIn("CALLERID(name)", agi.variables)
        self.assertEqual({c["params"]["lookup"] for c in self.store.all_calls()}, {"failed"})


class OutcomeTests(InboundTestCase):
    def outcome(self, dialstatus):
        agi = Caller(self.reactor, dialstatus=dialstatus)
        self.successResultOf(self.run_script(agi))
        call_id = self.store.all_calls()[-1]["call_id"]
        return self.store.words(call_id), self.store.details(call_id, self.store.words(call_id)[-1])

    def test_each_dial_status_is_one_final_status(self):
        for dialstatus, status, detail in (
            ("BUSY", "OPERATOR_BUSY", "group 1000,1002: busy"),
            ("NOANSWER", "OPERATOR_NOANSWER", "group 1000,1002: no answer"),
            ("CHANUNAVAIL", "OPERATOR_OFFLINE", "group 1000,1002: unreachable"),
            ("CANCEL", "CLIENT_CANCEL", "group 1000,1002: the caller hung up while it rang"),
            ("CONGESTION", "ERROR", "group 1000,1002: congestion"),
            ("", "ERROR", "group 1000,1002: dial status "),
        ):
            words, details = self.outcome(dialstatus)
            self.assertEqual(words, ["CALL", "OPERATOR_CALLTO", status], dialstatus)
            self.assertEqual(details, [detail])
        self.assertEqual(self.store.all_recordings(), [])  # nobody answered: nothing stored

    def test_the_caller_hangs_up_during_the_lookup(self):
        self.crm.answers[CALLER] = CRMAnswer.caller(delay=1.0, name="Ivan")
        agi = Caller(self.reactor)
        d = self.run_script(agi)
        agi.hungup = True
        self.reactor.advance(1.0)
        self.agent.flush()
        self.successResultOf(d)
        self.assertEqual(agi.dials(), [])
        call_id = self.the_call()["call_id"]
        self.assertEqual(self.store.words(call_id), ["CALL", "CLIENT_CANCEL"])

    def test_the_fastagi_session_lost_while_ringing_ends_the_call(self):
        agi = Caller(self.reactor)
        agi.exec_ = lambda app, *a, **k: (defer.fail(AGIHangup("connection lost"))
                                          if app == "Dial" else defer.succeed(None))  # fmt: skip
        self.failureResultOf(self.run_script(agi), AGIHangup)
        words = self.store.words(self.the_call()["call_id"])
        self.assertEqual(words, ["CALL", "OPERATOR_CALLTO", "ERROR"])

    def test_the_fastagi_session_lost_while_talking_is_finish(self):
        agi = Caller(self.reactor)
        dialing = defer.Deferred()
        agi.exec_ = lambda app, *a, **k: dialing if app == "Dial" else defer.succeed(None)
        d = self.run_script(agi)
        call_id = self.the_call()["call_id"]
        self.reactor.advance(3)
        self.dial_end(call_id)  # a phone answers after 3 s of ringing
        self.assertEqual(self.store.words(call_id)[-2:], ["OPERATOR_PICKUP", "CLIENT_PICKUP"])
        self.reactor.advance(7)
        dialing.errback(AGIHangup("connection lost"))
        self.failureResultOf(d, AGIHangup)
        self.assertEqual(self.store.words(call_id)[-1], "FINISH")
        self.assertEqual(self.store.call(call_id)["talk_seconds"], 7.0)


class NoGroupTests(InboundTestCase):
    group = ()

    def test_without_a_group_the_named_operator_rings_whatever_the_state(self):
        self.ami.device_states["PJSIP/1001"] = "INUSE"
        self.crm.answers[CALLER] = KNOWN
        agi = Caller(self.reactor, dialstatus="BUSY")
        self.successResultOf(self.run_script(agi))
        self.assertEqual(agi.dials(), [("PJSIP/1001", 30, "g")])
        self.assertEqual(self.store.words(self.the_call()["call_id"])[-1], "OPERATOR_BUSY")

    def test_nobody_to_ring_is_an_error_the_dialplan_falls_back_from(self):
        agi = Caller(self.reactor)
        self.successResultOf(self.run_script(agi))
        self.assertEqual(agi.dials(), [])
        self.assertEqual(agi.variables["AGI_APP_RESULT"], "ERROR")
        self.assertTrue(agi.closed)
        call_id = self.the_call()["call_id"]
        self.assertEqual(self.store.words(call_id), ["CALL", "ERROR"])
        self.assertIn("[inbound] group is empty", self.store.details(call_id, "ERROR")[0])


class OneMemberTests(InboundTestCase):
    group = ("1000", "1000")

    def test_a_group_of_one_is_that_extension(self):
        agi = Caller(self.reactor)
        self.successResultOf(self.run_script(agi))
        self.assertEqual(agi.dials(), [("PJSIP/1000", 30, "g")])
        self.assertEqual(self.the_call()["sip"], "1000")


class EventFieldTests(InboundTestCase):
    """What webhooks and the widget read back of a looked-up call."""

    def test_call_info_carries_name_and_crm_link(self):
        self.crm.answers[CALLER] = KNOWN
        self.successResultOf(self.run_script(Caller(self.reactor)))
        call_id = self.the_call()["call_id"]
        info = self.successResultOf(defer.ensureDeferred(
            CallInfo(self.store, public_url="http://127.0.0.1:8080").get(call_id)))  # fmt: skip
        self.assertEqual((info["name"], info["crm_url"]),
                         ("Ivan Petrenko", "https://crm.example/c/17"))
        self.assertIsNone(info["operator"])  # not an operator-first call
        unknown = self.successResultOf(defer.ensureDeferred(
            CallInfo(self.store, public_url="http://127.0.0.1:8080").get(None)))  # fmt: skip
        self.assertEqual((unknown["name"], unknown["crm_url"]), (None, None))

    def test_the_widget_incoming_event_carries_them_when_known(self):
        ringing = CallEvent(
            kind="ringing", call_api_id="a-1", call_id="c1", uniqueid="u-1",
            channel="PJSIP/1001-1", extension="1001", direction="in", time=1.0,
            call={"caller_id_number": CALLER, "called_number": "0443334023"},
        )  # fmt: skip
        self.assertEqual(
            widget_event(ringing, name="Ivan Petrenko", crm_url="https://crm.example/c/17"),
            {"type": 2, "callID": "a-1", "from": CALLER, "to": "0443334023",
             "name": "Ivan Petrenko", "crm_url": "https://crm.example/c/17"},
        )  # fmt: skip
        self.assertEqual(widget_event(ringing),
                         {"type": 2, "callID": "a-1", "from": CALLER, "to": "0443334023"})
        transfer = widget_event(ringing, answered_elsewhere=True, name="Ivan")
        self.assertEqual((transfer["type"], transfer["name"]), (1, "Ivan"))
