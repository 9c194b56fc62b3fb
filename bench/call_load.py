"""The whole stack under load on the sandbox PBX, as a CRM uses it.

The sandbox Asterisk 22 (its own instance and ports: ``--offset``), ten SIPp
operators answering, the PSTN SIPp answering every client and hanging up
after ``--talk`` seconds, and agi_app as a child process (``agi-app serve
--config``, so its CPU is its own).  At each rate the CRM side (this
process) places calls for ``--seconds`` seconds, spread over the operators:

* ``--mode makecall``: ``GET /api/makeCall.json``;
* ``--mode ext2phone``: ``POST /api/calls/extToPhone`` (waiting for the
  operator leg, as the API does by default), with a webhook subscription to
  every event type for every operator delivering to a local receiver, and a
  connected widget (``agi_app.ws.testing``) for every operator.

It then waits until every accepted call has its final status (read from the
store's file, so the waiting costs agi_app nothing) and the webhooks have
arrived, and prints per rate: calls requested / accepted / complete chains
(``CALL OPERATOR_CALLTO OPERATOR_PICKUP CLIENT_CALLTO CLIENT_PICKUP
FINISH``) / other final statuses; the CPU (utime + stime of every thread,
``/proc/PID/stat``) of agi_app and of Asterisk per call over the same
window, and their ratio; webhook deliveries and widget messages against
what is expected; makeCall latency; agi_app's resident memory before and
after.

``--ami-read readme|all`` renders the sandbox's manager.conf with the read
classes the README gives, or with ``read = all``.  ``--soak SECONDS``
places ``--soak-rate`` calls/s (10 unless told) for that long and prints,
per minute, agi_app's resident memory, open file descriptors, store size per
call and makeCall p99.  With ``--heap DIR`` agi_app runs under tracemalloc
(``bench/heap_child.py``): its heap is dumped to DIR before the soak (the
warm-up's calls ended), at minute 2, every ``--heap-every`` minutes after,
and once every call has ended; the soak ends with the growth between the
two dumps with no call in flight (by line, by the innermost agi_app frame,
by traceback, and live objects by type), and the traced size beside the
resident memory at each dump.
``--py-spy DIR`` records a sampling profile of agi_app during each rate
and prints where its time went.

Everything runs on 127.0.0.1, is bounded (at most 100 calls/s, 60 s per
rate, 3,000 calls per rate, 30 minutes of soak) and stops by itself.  Needs
root and the sandbox prerequisites (see the README's "The sandbox PBX").

Usage::

    .venv/bin/python bench/call_load.py --rates 25,50 --seconds 10
    .venv/bin/python bench/call_load.py --rates 25,50 --ami-read all
    .venv/bin/python bench/call_load.py --mode ext2phone --rates 25
    .venv/bin/python bench/call_load.py --soak 180
    .venv/bin/python bench/call_load.py --soak 720 --soak-rate 25 --heap /tmp/heap
    .venv/bin/python bench/call_load.py --nodes 2 --rates 10,25

``--nodes 2`` runs two agi_app nodes on one throwaway PostgreSQL cluster
(:class:`agi_app.store.pg_testing.ThrowawayCluster`, its fast settings:
no fsync): the calls are placed through the two nodes in turn, and the
PBX's dialplan reaches FastAGI through ``hagi://`` with SRV records of both
nodes at the same priority (dnsmasq, :mod:`agi_app.sandbox.dns`), so
Asterisk spreads the sessions over both.  The CPU per call is printed per
node (each node's CPU over the window divided by all the calls).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agi_app.sandbox import dns  # noqa: E402
from agi_app.sandbox import provision as prov  # noqa: E402
from agi_app.sandbox.pbx import PBX, test_profile  # noqa: E402
from agi_app.sandbox.pbx_config import AMI_READ, OPERATORS  # noqa: E402
from agi_app.sandbox.phones import Phones, answer, kill_phones  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import floor_parts  # noqa: E402

CHAIN = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
FINAL = {
    "FINISH", "ERROR", "OPERATOR_BUSY", "OPERATOR_NOANSWER", "OPERATOR_OFFLINE",
    "CLIENT_BUSY", "CLIENT_NOANSWER", "CLIENT_CANCEL",
}  # fmt: skip
EVENT_TYPES = ("dial-in", "dial-out", "answer", "hangup")
#: webhooks and widget messages one completed operator-first call gives the
#: operator's extension: dial-out, answer, hangup; the widget's "finished"
#: (an agi_app call of the user's own phone shows no incoming popup)
COMPLETE_CALL_EVENTS = sorted(("dial-out", "answer", "hangup"))
WIDGET_PER_CALL = 1
MAX_RATE, MAX_SECONDS, MAX_CALLS, MAX_SOAK = 100.0, 60.0, 3000, 1800.0
SOAK_RATE, MAX_SOAK_RATE = 10.0, 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (children not included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of ``pid``: user and kernel (system calls,
    which on loopback TCP include delivering to the peer) seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the stack ----------------------------------------------------------------


@dataclass
class Stack:
    """The sandbox PBX, its phones and agi_app, started by :func:`start_stack`."""

    pbx: PBX
    phones: Phones
    agi: subprocess.Popen
    folder: Path
    store_path: Path
    http_port: int
    ws_port: int
    receiver_port: int
    log_path: Path
    #: calls placed through the API so far
    calls_placed: int = 0
    #: bench/ami_floor.py processes by mode (``--floor``)
    floors: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: the HTTP, FastAGI and store floors (``--floor``; bench/floor_parts.py)
    parts: Any = None
    #: ``--nodes 2``: the other nodes (process, HTTP port), the PostgreSQL
    #: cluster and the store's URL
    others: list[tuple[subprocess.Popen, int]] = field(default_factory=list)
    cluster: Any = None
    store_url: str = ""

    @property
    def nodes(self) -> list[tuple[subprocess.Popen, str]]:
        """Every node: (process, API base URL), the first one first."""
        return [(self.agi, self.base)] + [
            (proc, f"http://127.0.0.1:{port}") for proc, port in self.others
        ]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.parts is not None:
            self.parts.stop()
        for floor in self.floors.values():
            if floor.poll() is None:
                floor.send_signal(signal.SIGTERM)
                try:
                    floor.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    floor.kill()
        for agi in [self.agi] + [proc for proc, _ in self.others]:
            if agi.poll() is None:
                agi.send_signal(signal.SIGTERM)
                try:
                    agi.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    agi.kill()
                    agi.wait()
        if self.cluster is not None:
            self.cluster.stop()
        self.phones.stop_all()
        self.pbx.stop()


def start_stack(args: argparse.Namespace) -> Stack:
    reason = prov.missing_prerequisites()
    if reason:
        sys.exit(f"call_load: the sandbox cannot run here: {reason}")
    root = prov.provision()
    offset = str(args.offset)
    profile = test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": offset})
    pbx = PBX(root, profile, ami_read=AMI_READ[args.ami_read], log=lambda line: None)
    if args.nodes > 1:
        # both nodes' FastAGI ports at one priority: Asterisk spreads the sessions
        ports = [profile.agi_port + i for i in range(args.nodes)]
        pbx.srv = dns.zone_for(pbx.name, ports, [10])
    kill_phones(pbx)
    pbx.start(stop_at_exit=True)
    phones = Phones(pbx, log=lambda line: None)
    operator = replace(answer(after=args.answer_after), audio=args.audio)
    client = replace(answer(after=args.client_answer_after, hangup_after=args.talk),
                     audio=args.audio)  # fmt: skip
    for number in OPERATORS:
        phones.start(number, operator)
    phones.pstn.start(client)
    folder = Path(tempfile.mkdtemp(prefix="agi_app-load-"))
    # ports beside the e2e tests' of the same offset (27080 + offset/20 ...)
    http_port = 27080 + args.offset // 20 + 7
    ws_port, receiver_port = http_port + 1, http_port + 2
    settings = dict(pbx.agi_app_config())
    store_path = folder / "agi_app.sqlite3"
    settings.update({
        "AGI_APP_HTTP_LISTEN": f"tcp:{http_port}:interface=127.0.0.1",
        "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{ws_port}:interface=127.0.0.1",
        "AGI_APP_STORE_PATH": str(store_path),
    })  # fmt: skip
    cluster = None
    if args.nodes > 1:
        from agi_app.store.pg_testing import ThrowawayCluster

        cluster = ThrowawayCluster()
        cluster.start()
        settings["AGI_APP_STORE_URL"] = cluster.new_database("load")
        settings["AGI_APP_NODE_NAME"] = "node-1"
    config = folder / "agi_app.conf"
    config.write_text(_ini(settings))
    log_path = folder / "agi_app.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGI_APP_")}
    env["AGI_APP_LOG_LEVEL"] = args.log_level
    entry = ["-m", "agi_app"]
    if args.heap:
        entry = [str(ROOT / "bench" / "heap_child.py")]
        env["CALL_LOAD_HEAP"] = str(Path(args.heap).resolve())
        env["CALL_LOAD_HEAP_FRAMES"] = str(args.heap_frames)
    if args.breakdown:
        entry = [str(ROOT / "bench" / "cpu_breakdown.py")]
        env["CALL_LOAD_BREAKDOWN"] = str(folder / "breakdown.txt")
    agi = subprocess.Popen(
        [sys.executable, *entry, "serve", "--config", str(config)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115 - child keeps it
    )  # fmt: skip
    stack = Stack(pbx, phones, agi, folder, store_path, http_port, ws_port, receiver_port,
                  log_path, cluster=cluster,
                  store_url=settings.get("AGI_APP_STORE_URL", ""))  # fmt: skip
    for i in range(1, args.nodes):
        # ports beside the first node's (the next offset's block of ten)
        port = http_port + 3 + 2 * (i - 1)
        other = dict(settings, AGI_APP_NODE_NAME=f"node-{i + 1}")
        other.update({
            "AGI_APP_HTTP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
            "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{port + 1}:interface=127.0.0.1",
            "AGI_APP_AGI_LISTEN": f"tcp:{profile.agi_port + i}:interface=127.0.0.1",
        })  # fmt: skip
        path = folder / f"agi_app-{i + 1}.conf"
        path.write_text(_ini(other))
        proc = subprocess.Popen(
            [sys.executable, "-m", "agi_app", "serve", "--config", str(path)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=open(folder / f"agi_app-{i + 1}.log", "wb"),  # noqa: SIM115 - child keeps it
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.others.append((proc, port))
    if args.floor:
        for mode in ("receive", "parse"):
            stack.floors[mode] = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "ami_floor.py"), "--port",
                 str(pbx.ami_port), "--username", pbx.ami_username, "--secret",
                 pbx.ami_secret, "--mode", mode,
                 *(["--dump", args.ami_dump] if args.ami_dump and mode == "receive" else [])],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        stack.parts = floor_parts.start(folder, env)
    return stack


def _ini(settings: dict[str, str]) -> str:
    from agi_app.sandbox.pbx_config import settings_ini

    return settings_ini(settings)


# -- reading the store (from this process: costs agi_app nothing) -----------------


class StoreReader:
    """The store's file read from this process (or, with ``url``, its
    PostgreSQL database)."""

    def __init__(self, path: Path, url: str = ""):
        self.path = path
        self.url = url
        #: the parameter mark of the driver
        self.mark = "%s" if url else "?"
        self._conn: Any = None

    def conn(self) -> Any:
        if self._conn is None:
            if self.url:
                import psycopg

                self._conn = psycopg.connect(self.url, autocommit=True)
            else:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                             isolation_level=None)  # fmt: skip
        return self._conn

    def finals(self, call_ids: list[str]) -> int:
        done = 0
        for i in range(0, len(call_ids), 500):
            part = call_ids[i : i + 500]
            q = ",".join([self.mark] * len(part))
            done += self.conn().execute(
                f"SELECT count(*) FROM calls WHERE final_status IS NOT NULL AND call_id IN ({q})",
                part,
            ).fetchone()[0]
        return done

    def failures(self, call_ids: list[str]) -> Counter:
        """(status, detail) of the final status of each call given."""
        out: Counter = Counter()
        for i in range(0, len(call_ids), 500):
            part = call_ids[i : i + 500]
            q = ",".join([self.mark] * len(part))
            for status, detail in self.conn().execute(
                f"SELECT s.status, s.detail FROM call_status s JOIN calls c "
                f"ON c.call_id = s.call_id AND c.final_status = s.status "
                f"WHERE s.call_id IN ({q})", part,
            ):  # fmt: skip
                out[(status, detail)] += 1
        return out

    def chains(self, call_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in call_ids}
        for i in range(0, len(call_ids), 500):
            part = call_ids[i : i + 500]
            q = ",".join([self.mark] * len(part))
            for call_id, status in self.conn().execute(
                f"SELECT call_id, status FROM call_status WHERE call_id IN ({q}) ORDER BY id", part
            ):
                out[call_id].append(status)
        return out

    def calls(self) -> int:
        return self.conn().execute("SELECT count(*) FROM calls").fetchone()[0]

    def last_event_id(self) -> int:
        """The newest webhook event id agi_app has given (0: none yet).  Read
        from the id sequence: a delivered event's row is deleted."""
        if self.url:
            sql = "SELECT last_value FROM events_event_id_seq WHERE is_called"
        else:
            sql = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        row = self.conn().execute(sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def event_ids_after(self, event_id: int) -> set[int]:
        """The webhook events agi_app queued after ``event_id``: every id
        since (ids are never reused; each event here goes to one subscription,
        there being one per extension and event type)."""
        return set(range(event_id + 1, self.last_event_id() + 1))

    def size(self) -> int:
        if self.url:
            return self.conn().execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )


# -- the CRM side (Twisted) -------------------------------------------------------


@dataclass
class RateResult:
    rate: float
    requested: int = 0
    accepted: int = 0
    refused: Counter = field(default_factory=Counter)
    complete: int = 0
    finals: Counter = field(default_factory=Counter)
    open_calls: int = 0
    agi_cpu: float = 0.0
    pbx_cpu: float = 0.0
    window: float = 0.0
    latency: list[float] = field(default_factory=list)
    webhooks: int = 0
    widget: int = 0
    #: ext2phone: webhook events agi_app queued over the window, those of
    #: them never received, deliveries received more than once
    events_queued: int = 0
    events_missing: int = 0
    events_repeated: int = 0
    #: ext2phone: complete calls whose webhooks were exactly their dial-out,
    #: answer and hangup
    calls_all_events: int = 0
    #: ext2phone: widget messages expected (one per call with a final status)
    widget_expected: int = 0
    rss_before: float = 0.0
    rss_after: float = 0.0
    #: agi_app's CPU over the window spent in the kernel (stime)
    agi_sys: float = 0.0
    #: CPU of the floor processes (bench/ami_floor.py) over the same window
    floor_cpu: dict[str, float] = field(default_factory=dict)
    #: CPU of the HTTP, FastAGI and store floors (bench/floor_parts.py) over
    #: the same calls at the same rate, right after the window
    part_cpu: dict[str, float] = field(default_factory=dict)
    #: what the floors of the parts did not do right
    part_problems: list[str] = field(default_factory=list)
    profile: str = ""
    #: (final status, detail) of the calls that did not complete
    failures: Counter = field(default_factory=Counter)
    #: ``--nodes``: each node's CPU over the window, the first node first
    node_cpu: list[float] = field(default_factory=list)

    def per_call(self, cpu: float) -> float:
        return 1000.0 * cpu / self.accepted if self.accepted else float("nan")


class Crm:
    """The CRM: places calls through the API, receives webhooks, runs widgets."""

    def __init__(self, reactor: Any, stack: Stack, args: argparse.Namespace):
        import treq
        from twisted.web.client import HTTPConnectionPool

        self.reactor = reactor
        self.stack = stack
        self.args = args
        self.treq = treq
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.receiver: Any = None
        self.receiver_port: Any = None
        self.widgets: list[Any] = []
        self.seq = 0
        self.store = StoreReader(stack.store_path, stack.store_url)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.stack.nodes)
        while time.monotonic() < deadline:
            proc, base = waiting[0]
            if proc.poll() is not None:
                raise SystemExit(f"agi_app exited; see the logs in {self.stack.folder}")
            try:
                r = await self.treq.get(f"{base}/health", pool=self.pool)
                await r.content()
                if r.code == 200:
                    waiting.pop(0)
                    if not waiting:
                        return
                    continue
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            await self.sleep(0.2)
        raise SystemExit("agi_app did not become healthy in time")

    def sleep(self, seconds: float):
        from twisted.internet import task

        return task.deferLater(self.reactor, seconds, lambda: None)

    async def setup_events(self) -> None:
        """A webhook subscription to every event type and a widget for every operator."""
        from agi_app.events.testing import Receiver
        from agi_app.ws.testing import connect_widget

        self.receiver = Receiver()
        self.receiver_port = self.reactor.listenTCP(
            self.stack.receiver_port, self.receiver.site(), interface="127.0.0.1"
        )
        url = f"http://127.0.0.1:{self.stack.receiver_port}/hook"
        for ext in OPERATORS:
            for kind in EVENT_TYPES:
                body = json.dumps({"url": url, "method": "POST", "event_type": kind}).encode()
                r = await self.treq.post(
                    f"{self.stack.base}/extension/{ext}/event/", data=body, pool=self.pool,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                text = await r.content()
                if r.code != 201:
                    raise SystemExit(f"subscription refused: {r.code} {text!r}")
            widget = await connect_widget(self.reactor, self.stack.ws_port)
            await widget.hello(user_phone=ext)
            widget.count_only = True
            widget.count = 0
            self.widgets.append(widget)

    async def place(self, result: RateResult | None, latencies: list[float]) -> str | None:
        self.seq += 1
        n = self.seq
        ext = OPERATORS[n % len(OPERATORS)]
        phone = f"38063{n % 10_000_000:07d}"
        nodes = self.stack.nodes
        base = nodes[n % len(nodes)][1]  # the nodes in turn
        started = time.monotonic()
        try:
            if self.args.mode == "makecall":
                r = await self.treq.get(
                    f"{base}/api/makeCall.json", pool=self.pool,
                    params={"sip": ext, "phone": phone, "order_id": f"o{n}",
                            "external_key": f"k{n}-{os.getpid()}"},
                )  # fmt: skip
            else:
                body = {"ext_number": ext, "phone_number": phone, "order_id": f"o{n}",
                        "external_key": f"k{n}-{os.getpid()}"}  # fmt: skip
                r = await self.treq.post(
                    f"{base}/api/calls/extToPhone", data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"}, pool=self.pool,
                )  # fmt: skip
            text = await r.content()
        except Exception as e:  # noqa: BLE001 - counted as refused
            if result is not None:
                result.refused[type(e).__name__] += 1
            return None
        latencies.append(time.monotonic() - started)
        self.stack.calls_placed += 1
        if r.code != 200:
            if result is not None:
                result.refused[str(r.code)] += 1
            return None
        data = json.loads(text)
        return data.get("call_id") or data.get("generalCallID")

    async def fire(self, rate: float, seconds: float, result: RateResult | None,
                   latencies: list[float]) -> list[str]:  # fmt: skip
        """Place ``rate`` calls a second for ``seconds``; the ids of those accepted."""
        from twisted.internet import defer

        count = int(round(rate * seconds))
        start = time.monotonic()
        pending = []
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await self.sleep(delay)
            pending.append(defer.ensureDeferred(self.place(result, latencies)))
        ids = await defer.gatherResults(pending)
        if result is not None:
            result.requested = count
        return [c for c in ids if c]

    async def wait_finals(self, call_ids: list[str], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            done = self.store.finals(call_ids)
            if done >= len(call_ids):
                return done
            await self.sleep(0.25)
        return done

    async def wait_deliveries(self, since_event: int, hooks0: int, want_widget: int,
                              timeout: float) -> None:  # fmt: skip
        """Until every webhook event queued after ``since_event`` has arrived
        and the widgets have ``want_widget`` messages in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queued = self.store.event_ids_after(since_event)
            if queued <= set(self.event_ids(hooks0)) and self.widget_messages() >= want_widget:
                return
            await self.sleep(0.25)

    def webhooks(self) -> int:
        return len(self.receiver.requests) if self.receiver is not None else 0

    def event_ids(self, first: int = 0) -> list[int]:
        """The ``X-Event-ID`` of each webhook received, from the ``first``-th on."""
        if self.receiver is None:
            return []
        return [int(r.headers.get("x-event-id", "0")) for r in self.receiver.requests[first:]]

    def widget_messages(self) -> int:
        return sum(w.count for w in self.widgets)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the PBX has no channel left (the previous rate's calls are gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.stack.pbx.channels_deferred(self.reactor):
                return
            await self.sleep(0.5)


async def run_rate(crm: Crm, rate: float, args: argparse.Namespace) -> RateResult:
    stack = crm.stack
    pid, pbx_pid = stack.agi.pid, stack.pbx.pid
    assert pbx_pid is not None
    result = RateResult(rate)
    hooks0, widget0 = crm.webhooks(), crm.widget_messages()
    event0 = crm.store.last_event_id() if args.mode == "ext2phone" else 0
    spy = None
    if args.py_spy:
        out = Path(args.py_spy) / f"agi_app-{args.mode}-{args.ami_read}-{rate:g}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--rate", "100", "--gil", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        result.profile = str(out)
        await crm.sleep(1.0)
    result.rss_before = rss_mib(pid)
    floors0 = {mode: cpu_seconds(f.pid) for mode, f in stack.floors.items()}
    sys0 = cpu_split(pid)[1]
    nodes0 = [cpu_seconds(proc.pid) for proc, _ in stack.nodes]
    cpu0, pbx0, t0 = cpu_seconds(pid), cpu_seconds(pbx_pid), time.monotonic()
    ids = await crm.fire(rate, args.seconds, result, result.latency)
    result.accepted = len(ids)
    await crm.wait_finals(ids, timeout=args.talk + 90)
    if args.mode == "ext2phone":
        result.widget_expected = WIDGET_PER_CALL * crm.store.finals(ids)
        await crm.wait_deliveries(event0, hooks0, widget0 + result.widget_expected,
                                  timeout=30)  # fmt: skip
    result.agi_cpu = cpu_seconds(pid) - cpu0
    result.node_cpu = [
        cpu_seconds(proc.pid) - c0 for (proc, _), c0 in zip(stack.nodes, nodes0, strict=True)
    ]
    result.agi_sys = cpu_split(pid)[1] - sys0
    result.pbx_cpu = cpu_seconds(pbx_pid) - pbx0
    result.window = time.monotonic() - t0
    for mode, f in stack.floors.items():
        result.floor_cpu[mode] = cpu_seconds(f.pid) - floors0[mode]
    result.rss_after = rss_mib(pid)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await crm.sleep(0.1)
        for _ in range(100):
            if spy.poll() is not None:
                break
            await crm.sleep(0.1)
    chains = crm.store.chains(ids)
    for chain in chains.values():
        if chain == CHAIN:
            result.complete += 1
        final = next((s for s in chain if s in FINAL), None)
        if final is None:
            result.open_calls += 1
        elif chain != CHAIN:
            result.finals[final] += 1
    failed = [c for c, chain in crm.store.chains(ids).items() if chain != CHAIN]
    result.failures = crm.store.failures(failed)
    result.webhooks = crm.webhooks() - hooks0
    result.widget = crm.widget_messages() - widget0
    if args.mode == "ext2phone":
        queued = crm.store.event_ids_after(event0)
        received = Counter(crm.event_ids(hooks0))
        result.events_queued = len(queued)
        result.events_missing = len(queued - set(received))
        result.events_repeated = sum(n - 1 for n in received.values() if n > 1)
        # each complete call: exactly its dial-out, answer and hangup
        kinds: dict[str, list[str]] = {}
        for request in crm.receiver.requests[hooks0:]:
            fields = request.fields
            kinds.setdefault(fields.get("CallID", ""), []).append(fields.get("EventType", ""))
        result.calls_all_events = sum(
            1 for c, chain in chains.items()
            if chain == CHAIN and sorted(kinds.get(c, ())) == COMPLETE_CALL_EVENTS
        )  # fmt: skip
    if stack.parts is not None and result.accepted:
        # the other parts' floors: as many calls, at the same rate, right after
        result.part_cpu, result.part_problems = await floor_parts.run(
            crm.reactor, stack.parts, rate, result.accepted, crm.seq - result.requested + 1,
            cpu_seconds, lambda url, params: crm.treq.get(url, params=params, pool=crm.pool),
        )  # fmt: skip
    return result


def print_results(results: list[RateResult], args: argparse.Namespace) -> None:
    print()
    print(f"mode {args.mode}, AMI read classes: {args.ami_read} ({AMI_READ[args.ami_read]}), "
          f"{args.seconds:g} s per rate, clients talk {args.talk:g} s, "
          f"audio {'on' if args.audio else 'off'}")  # fmt: skip
    head = ("| calls/s | requested | accepted | complete | other finals | agi_app ms/call "
            "| Asterisk ms/call | ratio | makeCall p50/p99 ms | webhooks | widget "
            "| RSS before/after MiB |")
    print(head)
    print("|" + "---|" * 12)
    for r in results:
        others = ", ".join(f"{k} {v}" for k, v in sorted(r.finals.items())) or "-"
        if r.open_calls:
            others += f", open {r.open_calls}"
        if r.refused:
            others += ", refused " + ", ".join(f"{k} {v}" for k, v in r.refused.items())
        agi, pbx = r.per_call(r.agi_cpu), r.per_call(r.pbx_cpu)
        if args.mode == "ext2phone":
            hooks = f"{r.webhooks}/{r.events_queued}"
            if r.events_missing or r.events_repeated:
                hooks += f" (missing {r.events_missing}, repeated {r.events_repeated})"
            hooks += f"; {r.calls_all_events}/{r.complete} complete calls with all"
            widget = f"{r.widget}/{r.widget_expected}"
        else:
            hooks = widget = "-"
        print(
            f"| {r.rate:g} | {r.requested} | {r.accepted} | {r.complete} | {others} "
            f"| {agi:.2f} | {pbx:.2f} | {agi / pbx if pbx else float('nan'):.3f} "
            f"| {1000 * pct(r.latency, 0.5):.1f} / {1000 * pct(r.latency, 0.99):.1f} "
            f"| {hooks} | {widget} | {r.rss_before:.1f} / {r.rss_after:.1f} |"
        )
    if any(r.floor_cpu for r in results):
        print()
        print("floor, same window (bench/ami_floor.py: a session of its own with agi_app's "
              "login and event classes):")  # fmt: skip
        print("| calls/s | AMI receive only ms/call | AMI receive + agi_app's parser ms/call "
              "| agi_app ms/call | 0.10 of Asterisk ms/call |")  # fmt: skip
        print("|---|---|---|---|---|")
        for r in results:
            receive = r.per_call(r.floor_cpu.get("receive", 0.0))
            parse = r.per_call(r.floor_cpu.get("parse", 0.0))
            print(f"| {r.rate:g} | {receive:.2f} | {parse:.2f} | {r.per_call(r.agi_cpu):.2f} "
                  f"| {0.1 * r.per_call(r.pbx_cpu):.2f} |")  # fmt: skip
    if any(r.part_cpu for r in results):
        print_floors(results)
    for r in results:
        if len(r.node_cpu) > 1:
            per_node = ", ".join(
                f"node {i + 1} {r.per_call(c):.2f}" for i, c in enumerate(r.node_cpu)
            )
            print(f"at {r.rate:g} calls/s: agi_app ms/call per node (its CPU / all calls): "
                  f"{per_node}; together {r.per_call(sum(r.node_cpu)):.2f}")  # fmt: skip
    for r in results:
        print(f"at {r.rate:g} calls/s: agi_app {r.per_call(r.agi_cpu - r.agi_sys):.2f} ms/call "
              f"in Python and libraries (user), {r.per_call(r.agi_sys):.2f} in the kernel (system)")
    for r in results:
        for (status, detail), n in r.failures.most_common(5):
            print(f"at {r.rate:g} calls/s: {n} x {status} ({detail})")
    for r in results:
        if r.profile:
            print()
            print(f"py-spy profile of agi_app at {r.rate:g} calls/s ({r.profile}):")
            print(summarise_profile(r.profile))


def floor_row(r: RateResult) -> list[float]:
    """Asterisk, the budget, each floor, their sum, agi_app (ms per call) and
    the sum over the budget: one row of :func:`print_floors`.  The sum takes
    the AMI floor with agi_app's parser (it includes receiving)."""
    pbx = r.per_call(r.pbx_cpu)
    budget = 0.1 * pbx
    ami = [r.per_call(r.floor_cpu.get(mode, 0.0)) for mode in ("receive", "parse")]
    parts = [r.per_call(r.part_cpu.get(name, 0.0)) for name in floor_parts.PARTS]
    total = ami[1] + sum(parts)
    return [pbx, budget, *ami, *parts, total, r.per_call(r.agi_cpu),
            total / budget if budget else float("nan")]  # fmt: skip


def print_floors(results: list[RateResult]) -> None:
    """Each part's floor per call against the budget of the 0.10 target."""
    print()
    print("floors per call (each a bare process doing just that part's work: AMI in the "
          "window; HTTP, FastAGI, store over the same calls at the same rate right after):")
    print("| calls/s | Asterisk ms/call | budget (0.10 x Asterisk) | AMI receive | AMI receive "
          "+ parse | HTTP | FastAGI | store | sum of floors | agi_app ms/call "
          "| sum / budget |")  # fmt: skip
    print("|---|" + "---:|" * 10)
    for r in results:
        *ms, ratio = floor_row(r)
        print(f"| {r.rate:g} | " + " | ".join(f"{v:.2f}" for v in ms) + f" | {ratio:.2f} |")
    for r in results:
        print(f"at {r.rate:g} calls/s: store floor with {floor_parts.batches_for(r.rate):g} "
              f"transactions per call; its writer thread (the column) "
              f"{r.per_call(r.part_cpu.get('store', 0.0)):.2f} ms/call, the whole process "
              f"with the thread feeding it {r.per_call(r.part_cpu.get('store process', 0.0)):.2f}")
        if "http+fastagi shared" in r.part_cpu:
            apart = r.part_cpu.get("http", 0.0) + r.part_cpu.get("fastagi", 0.0)
            print(f"at {r.rate:g} calls/s: HTTP + FastAGI floors in one process "
                  f"(bench/shared_floor.py, after) "
                  f"{r.per_call(r.part_cpu['http+fastagi shared']):.2f} ms/call, "
                  f"in two {r.per_call(apart):.2f}")  # fmt: skip
        for problem in r.part_problems:
            print(f"at {r.rate:g} calls/s: {problem}")


# -- profiles -------------------------------------------------------------------

#: where a sample's time goes: the first (innermost-first) match names it
BUCKETS = (
    ("AMI receive path", ("agi_app/ami/",)),
    ("call tracker", ("agi_app/live/tracker",)),
    ("call lifecycle", ("agi_app/calls/",)),
    ("store (writer thread and reads)", ("agi_app/store/", "sqlite_utils", "sqlite3")),
    ("webhooks and widget", ("agi_app/events/", "agi_app/ws/", "autobahn", "treq")),
    ("HTTP API", ("agi_app/web/", "twisted/web/")),
    ("FastAGI", ("agi_app/agi/",)),
    ("logging", ("twisted/logger", "agi_app/logs")),
    ("Deferreds", ("twisted/internet/defer",)),
    ("reactor and sockets", ("twisted/internet/", "twisted/protocols/")),
    ("threads", ("threading", "twisted/python/threadpool", "twisted/_threads", "queue.py")),
)


def summarise_profile(path: str, top: int = 12) -> str:
    """Shares of the samples (``--gil``: of the time a thread held the GIL,
    i.e. ran Python): by part of agi_app (the outermost agi_app frame
    decides: the AMI receive path includes the tracker and lifecycle
    callbacks it runs), by module of agi_app's own code (the innermost
    agi_app frame), and the functions with the most samples of their own."""
    parts: Counter = Counter()
    modules: Counter = Counter()
    own: Counter = Counter()
    total = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        return f"  (no profile: {e})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        ours = [f for f in frames if "agi_app/" in f and "bench/" not in f]
        name = "other"
        probe = ours[:1] or frames
        for label, needles in BUCKETS:
            if any(any(needle in f for needle in needles) for f in probe):
                name = label
                break
        parts[name] += n
        if ours:
            inner = ours[-1]
            modules[inner[inner.index("agi_app/") : inner.index(".py") + 3]] += n
        else:
            modules["(no agi_app frame: reactor, threads, libraries)"] += n
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples with the GIL held (100 per second)", "  by part (outermost frame):"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in parts.most_common()]
    out.append("  by module of agi_app (innermost agi_app frame):")
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in modules.most_common(top)]
    out.append("  functions with the most samples of their own:")
    out += [f"  {100 * n / total:5.1f} %  {name[:110]}" for name, n in own.most_common(top)]
    return "\n".join(out)


# -- AMI events per call -----------------------------------------------------------


async def count_events(crm: Crm, mask: str, calls: int = 5) -> None:
    """What one call costs on the AMI link: a session of its own, logged in
    as agi_app's user with ``Events: mask``, counts the events (by name) and
    bytes Asterisk writes while ``calls`` calls are placed one a second."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    pbx = crm.stack.pbx
    counts: Counter = Counter()
    sizes: Counter = Counter()

    class Counting(Protocol):
        buffer = b""

        def connectionMade(self) -> None:
            self.transport.write(
                f"Action: Login\r\nUsername: {pbx.ami_username}\r\nSecret: {pbx.ami_secret}"
                f"\r\nEvents: {mask}\r\n\r\n".encode()
            )

        def dataReceived(self, data: bytes) -> None:
            *blocks, self.buffer = (self.buffer + data).split(b"\r\n\r\n")
            for block in blocks:
                if block.startswith(b"Event: "):
                    name = block[7:].split(b"\r\n", 1)[0].decode()
                    counts[name] += 1
                    sizes[name] += len(block) + 4

    proto = await connectProtocol(
        TCP4ClientEndpoint(crm.reactor, "127.0.0.1", pbx.ami_port), Counting()
    )
    await crm.sleep(1.0)
    counts.clear()
    sizes.clear()
    ids = await crm.fire(1.0, calls, None, [])
    await crm.wait_finals(ids, crm.args.talk + 30)
    await crm.wait_idle()
    await crm.sleep(1.0)
    proto.transport.loseConnection()
    n = max(len(ids), 1)
    total, size = sum(counts.values()), sum(sizes.values())
    print(f"\nAMI events per call with Events: {mask} (read = {AMI_READ[crm.args.ami_read]}): "
          f"{total / n:.1f} events, {size / n / 1024:.1f} KiB ({len(ids)} calls)")  # fmt: skip
    print("| event | per call | bytes per call |")
    print("|---|---:|---:|")
    for name, c in counts.most_common():
        print(f"| {name} | {c / n:.1f} | {sizes[name] / n:.0f} |")


# -- soak -----------------------------------------------------------------------


async def soak(crm: Crm, seconds: float) -> None:
    from twisted.internet import defer

    pid = crm.stack.agi.pid
    rate = crm.args.soak_rate
    heap = Heap(crm, Path(crm.args.heap)) if crm.args.heap else None
    print(f"\nsoak: {rate:g} calls/s for {seconds:g} s; per minute:")
    print("| minute | calls so far | complete so far | RSS MiB | open fds | store bytes/call "
          "| makeCall p99 ms |")
    print("|---|---|---|---|---|---|---|")
    if heap is not None:
        await heap.dump(0, 0, label="start, idle")
    print(f"| 0 | 0 | 0 | {rss_mib(pid):.1f} | {open_fds(pid)} | - | - |", flush=True)
    all_ids: list[str] = []
    minute = 0
    left = seconds
    while left > 0:
        span = min(60.0, left)
        latencies: list[float] = []
        chunk = []
        # fire in 10 s pieces so a minute's calls overlap as in steady traffic
        piece = 10.0
        fired = 0.0
        while fired < span:
            step = min(piece, span - fired)
            chunk.append(defer.ensureDeferred(crm.fire(rate, step, None, latencies)))
            await defer.gatherResults(chunk[-1:])
            fired += step
        for d in chunk:
            all_ids.extend(await d)
        minute += 1
        left -= span
        finals_wait = 0 if left > 0 else crm.args.talk + 60
        # the heap in traffic: at minute 2, every --heap-every minutes, and
        # at the last minute (each at the same point of a minute)
        if heap is not None and (
            minute == 2 or left <= 0
            or (minute > 2 and (minute - 2) % crm.args.heap_every < 1e-9)
        ):  # fmt: skip
            await heap.dump(minute, len(all_ids))
        if finals_wait:
            await crm.wait_finals(all_ids, finals_wait)
        chains = crm.store.chains(all_ids)
        complete = sum(1 for c in chains.values() if c == CHAIN)
        calls = crm.store.calls()
        print(
            f"| {minute} | {len(all_ids)} | {complete} | {rss_mib(pid):.1f} | {open_fds(pid)} "
            f"| {crm.store.size() / max(calls, 1):.0f} | {1000 * pct(latencies, 0.99):.1f} |",
            flush=True,
        )
    finals = Counter(
        next((s for s in c if s in FINAL), "open") for c in crm.store.chains(all_ids).values()
    )
    print(f"soak: {len(all_ids)} calls accepted; final statuses: {dict(finals)}")
    if heap is not None:
        await crm.wait_idle()
        await crm.sleep(10.0)  # the grace timers of the last calls
        # the last dump also hands glibc's free pages back (malloc_trim): the
        # resident memory after it tells how much of it was free memory
        (heap.folder / "trim").touch()
        await heap.dump(minute, len(all_ids), label="end, idle")
        heap.report()


class Heap:
    """agi_app's heap dumps (``bench/heap_child.py``) during a soak, and
    what grew between them."""

    def __init__(self, crm: Crm, folder: Path):
        self.crm = crm
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trim").unlink(missing_ok=True)  # a previous run's
        #: (label, minute, calls so far, the dump's summary)
        self.dumps: list[tuple[str, int, int, dict]] = []

    async def dump(self, minute: int, calls: int, label: str = "") -> None:
        """Ask agi_app for a dump (SIGUSR2) and wait until it is written."""
        n = len(self.dumps) + 1
        path = self.folder / f"heap-{n}.json"
        self.crm.stack.agi.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 300
        while not path.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"agi_app wrote no heap dump {path}")
            await self.crm.sleep(0.2)
        self.dumps.append((label or f"minute {minute}", minute, calls,
                           json.loads(path.read_text())))  # fmt: skip

    def report(self, top: int = 25) -> None:
        import tracemalloc

        mib = 2**20
        print("\nresident memory by allocator at each dump (MiB; malloc: glibc's arenas, "
              "in use + free inside them, and its own mappings; pymalloc: CPython's "
              "small-object arenas and what is in use in them, not shown under "
              "tracemalloc; SQLite: its page caches, statements, schema):")
        print("| dump | calls so far | RSS | malloc in use | malloc free | malloc mmapped "
              "| pymalloc arenas | pymalloc in use | SQLite | full gc: unreachable |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, _minute, calls, d in self.dumps:
            pym = (f"{d.get('pymalloc_arenas', 0) / mib:.1f} | "
                   f"{d.get('pymalloc_in_use', 0) / mib:.1f}"
                   if d.get("pymalloc_arenas") else "- | -")  # fmt: skip
            print(f"| {label} | {calls} | {d['rss_kib'] / 1024:.1f} "
                  f"| {d.get('malloc_in_use', 0) / mib:.1f} | {d.get('malloc_free', 0) / mib:.1f} "
                  f"| {d.get('malloc_mmapped', 0) / mib:.1f} | {pym} "
                  f"| {d.get('sqlite_used', 0) / mib:.2f} | {d.get('gc_unreachable', '-')} |")
        for label, _minute, _calls, d in self.dumps:
            if "rss_kib_after_trim" in d:
                print(f"\n{label}: RSS {d['rss_kib'] / 1024:.1f} MiB, after malloc_trim(0) "
                      f"{d['rss_kib_after_trim'] / 1024:.1f} MiB")
        if any(d.get("arenas") for *_, d in self.dumps):
            print("\nglibc's arenas at each dump: size MiB (free in its bins), the main "
                  "arena first, then those of the threads that allocated:")
            for label, _minute, _calls, d in self.dumps:
                arenas = ", ".join(f"{a['size'] / mib:.1f} ({a['free'] / mib:.1f})"
                                   for a in d.get("arenas", []))  # fmt: skip
                print(f"- {label}: {arenas}")
        if not any(d["traced"] for *_, d in self.dumps):
            return
        print("\nheap dumps (tracemalloc's traced size against resident memory; "
              "tracemalloc's own tables are in the RSS, not in the traced size):")
        print("| dump | calls so far | RSS MiB | traced MiB | tracemalloc tables MiB "
              "| RSS - traced - tables MiB | gc objects | full gc: unreachable "
              "| traced after it MiB | dump s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, _minute, calls, d in self.dumps:
            rss, traced, tables = d["rss_kib"] / 1024, d["traced"] / 2**20, (
                d["tracemalloc_overhead"] / 2**20)  # fmt: skip
            print(f"| {label} | {calls} | {rss:.1f} | {traced:.2f} | {tables:.1f} "
                  f"| {rss - traced - tables:.1f} | {d['gc_objects']} "
                  f"| {d.get('gc_unreachable', '-')} "
                  f"| {d.get('traced_after_gc', 0) / 2**20:.2f} | {d['dump_seconds']} |")
        if len(self.dumps) < 2:
            return
        # the two dumps with no call in flight: what the calls left behind
        (first, _, calls0, d0), (last, _, calls1, d1) = self.dumps[0], self.dumps[-1]
        calls = max(calls1 - calls0, 1)
        s0 = tracemalloc.Snapshot.load(str(self.folder / "heap-1.pickle"))
        s1 = tracemalloc.Snapshot.load(str(self.folder / f"heap-{len(self.dumps)}.pickle"))
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
                  tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]  # fmt: skip
        s0, s1 = s0.filter_traces(ignore), s1.filter_traces(ignore)
        print(f"\nheap growth {first} -> {last} ({calls} calls), by line:")
        print("| growth KiB | bytes per call | blocks growth | where |")
        print("|---:|---:|---:|---|")
        for st in s1.compare_to(s0, "lineno")[:top]:
            frame = st.traceback[0]
            print(f"| {st.size_diff / 1024:.1f} | {st.size_diff / calls:.1f} | {st.count_diff} "
                  f"| {_short(frame.filename)}:{frame.lineno} |")
        print(f"\nheap growth {first} -> {last}, by the innermost agi_app frame of each "
              "allocation (who asked for it):")
        print("| growth KiB | bytes per call | blocks growth | agi_app frame |")
        print("|---:|---:|---:|---|")
        before, after = _by_caller(s0), _by_caller(s1)
        rows = sorted(((after[k][0] - before[k][0], after[k][1] - before[k][1], k)
                       for k in set(before) | set(after)), reverse=True)  # fmt: skip
        for size, count, where in rows[:15]:
            print(f"| {size / 1024:.1f} | {size / calls:.1f} | {count} | {where} |")
        print(f"\nheap growth {first} -> {last}, the 8 largest by traceback "
              "(innermost frame first):")
        for st in s1.compare_to(s0, "traceback")[:8]:
            print(f"- {st.size_diff / 1024:.1f} KiB, {st.count_diff} blocks:")
            for frame in list(reversed(st.traceback))[:10]:
                print(f"    {_short(frame.filename)}:{frame.lineno}")
        t0, t1 = d0["types"], d1["types"]
        growth = sorted(((t1.get(k, 0) - t0.get(k, 0), k) for k in set(t0) | set(t1)),
                        reverse=True)  # fmt: skip
        print(f"\nlive objects by type (gc; objects frozen at start-up and containers "
              f"of atoms only are not counted), growth {first} -> {last}:")
        print(f"| type | {first} | {last} | growth |")
        print("|---|---:|---:|---:|")
        for diff, k in growth[:15]:
            print(f"| {k} | {t0.get(k, 0)} | {t1.get(k, 0)} | {diff:+d} |")
        sys.stdout.flush()


def _by_caller(snapshot: Any) -> dict[str, list[int]]:
    """Size and count of a snapshot's blocks by the innermost agi_app frame
    of their traceback (or the innermost frame, when none is agi_app's)."""
    from collections import defaultdict

    found: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for trace in snapshot.traces:
        frames = list(reversed(trace.traceback))
        frame = next((f for f in frames if "/agi_app/" in f.filename), frames[0])
        where = found[f"{_short(frame.filename)}:{frame.lineno}"]
        where[0] += trace.size
        where[1] += 1
    return found


def _short(filename: str) -> str:
    """A file name from the package or library root on."""
    for mark in ("/agi_app/", "/site-packages/", "/lib/python3"):
        if mark in filename:
            return filename[filename.index(mark) + 1:]
    return filename


# -- main -------------------------------------------------------------------------


async def main_async(reactor: Any, args: argparse.Namespace, stack: Stack) -> None:
    crm = Crm(reactor, stack, args)
    await crm.wait_ready()
    if args.mode == "ext2phone":
        await crm.setup_events()
    if args.warmup:
        ids = await crm.fire(min(args.warmup, 5.0), args.warmup / min(args.warmup, 5.0), None, [])
        await crm.wait_finals(ids, args.talk + 30)
        await crm.sleep(2.0)  # the warm-up's webhooks and widget messages
        await crm.wait_idle()
    if args.count_events:
        await count_events(crm, args.count_events)
    elif args.soak:
        await soak(crm, args.soak)
    else:
        results = []
        for rate in args.rates:
            await crm.wait_idle()
            result = await run_rate(crm, rate, args)
            results.append(result)
            print(f"rate {rate:g}: {result.complete}/{result.accepted} complete, agi_app "
                  f"{result.per_call(result.agi_cpu):.2f} ms/call, Asterisk "
                  f"{result.per_call(result.pbx_cpu):.2f} ms/call", flush=True)  # fmt: skip
        print_results(results, args)
    if len(stack.nodes) > 1:
        await print_fastagi_spread(crm)
    for w in crm.widgets:
        w.dropConnection()
    if crm.receiver_port is not None:
        await crm.receiver_port.stopListening()
    await crm.pool.closeCachedConnections()


async def print_fastagi_spread(crm: Crm) -> None:
    """How many FastAGI sessions each node carried (its ``/metrics``)."""
    counts = []
    for _, base in crm.stack.nodes:
        r = await crm.treq.get(f"{base}/metrics", pool=crm.pool)
        text = (await r.content()).decode(errors="replace")
        found = [line.split()[-1] for line in text.splitlines()
                 if line.startswith("agi_app_fastagi_sessions_total ")]  # fmt: skip
        counts.append(str(int(float(found[0]))) if found else f"? (HTTP {r.code})")
    print("FastAGI sessions per node (hagi://, one SRV priority): " + ", ".join(counts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="25,50", help="calls per second, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of calls per rate")
    p.add_argument("--mode", choices=("makecall", "ext2phone"), default="makecall")
    p.add_argument("--ami-read", choices=tuple(AMI_READ), default="readme")
    p.add_argument("--talk", type=float, default=2.0, help="seconds a client talks")
    p.add_argument("--answer-after", type=float, default=0.2, help="operators answer after")
    p.add_argument("--client-answer-after", type=float, default=0.5)
    p.add_argument("--audio", action="store_true", help="phones send recorded speech")
    p.add_argument("--warmup", type=float, default=10, help="calls placed before measuring")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of soak")
    p.add_argument("--soak-rate", type=float, default=SOAK_RATE, help="soak calls per second")
    p.add_argument("--heap", default="", metavar="DIR",
                   help="with --soak: run agi_app under tracemalloc, dump its heap to DIR")
    p.add_argument("--heap-every", type=float, default=2.0, metavar="MINUTES",
                   help="with --heap: minutes between heap dumps (the first at minute 2)")
    p.add_argument("--heap-frames", type=int, default=15, metavar="N",
                   help="with --heap: frames per traced allocation (0: no tracemalloc, "
                   "only the allocators' figures at each dump)")
    p.add_argument("--count-events", default="", metavar="MASK",
                   help="only count the AMI events of a few calls, for a session logged in "
                   "with Events: MASK (on, or classes such as call,system)")
    p.add_argument("--py-spy", default="", help="folder for py-spy profiles of each rate")
    p.add_argument("--floor", action="store_true",
                   help="also run bench/ami_floor.py (AMI receive only; receive + parse) "
                        "in the window, then the HTTP, FastAGI and store floors "
                        "(bench/floor_parts.py) over the same calls, and print each one's "
                        "CPU per call against a tenth of Asterisk's")  # fmt: skip
    p.add_argument("--ami-dump", default="", metavar="FILE",
                   help="with --floor: record the AMI bytes of the run to FILE")
    p.add_argument("--log-level", default="info", help="agi_app's log level")
    p.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                   help="agi_app nodes (2: on a throwaway PostgreSQL, FastAGI through hagi://)")
    p.add_argument("--offset", type=int,
                   default=int(os.environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "2000") or 0),
                   help="sandbox port offset (AGI_APP_SANDBOX_PORT_OFFSET)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the store and log folder")
    p.add_argument("--breakdown", action="store_true",
                   help="run agi_app through bench/cpu_breakdown.py and print its CPU by "
                   "entry point")  # fmt: skip
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    for rate in args.rates:
        if not 0 < rate <= MAX_RATE or rate * args.seconds > MAX_CALLS:
            p.error(f"at most {MAX_RATE:g} calls/s and {MAX_CALLS} calls per rate")
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if not 0 <= args.soak <= MAX_SOAK:
        p.error(f"--soak is at most {MAX_SOAK:g} s")
    if not 0 < args.soak_rate <= MAX_SOAK_RATE:
        p.error(f"--soak-rate must be in (0, {MAX_SOAK_RATE:g}]")
    if args.heap and not args.soak:
        p.error("--heap needs --soak")
    if not 0 <= args.heap_frames <= 100:
        p.error("--heap-frames must be 0-100")
    if not 1 <= args.heap_every <= 30:
        p.error("--heap-every must be 1-30 minutes")
    if not 0 <= args.talk <= 30:
        p.error("--talk must be 0-30 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = start_stack(args)
    print(f"call_load: sandbox {stack.pbx.name} (AMI {stack.pbx.ami_port}, read = "
          f"{AMI_READ[args.ami_read]}), agi_app pid {stack.agi.pid} on HTTP "
          f"{stack.http_port}; store and log in {stack.folder}", flush=True)  # fmt: skip
    failed = False
    try:
        from twisted.internet import defer, task

        def run(reactor: Any) -> Any:
            return defer.ensureDeferred(main_async(reactor, args, stack))

        try:
            task.react(run)
        except SystemExit as e:
            failed = bool(e.code)
    finally:
        stack.stop()
        breakdown = stack.folder / "breakdown.txt"
        if args.breakdown and breakdown.exists():
            accepted = stack.calls_placed or 1
            print(f"\nCPU of agi_app by entry point, whole run ({stack.calls_placed} calls placed, "
                  f"warm-up included; per call = total / calls):")  # fmt: skip
            for line in breakdown.read_text().splitlines():
                parts = line.split()
                if parts[0] != "process":
                    line += f"  ({1000 * float(parts[0]) / accepted:.2f} ms per call)"
                else:
                    line += f"  ({1000 * float(parts[2]) / accepted:.2f} ms per call)"
                print(line)
        if not args.keep and not failed:
            for p in sorted(stack.folder.iterdir()):
                p.unlink()
            stack.folder.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
