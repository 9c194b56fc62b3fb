"""An online backup of the SQLite store: ``agi-app backup --config FILE DEST``.

SQLite's backup API copies the database page by page through a connection
of its own.  Done in one step (``pages=-1``) it reads one snapshot in one
read transaction: in WAL mode the running service goes on writing meanwhile,
and the copy is the database as it was when the step began, with every
transaction committed by then and none after.  (In several steps the copy
would start over each time the service wrote, and might never finish on a
busy store.)

The copy is written to a temporary file beside ``dest``, checked with
``PRAGMA quick_check``, and renamed into place: ``dest`` is never half a
database.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agi_app.store.base import StoreError

__all__ = ["BackupResult", "backup"]


@dataclass(frozen=True)
class BackupResult:
    """What :func:`backup` wrote."""

    path: Path
    #: bytes of the copy
    size: int
    #: the schema version in the copy (``PRAGMA user_version``)
    schema_version: int


def backup(source: str | os.PathLike, dest: str | os.PathLike, *,
           busy_timeout_ms: int = 5000) -> BackupResult:  # fmt: skip
    """Copy the store at ``source`` to ``dest`` while it may be in use.

    Raises :class:`~agi_app.store.StoreError` when ``source`` is not a
    SQLite database or the copy fails its check; ``dest`` is then left as it
    was."""
    src_path, dest_path = Path(source), Path(dest)
    if not src_path.is_file():
        raise StoreError(f"no store at {src_path}")
    if dest_path.exists() and dest_path.resolve() == src_path.resolve():
        raise StoreError("the backup would overwrite the store itself")
    tmp = dest_path.with_name(f".{dest_path.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        # read-only: a backup never changes the store (nor creates one)
        src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
        try:
            src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            out = sqlite3.connect(tmp)
            try:
                src.backup(out, pages=-1)
                (check,) = out.execute("PRAGMA quick_check").fetchone()
                (version,) = out.execute("PRAGMA user_version").fetchone()
            finally:
                out.close()
        finally:
            src.close()
        if check != "ok":
            raise StoreError(f"the copy of {src_path} failed its check: {check}")
        os.replace(tmp, dest_path)
    except sqlite3.Error as e:
        raise StoreError(f"backup of {src_path} failed: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return BackupResult(dest_path, dest_path.stat().st_size, version)
