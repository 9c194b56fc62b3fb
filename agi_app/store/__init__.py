"""The call log store: calls, their status history, recordings and operator
state.  :class:`Store` is the interface; :class:`SQLiteStore` keeps it in one
SQLite file.  See :mod:`agi_app.store.base` for the shapes of the dicts."""

from agi_app.store.base import (
    CALL_KINDS,
    FINAL_STATUSES,
    OPERATOR_STATES,
    STATUSES,
    EntryList,
    ExternalKeyConflict,
    JSONPage,
    Page,
    Store,
    StoreError,
    UnknownCall,
    api_record,
    canonical_json,
    check_time,
    iso_time,
)
from agi_app.store.sqlite import SQLiteStore

__all__ = [
    "CALL_KINDS",
    "FINAL_STATUSES",
    "OPERATOR_STATES",
    "STATUSES",
    "EntryList",
    "ExternalKeyConflict",
    "JSONPage",
    "Page",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UnknownCall",
    "api_record",
    "canonical_json",
    "check_time",
    "iso_time",
]
