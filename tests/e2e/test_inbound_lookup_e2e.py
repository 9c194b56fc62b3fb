"""CRM caller lookup end to end: a caller from the trunk (a SIPp UAC sending
its INVITE from the trunk's address) reaches ``[agi-app-inbound]`` on the
sandbox Asterisk, the real agi_app asks a CRM (the fake lookup resource
served on 127.0.0.1, allowed by the sandbox's ``[events] allowed_networks``)
and rings SIPp operators:

- the CRM knows the caller: the operator it names (free) rings with the
  caller's name as the From display name, answers, and the dial-in webhook
  and the widget's incoming-call event carry ``name`` and ``crm_url``;
- the CRM answers only after the timeout, or nothing listens at its
  address: the call rings ``[inbound] group`` unchanged, within
  ``lookup_timeout`` + 1 s of the caller's INVITE.

The sandbox's trunk context sends numbers dialled with the prefix 99999 to
``[agi-app-inbound]`` (added for these tests with the CLI, exactly the line
an admin writes: ``Goto(agi-app-inbound,<DID>,1)``).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest_twisted
from callflow import HTTP_PORT, Api, reactor, start_sandbox_app, wait_final, wait_for, words
from twisted.internet import task
from twisted.web.server import Site

from agi_app.events.testing import Receiver
from agi_app.inbound.testing import CRMAnswer, FakeCRM
from agi_app.sandbox.phones import SIPP, answer
from agi_app.ws.testing import connect_widget

CALLER = "380507654321"
DID = "0443334023"
PREFIX = "99999"
TIMEOUT = 1.5
WS_PORT = HTTP_PORT + 2
KNOWN = {"name": "Ivan Petrenko", "operator": "1001", "url": "https://crm.example/clients/17"}

#: a caller on the trunk: INVITE from [caller], ACK, talk TALK_MS, BYE (or the
#: other side's BYE first)
UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="agi_app e2e: a caller from the trunk">
  <!-- logged just before the INVITE goes out (a message arriving while
       the scenario stands on a nop would abort the call) -->
  <nop><action><log message="INVITE_SENT|[timestamp]|[call_id]"/></action></nop>
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:[caller]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:[caller]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><log message="ANSWERED|[timestamp]|[call_id]"/></action></nop>
  <!-- talk, unless the other side hangs up first -->
  <recv request="BYE" timeout="TALK_MS" ontimeout="hangup"/>
  <send next="end">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <label id="hangup"/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:[caller]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <label id="end"/>
  <nop/>
</scenario>
"""


def _when(field: str) -> float:
    field = field.strip()
    try:
        return float(field)
    except ValueError:
        return datetime.strptime(field[:26], "%Y-%m-%d\t%H:%M:%S.%f").timestamp()


async def call_in(sandbox, folder: Path, number: str, caller: str = CALLER,
                  talk_ms: int = 5000) -> dict[str, float]:  # fmt: skip
    """A call from outside to ``number`` from ``caller``, sent from the
    trunk's address; the times the caller sent its INVITE and was answered."""
    pstn = sandbox.pstn
    pstn.stop()  # free the trunk's SIP port for the calling side
    port = sandbox.pbx.profile.pstn_port
    folder.mkdir(parents=True, exist_ok=True)
    scenario, log = folder / "caller.xml", folder / "caller.log"
    scenario.write_text(UAC.replace("TALK_MS", str(talk_ms)))
    argv = [
        SIPP, "-sf", str(scenario), "-s", number, f"127.0.0.1:{sandbox.sip_port}",
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
        "-bind_local", "-timeout", "30", "-mp", str(port + 200), "-key", "caller", caller,
        "-trace_logs", "-log_file", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        await task.deferLater(reactor(), 0.1, lambda: None)
    assert proc.returncode == 0, proc.stderr.read().decode(errors="replace")[-2000:]
    times = {}
    for line in log.read_text().splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0] in ("INVITE_SENT", "ANSWERED"):
            times[parts[0]] = _when(parts[1])
    return times


@pytest_twisted.async_yield_fixture
async def trunk(sandbox):
    """The trunk's context sends ``99999<DID>`` to ``[agi-app-inbound]``."""
    await sandbox.pbx.cli_deferred(
        f"dialplan add extension _{PREFIX}X.,1,Goto(agi-app-inbound,${{EXTEN:{len(PREFIX)}}},1)"
        " into sandbox-from-pstn replace", reactor()
    )  # fmt: skip
    yield f"{PREFIX}{DID}"


@dataclass
class CRM:
    """The CRM's side: its lookup endpoint and its webhook receiver."""

    lookup: FakeCRM
    receiver: Receiver
    url: str
    hooks: str


@pytest_twisted.async_yield_fixture
async def crm():
    """The CRM, on loopback ports of its own."""
    lookup, receiver = FakeCRM(reactor()), Receiver()
    ports = [
        reactor().listenTCP(0, Site(lookup), interface="127.0.0.1"),
        reactor().listenTCP(0, receiver.site(), interface="127.0.0.1"),
    ]
    yield CRM(
        lookup,
        receiver,
        f"http://127.0.0.1:{ports[0].getHost().port}/lookup?phone={{phone}}",
        f"http://127.0.0.1:{ports[1].getHost().port}/hooks",
    )
    for port in ports:
        await port.stopListening()


async def start_app(sandbox, tmp_path, lookup_url: str):
    return await start_sandbox_app(
        sandbox, tmp_path,
        AGI_APP_CRM_LOOKUP_URL=lookup_url,
        AGI_APP_CRM_LOOKUP_TIMEOUT=str(TIMEOUT),
        AGI_APP_INBOUND_GROUP="1000",
        AGI_APP_EVENTS_RETRY_DELAY="0.2",
        AGI_APP_EVENTS_MAX_RETRY_DELAY="1",
    )  # fmt: skip


async def operators_free(app, *numbers: str) -> None:
    await wait_for(
        lambda: all(app.ami.device_states.get(f"PJSIP/{n}") == "NOT_INUSE" for n in numbers),
        what=f"{numbers} free on the AMI link",
    )


async def the_inbound_call(app) -> tuple[str, list[dict]]:
    entries = await wait_for(lambda: app.store.history_after(0, 100), what="a call")
    [call_id] = {e["call_id"] for e in entries}
    return call_id, await wait_final(app, call_id)


@pytest_twisted.ensureDeferred
async def test_a_known_caller_is_named_and_put_through_to_their_operator(
    sandbox, tmp_path, trunk, crm
):
    crm.lookup.answers[CALLER] = CRMAnswer.caller(**KNOWN)
    app = await start_app(sandbox, tmp_path, crm.url)
    widget = None
    try:
        api = Api()
        code, sub = await api.post("/extension/1001/event/",
                                   {"url": crm.hooks, "event_type": "dial-in"})  # fmt: skip
        assert code == 201, sub
        named = sandbox.phones.start("1001", answer(after=0.5, hangup_after=1.0))
        group = sandbox.phones.start("1000", answer(after=0.5))
        await operators_free(app, "1000", "1001")
        widget = await connect_widget(reactor(), WS_PORT)
        await widget.hello(user_phone="1001")

        times = await call_in(sandbox, tmp_path / "caller", trunk)
        call = await named.wait_for_hangup(reactor=reactor())
        # the operator's phone shows the CRM's name for the caller's number
        assert (call["from_name"], call["from_number"]) == ("Ivan Petrenko", CALLER), call
        assert group.calls() == [], "the group is not rung when the named operator is free"
        ring = call["ringing_time"] - times["INVITE_SENT"]
        assert 0 < ring < TIMEOUT, ring
        print(f"\nCRM answering: INVITE to the named operator's ringing {ring:.3f} s")

        [asked] = crm.lookup.requests
        assert asked.phone == CALLER
        call_id, history = await the_inbound_call(app)
        assert words(history) == [
            "CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_PICKUP", "FINISH"], history
        assert history[1]["detail"] == "extension 1001"
        assert history[-1]["detail"].endswith("with extension 1001"), history[-1]
        stored = await app.store.get_call(call_id)
        assert (stored["kind"], stored["phone"], stored["sip"]) == ("incoming", CALLER, "1001")
        assert stored["params"]["name"] == "Ivan Petrenko"
        assert 0.5 <= stored["talk_seconds"] <= 2.0, stored  # the operator hung up after 1 s

        [hook] = await crm.receiver.wait_for(1).addTimeout(15, reactor())
        fields = hook.fields
        assert (fields["EventType"], fields["CallID"]) == ("dial-in", call_id), fields
        assert (fields["name"], fields["crm_url"]) == (KNOWN["name"], KNOWN["url"])
        assert (fields["CallerIDNum"], fields["CallerIDName"]) == (CALLER, "Ivan Petrenko")
        assert (fields["CalledExtension"], fields["CallFlow"]) == ("1001", "in")

        message = await widget.next().addTimeout(10, reactor())
        event = message["event"]
        assert (message["type"], event["type"], event["from"]) == ("event", 2, CALLER), message
        assert (event["name"], event["crm_url"]) == (KNOWN["name"], KNOWN["url"])
    finally:
        if widget is not None:
            widget.dropConnection(abort=True)
        await app.stop()


async def rings_on_unchanged(sandbox, tmp_path, trunk, app) -> tuple[float, dict]:
    """The caller from ``trunk`` rings the group (1000) without a name:
    seconds from its INVITE to the group's phone ringing, and the call."""
    group = sandbox.phones.start("1000", answer(after=0.3, hangup_after=0.5))
    await operators_free(app, "1000", "1001")
    times = await call_in(sandbox, tmp_path / "caller", trunk)
    call = await group.wait_for_hangup(reactor=reactor())
    assert call["from_name"] != KNOWN["name"] and call["from_number"] == CALLER, call
    assert sandbox.phones.operator("1001").calls() == []
    call_id, history = await the_inbound_call(app)
    assert words(history) == [
        "CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_PICKUP", "FINISH"], history
    assert history[1]["detail"] == "extension 1000"
    return call["ringing_time"] - times["INVITE_SENT"], await app.store.get_call(call_id)


@pytest_twisted.ensureDeferred
async def test_a_crm_answering_after_the_timeout_is_not_waited_for(sandbox, tmp_path, trunk, crm):
    crm.lookup.answers[CALLER] = CRMAnswer.caller(delay=TIMEOUT + 2, **KNOWN)
    app = await start_app(sandbox, tmp_path, crm.url)
    try:
        sandbox.phones.start("1001", answer(after=0.3))
        ring, call = await rings_on_unchanged(sandbox, tmp_path, trunk, app)
        assert TIMEOUT <= ring <= TIMEOUT + 1, ring
        assert call["params"]["lookup"] == "timeout"
        assert call["params"]["name"] is None
        assert len(crm.lookup.requests) == 1
        print(f"\nCRM late: INVITE to the group's ringing {ring:.3f} s")
    finally:
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_a_crm_that_is_down_is_not_waited_for(sandbox, tmp_path, trunk, crm):
    # nothing listens there: the port was free a moment ago
    probe = reactor().listenTCP(0, Site(FakeCRM(reactor())), interface="127.0.0.1")
    dead = probe.getHost().port
    await probe.stopListening()
    app = await start_app(sandbox, tmp_path, f"http://127.0.0.1:{dead}/lookup?phone={{phone}}")
    try:
        sandbox.phones.start("1001", answer(after=0.3))
        ring, call = await rings_on_unchanged(sandbox, tmp_path, trunk, app)
        assert 0 < ring <= TIMEOUT + 1, ring
        assert call["params"]["lookup"] == "failed"
        print(f"\nCRM down: INVITE to the group's ringing {ring:.3f} s")
    finally:
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_without_fastagi_the_call_goes_to_the_fallback(sandbox, tmp_path, trunk):
    """agi_app not running: [agi-app-inbound] goes on without it (an
    apology, as no AGI_APP_INBOUND_FALLBACK is set) and the caller is not
    left waiting."""
    started = time.monotonic()
    phone = sandbox.phones.start("1000", answer())
    times = await call_in(sandbox, tmp_path / "caller", trunk, talk_ms=300)
    assert "ANSWERED" in times  # Playback answered the call with the apology
    assert phone.calls() == []
    assert time.monotonic() - started < 15
