"""The browser widget end to end: headless Chromium (Debian's ``chromium``,
driven by Playwright) loads the demo page served by agi_app, which uses
``/static/prostiezvonki.js`` against the real WebSocket server, while the
sandbox PBX rings real SIPp phones.

Extension 1000's page uses the static ``client_id`` ``password`` (a CRM on
loopback, unchanged); 1001's page leaves it empty, so the demo asks agi_app
for a widget token of 1001 -- which cannot transfer 1000's call.

Playwright's API blocks, so the browser is driven from a thread while the
application runs on the test's reactor; the thread reaches the reactor with
``blockingCallFromThread``.

``AGI_APP_DEMO_SCREENSHOT=docs/demo.png`` keeps the screenshot of the demo
page taken during the incoming call there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from callflow import HTTP_PORT, app_config, reactor, start_app, wait_final
from test_events import SETTINGS_ENV, call_in_from_trunk
from twisted.internet import defer, task, threads
from twisted.internet.threads import blockingCallFromThread

from agi_app.sandbox.phones import answer

CHROMIUM = "/usr/bin/chromium"
#: set to refresh docs/demo.png from a run (otherwise the shot stays in tmp)
SCREENSHOT_ENV = "AGI_APP_DEMO_SCREENSHOT"
TOKEN_SECRET = "e2e-widget-token-secret"
COLLECT = """() => {
    window.__events = [];
    pz.onEvent(function (e) {
        window.__events.push({type: e.type, callID: e.callID, from: e.from, to: e.to,
            start: e.start, end: e.end, duration: e.duration, direction: e.direction,
            record: e.record, transfer: e.isTransfer(), incoming: e.isIncoming(),
            history: e.isHistory()});
    });
}"""


def _browser_available() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@pytest.fixture
def browser():
    reason = _browser_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Started and stopped in the thread that drives it (Playwright's sync API
    # belongs to one thread).
    state: dict = {}

    def launch():
        state["pw"] = sync_playwright().start()
        state["browser"] = state["pw"].chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip

    def close():
        state["browser"].close()
        state["pw"].stop()

    return launch, close, state


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path):
    config = app_config(
        sandbox,
        tmp_path,
        # a port of its own: test sessions with other port offsets run beside
        AGI_APP_WEBSOCKET_LISTEN="tcp:0:interface=127.0.0.1",
        AGI_APP_WEBSOCKET_TOKEN_SECRET=TOKEN_SECRET,
        **SETTINGS_ENV,
    )
    application = await start_app(config)
    yield application
    await application.stop()


def page_of(app) -> str:
    """The demo page of ``app``, connecting to its WebSocket."""
    ws_port = app.events.ws_port.getHost().port
    return f"http://127.0.0.1:{HTTP_PORT}/static/demo.html?host=ws://127.0.0.1:{ws_port}"


def _events(page, kind: int) -> list[dict]:
    return [e for e in page.evaluate("window.__events") if e["type"] == kind]


@pytest_twisted.ensureDeferred
async def test_widget_in_headless_chromium(sandbox, app, browser, tmp_path):
    launch, close, state = browser
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "demo.png")
    r = reactor()
    results: dict = {}
    base = page_of(app)

    def in_reactor(fn, *args, **kwargs):
        def run():
            return defer.maybeDeferred(fn, *args, **kwargs)

        return blockingCallFromThread(r, run)

    def app_hub():
        return app.events.hub

    def scenario() -> None:
        launch()
        try:
            page = state["browser"].new_page(viewport={"width": 640, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}&client_id=password&phone=1000&connect=1")
            page.wait_for_function("window.pz && pz.isConnected()", timeout=10_000)
            assert page.evaluate("window.prostiezvonki === window.pz")
            page.evaluate(COLLECT)
            # 1. pz.call() from the dial box: the user's phone rings first.
            in_reactor(sandbox.phones.start, "1000", answer(after=0.3))
            in_reactor(sandbox.pstn.set, "380639920051", answer_after=0.3, hangup_after=1.5)
            page.fill("#number", "380639920051")
            page.click("#dial button")
            page.wait_for_function("document.querySelector('#message').textContent.includes('placed')",
                                   timeout=10_000)  # fmt: skip
            call_id = page.text_content("#message").split()[1]
            in_reactor(lambda: defer.ensureDeferred(wait_final(app, call_id)))
            page.wait_for_function("window.__events.some(e => e.type === 3)", timeout=15_000)
            results["ringing_seen"] = in_reactor(lambda: sandbox.operator("1000").calls())
            results["outgoing"] = _events(page, 3)
            results["no_popup_for_own_call"] = _events(page, 2)
            # 2. A call from the trunk rings 1000: type 2 (screenshot of the
            # popup); 1000 answers and transfers it to 1001, whose widget
            # gets type 1; both get type 3 when it ends.
            other = state["browser"].new_page()
            other.goto(f"{base}&phone=1001&connect=1")  # asks agi_app for a token
            other.wait_for_function("window.pz && pz.isConnected()", timeout=10_000)
            other.evaluate(COLLECT)
            results["other_client_id"] = other.input_value("#client_id")
            in_reactor(sandbox.phones.start, "1000", answer(after=2.5))
            in_reactor(sandbox.phones.start, "1001", answer(after=0.5))
            # Started now, awaited at the end (a list keeps the Deferred
            # from being waited on here).
            [done] = in_reactor(
                lambda: [defer.ensureDeferred(call_in_from_trunk(sandbox, "1000", talk_ms=9000))]
            )
            page.wait_for_function("window.__events.some(e => e.type === 2)", timeout=10_000)
            page.wait_for_selector("#incoming:not([hidden])", timeout=5_000)
            page.screenshot(path=str(screenshot))
            call_api_id = _events(page, 2)[0]["callID"]
            operator = sandbox.operator("1000")
            in_reactor(lambda: operator.wait_for_answer(timeout=10, count=2, reactor=r))
            in_reactor(lambda: task.deferLater(r, 1.0, lambda: None))  # talking a moment
            # 1001's token does not reach 1000's call.
            results["outsider_transfer"] = other.evaluate(
                "id => pz.transfer(id, '1002').then(() => 'ok', e => e.code)", call_api_id
            )
            page.fill("#transfer-to", "1001")
            page.click("#transfer button")
            page.wait_for_function(
                "document.querySelector('#message').textContent.startsWith('Transferred')",
                timeout=10_000,
            )
            other.wait_for_function("window.__events.some(e => e.type === 1)", timeout=10_000)
            in_reactor(lambda: done)
            page.wait_for_function("window.__events.filter(e => e.type === 3).length >= 2",
                                   timeout=15_000)  # fmt: skip
            other.wait_for_function("window.__events.some(e => e.type === 3)", timeout=15_000)
            results["incoming"] = _events(page, 2)
            results["finished"] = _events(page, 3)
            results["transferred"] = _events(other, 1)
            results["transferred_finished"] = _events(other, 3)
            results["call_api_id"] = call_api_id
            results["popup_hidden"] = page.eval_on_selector("#incoming", "el => el.hidden")
            results["rows"] = page.eval_on_selector_all("#history tbody tr", "rows => rows.length")
            results["errors"] = errors
            # A dropped connection comes back by itself.
            page.evaluate("window.__status = []; pz.onStatus(s => window.__status.push(s))")
            in_reactor(lambda: [p.dropConnection(abort=True) for p in list(app_hub()._connections)])
            page.wait_for_function(
                "window.__status.includes('disconnected') && pz.isConnected()", timeout=10_000
            )
            results["reconnected"] = page.evaluate("window.__status")
            # 3. A wrong client_id is refused, and says why.
            bad = state["browser"].new_page()
            bad.goto(f"{base}&client_id=wrong&phone=1000&connect=1")
            bad.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('refused')",
                timeout=10_000,
            )
            results["refused"] = bad.text_content("#status")
            results["refused_connected"] = bad.evaluate("pz.isConnected()")
            # 4. 1001's token asked to follow 1000 is refused.
            token = results["other_client_id"]
            foreign = state["browser"].new_page()
            foreign.goto(f"{base}&client_id={token}&phone=1000&connect=1")
            foreign.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('refused')",
                timeout=10_000,
            )
            results["other_extension"] = foreign.text_content("#status")
        finally:
            close()

    await threads.deferToThread(scenario)

    assert results["errors"] == []
    assert results["ringing_seen"], "pz.call() did not ring the user's phone"
    [outgoing] = results["outgoing"]
    assert outgoing["direction"] == 1 and outgoing["history"] and not outgoing["incoming"]
    assert outgoing["to"] == "380639920051"
    assert outgoing["record"].startswith(f"http://127.0.0.1:{HTTP_PORT}/records/")
    assert 1 <= outgoing["duration"] <= 3
    assert results["no_popup_for_own_call"] == []
    [incoming] = results["incoming"]
    assert incoming["incoming"] and not incoming["transfer"] and not incoming["history"]
    assert incoming["to"] == "1000" and incoming["from"]
    finished = results["finished"][-1]
    assert finished["callID"] == incoming["callID"]
    assert finished["direction"] == 0 and finished["history"]
    assert finished["end"] >= finished["start"] > 1_700_000_000
    assert 1 <= finished["duration"] <= 4
    assert "record" in finished
    assert results["popup_hidden"] is True and results["rows"] == 2
    [transfer] = results["transferred"]
    assert transfer["transfer"] and not transfer["incoming"]
    assert transfer["callID"] == results["call_api_id"] and transfer["to"]
    [after] = results["transferred_finished"]
    assert after["callID"] == results["call_api_id"] and after["direction"] == 0
    assert results["reconnected"][-1] == "connected"
    assert results["refused"] == "refused: invalid client_id"
    assert results["refused_connected"] is False
    assert results["other_client_id"].startswith("v1.1001.")
    assert results["outsider_transfer"] == "unknown_call"
    assert results["other_extension"] == "refused: this client_id is for extension 1001 only"
    assert screenshot.stat().st_size > 10_000
