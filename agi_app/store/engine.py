"""The SQLite engine under :class:`agi_app.store.sqlite.SQLiteStore`: the
connection, its single writer thread, the inline read-only connection with
its time budget, and the row helpers every domain's SQL uses.

One connection, used by one dedicated worker thread: every public method
queues a small function on that thread and returns a Deferred that fires on
the reactor thread.  Because a single thread applies the writes one after
another, a read-check-write sequence (one final status per call, one
history row per operator state change) needs no further locking, and ids
become visible in the order they are assigned (the ``callHistory`` cursor
relies on it).

WAL with ``synchronous=NORMAL``: a committed transaction survives the
process being killed (it may be lost only if the whole machine loses power).

Work is handed to the thread in batches, one transaction each: what the
reactor queues in one turn (the statuses, operator states and outbox rows
that a burst of AMI events, FastAGI replies and requests gives) goes over
together when the turn ends, and what is queued while a batch runs goes
as the next batch.  One hand-over each way per batch instead of per statement:
under load those hand-overs (a thread wake-up and the GIL passed back and
forth, then a wake-up of the reactor) cost more than the SQL.  Each piece
of work runs in a savepoint of its own (a batch of one: in the transaction
alone), so one that fails is undone alone and fails its own Deferred; the
Deferreds fire only after the batch has committed, so whatever depends on
a write (an answer, an event, the next status) still comes after it is
durable.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

from sqlite_utils import Database
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from agi_app.store.base import Page, StoreError, iso_time
from agi_app.store.schema import migrate

__all__ = ["SQLiteEngine", "WriterThread", "page_offset", "snapshot"]

_T = TypeVar("_T")

# The text of each INSERT the store makes (a handful: tables and column
# lists come from the store's modules), made once.
_INSERTS: dict[tuple[str, tuple[str, ...]], str] = {}

# How often (in SQLite VM steps) an inline read checks its time budget.
_PROGRESS_STEPS = 1000


class SQLiteEngine:
    """One SQLite file, its writer thread and its budgeted inline reads.

    ``reactor`` delivers results from the worker thread; ``clock`` (default:
    the reactor) gives the time of entries written without an explicit one.
    ``worker`` runs the statements, one at a time in the order they were
    queued (default: a thread of the store's own; :mod:`agi_app.store.testing`
    passes one that runs them at once on the calling thread).
    Call :meth:`open` before use and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        path: str,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime | None = None,
        busy_timeout_ms: int = 5000,
        read_budget_us: int = 2000,
        worker: ThreadPool | None = None,
    ):
        self.path = path
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._db: Database | None = None
        self._worker = worker
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: object | None = None
        #: see :meth:`_read`; 0: every read on the worker thread
        self.read_budget = max(0, read_budget_us) / 1e6
        self._reader: sqlite3.Connection | None = None
        self._deadline = 0.0
        #: inline reads that ran over the budget and went to the worker thread
        self.reads_moved = 0
        # Work queued for the worker thread, not handed over yet: (fn, args, Deferred).
        self._queue: list[tuple[Callable[..., Any], tuple, Deferred]] = []
        self._in_flight = False
        self._flush_call: Any = None
        self._idle: list[Deferred] = []
        # How work waits for the end of the reactor turn; a reactor without
        # callLater (MemoryStore's same-thread stand-in) hands it over at once.
        self._later = getattr(reactor, "callLater", None)
        #: batches handed to the worker thread, and pieces of work in them
        self.batches = 0
        self.batched = 0

    # -- lifetime ---------------------------------------------------------

    def open(self) -> None:
        """Open the file (creating its folder), set the pragmas, migrate, and
        start the worker thread.  Blocking: meant for startup."""
        if self._pool is not None:
            raise StoreError("store already open")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below is
        # either one autocommitted statement or inside an explicit atomic().
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            db = Database(conn, execute_plugins=False)
            db.enable_wal()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._db = conn, db
        if self.read_budget > 0 and self.path != ":memory:":
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only = ON")
            reader.execute("PRAGMA busy_timeout = 0")
            reader.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            self._reader = reader
        # From here on only the worker thread touches the connection.
        self._pool = (
            self._worker if self._worker is not None else WriterThread("agi_app-store")  # type: ignore[assignment]
        )
        self._pool.start()
        # A worker thread left running would keep the process from exiting.
        add_trigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._shutdown_trigger = add_trigger("before", "shutdown", self.close)

    def close(self) -> Deferred[None]:
        """Let queued work finish, close the connection, stop the worker."""
        pool = self._pool
        if pool is None:
            return succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)  # type: ignore[attr-defined]
            self._shutdown_trigger = None
        self._pool = None  # refuse new work from now on
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        # Queued work first: it was accepted, so it is written.
        d = self._drained(pool)
        d.addCallback(lambda _: deferToThreadPool(self._reactor, pool, self._close_connection))

        def stop(result: object) -> object:
            pool.stop()
            return result

        return d.addBoth(stop)

    def _close_connection(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = self._db = None

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Queue ``fn(*args)`` for the worker thread (see the module's
        docstring); a Deferred firing with its result once committed."""
        if self._pool is None:
            return fail(StoreError("store is not open"))
        d: Deferred[_T] = Deferred()
        self._queue.append((fn, args, d))
        if not self._in_flight and self._flush_call is None:
            if self._later is None:
                self._flush(self._pool)
            else:
                self._flush_call = self._later(0, self._flush_turn)
        return d

    def _flush_turn(self) -> None:
        self._flush_call = None
        if self._pool is not None and not self._in_flight:
            self._flush(self._pool)

    def _flush(self, pool: ThreadPool) -> None:
        """Hand everything queued to the worker thread as one batch."""
        jobs, self._queue = self._queue, []
        if not jobs:
            for waiter in self._idle:
                waiter.callback(None)
            self._idle.clear()
            return
        self._in_flight = True
        self.batches += 1
        self.batched += len(jobs)

        def done(ok: bool, results: Any) -> None:
            self._reactor.callFromThread(self._delivered, pool, jobs, ok, results)

        pool.callInThreadWithCallback(done, self._batch, [(fn, args) for fn, args, _ in jobs])

    def _delivered(self, pool: ThreadPool, jobs: list, ok: bool, results: Any) -> None:
        self._in_flight = False
        if not ok:  # the batch itself failed (its commit): every piece with it
            results = [(False, results)] * len(jobs)
        for (_fn, _args, d), (good, value) in zip(jobs, results, strict=True):
            if good:
                d.callback(value)
            else:
                d.errback(value)
        # What came in meanwhile goes now (callbacks above may have added more).
        if not self._in_flight and (self._queue or self._idle):
            if self._flush_call is not None:
                self._flush_call.cancel()
                self._flush_call = None
            self._flush(pool)

    def _batch(self, jobs: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """On the worker thread: the jobs in one transaction, each in a
        savepoint; ``(True, result)`` or ``(False, Failure)`` per job."""
        conn = self._conn
        assert conn is not None
        if len(jobs) == 1:
            # (most batches under a steady load: the transaction is the job's
            # savepoint, two statements fewer)
            fn, args = jobs[0]
            conn.execute("BEGIN")
            try:
                result = fn(*args)
            except BaseException as e:
                failure = Failure()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(e, Exception):
                    raise
                return [(False, failure)]
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return [(True, result)]
        results: list[tuple[bool, Any]] = []
        # jobs from here on are in the open transaction (not committed yet)
        first = 0
        conn.execute("BEGIN")
        try:
            for fn, args in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    result = fn(*args)
                except Exception:
                    failure = Failure()
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        results.append((False, failure))
                        continue
                    # The error ended the whole transaction (SQLite does so
                    # on a full disk, say): the jobs before it in it are undone too.
                    results[first:] = [(False, failure)] * (len(results) - first)
                    results.append((False, failure))
                    first = len(results)
                    conn.execute("BEGIN")
                else:
                    conn.execute("RELEASE job")
                    results.append((True, result))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _drained(self, pool: ThreadPool) -> Deferred[None]:
        """Fires once everything queued has been handed over and done."""
        if not self._in_flight and not self._queue:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        if not self._in_flight:
            if self._flush_call is not None:
                self._flush_call.cancel()
                self._flush_call = None
            self._flush(pool)
        return d

    def _read(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run the read-only ``fn(conn, *args)`` for the CRM API.

        On one CPU core, handing a query to the worker thread and its result
        back costs the reactor more than an index-bounded query itself
        (about 0.2 ms of GIL hand-overs and wake-ups per request, against
        0.02-0.15 ms for the queries of the history API): so these reads run
        right here, on a read-only connection of their own (WAL: they never
        wait for the writer, and see every committed write), within a time
        budget (``[store] read_budget_us``).  SQLite interrupts a read that
        runs over it, and the read is then done again on the worker thread:
        a cold cache or an unusually large answer never holds the reactor
        for longer than the budget.
        """
        reader = self._reader
        if reader is None:
            if self._pool is None:
                return fail(StoreError("store is not open"))
            return self._run(fn, self._conn, *args)
        self._deadline = perf_counter() + self.read_budget
        try:
            result = fn(reader, *args)
        except sqlite3.OperationalError:
            # Over the budget ("interrupted"), or the file busy for a moment
            # (this connection never waits for a lock): the worker thread,
            # which may wait, does it again (and fails if it fails there too).
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            self.reads_moved += 1
            return self._run(fn, self._conn, *args)
        except Exception:
            return fail()
        return succeed(result)

    def _over_budget(self) -> bool:
        return perf_counter() > self._deadline

    def _now(self) -> str:
        return iso_time(self._clock.seconds())

    # -- helpers run on the worker thread -----------------------------------

    def _select(
        self, sql: str, params: tuple | list = (), conn: sqlite3.Connection | None = None
    ) -> list[dict[str, Any]]:
        conn = conn or self._conn
        assert conn is not None
        cursor = conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        # fetchall() steps through the rows in C; every row has len(names)
        # columns by construction (100 rows: 150 us, against 180 us iterating
        # the cursor with zip(strict=True)).
        return [dict(zip(names, row)) for row in cursor.fetchall()]  # noqa: B905

    def _scalar(
        self, sql: str, params: tuple | list = (), conn: sqlite3.Connection | None = None
    ) -> Any:
        conn = conn or self._conn
        assert conn is not None
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        # Plain INSERT rather than sqlite-utils' Table.insert, which inspects
        # the table on every call: measured 0.20 vs 0.58 ms per add_status.
        # Table and column names come from the store's modules, never from input.
        assert self._conn is not None
        columns = tuple(row)
        sql = _INSERTS.get((table, columns))
        if sql is None:
            sql = f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
            _INSERTS[(table, columns)] = sql
        return self._conn.execute(sql, tuple(row.values())).lastrowid

    def _newest_page(
        self,
        conn: sqlite3.Connection,
        table: str,
        id_column: str,
        columns: str,
        offset: int,
        limit: int,
    ) -> Page:
        """One page of a counted table (:data:`agi_app.store.schema.COUNTED`),
        newest (highest id) first, with the table's total.

        Ids come from AUTOINCREMENT and rows are only ever removed from the
        old end, if at all, so the ids are normally exactly ``lo..hi``: then
        the page is the id range ``hi - offset`` downwards, found through the
        primary key however deep it is.  If there are gaps (``hi - lo + 1``
        differs from the count), the page is found by OFFSET over the narrow
        id index instead.
        """
        # One read transaction: the count and the ids agree even if another
        # connection writes meanwhile.
        with snapshot(conn):
            total = self._scalar("SELECT n FROM row_counts WHERE name = ?", (table,), conn) or 0
            # Two subqueries: SQLite answers min() and max() from the index
            # ends only when each is alone in its SELECT.
            lo, hi = conn.execute(
                f"SELECT (SELECT min({id_column}) FROM {table}), "
                f"(SELECT max({id_column}) FROM {table})"
            ).fetchone()
            if not total or offset >= total:
                return Page(total, [])
            if hi - lo + 1 == total:
                top = hi - offset
                rows = self._select(
                    f"SELECT {columns} FROM {table} WHERE {id_column} BETWEEN ? AND ? "
                    f"ORDER BY {id_column} DESC",
                    (max(lo, top - limit + 1), top),
                    conn,
                )
            else:
                rows = self._select(
                    f"SELECT {columns} FROM {table} WHERE {id_column} IN ("
                    f" SELECT {id_column} FROM {table} INDEXED BY {table}_id"
                    f" ORDER BY {id_column} DESC LIMIT ? OFFSET ?) ORDER BY {id_column} DESC",
                    (limit, offset),
                    conn,
                )
        return Page(total, rows)


class WriterThread:
    """The store's one worker thread, with the part of
    :class:`~twisted.python.threadpool.ThreadPool`'s interface the engine
    uses (``start``, ``stop``, ``callInThreadWithCallback``).

    A thread pool of one thread did the same, but every hand-over went
    through its team, coordinator and worker objects and a lock-and-condition
    queue on both threads -- under load about as much CPU as the batch of
    SQL it carried.  Here a hand-over is one put on a
    :class:`queue.SimpleQueue` (in C).  Work runs in the order it was handed
    over; ``stop`` lets what was handed over finish, then joins the thread.
    """

    _log = Logger(namespace="agi_app.store")

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: stopped: further work is dropped, as ThreadPool does once joined
        self.joined = False

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None and not self.joined:
            # A daemon: a store nobody closed (a crash, an interrupted test)
            # must not keep the process from exiting.  What was acknowledged
            # is committed; a transaction cut short is rolled back by SQLite.
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the work handed over, then end the thread and wait for it."""
        self.joined = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], object] | None,
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``fn(*args, **kwargs)`` on the thread, then ``on_result(True,
        result)`` or ``on_result(False, Failure)`` there."""
        if self.joined:
            return
        self._jobs.put((on_result, fn, args, kwargs))

    def _loop(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            on_result, fn, args, kwargs = job
            try:
                result, ok = fn(*args, **kwargs), True
            except BaseException:
                result, ok = Failure(), False
            if on_result is not None:
                try:
                    on_result(ok, result)
                except BaseException:
                    self._log.failure("store worker: result hand-over failed")
            elif not ok:
                self._log.failure("store worker: job failed", result)
            del job, result, on_result, fn, args, kwargs


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every statement inside sees the same snapshot
    (inside a transaction already, e.g. a batch of the worker thread, that
    one does)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def page_offset(page: int, per_page: int) -> int:
    """The row offset of a 1-based ``page``; ValueError for a page or page
    size below 1."""
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be >= 1")
    return (page - 1) * per_page
