"""MenuRunner: the path through the menus for a caller's digits, timeouts,
retries, the invalid-input branch, play/then, and the commands it sends --
with a scripted caller, and once through the real FastAGI protocol."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from agi_app.agi import AGICommandFailed, AGIHangup, FastAGIProtocol, ScriptRegistry
from agi_app.ivr.engine import Connect, MenuRunner
from agi_app.ivr.menus import load_menus, parse_menus

EXAMPLE = Path(__file__).resolve().parents[2] / "ivr.conf.example"
ALL = "0123456789*#"


class FakeAGI:
    """A caller, scripted: each item of ``inputs`` answers one offer of a
    menu -- ``"1"`` pressed during the prompt, ``"w1"`` pressed while agi_app
    waits, ``None`` nothing (timeout), ``"hangup"`` the caller hangs up."""

    def __init__(self, inputs=(), missing=(), args=(), env=None):
        self.inputs = list(inputs)
        self.missing = set(missing)
        self.args = list(args)
        self.env = dict(env or {})
        self.commands: list[tuple] = []
        self.variables: dict[str, str] = {}
        self.hungup = False
        self.dial_result = {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "12"}

    def _next(self):
        item = self.inputs.pop(0) if self.inputs else "hangup"
        if item == "hangup":
            self.hungup = True
            raise AGIHangup("caller hung up")
        return item

    def stream_file(self, name, escape="", timeout=None):
        self.commands.append(("play", name, escape))
        if name.split("/")[-1] in self.missing:
            return defer.fail(AGICommandFailed("no such file", "200 result=-1"))
        if not escape:
            return defer.succeed("")
        item = self.inputs[0] if self.inputs else None
        if item is not None and item != "hangup" and not item.startswith("w"):
            self.inputs.pop(0)
            return defer.succeed(item)
        return defer.succeed("")

    def wait_for_digit(self, ms, timeout=None):
        self.commands.append(("wait", ms))
        try:
            item = self._next()
        except AGIHangup as e:
            return defer.fail(e)
        return defer.succeed(item[1:] if item else None)

    def verbose(self, text, level=1):
        self.commands.append(("verbose", text))
        return defer.succeed(None)

    def answer(self):
        self.commands.append(("answer",))
        return defer.succeed(None)

    def exec_(self, app, *args, timeout=None, strict=False):
        self.commands.append(("exec", app, *args))
        return defer.succeed(None)

    def get_variable(self, name):
        return defer.succeed(self.variables.get(name, self.dial_result.get(name)))

    def set_variable(self, name, value):
        self.variables[name] = value
        self.commands.append(("set", name, value))
        return defer.succeed(None)

    def hangup(self):
        self.commands.append(("hangup",))
        return defer.succeed(None)

    def plays(self):
        return [c[1].split("/")[-1] for c in self.commands if c[0] == "play"]


class RunnerTests(SynchronousTestCase):
    def setUp(self):
        self.menus = load_menus(EXAMPLE)
        self.choices: list[str] = []

    def run_menu(self, inputs, start="main", menus=None, **kw):
        agi = FakeAGI(inputs, **kw)

        async def on_choice(text):
            self.choices.append(text)

        runner = MenuRunner(agi, menus or self.menus, on_choice)
        d = defer.ensureDeferred(runner.run(start))
        return agi, runner, d

    def test_two_levels_to_an_offer_back_and_to_an_operator(self):
        agi, runner, d = self.run_menu(["1", "w1", "9", "0"])
        self.assertEqual(self.successResultOf(d), Connect("extension", "1000", "main"))
        self.assertEqual(self.choices, [
            "menu=main digit=1 -> menu sales",
            "menu=sales digit=1 -> play offer then menu sales",
            "menu=sales digit=9 -> menu main",
            "menu=main digit=0 -> extension 1000",
        ])  # fmt: skip
        self.assertEqual(runner.path, ["main", "sales", "sales", "main"])
        self.assertEqual(agi.plays(), ["ivr-main", "ivr-sales", "offer", "ivr-sales", "ivr-main"])
        # the prompt takes every key; the offer is played through
        self.assertIn(("play", "agi_app/ivr-main", ALL), agi.commands)
        self.assertIn(("play", "agi_app/offer", ""), agi.commands)
        # sales waits its own 4 s for a digit
        self.assertIn(("wait", 4000), agi.commands)

    def test_timeouts_and_invalid_digits_use_the_retries_then_exhausted(self):
        agi, runner, d = self.run_menu([None, "7", None])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.choices, [
            "menu=main timeout (attempt 1 of 3)",
            "menu=main digit=7 invalid (attempt 2 of 3)",
            "menu=main timeout (attempt 3 of 3), retries exhausted -> hangup",
        ])  # fmt: skip
        self.assertEqual(agi.plays(), ["ivr-main", "ivr-timeout", "ivr-main", "ivr-invalid",
                                       "ivr-main", "ivr-goodbye"])
        self.assertEqual([c[1] for c in agi.commands if c[0] == "wait"], [5000, 5000])

    def test_exhausted_can_connect(self):
        agi, runner, d = self.run_menu(["1", None, None, None])
        self.assertEqual(self.successResultOf(d), Connect("extension", "1000", "sales"))
        self.assertEqual(self.choices[-1],
                         "menu=sales timeout (attempt 3 of 3), retries exhausted -> extension 1000")

    def test_announce_only_menu_connects_without_waiting(self):
        agi, runner, d = self.run_menu(["2"])
        self.assertEqual(self.successResultOf(d), Connect("extension", "1001", "support"))
        self.assertEqual(self.choices, ["menu=main digit=2 -> menu support",
                                        "menu=support -> extension 1001"])
        self.assertEqual(agi.plays(), ["ivr-main", "ivr-support"])
        self.assertFalse([c for c in agi.commands if c[0] == "wait"])

    def test_repeat_hangup_and_hash(self):
        agi, runner, d = self.run_menu(["*", "w#"])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.choices, ["menu=main digit=* -> repeat",
                                        "menu=main digit=# -> hangup"])
        self.assertEqual(runner.path, ["main"])
        self.assertEqual(agi.plays(), ["ivr-main", "ivr-main", "ivr-goodbye"])

    def test_caller_hangs_up_in_a_menu(self):
        agi, runner, d = self.run_menu(["1", "hangup"])
        self.failureResultOf(d, AGIHangup)
        self.assertEqual(self.choices, ["menu=main digit=1 -> menu sales"])

    def test_a_missing_prompt_is_skipped(self):
        agi, runner, d = self.run_menu(["w0"], missing={"ivr-main"})
        self.assertEqual(self.successResultOf(d), Connect("extension", "1000", "main"))
        self.assertTrue([c for c in agi.commands if c[0] == "verbose"])

    def test_endless_loops_are_cut(self):
        menus = parse_menus("[a]\nprompt = ivr-main\nthen = menu b\n"
                            "[b]\nprompt = ivr-sales\nthen = menu a\n")
        agi, runner, d = self.run_menu([], start="a", menus=menus)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.choices[-1], "menu=a too many steps -> hangup")


class WireTests(SynchronousTestCase):
    """The runner on the real FastAGIProtocol: the exact commands Asterisk gets."""

    def test_commands_and_replies_on_the_wire(self):
        menus = load_menus(EXAMPLE)
        registry = ScriptRegistry()
        seen: list[str] = []
        result = []

        async def script(agi):
            async def on_choice(text):
                seen.append(text)

            result.append(await MenuRunner(agi, menus, on_choice).run("main"))

        registry.register("ivr_test", script)
        proto = FastAGIProtocol(registry, Clock(), 30.0)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"agi_network: yes\nagi_network_script: ivr_test\n"
                           b"agi_channel: PJSIP/pstn-00000001\nagi_uniqueid: 1.1\n\n")

        def reply(expected: bytes, answer: bytes) -> None:
            self.assertEqual(transport.value(), expected)
            transport.clear()
            proto.dataReceived(answer)

        # the prompt, interrupted by "2" (ASCII 50)
        reply(b'STREAM FILE "agi_app/ivr-main" "0123456789*#"\n', b"200 result=50 endpos=8000\n")
        reply(b'STREAM FILE "agi_app/ivr-support" "0123456789*#"\n', b"200 result=0 endpos=9\n")
        self.assertEqual(result, [Connect("extension", "1001", "support")])
        self.assertEqual(seen, ["menu=main digit=2 -> menu support",
                                "menu=support -> extension 1001"])
        # then the protocol reports the outcome
        self.assertEqual(transport.value(), b'SET VARIABLE "AGI_APP_RESULT" "OK"\n')

    def test_timeout_on_the_wire(self):
        menus = parse_menus("[m]\nprompt = ivr-main\ntimeout = 2\nretries = 1\n"
                            "goodbye_prompt = none\n1 = hangup\n")
        registry = ScriptRegistry()
        seen: list[str] = []

        async def script(agi):
            async def on_choice(text):
                seen.append(text)

            await MenuRunner(agi, menus, on_choice).run("m")

        registry.register("t", script)
        proto = FastAGIProtocol(registry, Clock(), 30.0)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"agi_network_script: t\n\n")
        self.assertEqual(transport.value(), b'STREAM FILE "agi_app/ivr-main" "0123456789*#"\n')
        transport.clear()
        proto.dataReceived(b"200 result=0 endpos=35000\n")
        self.assertEqual(transport.value(), b'WAIT FOR DIGIT "2000"\n')
        transport.clear()
        proto.dataReceived(b"200 result=0\n")
        self.assertEqual(seen, ["menu=m timeout (attempt 1 of 1), retries exhausted -> hangup"])
