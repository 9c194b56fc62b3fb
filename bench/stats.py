"""Operator statistics under load: ``/api/operatorStats`` and ``/api/callStats``
on the store of a million calls, real HTTP, concurrency 10.

The store is the one ``bench/history_api.py`` builds (1,000,000 calls over
35 days, 200 operators, every call CALL .. FINISH), with its statistics
tables computed once after the bulk load (the same rebuild a migration
runs) and kept by the triggers from then on.

The server is a separate process running the application's real HTTP stack
(``build_site`` with an API key, the statistics endpoints, the SQLite store,
the epoll reactor, the access log) pinned to CPU 1; this process keeps 10
keep-alive connections busy from CPU 0 (the load loop of history_api).
Requests:

* operatorStats of the whole store (35 days x 200 operators),
* operatorStats of one random day, and of a random week between two random
  hours (days from the day table, the hours at both ends from the hour table),
* operatorStats of one operator over the whole store,
* callStats by hour of a random day, and by day of the whole store.

Printed per request kind: p50/p99 latency and the server's CPU per request;
the store's own call (the same method, synchronous, no HTTP) as the floor;
the same figures computed the plain way from the history, once (what the
summary tables spare); and the cost the triggers add to the status writer
(``add_status`` on a fresh file store with and without them).

Usage::

    .venv/bin/python bench/stats.py            # ~2 min the first time (the store), then ~1 min
    .venv/bin/python bench/stats.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import history_api as h  # noqa: E402 - the history bench's store and load loop

TARGET_P99_MS = 50.0
DAY_MS = 86_400_000


def _iso_hour(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:00:00.000Z", time.gmtime(ms // 1000))


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


# -- the server ----------------------------------------------------------------


def serve(path: str, cpu: int, log_path: str) -> None:
    """The statistics endpoints on the application's HTTP stack until SIGTERM."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import LogLevel, globalLogBeginner

    from agi_app.logs import service_log_observer
    from agi_app.store import SQLiteStore
    from agi_app.web import Router, build_site
    from agi_app.web.stats import StatsEndpoints

    log_file = open(log_path, "w")  # noqa: SIM115 - open for the process's life
    globalLogBeginner.beginLoggingTo(
        [service_log_observer(log_file, LogLevel.info)], redirectStandardIO=False
    )
    store = SQLiteStore(path, reactor=reactor)
    store.open()
    router = Router()
    StatsEndpoints(store, clock=reactor).add_routes(router)
    site = build_site(router, api_keys=(h.API_KEY,), static_dir=None, clock=reactor)
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    h._pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()
    print(f"MOVED {store.reads_moved}", flush=True)


def start_server(path: Path, cpu: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), "--cpu", str(cpu)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.split()[1])


class _WallClock:
    """The time of what the store writes without one: now."""

    @staticmethod
    def seconds() -> float:
        return time.time()


def sync_store(path: Path):
    """The application's store on ``path``, answering at once on this thread
    (no worker, no reactor): the floor of each request, and its checker."""
    from agi_app.store import SQLiteStore
    from agi_app.store.testing import _SameThread

    same = _SameThread()
    store = SQLiteStore(str(path), reactor=same, clock=_WallClock(), worker=same,
                        read_budget_us=0)  # fmt: skip
    store.open()
    return store


# -- the requests ------------------------------------------------------------------


def build_cases(requests: int, calls: int, seed: int = 3) -> list[h.Case]:
    """The requests of each kind, with the store call that answers each."""
    rng = random.Random(seed)
    first = h.EPOCH_MS
    last = h.EPOCH_MS + calls * h.CALL_EVERY_MS
    whole = (_iso_hour(first - first % DAY_MS), _iso_hour(last - last % DAY_MS + DAY_MS))
    days = (last - first) // DAY_MS

    def day_range() -> tuple[str, str]:
        start = first - first % DAY_MS + rng.randrange(days) * DAY_MS
        return _iso_hour(start), _iso_hour(start + DAY_MS)

    def week_range() -> tuple[str, str]:
        start = first + rng.randrange(days - 8) * DAY_MS + rng.randrange(24) * 3_600_000
        return _iso_hour(start), _iso_hour(start + 7 * DAY_MS + rng.randrange(24) * 3_600_000)

    def stats(kind: str, make) -> list[tuple[str, tuple]]:
        out = []
        for _ in range(requests):
            start, end, extra = make()
            query = f"from={start}&to={end}" + "".join(f"&{k}={v}" for k, v in extra.items())
            out.append((f"/api/{kind}.json?{query}".replace(":", "%3A"), (kind, start, end,
                                                                          extra)))
        return out

    def whole_store():
        return (*whole, {})

    def one_day():
        return (*day_range(), {})

    def one_week():
        return (*week_range(), {})

    def one_sip():
        return (*whole, {"sip": str(1000 + rng.randrange(200))})

    def hours_of_a_day():
        return (*day_range(), {})

    def days_of_the_store():
        return (*whole, {"by": "day"})

    def operators(body: dict) -> object:
        return [(o["sip"], o["offered"], o["answered"], o["talk_s"]) for o in body["operators"]]

    def periods(body: dict) -> object:
        key = "hours" if body["by"] == "hour" else "days"
        return [(p[body["by"]], p["total"]) for p in body[key]]

    return [
        h.Case("operatorStats 35 days", stats("operatorStats", whole_store), None, operators),
        h.Case("operatorStats 1 day", stats("operatorStats", one_day), None, operators),
        h.Case("operatorStats 1 week", stats("operatorStats", one_week), None, operators),
        h.Case("operatorStats 1 sip", stats("operatorStats", one_sip), None, operators),
        h.Case("callStats 1 day by hour", stats("callStats", hours_of_a_day), None, periods),
        h.Case("callStats 35 days by day", stats("callStats", days_of_the_store), None,
               periods),
    ]  # fmt: skip


def answer_of(store, args: tuple) -> object:
    """The identity of the answer to one request, from the store itself."""
    from agi_app.store.testing import fired
    from agi_app.web.stats import operator_figures

    kind, start, end, extra = args
    if kind == "operatorStats":
        rows = fired(store.operator_stats(start, end, extra.get("sip")))
        return [(f["sip"], f["offered"], f["answered"], f["talk_s"])
                for f in map(operator_figures, rows)]  # fmt: skip
    by = extra.get("by", "hour")
    found = fired(store.call_outcomes(start, end, by))
    label = (lambda p: f"{p}:00:00.000Z") if by == "hour" else (lambda p: p)
    return [(label(p["period"]), sum(p["counts"].values())) for p in found]


def plain_way(path: Path, start: str, end: str) -> tuple[float, int]:
    """The whole store's operator figures computed from the history itself
    (the query a store without summary tables would run): seconds, rows."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    started = time.perf_counter()
    rows = conn.execute(
        "SELECT c.sip, count(*), count(p.id), "
        "sum((julianday(p.time) - julianday(o.time)) * 86400000), sum(c.talk_seconds) "
        "FROM call_status o JOIN calls c ON c.call_id = o.call_id "
        "LEFT JOIN call_status p ON p.call_id = o.call_id AND p.status = 'OPERATOR_PICKUP' "
        "WHERE o.status = 'OPERATOR_CALLTO' AND o.time >= ? AND o.time < ? GROUP BY c.sip",
        (start, end),
    ).fetchall()
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, len(rows)


def writer_cost(calls: int) -> dict[str, float]:
    """Microseconds per ``add_status`` on a fresh file store, with the
    statistics triggers and without them."""
    from agi_app.store.schema import STATS_TRIGGERS
    from agi_app.store.testing import fired

    out = {}
    for with_triggers in (True, False):
        with tempfile.TemporaryDirectory() as folder:
            store = sync_store(Path(folder) / "w.sqlite3")
            if not with_triggers:
                for trigger in STATS_TRIGGERS:
                    store._conn.execute(f"DROP TRIGGER {trigger}")
            steps = [s for s, _ in h.STEPS[1:]]
            elapsed, n = 0.0, 0
            for i in range(calls):
                fired(store.create_call(call_id=f"w{i}", kind="makeCall", sip=str(1000 + i % 200),
                                        phone="380631110000", order_id=None, external_key=None,
                                        params={}))  # fmt: skip
                for status in steps:
                    talk = 42.0 if status == "FINISH" else None
                    started = time.perf_counter()
                    fired(store.add_status(f"w{i}", status, talk_seconds=talk))
                    elapsed += time.perf_counter() - started
                    n += 1
            out["with" if with_triggers else "without"] = elapsed / n * 1e6
            fired(store.close())
    return out


# -- the run ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per kind (best kept)")
    parser.add_argument("--quick", action="store_true", help="300 requests, one round")
    parser.add_argument("--concurrency", type=int, default=h.CONCURRENCY)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.cpu, str(h.CACHE_DIR / "stats-server.log"))
        return 0
    import psutil

    requests, rounds = (300, 1) if args.quick else (args.requests, args.rounds)
    warmup = min(100, requests // 5)
    path, counts = h.ensure_store(args.calls)
    cases = build_cases(requests, counts["calls"])
    store = sync_store(path)
    server, port = start_server(path, cpu=1)
    h._pin(0)
    h._say(f"server pid {server.pid} on CPU 1, load generator on CPU 0; load average "
           f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    try:
        process = psutil.Process(server.pid)
        import asyncio

        async def check(case: h.Case) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for request_path, request_args in case.requests[:10]:
                    status, body = await h._get(reader, writer, request_path)
                    if status != 200:
                        raise SystemExit(f"{case.name}: {request_path}: {status} {body[:300]!r}")
                    got = case.identity(json.loads(body))
                    if got != answer_of(store, request_args):
                        raise SystemExit(f"{case.name}: {request_path}: HTTP and store differ")
            finally:
                writer.close()

        for case in cases:
            asyncio.run(check(case))
        for n in range(rounds):
            h._say(f"round {n + 1}/{rounds}: {requests:,} requests per kind at concurrency "
                   f"{args.concurrency}")  # fmt: skip
            for case in cases:
                case.rounds.append(h._load(port, case, args.concurrency, warmup, process))
        for case in cases:
            for i, (_, request_args) in enumerate(case.requests):
                started = time.perf_counter()
                answer_of(store, request_args)
                if i >= warmup:
                    case.floor_ms.append((time.perf_counter() - started) * 1000)
    finally:
        server.terminate()
        server.communicate(timeout=10)
    head = (f"{'request':26} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'CPU/req':>8} "
            f"{'store p50':>9} {'store p99':>9}  p99<{TARGET_P99_MS:g}ms")  # fmt: skip
    h._say("")
    h._say(head)
    h._say("-" * len(head))
    ok = True
    for c in cases:
        r = c.best
        p50, p99 = statistics.median(r.http_ms), r.p99
        met = p99 < TARGET_P99_MS and not r.errors
        ok &= met
        h._say(f"{c.name:26} {len(c.requests) / r.seconds:6.0f} {p50:7.2f} {p99:7.2f} "
               f"{r.server_cpu / len(c.requests) * 1e6:6.0f}us "
               f"{statistics.median(c.floor_ms):9.3f} {h.percentile(c.floor_ms, 0.99):9.3f}  "
               f"{'met' if met else 'MISSED'}{f' ({r.errors} errors)' if r.errors else ''}")
    _, start, end, _ = cases[0].requests[0][1]
    seconds, n = plain_way(path, start, end)
    h._say(f"the same 35-day figures from the history itself (no summary tables): "
           f"{seconds * 1000:,.0f} ms for {n} operators")  # fmt: skip
    cost = writer_cost(300 if args.quick else 2000)
    h._say(f"status writer: add_status {cost['with']:.0f} us with the statistics triggers, "
           f"{cost['without']:.0f} us without")  # fmt: skip
    store.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
