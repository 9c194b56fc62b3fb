"""Retention on a big call log: the purge's time, and the CRM API's latency
while it runs.

The store: ``--calls`` calls (200,000 by default) spread evenly over two
years up to "now", each with 6 status entries and a recording whose file
(a 44-byte WAV header) is on disk; one call in a thousand has no final
status (a call left open, which retention must never touch).  Built with a
few bulk SQL statements into a file created by opening
:class:`agi_app.store.SQLiteStore` (the application's schema, indexes and
triggers), fresh for every run, as the purge consumes it.

The server: a separate process with the application's HTTP stack
(``build_site`` with an API key, the history endpoints, the SQLite store
with inline reads, the epoll reactor) and :class:`agi_app.retention.Retention`
on the same reactor and store, with ``[retention] history_days``
(``--history-days``, 365) and ``recordings_days`` (``--recordings-days``,
180).  Pinned to CPU 1 (``--no-pin``: any).

The load: this process, on CPU 0, keeps 10 keep-alive connections busy with
a mix of ``callHistory`` polling (``after_id`` anywhere), ``callHistory`` of
a recent call, ``orderHistory`` of a recent order and ``recordList`` page 1
-- first for ``--baseline`` seconds without the purge, then from the moment
the purge starts until it ends.  It prints p50/p99/max of each phase, the
purge's time and what it removed, and then checks the store and the folder:
every finished call older than the limit is gone with its entries,
recordings and files, every newer one (and every open one) is intact, the
recordings older than their limit are gone with their files, the newer ones
and their files are there, and the kept row count equals the table's.

Usage::

    .venv/bin/python bench/retention.py                 # 200,000 calls
    .venv/bin/python bench/retention.py --calls 20000 --baseline 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK_DIR = Path(os.environ.get("AGI_APP_BENCH_CACHE", "/var/tmp/agi_app-bench")) / "retention"
API_KEY = "bench-key"
CONCURRENCY = 10
DAY = 86400
SPAN_DAYS = 730
STATUSES = ("CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP",
            "FINISH")  # fmt: skip
#: one call in this many is left open
OPEN_EVERY = 1000
TARGET_P99_MS = 10.0


def _say(line: str) -> None:
    print(line, flush=True)


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and 0 <= cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# -- the store ---------------------------------------------------------------------


def create_schema(path: Path) -> None:
    """Create the file by opening (and closing) the application's store once."""
    from twisted.internet import reactor

    from agi_app.store import SQLiteStore

    store = SQLiteStore(str(path), reactor=reactor)
    store.open()
    reactor.callWhenRunning(lambda: store.close().addBoth(lambda _: reactor.stop()))
    reactor.run()


def generate(path: Path, folder: Path, calls: int, now: float) -> None:
    """``calls`` calls over the :data:`SPAN_DAYS` days before ``now``, with
    their entries, recordings and files."""
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, "--create-schema", str(path)], check=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -500000")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('calls', 'call_status', 'recordings')"
    ).fetchall()
    step = SPAN_DAYS * DAY / calls
    first = now - SPAN_DAYS * DAY
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    # n: the call's number; t: its start (unix s); its id sorts by number.
    conn.execute("CREATE TEMP TABLE n (i INTEGER PRIMARY KEY, t REAL, id TEXT, open INTEGER)")
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < ? - 1) "
        "INSERT INTO n SELECT i, ? + i * ?, printf('c%09d', i), i % ? = ? - 1 FROM k",
        (calls, first, step, OPEN_EVERY, OPEN_EVERY),
    )
    iso = "strftime('%Y-%m-%dT%H:%M:%fZ', {}, 'unixepoch')"
    conn.execute(
        "INSERT INTO calls (call_id, kind, sip, phone, order_id, external_key, params, "
        "created_at, final_status, finished_at, talk_seconds, pbx) "
        f"SELECT id, 'makeCall', 1000 + i % 200, printf('38063%07d', i), "
        f"'order-' || (i / 3), 'key-' || i, '{{}}', {iso.format('t')}, "
        f"CASE WHEN open THEN NULL ELSE 'FINISH' END, "
        f"CASE WHEN open THEN NULL ELSE {iso.format('t + 60')} END, "
        f"CASE WHEN open THEN NULL ELSE 47.5 END, 'default' FROM n"
    )
    statuses = ", ".join(f"({s}, '{w}')" for s, w in enumerate(STATUSES))
    conn.execute(
        f"WITH s(step, word) AS (VALUES {statuses}) "
        "INSERT INTO call_status (call_id, order_id, status, time, detail) "
        f"SELECT id, 'order-' || (i / 3), word, {iso.format('t + step * 10')}, NULL "
        "FROM n, s WHERE NOT (open AND step = 5) ORDER BY i, step"
    )
    conn.execute(
        "INSERT INTO recordings (call_id, order_id, external_key, sip, phone, path, "
        "created_at, duration, size) "
        f"SELECT id, 'order-' || (i / 3), 'key-' || i, 1000 + i % 200, "
        f"printf('38063%07d', i), ? || '/order-' || (i / 3) || '_' || id || '.wav', "
        f"{iso.format('t + 40')}, 0.0, 44 FROM n ORDER BY i",
        (str(folder),),
    )
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute(
        "UPDATE row_counts SET n = (SELECT count(*) FROM recordings) WHERE name = 'recordings'"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    header = b"RIFF" + b"\0" * 40
    for (p,) in conn.execute("SELECT path FROM recordings"):
        with open(p, "wb") as f:
            f.write(header)
    conn.close()
    _say(f"store: {calls:,} calls, {calls * 6 - calls // OPEN_EVERY:,} entries, {calls:,} "
         f"recordings and files over {SPAN_DAYS} days, built in "
         f"{time.monotonic() - started:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip


# -- the server (its own process) -----------------------------------------------------


def serve(path: str, cpu: int, history_days: int, recordings_days: int, batch: int,
          pause: float, idle_ratio: float) -> None:  # fmt: skip
    """The history API and the retention job on one reactor and store; the
    purge starts on a line ``purge`` on stdin and ends with ``PURGED <json>``."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from agi_app.app import _in_threads
    from agi_app.retention import Retention
    from agi_app.store import SQLiteStore
    from agi_app.web import Router, build_site
    from agi_app.web.history import HistoryEndpoints

    store = SQLiteStore(path, reactor=reactor)
    store.open()
    router = Router()
    HistoryEndpoints(store, public_url="http://127.0.0.1:8080").add_routes(router)
    site = build_site(router, api_keys=(API_KEY,), static_dir=None, clock=reactor)
    site.log = lambda request: None  # (the access log is history_api.py's subject)
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    job = Retention(
        store, clock=reactor, run_blocking=_in_threads(reactor), history_days=history_days,
        recordings_days=recordings_days, batch_size=batch, pause=pause, idle_ratio=idle_ratio,
    )  # fmt: skip

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
            if line.strip() == b"purge":
                started = time.monotonic()
                d = defer.ensureDeferred(job.run())

                def done(report) -> None:
                    out = report.as_dict()
                    out["wall"] = time.monotonic() - started
                    out["moved"] = store.reads_moved
                    print("PURGED " + json.dumps(out), flush=True)

                d.addCallback(done)
                d.addErrback(lambda f: print(f"FAILED {f.getErrorMessage()}", flush=True))

    stdio.StandardIO(Control())
    _pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def start_server(path: Path, cpu: int, args) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), "--cpu", str(cpu),
         "--history-days", str(args.history_days), "--recordings-days",
         str(args.recordings_days), "--batch", str(args.batch), "--pause", str(args.pause),
         "--idle-ratio", str(args.idle_ratio)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.split()[1])


# -- the load --------------------------------------------------------------------------


def requests(calls: int, rng: random.Random):
    """Endless random requests of the mix (recent calls and orders: what a
    CRM asks for; the polling cursor anywhere)."""
    entries = calls * 6
    recent = max(calls // 10, 1)
    while True:
        kind = rng.randrange(4)
        if kind == 0:
            yield f"/api/callHistory.json?after_id={rng.randrange(entries)}&limit=100"
        elif kind == 1:
            yield f"/api/callHistory.json?call_id=c{calls - 1 - rng.randrange(recent):09d}"
        elif kind == 2:
            order = (calls - 1 - rng.randrange(recent)) // 3
            yield f"/api/orderHistory.json?order_id=order-{order}"
        else:
            yield "/api/recordList.json?page=1&per_page=20"


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n".encode()


def _complete(buf: bytes) -> tuple[int, int] | None:
    """``(status, length of the answer)`` once it is whole in ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    at = head.find(b"content-length:")
    stop = head.find(b"\r\n", at)
    length = int(head[at + 15 : stop if stop >= 0 else len(head)])
    if len(buf) < end + 4 + length:
        return None
    return int(buf[9:12]), end + 4 + length


def load(port: int, paths, until, concurrency: int = CONCURRENCY,
         rate: float = 0.0) -> tuple[list[float], int]:  # fmt: skip
    """Requests until ``until()`` says stop; the latencies (ms) and the errors.

    ``rate`` 0: closed loop, ``concurrency`` requests always in flight (the
    server saturated: latency is mostly queueing).  Otherwise open loop:
    ``rate`` requests a second on schedule over up to ``concurrency``
    connections, each timed from when it was due (a request that waits for
    a free connection counts its wait)."""
    poller = select.epoll()
    conns: dict[int, dict] = {}
    latencies: list[float] = []
    errors = 0
    for _ in range(concurrency):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns[sock.fileno()] = {"sock": sock, "buf": b"", "started": 0.0}
        poller.register(sock.fileno(), select.EPOLLIN)
    idle = list(conns.values())
    due: deque[float] = deque()
    interval = 1 / rate if rate else 0.0
    next_at = time.perf_counter()
    stopping = False

    def send(c: dict, started: float) -> None:
        c["buf"], c["started"] = b"", started
        c["sock"].sendall(_request(next(paths)))

    while True:
        now = time.perf_counter()
        if not stopping:
            if rate:
                while next_at <= now:
                    due.append(next_at)
                    next_at += interval
            else:
                due.extend(now for _ in idle)
        while due and idle:
            send(idle.pop(), due.popleft())
        if stopping and len(idle) == len(conns):
            break
        wait = min(max(next_at - now, 0.0), 0.05) if rate and not stopping else 0.05
        for fd, _event in poller.poll(wait):
            c = conns[fd]
            try:
                data = c["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("the server closed a connection")
            c["buf"] += data
            done = _complete(c["buf"])
            if done is None:
                continue
            latencies.append((time.perf_counter() - c["started"]) * 1000)
            errors += done[0] != 200
            idle.append(c)
        if not stopping and until():
            stopping = True
            due.clear()
    for c in conns.values():
        c["sock"].close()
    poller.close()
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, ms: list[float], errors: int, seconds: float) -> str:
    return (f"{name:22} {len(ms):8,} {len(ms) / seconds:7.0f} {statistics.median(ms):7.2f} "
            f"{percentile(ms, 0.99):7.2f} {max(ms):7.1f} {errors:6}")  # fmt: skip


# -- the check ----------------------------------------------------------------------------


def snapshot(path: Path) -> tuple[dict, dict]:
    """Every call ``{call_id: (created_at, finished)}`` and recording
    ``{record_id: (call_id, created_at, path)}`` of the store, before the purge."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = conn.execute("SELECT call_id, created_at, final_status FROM calls")
    calls = {c: (t, f is not None) for c, t, f in rows}
    rows = conn.execute("SELECT record_id, call_id, created_at, path FROM recordings")
    records = {r: (c, t, p) for r, c, t, p in rows}
    conn.close()
    return calls, records


def check(path: Path, folder: Path, before: tuple[dict, dict], report: dict) -> list[str]:
    """What is wrong with the store and the folder after the purge, given
    what was there before and the limits the purge used (empty: nothing)."""
    calls, records = before
    history_cut, record_cut = report["history_before"], report["recordings_before"]
    kept_calls = {c for c, (t, finished) in calls.items()
                  if not finished or not history_cut or t >= history_cut}  # fmt: skip
    kept_records = {
        r for r, (c, t, _p) in records.items()
        if c in kept_calls and (not calls[c][1] or not record_cut or t >= record_cut)
    }  # fmt: skip
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    problems = []
    got_calls = {c for (c,) in conn.execute("SELECT call_id FROM calls")}
    if got_calls != kept_calls:
        problems.append(f"calls: {len(got_calls - kept_calls):,} left that should be gone, "
                        f"{len(kept_calls - got_calls):,} gone that should be kept")  # fmt: skip
    entries = dict(conn.execute("SELECT call_id, count(*) FROM call_status GROUP BY call_id"))
    if set(entries) != got_calls or any(
        n != (6 if calls[c][1] else 5) for c, n in entries.items()
    ):
        problems.append("the history entries are not exactly those of the kept calls")
    got_records = {r for (r,) in conn.execute("SELECT record_id FROM recordings")}
    if got_records != kept_records:
        problems.append(
            f"recordings: {len(got_records - kept_records):,} left that should be gone, "
            f"{len(kept_records - got_records):,} gone that should be kept"
        )
    if conn.execute("SELECT n FROM row_counts WHERE name = 'recordings'").fetchone()[0] != len(
        got_records
    ):
        problems.append("the kept recordings count differs from the table's")
    on_disk = {str(p) for p in folder.iterdir()}
    wanted = {records[r][2] for r in kept_records}
    if on_disk != wanted:
        problems.append(f"files: {len(on_disk - wanted):,} left that should be gone, "
                        f"{len(wanted - on_disk):,} gone that should be kept")  # fmt: skip
    conn.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--history-days", type=int, default=365)
    parser.add_argument("--recordings-days", type=int, default=180)
    parser.add_argument("--batch", type=int, default=100, help="[retention] batch_size")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds between batches")  # fmt: skip
    parser.add_argument("--idle-ratio", type=float, default=2.0,
                        help="pause at least this many times a batch's time")  # fmt: skip
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="requests per second (0: as many as 10 connections take)")  # fmt: skip
    parser.add_argument("--baseline", type=float, default=5.0,
                        help="seconds of load before the purge")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--create-schema", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.create_schema:
        create_schema(Path(args.create_schema))
        return 0
    if args.serve:
        serve(args.serve, args.cpu, args.history_days, args.recordings_days, args.batch,
              args.pause, args.idle_ratio)  # fmt: skip
        return 0
    path, folder = WORK_DIR / "store.sqlite3", WORK_DIR / "monitor"
    now = time.time()
    generate(path, folder, args.calls, now)
    before = snapshot(path)
    server, port = start_server(path, -1 if args.no_pin else 1, args)
    if not args.no_pin:
        _pin(0)
    rng = random.Random(1)
    paths = requests(args.calls, rng)
    _say(f"server pid {server.pid}; history_days {args.history_days}, recordings_days "
         f"{args.recordings_days}, batch {args.batch}, pause {args.pause} s and "
         f"{args.idle_ratio} x the batch; load "
         f"{f'{args.rate:g} requests/s' if args.rate else 'closed loop'} over {CONCURRENCY} "
         f"connections; "
         f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    try:
        started = time.monotonic()
        base_ms, base_errors = load(
            port, paths, lambda: time.monotonic() - started > args.baseline, rate=args.rate
        )
        base_s = time.monotonic() - started
        server.stdin.write("purge\n")
        server.stdin.flush()
        result: dict = {}
        out = server.stdout

        def purged() -> bool:
            if result:
                return True
            ready, _, _ = select.select([out], [], [], 0)
            if ready:
                line = out.readline()
                if line.startswith("FAILED"):
                    raise SystemExit(f"the purge failed: {line}")
                if line.startswith("PURGED "):
                    result.update(json.loads(line[7:]))
            return bool(result)

        started = time.monotonic()
        purge_ms, purge_errors = load(port, paths, purged, rate=args.rate)
        purge_s = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    head = (f"{'':22} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'errors':>6}")  # fmt: skip
    _say("")
    _say(head)
    _say("-" * len(head))
    _say(summary("without the purge", base_ms, base_errors, base_s))
    _say(summary("during the purge", purge_ms, purge_errors, purge_s))
    _say(f"limits: calls created before {result['history_before'] or '-'}, recordings "
         f"before {result['recordings_before'] or '-'}")  # fmt: skip
    _say(f"purge: {result['wall']:.1f} s, {result['batches']} batches: {result['calls']:,} calls, "
         f"{result['entries']:,} history entries, {result['recordings']:,} recordings, "
         f"{result['files']:,} files removed ({result['failed']} could not be); longest "
         f"deletion {result['longest_write'] * 1000:.1f} ms; {result['moved']} API reads went "
         f"over the read budget")  # fmt: skip
    problems = check(path, folder, before, result)
    for problem in problems:
        _say(f"CHECK FAILED: {problem}")
    if not problems:
        _say("check: every finished call and recording older than its limit is gone with its "
             "files; the newer ones, the open calls and their files are intact; row counts agree")
    p99 = percentile(purge_ms, 0.99)
    met = p99 < TARGET_P99_MS and not purge_errors
    _say(f"target: API p99 during the purge < {TARGET_P99_MS:g} ms: "
         f"{'met' if met else 'MISSED'} ({p99:.2f} ms)")  # fmt: skip
    return 0 if met and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
