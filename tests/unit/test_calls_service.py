"""CallService: the operator-first call flow against the in-memory AMI server,
a FastAGI session driven line by line as Asterisk would, and the real
SQLite store.

The store runs its writes on its own thread under the real reactor; the AMI
link, the FastAGI protocol and the service's timers run on a
MemoryReactorClock that the tests advance.  :meth:`Harness.until` waits for
a condition by round trips through the store's single worker (no sleeps)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from agi_app.agi import FastAGIFactory, ScriptRegistry
from agi_app.ami.service import AMIService
from agi_app.ami.testing import FakeAMIServer, OriginateOutcome
from agi_app.calls.lifecycle import CALL_ID_VAR, Lifecycle
from agi_app.calls.service import CallRequest, CallService
from agi_app.config import DialingConfig
from agi_app.errors import PBXUnavailable
from agi_app.store import ExternalKeyConflict, iso_time
from agi_app.store.testing import MemoryStore

T0 = 1795640677.0  # 2026-11-25T21:04:37Z
HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
PICKED_UP = HAPPY[:3]
DIALLED = HAPPY[:4]
CONNECTED = HAPPY[:5]


def request(**over) -> CallRequest:
    fields = dict(
        kind="makeCall",
        first="1000",
        phone="380639920000",
        trunk="pstn",
        order_id="order-15",
        external_key=None,
        call_time_to_ext=30,
    )
    fields.update(over)
    return CallRequest(**fields)


class Harness:
    """A CallService wired to a fake PBX; :meth:`restart` replaces everything
    but the store, as a new process would."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        self.store = MemoryStore(self.clock)
        self.dialing = DialingConfig(
            recordings_dir=str(tmp_path / "monitor"), pbx_recordings_dir="/pbx/monitor"
        )
        self._ids = itertools.count(1)
        self._build()

    def _build(self) -> None:
        self.pbx = FakeAMIServer(users={"agi_app": "secret"}, clock=self.clock)
        self.pbx.device_states = {f"PJSIP/{n}": "NOT_INUSE" for n in ("1000", "1001")}
        self.ami = AMIService(
            "127.0.0.1", 5038, "agi_app", "secret", reactor=self.clock, ping_interval=3600
        )
        self.lifecycle = Lifecycle(
            store=self.store,
            ami=self.ami,
            dialing=self.dialing,
            clock=self.clock,
            new_id=lambda: f"call{next(self._ids)}",
        )
        self.lifecycle.start()
        self.calls = CallService(lifecycle=self.lifecycle, dialing=self.dialing)
        registry = ScriptRegistry()
        self.calls.register_scripts(registry)
        self.agi = FastAGIFactory(registry, self.clock, command_timeout=30)
        self.link = None

    async def connect(self) -> None:
        """Start the AMI service and let the fake PBX accept it (login, resync,
        and the reconcile() that follows every login)."""
        if not self.ami.running:
            self.ami.startService()
        self.link = self.pbx.accept(self.clock)
        assert self.ami.connected
        await self.barrier()

    def drop(self) -> None:
        """The AMI link breaks (the client notices at once)."""
        self.link.drop()
        assert not self.ami.connected

    async def reconnect(self) -> None:
        self.clock.advance(1)  # the reconnect backoff
        await self.connect()

    async def restart(self, live: dict[str, tuple[str, str, str]], connect: bool = True) -> None:
        """A new process on the same store (the old one simply vanished),
        with a PBX that has the ``live`` channels: Uniqueid -> (channel,
        call id, state)."""
        self.lifecycle.stop()
        self.link.drop()
        await self.ami.stopService()
        self._build()
        for uniqueid, (name, call_id, state) in live.items():
            self.pbx.add_channel(
                name, uniqueid=uniqueid, state=state, variables={CALL_ID_VAR: call_id}
            )
        if connect:
            await self.connect()

    def close(self) -> None:
        if self.ami.running:
            pytest_twisted.blockon(defer.maybeDeferred(self.ami.stopService))
        pytest_twisted.blockon(self.store.close())

    # -- waiting without sleeping -------------------------------------------

    async def barrier(self) -> None:
        """One round trip through the store's single worker thread: every write
        queued before it, and the callbacks of those writes, have run."""
        await self.store.get_call("-")

    async def until(self, predicate, what: str, rounds: int = 200):
        for _ in range(rounds):
            value = predicate()
            if value:
                return value
            await self.barrier()
        raise AssertionError(f"never happened: {what}")

    async def history(self, call_id: str) -> list[str]:
        return [e["status"] for e in await self.store.statuses(call_id)]

    async def entries(self, call_id: str) -> list[dict]:
        return await self.store.statuses(call_id)

    async def final(self, call_id: str, rounds: int = 200) -> list[str]:
        """The call's statuses once it has its final status."""
        for _ in range(rounds):
            call = await self.store.get_call(call_id)
            if call["final_status"]:
                return await self.history(call_id)
        raise AssertionError(f"{call_id} never ended: {await self.history(call_id)}")

    async def reached(self, call_id: str, status: str) -> None:
        for _ in range(200):
            if status in await self.history(call_id):
                return
        raise AssertionError(f"{call_id}: no {status}: {await self.history(call_id)}")

    # -- the PBX side -----------------------------------------------------------

    def channel_up(self, call_id: str, name: str, uniqueid: str, state: str = "Up") -> list:
        """A channel of the call appears (listed by CoreShowChannels, events
        carrying ChanVariable: AGI_APP_CALL_ID=...)."""
        pairs = self.pbx.add_channel(
            name, uniqueid=uniqueid, state=state, variables={CALL_ID_VAR: call_id}
        )
        self.pbx.emit("Newstate", pairs)
        return pairs

    def channel_down(self, pairs: list, cause: int = 16) -> None:
        self.pbx.channels.pop(dict(pairs)["Uniqueid"], None)
        self.pbx.emit("Hangup", pairs + [("Cause", str(cause)), ("Cause-txt", "")])

    def client_answered(self, operator: list) -> None:
        """The DialEnd of the client leg, as seen on the operator's channel."""
        self.pbx.emit(
            "DialEnd",
            operator + [("DestChannel", "PJSIP/pstn-00000002"), ("DialStatus", "ANSWER")],
        )

    def session(self, call_id: str, uniqueid: str = "1700000000.1") -> AsteriskAGI:
        return AsteriskAGI(self, call_id, uniqueid)

    async def place(self, **over) -> str:
        call_id, created = await self.calls.place(request(**over))
        assert created
        return call_id


class AsteriskAGI:
    """Asterisk's end of one FastAGI connection running ``operator_call``."""

    def __init__(self, h: Harness, call_id: str, uniqueid: str):
        self.h = h
        self.transport = StringTransport()
        self.proto = h.agi.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        env = {
            "agi_network": "yes",
            "agi_network_script": "operator_call",
            "agi_request": "agi://127.0.0.1:4573/operator_call",
            "agi_channel": "PJSIP/1000-00000001",
            "agi_language": "en",
            "agi_type": "PJSIP",
            "agi_uniqueid": uniqueid,
            "agi_version": "22.10.1",
            "agi_callerid": "380639920000",
            "agi_calleridname": "380639920000",
            "agi_context": "agi-app-operator",
            "agi_extension": "s",
            "agi_priority": "3",
            "agi_enhanced": "0.0",
            "agi_accountcode": "",
            "agi_threadid": "140000000000001",
            "agi_arg_1": call_id,
        }
        block = "".join(f"{k}: {v}\n" for k, v in env.items()) + "\n"
        self.proto.dataReceived(block.encode())

    async def command(self) -> str:
        """The next command line the script sends."""
        await self.h.until(lambda: self.transport.value().endswith(b"\n"), "a FastAGI command")
        line = self.transport.value().decode()
        self.transport.clear()
        assert line.count("\n") == 1, f"more than one command in flight: {line!r}"
        return line[:-1]

    async def expect(self, prefix: str, reply: str = "200 result=0") -> str:
        line = await self.command()
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        if reply:
            self.send(reply)
        return line

    def send(self, line: str) -> None:
        self.proto.dataReceived(f"{line}\n".encode())

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionLost()))

    async def up_to_dial(self, playback: bool = True) -> str:
        """Answer the script's commands up to the Dial of the client; returns
        the Dial line (not answered yet)."""
        if playback:
            await self.expect('EXEC Playback "agi_app/please-wait"')
        await self.expect("EXEC MixMonitor")
        await self.expect('SET VARIABLE "CALLERID(all)"', "200 result=1")
        await self.expect('SET VARIABLE "AGI_APP_DIALLED" "1"', "200 result=1")
        return await self.expect("EXEC Dial", reply="")

    async def after_dial(self, dialstatus: str) -> None:
        """Dial returned with ``dialstatus``.  Nothing more is asked: Dial's
        ANSWEREDTIME is the operator leg's time up, not the talk time."""
        self.send("200 result=0")
        await self.expect('GET VARIABLE "DIALSTATUS"', f"200 result=1 ({dialstatus})")
        await self.expect('GET VARIABLE "AGI_APP_HANDOFF"', "200 result=0")
        await self.finished("OK")

    async def finished(self, outcome: str = "OK") -> None:
        """One result line (the script's own, or the server's when the script
        returns: never both, a round trip each), then the close."""
        seen = []
        while not self.transport.disconnecting:
            line = await self.command()
            seen.append(line)
            assert line.startswith('SET VARIABLE "AGI_APP_RESULT"'), seen
            self.send("200 result=1")
        assert seen == [f'SET VARIABLE "AGI_APP_RESULT" "{outcome}"'], seen


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


# -- the happy path -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_connected_call_is_logged_in_order(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome.answered(delay=2)
    call_id = await h.place(caller_id_for_employee="Order 15", limit_call_time=60)
    [originate] = h.pbx.actions_named("Originate")
    assert originate["Channel"] == "PJSIP/1000"
    assert originate["Context"] == "agi-app-operator"
    assert originate["Timeout"] == "30000"
    assert originate["CallerID"] == '"Order 15" <380639920000>'
    # the call id, and what the dialplan needs to connect the client by itself
    assert originate.getall("Variable") == [
        f"__{CALL_ID_VAR}={call_id}",
        "AGI_APP_CLIENT=PJSIP/380639920000@pstn",
        "AGI_APP_CLIENT_RING=40",
        "AGI_APP_WAIT=1",
        "AGI_APP_SHOWN=1000",
        f"AGI_APP_RECORDING=/pbx/monitor/order-15_{call_id}.wav",
        "AGI_APP_LIMIT_MS=60000",
    ]
    assert await h.history(call_id) == ["CALL", "OPERATOR_CALLTO"]
    h.clock.advance(2)  # the operator answers
    await h.reached(call_id, "OPERATOR_PICKUP")
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    agi = h.session(call_id)
    dial = await agi.up_to_dial()
    assert dial == 'EXEC Dial "PJSIP/380639920000@pstn,40,gL(60000)"'
    assert await h.history(call_id) == DIALLED
    h.clock.advance(3)
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    h.clock.advance(12)
    await agi.after_dial("ANSWER")
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == HAPPY
    assert entries[4]["time"] == iso_time(T0 + 5)  # when DialEnd came
    assert entries[5]["detail"] == "talk 12 s"
    call = await h.store.get_call(call_id)
    assert call["final_status"] == "FINISH" and call["talk_seconds"] == pytest.approx(12)
    # MixMonitor got the PBX's path; the store has the same file as seen here.
    [calls] = await h.store.order_calls("order-15")
    [record] = calls["records"]
    assert record["path"] == str(h.tmp_path / "monitor" / f"order-15_{call_id}.wav")


@pytest_twisted.ensureDeferred
async def test_without_the_announcement_the_client_is_dialled_at_once(h):
    await h.connect()
    call_id = await h.place(playback_waiting=False)
    agi = h.session(call_id)
    await agi.up_to_dial(playback=False)
    await agi.after_dial("ANSWER")
    assert await h.history(call_id) == HAPPY


@pytest_twisted.ensureDeferred
async def test_ext_to_phone_waiters_hear_of_the_pickup(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome.answered(delay=1)
    call_id = await h.place()
    outcome = h.calls.operator_outcome(call_id)
    assert not outcome.called
    h.clock.advance(1)
    assert await outcome == "OPERATOR_PICKUP"


# -- the operator leg: Originate outcomes -------------------------------------


@pytest.mark.parametrize(
    "outcome,device,status",
    [
        (OriginateOutcome.busy(), "NOT_INUSE", "OPERATOR_BUSY"),
        (OriginateOutcome.declined(), "NOT_INUSE", "OPERATOR_BUSY"),
        (OriginateOutcome.no_answer(delay=30), "NOT_INUSE", "OPERATOR_NOANSWER"),
        (OriginateOutcome.offline(), "UNKNOWN", "OPERATOR_OFFLINE"),
        (OriginateOutcome.offline(), "NOT_INUSE", "ERROR"),
        (OriginateOutcome(error="Extension does not exist."), "NOT_INUSE", "ERROR"),
    ],
    ids=["busy", "declined", "no-answer", "offline", "other", "refused"],
)
@pytest_twisted.ensureDeferred
async def test_each_originate_outcome_gives_its_status(h, outcome, device, status):
    h.pbx.device_states["PJSIP/1000"] = device
    h.pbx.default_outcome = outcome
    await h.connect()
    call_id = await h.place()
    h.clock.advance(30)
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == ["CALL", "OPERATOR_CALLTO", status]
    if outcome.error is not None:
        assert "Extension does not exist" in entries[-1]["detail"]


@pytest.mark.parametrize(
    "device,status", [("UNAVAILABLE", "OPERATOR_OFFLINE"), ("INVALID", "ERROR")]
)
@pytest_twisted.ensureDeferred
async def test_an_unregistered_or_unknown_operator_is_not_rung(h, device, status):
    h.pbx.device_states["PJSIP/1000"] = device
    await h.connect()
    call_id = await h.place()
    assert await h.final(call_id) == ["CALL", status]
    assert h.pbx.actions_named("Originate") == []


@pytest_twisted.ensureDeferred
async def test_pbx_down_logs_call_then_error_and_raises(h):
    with pytest.raises(PBXUnavailable) as raised:
        await h.calls.place(request(order_id="down"))
    call_id = raised.value.call_id
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == ["CALL", "ERROR"]
    assert "AMI" in entries[-1]["detail"]
    assert h.pbx.actions_named("Originate") == []


@pytest_twisted.ensureDeferred
async def test_a_retry_after_the_pbx_was_down_is_never_answered_as_placed(h):
    """The first request found the AMI link down (503, CALL then ERROR).  A
    retry with the same external_key must not answer 200 with the id of a
    call that was never placed: it is the same 503 with the same call id,
    also once the PBX is back (a new external_key places a new call)."""
    with pytest.raises(PBXUnavailable) as first:
        await h.calls.place(request(external_key="k-down"))
    await h.connect()
    with pytest.raises(PBXUnavailable) as again:
        await h.calls.place(request(external_key="k-down"))
    assert again.value.call_id == first.value.call_id
    assert again.value.body()["call_id"] == first.value.call_id
    assert h.pbx.actions_named("Originate") == []
    assert await h.history(first.value.call_id) == ["CALL", "ERROR"]
    call_id, created = await h.calls.place(request(external_key="k-up"))
    assert created and call_id != first.value.call_id
    assert len(h.pbx.actions_named("Originate")) == 1


@pytest_twisted.ensureDeferred
async def test_the_same_external_key_places_one_call(h):
    await h.connect()
    first, created = await h.calls.place(request(external_key="k1"))
    again, created_again = await h.calls.place(request(external_key="k1"))
    assert created and not created_again and first == again
    with pytest.raises(ExternalKeyConflict) as conflict:
        await h.calls.place(request(external_key="k1", phone="380639920001"))
    assert conflict.value.call_id == first
    assert len(h.pbx.actions_named("Originate")) == 1
    assert await h.history(first) == PICKED_UP  # the fake answers at once


# -- the client leg: DIALSTATUS -----------------------------------------------


@pytest.mark.parametrize(
    "dialstatus,status",
    [
        ("BUSY", "CLIENT_BUSY"),
        ("NOANSWER", "CLIENT_NOANSWER"),
        ("CANCEL", "CLIENT_CANCEL"),
        ("CHANUNAVAIL", "ERROR"),
        ("CONGESTION", "ERROR"),
        ("", "ERROR"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_dialstatus_gives_the_client_status(h, dialstatus, status):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    if dialstatus:
        await agi.after_dial(dialstatus)
    else:  # DIALSTATUS unset
        agi.send("200 result=0")
        await agi.expect('GET VARIABLE "DIALSTATUS"', "200 result=0")
        await agi.expect('GET VARIABLE "AGI_APP_HANDOFF"', "200 result=0")
        await agi.finished()
    assert await h.final(call_id) == [*DIALLED, status]


# -- hangups and lost FastAGI connections -------------------------------------


@pytest_twisted.ensureDeferred
async def test_operator_hangs_up_during_the_announcement(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.expect('EXEC Playback "agi_app/please-wait"', reply="")
    agi.send("HANGUP")
    agi.send("200 result=-1")
    await agi.finished()
    assert await h.final(call_id) == [*PICKED_UP, "CLIENT_CANCEL"]


@pytest_twisted.ensureDeferred
async def test_fastagi_lost_during_the_announcement(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.expect('EXEC Playback "agi_app/please-wait"', reply="")
    agi.lose()
    assert await h.final(call_id) == [*PICKED_UP, "CLIENT_CANCEL"]


@pytest_twisted.ensureDeferred
async def test_fastagi_lost_mid_dial_after_the_client_answered_is_finish(h):
    await h.connect()
    call_id = await h.place()
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    h.clock.advance(7)
    agi.lose()  # Asterisk went away
    assert await h.final(call_id) == HAPPY
    assert (await h.entries(call_id))[-1]["detail"] == "talk 7 s"


@pytest_twisted.ensureDeferred
async def test_fastagi_lost_while_the_client_rings_is_client_cancel(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    agi.lose()
    assert await h.final(call_id) == [*DIALLED, "CLIENT_CANCEL"]


@pytest_twisted.ensureDeferred
async def test_a_missing_dial_application_is_an_error(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    agi.send("200 result=-2")
    await agi.finished("ERROR")  # the dialplan then plays the error prompt
    assert await h.final(call_id) == [*DIALLED, "ERROR"]


@pytest_twisted.ensureDeferred
async def test_client_pickup_missed_while_ami_was_down_has_no_made_up_talk_time(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.drop()  # the DialEnd of the answer is lost with the link
    h.clock.advance(10)
    await agi.after_dial("ANSWER")
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == HAPPY
    # Dial's ANSWEREDTIME is the operator leg's time up: the moment the
    # client answered is not known, and no talk time is made up from it.
    assert entries[4]["time"] == entries[3]["time"] == iso_time(T0)
    assert entries[4]["detail"] == "answer time not seen"
    assert entries[5]["detail"] == "talk time unknown"
    assert (await h.store.get_call(call_id))["talk_seconds"] is None


@pytest_twisted.ensureDeferred
async def test_a_late_pickup_is_never_dated_before_the_client_was_dialled(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.drop()
    h.clock.advance(2)
    await agi.after_dial("ANSWER")  # more than the 2 s since CLIENT_CALLTO
    entries = await h.entries(call_id)
    assert entries[4]["time"] == entries[3]["time"] == iso_time(T0)


# -- duplicates and late events -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_duplicate_and_late_events_add_no_second_final_status(h):
    await h.connect()
    call_id = await h.place()
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    client = h.channel_up(call_id, "PJSIP/pstn-00000002", "1700000000.2")
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.client_answered(operator)
    h.client_answered(operator)  # repeated
    await h.reached(call_id, "CLIENT_PICKUP")
    # Both legs hang up while the FastAGI session still runs: its DIALSTATUS decides.
    h.channel_down(client)
    h.channel_down(operator)
    h.clock.advance(5)
    await agi.after_dial("ANSWER")
    assert await h.final(call_id) == HAPPY
    # Everything after the end is ignored.
    h.client_answered(operator)
    h.channel_down(operator, cause=17)
    h.clock.advance(10)
    assert await h.lifecycle.reconcile() == 0
    late = h.session(call_id)
    await late.finished("NOTFOUND")
    assert await h.history(call_id) == HAPPY


@pytest_twisted.ensureDeferred
async def test_a_second_fastagi_session_never_dials_the_client_again(h):
    await h.connect()
    call_id = await h.place()
    first = h.session(call_id)
    await first.up_to_dial()
    second = h.session(call_id, "1700000000.9")
    await second.finished("NOTFOUND")  # and nothing else: no Playback, no Dial
    await first.after_dial("NOANSWER")
    assert await h.final(call_id) == [*DIALLED, "CLIENT_NOANSWER"]


@pytest_twisted.ensureDeferred
async def test_a_hangup_while_the_originate_is_pending_waits_for_its_outcome(h):
    h.pbx.default_outcome = OriginateOutcome.busy(delay=1)
    h.pbx.default_outcome.hangup_first = True
    await h.connect()
    call_id = await h.place()
    h.clock.advance(1)  # Hangup (cause 17), then the OriginateResponse
    h.clock.advance(5)  # past the settle grace
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]


# -- the AMI link lost and reconcile() ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_ami_lost_while_ringing_then_the_leg_rings_out(h):
    """Originate in flight when the link drops: the outcome is unknown; after
    the reconnect the ringing channel is listed and followed, and its Hangup
    cause gives the final status."""
    h.pbx.default_outcome = OriginateOutcome(delay=None)  # never reports
    await h.connect()
    call_id = await h.place()
    h.drop()
    ringing = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1", state="Ringing")
    await h.reconnect()
    assert await h.lifecycle.reconcile() == 0
    h.channel_down(ringing, cause=19)
    h.clock.advance(3)
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_NOANSWER"]


@pytest_twisted.ensureDeferred
async def test_ami_lost_while_ringing_and_the_channel_gone_meanwhile(h):
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.connect()
    call_id = await h.place()
    h.drop()
    await h.reconnect()  # no channel of the call is listed: it ended unseen
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", "ERROR"]


@pytest_twisted.ensureDeferred
async def test_ami_lost_while_the_operator_answers_the_fastagi_session_carries_on(h):
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.connect()
    call_id = await h.place()
    h.drop()
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    await h.reconnect()
    assert await h.lifecycle.reconcile() == 0  # live channel and session: kept
    await agi.after_dial("ANSWER")
    assert await h.final(call_id) == HAPPY


@pytest_twisted.ensureDeferred
async def test_a_client_who_answered_while_the_link_was_down_is_logged_at_the_login(h):
    """The link drops while the client rings and the client answers unseen;
    the FastAGI session would tell only once Dial returns, at the end of the
    conversation.  The snapshot after the login shows the client's channel
    up: CLIENT_PICKUP (its moment not seen) and the recording are there at
    once, while the call goes on; FINISH still comes from the session."""
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    h.drop()
    h.clock.advance(4)
    h.pbx.add_channel("PJSIP/pstn-00000002", uniqueid="1700000000.2", state="Up",
                      variables={CALL_ID_VAR: call_id}, Application="AppDial")  # fmt: skip
    await h.reconnect()
    await h.reached(call_id, "CLIENT_PICKUP")
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == CONNECTED
    assert entries[4]["detail"] == "answer time not seen"
    assert entries[4]["time"] == entries[3]["time"]
    [call] = await h.store.order_calls("order-15")
    assert call["records"] and call["records"][0]["path"].endswith(f"order-15_{call_id}.wav")
    h.clock.advance(5)
    await agi.after_dial("ANSWER")
    assert await h.final(call_id) == HAPPY
    assert (await h.entries(call_id))[-1]["detail"] == "talk time unknown"


@pytest_twisted.ensureDeferred
async def test_a_client_still_ringing_at_the_login_is_not_taken_for_answered(h):
    await h.connect()
    call_id = await h.place()
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.drop()
    h.pbx.add_channel("PJSIP/pstn-00000002", uniqueid="1700000000.2", state="Ringing",
                      variables={CALL_ID_VAR: call_id}, Application="AppDial")  # fmt: skip
    await h.reconnect()
    await h.barrier()
    assert await h.history(call_id) == DIALLED
    await agi.after_dial("NOANSWER")
    assert await h.final(call_id) == [*DIALLED, "CLIENT_NOANSWER"]


@pytest_twisted.ensureDeferred
async def test_hangups_missed_while_the_link_was_down_do_not_keep_a_call_open(h):
    """The FastAGI session never came (AGISTATUS=FAILURE): the call is followed
    by its channels alone.  One of them ends while the link is down; after the
    login the channel set is the listed one, so the last Hangup settles it."""
    await h.connect()
    call_id = await h.place()  # the fake answers: OPERATOR_PICKUP
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    h.channel_up(call_id, "Local/x@y-00000001;2", "1700000000.2")
    h.drop()
    h.pbx.channels.pop("1700000000.2")  # hung up unseen
    await h.reconnect()
    assert await h.lifecycle.reconcile() == 0  # the operator's leg is still up
    h.channel_down(operator)
    h.clock.advance(3)
    assert await h.final(call_id) == [*PICKED_UP, "CLIENT_CANCEL"]


@pytest_twisted.ensureDeferred
async def test_an_originate_timeout_on_a_live_link_is_settled_by_the_channels(h):
    h.pbx.default_outcome = OriginateOutcome(delay=None)  # no OriginateResponse ever
    await h.connect()
    call_id = await h.place(call_time_to_ext=10)
    ringing = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1", state="Ringing")
    h.clock.advance(15 + 3)  # AMITimeout (10 s + margin), then the settle grace
    assert await h.history(call_id) == ["CALL", "OPERATOR_CALLTO"]  # still ringing
    h.channel_down(ringing, cause=19)
    h.clock.advance(3)
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_NOANSWER"]


@pytest_twisted.ensureDeferred
async def test_reconcile_leaves_a_call_being_placed_alone(h):
    h.pbx.default_outcome = OriginateOutcome.busy(delay=2)
    await h.connect()
    call_id = await h.place()
    # No channel carries the call id yet (Asterisk sets the variables after
    # Newchannel): reconcile must not take that for a call that ended.
    assert await h.lifecycle.reconcile() == 0
    h.clock.advance(2)
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]


# -- after a restart ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reconcile_after_restart_closes_orphans_and_follows_live_calls(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)  # every operator rings
    ringing = await h.place()
    ended_ringing = await h.place()
    connected = await h.place(first="1001")
    ended_connected = await h.place(first="1001")
    ended_dialling = await h.place(first="1001")
    for call_id in (connected, ended_connected, ended_dialling):
        agi = h.session(call_id)
        await agi.up_to_dial()
        if call_id != ended_dialling:
            operator = h.channel_up(call_id, "PJSIP/1001-00000001", f"{call_id}.op")
            h.client_answered(operator)
            await h.reached(call_id, "CLIENT_PICKUP")
    calls = (ringing, ended_ringing, connected, ended_connected, ended_dialling)
    before = {c: await h.entries(c) for c in calls}
    h.clock.advance(4)
    # The process dies.  On the PBX the first call still rings and one
    # connected call goes on; the others ended while nothing watched.
    await h.restart(
        {
            "r.op": ("PJSIP/1000-00000009", ringing, "Ringing"),
            "c.op": ("PJSIP/1001-0000000a", connected, "Up"),
            "c.cl": ("PJSIP/pstn-0000000b", connected, "Up"),
        }
    )
    # calls whose channels are gone get their final status at once...
    assert await h.final(ended_ringing) == ["CALL", "OPERATOR_CALLTO", "ERROR"]
    assert await h.final(ended_dialling) == [*DIALLED, "CLIENT_CANCEL"]
    assert await h.final(ended_connected) == HAPPY
    assert (await h.entries(ended_connected))[-1]["detail"] == "talk time unknown"
    # ...the live ones are followed until their channels hang up
    assert await h.history(ringing) == ["CALL", "OPERATOR_CALLTO"]
    assert await h.history(connected) == CONNECTED
    h.clock.advance(2)
    h.channel_down(h.pbx.channels["c.cl"])  # the client hangs up 6 s after the pickup...
    h.clock.advance(2)
    h.channel_down(h.pbx.channels["c.op"])  # ...the operator's leg 2 s later
    h.clock.advance(3)
    assert await h.final(connected) == HAPPY
    assert (await h.entries(connected))[-1]["detail"] == "talk 6 s"
    h.channel_down(h.pbx.channels["r.op"], cause=17)
    h.clock.advance(3)
    assert await h.final(ringing) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    # nothing logged before the restart was lost or changed
    for call_id in calls:
        after = await h.entries(call_id)
        assert after[: len(before[call_id])] == before[call_id]
        assert [e["id"] for e in after] == sorted(e["id"] for e in after)


@pytest_twisted.ensureDeferred
async def test_after_restart_the_operator_answering_is_served(h):
    """The operator answers just as the new process starts: its FastAGI
    session and reconcile() take the call up at the same moment and must
    share one view of it (the DialEnd event reaches the session's copy)."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place()
    await h.restart({"1.op": ("PJSIP/1000-00000001", call_id, "Up")}, connect=False)
    agi = h.session(call_id)
    await h.connect()  # reconcile() runs while the session loads the call
    await agi.up_to_dial()
    h.clock.advance(1)
    h.client_answered(h.pbx.channels["1.op"])
    await h.reached(call_id, "CLIENT_PICKUP")
    h.clock.advance(5)
    await agi.after_dial("ANSWER")  # no ANSWEREDTIME: the pickup time stands
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == HAPPY
    assert entries[4]["time"] == iso_time(T0 + 1)


@pytest_twisted.ensureDeferred
async def test_reconcile_closes_a_call_it_cannot_resume_once_its_channels_are_gone(h):
    for call_id in ("old1", "old2"):
        await h.store.create_call(
            call_id=call_id, kind="makeCall", sip="1000", phone="380639920000",
            order_id="o", external_key=None, params={"from_another_version": True},
        )  # fmt: skip
    h.pbx.add_channel("PJSIP/1000-00000001", variables={CALL_ID_VAR: "old2"})
    await h.connect()
    assert await h.final("old1") == ["CALL", "ERROR"]
    assert await h.lifecycle.reconcile() == 0
    assert await h.history("old2") == ["CALL"]  # something on the PBX still belongs to it


# -- a callback ringing several extensions together ---------------------------


def group_dial_answered(h: Harness, call_id: str) -> None:
    """A member answers the group's Dial (on the Local channel's ;2 half)."""
    pairs = h.channel_up(call_id, "Local/s@agi-app-group-00000001;2", "1.grp")
    h.pbx.emit(
        "DialEnd", pairs + [("DestChannel", "PJSIP/1001-00000003"), ("DialStatus", "ANSWER")]
    )


@pytest_twisted.ensureDeferred
async def test_a_group_rings_every_member_through_the_group_context(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome.answered(delay=2)
    call_id = await h.place(kind="callback", group=("1000", "1001"), playback_waiting=False)
    [originate] = h.pbx.actions_named("Originate")
    assert originate["Channel"] == "Local/s@agi-app-group/n"
    assert originate["Context"] == "agi-app-operator"
    variables = originate.getall("Variable")
    assert variables[0] == f"__{CALL_ID_VAR}={call_id}"
    assert variables[-2:] == ["AGI_APP_GROUP=PJSIP/1000&PJSIP/1001", "AGI_APP_RING=30"]
    # the group's Dial decides how long it rings; the Originate waits longer
    assert originate["Timeout"] == "35000"
    assert (await h.store.get_call(call_id))["sip"] == "1000"
    # 1001 answers the group: that is the operator picking up, not the client
    group_dial_answered(h, call_id)
    h.clock.advance(2)
    await h.reached(call_id, "OPERATOR_PICKUP")
    operator = h.channel_up(call_id, "Local/s@agi-app-group-00000001;1", "1.op")
    agi = h.session(call_id)
    await agi.expect("EXEC MixMonitor")
    # the client sees the first listed extension
    await agi.expect('SET VARIABLE "CALLERID(all)" "\\"\\" <1000>"', "200 result=1")
    await agi.expect('SET VARIABLE "AGI_APP_DIALLED" "1"', "200 result=1")
    await agi.expect('EXEC Dial "PJSIP/380639920000@pstn,40,g"', reply="")
    assert await h.history(call_id) == DIALLED
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    await agi.after_dial("ANSWER")
    assert await h.history(call_id) == HAPPY


@pytest_twisted.ensureDeferred
async def test_a_group_call_survives_the_store_round_trip(h):
    """After a restart the call's parameters (a JSON list) rebuild the group."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place(kind="callback", group=("1000", "1001"))
    await h.restart({"1.op": ("Local/s@agi-app-group-00000001;1", call_id, "Up")})
    active = await h.until(lambda: h.lifecycle.get(call_id), "the call adopted")
    assert active.request.group == ("1000", "1001") and active.request.is_group


@pytest.mark.parametrize(
    "states,status",
    [
        (("UNAVAILABLE", "NOT_INUSE"), None),
        (("UNAVAILABLE", "UNAVAILABLE"), "OPERATOR_OFFLINE"),
        (("UNAVAILABLE", "INVALID"), "OPERATOR_OFFLINE"),
        (("INVALID", "INVALID"), "ERROR"),
    ],
    ids=["one-online", "all-offline", "offline-and-unknown", "all-unknown"],
)
@pytest_twisted.ensureDeferred
async def test_a_group_is_refused_unrung_only_when_no_member_can_answer(h, states, status):
    h.pbx.device_states.update({"PJSIP/1000": states[0], "PJSIP/1001": states[1]})
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.connect()
    call_id = await h.place(kind="callback", group=("1000", "1001"))
    if status is None:
        assert await h.history(call_id) == ["CALL", "OPERATOR_CALLTO"]
        assert len(h.pbx.actions_named("Originate")) == 1
    else:
        assert await h.final(call_id) == ["CALL", status]
        assert h.pbx.actions_named("Originate") == []


@pytest.mark.parametrize(
    "cause,status", [(17, "OPERATOR_BUSY"), (19, "OPERATOR_NOANSWER"), (16, "ERROR")]
)
@pytest_twisted.ensureDeferred
async def test_the_group_hangup_cause_gives_the_operator_status(h, cause, status):
    # the group context hangs up with 17 when every member was busy, else 19
    h.pbx.default_outcome = OriginateOutcome(reason=0, cause=cause, delay=3)
    await h.connect()
    call_id = await h.place(kind="callback", group=("1000", "1001"))
    h.clock.advance(3)
    assert await h.final(call_id) == ["CALL", "OPERATOR_CALLTO", status]


# -- recordings: stored only once the client answered -------------------------


@pytest_twisted.ensureDeferred
async def test_the_recording_is_stored_when_the_client_answers_dated_from_its_start(h):
    await h.connect()
    call_id = await h.place(playback_waiting=False)
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    agi = h.session(call_id)
    h.clock.advance(1)
    await agi.up_to_dial(playback=False)  # MixMonitor started at T0 + 1
    h.clock.advance(4)
    [call] = await h.store.order_calls("order-15")
    assert call["records"] == []  # nothing recorded yet: not stored
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    await h.until(lambda: h.lifecycle.get(call_id).recording.record_id, "the recording stored")
    [call] = await h.store.order_calls("order-15")
    [record] = call["records"]
    assert record["created_at"] == iso_time(T0 + 1)
    await agi.after_dial("ANSWER")


@pytest.mark.parametrize("size,kept", [(44, False), (44 + 3200, True)])
@pytest_twisted.ensureDeferred
async def test_an_unanswered_call_stores_no_recording_and_loses_its_empty_file(h, size, kept):
    await h.connect()
    call_id = await h.place(playback_waiting=False)
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    h.pbx.emit("Newchannel", operator)  # so the AMI link lists it as live
    agi = h.session(call_id)
    await agi.up_to_dial(playback=False)
    path = h.tmp_path / "monitor" / f"order-15_{call_id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"R" * size)  # what MixMonitor leaves (a header, or audio)
    await agi.after_dial("NOANSWER")
    assert await h.final(call_id) == [*DIALLED, "CLIENT_NOANSWER"]
    [call] = await h.store.order_calls("order-15")
    assert call["records"] == []
    # the operator's channel is still there: MixMonitor may still have the file
    h.clock.advance(2)
    assert path.exists()
    h.channel_down(operator)
    h.clock.advance(1)
    assert path.exists() == kept


@pytest_twisted.ensureDeferred
async def test_a_recording_across_a_restart_gets_its_size_and_duration(h):
    """Two conversations go on while agi_app restarts: one's recording was
    stored before, the other's not yet (the process died right after the
    client answered).  After the restart both are in the store, and each gets
    its size and duration once its call ends."""
    await h.connect()
    stored = await h.place(playback_waiting=False, order_id="rec-1")
    unstored = await h.place(first="1001", playback_waiting=False, order_id="rec-2")
    for n, call_id in enumerate((stored, unstored)):
        agi = h.session(call_id, uniqueid=f"{call_id}.op")
        await agi.up_to_dial(playback=False)
        operator = h.channel_up(call_id, f"PJSIP/100{n}-0000000{n}", f"{call_id}.op")
        h.client_answered(operator)
        await h.reached(call_id, "CLIENT_PICKUP")
    await h.until(lambda: h.lifecycle.get(unstored).recording.record_id, "the recording stored")
    await h.store._run(
        h.store._conn.execute, "DELETE FROM recordings WHERE call_id = ?", (unstored,)
    )
    h.clock.advance(3)
    await h.restart(
        {
            "s.op": ("PJSIP/1000-0000000a", stored, "Up"),
            "u.op": ("PJSIP/1001-0000000b", unstored, "Up"),
        }
    )
    for call_id in (stored, unstored):
        await h.until(
            lambda c=call_id: getattr(
                getattr(h.lifecycle.get(c), "recording", None), "record_id", None
            ),
            f"the recording of {call_id} taken up",
        )
    [before] = await h.store.call_recordings(stored)
    assert before["size"] is None and before["duration"] is None
    [restored] = await h.store.call_recordings(unstored)
    assert restored["path"].endswith(f"rec-2_{unstored}.wav")
    assert restored["created_at"] == (await h.entries(unstored))[3]["time"]  # CLIENT_CALLTO
    audio = 44 + 16000 * 3  # three seconds of 8 kHz 16-bit audio
    for order, call_id in (("rec-1", stored), ("rec-2", unstored)):
        (h.tmp_path / "monitor").mkdir(exist_ok=True)
        (h.tmp_path / "monitor" / f"{order}_{call_id}.wav").write_bytes(b"\0" * audio)
    h.channel_down(h.pbx.channels["s.op"])
    h.channel_down(h.pbx.channels["u.op"])
    h.clock.advance(3)
    assert await h.final(stored) == HAPPY and await h.final(unstored) == HAPPY
    for _ in range(3):  # the size is read twice, half a second apart
        h.clock.advance(0.5)
        await h.barrier()
    for call_id in (stored, unstored):
        [record] = await h.store.call_recordings(call_id)
        assert (record["size"], record["duration"]) == (audio, 3.0), record


@pytest_twisted.ensureDeferred
async def test_a_recording_left_unmeasured_by_a_killed_run_is_measured_after_the_start(h):
    """The call ended and its file was being watched when agi_app was
    killed: the next start measures it (size, duration)."""
    await h.connect()
    call_id = await h.place(playback_waiting=False, order_id="rec-3")
    agi = h.session(call_id, uniqueid=f"{call_id}.op")
    await agi.up_to_dial(playback=False)
    operator = h.channel_up(call_id, "PJSIP/1000-0000000c", f"{call_id}.op")
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    h.clock.advance(3)
    await agi.after_dial("ANSWER")
    h.channel_down(operator)
    assert await h.final(call_id) == HAPPY
    await h.restart({})  # before the file was looked at twice
    audio = 44 + 16000 * 3
    (h.tmp_path / "monitor").mkdir(exist_ok=True)
    (h.tmp_path / "monitor" / f"rec-3_{call_id}.wav").write_bytes(b"\0" * audio)
    for _ in range(3):  # the size is read twice, half a second apart
        h.clock.advance(0.5)
        await h.barrier()
    [record] = await h.store.call_recordings(call_id)
    assert (record["size"], record["duration"]) == (audio, 3.0), record


@pytest_twisted.ensureDeferred
async def test_a_session_lost_because_agi_app_stops_leaves_the_call_open(h):
    """Stopping agi_app drops its FastAGI connections; the conversation goes
    on on the PBX, so nothing is concluded: the call stays open for the next
    start to take up (see the restart tests), and no error is logged."""
    await h.connect()
    call_id = await h.place()
    operator = h.channel_up(call_id, "PJSIP/1000-00000001", "1700000000.1")
    agi = h.session(call_id)
    await agi.up_to_dial()
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        h.lifecycle.stop()  # agi_app is stopping...
        agi.lose()  # ...and its FastAGI connections go with it
        for _ in range(5):
            await h.barrier()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert await h.history(call_id) == CONNECTED
    assert (await h.store.get_call(call_id))["final_status"] is None
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_a_call_the_dialplan_connected_while_agi_app_was_away_is_taken_up(h):
    """agi_app went away while the operator rang; the operator answered, the
    dialplan found FastAGI unreachable and dialled the client by itself (the
    Originate handed it the dial string).  After the restart the channel
    snapshot shows both legs up: OPERATOR_PICKUP, CLIENT_CALLTO (dated when
    the client's channel was created) and CLIENT_PICKUP (its moment not
    seen); FINISH once they hang up, with no made-up talk time; the
    recording the dialplan started is the call's."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place()
    await h.restart({}, connect=False)
    h.clock.advance(20)
    h.pbx.add_channel("PJSIP/1000-00000011", uniqueid="k.op", state="Up",
                      variables={CALL_ID_VAR: call_id}, Application="Dial")  # fmt: skip
    h.pbx.add_channel("PJSIP/pstn-00000012", uniqueid="k.cl", state="Up",
                      variables={CALL_ID_VAR: call_id}, Application="AppDial",
                      Duration="00:00:07")  # fmt: skip
    await h.connect()
    await h.reached(call_id, "CLIENT_PICKUP")
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == CONNECTED
    assert entries[3]["time"] == iso_time(T0 + 20 - 7)
    assert entries[4]["detail"] == "answer time not seen"
    h.channel_down(h.pbx.channels["k.cl"])
    h.channel_down(h.pbx.channels["k.op"])
    h.clock.advance(3)
    assert await h.final(call_id) == HAPPY
    assert (await h.entries(call_id))[-1]["detail"] == "talk time unknown"
    [call] = await h.store.order_calls("order-15")
    assert call["records"][0]["path"].endswith(f"order-15_{call_id}.wav")


@pytest_twisted.ensureDeferred
async def test_a_client_still_ringing_after_the_restart_is_followed_to_its_answer(h):
    """The dialplan dialled the client while agi_app was away; it still rings
    when agi_app is back: CLIENT_CALLTO from the snapshot, then the DialEnd
    of its answer logs CLIENT_PICKUP the moment it happens."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place()
    await h.restart({}, connect=False)
    h.pbx.add_channel("PJSIP/1000-00000021", uniqueid="m.op", state="Up",
                      variables={CALL_ID_VAR: call_id}, Application="Dial")  # fmt: skip
    h.pbx.add_channel("PJSIP/pstn-00000022", uniqueid="m.cl", state="Ringing",
                      variables={CALL_ID_VAR: call_id}, Application="AppDial")  # fmt: skip
    await h.connect()
    await h.reached(call_id, "CLIENT_CALLTO")
    assert await h.history(call_id) == DIALLED
    h.clock.advance(2)
    h.client_answered(h.pbx.channels["m.op"])
    await h.reached(call_id, "CLIENT_PICKUP")
    entries = await h.entries(call_id)
    assert entries[4]["time"] == iso_time(T0 + 2) and entries[4]["detail"] is None


@pytest_twisted.ensureDeferred
async def test_a_client_the_dialplan_dials_after_the_restart_is_followed(h):
    """agi_app is back while the operator still hears the waiting
    announcement the dialplan plays by itself: no client channel yet.  The
    DialBegin to the client's trunk logs CLIENT_CALLTO, its DialEnd the
    pickup, the hangups FINISH with the talk time."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place()
    await h.restart({"p.op": ("PJSIP/1000-00000031", call_id, "Up")})
    await h.reached(call_id, "OPERATOR_PICKUP")
    assert await h.history(call_id) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP"]
    operator = h.pbx.channels["p.op"]
    h.clock.advance(3)
    h.pbx.emit("DialBegin", operator + [("DestChannel", "PJSIP/pstn-00000032")])
    await h.reached(call_id, "CLIENT_CALLTO")
    h.clock.advance(1)
    h.client_answered(operator)
    await h.reached(call_id, "CLIENT_PICKUP")
    h.clock.advance(4)
    h.channel_down(operator)
    h.clock.advance(3)
    entries = await h.entries(call_id)
    assert [e["status"] for e in entries] == HAPPY
    assert entries[3]["detail"] == "dialled by the dialplan"
    assert entries[-1]["detail"] == "talk 4 s"
    # a DialBegin to anyone but the client's trunk (a group member) is no client
    other = await h.place()
    await h.restart({"q.op": ("PJSIP/1001-00000041", other, "Up")})
    await h.reached(other, "OPERATOR_PICKUP")
    h.pbx.emit("DialBegin", h.pbx.channels["q.op"] + [("DestChannel", "PJSIP/1002-00000042")])
    await h.barrier()
    assert await h.history(other) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP"]


@pytest_twisted.ensureDeferred
async def test_a_call_that_came_and_went_while_agi_app_was_away_ends_from_its_recording(h):
    """The operator answered, the dialplan connected the client by itself and
    the conversation ended, all while no agi_app ran: no channel is left.
    MixMonitor (``b``) wrote 3 s of audio, so the client answered and talked
    3 s: FINISH with that talk time, the recording stored.  A call whose
    file holds no audio ends as before (the client was never connected)."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    talked = await h.place(order_id="gone")
    silent = await h.place(order_id="gone")
    await h.restart({}, connect=False)
    folder = h.tmp_path / "monitor"
    folder.mkdir(exist_ok=True)
    (folder / f"gone_{talked}.wav").write_bytes(b"\0" * (44 + 16000 * 3))
    (folder / f"gone_{silent}.wav").write_bytes(b"\0" * 44)
    await h.connect()
    assert await h.final(talked) == HAPPY
    entries = await h.entries(talked)
    assert entries[-1]["detail"] == "talk 3 s (from the recording)"
    assert entries[4]["detail"] == "answer time not seen"
    assert (await h.store.get_call(talked))["talk_seconds"] == pytest.approx(3.0)
    [call] = [c for c in await h.store.order_calls("gone") if c["call_id"] == talked]
    assert call["records"][0]["path"] == str(folder / f"gone_{talked}.wav")
    assert await h.final(silent) == ["CALL", "OPERATOR_CALLTO", "ERROR"]


@pytest_twisted.ensureDeferred
async def test_a_client_answer_whose_dial_began_unseen_is_logged_in_order(h):
    """The dialplan's Dial to the client began between the login's snapshot
    and the moment agi_app took the call up: the DialEnd of the answer is
    the first sign of the client.  CLIENT_CALLTO and CLIENT_PICKUP are both
    logged then, in order."""
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    call_id = await h.place()
    await h.restart({"u.op": ("PJSIP/1000-00000051", call_id, "Up")})
    await h.reached(call_id, "OPERATOR_PICKUP")
    h.client_answered(h.pbx.channels["u.op"])  # DestChannel PJSIP/pstn-...
    await h.reached(call_id, "CLIENT_PICKUP")
    assert await h.history(call_id) == CONNECTED
