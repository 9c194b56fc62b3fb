"""AMIService against the sandbox Asterisk 22 and SIPp phones: login and state,
channel tracking, Originate outcomes, surviving a PBX restart and logging in
while the PBX is still booting."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest_twisted
from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher

from agi_app.ami import AMIDisconnected, AMIMessage, AMIService, OriginateReason
from agi_app.sandbox.phones import answer, busy, no_answer

OPERATORS = [f"PJSIP/{n}" for n in range(1000, 1010)]


def _reactor():
    from twisted.internet import reactor

    return reactor


def next_event(ami: AMIService, name: str, match: Callable[[AMIMessage], bool] = lambda e: True,
               timeout: float = 5.0) -> defer.Deferred:
    """A Deferred for the next event ``name`` that satisfies ``match``."""
    d: defer.Deferred = defer.Deferred()

    def seen(event: AMIMessage) -> None:
        if not d.called and match(event):
            d.callback(event)

    unsubscribe = ami.subscribe(seen, name)

    def done(result: object) -> object:
        unsubscribe()
        return result

    return d.addTimeout(timeout, _reactor()).addBoth(done)


class EventLog:
    """One subscriber to every event: what it got, and Deferreds fired by that
    same subscriber.  (A Deferred fired by another subscriber resumes the
    test while this one may not have been called yet for that event.)"""

    def __init__(self, ami: AMIService):
        self.events: list[AMIMessage] = []
        self._waiting: list[tuple[Callable[[AMIMessage], bool], defer.Deferred]] = []
        ami.subscribe(self._got)

    def _got(self, event: AMIMessage) -> None:
        self.events.append(event)
        for entry in list(self._waiting):
            match, d = entry
            if match(event):
                self._waiting.remove(entry)
                d.callback(event)

    def next(self, match: Callable[[AMIMessage], bool], timeout: float = 5.0) -> defer.Deferred:
        """A Deferred for the next event this subscriber gets that satisfies ``match``."""
        entry: tuple = ()

        def forget(_d: defer.Deferred) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)

        d: defer.Deferred = defer.Deferred(forget)
        entry = (match, d)
        self._waiting.append(entry)
        return d.addTimeout(timeout, _reactor())


class BootWaits:
    """Counts the times service ``name`` logged that Asterisk was still
    loading its modules (its login came before the PBX was up)."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0

    def __call__(self, event: dict) -> None:
        if event.get("ami") == self.name and "still loading" in (event.get("log_format") or ""):
            self.count += 1

    def __enter__(self) -> BootWaits:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self)


@pytest_twisted.async_yield_fixture
async def ami(sandbox):
    """An AMIService logged in to the sandbox PBX (short keep-alive for the test)."""
    service = AMIService(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_username, sandbox.ami_secret,
        reactor=_reactor(), ping_interval=2.0, action_timeout=3.0, max_backoff=2.0,
        name="e2e",
    )
    service.startService()
    try:
        await service.when_connected().addTimeout(10, _reactor())
        yield service
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_login_resync_and_device_states(sandbox, ami):
    assert ami.connected
    assert ami.greeting.startswith("Asterisk Call Manager/")
    assert set(OPERATORS) <= set(ami.device_states)
    assert ami.channels == {}
    # An operator phone registers: its device state follows from events.
    online = next_event(ami, "DeviceStateChange",
                        lambda e: e["Device"] == "PJSIP/1000" and e["State"] == "NOT_INUSE")
    await threads.deferToThread(sandbox.phones.start, "1000", answer())
    await online
    assert ami.device_states["PJSIP/1000"] == "NOT_INUSE"
    assert ami.device_states["PJSIP/1002"] == "UNAVAILABLE"
    pong = await ami.action("Ping")
    assert pong["Ping"] == "Pong"


@pytest_twisted.ensureDeferred
async def test_channel_tracked_with_call_id_until_hangup(sandbox, ami):
    await threads.deferToThread(sandbox.phones.start, "1000", answer())
    hangup = next_event(ami, "Hangup", lambda e: e["Uniqueid"] == "c-e2e-1-op", timeout=10)
    result = await ami.originate(
        "PJSIP/1000", context="sandbox-test", exten="talk", priority=1,
        timeout_ms=5000, channel_id="c-e2e-1-op",
        variables={"__AGI_APP_CALL_ID": "c-e2e-1", "SANDBOX_TALK": "1"},
    )
    assert result.success, result
    assert (result.reason, result.uniqueid) == (OriginateReason.ANSWERED, "c-e2e-1-op")
    channel = ami.channels["c-e2e-1-op"]
    assert channel["Channel"].startswith("PJSIP/1000-")
    # manager.conf channelvars = AGI_APP_CALL_ID: every channel event carries it
    assert channel.variables["AGI_APP_CALL_ID"] == "c-e2e-1"
    assert ami.device_states["PJSIP/1000"] in ("INUSE", "RINGING", "RINGINUSE")
    event = await hangup
    assert event.variables["AGI_APP_CALL_ID"] == "c-e2e-1"
    assert "c-e2e-1-op" not in ami.channels


@pytest_twisted.ensureDeferred
async def test_originate_to_busy_phone_is_reason_5(sandbox, ami):
    phone = await threads.deferToThread(sandbox.phones.start, "1001", busy())
    result = await ami.originate("PJSIP/1001", context="sandbox-test", exten="hello",
                                 priority=1, timeout_ms=5000)
    assert not result.success
    assert result.reason == OriginateReason.BUSY
    assert (result.cause, result.cause_text) == (17, "User busy")
    call = await phone.wait_for_hangup(timeout=5)
    assert (call["end"], call["code"]) == ("rejected", 486)


@pytest_twisted.ensureDeferred
async def test_originate_to_offline_phone_is_reason_0_at_once(sandbox, ami):
    await threads.deferToThread(sandbox.phones.offline, "1002")
    started = time.monotonic()
    result = await ami.originate("PJSIP/1002", context="sandbox-test", exten="hello",
                                 priority=1, timeout_ms=5000)
    elapsed = time.monotonic() - started
    assert not result.success
    assert result.reason == OriginateReason.OTHER
    assert result.cause is None  # no channel was ever created
    assert elapsed < 1.0, elapsed
    assert ami.channels == {}


@pytest_twisted.ensureDeferred
async def test_survives_pbx_restart(sandbox, ami):
    log = EventLog(ami)
    connects, disconnects = [], []
    ami.on_connect(lambda svc: connects.append(set(svc.device_states)))
    ami.on_disconnect(lambda svc: disconnects.append(time.monotonic()))
    await threads.deferToThread(sandbox.phones.start, "1003", no_answer())
    ringing = next_event(ami, "Newstate", lambda e: e["Uniqueid"] == "c-e2e-2-op"
                         and e["ChannelStateDesc"] == "Ringing")
    pending = ami.originate("PJSIP/1003", context="sandbox-test", exten="hello", priority=1,
                            timeout_ms=20000, channel_id="c-e2e-2-op")
    await ringing
    assert "c-e2e-2-op" in ami.channels

    stopped_at = time.monotonic()
    with BootWaits("e2e") as waits:
        await threads.deferToThread(sandbox.restart)
        # The call in flight ends with the link: either Asterisk reported it as it
        # hung it up on its way down, or the Deferred failed with the connection.
        try:
            outcome = await pending
        except AMIDisconnected:
            outcome = None
        assert outcome is None or not outcome.success, outcome
        assert len(disconnects) == 1
        await ami.when_connected().addTimeout(10, _reactor())
    reconnect_seconds = time.monotonic() - stopped_at
    assert len(connects) == 1
    assert ami.connected
    # State comes from the new PBX, complete by the time on_connect runs,
    # even when the login came while Asterisk was still loading its modules.
    assert set(OPERATORS) <= connects[0]
    assert set(OPERATORS) <= set(ami.device_states)
    assert ami.channels == {}
    # Nothing was sent again: no channel with our id on the new PBX.
    assert [c for c in sandbox.channels() if c.get("uniqueid") == "c-e2e-2-op"] == []
    assert not any(e.get("Uniqueid") == "c-e2e-2-op" for e in log.events
                   if e.event == "OriginateResponse" and e is not getattr(outcome, "event", None))

    # The subscriber made before the restart gets the new session's events.
    online = log.next(lambda e: e.event == "DeviceStateChange"
                      and e["Device"] == "PJSIP/1000" and e["State"] == "NOT_INUSE")
    await threads.deferToThread(sandbox.phones.start, "1000", answer())
    await online
    assert ami.device_states["PJSIP/1000"] == "NOT_INUSE"
    print(f"AMI session back {reconnect_seconds:.2f} s after the restart began; "
          f"DeviceStateList listed again {waits.count} time(s) while Asterisk booted")


@pytest_twisted.ensureDeferred
async def test_login_while_pbx_boots_is_connected_with_every_device_state(sandbox):
    """Asterisk opens its manager port before it loads its modules: a client
    retrying every 50 ms logs in while DeviceStateList is still unknown."""
    await threads.deferToThread(sandbox.stop)
    service = AMIService(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_username, sandbox.ami_secret,
        reactor=_reactor(), ping_interval=2.0, action_timeout=3.0, max_backoff=0.05,
        name="e2e-boot",
    )
    at_connect: list[dict[str, str]] = []
    service.on_connect(lambda svc: at_connect.append(dict(svc.device_states)))
    with BootWaits("e2e-boot") as waits:
        service.startService()
        try:
            booting = threads.deferToThread(sandbox.start)
            await service.when_connected().addTimeout(30, _reactor())
            assert len(at_connect) == 1
            assert set(OPERATORS) <= set(at_connect[0])
            assert at_connect[0]["PJSIP/1000"] == "UNAVAILABLE"
            await booting
            # The first operator to register comes as an event on top of the snapshot.
            online = next_event(service, "DeviceStateChange", lambda e: e["Device"] == "PJSIP/1000"
                                and e["State"] == "NOT_INUSE")
            await threads.deferToThread(sandbox.phones.start, "1000", answer())
            await online
            assert service.device_states["PJSIP/1000"] == "NOT_INUSE"
        finally:
            await service.stopService()
    print(f"login during boot: DeviceStateList listed again {waits.count} time(s)")
