"""The CRM history endpoints (CONTRACT 3.2–3.7) and recording downloads.

- ``/api/recordList``: recordings, newest first, paged.
- ``/api/orderRecords``: an order's calls with their recordings.
- ``/api/orderHistory``: an order's status history, flat or grouped by call.
- ``/api/callHistory``: one call's history, or everyone's after a cursor.
- ``/api/sipList``: operators and their state, paged, filtered by state.
- ``/api/operatorHistory``: operator state changes, newest first, paged.
- ``GET /records/{record_id}``: the audio of a recording.

An order with no calls is a 404 ``unknown_order`` for orderRecords and
orderHistory; an unknown call_id is a 404 ``unknown_call``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.web import static

from agi_app import validation
from agi_app.store import OPERATOR_STATES, Store, api_record
from agi_app.web.api import ApiError, ApiRequest, ApiResponse, Router
from agi_app.web.openapi import api_operation, error_responses, param, ref
from agi_app.web.params import MAX_PAGE, MAX_PER_PAGE, choices, optional_integer, paging
from agi_app.web.render import RawJSON

__all__ = ["HistoryEndpoints", "add_routes", "openapi_paths", "openapi_schemas"]

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

_RECORD_ID = re.compile(r"^[0-9]{1,18}$", re.ASCII)
_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$", re.ASCII)


class HistoryEndpoints:
    """The handlers, over a :class:`~agi_app.store.Store`.

    ``public_url`` is the base of the recording links handed to clients
    (``[http] public_url``).
    """

    def __init__(self, store: Store, *, public_url: str):
        self._store = store
        self._public_url = public_url.rstrip("/")

    def add_routes(self, router: Router) -> None:
        """Register every endpoint of this module on ``router``."""
        both = ("GET", "POST")
        router.add(both, "/api/recordList", self.record_list)
        router.add(both, "/api/orderRecords", self.order_records)
        router.add(both, "/api/orderHistory", self.order_history)
        router.add(both, "/api/callHistory", self.call_history)
        router.add(both, "/api/sipList", self.sip_list)
        router.add(both, "/api/operatorHistory", self.operator_history)
        router.add(("GET",), "/records/{record_id}", self.download, formats=False)

    # -- shapes -----------------------------------------------------------

    def record_url(self, record_id: int | str) -> str:
        """The download link of a recording (of "": the prefix of every link)."""
        return f"{self._public_url}/records/{record_id}"

    def _record(self, r: dict[str, Any]) -> dict[str, Any]:
        return api_record(r, self.record_url(""))

    # -- handlers ---------------------------------------------------------

    async def record_list(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/recordList``: recordings, newest first."""
        page, per_page = paging(req)
        found = await self._store.recordings_json(page, per_page, self.record_url(""))
        return {
            "page": page,
            "per_page": per_page,
            "total": found.total,
            "records": RawJSON(found.json, found.items),
        }

    async def order_records(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/orderRecords``: the calls of an order and their recordings."""
        order_id = validation.identifier(req.params.get("order_id"), "order_id")
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
                    "records": [self._record(r) for r in c["records"]],
                }
                for c in calls
            ],
        }

    async def order_history(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/orderHistory``: flat, or with ``group_by_call=1`` per call."""
        order_id = validation.identifier(req.params.get("order_id"), "order_id")
        grouped = req.param("group_by_call", None)
        grouped = False if grouped is None else validation.flag(grouped, "group_by_call")
        history = await self._store.order_history_json(order_id)
        if not history.count:
            raise _unknown_order(order_id)
        if not grouped:
            return {"order_id": order_id, "history": RawJSON(history.json, history.entries)}
        entries = history.entries()
        by_call: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:  # ascending ids: calls come in the order they began
            by_call.setdefault(entry["call_id"], []).append(entry)
        return {
            "order_id": order_id,
            "calls": [{"call_id": c, "history": h} for c, h in by_call.items()],
        }

    async def call_history(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/callHistory``: entries after ``after_id``, of one call or all."""
        call_id = req.param("call_id", None)
        if call_id is not None:
            call_id = validation.identifier(call_id, "call_id")
        after_id = optional_integer(req, "after_id", 0, minimum=0, maximum=MAX_ID)
        limit = optional_integer(req, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
        page = await self._store.history_after_json(after_id, limit, call_id)
        # A call always has its CALL entry, so only an empty answer can mean an
        # unknown call: the usual request costs one store round trip, not two.
        if call_id is not None and not page.count and await self._store.get_call(call_id) is None:
            raise ApiError(404, "unknown_call", f"no call {call_id}", field="call_id")
        last_id = page.last_id if page.last_id is not None else after_id
        return {"history": RawJSON(page.json, page.entries), "last_id": last_id}

    async def sip_list(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/sipList``: operators and their state."""
        page, per_page = paging(req)
        statuses = choices(req.param_list("status"), "status", OPERATOR_STATES)
        result = await self._store.operators(page, per_page, statuses or None)
        return {
            "page": page,
            "per_page": per_page,
            "total": result.total,
            "sips": [
                {"sip": o["sip"], "status": o["status"], "since": o["since"]}
                for o in result.items
            ],
        }

    async def operator_history(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/operatorHistory``: operator state changes, newest first."""
        sip = req.param("sip", None)
        if sip is not None:
            sip = validation.extension(sip, "sip")
        page, per_page = paging(req)
        result = await self._store.operator_history(sip, page, per_page)
        return {
            "page": page,
            "per_page": per_page,
            "total": result.total,
            "history": [
                {"sip": h["sip"], "status": h["status"], "time": h["time"]}
                for h in result.items
            ],
        }

    async def download(self, req: ApiRequest, record_id: str) -> ApiResponse:
        """``GET /records/{record_id}``: the recording's audio file."""
        if not _RECORD_ID.match(record_id):
            raise ApiError(
                400, "invalid_record_id", "record_id must be a whole number", field="record_id"
            )
        record = await self._store.get_recording(int(record_id))
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
        name = f"record-{int(record_id)}{ext}"
        return ApiResponse(
            resource=resource,
            headers={"Content-Disposition": f'inline; filename="{name}"'},
        )


def _unknown_order(order_id: str) -> ApiError:
    return ApiError(404, "unknown_order", f"no calls for order {order_id}", field="order_id")


def add_routes(router: Router, store: Store, *, public_url: str) -> HistoryEndpoints:
    """Register the history endpoints on ``router``; returns the handlers."""
    endpoints = HistoryEndpoints(store, public_url=public_url)
    endpoints.add_routes(router)
    return endpoints


# -- OpenAPI --------------------------------------------------------------------

def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def _optional(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional parameter: its rule, or an empty value (or a JSON null),
    which counts as leaving it out -- what form-posting CRMs often send."""
    schema = dict(schema)
    default = schema.pop("default", None)
    rules = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    wrapped: dict[str, Any] = {"anyOf": [*rules, {"const": ""}, {"type": "null"}]}
    if default is not None:
        wrapped["default"] = default
    return param(name, wrapped, description + "; empty: as if left out")


_PAGE = _optional(
    "page",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    "page number, from 1",
)
_PER_PAGE = _optional(
    "per_page",
    {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": 20},
    "items per page",
)
_ID_RULE = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
# validation.flag: 0/1, true/false, yes/no, on/off in any case, or a JSON bool
_FLAG_WORDS = ("0", "1", "true", "false", "yes", "no", "on", "off")
_FLAG_RULE = {
    "anyOf": [
        {"type": "integer", "enum": [0, 1]},
        {"type": "boolean"},
        {
            "type": "string",
            "pattern": r"^\s*(?:" + "|".join(_any_case(w) for w in _FLAG_WORDS) + r")\s*$",
        },
    ],
    "default": 0,
}


# sipList's status: comma separated operator states in any case, blanks and
# empty words allowed (what params.choices accepts); JSON Schema regexes
# have no case-insensitive flag, hence the character classes.
_STATE_WORD = "(?:" + "|".join(_any_case(s) for s in OPERATOR_STATES) + ")"
_STATES_RULE = rf"^\s*(?:{_STATE_WORD}\s*)?(?:,\s*(?:{_STATE_WORD}\s*)?)*$"
_NULLABLE_TEXT = {"type": ["string", "null"]}


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


def openapi_schemas() -> dict[str, Any]:
    """Component schemas of this module."""
    return {
        "Record": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "record_id", "call_id", "order_id", "external_key", "sip", "phone",
                "created_at", "duration", "size", "url",
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
                "url": {"type": "string", "description": "GET it (with the API key) for the audio"},
            },
        },
        "OperatorStatus": {"type": "string", "enum": list(OPERATOR_STATES)},
    }


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items of this module."""
    return _paths()


def _paths() -> dict[str, Any]:
    order_param = param("order_id", _ID_RULE, "the CRM's order id", required=True)
    entries = {"type": "array", "items": ref("HistoryEntry")}
    return {
        "/api/recordList": api_operation(
            summary="Recordings, newest first",
            description="Recordings in the order they were added, newest first.",
            parameters=[_PAGE, _PER_PAGE],
            response=_paged("records", ref("Record")),
            tag="history",
        ),
        "/api/orderRecords": api_operation(
            summary="An order's calls and their recordings",
            description="404 unknown_order when the order has no calls.",
            parameters=[order_param],
            response={
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
                                "final_status", "records",
                            ],
                            "properties": {
                                "call_id": {"type": "string"},
                                "external_key": _NULLABLE_TEXT,
                                "sip": _NULLABLE_TEXT,
                                "phone": _NULLABLE_TEXT,
                                "created_at": ref("Time"),
                                "final_status": {
                                    "oneOf": [ref("CallStatus"), {"type": "null"}]
                                },
                                "records": {"type": "array", "items": ref("Record")},
                            },
                        },
                    },
                },
            },
            errors=(400, 401, 404),
            tag="history",
        ),
        "/api/orderHistory": api_operation(
            summary="An order's status history",
            description=(
                "Every status of every call of the order in the order they happened; "
                "with group_by_call=1 grouped per call (calls in the order they began). "
                "404 unknown_order when the order has no calls."
            ),
            parameters=[
                order_param,
                _optional(
                    "group_by_call", _FLAG_RULE, "1 (or true/yes/on): group the entries per call"
                ),
            ],
            response={
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["order_id", "history"],
                        "properties": {"order_id": {"type": "string"}, "history": entries},
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
                                    "properties": {
                                        "call_id": {"type": "string"},
                                        "history": entries,
                                    },
                                },
                            },
                        },
                    },
                ]
            },
            errors=(400, 401, 404),
            tag="history",
        ),
        "/api/callHistory": api_operation(
            summary="Status history of one call, or of every call after a cursor",
            description=(
                "Entries ascending by id. Poll with after_id = the last_id of the previous "
                "answer: no entry is missed or repeated. last_id is the last entry's id, "
                "or after_id when there is nothing new. 404 unknown_call for an unknown "
                "call_id."
            ),
            parameters=[
                _optional("call_id", dict(_ID_RULE), "only this call's entries"),
                _optional(
                    "after_id",
                    {"type": "integer", "minimum": 0, "maximum": MAX_ID, "default": 0},
                    "only entries with a greater id",
                ),
                _optional(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
                    "at most this many entries",
                ),
            ],
            response={
                "type": "object",
                "additionalProperties": False,
                "required": ["history", "last_id"],
                "properties": {
                    "history": entries,
                    "last_id": {"type": "integer", "minimum": 0},
                },
            },
            errors=(400, 401, 404),
            tag="history",
        ),
        "/api/sipList": api_operation(
            summary="Operators and their state",
            description=(
                "online: idle; inuse: ringing, talking or on hold; offline: unregistered, "
                "unreachable or unknown. Ordered by sip."
            ),
            parameters=[
                _PAGE,
                _PER_PAGE,
                param(
                    "status",
                    {
                        "anyOf": [
                            {"type": "string", "pattern": _STATES_RULE},
                            {"type": "array", "items": {"type": "string", "pattern": _STATES_RULE}},
                        ],
                        "examples": ["online,inuse"],
                    },
                    "comma separated states to list (offline, online, inuse; any case); "
                    "empty: all",
                ),
            ],
            response=_paged(
                "sips",
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sip", "status", "since"],
                    "properties": {
                        "sip": {"type": "string"},
                        "status": ref("OperatorStatus"),
                        "since": ref("Time"),
                    },
                },
            ),
            tag="operators",
        ),
        "/api/operatorHistory": api_operation(
            summary="Operator state changes, newest first",
            description="Every change of an operator's state, optionally of one sip.",
            parameters=[
                _optional(
                    "sip", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}, "only this sip"
                ),
                _PAGE,
                _PER_PAGE,
            ],
            response=_paged(
                "history",
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sip", "status", "time"],
                    "properties": {
                        "sip": {"type": "string"},
                        "status": ref("OperatorStatus"),
                        "time": ref("Time"),
                    },
                },
            ),
            tag="operators",
        ),
        "/records/{record_id}": {
            "get": {
                "summary": "A recording's audio",
                "description": "404 once the file is gone.",
                "tags": ["history"],
                "parameters": [
                    {
                        "name": "record_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the audio file",
                        "content": {
                            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    **error_responses((400, 401, 404)),
                },
            }
        },
    }
