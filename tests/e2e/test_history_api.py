"""The CRM history API end to end: the real agi_app (HTTP API, FastAGI, AMI,
store) against the sandbox Asterisk 22 and SIPp phones.

After real calls with several outcomes, every history endpoint must return
exactly what happened -- the store's own record of each call, checked against
the outcome each phone was told to produce -- in JSON and, parsed by the
contract's XML rule, in XML; the recordings download as real WAV audio
through the documented Python client; operator state follows a phone through
registering, ringing, talking and unregistering; a poller of
``callHistory?after_id=`` sees every entry once while calls run.
"""

from __future__ import annotations

import io
import json
import os
import threading
import wave
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
import pytest
import pytest_twisted
import treq
from callflow import (
    HTTP_PORT,
    app_config,
    reactor,
    recording_settled,
    start_app,
    wait_final,
    wait_for,
    wait_status,
    words,
)
from twisted.internet import defer, task, threads
from twisted.web.client import HTTPConnectionPool

from agi_app.client import ApiError, Client
from agi_app.sandbox.phones import answer, busy, no_answer

KEY = "e2e-history-key"
BASE = f"http://127.0.0.1:{HTTP_PORT}"
HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    config = app_config(
        sandbox,
        tmp_path,
        AGI_APP_HTTP_API_KEYS=KEY,
        # a short client ring time keeps CLIENT_NOANSWER quick
        AGI_APP_DIALING_CALL_TIME_TO_CLIENT="3",
    )
    application = await start_app(config)
    yield application
    await application.stop()


class Http:
    """The running app's HTTP API with the key, answers as (code, headers, bytes)."""

    def __init__(self, key: str | None = KEY):
        self.key = key
        # No keep-alive: each test starts its own server on the same port.
        self.pool = HTTPConnectionPool(reactor(), persistent=False)

    async def raw(self, method: str, url: str, params=None, body=None, headers=None):
        sent = {} if self.key is None else {"X-API-Key": self.key}
        sent.update(headers or {})
        if not url.startswith("http"):
            url = BASE + url
        response = await treq.request(
            method, url, params=params, data=body, headers=sent, pool=self.pool
        )
        content = await response.content()
        return response.code, response.headers, content

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        code, _, content = await self.raw("GET", path, params=params or None)
        return code, json.loads(content)


@pytest.fixture
def http():
    return Http()


@pytest.fixture
def client():
    return Client(BASE, KEY, timeout=10)


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """Run a blocking call of the Python client off the reactor (which serves it)."""
    return threads.deferToThread(fn, *args, **kwargs)


async def make_call(http: Http, **params: str) -> str:
    code, body = await http.get("/api/makeCall.json", **params)
    assert code == 200, body
    return body["call_id"]


async def eventually(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0, every: float = 0.1
) -> Any:
    """Await ``check()`` until it returns something truthy."""
    waited = 0.0
    while True:
        value = await check()
        if value:
            return value
        if waited > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await task.deferLater(reactor(), every, lambda: None)
        waited += every


# -- JSON and XML carry the same data ------------------------------------------------------


def from_xml(element: ET.Element) -> Any:
    """Read an answer back by the contract's XML rule: an element whose
    children are all ``<item>`` is a list, other children make an object,
    no children is text, an empty element is null."""
    children = list(element)
    if not children:
        return element.text
    if all(child.tag == "item" for child in children):
        return [from_xml(child) for child in children]
    assert len({c.tag for c in children}) == len(children), f"repeated key in <{element.tag}>"
    return {child.tag: from_xml(child) for child in children}


def as_xml_sees_it(value: Any) -> Any:
    """A JSON value as :func:`from_xml` can give it back: scalars become text,
    empty text/lists/objects and null all become an empty element."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return [as_xml_sees_it(v) for v in value] or None
    if isinstance(value, dict):
        return {k: as_xml_sees_it(v) for k, v in value.items()} or None
    return value or None


async def same_in_xml(http: Http, path: str, params: dict[str, Any], body: Any) -> None:
    """``path``.xml with ``params`` answers the same data as ``body`` (its JSON answer)."""
    code, headers, raw = await http.raw("GET", path + ".xml", params=params or None)
    assert code == 200, (path, params, raw)
    assert headers.getRawHeaders("content-type") == ["application/xml; charset=utf-8"]
    root = ET.fromstring(raw)
    assert root.tag == "response"
    assert from_xml(root) == as_xml_sees_it(body), (path, params)


async def get_both(http: Http, path: str, **params: Any) -> Any:
    """The JSON answer of ``path`` (200 expected), after checking its XML twin."""
    code, body = await http.get(path + ".json", **params)
    assert code == 200, (path, params, body)
    await same_in_xml(http, path, params, body)
    return body


# -- the OpenAPI document describes the real answers ----------------------------------------


async def schema_checker(http: Http) -> Callable[[str, dict], None]:
    code, document = await http.get("/openapi.json")
    assert code == 200

    def check(path: str, body: dict) -> None:
        schema = dict(document["paths"][path]["get"]["responses"]["200"]["content"]
                      ["application/json"]["schema"])  # fmt: skip
        schema["components"] = document["components"]
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)

    return check


# -- what happened, and the history endpoints ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_endpoints_tell_exactly_what_happened(sandbox, app, http, client, tmp_path):
    """Four real calls in two orders, every outcome different; then every
    history endpoint, in JSON and XML, against the store's record."""
    check_schema = await schema_checker(http)
    sandbox.phones.start("1000", answer(after=0.3))
    sandbox.phones.start("1001", busy())
    sandbox.phones.start("1002", answer(after=0.2))
    sandbox.phones.offline("1003")
    sandbox.pstn.set("380639930001", answer_after=0.3, hangup_after=3)
    sandbox.pstn.set("380639930003", "no_answer")
    placed = {
        # order A: the operator was busy, the retry talked (and was recorded)
        "busy": dict(sip="1001", phone="380639930002", order_id="hist-A", external_key="h-1"),
        "finish": dict(sip="1000", phone="380639930001", order_id="hist-A", external_key="h-2"),
        # order B: the client did not answer; the other operator was offline
        "noanswer": dict(sip="1002", phone="380639930003", order_id="hist-B",
                         external_key="h-3", playback_waiting="0"),
        "offline": dict(sip="1003", phone="380639930004", order_id="hist-B", external_key="h-4"),
    }  # fmt: skip
    ids = {name: await make_call(http, **params) for name, params in placed.items()}
    finals = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, call_id)) for call_id in ids.values()]
    )
    truth = dict(zip(ids, finals, strict=True))  # the store's own entries per call
    assert words(truth["finish"]) == HAPPY
    assert words(truth["busy"]) == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    assert words(truth["noanswer"]) == [*HAPPY[:4], "CLIENT_NOANSWER"]
    assert words(truth["offline"])[0] == "CALL"
    assert words(truth["offline"])[-1] == "OPERATOR_OFFLINE"
    # The recordings the store holds, once their files are closed: only the
    # conversation's.  MixMonitor starts before the client is dialled and
    # records only while bridged, so the call whose client never answered
    # has no recording (its header-only file is removed); calls that never
    # reached the client have none either.
    stored = {}
    for order in ("hist-A", "hist-B"):
        for call in await app.store.order_calls(order):
            stored[call["call_id"]] = [
                await recording_settled(app, r["record_id"]) for r in call["records"]
            ]
    records = {name: stored[call_id] for name, call_id in ids.items()}
    assert records["busy"] == records["offline"] == records["noanswer"] == []
    [recording] = records["finish"]

    # callHistory of each call: exactly its entries, every field
    for name, call_id in ids.items():
        body = await get_both(http, "/api/callHistory", call_id=call_id)
        check_schema("/api/callHistory", body)
        assert body == {"history": truth[name], "last_id": truth[name][-1]["id"]}, name
        order = placed[name]["order_id"]
        assert {e["order_id"] for e in body["history"]} == {order}
        times = [e["time"] for e in body["history"]]
        assert times == sorted(times), name
        # and only what came after a cursor inside it
        middle = truth[name][1]["id"]
        tail = await get_both(http, "/api/callHistory", call_id=call_id, after_id=middle)
        assert tail["history"] == truth[name][2:]

    # orderHistory: flat in id order, grouped per call in the order the calls
    # began, and the two agree
    for order, names in {"hist-A": ["busy", "finish"], "hist-B": ["noanswer", "offline"]}.items():
        every = sorted((e for n in names for e in truth[n]), key=lambda e: e["id"])
        flat = await get_both(http, "/api/orderHistory", order_id=order)
        check_schema("/api/orderHistory", flat)
        assert flat == {"order_id": order, "history": every}
        grouped = await get_both(http, "/api/orderHistory", order_id=order, group_by_call=1)
        check_schema("/api/orderHistory", grouped)
        began = sorted(names, key=lambda n: truth[n][0]["id"])
        assert grouped == {
            "order_id": order,
            "calls": [{"call_id": ids[n], "history": truth[n]} for n in began],
        }
        regrouped = sorted((e for c in grouped["calls"] for e in c["history"]),
                           key=lambda e: e["id"])  # fmt: skip
        assert regrouped == flat["history"]

    # orderRecords: the calls with their outcome and their recordings
    def api_record(name: str, rec: dict) -> dict:
        return {
            "record_id": rec["record_id"], "call_id": ids[name],
            "order_id": placed[name]["order_id"], "external_key": placed[name]["external_key"],
            "sip": placed[name]["sip"], "phone": placed[name]["phone"],
            "created_at": rec["created_at"], "duration": rec["duration"], "size": rec["size"],
            "pbx": "default", "url": f"{BASE}/records/{rec['record_id']}",
        }  # fmt: skip

    for order, names in {"hist-A": ["busy", "finish"], "hist-B": ["noanswer", "offline"]}.items():
        body = await get_both(http, "/api/orderRecords", order_id=order)
        check_schema("/api/orderRecords", body)
        assert body == {
            "order_id": order,
            "calls": [
                {
                    "call_id": ids[n], "external_key": placed[n]["external_key"],
                    "sip": placed[n]["sip"], "phone": placed[n]["phone"],
                    "created_at": truth[n][0]["time"], "final_status": truth[n][-1]["status"],
                    "pbx": "default", "records": [api_record(n, r) for r in records[n]],
                }
                for n in names  # created in this order
            ],
        }  # fmt: skip
    # recording begins after the operator's pickup, before the client is dialled
    assert truth["finish"][2]["time"] <= recording["created_at"] <= truth["finish"][3]["time"]

    # recordList: the one recording, paged
    listed = sorted(
        (api_record(n, r) for n in ids for r in records[n]), key=lambda r: -r["record_id"]
    )
    body = await get_both(http, "/api/recordList", page=1, per_page=20)
    check_schema("/api/recordList", body)
    assert body == {"page": 1, "per_page": 20, "total": 1, "records": listed}
    assert len(listed) == 1
    body = await get_both(http, "/api/recordList", page=1, per_page=1)
    assert body == {"page": 1, "per_page": 1, "total": 1, "records": listed}
    assert (await get_both(http, "/api/recordList", page=2, per_page=1))["records"] == []

    # callHistory after a cursor: every call's entries in id order, pageable
    everything = sorted((e for entries in truth.values() for e in entries), key=lambda e: e["id"])
    body = await get_both(http, "/api/callHistory", after_id=0, limit=1000)
    assert body == {"history": everything, "last_id": everything[-1]["id"]}
    cut = everything[7]["id"]
    body = await get_both(http, "/api/callHistory", after_id=cut, limit=5)
    assert body == {"history": everything[8:13], "last_id": everything[12]["id"]}
    paged, last = [], 0
    while True:
        body = await get_both(http, "/api/callHistory", after_id=last, limit=3)
        if not body["history"]:
            assert body["last_id"] == last
            break
        paged += body["history"]
        last = body["last_id"]
    assert paged == everything

    # the recording's url is real audio of the conversation's length
    expected_record = api_record("finish", recording)
    code, headers, audio = await http.raw("GET", expected_record["url"])
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["audio/wav"]
    with open(recording["path"], "rb") as f:
        assert audio == f.read()
    assert len(audio) == recording["size"]
    with wave.open(io.BytesIO(audio)) as w:
        seconds = w.getnframes() / w.getframerate()
        frames = w.readframes(w.getnframes())
    assert abs(seconds - recording["duration"]) < 0.5
    assert 1.5 <= seconds <= 4.5, seconds  # the client hung up after 3 s of talk
    assert any(frames[i] for i in range(0, len(frames), 2)), "the recording is silent"
    # and of these calls' files only the conversation's is left: the
    # unanswered call's header-only file was removed once its channel was gone
    folder = os.path.dirname(recording["path"])

    def files_of_these_calls() -> list[str]:
        return sorted(f for f in os.listdir(folder) if any(i in f for i in ids.values()))

    await wait_for(
        lambda: files_of_these_calls() == [os.path.basename(recording["path"])],
        what=f"only the conversation's recording in {folder}: {files_of_these_calls()}",
    )
    # the link needs the key like the API
    code, _, content = await Http(key=None).raw("GET", expected_record["url"])
    assert code == 401 and not content.startswith(b"RIFF")

    # the documented Python client sees the same, and downloads the same audio
    assert await in_thread(client.order_history, "hist-A") == {
        "order_id": "hist-A", "history": sorted(truth["busy"] + truth["finish"],
                                                key=lambda e: e["id"]),
    }  # fmt: skip
    assert (await in_thread(client.order_history, "hist-B", group_by_call=True))["calls"][0][
        "history"
    ] == truth["noanswer"]
    assert (await in_thread(client.record_list))["records"] == listed
    assert (await in_thread(client.order_records, "hist-A"))["calls"][1]["records"] == [
        expected_record
    ]
    assert await in_thread(client.call_history, ids["offline"]) == {
        "history": truth["offline"], "last_id": truth["offline"][-1]["id"],
    }  # fmt: skip
    target = tmp_path / "downloaded.wav"
    size = await in_thread(client.download_record, recording["record_id"], target)
    assert size == len(audio) and target.read_bytes() == audio
    with pytest.raises(ApiError) as err:
        await in_thread(client.order_history, "no-such-order")
    assert err.value.status == 404 and err.value.code == "unknown_order"


# -- operators ---------------------------------------------------------------------------------


async def sip_state(http: Http, sip: str) -> dict | None:
    """The sipList entry of ``sip`` (paging through the whole list)."""
    page = 1
    while True:
        code, body = await http.get("/api/sipList.json", page=page, per_page=3)
        assert code == 200, body
        for entry in body["sips"]:
            if entry["sip"] == sip:
                return entry
        if page * body["per_page"] >= body["total"]:
            return None
        page += 1


async def becomes(http: Http, sip: str, status: str, what: str) -> dict:
    """Wait until sipList shows ``sip`` in ``status``; returns its entry."""

    async def check():
        entry = await sip_state(http, sip)
        return entry if entry and entry["status"] == status else None

    return await eventually(check, f"{sip} {status} ({what})")


@pytest_twisted.ensureDeferred
async def test_sip_list_follows_a_phone_and_operator_history_lists_the_changes(
    sandbox, app, http, client
):
    """A SIPp phone registers, rings, talks, hangs up and unregisters: sipList
    shows each state while it lasts, operatorHistory lists the changes newest
    first, and the ``since`` of sipList is the time of the last change."""
    check_schema = await schema_checker(http)
    sip = "1004"
    await becomes(http, sip, "offline", "not registered at start")
    phone = sandbox.phones.start(sip, answer(after=2.0))
    await becomes(http, sip, "online", "registered")
    sandbox.pstn.set("380639930010", answer_after=0.2, hangup_after=2)
    call_id = await make_call(
        http, sip=sip, phone="380639930010", order_id="sip-1", external_key="s-1",
        playback_waiting="0",
    )  # fmt: skip
    await phone.wait_for_call(reactor=reactor())
    await becomes(http, sip, "inuse", "ringing")
    entries = await app.store.statuses(call_id)
    assert "OPERATOR_PICKUP" not in words(entries), "the phone answered before inuse was seen"
    await wait_status(app, call_id, "CLIENT_PICKUP")
    assert (await sip_state(http, sip))["status"] == "inuse", "talking"
    assert words(await wait_final(app, call_id)) == HAPPY
    await becomes(http, sip, "online", "hung up")
    await threads.deferToThread(phone.unregister)
    last = await becomes(http, sip, "offline", "unregistered")

    body = await get_both(http, "/api/operatorHistory", sip=sip)
    check_schema("/api/operatorHistory", body)
    changes = [h["status"] for h in body["history"]]
    assert changes == ["offline", "online", "inuse", "online", "offline"], body
    times = [h["time"] for h in body["history"]]
    assert times == sorted(times, reverse=True)
    assert body["total"] == 5 and {h["sip"] for h in body["history"]} == {sip}
    assert last["since"] == times[0]
    # the same changes in the whole history, among the other operators'
    everyone = await get_both(http, "/api/operatorHistory", per_page=500)
    mine = [h for h in everyone["history"] if h["sip"] == sip]
    assert mine == body["history"]
    assert everyone["total"] == len(everyone["history"])
    assert [h["time"] for h in everyone["history"]] == sorted(
        (h["time"] for h in everyone["history"]), reverse=True
    )
    # paging and filters
    second = await get_both(http, "/api/operatorHistory", sip=sip, page=2, per_page=2)
    assert second["history"] == body["history"][2:4]
    offline = await get_both(http, "/api/sipList", status="offline", per_page=500)
    check_schema("/api/sipList", offline)
    assert sip in [s["sip"] for s in offline["sips"]]
    assert {s["status"] for s in offline["sips"]} == {"offline"}
    online = await get_both(http, "/api/sipList", status="online,inuse", per_page=500)
    assert sip not in [s["sip"] for s in online["sips"]]
    # what the Python client reads is the same
    assert (await in_thread(client.operator_history, sip))["history"] == body["history"]
    assert (await in_thread(client.sip_list, per_page=500, status=["offline"])) == offline
    # trunks are not operators
    assert await sip_state(http, "pstn") is None


# -- polling with the cursor while calls run ----------------------------------------------------


class _Stopped(Exception):
    pass


@pytest_twisted.ensureDeferred
async def test_polling_call_history_while_calls_run_misses_and_repeats_nothing(
    sandbox, app, http, client
):
    """Two CRMs poll ``callHistory?after_id=`` from the first call to the last
    entry -- the Python client's ``poll_history`` (3 per page, in a thread)
    and plain HTTP (2 per page) -- while eight calls with different outcomes
    run, overlapping; each must see the store's history exactly once, in order."""
    calls_over = threading.Event()

    def sleep(seconds: float) -> None:
        # poll_history sleeps only when it has caught up: once the calls are
        # over, the first time it has caught up ends it
        if calls_over.is_set():
            raise _Stopped
        calls_over.wait(seconds)

    by_client: list[dict] = []

    def follow() -> None:
        try:
            for entry in client.poll_history(after_id=0, interval=0.05, limit=3, sleep=sleep):
                by_client.append(entry)
        except _Stopped:
            pass

    by_http: list[dict] = []
    while_running = [0]

    async def poll_http() -> None:
        last = 0
        while True:
            over = calls_over.is_set()
            code, body = await http.get("/api/callHistory.json", after_id=last, limit=2)
            assert code == 200, body
            by_http.extend(body["history"])
            if not over:
                while_running[0] += len(body["history"])
            assert body["last_id"] == (body["history"][-1]["id"] if body["history"] else last)
            last = body["last_id"]
            if not body["history"]:
                if over:
                    return
                await task.deferLater(reactor(), 0.05, lambda: None)

    client_poller = in_thread(follow)
    http_poller = defer.ensureDeferred(poll_http())

    sandbox.phones.start("1005", answer(after=0.2))
    sandbox.phones.start("1006", busy())
    sandbox.phones.start("1007", answer(after=0.2))
    sandbox.phones.start("1008", answer(after=0.2))
    sandbox.phones.start("1009", no_answer())
    for number, behaviour in [
        ("380639930021", {"hangup_after": 1.5}),
        ("380639930023", {"hangup_after": 1.0}),
        ("380639930025", {"hangup_after": 0.5}),
    ]:
        sandbox.pstn.set(number, answer_after=0.2, **behaviour)
    sandbox.pstn.set("380639930022", "busy")
    sandbox.pstn.set("380639930024", "no_answer")
    quick = {"playback_waiting": "0"}
    placed = []

    async def place(sip: str, phone: str, **extra: str) -> str:
        n = len(placed) + 1
        call_id = await make_call(
            http, sip=sip, phone=phone, order_id=f"poll-{n}", external_key=f"p-{n}", **extra
        )
        placed.append(call_id)
        return call_id

    first_wave = [
        await place("1005", "380639930021", **quick),  # FINISH
        await place("1006", "380639930026"),  # OPERATOR_BUSY
        await place("1007", "380639930022", **quick),  # CLIENT_BUSY
        await place("1008", "380639930024", **quick),  # CLIENT_NOANSWER (3 s)
        await place("1009", "380639930027", call_time_to_ext="2"),  # OPERATOR_NOANSWER
    ]
    # the second wave starts as the first calls end, on the freed phones
    await wait_final(app, first_wave[0])
    await wait_final(app, first_wave[2])
    second_wave = [
        await place("1005", "380639930023", **quick),  # FINISH
        await place("1007", "380639930025", **quick),  # FINISH
        await place("1006", "380639930028"),  # OPERATOR_BUSY
    ]
    finals = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, c)) for c in first_wave + second_wave]
    )
    assert sorted(words(h)[-1] for h in finals) == sorted([
        "FINISH", "OPERATOR_BUSY", "CLIENT_BUSY", "CLIENT_NOANSWER", "OPERATOR_NOANSWER",
        "FINISH", "FINISH", "OPERATOR_BUSY",
    ])  # fmt: skip
    calls_over.set()
    await http_poller
    await client_poller

    everything = await app.store.history_after(0, 1000)
    assert len(everything) == sum(len(h) for h in finals)
    assert by_http == everything, "the HTTP poller missed or repeated entries"
    assert by_client == everything, "poll_history missed or repeated entries"
    assert {e["call_id"] for e in everything} == set(placed)
    # the polling really overlapped the calls
    assert while_running[0] >= len(everything) // 2, (while_running[0], len(everything))


# -- bad input ----------------------------------------------------------------------------------

BAD = [
    # (path, query, status, error code, field)
    ("/api/recordList", "page=0", 400, "invalid_page", "page"),
    ("/api/recordList", "page=abc", 400, "invalid_page", "page"),
    ("/api/recordList", "page=-1", 400, "invalid_page", "page"),
    ("/api/recordList", "per_page=0", 400, "invalid_per_page", "per_page"),
    ("/api/recordList", "per_page=10000", 400, "invalid_per_page", "per_page"),
    ("/api/recordList", "per_page=2.5", 400, "invalid_per_page", "per_page"),
    ("/api/orderRecords", "", 400, "missing_order_id", "order_id"),
    ("/api/orderRecords", "order_id=a%2Fb", 400, "invalid_order_id", "order_id"),
    ("/api/orderRecords", "order_id=" + "x" * 65, 400, "invalid_order_id", "order_id"),
    ("/api/orderRecords", "order_id=nobody", 404, "unknown_order", "order_id"),
    ("/api/orderHistory", "order_id=o%0D%0AAction%3A+Hangup", 400, "invalid_order_id", "order_id"),
    ("/api/orderHistory", "order_id=o-1&group_by_call=2", 400, "invalid_group_by_call",
     "group_by_call"),
    ("/api/orderHistory", "order_id=nobody", 404, "unknown_order", "order_id"),
    ("/api/callHistory", "after_id=-1", 400, "invalid_after_id", "after_id"),
    ("/api/callHistory", "after_id=1e3", 400, "invalid_after_id", "after_id"),
    ("/api/callHistory", "after_id=1&after_id=2", 400, "repeated_parameter", "after_id"),
    ("/api/callHistory", "limit=0", 400, "invalid_limit", "limit"),
    ("/api/callHistory", "limit=1001", 400, "invalid_limit", "limit"),
    ("/api/callHistory", "call_id=a%20b", 400, "invalid_call_id", "call_id"),
    ("/api/callHistory", "call_id=no-such-call", 404, "unknown_call", "call_id"),
    ("/api/sipList", "status=away", 400, "invalid_status", "status"),
    ("/api/sipList", "page=0", 400, "invalid_page", "page"),
    ("/api/sipList", "per_page=501", 400, "invalid_per_page", "per_page"),
    ("/api/operatorHistory", "sip=PJSIP%2F1000", 400, "invalid_sip", "sip"),
    ("/api/operatorHistory", "per_page=abc", 400, "invalid_per_page", "per_page"),
    ("/records/abc", "", 400, "invalid_record_id", "record_id"),
    ("/records/99999", "", 404, "unknown_record", None),
]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_bad_input_to_every_endpoint_is_a_clear_4xx(sandbox, app, http):
    """Wrong values, a missing or wrong key, a wrong method, a bad body: the
    right 4xx with a JSON (or XML) error naming the parameter, never a 5xx."""
    for path, query, status, code, field in BAD:
        suffixes = [".json", ".xml"] if path.startswith("/api/") else [""]
        for suffix in suffixes:
            url = f"{path}{suffix}?{query}" if query else path + suffix
            got, headers, raw = await http.raw("GET", url)
            assert got == status, (url, raw)
            if suffix == ".xml":
                error = from_xml(ET.fromstring(raw))["error"]
            else:
                error = json.loads(raw)["error"]
            assert error["code"] == code, (url, error)
            assert error.get("field") == field, (url, error)
            assert error["message"] and "Traceback" not in error["message"], (url, error)
    # the same rules for a POSTed form or JSON body
    got, _, raw = await http.raw("POST", "/api/recordList.json", body={"per_page": "0"})
    assert got == 400 and json.loads(raw)["error"]["field"] == "per_page"
    got, _, raw = await http.raw(
        "POST", "/api/callHistory", body=json.dumps({"limit": 5000}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert got == 400 and json.loads(raw)["error"]["field"] == "limit"
    got, _, raw = await http.raw(
        "POST", "/api/orderHistory", body=b'{"order_id": ',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert got == 400 and json.loads(raw)["error"]["code"] == "invalid_body"
    got, _, raw = await http.raw("POST", "/api/sipList", body={"status": "x" * 70_000})
    assert got == 413 and json.loads(raw)["error"]["code"] == "body_too_large"
    # the key: missing or wrong is 401 everywhere; the query parameter works too
    for path in (
        "/api/recordList",
        "/api/orderRecords",
        "/api/orderHistory",
        "/api/callHistory",
        "/api/sipList",
        "/api/operatorHistory",
        "/records/1",
    ):
        for key in (None, "wrong-key", KEY[:-1]):
            got, _, raw = await Http(key=key).raw("GET", path)
            assert got == 401, (path, key, raw)
            assert json.loads(raw)["error"]["code"] == "unauthorized"
    got, _, raw = await Http(key=None).raw("GET", f"/api/sipList.json?api_key={KEY}")
    assert got == 200, raw
    # paths and methods
    got, _, raw = await http.raw("GET", "/api/recordLists")
    assert got == 404 and json.loads(raw)["error"]["code"] == "not_found"
    got, headers, raw = await http.raw("DELETE", "/api/orderHistory.json?order_id=o-1")
    assert got == 405 and headers.getRawHeaders("allow") == ["GET, HEAD, POST"]
    got, _, raw = await http.raw("GET", "/API/SIPLIST.XML")
    assert got == 200 and ET.fromstring(raw).tag == "response"
