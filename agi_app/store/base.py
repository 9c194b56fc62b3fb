"""The call log store's interface, independent of the database behind it.

Everything the application persists goes through :class:`Store`: calls, their
status history (CONTRACT section 2), recordings and operator state.  Every
public method returns a Deferred; an implementation keeps its blocking work
off the reactor thread.  The implementations are
:class:`agi_app.store.sqlite.SQLiteStore` and
:class:`agi_app.store.postgres.PostgresStore`; every contract test of the
store runs on both.

Shapes of the dicts handed out:

- call: ``call_id, kind, sip, phone, order_id, external_key, params (dict),
  created_at, final_status, finished_at, talk_seconds, pbx``
- history entry: ``id, call_id, order_id, status, time, detail, pbx``
- recording: ``record_id, call_id, order_id, external_key, sip, phone, path,
  created_at, duration, size, pbx``
- operator: ``sip, status, since, pbx``; operator history entry: ``id, sip,
  status, time, pbx``

``pbx`` is the name of the PBX (``default``: ``[ami]``; ``NAME``:
``[ami:NAME]``) the call was on, or that reported the operator's state.
- missed call: ``id, call_id, phone, did, time, extensions (list), ring_seconds,
  called_back, handled_at, callback_attempts, last_callback, last_callback_at, pbx``
- operator statistics: ``sip, offered, answered, ring_ms, talked, talk_ms``
- erasure log entry: ``id, time, subject ("order"|"phone"), subject_id,
  calls, entries, recordings, files, events``

Times are UTC text with milliseconds, ``2026-11-25T21:04:37.123Z``; this
format sorts as text in time order.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred

from agi_app.calls.statuses import CALL_KINDS, FINAL_STATUSES, STATUSES
from agi_app.errors import Conflict
from agi_app.times import check_time, iso_time

__all__ = [
    "CALL_KINDS",
    "ERASURE_SUBJECTS",
    "FINAL_STATUSES",
    "OPERATOR_STATES",
    "STATUSES",
    "CallBatch",
    "Deleted",
    "EntryList",
    "ExternalKeyConflict",
    "JSONPage",
    "Page",
    "Store",
    "StoreError",
    "UnknownCall",
    "api_record",
    "canonical_json",
    "check_time",
    "iso_time",
]

#: Operator states of ``/api/sipList`` (CONTRACT 3.6).
OPERATOR_STATES: tuple[str, ...] = ("online", "inuse", "offline")

#: What an erasure names (``erasures.subject``): an order, or a phone number.
ERASURE_SUBJECTS: tuple[str, ...] = ("order", "phone")


class StoreError(Exception):
    """The store cannot do what was asked (closed, newer schema, ...)."""


class ExternalKeyConflict(Conflict):
    """A call with this ``external_key`` exists and was made with other parameters.

    ``call_id`` is the existing call's id (the API answers 409 with it).
    """

    code = "external_key_conflict"

    def __init__(self, call_id: str):
        super().__init__(
            "external_key was used before with other parameters",
            field="external_key",
            extra={"call_id": call_id},
        )
        self.call_id = call_id


class UnknownCall(StoreError, LookupError):
    """No call has this id."""

    def __init__(self, call_id: str):
        super().__init__(f"unknown call {call_id!r}")
        self.call_id = call_id


class Page(NamedTuple):
    """One page of a listing: ``total`` rows match, ``items`` is this page."""

    total: int
    items: list[dict[str, Any]]


class EntryList(NamedTuple):
    """History entries as the JSON text of their array, ascending by id.

    The CRM API hands history pages out as JSON; a store that can produce
    the text itself (SQLite's ``json_group_array``) spares the application
    parsing it into dicts and encoding it again, which for a 100-entry
    page costs more than the query.  ``count`` and ``last_id`` (None when
    empty) are what a handler needs without parsing."""

    json: str
    count: int
    last_id: int | None

    @classmethod
    def of(cls, entries: list[dict[str, Any]]) -> EntryList:
        """The list of an already parsed, ascending list of entries."""
        text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False)
        return cls(text, len(entries), entries[-1]["id"] if entries else None)

    def entries(self) -> list[dict[str, Any]]:
        """The entries as dicts (parsed on each call)."""
        return json.loads(self.json)


class JSONPage(NamedTuple):
    """One page of a listing with its items as the JSON text of their array
    (see :class:`EntryList`): ``total`` rows match, ``count`` are here."""

    total: int
    json: str
    count: int

    @classmethod
    def of(cls, total: int, items: list[dict[str, Any]]) -> JSONPage:
        """The page of already built items."""
        return cls(total, json.dumps(items, separators=(",", ":"), ensure_ascii=False), len(items))

    def items(self) -> list[dict[str, Any]]:
        """The items as dicts (parsed on each call)."""
        return json.loads(self.json)


class CallBatch(NamedTuple):
    """Finished calls picked for deletion (retention or erasure): their ids,
    the files of their recordings as ``(call_id, path)``, and (erasure only)
    the ids of the calls of the same subject that are still in progress."""

    call_ids: list[str]
    files: list[tuple[str, str]]
    open_ids: Sequence[str] = ()


class Deleted(NamedTuple):
    """What :meth:`Store.delete_calls` removed: rows of each table, and the
    files of the recordings whose rows it removed (for the caller to delete
    or check)."""

    calls: int
    entries: int
    recordings: int
    paths: list[str]


#: The fields of a recording as the CRM API lists it, in order, then ``url``.
API_RECORD_FIELDS = (
    "record_id", "call_id", "order_id", "external_key", "sip", "phone", "created_at",
    "duration", "size", "pbx",
)  # fmt: skip


def api_record(recording: dict[str, Any], url_prefix: str) -> dict[str, Any]:
    """A stored recording as the CRM API lists it: no file path, and ``url``
    = ``url_prefix`` followed by the record_id."""
    out = {k: recording[k] for k in API_RECORD_FIELDS}
    out["url"] = f"{url_prefix}{recording['record_id']}"
    return out


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` used to store and compare call parameters:
    sorted keys, no insignificant white space."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Store(abc.ABC):
    """The persistent call log.  Every method returns a Deferred.

    Writes are committed before their Deferred fires, so nothing whose
    Deferred has fired is lost if the process is killed.  Writes are applied
    one at a time in the order the methods were called, which is what makes
    the "exactly one final status" rule and the ``id`` polling cursor safe.
    """

    # -- lifetime ---------------------------------------------------------

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and bring the schema up to date (blocking; call at startup)."""

    @abc.abstractmethod
    def close(self) -> Deferred[None]:
        """Finish queued work, then release the database."""

    # -- calls and statuses -----------------------------------------------

    @abc.abstractmethod
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
        """Create a call and its ``CALL`` history entry in one transaction.

        With an ``external_key`` that is already stored: if the stored call
        has the same ``kind`` and the same ``params`` (compared as canonical
        JSON) fire ``(existing_call, False)``; otherwise fail with
        :class:`ExternalKeyConflict`.  A new call fires ``(call, True)``.
        """

    @abc.abstractmethod
    def add_status(
        self,
        call_id: str,
        status: str,
        detail: str | None = None,
        *,
        time: str | None = None,
        talk_seconds: float | None = None,
    ) -> Deferred[dict[str, Any] | None]:
        """Append one history entry to a call and fire it.

        Fires ``None`` (and logs) when the call already has its final status:
        nothing is ever written after it.  A final status also sets the
        call's ``final_status``/``finished_at`` (and ``talk_seconds``, meant
        for FINISH) in the same transaction.  An unknown status word raises
        ValueError at once; an unknown call fails with :class:`UnknownCall`.
        """

    @abc.abstractmethod
    def get_call(self, call_id: str) -> Deferred[dict[str, Any] | None]:
        """The call with this id, or None."""

    @abc.abstractmethod
    def get_call_by_external_key(self, external_key: str) -> Deferred[dict[str, Any] | None]:
        """The call created with this external_key, or None."""

    @abc.abstractmethod
    def open_calls(self, pbx: str | None = None) -> Deferred[list[dict[str, Any]]]:
        """Calls without a final status (of one PBX, or all), oldest first;
        used at startup to settle calls a crash left open."""

    @abc.abstractmethod
    def statuses(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        """Every history entry of one call, ascending by id."""

    # -- recordings -------------------------------------------------------

    @abc.abstractmethod
    def add_recording(
        self,
        *,
        call_id: str,
        path: str,
        created_at: str | None = None,
        duration: float | None = None,
        size: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Store a recording of a call (order_id, external_key, sip and phone
        are copied from the call) and fire it with its new ``record_id``."""

    @abc.abstractmethod
    def update_recording(
        self, record_id: int, *, duration: float | None = None, size: int | None = None
    ) -> Deferred[dict[str, Any] | None]:
        """Set the duration and/or size once the file is complete; fires the
        updated recording, or None for an unknown record_id."""

    @abc.abstractmethod
    def get_recording(self, record_id: int) -> Deferred[dict[str, Any] | None]:
        """The recording with this id, or None."""

    @abc.abstractmethod
    def call_recordings(self, call_id: str) -> Deferred[list[dict[str, Any]]]:
        """The recordings of one call, ascending record_id."""

    # -- retention and erasure ----------------------------------------------
    #
    # agi_app.retention deletes in small batches: each method below is one
    # short transaction (a batch of ``limit`` calls or recordings), so the
    # other writes of the store wait for at most one batch.  A call without
    # a final status is never selected nor deleted.

    @abc.abstractmethod
    def old_calls(
        self, before: str, limit: int, skip: Sequence[str] = ()
    ) -> Deferred[CallBatch]:
        """Up to ``limit`` calls created before ``before`` (a UTC time,
        :func:`iso_time`) that have their final status, oldest first, except
        those in ``skip`` (calls whose files could not be removed), with the
        files of their recordings (``open_ids`` is empty).  Reads only.
        Fast on a big log: an index on ``calls.created_at``."""

    @abc.abstractmethod
    def subject_calls(
        self, *, order_id: str | None = None, phone: str | None = None, limit: int = 500
    ) -> Deferred[CallBatch]:
        """The calls of one subject: those of ``order_id``, or those where
        ``phone`` is the client's number (``calls.phone``) or the first
        number of a phoneToPhone call (its ``sip``).  Give exactly one of
        them; a phone matches with and without a leading ``+``.  Fires up to
        ``limit`` finished calls (``call_ids``, oldest first, and
        ``paths`` of their recordings) and every call of the subject still
        in progress (``open_ids``).  Reads only."""

    @abc.abstractmethod
    def delete_calls(self, call_ids: Sequence[str]) -> Deferred[Deleted]:
        """Delete those of ``call_ids`` that have their final status, with
        their history entries and recordings rows, in one transaction (the
        recordings' row count kept for the pager stays right).  Ids of calls
        in progress or unknown are skipped.  Fires the counts and the paths
        of the deleted recordings."""

    @abc.abstractmethod
    def old_recordings(
        self, before: str, limit: int, skip: Sequence[int] = ()
    ) -> Deferred[list[dict[str, Any]]]:
        """Up to ``limit`` recordings created before ``before`` whose call
        has its final status, oldest first, except the record_ids in
        ``skip``: ``record_id, path``.  Reads only."""

    @abc.abstractmethod
    def delete_recordings(self, record_ids: Sequence[int]) -> Deferred[int]:
        """Delete these recordings' rows (their files are the caller's), in
        one transaction, skipping those whose call is in progress; fires how
        many were deleted."""

    @abc.abstractmethod
    def log_erasure(
        self, subject: str, subject_id: str, counts: Mapping[str, int]
    ) -> Deferred[dict[str, Any]]:
        """Append an erasure to the erasure log: ``subject`` is one of
        :data:`ERASURE_SUBJECTS`, ``subject_id`` the order_id or a keyed hash
        of the phone (never the number itself), ``counts`` has ``calls,
        entries, recordings, files, events``.  Fires the new entry."""

    @abc.abstractmethod
    def erasures(
        self, subject: str | None = None, subject_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        """The erasure log, oldest first, optionally of one subject."""

    # -- operators --------------------------------------------------------

    @abc.abstractmethod
    def set_operator_status(
        self, sip: str, status: str, time: str | None = None, pbx: str = "default"
    ) -> Deferred[bool]:
        """Record the state of extension ``sip`` on PBX ``pbx`` (one of
        :data:`OPERATOR_STATES`); fires True when it changed (and was added
        to the operator history)."""

    @abc.abstractmethod
    def operator_statuses(self, pbx: str = "default") -> Deferred[dict[str, str]]:
        """The current state of every known operator of PBX ``pbx``, ``{sip: status}``."""

    @abc.abstractmethod
    def operators(
        self, page: int, per_page: int, statuses: frozenset[str] | None = None
    ) -> Deferred[Page]:
        """Operators ordered by sip (then pbx: one extension may be on
        several PBXs), optionally only those in ``statuses``."""

    @abc.abstractmethod
    def operator_history(
        self, sip: str | None = None, page: int = 1, per_page: int = 20
    ) -> Deferred[Page]:
        """Operator state changes, newest first, optionally of one sip."""

    # -- history queries of the CRM API ---------------------------------------

    @abc.abstractmethod
    def recordings(self, page: int, per_page: int) -> Deferred[Page]:
        """Recordings, newest first (by record_id: the order they were added)."""

    def recordings_json(self, page: int, per_page: int, url_prefix: str) -> Deferred[JSONPage]:
        """:meth:`recordings` as the CRM API lists them (:func:`api_record`),
        as JSON text.  A store that can produce the text directly overrides
        this."""
        return self.recordings(page, per_page).addCallback(
            lambda found: JSONPage.of(found.total, [api_record(r, url_prefix) for r in found.items])
        )

    @abc.abstractmethod
    def order_calls(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        """The calls of an order, oldest first, each with a ``records`` list
        of its recordings (ascending record_id)."""

    @abc.abstractmethod
    def order_history(self, order_id: str) -> Deferred[list[dict[str, Any]]]:
        """Every history entry of every call of an order, ascending by id."""

    def order_history_json(self, order_id: str) -> Deferred[EntryList]:
        """:meth:`order_history` as an :class:`EntryList`.  A store that can
        produce the JSON text directly overrides this."""
        return self.order_history(order_id).addCallback(EntryList.of)

    @abc.abstractmethod
    def history_after(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        """Up to ``limit`` history entries with ``id > after_id``, ascending by
        id, of every call or of one.  A poller that passes the last id it saw
        never misses or repeats an entry: ids are assigned in commit order."""

    def history_after_json(
        self, after_id: int, limit: int, call_id: str | None = None
    ) -> Deferred[EntryList]:
        """:meth:`history_after` as an :class:`EntryList`.  A store that can
        produce the JSON text directly overrides this."""
        return self.history_after(after_id, limit, call_id).addCallback(EntryList.of)

    # -- missed calls ---------------------------------------------------------

    @abc.abstractmethod
    def add_missed_call(
        self,
        *,
        call_id: str,
        phone: str | None,
        did: str | None,
        time: str,
        extensions: Sequence[str],
        ring_seconds: float,
        pbx: str = "default",
    ) -> Deferred[dict[str, Any]]:
        """Record an inbound call nobody answered and fire it (a missed call,
        see the module) with its new ``id``.

        ``call_id`` is agi_app's call id when the call had one, else the
        live tracker's ``call_api_id``; ``phone`` the caller's number (None
        when it was withheld or not a phone number: such a call is never
        called back); ``did`` the number dialled; ``time`` when the call came
        in; ``extensions`` those whose phones rang; ``ring_seconds`` how long
        the caller waited.  Ids grow in the order the rows are committed (the
        ``missedCalls`` cursor).  ``called_back`` and ``handled_at`` start
        null, ``callback_attempts`` at 0."""

    @abc.abstractmethod
    def missed_calls_after(
        self, after_id: int, limit: int, open_only: bool = False
    ) -> Deferred[list[dict[str, Any]]]:
        """Up to ``limit`` missed calls with ``id > after_id``, ascending by
        id; ``open_only``: only those nobody got through to yet
        (``called_back`` null)."""

    @abc.abstractmethod
    def open_missed_calls(
        self, since: str | None = None, pbx: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        """The missed calls nobody got through to yet that have a ``phone``,
        ascending by id; only those that came in at or after ``since`` (a
        time), of one PBX or all.  The callback scheduler reads this: keep
        it cheap while the handled ones pile up (an index of the open rows)."""

    @abc.abstractmethod
    def missed_calls_handled(
        self, phones: Sequence[str], call_id: str, time: str
    ) -> Deferred[list[int]]:
        """Someone got through to the caller: every open missed call whose
        ``phone`` is one of ``phones`` (the spellings of one number, with and
        without ``+``) gets ``called_back`` = ``call_id`` (the call that
        got through) and ``handled_at`` = ``time``.  Fires the ids changed
        (none when there were no open ones)."""

    @abc.abstractmethod
    def missed_callback_placed(
        self, phones: Sequence[str], call_id: str, time: str
    ) -> Deferred[int]:
        """A callback to one of ``phones`` was placed: every open missed call
        of the number gets ``callback_attempts`` + 1, ``last_callback`` =
        ``call_id`` and ``last_callback_at`` = ``time``.  Fires how many."""

    # -- call statistics ----------------------------------------------------------

    @abc.abstractmethod
    def operator_stats(
        self, start: str, end: str, sip: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        """Per operator, ordered by sip, over the calls whose operator was
        rung (``OPERATOR_CALLTO``) in ``[start, end)`` -- times at whole
        UTC hours, ``2026-12-06T10:00:00.000Z`` (ValueError otherwise) --,
        of one ``sip`` or all: ``{"sip", "offered", "answered", "ring_ms",
        "talked", "talk_ms"}``.

        - the operator of a call is its ``sip``; for a call without one (an
          incoming or IVR call) the extension its OPERATOR_CALLTO detail
          names (``extension 1000``); a phoneToPhone call has none;
        - ``offered``: calls with OPERATOR_CALLTO; ``answered``: of those,
          with OPERATOR_PICKUP; ``ring_ms``: the sum, over the answered, of
          the milliseconds from OPERATOR_CALLTO to OPERATOR_PICKUP;
        - ``talked``: calls that ended in FINISH after OPERATOR_PICKUP with a
          known conversation, ``talk_ms`` its sum: FINISH's ``talk_seconds``
          (from CLIENT_PICKUP), or for incoming and IVR calls from
          OPERATOR_PICKUP to the end.

        Operators without a call offered in the range are left out.  Meant
        to be fast over any range: the SQLite store keeps running totals
        per operator and hour, so a range is two lookups per operator (see
        :mod:`agi_app.store.schema`)."""

    @abc.abstractmethod
    def call_outcomes(
        self, start: str, end: str, by: str = "hour"
    ) -> Deferred[list[dict[str, Any]]]:
        """The calls that began (``created_at``) in ``[start, end)`` and have
        a final status, counted per ``by`` (``hour``: whole UTC hours as
        above; ``day``: ``start`` and ``end`` at midnight UTC) and final
        status: ``[{"period": "2026-12-06T10" | "2026-12-06", "counts":
        {"FINISH": 12, ...}}]``, ascending, periods without calls left out."""
