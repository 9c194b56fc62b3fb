"""FastAGIProtocol on a StringTransport and a task.Clock: the environment,
dispatch, reply matching, HANGUP, timeouts, closing, AGI_APP_RESULT."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from agi_app.agi import (
    AGICommandInFlight,
    AGIConnectionLost,
    AGIDeadChannel,
    AGIError,
    AGIHangup,
    AGIInvalidCommand,
    AGIProtocolError,
    AGIReply,
    AGISession,
    AGITimeout,
    AGIUsageError,
    FastAGIFactory,
    FastAGIProtocol,
    ScriptRegistry,
)

ENV_LINES = [
    "agi_network: yes",
    "agi_network_script: {script}",
    "agi_request: agi://127.0.0.1:4573/{script}",
    "agi_channel: PJSIP/101-00000007",
    "agi_language: ru",
    "agi_type: PJSIP",
    "agi_uniqueid: 1764105600.7",
    "agi_version: 22.10.1",
    "agi_callerid: 101",
    "agi_calleridname: Operator One",
    "agi_callingpres: 0",
    "agi_callingani2: 0",
    "agi_callington: 0",
    "agi_callingtns: 0",
    "agi_dnid: 380639920000",
    "agi_rdnis: unknown",
    "agi_context: agi-app-operator",
    "agi_extension: s",
    "agi_priority: 2",
    "agi_enhanced: 0.0",
    "agi_accountcode: ",
    "agi_threadid: 140234",
]


def env_block(script: str = "test", args: tuple[str, ...] = ("42", "hello world"),
              eol: str = "\n") -> bytes:
    lines = [line.format(script=script) for line in ENV_LINES]
    lines += [f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1)]
    return (eol.join(lines) + eol + eol).encode("utf-8")


class Harness:
    """A FastAGIProtocol on a StringTransport; the registered script ``test``
    hands its session to the test and stays running until ``finish`` fires."""

    def __init__(self, timeout: float | None = 30.0, factory: bool = False):
        self.clock = Clock()
        self.transport = StringTransport()
        self.registry = ScriptRegistry()
        self.sessions: list[AGISession] = []
        self.finish: Deferred[None] = Deferred()
        self.registry.register("test", self._script)
        if factory:
            self.factory = FastAGIFactory(self.registry, self.clock, timeout)
            self.proto = self.factory.buildProtocol(None)
        else:
            self.proto = FastAGIProtocol(self.registry, self.clock, timeout)
        self.proto.makeConnection(self.transport)

    def _script(self, agi: AGISession) -> Deferred[None]:
        self.sessions.append(agi)
        return self.finish

    @property
    def agi(self) -> AGISession:
        assert self.sessions, "the script did not start"
        return self.sessions[0]

    def start(self, script: str = "test", **kw) -> AGISession | None:
        self.proto.dataReceived(env_block(script, **kw))
        return self.sessions[0] if self.sessions else None

    def feed(self, *lines: str) -> None:
        self.proto.dataReceived("".join(line + "\n" for line in lines).encode("utf-8"))

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self, reason: type[Exception] = ConnectionDone) -> None:
        self.proto.connectionLost(Failure(reason()))


class EnvironmentTests(SynchronousTestCase):
    def test_environment_arguments_and_script(self):
        h = Harness()
        agi = h.start()
        self.assertEqual(agi.script, "test")
        self.assertEqual(agi.args, ["42", "hello world"])
        self.assertEqual(agi.channel, "PJSIP/101-00000007")
        self.assertEqual(agi.uniqueid, "1764105600.7")
        self.assertEqual(agi.language, "ru")
        self.assertEqual(agi.env["agi_calleridname"], "Operator One")
        self.assertEqual(agi.env["agi_accountcode"], "")
        self.assertEqual(agi.env["agi_network"], "yes")
        self.assertNotIn("agi_arg_1", agi.env)
        self.assertEqual(agi.params, {})
        self.assertEqual(agi.session_id, "1764105600.7")

    def test_script_query_is_parsed(self):
        h = Harness()
        h.registry.register("calls/answered", h._script)
        agi = h.start("calls/answered?call_id=c-1&tag=a&tag=b&empty=&name=%D0%AF+x")
        self.assertEqual(agi.script, "calls/answered")
        self.assertEqual(
            agi.params,
            {"call_id": ["c-1"], "tag": ["a", "b"], "empty": [""], "name": ["Я x"]},
        )
        self.assertEqual(agi.param("tag"), "a")
        self.assertEqual(agi.param("missing", "dflt"), "dflt")

    def test_control_characters_in_the_query_refuse_the_session(self):
        for query in ("x=%0A", "x=%00", "x=a%0D%0AEXEC", "%0A=1"):
            h = Harness()
            self.assertIsNone(h.start("test?" + query))
            self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "ERROR"\n')
            self.assertEqual(h.proto.outcome, "ERROR")

    def test_undecodable_query_refuses_the_session(self):
        h = Harness()
        self.assertIsNone(h.start("test?x=%FF"))
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "ERROR"\n')

    def test_crlf_line_ends_are_accepted(self):
        h = Harness()
        agi = h.start(eol="\r\n")
        self.assertEqual(agi.channel, "PJSIP/101-00000007")
        self.assertEqual(agi.args, ["42", "hello world"])
        h.feed("200 result=1 (x)\r")
        self.assertEqual(h.sent(), b"")  # nothing pending: ignored

    def test_environment_in_two_packets(self):
        block = env_block()
        for cut in (1, 17, len(block) // 2, len(block) - 2, len(block) - 1):
            h = Harness()
            h.proto.dataReceived(block[:cut])
            self.assertEqual(h.sessions, [], cut)
            h.proto.dataReceived(block[cut:])
            self.assertEqual(h.agi.args, ["42", "hello world"], cut)

    def test_environment_byte_by_byte(self):
        h = Harness()
        for i, byte in enumerate(env_block(args=("Я", ""))):
            h.proto.dataReceived(bytes([byte]))
            if i < len(env_block(args=("Я", ""))) - 1:
                self.assertEqual(h.sessions, [])
        self.assertEqual(h.agi.args, ["Я", ""])

    def test_garbled_lines_are_ignored(self):
        h = Harness()
        block = (
            b"agi_network: yes\n"
            b"this is not a header\n"
            b"other_key: value\n"
            b"agi_arg_x: bad\n"
            b"agi_arg_0: bad\n"
            b"agi_network_script: test\n"
            b"agi_channel: Local/1@x-0001;2\n"
            b"agi_arg_2: second\n"
            b"agi_empty:\n"
            b"\n"
        )
        h.proto.dataReceived(block)
        agi = h.agi
        self.assertEqual(agi.args, ["", "second"])  # agi_arg_1 missing
        self.assertEqual(agi.env["agi_empty"], "")
        self.assertNotIn("other_key", agi.env)
        self.assertEqual(agi.session_id, "Local/1@x-0001;2")  # no uniqueid: the channel
        self.assertEqual(agi.language, "en")

    def test_odd_argument_numbers_in_an_otherwise_clean_environment(self):
        h = Harness()
        h.proto.dataReceived(
            b"agi_network_script: test\nagi_arg_3: three\nagi_arg_0: zero\n"
            b"agi_arg_1: one\nagi_arg_x: x\n\n"
        )
        self.assertEqual(h.agi.args, ["one", "", "three"])
        self.assertEqual(h.agi.env, {"agi_network_script": "test"})

    def test_repeated_key_keeps_the_last_value(self):
        h = Harness()
        h.proto.dataReceived(
            b"agi_network_script: test\nagi_channel: A\nagi_channel: B\nagi_arg_1: a\n\n"
        )
        self.assertEqual(h.agi.channel, "B")
        self.assertEqual(h.agi.args, ["a"])

    def test_values_may_contain_colons_and_spaces(self):
        h = Harness()
        h.proto.dataReceived(
            b"agi_network_script: test\nagi_calleridname: Sales: Desk 2 \nagi_arg_1: a: b\n\n"
        )
        self.assertEqual(h.agi.env["agi_calleridname"], "Sales: Desk 2 ")
        self.assertEqual(h.agi.args, ["a: b"])

    def test_empty_environment(self):
        for block in (b"\n", b"\r\n"):
            h = Harness()
            h.proto.dataReceived(block)
            self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "NOTFOUND"\n')

    def test_missing_script_name_is_notfound(self):
        h = Harness()
        h.proto.dataReceived(b"agi_network: yes\nagi_channel: PJSIP/1-1\n\n")
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "NOTFOUND"\n')

    def test_incomplete_environment_times_out(self):
        h = Harness(timeout=10)
        h.proto.dataReceived(env_block()[:-1])  # no blank line
        h.clock.advance(9.9)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.sessions, [])
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_endless_environment_is_cut_off(self):
        h = Harness()
        h.proto.dataReceived(b"agi_x: y\n" * (FastAGIProtocol.MAX_ENV_LINES + 1))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.sessions, [])

    def test_overlong_line_closes(self):
        h = Harness()
        h.proto.dataReceived(b"agi_x: " + b"y" * FastAGIProtocol.MAX_LENGTH)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_disconnect_before_environment(self):
        h = Harness()
        h.proto.dataReceived(b"agi_network: yes\n")
        h.lose(ConnectionLost)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.sessions, [])


class DispatchTests(SynchronousTestCase):
    def test_dispatch_by_script_name(self):
        h = Harness()
        ran = []

        async def one(agi):
            ran.append(("one", agi.args))

        async def two(agi):
            ran.append(("two", agi.args))

        h.registry.register("one", one)
        h.registry.register("two", two)
        h.start("two", args=("x",))
        self.assertEqual(ran, [("two", ["x"])])
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')

    def test_unknown_script(self):
        h = Harness()
        self.assertIsNone(h.start("nope"))
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "NOTFOUND"\n')
        self.assertFalse(h.transport.disconnecting)
        h.feed("200 result=1")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.proto.outcome, "NOTFOUND")

    def test_success_sets_ok_then_closes(self):
        h = Harness()
        agi = h.start()
        d = agi.get_variable("X")
        self.assertEqual(h.sent(), b'GET VARIABLE "X"\n')
        h.feed("200 result=1 (v)")
        self.assertEqual(self.successResultOf(d), "v")
        h.finish.callback(None)
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')
        self.assertFalse(h.transport.disconnecting)
        h.feed("200 result=1")
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_handler_exception_sets_error_logs_and_closes(self):
        h = Harness()

        async def broken(agi):
            await agi.noop()
            raise RuntimeError("boom")

        h.registry.register("broken", broken)
        h.start("broken")
        self.assertEqual(h.sent(), b"NOOP\n")
        h.feed("200 result=0")
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "ERROR"\n')
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(errors), 1)
        h.feed("200 result=1")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.proto.outcome, "ERROR")

    def test_synchronous_handler_exception(self):
        h = Harness()

        def broken(agi):
            raise KeyError("sync")

        h.registry.register("broken", broken)
        h.start("broken")
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "ERROR"\n')
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_deferred_and_plain_handlers(self):
        for handler in (lambda agi: succeed(None), lambda agi: None):
            h = Harness()
            h.registry.register("plain", handler)
            h.start("plain")
            self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')

    def test_deferred_handler_failing(self):
        h = Harness()
        h.start()
        h.finish.errback(ValueError("late"))
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "ERROR"\n')
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_hangup_ending_the_script_is_reported_as_hangup(self):
        h = Harness()

        async def script(agi):
            await agi.answer()
            await agi.stream_file("agi_app/please-wait")

        h.registry.register("s", script)
        h.start("s")
        self.assertEqual(h.sent(), b"ANSWER\n")
        h.feed("HANGUP", "200 result=0")
        # STREAM FILE is refused on a dead channel: AGIHangup ends the script
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "HANGUP"\n')
        self.assertEqual(self.flushLoggedErrors(), [])
        h.feed("200 result=1", "HANGUP")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.proto.outcome, "HANGUP")

    def test_report_refused_still_closes(self):
        for reply in ("520 Invalid command syntax.  Proper usage not available.",
                      "511 Command Not Permitted on a dead channel or intercept routine"):
            h = Harness()
            h.start()
            h.finish.callback(None)
            h.sent()
            h.feed(reply)
            self.assertTrue(h.transport.disconnecting)
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_connection_lost_during_report(self):
        h = Harness()
        h.start()
        h.finish.callback(None)
        h.lose(ConnectionLost)
        self.assertEqual(h.proto.outcome, "OK")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_script_returning_with_a_command_pending_closes(self):
        h = Harness()
        agi = h.start()
        d = agi.noop()
        h.sent()
        h.finish.callback(None)
        self.assertEqual(h.sent(), b"")
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(d, AGIConnectionLost)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_reporting_after_close_writes_nothing(self):
        h = Harness()
        agi = h.start()
        agi.close()
        h.finish.callback(None)
        self.assertEqual(h.sent(), b"")
        self.assertEqual(h.proto.outcome, "OK")

    def test_factory_counts(self):
        h = Harness(factory=True)
        self.assertEqual((h.factory.active, h.factory.total), (1, 0))
        h.start()
        self.assertEqual(h.factory.total, 1)
        h.finish.callback(None)
        h.feed("200 result=1")
        h.lose()
        h.lose()  # a second notification must not count twice
        self.assertEqual(h.factory.active, 0)
        self.assertEqual(h.factory.outcomes["OK"], 1)


class ReplyTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.agi = self.h.start()

    def command(self, *args, **kw):
        d = self.agi.command(*args, **kw)
        self.h.sent()
        return d

    def test_data_with_spaces_and_parentheses(self):
        d = self.command("GET VARIABLE", "X")
        self.h.feed("200 result=1 (a (b) c d)")
        self.assertEqual(self.successResultOf(d), AGIReply(200, "1", "a (b) c d"))

    def test_endpos(self):
        d = self.command("STREAM FILE", "f", "")
        self.h.feed("200 result=0 endpos=16000")
        self.assertEqual(self.successResultOf(d).endpos, 16000)

    def test_trying_then_result(self):
        d = self.command("GOSUB", "ctx", "s", "1")
        self.assertEqual(self.h.transport.value(), b"")
        self.h.feed("100 result=0 Trying...")
        self.assertNoResult(d)
        self.h.feed("200 result=0 Gosub complete")
        self.assertEqual(self.successResultOf(d).data, "Gosub complete")

    def test_510(self):
        d = self.command("FOO BAR")
        self.h.feed("510 Invalid or unknown command")
        self.failureResultOf(d, AGIInvalidCommand)

    def test_511(self):
        d = self.command("STREAM FILE", "x", "")
        self.h.feed("511 Command Not Permitted on a dead channel or intercept routine")
        self.failureResultOf(d, AGIDeadChannel)

    def test_520_single_line(self):
        d = self.command("GET VARIABLE")
        self.h.feed("520 Invalid command syntax.  Proper usage not available.")
        f = self.failureResultOf(d, AGIUsageError)
        self.assertEqual(f.value.usage, "")

    def test_520_block_then_next_command_in_step(self):
        d = self.command("WAIT FOR DIGIT")
        self.h.feed(
            "520-Invalid command syntax.  Proper usage follows:",
            " Usage: WAIT FOR DIGIT <timeout>",
            "",
            "200 result=0 is not a reply inside the block",
        )
        self.assertNoResult(d)
        self.h.feed("520 End of proper usage.")
        f = self.failureResultOf(d, AGIUsageError)
        self.assertIn("Usage: WAIT FOR DIGIT", f.value.usage)
        d2 = self.command("NOOP")
        self.h.feed("200 result=0")
        self.assertEqual(self.successResultOf(d2).result, "0")

    def test_unknown_code_fails_the_command_but_stays_in_step(self):
        d = self.command("NOOP")
        self.h.feed("299 something new")
        self.failureResultOf(d, AGIError)
        self.assertFalse(self.h.transport.disconnecting)

    def test_garbage_reply_closes(self):
        d = self.command("NOOP")
        self.h.feed("what?")
        self.failureResultOf(d, AGIProtocolError)
        self.assertTrue(self.h.transport.disconnecting)
        self.h.lose()
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_200_without_result_closes(self):
        d = self.command("NOOP")
        self.h.feed("200 ok")
        self.failureResultOf(d, AGIProtocolError)
        self.assertTrue(self.h.transport.disconnecting)

    def test_overlong_reply_closes(self):
        d = self.command("GET VARIABLE", "X")
        self.h.proto.dataReceived(b"200 result=1 (" + b"x" * FastAGIProtocol.MAX_LENGTH)
        self.failureResultOf(d, AGIProtocolError)
        self.assertTrue(self.h.transport.disconnecting)

    def test_long_usage_block_closes(self):
        d = self.command("NOOP")
        self.h.feed("520-Invalid", *(["x" * 1000] * 70))
        self.failureResultOf(d, AGIProtocolError)

    def test_reply_split_across_packets(self):
        d = self.command("GET VARIABLE", "X")
        self.h.proto.dataReceived(b"200 res")
        self.h.proto.dataReceived(b"ult=1 (va")
        self.assertNoResult(d)
        self.h.proto.dataReceived(b"lue)")
        self.assertNoResult(d)
        self.h.proto.dataReceived(b"\n")
        self.assertEqual(self.successResultOf(d).data, "value")

    def test_utf8_character_split_across_packets(self):
        d = self.command("GET VARIABLE", "CALLERID(name)")
        raw = "200 result=1 (Оператор №1)\n".encode()
        cut = raw.index("О".encode()) + 1  # inside the two-byte "О"
        self.h.proto.dataReceived(raw[:cut])
        self.h.proto.dataReceived(raw[cut:])
        self.assertEqual(self.successResultOf(d).data, "Оператор №1")

    def test_invalid_utf8_is_replaced_not_fatal(self):
        d = self.command("GET VARIABLE", "X")
        self.h.proto.dataReceived(b"200 result=1 (\xff)\n")
        self.assertEqual(self.successResultOf(d).data, "\ufffd")

    def test_several_lines_in_one_packet(self):
        d = self.command("NOOP")
        results = []

        def next_command(reply):
            results.append(reply)
            return self.agi.command("NOOP").addCallback(results.append)

        d.addCallback(next_command)
        self.h.feed("200 result=0", "HANGUP", "200 result=7")
        self.assertEqual([r.result for r in results], ["0", "7"])
        self.assertTrue(self.agi.hungup)

    def test_unsolicited_line_while_idle_is_ignored(self):
        self.h.feed("200 result=1", "")
        self.assertFalse(self.h.transport.disconnecting)
        d = self.command("NOOP")
        self.h.feed("200 result=0")
        self.successResultOf(d)

    def test_one_command_in_flight(self):
        d = self.command("NOOP")
        d2 = self.agi.command("ANSWER")
        self.failureResultOf(d2, AGICommandInFlight)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.feed("200 result=0")
        self.successResultOf(d)


class HangupTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.agi = self.h.start()

    def test_hangup_before_the_reply(self):
        waited = self.agi.wait_hangup()
        d = self.agi.command("EXEC", "Playback", "x")
        self.h.sent()
        self.h.feed("HANGUP")
        self.assertTrue(self.agi.hungup)
        self.assertIsNone(self.successResultOf(waited))
        self.assertNoResult(d)  # HANGUP is never taken for the reply
        self.h.feed("200 result=-1")
        self.assertEqual(self.successResultOf(d).result, "-1")

    def test_hangup_between_commands_filters_live_only_commands(self):
        d = self.agi.noop()
        self.h.sent()
        self.h.feed("200 result=0", "HANGUP")
        self.successResultOf(d)
        for call in (
            lambda: self.agi.answer(),
            lambda: self.agi.stream_file("x"),
            lambda: self.agi.get_data("x", 1000, 4),
            lambda: self.agi.wait_for_digit(100),
            lambda: self.agi.hangup(),
            lambda: self.agi.command("SAY DIGITS", "123", ""),
            lambda: self.agi.command("GOSUB", "c", "s", "1"),
        ):
            self.failureResultOf(call(), AGIHangup)
            self.assertEqual(self.h.transport.value(), b"")
        for call, line, reply in (
            (lambda: self.agi.get_variable("DIALSTATUS"), b'GET VARIABLE "DIALSTATUS"\n',
             "200 result=1 (ANSWER)"),
            (lambda: self.agi.get_full_variable("${X}"), b'GET FULL VARIABLE "${X}"\n',
             "200 result=1 (x)"),
            (lambda: self.agi.set_variable("A", "1"), b'SET VARIABLE "A" "1"\n',
             "200 result=1"),
            (lambda: self.agi.exec_("NoOp", "x"), b'EXEC NoOp "x"\n', "200 result=0"),
            (lambda: self.agi.command("DATABASE PUT", "f", "k", "v"),
             b'DATABASE PUT "f" "k" "v"\n', "200 result=1"),
            (lambda: self.agi.noop(), b"NOOP\n", "200 result=0"),
            (lambda: self.agi.verbose("bye"), b'VERBOSE "bye" "1"\n', "200 result=1"),
        ):
            d = call()
            self.assertEqual(self.h.sent(), line)
            self.h.feed(reply)
            self.successResultOf(d)

    def test_hangup_while_idle_wakes_waiters(self):
        waiters = [self.agi.wait_hangup(), self.agi.wait_hangup()]
        for w in waiters:
            self.assertNoResult(w)
        self.h.feed("HANGUP")
        for w in waiters:
            self.assertIsNone(self.successResultOf(w))
        self.assertIsNone(self.successResultOf(self.agi.wait_hangup()))
        self.h.feed("HANGUP")  # Asterisk repeats it when its loop ends
        self.assertFalse(self.h.transport.disconnecting)

    def test_hangup_in_the_same_packet_as_the_reply(self):
        d = self.agi.command("EXEC", "Dial", "PJSIP/1")
        self.h.sent()
        self.h.proto.dataReceived(b"200 result=-1\nHANGUP\n")
        self.assertEqual(self.successResultOf(d).result, "-1")
        self.assertTrue(self.agi.hungup)

    def test_a_second_hangup_with_a_command_pending_is_not_a_reply(self):
        self.h.feed("HANGUP")
        d = self.agi.get_variable("X")
        self.h.sent()
        self.h.feed("HANGUP")
        self.assertNoResult(d)
        self.h.feed("200 result=0")
        self.assertIsNone(self.successResultOf(d))

    def test_disconnect_mid_command(self):
        events = []
        sessions = []

        async def script(agi):
            sessions.append(agi)
            try:
                await agi.exec_("Dial", "PJSIP/101", timeout=None)
            except AGIHangup as e:
                events.append(type(e))
                raise

        h = Harness()
        h.registry.register("dial", script)
        waited = []
        h.start("dial")
        agi = sessions[0]
        agi.wait_hangup().addCallback(waited.append)
        self.assertEqual(h.sent(), b'EXEC Dial "PJSIP/101"\n')
        h.lose(ConnectionLost)
        self.assertEqual(events, [AGIConnectionLost])
        self.assertEqual(waited, [None])
        self.assertEqual(h.sent(), b"")  # nothing written after the loss
        self.assertEqual(h.proto.outcome, "HANGUP")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.failureResultOf(agi.noop(), AGIConnectionLost)


class TimeoutTests(SynchronousTestCase):
    def test_command_timeout_closes_the_connection(self):
        h = Harness(timeout=5)
        agi = h.start()
        d = agi.noop()
        h.sent()
        h.clock.advance(4.9)
        self.assertNoResult(d)
        h.clock.advance(0.2)
        self.failureResultOf(d, AGITimeout)
        self.assertTrue(h.transport.disconnecting)
        # a late reply is not taken for anything, and nothing more is sent
        h.feed("200 result=0")
        self.failureResultOf(agi.noop(), AGIConnectionLost)
        h.finish.callback(None)
        self.assertEqual(h.sent(), b"")
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout_per_call(self):
        h = Harness(timeout=5)
        agi = h.start()
        d = agi.exec_("Dial", "PJSIP/101", timeout=None)
        h.clock.advance(3600)
        self.assertNoResult(d)
        self.assertFalse(h.transport.disconnecting)
        h.feed("200 result=0")
        self.successResultOf(d)
        d = agi.get_data("prompt", 5000, 4, timeout=60)
        h.clock.advance(59)
        self.assertNoResult(d)
        h.clock.advance(1)
        self.failureResultOf(d, AGITimeout)

    def test_shorter_timeout_after_a_longer_one(self):
        h = Harness(timeout=30)
        agi = h.start()
        d = agi.noop(timeout=100)
        h.feed("200 result=0")
        self.successResultOf(d)
        d = agi.noop(timeout=2)
        h.clock.advance(2)
        self.failureResultOf(d, AGITimeout)

    def test_replies_clear_the_deadline(self):
        h = Harness(timeout=5)
        agi = h.start()
        for _ in range(3):
            d = agi.noop()
            h.clock.advance(4)
            h.feed("200 result=0")
            self.successResultOf(d)
        # well past every command's deadline, with nothing pending: no timeout
        h.clock.advance(60)
        self.assertFalse(h.transport.disconnecting)
        d = agi.noop()
        h.clock.advance(4.9)
        self.assertNoResult(d)
        h.clock.advance(0.1)
        self.failureResultOf(d, AGITimeout)
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_report_timeout(self):
        h = Harness(timeout=5)
        h.start()
        h.finish.callback(None)
        self.assertEqual(h.sent(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')
        h.clock.advance(5)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])


class PeerTests(SynchronousTestCase):
    """``allowed_peers``: a connection from elsewhere is closed before a
    byte is read or written, and logged once per peer and minute."""

    def setUp(self):
        self.clock = Clock()
        self.registry = ScriptRegistry()
        self.ran: list[AGISession] = []
        self.registry.register("test", lambda agi: self.ran.append(agi))
        self.factory = FastAGIFactory(
            self.registry, self.clock, 30, allowed_peers=("127.0.0.0/8", "::1/128")
        )
        self.logged: list[dict] = []
        self.factory.log = Logger(observer=self.logged.append)

    def connect(self, peer) -> tuple[FastAGIProtocol, StringTransport]:
        transport = StringTransport(peerAddress=peer)
        proto = self.factory.buildProtocol(peer)
        proto.makeConnection(transport)
        proto.dataReceived(env_block())
        return proto, transport

    def test_a_stranger_is_closed_at_once(self):
        proto, transport = self.connect(IPv4Address("TCP", "10.0.0.7", 40000))
        self.assertTrue(transport.disconnected, "aborted, not closed after a flush")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.ran, [])
        self.assertEqual((self.factory.active, self.factory.total, self.factory.refused),
                         (0, 0, 1))  # fmt: skip
        self.assertEqual(self.clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.active, 0)

    def test_allowed_peers_speak_fastagi(self):
        peers = [IPv4Address("TCP", "127.0.0.1", 40000), IPv4Address("TCP", "127.9.9.9", 1),
                 IPv6Address("TCP", "::1", 40000), IPv6Address("TCP", "::ffff:127.0.0.1", 2),
                 UNIXAddress(b"/run/agi.sock")]  # fmt: skip
        for n, peer in enumerate(peers, 1):
            proto, transport = self.connect(peer)
            self.assertFalse(transport.disconnecting, peer)
            self.assertEqual(len(self.ran), n)
            self.assertEqual(transport.value(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')
        self.assertEqual(self.factory.refused, 0)
        self.assertEqual(self.logged, [])

    def test_refusals_are_logged_once_per_peer_and_minute(self):
        for host in ("10.0.0.7", "10.0.0.7", "10.0.0.8", "10.0.0.7", "::ffff:10.0.0.7"):
            self.connect(IPv4Address("TCP", host, 40000) if "." in host and ":" not in host
                         else IPv6Address("TCP", host, 40000))  # fmt: skip
            self.clock.advance(10)
        self.assertEqual([e["peer"] for e in self.logged],
                         ["10.0.0.7", "10.0.0.8", "::ffff:10.0.0.7"])  # fmt: skip
        self.clock.advance(20)  # 60 s after the first
        self.connect(IPv4Address("TCP", "10.0.0.7", 40001))
        self.assertEqual(len(self.logged), 4)
        self.assertEqual(self.factory.refused, 6)
        self.assertIn("not in [agi] allowed_peers", self.logged[0]["log_format"])

    def test_many_peers_at_once_are_counted_without_unbounded_memory(self):
        self.patch(FastAGIFactory, "MAX_REFUSAL_PEERS", 3)
        for i in range(5):
            self.connect(IPv4Address("TCP", f"10.0.0.{i}", 1))
        self.assertEqual((self.factory.refused, len(self.logged)), (5, 3))
        self.clock.advance(60)
        self.connect(IPv4Address("TCP", "10.0.0.4", 1))  # the old entries are dropped
        self.assertEqual(len(self.logged), 4)

    def test_without_a_list_anyone_may_connect(self):
        factory = FastAGIFactory(self.registry, self.clock, 30)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.5", 1))
        factory.buildProtocol(None).makeConnection(transport)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(factory.active, 1)


class ListenTests(SynchronousTestCase):
    def test_listen_uses_the_agi_section(self):
        from twisted.internet.testing import MemoryReactorClock

        from agi_app.agi import listen
        from agi_app.config import AGIConfig

        reactor = MemoryReactorClock()
        registry = ScriptRegistry()
        d = listen(reactor, AGIConfig(listen="tcp:14573:interface=127.0.0.1",
                                      command_timeout=7.5), registry)
        self.successResultOf(d)
        port, factory, _backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (14573, "127.0.0.1"))
        self.assertIsInstance(factory, FastAGIFactory)
        self.assertIs(factory.registry, registry)
        self.assertEqual(factory.command_timeout, 7.5)
        self.assertIs(factory.clock, reactor)
        self.assertIn("127.0.0.1", factory.allowed_peers)
        self.assertNotIn("10.0.0.1", factory.allowed_peers)
