"""The FastAGI server against the real Asterisk 22: a session that reads and
sets variables and runs EXEC Playback, where the caller hangs up in the middle
of the Playback and the handler learns of it at once."""

from __future__ import annotations

import time

import pytest_twisted
from callflow import listen_fastagi, reactor, wait_for
from twisted.internet import defer

from agi_app.agi import AGISession, ScriptRegistry
from agi_app.agi.errors import AGICommandFailed, AGIHangup, AGIUsageError
from agi_app.sandbox.phones import answer, dtmf


async def _run_script(
    sandbox, ami, number: str, behaviour, body, arg: str | None = None
) -> tuple[dict, dict]:
    """Run ``body(agi, seen)`` as the FastAGI script of a call originated to
    operator ``number`` (answering with ``behaviour``) into
    ``[sandbox-test]`` ``agi`` (with ``arg`` as the script's first
    argument); returns what it recorded and what the phone saw, once the
    session closed and every channel is gone."""
    seen: dict = {}
    done: defer.Deferred = defer.Deferred()
    registry = ScriptRegistry()

    @registry.script("fastagi-e2e")
    async def script(agi: AGISession) -> None:
        try:
            await body(agi, seen)
        finally:
            done.callback(None)

    variables = {"SANDBOX_AGI_SCRIPT": "fastagi-e2e"}
    if arg is not None:
        variables["SANDBOX_AGI_ARG1"] = arg
    port = await listen_fastagi(sandbox, registry)
    try:
        phone = sandbox.phones.start(number, behaviour)
        result = await ami.originate(
            f"PJSIP/{number}", context="sandbox-test", exten="agi", priority=1,
            timeout_ms=5000, variables=variables,
        )  # fmt: skip
        assert result.success, result
        await done.addTimeout(20, reactor())
        # the script returned (or the phone hung up): the call ends
        call = await phone.wait_for_hangup(timeout=5)
        # The server reports the outcome and closes; only then does Asterisk
        # let the dead channel go.
        await wait_for(lambda: port.factory.active == 0, timeout=5, what="session closed")
        await sandbox.wait_for_channels(0, timeout=5, reactor=reactor())
    finally:
        await port.stopListening()
    return seen, call


@pytest_twisted.ensureDeferred
async def test_session_sees_hangup_during_playback(sandbox, ami):
    async def body(agi: AGISession, seen: dict) -> None:
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

    phone_hangs_up = answer(after=0.1, hangup_after=1.0)
    seen, call = await _run_script(sandbox, ami, "1005", phone_hangs_up, body, arg="one")
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

    # only its FastAGI scripts and its (empty) store: no AMI, no HTTP
    app = Application(app_config(sandbox, tmp_path), reactor())
    port = await listen_fastagi(sandbox, app.scripts)
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


@pytest_twisted.ensureDeferred
async def test_get_data_collects_the_phones_dtmf_and_times_out_with_none(sandbox, ami):
    """GET DATA against real RFC 2833 digits from the phone, then GET DATA
    with nobody pressing anything: ``None`` once the digit timeout ran out."""

    async def body(agi: AGISession, seen: dict) -> None:
        # the phone presses 9, 3, 1 (any order) from 1 s after answering, 0.3 s apart
        seen["digits"] = await agi.get_data("beep", timeout_ms=4000, max_digits=3, timeout=10)
        started = time.monotonic()
        seen["quiet"] = await agi.get_data("beep", timeout_ms=1000, max_digits=3, timeout=10)
        seen["quiet_after"] = time.monotonic() - started

    seen, call = await _run_script(sandbox, ami, "1001", dtmf("931", after=1.0, gap=0.3), body)
    assert seen["digits"] == "931", seen
    assert seen["quiet"] is None, seen
    # the beep (about 0.25 s) plus the 1 s digit timeout, not the default 6 s
    assert 1.0 <= seen["quiet_after"] < 2.5, seen
    assert call["dtmf"] == "931", call
    assert call["hung_up_by"] == "remote", call


@pytest_twisted.ensureDeferred
async def test_usage_block_raises_usage_error_and_the_session_goes_on(sandbox, ami):
    """``GET VARIABLE`` without its argument: Asterisk answers with the
    multi-line ``520-`` usage block; the script gets :class:`AGIUsageError`
    carrying the usage text and the next command is answered normally."""

    async def body(agi: AGISession, seen: dict) -> None:
        try:
            await agi.command("GET VARIABLE")
        except AGIUsageError as e:
            seen["error"] = e
        await agi.set_variable("E2E_AFTER_USAGE", "still here")
        seen["after"] = await agi.get_variable("E2E_AFTER_USAGE")

    seen, _call = await _run_script(sandbox, ami, "1002", answer(after=0.1), body)
    error = seen["error"]
    assert error.line == "520 End of proper usage.", error.line
    # Asterisk 22 sends the command's documentation (XML markup left in)
    # between "520-Invalid command syntax.  Proper usage follows:" and the
    # closing line: two lines for GET VARIABLE, neither "520" line kept.
    lines = error.usage.split("\n")
    assert len(lines) >= 2, error.usage
    assert "<replaceable>variablename</replaceable> is not set" in lines[0], error.usage
    assert lines[-1] == "Example return code: 200 result=1 (testvariable)", error.usage
    assert not any(line.startswith("520") for line in lines), error.usage
    assert seen["after"] == "still here"


@pytest_twisted.ensureDeferred
async def test_stream_file_of_a_missing_file_is_command_failed(sandbox, ami):
    """``STREAM FILE`` of a file that does not exist: Asterisk answers
    ``200 result=-1 endpos=0`` and keeps the session; ``stream_file`` fails
    with :class:`AGICommandFailed` (not a hangup) and the session goes on."""

    async def body(agi: AGISession, seen: dict) -> None:
        try:
            await agi.stream_file("agi_app/no-such-prompt", "12")
        except AGICommandFailed as e:
            seen["error"] = e
        seen["hungup"] = agi.hungup
        seen["channel"] = agi.channel
        seen["after"] = await agi.get_variable("CHANNEL(state)")
        # a file that does exist still plays to its end
        seen["played"] = await agi.stream_file("beep", "")

    seen, call = await _run_script(sandbox, ami, "1003", answer(after=0.1), body)
    error = seen["error"]
    assert not isinstance(error, AGIHangup), error
    assert error.line == "200 result=-1 endpos=0", error.line
    assert error.reply.result == "-1" and error.reply.endpos == 0
    assert seen["hungup"] is False
    assert seen["after"] == "Up"
    assert seen["played"] == ""
    assert call["media_received"], call
    # Asterisk remembers that failure: although the script went on and ended
    # normally, AGI() returns -1, i.e. AGISTATUS=FAILURE for the dialplan.
    ending = f"<{seen['channel']}>AGI Script "

    def last_ending() -> str | None:
        lines = sandbox.log_tail(200).splitlines()
        return next((x for x in reversed(lines) if ending in x), None)

    line = await wait_for(
        last_ending,
        timeout=5,
        what="the AGI Script completed line",
    )
    assert line.endswith("fastagi-e2e completed, returning -1"), line


@pytest_twisted.ensureDeferred
async def test_thirty_concurrent_sessions_all_complete(sandbox, ami):
    """30 Local channels originated at once into ``[sandbox-test]`` ``agi``,
    each with its own argument: every session sets, reads back and logs its
    own variable, the server ends with no session open and the PBX with no
    channel left."""
    count = 30
    finished: dict[str, dict] = {}
    peak = [0]
    registry = ScriptRegistry()

    @registry.script("fastagi-e2e")
    async def script(agi: AGISession) -> None:
        peak[0] = max(peak[0], port.factory.active)
        tag = agi.args[0]
        # answering the Local ;2 half is what completes the Originate
        await agi.answer()
        await agi.set_variable("E2E_TAG", f"value {tag}")
        value = await agi.get_variable("E2E_TAG")
        await agi.verbose(f"fastagi e2e session {tag}", level=3)
        finished[tag] = {"value": value, "uniqueid": agi.uniqueid}

    port = await listen_fastagi(sandbox, registry)
    started = time.monotonic()
    try:
        results = await defer.gatherResults([
            ami.originate(
                "Local/agi@sandbox-test", application="Wait", data="10", timeout_ms=5000,
                variables={"SANDBOX_AGI_SCRIPT": "fastagi-e2e", "SANDBOX_AGI_ARG1": str(n)},
            )
            for n in range(count)
        ], consumeErrors=True)  # fmt: skip
        assert all(r.success for r in results), [r for r in results if not r.success]
        await wait_for(lambda: len(finished) == count, timeout=5, what="every script done")
        await wait_for(lambda: port.factory.active == 0, timeout=5, what="sessions closed")
        await sandbox.wait_for_channels(0, timeout=5, reactor=reactor())
        elapsed = time.monotonic() - started
    finally:
        await port.stopListening()
    assert sorted(finished, key=int) == [str(n) for n in range(count)]
    assert all(f["value"] == f"value {tag}" for tag, f in finished.items()), finished
    assert len({f["uniqueid"] for f in finished.values()}) == count
    # the originates went out together: sessions overlapped
    assert peak[0] > 1, peak
    assert elapsed < 10, elapsed
