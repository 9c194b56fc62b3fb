"""AMIService against the in-memory FakeAMIServer on a MemoryReactorClock: login,
resync, events and state, Originate outcomes, timeouts, keep-alive, disconnects,
reconnect backoff, subscribers, injection."""

from __future__ import annotations

import random

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import (
    AMIActionError,
    AMIDisconnected,
    AMIInjectionError,
    AMIMessage,
    AMIService,
    AMITimeout,
    OriginateReason,
    OriginateResult,
)
from agi_app.ami.testing import FakeAMIServer, OriginateOutcome

USER, SECRET = "agi_app", "s3cret"


class FixedRandom(random.Random):
    """A jitter source that always draws the same number."""

    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class ServiceTestCase(SynchronousTestCase):
    jitter = 0.0

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pbx = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.pbx.add_channel("PJSIP/101-00000001", uniqueid="1764105600.1",
                             variables={"AGI_APP_CALL_ID": "c-1"})
        self.pbx.device_states.update({"PJSIP/101": "INUSE", "PJSIP/102": "NOT_INUSE"})
        self.svc = self.make_service()

    def make_service(self, secret: str = SECRET, **kw) -> AMIService:
        kw.setdefault("rng", FixedRandom(self.jitter))
        return AMIService("127.0.0.1", 5038, USER, secret, reactor=self.reactor, **kw)

    def start(self):
        self.svc.startService()
        self.link = self.pbx.accept(self.reactor)
        self.assertTrue(self.svc.connected)
        return self.link

    def retry_delay(self) -> float:
        calls = [c for c in self.reactor.getDelayedCalls() if c.active()]
        self.assertEqual(len(calls), 1, calls)
        return calls[0].getTime() - self.reactor.seconds()

    def reconnect(self):
        self.reactor.advance(self.retry_delay())
        self.link = self.pbx.accept(self.reactor)
        return self.link


class LoginTests(ServiceTestCase):
    def test_login_resync_then_on_connect(self):
        seen = {}

        def on_connect(svc):
            # State is already rebuilt when on_connect runs.
            seen["channels"] = dict(svc.channels)
            seen["devices"] = dict(svc.device_states)
            seen["connected"] = svc.connected

        self.svc.on_connect(on_connect)
        waiting = self.svc.when_connected()
        self.assertNoResult(waiting)
        self.start()
        self.assertIs(self.successResultOf(waiting), self.svc)
        self.assertIs(self.successResultOf(self.svc.when_connected()), self.svc)
        self.assertEqual(list(seen["channels"]), ["1764105600.1"])
        self.assertEqual(seen["channels"]["1764105600.1"].variables, {"AGI_APP_CALL_ID": "c-1"})
        self.assertEqual(seen["devices"], {"PJSIP/101": "INUSE", "PJSIP/102": "NOT_INUSE"})
        self.assertTrue(seen["connected"])
        names = [a["Action"] for a in self.pbx.actions]
        self.assertEqual(names, ["Login", "CoreShowChannels", "DeviceStateList",
                                 "PJSIPShowContacts"])
        login = self.pbx.actions[0]
        self.assertEqual((login["Username"], login["Secret"], login["Events"]),
                         (USER, SECRET, "call,system"))
        self.assertEqual(self.svc.greeting, "Asterisk Call Manager/11.0.0")

    def test_login_bytes_are_crlf(self):
        self.start()
        data = bytes(self.pbx.peers[0].received)
        self.assertTrue(data.startswith(b"Action: Login\r\nActionID: "))
        self.assertIn(
            b"\r\nUsername: agi_app\r\nSecret: s3cret\r\nEvents: call,system\r\n\r\n", data
        )
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))

    def test_login_refused_retries_with_backoff(self):
        self.svc = self.make_service(secret="wrong")
        waiting = self.svc.when_connected()
        connects = []
        self.svc.on_connect(connects.append)
        self.svc.startService()
        delays = []
        for _ in range(5):
            link = self.pbx.accept(self.reactor)
            self.assertTrue(link.closed)
            self.assertFalse(self.svc.connected)
            delays.append(self.retry_delay())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0])
        self.assertNoResult(waiting)
        self.assertEqual(connects, [])
        # Only Login was tried on each connection, nothing else.
        self.assertEqual({a["Action"] for a in self.pbx.actions}, {"Login"})
        # The admin fixes the secret: the next attempt gets in.
        self.pbx.users[USER] = "wrong"
        self.pbx.accept(self.reactor)
        self.assertTrue(self.svc.connected)
        self.assertIs(self.successResultOf(waiting), self.svc)

    def test_action_before_connected_fails_fast_and_writes_nothing(self):
        self.svc.startService()
        self.failureResultOf(self.svc.action("Ping"), AMIDisconnected)
        self.failureResultOf(self.svc.originate("PJSIP/101", context="c", exten="s",
                                                priority=1), AMIDisconnected)
        self.pbx.accept(self.reactor)
        self.assertNotIn("Ping", [a["Action"] for a in self.pbx.actions])
        self.assertNotIn("Originate", [a["Action"] for a in self.pbx.actions])

    def test_unanswered_login_times_out(self):
        self.svc.startService()
        self.pbx.silent_actions.add("login")
        link = self.pbx.accept(self.reactor)
        self.reactor.advance(9.9)
        self.assertFalse(link.closed)
        self.reactor.advance(0.1)
        self.assertTrue(link.closed)
        self.assertFalse(self.svc.connected)
        self.assertEqual(self.retry_delay(), 0.5)

    def test_missing_greeting_times_out(self):
        self.pbx.version = None
        self.svc.startService()
        link = self.pbx.accept(self.reactor)
        self.reactor.advance(10)
        self.assertTrue(link.closed)
        self.assertEqual(self.pbx.actions, [])
        self.assertFalse(self.svc.connected)

    def test_contacts_when_allowed(self):
        self.pbx.system_class = True
        self.pbx.contacts.append({
            "ObjectType": "contact", "ObjectName": "101;@abc", "Uri": "sip:101@127.0.0.1:5071",
            "Endpoint": "101", "Status": "Reachable",
        })
        self.start()
        self.assertEqual(self.svc.contacts, {"sip:101@127.0.0.1:5071": {
            "aor": "101", "endpoint": "101", "status": "Reachable"}})
        self.pbx.emit("ContactStatus", URI="sip:101@127.0.0.1:5071", ContactStatus="Unreachable",
                      AOR="101", EndpointName="101")
        self.assertEqual(self.svc.contacts["sip:101@127.0.0.1:5071"]["status"], "Unreachable")
        self.pbx.emit("ContactStatus", URI="sip:101@127.0.0.1:5071", ContactStatus="Removed",
                      AOR="101", EndpointName="101")
        self.assertEqual(self.svc.contacts, {})

    def test_resync_refusals_do_not_prevent_login(self):
        self.pbx.handlers["coreshowchannels"] = lambda peer, a: peer.error(a, "Permission denied")
        self.start()
        self.assertEqual(self.svc.channels, {})
        self.assertEqual(len(self.svc.device_states), 2)

    def test_resync_timeout_drops_the_connection(self):
        self.pbx.silent_actions.add("devicestatelist")
        self.svc.startService()
        link = self.pbx.accept(self.reactor)
        self.assertFalse(self.svc.connected)
        self.reactor.advance(10)
        self.assertTrue(link.closed)
        self.assertFalse(self.svc.connected)


class ActionTests(ServiceTestCase):
    def setUp(self):
        super().setUp()
        self.start()
        self.pbx.actions.clear()

    def test_action_and_error(self):
        msg = self.successResultOf(self.svc.action("Ping"))
        self.assertEqual(msg["Ping"], "Pong")
        f = self.failureResultOf(self.svc.action("NoSuchThing"), AMIActionError)
        self.assertIn("Invalid/unknown command", f.value.message)

    def test_headers_as_kwargs_and_pairs(self):
        events = []
        self.svc.subscribe(events.append, "UserEvent")
        d = self.svc.action("UserEvent", [("UserEvent", "x"), ("Header", "1"), ("Header", "2")],
                            Extra="3")
        self.assertEqual(self.successResultOf(d)["Message"], "Event Sent")
        self.assertEqual(events[0].getall("Header"), ["1", "2"])
        sent = self.pbx.actions[-1]
        self.assertEqual(sent.getall("Header"), ["1", "2"])
        self.assertEqual(sent["Extra"], "3")

    def test_collect(self):
        items = self.successResultOf(self.svc.collect("DeviceStateList"))
        self.assertEqual({m["Device"]: m["State"] for m in items},
                         {"PJSIP/101": "INUSE", "PJSIP/102": "NOT_INUSE"})

    def test_action_timeout_and_late_reply_ignored(self):
        self.pbx.silent_actions.add("getvar")
        d = self.svc.getvar("PJSIP/101-00000001", "X")
        self.reactor.advance(9.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failureResultOf(d, AMITimeout)
        # The late answer is dropped; the session stays up.
        late = self.pbx.actions[-1]
        self.pbx.peers[-1].respond(late, Variable="X", Value="late")
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.successResultOf(self.svc.action("Ping"))["Ping"], "Pong")

    def test_helpers(self):
        self.successResultOf(self.svc.hangup("PJSIP/101-00000001"))
        self.assertEqual(self.pbx.actions[-1]["Cause"], "16")
        self.successResultOf(self.svc.redirect("PJSIP/101-00000002", "ctx", "s", 1,
                                               extra_channel="PJSIP/102-00000003"))
        sent = self.pbx.actions[-1]
        self.assertEqual((sent["Channel"], sent["Context"], sent["Exten"], sent["Priority"],
                          sent["ExtraChannel"]),
                         ("PJSIP/101-00000002", "ctx", "s", "1", "PJSIP/102-00000003"))
        self.assertNotIn("ExtraContext", sent)
        self.pbx.handlers["getvar"] = lambda peer, a: peer.respond(a, Variable="X", Value="42")
        self.assertEqual(self.successResultOf(self.svc.getvar("PJSIP/101-00000002", "X")), "42")
        self.successResultOf(self.svc.setvar("PJSIP/101-00000002", "X", "a,b"))
        self.assertEqual(self.pbx.actions[-1]["Value"], "a,b")
        self.assertFalse(hasattr(self.svc, "command"))


class OriginateTests(ServiceTestCase):
    def setUp(self):
        super().setUp()
        self.start()

    def originate(self, channel="PJSIP/102", **kw):
        kw.setdefault("context", "agi-app-operator")
        kw.setdefault("exten", "s")
        kw.setdefault("priority", 1)
        return self.svc.originate(channel, **kw)

    def test_answered(self):
        d = self.originate(caller_id='"CRM client" <380639920000>', timeout_ms=20000,
                           variables={"__AGI_APP_CALL_ID": "c-9", "LEG": "operator"},
                           channel_id="c-9-op", other_channel_id="c-9-op2", account="crm",
                           codecs=["ulaw", "alaw"], early_media=True)
        result = self.successResultOf(d)
        self.assertIsInstance(result, OriginateResult)
        self.assertTrue(result.success)
        self.assertEqual((result.response, result.reason, result.reason_text),
                         ("Success", OriginateReason.ANSWERED, "answered"))
        self.assertTrue(result.channel.startswith("PJSIP/102-"))
        self.assertEqual(result.uniqueid, "c-9-op")
        self.assertEqual(result.event["Event"], "OriginateResponse")
        sent = self.pbx.actions_named("Originate")[0]
        self.assertEqual(sent.getall("Variable"), ["__AGI_APP_CALL_ID=c-9", "LEG=operator"])
        self.assertEqual(
            [sent.get(k) for k in ("Channel", "Context", "Exten", "Priority", "CallerID",
                                   "Timeout", "ChannelId", "OtherChannelId", "Account",
                                   "Codecs", "EarlyMedia", "Async")],
            ["PJSIP/102", "agi-app-operator", "s", "1", '"CRM client" <380639920000>', "20000",
             "c-9-op", "c-9-op2", "crm", "ulaw,alaw", "true", "true"])
        self.assertEqual(sent["ActionID"], result.event["ActionID"])

    def test_application_originate(self):
        self.successResultOf(self.svc.originate("Local/1@ctx", application="Playback",
                                                data="beep"))
        sent = self.pbx.actions_named("Originate")[0]
        self.assertEqual((sent["Application"], sent["Data"]), ("Playback", "beep"))
        self.assertNotIn("Context", sent)

    def check_failure(self, outcome, reason, text, cause=None, cause_text=""):
        self.pbx.originate_outcomes["PJSIP/102"] = outcome
        d = self.originate()
        self.assertNoResult(d)
        self.reactor.advance(3)
        result = self.successResultOf(d)
        self.assertFalse(result.success)
        self.assertEqual((result.response, result.reason, result.reason_text),
                         ("Failure", reason, text))
        self.assertEqual((result.cause, result.cause_text), (cause, cause_text))
        self.assertEqual(result.channel, "PJSIP/102")
        # The channel got an id of ours, so its events can be told apart.
        channel_id = self.pbx.actions_named("Originate")[-1]["ChannelId"]
        self.assertTrue(channel_id.startswith("agiapp-"))
        self.assertEqual(result.uniqueid, channel_id)
        self.assertEqual(self.svc._originating, {})
        return result

    def test_busy_as_asterisk_22_reports_it(self):
        # PJSIP 486: OriginateResponse says Reason 0, the Hangup says cause 17.
        result = self.check_failure(OriginateOutcome.busy(delay=3), 5, "busy", 17, "User busy")
        self.assertEqual(result.event["Reason"], "0")

    def test_busy_with_hangup_before_the_response(self):
        outcome = OriginateOutcome(reason=0, cause=17, hangup_first=True, delay=3)
        self.check_failure(outcome, 5, "busy", 17, "User busy")

    def test_busy_reported_directly(self):
        self.check_failure(OriginateOutcome(reason=5, delay=3), 5, "busy")

    def test_declined(self):
        self.check_failure(OriginateOutcome.declined(delay=3), 8, "congestion", 21,
                           "Call Rejected")

    def test_no_answer(self):
        self.check_failure(OriginateOutcome.no_answer(delay=3), 3, "no answer", 19,
                           "User alerting, no answer")

    def test_offline(self):
        # No channel is created at all: the result comes with the response.
        self.check_failure(OriginateOutcome.offline(delay=3), 0, "other")

    def test_congestion(self):
        self.check_failure(OriginateOutcome(reason=8, delay=3), 8, "congestion")

    def test_unknown_reason(self):
        self.check_failure(OriginateOutcome(reason=7, delay=3), 7, "reason 7")

    def test_unmapped_cause_keeps_reason_zero(self):
        self.check_failure(OriginateOutcome(reason=0, cause=1, delay=3), 0, "other", 1)

    def test_missing_hangup_waits_only_a_grace_period(self):
        def originate(peer, action):
            # A channel is created and fails, but its Hangup never comes.
            peer.respond(action, Message="Originate successfully queued")
            peer.server.emit("Newchannel", Channel="PJSIP/102-00000001", ChannelState="0",
                             Uniqueid=action["ChannelId"])
            peer.send_event("OriginateResponse", action_id=action["ActionID"],
                            Response="Failure", Channel="PJSIP/102", Reason="0",
                            Uniqueid=action["ChannelId"])

        self.pbx.handlers["originate"] = originate
        d = self.originate()
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual((result.reason, result.cause), (0, None))

    def test_given_channel_id_is_used(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome.busy()
        result = self.successResultOf(self.originate(channel_id="c-7-operator"))
        self.assertEqual((result.uniqueid, result.cause), ("c-7-operator", 17))

    def test_queued_error(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome(
            error="Extension does not exist.")
        f = self.failureResultOf(self.originate(), AMIActionError)
        self.assertEqual(f.value.message, "Extension does not exist.")

    def test_timeout_is_ring_time_plus_margin(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome(delay=None)
        d = self.originate(timeout_ms=30000)
        self.reactor.advance(34.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failureResultOf(d, AMITimeout)
        # the link itself is fine
        self.assertTrue(self.svc.connected)

    def test_foreign_originate_response_does_not_resolve_ours(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome(delay=None)
        d = self.originate()
        self.pbx.emit("OriginateResponse", ActionID="someone-else-1", Response="Success",
                      Reason="4", Channel="PJSIP/102-00000009", Uniqueid="1.9")
        self.assertNoResult(d)

    def test_two_originates_resolved_independently(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome(reason=5, delay=2)
        self.pbx.originate_outcomes["PJSIP/103"] = OriginateOutcome(reason=4, delay=1)
        d1 = self.originate("PJSIP/102")
        d2 = self.originate("PJSIP/103")
        self.reactor.advance(1)
        self.assertNoResult(d1)
        self.assertEqual(self.successResultOf(d2).reason, 4)
        self.reactor.advance(1)
        self.assertEqual(self.successResultOf(d1).reason, 5)

    def test_argument_checks(self):
        with self.assertRaises(ValueError):
            self.originate(timeout_ms=0)
        with self.assertRaises(ValueError):
            self.originate("nochanneltech")


class InjectionTests(ServiceTestCase):
    """Every way a value reaches an action is refused before a byte is written."""

    def setUp(self):
        super().setUp()
        self.start()
        self.peer = self.pbx.peers[-1]
        self.before = bytes(self.peer.received)

    def tearDown(self):
        self.assertEqual(bytes(self.peer.received), self.before)
        self.assertEqual(len(self.pbx.peers), 1)

    def test_header_name(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.action("Setvar", {"Variable\r\nAction: Originate": "x"})

    def test_header_value(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.action("Setvar", Channel="PJSIP/1-1", Variable="X",
                            Value="1\r\n\r\nAction: Originate\r\nChannel: PJSIP/999")

    def test_action_name(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.action("Ping\nAction: Originate")

    def test_variable_value_comma(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102", context="c", exten="s", priority=1,
                               variables={"A": "1,B=2"})

    def test_variable_value_newline(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102", context="c", exten="s", priority=1,
                               variables={"A": "1\r\nAction: Hangup"})

    def test_variable_name(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102", context="c", exten="s", priority=1,
                               variables={"A=1,B": "2"})

    def test_channel(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102\r\nAction: Originate", context="c", exten="s",
                               priority=1)

    def test_caller_id(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102", context="c", exten="s", priority=1,
                               caller_id='"x" <1>\nAction: Hangup')

    def test_context_and_exten(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/102", context="c\r\nX: y", exten="s", priority=1)
        with self.assertRaises(AMIInjectionError):
            self.svc.redirect("PJSIP/1-1", "ctx", "s\x00", 1)

    def test_hangup_and_setvar(self):
        with self.assertRaises(AMIInjectionError):
            self.svc.hangup("PJSIP/1-1\r\n\r\nAction: Originate")
        with self.assertRaises(AMIInjectionError):
            self.svc.setvar("PJSIP/1-1", "X", "a\nb")

    def test_refused_even_when_disconnected(self):
        # Checked first, so bad input raises whether or not the link is up.
        self.link.drop()
        with self.assertRaises(AMIInjectionError):
            self.svc.action("Setvar", Value="a\r\nb")
        with self.assertRaises(AMIInjectionError):
            self.svc.originate("PJSIP/1", context="c", exten="s", priority=1,
                               variables={"A": "1,B=2"})


class DisconnectTests(ServiceTestCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_pending_actions_fail_and_are_never_resent(self):
        self.pbx.originate_outcomes["PJSIP/102"] = OriginateOutcome(delay=None)
        self.pbx.silent_actions.add("getvar")
        originate = self.svc.originate("PJSIP/102", context="c", exten="s", priority=1)
        getvar = self.svc.getvar("PJSIP/101-00000001", "X")
        disconnects = []
        order = []
        originate.addErrback(lambda f: order.append(("originate failed", self.svc.connected)))
        self.svc.on_disconnect(lambda svc: disconnects.append(svc.connected))
        self.svc.on_disconnect(lambda svc: order.append("on_disconnect"))
        self.link.drop()
        self.assertFalse(self.svc.connected)
        self.failureResultOf(getvar, AMIDisconnected)
        self.assertEqual(order, [("originate failed", False), "on_disconnect"])
        self.assertEqual(disconnects, [False])
        self.failureResultOf(self.svc.action("Ping"), AMIDisconnected)
        # Reconnect: the new session sends the login and resync only.
        self.reconnect()
        self.assertTrue(self.svc.connected)
        data = bytes(self.pbx.peers[-1].received)
        self.assertNotIn(b"Originate", data)
        self.assertNotIn(b"Getvar", data)
        self.assertEqual([a["Action"] for a in self.pbx.peers[-1].actions],
                         ["Login", "CoreShowChannels", "DeviceStateList", "PJSIPShowContacts"])

    def test_keepalive_ping(self):
        self.reactor.advance(19.9)
        self.assertEqual(self.pbx.actions_named("Ping"), [])
        self.reactor.advance(0.1)
        self.assertEqual(len(self.pbx.actions_named("Ping")), 1)
        self.reactor.advance(20)
        self.assertEqual(len(self.pbx.actions_named("Ping")), 2)
        self.assertTrue(self.svc.connected)

    def test_dead_peer_detected_by_ping(self):
        disconnects = []
        self.svc.on_disconnect(disconnects.append)
        self.link.blackhole()
        self.reactor.advance(20)  # Ping goes out and vanishes
        self.assertTrue(self.svc.connected)
        self.reactor.advance(9.9)
        self.assertTrue(self.svc.connected)
        self.reactor.advance(0.1)
        self.assertFalse(self.svc.connected)
        self.assertTrue(self.link.closed)
        self.assertTrue(self.link.client_transport.disconnected)  # aborted, not a polite close
        self.assertEqual(disconnects, [self.svc])
        self.reconnect()
        self.assertTrue(self.svc.connected)

    def test_unanswered_ping_when_pbx_mutes(self):
        self.pbx.silent_actions.add("ping")
        self.reactor.advance(20)
        self.assertTrue(self.svc.connected)
        self.reactor.advance(10)
        self.assertFalse(self.svc.connected)

    def test_ping_refused_while_asterisk_shuts_down(self):
        self.pbx.handlers["ping"] = lambda peer, a: peer.error(a, "Asterisk is shutting down")
        self.reactor.advance(20)
        self.assertEqual(len(self.pbx.actions_named("Ping")), 1)
        # Logged quietly (a logged failure would fail this test); the PBX closes the link.
        self.assertTrue(self.svc.connected)
        self.link.drop(abrupt=False)
        self.assertFalse(self.svc.connected)

    def test_no_pings_while_disconnected(self):
        self.link.drop()
        for _ in range(10):
            self.reactor.advance(self.retry_delay())
            self.pbx.refuse(self.reactor)
        self.assertEqual(self.pbx.actions_named("Ping"), [])
        self.assertGreater(self.reactor.seconds(), 60)

    def test_stop_service_logs_off_and_stops_reconnecting(self):
        d = self.svc.stopService()
        self.successResultOf(d)
        self.assertEqual(self.pbx.peers[-1].actions[-1]["Action"], "Logoff")
        self.assertFalse(self.svc.connected)
        self.reactor.advance(100)
        self.assertFalse(self.pbx.has_pending(self.reactor))
        w = self.svc.when_connected()
        self.svc.startService()
        self.pbx.accept(self.reactor)
        self.assertIs(self.successResultOf(w), self.svc)

    def test_stop_fails_waiters(self):
        self.link.drop()
        w = self.svc.when_connected()
        self.svc.stopService()
        self.failureResultOf(w, AMIDisconnected)


class BackoffTests(ServiceTestCase):
    def refused_delays(self, count: int) -> list[float]:
        self.svc.startService()
        delays = []
        for _ in range(count):
            self.pbx.refuse(self.reactor)
            delays.append(self.retry_delay())
            self.reactor.advance(delays[-1])
        return delays

    def test_schedule_is_exponential_and_capped(self):
        self.assertEqual(self.refused_delays(9),
                         [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])

    def test_cap_follows_max_backoff(self):
        self.svc = self.make_service(max_backoff=5.0)
        self.assertEqual(self.refused_delays(6), [0.5, 1.0, 2.0, 4.0, 5.0, 5.0])

    def test_jitter_bounds(self):
        self.svc = self.make_service(rng=FixedRandom(0.999999))
        delays = self.refused_delays(8)
        bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        for delay, base in zip(delays, bases, strict=True):
            self.assertTrue(abs(delay - base * 0.75) < 1e-4, (delay, base))

    def test_random_jitter_stays_within_bounds(self):
        self.svc = self.make_service(rng=random.Random(1234))
        delays = self.refused_delays(40)
        bases = [min(0.5 * 2 ** i, 30.0) for i in range(40)]
        for delay, base in zip(delays, bases, strict=True):
            self.assertGreaterEqual(delay, 0.75 * base)
            self.assertLessEqual(delay, base)
        self.assertGreater(len(set(delays[7:])), 1)  # jitter really varies

    def test_success_resets_the_backoff(self):
        self.refused_delays(5)
        self.pbx.accept(self.reactor)
        self.assertTrue(self.svc.connected)
        self.pbx.connections[-1].drop()
        self.assertEqual(self.retry_delay(), 0.5)

    def test_connected_session_loss_reconnects_fast(self):
        self.start()
        self.link.drop()
        self.assertEqual(self.retry_delay(), 0.5)
        self.reconnect()
        self.assertTrue(self.svc.connected)


class EventTests(ServiceTestCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_subscribers_by_name_and_all(self):
        hangups, everything = [], []
        self.svc.subscribe(hangups.append, "hangup")
        self.svc.subscribe(everything.append)
        self.pbx.emit("Hangup", Uniqueid="1764105600.1", Cause="16")
        self.pbx.emit("Newstate", Uniqueid="1.5")
        self.assertEqual([m["Event"] for m in hangups], ["Hangup"])
        self.assertEqual([m["Event"] for m in everything], ["Hangup", "Newstate"])

    def test_unsubscribe(self):
        got = []
        unsubscribe = self.svc.subscribe(got.append, "Newstate")
        self.pbx.emit("Newstate", Uniqueid="1.5")
        unsubscribe()
        unsubscribe()
        self.pbx.emit("Newstate", Uniqueid="1.5")
        self.assertEqual(len(got), 1)

    def test_same_callback_twice_is_two_subscriptions(self):
        got = []
        first = self.svc.subscribe(got.append, "X")
        self.svc.subscribe(got.append, "X")
        self.pbx.emit("X")
        first()
        self.pbx.emit("X")
        self.assertEqual(len(got), 3)

    def test_raising_subscriber_does_not_break_others(self):
        got = []

        def boom(_msg):
            raise RuntimeError("subscriber bug")

        self.svc.subscribe(boom, "Newstate")
        self.svc.subscribe(got.append, "Newstate")
        self.svc.subscribe(got.append)
        self.pbx.emit("Newstate", Uniqueid="1.5")
        self.pbx.emit("Newstate", Uniqueid="1.6")
        self.assertEqual(len(got), 4)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(self.svc.connected)

    def test_subscribers_survive_reconnect(self):
        got = []
        self.svc.subscribe(got.append, "DeviceStateChange")
        self.link.drop()
        self.reconnect()
        self.pbx.emit("DeviceStateChange", Device="PJSIP/101", State="NOT_INUSE")
        self.assertEqual(len(got), 1)
        # ...and list items of the resync were not delivered as events
        self.assertEqual(got[0].get("ActionID"), None)

    def test_collect_items_are_not_events(self):
        got = []
        self.svc.subscribe(got.append)
        self.successResultOf(self.svc.collect("CoreShowChannels"))
        self.assertEqual(got, [])

    def test_channels_follow_events(self):
        emit = self.pbx.emit
        emit("Newchannel", Channel="PJSIP/102-00000002", ChannelState="0",
             ChannelStateDesc="Down", Uniqueid="1764105600.2")
        self.assertIn("1764105600.2", self.svc.channels)
        emit("Newstate", Channel="PJSIP/102-00000002", ChannelState="5",
             ChannelStateDesc="Ringing", Uniqueid="1764105600.2")
        self.assertEqual(self.svc.channels["1764105600.2"]["ChannelStateDesc"], "Ringing")
        emit("NewConnectedLine", Channel="PJSIP/102-00000002", ChannelState="5",
             Uniqueid="1764105600.2", ChanVariable="AGI_APP_CALL_ID=c-2")
        self.assertEqual(self.svc.channels["1764105600.2"].variables, {"AGI_APP_CALL_ID": "c-2"})
        # an event agi_app does not follow is skipped unread
        emit("VarSet", Channel="PJSIP/102-00000002", ChannelState="6", Uniqueid="1764105600.2",
             Variable="X", Value="1")
        self.assertEqual(self.svc.channels["1764105600.2"]["ChannelState"], "5")
        emit("Hangup", Channel="PJSIP/102-00000002", Uniqueid="1764105600.2", Cause="16")
        self.assertNotIn("1764105600.2", self.svc.channels)
        # An event about an unknown channel does not invent one.
        emit("Newstate", Channel="PJSIP/9-9", ChannelState="6", Uniqueid="9.9")
        self.assertNotIn("9.9", self.svc.channels)
        emit("DeviceStateChange", Device="PJSIP/102", State="RINGING")
        self.assertEqual(self.svc.device_states["PJSIP/102"], "RINGING")

    def test_resync_after_reconnect(self):
        channels, devices = self.svc.channels, self.svc.device_states
        self.link.drop()
        # While the link was down the PBX changed.
        self.pbx.channels.clear()
        self.pbx.add_channel("PJSIP/103-00000005", uniqueid="1764105600.5")
        self.pbx.device_states.update({"PJSIP/101": "NOT_INUSE", "PJSIP/103": "INUSE"})
        del self.pbx.device_states["PJSIP/102"]
        states_at_connect = []
        self.svc.on_connect(lambda svc: states_at_connect.append(dict(svc.device_states)))
        self.reconnect()
        self.assertEqual(list(self.svc.channels), ["1764105600.5"])
        self.assertEqual(self.svc.device_states, {"PJSIP/101": "NOT_INUSE", "PJSIP/103": "INUSE"})
        self.assertEqual(states_at_connect, [self.svc.device_states])
        # Same dict objects: holders of a reference see the new state.
        self.assertIs(self.svc.channels, channels)
        self.assertIs(self.svc.device_states, devices)

    def test_resync_again_when_asterisk_finishes_booting_after_login(self):
        # Asterisk accepts logins while it is still loading modules: the first
        # snapshot is empty, the FullyBooted event says when to take it again.
        connects = []
        self.svc.on_connect(connects.append)
        self.pbx.device_states["PJSIP/103"] = "NOT_INUSE"
        self.pbx.add_channel("PJSIP/103-00000009", uniqueid="1764105600.9")
        self.pbx.actions.clear()
        self.pbx.emit("FullyBooted", Status="Fully Booted")
        self.assertEqual([a["Action"] for a in self.pbx.actions],
                         ["CoreShowChannels", "DeviceStateList", "PJSIPShowContacts"])
        self.assertEqual(self.svc.device_states["PJSIP/103"], "NOT_INUSE")
        self.assertIn("1764105600.9", self.svc.channels)
        self.assertEqual(connects, [])

    def test_fullybooted_at_login_does_not_repeat_the_resync(self):
        # The fake sends FullyBooted right after every Login, as Asterisk does.
        self.assertEqual(len(self.pbx.actions_named("CoreShowChannels")), 1)

    def test_on_connect_after_every_login_and_errors_logged(self):
        calls = []

        def bad(svc):
            raise RuntimeError("on_connect bug")

        self.svc.on_connect(bad)
        remove = self.svc.on_connect(calls.append)
        self.link.drop()
        self.reconnect()
        self.assertEqual(calls, [self.svc])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        remove()
        self.link.drop()
        self.reconnect()
        self.assertEqual(calls, [self.svc])
        self.flushLoggedErrors(RuntimeError)


class IndependenceTests(SynchronousTestCase):
    def test_two_pbx_links_in_one_process(self):
        reactor = MemoryReactorClock()
        pbx_a = FakeAMIServer(users={"a": "1"}, clock=reactor, port=5038)
        pbx_b = FakeAMIServer(users={"b": "2"}, clock=reactor, port=5039)
        pbx_b.device_states["PJSIP/200"] = "INUSE"
        a = AMIService("127.0.0.1", 5038, "a", "1", reactor=reactor, name="a")
        b = AMIService("127.0.0.1", 5039, "b", "2", reactor=reactor, name="b")
        got_a: list[AMIMessage] = []
        got_b: list[AMIMessage] = []
        a.subscribe(got_a.append)
        b.subscribe(got_b.append)
        a.startService()
        b.startService()
        pbx_b.accept(reactor)
        pbx_a.accept(reactor)
        self.assertTrue(a.connected and b.connected)
        self.assertEqual(a.device_states, {})
        self.assertEqual(b.device_states, {"PJSIP/200": "INUSE"})
        got_a.clear()
        got_b.clear()
        pbx_a.emit("Newstate", Uniqueid="1.1")
        self.assertEqual((len(got_a), len(got_b)), (1, 0))
        self.assertNotEqual(a.name, b.name)
