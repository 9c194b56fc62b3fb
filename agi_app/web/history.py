"""The CRM history endpoints (CONTRACT 3.2–3.7) and recording downloads.

- ``/api/recordList``: recordings, newest first, paged.
- ``/api/orderRecords``: an order's calls with their recordings.
- ``/api/orderHistory``: an order's status history, flat or grouped by call.
- ``/api/callHistory``: one call's history, or everyone's after a cursor.
- ``/api/sipList``: operators and their state, paged, filtered by state.
- ``/api/operatorHistory``: operator state changes, newest first, paged.
- ``GET /records/{record_id}``: the audio of a recording, with the API key,
  or without one through a signed link ``?expires=<unix>&sig=<hex>``
  (:mod:`agi_app.links`; the site sends a request carrying ``sig`` to
  :meth:`HistoryEndpoints.add_signed_routes`' route).

An order with no calls is a 404 ``unknown_order`` for orderRecords and
orderHistory; an unknown call_id is a 404 ``unknown_call``.  With
``signed=1`` recordList and orderRecords give each recording's ``url`` as a
signed link (409 ``signed_links_disabled`` where the endpoints were built
without a :class:`~agi_app.links.RecordLinks`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.web import static

from agi_app import validation as v
from agi_app.errors import Conflict
from agi_app.links import RecordLinks
from agi_app.store import OPERATOR_STATES, Store, api_record
from agi_app.web import params as p
from agi_app.web.api import ApiError, ApiRequest, ApiResponse, Router
from agi_app.web.openapi import paths, ref
from agi_app.web.params import MAX_PER_PAGE, PAGE, PATH, PER_PAGE, Answer, Operation, Param
from agi_app.web.render import RawJSON

__all__ = ["OPERATIONS", "HistoryEndpoints", "add_routes", "openapi_paths", "openapi_schemas"]

#: Largest ``after_id`` accepted: SQLite's integer range.
MAX_ID = 2**63 - 1
#: ``limit`` of callHistory: default and maximum (CONTRACT 3.5).
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000

# Content types of the formats Asterisk records in (MixMonitor/Monitor).
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".wav49": "audio/wav",
    ".gsm": "audio/gsm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".ulaw": "audio/basic",
    ".alaw": "audio/x-alaw-basic",
    ".sln": "audio/L16;rate=8000",
    ".sln16": "audio/L16;rate=16000",
    ".g722": "audio/G722",
}

_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$", re.ASCII)


class HistoryEndpoints:
    """The handlers, over a :class:`~agi_app.store.Store`.

    ``public_url`` is the base of the recording links handed to clients
    (``[http] public_url``); ``links`` signs links that work without an API
    key (None: ``signed=1`` is refused and no signed link is accepted).
    """

    def __init__(self, store: Store, *, public_url: str, links: RecordLinks | None = None):
        self._store = store
        self._public_url = public_url.rstrip("/")
        self._links = links

    def add_routes(self, router: Router) -> None:
        """Register every endpoint of this module on ``router``."""
        p.add_route(router, RECORD_LIST, self.record_list)
        p.add_route(router, ORDER_RECORDS, self.order_records)
        p.add_route(router, ORDER_HISTORY, self.order_history)
        p.add_route(router, CALL_HISTORY, self.call_history)
        p.add_route(router, SIP_LIST, self.sip_list)
        p.add_route(router, OPERATOR_HISTORY, self.operator_history)
        p.add_route(router, RECORD, self.download)

    def add_signed_routes(self, router: Router) -> None:
        """Register the signed download (no API key: the signature is the
        authority) on ``router``, the one the site hands requests for
        ``/records/...`` that carry ``sig``; nothing without ``links``."""
        if self._links is not None:
            p.add_route(router, SIGNED_RECORD, self.signed_download)

    # -- shapes -----------------------------------------------------------

    def record_url(self, record_id: int | str) -> str:
        """The download link of a recording (of "": the prefix of every link)."""
        return f"{self._public_url}/records/{record_id}"

    def _record(self, r: dict[str, Any], signed: bool = False) -> dict[str, Any]:
        out = api_record(r, self.record_url(""))
        if signed:
            out["url"] = self._signing().url(r["record_id"])
        return out

    def _signing(self) -> RecordLinks:
        if self._links is None:
            raise Conflict("signed links are not available here", code="signed_links_disabled",
                           field="signed")  # fmt: skip
        return self._links

    # -- handlers ---------------------------------------------------------

    async def record_list(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/recordList``: recordings, newest first."""
        page, per_page = args["page"], args["per_page"]
        if args["signed"]:
            self._signing()
            rows = await self._store.recordings(page, per_page)
            return {
                "page": page,
                "per_page": per_page,
                "total": rows.total,
                "records": [self._record(r, signed=True) for r in rows.items],
            }
        found = await self._store.recordings_json(page, per_page, self.record_url(""))
        return {
            "page": page,
            "per_page": per_page,
            "total": found.total,
            "records": RawJSON(found.json, found.items),
        }

    async def order_records(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/orderRecords``: the calls of an order and their recordings."""
        order_id, signed = args["order_id"], args["signed"]
        if signed:
            self._signing()
        calls = await self._store.order_calls(order_id)
        if not calls:
            raise _unknown_order(order_id)
        return {
            "order_id": order_id,
            "calls": [
                {
                    "call_id": c["call_id"],
                    "external_key": c["external_key"],
                    "sip": c["sip"],
                    "phone": c["phone"],
                    "created_at": c["created_at"],
                    "final_status": c["final_status"],
                    "pbx": c["pbx"],
                    "records": [self._record(r, signed) for r in c["records"]],
                }
                for c in calls
            ],
        }

    async def order_history(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/orderHistory``: flat, or with ``group_by_call=1`` per call."""
        order_id = args["order_id"]
        history = await self._store.order_history_json(order_id)
        if not history.count:
            raise _unknown_order(order_id)
        if not args["group_by_call"]:
            return {"order_id": order_id, "history": RawJSON(history.json, history.entries)}
        entries = history.entries()
        by_call: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:  # ascending ids: calls come in the order they began
            by_call.setdefault(entry["call_id"], []).append(entry)
        return {
            "order_id": order_id,
            "calls": [{"call_id": c, "history": h} for c, h in by_call.items()],
        }

    async def call_history(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/callHistory``: entries after ``after_id``, of one call or all."""
        call_id, after_id = args["call_id"], args["after_id"]
        page = await self._store.history_after_json(after_id, args["limit"], call_id)
        # A call always has its CALL entry, so only an empty answer can mean an
        # unknown call: the usual request costs one store round trip, not two.
        if call_id is not None and not page.count and await self._store.get_call(call_id) is None:
            raise ApiError(404, "unknown_call", f"no call {call_id}", field="call_id")
        last_id = page.last_id if page.last_id is not None else after_id
        return {"history": RawJSON(page.json, page.entries), "last_id": last_id}

    async def sip_list(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/sipList``: operators and their state."""
        page, per_page = args["page"], args["per_page"]
        result = await self._store.operators(page, per_page, args["status"] or None)
        return {
            "page": page,
            "per_page": per_page,
            "total": result.total,
            "sips": [
                {"sip": o["sip"], "status": o["status"], "since": o["since"], "pbx": o["pbx"]}
                for o in result.items
            ],
        }

    async def operator_history(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/operatorHistory``: operator state changes, newest first."""
        page, per_page = args["page"], args["per_page"]
        result = await self._store.operator_history(args["sip"], page, per_page)
        return {
            "page": page,
            "per_page": per_page,
            "total": result.total,
            "history": [
                {"sip": h["sip"], "status": h["status"], "time": h["time"], "pbx": h["pbx"]}
                for h in result.items
            ],
        }

    async def signed_download(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        """``GET /records/{record_id}?expires=&sig=`` without an API key:
        403 ``invalid_signature``, 410 ``link_expired``, else the audio."""
        self._signing().check(args["record_id"], args["expires"], args["sig"])
        return await self.download(req, args)

    async def download(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        """``GET /records/{record_id}``: the recording's audio file."""
        record_id = args["record_id"]
        record = await self._store.get_recording(record_id)
        if record is None:
            raise ApiError(404, "unknown_record", f"no recording {record_id}")
        path = record["path"]
        if not os.path.isfile(path):
            raise ApiError(404, "record_gone", f"the file of recording {record_id} is gone")
        ext = os.path.splitext(path)[1].lower()
        resource = static.File(path, defaultType="application/octet-stream")
        resource.contentTypes = {**resource.contentTypes, **AUDIO_TYPES}
        if not _EXTENSION.match(ext):
            ext = ""
        name = f"record-{record_id}{ext}"
        return ApiResponse(
            resource=resource,
            headers={"Content-Disposition": f'inline; filename="{name}"'},
        )


def _unknown_order(order_id: str) -> ApiError:
    return ApiError(404, "unknown_order", f"no calls for order {order_id}", field="order_id")


def add_routes(
    router: Router, store: Store, *, public_url: str, links: RecordLinks | None = None
) -> HistoryEndpoints:
    """Register the history endpoints on ``router``; returns the handlers."""
    endpoints = HistoryEndpoints(store, public_url=public_url, links=links)
    endpoints.add_routes(router)
    return endpoints


# -- declarations -----------------------------------------------------------------

_NULLABLE_TEXT = {"type": ["string", "null"]}
_ENTRIES = {"type": "array", "items": ref("HistoryEntry")}
_ORDER_ID = p.identifier("order_id", "the CRM's order id", required=True)
# Digits only: the id goes into SQL as an int and into a file name.
_RECORD_ID_RULE = v.Rule("[0-9]{1,18}", "a whole number")


def _record_id(value: str, field: str) -> int:
    if not _RECORD_ID_RULE.match(value):
        raise v.InvalidInput(field, f"{field} must be {_RECORD_ID_RULE.says}")
    return int(value)


def _paged(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["page", "per_page", "total", key],
        "additionalProperties": False,
        "properties": {
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
            "total": {"type": "integer", "minimum": 0},
            key: {"type": "array", "items": item},
        },
    }


def _crm(path: str, summary: str, description: str, params: tuple[Param, ...],
         answer: dict[str, Any], *, tag: str = "history",
         errors: tuple[int, ...] = (400, 401),
         notes: dict[int, str] | None = None) -> Operation:  # fmt: skip
    """A CRM endpoint: GET with a query string, POST with the same fields."""
    return Operation(
        methods=("GET", "POST"), path=path, summary=summary, description=description,
        params=params, answers=(Answer(200, "success", answer),), errors=errors, tag=tag,
        notes=notes or {},
    )  # fmt: skip


_SIGNED = p.flag(
    "signed",
    "1: each url is a signed link that works without an API key for [http] "
    "record_link_ttl seconds",
    False,
)
_SIGNED_NOTE = {409: "signed=1 where signed links are not available (signed_links_disabled)"}
RECORD_LIST = _crm(
    "/api/recordList",
    "Recordings, newest first",
    "Recordings in the order they were added, newest first. A recording whose file "
    "was removed (retention, erasure) is no longer listed.",
    (PAGE, PER_PAGE, _SIGNED),
    _paged("records", ref("Record")),
    errors=(400, 401, 409),
    notes=_SIGNED_NOTE,
)
ORDER_RECORDS = _crm(
    "/api/orderRecords",
    "An order's calls and their recordings",
    "404 unknown_order when the order has no calls.",
    (_ORDER_ID, _SIGNED),
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["order_id", "calls"],
        "properties": {
            "order_id": {"type": "string"},
            "calls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "call_id", "external_key", "sip", "phone", "created_at",
                        "final_status", "pbx", "records",
                    ],
                    "properties": {
                        "call_id": {"type": "string"},
                        "external_key": _NULLABLE_TEXT,
                        "sip": _NULLABLE_TEXT,
                        "phone": _NULLABLE_TEXT,
                        "created_at": ref("Time"),
                        "final_status": {"oneOf": [ref("CallStatus"), {"type": "null"}]},
                        "pbx": ref("PBX"),
                        "records": {"type": "array", "items": ref("Record")},
                    },
                },
            },
        },
    },
    errors=(400, 401, 404, 409),
    notes=_SIGNED_NOTE,
)  # fmt: skip
ORDER_HISTORY = _crm(
    "/api/orderHistory",
    "An order's status history",
    "Every status of every call of the order in the order they happened; "
    "with group_by_call=1 grouped per call (calls in the order they began). "
    "404 unknown_order when the order has no calls.",
    (
        _ORDER_ID,
        p.flag("group_by_call", "1 (or true/yes/on): group the entries per call", False),
    ),
    {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["order_id", "history"],
                "properties": {"order_id": {"type": "string"}, "history": _ENTRIES},
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["order_id", "calls"],
                "properties": {
                    "order_id": {"type": "string"},
                    "calls": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["call_id", "history"],
                            "properties": {"call_id": {"type": "string"}, "history": _ENTRIES},
                        },
                    },
                },
            },
        ]
    },
    errors=(400, 401, 404),
)
CALL_HISTORY = _crm(
    "/api/callHistory",
    "Status history of one call, or of every call after a cursor",
    "Entries ascending by id. Poll with after_id = the last_id of the previous "
    "answer: no entry is missed or repeated. last_id is the last entry's id, "
    "or after_id when there is nothing new. 404 unknown_call for an unknown "
    "call_id.",
    (
        p.identifier("call_id", "only this call's entries"),
        p.whole_number("after_id", "only entries with a greater id", 0, MAX_ID, default=0),
        p.whole_number(
            "limit", "at most this many entries", 1, MAX_LIMIT, default=DEFAULT_LIMIT
        ),
    ),
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["history", "last_id"],
        "properties": {"history": _ENTRIES, "last_id": {"type": "integer", "minimum": 0}},
    },
    errors=(400, 401, 404),
)
SIP_LIST = _crm(
    "/api/sipList",
    "Operators and their state",
    "online: idle; inuse: ringing, talking or on hold; offline: unregistered, "
    "unreachable or unknown. One entry per extension and PBX (pbx), ordered by sip.",
    (
        PAGE,
        PER_PAGE,
        p.word_list(
            "status",
            "comma separated states to list (offline, online, inuse; any case); "
            "may be repeated; empty: all",
            OPERATOR_STATES,
        ),
    ),
    _paged(
        "sips",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["sip", "status", "since", "pbx"],
            "properties": {
                "sip": {"type": "string"},
                "status": ref("OperatorStatus"),
                "since": ref("Time"),
                "pbx": ref("PBX"),
            },
        },
    ),
    tag="operators",
)
OPERATOR_HISTORY = _crm(
    "/api/operatorHistory",
    "Operator state changes, newest first",
    "Every change of an operator's state, optionally of one sip.",
    (p.extension("sip", "only this sip"), PAGE, PER_PAGE),
    _paged(
        "history",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["sip", "status", "time", "pbx"],
            "properties": {
                "sip": {"type": "string"},
                "status": ref("OperatorStatus"),
                "time": ref("Time"),
                "pbx": ref("PBX"),
            },
        },
    ),
    tag="operators",
)
_AUDIO = {"type": "string", "format": "binary"}
#: latest ``expires`` of a signed link accepted (year 5138): keeps it an int64
MAX_EXPIRES = 10**11
_SIG_RULE = v.Rule("[0-9a-f]{64}", "64 lower-case hex digits")


def _sig(value: str, field: str) -> str:
    if not isinstance(value, str) or not _SIG_RULE.match(value):
        raise v.InvalidInput(field, f"{field} must be {_SIG_RULE.says}")
    return value


_RECORD_ID = Param(
    "record_id", _record_id, {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
    "the recording's record_id", required=True, location=PATH,
)  # fmt: skip
_EXPIRES = p.whole_number(
    "expires", "signed link: unix time it stops working", 0, MAX_EXPIRES
)
_SIG = Param(
    "sig", _sig, _SIG_RULE.schema(),
    "signed link: hex HMAC-SHA256 of the record_id and expires; with it no API key is "
    "needed, and the link alone decides (403 invalid_signature, 410 link_expired)",
)  # fmt: skip
_AUDIO_ANSWER = Answer(200, "the audio file", _AUDIO, ("audio/wav", "application/octet-stream"))
RECORD = Operation(
    methods=("GET",),
    path="/records/{record_id}",
    summary="A recording's audio",
    description=(
        "With the API key, or without one as a signed link (the RecordURL of the record "
        "event, the url of recordList/orderRecords with signed=1): expires and sig. "
        "404 unknown_record, or record_gone once the file is removed."
    ),
    tag="history",
    params=(_RECORD_ID, _EXPIRES, _SIG),
    answers=(_AUDIO_ANSWER,),
    errors=(400, 401, 403, 404, 410),
    notes={
        403: "a signed link whose signature does not match (invalid_signature)",
        410: "a signed link past its expires (link_expired)",
    },
    formats=False,
)  # fmt: skip
#: The same route without an API key, for requests that carry ``sig``: the
#: signature is the authority (not in OPERATIONS: RECORD documents both).
SIGNED_RECORD = Operation(
    methods=RECORD.methods,
    path=RECORD.path,
    summary=RECORD.summary,
    description=RECORD.description,
    tag=RECORD.tag,
    params=(_RECORD_ID, _EXPIRES.but(required=True), _SIG.but(required=True)),
    answers=RECORD.answers,
    errors=(400, 403, 404, 410),
    notes=RECORD.notes,
    auth=False,
    formats=False,
)
#: Every route of this module.
OPERATIONS = (
    RECORD_LIST, ORDER_RECORDS, ORDER_HISTORY, CALL_HISTORY, SIP_LIST, OPERATOR_HISTORY, RECORD,
)  # fmt: skip


def openapi_schemas() -> dict[str, Any]:
    """Component schemas of this module."""
    return {
        "Record": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "record_id", "call_id", "order_id", "external_key", "sip", "phone",
                "created_at", "duration", "size", "pbx", "url",
            ],
            "properties": {
                "record_id": {"type": "integer", "minimum": 1},
                "call_id": {"type": "string"},
                "order_id": _NULLABLE_TEXT,
                "external_key": _NULLABLE_TEXT,
                "sip": _NULLABLE_TEXT,
                "phone": _NULLABLE_TEXT,
                "created_at": ref("Time"),
                "duration": {"type": ["number", "null"], "description": "seconds"},
                "size": {"type": ["integer", "null"], "description": "bytes"},
                "pbx": ref("PBX"),
                "url": {
                    "type": "string",
                    "description": "GET it (with the API key, or as it is when signed=1) "
                    "for the audio",
                },
            },
        },
        "OperatorStatus": {"type": "string", "enum": list(OPERATOR_STATES)},
    }  # fmt: skip


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items of this module."""
    return paths(OPERATIONS)
