"""Two agi_app nodes on one throwaway PostgreSQL and one sandbox PBX
(agi_app.cluster, docs/scaling.md "Several nodes").

Node A is a child process (so it can be killed with SIGKILL), node B runs in
the test's reactor.  The sandbox dialplan's FastAGI address points at node
B's port: calls placed through A have their FastAGI session on B (two nodes
follow each of them).  A starts first and leads the PBX.

- calls placed through both nodes: the history is the same from either; a
  widget connected to B sees those placed through A end;
- a webhook subscription per event type gets every event once, in order;
- A killed with SIGKILL while calls are up: a new call through B succeeds
  within 5 s, B leads the PBX within seconds, every call placed before the
  kill ends with exactly one final status, and no webhook event is
  delivered twice or out of order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest_twisted
from callflow import HTTP_PORT, Api, app_config, reactor, wait_final, wait_until
from twisted.internet import task

from agi_app.app import Application
from agi_app.calls import statuses as st
from agi_app.events.testing import Receiver
from agi_app.sandbox.phones import answer
from agi_app.ws.testing import connect_widget

RECEIVER_PORT = HTTP_PORT + 5
WS_B = HTTP_PORT + 6
HTTP_A = HTTP_PORT + 7
WS_A = HTTP_PORT + 8
AGI_A = HTTP_PORT + 9
RECEIVER = f"http://127.0.0.1:{RECEIVER_PORT}"
QUICK = {
    "AGI_APP_EVENTS_RETRY_DELAY": "0.2",
    "AGI_APP_EVENTS_MAX_RETRY_DELAY": "1",
    "AGI_APP_EVENTS_TIMEOUT": "2",
}
OPERATORS = ("1000", "1001")
EVENT_TYPES = ("dial-out", "answer", "hangup")
#: calls up (placed through both nodes) when node A is killed
LOAD = 8

_CHILD = """
import sys
from twisted.internet import reactor
from agi_app.app import run
from agi_app.config import load
sys.exit(run(load(None), reactor))
"""


def _child(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        env={**os.environ, **env},
        stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _pause(seconds: float) -> None:
    await task.deferLater(reactor(), seconds, lambda: None)


async def _health(api: Api) -> dict:
    try:
        code, body = await api.get("/health")
    except Exception:  # noqa: BLE001 - not listening (yet, or any more)
        return {}
    return body if code == 200 and isinstance(body, dict) else {}


def _leads(health: dict) -> list[str]:
    return (health.get("node") or {}).get("leads") or []


async def _place(api: Api, sip: str, phone: str, order: str) -> str:
    code, body = await api.get(
        "/api/makeCall.json", sip=sip, phone=phone, order_id=order, external_key=f"k-{order}"
    )
    assert code == 200, body
    return body["call_id"]


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_the_calls_the_webhooks_and_take_over_when_one_dies(
    sandbox, pg_cluster, tmp_path
):
    url = pg_cluster.new_database("nodes")
    crm = Receiver()
    receiver = reactor().listenTCP(RECEIVER_PORT, crm.site(), interface="127.0.0.1")
    for ext in OPERATORS:
        sandbox.phones.start(ext, answer(after=0.2))
    sandbox.pstn.set_default("answer", answer_after=0.3, hangup_after=4)
    env_a = {
        **sandbox.agi_app_config(),
        **QUICK,
        "AGI_APP_STORE_URL": url,
        "AGI_APP_STORE_PATH": str(tmp_path / "a.sqlite3"),
        "AGI_APP_NODE_NAME": "node-a",
        "AGI_APP_AGI_LISTEN": f"tcp:{AGI_A}:interface=127.0.0.1",
        "AGI_APP_HTTP_LISTEN": f"tcp:{HTTP_A}:interface=127.0.0.1",
        "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{HTTP_A}",
        "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{WS_A}:interface=127.0.0.1",
        "AGI_APP_AMI_PING_INTERVAL": "2",
        "AGI_APP_AMI_ACTION_TIMEOUT": "3",
        "AGI_APP_AMI_MAX_BACKOFF": "1",
    }
    log = tmp_path / "node-a.log"
    proc = _child(env_a, log)
    api_a, api_b = Api(f"http://127.0.0.1:{HTTP_A}"), Api()
    node_b: Application | None = None
    try:
        # A first: it leads the PBX
        await wait_until(lambda: _health(api_a), lambda h: _leads(h) == ["default"], 30,
                         "node A leads")  # fmt: skip
        config = app_config(
            sandbox, tmp_path, AGI_APP_STORE_URL=url, AGI_APP_NODE_NAME="node-b",
            AGI_APP_WEBSOCKET_LISTEN=f"tcp:{WS_B}:interface=127.0.0.1", **QUICK,
        )  # fmt: skip
        node_b = Application(config, reactor())
        await node_b.start()
        await node_b.ami.when_connected().addTimeout(10, reactor())
        assert _leads(await _health(api_b)) == []

        # subscriptions made through A; B hears of them
        subs = {}
        for kind in EVENT_TYPES:
            code, sub = await api_a.post(
                f"/extension/{OPERATORS[0]}/event/",
                {"url": f"{RECEIVER}/{kind}", "method": "POST", "event_type": kind},
            )
            assert code == 201, sub
            subs[kind] = sub["id"]
        await wait_until(lambda: node_b.events.service.wants(OPERATORS[0], "hangup"), bool, 5,
                         "node B knows the subscriptions")  # fmt: skip

        # a widget on node B, for the operator
        widget = await connect_widget(reactor(), WS_B)
        welcome = await widget.hello(user_phone=OPERATORS[0])
        assert welcome.get("type") != "error", welcome

        # 1. calls through both nodes
        first = []
        for i, api in enumerate((api_a, api_b, api_a, api_b)):
            first.append(await _place(api, OPERATORS[0], f"38063993{i:04d}", f"n1-{i}"))
        for call_id in first:
            await wait_final(node_b, call_id, timeout=40)
        for order in (f"n1-{i}" for i in range(4)):
            seen_a = await api_a.get("/api/orderHistory", order_id=order)
            seen_b = await api_b.get("/api/orderHistory", order_id=order)
            assert seen_a[0] == 200 and seen_a == seen_b, (seen_a, seen_b)
        # the widget on B saw every one of them end, those placed through A too, once
        await wait_until(lambda: [m for m in widget.messages if m.get("type") == "event"],
                         lambda ms: {m["event"].get("callID") for m in ms
                                     if m["event"]["type"] == 3} >= set(first),
                         10, "widget events")  # fmt: skip
        ended = [m["event"]["callID"] for m in widget.messages
                 if m.get("type") == "event" and m["event"]["type"] == 3]  # fmt: skip
        assert sorted(ended) == sorted(set(ended)), ended
        widget.transport.loseConnection()

        # 2. A dies while calls are up
        during = []
        for i in range(LOAD):
            api = (api_a, api_b)[i % 2]
            during.append(await _place(api, OPERATORS[i // 2 % 2], f"38063994{i:04d}", f"n2-{i}"))
        await wait_until(lambda: sandbox.pbx.channels_deferred(reactor()),
                         lambda chans: len(chans) >= LOAD, 15, "calls up")  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=5)
        # a new call through B succeeds within 5 s; B leads within seconds
        after = await _place(api_b, OPERATORS[1], "380639950000", "n3-0")
        placed_in = time.monotonic() - killed
        await wait_until(lambda: _health(api_b), lambda h: _leads(h) == ["default"], 10,
                         "node B leads", interval=0.1)  # fmt: skip
        took_over = time.monotonic() - killed
        entries = await wait_final(node_b, after, timeout=40)
        answered = time.monotonic() - killed
        assert [e["status"] for e in entries][-1] == st.FINISH, entries
        assert placed_in < 5, placed_in
        assert took_over < 5, took_over

        # 3. every call placed before the kill: exactly one final status
        for call_id in first + during:
            entries = await wait_final(node_b, call_id, timeout=40)
            finals = [e["status"] for e in entries if e["status"] in st.FINAL]
            assert len(finals) == 1, entries
            words = [e["status"] for e in entries]
            assert len(words) == len(set(words)), entries  # no status written twice

        # 4. webhooks: once each, in order per subscription, nothing left queued
        await wait_until(
            lambda: node_b.store.subscriptions_with_pending(), lambda p: not p, 30,
            "every queued delivery done",
        )  # fmt: skip
        await _pause(1.0)
        for kind in EVENT_TYPES:
            got = [int(r.fields["EventID"]) for r in crm.requests if r.path == f"/{kind}"]
            assert got == sorted(got) and len(got) == len(set(got)), (kind, got)
        hangups = {r.fields.get("CallID") for r in crm.requests if r.path == "/hangup"}
        print(
            f"takeover {took_over:.1f} s, new call placed {placed_in:.2f} s after the kill, "
            f"{len(crm.requests)} deliveries, hangup events of {len(hangups)} calls"
        )
        # every event of the calls placed before the kill, once each
        for kind in EVENT_TYPES:
            calls = [r.fields.get("CallID") for r in crm.requests if r.path == f"/{kind}"]
            assert len(calls) == len(set(calls)), (kind, calls)
            assert set(first) <= set(calls), (kind, first, calls)
        finals = {c: (await node_b.store.get_call(c))["final_status"] for c in during}
        print(f"calls up at the kill ended with {finals}; the call placed after it ended "
              f"{answered:.1f} s after the kill")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if node_b is not None:
            await node_b.stop()
        await receiver.stopListening()
        print(log.read_text(errors="replace")[-4000:])
