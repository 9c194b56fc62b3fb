"""The tables of the events service, on SQLite and on PostgreSQL:
subscriptions, the outbox in order, the delivery log, event ids that only
grow, and a restart."""

from __future__ import annotations

import pytest
import pytest_twisted

from agi_app.store import Store, store_at
from agi_app.store.events_sqlite import LOG_KEEP


def _reactor():
    from twisted.internet import reactor

    return reactor


def open_store(location: str) -> Store:
    store = store_at(location, _reactor())
    store.open()
    return store


@pytest.fixture
def path(store_location: str) -> str:
    """Where the store is: an SQLite file, or a PostgreSQL URL."""
    return store_location


@pytest.fixture
def store(path: str):
    s = open_store(path)
    yield s
    pytest_twisted.blockon(s.close())


async def sub(store, ext="200", kind="hangup", url="http://127.0.0.1:9/h"):
    return await store.add_subscription(
        extension=ext, url=url, method="POST", event_type=kind, secret="s"
    )


async def enqueue(store, sub_ids, n=0, created=100.0):
    return await store.enqueue_event(
        event_type="hangup",
        extension="200",
        fields={"CallID": "c", "n": str(n)},
        time_us=int(created * 1e6),
        created_at=created,
        subscription_ids=sub_ids,
    )


@pytest_twisted.ensureDeferred
async def test_subscriptions_are_stored_listed_and_deleted(store):
    a = await sub(store)
    b = await sub(store, ext="201", kind="dial-in")
    assert a["id"] < b["id"] and a["secret"] == "s" and a["delivered"] == 0
    assert [s["id"] for s in await store.subscriptions("200")] == [a["id"]]
    assert [s["id"] for s in await store.subscriptions()] == [a["id"], b["id"]]
    assert (await store.get_subscription(b["id"]))["event_type"] == "dial-in"
    await enqueue(store, [a["id"]])
    assert await store.delete_subscription(a["id"])
    assert not await store.delete_subscription(a["id"])
    assert await store.get_subscription(a["id"]) is None
    assert await store.subscriptions_with_pending() == []


@pytest_twisted.ensureDeferred
async def test_outbox_keeps_order_and_skips_deleted_subscriptions(store):
    a, b = await sub(store), await sub(store)
    gone = await sub(store)
    await store.delete_subscription(gone["id"])
    ids = []
    for n in range(5):
        event_id, queued = await enqueue(store, [a["id"], b["id"], gone["id"]], n)
        assert queued == [a["id"], b["id"]]
        ids.append(event_id)
    assert ids == sorted(ids) and len(set(ids)) == 5
    rows = await store.pending_deliveries(a["id"], limit=3)
    assert [r["fields"]["n"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["event_type"] == "hangup" and rows[0]["attempts"] == 0
    assert await store.subscriptions_with_pending() == [a["id"], b["id"]]
    # Nobody left to deliver to: the event is not even kept.
    event_id, queued = await enqueue(store, [gone["id"]])
    assert queued == [] and event_id > ids[-1]


@pytest_twisted.ensureDeferred
async def test_failures_and_outcomes_are_logged(store):
    a = await sub(store)
    await enqueue(store, [a["id"]], 0, created=100.0)
    await enqueue(store, [a["id"]], 1, created=101.0)
    first, second = await store.pending_deliveries(a["id"])
    await store.delivery_failed(
        first["outbox_id"], attempts=2, next_attempt_at=150.0, error="HTTP 500", when=120.0
    )
    summary = await store.delivery_summary(a["id"])
    assert summary == {
        "pending": 2,
        "oldest_pending_at": 100.0,
        "attempts": 2,
        "last_error": "HTTP 500",
    }
    [again, _] = await store.pending_deliveries(a["id"])
    assert again["attempts"] == 2 and again["next_attempt_at"] == 150.0
    await store.delivery_finished(
        first["outbox_id"],
        outcome="given_up",
        attempts=3,
        http_status=500,
        error="HTTP 500",
        when=200.0,
    )
    await store.delivery_finished(
        second["outbox_id"],
        outcome="delivered",
        attempts=1,
        http_status=200,
        error=None,
        when=201.0,
    )
    log = await store.delivery_log(a["id"])
    assert [(e["event_id"], e["outcome"]) for e in log] == [
        (second["event_id"], "delivered"),
        (first["event_id"], "given_up"),
    ]
    assert [e["outcome"] for e in await store.delivery_log(a["id"], outcome="given_up")] == [
        "given_up"
    ]
    s = await store.get_subscription(a["id"])
    assert (s["delivered"], s["given_up"], s["last_delivered_at"]) == (1, 1, 201.0)
    assert await store.pending_deliveries(a["id"]) == []
    with pytest.raises(ValueError):
        await store.delivery_finished(
            1, outcome="lost", attempts=1, http_status=None, error=None, when=1.0
        )


@pytest_twisted.ensureDeferred
async def test_the_outbox_and_event_ids_survive_a_restart(path):
    store = open_store(path)
    a = await sub(store)
    last, _ = await enqueue(store, [a["id"]], 0)
    [row] = await store.pending_deliveries(a["id"])
    await store.delivery_finished(
        row["outbox_id"], outcome="delivered", attempts=1, http_status=200, error=None, when=1.0
    )
    last, _ = await enqueue(store, [a["id"]], 1)
    await store.close()
    store = open_store(path)
    try:
        [row] = await store.pending_deliveries(a["id"])
        assert row["fields"]["n"] == "1" and row["event_id"] == last
        # The delivered event's row is gone, yet ids never repeat.
        new_id, _ = await enqueue(store, [a["id"]], 2)
        assert new_id == last + 1
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_is_capped_per_subscription(store):
    a = await sub(store)
    for n in range(LOG_KEEP + 150):
        await enqueue(store, [a["id"]], n)
    rows = await store.pending_deliveries(a["id"], limit=LOG_KEEP + 150)
    for r in rows:
        await store.delivery_finished(
            r["outbox_id"], outcome="delivered", attempts=1, http_status=200, error=None, when=1.0
        )
    log = await store.delivery_log(a["id"], limit=10_000)
    assert LOG_KEEP <= len(log) < LOG_KEEP + 100
    assert log[0]["event_id"] == rows[-1]["event_id"]
