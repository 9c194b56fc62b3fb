"""CRM history API under load: a store of a million calls, real HTTP, concurrency 10.

The store: 1,000,000 calls, 6,000,000 status entries and 1,000,000
recordings, generated once into a SQLite file created by opening
:class:`agi_app.store.SQLiteStore` (so the schema, indexes, triggers and
pragmas are the application's own), then filled with plain bulk INSERTs in
one transaction.  Every call goes CALL .. FINISH (6 entries) and is
recorded; the entries of the ~100 calls in progress at any moment
interleave; an order has 3 calls a third of the history apart.  The file is
cached under ``/var/tmp/agi_app-bench`` keyed by the schema version, so
reruns skip the ~2 minutes of generation.

The server: a separate process running the application's real HTTP stack on
a TCP port on 127.0.0.1 -- ``build_site`` with an API key, the history
endpoints, the SQLite store (reads inline within ``--read-budget-us``, the
rest on its worker thread), the epoll reactor, the access log written as in
production -- pinned to CPU 1 (``--no-pin``: any).

The load: this process, on CPU 0, keeps 10 keep-alive HTTP/1.1 connections
busy (one request in flight on each, from a plain epoll loop) with

* ``orderHistory`` of a random order (3 calls, 18 entries),
* ``callHistory`` polling: ``after_id`` anywhere in the history, ``limit=100``,
* ``callHistory`` of one random call (6 entries),
* ``recordList`` page 1 and page 5,000 (20 per page: 99,980 rows deep),
* and, as a reference, ``sipList`` on an empty operator table: what the
  HTTP stack and the store's thread hop cost by themselves;

in ``--rounds`` rounds taken in turn (the round with the lowest p99 is kept:
other work on the machine only ever makes a round slower).  It prints p50/p99
latency and the server's CPU time per request and, from the same run, the
time of the bare SQL that produces the same answer -- the statements the
store runs, on one connection, one request at a time: the floor -- and that
floor queued as the requests are (``queued``: each of the 10 requests in
flight waits for the queries ahead of it).  The first 20 answers of each
endpoint are checked against that SQL.  Last, the same load on a fixed
answer: from a plain epoll loop (what the machine's sockets and scheduling
add) and from a bare twisted.web ``Site`` (what the HTTP stack alone takes).

With ``--store URL`` the same rows go into a PostgreSQL database too (by
COPY, into the schema the application's own ``PostgresStore`` creates; kept
for the next run, marked by a table ``agi_app_bench``), and the same load
runs against a server on it after SQLite's: both tables are printed, then
one line per endpoint with the two engines' figures side by side.
``--store throwaway`` makes a PostgreSQL cluster for the run
(:class:`agi_app.store.pg_testing.ThrowawayCluster`) and fills it anew.

Usage::

    .venv/bin/python bench/history_api.py              # full run, ~2 min once generated
    .venv/bin/python bench/history_api.py --store postgresql://u:p@127.0.0.1:5432/bench
    .venv/bin/python bench/history_api.py --quick      # one round of 1,000 requests
    .venv/bin/python bench/history_api.py --calls 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import random
import select
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE_DIR = Path(os.environ.get("AGI_APP_BENCH_CACHE", "/var/tmp/agi_app-bench"))
API_KEY = "bench-key"
CONCURRENCY = 10
STATUSES_PER_CALL = 6
CALLS_PER_ORDER = 3
PER_PAGE = 20
DEEP_PAGE = 5000
#: the targets of the issue: p99 under this many ms, and within this factor of the floor
TARGET_P99_MS = 10.0
TARGET_FACTOR = 3.0
#: 2026-01-01T00:00:00Z; a call starts every 3 s after it, so a million calls
#: span about 35 days
EPOCH_MS = 1_767_225_600_000
CALL_EVERY_MS = 3_000
#: offsets (ms) of a call's statuses from its start: operator rings, picks up,
#: the client is dialled, picks up, they talk, the call ends
STEPS = (
    ("CALL", 0),
    ("OPERATOR_CALLTO", 40),
    ("OPERATOR_PICKUP", 4_200),
    ("CLIENT_CALLTO", 7_300),
    ("CLIENT_PICKUP", 12_900),
    ("FINISH", 0),  # + the talk time
)


def _pin(cpu: int) -> None:
    """Run this process on CPU ``cpu`` only (a negative ``cpu``: anywhere)."""
    if hasattr(os, "sched_setaffinity") and 0 <= cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def _say(line: str) -> None:
    print(line, flush=True)


# -- the store ---------------------------------------------------------------


def schema_version() -> int:
    """The schema version of this checkout (the cache key of generated stores)."""
    from agi_app.store.sqlite import MIGRATIONS

    return len(MIGRATIONS)


def store_path(calls: int) -> Path:
    return CACHE_DIR / f"history-v{schema_version()}-{calls}.sqlite3"


def create_schema(location: str) -> None:
    """Create the store (an SQLite file, or the tables in a PostgreSQL
    database) by opening and closing the application's own store once, in a
    process of its own (a reactor runs only once per process)."""
    code = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from agi_app.store import store_at\n"
        "store = store_at(sys.argv[1], reactor)\n"
        "store.open()\n"
        "reactor.callWhenRunning(lambda: store.close().addBoth(lambda _: reactor.stop()))\n"
        "reactor.run()\n"
    )
    subprocess.run([sys.executable, "-c", code, location], check=True, cwd=ROOT)


def call_id(n: int) -> str:
    """The n-th call's id, shaped like the application's (hex ms + 12 hex)."""
    return f"{EPOCH_MS + n * CALL_EVERY_MS:x}{(n * 2654435761) % 16**12:012x}"


def order_id(n: int, calls: int) -> str:
    """Calls of one order are a third of the history apart (a CRM retrying
    days later), so an order's entries are never neighbours on disk."""
    orders = calls // CALLS_PER_ORDER
    return f"order-{n % orders}"


def _iso(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _events(calls: int) -> Iterator[tuple[int, int, int, int]]:
    """``(time_ms, call, step, talk_ms)`` of every status of every call, in
    time order: the entries of the ~100 calls in progress at any moment
    interleave as they would in a live store."""
    rng = random.Random(7)
    pending: list[tuple[int, int, int, int]] = []
    for n in range(calls):
        start = EPOCH_MS + n * CALL_EVERY_MS + rng.randrange(0, 2_000)
        while pending and pending[0][0] < start:
            yield heapq.heappop(pending)
        talk = rng.randrange(5_000, 300_000)
        pickup = start + STEPS[4][1]
        for step, (_, offset) in enumerate(STEPS):
            at = pickup + talk if step == len(STEPS) - 1 else start + offset
            heapq.heappush(pending, (at, n, step, talk))
    while pending:
        yield heapq.heappop(pending)


def _rows(calls: int, batch: int = 100_000) -> Iterator[tuple[list, list, list]]:
    """The rows of the whole store, ``(calls, status entries, recordings)``
    in batches of about ``batch`` entries: every engine's store is filled
    with exactly these.  Entries and recordings carry their ids (the order
    they were added); calls are listed in the order they were created."""
    call_rows: list[tuple] = []
    status_rows: list[tuple] = []
    record_rows: list[tuple] = []
    entry_id = record_id = 0
    total = calls * STATUSES_PER_CALL
    every = max(total // 20, 1)
    started = time.monotonic()
    for at, n, step, talk in _events(calls):
        cid = call_id(n)
        oid = order_id(n, calls)
        when = _iso(at)
        entry_id += 1
        status_rows.append((entry_id, cid, oid, STEPS[step][0], when))
        sip = str(1000 + n % 200)
        phone = f"38063{n % 10_000_000:07d}"
        if step == 0:
            pickup = at + STEPS[4][1]
            params = json.dumps(
                {"order_id": oid, "phone": phone, "sip": sip}, separators=(",", ":")
            )
            call_rows.append(
                (cid, sip, phone, oid, f"key-{n}", params, when, _iso(pickup + talk), talk / 1000)
            )
        elif step == 4:
            record_id += 1
            record_rows.append(
                (record_id, cid, oid, f"key-{n}", sip, phone,
                 f"/var/spool/asterisk/monitor/{oid}_{cid}.wav", when, talk / 1000,
                 44 + talk * 16)
            )  # fmt: skip
        if entry_id % batch == 0:
            yield call_rows, status_rows, record_rows
            call_rows, status_rows, record_rows = [], [], []
        if entry_id % every == 0:
            _say(f"  generating: {entry_id:,} / {total:,} status entries "
                 f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    yield call_rows, status_rows, record_rows


def generate(path: Path, calls: int) -> dict[str, int]:
    """Fill a new store at ``path`` with ``calls`` calls; returns the counts."""
    from agi_app.store.schema import STATS_TRIGGERS, rebuild_call_stats

    tmp = path.with_name(path.name + ".part")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    create_schema(str(tmp))
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB while building the indexes
    # Secondary indexes are built once at the end (a sort), not row by row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('calls', 'call_status', 'recordings')"
    ).fetchall()
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    # The statistics are computed once at the end too (their triggers look
    # calls up by the indexes just dropped).
    for trigger in STATS_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    calls_sql = (
        "INSERT INTO calls (call_id, kind, sip, phone, order_id, external_key, params, "
        "created_at, final_status, finished_at, talk_seconds, pbx) "
        "VALUES (?, 'makeCall', ?, ?, ?, ?, ?, ?, 'FINISH', ?, ?, 'default')"
    )
    status_sql = (
        "INSERT INTO call_status (id, call_id, order_id, status, time, detail) "
        "VALUES (?, ?, ?, ?, ?, NULL)"
    )
    record_sql = (
        "INSERT INTO recordings (record_id, call_id, order_id, external_key, sip, phone, "
        "path, created_at, duration, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    entry_id = record_id = 0
    for call_rows, status_rows, record_rows in _rows(calls):
        conn.executemany(calls_sql, call_rows)
        conn.executemany(status_sql, status_rows)
        conn.executemany(record_sql, record_rows)
        entry_id += len(status_rows)
        record_id += len(record_rows)
    _say(f"  building {len(indexes)} indexes ({time.monotonic() - started:.0f} s)")
    for _, sql in indexes:
        conn.execute(sql)
    _say(f"  computing the call statistics ({time.monotonic() - started:.0f} s)")
    rebuild_call_stats(conn)
    # AUTOINCREMENT's counters, as if every row had been added one by one
    for table, last in (("call_status", entry_id), ("recordings", record_id)):
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (last, table))
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (table, last, table),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.replace(tmp, path)
    counts = {"calls": calls, "statuses": entry_id, "recordings": record_id}
    path.with_name(path.name + ".json").write_text(json.dumps(counts))
    _say(f"  generated in {time.monotonic() - started:.0f} s: {path} "
         f"({path.stat().st_size / 2**20:,.0f} MiB)")  # fmt: skip
    return counts


def ensure_store(calls: int) -> tuple[Path, dict[str, int]]:
    """The cached store of ``calls`` calls, generated when missing."""
    path = store_path(calls)
    meta = path.with_name(path.name + ".json")
    if path.is_file() and meta.is_file():
        counts = json.loads(meta.read_text())
        _say(f"store: {path} (cached: {counts['calls']:,} calls, "
             f"{counts['statuses']:,} statuses, {counts['recordings']:,} recordings)")  # fmt: skip
        return path, counts
    _say(f"store: generating {path} ({calls:,} calls, {calls * STATUSES_PER_CALL:,} statuses)")
    return path, generate(path, calls)


# -- the same store on PostgreSQL --------------------------------------------------

#: the table that marks a database filled by this benchmark (and with what)
PG_MARK = "agi_app_bench"


def ensure_pg_store(url: str, calls: int) -> dict[str, int]:
    """The store of ``calls`` calls in the PostgreSQL database at ``url``:
    kept when a run before filled it with the same number of calls and the
    same schema, generated otherwise.  A database holding a store this
    benchmark did not make is refused (it is never emptied)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        marked = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (PG_MARK,)).fetchone()[0]
        if marked:
            row = conn.execute(f"SELECT counts FROM {PG_MARK}").fetchone()
            counts = json.loads(row[0]) if row else {}
            if counts.get("calls") == calls and counts.get("schema") == schema_version():
                _say(f"store: {_redact(url)} (kept: {counts['calls']:,} calls, "
                     f"{counts['statuses']:,} statuses, "
                     f"{counts['recordings']:,} recordings)")  # fmt: skip
                return counts
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )]  # fmt: skip
            _say(f"store: {_redact(url)} holds another benchmark store; dropping its tables")
            for table in tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
            conn.execute("DROP FUNCTION IF EXISTS agi_app_count_rows() CASCADE")
        elif conn.execute("SELECT to_regclass('calls') IS NOT NULL").fetchone()[0]:
            raise SystemExit(
                f"{_redact(url)} already holds an agi_app store this benchmark did not make: "
                "give it an empty database"
            )
    return generate_pg(url, calls)


def _redact(url: str) -> str:
    from agi_app.store.pg_engine import redact_url

    return redact_url(url)


def generate_pg(url: str, calls: int) -> dict[str, int]:
    """Fill the empty database at ``url`` with the rows :func:`generate`
    writes to SQLite, by COPY: the application's own schema (its store
    opened once), plain indexes and foreign keys dropped while loading and
    made again after it, identities moved past the loaded ids, then
    VACUUM ANALYZE (visibility map and planner statistics, as a long-lived
    database has them).  The statistics triggers are dropped while loading
    and the statistics computed once afterwards, as :func:`generate` does."""
    import psycopg

    from agi_app.store.pg_schema import STATS_TRIGGERS, rebuild_call_stats

    started = time.monotonic()
    _say(f"store: generating in {_redact(url)} ({calls:,} calls, "
         f"{calls * STATUSES_PER_CALL:,} statuses)")  # fmt: skip
    create_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        tables = ("calls", "call_status", "recordings")
        indexes = conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            (list(tables),),
        ).fetchall()
        keys = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY(%s::regclass[])",
            (list(tables),),
        ).fetchall()
        for table, name, _ in keys:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        for trigger, table in STATS_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger} ON {table}")
        entry_id = record_id = 0
        copies = (
            ("calls (call_id, sip, phone, order_id, external_key, params, created_at, "
             "finished_at, talk_seconds, kind, final_status, pbx)", 0),
            ("call_status (id, call_id, order_id, status, time)", 1),
            ("recordings (record_id, call_id, order_id, external_key, sip, phone, path, "
             "created_at, duration, size)", 2),
        )  # fmt: skip
        for batch in _rows(calls):
            with conn.transaction():
                for target, which in copies:
                    rows = batch[which]
                    if which == 0:
                        rows = [(*r, "makeCall", "FINISH", "default") for r in rows]
                    with conn.cursor().copy(f"COPY {target} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            entry_id += len(batch[1])
            record_id += len(batch[2])
        _say(f"  building {len(indexes)} indexes and {len(keys)} foreign keys "
             f"({time.monotonic() - started:.0f} s)")  # fmt: skip
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, sql in indexes:
            conn.execute(sql)
        for table, name, definition in keys:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        _say(f"  call statistics ({time.monotonic() - started:.0f} s)")
        with conn.transaction():
            rebuild_call_stats(conn)
        for table, column, last in (("call_status", "id", entry_id),
                                    ("recordings", "record_id", record_id)):  # fmt: skip
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s)", (table, column, last)
            )
        _say(f"  vacuum analyze ({time.monotonic() - started:.0f} s)")
        conn.execute("VACUUM ANALYZE")
        counts = {"calls": calls, "statuses": entry_id, "recordings": record_id,
                  "schema": schema_version()}  # fmt: skip
        conn.execute(f"CREATE TABLE {PG_MARK} (counts text NOT NULL)")
        conn.execute(f"INSERT INTO {PG_MARK} VALUES (%s)", (json.dumps(counts),))
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    _say(f"  generated in {time.monotonic() - started:.0f} s ({size / 2**20:,.0f} MiB)")
    return counts


# -- the server (its own process) ----------------------------------------------------


def serve(
    path: str, cpu: int, log_path: str, log_level: str = "info", read_budget_us: int = 2000,
    metrics: bool = False,
) -> None:
    """Run the history endpoints on the application's HTTP stack until
    SIGTERM, on the store at ``path`` (an SQLite file or a PostgreSQL URL)."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import LogLevel, globalLogBeginner

    from agi_app.logs import service_log_observer
    from agi_app.store import store_at
    from agi_app.web import Router, build_site
    from agi_app.web.history import HistoryEndpoints

    # As `agi-app serve` does (AGI_APP_LOG_LEVEL, default info: every request
    # writes its access log line), to a file here rather than stdout.
    log_file = open(log_path, "w")  # noqa: SIM115 - open for the process's life
    level = LogLevel.levelWithName(log_level)
    globalLogBeginner.beginLoggingTo(
        [service_log_observer(log_file, level)], redirectStandardIO=False
    )
    store = store_at(path, reactor, read_budget_us=read_budget_us)
    store.open()
    router = Router()
    HistoryEndpoints(store, public_url="http://127.0.0.1:8080").add_routes(router)
    observe = None
    if metrics:  # as the application wires it: every answer counted for GET /metrics
        from agi_app.metrics import Metrics

        counted = Metrics(clock=reactor, store=store)
        counted.add_routes(router)
        observe = counted.observe_request
    site = build_site(router, api_keys=(API_KEY,), static_dir=None, clock=reactor,
                      observe=observe)  # fmt: skip
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    _pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()
    if hasattr(store, "reads_moved"):  # SQLite's inline reads
        print(f"MOVED {store.reads_moved}", flush=True)


def serve_fixed(cpu: int) -> None:
    """The transport floor: answer every request on keep-alive connections
    with one fixed JSON body, from a plain epoll loop (no HTTP stack, no
    store; about 10 us of CPU a request).  What the same load measures
    against it is what this machine's sockets and scheduling add."""
    body = b'{"page":1,"per_page":20,"total":0,"sips":[]}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}
    _pin(cpu)
    print(f"READY {listener.getsockname()[1]}", flush=True)
    while True:
        for fd, _event in poller.poll():
            if fd == listener.fileno():
                sock, _ = listener.accept()
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[sock.fileno()], pending[sock.fileno()] = sock, b""
                poller.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = conns[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                poller.unregister(fd)
                sock.close()
                del conns[fd], pending[fd]
                continue
            buf = pending[fd] + data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                buf = buf[end + 4 :]
                sock.sendall(answer)
            pending[fd] = buf


def serve_fixed_web(cpu: int) -> None:
    """The twisted.web floor: the same fixed answer from a bare twisted.web
    ``Site`` (HTTP parsing and answer writing only: no API key check,
    routing, store or access log) on the epoll reactor."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.web import resource, server

    body = b'{"page":1,"per_page":20,"total":0,"sips":[]}'

    class Fixed(resource.Resource):
        isLeaf = True

        def render_GET(self, request):  # noqa: N802 - twisted.web's name
            request.setHeader(b"content-type", b"application/json")
            return body

    site = server.Site(Fixed())
    site.log = lambda request: None
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    _pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def transport_floor(
    cpu: int, case: Case, concurrency: int, warmup: int, web: bool = False
) -> Round:
    """The load of ``case`` against :func:`serve_fixed` (``web``:
    :func:`serve_fixed_web`) in its own process."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-fixed-web" if web else "--serve-fixed",
         "--cpu", str(cpu)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        port = int(proc.stdout.readline().split()[1])
        return _load(port, case, concurrency, warmup, psutil.Process(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def start_server(
    path: str, cpu: int, log_level: str, read_budget_us: int, metrics: bool = False
) -> tuple[subprocess.Popen, int]:
    log_path = CACHE_DIR / "server.log"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), "--cpu", str(cpu),
         "--server-log", str(log_path), "--log-level", log_level,
         "--read-budget-us", str(read_budget_us), *(["--metrics"] if metrics else [])],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r} (see {log_path})")
    return proc, int(line.split()[1])


# -- the load ---------------------------------------------------------------------


@dataclass
class Round:
    """One pass of a case's requests through the server."""

    http_ms: list[float]
    seconds: float
    server_cpu: float
    errors: int

    @property
    def p99(self) -> float:
        return percentile(self.http_ms, 0.99)


@dataclass
class Case:
    """One endpoint under load: the request paths to send and, for each, the
    bare SQL that produces the same answer."""

    name: str
    #: (path with query, floor arguments) per request
    requests: list[tuple[str, tuple]]
    #: the bare SQL of one request: returns what identifies the answer
    floor: Callable[[SQLConnection, tuple], object]
    #: the same identity, read from the endpoint's JSON answer
    identity: Callable[[dict], object]
    #: a reference line (not one of the issue's targets)
    reference: bool = False
    rounds: list[Round] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)

    @property
    def best(self) -> Round:
        return min(self.rounds, key=lambda r: r.p99)


#: a connection the floors run on: an sqlite3.Connection, or a _PostgresFloor
#: (which takes the same statements)
SQLConnection = Any

_ENTRY = "id, call_id, order_id, status, time, detail"
_RECORD = "record_id, call_id, order_id, external_key, sip, phone, path, created_at, duration, size"

# The floors: the SQL the store runs for each answer (agi_app/store/sqlite.py),
# on one connection, one request at a time -- for history entries the plain
# SELECT, which alone is quicker than the store's one-JSON-row form of it
# (that form pays off only when the reactor thread competes for the GIL).


def _order_history_sql(conn: SQLConnection, args: tuple) -> object:
    rows = conn.execute(
        f"SELECT {_ENTRY} FROM call_status WHERE order_id = ? ORDER BY id", args
    ).fetchall()
    return [r[0] for r in rows]


def _poll_sql(conn: SQLConnection, args: tuple) -> object:
    rows = conn.execute(
        f"SELECT {_ENTRY} FROM call_status WHERE id > ? ORDER BY id LIMIT ?", args
    ).fetchall()
    return [r[0] for r in rows]


def _one_call_sql(conn: SQLConnection, args: tuple) -> object:
    # (the call is looked up only when it has no entries: never here)
    rows = conn.execute(
        f"SELECT {_ENTRY} FROM call_status WHERE call_id = ? AND id > 0 ORDER BY id LIMIT 100",
        args,
    ).fetchall()
    return [r[0] for r in rows]


def _record_page_sql(conn: SQLConnection, args: tuple) -> object:
    # the kept total, the id range, then the page by primary key (the ids
    # have no gaps here) -- SQLiteStore._newest_page
    page, per_page = args
    conn.execute("BEGIN")
    total = conn.execute("SELECT n FROM row_counts WHERE name = 'recordings'").fetchone()[0]
    lo, hi = conn.execute(
        "SELECT (SELECT min(record_id) FROM recordings), (SELECT max(record_id) FROM recordings)"
    ).fetchone()
    top = hi - (page - 1) * per_page
    rows = conn.execute(
        f"SELECT {_RECORD} FROM recordings WHERE record_id BETWEEN ? AND ? ORDER BY record_id DESC",
        (max(lo, top - per_page + 1), top),
    ).fetchall()
    conn.execute("COMMIT")
    return total, [r[0] for r in rows]


def _operators_sql(conn: SQLConnection, args: tuple) -> object:
    total = conn.execute("SELECT count(*) FROM operators").fetchone()[0]
    rows = conn.execute(
        "SELECT sip, status, since FROM operators ORDER BY sip LIMIT 20 OFFSET 0"
    ).fetchall()
    return total, [r[0] for r in rows]


def build_cases(counts: dict[str, int], requests: int, seed: int = 1) -> list[Case]:
    """The endpoints under test, each with ``requests`` random requests."""
    rng = random.Random(seed)
    calls, statuses = counts["calls"], counts["statuses"]
    orders = calls // CALLS_PER_ORDER

    def each(make: Callable[[], tuple[str, tuple]]) -> list[tuple[str, tuple]]:
        return [make() for _ in range(requests)]

    def order() -> tuple[str, tuple]:
        oid = f"order-{rng.randrange(orders)}"
        return f"/api/orderHistory.json?order_id={oid}", (oid,)

    def poll() -> tuple[str, tuple]:
        after = rng.randrange(0, statuses - 100)
        return f"/api/callHistory.json?after_id={after}&limit=100", (after, 100)

    def one_call() -> tuple[str, tuple]:
        cid = call_id(rng.randrange(calls))
        return f"/api/callHistory.json?call_id={cid}", (cid,)

    def records(page: int) -> Callable[[], tuple[str, tuple]]:
        return lambda: (f"/api/recordList.json?page={page}&per_page={PER_PAGE}", (page, PER_PAGE))

    def ids(body: dict) -> object:
        return [e["id"] for e in body["history"]]

    def page_ids(body: dict) -> object:
        return body["total"], [r["record_id"] for r in body["records"]]

    def sips(body: dict) -> object:
        return body["total"], [s["sip"] for s in body["sips"]]

    return [
        Case("orderHistory", each(order), _order_history_sql, ids),
        Case("callHistory after_id", each(poll), _poll_sql, ids),
        Case("callHistory call_id", each(one_call), _one_call_sql, ids),
        Case("recordList page 1", each(records(1)), _record_page_sql, page_ids),
        Case(f"recordList page {DEEP_PAGE:,}", each(records(DEEP_PAGE)), _record_page_sql,
             page_ids),
        # no operators in this store: what the HTTP stack costs by itself
        Case("(sipList, empty)", each(lambda: ("/api/sipList.json", ())), _operators_sql, sips,
             reference=True),
    ]  # fmt: skip


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _load(port: int, case: Case, concurrency: int, warmup: int, server) -> Round:
    """Send every request of ``case`` over ``concurrency`` keep-alive
    connections, one request in flight on each; the first ``warmup``
    requests are not counted.

    A plain epoll loop over non-blocking sockets, requests encoded up front:
    about 10 us of this process's CPU per request, so the server sets the
    pace, even the fixed-answer floors that spend about that much."""
    todo = iter(enumerate(case.requests))
    latencies: list[float] = []
    errors = 0
    poller = select.epoll()
    conns: dict[int, dict] = {}

    def send_next(c: dict) -> bool:
        item = next(todo, None)
        if item is None:
            return False
        i, (path, _) = item
        c["i"], c["buf"], c["started"] = i, b"", time.perf_counter()
        c["sock"].sendall(_request(path))
        return True

    for _ in range(concurrency):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        c = {"sock": sock}
        conns[sock.fileno()] = c
        poller.register(sock.fileno(), select.EPOLLIN)
    cpu = sum(server.cpu_times()[:2])
    started = time.perf_counter()
    live = sum(send_next(c) for c in conns.values())
    while live:
        for fd, _event in poller.poll():
            c = conns[fd]
            try:
                data = c["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit(f"{case.name}: the server closed a connection")
            c["buf"] += data
            done = _complete(c["buf"])
            if done is None:
                continue
            status = done
            elapsed = (time.perf_counter() - c["started"]) * 1000
            errors += status != 200
            if c["i"] >= warmup:
                latencies.append(elapsed)
            if not send_next(c):
                live -= 1
    seconds = time.perf_counter() - started
    for c in conns.values():
        c["sock"].close()
    poller.close()
    return Round(latencies, seconds, sum(server.cpu_times()[:2]) - cpu, errors)


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n".encode()


def _complete(buf: bytes) -> int | None:
    """The status of the answer in ``buf`` once it is whole, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    at = head.find(b"content-length:")
    if at < 0:
        raise SystemExit(f"an answer without Content-Length: {buf[:200]!r}")
    stop = head.find(b"\r\n", at)
    length = int(head[at + 15 : stop if stop >= 0 else len(head)])
    if len(buf) < end + 4 + length:
        return None
    return int(buf[9:12])


async def _check_answers(port: int, case: Case, conn: SQLConnection, n: int) -> None:
    """The endpoint and the bare SQL must give the same answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path, args in case.requests[:n]:
            status, body = await _get(reader, writer, path)
            if status != 200:
                raise SystemExit(f"{case.name}: {path} answered {status}: {body[:300]!r}")
            got, want = case.identity(json.loads(body)), case.floor(conn, args)
            if got != want:
                raise SystemExit(f"{case.name}: {path}: the endpoint and the bare SQL differ:\n"
                                 f"  http {got!r}\n  sql  {want!r}")  # fmt: skip
    finally:
        writer.close()


def _floor(case: Case, conn: SQLConnection, warmup: int) -> None:
    for i, (_, args) in enumerate(case.requests):
        started = time.perf_counter()
        case.floor(conn, args)
        elapsed = (time.perf_counter() - started) * 1000
        if i >= warmup:
            case.floor_ms.append(elapsed)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def queued(floor_ms: Sequence[float], concurrency: int) -> list[float]:
    """What the floor's queries would take at ``concurrency``: a server that
    did nothing but the SQL, one query at a time, with ``concurrency``
    clients each keeping one request in flight.  In that closed loop a
    request waits for the ones queued before it, so its time is the sum of
    ``concurrency`` consecutive query times."""
    out, window = [], 0.0
    for i, ms in enumerate(floor_ms):
        window += ms
        if i >= concurrency:
            window -= floor_ms[i - concurrency]
        if i >= concurrency - 1:
            out.append(window)
    return out


def report(cases: list[Case], concurrency: int, engine: str = "SQLite") -> bool:
    """Print the table of one engine's run; True when every target is met
    (on PostgreSQL the p99 target only: its floor is a query on another
    process, whose round trip the 3x target was not set for)."""
    factor_target = engine == "SQLite"
    head = (f"{'endpoint':24} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'CPU/req':>8} "
            f"{'floor p50':>9} {'floor p99':>9} {'x floor':>7} "
            f"{'queued p99':>10} {'x queued':>8}  p99<{TARGET_P99_MS:g}ms  "
            f"{f'<={TARGET_FACTOR:g}x floor' if factor_target else ''}")  # fmt: skip
    _say("")
    _say(f"{engine} store")
    _say(head)
    _say("-" * len(head))
    ok = True
    for c in cases:
        r = c.best
        p50, p99 = statistics.median(r.http_ms), r.p99
        f50, f99 = statistics.median(c.floor_ms), percentile(c.floor_ms, 0.99)
        q99 = percentile(queued(c.floor_ms, concurrency), 0.99)
        factor = p99 / f99 if f99 else float("inf")
        fast = p99 < TARGET_P99_MS and not r.errors
        near = (factor <= TARGET_FACTOR or not factor_target) and not r.errors
        if c.reference:
            verdict = "(reference)"
        else:
            ok &= fast and near
            verdict = f"{'met' if fast else 'MISSED':9} "
            if factor_target:
                verdict += "met" if near else "MISSED"
        if r.errors:
            verdict += f" ({r.errors} errors)"
        cpu_us = r.server_cpu / len(c.requests) * 1e6
        _say(f"{c.name:24} {len(c.requests) / r.seconds:6.0f} {p50:7.2f} {p99:7.2f} "
             f"{cpu_us:6.0f}us {f50:9.3f} {f99:9.3f} {factor:7.1f} {q99:10.3f} "
             f"{p99 / q99:8.1f}  {verdict}")  # fmt: skip
    targets = f"p99 < {TARGET_P99_MS:g} ms"
    if factor_target:
        targets += f" and p99 <= {TARGET_FACTOR:g} x the floor's p99"
    _say(f"targets: {targets}, at concurrency {concurrency}.  floor: the same SQL alone, one "
         f"query at a time; queued: the floor's queries at concurrency {concurrency} with "
         f"nothing but the SQL (each waits for those ahead of it); CPU/req: the server "
         f"process's CPU time per request")  # fmt: skip
    return ok


def side_by_side(runs: list[tuple[str, list[Case]]]) -> None:
    """One line per endpoint: each engine's p50/p99 of the same run."""
    _say("")
    head = f"{'endpoint':24}" + "".join(f" {name + ' p50/p99 ms':>26}" for name, _ in runs)
    _say(head)
    _say("-" * len(head))
    for i, case in enumerate(runs[0][1]):
        cells = []
        for _, cases in runs:
            r = cases[i].best
            cells.append(f"{statistics.median(r.http_ms):12.2f} / {r.p99:9.2f}")
        _say(f"{case.name:24}" + "".join(f" {cell:>26}" for cell in cells))


class _PostgresFloor:
    """A psycopg connection that takes the floors' SQL as written for
    SQLite (``?`` placeholders): the same statements on both engines."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, args: tuple = ()):
        return self._conn.execute(sql.replace("?", "%s"), args)

    def close(self) -> None:
        self._conn.close()


def run_engine(
    engine: str, location: str, cases: list[Case], args: argparse.Namespace, warmup: int
) -> list[str]:
    """Serve the store at ``location`` in its own process, check its answers
    against the bare SQL, load it in rounds, then time the floors; returns
    the server's last lines."""
    import psutil

    rounds = 1 if args.quick else args.rounds
    server, port = start_server(
        location, cpu=-1 if args.no_pin else 1, log_level=args.log_level,
        read_budget_us=args.read_budget_us, metrics=args.metrics,
    )  # fmt: skip
    where = "any CPU" if args.no_pin else "CPU 1, load generator on CPU 0"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    _say(f"{engine}: server pid {server.pid} on {where}, log level {args.log_level}, read "
         f"budget {args.read_budget_us} us, metrics {'on' if args.metrics else 'off'}; "
         f"load average {load}")  # fmt: skip
    try:
        if engine == "SQLite":
            conn = sqlite3.connect(f"file:{location}?mode=ro", uri=True, isolation_level=None)
        else:
            conn = _PostgresFloor(location)
        process = psutil.Process(server.pid)
        for case in cases:
            asyncio.run(_check_answers(port, case, conn, 20))
        # Round-robin over the endpoints: a burst of other work on the machine
        # spoils one round of several endpoints rather than every round of one.
        for n in range(rounds):
            _say(f"round {n + 1}/{rounds}: {len(cases[0].requests):,} requests per endpoint "
                 f"at concurrency {args.concurrency}")  # fmt: skip
            for case in cases:
                case.rounds.append(_load(port, case, args.concurrency, warmup, process))
        for case in cases:
            _floor(case, conn, warmup)
        conn.close()
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=10)
    return rest.splitlines()


def pg_location(store: str, stack: contextlib.ExitStack) -> str:
    """The PostgreSQL database of ``--store``: its URL as given, or for
    ``throwaway`` a database on a cluster made for this run (removed after it)."""
    if store != "throwaway":
        return store
    from agi_app.store.pg_testing import ThrowawayCluster, create_database

    # Reads only: durability does not matter; the buffers hold the hot indexes.
    cluster = ThrowawayCluster(settings={
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "shared_buffers": "1GB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
    })  # fmt: skip
    stack.enter_context(cluster)
    _say(f"PostgreSQL: a throwaway cluster for this run on 127.0.0.1:{cluster.port}")
    return create_database(cluster.url, "bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls in the store")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per endpoint (best kept)")
    parser.add_argument("--quick", action="store_true", help="1,000 requests, one round")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the server and the load generator run on any CPU (default: server on "
        "CPU 1, its reactor and store threads sharing it; generator on CPU 0)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warn", "error"),
        help="the server's log level (info, the default of agi-app serve, writes the "
        "access log; warn does not)",
    )
    parser.add_argument(
        "--read-budget-us",
        type=int,
        default=2000,
        help="the store's [store] read_budget_us (0: every read on the store's worker "
        "thread, as before inline reads)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="also run the same load on the same store in PostgreSQL: "
        "postgresql://user:pass@host:port/db (an empty database, or one an earlier run "
        "filled), or 'throwaway' for a cluster made for this run; the figures are printed "
        "beside SQLite's",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="count every answer for GET /metrics, as the application does (the HTTP "
        "histogram's observer)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fixed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fixed-web", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--server-log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.cpu, args.server_log, args.log_level, args.read_budget_us,
              args.metrics)
        return 0
    if args.serve_fixed:
        serve_fixed(args.cpu)
        return 0
    if args.serve_fixed_web:
        serve_fixed_web(args.cpu)
        return 0
    if args.store and args.store != "throwaway" and not args.store.startswith(
        ("postgresql://", "postgres://")
    ):
        parser.error("--store takes a postgresql:// URL or 'throwaway'")

    requests, rounds = (1000, 1) if args.quick else (args.requests, args.rounds)
    warmup = min(200, requests // 5)
    if args.calls < DEEP_PAGE * PER_PAGE:
        parser.error(f"--calls must be at least {DEEP_PAGE * PER_PAGE} for page {DEEP_PAGE}")
    with contextlib.ExitStack() as stack:
        path, counts = ensure_store(args.calls)
        engines = [("SQLite", str(path))]
        if args.store:
            url = pg_location(args.store, stack)
            pg_counts = ensure_pg_store(url, args.calls)
            if {k: pg_counts[k] for k in counts} != counts:
                raise SystemExit(f"the two stores differ: {counts} and {pg_counts}")
            engines.append(("PostgreSQL", url))
        if not args.no_pin:
            _pin(0)
        runs = []
        for engine, location in engines:
            cases = build_cases(counts, requests)  # the same requests for each engine
            rest = run_engine(engine, location, cases, args, warmup)
            moved = [line.split()[1] for line in rest if line.startswith("MOVED ")]
            if moved:
                _say(f"store: {moved[0]} reads ran over the read budget and were done again "
                     f"on the worker thread")  # fmt: skip
            runs.append((engine, cases))
    reference, cpu = runs[0][1][-1], -1 if args.no_pin else 1
    floors = {
        web: min(
            (transport_floor(cpu, reference, args.concurrency, warmup, web)
             for _ in range(rounds)),
            key=lambda r: r.p99,
        )
        for web in (False, True)
    }  # fmt: skip
    met = True
    for engine, cases in runs:
        met &= report(cases, args.concurrency, engine)
    if len(runs) > 1:
        side_by_side(runs)
    for web, what in (
        (False, "a plain epoll loop: what sockets and scheduling on this machine add"),
        (True, "a bare twisted.web Site: HTTP parsing and writing, nothing else"),
    ):
        r = floors[web]
        cpu_us = r.server_cpu / len(reference.requests) * 1e6
        _say(f"fixed answer from {what}: p50 {statistics.median(r.http_ms):.2f} ms, "
             f"p99 {r.p99:.2f} ms, {cpu_us:.0f} us CPU/req")  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
