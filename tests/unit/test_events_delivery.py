"""Delivery of queued events: signatures, order per subscription, retries
with capped backoff, giving up, isolation of slow receivers, and the treq
sender against a real local receiver."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

from agi_app.client import verify_signature
from agi_app.events.delivery import (
    DeliverySettings,
    OutgoingRequest,
    TreqSender,
    build_request,
)
from agi_app.events.service import EventService
from agi_app.events.testing import MemoryEventStore, Receiver
from agi_app.netguard import ForbiddenTarget, TargetGuard

T0 = 1795640677.0
SETTINGS = DeliverySettings(retry_delay=1, max_retry_delay=8, give_up_after=60, timeout=5)
#: the receivers of these tests are on loopback
LOOPBACK = TargetGuard(["127.0.0.0/8"])


class FakeSender:
    """Records requests; each answer is a Deferred the test fires."""

    def __init__(self) -> None:
        self.requests: list[OutgoingRequest] = []
        self.pending: list[defer.Deferred] = []
        self.auto: int | None = None  # answer every request with this status at once

    def __call__(self, request: OutgoingRequest) -> defer.Deferred:
        self.requests.append(request)
        if self.auto is not None:
            return defer.succeed(self.auto)
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def answer(self, status: int = 200) -> None:
        self.pending.pop(0).callback(status)

    def refuse(self) -> None:
        self.pending.pop(0).errback(ConnectionRefusedError("refused"))

    def fields(self, i: int) -> dict[str, str]:
        r = self.requests[i]
        raw = r.body.decode() if r.method == "POST" else r.url.partition("?")[2]
        return dict(parse_qsl(raw))


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(T0)
    return c


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def service(store, sender, clock) -> EventService:
    svc = EventService(store, send=sender, clock=clock, settings=SETTINGS, guard=LOOPBACK)
    svc.deliverer._stopped = False  # started with nothing pending
    return svc


def run(coro):
    d = defer.ensureDeferred(coro)
    assert d.called, "the in-memory store answers at once"
    return d.result if not isinstance(d.result, Exception) else d.result


def subscribe(
    service, ext="200", url="http://127.0.0.1:9/hook?myid=175", method="POST", kind="hangup"
):
    return run(service.subscribe(ext, url=url, method=method, event_type=kind))


def publish(service, ext="200", kind="hangup", **fields):
    return run(service.publish(ext, kind, {"CallID": "c1", **fields}))


def test_request_is_signed_over_the_body_or_the_whole_query_string():
    sub = {"id": 1, "url": "http://127.0.0.1:9/h?myid=175", "method": "GET", "secret": "s3"}
    delivery = {"event_type": "dial-in", "event_id": 7, "time_us": 1, "fields": {"A": "б c"}}
    get = build_request(sub, delivery, T0)
    assert get.body is None
    query = get.url.partition("?")[2]
    assert query.startswith("myid=175&EventType=dial-in&EventID=7&EventTime=1&A=")
    assert verify_signature("s3", get.headers["X-Signature"], query, now=T0)
    assert not verify_signature("s3", get.headers["X-Signature"], query + "x", now=T0)
    post = build_request({**sub, "method": "POST"}, delivery, T0)
    assert post.url == sub["url"] and post.headers["Content-Type"].startswith("application/x-www")
    assert dict(parse_qsl(post.body.decode()))["A"] == "б c"
    assert verify_signature("s3", post.headers["X-Signature"], post.body, now=T0)
    assert not verify_signature("other", post.headers["X-Signature"], post.body, now=T0)


def test_events_go_out_in_order_one_at_a_time(service, sender, store):
    sub = subscribe(service)
    for n in range(3):
        assert publish(service, n=str(n)) == n + 1
    # One request in flight per subscription: the next waits for the answer.
    assert len(sender.requests) == 1
    sender.answer(200)
    sender.answer(204)
    sender.answer(200)
    assert [sender.fields(i)["n"] for i in range(3)] == ["0", "1", "2"]
    assert [sender.fields(i)["EventID"] for i in range(3)] == ["1", "2", "3"]
    assert store.outbox == {}
    assert [e["outcome"] for e in store.log] == ["delivered"] * 3
    assert store.subs[sub["id"]]["delivered"] == 3


def test_nobody_subscribed_stores_nothing(service, store, sender):
    subscribe(service, kind="answer")
    assert publish(service, kind="hangup") is None
    assert publish(service, ext="201", kind="answer") is None
    assert store.events == {} and sender.requests == []


def test_failures_back_off_exponentially_up_to_the_cap_and_keep_order(
    service, sender, store, clock
):
    sub = subscribe(service)
    publish(service, n="0")
    publish(service, n="1")
    times = []
    for _ in range(6):
        times.append(clock.seconds() - T0)
        sender.refuse()
        clock.advance(SETTINGS.max_retry_delay)
    # Attempts at 0, 1, 3, 7, 15, 23: delays 1, 2, 4, 8, 8 (capped).
    assert len(sender.requests) == 7
    assert all(sender.fields(i)["n"] == "0" for i in range(7)), "event 1 never overtakes 0"
    row = next(iter(store.outbox.values()))
    assert row["attempts"] == 6 and "refused" in row["last_error"]
    summary = run(service.subscription("200", sub["id"]))["delivery"]
    assert summary["pending"] == 2 and summary["attempts"] == 6
    sender.answer(200)
    sender.answer(200)
    assert [sender.fields(i)["n"] for i in (6, 7)] == ["0", "1"]
    assert store.outbox == {}


def test_retry_delays_follow_the_settings():
    s = DeliverySettings(retry_delay=1, max_retry_delay=8)
    assert [s.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert s.delay(10_000) == 8


def test_given_up_at_the_documented_age_then_the_next_goes(service, sender, store, clock):
    sub = subscribe(service)
    sender.auto = 500
    publish(service, n="0")
    clock.advance(30)
    publish(service, n="1")
    while not store.log:
        clock.advance(1)
    # Retried until it was give_up_after old; the last attempt right at that age.
    assert clock.seconds() - T0 == SETTINGS.give_up_after
    [given_up] = store.log
    assert given_up["outcome"] == "given_up" and given_up["event_id"] == 1
    assert given_up["error"] == "HTTP 500" and given_up["http_status"] == 500
    assert all(sender.fields(i)["n"] == "0" for i in range(len(sender.requests) - 1))
    # Event 1 is next, at once; it is 30 s younger so it still gets retried.
    assert sender.fields(len(sender.requests) - 1)["n"] == "1"
    sender.auto = 200
    clock.advance(SETTINGS.max_retry_delay)
    assert [e["outcome"] for e in store.log] == ["given_up", "delivered"]
    detail = run(service.subscription("200", sub["id"]))
    assert detail["delivery"]["given_up"] == 1 and detail["delivery"]["delivered"] == 1
    assert detail["delivery"]["give_up_after"] == SETTINGS.give_up_after
    failures = run(service.deliveries("200", sub["id"], outcome="given_up"))
    assert [f["event_id"] for f in failures] == [1]


def test_a_forbidden_target_is_given_up_at_once_then_the_next_goes(
    service, sender, store, clock
):
    sub = subscribe(service)
    publish(service, n="0")
    publish(service, n="1")
    sender.pending.pop(0).errback(
        ForbiddenTarget("url", "url: rebind.test resolves to 127.0.0.1, a loopback address")
    )
    # No retry, however young the event: the next one is sent at once.
    [given_up] = store.log
    assert given_up["outcome"] == "given_up" and given_up["attempts"] == 1
    assert given_up["error"] == (
        "forbidden_target: url: rebind.test resolves to 127.0.0.1, a loopback address"
    )
    assert len(sender.requests) == 2 and sender.fields(1)["n"] == "1"
    assert clock.seconds() == T0
    detail = run(service.subscription("200", sub["id"]))["delivery"]
    assert detail["given_up"] == 1 and detail["last_error"].startswith("forbidden_target: ")
    assert service.deliverer.stats["given_up"] == 1


def test_subscribing_to_a_forbidden_target_creates_nothing(store, sender, clock):
    strict = EventService(store, send=sender, clock=clock, settings=SETTINGS)  # default guard
    failures: list = []
    d = defer.ensureDeferred(
        strict.subscribe("200", url="http://0x7f000001:9/hook", method="POST", event_type="hangup")
    )
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(ForbiddenTarget)
    assert failure.value.code == "forbidden_target" and failure.value.field == "url"
    assert store.subs == {}
    assert subscribe(strict, url="https://crm.example.com/hook")["id"] == 1


def test_a_dead_receiver_does_not_hold_up_another(service, sender, store, clock):
    slow = subscribe(service, url="http://127.0.0.1:8/slow")
    fast = subscribe(service, url="http://127.0.0.1:8/fast")
    publish(service)
    publish(service)
    assert sorted(r.url for r in sender.requests) == ["http://127.0.0.1:8/fast", "http://127.0.0.1:8/slow"]
    by_url = {r.url: i for i, r in enumerate(sender.requests)}
    # The fast one answers, the slow one never does.
    sender.pending[by_url["http://127.0.0.1:8/fast"]].callback(200)
    fast_requests = [r for r in sender.requests if r.url == "http://127.0.0.1:8/fast"]
    assert len(fast_requests) == 2, "the second event went to the fast receiver at once"
    sender.pending[-1].callback(200)
    assert store.subs[fast["id"]]["delivered"] == 2
    assert store.subs[slow["id"]]["delivered"] == 0
    # The slow attempt times out and is retried later.
    clock.advance(SETTINGS.timeout + 1)
    assert "no answer within" in store.outbox[min(store.outbox)]["last_error"]


def test_unsubscribe_drops_what_is_queued(service, sender, store):
    sub = subscribe(service)
    publish(service)
    publish(service)
    assert run(service.unsubscribe("200", sub["id"]))
    assert store.outbox == {}
    assert not run(service.unsubscribe("200", sub["id"]))
    assert publish(service) is None


def test_restart_resumes_the_outbox(store, sender, clock):
    first = EventService(store, send=sender, clock=clock, settings=SETTINGS, guard=LOOPBACK)
    run(first.start())
    subscribe(first)
    publish(first, n="0")
    publish(first, n="1")
    first.stop()  # the process ends with both queued (one was in flight)
    assert len(store.outbox) == 2
    again = FakeSender()
    again.auto = 200
    second = EventService(store, send=again, clock=clock, settings=SETTINGS, guard=LOOPBACK)
    run(second.start())
    assert [again.fields(i)["n"] for i in range(2)] == ["0", "1"]
    assert store.outbox == {}


def test_event_time_never_goes_backwards(service, clock):
    a = service.event_time_us()
    clock.advance(-5)
    assert service.event_time_us() == a
    assert service.event_time_us(T0 + 10) == int((T0 + 10) * 1_000_000)


@pytest_twisted.ensureDeferred
async def test_treq_sender_against_a_real_receiver():
    from twisted.internet import reactor

    receiver = Receiver()
    port = reactor.listenTCP(0, receiver.site(), interface="127.0.0.1")
    sender = TreqSender(reactor, timeout=5, guard=LOOPBACK)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/hook?myid=175"
        sub = {"id": 1, "url": url, "method": "GET", "secret": "k"}
        delivery = {"event_type": "answer", "event_id": 3, "time_us": 5, "fields": {"X": "a b&c"}}
        assert await sender(build_request(sub, delivery, reactor.seconds())) == 200
        post = build_request({**sub, "method": "POST"}, delivery, reactor.seconds())
        receiver.status = 503
        assert await sender(post) == 503
        got_get, got_post = receiver.requests
        assert got_get.fields == {
            "myid": "175",
            "EventType": "answer",
            "EventID": "3",
            "EventTime": "5",
            "X": "a b&c",
        }
        for got in (got_get, got_post):
            assert verify_signature("k", got.headers["x-signature"], got.signed_payload)
        assert got_post.fields["X"] == "a b&c" and got_post.path == "/hook"
    finally:
        await sender.close()
        await port.stopListening()
    with pytest.raises(ConnectionRefusedError):
        await TreqSender(reactor, timeout=5, guard=LOOPBACK)(OutgoingRequest("GET", url, {}, None))
