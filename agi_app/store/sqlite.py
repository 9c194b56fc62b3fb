"""The SQLite implementation of :class:`agi_app.store.base.Store` (and of
:class:`agi_app.events.store.EventStore`), assembled from its parts:

- :mod:`agi_app.store.engine`: the connection, its single writer thread
  (why one thread: see there), the budgeted inline reads, WAL settings;
- :mod:`agi_app.store.schema`: every table of every domain, as the ordered
  list of migration steps;
- one module of SQL per domain: :mod:`~agi_app.store.calls_sqlite` (calls
  and their status history), :mod:`~agi_app.store.recordings_sqlite`,
  :mod:`~agi_app.store.operators_sqlite`, :mod:`~agi_app.store.events_sqlite`,
  :mod:`~agi_app.store.missed_sqlite` (missed calls) and
  :mod:`~agi_app.store.stats_sqlite` (call statistics).
"""

from __future__ import annotations

from agi_app.store.base import Store
from agi_app.store.calls_sqlite import CallsSQLiteMixin
from agi_app.store.events_sqlite import EventsSQLiteMixin
from agi_app.store.missed_sqlite import MissedSQLiteMixin
from agi_app.store.operators_sqlite import OperatorsSQLiteMixin
from agi_app.store.recordings_sqlite import RecordingsSQLiteMixin
from agi_app.store.schema import MIGRATIONS, migrate
from agi_app.store.stats_sqlite import StatsSQLiteMixin

__all__ = ["MIGRATIONS", "SQLiteStore", "migrate"]


# The domain mixins come before Store: their methods implement its abstract
# ones and replace its generic *_json fallbacks.
class SQLiteStore(
    CallsSQLiteMixin,
    RecordingsSQLiteMixin,
    OperatorsSQLiteMixin,
    EventsSQLiteMixin,
    MissedSQLiteMixin,
    StatsSQLiteMixin,
    Store,
):
    """The store in one SQLite file.

    ``reactor`` delivers results from the worker thread; ``clock`` (default:
    the reactor) gives the time of entries written without an explicit one.
    Call :meth:`open` before use and :meth:`close` at shutdown.
    """
