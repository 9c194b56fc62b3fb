"""The widget in headless Chromium against the running service: the CRM
page's ``prostiezvonki.js`` (the demo page, served by agi_app) with a token
for one extension cannot follow or act as another one.

Refused, each with what the page is told: another extension (in the hello
and by ``pz.setUserPhone``), a forged token, an expired token, a page of a
foreign origin, a transfer of a call the user is not in; and no event of
another extension's call reaches the page.  Beside each refusal the same
thing done rightly works.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlencode

import pytest
import pytest_twisted
from widget_service import (
    BrowserThread,
    browser_missing,
    in_reactor,
    reactor,
    start_service,
    until,
)

STATUS = "document.querySelector('#status').textContent"


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    thread = BrowserThread()
    yield thread
    thread.stop()


@pytest_twisted.async_yield_fixture
async def service(tmp_path):
    running = await start_service(tmp_path)
    yield running
    await running.stop()


def page_url(service, *, client_id=None, phone=None, origin=None) -> str:
    query = {"host": service.ws_url, "connect": "1"}
    if client_id is not None:
        query["client_id"] = client_id
    if phone is not None:
        query["phone"] = phone
    return f"{origin or service.base}/static/demo.html?{urlencode(query)}"


def open_page(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.evaluate("window.__events = []; pz.onEvent(e => window.__events.push("
                  "{type: e.type, callID: e.callID}))")  # fmt: skip
    page.errors = errors
    return page


def refused_with(page) -> str:
    page.wait_for_function(f"{STATUS}.startsWith('refused')", timeout=10_000)
    assert page.evaluate("pz.isConnected()") is False
    return page.text_content("#status")


def connected(page) -> None:
    page.wait_for_function("pz.isConnected()", timeout=10_000)


@pytest_twisted.ensureDeferred
async def test_another_extension_is_refused(browser, service):
    token = service.token("1000")

    def scenario(b):
        asked = open_page(b, page_url(service, client_id=token, phone="1001"))
        own = open_page(b, page_url(service, client_id=token, phone="1000"))
        connected(own)
        following = in_reactor(lambda: service.hub.widgets_of("1000"))
        own.evaluate("pz.setUserPhone('1001')")
        return refused_with(asked), following, refused_with(own), own.errors + asked.errors

    in_hello, following, switched, errors = await browser.run(scenario)
    assert in_hello == "refused: this client_id is for extension 1000 only"
    assert following == 1, "the right extension connects"
    assert switched == "refused: this client_id is for extension 1000 only"
    assert service.hub.widgets_of("1001") == 0 and errors == []


@pytest_twisted.ensureDeferred
async def test_forged_and_expired_tokens_are_refused(browser, service):
    now = int(reactor().seconds())
    genuine = service.token("1000")
    pages = {
        "other secret": service.token("1000", secret="guessed-secret-0123"),
        "other extension": genuine.replace("v1.1000.", "v1.1001."),
        "expired": service.token("1000", expires=now - 1),
        "genuine": genuine,
    }

    def scenario(b):
        opened = {k: open_page(b, page_url(service, client_id=v)) for k, v in pages.items()}
        connected(opened["genuine"])
        return {k: refused_with(p) for k, p in opened.items() if k != "genuine"}

    assert await browser.run(scenario) == {
        "other secret": "refused: invalid token",
        "other extension": "refused: invalid token",
        "expired": "refused: token expired",
    }


@pytest_twisted.ensureDeferred
async def test_a_page_of_a_foreign_origin_is_refused(browser, service):
    # crm.test resolves to 127.0.0.1 in this browser: agi_app serves the
    # page, but the browser calls its origin http://crm.test:PORT.
    token = service.token("1000")
    foreign = page_url(service, client_id=token, phone="1000",
                       origin=f"http://crm.test:{service.http_port}")  # fmt: skip

    def scenario(b):
        page = open_page(b, foreign)
        page.wait_for_function(f"{STATUS} === 'disconnected'", timeout=10_000)
        refusals = in_reactor(lambda: service.hub.refusals["origin"])
        page.wait_for_timeout(1500)  # the widget tries again after 1 s
        again = in_reactor(lambda: service.hub.refusals["origin"])
        state = page.evaluate("pz.isConnected()"), page.evaluate("location.origin")
        page.close()  # its retries stop: what follows counts the own page only
        time.sleep(0.5)
        before_own = in_reactor(lambda: service.hub.refusals["origin"])
        own = open_page(b, page_url(service, client_id=token, phone="1000"))
        connected(own)
        return refusals, again, state, before_own

    refusals, again, (is_connected, origin), before_own = await browser.run(scenario)
    assert origin == f"http://crm.test:{service.http_port}"
    assert refusals >= 1 and again > refusals and is_connected is False
    assert service.hub.refusals["origin"] == before_own, "the page of agi_app itself was refused"


@pytest_twisted.ensureDeferred
async def test_a_transfer_of_a_call_the_user_is_not_in_is_refused(browser, service):
    transfer = """([call, to]) => pz.transfer(call, to).then(
        () => 'ok', e => e.code)"""

    def scenario(b):
        outsider = open_page(b, page_url(service, client_id=service.token("1000")))
        owner = open_page(b, page_url(service, client_id=service.token("1001")))
        connected(outsider), connected(owner)
        call = in_reactor(service.calls.client_calls, "1001")
        owner.wait_for_function("window.__events.some(e => e.type === 2)", timeout=10_000)
        tracker = service.app.tracker
        in_reactor(until, lambda: all(leg.bridge for leg in tracker.call(call).legs.values()))
        refused = outsider.evaluate(transfer, [call, "380990000000"])
        redirects_after_refusal = in_reactor(lambda: len(service.redirects()))
        done = owner.evaluate(transfer, [call, "1002"])
        in_reactor(service.calls.hang_up, call)
        owner.wait_for_function("window.__events.some(e => e.type === 3)", timeout=10_000)
        outsider.wait_for_timeout(300)
        events = outsider.evaluate("window.__events"), owner.evaluate("window.__events")
        return call, refused, redirects_after_refusal, done, *events

    call, refused, redirects, done, outsider_events, owner_events = await browser.run(scenario)
    assert refused == "unknown_call" and redirects == 0
    assert done == "ok" and len(service.redirects()) == 1
    assert outsider_events == [], "1000's page saw nothing of 1001's call"
    assert [e["type"] for e in owner_events] == [2, 3]
    assert {e["callID"] for e in owner_events} == {call}


@pytest_twisted.ensureDeferred
async def test_the_demo_page_asks_its_server_for_a_token(browser, service):
    def scenario(b):
        page = open_page(b, page_url(service, phone="1002"))
        connected(page)
        return page.input_value("#client_id"), page.errors

    client_id, errors = await browser.run(scenario)
    assert client_id.startswith("v1.1002.") and errors == []
    assert service.hub.widgets_of("1002") == 1
