"""The PostgreSQL implementation of :class:`agi_app.store.base.Store` (and of
:class:`agi_app.events.store.EventStore`), assembled from its parts like
:class:`~agi_app.store.sqlite.SQLiteStore`:

- :mod:`agi_app.store.pg_engine`: the connection pool and the threads that
  use it (one writer thread, in call order; reader threads for the API);
- :mod:`agi_app.store.pg_schema`: every table of every domain, as the ordered
  list of migration steps;
- one module of SQL per domain: :mod:`~agi_app.store.calls_pg` (calls and
  their status history; how history ids stay in commit order across
  processes), :mod:`~agi_app.store.recordings_pg`,
  :mod:`~agi_app.store.operators_pg`, :mod:`~agi_app.store.events_pg`,
  :mod:`~agi_app.store.missed_pg` (missed calls) and
  :mod:`~agi_app.store.stats_pg` (call statistics).

Several processes (nodes) may share one database: every rule of the store
is kept by the database's locks and indexes, not by the process.
"""

from __future__ import annotations

from agi_app.store.base import Store
from agi_app.store.calls_pg import CallsPostgresMixin
from agi_app.store.events_pg import EventsPostgresMixin
from agi_app.store.missed_pg import MissedPostgresMixin
from agi_app.store.operators_pg import OperatorsPostgresMixin
from agi_app.store.pg_schema import MIGRATIONS, migrate
from agi_app.store.recordings_pg import RecordingsPostgresMixin
from agi_app.store.retention_pg import RetentionPostgresMixin
from agi_app.store.stats_pg import StatsPostgresMixin

__all__ = ["MIGRATIONS", "PostgresStore", "migrate"]


# The domain mixins come before Store: their methods implement its abstract
# ones and replace its generic *_json fallbacks.
class PostgresStore(
    CallsPostgresMixin,
    RecordingsPostgresMixin,
    OperatorsPostgresMixin,
    EventsPostgresMixin,
    MissedPostgresMixin,
    StatsPostgresMixin,
    RetentionPostgresMixin,
    Store,
):
    """The store in a PostgreSQL database.

    ``url`` is ``postgresql://user:pass@host:port/db``; ``reactor`` delivers
    results from the store's threads; ``clock`` (default: the reactor) gives
    the time of entries written without an explicit one.  Call :meth:`open`
    before use and :meth:`close` at shutdown.
    """
