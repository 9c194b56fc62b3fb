"""The call model's control and automated calls (CONTRACT section 4, seed 002):

- ``POST /api/calls/attendedCallTransfer`` (``generalCallID``, ``phone_number``)
- ``POST /api/calls/hangupCall`` (``generalCallID``)
- ``POST /api/calls/callWithAnnouncement`` (``phone_number``, ``voiceFileID``)
- ``POST /api/calls/callWithInteractiveVoiceResponse`` (``phone_number``, ``ivrName``)

The two calls also take the optional ``order_id``, ``external_key`` and
``trunkNumber``.  Answers: ``{"status": "success", "generalCallID": "…"}``.
Parameters are declared once (:mod:`agi_app.web.params`); what depends on
the running application (a known recorded message or IVR menu, a
configured trunk) is checked by rules bound when the routes are added.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agi_app import sounds
from agi_app import validation as v
from agi_app.calls.outbound import OutboundCalls
from agi_app.live.control import CallControl
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.openapi import paths
from agi_app.web.params import EXTERNAL_KEY, ORDER_ID, TRUNK_NUMBER, Answer, Operation, Param

__all__ = ["OPERATIONS", "CallControlEndpoints"]

_ANSWER = Answer(200, "success", {
    "type": "object",
    "required": ["status", "generalCallID"],
    "properties": {"status": {"const": "success"}, "generalCallID": {"type": "string"}},
})  # fmt: skip
_CALL_ID = p.identifier("generalCallID", "the call (call_id of agi_app)", required=True)
_PHONE = p.phone("phone_number", "the number called", required=True)


def _destination(value: Any, field: str) -> str:
    # An extension or a number by its form; which one it is depends on the
    # PBX's extensions, and CallControl.destination resolves that.
    for rule in (v.extension, v.phone):
        try:
            return rule(value, field)
        except v.InvalidInput:
            pass
    raise v.InvalidInput(field, f"{field} must be an extension of this PBX or a phone number")


def _menu_name(value: Any, field: str) -> str:
    # IVR menu names follow the extension rule (agi_app.ivr.menus.MENU_NAME)
    if not isinstance(value, str):
        raise v.InvalidInput(field, f"{field} must be {v.EXTENSION.says}")
    return v.extension(value, field)


def _op(path: str, summary: str, description: str, params: tuple[Param, ...],
        errors: tuple[int, ...]) -> Operation:  # fmt: skip
    return Operation(
        methods=("POST",), path=path, summary=summary, description=description,
        tag="call model", params=params, answers=(_ANSWER,), errors=errors,
    )  # fmt: skip


TRANSFER = _op(
    "/api/calls/attendedCallTransfer",
    "Attended transfer of a live call",
    "The call's first party (the operator of a click-to-call) consults "
    "phone_number while the other party waits on music on hold; when it "
    "hangs up the two are connected. 404: no such call; 409: the call is "
    "not connected or has ended.",
    (
        _CALL_ID,
        Param(
            "phone_number", _destination,
            {"anyOf": [v.EXTENSION.schema(), v.PHONE.schema()]},
            "an extension of the PBX or a phone number", required=True,
        ),
    ),
    (400, 401, 404, 409, 503),
)  # fmt: skip
HANGUP = _op(
    "/api/calls/hangupCall",
    "Hang a live call up",
    "Every channel of the call is hung up.",
    (_CALL_ID,),
    (400, 401, 404, 409, 503),
)
_PLACED = (TRUNK_NUMBER, ORDER_ID, EXTERNAL_KEY)
ANNOUNCEMENT = _op(
    "/api/calls/callWithAnnouncement",
    "Call a number and play a recorded message",
    "voiceFileID names a prompt of sounds/ (see docs/ivr.md). History: CALL, "
    "CLIENT_CALLTO, CLIENT_PICKUP, FINISH (or the failing status).",
    (
        _PHONE,
        Param("voiceFileID", sounds.check_name, v.PROMPT_NAME.schema(),
              "a recorded message known to the application", required=True),
        *_PLACED,
    ),
    (400, 401, 409, 503),
)  # fmt: skip
IVR_CALL = _op(
    "/api/calls/callWithInteractiveVoiceResponse",
    "Call a number and run an IVR menu",
    "ivrName names a menu of the IVR file. Every choice of the client is an "
    "IVR_CHOICE history entry.",
    (
        _PHONE,
        Param("ivrName", _menu_name, v.EXTENSION.schema(),
              "a menu of the IVR configuration", required=True),
        *_PLACED,
    ),
    (400, 401, 409, 503),
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (TRANSFER, HANGUP, ANNOUNCEMENT, IVR_CALL)


class CallControlEndpoints:
    """The routes of the call model that control calls or place automated ones.

    ``trunks``: the trunks a request may name (default: ``[dialing]
    default_trunk`` and ``trunks`` of ``outbound``).
    """

    def __init__(
        self, control: CallControl, outbound: OutboundCalls, *, trunks: Iterable[str] | None = None
    ):
        self.control = control
        self.outbound = outbound
        if trunks is None:
            trunks = outbound.dialing.all_trunks
        self._known_trunk = p.known_trunk(trunks)

    def add_routes(self, router: Router) -> None:
        """Register this module's routes on ``router``."""
        placed = {"trunkNumber": self._known_trunk}
        p.add_route(router, TRANSFER, self.attended_transfer)
        p.add_route(router, HANGUP, self.hangup)
        p.add_route(router, ANNOUNCEMENT, self.with_announcement,
                    rules={"voiceFileID": self.outbound.check_voice_file, **placed})
        p.add_route(router, IVR_CALL, self.with_ivr,
                    rules={"ivrName": self.outbound.check_ivr, **placed})  # fmt: skip

    async def attended_transfer(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """Move a live call to ``phone_number`` (an extension or a number)."""
        call_id = args["generalCallID"]
        await self.control.transfer_call(call_id, args["phone_number"])
        return {"status": "success", "generalCallID": call_id}

    async def hangup(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """End a live call."""
        call_id = args["generalCallID"]
        await self.control.hangup_call(call_id)
        return {"status": "success", "generalCallID": call_id}

    async def with_announcement(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """Call a number and play a recorded message."""
        placing = self.outbound.call_with_announcement(
            args["phone_number"], args["voiceFileID"], **_common(args)
        )
        return await _placed(placing)

    async def with_ivr(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """Call a number and run an IVR menu."""
        placing = self.outbound.call_with_ivr(
            args["phone_number"], args["ivrName"], **_common(args)
        )
        return await _placed(placing)

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return paths(OPERATIONS)


def _common(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "trunk": args["trunkNumber"],
        "order_id": args["order_id"],
        "external_key": args["external_key"],
    }


async def _placed(placing: Any) -> dict[str, Any]:
    call_id, _created = await placing
    return {"status": "success", "generalCallID": call_id}
