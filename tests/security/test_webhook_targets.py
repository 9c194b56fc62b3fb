"""Webhook URLs cannot make agi_app reach inside its own network.

- At subscription, through the real application's HTTP API (built from a
  configuration, served in memory): every spelling of an internal address
  is refused with 400 ``forbidden_target`` and nothing is created;
  ``[events] allowed_networks`` lets 127.0.0.1 through, but never
  agi_app's own ports.
- At delivery, through the real treq sender over TCP: a host name that a
  test resolver maps to 127.0.0.1 (DNS rebinding: the name passed the
  subscription check) is refused when connecting; the receiver, listening
  on that address, sees no connection, and the subscription shows the
  delivery given up with ``forbidden_target``.  The same delivery with
  127.0.0.0/8 allowed arrives, so the refusal is the guard's doing.

Nothing here can leave this host: the test resolver only knows loopback
addresses, and refused URLs are never connected to.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.protocols.policies import WrappingFactory

from agi_app.app import Application
from agi_app.config import load
from agi_app.events.delivery import DeliverySettings, TreqSender
from agi_app.events.service import EventService
from agi_app.events.testing import MemoryEventStore, Receiver
from agi_app.netguard import TargetGuard
from agi_app.netguard.testing import LoopbackResolver
from agi_app.web.api import Router
from agi_app.web.extensions_events import ExtensionEventEndpoints
from agi_app.web.site import build_site
from agi_app.web.testing import MemoryHTTP

#: an extension with no calls: nothing it subscribes to can fire meanwhile
EXT = "9999"
#: the application's own ports in these tests (nothing listens on them)
HTTP_PORT, AGI_PORT, WS_PORT = 18480, 18481, 18482

SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:5038/",
    "http://[::1]/",
    "http://10.0.0.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://127.0.0.1./",
    "http://localhost./",
    "http://api.localhost/",
    "http://evil@127.0.0.1/",
    "http://crm.example.com:80@127.0.0.1/",
    "https://192.168.1.1/hook",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[ff02::1]/",
    "http://08.0.0.1/",
]


def _reactor():
    from twisted.internet import reactor

    return reactor


async def call(http: MemoryHTTP, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    response = await http.request(method, "http://127.0.0.1" + path, data=data, headers=headers)
    content = await response.content()
    return response.code, (json.loads(content) if content else None)


async def _application(tmp_path, allowed: str):
    config = load(
        None,
        environ={
            "AGI_APP_STORE_PATH": str(tmp_path / "agi_app.sqlite3"),
            "AGI_APP_HTTP_LISTEN": f"tcp:{HTTP_PORT}:interface=127.0.0.1",
            "AGI_APP_AGI_LISTEN": f"tcp:{AGI_PORT}:interface=127.0.0.1",
            "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{WS_PORT}:interface=127.0.0.1",
            "AGI_APP_EVENTS_ALLOWED_NETWORKS": allowed,
        },
    )
    app = Application(config, _reactor())
    app.store.open()
    await app.events.service.start()  # subscriptions only: no PBX, no listening
    return app, MemoryHTTP(app.site(), _reactor())


async def _close(app) -> None:
    app.events.service.stop()
    await app.events.sender.close()
    await app.store.close()


async def _subscriptions(http) -> list[dict[str, Any]]:
    code, body = await call(http, "GET", f"/extension/{EXT}/event/")
    assert code == 200, body
    return body["subscriptions"]


async def _delete_all(http) -> None:
    for sub in await _subscriptions(http):
        await call(http, "DELETE", f"/extension/{EXT}/event/{sub['id']}")


@pytest_twisted.ensureDeferred
async def test_every_spelling_of_an_internal_address_is_refused_at_subscription(tmp_path):
    app, http = await _application(tmp_path, "")
    try:
        assert await _subscriptions(http) == []
        for url in SPELLINGS:
            code, body = await call(
                http, "POST", f"/extension/{EXT}/event/", {"url": url, "event_type": "hangup"}
            )
            assert code == 400, (url, body)
            assert body["error"]["code"] == "forbidden_target", (url, body)
            assert body["error"]["field"] == "url"
            assert await _subscriptions(http) == [], url
        # A public name is accepted (resolved only when delivering).
        code, sub = await call(
            http,
            "POST",
            f"/extension/{EXT}/event/",
            {"url": "https://crm.example.com/hook", "event_type": "hangup"},
        )
        assert code == 201, sub
    finally:
        await _delete_all(http)
        assert await _subscriptions(http) == []
        await _close(app)


@pytest_twisted.ensureDeferred
async def test_allowed_networks_let_loopback_through_but_never_own_ports(tmp_path):
    app, http = await _application(tmp_path, "127.0.0.0/8")
    try:
        for url in ("http://127.0.0.1:9000/hook", "http://0x7f000001:9000/hook",
                    "http://localhost:9000/hook"):  # fmt: skip
            code, sub = await call(
                http, "POST", f"/extension/{EXT}/event/", {"url": url, "event_type": "answer"}
            )
            assert code == 201, (url, sub)
        for port in (HTTP_PORT, AGI_PORT, WS_PORT, 5038):  # 5038: the PBX's AMI on this host
            code, body = await call(
                http,
                "POST",
                f"/extension/{EXT}/event/",
                {"url": f"http://127.0.0.1:{port}/", "event_type": "answer"},
            )
            assert code == 400 and body["error"]["code"] == "forbidden_target", (port, body)
            assert f"port {port}" in body["error"]["message"]
        for url in ("http://10.0.0.1/", "http://[::1]:9000/", "http://169.254.169.254/"):
            code, body = await call(
                http, "POST", f"/extension/{EXT}/event/", {"url": url, "event_type": "answer"}
            )
            assert code == 400 and body["error"]["code"] == "forbidden_target", (url, body)
        assert len(await _subscriptions(http)) == 3
    finally:
        await _delete_all(http)
        assert await _subscriptions(http) == []
        await _close(app)


# -- at delivery --------------------------------------------------------------------


class Counting(WrappingFactory):
    """The receiver's listening factory, counting the connections it accepts."""

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self.accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)


class WatchedStore(MemoryEventStore):
    """Tells when a delivery left the outbox (delivered or given up)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[defer.Deferred] = []

    def delivery_finished(self, outbox_id, **kw):
        d = super().delivery_finished(outbox_id, **kw)
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.callback(kw["outcome"])
        return d

    def next_finished(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(10, _reactor())


@pytest.fixture
def crm():
    receiver = Receiver()
    counting = Counting(receiver.site())
    port = _reactor().listenTCP(0, counting, interface="127.0.0.1")
    yield receiver, counting, port.getHost().port
    port.stopListening()


async def _deliver_once(guard: TargetGuard, url: str) -> tuple[str, dict[str, Any]]:
    """Subscribe ``url`` through the HTTP API, publish one event, wait until
    its delivery is finished; the outcome and the subscription's state."""
    resolver = LoopbackResolver({"crm.rebind.test": ["127.0.0.1"]})
    store = WatchedStore()
    sender = TreqSender(_reactor(), timeout=5, guard=guard, resolver=resolver)
    settings = DeliverySettings(retry_delay=0.1, max_retry_delay=0.1, give_up_after=30, timeout=5)
    service = EventService(store, send=sender, clock=_reactor(), settings=settings, guard=guard)
    await service.start()
    router = Router()
    endpoints = ExtensionEventEndpoints(service, None, default_trunk="pstn", call_time_to_ext=30)
    endpoints.add_routes(router)
    site = build_site(router, api_keys=(), static_dir=None, clock=_reactor())
    http = MemoryHTTP(site, _reactor())
    try:
        code, sub = await call(
            http, "POST", f"/extension/{EXT}/event/", {"url": url, "event_type": "hangup"}
        )
        assert code == 201, sub
        finished = store.next_finished()
        await service.publish(EXT, "hangup", {"CallID": "c-1"})
        outcome = await finished
        code, detail = await call(http, "GET", f"/extension/{EXT}/event/{sub['id']}")
        assert code == 200
        assert resolver.lookups == ["crm.rebind.test"]
        await call(http, "DELETE", f"/extension/{EXT}/event/{sub['id']}")
        return outcome, detail
    finally:
        service.stop()
        await sender.close()


@pytest_twisted.ensureDeferred
async def test_a_name_rebound_to_loopback_is_refused_when_connecting(crm):
    receiver, counting, port = crm
    outcome, detail = await _deliver_once(TargetGuard(), f"http://crm.rebind.test:{port}/hook")
    assert outcome == "given_up"
    delivery = detail["delivery"]
    assert delivery["given_up"] == 1 and delivery["delivered"] == 0 and delivery["pending"] == 0
    assert delivery["last_error"] == (
        "forbidden_target: url: crm.rebind.test resolves to 127.0.0.1, a loopback address "
        "(allowed: public addresses and [events] allowed_networks)"
    )
    assert counting.accepted == 0 and receiver.requests == []


@pytest_twisted.ensureDeferred
async def test_own_ports_are_refused_when_connecting_even_inside_allowed_networks(crm):
    receiver, counting, port = crm
    guard = TargetGuard(["127.0.0.0/8"], own_ports=[(port, "agi_app's HTTP API")])
    outcome, detail = await _deliver_once(guard, f"http://crm.rebind.test:{port}/hook")
    assert outcome == "given_up"
    assert detail["delivery"]["last_error"].startswith("forbidden_target: ")
    assert counting.accepted == 0 and receiver.requests == []


@pytest_twisted.ensureDeferred
async def test_the_same_delivery_arrives_when_loopback_is_allowed(crm):
    receiver, counting, port = crm
    outcome, detail = await _deliver_once(
        TargetGuard(["127.0.0.0/8"]), f"http://crm.rebind.test:{port}/hook"
    )
    assert outcome == "delivered"
    assert detail["delivery"]["delivered"] == 1 and detail["delivery"]["last_error"] is None
    assert counting.accepted == 1
    [request] = receiver.requests
    assert request.fields["EventType"] == "hangup" and request.fields["CallID"] == "c-1"
