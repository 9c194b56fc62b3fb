"""The supervisor dashboard end to end: headless Chromium (Debian's
``chromium``, driven by Playwright, as in test_widget.py) shows
``/static/dashboard.html`` served by agi_app, fed over the real WebSocket
with a supervisor token, while the sandbox PBX rings SIPp phones.

Four operator-first calls at once end in four outcomes (talked, client busy,
operator no answer, operator offline); a webhook subscription to a receiver
that is not there keeps deliveries waiting.  Then the figures on the page
must be the API's: the chart's bars per hour those of ``/api/callStats`` and
of the calls' ``/api/callHistory``, the operator tiles ``/api/sipList``, the
webhook backlog ``/metrics``.  One more call appears on the page while it
lasts and leaves it when it ends, without a reload.

``AGI_APP_DASHBOARD_SCREENSHOT=docs/dashboard.png`` keeps the 1920x1080
screenshot taken during that call there.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest_twisted
from callflow import HTTP_PORT, Api, app_config, make_call, reactor, start_app, wait_final
from test_events import RECEIVER, SETTINGS_ENV
from test_widget import browser  # noqa: F401 (the fixture)
from twisted.internet import defer, threads
from twisted.internet.threads import blockingCallFromThread

from agi_app.sandbox.phones import answer, no_answer

SCREENSHOT_ENV = "AGI_APP_DASHBOARD_SCREENSHOT"
TOKEN_SECRET = "e2e-dashboard-token-secret"
#: what the page shows, read from its DOM
READ_PAGE = """() => {
    const hours = {};
    document.querySelectorAll('#chart g.bar').forEach(g => {
        const counts = {};
        g.querySelectorAll('rect').forEach(r => {
            counts[r.dataset.status] = Number(r.dataset.count);
        });
        if (Object.keys(counts).length) hours[g.dataset.hour] = counts;
    });
    const legend = {};
    document.querySelectorAll('#legend li').forEach(li => {
        legend[li.dataset.status] = Number(li.dataset.count);
    });
    return {
        hours: hours,
        legend: legend,
        total: document.querySelector('#outcome-total').textContent,
        operators: Array.from(document.querySelectorAll('#operators .tile'))
            .map(t => [t.dataset.sip, t.dataset.status]),
        calls: Array.from(document.querySelectorAll('#calls tbody tr'))
            .map(r => [r.dataset.extension, r.querySelector('.number').textContent]),
        backlog: document.querySelector('#webhook-backlog').textContent,
    };
}"""


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    config = app_config(
        sandbox,
        tmp_path,
        AGI_APP_WEBSOCKET_LISTEN="tcp:0:interface=127.0.0.1",
        AGI_APP_WEBSOCKET_TOKEN_SECRET=TOKEN_SECRET,
        **SETTINGS_ENV,
    )
    application = await start_app(config)
    yield application
    await application.stop()


async def api_figures(api: Api, call_ids: list[str]) -> dict:
    """The same figures from the API: callStats, each call's callHistory,
    sipList (every page) and /metrics."""
    code, stats = await api.get("/api/callStats.json")
    assert code == 200, stats
    hours = {h["hour"]: {k: v for k, v in h.items() if k not in ("hour", "total") and v}
             for h in stats["hours"]}  # fmt: skip
    counted: dict = defaultdict(Counter)
    for call_id in call_ids:
        code, body = await api.get("/api/callHistory.json", call_id=call_id)
        entries = body["history"]
        began = entries[0]["time"][:13] + ":00:00.000Z"
        counted[began][entries[-1]["status"]] += 1
    operators, page = [], 1
    while True:
        code, body = await api.get("/api/sipList.json", page=page, per_page=500)
        operators += [[o["sip"], o["status"]] for o in body["sips"]]
        if len(operators) >= body["total"]:
            break
        page += 1
    code, metrics = await api.get("/metrics")
    [backlog] = re.findall(rb"^agi_app_webhook_backlog (\S+)$", metrics, re.M)
    return {
        "hours": hours,
        "history": {hour: dict(c) for hour, c in counted.items()},
        "operators": operators,
        "backlog": str(int(float(backlog))),
    }


@pytest_twisted.ensureDeferred
async def test_the_dashboard_shows_what_the_api_says(sandbox, app, browser, tmp_path):  # noqa: F811
    launch, close, state = browser
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
    api = Api()
    r = reactor()
    code, token = await api.post("/api/supervisorToken", {"ttl": 600})
    assert code == 200, token
    # hangups of 1000 go to a receiver that is not listening: they wait
    code, sub = await api.post("/extension/1000/event/",
                               {"url": f"{RECEIVER}/hook", "method": "POST",
                                "event_type": "hangup"})  # fmt: skip
    assert code == 201, sub
    ws_port = app.events.ws_port.getHost().port
    url = (f"http://127.0.0.1:{HTTP_PORT}/static/dashboard.html?host=ws://127.0.0.1:{ws_port}"
           f"#token={token['client_id']}")  # fmt: skip
    results: dict = {}

    def in_reactor(fn, *args, **kwargs):
        return blockingCallFromThread(r, lambda: defer.ensureDeferred(fn(*args, **kwargs)))

    async def four_calls() -> list[str]:
        sandbox.phones.start("1000", answer(after=0.3))
        sandbox.phones.start("1001", answer(after=0.3))
        sandbox.phones.start("1002", no_answer())
        sandbox.phones.offline("1003")
        sandbox.pstn.set("380631260001", answer_after=0.3, hangup_after=1.5)
        sandbox.pstn.set("380631260002", "busy")
        sandbox.pstn.set("380631260009", answer_after=0.3, hangup_after=4.0)
        placed = await defer.gatherResults([
            defer.ensureDeferred(make_call(api, sip=sip, phone=phone, order_id=f"db-{n}",
                                           external_key=f"db-{n}", call_time_to_ext=3))
            for n, (sip, phone) in enumerate((("1000", "380631260001"),
                                              ("1001", "380631260002"),
                                              ("1002", "380631260003"),
                                              ("1003", "380631260004")))
        ])  # fmt: skip
        await defer.gatherResults([defer.ensureDeferred(wait_final(app, c)) for c in placed])
        return placed

    async def one_more() -> str:
        return await make_call(api, sip="1000", phone="380631260009", order_id="db-live",
                               external_key="db-live")  # fmt: skip

    def same(page, call_ids) -> tuple[dict, dict]:
        """The page's figures and the API's, once they agree (15 s at most:
        the page gets a snapshot a moment after a change, and every 5 s)."""
        for _ in range(30):
            want = in_reactor(api_figures, api, call_ids)
            shown = page.evaluate(READ_PAGE)
            if (shown["hours"], shown["operators"], shown["backlog"]) == (
                    want["hours"], want["operators"], want["backlog"]):  # fmt: skip
                return shown, want
            page.wait_for_timeout(500)
        return shown, want

    def scenario() -> None:
        launch()
        try:
            page = state["browser"].new_page(viewport={"width": 1920, "height": 1080})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("document.querySelector('#status').textContent === 'live'",
                                   timeout=10_000)  # fmt: skip
            results["url_after_load"] = page.url
            page.evaluate("window.__same_page = true")
            call_ids = in_reactor(four_calls)
            results["shown"], results["want"] = same(page, call_ids)
            results["finals"] = in_reactor(api_figures, api, call_ids)["history"]
            # a new call shows up while it lasts, and leaves when it ends
            live = in_reactor(one_more)
            page.wait_for_selector('#calls tr[data-extension="1000"]', timeout=10_000)
            results["live_row"] = page.evaluate(READ_PAGE)["calls"]
            page.wait_for_selector('#operators .tile[data-sip="1000"].talking', timeout=10_000)
            page.screenshot(path=str(screenshot))
            in_reactor(wait_final, app, live)
            page.wait_for_selector('#calls tr[data-extension="1000"]', state="detached",
                                   timeout=10_000)  # fmt: skip
            results["same_page"] = page.evaluate("window.__same_page === true")
            results["calls_after"] = page.evaluate(READ_PAGE)["calls"]
            results["errors"] = errors
        finally:
            close()

    await threads.deferToThread(scenario)

    shown, want = results["shown"], results["want"]
    assert results["errors"] == []
    assert "#token" not in results["url_after_load"]  # out of the address bar at once
    assert shown["hours"] == want["hours"] == want["history"], (shown, want)
    finals = Counter()
    for counts in results["finals"].values():
        finals.update(counts)
    assert finals == Counter({"FINISH": 1, "CLIENT_BUSY": 1, "OPERATOR_NOANSWER": 1,
                              "OPERATOR_OFFLINE": 1})  # fmt: skip
    assert {s: n for s, n in shown["legend"].items() if n} == dict(finals)
    assert shown["total"] == "4"
    assert shown["operators"] == want["operators"]
    assert ["1003", "offline"] in shown["operators"]
    assert int(shown["backlog"]) >= 1 and shown["backlog"] == want["backlog"]
    assert results["live_row"] == [["1000", "380631260009"]]
    assert results["calls_after"] == []
    assert results["same_page"] is True
    assert 20_000 < screenshot.stat().st_size < 1_000_000
