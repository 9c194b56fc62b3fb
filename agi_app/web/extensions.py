"""Current calls of an extension (CONTRACT section 5, seed 003).

- ``GET /extension/{extension_id}/current_calls/`` -> ``{"call_list": [call_mdl...]}``
- ``PUT /extension/{extension_id}/current_calls/{call_api_id}`` with
  ``{"action", "send_dst"}`` -> ``{"status": "success"}`` once the PBX took it
- ``DELETE /extension/{extension_id}/current_calls/{call_api_id}`` -> 204

The handlers only read parameters and hand them to
:class:`agi_app.live.control.CallControl`, which checks every value before
anything reaches the PBX; its errors become the API's 4xx/503 answers.
``extension_id`` may be written ``@200`` as in seed 004's paths.
"""

from __future__ import annotations

from typing import Any

from agi_app.live.control import ACTIONS, CallControl
from agi_app.web.api import ApiRequest, ApiResponse, Router

__all__ = ["CurrentCallsEndpoints"]


def _extension(value: str) -> str:
    return value[1:] if value.startswith("@") else value


class CurrentCallsEndpoints:
    """The routes of ``/extension/{extension_id}/current_calls/``."""

    def __init__(self, control: CallControl):
        self.control = control

    def add_routes(self, router: Router) -> None:
        """Register this module's routes on ``router``."""
        base = "/extension/{extension_id}/current_calls"
        router.add(("GET",), base, self.list_calls)
        # No .json/.xml suffix on these: a call id may contain dots.
        router.add(("PUT",), base + "/{call_api_id}", self.update, formats=False)
        router.add(("DELETE",), base + "/{call_api_id}", self.hang_up, formats=False)

    async def list_calls(self, req: ApiRequest, extension_id: str) -> dict[str, Any]:
        """The extension's live calls as ``call_mdl`` objects."""
        return {"call_list": self.control.current_calls(_extension(extension_id))}

    async def update(self, req: ApiRequest, extension_id: str, call_api_id: str
                     ) -> dict[str, Any]:  # fmt: skip
        """One call-control action on the call."""
        extra = await self.control.act(
            _extension(extension_id), call_api_id, req.params.get("action"),
            req.params.get("send_dst"),
        )  # fmt: skip
        return {"status": "success", **extra}

    async def hang_up(self, req: ApiRequest, extension_id: str, call_api_id: str) -> ApiResponse:
        """Hang the call up."""
        await self.control.hangup(_extension(extension_id), call_api_id)
        return ApiResponse(None, status=204)

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        from agi_app.web import openapi as oa

        ext = {
            "name": "extension_id", "in": "path", "required": True,
            "description": "the extension (1000), or @1000",
            "schema": {"type": "string", "pattern": r"^@?[A-Za-z0-9_-]{1,32}$"},
        }  # fmt: skip
        call = {
            "name": "call_api_id", "in": "path", "required": True,
            "description": "call_api_id from the call list (or the generalCallID of a call "
                           "agi_app placed)",
            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"},
        }  # fmt: skip
        errors = oa.error_responses((400, 401, 404, 409, 503))
        errors["409"]["description"] = (
            "the call is not in a state the action applies to (code not_connected, "
            "not_on_hold, not_ringing...) or the PBX refused it (pbx_refused)"
        )
        action = {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"enum": list(ACTIONS)},
                "send_dst": {
                    "type": "string",
                    "description": "an extension of the PBX or a phone number; required "
                                   "for every action but hold, offhold and park",
                },
            },
        }  # fmt: skip
        answer = {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"const": "success"},
                "parking_space": {"type": "string", "description": "park only"},
            },
        }
        return {
            "/extension/{extension_id}/current_calls/": {
                "get": {
                    "summary": "Current calls of an extension",
                    "tags": ["current calls"],
                    "parameters": [ext],
                    "responses": {
                        "200": {
                            "description": "the live calls the extension takes part in",
                            "content": {"application/json": {"schema": {
                                "type": "object",
                                "required": ["call_list"],
                                "properties": {"call_list": {
                                    "type": "array", "items": oa.ref("CallMdl"),
                                }},
                            }}},
                        },
                        **oa.error_responses((400, 401, 404, 503)),
                    },
                }
            },
            "/extension/{extension_id}/current_calls/{call_api_id}": {
                "put": {
                    "summary": "Transfer, listen in, hold, park or pick up a call",
                    "tags": ["current calls"],
                    "parameters": [ext, call],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": action},
                                    "application/x-www-form-urlencoded": {"schema": action}},
                    },
                    "responses": {
                        "200": {"description": "the PBX accepted the action",
                                "content": {"application/json": {"schema": answer}}},
                        **errors,
                    },
                },
                "delete": {
                    "summary": "Hang the call up",
                    "tags": ["current calls"],
                    "parameters": [ext, call],
                    "responses": {"204": {"description": "hung up"}, **errors},
                },
            },
        }  # fmt: skip

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
                },
            }
        }  # fmt: skip
