"""The PostgreSQL engine under :class:`agi_app.store.postgres.PostgresStore`:
a pool of connections (psycopg 3 and psycopg_pool), the threads that use
them, and the row helpers every domain's SQL uses.

Nothing here runs SQL on the reactor thread: a query waits on the network,
however quick the server.  Two Twisted thread pools of the store's own share
the connection pool, whose size is theirs added up (so a thread never waits
for a connection):

- one **writer** thread runs every write, and the reads the application
  makes between writes (``get_call``, ``statuses``...), one at a time in
  the order they were called -- as SQLite's single worker thread does, so
  what the :class:`~agi_app.store.base.Store` interface promises about call
  order (a status queued after its call is written after it; an event
  enqueued first gets the smaller id) holds the same way;
- ``readers`` threads run the CRM API's history reads side by side
  (``_read``), each one SQL statement: one snapshot, one round trip.

Rules that must also hold between several processes on one database (CONTRACT
section 9: several nodes) are kept by the database itself: row locks for one
final status per call, a unique index for external keys, an advisory lock
for the order of history ids (see :mod:`agi_app.store.calls_pg`).

Connections are in autocommit mode: a single statement is its own
transaction, and a write of several statements opens one explicitly
(``with conn.transaction()``).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from agi_app.store.base import Page, StoreError, iso_time
from agi_app.store.pg_schema import migrate

__all__ = ["PostgresEngine", "daemon_pool", "json_object_sql", "newest_page_sql", "redact_url"]

_T = TypeVar("_T")


def daemon_pool(minthreads: int, maxthreads: int, name: str) -> ThreadPool:
    """A Twisted ThreadPool whose threads do not keep the process alive: a
    store or link nobody closed (a crash, an interrupted test) must not hang
    the exit.  PostgreSQL rolls back a transaction whose connection is cut."""
    pool = ThreadPool(minthreads, maxthreads, name=name)
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[method-assign]
    return pool


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class PostgresEngine:
    """One PostgreSQL database, its connection pool and its threads.

    ``url`` is a ``postgresql://user:pass@host:port/db`` URL (libpq's
    parameters may follow as a query).  ``reactor`` delivers results from the
    threads; ``clock`` (default: the reactor) gives the time of entries
    written without an explicit one.  ``readers`` is the number of threads
    (and connections) for the API's reads; one more thread and connection
    are the writer's.  Call :meth:`open` before use and :meth:`close` at
    shutdown.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime | None = None,
        readers: int = 4,
        connect_timeout: float = 10.0,
    ):
        if readers < 1:
            raise ValueError("readers must be >= 1")
        self.url = url
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._readers_size = readers
        self._connect_timeout = connect_timeout
        self._pool: Any = None  # psycopg_pool.ConnectionPool
        self._writer: ThreadPool | None = None
        self._readers: ThreadPool | None = None
        self._shutdown_trigger: object | None = None

    # -- lifetime ---------------------------------------------------------

    def open(self) -> None:
        """Connect, migrate, start the threads.  Blocking: meant for startup.
        Raises :class:`StoreError` when the database cannot be reached."""
        # Imported here: a store on SQLite never loads the driver.
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        if self._writer is not None:
            raise StoreError("store already open")
        size = self._readers_size + 1
        pool = ConnectionPool(
            self.url,
            min_size=size,
            max_size=size,
            open=False,
            name="agi_app-store",
            kwargs={"autocommit": True, "application_name": "agi_app"},
            configure=_configure,
            timeout=self._connect_timeout,
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
            with pool.connection() as conn:
                migrate(conn)
        except (PoolTimeout, psycopg.Error) as e:
            pool.close()
            raise StoreError(f"cannot use the database {redact_url(self.url)}: {e}") from e
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._writer = daemon_pool(1, 1, name="agi_app-store-writer")
        self._readers = daemon_pool(1, self._readers_size, name="agi_app-store-readers")
        self._writer.start()
        self._readers.start()
        # Threads left running would keep the process from exiting.
        add_trigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._shutdown_trigger = add_trigger("before", "shutdown", self.close)

    def close(self) -> Deferred[None]:
        """Let queued work finish, stop the threads, close the connections."""
        writer, readers, pool = self._writer, self._readers, self._pool
        if writer is None:
            return succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)  # type: ignore[attr-defined]
            self._shutdown_trigger = None
        self._writer = self._readers = self._pool = None  # refuse new work from now on

        def finish() -> None:
            # On the writer thread, after every queued write: the readers'
            # queued work runs before their stop (FIFO), then the pool goes.
            assert readers is not None
            readers.stop()
            pool.close()

        d = deferToThreadPool(self._reactor, writer, finish)

        def stop(result: object) -> object:
            writer.stop()
            return result

        return d.addBoth(stop)

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._writer is not None

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run ``fn(conn, *args)`` on the writer thread, after everything
        queued before it."""
        if self._writer is None:
            return fail(StoreError("store is not open"))
        return deferToThreadPool(
            self._reactor, self._writer, _with_connection, self._pool, fn, args
        )

    def _read(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run the read-only ``fn(conn, *args)`` on a reader thread (the
        API's reads: side by side, in no particular order with the writes;
        each sees every write whose Deferred has fired)."""
        if self._readers is None:
            return fail(StoreError("store is not open"))
        return deferToThreadPool(
            self._reactor, self._readers, _with_connection, self._pool, fn, args
        )

    def _now(self) -> str:
        return iso_time(self._clock.seconds())

    # -- helpers run on the threads -------------------------------------------

    @staticmethod
    def _select(conn, sql: str, params: tuple | list | dict = ()) -> list[dict[str, Any]]:
        cursor = conn.execute(sql, params)
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]  # noqa: B905

    @staticmethod
    def _scalar(conn, sql: str, params: tuple | list | dict = ()) -> Any:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _insert(conn, table: str, row: dict[str, Any], returning: str) -> int:
        # Table and column names come from the store's modules, never from input.
        sql = (
            f"INSERT INTO {table} ({', '.join(row)}) "
            f"VALUES ({', '.join(['%s'] * len(row))}) RETURNING {returning}"
        )
        return conn.execute(sql, tuple(row.values())).fetchone()[0]

    def _newest_page(
        self, conn, table: str, id_column: str, columns: str, offset: int, limit: int
    ) -> Page:
        """One page of a counted table, newest first, with its total (see
        :func:`newest_page_sql`)."""
        cursor = conn.execute(
            newest_page_sql(table, id_column, "row_to_json(p)::text", columns),
            {"offset": offset, "limit": limit},
        )
        total, text, _ = cursor.fetchone()
        return Page(total or 0, json.loads(text))


def _configure(conn: Any) -> None:
    """Settings of every connection of the pool, once, when it is made.

    ``plan_cache_mode = force_generic_plan``: psycopg prepares a statement
    the fifth time a connection runs it; PostgreSQL would still plan each
    execution anew for the actual parameters as long as it guesses that a
    plan for unknown ones costs more -- which it does for the history
    reads, whose planning (about 1.5 ms for a recordList page on this
    machine) then costs several times their execution (0.2-0.5 ms).  Every
    statement of the store is driven by an index whatever its parameters
    (a primary key range, ``(call_id, id)``, ``(order_id, id)``...), so the
    one plan made without them is the right one."""
    conn.execute("SET plan_cache_mode = force_generic_plan")


def _with_connection(pool: Any, fn: Callable[..., _T], args: tuple) -> _T:
    # ``pool`` was taken when the work was queued: work queued before
    # close() still runs, on connections that close() closes after it.
    with pool.connection() as conn:
        return fn(conn, *args)


def newest_page_sql(table: str, id_column: str, item: str, columns: str) -> str:
    """One statement (one snapshot) giving ``total, json, count`` of a page of a
    counted table (:data:`agi_app.store.pg_schema.COUNTED`), newest (highest
    id) first: ``json`` is the JSON array of ``item`` (an SQL expression of
    the page row ``p``, whose columns are ``columns``, that makes one item's
    JSON text).  Parameters ``%(offset)s`` and ``%(limit)s``.

    Ids come from an identity and rows are only ever removed from the old
    end, if at all, so the ids are normally exactly ``lo..hi``: then the page
    is the id range ``hi - offset`` downwards, found through the primary key
    however deep it is.  If there are gaps (``hi - lo + 1`` differs from the
    count: a removed row, or an insert that was rolled back), the page is
    found by OFFSET over the primary key instead; PostgreSQL evaluates each
    branch's condition once, before it, so only one of them runs.
    """
    return f"""
    WITH b AS (
        SELECT (SELECT n FROM row_counts WHERE name = '{table}') AS total,
               (SELECT min({id_column}) FROM {table}) AS lo,
               (SELECT max({id_column}) FROM {table}) AS hi
    ), p AS (
        SELECT {columns} FROM {table}
        WHERE (SELECT hi - lo + 1 = total FROM b)
          AND {id_column} BETWEEN (SELECT greatest(lo, hi - %(offset)s - %(limit)s + 1) FROM b)
                              AND (SELECT hi - %(offset)s FROM b)
        UNION ALL
        SELECT {columns} FROM {table}
        WHERE (SELECT hi - lo + 1 <> total FROM b)
          AND {id_column} IN (SELECT {id_column} FROM {table}
                              ORDER BY {id_column} DESC LIMIT %(limit)s OFFSET %(offset)s)
    )
    SELECT coalesce((SELECT total FROM b), 0),
           coalesce('[' || string_agg({item}, ',' ORDER BY p.{id_column} DESC) || ']', '[]'),
           count(*)
    FROM p
    """


def json_object_sql(columns: str, alias: str = "", extra: tuple[tuple[str, str], ...] = ()) -> str:
    """An SQL expression making the compact JSON text of one object with
    these columns (comma separated) as keys, in order, then the ``extra``
    ``(key, SQL expression)`` pairs, without white space: for text, integers
    and nulls the same text SQLite's ``json_object`` makes (``to_json``
    escapes strings exactly as it does), so history entries are byte for
    byte the same on both engines; a double is written as the shortest text
    that reads back exactly (``3`` where SQLite writes ``3.0``).  ``alias``
    qualifies the columns (``"e."``)."""
    pairs = [(c.strip(), f"{alias}{c.strip()}") for c in columns.split(",")] + list(extra)
    parts = [
        f"'{'{' if i == 0 else ','}\"{key}\":' || coalesce(to_json({value})::text, 'null')"
        for i, (key, value) in enumerate(pairs)
    ]
    return "(" + " || ".join(parts) + " || '}')"
