"""Smoke tests of the sandbox itself: the real Asterisk 22 and SIPp phones
answer the way the application's end-to-end tests rely on."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.protocols.basic import LineOnlyReceiver

from agi_app.ami import OriginateReason
from agi_app.sandbox import poll
from agi_app.sandbox.phones import answer, busy

CRM_CALLER = '"CRM client 3320" <380639920000>'


def call_operator(ami, number: str):
    """Originate a call from the CRM's client to operator ``number`` into
    ``[sandbox-test]`` ``hello`` (a prompt, then the PBX hangs up)."""
    return ami.originate(
        f"PJSIP/{number}",
        context="sandbox-test",
        exten="hello",
        priority=1,
        caller_id=CRM_CALLER,
        timeout_ms=5000,
    )


@pytest_twisted.ensureDeferred
async def test_ami_login(ami):
    response = await ami.action("Ping")
    assert response["Response"] == "Success"
    assert ami.connected


@pytest_twisted.ensureDeferred
async def test_originate_reaches_answering_operator_with_caller_id(sandbox, ami):
    phone = sandbox.phones.start("1000", answer())
    result = await call_operator(ami, "1000")
    assert result.success, result
    assert result.reason == OriginateReason.ANSWERED
    call = await phone.wait_for_hangup(timeout=5)
    assert call["from_name"] == "CRM client 3320"
    assert call["from_number"] == "380639920000"
    assert call["number"] == "1000"
    assert call["answer_time"] is not None
    # "hello" plays a prompt, then the PBX hangs up
    assert call["hung_up_by"] == "remote"
    assert call["media_received"], call


class _AGIEnvironment(LineOnlyReceiver):
    """Reads the FastAGI environment block, hands it over and hangs up."""

    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.env: dict[str, str] = {}

    def lineReceived(self, line: bytes) -> None:
        text = line.decode().rstrip("\r")
        if text:
            key, _, value = text.partition(":")
            self.env[key.strip()] = value.strip()
            return
        self.factory.received.callback(self.env)
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_fastagi_call_reaches_a_listener_on_the_agi_port(sandbox, ami):
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(_AGIEnvironment)
    factory.received = defer.Deferred()
    port = reactor.listenTCP(sandbox.agi_port, factory, interface="127.0.0.1")
    try:
        # A Local channel runs exten "smoke" (AGI(${AGI_APP_URL}/smoke,x,y));
        # its other half just answers and waits.
        result = await ami.originate(
            "Local/smoke@sandbox-test/n",
            context="sandbox-test",
            exten="talk",
            priority=1,
            timeout_ms=5000,
        )
        assert result.success, result
        env = await factory.received.addTimeout(5, reactor)
    finally:
        await port.stopListening()
    assert env["agi_network"] == "yes"
    assert env["agi_network_script"] == "smoke"
    assert env["agi_arg_1"] == "x"
    assert env["agi_arg_2"] == "y"
    assert env["agi_context"] == "sandbox-test"


@pytest_twisted.ensureDeferred
async def test_busy_operator_fails_the_originate_with_reason_5(sandbox, ami):
    """486 from the phone: the Originate fails as busy (reason 5).

    Asterisk 22's dial API loses the cause of a PJSIP 486 (chan_pjsip queues
    a hangup, not a BUSY control frame), so the OriginateResponse event says
    Reason 0; DialEnd (DialStatus BUSY) and Hangup (Cause 17) tell, and the
    AMI client derives reason 5 from that Hangup."""
    events = []
    unsubscribe = ami.subscribe(events.append)
    try:
        phone = sandbox.phones.start("1001", busy())
        result = await call_operator(ami, "1001")
        call = await phone.wait_for_hangup(timeout=5)
        await poll(lambda: any(e.event == "Hangup" for e in events), timeout=5)
    finally:
        unsubscribe()
    assert not result.success
    assert result.reason == OriginateReason.BUSY
    assert (call["end"], call["code"]) == ("rejected", 486)

    def channel(e):
        return e.get("DestChannel") or e.get("Channel") or ""

    ours = [e for e in events if channel(e).startswith("PJSIP/1001-")]
    assert ("DialEnd", "BUSY") in [(e.event, e.get("DialStatus")) for e in ours]
    assert ("Hangup", "17") in [(e.event, e.get("Cause")) for e in ours]


@pytest_twisted.ensureDeferred
async def test_offline_operator_fails_at_once_without_ringing_anything(sandbox, ami):
    # Other phones are up, so an INVITE sent anywhere would be seen.
    sandbox.phones.start("1000", answer())
    sandbox.phones.offline("1002")
    assert "1002" not in sandbox.pbx.contacts()
    assert "1000" in sandbox.pbx.contacts()
    result = await call_operator(ami, "1002")
    assert not result.success
    assert result.reason == OriginateReason.OTHER
    assert sandbox.phones.all_calls() == {}
    await sandbox.wait_for_channels(0, timeout=2)


def test_pstn_behaviour_per_number(sandbox):
    """A plain (non-Twisted) test: blocking waits, the PSTN's table."""
    sandbox.pstn.set("380639920001", answer_after=0.3, hangup_after=0.5)
    sandbox.pstn.set("380639920002", "busy")
    sandbox.cli("channel originate PJSIP/380639920001@pstn extension echo@sandbox-test")
    call = sandbox.pstn.wait_for_hangup_blocking(timeout=5)
    assert call["number"] == "380639920001"
    assert call["hung_up_by"] == "phone"
    assert call["answer_time"] - call["invite_time"] == pytest.approx(0.3, abs=0.15)
    sandbox.cli("channel originate PJSIP/380639920002@pstn extension echo@sandbox-test")
    call = sandbox.pstn.wait_for_hangup_blocking(timeout=5, count=2)
    assert (call["number"], call["end"], call["code"]) == ("380639920002", "rejected", 486)
    sandbox.pbx.wait_for_channels_blocking(0, timeout=3)


def test_the_pstn_started_with_a_behaviour_uses_it_for_every_number(sandbox):
    """What `make run`'s demo relies on: ``pstn.start(behaviour)`` makes it
    the default for numbers without a rule of their own."""
    sandbox.pstn.start(answer(after=0.4, hangup_after=0.5))
    sandbox.cli("channel originate PJSIP/380639920077@pstn extension echo@sandbox-test")
    call = sandbox.pstn.wait_for_hangup_blocking(timeout=5)
    assert call["number"] == "380639920077"
    assert call["hung_up_by"] == "phone"
    assert call["answer_time"] - call["invite_time"] == pytest.approx(0.4, abs=0.15)
    assert call["end_time"] - call["answer_time"] == pytest.approx(0.5, abs=0.2)
    sandbox.pbx.wait_for_channels_blocking(0, timeout=3)
