"""Erasure of a subject's data (CONTRACT section 10):

- ``DELETE /api/orderData?order_id=`` erases the calls of an order;
- ``DELETE /api/phoneData?phone=`` erases the calls of a phone number (the
  client's number, or the first number of a phoneToPhone call; with or
  without ``+``).

Both erase the calls, their status history, their recordings (rows and
files) and the webhook events still queued that carry the subject's data,
and answer ``{"erased": {"calls", "entries", "recordings", "files",
"events"}}``.  Nothing stored: 404 ``unknown_order`` / ``unknown_phone``
(so a repeated request is a 404).  A call of the subject in progress: 409
``call_in_progress`` with its ``call_ids``, and nothing is erased.  The
rules live in :class:`agi_app.retention.Erasure`.
"""

from __future__ import annotations

from typing import Any

from agi_app.retention import Erasure
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.openapi import paths

__all__ = ["OPERATIONS", "ErasureEndpoints"]

_COUNTS = ("calls", "entries", "recordings", "files", "events")
_ANSWER = p.Answer(200, "what was erased", {
    "type": "object",
    "additionalProperties": False,
    "required": ["erased"],
    "properties": {
        "erased": {
            "type": "object",
            "additionalProperties": False,
            "required": list(_COUNTS),
            "properties": {
                "calls": {"type": "integer", "minimum": 0},
                "entries": {"type": "integer", "minimum": 0, "description": "history entries"},
                "recordings": {"type": "integer", "minimum": 0, "description": "recording rows"},
                "files": {"type": "integer", "minimum": 0,
                          "description": "recording files removed (a file already gone is "
                                         "not counted)"},
                "events": {"type": "integer", "minimum": 0,
                           "description": "webhook events still queued, now never sent"},
            },
        }
    },
})  # fmt: skip
_DESCRIPTION = (
    "Erases {what}: the calls, their status history, their recordings (rows and files) "
    "and the webhook events still queued that carry them. The erasure log keeps only "
    "{kept} and the counts. Nothing to erase: 404 {unknown}."
)
_NOTES = {
    409: "a call of this subject is in progress (call_in_progress, with call_ids): "
    "nothing was erased",
    500: "recording files could not be removed (erasure_failed): what came before is "
    "erased, the rest stays; ask again",
}

ORDER_DATA = p.Operation(
    methods=("DELETE",),
    path="/api/orderData",
    summary="Erase the data of an order",
    description=_DESCRIPTION.format(what="everything stored of the order's calls",
                                    kept="the order_id", unknown="unknown_order"),
    tag="erasure",
    params=(p.identifier("order_id", "the CRM's order id", required=True),),
    answers=(_ANSWER,),
    errors=(400, 401, 404, 409, 500),
    notes={404: "nothing is stored for this order (unknown_order)", **_NOTES},
)  # fmt: skip
PHONE_DATA = p.Operation(
    methods=("DELETE",),
    path="/api/phoneData",
    summary="Erase the data of a phone number",
    description=_DESCRIPTION.format(
        what="everything stored of the calls of the phone number (the client's number, or "
        "the first number of a phoneToPhone call; with or without +)",
        kept="a keyed hash of the number", unknown="unknown_phone",
    ),
    tag="erasure",
    params=(p.phone("phone", "the phone number", required=True),),
    answers=(_ANSWER,),
    errors=(400, 401, 404, 409, 500),
    notes={404: "nothing is stored for this phone number (unknown_phone)", **_NOTES},
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (ORDER_DATA, PHONE_DATA)


class ErasureEndpoints:
    """The erasure routes over an :class:`~agi_app.retention.Erasure`."""

    def __init__(self, erasure: Erasure):
        self._erasure = erasure

    def add_routes(self, router: Router) -> None:
        """Register ``DELETE /api/orderData`` and ``DELETE /api/phoneData``."""
        p.add_route(router, ORDER_DATA, self.order_data)
        p.add_route(router, PHONE_DATA, self.phone_data)

    async def order_data(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """Erase an order's data."""
        return {"erased": await self._erasure.erase_order(args["order_id"])}

    async def phone_data(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """Erase a phone number's data."""
        return {"erased": await self._erasure.erase_phone(args["phone"])}

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of this module."""
        return paths(OPERATIONS)
