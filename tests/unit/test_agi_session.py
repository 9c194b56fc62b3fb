"""AGISession's command methods: the exact line written, how each reply maps
to a result, and refusal of unsafe arguments before anything is written.
Also the ScriptRegistry."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from agi_app.agi import (
    AGIAppError,
    AGIArgumentError,
    AGICommandFailed,
    AGIHangup,
    AGIReply,
    AGISession,
    FastAGIProtocol,
    ScriptRegistry,
)


class SessionTestCase(SynchronousTestCase):
    """A started session whose script waits, so the test drives the commands."""

    def setUp(self):
        self.clock = Clock()
        self.transport = StringTransport()
        registry = ScriptRegistry()
        self.sessions: list[AGISession] = []
        registry.register("t", lambda agi: self.sessions.append(agi) or Deferred())
        self.proto = FastAGIProtocol(registry, self.clock, 30.0)
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(
            b"agi_network: yes\nagi_network_script: t\nagi_channel: PJSIP/1-1\n"
            b"agi_uniqueid: 1.1\n\n"
        )
        self.agi = self.sessions[0]

    def roundtrip(self, d: Deferred, expected_line: bytes, *reply: str):
        """Check the line written, feed the reply lines, return ``d``."""
        self.assertEqual(self.transport.value(), expected_line)
        self.transport.clear()
        self.proto.dataReceived("".join(r + "\n" for r in reply).encode())
        return d

    def ok(self, d, line, *reply):
        return self.successResultOf(self.roundtrip(d, line, *reply))

    def refused(self, d, exc=AGIArgumentError):
        self.failureResultOf(d, exc)
        self.assertEqual(self.transport.value(), b"")
        # nothing was left in flight: the next command goes out at once
        self.ok(self.agi.noop(), b"NOOP\n", "200 result=0")


class CommandTests(SessionTestCase):
    def test_generic_command(self):
        reply = self.ok(self.agi.command("stream file", "agi_app/please-wait", ""),
                        b'STREAM FILE "agi_app/please-wait" ""\n', "200 result=0 endpos=8000")
        self.assertEqual(reply, AGIReply(200, "0", None, 8000))

    def test_quotes_and_backslashes_are_escaped(self):
        d = self.agi.command("VERBOSE", 'he said "hi" \\ bye', 1)
        self.ok(d, b'VERBOSE "he said \\"hi\\" \\\\ bye" "1"\n', "200 result=1")

    def test_bad_command_names_are_refused(self):
        for name in ("NOOP\nANSWER", "EXEC Dial,", ""):
            self.refused(self.agi.command(name))

    def test_line_breakers_refused_in_every_argument(self):
        for bad in ("x\ry", "x\ny", "x\x00y", "\r\nEXEC System x"):
            calls = [
                lambda b=bad: self.agi.command("VERBOSE", "ok", b),
                lambda b=bad: self.agi.command("VERBOSE", b, "1"),
                lambda b=bad: self.agi.get_variable(b),
                lambda b=bad: self.agi.get_full_variable(b),
                lambda b=bad: self.agi.get_full_variable("${X}", b),
                lambda b=bad: self.agi.set_variable(b, "v"),
                lambda b=bad: self.agi.set_variable("N", b),
                lambda b=bad: self.agi.exec_("Playback", b),
                lambda b=bad: self.agi.exec_("Playback", "ok", b, strict=True),
                lambda b=bad: self.agi.hangup(b),
                lambda b=bad: self.agi.stream_file(b),
                lambda b=bad: self.agi.stream_file("f", b),
                lambda b=bad: self.agi.get_data(b),
                lambda b=bad: self.agi.verbose(b),
            ]
            for call in calls:
                self.refused(call())

    def test_session_stays_usable_after_a_refusal(self):
        self.refused(self.agi.set_variable("N", "a\nb"))
        self.assertIsNone(self.ok(self.agi.set_variable("N", "ab"),
                                  b'SET VARIABLE "N" "ab"\n', "200 result=1"))


class ConvenienceTests(SessionTestCase):
    def test_get_variable(self):
        line = b'GET VARIABLE "CALLERID(num)"\n'
        self.assertEqual(self.ok(self.agi.get_variable("CALLERID(num)"), line,
                                 "200 result=1 (101)"), "101")
        self.assertIsNone(self.ok(self.agi.get_variable("CALLERID(num)"), line,
                                  "200 result=0"))
        self.assertEqual(self.ok(self.agi.get_variable("CALLERID(num)"), line,
                                 "200 result=1 ()"), "")

    def test_get_full_variable(self):
        self.assertEqual(
            self.ok(self.agi.get_full_variable("${A}-${B}"), b'GET FULL VARIABLE "${A}-${B}"\n',
                    "200 result=1 (a-b)"), "a-b")
        self.assertIsNone(
            self.ok(self.agi.get_full_variable("${A}", "PJSIP/2-2"),
                    b'GET FULL VARIABLE "${A}" "PJSIP/2-2"\n', "200 result=0"))

    def test_set_variable(self):
        self.assertIsNone(self.ok(self.agi.set_variable("__CALL_ID", "c 1"),
                                  b'SET VARIABLE "__CALL_ID" "c 1"\n', "200 result=1"))

    def test_answer(self):
        self.assertIsNone(self.ok(self.agi.answer(), b"ANSWER\n", "200 result=0"))
        d = self.roundtrip(self.agi.answer(), b"ANSWER\n", "200 result=-1")
        self.failureResultOf(d, AGICommandFailed)

    def test_hangup(self):
        self.assertIsNone(self.ok(self.agi.hangup(), b"HANGUP\n", "200 result=1"))
        d = self.roundtrip(self.agi.hangup("PJSIP/9-9"), b'HANGUP "PJSIP/9-9"\n',
                           "200 result=-1")
        self.failureResultOf(d, AGICommandFailed)

    def test_stream_file(self):
        line = b'STREAM FILE "agi_app/menu" "12#"\n'
        self.assertEqual(self.ok(self.agi.stream_file("agi_app/menu", "12#"), line,
                                 "200 result=0 endpos=16000"), "")
        self.assertEqual(self.ok(self.agi.stream_file("agi_app/menu", "12#"), line,
                                 "200 result=50 endpos=3000"), "2")
        self.assertEqual(self.ok(self.agi.stream_file("agi_app/menu", "12#"), line,
                                 "200 result=35 endpos=3000"), "#")
        self.ok(self.agi.stream_file("f", offset=800), b'STREAM FILE "f" "" "800"\n',
                "200 result=0 endpos=1600")
        d = self.roundtrip(self.agi.stream_file("missing"), b'STREAM FILE "missing" ""\n',
                           "200 result=-1 endpos=0")
        f = self.failureResultOf(d, AGICommandFailed)
        self.assertEqual(f.value.reply.endpos, 0)

    def test_stream_file_failing_after_hangup_is_a_hangup(self):
        d = self.roundtrip(self.agi.stream_file("f"), b'STREAM FILE "f" ""\n',
                           "HANGUP", "200 result=-1 endpos=400")
        self.failureResultOf(d, AGIHangup)

    def test_get_data(self):
        self.assertEqual(self.ok(self.agi.get_data("agi_app/enter"), b'GET DATA "agi_app/enter"\n',
                                 "200 result=123"), "123")
        self.assertEqual(self.ok(self.agi.get_data("p", 5000, 4), b'GET DATA "p" "5000" "4"\n',
                                 "200 result=0042"), "0042")
        self.assertEqual(self.ok(self.agi.get_data("p", max_digits=4), b'GET DATA "p" "0" "4"\n',
                                 "200 result=12 (timeout)"), "12")
        self.assertIsNone(self.ok(self.agi.get_data("p", 3000), b'GET DATA "p" "3000"\n',
                                  "200 result= (timeout)"))
        self.assertEqual(self.ok(self.agi.get_data("p"), b'GET DATA "p"\n', "200 result="), "")
        d = self.roundtrip(self.agi.get_data("p"), b'GET DATA "p"\n', "200 result=-1")
        self.failureResultOf(d, AGICommandFailed)

    def test_wait_for_digit(self):
        line = b'WAIT FOR DIGIT "5000"\n'
        self.assertEqual(self.ok(self.agi.wait_for_digit(5000), line, "200 result=55"), "7")
        self.assertIsNone(self.ok(self.agi.wait_for_digit(5000), line, "200 result=0"))
        self.ok(self.agi.wait_for_digit(), b'WAIT FOR DIGIT "-1"\n', "200 result=42")
        d = self.roundtrip(self.agi.wait_for_digit(5000), line, "200 result=-1")
        self.failureResultOf(d, AGICommandFailed)

    def test_verbose_and_noop(self):
        self.assertIsNone(self.ok(self.agi.verbose("call c-1 answered", 3),
                                  b'VERBOSE "call c-1 answered" "3"\n', "200 result=1"))
        self.assertIsNone(self.ok(self.agi.noop(), b"NOOP\n", "200 result=0"))

    def test_exec(self):
        reply = self.ok(self.agi.exec_("Playback", "agi_app/please-wait"),
                        b'EXEC Playback "agi_app/please-wait"\n', "200 result=0")
        self.assertEqual(reply.result, "0")
        reply = self.ok(self.agi.exec_("Dial", "PJSIP/380639920000@pstn", "30", "gU(sub^x)",
                                       timeout=None),
                        b'EXEC Dial "PJSIP/380639920000@pstn,30,gU(sub^x)"\n', "200 result=-1")
        self.assertEqual(reply.result_int, -1)  # the caller hung up: not an error here
        self.ok(self.agi.exec_("Answer"), b"EXEC Answer\n", "200 result=0")

    def test_exec_missing_application(self):
        d = self.roundtrip(self.agi.exec_("NoSuchApp", "x"), b'EXEC NoSuchApp "x"\n',
                           "200 result=-2")
        self.failureResultOf(d, AGIAppError)

    def test_exec_refusals(self):
        self.refused(self.agi.exec_("Playback", "a,b"))
        self.refused(self.agi.exec_("Dial", "PJSIP/1&PJSIP/2", strict=True))
        self.refused(self.agi.exec_("Dial", "U(sub"))
        self.refused(self.agi.exec_("Dial foo", "x"))
        for ch in ",()|&\"":
            self.refused(self.agi.exec_("Dial", f"PJSIP/1{ch}", strict=True))

    def test_exec_quotes_are_escaped_not_stripped(self):
        self.ok(self.agi.exec_("Set", 'NAME="a b"'), b'EXEC Set "NAME=\\"a b\\""\n',
                "200 result=0")

    def test_environment_accessors(self):
        self.assertEqual(self.agi.script, "t")
        self.assertEqual(self.agi.channel, "PJSIP/1-1")
        self.assertEqual(self.agi.uniqueid, "1.1")
        self.assertFalse(self.agi.hungup)
        self.assertIn("1.1", repr(self.agi))


# -- registry ---------------------------------------------------------------

async def _handler(agi):
    return None


def test_registry_register_and_get():
    registry = ScriptRegistry()
    registry.register("calls/answered", _handler)
    assert registry.get("calls/answered") is _handler
    assert registry.get("nope") is None
    assert "calls/answered" in registry
    assert len(registry) == 1
    assert list(registry) == ["calls/answered"]


def test_registry_decorator_returns_the_function():
    registry = ScriptRegistry()

    @registry.script("a")
    async def a(agi):
        return None

    @registry.script("b")
    async def b(agi):
        return None

    assert registry.get("a") is a
    assert registry.names() == ["a", "b"]


def test_registries_are_independent():
    one, two = ScriptRegistry(), ScriptRegistry()
    one.register("x", _handler)
    assert "x" not in two


@pytest.mark.parametrize("name", ["", "a b", "a?b", "a\nb", "a\tb", None])
def test_registry_refuses_bad_names(name):
    with pytest.raises(ValueError):
        ScriptRegistry().register(name, _handler)


def test_registry_refuses_duplicates_and_non_callables():
    registry = ScriptRegistry()
    registry.register("x", _handler)
    with pytest.raises(ValueError, match="already"):
        registry.register("x", _handler)
    with pytest.raises(TypeError):
        registry.register("y", "not a function")
