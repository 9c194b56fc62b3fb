"""AMIService logging in while Asterisk is still loading its modules.

Asterisk 22 opens its manager port before it loads modules: a login is
accepted a few hundred milliseconds before ``FullyBooted``, no FullyBooted
follows that login, and ``DeviceStateList`` is an unknown command until
res_manager_devicestate is loaded (whose DeviceStateChange events start only
then).  FakeAMIServer(booted=False) plays that PBX."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from agi_app.ami import AMIDisconnected, AMIMessage, AMIService
from agi_app.ami.testing import FakeAMIServer

USER, SECRET = "agi_app", "s3cret"
STATES = {"PJSIP/101": "NOT_INUSE", "PJSIP/102": "UNAVAILABLE"}
UNKNOWN = ("Invalid/unknown command: DeviceStateList. Use Action: ListCommands to show "
           "available commands.")


class BootTestCase(SynchronousTestCase):
    """A service started against a PBX that is still booting."""

    booted = False
    system_events = True

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pbx = FakeAMIServer(users={USER: SECRET}, clock=self.reactor, booted=self.booted,
                                 system_events=self.system_events)
        self.pbx.device_states.update(STATES)
        self.connects: list[dict[str, str]] = []
        self.events: list[AMIMessage] = []

    def start(self, **kw) -> AMIService:
        self.svc = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor, **kw)
        # What a consumer such as the operator tracker reads when told of a login.
        self.svc.on_connect(lambda svc: self.connects.append(dict(svc.device_states)))
        self.svc.subscribe(self.events.append)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.link = self.pbx.accept(self.reactor)
        return self.svc

    def list_attempts(self) -> int:
        return len(self.pbx.actions_named("DeviceStateList"))

    def pending_timers(self) -> list[float]:
        now = self.reactor.seconds()
        return sorted(c.getTime() - now for c in self.reactor.getDelayedCalls() if c.active())


class FakeBootTests(BootTestCase):
    """The fake behaves as Asterisk 22 did on the sandbox."""

    def test_booting_fake_accepts_login_without_fullybooted_and_knows_no_module_actions(self):
        self.start()
        peer = self.pbx.peers[0]
        self.assertTrue(peer.authenticated)
        self.assertEqual([e.event for e in self.events], [])
        self.pbx.boot()
        self.assertEqual([e.event for e in self.events], ["FullyBooted"])
        self.assertEqual(self.pbx.unloaded, set())

    def test_login_to_a_booted_fake_is_followed_by_fullybooted_for_system_readers_only(self):
        for system_events, expected in ((True, ["FullyBooted"]), (False, [])):
            pbx = FakeAMIServer(users={USER: SECRET}, clock=self.reactor,
                                system_events=system_events)
            svc = AMIService("127.0.0.1", 5038, USER, SECRET, reactor=self.reactor)
            seen: list[str] = []
            svc.subscribe(lambda e, seen=seen: seen.append(e.event))
            svc.startService()
            pbx.accept(self.reactor)
            self.assertEqual(seen, expected)
            svc.stopService()


class EarlyLoginTests(BootTestCase):
    def test_login_while_loading_waits_for_the_device_state_snapshot(self):
        waiting = self.start().when_connected()
        # Logged in, but DeviceStateList is unknown yet: not connected.
        self.assertEqual(self.list_attempts(), 1)
        self.assertFalse(self.svc.connected)
        self.assertNoResult(waiting)
        self.assertEqual(self.connects, [])
        self.failureResultOf(self.svc.action("Ping"), AMIDisconnected)
        # Booting ends: the snapshot is taken at once, then the session is up.
        self.pbx.boot()
        self.assertEqual(self.list_attempts(), 2)
        self.assertTrue(self.svc.connected)
        self.assertIs(self.successResultOf(waiting), self.svc)
        self.assertEqual(self.connects, [STATES])
        self.assertEqual(self.svc.device_states, STATES)
        # FullyBooted came before the session was up: no second resync after it.
        self.reactor.advance(60)
        self.assertEqual(self.list_attempts(), 2)
        self.assertEqual(self.connects, [STATES])

    def test_fullybooted_during_the_first_snapshot_is_not_lost(self):
        # Asterisk finishes booting right after refusing DeviceStateList:
        # FullyBooted arrives while the rest of the first snapshot is taken.
        def refuse_then_boot(peer, action):
            del self.pbx.handlers["devicestatelist"]
            peer.error(action, UNKNOWN)
            self.pbx.boot()

        self.pbx.handlers["devicestatelist"] = refuse_then_boot
        self.start()
        self.assertEqual(self.list_attempts(), 2)
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.connects, [STATES])
        self.reactor.advance(60)
        self.assertEqual(self.svc.device_states, STATES)

    def test_list_that_succeeds_before_fullybooted_is_taken_again_after_it(self):
        # res_manager_devicestate loads (and forwards events) before boot ends.
        self.pbx.load("DeviceStateList")
        self.start()
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.connects, [STATES])
        self.pbx.device_states["PJSIP/103"] = "NOT_INUSE"
        self.pbx.contacts.append({"Uri": "sip:103@127.0.0.1:5071", "AOR": "103",
                                  "Endpoint": "103", "Status": "Reachable"})
        self.pbx.system_class = True
        self.pbx.boot()
        self.assertEqual(self.list_attempts(), 2)
        self.assertEqual(self.svc.device_states["PJSIP/103"], "NOT_INUSE")
        self.assertIn("sip:103@127.0.0.1:5071", self.svc.contacts)
        self.assertEqual(len(self.connects), 1)

    def test_events_reach_subscribers_while_waiting_and_the_snapshot_supersedes_older_ones(self):
        self.start()
        # Sent by Asterisk before it answered the list that follows: older.
        self.pbx.emit("DeviceStateChange", Device="PJSIP/101", State="INUSE")
        self.assertEqual([(e.event, e["State"]) for e in self.events],
                         [("DeviceStateChange", "INUSE")])
        self.pbx.boot()
        self.assertEqual(self.svc.device_states["PJSIP/101"], "NOT_INUSE")
        # After the list: newer, applied on top.
        self.pbx.emit("DeviceStateChange", Device="PJSIP/101", State="RINGING")
        self.assertEqual(self.svc.device_states["PJSIP/101"], "RINGING")
        self.assertEqual([e.event for e in self.events],
                         ["DeviceStateChange", "FullyBooted", "DeviceStateChange"])

    def test_link_lost_while_waiting_reconnects_and_waits_again(self):
        disconnects = []
        self.start().on_disconnect(disconnects.append)
        self.assertEqual(self.pending_timers(), [0.5])  # the next list
        self.link.drop()
        self.assertEqual(disconnects, [])  # it never was connected
        self.assertEqual(len(self.pending_timers()), 1)  # only the reconnect
        self.reactor.advance(self.pending_timers()[0])
        self.pbx.accept(self.reactor)
        self.assertFalse(self.svc.connected)
        self.pbx.boot()
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.connects, [STATES])

    def test_stop_while_waiting_fails_when_connected_and_leaves_no_timer(self):
        waiting = self.start().when_connected()
        self.svc.stopService()
        self.failureResultOf(waiting, AMIDisconnected)
        self.reactor.advance(60)
        self.assertEqual(self.pending_timers(), [])
        self.assertEqual(self.list_attempts(), 1)


class NoSystemClassTests(BootTestCase):
    """A user without the system read class never gets FullyBooted: the
    refused list is taken again with backoff."""

    system_events = False

    def test_refused_list_retried_with_backoff_until_answered(self):
        self.start()
        delays = []
        for _ in range(3):
            delays.append(self.pending_timers()[0])
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1.0, 2.0])
        self.assertEqual(self.list_attempts(), 4)
        self.assertFalse(self.svc.connected)
        self.pbx.load("DeviceStateList")
        self.reactor.advance(self.pending_timers()[0])
        self.assertEqual(self.list_attempts(), 5)
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.connects, [STATES])

    def test_gives_up_after_boot_timeout(self):
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.start(boot_timeout=5.0)
        self.reactor.pump([0.5] * 9)
        self.assertFalse(self.svc.connected)
        self.reactor.pump([0.5])
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.connects, [{}])
        self.assertEqual(self.list_attempts(), 5)  # at 0, 0.5, 1.5, 3.5 and 5 s
        warnings = [e for e in logged if e.get("log_level") is not None
                    and e["log_level"].name == "warn" and "DeviceStateList" in e["log_format"]]
        self.assertEqual(len(warnings), 1)


class BootedPBXTests(BootTestCase):
    booted = True

    def test_booted_pbx_refusing_the_list_is_not_waited_for(self):
        # FullyBooted after Login says Asterisk is up: a refusal is final.
        self.pbx.handlers["devicestatelist"] = lambda peer, action: peer.error(
            action, "Permission denied")
        self.start()
        self.assertTrue(self.svc.connected)
        self.assertEqual(self.svc.device_states, {})
        self.assertEqual(self.list_attempts(), 1)

    def test_refused_list_in_a_later_resync_keeps_the_states(self):
        self.start()
        self.assertEqual(self.svc.device_states, STATES)
        self.pbx.handlers["devicestatelist"] = lambda peer, action: peer.error(action, "Busy")
        self.pbx.emit("FullyBooted", Status="Fully Booted")
        self.assertEqual(self.list_attempts(), 2)
        self.assertEqual(self.svc.device_states, STATES)
