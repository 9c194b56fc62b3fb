"""What one node needs of the shared PostgreSQL database to work beside
the others (CONTRACT section 9, several nodes): locks that die with the
node, and a way to wake the other nodes.

:class:`ClusterLink` holds two connections of the node's own, beside the
store's pool:

- the **lock session**, on a thread of its own, takes and gives back
  session-level advisory locks (:meth:`ClusterLink.try_lock`,
  :meth:`ClusterLink.unlock`).  A lock lasts as long as the session: when
  the node dies (SIGKILL, a power cut, the network gone) PostgreSQL ends
  the session and every lock of the node is free at once -- nobody has to
  expire anything.  The session is pinged every ``ping_interval`` seconds;
  when it breaks, the node is told (:meth:`ClusterLink.on_lost`) that it
  holds no lock any more, and the next call reconnects;
- the **listener** waits for ``NOTIFY`` on the channels asked for
  (:meth:`ClusterLink.listen`).  A notification only ever *wakes* a node:
  the log is the tables (the outbox, the history); a notification missed
  while the listener reconnects is made up for by the callbacks given to
  :meth:`ClusterLink.on_resync`, which read the tables again.

Locks and notifications are per database, while a store lives in one schema
of it (its connections' ``search_path``): lock keys and notification
payloads carry the schema, so stores in two schemas of one database (the
test suite's) never see each other's.

Lock keys are two 32-bit numbers: ``hashtext('<space>:<schema>')`` and
``hashtext('<key>')``.  That key space is apart from the one-number keys
the store takes for itself (:mod:`agi_app.store.calls_pg`); two names whose
hashes meet only make two things share one lock (a node waits a little
longer), never two holders of one lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from agi_app.store.base import StoreError
from agi_app.store.pg_engine import daemon_pool, redact_url

__all__ = ["ClusterLink", "notify_sql"]

log = Logger(namespace="agi_app.cluster")

_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(%s || ':' || current_schema()), hashtext(%s))"
_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext(%s || ':' || current_schema()), hashtext(%s))"


class _SessionLost(Exception):
    """The lock session ``epoch`` broke (its locks are gone)."""

    def __init__(self, epoch: int):
        super().__init__(f"lock session {epoch} lost")
        self.epoch = epoch


def notify_sql() -> str:
    """The statement that wakes the nodes listening on a channel, run in
    the transaction whose commit they should see (PostgreSQL delivers a
    notification at commit, and not at all after a rollback).  Parameters:
    the channel and the payload; the payload goes out prefixed with the
    schema (``<schema> <payload>``), as :class:`ClusterLink` expects."""
    return "SELECT pg_notify(%s, current_schema() || ' ' || %s)"


class ClusterLink:
    """A node's lock session and listener on the database at ``url``.

    :param url: the store's ``postgresql://`` URL
    :param reactor: delivers results from the link's threads, runs the ping
    :param ping_interval: seconds between checks that the lock session is alive
    :param listen_poll: seconds the listener waits at a time (how soon
        :meth:`close` stops it)
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime | None = None,
        ping_interval: float = 1.0,
        listen_poll: float = 0.5,
        connect_timeout: float = 5.0,
        name: str = "",
    ):
        self.url = url
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._ping_interval = ping_interval
        self._listen_poll = listen_poll
        self._connect_timeout = connect_timeout
        self._application_name = f"agi_app {name}".strip()[:63]
        self._locks_thread: ThreadPool | None = None
        self._conn: Any = None  # the lock session (used on its thread only)
        self._held: Counter[tuple[str, str]] = Counter()
        self._lost: list[Callable[[], object]] = []
        self._resync: list[Callable[[], object]] = []
        self._channels: dict[str, list[Callable[[str], object]]] = {}
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        # open() waits for the listener's first LISTEN; if it gave up waiting,
        # the listener reads the tables again once it does listen
        self._listening = threading.Event()
        self._open_lock = threading.Lock()
        self._open_waiting = False
        self._ping: task.LoopingCall | None = None
        self._schema = ""
        self._shutdown_trigger: object | None = None
        # the lock session's number: counted on its thread (_epoch) and as
        # the reactor last heard of it (_known_epoch)
        self._epoch = 0
        self._known_epoch = 0
        self._reported: set[int] = set()
        #: lock sessions lost since open (each releases every lock held)
        self.sessions_lost = 0

    # -- lifetime ---------------------------------------------------------

    def open(self) -> None:
        """Connect the lock session and start listening.  Blocking: meant for
        startup, after the store has opened (and migrated) the database.
        Raises :class:`StoreError` when the database cannot be reached."""
        import psycopg

        try:
            self._conn = self._connect()
            self._schema = self._conn.execute("SELECT current_schema()").fetchone()[0] or ""
            self._epoch = self._known_epoch = 1
        except psycopg.Error as e:
            raise StoreError(f"cannot use the database {redact_url(self.url)}: {e}") from e
        self._locks_thread = daemon_pool(1, 1, name="agi_app-cluster-locks")
        self._locks_thread.start()
        self._stopping.clear()
        self._listening.clear()
        self._open_waiting = True
        self._listener = threading.Thread(
            target=self._listen_loop, name="agi_app-cluster-listener", daemon=True
        )
        self._listener.start()
        # A notification sent before the LISTEN would be lost for good (another
        # node adding a subscription right after this one started): wait for it.
        self._listening.wait(self._connect_timeout)
        with self._open_lock:
            self._open_waiting = False
            if not self._listening.is_set():
                log.warn("listener on {url} not connected yet; it will read the tables "
                         "again when it is", url=redact_url(self.url))  # fmt: skip
        self._ping = task.LoopingCall(self._check)
        self._ping.clock = self._clock
        self._ping.start(self._ping_interval, now=False)
        # A thread left running would keep the process from exiting.
        add_trigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._shutdown_trigger = add_trigger("before", "shutdown", self.close)

    def close(self) -> Deferred[None]:
        """Stop listening, give back every lock (closing the session)."""
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)  # type: ignore[attr-defined]
            self._shutdown_trigger = None
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
        self._stopping.set()
        pool, self._locks_thread = self._locks_thread, None
        listener, self._listener = self._listener, None
        self._held.clear()
        if pool is None:
            return succeed(None)

        def finish() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if listener is not None:
                listener.join(self._listen_poll * 4 + self._connect_timeout)

        d = deferToThreadPool(self._reactor, pool, finish)

        def stop(result: object) -> object:
            pool.stop()
            return result

        return d.addBoth(stop)

    @property
    def schema(self) -> str:
        """The schema of the store (the first of its ``search_path``)."""
        return self._schema

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, int(self._connect_timeout)),
            application_name=self._application_name,
        )

    # -- locks ------------------------------------------------------------

    def holds(self, space: str, key: str) -> bool:
        """True while this node holds the lock (as far as it knows)."""
        return (space, key) in self._held

    def try_lock(self, space: str, key: str) -> Deferred[bool]:
        """Take the lock ``(space, key)`` if nobody holds it; fires whether
        this node holds it now.  Taking a lock already held succeeds again
        (and needs one more :meth:`unlock`: PostgreSQL counts them)."""
        if self._locks_thread is None:
            return fail(StoreError("cluster link is not open"))
        d = deferToThreadPool(self._reactor, self._locks_thread, self._on_session,
                              _LOCK_SQL, (space, key))  # fmt: skip

        def taken(result: tuple[Any, int]) -> bool:
            # a lock taken on a session known to be over is no lock
            ok = self._current(result[1]) and bool(result[0])
            if ok:
                self._held[(space, key)] += 1
            return ok

        return d.addCallbacks(taken, self._failed)

    def unlock(self, space: str, key: str) -> Deferred[None]:
        """Give the lock back (once per :meth:`try_lock` that took it)."""
        if self._locks_thread is None or (space, key) not in self._held:
            return succeed(None)
        held = self._held
        held[(space, key)] -= 1
        if held[(space, key)] <= 0:
            del held[(space, key)]
        d = deferToThreadPool(self._reactor, self._locks_thread, self._on_session,
                              _UNLOCK_SQL, (space, key))  # fmt: skip
        d.addCallbacks(lambda result: self._current(result[1]), self._failed)
        d.addCallbacks(lambda _: None, lambda _f: None)  # a lost session gave it back already
        return d

    def on_lost(self, callback: Callable[[], object]) -> None:
        """``callback()`` when the lock session broke: every lock is gone."""
        self._lost.append(callback)

    # Every use of the session happens on its thread, which alone connects,
    # notices a broken session and closes it; each session gets the next
    # number (its epoch), handed to the reactor with every result, so the
    # reactor learns in order that a session ended -- also when a lock was
    # taken on a new session before the failure of the old one was seen.

    def _on_session(self, sql: str | None, params: tuple = ()) -> tuple[Any, int]:
        import psycopg

        conn = self._conn
        if conn is None or conn.closed:
            if sql is None:  # a ping does not reconnect
                raise _SessionLost(self._epoch)
            conn = self._conn = self._connect()
            self._epoch += 1
        try:
            row = conn.execute(sql or "SELECT 1", params).fetchone()
        except psycopg.Error as e:
            if conn.closed or conn.broken:
                self._conn = None
                conn.close()
                raise _SessionLost(self._epoch) from e
            raise
        return (row[0] if row else None), self._epoch

    def _current(self, epoch: int) -> bool:
        """Take note of the session a result came from; False when that
        session is over already (its locks are gone)."""
        if epoch > self._known_epoch:
            if self._known_epoch and self._held:
                self._lost_session()  # the one before ended
            self._known_epoch = epoch
        return epoch == self._known_epoch

    def _check(self) -> Deferred[None] | None:
        if self._locks_thread is None:
            return None
        d = deferToThreadPool(self._reactor, self._locks_thread, self._on_session, None)
        d.addCallbacks(lambda result: self._current(result[1]), self._failed)
        d.addErrback(lambda _f: None)
        return d

    def _failed(self, failure: Any) -> Any:
        """A request failed; when the session ended with it, every lock it
        held is gone: the holders are told (the next request connects anew)."""
        lost = failure.check(_SessionLost)
        if lost is not None and failure.value.epoch >= self._known_epoch:
            self._known_epoch = failure.value.epoch
            self._lost_session()
        return failure

    def _lost_session(self) -> None:
        if not self._held and self._known_epoch in self._reported:
            return
        self._reported.add(self._known_epoch)
        self._held.clear()
        self.sessions_lost += 1
        log.warn("the lock session on {url} was lost: every lock of this node is free",
                 url=redact_url(self.url))  # fmt: skip
        for callback in list(self._lost):
            try:
                callback()
            except Exception:
                log.failure("lock session lost: callback")

    # -- notifications ------------------------------------------------------

    def listen(self, channel: str, callback: Callable[[str], object]) -> None:
        """``callback(payload)`` on the reactor for each notification on
        ``channel`` from a store in this schema.  Channels asked for after
        :meth:`open` are listened to from the listener's next connection:
        ask before opening."""
        self._channels.setdefault(channel, []).append(callback)

    def on_resync(self, callback: Callable[[], object]) -> None:
        """``callback()`` each time the listener (re)connected: notifications
        may have been missed meanwhile, read the tables again."""
        self._resync.append(callback)

    def _listen_loop(self) -> None:
        import psycopg
        from psycopg import sql

        first = True
        failures = 0
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    failures = 0
                    for channel in list(self._channels):
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    with self._open_lock:
                        late = not self._open_waiting
                        self._listening.set()
                    if late or not first:
                        self._reactor.callFromThread(self._resynced)
                    first = False
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=self._listen_poll):
                            self._reactor.callFromThread(self._notified, note.channel,
                                                         note.payload)  # fmt: skip
            except psycopg.Error as e:
                if self._stopping.is_set():
                    return
                if failures == 0:
                    log.warn("listener on {url}: {e}; reconnecting", url=redact_url(self.url),
                             e=str(e).splitlines()[0] if str(e) else e)  # fmt: skip
                failures += 1
                first = False
                # the database is down: try again less and less often, up to 5 s
                self._stopping.wait(min(5.0, self._listen_poll * 2 ** min(failures, 4)))

    def _notified(self, channel: str, payload: str) -> None:
        schema, _, rest = payload.partition(" ")
        if schema != self._schema:
            return
        for callback in list(self._channels.get(channel, ())):
            try:
                callback(rest)
            except Exception:
                log.failure("notification on {channel}", channel=channel)

    def _resynced(self) -> None:
        for callback in list(self._resync):
            try:
                callback()
            except Exception:
                log.failure("listener resync callback")
