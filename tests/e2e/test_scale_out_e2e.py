"""Scale out end to end: two agi_app nodes, one PostgreSQL, two PBXs,
FastAGI through ``hagi://`` (docs/scaling.md).

- two sandbox PBXs: the session's (``default``) and a second one at the
  offset 200 above it (``[ami:east]``); each one's dialplan reaches FastAGI
  through ``hagi://`` with SRV records of both nodes' FastAGI ports (node
  A priority 10, node B priority 20), served by its own dnsmasq;
- two nodes, each ``agi-app serve`` from this checkout's venv as a child
  process, keeping their store in one throwaway PostgreSQL database; A
  starts first and leads both PBXs;
- calls placed through both nodes to operators on both PBXs: history,
  recordings and sipList are the same from either node;
- webhook subscriptions (a receiver in the test) of an operator on each PBX;
- calls placed a few per second, alternating between the nodes, and node A
  SIGKILLed half way: new calls succeed through node B within 5 s (their
  FastAGI sessions on B through ``hagi://``, B leads both PBXs), every call
  placed before the kill ends with exactly one final status and no status
  twice, and every webhook event is delivered once, in order per
  subscription.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import pytest_twisted
from callflow import HTTP_PORT, Api, reactor, wait_until, words
from test_hagi_failover_e2e import NodeA
from test_several_pbxs import ami_section, operators_online, start_second_pbx
from twisted.internet import defer, task

from agi_app.calls import statuses as st
from agi_app.events.testing import Receiver
from agi_app.sandbox.phones import answer

HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
PBXS = ["default", "east"]
#: operator -> its PBX
OPERATORS = {"1000": "default", "1001": "default", "1002": "east", "1003": "east"}
#: the operators whose events the CRM subscribes to, one per PBX
SUBSCRIBED = ("1000", "1002")
EVENT_TYPES = ("answer", "hangup")
HTTP_A, HTTP_B = HTTP_PORT + 4, HTTP_PORT + 6  # WebSocket: the next port of each
RECEIVER_PORT = HTTP_PORT + 8
QUICK = {
    "AGI_APP_EVENTS_RETRY_DELAY": "0.2",
    "AGI_APP_EVENTS_MAX_RETRY_DELAY": "1",
    "AGI_APP_EVENTS_TIMEOUT": "2",
}
#: the load: one call every INTERVAL s, node A killed after KILL_AFTER of them
CALLS, INTERVAL, KILL_AFTER = 22, 0.4, 10
TALK = 1.5
#: new calls must get through node B within this many seconds of the kill
BUDGET = 5.0


@pytest.fixture(scope="module")
def east_hagi(hagi):
    """The second PBX, its dialplan on ``hagi://`` with SRV records of both
    nodes' FastAGI ports (the same two as the session PBX's)."""
    pbx, phones = start_second_pbx(hagi, [hagi.agi_port, hagi.agi_port + 1])
    yield pbx, phones
    phones.stop_all()
    pbx.stop()


@pytest.fixture
def store_url(pg_cluster) -> str:
    """One new PostgreSQL database both nodes keep their store in."""
    return pg_cluster.new_database("scale")


def _node(hagi, east_pbx, folder, store_url, name: str, http: int, agi: int) -> NodeA:
    return NodeA(
        hagi, folder, store_url, name=name, http_port=http,
        env={**QUICK, "AGI_APP_NODE_NAME": name,
             "AGI_APP_AGI_LISTEN": f"tcp:{agi}:interface=127.0.0.1"},
        sections={"ami:east": ami_section(east_pbx)},
    )  # fmt: skip


@pytest_twisted.async_yield_fixture
async def nodes(hagi, east_hagi, tmp_path, store_url):
    """(node A, node B), both ``agi-app serve`` on one store and both PBXs;
    A started first, so it leads both."""
    east_pbx, _ = east_hagi
    a = _node(hagi, east_pbx, tmp_path, store_url, "node-a", HTTP_A, hagi.agi_port)
    b = _node(hagi, east_pbx, tmp_path, store_url, "node-b", HTTP_B, hagi.agi_port + 1)
    try:
        a.start()
        await a.ready()
        await wait_until(lambda: _health(a.api), lambda h: _leads(h) == PBXS, 15,
                         "node A leads both PBXs")  # fmt: skip
        b.start()
        await b.ready()
        yield a, b
    finally:
        for node in (b, a):
            node.stop()
        for node in (a, b):
            print(f"--- {node.name}\n{node.logs()}")


async def _health(api: Api) -> dict:
    try:
        code, body = await api.get("/health")
    except Exception:  # noqa: BLE001 - not listening (yet, or any more)
        return {}
    return body if isinstance(body, dict) else {}


def _leads(health: dict) -> list[str]:
    return (health.get("node") or {}).get("leads") or []


async def _place(api: Api, sip: str, n: int) -> str:
    code, body = await api.get("/api/makeCall.json", sip=sip, phone=f"3806399600{n:02d}",
                               order_id=f"s-{n}", external_key=f"scale-{n}")  # fmt: skip
    assert code == 200, body
    return body["call_id"]


async def _history(api: Api, call_id: str) -> list[dict]:
    code, body = await api.get("/api/callHistory.json", call_id=call_id)
    assert code == 200, body
    return body["history"]


async def _final(api: Api, call_id: str, timeout: float = 40.0) -> list[dict]:
    """The call's history (through ``api``) once it has a final status."""
    return await wait_until(
        lambda: _history(api, call_id),
        lambda h: any(e["status"] in st.FINAL for e in h),
        timeout, f"call {call_id} final", interval=0.2,
    )  # fmt: skip


def _at(entry: dict) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


async def _pause(seconds: float) -> None:
    await task.deferLater(reactor(), seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_two_nodes_two_pbxs_hagi_and_one_node_killed_under_load(hagi, east_hagi, nodes):
    a, b = nodes
    east_pbx, east_phones = east_hagi
    crm = Receiver()
    receiver = reactor().listenTCP(RECEIVER_PORT, crm.site(), interface="127.0.0.1")
    try:
        for ext, pbx in OPERATORS.items():
            (hagi.phones if pbx == "default" else east_phones).start(ext, answer(after=0.2))
        for pstn in (hagi.pstn, east_phones.pstn):
            pstn.set_default("answer", answer_after=0.3, hangup_after=TALK)
        await operators_online(a.api, {(ext, pbx) for ext, pbx in OPERATORS.items()})

        # webhook subscriptions made through A, one per operator and event type
        for ext in SUBSCRIBED:
            for kind in EVENT_TYPES:
                code, sub = await a.api.post(f"/extension/{ext}/event/", {
                    "url": f"http://127.0.0.1:{RECEIVER_PORT}/{ext}/{kind}",
                    "method": "POST", "event_type": kind,
                })  # fmt: skip
                assert code == 201, sub

        # 1. calls through both nodes to operators on both PBXs
        first = [
            await _place(api, ext, n)
            for n, (api, ext) in enumerate(
                [(a.api, "1000"), (b.api, "1002"), (b.api, "1001"), (a.api, "1003")]
            )
        ]
        for call_id, ext in zip(first, ["1000", "1002", "1001", "1003"], strict=True):
            history = await _final(b.api, call_id)
            assert words(history) == HAPPY, history
            # logged as the operator's PBX's, by whichever node wrote each status
            assert {e["pbx"] for e in history} == {OPERATORS[ext]}, history
        for call_id in first:
            assert await _history(a.api, call_id) == await _history(b.api, call_id)

        async def records(api: Api) -> list:
            bodies = [await api.get("/api/orderRecords.json", order_id=f"s-{n}") for n in range(4)]
            return bodies

        def settled(bodies: list) -> bool:
            recs = [r for _, body in bodies for c in body["calls"] for r in c["records"]]
            return len(recs) == 4 and all(r.get("size") for r in recs)

        def same(bodies: list) -> list:
            """Without the recordings' URLs: each node links to itself."""
            for _, body in bodies:
                for rec in (r for c in body["calls"] for r in c["records"]):
                    assert rec.pop("url").endswith(f"/records/{rec['record_id']}"), rec
            return bodies

        seen_b = await wait_until(lambda: records(b.api), settled, 15, "recordings settled")
        assert same(await records(a.api)) == same(seen_b)
        assert {c["pbx"] for _, body in seen_b for c in body["calls"]} == set(PBXS)
        sips_a = await a.api.get("/api/sipList.json", per_page=500)
        assert sips_a[0] == 200 and sips_a == await b.api.get("/api/sipList.json", per_page=500)
        online = {(o["sip"], o["pbx"]) for o in sips_a[1]["sips"] if o["status"] == "online"}
        assert online == set(OPERATORS.items())

        # 2. load: a call every INTERVAL s, alternating nodes and PBXs; A killed
        sessions_b = await b.fastagi_sessions()

        async def watch(since: float) -> None:
            """How long after the kill B leads both PBXs, and B's first
            FastAGI session (through hagi://) begins."""

            async def leading() -> None:
                await wait_until(lambda: _health(b.api), lambda h: _leads(h) == PBXS, 15,
                                 "node B leads both PBXs", interval=0.1)  # fmt: skip
                took["leads"] = time.monotonic() - since

            async def carrying() -> None:
                await wait_until(b.fastagi_sessions, lambda n: n > sessions_b, 15,
                                 "a FastAGI session on node B", interval=0.05)  # fmt: skip
                took["fastagi"] = time.monotonic() - since

            both = [defer.ensureDeferred(leading()), defer.ensureDeferred(carrying())]
            await defer.gatherResults(both, consumeErrors=True)

        took: dict[str, float] = {}
        placed: list[tuple[str, str, bool]] = []  # (call_id, operator, before the kill)
        killed_wall = 0.0
        watcher = None
        for n in range(4, 4 + CALLS):
            ext = list(OPERATORS)[n % 4]
            before = n - 4 < KILL_AFTER
            if n - 4 == KILL_AFTER:
                # mid-load (calls up on both PBXs), and a new call right after
                up = [len(await p.channels_deferred(reactor())) for p in (hagi.pbx, east_pbx)]
                assert min(up) > 0, up
                a.kill()
                killed_wall = time.time()
                watcher = defer.ensureDeferred(watch(time.monotonic()))
            api = (a.api, b.api)[n % 2] if before else b.api
            placed.append((await _place(api, ext, n), ext, before))
            await _pause(INTERVAL)
        await watcher

        # new calls through B within BUDGET s: the first after the kill had
        # its client answered within it, its FastAGI session on B
        after = [c for c, _, before in placed if not before]
        entries = {c: await _final(b.api, c) for c, _, _ in placed}
        for call_id, ext, _ in placed:
            assert {e["pbx"] for e in entries[call_id]} == {OPERATORS[ext]}, entries[call_id]
        for call_id in after:
            assert words(entries[call_id]) == HAPPY, entries[call_id]
        pickup = next(e for e in entries[after[0]] if e["status"] == "CLIENT_PICKUP")
        through_b = _at(pickup) - killed_wall
        print(
            "\nfirst call after the kill:",
            [(e["status"], round(_at(e) - killed_wall, 2)) for e in entries[after[0]]],
        )
        assert through_b < BUDGET, through_b
        assert took["leads"] < BUDGET and took["fastagi"] < BUDGET, took
        assert await b.fastagi_sessions() >= sessions_b + len(after)

        # every call placed before the kill: one final status, no status twice
        for call_id in first + [c for c, _, before in placed if before]:
            history = entries.get(call_id) or await _final(b.api, call_id)
            finals = [e["status"] for e in history if e["status"] in st.FINAL]
            assert len(finals) == 1, history
            assert len(words(history)) == len(set(words(history))), history

        # 3. webhooks: every call of a subscribed operator hung up once, in order
        def hangups(ext: str) -> list[str]:
            return [r.fields.get("CallID") for r in crm.requests if r.path == f"/{ext}/hangup"]

        calls_of = {ext: [c for c, e, _ in placed if e == ext] for ext in SUBSCRIBED}
        calls_of["1000"].append(first[0])
        calls_of["1002"].append(first[1])
        for ext in SUBSCRIBED:
            await wait_until(lambda ext=ext: set(hangups(ext)), lambda got, ext=ext:
                             got >= set(calls_of[ext]), 20, f"hangup events of {ext}")  # fmt: skip
        await _pause(2.0)  # a second delivery of anything would come now
        for ext in SUBSCRIBED:
            for kind in EVENT_TYPES:
                got = [r for r in crm.requests if r.path == f"/{ext}/{kind}"]
                ids = [int(r.fields["EventID"]) for r in got]
                assert ids == sorted(ids) and len(ids) == len(set(ids)), (ext, kind, ids)
                call_ids = [r.fields.get("CallID") for r in got]
                assert len(call_ids) == len(set(call_ids)), (ext, kind, call_ids)
            assert sorted(hangups(ext)) == sorted(calls_of[ext]), ext
        cut = [words(entries[c]) for c, _, before in placed if before]
        print(
            f"\nscale out: {len(placed) + len(first)} calls; node B led both PBXs "
            f"{took['leads']:.2f} s after the kill, had its first FastAGI session "
            f"{took['fastagi']:.2f} s after; the first call after it had its client "
            f"answered {through_b:.2f} s after; {up} channels up on the PBXs at the kill; "
            f"the calls placed before it: {cut}; "
            f"{len(crm.requests)} webhook deliveries"
        )
    finally:
        await receiver.stopListening()
