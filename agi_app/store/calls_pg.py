"""PostgreSQL queries of calls and their status history (tables ``calls`` and
``call_status``), and the CRM API's history reads of them.

:class:`CallsPostgresMixin` is one of
:class:`~agi_app.store.postgres.PostgresStore`'s bases.  The rules hold
between several processes writing one database, not only within one:

- **One final status per call.**  ``add_status`` locks the call's row
  (``SELECT ... FOR NO KEY UPDATE``) before it reads ``final_status``, and
  writes the entry and the final status in the same transaction: a second
  writer waits for the lock and then reads the final status the first one
  committed.

- **External keys.**  ``external_key`` has a unique index; a new call is
  inserted with ``ON CONFLICT (external_key) DO NOTHING``, which waits for a
  concurrent insert of the same key, and the stored call is then compared.

- **History ids in commit order.**  ``callHistory?after_id=`` hands out
  entries above a cursor, so an id must never become visible after a
  larger one: a poller that has seen 6 would skip 5 forever.  A sequence
  alone does not promise that: transaction A may take id 5, B id 6, and B
  commit first.  So every transaction that adds history rows first takes
  one transaction-scoped advisory lock
  (:data:`~agi_app.store.pg_schema.HISTORY_LOCK`), then takes its ids, and
  holds the lock until its commit is complete (PostgreSQL releases a
  transaction's locks after its commit has become visible).  The next
  transaction gets its ids only then, so the ids visible at any moment are
  every id up to the largest visible one, except ids of transactions that
  rolled back, which never appear.  The lock covers only the insert and the
  commit (the call's row is read and checked before it), and writes of
  other tables never take it.  A watermark (readers stopping below the
  oldest id still in flight) would let history writers run side by side,
  but needs a table of ids in flight that every reader consults; history
  writes are short and few (a handful per call), so one at a time costs
  nothing measurable, and readers never wait for the lock at all.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from agi_app.store.base import (
    CALL_KINDS,
    FINAL_STATUSES,
    STATUSES,
    EntryList,
    ExternalKeyConflict,
    UnknownCall,
    canonical_json,
    check_time,
)
from agi_app.store.pg_engine import PostgresEngine, json_object_sql
from agi_app.store.pg_schema import HISTORY_LOCK
from agi_app.store.recordings_pg import RECORD_COLUMNS

__all__ = ["CallsPostgresMixin"]

_CALL_COLUMNS = (
    "call_id, kind, sip, phone, order_id, external_key, params, created_at, "
    "final_status, finished_at, talk_seconds, pbx"
)
_ENTRY_COLUMNS = "id, call_id, order_id, status, time, detail, pbx"
# One list of entries as JSON text, its length and its last id, from the
# entries the subquery ``e`` selects (one statement: one snapshot).
_ENTRY_LIST = (
    f"SELECT coalesce('[' || string_agg({json_object_sql(_ENTRY_COLUMNS, 'e.')}, ',' "
    "ORDER BY e.id) || ']', '[]'), count(*), max(e.id) "
    f"FROM (SELECT {_ENTRY_COLUMNS} FROM call_status WHERE $where ORDER BY id LIMIT %s) e"
)
_ORDER_CALLS = f"""
SELECT {_CALL_COLUMNS},
       (SELECT coalesce(json_agg(r ORDER BY r.record_id), '[]'::json)
        FROM (SELECT {RECORD_COLUMNS} FROM recordings WHERE call_id = c.call_id) r) AS records
FROM calls c WHERE order_id = %s ORDER BY created_at, seq
"""


def _call_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row["params"] = json.loads(row["params"])
    return row


class CallsPostgresMixin(PostgresEngine):
    """Calls, their status history, and the history reads of the CRM API
    (``order_calls`` lists each call's recordings too)."""

    _log = Logger()

    # -- helpers run on the threads -------------------------------------------

    def _call(self, conn, call_id: str) -> dict[str, Any] | None:
        rows = self._select(
            conn, f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = %s", (call_id,)
        )
        return _call_from_row(rows[0]) if rows else None

    def _entry_list(self, conn, where: str, params: tuple, limit: int | None = None) -> EntryList:
        text, count, last_id = conn.execute(
            _ENTRY_LIST.replace("$where", where), (*params, limit)
        ).fetchone()
        return EntryList(text, count, last_id)

    def _entries(self, conn, where: str, params: tuple) -> list[dict[str, Any]]:
        return self._entry_list(conn, where, params).entries()

    def _add_entry(self, conn, entry: dict[str, Any]) -> int:
        """Insert a history row in the open transaction; its id is taken,
        and becomes visible, after every earlier one's (module docstring)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (HISTORY_LOCK,))
        return self._insert(conn, "call_status", entry, "id")

    # -- calls and statuses -----------------------------------------------

    def create_call(
        self,
        *,
        call_id: str,
        kind: str,
        sip: str | None,
        phone: str | None,
        order_id: str | None,
        external_key: str | None,
        params: dict[str, Any],
        pbx: str = "default",
    ) -> Deferred[tuple[dict[str, Any], bool]]:
        if kind not in CALL_KINDS:
            raise ValueError(f"unknown call kind {kind!r}")
        if not call_id:
            raise ValueError("call_id must not be empty")
        row = {
            "call_id": call_id,
            "kind": kind,
            "sip": sip,
            "phone": phone,
            "order_id": order_id,
            "external_key": external_key or None,
            "params": canonical_json(params),
            "created_at": self._now(),
            "final_status": None,
            "finished_at": None,
            "talk_seconds": None,
            "pbx": pbx,
        }
        return self._run(self._create_call, row)

    def _create_call(self, conn, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with conn.transaction():
            if row["external_key"] is not None:
                # Waits for a concurrent insert of the same key, then skips.
                inserted = conn.execute(
                    f"INSERT INTO calls ({', '.join(row)}) "
                    f"VALUES ({', '.join(['%s'] * len(row))}) "
                    "ON CONFLICT (external_key) DO NOTHING RETURNING call_id",
                    tuple(row.values()),
                ).fetchone()
                if inserted is None:
                    existing = self._select(
                        conn,
                        f"SELECT {_CALL_COLUMNS} FROM calls WHERE external_key = %s",
                        (row["external_key"],),
                    )[0]
                    if existing["kind"] == row["kind"] and existing["params"] == row["params"]:
                        return _call_from_row(existing), False
                    raise ExternalKeyConflict(existing["call_id"])
            else:
                self._insert(conn, "calls", row, "call_id")
            self._add_entry(
                conn,
                {
                    "call_id": row["call_id"],
                    "order_id": row["order_id"],
                    "status": "CALL",
                    "time": row["created_at"],
                    "detail": None,
                    "pbx": row["pbx"],
                },
            )
        return _call_from_row(dict(row)), True

    def add_status(
        self,
        call_id: str,
        status: str,
        detail: str | None = None,
        *,
        time: str | None = None,
        talk_seconds: float | None = None,
        once: bool = False,
    ) -> Deferred[dict[str, Any] | None]:
        """As :meth:`agi_app.store.base.Store.add_status`; ``once``: also
        refuse (fire None) a status the call has already -- several nodes
        following one call see the same moments (agi_app.cluster)."""
        if status not in STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        when = check_time(time) if time is not None else self._now()
        d = self._run(self._add_status, call_id, status, detail, when, talk_seconds, once)

        def log_refused(result: tuple[dict[str, Any] | None, str | None]):
            entry, final = result
            if entry is None and final is None:
                self._log.debug("call {call_id}: {status} written already",
                                call_id=call_id, status=status)  # fmt: skip
            elif entry is None:
                self._log.warn(
                    "call {call_id}: {status} ignored, the call already ended with {final}",
                    call_id=call_id,
                    status=status,
                    final=final,
                )
            return entry

        return d.addCallback(log_refused)

    def _add_status(
        self,
        conn,
        call_id: str,
        status: str,
        detail: str | None,
        when: str,
        talk_seconds: float | None,
        once: bool = False,
    ) -> tuple[dict[str, Any] | None, str | None]:
        with conn.transaction():
            # The row lock: another writer of this call waits here until
            # this transaction ends, then reads what it wrote.
            found = conn.execute(
                "SELECT order_id, final_status, pbx FROM calls WHERE call_id = %s "
                "FOR NO KEY UPDATE",
                (call_id,),
            ).fetchone()
            if found is None:
                raise UnknownCall(call_id)
            order_id, final, pbx = found
            if final is not None:
                return None, final
            if once and conn.execute(
                "SELECT 1 FROM call_status WHERE call_id = %s AND status = %s LIMIT 1",
                (call_id, status),
            ).fetchone():
                return None, None
            entry = {
                "call_id": call_id,
                "order_id": order_id,
                "status": status,
                "time": when,
                "detail": detail,
                "pbx": pbx,
            }
            entry_id = self._add_entry(conn, entry)
            if status in FINAL_STATUSES:
                conn.execute(
                    "UPDATE calls SET final_status = %s, finished_at = %s, talk_seconds = %s "
                    "WHERE call_id = %s",
                    (status, when, talk_seconds, call_id),
                )
        return {"id": entry_id, **entry}, None

    def get_call(self, call_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(self._call, call_id)

    def get_call_by_external_key(self, external_key: str) -> Deferred[dict[str, Any] | None]:
        def query(conn) -> dict[str, Any] | None:
            rows = self._select(
                conn, f"SELECT {_CALL_COLUMNS} FROM calls WHERE external_key = %s", (external_key,)
            )
            return _call_from_row(rows[0]) if rows else None

        return self._run(query)

    def open_calls(self, pbx: str | None = None) -> Deferred[list[dict[str, Any]]]:
        def query(conn) -> list[dict[str, Any]]:
            where, params = "final_status IS NULL", ()
            if pbx is not None:
                where, params = "final_status IS NULL AND pbx = %s", (pbx,)
            rows = self._select(
                conn,
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE {where} ORDER BY created_at, seq",
                params,
            )
            return [_call_from_row(r) for r in rows]

        return self._run(query)

    def statuses(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._entries, "call_id = %s", (call_id,))

    # -- history queries ----------------------------------------------------

    def order_calls(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        def query(conn) -> list[dict[str, Any]]:
            # One statement: the calls and their recordings from one snapshot.
            return [_call_from_row(r) for r in self._select(conn, _ORDER_CALLS, (order_id,))]

        return self._read(query)

    def order_history(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._entries, "order_id = %s", (order_id,))

    def order_history_json(self, order_id: str) -> Deferred[EntryList]:
        return self._read(self._entry_list, "order_id = %s", (order_id,))

    def history_after(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        return self.history_after_json(after_id, limit, call_id).addCallback(EntryList.entries)

    def history_after_json(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[EntryList]:
        if after_id < 0 or limit < 1:
            raise ValueError("after_id must be >= 0 and limit >= 1")
        if call_id is None:
            return self._read(self._entry_list, "id > %s", (after_id,), limit)
        return self._read(
            self._entry_list, "call_id = %s AND id > %s", (call_id, after_id), limit
        )
