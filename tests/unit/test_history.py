"""The CRM history endpoints, recording downloads and the OpenAPI document,
through a real Site over memory and a real store: on a temporary SQLite file
and on PostgreSQL (every test that uses ``store`` runs on both)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from urllib.parse import quote

import jsonschema
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from agi_app.store import Store, store_at
from agi_app.web import Router, build_site, history, openapi
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"
PUBLIC = "https://127.0.0.1:8443/"
KEY = "k-123"
AUTH = {"X-API-Key": KEY}
T0 = 1795640677.123  # 2026-11-25T21:04:37.123Z


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(T0)
    return c


@pytest.fixture
def store(store_location: str, clock: task.Clock):
    s = store_at(store_location, _reactor(), clock=clock)
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


@pytest.fixture
def document() -> dict:
    return openapi.build_document([history])


@pytest.fixture
def http(store: Store, document: dict):
    router = Router()
    history.add_routes(router, store, public_url=PUBLIC)
    openapi.add_routes(router, document)
    return MemoryHTTP(build_site(router, api_keys=(KEY,), static_dir=None, clock=_reactor()),
                      _reactor())


async def get(http: MemoryHTTP, path: str, headers=AUTH):
    response = await http.get(BASE + path, headers=headers)
    raw = await response.content()
    return response, raw


async def get_json(http: MemoryHTTP, path: str, headers=AUTH):
    response, raw = await get(http, path, headers)
    return response.code, json.loads(raw)


async def new_call(store, call_id, order_id="o-1", sip="1000", external_key=None):
    call, _ = await store.create_call(
        call_id=call_id, kind="makeCall", sip=sip, phone="380639920000", order_id=order_id,
        external_key=external_key, params={"sip": sip},
    )
    return call


# -- schema checks ---------------------------------------------------------------


def check_schema(document: dict, path: str, status: int, body: dict, method: str = "get"):
    """Validate an answer against the document's schema for it."""
    response = document["paths"][path][method]["responses"][str(status)]
    schema = dict(response["content"]["application/json"]["schema"])
    schema["components"] = document["components"]
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


def test_document_is_well_formed(document: dict):
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert method in {"get", "post", "put", "delete"}, path
            assert "200" in op["responses"] or "201" in op["responses"] or "204" in op["responses"]
    with pytest.raises(ValueError):
        openapi.build_document([history, history])


@pytest_twisted.ensureDeferred
async def test_openapi_json_is_served_without_a_key(http, document):
    code, body = await get_json(http, "/openapi.json", headers={})
    assert code == 200 and body == document
    assert set(body["paths"]) >= {
        "/api/recordList", "/api/orderRecords", "/api/orderHistory", "/api/callHistory",
        "/api/sipList", "/api/operatorHistory", "/records/{record_id}", "/openapi.json",
    }


# -- recordList ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_record_list_pages_newest_first(http, store, clock, document, tmp_path):
    await new_call(store, "c1", external_key="e1")
    for i in range(7):
        clock.advance(1)
        await store.add_recording(call_id="c1", path=str(tmp_path / f"{i}.wav"), size=i)
    code, body = await get_json(http, "/api/recordList.json?page=2&per_page=3")
    assert code == 200
    check_schema(document, "/api/recordList", 200, body)
    assert (body["page"], body["per_page"], body["total"]) == (2, 3, 7)
    assert [r["size"] for r in body["records"]] == [3, 2, 1]
    first = body["records"][0]
    assert first == {
        "record_id": first["record_id"],
        "call_id": "c1",
        "order_id": "o-1",
        "external_key": "e1",
        "sip": "1000",
        "phone": "380639920000",
        "created_at": "2026-11-25T21:04:41.123Z",
        "duration": None,
        "size": 3,
        "pbx": "default",
        "url": f"https://127.0.0.1:8443/records/{first['record_id']}",
    }
    code, body = await get_json(http, "/api/recordList")
    assert (body["page"], body["per_page"], len(body["records"])) == (1, 20, 7)
    code, body = await get_json(http, "/api/recordList?page=9&per_page=500")
    assert code == 200 and body["records"] == [] and body["total"] == 7


@pytest.mark.parametrize(
    "query, field",
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=99999999999999999999", "page"),
        ("per_page=0", "per_page"),
        ("per_page=501", "per_page"),
        ("per_page=%EF%BC%91", "per_page"),  # a full-width digit
    ],
)
@pytest_twisted.ensureDeferred
async def test_record_list_rejects_bad_paging(http, document, query, field):
    code, body = await get_json(http, f"/api/recordList?{query}")
    assert code == 400 and body["error"]["field"] == field
    check_schema(document, "/api/recordList", 400, body)


@pytest_twisted.ensureDeferred
async def test_post_form_and_json_work_like_get(http):
    response = await http.post(BASE + "/api/recordList", json={"page": 1, "per_page": 5},
                               headers=AUTH)
    body = json.loads(await response.content())
    assert response.code == 200 and body["per_page"] == 5
    response = await http.post(BASE + "/api/recordList", data={"per_page": "7"}, headers=AUTH)
    assert json.loads(await response.content())["per_page"] == 7


@pytest_twisted.ensureDeferred
async def test_history_needs_the_key(http):
    for path in ("/api/recordList", "/api/callHistory", "/records/1", "/api/sipList.xml"):
        response, _ = await get(http, path, headers={})
        assert response.code == 401, path


# -- orderRecords / orderHistory ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_order_records(http, store, clock, document, tmp_path):
    await new_call(store, "a", external_key="ea")
    clock.advance(1)
    await new_call(store, "b")
    await new_call(store, "elsewhere", order_id="o-2")
    await store.add_status("a", "OPERATOR_NOANSWER")
    rec = await store.add_recording(call_id="b", path=str(tmp_path / "b.wav"), duration=3.5)
    code, body = await get_json(http, "/api/orderRecords.json?order_id=o-1")
    assert code == 200
    check_schema(document, "/api/orderRecords", 200, body)
    assert body["order_id"] == "o-1"
    assert [c["call_id"] for c in body["calls"]] == ["a", "b"]
    assert body["calls"][0] == {
        "call_id": "a",
        "external_key": "ea",
        "sip": "1000",
        "phone": "380639920000",
        "created_at": "2026-11-25T21:04:37.123Z",
        "final_status": "OPERATOR_NOANSWER",
        "pbx": "default",
        "records": [],
    }
    assert body["calls"][1]["final_status"] is None
    assert [r["record_id"] for r in body["calls"][1]["records"]] == [rec["record_id"]]
    assert body["calls"][1]["records"][0]["duration"] == 3.5

    code, body = await get_json(http, "/api/orderRecords?order_id=nothing-here")
    assert code == 404 and body["error"]["code"] == "unknown_order"
    check_schema(document, "/api/orderRecords", 404, body)
    for query, error in [("", "missing_order_id"), ("order_id=a%2Fb", "invalid_order_id"),
                         ("order_id=" + "x" * 65, "invalid_order_id")]:
        code, body = await get_json(http, f"/api/orderRecords?{query}")
        assert code == 400 and body["error"]["code"] == error
        assert body["error"]["field"] == "order_id"


@pytest_twisted.ensureDeferred
async def test_order_history_flat_and_grouped(http, store, document):
    await new_call(store, "a")
    await new_call(store, "b")
    await store.add_status("a", "OPERATOR_CALLTO")
    await store.add_status("b", "OPERATOR_CALLTO")
    await store.add_status("a", "OPERATOR_BUSY", "486 Busy Here")
    code, flat = await get_json(http, "/api/orderHistory.json?order_id=o-1")
    assert code == 200
    check_schema(document, "/api/orderHistory", 200, flat)
    assert [(e["call_id"], e["status"]) for e in flat["history"]] == [
        ("a", "CALL"), ("b", "CALL"), ("a", "OPERATOR_CALLTO"), ("b", "OPERATOR_CALLTO"),
        ("a", "OPERATOR_BUSY"),
    ]
    assert flat["history"][-1]["detail"] == "486 Busy Here"
    assert set(flat["history"][0]) == {
        "id", "call_id", "order_id", "status", "time", "detail", "pbx",
    }

    code, grouped = await get_json(http, "/api/orderHistory?order_id=o-1&group_by_call=1")
    check_schema(document, "/api/orderHistory", 200, grouped)
    assert grouped["order_id"] == "o-1"
    assert [c["call_id"] for c in grouped["calls"]] == ["a", "b"]
    assert [e["status"] for e in grouped["calls"][0]["history"]] == [
        "CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY",
    ]
    code, same = await get_json(http, "/api/orderHistory?order_id=o-1&group_by_call=0")
    assert same == flat

    response, raw = await get(http, "/api/orderHistory.xml?order_id=o-1&group_by_call=1")
    root = ET.fromstring(raw)
    calls = root.find("calls").findall("item")
    assert [c.findtext("call_id") for c in calls] == ["a", "b"]
    statuses = [i.findtext("status") for i in calls[0].find("history").findall("item")]
    assert statuses == ["CALL", "OPERATOR_CALLTO", "OPERATOR_BUSY"]
    assert calls[1].find("history/item/detail").text is None  # null: empty element

    code, body = await get_json(http, "/api/orderHistory?order_id=o-1&group_by_call=2")
    assert code == 400 and body["error"]["field"] == "group_by_call"
    code, body = await get_json(http, "/api/orderHistory?order_id=unknown")
    assert code == 404 and body["error"]["code"] == "unknown_order"


# -- callHistory ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_call_history_of_one_call(http, store, document):
    await new_call(store, "a")
    await new_call(store, "b")
    await store.add_status("a", "OPERATOR_CALLTO")
    code, body = await get_json(http, "/api/callHistory.json?call_id=a")
    assert code == 200
    check_schema(document, "/api/callHistory", 200, body)
    assert [e["status"] for e in body["history"]] == ["CALL", "OPERATOR_CALLTO"]
    assert body["last_id"] == body["history"][-1]["id"]
    code, body = await get_json(http, "/api/callHistory?call_id=zzz")
    assert code == 404 and body["error"]["code"] == "unknown_call"
    code, body = await get_json(http, "/api/callHistory?call_id=a,b")
    assert code == 400 and body["error"]["field"] == "call_id"


@pytest.mark.parametrize(
    "query, field",
    [("after_id=-1", "after_id"), ("after_id=x", "after_id"), ("limit=0", "limit"),
     ("limit=1001", "limit"), ("after_id=1&after_id=2", "after_id")],
)
@pytest_twisted.ensureDeferred
async def test_call_history_rejects_bad_cursor(http, query, field):
    code, body = await get_json(http, f"/api/callHistory?{query}")
    assert code == 400 and body["error"]["field"] == field


@pytest_twisted.ensureDeferred
async def test_call_history_cursor(http, store):
    for c in ("a", "b", "c"):
        await new_call(store, c)
    code, body = await get_json(http, "/api/callHistory")
    assert [e["call_id"] for e in body["history"]] == ["a", "b", "c"]
    ids = [e["id"] for e in body["history"]]
    code, body = await get_json(http, f"/api/callHistory?after_id={ids[0]}&limit=1")
    assert [e["id"] for e in body["history"]] == [ids[1]] and body["last_id"] == ids[1]
    code, body = await get_json(http, f"/api/callHistory?after_id={ids[-1]}")
    assert body == {"history": [], "last_id": ids[-1]}
    code, body = await get_json(http, "/api/callHistory?after_id=9999999")
    assert body == {"history": [], "last_id": 9999999}


@pytest_twisted.ensureDeferred
async def test_polling_over_http_while_calls_progress(http, store):
    """A CRM polling with last_id sees every entry exactly once."""
    seen: list[int] = []
    last = 0
    written = 0
    for round_ in range(15):
        c = f"p{round_}"
        writes = [defer.ensureDeferred(new_call(store, c))]  # queued before the statuses
        writes += [store.add_status(c, s) for s in ("OPERATOR_CALLTO", "OPERATOR_PICKUP")]
        written += 3
        poll = get_json(http, f"/api/callHistory?after_id={last}&limit=2")
        code, body = await poll
        seen += [e["id"] for e in body["history"]]
        last = body["last_id"]
        await defer.gatherResults(writes)
    while True:
        code, body = await get_json(http, f"/api/callHistory?after_id={last}&limit=4")
        if not body["history"]:
            break
        seen += [e["id"] for e in body["history"]]
        last = body["last_id"]
    assert len(seen) == written == len(set(seen)) and seen == sorted(seen)


# -- operators ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sip_list(http, store, clock, document):
    await store.set_operator_status("1000", "online")
    await store.set_operator_status("1001", "inuse")
    await store.set_operator_status("1002", "offline")
    clock.advance(5)
    await store.set_operator_status("1003", "online")
    code, body = await get_json(http, "/api/sipList.json")
    assert code == 200
    check_schema(document, "/api/sipList", 200, body)
    assert body["total"] == 4
    assert [s["sip"] for s in body["sips"]] == ["1000", "1001", "1002", "1003"]
    assert body["sips"][3] == {
        "sip": "1003", "status": "online", "since": "2026-11-25T21:04:42.123Z", "pbx": "default",
    }
    code, body = await get_json(http, "/api/sipList?status=online,offline&per_page=2&page=1")
    assert body["total"] == 3 and [s["sip"] for s in body["sips"]] == ["1000", "1002"]
    code, body = await get_json(http, "/api/sipList?status=ONLINE&status=inuse")
    assert [s["sip"] for s in body["sips"]] == ["1000", "1001", "1003"]
    code, body = await get_json(http, "/api/sipList?status=")
    assert body["total"] == 4
    code, body = await get_json(http, "/api/sipList?status=online,away")
    assert code == 400 and body["error"]["field"] == "status"
    response, raw = await get(http, "/api/sipList.xml?per_page=1")
    root = ET.fromstring(raw)
    assert root.findtext("total") == "4" and root.findtext("sips/item/sip") == "1000"


@pytest_twisted.ensureDeferred
async def test_operator_history(http, store, document):
    for sip, status in [("1000", "online"), ("1001", "online"), ("1000", "inuse"),
                        ("1000", "online")]:
        await store.set_operator_status(sip, status)
    code, body = await get_json(http, "/api/operatorHistory.json")
    check_schema(document, "/api/operatorHistory", 200, body)
    assert body["total"] == 4
    assert [(h["sip"], h["status"]) for h in body["history"]] == [
        ("1000", "online"), ("1000", "inuse"), ("1001", "online"), ("1000", "online"),
    ]
    code, body = await get_json(http, "/api/operatorHistory?sip=1000&per_page=2&page=2")
    assert body["total"] == 3 and [h["status"] for h in body["history"]] == ["online"]
    assert set(body["history"][0]) == {"sip", "status", "time", "pbx"}
    code, body = await get_json(http, "/api/operatorHistory?sip=PJSIP/1000")
    assert code == 400 and body["error"]["field"] == "sip"


# -- record download --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_record_download(http, store, tmp_path, document):
    await new_call(store, "a")
    audio = b"RIFF....WAVEfmt " + bytes(range(256)) * 300
    wav = tmp_path / "a.wav"
    wav.write_bytes(audio)
    rec = await store.add_recording(call_id="a", path=str(wav), size=len(audio))
    gsm = tmp_path / "a.gsm"
    gsm.write_bytes(b"gsm")
    rec_gsm = await store.add_recording(call_id="a", path=str(gsm))

    response, raw = await get(http, f"/records/{rec['record_id']}")
    assert response.code == 200 and raw == audio
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert response.headers.getRawHeaders("content-disposition") == [
        f'inline; filename="record-{rec["record_id"]}.wav"'
    ]
    response, raw = await get(http, f"/records/{rec_gsm['record_id']}")
    assert response.headers.getRawHeaders("content-type") == ["audio/gsm"] and raw == b"gsm"

    response, raw = await get(http, f"/records/{rec['record_id']}", headers={})
    assert response.code == 401 and audio[:4] not in raw

    wav.unlink()
    code, body = await get_json(http, f"/records/{rec['record_id']}")
    assert code == 404 and body["error"]["code"] == "record_gone"
    check_schema(document, "/records/{record_id}", 404, body)
    code, body = await get_json(http, "/records/987654")
    assert code == 404 and body["error"]["code"] == "unknown_record"
    code, body = await get_json(http, "/records/abc")
    assert code == 400 and body["error"]["field"] == "record_id"


# -- garbage in, never a 5xx ------------------------------------------------------------

_PATHS = [
    "/api/recordList", "/api/orderRecords", "/api/orderHistory", "/api/callHistory",
    "/api/sipList", "/api/operatorHistory", "/records/1",
]
_NAMES = [
    "page", "per_page", "order_id", "group_by_call", "call_id", "after_id", "limit",
    "status", "sip", "api_key",
]
_values = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "0", "1", "-1", "1e3", "0x10", " 5", "online,", ",,", "%00", "٣"]),
)
_json_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


# On SQLite only: hypothesis runs the examples inside the test's own
# Deferred, where only a store whose answers need no reactor turn (SQLite's
# inline reads) can be awaited; the parsing under test is the same on both.
@pytest.mark.parametrize("store_engine", ["sqlite"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(_PATHS),
    suffix=st.sampled_from(["", ".json", ".xml", ".JSON", ".txt"]),
    query=st.lists(st.tuples(st.sampled_from(_NAMES), _values), max_size=6),
    body=st.one_of(st.none(), st.dictionaries(st.sampled_from(_NAMES), _json_values)),
    raw_tail=st.binary(max_size=12),
)
@pytest_twisted.ensureDeferred
async def test_garbage_parameters_never_cause_5xx(http, path, suffix, query, body, raw_tail):
    qs = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
    qs += "&" + quote(raw_tail.decode("latin-1"), safe="=&")
    url = f"{BASE}{path}{suffix}?{qs}"
    if body is None:
        response = await http.get(url, headers=AUTH)
    else:
        response = await http.post(url, json=body, headers=AUTH)
    raw = await response.content()
    assert response.code < 500, (url, body, raw)
    if response.code != 200 and path != "/records/1":
        if suffix.lower() == ".xml":
            assert ET.fromstring(raw).find("error/code") is not None
        else:
            assert "error" in json.loads(raw)


def test_a_post_body_is_required_when_it_has_required_fields():
    from agi_app.web.calls import CallEndpoints

    document = openapi.build_document([history, CallEndpoints])
    make_call = document["paths"]["/api/makeCall"]["post"]["requestBody"]
    assert make_call["required"] is True
    for form in make_call["content"].values():
        assert set(form["schema"]["required"]) == {"sip", "phone", "order_id", "external_key"}
    assert document["paths"]["/api/orderHistory"]["post"]["requestBody"]["required"] is True
    assert document["paths"]["/api/recordList"]["post"]["requestBody"]["required"] is False
