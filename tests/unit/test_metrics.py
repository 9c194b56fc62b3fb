"""``GET /metrics``: what each collector counts, read back the way Prometheus
does (``text_string_to_metric_families``), through the real HTTP site in
memory, the real call lifecycle and the real SQLite store."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

from agi_app.ami.service import AMIService
from agi_app.ami.testing import FakeAMIServer
from agi_app.app import Application
from agi_app.calls.lifecycle import Lifecycle
from agi_app.config import DialingConfig, load
from agi_app.metrics import HTTP_BUCKETS, Histogram, Metrics
from agi_app.store.testing import MemoryStore
from agi_app.web import Router, build_site
from agi_app.web.history import HistoryEndpoints
from agi_app.web.testing import MemoryHTTP

T0 = 1795640677.0  # 2026-11-25T21:04:37Z
KEY = "metrics-key"


def _reactor():
    from twisted.internet import reactor

    return reactor


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(metrics: Metrics) -> dict:
    body, content_type = await metrics.exposition()
    assert content_type.startswith("text/plain")
    return samples(body.decode())


# -- the histogram kept in plain lists -----------------------------------------------


@given(st.lists(st.one_of(st.sampled_from(HTTP_BUCKETS),
                          st.floats(min_value=0, max_value=30, allow_nan=False)),
                max_size=40))  # fmt: skip
def test_the_histogram_counts_as_prometheus_client_does(values):
    ours = Histogram("x_seconds", "x", HTTP_BUCKETS, labels=("route",))
    registry = CollectorRegistry()
    reference = ReferenceHistogram("x_seconds", "x", ("route",), buckets=HTTP_BUCKETS,
                                   registry=registry)  # fmt: skip
    for v in values:
        ours.observe(v, ("/a",))
        reference.labels("/a").observe(v)

    def wanted(samples):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples
                if not s.name.endswith("_created")}  # fmt: skip

    theirs = {k: v for f in registry.collect() for k, v in wanted(f.samples).items()}
    assert wanted(ours.family().samples) == pytest.approx(theirs)


def test_buckets_must_grow():
    with pytest.raises(ValueError):
        Histogram("x", "x", (1.0, 0.5))


# -- calls, from the lifecycle ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_final_statuses_setup_and_talk_time_come_from_the_lifecycle(tmp_path):
    clock = MemoryReactorClock()
    clock.advance(T0)
    store = MemoryStore(clock)
    ami = AMIService("127.0.0.1", 5038, "agi_app", "secret", reactor=clock)
    lifecycle = Lifecycle(store=store, ami=ami, dialing=DialingConfig(
        recordings_dir=str(tmp_path)), clock=clock)  # fmt: skip
    metrics = Metrics(clock=clock, store=store)
    lifecycle.on_status.append(metrics.status_logged)

    answered, _ = await lifecycle.create("makeCall", {}, sip="1000", phone="380639920000")
    for status in ("OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO"):
        await lifecycle.log(answered, status)
    clock.advance(7)
    await lifecycle.log(answered, "CLIENT_PICKUP")
    clock.advance(12)
    await lifecycle.finish(answered, ended_at=clock.seconds())
    busy, _ = await lifecycle.create("makeCall", {}, sip="1001", phone="380639920001")
    await lifecycle.log(busy, "OPERATOR_CALLTO")
    await lifecycle.log(busy, "OPERATOR_BUSY")
    await lifecycle.log(busy, "OPERATOR_BUSY")  # a repeat writes nothing, counts nothing

    found = await scrape(metrics)
    assert value(found, "agi_app_calls_total", final_status="FINISH", pbx="default") == 1
    assert value(found, "agi_app_calls_total", final_status="OPERATOR_BUSY", pbx="default") == 1
    assert value(found, "agi_app_calls_total", final_status="CLIENT_BUSY", pbx="default") == 0
    assert value(found, "agi_app_call_setup_seconds_count") == 1
    assert value(found, "agi_app_call_setup_seconds_sum") == pytest.approx(7)
    assert value(found, "agi_app_call_setup_seconds_bucket", le="6.0") == 0
    assert value(found, "agi_app_call_setup_seconds_bucket", le="8.0") == 1
    assert value(found, "agi_app_call_talk_seconds_count") == 1
    assert value(found, "agi_app_call_talk_seconds_sum") == pytest.approx(12)
    # every status written after CALL: 5 of the first call, 2 of the second
    assert value(found, "agi_app_store_write_seconds_count") == 7


@pytest_twisted.ensureDeferred
async def test_an_observer_that_fails_does_not_stop_the_call(tmp_path):
    clock = MemoryReactorClock()
    store = MemoryStore(clock)
    ami = AMIService("127.0.0.1", 5038, "agi_app", "secret", reactor=clock)
    lifecycle = Lifecycle(store=store, ami=ami, dialing=DialingConfig(), clock=clock)
    seen = []
    lifecycle.on_status.append(lambda logged: 1 / 0)
    lifecycle.on_status.append(lambda logged: seen.append(logged.entry["status"]))
    call, _ = await lifecycle.create("makeCall", {}, sip="1000", phone="380639920000")
    assert await lifecycle.log(call, "OPERATOR_CALLTO") is not None
    assert seen == ["OPERATOR_CALLTO"]
    assert store.words(call.call_id) == ["CALL", "OPERATOR_CALLTO"]


# -- HTTP answers, through the site --------------------------------------------------


def _site(store, metrics: Metrics, *, open_access: bool = False):
    router = Router()
    HistoryEndpoints(store, public_url="http://127.0.0.1:8080").add_routes(router)
    metrics.add_routes(router, open_access=open_access)
    site = build_site(router, api_keys=(KEY,), static_dir=None, clock=_reactor(),
                      observe=metrics.observe_request)  # fmt: skip
    return MemoryHTTP(site, _reactor())


@pytest_twisted.ensureDeferred
async def test_http_answers_are_counted_by_route_method_and_code():
    store = MemoryStore(MemoryReactorClock())
    metrics = Metrics(clock=MemoryReactorClock(), store=store)
    http = _site(store, metrics)
    key = {"X-API-Key": KEY}
    for _ in range(3):
        assert (await http.get("http://127.0.0.1/api/callHistory.json", headers=key)).code == 200
    assert (await http.get("http://127.0.0.1/api/callHistory.json")).code == 401
    assert (await http.get("http://127.0.0.1/api/nothing-here", headers=key)).code == 404
    assert (await http.request("BREW", "http://127.0.0.1/api/callHistory")).code == 405

    response = await http.get("http://127.0.0.1/metrics", headers=key)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    found = samples((await response.content()).decode())
    name = "agi_app_http_request_duration_seconds_count"
    assert value(found, name, route="/api/callHistory", method="GET", code="200") == 3
    assert value(found, name, route="/api/callHistory", method="GET", code="401") == 1
    assert value(found, name, route="unmatched", method="GET", code="404") == 1
    # an unknown method is one label value, whatever it is
    assert value(found, name, route="unmatched", method="other", code="405") == 1
    assert value(found, "agi_app_http_request_duration_seconds_bucket", route="/api/callHistory",
                 method="GET", code="200", le="+Inf") == 3  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_metrics_need_a_key_unless_open():
    store = MemoryStore(MemoryReactorClock())
    closed = _site(store, Metrics(clock=MemoryReactorClock(), store=store))
    assert (await closed.get("http://127.0.0.1/metrics")).code == 401
    assert (await closed.get("http://127.0.0.1/metrics?api_key=wrong")).code == 401
    assert (await closed.get(f"http://127.0.0.1/metrics?api_key={KEY}")).code == 200
    opened = _site(store, Metrics(clock=MemoryReactorClock(), store=store), open_access=True)
    assert (await opened.get("http://127.0.0.1/metrics")).code == 200
    # only /metrics is open
    assert (await opened.get("http://127.0.0.1/api/callHistory.json")).code == 401


@pytest_twisted.ensureDeferred
async def test_openmetrics_when_asked_for():
    store = MemoryStore(MemoryReactorClock())
    http = _site(store, Metrics(clock=MemoryReactorClock(), store=store), open_access=True)
    response = await http.get("http://127.0.0.1/metrics",
                              headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith(
        "application/openmetrics-text")
    assert (await response.content()).endswith(b"# EOF\n")


# -- read when scraped ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_webhook_outbox_is_read_when_scraped():
    clock = MemoryReactorClock()
    clock.advance(T0)
    store = MemoryStore(clock)
    metrics = Metrics(clock=clock, store=store)
    found = await scrape(metrics)
    assert value(found, "agi_app_webhook_backlog") == 0
    assert value(found, "agi_app_webhook_oldest_undelivered_age_seconds") == 0
    subs = [await store.add_subscription(extension="1000", url=f"https://crm.example/{n}",
                                         method="POST", event_type="hangup", secret="s")
            for n in range(2)]  # fmt: skip
    ids = [s["id"] for s in subs]
    for at in (T0 - 30, T0 - 10):
        await store.enqueue_event(event_type="hangup", extension="1000", fields={"a": "1"},
                                  time_us=int(at * 1e6), created_at=at,
                                  subscription_ids=ids)  # fmt: skip
    [first, *_] = await store.pending_deliveries(ids[0])
    await store.delivery_finished(first["outbox_id"], outcome="given_up", attempts=3,
                                  http_status=500, error="HTTP 500", when=T0)  # fmt: skip
    clock.advance(5)
    found = await scrape(metrics)
    assert value(found, "agi_app_webhook_backlog") == 3
    # the given-up delivery was the oldest of ids[0]; ids[1] still waits for it
    assert value(found, "agi_app_webhook_oldest_undelivered_age_seconds") == pytest.approx(35)
    assert value(found, "agi_app_webhook_given_up_total") == 1


@pytest_twisted.ensureDeferred
async def test_a_closed_store_leaves_the_webhook_metrics_out():
    store = MemoryStore(MemoryReactorClock())
    await store.close()
    found = await scrape(Metrics(clock=MemoryReactorClock(), store=store))
    assert not [k for k in found if k[0].startswith("agi_app_webhook")]
    assert value(found, "agi_app_calls_total", final_status="FINISH", pbx="default") == 0


@pytest_twisted.ensureDeferred
async def test_the_ami_link_state_and_its_events():
    clock = MemoryReactorClock()
    pbx = FakeAMIServer(users={"agi_app": "secret"}, clock=clock)
    ami = AMIService("127.0.0.1", 5038, "agi_app", "secret", reactor=clock, ping_interval=3600)
    metrics = Metrics(clock=clock, amis=lambda: (ami,))
    found = await scrape(metrics)
    assert value(found, "agi_app_ami_connected", pbx="default") == 0
    ami.startService()
    pbx.accept(clock)
    before = ami.events_received
    for n in range(3):
        pbx.emit("DeviceStateChange", Device=f"PJSIP/10{n}", State="INUSE")
    found = await scrape(metrics)
    assert value(found, "agi_app_ami_connected", pbx="default") == 1
    assert value(found, "agi_app_ami_events_received_total", pbx="default") == before + 3
    await ami.stopService()


def test_each_application_has_a_registry_of_its_own():
    config = load(None, environ={})
    one, two = Application(config, MemoryReactorClock()), Application(config, MemoryReactorClock())
    assert one.metrics.registry is not two.metrics.registry
    # its own observer (beside the dashboard's), not the other's
    assert one.lifecycle.on_status.count(one.metrics.status_logged) == 1
    assert two.metrics.status_logged not in one.lifecycle.on_status
