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

from agi_app.store.base import FINAL_STATUSES, StoreError

__all__ = [
    "COUNTED",
    "MIGRATIONS",
    "OPERATOR_FIGURES",
    "OUTCOME_PERIODS",
    "STATS_TRIGGERS",
    "migrate",
    "migration_events",
    "rebuild_call_stats",
]

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


# Missed calls: inbound calls nobody answered (agi_app.store.missed_sqlite).
_SCHEMA_MISSED = (
    """
    CREATE TABLE missed_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL,
        phone TEXT,
        did TEXT,
        time TEXT NOT NULL,
        extensions TEXT NOT NULL DEFAULT '',
        ring_seconds REAL NOT NULL,
        called_back TEXT,
        handled_at TEXT,
        callback_attempts INTEGER NOT NULL DEFAULT 0,
        last_callback TEXT,
        last_callback_at TEXT,
        pbx TEXT NOT NULL DEFAULT 'default'
    )
    """,
    # Partial indexes: only the calls nobody got through to yet, which a
    # later call of the same number (or a callback) takes out.
    "CREATE INDEX missed_calls_open_phone ON missed_calls (phone) WHERE called_back IS NULL",
    "CREATE INDEX missed_calls_open ON missed_calls (id) WHERE called_back IS NULL",
)


def _migration_missed_calls(conn: sqlite3.Connection) -> None:
    """Schema step: the missed calls table."""
    for statement in _SCHEMA_MISSED:
        conn.execute(statement)


# -- call statistics -------------------------------------------------------------
#
# Per operator: calls offered (OPERATOR_CALLTO), answered (OPERATOR_PICKUP)
# with the ring time between the two, and those that ended in a
# conversation (FINISH) with its length -- each counted in the UTC hour the
# operator was rung.  ``operator_totals`` keeps, per operator and hour with
# calls, the running totals since the first call (a prefix sum): the
# figures of any range of hours are two rows per operator, the totals
# before its end minus the totals before its start, however long the range.
# Per hour and per day: the calls that began then, by final status.
#
# Kept current by triggers as the status writer adds entries: a status
# trigger writes the change of one operator's figures into
# ``operator_changes``, whose trigger adds it to that hour's totals and to
# every later one (normally none: the hour is the latest), then drops it.
# Rebuilt from the history by rebuild_call_stats (once, when the tables are
# made).

#: the figures kept per operator, in order
OPERATOR_FIGURES = ("offered", "answered", "ring_ms", "talked", "talk_ms")
#: outcome tables: name -> length of the period's key in a time text
#: (``2026-12-06T10`` and ``2026-12-06``)
OUTCOME_PERIODS = {"outcome_hours": 13, "outcome_days": 10}
_HOUR = 13


def _operator_sip(call: str, detail: str) -> str:
    """SQL: the operator of a call's OPERATOR_CALLTO -- the call's sip, or
    for a call without one (an incoming or IVR call connected to an
    extension) the extension its detail names (``extension 1000``).  The
    first number of phoneToPhone is no operator; nor is a number an IVR
    connects to."""
    return (
        f"CASE WHEN {call}.kind = 'phoneToPhone' THEN NULL "
        f"WHEN {call}.sip IS NOT NULL THEN {call}.sip "
        f"WHEN {detail} LIKE 'extension %' THEN substr({detail}, 11) END"
    )


def _ms_between(start: str, end: str) -> str:
    """SQL: whole milliseconds from time text ``start`` to ``end`` (at least 0)."""
    return f"max(0, CAST(round((julianday({end}) - julianday({start})) * 86400000) AS INTEGER))"


# Calls whose conversation with the operator begins when the operator
# answers (the caller was connected before: the IVR); for the others it
# begins with CLIENT_PICKUP, which FINISH's talk_seconds counts from.
_TALK_FROM_PICKUP = ("incoming", "callWithInteractiveVoiceResponse")


def _talk_ms(call: str) -> str:
    """SQL: the operator's conversation of a call that ended in FINISH, ms."""
    kinds = ", ".join(f"'{k}'" for k in _TALK_FROM_PICKUP)
    pickup = (
        f"(SELECT {_ms_between('p.time', f'{call}.finished_at')} FROM call_status p "
        f"WHERE p.call_id = {call}.call_id AND p.status = 'OPERATOR_PICKUP' LIMIT 1)"
    )
    return (
        f"CASE WHEN {call}.kind IN ({kinds}) THEN {pickup} "
        f"ELSE CAST(round({call}.talk_seconds * 1000) AS INTEGER) END"
    )


def _change(figures: dict[str, str], select: str) -> str:
    """SQL: write one change of an operator's figures (``figures``: column
    -> value in ``select``, which yields ``t`` the CALLTO time and ``s`` the
    operator)."""
    columns = ", ".join(figures)
    values = ", ".join(figures.values())
    return (
        f"INSERT INTO operator_changes (sip, hour, {columns}) "
        f"SELECT s, substr(t, 1, {_HOUR}), {values} FROM ({select}) WHERE s IS NOT NULL"
    )


def _stats_triggers() -> list[str]:
    """The triggers that keep the statistics current."""
    finals = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))
    figures = ", ".join(OPERATOR_FIGURES)
    previous = ", ".join(f"coalesce(p.{c}, 0)" for c in OPERATOR_FIGURES)
    added = ", ".join(f"{c} = {c} + NEW.{c}" for c in OPERATOR_FIGURES)
    outcome = [
        f"INSERT INTO {table} (period, status, n) "
        f"SELECT substr(c.created_at, 1, {n}), NEW.status, 1 FROM calls c "
        f"WHERE c.call_id = NEW.call_id ON CONFLICT (period, status) DO UPDATE SET n = n + 1"
        for table, n in OUTCOME_PERIODS.items()
    ]
    return [
        "CREATE TRIGGER stats_offered AFTER INSERT ON call_status "
        "WHEN NEW.status = 'OPERATOR_CALLTO' BEGIN "
        + _change({"offered": "1"},
                  f"SELECT NEW.time AS t, {_operator_sip('c', 'NEW.detail')} AS s "
                  "FROM calls c WHERE c.call_id = NEW.call_id")
        + "; END",
        "CREATE TRIGGER stats_answered AFTER INSERT ON call_status "
        "WHEN NEW.status = 'OPERATOR_PICKUP' BEGIN "
        + _change({"answered": "1", "ring_ms": "r"},
                  f"SELECT o.time AS t, {_operator_sip('c', 'o.detail')} AS s, "
                  f"{_ms_between('o.time', 'NEW.time')} AS r "
                  "FROM call_status o JOIN calls c ON c.call_id = o.call_id "
                  "WHERE o.call_id = NEW.call_id AND o.status = 'OPERATOR_CALLTO' LIMIT 1")
        + "; END",
        # talk_seconds is written with the final status, into calls
        "CREATE TRIGGER stats_talked AFTER UPDATE OF final_status ON calls "
        "WHEN OLD.final_status IS NULL AND NEW.final_status = 'FINISH' BEGIN "
        + _change({"talked": "1", "talk_ms": "m"},
                  f"SELECT o.time AS t, {_operator_sip('NEW', 'o.detail')} AS s, "
                  f"{_talk_ms('NEW')} AS m FROM call_status o "
                  "WHERE o.call_id = NEW.call_id AND o.status = 'OPERATOR_CALLTO' "
                  "AND EXISTS (SELECT 1 FROM call_status p WHERE p.call_id = NEW.call_id "
                  "AND p.status = 'OPERATOR_PICKUP') LIMIT 1")
        + " AND m IS NOT NULL; END",
        "CREATE TRIGGER stats_outcome AFTER INSERT ON call_status "
        f"WHEN NEW.status IN ({finals}) BEGIN " + "; ".join(outcome) + "; END",
        # A change joins the totals of its hour (made from the latest
        # totals before it when the operator had no call in that hour yet)
        # and of every later hour.
        "CREATE TRIGGER stats_operator_change AFTER INSERT ON operator_changes BEGIN "
        "INSERT OR IGNORE INTO operator_sips (sip) VALUES (NEW.sip); "
        f"INSERT OR IGNORE INTO operator_totals (sip, hour, {figures}) "
        f"SELECT NEW.sip, NEW.hour, {previous} FROM (SELECT 1) LEFT JOIN operator_totals p "
        "ON p.sip = NEW.sip AND p.hour = (SELECT max(hour) FROM operator_totals "
        "WHERE sip = NEW.sip AND hour < NEW.hour); "
        f"UPDATE operator_totals SET {added} WHERE sip = NEW.sip AND hour >= NEW.hour; "
        "DELETE FROM operator_changes WHERE rowid = NEW.rowid; END",
    ]


#: the statistics triggers on the history's tables (a bulk load of calls
#: drops them, then calls :func:`rebuild_call_stats`)
STATS_TRIGGERS = ("stats_offered", "stats_answered", "stats_talked", "stats_outcome")


def rebuild_call_stats(conn: sqlite3.Connection) -> None:
    """Compute the statistics tables anew from the whole history, with the
    rules of the triggers, and (re)create the triggers.  Run inside the
    caller's transaction; a full pass over the history."""
    for trigger in (*STATS_TRIGGERS, "stats_operator_change"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in ("operator_totals", "operator_sips", *OUTCOME_PERIODS):
        conn.execute(f"DELETE FROM {table}")
    changes = (
        # offered
        f"SELECT substr(o.time, 1, {_HOUR}) AS hour, {_operator_sip('c', 'o.detail')} AS sip, "
        "1 AS offered, 0 AS answered, 0 AS ring_ms, 0 AS talked, 0 AS talk_ms "
        "FROM call_status o JOIN calls c ON c.call_id = o.call_id "
        "WHERE o.status = 'OPERATOR_CALLTO' "
        # answered, with the ring time
        f"UNION ALL SELECT substr(o.time, 1, {_HOUR}), {_operator_sip('c', 'o.detail')}, "
        f"0, 1, {_ms_between('o.time', 'p.time')}, 0, 0 "
        "FROM call_status p JOIN call_status o ON o.call_id = p.call_id "
        "AND o.status = 'OPERATOR_CALLTO' JOIN calls c ON c.call_id = p.call_id "
        "WHERE p.status = 'OPERATOR_PICKUP' "
        # conversations
        f"UNION ALL SELECT substr(o.time, 1, {_HOUR}), {_operator_sip('c', 'o.detail')}, "
        f"0, 0, 0, 1, {_talk_ms('c')} "
        "FROM calls c JOIN call_status o ON o.call_id = c.call_id "
        "AND o.status = 'OPERATOR_CALLTO' WHERE c.final_status = 'FINISH' "
        "AND EXISTS (SELECT 1 FROM call_status p WHERE p.call_id = c.call_id "
        "AND p.status = 'OPERATOR_PICKUP') AND " + _talk_ms("c") + " IS NOT NULL"
    )
    figures = ", ".join(OPERATOR_FIGURES)
    sums = ", ".join(f"sum({c}) AS {c}" for c in OPERATOR_FIGURES)
    running = ", ".join(f"sum({c}) OVER running" for c in OPERATOR_FIGURES)
    conn.execute(
        f"INSERT INTO operator_totals (sip, hour, {figures}) SELECT sip, hour, {running} "
        f"FROM (SELECT sip, hour, {sums} FROM ({changes}) WHERE sip IS NOT NULL "
        "GROUP BY sip, hour) "
        "WINDOW running AS (PARTITION BY sip ORDER BY hour ROWS UNBOUNDED PRECEDING)"
    )
    conn.execute("INSERT INTO operator_sips (sip) SELECT DISTINCT sip FROM operator_totals")
    for table, n in OUTCOME_PERIODS.items():
        conn.execute(
            f"INSERT INTO {table} (period, status, n) SELECT substr(created_at, 1, {n}), "
            "final_status, count(*) FROM calls WHERE final_status IS NOT NULL GROUP BY 1, 2"
        )
    for statement in _stats_triggers():
        conn.execute(statement)


def _migration_call_stats(conn: sqlite3.Connection) -> None:
    """Schema step: the operators' running totals per hour and the outcomes
    per hour and per day, filled from the history there is and kept by
    triggers from then on."""
    columns = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in OPERATOR_FIGURES)
    conn.execute(
        f"CREATE TABLE operator_totals (sip TEXT NOT NULL, hour TEXT NOT NULL, {columns}, "
        "PRIMARY KEY (sip, hour)) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE operator_sips (sip TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID")
    # always empty between statements: see stats_operator_change
    conn.execute(
        f"CREATE TABLE operator_changes (sip TEXT NOT NULL, hour TEXT NOT NULL, {columns})"
    )
    for table in OUTCOME_PERIODS:
        conn.execute(
            f"CREATE TABLE {table} (period TEXT NOT NULL, status TEXT NOT NULL, "
            "n INTEGER NOT NULL, PRIMARY KEY (period, status)) WITHOUT ROWID"
        )
    rebuild_call_stats(conn)
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


#: the tables whose rows name the PBX they come from (besides ``calls`` and
#: ``missed_calls``, which always did), given a ``pbx`` column by
#: :func:`_migration_pbx`
PBX_TABLES = ("call_status", "recordings", "operator_history")


def _migration_pbx(conn: sqlite3.Connection) -> None:
    """Schema step: several PBXs ([ami:NAME], docs/scaling.md).  History
    entries, recordings and operator state changes carry the PBX of their
    call (or endpoint); rows from before say ``'default'``, the PBX of
    ``[ami]``.  An operator is one extension on one PBX: ``operators`` is
    keyed by ``(pbx, sip)`` (SQLite cannot change a primary key, so the
    table is made again)."""
    for table in PBX_TABLES:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN pbx TEXT NOT NULL DEFAULT 'default'")
    conn.execute(
        """
        CREATE TABLE operators_by_pbx (
            pbx TEXT NOT NULL DEFAULT 'default',
            sip TEXT NOT NULL,
            status TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (pbx, sip)
        )
        """
    )
    conn.execute(
        "INSERT INTO operators_by_pbx (pbx, sip, status, since) "
        "SELECT 'default', sip, status, since FROM operators"
    )
    conn.execute("DROP TABLE operators")
    conn.execute("ALTER TABLE operators_by_pbx RENAME TO operators")
    conn.execute("CREATE INDEX operators_status ON operators (status, sip)")
    conn.execute("CREATE INDEX operators_sip ON operators (sip, pbx)")


#: Schema steps; step N (1-based) brings ``PRAGMA user_version`` from N-1 to N.
#: Only ever append: a released step must never change.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1,
    migration_events,
    _migration_row_counts,
    _migration_missed_calls,
    _migration_call_stats,
    _migration_retention,
    _migration_pbx,
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
