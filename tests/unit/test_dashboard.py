"""The supervisor dashboard: supervisor tokens, the WebSocket feed of
supervisor connections (driven frame by frame on a MemoryReactorClock) and
the snapshot of ``GET /api/dashboard`` against the API answers it must
equal (a real Site over memory, the real store and call tracker)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import pytest_twisted
from test_ws_server import SECRET, T0, Stack, closed_with, token
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from agi_app.metrics import Metrics, WebhookBacklog
from agi_app.store import SQLiteStore
from agi_app.validation import InvalidInput
from agi_app.web import Router, build_site, openapi
from agi_app.web import history as history_module
from agi_app.web.dashboard import Dashboard, DashboardEndpoints, activity
from agi_app.web.history import HistoryEndpoints
from agi_app.web.stats import StatsEndpoints
from agi_app.web.testing import MemoryHTTP
from agi_app.ws import WidgetFactory, WidgetHub, tokens
from agi_app.ws.server import DASHBOARD_DELAY, DASHBOARD_INTERVAL

KEY = "crm-key"
BASE = "http://127.0.0.1"


def _reactor():
    from twisted.internet import reactor

    return reactor


def supervisor(ttl=600, secret=SECRET, now=T0):
    return tokens.mint_supervisor(secret, now + ttl)


# -- tokens ----------------------------------------------------------------------


def test_a_supervisor_token_is_valid_until_it_expires():
    client_id, expires = tokens.issue_supervisor(SECRET, 120, T0 + 0.5)
    assert expires == T0 + 120 and client_id.startswith("sv1.")
    assert tokens.verify_supervisor(SECRET, client_id, T0 + 119) == expires
    with pytest.raises(tokens.TokenExpired):
        tokens.verify_supervisor(SECRET, client_id, T0 + 120)


@pytest.mark.parametrize("ttl", [59, tokens.SUPERVISOR_MAX_TTL + 1, "600", True, None, 1.5])
def test_a_supervisor_token_lives_a_checked_while(ttl):
    with pytest.raises(InvalidInput) as e:
        tokens.issue_supervisor(SECRET, ttl, T0)
    assert e.value.field == "ttl"


def test_the_two_kinds_of_token_cannot_stand_for_each_other():
    widget = token("1000")
    _v1, sip, expires, signature = widget.split(".")
    # a widget token's parts rearranged as a supervisor token: not signed as one
    for forged in (f"sv1.{expires}.{signature}", "s" + widget):
        with pytest.raises(tokens.InvalidToken):
            tokens.verify_supervisor(SECRET, forged, T0)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(SECRET, supervisor(), T0)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify_supervisor("another secret of 16+", supervisor(), T0)


# -- the WebSocket feed ------------------------------------------------------------


class Snapshots:
    """A dashboard snapshot function counting its calls; the snapshot says
    how many live calls the tracker holds."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.made = 0

    async def __call__(self):
        self.made += 1
        return {"n": self.made, "calls": len(self.tracker.calls())}


def supervised(stack: Stack, with_dashboard: bool = True) -> Snapshots:
    """``stack`` with a hub that has a dashboard."""
    stack.hub.stop()
    snapshots = Snapshots(stack.tracker)
    stack.hub = WidgetHub(
        client_ids=("password",), token_secret=SECRET, clock=stack.clock,
        tracker=stack.tracker, calls=stack.calls, control=stack.control,
        dashboard=snapshots if with_dashboard else None,
    )  # fmt: skip
    stack.hub.start()
    stack.factory = WidgetFactory(stack.hub, reactor=stack.clock)
    return snapshots


def dashboards(link) -> list[dict]:
    return [m["dashboard"] for m in link.messages() if m["type"] == "dashboard"]


@pytest.fixture
def stack():
    return Stack()


def test_a_supervisor_gets_a_snapshot_at_hello_and_after_changes(stack):
    supervised(stack)
    link = stack.hello(supervisor())
    welcome, first = link.messages()
    assert welcome["type"] == "welcome" and welcome["scope"] == "supervisor"
    assert welcome["user_phone"] is None
    assert first == {"type": "dashboard", "dashboard": {"n": 1, "calls": 0}}
    assert stack.hub.supervisors == 1
    # a call rings, is answered: several events, one snapshot a moment later
    stack.sim.trunk_to_operator()
    assert dashboards(link) == []
    stack.clock.advance(DASHBOARD_DELAY)
    assert dashboards(link) == [{"n": 2, "calls": 1}]
    stack.clock.advance(DASHBOARD_DELAY)
    assert dashboards(link) == []
    # nothing happens: still one every DASHBOARD_INTERVAL
    stack.clock.advance(DASHBOARD_INTERVAL)
    assert len(dashboards(link)) == 1
    # asked for: sent with the next push
    link.send_json({"type": "dashboard", "id": 7})
    assert link.messages() == [{"type": "result", "ok": True, "id": 7}]
    stack.clock.advance(DASHBOARD_DELAY)
    assert len(dashboards(link)) == 1


def test_the_dashboard_costs_nothing_without_supervisors(stack):
    snapshots = supervised(stack)
    widget = stack.hello(token("1000"))
    stack.sim.trunk_to_operator()
    stack.clock.advance(DASHBOARD_INTERVAL * 2)
    assert snapshots.made == 0
    assert [m["type"] for m in widget.messages()] == ["welcome", "event"]
    link = stack.hello(supervisor())
    link.messages()
    link.proto.connectionLost(Failure(ConnectionDone()))
    assert stack.hub.supervisors == 0
    made = snapshots.made
    stack.clock.advance(DASHBOARD_INTERVAL * 3)
    assert snapshots.made == made
    assert [c for c in stack.clock.getDelayedCalls()
            if c.active() and getattr(c.func, "__self__", None) is stack.hub] == []  # fmt: skip


def test_a_supervisor_acts_as_nobody(stack):
    supervised(stack)
    link = stack.hello(supervisor(), user_phone="1000")
    link.messages()
    stack.sim.trunk_to_operator()
    for n, message in enumerate(({"type": "call", "phone": "380501112233"},
                                 {"type": "transfer", "call_id": "trunk-1", "phone": "1001"},
                                 {"type": "set_phone", "phone": "1000"})):  # fmt: skip
        link.send_json({**message, "id": n})
        [answer] = [m for m in link.messages() if m["type"] != "dashboard"]
        assert (answer["type"], answer["code"], answer["id"]) == ("error", "read_only", n)
    assert stack.calls.placed == [] and stack.control.transfers == []
    # and follows no phone: no widget events reach it
    stack.clock.advance(DASHBOARD_DELAY)
    assert all(m["type"] == "dashboard" for m in link.messages())
    assert stack.hub.widgets_of("1000") == 0


def test_a_widget_token_never_sees_the_dashboard(stack):
    supervised(stack)
    widget = stack.hello(token("1001"))
    watcher = stack.hello(supervisor())
    widget.send_json({"type": "dashboard", "id": 1})
    stack.sim.trunk_to_operator()  # 1000's call
    stack.clock.advance(DASHBOARD_INTERVAL)
    messages = widget.messages()
    assert [m["type"] for m in messages] == ["welcome", "error"]
    assert messages[1]["code"] == "not_supervisor"
    assert [d["calls"] for d in dashboards(watcher)] == [0, 1, 1]
    # the static client_id is no supervisor either
    static = stack.hello("password")
    static.send_json({"type": "dashboard"})
    assert [m.get("code") for m in static.messages()] == [None, "not_supervisor"]


@pytest.mark.parametrize(
    "client_id, closed",
    [
        (supervisor(secret="someone else's secret"), (4001, "invalid token")),
        (supervisor()[:-1] + "0", (4001, "invalid token")),
        (supervisor().replace("sv1.", "sv1.9"), (4001, "invalid token")),
        ("sv1." + token("1000").split(".", 2)[2], (4001, "invalid token")),
        ("sv1.", (4001, "invalid token")),
    ],
)
def test_forged_supervisor_tokens_are_refused(stack, client_id, closed):
    supervised(stack)
    link = stack.hello(client_id)
    assert closed_with(link) == closed
    assert stack.hub.supervisors == 0


def test_an_expired_supervisor_token_says_so(stack):
    supervised(stack)
    almost = supervisor(ttl=1)
    stack.clock.advance(1)
    assert closed_with(stack.hello(almost)) == (4002, "token expired")


def test_without_a_dashboard_supervisor_tokens_are_refused(stack):
    supervised(stack, with_dashboard=False)
    assert closed_with(stack.hello(supervisor())) == (4001, "invalid client_id")


# -- the snapshot and the HTTP routes ------------------------------------------------


def test_activity_is_the_busiest_call():
    assert activity("offline", ["talking"]) == "offline"
    assert activity("online", []) == "idle"
    assert activity("inuse", ["ringing", "talking"]) == "talking"
    assert activity("inuse", ["ringing", "listening"]) == "ringing"
    assert activity("inuse", ["parked"]) == "hold"
    assert activity("inuse", ["internal"]) == "idle"


def test_calls_in_progress_one_line_per_extension(stack):
    sim = stack.sim
    # 1001 calls 1002: a line for each of them
    sim.new("PJSIP/1001-00000020", "a-1", state="Ring", context="sandbox-operators",
            exten="1002", num="1001", cname="Anna")  # fmt: skip
    sim.new("PJSIP/1002-00000021", "b-1", linkedid="a-1", num="1002", cname="Bob")
    sim.dial("a-1", "b-1", "PJSIP/1002")
    for uid in ("b-1", "a-1"):
        sim.state(uid, "Up")
    sim.bridge("br-9", "a-1", "b-1")
    # two outside lines and no extension (phone to phone): one line
    sim.new("PJSIP/pstn-00000030", "p-1", num="380501110000")
    sim.new("PJSIP/pstn-00000031", "p-2", linkedid="p-1", num="380502220000")
    sim.dial("p-1", "p-2", "380502220000@pstn")
    for uid in ("p-2", "p-1"):
        sim.state(uid, "Up")
    sim.bridge("br-10", "p-1", "p-2")
    stack.clock.advance(3)
    rows = Dashboard(None, stack.tracker, backlog=None, clock=stack.clock).calls(
        stack.clock.seconds())
    assert [(r["extension"], r["direction"], r["other_extension"], r["state"]) for r in rows] == [
        ("1001", "out", "1002", "talking"), ("1002", "in", "1001", "talking"),
        (None, rows[2]["direction"], None, "talking")]  # fmt: skip
    assert rows[0]["number"] == stack.tracker.calls_of_extension("1001")[0]["called_number"]
    assert [r["duration_s"] for r in rows] == [3, 3, 3]
    assert len({r["call_api_id"] for r in rows}) == 2


class Site:
    """The store, the tracker (with a call on 1000), the API routes the
    dashboard must agree with, and the dashboard's own."""

    def __init__(self, stack: Stack, tmp_path: Path, secret: str = SECRET):
        self.stack = stack
        self.store = SQLiteStore(str(tmp_path / "store.sqlite3"), reactor=_reactor(),
                                 clock=stack.clock)  # fmt: skip
        self.store.open()
        self.dashboard = Dashboard(self.store, stack.tracker, clock=stack.clock,
                                   backlog=WebhookBacklog(self.store, stack.clock))  # fmt: skip
        self.metrics = Metrics(clock=stack.clock, store=self.store)
        router = Router()
        self.parts = [HistoryEndpoints(self.store, public_url=BASE),
                      StatsEndpoints(self.store, clock=stack.clock),
                      DashboardEndpoints(self.dashboard, secret, clock=stack.clock)]  # fmt: skip
        for part in self.parts:
            part.add_routes(router)
        self.document = openapi.build_document([history_module, *self.parts[1:]])
        self.http = MemoryHTTP(build_site(router, api_keys=(KEY,), static_dir=None,
                                          clock=_reactor()), _reactor())  # fmt: skip

    async def request(self, method, path, body=None, key=KEY):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["X-API-Key"] = key
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, BASE + path, headers=headers, data=data)
        return response.code, json.loads(await response.content())


@pytest.fixture
def site(stack, tmp_path):
    s = Site(stack, tmp_path)
    yield s
    pytest_twisted.blockon(s.store.close())


async def _fill(site):
    store, clock = site.store, site.stack.clock
    for sip, status in (("1000", "online"), ("1001", "online"), ("1002", "offline"),
                        ("1000", "inuse")):  # fmt: skip
        await store.set_operator_status(sip, status)
    for n, finals in enumerate((["FINISH"], ["CLIENT_BUSY"], ["OPERATOR_OFFLINE"], [])):
        await store.create_call(call_id=f"c{n}", kind="makeCall", sip="1000",
                                phone="380639920000", order_id=None, external_key=None,
                                params={})  # fmt: skip
        for status in finals:
            clock.advance(1)
            await store.add_status(f"c{n}", status)
    sub = await store.add_subscription(extension="1000", url="http://crm.example/hook",
                                       method="POST", event_type="hangup", secret="s")  # fmt: skip
    await store.enqueue_event(event_type="hangup", extension="1000", fields={"a": "b"},
                              time_us=int(clock.seconds() * 1e6), created_at=clock.seconds(),
                              subscription_ids=[sub["id"]])  # fmt: skip
    site.stack.sim.trunk_to_operator()  # 1000 talks to a client


@pytest_twisted.ensureDeferred
async def test_the_snapshot_equals_the_api(site):
    await _fill(site)
    site.stack.clock.advance(7)
    code, body = await site.request("GET", "/api/dashboard.json")
    assert code == 200, body
    schema = site.document["paths"]["/api/dashboard"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]  # fmt: skip
    jsonschema.validate(body, {**schema, "components": site.document["components"]})
    # operators: sipList, with what the tracker says they do
    code, sips = await site.request("GET", "/api/sipList.json?per_page=500")
    assert [{k: o[k] for k in ("sip", "status", "since", "pbx")} for o in body["operators"]
            ] == sips["sips"]
    assert [(o["sip"], o["activity"], o["calls"]) for o in body["operators"]] == [
        ("1000", "talking", 1), ("1001", "idle", 0), ("1002", "offline", 0)]
    assert body["operator_counts"] == {"online": 1, "inuse": 1, "offline": 1}
    # outcomes: callStats of today (the call still open is not counted)
    code, stats = await site.request("GET", "/api/callStats.json")
    assert body["outcomes"] == stats
    assert body["outcome_totals"]["total"] == 3 == sum(h["total"] for h in stats["hours"])
    assert (body["outcome_totals"]["FINISH"], body["outcome_totals"]["CLIENT_BUSY"]) == (1, 1)
    # calls in progress: 1000's current call as current_calls shows it
    [view] = site.stack.tracker.calls_of_extension("1000")
    [row] = body["calls"]
    assert row["extension"] == "1000" and row["call_api_id"] == view["call_api_id"]
    assert (row["number"], row["direction"], row["state"]) == (
        view["caller_id_number"], "in", view["state"]) == ("380501234567", "in", "talking")
    assert row["duration_s"] == 7
    # the webhook backlog: what /metrics says
    text, _ = await site.metrics.exposition()
    [backlog] = re.findall(rb"^agi_app_webhook_backlog (\S+)$", text, re.M)
    assert body["webhooks"]["backlog"] == float(backlog) == 1
    # the XML form of the same answer
    response = await site.http.get(BASE + "/api/dashboard.xml", headers={"X-API-Key": KEY})
    xml = (await response.content()).decode()
    assert response.code == 200 and "<sip>1002</sip>" in xml and "<FINISH>1</FINISH>" in xml


@pytest_twisted.ensureDeferred
async def test_the_routes_need_the_api_key(site):
    for method, path in (("GET", "/api/dashboard"), ("POST", "/api/supervisorToken")):
        code, body = await site.request(method, path, body={} if method == "POST" else None,
                                        key="wrong")  # fmt: skip
        assert code == 401 and "operators" not in body and "client_id" not in body


@pytest_twisted.ensureDeferred
async def test_a_supervisor_token_from_the_api(site):
    now = site.stack.clock.seconds()
    code, body = await site.request("POST", "/api/supervisorToken", {"ttl": 3 * 86400})
    assert code == 200 and body["expires"] == int(now) + 3 * 86400
    assert tokens.verify_supervisor(SECRET, body["client_id"], now) == body["expires"]
    code, body = await site.request("POST", "/api/supervisorToken", {})
    assert code == 200 and body["expires"] == int(now) + tokens.MAX_TTL
    for bad in (59, tokens.SUPERVISOR_MAX_TTL + 1, "1d", -1):
        code, body = await site.request("POST", "/api/supervisorToken", {"ttl": bad})
        assert code == 400 and body["error"]["field"] == "ttl", body


@pytest_twisted.ensureDeferred
async def test_without_a_secret_there_is_no_supervisor_token(stack, tmp_path):
    site = Site(stack, tmp_path, secret="")
    try:
        code, body = await site.request("POST", "/api/supervisorToken", {})
        assert code == 409 and body["error"]["code"] == "widget_tokens_disabled"
    finally:
        await site.store.close()


def test_the_routes_are_in_the_openapi_document(site):
    paths = site.document["paths"]
    assert set(paths["/api/dashboard"]) == {"get"}
    assert set(paths["/api/supervisorToken"]["post"]["responses"]) == {"200", "400", "401",
                                                                        "409"}


class BrokenStore:
    """An outbox that cannot be read."""

    def subscriptions(self):
        return defer.fail(OSError("disk gone"))


@pytest_twisted.ensureDeferred
async def test_an_unreadable_outbox_leaves_the_backlog_unknown(stack):
    backlog = WebhookBacklog(BrokenStore(), stack.clock)
    dashboard = Dashboard(None, stack.tracker, backlog=backlog, clock=stack.clock)
    assert await dashboard.webhooks() is None
    assert await Dashboard(None, stack.tracker, backlog=None, clock=stack.clock).webhooks() is None


def test_calls_in_progress_of_every_pbx():
    # two PBXs: each has its own tracker; the dashboard lists the calls of both
    first, second = Stack(), Stack()
    first.sim.new("PJSIP/1001-00000020", "a-1", num="1001", state="Up")
    second.sim.new("PJSIP/2001-00000040", "z-1", num="2001", state="Up")
    first.clock.advance(2)
    alone = Dashboard(None, first.tracker, backlog=None, clock=first.clock)
    both = Dashboard(None, first.tracker, backlog=None, clock=first.clock,
                     more_trackers=[second.tracker])  # fmt: skip
    now = first.clock.seconds()
    assert [r["extension"] for r in alone.calls(now)] == ["1001"]
    assert [r["extension"] for r in both.calls(now)] == ["1001", "2001"]
