"""``/api/operatorStats``, ``/api/callStats`` and ``/api/missedCalls``
through a real Site over memory and the real store: the ranges they cover,
the figures they derive, their answers against the OpenAPI document, and the
errors of bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import jsonschema
import pytest
import pytest_twisted
from twisted.internet import task

from agi_app.store import SQLiteStore
from agi_app.web import Router, build_site, openapi
from agi_app.web.missed import MissedCallEndpoints
from agi_app.web.stats import StatsEndpoints, operator_figures, time_bound
from agi_app.web.testing import MemoryHTTP

BASE = "http://127.0.0.1"
# 2026-12-06T10:20:00Z, a Sunday
NOW = 1796552400.0


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(NOW)
    return c


@pytest.fixture
def store(tmp_path: Path, clock: task.Clock):
    s = SQLiteStore(str(tmp_path / "store.sqlite3"), reactor=_reactor(), clock=clock)
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


@pytest.fixture
def parts(store, clock):
    return [StatsEndpoints(store, clock=clock), MissedCallEndpoints(store)]


@pytest.fixture
def document(parts) -> dict:
    return openapi.build_document(parts)


@pytest.fixture
def http(parts, document):
    router = Router()
    for part in parts:
        part.add_routes(router)
    return MemoryHTTP(build_site(router, api_keys=(), static_dir=None, clock=_reactor()),
                      _reactor())  # fmt: skip


async def get(http, path, **params):
    response = await http.get(f"{BASE}{path}?{urlencode(params)}")
    raw = await response.content()
    return response.code, (json.loads(raw) if path.endswith(".json") or "." not in path
                           else raw)  # fmt: skip


def check(document: dict, path: str, body: dict) -> None:
    schema = document["paths"][path]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]  # fmt: skip
    jsonschema.validate(body, {**schema, "components": document["components"]})


async def call(store, clock, call_id, sip, steps, kind="makeCall"):
    """A call whose statuses follow ``steps``: (status, seconds later, talk)."""
    await store.create_call(call_id=call_id, kind=kind, sip=sip, phone="380639920000",
                            order_id=None, external_key=None, params={})  # fmt: skip
    for status, later, *talk in steps:
        clock.advance(later)
        await store.add_status(call_id, status, talk_seconds=talk[0] if talk else None)


ANSWERED = [("OPERATOR_CALLTO", 0), ("OPERATOR_PICKUP", 4), ("CLIENT_CALLTO", 1),
            ("CLIENT_PICKUP", 3), ("FINISH", 20, 20.0)]  # fmt: skip
UNANSWERED = [("OPERATOR_CALLTO", 0), ("OPERATOR_NOANSWER", 30)]


@pytest_twisted.ensureDeferred
async def test_operator_figures_over_today(store, clock, http, document):
    await call(store, clock, "a", "1000", ANSWERED)
    await call(store, clock, "b", "1000", UNANSWERED)
    await call(store, clock, "c", "1001", ANSWERED)
    code, body = await get(http, "/api/operatorStats.json")
    assert code == 200, body
    check(document, "/api/operatorStats", body)
    assert (body["from"], body["to"]) == ("2026-12-06T00:00:00.000Z", "2026-12-06T11:00:00.000Z")
    first, second = body["operators"]
    assert first == {"sip": "1000", "offered": 2, "answered": 1, "missed": 1,
                     "answer_rate": 0.5, "avg_ring_s": 4.0, "avg_talk_s": 20.0,
                     "talk_s": 20.0, "talked": 1}  # fmt: skip
    assert (second["sip"], second["answer_rate"]) == ("1001", 1.0)
    code, body = await get(http, "/api/operatorStats.json", sip="1001")
    assert [o["sip"] for o in body["operators"]] == ["1001"]
    # yesterday had nothing
    code, body = await get(http, "/api/operatorStats.json", **{"from": "2026-12-05",
                                                                "to": "2026-12-05"})
    assert (body["from"], body["to"], body["operators"]) == (
        "2026-12-05T00:00:00.000Z", "2026-12-06T00:00:00.000Z", [])


@pytest_twisted.ensureDeferred
async def test_times_are_taken_at_hour_precision(store, clock, http):
    await call(store, clock, "a", "1000", ANSWERED)  # rung at 10:20
    for start, end, counted in (
        ("2026-12-06T10:01Z", "2026-12-06T10:59Z", 1),  # both inside the 10:00 hour
        ("2026-12-06T11:00Z", "2026-12-06T12:00Z", 0),
        ("2026-12-06T13:30+03:00", "2026-12-06T13:30+03:00", 1),  # = 10:30Z
        ("2026-12-06T09:00:00", "2026-12-06T10:00:00.000", 0),  # no zone: UTC; to excluded
    ):
        code, body = await get(http, "/api/operatorStats", **{"from": start, "to": end})
        assert code == 200, body
        assert sum(o["offered"] for o in body["operators"]) == counted, (start, end, body)
    code, body = await get(http, "/api/operatorStats", **{"from": "2026-12-06T10:01Z",
                                                           "to": "2026-12-06T10:59Z"})
    assert (body["from"], body["to"]) == ("2026-12-06T10:00:00.000Z", "2026-12-06T11:00:00.000Z")


@pytest_twisted.ensureDeferred
async def test_call_stats_per_hour_and_per_day(store, clock, http, document):
    await call(store, clock, "a", "1000", ANSWERED)
    await call(store, clock, "b", "1000", UNANSWERED)
    clock.advance(3600)
    await call(store, clock, "c", "1000", ANSWERED)
    await call(store, clock, "d", "1000", [("OPERATOR_CALLTO", 0)])  # still going
    code, body = await get(http, "/api/callStats.json", **{"from": "2026-12-06"})
    assert code == 200, body
    check(document, "/api/callStats", body)
    assert [(h["hour"], h["FINISH"], h["OPERATOR_NOANSWER"], h["total"]) for h in body["hours"]
            ] == [("2026-12-06T10:00:00.000Z", 1, 1, 2), ("2026-12-06T11:00:00.000Z", 1, 0, 1)]
    assert set(body["hours"][0]) == {"hour", "total", "CLIENT_BUSY", "CLIENT_CANCEL",
                                     "CLIENT_NOANSWER", "ERROR", "FINISH", "OPERATOR_BUSY",
                                     "OPERATOR_NOANSWER", "OPERATOR_OFFLINE"}  # fmt: skip
    code, body = await get(http, "/api/callStats.json", by="day",
                           **{"from": "2026-12-01T05:00Z", "to": "2026-12-06T08:00Z"})
    check(document, "/api/callStats", body)
    assert (body["from"], body["to"]) == ("2026-12-01T00:00:00.000Z", "2026-12-07T00:00:00.000Z")
    assert [(d["day"], d["total"]) for d in body["days"]] == [("2026-12-06", 3)]


@pytest_twisted.ensureDeferred
async def test_the_xml_form(store, clock, http):
    await call(store, clock, "a", "1000", ANSWERED)
    code, raw = await get(http, "/api/operatorStats.xml")
    root = ET.fromstring(raw)
    assert root.tag == "response"
    assert root.find("operators/item/sip").text == "1000"
    assert root.find("operators/item/avg_ring_s").text == "4.0"


@pytest.mark.parametrize(
    "params, field, says",
    [
        ({"from": "yesterday"}, "from", "must be a date (YYYY-MM-DD) or an ISO time"),
        ({"from": "2026-13-01"}, "from", "not a real date or time"),
        ({"from": "2026-12-06T25:00Z"}, "from", "not a real date or time"),
        ({"to": "2026-12-06 10:00"}, "to", "must be a date"),
        ({"from": "1999-12-31"}, "from", "between the years 2000 and 9998"),
        ({"from": "2026-12-06", "to": "2026-12-05"}, "to", "must not be before from"),
        ({"from": "2025-01-01", "to": "2026-12-06"}, "to", "at most 366 days"),
        ({"sip": "10 00"}, "sip", "sip must be"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_ranges_are_refused(http, params, field, says):
    code, body = await get(http, "/api/operatorStats.json", **params)
    assert code == 400 and body["error"]["field"] == field, body
    assert says in body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_call_stats_by_hour_is_at_most_a_month(http):
    code, body = await get(http, "/api/callStats", **{"from": "2026-10-01", "to": "2026-12-06"})
    assert (code, body["error"]["message"]) == (400, "the range may be at most 31 days")
    code, body = await get(http, "/api/callStats", by="day",
                           **{"from": "2026-10-01", "to": "2026-12-06"})
    assert code == 200
    code, body = await get(http, "/api/callStats", by="week")
    assert (code, body["error"]["field"]) == (400, "by")


def test_figures_without_calls_are_null_not_a_division_by_zero():
    row = {"sip": "1", "offered": 0, "answered": 0, "ring_ms": 0, "talked": 0, "talk_ms": 0}
    figures = operator_figures(row)
    assert (figures["answer_rate"], figures["avg_ring_s"], figures["avg_talk_s"]) == (
        None, None, None)
    assert time_bound("2026-12-06", "from").date
    assert not time_bound("2026-12-06T00:00Z", "from").date


@pytest_twisted.ensureDeferred
async def test_missed_calls_after_a_cursor(store, http, document):
    for n in range(3):
        await store.add_missed_call(call_id=f"m{n}", phone="380631110000", did="100",
                                    time="2026-12-06T10:00:00.000Z", extensions=["1000"],
                                    ring_seconds=5.5)  # fmt: skip
    await store.missed_calls_handled(["380631110000"], "cb", "2026-12-06T10:05:00.000Z")
    await store.add_missed_call(call_id="m3", phone=None, did=None,
                                time="2026-12-06T10:06:00.000Z", extensions=[],
                                ring_seconds=0)  # fmt: skip
    code, body = await get(http, "/api/missedCalls.json", limit=2)
    assert code == 200
    check(document, "/api/missedCalls", body)
    assert ([m["call_id"] for m in body["missed_calls"]], body["last_id"]) == (["m0", "m1"], 2)
    assert body["missed_calls"][0] == {
        "id": 1, "call_id": "m0", "phone": "380631110000", "did": "100",
        "time": "2026-12-06T10:00:00.000Z", "extensions": ["1000"], "ring_seconds": 5.5,
        "called_back": "cb", "handled_at": "2026-12-06T10:05:00.000Z", "callback_attempts": 0,
    }  # fmt: skip
    code, body = await get(http, "/api/missedCalls.json", after_id=2)
    assert [m["call_id"] for m in body["missed_calls"]] == ["m2", "m3"]
    code, body = await get(http, "/api/missedCalls.json", open=1)
    assert [m["call_id"] for m in body["missed_calls"]] == ["m3"]
    code, body = await get(http, "/api/missedCalls.json", after_id=4)
    assert body == {"missed_calls": [], "last_id": 4}
    code, body = await get(http, "/api/missedCalls.json", after_id=-1)
    assert (code, body["error"]["field"]) == (400, "after_id")
    code, raw = await get(http, "/api/missedCalls.xml")
    root = ET.fromstring(raw)
    assert [i.text for i in root.findall("missed_calls/item/extensions/item")] == ["1000"] * 3
