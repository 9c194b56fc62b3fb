"""A floor for agi_app's store: the bare SQL one makeCall call writes, from
one writer thread fed by a queue, in a process of its own.

``bench/call_load.py --floor`` starts one of these and, right after the
load window of each rate, has it write as many calls as agi_app took, at
the same rate, while it reads the process's CPU from ``/proc``.  Per call
it runs the statements agi_app's store ran for a makeCall call on the
sandbox (its SQLite trace, steady state; see :func:`call_jobs`): the call
row, six status rows, the recording row and its two updates, two operator
state changes with their history rows, and the reads that go with them,
on agi_app's own schema (its tables, indexes and triggers:
:func:`agi_app.store.schema.migrate`) with agi_app's pragmas (WAL,
``synchronous = NORMAL``, foreign keys, recursive triggers).  The
statements of a call go in as many transactions as agi_app's writer
used per call at that rate (``batches``: agi_app's batches at 25 and 50
calls/s, measured with ``call_load.py --breakdown``), each handed to the
writer thread with one put on a :class:`queue.SimpleQueue` at the time of
its place in the call, so the thread wakes up as agi_app's does.

What it leaves out of agi_app's store is what no floor needs: Deferreds,
results handed back to a reactor, a savepoint per piece of work, Python
dicts of the rows read.

Control, one line each on stdin (normally from call_load.py)::

    (at start: "ready TID", the writer thread's id)
    run CALLS RATE BATCHES    ->  "done calls=... transactions=... statements=... rows=..."
    hot CALLS BATCHES         ->  "hot calls=... transactions=... ms_per_call=..."
    quit

``hot`` runs the same statements back to back on the main thread (no
queue, no waiting, a warm cache): the SQL alone, below any floor at a
rate.

The floor is the writer thread's CPU (``/proc/PID/task/TID/stat``): the
main thread, which sleeps until each transaction's time and puts it on the
queue, stands in for agi_app's reactor, which is awake anyway for the event
that causes the write.

Usage (a quick check by hand)::

    echo "run 100 50 6.5" | .venv/bin/python bench/store_floor.py /tmp/floor.sqlite3
"""

from __future__ import annotations

import json
import math
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: seconds from one of a call's transactions to its next: the call's writes
#: spread over its life (about 3 s with the sandbox's phones), so calls overlap
SPACING = 0.25

_CALL = (
    "call_id, kind, sip, phone, order_id, external_key, params, created_at, final_status, "
    "finished_at, talk_seconds, pbx"
)
_INSERT_CALL = f"INSERT INTO calls ({_CALL}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?)"
_INSERT_STATUS = (
    "INSERT INTO call_status (call_id, order_id, status, time, detail, pbx) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_CALL_STATE = "SELECT order_id, final_status, pbx FROM calls WHERE call_id = ?"
_OPERATOR = "SELECT status FROM operators WHERE pbx = ? AND sip = ?"
_UPSERT_OPERATOR = (
    "INSERT INTO operators (pbx, sip, status, since) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pbx, sip) DO UPDATE SET status = excluded.status, since = excluded.since"
)
_OPERATOR_HISTORY = "INSERT INTO operator_history (sip, status, time, pbx) VALUES (?, ?, ?, ?)"
_INSERT_RECORDING = (
    "INSERT INTO recordings (call_id, order_id, external_key, sip, phone, path, created_at, "
    "duration, size, pbx) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)"
)
_RECORDING = (
    "SELECT record_id, call_id, order_id, external_key, sip, phone, path, created_at, "
    "duration, size, pbx FROM recordings WHERE record_id = "
    "(SELECT max(record_id) FROM recordings WHERE call_id = ?)"
)

#: rows one call adds, by table (what :func:`run` checks after writing)
ROWS_PER_CALL = {"calls": 1, "call_status": 6, "recordings": 1, "operator_history": 2}

Statement = tuple[str, tuple]


def call_jobs(n: int, tag: str = "f") -> list[list[Statement]]:
    """The store's pieces of work for call ``n`` of a makeCall, in order, as
    agi_app's store ran them (its SQLite trace on the sandbox, steady
    state): each a list of ``(sql, parameters)``.  ``tag`` keeps the keys of
    one run apart from another's in the same file."""
    call_id = f"{tag}{n:0{23 - len(tag)}x}"  # 23 characters, as agi_app's
    sip = f"10{n % 10:02d}"
    phone = f"38063{n % 10_000_000:07d}"
    order, key, pbx = f"o{n}", f"k{n}-{tag}", "default"
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    params = json.dumps(  # the call's parameters as agi_app keeps them (canonical JSON)
        {"call_time_to_ext": 30, "caller_id_for_employee": None, "external_key": key,
         "first": sip, "first_is_phone": False, "group": [], "kind": "makeCall",
         "limit_call_time": None, "order_id": order, "phone": phone,
         "playback_waiting": True, "trunk": "pstn"},
        separators=(",", ":"), sort_keys=True,
    )  # fmt: skip
    path = f"/var/spool/asterisk/monitor/{order}_{call_id}.wav"

    def status(name: str, detail: str | None = None) -> list[Statement]:
        return [(_CALL_STATE, (call_id,)),
                (_INSERT_STATUS, (call_id, order, name, now, detail, pbx))]  # fmt: skip

    def operator(state: str) -> list[Statement]:
        return [(_OPERATOR, (pbx, sip)), (_UPSERT_OPERATOR, (pbx, sip, state, now)),
                (_OPERATOR_HISTORY, (sip, state, now, pbx))]  # fmt: skip

    full_call = (f"SELECT {_CALL} FROM calls WHERE call_id = ?", (call_id,))
    return [
        [(f"SELECT {_CALL} FROM calls WHERE external_key = ?", (key,)),
         (_INSERT_CALL, (call_id, "makeCall", sip, phone, order, key, params, now, pbx)),
         (_INSERT_STATUS, (call_id, order, "CALL", now, None, pbx))],
        status("OPERATOR_CALLTO"),
        operator("inuse"),
        status("OPERATOR_PICKUP"),
        [(_OPERATOR, (pbx, sip))],  # a device state with no change
        [full_call, (_INSERT_RECORDING, (call_id, order, key, sip, phone, path, now, pbx))],
        status("CLIENT_CALLTO"),
        status("CLIENT_PICKUP"),
        [*status("FINISH", "talk 2 s"),
         ("UPDATE calls SET final_status = ?, finished_at = ?, talk_seconds = ? "
          "WHERE call_id = ?", ("FINISH", now, 2.004, call_id))],
        operator("online"),
        # the recording's file closed: its size and length, then the call's
        # recordings read back for the CRM's notification (agi_app knows the
        # record_id; here the index on (call_id, record_id) finds it)
        [("UPDATE recordings SET size = ? WHERE record_id = "
          "(SELECT max(record_id) FROM recordings WHERE call_id = ?)", (44, call_id)),
         ("UPDATE recordings SET duration = ? WHERE record_id = "
          "(SELECT max(record_id) FROM recordings WHERE call_id = ?)", (2.0, call_id)),
         (_RECORDING, (call_id,)), full_call,
         ("SELECT record_id, path, created_at, duration, size FROM recordings "
          "WHERE call_id = ? ORDER BY record_id", (call_id,))],
    ]  # fmt: skip


def batches_of(n: int, per_call: float, jobs: int) -> int:
    """How many transactions call ``n`` gets so that calls ``0..N`` average
    ``per_call`` (some calls one more than others), between 1 and ``jobs``."""
    def upto(k: int) -> int:  # (a hair added: 100 * 10.2 is 1019.999... in binary)
        return math.floor(k * per_call + 1e-9)

    return max(1, min(jobs, upto(n + 1) - upto(n)))


def group(jobs: list[list[Statement]], batches: int) -> list[list[Statement]]:
    """``jobs`` in ``batches`` transactions of consecutive jobs, as even as
    can be (agi_app's writer groups what came in meanwhile)."""
    batches = max(1, min(batches, len(jobs)))
    out: list[list[Statement]] = []
    for b in range(batches):
        part = jobs[b * len(jobs) // batches : (b + 1) * len(jobs) // batches]
        out.append([statement for job in part for statement in job])
    return out


def schedule(calls: int, rate: float, per_call: float, tag: str = "f",
             spacing: float = SPACING) -> list[tuple[float, list[Statement]]]:  # fmt: skip
    """Every transaction of ``calls`` calls placed ``rate`` a second: (seconds
    from the start, its statements), in time order, a call's own ``spacing``
    apart and in their order."""
    out = []
    for n in range(calls):
        jobs = call_jobs(n, tag)
        for k, tx in enumerate(group(jobs, batches_of(n, per_call, len(jobs)))):
            out.append((n / rate + k * spacing, tx))
    out.sort(key=lambda item: item[0])  # stable: a call's own keep their order
    return out


def open_store(path: str) -> sqlite3.Connection:
    """agi_app's file as its store opens it: pragmas, then its schema."""
    from agi_app.store.schema import migrate

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA recursive_triggers = on")
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    # the sandbox's ten operators, known before any call (agi_app's start-up)
    conn.execute("BEGIN")
    for i in range(10):
        conn.execute(_UPSERT_OPERATOR, ("default", f"10{i:02d}", "online", "-"))
    conn.execute("COMMIT")
    return conn


def writer(conn: sqlite3.Connection, jobs: queue.SimpleQueue, counts: list[int]) -> None:
    """The writer thread: one transaction per item, until ``None``; an
    :class:`threading.Event` is set when reached (everything before it done)."""
    get, execute = jobs.get, conn.execute
    while True:
        tx = get()
        if tx is None:
            return
        if isinstance(tx, threading.Event):
            tx.set()
            continue
        execute("BEGIN")
        for sql, params in tx:
            execute(sql, params).fetchall()
        execute("COMMIT")
        counts[0] += 1
        counts[1] += len(tx)


def table_rows(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ROWS_PER_CALL}


def run(conn: sqlite3.Connection, jobs: queue.SimpleQueue, counts: list[int], calls: int,
        rate: float, per_call: float, tag: str, spacing: float = SPACING) -> str:  # fmt: skip
    """Feed ``calls`` calls at ``rate`` to the writer thread, wait until it
    has committed them, check the rows; the result line."""
    plan = schedule(calls, rate, per_call, tag, spacing)  # made before the clock starts
    before, counts0 = table_rows(conn), list(counts)
    start = time.monotonic()
    for at, tx in plan:
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        jobs.put(tx)
    done = threading.Event()
    jobs.put(done)
    done.wait()
    after = table_rows(conn)
    added = {t: after[t] - before[t] for t in after}
    ok = all(added[t] == n * calls for t, n in ROWS_PER_CALL.items())
    return (f"{'done' if ok else 'wrong'} calls={calls} transactions={counts[0] - counts0[0]} "
            f"statements={counts[1] - counts0[1]} rows="
            + ",".join(f"{t}:{n}" for t, n in added.items()))  # fmt: skip


def hot(conn: sqlite3.Connection, calls: int, per_call: float, tag: str) -> str:
    """``calls`` calls' transactions back to back on this thread; its CPU per call."""
    plan = schedule(calls, 1.0, per_call, tag, spacing=0.0)
    started = time.thread_time()
    for _, tx in plan:
        conn.execute("BEGIN")
        for sql, params in tx:
            conn.execute(sql, params).fetchall()
        conn.execute("COMMIT")
    used = time.thread_time() - started
    return f"hot calls={calls} transactions={len(plan)} ms_per_call={1000 * used / calls:.3f}"


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit("usage: store_floor.py FILE  (commands on stdin: run CALLS RATE BATCHES | quit)")
    conn = open_store(sys.argv[1])
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    counts = [0, 0]
    thread = threading.Thread(target=writer, args=(conn, jobs, counts), name="store-floor")
    thread.start()
    while thread.native_id is None:  # set as the thread starts
        time.sleep(0.001)
    # the writer thread's id: call_load.py reads its CPU apart from the feeding
    print(f"ready {thread.native_id}", flush=True)
    runs = 0
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            runs += 1
            if words[0] == "hot" and len(words) == 3:
                print(hot(conn, int(words[1]), float(words[2]), f"h{runs}-"), flush=True)
                continue
            if words[0] != "run" or len(words) != 4:
                print(f"error: unknown command {line.strip()!r}", flush=True)
                continue
            calls, rate, per_call = int(words[1]), float(words[2]), float(words[3])
            print(run(conn, jobs, counts, calls, rate, per_call, f"r{runs}-"), flush=True)
    finally:
        jobs.put(None)
        thread.join()
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
