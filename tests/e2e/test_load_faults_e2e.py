"""Faults under load, end to end: calls placed about five a second for about
twenty seconds on the sandbox PBX, ten SIPp operators answering, the PSTN
answering every client and hanging up after a few seconds, while

* Asterisk is stopped and started again,
* the AMI link is cut (a TCP proxy the test drops) and let through again,
* the CRM's webhook receiver refuses and fails requests for 30 s,
* agi_app is killed with SIGKILL and started again.

After recovery every call has exactly one final status and a chain that
what its phones saw backs (the operator's phone and the PSTN each log every
INVITE, answer and hangup, keyed by the client's number), calls placed once
the fault is over end FINISH, and every webhook event reached the receiver
in order per subscription with no EventID missing.  See docs/operations.md,
"What the fault tests prove"."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from callflow import (
    HTTP_PORT,
    Api,
    app_config,
    listen_fastagi,
    reactor,
    start_app,
    wait_until,
    words,
)
from test_call_faults import (
    HAPPY,
    AgiAppProcess,
    AMIProxy,
    assert_one_final,
    next_disconnect,
    reconnected,
)
from twisted.internet import defer, task, threads
from twisted.protocols.policies import WrappingFactory

from agi_app.agi import ScriptRegistry
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import PICKUP_UNSEEN
from agi_app.events.service import EVENT_TYPES
from agi_app.events.testing import Receiver
from agi_app.sandbox.phones import answer
from agi_app.times import parse_time

RATE = 5.0  # calls per second
SECONDS = 20.0  # of calls per test
OPERATORS = [f"100{n}" for n in range(10)]
TALK = 3.0  # seconds a client talks
#: clients placed just before a fault talk this long: still connected when
#: agi_app (or its AMI link) is back, so the snapshot must show their answer
LONG_TALK = 12.0
LONG_CALLS = 3
RECEIVER_PORT = HTTP_PORT + 5
RECEIVER = f"http://127.0.0.1:{RECEIVER_PORT}"
#: webhook retries: from 0.5 s, doubling, at most 2 s apart -- a delivery
#: that failed for 30 s goes through within 2 s of the receiver's return
#: (the default cap of 300 s would make the test wait minutes)
EVENTS_SETTINGS = {
    "AGI_APP_EVENTS_RETRY_DELAY": "0.5",
    "AGI_APP_EVENTS_MAX_RETRY_DELAY": "2",
    "AGI_APP_EVENTS_TIMEOUT": "5",
}


def number(test: int, n: int) -> str:
    """The client's number of the ``n``-th call of test ``test``: one per call."""
    return f"3806399{test}{n:04d}"


# -- the load -------------------------------------------------------------------


@dataclass
class Placed:
    """One makeCall request of the load."""

    n: int
    phone: str
    operator: str
    #: wall-clock time the request was sent
    at: float
    #: the HTTP status; 0 when agi_app did not answer (not running)
    code: int = 0
    call_id: str | None = None


class Load:
    """makeCall at :data:`RATE` calls a second, spread over the operators,
    until :meth:`stop`; :meth:`pause` holds it (for a fault to begin with
    no request in flight), :meth:`resume` goes on at the same rate."""

    def __init__(self, api: Api, test: int, order_id: str):
        self.api = api
        self.test = test
        self.order_id = order_id
        self.placed: list[Placed] = []
        self._requests: list[defer.Deferred] = []
        self._stopped = False
        self._paused: defer.Deferred | None = None
        self._loop: defer.Deferred | None = None
        self._count_waiters: list[tuple[int, defer.Deferred]] = []

    def start(self) -> None:
        self._loop = defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        t0, k, n = time.monotonic(), 0, 0
        while not self._stopped:
            if self._paused is not None:
                await self._paused
                t0, k = time.monotonic(), 0
                continue
            delay = t0 + k / RATE - time.monotonic()
            if delay > 0:
                # pacing the requests: no event to wait for
                await task.deferLater(reactor(), delay, lambda: None)
                if self._stopped or self._paused is not None:
                    continue
            self._requests.append(defer.ensureDeferred(self._place(n)))
            k, n = k + 1, n + 1
            for entry in list(self._count_waiters):
                if n >= entry[0]:
                    self._count_waiters.remove(entry)
                    entry[1].callback(None)

    async def _place(self, n: int) -> None:
        p = Placed(n, number(self.test, n), OPERATORS[n % len(OPERATORS)], time.time())
        self.placed.append(p)
        try:
            p.code, body = await self.api.get(
                "/api/makeCall.json", sip=p.operator, phone=p.phone, order_id=self.order_id,
                external_key=f"lf{self.test}-{n}", playback_waiting="0",
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - agi_app not running: nothing placed
            return
        if isinstance(body, dict):
            p.call_id = body.get("call_id")

    def placed_count(self, count: int) -> defer.Deferred:
        """Fires once ``count`` requests have been sent."""
        d: defer.Deferred = defer.Deferred()
        if len(self.placed) >= count:
            d.callback(None)
        else:
            self._count_waiters.append((count, d))
        return d

    async def pause(self) -> list[Placed]:
        """Stop sending; fires once every request sent has its answer."""
        if self._paused is None:
            self._paused = defer.Deferred()
        await defer.gatherResults(list(self._requests), consumeErrors=True)
        return list(self.placed)

    def resume(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    async def stop(self) -> list[Placed]:
        """Stop for good; every request's answer is in."""
        self._stopped = True
        self.resume()
        if self._loop is not None:
            await self._loop
        await defer.gatherResults(list(self._requests), consumeErrors=True)
        return list(self.placed)

    def accepted(self) -> list[Placed]:
        return [p for p in self.placed if p.code == 200]


def start_phones(sandbox, test: int, long_from: int | None = None) -> None:
    """Ten operators answering after 0.3 s; the PSTN answers every client
    after 0.5 s and hangs up after :data:`TALK` s -- after :data:`LONG_TALK`
    s for the :data:`LONG_CALLS` calls from ``long_from`` on."""
    for op in OPERATORS:
        sandbox.phones.start(op, answer(after=0.3))
    sandbox.pstn.default = answer(after=0.5, hangup_after=TALK)
    if long_from is not None:
        for n in range(long_from, long_from + LONG_CALLS):
            sandbox.pstn.rules[number(test, n)] = answer(after=0.5, hangup_after=LONG_TALK)
    sandbox.pstn.start(sandbox.pstn.default)  # one restart for all the rules


# -- what the phones saw ------------------------------------------------------------


@dataclass
class Seen:
    """What the phones saw of one client number (see ``phones.parse_log``)."""

    operator: list[dict[str, Any]] = field(default_factory=list)
    client: list[dict[str, Any]] = field(default_factory=list)

    @property
    def operator_rang(self) -> bool:
        return bool(self.operator)

    def operator_answered(self, before: float = float("inf")) -> bool:
        return any(c["answer_time"] and c["answer_time"] < before for c in self.operator)

    @property
    def client_dialled(self) -> bool:
        return bool(self.client)

    def client_answered(self, before: float = float("inf")) -> bool:
        return any(c["answer_time"] and c["answer_time"] < before for c in self.client)


def phones_saw(sandbox) -> dict[str, Seen]:
    """Client number -> what the operator's phone (the Originate shows the
    client's number as the caller) and the PSTN saw of that call."""
    seen: dict[str, Seen] = defaultdict(Seen)
    for op in OPERATORS:
        for c in sandbox.operator(op).calls():
            seen[c["from_number"]].operator.append(c)
    for c in sandbox.pstn.calls():
        seen[c["number"]].client.append(c)
    return seen


def check_chain(p: Placed, entries: list[dict], seen: Seen, *, fault_at: float | None = None):
    """The call's history against what its phones saw.

    Every status says something a phone saw: OPERATOR_PICKUP that the
    operator's phone answered, CLIENT_CALLTO that the PSTN got the INVITE,
    CLIENT_PICKUP that the client answered.  And the other way round: what
    the phones saw is in the history -- except for a call still going on at
    ``fault_at`` (Asterisk stopped under it: an answer in its last moments
    may never have reached agi_app, a status logged just before the INVITE
    went out may have no INVITE), which must still show every answer seen
    before the fault."""
    have = set(words(entries))
    what = f"{p.phone} (call {p.call_id}): {words(entries)}; operator {seen.operator}; " \
           f"client {seen.client}"  # fmt: skip
    assert_one_final(entries)
    assert (st.OPERATOR_PICKUP not in have) or seen.operator_answered(), what
    assert (st.CLIENT_PICKUP not in have) or seen.client_answered(), what
    assert (st.FINISH in have) == (st.CLIENT_PICKUP in have), what
    affected = fault_at is not None and open_at(entries, fault_at)
    if not affected:
        assert (st.CLIENT_CALLTO not in have) or seen.client_dialled, what
        assert seen.operator_answered() == (st.OPERATOR_PICKUP in have), what
        assert seen.client_dialled == (st.CLIENT_CALLTO in have), what
        assert seen.client_answered() == (st.CLIENT_PICKUP in have), what
    else:
        margin = fault_at - 0.5
        assert not seen.operator_answered(margin) or st.OPERATOR_PICKUP in have, what
        assert not seen.client_answered(margin) or st.CLIENT_PICKUP in have, what
    if seen.operator_rang:
        assert st.OPERATOR_CALLTO in have, what


def open_at(entries: list[dict], when: float) -> bool:
    """Whether the call was placed before ``when`` and ended after it."""
    return parse_time(entries[0]["time"]) < when <= parse_time(entries[-1]["time"])


def check_refused(p: Placed, entries: list[dict] | None, seen: Seen | None) -> None:
    """A request agi_app refused (AMI down: 503) or never got: nothing rang,
    and a call it created says CALL then ERROR."""
    assert seen is None or not (seen.operator or seen.client), (p, seen)
    if p.code:
        assert p.code == 503, p
    if entries is not None:
        assert words(entries) == [st.CALL, st.ERROR], (p, entries)


async def histories(fetch, ids: list[str], timeout: float) -> dict[str, list[dict]]:
    """Every call's history once each has its final status."""
    out: dict[str, list[dict]] = {}

    async def done() -> list[str]:
        for call_id in ids:
            if call_id not in out:
                entries = await fetch(call_id)
                if any(s in st.FINAL for s in words(entries)):
                    out[call_id] = entries
        return [c for c in ids if c not in out]

    await wait_until(done, lambda left: not left, timeout, "every call final", interval=0.5)
    return out


def check_load(placed: list[Placed], calls: dict[str, list[dict]], seen: dict[str, Seen],
               *, fault_at: float | None = None) -> Counter:  # fmt: skip
    """Every request against the phones; the count of each final status."""
    finals: Counter = Counter()
    for p in placed:
        entries = calls.get(p.call_id) if p.call_id else None
        if p.code != 200:
            check_refused(p, entries, seen.get(p.phone))
            finals[f"refused {p.code or 'no answer'}"] += 1
            continue
        assert entries is not None, p
        check_chain(p, entries, seen.get(p.phone, Seen()), fault_at=fault_at)
        finals[words(entries)[-1]] += 1
    return finals


# -- webhooks ---------------------------------------------------------------------


@dataclass
class CRMReceiver(Receiver):
    """The CRM's webhook endpoint, keeping apart the requests it accepted."""

    accepted: list = field(default_factory=list)

    def render(self, request):
        out = super().render(request)
        if 200 <= self.status < 300:
            self.accepted.append(self.requests[-1])
        return out


async def subscribe_all(api: Api) -> dict[int, tuple[str, str]]:
    """A subscription to every event type for every operator; id -> (ext, type)."""
    subs = {}
    for ext in OPERATORS:
        for kind in EVENT_TYPES:
            code, sub = await api.post(f"/extension/{ext}/event/", {
                "url": f"{RECEIVER}/hook/{ext}/{kind}", "method": "POST", "event_type": kind,
            })  # fmt: skip
            assert code == 201, sub
            subs[sub["id"]] = (ext, kind)
    return subs


def accepted_ids(receiver: CRMReceiver, path: str) -> set[int]:
    return {int(r.fields["EventID"]) for r in receiver.accepted if r.path == path}


async def all_delivered(api: Api, subs: dict[int, tuple[str, str]], receiver: CRMReceiver,
                        answered: list[str], timeout: float = 30.0) -> dict:  # fmt: skip
    """Every subscription's delivery state once the events of the calls are
    all out: the ``record`` event of every call whose client ``answered``
    (it comes last, once the recording is complete) has arrived, nothing
    is pending and each subscription counts as delivered what the receiver
    accepted."""
    await wait_until(
        lambda: {r.fields["CallID"] for r in receiver.accepted
                 if r.fields.get("EventType") == "record"},
        lambda got: set(answered) <= got, timeout, "the record event of every answered call",
        interval=0.2,
    )  # fmt: skip

    async def states() -> dict[int, dict]:
        out = {}
        for sub_id, (ext, _kind) in subs.items():
            code, body = await api.get(f"/extension/{ext}/event/{sub_id}")
            assert code == 200, body
            out[sub_id] = body["delivery"]
        return out

    def settled(s: dict[int, dict]) -> bool:
        return all(
            d["pending"] == 0
            and d["delivered"] == len(accepted_ids(receiver, "/hook/{}/{}".format(*subs[i])))
            for i, d in s.items()
        )

    return await wait_until(states, settled, timeout, "every webhook delivered", interval=0.5)


def check_deliveries(receiver: CRMReceiver, subs: dict[int, tuple[str, str]],
                     states: dict[int, dict]) -> tuple[int, int]:  # fmt: skip
    """Every event reached the receiver: per subscription in EventID order,
    each queued event accepted (the delivery state's count), none given up,
    and no EventID missing across all of them.  Deliveries are at least
    once (CONTRACT 6): a repeat must be the same event, byte for byte.
    Returns (events, repeats)."""
    by_path: dict[str, list] = defaultdict(list)
    for r in receiver.accepted:
        by_path[r.path].append(r)
    ids: set[int] = set()
    repeats = 0
    first: dict[int, bytes] = {}
    for sub_id, (ext, kind) in subs.items():
        got = by_path.pop(f"/hook/{ext}/{kind}", [])
        seq = [int(r.fields["EventID"]) for r in got]
        assert seq == sorted(seq), f"subscription {sub_id} ({ext} {kind}) out of order: {seq}"
        for r in got:
            event_id = int(r.fields["EventID"])
            assert r.fields["EventType"] == kind, r.fields
            if event_id in first:
                repeats += 1
                assert first[event_id] == r.body, f"EventID {event_id} redelivered changed"
            first[event_id] = r.body
        distinct = set(seq)
        state = states[sub_id]
        assert state["given_up"] == 0, (sub_id, state)
        assert state["delivered"] == len(distinct), (sub_id, state, seq)
        assert not distinct & ids, "one EventID delivered to two subscriptions"
        ids |= distinct
    assert not by_path, f"requests to unknown paths: {list(by_path)}"
    assert ids == set(range(1, max(ids, default=0) + 1)), (
        f"EventIDs missing: {sorted(set(range(1, max(ids) + 1)) - ids)}"
    )
    return len(ids), repeats


def hangups_by_call(receiver: CRMReceiver) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    seen_ids: set[str] = set()
    for r in receiver.accepted:
        f = r.fields
        if f["EventType"] == "hangup" and f["EventID"] not in seen_ids:
            seen_ids.add(f["EventID"])
            out[f["CallID"]].append(f)
    return out


def check_hangups(placed: list[Placed], seen: dict[str, Seen], receiver: CRMReceiver,
                  may_lack: Iterable[str] = ()) -> int:  # fmt: skip
    """Every call whose operator's phone rang gave that operator one hangup
    event (the calls of ``may_lack`` at most one); returns how many of
    those had none."""
    hangups = hangups_by_call(receiver)
    lacking = 0
    for p in placed:
        if p.code != 200 or not seen.get(p.phone, Seen()).operator_rang:
            continue
        events = hangups.get(p.call_id, [])
        if not events and p.call_id in may_lack:
            lacking += 1
            continue
        assert len(events) == 1, (p, events)
        assert events[0]["CallerExtension"] == p.operator, events
    return lacking


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def proxy(sandbox):
    p = AMIProxy(sandbox.ami_port)
    p.start()
    yield p
    pytest_twisted.blockon(defer.maybeDeferred(p.stop))


class CRMServer:
    """The CRM's web server on :data:`RECEIVER_PORT`: :meth:`down` closes
    the port and drops the connections agi_app keeps open to it (a port
    that stops listening would still serve them), :meth:`up` opens it again."""

    def __init__(self) -> None:
        self.receiver = CRMReceiver()
        self.port = None
        # keeps the connections open now (WrappingFactory.protocols)
        self.factory = WrappingFactory(self.receiver.site())

    def up(self) -> None:
        self.port = reactor().listenTCP(RECEIVER_PORT, self.factory, interface="127.0.0.1")

    async def down(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()
        for proto in list(self.factory.protocols):
            proto.transport.abortConnection()


@pytest_twisted.async_yield_fixture
async def crm():
    server = CRMServer()
    server.up()
    yield server
    await server.down()


def report(name: str, started: float, **figures: Any) -> None:
    """One line per test for the log (pytest -s, or the failure's captured output)."""
    print(f"\n{name}: {time.monotonic() - started:.1f} s; " +
          ", ".join(f"{k} {v}" for k, v in figures.items()))  # fmt: skip


# -- Asterisk restarted -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_asterisk_restarted_under_load(sandbox, tmp_path, api):
    """Asterisk stopped 8 s into the load and started again.  The calls in
    progress die with it: each ends with one final status its phones back
    (FINISH for a client who had answered); calls placed while it is down
    are refused (503, CALL then ERROR, nothing rings); calls placed once it
    is back and the operators registered again all end FINISH."""
    started = time.monotonic()
    start_phones(sandbox, 1)
    app = await start_app(app_config(sandbox, tmp_path))
    load = Load(api, 1, "lf-restart")
    try:
        load.start()
        await load.placed_count(int(8 * RATE))
        lost = next_disconnect(app.ami)
        fault_at = time.time()
        await threads.deferToThread(sandbox.pbx.stop)
        await lost
        await threads.deferToThread(sandbox.pbx.start, stop_at_exit=True)
        # registrations do not outlive Asterisk: the phones register again
        await threads.deferToThread(lambda: [sandbox.operator(op).register() for op in OPERATORS])
        await app.ami.when_connected().addTimeout(15, reactor())
        ready_at = time.time()
        after = len(load.placed)
        await load.placed_count(max(int(SECONDS * RATE), after + int(5 * RATE)))
        placed = await load.stop()
        ids = [p.call_id for p in placed if p.call_id]
        calls = await histories(app.store.statuses, ids, timeout=TALK + 40)
        seen = phones_saw(sandbox)
        finals = check_load(placed, calls, seen, fault_at=fault_at)
        late = [p for p in placed if p.at > ready_at]
        assert len(late) >= 20, len(late)
        for p in late:
            assert p.code == 200 and words(calls[p.call_id]) == HAPPY, (p, calls.get(p.call_id))
        cut = [p for p in load.accepted() if open_at(calls[p.call_id], fault_at)]
        assert cut, "no call was in progress when Asterisk stopped"
        report("asterisk restarted", started, calls=len(placed), finals=dict(finals),
               in_progress_at_stop=len(cut), placed_after=len(late),
               down_for=f"{ready_at - fault_at:.1f} s")  # fmt: skip
    finally:
        await load.stop()
        await app.stop()


# -- the AMI link cut -----------------------------------------------------------------


async def every_call_rings(sandbox, accepted: list[Placed], timeout: float = 10.0) -> None:
    """Until each accepted call's operator phone has its INVITE."""
    await wait_until(
        lambda: phones_saw(sandbox),
        lambda seen: all(seen.get(p.phone, Seen()).operator_rang for p in accepted),
        timeout, "every operator phone rang", interval=0.1,
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_ami_link_cut_under_load(sandbox, tmp_path, api, proxy, crm):
    """The AMI link is dropped 8 s into the load and let through again 6 s
    later.  The calls go on on the PBX; while the link is down makeCall is
    refused (503); once it is back every call has one final status its
    phones back, every accepted call ends FINISH, a client who answered
    while the link was down and is still talking shows CLIENT_PICKUP from
    the channel snapshot (its moment not seen) with its recording listed
    before the call ends, and every call -- those that ended while the link
    was down too -- gave its operator one hangup webhook."""
    started = time.monotonic()
    cut_after = int(8 * RATE)
    start_phones(sandbox, 2, long_from=cut_after - LONG_CALLS)
    app = await start_app(app_config(sandbox, tmp_path, **EVENTS_SETTINGS,
                                     AGI_APP_AMI_PORT=str(proxy._port.getHost().port)))  # fmt: skip
    subs = await subscribe_all(api)
    load = Load(api, 2, "lf-ami")
    try:
        load.start()
        await load.placed_count(cut_after)
        # no request in flight and every call's first leg ringing: an
        # Originate cut in half would leave nothing on the phones to compare
        await load.pause()
        await every_call_rings(sandbox, load.accepted())
        long_calls = [p for p in load.accepted() if p.n >= cut_after - LONG_CALLS]
        assert len(long_calls) == LONG_CALLS
        lost = next_disconnect(app.ami)
        down_at = time.time()
        proxy.down()
        await lost
        load.resume()
        # the link stays down while calls end and others are answered
        await task.deferLater(reactor(), 6.0, lambda: None)
        links = proxy.connections
        up_at = time.time()
        proxy.up()
        await reconnected(app, links, proxy)
        # The clients of the long calls answered while the link was down and
        # talk on: the snapshot after the login shows them up.
        for p in long_calls:
            entries = await wait_until(
                lambda p=p: app.store.statuses(p.call_id),
                lambda e: st.CLIENT_PICKUP in words(e), 5, f"{p.call_id} CLIENT_PICKUP",
            )  # fmt: skip
            pickup = next(e for e in entries if e["status"] == st.CLIENT_PICKUP)
            assert pickup["detail"] == PICKUP_UNSEEN, entries
            assert not any(s in st.FINAL for s in words(entries)), entries
            answered = phones_saw(sandbox)[p.phone].client
            assert answered and down_at < answered[0]["answer_time"] < up_at, answered
            assert answered[0]["end"] is None, "the client hung up already"
        records = {c["call_id"]: c["records"] for c in await app.store.order_calls("lf-ami")}
        for p in long_calls:
            assert records[p.call_id], f"{p.call_id}: no recording listed"
        await load.placed_count(max(int(SECONDS * RATE), len(load.placed) + 15))
        placed = await load.stop()
        ids = [p.call_id for p in placed if p.call_id]
        calls = await histories(app.store.statuses, ids, timeout=LONG_TALK + 30)
        seen = phones_saw(sandbox)
        finals = check_load(placed, calls, seen)
        for p in load.accepted():
            assert words(calls[p.call_id]) == HAPPY, (p, calls[p.call_id])
        refused = [p for p in placed if p.code != 200]
        assert refused and all(down_at < p.at < time.time() for p in refused)
        ended_unseen = [p for p in load.accepted()
                        if any(c["end_time"] and down_at < c["end_time"] < up_at
                               for c in seen[p.phone].client)]  # fmt: skip
        assert ended_unseen, "no call ended while the link was down"
        answered = [p.call_id for p in load.accepted() if st.FINISH in words(calls[p.call_id])]
        states = await all_delivered(api, subs, crm.receiver, answered)
        events, repeats = check_deliveries(crm.receiver, subs, states)
        check_hangups(placed, seen, crm.receiver)
        records = {c["call_id"]: c["records"] for c in await app.store.order_calls("lf-ami")}
        for p in load.accepted():
            assert records[p.call_id], f"{p.call_id}: no recording listed"
        report("AMI link cut", started, calls=len(placed), finals=dict(finals),
               ended_while_down=len(ended_unseen), events=events, repeats=repeats)  # fmt: skip
    finally:
        await load.stop()
        await app.stop()


# -- the webhook receiver down ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_webhook_receiver_down_30_s_under_load(sandbox, tmp_path, api, crm):
    """The CRM's receiver goes away 5 s into the load: for 15 s its port
    refuses connections, for 15 s more it answers 503; then it accepts.
    Every event queued meanwhile is delivered once it is back: per
    subscription in EventID order, none missing, none given up; every call
    gave its operator one hangup event."""
    started = time.monotonic()
    start_phones(sandbox, 3)
    app = await start_app(app_config(sandbox, tmp_path, **EVENTS_SETTINGS))
    subs = await subscribe_all(api)
    receiver: CRMReceiver = crm.receiver
    load = Load(api, 3, "lf-hooks")
    try:
        load.start()
        await load.placed_count(int(5 * RATE))
        await crm.down()
        accepted = len(receiver.accepted)
        down_at = time.monotonic()
        await task.deferLater(reactor(), 15.0, lambda: None)  # the outage itself
        receiver.status = 503
        crm.up()
        failing = len(receiver.requests)
        await load.placed_count(int(SECONDS * RATE))
        placed = await load.stop()
        await task.deferLater(reactor(), down_at + 30.0 - time.monotonic(), lambda: None)
        assert len(receiver.requests) > failing, "no retry reached the failing receiver"
        assert len(receiver.accepted) == accepted
        receiver.status = 200
        back = time.monotonic()
        ids = [p.call_id for p in placed if p.call_id]
        calls = await histories(app.store.statuses, ids, timeout=TALK + 30)
        seen = phones_saw(sandbox)
        finals = check_load(placed, calls, seen)
        for p in placed:
            assert p.code == 200 and words(calls[p.call_id]) == HAPPY, (p, calls[p.call_id])
        states = await all_delivered(api, subs, receiver, [p.call_id for p in placed])
        caught_up = time.monotonic() - back
        events, repeats = check_deliveries(receiver, subs, states)
        check_hangups(placed, seen, receiver)
        assert caught_up < 15, f"the backlog took {caught_up:.1f} s after the receiver's return"
        report("webhook receiver down", started, calls=len(placed), finals=dict(finals),
               events=events, repeats=repeats, failed_attempts=failing,
               caught_up=f"{caught_up:.1f} s")  # fmt: skip
    finally:
        await load.stop()
        await app.stop()


async def order_records(api: Api, order_id: str) -> dict[str, list[dict]]:
    """Call id -> its recordings, as /api/orderRecords lists them."""
    code, body = await api.get("/api/orderRecords.json", order_id=order_id)
    assert code == 200, body
    return {c["call_id"]: c["records"] for c in body["calls"]}


# -- agi_app killed ----------------------------------------------------------------------


@pytest.fixture
def process(sandbox, tmp_path):
    p = AgiAppProcess(sandbox, tmp_path)
    yield p
    p.stop()


@pytest_twisted.ensureDeferred
async def test_agi_app_killed_under_load_every_answered_call_finishes(sandbox, process, crm):
    """agi_app killed with SIGKILL 8 s into the load and started again 5 s
    later (the issue's figures).  Every call whose phones all answered ends
    FINISH (the dialplan connects the client by itself while no FastAGI
    answers); every call has one final status its phones back; clients
    who answered while agi_app was down and still talk show CLIENT_PICKUP
    from the channel snapshot with their recording listed; every call --
    those that ended while agi_app was down too -- gave its operator one
    hangup webhook."""
    started = time.monotonic()
    kill_after = int(8 * RATE)
    start_phones(sandbox, 4, long_from=kill_after - LONG_CALLS)
    process.start()
    await process.ready()
    subs = await subscribe_all(process.api)
    load = Load(process.api, 4, "lf-kill")
    try:
        load.start()
        await load.placed_count(kill_after)
        await load.pause()
        await every_call_rings(sandbox, load.accepted())
        long_calls = [p for p in load.accepted() if p.n >= kill_after - LONG_CALLS]
        process.kill()
        killed_at = time.time()
        load.resume()
        await task.deferLater(reactor(), 5.0, lambda: None)  # agi_app stays down 5 s
        process.start()
        await process.ready()
        back_at = time.time()
        for p in long_calls:
            entries = await wait_until(
                lambda p=p: process.history(p.call_id),
                lambda e: st.CLIENT_PICKUP in words(e), 5, f"{p.call_id} CLIENT_PICKUP",
            )  # fmt: skip
            pickup = next(e for e in entries if e["status"] == st.CLIENT_PICKUP)
            assert pickup["detail"] == PICKUP_UNSEEN, entries
            assert not any(s in st.FINAL for s in words(entries)), entries
            client = phones_saw(sandbox)[p.phone].client
            assert client and killed_at < client[0]["answer_time"] < back_at, client
            assert client[0]["end"] is None, "the client hung up already"
        records = await order_records(process.api, "lf-kill")
        for p in long_calls:
            assert records[p.call_id], f"{p.call_id}: no recording listed"
        await load.placed_count(max(int(SECONDS * RATE), len(load.placed) + 15))
        placed = await load.stop()
        ids = [p.call_id for p in placed if p.call_id]
        calls = await histories(process.history, ids, timeout=LONG_TALK + 30)
        seen = phones_saw(sandbox)
        finals = check_load(placed, calls, seen)
        accepted = [p for p in placed if p.code == 200]
        for p in accepted:
            assert words(calls[p.call_id]) == HAPPY, (p, calls[p.call_id], process.logs())
        assert all(killed_at < p.at < back_at for p in placed if p.code != 200)
        ended_unseen = [p for p in accepted
                        if any(c["end_time"] and killed_at < c["end_time"] < back_at
                               for c in seen[p.phone].client)]  # fmt: skip
        assert ended_unseen, "no call ended while agi_app was down"
        # Every recording complete, size and duration -- those of calls that
        # ended in the moment before the SIGKILL too (measured after the start)
        await wait_until(
            lambda: order_records(process.api, "lf-kill"),
            lambda r: all(r[p.call_id] and r[p.call_id][0]["size"] for p in accepted),
            30, "every recording complete", interval=0.5,
        )  # fmt: skip
        # A call that ended in the last moments before the SIGKILL: its final
        # status (or its recording's size) was written, its hangup (or
        # record) event not queued yet -- events are made in memory from
        # what happened; see docs/operations.md.
        last_moment = {p.call_id for p in accepted
                       if killed_at - 3 < parse_time(calls[p.call_id][-1]["time"]) < killed_at}
        answered = [p.call_id for p in accepted if p.call_id not in last_moment]
        states = await all_delivered(process.api, subs, crm.receiver, answered)
        events, repeats = check_deliveries(crm.receiver, subs, states)
        lost = check_hangups(placed, seen, crm.receiver, may_lack=last_moment)
        recorded = {r.fields["CallID"] for r in crm.receiver.accepted
                    if r.fields["EventType"] == "record"}  # fmt: skip
        records_lost = len(last_moment - recorded)
        report("agi_app killed", started, calls=len(placed), finals=dict(finals),
               ended_while_down=len(ended_unseen), events=events, repeats=repeats,
               hangups_lost_at_kill=lost, records_lost_at_kill=records_lost)  # fmt: skip
    finally:
        await load.stop()


@pytest_twisted.ensureDeferred
async def test_a_script_gone_between_marking_the_client_dialled_and_dialling(sandbox, ami):
    """The narrowest moment of a SIGKILL: the FastAGI script has marked the
    client dialled (``AGI_APP_DIALLED``) and goes away before its Dial ran.
    The dialplan must dial the client itself (Dial sets DIALSTATUS: none,
    so nobody dialled it), not hang the operator up."""
    registry = ScriptRegistry()
    recording = f"{sandbox.pbx_recordings_dir}/lf-window-1.wav"

    @registry.script("operator_call")
    async def marks_then_goes(agi) -> None:
        await agi.exec_("MixMonitor", recording, "b")
        await agi.set_variable("AGI_APP_DIALLED", "1")
        agi.close()

    port = await listen_fastagi(sandbox, registry)
    try:
        sandbox.phones.start("1000", answer(after=0.2))
        sandbox.pstn.set("380639950001", answer_after=0.2, hangup_after=1)
        result = await ami.originate(
            "PJSIP/1000", context="agi-app-operator", exten="s", priority=1, timeout_ms=5000,
            variables={
                "__AGI_APP_CALL_ID": "window-1", "AGI_APP_CLIENT": "PJSIP/380639950001@pstn",
                "AGI_APP_CLIENT_RING": "20", "AGI_APP_WAIT": "0", "AGI_APP_SHOWN": "1000",
                "AGI_APP_RECORDING": recording,
            },
        )  # fmt: skip
        assert result.success, result
        client = await sandbox.pstn.wait_for_hangup(timeout=15, reactor=reactor(),
                                                    number="380639950001")  # fmt: skip
        assert client["answer_time"] and client["hung_up_by"] == "phone", client
        await sandbox.wait_for_channels(0, timeout=5, reactor=reactor())
        # The script's recording (empty: MixMonitor "b" writes only while
        # bridged) was stopped before the dialplan started its own on the file.
        log = sandbox.log_tail(300)
        assert '"1?StopMixMonitor()")' in log, log
    finally:
        await port.stopListening()
