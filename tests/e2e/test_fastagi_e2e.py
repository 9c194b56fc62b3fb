"""The FastAGI server against the real Asterisk 22: a session that reads and
sets variables and runs EXEC Playback, where the caller hangs up in the middle
of the Playback and the handler learns of it at once."""

from __future__ import annotations

import time

import pytest_twisted
from callflow import reactor, wait_for
from twisted.internet import defer

from agi_app.agi import AGISession, ScriptRegistry, listen
from agi_app.ami import AMIService
from agi_app.config import AGIConfig
from agi_app.sandbox.phones import answer


@pytest_twisted.async_yield_fixture
async def ami(sandbox):
    service = AMIService(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_username, sandbox.ami_secret,
        reactor=reactor(), name="e2e-agi",
    )  # fmt: skip
    service.startService()
    await service.when_connected().addTimeout(10, reactor())
    yield service
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_session_sees_hangup_during_playback(sandbox, ami):
    seen: dict = {}
    done: defer.Deferred = defer.Deferred()
    registry = ScriptRegistry()

    @registry.script("fastagi-e2e")
    async def script(agi: AGISession) -> None:
        try:
            seen["env"] = dict(agi.env)
            seen["args"] = list(agi.args)
            await agi.set_variable("E2E_VALUE", 'quoted "value" with spaces')
            seen["value"] = await agi.get_variable("E2E_VALUE")
            seen["missing"] = await agi.get_variable("E2E_NOT_SET")
            # about 5 s of speech; the phone hangs up after 1 s
            started = time.monotonic()
            reply = await agi.exec_("Playback", "agi_app/ivr-sales", timeout=20)
            seen["playback_result"] = reply.result
            await agi.wait_hangup()
            seen["hangup_after"] = time.monotonic() - started
            seen["hungup"] = agi.hungup
            # still allowed on a dead channel
            seen["after_hangup"] = await agi.get_variable("E2E_VALUE")
        finally:
            done.callback(None)

    port = await listen(
        reactor(), AGIConfig(listen=f"tcp:{sandbox.agi_port}:interface=127.0.0.1"), registry
    )
    try:
        phone = sandbox.phones.start("1005", answer(after=0.1, hangup_after=1.0))
        result = await ami.originate(
            "PJSIP/1005",
            context="sandbox-test",
            exten="agi",
            priority=1,
            timeout_ms=5000,
            variables={"SANDBOX_AGI_SCRIPT": "fastagi-e2e", "SANDBOX_AGI_ARG1": "one"},
        )
        assert result.success, result
        await done.addTimeout(15, reactor())
        call = await phone.wait_for_hangup(timeout=5)
        # The server reports the outcome and closes; only then does Asterisk
        # let the dead channel go.
        await wait_for(lambda: port.factory.active == 0, timeout=5, what="session closed")
        await sandbox.wait_for_channels(0, timeout=5, reactor=reactor())
    finally:
        await port.stopListening()
    assert seen["env"]["agi_network_script"] == "fastagi-e2e"
    assert seen["env"]["agi_channel"].startswith("PJSIP/1005-")
    assert seen["args"][0] == "one"
    assert seen["value"] == 'quoted "value" with spaces'
    assert seen["missing"] is None
    assert seen["playback_result"] == "-1"  # interrupted by the hangup
    assert seen["hungup"] is True
    # The phone hung up 1 s after answering; the 5 s Playback was cut short
    # and the handler knew within a moment, not at the end of the prompt.
    assert seen["hangup_after"] < 2.5, seen["hangup_after"]
    assert seen["after_hangup"] == 'quoted "value" with spaces'
    assert call["hung_up_by"] == "phone", call


async def _operator_leg_without_agi_app(sandbox, ami, number: str):
    """Ring operator ``number`` into ``[agi-app-operator]`` as agi_app would,
    with the phone answering at once; returns what the phone saw."""
    phone = sandbox.phones.start(number, answer(after=0.1))
    result = await ami.originate(
        f"PJSIP/{number}",
        context="agi-app-operator",
        exten="s",
        priority=1,
        timeout_ms=5000,
        variables={"__AGI_APP_CALL_ID": "no-such-call"},
    )
    assert result.success, result
    return await phone.wait_for_hangup(timeout=15)


@pytest_twisted.ensureDeferred
async def test_dialplan_falls_back_when_fastagi_is_down(sandbox, ami):
    """Nothing listens on the FastAGI port: AGISTATUS=FAILURE, and the
    operator hears the error prompt and is hung up on, not left in silence."""
    call = await _operator_leg_without_agi_app(sandbox, ami, "1006")
    assert call["hung_up_by"] == "remote", call
    assert call["media_received"], "the error prompt never played"
    log = sandbox.log_tail(200)
    assert "agi_app unavailable: AGISTATUS=FAILURE" in log


@pytest_twisted.ensureDeferred
async def test_unknown_call_gets_notfound_and_the_fallback(sandbox, ami, tmp_path):
    """The script does not know the call: AGI_APP_RESULT=NOTFOUND reaches the
    dialplan, which plays the error prompt and hangs up."""
    from callflow import app_config

    from agi_app.app import Application

    app = Application(app_config(sandbox, tmp_path), reactor())
    port = await listen(
        reactor(), AGIConfig(listen=f"tcp:{sandbox.agi_port}:interface=127.0.0.1"), app.scripts
    )
    app.store.open()
    try:
        call = await _operator_leg_without_agi_app(sandbox, ami, "1007")
        await wait_for(lambda: port.factory.active == 0, timeout=5, what="session closed")
    finally:
        await port.stopListening()
        await app.store.close()
    assert call["hung_up_by"] == "remote", call
    assert call["media_received"], "the error prompt never played"
    assert "agi_app unavailable: AGISTATUS=SUCCESS RESULT=NOTFOUND" in sandbox.log_tail(200)

