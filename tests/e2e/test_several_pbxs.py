"""Several PBXs end to end: one agi_app following two sandbox Asterisks.

The session's sandbox is the default PBX ([ami]); a second instance, at the
port offset 200 above the session's, is ``[ami:east]``.  Its dialplan calls
the same FastAGI server as the first one (its ``AGI_APP_URL`` is set to the
first instance's port).  Operators are on both; calls are placed to each (by
extension and with ``pbx=``); the history, sipList and recordings say which
PBX; then the east PBX is stopped while calls go on on the default one."""

from __future__ import annotations

import dataclasses
import os

import pytest
import pytest_twisted
from callflow import (
    HTTP_PORT,
    WS_PORT,
    make_call,
    reactor,
    recording_settled,
    start_app,
    wait_final,
    wait_status,
    wait_until,
    words,
)
from prometheus_client.parser import text_string_to_metric_families

from agi_app.config import load
from agi_app.events.testing import Receiver
from agi_app.sandbox import dns
from agi_app.sandbox.pbx import PBX, PBXError
from agi_app.sandbox.pbx import test_profile as offset_profile
from agi_app.sandbox.phones import Phones, answer, kill_phones
from agi_app.ws.testing import connect_widget

#: an IVR menu that gives up after one silent second
MENUS = """
[quiet]
prompt = connecting
timeout = 1
retries = 1
timeout_prompt = connecting
goodbye_prompt = connecting
1 = hangup
"""
HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]


async def metric(api, name: str, **labels: str) -> float:
    """One sample of ``GET /metrics``."""
    code, body = await api.get("/metrics")
    assert code == 200, body
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no {name}{labels} in /metrics")


def start_second_pbx(sandbox, srv_ports: list[int] | None = None) -> tuple[PBX, Phones]:
    """A second sandbox PBX (offset + 200) whose dialplan calls the first
    one's FastAGI port (or, with ``srv_ports``, ``hagi://`` with an SRV
    record per port, priorities 10, 20...), started, with its phones."""
    offset = int(os.environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "0") or 0) + 200
    profile = dataclasses.replace(
        offset_profile({"AGI_APP_SANDBOX_PORT_OFFSET": str(offset)}), agi_port=sandbox.agi_port
    )
    pbx = PBX(sandbox.pbx.root, profile)
    if srv_ports:
        pbx.srv = dns.zone_for(pbx.name, srv_ports, list(range(10, 10 * len(srv_ports) + 1, 10)))
    kill_phones(pbx)
    try:
        pbx.start(stop_at_exit=True)
    except PBXError as e:
        pytest.fail(f"second sandbox PBX: {e}", pytrace=False)
    phones = Phones(pbx)
    phones.pstn.start()
    return pbx, phones


def ami_section(pbx: PBX) -> dict[str, str]:
    """The ``[ami:NAME]`` settings of an agi_app following ``pbx``."""
    return {
        "host": "127.0.0.1",
        "port": str(pbx.ami_port),
        "username": pbx.ami_username,
        "secret": pbx.ami_secret,
        "ping_interval": "2",
        "action_timeout": "3",
        "max_backoff": "1",
        "recordings_dir": str(pbx.recordings_dir),
        "pbx_recordings_dir": str(pbx.pbx_recordings_dir),
    }


@pytest.fixture(scope="module")
def east(sandbox):
    """A second sandbox PBX (offset + 200) whose dialplan calls the first
    one's FastAGI port, with its phones."""
    pbx, phones = start_second_pbx(sandbox)
    yield pbx, phones
    phones.stop_all()
    pbx.stop()


def two_pbx_config(sandbox, east_pbx: PBX, tmp_path):
    """The default PBX from the usual overrides, east from an [ami:east] section."""
    env = dict(sandbox.agi_app_config())
    env.update({
        "AGI_APP_HTTP_LISTEN": f"tcp:{HTTP_PORT}:interface=127.0.0.1",
        "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{HTTP_PORT}",
        "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{WS_PORT}:interface=127.0.0.1",
        "AGI_APP_STORE_PATH": str(tmp_path / "agi_app.sqlite3"),
        "AGI_APP_AMI_PING_INTERVAL": "2",
        "AGI_APP_AMI_ACTION_TIMEOUT": "3",
        "AGI_APP_AMI_MAX_BACKOFF": "1",
    })  # fmt: skip
    ini = tmp_path / "agi_app.conf"
    east_section = "".join(f"{k} = {v}\n" for k, v in ami_section(east_pbx).items())
    ini.write_text(
        f"[ami:east]\n{east_section}[ivr]\npath = {tmp_path / 'ivr.conf'}\n",
        encoding="utf-8",
    )
    (tmp_path / "ivr.conf").write_text(MENUS, encoding="utf-8")
    return load(ini, environ=env)


@pytest_twisted.async_yield_fixture
async def app(sandbox, east, tmp_path):
    east_pbx, _phones = east
    if not east_pbx.is_running():
        east_pbx.start(stop_at_exit=True)
        _phones.pstn.start()
    application = await start_app(two_pbx_config(sandbox, east_pbx, tmp_path))
    await application.pbxs.pbxs["east"].ami.when_connected().addTimeout(10, reactor())
    yield application
    await application.stop()


async def finished_call(widget, timeout: float = 15.0) -> str:
    """The callID of the next "finished call" event (type 3) the widget gets."""
    deadline = reactor().seconds() + timeout
    while True:
        left = max(0.1, deadline - reactor().seconds())
        message = await widget.next().addTimeout(left, reactor())
        event = message.get("event") or {}
        if message["type"] == "event" and event.get("type") == 3:
            return event.get("callID")


async def operators_online(api, wanted: set[tuple[str, str]]) -> list[dict]:
    async def sips():
        code, body = await api.get("/api/sipList.json", status="online", per_page=500)
        assert code == 200, body
        return body["sips"]

    return await wait_until(
        sips, lambda s: wanted <= {(o["sip"], o["pbx"]) for o in s}, 15, "operators online"
    )


#: the CRM's webhook receiver, beside the HTTP port (moves with the offset)
RECEIVER_PORT = HTTP_PORT + 5


@pytest_twisted.async_yield_fixture
async def crm():
    receiver = Receiver()
    port = reactor().listenTCP(RECEIVER_PORT, receiver.site(), interface="127.0.0.1")
    yield receiver
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_two_pbxs_one_agi_app(sandbox, east, app, api, crm):
    east_pbx, east_phones = east
    # webhooks follow every PBX: the hangup of the east PBX's operator 1002
    code, sub = await api.post("/extension/1002/event/", {
        "url": f"http://127.0.0.1:{RECEIVER_PORT}/hook", "method": "POST",
        "event_type": "hangup",
    })  # fmt: skip
    assert code == 201, sub
    sandbox.phones.start("1001", answer(after=0.2))
    east_phones.start("1002", answer(after=0.2))
    east_phones.start("1003", answer(after=0.2))
    sandbox.pstn.set("380639920011", answer_after=0.3, hangup_after=2)
    east_phones.pstn.set("380639920012", answer_after=0.3, hangup_after=2)
    east_phones.pstn.set("380639920013", answer_after=0.3, hangup_after=2)
    # the widget of an extension on the east PBX
    widget = await connect_widget(reactor(), WS_PORT)
    await widget.hello(user_phone="1002")
    sips = await operators_online(api, {("1001", "default"), ("1002", "east"), ("1003", "east")})
    # each extension is listed with the PBX that reported it
    assert ("1001", "east") not in {(o["sip"], o["pbx"]) for o in sips}

    # by extension: 1001 is on the default PBX, 1002 on east
    on_default = await make_call(api, sip="1001", phone="380639920011", order_id="o-multi",
                                 external_key="k-default")  # fmt: skip
    code, body = await api.post("/api/calls/extToPhone", {
        "ext_number": "1002", "phone_number": "380639920012", "order_id": "o-multi",
        "async": True,
    })  # fmt: skip
    assert code == 200, body
    on_east = body["generalCallID"]
    # by name
    named = await make_call(api, sip="1003", phone="380639920013", order_id="o-multi",
                            external_key="k-named", pbx="east")  # fmt: skip
    code, body = await api.get("/api/makeCall.json", sip="1001", phone="380639920011",
                               order_id="o-x", external_key="k-bad", pbx="west")  # fmt: skip
    assert (code, body["error"]["code"], body["error"]["field"]) == (400, "unknown_pbx", "pbx")

    for call_id, pbx in ((on_default, "default"), (on_east, "east"), (named, "east")):
        entries = await wait_final(app, call_id)
        assert words(entries) == HAPPY, (pbx, entries)
        assert {e["pbx"] for e in entries} == {pbx}
    assert await finished_call(widget) == on_east
    widget.transport.loseConnection()
    hooks = await crm.wait_for(1).addTimeout(15, reactor())
    assert on_east in {(r.fields.get("CallID")) for r in hooks}, [r.fields for r in hooks]
    # the phones of each PBX got their own calls
    assert len(sandbox.operator("1001").calls()) == 1
    assert len(east_phones.operator("1002").calls()) == 1
    assert len(east_phones.operator("1003").calls()) == 1

    code, body = await api.get("/api/orderRecords.json", order_id="o-multi")
    assert code == 200, body
    by_call = {c["call_id"]: c for c in body["calls"]}
    assert {c: by_call[c]["pbx"] for c in (on_default, on_east, named)} == {
        on_default: "default", on_east: "east", named: "east",
    }
    for call_id in (on_default, on_east, named):
        [record] = by_call[call_id]["records"]
        assert record["pbx"] == by_call[call_id]["pbx"]
        # the east PBX's recording is found in its own folder
        rec = await recording_settled(app, record["record_id"])
        assert rec["size"] > 44, rec
    code, body = await api.get("/api/callHistory.json", call_id=on_east)
    assert code == 200 and {e["pbx"] for e in body["history"]} == {"east"}
    code, body = await api.get("/api/recordList.json")
    assert sorted(r["pbx"] for r in body["records"]) == ["default", "east", "east"]

    # Call control goes to the PBX that has the call.
    east_phones.pstn.set("380639920015", answer_after=0.3, hangup_after=60)
    held = await make_call(api, sip="1002", phone="380639920015", order_id="o-ctl",
                           external_key="k-ctl")  # fmt: skip
    await wait_status(app, held, "CLIENT_PICKUP")
    code, body = await api.get("/extension/1002/current_calls/")
    assert code == 200, body
    assert [(c["call_id"], c["pbx"]) for c in body["call_list"]] == [(held, "east")]
    code, body = await api.post("/api/calls/hangupCall", {"generalCallID": held})
    assert code == 200, body
    entries = await wait_final(app, held, timeout=15)
    assert words(entries)[-1] == "FINISH" and {e["pbx"] for e in entries} == {"east"}

    # A call agi_app did not place: the east PBX's dialplan sends a caller
    # to an IVR menu; the FastAGI session is the east PBX's.
    known = {e["call_id"] for e in await app.store.history_after(0, 1000)}
    east_ami = app.pbxs.pbxs["east"].ami
    incoming = await east_ami.originate(
        "PJSIP/380639920014@pstn", context="agi-app-ivr", exten="quiet", priority=1,
        caller_id='"Caller" <380639920014>', timeout_ms=5000,
    )  # fmt: skip
    assert incoming.success

    async def incoming_call():
        ids = {e["call_id"] for e in await app.store.history_after(0, 1000)} - known
        return ids.pop() if ids else None

    incoming_id = await wait_until(incoming_call, timeout=10, what="the incoming call")
    entries = await wait_final(app, incoming_id, timeout=20)
    call = await app.store.get_call(incoming_id)
    assert (call["kind"], call["pbx"], call["final_status"]) == ("incoming", "east", "FINISH")
    assert {e["pbx"] for e in entries} == {"east"}

    # The east PBX goes away: its extensions get 503, the default PBX goes on.
    east_phones.stop_all()
    east_pbx.stop()
    east_link = app.pbxs.pbxs["east"].ami
    await wait_until(lambda: not east_link.connected, timeout=15, what="east link down")
    code, body = await api.get("/api/makeCall.json", sip="1002", phone="380639920012",
                               order_id="o-down", external_key="k-down")  # fmt: skip
    assert code == 503, body
    down_id = body["error"].get("call_id") or body.get("call_id")
    code, body = await api.get("/api/orderHistory.json", order_id="o-down")
    assert [(e["status"], e["pbx"]) for e in body["history"]] == [
        ("CALL", "east"), ("ERROR", "east"),
    ], down_id
    code, body = await api.get("/api/makeCall.json", sip="1002", phone="380639920012",
                               order_id="o-down", external_key="k-down-2", pbx="east")  # fmt: skip
    assert code == 503, body
    still = await make_call(api, sip="1001", phone="380639920011", order_id="o-after",
                            external_key="k-after")  # fmt: skip
    entries = await wait_final(app, still)
    assert words(entries) == HAPPY and {e["pbx"] for e in entries} == {"default"}
    code, health = await api.get("/health")
    assert code == 503 and health["status"] == "degraded"
    assert {n: p["connected"] for n, p in health["pbxs"].items()} == {
        "default": True, "east": False,
    }
    # each PBX's link and calls are counted apart
    assert await metric(api, "agi_app_ami_connected", pbx="default") == 1
    assert await metric(api, "agi_app_ami_connected", pbx="east") == 0
    # (east: three operator-first calls and the incoming one)
    for status, pbx, count in (("FINISH", "east", 4), ("FINISH", "default", 2),
                               ("ERROR", "east", 2), ("ERROR", "default", 0)):  # fmt: skip
        assert await metric(api, "agi_app_calls_total", final_status=status, pbx=pbx) == count
