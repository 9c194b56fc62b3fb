"""Retention and erasure of the call log and its recordings.

:class:`Retention` is the background job of ``[retention]``: at start and
then every ``interval`` seconds it deletes the calls created more than
``history_days`` ago (with their status history and their recordings, rows
and files) and the recordings created more than ``recordings_days`` ago
(rows and files; the call and its history stay).  A call that has no final
status yet is never touched, however old.

:class:`Erasure` erases one subject on request (``DELETE /api/orderData``,
``DELETE /api/phoneData``): every call of an order or of a phone number,
their history, recordings and files, and the webhook events still queued
that carry the subject's data; it refuses while a call of the subject is in
progress, and writes what it erased (counts, and the order_id or a keyed
hash of the phone number) to the store's erasure log.

Both work in small batches, one short store transaction each: the store
applies its writes on one thread (:mod:`agi_app.store.engine`), so the
writes of live calls wait for at most one batch, and the CRM API's reads
never wait (WAL).  Files are removed before their rows, off the reactor
thread: if the process dies in between, a row may point at a removed file
for a while (``GET /records/{id}`` answers 404 ``record_gone``, and the next
run removes the row) but no file is ever left without a row to find it by.
A file that cannot be removed (not a missing one) keeps its row, and is
tried again at the next run.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from agi_app.errors import AppError, Conflict, NotFound
from agi_app.store.base import Store
from agi_app.times import iso_time

__all__ = [
    "CallInProgress",
    "Erasure",
    "ErasureFailed",
    "PurgeReport",
    "RemovedFiles",
    "Retention",
    "phone_spellings",
    "remove_files",
]

log = Logger(namespace="agi_app.retention")

#: ``run_blocking(fn, *args)``: run ``fn`` off the reactor thread, fire its result.
RunBlocking = Callable[..., defer.Deferred]
DAY = 86400


@dataclass
class RemovedFiles:
    """What :func:`remove_files` did: files removed, already gone, and those
    that could not be removed (with the error)."""

    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def remove_files(paths: Iterable[str]) -> RemovedFiles:
    """Remove each file (blocking).  A file that is gone already counts as
    ``missing``; any other error (a directory, no permission) as ``failed``."""
    out = RemovedFiles()
    for path in dict.fromkeys(paths):
        try:
            os.remove(path)
        except FileNotFoundError:
            out.missing.append(path)
        except OSError as e:
            out.failed[path] = errno.errorcode.get(e.errno or 0, "") or str(e)
        else:
            out.removed.append(path)
    return out


def phone_spellings(phone: str) -> list[str]:
    """A phone number as it may be stored: without and with the leading ``+``."""
    bare = phone.removeprefix("+")
    return [bare, "+" + bare]


@dataclass
class PurgeReport:
    """What one run of :class:`Retention` removed."""

    calls: int = 0
    entries: int = 0
    recordings: int = 0
    files: int = 0
    #: files that could not be removed (their rows stay)
    failed: int = 0
    batches: int = 0
    seconds: float = 0.0
    #: the longest deletion of one batch, seconds from asking the store to
    #: its answer (the transaction, and the store's queue before it)
    longest_write: float = 0.0
    #: the limits of this run (UTC times; "" when not set)
    history_before: str = ""
    recordings_before: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The counts by name."""
        return dict(self.__dict__)


class Retention:
    """The purge of old history and recordings (``[retention]``).

    :param store: the call log
    :param clock: the reactor's clock (``IReactorTime``): "now", the
        interval, the pauses between batches
    :param run_blocking: runs the file removals off the reactor thread
        (:func:`threads.deferToThreadPool` on the reactor's pool)
    :param history_days: calls older than this go (0: never)
    :param recordings_days: recordings older than this go (0: never)
    :param interval: seconds between runs
    :param batch_size: calls (or recordings) per store transaction
    :param pause: seconds between two batches, at least
    :param idle_ratio: and at least this many times as long as the batch
        took (wall time): the purge leaves the process's CPU and the disk
        to the rest most of the time, and slows down by itself on a busy
        machine (0: just ``pause``)
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        history_days: int = 0,
        recordings_days: int = 0,
        interval: float = 3600.0,
        batch_size: int = 100,
        pause: float = 0.01,
        idle_ratio: float = 2.0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.clock = clock
        self._blocking = run_blocking
        self.history_days = history_days
        self.recordings_days = recordings_days
        self.interval = interval
        self.batch_size = batch_size
        self.pause = pause
        self.idle_ratio = idle_ratio
        self._loop: task.LoopingCall | None = None
        self._stopping = False
        #: the last run's report (None before the first)
        self.last: PurgeReport | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is anything to purge at all."""
        return bool(self.history_days or self.recordings_days)

    def start(self) -> None:
        """Run now, then every :attr:`interval` seconds (nothing when neither
        limit is set)."""
        if not self.enabled or self._loop is not None:
            return
        self._stopping = False
        self._loop = task.LoopingCall(self._run_logged)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop the schedule; a run in progress ends after its batch."""
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _run_logged(self) -> defer.Deferred:
        # A failed run is logged; the schedule goes on (LoopingCall would stop).
        # (Once stopped, the store may close under a batch: nothing to say.)
        d = defer.ensureDeferred(self.run())
        d.addErrback(
            lambda f: None if self._stopping else log.failure("retention run failed", f)
        )
        return d

    async def run(self) -> PurgeReport:
        """One purge: old calls, then old recordings, batch after batch."""
        report = PurgeReport()
        started = time.monotonic()
        now = self.clock.seconds()
        if self.history_days:
            before = report.history_before = iso_time(now - self.history_days * DAY)
            await self._purge_calls(before, report)
            log.info(
                "retention: {calls} calls removed, created before {before} "
                "({entries} history entries, {recordings} recordings, {files} files)",
                calls=report.calls, before=before, entries=report.entries,
                recordings=report.recordings, files=report.files,
            )  # fmt: skip
        if self.recordings_days and not self._stopping:
            before = report.recordings_before = iso_time(now - self.recordings_days * DAY)
            rows, files = report.recordings, report.files
            await self._purge_recordings(before, report)
            log.info(
                "retention: {rows} recordings removed, created before {before} ({files} files)",
                rows=report.recordings - rows, before=before, files=report.files - files,
            )  # fmt: skip
        report.seconds = time.monotonic() - started
        if report.failed:
            log.warn("retention: {failed} files could not be removed; their rows stay",
                     failed=report.failed)  # fmt: skip
        self.last = report
        return report

    async def _between_batches(self, took: float) -> None:
        # The store's queue has run every write that came meanwhile; the
        # pause leaves the CPU (and the disk) to the API and live calls.
        pause = max(self.pause, self.idle_ratio * took)
        if pause > 0:
            await task.deferLater(self.clock, pause, lambda: None)

    async def _remove(self, paths: list[str]) -> RemovedFiles:
        if not paths:
            return RemovedFiles()
        return await self._blocking(remove_files, paths)

    async def _purge_calls(self, before: str, report: PurgeReport) -> None:
        # Calls whose files stay keep their rows; tried again at the next run.
        stuck: set[str] = set()
        while not self._stopping:
            began = time.monotonic()
            batch = await self.store.old_calls(before, self.batch_size, sorted(stuck))
            if not batch.call_ids:
                return
            files = await self._remove([path for _call, path in batch.files])
            stuck.update(call for call, path in batch.files if path in files.failed)
            report.failed += len(files.failed)
            asked = time.monotonic()
            deleted = await self.store.delete_calls(
                [c for c in batch.call_ids if c not in stuck]
            )
            report.longest_write = max(report.longest_write, time.monotonic() - asked)
            # Recordings stored between the two steps (none, normally).
            late = await self._remove(
                [p for p in deleted.paths if p not in files.removed and p not in files.missing]
            )
            report.calls += deleted.calls
            report.entries += deleted.entries
            report.recordings += deleted.recordings
            report.files += len(files.removed) + len(late.removed)
            report.batches += 1
            if report.batches % 100 == 0:
                log.info("retention: {calls} calls removed so far", calls=report.calls)
            if len(batch.call_ids) < self.batch_size:
                return  # that was the last
            await self._between_batches(time.monotonic() - began)

    async def _purge_recordings(self, before: str, report: PurgeReport) -> None:
        stuck: set[int] = set()
        while not self._stopping:
            began = time.monotonic()
            rows = await self.store.old_recordings(before, self.batch_size, sorted(stuck))
            if not rows:
                return
            files = await self._remove([r["path"] for r in rows])
            stuck.update(r["record_id"] for r in rows if r["path"] in files.failed)
            report.failed += len(files.failed)
            asked = time.monotonic()
            gone = await self.store.delete_recordings(
                [r["record_id"] for r in rows if r["record_id"] not in stuck]
            )
            report.longest_write = max(report.longest_write, time.monotonic() - asked)
            report.recordings += gone
            report.files += len(files.removed)
            report.batches += 1
            if report.batches % 100 == 0:
                log.info("retention: {rows} recordings removed so far", rows=report.recordings)
            if len(rows) < self.batch_size:
                return
            await self._between_batches(time.monotonic() - began)


class CallInProgress(Conflict):
    """A call of the subject is still going on: nothing was erased (409)."""

    code = "call_in_progress"

    def __init__(self, call_ids: list[str]):
        super().__init__(
            "a call of this subject is in progress; erase it once the call has ended",
            extra={"call_ids": list(call_ids)},
        )


class ErasureFailed(AppError):
    """Recording files could not be removed: their rows (and the rest of
    the subject's data not erased yet) stay, so the erasure can be asked
    again (500)."""

    status = 500
    code = "erasure_failed"


class Erasure:
    """Erases the data of one order or one phone number.

    :param store: the call log
    :param events: the :class:`~agi_app.events.service.EventService` (or
        anything with its ``erase``), whose queued events are erased too;
        None: no events
    :param run_blocking: runs file removals off the reactor thread
    :param hash_key: the key of the phone numbers' hashes in the erasure
        log (HMAC-SHA256): the log proves a number was erased to whoever
        holds the key and the number, and tells nobody else the number
    :param batch_size: calls per store transaction
    """

    def __init__(
        self,
        store: Store,
        *,
        events: Any,
        run_blocking: RunBlocking,
        hash_key: bytes,
        batch_size: int = 100,
    ):
        self.store = store
        self.events = events
        self._blocking = run_blocking
        self._hash_key = hash_key
        self.batch_size = batch_size

    def phone_hash(self, phone: str) -> str:
        """The erasure log's name of a phone number (any spelling of it)."""
        bare = phone.removeprefix("+").encode("ascii")
        return hmac.new(self._hash_key, bare, hashlib.sha256).hexdigest()

    async def erase_order(self, order_id: str) -> dict[str, int]:
        """Erase the calls of ``order_id``; the counts of what was erased.
        :class:`~agi_app.errors.NotFound` ``unknown_order`` when nothing was
        stored; :class:`CallInProgress` while one of its calls is going on."""
        counts = await self._erase("order", order_id, {"order_id": order_id},
                                   order_id=order_id, phones=())  # fmt: skip
        if not any(counts.values()):
            raise NotFound(f"nothing stored for order {order_id}", code="unknown_order",
                           field="order_id")  # fmt: skip
        return counts

    async def erase_phone(self, phone: str) -> dict[str, int]:
        """Erase the calls of a phone number (with or without ``+``); the
        counts.  :class:`~agi_app.errors.NotFound` ``unknown_phone`` when
        nothing was stored; :class:`CallInProgress` while one of its calls
        is going on."""
        counts = await self._erase("phone", self.phone_hash(phone), {"phone": phone},
                                   order_id=None, phones=phone_spellings(phone))  # fmt: skip
        if not any(counts.values()):
            raise NotFound("nothing stored for this phone number", code="unknown_phone",
                           field="phone")  # fmt: skip
        return counts

    async def _erase(
        self,
        subject: str,
        subject_id: str,
        which: dict[str, str],
        *,
        order_id: str | None,
        phones: Iterable[str],
    ) -> dict[str, int]:
        """Erase batch after batch; whatever was erased (all, or what came
        before a failure) goes to the erasure log."""
        counts = {"calls": 0, "entries": 0, "recordings": 0, "files": 0, "events": 0}
        batch = await self.store.subject_calls(**which, limit=self.batch_size)
        if batch.open_ids:
            raise CallInProgress(list(batch.open_ids))
        erased: list[str] = []
        try:
            while batch.call_ids:
                files = await self._remove([path for _call, path in batch.files])
                deleted = await self.store.delete_calls(batch.call_ids)
                late = await self._remove(
                    [p for p in deleted.paths if p not in files.removed and p not in files.missing]
                )
                counts["calls"] += deleted.calls
                counts["entries"] += deleted.entries
                counts["recordings"] += deleted.recordings
                counts["files"] += len(files.removed) + len(late.removed)
                erased.extend(batch.call_ids)
                if not deleted.calls:
                    break  # (cannot happen: the batch holds finished calls only)
                batch = await self.store.subject_calls(**which, limit=self.batch_size)
            if self.events is not None:
                counts["events"] = await self.events.erase(
                    call_ids=erased, order_id=order_id, phones=list(phones)
                )
        finally:
            if any(counts.values()):
                await self._log(subject, subject_id, counts)
        return counts

    async def _log(self, subject: str, subject_id: str, counts: dict[str, int]) -> None:
        entry = await self.store.log_erasure(subject, subject_id, counts)
        log.info(
            "erasure {id}: {subject} {subject_id}: {calls} calls, {entries} history entries, "
            "{recordings} recordings, {files} files, {events} queued events",
            id=entry["id"], subject=subject, subject_id=subject_id, **counts,
        )  # fmt: skip

    async def _remove(self, paths: list[str]) -> RemovedFiles:
        if not paths:
            return RemovedFiles()
        files: RemovedFiles = await self._blocking(remove_files, paths)
        if files.failed:
            for path, error in files.failed.items():
                log.error("erasure: {path} could not be removed ({error})",
                          path=path, error=error)  # fmt: skip
            raise ErasureFailed(
                f"{len(files.failed)} recording files could not be removed; "
                "nothing else of them was erased, ask again once that is fixed"
            )
        return files
