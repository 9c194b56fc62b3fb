"""The floors of ``bench/call_load.py --floor`` (HTTP, FastAGI, store) do the
work they stand for: each bare server run briefly on loopback answers as
agi_app does, and the store floor writes a makeCall call's rows in the
transactions it is given."""

from __future__ import annotations

import json
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import fastagi_floor  # noqa: E402
import floor_parts  # noqa: E402
import store_floor  # noqa: E402


def _server(*argv: str) -> Iterator[tuple[subprocess.Popen, int]]:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening "), line
        yield proc, int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def http_port() -> Iterator[int]:
    for _proc, port in _server(str(BENCH / "http_floor.py"), "--port", "0"):
        yield port


@pytest.fixture
def fastagi_port() -> Iterator[int]:
    for _proc, port in _server(str(BENCH / "fastagi_floor.py"), "serve", "--port", "0"):
        yield port


# -- HTTP ---------------------------------------------------------------------


def test_http_floor_answers_makecall_like_agi_app(http_port: int) -> None:
    query = urllib.parse.urlencode(floor_parts.makecall_params(7))
    with urllib.request.urlopen(
        f"http://127.0.0.1:{http_port}/api/makeCall.json?{query}", timeout=5
    ) as r:
        body = r.read()
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-store"
    assert floor_parts.answer_ok(200, body)
    assert len(json.loads(body)["call_id"]) == 23


def test_http_floor_refuses_a_request_without_extension_and_phone(http_port: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/makeCall.json", timeout=5)
    assert raised.value.code == 400


def test_answer_ok() -> None:
    good = b'{"call_id":"1a24ed5b09896263ab9b974"}'
    assert floor_parts.answer_ok(200, good)
    assert not floor_parts.answer_ok(500, good)
    assert not floor_parts.answer_ok(200, good[:-1] + b" ")  # right size, not JSON
    assert not floor_parts.answer_ok(200, b'{"error":"x"}')


# -- FastAGI ------------------------------------------------------------------


def _lines(sock: socket.socket) -> Iterator[bytes]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line + b"\n"
        data = sock.recv(4096)
        if not data:
            if buffer:
                yield buffer
            return
        buffer += data


def test_fastagi_floor_runs_the_makecall_script_then_closes(fastagi_port: int) -> None:
    env_parts = fastagi_floor.environment(12, fastagi_port)
    env = dict(
        line.split(": ", 1)
        for line in b"".join(env_parts).decode().splitlines()
        if line
    )
    expected = fastagi_floor.script(env)
    assert len(expected) == fastagi_floor.COMMANDS == 8
    assert expected[4] == b'EXEC Dial "PJSIP/380630000012@pstn,40,g"\n'
    with socket.create_connection(("127.0.0.1", fastagi_port), timeout=5) as sock:
        for part in env_parts:
            sock.sendall(part)
        got = []
        for line in _lines(sock):
            got.append(line)
            sock.sendall(fastagi_floor.reply(line))
    assert got == expected  # every command, in order, then the server closed


def test_fastagi_floor_stops_at_a_failed_command(fastagi_port: int) -> None:
    with socket.create_connection(("127.0.0.1", fastagi_port), timeout=5) as sock:
        for part in fastagi_floor.environment(1, fastagi_port):
            sock.sendall(part)
        got = []
        for line in _lines(sock):
            got.append(line)
            sock.sendall(b"510 Invalid or unknown command\n")
    assert got == [b'EXEC Playback "agi_app/please-wait"\n']


def test_fastagi_driver_counts_complete_sessions(fastagi_port: int) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / "fastagi_floor.py"), "drive", "--port", str(fastagi_port),
         "--calls", "5", "--rate", "200", "--scale", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["sessions=5", "commands=40", "failed=0"]


# -- store --------------------------------------------------------------------


def test_batches_average_what_is_asked() -> None:
    jobs = len(store_floor.call_jobs(0))
    for per_call in (1.0, 4.5, 6.5, 10.2, float(jobs)):
        counts = [store_floor.batches_of(n, per_call, jobs) for n in range(100)]
        assert sum(counts) == round(100 * per_call)
        assert all(1 <= c <= jobs for c in counts)
    assert store_floor.batches_of(0, 50.0, jobs) == jobs  # no more than there are jobs


def test_group_keeps_every_statement_in_order() -> None:
    jobs = store_floor.call_jobs(3)
    flat = [s for job in jobs for s in job]
    for batches in range(1, len(jobs) + 1):
        grouped = store_floor.group(jobs, batches)
        assert len(grouped) == batches
        assert all(grouped)
        assert [s for tx in grouped for s in tx] == flat


def test_schedule_keeps_each_calls_order_and_rate() -> None:
    plan = store_floor.schedule(20, 50.0, 6.5)
    assert len(plan) == 130
    assert [at for at, _ in plan] == sorted(at for at, _ in plan)
    first = [tx for _, tx in plan if any(p == "CALL" for _, params in tx for p in params)]
    assert len(first) == 20  # one transaction per call holds its first status


def test_store_floor_writes_a_calls_rows_in_the_transactions_given(tmp_path: Path) -> None:
    conn = store_floor.open_store(str(tmp_path / "floor.sqlite3"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    counts = [0, 0]
    thread = threading.Thread(target=store_floor.writer, args=(conn, jobs, counts))
    thread.start()
    try:
        line = store_floor.run(conn, jobs, counts, 4, 1000.0, 6.5, "t-", spacing=0.001)
        again = store_floor.run(conn, jobs, counts, 2, 1000.0, 6.5, "u-", spacing=0.001)
    finally:
        jobs.put(None)
        thread.join()
    assert line.split() == [
        "done", "calls=4", "transactions=26", "statements=112",
        "rows=calls:4,call_status:24,recordings:4,operator_history:8",
    ]  # fmt: skip
    assert again.startswith("done calls=2 ")
    check = sqlite3.connect(tmp_path / "floor.sqlite3")
    chains = check.execute(
        "SELECT group_concat(status, ' ') FROM (SELECT call_id, status FROM call_status "
        "ORDER BY id) GROUP BY call_id"
    ).fetchall()
    assert {c for (c,) in chains} == {
        "CALL OPERATOR_CALLTO OPERATOR_PICKUP CLIENT_CALLTO CLIENT_PICKUP FINISH"
    }
    assert check.execute(
        "SELECT count(*) FROM calls WHERE final_status = 'FINISH' AND length(call_id) = 23"
    ).fetchone()[0] == 6
    assert check.execute("SELECT count(*) FROM recordings WHERE size = 44").fetchone()[0] == 6


def test_store_floor_hot_runs_the_same_statements(tmp_path: Path) -> None:
    conn = store_floor.open_store(str(tmp_path / "hot.sqlite3"))
    jobs = len(store_floor.call_jobs(0))
    line = store_floor.hot(conn, 3, jobs, "h-")
    assert line.startswith(f"hot calls=3 transactions={3 * jobs} ms_per_call=")
    assert store_floor.table_rows(conn) == {t: 3 * n for t, n in store_floor.ROWS_PER_CALL.items()}


# -- the three together, as call_load.py runs them -----------------------------


def test_batches_for_takes_the_nearest_rate() -> None:
    table = {25.0: 10.0, 50.0: 6.0}
    assert floor_parts.batches_for(10, table) == 10.0
    assert floor_parts.batches_for(40, table) == 6.0
    assert floor_parts.batches_for(37.5, table) == 10.0
    assert floor_parts.batches_for(100, table) == 6.0


@pytest_twisted.ensureDeferred
async def test_parts_run_does_each_parts_work(tmp_path: Path) -> None:
    import treq
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    parts = floor_parts.start(tmp_path)
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        used, problems = await floor_parts.run(
            reactor, parts, 100.0, 6, 1, lambda pid: 0.0,
            lambda url, params: treq.get(url, params=params, pool=pool), delays=0,
        )  # fmt: skip
        assert problems == []
        assert set(used) == {*floor_parts.PARTS, "store process", "http+fastagi shared"}
        # a FastAGI server that is not there: reported, not counted as done
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            parts.fastagi_port = free.getsockname()[1]
        parts.shared_ports = (parts.shared_ports[0], parts.fastagi_port)
        _, problems = await floor_parts.run(
            reactor, parts, 100.0, 2, 1, lambda pid: 0.0,
            lambda url, params: treq.get(url, params=params, pool=pool), delays=0,
        )  # fmt: skip
        assert [p.split(":")[0] for p in problems] == ["FastAGI floor", "shared floor, FastAGI"]
    finally:
        await pool.closeCachedConnections()
        parts.stop()
    rows = sqlite3.connect(tmp_path / "store_floor.sqlite3").execute(
        "SELECT count(*) FROM call_status"
    ).fetchone()[0]
    assert rows == 6 * 8
