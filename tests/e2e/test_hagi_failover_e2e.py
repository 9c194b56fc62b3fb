"""FastAGI failover through ``hagi://`` and DNS SRV records, end to end.

The sandbox PBX gets a DNS server of its own (dnsmasq on its own loopback
address, see :mod:`agi_app.sandbox.dns`) serving ``_agi._tcp.<zone>``:
priority 10 -> node A's FastAGI port, priority 20 -> node B's; its
dialplan's ``AGI_APP_URL`` is ``hagi://<zone>``.  Node A is ``agi-app
serve`` as a child process (so it can be SIGKILLed), node B the agi_app
in the test's reactor; both keep their store in the same throwaway
PostgreSQL database, so either can carry a call the other placed.

Calls are placed through node B's API.  While A is up, Asterisk's FastAGI
sessions go to A; once A is killed they go to B (A's port refuses at once),
every call with its whole status history.  The time from the kill to the
first call carried through B and the extra setup time per call while A is
down are printed (``-s``) and bounded.
"""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import pytest_twisted
from callflow import (
    HTTP_PORT,
    Api,
    make_call,
    reactor,
    start_sandbox_app,
    wait_final,
    wait_until,
    words,
)
from twisted.internet import task

from agi_app.sandbox import dns
from agi_app.sandbox.phones import answer

HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
AGI_APP = str(Path(sys.executable).with_name("agi-app"))
#: node A's HTTP and WebSocket ports (inside this session's block of ten;
#: test_call_faults uses the two after HTTP_PORT)
NODE_A_HTTP = HTTP_PORT + 4
#: the failover must carry new calls within this many seconds of the kill
FAILOVER_BUDGET = 5.0
#: Asterisk's log time stamp, e.g. [2026-12-07 02:08:53.062]
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]")


class NodeA:
    """``agi-app serve`` on the sandbox's own FastAGI port (the priority-10
    target) and the shared PostgreSQL store, as a child process.

    ``http_port`` (its WebSocket port is the next one), ``name``, ``env``
    (``AGI_APP_*`` overrides) and ``sections`` (more INI sections, e.g.
    ``ami:east``) let a test start several such nodes."""

    def __init__(
        self,
        sandbox,
        folder: Path,
        store_url: str,
        *,
        name: str = "node-a",
        http_port: int = NODE_A_HTTP,
        env: dict[str, str] | None = None,
        sections: dict[str, dict[str, str]] | None = None,
    ):
        self.folder = folder
        self.name = name
        self.http = f"http://127.0.0.1:{http_port}"
        self.api = Api(self.http)
        config = configparser.ConfigParser(interpolation=None)
        config.read_string(sandbox.pbx.agi_app_ini())
        config["ami"].update(ping_interval="2", action_timeout="3", max_backoff="1")
        config["http"] = {
            "listen": f"tcp:{http_port}:interface=127.0.0.1",
            "public_url": self.http,
        }
        config["websocket"] = {"listen": f"tcp:{http_port + 1}:interface=127.0.0.1"}
        config["store"] = {"url": store_url}
        config["metrics"] = {"open": "yes"}
        for section, values in (sections or {}).items():
            config[section] = values
        self.config_path = folder / f"{name}.ini"
        with open(self.config_path, "w") as fh:
            config.write(fh)
        self.env = dict(env or {})
        self.log_path = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGI_APP_")}
        env.update(self.env)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [AGI_APP, "serve", "--config", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.folder, env=env, start_new_session=True,
            )  # fmt: skip

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until its /health answers 200 (AMI logged in)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            try:
                code, _ = await self.api.get("/health")
            except Exception:  # noqa: BLE001 - not listening yet
                code = None
            if code == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout} s:\n{self.logs()}")
            await task.deferLater(reactor(), 0.1, lambda: None)

    async def fastagi_sessions(self) -> int:
        """``agi_app_fastagi_sessions_total`` from its /metrics."""
        code, body = await self.api.get("/metrics")
        assert code == 200, body
        text = body.decode() if isinstance(body, bytes) else str(body)
        m = re.search(r"^agi_app_fastagi_sessions_total (\S+)$", text, re.M)
        assert m, text[:2000]
        return int(float(m.group(1)))

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-40:])


@pytest.fixture
def store_url(pg_cluster) -> str:
    """One new PostgreSQL database both nodes keep their store in."""
    return pg_cluster.new_database("hagi")


@pytest_twisted.async_yield_fixture
async def nodes(hagi, tmp_path, store_url):
    """(node A, node B): A a child process on the priority-10 port, B the
    test's own agi_app on the priority-20 port; one store."""
    a = NodeA(hagi, tmp_path, store_url)
    a.start()
    try:
        await a.ready()
        b = await start_sandbox_app(
            hagi, tmp_path,
            AGI_APP_STORE_URL=store_url,
            AGI_APP_AGI_LISTEN=f"tcp:{hagi.agi_port + 1}:interface=127.0.0.1",
        )  # fmt: skip
        try:
            yield a, b
        finally:
            await b.stop()
    finally:
        a.stop()


def _log_time(line: str) -> float:
    m = _STAMP.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _refused_connect_seconds(log: str, zone: dns.SrvZone, port: int) -> list[float]:
    """For each FastAGI session that failed over: the seconds from
    Asterisk's ``Executing ... AGI(hagi://...)`` to its ``AGI request
    failed for host ... :<port>`` line on the same channel thread."""
    started: dict[str, float] = {}
    out = []
    for line in log.splitlines():
        thread = re.search(r"\]\s+\w+\[(\d+)\]", line)
        if not thread:
            continue
        if "Executing [" in line and f"hagi://{zone.name}/operator_call" in line:
            started[thread.group(1)] = _log_time(line)
        elif f"AGI request failed for host '{zone.name}'" in line and f":{port})" in line:
            if thread.group(1) in started:
                out.append(_log_time(line) - started.pop(thread.group(1)))
    return out


@pytest_twisted.ensureDeferred
async def test_calls_fail_over_to_the_second_srv_target_when_the_first_is_killed(hagi, nodes, api):
    a, b = nodes
    zone = hagi.pbx.srv
    hagi.phones.start("1000", answer(after=0.2))
    for n in range(4):
        hagi.pstn.set(f"38063995000{n}", answer_after=0.2, hangup_after=1.0)

    # Both targets up: the priority-10 one (node A) carries the call (placed
    # through node A's API: see test_a_call_placed_by_one_node_and_carried_by_the_other)
    first = await make_call(a.api, sip="1000", phone="380639950000", order_id="h0",
                            external_key="hagi-0")  # fmt: skip
    assert words(await wait_final(b, first)) == HAPPY
    assert await a.fastagi_sessions() == 1
    assert b.agi_factory.total == 0
    queries = hagi.pbx.dns.queries()
    assert zone.service in queries and zone.target_name(0) in queries

    # Node A killed: its port refuses, Asterisk goes on to node B.
    a.kill()
    killed = time.monotonic()
    second = await make_call(api, sip="1000", phone="380639950001", order_id="h1",
                             external_key="hagi-1")  # fmt: skip
    await wait_until(lambda: b.agi_factory.total, timeout=FAILOVER_BUDGET,
                     what="a FastAGI session on node B", interval=0.01)  # fmt: skip
    failover = time.monotonic() - killed
    assert failover <= FAILOVER_BUDGET
    assert words(await wait_final(b, second)) == HAPPY

    # Every further call too, each one trying node A first.
    later = []
    for n in (2, 3):
        call_id = await make_call(api, sip="1000", phone=f"38063995000{n}",
                                  order_id=f"h{n}", external_key=f"hagi-{n}")  # fmt: skip
        later.append(words(await wait_final(b, call_id)))
    assert later == [HAPPY, HAPPY]
    assert b.agi_factory.total == 3

    # What the failover cost each call: the refused connect to node A, from
    # Asterisk's own log (millisecond time stamps).
    log = hagi.pbx.messages_log.read_text(errors="replace")
    refused = _refused_connect_seconds(log, zone, hagi.agi_port)
    assert len(refused) == 3, log[-3000:]
    assert f"Connecting to '127.0.0.1:{hagi.agi_port}' failed" in log
    assert max(refused) < 0.5, refused
    print(
        f"\nhagi failover: kill -> first FastAGI session on the second target "
        f"{failover:.3f} s (the call placed right after the kill; the operator "
        f"answers after 0.2 s); added setup per call with the first target down "
        f"(AGI start -> first target refused, SRV and A lookups included): "
        f"{', '.join(f'{s * 1000:.0f} ms' for s in refused)}"
    )


# Two nodes on one PBX: the node that placed the call follows it from the
# AMI events, the node whose FastAGI script carries it logs from the script;
# the shared store refuses a status the call already has (several nodes:
# Lifecycle.shared, add_status(once=...)), so each is logged once.
@pytest_twisted.ensureDeferred
async def test_a_call_placed_by_one_node_and_carried_by_the_other_is_logged_once(
    hagi, nodes, api
):
    a, b = nodes
    hagi.phones.start("1000", answer(after=0.2))
    hagi.pstn.set("380639950009", answer_after=0.2, hangup_after=1.0)
    # placed through node B's API; the priority-10 target, node A, carries it
    call_id = await make_call(api, sip="1000", phone="380639950009", order_id="h9",
                              external_key="hagi-9")  # fmt: skip
    entries = await wait_final(b, call_id)
    assert await a.fastagi_sessions() == 1 and b.agi_factory.total == 0
    assert words(entries) == HAPPY
