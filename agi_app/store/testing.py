"""The store for unit tests: :class:`MemoryStore`, a real
:class:`~agi_app.store.sqlite.SQLiteStore` on a private in-memory database,
driven without threads.

The real store hands every statement to its worker thread and its result
back through the reactor; here both hand-overs happen at once, on the
calling thread.  So every Deferred the store returns has already fired when
the method returns: a ``SynchronousTestCase`` reads it with
``successResultOf``, a coroutine awaits it without the reactor running, and
nothing waits or sleeps.  The SQL, the schema and the rules (known status
words, nothing after a call's final status, external keys, one history row
per operator change) are the real ones, since the code is.

A few synchronous readers (:meth:`MemoryStore.words`, ...) make assertions
short; they read through the store like any caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from agi_app.store.recordings_sqlite import RECORD_COLUMNS
from agi_app.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "fired"]

_T = TypeVar("_T")


class _SameThread:
    """Stands in for both of the store's hand-overs: the worker thread pool
    (``callInThreadWithCallback``) and the reactor's ``callFromThread``.
    Each runs its work at once; work is therefore applied one piece at a
    time, in call order, as on the real single worker thread."""

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object],
        func: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``func`` now and report to ``onResult`` as a ThreadPool would."""
        try:
            result = func(*args, **kwargs)
        except Exception:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callFromThread(
        self, f: Callable[..., object], *args: Any, **kwargs: Any
    ) -> None:
        """Call ``f`` now: the "thread" is this one."""
        f(*args, **kwargs)


def fired(d: Deferred[_T]) -> _T:
    """The result of a Deferred that has already fired, as every Deferred of
    a :class:`MemoryStore` has: its value, or its failure raised.  Raises
    AssertionError if it has not fired."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, f"{d!r} has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class MemoryStore(SQLiteStore):
    """A real SQLiteStore on a private ``:memory:`` database, open at once,
    whose Deferreds fire before its methods return (see the module's
    docstring).  ``clock`` (e.g. a ``MemoryReactorClock``) gives the time
    of what is written without an explicit one.

    Cheap (about a millisecond to build): make one per test.  :meth:`close`
    it in the test's cleanup; nothing else needs stopping, no thread is
    started.
    """

    def __init__(self, clock: IReactorTime):
        same = _SameThread()
        super().__init__(":memory:", reactor=same, clock=clock, worker=same)
        self.open()

    # -- synchronous readers for assertions ------------------------------------

    def call(self, call_id: str) -> dict[str, Any] | None:
        """The call with this id, or None."""
        return fired(self.get_call(call_id))

    def all_calls(self) -> list[dict[str, Any]]:
        """Every call, in the order they were created."""
        rows = fired(self._run(self._select, "SELECT call_id FROM calls ORDER BY rowid"))
        return [self.call(row["call_id"]) for row in rows]

    def history(self, call_id: str) -> list[dict[str, Any]]:
        """Every history entry of one call, ascending by id."""
        return fired(self.statuses(call_id))

    def words(self, call_id: str) -> list[str]:
        """The status words of one call's history, in order."""
        return [entry["status"] for entry in self.history(call_id)]

    def details(self, call_id: str, status: str) -> list[str | None]:
        """The details of one call's history entries with this status, in order."""
        return [e["detail"] for e in self.history(call_id) if e["status"] == status]

    def all_recordings(self) -> list[dict[str, Any]]:
        """Every recording, ascending record_id (the order they were stored)."""
        return fired(
            self._run(
                self._select, f"SELECT {RECORD_COLUMNS} FROM recordings ORDER BY record_id"
            )
        )
