"""AMIProtocol on a StringTransport and a task.Clock: greeting, ActionID matching,
errors, list collection, final events, timeouts, disconnects, injection."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import (
    AMIActionError,
    AMIAuthenticationError,
    AMIDisconnected,
    AMIEventList,
    AMIInjectionError,
    AMIMessage,
    AMIParser,
    AMIProtocol,
    AMIProtocolError,
    AMITimeout,
)


def wire(*pairs: tuple[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"


def sent_actions(transport: StringTransport) -> list[AMIMessage]:
    return [m for m in AMIParser(expect_greeting=False).feed(transport.value())
            if isinstance(m, AMIMessage)]


class ProtocolTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.transport = StringTransport()
        self.proto = AMIProtocol(clock=self.clock, action_timeout=10.0, name="test")
        self.events: list[AMIMessage] = []
        self.proto.on_event = self.events.append
        self.proto.makeConnection(self.transport)

    def greet(self):
        self.proto.dataReceived(b"Asterisk Call Manager/11.0.0\r\n")

    def last_action_id(self) -> str:
        return sent_actions(self.transport)[-1]["ActionID"]

    def reply(self, *pairs):
        self.proto.dataReceived(wire(*pairs))


class GreetingTests(ProtocolTestCase):
    def test_greeting(self):
        d = self.proto.when_greeted()
        self.assertNoResult(d)
        self.greet()
        self.assertEqual(self.successResultOf(d), "Asterisk Call Manager/11.0.0")
        self.assertEqual(self.proto.greeting, "Asterisk Call Manager/11.0.0")
        self.assertEqual(self.successResultOf(self.proto.when_greeted()),
                         "Asterisk Call Manager/11.0.0")

    def test_greeting_with_bare_lf_in_two_packets(self):
        d = self.proto.when_greeted()
        self.proto.dataReceived(b"Asterisk Call Man")
        self.assertNoResult(d)
        self.proto.dataReceived(b"ager/11.0.0\n")
        self.assertEqual(self.successResultOf(d), "Asterisk Call Manager/11.0.0")

    def test_no_greeting_times_out_and_aborts(self):
        d = self.proto.when_greeted()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, AMITimeout)
        self.assertTrue(self.transport.disconnecting)

    def test_not_an_ami_server(self):
        d = self.proto.when_greeted()
        self.proto.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.failureResultOf(d, AMIProtocolError)
        self.assertTrue(self.transport.disconnecting)
        self.flushLoggedErrors()

    def test_greeting_timer_cancelled_once_greeted(self):
        self.greet()
        self.clock.advance(60)
        self.assertFalse(self.transport.disconnecting)


class ActionTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_action_bytes_and_response(self):
        d = self.proto.send_action("Ping")
        action_id = self.last_action_id()
        self.assertEqual(self.transport.value(),
                         f"Action: Ping\r\nActionID: {action_id}\r\n\r\n".encode())
        self.reply(("Response", "Success"), ("ActionID", action_id), ("Ping", "Pong"))
        msg = self.successResultOf(d)
        self.assertEqual(msg["Ping"], "Pong")
        self.assertEqual(self.proto.pending_count, 0)

    def test_headers_as_mapping_or_pairs(self):
        self.proto.send_action("Setvar", {"Channel": "PJSIP/1-1", "Variable": "X", "Value": "1"})
        self.proto.send_action("Originate", [("Channel", "PJSIP/1"), ("Variable", "A=1"),
                                             ("Variable", "B=2")])
        first, second = sent_actions(self.transport)
        self.assertEqual(first["Value"], "1")
        self.assertEqual(second.getall("Variable"), ["A=1", "B=2"])

    def test_action_ids_are_unique_and_unpredictable_across_connections(self):
        other = AMIProtocol(clock=self.clock)
        other.makeConnection(StringTransport())
        self.proto.send_action("Ping")
        self.proto.send_action("Ping")
        other.send_action("Ping")
        ids = [m["ActionID"] for m in sent_actions(self.transport)]
        ids.append(sent_actions(other.transport)[0]["ActionID"])
        self.assertEqual(len(set(ids)), 3)
        self.assertNotEqual(ids[0].split("-")[0], ids[2].split("-")[0])

    def test_replies_matched_by_action_id_with_interleaved_events(self):
        d1 = self.proto.send_action("Getvar", {"Channel": "x", "Variable": "A"})
        d2 = self.proto.send_action("Getvar", {"Channel": "x", "Variable": "B"})
        id1, id2 = (m["ActionID"] for m in sent_actions(self.transport))
        # Events and the replies in the reverse order, in a single packet.
        self.proto.dataReceived(
            wire(("Event", "Newstate"), ("Uniqueid", "1.1"))
            + wire(("Response", "Success"), ("ActionID", id2), ("Value", "b"))
            + wire(("Event", "Hangup"), ("Uniqueid", "1.1"))
            + wire(("Response", "Success"), ("ActionID", id1), ("Value", "a"))
        )
        self.assertEqual(self.successResultOf(d1)["Value"], "a")
        self.assertEqual(self.successResultOf(d2)["Value"], "b")
        self.assertEqual([e["Event"] for e in self.events], ["Newstate", "Hangup"])

    def test_error_response(self):
        d = self.proto.send_action("Hangup", {"Channel": "PJSIP/404"})
        self.reply(("Response", "Error"), ("ActionID", self.last_action_id()),
                   ("Message", "No such channel"))
        f = self.failureResultOf(d, AMIActionError)
        self.assertEqual(f.value.message, "No such channel")
        self.assertEqual(f.value.response["Message"], "No such channel")

    def test_login_refused_is_an_authentication_error(self):
        d = self.proto.login("agi_app", "wrong")
        action = sent_actions(self.transport)[0]
        self.assertEqual((action["Username"], action["Secret"], action["Events"]),
                         ("agi_app", "wrong", "on"))
        self.reply(("Response", "Error"), ("ActionID", action["ActionID"]),
                   ("Message", "Authentication failed"))
        f = self.failureResultOf(d, AMIAuthenticationError)
        self.assertEqual(f.value.message, "Authentication failed")

    def test_unknown_action_id_is_dropped(self):
        d = self.proto.send_action("Ping")
        self.reply(("Response", "Success"), ("ActionID", "nobody-7"), ("Ping", "Pong"))
        self.reply(("Response", "Success"), ("Ping", "Pong"))  # no ActionID at all
        self.assertNoResult(d)
        self.assertEqual(self.events, [])
        self.reply(("Response", "Success"), ("ActionID", self.last_action_id()))
        self.successResultOf(d)

    def test_message_split_byte_by_byte(self):
        d = self.proto.send_action("Ping")
        data = wire(("Response", "Success"), ("ActionID", self.last_action_id()),
                    ("Ping", "Pong")) + wire(("Event", "FullyBooted"))
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual(self.successResultOf(d)["Ping"], "Pong")
        self.assertEqual(len(self.events), 1)

    def test_event_with_latin1_caller_name(self):
        self.proto.dataReceived(b"Event: Newchannel\r\nCallerIDName: Andr\xe9\r\n\r\n")
        self.assertEqual(self.events[0]["CallerIDName"], "Andr\ufffd")

    def test_subscriber_exception_is_logged_not_raised(self):
        def boom(_msg):
            raise RuntimeError("boom")

        self.proto.on_event = boom
        self.proto.dataReceived(wire(("Event", "A")) + wire(("Event", "B")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_overlong_line_drops_the_connection(self):
        d = self.proto.send_action("Ping")
        self.proto.dataReceived(b"Event: X\r\nData: " + b"x" * (300 * 1024))
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, AMIDisconnected)


class ListTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_collect_with_interleaved_events_of_other_actions(self):
        d = self.proto.send_action("CoreShowChannels", collect=True)
        other = self.proto.send_action("DeviceStateList", collect=True)
        mine, theirs = (m["ActionID"] for m in sent_actions(self.transport))
        self.proto.dataReceived(
            wire(("Response", "Success"), ("ActionID", mine), ("EventList", "start"),
                 ("Message", "Channels will follow"))
            + wire(("Event", "CoreShowChannel"), ("ActionID", mine), ("Uniqueid", "1.1"))
            + wire(("Event", "Newstate"), ("Uniqueid", "1.9"))
            + wire(("Response", "Success"), ("ActionID", theirs), ("EventList", "start"))
            + wire(("Event", "DeviceStateChange"), ("ActionID", theirs),
                   ("Device", "PJSIP/101"), ("State", "INUSE"))
            + wire(("Event", "CoreShowChannel"), ("ActionID", mine), ("Uniqueid", "1.2"))
            + wire(("Event", "OriginateResponse"), ("ActionID", "someone-else-1"))
            + wire(("Event", "CoreShowChannelsComplete"), ("ActionID", mine),
                   ("EventList", "Complete"), ("ListItems", "2"))
        )
        result = self.successResultOf(d)
        self.assertIsInstance(result, AMIEventList)
        self.assertEqual([m["Uniqueid"] for m in result], ["1.1", "1.2"])
        self.assertEqual(result.complete["ListItems"], "2")
        self.assertEqual(result.response["Message"], "Channels will follow")
        self.assertNoResult(other)
        # Unrelated events still reach on_event; list items do not.
        self.assertEqual([e["Event"] for e in self.events], ["Newstate", "OriginateResponse"])
        self.proto.dataReceived(wire(("Event", "DeviceStateListComplete"), ("ActionID", theirs),
                                     ("EventList", "Complete"), ("ListItems", "1")))
        self.assertEqual(self.successResultOf(other)[0]["State"], "INUSE")

    def test_empty_list(self):
        d = self.proto.send_action("CoreShowChannels", collect=True)
        aid = self.last_action_id()
        self.reply(("Response", "Success"), ("ActionID", aid), ("EventList", "start"))
        self.reply(("Event", "CoreShowChannelsComplete"), ("ActionID", aid),
                   ("EventList", "Complete"), ("ListItems", "0"))
        self.assertEqual(self.successResultOf(d), [])

    def test_list_action_answered_without_a_list(self):
        d = self.proto.send_action("Something", collect=True)
        self.reply(("Response", "Success"), ("ActionID", self.last_action_id()))
        result = self.successResultOf(d)
        self.assertEqual(result, [])
        self.assertIsNone(result.complete)

    def test_list_action_refused(self):
        d = self.proto.send_action("PJSIPShowContacts", collect=True)
        self.reply(("Response", "Error"), ("ActionID", self.last_action_id()),
                   ("Message", "Permission denied"))
        self.assertEqual(self.failureResultOf(d, AMIActionError).value.message,
                         "Permission denied")

    def test_list_timeout(self):
        d = self.proto.send_action("CoreShowChannels", collect=True)
        aid = self.last_action_id()
        self.reply(("Response", "Success"), ("ActionID", aid), ("EventList", "start"))
        self.clock.advance(10)
        self.failureResultOf(d, AMITimeout)
        # late items are then plain events
        self.reply(("Event", "CoreShowChannel"), ("ActionID", aid), ("Uniqueid", "1.1"))
        self.assertEqual(len(self.events), 1)


class FinalEventTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_response_then_final_event(self):
        d = self.proto.send_action("Originate", {"Channel": "PJSIP/1"},
                                   final_event="OriginateResponse", timeout=35)
        aid = self.last_action_id()
        self.reply(("Response", "Success"), ("ActionID", aid),
                   ("Message", "Originate successfully queued"))
        self.assertNoResult(d)
        self.reply(("Event", "OriginateResponse"), ("ActionID", "other-1"), ("Reason", "4"))
        self.assertNoResult(d)
        self.reply(("Event", "OriginateResponse"), ("ActionID", aid), ("Reason", "5"))
        self.assertEqual(self.successResultOf(d)["Reason"], "5")
        # The final event is an event for everyone else as well.
        self.assertEqual(len(self.events), 2)

    def test_final_event_before_response(self):
        d = self.proto.send_action("Originate", {"Channel": "PJSIP/1"},
                                   final_event="OriginateResponse")
        aid = self.last_action_id()
        self.reply(("Event", "OriginateResponse"), ("ActionID", aid), ("Reason", "0"))
        self.assertNoResult(d)
        self.reply(("Response", "Success"), ("ActionID", aid))
        self.assertEqual(self.successResultOf(d)["Reason"], "0")

    def test_refused_before_final_event(self):
        d = self.proto.send_action("Originate", {"Channel": "PJSIP/1"},
                                   final_event="OriginateResponse")
        self.reply(("Response", "Error"), ("ActionID", self.last_action_id()),
                   ("Message", "Extension does not exist."))
        self.failureResultOf(d, AMIActionError)


class TimeoutAndLossTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_timeout_removes_pending_and_late_reply_is_ignored(self):
        d = self.proto.send_action("Ping", timeout=3)
        aid = self.last_action_id()
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, AMITimeout)
        self.assertEqual(self.proto.pending_count, 0)
        self.reply(("Response", "Success"), ("ActionID", aid))
        self.assertEqual(self.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_timeout(self):
        d = self.proto.send_action("Ping")
        self.clock.advance(10)
        self.failureResultOf(d, AMITimeout)

    def test_reply_cancels_timer(self):
        self.proto.send_action("Ping")
        self.reply(("Response", "Success"), ("ActionID", self.last_action_id()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_forgets_the_action(self):
        d = self.proto.send_action("Ping")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.proto.pending_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_fails_every_pending_action(self):
        lost = []
        self.proto.on_lost = lost.append
        ds = [self.proto.send_action("Ping"),
              self.proto.send_action("CoreShowChannels", collect=True),
              self.proto.send_action("Originate", {"Channel": "PJSIP/1"},
                                     final_event="OriginateResponse")]
        self.proto.connectionLost(Failure(ConnectionLost()))
        for d in ds:
            self.failureResultOf(d, AMIDisconnected)
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_send_after_close_fails_and_writes_nothing(self):
        self.proto.connectionLost(Failure(ConnectionLost()))
        self.transport.clear()
        self.failureResultOf(self.proto.send_action("Ping"), AMIDisconnected)
        self.assertEqual(self.transport.value(), b"")

    def test_when_greeted_after_close(self):
        proto = AMIProtocol(clock=self.clock)
        proto.makeConnection(StringTransport())
        d = proto.when_greeted()
        proto.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, AMIDisconnected)
        self.failureResultOf(proto.when_greeted(), AMIDisconnected)


class InjectionTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.greet()
        self.transport.clear()

    def assertRefused(self, name, headers):
        with self.assertRaises(AMIInjectionError):
            self.proto.send_action(name, headers)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.proto.pending_count, 0)

    def test_header_value(self):
        self.assertRefused("Setvar", {"Channel": "PJSIP/1-1", "Variable": "X",
                                      "Value": "1\r\n\r\nAction: Originate\r\nChannel: PJSIP/9"})

    def test_header_value_later_in_the_list(self):
        # A clean first header must not be written before the bad one is found.
        self.assertRefused("Originate", [("Channel", "PJSIP/1"), ("Context", "ok"),
                                         ("CallerID", "x\nAction: Hangup")])

    def test_header_name(self):
        self.assertRefused("Setvar", {"Value\r\nAction: Originate": "1"})

    def test_action_name(self):
        self.assertRefused("Ping\r\nAction: Originate", {})

    def test_nul(self):
        self.assertRefused("Setvar", {"Value": "a\x00b"})
