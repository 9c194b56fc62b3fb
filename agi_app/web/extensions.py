"""Current calls of an extension (CONTRACT section 5, seed 003).

- ``GET /extension/{extension_id}/current_calls/`` -> ``{"call_list": [call_mdl...]}``
- ``PUT /extension/{extension_id}/current_calls/{call_api_id}`` with
  ``{"action", "send_dst"}`` -> ``{"status": "success"}`` once the PBX took it
- ``DELETE /extension/{extension_id}/current_calls/{call_api_id}`` -> 204

The parameters are declared once (:mod:`agi_app.web.params`) and checked by
their form; :class:`agi_app.live.control.CallControl` checks what depends on
the PBX (the extension exists, the call is the extension's, ``send_dst``
leads somewhere) before anything reaches it; its errors become the API's
4xx/503 answers.  ``extension_id`` may be written ``@200`` as in seed 004's
paths.
"""

from __future__ import annotations

from typing import Any

from agi_app.live.control import ACTIONS, CallControl
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, ApiResponse, Router
from agi_app.web.openapi import paths, ref
from agi_app.web.params import EXTENSION_ID, Answer, Operation, Param

__all__ = ["OPERATIONS", "CurrentCallsEndpoints"]

_BASE = "/extension/{extension_id}/current_calls/"
_CALL_API_ID = p.identifier(
    "call_api_id",
    "call_api_id from the call list (or the generalCallID of a call agi_app placed)",
    required=True,
    location=p.PATH,
)
_ERRORS = (400, 401, 404, 409, 503)
_NOTES = {
    409: "the call is not in a state the action applies to (code not_connected, "
    "not_on_hold, not_ringing...) or the PBX refused it (pbx_refused)"
}


def _action(value: Any, field: str) -> str:
    return CallControl.check_action(value)


def _send_dst(value: Any, field: str) -> Any:
    # Whether send_dst is needed, and what it leads to, depends on the action
    # and on the PBX's extensions: CallControl.act checks it.
    return value


LIST = Operation(
    methods=("GET",),
    path=_BASE,
    summary="Current calls of an extension",
    tag="current calls",
    params=(EXTENSION_ID,),
    answers=(
        Answer(200, "the live calls the extension takes part in", {
            "type": "object",
            "required": ["call_list"],
            "properties": {"call_list": {"type": "array", "items": ref("CallMdl")}},
        }),
    ),
    errors=(400, 401, 404, 503),
)  # fmt: skip
UPDATE = Operation(
    methods=("PUT",),
    path=_BASE + "{call_api_id}",
    summary="Transfer, listen in, hold, park or pick up a call",
    tag="current calls",
    params=(
        # the order CallControl.act checks them in
        Param("action", _action, {"type": "string", "enum": list(ACTIONS)},
              "what to do", required=True),
        Param("send_dst", _send_dst, {"type": "string"},
              "an extension of the PBX or a phone number; required for every action but "
              "hold, offhold and park"),
        EXTENSION_ID,
        _CALL_API_ID,
    ),
    answers=(
        Answer(200, "the PBX accepted the action", {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"const": "success"},
                "parking_space": {"type": "string", "description": "park only"},
            },
        }),
    ),
    errors=_ERRORS,
    notes=_NOTES,
    # No .json/.xml suffix on these: a call id may contain dots.
    formats=False,
)  # fmt: skip
HANG_UP = Operation(
    methods=("DELETE",),
    path=_BASE + "{call_api_id}",
    summary="Hang the call up",
    tag="current calls",
    params=(EXTENSION_ID, _CALL_API_ID),
    answers=(Answer(204, "hung up"),),
    errors=_ERRORS,
    notes=_NOTES,
    formats=False,
)
#: Every route of this module.
OPERATIONS = (LIST, UPDATE, HANG_UP)


class CurrentCallsEndpoints:
    """The routes of ``/extension/{extension_id}/current_calls/``."""

    def __init__(self, control: CallControl):
        self.control = control

    def add_routes(self, router: Router) -> None:
        """Register this module's routes on ``router``."""
        # The extension must exist before its call is looked at (404, or 503
        # while the PBX is unreachable); an action and its send_dst are
        # checked before both, inside CallControl.act.
        exists = {"extension_id": self.control.check_extension}
        p.add_route(router, LIST, self.list_calls, rules=exists)
        p.add_route(router, UPDATE, self.update)
        p.add_route(router, HANG_UP, self.hang_up, rules=exists)

    async def list_calls(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """The extension's live calls as ``call_mdl`` objects."""
        return {"call_list": self.control.current_calls(args["extension_id"])}

    async def update(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """One call-control action on the call."""
        extra = await self.control.act(
            args["extension_id"], args["call_api_id"], args["action"], args["send_dst"]
        )
        return {"status": "success", **extra}

    async def hang_up(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        """Hang the call up."""
        await self.control.hangup(args["extension_id"], args["call_api_id"])
        return ApiResponse(None, status=204)

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return paths(OPERATIONS)

    @staticmethod
    def openapi_schemas() -> dict[str, Any]:
        """The ``CallMdl`` schema (seed 003's call_mdl)."""
        extension = {
            "type": ["object", "null"],
            "required": ["id", "name"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        }
        text = {"type": ["string", "null"]}
        gmt = {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$",
               "description": "GMT"}  # fmt: skip
        return {
            "CallMdl": {
                "type": "object",
                "required": [
                    "call_api_id", "record_uuid", "call_flow", "called_number", "called_did",
                    "init_time_gmt", "answer_time_gmt", "caller_id_number", "caller_id_name",
                    "caller_extension", "called_extension", "real_call",
                ],
                "properties": {
                    "call_api_id": {"type": "string"},
                    "record_uuid": text,
                    "call_flow": {"enum": ["in", "out"]},
                    "called_number": text,
                    "called_did": text,
                    "init_time_gmt": gmt,
                    "answer_time_gmt": gmt,
                    "caller_id_number": text,
                    "caller_id_name": text,
                    "caller_extension": extension,
                    "called_extension": extension,
                    "real_call": {"type": "boolean"},
                    "call_id": {**text, "description": "agi_app's call id (generalCallID)"},
                    "state": {"enum": ["ringing", "up", "talking", "hold", "parked",
                                       "listening", "internal"]},
                    "pbx": {"type": "string", "description": "the PBX the call is on"},
                },
            }
        }  # fmt: skip
