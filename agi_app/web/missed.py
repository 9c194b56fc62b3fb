"""``/api/missedCalls``: inbound calls nobody answered, after a cursor.

``?after_id=&limit=`` like ``/api/callHistory``: ascending ids, ``last_id``
to poll with next time; ``open=1`` lists only the calls nobody got through
to yet.  What counts as missed and how ``called_back`` is filled in:
:mod:`agi_app.calls.missed` and docs/features.md.
"""

from __future__ import annotations

from typing import Any

from agi_app.store import Store
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.history import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT
from agi_app.web.openapi import paths, ref
from agi_app.web.params import Answer, Operation

__all__ = ["OPERATIONS", "MissedCallEndpoints", "api_missed_call"]

#: the fields of a missed call as the API lists it, in order
API_FIELDS = ("id", "call_id", "phone", "did", "time", "extensions", "ring_seconds",
              "called_back", "handled_at", "callback_attempts")  # fmt: skip


def api_missed_call(row: dict[str, Any]) -> dict[str, Any]:
    """A stored missed call as the API lists it."""
    return {k: row[k] for k in API_FIELDS}


class MissedCallEndpoints:
    """``/api/missedCalls`` over a :class:`~agi_app.store.Store`."""

    def __init__(self, store: Store):
        self._store = store

    def add_routes(self, router: Router) -> None:
        """Register ``/api/missedCalls``."""
        p.add_route(router, MISSED_CALLS, self.missed_calls)

    async def missed_calls(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """The missed calls after ``after_id``, ascending."""
        after_id = args["after_id"]
        rows = await self._store.missed_calls_after(after_id, args["limit"], args["open"])
        return {
            "missed_calls": [api_missed_call(r) for r in rows],
            "last_id": rows[-1]["id"] if rows else after_id,
        }

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path item of ``/api/missedCalls``."""
        return paths(OPERATIONS)

    @staticmethod
    def openapi_schemas() -> dict[str, Any]:
        """The ``MissedCall`` schema."""
        return {"MissedCall": _MISSED_CALL}


_NULLABLE_TEXT = {"type": ["string", "null"]}
_MISSED_CALL = {
    "type": "object",
    "additionalProperties": False,
    "required": list(API_FIELDS),
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "grows monotonically: the cursor"},
        "call_id": {"type": "string",
                    "description": "agi_app's call id, or the PBX's (CallAPIID of the events)"},
        "phone": {**_NULLABLE_TEXT, "description": "the caller's number (null: withheld)"},
        "did": {**_NULLABLE_TEXT, "description": "the number the caller dialled"},
        "time": {**ref("Time"), "description": "when the call came in"},
        "extensions": {"type": "array", "items": {"type": "string"},
                       "description": "the extensions whose phones rang"},
        "ring_seconds": {"type": "number", "minimum": 0,
                         "description": "how long the caller waited before the call ended"},
        "called_back": {**_NULLABLE_TEXT,
                        "description": "the call that got through to the caller since (a "
                                       "callback, or any later answered call to or from the "
                                       "number); null while nobody has"},
        "handled_at": {"oneOf": [ref("Time"), {"type": "null"}],
                       "description": "when called_back got through"},
        "callback_attempts": {"type": "integer", "minimum": 0,
                              "description": "automatic callbacks placed so far"},
    },
}  # fmt: skip
MISSED_CALLS = Operation(
    methods=("GET", "POST"),
    path="/api/missedCalls",
    summary="Inbound calls nobody answered, after a cursor",
    description=(
        "Missed calls ascending by id. Poll with after_id = the last_id of the previous "
        "answer: none is missed or repeated (called_back and callback_attempts of a call "
        "listed before may change later: ask again with open=1, or keep the ids). last_id "
        "is the last call's id, or after_id when there is nothing new."
    ),
    tag="calls",
    params=(
        p.whole_number("after_id", "only calls with a greater id", 0, MAX_ID, default=0),
        p.whole_number("limit", "at most this many calls", 1, MAX_LIMIT, default=DEFAULT_LIMIT),
        p.flag("open", "1: only the calls nobody got through to yet", False),
    ),
    answers=(Answer(200, "success", {
        "type": "object",
        "additionalProperties": False,
        "required": ["missed_calls", "last_id"],
        "properties": {
            "missed_calls": {"type": "array", "items": ref("MissedCall")},
            "last_id": {"type": "integer", "minimum": 0},
        },
    }),),
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (MISSED_CALLS,)
