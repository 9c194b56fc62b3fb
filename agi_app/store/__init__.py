"""The call log store: calls, their status history, recordings and operator
state.  :class:`Store` is the interface; :class:`SQLiteStore` keeps it in one
SQLite file, :class:`~agi_app.store.postgres.PostgresStore` in a PostgreSQL
database; :func:`store_from_config` picks one.  See
:mod:`agi_app.store.base` for the shapes of the dicts."""

from typing import Any

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
from agi_app.store.postgres import PostgresStore
from agi_app.store.sqlite import SQLiteStore

#: URL schemes of a PostgreSQL store (``[store] url``)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(location: str) -> bool:
    """True when ``location`` is a PostgreSQL URL rather than a file path."""
    return location.split(":", 1)[0].lower() in POSTGRES_SCHEMES and "://" in location


def store_at(location: str, reactor: Any, **options: Any) -> Store:
    """An unopened store at ``location``: a ``postgresql://`` URL, or the
    path of an SQLite file.  ``options`` go to the store's constructor
    (``clock``; ``read_budget_us`` is SQLite's and ignored for PostgreSQL)."""
    if is_postgres_url(location):
        options.pop("read_budget_us", None)
        return PostgresStore(location, reactor=reactor, **options)
    return SQLiteStore(location, reactor=reactor, **options)


def store_from_config(config: Any, reactor: Any) -> Store:
    """The unopened store a configuration's ``[store]`` section asks for:
    PostgreSQL at ``url`` when it is set, SQLite at ``path`` otherwise."""
    section = config.store
    return store_at(
        section.url or section.path, reactor, read_budget_us=section.read_budget_us
    )

__all__ = [
    "CALL_KINDS",
    "FINAL_STATUSES",
    "OPERATOR_STATES",
    "POSTGRES_SCHEMES",
    "STATUSES",
    "EntryList",
    "ExternalKeyConflict",
    "JSONPage",
    "Page",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UnknownCall",
    "api_record",
    "canonical_json",
    "check_time",
    "is_postgres_url",
    "iso_time",
    "store_at",
    "store_from_config",
]
