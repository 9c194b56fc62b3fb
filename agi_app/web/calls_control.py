"""The call model's control and automated calls (CONTRACT section 4, seed 002):

- ``POST /api/calls/attendedCallTransfer`` (``generalCallID``, ``phone_number``)
- ``POST /api/calls/hangupCall`` (``generalCallID``)
- ``POST /api/calls/callWithAnnouncement`` (``phone_number``, ``voiceFileID``)
- ``POST /api/calls/callWithInteractiveVoiceResponse`` (``phone_number``, ``ivrName``)

The two calls also take the optional ``order_id``, ``external_key`` and
``trunkNumber``.  Answers: ``{"status": "success", "generalCallID": "…"}``.
"""

from __future__ import annotations

from typing import Any

from agi_app import validation as v
from agi_app.calls.outbound import OutboundCalls
from agi_app.live.control import CallControl
from agi_app.web.api import ApiRequest, Router

__all__ = ["CallControlEndpoints"]


def _opt(req: ApiRequest, name: str, check: Any) -> Any:
    value = req.params.get(name)
    if value is None or value == "":
        return None
    return check(value, name)


class CallControlEndpoints:
    """The routes of the call model that control calls or place automated ones."""

    def __init__(self, control: CallControl, outbound: OutboundCalls):
        self.control = control
        self.outbound = outbound

    def add_routes(self, router: Router) -> None:
        """Register this module's routes on ``router``."""
        router.add(("POST",), "/api/calls/attendedCallTransfer", self.attended_transfer)
        router.add(("POST",), "/api/calls/hangupCall", self.hangup)
        router.add(("POST",), "/api/calls/callWithAnnouncement", self.with_announcement)
        router.add(("POST",), "/api/calls/callWithInteractiveVoiceResponse", self.with_ivr)

    async def attended_transfer(self, req: ApiRequest) -> dict[str, Any]:
        """Move a live call to ``phone_number`` (an extension or a number)."""
        call_id = v.identifier(req.params.get("generalCallID"), "generalCallID")
        await self.control.transfer_call(call_id, req.params.get("phone_number"))
        return {"status": "success", "generalCallID": call_id}

    async def hangup(self, req: ApiRequest) -> dict[str, Any]:
        """End a live call."""
        call_id = v.identifier(req.params.get("generalCallID"), "generalCallID")
        await self.control.hangup_call(call_id)
        return {"status": "success", "generalCallID": call_id}

    async def with_announcement(self, req: ApiRequest) -> dict[str, Any]:
        """Call a number and play a recorded message."""
        phone = v.phone(req.params.get("phone_number"), "phone_number")
        voice = self.outbound.check_voice_file(req.params.get("voiceFileID"))
        common = self._common(req)
        return await self._place(self.outbound.call_with_announcement(phone, voice, **common))

    async def with_ivr(self, req: ApiRequest) -> dict[str, Any]:
        """Call a number and run an IVR menu."""
        phone = v.phone(req.params.get("phone_number"), "phone_number")
        menu = self.outbound.check_ivr(req.params.get("ivrName"))
        common = self._common(req)
        return await self._place(self.outbound.call_with_ivr(phone, menu, **common))

    @staticmethod
    def _common(req: ApiRequest) -> dict[str, Any]:
        return {
            "trunk": _opt(req, "trunkNumber", v.extension),
            "order_id": _opt(req, "order_id", v.identifier),
            "external_key": _opt(req, "external_key", v.identifier),
        }

    @staticmethod
    async def _place(coro: Any) -> dict[str, Any]:
        call_id, _created = await coro
        return {"status": "success", "generalCallID": call_id}

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        from agi_app.web import openapi as oa

        phone = {"type": "string", "pattern": r"^\+?[0-9]{3,15}$"}
        ident = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}
        name = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}
        dst = {"type": "string", "description": "an extension of the PBX or a phone number"}
        answer = {
            "type": "object",
            "required": ["status", "generalCallID"],
            "properties": {"status": {"const": "success"}, "generalCallID": {"type": "string"}},
        }

        def op(summary: str, description: str, fields: dict[str, tuple[dict, bool]],
               errors: tuple[int, ...]) -> dict[str, Any]:  # fmt: skip
            schema = {
                "type": "object",
                "properties": {k: s for k, (s, _r) in fields.items()},
                "required": [k for k, (_s, r) in fields.items() if r],
            }
            return {"post": {
                "summary": summary,
                "description": description,
                "tags": ["call model"],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": schema},
                    "application/x-www-form-urlencoded": {"schema": schema},
                }},
                "responses": {
                    "200": {"description": "success",
                            "content": {"application/json": {"schema": answer}}},
                    **oa.error_responses(errors),
                },
            }}  # fmt: skip

        placed = {"order_id": (ident, False), "external_key": (ident, False),
                  "trunkNumber": ({"type": "string"}, False)}  # fmt: skip
        return {
            "/api/calls/attendedCallTransfer": op(
                "Attended transfer of a live call",
                "The call's first party (the operator of a click-to-call) consults "
                "phone_number while the other party waits on music on hold; when it "
                "hangs up the two are connected. 404: no such call; 409: the call is "
                "not connected or has ended.",
                {"generalCallID": (ident, True), "phone_number": (dst, True)},
                (400, 401, 404, 409, 503),
            ),
            "/api/calls/hangupCall": op(
                "Hang a live call up", "Every channel of the call is hung up.",
                {"generalCallID": (ident, True)}, (400, 401, 404, 409, 503),
            ),
            "/api/calls/callWithAnnouncement": op(
                "Call a number and play a recorded message",
                "voiceFileID names a prompt of sounds/ (see docs/ivr.md). History: CALL, "
                "CLIENT_CALLTO, CLIENT_PICKUP, FINISH (or the failing status).",
                {"phone_number": (phone, True), "voiceFileID": (name, True), **placed},
                (400, 401, 409, 503),
            ),
            "/api/calls/callWithInteractiveVoiceResponse": op(
                "Call a number and run an IVR menu",
                "ivrName names a menu of the IVR file. Every choice of the client is an "
                "IVR_CHOICE history entry.",
                {"phone_number": (phone, True), "ivrName": (name, True), **placed},
                (400, 401, 409, 503),
            ),
        }  # fmt: skip
