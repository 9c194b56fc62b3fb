"""The store's schema: every table, index and trigger of every domain (calls
and their status history, recordings, operators, events), as the ordered
list of steps that builds it, and :func:`migrate`, which applies the steps a
database is missing.

Only ever append a step: a released one must never change, since databases
in the field were built by it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from agi_app.store.base import StoreError

__all__ = ["COUNTED", "MIGRATIONS", "migrate", "migration_events"]

_SCHEMA_1 = (
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        sip TEXT,
        phone TEXT,
        order_id TEXT,
        external_key TEXT UNIQUE,
        params TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        final_status TEXT,
        finished_at TEXT,
        talk_seconds REAL,
        pbx TEXT NOT NULL DEFAULT 'default'
    )
    """,
    "CREATE INDEX calls_order ON calls (order_id, created_at)",
    # Partial index: only calls still in progress, which stay few.
    "CREATE INDEX calls_open ON calls (pbx, created_at) WHERE final_status IS NULL",
    """
    CREATE TABLE call_status (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls (call_id),
        order_id TEXT,
        status TEXT NOT NULL,
        time TEXT NOT NULL,
        detail TEXT
    )
    """,
    "CREATE INDEX call_status_call ON call_status (call_id, id)",
    "CREATE INDEX call_status_order ON call_status (order_id, id)",
    """
    CREATE TABLE recordings (
        record_id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls (call_id),
        order_id TEXT,
        external_key TEXT,
        sip TEXT,
        phone TEXT,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL,
        duration REAL,
        size INTEGER
    )
    """,
    "CREATE INDEX recordings_call ON recordings (call_id, record_id)",
    # A narrow copy of the ids: deep pages (OFFSET) step through this small
    # index instead of the wide table rows.
    "CREATE INDEX recordings_id ON recordings (record_id)",
    """
    CREATE TABLE operators (
        sip TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        since TEXT NOT NULL
    )
    """,
    "CREATE INDEX operators_status ON operators (status, sip)",
    """
    CREATE TABLE operator_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sip TEXT NOT NULL,
        status TEXT NOT NULL,
        time TEXT NOT NULL
    )
    """,
    "CREATE INDEX operator_history_sip ON operator_history (sip, id)",
    "CREATE INDEX operator_history_id ON operator_history (id)",
)


def _migration_1(conn: sqlite3.Connection) -> None:
    """The first schema: calls, call_status, recordings, operators, operator_history."""
    for statement in _SCHEMA_1:
        conn.execute(statement)


# The events service's tables (what each holds: agi_app.store.events_sqlite).
_SCHEMA_EVENTS = (
    """
    CREATE TABLE event_subscriptions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        extension TEXT NOT NULL,
        url TEXT NOT NULL,
        method TEXT NOT NULL,
        event_type TEXT NOT NULL,
        secret TEXT NOT NULL,
        created_at TEXT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        given_up INTEGER NOT NULL DEFAULT 0,
        last_delivered_at REAL,
        last_error TEXT,
        last_error_at REAL
    )
    """,
    "CREATE INDEX event_subscriptions_ext ON event_subscriptions (extension, event_type)",
    """
    CREATE TABLE events (
        event_id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_type TEXT NOT NULL,
        extension TEXT NOT NULL,
        time_us INTEGER NOT NULL,
        created_at REAL NOT NULL,
        fields TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE event_outbox (
        outbox_id INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription_id INTEGER NOT NULL
            REFERENCES event_subscriptions (id) ON DELETE CASCADE,
        event_id INTEGER NOT NULL REFERENCES events (event_id),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT
    )
    """,
    "CREATE INDEX event_outbox_sub ON event_outbox (subscription_id, outbox_id)",
    "CREATE INDEX event_outbox_event ON event_outbox (event_id)",
    """
    CREATE TABLE event_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription_id INTEGER NOT NULL
            REFERENCES event_subscriptions (id) ON DELETE CASCADE,
        event_id INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        http_status INTEGER,
        error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL NOT NULL
    )
    """,
    "CREATE INDEX event_deliveries_sub ON event_deliveries (subscription_id, outcome, id)",
)


def migration_events(conn: sqlite3.Connection) -> None:
    """Schema step: event subscriptions, events, outbox, delivery log."""
    for statement in _SCHEMA_EVENTS:
        conn.execute(statement)


#: Listings paged newest first whose total is kept in ``row_counts``.
COUNTED = ("recordings", "operator_history")


def _migration_row_counts(conn: sqlite3.Connection) -> None:
    """Row counts of the paged listings, kept by triggers.  ``count(*)`` walks
    a whole index (about 2 ms per million recordings, on every recordList
    request); this is one lookup.  It also tells the pager whether the ids
    have gaps (see :meth:`agi_app.store.engine.SQLiteEngine._newest_page`)."""
    conn.execute(
        "CREATE TABLE row_counts (name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )
    for table in COUNTED:
        conn.execute(
            f"INSERT INTO row_counts (name, n) SELECT '{table}', count(*) FROM {table}"
        )
        for event, change in (("INSERT", "+ 1"), ("DELETE", "- 1")):
            conn.execute(
                f"CREATE TRIGGER {table}_count_{event.lower()} AFTER {event} ON {table} "
                f"BEGIN UPDATE row_counts SET n = n {change} WHERE name = '{table}'; END"
            )


def _migration_retention(conn: sqlite3.Connection) -> None:
    """Retention and erasure (:mod:`agi_app.retention`): indexes that find
    old calls and recordings and a subject's calls without a scan, and the
    ``erasures`` log, which proves an erasure happened without keeping what
    was erased (the order_id, or a keyed hash of the phone number).
    (IF NOT EXISTS: a database taken back to an earlier step by hand, as a
    test of an earlier step does, may have them already.)"""
    # Old calls, oldest first (retention's batches walk this index).
    conn.execute("CREATE INDEX IF NOT EXISTS calls_created ON calls (created_at)")
    # A phone number's calls: the client's number, and the first number of a
    # phoneToPhone call (its ``sip``; an extension everywhere else).
    conn.execute("CREATE INDEX IF NOT EXISTS calls_phone ON calls (phone)")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS calls_first_phone ON calls (sip) WHERE kind = 'phoneToPhone'"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS recordings_created ON recordings (created_at)")
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS erasures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time TEXT NOT NULL,
            subject TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            calls INTEGER NOT NULL,
            entries INTEGER NOT NULL,
            recordings INTEGER NOT NULL,
            files INTEGER NOT NULL,
            events INTEGER NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS erasures_subject ON erasures (subject, subject_id)")


#: Schema steps; step N (1-based) brings ``PRAGMA user_version`` from N-1 to N.
#: Only ever append: a released step must never change.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1,
    migration_events,
    _migration_row_counts,
    _migration_retention,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing :data:`MIGRATIONS` to ``conn`` (autocommit mode), each
    in its own transaction together with its ``user_version`` bump, and return
    the resulting version.  A database newer than this code is refused."""
    while True:
        # IMMEDIATE: take the write lock before reading the version, so two
        # processes opening a new file at once cannot both apply a step.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database schema version {version} is newer than this program "
                    f"knows ({len(MIGRATIONS)}); upgrade agi_app"
                )
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return version
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
