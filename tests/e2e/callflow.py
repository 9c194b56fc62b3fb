"""Helpers for end-to-end tests of call flows: the whole agi_app running in
the test's reactor against the sandbox PBX, an HTTP client for its API, and
waits on the call log."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import task
from twisted.web.client import HTTPConnectionPool

from agi_app.app import Application
from agi_app.config import load

#: the test session's HTTP and WebSocket ports (the sandbox's test profile
#: uses 2xxxx ports; AGI_APP_SANDBOX_PORT_OFFSET moves them all, 10 apart
#: per offset step, so sessions side by side never share one)
_OFFSET = int(os.environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "0") or 0)
HTTP_PORT = 28080 if not _OFFSET else 27080 + _OFFSET // 20
WS_PORT = HTTP_PORT + 2


def reactor():
    from twisted.internet import reactor as r

    return r


def app_config(sandbox, tmp_path, **overrides: str):
    """A Config for an agi_app talking to the sandbox, with its own store."""
    env = dict(sandbox.agi_app_config())
    env.update(
        {
            "AGI_APP_HTTP_LISTEN": f"tcp:{HTTP_PORT}:interface=127.0.0.1",
            "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{HTTP_PORT}",
            "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{WS_PORT}:interface=127.0.0.1",
            "AGI_APP_STORE_PATH": str(tmp_path / "agi_app.sqlite3"),
            "AGI_APP_AMI_PING_INTERVAL": "2",
            "AGI_APP_AMI_ACTION_TIMEOUT": "3",
            "AGI_APP_AMI_MAX_BACKOFF": "1",
        }
    )
    env.update(overrides)
    return load(None, environ=env)


async def start_app(config) -> Application:
    """Start an Application and wait until its AMI session is logged in."""
    app = Application(config, reactor())
    await app.start()
    await app.ami.when_connected().addTimeout(10, reactor())
    return app


class Api:
    """A small client of the running app's HTTP API."""

    def __init__(self, base: str = f"http://127.0.0.1:{HTTP_PORT}"):
        self.base = base
        # No keep-alive: each test starts its own server on the same port, and
        # a pooled connection would still reach the previous test's one.
        self.pool = HTTPConnectionPool(reactor(), persistent=False)

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        response = await treq.get(self.base + path, params=params or None, pool=self.pool)
        return response.code, await _body(response)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        response = await treq.post(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            pool=self.pool,
        )
        return response.code, await _body(response)


async def make_call(api: Api, **params: Any) -> str:
    """``/api/makeCall.json`` with ``params``; the new call's id (200 expected)."""
    code, body = await api.get("/api/makeCall.json", **params)
    assert code == 200, body
    return body["call_id"]


async def _body(response) -> Any:
    content = await response.content()
    try:
        return json.loads(content)
    except ValueError:
        return content


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"):
    """Poll an async-free ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout} s")
        await task.deferLater(reactor(), 0.05, lambda: None)


async def wait_final(app: Application, call_id: str, timeout: float = 30.0) -> list[dict]:
    """The call's history once it has its final status."""
    deadline = time.monotonic() + timeout
    while True:
        call = await app.store.get_call(call_id)
        if call is not None and call.get("final_status"):
            return await app.store.statuses(call_id)
        if time.monotonic() > deadline:
            entries = await app.store.statuses(call_id)
            raise TimeoutError(f"call {call_id} not final after {timeout} s: {entries}")
        await task.deferLater(reactor(), 0.1, lambda: None)


async def wait_status(app: Application, call_id: str, status: str, timeout: float = 15.0) -> dict:
    """The call's first entry with ``status``, once logged."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in await app.store.statuses(call_id):
            if entry["status"] == status:
                return entry
        if time.monotonic() > deadline:
            entries = await app.store.statuses(call_id)
            raise TimeoutError(f"call {call_id}: no {status} after {timeout} s: {entries}")
        await task.deferLater(reactor(), 0.1, lambda: None)


def words(entries: list[dict]) -> list[str]:
    """The status words of history entries, in order."""
    return [e["status"] for e in entries]


def seconds_between(a: dict, b: dict) -> float:
    """Seconds from entry ``a`` to entry ``b`` (their ``time`` fields)."""
    from datetime import datetime

    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return parse(b["time"]) - parse(a["time"])


async def recording_settled(app: Application, record_id: int, timeout: float = 15.0) -> dict:
    """The recording once its size is stored (MixMonitor closes the file
    only after the channel is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = await app.store.get_recording(record_id)
        if rec and rec.get("size"):
            return rec
        if time.monotonic() > deadline:
            raise TimeoutError(f"recording {record_id} never settled: {rec}")
        await task.deferLater(reactor(), 0.1, lambda: None)
