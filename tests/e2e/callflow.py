"""Helpers for end-to-end tests of call flows: the whole agi_app running in
the test's reactor against the sandbox PBX, an HTTP client for its API, and
waits on the call log and the PBX."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import treq
from twisted.internet import defer
from twisted.web.client import HTTPConnectionPool

from agi_app.agi import ScriptRegistry, listen
from agi_app.app import Application
from agi_app.config import AGIConfig, load
from agi_app.sandbox import poll
from agi_app.store.pg_testing import create_database

#: the test session's HTTP and WebSocket ports (the sandbox's test profile
#: uses 2xxxx ports; AGI_APP_SANDBOX_PORT_OFFSET moves them all, 10 apart
#: per offset step, so sessions side by side never share one)
_OFFSET = int(os.environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "0") or 0)
HTTP_PORT = 28080 if not _OFFSET else 27080 + _OFFSET // 20
WS_PORT = HTTP_PORT + 2


def reactor():
    from twisted.internet import reactor as r

    return r


#: a PostgreSQL server (the URL of any database on it) the e2e agi_app keeps
#: its store on, a fresh database per test; unset: an SQLite file per test
_STORE_SERVER = os.environ.get("AGI_APP_TEST_STORE_URL", "")
_STORE_DATABASES: dict[str, str] = {}


def _store_url(tmp_path) -> str:
    """The test's own PostgreSQL database (one per test folder, so an app
    started again in the same test finds its store), or "" for SQLite."""
    if not _STORE_SERVER:
        return ""
    if str(tmp_path) not in _STORE_DATABASES:
        _STORE_DATABASES[str(tmp_path)] = create_database(_STORE_SERVER, "e2e")
    return _STORE_DATABASES[str(tmp_path)]


def app_config(sandbox, tmp_path, **overrides: str):
    """A Config for an agi_app talking to the sandbox, with its own store
    (on PostgreSQL when ``AGI_APP_TEST_STORE_URL`` names a server)."""
    env = dict(sandbox.agi_app_config())
    env.update(
        {
            "AGI_APP_HTTP_LISTEN": f"tcp:{HTTP_PORT}:interface=127.0.0.1",
            "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{HTTP_PORT}",
            "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{WS_PORT}:interface=127.0.0.1",
            "AGI_APP_STORE_PATH": str(tmp_path / "agi_app.sqlite3"),
            "AGI_APP_STORE_URL": _store_url(tmp_path),
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


async def start_sandbox_app(sandbox, tmp_path, ivr_path=None, **overrides: str) -> Application:
    """:func:`start_app` with :func:`app_config`'s settings plus
    ``overrides`` (``AGI_APP_*``), and IVR menus from ``ivr_path``."""
    if ivr_path is not None:
        overrides["AGI_APP_IVR_PATH"] = str(ivr_path)
    return await start_app(app_config(sandbox, tmp_path, **overrides))


async def listen_fastagi(sandbox, scripts: ScriptRegistry):
    """A FastAGI server for ``scripts`` on the port the sandbox's dialplan
    calls (``AGI(${AGI_APP_URL}/...)``); its listening port, to stop."""
    return await listen(
        reactor(), AGIConfig(listen=f"tcp:{sandbox.agi_port}:interface=127.0.0.1"), scripts
    )


class Api:
    """A small client of the running app's HTTP API."""

    def __init__(self, base: str = f"http://127.0.0.1:{HTTP_PORT}"):
        self.base = base
        # No keep-alive: each test starts its own server on the same port, and
        # a pooled connection would still reach the previous test's one.
        self.pool = HTTPConnectionPool(reactor(), persistent=False)

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", path, body)

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("PUT", path, body)

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self.request("DELETE", path)

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """``method`` on ``path`` with the query ``params`` and ``body`` as
        JSON; (status, the body parsed as JSON, else its bytes)."""
        kwargs: dict[str, Any] = {"params": params or None}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        response = await treq.request(method, self.base + path, pool=self.pool, **kwargs)
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


async def wait_until(
    fetch: Callable[[], Any],
    done: Callable[[Any], Any] = bool,
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Call ``fetch`` (plain, async or returning a Deferred) every
    ``interval`` s, without blocking the reactor, until ``done`` is true
    of what it returned; returns that.  :class:`TimeoutError` after
    ``timeout`` s names ``what`` and the last value seen."""
    seen: list[Any] = []

    async def check() -> bool:
        value = fetch()
        if inspect.isawaitable(value):
            value = await value
        seen[:] = [value]
        return bool(done(value))

    await poll(
        lambda: defer.ensureDeferred(check()),
        timeout,
        reactor(),
        lambda: f"{what}: not met; last seen: {seen[0] if seen else None!r}",
        interval,
    )
    return seen[0]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"):
    """Wait until ``predicate()`` returns something truthy; returns it."""
    return await wait_until(predicate, timeout=timeout, what=what)


async def wait_final(app: Application, call_id: str, timeout: float = 30.0) -> list[dict]:
    """The call's history once it has its final status."""

    async def history() -> tuple[bool, list[dict]]:
        call = await app.store.get_call(call_id)
        return bool(call and call.get("final_status")), await app.store.statuses(call_id)

    _final, entries = await wait_until(
        history, lambda h: h[0], timeout, f"call {call_id} final", interval=0.1
    )
    return entries


async def wait_status(app: Application, call_id: str, status: str, timeout: float = 15.0) -> dict:
    """The call's first entry with ``status``, once logged."""

    def first(entries: list[dict]) -> dict | None:
        return next((e for e in entries if e["status"] == status), None)

    entries = await wait_until(
        lambda: app.store.statuses(call_id),
        first,
        timeout,
        f"call {call_id}: {status}",
        interval=0.1,
    )
    return first(entries)


def words(entries: list[dict]) -> list[str]:
    """The status words of history entries, in order."""
    return [e["status"] for e in entries]


def seconds_between(a: dict, b: dict) -> float:
    """Seconds from entry ``a`` to entry ``b`` (their ``time`` fields)."""

    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return parse(b["time"]) - parse(a["time"])


async def recording_settled(app: Application, record_id: int, timeout: float = 15.0) -> dict:
    """The recording once its size is stored (MixMonitor closes the file
    only after the channel is gone)."""
    return await wait_until(
        lambda: app.store.get_recording(record_id),
        lambda rec: rec and rec.get("size"),
        timeout,
        f"recording {record_id} settled",
        interval=0.1,
    )


async def wait_pbx(
    sandbox, predicate: Callable[[list[dict]], Any], timeout: float = 10.0, what: str = "PBX state"
) -> list[dict[str, str]]:
    """The PBX's own channel list (``core show channels concise``) once
    ``predicate`` is true of it."""
    return await wait_until(
        lambda: sandbox.pbx.channels_deferred(reactor()), predicate, timeout, what, interval=0.1
    )
