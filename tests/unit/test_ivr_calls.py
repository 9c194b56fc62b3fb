"""callWithAnnouncement, callWithInteractiveVoiceResponse and incoming IVR
calls: what reaches the PBX (the in-memory FakeAMIServer), what the FastAGI
scripts do (a scripted caller) and the history each call gets -- always one
final status, also when FastAGI or the AMI link fails."""

from __future__ import annotations

from test_ivr_engine import EXAMPLE, FakeAGI
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.agi import AGIHangup
from agi_app.ami import AMIService
from agi_app.ami.testing import FakeAMIServer, OriginateOutcome
from agi_app.calls.lifecycle import Lifecycle
from agi_app.calls.outbound import OutboundCalls
from agi_app.calls.statuses import IVR_CHOICE
from agi_app.config import DialingConfig
from agi_app.errors import PBXUnavailable
from agi_app.ivr.menus import MenuError, load_menus
from agi_app.ivr.service import IVRService, UnknownMenu
from agi_app.store.base import ExternalKeyConflict
from agi_app.store.testing import MemoryStore
from agi_app.validation import InvalidInput

USER, SECRET = "agi_app", "s3cret"


class CallsTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_795_644_000)
        self.server = FakeAMIServer(users={USER: SECRET}, clock=self.reactor)
        self.ami = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
        self.store = MemoryStore(self.reactor)
        self.addCleanup(self.store.close)
        ids = iter(f"c{i}" for i in range(1, 100))
        self.lifecycle = Lifecycle(store=self.store, ami=self.ami, dialing=DialingConfig(),
                                   clock=self.reactor, new_id=lambda: next(ids))
        self.ivr = IVRService(lifecycle=self.lifecycle, dialing=DialingConfig(), path=EXAMPLE)
        self.calls = OutboundCalls(lifecycle=self.lifecycle, dialing=DialingConfig(),
                                   menus=self.ivr, voice_files=lambda: {"announcement", "offer"})
        self.lifecycle.start()
        self.ami.startService()
        self.link = self.server.accept(self.reactor)
        self.addCleanup(self.ami.stopService)

    def d(self, coro):
        return defer.ensureDeferred(coro)

    def place(self, method, *args, **kw):
        call_id, created = self.successResultOf(self.d(method(*args, **kw)))
        self.assertTrue(created)
        return call_id

    def originates(self):
        return self.server.actions_named("Originate")


class AnnouncementTests(CallsTestCase):
    def test_the_client_answers_and_hears_the_message(self):
        call_id = self.place(self.calls.call_with_announcement, "380501234567", "announcement",
                             order_id="o-1")
        [orig] = self.originates()
        self.assertEqual(orig["Channel"], "PJSIP/380501234567@pstn")
        self.assertEqual((orig["Context"], orig["Exten"], orig["Priority"]),
                         ("agi-app-announcement", "s", "1"))
        self.assertEqual(sorted(orig.getall("Variable")),
                         sorted([f"__AGI_APP_CALL_ID={call_id}", "AGI_APP_VOICE=announcement"]))
        self.assertEqual(self.store.words(call_id), ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP"])
        agi = FakeAGI(args=[call_id])

        def playing(name, escape="", timeout=None):
            agi.commands.append(("play", name, escape))
            self.reactor.advance(3.3)
            return defer.succeed("")

        agi.stream_file = playing
        self.successResultOf(self.d(self.calls.announcement(agi)))
        self.assertIn(("play", "agi_app/announcement", ""), agi.commands)
        self.assertEqual(self.store.words(call_id),
                         ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"])
        self.assertEqual(self.store.details(call_id, "FINISH"), ["announcement played (3.3 s)"])
        self.assertAlmostEqual(self.store.call(call_id)["talk_seconds"], 3.3)

    def test_busy_noanswer_and_refused(self):
        self.server.originate_outcomes["PJSIP/380500000486@pstn"] = OriginateOutcome.busy()
        self.server.originate_outcomes["PJSIP/380500000408@pstn"] = OriginateOutcome(reason=3)
        self.server.originate_outcomes["PJSIP/380500000500@pstn"] = OriginateOutcome(
            error="Extension does not exist.")
        busy = self.place(self.calls.call_with_announcement, "380500000486", "announcement")
        quiet = self.place(self.calls.call_with_announcement, "380500000408", "announcement")
        refused = self.place(self.calls.call_with_ivr, "380500000500", "main")
        self.reactor.advance(3)
        self.assertEqual(self.store.words(busy), ["CALL", "CLIENT_CALLTO", "CLIENT_BUSY"])
        self.assertEqual(self.store.words(quiet), ["CALL", "CLIENT_CALLTO", "CLIENT_NOANSWER"])
        self.assertEqual(self.store.words(refused), ["CALL", "CLIENT_CALLTO", "ERROR"])

    def test_pbx_down_logs_call_then_error(self):
        self.link.drop()
        failure = self.failureResultOf(
            self.d(self.calls.call_with_announcement("380501234567", "announcement")),
            PBXUnavailable,
        )
        self.assertEqual(self.store.words(failure.value.call_id), ["CALL", "ERROR"])

    def test_voice_file_ids_are_checked(self):
        self.assertEqual(self.calls.check_voice_file("offer"), "offer")
        for bad in ("../etc/passwd", "a b", "", None, "x" * 65, "nope"):
            with self.assertRaises(InvalidInput) as raised:
                self.calls.check_voice_file(bad)
            self.assertEqual(raised.exception.field, "voiceFileID")

    def test_repeated_external_key_places_one_call(self):
        first = self.place(self.calls.call_with_announcement, "380501234567", "offer",
                           external_key="k1")
        again, created = self.successResultOf(self.d(self.calls.call_with_announcement(
            "380501234567", "offer", external_key="k1")))
        self.assertEqual((again, created), (first, False))
        self.assertEqual(len(self.originates()), 1)
        self.failureResultOf(self.d(self.calls.call_with_announcement(
            "380501234567", "announcement", external_key="k1")), ExternalKeyConflict)

    def test_missing_message_on_the_pbx_is_an_error(self):
        call_id = self.place(self.calls.call_with_announcement, "380501234567", "offer")
        agi = FakeAGI(args=[call_id], missing={"offer"})
        self.successResultOf(self.d(self.calls.announcement(agi)))
        self.assertEqual(self.store.words(call_id)[-1], "ERROR")
        self.assertIn(("hangup",), agi.commands)

    def test_client_hangs_up_during_the_message(self):
        call_id = self.place(self.calls.call_with_announcement, "380501234567", "offer")
        agi = FakeAGI(args=[call_id])
        agi.stream_file = lambda *a, **k: defer.fail(AGIHangup("gone"))
        self.failureResultOf(self.d(self.calls.announcement(agi)), AGIHangup)
        self.assertEqual(self.store.words(call_id)[-1], "FINISH")
        self.assertIn("hung up", self.store.details(call_id, "FINISH")[0])

    def test_without_fastagi_the_call_still_ends_when_its_channels_do(self):
        call_id = self.place(self.calls.call_with_announcement, "380501234567", "offer")
        chan = [("Channel", "PJSIP/pstn-00000001"), ("Uniqueid", "u1"), ("ChannelState", "6"),
                ("ChanVariable", f"AGI_APP_CALL_ID={call_id}")]
        self.server.emit("Newstate", chan)
        self.server.emit("Hangup", chan + [("Cause", "16")])
        self.assertEqual(self.store.words(call_id)[-1], "CLIENT_PICKUP")
        self.reactor.advance(3)
        self.assertEqual(self.store.words(call_id)[-1], "FINISH")
        self.assertEqual(self.store.details(call_id, "FINISH"), ["all channels hung up"])

    def test_reconnect_closes_calls_nothing_belongs_to(self):
        self.server.default_outcome = OriginateOutcome(delay=None)  # never reported
        call_id = self.place(self.calls.call_with_announcement, "380501234567", "offer")
        self.link.drop()
        self.reactor.advance(1)
        self.link = self.server.accept(self.reactor)
        self.assertEqual(self.store.words(call_id), ["CALL", "CLIENT_CALLTO", "CLIENT_CANCEL"])

    def test_a_script_for_an_unknown_call_fails_so_the_dialplan_falls_back(self):
        self.failureResultOf(self.d(self.calls.announcement(FakeAGI(args=["nope"]))), LookupError)
        self.failureResultOf(self.d(self.calls.announcement(FakeAGI(args=["a b"]))), InvalidInput)


class IVRCallTests(CallsTestCase):
    def test_two_levels_then_an_operator_answers(self):
        call_id = self.place(self.calls.call_with_ivr, "380501234567", "main", order_id="ivr-7")
        [orig] = self.originates()
        self.assertEqual(orig["Context"], "agi-app-ivr-call")
        agi = FakeAGI(["1", "w9", None, "0"], args=[call_id])
        dial = agi.exec_

        def talk_12_s(app, *args, **kw):  # the connected conversation lasts 12 s
            if app == "Dial":
                self.reactor.advance(12)
            return dial(app, *args, **kw)

        agi.exec_ = talk_12_s
        self.successResultOf(self.d(self.calls.ivr_call(agi)))
        self.assertIn(("exec", "Dial", "PJSIP/1000", 30, "g"), agi.commands)
        # the conversation is recorded, tied to the call (and its order)
        mixmonitor = ("exec", "MixMonitor", f"/var/spool/asterisk/monitor/ivr-7_{call_id}.wav",
                      "b")  # fmt: skip
        self.assertLess(agi.commands.index(mixmonitor), agi.commands.index(
            ("exec", "Dial", "PJSIP/1000", 30, "g")))
        [record] = self.store.all_recordings()
        self.assertEqual((record["call_id"], record["path"]),
                         (call_id, f"/var/spool/asterisk/monitor/ivr-7_{call_id}.wav"))
        # the operator sees the client's number
        self.assertIn(("set", "CALLERID(num)", "380501234567"), agi.commands)
        self.assertEqual(self.store.words(call_id), [
            "CALL", "CLIENT_CALLTO", "CLIENT_PICKUP", IVR_CHOICE, IVR_CHOICE, IVR_CHOICE,
            IVR_CHOICE, "OPERATOR_CALLTO", "OPERATOR_PICKUP", "FINISH",
        ])  # fmt: skip
        self.assertEqual(self.store.details(call_id, IVR_CHOICE), [
            "menu=main digit=1 -> menu sales",
            "menu=sales digit=9 -> menu main",
            "menu=main timeout (attempt 1 of 3)",
            "menu=main digit=0 -> extension 1000",
        ])  # fmt: skip
        # talk time from the client's pickup (Dial's ANSWEREDTIME is not asked)
        self.assertEqual(self.store.call(call_id)["talk_seconds"], 12.0)

    def test_busy_operator_is_the_final_status(self):
        call_id = self.place(self.calls.call_with_ivr, "380501234567", "main")
        agi = FakeAGI(["2"], args=[call_id])
        agi.dial_result = {"DIALSTATUS": "BUSY"}
        self.successResultOf(self.d(self.calls.ivr_call(agi)))
        self.assertEqual(self.store.words(call_id)[-3:],
                         [IVR_CHOICE, "OPERATOR_CALLTO", "OPERATOR_BUSY"])
        self.assertEqual(agi.plays()[-1], "ivr-goodbye")
        self.assertEqual(self.store.all_recordings(), [])  # nobody answered: nothing stored

    def test_operator_pickup_is_logged_when_the_phone_answers(self):
        call_id = self.place(self.calls.call_with_ivr, "380501234567", "main")
        agi = FakeAGI(["0"], args=[call_id])
        dialing = defer.Deferred()
        agi.exec_ = lambda app, *a, **k: dialing if app == "Dial" else defer.succeed(None)
        d = self.d(self.calls.ivr_call(agi))
        self.assertEqual(self.store.words(call_id)[-1], "OPERATOR_CALLTO")
        self.assertEqual(self.store.all_recordings(), [])
        self.server.emit("DialEnd", [("Uniqueid", "u1"), ("DialStatus", "ANSWER"),
                                     ("ChanVariable", f"AGI_APP_CALL_ID={call_id}")])
        self.assertEqual(self.store.words(call_id)[-1], "OPERATOR_PICKUP")
        [record] = self.store.all_recordings()  # stored the moment the phone answered
        dialing.callback(None)
        self.successResultOf(d)
        self.assertEqual(self.store.words(call_id)[-2:], ["OPERATOR_PICKUP", "FINISH"])
        self.assertEqual(len(self.store.all_recordings()), 1)
        self.assertEqual(record["path"], f"/var/spool/asterisk/monitor/call_{call_id}.wav")

    def test_caller_hangs_up_in_the_menu(self):
        call_id = self.place(self.calls.call_with_ivr, "380501234567", "main")
        agi = FakeAGI(["1", "hangup"], args=[call_id])
        self.failureResultOf(self.d(self.calls.ivr_call(agi)), AGIHangup)
        self.assertEqual(self.store.words(call_id)[-2:], [IVR_CHOICE, "FINISH"])

    def test_sessions_lost_because_agi_app_stops_leave_the_calls_open(self):
        """Stopping drops the FastAGI connections while the calls go on on
        the PBX: nothing is concluded, the next start takes them up."""
        ivr = self.place(self.calls.call_with_ivr, "380501234567", "main")
        message = self.place(self.calls.call_with_announcement, "380501234568", "announcement")
        in_menu = FakeAGI(["1"], args=[ivr])
        listening = FakeAGI(args=[message])
        waiting, playing = defer.Deferred(), defer.Deferred()
        in_menu.wait_for_digit = lambda ms, timeout=None: waiting
        listening.stream_file = lambda name, escape="", timeout=None: playing
        d1, d2 = self.d(self.calls.ivr_call(in_menu)), self.d(self.calls.announcement(listening))
        self.lifecycle.stop()
        for lost in (waiting, playing):
            lost.errback(AGIHangup("connection lost"))
        self.failureResultOf(d1, AGIHangup)
        self.failureResultOf(d2, AGIHangup)
        self.assertEqual(self.store.words(ivr)[-1], IVR_CHOICE)
        self.assertEqual(self.store.words(message), ["CALL", "CLIENT_CALLTO", "CLIENT_PICKUP"])
        self.assertIsNone(self.store.call(ivr)["final_status"])
        self.assertIsNone(self.store.call(message)["final_status"])

    def test_ivr_names_are_checked(self):
        self.assertEqual(self.calls.check_ivr("sales"), "sales")
        for bad, code in (("nope", "unknown_ivrName"), ("a/b", "invalid_ivrName"),
                          ("", "missing_ivrName")):
            with self.assertRaises(InvalidInput) as raised:
                self.calls.check_ivr(bad)
            self.assertEqual(raised.exception.code, code)


class IncomingTests(CallsTestCase):
    ENV = {"agi_callerid": "380507654321", "agi_dnid": "0443334023"}

    def test_an_incoming_call_gets_a_history_of_its_choices(self):
        agi = FakeAGI(["7", "2"], args=["main"], env=self.ENV)
        self.successResultOf(self.d(self.ivr.incoming(agi)))
        [call] = self.store.all_calls()
        self.assertEqual((call["kind"], call["phone"]), ("incoming", "380507654321"))
        self.assertEqual(call["params"]["did"], "0443334023")
        self.assertIn(("set", "__AGI_APP_CALL_ID", call["call_id"]), agi.commands)
        self.assertEqual(self.store.words(call["call_id"]), [
            "CALL", "CLIENT_PICKUP", IVR_CHOICE, IVR_CHOICE, IVR_CHOICE, "OPERATOR_CALLTO",
            "OPERATOR_PICKUP", "FINISH",
        ])  # fmt: skip
        self.assertEqual(self.store.details(call["call_id"], IVR_CHOICE), [
            "menu=main digit=7 invalid (attempt 1 of 3)",
            "menu=main digit=2 -> menu support",
            "menu=support -> extension 1001",
        ])  # fmt: skip

    def test_unknown_menu_fails_the_script(self):
        self.failureResultOf(self.d(self.ivr.incoming(FakeAGI(args=["nope"], env=self.ENV))),
                             UnknownMenu)
        self.assertEqual(self.store.all_calls(), [])

    def test_a_caller_id_that_is_no_phone_number_is_not_stored(self):
        agi = FakeAGI(["#"], args=["main"], env={"agi_callerid": "<script>"})
        self.successResultOf(self.d(self.ivr.incoming(agi)))
        [call] = self.store.all_calls()
        self.assertIsNone(call["phone"])
        self.assertEqual(self.store.words(call["call_id"])[-1], "FINISH")


class ReloadTests(SynchronousTestCase):
    def test_menus_follow_the_file_and_a_broken_edit_keeps_the_old_ones(self):
        import os
        import shutil
        import tempfile

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "ivr.conf")
        with open(path, "w") as f:
            f.write("[one]\nprompt = ivr-main\n1 = hangup\n")
        ivr = IVRService(lifecycle=None, dialing=DialingConfig(), path=path)
        self.assertEqual(set(ivr.menus), {"one"})
        with open(path, "w") as f:
            f.write("[two]\nprompt = ivr-main\n1 = hangup\n")
        os.utime(path, (1, 1))
        self.assertEqual(set(ivr.menus), {"two"})
        with open(path, "w") as f:
            f.write("[three]\nprompt = ivr-main\n1 = menu missing\n")
        os.utime(path, (2, 2))
        self.assertEqual(set(ivr.menus), {"two"})
        with self.assertRaises(MenuError):
            ivr.reload()
        self.assertEqual(load_menus(EXAMPLE)["main"].prompt, "ivr-main")

    def test_no_file_means_no_menus_until_it_appears(self):
        import os
        import shutil
        import tempfile

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "ivr.conf")
        ivr = IVRService(lifecycle=None, dialing=DialingConfig(), path=path)
        self.assertEqual(len(ivr.menus), 0)
        with self.assertRaises(InvalidInput):
            ivr.check_menu("main")
        with open(path, "w") as f:
            f.write("[main]\nprompt = ivr-main\n1 = hangup\n")
        self.assertEqual(ivr.check_menu("main"), "main")
