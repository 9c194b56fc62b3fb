"""Several nodes on one PostgreSQL store (agi_app.cluster): two stores,
two lock sessions and two event services (or lifecycles) on one throwaway
database are two nodes as far as the database can tell."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import CALL_ID_VAR, Lifecycle
from agi_app.cluster import LEADER_SPACE, ClusterNode, Leadership
from agi_app.config import DialingConfig
from agi_app.events.delivery import DeliverySettings, OutgoingRequest
from agi_app.events.service import EventService
from agi_app.netguard import TargetGuard
from agi_app.store import store_at
from agi_app.store.cluster_pg import ClusterLink


def _reactor():
    from twisted.internet import reactor

    return reactor


async def _until(check, timeout: float = 10.0, step: float = 0.05) -> float:
    """Wait (on the reactor) until ``check()`` is true; seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await task.deferLater(_reactor(), step, lambda: None)
    return time.monotonic() - started


def _kill_session(url: str, application_name: str) -> int:
    """End the sessions of a node from outside (as PostgreSQL does when the
    node's machine dies): returns how many."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        ).fetchone()[0]


class Recorder:
    """A :class:`~agi_app.events.delivery.Sender` that notes every request
    it is given by which node, and answers 200 after ``delay`` seconds (or
    never, while ``hold`` is set)."""

    def __init__(self, node: str, log: list[tuple[str, int]], delay: float = 0.0):
        self.node = node
        self.log = log
        self.delay = delay
        self.hold = False

    def __call__(self, request: OutgoingRequest) -> defer.Deferred[int]:
        self.log.append((self.node, int(request.headers["X-Event-ID"])))
        if self.hold:
            return defer.Deferred()  # cancelled when the worker stops
        return task.deferLater(_reactor(), self.delay, lambda: 200)


class Node:
    """One node: a store, an event service, a cluster node (no PBX)."""

    def __init__(self, url: str, name: str, log: list, delay: float = 0.0):
        reactor = _reactor()
        self.name = name
        self.store = store_at(url, reactor)
        self.store.open()
        self.sender = Recorder(name, log, delay)
        # the sender is a fake: nothing is connected to, the URL is never resolved
        self.events = EventService(
            self.store, send=self.sender, clock=reactor, guard=TargetGuard(),
            settings=DeliverySettings(retry_delay=0.1, max_retry_delay=0.2),
        )  # fmt: skip
        self.node = ClusterNode(url, reactor=reactor, name=name, events=self.events,
                                store=self.store, leader_retry=0.2, sweep=0.5)  # fmt: skip
        self.node.open()

    async def start(self) -> None:
        await self.events.start()
        self.node.start()

    async def stop(self) -> None:
        await self.node.stop()
        self.events.stop()
        await self.store.close()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    return pg_cluster.new_schema()


@pytest.fixture
def nodes(pg_url: str):
    log: list[tuple[str, int]] = []
    made = [Node(pg_url, f"node-{c}-{time.monotonic_ns()}", log, 0.002) for c in "ab"]
    yield made, log
    for n in made:
        pytest_twisted.blockon(defer.ensureDeferred(n.stop()))


async def _subscribe(first: Node, second: Node) -> int:
    sub = await first.events.subscribe(
        "101", url="http://crm.example/hook", method="POST", event_type="hangup"
    )
    # the other node hears of it (NOTIFY) and reloads its subscriptions
    await _until(lambda: second.events.wants("101", "hangup"))
    return sub["id"]


@pytest_twisted.ensureDeferred
async def test_each_event_is_delivered_once_in_order_whichever_node_queued_it(nodes):
    (a, b), log = nodes
    await a.start()
    await b.start()
    await _subscribe(a, b)
    queued = []
    for i in range(60):
        node = (a, b)[i % 2]
        queued.append(await node.events.publish("101", "hangup", {"CallID": f"c{i}"}))
    await _until(lambda: len(log) >= len(queued))
    await task.deferLater(_reactor(), 1.0, lambda: None)  # nothing more comes
    assert [event_id for _node, event_id in log] == sorted(queued)
    assert len({event_id for _node, event_id in log}) == len(queued)


@pytest_twisted.ensureDeferred
async def test_a_node_whose_session_dies_mid_delivery_leaves_the_rest_to_the_other(nodes, pg_url):
    (a, b), log = nodes
    await a.start()
    await _subscribe(a, b)
    a.sender.hold = True  # a's receiver never answers: a holds the claim
    queued = [await a.events.publish("101", "hangup", {"CallID": f"c{i}"}) for i in range(5)]
    await _until(lambda: log == [(a.name, queued[0])])
    await b.start()
    await task.deferLater(_reactor(), 1.0, lambda: None)
    assert log == [(a.name, queued[0])]  # b waits: a holds the claim
    # a's lock session dies (its machine is gone, as PostgreSQL sees it)
    assert _kill_session(pg_url, a.node.link._application_name) >= 1
    took = await _until(lambda: len([e for n, e in log if n == b.name]) == 5)
    assert took < 5
    # b delivers everything in order, from the one a never finished
    assert [e for n, e in log if n == b.name] == queued
    # a sent nothing after losing its claim
    assert [e for n, e in log if n == a.name] == [queued[0]]


@pytest_twisted.ensureDeferred
async def test_one_node_leads_a_pbx_and_another_takes_over_within_seconds(pg_url):
    reactor = _reactor()
    links = [ClusterLink(pg_url, reactor=reactor, name=f"lead-{c}-{time.monotonic_ns()}",
                         ping_interval=0.5) for c in "ab"]  # fmt: skip
    seen: list[tuple[str, str]] = []

    class Note:
        def __init__(self, who: str):
            self.who = who

        def lead(self) -> None:
            seen.append((self.who, "lead"))

        def follow(self) -> None:
            seen.append((self.who, "follow"))

    leads = []
    for link, who in zip(links, "ab", strict=True):
        link.open()
        leads.append(Leadership(link, reactor, pbx="default", duties=[Note(who)], retry=0.5))
    try:
        leads[0].start()
        await _until(lambda: leads[0].leading)
        leads[1].start()
        await task.deferLater(reactor, 1.0, lambda: None)
        assert [lead.leading for lead in leads] == [True, False]
        # another PBX's lock is another lock
        assert await links[1].try_lock(LEADER_SPACE, "pbx2")
        # a dies: it tries no more, and PostgreSQL ends its sessions
        leads[0]._loop.stop()
        _kill_session(pg_url, links[0]._application_name)
        took = await _until(lambda: leads[1].leading)
        assert took < 3
        await _until(lambda: not leads[0].leading)
        assert seen == [("a", "lead"), ("b", "lead"), ("a", "follow")] or seen == [
            ("a", "lead"), ("a", "follow"), ("b", "lead")]  # fmt: skip
        # a node back (reconnected) does not lead while b does
        leads[0].start()
        await task.deferLater(reactor, 1.0, lambda: None)
        assert [lead.leading for lead in leads] == [False, True]
    finally:
        for lead, link in zip(leads, links, strict=True):
            await lead.stop()
            await link.close()


@pytest_twisted.ensureDeferred
async def test_a_leader_that_stops_hands_over_at_once(pg_url):
    reactor = _reactor()
    links = [ClusterLink(pg_url, reactor=reactor, name=f"stop-{c}") for c in "ab"]
    for link in links:
        link.open()
    leads = [Leadership(link, reactor, pbx="default", retry=0.2) for link in links]
    try:
        leads[0].start()
        await _until(lambda: leads[0].leading)
        leads[1].start()
        await leads[0].stop()
        took = await _until(lambda: leads[1].leading)
        assert took < 1.5
    finally:
        for lead, link in zip(leads, links, strict=True):
            await lead.stop()
            await link.close()


@pytest_twisted.ensureDeferred
async def test_a_notification_sent_right_after_open_is_heard(pg_url):
    # Another node may add a subscription the moment this one has started:
    # once open() has returned, the listener must already be listening.
    import psycopg

    from agi_app.store.cluster_pg import notify_sql

    reactor = _reactor()
    for attempt in range(5):
        heard: list[str] = []
        link = ClusterLink(pg_url, reactor=reactor, name=f"listen-{attempt}")
        link.listen("agi_app_probe", heard.append)
        link.open()
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(notify_sql(), ("agi_app_probe", f"note {attempt}"))
            await _until(lambda: heard, timeout=3.0)  # noqa: B023
            assert heard == [f"note {attempt}"]
        finally:
            await link.close()


@pytest_twisted.ensureDeferred
async def test_locks_of_stores_in_other_schemas_are_apart(pg_cluster):
    reactor = _reactor()
    one = ClusterLink(pg_cluster.new_schema(), reactor=reactor)
    other = ClusterLink(pg_cluster.new_schema(), reactor=reactor)
    one.open()
    other.open()
    try:
        assert await one.try_lock(LEADER_SPACE, "default")
        assert await other.try_lock(LEADER_SPACE, "default")
        again = ClusterLink(one.url, reactor=reactor)
        again.open()
        try:
            assert not await again.try_lock(LEADER_SPACE, "default")
            await one.unlock(LEADER_SPACE, "default")
            assert await again.try_lock(LEADER_SPACE, "default")
        finally:
            await again.close()
    finally:
        await one.close()
        await other.close()


# -- calls followed by several nodes ----------------------------------------------


class Channel(dict):
    """A channel as the AMI service lists it (its variables beside its fields)."""

    def __init__(self, call_id: str):
        super().__init__(Channel="PJSIP/1000-1")
        self.variables = {CALL_ID_VAR: call_id}


class StubAMI:
    """The little of an AMI service a Lifecycle asks while nothing is dialled."""

    def __init__(self) -> None:
        self.connected = True
        self.channels: dict[str, Channel] = {}

    def subscribe(self, _callback, _event_name=None):
        return lambda: None

    def on_connect(self, _callback):
        return lambda: None


def _lifecycle(url: str, tmp_path, ami: StubAMI) -> Lifecycle:
    store = store_at(url, _reactor())
    store.open()
    dialing = DialingConfig(recordings_dir=str(tmp_path), pbx_recordings_dir="/pbx/monitor")
    lifecycle = Lifecycle(store=store, ami=ami, dialing=dialing, clock=_reactor(), grace=0.2)
    lifecycle.shared = True
    return lifecycle


@pytest.fixture
def two_lifecycles(pg_url: str, tmp_path):
    made = [_lifecycle(pg_url, tmp_path, StubAMI()) for _ in range(2)]
    yield made
    for lifecycle in made:
        lifecycle.stop()
        pytest_twisted.blockon(lifecycle.store.close())


async def _new_call(lifecycle: Lifecycle, n: int):
    call, _ = await lifecycle.create(
        st.MAKE_CALL, {"sip": "1000", "phone": f"38063992{n:04d}"}, sip="1000",
        phone=f"38063992{n:04d}",
    )  # fmt: skip
    await lifecycle.log(call, st.OPERATOR_CALLTO)
    return call


@pytest_twisted.ensureDeferred
async def test_two_nodes_following_one_call_write_each_status_once_and_one_final(two_lifecycles):
    placer, agi = two_lifecycles
    call = await _new_call(placer, 1)
    # the FastAGI session runs on the other node: it reads the call back
    theirs = await agi.find(call.call_id)
    assert theirs is not None and theirs is not call
    # both see the operator answer (OriginateResponse here, the script there)
    assert await placer.log(call, st.OPERATOR_PICKUP) is not None
    assert await agi.log(theirs, st.OPERATOR_PICKUP) is None
    assert theirs.reached(st.OPERATOR_PICKUP) and not theirs.final
    await agi.log(theirs, st.CLIENT_CALLTO)
    await agi.log(theirs, st.CLIENT_PICKUP)
    await agi.finish(theirs, ended_at=_reactor().seconds())
    # the placing node settles from what the store has: the call ended already
    await placer.settle(call, "all channels hung up")
    assert call.final and call.final_status == st.FINISH
    words = [e["status"] for e in await placer.store.statuses(call.call_id)]
    assert words == [st.CALL, st.OPERATOR_CALLTO, st.OPERATOR_PICKUP, st.CLIENT_CALLTO,
                     st.CLIENT_PICKUP, st.FINISH]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_the_leader_closes_the_calls_nobody_follows_and_no_other(two_lifecycles):
    dead, leader = two_lifecycles
    orphan = await _new_call(dead, 2)  # its node died: nobody follows it
    live = await _new_call(dead, 3)  # still has a channel on the PBX
    leader.ami.channels["u1"] = Channel(live.call_id)
    leader.leading = False
    assert await leader.sweep_orphans() == 0
    leader.leading = True
    assert await leader.sweep_orphans() == 0  # the first sweep only notes it
    await task.deferLater(_reactor(), 0.3, lambda: None)  # past the grace
    assert await leader.sweep_orphans() == 1
    assert (await leader.store.get_call(orphan.call_id))["final_status"] == st.ERROR
    assert (await leader.store.get_call(live.call_id))["final_status"] is None
    # the channel goes: two sweeps later the call is closed too
    del leader.ami.channels["u1"]
    await leader.sweep_orphans()
    await task.deferLater(_reactor(), 0.3, lambda: None)
    assert await leader.sweep_orphans() == 1
    assert (await leader.store.get_call(live.call_id))["final_status"] == st.ERROR


@pytest_twisted.ensureDeferred
async def test_a_broken_lock_session_is_reported_once_and_the_next_lock_is_on_a_new_one(pg_url):
    reactor = _reactor()
    name = f"broken-{time.monotonic_ns()}"
    link = ClusterLink(pg_url, reactor=reactor, name=name, ping_interval=60)
    other = ClusterLink(pg_url, reactor=reactor, name=f"other-{time.monotonic_ns()}")
    link.open()
    other.open()
    lost: list[int] = []
    link.on_lost(lambda: lost.append(1))
    try:
        assert await link.try_lock(LEADER_SPACE, "x")
        assert not await other.try_lock(LEADER_SPACE, "x")
        _kill_session(pg_url, link._application_name)
        # the next request meets the broken session: the loss is reported,
        # and nothing is held any more
        try:
            await link.try_lock(LEADER_SPACE, "y")
        except Exception:  # noqa: BLE001 - the request that found the session broken
            pass
        assert lost == [1] and not link.holds(LEADER_SPACE, "x")
        assert await other.try_lock(LEADER_SPACE, "x")
        # a new session: locks again, and no second report
        assert await link.try_lock(LEADER_SPACE, "y")
        assert link.holds(LEADER_SPACE, "y") and lost == [1]
        assert not await link.try_lock(LEADER_SPACE, "x")
    finally:
        await link.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_subscription_deleted_on_one_node_is_gone_on_the_other(nodes):
    (a, b), log = nodes
    await a.start()
    await b.start()
    sub_id = await _subscribe(a, b)
    assert await b.events.unsubscribe("101", sub_id)
    await _until(lambda: not a.events.wants("101", "hangup"))
    assert await a.events.publish("101", "hangup", {"CallID": "c"}) is None
    assert await a.events.subscriptions("101") == []
    await task.deferLater(_reactor(), 0.7, lambda: None)
    assert log == []
